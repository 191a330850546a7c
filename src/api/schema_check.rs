//! Unknown-field detection against a CRD's structural schema, as the API server does with strict
//! field validation. Local mode relies on it: without an API server, a misspelt `require:` would
//! otherwise be silently dropped and leave a route open to any token.

use serde_json::Value;

/// Paths of fields in `doc` that the schema does not declare.
pub fn unknown_fields(schema: &Value, doc: &Value) -> Vec<String> {
    let mut out = Vec::new();
    walk(schema, doc, String::new(), &mut out);
    out
}

fn walk(schema: &Value, doc: &Value, at: String, out: &mut Vec<String>) {
    if schema.get("x-kubernetes-preserve-unknown-fields").and_then(Value::as_bool) == Some(true) {
        return;
    }
    match doc {
        Value::Object(map) => {
            let props = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties");
            for (k, v) in map {
                let child = if at.is_empty() { k.clone() } else { format!("{at}.{k}") };
                match (props.and_then(|p| p.get(k)), additional) {
                    (Some(s), _) => walk(s, v, child, out),
                    (None, Some(s)) if s.is_object() => walk(s, v, child, out),
                    (None, Some(Value::Bool(true))) => {}
                    // metadata is validated by the API server itself, not by the CRD.
                    (None, _) if at.is_empty() && matches!(k.as_str(), "metadata" | "apiVersion" | "kind") => {}
                    (None, _) => out.push(match props.and_then(|p| nearest(k, p.keys().map(String::as_str))) {
                        Some(near) => format!("{child} (did you mean {near}?)"),
                        None => child,
                    }),
                }
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                for (i, v) in items.iter().enumerate() {
                    walk(item_schema, v, format!("{at}[{i}]"), out);
                }
            }
        }
        _ => {}
    }
}

/// The known name closest to a misspelt one, if it is close enough to be what was meant.
pub fn nearest<'a>(name: &str, known: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    let lower = name.to_ascii_lowercase();
    known
        .map(|k| (edit_distance(&lower, &k.to_ascii_lowercase()), k))
        .filter(|(d, k)| *d <= (k.len() / 3).clamp(1, 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// Levenshtein distance over bytes (names here are ASCII).
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j + 1] + 1).min(cur[j] + 1).min(prev[j] + usize::from(ca != cb));
        }
        prev = cur;
    }
    prev[b.len()]
}

/// The openAPIV3Schema of a CRD, as JSON.
/// The structural schema of one of our kinds, generated once: generating a CRD costs about as
/// much as parsing a hundred policies, and local mode checks every document against it.
pub fn schema_of(kind: &str) -> Option<&'static Value> {
    use kube::CustomResourceExt;
    use std::sync::OnceLock;
    static AUTH_POLICY: OnceLock<Value> = OnceLock::new();
    static SIGNING_KEY: OnceLock<Value> = OnceLock::new();
    static EXCHANGE: OnceLock<Value> = OnceLock::new();
    match kind {
        "TokenExchangePolicy" => Some(EXCHANGE.get_or_init(|| crd_schema(&crate::api::TokenExchangePolicy::crd()))),
        "AuthPolicy" => Some(AUTH_POLICY.get_or_init(|| crd_schema(&crate::api::AuthPolicy::crd()))),
        "SigningKey" => Some(SIGNING_KEY.get_or_init(|| crd_schema(&crate::api::SigningKey::crd()))),
        _ => None,
    }
}

pub fn crd_schema(crd: &k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition) -> Value {
    let schema = crd.spec.versions[0].schema.as_ref().and_then(|s| s.open_api_v3_schema.as_ref()).expect("generated CRDs have a schema");
    serde_json::to_value(schema).expect("a schema serializes")
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;
    use serde_json::json;

    #[test]
    fn a_misspelt_field_is_found_where_it_is() {
        let schema = crd_schema(&crate::api::AuthPolicy::crd());
        let doc = json!({
            "apiVersion": "portcullis.dev/v1alpha1",
            "kind": "AuthPolicy",
            "metadata": {"name": "x", "labels": {"a": "b"}},
            "spec": {
                "issuers": [{"issuer": "i", "audiences": ["a"], "algorithms": ["RS256"],
                              "jwks": {"inline": {"keys": [{"kty": "RSA", "n": "x", "e": "AQAB", "x-custom": 1}]}}}],
                "rules": [{"name": "r", "match": {"paths": [{"prefix": "/"}]}, "requir": [{"claim": "a", "exists": true}]}],
                "forward": {"claimsToHeaders": {"X-A": "sub"}}
            }
        });
        assert_eq!(unknown_fields(&schema, &doc), ["spec.rules[0].requir (did you mean require?)"]);
    }

    #[test]
    fn misspelt_operators_get_the_nearest_name() {
        let ops = ["equals", "in", "notIn", "containsAll", "containsAny", "exists", "absent", "matches", "equalsHeader"];
        assert_eq!(nearest("containsAnyy", ops.into_iter()), Some("containsAny"));
        assert_eq!(nearest("containsany", ops.into_iter()), Some("containsAny"));
        assert_eq!(nearest("notin", ops.into_iter()), Some("notIn"));
        assert_eq!(nearest("hostnames", ["hosts", "issuers"].into_iter()), None);
    }
}
