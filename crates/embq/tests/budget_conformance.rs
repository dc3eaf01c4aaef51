//! One conformance suite for both budget stores: each scenario runs against [`LocalBudget`]
//! (this process, tokio's clock) and [`PgBudget`] (a fresh, migrated database, the
//! database's clock), through the [`Budget`] trait only.
//!
//! Both clocks run while a scenario does, and a bucket refills meanwhile: a wait is checked
//! as "no longer than the rule says, and shorter by no more than the time the scenario can
//! have taken" ([`SLACK`]), never as an exact float. Rates are chosen so that what is
//! checked happens at once: no scenario waits for a clock.

mod support;

use std::sync::Arc;
use std::time::Duration;

use embq::limiter::{Budget, Grant, GrantId, LimiterError, LocalBudget, PgBudget, Rates, Shape};
use embq::provider::RateSignals;

/// How much shorter than the rule's a wait may be: the time a scenario may have taken
/// between the calls that set the level and the call that measures it.
const SLACK: f64 = 0.5;

/// 6,000 requests and 600 tokens per minute: 100 requests and 10 tokens a second, buckets of
/// one second's worth (100 requests, 10 tokens) until the provider says more.
fn rates() -> Rates {
    Rates::per_minute(6000, 600)
}

/// Where a scenario's budgets live.
enum Store {
    Local,
    /// The URL of a fresh database migrated to the current schema.
    Postgres(String),
}

impl Store {
    async fn postgres() -> Self {
        let url = support::pg::fresh_pg_db().await;
        let q = embq::queue::connect(&support::config_at(&url, &[]).store()).await.expect("open store");
        q.migrate().await.expect("migrate");
        Store::Postgres(url)
    }

    /// A new, empty budget (in PostgreSQL under a key of its own).
    fn budget(&self, rates: Rates) -> Arc<dyn Budget> {
        match self {
            Store::Local => Arc::new(LocalBudget::new(rates)),
            Store::Postgres(url) => {
                let key = format!("openai:conformance:{}", uuid::Uuid::new_v4().simple());
                Arc::new(PgBudget::connect(url, key, rates).expect("a lazy pool"))
            }
        }
    }
}

/// What a provider with `requests` and `tokens` left, whole again at once, reports.
fn left(requests: u64, tokens: u64) -> RateSignals {
    RateSignals {
        remaining_requests: Some(requests),
        reset_requests: Some(Duration::ZERO),
        remaining_tokens: Some(tokens),
        reset_tokens: Some(Duration::ZERO),
        ..RateSignals::default()
    }
}

/// A whole minute of [`rates`] left: the buckets grow to it (by a minute less the second's
/// worth they held), to 5,900 requests and 590 tokens.
fn whole() -> RateSignals {
    left(6000, 600)
}

async fn take(b: &Arc<dyn Budget>, tokens: u64) -> Grant {
    b.try_take(tokens).await.expect("budget store")
}

/// Takes `tokens`, which must be granted at once: the grant.
async fn granted(b: &Arc<dyn Budget>, tokens: u64, what: &str) -> GrantId {
    match take(b, tokens).await {
        Grant::Granted(id) => id,
        Grant::Wait(d) => panic!("{what}: told to wait {d:?}, expected a grant"),
    }
}

/// What is left, in requests and tokens, without a reset.
fn remaining(requests: Option<u64>, tokens: Option<u64>) -> RateSignals {
    RateSignals { remaining_requests: requests, remaining_tokens: tokens, ..RateSignals::default() }
}

/// Asserts `g` says to wait about `secs`: no longer, and shorter by at most `slack`.
fn assert_wait(g: Grant, secs: f64, slack: f64, what: &str) {
    match g {
        Grant::Wait(d) => {
            let d = d.as_secs_f64();
            assert!(d > secs - slack && d <= secs + 1e-3, "{what}: waits {d} s, expected about {secs} s");
        }
        Grant::Granted(_) => panic!("{what}: granted, expected a wait of about {secs} s"),
    }
}

fn assert_paused(p: Option<Duration>, secs: f64, what: &str) {
    let p = p.map(|d| d.as_secs_f64());
    assert!(p.is_some_and(|p| p > secs - SLACK && p <= secs + 1e-3), "{what}: paused for {p:?}, expected {secs} s");
}

async fn a_fresh_budget_starts_empty_and_fills_within_a_second(s: Store) {
    let b = s.budget(rates());
    // Five tokens of an empty 10-a-second bucket: half a second, not the minute's burst.
    assert_wait(take(&b, 5).await, 0.5, 0.25, "5 tokens from empty");
    // More than a bucket holds waits for a full bucket (and will owe the rest), never longer.
    assert_wait(take(&b, 50).await, 1.0, 0.25, "50 tokens, a 10-token bucket");
    assert_eq!(b.paused_for().await.expect("budget store"), None);
}

async fn grants_what_the_budget_holds_then_says_how_long_to_wait(s: Store) {
    let b = s.budget(rates());
    assert!(b.report(&whole(), None).await.expect("budget store"));
    for i in 0..5 {
        granted(&b, 100, &format!("grant {i} of 100 tokens")).await;
    }
    // 90 tokens are left: the sixth waits for the 10 it lacks, a second at 10 a second.
    assert_wait(take(&b, 100).await, 1.0, SLACK, "100 tokens with 90 left");
}

async fn corrections_give_back_and_take_tokens(s: Store) {
    let b = s.budget(rates());
    b.report(&left(6000, 300), None).await.expect("budget store");
    let g = granted(&b, 290, "290 of 300 tokens").await;
    assert_wait(take(&b, 50).await, 5.0, SLACK, "50 tokens from an empty bucket");
    // Billed 250 of the 290 reserved: 40 come back, and 50 tokens lack only 10.
    b.answer(g, 40, &RateSignals::default()).await.expect("budget store");
    assert_wait(take(&b, 50).await, 1.0, SLACK, "after 40 tokens came back");
    // Billed 90 more than that: the bucket owes 50, so 50 tokens wait for 100.
    b.answer(g, -90, &RateSignals::default()).await.expect("budget store");
    assert_wait(take(&b, 50).await, 10.0, SLACK, "after 90 more tokens were billed");
}

async fn a_pause_stops_every_grant_and_paused_for_reports_it(s: Store) {
    let b = s.budget(rates());
    b.report(&whole(), None).await.expect("budget store");
    granted(&b, 10, "").await;
    b.pause(Duration::from_secs(30)).await.expect("budget store");
    assert_wait(take(&b, 1).await, 30.0, SLACK, "a request during the pause");
    assert_paused(b.paused_for().await.expect("budget store"), 30.0, "after pausing 30 s");
    // A shorter pause does not shorten a longer one.
    b.pause(Duration::from_secs(1)).await.expect("budget store");
    assert_paused(b.paused_for().await.expect("budget store"), 30.0, "after a 1 s pause");
    // A report of a spent budget pauses until its reset; a 429 for its hint.
    let spent = RateSignals {
        remaining_tokens: Some(0),
        reset_tokens: Some(Duration::from_secs(45)),
        ..RateSignals::default()
    };
    b.report(&spent, None).await.expect("budget store");
    assert_paused(b.paused_for().await.expect("budget store"), 45.0, "tokens spent, whole in 45 s");
    b.report(&RateSignals::throttle(Some(Duration::from_secs(50))), None).await.expect("budget store");
    assert_paused(b.paused_for().await.expect("budget store"), 50.0, "a 429 asking for 50 s");
    assert_wait(take(&b, 1).await, 50.0, SLACK, "a request after the 429");
}

async fn clamp_caps_the_levels_at_what_the_provider_has_left(s: Store) {
    let b = s.budget(rates());
    b.report(&whole(), None).await.expect("budget store");
    b.report(&remaining(None, Some(20)), None).await.expect("budget store");
    assert_wait(take(&b, 50).await, 3.0, SLACK, "50 tokens with 20 left");
    granted(&b, 20, "").await;
    assert_wait(take(&b, 20).await, 2.0, SLACK, "20 tokens with none left");
    // Requests alike, on a budget of one request a second.
    let b = s.budget(Rates::per_minute(60, 600_000));
    b.report(&left(60, 600_000), None).await.expect("budget store");
    b.report(&remaining(Some(2), None), None).await.expect("budget store");
    granted(&b, 1, "").await;
    granted(&b, 1, "").await;
    assert_wait(take(&b, 1).await, 1.0, SLACK, "a third request with two left");
}

async fn a_report_with_remaining_and_reset_grows_the_capacity(s: Store) {
    let b = s.budget(rates());
    // Half the minute left, whole again in 30 s: the provider holds 300 + 10 × 30 = 600.
    let half = RateSignals {
        remaining_requests: Some(3000),
        reset_requests: Some(Duration::from_secs(30)),
        remaining_tokens: Some(300),
        reset_tokens: Some(Duration::from_secs(30)),
        ..RateSignals::default()
    };
    assert!(b.report(&half, None).await.expect("budget store"), "the capacity grew");
    // At once, where the 10-token bucket would wait a second and then owe 240.
    granted(&b, 250, "").await;
    // What was learnt is not learnt twice, and nothing grows beyond the per-minute budget.
    assert!(!b.report(&half, None).await.expect("budget store"));
    let more = RateSignals {
        remaining_tokens: Some(10_000),
        reset_tokens: Some(Duration::from_secs(60)),
        ..RateSignals::default()
    };
    assert!(!b.report(&more, None).await.expect("budget store"));
    // A remaining without its reset says nothing of the capacity.
    let b = s.budget(rates());
    let no_reset = RateSignals { remaining_tokens: Some(500), ..RateSignals::default() };
    assert!(!b.report(&no_reset, None).await.expect("budget store"));
    assert_wait(take(&b, 50).await, 1.0, 0.25, "50 tokens, still a 10-token bucket");
}

async fn the_rolling_window_never_admits_more_than_the_per_minute_budget(s: Store) {
    let b = s.budget(rates());
    b.report(&whole(), None).await.expect("budget store");
    for tokens in [500, 80] {
        granted(&b, tokens, &format!("{tokens} tokens")).await;
    }
    // 10 tokens are left in the bucket and 20 in the minute. 20 more wait a second for the
    // bucket; 21 more, though the bucket holds them as soon, would put 601 tokens in one
    // minute: they wait until the first grant has left the window.
    assert_wait(take(&b, 20).await, 1.0, SLACK, "20 tokens, the minute's last");
    assert_wait(take(&b, 21).await, Rates::WINDOW_SECONDS, SLACK, "21 tokens, one beyond the minute's budget");
}

async fn concurrent_takers_are_granted_no_more_than_the_budget_holds(s: Store) {
    let b = s.budget(rates());
    b.report(&whole(), None).await.expect("budget store");
    let takers: Vec<_> = (0..20)
        .map(|_| {
            let b = b.clone();
            tokio::spawn(async move { b.try_take(50).await.expect("budget store") })
        })
        .collect();
    let mut granted = 0;
    for t in takers {
        match t.await.expect("taker") {
            Grant::Granted(_) => granted += 1,
            Grant::Wait(d) => assert!(d > Duration::ZERO, "a wait of nothing"),
        }
    }
    // 590 tokens hold 11 requests of 50; a 12th only if a second of refill came back
    // meanwhile. The window (600) never admits a 13th.
    assert!((11..=12).contains(&granted), "{granted} of 20 granted");
}

/// 6,000 requests and 60,000 tokens per minute: 1,000 tokens a second.
fn big_rates() -> Rates {
    Rates::per_minute(6000, 60_000)
}

/// What a bucket provider of a whole minute ([`big_rates`]) with `tokens` (and 5,000
/// requests) left reports.
fn bucket_left(tokens: u64) -> RateSignals {
    RateSignals {
        remaining_requests: Some(5_000),
        reset_requests: Some(Duration::from_secs(10)),
        remaining_tokens: Some(tokens),
        reset_tokens: Some(Duration::from_secs_f64((60_000.0 - tokens as f64) / 1_000.0)),
        ..RateSignals::default()
    }
}

async fn a_bucket_provider_is_followed_past_the_rolling_window(s: Store) {
    let b = s.budget(big_rates());
    assert_eq!(b.shape().await.expect("budget store"), Shape::Unknown);
    // Two reports whose remaining and reset imply the same full-minute bucket.
    b.report(&bucket_left(50_000), None).await.expect("budget store");
    assert_eq!(b.shape().await.expect("budget store"), Shape::Unknown, "one report is no evidence");
    b.report(&bucket_left(50_000), None).await.expect("budget store");
    assert_eq!(b.shape().await.expect("budget store"), Shape::Bucket);
    let g = granted(&b, 50_000, "what the provider said is left").await;
    // Nothing left: a bucket refills at once, so this is no pause until it is whole.
    b.report(&bucket_left(0), Some(g)).await.expect("budget store");
    b.answer(g, 0, &RateSignals::default()).await.expect("budget store");
    assert_eq!(b.paused_for().await.expect("budget store"), None);
    // 11,000 more tokens put 61,000 in one minute: a rolling window would hold them for a
    // minute; the bucket has them back in 11 s.
    assert_wait(take(&b, 11_000).await, 11.0, SLACK, "11,000 tokens, a bucket refilling 1,000 a second");
}

async fn a_bucket_report_subtracts_what_the_provider_may_not_have_counted(s: Store) {
    let b = s.budget(big_rates());
    b.report(&bucket_left(50_000), None).await.expect("budget store");
    b.report(&bucket_left(50_000), None).await.expect("budget store");
    let first = granted(&b, 1_000, "the first request").await;
    let _in_flight = granted(&b, 2_000, "the second request").await;
    // The first's answer: 47,000 left when it was counted; the second, in flight, may not be.
    b.report(&bucket_left(47_000), Some(first)).await.expect("budget store");
    b.answer(first, 0, &RateSignals::default()).await.expect("budget store");
    granted(&b, 45_000, "47,000 less the 2,000 in flight").await;
    assert_wait(take(&b, 2_000).await, 2.0, SLACK, "2,000 more, with nothing left");
}

async fn a_provider_whose_capacity_is_beyond_the_budget_is_a_window(s: Store) {
    let b = s.budget(big_rates());
    // Right after a burst a rolling window's reset is the minute away: 30,000 + 59 s × 1,000
    // is beyond 60,000, so this is no bucket; the rolling ledger stays.
    let window = RateSignals {
        remaining_tokens: Some(30_000),
        reset_tokens: Some(Duration::from_secs(59)),
        ..RateSignals::default()
    };
    b.report(&window, None).await.expect("budget store");
    assert_eq!(b.shape().await.expect("budget store"), Shape::Window);
    // For good: two reports alike a bucket's do not change it.
    b.report(&bucket_left(20_000), None).await.expect("budget store");
    b.report(&bucket_left(20_000), None).await.expect("budget store");
    assert_eq!(b.shape().await.expect("budget store"), Shape::Window);
}

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod local {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(super::Store::Local).await })*
        }
        mod postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(super::Store::postgres().await).await })*
        }
    };
}

conformance!(
    a_fresh_budget_starts_empty_and_fills_within_a_second,
    grants_what_the_budget_holds_then_says_how_long_to_wait,
    corrections_give_back_and_take_tokens,
    a_pause_stops_every_grant_and_paused_for_reports_it,
    clamp_caps_the_levels_at_what_the_provider_has_left,
    a_report_with_remaining_and_reset_grows_the_capacity,
    the_rolling_window_never_admits_more_than_the_per_minute_budget,
    concurrent_takers_are_granted_no_more_than_the_budget_holds,
    a_bucket_provider_is_followed_past_the_rolling_window,
    a_bucket_report_subtracts_what_the_provider_may_not_have_counted,
    a_provider_whose_capacity_is_beyond_the_budget_is_a_window,
);

/// The worker refuses an old schema, so a fleet budget has no fallback: without its
/// functions it is unavailable (the limiter waits and asks again), and says no secret.
#[tokio::test]
async fn a_fleet_budget_without_its_schema_is_unavailable() {
    let url = support::pg::fresh_pg_db().await;
    let budget = PgBudget::connect(&url, "openai:m:k".into(), rates()).expect("a lazy pool");
    match budget.try_take(10).await {
        Err(LimiterError::Unavailable(message)) => {
            for secret in embq::redact::url_secrets(&url) {
                assert!(!message.contains(&secret), "{message}");
            }
        }
        other => panic!("expected the store to be unavailable: {other:?}"),
    }
}
