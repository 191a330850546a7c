//! The objects the controller generates for Envoy Gateway and Istio, checked against those
//! projects' official CRDs (`../shared/crds/`, read at test time): the OpenAPI schema as the API
//! server's structural validation applies it (`tests/schema/validate.py`) and every CEL rule
//! (kube's client-side CEL), plus fields the schema does not declare.

use std::path::{Path, PathBuf};

use kube::core::cel::Validator;
use portcullis::api::schema_check::unknown_fields;
use portcullis::controller::wiring::{Owner, ServiceRef, authorization_policy, reference_grant, security_policy};
use portcullis::policy::gateway_api::{TargetKind, TargetRef};
use portcullis::policy::host::HostPattern;
use serde_json::{Value, json};

fn crds_dir() -> PathBuf {
    std::env::var_os("PORTCULLIS_SHARED_CRDS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/crds"))
}

/// (file, kind, version) of the official CRD a generated kind must satisfy.
fn crd_of(kind: &str) -> (PathBuf, &'static str, &'static str) {
    let d = crds_dir();
    match kind {
        "SecurityPolicy" => (d.join("envoy-gateway-v1.9.0/gateway.envoyproxy.io_securitypolicies.yaml"), "SecurityPolicy", "v1alpha1"),
        "AuthorizationPolicy" => (d.join("istio-v1.30.3/security.istio.io.yaml"), "AuthorizationPolicy", "v1"),
        "ReferenceGrant" => (d.join("gateway-api-v1.6.1/gateway.networking.k8s.io_referencegrants.yaml"), "ReferenceGrant", "v1beta1"),
        other => panic!("no CRD for {other}"),
    }
}

fn schema(kind: &str) -> Value {
    let (file, kind, version) = crd_of(kind);
    let text = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e} (set PORTCULLIS_SHARED_CRDS)", file.display()));
    let docs: Vec<Value> = serde_saphyr::from_multiple(&text).unwrap();
    let crd = docs.iter().find(|d| d["spec"]["names"]["kind"] == kind).unwrap();
    let v = crd["spec"]["versions"].as_array().unwrap().iter().find(|v| v["name"] == version).unwrap();
    v["schema"]["openAPIV3Schema"].clone()
}

/// Every error the API server would answer `doc` with: structural, CEL, unknown fields.
fn errors(doc: &Value) -> Vec<String> {
    let kind = doc["kind"].as_str().unwrap();
    let (file, kind_name, version) = crd_of(kind);
    let mut out: Vec<String> = Vec::new();
    let mut child = std::process::Command::new("python3")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/schema/validate.py"))
        .args([file.as_os_str(), kind_name.as_ref(), version.as_ref()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs");
    use std::io::Write;
    child.stdin.take().unwrap().write_all(serde_json::to_string(&[doc]).unwrap().as_bytes()).unwrap();
    let result = child.wait_with_output().unwrap();
    assert!(result.status.success(), "validate.py: {}", String::from_utf8_lossy(&result.stderr));
    let structural: Vec<Vec<String>> = serde_json::from_slice(&result.stdout).unwrap();
    out.extend(structural.into_iter().flatten());
    let schema = schema(kind);
    if let Err(e) = Validator::new().validate(&schema, doc, None) {
        out.push(format!("CEL: {e}"));
    }
    // (metadata is the API server's own to validate, whatever the CRD says of it.)
    let mut body = doc.clone();
    body.as_object_mut().unwrap().remove("metadata");
    out.extend(unknown_fields(&schema, &body).into_iter().map(|f| format!("unknown field {f}")));
    out
}

fn owner() -> Owner<'static> {
    Owner { namespace: "shop", name: "orders", uid: "0b6f2c1e-5b1a-4c8e-9a8e-2f1f7f3c2d10", instance: "portcullis.portcullis-controller" }
}

fn authorizer() -> ServiceRef {
    ServiceRef { namespace: "portcullis".into(), name: "portcullis-gateway".into(), port: 9001 }
}

#[test]
fn generated_security_policies_are_valid_envoy_gateway_objects() {
    for (kind, section) in [
        (TargetKind::HttpRoute, None),
        (TargetKind::HttpRoute, Some("pay")),
        (TargetKind::GrpcRoute, None),
        (TargetKind::Gateway, Some("https")),
    ] {
        let target = TargetRef { kind, name: "web".into(), section: section.map(str::to_owned) };
        let doc = security_policy(&owner(), &target, &authorizer());
        assert_eq!(errors(&doc), Vec::<String>::new(), "{doc:#}");
    }
}

#[test]
fn generated_istio_authorization_policies_and_reference_grants_are_valid() {
    for hosts in [vec![HostPattern::parse("api.shop.test").unwrap(), HostPattern::parse("*.shop.test").unwrap()], vec![HostPattern::Any]] {
        let doc = authorization_policy(&owner(), ("infra", "web"), &hosts, "portcullis");
        assert_eq!(errors(&doc), Vec::<String>::new(), "{doc:#}");
    }
    let doc = reference_grant("shop", &authorizer(), "portcullis.portcullis-controller");
    assert_eq!(errors(&doc), Vec::<String>::new(), "{doc:#}");
}

#[test]
fn the_checks_refuse_what_the_api_server_would() {
    // A check that cannot fail proves nothing: each of these breaks one rule of the CRDs.
    let target = TargetRef { kind: TargetKind::HttpRoute, name: "web".into(), section: None };
    let good = security_policy(&owner(), &target, &authorizer());
    let broken = |f: &dyn Fn(&mut Value)| {
        let mut d = good.clone();
        f(&mut d);
        d
    };
    for (doc, why) in [
        (broken(&|d| d["spec"]["extAuth"]["http"] = json!({"backendRefs": [{"name": "x", "port": 80}]})), "grpc and http both set (CEL)"),
        (broken(&|d| d["spec"]["extAuth"]["failOpen"] = json!("no")), "failOpen not a boolean (schema)"),
        (broken(&|d| d["spec"]["targetRefs"][0]["kind"] = json!("Service")), "target kind (CEL)"),
        (broken(&|d| d["spec"]["extAuth"]["grpc"]["backendRefs"][0]["kind"] = json!("Pod")), "backend kind (CEL)"),
        (broken(&|d| d["spec"]["extAuth"]["sendToAuthz"] = json!(true)), "unknown field"),
    ] {
        assert!(!errors(&doc).is_empty(), "{why}: accepted");
    }
    let mut ap = authorization_policy(&owner(), ("infra", "web"), &[HostPattern::Any], "portcullis");
    ap["spec"]["selector"] = json!({"matchLabels": {"app": "x"}});
    assert!(!errors(&ap).is_empty(), "selector and targetRefs together (CEL)");
}
