//! What happens to a job after an attempt: the one place provider errors become
//! queue outcomes, and the retry schedule.

use std::time::Duration;

use rand::Rng;

use crate::config::RetryPolicy;
use crate::provider::ProviderError;
use crate::queue::Outcome;

/// Delay before attempt `attempt + 1` after attempt `attempt` (1-based) failed:
/// `base × multiplier^(attempt−1)`, ±20 % jitter so a failed batch does not retry in lockstep,
/// never above the cap.
pub fn retry_delay(policy: &RetryPolicy, attempt: u32, rng: &mut impl Rng) -> Duration {
    let exp = attempt.saturating_sub(1).min(64) as i32;
    let nominal = policy.base_delay.as_secs_f64() * policy.multiplier.powi(exp);
    let jittered = nominal * rng.gen_range(0.8..=1.2);
    let capped = jittered.min(policy.max_delay.as_secs_f64());
    Duration::from_secs_f64(capped.max(0.0))
}

/// Turns a failed attempt into the job's outcome.
///
/// Throttling and quota errors return the job without spending its attempt (the claim
/// spent one, `Released` refunds it); a bad input or a refused request dead-letters at
/// once; everything else retries with backoff until the last attempt.
pub fn classify(err: &ProviderError, attempt: u32, policy: &RetryPolicy, rng: &mut impl Rng) -> Outcome {
    match err {
        ProviderError::RateLimited { retry_after } => {
            Outcome::Released { after: retry_after.unwrap_or(Duration::from_secs(1)) }
        }
        ProviderError::QuotaExhausted(_) => Outcome::Released { after: Duration::from_secs(60) },
        ProviderError::InvalidInput { message, .. } => Outcome::Dead(format!("input rejected: {message}")),
        ProviderError::InvalidRequest(m) => Outcome::Dead(format!("request rejected: {m}")),
        ProviderError::TooLarge(_)
        | ProviderError::Transient(_)
        | ProviderError::InvalidResponse(_)
        | ProviderError::Unauthorized(_) => retry_or_dead(err.to_string(), attempt, policy, rng),
    }
}

/// Retry after the backoff delay, or dead-letter once the last attempt has been made.
pub fn retry_or_dead(error: String, attempt: u32, policy: &RetryPolicy, rng: &mut impl Rng) -> Outcome {
    if attempt >= policy.max_attempts.get() {
        Outcome::Dead(format!("failed after {attempt} attempts: {error}"))
    } else {
        Outcome::Retry { after: retry_delay(policy, attempt, rng), error }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;
    use std::num::NonZeroU32;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: NonZeroU32::new(5).unwrap(),
            base_delay: Duration::from_secs(1),
            multiplier: 2.0,
            max_delay: Duration::from_secs(10),
        }
    }

    #[test]
    fn retry_delay_grows_by_the_multiplier_within_jitter_and_cap() {
        let mut rng = StdRng::seed_from_u64(7);
        for (attempt, nominal) in [(1u32, 1.0f64), (2, 2.0), (3, 4.0), (4, 8.0)] {
            for _ in 0..200 {
                let d = retry_delay(&policy(), attempt, &mut rng).as_secs_f64();
                assert!(d >= nominal * 0.8 - 1e-9 && d <= (nominal * 1.2).min(10.0) + 1e-9, "{attempt}: {d}");
            }
        }
        for attempt in [5, 10, 1000, u32::MAX] {
            assert!(retry_delay(&policy(), attempt, &mut rng) <= Duration::from_secs(10));
        }
    }

    #[test]
    fn classification_table() {
        let mut rng = StdRng::seed_from_u64(1);
        let p = policy();
        let secs = |s| Some(Duration::from_secs(s));
        let cases: Vec<(ProviderError, u32, &str)> = vec![
            (ProviderError::RateLimited { retry_after: secs(7) }, 5, "released"),
            (ProviderError::QuotaExhausted("insufficient_quota".into()), 5, "released"),
            (ProviderError::InvalidInput { index: 0, message: "too long".into() }, 1, "dead"),
            (ProviderError::InvalidRequest("unknown model".into()), 1, "dead"),
            (ProviderError::Transient("502".into()), 1, "retry"),
            (ProviderError::Transient("502".into()), 5, "dead"),
            (ProviderError::InvalidResponse("3 vectors for 2 inputs".into()), 2, "retry"),
            (ProviderError::TooLarge("413".into()), 1, "retry"),
            (ProviderError::Unauthorized("401".into()), 4, "retry"),
            (ProviderError::Unauthorized("401".into()), 5, "dead"),
        ];
        for (err, attempt, want) in cases {
            let got = match classify(&err, attempt, &p, &mut rng) {
                Outcome::Released { .. } => "released",
                Outcome::Dead(_) => "dead",
                Outcome::Retry { .. } => "retry",
                other => panic!("unexpected {other:?}"),
            };
            assert_eq!(got, want, "{err:?} on attempt {attempt}");
        }
        assert_eq!(
            classify(&ProviderError::RateLimited { retry_after: secs(7) }, 1, &p, &mut rng),
            Outcome::Released { after: Duration::from_secs(7) }
        );
    }

    #[test]
    fn dead_letter_keeps_the_last_error() {
        let mut rng = StdRng::seed_from_u64(1);
        match classify(&ProviderError::Transient("HTTP 503".into()), 5, &policy(), &mut rng) {
            Outcome::Dead(e) => assert!(e.contains("failed after 5 attempts") && e.contains("HTTP 503"), "{e}"),
            other => panic!("{other:?}"),
        }
    }
}
