#!/usr/bin/env python3
"""Proof that check_manifests.py catches what it claims to: each test breaks
one thing in the rendered production overlay and expects a named failure."""
import copy
import sys
import unittest
from pathlib import Path

sys.dont_write_bytecode = True
sys.path.insert(0, str(Path(__file__).resolve().parent))
import check_manifests as cm  # noqa: E402

VARS = set(cm.ASSUMED_VARS)
METRICS = set(cm.ASSUMED_METRICS)
PRODUCTION = cm.render("production", None)


def docs():
    return copy.deepcopy(PRODUCTION)


def worker(d):
    return cm.find(d, "Deployment", "embedding-queue-workers")[0]


def config(d):
    return cm.find(d, "ConfigMap", "embedding-worker-config")[0]


def env(d, name):
    return next(e for e in cm.container(worker(d), "worker")["env"] if e["name"] == name)


def failures(mutate, check):
    d = docs()
    mutate(d)
    c = cm.Checker()
    check(c, d)
    return "\n".join(c.failures)


def deployment_check(c, d):
    cm.check_worker_deployment(c, "t", worker(d), config(d), VARS)


def autoscaling_check(c, d):
    served = {"external": set(), "custom": {"embedding_queue_depth", "embedding_queue_processing_rate"}}
    cm.check_autoscaling(c, "t", d, cm.worker_deployments(d), METRICS, served, True)


def prune_check(c, d):
    cm.check_prune_cronjob(c, "t", d, config(d), VARS)


def prune_container(d):
    return cm.find(d, "CronJob", "embq-prune")[0]["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]


def wiring_check(c, d):
    cm.check_wiring(c, "t", d, cm.worker_deployments(d), config(d))


class UnchangedManifests(unittest.TestCase):
    def test_the_production_overlay_passes_every_check(self):
        for check in (deployment_check, autoscaling_check, wiring_check, prune_check):
            self.assertEqual(failures(lambda d: None, check), "")


class EnvironmentChecks(unittest.TestCase):
    def test_a_configmap_key_the_worker_does_not_read(self):
        out = failures(lambda d: config(d)["data"].update(QUEUE_POLL_INTERVALL="5000"), deployment_check)
        self.assertIn("sets QUEUE_POLL_INTERVALL, which the worker does not read", out)

    def test_a_variable_the_worker_reads_but_nobody_sets(self):
        out = failures(lambda d: config(d)["data"].pop("BATCH_SIZE"), deployment_check)
        self.assertIn("reads BATCH_SIZE but the Deployment does not set it", out)

    def test_a_secret_in_the_configmap(self):
        out = failures(lambda d: config(d)["data"].update(OPENAI_API_KEY="sk-x"), deployment_check)
        self.assertIn("OPENAI_API_KEY looks secret", out)

    def test_a_secret_from_the_wrong_key(self):
        out = failures(lambda d: env(d, "DATABASE_URL")["valueFrom"]["secretKeyRef"].update(key="url"), deployment_check)
        self.assertIn("DATABASE_URL should come from Secret supabase-secrets key database-url", out)

    def test_worker_id_not_from_the_pod_name(self):
        out = failures(lambda d: env(d, "WORKER_ID").update(valueFrom={"fieldRef": {"fieldPath": "spec.nodeName"}}), deployment_check)
        self.assertIn("WORKER_ID should come from the pod name", out)


class RuntimeChecks(unittest.TestCase):
    def test_a_probe_on_the_wrong_path(self):
        def mutate(d):
            cm.container(worker(d), "worker")["readinessProbe"]["httpGet"]["path"] = "/health"
        self.assertIn("readinessProbe path is /health, should be /ready", failures(mutate, deployment_check))

    def test_a_probe_on_the_metrics_port(self):
        def mutate(d):
            cm.container(worker(d), "worker")["livenessProbe"]["httpGet"]["port"] = "metrics"
        self.assertIn("livenessProbe port metrics is not the health port 8080", failures(mutate, deployment_check))

    def test_a_grace_period_shorter_than_the_drain(self):
        out = failures(lambda d: config(d)["data"].update(DRAIN_TIMEOUT="45s"), deployment_check)
        self.assertIn("terminationGracePeriodSeconds 40 does not exceed DRAIN_TIMEOUT 45s", out)

    def test_memory_limit_out_of_step(self):
        out = failures(lambda d: config(d)["data"].update(MEMORY_LIMIT_MB="2048"), deployment_check)
        self.assertIn("MEMORY_LIMIT_MB 2048 != memory limit 1Gi", out)

    def test_a_missing_cache_volume(self):
        def mutate(d):
            ctr = cm.container(worker(d), "worker")
            ctr["volumeMounts"] = [m for m in ctr["volumeMounts"] if m["mountPath"] != "/tmp"]
        self.assertIn("/tmp should be an emptyDir mount", failures(mutate, deployment_check))

    def test_a_writable_root_filesystem(self):
        def mutate(d):
            cm.container(worker(d), "worker")["securityContext"]["readOnlyRootFilesystem"] = False
        out = failures(mutate, lambda c, d: cm.check_pod_security(c, "t", worker(d)))
        self.assertIn("root filesystem must be read-only", out)


class AutoscalingChecks(unittest.TestCase):
    def hpa(self, d):
        return cm.find(d, "HorizontalPodAutoscaler")[0]["spec"]

    def test_select_policy_max_is_refused(self):
        out = failures(lambda d: self.hpa(d)["behavior"]["scaleUp"].update(selectPolicy="Max"), autoscaling_check)
        self.assertIn("scaleUp selectPolicy should be Min", out)

    def test_a_policy_without_period(self):
        out = failures(lambda d: self.hpa(d)["behavior"]["scaleDown"]["policies"][0].pop("periodSeconds"), autoscaling_check)
        self.assertIn("lacks periodSeconds", out)

    def test_a_vpa_acting_on_what_the_hpa_scales_on(self):
        # The VPA is an opt-in component; add it, in Auto mode, beside an HPA on CPU.
        def mutate(d):
            vpa = cm.yaml.safe_load((cm.DEPLOY / "kubernetes/components/vpa/vpa.yaml").read_text(encoding="utf-8"))
            vpa["spec"]["updatePolicy"]["updateMode"] = "Auto"
            d.append(vpa)
            self.hpa(d)["metrics"].append(
                {"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}}}
            )
        self.assertIn("updateMode Auto acts on ['cpu']", failures(mutate, autoscaling_check))

    def test_an_hpa_metric_the_worker_does_not_export(self):
        def mutate(d):
            self.hpa(d)["metrics"][0]["object"]["metric"]["name"] = "queue_depth"
        out = failures(mutate, autoscaling_check)
        self.assertIn("Object metric queue_depth is not exported by the worker", out)
        self.assertIn("is not served by the prometheus-adapter rules", out)


class WiringChecks(unittest.TestCase):
    def test_a_service_that_selects_no_worker(self):
        def mutate(d):
            cm.find(d, "Service")[0]["spec"]["selector"] = {"app": "embedding-worker"}
        self.assertIn("does not select every worker pod", failures(mutate, wiring_check))

    def test_monitoring_allowed_on_the_health_port(self):
        def mutate(d):
            cm.find(d, "NetworkPolicy")[0]["spec"]["ingress"][0]["ports"][0]["port"] = 8080
        self.assertIn("monitoring may reach [8080], should be 9091", failures(mutate, wiring_check))

    def test_a_rolebinding_in_another_namespace(self):
        def mutate(d):
            cm.find(d, "RoleBinding", "embedding-queue-worker")[0]["subjects"][0]["namespace"] = "elsewhere"
        out = failures(mutate, lambda c, d: cm.check_namespaces(c, "t", d, "paperless-maverick"))
        self.assertIn("binds ServiceAccount embedding-queue-worker in namespace elsewhere", out)


class MetricNames(unittest.TestCase):
    def test_names_are_found_and_syntax_is_ignored(self):
        expr = (
            'histogram_quantile(0.95, sum by (namespace, le) (rate(embedding_processing_duration_seconds_bucket'
            '{namespace="$namespace", job=~"a.+"}[$__rate_interval]))) > 1e3 and on (pod) '
            'max without (x) (up offset 15m) / ignoring (type) group_left (a) worker_memory_usage_bytes'
        )
        self.assertEqual(
            cm.promql_metrics(expr),
            {"embedding_processing_duration_seconds_bucket", "up", "worker_memory_usage_bytes"},
        )

    def test_an_unknown_metric_fails(self):
        c = cm.Checker()
        cm.check_metric_names(c, "t", "sum(rate(embedding_jobs_total[5m]))", METRICS)
        self.assertIn("uses metric embedding_jobs_total", "\n".join(c.failures))

    def test_histogram_series_count_as_exported(self):
        c = cm.Checker()
        cm.check_metric_names(c, "t", "rate(embedding_batch_size_jobs_count[5m])", METRICS)
        self.assertEqual(c.failures, [])

    def test_durations_follow_the_worker_syntax(self):
        self.assertEqual(cm.parse_duration_ms("25000"), 25000)
        self.assertEqual(cm.parse_duration_ms("25s"), 25000)
        self.assertEqual(cm.parse_duration_ms("1m"), 60000)
        with self.assertRaises(ValueError):
            cm.parse_duration_ms("25 seconds")




class Retention(unittest.TestCase):
    def test_a_missing_prune_cronjob(self):
        def drop(d):
            d[:] = [x for x in d if x.get("kind") != "CronJob"]
        self.assertIn("expected CronJob embq-prune", failures(drop, prune_check))

    def test_a_prune_image_apart_from_the_workers(self):
        def pin(d):
            prune_container(d)["image"] = "registry.example.com/paperless-maverick/embq:0.0.9"
        self.assertIn("is not the workers'", failures(pin, prune_check))

    def test_a_retention_without_unit_or_too_short(self):
        for value in ("7", "5m"):
            def set_retention(d, value=value):
                config(d)["data"]["PRUNE_OLDER_THAN"] = value
            self.assertIn("at least 1h", failures(set_retention, prune_check))

    def test_a_retention_set_outside_the_configmap(self):
        def inline(d):
            for e in prune_container(d)["env"]:
                if e["name"] == "PRUNE_OLDER_THAN":
                    e.pop("valueFrom")
                    e["value"] = "7d"
        self.assertIn("PRUNE_OLDER_THAN should come from ConfigMap", failures(inline, prune_check))


if __name__ == "__main__":
    unittest.main()
