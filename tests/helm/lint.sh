#!/usr/bin/env bash
# `make chart`: kept as the entry point it always was; the checks live in
# tests/helm/check.sh (render with Helm's engine for the default values and
# every ci/*-values.yaml, strict Kubernetes schema validation, refusals by
# values.schema.json, helm lint --strict).
set -euo pipefail
exec "$(dirname "${BASH_SOURCE[0]}")/check.sh" "$@"
