//! The graceful restart's steps when they do not go to plan: a drain that does not
//! finish, a budget that refuses after the drain, a replacement that never becomes
//! Ready (or comes from another ReplicaSet), and Failed pods left in the list.

mod support;

use embq_controller::kube_api::PAUSE_ANNOTATION;
use embq_controller::policy::{Action, Guard, Reason, Verdict};
use serde_json::{json, Value};
use support::*;

/// Busy worker: in-flight never reaches 0.
fn busy() -> Behavior {
    Behavior { metrics: "embedding_inflight_jobs 2\n".into(), ..Behavior::failing_health() }
}

/// The drain runs out of time: the eviction goes ahead (SIGTERM gives the rest of the
/// grace period) and the Event says the drain was still running. Then the budget, which
/// allowed the dry run, refuses the real eviction: a Warning, no retry.
#[tokio::test]
async fn drain_timeout_then_eviction_refused_after_the_drain() {
    let ok = || Behavior::healthy(&worker_metrics(0.0, 1.0, 0.0));
    let ((ctx, workers), mut api) =
        controller_with_workers_args(vec![busy(), ok(), ok()], &["--drain-timeout", "100ms"]).await;
    let tick = spawn_tick(&ctx);
    api.lease_renewed().await;
    api.fleet(three_pods(&workers), deployment(3, json!({})), None, ready_hpa(3, json!({}))).await;
    api.expect("POST", &eviction_uri("w-a", true)).await.reply(201, status_body(201, "", ""));
    api.lease_renewed().await;
    assert_eq!(api.expect_event("w-a").await.0, "Draining");
    api.lease_renewed().await;
    api.expect("POST", &eviction_uri("w-a", false)).await.status(
        429,
        "TooManyRequests",
        "Cannot evict pod as it would violate the pod's disruption budget.",
    );
    let (reason, message) = api.expect_event("w-a").await;
    assert_eq!(reason, "EvictionRefused");
    assert!(message.starts_with("drain still running at the deadline"), "{message}");
    leader(tick.await.expect("task").expect("tick"));
    restarts_done(&ctx).await;
    api.assert_idle();
    assert!(ctx.metrics.encode().contains(r#"restart_outcomes_total{kind="eviction_refused"} 1"#));
}

/// After the eviction only a pod of another ReplicaSet (a canary, a scale-up of another
/// template) becomes Ready: that is not the replacement. Warning `ReplacementNotReady`.
#[tokio::test]
async fn a_replacement_must_come_from_the_same_replica_set() {
    let ok = || Behavior::healthy(&worker_metrics(0.0, 1.0, 0.0));
    let ((ctx, workers), mut api) =
        controller_with_workers_args(vec![Behavior::failing_health(), ok(), ok()], &["--replacement-timeout", "300ms"])
            .await;
    let [a, b, c] = [workers.ips[0], workers.ips[1], workers.ips[2]];
    let rs = |p: Value| owned(p, "workers-aaa", "aaa");
    let pods = pod_list(&[
        rs(pod(&PodSpec::not_ready("w-a", a))),
        rs(pod(&PodSpec::ready("w-b", b))),
        rs(pod(&PodSpec::ready("w-c", c))),
    ]);
    let tick = spawn_tick(&ctx);
    api.lease_renewed().await;
    api.fleet(pods, deployment(3, json!({})), None, ready_hpa(3, json!({}))).await;
    api.expect("POST", &eviction_uri("w-a", true)).await.reply(201, status_body(201, "", ""));
    api.lease_renewed().await;
    assert_eq!(api.expect_event("w-a").await.0, "Draining");
    api.lease_renewed().await;
    api.expect("POST", &eviction_uri("w-a", false)).await.reply(201, status_body(201, "", ""));
    assert_eq!(api.expect_event("w-a").await.0, "Evicted");
    let after = pod_list(&[
        rs(pod(&PodSpec::ready("w-b", b))),
        rs(pod(&PodSpec::ready("w-c", c))),
        owned(pod(&PodSpec::ready("canary-1", b)), "canary-bbb", "bbb"),
        rs(pod(&PodSpec::not_ready("w-d", b))),
    ]);
    // Answer the replacement polls until the verdict.
    let message = loop {
        let call = api.next().await;
        if call.uri == pods_uri() {
            call.ok(after.clone());
            continue;
        }
        assert!(call.uri.ends_with("/events?"), "{}", call.uri);
        assert_eq!(call.body["reason"], "ReplacementNotReady");
        let message = call.body["message"].as_str().unwrap_or_default().to_owned();
        call.echo(201);
        break message;
    };
    assert!(message.contains("no replacement became Ready"), "{message}");
    leader(tick.await.expect("task").expect("tick"));
    restarts_done(&ctx).await;
    api.assert_idle();
    assert!(ctx.metrics.encode().contains(r#"restart_outcomes_total{kind="replacement_not_ready"} 1"#));
}

/// Two pods in phase Failed (a kubelet eviction under node pressure leaves them): they
/// are not part of the fleet, so they neither spend the disruption budget nor lower the
/// Ready share. A Ready worker whose /health fails and whose container the kubelet
/// restarted is still restarted.
#[tokio::test]
async fn failed_pods_do_not_spend_the_budget() {
    let ok = || Behavior::healthy(&worker_metrics(0.0, 1.0, 0.0));
    let ((ctx, workers), mut api) = controller_with_workers(vec![Behavior::failing_health(), ok(), ok()]).await;
    let failed = |name: &str| {
        let mut p = pod(&PodSpec { ip: None, ..PodSpec::not_ready(name, workers.ips[0]) });
        p["status"]["phase"] = json!("Failed");
        p["status"]["reason"] = json!("Evicted");
        p
    };
    let pods = |restarts| {
        pod_list(&[
            pod(&PodSpec { restarts, ..PodSpec::ready("w-a", workers.ips[0]) }),
            pod(&PodSpec::ready("w-b", workers.ips[1])),
            pod(&PodSpec::ready("w-c", workers.ips[2])),
            failed("w-old-1"),
            failed("w-old-2"),
        ])
    };
    let tick = spawn_tick(&ctx);
    api.lease_renewed().await;
    api.fleet(pods(0), deployment(3, json!({})), None, ready_hpa(3, json!({}))).await;
    assert!(leader(tick.await.expect("task").expect("tick")).is_empty());

    let tick = spawn_tick(&ctx);
    api.lease_renewed().await;
    api.fleet(pods(1), deployment(3, json!({})), None, ready_hpa(3, json!({}))).await;
    api.expect("POST", &eviction_uri("w-a", true)).await.status(429, "TooManyRequests", "budget");
    assert_eq!(api.expect_event("w-a").await.0, "EvictionRefused");
    let decisions = leader(tick.await.expect("task").expect("tick"));
    assert_eq!(
        (decisions[0].action, decisions[0].reason, decisions[0].verdict),
        (Action::GracefulRestart, Reason::HealthCheck, Verdict::Act)
    );
    restarts_done(&ctx).await;
    api.assert_idle();
}

/// The pause switch on the worker Deployment stops every action; lifting it lets the
/// held restart go ahead on the next tick.
#[tokio::test]
async fn the_pause_switch_stops_every_action() {
    let ((ctx, workers), mut api) = controller_with_workers(failing_and_two_serving()).await;
    let tick = spawn_tick(&ctx);
    api.lease_renewed().await;
    let paused = deployment(3, json!({ PAUSE_ANNOTATION: "true" }));
    api.fleet(three_pods(&workers), paused, None, ready_hpa(3, json!({}))).await;
    let decisions = leader(tick.await.expect("task").expect("tick"));
    assert_eq!(decisions[0].verdict, Verdict::Suppressed(Guard::Paused));
    restarts_done(&ctx).await;
    api.assert_idle();

    let tick = spawn_tick(&ctx);
    api.lease_renewed().await;
    api.fleet(three_pods(&workers), deployment(3, json!({})), None, ready_hpa(3, json!({}))).await;
    api.expect("POST", &eviction_uri("w-a", true)).await.status(429, "TooManyRequests", "budget");
    assert_eq!(api.expect_event("w-a").await.0, "EvictionRefused");
    assert_eq!(leader(tick.await.expect("task").expect("tick"))[0].verdict, Verdict::Act);
    restarts_done(&ctx).await;
    api.assert_idle();
}

/// `/shutdown` answers 401 (a token out of step with the workers'): the controller
/// says so without the token, and evicts anyway: SIGTERM also drains.
#[tokio::test]
async fn a_refused_shutdown_call_still_ends_in_an_eviction() {
    let ((ctx, workers), mut api) = controller_with_workers_args(
        failing_and_two_serving(),
        &["--shutdown-token", "stale-token-value", "--replacement-timeout", "100ms"],
    )
    .await;
    let tick = spawn_tick(&ctx);
    api.lease_renewed().await;
    api.fleet(three_pods(&workers), deployment(3, json!({})), None, ready_hpa(3, json!({}))).await;
    api.expect("POST", &eviction_uri("w-a", true)).await.reply(201, status_body(201, "", ""));
    api.lease_renewed().await;
    let (reason, message) = api.expect_event("w-a").await;
    assert_eq!(reason, "Draining");
    assert!(message.contains("401"), "{message}");
    assert!(!message.contains("stale-token-value"), "no secret in Events: {message}");
    evicted_undrained_and_never_replaced(&mut api).await;
    leader(tick.await.expect("task").expect("tick"));
    restarts_done(&ctx).await;
    api.assert_idle();
    assert!(api.log.entries().iter().any(|e| e.ends_with("POST /shutdown (unauthorized)")));
}

/// `/shutdown` takes the request and never answers (a worker wedged mid-drain): the call gives
/// up at the scrape timeout instead of holding the restart, and the pod is evicted.
#[tokio::test]
async fn a_shutdown_call_that_never_answers_times_out_into_an_eviction() {
    let mut behaviors = failing_and_two_serving();
    behaviors[0].shutdown_hangs = true;
    let ((ctx, workers), mut api) =
        controller_with_workers_args(behaviors, &["--scrape-timeout", "300ms", "--replacement-timeout", "100ms"]).await;
    let tick = spawn_tick(&ctx);
    api.lease_renewed().await;
    api.fleet(three_pods(&workers), deployment(3, json!({})), None, ready_hpa(3, json!({}))).await;
    api.expect("POST", &eviction_uri("w-a", true)).await.reply(201, status_body(201, "", ""));
    api.lease_renewed().await;
    let (reason, message) = api.expect_event("w-a").await;
    assert_eq!(reason, "Draining");
    assert!(message.contains("shutdown call failed"), "{message}");
    evicted_undrained_and_never_replaced(&mut api).await;
    leader(tick.await.expect("task").expect("tick"));
    restarts_done(&ctx).await;
    api.assert_idle();
    assert!(api.log.entries().iter().any(|e| e.ends_with("POST /shutdown (no answer)")), "the call reached the worker");
}

/// After a failed `/shutdown`: w-a is evicted without a drain, and the replacement check runs
/// to its (short) deadline with no new pod.
async fn evicted_undrained_and_never_replaced(api: &mut MockApi) {
    api.lease_renewed().await;
    api.expect("POST", &eviction_uri("w-a", false)).await.reply(201, status_body(201, "", ""));
    let (reason, message) = api.expect_event("w-a").await;
    assert_eq!((reason.as_str(), message.as_str()), ("Evicted", "evicted (not drained)"));
    let verdict = loop {
        let call = api.next().await;
        if call.uri == pods_uri() {
            call.ok(pod_list(&[]));
            continue;
        }
        let reason = call.body["reason"].as_str().unwrap_or_default().to_owned();
        call.echo(201);
        break reason;
    };
    assert_eq!(verdict, "ReplacementNotReady");
}
