#!/usr/bin/env python3
"""Replica-minutes the old and the new autoscaling policy spend on one backlog.

Drives the HorizontalPodAutoscaler's documented algorithm
(kubernetes.io/docs/tasks/run-application/horizontal-pod-autoscale/):
every 15 s each metric proposes ceil(current x metric / target) replicas
(nothing if the ratio is within the 0.1 tolerance), the largest proposal wins,
scale-up takes the lowest proposal of the last stabilizationWindowSeconds and
scale-down the highest, the behavior policies cap each change per period, and
the result is clamped to [minReplicas, maxReplicas]. Behaviour, targets and
replica bounds are read from the HPAs themselves: base/hpa.yaml now, and
fixtures/hpa-before-issue-19.yaml (base/hpa.yaml at git 29a8597) before.

The metric series come from a fleet model fed by the ConfigMap's budget: a
backlog of 30 minutes' work at MAX_REQUESTS_PER_MINUTE x BATCH_SIZE (9,000
jobs at 60 RPM and 5 jobs per request), each ready pod keeping
MAX_CONCURRENT_JOBS requests of LATENCY_S in flight, the fleet's rate capped
by the shared budget, limiter wait = in-flight slots that are not calling the
provider, CPU and RSS per pod from BENCHMARKS.md's drain figures. The adapter's
quota cap (values.yaml) is applied the way its promtool tests show it.

usage: hpa_simulation.py [--check]   (--check: exit 1 unless the new policy
                                      spends fewer replica-minutes without
                                      draining later)
"""
import argparse
import math
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
SYNC_S = 15
HORIZON_S = 60 * 60
LATENCY_S = 1.0
READY_AFTER_S = 20
# BENCHMARKS.md, queue throughput: ~26 MiB peak RSS and ~20 µs CPU per job.
RSS_MIB = 26.0
CPU_S_PER_JOB = 20e-6
IDLE_CPU_CORES = 0.005
TOLERANCE = 0.1


def hpa_from(text):
    return next(d for d in yaml.safe_load_all(text) if d and d.get("kind") == "HorizontalPodAutoscaler")


def load_policies():
    new = hpa_from((REPO / "deploy/kubernetes/base/hpa.yaml").read_text(encoding="utf-8"))
    old_text = (REPO / "deploy/tests/fixtures/hpa-before-issue-19.yaml").read_text(encoding="utf-8")
    config = yaml.safe_load((REPO / "deploy/kubernetes/base/configmap.yaml").read_text(encoding="utf-8"))["data"]
    return hpa_from(old_text), new, config


class Fleet:
    """Pods, their readiness and the backlog they drain under the shared budget."""

    def __init__(self, config, replicas):
        self.rpm = int(config["MAX_REQUESTS_PER_MINUTE"])
        self.batch = int(config["BATCH_SIZE"])
        self.slots = int(config["MAX_CONCURRENT_JOBS"])
        self.backlog = 30 * 60 * self.rpm / 60 * self.batch
        self.pods = [-READY_AFTER_S] * replicas  # start times
        self.rate = 0.0

    def ready(self, now):
        return sum(1 for t in self.pods if now - t >= READY_AFTER_S)

    def scale(self, now, replicas):
        while len(self.pods) < replicas:
            self.pods.append(now)
        del self.pods[replicas:]

    def step(self, now, dt):
        ready = self.ready(now)
        budget = self.rpm / 60 * self.batch
        capacity = ready * self.slots * self.batch / LATENCY_S
        self.rate = min(budget, capacity, self.backlog / dt) if self.backlog > 0 else 0.0
        self.backlog = max(0.0, self.backlog - self.rate * dt)

    def metrics(self, now):
        ready = max(self.ready(now), 1)
        calling = self.rate / self.batch * LATENCY_S
        waiting = max(0.0, ready * self.slots - calling) if self.backlog > 0 else 0.0
        cpu = IDLE_CPU_CORES + self.rate / ready * CPU_S_PER_JOB
        return {
            "depth": self.backlog,
            "rate_per_pod": self.rate / ready,
            "wait_per_pod": waiting / ready,
            "ready": self.ready(now),
            "cpu_per_pod": cpu,
            "rss_mib": RSS_MIB,
        }


def proposals(hpa, m, current, requests):
    out = []
    for metric in hpa["spec"]["metrics"]:
        kind = metric["type"]
        spec = metric[kind.lower()]
        target = spec["target"]
        if kind == "Resource":
            used = m["cpu_per_pod"] if spec["name"] == "cpu" else m["rss_mib"]
            ratio = used / requests[spec["name"]] * 100 / target["averageUtilization"]
        elif spec["metric"]["name"] == "embedding_queue_depth":
            value = m["depth"]
            if kind == "Object" and m["wait_per_pod"] > 0.5:
                # The adapter's quota cap (prometheus-adapter/values.yaml).
                value = min(value, float(target["averageValue"]) * m["ready"])
            ratio = value / float(target["averageValue"]) / current
        else:
            ratio = m["rate_per_pod"] / float(target["averageValue"])
        out.append(current if abs(ratio - 1) <= TOLERANCE else math.ceil(ratio * current))
    return max(out)


def limit(rules, history, now, current, up):
    """The behavior policies: the change allowed since each policy's period began."""
    limits = []
    for p in rules["policies"]:
        start = current - sum(d for t, d in history if now - t < p["periodSeconds"])
        if up:
            limits.append(start + p["value"] if p["type"] == "Pods" else math.ceil(start * (1 + p["value"] / 100)))
        else:
            limits.append(start - p["value"] if p["type"] == "Pods" else math.ceil(start * (1 - p["value"] / 100)))
    pick = min if (rules.get("selectPolicy", "Max") == "Min") == up else max
    return pick(limits)


def simulate(hpa, config):
    spec = hpa["spec"]
    behavior = spec["behavior"]
    requests = {"cpu": 0.25, "memory": 512.0}
    fleet = Fleet(config, spec["minReplicas"])
    current = spec["minReplicas"]
    recs, history = [], []
    replica_seconds, drained_at, peak = 0.0, None, current
    for now in range(0, HORIZON_S, SYNC_S):
        for sub in range(SYNC_S):
            fleet.step(now + sub, 1)
        if fleet.backlog == 0 and drained_at is None:
            drained_at = now + SYNC_S
        replica_seconds += current * SYNC_S
        desired = proposals(hpa, fleet.metrics(now + SYNC_S), current, requests)
        recs.append((now, desired))
        up_window = behavior["scaleUp"].get("stabilizationWindowSeconds", 0)
        down_window = behavior["scaleDown"].get("stabilizationWindowSeconds", 300)
        if desired > current:
            desired = max(current, min(d for t, d in recs if now - t <= up_window))
            desired = min(desired, limit(behavior["scaleUp"], history, now, current, True))
        elif desired < current:
            desired = min(current, max(d for t, d in recs if now - t <= down_window))
            desired = max(desired, limit(behavior["scaleDown"], history, now, current, False))
        desired = min(max(desired, spec["minReplicas"]), spec["maxReplicas"])
        if desired != current:
            history.append((now, desired - current))
            current = desired
            fleet.scale(now, current)
        peak = max(peak, current)
    return replica_seconds / 60, drained_at, peak


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args()
    old, new, config = load_policies()
    results = {}
    print(f"backlog: {30 * int(config['MAX_REQUESTS_PER_MINUTE']) * int(config['BATCH_SIZE'])} jobs "
          f"({config['MAX_REQUESTS_PER_MINUTE']} RPM x BATCH_SIZE {config['BATCH_SIZE']} x 30 min), "
          f"horizon {HORIZON_S // 60} min")
    print(f"{'policy':<8} {'replica-minutes':>16} {'drained after':>14} {'peak replicas':>14}")
    for name, hpa in (("old", old), ("new", new)):
        rm, drained, peak = simulate(hpa, config)
        results[name] = (rm, drained)
        print(f"{name:<8} {rm:>16.0f} {(drained or 0) / 60:>12.1f} m {peak:>14}")
    ratio = results["new"][0] / results["old"][0]
    print(f"new / old replica-minutes: {ratio:.2f}")
    if args.check:
        (old_rm, old_done), (new_rm, new_done) = results["old"], results["new"]
        ok = new_done is not None and old_done is not None and new_rm < old_rm and new_done <= old_done + 60
        print("check: " + ("new policy spends fewer replica-minutes and drains as fast" if ok else "FAILED"))
        return 0 if ok else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
