#!/usr/bin/env python3
"""Write prometheus-adapter's custom rules as recording rules, so promtool can test them.

Each metricsQuery becomes the rule `adapter:<metric>` with the adapter's
template filled in as it would be for the worker Service in
paperless-maverick (Object metrics) or for its pods (Pods metrics).

usage: adapter_rules.py VALUES.yaml OUT.rules.yaml
"""
import re
import sys

import yaml


def main(argv):
    if len(argv) != 3:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    with open(argv[1], encoding="utf-8") as f:
        values = yaml.safe_load(f)
    rules = []
    for rule in values["rules"].get("custom") or []:
        series = re.match(r"\s*([A-Za-z_:][A-Za-z0-9_:]*)", rule["seriesQuery"]).group(1)
        overrides = rule["resources"]["overrides"]
        if "service" in overrides:
            matchers, group = 'namespace="paperless-maverick",service="embedding-queue-workers-service"', "service"
        else:
            matchers, group = 'namespace="paperless-maverick",pod=~".+"', "pod"
        expr = (
            rule["metricsQuery"]
            .replace("<<.Series>>", series)
            .replace("<<.LabelMatchers>>", matchers)
            .replace("<<.GroupBy>>", group)
        )
        rules.append({"record": f"adapter:{rule['name']['as']}", "expr": expr})
    with open(argv[2], "w", encoding="utf-8") as out:
        yaml.safe_dump({"groups": [{"name": "prometheus-adapter", "rules": rules}]}, out, sort_keys=False)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
