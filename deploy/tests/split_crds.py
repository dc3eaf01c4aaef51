#!/usr/bin/env python3
"""Write each custom-resource document of rendered manifests to its own file.

check-jsonschema validates one document per file, against the schema of its
kind. Prints "SCHEMA FILE" for every document written; exits 1 if a document
has a custom kind with no schema in deploy/schemas.

The vendored schemas come from Go, whose regexes accept an inline (?i)
anywhere; check-jsonschema checks patterns as ECMAScript regexes, which do
not. `--schemas SRC DST` copies the schemas with such patterns rewritten to
an equivalent without the flag (the files in deploy/schemas stay unchanged).

usage: split_crds.py OUT_DIR RENDERED.yaml...
       split_crds.py --schemas SRC_DIR DST_DIR
"""
import json
import re
import sys
from pathlib import Path

import yaml

# kind -> (apiVersion, schema file in deploy/schemas)
SCHEMAS = {
    "VerticalPodAutoscaler": ("autoscaling.k8s.io/v1", "verticalpodautoscaler_v1.json"),
    "ServiceMonitor": ("monitoring.coreos.com/v1", "servicemonitor_v1.json"),
    "PodMonitor": ("monitoring.coreos.com/v1", "podmonitor_v1.json"),
    "PrometheusRule": ("monitoring.coreos.com/v1", "prometheusrule_v1.json"),
    "ScaledObject": ("keda.sh/v1alpha1", "scaledobject_v1alpha1.json"),
    "TriggerAuthentication": ("keda.sh/v1alpha1", "triggerauthentication_v1alpha1.json"),
}
CUSTOM_GROUPS = ("autoscaling.k8s.io", "monitoring.coreos.com", "keda.sh")


def case_insensitive(pattern):
    """Rewrite a pattern using Go's (?i) flag as explicit letter classes."""
    if "(?i)" not in pattern:
        return pattern
    body = pattern.replace("(?i)", "")
    out, i = [], 0
    while i < len(body):
        ch = body[i]
        if ch == "\\":
            out.append(body[i:i + 2])
            i += 2
        elif ch == "[":
            # A character class: keep it and add the other case of its letters
            # (ranges included: [a-f] becomes [a-fA-F]).
            j = i + 1
            if j < len(body) and body[j] == "^":
                j += 1
            tokens = []
            while j < len(body) and body[j] != "]":
                step = 2 if body[j] == "\\" else 1
                tokens.append(body[j:j + step])
                j += step
            extra, k = [], 0
            while k < len(tokens):
                if k + 2 < len(tokens) and tokens[k + 1] == "-":
                    low, high = tokens[k], tokens[k + 2]
                    if low.isalpha() and high.isalpha():
                        extra.append(f"{low.swapcase()}-{high.swapcase()}")
                    k += 3
                    continue
                if tokens[k].isalpha():
                    extra.append(tokens[k].swapcase())
                k += 1
            out.append(body[i:j] + "".join(extra) + "]")
            i = j + 1
        elif ch.isascii() and ch.isalpha():
            out.append(f"[{ch.lower()}{ch.upper()}]")
            i += 1
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def rewrite_patterns(node):
    if isinstance(node, dict):
        return {
            k: case_insensitive(v) if k == "pattern" and isinstance(v, str) else rewrite_patterns(v)
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [rewrite_patterns(v) for v in node]
    return node


def copy_schemas(src, dst):
    dst.mkdir(parents=True, exist_ok=True)
    for path in sorted(src.glob("*.json")):
        schema = json.loads(path.read_text(encoding="utf-8"))
        (dst / path.name).write_text(json.dumps(rewrite_patterns(schema)), encoding="utf-8")
    return 0


def main(argv):
    if len(argv) == 4 and argv[1] == "--schemas":
        return copy_schemas(Path(argv[2]), Path(argv[3]))
    if len(argv) < 3:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    out = Path(argv[1])
    out.mkdir(parents=True, exist_ok=True)
    status = 0
    for source in argv[2:]:
        with open(source, encoding="utf-8") as f:
            docs = [d for d in yaml.safe_load_all(f) if d]
        for i, doc in enumerate(docs):
            kind, api = doc.get("kind"), doc.get("apiVersion", "")
            if kind in SCHEMAS:
                if api != SCHEMAS[kind][0]:
                    print(f"{source}: {kind} has apiVersion {api}, schema is for {SCHEMAS[kind][0]}", file=sys.stderr)
                    status = 1
                    continue
                path = out / f"{Path(source).stem}-{i:03d}-{kind}.yaml"
                path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
                print(SCHEMAS[kind][1], path)
            elif api.split("/")[0] in CUSTOM_GROUPS:
                print(f"{source}: no schema for {kind} ({api})", file=sys.stderr)
                status = 1
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv))
