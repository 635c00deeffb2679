#!/usr/bin/env bash
# Runs tinyproxy in the foreground on 127.0.0.1:PORT; without ConnectPort lines it allows
# CONNECT to every port. Usage: tinyproxy.sh PORT WORKDIR
set -euo pipefail
port=$1
dir=$2
mkdir -p "$dir"
cat > "$dir/tinyproxy.conf" <<CONF
Port $port
Listen 127.0.0.1
Timeout 600
MaxClients 10000
LogLevel Critical
PidFile "$dir/tinyproxy.pid"
Allow 127.0.0.1
CONF
exec tinyproxy -d -c "$dir/tinyproxy.conf"
