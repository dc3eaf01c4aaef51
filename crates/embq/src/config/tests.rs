//! The settings, valid and invalid, and what each becomes.

use super::*;

fn raw(pairs: &[(&str, &str)]) -> RawConfig {
    let mut r = RawConfig::default();
    for (k, v) in pairs {
        let v = Some(v.to_string());
        match *k {
            "BATCH_SIZE" => r.batch_size = v,
            "MAX_CONCURRENT_JOBS" => r.max_concurrent_jobs = v,
            "DATABASE_URL" => r.database_url = v,
            "DATABASE_LISTEN_URL" => r.database_listen_url = v,
            "OPENAI_BASE_URL" => r.openai_base_url = v,
            "GEMINI_BASE_URL" => r.gemini_base_url = v,
            "OPENAI_API_KEY" => r.openai_api_key = v,
            "EMBEDDING_PROVIDER" => r.embedding_provider = v,
            "DRAIN_TIMEOUT" => r.drain_timeout = v,
            "QUEUE_POLL_INTERVAL" => r.queue_poll_interval = v,
            "BACKOFF_MULTIPLIER" => r.backoff_multiplier = v,
            "ENABLE_QUEUE_PROCESSING" => r.enable_queue_processing = v,
            "SHUTDOWN_TOKEN" => r.shutdown_token = v,
            _ => panic!("test helper lacks {k}"),
        }
    }
    r
}

#[test]
fn defaults_are_the_seeds_values() {
    let c = RawConfig::default().validate().unwrap();
    assert_eq!(c.batch_size.get(), 5);
    assert_eq!(c.max_concurrent_jobs.get(), 3);
    assert_eq!(c.poll_interval, Duration::from_secs(5));
    assert_eq!(c.heartbeat_interval, Duration::from_secs(30));
    assert_eq!(c.max_requests_per_minute.get(), 60);
    assert_eq!(c.max_tokens_per_minute.get(), 100_000);
    assert_eq!(c.retry.max_attempts.get(), 5);
    assert_eq!(c.database_url.expose(), "sqlite://embq.db");
    assert_eq!(c.health_port, 8080);
    assert_eq!(c.metrics_port, 9091);
    assert_eq!(c.drain_timeout, Duration::from_secs(25));
    assert_eq!(c.provider, ProviderKind::Hash);
    assert_eq!(c.dimensions, 384);
}

#[test]
fn the_pool_is_sized_by_what_a_worker_needs_not_by_its_concurrency() {
    let pg = "postgres://u@127.0.0.1:5432/db";
    let pool = |jobs: &str| raw(&[("DATABASE_URL", pg), ("MAX_CONCURRENT_JOBS", jobs)]).validate().unwrap();
    assert_eq!(pool("1").db_max_connections, 4);
    assert_eq!(pool("3").db_max_connections, 6);
    // 32 concurrent batches no longer ask for 35 connections each.
    let c = pool("32");
    assert_eq!(c.db_max_connections, 6);
    assert_eq!(c.connections(), Connections { pool: 6, listen: 1, fleet_budget: 0, total: 7 });
    let fleet = raw(&[("DATABASE_URL", pg), ("EMBEDDING_PROVIDER", "openai"), ("OPENAI_API_KEY", "sk-x")]);
    let mut fleet = fleet;
    fleet.rate_limit_scope = Some("fleet".into());
    assert_eq!(fleet.validate().unwrap().connections().total, 9);
    // A transaction pooler gets no LISTEN session; SQLite counts its pool only.
    let pooled = raw(&[("DATABASE_URL", "postgres://u@127.0.0.1:6543/db")]).validate().unwrap();
    assert_eq!(pooled.connections().listen, 0);
    assert_eq!(RawConfig::default().validate().unwrap().connections().listen, 0);
}

#[test]
fn every_problem_is_reported_with_its_variable() {
    let err = raw(&[("BATCH_SIZE", "ten"), ("MAX_CONCURRENT_JOBS", "0"), ("DATABASE_URL", "mysql://x")])
        .validate()
        .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("BATCH_SIZE: must be a whole number"), "{text}");
    assert!(text.contains("\"ten\""), "{text}");
    assert!(text.contains("MAX_CONCURRENT_JOBS"), "{text}");
    assert!(text.contains("DATABASE_URL: must start with"), "{text}");
    assert_eq!(err.0.len(), 3);
}

#[test]
fn durations_need_their_unit() {
    for (input, ms) in [("250ms", 250), ("2s", 2000), ("1.5s", 1500), ("1m", 60_000), ("1h", 3_600_000)] {
        assert_eq!(parse_duration(input).unwrap(), Duration::from_millis(ms), "{input}");
    }
    for bad in ["", "abc", "-1", "1e400", "100000000000h"] {
        assert!(parse_duration(bad).is_err(), "{bad}");
    }
    // A bare number meant milliseconds to the worker and seconds to the controller.
    let err = raw(&[("DRAIN_TIMEOUT", "30"), ("QUEUE_POLL_INTERVAL", "5000")]).validate().unwrap_err().to_string();
    assert!(err.contains("DRAIN_TIMEOUT: \"30\" has no unit: write a number with its unit, such as 500ms"), "{err}");
    assert!(err.contains("QUEUE_POLL_INTERVAL: \"5000\" has no unit"), "{err}");
}

#[test]
fn secrets_never_print() {
    let c = raw(&[
        ("EMBEDDING_PROVIDER", "openai"),
        ("OPENAI_API_KEY", "sk-very-secret"),
        ("SHUTDOWN_TOKEN", "tok-very-secret"),
        ("DATABASE_URL", "postgres://u:pw-very-secret@127.0.0.1:5432/db?password=q-very-secret"),
        ("DATABASE_LISTEN_URL", "postgres://u@127.0.0.1:5432/db?sslpassword=ssl-very-secret&sslkey=/k.pem"),
        ("OPENAI_BASE_URL", "https://u:base-very-secret@127.0.0.1:8443"),
        ("GEMINI_BASE_URL", "https://u:gem-very-secret@127.0.0.1:8444"),
    ])
    .validate()
    .unwrap();
    let shown = format!("{c:?} {}", serde_json::to_string(&c).unwrap());
    assert!(!shown.contains("very-secret"), "{shown}");
    assert!(shown.contains("[redacted]"));
    assert!(shown.contains("sslkey=/k.pem"), "a key file path is no secret: {shown}");
}

#[test]
fn bad_secret_values_are_not_echoed() {
    let err = raw(&[("DATABASE_URL", "postgres://u:pw-very-secret@[bad")]).validate().unwrap_err();
    assert!(!err.to_string().contains("very-secret"), "{err}");
}

#[test]
fn provider_requirements_are_checked() {
    let err = raw(&[("EMBEDDING_PROVIDER", "openai")]).validate().unwrap_err();
    assert!(err.to_string().contains("OPENAI_API_KEY: required"), "{err}");
    let err = raw(&[("EMBEDDING_PROVIDER", "magic")]).validate().unwrap_err();
    assert!(err.to_string().contains("EMBEDDING_PROVIDER: must be one of"), "{err}");
}

#[test]
fn pooler_port_selects_transaction_mode() {
    let c = raw(&[("DATABASE_URL", "postgres://u@127.0.0.1:6543/postgres")]).validate().unwrap();
    assert_eq!(c.pool_mode, PoolMode::Transaction);
    let c = raw(&[("DATABASE_URL", "postgres://u@127.0.0.1:5432/postgres")]).validate().unwrap();
    assert_eq!(c.pool_mode, PoolMode::Session);
}

#[test]
fn provider_settings_have_defaults_and_name_their_variable() {
    let c = RawConfig::default().validate().unwrap();
    assert_eq!(c.provider_timeout, Duration::from_secs(60));
    assert_eq!(c.overlong_input, crate::tokens::OverlongInput::Truncate);
    assert_eq!(c.rate_limit_scope, RateLimitScope::Worker, "SQLite budgets per worker");
    assert_eq!(c.request_caps.max_inputs, 2048);
    assert_eq!(c.gemini_task_type, "RETRIEVAL_DOCUMENT");
    let pg = RawConfig { database_url: Some("postgres://u@127.0.0.1/db".into()), ..Default::default() };
    assert_eq!(pg.validate().unwrap().rate_limit_scope, RateLimitScope::Fleet, "PostgreSQL shares the budget");
    let tei = RawConfig {
        embedding_provider: Some("openai-compatible".into()),
        openai_base_url: Some("http://127.0.0.1:8081".into()),
        ..Default::default()
    };
    let caps = tei.validate().unwrap().request_caps;
    assert_eq!((caps.max_inputs, caps.max_tokens_per_request, caps.max_tokens_per_input), (32, 16_384, 512));

    let bad = RawConfig {
        overlong_input: Some("drop".into()),
        rate_limit_scope: Some("fleet".into()),
        gemini_task_type: Some("GUESSING".into()),
        openai_max_inputs_per_request: Some("0".into()),
        provider_timeout: Some("0".into()),
        max_provider_pause: Some("86401s".into()),
        ..Default::default()
    };
    let text = bad.validate().unwrap_err().to_string();
    for var in [
        "OVERLONG_INPUT: must be truncate or reject",
        "RATE_LIMIT_SCOPE: fleet needs a PostgreSQL",
        "GEMINI_TASK_TYPE: must be one of",
        "OPENAI_MAX_INPUTS_PER_REQUEST",
        "PROVIDER_TIMEOUT",
        "MAX_PROVIDER_PAUSE: must be between 1s and 24h",
    ] {
        assert!(text.contains(var), "{var} missing in {text}");
    }
}

#[test]
fn lease_is_one_and_a_half_heartbeats() {
    let c = RawConfig::default().validate().unwrap();
    assert_eq!(c.lease_duration(), Duration::from_secs(45));
    assert_eq!(c.rescue_interval(), Duration::from_secs(15));
}
