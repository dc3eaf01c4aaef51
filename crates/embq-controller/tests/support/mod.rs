//! Test doubles: a mocked Kubernetes API server (tower-test) whose every request is
//! checked in order, worker stand-ins (real HTTP servers on loopback addresses), fixtures.

#![allow(dead_code)]

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Parser;
use embq_controller::config::{Args, Config};
use embq_controller::controller::Context;
use embq_controller::metrics::Metrics;
use http::{Request, Response};
use kube::client::Body;
use serde_json::{json, Value};
use tower_test::mock::{Handle, SendResponse};

mod fixtures;
mod steps;
mod workers;
pub use fixtures::*;
pub use steps::*;
pub use workers::*;

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

pub fn eviction_uri(pod: &str) -> String {
    format!("/api/v1/namespaces/{NS}/pods/{pod}/eviction?")
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
