//! The CRD schemas as an API server would apply them, without one: every CEL rule compiles and
//! stays within the cost budget, the examples are valid, and typical mistakes are rejected at
//! `kubectl apply` time with the intended message.

use std::collections::HashMap;
use std::path::Path;

use kube::CustomResourceExt;
use kube::core::cel::{ScopeContext, Validator, WarningKind, analyze_rule, compile_schema};
use portcullis::api::schema_check::{crd_schema, unknown_fields};
use portcullis::api::{AuthPolicy, SigningKey};
use serde_json::{Value, json};

#[path = "common/cel_cases.rs"]
mod cel_cases;
use cel_cases::{good_policies, issuer, mistakes, policy};

fn schema_for(kind: &str) -> Value {
    match kind {
        "AuthPolicy" => crd_schema(&AuthPolicy::crd()),
        "SigningKey" => crd_schema(&SigningKey::crd()),
        other => panic!("unexpected kind {other}"),
    }
}

/// Every node with CEL rules, depth first.
fn rule_nodes<'a>(schema: &'a Value, at: String, out: &mut Vec<(String, &'a Value)>) {
    if schema.get("x-kubernetes-validations").is_some() {
        out.push((at.clone(), schema));
    }
    if let Some(props) = schema.get("properties").and_then(Value::as_object) {
        for (k, v) in props {
            rule_nodes(v, format!("{at}.{k}"), out);
        }
    }
    if let Some(items) = schema.get("items") {
        rule_nodes(items, format!("{at}[]"), out);
    }
}

#[test]
fn every_cel_rule_compiles_and_fits_the_cost_budget() {
    for kind in ["AuthPolicy", "SigningKey"] {
        let schema = schema_for(kind);
        let mut nodes = Vec::new();
        rule_nodes(&schema, kind.to_owned(), &mut nodes);
        assert!(nodes.len() >= 2, "{kind} has too few CEL rules");
        for (at, node) in nodes {
            let compiled = compile_schema(node);
            assert!(!compiled.has_errors(), "{at}: {:?}", compiled.compilation_errors());
            for rule in node["x-kubernetes-validations"].as_array().unwrap() {
                let text = rule["rule"].as_str().unwrap();
                // (The scope check does not know comprehension variables such as `r` in
                // `all(r, ..)`, so only the cost estimate is asserted.)
                for w in analyze_rule(text, &compiled, ScopeContext::CrdValidation) {
                    assert!(!matches!(w.kind, WarningKind::CostExceeded), "{at}: {text}: {}", w.message);
                }
            }
        }
    }
}

fn example_documents() -> Vec<(String, Value)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut out = Vec::new();
    for file in portcullis::local::yaml_files(&root) {
        let text = std::fs::read_to_string(&file).unwrap();
        let docs: Vec<Value> = serde_saphyr::from_multiple(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        // Policy tests (kind AuthPolicyTest) are files for `portcullis test`, not resources.
        for (i, d) in docs.into_iter().enumerate().filter(|(_, d)| !d.is_null() && d["kind"] != "AuthPolicyTest") {
            out.push((format!("{} #{}", file.display(), i + 1), d));
        }
    }
    out
}

#[test]
fn examples_are_valid_resources() {
    let docs = example_documents();
    assert!(docs.len() >= 4);
    let validator = Validator::new();
    for (name, doc) in docs {
        let kind = doc["kind"].as_str().unwrap_or_default();
        let schema = schema_for(kind);
        assert_eq!(unknown_fields(&schema, &doc), Vec::<String>::new(), "{name}");
        validator.validate(&schema, &doc, None).unwrap_or_else(|e| panic!("{name}: {e}"));
        match kind {
            "AuthPolicy" => drop(serde_json::from_value::<AuthPolicy>(doc).unwrap_or_else(|e| panic!("{name}: {e}"))),
            _ => drop(serde_json::from_value::<SigningKey>(doc).unwrap_or_else(|e| panic!("{name}: {e}"))),
        }
    }
}

/// Structural validation (types, required, enums, patterns, lengths) of documents of `kind`
/// against its CRD, the way the API server applies it; one error list per document.
fn structural_errors(kind: &str, docs: &[Value]) -> Vec<Vec<String>> {
    let file = if kind == "AuthPolicy" { "authpolicies.portcullis.dev.yaml" } else { "signingkeys.portcullis.dev.yaml" };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut child = std::process::Command::new("python3")
        .arg(root.join("tests/schema/validate.py"))
        .arg(root.join("crds").join(file))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs");
    use std::io::Write;
    child.stdin.take().unwrap().write_all(serde_json::to_string(docs).unwrap().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "validate.py failed (pip install jsonschema pyyaml): {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn examples_validate_against_the_crd_schemas() {
    for kind in ["AuthPolicy", "SigningKey"] {
        let docs: Vec<Value> = example_documents().into_iter().map(|(_, d)| d).filter(|d| d["kind"] == kind).collect();
        assert!(!docs.is_empty());
        for (doc, errors) in docs.iter().zip(structural_errors(kind, &docs)) {
            assert!(errors.is_empty(), "{}: {errors:?}", doc["metadata"]["name"]);
        }
    }
}

#[test]
fn the_crd_schemas_reject_malformed_values() {
    let base = policy(json!({"issuers": [issuer()], "rules": [{"name": "r", "match": {"paths": [{"prefix": "/"}]}}]}));
    let bad = |path: &[&str], value: Value| {
        let mut d = base.clone();
        let mut at = &mut d;
        for p in &path[..path.len() - 1] {
            at = match p.parse::<usize>() {
                Ok(i) => &mut at[i],
                Err(_) => &mut at[*p],
            };
        }
        at[path[path.len() - 1]] = value;
        d
    };
    let cases = [
        (bad(&["spec", "hosts"], json!(["API.example.com"])), "spec.hosts.0"),
        (bad(&["spec", "hosts"], json!(["example.com:8080"])), "spec.hosts.0"),
        (bad(&["spec", "gateway"], json!("Default")), "spec.gateway"),
        (bad(&["spec", "issuers", "0", "algorithms"], json!(["HS256"])), "spec.issuers.0.algorithms.0"),
        (bad(&["spec", "rules", "0", "serviceAccounts"], json!(["shop"])), "spec.rules.0.serviceAccounts.0"),
        (bad(&["spec", "issuers", "0", "audiences"], json!([])), "spec.issuers.0.audiences"),
        (bad(&["spec", "issuers", "0", "clockSkew"], json!("5 minutes")), "spec.issuers.0.clockSkew"),
        (bad(&["spec", "issuers", "0", "jwks", "uri"], json!("ftp://x")), "spec.issuers.0.jwks.uri"),
        (bad(&["spec", "rules"], json!([])), "spec.rules"),
        (bad(&["spec", "rules", "0", "name"], json!("Read_All")), "spec.rules.0.name"),
        (bad(&["spec", "rules", "0", "match", "paths", "0", "prefix"], json!("orders")), "spec.rules.0.match.paths.0.prefix"),
        (bad(&["spec", "rules", "0", "match", "methods"], json!(["FETCH"])), "spec.rules.0.match.methods.0"),
        (bad(&["spec", "forward"], json!({"token": "copy"})), "spec.forward.token"),
    ];
    let docs: Vec<Value> = cases.iter().map(|(d, _)| d.clone()).collect();
    let results = structural_errors("AuthPolicy", &docs);
    for ((_, field), errors) in cases.iter().zip(&results) {
        assert!(errors.iter().any(|e| e.starts_with(field)), "{field} should be rejected: {errors:?}");
    }
    assert_eq!(structural_errors("AuthPolicy", &[base]), [Vec::<String>::new()], "the base document itself is valid");
    let sk = json!({"apiVersion": "portcullis.dev/v1alpha1", "kind": "SigningKey", "metadata": {"name": "k"}, "spec": {"algorithm": "HS256", "rotationInterval": "1d"}});
    let errors = &structural_errors("SigningKey", &[sk])[0];
    assert!(
        errors.iter().any(|e| e.starts_with("spec.algorithm")) && errors.iter().any(|e| e.starts_with("spec.rotationInterval")),
        "{errors:?}"
    );
}

#[test]
fn every_example_directory_compiles_with_every_policy_accepted() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    for entry in std::fs::read_dir(&root).unwrap().flatten().filter(|e| e.path().is_dir()) {
        let state = tempfile::tempdir().unwrap();
        let local = portcullis::local::LocalDir::new(&entry.path(), Some(state.path()), "default");
        let loaded = local.load(jiff::Timestamp::now(), &HashMap::new(), &Default::default()).unwrap();
        assert!(loaded.scanned.problems.is_empty(), "{:?}", loaded.scanned.problems);
        assert!(!loaded.compiled.outcomes.is_empty());
        for o in &loaded.compiled.outcomes {
            assert_eq!(o.outcome, portcullis::policy::Outcome::Accepted, "{}/{}", o.namespace, o.name);
        }
    }
}

#[test]
fn common_mistakes_are_rejected_at_apply_time() {
    let validator = Validator::new();
    let cases = mistakes();
    for (doc, message) in cases {
        let schema = schema_for(doc["kind"].as_str().unwrap());
        let err = validator.validate(&schema, &doc, None).expect_err(message);
        assert!(err.iter().any(|e| e.message.contains(message)), "{message}: got {err}");
    }
    // And the same documents minus the mistake are accepted (the rules are not over-eager).
    for good in good_policies() {
        validator.validate(&schema_for("AuthPolicy"), &good, None).unwrap_or_else(|e| panic!("{good}: {e}"));
        assert!(unknown_fields(&schema_for("AuthPolicy"), &good).is_empty());
    }
}
