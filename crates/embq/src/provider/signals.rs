//! What a provider says about its rate limits, read from each response's headers and reported
//! to the limiter through a sink: remaining budgets, resets, `Retry-After`, a 429.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use reqwest::header::HeaderMap;

/// Rate-limit state a provider reported with a response.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RateSignals {
    /// `Retry-After` / `retry-after-ms`, or Gemini's `RetryInfo.retryDelay`.
    pub retry_after: Option<Duration>,
    /// `x-ratelimit-remaining-requests`.
    pub remaining_requests: Option<u64>,
    /// `x-ratelimit-remaining-tokens`.
    pub remaining_tokens: Option<u64>,
    /// `x-ratelimit-reset-requests`: until the request budget is whole again.
    pub reset_requests: Option<Duration>,
    /// `x-ratelimit-reset-tokens`.
    pub reset_tokens: Option<Duration>,
    /// The provider answered 429 (throttled, not out of quota): the limiter pauses even
    /// when no hint says how long.
    pub throttled: bool,
}

impl RateSignals {
    /// The signals of a 429 whose only hint, if any, is `retry_after`.
    pub fn throttle(retry_after: Option<Duration>) -> Self {
        Self { retry_after, throttled: true, ..Self::default() }
    }

    /// True when the response carried no signal at all.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// How long nothing may be sent: `Retry-After`, or the reset of a budget with none left.
    pub fn pause(&self) -> Option<Duration> {
        let exhausted = [(self.remaining_requests, self.reset_requests), (self.remaining_tokens, self.reset_tokens)]
            .into_iter()
            .filter_map(|(left, reset)| if left == Some(0) { reset } else { None })
            .max();
        self.retry_after.into_iter().chain(exhausted).max().filter(|d| !d.is_zero())
    }

    /// These signals with every wait at most `max` (MAX_PROVIDER_PAUSE).
    pub fn capped(self, max: Duration) -> Self {
        let cap = |d: Option<Duration>| d.map(|d| d.min(max));
        Self {
            retry_after: cap(self.retry_after),
            reset_requests: cap(self.reset_requests),
            reset_tokens: cap(self.reset_tokens),
            ..self
        }
    }
}

/// Where a provider sends the signals it reads (the limiter).
#[async_trait]
pub trait SignalSink: Send + Sync {
    /// Called once per response that carried any signal, before the provider call returns.
    async fn observe(&self, signals: &RateSignals);
}

/// A provider's slot for its sink, set once when the worker starts.
#[derive(Default)]
pub struct SinkSlot(OnceLock<Arc<dyn SignalSink>>);

impl SinkSlot {
    /// Connects the sink; a second call is ignored.
    pub fn set(&self, sink: Arc<dyn SignalSink>) {
        let _ = self.0.set(sink);
    }
    /// Forwards non-empty signals.
    pub async fn send(&self, signals: &RateSignals) {
        if let (Some(sink), false) = (self.0.get(), signals.is_empty()) {
            sink.observe(signals).await;
        }
    }
}

impl std::fmt::Debug for SinkSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.get().is_some() { "SinkSlot(set)" } else { "SinkSlot(empty)" })
    }
}

/// Reads the rate-limit headers of a response.
pub fn parse_signals(headers: &HeaderMap) -> RateSignals {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
    let retry_after = get("retry-after-ms")
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|ms| ms.is_finite() && *ms >= 0.0)
        // Capped like `Retry-After`: a huge value must not overflow the Duration (a panic).
        .map(|ms| Duration::from_secs_f64((ms / 1000.0).min(86_400.0)))
        .or_else(|| get("retry-after").and_then(parse_retry_after));
    RateSignals {
        retry_after,
        remaining_requests: get("x-ratelimit-remaining-requests").and_then(|v| v.parse().ok()),
        remaining_tokens: get("x-ratelimit-remaining-tokens").and_then(|v| v.parse().ok()),
        reset_requests: get("x-ratelimit-reset-requests").and_then(parse_go_duration),
        reset_tokens: get("x-ratelimit-reset-tokens").and_then(parse_go_duration),
        // The status says that, not the headers: see [`answer`].
        throttled: false,
    }
}

/// `Retry-After`: delay-seconds (fractions tolerated) or an HTTP date; at most a day.
pub fn parse_retry_after(v: &str) -> Option<Duration> {
    if let Ok(secs) = v.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs.min(86_400.0)));
    }
    let at = chrono::DateTime::parse_from_rfc2822(v).ok()?;
    let delta = at.with_timezone(&chrono::Utc) - chrono::Utc::now();
    Some(delta.to_std().unwrap_or(Duration::ZERO).min(Duration::from_secs(86_400)))
}

/// Durations as OpenAI and Google write them: `6m0s`, `1s`, `120ms`, `0.5s`, `1h2m3.5s`, `13s`.
pub fn parse_go_duration(v: &str) -> Option<Duration> {
    let v = v.trim();
    if v.is_empty() {
        return None;
    }
    let mut total = 0.0f64;
    let mut rest = v;
    while !rest.is_empty() {
        let split = rest.find(|c: char| !c.is_ascii_digit() && c != '.')?;
        let (num, tail) = rest.split_at(split);
        let n: f64 = num.parse().ok()?;
        let unit_len = tail.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(tail.len());
        let (unit, next) = tail.split_at(unit_len);
        total += n * match unit {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return None,
        };
        rest = next;
    }
    (total.is_finite() && total >= 0.0).then(|| Duration::from_secs_f64(total.min(86_400.0)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::ProviderError;
    use reqwest::header::{HeaderName, HeaderValue};

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn go_durations_parse() {
        let ms = |m| Some(Duration::from_millis(m));
        for (text, want) in [
            ("6m0s", ms(360_000)),
            ("1s", ms(1000)),
            ("120ms", ms(120)),
            ("0.5s", ms(500)),
            ("1h2m3.5s", ms(3_723_500)),
            ("13s", ms(13_000)),
            ("", None),
            ("5", None),
            ("3d", None),
            ("s", None),
        ] {
            assert_eq!(parse_go_duration(text), want, "{text:?}");
        }
    }

    #[test]
    fn capped_signals_pause_no_longer_than_allowed() {
        let day = Duration::from_secs(86_400);
        let max = Duration::from_secs(300);
        let s = RateSignals {
            retry_after: Some(day),
            remaining_tokens: Some(0),
            reset_tokens: Some(day),
            reset_requests: Some(Duration::from_secs(2)),
            ..RateSignals::default()
        };
        let c = s.capped(max);
        assert_eq!(c.pause(), Some(max));
        assert_eq!(c.reset_requests, Some(Duration::from_secs(2)), "short waits are kept");
        assert_eq!(c.remaining_tokens, Some(0));
        let e = ProviderError::RateLimited { retry_after: Some(day) }.with_pause_at_most(max);
        assert_eq!(e, ProviderError::RateLimited { retry_after: Some(max) });
    }

    #[test]
    fn signals_prefer_retry_after_ms_and_read_openai_headers() {
        let s = parse_signals(&headers(&[
            ("retry-after", "20"),
            ("retry-after-ms", "1500"),
            ("x-ratelimit-remaining-requests", "0"),
            ("x-ratelimit-remaining-tokens", "149984"),
            ("x-ratelimit-reset-requests", "6m0s"),
            ("x-ratelimit-reset-tokens", "6ms"),
        ]));
        assert_eq!(s.retry_after, Some(Duration::from_millis(1500)));
        assert_eq!(s.remaining_requests, Some(0));
        assert_eq!(s.remaining_tokens, Some(149_984));
        assert_eq!(s.reset_requests, Some(Duration::from_secs(360)));
        assert_eq!(s.reset_tokens, Some(Duration::from_millis(6)));
        assert_eq!(parse_signals(&headers(&[("retry-after", "2")])).retry_after, Some(Duration::from_secs(2)));
        assert!(parse_signals(&headers(&[("retry-after", "soon")])).is_empty());
        let future = (chrono::Utc::now() + chrono::Duration::seconds(30)).to_rfc2822();
        let d = parse_retry_after(&future).unwrap();
        assert!(d > Duration::from_secs(25) && d <= Duration::from_secs(30), "{d:?}");
    }
}
