//! The controller's own /health and /metrics (port 8081 by default).

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use crate::controller::Liveness;
use crate::metrics::Metrics;

#[derive(Clone)]
struct AppState {
    metrics: Arc<Metrics>,
    liveness: Arc<Liveness>,
}

/// The router, testable without a socket.
pub fn app(metrics: Arc<Metrics>, liveness: Arc<Liveness>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics_text))
        .with_state(AppState { metrics, liveness })
}

/// 200 while ticks succeed; 503 once no tick has succeeded for the allowed silence
/// (a hung loop, or ticks that keep failing). The body says when the last one succeeded.
async fn health(State(s): State<AppState>) -> impl IntoResponse {
    let leader = s.metrics.leader.get() == 1;
    let last = s.liveness.since_success().as_secs();
    if s.liveness.alive() {
        (StatusCode::OK, Json(json!({ "status": "ok", "leader": leader, "last_success_seconds_ago": last })))
    } else {
        let body = json!({ "status": "failing", "leader": leader, "last_success_seconds_ago": last });
        (StatusCode::SERVICE_UNAVAILABLE, Json(body))
    }
}

async fn metrics_text(State(s): State<AppState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], s.metrics.encode())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    use super::*;

    async fn get(app: Router, path: &str) -> (StatusCode, String) {
        let resp = app.oneshot(Request::get(path).body(Body::empty()).expect("request")).await.expect("infallible");
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20).await.expect("body");
        (status, String::from_utf8_lossy(&bytes).into_owned())
    }

    #[tokio::test]
    async fn health_turns_503_when_the_loop_stalls() {
        let metrics = Arc::new(Metrics::new());
        let live = Arc::new(Liveness::new(Duration::from_secs(60)));
        let (status, body) = get(app(metrics.clone(), live.clone()), "/health").await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.contains(r#""status":"ok""#), "{body}");

        tokio::time::pause();
        let stalled = Arc::new(Liveness::new(Duration::from_secs(60)));
        tokio::time::advance(Duration::from_secs(61)).await;
        let (status, body) = get(app(metrics.clone(), stalled.clone()), "/health").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert!(body.contains(r#""last_success_seconds_ago":61"#), "{body}");
        stalled.beat();
        assert_eq!(get(app(metrics, stalled), "/health").await.0, StatusCode::OK);
    }

    #[tokio::test]
    async fn metrics_are_served_as_openmetrics() {
        let metrics = Arc::new(Metrics::new());
        metrics.leader.set(1);
        let (status, body) = get(app(metrics, Arc::new(Liveness::new(Duration::from_secs(60)))), "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.contains("restart_controller_leader 1"), "{body}");
        assert!(body.ends_with("# EOF\n"), "{body}");
    }
}
