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

/// What one provider request's result means for the jobs it carried.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// One outcome per job, in request order.
    Jobs(Vec<Outcome>),
    /// The request was too large for the provider: send each half on its own.
    Split,
    /// The account's quota is used up: park the provider; one outcome per job, in order.
    Park(Vec<Outcome>),
}

/// The one place a provider's answer becomes what happens to each job: `attempts` holds the
/// attempt number of every job of the request, in order; `result` is the vectors (already
/// checked for count, dimension and finiteness) or the error.
///
/// Vectors are stored. A too-large request of several inputs is split; of one input, that
/// input can never fit and is dead-lettered. A bad input dead-letters its own job only, its
/// request-mates go back unspent. An exhausted quota parks the provider. Every other error
/// applies to each job alike (see [`classify`]).
pub fn decide(
    result: Result<Vec<Vec<f32>>, ProviderError>,
    attempts: &[u32],
    policy: &RetryPolicy,
    rng: &mut impl Rng,
) -> Decision {
    let err = match result {
        Ok(vectors) => return Decision::Jobs(vectors.into_iter().map(Outcome::Done).collect()),
        Err(ProviderError::TooLarge(_)) if attempts.len() > 1 => return Decision::Split,
        Err(ProviderError::TooLarge(message)) => ProviderError::InvalidInput { index: 0, message },
        Err(e) => e,
    };
    let outcomes = attempts
        .iter()
        .enumerate()
        .map(|(i, &attempt)| match &err {
            ProviderError::InvalidInput { index, .. } if *index != i => Outcome::Released { after: Duration::ZERO },
            _ => classify(&err, attempt, policy, rng),
        })
        .collect();
    match err {
        ProviderError::QuotaExhausted(_) => Decision::Park(outcomes),
        _ => Decision::Jobs(outcomes),
    }
}

/// Turns a failed attempt into the job's outcome.
///
/// Throttling and quota errors return the job without spending its attempt (the claim
/// spent one, `Released` refunds it); a bad input or a refused request dead-letters at
/// once; everything else retries with backoff until the last attempt.
fn classify(err: &ProviderError, attempt: u32, policy: &RetryPolicy, rng: &mut impl Rng) -> Outcome {
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

    /// Every kind of answer, for a request of two jobs (attempts 1 and 5 of 5) and of one.
    #[test]
    fn decision_table() {
        let mut rng = StdRng::seed_from_u64(3);
        let p = policy();
        let released = |s: u64| Outcome::Released { after: Duration::from_secs(s) };
        let kind = |o: &Outcome| match o {
            Outcome::Done(_) => "done",
            Outcome::Released { after } if after.is_zero() => "released now",
            Outcome::Released { .. } => "released later",
            Outcome::Retry { .. } => "retry",
            Outcome::Dead(_) => "dead",
            _ => "other",
        };
        let two = [1, 5];
        type Case<'a> = (Result<Vec<Vec<f32>>, ProviderError>, &'a [u32], &'a str, [&'a str; 2]);
        let cases: Vec<Case<'_>> = vec![
            (Ok(vec![vec![0.1], vec![0.2]]), &two, "jobs", ["done", "done"]),
            (Err(ProviderError::TooLarge("413".into())), &two, "split", ["", ""]),
            (Err(ProviderError::TooLarge("context length".into())), &[1], "jobs", ["dead", ""]),
            (
                Err(ProviderError::RateLimited { retry_after: Some(Duration::from_secs(7)) }),
                &two,
                "jobs",
                ["released later", "released later"],
            ),
            (Err(ProviderError::RateLimited { retry_after: None }), &two, "jobs", ["released later", "released later"]),
            (
                Err(ProviderError::QuotaExhausted("insufficient_quota".into())),
                &two,
                "park",
                ["released later", "released later"],
            ),
            (
                Err(ProviderError::InvalidInput { index: 1, message: "bad".into() }),
                &two,
                "jobs",
                ["released now", "dead"],
            ),
            (
                Err(ProviderError::InvalidInput { index: 0, message: "bad".into() }),
                &two,
                "jobs",
                ["dead", "released now"],
            ),
            (Err(ProviderError::InvalidRequest("unknown model".into())), &two, "jobs", ["dead", "dead"]),
            (Err(ProviderError::Transient("502".into())), &two, "jobs", ["retry", "dead"]),
            (Err(ProviderError::InvalidResponse("2 vectors for 3 inputs".into())), &two, "jobs", ["retry", "dead"]),
            (Err(ProviderError::Unauthorized("401".into())), &two, "jobs", ["retry", "dead"]),
        ];
        for (result, attempts, want, want_jobs) in cases {
            let label = format!("{result:?}");
            let (got, outcomes) = match decide(result, attempts, &p, &mut rng) {
                Decision::Jobs(o) => ("jobs", o),
                Decision::Split => ("split", vec![]),
                Decision::Park(o) => ("park", o),
            };
            assert_eq!(got, want, "{label}");
            let kinds: Vec<&str> = outcomes.iter().map(kind).collect();
            let expected: Vec<&str> = want_jobs.iter().copied().filter(|k| !k.is_empty()).collect();
            assert_eq!(kinds, expected, "{label}");
        }
        // The provider's hint is kept; without one, a second.
        let d =
            decide(Err(ProviderError::RateLimited { retry_after: Some(Duration::from_secs(7)) }), &[1], &p, &mut rng);
        assert_eq!(d, Decision::Jobs(vec![released(7)]));
        let d = decide(Err(ProviderError::QuotaExhausted("q".into())), &[1], &p, &mut rng);
        assert_eq!(d, Decision::Park(vec![released(60)]));
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
