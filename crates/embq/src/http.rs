//! HTTP surface: `/health /ready /startup /shutdown` on the health port and
//! `/metrics` on its own listener, as the seed specifies.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

use crate::config::Secret;
use crate::health::Health;
use crate::metrics::{MemoryLabel, Metrics};

#[derive(Clone)]
struct HealthState {
    health: Arc<Health>,
    auth: ShutdownAuth,
}

/// Who may call `POST /shutdown`.
#[derive(Clone, Debug, Default)]
pub struct ShutdownAuth {
    /// `SHUTDOWN_TOKEN`: when set, every caller must present it (loopback too, see below).
    pub token: Option<Secret>,
    /// `SHUTDOWN_LOOPBACK_EXEMPT`: loopback callers may omit the token. Off by default: behind a
    /// service-mesh sidecar every request arrives from loopback.
    pub loopback_exempt: bool,
}

/// The health router (port 8080).
pub fn health_router(health: Arc<Health>, auth: ShutdownAuth) -> Router {
    Router::new()
        .route("/health", get(health_handler))
        .route("/ready", get(ready_handler))
        .route("/startup", get(startup_handler))
        .route("/shutdown", post(shutdown_handler))
        .with_state(HealthState { health, auth })
}

async fn health_handler(State(s): State<HealthState>) -> Response {
    let report = s.health.report();
    let code = if s.health.live() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, Json(report)).into_response()
}

async fn ready_handler(State(s): State<HealthState>) -> Response {
    let reasons = s.health.not_ready_reasons();
    let (code, mut body) = if reasons.is_empty() {
        (StatusCode::OK, json!({"status": "ready"}))
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, json!({"status": "not ready", "reasons": reasons}))
    };
    // A pause shows even while short enough to leave the worker ready.
    if let Some(left) = s.health.provider_paused_for() {
        body["provider_paused_seconds"] = json!((left.as_secs_f64() * 10.0).ceil() / 10.0);
    }
    (code, Json(body)).into_response()
}

async fn startup_handler(State(s): State<HealthState>) -> Response {
    if s.health.started() {
        (StatusCode::OK, Json(json!({"status": "started"}))).into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"status": "starting"}))).into_response()
    }
}

/// Compares in time independent of where the strings differ.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Decides a `POST /shutdown`: a token that is presented is always checked; with a token
/// configured it is required (from loopback only if not exempt); without one, only loopback
/// callers that present nothing are accepted. IPv4-mapped addresses count as their IPv4 form.
fn authorised(peer: SocketAddr, headers: &HeaderMap, auth: &ShutdownAuth) -> Result<(), &'static str> {
    let loopback = peer.ip().to_canonical().is_loopback();
    let given = headers.get(header::AUTHORIZATION);
    match (&auth.token, given) {
        (Some(token), Some(v)) => {
            let ok = v
                .to_str()
                .ok()
                .and_then(|v| v.strip_prefix("Bearer "))
                .is_some_and(|given| constant_time_eq(given.trim().as_bytes(), token.expose().as_bytes()));
            ok.then_some(()).ok_or("a valid Authorization: Bearer token is required")
        }
        (Some(_), None) if loopback && auth.loopback_exempt => Ok(()),
        (Some(_), None) => Err("a valid Authorization: Bearer token is required"),
        (None, Some(_)) => Err("no SHUTDOWN_TOKEN is configured, so no presented token is valid"),
        (None, None) if loopback => Ok(()),
        (None, None) => Err("shutdown is only accepted from loopback when SHUTDOWN_TOKEN is not set"),
    }
}

async fn shutdown_handler(
    State(s): State<HealthState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    if let Err(msg) = authorised(peer, &headers, &s.auth) {
        tracing::warn!(%peer, "refused POST /shutdown: {msg}");
        return (StatusCode::UNAUTHORIZED, Json(json!({"error": msg}))).into_response();
    }
    tracing::info!(%peer, "graceful drain requested over HTTP");
    s.health.shutdown.cancel();
    (StatusCode::ACCEPTED, Json(json!({"status": "draining"}))).into_response()
}

/// The metrics router (port 9091).
pub fn metrics_router(metrics: Arc<Metrics>, health: Arc<Health>) -> Router {
    Router::new().route(
        "/metrics",
        get(move || {
            let m = metrics.clone();
            let h = health.clone();
            async move {
                refresh_process_gauges(&m, &h);
                ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], m.encode())
            }
        }),
    )
}

/// Gauges cheap enough to read at scrape time.
pub fn refresh_process_gauges(m: &Metrics, h: &Health) {
    m.uptime_seconds.set(h.uptime().as_secs_f64());
    if let Some(rss) = crate::memory::rss_bytes() {
        m.memory_bytes.get_or_create(&MemoryLabel { r#type: "rss" }).set(rss as i64);
    }
    m.memory_bytes.get_or_create(&MemoryLabel { r#type: "heapUsed" }).set(crate::memory::heap_used() as i64);
    m.memory_bytes.get_or_create(&MemoryLabel { r#type: "heapTotal" }).set(crate::memory::heap_peak() as i64);
    m.inflight_jobs.set(h.inflight());
    m.ready.set(i64::from(h.not_ready_reasons().is_empty()));
}

/// Serves a router until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    crate::listener::serve(listener, router, crate::listener::Limits::default(), shutdown).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::extract::connect_info::MockConnectInfo;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use std::time::Duration;
    use tower::ServiceExt;

    fn health() -> Arc<Health> {
        let h = Arc::new(Health::new("w1".into(), true, Duration::from_secs(60)));
        h.set_db_ok(true);
        h.set_schema_ok(true);
        h
    }

    async fn call(app: Router, peer: &str, method: &str, path: &str, auth: Option<&str>) -> (StatusCode, String) {
        let peer: SocketAddr = peer.parse().unwrap();
        let mut req = Request::builder().method(method).uri(path);
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let resp = app.layer(MockConnectInfo(peer)).oneshot(req.body(Body::empty()).unwrap()).await.unwrap();
        let status = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    const LOCAL: &str = "127.0.0.1:5000";
    const REMOTE: &str = "10.1.2.3:5000";

    #[tokio::test]
    async fn startup_and_ready_follow_initialisation() {
        let h = health();
        let app = health_router(h.clone(), ShutdownAuth::default());
        assert_eq!(call(app.clone(), LOCAL, "GET", "/startup", None).await.0, StatusCode::SERVICE_UNAVAILABLE);
        let (code, body) = call(app.clone(), LOCAL, "GET", "/ready", None).await;
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("starting"), "{body}");
        h.set_started();
        assert_eq!(call(app.clone(), LOCAL, "GET", "/startup", None).await.0, StatusCode::OK);
        assert_eq!(call(app.clone(), LOCAL, "GET", "/ready", None).await.0, StatusCode::OK);
        h.set_db_ok(false);
        let (code, body) = call(app.clone(), LOCAL, "GET", "/ready", None).await;
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("database unavailable"), "{body}");
        // Liveness does not depend on the database.
        let (code, body) = call(app, LOCAL, "GET", "/health", None).await;
        assert_eq!(code, StatusCode::OK);
        assert!(body.contains("\"worker_id\":\"w1\"") && body.contains("\"database\":\"unavailable\""), "{body}");
    }

    fn auth(token: Option<&str>, loopback_exempt: bool) -> ShutdownAuth {
        ShutdownAuth { token: token.map(Secret::new), loopback_exempt }
    }

    #[tokio::test]
    async fn shutdown_from_loopback_needs_no_token() {
        let h = health();
        let (code, _) = call(health_router(h.clone(), auth(None, false)), LOCAL, "POST", "/shutdown", None).await;
        assert_eq!(code, StatusCode::ACCEPTED);
        assert!(h.shutdown.is_cancelled());
    }

    #[tokio::test]
    async fn the_shutdown_rule_for_every_caller_and_setting() {
        const MAPPED: &str = "[::ffff:127.0.0.1]:5000";
        const V6: &str = "[::1]:5000";
        let (ok, no) = (StatusCode::ACCEPTED, StatusCode::UNAUTHORIZED);
        // (token configured, loopback exempt, caller, Authorization, expected)
        let cases = [
            // No token configured: loopback callers that present nothing, and only they.
            (None, false, LOCAL, None, ok),
            (None, false, V6, None, ok),
            (None, false, MAPPED, None, ok),
            (None, false, REMOTE, None, no),
            (None, false, LOCAL, Some("Bearer anything"), no),
            (None, false, V6, Some("Bearer anything"), no),
            // A token configured: required from everyone, loopback included...
            (Some("s3cret"), false, LOCAL, None, no),
            (Some("s3cret"), false, V6, None, no),
            (Some("s3cret"), false, MAPPED, None, no),
            (Some("s3cret"), false, REMOTE, None, no),
            (Some("s3cret"), false, LOCAL, Some("Bearer s3cret"), ok),
            (Some("s3cret"), false, MAPPED, Some("Bearer s3cret"), ok),
            (Some("s3cret"), false, REMOTE, Some("Bearer s3cret"), ok),
            (Some("s3cret"), false, V6, Some("Bearer wrong"), no),
            // ...unless loopback is exempted; a presented token is still checked.
            (Some("s3cret"), true, LOCAL, None, ok),
            (Some("s3cret"), true, V6, None, ok),
            (Some("s3cret"), true, MAPPED, None, ok),
            (Some("s3cret"), true, REMOTE, None, no),
            (Some("s3cret"), true, V6, Some("Bearer wrong"), no),
            (Some("s3cret"), true, LOCAL, Some("Bearer s3cret"), ok),
        ];
        for (token, exempt, peer, header, want) in cases {
            let h = health();
            let (code, body) =
                call(health_router(h.clone(), auth(token, exempt)), peer, "POST", "/shutdown", header).await;
            assert_eq!(code, want, "token {token:?}, exempt {exempt}, from {peer}, header {header:?}: {body}");
            assert_eq!(h.shutdown.is_cancelled(), want == ok);
            assert!(!body.contains("s3cret"));
        }
    }

    #[tokio::test]
    async fn shutdown_from_elsewhere_needs_the_token() {
        let token = Some(Secret::new("s3cret"));
        for (auth, want) in [
            (None, StatusCode::UNAUTHORIZED),
            (Some("Bearer wrong"), StatusCode::UNAUTHORIZED),
            (Some("s3cret"), StatusCode::UNAUTHORIZED),
            (Some("Bearer s3cret"), StatusCode::ACCEPTED),
        ] {
            let h = health();
            let (code, body) = call(
                health_router(h.clone(), ShutdownAuth { token: token.clone(), loopback_exempt: false }),
                REMOTE,
                "POST",
                "/shutdown",
                auth,
            )
            .await;
            assert_eq!(code, want, "{auth:?}");
            assert_eq!(h.shutdown.is_cancelled(), want == StatusCode::ACCEPTED);
            assert!(!body.contains("s3cret"));
        }
    }

    #[tokio::test]
    async fn shutdown_without_configured_token_is_loopback_only() {
        let h = health();
        let (code, _) =
            call(health_router(h.clone(), auth(None, false)), REMOTE, "POST", "/shutdown", Some("Bearer x")).await;
        assert_eq!(code, StatusCode::UNAUTHORIZED);
        assert!(!h.shutdown.is_cancelled());
        let (code, _) = call(health_router(h.clone(), auth(None, false)), "[::1]:9", "POST", "/shutdown", None).await;
        assert_eq!(code, StatusCode::ACCEPTED);
    }

    #[tokio::test]
    async fn wrong_method_and_unknown_path_are_4xx() {
        let app = health_router(health(), ShutdownAuth::default());
        assert_eq!(call(app.clone(), LOCAL, "GET", "/shutdown", None).await.0, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(call(app, LOCAL, "GET", "/nope", None).await.0, StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn metrics_endpoint_serves_prometheus_text() {
        let m = Arc::new(Metrics::new("v", "hash", "hash-v1"));
        let (code, body) = call(metrics_router(m, health()), LOCAL, "GET", "/metrics", None).await;
        assert_eq!(code, StatusCode::OK);
        assert!(body.contains("worker_memory_usage_bytes{type=\"heapUsed\"}"), "{body}");
        assert!(body.contains("worker_uptime_seconds"));
    }
}
