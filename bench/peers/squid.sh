#!/usr/bin/env bash
# Runs squid in the foreground on 127.0.0.1:PORT with a config that allows CONNECT to any
# loopback port and caches nothing. Usage: squid.sh PORT WORKDIR
set -euo pipefail
port=$1
dir=$2
mkdir -p "$dir"
chmod 777 "$dir"  # squid drops privileges to the proxy user
cat > "$dir/squid.conf" <<CONF
http_port 127.0.0.1:$port
acl loopback_dst dst 127.0.0.0/8
acl CONNECT method CONNECT
http_access allow loopback_dst
http_access deny all
cache deny all
cache_mem 8 MB
access_log none
cache_log $dir/cache.log
pid_filename $dir/squid.pid
coredump_dir $dir
max_filedescriptors 65536
workers 1
shutdown_lifetime 1 seconds
pinger_enable off
# Never send a DNS query anywhere: targets are loopback literals.
dns_nameservers 127.0.0.1
CONF
exec squid -N -f "$dir/squid.conf"
