#!/bin/sh
# exec-provider test hook (lego's exec contract): nsupdate-hook.sh ACTION FQDN VALUE.
# Adds or deletes one TXT value on the test BIND (127.0.0.155) with nsupdate. The TSIG
# secret and the zone arrive through the provider's pass_env allowlist (NSUPDATE_KEY,
# NSUPDATE_ZONE). Exit 2 (permanent) when the server refuses the key, 1 otherwise.
set -u
action=$1 fqdn=$2 value=$3
case "$action" in
    present) change="update add $fqdn 60 TXT \"$value\"" ;;
    cleanup) change="update delete $fqdn TXT \"$value\"" ;;
    *) echo "unknown action: $action" >&2; exit 2 ;;
esac
if [ -z "${NSUPDATE_KEY:-}" ] || [ -z "${NSUPDATE_ZONE:-}" ]; then
    echo "NSUPDATE_KEY and NSUPDATE_ZONE must be passed" >&2
    exit 2
fi
out=$(nsupdate -y "hmac-sha256:certfleet-test.:$NSUPDATE_KEY" 2>&1 <<EOF
server 127.0.0.155 53
zone $NSUPDATE_ZONE
$change
send
EOF
) && exit 0
echo "nsupdate $action $fqdn failed: $out" >&2
case "$out" in
    *NOTAUTH*|*REFUSED*|*BADSIG*|*BADKEY*) exit 2 ;;
esac
exit 1
