//! The graceful restart's steps: one restart per decision, and the steps that do not go
//! to plan: a drain that does not finish or cannot be seen, a replacement that never
//! becomes Ready (or comes from another ReplicaSet), and Failed pods left in the list.

mod support;

use embq_controller::kube_api::PAUSE_ANNOTATION;
use embq_controller::policy::{Action, Guard, Reason, Verdict};
use serde_json::{json, Value};
use support::*;

/// Busy worker: in-flight never reaches 0.
fn busy() -> Behavior {
    Behavior { metrics: "embedding_inflight_jobs 2\n".into(), ..Behavior::failing_health() }
}

/// One graceful restart disrupts the worker once: one eviction, whose SIGTERM drains it,
/// and no `POST /shutdown`, which would make the process exit (a container restart by the
/// kubelet) before the eviction replaced the pod as well.
#[tokio::test]
async fn one_graceful_restart_restarts_the_worker_once() {
    let ((ctx, workers), mut api) = controller_with_workers(failing_and_two_serving()).await;
    let a = workers.ips[0];
    let tick = spawn_tick(&ctx);
    api.lease_renewed().await;
    api.fleet(three_pods(&workers), deployment(3, json!({})), None, ready_hpa(3, json!({}))).await;
    api.lease_renewed().await;
    api.expect("POST", &eviction_uri("w-a")).await.reply(201, status_body(201, "", ""));
    assert_eq!(api.expect_event("w-a").await.0, "Evicted");
    assert_eq!(api.expect_event("w-a").await.0, "Drained");
    answer_replacement_polls(&mut api, pod_list(&[pod(&PodSpec::ready("w-d", a))]), "ReplacementReady").await;
    leader(tick.await.expect("task").expect("tick"));
    restarts_done(&ctx).await;
    api.assert_idle();

    let log = api.log.entries();
    let container_restarts = log.iter().filter(|e| e.ends_with("POST /shutdown")).count();
    let evictions = log.iter().filter(|e| e.ends_with(&eviction_uri("w-a"))).count();
    assert_eq!((container_restarts, evictions), (0, 1), "one restart, by eviction: {log:#?}");
    assert!(ctx.metrics.encode().contains(r#"restart_outcomes_total{kind="replacement_ready"} 1"#));
}

/// The worker is still busy when the drain deadline comes: a Warning says so (the kubelet
/// ends it at its grace period), and the replacement check still runs.
#[tokio::test]
async fn a_drain_that_does_not_finish_is_reported() {
    let ok = || Behavior::healthy(&worker_metrics(0.0, 1.0, 0.0));
    let ((ctx, workers), mut api) =
        controller_with_workers_args(vec![busy(), ok(), ok()], &["--drain-timeout", "100ms"]).await;
    let tick = spawn_tick(&ctx);
    api.lease_renewed().await;
    api.fleet(three_pods(&workers), deployment(3, json!({})), None, ready_hpa(3, json!({}))).await;
    api.lease_renewed().await;
    api.expect("POST", &eviction_uri("w-a")).await.reply(201, status_body(201, "", ""));
    assert_eq!(api.expect_event("w-a").await.0, "Evicted");
    let (reason, message) = api.expect_event("w-a").await;
    assert_eq!(reason, "DrainTimedOut");
    assert!(message.contains("not seen finished within"), "{message}");
    answer_replacement_polls(&mut api, pod_list(&[pod(&PodSpec::ready("w-d", workers.ips[1]))]), "ReplacementReady")
        .await;
    leader(tick.await.expect("task").expect("tick"));
    restarts_done(&ctx).await;
    api.assert_idle();
}

/// The worker's `/metrics` answers 500 while it drains: a failed poll says nothing about
/// the jobs in flight, so the controller keeps asking until the drain deadline and reports
/// the drain as unseen, never as "Drained".
#[tokio::test]
async fn a_failed_metrics_poll_is_not_drained() {
    let ok = || Behavior::healthy(&worker_metrics(0.0, 1.0, 0.0));
    let broken =
        Behavior { metrics_status: axum::http::StatusCode::INTERNAL_SERVER_ERROR, ..Behavior::failing_health() };
    let ((ctx, workers), mut api) =
        controller_with_workers_args(vec![broken, ok(), ok()], &["--drain-timeout", "200ms"]).await;
    let a = workers.ips[0];
    let tick = spawn_tick(&ctx);
    api.lease_renewed().await;
    api.fleet(three_pods(&workers), deployment(3, json!({})), None, ready_hpa(3, json!({}))).await;
    api.lease_renewed().await;
    api.expect("POST", &eviction_uri("w-a")).await.reply(201, status_body(201, "", ""));
    assert_eq!(api.expect_event("w-a").await.0, "Evicted");
    assert_eq!(api.expect_event("w-a").await.0, "DrainTimedOut");
    answer_replacement_polls(&mut api, pod_list(&[pod(&PodSpec::ready("w-d", workers.ips[1]))]), "ReplacementReady")
        .await;
    leader(tick.await.expect("task").expect("tick"));
    restarts_done(&ctx).await;
    api.assert_idle();
    // It kept polling through the failures (at 10 ms for 200 ms) instead of stopping at the first.
    let failed_polls = api.log.entries().iter().filter(|e| *e == &format!("worker {a} GET /metrics 500")).count();
    assert!(failed_polls >= 3, "{failed_polls} polls");
}

/// Answers the replacement check's pod lists with `pods` until its verdict Event, which
/// must have reason `want`.
async fn answer_replacement_polls(api: &mut MockApi, pods: Value, want: &str) {
    let reason = loop {
        let call = api.next().await;
        if call.uri == pods_uri() {
            call.ok(pods.clone());
            continue;
        }
        assert!(call.uri.ends_with("/events?"), "{}", call.uri);
        let reason = call.body["reason"].as_str().unwrap_or_default().to_owned();
        call.echo(201);
        break reason;
    };
    assert_eq!(reason, want);
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
    api.lease_renewed().await;
    api.expect("POST", &eviction_uri("w-a")).await.reply(201, status_body(201, "", ""));
    assert_eq!(api.expect_event("w-a").await.0, "Evicted");
    assert_eq!(api.expect_event("w-a").await.0, "Drained");
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
    api.lease_renewed().await;
    api.expect("POST", &eviction_uri("w-a")).await.status(429, "TooManyRequests", "budget");
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
    api.lease_renewed().await;
    api.expect("POST", &eviction_uri("w-a")).await.status(429, "TooManyRequests", "budget");
    assert_eq!(api.expect_event("w-a").await.0, "EvictionRefused");
    assert_eq!(leader(tick.await.expect("task").expect("tick"))[0].verdict, Verdict::Act);
    restarts_done(&ctx).await;
    api.assert_idle();
}
