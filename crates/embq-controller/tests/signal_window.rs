//! Window coverage (issue 18, item 7): an error rate is judged only on samples spanning at
//! least 80 % of SIGNAL_WINDOW. Two quick looks after a start or a failover are not a
//! five-minute signal, however bad they look.

mod support;

use std::time::Duration;

use embq_controller::policy::{Action, Reason, Verdict};
use serde_json::json;
use support::*;
use tokio::time::Instant;

/// Counters as a worker exposes them: jobs processed and failed so far, nothing in flight.
fn counters(processed: u32, failed: u32) -> Behavior {
    let text = format!(
        "embedding_jobs_processed_total {processed}\nembedding_jobs_failed_total {failed}\nembedding_inflight_jobs 0\n"
    );
    Behavior::healthy(&text)
}

/// One tick answered with three Ready pods; returns its decisions.
async fn look(
    ctx: &std::sync::Arc<embq_controller::controller::Context>,
    api: &mut MockApi,
    workers: &Workers,
) -> Vec<embq_controller::policy::Decision> {
    let pods = pod_list(&[
        pod(&PodSpec::ready("w-a", workers.ips[0])),
        pod(&PodSpec::ready("w-b", workers.ips[1])),
        pod(&PodSpec::ready("w-c", workers.ips[2])),
    ]);
    let tick = spawn_tick(ctx);
    api.lease_renewed().await;
    api.fleet(pods, deployment(3, json!({})), None, ready_hpa(3, json!({}))).await;
    leader(tick.await.expect("task").expect("tick"))
}

#[tokio::test]
async fn a_burst_shorter_than_the_window_is_not_judged() {
    const WINDOW: Duration = Duration::from_secs(2);
    let start = vec![counters(0, 0), counters(100, 0), counters(100, 0)];
    let ((ctx, workers), mut api) = controller_with_workers_args(start, &["--signal-window", "2s"]).await;

    let first = Instant::now();
    assert!(look(&ctx, &mut api, &workers).await.is_empty());
    // 40 of 50 jobs failed on w-a since the first look; the others finished 100 each, cleanly.
    workers.set(0, counters(10, 40));
    workers.set(1, counters(200, 0));
    workers.set(2, counters(200, 0));
    let second = look(&ctx, &mut api, &workers).await;
    assert!(first.elapsed() < WINDOW.mul_f64(0.8), "the second look came too late to test a short span");
    assert!(second.is_empty(), "judged on a span of {:?}: {second:?}", first.elapsed());

    // The same counters, looked at until the samples span the window: then w-a is an
    // outlier with an 80 % error rate and is restarted. Bounded by the window itself.
    let deadline = first + WINDOW + Duration::from_secs(5);
    let decisions = loop {
        let decisions = look(&ctx, &mut api, &workers).await;
        if !decisions.is_empty() || Instant::now() > deadline {
            break decisions;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let judged_after = first.elapsed();
    assert!(judged_after >= WINDOW.mul_f64(0.8), "judged after {judged_after:?}");
    assert_eq!(
        (decisions[0].action, decisions[0].reason, decisions[0].verdict, decisions[0].pod()),
        (Action::GracefulRestart, Reason::ErrorRate, Verdict::Act, Some("w-a"))
    );
    // The restart itself: fence, then a budget that refuses; nothing else.
    api.lease_renewed().await;
    api.expect("POST", &eviction_uri("w-a")).await.status(429, "TooManyRequests", "budget");
    assert_eq!(api.expect_event("w-a").await.0, "EvictionRefused");
    restarts_done(&ctx).await;
    api.assert_idle();
}
