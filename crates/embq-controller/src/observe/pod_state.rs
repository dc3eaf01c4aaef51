//! The pod status a kubelet reports, reduced to what the policy judges.

use std::net::IpAddr;

use k8s_openapi::api::core::v1::Pod;

use crate::policy::Critical;
/// What the pod object says, before any scrape.
#[derive(Debug, Clone, PartialEq)]
pub struct PodStatus {
    pub name: String,
    pub ip: Option<IpAddr>,
    pub ready: bool,
    pub running: bool,
    /// Phase Failed or Succeeded: the pod will never run again.
    pub finished: bool,
    /// Every container passed its startup probe (or has none): /health is meaningful.
    pub started: bool,
    pub terminating: bool,
    pub restarts: i32,
    /// Critical condition as Kubernetes sees it; OOM `fresh` is filled in by the caller.
    pub critical: Option<Critical>,
    pub memory_limit: Option<String>,
    /// The owning ReplicaSet's name.
    pub owner: Option<String>,
    /// The pod-template-hash label.
    pub template: Option<String>,
}

const IMAGE_PULL_REASONS: [&str; 4] = ["ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"];

/// Reads the parts of a Pod the policy needs. Missing fields read as "not known", never panic.
pub fn pod_status(pod: &Pod) -> PodStatus {
    let name = pod.metadata.name.clone().unwrap_or_default();
    let status = pod.status.as_ref();
    let ip = status.and_then(|s| s.pod_ip.as_deref()).and_then(|ip| ip.parse().ok());
    let ready = status
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    let phase = status.and_then(|s| s.phase.as_deref());
    let running = phase == Some("Running");
    let finished = matches!(phase, Some("Failed" | "Succeeded"));
    let containers = status.and_then(|s| s.container_statuses.as_deref()).unwrap_or_default();
    let restarts = containers.iter().map(|c| c.restart_count).max().unwrap_or(0);
    let started = !containers.is_empty() && containers.iter().all(|c| c.started.unwrap_or(c.ready));

    let waiting = |c: &k8s_openapi::api::core::v1::ContainerStatus| {
        c.state.as_ref().and_then(|s| s.waiting.as_ref()).and_then(|w| w.reason.clone()).unwrap_or_default()
    };
    let oom = |c: &k8s_openapi::api::core::v1::ContainerStatus| {
        let last = c.last_state.as_ref().and_then(|s| s.terminated.as_ref());
        let now = c.state.as_ref().and_then(|s| s.terminated.as_ref());
        [last, now].into_iter().flatten().any(|t| t.reason.as_deref() == Some("OOMKilled"))
    };
    // Image pull first (nothing else can run), then OOM (the crash loop's cause), then crash loop.
    let critical = if containers.iter().any(|c| IMAGE_PULL_REASONS.contains(&waiting(c).as_str())) {
        Some(Critical::ImagePull)
    } else if let Some(c) = containers.iter().find(|c| oom(c)) {
        Some(Critical::OomKilled { restarts: c.restart_count, fresh: true })
    } else {
        containers
            .iter()
            .find(|c| waiting(c) == "CrashLoopBackOff")
            .map(|c| Critical::CrashLoop { restarts: c.restart_count })
    };
    let memory_limit = pod
        .spec
        .as_ref()
        .and_then(|s| s.containers.first())
        .and_then(|c| c.resources.as_ref())
        .and_then(|r| r.limits.as_ref())
        .and_then(|l| l.get("memory"))
        .map(|q| q.0.clone());

    let owner = pod.metadata.owner_references.iter().flatten().find(|o| o.kind == "ReplicaSet").map(|o| o.name.clone());
    let template = pod.metadata.labels.as_ref().and_then(|l| l.get("pod-template-hash")).cloned();
    PodStatus {
        name,
        owner,
        template,
        ip,
        ready,
        running,
        finished,
        started,
        terminating: pod.metadata.deletion_timestamp.is_some(),
        restarts,
        critical,
        memory_limit,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod_json(v: serde_json::Value) -> Pod {
        serde_json::from_value(v).expect("valid pod json")
    }

    #[test]
    fn pod_status_reads_kubelet_states() {
        let cases = vec![
            (
                "pulling fails",
                serde_json::json!({"metadata":{"name":"a"},"status":{"phase":"Pending","containerStatuses":[
                    {"name":"w","image":"i","imageID":"","ready":false,"restartCount":0,
                     "state":{"waiting":{"reason":"ImagePullBackOff"}}}]}}),
                Some(Critical::ImagePull),
            ),
            (
                "crash loop",
                serde_json::json!({"metadata":{"name":"a"},"status":{"phase":"Running","containerStatuses":[
                    {"name":"w","image":"i","imageID":"","ready":false,"restartCount":5,
                     "state":{"waiting":{"reason":"CrashLoopBackOff"}},
                     "lastState":{"terminated":{"exitCode":1,"reason":"Error"}}}]}}),
                Some(Critical::CrashLoop { restarts: 5 }),
            ),
            (
                "crash loop caused by OOM kills",
                serde_json::json!({"metadata":{"name":"a"},"status":{"phase":"Running","containerStatuses":[
                    {"name":"w","image":"i","imageID":"","ready":false,"restartCount":2,
                     "state":{"waiting":{"reason":"CrashLoopBackOff"}},
                     "lastState":{"terminated":{"exitCode":137,"reason":"OOMKilled"}}}]}}),
                Some(Critical::OomKilled { restarts: 2, fresh: true }),
            ),
            (
                "healthy",
                serde_json::json!({"metadata":{"name":"a"},"status":{"phase":"Running","podIP":"127.0.0.1",
                    "conditions":[{"type":"Ready","status":"True"}],
                    "containerStatuses":[{"name":"w","image":"i","imageID":"","ready":true,"restartCount":0,
                     "state":{"running":{}}}]}}),
                None,
            ),
            ("no status at all", serde_json::json!({"metadata":{"name":"a"}}), None),
        ];
        for (name, json, want) in cases {
            assert_eq!(pod_status(&pod_json(json)).critical, want, "{name}");
        }
        let healthy = pod_status(&pod_json(serde_json::json!({"metadata":{"name":"a"},
            "status":{"phase":"Running","podIP":"127.0.0.1","conditions":[{"type":"Ready","status":"True"}]}})));
        assert!(healthy.ready && healthy.running && !healthy.terminating);
        assert_eq!(healthy.ip, Some(IpAddr::from([127, 0, 0, 1])));
    }
}
