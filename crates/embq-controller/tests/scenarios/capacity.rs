//! Capacity scenarios: the autoscaler adds pods, the controller only reports and gives back
//! minimums an earlier version raised; a Deployment's replicas are never written.

use embq_controller::kube_api::ORIGINAL_ANNOTATION;
use embq_controller::policy::Action;
use serde_json::json;

use super::support::*;
use super::Requests;

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
