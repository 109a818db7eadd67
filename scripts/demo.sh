#!/usr/bin/env bash
# make demo: the main job end to end on the local stack.
#
# One worker and one `certfleet watch` (as a webserver would run it) start;
# two certificates (one with two names) are issued from Pebble with real
# http-01 validation, and a wildcard one with dns-01 through the stack's
# BIND (TSIG-signed updates); watch writes them to disk and runs its reload
# hook. Keys are stored as in the documented deployment: each certificate's
# key encrypted to the webserver group's age recipient (the worker holds
# only that public key), the ACME account key under the workers' own key.
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(scripts/stack.sh env)"

BIN=${BIN:-target/debug}
DEMO=${DEMO_DIR:-$PWD/.demo}
rm -rf "$DEMO"
mkdir -p "$DEMO/certs"
# A run of its own: fresh keys in Redis and S3, a queue of its own.
RUN=$(date +%s)
export CERTFLEET_REDIS_PREFIX="demo-$RUN:"
export CERTFLEET_S3_PREFIX="demo-$RUN/"
export CERTFLEET_LOG=${CERTFLEET_LOG:-info}
# dns-01 through the stack's BIND (the other CERTFLEET_RFC2136_* and
# CERTFLEET_DNS01_RESOLVERS come from scripts/stack.sh env).
export CERTFLEET_DNS01_PROVIDER=rfc2136

# The webserver's identity (secret, only watch reads it), the recipients
# file naming its public key for every certificate (the worker's), and the
# workers' own key.
"$BIN/certfleet" keys identity --out "$DEMO/webservers.identity" >"$DEMO/webservers.recipient"
echo "* $(cat "$DEMO/webservers.recipient")" >"$DEMO/recipients"
(umask 077 && openssl rand -base64 32 >"$DEMO/workers.key")
WORKER_KEYS=(CERTFLEET_RECIPIENTS_FILE="$DEMO/recipients" CERTFLEET_ENCRYPTION_KEY_FILE="$DEMO/workers.key")
WEB_KEYS=(CERTFLEET_IDENTITY_FILE="$DEMO/webservers.identity")

pids=()
cleanup() {
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
}
trap cleanup EXIT

echo "== starting a worker (log: $DEMO/worker.log)"
env "${WORKER_KEYS[@]}" "$BIN/certfleet-worker" >"$DEMO/worker.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do
    curl -sf "http://$CERTFLEET_METRICS_LISTEN/readyz" >/dev/null && break
    sleep 0.2
done
curl -sf "http://$CERTFLEET_METRICS_LISTEN/readyz" >/dev/null || {
    echo "the worker did not become ready:"; tail -20 "$DEMO/worker.log"; exit 1; }

echo "== starting certfleet watch into $DEMO/certs (log: $DEMO/watch.log)"
env "${WEB_KEYS[@]}" "$BIN/certfleet" watch --dir "$DEMO/certs" --queue "demo-$RUN" \
    --on-change "echo \"\$(date +%T) reload after \$CERTFLEET_EVENT of \$CERTFLEET_CERT_NAME\" >> '$DEMO/reloads.log'" \
    >"$DEMO/watch.log" 2>&1 &
pids+=($!)
sleep 1

echo "== certfleet issue site-a.demo.test --wait"
"$BIN/certfleet" issue site-a.demo.test --wait --timeout 2m
echo "== certfleet issue www.site-b.demo.test site-b.demo.test --wait"
"$BIN/certfleet" issue www.site-b.demo.test site-b.demo.test --wait --timeout 2m
echo "== certfleet issue site-c.dns01.test '*.site-c.dns01.test' --challenge dns-01 --wait"
"$BIN/certfleet" issue site-c.dns01.test '*.site-c.dns01.test' --challenge dns-01 --wait --timeout 2m

for name in site-a.demo.test www.site-b.demo.test site-c.dns01.test; do
    for _ in $(seq 100); do
        [[ -s $DEMO/certs/$name/fullchain.pem ]] && break
        sleep 0.1
    done
done

echo
for name in site-a.demo.test www.site-b.demo.test site-c.dns01.test; do
    dir=$DEMO/certs/$name
    echo "== $dir"
    ls -l "$dir/"
    openssl x509 -noout -subject -issuer -serial -dates -ext subjectAltName -in "$dir/cert.pem"
    echo
done
echo "== keys are encrypted to the webservers' recipient $(cat "$DEMO/webservers.recipient"):"
echo "   a pull without that identity (as the worker would) gets no key:"
if "$BIN/certfleet" pull --dir "$DEMO/no-identity" site-a.demo.test >"$DEMO/no-identity.txt" 2>/dev/null; then
    echo "a pull without an identity succeeded"; exit 1
fi
sed 's/^/   /' "$DEMO/no-identity.txt"
echo
echo "== reload hook ran:"
cat "$DEMO/reloads.log" 2>/dev/null || echo "(not yet)"
echo
"$BIN/certfleet" list

cat <<EOT

Try it by hand (the stack keeps running; stop it with make stack-down):
  eval "\$(scripts/stack.sh env)"
  export CERTFLEET_REDIS_PREFIX=$CERTFLEET_REDIS_PREFIX CERTFLEET_S3_PREFIX=$CERTFLEET_S3_PREFIX
  export CERTFLEET_RECIPIENTS_FILE=$DEMO/recipients CERTFLEET_ENCRYPTION_KEY_FILE=$DEMO/workers.key
  export CERTFLEET_IDENTITY_FILE=$DEMO/webservers.identity   # on webservers only, in production
  $BIN/certfleet-worker &                          # one or more workers
  $BIN/certfleet issue shop.demo.test --wait        # any name resolves to 127.0.0.1 in Pebble's DNS
  $BIN/certfleet status shop.demo.test
  $BIN/certfleet pull --dir /tmp/certs             # what a webserver does once
  $BIN/certfleet renew --due --within 2000d --dry-run
  curl -s http://$CERTFLEET_METRICS_LISTEN/metrics | grep certfleet_jobs
EOT
