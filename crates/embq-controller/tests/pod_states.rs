//! What Kubernetes reports about a pod's containers, end to end against the mocked API
//! server: crash loops, OOM kills, image pulls, each with its Event and the one action
//! (if any) it calls for.

mod support;

use embq_controller::policy::{Action, Guard, Reason, Verdict};
use serde_json::json;
use support::*;

/// One crash-looping pod among three serving ones is evicted (no drain: it is not
/// serving). Its replacement — a new name, the same ReplicaSet — crash loops too: it is
/// reported, not evicted again. A canary on another template is never evicted.
#[tokio::test]
async fn a_crash_loop_is_evicted_once_per_replica_set() {
    let ok = || Behavior::healthy(&worker_metrics(0.0, 1.0, 0.0));
    let ((ctx, workers), mut api) = controller_with_workers(vec![ok(), ok(), ok()]).await;
    let serving =
        |name: &'static str, i: usize| owned(pod(&PodSpec::ready(name, workers.ips[i])), "workers-aaa", "aaa");
    let looping = |name: &'static str| PodSpec {
        waiting: Some("CrashLoopBackOff"),
        restarts: 5,
        ip: None,
        ..PodSpec::not_ready(name, workers.ips[0])
    };
    let fleet = |first: serde_json::Value| pod_list(&[first, serving("w-b", 0), serving("w-c", 1), serving("w-d", 2)]);

    let tick = spawn_tick(&ctx);
    api.lease_renewed().await;
    api.fleet(
        fleet(owned(pod(&looping("w-a")), "workers-aaa", "aaa")),
        deployment(4, json!({})),
        None,
        ready_hpa(4, json!({})),
    )
    .await;
    assert_eq!(api.expect_event("w-a").await.0, "CrashLoop");
    api.lease_renewed().await;
    api.expect("POST", &eviction_uri("w-a")).await.reply(201, status_body(201, "", ""));
    let (reason, message) = api.expect_event("w-a").await;
    assert_eq!(reason, "Evicted");
    assert!(message.contains("crash looping (5 restarts)"), "{message}");
    leader(tick.await.expect("task").expect("tick"));

    // The replacement crash loops as well.
    let tick = spawn_tick(&ctx);
    api.lease_renewed().await;
    api.fleet(
        fleet(owned(pod(&looping("w-e")), "workers-aaa", "aaa")),
        deployment(4, json!({})),
        None,
        ready_hpa(4, json!({})),
    )
    .await;
    assert_eq!(api.expect_event("w-e").await.0, "CrashLoop");
    let decisions = leader(tick.await.expect("task").expect("tick"));
    let evict = decisions.iter().find(|d| d.action == Action::Evict).expect("judged");
    assert_eq!(evict.verdict, Verdict::Suppressed(Guard::Cooldown));

    // A canary Deployment's pod (another ReplicaSet and template) crash loops.
    let tick = spawn_tick(&ctx);
    api.lease_renewed().await;
    api.fleet(
        fleet(owned(pod(&looping("canary-x")), "canary-bbb", "bbb")),
        deployment(4, json!({})),
        None,
        ready_hpa(4, json!({})),
    )
    .await;
    assert_eq!(api.expect_event("canary-x").await.0, "CrashLoop");
    let (reason, message) = api.expect_event("canary-x").await;
    assert_eq!(reason, "RemediationSkipped");
    assert!(message.contains("another template"), "{message}");
    leader(tick.await.expect("task").expect("tick"));
    api.assert_idle();
    let evictions = api.seen.iter().filter(|(_, u)| u.contains("/eviction")).count();
    assert_eq!(evictions, 1);
}

/// An OOM kill is reported once, when the restart count moves; the pod keeps being
/// scraped and judged: when its /health then fails and it is not Ready, it is restarted.
#[tokio::test]
async fn an_oom_kill_is_an_event_and_the_pod_stays_judged() {
    let ok = || Behavior::healthy(&worker_metrics(0.0, 1.0, 0.0));
    let ((ctx, workers), mut api) = controller_with_workers(vec![ok(), ok(), ok()]).await;
    let oomed = |ready| PodSpec {
        last_terminated: Some("OOMKilled"),
        restarts: 1,
        ready,
        ..PodSpec::ready("w-a", workers.ips[0])
    };
    let fleet = |ready| {
        pod_list(&[
            pod(&oomed(ready)),
            pod(&PodSpec::ready("w-b", workers.ips[1])),
            pod(&PodSpec::ready("w-c", workers.ips[2])),
        ])
    };

    let tick = spawn_tick(&ctx);
    api.lease_renewed().await;
    api.fleet(fleet(true), deployment(3, json!({})), None, ready_hpa(3, json!({}))).await;
    let (reason, message) = api.expect_event("w-a").await;
    assert_eq!(reason, "OOMKilled");
    assert!(message.contains("1 restarts"), "{message}");
    leader(tick.await.expect("task").expect("tick"));

    // Same kill still in lastState; now /health fails and the kubelet marks it not Ready.
    workers.set(0, Behavior::failing_health());
    let tick = spawn_tick(&ctx);
    api.lease_renewed().await;
    api.fleet(fleet(false), deployment(3, json!({})), None, ready_hpa(3, json!({}))).await;
    api.lease_renewed().await;
    api.expect("POST", &eviction_uri("w-a")).await.status(429, "TooManyRequests", "budget");
    assert_eq!(api.expect_event("w-a").await.0, "EvictionRefused");
    let decisions = leader(tick.await.expect("task").expect("tick"));
    assert_eq!((decisions[0].action, decisions[0].reason), (Action::GracefulRestart, Reason::HealthCheck));
    restarts_done(&ctx).await;
    api.assert_idle();
}

/// An image that cannot be pulled: an Event saying so, no eviction (the replacement
/// would pull the same image), and the Event is not repeated every tick.
#[tokio::test]
async fn an_image_pull_failure_is_reported_once_per_cooldown() {
    let ok = || Behavior::healthy(&worker_metrics(0.0, 1.0, 0.0));
    let ((ctx, workers), mut api) = controller_with_workers(vec![ok(), ok()]).await;
    let pulling = PodSpec { waiting: Some("ImagePullBackOff"), ip: None, ..PodSpec::not_ready("w-a", workers.ips[0]) };
    let pods = pod_list(&[
        pod(&pulling),
        pod(&PodSpec::ready("w-b", workers.ips[0])),
        pod(&PodSpec::ready("w-c", workers.ips[1])),
    ]);
    for round in 0..2 {
        let tick = spawn_tick(&ctx);
        api.lease_renewed().await;
        api.fleet(pods.clone(), deployment(3, json!({})), None, ready_hpa(3, json!({}))).await;
        if round == 0 {
            let (reason, message) = api.expect_event("w-a").await;
            assert_eq!(reason, "ImagePullFailure");
            assert!(message.contains("restarting would pull the same image"), "{message}");
        }
        let decisions = leader(tick.await.expect("task").expect("tick"));
        assert_eq!(decisions.len(), 1);
        assert_eq!(decisions[0].action, Action::Report);
    }
    api.assert_idle();
}
