#!/usr/bin/env python3
"""Consistency checks between the rendered manifests and the worker itself.

Schemas say a manifest is well formed; this says it fits embq:

* every variable the worker Deployment sets (ConfigMap embedding-worker-config,
  explicit env, Secrets, feature flags) is one the worker reads, and every
  variable the worker reads is set (or listed in OPTIONAL_VARS with a reason);
* probe paths and ports, metrics port, grace period vs DRAIN_TIMEOUT, memory
  and CPU limits vs MEMORY_LIMIT_MB / CPU_LIMIT_CORES, writable volumes;
* every metric named in alerts, prometheus-adapter rules, the Grafana
  dashboard and the HPA is one the worker exports;
* the seed's object names and values, the HPA/VPA/KEDA combination, selectors,
  NetworkPolicy ports, restricted pod security for every Deployment.

The worker is the source of truth: `embq config vars` and `embq metrics names`
from the binary in $EMBQ_BIN (default target/debug/embq). --assume-lists uses
the lists agreed in the design instead, for work before the binary exists.

usage: check_manifests.py [--assume-lists] [--rendered-dir DIR]
                          [--write-queries FILE]
"""
import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
OVERLAYS = DEPLOY / "kubernetes" / "overlays"
MONITORING = DEPLOY / "monitoring"

# The lists agreed for the worker, used only with --assume-lists.
ASSUMED_VARS = """
QUEUE_POLL_INTERVAL MAX_CONCURRENT_JOBS BATCH_SIZE HEARTBEAT_INTERVAL
MAX_REQUESTS_PER_MINUTE MAX_TOKENS_PER_MINUTE BACKOFF_MULTIPLIER MEMORY_LIMIT_MB
CPU_LIMIT_CORES ENABLE_QUEUE_PROCESSING ENABLE_BATCH_OPTIMIZATION MAX_ATTEMPTS
RETRY_BASE_DELAY RETRY_MAX_DELAY DRAIN_TIMEOUT HEALTH_PORT METRICS_PORT
LOG_FORMAT RUST_LOG EMBEDDING_PROVIDER EMBEDDING_MODEL EMBEDDING_DIMENSIONS
OPENAI_BASE_URL GEMINI_TASK_TYPE OPENAI_MAX_INPUTS_PER_REQUEST OVERLONG_INPUT
RATE_LIMIT_SCOPE PROVIDER_TIMEOUT MODEL_CACHE_DIR DATABASE_POOL_MODE
DB_MAX_CONNECTIONS WORKER_ID DATABASE_URL DATABASE_LISTEN_URL OPENAI_API_KEY
GEMINI_API_KEY SHUTDOWN_TOKEN OPENAI_MAX_TOKENS_PER_REQUEST OPENAI_MAX_TOKENS_PER_INPUT
GEMINI_BASE_URL VECTOR_TYPE VECTOR_INDEX SHUTDOWN_LOOPBACK_EXEMPT DATABASE_CONNECT_TIMEOUT
MAX_PROVIDER_PAUSE BATCH_LANE BATCH_LANE_POLL_INTERVAL BATCH_LANE_BACKLOG BATCH_LANE_MAX_PRIORITY
BATCH_LANE_MAX_REQUESTS BATCH_LANE_MAX_ENQUEUED_TOKENS PRUNE_OLDER_THAN
""".split()
ASSUMED_METRICS = """
worker_uptime_seconds worker_memory_usage_bytes embedding_jobs_processed_total
embedding_jobs_failed_total embedding_processing_duration_seconds
embedding_queue_depth embedding_queue_processing_rate
embedding_worker_errors_total embq_build_info embedding_jobs_dead_lettered_total
embedding_jobs_retried_total embedding_jobs_unchanged_total embedding_jobs_cancelled_total
embedding_lease_reclaims_total embedding_dead_letter_jobs
embedding_queue_oldest_ready_age_seconds embedding_queue_running_jobs
embedding_inflight_jobs embedding_batch_size_jobs
embedding_provider_requests_total embedding_provider_tokens_total
embedding_provider_rate_limited_total embedding_rate_limit_wait_seconds_total
embedding_worker_ready embedding_provider_parked embedding_provider_paused_seconds
embedding_provider_request_duration_seconds
""".split()

# Variables the worker reads that the manifests may leave unset on purpose.
OPTIONAL_VARS = {
    "CONSOLE_LISTEN": "read by `embq console` only, which operators run by hand; workers never serve it",
    "CONSOLE_TOKEN": "read by `embq console` only (its access token); never set on workers",
    "OPENAI_BASE_URL": "only for openai-compatible servers; unset means the public API",
    "GEMINI_BASE_URL": "unset means Google's public endpoint",
    "DB_MAX_CONNECTIONS": "the worker sizes its pool from what it needs (3 + min(MAX_CONCURRENT_JOBS, 3)) when unset",
    "BATCH_LANE_BACKLOG": "unset means only jobs enqueued with lane batch take the batch lane",
    "LOCAL_BACKEND": "unset means auto: ONNX Runtime for the local model when its library and graph are there, else candle",
    "ORT_DYLIB_PATH": "only for the local model on ONNX Runtime; unset means the loader's search path (the image has no onnxruntime)",
}

# Secret-backed variables: name -> (secret, key). Nothing else may come from
# a Secret, and none of these may sit in a ConfigMap.
SECRET_VARS = {
    "DATABASE_URL": ("supabase-secrets", "database-url"),
    "DATABASE_LISTEN_URL": ("supabase-secrets", "database-listen-url"),
    "OPENAI_API_KEY": ("ai-secrets", "openai-api-key"),
    "GEMINI_API_KEY": ("ai-secrets", "gemini-api-key"),
    "SHUTDOWN_TOKEN": ("embq-shutdown-token", "token"),
}
FEATURE_FLAGS = {"ENABLE_QUEUE_PROCESSING", "ENABLE_BATCH_OPTIMIZATION"}

# Series that come from Prometheus itself, cAdvisor and kube-state-metrics.
PLATFORM_METRICS = {
    "up": "Prometheus scrape status",
    "container_cpu_usage_seconds_total": "cAdvisor (kubelet)",
    "kube_pod_container_resource_limits": "kube-state-metrics",
}

OVERLAY_NAMESPACES = {
    "production": "paperless-maverick",
    "staging": "paperless-maverick-staging",
    "production-keda": "paperless-maverick",
    "canary": "paperless-maverick",
}

WORKER_LABEL = ("app", "embedding-queue-worker")
CONTROLLER_LABEL = ("app", "worker-restart-controller")


class Checker:
    def __init__(self):
        self.failures = []
        self.checks = 0

    def check(self, ok, message):
        self.checks += 1
        if not ok:
            self.failures.append(message)
        return ok

    def report(self, name):
        """Prints every failure and the tally; the exit status (1 when anything failed)."""
        for failure in self.failures:
            print(f"FAIL {failure}")
        print(f"{name}: {self.checks - len(self.failures)} of {self.checks} checks passed")
        return 1 if self.failures else 0


# --- the worker's truth --------------------------------------------------------


def worker_lists(assume):
    if assume:
        return set(ASSUMED_VARS), set(ASSUMED_METRICS), "assumed lists (--assume-lists)"
    binary = Path(os.environ.get("EMBQ_BIN", REPO / "target" / "debug" / "embq"))
    if not binary.is_absolute():
        binary = REPO / binary
    if not binary.exists():
        sys.exit(
            f"check_manifests: {binary} not found; build it (cargo build -p embq), "
            "point EMBQ_BIN at it, or pass --assume-lists"
        )
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}

    def run(*args):
        out = subprocess.run(
            [str(binary), *args], env=env, capture_output=True, text=True, timeout=60
        )
        if out.returncode != 0:
            sys.exit(f"check_manifests: `embq {' '.join(args)}` failed: {out.stderr.strip()}")
        names = {line.strip() for line in out.stdout.splitlines() if line.strip()}
        if not names:
            sys.exit(f"check_manifests: `embq {' '.join(args)}` printed nothing")
        return names

    global WORKER_BIN
    WORKER_BIN = binary
    return run("config", "vars"), run("metrics", "names"), f"the worker binary {binary}"


WORKER_BIN = None


def check_config_accepted(c, where, config):
    """The worker itself validates the ConfigMap (units on durations, ranges), secrets stubbed."""
    if WORKER_BIN is None or config is None:
        return
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **config.get("data", {})}
    env.update({
        "DATABASE_URL": "postgres://embq@127.0.0.1:5432/embq",
        "OPENAI_API_KEY": "sk-placeholder",
        "GEMINI_API_KEY": "placeholder",
        "SHUTDOWN_TOKEN": "placeholder",
    })
    out = subprocess.run([str(WORKER_BIN), "config", "check"], env=env, capture_output=True, text=True, timeout=60)
    c.check(
        out.returncode == 0,
        f"{where}: `embq config check` refuses the ConfigMap: {out.stderr.strip()[:400]}",
    )


# --- rendering and lookup --------------------------------------------------------


def render(overlay, rendered_dir, directory=None):
    if rendered_dir:
        path = Path(rendered_dir) / f"{overlay}.yaml"
        text = path.read_text(encoding="utf-8")
    else:
        kubectl = os.environ.get("KUBECTL", "kubectl")
        out = subprocess.run(
            [kubectl, "kustomize", str(directory or OVERLAYS / overlay)], capture_output=True, text=True
        )
        if out.returncode != 0:
            sys.exit(f"check_manifests: kubectl kustomize {overlay} failed: {out.stderr}")
        text = out.stdout
    return [d for d in yaml.safe_load_all(text) if d]


def find(docs, kind, name=None):
    return [
        d
        for d in docs
        if d.get("kind") == kind and (name is None or d["metadata"]["name"] == name)
    ]


def one(c, docs, kind, name, where):
    found = find(docs, kind, name)
    c.check(len(found) == 1, f"{where}: expected one {kind} {name}, found {len(found)}")
    return found[0] if found else None


def labels_match(selector, labels):
    return all(labels.get(k) == v for k, v in (selector or {}).items())


def pod_labels(deploy):
    return deploy["spec"]["template"]["metadata"].get("labels", {})


def worker_deployments(docs):
    return [
        d
        for d in find(docs, "Deployment")
        if pod_labels(d).get(WORKER_LABEL[0]) == WORKER_LABEL[1]
    ]


def container(deploy, name):
    for ctr in deploy["spec"]["template"]["spec"]["containers"]:
        if ctr["name"] == name:
            return ctr
    return None


def parse_duration_ms(value):
    """The worker's duration syntax: milliseconds, or a number with ms/s/m/h/d."""
    m = re.fullmatch(r"\s*([0-9.]+)\s*(ms|s|m|h|d)?\s*", str(value))
    if not m:
        raise ValueError(f"not a duration: {value!r}")
    factor = {None: 1, "ms": 1, "s": 1e3, "m": 60e3, "h": 3600e3, "d": 86400e3}[m.group(2)]
    return float(m.group(1)) * factor


def quantity_mib(value):
    m = re.fullmatch(r"([0-9.]+)(Ki|Mi|Gi|Ti|k|M|G)?", str(value))
    factor = {
        None: 1 / 2**20, "Ki": 1 / 1024, "Mi": 1, "Gi": 1024, "Ti": 1024**2,
        "k": 1e3 / 2**20, "M": 1e6 / 2**20, "G": 1e9 / 2**20,
    }[m.group(2)]
    return float(m.group(1)) * factor


def quantity_cores(value):
    value = str(value)
    return float(value[:-1]) / 1000 if value.endswith("m") else float(value)


def resolve_port(ctr, port):
    if isinstance(port, int):
        return port
    for p in ctr.get("ports", []):
        if p.get("name") == port:
            return p["containerPort"]
    return None


# --- PromQL --------------------------------------------------------------------

PROMQL_WORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left",
    "group_right", "offset", "bool", "inf", "nan", "atan2", "start", "end",
}


def promql_metrics(expr):
    """Metric names referenced by a PromQL expression (a tokenizer, not a parser)."""
    s = re.sub(r'"(\\.|[^"\\])*"|\'(\\.|[^\'\\])*\'|`[^`]*`', '""', expr)
    s = re.sub(r"\[[^\]]*\]", "", s)
    s = re.sub(r"\{[^}]*\}", " ", s)
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    names = set()
    for m in re.finditer(r"(?<![\w.$])([A-Za-z_:][A-Za-z0-9_:]*)", s):
        word = m.group(1)
        rest = s[m.end():].lstrip()
        if word.lower() in PROMQL_WORDS or rest.startswith("("):
            continue
        names.add(word)
    return names


def grafana_exprs(dashboard):
    def panels(items):
        for p in items:
            yield p
            yield from panels(p.get("panels", []))

    for p in panels(dashboard.get("panels", [])):
        for t in p.get("targets", []):
            if t.get("expr"):
                yield p.get("title", "?"), t["expr"]


def grafana_to_promql(expr):
    expr = expr.replace("$__rate_interval", "5m").replace("$__interval", "1m")
    return re.sub(r"\$\{?(\w+)\}?", "x", expr)


def adapter_rules(values):
    rules = values.get("rules", {})
    for section in ("custom", "external"):
        for rule in rules.get(section) or []:
            yield section, rule


def adapter_exprs(rule):
    series = rule["seriesQuery"]
    metric = re.match(r"\s*([A-Za-z_:][A-Za-z0-9_:]*)", series)
    name = metric.group(1) if metric else "x"
    query = (
        rule["metricsQuery"]
        .replace("<<.Series>>", name)
        .replace("<<.LabelMatchers>>", 'namespace="x"')
        .replace("<<.GroupBy>>", "namespace, pod")
    )
    return [series, query]


# --- checks --------------------------------------------------------------------


def check_worker_deployment(c, where, deploy, config, vars_read):
    name = deploy["metadata"]["name"]
    tag = f"{where}: Deployment {name}"
    spec = deploy["spec"]["template"]["spec"]
    c.check(
        deploy["metadata"].get("labels", {}).get(WORKER_LABEL[0]) == WORKER_LABEL[1],
        f"{tag}: metadata label app=embedding-queue-worker missing",
    )
    ctr = container(deploy, "worker")
    if not c.check(ctr is not None, f"{tag}: no container named worker"):
        return
    argv = [os.path.basename(a) if i == 0 else a for i, a in
            enumerate((ctr.get("command") or []) + (ctr.get("args") or []))]
    c.check(argv == ["embq", "worker"], f"{tag}: runs {argv}, not `embq worker`")

    # Environment: what the pod gets vs what the worker reads.
    data = (config or {}).get("data", {})
    from_config = set(data)
    explicit = {e["name"]: e for e in ctr.get("env", [])}
    env_from = {
        ref["configMapRef"]["name"] for ref in ctr.get("envFrom", []) if "configMapRef" in ref
    }
    c.check(
        env_from == {"embedding-worker-config"},
        f"{tag}: envFrom should be exactly ConfigMap embedding-worker-config, is {sorted(env_from)}",
    )
    for var in sorted(from_config - vars_read):
        c.check(False, f"{tag}: ConfigMap embedding-worker-config sets {var}, which the worker does not read")
    for var in sorted(set(explicit) - vars_read):
        c.check(False, f"{tag}: env {var} is not a variable the worker reads")
    for var in sorted(from_config & set(explicit)):
        c.check(False, f"{tag}: {var} is set both in the ConfigMap and in env (env wins silently)")
    provided = from_config | set(explicit)
    for var in sorted(vars_read - provided - set(OPTIONAL_VARS)):
        c.check(False, f"{tag}: the worker reads {var} but the Deployment does not set it")
    for var in sorted(from_config):
        c.check(
            var not in SECRET_VARS and not re.search(r"(^|_)(KEY|TOKEN|PASSWORD|SECRET)(_|$)", var),
            f"{tag}: {var} looks secret and must come from a Secret, not the ConfigMap",
        )

    for var, entry in explicit.items():
        source = entry.get("valueFrom", {})
        if var in SECRET_VARS:
            ref = source.get("secretKeyRef", {})
            c.check(
                (ref.get("name"), ref.get("key")) == SECRET_VARS[var],
                f"{tag}: {var} should come from Secret {SECRET_VARS[var][0]} key {SECRET_VARS[var][1]}",
            )
        elif "secretKeyRef" in source:
            c.check(False, f"{tag}: {var} comes from a Secret but is not a secret variable")
        if var in FEATURE_FLAGS:
            ref = source.get("configMapKeyRef", {})
            c.check(
                ref.get("name") == "feature-flags-config" and ref.get("key") == var,
                f"{tag}: {var} should come from ConfigMap feature-flags-config",
            )
    for var in sorted((set(SECRET_VARS) & vars_read) - set(explicit)):
        c.check(False, f"{tag}: secret variable {var} is not wired from its Secret")
    c.check(
        explicit.get("WORKER_ID", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
        == "metadata.name",
        f"{tag}: WORKER_ID should come from the pod name (fieldRef metadata.name)",
    )
    for e in ctr.get("env", []):
        ref = e.get("valueFrom", {}).get("secretKeyRef", {})
        c.check(
            not (ref.get("name") == "supabase-secrets" and ref.get("key") in ("url", "service-role-key")),
            f"{tag}: injects supabase-secrets/{ref.get('key')}, which the worker does not read",
        )

    # Ports and probes.
    health_port = int(data.get("HEALTH_PORT", 8080))
    metrics_port = int(data.get("METRICS_PORT", 9091))
    c.check(health_port == 8080, f"{tag}: HEALTH_PORT is {health_port}, the contract is 8080")
    c.check(metrics_port == 9091, f"{tag}: METRICS_PORT is {metrics_port}, the contract is 9091")
    ports = {p.get("name"): p["containerPort"] for p in ctr.get("ports", [])}
    c.check(ports.get("health") == health_port, f"{tag}: container port 'health' is not HEALTH_PORT {health_port}")
    c.check(ports.get("metrics") == metrics_port, f"{tag}: container port 'metrics' is not METRICS_PORT {metrics_port}")
    for probe, path in (("startupProbe", "/startup"), ("livenessProbe", "/health"), ("readinessProbe", "/ready")):
        get = (ctr.get(probe) or {}).get("httpGet")
        if not c.check(get is not None, f"{tag}: {probe} missing or not httpGet"):
            continue
        c.check(get.get("path") == path, f"{tag}: {probe} path is {get.get('path')}, should be {path}")
        c.check(
            resolve_port(ctr, get.get("port")) == health_port,
            f"{tag}: {probe} port {get.get('port')} is not the health port {health_port}",
        )

    # Graceful drain fits in the grace period.
    grace = spec.get("terminationGracePeriodSeconds", 30)
    drain_ms = parse_duration_ms(data.get("DRAIN_TIMEOUT", "25s"))
    c.check(
        grace * 1000 > drain_ms,
        f"{tag}: terminationGracePeriodSeconds {grace} does not exceed DRAIN_TIMEOUT {drain_ms / 1000:g}s",
    )

    # The worker's own limits match the container's.
    limits = ctr.get("resources", {}).get("limits", {})
    if "MEMORY_LIMIT_MB" in data and "memory" in limits:
        c.check(
            abs(quantity_mib(limits["memory"]) - float(data["MEMORY_LIMIT_MB"])) < 1,
            f"{tag}: MEMORY_LIMIT_MB {data['MEMORY_LIMIT_MB']} != memory limit {limits['memory']}",
        )
    if "CPU_LIMIT_CORES" in data and "cpu" in limits:
        c.check(
            abs(quantity_cores(limits["cpu"]) - float(data["CPU_LIMIT_CORES"])) < 1e-6,
            f"{tag}: CPU_LIMIT_CORES {data['CPU_LIMIT_CORES']} != cpu limit {limits['cpu']}",
        )
    c.check(
        ctr.get("resources") == {
            "requests": {"cpu": "250m", "memory": "512Mi"},
            "limits": {"cpu": "1000m", "memory": "1Gi"},
        },
        f"{tag}: resources differ from the seed's (requests 250m/512Mi, limits 1000m/1Gi)",
    )

    # A read-only root needs writable mounts where the worker writes.
    mounts = {m["mountPath"]: m["name"] for m in ctr.get("volumeMounts", [])}
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    for path in (data.get("MODEL_CACHE_DIR", "/var/cache/embq/models"), "/tmp"):
        vol = volumes.get(mounts.get(path))
        c.check(
            vol is not None and "emptyDir" in vol,
            f"{tag}: {path} should be an emptyDir mount (the root filesystem is read-only)",
        )
    c.check(spec.get("securityContext", {}).get("runAsUser") == 1001, f"{tag}: pods should run as user 1001")


def check_migrate_job(c, docs, vars_read):
    jobs = find(docs, "Job", "embq-migrate")
    if not c.check(len(jobs) == 1, "migrate: expected Job embq-migrate"):
        return
    job = jobs[0]
    ctr = job["spec"]["template"]["spec"]["containers"][0]
    argv = [os.path.basename(a) if i == 0 else a for i, a in
            enumerate((ctr.get("command") or []) + (ctr.get("args") or []))]
    c.check(argv == ["embq", "migrate"], f"migrate: runs {argv}, not `embq migrate`")
    for e in ctr.get("env", []):
        c.check(e["name"] in vars_read, f"migrate: env {e['name']} is not a variable the worker reads")
    ref = next((e for e in ctr.get("env", []) if e["name"] == "DATABASE_URL"), {})
    c.check(
        ref.get("valueFrom", {}).get("secretKeyRef") == {"name": "supabase-secrets", "key": "database-url"},
        "migrate: DATABASE_URL should come from supabase-secrets/database-url",
    )
    # `embq migrate` types the vector column for the workers' model and dimensions: left to the
    # binary's defaults (hash, 384) it would make vector(384) and every worker would refuse to start.
    for var in ("EMBEDDING_PROVIDER", "EMBEDDING_MODEL", "EMBEDDING_DIMENSIONS", "VECTOR_TYPE", "VECTOR_INDEX"):
        e = next((e for e in ctr.get("env", []) if e["name"] == var), {})
        c.check(
            e.get("valueFrom", {}).get("configMapKeyRef") == {"name": "embedding-worker-config", "key": var},
            f"migrate: {var} should come from ConfigMap embedding-worker-config (the workers' value)",
        )
    c.check(job["metadata"].get("namespace") == "paperless-maverick", "migrate: not in paperless-maverick")
    check_pod_security(c, "migrate", job)


def check_prune_cronjob(c, where, docs, config, vars_read):
    """Retention runs: one CronJob `embq prune` with the workers' image, its settings from the
    workers' ConfigMap and Secret, never two runs at once, a retention of at least an hour."""
    crons = find(docs, "CronJob", "embq-prune")
    if not c.check(len(crons) == 1, f"{where}: expected CronJob embq-prune (retention of finished jobs)"):
        return
    cron = crons[0]
    tag = f"{where}: CronJob embq-prune"
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    ctr = pod["containers"][0]
    argv = [os.path.basename(a) if i == 0 else a for i, a in
            enumerate((ctr.get("command") or []) + (ctr.get("args") or []))]
    c.check(argv[:2] == ["embq", "prune"], f"{tag}: runs {argv}, not `embq prune`")
    c.check(cron["spec"].get("concurrencyPolicy") == "Forbid", f"{tag}: concurrencyPolicy should be Forbid")
    workers = [container(d, "worker") for d in worker_deployments(docs)]
    images = {w["image"] for w in workers if w}
    c.check(images == {ctr.get("image")}, f"{tag}: image {ctr.get('image')} is not the workers' {sorted(images)}")
    env = {e["name"]: e for e in ctr.get("env", [])}
    for name in env:
        c.check(name in vars_read, f"{tag}: env {name} is not a variable embq reads")
    c.check(
        env.get("DATABASE_URL", {}).get("valueFrom", {}).get("secretKeyRef")
        == {"name": "supabase-secrets", "key": "database-url"},
        f"{tag}: DATABASE_URL should come from supabase-secrets/database-url",
    )
    data = (config or {}).get("data", {})
    for var in ("DATABASE_POOL_MODE", "PRUNE_OLDER_THAN"):
        ref = env.get(var, {}).get("valueFrom", {}).get("configMapKeyRef")
        c.check(
            ref == {"name": "embedding-worker-config", "key": var} and var in data,
            f"{tag}: {var} should come from ConfigMap embedding-worker-config, which must set it",
        )
    try:
        retention_ms = parse_duration_ms(data.get("PRUNE_OLDER_THAN", ""))
    except ValueError:
        retention_ms = None
    c.check(
        retention_ms is not None and retention_ms >= 3600e3,
        f"{tag}: PRUNE_OLDER_THAN {data.get('PRUNE_OLDER_THAN')!r} should be a duration of at least 1h",
    )
    check_pod_security(c, where, {"kind": "CronJob", "metadata": cron["metadata"], "spec": cron["spec"]["jobTemplate"]["spec"]})


def check_pod_security(c, where, deploy):
    tag = f"{where}: {deploy['kind']} {deploy['metadata']['name']}"
    spec = deploy["spec"]["template"]["spec"]
    pod_sc = spec.get("securityContext", {})
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        c.check(not spec.get(key), f"{tag}: {key} must not be set")
    for ctr in spec.get("containers", []) + spec.get("initContainers", []):
        sc = ctr.get("securityContext", {})
        cname = f"{tag} container {ctr['name']}"
        non_root = sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot"))
        uid = sc.get("runAsUser", pod_sc.get("runAsUser"))
        c.check(non_root is True and uid not in (None, 0), f"{cname}: must run as a non-root uid")
        c.check(sc.get("allowPrivilegeEscalation") is False, f"{cname}: allowPrivilegeEscalation must be false")
        c.check(not sc.get("privileged"), f"{cname}: must not be privileged")
        c.check(sc.get("readOnlyRootFilesystem") is True, f"{cname}: root filesystem must be read-only")
        c.check(
            [x.upper() for x in sc.get("capabilities", {}).get("drop", [])] == ["ALL"]
            and not sc.get("capabilities", {}).get("add"),
            f"{cname}: must drop ALL capabilities and add none",
        )
        seccomp = sc.get("seccompProfile", pod_sc.get("seccompProfile", {})).get("type")
        c.check(seccomp == "RuntimeDefault", f"{cname}: seccomp profile must be RuntimeDefault")


def check_namespaces(c, where, docs, namespace):
    for d in docs:
        kind, meta = d["kind"], d["metadata"]
        if kind == "Namespace":
            c.check(meta["name"] == namespace, f"{where}: Namespace {meta['name']} is not {namespace}")
            continue
        c.check(
            meta.get("namespace") == namespace,
            f"{where}: {kind} {meta['name']} is in namespace {meta.get('namespace')}, not {namespace}",
        )
        if kind == "RoleBinding":
            for s in d.get("subjects", []):
                if s.get("kind") == "ServiceAccount":
                    c.check(
                        s.get("namespace") in (None, namespace),
                        f"{where}: RoleBinding {meta['name']} binds ServiceAccount {s['name']} "
                        f"in namespace {s.get('namespace')}, not {namespace}",
                    )


def check_autoscaling(c, where, docs, deployments, metrics, adapter_names, production):
    deploy_names = {d["metadata"]["name"] for d in deployments}
    hpas = find(docs, "HorizontalPodAutoscaler")
    scaled = find(docs, "ScaledObject")
    vpas = find(docs, "VerticalPodAutoscaler")
    hpa_resources = {}
    for hpa in hpas:
        tag = f"{where}: HPA {hpa['metadata']['name']}"
        spec = hpa["spec"]
        target = spec["scaleTargetRef"]["name"]
        c.check(target in deploy_names, f"{tag}: targets {target}, which is not a worker Deployment here")
        c.check(spec.get("minReplicas", 1) <= spec["maxReplicas"], f"{tag}: minReplicas above maxReplicas")
        for direction in ("scaleUp", "scaleDown"):
            rules = spec.get("behavior", {}).get(direction)
            if not c.check(rules is not None, f"{tag}: behavior.{direction} missing"):
                continue
            for p in rules.get("policies", []):
                c.check(p.get("periodSeconds", 0) > 0, f"{tag}: {direction} policy {p} lacks periodSeconds")
            c.check(
                rules.get("selectPolicy") == "Min",
                f"{tag}: {direction} selectPolicy should be Min (the seed's policies are caps)",
            )
        for m in spec.get("metrics", []):
            if m["type"] == "Resource":
                hpa_resources.setdefault(target, set()).add(m["resource"]["name"])
            elif m["type"] in ("External", "Pods", "Object"):
                key = m["type"].lower()
                name = m[key]["metric"]["name"]
                c.check(name in metrics, f"{tag}: {m['type']} metric {name} is not exported by the worker")
                served = adapter_names["external" if key == "external" else "custom"]
                c.check(
                    name in served,
                    f"{tag}: {m['type']} metric {name} is not served by the prometheus-adapter rules",
                )
        if production:
            by_type = {
                (m["type"], m.get("resource", {}).get("name") or m.get(m["type"].lower(), {}).get("metric", {}).get("name")):
                m[m["type"].lower()]["target"]
                for m in spec.get("metrics", [])
            }
            # The seed's queue targets; CPU and memory are gone on purpose (issue 19:
            # they kept idle replicas up), and the replica ceiling follows the
            # provider budget (check_cluster_fit.py recomputes it).
            expected = {
                ("Object", "embedding_queue_depth"): {"type": "AverageValue", "averageValue": "10"},
                ("Pods", "embedding_queue_processing_rate"): {"type": "AverageValue", "averageValue": "5"},
            }
            c.check(by_type == expected, f"{tag}: metrics differ from the queue targets: {by_type}")
            c.check(spec.get("minReplicas") == 2, f"{tag}: minReplicas {spec.get('minReplicas')}, the seed says 2")

    for so in scaled:
        tag = f"{where}: ScaledObject {so['metadata']['name']}"
        target = so["spec"]["scaleTargetRef"]["name"]
        c.check(target in deploy_names, f"{tag}: targets {target}, which is not a worker Deployment here")
        c.check(
            not [h for h in hpas if h["spec"]["scaleTargetRef"]["name"] == target],
            f"{tag}: an HPA also targets {target}; KEDA's own HPA would fight it",
        )
        c.check(so["spec"].get("minReplicaCount") == 0, f"{tag}: should scale to zero (minReplicaCount 0)")
        deploy = next((d for d in deployments if d["metadata"]["name"] == target), None)
        env_names = {e["name"] for e in (container(deploy, "worker") or {}).get("env", [])} if deploy else set()
        for trig in so["spec"].get("triggers", []):
            env = trig.get("metadata", {}).get("connectionFromEnv")
            if env:
                c.check(env in env_names, f"{tag}: connectionFromEnv {env} is not set in the worker container")
        for trig in so["spec"].get("triggers", []):
            if trig.get("type") == "prometheus":
                for name in promql_metrics(trig["metadata"].get("query", "")):
                    c.check(name in metrics, f"{tag}: query uses {name}, not exported by the worker")
        if so["spec"].get("advanced", {}).get("horizontalPodAutoscalerConfig", {}).get("behavior"):
            for direction, rules in so["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"].items():
                for p in rules.get("policies", []):
                    c.check(p.get("periodSeconds", 0) > 0, f"{tag}: {direction} policy lacks periodSeconds")

    for vpa in vpas:
        tag = f"{where}: VPA {vpa['metadata']['name']}"
        target = vpa["spec"]["targetRef"]["name"]
        c.check(target in deploy_names, f"{tag}: targets {target}, which is not a worker Deployment here")
        mode = vpa["spec"].get("updatePolicy", {}).get("updateMode", "Auto")
        for policy in vpa["spec"].get("resourcePolicy", {}).get("containerPolicies", []):
            controlled = set(policy.get("controlledResources", ["cpu", "memory"]))
            clash = controlled & hpa_resources.get(target, set())
            c.check(
                mode == "Off" or not clash,
                f"{tag}: updateMode {mode} acts on {sorted(clash)}, which an HPA also scales on",
            )
            if policy.get("containerName") == "worker":
                c.check(
                    policy.get("minAllowed") == {"cpu": "100m", "memory": "256Mi"}
                    and policy.get("maxAllowed") == {"cpu": "2000m", "memory": "2Gi"},
                    f"{tag}: bounds differ from the seed's (100m-2000m, 256Mi-2Gi)",
                )


def check_wiring(c, where, docs, deployments, config):
    data = (config or {}).get("data", {})
    health_port = int(data.get("HEALTH_PORT", 8080))
    metrics_port = int(data.get("METRICS_PORT", 9091))
    worker_pods = [pod_labels(d) for d in deployments]

    svc = one(c, docs, "Service", "embedding-queue-workers-service", where)
    if svc:
        sel = svc["spec"].get("selector", {})
        c.check(
            worker_pods and all(labels_match(sel, p) for p in worker_pods),
            f"{where}: Service selector {sel} does not select every worker pod",
        )
        for port in svc["spec"]["ports"]:
            for d in deployments:
                ctr = container(d, "worker")
                c.check(
                    resolve_port(ctr, port["targetPort"]) in (health_port, metrics_port),
                    f"{where}: Service port {port['name']} targets {port['targetPort']}, not a worker port",
                )
        for sm in find(docs, "ServiceMonitor"):
            c.check(
                labels_match(sm["spec"]["selector"].get("matchLabels"), svc["metadata"].get("labels", {})),
                f"{where}: ServiceMonitor {sm['metadata']['name']} does not select the Service",
            )
            names = {p["name"]: p for p in svc["spec"]["ports"]}
            for ep in sm["spec"]["endpoints"]:
                port = names.get(ep.get("port"))
                c.check(
                    port is not None and port["port"] == metrics_port and ep.get("path", "/metrics") == "/metrics",
                    f"{where}: ServiceMonitor endpoint {ep} is not the metrics port {metrics_port} /metrics",
                )

    for pdb in find(docs, "PodDisruptionBudget"):
        sel = pdb["spec"]["selector"].get("matchLabels", {})
        c.check(
            all(labels_match(sel, p) for p in worker_pods),
            f"{where}: PDB {pdb['metadata']['name']} does not select every worker pod",
        )

    netpols = find(docs, "NetworkPolicy")
    c.check(len(netpols) >= 1, f"{where}: no NetworkPolicy for the workers")
    controllers = [d for d in find(docs, "Deployment") if d["metadata"]["name"] == "worker-restart-controller"]
    for np_ in netpols:
        tag = f"{where}: NetworkPolicy {np_['metadata']['name']}"
        sel = np_["spec"]["podSelector"].get("matchLabels", {})
        c.check(all(labels_match(sel, p) for p in worker_pods), f"{tag}: does not select every worker pod")
        c.check(set(np_["spec"].get("policyTypes", [])) == {"Ingress", "Egress"}, f"{tag}: should restrict ingress and egress")
        from_monitoring, from_controller = set(), set()
        for rule in np_["spec"].get("ingress", []):
            ports = {p["port"] for p in rule.get("ports", [])}
            c.check(ports, f"{tag}: an ingress rule allows every port")
            for peer in rule.get("from", []):
                ns_sel = peer.get("namespaceSelector", {}).get("matchLabels", {})
                pod_sel = peer.get("podSelector", {}).get("matchLabels", {})
                if ns_sel.get("kubernetes.io/metadata.name") == "monitoring":
                    from_monitoring |= ports
                elif pod_sel == dict([CONTROLLER_LABEL]) and "namespaceSelector" not in peer:
                    from_controller |= ports
                else:
                    c.check(False, f"{tag}: unexpected ingress peer {peer}")
        c.check(from_monitoring == {metrics_port}, f"{tag}: monitoring may reach {sorted(from_monitoring)}, should be {metrics_port}")
        c.check(health_port in from_controller, f"{tag}: the restart controller cannot reach the health port {health_port}")
        c.check(from_controller <= {health_port, metrics_port}, f"{tag}: the controller may reach {sorted(from_controller)}")
        for ctl in controllers:
            c.check(
                labels_match(dict([CONTROLLER_LABEL]), pod_labels(ctl)),
                f"{tag}: controller pods lack the label app=worker-restart-controller the policy admits",
            )
        egress_ports = {p["port"] for rule in np_["spec"].get("egress", []) for p in rule.get("ports", [])}
        c.check(egress_ports == {53, 5432, 6543, 443}, f"{tag}: egress ports {sorted(egress_ports)}, expected DNS, PostgreSQL, HTTPS")


def check_seed_contract(c, docs):
    where = "production"
    for kind, name in (
        ("Deployment", "embedding-queue-workers"),
        ("HorizontalPodAutoscaler", "embedding-queue-workers-hpa"),
        ("ConfigMap", "embedding-worker-config"),
        ("Service", "embedding-queue-workers-service"),
        ("Deployment", "worker-restart-controller"),
        ("PodDisruptionBudget", None),
        ("NetworkPolicy", None),
        ("ServiceAccount", None),
        ("Role", None),
        ("RoleBinding", None),
        ("ServiceMonitor", None),
        ("PrometheusRule", None),
    ):
        c.check(find(docs, kind, name), f"{where}: missing {kind} {name or ''}".rstrip())
    deploy = find(docs, "Deployment", "embedding-queue-workers")
    if deploy:
        strategy = deploy[0]["spec"].get("strategy", {})
        c.check(
            strategy.get("type") == "RollingUpdate"
            and strategy.get("rollingUpdate") == {"maxSurge": 2, "maxUnavailable": 1},
            f"{where}: rolling update should be maxSurge 2 / maxUnavailable 1",
        )
        c.check("replicas" not in deploy[0]["spec"], f"{where}: spec.replicas fights the HPA on every apply")
    config = find(docs, "ConfigMap", "embedding-worker-config")
    seed = {
        "QUEUE_POLL_INTERVAL": "5s", "MAX_CONCURRENT_JOBS": "3", "BATCH_SIZE": "5",
        "HEARTBEAT_INTERVAL": "30s", "MAX_REQUESTS_PER_MINUTE": "60",
        "MAX_TOKENS_PER_MINUTE": "100000", "BACKOFF_MULTIPLIER": "2",
        "MEMORY_LIMIT_MB": "1024", "CPU_LIMIT_CORES": "1.0",
    }
    if config:
        for key, value in seed.items():
            c.check(
                config[0]["data"].get(key) == value,
                f"{where}: ConfigMap {key}={config[0]['data'].get(key)!r}, expected the seed's {value!r} (durations with their unit)",
            )


def check_alerts(c, where, docs, metrics, queries):
    for rule_obj in find(docs, "PrometheusRule"):
        for group in rule_obj["spec"]["groups"]:
            for rule in group["rules"]:
                name = rule.get("alert") or rule.get("record")
                tag = f"{where}: rule {name}"
                check_metric_names(c, tag, rule["expr"], metrics)
                queries.append((f"alert {name}", rule["expr"]))
                if "alert" in rule:
                    c.check("for" in rule, f"{tag}: no `for`")
                    c.check(
                        rule.get("labels", {}).get("severity") in ("critical", "warning", "info"),
                        f"{tag}: severity label missing or unknown",
                    )
                    ann = rule.get("annotations", {})
                    c.check(ann.get("summary") and ann.get("description"), f"{tag}: needs summary and description")


def other_exporters():
    """Series of the restart controller (from its metrics.rs) and of the queue exporter
    (from its queries.yaml): the alerts may use these besides the worker's."""
    names = set()
    src = (REPO / "crates" / "embq-controller" / "src" / "metrics.rs").read_text(encoding="utf-8")
    counters = set(re.findall(r"pub (\w+): (?:Family<\w+, )?Counter", src))
    fields = dict(re.findall(r"registry\.register\(\s*\"(\w+)\",\s*\"[^\"]*\",\s*m\.(\w+)\.clone", src))
    for name, field in fields.items():
        names.add(f"restart_controller_{name}" + ("_total" if field in counters else ""))
    queries = DEPLOY / "kubernetes" / "components" / "queue-exporter" / "queries.yaml"
    for query, spec in yaml.safe_load(queries.read_text(encoding="utf-8")).items():
        for column in spec["metrics"]:
            names |= {f"{query}_{col}" for col in column}
    return names


OTHER_METRICS = None


def check_metric_names(c, tag, expr, metrics):
    global OTHER_METRICS
    if OTHER_METRICS is None:
        OTHER_METRICS = other_exporters()
    for name in sorted(promql_metrics(expr)):
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        c.check(
            name in metrics or base in metrics or name in PLATFORM_METRICS or name in OTHER_METRICS,
            f"{tag}: uses metric {name}, which the worker does not export",
        )


def check_monitoring_files(c, metrics, queries):
    values = yaml.safe_load((MONITORING / "prometheus-adapter" / "values.yaml").read_text(encoding="utf-8"))
    served = {"custom": set(), "external": set()}
    for section, rule in adapter_rules(values):
        tag = f"prometheus-adapter {section} rule {rule.get('name', {}).get('as')}"
        for expr in adapter_exprs(rule):
            check_metric_names(c, tag, expr, metrics)
            queries.append((tag, expr))
        served[section].add(rule["name"]["as"])
        c.check(
            "namespace" in rule.get("resources", {}).get("overrides", {}),
            f"{tag}: must map the namespace label",
        )
        if section == "custom":
            c.check(
                {"pod", "service"} & set(rule["resources"]["overrides"]),
                f"{tag}: a Pods or Object metric must map the pod or service label",
            )

    path = MONITORING / "grafana" / "embq-worker-dashboard.json"
    dashboard = json.loads(path.read_text(encoding="utf-8"))
    c.check(dashboard.get("uid"), "dashboard: no uid")
    ids = []

    def walk(items):
        for p in items:
            ids.append(p.get("id"))
            walk(p.get("panels", []))

    walk(dashboard.get("panels", []))
    c.check(len(ids) == len(set(ids)), "dashboard: panel ids are not unique")
    seen = set()
    for title, expr in grafana_exprs(dashboard):
        check_metric_names(c, f"dashboard panel {title!r}", expr, metrics)
        queries.append((f"dashboard {title}", grafana_to_promql(expr)))
        seen |= promql_metrics(expr)
    wanted = {
        "throughput": "embedding_jobs_processed_total",
        "queue depth": "embedding_queue_depth",
        "latency percentiles": "embedding_processing_duration_seconds_bucket",
        "errors": "embedding_worker_errors_total",
        "tokens": "embedding_provider_tokens_total",
        "429s": "embedding_provider_rate_limited_total",
        "memory": "worker_memory_usage_bytes",
        "replicas": "worker_uptime_seconds",
    }
    for what, metric in wanted.items():
        c.check(metric in seen, f"dashboard: no panel shows {what} ({metric})")
    return served


def write_queries(path, queries):
    """Every query as a recording rule, so `promtool check rules` parses them all."""
    rules = [
        {"record": f"embq:query:{i}", "expr": expr}
        for i, (_, expr) in enumerate(queries)
    ]
    Path(path).write_text(yaml.safe_dump({"groups": [{"name": "queries", "rules": rules}]}), encoding="utf-8")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--assume-lists", action="store_true", help="use the agreed lists instead of the embq binary")
    ap.add_argument("--rendered-dir", help="read OVERLAY.yaml renders from here instead of running kubectl kustomize")
    ap.add_argument("--write-queries", help="write every PromQL query as a rule file for promtool")
    args = ap.parse_args()

    vars_read, metrics, source = worker_lists(args.assume_lists)
    c = Checker()
    queries = []
    adapter_served = check_monitoring_files(c, metrics, queries)
    base_config = None

    for overlay, namespace in OVERLAY_NAMESPACES.items():
        docs = render(overlay, args.rendered_dir)
        deployments = worker_deployments(docs)
        c.check(deployments, f"{overlay}: no worker Deployment")
        config = (find(docs, "ConfigMap", "embedding-worker-config") or [None])[0]
        if overlay == "production":
            base_config = config
            check_seed_contract(c, docs)
        if config is None:
            # The canary overlay reuses the fleet's ConfigMap.
            config = base_config
        check_namespaces(c, overlay, docs, namespace)
        check_config_accepted(c, overlay, config)
        for d in deployments:
            check_worker_deployment(c, overlay, d, config, vars_read)
        for d in find(docs, "Deployment"):
            check_pod_security(c, overlay, d)
        if overlay != "canary":
            check_wiring(c, overlay, docs, deployments, config)
            check_autoscaling(c, overlay, docs, deployments, metrics, adapter_served, overlay == "production")
            check_alerts(c, overlay, docs, metrics, queries)
            check_prune_cronjob(c, overlay, docs, config, vars_read)

    check_migrate_job(c, render("migrate", args.rendered_dir, DEPLOY / "kubernetes" / "jobs" / "migrate"), vars_read)

    if args.write_queries:
        write_queries(args.write_queries, queries)

    print(f"check_manifests: worker truth from {source}: {len(vars_read)} variables, {len(metrics)} metrics")
    return c.report("check_manifests")


if __name__ == "__main__":
    sys.exit(main())
