//! `portcullis test`: policy tests that run like unit tests, with no server and no identity
//! provider (pure, apart from reading files).
//!
//! ```text
//!  *.test.yaml ─parse─▶ cases ─┐
//!  DIR (policies, keys) ─load─▶ compiled config ─ issuers' keys swapped for ephemeral ones ─▶ Engine
//!                              └─▶ each case: request (+ a token the runner signs) ─▶ decide ─▶ expectations
//! ```
//! A case describes a token by its claims; the runner signs it with an ephemeral key that it
//! puts in place of that issuer's keys (inline, SigningKey or remote JWKS alike), so tests never
//! need the real identity provider. A raw token is sent as it is.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use http::{HeaderMap, HeaderName, HeaderValue};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::api::{JwtAlgorithm, SigningAlgorithm};
use crate::decide::signin::{Provider, ProviderMeta};
use crate::decide::{BuildOptions, DEFAULT_TOKEN_CACHE_BYTES, Decision, Engine, NoRemoteKeys, RemoteKeys, Request, Verdict};
use crate::keys::store::KeyRing;
use crate::keys::{SigningKeyPair, b64url_decode};
use crate::policy::config::KeySource;
use crate::policy::path::PathMode;
use crate::policy::{GatewayConfig, KeyRef};

pub use crate::api::POLICY_TEST_KIND as KIND;

/// One test file: `kind: AuthPolicyTest` with `spec.cases`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TestFile {
    #[serde(rename = "apiVersion")]
    pub api_version: String,
    pub kind: String,
    #[serde(default)]
    pub metadata: Option<Value>,
    pub spec: TestSpec,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TestSpec {
    pub cases: Vec<Case>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Case {
    pub name: String,
    pub request: TestRequest,
    #[serde(default)]
    pub token: Option<TokenSpec>,
    /// A token sent exactly as given (forged, expired, from elsewhere).
    #[serde(default)]
    pub raw_token: Option<String>,
    /// A browser signed in with these claims: the runner seals the session cookie of the
    /// request host's sign-in.
    #[serde(default)]
    pub session: Option<Map<String, Value>>,
    pub expect: Expect,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TestRequest {
    #[serde(default = "get")]
    pub method: String,
    pub url: String,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub cookies: BTreeMap<String, String>,
}

fn get() -> String {
    "GET".into()
}

/// A token the runner signs, described by its claims.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TokenSpec {
    pub issuer: String,
    pub audience: Value,
    #[serde(default)]
    pub claims: Map<String, Value>,
    /// Default: the issuer's first allowed algorithm.
    #[serde(default)]
    pub algorithm: Option<JwtAlgorithm>,
    /// Seconds until `exp`; negative for an expired token. Default 300.
    #[serde(default)]
    pub lifetime: Option<i64>,
    /// Default: the ephemeral key's kid.
    #[serde(default)]
    pub kid: Option<String>,
    /// `header` (default, `Authorization: Bearer`), or `cookie:NAME`, or `header:NAME`.
    #[serde(default)]
    pub send_as: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Expect {
    #[serde(default)]
    pub allow: Option<bool>,
    #[serde(default)]
    pub status: Option<u16>,
    #[serde(default)]
    pub reason: Option<String>,
    /// `namespace/name` of the policy whose rule decided.
    #[serde(default)]
    pub policy: Option<String>,
    #[serde(default)]
    pub rule: Option<String>,
    /// Identity headers the upstream gets, with their values.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Headers the upstream must not get from this answer.
    #[serde(default)]
    pub absent_headers: Vec<String>,
    /// Claims the minted internal token must carry.
    #[serde(default)]
    pub minted: Option<Map<String, Value>>,
    /// The host a browser is sent to sign in at (the provider's): a redirect is expected.
    #[serde(default)]
    pub redirect_host: Option<String>,
}

/// A test file that cannot be used: exit 2, with where.
#[derive(Debug)]
pub struct Broken(pub String);

/// Reads a test file; errors name the file and the field.
pub fn read_file(path: &Path) -> Result<TestFile, Broken> {
    let text = std::fs::read_to_string(path).map_err(|e| Broken(format!("{}: {e}", path.display())))?;
    let value: Value = serde_saphyr::from_str(&text).map_err(|e| Broken(format!("{}: not valid YAML: {e}", path.display())))?;
    let file: TestFile =
        serde_path_to_error::deserialize(&value).map_err(|e| Broken(format!("{}: {}: {}", path.display(), e.path(), e.inner())))?;
    if file.kind != KIND || file.api_version != crate::api::API_VERSION {
        return Err(Broken(format!("{}: expected kind {KIND}, apiVersion {}", path.display(), crate::api::API_VERSION)));
    }
    for (i, c) in file.spec.cases.iter().enumerate() {
        if [c.token.is_some(), c.raw_token.is_some(), c.session.is_some()].iter().filter(|x| **x).count() > 1 {
            return Err(Broken(format!("{}: spec.cases[{i}] ({}): token, rawToken and session are exclusive", path.display(), c.name)));
        }
    }
    Ok(file)
}

/// Test files under `dir` (`*.test.yaml`), sorted.
pub fn find_files(dir: &Path) -> Vec<PathBuf> {
    crate::local::yaml_files(dir).into_iter().filter(|p| p.to_string_lossy().ends_with(".test.yaml")).collect()
}

/// Ephemeral keys standing in for the issuers, by issuer URL and algorithm.
pub struct Signers {
    keys: BTreeMap<(String, SigningAlgorithm), SigningKeyPair>,
}

fn signing_alg(alg: JwtAlgorithm) -> Option<SigningAlgorithm> {
    match alg {
        JwtAlgorithm::RS256 => Some(SigningAlgorithm::RS256),
        JwtAlgorithm::ES256 => Some(SigningAlgorithm::ES256),
        JwtAlgorithm::EdDSA => Some(SigningAlgorithm::EdDSA),
        _ => None,
    }
}

/// Replaces every issuer's keys with ephemeral ones (one per issuer URL and algorithm the
/// runner can sign with), so that tests sign their own tokens.
pub fn substitute_issuers(config: &mut GatewayConfig) -> Result<Signers, String> {
    let mut keys: BTreeMap<(String, SigningAlgorithm), SigningKeyPair> = BTreeMap::new();
    for p in &mut config.policies {
        for i in &mut std::sync::Arc::make_mut(p).issuers {
            let mut jwks = Vec::new();
            for alg in i.algorithms.iter().filter_map(|a| signing_alg(*a)) {
                let pair = match keys.entry((i.issuer.clone(), alg)) {
                    std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                    std::collections::btree_map::Entry::Vacant(e) => {
                        e.insert(SigningKeyPair::generate(alg, None).map_err(|e| e.to_string())?)
                    }
                };
                jwks.push(crate::api::JwkObject(pair.public_jwk().clone()));
            }
            if !jwks.is_empty() {
                i.keys = KeySource::Inline { keys: jwks };
            }
        }
    }
    Ok(Signers { keys })
}

impl Signers {
    fn sign(&self, t: &TokenSpec, allowed: Option<JwtAlgorithm>, now: i64) -> Result<String, String> {
        let alg = t.algorithm.or(allowed).ok_or_else(|| format!("no algorithm for issuer {}", t.issuer))?;
        let salg = signing_alg(alg).ok_or_else(|| format!("the runner signs RS256, ES256 and EdDSA, not {}", alg.as_str()))?;
        let pair = self
            .keys
            .get(&(t.issuer.clone(), salg))
            .ok_or_else(|| format!("issuer {} with {} is not trusted by any policy of this gateway", t.issuer, alg.as_str()))?;
        let mut claims = t.claims.clone();
        claims.insert("iss".into(), json!(t.issuer));
        claims.insert("aud".into(), t.audience.clone());
        claims.entry("iat").or_insert(json!(now));
        claims.entry("exp").or_insert(json!(now + t.lifetime.unwrap_or(300)));
        let mut header = json!({"alg": alg.as_str(), "typ": "JWT", "kid": pair.kid()});
        if let Some(k) = &t.kid {
            header["kid"] = json!(k);
        }
        let b64 = |v: &Value| crate::keys::b64url(v.to_string().as_bytes());
        let input = format!("{}.{}", b64(&header), b64(&Value::Object(claims)));
        let sig = pair.sign(input.as_bytes()).map_err(|e| e.to_string())?;
        Ok(format!("{input}.{}", crate::keys::b64url(&sig)))
    }
}

/// The outcome of one case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaseResult {
    pub file: String,
    pub name: String,
    /// Empty when the case passed.
    pub failures: Vec<String>,
    /// What the engine decided, as `portcullis check` would say it.
    pub explanation: String,
}

/// Builds the engine the cases run against: the compiled config with issuers substituted.
pub fn engine(mut config: GatewayConfig, minting: &BTreeMap<KeyRef, KeyRing>) -> Result<(Engine, Signers), String> {
    let signers = substitute_issuers(&mut config)?;
    let opts =
        BuildOptions { issuer_url: "https://portcullis.test", minting, remote: &StandInProviders, cache_bytes: DEFAULT_TOKEN_CACHE_BYTES };
    Ok((Engine::build(config, &opts)?, signers))
}

/// Sign-in providers as if discovered, offline: their endpoints are stand-ins under the issuer
/// URL, so a case sees a redirect to the provider's host. Remote JWKS stay unloaded.
struct StandInProviders;

impl RemoteKeys for StandInProviders {
    fn key_set(&self, uri: &str, refresh_secs: u64) -> std::sync::Arc<crate::decide::keyset::KeySet> {
        NoRemoteKeys.key_set(uri, refresh_secs)
    }

    fn provider(&self, issuer: &str) -> std::sync::Arc<Provider> {
        let provider = Provider::new(issuer);
        let base = issuer.trim_end_matches('/');
        provider.meta.store(Some(std::sync::Arc::new(ProviderMeta {
            issuer: issuer.to_owned(),
            authorization_endpoint: format!("{base}/authorize"),
            token_endpoint: format!("{base}/token"),
            jwks_uri: format!("{base}/jwks"),
            end_session_endpoint: None,
            userinfo_endpoint: None,
        })));
        provider
    }
}

fn first_algorithm(engine: &Engine, issuer: &str) -> Option<JwtAlgorithm> {
    engine
        .config
        .policies
        .iter()
        .flat_map(|p| &p.issuers)
        .find(|i| i.issuer == issuer)
        .and_then(|i| i.algorithms.iter().copied().find(|a| signing_alg(*a).is_some()))
}

/// Runs one case.
pub fn run_case(engine: &Engine, signers: &Signers, file: &str, c: &Case, now: i64) -> CaseResult {
    let mut result = CaseResult { file: file.to_owned(), name: c.name.clone(), failures: Vec::new(), explanation: String::new() };
    let fail = |r: &mut CaseResult, m: String| r.failures.push(m);
    let uri = match c.request.url.parse::<http::Uri>() {
        Ok(u) if u.authority().is_some() => u,
        _ => {
            fail(&mut result, format!("request.url {:?} is not an absolute URL", c.request.url));
            return result;
        }
    };
    let host = uri.authority().map(|a| a.as_str().to_owned()).unwrap_or_default();
    let target = uri.path_and_query().map_or("/", |pq| pq.as_str()).to_owned();
    let mut headers = HeaderMap::new();
    for (k, v) in &c.request.headers {
        match (HeaderName::from_bytes(k.as_bytes()), HeaderValue::from_str(v)) {
            (Ok(k), Ok(v)) => {
                headers.append(k, v);
            }
            _ => fail(&mut result, format!("request.headers: {k:?} is not a valid header")),
        }
    }
    let mut cookies: Vec<String> = c.request.cookies.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let token = match (&c.token, &c.raw_token) {
        (Some(t), _) => match signers.sign(t, first_algorithm(engine, &t.issuer), now) {
            Ok(tok) => Some((tok, t.send_as.clone())),
            Err(e) => {
                fail(&mut result, format!("token: {e}"));
                return result;
            }
        },
        (None, Some(raw)) => Some((raw.clone(), None)),
        (None, None) => None,
    };
    if let Some(claims) = &c.session {
        match engine.test_session_cookie(&host, &Value::Object(claims.clone()), now) {
            Ok(cookie) => cookies.push(cookie),
            Err(e) => {
                fail(&mut result, format!("session: {e}"));
                return result;
            }
        }
    }
    if let Some((tok, send_as)) = &token {
        match send_as.as_deref().unwrap_or("header") {
            "header" => {
                headers.append(
                    http::header::AUTHORIZATION,
                    HeaderValue::from_str(&format!("Bearer {tok}")).unwrap_or(HeaderValue::from_static("")),
                );
            }
            s if s.starts_with("cookie:") => cookies.push(format!("{}={tok}", &s[7..])),
            s if s.starts_with("header:") => {
                if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(&s.as_bytes()[7..]), HeaderValue::from_str(tok)) {
                    headers.append(n, v);
                }
            }
            s => fail(&mut result, format!("token.sendAs {s:?} is not header, header:NAME or cookie:NAME")),
        }
    }
    if !cookies.is_empty()
        && let Ok(v) = HeaderValue::from_str(&cookies.join("; "))
    {
        headers.append(http::header::COOKIE, v);
    }
    let decision = engine.decide(
        &Request { method: &c.request.method, host: &host, target: &target, headers: &headers, path_mode: PathMode::Strict, routed: None },
        now,
    );
    // A test states what the policy decides when enforced: Audit mode (which allows) is how it
    // is rolled out, not what it means.
    let (allowed, status, reason, detail, audited) = match &decision {
        Decision::Allow(a) => match &a.audit {
            Some(Verdict::WouldDeny { reason, detail }) => (false, reason.status(), reason.as_str().to_owned(), detail.clone(), true),
            _ => (true, 200, "allowed".to_owned(), None, a.audit.is_some()),
        },
        Decision::Deny(d) => (false, d.reason.status(), d.reason.as_str().to_owned(), d.detail.clone(), false),
    };
    let route = decision.route().map(|r| (engine.policy_key(r).to_owned(), engine.rule_name(r).to_owned()));
    let audit_note = if audited { " (rule in Audit mode: allowed until enforced)" } else { "" };
    let redirect = match &decision {
        Decision::Deny(d) => d.redirect.as_ref().map(|r| r.location.clone()),
        Decision::Allow(_) => None,
    };
    result.explanation = if allowed {
        format!("ALLOW 200 by {}{audit_note}", route.as_ref().map_or("-".into(), |(p, r)| format!("AuthPolicy {p}, rule {r}")))
    } else {
        format!(
            "DENY {status} {reason}{}{}{audit_note}",
            route.as_ref().map_or(String::new(), |(p, r)| format!(" at AuthPolicy {p}, rule {r}")),
            detail.as_ref().map_or(String::new(), |x| format!(": {x}"))
        ) + &redirect.as_ref().map_or(String::new(), |l| format!(" -> {}", l.split('?').next().unwrap_or_default()))
    };
    let e = &c.expect;
    if let Some(want) = e.allow
        && want != allowed
    {
        fail(&mut result, format!("expected {}, got {}", if want { "allow" } else { "deny" }, if allowed { "allow" } else { "deny" }));
    }
    if let Some(want) = e.status
        && want != status
    {
        fail(&mut result, format!("expected status {want}, got {status}"));
    }
    if let Some(want) = &e.reason
        && *want != reason
    {
        fail(&mut result, format!("expected reason {want}, got {reason}"));
    }
    if let Some(want) = &e.redirect_host {
        let got = redirect.as_deref().and_then(|l| l.parse::<http::Uri>().ok()).and_then(|u| u.host().map(str::to_owned));
        if got.as_deref() != Some(want.as_str()) {
            fail(&mut result, format!("expected a redirect to {want}, got {}", got.unwrap_or_else(|| "none".into())));
        }
    }
    if let Some(want) = &e.policy
        && route.as_ref().map(|r| &r.0) != Some(want)
    {
        fail(&mut result, format!("expected policy {want}, got {}", route.as_ref().map_or("none", |r| r.0.as_str())));
    }
    if let Some(want) = &e.rule
        && route.as_ref().map(|r| &r.1) != Some(want)
    {
        fail(&mut result, format!("expected rule {want}, got {}", route.as_ref().map_or("none", |r| r.1.as_str())));
    }
    let answered: Vec<(String, String)> = match &decision {
        Decision::Allow(a) => a.headers.iter().map(|(n, v)| (n.as_str().to_owned(), v.to_str().unwrap_or_default().to_owned())).collect(),
        Decision::Deny(_) => Vec::new(),
    };
    for (name, want) in &e.headers {
        let got = answered.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str());
        if got != Some(want.as_str()) {
            fail(&mut result, format!("expected header {name}: {want:?}, got {}", got.map_or("none".to_owned(), |g| format!("{g:?}"))));
        }
    }
    for name in &e.absent_headers {
        if let Some((_, v)) = answered.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)) {
            fail(&mut result, format!("expected no header {name}, got {v:?}"));
        }
    }
    if let Some(want) = &e.minted {
        let minted = match &decision {
            Decision::Allow(a) => {
                a.authorization.as_ref().and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer ")).and_then(claims_of)
            }
            Decision::Deny(_) => None,
        };
        match minted {
            None => fail(&mut result, "expected a minted internal token, got none".to_owned()),
            Some(claims) => {
                for (k, v) in want {
                    if claims.get(k) != Some(v) {
                        fail(
                            &mut result,
                            format!("expected minted claim {k} = {v}, got {}", claims.get(k).map_or("none".into(), Value::to_string)),
                        );
                    }
                }
            }
        }
    }
    result
}

fn claims_of(token: &str) -> Option<Value> {
    let payload = token.split('.').nth(1)?;
    serde_json::from_slice(&b64url_decode(payload).ok()?).ok()
}

/// JUnit XML for CI systems: one testsuite per file.
pub fn junit(results: &[CaseResult]) -> String {
    let esc = |s: &str| s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;");
    let mut by_file: BTreeMap<&str, Vec<&CaseResult>> = BTreeMap::new();
    for r in results {
        by_file.entry(&r.file).or_default().push(r);
    }
    let failures = results.iter().filter(|r| !r.failures.is_empty()).count();
    let mut out = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites name=\"portcullis\" tests=\"{}\" failures=\"{failures}\">\n",
        results.len()
    );
    for (file, cases) in by_file {
        let f = cases.iter().filter(|r| !r.failures.is_empty()).count();
        out.push_str(&format!("  <testsuite name=\"{}\" tests=\"{}\" failures=\"{f}\">\n", esc(file), cases.len()));
        for c in cases {
            out.push_str(&format!("    <testcase classname=\"{}\" name=\"{}\"", esc(file), esc(&c.name)));
            if c.failures.is_empty() {
                out.push_str("/>\n");
            } else {
                out.push_str(&format!(
                    ">\n      <failure message=\"{}\">{}</failure>\n    </testcase>\n",
                    esc(&c.failures.join("; ")),
                    esc(&c.explanation)
                ));
            }
        }
        out.push_str("  </testsuite>\n");
    }
    out.push_str("</testsuites>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::local::LocalDir;
    use proptest::prelude::*;
    use std::sync::OnceLock;

    fn shop() -> &'static (Engine, Signers) {
        static SHOP: OnceLock<(Engine, Signers)> = OnceLock::new();
        SHOP.get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/shop");
            for f in std::fs::read_dir(&src).unwrap().flatten().filter(|f| f.path().is_file()) {
                std::fs::copy(f.path(), dir.path().join(f.file_name())).unwrap();
            }
            let loaded =
                LocalDir::new(dir.path(), None, "default").load(jiff::Timestamp::now(), &Default::default(), &Default::default()).unwrap();
            engine(loaded.compiled.config.clone(), &loaded.rings).unwrap()
        })
    }

    const NOW: i64 = 1_900_000_000;

    fn case(method: &str, path: &str, claims: Option<Value>, expect: Expect) -> Case {
        Case {
            name: "c".into(),
            request: TestRequest {
                method: method.into(),
                url: format!("https://api.shop.example{path}"),
                headers: BTreeMap::new(),
                cookies: BTreeMap::new(),
            },
            token: claims.map(|c| TokenSpec {
                issuer: "https://id.shop.example".into(),
                audience: json!(if path.starts_with("/billing") { "billing" } else { "orders" }),
                claims: c.as_object().unwrap().clone(),
                algorithm: None,
                lifetime: None,
                kid: None,
                send_as: None,
            }),
            raw_token: None,
            session: None,
            expect,
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 300, failure_persistence: None, ..ProptestConfig::default() })]

        /// The engine's own decision always passes as an expectation, and any flipped part of it
        /// always fails.
        #[test]
        fn expectations_taken_from_the_engine_pass_and_flipped_ones_fail(
            method in prop_oneof![Just("GET"), Just("POST"), Just("DELETE")],
            path in prop_oneof![Just("/orders/7"), Just("/orders/healthz"), Just("/orders/admin/1"), Just("/tenants/acme/orders/1"), Just("/billing/x"), Just("/nowhere"), Just("/orders/./7")],
            token in proptest::option::of((any::<bool>(), any::<bool>(), prop_oneof![Just("acme"), Just("globex")])),
            flip in 0u8..4,
        ) {
            let (engine, signers) = shop();
            let claims = token.map(|(reader, admin, tenant)| {
                let mut c = json!({"sub": "alice", "tenant": tenant});
                if reader { c["scope"] = json!("orders:read billing:read"); }
                if admin { c["realm_access"] = json!({"roles": ["admin"]}); }
                c
            });
            let probe = run_case(engine, signers, "f", &case(method, path, claims.clone(), Expect::default()), NOW);
            prop_assert!(probe.failures.is_empty(), "{probe:?}");
            let allowed = probe.explanation.starts_with("ALLOW");
            let status: u16 = if allowed { 200 } else { probe.explanation.split(' ').nth(1).unwrap().parse().unwrap() };
            let reason = if allowed { "allowed".to_owned() } else { probe.explanation.split(' ').nth(2).unwrap().trim_end_matches(':').to_owned() };
            let exact = Expect { allow: Some(allowed), status: Some(status), reason: Some(reason.clone()), ..Expect::default() };
            let r = run_case(engine, signers, "f", &case(method, path, claims.clone(), exact.clone()), NOW);
            prop_assert!(r.failures.is_empty(), "{r:?}");
            let flipped = match flip {
                0 => Expect { allow: Some(!allowed), ..exact },
                1 => Expect { status: Some(if status == 200 { 403 } else { 200 }), ..exact },
                2 => Expect { reason: Some(format!("{reason}-not")), ..exact },
                _ => Expect { rule: Some("no-such-rule".into()), ..exact },
            };
            let r = run_case(engine, signers, "f", &case(method, path, claims, flipped), NOW);
            prop_assert!(!r.failures.is_empty(), "a flipped expectation passed: {r:?}");
        }
    }

    /// A random policy: rules of every path kind, method sets, public and optional rules,
    /// scope requirements.
    fn random_policy() -> impl Strategy<Value = String> {
        let rule = (
            prop_oneof![Just("prefix: /a"), Just("exact: /a/b"), Just("template: \"/a/{id}\""), Just("prefix: /"), Just("prefix: /c")],
            prop_oneof![Just("[]"), Just("[GET]"), Just("[POST, DELETE]")],
            0u8..3,
            proptest::option::of(prop_oneof![Just("s1"), Just("s2")]),
        );
        proptest::collection::vec(rule, 1..4).prop_map(|rules| {
            let mut yaml = String::from("name: p\nspec:\n  issuers: [{ issuer: \"https://idp\", audiences: [api], algorithms: [ES256], jwks: { uri: \"https://idp/jwks\" } }]\n  rules:\n");
            for (i, (path, methods, kind, scope)) in rules.into_iter().enumerate() {
                let (public, optional) = (kind == 0, kind == 1);
                yaml.push_str(&format!("    - name: r{i}\n      match: {{ paths: [{{ {path} }}], methods: {methods} }}\n"));
                if public {
                    yaml.push_str("      public: true\n");
                } else {
                    if optional {
                        yaml.push_str("      authentication: Optional\n");
                    }
                    if let Some(s) = scope {
                        yaml.push_str(&format!("      require: [{{ claim: scope, containsAll: [{s}] }}]\n"));
                    }
                }
            }
            yaml
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 150, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn for_random_policies_the_engines_answer_passes_and_a_flipped_one_fails(
            yaml in random_policy(),
            method in prop_oneof![Just("GET"), Just("POST"), Just("DELETE")],
            path in prop_oneof![Just("/a"), Just("/a/b"), Just("/a/x"), Just("/c/d"), Just("/z")],
            scope in proptest::option::of(prop_oneof![Just("s1"), Just("s2"), Just("s1 s2")]),
            flip in 0u8..3,
        ) {
            let compiled = crate::testkit::compile_yaml("default", &yaml, &BTreeMap::new());
            prop_assume!(compiled.outcomes.iter().all(|o| o.outcome == crate::policy::Outcome::Accepted));
            let (engine, signers) = engine(compiled.config, &BTreeMap::new()).unwrap();
            let mk = |expect: Expect| Case {
                name: "c".into(),
                request: TestRequest { method: method.into(), url: format!("https://h.example{path}"), headers: BTreeMap::new(), cookies: BTreeMap::new() },
                token: scope.map(|s| TokenSpec { issuer: "https://idp".into(), audience: json!("api"), claims: json!({"scope": s}).as_object().unwrap().clone(), algorithm: None, lifetime: None, kid: None, send_as: None }),
                raw_token: None,
                session: None,
                expect,
            };
            let probe = run_case(&engine, &signers, "f", &mk(Expect::default()), NOW);
            prop_assert!(probe.failures.is_empty(), "{probe:?}");
            let allowed = probe.explanation.starts_with("ALLOW");
            let rule = probe.explanation.split("rule ").nth(1).map(|r| r.split(':').next().unwrap().to_owned());
            let exact = Expect { allow: Some(allowed), rule: rule.clone(), ..Expect::default() };
            let r = run_case(&engine, &signers, "f", &mk(exact.clone()), NOW);
            prop_assert!(r.failures.is_empty(), "{yaml}\n{r:?}");
            let flipped = match (flip, rule) {
                (0, _) | (_, None) => Expect { allow: Some(!allowed), ..exact },
                (1, Some(r)) => Expect { rule: Some(format!("{r}x")), ..exact },
                _ => Expect { status: Some(if allowed { 401 } else { 200 }), ..exact },
            };
            let r = run_case(&engine, &signers, "f", &mk(flipped), NOW);
            prop_assert!(!r.failures.is_empty(), "a flipped expectation passed: {yaml}\n{r:?}");
        }
    }

    #[test]
    fn the_issuers_keys_are_replaced_so_tests_sign_their_own_tokens() {
        let (engine, _) = shop();
        for p in &engine.config.policies {
            for i in &p.issuers {
                assert!(matches!(i.keys, KeySource::Inline { .. }), "{}: {:?}", p.key(), i.keys);
            }
        }
        let r = run_case(
            engine,
            &shop().1,
            "f",
            &case("GET", "/orders/7", Some(json!({"sub": "a", "scope": "orders:read"})), Expect { allow: Some(true), ..Expect::default() }),
            NOW,
        );
        assert!(r.failures.is_empty(), "{r:?}");
    }

    #[test]
    fn a_case_can_expect_a_redirect_to_sign_in_and_send_a_signed_in_session() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("web.yaml"),
            r#"
apiVersion: portcullis.dev/v1alpha1
kind: SigningKey
metadata: { name: sessions, namespace: shop }
spec: { algorithm: EdDSA }
---
apiVersion: portcullis.dev/v1alpha1
kind: AuthPolicy
metadata: { name: web, namespace: shop }
spec:
  hosts: [app.shop.example]
  signIn: { issuer: "https://login.example.org/realms/shop", clientId: web, sessionKeyRef: { name: sessions } }
  rules:
    - name: admin
      match: { paths: [{ prefix: /admin }] }
      require: [{ claim: groups, containsAny: [admins] }]
      forward: { claimsToHeaders: { X-User: sub } }
"#,
        )
        .unwrap();
        let tests = dir.path().join("web.test.yaml");
        std::fs::write(
            &tests,
            r#"
apiVersion: portcullis.dev/v1alpha1
kind: AuthPolicyTest
spec:
  cases:
    - name: a page without a session goes to the provider
      request: { url: "https://app.shop.example/admin", headers: { Accept: text/html } }
      expect: { status: 302, reason: sign_in_required, redirectHost: login.example.org }
    - name: a script gets 401
      request: { url: "https://app.shop.example/admin", headers: { Accept: application/json } }
      expect: { status: 401 }
    - name: an admin's session is served
      request: { url: "https://app.shop.example/admin", headers: { Accept: text/html } }
      session: { sub: alice, groups: [admins] }
      expect: { allow: true, headers: { X-User: alice } }
    - name: another user's session is forbidden
      request: { url: "https://app.shop.example/admin" }
      session: { sub: bob, groups: [staff] }
      expect: { status: 403 }
"#,
        )
        .unwrap();
        let loaded =
            LocalDir::new(dir.path(), None, "default").load(jiff::Timestamp::now(), &Default::default(), &Default::default()).unwrap();
        assert!(loaded.compiled.outcomes.iter().all(|o| o.outcome == crate::policy::Outcome::Accepted), "{:?}", loaded.compiled.outcomes);
        let (engine, signers) = engine(loaded.compiled.config.clone(), &loaded.rings).unwrap();
        let file = read_file(&tests).unwrap();
        for c in &file.spec.cases {
            let r = run_case(&engine, &signers, "web", c, NOW);
            assert!(r.failures.is_empty(), "{r:?}");
        }
        assert!(
            run_case(&engine, &signers, "web", &file.spec.cases[0], NOW)
                .explanation
                .ends_with("-> https://login.example.org/realms/shop/authorize")
        );
        // Each expectation can fail: another provider host, a session where none serves.
        let mut wrong = file.spec.cases[0].clone();
        wrong.expect.redirect_host = Some("evil.example".into());
        assert_eq!(
            run_case(&engine, &signers, "web", &wrong, NOW).failures,
            ["expected a redirect to evil.example, got login.example.org"]
        );
        let mut served = file.spec.cases[2].clone();
        served.expect = Expect { redirect_host: Some("login.example.org".into()), ..Expect::default() };
        assert_eq!(run_case(&engine, &signers, "web", &served, NOW).failures, ["expected a redirect to login.example.org, got none"]);
        let mut elsewhere = file.spec.cases[2].clone();
        elsewhere.request.url = "https://other.example/admin".into();
        assert_eq!(run_case(&engine, &signers, "web", &elsewhere, NOW).failures, ["session: no policy with signIn serves other.example"]);
    }

    #[test]
    fn junit_is_well_formed_and_counts() {
        let results = vec![
            CaseResult { file: "a.test.yaml".into(), name: "ok <1>".into(), failures: vec![], explanation: "ALLOW".into() },
            CaseResult {
                file: "a.test.yaml".into(),
                name: "bad & \"worse\"".into(),
                failures: vec!["expected allow, got deny".into()],
                explanation: "DENY 403 no_route".into(),
            },
        ];
        let xml = junit(&results);
        assert!(xml.contains("tests=\"2\" failures=\"1\""), "{xml}");
        assert!(xml.contains("name=\"bad &amp; &quot;worse&quot;\""), "{xml}");
        assert!(xml.contains("name=\"ok &lt;1&gt;\"/>"), "{xml}");
        assert_eq!(xml.matches("<testcase").count(), 2);
    }
}
