//! The batch lane's settings (`BATCH_LANE*`): whether it runs, how often it polls, how much it
//! may have enqueued at the provider, and which backlog it takes over.

use std::num::NonZeroUsize;
use std::time::Duration;

use serde::Serialize;

use super::fields::{bounded, nonzero_duration, Problems};
use super::{ser_ms, ProviderKind, RawConfig};

/// OpenAI's per-file cap on requests.
pub const MAX_REQUESTS_PER_FILE: usize = 50_000;

/// OpenAI's tier-1 batch queue limit for the text-embedding-3 models.
pub const DEFAULT_MAX_ENQUEUED_TOKENS: u64 = 3_000_000;

/// The validated batch-lane settings.
#[derive(Debug, Clone, Serialize)]
pub struct BatchLaneConfig {
    /// `BATCH_LANE=on`.
    pub enabled: bool,
    /// How often an open batch is polled.
    #[serde(serialize_with = "ser_ms")]
    pub poll_interval: Duration,
    /// With `Some(n)`: more than `n` ready online jobs below `max_priority` move to the batch lane.
    pub backlog: Option<u64>,
    /// Priorities below this are backlog.
    pub max_priority: i32,
    /// Estimated tokens open batches of one model may hold.
    pub max_enqueued_tokens: u64,
    /// Most requests per batch file.
    pub max_requests: NonZeroUsize,
}

impl Default for BatchLaneConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            poll_interval: Duration::from_secs(60),
            backlog: None,
            max_priority: 0,
            max_enqueued_tokens: DEFAULT_MAX_ENQUEUED_TOKENS,
            max_requests: NonZeroUsize::new(MAX_REQUESTS_PER_FILE).unwrap_or(NonZeroUsize::MIN),
        }
    }
}

/// Parses the `BATCH_LANE*` variables, adding every problem to `p`.
pub(super) fn parse(r: &RawConfig, p: &mut Problems, provider: ProviderKind) -> BatchLaneConfig {
    let d = BatchLaneConfig::default();
    let enabled = p.field("BATCH_LANE", &r.batch_lane, false, |v| match v.to_ascii_lowercase().as_str() {
        "on" | "true" => Ok(true),
        "off" | "false" => Ok(false),
        _ => Err("must be on or off".into()),
    });
    if enabled && provider != ProviderKind::Openai {
        p.0.push(format!(
            "BATCH_LANE: on needs EMBEDDING_PROVIDER=openai (the OpenAI Batch API), not {}",
            provider.as_str()
        ));
    }
    let poll_interval =
        p.field("BATCH_LANE_POLL_INTERVAL", &r.batch_lane_poll_interval, d.poll_interval, nonzero_duration);
    let backlog = p.field("BATCH_LANE_BACKLOG", &r.batch_lane_backlog, None, |v| bounded(0, u64::MAX)(v).map(Some));
    let max_priority = p.field("BATCH_LANE_MAX_PRIORITY", &r.batch_lane_max_priority, d.max_priority, |v| {
        v.parse::<i32>().map_err(|_| "must be a whole number (a priority)".to_string())
    });
    let max_enqueued_tokens = p.field(
        "BATCH_LANE_MAX_ENQUEUED_TOKENS",
        &r.batch_lane_max_enqueued_tokens,
        d.max_enqueued_tokens,
        bounded(1, 1 << 50),
    );
    let max_requests = p.field("BATCH_LANE_MAX_REQUESTS", &r.batch_lane_max_requests, d.max_requests, |v| {
        let n = bounded(1, MAX_REQUESTS_PER_FILE as u64)(v)?;
        NonZeroUsize::new(n as usize).ok_or_else(|| "must be at least 1".to_string())
    });
    BatchLaneConfig { enabled, poll_interval, backlog, max_priority, max_enqueued_tokens, max_requests }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(pairs: &[(&str, &str)]) -> RawConfig {
        let mut r = RawConfig {
            database_url: Some("postgres://u@127.0.0.1/db".into()),
            embedding_provider: Some("openai".into()),
            openai_api_key: Some("sk-x".into()),
            ..RawConfig::default()
        };
        for (k, v) in pairs {
            let v = Some(v.to_string());
            match *k {
                "BATCH_LANE" => r.batch_lane = v,
                "BATCH_LANE_POLL_INTERVAL" => r.batch_lane_poll_interval = v,
                "BATCH_LANE_BACKLOG" => r.batch_lane_backlog = v,
                "BATCH_LANE_MAX_PRIORITY" => r.batch_lane_max_priority = v,
                "BATCH_LANE_MAX_ENQUEUED_TOKENS" => r.batch_lane_max_enqueued_tokens = v,
                "BATCH_LANE_MAX_REQUESTS" => r.batch_lane_max_requests = v,
                "EMBEDDING_PROVIDER" => r.embedding_provider = v,
                "DATABASE_URL" => r.database_url = v,
                _ => panic!("test helper lacks {k}"),
            }
        }
        r
    }

    #[test]
    fn the_lane_is_off_by_default_and_parses_every_setting() {
        let c = raw(&[]).validate().unwrap().batch_lane;
        assert!(!c.enabled);
        assert_eq!((c.poll_interval, c.backlog, c.max_priority), (Duration::from_secs(60), None, 0));
        assert_eq!((c.max_enqueued_tokens, c.max_requests.get()), (3_000_000, 50_000));
        let c = raw(&[
            ("BATCH_LANE", "on"),
            ("BATCH_LANE_POLL_INTERVAL", "500ms"),
            ("BATCH_LANE_BACKLOG", "1000"),
            ("BATCH_LANE_MAX_PRIORITY", "-5"),
            ("BATCH_LANE_MAX_ENQUEUED_TOKENS", "90000"),
            ("BATCH_LANE_MAX_REQUESTS", "10"),
        ])
        .validate()
        .unwrap()
        .batch_lane;
        assert!(c.enabled);
        assert_eq!((c.poll_interval, c.backlog, c.max_priority), (Duration::from_millis(500), Some(1000), -5));
        assert_eq!((c.max_enqueued_tokens, c.max_requests.get()), (90_000, 10));
    }

    #[test]
    fn bad_values_fail_at_start_naming_their_variable() {
        let e = raw(&[
            ("BATCH_LANE", "maybe"),
            ("BATCH_LANE_POLL_INTERVAL", "60"),
            ("BATCH_LANE_BACKLOG", "-1"),
            ("BATCH_LANE_MAX_PRIORITY", "low"),
            ("BATCH_LANE_MAX_ENQUEUED_TOKENS", "0"),
            ("BATCH_LANE_MAX_REQUESTS", "50001"),
        ])
        .validate()
        .unwrap_err()
        .to_string();
        for var in [
            "BATCH_LANE: must be on or off",
            "BATCH_LANE_POLL_INTERVAL: \"60\" has no unit",
            "BATCH_LANE_BACKLOG:",
            "BATCH_LANE_MAX_PRIORITY:",
            "BATCH_LANE_MAX_ENQUEUED_TOKENS:",
            "BATCH_LANE_MAX_REQUESTS: must be a whole number from 1 to 50000",
        ] {
            assert!(e.contains(var), "{var} in {e}");
        }
        let e = raw(&[("BATCH_LANE", "on"), ("EMBEDDING_PROVIDER", "hash")]).validate().unwrap_err().to_string();
        assert!(e.contains("BATCH_LANE: on needs EMBEDDING_PROVIDER=openai"), "{e}");
        assert!(raw(&[("BATCH_LANE", "on"), ("DATABASE_URL", "sqlite://x.db")]).validate().is_ok(), "both stores");
    }
}
