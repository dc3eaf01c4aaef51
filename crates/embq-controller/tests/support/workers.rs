//! Worker stand-ins: real HTTP servers on loopback addresses answering /health, /metrics
//! and /shutdown as a worker would, each call logged.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Router;

use super::*;

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
