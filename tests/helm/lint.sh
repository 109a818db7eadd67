#!/usr/bin/env bash
# Lints helm/certfleet with Helm's own engine (PyPI helm-sdkpy, its Go
# library): every template must render (no template or YAML error), once
# with the values as shipped and once with every optional template on
# (ServiceMonitor, PrometheusRule, Grafana dashboard, Ingress, CronJob,
# the recipients file's ConfigMap).
# The alert rules' content is checked by promtool (`make rules`).
#
# helm-sdkpy declares Python >= 3.12 but runs on Debian 12's 3.11: it is
# installed with --ignore-requires-python into $HELM_VENV (kept between
# runs).
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
VENV=${HELM_VENV:-$REPO/.stack/helm-venv}
SPEC=${HELM_SDKPY_SPEC:-helm-sdkpy==0.1.32}

if ! "$VENV/bin/python" -c 'import helm_sdkpy' 2>/dev/null; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --ignore-requires-python "$SPEC"
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cp -r "$REPO/helm/certfleet" "$tmp/all-on"
"$VENV/bin/python" - "$tmp/all-on/values.yaml" <<'PY'
import re, sys
p = sys.argv[1]
s = open(p).read()
for block in ("serviceMonitor", "prometheusRule", "dashboard"):
    s, n = re.subn(rf"(\n  {block}:\n    enabled: )false", r"\1true", s)
    assert n == 1, f"values.yaml: no metrics.{block}.enabled"
# The recipients file (its ConfigMap, mount and variable).
s, n = re.subn(r'\n  recipients: ""\n',
               "\n  recipients: |\n    *.shop.example.com age1shop age1admin\n    * age1admin\n", s)
assert n == 1, "values.yaml: no encryption.recipients"
open(p, "w").write(s)
PY

status=0
"$VENV/bin/python" - "$REPO/helm/certfleet" "$tmp/all-on" <<'PY' 2>"$tmp/helm.log" || status=$?
import asyncio, json, sys
import helm_sdkpy

cfg = helm_sdkpy.Configuration()
failed = False
for path in sys.argv[1:]:
    result = asyncio.run(helm_sdkpy.Lint(cfg).run(path))
    errors = [m for m in result.get("Messages") or [] if m.get("Severity", 0) >= 3]
    errors += result.get("Errors") or []
    label = "as shipped" if path == sys.argv[1] else "every optional template on"
    if errors:
        failed = True
        print(f"helm lint ({label}): {len(errors)} error(s): {json.dumps(result)}")
    else:
        print(f"helm lint ({label}): {result.get('TotalChartsLinted')} chart, no errors")
sys.exit(1 if failed else 0)
PY
if ((status)); then
  echo "Helm's log:" >&2
  tail -n 20 "$tmp/helm.log" >&2
fi
exit "$status"
