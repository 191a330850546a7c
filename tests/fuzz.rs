//! Fuzzing on the stable toolchain: proptest drives the parsers on the request path and the
//! resource files with random and mutated input. The oracle: nothing panics, and nothing is
//! allowed on a protected route without a signature that an independent verifier accepts.
//!
//! CI runs a few thousand cases per target from a fixed seed; explore further with
//! `PORTCULLIS_FUZZ_SEED=random PORTCULLIS_FUZZ_CASES=200000 cargo test --release --test fuzz`.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::OnceLock;

use http::{HeaderMap, HeaderName, HeaderValue};
use portcullis::api::SigningAlgorithm;
use portcullis::decide::{Decision, Engine, Request};
use portcullis::gateway::request::{Profile, asked};
use portcullis::keys::{b64url, b64url_decode};
use portcullis::local::{Scanned, parse_documents};
use portcullis::policy::host::normalize_host;
use portcullis::policy::path::{PathMode, is_normalized, normalize, normalize_as};
use portcullis::testkit::{TestIssuer, compile_yaml, engine};
use proptest::prelude::*;
use serde_json::{Value, json};

const NOW: i64 = 1_800_000_000;
const ISS: &str = "https://idp.fuzz";

fn cases() -> u32 {
    std::env::var("PORTCULLIS_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(3000)
}

/// CI runs a fixed seed, so a red run is reproducible; `PORTCULLIS_FUZZ_SEED=random` (or a
/// number) explores further.
fn seed() -> proptest::test_runner::RngSeed {
    use proptest::test_runner::RngSeed;
    match std::env::var("PORTCULLIS_FUZZ_SEED").as_deref() {
        Ok("random") => RngSeed::Random,
        Ok(n) => n.parse().map(RngSeed::Fixed).unwrap_or(RngSeed::Fixed(0x9a7e_f022)),
        Err(_) => RngSeed::Fixed(0x9a7e_f022),
    }
}

struct World {
    issuer: TestIssuer,
    engine: Engine,
    valid: String,
}

fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| {
        let issuer = TestIssuer::new(ISS, SigningAlgorithm::ES256);
        let yaml = format!(
            r#"
name: fuzz
spec:
  hosts: [api.fuzz, "*.fuzz"]
  issuers: [{{ issuer: "{ISS}", audiences: [api], algorithms: [ES256], jwks: {{ inline: {jwks} }} }}]
  tokenSources: [{{ header: {{ name: Authorization, prefix: "Bearer " }} }}, {{ cookie: {{ name: s }} }}, {{ header: {{ name: X-Token }} }}]
  rules:
    - {{ name: open, public: true, match: {{ paths: [{{ prefix: /public }}] }} }}
    - name: admin
      match: {{ paths: [{{ prefix: /admin }}], methods: [DELETE, GET] }}
      require: [{{ claim: roles, containsAny: [admin] }}]
    - name: tenant
      match: {{ paths: [{{ template: "/t/{{id}}/{{**}}" }}] }}
      require: [{{ claim: tenant, equalsHeader: X-Tenant }}]
    - name: any
      match: {{ paths: [{{ prefix: / }}] }}
"#,
            jwks = issuer.jwks()
        );
        let compiled = compile_yaml("default", &yaml, &BTreeMap::new());
        assert!(compiled.outcomes.iter().all(|o| o.outcome == portcullis::policy::Outcome::Accepted), "{:?}", compiled.outcomes);
        let valid = issuer.token("api", NOW, json!({"roles": ["admin"], "tenant": "acme"}));
        World { engine: engine(&compiled), issuer, valid }
    })
}

/// The independent check: jsonwebtoken with the issuer's public key, ES256 only.
fn independently_valid(token: &str) -> bool {
    let jwk = world().issuer.key.public_jwk().clone();
    let Ok(key) = jsonwebtoken::DecodingKey::from_jwk(&serde_json::from_value(Value::Object(jwk)).unwrap()) else { return false };
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
    v.set_audience(&["api"]);
    v.set_issuer(&[ISS]);
    v.validate_exp = false;
    // Header values lose surrounding white space on the wire (RFC 9110 §5.5).
    jsonwebtoken::decode::<Value>(token.trim(), &key, &v).is_ok()
}

fn decide(method: &str, host: &str, target: &str, headers: &HeaderMap, mode: PathMode) -> Decision {
    world().engine.decide(&Request { method, host, target, headers, path_mode: mode, routed: None }, NOW)
}

/// Allowed on a rule that needs a token ⇒ some token in the request verifies independently.
fn check_allow(d: &Decision, tokens: &[&str]) -> Result<(), TestCaseError> {
    if let Decision::Allow(a) = d
        && world().engine.rule_name(a.route) != "open"
    {
        prop_assert!(tokens.iter().any(|t| independently_valid(t)), "allowed without a valid signature: {tokens:?}");
    }
    Ok(())
}

fn bearer(token: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(&format!("Bearer {token}")) {
        h.insert(http::header::AUTHORIZATION, v);
    }
    h
}

/// A token mutated the ways a forger would: bytes flipped in any part, parts swapped or
/// re-encoded, headers rewritten (alg, kid, jku, crit), padding and whitespace added.
fn mutate(valid: &str, op: u8, at: usize, byte: u8) -> String {
    let parts: Vec<&str> = valid.split('.').collect();
    let header: Value = serde_json::from_slice(&b64url_decode(parts[0]).unwrap()).unwrap();
    let claims: Value = serde_json::from_slice(&b64url_decode(parts[1]).unwrap()).unwrap();
    let rehead = |h: Value| format!("{}.{}.{}", b64url(h.to_string().as_bytes()), parts[1], parts[2]);
    let reclaim = |c: Value| format!("{}.{}.{}", parts[0], b64url(c.to_string().as_bytes()), parts[2]);
    match op % 14 {
        0 => {
            let mut b = valid.as_bytes().to_vec();
            let i = at % b.len();
            b[i] = byte;
            String::from_utf8_lossy(&b).into_owned()
        }
        1 => {
            let mut h = header.clone();
            h["alg"] = json!(["none", "HS256", "ES384", "RS256", "EdDSA", "es256", "ES256 "][at % 7]);
            rehead(h)
        }
        2 => {
            let mut h = header.clone();
            h["jku"] = json!("https://evil.test/jwks");
            rehead(h)
        }
        3 => {
            let mut h = header.clone();
            h["crit"] = json!(["exp"]);
            rehead(h)
        }
        4 => {
            let mut h = header.clone();
            h["kid"] = json!(["", "x", "../../etc/passwd", "0"][at % 4]);
            rehead(h)
        }
        5 => {
            let mut c = claims.clone();
            c["roles"] = json!(["admin", "root"]);
            c["aud"] = json!(["api", "other"]);
            reclaim(c)
        }
        6 => {
            let mut c = claims.clone();
            c["iss"] = json!(format!("{ISS}/"));
            reclaim(c)
        }
        7 => format!("{}.{}.{}=", parts[0], parts[1], parts[2]),
        8 => format!("{}.{}", parts[0], parts[1]),
        9 => format!("{valid}.{}", parts[2]),
        10 => format!(" {valid} "),
        11 => format!("{}.{}.", parts[0], parts[1]),
        12 => {
            let mut sig = b64url_decode(parts[2]).unwrap();
            let i = at % sig.len();
            sig[i] ^= byte | 1;
            format!("{}.{}.{}", parts[0], parts[1], b64url(&sig))
        }
        _ => {
            let mut h = header.clone();
            h["jwk"] = world().issuer.key.public_jwk().clone().into();
            h["alg"] = json!("ES256");
            rehead(h)
        }
    }
}

fn path_strategy() -> impl Strategy<Value = String> {
    proptest::collection::vec(
        prop_oneof![
            Just("/".to_owned()),
            Just("..".to_owned()),
            Just(".".to_owned()),
            Just("%2e".to_owned()),
            Just("%2E".to_owned()),
            Just("%2f".to_owned()),
            Just("%5C".to_owned()),
            Just("\\".to_owned()),
            Just(";".to_owned()),
            Just("#".to_owned()),
            Just("?".to_owned()),
            Just("%25".to_owned()),
            Just("%00".to_owned()),
            Just("%C0%AF".to_owned()),
            Just("admin".to_owned()),
            Just("public".to_owned()),
            Just("t".to_owned()),
            "[a-zA-Z0-9%~_-]{1,4}",
            "\\PC{1,2}",
        ],
        0..14,
    )
    .prop_map(|parts| format!("/{}", parts.concat()))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, rng_seed: seed(), ..ProptestConfig::default() })]

    #[test]
    fn random_tokens_never_panic_and_never_pass(raw in "[A-Za-z0-9_.=+/ -]{0,300}", path in prop_oneof![Just("/admin"), Just("/x"), Just("/public")]) {
        for headers in [bearer(&raw), {
            let mut h = HeaderMap::new();
            if let Ok(v) = HeaderValue::from_str(&format!("s={raw}")) { h.insert(http::header::COOKIE, v); }
            h
        }] {
            let d = decide("GET", "api.fuzz", path, &headers, PathMode::Strict);
            check_allow(&d, &[&raw])?;
        }
    }

    #[test]
    fn mutated_valid_tokens_pass_only_when_still_valid(op in any::<u8>(), at in any::<usize>(), byte in any::<u8>(), method in prop_oneof![Just("GET"), Just("DELETE")]) {
        let token = mutate(&world().valid, op, at, byte);
        let d = decide(method, "api.fuzz", "/admin/x", &bearer(&token), PathMode::Strict);
        check_allow(&d, &[&token])?;
        // A token in two places is never first-wins.
        let mut two = bearer(&world().valid);
        if let Ok(v) = HeaderValue::from_str(&token) { two.insert(HeaderName::from_static("x-token"), v); }
        let d = decide(method, "api.fuzz", "/admin/x", &two, PathMode::Strict);
        check_allow(&d, &[&world().valid])?;
    }

    #[test]
    fn paths_normalise_idempotently_and_strict_mode_decides_only_normal_paths(path in path_strategy()) {
        if let Ok(n) = normalize(&path) {
            prop_assert!(is_normalized(&n), "{path:?} → {n:?} is not a fixed point");
            prop_assert_eq!(normalize_as(&path, PathMode::Strict).is_ok(), n == path);
        }
        let none = HeaderMap::new();
        for mode in [PathMode::Strict, PathMode::Normalize] {
            let d = decide("GET", "api.fuzz", &path, &none, mode);
            check_allow(&d, &[])?;
            if let (Decision::Allow(_), PathMode::Strict) = (&d, mode) {
                prop_assert!(is_normalized(path.split('?').next().unwrap()), "strict mode allowed {path:?}");
            }
        }
    }

    #[test]
    fn hosts_are_valid_names_or_refused(host in "[a-zA-Z0-9.:\\[\\]_*, -]{0,40}") {
        if let Some(h) = normalize_host(&host) {
            let h = h.into_owned();
            prop_assert!(!h.is_empty() && !h.contains(',') && !h.contains(' '));
            if !h.starts_with('[') {
                prop_assert!(h.split('.').all(|l| !l.is_empty()), "{host:?} → {h:?} has an empty label");
            }
        }
        let d = decide("GET", &host, "/public", &HeaderMap::new(), PathMode::Strict);
        if let Decision::Allow(_) = d {
            prop_assert!(normalize_host(&host).is_some_and(|h| h == "api.fuzz" || (h.ends_with(".fuzz") && h.len() > ".fuzz".len())), "{host:?}");
        }
    }

    #[test]
    fn forwarded_headers_never_panic_and_repeats_are_refused(
        entries in proptest::collection::vec((prop_oneof![
            Just("x-forwarded-method"), Just("x-forwarded-uri"), Just("x-forwarded-host"), Just("x-original-url"),
            Just("x-original-method"), Just("host"), Just("x-original-uri"),
        ], "[ -~]{0,30}"), 0..8),
        profile in prop_oneof![Just(Profile::Forwarded), Just(Profile::IngressNginx), Just(Profile::EnvoyPrefix)],
        path in "/ext_authz[ -~]{0,20}",
    ) {
        let mut headers = HeaderMap::new();
        for (k, v) in &entries {
            if let Ok(v) = HeaderValue::from_str(v) { headers.append(HeaderName::from_static(k), v); }
        }
        if let Ok(a) = asked(profile, "GET", &path, &headers) {
            // What the profile reads appears exactly once.
            let read: &[&str] = match profile {
                Profile::Forwarded => &["x-forwarded-method", "x-forwarded-uri", "x-forwarded-host", "host"],
                Profile::IngressNginx => &["x-original-url", "x-original-method", "host"],
                Profile::EnvoyPrefix => &["host"],
            };
            for name in read {
                prop_assert!(headers.get_all(*name).iter().count() <= 1, "{name} repeated but accepted");
            }
            let d = decide(a.method, a.host, a.target, &headers, PathMode::Strict);
            check_allow(&d, &[])?;
        }
    }

    #[test]
    fn resource_files_never_panic_the_loader(op in proptest::collection::vec((any::<usize>(), any::<u8>(), 0u8..3), 1..6)) {
        static SHOP: OnceLock<String> = OnceLock::new();
        let shop = SHOP.get_or_init(|| std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/shop/orders.yaml")).unwrap());
        let mut bytes = shop.as_bytes().to_vec();
        for (at, byte, kind) in op {
            let i = at % (bytes.len() + 1);
            match kind {
                0 if i < bytes.len() => { bytes.remove(i); }
                1 => {
                    let alphabet = b" :-[]{}\"'#\n\t0aZ";
                    bytes.insert(i, alphabet[byte as usize % alphabet.len()])
                }
                _ if i < bytes.len() => bytes[i] = byte,
                _ => {}
            }
        }
        let text = String::from_utf8_lossy(&bytes);
        let mut out = Scanned::default();
        parse_documents(Path::new("fuzz.yaml"), &text, &mut out);
        // Each document is either parsed or reported, never silently dropped with a problem-free file.
        prop_assert!(out.policies.len() + out.problems.len() >= 1 || text.trim().is_empty() || !text.contains("kind: AuthPolicy"));
    }
}
