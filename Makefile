# certfleet: one front door for build, test, demo and benchmarks.
#
#   make demo    the main job end to end on the local stack
#   make test    everything CI runs: fmt, clippy, the alert rules' promtool
#                checks and unit tests, the chart's render + validation,
#                unit and integration tests, the container images and
#                compose stack (make test-images)
#   make bench   side-by-side benchmarks (bench/results/)
#   make soak    minutes of random faults under load (bench/results/soak-*.md)
#   make images, make compose-up, make compose-down   the containers (docker/)
#   make helm-check   the chart renders and validates (helm/certfleet)
#
# The local stack (RabbitMQ, Redis, S3 via SeaweedFS, moto, BIND 9, Pebble) is installed and
# started by scripts/stack.sh on loopback; `make stack-down` stops it. Tests
# that need a cluster or Prometheus start private instances of their own.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
CARGO ?= cargo
STACK := scripts/stack.sh
# Test threads: integration tests are mostly waiting on the CA.
TEST_THREADS ?= 8
# Test threads run in-process workers on their own stacks: give them what
# the binaries' runtime threads get (certfleet_common::RUNTIME_THREAD_STACK);
# a debug build's job futures come near Rust's 2 MiB default.
export RUST_MIN_STACK ?= 8388608

.PHONY: all build release test lint rules chart helm-check images compose-up compose-down test-images tools man new renew upload download fmt unit integration demo bench soak doc stack-up stack-down stack-status clean

all: build

build:
	$(CARGO) build --locked --workspace --bins

release:
	$(CARGO) build --locked --release --workspace --bins

stack-up:
	$(STACK) up

# Also the dns-01 provider tests' own BIND (tests/dns/start-bind.sh).
stack-down:
	$(STACK) down
	tests/dns/stop-bind.sh >/dev/null 2>&1 || true

stack-status:
	$(STACK) status

fmt:
	$(CARGO) fmt --all

# Man pages of certfleet and each of its commands, into target/man/.
man:
	$(CARGO) run -q --locked -p certfleet -- man --dir target/man

# The chart, with Helm's own engine (PyPI helm-python-sdk, offline): it
# renders with the default values and every helm/certfleet/ci/*-values.yaml,
# every object validates against the Kubernetes schemas (kubernetes-validate,
# strict), bad values are refused by values.schema.json, lint is clean.
helm-check:
	tests/helm/check.sh

chart: helm-check

# Container images built here from a debootstrap Debian base and the release
# binaries (no registry needed; scripts/images.sh starts dockerd if none
# runs), and the compose stack on them (host networking, loopback ports
# that do not clash with the local stack; docker/compose.yaml).
COMPOSE := docker-compose -p certfleet -f docker/compose.yaml -f docker/compose.local.yaml
images:
	scripts/images.sh build

compose-up: images
	$(COMPOSE) up -d --no-build

# Containers removed, volumes kept (`$(COMPOSE) down -v` drops them too).
compose-down:
	$(COMPOSE) --profile cli down --remove-orphans

# The images build, the compose stack runs, a certificate goes from the cli
# container to the watch container's volume, the worker stops cleanly;
# images and containers are removed afterwards.
test-images:
	tests/images/run.sh

# What tests run besides the services: promtool, lego and certbot
# (Debian packages, installed if missing), Debian's chromium and
# playwright-core for the dashboard's browser test.
tools:
	$(STACK) install prometheus lego certbot
	tests/browser/setup.sh >/dev/null

# The alert rules the chart ships: valid, and each alert's unit tests pass
# (promtool, from Debian's prometheus package, installed if missing).
RULES := helm/certfleet/rules
rules: tools
	promtool check rules $(RULES)/certfleet.rules.yml
	cd $(RULES) && promtool test rules certfleet.rules.test.yml

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --workspace --all-targets -- -D warnings

doc:
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --locked --workspace --no-deps

# Unit tests need no services.
unit:
	$(CARGO) test --locked --workspace --lib --bins

# Integration tests run against the stack (started here if needed); the
# worker and CLI binaries are built first because tests run them.
integration: tools stack-up build
	eval "$$($(STACK) env)"; \
	$(CARGO) test --locked --workspace --tests -- --test-threads $(TEST_THREADS)

test: lint rules helm-check stack-up build
	eval "$$($(STACK) env)"; \
	$(CARGO) test --locked --workspace -- --test-threads $(TEST_THREADS)
	$(MAKE) --no-print-directory test-images

# The workflow a cron loop around lego or certbot plus `aws s3 sync` ran,
# against the fleet CERTFLEET_* configures (by default the local stack):
#   make new DOMAIN=www.example.com [DOMAINS="example.com"]  issue and wait
#   make renew                     renew what is due
#   make upload [LEGO_DIR=.lego]   import a lego directory
#   make download DIR=./certs      pull every certificate into DIR
CERTFLEET ?= $(CARGO) run -q --locked -p certfleet --
LEGO_DIR ?= .lego
new:
	@test -n "$(DOMAIN)" || { echo "usage: make new DOMAIN=www.example.com [DOMAINS=...]" >&2; exit 64; }
	$(CERTFLEET) issue $(DOMAIN) $(DOMAINS) --wait

renew:
	$(CERTFLEET) renew --due

upload:
	$(CERTFLEET) import --from lego $(LEGO_DIR) --wait

download:
	@test -n "$(DIR)" || { echo "usage: make download DIR=./certs" >&2; exit 64; }
	$(CERTFLEET) pull --dir $(DIR)

demo: stack-up build
	scripts/demo.sh

bench: stack-up
	bench/run.sh

# Minutes of random faults under load (SOAK_MINUTES, default 10); writes
# bench/results/soak-<time>.md and fails on any lost job or duplicate version.
SOAK_MINUTES ?= 10
soak: stack-up build
	eval "$$($(STACK) env)"; \
	CERTFLEET_SOAK_MINUTES=$(SOAK_MINUTES) $(CARGO) test --locked -p certfleet-tests --test integration soak:: -- --ignored --nocapture

clean:
	$(CARGO) clean
