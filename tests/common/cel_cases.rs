//! Typical mistakes in AuthPolicies and SigningKeys, each with the message the CRD's schema or
//! CEL rules answer it with: checked client-side (`tests/schema.rs`) and against a real API
//! server (`tests/cluster_e2e.rs`), so that the two agree.

use serde_json::{Value, json};

pub fn policy(spec: Value) -> Value {
    json!({"apiVersion": "portcullis.dev/v1alpha1", "kind": "AuthPolicy", "metadata": {"name": "p"}, "spec": spec})
}

pub fn issuer() -> Value {
    json!({"issuer": "https://id", "audiences": ["a"], "algorithms": ["RS256"], "jwks": {"uri": "https://id/jwks"}})
}

pub fn rule(extra: Value) -> Value {
    let mut r = json!({"name": "r", "match": {"paths": [{"prefix": "/"}]}});
    r.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    r
}

/// Documents that must be refused at apply time, with (a part of) the message.
pub fn mistakes() -> Vec<(Value, &'static str)> {
    vec![
        (policy(json!({"rules": [rule(json!({}))]})), "need at least one entry in issuers"),
        (
            policy(
                json!({"issuers": [{"issuer": "i", "audiences": ["a"], "algorithms": ["RS256"], "jwks": {}}], "rules": [rule(json!({}))]}),
            ),
            "exactly one of uri, inline or signingKeyRef",
        ),
        (
            policy(json!({"issuers": [issuer()], "rules": [rule(json!({"public": true, "require": [{"claim": "a", "exists": true}]}))]})),
            "a public rule cannot have require",
        ),
        (
            policy(json!({"issuers": [issuer()], "rules": [rule(json!({"require": [{"claim": "a", "exists": true, "equals": "x"}]}))]})),
            "exactly one operator",
        ),
        (
            policy(json!({"issuers": [issuer()], "rules": [rule(json!({"require": [{"claim": "a", "in": ["x"], "notIn": ["y"]}]}))]})),
            "exactly one operator",
        ),
        (
            policy(
                json!({"issuers": [issuer()], "rules": [rule(json!({"require": [{"claim": "a", "claimPath": ["a"], "exists": true}]}))]}),
            ),
            "exactly one of claim or claimPath",
        ),
        (
            policy(json!({"issuers": [issuer()], "rules": [rule(json!({"require": [{"claim": "a", "exists": false}]}))]})),
            "exists can only be true",
        ),
        (
            policy(json!({"issuers": [issuer()], "rules": [{"name": "r", "match": {"paths": [{"prefix": "/", "exact": "/"}]}}]})),
            "exactly one of exact, prefix or template",
        ),
        (
            policy(json!({"issuers": [issuer()], "rules": [rule(json!({}))], "forward": {"token": "issue"}})),
            "token: issue needs issue.signingKeyRef",
        ),
        (
            policy(
                json!({"issuers": [issuer()], "rules": [rule(json!({}))], "tokenSources": [{"header": {"name": "A"}, "cookie": {"name": "b"}}]}),
            ),
            "exactly one of header, cookie or query",
        ),
        (
            policy(
                json!({"issuers": [{"issuer": "i", "audiences": ["a"], "algorithms": ["RS256"], "jwks": {"uri": "https://x"}, "clockSkew": "10m"}], "rules": [rule(json!({}))]}),
            ),
            "clockSkew must be at most 5m",
        ),
        (
            policy(json!({"issuers": [issuer()], "rules": [rule(json!({}))], "hosts": ["a.test"], "targetRefs": [route("orders")]})),
            "targetRefs and hosts are exclusive",
        ),
        (policy(json!({"issuers": [issuer()], "rules": [{"name": "r"}]})), "a rule without match covers its whole target"),
        (
            policy(json!({"issuers": [issuer()], "rules": [{"name": "r"}], "targetRefs": [route("orders"), route("orders")]})),
            "a target is listed twice",
        ),
        (
            json!({"apiVersion": "portcullis.dev/v1alpha1", "kind": "SigningKey", "metadata": {"name": "k"},
                   "spec": {"algorithm": "ES256", "rotationInterval": "1h", "prePublish": "2h", "retain": "1h"}}),
            "prePublish must be shorter than rotationInterval",
        ),
        (
            json!({"apiVersion": "portcullis.dev/v1alpha1", "kind": "SigningKey", "metadata": {"name": "k"},
                   "spec": {"algorithm": "ES256", "rsaBits": 4096}}),
            "rsaBits applies only to RS256",
        ),
        (
            policy(
                json!({"issuers": [{"issuer": "https://id", "audiences": ["a"], "algorithms": [], "jwks": {"uri": "https://id/jwks"}}], "rules": [rule(json!({}))]}),
            ),
            "give either kubernetes, or issuer, jwks and algorithms",
        ),
        (
            policy(json!({"issuers": [{"kubernetes": {}, "issuer": "https://id", "audiences": ["a"]}], "rules": [rule(json!({}))]})),
            "give either kubernetes, or issuer, jwks and algorithms",
        ),
        (
            policy(json!({"issuers": [{"kubernetes": {"maxTokenLifetime": "48h"}, "audiences": ["a"]}], "rules": [rule(json!({}))]})),
            "maxTokenLifetime must be between 10m and 24h",
        ),
        (
            policy(json!({"issuers": [issuer()], "rules": [rule(json!({"public": true, "serviceAccounts": ["shop/a"]}))]})),
            "a public rule cannot have require, anyOf or serviceAccounts",
        ),
    ]
}

pub fn route(name: &str) -> Value {
    json!({"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": name})
}

/// Valid documents: the mistakes minus the mistake.
pub fn good_policies() -> Vec<Value> {
    vec![
        policy(json!({"issuers": [issuer()], "rules": [rule(json!({"require": [{"claim": "a", "exists": true}]}))]})),
        // Attached: rules may omit match; the same route with and without a section are two targets.
        policy(json!({"issuers": [issuer()], "rules": [{"name": "r"}, rule(json!({"name": "s"}))],
                      "targetRefs": [route("orders"), {"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": "orders", "sectionName": "pay"}]})),
        // The cluster's ServiceAccount tokens: no issuer, keys or algorithms to give.
        policy(json!({"issuers": [{"kubernetes": {"maxTokenLifetime": "1h"}, "audiences": ["orders.shop.svc"]}],
                      "rules": [rule(json!({"serviceAccounts": ["shop/checkout", "ops/*"]}))]})),
    ]
}
