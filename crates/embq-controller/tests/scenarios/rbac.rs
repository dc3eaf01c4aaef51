//! The Role in deploy/ against the requests every scenario makes: each request allowed,
//! each rule used, each named object granted by name.

use std::collections::BTreeSet;

use super::capacity::*;
use super::fleet_guards::*;
use super::leadership::*;
use super::restarts::*;

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
