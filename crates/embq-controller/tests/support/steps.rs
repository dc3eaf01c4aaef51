//! Shared steps of the scenario tests: a controller with stand-in workers, one tick.

use std::sync::Arc;

use embq_controller::controller::{reconcile, Context, Tick};
use embq_controller::policy::Decision;
use serde_json::{json, Value};

use super::*;

pub fn ready_hpa(min: i32, annotations: Value) -> Value {
    list(
        "HorizontalPodAutoscalerList",
        "autoscaling/v2",
        &[hpa(min, 10, annotations, json!({}), "embedding-queue-workers-hpa")],
    )
}

pub fn leader(tick: Tick) -> Vec<Decision> {
    match tick {
        Tick::Leader(d) => d,
        Tick::Follower => panic!("expected to lead"),
    }
}

/// A worker failing /health and two serving ones.
pub fn failing_and_two_serving() -> Vec<Behavior> {
    let ok = || Behavior::healthy(&worker_metrics(0.0, 1.0, 0.0));
    vec![Behavior::failing_health(), ok(), ok()]
}

/// w-a (not Ready) on the first worker, w-b and w-c (Ready) on the others.
pub fn three_pods(workers: &Workers) -> Value {
    pod_list(&[
        pod(&PodSpec::not_ready("w-a", workers.ips[0])),
        pod(&PodSpec::ready("w-b", workers.ips[1])),
        pod(&PodSpec::ready("w-c", workers.ips[2])),
    ])
}

pub fn spawn_tick(ctx: &Arc<Context>) -> tokio::task::JoinHandle<Result<Tick, embq_controller::Error>> {
    let ctx = ctx.clone();
    tokio::spawn(async move { reconcile(&ctx).await })
}

pub async fn controller_with_workers(behaviors: Vec<Behavior>) -> ((Arc<Context>, Workers), MockApi) {
    controller_with_workers_args(behaviors, &[]).await
}

pub async fn controller_with_workers_args(
    behaviors: Vec<Behavior>,
    extra: &[&str],
) -> ((Arc<Context>, Workers), MockApi) {
    let log = Log::default();
    let workers = Workers::start(behaviors, &log).await;
    let ports = workers.port_args();
    let mut args: Vec<&str> = ports.iter().map(String::as_str).collect();
    args.extend_from_slice(extra);
    let (ctx, mut api) = controller(&args);
    api.log = log;
    ((ctx, workers), api)
}

/// A pod JSON owned by ReplicaSet `set`, running template `hash`.
pub fn owned(mut pod: Value, set: &str, hash: &str) -> Value {
    pod["metadata"]["ownerReferences"] = json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": set, "uid": format!("uid-{set}"), "controller": true}]);
    pod["metadata"]["labels"]["pod-template-hash"] = json!(hash);
    pod
}
