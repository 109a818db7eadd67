#!/usr/bin/env bash
# Stop the test BIND started by start-bind.sh (by its pid) and remove its address from lo.
set -uo pipefail

ADDR="${DNS01_BIND_ADDR:-127.0.0.155}"
DIR="${DNS01_BIND_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/.stack/provider-bind}"

for pidfile in "$DIR/named.pid" "$DIR/named.launcher.pid"; do
    if [[ -f "$pidfile" ]]; then
        kill "$(cat "$pidfile")" 2>/dev/null || true
    fi
done
sleep 1
if ip addr show dev lo | grep -F "inet $ADDR/" >/dev/null; then
    ip addr del "$ADDR/32" dev lo
fi
echo "stopped test named; $ADDR removed from lo"
