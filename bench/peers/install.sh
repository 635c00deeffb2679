#!/usr/bin/env bash
# Installs squid and tinyproxy from Debian if missing, without letting their package scripts
# start system daemons (we start our own copies on loopback, with our own configs).
set -euo pipefail
missing=()
for p in squid tinyproxy; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
[ ${#missing[@]} -eq 0 ] && exit 0
created=""
if [ ! -e /usr/sbin/policy-rc.d ]; then printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; created=1; fi
trap 'if [ -n "$created" ]; then rm -f /usr/sbin/policy-rc.d; fi' EXIT
# Daemons running before we install belong to someone else: never touch them.
# (pgrep finds none on a fresh machine: its status 1 must not end the script under pipefail.)
before=" $( (pgrep -x 'squid|tinyproxy' || true) | tr '\n' ' ') "
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
# Stop only a copy that our install's package scripts started anyway (new PIDs since `before`).
for pid in $(pgrep -x 'squid|tinyproxy' || true); do
    case "$before" in *" $pid "*) ;; *) kill "$pid" 2>/dev/null || true ;; esac
done
