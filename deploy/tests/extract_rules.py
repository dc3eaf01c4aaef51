#!/usr/bin/env python3
"""Write the rule groups of a PrometheusRule manifest as a plain Prometheus rule file.

promtool reads rule files (`groups: [...]`), not PrometheusRule objects; the
PrometheusRule in deploy/monitoring/ stays the single source of the alerts.

usage: extract_rules.py PROMETHEUSRULE.yaml OUT.rules.yaml
"""
import sys

import yaml


def main(argv):
    if len(argv) != 3:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    with open(argv[1], encoding="utf-8") as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    rules = [d for d in docs if d.get("kind") == "PrometheusRule"]
    if len(rules) != 1:
        print(f"{argv[1]}: expected one PrometheusRule, found {len(rules)}", file=sys.stderr)
        return 1
    with open(argv[2], "w", encoding="utf-8") as out:
        yaml.safe_dump({"groups": rules[0]["spec"]["groups"]}, out, sort_keys=False)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
