//! The provider's shape as its reports show it, and a budget that follows a bucket provider's
//! own count: example by example, then simulated against a server that enforces its limits
//! (a bucket of any depth, or a rolling window), with requests in flight whose answers come
//! back in any order.

use std::collections::VecDeque;
use std::time::Duration;

use proptest::prelude::*;

use super::*;

fn rates() -> Rates {
    Rates::per_minute(600, 60_000)
}

/// A bucket provider's headers: `left` of each, whole again at the refill rate.
fn bucket_report(rates: &Rates, cap: (f64, f64), left: (u64, u64)) -> RateSignals {
    let reset = |cap: f64, left: u64, rate: f64| Duration::from_secs_f64(((cap - left as f64) / rate).max(0.0));
    RateSignals {
        remaining_requests: Some(left.0),
        reset_requests: Some(reset(cap.0, left.0, rates.requests_per_sec)),
        remaining_tokens: Some(left.1),
        reset_tokens: Some(reset(cap.1, left.1, rates.tokens_per_sec)),
        ..RateSignals::default()
    }
}

#[test]
fn two_agreeing_reports_make_a_bucket_and_free_the_refill() {
    let r = rates();
    let mut s = BudgetState::new(r, 0.0);
    let full = (600.0, 60_000.0);
    // Untouched: tells nothing (a window looks the same).
    s.report(0.0, &bucket_report(&r, full, (600, 60_000)), None);
    assert_eq!(s.shape(), Shape::Unknown);
    s.report(0.1, &bucket_report(&r, full, (500, 50_000)), None);
    assert_eq!(s.shape(), Shape::Unknown);
    s.report(0.2, &bucket_report(&r, full, (400, 40_000)), None);
    assert_eq!(s.shape(), Shape::Bucket);
    // The levels are the provider's remaining (nothing in flight).
    assert_eq!(s.levels(0.2), (400.0, 40_000.0));
    // A whole minute's worth and its refill go within the minute: the window no longer binds.
    let (mut now, mut sent) = (0.2, 0.0);
    while now < 60.0 {
        match s.try_take(now, 100.0) {
            Ok(id) => {
                s.settle(now, id, 0.0);
                sent += 100.0;
            }
            Err(w) => now += w,
        }
    }
    // 40,000 at once and 1,000 a second after: ~99,800 by 60 s, where a window allows 60,000.
    assert!(sent > 99_000.0, "{sent}");
}

#[test]
fn a_capacity_beyond_the_budget_or_two_that_disagree_make_a_window_for_good() {
    let r = rates();
    // Right after a burst a window's reset is a minute away: 500 + 10 × 59 is beyond 600.
    let mut s = BudgetState::new(r, 0.0);
    let window = RateSignals {
        remaining_requests: Some(500),
        reset_requests: Some(Duration::from_secs(59)),
        ..RateSignals::default()
    };
    s.report(1.0, &window, None);
    assert_eq!(s.shape(), Shape::Window);
    // Nothing later makes it a bucket.
    let full = (600.0, 60_000.0);
    s.report(2.0, &bucket_report(&r, full, (400, 40_000)), None);
    s.report(3.0, &bucket_report(&r, full, (300, 30_000)), None);
    assert_eq!(s.shape(), Shape::Window);
    // Two telling reports whose capacities differ by more than 5 %: not a bucket.
    let mut s = BudgetState::new(r, 0.0);
    s.report(1.0, &bucket_report(&r, full, (400, 40_000)), None);
    s.report(2.0, &bucket_report(&r, (300.0, 30_000.0), (100, 10_000)), None);
    assert_eq!(s.shape(), Shape::Window);
}

#[test]
fn a_bucket_report_subtracts_whatever_may_have_reached_the_provider_after_it() {
    let r = rates();
    let mut s = BudgetState::new(r, 0.0);
    let full = (600.0, 60_000.0);
    s.report(0.0, &bucket_report(&r, full, (300, 30_000)), None);
    s.report(0.0, &bucket_report(&r, full, (300, 30_000)), None);
    assert_eq!(s.shape(), Shape::Bucket);
    let a = s.try_take(1.0, 1_000.0).unwrap();
    let b = s.try_take(1.0, 2_000.0).unwrap();
    let c = s.try_take(1.1, 4_000.0).unwrap();
    assert_eq!(s.in_flight(1.1), (3.0, 7_000.0));
    // b's answer: a and c, in flight, may not have been counted.
    s.report(1.2, &bucket_report(&r, full, (297, 27_000)), Some(b));
    s.settle(1.2, b, 0.0);
    assert_eq!(s.levels(1.2), (297.0 - 2.0, 27_000.0 - 5_000.0));
    // a's answer comes later: b, answered after a was granted, may have reached the provider
    // after a did (the network orders requests as it likes), so it counts as well as c.
    s.report(1.3, &bucket_report(&r, full, (298, 29_000)), Some(a));
    s.settle(1.3, a, 0.0);
    assert_eq!(s.levels(1.3), (296.0, 23_000.0));
    // c's answer: a and b were answered after c was granted.
    s.report(1.4, &bucket_report(&r, full, (296, 23_000)), Some(c));
    s.settle(1.4, c, 0.0);
    assert_eq!(s.levels(1.4), (294.0, 20_000.0));
    assert_eq!(s.in_flight(1.4), (0.0, 0.0));
    // A grant made after every answer: its report is the truth, up as well as down.
    let d = s.try_take(2.0, 100.0).unwrap();
    s.report(2.1, &bucket_report(&r, full, (299, 29_900)), Some(d));
    assert_eq!(s.levels(2.1), (299.0, 29_900.0));
}

#[test]
fn a_spent_bucket_refills_instead_of_pausing_until_it_is_whole() {
    let r = rates();
    let mut s = BudgetState::new(r, 0.0);
    let full = (600.0, 60_000.0);
    s.report(0.0, &bucket_report(&r, full, (300, 30_000)), None);
    s.report(0.0, &bucket_report(&r, full, (200, 20_000)), None);
    // Nothing left: a window would wait for its reset (60 s here); a bucket has 100 tokens
    // back in 0.1 s.
    s.report(1.0, &bucket_report(&r, full, (0, 0)), None);
    assert_eq!(s.paused_for(1.0), None);
    let wait = s.try_take(1.0, 100.0).unwrap_err();
    assert!((wait - 0.1).abs() < 1e-9, "{wait}");
    // A 429 still pauses for its Retry-After.
    s.report(2.0, &RateSignals::throttle(Some(Duration::from_secs(3))), None);
    assert_eq!(s.paused_for(2.0), Some(3.0));
}

/// The server's limiter in a simulation.
#[derive(Debug, Clone, Copy)]
enum Server {
    /// Full at start, `depth` seconds of budget deep, refilled continuously.
    Bucket { depth: f64 },
    /// An exact rolling minute, empty at start.
    Window,
}

/// The server's state: a bucket's levels, or a window's admitted (time, tokens).
enum Limit {
    Bucket { req: f64, tok: f64, at: f64, cap: (f64, f64) },
    Window(VecDeque<(f64, f64)>),
}

impl Limit {
    fn new(server: Server, r: &Rates) -> Self {
        match server {
            Server::Bucket { depth } => {
                let cap = (r.requests_per_sec * depth, r.tokens_per_sec * depth);
                Limit::Bucket { req: cap.0, tok: cap.1, at: 0.0, cap }
            }
            Server::Window => Limit::Window(VecDeque::new()),
        }
    }

    /// Admits a request at `now` (its answer's headers) or refuses it.
    fn admit(&mut self, now: f64, tokens: f64, r: &Rates) -> Option<RateSignals> {
        let ms = |s: f64| Duration::from_millis((s.max(0.0) * 1000.0).ceil() as u64);
        match self {
            Limit::Bucket { req, tok, at, cap } => {
                *req = (*req + r.requests_per_sec * (now - *at)).min(cap.0);
                *tok = (*tok + r.tokens_per_sec * (now - *at)).min(cap.1);
                *at = now;
                if *req < 1.0 || *tok < tokens {
                    return None;
                }
                *req -= 1.0;
                *tok -= tokens;
                Some(RateSignals {
                    remaining_requests: Some(req.floor() as u64),
                    reset_requests: Some(ms((cap.0 - *req) / r.requests_per_sec)),
                    remaining_tokens: Some(tok.floor() as u64),
                    reset_tokens: Some(ms((cap.1 - *tok) / r.tokens_per_sec)),
                    ..RateSignals::default()
                })
            }
            Limit::Window(admitted) => {
                while admitted.front().is_some_and(|&(at, _)| at + 60.0 <= now) {
                    admitted.pop_front();
                }
                let spent: f64 = admitted.iter().map(|a| a.1).sum();
                if admitted.len() as f64 + 1.0 > r.requests_per_window || spent + tokens > r.tokens_per_window {
                    return None;
                }
                admitted.push_back((now, tokens));
                let reset = ms(admitted.front().map_or(0.0, |&(at, _)| at + 60.0 - now));
                Some(RateSignals {
                    remaining_requests: Some((r.requests_per_window - admitted.len() as f64) as u64),
                    reset_requests: Some(reset),
                    remaining_tokens: Some((r.tokens_per_window - spent - tokens).floor() as u64),
                    reset_tokens: Some(reset),
                    ..RateSignals::default()
                })
            }
        }
    }
}

/// A request in flight: its grant, tokens, when it reaches the server and when its answer
/// comes back, and the answer once the server gave it (`None` inside: refused).
struct Flight {
    grant: u64,
    tokens: f64,
    arrives: f64,
    answered: f64,
    answer: Option<Option<RateSignals>>,
}

/// The longest a simulated request takes from its grant to its answer, in seconds.
const MAX_RTT: f64 = 0.1;

/// Sends `sizes` through a budget against `server`, `concurrency` requests at a time, each
/// reaching the server 5 ms after its grant and answered 5–95 ms later (pseudo-random from
/// `seed`). Returns the time of the last admission and how many requests were refused.
fn simulate(server: Server, r: Rates, sizes: &[f64], concurrency: usize, seed: u64) -> (f64, usize) {
    let mut s = BudgetState::new(r, 0.0);
    let mut limit = Limit::new(server, &r);
    let mut pending: VecDeque<f64> = sizes.iter().copied().collect();
    let mut flights: Vec<Flight> = Vec::new();
    let (mut now, mut next_try, mut last, mut refused, mut rng) = (0.0f64, 0.0f64, 0.0f64, 0usize, seed | 1);
    let mut random = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        (rng % 10_000) as f64 / 10_000.0
    };
    while !pending.is_empty() || !flights.is_empty() {
        let can_send = !pending.is_empty() && flights.len() < concurrency;
        let arrival = flights.iter().filter(|f| f.answer.is_none()).map(|f| f.arrives).fold(f64::INFINITY, f64::min);
        let answer = flights.iter().filter(|f| f.answer.is_some()).map(|f| f.answered).fold(f64::INFINITY, f64::min);
        let send = if can_send { next_try.max(now) } else { f64::INFINITY };
        now = send.min(arrival).min(answer);
        assert!(now < 3_600.0, "stuck");
        if now == arrival {
            let f = flights.iter_mut().find(|f| f.answer.is_none() && f.arrives == now).expect("arrival");
            let a = limit.admit(now, f.tokens, &r);
            if a.is_some() {
                last = now;
            }
            f.answer = Some(a);
        } else if now == answer {
            let i = flights.iter().position(|f| f.answer.is_some() && f.answered == now).expect("answer");
            let f = flights.swap_remove(i);
            match f.answer.flatten() {
                Some(signals) => s.report(now, &signals, Some(f.grant)),
                None => {
                    refused += 1;
                    pending.push_front(f.tokens);
                    s.report(now, &RateSignals::throttle(Some(Duration::from_secs(1))), Some(f.grant))
                }
            };
            s.settle(now, f.grant, 0.0);
            next_try = now;
        } else {
            let tokens = pending[0];
            match s.try_take(now, tokens) {
                Ok(grant) => {
                    pending.pop_front();
                    let arrives = now + 0.005;
                    let answered = arrives + 0.005 + (MAX_RTT - 0.01) * random();
                    flights.push(Flight { grant, tokens, arrives, answered, answer: None });
                }
                Err(w) => next_try = now + w.min(1.0),
            }
        }
    }
    (last, refused)
}

/// The earliest the server could admit the last of `sizes`.
fn best(server: Server, r: &Rates, sizes: &[f64]) -> f64 {
    match server {
        Server::Bucket { depth } => {
            let tokens: f64 = sizes.iter().sum();
            let by_tokens = (tokens - r.tokens_per_sec * depth) / r.tokens_per_sec;
            let by_requests = (sizes.len() as f64 - r.requests_per_sec * depth) / r.requests_per_sec;
            by_tokens.max(by_requests).max(0.0)
        }
        Server::Window => {
            let (mut minutes, mut req, mut tok) = (0.0, 0.0, 0.0);
            for &t in sizes {
                if req + 1.0 > r.requests_per_window || tok + t > r.tokens_per_window {
                    minutes += 1.0;
                    (req, tok) = (0.0, 0.0);
                }
                req += 1.0;
                tok += t;
            }
            minutes * 60.0
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Against a bucket of any depth or a rolling window, with up to 16 requests in flight
    /// answered in any order: the server never refuses a request, and the backlog is done
    /// within 3 % (plus a second and a half) of the best possible time. Against a window the
    /// second minute follows the first at the client's own pace (its grants leave the window
    /// as they were made), which the bound adds.
    #[test]
    fn the_server_never_refuses_and_the_budget_is_spent_in_full(
        server in prop_oneof![
            Just(Server::Bucket { depth: 60.0 }),
            Just(Server::Bucket { depth: 2.0 }),
            Just(Server::Window),
        ],
        by_requests in any::<bool>(),
        concurrency in 8usize..16,
        seed in any::<u64>(),
    ) {
        let r = rates();
        // About two minutes' worth, binding on tokens (300 a request) or requests (20).
        let sizes: Vec<f64> = if by_requests {
            vec![20.0; 1_150]
        } else {
            (0..400).map(|i| 250.0 + f64::from(i % 7) * 15.0).collect()
        };
        let (last, refused) = simulate(server, r, &sizes, concurrency, seed);
        let best = best(server, &r, &sizes);
        prop_assert_eq!(refused, 0, "{:?}: refused", server);
        let pace = match server {
            Server::Window => sizes.len().min(600) as f64 * MAX_RTT / concurrency as f64 + 0.5,
            Server::Bucket { .. } => 0.0,
        };
        prop_assert!(
            last <= best * 1.03 + 1.5 + pace,
            "{:?}: last admission at {:.1} s, best {:.1} s", server, last, best
        );
    }
}
