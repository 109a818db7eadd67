#!/usr/bin/env bash
# Lints helm/certfleet with Helm's own engine (PyPI helm-sdkpy, its Go
# library): every template must render (no template or YAML error), once
# with the values as shipped and once with every optional template on
# (ServiceMonitor, PrometheusRule, Grafana dashboard, Ingress, CronJob,
# the recipients file's ConfigMap, KEDA ScaledObject, NetworkPolicy). Then
# the chart must refuse bad values, each in a copy differing from the
# shipped chart by that one value, by values.schema.json (Helm's own
# validation; a template's `fail` is only logged by lint): a wrong type, an
# unknown key, a broker URL with its password outside a Secret, and KEDA
# together with the HPA.
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
# variant NAME PYTHON: a copy of the chart whose values.yaml the Python
# snippet edits (s: the text; re imported); it must change something.
variant() {
  cp -r "$REPO/helm/certfleet" "$tmp/$1"
  "$VENV/bin/python" - "$tmp/$1/values.yaml" "$2" <<'PY'
import re, sys
p, edit = sys.argv[1], sys.argv[2]
s = open(p).read()
before = s
exec(edit)
assert s != before, f"{p}: the edit changed nothing"
open(p, "w").write(s)
PY
}
variant all-on '
for block in ("serviceMonitor", "prometheusRule", "dashboard"):
    s, n = re.subn(rf"(\n  {block}:\n    enabled: )false", r"\1true", s)
    assert n == 1, f"values.yaml: no metrics.{block}.enabled"
s, n = re.subn(r"\n  recipients: \"\"\n",
               "\n  recipients: |\n    *.shop.example.com age1shop age1admin\n    * age1admin\n", s)
assert n == 1, "values.yaml: no encryption.recipients"
for block in ("keda", "networkPolicy"):
    s, n = re.subn(rf"(\n{block}:\n  enabled: )false", r"\1true", s)
    assert n == 1, f"values.yaml: no {block}.enabled"
s = s.replace("  metricsFrom: []", "  metricsFrom:\n    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: monitoring}}")
'
variant bad-type 's = re.sub(r"\nreplicaCount: 2\n", "\nreplicaCount: two\n", s)'
variant bad-key 's = s.replace("\nreplicaCount: 2\n", "\nreplicaCount: 2\nreplicaCont: 2\n")'
variant bad-secret '
i = s.index("\namqp:")
j = s.index("  url: \"\"", i)
s = s[:j] + "  url: amqp://certfleet:hunter2@rabbitmq:5672/%2f" + s[j + len("  url: \"\""):]
'
# The same URL with createSecret: true is fine (the refusal above is the
# schema's rule, not a broken file).
variant secret-made '
i = s.index("\namqp:")
j = s.index("  url: \"\"", i)
s = s[:j] + "  url: amqp://certfleet:hunter2@rabbitmq:5672/%2f" + s[j + len("  url: \"\""):]
s = s.replace("\ncreateSecret: false\n", "\ncreateSecret: true\n")
'
variant bad-scalers '
s, n = re.subn(r"(\nautoscaling:\n  enabled: )false", r"\1true", s)
assert n == 1
s, n = re.subn(r"(\nkeda:\n  enabled: )false", r"\1true", s)
assert n == 1
'

status=0
"$VENV/bin/python" - "$REPO/helm/certfleet" "$tmp" <<'PY' 2>"$tmp/helm.log" || status=$?
import asyncio, json, sys
import helm_sdkpy

shipped, tmp = sys.argv[1], sys.argv[2]
cases = [
    ("as shipped", shipped, True),
    ("every optional template on", f"{tmp}/all-on", True),
    ("a wrong type (replicaCount: two)", f"{tmp}/bad-type", False),
    ("an unknown key (replicaCont)", f"{tmp}/bad-key", False),
    ("a broker password outside a Secret", f"{tmp}/bad-secret", False),
    ("the same password with createSecret: true", f"{tmp}/secret-made", True),
    ("KEDA and the HPA together", f"{tmp}/bad-scalers", False),
]
cfg = helm_sdkpy.Configuration()
failed = False
for label, path, ok in cases:
    result = asyncio.run(helm_sdkpy.Lint(cfg).run(path))
    errors = [m for m in result.get("Messages") or [] if m.get("Severity", 0) >= 3]
    errors += result.get("Errors") or []
    if ok and errors:
        failed = True
        print(f"helm lint ({label}): {len(errors)} error(s): {json.dumps(result)}")
    elif ok:
        print(f"helm lint ({label}): {result.get('TotalChartsLinted')} chart, no errors")
    elif errors:
        print(f"helm lint ({label}): refused, as it must be")
    else:
        failed = True
        print(f"helm lint ({label}): accepted, but must be refused")
sys.exit(1 if failed else 0)
PY
if ((status)); then
  echo "Helm's log:" >&2
  tail -n 20 "$tmp/helm.log" >&2
fi
exit "$status"
