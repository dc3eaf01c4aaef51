//! The gemini provider against a local mock: request shape, key header, caps, RetryInfo
//! delays and the per-day quota.

mod support;

use std::sync::Arc;
use std::time::Duration;

use embq::provider::{Provider, ProviderError, RateSignals, SignalSink};
use serde_json::json;
use support::mock_provider::{MockProvider, Reply};

fn gemini(mock: &MockProvider, extra: &[(&str, &str)]) -> Arc<dyn Provider> {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("q.db").display());
    let mut pairs = vec![
        ("DATABASE_URL", db.as_str()),
        ("EMBEDDING_PROVIDER", "gemini"),
        ("GEMINI_API_KEY", "g-test-key"),
        ("GEMINI_BASE_URL", mock.url.as_str()),
        ("EMBEDDING_DIMENSIONS", "8"),
        ("PROVIDER_TIMEOUT", "300ms"),
    ];
    pairs.extend_from_slice(extra);
    support::config(&pairs).provider().unwrap()
}

fn resource_exhausted(quota_id: &str, delay: &str) -> Reply {
    let body = json!({"error": {"code": 429, "status": "RESOURCE_EXHAUSTED",
        "message": "Quota exceeded for metric: generativelanguage.googleapis.com/embed_content_requests",
        "details": [
            {"@type": "type.googleapis.com/google.rpc.QuotaFailure",
             "violations": [{"quotaMetric": "generativelanguage.googleapis.com/embed_content_requests",
                             "quotaId": quota_id}]},
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": delay}]}});
    Reply::Status(429, vec![], body.to_string())
}

#[derive(Default)]
struct Recorder(std::sync::Mutex<Vec<RateSignals>>);

#[async_trait::async_trait]
impl SignalSink for Recorder {
    async fn observe(&self, s: &RateSignals) {
        self.0.lock().unwrap().push(*s);
    }
}

#[tokio::test]
async fn googles_retry_delay_reaches_the_sink_as_a_throttle() {
    let mock = MockProvider::start(8).await;
    let p = gemini(&mock, &[]);
    let rec = Arc::new(Recorder::default());
    p.set_signal_sink(rec.clone());
    mock.script([resource_exhausted("EmbedContentRequestsPerMinutePerProjectPerModel", "13s")]);
    assert!(p.embed(&["x"]).await.is_err());
    // The delay sits in the body, not the headers.
    let got = rec.0.lock().unwrap().clone();
    assert_eq!(got, vec![RateSignals::throttle(Some(Duration::from_secs(13)))]);
}

#[tokio::test]
async fn batch_embed_request_carries_key_header_task_type_and_dimensions() {
    let mock = MockProvider::start(8).await;
    let p = gemini(&mock, &[("GEMINI_TASK_TYPE", "semantic_similarity")]);
    assert_eq!(p.caps().max_inputs, 100);
    assert_eq!(p.caps().max_tokens_per_input, 2048);
    let out = p.embed(&["coffee receipt", "airline ticket"]).await.unwrap();
    assert_eq!(out.vectors.len(), 2);
    let norm: f32 = out.vectors[0].iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() < 1e-5);
    let seen = &mock.seen()[0];
    assert_eq!(seen.path, "/v1beta/models/gemini-embedding-001:batchEmbedContents");
    assert_eq!(seen.headers["x-goog-api-key"], "g-test-key");
    assert!(!seen.path.contains("key="), "the key stays out of the URL");
    let r = &seen.body["requests"][1];
    assert_eq!(r["model"], "models/gemini-embedding-001");
    assert_eq!(r["content"]["parts"][0]["text"], "airline ticket");
    assert_eq!(r["taskType"], "SEMANTIC_SIMILARITY");
    assert_eq!(r["outputDimensionality"], 8);
}

#[tokio::test]
async fn errors_are_triaged_with_google_retry_info() {
    let mock = MockProvider::start(8).await;
    let p = gemini(&mock, &[]);
    let cases: Vec<(Reply, ProviderError)> = vec![
        (
            resource_exhausted("EmbedContentRequestsPerMinutePerProjectPerModel", "13s"),
            ProviderError::RateLimited { retry_after: Some(Duration::from_secs(13)) },
        ),
        (
            resource_exhausted("EmbedContentRequestsPerDayPerProjectPerModel-FreeTier", "3600s"),
            ProviderError::QuotaExhausted(String::new()),
        ),
    ];
    for (reply, want) in cases {
        mock.script([reply]);
        let got = p.embed(&["x"]).await.unwrap_err();
        assert_eq!(got.kind(), want.kind(), "{got}");
        if matches!(want, ProviderError::RateLimited { .. }) {
            assert_eq!(got, want);
        }
    }
    let kinds: Vec<(Reply, &str)> = vec![
        (
            Reply::Status(
                400,
                vec![],
                json!({"error": {"code": 400, "status": "INVALID_ARGUMENT",
            "message": "Invalid value at 'requests[0].task_type'"}})
                .to_string(),
            ),
            "invalid_request",
        ),
        (
            Reply::Status(
                403,
                vec![],
                json!({"error": {"code": 403, "status": "PERMISSION_DENIED",
            "message": "API key not valid"}})
                .to_string(),
            ),
            "unauthorized",
        ),
        (
            Reply::Status(
                503,
                vec![],
                json!({"error": {"code": 503, "status": "UNAVAILABLE",
            "message": "The model is overloaded"}})
                .to_string(),
            ),
            "transient",
        ),
        (Reply::WrongCount, "invalid_response"),
        (Reply::WrongDimension, "invalid_response"),
        (Reply::Raw("[]".into()), "invalid_response"),
        (Reply::Hang, "transient"),
    ];
    for (reply, want) in kinds {
        let label = format!("{reply:?}");
        mock.script([reply]);
        let got = p.embed(&["x", "y"]).await.unwrap_err();
        assert_eq!(got.kind(), want, "{label}: {got}");
        assert!(!got.to_string().contains("g-test-key"));
    }
}

#[tokio::test]
async fn a_worker_never_sends_more_than_100_texts_per_call() {
    let mock = MockProvider::start(8).await;
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("q.db").display());
    let cfg = support::config(&[
        ("DATABASE_URL", &db),
        ("EMBEDDING_PROVIDER", "gemini"),
        ("GEMINI_API_KEY", "g-test-key"),
        ("GEMINI_BASE_URL", &mock.url),
        ("EMBEDDING_DIMENSIONS", "8"),
        ("BATCH_SIZE", "500"),
        ("MAX_REQUESTS_PER_MINUTE", "60000"),
        ("MAX_TOKENS_PER_MINUTE", "10000000"),
        ("QUEUE_POLL_INTERVAL", "50ms"),
    ]);
    let q = support::queue_with(&cfg, &support::jobs(250, |i| format!("text {i}"))).await;
    let summary = support::drain(support::harness(&cfg, q, None), Duration::from_secs(30)).await;
    assert_eq!(summary.processed, 250);
    assert!(mock.seen().iter().all(|s| s.inputs.len() <= 100), "a call carried more than 100 texts");
}

#[tokio::test]
async fn key_echoed_in_a_2xx_body_never_reaches_an_error_or_the_dead_letters() {
    let mock = MockProvider::start(8).await;
    let bodies = [
        json!({"embeddings": [{"values": "g-test-key"}]}).to_string(),
        json!({"embeddings": "g-test-key"}).to_string(),
        json!({"embeddings": [{"values": [0.5, "Bearer g-test-key"]}]}).to_string(),
    ];
    let p = gemini(&mock, &[]);
    for body in &bodies {
        mock.script([Reply::Raw(body.clone())]);
        let err = p.embed(&["a"]).await.unwrap_err();
        assert!(matches!(err, ProviderError::InvalidResponse(_)), "{body}: {err:?}");
        let shown = format!("{err} {err:?}");
        assert!(!shown.contains("test-key"), "{body}: {shown}");
    }
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("q.db").display());
    let cfg = support::config(&[
        ("DATABASE_URL", db.as_str()),
        ("EMBEDDING_PROVIDER", "gemini"),
        ("GEMINI_API_KEY", "g-test-key"),
        ("GEMINI_BASE_URL", mock.url.as_str()),
        ("EMBEDDING_DIMENSIONS", "8"),
        ("MAX_ATTEMPTS", "1"),
        ("QUEUE_POLL_INTERVAL", "50ms"),
        ("MAX_REQUESTS_PER_MINUTE", "60000"),
        ("MAX_TOKENS_PER_MINUTE", "10000000"),
    ]);
    let echo = bodies[0].clone();
    mock.rule(move |_| Reply::Raw(echo.clone()));
    for e in support::dead_letter_errors(&cfg, 2).await {
        assert!(e.contains("invalid response") && !e.contains("test-key"), "{e}");
    }
    assert!(mock.seen().iter().all(|s| s.headers["x-goog-api-key"] == "g-test-key"), "the key was sent");
}

#[tokio::test]
async fn an_oversized_gemini_response_is_dropped() {
    let mock = MockProvider::start(8).await;
    let p = gemini(&mock, &[]);
    mock.script([Reply::Streamed(100 << 20)]);
    let err = p.embed(&["one"]).await.unwrap_err();
    assert!(matches!(&err, ProviderError::InvalidResponse(m) if m.contains("longer than")), "{err:?}");
}
