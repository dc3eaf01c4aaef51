//! What every remote provider shares: the HTTP client, bounded bodies, the report of each
//! answer's rate signals (see [`super::signals`]), and the one triage table from an HTTP
//! answer to a [`ProviderError`].
//!
//! Triage knows three error bodies: OpenAI's nested `{"error":{"message","type","code"}}`,
//! text-embeddings-inference's flat `{"error":"…","error_type":"…"}` and Google's
//! `{"error":{"code","status","message","details":[…]}}`.

use std::time::Duration;

use serde_json::Value;

use super::message::Secrets;
use super::signals::{parse_go_duration, parse_signals, RateSignals, SinkSlot};
use super::{Embedded, ProviderError};

/// The HTTP client of a remote provider: one connection pool, the whole-request timeout.
pub fn client(timeout: Duration) -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(10)))
        .user_agent(concat!("embq/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))
}

/// A transport failure (connect, timeout, broken body) is always worth a retry.
/// The error is shown without its URL, which may carry a key (Gemini's `?key=`).
pub fn transport_error(e: reqwest::Error) -> ProviderError {
    let what = if e.is_timeout() {
        "request timed out"
    } else if e.is_connect() {
        "connection failed"
    } else if e.is_body() || e.is_decode() {
        "response body broken off"
    } else {
        "request failed"
    };
    ProviderError::Transient(format!("{what}: {}", e.without_url()))
}

/// The longest response body a request of `inputs` texts at `dims` dimensions can legitimately
/// return: each value as JSON text takes at most ~25 bytes (sign, digits, exponent, comma), plus
/// room per input and for the envelope or an error body.
pub fn body_limit(inputs: usize, dims: usize) -> usize {
    (256 << 10) + inputs.saturating_mul(dims.saturating_mul(32).saturating_add(1024))
}

/// Reads a response body, failing as soon as it passes `limit` bytes, whether or not it
/// declared its length (chunked bodies are counted as they arrive).
pub async fn read_body(mut resp: reqwest::Response, limit: usize) -> Result<String, ProviderError> {
    let too_long = |what: String| {
        ProviderError::InvalidResponse(format!(
            "{what}; a request of this size returns at most {limit} bytes, so the response was dropped"
        ))
    };
    if let Some(n) = resp.content_length().filter(|n| *n > limit as u64) {
        return Err(too_long(format!("the response declares {n} bytes")));
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(transport_error)? {
        if body.len() + chunk.len() > limit {
            return Err(too_long(format!("the response is longer than {limit} bytes")));
        }
        body.extend_from_slice(&chunk);
    }
    String::from_utf8(body).map_err(|_| ProviderError::InvalidResponse("the response body is not UTF-8".into()))
}

/// The parts of an error body triage looks at.
#[derive(Debug, Default, PartialEq)]
struct ErrorBody {
    message: String,
    /// OpenAI `type`/`code`, TEI `error_type`, Google `status`, lower-cased.
    codes: Vec<String>,
    /// Google `RetryInfo.retryDelay`.
    retry_delay: Option<Duration>,
    /// Google `QuotaFailure` ids, such as `EmbedContentRequestsPerDayPerProjectPerModel`.
    quota_ids: Vec<String>,
}

fn parse_error_body(body: &str) -> ErrorBody {
    let mut out = ErrorBody::default();
    let Ok(v) = serde_json::from_str::<Value>(body) else {
        out.message = clip(body.trim(), 300);
        return out;
    };
    let err = v.get("error").unwrap_or(&v);
    let s = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_string);
    match err {
        // TEI: {"error": "...", "error_type": "..."}
        Value::String(m) => {
            out.message = m.clone();
            out.codes.extend(s(v.get("error_type")));
        }
        _ => {
            out.message = s(err.get("message")).or_else(|| s(v.get("message"))).unwrap_or_default();
            for key in ["type", "code", "status", "error_type"] {
                out.codes.extend(s(err.get(key)));
            }
            for d in err.get("details").and_then(Value::as_array).into_iter().flatten() {
                if let Some(delay) = s(d.get("retryDelay")) {
                    out.retry_delay = parse_go_duration(&delay);
                }
                for viol in d.get("violations").and_then(Value::as_array).into_iter().flatten() {
                    out.quota_ids.extend(s(viol.get("quotaId")));
                    out.quota_ids.extend(s(viol.get("quotaMetric")));
                }
            }
        }
    }
    out.codes.iter_mut().for_each(|c| c.make_ascii_lowercase());
    out.message = clip(&out.message, 300);
    out
}

use crate::redact::clip;

/// Reads a response ([`read_body`], at most `limit` bytes) and [`settle`]s it, then reports
/// its rate signals to `sink` before the caller sees the result: the one path from a
/// provider's answers to its limiter. A 429 goes as a throttle carrying the hint triage
/// found (`Retry-After`, Google's `retryDelay` in the body, or the exhausted budget's reset).
pub async fn answer(
    resp: reqwest::Response,
    limit: usize,
    inputs: usize,
    secrets: &Secrets,
    sink: &SinkSlot,
    parse: impl FnOnce(&str) -> Result<Embedded, ProviderError>,
) -> Result<Embedded, ProviderError> {
    let status = resp.status().as_u16();
    let signals = parse_signals(resp.headers());
    let result = match read_body(resp, limit).await {
        Ok(body) => settle(status, &body, &signals, inputs, secrets, parse),
        Err(e) => Err(e),
    };
    let signals = match &result {
        Err(ProviderError::RateLimited { retry_after }) => {
            RateSignals { retry_after: *retry_after, throttled: true, ..signals }
        }
        _ => signals,
    };
    sink.send(&signals).await;
    result
}

/// A whole answer as the caller's result: a non-2xx through [`triage`], a 2xx through `parse`.
/// Both kinds of error leave through [`Secrets::error`]: no message quoting the response
/// (serde_json's quote a wrongly-typed value) escapes unscrubbed or unclipped.
pub fn settle(
    status: u16,
    body: &str,
    signals: &RateSignals,
    inputs: usize,
    secrets: &Secrets,
    parse: impl FnOnce(&str) -> Result<Embedded, ProviderError>,
) -> Result<Embedded, ProviderError> {
    if !(200..300).contains(&status) {
        return Err(triage(status, body, signals, inputs, secrets));
    }
    parse(body).map_err(|e| secrets.error(e))
}

/// Turns a non-2xx answer into what the worker must do. `inputs` is the batch size: an
/// input the model finds too long is split out of a larger batch first, so that only that
/// one job is dead-lettered. Every one of `secrets` is scrubbed from the message.
pub fn triage(status: u16, body: &str, signals: &RateSignals, inputs: usize, secrets: &Secrets) -> ProviderError {
    secrets.error(classify(status, &secrets.scrub(body), signals, inputs))
}

/// [`triage`] of a body already scrubbed: scrubbed before it is parsed and clipped, since
/// a secret cut in two by the clip would otherwise survive in part.
fn classify(status: u16, body: &str, signals: &RateSignals, inputs: usize) -> ProviderError {
    let b = parse_error_body(body);
    let has = |code: &str| b.codes.iter().any(|c| c == code);
    let lower = b.message.to_ascii_lowercase();
    let message = if b.message.is_empty() { format!("HTTP {status}") } else { format!("HTTP {status}: {}", b.message) };
    let daily_quota = b.quota_ids.iter().any(|q| q.contains("PerDay") || q.contains("per_day"));
    let quota = has("insufficient_quota") || has("billing_hard_limit_reached") || daily_quota;
    let too_big = has("max_tokens_per_request")
        || lower.contains("tokens per request")
        || lower.contains("batch size")
        || lower.contains("too many inputs")
        || lower.contains("payload too large");
    let input_too_long = lower.contains("maximum context length")
        || lower.contains("must have less than")
        || lower.contains("input is too long")
        || lower.contains("too long")
        || lower.contains("maximum input length");
    match status {
        429 if quota => ProviderError::QuotaExhausted(message),
        429 => ProviderError::RateLimited {
            retry_after: signals.retry_after.or(b.retry_delay).or_else(|| longest_reset(signals)),
        },
        // Google reports a daily quota as RESOURCE_EXHAUSTED, sometimes with 403.
        403 if quota => ProviderError::QuotaExhausted(message),
        401 | 403 => ProviderError::Unauthorized(message),
        413 => ProviderError::TooLarge(message),
        400 | 422 if too_big => ProviderError::TooLarge(message),
        400 | 422 if input_too_long && inputs > 1 => ProviderError::TooLarge(message),
        400 | 422 if input_too_long => ProviderError::InvalidInput { index: 0, message },
        408 | 409 | 425 | 500..=599 => ProviderError::Transient(message),
        // Some servers (TEI, Ollama) say "overloaded" with 503; a 424 is a backend failure.
        424 => ProviderError::Transient(message),
        _ => ProviderError::InvalidRequest(message),
    }
}

/// When a 429 gives no `Retry-After`, the reset of whichever budget is exhausted.
fn longest_reset(s: &RateSignals) -> Option<Duration> {
    let req = s.reset_requests.filter(|_| s.remaining_requests == Some(0));
    let tok = s.reset_tokens.filter(|_| s.remaining_tokens == Some(0));
    match (req, tok) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b).or(s.reset_requests.max(s.reset_tokens)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    fn kind(e: &ProviderError) -> &'static str {
        e.kind()
    }

    #[test]
    fn triage_table() {
        let none = RateSignals::default();
        let retry = RateSignals { retry_after: Some(Duration::from_secs(3)), ..RateSignals::default() };
        let reset = RateSignals {
            remaining_tokens: Some(0),
            reset_tokens: Some(Duration::from_secs(7)),
            remaining_requests: Some(10),
            reset_requests: Some(Duration::from_millis(100)),
            ..RateSignals::default()
        };
        let openai = |t: &str, c: &str, m: &str| {
            serde_json::json!({"error": {"message": m, "type": t, "code": c, "param": null}}).to_string()
        };
        let gemini_429 = |quota: &str| {
            serde_json::json!({"error": {"code": 429, "status": "RESOURCE_EXHAUSTED", "message": "Quota exceeded",
                "details": [
                    {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [{"quotaId": quota}]},
                    {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "13s"}]}})
            .to_string()
        };
        let tei = |m: &str, t: &str| serde_json::json!({"error": m, "error_type": t}).to_string();
        let rate_limit = openai("tokens", "rate_limit_exceeded", "Rate limit reached");
        let cases: Vec<(u16, String, &RateSignals, usize, &str)> = vec![
            (429, rate_limit.clone(), &retry, 2, "rate_limited"),
            (429, rate_limit.clone(), &none, 2, "rate_limited"),
            (
                429,
                openai("insufficient_quota", "insufficient_quota", "You exceeded your current quota"),
                &none,
                2,
                "quota_exhausted",
            ),
            (429, gemini_429("EmbedContentRequestsPerMinutePerProjectPerModel"), &none, 2, "rate_limited"),
            (429, gemini_429("EmbedContentRequestsPerDayPerProjectPerModel-FreeTier"), &none, 2, "quota_exhausted"),
            (429, tei("Model is overloaded", "overloaded"), &none, 2, "rate_limited"),
            (401, openai("invalid_request_error", "invalid_api_key", "Incorrect API key"), &none, 2, "unauthorized"),
            (403, "{}".into(), &none, 1, "unauthorized"),
            (
                400,
                openai(
                    "max_tokens_per_request",
                    "max_tokens_per_request",
                    "Requested 400000 tokens, max 300000 tokens per request",
                ),
                &none,
                9,
                "too_large",
            ),
            (413, tei("batch size 64 > maximum allowed batch size 32", "validation"), &none, 64, "too_large"),
            (
                400,
                openai("invalid_request_error", "", "This model's maximum context length is 8192 tokens"),
                &none,
                4,
                "too_large",
            ),
            (
                400,
                openai("invalid_request_error", "", "This model's maximum context length is 8192 tokens"),
                &none,
                1,
                "invalid_input",
            ),
            (
                422,
                tei("Input validation error: `inputs` must have less than 512 tokens", "validation"),
                &none,
                1,
                "invalid_input",
            ),
            (400, openai("invalid_request_error", "", "'$.input' is invalid"), &none, 3, "invalid_request"),
            (
                404,
                openai("invalid_request_error", "model_not_found", "The model does not exist"),
                &none,
                3,
                "invalid_request",
            ),
            (500, "<html>oops</html>".into(), &none, 3, "transient"),
            (502, "".into(), &none, 3, "transient"),
            (503, tei("overloaded", "overloaded"), &none, 3, "transient"),
            (504, "".into(), &none, 3, "transient"),
            (408, "".into(), &none, 3, "transient"),
            (424, tei("backend failed", "backend"), &none, 3, "transient"),
        ];
        for (status, body, sig, inputs, want) in cases {
            let got = triage(status, &body, sig, inputs, &Secrets::default());
            assert_eq!(kind(&got), want, "{status} {body}");
        }
        assert_eq!(
            triage(429, &rate_limit, &retry, 1, &Secrets::default()),
            ProviderError::RateLimited { retry_after: Some(Duration::from_secs(3)) }
        );
        assert_eq!(
            triage(429, &gemini_429("PerMinute"), &none, 1, &Secrets::default()),
            ProviderError::RateLimited { retry_after: Some(Duration::from_secs(13)) }
        );
        assert_eq!(
            triage(429, &rate_limit, &reset, 1, &Secrets::default()),
            ProviderError::RateLimited { retry_after: Some(Duration::from_secs(7)) }
        );
    }

    #[test]
    fn triage_scrubs_an_echoed_secret_and_clips_bodies() {
        let body =
            r#"{"error":{"message":"Incorrect API key provided: sk-live-123456","type":"invalid_request_error"}}"#;
        let e = triage(401, body, &RateSignals::default(), 1, &Secrets::new(Some("sk-live-123456")));
        assert!(!e.to_string().contains("sk-live-123456") && e.to_string().contains("[redacted]"), "{e}");
        let e = triage(500, &"x".repeat(5000), &RateSignals::default(), 1, &Secrets::default());
        assert!(e.to_string().len() < 250, "{e}");
    }
}
