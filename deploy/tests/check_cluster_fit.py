#!/usr/bin/env python3
"""Checks that the manifests fit a real managed cluster shared with other tools (issue 19).

check_manifests.py says the manifests fit the worker; this says they fit the
cluster around it:

* prometheus-adapter registers no external metrics API (KEDA owns it) and no
  HPA asks for an External metric; queue gauges are aggregated with max();
* the replica ceiling follows the provider budget, the HPA no longer scales
  on CPU or memory, and the adapter's quota cap matches the HPA's target;
* KEDA reads PostgreSQL through its own TriggerAuthentication, never the
  workers' read-write DATABASE_URL, and its formula honours the limiter;
* monitoring covers an empty fleet (absent() on the workers) and the
  controller (PodMonitor and alerts);
* the shipped overlays carry no Namespace and no VPA; the controller's Role
  names the objects it gets and patches;
* every opt-in component renders into a valid, restricted fleet, and the
  queue exporter runs none of postgres_exporter's default collectors.

usage: check_cluster_fit.py --rendered-dir DIR [--repo DIR]
DIR holds OVERLAY.yaml renders (production, staging, production-keda, canary,
all-components) as written by scripts/validate-deploy.sh.
"""
import argparse
import math
import re
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from check_manifests import Checker, container, find, check_pod_security  # noqa: E402

# The p95 time of one provider request assumed when deriving maxReplicas
# (base/hpa.yaml documents the formula).
REQUEST_SECONDS = 6
QUEUE_GAUGES = ("embedding_queue_depth", "embedding_queue_oldest_ready_age_seconds")
SHIPPED = ("production", "staging", "production-keda", "canary")


def load(rendered, name):
    return [d for d in yaml.safe_load_all((Path(rendered) / f"{name}.yaml").read_text(encoding="utf-8")) if d]


def derived_max(min_replicas, config):
    data = config["data"]
    rpm = int(data["MAX_REQUESTS_PER_MINUTE"])
    jobs = int(data["MAX_CONCURRENT_JOBS"])
    return min_replicas + math.ceil(rpm / 60 * REQUEST_SECONDS / jobs)


def check_gauge_aggregation(c, tag, expr):
    """Only one pod exports the queue gauges at a time: sum() over pods is wrong, max() right."""
    for gauge in QUEUE_GAUGES:
        for m in re.finditer(r"\b(sum|avg|count)\b[^()]*\(\s*(?:<<\.Series>>|" + gauge + r")\b", expr):
            c.check(False, f"{tag}: aggregates {gauge} with {m.group(1)}(), use max()")


def check_adapter(c, repo, docs_by_overlay):
    values = yaml.safe_load((repo / "deploy/monitoring/prometheus-adapter/values.yaml").read_text(encoding="utf-8"))
    rules = values.get("rules", {})
    c.check(
        not rules.get("external"),
        "prometheus-adapter: rules.external makes the chart register APIService "
        "v1beta1.external.metrics.k8s.io, which KEDA (overlays/production-keda) registers too",
    )
    for section in ("custom", "external"):
        for rule in rules.get(section) or []:
            check_gauge_aggregation(c, f"prometheus-adapter {section} rule {rule['name']['as']}", rule["metricsQuery"])
    depth = [r for r in rules.get("custom") or [] if r["name"]["as"] == "embedding_queue_depth"]
    if c.check(len(depth) == 1, "prometheus-adapter: no custom rule serves embedding_queue_depth"):
        caps = set(re.findall(r"(\d+) \* count by", depth[0]["metricsQuery"]))
        for overlay, docs in docs_by_overlay.items():
            for hpa in find(docs, "HorizontalPodAutoscaler"):
                for m in hpa["spec"].get("metrics", []):
                    c.check(m["type"] != "External", f"{overlay}: HPA asks for External metric {m}, no adapter serves it")
                    if m["type"] == "Object" and m["object"]["metric"]["name"] == "embedding_queue_depth":
                        target = m["object"]["target"].get("averageValue")
                        c.check(
                            caps == {str(target)},
                            f"{overlay}: the adapter caps the depth at {caps} x workers, the HPA's target is {target}",
                        )


def check_scaling(c, docs_by_overlay):
    prod = docs_by_overlay["production"]
    config = find(prod, "ConfigMap", "embedding-worker-config")[0]
    for overlay in ("production", "staging"):
        for hpa in find(docs_by_overlay[overlay], "HorizontalPodAutoscaler"):
            spec = hpa["spec"]
            want = derived_max(spec.get("minReplicas", 1), config)
            c.check(
                spec["maxReplicas"] == want,
                f"{overlay}: HPA maxReplicas {spec['maxReplicas']}, the provider budget gives {want}",
            )
            resources = [m["resource"]["name"] for m in spec.get("metrics", []) if m["type"] == "Resource"]
            c.check(not resources, f"{overlay}: HPA scales on {resources}, which keep idle replicas up")
    keda = docs_by_overlay["production-keda"]
    hpa_max = derived_max(2, config)
    for so in find(keda, "ScaledObject"):
        spec = so["spec"]
        c.check(spec.get("maxReplicaCount") == hpa_max, f"production-keda: maxReplicaCount {spec.get('maxReplicaCount')}, the budget gives {hpa_max}")
        mods = spec.get("advanced", {}).get("scalingModifiers", {})
        names = {t.get("name") for t in spec.get("triggers", [])}
        formula = mods.get("formula", "")
        c.check("limited" in names and "limited" in formula, "production-keda: no limiter signal in scalingModifiers.formula")
        c.check(set(re.findall(r"[a-z_]+", formula)) - {"min", "max"} <= names, f"production-keda: formula {formula!r} names unknown triggers")
        auths = {t["metadata"]["name"]: t for t in find(keda, "TriggerAuthentication")}
        for trig in spec.get("triggers", []):
            check_gauge_aggregation(c, f"production-keda trigger {trig.get('name')}", trig["metadata"].get("query", ""))
            if trig["type"] != "postgresql":
                continue
            c.check(
                "connectionFromEnv" not in trig["metadata"] and "connection" not in trig["metadata"],
                "production-keda: the postgresql trigger must not use the workers' DATABASE_URL",
            )
            ref = trig.get("authenticationRef", {}).get("name")
            auth = auths.get(ref)
            if c.check(auth is not None, f"production-keda: postgresql trigger's TriggerAuthentication {ref} is not rendered"):
                secrets = {(s["name"], s["key"]) for s in auth["spec"].get("secretTargetRef", [])}
                c.check(
                    ("supabase-secrets", "database-url") not in secrets,
                    "production-keda: KEDA must use its own read-only role, not supabase-secrets/database-url",
                )


def check_monitoring(c, docs_by_overlay):
    for overlay in ("production", "staging"):
        docs = docs_by_overlay[overlay]
        exprs = {r.get("alert"): r["expr"] for p in find(docs, "PrometheusRule") for g in p["spec"]["groups"] for r in g["rules"]}
        for name, expr in exprs.items():
            check_gauge_aggregation(c, f"{overlay}: alert {name}", expr)
        c.check(
            any(re.search(r'absent\(\s*up\{job="embedding-queue-workers-service"', e) for e in exprs.values()),
            f"{overlay}: no absent() alert on the workers' series (an empty fleet is silent)",
        )
        c.check(
            any("restart_controller_" in e or 'job="worker-restart-controller"' in e for e in exprs.values()),
            f"{overlay}: no alert on the restart controller",
        )
        ctl = find(docs, "Deployment", "worker-restart-controller")
        pms = [p for p in find(docs, "PodMonitor") if p["spec"]["selector"]["matchLabels"] == {"app": "worker-restart-controller"}]
        if c.check(len(pms) == 1 and ctl, f"{overlay}: no PodMonitor for the restart controller"):
            ports = {p["name"] for p in container(ctl[0], "controller")["ports"]}
            for ep in pms[0]["spec"]["podMetricsEndpoints"]:
                c.check(ep.get("port") in ports and ep.get("path") == "/metrics", f"{overlay}: controller PodMonitor endpoint {ep}")
            c.check(pms[0]["spec"].get("jobLabel") == "app", f"{overlay}: the controller alerts expect job=worker-restart-controller")


def check_least_privilege(c, repo, docs_by_overlay):
    for overlay in SHIPPED:
        for kind in ("Namespace", "VerticalPodAutoscaler"):
            c.check(not find(docs_by_overlay[overlay], kind), f"{overlay}: ships a {kind}; it belongs in an opt-in component")
    docs = docs_by_overlay["production"]
    names = {
        "deployments": {"embedding-queue-workers"},
        "horizontalpodautoscalers": {h["metadata"]["name"] for h in find(docs, "HorizontalPodAutoscaler")},
        "scaledobjects": {s["metadata"]["name"] for s in find(docs_by_overlay["production-keda"], "ScaledObject")},
        "leases": {"worker-restart-controller"},
    }
    role = find(docs, "Role", "worker-restart-controller")[0]
    for rule in role["rules"]:
        named_verbs = set(rule["verbs"]) & {"get", "patch", "update", "delete"}
        for resource in rule["resources"]:
            if named_verbs and resource in names:
                c.check(
                    set(rule.get("resourceNames", [])) == names[resource],
                    f"controller Role: {sorted(named_verbs)} on {resource} should be limited to {sorted(names[resource])}",
                )
            if set(rule["verbs"]) & {"list", "create", "watch"}:
                c.check("resourceNames" not in rule, f"controller Role: resourceNames on {rule['verbs']} {resource} have no effect")


def check_components(c, docs):
    where = "all-components"
    workers = [d for d in find(docs, "Deployment") if d["spec"]["template"]["metadata"]["labels"].get("app") == "embedding-queue-worker"]
    for d in find(docs, "Deployment"):
        check_pod_security(c, where, d)
        ann = d["spec"]["template"]["metadata"].get("annotations", {})
        if d in workers or d["metadata"]["name"] == "worker-restart-controller":
            c.check(ann.get("linkerd.io/inject") == "enabled", f"{where}: {d['metadata']['name']} not meshed by the linkerd component")
    for d in workers:
        spec = d["spec"]["template"]["spec"]
        c.check(spec.get("nodeSelector") and spec.get("tolerations") and spec.get("affinity"), f"{where}: placement missing on {d['metadata']['name']}")
    ns = find(docs, "Namespace")
    c.check(
        len(ns) == 1 and ns[0]["metadata"]["labels"].get("pod-security.kubernetes.io/enforce") == "restricted",
        f"{where}: the namespace component should render a restricted Namespace",
    )
    c.check(len(find(docs, "VerticalPodAutoscaler")) == 1, f"{where}: the vpa component renders no VPA")
    egress = find(docs, "NetworkPolicy", "embedding-queue-workers-provider-egress")
    ports = {p["port"] for n in egress for r in n["spec"]["egress"] for p in r.get("ports", [])}
    c.check({8080, 8000, 11434} <= ports, f"{where}: provider egress allows {sorted(ports)}, not TEI/vLLM/Ollama")
    for kind in ("ServiceMonitor", "PodMonitor", "PrometheusRule"):
        for obj in find(docs, kind):
            c.check("release" in obj["metadata"].get("labels", {}), f"{where}: {kind} {obj['metadata']['name']} lacks the release label")
    c.check(find(docs, "Deployment", "embq-queue-exporter"), f"{where}: the queue-exporter component renders no exporter")


# The collectors each postgres_exporter release enables by default (its collector/*.go,
# registerCollector(..., defaultEnabled, ...)); PG_EXPORTER_DISABLE_DEFAULT_METRICS does not stop them.
EXPORTER_DEFAULT_COLLECTORS = {
    "v0.15.0": {
        "database", "locks", "replication", "replication_slot", "stat_bgwriter",
        "stat_database", "stat_user_tables", "statio_user_tables", "wal",
    },
}


def check_queue_exporter(c, docs):
    """The exporter's read-only role runs only queries.yaml: every default collector is off."""
    where = "all-components: embq-queue-exporter"
    for d in find(docs, "Deployment", "embq-queue-exporter"):
        ctr = container(d, "exporter")
        tag = ctr["image"].rsplit(":", 1)[-1]
        defaults = EXPORTER_DEFAULT_COLLECTORS.get(tag)
        if not c.check(defaults is not None, f"{where}: image tag {tag}: list its default collectors in EXPORTER_DEFAULT_COLLECTORS"):
            continue
        off = {a.removeprefix("--no-collector.") for a in ctr.get("args", []) if a.startswith("--no-collector.")}
        c.check(off == defaults, f"{where}: collectors left on {sorted(defaults - off)}, unknown flags {sorted(off - defaults)}")
        env = {e["name"]: e.get("value") for e in ctr.get("env", [])}
        c.check(env.get("PG_EXPORTER_DISABLE_DEFAULT_METRICS") == "true", f"{where}: default metrics on")
        c.check(env.get("PG_EXPORTER_DISABLE_SETTINGS_METRICS") == "true", f"{where}: pg_settings metrics on")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rendered-dir", required=True)
    ap.add_argument("--repo", default=str(Path(__file__).resolve().parents[2]))
    args = ap.parse_args()
    repo = Path(args.repo)
    c = Checker()
    docs = {name: load(args.rendered_dir, name) for name in SHIPPED}
    check_adapter(c, repo, docs)
    check_scaling(c, docs)
    check_monitoring(c, docs)
    check_least_privilege(c, repo, docs)
    all_components = Path(args.rendered_dir) / "all-components.yaml"
    if c.check(all_components.exists(), "no render of deploy/tests/overlays/all-components"):
        check_components(c, load(args.rendered_dir, "all-components"))
        check_queue_exporter(c, load(args.rendered_dir, "all-components"))
    return c.report("check_cluster_fit")


if __name__ == "__main__":
    sys.exit(main())
