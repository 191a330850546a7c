//! Every decision through a real NGINX (`auth_request`) and a real Envoy (HTTP `ext_authz`), with
//! real tokens signed by real keys, over real HTTP on loopback.

mod common;

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use common::{Proc, Resp, http, start_echo, start_envoy, start_nginx, upstream_header};
use portcullis::api::SigningAlgorithm;
use portcullis::keys::b64url_decode;
use portcullis::testkit::{TestIssuer, forge_hs256, forge_none};
use serde_json::{Value, json};

const HOST: &str = "api.test";
const SEARCH_HOST: &str = "search.test";

struct Fixture {
    rs: TestIssuer,
    es: TestIssuer,
    ed: TestIssuer,
    now: i64,
    portcullis: Proc,
    authz_port: u16,
    grpc_port: u16,
    upstream_port: u16,
    _dir: tempfile::TempDir,
}

fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

fn policies(rs: &TestIssuer, es: &TestIssuer, ed: &TestIssuer) -> String {
    format!(
        r#"
apiVersion: portcullis.dev/v1alpha1
kind: AuthPolicy
metadata: {{ name: orders, namespace: shop }}
spec:
  hosts: [{HOST}]
  corsPreflight: true
  issuers:
    - {{ issuer: "{rs_url}", audiences: [orders], algorithms: [RS256], jwks: {{ inline: {rs_jwks} }} }}
    - {{ issuer: "{es_url}", audiences: [orders], algorithms: [ES256], jwks: {{ inline: {es_jwks} }} }}
    - {{ issuer: "{ed_url}", audiences: [orders], algorithms: [EdDSA], jwks: {{ inline: {ed_jwks} }} }}
  rules:
    - {{ name: health, public: true, match: {{ paths: [{{ exact: /orders/healthz }}] }} }}
    - {{ name: static, public: true, match: {{ paths: [{{ prefix: /static }}] }} }}
    - name: admin
      match: {{ paths: [{{ prefix: /orders/admin }}] }}
      require: [{{ claim: realm_access.roles, containsAny: [admin] }}]
    - name: read
      match: {{ paths: [{{ prefix: /orders }}], methods: [GET, HEAD] }}
      require: [{{ claim: scope, containsAll: ["orders:read"] }}]
    - name: feed
      authentication: Optional
      match: {{ paths: [{{ prefix: /feed }}] }}
      require: [{{ claim: scope, containsAll: ["orders:read"] }}]
    - name: tenant
      match: {{ paths: [{{ template: "/tenants/{{tenant}}/orders/{{**}}" }}] }}
      require: [{{ claim: tenant, equalsPathParam: tenant }}]
  forward:
    claimsToHeaders: {{ X-User-Id: sub, X-User-Roles: realm_access.roles, X-Tenant-Id: tenant }}
---
apiVersion: portcullis.dev/v1alpha1
kind: AuthPolicy
metadata: {{ name: billing, namespace: shop }}
spec:
  hosts: [{HOST}]
  issuers:
    - {{ issuer: "{rs_url}", audiences: [billing], algorithms: [RS256], jwks: {{ inline: {rs_jwks} }} }}
  rules:
    - name: pay
      match: {{ paths: [{{ prefix: /billing }}] }}
      require: [{{ claim: scope, containsAll: ["billing:read"] }}]
  forward:
    claimsToHeaders: {{ X-User-Id: sub }}
    token: issue
    issue: {{ signingKeyRef: {{ name: internal }}, audience: billing, ttl: 2m, claims: [tenant] }}
---
# Tokens in the query string: only the gRPC integration can take them out.
apiVersion: portcullis.dev/v1alpha1
kind: AuthPolicy
metadata: {{ name: search, namespace: shop }}
spec:
  hosts: [{SEARCH_HOST}]
  issuers:
    - {{ issuer: "{ed_url}", audiences: [orders], algorithms: [EdDSA], jwks: {{ inline: {ed_jwks} }} }}
  tokenSources: [{{ query: {{ name: access_token }} }}]
  rules:
    - {{ name: find, match: {{ paths: [{{ prefix: /search }}] }} }}
  forward: {{ claimsToHeaders: {{ X-User-Id: sub }}, token: none }}
---
apiVersion: portcullis.dev/v1alpha1
kind: SigningKey
metadata: {{ name: internal, namespace: shop }}
spec: {{ algorithm: EdDSA, rotationInterval: 1h, prePublish: 1m, retain: 10m }}
"#,
        rs_url = rs.url,
        es_url = es.url,
        ed_url = ed.url,
        rs_jwks = rs.jwks(),
        es_jwks = es.jwks(),
        ed_jwks = ed.jwks(),
    )
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let rs = TestIssuer::new("https://rs.idp.test", SigningAlgorithm::RS256);
    let es = TestIssuer::new("https://es.idp.test", SigningAlgorithm::ES256);
    let ed = TestIssuer::new("https://ed.idp.test", SigningAlgorithm::EdDSA);
    let policy_dir = dir.path().join("policies");
    std::fs::create_dir_all(&policy_dir).unwrap();
    std::fs::write(policy_dir.join("shop.yaml"), policies(&rs, &es, &ed)).unwrap();
    let (authz_port, grpc_port) = (common::free_port(), common::free_port());
    let grpc = format!("127.0.0.1:{grpc_port}");
    let portcullis = common::start_local_with(&policy_dir, authz_port, dir.path().join("portcullis.log"), &["--grpc-listen", &grpc]);
    Fixture { rs, es, ed, now: unix_now(), portcullis, authz_port, grpc_port, upstream_port: start_echo(), _dir: dir }
}

type Check = Box<dyn Fn(&Resp) -> Result<(), String>>;

struct Case {
    name: &'static str,
    method: &'static str,
    host: &'static str,
    target: String,
    headers: Vec<(String, String)>,
    status: u16,
    /// Where a proxy that forwards the raw target gets another answer.
    raw_target_status: Option<u16>,
    check: Check,
}

fn case(name: &'static str, target: &str, headers: &[(&str, &str)], status: u16) -> Case {
    Case {
        name,
        method: "GET",
        host: HOST,
        target: target.to_owned(),
        headers: headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        status,
        raw_target_status: None,
        check: Box::new(|_| Ok(())),
    }
}

/// NGINX forwards the raw target, so a path not in normal form is refused there (403
/// unsafe_path); Envoy and Traefik normalise it first (for the upstream and for Portcullis
/// alike), so Portcullis decides on the normal form.
fn raw_path_refused_where_forwarded_raw(c: Case) -> Case {
    Case { raw_target_status: Some(403), ..c }
}

fn with(mut c: Case, check: impl Fn(&Resp) -> Result<(), String> + 'static) -> Case {
    c.check = Box::new(check);
    c
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

fn expect_upstream(name: &str, want: Option<&str>) -> impl Fn(&Resp) -> Result<(), String> + use<> {
    let (name, want) = (name.to_owned(), want.map(str::to_owned));
    move |r: &Resp| {
        let got = upstream_header(r, &name);
        if got == want { Ok(()) } else { Err(format!("upstream {name}: got {got:?}, want {want:?}")) }
    }
}

fn expect_bearer_challenge(error: Option<&'static str>) -> impl Fn(&Resp) -> Result<(), String> {
    move |r: &Resp| {
        let all: Vec<&str> =
            r.headers.iter().filter(|(k, _)| k.eq_ignore_ascii_case("www-authenticate")).map(|(_, v)| v.as_str()).collect();
        match (all.as_slice(), error) {
            ([one], None) if one.starts_with("Bearer realm=") && !one.contains("error=") => Ok(()),
            ([one], Some(e)) if one.starts_with("Bearer realm=") && one.contains(&format!("error=\"{e}\"")) => Ok(()),
            _ => Err(format!("WWW-Authenticate: {all:?}, want one Bearer challenge with error {error:?}")),
        }
    }
}

fn cases(fx: &Fixture) -> Vec<Case> {
    let now = fx.now;
    let reader = json!({"scope": "orders:read", "tenant": "acme", "realm_access": {"roles": ["clerk"]}});
    let rs_ok = fx.rs.token("orders", now, reader.clone());
    let es_ok = fx.es.token("orders", now, reader.clone());
    let ed_ok = fx.ed.token("orders", now, reader.clone());
    let expired = fx.rs.token("orders", now - 7200, json!({"scope": "orders:read", "exp": now - 600}));
    let not_yet = fx.rs.token("orders", now, json!({"scope": "orders:read", "nbf": now + 600}));
    let wrong_aud = fx.rs.token("billing-x", now, reader.clone());
    let stranger = TestIssuer::new("https://evil.test", SigningAlgorithm::RS256).token("orders", now, reader.clone());
    let unknown_kid = TestIssuer::new(&fx.rs.url, SigningAlgorithm::RS256).token("orders", now, reader.clone());
    let bad_sig = {
        let (rest, sig) = rs_ok.rsplit_once('.').unwrap();
        let mut bytes = b64url_decode(sig).unwrap();
        bytes[10] ^= 1;
        format!("{rest}.{}", portcullis::keys::b64url(&bytes))
    };
    let claims = fx.rs.claims("orders", now, reader.clone());
    let none = forge_none(&claims);
    let n = b64url_decode(fx.rs.key.public_jwk()["n"].as_str().unwrap()).unwrap();
    let hs_confused = forge_hs256(&claims, Some(fx.rs.key.kid()), &n);
    let no_scope = fx.rs.token("orders", now, json!({"scope": "profile"}));
    let admin = fx.rs.token("orders", now, json!({"realm_access": {"roles": ["clerk", "admin"]}}));
    let billing = fx.rs.token("billing", now, json!({"scope": "billing:read", "tenant": "acme"}));

    let gateway_jwks_port = fx.authz_port;
    let minted_check = move |r: &Resp| -> Result<(), String> {
        let auth = upstream_header(r, "authorization").ok_or("no Authorization upstream")?;
        let token = auth.strip_prefix("Bearer ").ok_or("not a bearer token")?;
        let jwks = http(gateway_jwks_port, "GET", "localhost", "/.well-known/jwks.json", &[])?.json();
        verify_minted(token, &jwks)
    };

    vec![
        with(case("allowed RS256", "/orders/42", &[("Authorization", &bearer(&rs_ok))], 200), {
            let token = rs_ok.clone();
            move |r| {
                expect_upstream("x-user-id", Some("alice"))(r)?;
                expect_upstream("x-user-roles", Some("clerk"))(r)?;
                expect_upstream("authorization", Some(&bearer(&token)))(r)
            }
        }),
        with(case("allowed ES256", "/orders/42", &[("Authorization", &bearer(&es_ok))], 200), expect_upstream("x-user-id", Some("alice"))),
        with(case("allowed EdDSA", "/orders/42", &[("Authorization", &bearer(&ed_ok))], 200), expect_upstream("x-user-id", Some("alice"))),
        with(case("no token", "/orders/42", &[], 401), expect_bearer_challenge(None)),
        with(case("expired", "/orders/42", &[("Authorization", &bearer(&expired))], 401), expect_bearer_challenge(Some("invalid_token"))),
        case("not yet valid", "/orders/42", &[("Authorization", &bearer(&not_yet))], 401),
        case("wrong audience", "/orders/42", &[("Authorization", &bearer(&wrong_aud))], 401),
        case("wrong issuer", "/orders/42", &[("Authorization", &bearer(&stranger))], 401),
        case("bad signature", "/orders/42", &[("Authorization", &bearer(&bad_sig))], 401),
        case("unknown kid", "/orders/42", &[("Authorization", &bearer(&unknown_kid))], 401),
        case("alg none", "/orders/42", &[("Authorization", &bearer(&none))], 401),
        case("HS256 keyed with the RSA public key", "/orders/42", &[("Authorization", &bearer(&hs_confused))], 401),
        case("missing scope", "/orders/42", &[("Authorization", &bearer(&no_scope))], 403),
        with(
            case("nested role present", "/orders/admin/users", &[("Authorization", &bearer(&admin))], 200),
            expect_upstream("x-user-roles", Some("clerk,admin")),
        ),
        case("nested role absent", "/orders/admin/users", &[("Authorization", &bearer(&rs_ok))], 403),
        with(
            case("own tenant's orders", "/tenants/acme/orders/7", &[("Authorization", &bearer(&rs_ok))], 200),
            expect_upstream("x-tenant-id", Some("acme")),
        ),
        // The acme token also sends X-Tenant: globex: the path parameter decides, not the header.
        case("another tenant's orders", "/tenants/globex/orders/7", &[("Authorization", &bearer(&rs_ok)), ("X-Tenant", "globex")], 403),
        with(case("public route without token", "/orders/healthz", &[], 200), expect_upstream("authorization", None)),
        case("unmatched route denied", "/inventory", &[("Authorization", &bearer(&rs_ok))], 403),
        Case { host: "unknown.test", ..case("unknown host denied", "/orders/42", &[("Authorization", &bearer(&rs_ok))], 403) },
        case("encoded slash is not the public prefix", "/static/..%2Forders%2Fadmin", &[], 403),
        raw_path_refused_where_forwarded_raw(case(
            "dot segments reach the admin rule, not the public one",
            "/static/../orders/admin",
            &[],
            401,
        )),
        raw_path_refused_where_forwarded_raw(case(
            "encoded dots reach the admin rule, not the public one",
            "/static/%2e%2e/orders/admin",
            &[],
            401,
        )),
        with(
            case(
                "client identity headers are replaced",
                "/orders/42",
                &[("Authorization", &bearer(&rs_ok)), ("X-User-Id", "mallory"), ("X-User-Roles", "admin"), ("X-Tenant-Id", "globex")],
                200,
            ),
            |r| {
                expect_upstream("x-user-id", Some("alice"))(r)?;
                expect_upstream("x-user-roles", Some("clerk"))(r)?;
                expect_upstream("x-tenant-id", Some("acme"))(r)
            },
        ),
        with(
            case(
                "client identity headers never reach a public route",
                "/orders/healthz",
                &[("X-User-Id", "mallory"), ("X-User-Roles", "admin"), ("Authorization", "Bearer forged")],
                200,
            ),
            |r| {
                expect_upstream("x-user-id", None)(r)?;
                expect_upstream("x-user-roles", None)(r)?;
                expect_upstream("authorization", None)(r)
            },
        ),
        with(case("optional authentication: anonymous", "/feed", &[("X-User-Id", "mallory")], 200), |r| {
            expect_upstream("x-user-id", None)(r)?;
            expect_upstream("authorization", None)(r)
        }),
        with(
            case("optional authentication: a valid token", "/feed", &[("Authorization", &bearer(&rs_ok))], 200),
            expect_upstream("x-user-id", Some("alice")),
        ),
        case("optional authentication: a bad token is refused", "/feed", &[("Authorization", &bearer(&bad_sig))], 401),
        case("optional authentication: requirements still apply", "/feed", &[("Authorization", &bearer(&no_scope))], 403),
        with(
            Case {
                method: "OPTIONS",
                ..case(
                    "CORS preflight without a token",
                    "/orders/42",
                    &[("Origin", "https://app.test"), ("Access-Control-Request-Method", "GET"), ("Authorization", "Bearer forged")],
                    200,
                )
            },
            expect_upstream("authorization", None),
        ),
        Case { method: "OPTIONS", ..case("OPTIONS that is not a preflight", "/orders/42", &[], 403) },
        with(case("internal token is minted for billing", "/billing/invoices", &[("Authorization", &bearer(&billing))], 200), minted_check),
    ]
}

/// A downstream service's check: the minted token verifies against the gateway's JWKS alone.
fn verify_minted(token: &str, jwks: &Value) -> Result<(), String> {
    let (keys, _) = portcullis::keys::parse_jwks(jwks)?;
    let header: Value = serde_json::from_slice(&b64url_decode(token.split('.').next().unwrap()).unwrap()).map_err(|e| e.to_string())?;
    let kid = header["kid"].as_str().ok_or("minted token has no kid")?;
    let key = keys.iter().find(|k| k.kid.as_deref() == Some(kid)).ok_or("minted kid is not in the gateway's JWKS")?;
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::EdDSA);
    v.set_audience(&["billing"]);
    let data = jsonwebtoken::decode::<Value>(token, &key.decoding, &v).map_err(|e| format!("minted token does not verify: {e}"))?;
    let c = data.claims;
    if c["sub"] != "alice" || c["tenant"] != "acme" || c["aud"] != "billing" {
        return Err(format!("unexpected minted claims {c}"));
    }
    Ok(())
}

fn run_cases(proxy: &str, port: u16, fx: &Fixture, raw_target: bool) {
    let mut failures = Vec::new();
    let all = cases(fx);
    for c in &all {
        let headers: Vec<(&str, &str)> = c.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let want = c.raw_target_status.filter(|_| raw_target).unwrap_or(c.status);
        match http(port, c.method, c.host, &c.target, &headers) {
            Ok(r) if r.status != want => {
                failures.push(format!("{}: status {} (want {want}), body {}", c.name, r.status, String::from_utf8_lossy(&r.body)))
            }
            Ok(r) => {
                if let Err(e) = (c.check)(&r) {
                    failures.push(format!("{}: {e}", c.name));
                }
            }
            Err(e) => failures.push(format!("{}: request failed: {e}", c.name)),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed through {proxy}:\n  {}\nportcullis log:\n{}",
        failures.len(),
        all.len(),
        failures.join("\n  "),
        fx.portcullis.log_text()
    );
}

fn proxy_dir(name: &str) -> tempfile::TempDir {
    tempfile::Builder::new().prefix(name).tempdir_in(std::env::temp_dir()).unwrap()
}

/// The case table through one proxy, started by `start` with its directory, the authorizer's
/// port and the upstream's.
fn decisions_through(proxy: &str, raw_target: bool, start: impl FnOnce(&Path, u16, u16) -> (common::Proc, u16)) {
    let fx = fixture();
    let dir = proxy_dir(proxy);
    let (_proxy, port) = start(dir.path(), fx.authz_port, fx.upstream_port);
    run_cases(proxy, port, &fx, raw_target);
}

#[test]
fn every_decision_through_nginx_auth_request() {
    decisions_through("nginx", true, start_nginx);
}

#[test]
fn every_decision_through_caddy_forward_auth() {
    decisions_through("caddy", true, common::start_caddy);
}

#[test]
fn every_decision_through_traefik_forward_auth() {
    // Traefik cleans the path (entry point `sanitizePath`, on by default) before it asks and
    // forwards: the decision is on the normal form, as behind Envoy.
    decisions_through("traefik", false, common::start_traefik);
}

#[test]
fn every_decision_through_envoy_ext_authz() {
    let fx = fixture();
    let dir = proxy_dir("envoy");
    let (_envoy, port) = start_envoy(dir.path(), fx.authz_port, fx.upstream_port);
    run_cases("envoy", port, &fx, false);
    // A token in the query cannot be taken out over HTTP: refused, never passed on.
    let token = fx.ed.token("orders", fx.now, json!({"sub": "alice"}));
    let r = http(port, "GET", SEARCH_HOST, &format!("/search?q=1&access_token={token}"), &[]).unwrap();
    assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.body));
    // Counted as what it was answered: refused, never allowed.
    let metrics = String::from_utf8(http(fx.authz_port, "GET", "x", "/metrics", &[]).unwrap().body).unwrap();
    assert!(metrics.contains(r#"portcullis_decisions_total{policy="shop/search",result="deny"} 1"#), "{metrics}");
    assert!(!metrics.contains(r#"portcullis_decisions_total{policy="shop/search",result="allow"} 1"#), "{metrics}");
}

#[test]
fn every_decision_through_envoy_grpc_ext_authz() {
    let fx = fixture();
    let dir = proxy_dir("envoy-grpc");
    let (_envoy, port) = common::start_envoy_grpc(dir.path(), fx.grpc_port, fx.upstream_port);
    // The same table, the same expectations as the HTTP integration.
    run_cases("envoy-grpc", port, &fx, false);

    // gRPC takes a query token out, and the claims reach the upstream through Envoy's dynamic
    // metadata (a header the route sets from it, which a client cannot supply).
    let token = fx.ed.token("orders", fx.now, json!({"sub": "alice"}));
    let r =
        http(port, "GET", SEARCH_HOST, &format!("/search?q=1&access_token={token}&page=2"), &[("X-Portcullis-Sub", "mallory")]).unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let seen = r.json();
    // Envoy rebuilds the query (sorted) when it removes a parameter.
    let (path, query) = seen["target"].as_str().unwrap().split_once('?').unwrap();
    let mut params: Vec<&str> = query.split('&').collect();
    params.sort_unstable();
    assert_eq!((path, params), ("/search", vec!["page=2", "q=1"]), "the token left the query: {seen}");
    assert!(!seen.to_string().contains(&token), "no trace of the token upstream: {seen}");
    assert_eq!(upstream_header(&r, "x-user-id").as_deref(), Some("alice"));
    assert_eq!(upstream_header(&r, "x-portcullis-sub").as_deref(), Some("alice"), "{seen}");
    // Public or denied: the client's copy of the metadata header never gets through.
    let r = http(port, "GET", HOST, "/orders/healthz", &[("X-Portcullis-Sub", "mallory")]).unwrap();
    assert_eq!((r.status, upstream_header(&r, "x-portcullis-sub")), (200, None));
    let metrics = String::from_utf8(http(fx.authz_port, "GET", "x", "/metrics", &[]).unwrap().body).unwrap();
    // Every code's series exists from the start; these two must have counted the calls above.
    let count = |code: &str| -> u64 {
        let series = format!("portcullis_grpc_checks_total{{code=\"{code}\"}} ");
        metrics.lines().find_map(|l| l.strip_prefix(&series)).and_then(|v| v.parse().ok()).unwrap_or(0)
    };
    assert!(count("OK") > 0 && count("UNAUTHENTICATED") > 0, "{metrics}");
}

#[test]
fn the_docs_show_the_configurations_these_tests_use() {
    // docs/gateways/*.md embed exactly the configurations the end-to-end tests run, with the
    // ports 8000 (proxy), 8080 (Portcullis) and 9000 (upstream).
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for (doc, conf) in [
        ("docs/gateways/nginx.md", common::nginx_site(8000, 8080, 9000)),
        ("docs/gateways/ingress-nginx.md", common::ingress_nginx_site(8000, 8080, 9000)),
        ("docs/gateways/envoy.md", common::envoy_conf(8000, 9901, 8080, 9000)),
        ("docs/gateways/envoy.md", common::envoy_grpc_conf(8000, 9901, 9001, 9000)),
        ("docs/gateways/caddy.md", common::caddy_site(8000, 8080, 9000)),
        ("docs/gateways/traefik.md", common::traefik_dynamic(8080, 9000)),
    ] {
        let text = std::fs::read_to_string(root.join(doc)).unwrap_or_else(|e| panic!("{doc}: {e}"));
        assert!(text.contains(conf.trim()), "{doc} does not contain, verbatim, the configuration the tests run:\n{}", conf.trim());
    }
}

/// Envoy's gRPC ext_authz over TLS (`--grpc-tls-cert`/`--grpc-tls-key`): Envoy verifies the
/// authorizer's certificate and speaks HTTP/2 over ALPN; an Envoy that does not trust the
/// certificate gets no decision and lets nothing through.
#[test]
fn envoy_reaches_the_grpc_authorizer_over_tls_and_only_with_a_trusted_certificate() {
    let fx = fixture();
    let dir = proxy_dir("envoy-grpc-tls");
    let (cert, key) = portcullis::testkit::localhost_certificate(dir.path(), "authz");
    let (other, _) = portcullis::testkit::localhost_certificate(dir.path(), "other");
    let (port, grpc) = (common::free_port(), common::free_port());
    let listen = format!("127.0.0.1:{grpc}");
    let _tls = common::start_local_with(
        &fx._dir.path().join("policies"),
        port,
        dir.path().join("portcullis-tls.log"),
        &["--grpc-listen", &listen, "--grpc-tls-cert", cert.to_str().unwrap(), "--grpc-tls-key", key.to_str().unwrap()],
    );
    let with_tls = |trusted: &Path| {
        let conf = common::envoy_grpc_conf(0, 0, grpc, fx.upstream_port);
        let cluster = "    - name: portcullis_grpc\n      type: STATIC\n      connect_timeout: 1s\n";
        assert!(conf.contains(cluster), "the gRPC cluster is not in the config");
        let tls = format!(
            "{cluster}      transport_socket:\n        name: envoy.transport_sockets.tls\n        typed_config:\n          \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext\n          sni: localhost\n          common_tls_context:\n            alpn_protocols: [h2]\n            validation_context:\n              trusted_ca: {{ filename: {} }}\n              match_typed_subject_alt_names: [{{ san_type: DNS, matcher: {{ exact: localhost }} }}]\n",
            trusted.display()
        );
        let upstream = fx.upstream_port;
        move |p: u16, a: u16| common::envoy_grpc_conf(p, a, grpc, upstream).replacen(cluster, &tls, 1)
    };
    let (_envoy, proxy) = common::start_envoy_conf(&dir.path().join("trusting"), with_tls(&cert));
    let token = fx.rs.token("orders", fx.now, json!({"sub": "alice", "scope": "orders:read"}));
    let r = http(proxy, "GET", HOST, "/orders/1", &[("Authorization", &format!("Bearer {token}"))]).unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(upstream_header(&r, "x-portcullis-sub").as_deref(), Some("alice"));
    assert_eq!(http(proxy, "GET", HOST, "/orders/1", &[]).unwrap().status, 401);
    // Trusting another certificate: no TLS session, no decision, nothing served.
    let (_wary, wary) = common::start_envoy_conf(&dir.path().join("wary"), with_tls(&other));
    let r = http(wary, "GET", HOST, "/orders/1", &[("Authorization", &format!("Bearer {token}"))]).unwrap();
    assert_eq!(r.status, 403, "fails closed: {}", String::from_utf8_lossy(&r.body));
    let upstream_saw = serde_json::from_slice::<serde_json::Value>(&r.body).ok().and_then(|v| v.get("target").cloned());
    assert_eq!(upstream_saw, None, "the upstream was never reached");
}
