//! The upstream never serves what Portcullis would deny (SECURITY.md, invariants 1, 2, 3, 5).
//!
//! A seeded corpus of request variants (dot segments raw and encoded, repeated and encoded
//! slashes, case variants, duplicate and spoofed forwarded headers, spoofed identity headers,
//! method case, tokens in every source) goes through each documented integration — NGINX with the
//! docs' site, NGINX as ingress-nginx generates its auth location, Envoy with the docs'
//! config — to a Flask app that routes like a real service. For every request a handler served,
//! the oracle asks Portcullis about the request *as the upstream saw it* (method, host, the path
//! Werkzeug routed on) with the client's credentials: it must be allowed, the identity headers
//! the upstream got must be the ones Portcullis set, and a token must not arrive where the
//! policy does not forward it.
//!
//! The corpus is `tests/corpus/upstream_soundness.json`, generated from a fixed seed; run with
//! `PORTCULLIS_REGENERATE_CORPUS=1` after changing the generator.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{Proc, free_port, http, start_envoy, start_local, start_nginx_site};
use portcullis::api::SigningAlgorithm;
use portcullis::decide::{Decision, Engine, Request};
use portcullis::policy::path::PathMode;
use portcullis::testkit::{TestIssuer, compile_yaml, engine, forge_none};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

const HOST: &str = "api.test";
const SEED: u64 = 0x005e_ed0f_9a7e;
const VARIANTS: usize = 480;

fn policy(issuer: &TestIssuer) -> String {
    format!(
        r#"
name: orders
namespace: shop
spec:
  hosts: [{HOST}]
  issuers:
    - {{ issuer: "{url}", audiences: [orders], algorithms: [RS256], jwks: {{ inline: {jwks} }} }}
  tokenSources:
    - header: {{ name: Authorization, prefix: "Bearer " }}
    - cookie: {{ name: session }}
    - header: {{ name: X-Api-Token }}
  rules:
    - {{ name: health, public: true, match: {{ paths: [{{ exact: /orders/healthz }}] }} }}
    - {{ name: static, public: true, match: {{ paths: [{{ prefix: /static }}] }} }}
    - name: admin
      match: {{ paths: [{{ prefix: /orders/admin }}] }}
      require: [{{ claim: realm_access.roles, containsAny: [admin] }}]
    - name: read
      match: {{ paths: [{{ prefix: /orders }}], methods: [GET, HEAD] }}
      require: [{{ claim: scope, containsAll: ["orders:read"] }}]
    - name: tenant
      match: {{ paths: [{{ template: "/tenants/{{tenant}}/orders/{{**}}" }}] }}
      require: [{{ claim: tenant, equalsHeader: X-Tenant }}]
    - name: pay
      match: {{ paths: [{{ prefix: /billing }}] }}
      require: [{{ claim: scope, containsAll: ["billing:read"] }}]
      forward: {{ token: none, claimsToHeaders: {{ X-User-Id: sub }} }}
  forward:
    claimsToHeaders: {{ X-User-Id: sub, X-User-Roles: realm_access.roles, X-Tenant-Id: tenant }}
"#,
        url = issuer.url,
        jwks = issuer.jwks(),
    )
}

/// Rules whose upstream must never see the caller's token.
const NO_TOKEN_RULES: [&str; 3] = ["health", "static", "pay"];
const IDENTITY: [&str; 3] = ["x-user-id", "x-user-roles", "x-tenant-id"];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Variant {
    id: usize,
    method: String,
    target: String,
    /// Host header lines, in order (none, one, or a repeated one).
    hosts: Vec<String>,
    headers: Vec<(String, String)>,
    /// none | clerk | admin | billing | forged
    credential: String,
    /// authorization | cookie | api-token | query
    carrier: String,
}

/// xorshift64*: a stable random engine, so the corpus is the same on every machine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[(self.next() % items.len() as u64) as usize]
    }
}

const TRICK_PATHS: &[&str] = &[
    "/orders/healthz",
    "/static/app.js",
    "/orders/admin/7",
    "/orders/admin",
    "/orders/7",
    "/tenants/acme/orders/7",
    "/tenants/globex/orders/7",
    "/billing/invoices",
    "/inventory",
    "/static/../orders/admin/7",
    "/static/%2e%2e/orders/admin/7",
    "/static/%2E%2E/orders/admin/7",
    "/static/.%2e/orders/admin/7",
    "/static/%2e./orders/admin/7",
    "/orders/healthz/../admin/7",
    "/orders/healthz/%2e%2e/admin/7",
    "/static/./../orders/admin",
    "//orders/admin/7",
    "/orders//admin/7",
    "/orders/admin//7",
    "/static//../orders/admin/7",
    "/static/..%2Forders/admin/7",
    "/static/..%2forders%2fadmin%2f7",
    "/static/..%5Corders/admin/7",
    "/static/..\\orders/admin/7",
    "/orders/%61dmin/7",
    "/orders/%2561dmin/7",
    "/%6frders/admin/7",
    "/ORDERS/admin/7",
    "/orders/ADMIN/7",
    "/Orders/Admin/7",
    "/orders/admin;/7",
    "/orders/healthz;/../admin/7",
    "/static;x/../orders/admin/7",
    "/orders/admin/7/.",
    "/orders/admin/.",
    "/orders/healthz/..",
    "/orders/healthz/.",
    "/orders/healthz?/../admin/7",
    "/orders/healthz%3F/../admin/7",
    "/orders/healthz%23/../admin/7",
    "/orders/admin%00/7",
    "/orders/admin%20/7",
    "/orders/admin%09/7",
    "/static/%C0%AE%C0%AE/orders/admin/7",
    "/orders/admin/..%2f..%2fhealthz",
    "/static/%252e%252e/orders/admin/7",
    "http://api.test/orders/admin/7",
    "http://api.test/static/../orders/admin/7",
    "/tenants/acme/../globex/orders/7",
    "/tenants/acme/orders/../../globex/orders/7",
    "/billing/../orders/admin/7",
    "/static/%2e%2e%2forders/admin/7",
    "/orders/healthz/%2e%2e%2fadmin/7",
    "/orders/admin/../healthz",
    "/orders/admin/%2e%2e/healthz",
    "/orders/admin/7/../../healthz",
    "/orders/admin/./../../static/x",
];

const METHODS: &[&str] = &["GET", "GET", "GET", "DELETE", "POST", "HEAD", "delete", "Get", "PROPFIND", "get"];

/// Header sets a client may add to fool the proxy or the authorizer.
fn header_tricks() -> Vec<Vec<(&'static str, &'static str)>> {
    vec![
        vec![],
        vec![("X-Forwarded-Uri", "/orders/healthz"), ("X-Forwarded-Method", "GET"), ("X-Forwarded-Host", HOST)],
        vec![("X-Original-URL", "http://api.test/orders/healthz"), ("X-Original-Method", "GET"), ("X-Original-URI", "/orders/healthz")],
        vec![("X-Forwarded-Uri", "/static/x"), ("X-Forwarded-Uri", "/orders/healthz")],
        vec![("X-Rewrite-URL", "/orders/healthz"), ("X-HTTP-Method-Override", "GET")],
        vec![("X-User-Id", "mallory"), ("X-User-Roles", "admin"), ("X-Tenant-Id", "globex")],
        vec![("X-Tenant", "globex")],
        vec![("X-Tenant", "acme")],
        vec![("X-Forwarded-Host", "evil.test"), ("X-Host", "evil.test")],
        vec![("Cookie", "theme=dark"), ("X-Api-Token", "not-a-token")],
    ]
}

const HOSTS: &[&[&str]] = &[
    &[HOST],
    &[HOST],
    &[HOST],
    &["API.TEST"],
    &["api.test:80"],
    &["api.test."],
    &["evil.test"],
    &["api.test", "evil.test"],
    &["a..api.test"],
    &["api.test, evil.test"],
];

const CREDENTIALS: &[&str] = &["none", "clerk", "admin", "billing", "forged"];
const CARRIERS: &[&str] = &["authorization", "authorization", "cookie", "api-token", "query"];

fn generate() -> Vec<Variant> {
    let mut rng = Rng(SEED);
    let tricks = header_tricks();
    let mut out = Vec::new();
    let push = |out: &mut Vec<Variant>, method: &str, target: &str, hosts: &[&str], headers: &[(&str, &str)], cred: &str, carrier: &str| {
        out.push(Variant {
            id: out.len(),
            method: method.to_owned(),
            target: target.to_owned(),
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            headers: headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            credential: cred.to_owned(),
            carrier: carrier.to_owned(),
        })
    };
    // Every path trick without a token, with a token that may read orders but not administer,
    // and with one that may administer.
    for target in TRICK_PATHS {
        push(&mut out, "GET", target, &[HOST], &[], "none", "authorization");
        push(&mut out, "GET", target, &[HOST], &[], "clerk", "authorization");
        push(&mut out, "DELETE", target, &[HOST], &[], "admin", "cookie");
    }
    // The routes in normal form with every credential in every place a token can be.
    for target in &TRICK_PATHS[..9] {
        for cred in ["clerk", "admin", "billing"] {
            for carrier in ["authorization", "cookie", "api-token"] {
                push(&mut out, "GET", target, &[HOST], &[("X-Tenant", "acme")], cred, carrier);
            }
        }
    }
    // Every header trick and host variant on the admin route and a public one.
    for headers in &tricks {
        for target in ["/orders/admin/7", "/orders/healthz"] {
            push(&mut out, "DELETE", target, &[HOST], headers, "clerk", "authorization");
        }
    }
    for hosts in HOSTS {
        push(&mut out, "GET", "/orders/admin/7", hosts, &[], "clerk", "authorization");
    }
    // Then random combinations of all of it.
    while out.len() < VARIANTS {
        let method = *rng.pick(METHODS);
        let target = *rng.pick(TRICK_PATHS);
        let hosts = *rng.pick(HOSTS);
        let mut headers = rng.pick(&tricks).clone();
        if rng.next().is_multiple_of(3) {
            headers.extend(rng.pick(&tricks).iter().copied());
        }
        let cred = *rng.pick(CREDENTIALS);
        let carrier = *rng.pick(CARRIERS);
        push(&mut out, method, target, hosts, &headers, cred, carrier);
    }
    out
}

fn corpus_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/upstream_soundness.json")
}

#[test]
fn the_corpus_in_the_repo_is_the_seeded_generator_output() {
    let generated = generate();
    assert!(generated.len() >= 300);
    let text = serde_json::to_string_pretty(&generated).unwrap() + "\n";
    if std::env::var_os("PORTCULLIS_REGENERATE_CORPUS").is_some() {
        std::fs::create_dir_all(corpus_path().parent().unwrap()).unwrap();
        std::fs::write(corpus_path(), &text).unwrap();
    }
    let stored = std::fs::read_to_string(corpus_path()).expect("corpus (PORTCULLIS_REGENERATE_CORPUS=1 writes it)");
    assert!(stored == text, "tests/corpus/upstream_soundness.json differs from the generator: run with PORTCULLIS_REGENERATE_CORPUS=1");
}

fn corpus() -> Vec<Variant> {
    serde_json::from_str(&std::fs::read_to_string(corpus_path()).unwrap()).unwrap()
}

struct Tokens(BTreeMap<&'static str, String>);

impl Tokens {
    fn new(issuer: &TestIssuer) -> Self {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
        let mut t = BTreeMap::new();
        t.insert(
            "clerk",
            issuer.token("orders", now, json!({"scope": "orders:read", "tenant": "acme", "realm_access": {"roles": ["clerk"]}})),
        );
        t.insert("admin", issuer.token("orders", now, json!({"realm_access": {"roles": ["admin"]}, "tenant": "globex"})));
        t.insert("billing", issuer.token("orders", now, json!({"scope": "billing:read orders:read"})));
        // Tokens as large as identity providers issue with many groups (beyond NGINX's default 4 KiB
        // buffer for an answer's headers, within its 8 KiB limit for one request header).
        let groups: Vec<String> = (0..330).map(|i| format!("group-{i:05}")).collect();
        t.insert("clerk-large", issuer.token("orders", now, json!({"scope": "orders:read", "tenant": "acme", "groups": groups})));
        t.insert("billing-large", issuer.token("orders", now, json!({"scope": "billing:read", "groups": groups})));
        t.insert(
            "forged",
            forge_none(&issuer.claims("orders", now, json!({"realm_access": {"roles": ["admin"]}, "scope": "orders:read billing:read"}))),
        );
        Self(t)
    }

    fn get(&self, credential: &str) -> Option<&str> {
        self.0.get(credential).map(String::as_str)
    }
}

/// The request bytes: the target, Host lines and headers exactly as given.
fn wire(v: &Variant, tokens: &Tokens) -> (String, Vec<(String, String)>) {
    let mut target = v.target.clone();
    let mut headers = v.headers.clone();
    if let Some(token) = tokens.get(&v.credential) {
        match v.carrier.as_str() {
            "authorization" => headers.push(("Authorization".into(), format!("Bearer {token}"))),
            "cookie" => headers.push(("Cookie".into(), format!("lang=en; session={token}"))),
            "api-token" => headers.push(("X-Api-Token".into(), token.to_owned())),
            _ => target.push_str(&format!("{}access_token={token}", if target.contains('?') { '&' } else { '?' })),
        }
    }
    (target, headers)
}

fn send(port: u16, v: &Variant, tokens: &Tokens) -> Result<(u16, Vec<u8>), String> {
    let (target, headers) = wire(v, tokens);
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let mut req = format!("{} {target} HTTP/1.1\r\n", v.method);
    for h in &v.hosts {
        req.push_str(&format!("Host: {h}\r\n"));
    }
    for (k, val) in &headers {
        req.push_str(&format!("{k}: {val}\r\n"));
    }
    req.push_str("Connection: close\r\n\r\n");
    s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    let raw = read_response(&mut s);
    let head_end = raw.windows(4).position(|w| w == b"\r\n\r\n").ok_or("no response")?;
    let status = String::from_utf8_lossy(&raw[..head_end]).split(' ').nth(1).and_then(|c| c.parse().ok()).ok_or("no status")?;
    let head = String::from_utf8_lossy(&raw[..head_end]).to_ascii_lowercase();
    let mut body = raw[head_end + 4..].to_vec();
    if head.contains("transfer-encoding: chunked") {
        body = dechunk(&body);
    }
    Ok((status, body))
}

/// Reads one response, stopping at its end (a proxy may hold the connection after an error).
fn read_response(s: &mut TcpStream) -> Vec<u8> {
    let mut raw = Vec::new();
    let mut buf = [0u8; 16384];
    loop {
        if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
            let length = head.lines().find_map(|l| l.strip_prefix("content-length:")).and_then(|v| v.trim().parse::<usize>().ok());
            let done = match length {
                Some(n) => raw.len() >= end + 4 + n,
                None if head.contains("transfer-encoding: chunked") => raw.ends_with(b"0\r\n\r\n"),
                None => head.starts_with("http/1.1 304") || head.starts_with("http/1.1 204"),
            };
            if done {
                return raw;
            }
        }
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return raw,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
        }
    }
}

fn dechunk(mut rest: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(pos) = rest.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(String::from_utf8_lossy(&rest[..pos]).trim(), 16).unwrap_or(0);
        if size == 0 || rest.len() < pos + 2 + size {
            break;
        }
        out.extend_from_slice(&rest[pos + 2..pos + 2 + size]);
        rest = &rest[(pos + 4 + size).min(rest.len())..];
    }
    out
}

/// Bytes Werkzeug decoded, re-encoded as a path Portcullis reads back to the same text.
fn encode_path(decoded: &str) -> String {
    let mut out = String::new();
    for b in decoded.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~!$&'()*+,=:@/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// What is wrong with one served request, if anything.
fn judge(engine: &Engine, v: &Variant, tokens: &Tokens, seen: &Value) -> Option<String> {
    let method = seen["method"].as_str()?;
    let host = seen["host"].as_str()?;
    let mut target = encode_path(seen["path"].as_str()?);
    if let Some((_, query)) = seen["raw_uri"].as_str().and_then(|r| r.split_once('?')) {
        target = format!("{target}?{query}");
    }
    let (_, client_headers) = wire(v, tokens);
    let mut headers = http::HeaderMap::new();
    for (k, val) in &client_headers {
        if let (Ok(k), Ok(val)) = (http::HeaderName::from_bytes(k.as_bytes()), http::HeaderValue::from_str(val)) {
            headers.append(k, val);
        }
    }
    let handler = seen["handler"].as_str().unwrap_or("?");
    let asked = Request { method, host, target: &target, headers: &headers, path_mode: PathMode::Strict, routed: None };
    let allowed = match engine.decide(&asked, unix_now()) {
        Decision::Allow(a) => a,
        Decision::Deny(d) => {
            return Some(format!(
                "handler {handler} served {method} {host} {target}, which Portcullis denies ({}{})",
                d.reason.as_str(),
                d.detail.map(|x| format!(": {x}")).unwrap_or_default()
            ));
        }
    };
    let got = |name: &str| seen["headers"].get(name).and_then(Value::as_str).filter(|s| !s.is_empty());
    for name in IDENTITY {
        let want = allowed.headers.iter().find(|(n, _)| n == name).map(|(_, val)| val.to_str().unwrap());
        if got(name) != want {
            return Some(format!("handler {handler} got {name}: {:?}, Portcullis set {want:?}", got(name)));
        }
    }
    let rule = engine.rule_name(allowed.route);
    if NO_TOKEN_RULES.contains(&rule) {
        for token in tokens.0.values() {
            let leaked = seen["headers"].as_object()?.iter().find(|(_, val)| val.as_str().is_some_and(|s| s.contains(token.as_str())));
            if let Some((name, _)) = leaked {
                return Some(format!("handler {handler} (rule {rule}, no token forwarded) received a token in {name}"));
            }
        }
    }
    None
}

fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

struct Harness {
    _dir: tempfile::TempDir,
    policy_dir: PathBuf,
    engine: Engine,
    tokens: Tokens,
    upstream: u16,
    _app: Proc,
}

fn harness() -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let issuer = TestIssuer::new("https://idp.test", SigningAlgorithm::RS256);
    let yaml = policy(&issuer);
    let compiled = compile_yaml("default", &yaml, &BTreeMap::new());
    assert!(compiled.outcomes.iter().all(|o| o.outcome == portcullis::policy::Outcome::Accepted), "{:?}", compiled.outcomes);
    let policy_dir = dir.path().join("policies");
    std::fs::create_dir_all(&policy_dir).unwrap();
    // The same policy as a resource for `portcullis local`.
    let resource = yaml.replacen(
        "\nname: orders\nnamespace: shop\n",
        "\napiVersion: portcullis.dev/v1alpha1\nkind: AuthPolicy\nmetadata: { name: orders, namespace: shop }\n",
        1,
    );
    std::fs::write(policy_dir.join("orders.yaml"), resource).unwrap();
    let upstream = free_port();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/upstream/shop_app.py");
    let mut cmd = Command::new("python3");
    cmd.arg(script).arg(upstream.to_string());
    let mut app = Proc::spawn("the flask upstream (pip install flask)", &mut cmd, dir.path().join("app.log"));
    app.wait_serving(Duration::from_secs(20), || http(upstream, "GET", "localhost", "/__ping", &[]).ok());
    Harness { engine: engine(&compiled), tokens: Tokens::new(&issuer), policy_dir, upstream, _app: app, _dir: dir }
}

fn authorizer(h: &Harness, extra: &[&str]) -> (Proc, u16) {
    let port = free_port();
    let log = h.policy_dir.parent().unwrap().join(format!("portcullis-{port}.log"));
    if extra.is_empty() {
        return (start_local(&h.policy_dir, port, log), port);
    }
    let mut cmd = Command::new(common::portcullis());
    cmd.args(["local", "--dir"]).arg(&h.policy_dir).args(["--listen", &format!("127.0.0.1:{port}")]).args(extra);
    let mut p = Proc::spawn("portcullis", &mut cmd, log);
    common::wait_ready(&mut p, port);
    (p, port)
}

/// Sends the corpus through a proxy; returns the violations and how many requests a handler
/// served.
fn run_corpus(proxy_port: u16, h: &Harness) -> (Vec<String>, usize) {
    let mut violations = Vec::new();
    let mut served = 0;
    let mut statuses: BTreeMap<u16, usize> = BTreeMap::new();
    let started = std::time::Instant::now();
    for v in corpus() {
        let (status, body) = match send(proxy_port, &v, &h.tokens) {
            Ok(r) => r,
            Err(e) => {
                violations.push(format!("#{} {} {}: no answer: {e}", v.id, v.method, v.target));
                continue;
            }
        };
        *statuses.entry(status).or_default() += 1;
        let Ok(seen) = serde_json::from_slice::<Value>(&body) else { continue };
        if seen.get("handler").is_none() {
            continue;
        }
        served += 1;
        if let Some(why) = judge(&h.engine, &v, &h.tokens, &seen) {
            violations.push(format!("#{} {} {} [{} via {}] → {status}: {why}", v.id, v.method, v.target, v.credential, v.carrier));
        }
    }
    eprintln!("statuses {statuses:?} in {:.0?}", started.elapsed());
    (violations, served)
}

/// Large tokens and cookies are served, and reach the handler as Portcullis answered them: the
/// caller's own where the rule forwards them (in `Authorization` or in the cookie), the cookie
/// without the token where it does not.
fn assert_large_headers_served(proxy: &str, proxy_port: u16, h: &Harness, authz: &Proc) {
    let (clerk, billing) = (h.tokens.get("clerk-large").unwrap(), h.tokens.get("billing-large").unwrap());
    for t in [clerk, billing] {
        assert!((5_000..7_000).contains(&t.len()), "a large token is {} bytes", t.len());
    }
    let bearer = format!("Bearer {clerk}");
    let prefs = format!("lang=en; prefs={}", "p".repeat(6_000));
    let theme = format!("theme={}", "t".repeat(1_000));
    let with_session = format!("lang=en; session={billing}; {theme}");
    let without_session = format!("lang=en; {theme}");
    let clerk_in_cookie = format!("lang=en; session={clerk}");
    let cases = [
        (
            "/orders/42",
            vec![("Authorization", bearer.as_str()), ("Cookie", prefs.as_str())],
            "order",
            Some(bearer.as_str()),
            prefs.as_str(),
        ),
        ("/billing/invoices", vec![("Cookie", with_session.as_str())], "billing", None, without_session.as_str()),
        ("/orders/42", vec![("Cookie", clerk_in_cookie.as_str())], "order", None, clerk_in_cookie.as_str()),
    ];
    for (target, headers, handler, authorization, cookie) in cases {
        let r = http(proxy_port, "GET", HOST, target, &headers).unwrap_or_else(|e| panic!("{proxy} {target}: {e}"));
        let seen: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
        let fail = |why: &str| -> ! {
            panic!(
                "{proxy} {target} with large headers: {why}; status {}, body {}\nportcullis log:\n{}",
                r.status,
                String::from_utf8_lossy(&r.body).chars().take(300).collect::<String>(),
                authz.log_text()
            )
        };
        if r.status != 200 || seen["handler"] != handler {
            fail(&format!("want 200 from the {handler} handler"));
        }
        // Traefik forwards a header the answer cleared as an empty one: no token either way.
        if seen["headers"]["authorization"].as_str().filter(|v| !v.is_empty()) != authorization {
            fail("the upstream's Authorization is not what Portcullis answered");
        }
        if seen["headers"]["cookie"].as_str() != Some(cookie) {
            fail("the upstream's Cookie is not what Portcullis answered");
        }
    }
}

fn assert_sound(proxy: &str, proxy_port: u16, h: &Harness, authz: &Proc) {
    let (violations, served) = run_corpus(proxy_port, h);
    eprintln!("{proxy}: {} variants, {served} served by a handler, {} violations", corpus().len(), violations.len());
    assert!(served >= 50, "{proxy}: only {served} requests reached a handler; the harness is not exercising the upstream");
    assert!(
        violations.is_empty(),
        "{proxy}: {} violations:\n  {}\nportcullis log:\n{}",
        violations.len(),
        violations.join("\n  "),
        authz.log_text()
    );
}

/// The corpus, then the large headers, through one proxy (started by `start` with its directory,
/// the authorizer's port and the upstream's) in front of Portcullis started with `extra`.
fn assert_sound_through(proxy: &str, extra: &[&str], start: impl FnOnce(&Path, u16, u16) -> (Proc, u16)) {
    let h = harness();
    let (authz, authz_port) = authorizer(&h, extra);
    let dir = tempfile::tempdir().unwrap();
    let (_proxy, port) = start(dir.path(), authz_port, h.upstream);
    assert_sound(proxy, port, &h, &authz);
    assert_large_headers_served(proxy, port, &h, &authz);
}

#[test]
fn nginx_with_the_docs_site_never_serves_what_portcullis_denies() {
    assert_sound_through("nginx", &[], |dir, authz, up| start_nginx_site(dir, |p| common::nginx_site(p, authz, up)));
}

#[test]
fn ingress_nginx_auth_url_never_serves_what_portcullis_denies() {
    assert_sound_through("ingress-nginx", &[], |dir, authz, up| start_nginx_site(dir, |p| common::ingress_nginx_site(p, authz, up)));
}

#[test]
fn envoy_with_the_docs_config_never_serves_what_portcullis_denies() {
    assert_sound_through("envoy", &[], start_envoy);
}

#[test]
fn envoy_grpc_with_the_docs_config_never_serves_what_portcullis_denies() {
    let grpc = free_port();
    let listen = format!("127.0.0.1:{grpc}");
    assert_sound_through("envoy-grpc", &["--grpc-listen", &listen], |dir, _, up| common::start_envoy_grpc(dir, grpc, up));
}

/// Envoy wired the way Envoy Gateway translates the SecurityPolicy Portcullis generates for an
/// HTTPRoute (per-route ext_authz over gRPC, the AuthPolicy in the context extensions).
#[test]
fn envoy_gateway_per_route_ext_authz_never_serves_what_portcullis_denies() {
    let grpc = free_port();
    let listen = format!("127.0.0.1:{grpc}");
    assert_sound_through("envoy-gateway", &["--grpc-listen", &listen], |dir, _, up| {
        common::start_envoy_gateway(dir, grpc, up, "shop/orders", None)
    });
}

/// The harness behind Envoy wired as Envoy Gateway wires a route (`routed`: the AuthPolicy of
/// its context extension; `rewrite`: a prefix replaced with `/`), with the gRPC authorizer.
fn through_envoy_gateway(routed: &str, rewrite: Option<&str>) -> (Harness, Proc, (Proc, tempfile::TempDir), u16) {
    let h = harness();
    let grpc = free_port();
    let listen = format!("127.0.0.1:{grpc}");
    let (authz, _) = authorizer(&h, &["--grpc-listen", &listen]);
    let dir = tempfile::tempdir().unwrap();
    let (envoy, port) = common::start_envoy_gateway(dir.path(), grpc, h.upstream, routed, rewrite);
    (h, authz, (envoy, dir), port)
}

/// A route the proxy attributes to another AuthPolicy than the one Portcullis matches serves
/// nothing, whatever the credentials.
#[test]
fn envoy_gateway_routed_to_another_policy_serves_nothing() {
    let (h, authz, _envoy, port) = through_envoy_gateway("shop/someone-else", None);
    let (_, served) = run_corpus(port, &h);
    assert_eq!(served, 0, "{}", authz.log_text());
    let admin = h.tokens.get("admin").unwrap();
    let r = http(port, "GET", HOST, "/orders/admin/1", &[("Authorization", &format!("Bearer {admin}"))]).unwrap();
    assert_eq!(r.status, 403);
    assert_eq!(serde_json::from_slice::<Value>(&r.body).unwrap()["reason"], "route_mismatch");
}

/// Behind a `URLRewrite` (`/v1/...` → `/...`), the authorizer decides on the client's path, not
/// the rewritten one: a path that is public once rewritten is no route as the client sent it.
#[test]
fn the_authorizer_sees_the_clients_path_before_a_rewrite() {
    let (_h, authz, _envoy, port) = through_envoy_gateway("shop/orders", Some("/v1/"));
    let r = http(port, "GET", HOST, "/v1/orders/healthz", &[]).unwrap();
    let body: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
    assert_eq!((r.status, body["reason"].as_str()), (403, Some("no_route")), "{body}\n{}", authz.log_text());
    // The same route without the rewrite prefix is not routed by Envoy at all.
    assert_eq!(http(port, "GET", HOST, "/orders/healthz", &[]).unwrap().status, 404);
}

#[test]
fn caddy_forward_auth_never_serves_what_portcullis_denies() {
    assert_sound_through("caddy", &[], common::start_caddy);
}

#[test]
fn traefik_forward_auth_never_serves_what_portcullis_denies() {
    assert_sound_through("traefik", &[], common::start_traefik);
}

/// The harness can fail: normalising paths behind NGINX, which forwards the raw target, lets
/// Werkzeug serve a protected handler for a path Portcullis read as public.
#[test]
fn the_oracle_catches_an_unsound_integration() {
    let h = harness();
    let (_authz, authz_port) = authorizer(&h, &["--path-mode", "normalize"]);
    let dir = tempfile::tempdir().unwrap();
    let upstream = h.upstream;
    let (_nginx, port) = start_nginx_site(dir.path(), |p| common::nginx_site(p, authz_port, upstream));
    let (violations, _) = run_corpus(port, &h);
    let admin_without_token = violations.iter().find(|v| v.contains("[none via") && v.contains("handler admin served"));
    assert!(
        admin_without_token.is_some(),
        "normalising behind raw-forwarding NGINX must show up as the admin handler served without a token: {violations:#?}"
    );
    eprintln!("unsound on purpose: {} violations, e.g. {}", violations.len(), admin_without_token.unwrap());
}

/// Envoy as Istio wires a Gateway: one ext_authz for all of it (the CUSTOM AuthorizationPolicy,
/// no word from the proxy about the route), and the HTTPRoute's rules as Envoy routes in Gateway
/// API precedence (Istio's `pilot/pkg/config/kube/gateway` sorts them so; `PathPrefix` becomes
/// `path_separated_prefix`). Each route tells the upstream which rule it is.
fn istio_conf(port: u16, admin: u16, authz_grpc: u16, upstream: u16) -> String {
    let grpc = common::envoy_grpc_conf(port, admin, authz_grpc, upstream);
    // The docs' one route, with its identity header handling, becomes the HTTPRoute's rules.
    let start = grpc.find("                        - match: { prefix: \"/\" }").expect("the route to replace");
    let end_marker = "append_action: OVERWRITE_IF_EXISTS_OR_ADD\n";
    let end = start + grpc[start..].find(end_marker).expect("its headers") + end_marker.len();
    let route = |rule: &str, extra: &str| {
        format!(
            "                        - match: {{ path_separated_prefix: \"/orders\"{extra} }}\n                          route: {{ cluster: app }}\n                          request_headers_to_add: [{{ header: {{ key: x-route, value: {rule} }}, append_action: OVERWRITE_IF_EXISTS_OR_ADD }}]\n"
        )
    };
    let routes = [
        route("beta", ", headers: [{ name: x-version, string_match: { exact: \"2\" } }]"),
        route("preview", ", query_parameters: [{ name: v, string_match: { exact: \"2\" } }]"),
        route("stable", ""),
    ]
    .concat();
    format!("{}{routes}{}", &grpc[..start], &grpc[end..])
}

/// Istio sends every request of the Gateway to Portcullis, which must pick the AuthPolicy of the
/// route rule Envoy picks by header and query parameter: the HTTPRoute and the policies go through
/// the controller's own planning and compilation, the compiled config to `portcullis gateway`, and
/// no request is served under another rule's policy than the one Portcullis applied.
#[test]
fn istio_shaped_envoy_and_portcullis_choose_the_same_route_by_header_and_query() {
    use portcullis::api::AuthPolicy;
    use portcullis::controller::{desired, wiring};
    use std::sync::Arc;
    let issuer = TestIssuer::new("https://idp.test", SigningAlgorithm::RS256);
    let policy = |name: &str, rule: Value| -> Arc<AuthPolicy> {
        Arc::new(
            serde_json::from_value(json!({"apiVersion": "portcullis.dev/v1alpha1", "kind": "AuthPolicy",
                "metadata": {"namespace": "shop", "name": name, "creationTimestamp": "2026-01-01T00:00:00Z"},
                "spec": {"targetRefs": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": "orders", "sectionName": name}],
                    "issuers": [{"issuer": "https://idp.test", "audiences": ["orders"], "algorithms": ["RS256"], "jwks": {"inline": issuer.jwks()}}],
                    "rules": [rule]}}))
            .unwrap(),
        )
    };
    let policies = [
        policy("beta", json!({"name": "admins", "require": [{"claim": "role", "in": ["admin"]}]})),
        policy("preview", json!({"name": "writers", "require": [{"claim": "role", "in": ["writer", "admin"]}]})),
        policy("stable", json!({"name": "all", "public": true})),
    ];
    fn obj<T: serde::de::DeserializeOwned>(v: Value) -> Arc<T> {
        Arc::new(serde_json::from_value(v).unwrap())
    }
    let world = wiring::World {
        classes: vec![obj(json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass", "metadata": {"name": "istio"},
            "spec": {"controllerName": "istio.io/gateway-controller"}}))],
        gateways: vec![obj(
            json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway", "metadata": {"namespace": "shop", "name": "web"},
            "spec": {"gatewayClassName": "istio", "listeners": [{"name": "http", "port": 80, "protocol": "HTTP"}]}}),
        )],
        http_routes: vec![obj(
            json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute", "metadata": {"namespace": "shop", "name": "orders"},
            "spec": {"hostnames": [HOST], "parentRefs": [{"name": "web"}], "rules": [
                {"name": "stable", "matches": [{"path": {"type": "PathPrefix", "value": "/orders"}}]},
                {"name": "beta", "matches": [{"path": {"type": "PathPrefix", "value": "/orders"}, "headers": [{"name": "X-Version", "value": "2"}]}]},
                {"name": "preview", "matches": [{"path": {"type": "PathPrefix", "value": "/orders"}, "queryParams": [{"name": "v", "value": "2"}]}]}]},
            "status": {"parents": [{"parentRef": {"name": "web"}, "controllerName": "istio.io/gateway-controller",
                "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted", "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}]}}),
        )],
        grpc_routes: vec![],
        security_policies: vec![],
        missing_kinds: vec![],
    };
    let settings: wiring::WiringSettings = serde_json::from_value(
        json!({"authorizers": {"default": {"namespace": "portcullis", "name": "portcullis-gateway", "port": 9001}}}),
    )
    .unwrap();
    let plan = wiring::plan(&policies, &world, &settings);
    assert!(plan.objects.keys().any(|(kind, _, _)| kind == "AuthorizationPolicy"), "{:?}", plan.objects.keys());
    let mut inputs = desired::policy_inputs(&policies, "default", &Default::default());
    inputs.iter_mut().for_each(|i| i.attachment = plan.attachments.get(&i.meta.key()).cloned());
    let compiled = portcullis::policy::compile("default", &inputs, &BTreeMap::new(), &portcullis::policy::Tenancy::single_owner());
    assert!(compiled.outcomes.iter().all(|o| o.outcome == portcullis::policy::Outcome::Accepted), "{:?}", compiled.outcomes);
    let oracle = engine(&compiled);

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.json"), compiled.config.to_json()).unwrap();
    let upstream = free_port();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/upstream/shop_app.py");
    let mut app =
        Proc::spawn("the flask upstream", Command::new("python3").arg(script).arg(upstream.to_string()), dir.path().join("app.log"));
    app.wait_serving(Duration::from_secs(20), || http(upstream, "GET", "localhost", "/__ping", &[]).ok());
    let (port, grpc) = (free_port(), free_port());
    let mut cmd = Command::new(common::portcullis());
    cmd.args(["gateway", "--config"]).arg(dir.path().join("config.json"));
    cmd.args(["--listen", &format!("127.0.0.1:{port}"), "--grpc-listen", &format!("127.0.0.1:{grpc}")]);
    let mut authz = Proc::spawn("portcullis gateway", &mut cmd, dir.path().join("portcullis.log"));
    common::wait_ready(&mut authz, port);
    let (_envoy, proxy) = common::start_envoy_conf(&dir.path().join("envoy"), |p, a| istio_conf(p, a, grpc, upstream));

    let now = unix_now();
    let token = |role: &str| format!("Bearer {}", issuer.token("orders", now, json!({"sub": role, "role": role})));
    let credentials = [None, Some(token("admin")), Some(token("writer")), Some(token("reader"))];
    let versions: [&[(&str, &str)]; 5] =
        [&[], &[("x-version", "2")], &[("X-Version", "2")], &[("x-version", "3")], &[("x-version", "2"), ("x-version", "2")]];
    let queries = ["", "?v=2", "?v=3", "?V=2", "?v=2&v=2", "?v=%32", "?a=1&v=2"];
    let mut served: BTreeMap<String, usize> = BTreeMap::new();
    let mut statuses: BTreeMap<u16, usize> = BTreeMap::new();
    for credential in &credentials {
        for version in versions {
            for query in queries {
                let target = format!("/orders/1{query}");
                let mut hdrs: Vec<(&str, &str)> = version.to_vec();
                if let Some(c) = credential {
                    hdrs.push(("authorization", c));
                }
                let r = http(proxy, "GET", HOST, &target, &hdrs).unwrap();
                *statuses.entry(r.status).or_default() += 1;
                let headers = portcullis::testkit::header_map(&hdrs);
                let decided = oracle.decide(
                    &Request { method: "GET", host: HOST, target: &target, headers: &headers, path_mode: PathMode::Strict, routed: None },
                    now,
                );
                let seen: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
                let case = format!("{target} {version:?} {}", credential.as_deref().map_or("anonymous", |_| "token"));
                match (&decided, seen["handler"].as_str()) {
                    (Decision::Allow(a), Some(_)) => {
                        let route = seen["headers"]["x-route"].as_str().unwrap_or_default().to_owned();
                        let applied = &compiled.config.policies[a.route.policy as usize].name;
                        assert_eq!(&route, applied, "{case}: Envoy routed to rule {route}, Portcullis applied policy {applied}");
                        *served.entry(route).or_default() += 1;
                    }
                    (Decision::Deny(d), Some(_)) => panic!("{case}: served though Portcullis denies it ({:?})", d.reason),
                    (Decision::Deny(d), None) => assert_eq!(r.status, d.reason.status(), "{case}: {seen}"),
                    (Decision::Allow(_), None) => panic!("{case}: allowed but not served: {} {seen}\n{}", r.status, authz.log_text()),
                }
            }
        }
    }
    // Every rule was reached, and what the gateway may read its own way was refused.
    assert_eq!(served.keys().collect::<Vec<_>>(), ["beta", "preview", "stable"], "{served:?} {statuses:?}");
    assert!(statuses.get(&400).is_some_and(|n| *n >= 3 * 4), "ambiguous requests answered 400: {statuses:?}");
    let admin = token("admin");
    let r = http(proxy, "GET", HOST, "/orders/1?v=2&v=2", &[("authorization", &admin)]).unwrap();
    assert_eq!(serde_json::from_slice::<Value>(&r.body).unwrap()["reason"], "ambiguous_route");
}
