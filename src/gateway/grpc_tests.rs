//! The gRPC Check mapping, on the decision core (Envoy itself in tests/gateway_e2e.rs).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::HeaderMap as PbHeaderMap;
use envoy_types::pb::envoy::service::auth::v3::AttributeContext;
use envoy_types::pb::envoy::service::auth::v3::attribute_context::Request as AttrRequest;
use serde_json::json;

use super::*;
use crate::api::SigningAlgorithm;
use crate::gateway::metrics::Metrics;
use crate::testkit::{TestIssuer, compile_yaml};

const ISS: &str = "https://id.test";

fn gateway(issuer: &TestIssuer) -> Arc<Gateway> {
    let yaml = format!(
        r#"
name: orders
namespace: shop
spec:
  hosts: [api.test]
  issuers: [{{ issuer: "{ISS}", audiences: [orders], algorithms: [ES256], jwks: {{ inline: {jwks} }} }}]
  tokenSources: [{{ header: {{ name: Authorization, prefix: "Bearer " }} }}, {{ query: {{ name: access_token }} }}]
  rules:
    - {{ name: read, match: {{ paths: [{{ prefix: /orders }}] }}, require: [{{ claim: scope, containsAll: [read] }}] }}
  forward: {{ claimsToHeaders: {{ X-User-Id: sub }}, token: none }}
"#,
        jwks = issuer.jwks()
    );
    let gw = Gateway::new("https://gw.test", Metrics::new(), Duration::from_secs(1));
    gw.apply(compile_yaml("default", &yaml, &BTreeMap::new()).config, &BTreeMap::new()).unwrap();
    gw
}

fn check_request(method: &str, path: &str, headers: &[(&str, &str)], raw: bool) -> CheckRequest {
    let mut http =
        HttpRequest { method: method.into(), path: path.into(), host: "api.test".into(), scheme: "http".into(), ..Default::default() };
    if raw {
        let mut map = PbHeaderMap::default();
        for (k, v) in headers {
            map.headers.push(HeaderValue { key: (*k).into(), value: String::new(), raw_value: v.as_bytes().to_vec() });
        }
        http.header_map = Some(map);
    } else {
        http.headers = headers.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect::<HashMap<_, _>>();
    }
    CheckRequest {
        attributes: Some(AttributeContext { request: Some(AttrRequest { http: Some(http), ..Default::default() }), ..Default::default() }),
    }
}

fn ok(resp: &CheckResponse) -> &OkHttpResponse {
    match &resp.http_response {
        Some(HttpResponse::OkResponse(ok)) if resp.status.as_ref().unwrap().code == code::OK => ok,
        other => panic!("expected an OK answer, got {:?} {other:?}", resp.status),
    }
}

fn set(ok: &OkHttpResponse, name: &str) -> Option<String> {
    ok.headers.iter().find(|h| h.header.as_ref().unwrap().key == name).map(|h| {
        assert_eq!(h.append_action, HeaderAppendAction::OverwriteIfExistsOrAdd as i32, "identity is overwritten, never appended");
        h.header.as_ref().unwrap().value.clone()
    })
}

#[tokio::test]
async fn an_allowed_check_overwrites_identity_removes_the_token_everywhere_and_carries_claims() {
    let issuer = TestIssuer::new(ISS, SigningAlgorithm::ES256);
    let gw = gateway(&issuer);
    let token = issuer.token("orders", crate::gateway::unix_now(), json!({"sub": "ann", "scope": "read"}));
    // The token in the query: taken out of the query, and nothing of it goes upstream.
    let resp = gw
        .check(check_request(
            "GET",
            &format!("/orders/1?x=1&access_token={token}"),
            &[("x-user-id", "spoofed"), (":authority", "api.test")],
            true,
        ))
        .await;
    let answer = ok(&resp);
    assert_eq!(set(answer, "x-user-id").as_deref(), Some("ann"));
    assert_eq!(answer.query_parameters_to_remove, ["access_token"]);
    assert!(answer.headers_to_remove.contains(&"authorization".to_owned()));
    let meta = resp.dynamic_metadata.as_ref().unwrap();
    assert_eq!(meta.fields["sub"].kind, Some(Kind::StringValue("ann".into())));
    assert_eq!(meta.fields["policy"].kind, Some(Kind::StringValue("shop/orders".into())));
    // The same from the merged header map (encode_raw_headers off).
    let resp = gw.check(check_request("GET", "/orders/1", &[("authorization", &format!("Bearer {token}"))], false)).await;
    assert!(ok(&resp).headers_to_remove.contains(&"authorization".to_owned()));
}

#[tokio::test]
async fn denials_carry_envoys_codes_the_challenge_and_the_http_body() {
    let issuer = TestIssuer::new(ISS, SigningAlgorithm::ES256);
    let gw = gateway(&issuer);
    let denied = |resp: &CheckResponse| match &resp.http_response {
        Some(HttpResponse::DeniedResponse(d)) => (resp.status.as_ref().unwrap().code, d.status.as_ref().unwrap().code, d.clone()),
        other => panic!("expected a denial, got {other:?}"),
    };
    let (grpc, http, d) = denied(&gw.check(check_request("GET", "/orders/1", &[], true)).await);
    assert_eq!((grpc, http), (code::UNAUTHENTICATED, 401));
    assert!(d.headers.iter().any(|h| h.header.as_ref().unwrap().key == "www-authenticate"));
    assert_eq!(serde_json::from_str::<Value>(&d.body).unwrap()["reason"], "missing_token");
    let weak = issuer.token("orders", crate::gateway::unix_now(), json!({"sub": "ann"}));
    let (grpc, http, _) = denied(&gw.check(check_request("GET", "/orders/1", &[("authorization", &format!("Bearer {weak}"))], true)).await);
    assert_eq!((grpc, http), (code::PERMISSION_DENIED, 403));
    // Two tokens stay two with raw headers: ambiguous, 400.
    let two = [("authorization", "Bearer a.b.c"), ("authorization", "Bearer d.e.f")];
    let (grpc, http, _) = denied(&gw.check(check_request("GET", "/orders/1", &two, true)).await);
    assert_eq!((grpc, http), (code::INVALID_ARGUMENT, 400));
    // Not in normal form: refused as in the HTTP mode.
    let (_, http, d) = denied(&gw.check(check_request("GET", "/orders/../admin", &[], true)).await);
    assert_eq!((http, serde_json::from_str::<Value>(&d.body).unwrap()["reason"].as_str()), (403, Some("unsafe_path")));
    // No HTTP attributes at all: counted as the HTTP mode counts a request it cannot read.
    let unusable = |gw: &Gateway| {
        let text = gw.metrics.render();
        let count = |series: &str| text.lines().find_map(|l| l.strip_prefix(series)).map_or(0, |v| v.trim().parse::<u64>().unwrap());
        (count(r#"portcullis_decisions_total{policy="",result="deny"}"#), count(r#"portcullis_denials_total{reason="bad_request"}"#))
    };
    let before = unusable(&gw);
    let (grpc, http, _) = denied(&gw.check(CheckRequest::default()).await);
    assert_eq!((grpc, http), (code::INVALID_ARGUMENT, 400));
    assert_eq!(unusable(&gw), (before.0 + 1, before.1 + 1));
}

#[tokio::test]
async fn a_check_routed_to_another_policy_by_the_proxy_is_denied_whatever_the_token() {
    let issuer = TestIssuer::new(ISS, SigningAlgorithm::ES256);
    let gw = gateway(&issuer);
    let good = issuer.token("orders", crate::gateway::unix_now(), json!({"sub": "ann", "scope": "read"}));
    let auth = format!("Bearer {good}");
    let routed = |policy: Option<&str>| {
        let mut r = check_request("GET", "/orders/1", &[("authorization", &auth)], true);
        if let Some(p) = policy {
            r.attributes.as_mut().unwrap().context_extensions.insert(crate::decide::ROUTED_POLICY.into(), p.into());
        }
        r
    };
    // The proxy agrees (or says nothing): decided as usual.
    ok(&gw.check(routed(Some("shop/orders"))).await);
    ok(&gw.check(routed(None)).await);
    // The proxy routed it to another policy's route: neither applies as if alone.
    match gw.check(routed(Some("shop/other"))).await.http_response {
        Some(HttpResponse::DeniedResponse(d)) => {
            assert_eq!(d.status.unwrap().code, 403);
            assert_eq!(serde_json::from_str::<Value>(&d.body).unwrap()["reason"], "route_mismatch");
        }
        other => panic!("expected a denial, got {other:?}"),
    }
}
