//! API objects as the mocked API server returns them: pods, the Deployment, autoscalers, the Lease.

use std::net::IpAddr;

use serde_json::{json, Value};

use super::*;

pub struct PodSpec<'a> {
    pub name: &'a str,
    pub ip: Option<IpAddr>,
    pub ready: bool,
    pub waiting: Option<&'a str>,
    pub last_terminated: Option<&'a str>,
    pub restarts: i32,
}

impl<'a> PodSpec<'a> {
    pub fn ready(name: &'a str, ip: IpAddr) -> Self {
        Self { name, ip: Some(ip), ready: true, waiting: None, last_terminated: None, restarts: 0 }
    }
    pub fn not_ready(name: &'a str, ip: IpAddr) -> Self {
        Self { ready: false, ..Self::ready(name, ip) }
    }
}

pub fn pod(p: &PodSpec) -> Value {
    let state = match p.waiting {
        Some(reason) => json!({"waiting": {"reason": reason}}),
        None => json!({"running": {}}),
    };
    let mut status = json!({
        "phase": "Running",
        "conditions": [{"type": "Ready", "status": if p.ready { "True" } else { "False" }}],
        "containerStatuses": [{
            "name": "worker", "image": "embq", "imageID": "", "ready": p.ready,
            "started": p.waiting.is_none(), "restartCount": p.restarts, "state": state,
        }]
    });
    if let Some(ip) = p.ip {
        status["podIP"] = json!(ip.to_string());
    }
    if let Some(reason) = p.last_terminated {
        status["containerStatuses"][0]["lastState"] = json!({"terminated": {"exitCode": 137, "reason": reason}});
    }
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": p.name, "namespace": NS, "uid": format!("uid-{}", p.name),
                     "labels": {"app": "embedding-queue-worker"}},
        "spec": {"containers": [{"name": "worker", "image": "embq",
                 "resources": {"limits": {"memory": "1Gi"}}}]},
        "status": status,
    })
}

pub fn pod_list(pods: &[Value]) -> Value {
    json!({"apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": "1"}, "items": pods})
}

pub fn deployment(replicas: i32, annotations: Value) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "embedding-queue-workers", "namespace": NS, "uid": "uid-deploy",
                     "annotations": annotations},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "embedding-queue-worker"}},
            "template": {},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 2, "maxUnavailable": 1}},
        }
    })
}

pub fn hpa(min: i32, max: i32, annotations: Value, labels: Value, name: &str) -> Value {
    json!({
        "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": name, "namespace": NS, "annotations": annotations, "labels": labels},
        "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment",
                                    "name": "embedding-queue-workers"},
                 "minReplicas": min, "maxReplicas": max}
    })
}

pub fn list(kind: &str, api_version: &str, items: &[Value]) -> Value {
    json!({"apiVersion": api_version, "kind": kind, "metadata": {"resourceVersion": "1"}, "items": items})
}

pub fn no_hpas() -> Value {
    list("HorizontalPodAutoscalerList", "autoscaling/v2", &[])
}

pub fn scaled_object(min: i32, annotations: Value) -> Value {
    json!({
        "apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject",
        "metadata": {"name": "embedding-queue-workers", "namespace": NS, "annotations": annotations},
        "spec": {"scaleTargetRef": {"name": "embedding-queue-workers"},
                 "minReplicaCount": min, "maxReplicaCount": 10}
    })
}

pub fn lease(holder: &str, renewed_secs_ago: i64) -> Value {
    let t = chrono::Utc::now() - chrono::Duration::seconds(renewed_secs_ago);
    json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "worker-restart-controller", "namespace": NS, "resourceVersion": "7"},
        "spec": {"holderIdentity": holder, "leaseDurationSeconds": 30,
                 "renewTime": t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)}
    })
}
