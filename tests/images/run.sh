#!/usr/bin/env bash
# The container test (`make test-images`, run by .ci/run): the images build
# here, the compose stack runs, and a certificate goes from the `cli`
# container through the worker container to the `watch` container's volume.
#
#  1. a Docker engine (scripts/images.sh starts dockerd when none answers);
#  2. `scripts/images.sh build`: the Debian base, the release binaries, the
#     certfleet images and the services' images; prints their sizes;
#  3. docker/compose.yaml + docker/compose.local.yaml up (project
#     certfleet-test), the worker healthy;
#  4. `cli issue` two names --wait; the watch container's volume holds
#     fullchain.pem with exactly those SANs and privkey.pem with mode 0600
#     owned by the image's user; the worker's /readyz answers 200 from the
#     host;
#  5. with the CA paused, 20 names submitted and held by the worker;
#     `docker stop` on it: exit code 0 within the stop grace period (45 s);
#     the CA unpaused and the worker started again, all 20 are stored
#     (requeued by the broker and finished after the restart);
#  6. containers, volumes and images removed, dockerd stopped if this test
#     started it.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
IMAGES=$REPO/scripts/images.sh
PROJECT=certfleet-test
GRACE=45
STARTED_DOCKERD=

log() { echo "test-images: $*"; }
fail() { echo "test-images: FAILED: $*" >&2; exit 1; }
docker_() { "$IMAGES" docker "$@"; }
compose() {
  docker-compose -p "$PROJECT" -f "$REPO/docker/compose.yaml" -f "$REPO/docker/compose.local.yaml" "$@"
}
cli() { compose run --rm -T cli "$@"; }

cleanup() {
  local status=$?
  if ((status)); then
    echo "--- compose ps / logs (last 40 lines each)" >&2
    compose ps >&2 2>&1 || true
    compose logs --no-color --tail 40 >&2 2>&1 || true
  fi
  compose --profile cli down -v --remove-orphans >/dev/null 2>&1 || true
  "$IMAGES" clean || true
  [[ -n $STARTED_DOCKERD ]] && "$IMAGES" dockerd-stop
  exit "$status"
}

if ! docker_ info >/dev/null 2>&1; then STARTED_DOCKERD=1; fi
"$IMAGES" dockerd
trap cleanup EXIT

start=$(date +%s)
"$IMAGES" build
log "images built in $(($(date +%s) - start)) s"

start=$(date +%s)
compose up -d --no-build 2>&1 | grep -v '^$' || fail "compose up"
for ((i = 0; i < 90; i++)); do
  state=$(docker_ inspect --format '{{.State.Health.Status}}' "$(compose ps -q worker)" 2>/dev/null || true)
  [[ $state == healthy ]] && break
  sleep 1
done
[[ $state == healthy ]] || fail "the worker container is not healthy after 90 s ($state)"
log "stack up, worker healthy in $(($(date +%s) - start)) s"

# /readyz from the host (host networking, loopback).
code=$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:9190/readyz)
[[ $code == 200 ]] || fail "worker /readyz answered $code"
log "worker /readyz: 200"

# One certificate from the cli container to the watch container's volume.
start=$(date +%s)
cli issue shop.compose.test www.shop.compose.test --wait
dir=/var/lib/certfleet/certs/shop.compose.test
for ((i = 0; i < 60; i++)); do
  compose exec -T watch test -s "$dir/fullchain.pem" && break
  sleep 0.5
done
compose exec -T watch cat "$dir/fullchain.pem" >"$REPO/.stack/images/fullchain.pem" ||
  fail "watch wrote no $dir/fullchain.pem"
sans=$(openssl x509 -in "$REPO/.stack/images/fullchain.pem" -noout -ext subjectAltName |
  grep -o 'DNS:[^,]*' | sed 's/^DNS://' | sort | tr '\n' ' ')
[[ $sans == "shop.compose.test www.shop.compose.test " ]] || fail "SANs are '$sans'"
mode=$(compose exec -T watch stat -c '%a %u' "$dir/privkey.pem")
[[ $mode == "600 10001" ]] || fail "privkey.pem: mode and owner '$mode', not '600 10001'"
log "issued in $(($(date +%s) - start)) s; watch wrote fullchain.pem (SANs: $sans) and privkey.pem (mode 600, uid 10001)"

# docker stop with jobs in flight: the CA paused (docker pause: its
# process frozen, its connections open), 20 names submitted, the worker
# holding them (certfleet_jobs_in_flight), then stopped. It drains for
# CERTFLEET_SHUTDOWN_GRACE (30 s), hands back what is left and exits.
N=20
names=()
for i in $(seq 1 "$N"); do names+=("stop$i.compose.test"); done
stored_stop() {
  cli list --json | python3 -c 'import json,sys; print(sum(1 for c in json.load(sys.stdin) if c["name"].startswith("stop")))'
}
in_flight() { curl -s http://127.0.0.1:9190/metrics | awk '$1 == "certfleet_jobs_in_flight" { print $2 }'; }
worker=$(compose ps -q worker)
compose pause pebble >/dev/null 2>&1
printf '%s\n' "${names[@]}" | cli submit - >/dev/null
for ((i = 0; i < 30; i++)); do
  flying=$(in_flight)
  [[ ${flying:-0} == "$N" ]] && break
  sleep 0.5
done
[[ ${flying:-0} == "$N" ]] || fail "the worker holds ${flying:-0} jobs, not $N"
start=$(date +%s.%N)
docker_ stop -t "$GRACE" "$worker" >/dev/null
took=$(echo "$(date +%s.%N) - $start" | bc)
exit_code=$(docker_ inspect --format '{{.State.ExitCode}}' "$worker")
compose unpause pebble >/dev/null 2>&1
before=$(stored_stop)
log "docker stop with $flying jobs in flight: the worker exited $exit_code after ${took} s (grace $GRACE s); $before of $N stored then"
[[ $exit_code == 0 ]] || fail "the worker exited $exit_code on docker stop"
(($(echo "$took < $GRACE" | bc))) || fail "the worker took ${took} s to stop"
docker_ start "$worker" >/dev/null
for ((i = 0; i < 120; i++)); do
  stored=$(stored_stop)
  ((stored == N)) && break
  sleep 1
done
((stored == N)) || fail "$stored of $N stored 120 s after the worker came back"
log "after the restart: $stored of $N stored"
log "passed"
