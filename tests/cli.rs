//! The `portcullis` command as a user runs it: check, token, compile, the gateway on a config
//! file (atomic swaps, bad configs), local mode's reload, and the admin endpoints.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{Proc, free_port, http, portcullis, start_local, wait_ready, wait_until};

fn shop_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/shop");
    for sub in ["", "tests"] {
        std::fs::create_dir_all(dir.path().join(sub)).unwrap();
        for f in std::fs::read_dir(src.join(sub)).unwrap().flatten().filter(|f| f.path().is_file()) {
            std::fs::copy(f.path(), dir.path().join(sub).join(f.file_name())).unwrap();
        }
    }
    dir
}

use common::run_portcullis as run;

fn token(dir: &Path, aud: &str, claims: &str) -> String {
    let (code, out, err) = run(&[
        "token",
        "--dir",
        dir.to_str().unwrap(),
        "--key",
        "demo-idp",
        "--iss",
        "https://id.shop.example",
        "--aud",
        aud,
        "--claims",
        claims,
    ]);
    assert_eq!(code, 0, "{err}");
    out.trim().to_owned()
}

#[test]
fn check_explains_decisions_with_exit_codes() {
    let shop = shop_copy();
    let dir = shop.path().to_str().unwrap();
    let reader = token(shop.path(), "orders", r#"{"sub":"alice","scope":"orders:read"}"#);

    let (code, out, _) = run(&["check", "--dir", dir, "--url", "https://api.shop.example/orders/7", "--token", &reader]);
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("ALLOW 200"), "{out}");
    assert!(out.contains("AuthPolicy shop/orders, rule read"), "{out}");
    assert!(out.contains("x-user-id: alice"), "{out}");

    let (code, out, _) =
        run(&["check", "--dir", dir, "--method", "DELETE", "--url", "https://api.shop.example/orders/admin/7", "--token", &reader]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("DENY 403 claims_not_satisfied"), "{out}");
    assert!(out.contains(r#"realm_access.roles containsAny ["admin"]"#), "{out}");
    assert!(!out.contains(&reader), "check never prints the token");

    let (code, out, _) = run(&[
        "check",
        "--dir",
        dir,
        "--url",
        "https://api.shop.example/tenants/acme/orders/1",
        "--token",
        &token(shop.path(), "orders", r#"{"tenant":"acme"}"#),
        "-H",
        "X-Tenant: acme",
    ]);
    assert_eq!(code, 0, "{out}");

    let (code, out, _) = run(&["check", "--dir", dir, "--url", "https://api.shop.example/orders"]);
    assert_eq!(code, 1);
    assert!(out.contains("DENY 401 missing_token") && out.contains("WWW-Authenticate: Bearer realm="), "{out}");

    let (code, _, err) = run(&["check", "--dir", "/nonexistent/dir", "--url", "not a url"]);
    assert_eq!(code, 2, "{err}");
}

#[test]
fn minted_internal_tokens_through_check() {
    let shop = shop_copy();
    let billing = token(shop.path(), "billing", r#"{"sub":"bob","scope":"billing:read","tenant":"acme"}"#);
    let (code, out, _) =
        run(&["check", "--dir", shop.path().to_str().unwrap(), "--url", "https://api.shop.example/billing/invoices", "--token", &billing]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("forward: a minted internal token"), "{out}");
}

#[test]
fn keys_are_kept_private_and_stable_across_commands() {
    let shop = shop_copy();
    let first = token(shop.path(), "orders", "{}");
    let second = token(shop.path(), "orders", "{}");
    let kid = |t: &str| {
        let header = portcullis::keys::b64url_decode(t.split('.').next().unwrap()).unwrap();
        serde_json::from_slice::<serde_json::Value>(&header).unwrap()["kid"].as_str().unwrap().to_owned()
    };
    assert_eq!(kid(&first), kid(&second));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let keys = shop.path().join(".portcullis/keys");
        for path in [shop.path().join(".portcullis"), keys.clone()] {
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o077, 0, "{} is open to others", path.display());
        }
        for f in std::fs::read_dir(&keys).unwrap().flatten() {
            assert_eq!(f.metadata().unwrap().permissions().mode() & 0o077, 0, "{} is readable by others", f.path().display());
        }
    }
    let (code, out, _) = run(&["keys", "list", "--dir", shop.path().to_str().unwrap()]);
    assert_eq!(code, 0);
    assert!(out.contains(&kid(&first)) && out.contains("Active") && out.contains("next transition"), "{out}");
}

#[test]
fn gateway_on_a_config_file_swaps_atomically_and_keeps_the_last_good_config() {
    let shop = shop_copy();
    let work = tempfile::tempdir().unwrap();
    let config = work.path().join("config.json");
    let (code, _, err) = run(&["compile", "--dir", shop.path().to_str().unwrap(), "--out", config.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let v1 = portcullis::policy::GatewayConfig::from_bytes(&std::fs::read(&config).unwrap()).unwrap().version;

    let (port, admin) = (free_port(), free_port());
    let mut cmd = Command::new(portcullis());
    cmd.args(["gateway", "--config", config.to_str().unwrap(), "--keys"]).arg(shop.path().join(".portcullis/keys")).args([
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--admin-listen",
        &format!("127.0.0.1:{admin}"),
    ]);
    let mut gw = Proc::spawn("gateway", &mut cmd, work.path().join("gateway.log"));
    wait_ready(&mut gw, admin);
    assert_eq!(http(port, "GET", "x", "/readyz", &[]).unwrap().status, 404, "admin endpoints live on the admin port");
    let reader = token(shop.path(), "orders", r#"{"scope":"orders:read"}"#);
    let auth = format!("Bearer {reader}");
    let ask = || http(port, "GET", "api.shop.example", "/ext_authz/orders", &[("Authorization", &auth)]).unwrap().status;
    assert_eq!(ask(), 200);

    // A broken config: rejected with a clear log line, the old one keeps serving.
    std::fs::write(&config, b"{ not json").unwrap();
    wait_until("the broken config to be rejected", Duration::from_secs(10), || {
        gw.log_text().contains("not a gateway config").then_some(())
    });
    assert_eq!(ask(), 200);
    assert!(http(admin, "GET", "x", "/readyz", &[]).unwrap().body.ends_with(format!("{v1}\n").as_bytes()));

    // A config edited after compilation no longer matches its version: refused too.
    let (_, compiled, _) = run(&["compile", "--dir", shop.path().to_str().unwrap()]);
    std::fs::write(&config, compiled.replace(r#""name":"read""#, r#""name":"reed""#)).unwrap();
    wait_until("the tampered config to be rejected", Duration::from_secs(10), || {
        gw.log_text().contains("altered after compilation").then_some(())
    });
    assert_eq!(ask(), 200);

    // A valid new config (orders removed): swapped in.
    std::fs::remove_file(shop.path().join("orders.yaml")).unwrap();
    let (code, _, err) = run(&["compile", "--dir", shop.path().to_str().unwrap(), "--out", config.to_str().unwrap(), "--gzip"]);
    assert_eq!(code, 0, "{err}");
    wait_until("the new config", Duration::from_secs(10), || (ask() == 403).then_some(()));

    let metrics = String::from_utf8(http(admin, "GET", "x", "/metrics", &[]).unwrap().body).unwrap();
    assert!(!metrics.contains(r#"policy="shop/orders""#), "metrics of removed policies are dropped");
    assert!(metrics.contains(r#"portcullis_decisions_total{policy="",result="deny"} 1"#), "{metrics}");
    assert!(metrics.contains("portcullis_config_reloads_total{result=\"failure\"} 2"), "{metrics}");
    assert!(metrics.contains("portcullis_config_reloads_total{result=\"success\"} 2"), "{metrics}");
    assert!(metrics.contains(r#"portcullis_denials_total{reason="no_route"}"#), "{metrics}");
    assert!(metrics.contains("portcullis_decision_duration_seconds_bucket"), "{metrics}");
    assert!(!gw.log_text().contains(&reader), "the log never holds a token");
}

#[test]
fn local_mode_reloads_and_keeps_a_broken_policy_serving_its_last_good_version() {
    let shop = shop_copy();
    let port = free_port();
    let log = tempfile::NamedTempFile::new().unwrap();
    let pc = start_local(shop.path(), port, log.path().to_owned());
    let reader = token(shop.path(), "orders", r#"{"scope":"orders:read"}"#);
    let auth = format!("Bearer {reader}");
    let ask = |path: &str| http(port, "GET", "api.shop.example", &format!("/ext_authz{path}"), &[("Authorization", &auth)]).unwrap().status;
    assert_eq!(ask("/orders/1"), 200);

    // What downstream services use to verify internal tokens, and what people watch.
    let jwks = http(port, "GET", "x", "/.well-known/jwks.json", &[]).unwrap();
    assert_eq!(jwks.header("cache-control"), Some("public, max-age=300"), "max-age is the shortest prePublish (5m)");
    // Only the key the gateway mints with: demo-idp verifies callers and is never published.
    assert_eq!(jwks.json()["keys"].as_array().unwrap().len(), 1);
    let discovery = http(port, "GET", "x", "/.well-known/openid-configuration", &[]).unwrap().json();
    assert_eq!(discovery["jwks_uri"], format!("http://127.0.0.1:{port}/.well-known/jwks.json"));
    assert_eq!(discovery["issuer"], format!("http://127.0.0.1:{port}"));
    let metrics = String::from_utf8(http(port, "GET", "x", "/metrics", &[]).unwrap().body).unwrap();
    for key in ["shop/internal", "shop/demo-idp"] {
        assert!(metrics.contains(&format!("portcullis_signing_key_active_age_seconds{{signing_key=\"{key}\"}}")), "{metrics}");
        assert!(metrics.contains(&format!("portcullis_signing_key_next_transition_seconds{{signing_key=\"{key}\"}}")), "{metrics}");
    }

    // Break the policy: the old version keeps serving, and the log says why.
    let orders = shop.path().join("orders.yaml");
    let good = std::fs::read_to_string(&orders).unwrap();
    std::fs::write(&orders, good.replace("prefix: /orders }]\n        methods", "prefix: /orders/../x }]\n        methods")).unwrap();
    wait_until("the rejection", Duration::from_secs(10), || pc.log_text().contains("REJECTED  AuthPolicy shop/orders").then_some(()));
    assert!(pc.log_text().contains("previous version keeps serving"), "{}", pc.log_text());
    assert_eq!(ask("/orders/1"), 200);

    // A misspelt field is an error, not a silently open route.
    std::fs::write(&orders, good.replace("      require:\n        - claim: scope", "      requir:\n        - claim: scope")).unwrap();
    wait_until("the unknown field", Duration::from_secs(10), || {
        pc.log_text().contains("unknown field(s) spec.rules[read].requir").then_some(())
    });
    assert!(pc.log_text().contains("kept      AuthPolicy shop/orders"), "{}", pc.log_text());
    assert_eq!(ask("/orders/1"), 200, "the last good version keeps serving");
    let metrics = String::from_utf8(http(port, "GET", "x", "/metrics", &[]).unwrap().body).unwrap();
    // The broken document, and the invalid version before it (kept as the file's last parse,
    // still rejected, its accepted version still serving).
    assert!(metrics.contains("portcullis_config_rejected_resources 2"), "{metrics}");

    // A real change takes effect.
    std::fs::write(&orders, good.replace(r#"containsAll: ["orders:read"]"#, r#"containsAll: ["orders:list"]"#)).unwrap();
    wait_until("the new policy", Duration::from_secs(10), || (ask("/orders/1") == 403).then_some(()));
}

#[test]
fn an_empty_directory_is_served_and_denies_everything() {
    let empty = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut cmd = Command::new(portcullis());
    cmd.args(["local", "--dir", empty.path().to_str().unwrap(), "--listen", &format!("127.0.0.1:{port}")]);
    let mut p = Proc::spawn("portcullis", &mut cmd, empty.path().join("log"));
    // An empty config is still a config: ready, and everything is denied.
    wait_ready(&mut p, port);
    assert_eq!(http(port, "GET", "x", "/healthz", &[]).unwrap().status, 200);
    assert_eq!(http(port, "GET", "any.host", "/ext_authz/anything", &[]).unwrap().status, 403);
    let jwks = http(port, "GET", "x", "/.well-known/jwks.json", &[]).unwrap().json();
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 0);
}

#[test]
fn each_endpoint_reads_only_what_its_proxy_sets() {
    let shop = shop_copy();
    let port = free_port();
    let log = tempfile::NamedTempFile::new().unwrap();
    let _pc = start_local(shop.path(), port, log.path().to_owned());
    let ask = |endpoint: &str, headers: &[(&str, &str)]| http(port, "GET", "portcullis.internal", endpoint, headers).unwrap().status;
    let authz = |headers: &[(&str, &str)]| ask("/authz", headers);
    let ingress = |headers: &[(&str, &str)]| ask("/authz/ingress-nginx", headers);
    // NGINX / Traefik / Caddy: X-Forwarded-*.
    assert_eq!(
        authz(&[("X-Forwarded-Method", "GET"), ("X-Forwarded-Uri", "/orders/healthz"), ("X-Forwarded-Host", "api.shop.example")]),
        200
    );
    assert_eq!(authz(&[("X-Forwarded-Method", "GET"), ("X-Forwarded-Uri", "/orders/1"), ("X-Forwarded-Host", "api.shop.example")]), 401);
    // ingress-nginx: X-Original-URL carries host and target; X-Original-Method the method.
    assert_eq!(ingress(&[("X-Original-Method", "GET"), ("X-Original-URL", "https://api.shop.example/orders/healthz?x=1")]), 200);
    assert_eq!(ingress(&[("X-Original-Method", "POST"), ("X-Original-URL", "https://api.shop.example/orders/healthz")]), 200);
    assert_eq!(ingress(&[("X-Original-Method", "GET"), ("X-Original-URL", "https://other.example/orders/healthz")]), 403);
    // A client's X-Forwarded-* never decides under ingress-nginx, and X-Original-* never under /authz.
    assert_eq!(
        ingress(&[
            ("X-Original-Method", "DELETE"),
            ("X-Original-URL", "https://api.shop.example/orders/admin/7"),
            ("X-Forwarded-Method", "GET"),
            ("X-Forwarded-Uri", "/orders/healthz"),
            ("X-Forwarded-Host", "api.shop.example"),
        ]),
        401
    );
    assert_eq!(authz(&[("X-Original-Method", "GET"), ("X-Original-URL", "https://api.shop.example/orders/healthz")]), 400);
    // Missing or repeated values are refused: 400, which NGINX turns into a 500 (closed).
    assert_eq!(authz(&[("X-Forwarded-Host", "api.shop.example")]), 400);
    assert_eq!(
        authz(&[
            ("X-Forwarded-Method", "GET"),
            ("X-Forwarded-Uri", "/orders/healthz"),
            ("X-Forwarded-Uri", "/orders/admin/7"),
            ("X-Forwarded-Host", "api.shop.example")
        ]),
        400
    );
    assert_eq!(
        authz(&[
            ("X-Forwarded-Method", "GET"),
            ("X-Forwarded-Uri", "/orders/healthz"),
            ("X-Forwarded-Host", "api.shop.example, evil.test")
        ]),
        400
    );
    assert_eq!(
        authz(&[("X-Forwarded-Method", "get"), ("X-Forwarded-Uri", "/orders/healthz"), ("X-Forwarded-Host", "api.shop.example")]),
        400
    );
    // Not in normal form: refused, the upstream would get the raw path.
    assert_eq!(
        authz(&[("X-Forwarded-Method", "GET"), ("X-Forwarded-Uri", "/orders/healthz/../1"), ("X-Forwarded-Host", "api.shop.example")]),
        403
    );
}

#[test]
fn a_missing_dir_is_an_error_for_every_command_and_creates_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("no-such-dir");
    let m = missing.to_str().unwrap();
    for args in [
        vec!["check", "--dir", m, "--url", "https://api.test/"],
        vec!["token", "--dir", m, "--key", "k"],
        vec!["compile", "--dir", m],
        vec!["keys", "list", "--dir", m],
        vec!["keys", "rotate", "--dir", m, "k"],
        vec!["local", "--dir", m, "--listen", "127.0.0.1:0"],
    ] {
        let (code, _, err) = run(&args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains(&format!("--dir \"{m}\" is not a directory")), "{args:?}: {err}");
        assert!(!missing.exists(), "{args:?} created {m}");
    }
}

#[test]
fn check_refuses_a_url_that_is_not_absolute() {
    let shop = shop_copy();
    for url in ["/orders/1", "api.shop.example/orders", "ftp://api.shop.example/x", "https:///x"] {
        let (code, _, err) = run(&["check", "--dir", shop.path().to_str().unwrap(), "--url", url]);
        assert_eq!(code, 2, "{url}: {err}");
        assert!(err.contains(&format!("--url {url:?} is not an absolute http(s) URL")), "{url}: {err}");
    }
}

#[test]
fn writing_to_a_closed_pipe_ends_quietly() {
    use std::process::Stdio;
    let mut child = Command::new(portcullis()).arg("crds").stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    // Read one byte and hang up, as `| head -c1` does.
    let mut stdout = child.stdout.take().unwrap();
    let mut one = [0u8; 1];
    std::io::Read::read_exact(&mut stdout, &mut one).unwrap();
    drop(stdout);
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(out.status.code(), Some(0), "{err}");
}

#[test]
fn compile_writes_nothing_when_any_input_is_broken() {
    let shop = shop_copy();
    let out = tempfile::tempdir().unwrap();
    let config = out.path().join("config.json");
    let orders = shop.path().join("orders.yaml");
    let good = std::fs::read_to_string(&orders).unwrap();
    std::fs::write(
        &orders,
        good.replace("      require:\n        - claim: scope", "      require:\n        - claim: scope\n          containsAny: admin"),
    )
    .unwrap();
    let (code, stdout, err) = run(&["compile", "--dir", shop.path().to_str().unwrap(), "--out", config.to_str().unwrap()]);
    assert_eq!(code, 2, "broken input is exit 2, as everywhere: {err}");
    assert!(!config.exists(), "a partial config was written");
    assert!(stdout.is_empty());
    assert!(err.contains("orders.yaml") && err.contains("containsAny"), "{err}");
    assert!(err.contains("nothing was written"), "{err}");
}

#[test]
fn portcullis_test_runs_the_shops_policy_tests_and_reports_like_a_test_runner() {
    let shop = shop_copy();
    let d = shop.path().to_str().unwrap();
    let junit = shop.path().join("results.xml");
    let out = Command::new(portcullis()).args(["test", "--dir", d, "--junit", junit.to_str().unwrap()]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    let cases = std::fs::read_to_string(shop.path().join("tests/shop.test.yaml")).unwrap().matches("- name:").count();
    assert_eq!(stdout.lines().last(), Some(format!("{cases} passed, 0 failed").as_str()), "{stdout}");

    // The JUnit file is XML a CI system can read.
    let check = Command::new("python3")
        .args(["-c", "import sys, xml.etree.ElementTree as ET; r = ET.parse(sys.argv[1]).getroot(); print(r.tag, r.get('tests'), r.get('failures'), len(r.findall('.//testcase')))", junit.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&check.stdout).trim(),
        format!("testsuites {cases} 0 {cases}"),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );

    // Each kind of failing expectation: one line per failure, expected vs actual, and the decision.
    let file = shop.path().join("wrong.test.yaml");
    std::fs::write(
        &file,
        r#"apiVersion: portcullis.dev/v1alpha1
kind: AuthPolicyTest
metadata: { name: wrong }
spec:
  cases:
    - name: wrong reason
      request: { url: https://api.shop.example/orders/7 }
      expect: { reason: expired }
    - name: missing header
      request: { url: https://api.shop.example/orders/7 }
      token: { issuer: https://id.shop.example, audience: orders, claims: { sub: alice, scope: "orders:read" } }
      expect: { allow: true, headers: { X-Tenant-Id: acme } }
    - name: allow versus deny
      request: { url: https://api.shop.example/orders/admin/1 }
      expect: { allow: true }
"#,
    )
    .unwrap();
    let out =
        Command::new(portcullis()).args(["test", "--dir", d, file.to_str().unwrap(), "--junit", junit.to_str().unwrap()]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    for line in [
        "FAIL ",
        "wrong.test.yaml: wrong reason",
        "  expected reason expired, got missing_token",
        "  expected header X-Tenant-Id: \"acme\", got none",
        "  expected allow, got deny",
        "  decided: DENY 401 missing_token at AuthPolicy shop/orders, rule admin",
    ] {
        assert!(stdout.contains(line), "missing {line:?} in:\n{stdout}");
    }
    assert_eq!(stdout.lines().last(), Some("0 passed, 3 failed"));
    assert!(std::fs::read_to_string(&junit).unwrap().contains("failures=\"3\""));

    // A malformed test file is exit 2, with where.
    std::fs::write(&file, "apiVersion: portcullis.dev/v1alpha1\nkind: AuthPolicyTest\nspec:\n  cases:\n    - name: x\n      request: { url: https://a/ }\n      expect: { alow: true }\n").unwrap();
    let out = Command::new(portcullis()).args(["test", "--dir", d, file.to_str().unwrap()]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("wrong.test.yaml: spec.cases[0].expect.alow: unknown field `alow`"), "{stderr}");

    // Test files never disturb local mode: they are not resources.
    let (code, _, err) = run(&["compile", "--dir", d]);
    assert_eq!(code, 0, "{err}");
}

#[test]
fn check_teaches_near_misses_and_takes_a_bearer_token_as_pasted() {
    let shop = shop_copy();
    let dir = shop.path().to_str().unwrap();
    let reader = token(shop.path(), "orders", r#"{"sub":"alice","scope":"orders:read"}"#);
    let (code, out, err) = run(&[
        "check",
        "--dir",
        dir,
        "--method",
        "POST",
        "--url",
        "https://api.shop.example/orders/7",
        "--token",
        &format!("Bearer {reader}"),
    ]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("DENY 403 no_route"), "{out}");
    assert!(out.contains("near:    path matches rule read of AuthPolicy shop/orders, but POST is not in [GET, HEAD]"), "{out}");
    assert!(err.contains("the leading \"Bearer \" was dropped"), "{err}");
    let (code, out, _) =
        run(&["check", "--dir", dir, "--url", "https://api.shop.example/orders/7", "--token", &format!("bearer  {reader}")]);
    assert_eq!(code, 0, "{out}");
}

#[test]
fn check_takes_a_sign_in_session_cookie() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(
        tmp.path().join("web.yaml"),
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
  hosts: [app.shop.test]
  signIn: { issuer: "http://127.0.0.1:9", clientId: web, sessionKeyRef: { name: sessions } }
  rules:
    - name: app
      match: { paths: [{ prefix: / }] }
      require: [{ claim: groups, containsAny: [staff] }]
      forward: { claimsToHeaders: { X-User-Id: sub } }
"#,
    )
    .unwrap();
    let dir = tmp.path().to_str().unwrap();
    assert_eq!(run(&["keys", "list", "--dir", dir]).0, 0);
    let key: portcullis::policy::KeyRef = "shop/sessions".parse().unwrap();
    let ring_path = tmp.path().join(".portcullis/keys").join(portcullis::contract::publish::keyring_file_name(&key));
    let ring = portcullis::keys::store::read_keyring(&ring_path).unwrap().unwrap();
    let sealer = portcullis::keys::seal::Sealer::new(&ring, "session:shop/web").unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let cookie = |groups: serde_json::Value| {
        let session = portcullis::decide::signin::Session::from_id_token(&serde_json::json!({"sub": "alice", "groups": groups}), now + 600);
        let sealed = portcullis::decide::signin::seal_session(&sealer, "__Host-portcullis-session", "app.shop.test", &session).unwrap();
        format!("{}={}", sealed[0].0, sealed[0].1)
    };
    let check = |extra: &[&str]| {
        let mut args = vec!["check", "--dir", dir, "--url", "https://app.shop.test/reports"];
        args.extend_from_slice(extra);
        run(&args)
    };
    let staff = cookie(serde_json::json!(["staff"]));
    let (code, out, _) = check(&["--cookie", &staff]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("ALLOW 200") && out.contains("x-user-id: alice"), "{out}");
    assert!(!out.contains(staff.split_once('=').unwrap().1), "check never prints the cookie");
    let (code, out, _) = check(&["--cookie", &cookie(serde_json::json!(["guests"]))]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("DENY 403 claims_not_satisfied"), "{out}");
    // A page asked for without a session: sign-in, which needs the provider (down here).
    let (code, out, _) = check(&["-H", "Accept: text/html"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("DENY 503 sign_in_unavailable"), "{out}");
    let (code, out, _) = check(&["--cookie", "__Host-portcullis-session-0=v1.tampered.x"]);
    assert!(code == 1 && out.contains("DENY 401 missing_token"), "{out}");
    let (code, _, err) = check(&["--cookie", "no-equals-sign"]);
    assert!(code != 0 && err.contains("NAME=VALUE"), "{err}");
}
