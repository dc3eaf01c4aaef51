//! Reads and writes through the Kubernetes API: the fleet (pods, Deployment, the
//! autoscaler that targets it), Events, evictions and scaling patches.
//!
//! Every call here corresponds to one rule of the Role in
//! `deploy/kubernetes/base/controller/role.yaml`; a test keeps the two in step.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DynamicObject, EvictParams, ListParams, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::ResourceExt;
use serde_json::{json, Value};

use crate::controller::Context;
use crate::policy::{ScaleKind, ScaleTarget};
use crate::Error;

/// Where the controller remembers the value it found before raising it.
pub const ORIGINAL_ANNOTATION: &str = "restart-controller.embq.dev/original-replicas";

/// The pause switch: `"true"` on the worker Deployment stops every action but reports.
pub const PAUSE_ANNOTATION: &str = "restart-controller.embq.dev/paused";

impl Fleet {
    /// Whether the worker Deployment carries the pause switch.
    pub fn paused(&self) -> bool {
        self.deployment.metadata.annotations.as_ref().and_then(|a| a.get(PAUSE_ANNOTATION)).is_some_and(|v| v == "true")
    }
}
/// The label KEDA puts on the HPA it manages for a ScaledObject.
const KEDA_HPA_LABEL: &str = "scaledobject.keda.sh/name";
/// The name Events are reported under.
pub const COMPONENT: &str = "worker-restart-controller";

/// The autoscaler that targets the worker Deployment.
#[derive(Debug, Clone, PartialEq)]
pub struct Autoscaler {
    pub kind: ScaleKind,
    pub name: String,
    pub min: i32,
    pub max: i32,
    pub original: Option<i32>,
}

/// One read of the fleet.
#[derive(Debug, Clone)]
pub struct Fleet {
    pub pods: Vec<Pod>,
    pub deployment: Deployment,
    /// `Err(())` when an autoscaler targets the Deployment but cannot be safely changed
    /// (a KEDA-managed HPA whose ScaledObject is not visible): then nothing scales.
    pub autoscaler: Result<Option<Autoscaler>, ()>,
}

fn scaled_object_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("keda.sh", "v1alpha1", "ScaledObject"), "scaledobjects")
}

/// Lists the worker pods.
pub async fn list_pods(ctx: &Context) -> Result<Vec<Pod>, Error> {
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ctx.config.namespace);
    Ok(api.list(&ListParams::default().labels(&ctx.config.selector)).await?.items)
}

/// Pods, the Deployment and whichever autoscaler targets it, in that order.
pub async fn read_fleet(ctx: &Context) -> Result<Fleet, Error> {
    let ns = &ctx.config.namespace;
    let name = &ctx.config.deployment;
    let pods = list_pods(ctx).await?;
    let deployment = Api::<Deployment>::namespaced(ctx.client.clone(), ns)
        .get_opt(name)
        .await?
        .ok_or_else(|| Error::DeploymentMissing(name.clone()))?;

    // KEDA first: when a ScaledObject targets the Deployment, KEDA owns the HPA it made.
    let so_api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), ns, &scaled_object_resource());
    let scaled_objects = match so_api.list(&ListParams::default()).await {
        Ok(list) => list.items,
        // The CRD is not installed: no KEDA here.
        Err(kube::Error::Api(e)) if e.code == 404 => Vec::new(),
        Err(e) => return Err(e.into()),
    };
    let from_keda = scaled_objects.iter().find_map(|so| scaled_object_target(so, name));
    let hpas =
        Api::<HorizontalPodAutoscaler>::namespaced(ctx.client.clone(), ns).list(&ListParams::default()).await?.items;
    let autoscaler = match from_keda {
        Some(a) => Ok(Some(a)),
        None => {
            let targeting: Vec<_> = hpas.iter().filter(|h| hpa_targets(h, name)).collect();
            if targeting.iter().any(|h| h.labels().contains_key(KEDA_HPA_LABEL)) {
                Err(())
            } else {
                Ok(targeting.first().map(|h| hpa_autoscaler(h)))
            }
        }
    };
    Ok(Fleet { pods, deployment, autoscaler })
}

fn original_of(meta: &ObjectMeta) -> Option<i32> {
    meta.annotations.as_ref().and_then(|a| a.get(ORIGINAL_ANNOTATION)).and_then(|v| v.parse().ok())
}

fn hpa_targets(h: &HorizontalPodAutoscaler, deployment: &str) -> bool {
    h.spec.as_ref().is_some_and(|s| s.scale_target_ref.kind == "Deployment" && s.scale_target_ref.name == deployment)
}

fn hpa_autoscaler(h: &HorizontalPodAutoscaler) -> Autoscaler {
    let spec = h.spec.as_ref();
    Autoscaler {
        kind: ScaleKind::Hpa,
        name: h.name_any(),
        min: spec.and_then(|s| s.min_replicas).unwrap_or(1),
        max: spec.map_or(1, |s| s.max_replicas),
        original: original_of(&h.metadata),
    }
}

fn scaled_object_target(so: &DynamicObject, deployment: &str) -> Option<Autoscaler> {
    let spec = so.data.get("spec")?;
    let target = spec.get("scaleTargetRef")?;
    let kind = target.get("kind").and_then(Value::as_str).unwrap_or("Deployment");
    if kind != "Deployment" || target.get("name").and_then(Value::as_str) != Some(deployment) {
        return None;
    }
    let int = |key: &str, default: i64| {
        spec.get(key).and_then(Value::as_i64).unwrap_or(default).clamp(0, i32::MAX as i64) as i32
    };
    Some(Autoscaler {
        kind: ScaleKind::ScaledObject,
        name: so.name_any(),
        // KEDA's defaults.
        min: int("minReplicaCount", 0),
        max: int("maxReplicaCount", 100),
        original: original_of(&so.metadata),
    })
}

impl Fleet {
    /// The autoscaler the policy may scale, or `None` when there is none (or it cannot be
    /// changed safely): a Deployment's `spec.replicas` is never a target.
    pub fn scale_target(&self) -> Option<ScaleTarget> {
        match &self.autoscaler {
            Ok(Some(a)) => Some(ScaleTarget { kind: a.kind, current: a.min, original: a.original }),
            Ok(None) | Err(()) => None,
        }
    }

    /// The Deployment's maxUnavailable as a pod count (Kubernetes' default is 25%, rounded down).
    pub fn max_unavailable(&self) -> u32 {
        let spec = self.deployment.spec.as_ref();
        let replicas = spec.and_then(|s| s.replicas).unwrap_or(1).max(0) as u32;
        let value = spec
            .and_then(|s| s.strategy.as_ref())
            .and_then(|s| s.rolling_update.as_ref())
            .and_then(|r| r.max_unavailable.clone())
            .unwrap_or(IntOrString::String("25%".into()));
        resolve_max_unavailable(&value, replicas)
    }
}

/// Resolves an int-or-percent against the replica count (percentages round down, as
/// Kubernetes does for maxUnavailable). An unreadable value allows nothing.
pub fn resolve_max_unavailable(value: &IntOrString, replicas: u32) -> u32 {
    match value {
        IntOrString::Int(n) => (*n).max(0) as u32,
        IntOrString::String(s) => s
            .strip_suffix('%')
            .and_then(|p| p.trim().parse::<u32>().ok())
            .map_or(0, |p| replicas.saturating_mul(p) / 100),
    }
}

/// What an Event is about.
#[derive(Debug, Clone)]
pub struct EventTarget {
    pub kind: &'static str,
    pub api_version: &'static str,
    pub name: String,
    pub uid: Option<String>,
}

impl EventTarget {
    pub fn pod(pod: &Pod) -> Self {
        Self { kind: "Pod", api_version: "v1", name: pod.name_any(), uid: pod.metadata.uid.clone() }
    }
    pub fn pod_named(name: &str, uid: Option<String>) -> Self {
        Self { kind: "Pod", api_version: "v1", name: name.to_owned(), uid }
    }
    pub fn deployment(d: &Deployment) -> Self {
        Self { kind: "Deployment", api_version: "apps/v1", name: d.name_any(), uid: d.metadata.uid.clone() }
    }
}

/// Normal or Warning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Normal,
    Warning,
}

/// Records an Event. A failure is logged and counted, never propagated: an action
/// must not be undone or retried because its Event could not be stored.
pub async fn post_event(
    ctx: &Context,
    target: &EventTarget,
    type_: EventType,
    reason: &str,
    action: &str,
    message: &str,
) {
    let ns = &ctx.config.namespace;
    let now = Time(chrono::Utc::now());
    let event = Event {
        metadata: ObjectMeta {
            generate_name: Some(format!("{}.", target.name)),
            namespace: Some(ns.clone()),
            ..Default::default()
        },
        involved_object: ObjectReference {
            api_version: Some(target.api_version.to_owned()),
            kind: Some(target.kind.to_owned()),
            name: Some(target.name.clone()),
            namespace: Some(ns.clone()),
            uid: target.uid.clone(),
            ..Default::default()
        },
        reason: Some(reason.to_owned()),
        action: Some(action.to_owned()),
        // The API rejects messages over 1 KiB.
        message: Some(message.chars().take(1000).collect()),
        type_: Some(format!("{type_:?}")),
        count: Some(1),
        first_timestamp: Some(now.clone()),
        last_timestamp: Some(now),
        source: Some(EventSource { component: Some(COMPONENT.to_owned()), host: None }),
        reporting_component: Some(COMPONENT.to_owned()),
        reporting_instance: Some(ctx.config.identity.clone()),
        ..Default::default()
    };
    let api: Api<Event> = Api::namespaced(ctx.client.clone(), ns);
    if let Err(e) = api.create(&PostParams::default(), &event).await {
        ctx.metrics.event_failures.inc();
        tracing::warn!(error = %e, reason, object = %target.name, "could not record event");
    }
}

/// How an eviction request ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Eviction {
    Evicted,
    /// 429: a PodDisruptionBudget does not allow it now.
    Refused(String),
    /// 404: the pod is already gone.
    Gone,
}

/// Evicts a pod through the Eviction API, so PodDisruptionBudgets are respected.
pub async fn evict(ctx: &Context, pod: &str) -> Result<Eviction, Error> {
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ctx.config.namespace);
    match api.evict(pod, &EvictParams::default()).await {
        Ok(_) => Ok(Eviction::Evicted),
        Err(kube::Error::Api(e)) if e.code == 429 => Ok(Eviction::Refused(e.message)),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(Eviction::Gone),
        Err(e) => Err(e.into()),
    }
}

/// Sets the autoscaler's minimum to `to`, remembering the
/// value found before the first raise in an annotation; the annotation goes when the
/// value is back to it.
pub async fn scale(ctx: &Context, fleet: &Fleet, target: &ScaleTarget, to: i32) -> Result<String, Error> {
    let original = target.original.unwrap_or(target.current);
    let annotation = if to == original { Value::Null } else { json!(original.to_string()) };
    let meta = json!({ "annotations": { ORIGINAL_ANNOTATION: annotation } });
    let ns = &ctx.config.namespace;
    let pp = PatchParams::default();
    let described = match (&fleet.autoscaler, target.kind) {
        (Ok(Some(a)), ScaleKind::Hpa) => {
            let patch = json!({ "metadata": meta, "spec": { "minReplicas": to } });
            Api::<HorizontalPodAutoscaler>::namespaced(ctx.client.clone(), ns)
                .patch(&a.name, &pp, &Patch::Merge(&patch))
                .await?;
            format!("HorizontalPodAutoscaler {} minReplicas", a.name)
        }
        (Ok(Some(a)), ScaleKind::ScaledObject) => {
            let patch = json!({ "metadata": meta, "spec": { "minReplicaCount": to } });
            Api::<DynamicObject>::namespaced_with(ctx.client.clone(), ns, &scaled_object_resource())
                .patch(&a.name, &pp, &Patch::Merge(&patch))
                .await?;
            format!("ScaledObject {} minReplicaCount", a.name)
        }
        _ => return Err(Error::Setup("scale target changed under the decision".into())),
    };
    Ok(format!("{described} {} -> {to}", target.current))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_unavailable_resolves_like_kubernetes() {
        let cases = [
            (IntOrString::Int(1), 4, 1),
            (IntOrString::Int(-1), 4, 0),
            (IntOrString::String("25%".into()), 4, 1),
            (IntOrString::String("25%".into()), 3, 0),
            (IntOrString::String("50%".into()), 10, 5),
            (IntOrString::String("junk".into()), 10, 0),
        ];
        for (v, replicas, want) in cases {
            assert_eq!(resolve_max_unavailable(&v, replicas), want, "{v:?} of {replicas}");
        }
    }

    #[test]
    fn scaled_objects_are_matched_by_their_target() {
        let so: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject",
            "metadata": {"name": "workers", "annotations": {ORIGINAL_ANNOTATION: "2"}},
            "spec": {"scaleTargetRef": {"name": "embedding-queue-workers"}, "minReplicaCount": 3}
        }))
        .expect("valid");
        let a = scaled_object_target(&so, "embedding-queue-workers").expect("targets");
        assert_eq!((a.min, a.max, a.original), (3, 100, Some(2)));
        assert!(scaled_object_target(&so, "other").is_none());
    }
}
