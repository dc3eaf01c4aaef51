//! The budget math, example by example, and the two properties that matter proptested: no
//! interval spends more than a burst plus its refill, and no rolling window more than the
//! per-minute budget.

use std::time::Duration;

use proptest::prelude::*;

use super::*;

fn rates() -> Rates {
    // 600 RPM, 60,000 TPM: 10 requests and 1,000 tokens a second.
    Rates::per_minute(600, 60_000)
}

#[test]
fn buckets_start_empty_and_refill_continuously() {
    let mut s = BudgetState::new(rates(), 0.0);
    // Nothing at start: the first 500-token request waits half a second, not a minute's burst.
    assert_eq!(s.try_take(0.0, 500.0), Err(0.5));
    assert!(s.try_take(0.5, 500.0).is_ok());
    // 0.1 s later: one request is back (10/s), but only 100 tokens.
    assert!((s.try_take(0.6, 500.0).unwrap_err() - 0.4).abs() < 1e-9);
    // Never more than one second's worth accumulates.
    assert_eq!(s.levels(100.0), (10.0, 1000.0));
}

#[test]
fn both_budgets_must_admit_a_request() {
    let mut s = BudgetState::new(Rates::per_minute(60, 600_000), 0.0);
    // Tokens are plentiful after 1 s, requests allow exactly one per second.
    assert!(s.try_take(1.0, 10.0).is_ok());
    let wait = s.try_take(1.0, 10.0).unwrap_err();
    assert!((wait - 1.0).abs() < 1e-9, "{wait}");
}

#[test]
fn a_request_larger_than_the_bucket_waits_for_a_full_bucket_then_owes() {
    let mut s = BudgetState::new(rates(), 0.0);
    assert_eq!(s.try_take(0.0, 3000.0), Err(1.0));
    assert!(s.try_take(1.0, 3000.0).is_ok());
    // 2,000 tokens of debt: the next 100-token request waits 2.1 s.
    assert!((s.try_take(1.0, 100.0).unwrap_err() - 2.1).abs() < 1e-9);
}

#[test]
fn corrections_return_or_take_tokens() {
    let mut s = BudgetState::new(rates(), 0.0);
    assert!(s.try_take(1.0, 800.0).is_ok());
    s.correct(1.0, 600.0); // used 200 of 800 reserved
    assert_eq!(s.levels(1.0).1, 800.0);
    s.correct(1.0, -900.0); // used more than reserved
    assert_eq!(s.levels(1.0).1, -100.0);
}

#[test]
fn a_pause_stops_every_grant_and_restarts_empty() {
    let mut s = BudgetState::new(rates(), 0.0);
    s.pause(5.0, 3.0);
    assert_eq!(s.try_take(5.0, 1.0), Err(3.0));
    assert_eq!(s.try_take(7.0, 1.0), Err(1.0));
    // At 8 s the pause is over and 3 s of refill have come back (capped at one second's worth).
    assert!(s.try_take(8.0, 1.0).is_ok());
    // A shorter later pause does not shorten a longer one.
    s.pause(8.0, 10.0);
    s.pause(9.0, 1.0);
    assert!((s.try_take(9.0, 1.0).unwrap_err() - 9.0).abs() < 1e-9);
}

#[test]
fn a_reported_429_pauses_for_its_hint_and_empties_the_buckets_even_without_one() {
    let mut s = BudgetState::new(rates(), 0.0);
    assert_eq!(s.levels(2.0), (10.0, 1000.0));
    s.report(2.0, &RateSignals::throttle(Some(Duration::from_secs(4))), None);
    assert_eq!(s.paused_for(2.0), Some(4.0));
    assert!(s.try_take(6.0, 1.0).is_ok());
    // A 429 asking for no wait pauses nothing, but the buckets start over from empty.
    assert_eq!(s.levels(8.0), (10.0, 1000.0));
    s.report(8.0, &RateSignals::throttle(Some(Duration::ZERO)), None);
    assert_eq!((s.paused_for(8.0), s.levels(8.0)), (None, (0.0, 0.0)));
}

#[test]
fn remaining_headers_cap_the_levels() {
    let mut s = BudgetState::new(rates(), 0.0);
    s.clamp(10.0, Some(2.0), Some(150.0));
    assert_eq!(s.levels(10.0), (2.0, 150.0));
    assert!(s.try_take(10.0, 500.0).is_err());
}

/// The headers of a response from a provider that held `cap` when whole and has `left`.
fn report(left: u64, reset_secs: f64) -> RateSignals {
    RateSignals {
        remaining_requests: None,
        reset_requests: None,
        remaining_tokens: Some(left),
        reset_tokens: Some(Duration::from_secs_f64(reset_secs)),
        ..RateSignals::default()
    }
}

#[test]
fn a_report_of_a_whole_minute_frees_the_minute_and_the_window_holds_the_rest_back() {
    // 600 RPM, 60,000 TPM; the provider (a rolling window) said after the first request:
    // 599 requests and 59,500 tokens left, budget comes back in 60 s.
    let mut s = BudgetState::new(rates(), 0.0);
    assert!(s.try_take(0.5, 500.0).is_ok());
    let whole = RateSignals {
        remaining_requests: Some(599),
        reset_requests: Some(Duration::from_secs(60)),
        ..report(59_500, 60.0)
    };
    assert!(s.report(0.5, &whole, None));
    assert_eq!(s.caps(), (600.0, 60_000.0));
    // The buckets grew by what they learnt, on top of what they held (4 requests, 0 tokens).
    assert_eq!(s.levels(0.5), (594.0, 59_000.0));
    let (mut now, mut sent) = (0.5, 500.0);
    loop {
        match s.try_take(now, 500.0) {
            Ok(_) => sent += 500.0,
            Err(w) if w < 5.0 => now += w,
            Err(_) => break,
        }
    }
    assert_eq!(sent, 60_000.0, "the first minute's worth");
    assert!(now < 1.1, "at once: {now}");
    // The window is full: the bucket refills, but nothing more until the first grant
    // leaves the window, 60.5 s after it was made.
    let wait = s.try_take(now + 30.0, 500.0).unwrap_err();
    assert!((now + 30.0 + wait - 61.0).abs() < 1e-6, "{wait}");
    assert!(s.try_take(60.9, 500.0).is_err());
    assert!(s.try_take(61.0, 500.0).is_ok());
}

#[test]
fn a_remaining_that_the_window_explains_leaves_the_buckets_alone() {
    let mut s = BudgetState::new(rates(), 0.0);
    s.report(
        0.0,
        &RateSignals {
            remaining_requests: Some(600),
            reset_requests: Some(Duration::from_secs(60)),
            ..report(60_000, 60.0)
        },
        None,
    );
    // A whole minute granted between 0.5 and 1.1 s.
    for k in 0..118 {
        assert!(s.try_take(0.5 + f64::from(k) * 0.005, 500.0).is_ok());
    }
    // At 61.0 s a rolling-window provider has dropped what arrived by 1.0 s and says
    // 30,000 tokens are left; our window (60.5 s) allows only 1,500 more yet: nothing to
    // learn, and the full bucket stays full for when the window frees.
    s.clamp(61.0, None, Some(30_000.0));
    assert_eq!(s.levels(61.0).1, 60_000.0);
    // A provider with less left than even our window allows caps the bucket.
    s.clamp(61.0, None, Some(1_000.0));
    assert_eq!(s.levels(61.0).1, 1_000.0);
}

#[test]
fn learnt_capacities_never_exceed_the_budget_nor_shrink() {
    let mut s = BudgetState::new(rates(), 0.0);
    // A provider with more than the configured budget: capped at a minute's worth.
    assert!(s.report(1.0, &report(1_000_000, 60.0), None));
    assert_eq!(s.caps().1, 60_000.0);
    // A later report implying less does not shrink it (levels are capped by remaining instead).
    assert!(!s.report(2.0, &report(100, 0.1), None));
    assert_eq!(s.caps().1, 60_000.0);
    assert_eq!(s.levels(2.0).1, 100.0);
    // Without a reset nothing is learnt.
    let mut s = BudgetState::new(rates(), 0.0);
    assert!(!s.report(1.0, &RateSignals { remaining_tokens: Some(50_000), ..RateSignals::default() }, None));
    assert_eq!(s.caps(), (10.0, 1_000.0));
}

#[test]
fn a_small_provider_bucket_is_followed_without_overspending_it() {
    // The provider's bucket holds 2 s (2,000 tokens) and started full; ours starts empty.
    let mut s = BudgetState::new(rates(), 0.0);
    assert!(s.try_take(0.5, 500.0).is_ok());
    // It said: 1,500 left (2,000 - 500: it had refilled to full), whole again in 0.5 s.
    assert!(s.report(0.5, &report(1_500, 0.5), None));
    assert_eq!(s.caps().1, 2_000.0);
    // Grown by 1,000 only (what our empty bucket had not known), never above what is left.
    assert_eq!(s.levels(0.5).1, 1_000.0);
    let mut provider = 1_500.0f64;
    let mut at = 0.5;
    let mut now = 0.5;
    for _ in 0..200 {
        match s.try_take(now, 500.0) {
            Ok(_) => {
                provider = (provider + 1_000.0 * (now - at)).min(2_000.0) - 500.0;
                at = now;
                assert!(provider >= -1e-6, "overspent the provider's bucket at {now}: {provider}");
            }
            Err(w) => now += w,
        }
    }
}

#[test]
fn the_window_counts_tokens_billed_beyond_the_reservation() {
    let mut s = BudgetState::new(Rates::per_minute(600, 1_000), 0.0);
    s.report(1.0, &report(1_000, 60.0), None);
    assert!(s.try_take(1.0, 400.0).is_ok());
    s.correct(1.0, -300.0); // billed 700
    assert_eq!(s.in_window(1.0), (1.0, 700.0));
    assert!(s.try_take(1.0, 300.0).is_ok());
    assert!(s.try_take(1.0, 1.0).is_err());
    // Tokens given back stay in the window until their request leaves it.
    s.correct(1.0, 300.0);
    assert_eq!(s.in_window(1.0), (2.0, 1_000.0));
    assert_eq!(s.in_window(1.0 + Rates::WINDOW_SECONDS), (0.0, 0.0));
}

proptest! {
    /// No window spends more than one burst plus its length's worth of refill, and from
    /// the start (empty buckets) no more than its length's worth at all.
    #[test]
    fn no_window_exceeds_its_budget(
        rpm in 60u32..6000,
        tpm in 1000u32..200_000,
        reqs in proptest::collection::vec((0.0f64..2.0, 1u32..3000, 0.5f64..=1.0), 1..120),
    ) {
        let rates = Rates::per_minute(rpm, tpm);
        let mut s = BudgetState::new(rates, 0.0);
        let mut now = 0.0f64;
        let mut grants: Vec<(f64, f64)> = Vec::new(); // (time, tokens actually used)
        for (gap, tokens, used_share) in reqs {
            now += gap;
            let tokens = f64::from(tokens).min(rates.token_burst); // the planner never sends more
            loop {
                match s.try_take(now, tokens) {
                    Ok(_) => break,
                    Err(w) => now += w,
                }
            }
            let used = (tokens * used_share).floor();
            s.correct(now, tokens - used);
            grants.push((now, used));
        }
        let eps = 1e-6;
        for i in 0..grants.len() {
            let mut req = 0.0;
            let mut tok = 0.0;
            for g in &grants[i..] {
                req += 1.0;
                tok += g.1;
                let len = g.0 - grants[i].0;
                prop_assert!(req <= rates.request_burst + rates.requests_per_sec * len + eps);
                prop_assert!(tok <= rates.token_burst + rates.tokens_per_sec * len + eps);
                if i == 0 {
                    prop_assert!(req <= rates.requests_per_sec * g.0 + eps, "{} requests by {}", req, g.0);
                    prop_assert!(tok <= rates.tokens_per_sec * g.0 + eps, "{} tokens by {}", tok, g.0);
                }
            }
        }
    }

    /// Whatever the provider reports (here: a whole minute as soon as it is asked), no
    /// rolling window of [`Rates::WINDOW_SECONDS`] is granted more than the per-minute budgets.
    #[test]
    fn no_rolling_window_exceeds_the_per_minute_budget(
        rpm in 60u32..1200,
        tpm in 1000u32..100_000,
        reqs in proptest::collection::vec((0.0f64..3.0, 1u32..3000, 0.5f64..=1.0), 1..300),
    ) {
        let rates = Rates::per_minute(rpm, tpm);
        let mut s = BudgetState::new(rates, 0.0);
        let whole = RateSignals {
            remaining_requests: Some(u64::from(rpm)),
            reset_requests: Some(Duration::from_secs(60)),
            remaining_tokens: Some(u64::from(tpm)),
            reset_tokens: Some(Duration::from_secs(60)),
            ..RateSignals::default()
        };
        s.report(0.0, &whole, None);
        let mut now = 0.0f64;
        let mut requests: Vec<f64> = Vec::new(); // grant times
        let mut spent: Vec<(f64, f64)> = Vec::new(); // (time, tokens billed)
        for (gap, tokens, used_share) in reqs {
            now += gap;
            let tokens = f64::from(tokens).min(rates.tokens_per_window);
            loop {
                match s.try_take(now, tokens) {
                    Ok(_) => break,
                    Err(w) => now += w,
                }
            }
            requests.push(now);
            // Billed less than reserved: the reservation still counts in the window.
            let used = (tokens * used_share).floor();
            s.correct(now, tokens - used);
            spent.push((now, tokens));
            s.report(now, &whole, None);
        }
        // A grant exactly one window earlier has left it (up to rounding of the times).
        let start = |end: f64| end - Rates::WINDOW_SECONDS + 1e-9;
        for (i, &(end, _)) in spent.iter().enumerate() {
            let tok: f64 = spent[..=i].iter().filter(|h| h.0 > start(end)).map(|h| h.1).sum();
            prop_assert!(tok <= rates.tokens_per_window + 1e-6, "{} tokens in the window ending {}", tok, end);
            let req = requests[..=i].iter().filter(|&&t| t > start(end)).count();
            prop_assert!(req as f64 <= rates.requests_per_window, "{} requests in the window ending {}", req, end);
        }
    }
}
