#!/usr/bin/env python3
"""Renders the overlays with and without the monitoring pieces and checks that each patch lands.

The defaults deploy/README.md documents, and what changes them:

* `components/monitoring` is on in production and staging: the ServiceMonitor,
  the PodMonitor, the PrometheusRule and the dashboard are rendered into the
  overlay's namespace; an overlay without it renders no Prometheus Operator
  object at all;
* `components/prometheus-release-label` is off: no object carries `release`;
  with it, every monitoring.coreos.com object of the overlay (the queue
  exporter's too) carries `release: <the component's value>` and nothing else
  changes;
* Prometheus runs in the namespace `monitoring` (the NetworkPolicy's scrape
  rule, KEDA's Prometheus address); the README's patch block, applied to each
  shipped overlay, moves both to another namespace and changes nothing else.

kustomize applies a patch whose target matches nothing without a word, so each
check compares renders with and without the piece.

usage: check_monitoring_patches.py --rendered-dir DIR [--repo DIR]
DIR holds OVERLAY.yaml renders (production, staging, production-keda,
all-components) as written by scripts/validate-deploy.sh.
"""
import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from check_manifests import Checker, find  # noqa: E402

WITH_MONITORING = ("production", "staging", "production-keda")
NETPOL = "embedding-queue-workers-netpol"
METRICS_PORT = 9091
DASHBOARD = "embq-worker-dashboard"
DEFAULT_PROMETHEUS_NAMESPACE = "monitoring"
# The sentence above the README's namespace patch block.
NAMESPACE_PATCH_MARKER = "Prometheus in a namespace other than `monitoring`"


def load(path):
    return [d for d in yaml.safe_load_all(Path(path).read_text(encoding="utf-8")) if d]


class Renderer:
    """Writes throwaway overlays beside each other and renders them with kubectl's kustomize."""

    def __init__(self, repo, tmp):
        self.repo = repo
        self.tmp = Path(tmp)

    def render(self, name, resources, components=(), patches=None, namespace="paperless-maverick"):
        directory = self.tmp / name
        directory.mkdir()
        # kustomize refuses absolute paths to other kustomizations; relative ones may leave the root.
        rel = [os.path.relpath(self.repo / "deploy/kubernetes" / p, directory) for p in resources]
        kustomization = {
            "apiVersion": "kustomize.config.k8s.io/v1beta1",
            "kind": "Kustomization",
            "namespace": namespace,
            "resources": rel,
        }
        if components:
            kustomization["components"] = [os.path.relpath(self.repo / "deploy/kubernetes" / p, directory) for p in components]
        if patches:
            kustomization["patches"] = patches
        (directory / "kustomization.yaml").write_text(yaml.safe_dump(kustomization), encoding="utf-8")
        out = subprocess.run(["kubectl", "kustomize", str(directory)], capture_output=True, text=True, check=False)
        if out.returncode != 0:
            raise RuntimeError(f"kubectl kustomize {name}: {out.stderr.strip()}")
        return [d for d in yaml.safe_load_all(out.stdout) if d]


def key(doc):
    return (doc["kind"], doc["metadata"]["name"])


def monitoring_objects(docs):
    return [d for d in docs if d.get("apiVersion", "").startswith("monitoring.coreos.com/")]


def released(docs):
    return sorted(key(d) for d in docs if "release" in d["metadata"].get("labels", {}))


def scrape_namespaces(docs):
    """Namespaces the workers' NetworkPolicy admits to the metrics port."""
    names = set()
    for netpol in find(docs, "NetworkPolicy", NETPOL):
        for rule in netpol["spec"].get("ingress", []):
            if METRICS_PORT not in {p.get("port") for p in rule.get("ports", [])}:
                continue
            for peer in rule.get("from", []):
                labels = peer.get("namespaceSelector", {}).get("matchLabels", {})
                if "kubernetes.io/metadata.name" in labels:
                    names.add(labels["kubernetes.io/metadata.name"])
    return names


def prometheus_addresses(docs):
    return [
        t["metadata"]["serverAddress"]
        for so in find(docs, "ScaledObject")
        for t in so["spec"].get("triggers", [])
        if t["type"] == "prometheus"
    ]


def without(docs, kinds):
    return sorted((yaml.safe_dump(d) for d in docs if d["kind"] not in kinds))


def readme_defaults(readme):
    """The Components table: component -> its documented default."""
    return dict(re.findall(r"^\| `([a-z-]+)` \| ([^|]+?) \|", readme, re.M))


def readme_patch_block(readme):
    start = readme.index(NAMESPACE_PATCH_MARKER)
    block = re.search(r"```yaml\n(.*?)```", readme[start:], re.S)
    return yaml.safe_load(block.group(1))["patches"]


def release_value(repo):
    path = repo / "deploy/kubernetes/components/prometheus-release-label/kustomization.yaml"
    component = yaml.safe_load(path.read_text(encoding="utf-8"))
    ops = [op for p in component["patches"] for op in yaml.safe_load(p["patch"])]
    return next(op["value"] for op in ops if op["path"] == "/metadata/labels/release")


def check_defaults(c, readme, rendered):
    defaults = readme_defaults(readme)
    c.check(defaults.get("monitoring") == "on in production, staging", f"README: monitoring component default {defaults.get('monitoring')!r}")
    c.check(defaults.get("prometheus-release-label") == "off", f"README: release label default {defaults.get('prometheus-release-label')!r}")
    c.check(f"a namespace called `{DEFAULT_PROMETHEUS_NAMESPACE}`" in readme, "README no longer names Prometheus' default namespace")
    for overlay in WITH_MONITORING:
        docs = rendered[overlay]
        namespace = find(docs, "Deployment", "embedding-queue-workers")[0]["metadata"]["namespace"]
        kinds = {d["kind"] for d in monitoring_objects(docs)}
        c.check({"ServiceMonitor", "PodMonitor", "PrometheusRule"} <= kinds, f"{overlay}: monitoring component renders only {sorted(kinds)}")
        c.check(find(docs, "ConfigMap", DASHBOARD), f"{overlay}: no dashboard ConfigMap")
        for d in monitoring_objects(docs) + find(docs, "ConfigMap", DASHBOARD):
            c.check(d["metadata"].get("namespace") == namespace, f"{overlay}: {key(d)} not in the workers' namespace {namespace}")
        c.check(not released(docs), f"{overlay}: release label without the component on {released(docs)}")
        c.check(scrape_namespaces(docs) == {DEFAULT_PROMETHEUS_NAMESPACE}, f"{overlay}: scrapes admitted from {scrape_namespaces(docs)}")
    addresses = prometheus_addresses(rendered["production-keda"])
    c.check(addresses and all(f".{DEFAULT_PROMETHEUS_NAMESPACE}.svc" in a for a in addresses), f"production-keda: Prometheus at {addresses}")


def check_without_monitoring(c, r):
    """README: "Without the Prometheus Operator, drop components/monitoring from your overlay"."""
    docs = r.render("no-monitoring", ["base"])
    c.check(find(docs, "Deployment", "embedding-queue-workers"), "base without monitoring renders no workers")
    c.check(not monitoring_objects(docs), f"base without monitoring renders {[key(d) for d in monitoring_objects(docs)]}")
    c.check(not find(docs, "ConfigMap", DASHBOARD), "base without monitoring renders the dashboard")


def check_release_label(c, r, repo, rendered):
    value = release_value(repo)
    cases = {
        "production": (["overlays/production"], []),
        "production-keda": (["overlays/production-keda"], []),
        # Components that add monitoring objects come before the label (README, "Components").
        "production+queue-exporter": (["overlays/production"], ["components/queue-exporter"]),
    }
    for name, (resources, components) in cases.items():
        plain = r.render(f"{name}-plain", resources, components)
        labelled = r.render(f"{name}-released", resources, components + ["components/prometheus-release-label"])
        targets = sorted(key(d) for d in monitoring_objects(plain))
        c.check(targets, f"{name}: no monitoring objects to label")
        c.check(released(labelled) == targets, f"{name}: release label on {released(labelled)}, expected on {targets}")
        for d in monitoring_objects(labelled):
            got = d["metadata"]["labels"].get("release")
            c.check(got == value, f"{name}: {key(d)} has release {got!r}, the component sets {value!r}")
        for d in labelled:
            d["metadata"].get("labels", {}).pop("release", None)
        c.check(without(labelled, ()) == without(plain, ()), f"{name}: the component changes more than the release label")
    everything = rendered["all-components"]
    c.check(
        released(everything) == sorted(key(d) for d in monitoring_objects(everything)),
        f"all-components: release label on {released(everything)}",
    )


def check_namespace_patch(c, r, readme):
    patches = readme_patch_block(readme)
    ops = [op for p in patches for op in yaml.safe_load(p["patch"])]
    namespace = next(op["value"] for op in ops if "namespaceSelector" in op["path"])
    address = next(op["value"] for op in ops if op["path"].endswith("serverAddress"))
    c.check(namespace != DEFAULT_PROMETHEUS_NAMESPACE and f".{namespace}.svc" in address, f"README patch: {namespace} vs {address}")
    for overlay in WITH_MONITORING:
        plain = r.render(f"{overlay}-ns-plain", [f"overlays/{overlay}"])
        moved = r.render(f"{overlay}-ns-moved", [f"overlays/{overlay}"], patches=patches)
        c.check(scrape_namespaces(moved) == {namespace}, f"{overlay} + README patch: scrapes admitted from {scrape_namespaces(moved)}")
        if find(plain, "ScaledObject"):
            got = prometheus_addresses(moved)
            c.check(got and set(got) == {address}, f"{overlay} + README patch: KEDA's Prometheus at {got}")
        c.check(
            without(moved, {"NetworkPolicy", "ScaledObject"}) == without(plain, {"NetworkPolicy", "ScaledObject"}),
            f"{overlay} + README patch: changes more than the NetworkPolicy and the ScaledObject",
        )
        leftover = [
            key(d)
            for d in moved
            if f".{DEFAULT_PROMETHEUS_NAMESPACE}.svc" in yaml.safe_dump(d) or DEFAULT_PROMETHEUS_NAMESPACE in scrape_namespaces([d])
        ]
        c.check(not leftover, f"{overlay} + README patch: still points at {DEFAULT_PROMETHEUS_NAMESPACE} in {leftover}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rendered-dir", required=True)
    ap.add_argument("--repo", default=str(Path(__file__).resolve().parents[2]))
    args = ap.parse_args()
    repo = Path(args.repo)
    readme = (repo / "deploy/README.md").read_text(encoding="utf-8")
    rendered = {n: load(Path(args.rendered_dir) / f"{n}.yaml") for n in WITH_MONITORING + ("all-components",)}
    c = Checker()
    with tempfile.TemporaryDirectory(prefix="monitoring-patches.") as tmp:
        r = Renderer(repo, tmp)
        for check in (
            lambda: check_defaults(c, readme, rendered),
            lambda: check_without_monitoring(c, r),
            lambda: check_release_label(c, r, repo, rendered),
            lambda: check_namespace_patch(c, r, readme),
        ):
            try:
                check()
            except (RuntimeError, KeyError, ValueError, StopIteration, AttributeError) as e:
                c.check(False, f"{type(e).__name__}: {e}")
    return c.report("check_monitoring_patches")


if __name__ == "__main__":
    sys.exit(main())
