//! The limiter over its budget: pauses, waits, turns, reports tagged with their grant, and
//! reservations that learn what the provider bills.

use super::*;

#[tokio::test(start_paused = true)]
async fn no_provider_signal_pauses_longer_than_max_provider_pause() {
    let day = Duration::from_secs(86_400);
    let limiter = Limiter::local(6000, 6_000_000).with_max_pause(Duration::from_secs(5));
    assert_eq!(limiter.paused_for().await, None);
    limiter.apply(&RateSignals::throttle(Some(day)), None).await;
    assert_eq!(limiter.paused_for().await, Some(Duration::from_secs(5)));
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(limiter.paused_for().await, None);
    let exhausted = RateSignals { remaining_requests: Some(0), reset_requests: Some(day), ..RateSignals::default() };
    limiter.apply(&exhausted, None).await;
    assert_eq!(limiter.paused_for().await, Some(Duration::from_secs(5)));
    // The next request goes out when the capped pause ends, not tomorrow.
    let waited = limiter.acquire(1).await.waited;
    assert!(waited >= Duration::from_secs(5) && waited < Duration::from_secs(7), "{waited:?}");
}

#[tokio::test(start_paused = true)]
async fn signals_pause_the_provider_when_a_budget_is_spent() {
    let limiter = Limiter::local(6000, 6_000_000);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let signals = RateSignals {
        remaining_requests: Some(0),
        reset_requests: Some(Duration::from_secs(20)),
        remaining_tokens: Some(5000),
        reset_tokens: Some(Duration::from_millis(10)),
        ..RateSignals::default()
    };
    limiter.apply(&signals, None).await;
    let waited = limiter.acquire(10).await.waited;
    assert!(waited >= Duration::from_secs(20) && waited < Duration::from_secs(21), "{waited:?}");
}

#[tokio::test(start_paused = true)]
async fn a_429_pauses_every_task_sharing_the_limiter() {
    let limiter = Arc::new(Limiter::local(6000, 6_000_000));
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Through the sink, as a provider reports it: recorded before `observe` returns.
    LimiterSink(limiter.clone()).observe(&RateSignals::throttle(Some(Duration::from_secs(7)))).await;
    assert_eq!(limiter.paused_for().await, Some(Duration::from_secs(7)));
    let tasks: Vec<_> = (0..3)
        .map(|_| {
            let l = limiter.clone();
            tokio::spawn(async move { l.acquire(1).await.waited })
        })
        .collect();
    for t in tasks {
        let waited = t.await.unwrap();
        assert!(waited >= Duration::from_secs(7), "{waited:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn concurrent_callers_never_exceed_the_rate() {
    let limiter = Arc::new(Limiter::local(600, 60_000));
    let start = tokio::time::Instant::now();
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let l = limiter.clone();
            tokio::spawn(async move {
                for _ in 0..25 {
                    l.acquire(100).await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    // 200 requests of 100 tokens at 10 requests and 1,000 tokens a second: 20 s from empty.
    let took = start.elapsed().as_secs_f64();
    assert!((19.9..20.5).contains(&took), "{took}");
}

#[tokio::test(start_paused = true)]
async fn a_report_that_grows_the_budget_wakes_the_waiting_caller() {
    let limiter = Arc::new(Limiter::local(60, 6_000));
    // 60 RPM: the first request waits a second for an empty bucket to fill...
    let l = limiter.clone();
    let waiter = tokio::spawn(async move { l.acquire(10).await.waited });
    tokio::time::sleep(Duration::from_millis(100)).await;
    // ...unless the provider says it has a whole minute left.
    let signals = RateSignals {
        remaining_requests: Some(60),
        reset_requests: Some(Duration::ZERO),
        remaining_tokens: Some(6_000),
        reset_tokens: Some(Duration::ZERO),
        ..RateSignals::default()
    };
    limiter.apply(&signals, None).await;
    let waited = waiter.await.unwrap();
    assert!(waited < Duration::from_millis(150), "{waited:?}");
}

#[tokio::test(start_paused = true)]
async fn a_429_without_a_hint_pauses_the_default() {
    let limiter = Limiter::local(6000, 6_000_000).with_max_pause(Duration::from_secs(60));
    limiter.apply(&RateSignals::throttle(None), None).await;
    assert_eq!(limiter.paused_for().await, Some(DEFAULT_PAUSE));
    // Never longer than MAX_PROVIDER_PAUSE, even by default.
    let limiter = Limiter::local(6000, 6_000_000).with_max_pause(Duration::from_secs(1));
    limiter.apply(&RateSignals::throttle(None), None).await;
    assert_eq!(limiter.paused_for().await, Some(Duration::from_secs(1)));
}

#[tokio::test(start_paused = true)]
async fn ordinary_signals_reach_the_budget_in_the_background() {
    let limiter = Arc::new(Limiter::local(6000, 6_000_000));
    let spent = RateSignals {
        remaining_tokens: Some(0),
        reset_tokens: Some(Duration::from_secs(20)),
        ..RateSignals::default()
    };
    LimiterSink(limiter.clone()).observe(&spent).await;
    // Applied by a task of its own: the provider call did not wait for the budget store.
    let mut turns = 0;
    while limiter.paused_for().await.is_none() {
        assert!(turns < 100, "the signals never reached the budget");
        tokio::task::yield_now().await;
        turns += 1;
    }
    assert_eq!(limiter.paused_for().await, Some(Duration::from_secs(20)));
}

#[tokio::test(start_paused = true)]
async fn reservations_grow_to_what_the_provider_bills() {
    let limiter = Arc::new(Limiter::local(6000, 600_000));
    assert_eq!(limiter.acquire(100).await.reserved, 100);
    for _ in 0..20 {
        let p = limiter.acquire(100).await;
        limiter.settle(&p, Billed::Tokens(150));
    }
    let p = limiter.acquire(100).await;
    assert_eq!((p.counted, p.reserved), (100, 150));
    // A refused request or one of unknown cost teaches nothing.
    limiter.settle(&p, Billed::Nothing);
    limiter.settle(&p, Billed::Unknown);
    assert_eq!(limiter.acquire(100).await.reserved, 150);
}

/// A budget that records which grant each report answered, and each answer's signals.
#[derive(Default)]
struct Recording(std::sync::Mutex<Vec<Option<GrantId>>>, std::sync::Mutex<Vec<(GrantId, RateSignals)>>);

#[async_trait]
impl Budget for Recording {
    async fn try_take(&self, _: u64) -> Result<Grant, LimiterError> {
        Ok(Grant::Granted(7))
    }
    async fn answer(&self, grant: GrantId, _: i64, signals: &RateSignals) -> Result<bool, LimiterError> {
        self.1.lock().unwrap().push((grant, *signals));
        Ok(false)
    }
    async fn pause(&self, _: Duration) -> Result<(), LimiterError> {
        Ok(())
    }
    async fn paused_for(&self) -> Result<Option<Duration>, LimiterError> {
        Ok(None)
    }
    async fn report(&self, _: &RateSignals, grant: Option<GrantId>) -> Result<bool, LimiterError> {
        self.0.lock().unwrap().push(grant);
        Ok(false)
    }
    async fn shape(&self) -> Result<Shape, LimiterError> {
        Ok(Shape::Unknown)
    }
}

#[tokio::test]
async fn signals_reported_during_a_call_answer_its_grant() {
    let budget = Arc::new(Recording::default());
    let limiter = Arc::new(Limiter::new(budget.clone()));
    let sink = LimiterSink(limiter.clone());
    let permit = limiter.acquire(10).await;
    // A 429 inside the call (applied before it returns), and one outside any call.
    limiter.during(&permit, sink.observe(&RateSignals::throttle(None))).await;
    sink.observe(&RateSignals::throttle(None)).await;
    assert_eq!(*budget.0.lock().unwrap(), vec![Some(7), None]);
    // Any other answer's signals go with the grant's settlement, in one call.
    let left = RateSignals { remaining_tokens: Some(5), ..RateSignals::default() };
    limiter.during(&permit, sink.observe(&left)).await;
    assert_eq!(budget.0.lock().unwrap().len(), 2, "not reported on its own");
    limiter.settle(&permit, Billed::Tokens(10));
    let mut turns = 0;
    while budget.1.lock().unwrap().is_empty() {
        assert!(turns < 100, "never settled");
        tokio::task::yield_now().await;
        turns += 1;
    }
    assert_eq!(*budget.1.lock().unwrap(), vec![(7, left)]);
}
