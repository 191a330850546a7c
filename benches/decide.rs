//! `cargo bench --bench decide`: the decision on the hot path, and compilation of large configs.

use std::collections::BTreeMap;
use std::hint::black_box;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use http::HeaderMap;
use portcullis::api::SigningAlgorithm;
use portcullis::decide::{BuildOptions, Engine, NoRemoteKeys, Request};
use portcullis::policy::{PolicyInput, compile};
use portcullis::testkit::{TestIssuer, compile_yaml, inputs_from_yaml};
use serde_json::json;

const NOW: i64 = 1_800_000_000;
const ISS: &str = "https://id.example.com";

fn engine_for(issuer: &TestIssuer, alg: &str, cache_bytes: usize) -> Engine {
    let yaml = format!(
        r#"
name: orders
spec:
  hosts: [api.example.com]
  issuers: [{{ issuer: "{ISS}", audiences: [orders], algorithms: [{alg}], jwks: {{ inline: {jwks} }} }}]
  rules:
    - {{ name: health, public: true, match: {{ paths: [{{ exact: /orders/healthz }}] }} }}
    - name: read
      match: {{ paths: [{{ prefix: /orders }}], methods: [GET] }}
      require:
        - {{ claim: scope, containsAll: ["orders:read"] }}
        - {{ claim: realm_access.roles, containsAny: [clerk, admin] }}
  forward: {{ claimsToHeaders: {{ X-User-Id: sub, X-User-Roles: realm_access.roles }} }}
"#,
        jwks = issuer.jwks()
    );
    let compiled = compile_yaml("default", &yaml, &BTreeMap::new());
    let minting = BTreeMap::new();
    Engine::build(compiled.config, &BuildOptions { issuer_url: "https://gw", minting: &minting, remote: &NoRemoteKeys, cache_bytes })
        .unwrap()
}

fn headers(token: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("authorization", format!("Bearer {token}").parse().unwrap());
    h
}

fn bench_decide(c: &mut Criterion) {
    let mut g = c.benchmark_group("decide");
    for (alg, name) in [(SigningAlgorithm::RS256, "RS256"), (SigningAlgorithm::ES256, "ES256"), (SigningAlgorithm::EdDSA, "EdDSA")] {
        let issuer = TestIssuer::new(ISS, alg);
        let token = issuer.token("orders", NOW, json!({"scope": "orders:read", "realm_access": {"roles": ["clerk"]}}));
        let h = headers(&token);
        let req = Request {
            method: "GET",
            host: "api.example.com",
            target: "/orders/42?expand=items",
            headers: &h,
            path_mode: Default::default(),
            routed: None,
        };

        let cached = engine_for(&issuer, name, 64 << 20);
        assert!(cached.decide(&req, NOW).is_allow());
        g.bench_function(format!("allow/{name}/cached"), |b| b.iter(|| black_box(cached.decide(black_box(&req), NOW))));

        let uncached = engine_for(&issuer, name, 0);
        assert!(uncached.decide(&req, NOW).is_allow());
        g.bench_function(format!("allow/{name}/uncached"), |b| b.iter(|| black_box(uncached.decide(black_box(&req), NOW))));

        // The signature check alone, as the floor for the uncached decision.
        let key = portcullis::keys::parse_jwk(issuer.key.public_jwk()).unwrap().unwrap();
        let (message, signature) = token.rsplit_once('.').unwrap();
        let jalg = portcullis::decide::token::jwt_algorithm(portcullis::api::JwtAlgorithm::from_name(name).unwrap());
        g.bench_function(format!("raw-verify/{name}"), |b| {
            b.iter(|| assert!(jsonwebtoken::crypto::verify(signature, black_box(message.as_bytes()), &key.decoding, jalg).unwrap()))
        });
    }

    bench_minting(&mut g);
    bench_session(&mut g);

    let issuer = TestIssuer::new(ISS, SigningAlgorithm::RS256);
    let engine = engine_for(&issuer, "RS256", 64 << 20);
    let none = HeaderMap::new();
    let no_token = Request {
        method: "GET",
        host: "api.example.com",
        target: "/orders/42",
        headers: &none,
        path_mode: Default::default(),
        routed: None,
    };
    g.bench_function("deny/no-token", |b| b.iter(|| black_box(engine.decide(black_box(&no_token), NOW))));
    let public = Request {
        method: "GET",
        host: "api.example.com",
        target: "/orders/healthz",
        headers: &none,
        path_mode: Default::default(),
        routed: None,
    };
    g.bench_function("allow/public", |b| b.iter(|| black_box(engine.decide(black_box(&public), NOW))));
    let forged = {
        let other = TestIssuer::new(ISS, SigningAlgorithm::RS256);
        // Same kid as the trusted key, another key's signature.
        let claims = other.claims("orders", NOW, json!({}));
        other.token_with_header(json!({"alg": "RS256", "kid": issuer.key.kid()}), &claims)
    };
    let hf = headers(&forged);
    let bad =
        Request { method: "GET", host: "api.example.com", target: "/orders/42", headers: &hf, path_mode: Default::default(), routed: None };
    g.bench_function("deny/bad-signature-RS256", |b| b.iter(|| black_box(engine.decide(black_box(&bad), NOW))));
    g.finish();
}

/// Allow for a signed-in browser: the sealed session cookie opened (AES-256-GCM) and its claims
/// parsed on every request — to compare with `allow/*/cached` (a bearer token from the cache).
fn bench_session(g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>) {
    use portcullis::keys::schedule::{Requests, generate, plan, publish};
    let spec: portcullis::api::SigningKeySpec = serde_json::from_value(json!({"algorithm": "EdDSA"})).unwrap();
    let key = portcullis::policy::KeyRef { namespace: "default".into(), name: "sessions".into() };
    let ring =
        plan(jiff::Timestamp::from_second(NOW).unwrap(), &spec, Default::default(), &Requests::default(), &mut generate).unwrap().ring;
    let keys = BTreeMap::from([(key.clone(), publish(&key, &spec, &ring).unwrap())]);
    let yaml = r#"
name: web
spec:
  hosts: [api.example.com]
  signIn: { issuer: "https://id.example.com", clientId: web, sessionKeyRef: { name: sessions } }
  rules:
    - name: read
      match: { paths: [{ prefix: /orders }], methods: [GET] }
      require:
        - { claim: scope, containsAll: ["orders:read"] }
        - { claim: realm_access.roles, containsAny: [clerk, admin] }
  forward: { claimsToHeaders: { X-User-Id: sub, X-User-Roles: realm_access.roles } }
"#;
    let compiled = compile_yaml("default", yaml, &keys);
    let minting = BTreeMap::from([(key, ring.clone())]);
    let engine = Engine::build(
        compiled.config,
        &BuildOptions { issuer_url: "https://gw", minting: &minting, remote: &NoRemoteKeys, cache_bytes: 64 << 20 },
    )
    .unwrap();
    let sealer = portcullis::keys::seal::Sealer::new(&ring, "session:default/web").unwrap();
    // With a refresh token, as a provider that grants offline access gives one.
    let session = portcullis::decide::signin::Session::from_id_token(
        &json!({"iss": "https://id.example.com", "sub": "alice", "email": "alice@shop.example", "scope": "orders:read", "realm_access": {"roles": ["clerk"]}}),
        NOW + 3600,
    )
    .with_refresh(Some("r".repeat(43)), NOW + 3600, NOW);
    let cookies = portcullis::decide::signin::seal_session(&sealer, "__Host-portcullis-session", "api.example.com", &session).unwrap();
    let line = cookies.iter().map(|(n, v)| format!("{n}={v}")).collect::<Vec<_>>().join("; ");
    let mut h = HeaderMap::new();
    h.insert("cookie", line.parse().unwrap());
    let req = Request {
        method: "GET",
        host: "api.example.com",
        target: "/orders/42?expand=items",
        headers: &h,
        path_mode: Default::default(),
        routed: None,
    };
    assert!(engine.decide(&req, NOW).is_allow());
    g.bench_function("allow/session-cookie", |b| b.iter(|| black_box(engine.decide(black_box(&req), NOW))));
}

/// Allow with `forward.token: issue` (EdDSA internal key): reusing the minted token, and minting.
fn bench_minting(g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>) {
    use portcullis::keys::schedule::{Requests, generate, plan, publish};
    let issuer = TestIssuer::new(ISS, SigningAlgorithm::ES256);
    let spec: portcullis::api::SigningKeySpec = serde_json::from_value(json!({"algorithm": "EdDSA", "retain": "1h"})).unwrap();
    let key = portcullis::policy::KeyRef { namespace: "default".into(), name: "internal".into() };
    let ring =
        plan(jiff::Timestamp::from_second(NOW).unwrap(), &spec, Default::default(), &Requests::default(), &mut generate).unwrap().ring;
    let keys = BTreeMap::from([(key.clone(), publish(&key, &spec, &ring).unwrap())]);
    let yaml = format!(
        "name: p\nspec:\n  issuers: [{{ issuer: \"{ISS}\", audiences: [orders], algorithms: [ES256], jwks: {{ inline: {} }} }}]\n  rules: [{{ name: r, match: {{ paths: [{{ prefix: / }}] }} }}]\n  forward: {{ token: issue, issue: {{ signingKeyRef: {{ name: internal }}, audience: up, ttl: 5m }} }}\n",
        issuer.jwks()
    );
    let compiled = compile_yaml("default", &yaml, &keys);
    let minting = BTreeMap::from([(key, ring)]);
    let engine = Engine::build(
        compiled.config,
        &BuildOptions { issuer_url: "https://gw", minting: &minting, remote: &NoRemoteKeys, cache_bytes: 64 << 20 },
    )
    .unwrap();
    let h = headers(&issuer.token("orders", NOW, json!({})));
    let req = Request { method: "GET", host: "h", target: "/x", headers: &h, path_mode: Default::default(), routed: None };
    assert!(engine.decide(&req, NOW).is_allow());
    g.bench_function("allow/issue-EdDSA/reused", |b| b.iter(|| black_box(engine.decide(black_box(&req), NOW))));
    // What a fresh mint costs on top: one signature.
    let pair = minting.values().next().unwrap().active().unwrap().key_pair().unwrap();
    let claims = json!({"iss": "https://gw", "aud": "up", "sub": "alice", "iat": NOW, "exp": NOW + 300, "jti": "x"});
    g.bench_function("mint/sign-EdDSA", |b| b.iter(|| black_box(pair.sign_jwt(black_box(&claims)).unwrap())));
}

/// `n` routes: n/10 policies of 10 prefix rules, spread over hosts.
fn many_routes(n: usize) -> Vec<PolicyInput> {
    let issuer = TestIssuer::new(ISS, SigningAlgorithm::ES256);
    let jwks = issuer.jwks();
    let mut inputs = Vec::new();
    for p in 0..n / 10 {
        let mut yaml = format!(
            "name: svc-{p}\nspec:\n  hosts: [svc-{h}.example.com]\n  issuers: [{{ issuer: \"{ISS}\", audiences: [svc], algorithms: [ES256], jwks: {{ inline: {jwks} }} }}]\n  rules:\n",
            h = p % 50
        );
        for r in 0..10 {
            yaml.push_str(&format!(
                "    - {{ name: r{r}, match: {{ paths: [{{ prefix: /api/p{p}/r{r} }}], methods: [GET] }}, require: [{{ claim: scope, containsAll: [\"s{r}\"] }}] }}\n"
            ));
        }
        inputs.extend(inputs_from_yaml(&yaml));
    }
    inputs
}

/// The signature check with a key parsed once (what jsonwebtoken re-does per call).
fn bench_preparsed(c: &mut Criterion) {
    use aws_lc_rs::signature::{RSA_PKCS1_2048_8192_SHA256, RsaPublicKeyComponents};
    let issuer = TestIssuer::new(ISS, SigningAlgorithm::RS256);
    let token = issuer.token("orders", NOW, json!({}));
    let (message, signature) = token.rsplit_once('.').unwrap();
    let sig = portcullis::keys::b64url_decode(signature).unwrap();
    let jwk = issuer.key.public_jwk();
    let n = portcullis::keys::b64url_decode(jwk["n"].as_str().unwrap()).unwrap();
    let e = portcullis::keys::b64url_decode(jwk["e"].as_str().unwrap()).unwrap();
    let parsed = RsaPublicKeyComponents { n: &n[..], e: &e[..] }.to_parsed_public_key(&RSA_PKCS1_2048_8192_SHA256).unwrap();
    c.bench_function("decide/raw-verify-preparsed-aws-lc/RS256", |b| {
        b.iter(|| parsed.verify_sig(black_box(message.as_bytes()), &sig).unwrap())
    });
}

fn bench_compile(c: &mut Criterion) {
    let mut g = c.benchmark_group("compile");
    g.sample_size(10);
    for n in [1_000, 10_000] {
        let inputs = many_routes(n);
        let minting = BTreeMap::new();
        g.bench_function(format!("{n}-routes/compile+build"), |b| {
            b.iter_batched(
                || inputs.clone(),
                |inputs| {
                    let compiled = compile("default", &inputs, &BTreeMap::new(), &portcullis::policy::Tenancy::single_owner());
                    assert_eq!(compiled.config.route_count(), n);
                    let opts = BuildOptions { issuer_url: "https://gw", minting: &minting, remote: &NoRemoteKeys, cache_bytes: 1 << 20 };
                    black_box(Engine::build(compiled.config, &opts).unwrap())
                },
                BatchSize::LargeInput,
            )
        });
        let compiled = compile("default", &inputs, &BTreeMap::new(), &portcullis::policy::Tenancy::single_owner());
        let json = compiled.config.to_json();
        let gz = compiled.config.to_gzip();
        eprintln!("{n} routes: config {} bytes JSON, {} bytes gzip", json.len(), gz.len());
        let opts = BuildOptions { issuer_url: "https://gw", minting: &minting, remote: &NoRemoteKeys, cache_bytes: 1 << 20 };
        let engine = Engine::build(compiled.config.clone(), &opts).unwrap();
        let none = HeaderMap::new();
        let host = "svc-7.example.com";
        let last = format!("/api/p{}/r9/item", n / 10 - 3);
        let req = Request { method: "GET", host, target: &last, headers: &none, path_mode: Default::default(), routed: None };
        g.bench_function(format!("{n}-routes/route-lookup"), |b| b.iter(|| black_box(engine.decide(black_box(&req), NOW))));
    }
    g.finish();
}

/// The controller's work for one edit among 3,000 policies: compiling the gateway, and deriving
/// every policy's status from two replicas' heartbeats (what a status pass does before it
/// compares and writes the few that differ).
fn bench_controller(c: &mut Criterion) {
    use portcullis::contract::heartbeat::Heartbeat;
    use portcullis::controller::dataplane::{self, History};
    use portcullis::controller::desired::{Programmed, policy_status};
    let mut g = c.benchmark_group("controller");
    g.sample_size(10);
    let issuer = TestIssuer::new(ISS, SigningAlgorithm::ES256);
    let jwks = issuer.jwks();
    let mut inputs = Vec::new();
    for p in 0..3_000 {
        let yaml = format!(
            "name: svc-{p}\nspec:\n  hosts: [svc-{h}.example.com]\n  issuers: [{{ issuer: \"{ISS}\", audiences: [svc], algorithms: [ES256], jwks: {{ inline: {jwks} }} }}]\n  rules:\n    - {{ name: r, match: {{ paths: [{{ prefix: /api/p{p} }}] }}, require: [{{ claim: scope, containsAll: [s] }}] }}\n",
            h = p % 50
        );
        inputs.extend(inputs_from_yaml(&yaml));
    }
    let tenancy = portcullis::policy::Tenancy::single_owner();
    g.bench_function("3000-policies/compile", |b| b.iter(|| black_box(compile("default", &inputs, &BTreeMap::new(), &tenancy))));
    let compiled = compile("default", &inputs, &BTreeMap::new(), &tenancy);
    let mut history = History::default();
    history.record(&compiled.config);
    let live: Vec<Heartbeat> = ["a", "b"]
        .iter()
        .map(|r| Heartbeat {
            gateway: "default".into(),
            replica: (*r).into(),
            version: Some(compiled.config.version.clone()),
            ..Default::default()
        })
        .collect();
    let programmed = Programmed::Published { gateway: "default".into() };
    let now = jiff::Timestamp::now();
    g.bench_function("3000-policies/status-pass", |b| {
        b.iter(|| {
            for (o, p) in compiled.outcomes.iter().zip(&compiled.config.policies) {
                let key = p.key();
                let view = dataplane::View {
                    enforced: dataplane::enforced("default", &key, Some(p.generation), &live, &history),
                    issuers: dataplane::issuers(Some(p), &live),
                    audit: dataplane::audit(&key, Some(p), &live),
                };
                let mut status = policy_status(None, p.generation, &o.outcome, &programmed, None, now);
                dataplane::add_to_status(&mut status, None, view, p.generation, now);
                black_box(status);
            }
        })
    });
    g.finish();
}

/// Route lookup on one host as the route count grows: 80 % prefix and exact routes, 20 %
/// templates (what used to be scanned one by one), the request hitting a prefix route.
fn bench_routes(c: &mut Criterion) {
    let mut g = c.benchmark_group("routes");
    g.sample_size(20);
    for n in [1usize, 1_000, 10_000, 100_000] {
        let mut inputs = Vec::new();
        let per_policy = 100.min(n);
        for p in 0..n.div_ceil(per_policy) {
            let mut yaml = format!("name: svc-{p}\nspec:\n  hosts: [api.example.com]\n  rules:\n");
            for r in 0..per_policy.min(n - p * per_policy) {
                let i = p * per_policy + r;
                let path = match i % 5 {
                    0 => format!("{{ template: \"/t{i}/{{id}}/items\" }}"),
                    1 => format!("{{ exact: /e{i}/x }}"),
                    _ => format!("{{ prefix: /p{i} }}"),
                };
                yaml.push_str(&format!("    - {{ name: r{r}, public: true, match: {{ paths: [{path}] }} }}\n"));
            }
            inputs.extend(inputs_from_yaml(&yaml));
        }
        let compiled = compile("default", &inputs, &BTreeMap::new(), &portcullis::policy::Tenancy::single_owner());
        assert_eq!(compiled.config.route_count(), n);
        let minting = BTreeMap::new();
        let opts = BuildOptions { issuer_url: "https://gw", minting: &minting, remote: &NoRemoteKeys, cache_bytes: 0 };
        let engine = Engine::build(compiled.config, &opts).unwrap();
        let none = HeaderMap::new();
        let target = if n == 1 { "/t0/7/items".to_owned() } else { format!("/p{}/a/b", n - 3) };
        let req = Request {
            method: "GET",
            host: "api.example.com",
            target: &target,
            headers: &none,
            path_mode: Default::default(),
            routed: None,
        };
        assert!(engine.decide(&req, NOW).is_allow());
        g.bench_function(format!("{n}-routes-one-host/lookup"), |b| b.iter(|| black_box(engine.decide(black_box(&req), NOW))));
    }
    g.finish();
}

/// Inserting distinct verified tokens into a full cache (every insert evicts).
fn bench_cache(c: &mut Criterion) {
    use portcullis::decide::cache::TokenCache;
    let issuer = TestIssuer::new(ISS, SigningAlgorithm::ES256);
    let token = issuer.token("orders", NOW, json!({"scope": "orders:read", "realm_access": {"roles": ["clerk"]}}));
    let verified = portcullis::decide::token::Verified::from_claims(
        &portcullis::decide::keyset::KeySet::new_static("x", Vec::new()),
        1,
        portcullis::api::JwtAlgorithm::ES256,
        issuer.claims("orders", NOW, json!({"scope": "orders:read"})),
    )
    .unwrap();
    let verified = std::sync::Arc::new(verified);
    let cache = TokenCache::new(1 << 20);
    let tokens: Vec<String> = (0..100_000).map(|i| format!("{token}.{i}")).collect();
    let mut i = 0;
    c.bench_function("cache/insert-with-eviction-1KiB-tokens", |b| {
        b.iter(|| {
            cache.insert(&tokens[i % tokens.len()], verified.clone());
            i += 1;
        })
    });
    assert!(cache.bytes() <= 1 << 20);
}

/// The controller's work for one edit among 10,000 policies of the scale run (`bench/scale.sh`,
/// `testkit::scale_policy`, 100 namespaces, 10 SigningKeys): inputs, compile with tenancy and the
/// held host claims, the key Secret and the compressed ConfigMap, the last-good and history
/// bookkeeping — everything a pass does before it talks to the API server. And the gateway's
/// side: reading that ConfigMap and building its engine.
fn bench_scale(c: &mut Criterion) {
    use std::sync::Arc;

    use portcullis::controller::dataplane::History;
    use portcullis::controller::desired;
    let mut g = c.benchmark_group("scale");
    g.sample_size(10);
    let portcullis::testkit::ScaleWorld { policies, signing_keys: keys, secrets, settings } =
        portcullis::testkit::scale_world(100, 10_000, 10, "https://id.scale.test/jwks", |p| p);
    let ns = "portcullis";
    // One pass, as the controller runs it: the validations of the last pass are kept.
    let mut validations = portcullis::policy::ValidationCache::default();
    let mut pass = |last_good: &std::collections::HashMap<String, Arc<portcullis::policy::PolicyConfig>>,
                    held: &portcullis::policy::ownership::HostLedger| {
        let (published, rings) = desired::published_keys(&keys, |n, _| secrets.get(n).cloned());
        let inputs = desired::policy_inputs(&policies, "default", last_good);
        let tenancy = desired::tenancy(&settings, ns, "default", &keys, held.clone());
        let compiled = portcullis::policy::compile_cached("default", &inputs, &published, &tenancy, &mut validations);
        let secret = desired::gateway_keys_secret(ns, &compiled.config, &rings, |_| None);
        let cm = desired::gateway_configmap(ns, &compiled.config, &secret);
        (compiled, cm, secret, rings)
    };
    let (first, cm, secret, rings) = pass(&Default::default(), &Default::default());
    assert!(first.outcomes.iter().all(|o| o.outcome == portcullis::policy::Outcome::Accepted));
    assert_eq!(first.config.route_count(), 40_000);
    let last_good = first.config.policies_by_key();
    let held = first.ledger.clone();
    let mut history = History::default();
    g.bench_function("10000-policies/edit-pass", |b| {
        b.iter(|| {
            let (compiled, cm, _, _) = pass(&last_good, &held);
            black_box(compiled.config.policies_by_key());
            history.record(&compiled.config);
            black_box(cm)
        })
    });
    let minting: BTreeMap<_, _> = rings;
    g.bench_function("10000-policies/gateway-load", |b| {
        b.iter(|| {
            assert!(portcullis::contract::publish::pair_is_consistent(&cm, Some(&secret)));
            let config = portcullis::contract::publish::config_from_configmap(&cm).unwrap();
            let opts = BuildOptions { issuer_url: "https://gw", minting: &minting, remote: &NoRemoteKeys, cache_bytes: 1 << 20 };
            black_box(Engine::build(config, &opts).unwrap())
        })
    });
    g.finish();
}

/// Gateway API: 1,000 HTTPRoutes (100 namespaces, 3 named rules each) on one Envoy Gateway
/// Gateway, each with an AuthPolicy attached (one rule for the whole route, one narrowing it).
/// One pass of the controller before it talks to the API server: the wiring plan (topology,
/// attachment, generated objects, ancestors), binding and compiling, the ConfigMap. An HTTPRoute
/// edit costs this pass (plus the debounce and the writes).
fn bench_gateway_api(c: &mut Criterion) {
    use std::sync::Arc;

    use portcullis::api::AuthPolicy;
    use portcullis::api::gateway_api::{Gateway, GatewayClass, HTTPRoute};
    use portcullis::controller::{desired, wiring};
    use serde_json::json;
    let mut g = c.benchmark_group("gateway-api");
    g.sample_size(10);
    let class: Arc<GatewayClass> = Arc::new(
        serde_json::from_value(json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass", "metadata": {"name": "eg"},
            "spec": {"controllerName": "gateway.envoyproxy.io/gatewayclass-controller"}}))
        .unwrap(),
    );
    let gateway: Arc<Gateway> = Arc::new(
        serde_json::from_value(
            json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway", "metadata": {"name": "web", "namespace": "infra"},
            "spec": {"gatewayClassName": "eg", "listeners": [{"name": "https", "hostname": "*.shop.test"}]}}),
        )
        .unwrap(),
    );
    let route = |i: usize, first: &str| -> Arc<HTTPRoute> {
        Arc::new(
            serde_json::from_value(json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
                "metadata": {"name": format!("r{i}"), "namespace": format!("ns{}", i % 100)},
                "spec": {"hostnames": [format!("r{i}.shop.test")], "rules": [
                    {"name": "read", "matches": [{"path": {"type": "PathPrefix", "value": first}, "method": "GET"}]},
                    {"name": "write", "matches": [{"path": {"type": "PathPrefix", "value": "/orders"}, "method": "POST"}]},
                    {"name": "health", "matches": [{"path": {"type": "Exact", "value": "/healthz"}}]}]},
                "status": {"parents": [{"parentRef": {"name": "web", "namespace": "infra"}, "controllerName": "gateway.envoyproxy.io/gatewayclass-controller",
                    "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted", "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}]}}))
            .unwrap(),
        )
    };
    let routes: Vec<Arc<HTTPRoute>> = (0..1000).map(|i| route(i, "/orders")).collect();
    let issuer =
        json!({"issuer": "https://id.test", "audiences": ["shop"], "algorithms": ["ES256"], "jwks": {"uri": "https://id.test/jwks"}});
    let policies: Vec<Arc<AuthPolicy>> = (0..1000)
        .map(|i| {
            Arc::new(
                serde_json::from_value(json!({"apiVersion": "portcullis.dev/v1alpha1", "kind": "AuthPolicy",
                    "metadata": {"name": format!("p{i}"), "namespace": format!("ns{}", i % 100), "uid": format!("u{i}"), "generation": 1,
                                 "creationTimestamp": "2026-01-01T00:00:00Z"},
                    "spec": {"targetRefs": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": format!("r{i}")}],
                             "issuers": [issuer],
                             "rules": [{"name": "admin", "match": {"paths": [{"prefix": "/orders/admin"}]}, "require": [{"claim": "roles", "containsAny": ["admin"]}]},
                                       {"name": "rest", "require": [{"claim": "scope", "containsAll": ["orders"]}]}]}}))
                .unwrap(),
            )
        })
        .collect();
    let settings = wiring::WiringSettings {
        authorizers: [(
            "default".to_owned(),
            wiring::ServiceRef { namespace: "portcullis".into(), name: "portcullis-gateway".into(), port: 9001 },
        )]
        .into(),
        ..Default::default()
    };
    let tenancy_settings = portcullis::policy::tenancy::parse_settings("default: { unlistedHosts: FirstClaim }").unwrap();
    let mut validations = portcullis::policy::ValidationCache::default();
    let mut pass = |routes: &[Arc<HTTPRoute>]| {
        let world = wiring::World {
            classes: vec![class.clone()],
            gateways: vec![gateway.clone()],
            http_routes: routes.to_vec(),
            ..Default::default()
        };
        let plan = wiring::plan(&policies, &world, &settings);
        let mut inputs = desired::policy_inputs(&policies, "default", &Default::default());
        for input in &mut inputs {
            input.attachment = plan.attachments.get(&input.meta.key()).cloned();
        }
        let tenancy = desired::tenancy(&tenancy_settings, "portcullis", "default", &[], Default::default());
        let compiled = portcullis::policy::compile_cached("default", &inputs, &BTreeMap::new(), &tenancy, &mut validations);
        let secret = desired::gateway_keys_secret("portcullis", &compiled.config, &BTreeMap::new(), |_| None);
        let cm = desired::gateway_configmap("portcullis", &compiled.config, &secret);
        (plan, compiled, cm)
    };
    let (plan, first, _) = pass(&routes);
    assert!(
        first.outcomes.iter().all(|o| o.outcome == portcullis::policy::Outcome::Accepted),
        "{:?}",
        first.outcomes.iter().find(|o| o.outcome != portcullis::policy::Outcome::Accepted)
    );
    assert_eq!(plan.objects.len(), 1000 + 100, "a SecurityPolicy per route, a ReferenceGrant per namespace");
    // Per policy: admin on the GET and the POST rule (inside /orders), the rest on all three.
    assert_eq!(first.config.route_count(), 1000 * 5);
    g.bench_function("1000-routes-and-policies/pass", |b| b.iter(|| black_box(pass(&routes))));
    let world =
        wiring::World { classes: vec![class.clone()], gateways: vec![gateway.clone()], http_routes: routes.clone(), ..Default::default() };
    g.bench_function("1000-routes-and-policies/plan-only", |b| b.iter(|| black_box(wiring::plan(&policies, &world, &settings))));
    let mut edited = routes.clone();
    let mut n = 0;
    g.bench_function("1000-routes-and-policies/route-edit-pass", |b| {
        b.iter(|| {
            n += 1;
            edited[7] = route(7, &format!("/orders/v{n}"));
            black_box(pass(&edited))
        })
    });
    g.finish();
}

criterion_group!(
    benches,
    bench_decide,
    bench_preparsed,
    bench_compile,
    bench_controller,
    bench_routes,
    bench_cache,
    bench_scale,
    bench_gateway_api
);
criterion_main!(benches);
