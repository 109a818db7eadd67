"""Renders, validates and lints helm/certfleet with Helm's own engine.

Run by tests/helm/check.sh (which prepares the venv): see there. Arguments:
the chart directory and the directory of the refusal cases. Environment:
HELM_CHECK_KUBE_VERSIONS (space-separated, default "1.31.0" and the newest
version kubernetes-validate knows).

1. Value sets: "defaults" (values.yaml plus only the required Secret
   references) and every ci/*-values.yaml of the chart.
2. Each set is rendered offline (helm_python: Helm v4's engine, with the
   chart's values.schema.json); every object is validated against the
   Kubernetes OpenAPI schemas in strict mode (kubernetes-validate: unknown
   fields are errors) for every version asked; custom resources
   (ServiceMonitor, PrometheusRule, ScaledObject) against the small schemas
   below. Then names and labels, the references between objects (selectors,
   named ports, the scale target, the ConfigMap and Secrets the pods load)
   and per value set what it must render.
3. Each set is linted (helm lint --strict, --kube-version).
4. Every refused-*.yaml of the cases directory must be refused by the
   chart's schema (validate_schema), by a render and by lint, with an error
   containing the file's "# expect:" text; every accepted-*.yaml must pass
   all three.
"""

from __future__ import annotations

import copy
import glob
import os
import re
import sys
from typing import Any, Callable

import jsonschema
import kubernetes_validate
import yaml
from helm_python import chart as hchart

CHART_DIR, CASES_DIR = sys.argv[1], sys.argv[2]
KUBE_VERSIONS = (
    os.environ.get("HELM_CHECK_KUBE_VERSIONS") or f"1.31.0 {kubernetes_validate.latest_version()}"
).split()
NAMESPACE = "certfleet"
# Release names: the default, one that contains the chart name (fullname is
# the release name) and the longest Helm allows (53), so the truncation of
# names shows.
RELEASE = {
    "defaults": "fleet",
    "existing-secrets": "certfleet",
    "metrics": "payments-eu-west-1-production-tls-worker-pool-blue-01",
}
# values.yaml plus only what a install must add: the Secret references.
DEFAULTS = {
    "amqp": {"existingSecret": "certfleet-amqp"},
    "redis": {"existingSecret": "certfleet-redis"},
    "encryption": {"existingSecret": "certfleet-encryption"},
}

failures: list[str] = []


def fail(msg: str) -> None:
    failures.append(msg)
    print(f"  FAIL {msg}")


def first_line(err: BaseException) -> str:
    """The first informative line of a Helm error: not the "chart:" header
    nor the "'allOf' failed" wrapper; an "'anyOf' failed" line comes with
    the alternatives that failed."""
    lines = [l.strip() for l in str(err).splitlines() if l.strip()]
    lines = [l for l in lines if not (l.endswith(":") and not l.startswith("-")) and not l.endswith("'allOf' failed")]
    if not lines:
        return str(err).strip() or repr(err)
    if lines[0].endswith("'anyOf' failed"):
        return "; ".join(lines)
    return lines[0]


# --- custom resources -----------------------------------------------------

DURATION = r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"
STRMAP = {"type": "object", "additionalProperties": {"type": "string"}}
META = {
    "type": "object",
    "required": ["name", "namespace"],
    "properties": {"name": {"type": "string", "minLength": 1}, "labels": STRMAP, "annotations": STRMAP},
}
LABEL_SELECTOR = {
    "type": "object",
    "additionalProperties": False,
    "properties": {"matchLabels": STRMAP, "matchExpressions": {"type": "array"}},
}


def crd(api_version: str, kind: str, spec: dict) -> dict:
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": api_version},
            "kind": {"const": kind},
            "metadata": META,
            "spec": spec,
        },
    }


# The fields the chart renders, from the CRDs of prometheus-operator
# (monitoring.coreos.com/v1) and KEDA (keda.sh/v1alpha1); unknown fields are
# errors, as the API server's structural schemas prune or refuse them.
CUSTOM = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): crd("monitoring.coreos.com/v1", "ServiceMonitor", {
        "type": "object",
        "additionalProperties": False,
        "required": ["selector", "endpoints"],
        "properties": {
            "jobLabel": {"type": "string"},
            "namespaceSelector": {
                "type": "object",
                "additionalProperties": False,
                "properties": {"any": {"type": "boolean"}, "matchNames": {"type": "array", "items": {"type": "string"}}},
            },
            "selector": LABEL_SELECTOR,
            "endpoints": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "additionalProperties": False,
                    "anyOf": [{"required": ["port"]}, {"required": ["targetPort"]}],
                    "properties": {
                        "port": {"type": "string"},
                        "targetPort": {"type": ["string", "integer"]},
                        "path": {"type": "string", "pattern": "^/"},
                        "scheme": {"enum": ["http", "https"]},
                        "interval": {"type": "string", "pattern": DURATION},
                        "scrapeTimeout": {"type": "string", "pattern": DURATION},
                        "honorLabels": {"type": "boolean"},
                        "relabelings": {"type": "array"},
                        "metricRelabelings": {"type": "array"},
                    },
                },
            },
        },
    }),
    ("monitoring.coreos.com/v1", "PrometheusRule"): crd("monitoring.coreos.com/v1", "PrometheusRule", {
        "type": "object",
        "additionalProperties": False,
        "required": ["groups"],
        "properties": {
            "groups": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["name", "rules"],
                    "properties": {
                        "name": {"type": "string", "minLength": 1},
                        "interval": {"type": "string", "pattern": DURATION},
                        "rules": {
                            "type": "array",
                            "minItems": 1,
                            "items": {
                                "type": "object",
                                "additionalProperties": False,
                                "required": ["expr"],
                                "oneOf": [{"required": ["alert"]}, {"required": ["record"]}],
                                "properties": {
                                    "alert": {"type": "string", "minLength": 1},
                                    "record": {"type": "string", "minLength": 1},
                                    "expr": {"type": ["string", "integer"], "minLength": 1},
                                    "for": {"type": "string", "pattern": DURATION},
                                    "keep_firing_for": {"type": "string", "pattern": DURATION},
                                    "labels": STRMAP,
                                    "annotations": STRMAP,
                                },
                            },
                        },
                    },
                },
            }
        },
    }),
    ("keda.sh/v1alpha1", "ScaledObject"): crd("keda.sh/v1alpha1", "ScaledObject", {
        "type": "object",
        "additionalProperties": False,
        "required": ["scaleTargetRef", "triggers"],
        "properties": {
            "scaleTargetRef": {
                "type": "object",
                "additionalProperties": False,
                "required": ["name"],
                "properties": {"apiVersion": {"type": "string"}, "kind": {"type": "string"}, "name": {"type": "string"}},
            },
            "minReplicaCount": {"type": "integer", "minimum": 0},
            "maxReplicaCount": {"type": "integer", "minimum": 1},
            "idleReplicaCount": {"type": "integer", "minimum": 0},
            "pollingInterval": {"type": "integer", "minimum": 1},
            "cooldownPeriod": {"type": "integer", "minimum": 0},
            "advanced": {"type": "object"},
            "fallback": {"type": "object"},
            "triggers": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["type", "metadata"],
                    "properties": {
                        "type": {"type": "string"},
                        "name": {"type": "string"},
                        "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
                        "useCachedMetrics": {"type": "boolean"},
                        # KEDA's CRD: metadata is a map of strings.
                        "metadata": STRMAP,
                        "authenticationRef": {"type": "object"},
                    },
                },
            },
        },
    }),
}

# --- generic checks ---------------------------------------------------------

DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
# Kinds whose names must be DNS-1123 labels (63), and the CronJob's 52.
NAME_LIMIT = {"Service": 63, "CronJob": 52, "Deployment": 63, "NetworkPolicy": 63}


def check_names(where: str, obj: dict) -> None:
    kind, meta = obj["kind"], obj["metadata"]
    name = meta["name"]
    limit = NAME_LIMIT.get(kind, 253)
    pattern = DNS1123_LABEL if kind in NAME_LIMIT else DNS1123_SUBDOMAIN
    if len(name) > limit or not pattern.match(name):
        fail(f"{where}: name {name!r} is not a valid {kind} name (max {limit})")
    labels = dict(meta.get("labels") or {})
    for tmpl in pod_templates(obj):
        labels.update(tmpl.get("metadata", {}).get("labels") or {})
    if kind == "CronJob":
        labels.update(obj["spec"]["jobTemplate"].get("metadata", {}).get("labels") or {})
    for key, value in labels.items():
        if not isinstance(value, str) or len(value) > 63 or not LABEL_VALUE.match(value):
            fail(f"{where}: label {key}={value!r} is not a valid label value")


def pod_templates(obj: dict) -> list[dict]:
    if obj["kind"] == "Deployment":
        return [obj["spec"]["template"]]
    if obj["kind"] == "CronJob":
        return [obj["spec"]["jobTemplate"]["spec"]["template"]]
    return []


def security(where: str, pod: dict) -> None:
    """Hardening of every container of a pod spec."""
    psc = pod.get("securityContext") or {}
    for c in pod["containers"] + pod.get("initContainers", []):
        sc = c.get("securityContext") or {}
        w = f"{where} container {c['name']}"
        if sc.get("readOnlyRootFilesystem") is not True:
            fail(f"{w}: readOnlyRootFilesystem is not true")
        if sc.get("allowPrivilegeEscalation") is not False:
            fail(f"{w}: allowPrivilegeEscalation is not false")
        if sc.get("privileged"):
            fail(f"{w}: privileged")
        if "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []):
            fail(f"{w}: capabilities do not drop ALL")
        seccomp = (sc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")
        if seccomp != "RuntimeDefault":
            fail(f"{w}: seccompProfile is {seccomp!r}, not RuntimeDefault")
        if sc.get("runAsNonRoot", psc.get("runAsNonRoot")) is not True:
            fail(f"{w}: runAsNonRoot is not true")
        for m in c.get("volumeMounts") or []:
            if m["name"] not in {v["name"] for v in pod.get("volumes") or []}:
                fail(f"{w}: volumeMount {m['name']} has no volume")


def selects(selector: dict, labels: dict) -> bool:
    ml = selector.get("matchLabels") or {}
    return bool(ml) and all(labels.get(k) == v for k, v in ml.items())


class Rendered:
    """The objects of one value set, by kind."""

    def __init__(self, name: str, objects: list[tuple[str, dict]]):
        self.name = name
        self.objects = objects

    def kinds(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for _, o in self.objects:
            out[o["kind"]] = out.get(o["kind"], 0) + 1
        return out

    def all(self, kind: str) -> list[dict]:
        return [o for _, o in self.objects if o["kind"] == kind]

    def one(self, kind: str, suffix: str = "") -> dict | None:
        found = [o for o in self.all(kind) if o["metadata"]["name"].endswith(suffix)]
        return found[0] if len(found) == 1 else None

    def worker(self) -> dict:
        return self.all("Deployment")[0]

    def worker_container(self) -> dict:
        return self.worker()["spec"]["template"]["spec"]["containers"][0]

    def config(self) -> dict:
        full = self.worker()["metadata"]["name"]
        cm = [o for o in self.all("ConfigMap") if o["metadata"]["name"] == full]
        return cm[0]["data"] if cm else {}


def check_references(r: Rendered) -> None:
    """Selectors, named ports and names that point at other objects."""
    deps = r.all("Deployment")
    if len(deps) != 1:
        fail(f"{r.name}: {len(deps)} Deployments, expected 1")
        return
    dep = r.worker()
    full = dep["metadata"]["name"]
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    if not selects(dep["spec"]["selector"], pod_labels):
        fail(f"{r.name}: the Deployment's selector does not select its own pods")
    pod = dep["spec"]["template"]["spec"]
    ports = {p["name"] for c in pod["containers"] for p in c.get("ports") or []}
    names = {(o["kind"], o["metadata"]["name"]) for _, o in r.objects}
    for svc in r.all("Service"):
        if not selects({"matchLabels": svc["spec"]["selector"]}, pod_labels):
            fail(f"{r.name}: Service {svc['metadata']['name']} selects no worker pod")
        for p in svc["spec"]["ports"]:
            if isinstance(p["targetPort"], str) and p["targetPort"] not in ports:
                fail(f"{r.name}: Service {svc['metadata']['name']} targets port {p['targetPort']!r}, not a container port")
    for kind in ("PodDisruptionBudget",):
        for o in r.all(kind):
            if not selects(o["spec"]["selector"], pod_labels):
                fail(f"{r.name}: {kind} {o['metadata']['name']} selects no worker pod")
    for np in r.all("NetworkPolicy"):
        if not selects(np["spec"]["podSelector"], pod_labels):
            fail(f"{r.name}: NetworkPolicy selects no worker pod")
        for rule in np["spec"].get("ingress") or []:
            for p in rule.get("ports") or []:
                if isinstance(p.get("port"), str) and p["port"] not in ports:
                    fail(f"{r.name}: NetworkPolicy allows port {p['port']!r}, not a container port")
    for c in pod.get("topologySpreadConstraints") or []:
        if not selects(c.get("labelSelector") or {}, pod_labels):
            fail(f"{r.name}: topologySpreadConstraint {c.get('topologyKey')} selects no worker pod")
    for hpa in r.all("HorizontalPodAutoscaler"):
        ref = hpa["spec"]["scaleTargetRef"]
        if (ref["kind"], ref["name"]) != ("Deployment", full):
            fail(f"{r.name}: the HPA scales {ref}, not Deployment {full}")
        if "replicas" in dep["spec"]:
            fail(f"{r.name}: the Deployment sets replicas although the HPA scales it")
    for so in r.all("ScaledObject"):
        ref = so["spec"]["scaleTargetRef"]
        if ref["name"] != full or ref.get("kind", "Deployment") != "Deployment":
            fail(f"{r.name}: the ScaledObject scales {ref}, not Deployment {full}")
        if "replicas" in dep["spec"]:
            fail(f"{r.name}: the Deployment sets replicas although KEDA scales it")
        spec = so["spec"]
        if spec.get("minReplicaCount", 0) > spec.get("maxReplicaCount", 100):
            fail(f"{r.name}: ScaledObject minReplicaCount > maxReplicaCount")
        for t in spec["triggers"]:
            md = t["metadata"]
            if t["type"] == "rabbitmq":
                if md.get("queueName") != r.config().get("CERTFLEET_WORK_QUEUE"):
                    fail(f"{r.name}: KEDA watches queue {md.get('queueName')!r}, the workers consume {r.config().get('CERTFLEET_WORK_QUEUE')!r}")
                env = {e["name"] for e in r.worker_container().get("env") or []} | set(r.config())
                if md.get("hostFromEnv") and md["hostFromEnv"] not in env:
                    fail(f"{r.name}: KEDA reads the broker URL from {md['hostFromEnv']}, which the worker does not have")
    for sm in r.all("ServiceMonitor"):
        metrics = [s for s in r.all("Service") if selects(sm["spec"]["selector"], s["metadata"]["labels"])]
        if len(metrics) != 1:
            fail(f"{r.name}: the ServiceMonitor selects {len(metrics)} Services, expected the metrics Service")
        else:
            svc_ports = {p["name"] for p in metrics[0]["spec"]["ports"]}
            for ep in sm["spec"]["endpoints"]:
                if ep.get("port") not in svc_ports:
                    fail(f"{r.name}: the ServiceMonitor scrapes port {ep.get('port')!r}, not a port of {metrics[0]['metadata']['name']}")
        if NAMESPACE not in (sm["spec"].get("namespaceSelector") or {}).get("matchNames", [NAMESPACE]):
            fail(f"{r.name}: the ServiceMonitor does not look in the release namespace")
    for ing in r.all("Ingress"):
        for rule in ing["spec"]["rules"]:
            for p in rule["http"]["paths"]:
                svc = p["backend"]["service"]
                target = [s for s in r.all("Service") if s["metadata"]["name"] == svc["name"]]
                if not target or svc["port"].get("number") not in {q["port"] for q in target[0]["spec"]["ports"]}:
                    fail(f"{r.name}: the Ingress points at {svc}, no such Service port")
    # ConfigMaps, Secrets and the ServiceAccount the pods use.
    for o in deps + r.all("CronJob"):
        for tmpl in pod_templates(o):
            spec = tmpl["spec"]
            sa = spec.get("serviceAccountName")
            if sa and r.all("ServiceAccount") and ("ServiceAccount", sa) not in names:
                fail(f"{r.name}: {o['kind']} uses ServiceAccount {sa}, not rendered")
            for c in spec["containers"]:
                for ef in c.get("envFrom") or []:
                    cm = (ef.get("configMapRef") or {}).get("name")
                    if cm and ("ConfigMap", cm) not in names:
                        fail(f"{r.name}: {o['kind']} loads ConfigMap {cm}, not rendered")
                for e in c.get("env") or []:
                    ref = (e.get("valueFrom") or {}).get("secretKeyRef")
                    if ref and ref["name"] == full and ("Secret", full) not in names:
                        fail(f"{r.name}: {o['kind']} reads {e['name']} from Secret {full}, not rendered")
                    if ref and ("Secret", ref["name"]) in names:
                        secret = [s for s in r.all("Secret") if s["metadata"]["name"] == ref["name"]][0]
                        if ref["key"] not in (secret.get("stringData") or {}) | (secret.get("data") or {}):
                            fail(f"{r.name}: {e['name']} reads key {ref['key']} the chart's Secret lacks")
            for v in spec.get("volumes") or []:
                cm = (v.get("configMap") or {}).get("name")
                if cm and cm.startswith(full) and ("ConfigMap", cm) not in names:
                    fail(f"{r.name}: volume {v['name']} mounts ConfigMap {cm}, not rendered")
            security(f"{r.name} {o['kind']}", spec)


# --- per value set ----------------------------------------------------------


def expect(cond: bool, what: str) -> None:
    if not cond:
        fail(what)


def alerts(r: Rendered) -> list[str]:
    return [rule["alert"] for pr in r.all("PrometheusRule") for g in pr["spec"]["groups"] for rule in g["rules"] if "alert" in rule]


def env_names(c: dict) -> set[str]:
    return {e["name"] for e in c.get("env") or []}


def expect_defaults(r: Rendered) -> None:
    k = r.kinds()
    for kind in ("Deployment", "ConfigMap", "ServiceAccount", "PodDisruptionBudget"):
        expect(kind in k, f"{r.name}: no {kind}")
    expect(k.get("Service") == 2, f"{r.name}: {k.get('Service')} Services, expected http01 and metrics")
    for kind in ("Secret", "CronJob", "HorizontalPodAutoscaler", "ScaledObject", "Ingress", "NetworkPolicy"):
        expect(kind not in k, f"{r.name}: a {kind} although nothing asks for it")
    expect(r.worker()["spec"].get("replicas") == 2, f"{r.name}: replicas is not 2")
    args = r.worker_container().get("args") or []
    expect(args[:2] == ["--schedule-every", "1h"], f"{r.name}: the workers do not schedule (args {args})")
    expect("CERTFLEET_ENCRYPTION_KEY_FILE" in env_names(r.worker_container()), f"{r.name}: no encryption key file")


def expect_existing_secrets(r: Rendered) -> None:
    expect("Secret" not in r.kinds(), f"{r.name}: a Secret although every secret is referenced")
    pod = r.worker()["spec"]["template"]["spec"]
    expect(bool(pod.get("topologySpreadConstraints")), f"{r.name}: no topologySpreadConstraints")
    env = env_names(r.worker_container())
    for var in ("CERTFLEET_AMQP_URL", "CERTFLEET_REDIS_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        expect(var in env, f"{r.name}: worker env has no {var}")


def expect_cronjob(r: Rendered) -> None:
    k = r.kinds()
    for kind in ("CronJob", "HorizontalPodAutoscaler", "Ingress", "Secret"):
        expect(kind in k, f"{r.name}: no {kind}")
    expect("ScaledObject" not in k, f"{r.name}: a ScaledObject beside the HPA")
    expect("replicas" not in r.worker()["spec"], f"{r.name}: replicas set although the HPA scales")
    args = r.worker_container().get("args") or []
    expect("--schedule-every" not in args, f"{r.name}: workers schedule although the CronJob does")
    cj = r.all("CronJob")
    if cj:
        c = cj[0]["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
        expect(c["args"] == ["renew", "--due", "--within", "2h"], f"{r.name}: CronJob args {c['args']}")
        expect({"CERTFLEET_AMQP_URL", "CERTFLEET_REDIS_URL"} <= env_names(c), f"{r.name}: the CronJob lacks the broker or Redis URL")
    sec = r.all("Secret")
    if sec:
        data = sec[0].get("stringData") or {}
        expect(set(data) == {"amqp-url", "redis-url", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "encryption-key", "eab-hmac-key"},
               f"{r.name}: Secret keys {sorted(data)}")
    expect("CERTFLEET_ACME_CA_CERTS" in env_names(r.worker_container()), f"{r.name}: no CERTFLEET_ACME_CA_CERTS")


def expect_dns01(r: Rendered) -> None:
    k = r.kinds()
    cfg = r.config()
    want = {
        "CERTFLEET_WORKER_BINDINGS": "job.*.dns-01",
        "CERTFLEET_WORK_QUEUE": "certfleet.work.dns",
        "CERTFLEET_DNS01_PROVIDER": "rfc2136",
        "CERTFLEET_DNS01_ZONES": "example.org=cloudflare,shop.example=acme-dns",
        "CERTFLEET_DNS01_RESOLVERS": "10.96.0.10:53,[fd00::a]:53",
        "CERTFLEET_DNS01_PROPAGATION_TIMEOUT": "3m",
        "CERTFLEET_DNS01_TTL": "120",
        "CERTFLEET_RFC2136_NAMESERVER": "ns1.corp.example:53",
        "CERTFLEET_RFC2136_TSIG_KEY": "certfleet.",
    }
    for key, value in want.items():
        expect(cfg.get(key) == value, f"{r.name}: ConfigMap {key}={cfg.get(key)!r}, expected {value!r}")
    refs = [ef.get("secretRef", {}).get("name") for ef in r.worker_container().get("envFrom") or []]
    expect("certfleet-dns01" in refs, f"{r.name}: the worker does not load Secret certfleet-dns01 (envFrom {refs})")
    svcs = [s["metadata"]["name"] for s in r.all("Service")]
    expect(not any(s.endswith("-http01") for s in svcs), f"{r.name}: an http-01 Service in a dns-01 pool ({svcs})")
    expect("CronJob" not in k and "--schedule-every" not in (r.worker_container().get("args") or []),
           f"{r.name}: the dns-01 pool schedules renewals")
    expect("CERTFLEET_RECIPIENTS_FILE" in env_names(r.worker_container()), f"{r.name}: no recipients file")


def expect_metrics(r: Rendered) -> None:
    k = r.kinds()
    for kind in ("ServiceMonitor", "PrometheusRule", "ScaledObject", "NetworkPolicy"):
        expect(k.get(kind) == 1, f"{r.name}: {k.get(kind, 0)} {kind}, expected 1")
    expect("HorizontalPodAutoscaler" not in k, f"{r.name}: an HPA beside the ScaledObject")
    expect("PodDisruptionBudget" in k, f"{r.name}: no PodDisruptionBudget although KEDA runs 2 or more")
    n = alerts(r)
    expect(len(n) >= 8 and len(n) == len(set(n)), f"{r.name}: {len(n)} alerts (distinct {len(set(n))}), expected >= 8")
    dash = r.one("ConfigMap", "-dashboard")
    expect(dash is not None and dash["metadata"]["namespace"] == "monitoring"
           and dash["metadata"]["labels"].get("grafana_dashboard") == "1", f"{r.name}: no dashboard ConfigMap for the sidecar")
    if dash:
        import json
        try:
            expect(bool(json.loads(dash["data"]["certfleet.json"]).get("panels")), f"{r.name}: the dashboard has no panels")
        except ValueError as e:
            fail(f"{r.name}: the dashboard is not JSON: {e}")
    expect(r.one("ConfigMap", "-recipients") is not None, f"{r.name}: no recipients ConfigMap")
    np = r.all("NetworkPolicy")
    if np:
        expect(set(np[0]["spec"]["policyTypes"]) == {"Ingress", "Egress"}, f"{r.name}: NetworkPolicy policyTypes {np[0]['spec']['policyTypes']}")
    pod = r.worker()["spec"]["template"]["spec"]
    expect(len(pod.get("topologySpreadConstraints") or []) == 2, f"{r.name}: expected 2 topologySpreadConstraints")
    so = r.all("ScaledObject")
    if so:
        expect(so[0]["spec"]["triggers"][0]["metadata"].get("value") == "32", f"{r.name}: KEDA queue length per worker is not config.concurrency")


EXPECT: dict[str, Callable[[Rendered], None]] = {
    "defaults": expect_defaults,
    "existing-secrets": expect_existing_secrets,
    "cronjob": expect_cronjob,
    "dns01": expect_dns01,
    "metrics": expect_metrics,
}

# --- run --------------------------------------------------------------------


def load_values(path: str) -> dict:
    with open(path) as f:
        return hchart.values_from_yaml(f.read())


def kv_validate(where: str, obj: dict, counts: dict) -> None:
    key = (obj.get("apiVersion"), obj.get("kind"))
    if key in CUSTOM:
        errors = sorted(jsonschema.Draft7Validator(CUSTOM[key]).iter_errors(obj), key=lambda e: list(e.path))
        for e in errors:
            fail(f"{where}: {'.'.join(map(str, e.path)) or '(root)'}: {e.message}")
        counts["custom"] += 1
        return
    for version in KUBE_VERSIONS:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            fail(f"{where} (Kubernetes {e.version}): {'.'.join(map(str, e.path)) or '(root)'}: {e.message}")
        except kubernetes_validate.SchemaNotFoundError as e:
            fail(f"{where}: {e.message}")
    counts["k8s"] += 1


def render_set(c: hchart.Chart, name: str, values: dict, release: str, counts: dict) -> Rendered | None:
    try:
        manifests = c.render(values=values, name=release, namespace=NAMESPACE)
    except Exception as e:  # noqa: BLE001 - any Helm error is a failure here
        fail(f"{name}: render failed: {e}")
        return None
    objects: list[tuple[str, dict]] = []
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            if not text.strip():
                fail(f"{name}: NOTES.txt is empty")
            continue
        try:
            docs = [d for d in yaml.safe_load_all(text) if d]
        except yaml.YAMLError as e:
            fail(f"{name} {path}: not YAML: {e}")
            continue
        for doc in docs:
            if not isinstance(doc, dict) or "kind" not in doc or "apiVersion" not in doc:
                fail(f"{name} {path}: not a Kubernetes object: {str(doc)[:80]}")
                continue
            where = f"{name} {path} {doc['kind']}/{(doc.get('metadata') or {}).get('name')}"
            kv_validate(where, doc, counts)
            check_names(where, doc)
            ns = (doc.get("metadata") or {}).get("namespace")
            if ns is None:
                fail(f"{where}: no metadata.namespace")
            objects.append((path, doc))
    return Rendered(name, objects)


def lint(name: str, values: dict) -> list[str]:
    report = hchart.lint(CHART_DIR, values, strict=True, kube_version=f"v{KUBE_VERSIONS[-1]}", namespace=NAMESPACE)
    problems = [f"[{m['severity']}] {m['path']}: {m['error'].strip()}" for m in report.get("messages") or [] if m["severity"] >= 2]
    problems += [e.strip() for e in report.get("errors") or [] if not any(e.strip() in p for p in problems)]
    return problems


def case_header(path: str) -> tuple[str, str]:
    label, expected = os.path.basename(path), ""
    with open(path) as f:
        for line in f:
            if not line.startswith("#"):
                break
            text = line[1:].strip()
            if text.startswith("expect:"):
                expected = text[len("expect:"):].strip()
            elif label == os.path.basename(path) and text:
                label = text
    return label, expected


def main() -> int:
    c = hchart.Chart.load(CHART_DIR)
    sets: list[tuple[str, dict]] = [("defaults", copy.deepcopy(DEFAULTS))]
    for path in sorted(glob.glob(os.path.join(CHART_DIR, "ci", "*-values.yaml"))):
        sets.append((os.path.basename(path)[: -len("-values.yaml")], load_values(path)))
    print(f"helm-check: Kubernetes schemas {', '.join(KUBE_VERSIONS)} (kubernetes-validate {kubernetes_validate.__version__}, strict)")
    total = {"k8s": 0, "custom": 0}
    for name, values in sets:
        counts = {"k8s": 0, "custom": 0}
        before = len(failures)
        release = RELEASE.get(name, "certfleet-" + name)
        r = render_set(c, name, values, release, counts)
        if r is not None:
            check_references(r)
            if name in EXPECT:
                EXPECT[name](r)
            kinds = ", ".join(f"{n} {k}" for k, n in sorted(r.kinds().items()))
        else:
            kinds = "-"
        lint_problems = lint(name, values)
        for p in lint_problems:
            fail(f"{name}: helm lint --strict: {p}")
        total["k8s"] += counts["k8s"]
        total["custom"] += counts["custom"]
        status = "ok" if len(failures) == before else f"{len(failures) - before} failure(s)"
        print(f"value set {name} (release {release}): {counts['k8s']} objects validated, "
              f"{counts['custom']} custom resources checked, lint {'clean' if not lint_problems else 'FAILED'}; {status}\n  {kinds}")

    refusals = accepted = 0
    for path in sorted(glob.glob(os.path.join(CASES_DIR, "*.yaml"))):
        base = os.path.basename(path)
        must_refuse = base.startswith("refused-")
        if not must_refuse and not base.startswith("accepted-"):
            continue
        label, expected = case_header(path)
        values = load_values(path)
        verdicts: dict[str, str | None] = {}
        try:
            c.validate_schema(values)
            verdicts["schema"] = None
        except Exception as e:  # noqa: BLE001
            verdicts["schema"] = f"{type(e).__name__}: {first_line(e)}"
            full_error = str(e)
        try:
            c.render(values=values, name="certfleet", namespace=NAMESPACE)
            verdicts["render"] = None
        except Exception as e:  # noqa: BLE001
            verdicts["render"] = first_line(e)
        problems = lint(base, values)
        verdicts["lint"] = problems[0].splitlines()[0] if problems else None
        if must_refuse:
            missed = [k for k, v in verdicts.items() if v is None]
            if missed:
                fail(f"{base} ({label}): accepted by {', '.join(missed)}, must be refused")
            elif expected and expected not in full_error:
                fail(f"{base} ({label}): refused, but not for {expected!r}: {full_error.strip()}")
            else:
                refusals += 1
                print(f"refused as expected (schema, render and lint): {label} [{base}]\n  {verdicts['schema']}")
        else:
            refused = {k: v for k, v in verdicts.items() if v is not None}
            if refused:
                fail(f"{base} ({label}): refused by {refused}, must be accepted")
            else:
                accepted += 1
                print(f"accepted as expected: {label} [{base}]")

    n_sets = len(sets)
    print(f"helm-check: {n_sets} value sets, {total['k8s']} objects validated against Kubernetes "
          f"{' and '.join('.'.join(v.split('.')[:2]) for v in KUBE_VERSIONS)} schemas, "
          f"{total['custom']} custom resources checked (ServiceMonitor, PrometheusRule, ScaledObject), "
          f"{refusals} refusals and {accepted} accepted case(s) as expected, {len(failures)} failure(s)")
    if failures:
        print("FAILED:", file=sys.stderr)
        for f in failures:
            print(f"  {f}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
