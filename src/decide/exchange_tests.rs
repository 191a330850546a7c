//! Token exchange decisions: every refusal of the issue's list, the minted token's claims, and
//! properties (never longer than the subject, never wider than the policy and the subject).

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Value, json};

use super::exchange::{ExchangeError, ExchangeRequest, GRANT_TYPE, TOKEN_TYPE_JWT, act_chain, parse_form};
use super::*;
use crate::api::{SigningAlgorithm, TokenExchangePolicySpec};
use crate::keys::SigningKeyPair;
use crate::keys::schedule::{Requests, generate, plan, publish};
use crate::policy::config::ClusterIssuer;
use crate::policy::exchange::{ExchangeInput, complete};
use crate::policy::{Outcome, PolicyMeta, Tenancy};
use crate::testkit::TestIssuer;

const NOW: i64 = 1_800_000_000;
const GATEWAY: &str = "https://gateway.test";
const CLUSTER: &str = "https://kubernetes.default.svc.cluster.local";
const ORDERS: &str = "system:serviceaccount:shop:orders";

struct World {
    cluster: TestIssuer,
    minting: SigningKeyPair,
    engine: Engine,
}

fn sa_claims(ns: &str, name: &str, aud: &str, now: i64) -> Value {
    json!({
        "iss": CLUSTER, "aud": [aud], "sub": format!("system:serviceaccount:{ns}:{name}"),
        "iat": now, "nbf": now, "exp": now + 3600,
        "kubernetes.io": {"namespace": ns, "serviceaccount": {"name": name, "uid": "0c3a"}},
    })
}

fn policy(yaml: &str) -> ExchangeInput {
    let spec: TokenExchangePolicySpec = serde_saphyr::from_str(yaml).unwrap();
    ExchangeInput { meta: PolicyMeta::new("shop", "orders"), spec: Arc::new(spec), last_good: None }
}

const POLICY: &str = r#"
audience: { serviceAccount: orders }
signingKeyRef: { name: internal }
ttl: 5m
claims: [email, scope]
require: [{ claim: scope, containsAny: ["orders:write"] }]
from:
  - { serviceAccount: shop/checkout, subjectAudiences: [checkout] }
  - { serviceAccount: shop/payments }
  - { serviceAccount: shop/orders }
"#;

fn world_with(yaml: &str, deliver_key: bool) -> World {
    let cluster = TestIssuer::new(CLUSTER, SigningAlgorithm::RS256);
    let spec: crate::api::SigningKeySpec =
        serde_json::from_value(json!({"algorithm": "EdDSA", "rotationInterval": "24h", "prePublish": "1m", "retain": "2h"})).unwrap();
    let key = KeyRef { namespace: "shop".into(), name: "internal".into() };
    let ring =
        plan(jiff::Timestamp::from_second(NOW).unwrap(), &spec, Default::default(), &Requests::default(), &mut generate).unwrap().ring;
    let minting = ring.active().unwrap().key_pair().unwrap();
    let keys = BTreeMap::from([(key.clone(), publish(&key, &spec, &ring).unwrap())]);
    let mut config = GatewayConfig::new("default", Vec::new(), Vec::new());
    let issuer = ClusterIssuer { issuer: CLUSTER.into(), keys: vec![crate::api::JwkObject(cluster.key.public_jwk().clone())] };
    let outcomes = complete(&mut config, Some(issuer), &[policy(yaml)], &keys, &Tenancy::single_owner());
    assert!(outcomes.iter().all(|o| o.outcome == Outcome::Accepted), "{outcomes:?}");
    let rings = if deliver_key { BTreeMap::from([(key, ring)]) } else { BTreeMap::new() };
    let opts = BuildOptions { issuer_url: GATEWAY, minting: &rings, remote: &NoRemoteKeys, cache_bytes: 1 << 20 };
    World { engine: Engine::build(config, &opts).unwrap(), cluster, minting }
}

impl World {
    fn actor(&self, ns: &str, name: &str) -> String {
        self.cluster.key.sign_jwt(&sa_claims(ns, name, GATEWAY, NOW)).unwrap()
    }

    fn subject(&self, extra: Value) -> String {
        let mut claims = json!({"iss": GATEWAY, "aud": "checkout", "sub": "alice", "iat": NOW, "exp": NOW + 600,
            "email": "alice@shop.example", "scope": "orders:read orders:write", "tenant": "t1"});
        for (k, v) in extra.as_object().unwrap() {
            if v.is_null() {
                claims.as_object_mut().unwrap().remove(k);
            } else {
                claims[k] = v.clone();
            }
        }
        self.minting.sign_jwt(&claims).unwrap()
    }

    fn exchange(&self, subject: &str, actor: &str, audience: &str) -> Result<Value, ExchangeError> {
        let req = ExchangeRequest { subject_token: subject.into(), actor_token: actor.into(), audience: audience.into() };
        let out = self.engine.exchange(&req, NOW)?;
        let token = out.access_token.clone();
        // What a service verifies: the gateway's published JWKS, nothing else.
        let jwks = self.engine.config.minting_jwks();
        let set = keyset::KeySet::new_static("jwks", crate::keys::parse_jwks(&jwks).unwrap().0);
        let t = token::parse(&token).unwrap();
        token::verify_signature(&t, &set).expect("the gateway's JWKS verifies an exchanged token");
        assert_eq!(out.expires_in, t.claims["exp"].as_i64().unwrap() - NOW);
        Ok(t.claims)
    }
}

fn world() -> World {
    world_with(POLICY, true)
}

#[test]
fn an_allowed_exchange_carries_the_subject_and_the_actor_and_nothing_more() {
    let w = world();
    let claims = w.exchange(&w.subject(json!({})), &w.actor("shop", "checkout"), ORDERS).unwrap();
    assert_eq!(claims["iss"], GATEWAY);
    assert_eq!(claims["aud"], ORDERS);
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["email"], "alice@shop.example");
    assert_eq!(claims["scope"], "orders:read orders:write");
    assert!(claims.get("tenant").is_none(), "a claim the policy does not carry over is dropped");
    assert_eq!(claims["act"], json!({"sub": "system:serviceaccount:shop:checkout"}));
    assert_eq!(claims["exp"], NOW + 300);
    assert_eq!(claims["iat"], NOW);

    // A claim the policy carries over but the subject lacks is not invented.
    let claims = w.exchange(&w.subject(json!({"email": null})), &w.actor("shop", "checkout"), ORDERS).unwrap();
    assert!(claims.get("email").is_none());
    // Never beyond the subject token.
    let claims = w.exchange(&w.subject(json!({"exp": NOW + 42})), &w.actor("shop", "checkout"), ORDERS).unwrap();
    assert_eq!(claims["exp"], NOW + 42);
}

#[test]
fn a_chain_nests_the_actors_and_stops_at_the_depth_and_at_loops() {
    let w = world();
    // payments holds a token minted for it by an exchange (act: checkout); its own username is
    // the default subject audience.
    let prior = json!({"aud": "system:serviceaccount:shop:payments", "act": {"sub": "system:serviceaccount:shop:checkout"}});
    let claims = w.exchange(&w.subject(prior), &w.actor("shop", "payments"), ORDERS).unwrap();
    assert_eq!(claims["act"], json!({"sub": "system:serviceaccount:shop:payments", "act": {"sub": "system:serviceaccount:shop:checkout"}}));
    assert_eq!(act_chain(&claims).unwrap(), ["system:serviceaccount:shop:payments", "system:serviceaccount:shop:checkout"]);

    let deep = json!({"aud": "system:serviceaccount:shop:payments", "act": {"sub": "a", "act": {"sub": "b"}}});
    let err = w.exchange(&w.subject(deep), &w.actor("shop", "payments"), ORDERS).unwrap_err();
    assert!(matches!(&err, ExchangeError::InvalidGrant(d) if d.contains("chain would be 3")), "{err:?}");

    // Its own audience: a workload exchanging a token for itself.
    let own = json!({"aud": ORDERS});
    let err = w.exchange(&w.subject(own), &w.actor("shop", "orders"), ORDERS).unwrap_err();
    assert_eq!(err.code(), "invalid_target", "{err:?}");

    let back = json!({"aud": "system:serviceaccount:shop:payments", "act": {"sub": ORDERS}});
    let err = w.exchange(&w.subject(back), &w.actor("shop", "payments"), ORDERS).unwrap_err();
    assert_eq!(err.code(), "invalid_target", "{err:?}");
}

#[test]
fn every_bad_exchange_is_refused_with_its_oauth_error() {
    let w = world();
    let other_cluster = TestIssuer::new(CLUSTER, SigningAlgorithm::RS256);
    let ok_actor = w.actor("shop", "checkout");
    let ok_subject = w.subject(json!({}));
    let mut legacy = sa_claims("shop", "checkout", GATEWAY, NOW);
    legacy.as_object_mut().unwrap().remove("exp");
    legacy["iss"] = json!("kubernetes/serviceaccount");
    let mut flat_legacy = json!({"iss": CLUSTER, "sub": "system:serviceaccount:shop:checkout", "aud": [GATEWAY], "exp": NOW + 600, "iat": NOW,
        "kubernetes.io/serviceaccount/namespace": "shop", "kubernetes.io/serviceaccount/service-account.name": "checkout"});
    flat_legacy["nbf"] = json!(NOW);
    let mut long = sa_claims("shop", "checkout", GATEWAY, NOW);
    long["exp"] = json!(NOW + 2 * 3600);
    let mut expired_actor = sa_claims("shop", "checkout", GATEWAY, NOW - 7200);
    expired_actor["exp"] = json!(NOW - 3600);
    let sign = |c: &Value| w.cluster.key.sign_jwt(c).unwrap();
    let cases: Vec<(&str, String, String, &str, &str)> = vec![
        ("unknown audience", ok_subject.clone(), ok_actor.clone(), "system:serviceaccount:shop:billing", "invalid_target"),
        ("audience of another namespace", ok_subject.clone(), ok_actor.clone(), "system:serviceaccount:bank:orders", "invalid_target"),
        (
            "actor of another cluster",
            ok_subject.clone(),
            other_cluster.key.sign_jwt(&sa_claims("shop", "checkout", GATEWAY, NOW)).unwrap(),
            ORDERS,
            "unauthorized_client",
        ),
        (
            "actor for another audience",
            ok_subject.clone(),
            sign(&sa_claims("shop", "checkout", "https://kubernetes.default.svc", NOW)),
            ORDERS,
            "unauthorized_client",
        ),
        ("actor expired", ok_subject.clone(), sign(&expired_actor), ORDERS, "unauthorized_client"),
        ("legacy Secret token", ok_subject.clone(), sign(&legacy), ORDERS, "unauthorized_client"),
        ("legacy-shaped claims", ok_subject.clone(), sign(&flat_legacy), ORDERS, "unauthorized_client"),
        ("actor issued for 2h", ok_subject.clone(), sign(&long), ORDERS, "unauthorized_client"),
        ("actor not allowed", ok_subject.clone(), w.actor("shop", "web"), ORDERS, "unauthorized_client"),
        ("actor of another namespace", ok_subject.clone(), w.actor("bank", "checkout"), ORDERS, "unauthorized_client"),
        ("actor token as subject", ok_actor.clone(), ok_actor.clone(), ORDERS, "invalid_grant"),
        ("subject expired", w.subject(json!({"exp": NOW - 120})), ok_actor.clone(), ORDERS, "invalid_grant"),
        ("subject for another audience", w.subject(json!({"aud": "web"})), ok_actor.clone(), ORDERS, "invalid_grant"),
        ("subject of another issuer", w.subject(json!({"iss": "https://other-gateway.test"})), ok_actor.clone(), ORDERS, "invalid_grant"),
        (
            "subject signed by another key",
            w.cluster
                .key
                .sign_jwt(&json!({"iss": GATEWAY, "aud": "checkout", "sub": "alice", "exp": NOW + 600, "scope": "orders:write"}))
                .unwrap(),
            ok_actor.clone(),
            ORDERS,
            "invalid_grant",
        ),
        (
            "subject without the scope the policy requires",
            w.subject(json!({"scope": "orders:read"})),
            ok_actor.clone(),
            ORDERS,
            "invalid_grant",
        ),
        ("subject without sub", w.subject(json!({"sub": null})), ok_actor.clone(), ORDERS, "invalid_grant"),
        ("subject with a broken act", w.subject(json!({"act": "checkout"})), ok_actor.clone(), ORDERS, "invalid_grant"),
        ("subject is not a JWT", "not.a-token".into(), ok_actor.clone(), ORDERS, "invalid_request"),
        (
            "subject alg none",
            crate::testkit::forge_none(&json!({"iss": GATEWAY, "aud": "checkout", "sub": "alice", "exp": NOW + 600})),
            ok_actor.clone(),
            ORDERS,
            "invalid_grant",
        ),
        ("actor is not a JWT", ok_subject.clone(), "x".into(), ORDERS, "invalid_request"),
        ("a token as the audience", ok_subject.clone(), ok_actor.clone(), ok_actor.as_str(), "invalid_target"),
    ];
    for (what, subject, actor, audience, code) in cases {
        let err = w.exchange(&subject, &actor, audience).expect_err(what);
        assert_eq!(err.code(), code, "{what}: {err:?}");
        assert_eq!(err.status(), 400, "{what}");
        for token in [&subject, &actor] {
            assert!(!err.description().contains(token.as_str()), "{what}: a token in the error");
        }
    }
}

#[test]
fn without_its_minting_key_or_the_cluster_issuer_the_gateway_says_it_cannot_issue() {
    let w = world_with(POLICY, false);
    let err = w.exchange(&w.subject(json!({})), &w.actor("shop", "checkout"), ORDERS).unwrap_err();
    assert_eq!((err.code(), err.status()), ("temporarily_unavailable", 503));
}

#[test]
fn the_form_is_parsed_strictly() {
    let base = format!(
        "grant_type={}&subject_token=s.t.x&subject_token_type={}&actor_token=a.t.x&actor_token_type={}&audience=aud",
        urlencode(GRANT_TYPE),
        urlencode(TOKEN_TYPE_JWT),
        urlencode(TOKEN_TYPE_JWT)
    );
    let ok = parse_form(base.as_bytes()).unwrap();
    assert_eq!((ok.subject_token.as_str(), ok.actor_token.as_str(), ok.audience.as_str()), ("s.t.x", "a.t.x", "aud"));
    let cases = [
        (format!("{base}&audience=other"), "invalid_request"),
        (base.replace("token-exchange", "client_credentials"), "unsupported_grant_type"),
        (base.replace("&audience=aud", ""), "invalid_request"),
        (base.replace("actor_token=a.t.x&", ""), "invalid_request"),
        (base.replace("subject_token_type=urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Ajwt", "subject_token_type=saml"), "invalid_request"),
        (format!("{base}&resource=https%3A%2F%2Forders"), "invalid_request"),
        (format!("{base}&scope=orders"), "invalid_request"),
        (format!("{base}&requested_token_type=urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Asaml2"), "invalid_request"),
        (format!("{base}&pad={}", "x".repeat(super::exchange::MAX_FORM_BYTES)), "invalid_request"),
    ];
    for (body, code) in cases {
        assert_eq!(parse_form(body.as_bytes()).unwrap_err().code(), code, "{body:.120}");
    }
}

fn urlencode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    /// One world for every case: a cluster key is an RSA key, slow to generate.
    static WORLD: std::sync::LazyLock<World> = std::sync::LazyLock::new(world);

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        /// Whatever the subject carries and however long it lives, the exchanged token never
        /// outlives it, never carries a claim that is neither the policy's nor the subject's,
        /// and is addressed only to the audience asked for.
        #[test]
        fn an_exchanged_token_never_outlives_or_widens_its_subject(
            lifetime in prop_oneof![1i64..600, 600i64..7200],
            present in proptest::collection::btree_set(prop_oneof!["email", "scope", "tenant", "roles", "groups"], 0..5),
            depth in 0usize..3,
        ) {
            let w = &*WORLD;
            let mut extra = json!({"exp": NOW + lifetime, "aud": "system:serviceaccount:shop:payments", "scope": "orders:write"});
            for name in ["email", "tenant", "roles", "groups"] {
                extra[name] = if present.contains(name) { json!(format!("{name}-value")) } else { Value::Null };
            }
            let mut act = Value::Null;
            for i in 0..depth {
                act = if act.is_null() { json!({"sub": format!("w{i}")}) } else { json!({"sub": format!("w{i}"), "act": act}) };
            }
            extra["act"] = act;
            let subject = w.subject(extra);
            match w.exchange(&subject, &w.actor("shop", "payments"), ORDERS) {
                Ok(claims) => {
                    prop_assert!(depth < 2);
                    prop_assert!(claims["exp"].as_i64().unwrap() <= NOW + lifetime);
                    prop_assert_eq!(&claims["aud"], ORDERS);
                    let allowed = ["iss", "sub", "aud", "act", "iat", "nbf", "exp", "jti", "email", "scope"];
                    for (k, v) in claims.as_object().unwrap() {
                        prop_assert!(allowed.contains(&k.as_str()), "{} is not the policy's", k);
                        if k == "email" { prop_assert_eq!(v, "email-value"); }
                    }
                    prop_assert_eq!(claims.get("email").is_some(), present.contains("email"));
                    prop_assert_eq!(act_chain(&claims).unwrap().len(), depth + 1);
                }
                Err(e) => prop_assert!(depth >= 2 && e.code() == "invalid_grant", "{:?}", e),
            }
        }
    }
}
