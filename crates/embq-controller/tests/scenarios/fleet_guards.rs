//! Fleet-level guards: the only Ready worker is kept, a fleet-wide failure is held, and
//! an unreachable or disputed /health is not evidence.

use std::collections::BTreeSet;

use embq_controller::policy::{Guard, Reason, Verdict};
use serde_json::json;

use super::support::*;
use super::Requests;

/// The only Ready worker fails /health and the kubelet agrees (its restart count moved):
/// restarting it would leave nothing serving. Skipped with an Event, never evicted.
pub async fn only_ready_worker_is_kept() -> Requests {
    let ((ctx, workers), mut api) = controller_with_workers(vec![Behavior::failing_health()]).await;
    let pods = |restarts| {
        pod_list(&[
            pod(&PodSpec { restarts, ..PodSpec::ready("w-a", workers.ips[0]) }),
            pod(&PodSpec { ip: None, ..PodSpec::not_ready("w-b", workers.ips[0]) }),
            pod(&PodSpec { ip: None, ..PodSpec::not_ready("w-c", workers.ips[0]) }),
        ])
    };
    // First look: Ready, restarts steady: only the controller's view, nothing to do.
    let tick = spawn_tick(&ctx);
    api.lease_renewed().await;
    api.fleet(pods(0), deployment(3, json!({})), None, ready_hpa(3, json!({}))).await;
    assert!(leader(tick.await.expect("task").expect("tick")).is_empty());
    // Second look: the kubelet restarted it; still the only Ready pod.
    let tick = spawn_tick(&ctx);
    api.lease_renewed().await;
    api.fleet(pods(1), deployment(3, json!({})), None, ready_hpa(3, json!({}))).await;
    let (reason, message) = api.expect_event("w-a").await;
    assert_eq!(reason, "RemediationSkipped");
    assert!(message.contains("fewer than 2 Ready pods"), "{message}");
    let decisions = leader(tick.await.expect("task").expect("tick"));
    assert_eq!((decisions[0].reason, decisions[0].verdict), (Reason::HealthCheck, Verdict::Skipped(Guard::ReadyFloor)));
    restarts_done(&ctx).await;
    api.assert_idle();
    assert!(ctx
        .metrics
        .encode()
        .contains(r#"restart_controller_suppressed_total{action="graceful_restart",guard="ready_floor"} 1"#));
    api.seen
}

/// Every worker answers /health with 500 and none is Ready (a database or provider outage
/// behind their health checks): a shared cause, held with one Event per pod, nobody evicted.
pub async fn fleet_wide_failure_is_held() -> Requests {
    let ((ctx, workers), mut api) = controller_with_workers(vec![
        Behavior::failing_health(),
        Behavior::failing_health(),
        Behavior::failing_health(),
    ])
    .await;
    let pods = pod_list(&[
        pod(&PodSpec::not_ready("w-a", workers.ips[0])),
        pod(&PodSpec::not_ready("w-b", workers.ips[1])),
        pod(&PodSpec::not_ready("w-c", workers.ips[2])),
    ]);
    for round in 0..2 {
        let tick = spawn_tick(&ctx);
        api.lease_renewed().await;
        api.fleet(pods.clone(), deployment(3, json!({})), None, ready_hpa(3, json!({}))).await;
        if round == 0 {
            let mut seen = BTreeSet::new();
            for _ in 0..3 {
                let call = api.next().await;
                assert!(call.uri.ends_with("/events?"), "only Events: {}", call.uri);
                assert_eq!(call.body["reason"], "RemediationSkipped");
                seen.insert(call.body["involvedObject"]["name"].as_str().unwrap_or_default().to_owned());
                call.echo(201);
            }
            assert_eq!(seen.len(), 3);
        }
        let decisions = leader(tick.await.expect("task").expect("tick"));
        let want =
            if round == 0 { Verdict::Skipped(Guard::SharedCause) } else { Verdict::Suppressed(Guard::SharedCause) };
        assert!(decisions.iter().all(|d| d.verdict == want), "round {round}: {decisions:?}");
    }
    restarts_done(&ctx).await;
    api.assert_idle();
    api.seen
}

/// No answer from a worker is not a failing worker: an unreachable pod and a Ready pod
/// whose /health answers 500 while the kubelet sees nothing wrong are both left alone.
pub async fn unreachable_or_disputed_health_is_unknown() -> Requests {
    let ok = || Behavior::healthy(&worker_metrics(0.0, 1.0, 0.0));
    let ((ctx, workers), mut api) = controller_with_workers(vec![Behavior::failing_health(), ok(), ok()]).await;
    // Nothing listens on 127.0.0.200: connection refused.
    let nobody = std::net::IpAddr::from([127, 0, 0, 200]);
    let pods = pod_list(&[
        pod(&PodSpec::not_ready("w-gone", nobody)),
        pod(&PodSpec::ready("w-a", workers.ips[0])),
        pod(&PodSpec::ready("w-b", workers.ips[1])),
        pod(&PodSpec::ready("w-c", workers.ips[2])),
    ]);
    for _ in 0..2 {
        let tick = spawn_tick(&ctx);
        api.lease_renewed().await;
        api.fleet(pods.clone(), deployment(4, json!({})), None, ready_hpa(4, json!({}))).await;
        let decisions = leader(tick.await.expect("task").expect("tick"));
        assert!(decisions.is_empty(), "{decisions:?}");
    }
    api.assert_idle();
    api.seen
}

#[tokio::test]
async fn the_only_ready_worker_is_never_restarted() {
    only_ready_worker_is_kept().await;
}

#[tokio::test]
async fn a_fleet_wide_failure_is_held_with_events() {
    fleet_wide_failure_is_held().await;
}

#[tokio::test]
async fn an_unreachable_worker_or_a_health_the_kubelet_disputes_is_not_acted_on() {
    unreachable_or_disputed_health_is_unknown().await;
}
