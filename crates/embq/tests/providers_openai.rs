//! The openai and openai-compatible providers against a local mock: request shape, auth,
//! base64 decoding, caps, every error class of the triage table, timeouts; and the worker's
//! reaction to each (release without an attempt, split, dead-letter one job, park).

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use embq::provider::{Provider, ProviderError, RateSignals, SignalSink};
use embq::queue::DeadSelection;
use serde_json::json;
use support::mock_provider::{MockProvider, Reply};

fn provider(mock: &MockProvider, extra: &[(&str, &str)]) -> Arc<dyn Provider> {
    let dir = tempfile::tempdir().unwrap();
    let cfg = support::openai_config(&dir, &mock.url, extra);
    cfg.provider().unwrap()
}

fn openai_error(status: u16, kind: &str, message: &str, headers: Vec<(&'static str, String)>) -> Reply {
    let body = json!({"error": {"message": message, "type": kind, "code": kind, "param": null}});
    Reply::Status(status, headers, body.to_string())
}

#[tokio::test]
async fn openai_request_carries_model_inputs_auth_base64_and_dimensions() {
    let mock = MockProvider::start(8).await;
    let p = provider(&mock, &[("EMBEDDING_MODEL", "text-embedding-3-small")]);
    let out = p.embed(&["coffee receipt", "airline ticket"]).await.unwrap();
    let hash = embq::provider::HashProvider::new("mock", 8);
    assert_eq!(out.vectors, vec![hash.vector("coffee receipt"), hash.vector("airline ticket")]);
    assert_eq!(out.tokens, Some(5)); // cl100k: "coffee receipt" 2, "airline ticket" 3
    let seen = mock.seen();
    assert_eq!(seen.len(), 1);
    let r = &seen[0];
    assert_eq!(r.path, "/v1/embeddings");
    assert_eq!(r.headers["authorization"], "Bearer sk-test-key");
    assert_eq!(r.body["model"], "text-embedding-3-small");
    assert_eq!(r.body["input"], json!(["coffee receipt", "airline ticket"]));
    assert_eq!(r.body["encoding_format"], "base64");
    assert_eq!(r.body["dimensions"], 8);
    assert_eq!(p.caps().max_inputs, 2048);
    assert_eq!(p.caps().max_tokens_per_request, 300_000);
    assert_eq!(p.caps().max_tokens_per_input, 8192);
}

#[tokio::test]
async fn compatible_servers_get_floats_no_key_and_their_own_caps() {
    let mock = MockProvider::start(8).await;
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("q.db").display());
    let cfg = support::config(&[
        ("DATABASE_URL", &db),
        ("EMBEDDING_PROVIDER", "openai-compatible"),
        ("EMBEDDING_MODEL", "BAAI/bge-small-en-v1.5"),
        ("OPENAI_BASE_URL", &mock.url),
        ("EMBEDDING_DIMENSIONS", "8"),
    ]);
    let p = cfg.provider().unwrap();
    assert_eq!(p.caps().max_inputs, 32);
    p.embed(&["a"]).await.unwrap();
    let r = &mock.seen()[0];
    assert!(r.headers.get("authorization").is_none());
    assert_eq!(r.body["encoding_format"], "float");
    assert!(r.body.get("dimensions").is_none());
    // TEI's flat error body is understood too.
    mock.script([Reply::Status(
        413,
        vec![],
        json!({"error": "batch size 64 > maximum allowed batch size 32", "error_type": "Validation"}).to_string(),
    )]);
    assert!(matches!(p.embed(&["a", "b"]).await, Err(ProviderError::TooLarge(_))));
}

#[tokio::test]
async fn every_error_class_is_triaged() {
    let mock = MockProvider::start(8).await;
    let p = provider(&mock, &[("PROVIDER_TIMEOUT", "300ms")]);
    let secs = |s: u64| Some(Duration::from_secs(s));
    let cases: Vec<(Reply, &str, Option<Option<Duration>>)> = vec![
        (
            openai_error(429, "requests", "Rate limit reached", vec![("retry-after", "3".into())]),
            "rate_limited",
            Some(secs(3)),
        ),
        (
            openai_error(429, "tokens", "Rate limit reached", vec![("retry-after-ms", "1500".into())]),
            "rate_limited",
            Some(Some(Duration::from_millis(1500))),
        ),
        (
            openai_error(
                429,
                "tokens",
                "Rate limit reached",
                vec![
                    ("x-ratelimit-remaining-tokens", "0".into()),
                    ("x-ratelimit-reset-tokens", "6m0s".into()),
                    ("x-ratelimit-remaining-requests", "5".into()),
                    ("x-ratelimit-reset-requests", "1s".into()),
                ],
            ),
            "rate_limited",
            Some(secs(360)),
        ),
        (openai_error(429, "tokens", "Rate limit reached", vec![]), "rate_limited", Some(None)),
        (openai_error(429, "insufficient_quota", "You exceeded your current quota", vec![]), "quota_exhausted", None),
        (openai_error(401, "invalid_api_key", "Incorrect API key provided: sk-test-key", vec![]), "unauthorized", None),
        (
            openai_error(
                400,
                "max_tokens_per_request",
                "Requested 400000 tokens, max 300000 tokens per request",
                vec![],
            ),
            "too_large",
            None,
        ),
        (
            openai_error(400, "invalid_request_error", "This model's maximum context length is 8192 tokens", vec![]),
            "too_large",
            None,
        ),
        (openai_error(404, "model_not_found", "The model does not exist", vec![]), "invalid_request", None),
        (Reply::Status(500, vec![], "internal".into()), "transient", None),
        (Reply::Status(503, vec![], "".into()), "transient", None),
        (Reply::Raw("{not json".into()), "invalid_response", None),
        (Reply::WrongCount, "invalid_response", None),
        (Reply::WrongDimension, "invalid_response", None),
        (Reply::NonFinite, "invalid_response", None),
        (Reply::Hang, "transient", None),
    ];
    for (reply, want, retry_after) in cases {
        let label = format!("{reply:?}");
        mock.script([reply]);
        let err = p.embed(&["one", "two"]).await.expect_err(&label);
        assert_eq!(err.kind(), want, "{label}: {err}");
        if let Some(ra) = retry_after {
            assert_eq!(err, ProviderError::RateLimited { retry_after: ra }, "{label}");
        }
        assert!(!err.to_string().contains("sk-test-key"), "secret leaked: {err}");
    }
    // A single input the model finds too long is that input's fault, not the batch's.
    mock.script([openai_error(
        400,
        "invalid_request_error",
        "This model's maximum context length is 8192 tokens",
        vec![],
    )]);
    assert!(matches!(p.embed(&["one"]).await, Err(ProviderError::InvalidInput { index: 0, .. })));
    // A slow answer within the timeout is fine.
    mock.script([Reply::Slow(Duration::from_millis(50))]);
    assert_eq!(p.embed(&["one"]).await.unwrap().vectors.len(), 1);
}

#[tokio::test]
async fn connection_refused_is_transient() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let dir = tempfile::tempdir().unwrap();
    let p = support::openai_config(&dir, &url, &[]).provider().unwrap();
    let err = p.embed(&["x"]).await.unwrap_err();
    assert_eq!(err.kind(), "transient", "{err}");
}

#[derive(Default)]
struct Recorder(Mutex<Vec<RateSignals>>);

#[async_trait::async_trait]
impl SignalSink for Recorder {
    async fn observe(&self, s: &RateSignals) {
        self.0.lock().unwrap().push(*s);
    }
}

#[tokio::test]
async fn rate_limit_headers_of_every_response_reach_the_sink() {
    let mock = MockProvider::start(8).await;
    mock.enforce(support::mock_provider::Budgets { rpm: 600.0, tpm: 60_000.0, burst_secs: 60.0 });
    let p = provider(&mock, &[]);
    let rec = Arc::new(Recorder::default());
    p.set_signal_sink(rec.clone());
    p.embed(&["hello world"]).await.unwrap();
    let got = rec.0.lock().unwrap().clone();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].remaining_requests, Some(599));
    assert_eq!(got[0].remaining_tokens, Some(59_998));
    assert!(got[0].reset_tokens.is_some());
}

#[tokio::test]
async fn a_429_reaches_the_sink_as_a_throttle_with_its_hint() {
    let mock = MockProvider::start(8).await;
    let p = provider(&mock, &[]);
    let rec = Arc::new(Recorder::default());
    p.set_signal_sink(rec.clone());
    mock.script([
        openai_error(429, "requests", "slow down", vec![("retry-after-ms", "1500".into())]),
        openai_error(429, "requests", "slow down", vec![]),
        openai_error(429, "insufficient_quota", "You exceeded your current quota", vec![]),
    ]);
    for _ in 0..3 {
        assert!(p.embed(&["x"]).await.is_err());
    }
    // A 429 without any hint is still a throttle (the limiter pauses by default); an
    // exhausted quota is not one, and said nothing else.
    let got = rec.0.lock().unwrap().clone();
    assert_eq!(got, vec![RateSignals::throttle(Some(Duration::from_millis(1500))), RateSignals::throttle(None)]);
}

// ---- the worker's reaction to each class ----

#[tokio::test]
async fn a_429_releases_the_batch_without_spending_an_attempt() {
    let mock = MockProvider::start(8).await;
    mock.script([openai_error(429, "requests", "slow down", vec![("retry-after-ms", "50".into())])]);
    let dir = tempfile::tempdir().unwrap();
    let cfg = support::openai_config(&dir, &mock.url, &[("MAX_ATTEMPTS", "1"), ("BATCH_SIZE", "10")]);
    let q = support::queue_with(&cfg, &support::jobs(5, |i| format!("text {i}"))).await;
    let h = support::harness(&cfg, q.clone(), None);
    let metrics = h.metrics.clone();
    let summary = support::drain(h, Duration::from_secs(20)).await;
    // MAX_ATTEMPTS=1: had the 429 spent the attempt, every job would be dead now.
    assert_eq!((summary.processed, summary.dead, summary.failed), (5, 0, 0));
    assert_eq!(mock.count_status(429), 1);
    assert_eq!(support::metric(&metrics, "embedding_jobs_released_total"), 5.0);
    assert_eq!(support::metric(&metrics, "embedding_provider_rate_limited_total{provider=\"openai\"}"), 1.0);
}

#[tokio::test]
async fn a_draining_worker_waits_out_a_429s_retry_after() {
    // The retry-after is ten poll intervals: the released jobs are not due when the drain
    // next finds the queue empty, yet they were never attempted, so the drain must wait.
    let mock = MockProvider::start(8).await;
    mock.script([openai_error(429, "requests", "slow down", vec![("retry-after-ms", "500".into())])]);
    let dir = tempfile::tempdir().unwrap();
    let cfg = support::openai_config(&dir, &mock.url, &[("BATCH_SIZE", "10")]);
    let q = support::queue_with(&cfg, &support::jobs(5, |i| format!("text {i}"))).await;
    let summary = support::drain(support::harness(&cfg, q.clone(), None), Duration::from_secs(20)).await;
    assert_eq!((summary.processed, summary.dead, summary.failed), (5, 0, 0));
    assert_eq!(mock.count_status(429), 1);
    let stats = q.stats().await.unwrap();
    assert_eq!(stats.ready + stats.scheduled + stats.running, 0, "{stats:?}");
}

#[tokio::test]
async fn a_too_large_request_is_split_until_it_fits() {
    let mock = MockProvider::start(8).await;
    // The server refuses more than 3 inputs per request, as TEI does past its batch size.
    mock.rule(|inputs| {
        if inputs.len() > 3 {
            Reply::Status(413, vec![], json!({"error": "batch too large", "error_type": "Validation"}).to_string())
        } else {
            Reply::Embed
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let cfg = support::openai_config(&dir, &mock.url, &[("BATCH_SIZE", "8"), ("MAX_ATTEMPTS", "1")]);
    let q = support::queue_with(&cfg, &support::jobs(8, |i| format!("text {i}"))).await;
    let summary = support::drain(support::harness(&cfg, q, None), Duration::from_secs(20)).await;
    assert_eq!((summary.processed, summary.dead), (8, 0));
    let sizes: Vec<usize> = mock.seen().iter().map(|s| s.inputs.len()).collect();
    assert_eq!(sizes, vec![8, 4, 2, 2, 4, 2, 2]);
}

#[tokio::test]
async fn one_bad_input_dead_letters_only_its_own_job() {
    let mock = MockProvider::start(8).await;
    mock.rule(|inputs| {
        if inputs.iter().any(|t| t.contains("poison")) {
            let body = json!({"error": {"message": "This model's maximum context length is 8192 tokens",
                "type": "invalid_request_error", "code": null}});
            Reply::Status(400, vec![], body.to_string())
        } else {
            Reply::Embed
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let cfg = support::openai_config(&dir, &mock.url, &[("BATCH_SIZE", "6")]);
    let q = support::queue_with(&cfg, &support::jobs(6, |i| if i == 4 { "poison".into() } else { format!("ok {i}") }))
        .await;
    let summary = support::drain(support::harness(&cfg, q.clone(), None), Duration::from_secs(20)).await;
    assert_eq!((summary.processed, summary.dead), (5, 1));
    let dead = q.dead_jobs(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].source_id, "4");
    assert!(dead[0].last_error.as_deref().unwrap_or_default().contains("maximum context length"));
    q.purge_dead(&DeadSelection::All).await.unwrap();
}

#[tokio::test]
async fn exhausted_quota_parks_the_provider_and_spends_no_attempt() {
    let mock = MockProvider::start(8).await;
    mock.rule(|_| {
        let body = json!({"error": {"message": "You exceeded your current quota", "type": "insufficient_quota",
            "code": "insufficient_quota"}});
        Reply::Status(429, vec![], body.to_string())
    });
    let dir = tempfile::tempdir().unwrap();
    let cfg = support::openai_config(&dir, &mock.url, &[("MAX_ATTEMPTS", "1")]);
    let q = support::queue_with(&cfg, &support::jobs(3, |i| format!("text {i}"))).await;
    let h = support::harness(&cfg, q.clone(), None);
    let (health, metrics) = (h.health.clone(), h.metrics.clone());
    let run = tokio::spawn(h.worker.run());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !health.not_ready_reasons().contains(&"provider parked: quota exhausted") {
        assert!(std::time::Instant::now() < deadline, "provider never parked");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(support::metric(&metrics, "embedding_provider_parked"), 1.0);
    health.shutdown.cancel();
    let summary = tokio::time::timeout(Duration::from_secs(10), run).await.unwrap().unwrap().unwrap();
    assert_eq!((summary.dead, summary.failed), (0, 0));
    // The jobs went back unspent: with MAX_ATTEMPTS=1 they would otherwise be dead.
    let stats = q.stats().await.unwrap();
    assert_eq!(stats.ready + stats.scheduled, 3, "{stats:?}");
    assert_eq!(mock.seen().len(), 1, "a parked provider gets no further calls");
}

#[tokio::test]
async fn overlong_inputs_are_truncated_or_rejected() {
    let mock = MockProvider::start(8).await;
    let dir = tempfile::tempdir().unwrap();
    let long = "receipt ".repeat(50); // 50 tokens
    let cfg = support::openai_config(&dir, &mock.url, &[("OPENAI_MAX_TOKENS_PER_INPUT", "10")]);
    let q = support::queue_with(&cfg, &support::jobs(2, |i| if i == 0 { long.clone() } else { "short".into() })).await;
    let h = support::harness(&cfg, q, None);
    let metrics = h.metrics.clone();
    let summary = support::drain(h, Duration::from_secs(20)).await;
    assert_eq!((summary.processed, summary.dead), (2, 0));
    let sent: Vec<String> = mock.seen().iter().flat_map(|s| s.inputs.clone()).collect();
    assert!(sent.iter().any(|t| t.len() < long.len() && long.starts_with(t.as_str())), "{sent:?}");
    assert_eq!(support::metric(&metrics, "embedding_overlong_inputs_total{kind=\"truncated\"}"), 1.0);

    let dir = tempfile::tempdir().unwrap();
    let cfg =
        support::openai_config(&dir, &mock.url, &[("OPENAI_MAX_TOKENS_PER_INPUT", "10"), ("OVERLONG_INPUT", "reject")]);
    let q = support::queue_with(&cfg, &support::jobs(2, |i| if i == 0 { long.clone() } else { "short".into() })).await;
    let summary = support::drain(support::harness(&cfg, q.clone(), None), Duration::from_secs(20)).await;
    assert_eq!((summary.processed, summary.dead), (1, 1));
    let dead = q.dead_jobs(10).await.unwrap();
    assert!(dead[0].last_error.as_deref().unwrap_or_default().contains("OVERLONG_INPUT=reject"), "{dead:?}");
}

#[tokio::test]
async fn requests_respect_the_token_cap_per_request() {
    let mock = MockProvider::start(8).await;
    let dir = tempfile::tempdir().unwrap();
    // Each text is 5 tokens; at most 12 tokens per request means two texts per request.
    let cfg = support::openai_config(
        &dir,
        &mock.url,
        &[("OPENAI_MAX_TOKENS_PER_REQUEST", "12"), ("BATCH_SIZE", "10"), ("MAX_CONCURRENT_JOBS", "1")],
    );
    let q = support::queue_with(&cfg, &support::jobs(10, |i| format!("grocery store receipt number {i}"))).await;
    let summary = support::drain(support::harness(&cfg, q, None), Duration::from_secs(20)).await;
    assert_eq!(summary.processed, 10);
    for s in mock.seen() {
        assert!(s.tokens <= 12 && !s.inputs.is_empty(), "{} tokens in {:?}", s.tokens, s.inputs);
    }
}

#[tokio::test]
async fn batch_optimization_grows_batches_toward_the_cap_while_there_is_a_backlog() {
    let mock = MockProvider::start(8).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = support::openai_config(
        &dir,
        &mock.url,
        &[
            ("BATCH_SIZE", "2"),
            ("MAX_CONCURRENT_JOBS", "1"),
            ("OPENAI_MAX_INPUTS_PER_REQUEST", "16"),
            ("ENABLE_BATCH_OPTIMIZATION", "true"),
        ],
    );
    let q = support::queue_with(&cfg, &support::jobs(100, |i| format!("text {i}"))).await;
    let summary = support::drain(support::harness(&cfg, q, None), Duration::from_secs(20)).await;
    assert_eq!(summary.processed, 100);
    let sizes: Vec<usize> = mock.seen().iter().map(|s| s.inputs.len()).collect();
    assert_eq!(sizes.iter().max(), Some(&16), "batches grew to the cap: {sizes:?}");
    assert!(sizes.iter().all(|n| *n <= 16), "{sizes:?}");
}

/// 2xx bodies with the request's key (or its `Authorization` value) in a wrongly-typed field.
fn bodies_echoing(secret: &str) -> Vec<String> {
    vec![
        json!({"data": [{"index": format!("Bearer {secret}"), "embedding": vec![0.5f32; 8]}]}).to_string(),
        json!({"data": [{"index": 0, "embedding": vec![0.5f32; 8]}], "usage": secret}).to_string(),
        json!({"data": secret}).to_string(),
    ]
}

async fn key_in_a_2xx_body_leaves_no_trace(kind: &str) {
    let mock = MockProvider::start(8).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = support::openai_config(&dir, &mock.url, &[("EMBEDDING_PROVIDER", kind), ("MAX_ATTEMPTS", "1")]);
    let p = cfg.provider().unwrap();
    for body in bodies_echoing("sk-test-key") {
        mock.script([Reply::Raw(body.clone())]);
        let err = p.embed(&["a"]).await.unwrap_err();
        assert!(matches!(err, ProviderError::InvalidResponse(_)), "{kind} {body}: {err:?}");
        let shown = format!("{err} {err:?}");
        assert!(!shown.contains("test-key") && shown.contains("[redacted]"), "{kind} {body}: {shown}");
    }
    let echo = bodies_echoing("sk-test-key")[0].clone();
    mock.rule(move |_| Reply::Raw(echo.clone()));
    let errors = support::dead_letter_errors(&cfg, 2).await;
    for e in errors {
        assert!(e.contains("invalid response") && !e.contains("test-key"), "{kind}: {e}");
    }
    let seen = mock.seen();
    assert!(seen.iter().all(|s| s.headers["authorization"] == "Bearer sk-test-key"), "the key was sent");
}

#[tokio::test]
async fn openai_key_echoed_in_a_2xx_body_never_reaches_an_error_or_the_dead_letters() {
    key_in_a_2xx_body_leaves_no_trace("openai").await;
}

#[tokio::test]
async fn compatible_key_echoed_in_a_2xx_body_never_reaches_an_error_or_the_dead_letters() {
    key_in_a_2xx_body_leaves_no_trace("openai-compatible").await;
}

#[tokio::test]
async fn a_response_longer_than_the_request_can_return_is_dropped_as_it_arrives() {
    let mock = MockProvider::start(8).await;
    let p = provider(&mock, &[]);
    // Chunked, no declared length: counted as it arrives, dropped past the cap (one input at 8
    // dimensions may return ~256 KiB), never read whole.
    mock.script([Reply::Streamed(100 << 20)]);
    let err = p.embed(&["one"]).await.unwrap_err();
    assert!(matches!(&err, ProviderError::InvalidResponse(m) if m.contains("the response is longer than")), "{err:?}");
    // A declared length beyond the cap is refused before reading.
    mock.script([Reply::Raw(" ".repeat(2 << 20))]);
    let err = p.embed(&["one"]).await.unwrap_err();
    assert!(matches!(&err, ProviderError::InvalidResponse(m) if m.contains("the response declares")), "{err:?}");
    // A normal answer still fits.
    assert_eq!(p.embed(&["one", "two"]).await.unwrap().vectors.len(), 2);
}
