//! Test doubles: a mocked Kubernetes API server (tower-test) whose every request is
//! checked in order, worker stand-ins (real HTTP servers on loopback addresses), fixtures.

#![allow(dead_code)]

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Router;
use clap::Parser;
use embq_controller::config::{Args, Config};
use embq_controller::controller::Context;
use embq_controller::metrics::Metrics;
use http::{Request, Response};
use kube::client::Body;
use serde_json::{json, Value};
use tower_test::mock::{Handle, SendResponse};

mod steps;
pub use steps::*;

pub const NS: &str = "ns";
/// Every awaited step of a scenario is bounded by this.
pub const STEP: Duration = Duration::from_secs(10);

/// Everything that happened, API calls and worker calls in one order.
#[derive(Clone, Default)]
pub struct Log(Arc<Mutex<Vec<String>>>);

impl Log {
    pub fn push(&self, s: String) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(s);
    }
    pub fn entries(&self) -> Vec<String> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// One request the controller made to the API server.
pub struct Call {
    pub method: String,
    /// Path and query exactly as sent.
    pub uri: String,
    pub body: Value,
    respond: SendResponse<Response<Body>>,
}

impl Call {
    pub fn reply(self, status: u16, body: Value) {
        let bytes = serde_json::to_vec(&body).expect("json");
        let resp = Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Body::from(bytes))
            .expect("response");
        self.respond.send_response(resp);
    }
    pub fn ok(self, body: Value) {
        self.reply(200, body)
    }
    /// Answers with the request's own body (what create/replace return).
    pub fn echo(self, status: u16) {
        let body = self.body.clone();
        self.reply(status, body)
    }
    pub fn status(self, code: u16, reason: &str, message: &str) {
        self.reply(code, status_body(code, reason, message))
    }
}

pub fn status_body(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
           "status": if code < 300 { "Success" } else { "Failure" },
           "reason": reason, "message": message, "code": code})
}

/// The mocked API server.
pub struct MockApi {
    handle: Handle<Request<Body>, Response<Body>>,
    pub log: Log,
    /// (method, uri) of every request, for the RBAC comparison.
    pub seen: Vec<(String, String)>,
}

impl MockApi {
    pub async fn next(&mut self) -> Call {
        let (req, respond) = tokio::time::timeout(STEP, self.handle.next_request())
            .await
            .expect("the controller should have made another API request in time")
            .expect("the client was dropped");
        let method = req.method().to_string();
        let uri = req.uri().to_string();
        let bytes = req.into_body().collect_bytes().await.expect("request body");
        let body =
            if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).expect("request body is json") };
        self.log.push(format!("{method} {uri}"));
        self.seen.push((method.clone(), uri.clone()));
        Call { method, uri, body, respond }
    }

    /// The next request must be exactly `method uri`.
    pub async fn expect(&mut self, method: &str, uri: &str) -> Call {
        let call = self.next().await;
        assert_eq!(
            (call.method.as_str(), call.uri.as_str()),
            (method, uri),
            "unexpected request; so far: {:#?}",
            self.log.entries()
        );
        call
    }

    /// An Event about `object`; returns its reason.
    pub async fn expect_event(&mut self, object: &str) -> (String, String) {
        let call = self.expect("POST", &format!("/api/v1/namespaces/{NS}/events?")).await;
        assert_eq!(call.body["involvedObject"]["name"], object, "event about {object}");
        let reason = call.body["reason"].as_str().unwrap_or_default().to_owned();
        let message = call.body["message"].as_str().unwrap_or_default().to_owned();
        call.echo(201);
        (reason, message)
    }

    /// The leader's lease step when it already holds the Lease.
    pub async fn lease_renewed(&mut self) {
        self.expect("GET", &lease_uri()).await.ok(lease("me", 0));
        let put = self.expect("PUT", &format!("{}?", lease_uri())).await;
        assert_eq!(put.body["spec"]["holderIdentity"], "me");
        put.echo(200);
    }

    /// The fleet read: pods, Deployment, ScaledObjects, HPAs.
    pub async fn fleet(&mut self, pods: Value, deployment: Value, scaled_objects: Option<Value>, hpas: Value) {
        self.expect("GET", &pods_uri()).await.ok(pods);
        self.expect("GET", &format!("/apis/apps/v1/namespaces/{NS}/deployments/embedding-queue-workers"))
            .await
            .ok(deployment);
        let so = self.expect("GET", &format!("/apis/keda.sh/v1alpha1/namespaces/{NS}/scaledobjects?")).await;
        match scaled_objects {
            Some(list) => so.ok(list),
            None => so.status(404, "NotFound", "the server could not find the requested resource"),
        }
        self.expect("GET", &format!("/apis/autoscaling/v2/namespaces/{NS}/horizontalpodautoscalers?")).await.ok(hpas);
    }

    /// Asserts nothing else is waiting (call once the controller is known to be idle).
    pub fn assert_idle(&mut self) {
        use std::task::{Context as TaskCx, Poll};
        let mut cx = TaskCx::from_waker(std::task::Waker::noop());
        let fut = self.handle.next_request();
        let mut fut = std::pin::pin!(fut);
        if let Poll::Ready(Some((req, _))) = fut.as_mut().poll(&mut cx) {
            panic!("unexpected extra request {} {}", req.method(), req.uri());
        }
    }
}

pub fn lease_uri() -> String {
    format!("/apis/coordination.k8s.io/v1/namespaces/{NS}/leases/worker-restart-controller")
}

pub fn pods_uri() -> String {
    format!("/api/v1/namespaces/{NS}/pods?&labelSelector=app%3Dembedding-queue-worker")
}

pub fn eviction_uri(pod: &str, dry_run: bool) -> String {
    let q = if dry_run { "&dryRun=All" } else { "" };
    format!("/api/v1/namespaces/{NS}/pods/{pod}/eviction?{q}")
}

/// A controller Context wired to a fresh mocked API server.
pub fn controller(extra: &[&str]) -> (Arc<Context>, MockApi) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, NS);
    let defaults = [
        ("--namespace", NS),
        ("--identity", "me"),
        ("--health-failure-threshold", "0s"),
        ("--pressure-window", "0s"),
        ("--calm-window", "0s"),
        ("--scale-cooldown", "0s"),
        ("--drain-poll", "10ms"),
        ("--drain-timeout", "5s"),
        ("--replacement-poll", "10ms"),
        ("--replacement-timeout", "5s"),
        ("--log-format", "text"),
    ];
    // A flag in `extra` replaces its default (clap refuses a flag given twice).
    let mut argv = vec!["embq-controller"];
    for (flag, value) in defaults.iter().filter(|(f, _)| !extra.contains(f)) {
        argv.extend_from_slice(&[flag, value]);
    }
    argv.extend_from_slice(extra);
    let config = Config::from_args(Args::parse_from(argv), None).expect("valid test config");
    let ctx = Context::new(client, config, Arc::new(Metrics::new())).expect("context");
    (Arc::new(ctx), MockApi { handle, log: Log::default(), seen: Vec::new() })
}

/// Waits (bounded) for every spawned restart to finish.
pub async fn restarts_done(ctx: &Context) {
    ctx.tasks.close();
    tokio::time::timeout(STEP, ctx.tasks.wait()).await.expect("restarts should finish in time");
    ctx.tasks.reopen();
}

// ---------------------------------------------------------------- fixtures

pub struct PodSpec<'a> {
    pub name: &'a str,
    pub ip: Option<IpAddr>,
    pub ready: bool,
    pub waiting: Option<&'a str>,
    pub last_terminated: Option<&'a str>,
    pub restarts: i32,
}

impl<'a> PodSpec<'a> {
    pub fn ready(name: &'a str, ip: IpAddr) -> Self {
        Self { name, ip: Some(ip), ready: true, waiting: None, last_terminated: None, restarts: 0 }
    }
    pub fn not_ready(name: &'a str, ip: IpAddr) -> Self {
        Self { ready: false, ..Self::ready(name, ip) }
    }
}

pub fn pod(p: &PodSpec) -> Value {
    let state = match p.waiting {
        Some(reason) => json!({"waiting": {"reason": reason}}),
        None => json!({"running": {}}),
    };
    let mut status = json!({
        "phase": "Running",
        "conditions": [{"type": "Ready", "status": if p.ready { "True" } else { "False" }}],
        "containerStatuses": [{
            "name": "worker", "image": "embq", "imageID": "", "ready": p.ready,
            "started": p.waiting.is_none(), "restartCount": p.restarts, "state": state,
        }]
    });
    if let Some(ip) = p.ip {
        status["podIP"] = json!(ip.to_string());
    }
    if let Some(reason) = p.last_terminated {
        status["containerStatuses"][0]["lastState"] = json!({"terminated": {"exitCode": 137, "reason": reason}});
    }
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": p.name, "namespace": NS, "uid": format!("uid-{}", p.name),
                     "labels": {"app": "embedding-queue-worker"}},
        "spec": {"containers": [{"name": "worker", "image": "embq",
                 "resources": {"limits": {"memory": "1Gi"}}}]},
        "status": status,
    })
}

pub fn pod_list(pods: &[Value]) -> Value {
    json!({"apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": "1"}, "items": pods})
}

pub fn deployment(replicas: i32, annotations: Value) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "embedding-queue-workers", "namespace": NS, "uid": "uid-deploy",
                     "annotations": annotations},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "embedding-queue-worker"}},
            "template": {},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 2, "maxUnavailable": 1}},
        }
    })
}

pub fn hpa(min: i32, max: i32, annotations: Value, labels: Value, name: &str) -> Value {
    json!({
        "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": name, "namespace": NS, "annotations": annotations, "labels": labels},
        "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment",
                                    "name": "embedding-queue-workers"},
                 "minReplicas": min, "maxReplicas": max}
    })
}

pub fn list(kind: &str, api_version: &str, items: &[Value]) -> Value {
    json!({"apiVersion": api_version, "kind": kind, "metadata": {"resourceVersion": "1"}, "items": items})
}

pub fn no_hpas() -> Value {
    list("HorizontalPodAutoscalerList", "autoscaling/v2", &[])
}

pub fn scaled_object(min: i32, annotations: Value) -> Value {
    json!({
        "apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject",
        "metadata": {"name": "embedding-queue-workers", "namespace": NS, "annotations": annotations},
        "spec": {"scaleTargetRef": {"name": "embedding-queue-workers"},
                 "minReplicaCount": min, "maxReplicaCount": 10}
    })
}

pub fn lease(holder: &str, renewed_secs_ago: i64) -> Value {
    let t = chrono::Utc::now() - chrono::Duration::seconds(renewed_secs_ago);
    json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "worker-restart-controller", "namespace": NS, "resourceVersion": "7"},
        "spec": {"holderIdentity": holder, "leaseDurationSeconds": 30,
                 "renewTime": t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)}
    })
}

// ---------------------------------------------------------------- worker stand-ins

/// How a stand-in worker answers.
#[derive(Clone)]
pub struct Behavior {
    pub health: StatusCode,
    pub metrics: String,
    /// The status `/metrics` answers with (a 5xx makes a failed poll).
    pub metrics_status: StatusCode,
}

impl Behavior {
    pub fn healthy(metrics: &str) -> Self {
        Self { health: StatusCode::OK, metrics: metrics.to_owned(), metrics_status: StatusCode::OK }
    }
    pub fn failing_health() -> Self {
        Self {
            health: StatusCode::INTERNAL_SERVER_ERROR,
            metrics: "embedding_inflight_jobs 0\n".into(),
            metrics_status: StatusCode::OK,
        }
    }
}

#[derive(Clone)]
struct WorkerState {
    ip: IpAddr,
    behavior: Arc<Mutex<Behavior>>,
    log: Log,
}

/// A set of stand-in workers, one per loopback address, all on the same port (the
/// controller's worker ports are fleet-wide settings).
pub struct Workers {
    pub port: u16,
    pub ips: Vec<IpAddr>,
    behaviors: Vec<Arc<Mutex<Behavior>>>,
}

impl Workers {
    pub async fn start(behaviors: Vec<Behavior>, log: &Log) -> Self {
        // Bind the first on port 0, the rest on 127.0.0.N with the same port; retry
        // with a new port in the unlikely case one of them is taken.
        for _ in 0..20 {
            let mut listeners = Vec::new();
            let mut port = 0;
            let mut failed = false;
            for i in 0..behaviors.len() {
                let ip = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + i as u8));
                match tokio::net::TcpListener::bind(SocketAddr::new(ip, port)).await {
                    Ok(l) => {
                        port = l.local_addr().expect("addr").port();
                        listeners.push((ip, l));
                    }
                    Err(_) => {
                        failed = true;
                        break;
                    }
                }
            }
            if failed {
                continue;
            }
            let mut ips = Vec::new();
            let mut shared = Vec::new();
            for ((ip, listener), b) in listeners.into_iter().zip(behaviors.iter().cloned()) {
                let behavior = Arc::new(Mutex::new(b));
                let state = WorkerState { ip, behavior: behavior.clone(), log: log.clone() };
                let app = Router::new()
                    .route("/health", get(health))
                    .route("/metrics", get(metrics))
                    .route("/shutdown", post(shutdown))
                    .with_state(state);
                tokio::spawn(async move { axum::serve(listener, app).await });
                ips.push(ip);
                shared.push(behavior);
            }
            return Workers { port, ips, behaviors: shared };
        }
        panic!("could not bind the stand-in workers");
    }

    pub fn set(&self, i: usize, b: Behavior) {
        *self.behaviors[i].lock().unwrap_or_else(|e| e.into_inner()) = b;
    }

    pub fn port_args(&self) -> [String; 4] {
        ["--worker-health-port".into(), self.port.to_string(), "--worker-metrics-port".into(), self.port.to_string()]
    }
}

async fn health(State(s): State<WorkerState>) -> (StatusCode, &'static str) {
    let code = s.behavior.lock().unwrap_or_else(|e| e.into_inner()).health;
    (code, r#"{"status":"degraded"}"#)
}

async fn metrics(State(s): State<WorkerState>) -> (StatusCode, String) {
    let b = s.behavior.lock().unwrap_or_else(|e| e.into_inner()).clone();
    s.log.push(format!("worker {} GET /metrics {}", s.ip, b.metrics_status.as_u16()));
    (b.metrics_status, b.metrics)
}

/// The real worker's `/shutdown` drains and then exits the process, so the kubelet restarts
/// the container: each accepted call is one container restart. Logged so tests can count them.
async fn shutdown(State(s): State<WorkerState>) -> StatusCode {
    s.log.push(format!("worker {} POST /shutdown", s.ip));
    StatusCode::ACCEPTED
}

/// Worker metrics text with the given queue depth, in-flight jobs and rate-limit counter.
pub fn worker_metrics(queue_depth: f64, inflight: f64, rate_limited: f64) -> String {
    format!(
        "# TYPE embedding_jobs_processed counter\n\
         embedding_jobs_processed_total 100\n\
         embedding_jobs_failed_total 1\n\
         embedding_queue_depth {queue_depth}\n\
         embedding_inflight_jobs {inflight}\n\
         embedding_provider_rate_limited_total{{provider=\"openai\"}} {rate_limited}\n\
         embedding_rate_limit_wait_seconds_total{{provider=\"openai\"}} 0\n\
         # EOF\n"
    )
}
