//! The controller's manifests state what the operator docs promise: names, labels,
//! restricted pod security, the health/metrics port, and a kustomization listing them all.

use serde_yaml::Value;

fn load(file: &str) -> Value {
    let path = format!("{}/../../deploy/kubernetes/base/controller/{file}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn the_kustomization_lists_every_controller_manifest() {
    let k = load("kustomization.yaml");
    let listed: Vec<&str> = k["resources"].as_sequence().expect("resources").iter().filter_map(Value::as_str).collect();
    assert_eq!(listed, ["serviceaccount.yaml", "role.yaml", "rolebinding.yaml", "deployment.yaml"]);
}

#[test]
fn the_deployment_runs_restricted_as_worker_restart_controller() {
    let d = load("deployment.yaml");
    assert_eq!(d["kind"], "Deployment");
    assert_eq!(d["metadata"]["name"], "worker-restart-controller");
    let pod = &d["spec"]["template"];
    assert_eq!(pod["metadata"]["labels"]["app"], "worker-restart-controller");
    assert_eq!(d["spec"]["selector"]["matchLabels"]["app"], "worker-restart-controller");
    let spec = &pod["spec"];
    assert_eq!(spec["serviceAccountName"], "worker-restart-controller");
    assert_eq!(spec["securityContext"]["runAsNonRoot"], true);
    assert_eq!(spec["securityContext"]["runAsUser"], 1001);
    assert_eq!(spec["securityContext"]["seccompProfile"]["type"], "RuntimeDefault");
    let containers = spec["containers"].as_sequence().expect("containers");
    assert_eq!(containers.len(), 1);
    let c = &containers[0];
    let sc = &c["securityContext"];
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["runAsNonRoot"], true);
    assert_eq!(sc["capabilities"]["drop"][0], "ALL");
    assert_eq!(c["ports"][0]["containerPort"], 8081);
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/health");
    assert!(c["resources"]["limits"]["memory"].is_string(), "memory limit set");
    let env: Vec<&str> = c["env"].as_sequence().expect("env").iter().filter_map(|e| e["name"].as_str()).collect();
    for var in ["NAMESPACE", "POD_NAME", "WORKER_SELECTOR", "WORKER_DEPLOYMENT"] {
        assert!(env.contains(&var), "{var} missing");
    }
}

#[test]
fn the_service_account_and_binding_name_the_controller() {
    let sa = load("serviceaccount.yaml");
    assert_eq!(sa["metadata"]["name"], "worker-restart-controller");
    let rb = load("rolebinding.yaml");
    assert_eq!(rb["roleRef"]["kind"], "Role");
    assert_eq!(rb["roleRef"]["name"], "worker-restart-controller");
    assert_eq!(rb["subjects"][0]["name"], "worker-restart-controller");
}
