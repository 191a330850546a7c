//! The Helm chart, offline: it renders and lints (Helm SDK) with default and non-default values,
//! every rendered object validates against the Kubernetes schemas, wrong values fail at install
//! time, the RBAC is exactly what each component uses, and pods run with secure defaults.

use std::path::Path;
use std::process::Command;

use serde_json::{Value, json};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Renders the chart with `values`; Err carries what Helm or the validator said.
fn render(values: Value) -> Result<Vec<Value>, String> {
    let out = Command::new("python3")
        .arg(root().join("tests/helm/render.py"))
        .arg(root().join("charts/portcullis"))
        .arg(values.to_string())
        .output()
        .expect("python3 runs");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if stderr.contains("ModuleNotFoundError") {
        panic!("the chart tests need `pip install helm-python-sdk kubernetes-validate` (CI installs them in .ci/run): {stderr}");
    }
    if !out.status.success() {
        return Err(stderr);
    }
    Ok(serde_json::from_slice(&out.stdout).expect("render.py prints JSON"))
}

fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> Vec<&'a Value> {
    objects.iter().filter(|o| o["kind"] == kind && o["metadata"]["name"] == name).collect()
}

fn one<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    let found = find(objects, kind, name);
    assert_eq!(found.len(), 1, "expected one {kind} {name}");
    found[0]
}

fn controller_watch_rules() -> Value {
    json!([
        {"apiGroups": ["portcullis.dev"], "resources": ["authpolicies", "signingkeys", "tokenexchangepolicies"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": ["portcullis.dev"], "resources": ["authpolicies/status", "signingkeys/status", "tokenexchangepolicies/status"], "verbs": ["get", "patch"]},
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["list", "watch", "create", "update"]},
        {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list", "watch", "create", "update", "patch"]},
        {"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]},
        {"apiGroups": ["gateway.networking.k8s.io"], "resources": ["gateways", "httproutes", "grpcroutes"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": ["gateway.envoyproxy.io"], "resources": ["securitypolicies"], "verbs": ["get", "list", "watch", "create", "patch", "delete"]},
        {"apiGroups": ["security.istio.io"], "resources": ["authorizationpolicies"], "verbs": ["get", "list", "watch", "create", "patch", "delete"]},
    ])
}

fn controller_self_rules() -> Value {
    json!([
        {"apiGroups": [""], "resources": ["configmaps", "secrets"], "verbs": ["get", "list", "watch", "create", "update", "patch"]},
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "list", "watch", "create", "update", "patch"]},
        {"apiGroups": ["gateway.networking.k8s.io"], "resources": ["referencegrants"], "verbs": ["get", "list", "watch", "create", "patch", "delete"]},
    ])
}

fn gateway_rules(gateway: &str) -> Value {
    json!([
        {"apiGroups": [""], "resources": ["configmaps"], "resourceNames": [format!("portcullis-gateway-{gateway}")], "verbs": ["get", "list", "watch"]},
        {"apiGroups": [""], "resources": ["secrets"], "resourceNames": [format!("portcullis-gateway-{gateway}-keys")], "verbs": ["get", "list", "watch"]},
        // Its heartbeats, held to those names by the admission policy.
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create", "patch", "delete"]},
    ])
}

/// The admission policy that keeps the gateway's Lease writes to its own heartbeats.
fn heartbeat_policy(objects: &[Value], gateway: &str) {
    let name = "portcullis-gateway-portcullis-heartbeats";
    let policy = one(objects, "ValidatingAdmissionPolicy", name);
    assert_eq!(policy["spec"]["failurePolicy"], "Fail");
    assert_eq!(
        policy["spec"]["matchConditions"][0]["expression"],
        r#"request.userInfo.username == "system:serviceaccount:portcullis:portcullis-gateway""#
    );
    let rule = policy["spec"]["validations"][0]["expression"].as_str().unwrap();
    let prefix = format!(r#"startsWith("portcullis-heartbeat-{gateway}-")"#);
    assert_eq!(rule.matches(&prefix).count(), 2, "create/update and delete are both held to the prefix: {rule}");
    assert!(rule.contains(&format!(r#"object.metadata.labels["portcullis.dev/heartbeat"] == "{gateway}""#)), "{rule}");
    let binding = one(objects, "ValidatingAdmissionPolicyBinding", name);
    assert_eq!((binding["spec"]["policyName"].as_str(), binding["spec"]["validationActions"][0].as_str()), (Some(name), Some("Deny")));
    // The gateway names its heartbeat after its Pod and lets the Pod own it.
    let gateway_pod = &one(objects, "Deployment", "portcullis-gateway")["spec"]["template"]["spec"]["containers"][0];
    let env: Vec<&str> =
        gateway_pod["env"].as_array().unwrap().iter().filter_map(|e| e["valueFrom"]["fieldRef"]["fieldPath"].as_str()).collect();
    assert!(env.contains(&"metadata.name") && env.contains(&"metadata.uid"), "{env:?}");
}

fn no_wildcards(objects: &[Value]) {
    for o in objects.iter().filter(|o| o["kind"] == "Role" || o["kind"] == "ClusterRole") {
        for rule in o["rules"].as_array().unwrap() {
            for field in ["apiGroups", "resources", "verbs", "resourceNames"] {
                assert!(
                    !rule[field].as_array().into_iter().flatten().any(|v| v.as_str().is_some_and(|s| s.contains('*'))),
                    "wildcard in {} {}: {rule}",
                    o["kind"],
                    o["metadata"]["name"]
                );
            }
        }
    }
}

/// Every role the gateway's ServiceAccount is bound to.
fn gateway_bindings(objects: &[Value]) -> Vec<(String, String)> {
    objects
        .iter()
        .filter(|o| o["kind"] == "RoleBinding" || o["kind"] == "ClusterRoleBinding")
        .filter(|o| o["subjects"].as_array().unwrap().iter().any(|s| s["name"] == "portcullis-gateway"))
        .map(|o| (o["kind"].as_str().unwrap().to_owned(), o["roleRef"]["name"].as_str().unwrap().to_owned()))
        .collect()
}

fn secure_pods(objects: &[Value]) {
    for d in objects.iter().filter(|o| o["kind"] == "Deployment") {
        let name = d["metadata"]["name"].as_str().unwrap();
        let pod = &d["spec"]["template"]["spec"];
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{name}");
        assert_eq!(pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault", "{name}");
        for c in pod["containers"].as_array().unwrap() {
            let sc = &c["securityContext"];
            assert_eq!(
                (sc["runAsNonRoot"].as_bool(), sc["readOnlyRootFilesystem"].as_bool(), sc["allowPrivilegeEscalation"].as_bool()),
                (Some(true), Some(true), Some(false)),
                "{name}"
            );
            assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]), "{name}");
            assert!(c["resources"]["requests"].is_object() && c["resources"]["limits"].is_object(), "{name} has requests and limits");
            for probe in ["livenessProbe", "readinessProbe"] {
                assert_eq!(c[probe]["httpGet"]["port"], "admin", "{name} {probe} on the admin port");
            }
            assert!(c["ports"].as_array().unwrap().iter().any(|p| p["name"] == "admin"));
        }
    }
}

#[test]
fn the_chart_carries_exactly_the_generated_crds() {
    for crd in portcullis::api::crds() {
        let file = portcullis::api::crd_file_name(&crd);
        let chart = std::fs::read_to_string(root().join("charts/portcullis/crds").join(&file)).unwrap_or_default();
        assert_eq!(
            chart,
            std::fs::read_to_string(root().join("crds").join(&file)).unwrap(),
            "charts/portcullis/crds/{file} differs from crds/{file}: run `cargo run -- crds --out crds --out charts/portcullis/crds`"
        );
    }
}

#[test]
fn default_values_render_a_least_privilege_secure_install() {
    let objects = render(json!({})).unwrap();
    no_wildcards(&objects);
    secure_pods(&objects);
    assert_eq!(one(&objects, "ClusterRole", "portcullis-controller")["rules"], controller_watch_rules());
    assert_eq!(one(&objects, "Role", "portcullis-controller-self")["rules"], controller_self_rules());
    assert_eq!(one(&objects, "Role", "portcullis-gateway")["rules"], gateway_rules("default"));
    heartbeat_policy(&objects, "default");
    assert_eq!(
        gateway_bindings(&objects),
        [("RoleBinding".to_owned(), "portcullis-gateway".to_owned())],
        "the gateway gets nothing cluster-wide"
    );

    let controller = one(&objects, "Deployment", "portcullis-controller");
    assert_eq!(controller["spec"]["replicas"], 2);
    let args = controller["spec"]["template"]["spec"]["containers"][0]["args"].as_array().unwrap();
    assert!(args.contains(&json!("--lease-name=portcullis-controller")) && !args.contains(&json!("--no-leader-election")));
    let gateway = one(&objects, "Deployment", "portcullis-gateway");
    let gargs = gateway["spec"]["template"]["spec"]["containers"][0]["args"].as_array().unwrap();
    assert!(gargs.contains(&json!("--configmap=$(POD_NAMESPACE)/portcullis-gateway-default")), "{gargs:?}");
    assert!(gargs.contains(&json!("--issuer-url=http://portcullis-gateway.portcullis.svc:8080")));
    assert!(gargs.contains(&json!("--path-mode=strict")), "paths not in normal form are refused by default: {gargs:?}");
    assert!(gargs.contains(&json!("--grpc-listen=0.0.0.0:9001")), "gRPC ext_authz is on in the chart: {gargs:?}");
    // The token cache's budget sits well inside the container's memory limit.
    assert!(gargs.contains(&json!("--token-cache-mib=64")), "{gargs:?}");
    let limit = gateway["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"].as_str().unwrap();
    assert_eq!(limit, "256Mi");
    let grpc =
        one(&objects, "Service", "portcullis-gateway")["spec"]["ports"].as_array().unwrap().iter().find(|p| p["name"] == "grpc").cloned();
    assert_eq!(grpc.map(|p| (p["port"].clone(), p["appProtocol"].clone())), Some((json!(9001), json!("grpc"))));
    let climit = controller["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"].as_str().unwrap();
    assert_eq!(climit, "512Mi", "10,000 policies peak at half of it (docs/performance.md)");
    let cenv = controller["spec"]["template"]["spec"]["containers"][0]["env"].as_array().unwrap();
    assert!(!cenv.iter().any(|e| e["name"] == "PORTCULLIS_GATEWAY_SETTINGS"), "no settings: the safe default");
    // Gateway API: wired to this release's gateway Service, as the controller parses it.
    let wiring = cenv.iter().find(|e| e["name"] == "PORTCULLIS_GATEWAY_API_SETTINGS").expect("Gateway API settings");
    let wiring: portcullis::controller::wiring::WiringSettings = serde_json::from_str(wiring["value"].as_str().unwrap()).unwrap();
    assert!(wiring.enabled);
    assert_eq!(
        wiring.authorizers["default"],
        portcullis::controller::wiring::ServiceRef { namespace: "portcullis".into(), name: "portcullis-gateway".into(), port: 9001 }
    );
    assert_eq!(
        wiring,
        portcullis::controller::wiring::WiringSettings { authorizers: wiring.authorizers.clone(), ..Default::default() },
        "the chart's map is the built-in one"
    );
    // GatewayClasses are cluster-scoped: read only, nothing else cluster-wide.
    assert_eq!(
        one(&objects, "ClusterRole", "portcullis-controller-gatewayclasses")["rules"],
        json!([{"apiGroups": ["gateway.networking.k8s.io"], "resources": ["gatewayclasses"], "verbs": ["get", "list", "watch"]}])
    );
    for optional in ["HorizontalPodAutoscaler", "PodDisruptionBudget", "NetworkPolicy", "ServiceMonitor"] {
        assert!(!objects.iter().any(|o| o["kind"] == optional), "{optional} is off by default");
    }
    service_account_issuer(&objects);
}

/// The cluster's ServiceAccount issuer: the controller reads its discovery document and JWKS,
/// and nothing else of the API server's non-resource URLs; the gateway none of it.
fn service_account_issuer(objects: &[Value]) {
    let name = "portcullis-controller-service-account-issuer";
    assert_eq!(
        one(objects, "ClusterRole", name)["rules"],
        json!([{"nonResourceURLs": ["/.well-known/openid-configuration", "/openid/v1/jwks"], "verbs": ["get"]}])
    );
    let binding = one(objects, "ClusterRoleBinding", name);
    assert_eq!(binding["subjects"], json!([{"kind": "ServiceAccount", "name": "portcullis-controller", "namespace": "portcullis"}]));
    assert!(!gateway_bindings(objects).iter().any(|(_, role)| role == name));
}

#[test]
fn non_default_values_scope_rbac_to_namespaces_and_add_the_optional_objects() {
    let objects = render(json!({
        "controller": {"watchNamespaces": ["shop", "billing"], "replicas": 3, "podDisruptionBudget": {"enabled": true, "minAvailable": 1},
                       "gatewaySettings": {"edge": {"hosts": [{"pattern": "*.shop.example", "namespaces": ["shop"]}], "mintingKeys": ["shop/internal"], "unlistedHosts": "Refuse"}}},
        "gateway": {"name": "edge", "autoscaling": {"enabled": true, "minReplicas": 2, "maxReplicas": 6}, "podDisruptionBudget": {"enabled": true, "minAvailable": "50%"},
                    "issuerURL": "https://auth.example.com", "service": {"type": "LoadBalancer"}},
        "jwksCA": {"configMap": "corporate-ca"},
        "serviceMonitor": {"enabled": true, "labels": {"release": "prometheus"}},
        "networkPolicy": {"enabled": true, "gatewayFrom": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}}]},
    }))
    .unwrap();
    no_wildcards(&objects);
    secure_pods(&objects);
    assert!(find(&objects, "ClusterRole", "portcullis-controller").is_empty(), "no cluster-wide access when namespaces are listed");
    let roles = find(&objects, "Role", "portcullis-controller");
    let namespaces: Vec<&str> = roles.iter().map(|r| r["metadata"]["namespace"].as_str().unwrap()).collect();
    assert_eq!(namespaces, ["shop", "billing"]);
    for r in roles {
        assert_eq!(r["rules"], controller_watch_rules());
    }
    assert_eq!(one(&objects, "Role", "portcullis-gateway")["rules"], gateway_rules("edge"));
    heartbeat_policy(&objects, "edge");
    assert_eq!(gateway_bindings(&objects), [("RoleBinding".to_owned(), "portcullis-gateway".to_owned())]);
    // Namespaced or not, the issuer's two URLs are cluster-wide by nature.
    service_account_issuer(&objects);
    let controller = &one(&objects, "Deployment", "portcullis-controller")["spec"]["template"]["spec"]["containers"][0];
    assert!(controller["args"].as_array().unwrap().contains(&json!("--watch-namespaces=shop,billing")));
    // The gateway settings reach the controller as it parses them.
    let settings = controller["env"].as_array().unwrap().iter().find(|e| e["name"] == "PORTCULLIS_GATEWAY_SETTINGS").expect("settings env");
    let parsed = portcullis::policy::tenancy::parse_settings(settings["value"].as_str().unwrap()).unwrap();
    assert_eq!(parsed["edge"].minting_keys, ["shop/internal"]);
    assert_eq!(parsed["edge"].hosts[0].namespaces, ["shop"]);
    let gateway = one(&objects, "Deployment", "portcullis-gateway");
    assert!(gateway["spec"].get("replicas").is_none(), "the HPA owns the replica count");
    for d in ["portcullis-gateway", "portcullis-controller"] {
        let pod = &one(&objects, "Deployment", d)["spec"]["template"]["spec"];
        assert!(pod["containers"][0]["args"].as_array().unwrap().contains(&json!("--jwks-ca-file=/etc/portcullis/jwks-ca/ca.crt")), "{d}");
        assert_eq!(pod["volumes"][0]["configMap"]["name"], "corporate-ca", "{d}");
        assert_eq!(pod["containers"][0]["volumeMounts"][0]["mountPath"], "/etc/portcullis/jwks-ca", "{d}");
    }
    assert_eq!(one(&objects, "HorizontalPodAutoscaler", "portcullis-gateway")["spec"]["maxReplicas"], 6);
    assert_eq!(find(&objects, "PodDisruptionBudget", "portcullis-gateway").len(), 1);
    assert_eq!(find(&objects, "PodDisruptionBudget", "portcullis-controller").len(), 1);
    let np = one(&objects, "NetworkPolicy", "portcullis-gateway");
    assert_eq!(np["spec"]["ingress"][0]["from"][0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"], "ingress-nginx");
    assert_eq!(one(&objects, "ServiceMonitor", "portcullis-gateway")["metadata"]["labels"]["release"], "prometheus");
    assert_eq!(one(&objects, "Service", "portcullis-gateway")["spec"]["type"], "LoadBalancer");
}

#[test]
fn without_heartbeats_the_gateway_writes_nothing_at_all() {
    let objects = render(json!({"gateway": {"heartbeat": {"enabled": false}}})).unwrap();
    let rules = one(&objects, "Role", "portcullis-gateway")["rules"].clone();
    assert!(rules.as_array().unwrap().iter().all(|r| r["verbs"] == json!(["get", "list", "watch"])), "{rules}");
    assert!(!objects.iter().any(|o| o["kind"] == "ValidatingAdmissionPolicy"));
    let gateway = one(&objects, "Deployment", "portcullis-gateway");
    assert!(gateway["spec"]["template"]["spec"]["containers"][0]["args"].as_array().unwrap().contains(&json!("--no-heartbeat")));
}

#[test]
fn without_gateway_api_the_controller_gets_no_access_to_it() {
    let objects = render(json!({"controller": {"gatewayAPI": {"enabled": false}}})).unwrap();
    let text =
        serde_json::to_string(&objects.iter().filter(|o| o["kind"].as_str().is_some_and(|k| k.contains("Role"))).collect::<Vec<_>>())
            .unwrap();
    for group in ["gateway.networking.k8s.io", "gateway.envoyproxy.io", "security.istio.io"] {
        assert!(!text.contains(group), "{group} in {text}");
    }
    let controller = one(&objects, "Deployment", "portcullis-controller");
    let env = controller["spec"]["template"]["spec"]["containers"][0]["env"].as_array().unwrap();
    let wiring = env.iter().find(|e| e["name"] == "PORTCULLIS_GATEWAY_API_SETTINGS").unwrap();
    assert!(!serde_json::from_str::<portcullis::controller::wiring::WiringSettings>(wiring["value"].as_str().unwrap()).unwrap().enabled);
}

#[test]
fn wrong_values_fail_at_install_time() {
    for (values, complaint) in [
        (json!({"controller": {"replicas": "two"}}), "/controller/replicas"),
        (json!({"gateway": {"name": "Not_A_Name"}}), "/gateway/name"),
        (json!({"gateway": {"port": 70000}}), "/gateway/port"),
        (json!({"controller": {"logFormat": "xml"}}), "/controller/logFormat"),
        (json!({"gatway": {}}), "gatway"),
        (json!({"image": {"pullPolicy": "Sometimes"}}), "/image/pullPolicy"),
        (json!({"gateway": {"pathMode": "lenient"}}), "/gateway/pathMode"),
        (json!({"controller": {"gatewaySettings": {"default": {"mintingKeys": ["internal"]}}}}), "mintingKeys"),
        (json!({"controller": {"gatewaySettings": {"default": {"hostz": []}}}}), "hostz"),
        (json!({"controller": {"gatewaySettings": {"default": {"unlistedHosts": "Whoever"}}}}), "unlistedHosts"),
        (json!({"controller": {"gatewayAPI": {"integrations": {"example.com/gateway": "nginx"}}}}), "integrations"),
        (json!({"controller": {"gatewayAPI": {"enabeld": false}}}), "enabeld"),
    ] {
        let err = render(values.clone()).expect_err(&values.to_string());
        assert!(err.contains(complaint), "{values}: {err}");
    }
}

#[test]
fn the_dockerfile_builds_from_the_lock_file_and_runs_unprivileged() {
    let dockerfile = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    let from: Vec<&str> = dockerfile.lines().filter(|l| l.starts_with("FROM ")).collect();
    assert_eq!(from.len(), 2, "a build stage and a runtime stage");
    assert!(from[0].contains("rust:1.") && from[0].contains(" AS build"), "a pinned Rust image: {}", from[0]);
    assert!(dockerfile.matches("--locked").count() >= 2, "every cargo build uses --locked");
    assert!(dockerfile.contains("USER 65532:65532") && from[1].contains(":nonroot"));
    assert!(dockerfile.contains("COPY --from=build /portcullis /usr/local/bin/portcullis"));
    let ignore = std::fs::read_to_string(root().join(".dockerignore")).unwrap();
    assert!(ignore.lines().any(|l| l == "target") && ignore.contains(".portcullis"), "build context excludes target/ and local keys");
}
