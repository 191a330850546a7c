use std::collections::BTreeMap;

use http::HeaderMap;
use serde_json::json;

use super::*;
use crate::api::SigningAlgorithm;
use crate::policy::path::PathError;
use crate::policy::{Outcome, RejectReason};
use crate::testkit::{TestIssuer, compile_yaml, engine, forge_hs256, forge_none, header_map as headers};

const NOW: i64 = 1_800_000_000;
const ISS: &str = "https://id.example.com/realms/shop";

fn shop_yaml(issuer: &TestIssuer) -> String {
    format!(
        r#"
name: orders
namespace: shop
spec:
  hosts: [api.example.com]
  issuers:
    - issuer: {ISS}
      audiences: [orders]
      jwks: {{ inline: {jwks} }}
      algorithms: [RS256, ES256, EdDSA]
  rules:
    - name: health
      match: {{ paths: [{{ exact: /orders/healthz }}] }}
      public: true
    - name: admin
      match: {{ paths: [{{ prefix: /orders/admin }}] }}
      require:
        - {{ claim: realm_access.roles, containsAny: [admin] }}
    - name: read
      match: {{ paths: [{{ prefix: /orders }}], methods: [GET, HEAD] }}
      require:
        - {{ claim: scope, containsAll: ["orders:read"] }}
        - {{ claim: tenant, equalsHeader: X-Tenant }}
    - name: items
      match: {{ paths: [{{ template: "/orders/{{id}}/items" }}], methods: [POST] }}
  forward:
    claimsToHeaders: {{ X-User-Id: sub, X-User-Roles: realm_access.roles }}
"#,
        jwks = issuer.jwks()
    )
}

struct Fixture {
    issuer: TestIssuer,
    engine: Engine,
}

fn fixture(alg: SigningAlgorithm) -> Fixture {
    let issuer = TestIssuer::new(ISS, alg);
    let compiled = compile_yaml("default", &shop_yaml(&issuer), &BTreeMap::new());
    assert!(compiled.outcomes.iter().all(|o| o.outcome == Outcome::Accepted), "{:?}", compiled.outcomes);
    Fixture { engine: engine(&compiled), issuer }
}

fn decide(engine: &Engine, method: &str, host: &str, target: &str, hdrs: &HeaderMap) -> Decision {
    engine.decide(&Request { method, host, target, headers: hdrs, path_mode: Default::default(), routed: None }, NOW)
}

fn decide_normalizing(engine: &Engine, method: &str, host: &str, target: &str, hdrs: &HeaderMap) -> Decision {
    engine.decide(&Request { method, host, target, headers: hdrs, path_mode: PathMode::Normalize, routed: None }, NOW)
}

fn bearer(token: &str) -> HeaderMap {
    headers(&[("authorization", &format!("Bearer {token}")), ("x-tenant", "acme")])
}

fn reader_claims() -> serde_json::Value {
    json!({"scope": "orders:read profile", "tenant": "acme", "realm_access": {"roles": ["clerk"]}})
}

fn reason(d: &Decision) -> DenyReason {
    match d {
        Decision::Deny(d) => d.reason,
        Decision::Allow(a) => panic!("expected a denial, got {a:?}"),
    }
}

#[test]
fn a_valid_token_is_allowed_with_identity_headers_for_every_algorithm() {
    for alg in [SigningAlgorithm::RS256, SigningAlgorithm::ES256, SigningAlgorithm::EdDSA] {
        let f = fixture(alg);
        let token = f.issuer.token("orders", NOW, reader_claims());
        let Decision::Allow(a) = decide(&f.engine, "GET", "api.example.com", "/orders/7", &bearer(&token)) else {
            panic!("{alg:?} denied")
        };
        assert_eq!(f.engine.rule_name(a.route), "read");
        assert_eq!(f.engine.policy_key(a.route), "shop/orders");
        let got: BTreeMap<_, _> = a.headers.iter().map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap().to_owned())).collect();
        assert_eq!(got, BTreeMap::from([("x-user-id".into(), "alice".into()), ("x-user-roles".into(), "clerk".into())]));
        assert_eq!(a.authorization.unwrap().to_str().unwrap(), format!("Bearer {token}"));
        assert!(a.strip.is_empty());
    }
}

#[test]
fn missing_and_malformed_tokens_are_401() {
    let f = fixture(SigningAlgorithm::RS256);
    let d = decide(&f.engine, "GET", "api.example.com", "/orders", &headers(&[("x-tenant", "acme")]));
    assert_eq!(reason(&d), DenyReason::MissingToken);
    assert_eq!(DenyReason::MissingToken.status(), 401);
    for junk in ["x", "a.b", "a.b.c", "....", "Zm9v.Zm9v.Zm9v", &"a".repeat(20_000)] {
        let d = decide(&f.engine, "GET", "api.example.com", "/orders", &bearer(junk));
        assert_eq!(reason(&d).status(), 401, "{junk}");
    }
    let two = headers(&[("authorization", "Bearer a.b.c"), ("authorization", "Bearer d.e.f")]);
    assert_eq!(reason(&decide(&f.engine, "GET", "api.example.com", "/orders", &two)), DenyReason::AmbiguousToken);
}

#[test]
fn time_audience_issuer_and_signature_are_checked() {
    let f = fixture(SigningAlgorithm::ES256);
    let cases = [
        (f.issuer.token("orders", NOW - 7200, json!({"exp": NOW - 61})), DenyReason::Expired),
        (f.issuer.token("orders", NOW, json!({"nbf": NOW + 120})), DenyReason::NotYetValid),
        (f.issuer.token("billing", NOW, reader_claims()), DenyReason::WrongAudience),
        (
            TestIssuer::new("https://evil.example", SigningAlgorithm::ES256).token("orders", NOW, reader_claims()),
            DenyReason::UntrustedIssuer,
        ),
        (TestIssuer::new(ISS, SigningAlgorithm::ES256).token("orders", NOW, reader_claims()), DenyReason::UnknownKey),
    ];
    for (token, want) in cases {
        assert_eq!(reason(&decide(&f.engine, "GET", "api.example.com", "/orders", &bearer(&token))), want);
    }
    // Within the 60s skew an expired token still passes.
    let recent = f.issuer.token("orders", NOW - 3600, json!({"exp": NOW - 30, "scope": "orders:read", "tenant": "acme"}));
    assert!(decide(&f.engine, "GET", "api.example.com", "/orders", &bearer(&recent)).is_allow());

    let good = f.issuer.token("orders", NOW, reader_claims());
    let (rest, sig) = good.rsplit_once('.').unwrap();
    let (header, _) = rest.split_once('.').unwrap();
    let other_payload = crate::keys::b64url(
        f.issuer.claims("orders", NOW, json!({"scope": "orders:read orders:admin", "tenant": "acme"})).to_string().as_bytes(),
    );
    let tampered = format!("{header}.{other_payload}.{sig}");
    assert_eq!(reason(&decide(&f.engine, "GET", "api.example.com", "/orders", &bearer(&tampered))), DenyReason::BadSignature);
}

#[test]
fn alg_none_algorithm_confusion_and_key_pointing_headers_are_refused() {
    let f = fixture(SigningAlgorithm::RS256);
    let claims = f.issuer.claims("orders", NOW, reader_claims());
    let none = forge_none(&claims);
    assert_eq!(reason(&decide(&f.engine, "GET", "api.example.com", "/orders", &bearer(&none))), DenyReason::UnsupportedAlgorithm);

    // HS256 keyed with the issuer's public key, in each form an attacker might try.
    let jwk = f.issuer.key.public_jwk();
    let n = crate::keys::b64url_decode(jwk["n"].as_str().unwrap()).unwrap();
    for secret in [serde_json::to_vec(jwk).unwrap(), n] {
        let forged = forge_hs256(&claims, Some(f.issuer.key.kid()), &secret);
        assert_eq!(reason(&decide(&f.engine, "GET", "api.example.com", "/orders", &bearer(&forged))), DenyReason::UnsupportedAlgorithm);
    }

    // A header that names another algorithm than the key's family is refused before any crypto.
    let es_header = json!({"alg": "ES256", "kid": f.issuer.key.kid()});
    let confused = f.issuer.token_with_header(es_header, &claims);
    assert_eq!(reason(&decide(&f.engine, "GET", "api.example.com", "/orders", &bearer(&confused))), DenyReason::UnsupportedAlgorithm);

    for extra in ["jku", "x5u", "jwk", "x5c", "crit"] {
        let mut header = json!({"alg": "RS256", "kid": f.issuer.key.kid()});
        header[extra] = json!("https://evil.example/keys");
        let token = f.issuer.token_with_header(header, &claims);
        assert_eq!(
            reason(&decide(&f.engine, "GET", "api.example.com", "/orders", &bearer(&token))),
            DenyReason::ForbiddenHeader,
            "{extra}"
        );
    }
}

#[test]
fn claims_decide_403_and_name_the_missing_scope() {
    let f = fixture(SigningAlgorithm::EdDSA);
    let no_scope = f.issuer.token("orders", NOW, json!({"scope": "profile", "tenant": "acme"}));
    let Decision::Deny(d) = decide(&f.engine, "GET", "api.example.com", "/orders", &bearer(&no_scope)) else { panic!() };
    assert_eq!((d.reason, d.reason.status(), d.reason.bearer_error()), (DenyReason::ClaimsNotSatisfied, 403, Some("insufficient_scope")));
    assert_eq!(d.scopes, ["orders:read"]);
    assert!(d.detail.unwrap().starts_with(r#"scope containsAll ["orders:read"]"#));

    let other_tenant = f.issuer.token("orders", NOW, json!({"scope": "orders:read", "tenant": "globex"}));
    assert_eq!(reason(&decide(&f.engine, "GET", "api.example.com", "/orders", &bearer(&other_tenant))), DenyReason::ClaimsNotSatisfied);

    let admin = f.issuer.token("orders", NOW, json!({"realm_access": {"roles": ["admin"]}}));
    let clerk = f.issuer.token("orders", NOW, json!({"realm_access": {"roles": ["clerk"]}}));
    let no_roles = f.issuer.token("orders", NOW, json!({}));
    assert!(decide(&f.engine, "DELETE", "api.example.com", "/orders/admin/7", &bearer(&admin)).is_allow());
    assert_eq!(reason(&decide(&f.engine, "DELETE", "api.example.com", "/orders/admin/7", &bearer(&clerk))), DenyReason::ClaimsNotSatisfied);
    assert_eq!(
        reason(&decide(&f.engine, "DELETE", "api.example.com", "/orders/admin/7", &bearer(&no_roles))),
        DenyReason::ClaimsNotSatisfied
    );
}

#[test]
fn routes_are_denied_by_default_and_public_routes_need_nothing() {
    let f = fixture(SigningAlgorithm::ES256);
    let none = HeaderMap::new();
    let Decision::Allow(a) = decide(&f.engine, "GET", "api.example.com", "/orders/healthz", &none) else { panic!() };
    assert!(a.authorization.is_none(), "no token is forwarded from a public route");
    assert_eq!(a.strip.len(), 2, "client-sent identity headers are stripped");
    assert_eq!(reason(&decide(&f.engine, "GET", "api.example.com", "/billing", &none)), DenyReason::NoRoute);
    assert_eq!(reason(&decide(&f.engine, "GET", "other.example.com", "/orders/healthz", &none)), DenyReason::NoRoute);
    assert_eq!(reason(&decide(&f.engine, "GET", "api.example.com:8443", "/ordersX", &none)), DenyReason::NoRoute);
    assert_eq!(reason(&decide(&f.engine, "GET", "bad host", "/orders", &none)), DenyReason::BadHost);
    // PUT is on no rule for /orders.
    let token = f.issuer.token("orders", NOW, reader_claims());
    assert_eq!(reason(&decide(&f.engine, "PUT", "api.example.com", "/orders/1", &bearer(&token))), DenyReason::NoRoute);
    assert!(decide(&f.engine, "POST", "api.example.com", "/orders/1/items", &bearer(&token)).is_allow());
}

#[test]
fn path_tricks_never_reach_a_looser_rule() {
    let f = fixture(SigningAlgorithm::ES256);
    let clerk = f.issuer.token("orders", NOW, reader_claims());
    for target in ["/orders/healthz/../admin/x", "/orders//admin/x", "/orders/%61dmin/x", "/orders/./admin", "/ORDERS/../orders/admin?x=1"]
    {
        // Normalising (a proxy that forwards the normal form): the admin rule decides.
        let d = decide_normalizing(&f.engine, "GET", "api.example.com", target, &bearer(&clerk));
        assert_eq!(f.engine.rule_name(d.route().unwrap()), "admin", "{target}");
        assert_eq!(reason(&d), DenyReason::ClaimsNotSatisfied, "{target}");
        // Strict (the default): the upstream would get the raw form, so it is refused outright.
        let d = decide(&f.engine, "GET", "api.example.com", target, &bearer(&clerk));
        assert_eq!(reason(&d), DenyReason::UnsafePath(PathError::NotNormalized), "{target}");
        assert_eq!(reason(&d).status(), 403);
    }
    for target in ["/orders/healthz%2F..%2Fadmin", "/orders/healthz%5C..%5Cadmin", "/orders/healthz%00", "/orders/healthz;/../admin"] {
        for d in [
            decide(&f.engine, "GET", "api.example.com", target, &HeaderMap::new()),
            decide_normalizing(&f.engine, "GET", "api.example.com", target, &HeaderMap::new()),
        ] {
            assert!(matches!(reason(&d), DenyReason::UnsafePath(_)), "{target}");
        }
    }
    // Already normal: both modes agree.
    let d = decide(&f.engine, "GET", "api.example.com", "/orders/admin/x?y=/../z", &bearer(&clerk));
    assert_eq!(reason(&d), DenyReason::ClaimsNotSatisfied);
}

#[test]
fn methods_that_differ_only_in_case_are_refused() {
    let f = fixture(SigningAlgorithm::ES256);
    let admin = f.issuer.token("orders", NOW, json!({"realm_access": {"roles": ["admin"]}, "scope": "orders:read"}));
    for method in ["delete", "Delete", "get", "pOST"] {
        let d = decide(&f.engine, method, "api.example.com", "/orders/admin/7", &bearer(&admin));
        assert_eq!(reason(&d), DenyReason::BadMethod, "{method}");
        assert_eq!(reason(&d).status(), 400);
    }
    for method in ["", "GET /x", "G\tET", "A(B"] {
        assert_eq!(
            reason(&decide(&f.engine, method, "api.example.com", "/orders/1", &bearer(&admin))),
            DenyReason::BadMethod,
            "{method:?}"
        );
    }
    // Extension methods still match rules without `methods` only.
    assert!(decide(&f.engine, "PROPFIND", "api.example.com", "/orders/admin/7", &bearer(&admin)).is_allow());
    assert_eq!(reason(&decide(&f.engine, "PROPFIND", "api.example.com", "/orders/1", &bearer(&admin))), DenyReason::NoRoute);
}

fn cookie_policy(issuer: &TestIssuer) -> String {
    format!(
        r#"
name: web
spec:
  issuers: [{{ issuer: "{ISS}", audiences: [web], jwks: {{ inline: {jwks} }}, algorithms: [ES256] }}]
  tokenSources:
    - header: {{ name: X-Api-Token }}
    - cookie: {{ name: session }}
    - cookie: {{ name: legacy }}
  rules:
    - {{ name: open, public: true, match: {{ paths: [{{ prefix: /public }}] }} }}
    - name: keep
      match: {{ paths: [{{ prefix: /keep }}] }}
    - name: drop
      match: {{ paths: [{{ prefix: /drop }}] }}
      forward: {{ token: none }}
"#,
        jwks = issuer.jwks()
    )
}

fn answer<'a>(a: &'a Allowed, name: &str) -> Option<&'a str> {
    a.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.to_str().unwrap())
}

#[test]
fn the_token_leaves_only_when_the_policy_forwards_it_from_any_source() {
    let issuer = TestIssuer::new(ISS, SigningAlgorithm::ES256);
    let e = engine(&compile_yaml("default", &cookie_policy(&issuer), &BTreeMap::new()));
    assert_eq!(e.token_carriers(), [http::header::COOKIE, http::HeaderName::from_static("x-api-token")]);
    let token = issuer.token("web", NOW, json!({}));
    let in_cookie = headers(&[("cookie", &format!("theme=dark; session={token}")), ("cookie", "legacy=x; lang=en")]);
    let in_header = headers(&[("x-api-token", &token)]);

    // token: original (the default) leaves everything as it was.
    for h in [&in_cookie, &in_header] {
        let Decision::Allow(a) = decide(&e, "GET", "web.example.com", "/keep", h) else { panic!("keep") };
        assert!(answer(&a, "cookie").is_none() && !a.strip.iter().any(|s| s == "cookie" || s == "x-api-token"), "{a:?}");
    }
    // token: none and public routes take out every token cookie and token header.
    for path in ["/drop", "/public"] {
        let Decision::Allow(a) = decide(&e, "GET", "web.example.com", path, &in_cookie) else { panic!("{path}") };
        assert_eq!(answer(&a, "cookie"), Some("theme=dark; lang=en"), "{path}");
        assert!(a.strip.iter().any(|s| s == "x-api-token"), "{path}");
        assert!(a.authorization.is_none());
        let Decision::Allow(a) = decide(&e, "GET", "web.example.com", path, &in_header) else { panic!("{path}") };
        assert!(a.strip.iter().any(|s| s == "x-api-token") && answer(&a, "cookie").is_none(), "{path}: {a:?}");
    }
    // Only token cookies: the whole Cookie header goes.
    let only = headers(&[("cookie", &format!("session={token}"))]);
    let Decision::Allow(a) = decide(&e, "GET", "web.example.com", "/drop", &only) else { panic!() };
    assert!(a.strip.iter().any(|s| s == "cookie") && answer(&a, "cookie").is_none());
}

#[test]
fn a_query_token_is_marked_for_removal_wherever_the_caller_token_does_not_go_on() {
    // The HTTP integrations cannot rewrite the query, so they refuse such a request; Envoy's
    // gRPC ext_authz removes the parameter.
    let issuer = TestIssuer::new(ISS, SigningAlgorithm::ES256);
    let yaml = format!(
        "name: q\nspec:\n  issuers: [{{ issuer: \"{ISS}\", audiences: [web], jwks: {{ inline: {} }}, algorithms: [ES256] }}]\n  tokenSources: [{{ query: {{ name: access_token }} }}]\n  rules:\n    - {{ name: keep, match: {{ paths: [{{ prefix: /keep }}] }} }}\n    - {{ name: drop, match: {{ paths: [{{ prefix: /drop }}] }}, forward: {{ token: none }} }}\n    - {{ name: pub, public: true, match: {{ paths: [{{ prefix: /pub }}] }} }}\n",
        issuer.jwks()
    );
    let compiled = compile_yaml("default", &yaml, &BTreeMap::new());
    assert_eq!(compiled.outcomes[0].outcome, Outcome::Accepted);
    let engine = engine(&compiled);
    let token = issuer.token("web", NOW, json!({"sub": "ann"}));
    let none = HeaderMap::new();
    for (path, strip) in [("/keep", false), ("/drop", true), ("/pub", true)] {
        let target = format!("{path}?a=1&access_token={token}&b=2");
        let Decision::Allow(a) = decide(&engine, "GET", "x.test", &target, &none) else { panic!("{path} denied") };
        assert_eq!(a.strip_query == ["access_token"], strip, "{path}: {:?}", a.strip_query);
    }
    // Nothing to strip when the query carries no token.
    let Decision::Allow(a) = decide(&engine, "GET", "x.test", "/pub?a=1", &none) else { panic!() };
    assert!(a.strip_query.is_empty());
}

#[test]
fn tokens_come_from_cookies_and_query_parameters_when_configured() {
    let issuer = TestIssuer::new(ISS, SigningAlgorithm::ES256);
    let yaml = format!(
        r#"
name: web
spec:
  issuers: [{{ issuer: "{ISS}", audiences: [web], jwks: {{ inline: {jwks} }}, algorithms: [ES256] }}]
  tokenSources:
    - cookie: {{ name: session }}
    - query: {{ name: access_token }}
  rules:
    - name: all
      match: {{ paths: [{{ prefix: / }}] }}
"#,
        jwks = issuer.jwks()
    );
    let e = engine(&compile_yaml("default", &yaml, &BTreeMap::new()));
    let token = issuer.token("web", NOW, json!({}));
    let cookie = headers(&[("cookie", &format!("theme=dark; session={token}"))]);
    assert!(decide(&e, "GET", "web.example.com", "/", &cookie).is_allow());
    assert!(decide(&e, "GET", "web.example.com", &format!("/x?a=1&access_token={token}"), &HeaderMap::new()).is_allow());
    let twice = headers(&[("cookie", &format!("session={token}; session={token}"))]);
    assert_eq!(reason(&decide(&e, "GET", "web.example.com", "/", &twice)), DenyReason::AmbiguousToken);
    // An Authorization header is not a source here.
    assert_eq!(reason(&decide(&e, "GET", "web.example.com", "/", &bearer(&token))), DenyReason::MissingToken);
}

#[test]
fn verified_tokens_are_cached_and_a_key_change_invalidates_them() {
    let issuer = TestIssuer::new(ISS, SigningAlgorithm::ES256);
    let yaml = format!(
        r#"
name: api
spec:
  issuers: [{{ issuer: "{ISS}", audiences: [api], jwks: {{ uri: "https://id.example.com/jwks" }}, algorithms: [ES256] }}]
  rules: [{{ name: all, match: {{ paths: [{{ prefix: / }}] }} }}]
"#
    );
    struct Fixed(Arc<KeySet>);
    impl RemoteKeys for Fixed {
        fn key_set(&self, _: &str, _: u64) -> Arc<KeySet> {
            self.0.clone()
        }
    }
    let set = KeySet::new_remote("test");
    let compiled = compile_yaml("default", &yaml, &BTreeMap::new());
    let minting = BTreeMap::new();
    let opts = BuildOptions { issuer_url: "https://gw", minting: &minting, remote: &Fixed(set.clone()), cache_bytes: 64 * 1024 };
    let e = Engine::build(compiled.config, &opts).unwrap();
    let token = issuer.token("api", NOW, json!({}));

    // Not fetched yet: fail closed with 503.
    assert_eq!(reason(&decide(&e, "GET", "h", "/", &bearer(&token))), DenyReason::KeysUnavailable);
    let keys = || crate::keys::parse_jwks(&issuer.jwks()).unwrap().0;
    assert!(set.replace(keys()));
    assert!(!set.replace(keys()), "the same keys are no change");
    assert!(decide(&e, "GET", "h", "/", &bearer(&token)).is_allow());
    assert_eq!(e.cached_tokens(), 1);
    assert!(decide(&e, "GET", "h", "/", &bearer(&token)).is_allow());
    assert_eq!(e.cached_tokens(), 1);

    // The key is removed (rotated out or revoked): the cached verification no longer counts.
    let other = TestIssuer::new(ISS, SigningAlgorithm::ES256);
    assert!(set.replace(crate::keys::parse_jwks(&other.jwks()).unwrap().0));
    let Decision::Deny(d) = decide(&e, "GET", "h", "/", &bearer(&token)) else { panic!("a removed key must not verify") };
    assert_eq!(d.reason, DenyReason::UnknownKey);
    assert!(d.refetch.is_some(), "an unknown kid on a remote key set asks for a refetch");

    // The cache stays bounded.
    for i in 0..50 {
        let t = other.token("api", NOW, json!({ "n": i }));
        assert!(decide(&e, "GET", "h", "/", &bearer(&t)).is_allow());
    }
    assert!(e.cached_bytes() <= 64 * 1024 && e.cached_tokens() >= 1);
}

#[test]
fn more_specific_routes_win_and_ties_go_to_the_older_policy() {
    let yaml = r#"
name: a-broad
spec:
  rules:
    - { name: root, public: true, match: { paths: [{ prefix: / }] } }
    - { name: orders, public: true, match: { paths: [{ prefix: /orders }] } }
    - { name: item, public: true, match: { paths: [{ template: "/orders/{id}/items" }] } }
    - { name: exact, public: true, match: { paths: [{ exact: /orders/1/items }] } }
---
name: b-host
spec:
  hosts: ["*.example.com"]
  rules:
    - { name: wild, public: true, match: { paths: [{ prefix: /orders }] } }
---
name: c-host
spec:
  hosts: ["api.example.com"]
  rules:
    - { name: exact-host, public: true, match: { paths: [{ prefix: /orders/special }] } }
"#;
    let e = engine(&compile_yaml("default", yaml, &BTreeMap::new()));
    let none = HeaderMap::new();
    let rule = |host: &str, path: &str| {
        let d = decide(&e, "GET", host, path, &none);
        format!("{}:{}", e.policy_key(d.route().unwrap()), e.rule_name(d.route().unwrap()))
    };
    assert_eq!(rule("x.test", "/orders/1/items"), "default/a-broad:exact");
    assert_eq!(rule("x.test", "/orders/2/items"), "default/a-broad:item");
    assert_eq!(rule("x.test", "/orders/2"), "default/a-broad:orders");
    assert_eq!(rule("x.test", "/other"), "default/a-broad:root");
    assert_eq!(rule("a.example.com", "/orders/2"), "default/b-host:wild");
    assert_eq!(rule("a.example.com", "/other"), "default/a-broad:root");
    assert_eq!(rule("api.example.com", "/orders/special/1"), "default/c-host:exact-host");
    assert_eq!(rule("api.example.com", "/orders/1"), "default/b-host:wild");
}

#[test]
fn a_conflicting_policy_is_rejected_and_the_older_one_keeps_its_routes() {
    let yaml = r#"
name: first
spec:
  rules: [{ name: r, public: true, match: { paths: [{ prefix: /orders }], methods: [GET] } }]
---
name: second
spec:
  rules:
    - { name: r, public: true, match: { paths: [{ prefix: /orders/ }] } }
    - { name: s, public: true, match: { paths: [{ prefix: /stock }] } }
---
name: third
spec:
  rules: [{ name: r, public: true, match: { paths: [{ prefix: /orders }], methods: [POST] } }]
"#;
    let compiled = compile_yaml("default", yaml, &BTreeMap::new());
    let outcome = |name: &str| compiled.outcomes.iter().find(|o| o.name == name).unwrap().outcome.clone();
    assert_eq!(outcome("first"), Outcome::Accepted);
    assert_eq!(outcome("third"), Outcome::Accepted, "different methods do not conflict");
    let Outcome::Rejected { rejection, serving_previous: false } = outcome("second") else { panic!() };
    assert_eq!(rejection.reason, RejectReason::Conflicted);
    assert!(rejection.message().contains("default/first"), "{}", rejection.message());
    let e = engine(&compiled);
    assert_eq!(reason(&decide(&e, "GET", "h", "/stock", &HeaderMap::new())), DenyReason::NoRoute, "the rejected policy serves nothing");
}

#[test]
fn an_invalid_update_keeps_the_last_good_version_serving() {
    let good =
        crate::testkit::inputs_from_yaml("name: p\nspec:\n  rules: [{ name: r, public: true, match: { paths: [{ prefix: /a }] } }]\n");
    let compiled = crate::policy::compile("default", &good, &BTreeMap::new(), &crate::policy::Tenancy::single_owner());
    let last_good = compiled.config.policies[0].clone();
    let mut bad =
        crate::testkit::inputs_from_yaml("name: p\nspec:\n  rules: [{ name: r, public: true, match: { paths: [{ prefix: /a/../b }] } }]\n");
    bad[0].last_good = Some(last_good);
    let again = crate::policy::compile("default", &bad, &BTreeMap::new(), &crate::policy::Tenancy::single_owner());
    let Outcome::Rejected { rejection, serving_previous: true } = &again.outcomes[0].outcome else { panic!("{:?}", again.outcomes) };
    assert_eq!(rejection.reason, RejectReason::Invalid);
    assert!(rejection.message().contains("normalised form"));
    assert!(decide(&engine(&again), "GET", "h", "/a/1", &HeaderMap::new()).is_allow());
    assert_eq!(again.config.version, compiled.config.version, "the served content is unchanged");
}

#[test]
fn validation_names_every_problem() {
    let yaml = r#"
name: bad
spec:
  gateway: Default
  hosts: ["API.example.com"]
  issuers: [{ issuer: x, audiences: [], jwks: { uri: "ftp://x" }, algorithms: [RS256] }]
  rules:
    - { name: a, match: { paths: [{ prefix: /x }] }, require: [{ claim: s, equals: "1", exists: true }] }
    - { name: a, public: true, match: { paths: [{ prefix: /x }] } }
  forward: { claimsToHeaders: { Host: sub } }
"#;
    let inputs = crate::testkit::inputs_from_yaml(yaml);
    let err = crate::policy::validate(&inputs[0].meta, &inputs[0].spec, &BTreeMap::new()).unwrap_err();
    let text = err.message();
    for expected in
        ["gateway", "hosts", "audiences", "not an http(s) URL", "found 2", "used twice", "overlaps rule a", "Host carries routing"]
    {
        assert!(text.contains(expected), "missing {expected:?} in {text}");
    }
}

#[test]
fn identity_headers_name_claims_as_require_does() {
    let issuer = TestIssuer::new(ISS, SigningAlgorithm::ES256);
    let policy = |forward: &str| {
        format!(
            "name: h\nspec:\n  issuers: [{{ issuer: \"{ISS}\", audiences: [web], jwks: {{ inline: {} }}, algorithms: [ES256] }}]\n  rules: [{{ name: all, match: {{ paths: [{{ prefix: / }}] }} }}]\n  forward: {{ claimsToHeaders: {forward} }}\n",
            issuer.jwks()
        )
    };
    let e = engine(&compile_yaml(
        "default",
        &policy(r#"{ X-Roles: { claimPath: ["https://example.com/roles"] }, X-Org: { claim: org.id }, X-User-Id: sub }"#),
        &BTreeMap::new(),
    ));
    let token = issuer.token("web", NOW, json!({"https://example.com/roles": ["a", "b"], "org": {"id": "acme"}}));
    let Decision::Allow(a) = decide(&e, "GET", "h.example.com", "/", &bearer(&token)) else { panic!() };
    assert_eq!(answer(&a, "x-roles"), Some("a,b"));
    assert_eq!(answer(&a, "x-org"), Some("acme"));
    assert_eq!(answer(&a, "x-user-id"), Some("alice"));

    for (forward, error) in [
        (
            r#"{ X-Roles: "https://example.com/roles" }"#,
            r#"looks like a URL, and a dotted name is split at every dot; name it with claimPath: ["https://example.com/roles"]"#,
        ),
        (r#"{ X-Roles: { claimPath: [] } }"#, "claimPath needs at least one non-empty entry"),
        (r#"{ X-Roles: { claim: a..b } }"#, "empty segment"),
    ] {
        let compiled = compile_yaml("default", &policy(forward), &BTreeMap::new());
        let Outcome::Rejected { rejection, .. } = &compiled.outcomes[0].outcome else { panic!("{forward} accepted") };
        assert!(rejection.message().contains(error), "{forward}: {}", rejection.message());
    }
    for bad in [r#"{ claimPath: "x" }"#, r#"{ claim: x, claimPath: [x] }"#, "{ clam: x }", "7"] {
        let doc = json!({ "claimsToHeaders": { "X-A": serde_saphyr::from_str::<serde_json::Value>(bad).unwrap() } });
        let err = serde_json::from_value::<crate::api::Forward>(doc).unwrap_err().to_string();
        assert!(err.contains("expected"), "{bad}: {err}");
    }
}

#[test]
fn a_token_lifetime_longer_than_the_keys_retain_is_refused_on_the_policy() {
    use crate::keys::schedule::{Requests, generate, plan, publish};
    let spec: crate::api::SigningKeySpec =
        serde_json::from_value(json!({"algorithm": "EdDSA", "rotationInterval": "1h", "prePublish": "1m", "retain": "5m"})).unwrap();
    let key = crate::policy::KeyRef { namespace: "default".into(), name: "internal".into() };
    let ring =
        plan(jiff::Timestamp::from_second(NOW).unwrap(), &spec, Default::default(), &Requests::default(), &mut generate).unwrap().ring;
    let keys = BTreeMap::from([(key.clone(), publish(&key, &spec, &ring).unwrap())]);
    let yaml = |ttl: &str| {
        format!(
            r#"
name: p
spec:
  issuers: [{{ issuer: x, audiences: [a], algorithms: [ES256], jwks: {{ uri: "https://x/jwks" }} }}]
  rules: [{{ name: r, match: {{ paths: [{{ prefix: / }}] }} }}]
  forward: {{ token: issue, issue: {{ signingKeyRef: {{ name: internal }}, audience: up, ttl: {ttl} }} }}
"#
        )
    };
    let ok = compile_yaml("default", &yaml("5m"), &keys);
    assert_eq!(ok.outcomes[0].outcome, Outcome::Accepted);
    let too_long = compile_yaml("default", &yaml("10m"), &keys);
    let Outcome::Rejected { rejection, .. } = &too_long.outcomes[0].outcome else { panic!() };
    assert_eq!(rejection.reason, RejectReason::Invalid);
    assert!(rejection.message().contains("could outlive their key"), "{}", rejection.message());
    let missing = compile_yaml("default", &yaml("5m"), &BTreeMap::new());
    let Outcome::Rejected { rejection, .. } = &missing.outcomes[0].outcome else { panic!() };
    assert_eq!(rejection.reason, RejectReason::KeyNotFound);
}

#[test]
fn minted_tokens_are_reused_while_fresh_and_follow_the_signing_key() {
    use crate::keys::schedule::{Requests, generate, plan, publish};
    let issuer = TestIssuer::new(ISS, SigningAlgorithm::ES256);
    let spec: crate::api::SigningKeySpec =
        serde_json::from_value(json!({"algorithm": "EdDSA", "rotationInterval": "1h", "prePublish": "1m", "retain": "10m"})).unwrap();
    let key = crate::policy::KeyRef { namespace: "default".into(), name: "internal".into() };
    let t0 = jiff::Timestamp::from_second(NOW).unwrap();
    let ring = plan(t0, &spec, Default::default(), &Requests::default(), &mut generate).unwrap().ring;
    let yaml = format!(
        r#"
name: p
spec:
  issuers: [{{ issuer: "{ISS}", audiences: [orders], algorithms: [ES256], jwks: {{ inline: {jwks} }} }}]
  rules: [{{ name: r, match: {{ paths: [{{ prefix: / }}] }} }}]
  forward: {{ token: issue, issue: {{ signingKeyRef: {{ name: internal }}, audience: up, ttl: 5m }} }}
"#,
        jwks = issuer.jwks()
    );
    let engine_at = |ring: &crate::keys::store::KeyRing| {
        let keys = BTreeMap::from([(key.clone(), publish(&key, &spec, ring).unwrap())]);
        let compiled = compile_yaml("default", &yaml, &keys);
        let minting = BTreeMap::from([(key.clone(), ring.clone())]);
        Engine::build(
            compiled.config,
            &BuildOptions { issuer_url: "https://gw", minting: &minting, remote: &NoRemoteKeys, cache_bytes: 1 << 20 },
        )
        .unwrap()
    };
    let e = engine_at(&ring);
    let h = bearer(&issuer.token("orders", NOW, json!({})));
    let minted = |e: &Engine, at: i64| match e
        .decide(&Request { method: "GET", host: "h", target: "/", headers: &h, path_mode: Default::default(), routed: None }, at)
    {
        Decision::Allow(a) => a.authorization.unwrap(),
        d => panic!("{d:?}"),
    };
    let first = minted(&e, NOW);
    assert_eq!(minted(&e, NOW + 10), first, "fresh: reused");
    assert_ne!(minted(&e, NOW + 151), first, "past half its lifetime: minted again");

    // The successor takes over at its activation: the next token is signed with it.
    let rotated = plan(t0, &spec, ring, &Requests { rotate: Some("immediate-1".into()), revoke: vec![] }, &mut generate).unwrap().ring;
    let e = engine_at(&rotated);
    let kid = |v: &HeaderValue| {
        let t = v.to_str().unwrap().trim_start_matches("Bearer ");
        let header: serde_json::Value = serde_json::from_slice(&crate::keys::b64url_decode(t.split('.').next().unwrap()).unwrap()).unwrap();
        header["kid"].as_str().unwrap().to_owned()
    };
    assert_eq!(kid(&minted(&e, NOW)), rotated.active().unwrap().kid);
}

#[test]
fn a_claim_bound_to_a_path_parameter_cannot_be_satisfied_with_a_header() {
    let issuer = TestIssuer::new(ISS, SigningAlgorithm::ES256);
    let policy = |require: &str, paths: &str| {
        format!(
            "name: t\nspec:\n  issuers: [{{ issuer: \"{ISS}\", audiences: [web], jwks: {{ inline: {} }}, algorithms: [ES256] }}]\n  rules: [{{ name: tenant, match: {{ paths: {paths} }}, require: [{require}] }}]\n",
            issuer.jwks()
        )
    };
    let e = engine(&compile_yaml(
        "default",
        &policy(
            "{ claim: tenant, equalsPathParam: tenant }",
            r#"[{ template: "/tenants/{tenant}/orders/{**}" }, { template: "/t/{tenant}" }]"#,
        ),
        &BTreeMap::new(),
    ));
    let globex = issuer.token("web", NOW, json!({"tenant": "globex"}));
    let with = |token: &str, tenant_header: &str| headers(&[("authorization", &format!("Bearer {token}")), ("x-tenant", tenant_header)]);
    assert!(decide(&e, "GET", "h", "/tenants/globex/orders/7", &with(&globex, "globex")).is_allow());
    assert!(decide(&e, "GET", "h", "/t/globex", &with(&globex, "x")).is_allow());
    // The tenant in the path decides, whatever header comes along.
    let d = decide(&e, "GET", "h", "/tenants/acme/orders/7", &with(&globex, "globex"));
    assert_eq!(reason(&d), DenyReason::ClaimsNotSatisfied);
    let Decision::Deny(denied) = d else { unreachable!() };
    assert_eq!(denied.detail.as_deref(), Some("tenant equalsPathParam {tenant}: claim value does not satisfy it"));
    // Percent-encoded segments compare decoded; numbers compare by their text.
    let odd = issuer.token("web", NOW, json!({"tenant": "a b"}));
    assert!(decide(&e, "GET", "h", "/t/a%20b", &with(&odd, "")).is_allow());
    let numeric = issuer.token("web", NOW, json!({"tenant": 42}));
    assert!(decide(&e, "GET", "h", "/t/42", &with(&numeric, "")).is_allow());
    assert_eq!(reason(&decide(&e, "GET", "h", "/t/43", &with(&numeric, ""))), DenyReason::ClaimsNotSatisfied);

    // A rule whose paths do not all carry the parameter is refused.
    for paths in [r#"[{ prefix: /tenants }]"#, r#"[{ template: "/t/{tenant}" }, { template: "/u/{id}" }]"#] {
        let compiled = compile_yaml("default", &policy("{ claim: tenant, equalsPathParam: tenant }", paths), &BTreeMap::new());
        let Outcome::Rejected { rejection, .. } = &compiled.outcomes[0].outcome else { panic!("{paths} accepted") };
        assert!(
            rejection.message().contains("equalsPathParam tenant needs every path of the rule to be a template with {tenant}"),
            "{}",
            rejection.message()
        );
    }
}

fn optional_and_cors_policy(issuer: &TestIssuer) -> String {
    format!(
        r#"
name: web
spec:
  corsPreflight: true
  issuers: [{{ issuer: "{ISS}", audiences: [web], jwks: {{ inline: {jwks} }}, algorithms: [ES256] }}]
  rules:
    - name: feed
      authentication: Optional
      match: {{ paths: [{{ prefix: /feed }}] }}
      require: [{{ claim: scope, containsAll: [feed] }}]
    - name: write
      match: {{ paths: [{{ prefix: /posts }}], methods: [POST] }}
  forward: {{ claimsToHeaders: {{ X-User-Id: sub }} }}
"#,
        jwks = issuer.jwks()
    )
}

#[test]
fn optional_authentication_lets_anonymous_callers_in_but_never_bad_tokens() {
    let issuer = TestIssuer::new(ISS, SigningAlgorithm::ES256);
    let e = engine(&compile_yaml("default", &optional_and_cors_policy(&issuer), &BTreeMap::new()));
    // No token: anonymous, and no client-sent identity reaches the upstream.
    let spoofed = headers(&[("x-user-id", "mallory")]);
    let Decision::Allow(a) = decide(&e, "GET", "h", "/feed", &spoofed) else { panic!("anonymous") };
    assert!(a.headers.is_empty() && a.authorization.is_none());
    assert!(a.strip.iter().any(|h| h == "x-user-id"));
    // A valid token: the requirements apply and the identity goes on.
    let reader = issuer.token("web", NOW, json!({"scope": "feed"}));
    let Decision::Allow(a) = decide(&e, "GET", "h", "/feed", &bearer(&reader)) else { panic!("reader") };
    assert_eq!(answer(&a, "x-user-id"), Some("alice"));
    let other = issuer.token("web", NOW, json!({"scope": "other"}));
    assert_eq!(reason(&decide(&e, "GET", "h", "/feed", &bearer(&other))), DenyReason::ClaimsNotSatisfied);
    // An invalid token is a 401, never a silent anonymous.
    let expired = issuer.token("web", NOW - 7200, json!({"scope": "feed", "exp": NOW - 600}));
    assert_eq!(reason(&decide(&e, "GET", "h", "/feed", &bearer(&expired))), DenyReason::Expired);
    assert_eq!(reason(&decide(&e, "GET", "h", "/feed", &bearer("junk"))), DenyReason::MalformedToken);
    // Required stays required.
    assert_eq!(reason(&decide(&e, "POST", "h", "/posts", &HeaderMap::new())), DenyReason::MissingToken);
    // public + optional is a contradiction the validation refuses.
    let bad = "name: x\nspec:\n  rules: [{ name: a, public: true, authentication: Optional, match: { paths: [{ prefix: / }] } }]\n";
    let Outcome::Rejected { rejection, .. } = &compile_yaml("default", bad, &BTreeMap::new()).outcomes[0].outcome else { panic!() };
    assert!(rejection.message().contains("a public rule takes no token"), "{}", rejection.message());
}

#[test]
fn cors_preflights_pass_without_a_token_only_where_the_policy_allows_them() {
    let issuer = TestIssuer::new(ISS, SigningAlgorithm::ES256);
    let yaml = optional_and_cors_policy(&issuer);
    let e = engine(&compile_yaml("default", &yaml, &BTreeMap::new()));
    let preflight = |method: &str| {
        headers(&[("origin", "https://app.example"), ("access-control-request-method", method), ("authorization", "Bearer forged")])
    };
    let Decision::Allow(a) = decide(&e, "OPTIONS", "h", "/posts/1", &preflight("POST")) else { panic!("preflight") };
    assert_eq!(e.rule_name(a.route), "write");
    assert!(a.authorization.is_none() && a.headers.is_empty(), "nothing is forwarded with a preflight");
    // The method asked about must reach a rule; OPTIONS itself without the CORS headers is a
    // normal request; and repeated or missing CORS headers are not a preflight.
    assert_eq!(reason(&decide(&e, "OPTIONS", "h", "/posts/1", &preflight("DELETE"))), DenyReason::NoRoute);
    assert_eq!(reason(&decide(&e, "OPTIONS", "h", "/posts/1", &HeaderMap::new())), DenyReason::NoRoute);
    let twice = headers(&[("origin", "https://a"), ("origin", "https://b"), ("access-control-request-method", "POST")]);
    assert_eq!(reason(&decide(&e, "OPTIONS", "h", "/posts/1", &twice)), DenyReason::NoRoute);
    assert_eq!(reason(&decide(&e, "OPTIONS", "h", "/posts/1", &preflight("post"))), DenyReason::NoRoute);
    // Without corsPreflight, a preflight is an ordinary OPTIONS request.
    let off = engine(&compile_yaml("default", &yaml.replace("corsPreflight: true", "corsPreflight: false"), &BTreeMap::new()));
    assert_eq!(reason(&decide(&off, "OPTIONS", "h", "/posts/1", &preflight("POST"))), DenyReason::NoRoute);
}

#[test]
fn audit_mode_allows_what_it_would_deny_and_says_why_with_identity_only_for_a_verified_token() {
    let issuer = TestIssuer::new(ISS, SigningAlgorithm::ES256);
    // The policy audits; its admin rule is enforced (a rule's mode overrides the policy's).
    let yaml = shop_yaml(&issuer)
        .replace("  forward:\n", "  mode: Audit\n  forward:\n")
        .replace("    - name: admin\n", "    - name: admin\n      mode: Enforce\n");
    let compiled = compile_yaml("default", &yaml, &BTreeMap::new());
    assert!(compiled.outcomes.iter().all(|o| o.outcome == Outcome::Accepted), "{:?}", compiled.outcomes);
    let engine = engine(&compiled);
    let audit = |d: &Decision| match d {
        Decision::Allow(a) => a.audit.clone(),
        Decision::Deny(d) => panic!("audited rules never deny: {d:?}"),
    };

    // No token: allowed, anonymous, would be a missing_token.
    let d = decide(&engine, "GET", "api.example.com", "/orders/1", &headers(&[("x-user-id", "spoofed")]));
    assert_eq!(audit(&d), Some(Verdict::WouldDeny { reason: DenyReason::MissingToken, detail: None }));
    let Decision::Allow(a) = &d else { unreachable!() };
    assert!(a.headers.is_empty() && a.strip.contains(&HeaderName::from_static("x-user-id")), "no identity for no caller");

    // A verified token that lacks the scope: allowed with its identity, would be a 403.
    let token = issuer.token("orders", NOW, json!({"sub": "bob", "tenant": "acme"}));
    let d = decide(&engine, "GET", "api.example.com", "/orders/1", &bearer(&token));
    let Some(Verdict::WouldDeny { reason: DenyReason::ClaimsNotSatisfied, detail: Some(detail) }) = audit(&d) else { panic!("{d:?}") };
    assert!(detail.contains("orders:read"), "{detail}");
    let Decision::Allow(a) = &d else { unreachable!() };
    assert!(a.headers.iter().any(|(n, v)| n == "x-user-id" && v == "bob"), "{:?}", a.headers);

    // A forged token is not a caller: anonymous, would be a 401.
    let forged = forge_none(&issuer.claims("orders", NOW, json!({"sub": "mallory"})));
    let d = decide(&engine, "GET", "api.example.com", "/orders/1", &bearer(&forged));
    assert!(matches!(audit(&d), Some(Verdict::WouldDeny { reason, .. }) if reason.status() == 401), "{d:?}");
    let Decision::Allow(a) = &d else { unreachable!() };
    assert!(a.headers.is_empty());

    // What enforcing allows is allowed and counted as such.
    let token = issuer.token("orders", NOW, reader_claims());
    assert_eq!(audit(&decide(&engine, "GET", "api.example.com", "/orders/1", &bearer(&token))), Some(Verdict::WouldAllow));

    // The enforced rule still denies.
    let d = decide(&engine, "GET", "api.example.com", "/orders/admin/x", &bearer(&token));
    assert!(matches!(d, Decision::Deny(Denied { reason: DenyReason::ClaimsNotSatisfied, .. })), "{d:?}");
}

#[test]
fn a_policy_attached_to_routes_applies_each_route_rule_on_its_own_hosts_only() {
    use crate::api::PathMatch;
    use crate::policy::gateway_api::{Applied, RouteMatch};
    use crate::policy::host::HostPattern;
    let yaml = "name: p\nnamespace: shop\nspec:\n  targetRefs: [{ group: gateway.networking.k8s.io, kind: HTTPRoute, name: orders }]\n  rules: [{ name: all, public: true }]\n";
    let mut inputs = crate::testkit::inputs_from_yaml(yaml);
    let applied = |host: &str, prefix: &str| Applied {
        gateway: ("infra".into(), "web".into()),
        route: ("shop".into(), "orders".into()),
        rule: Some("r".into()),
        hosts: vec![HostPattern::parse(host).unwrap()],
        matches: vec![RouteMatch { path: PathMatch { prefix: Some(prefix.into()), ..Default::default() }, ..Default::default() }],
    };
    // Not resolved (local mode, no Gateway API): refused with the reason, nothing served.
    let compiled = crate::policy::compile("default", &inputs, &BTreeMap::new(), &crate::policy::Tenancy::single_owner());
    assert!(
        matches!(&compiled.outcomes[0].outcome, Outcome::Rejected { rejection, .. } if rejection.reason == RejectReason::TargetNotFound)
    );
    assert!(compiled.config.policies.is_empty());
    inputs[0].attachment = Some(Ok(vec![applied("a.test", "/orders"), applied("b.test", "/admin")]));
    let compiled = crate::policy::compile("default", &inputs, &BTreeMap::new(), &crate::policy::Tenancy::single_owner());
    assert_eq!(compiled.outcomes[0].outcome, Outcome::Accepted);
    let e = engine(&compiled);
    let none = HeaderMap::new();
    assert!(decide(&e, "GET", "a.test", "/orders/1", &none).is_allow());
    assert!(decide(&e, "GET", "b.test", "/admin", &none).is_allow());
    // Each route's paths on its own hosts only, segment-wise.
    assert_eq!(reason(&decide(&e, "GET", "a.test", "/admin", &none)), DenyReason::NoRoute);
    assert_eq!(reason(&decide(&e, "GET", "b.test", "/orders", &none)), DenyReason::NoRoute);
    assert_eq!(reason(&decide(&e, "GET", "a.test", "/ordersX", &none)), DenyReason::NoRoute);
    // A route rule whose match Portcullis cannot reproduce: the policy is refused as a whole.
    inputs[0].attachment =
        Some(Err(crate::policy::Rejection { reason: RejectReason::Invalid, problems: vec!["RegularExpression".into()] }));
    let compiled = crate::policy::compile("default", &inputs, &BTreeMap::new(), &crate::policy::Tenancy::single_owner());
    assert!(compiled.config.policies.is_empty());
}

#[test]
fn header_and_query_conditions_of_routes_select_the_policy_as_the_gateway_routes_and_ambiguity_is_refused() {
    use crate::api::PathMatch;
    use crate::policy::config::RequestCondition::{Header, Query};
    use crate::policy::gateway_api::{Applied, RouteMatch};
    use crate::policy::host::HostPattern;
    let yaml = |name: &str| {
        format!(
            "name: {name}\nnamespace: shop\nspec:\n  targetRefs: [{{ group: gateway.networking.k8s.io, kind: HTTPRoute, name: orders }}]\n  rules: [{{ name: all, public: true }}]\n"
        )
    };
    let applied = |when: Vec<crate::policy::config::RequestCondition>| Applied {
        gateway: ("infra".into(), "web".into()),
        route: ("shop".into(), "orders".into()),
        rule: Some("r".into()),
        hosts: vec![HostPattern::parse("a.test").unwrap()],
        matches: vec![RouteMatch { path: PathMatch { prefix: Some("/api".into()), ..Default::default() }, when, ..Default::default() }],
    };
    let h = |v: &str| Header { name: "x-version".into(), value: v.into() };
    let q = |v: &str| Query { name: "v".into(), value: v.into() };
    let inputs_for = |policies: Vec<(&str, Vec<crate::policy::config::RequestCondition>)>| {
        let mut inputs = Vec::new();
        for (name, when) in policies {
            let mut input = crate::testkit::inputs_from_yaml(&yaml(name)).remove(0);
            input.attachment = Some(Ok(vec![applied(when)]));
            inputs.push(input);
        }
        inputs
    };
    let inputs = inputs_for(vec![
        ("plain", vec![]),
        ("v2", vec![h("2")]),
        ("v3", vec![h("3")]),
        ("q2", vec![q("2")]),
        ("both", vec![h("2"), q("2")]),
    ]);
    let compiled = crate::policy::compile("default", &inputs, &BTreeMap::new(), &crate::policy::Tenancy::single_owner());
    assert!(compiled.outcomes.iter().all(|o| o.outcome == Outcome::Accepted), "{:?}", compiled.outcomes);
    let e = engine(&compiled);
    let chosen = |target: &str, hdrs: &[(&str, &str)]| match decide(&e, "GET", "a.test", target, &headers(hdrs)) {
        Decision::Allow(a) => e.policies[a.route.policy as usize].key.to_string(),
        Decision::Deny(d) => d.reason.as_str().to_owned(),
    };
    // Gateway API's order: more header conditions first, then more query conditions.
    assert_eq!(chosen("/api/x", &[]), "shop/plain");
    assert_eq!(chosen("/api/x", &[("x-version", "2")]), "shop/v2");
    assert_eq!(chosen("/api/x", &[("X-Version", "3")]), "shop/v3", "header names are case-insensitive");
    assert_eq!(chosen("/api/x", &[("x-version", "4")]), "shop/plain");
    assert_eq!(chosen("/api/x?v=2", &[]), "shop/q2");
    assert_eq!(chosen("/api/x?a=1&v=2", &[("x-version", "2")]), "shop/both");
    assert_eq!(chosen("/api/x?v=2", &[("x-version", "3")]), "shop/v3", "a header condition outranks a query condition");
    assert_eq!(chosen("/api/x?V=2", &[]), "shop/plain", "query names are case-sensitive");
    assert_eq!(chosen("/api/x?v=22", &[("x-version", "2 ")]), "shop/plain", "values are exact");
    // What the gateway may read differently is refused, not guessed.
    for (target, hdrs) in [
        ("/api/x", vec![("x-version", "2"), ("x-version", "2")]),
        ("/api/x?v=2&v=2", vec![]),
        ("/api/x?v=%32", vec![]),
        ("/api/x?v=2+", vec![]),
        ("/api/x?%76=2", vec![]),
    ] {
        assert_eq!(chosen(target, &hdrs), "ambiguous_route", "{target} {hdrs:?}");
    }
    // Elsewhere, repeats and encodings are nobody's business.
    assert_eq!(chosen("/other?v=%32&v=1", &[("x-version", "2"), ("x-version", "3")]), "no_route");
    // Two routes one request can match with neither more specific: the gateway picks the older
    // route, which the authorizer cannot know; the later policy is refused.
    let inputs = inputs_for(vec![
        ("a", vec![h("2")]),
        ("b", vec![h("2")]),
        ("c", vec![q("2")]),
        ("d", vec![Query { name: "w".into(), value: "1".into() }]),
    ]);
    let compiled = crate::policy::compile("default", &inputs, &BTreeMap::new(), &crate::policy::Tenancy::single_owner());
    let outcome = |name: &str| compiled.outcomes.iter().find(|o| o.name == name).unwrap().outcome.clone();
    assert_eq!(outcome("a"), Outcome::Accepted);
    assert!(
        matches!(outcome("b"), Outcome::Rejected { rejection, .. } if rejection.reason == RejectReason::Conflicted && rejection.problems[0].contains("1 header or query parameter condition")),
        "{:?}",
        outcome("b")
    );
    assert_eq!(outcome("c"), Outcome::Accepted, "a header condition and a query condition never tie");
    assert!(
        matches!(outcome("d"), Outcome::Rejected { rejection, .. } if rejection.reason == RejectReason::Conflicted),
        "v=2&w=1 matches both"
    );
}

#[test]
fn cluster_service_account_tokens_are_trusted_only_as_the_cluster_issues_them_and_name_the_workload() {
    use crate::policy::config::ClusterIssuer;
    const CLUSTER: &str = "https://kubernetes.default.svc.cluster.local";
    let cluster = TestIssuer::new(CLUSTER, SigningAlgorithm::RS256);
    let idp = TestIssuer::new(ISS, SigningAlgorithm::ES256);
    let yaml = format!(
        r#"
name: internal
namespace: shop
spec:
  hosts: [orders.shop.svc]
  issuers:
    - kubernetes: {{ maxTokenLifetime: 1h }}
      audiences: [orders.shop.svc]
    - issuer: {ISS}
      audiences: [orders.shop.svc]
      jwks: {{ inline: {jwks} }}
      algorithms: [ES256]
  rules:
    - name: checkout-only
      match: {{ paths: [{{ prefix: / }}] }}
      serviceAccounts: [shop/checkout, ops/*]
      forward:
        claimsToHeaders:
          X-Caller-Namespace: {{ claimPath: [kubernetes.io, namespace] }}
          X-Caller: {{ claimPath: [kubernetes.io, serviceaccount, name] }}
"#,
        jwks = idp.jwks()
    );
    let compiled = compile_yaml("default", &yaml, &BTreeMap::new());
    assert!(compiled.outcomes.iter().all(|o| o.outcome == Outcome::Accepted), "{:?}", compiled.outcomes);
    let sa = |ns: &str, name: &str, extra: serde_json::Value| {
        let mut c = json!({"sub": format!("system:serviceaccount:{ns}:{name}"),
            "kubernetes.io": {"namespace": ns, "serviceaccount": {"name": name, "uid": "u1"}, "pod": {"name": "p", "uid": "u2"}}});
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    };
    let ask = |engine: &Engine, token: &str| decide(engine, "GET", "orders.shop.svc", "/orders", &bearer(token));

    // Before the cluster's issuer is known: refused, and visibly so.
    let unknown = engine(&compiled);
    assert!(unknown.warnings.iter().any(|w| w.contains("not known")), "{:?}", unknown.warnings);
    assert_eq!(
        reason(&ask(&unknown, &cluster.token("orders.shop.svc", NOW, sa("shop", "checkout", json!({}))))),
        DenyReason::KeysUnavailable
    );

    let mut config = compiled.config.clone();
    let issuer = ClusterIssuer { issuer: CLUSTER.into(), keys: vec![crate::api::JwkObject(cluster.key.public_jwk().clone())] };
    crate::policy::exchange::complete(&mut config, Some(issuer), &[], &BTreeMap::new(), &crate::policy::Tenancy::single_owner());
    let e = engine(&crate::policy::Compiled { config, ..compiled.clone() });

    let Decision::Allow(a) = ask(&e, &cluster.token("orders.shop.svc", NOW, sa("shop", "checkout", json!({})))) else { panic!("denied") };
    let got: BTreeMap<_, _> = a.headers.iter().map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap().to_owned())).collect();
    assert_eq!(got, BTreeMap::from([("x-caller".into(), "checkout".into()), ("x-caller-namespace".into(), "shop".into())]));
    assert!(
        ask(&e, &cluster.token("orders.shop.svc", NOW, sa("ops", "deployer", json!({})))).is_allow(),
        "ops/* admits any account of ops"
    );

    let mut legacy = sa("shop", "checkout", json!({}));
    legacy["iss"] = json!(CLUSTER);
    legacy["aud"] = json!("orders.shop.svc");
    let no_exp = cluster.key.sign_jwt(&legacy).unwrap();
    let denied = [
        ("another workload", cluster.token("orders.shop.svc", NOW, sa("shop", "web", json!({})))),
        ("another audience", cluster.token("https://kubernetes.default.svc", NOW, sa("shop", "checkout", json!({})))),
        ("issued for 2h", cluster.token("orders.shop.svc", NOW, sa("shop", "checkout", json!({"exp": NOW + 7200})))),
        (
            "no iat",
            cluster
                .key
                .sign_jwt(&{
                    let mut c = cluster.claims("orders.shop.svc", NOW, sa("shop", "checkout", json!({})));
                    c.as_object_mut().unwrap().remove("iat");
                    c
                })
                .unwrap(),
        ),
        ("no exp (a legacy Secret token)", no_exp),
        (
            "sub and kubernetes.io disagree",
            cluster.token("orders.shop.svc", NOW, sa("shop", "checkout", json!({"sub": "system:serviceaccount:shop:web"}))),
        ),
        ("another issuer's kubernetes.io claim", idp.token("orders.shop.svc", NOW, sa("shop", "checkout", json!({})))),
    ];
    for (what, token) in denied {
        let d = ask(&e, &token);
        assert!(!d.is_allow(), "{what}");
    }
    let r = |t: &str| reason(&ask(&e, t));
    assert_eq!(r(&cluster.token("orders.shop.svc", NOW, sa("shop", "checkout", json!({"exp": NOW + 7200})))), DenyReason::LifetimeTooLong);
    assert_eq!(r(&idp.token("orders.shop.svc", NOW, sa("shop", "checkout", json!({})))), DenyReason::ClaimsNotSatisfied);
    assert_eq!(r(&cluster.token("orders.shop.svc", NOW, sa("shop", "web", json!({})))), DenyReason::ClaimsNotSatisfied);
}
