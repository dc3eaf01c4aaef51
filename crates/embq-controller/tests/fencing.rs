//! The Lease as a fence: a replica acts only while it holds the Lease, checks it before
//! every eviction, gives it up on shutdown, bounds each tick below it, and
//! carries the guards' memory in it across restarts and failovers.

mod support;

use std::time::Duration;

use embq_controller::controller;
use embq_controller::policy::{Guard, Verdict, MEMORY_ANNOTATION};
use serde_json::json;
use support::*;

/// The Lease passes to another replica between the decision (and its budget check) and
/// the eviction: the eviction is not made.
#[tokio::test]
async fn losing_the_lease_mid_restart_stops_before_the_eviction() {
    let ((ctx, workers), mut api) = controller_with_workers(failing_and_two_serving()).await;
    let tick = spawn_tick(&ctx);
    api.lease_renewed().await;
    api.fleet(three_pods(&workers), deployment(3, json!({})), None, ready_hpa(3, json!({}))).await;
    // Before the eviction: another replica holds a live Lease now.
    api.expect("GET", &lease_uri()).await.ok(lease("other", 0));
    leader(tick.await.expect("task").expect("tick"));
    restarts_done(&ctx).await;
    api.assert_idle();
    let text = ctx.metrics.encode();
    assert!(text.contains(r#"restart_controller_restart_outcomes_total{kind="lease_lost"} 1"#), "{text}");
}

/// A failing renewal before the eviction (API error) reads as "not leading": no eviction.
#[tokio::test]
async fn an_unanswerable_lease_check_stops_before_the_eviction() {
    let ((ctx, workers), mut api) = controller_with_workers(failing_and_two_serving()).await;
    let tick = spawn_tick(&ctx);
    api.lease_renewed().await;
    api.fleet(three_pods(&workers), deployment(3, json!({})), None, ready_hpa(3, json!({}))).await;
    api.expect("GET", &lease_uri()).await.status(500, "InternalError", "etcd timeout");
    leader(tick.await.expect("task").expect("tick"));
    restarts_done(&ctx).await;
    api.assert_idle();
    let log = api.log.entries();
    assert!(!log.iter().any(|e| e.ends_with(&eviction_uri("w-a"))), "no eviction without the Lease: {log:#?}");
}

/// On shutdown the holder clears the Lease, so the next replica need not wait it out.
#[tokio::test]
async fn shutdown_releases_the_lease() {
    let (ctx, mut api) = controller(&[]);
    let run = tokio::spawn(controller::run(ctx.clone()));
    api.expect("GET", &lease_uri()).await.status(404, "NotFound", "leases not found");
    api.expect("POST", "/apis/coordination.k8s.io/v1/namespaces/ns/leases?").await.echo(201);
    api.fleet(pod_list(&[]), deployment(1, json!({})), None, no_hpas()).await;
    ctx.shutdown.cancel();
    api.expect("GET", &lease_uri()).await.ok(lease("me", 0));
    let put = api.expect("PUT", &format!("{}?", lease_uri())).await;
    assert_eq!(put.body["spec"]["holderIdentity"], "");
    assert!(put.body["metadata"]["annotations"][MEMORY_ANNOTATION].is_string(), "memory kept: {}", put.body);
    put.echo(200);
    tokio::time::timeout(STEP, run).await.expect("loop stops").expect("join");
    api.assert_idle();
}

/// A new controller pod takes over a released Lease whose memory says w-a was restarted a
/// minute ago: the cooldown holds across the rollout, and the cap counts that restart.
#[tokio::test]
async fn cooldowns_and_the_cap_survive_a_controller_restart() {
    let ((ctx, workers), mut api) =
        controller_with_workers_args(failing_and_two_serving(), &["--max-actions", "1"]).await;
    let minute_ago = (chrono::Utc::now() - chrono::Duration::seconds(60)).timestamp_millis();
    let memory = json!({"disruptions": [minute_ago], "cooldowns": {"w-a": minute_ago}}).to_string();
    let mut released = lease("", 1);
    released["metadata"]["annotations"] = json!({ MEMORY_ANNOTATION: memory });
    let tick = spawn_tick(&ctx);
    api.expect("GET", &lease_uri()).await.ok(released);
    let put = api.expect("PUT", &format!("{}?", lease_uri())).await;
    assert_eq!(put.body["spec"]["holderIdentity"], "me");
    put.echo(200);
    api.fleet(three_pods(&workers), deployment(3, json!({})), None, ready_hpa(3, json!({}))).await;
    let decisions = leader(tick.await.expect("task").expect("tick"));
    assert_eq!(decisions.len(), 1);
    assert_eq!(decisions[0].verdict, Verdict::Suppressed(Guard::Cooldown));
    restarts_done(&ctx).await;
    api.assert_idle();
}

/// The API server stops answering mid-tick: the tick fails at its deadline (two thirds of
/// the Lease) instead of acting late on what it read.
#[tokio::test]
async fn a_tick_has_a_deadline_below_the_lease() {
    tokio::time::pause();
    let (ctx, mut api) = controller(&["--lease-duration", "30s", "--interval", "10s"]);
    let tick = spawn_tick(&ctx);
    api.lease_renewed().await;
    let stuck = api.expect("GET", &pods_uri()).await;
    let err = tokio::time::timeout(Duration::from_secs(60), tick)
        .await
        .expect("the deadline fires first")
        .expect("task")
        .expect_err("the tick fails");
    assert_eq!(err.kind(), "deadline");
    assert!(err.to_string().contains("20s"), "{err}");
    drop(stuck);
}

/// Another replica's renewTime is an hour behind this node's clock (skew): the Lease is
/// live as long as its renewals keep changing; it is taken over only after it stayed
/// unchanged for a full Lease duration by this replica's own clock.
#[tokio::test]
async fn takeover_is_judged_by_the_local_clock_not_the_holders_renew_time() {
    tokio::time::pause();
    let (ctx, mut api) = controller(&["--lease-duration", "30s", "--interval", "10s"]);
    let skewed = lease("other", 3600);
    for _ in 0..3 {
        let tick = spawn_tick(&ctx);
        api.expect("GET", &lease_uri()).await.ok(skewed.clone());
        assert!(matches!(tick.await.expect("task").expect("tick"), embq_controller::controller::Tick::Follower));
        tokio::time::advance(Duration::from_secs(10)).await;
    }
    api.assert_idle();
    // 30 s unchanged is not yet past the duration; 31 s is.
    tokio::time::advance(Duration::from_secs(1)).await;
    let tick = spawn_tick(&ctx);
    api.expect("GET", &lease_uri()).await.ok(skewed.clone());
    let put = api.expect("PUT", &format!("{}?", lease_uri())).await;
    assert_eq!(put.body["spec"]["holderIdentity"], "me");
    put.echo(200);
    api.fleet(pod_list(&[]), deployment(1, json!({})), None, no_hpas()).await;
    leader(tick.await.expect("task").expect("tick"));
    api.assert_idle();
}
