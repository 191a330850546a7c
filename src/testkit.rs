//! Helpers for tests and benchmarks: issuers with real keys, honest and forged tokens, and
//! engines built from YAML policies. Not part of the supported API.

use std::collections::BTreeMap;

use aws_lc_rs::hmac;
use serde_json::{Value, json};

use crate::api::{AuthPolicySpec, SigningAlgorithm};
use crate::decide::{BuildOptions, DEFAULT_TOKEN_CACHE_BYTES, Engine, NoRemoteKeys};
use crate::keys::{SigningKeyPair, b64url};
use crate::policy::{Compiled, KeyRef, PolicyInput, PolicyMeta, PublishedKeys, compile};

/// A header map with `pairs` appended in order (a repeated name keeps every value).
pub fn header_map(pairs: &[(&str, &str)]) -> http::HeaderMap {
    let mut h = http::HeaderMap::new();
    for (k, v) in pairs {
        h.append(http::HeaderName::from_bytes(k.as_bytes()).unwrap(), http::HeaderValue::from_str(v).unwrap());
    }
    h
}

/// A token issuer with a real key pair.
pub struct TestIssuer {
    pub url: String,
    pub key: SigningKeyPair,
}

impl TestIssuer {
    pub fn new(url: &str, alg: SigningAlgorithm) -> Self {
        Self { url: url.to_owned(), key: SigningKeyPair::generate(alg, None).expect("key generation") }
    }

    /// The issuer's JWKS.
    pub fn jwks(&self) -> Value {
        json!({ "keys": [Value::Object(self.key.public_jwk().clone())] })
    }

    /// A token with `iss`, `aud`, `iat`, `exp` (in an hour) and the given claims on top.
    pub fn token(&self, aud: &str, now: i64, extra: Value) -> String {
        self.key.sign_jwt(&self.claims(aud, now, extra)).expect("signing")
    }

    pub fn claims(&self, aud: &str, now: i64, extra: Value) -> Value {
        let mut claims = json!({"iss": self.url, "aud": aud, "sub": "alice", "iat": now, "exp": now + 3600});
        for (k, v) in extra.as_object().cloned().unwrap_or_default() {
            claims[k] = v;
        }
        claims
    }

    /// Signs with an arbitrary header (to test `kid`, `jku`, `crit` handling).
    pub fn token_with_header(&self, header: Value, claims: &Value) -> String {
        let input = format!("{}.{}", b64url(header.to_string().as_bytes()), b64url(claims.to_string().as_bytes()));
        let sig = self.key.sign(input.as_bytes()).expect("signing");
        format!("{input}.{}", b64url(&sig))
    }
}

/// `alg: none`, with an empty signature.
pub fn forge_none(claims: &Value) -> String {
    let header = json!({"alg": "none", "typ": "JWT"});
    format!("{}.{}.", b64url(header.to_string().as_bytes()), b64url(claims.to_string().as_bytes()))
}

/// HS256 keyed with `secret` (e.g. the issuer's public key: the algorithm-confusion attack).
pub fn forge_hs256(claims: &Value, kid: Option<&str>, secret: &[u8]) -> String {
    let mut header = json!({"alg": "HS256", "typ": "JWT"});
    if let Some(kid) = kid {
        header["kid"] = json!(kid);
    }
    let input = format!("{}.{}", b64url(header.to_string().as_bytes()), b64url(claims.to_string().as_bytes()));
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, secret), input.as_bytes());
    format!("{input}.{}", b64url(tag.as_ref()))
}

/// Parses YAML AuthPolicy specs (one per document, each with `name:` and `spec:` at the top).
pub fn inputs_from_yaml(yaml: &str) -> Vec<PolicyInput> {
    #[derive(serde::Deserialize)]
    struct Doc {
        name: String,
        #[serde(default)]
        namespace: Option<String>,
        spec: AuthPolicySpec,
    }
    let docs: Vec<Doc> = serde_saphyr::from_multiple(yaml).expect("test YAML parses");
    docs.into_iter()
        .map(|d| PolicyInput {
            meta: PolicyMeta::new(d.namespace.as_deref().unwrap_or("default"), &d.name),
            spec: d.spec.into(),
            last_good: None,
            attachment: None,
        })
        .collect()
}

pub fn compile_yaml(gateway: &str, yaml: &str, keys: &BTreeMap<KeyRef, PublishedKeys>) -> Compiled {
    compile(gateway, &inputs_from_yaml(yaml), keys, &crate::policy::Tenancy::single_owner())
}

/// An engine with no minting keys and no remote JWKS.
pub fn engine(compiled: &Compiled) -> Engine {
    let minting = BTreeMap::new();
    Engine::build(
        compiled.config.clone(),
        &BuildOptions {
            issuer_url: "https://gateway.test",
            minting: &minting,
            remote: &NoRemoteKeys,
            cache_bytes: DEFAULT_TOKEN_CACHE_BYTES,
        },
    )
    .expect("engine builds")
}

/// The issuer of [`scale_policy`].
pub const SCALE_ISSUER: &str = "https://id.scale.test";

/// Policy `p<i>` of `namespace` for the scale runs (`bench/scale.sh`, `cargo bench`): one of 10
/// hosts of its namespace, 4 rules (prefix, template, prefix, exact; 3 with requirements, 1
/// public), identity headers, and with `mint` an internal token for the upstream, minted with
/// the namespace's SigningKey `internal`. Names and paths differ per policy, so the config does
/// not compress as well as copies of one policy would.
pub fn scale_policy(namespace: &str, i: usize, mint: bool, jwks: &str) -> Value {
    let ns = namespace;
    let res = format!("res{i}");
    let mut spec = json!({
        "hosts": [format!("svc{}.{ns}.example", i % 10)],
        "issuers": [{"issuer": SCALE_ISSUER, "audiences": [format!("{ns}-svc{}", i % 10)], "algorithms": ["RS256", "ES256"], "jwks": {"uri": jwks}}],
        "rules": [
            {"name": "read", "match": {"paths": [{"prefix": format!("/api/v1/{res}/items")}], "methods": ["GET", "HEAD"]},
             "require": [{"claim": "scope", "containsAll": [format!("{res}:read")]}]},
            {"name": "write", "match": {"paths": [{"template": format!("/api/v1/{res}/items/{{id}}")}], "methods": ["PUT", "PATCH", "DELETE"]},
             "require": [{"claim": "scope", "containsAll": [format!("{res}:write")]}, {"claim": "realm_access.roles", "containsAny": ["editor", "admin"]}]},
            {"name": "admin", "match": {"paths": [{"prefix": format!("/api/v1/{res}/admin")}]},
             "require": [{"claim": "groups", "containsAny": [format!("admins-{ns}")]}]},
            {"name": "health", "match": {"paths": [{"exact": format!("/api/v1/{res}/healthz")}]}, "public": true, "forward": {"token": "none"}},
        ],
        "forward": {"claimsToHeaders": {"X-User-Id": "sub", "X-Tenant": "tenant"}},
    });
    if mint {
        spec["forward"]["token"] = json!("issue");
        spec["forward"]["issue"] = json!({"signingKeyRef": {"name": "internal"}, "audience": format!("{ns}-upstream"), "ttl": "5m"});
    }
    json!({"apiVersion": "portcullis.dev/v1alpha1", "kind": "AuthPolicy", "metadata": {"name": format!("p{i}"), "namespace": ns}, "spec": spec})
}

/// What the controller's watch caches hold in a scale run, without a cluster: `policies`
/// [`scale_policy`]s in `namespaces` namespaces (`scale-000`, …; uid, generation 1 and a creation
/// time set as the API server would), a SigningKey `internal` with its keyring Secret in each of
/// the first `keys`, and gateway settings that let the default gateway mint with them. `edit`
/// may change each policy before it is parsed.
pub struct ScaleWorld {
    pub policies: Vec<std::sync::Arc<crate::api::AuthPolicy>>,
    pub signing_keys: Vec<std::sync::Arc<crate::api::SigningKey>>,
    /// Keyring Secrets by namespace.
    pub secrets: BTreeMap<String, std::sync::Arc<k8s_openapi::api::core::v1::Secret>>,
    pub settings: crate::policy::tenancy::SettingsByGateway,
}

pub fn scale_world(namespaces: usize, policies: usize, keys: usize, jwks: &str, mut edit: impl FnMut(Value) -> Value) -> ScaleWorld {
    use std::sync::Arc;

    use crate::keys::schedule;
    let now = jiff::Timestamp::now();
    let time = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now);
    let namespace = |n: usize| format!("scale-{n:03}");
    let mut world = ScaleWorld { policies: Vec::new(), signing_keys: Vec::new(), secrets: BTreeMap::new(), settings: Default::default() };
    for n in 0..keys.min(namespaces) {
        let ns = namespace(n);
        let sk: crate::api::SigningKey = serde_json::from_value(json!({"apiVersion": "portcullis.dev/v1alpha1", "kind": "SigningKey",
            "metadata": {"name": "internal", "namespace": ns, "uid": format!("uid-{ns}"), "generation": 1}, "spec": {"algorithm": "EdDSA"}}))
        .expect("a SigningKey");
        let ring = schedule::plan(now, &sk.spec, Default::default(), &Default::default(), &mut schedule::generate).expect("a plan").ring;
        world.secrets.insert(ns, Arc::new(crate::controller::desired::keyring_secret(&sk, &ring)));
        world.signing_keys.push(Arc::new(sk));
    }
    for n in 0..namespaces {
        let ns = namespace(n);
        for i in 0..policies / namespaces {
            let mut p: crate::api::AuthPolicy = serde_json::from_value(edit(scale_policy(&ns, i, n < keys, jwks))).expect("an AuthPolicy");
            p.metadata.generation = Some(1);
            p.metadata.uid = Some(format!("uid-{ns}-{i}"));
            p.metadata.creation_timestamp = Some(time.clone());
            world.policies.push(Arc::new(p));
        }
    }
    let minting: Vec<String> = (0..keys.min(namespaces)).map(|n| format!("{}/internal", namespace(n))).collect();
    world.settings =
        crate::policy::tenancy::parse_settings(&format!("default: {{ mintingKeys: [{}] }}", minting.join(", "))).expect("settings");
    world
}

/// `len` characters of `alphabet`, drawn from a xorshift generator at `seed` (tests that need
/// names or paths which do not compress, reproducibly).
pub fn random_word(seed: &mut u64, len: usize, alphabet: &[u8]) -> String {
    (0..len)
        .map(|_| {
            *seed ^= *seed << 13;
            *seed ^= *seed >> 7;
            *seed ^= *seed << 17;
            char::from(alphabet[(*seed % alphabet.len() as u64) as usize])
        })
        .collect()
}

/// A self-signed certificate for `localhost` (P-256, not a CA) and its key, as PEM files
/// `NAME.crt` and `NAME.key` in `dir`, made by `openssl` (which `.ci/run` installs).
pub fn localhost_certificate(dir: &std::path::Path, name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let (cert, key) = (dir.join(format!("{name}.crt")), dir.join(format!("{name}.key")));
    let made = std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "1", "-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=DNS:localhost", "-addext", "basicConstraints=critical,CA:FALSE", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl (apt-get install openssl)");
    assert!(made.status.success(), "openssl: {}", String::from_utf8_lossy(&made.stderr));
    (cert, key)
}
