#!/usr/bin/env python3
"""Checks the operator's commands in deploy/README.md against the rendered manifests.

The README is the path from an empty cluster to running workers; a name that
drifts in it fails only on a real cluster. This checks, offline:

* Secrets and ConfigMaps: every key a rendered object reads from a Secret or
  ConfigMap that kustomize does not generate is created by a README command
  (unless the reference is optional), and every key a README command creates
  is read by something (except the seed's keys the README keeps for others);
* the objects its kubectl commands name (`deployment/NAME`, `hpa NAME`, ...)
  and the labels they select exist in some render, and the custom metrics API
  paths name a rendered Service and a metric prometheus-adapter serves;
* the hand-run migration: the README's sed gives every container of the
  migrate Job the image it names;
* deploy-workers.sh: the options table and the options the README's commands
  use are those the script accepts, `--environment` names an overlay, the exit
  codes are the script's;
* the worker metrics the README quotes exist (EMBQ_BIN, as check_manifests.py;
  EMBQ_ASSUME_LISTS=1 for the agreed list), and an HPA failure reason it
  quotes fits a metric type the HPA uses.

usage: check_readme_steps.py --rendered-dir DIR [--repo DIR]
DIR holds the renders scripts/validate-deploy.sh writes (the overlays, base,
monitoring, migrate, all-components).
"""
import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from check_manifests import Checker, worker_lists  # noqa: E402

# Keys the README creates that nothing in deploy/ reads, and why (the README says so too).
UNREAD_KEYS = {
    ("Secret", "supabase-secrets", "url"): "the seed's key, kept for other consumers",
    ("Secret", "supabase-secrets", "service-role-key"): "the seed's key, kept for other consumers",
}
# Objects the README names that no manifest renders, and who makes them.
MADE_ELSEWHERE = {
    ("ConfigMap", "embq-applyset"): "kubectl's ApplySet parent, made by deploy-workers.sh",
}
KINDS = {
    "deployment": "Deployment",
    "job": "Job",
    "cronjob": "CronJob",
    "configmap": "ConfigMap",
    "hpa": "HorizontalPodAutoscaler",
    "vpa": "VerticalPodAutoscaler",
    "scaledobject": "ScaledObject",
}


def commands(readme):
    """Shell lines of the README's bash blocks (continuation lines joined, comments dropped) and
    the kubectl commands its prose quotes."""
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", readme, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if line and not line.startswith("#"):
                lines.append(line)
    # Commands quoted in the prose, too.
    lines += re.findall(r"`(kubectl [^`]+)`", readme.replace("\n", " "))
    return lines


def created(cmds):
    """(kind, name, key) for every key a `kubectl create secret|configmap` command creates."""
    keys = set()
    for cmd in cmds:
        m = re.match(r"kubectl create (secret generic|configmap) (\S+)", cmd)
        if m:
            kind = "Secret" if m.group(1).startswith("secret") else "ConfigMap"
            for key in re.findall(r"--from-literal=([A-Za-z0-9_.-]+)=", cmd):
                keys.add((kind, m.group(2), key))
    return keys


def walk(node):
    if isinstance(node, dict):
        yield node
        for v in node.values():
            yield from walk(v)
    elif isinstance(node, list):
        for v in node:
            yield from walk(v)


def references(docs):
    """(kind, name, key or None, optional) for every Secret and ConfigMap a rendered object reads."""
    refs = set()
    for doc in docs:
        for node in walk(doc):
            for field, kind in (("secretKeyRef", "Secret"), ("configMapKeyRef", "ConfigMap")):
                if field in node:
                    r = node[field]
                    refs.add((kind, r["name"], r["key"], bool(r.get("optional"))))
            for field, kind in (("secretRef", "Secret"), ("configMapRef", "ConfigMap")):
                if isinstance(node.get(field), dict) and "name" in node[field]:
                    refs.add((kind, node[field]["name"], None, bool(node[field].get("optional"))))
            if isinstance(node.get("secret"), dict) and "secretName" in node["secret"]:
                refs.add(("Secret", node["secret"]["secretName"], None, bool(node["secret"].get("optional"))))
            if isinstance(node.get("configMap"), dict) and "name" in node["configMap"]:
                refs.add(("ConfigMap", node["configMap"]["name"], None, bool(node["configMap"].get("optional"))))
        if doc.get("kind") == "TriggerAuthentication":
            for r in doc["spec"].get("secretTargetRef", []):
                refs.add(("Secret", r["name"], r["key"], False))
    return refs


def check_secrets(c, cmds, docs):
    made = created(cmds)
    rendered = {(d["kind"], d["metadata"]["name"]) for d in docs}
    made_objects = {(k, n) for k, n, _ in made}
    refs = references(docs)
    for kind, name, key, optional in sorted(refs, key=str):
        if (kind, name) in rendered or optional:
            continue
        if key is None:
            c.check((kind, name) in made_objects, f"{kind} {name} is read but no README command creates it")
        else:
            c.check((kind, name, key) in made, f"{kind} {name} key {key} is read but no README command creates it")
    read = {(k, n, key) for k, n, key, _ in refs}
    whole = {(k, n) for k, n, key, _ in refs if key is None}
    for kind, name, key in sorted(made):
        if (kind, name) in whole or (kind, name, key) in UNREAD_KEYS:
            continue
        c.check((kind, name, key) in read, f"the README creates {kind} {name} key {key}, which nothing reads")


def check_names(c, cmds, docs, adapter_metrics):
    rendered = {(d["kind"], d["metadata"]["name"]) for d in docs}
    kubectl = [cmd for cmd in cmds if cmd.startswith("kubectl ") or "| kubectl " in cmd]
    named = set()
    for cmd in kubectl:
        for alias, name in re.findall(r"(?:^|[\s=])(deployment|job|cronjob|configmap)/([a-z0-9-]+)", cmd):
            named.add((KINDS[alias], name))
        m = re.match(r"kubectl (?:get|describe|patch|scale) (hpa|vpa|scaledobject|deployment) ([a-z][a-z0-9-]+)", cmd)
        if m:
            named.add((KINDS[m.group(1)], m.group(2)))
    c.check(len(named) >= 5, f"found only {sorted(named)} in the README's commands")
    for obj in sorted(named):
        c.check(obj in rendered or obj in MADE_ELSEWHERE, f"the README names {obj[0]} {obj[1]}, which no render holds")
    labels = [lab for d in docs for node in walk(d) if isinstance(node.get("labels"), dict) for lab in node["labels"].items()]
    for cmd in kubectl:
        for key, value in re.findall(r"-l ([a-z0-9./-]+)=([a-z0-9-]+)", cmd):
            c.check((key, value) in labels, f"the README selects {key}={value}, which no rendered object carries")
        for kind, name, metric in re.findall(r"/namespaces/[a-z0-9-]+/(services|pods)/([^/\"]+)/([a-z_]+)", cmd):
            if kind == "services":
                c.check(("Service", name) in rendered, f"the README asks the metrics API about Service {name}, not rendered")
            c.check(metric in adapter_metrics, f"the README asks for {metric}, which prometheus-adapter does not serve")


def check_migrate_by_hand(c, readme, rendered_dir):
    m = re.search(r"kubectl kustomize deploy/kubernetes/jobs/migrate \\\n\s*\| sed '([^']+)'", readme)
    if not c.check(m is not None, "README: no hand-run migration (kubectl kustomize jobs/migrate | sed ...)"):
        return
    expr = m.group(1)
    image = expr.split("|")[2].removeprefix("image: ")
    out = subprocess.run(["sed", expr, str(Path(rendered_dir) / "migrate.yaml")], capture_output=True, text=True, check=True)
    jobs = [d for d in yaml.safe_load_all(out.stdout) if d and d["kind"] == "Job"]
    images = [ctr["image"] for j in jobs for ctr in j["spec"]["template"]["spec"]["containers"]]
    c.check(images and set(images) == {image}, f"README's sed leaves the migrate Job on {images}, not {image}")


def check_deploy_script(c, readme, cmds, repo):
    """The options table, the commands and the exit codes against deploy-workers.sh itself."""
    script = (repo / "deploy/scripts/deploy-workers.sh").read_text(encoding="utf-8")
    accepted = set(re.findall(r"^\s+(?:-h \| )?(--[a-z-]+)\)$", script, re.M))
    documented = set(re.findall(r"^\| `(--[a-z-]+)", readme, re.M))
    c.check(documented == accepted, f"README's options {sorted(documented)} vs the script's {sorted(accepted)}")
    overlays = {p.name for p in (repo / "deploy/kubernetes/overlays").iterdir() if p.is_dir()}
    runs = [cmd for cmd in cmds if "deploy-workers.sh " in cmd]
    c.check(len(runs) >= 3, f"found only {len(runs)} deploy-workers.sh commands in the README")
    for cmd in runs:
        for opt in re.findall(r"\s(--[a-z-]+)", cmd.split("deploy-workers.sh", 1)[1]):
            c.check(opt in accepted, f"the README runs deploy-workers.sh with {opt}, which it does not accept")
        for opt, value in re.findall(r"(--environment|--canary-base)[ =]([a-z-]+)", cmd):
            c.check(value in overlays, f"the README deploys {opt} {value}, which is no overlay")
    m = re.search(r"Exit codes: (.*?)\n`ROLLOUT_TIMEOUT`", readme, re.S)
    if c.check(m is not None, "README: no exit code list"):
        codes = {int(n) for n in re.findall(r"(?:^|,)\s*(\d+) ", m.group(1).replace("\n", " "))}
        script_codes = {0, 1} | {int(n) for n in re.findall(r"^readonly EXIT_[A-Z_]+=(\d+)$", script, re.M)}
        c.check(codes == script_codes, f"README's exit codes {sorted(codes)} vs the script's {sorted(script_codes)}")


def check_metric_mentions(c, readme, docs, metrics):
    """Metric names and HPA failure reasons the README quotes, against what exists."""
    for anchor, name in sorted(set(re.findall(r"(\^?)\b(embedding_[a-z_]+)\b(?!\()", readme))):
        if anchor:  # a grep pattern: some metric starts with it
            c.check(any(m.startswith(name) for m in metrics), f"the README greps for ^{name}, which no metric starts with")
        else:
            c.check(name in metrics, f"the README mentions {name}, which the worker does not export")
    types = {m["type"] for h in docs if h["kind"] == "HorizontalPodAutoscaler" for m in h["spec"].get("metrics", [])}
    for kind in sorted(set(re.findall(r"FailedGet(\w+?)Metric", readme))):
        c.check(kind in types, f"the README's FailedGet{kind}Metric: no rendered HPA has a {kind} metric ({sorted(types)})")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rendered-dir", required=True)
    ap.add_argument("--repo", default=str(Path(__file__).resolve().parents[2]))
    args = ap.parse_args()
    repo = Path(args.repo)
    readme = (repo / "deploy/README.md").read_text(encoding="utf-8")
    docs = [d for f in sorted(Path(args.rendered_dir).glob("*.yaml")) for d in yaml.safe_load_all(f.read_text(encoding="utf-8")) if d]
    values = yaml.safe_load((repo / "deploy/monitoring/prometheus-adapter/values.yaml").read_text(encoding="utf-8"))
    adapter_metrics = {r["name"]["as"] for r in values["rules"].get("custom") or []}
    cmds = commands(readme)
    c = Checker()
    check_secrets(c, cmds, docs)
    check_names(c, cmds, docs, adapter_metrics)
    check_migrate_by_hand(c, readme, args.rendered_dir)
    check_deploy_script(c, readme, cmds, repo)
    _, metrics, _ = worker_lists(os.environ.get("EMBQ_ASSUME_LISTS") == "1")
    check_metric_mentions(c, readme, docs, metrics | adapter_metrics)
    return c.report("check_readme_steps")


if __name__ == "__main__":
    sys.exit(main())
