#!/usr/bin/env bash
# make helm-check: the chart helm/certfleet renders, validates and lints with
# Helm's own engine (PyPI helm-python-sdk: Helm v4's Go SDK, offline), for
#   - the default values plus only the required Secret references, and
#   - every helm/certfleet/ci/*-values.yaml (picked up automatically);
# every rendered object is validated against the Kubernetes OpenAPI schemas
# in strict mode (PyPI kubernetes-validate; unknown fields are errors), the
# custom resources (ServiceMonitor, PrometheusRule, ScaledObject) against
# small schemas of the fields their CRDs define; the references between the
# objects (selectors, named ports, scale targets, Secrets and ConfigMaps
# the pods load), the pods' hardening and what each value set must render
# are asserted; each set is linted (--strict).
# Then every tests/helm/values/refused-*.yaml must be refused by the chart's
# values.schema.json (Helm's validation), by a render and by lint, for the
# reason its "# expect:" line names; every accepted-*.yaml must pass.
# Details: tests/helm/check.py.
#
# Environment: HELM_VENV (default .stack/helm-venv, kept between runs),
# HELM_CHECK_KUBE_VERSIONS (default "1.31.0 <newest kubernetes-validate knows>").
# The alert rules' content is checked by promtool (`make rules`).
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
VENV=${HELM_VENV:-$REPO/.stack/helm-venv}
PKGS=(helm-python-sdk==0.2.2 kubernetes-validate==1.37.0 pyyaml==6.0.4)

if ! "$VENV/bin/python" -c 'import helm_python.chart, kubernetes_validate, yaml, jsonschema' 2>/dev/null; then
  [[ -x $VENV/bin/python ]] || python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q "${PKGS[@]}"
fi

log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
# Helm's Go logging (e.g. the message of every template `fail`) goes to
# stderr: kept aside, shown on failure.
"$VENV/bin/python" "$REPO/tests/helm/check.py" "$REPO/helm/certfleet" "$REPO/tests/helm/values" 2>"$log" || status=$?
if ((status)); then
  grep -v 'INFO funcMap fail' "$log" >&2 || true
fi
exit "$status"
