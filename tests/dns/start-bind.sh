#!/usr/bin/env bash
# Start a throw-away authoritative BIND 9 for the dns-01 integration tests.
#
# Listens on 127.0.0.155:53 only (added to lo), recursion off, with fresh state under
# .stack/provider-bind: zones proto.test and deleg.test, both dynamic (TSIG keys below,
# test-only secrets). Idempotent: returns at once when that server already answers.
# Needs root and Debian's bind9 + bind9-dnsutils. Stop it with tests/dns/stop-bind.sh.
set -euo pipefail

ADDR="${DNS01_BIND_ADDR:-127.0.0.155}"
DIR="${DNS01_BIND_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/.stack/provider-bind}"

answers() {
    [[ "$(dig +time=1 +tries=1 +short @"$ADDR" proto.test SOA 2>/dev/null)" == ns1.proto.test.* ]]
}

if answers; then
    exit 0
fi

command -v named >/dev/null || { echo "named not found: apt-get install -y bind9 bind9-dnsutils" >&2; exit 1; }

# grep reads all of it: with pipefail, `grep -q` quitting early could fail the
# pipeline (SIGPIPE to ip) and re-add an address lo already has.
ip addr show dev lo | grep -F "inet $ADDR/" >/dev/null || ip addr add "$ADDR/32" dev lo

# Fresh state every start (dynamic zones keep journals).
if [[ -f "$DIR/named.pid" ]]; then
    kill "$(cat "$DIR/named.pid")" 2>/dev/null || true
    sleep 1
fi
rm -rf "$DIR"
mkdir -p "$DIR"

cat >"$DIR/named.conf" <<EOF
options {
    directory "$DIR";
    pid-file "$DIR/named.pid";
    session-keyfile "$DIR/session.key";
    managed-keys-directory "$DIR";
    listen-on port 53 { $ADDR; };
    listen-on-v6 { none; };
    recursion no;
    allow-query { any; };
    dnssec-validation no;
    notify no;
    querylog yes;
};
controls { };
key "certfleet-test." {
    algorithm hmac-sha256;
    secret "aUBiEJSg6zBlpb3+W14aXW70Uq5p2vVd3ADHeLJhhR4=";
};
key "certfleet-test-512." {
    algorithm hmac-sha512;
    secret "QpMAbdol7Jpn9XthfQPa8YGiLIHW969g+UaYvxXWBvBGJ59o2ogfy8UrVCMstlhc3GsAwhFnMhgapSwe29QukA==";
};
zone "proto.test" {
    type primary;
    file "proto.test.db";
    allow-update { key "certfleet-test."; key "certfleet-test-512."; };
};
zone "deleg.test" {
    type primary;
    file "deleg.test.db";
    allow-update { key "certfleet-test."; };
};
EOF

cat >"$DIR/proto.test.db" <<'EOF'
$TTL 60
@                       IN SOA   ns1.proto.test. hostmaster.proto.test. 1 3600 600 86400 60
@                       IN NS    ns1.proto.test.
@                       IN NS    ns2.proto.test.
ns1                     IN A     127.0.0.155
ns2                     IN A     127.0.0.155
_acme-challenge.cname   IN CNAME abc.deleg.test.
_acme-challenge.chain   IN CNAME hop1.proto.test.
hop1                    IN CNAME hop2.deleg.test.
_acme-challenge.loop    IN CNAME loop2.proto.test.
loop2                   IN CNAME _acme-challenge.loop.proto.test.
EOF

cat >"$DIR/deleg.test.db" <<'EOF'
$TTL 60
@                       IN SOA   ns1.proto.test. hostmaster.proto.test. 1 3600 600 86400 60
@                       IN NS    ns1.proto.test.
EOF

setsid nohup named -g -4 -c "$DIR/named.conf" >"$DIR/named.log" 2>&1 </dev/null &
echo $! >"$DIR/named.launcher.pid"

for _ in $(seq 1 50); do
    if answers; then
        echo "named answering on $ADDR:53 (pid $(cat "$DIR/named.pid" 2>/dev/null || echo '?'), log $DIR/named.log)"
        exit 0
    fi
    sleep 0.2
done
echo "named did not come up; log:" >&2
tail -n 30 "$DIR/named.log" >&2
exit 1
