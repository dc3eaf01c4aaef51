//! Restart scenarios: the graceful path, a refusing budget, a storm held by the cap, dry run.

use std::collections::BTreeSet;

use embq_controller::controller::reconcile;
use embq_controller::policy::{Action, Guard, Reason, Verdict};
use serde_json::json;

use super::support::*;
use super::Requests;

/// `/health` failing: Lease, fleet read, fence, eviction (SIGTERM drains),
/// drain watched, replacement Ready — with an Event at each step.
pub async fn graceful_restart() -> Requests {
    let ok = || Behavior::healthy(&worker_metrics(0.0, 1.0, 0.0));
    let (ctx, mut api) = controller_with_workers(vec![Behavior::failing_health(), ok(), ok()]).await;
    let (ctx, workers) = ctx;
    let [a, b, c] = [workers.ips[0], workers.ips[1], workers.ips[2]];
    let tick = tokio::spawn({
        let ctx = ctx.clone();
        async move { reconcile(&ctx).await }
    });

    api.expect("GET", &lease_uri()).await.status(404, "NotFound", "leases not found");
    let create = api.expect("POST", "/apis/coordination.k8s.io/v1/namespaces/ns/leases?").await;
    assert_eq!(create.body["spec"]["holderIdentity"], "me");
    create.echo(201);
    let pods =
        pod_list(&[pod(&PodSpec::not_ready("w-a", a)), pod(&PodSpec::ready("w-b", b)), pod(&PodSpec::ready("w-c", c))]);
    api.fleet(pods, deployment(3, json!({})), None, ready_hpa(3, json!({}))).await;

    // The fence: the Lease is renewed before the eviction.
    api.lease_renewed().await;
    api.expect("POST", &eviction_uri("w-a")).await.reply(201, status_body(201, "", ""));
    let (reason, message) = api.expect_event("w-a").await;
    assert_eq!(reason, "Evicted");
    assert!(message.contains("(/health failing for 0s"), "{message}");
    assert!(message.contains("SIGTERM drains"), "{message}");
    // The drain after SIGTERM: the stand-in reports nothing in flight.
    assert_eq!(api.expect_event("w-a").await.0, "Drained");
    // The replacement: first not Ready yet, then Ready.
    let replacement = |ready| {
        let spec = PodSpec { ready, ..PodSpec::ready("w-d", b) };
        pod_list(&[pod(&PodSpec::ready("w-b", b)), pod(&PodSpec::ready("w-c", c)), pod(&spec)])
    };
    api.expect("GET", &pods_uri()).await.ok(replacement(false));
    api.expect("GET", &pods_uri()).await.ok(replacement(true));
    assert_eq!(api.expect_event("w-a").await.0, "ReplacementReady");

    let decisions = leader(tick.await.expect("tick task").expect("tick"));
    assert_eq!(decisions.len(), 1);
    assert_eq!(
        (decisions[0].action, decisions[0].reason, decisions[0].verdict),
        (Action::GracefulRestart, Reason::HealthCheck, Verdict::Act)
    );
    restarts_done(&ctx).await;
    api.assert_idle();

    // The drain was watched on the failing worker after its eviction; nobody was asked to exit.
    let log = api.log.entries();
    let at =
        |needle: &str| log.iter().position(|e| e == needle).unwrap_or_else(|| panic!("{needle} missing from {log:#?}"));
    let evicted = at(&format!("POST {}", eviction_uri("w-a")));
    assert!(log[evicted..].iter().any(|e| e == &format!("worker {a} GET /metrics 200")), "{log:#?}");
    assert!(!log.iter().any(|e| e.contains("POST /shutdown")), "{log:#?}");
    let text = ctx.metrics.encode();
    assert!(text.contains(r#"restart_controller_actions_total{action="graceful_restart",reason="health_check"} 1"#));
    assert!(text.contains(r#"restart_controller_restart_outcomes_total{kind="replacement_ready"} 1"#));
    api.seen
}

/// A PodDisruptionBudget refuses the eviction (429): the worker keeps running, an Event
/// says why, and the next tick does not try again (cooldown) — no retry storm.
pub async fn eviction_refused_by_pdb() -> Requests {
    let ((ctx, workers), mut api) = controller_with_workers(failing_and_two_serving()).await;
    let pods = || three_pods(&workers);

    for round in 0..3 {
        let tick = tokio::spawn({
            let ctx = ctx.clone();
            async move { reconcile(&ctx).await }
        });
        api.lease_renewed().await;
        api.fleet(pods(), deployment(3, json!({})), None, ready_hpa(3, json!({}))).await;
        if round == 0 {
            api.lease_renewed().await;
            api.expect("POST", &eviction_uri("w-a")).await.status(
                429,
                "TooManyRequests",
                "Cannot evict pod as it would violate the pod's disruption budget.",
            );
            let (reason, message) = api.expect_event("w-a").await;
            assert_eq!(reason, "EvictionRefused");
            assert!(message.contains("disruption budget"), "{message}");
        }
        let decisions = leader(tick.await.expect("tick task").expect("tick"));
        restarts_done(&ctx).await;
        if round > 0 {
            assert_eq!(decisions[0].verdict, Verdict::Suppressed(Guard::Cooldown), "round {round}");
        }
    }
    api.assert_idle();
    let log = api.log.entries();
    assert_eq!(
        log.iter().filter(|e| e.contains("/eviction")).count(),
        1,
        "one eviction attempt in three ticks: {log:#?}"
    );
    assert!(ctx.metrics.encode().contains(r#"restart_controller_restart_outcomes_total{kind="eviction_refused"} 1"#));
    api.seen
}

/// Twenty workers fail at once: no more disruptive actions than the cap (3), whatever
/// the order the restarts interleave in; later ticks in the window add none.
pub async fn storm_is_capped() -> Requests {
    let ((ctx, workers), mut api) = controller_with_workers(failing_and_two_serving()).await;
    let ip = workers.ips[0];
    let names: Vec<String> = (0..20).map(|i| format!("w-{i:02}")).collect();
    // Twenty failing among twenty-five serving: a minority, with most of the fleet Ready.
    let serving: Vec<String> = (0..25).map(|i| format!("s-{i:02}")).collect();
    let pods = pod_list(
        &names
            .iter()
            .map(|n| pod(&PodSpec::not_ready(n, ip)))
            .chain(serving.iter().map(|n| pod(&PodSpec::ready(n, workers.ips[1]))))
            .collect::<Vec<_>>(),
    );
    let mut evictions = BTreeSet::new();
    for round in 0..2 {
        let tick = spawn_tick(&ctx);
        api.lease_renewed().await;
        api.fleet(pods.clone(), deployment(45, json!({})), None, ready_hpa(45, json!({}))).await;
        // Restarts run concurrently: answer whatever comes until the tick and its
        // restarts are done.
        let drive = async {
            loop {
                let call = api.next().await;
                match (call.method.as_str(), call.uri.as_str()) {
                    ("POST", u) if u.contains("/eviction") => {
                        evictions.insert(call.uri.clone());
                        call.reply(201, status_body(201, "", ""));
                    }
                    ("POST", u) if u.ends_with("/events?") => call.echo(201),
                    ("GET", u) if u == lease_uri() => call.ok(lease("me", 0)),
                    ("PUT", u) if u.starts_with(&lease_uri()) => call.echo(200),
                    ("GET", u) if u == pods_uri() => call.ok(pod_list(&[pod(&PodSpec::ready("w-new", ip))])),
                    (m, u) => panic!("unexpected request in the storm: {m} {u}"),
                }
            }
        };
        let finished = async {
            let decisions = leader(tick.await.expect("task").expect("tick"));
            restarts_done(&ctx).await;
            decisions
        };
        let decisions = tokio::select! {
            d = finished => d,
            _ = drive => unreachable!("the driver loops until the tick is done"),
        };
        let acted = decisions.iter().filter(|d| d.verdict == Verdict::Act).count();
        let capped = decisions.iter().filter(|d| d.verdict == Verdict::Suppressed(Guard::ActionCap)).count();
        let want_acted = if round == 0 { 3 } else { 0 };
        assert_eq!((acted, capped), (want_acted, 17), "round {round}");
    }
    api.assert_idle();
    // Three restarts: an eviction each, and no worker asked to exit besides.
    assert_eq!(evictions.len(), 3, "{evictions:#?}");
    assert!(!api.log.entries().iter().any(|e| e.ends_with("POST /shutdown")));
    assert!(ctx
        .metrics
        .encode()
        .contains(r#"restart_controller_suppressed_total{action="graceful_restart",guard="action_cap"} 34"#));
    api.seen
}

/// Dry run: the same decision, a "would ..." Event, no eviction.
pub async fn dry_run_only_reports() -> Requests {
    let ((ctx, workers), mut api) = controller_with_workers_args(failing_and_two_serving(), &["--dry-run"]).await;
    let tick = spawn_tick(&ctx);
    api.lease_renewed().await;
    api.fleet(three_pods(&workers), deployment(3, json!({})), None, ready_hpa(3, json!({}))).await;
    let (_, message) = api.expect_event("w-a").await;
    assert!(message.starts_with("dry run, would restart the pod gracefully"), "{message}");
    let decisions = leader(tick.await.expect("task").expect("tick"));
    assert_eq!(decisions[0].verdict, Verdict::DryRun);
    restarts_done(&ctx).await;
    api.assert_idle();
    api.seen
}

#[tokio::test]
async fn graceful_restart_drains_evicts_and_checks_the_replacement() {
    graceful_restart().await;
}

#[tokio::test]
async fn eviction_refused_by_a_pdb_is_not_retried_in_a_storm() {
    eviction_refused_by_pdb().await;
}

#[tokio::test]
async fn a_storm_of_twenty_failing_pods_is_capped() {
    storm_is_capped().await;
}

#[tokio::test]
async fn dry_run_emits_would_events_only() {
    dry_run_only_reports().await;
}
