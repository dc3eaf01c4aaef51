//! The controller against a mocked API server, scenario by scenario: each asserts the
//! exact sequence of API requests (and of calls to the stand-in workers). The last test
//! replays them all and compares the requests with the RBAC Role in deploy/.

mod support;

use std::collections::BTreeSet;

use embq_controller::controller::{self, reconcile, Tick};
use embq_controller::kube_api::ORIGINAL_ANNOTATION;
use embq_controller::policy::{Action, Guard, Reason, Verdict};
use serde_json::json;
use support::*;

type Requests = Vec<(String, String)>;

/// `/health` failing: Lease, fleet read, PDB check, fence, eviction (SIGTERM drains),
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

    let dry = api.expect("POST", &eviction_uri("w-a", true)).await;
    dry.reply(201, status_body(201, "", ""));
    // The fence: the Lease is renewed before the eviction.
    api.lease_renewed().await;
    api.expect("POST", &eviction_uri("w-a", false)).await.reply(201, status_body(201, "", ""));
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
    let evicted = at(&format!("POST {}", eviction_uri("w-a", false)));
    assert!(log[evicted..].iter().any(|e| e == &format!("worker {a} GET /metrics 200")), "{log:#?}");
    assert!(!log.iter().any(|e| e.contains("POST /shutdown")), "{log:#?}");
    let text = ctx.metrics.encode();
    assert!(text.contains(r#"restart_controller_actions_total{action="graceful_restart",reason="health_check"} 1"#));
    assert!(text.contains(r#"restart_controller_restart_outcomes_total{kind="replacement_ready"} 1"#));
    api.seen
}

/// A PodDisruptionBudget refuses the eviction (429): the worker is not drained, an Event
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
            api.expect("POST", &eviction_uri("w-a", true)).await.status(
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

/// Queue backlog with an HPA: the HPA adds pods, the controller writes nothing. A
/// minimum an earlier version raised (marked by the annotation) is given back once calm.
pub async fn capacity_via_hpa() -> Requests {
    let ((ctx, workers), mut api) = controller_with_workers(vec![
        Behavior::healthy(&worker_metrics(100.0, 3.0, 0.0)),
        Behavior::healthy(&worker_metrics(100.0, 3.0, 0.0)),
    ])
    .await;
    let pods = pod_list(&[pod(&PodSpec::ready("w-a", workers.ips[0])), pod(&PodSpec::ready("w-b", workers.ips[1]))]);

    let tick = spawn_tick(&ctx);
    api.lease_renewed().await;
    api.fleet(pods.clone(), deployment(2, json!({})), None, ready_hpa(2, json!({}))).await;
    assert!(leader(tick.await.expect("tick task").expect("tick")).is_empty(), "no scale-up");
    api.assert_idle();

    // The backlog is gone: the raised minimum goes back to 2 and the annotation is removed.
    for i in 0..2 {
        workers.set(i, Behavior::healthy(&worker_metrics(0.0, 0.0, 0.0)));
    }
    let tick = spawn_tick(&ctx);
    api.lease_renewed().await;
    api.fleet(pods, deployment(3, json!({})), None, ready_hpa(3, json!({ORIGINAL_ANNOTATION: "2"}))).await;
    let patch = api
        .expect("PATCH", "/apis/autoscaling/v2/namespaces/ns/horizontalpodautoscalers/embedding-queue-workers-hpa?")
        .await;
    assert_eq!(
        patch.body,
        json!({"metadata": {"annotations": {ORIGINAL_ANNOTATION: null}}, "spec": {"minReplicas": 2}})
    );
    patch.ok(hpa(2, 10, json!({}), json!({}), "embedding-queue-workers-hpa"));
    assert_eq!(api.expect_event("embedding-queue-workers").await.0, "ScaledDown");
    tick.await.expect("tick task").expect("tick");
    api.assert_idle();
    api.seen
}

/// The provider is rate limiting (its 429 counter grows): a backlog does not add pods.
pub async fn no_scale_up_when_rate_limited() -> Requests {
    let ((ctx, workers), mut api) =
        controller_with_workers(vec![Behavior::healthy(&worker_metrics(0.0, 3.0, 10.0))]).await;
    let pods = pod_list(&[pod(&PodSpec::ready("w-a", workers.ips[0]))]);
    let tick = spawn_tick(&ctx);
    api.lease_renewed().await;
    api.fleet(pods.clone(), deployment(2, json!({})), None, ready_hpa(2, json!({}))).await;
    assert!(leader(tick.await.expect("task").expect("tick")).is_empty());

    workers.set(0, Behavior::healthy(&worker_metrics(100.0, 3.0, 25.0)));
    let tick = spawn_tick(&ctx);
    api.lease_renewed().await;
    api.fleet(pods, deployment(2, json!({})), None, ready_hpa(2, json!({}))).await;
    let (reason, message) = api.expect_event("embedding-queue-workers").await;
    assert_eq!(reason, "ProviderRateLimited");
    assert!(message.contains("not scaling up"), "{message}");
    let decisions = leader(tick.await.expect("task").expect("tick"));
    assert_eq!(decisions[0].action, Action::HoldScale);
    api.assert_idle();
    api.seen
}

/// The worker's HPA is missing from the list (a GitOps recreate) under a backlog: the
/// Deployment's replicas are never written.
pub async fn capacity_via_deployment() -> Requests {
    let ((ctx, workers), mut api) =
        controller_with_workers(vec![Behavior::healthy(&worker_metrics(50.0, 3.0, 0.0))]).await;
    let pods = pod_list(&[pod(&PodSpec::ready("w-a", workers.ips[0]))]);
    let tick = spawn_tick(&ctx);
    api.lease_renewed().await;
    // An HPA for some other Deployment does not count.
    let unrelated = json!({
        "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "other", "namespace": NS},
        "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "other"}, "maxReplicas": 3}
    });
    api.fleet(
        pods,
        deployment(1, json!({})),
        Some(list("ScaledObjectList", "keda.sh/v1alpha1", &[])),
        list("HorizontalPodAutoscalerList", "autoscaling/v2", &[unrelated]),
    )
    .await;
    assert!(leader(tick.await.expect("task").expect("tick")).is_empty());
    api.assert_idle();
    api.seen
}

/// KEDA owns the Deployment: under a backlog nothing is written; a raised
/// minReplicaCount is given back through the ScaledObject, never the HPA KEDA made. A
/// KEDA-made HPA whose ScaledObject is not visible (404) is left alone entirely.
pub async fn capacity_via_scaled_object() -> Requests {
    let ((ctx, workers), mut api) =
        controller_with_workers(vec![Behavior::healthy(&worker_metrics(50.0, 3.0, 0.0))]).await;
    let pods = pod_list(&[pod(&PodSpec::ready("w-a", workers.ips[0]))]);
    let keda_hpa = |annotations| {
        hpa(
            2,
            10,
            annotations,
            json!({"scaledobject.keda.sh/name": "embedding-queue-workers"}),
            "keda-hpa-embedding-queue-workers",
        )
    };
    let hpas = |annotations| list("HorizontalPodAutoscalerList", "autoscaling/v2", &[keda_hpa(annotations)]);
    let objects = |so| Some(list("ScaledObjectList", "keda.sh/v1alpha1", &[so]));
    let tick = spawn_tick(&ctx);
    api.lease_renewed().await;
    api.fleet(pods.clone(), deployment(1, json!({})), objects(scaled_object(1, json!({}))), hpas(json!({}))).await;
    assert!(leader(tick.await.expect("task").expect("tick")).is_empty(), "no scale-up");

    // Calm, with a raise from an earlier version on the ScaledObject: given back there.
    workers.set(0, Behavior::healthy(&worker_metrics(0.0, 0.0, 0.0)));
    let tick = spawn_tick(&ctx);
    api.lease_renewed().await;
    let raised = scaled_object(2, json!({ORIGINAL_ANNOTATION: "1"}));
    api.fleet(pods.clone(), deployment(2, json!({})), objects(raised), hpas(json!({}))).await;
    let patch =
        api.expect("PATCH", "/apis/keda.sh/v1alpha1/namespaces/ns/scaledobjects/embedding-queue-workers?").await;
    assert_eq!(
        patch.body,
        json!({"metadata": {"annotations": {ORIGINAL_ANNOTATION: null}}, "spec": {"minReplicaCount": 1}})
    );
    patch.ok(scaled_object(1, json!({})));
    assert_eq!(api.expect_event("embedding-queue-workers").await.0, "ScaledDown");
    tick.await.expect("task").expect("tick");

    // The ScaledObject is not visible (404), the KEDA HPA carries the annotation: nothing.
    let tick = spawn_tick(&ctx);
    api.lease_renewed().await;
    api.fleet(pods, deployment(2, json!({})), None, hpas(json!({ORIGINAL_ANNOTATION: "1"}))).await;
    assert!(leader(tick.await.expect("task").expect("tick")).is_empty());
    api.assert_idle();
    api.seen
}

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
    // Three restarts: a PDB check and an eviction each, and no worker asked to exit besides.
    assert_eq!(evictions.len(), 6, "{evictions:#?}");
    assert!(!api.log.entries().iter().any(|e| e.ends_with("POST /shutdown")));
    assert!(ctx
        .metrics
        .encode()
        .contains(r#"restart_controller_suppressed_total{action="graceful_restart",guard="action_cap"} 34"#));
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
async fn graceful_restart_drains_evicts_and_checks_the_replacement() {
    graceful_restart().await;
}

#[tokio::test]
async fn eviction_refused_by_a_pdb_is_not_retried_in_a_storm() {
    eviction_refused_by_pdb().await;
}

#[tokio::test]
async fn capacity_adds_no_pods_and_restores_a_raised_hpa_minimum() {
    capacity_via_hpa().await;
}

#[tokio::test]
async fn a_rate_limited_provider_blocks_scale_up() {
    no_scale_up_when_rate_limited().await;
}

#[tokio::test]
async fn capacity_never_writes_the_deployment_replicas() {
    capacity_via_deployment().await;
}

#[tokio::test]
async fn capacity_restores_through_the_keda_scaled_object_only() {
    capacity_via_scaled_object().await;
}

#[tokio::test]
async fn a_follower_takes_no_action_until_the_lease_is_released() {
    follower_takes_no_action().await;
}

#[tokio::test]
async fn a_storm_of_twenty_failing_pods_is_capped() {
    storm_is_capped().await;
}

#[tokio::test]
async fn api_errors_are_retried_with_backoff_never_fatal() {
    list_errors_are_retried_with_backoff().await;
}

#[tokio::test]
async fn dry_run_emits_would_events_only() {
    dry_run_only_reports().await;
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

/// One RBAC permission: (apiGroup, resource, verb, resourceName); `None` is any name.
type Permission = (String, String, String, Option<String>);

/// The permission one request needs.
fn rbac_of(method: &str, uri: &str) -> Permission {
    let path = uri.split('?').next().unwrap_or_default();
    let query = uri.split_once('?').map(|(_, q)| q).unwrap_or_default();
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let (group, rest) = match parts.as_slice() {
        ["api", "v1", rest @ ..] => (String::new(), rest.to_vec()),
        ["apis", group, _version, rest @ ..] => (group.to_string(), rest.to_vec()),
        _ => panic!("not an API path: {uri}"),
    };
    let rest = match rest.as_slice() {
        ["namespaces", _ns, rest @ ..] => rest.to_vec(),
        other => other.to_vec(),
    };
    let (resource, name) = match rest.as_slice() {
        [r] => (r.to_string(), None),
        [r, name] => (r.to_string(), Some(name.to_string())),
        [r, name, sub] => (format!("{r}/{sub}"), Some(name.to_string())),
        _ => panic!("unexpected path shape: {uri}"),
    };
    let verb = match (method, name.is_some()) {
        ("GET", true) => "get",
        ("GET", false) if query.contains("watch=true") => "watch",
        ("GET", false) => "list",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", true) => "delete",
        ("DELETE", false) => "deletecollection",
        _ => panic!("unexpected method {method}"),
    };
    // A create names no existing object (an eviction is a create on the pod's subresource).
    let name = if verb == "create" && !resource.contains('/') { None } else { name };
    (group, resource, verb.to_owned(), name)
}

/// Permissions granted by the Role in deploy/, one per name of a rule's resourceNames.
fn role_rules() -> BTreeSet<Permission> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/kubernetes/base/controller/role.yaml");
    let text = std::fs::read_to_string(path).expect("role.yaml");
    let role: serde_yaml::Value = serde_yaml::from_str(&text).expect("yaml");
    assert_eq!(role["kind"], "Role", "a namespaced Role, not a ClusterRole");
    let mut out = BTreeSet::new();
    let rules = role["rules"].as_sequence().expect("rules");
    for rule in rules {
        let strings = |key: &str| -> Vec<String> {
            rule[key]
                .as_sequence()
                .unwrap_or_else(|| panic!("rule without {key}: {rule:?}"))
                .iter()
                .map(|v| v.as_str().expect("string").to_owned())
                .collect()
        };
        let names: Vec<Option<String>> = match rule.get("resourceNames") {
            None => vec![None],
            Some(_) => strings("resourceNames").into_iter().map(Some).collect(),
        };
        for g in strings("apiGroups") {
            for r in strings("resources") {
                for v in strings("verbs") {
                    assert!(g != "*" && r != "*" && v != "*", "no wildcards");
                    for n in &names {
                        out.insert((g.clone(), r.clone(), v.clone(), n.clone()));
                    }
                }
            }
        }
    }
    out
}

#[tokio::test]
async fn the_role_allows_every_request_the_scenarios_make_and_nothing_else() {
    let mut used = BTreeSet::new();
    for seen in [
        graceful_restart().await,
        eviction_refused_by_pdb().await,
        capacity_via_hpa().await,
        no_scale_up_when_rate_limited().await,
        capacity_via_deployment().await,
        capacity_via_scaled_object().await,
        follower_takes_no_action().await,
        storm_is_capped().await,
        dry_run_only_reports().await,
        only_ready_worker_is_kept().await,
        fleet_wide_failure_is_held().await,
        unreachable_or_disputed_health_is_unknown().await,
    ] {
        for (method, uri) in seen {
            used.insert(rbac_of(&method, &uri));
        }
    }
    let granted = role_rules();
    let any = |(g, r, v, _): &Permission| (g.clone(), r.clone(), v.clone(), None);
    let missing: Vec<_> = used.iter().filter(|p| !granted.contains(p) && !granted.contains(&any(p))).collect();
    // Named objects are granted by name, except evictions: any worker pod may need one.
    let unnamed: Vec<_> =
        used.iter().filter(|p| p.3.is_some() && p.1 != "pods/eviction" && granted.contains(&any(p))).collect();
    let unused: Vec<_> = granted
        .iter()
        .filter(|g| {
            let used_by_name = used.contains(*g);
            let used_as_any = g.3.is_none() && used.iter().any(|u| &any(u) == *g);
            !(used_by_name || used_as_any)
        })
        .collect();
    assert!(missing.is_empty(), "requests the Role does not allow: {missing:?}");
    assert!(unnamed.is_empty(), "named objects granted without resourceNames: {unnamed:?}");
    assert!(unused.is_empty(), "Role rules no scenario uses: {unused:?}");
}

#[test]
fn request_paths_map_to_rbac_rules() {
    let cases = [
        ("GET", "/api/v1/namespaces/ns/pods?&labelSelector=a", ("", "pods", "list", None)),
        ("POST", "/api/v1/namespaces/ns/pods/p/eviction?", ("", "pods/eviction", "create", Some("p"))),
        ("GET", "/apis/apps/v1/namespaces/ns/deployments/d", ("apps", "deployments", "get", Some("d"))),
        (
            "PUT",
            "/apis/coordination.k8s.io/v1/namespaces/ns/leases/l?",
            ("coordination.k8s.io", "leases", "update", Some("l")),
        ),
        (
            "POST",
            "/apis/coordination.k8s.io/v1/namespaces/ns/leases?",
            ("coordination.k8s.io", "leases", "create", None),
        ),
        ("GET", "/api/v1/namespaces/ns/pods?watch=true", ("", "pods", "watch", None)),
    ];
    for (m, u, (g, r, v, n)) in cases {
        assert_eq!(rbac_of(m, u), (g.into(), r.into(), v.into(), n.map(str::to_owned)), "{m} {u}");
    }
}
