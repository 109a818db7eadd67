#!/bin/sh
# exec-provider test hook (lego's exec contract): nsupdate-hook.sh ACTION FQDN VALUE.
# Adds or deletes one TXT value with nsupdate. Everything it needs arrives through the
# provider's pass_env allowlist: NSUPDATE_KEY (the TSIG secret), and optionally
# NSUPDATE_SERVER ("ADDR PORT", default the provider tests' BIND 127.0.0.155 53),
# NSUPDATE_KEYNAME (default certfleet-test.), NSUPDATE_ZONE (default: nsupdate finds it),
# HOOK_SLEEP (seconds to sleep after presenting: a worker killed meanwhile has presented
# and not yet validated). Exit 2 (permanent) when the server refuses the key, 1 otherwise.
set -u
action=$1 fqdn=$2 value=$3
case "$action" in
    present) change="update add $fqdn 60 TXT \"$value\"" ;;
    cleanup) change="update delete $fqdn TXT \"$value\"" ;;
    *) echo "unknown action: $action" >&2; exit 2 ;;
esac
if [ -z "${NSUPDATE_KEY:-}" ]; then
    echo "NSUPDATE_KEY must be passed" >&2
    exit 2
fi
zone_line=
[ -n "${NSUPDATE_ZONE:-}" ] && zone_line="zone $NSUPDATE_ZONE"
out=$(nsupdate -y "hmac-sha256:${NSUPDATE_KEYNAME:-certfleet-test.}:$NSUPDATE_KEY" 2>&1 <<EOF
server ${NSUPDATE_SERVER:-127.0.0.155 53}
$zone_line
$change
send
EOF
) || {
    echo "nsupdate $action $fqdn failed: $out" >&2
    case "$out" in
        *NOTAUTH*|*REFUSED*|*BADSIG*|*BADKEY*) exit 2 ;;
    esac
    exit 1
}
if [ "$action" = present ] && [ -n "${HOOK_SLEEP:-}" ]; then
    sleep "$HOOK_SLEEP"
fi
exit 0
