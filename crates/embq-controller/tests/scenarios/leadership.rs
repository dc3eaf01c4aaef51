//! Leadership and failure handling: a follower acts on nothing, API errors back off.

use embq_controller::controller::{self, Tick};
use embq_controller::policy::{Guard, Verdict};
use serde_json::json;

use super::support::*;
use super::Requests;

/// Another replica holds a live Lease: this one reads the Lease and does nothing else.
/// When the holder releases it, this one takes it over (with the resourceVersion it read).
pub async fn follower_takes_no_action() -> Requests {
    let ((ctx, workers), mut api) = controller_with_workers(vec![Behavior::failing_health()]).await;
    let tick = spawn_tick(&ctx);
    api.expect("GET", &lease_uri()).await.ok(lease("other", 1));
    assert!(matches!(tick.await.expect("task").expect("tick"), Tick::Follower));
    api.assert_idle();
    assert!(ctx.metrics.encode().contains("restart_controller_leader 0"));
    assert!(api.log.entries().iter().all(|e| !e.starts_with("worker ")), "a follower scrapes nothing");

    // The holder released it (shut down): take over at once, then act.
    let tick = spawn_tick(&ctx);
    api.expect("GET", &lease_uri()).await.ok(lease("", 120));
    let put = api.expect("PUT", &format!("{}?", lease_uri())).await;
    assert_eq!(put.body["spec"]["holderIdentity"], "me");
    assert_eq!(put.body["metadata"]["resourceVersion"], "7");
    put.echo(200);
    let pods = pod_list(&[pod(&PodSpec::not_ready("w-a", workers.ips[0]))]);
    api.fleet(pods, deployment(1, json!({})), None, ready_hpa(1, json!({}))).await;
    // It leads now (it scraped the worker); a single pod is no outlier: skipped, said so.
    let (reason, _) = api.expect_event("w-a").await;
    assert_eq!(reason, "RemediationSkipped");
    let decisions = leader(tick.await.expect("task").expect("tick"));
    assert_eq!(decisions[0].verdict, Verdict::Skipped(Guard::SharedCause));
    restarts_done(&ctx).await;
    assert!(ctx.metrics.encode().contains("restart_controller_leader 1"));

    // Two replicas racing for the Lease: the loser gets 409 and follows.
    let tick = spawn_tick(&ctx);
    api.expect("GET", &lease_uri()).await.ok(lease("", 120));
    api.expect("PUT", &format!("{}?", lease_uri())).await.status(409, "Conflict", "the object has been modified");
    assert!(matches!(tick.await.expect("task").expect("tick"), Tick::Follower));
    api.assert_idle();
    api.seen
}

/// An API error fails the tick, the loop backs off and tries again: never fatal.
pub async fn list_errors_are_retried_with_backoff() -> Requests {
    tokio::time::pause();
    let (ctx, mut api) = controller(&["--leader-election", "false", "--interval", "5s"]);
    let run = tokio::spawn(controller::run(ctx.clone()));
    api.expect("GET", &pods_uri()).await.status(500, "InternalError", "etcd is sad");
    let failed_at = tokio::time::Instant::now();
    api.expect("GET", &pods_uri()).await.status(503, "ServiceUnavailable", "still sad");
    // Second failure: after the first back-off step (1 s).
    assert!(failed_at.elapsed() >= std::time::Duration::from_secs(1));
    // Failed ticks do not count as signs of life for /health.
    assert!(ctx.liveness.since_success() >= std::time::Duration::from_secs(1));
    let failed_at = tokio::time::Instant::now();
    api.fleet(pod_list(&[]), deployment(1, json!({})), None, no_hpas()).await;
    assert!(failed_at.elapsed() >= std::time::Duration::from_secs(2), "doubled back-off");
    // Healthy again: the next tick comes one interval later.
    let ok_at = tokio::time::Instant::now();
    api.expect("GET", &pods_uri()).await.ok(pod_list(&[]));
    assert!(ctx.liveness.since_success() <= ok_at.elapsed(), "the successful tick was recorded");
    assert!(ok_at.elapsed() >= std::time::Duration::from_secs(5));
    ctx.shutdown.cancel();
    api.expect("GET", &format!("/apis/apps/v1/namespaces/{NS}/deployments/embedding-queue-workers"))
        .await
        .status(404, "NotFound", "gone");
    tokio::time::timeout(STEP, run).await.expect("loop stops").expect("join");
    let text = ctx.metrics.encode();
    assert!(text.contains(r#"restart_controller_reconcile_errors_total{kind="kube_api"} 2"#), "{text}");
    assert!(text.contains(r#"restart_controller_reconcile_errors_total{kind="deployment_missing"} 1"#), "{text}");
    api.seen
}

#[tokio::test]
async fn a_follower_takes_no_action_until_the_lease_is_released() {
    follower_takes_no_action().await;
}

#[tokio::test]
async fn api_errors_are_retried_with_backoff_never_fatal() {
    list_errors_are_retried_with_backoff().await;
}
