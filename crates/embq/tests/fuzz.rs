//! Property-based fuzzing of everything that parses outside input: settings, JSONL job
//! files and vector bytes. Zero panics; proptest keeps any failing input in
//! `tests/fuzz.proptest-regressions` and replays it first on every run.

use embq::config::{parse_duration, RawConfig};
use proptest::prelude::*;

fn any_setting() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        Just(None),
        ".{0,12}".prop_map(Some),
        "[0-9]{1,25}(ms|s|m|h)?".prop_map(Some),
        "-?[0-9]{0,6}\\.?[0-9]{0,6}(e[0-9]{1,3})?".prop_map(Some),
        prop_oneof![Just("postgres://"), Just("sqlite:"), Just("postgres://u:p@[::1]:6543/db"), Just("http://x")]
            .prop_map(|s| Some(s.to_string())),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn settings_never_panic_and_every_error_names_a_variable(
        a in any_setting(), b in any_setting(), c in any_setting(), d in any_setting(),
        e in any_setting(), f in any_setting(), g in any_setting(), h in any_setting(),
    ) {
        let raw = RawConfig {
            database_url: a, batch_size: b, queue_poll_interval: c, heartbeat_interval: d,
            backoff_multiplier: e, memory_limit_mb: f, cpu_limit_cores: g, drain_timeout: h.clone(),
            retry_max_delay: h, ..RawConfig::default()
        };
        if let Err(err) = raw.validate() {
            for problem in &err.0 {
                let var = problem.split(':').next().unwrap_or("");
                prop_assert!(!var.is_empty() && var.chars().all(|c| c.is_ascii_uppercase() || c == '_'), "{problem}");
            }
        }
    }

    #[test]
    fn every_numeric_setting_is_range_checked_before_use(
        v in proptest::collection::vec(prop_oneof![any_setting(), "[0-9]{10,25}".prop_map(Some)], 21),
    ) {
        let mut v = v.into_iter();
        let mut next = || v.next().flatten();
        let raw = RawConfig {
            db_max_connections: next(), queue_poll_interval: next(), max_concurrent_jobs: next(),
            batch_size: next(), heartbeat_interval: next(), max_requests_per_minute: next(),
            max_tokens_per_minute: next(), backoff_multiplier: next(), retry_base_delay: next(),
            retry_max_delay: next(), max_attempts: next(), memory_limit_mb: next(), cpu_limit_cores: next(),
            embedding_dimensions: next(), health_port: next(), metrics_port: next(), drain_timeout: next(),
            provider_timeout: next(), openai_max_inputs_per_request: next(),
            openai_max_tokens_per_request: next(), openai_max_tokens_per_input: next(),
            ..RawConfig::default()
        };
        if let Ok(cfg) = raw.validate() {
            // What the worker builds from them at start must not panic or overflow.
            let _ = tokio::sync::Semaphore::new(cfg.max_concurrent_jobs.get());
            prop_assert!(cfg.memory_limit_bytes >= 32 << 20);
            prop_assert!(cfg.batch_size.get() <= 100_000 && cfg.max_concurrent_jobs.get() <= 1_024);
            prop_assert!(cfg.lease_duration() > std::time::Duration::ZERO);
        }
    }

    #[test]
    fn durations_never_panic(s in ".{0,30}") {
        let _ = parse_duration(&s);
    }

    #[test]
    fn jsonl_never_panics_and_accounts_for_every_line(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let parsed = embq::cli::parse_jsonl(&bytes);
        let non_blank = bytes.split(|b| *b == b'\n').filter(|l| !l.iter().all(u8::is_ascii_whitespace)).count();
        prop_assert_eq!(parsed.jobs.len() + parsed.errors.len(), non_blank);
    }

    #[test]
    fn jsonl_shaped_input_never_panics(
        fields in proptest::collection::vec(("[a-z_]{1,12}", prop_oneof![
            Just("\"x\"".to_string()), Just("1".to_string()), Just("null".to_string()),
            Just("{}".to_string()), Just("[1,2]".to_string()), "\"[^\"\\\\\n\r]{0,20}\"".prop_map(|s| s),
        ]), 0..8)
    ) {
        let line = format!("{{{}}}", fields.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect::<Vec<_>>().join(","));
        let parsed = embq::cli::parse_jsonl(line.as_bytes());
        prop_assert_eq!(parsed.jobs.len() + parsed.errors.len(), 1);
    }

    #[test]
    fn vector_bytes_decode_or_refuse(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
        match embq::vector::from_le_bytes(&bytes) {
            Ok(v) => {
                prop_assert_eq!(v.len() * 4, bytes.len());
                prop_assert_eq!(embq::vector::to_le_bytes(&v), bytes);
            }
            Err(_) => prop_assert!(bytes.len() % 4 != 0),
        }
    }
}
