//! Audit mode end to end: a stricter policy rolled out in Audit lets every request through real
//! NGINX to the upstream (identity only for a verified token), while `/metrics`, `/status`,
//! the log and `portcullis check` say what enforcing would have denied.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{Proc, free_port, http, portcullis, start_echo, start_nginx, upstream_header, wait_ready, wait_until};

const RESOURCES: &str = r#"
apiVersion: portcullis.dev/v1alpha1
kind: SigningKey
metadata: { name: idp, namespace: shop }
spec: { algorithm: ES256, rotationInterval: 24h, prePublish: 1h, retain: 2h }
---
apiVersion: portcullis.dev/v1alpha1
kind: AuthPolicy
metadata: { name: orders, namespace: shop }
spec:
  hosts: [api.test]
  mode: Audit
  issuers: [{ issuer: "https://id.shop.test", audiences: [orders], algorithms: [ES256], jwks: { signingKeyRef: { name: idp } } }]
  rules:
    - name: admin
      mode: Enforce
      match: { paths: [{ prefix: /orders/admin }] }
      require: [{ claim: roles, containsAny: [admin] }]
    - name: read
      match: { paths: [{ prefix: /orders }] }
      require: [{ claim: roles, containsAny: [clerk] }]
  forward: { claimsToHeaders: { X-User-Id: sub } }
"#;

fn run(args: &[&str]) -> (i32, String) {
    let (code, out, err) = common::run_portcullis(args);
    (code, format!("{out}{err}"))
}

#[test]
fn audit_mode_lets_requests_through_and_reports_what_enforcing_would_deny() {
    let dir = tempfile::tempdir().unwrap();
    let policies = dir.path().join("policies");
    std::fs::create_dir_all(&policies).unwrap();
    std::fs::write(policies.join("all.yaml"), RESOURCES).unwrap();
    let d = policies.to_str().unwrap();
    let port = free_port();
    let mut cmd = Command::new(portcullis());
    cmd.args(["local", "--dir", d, "--listen", &format!("127.0.0.1:{port}")]).env("RUST_LOG", "info");
    let mut pc = Proc::spawn("portcullis", &mut cmd, dir.path().join("portcullis.log"));
    wait_ready(&mut pc, port);
    let upstream = start_echo();
    let (_nginx, proxy) = start_nginx(dir.path(), port, upstream);

    let token = |roles: &str| {
        let claims = format!(r#"{{"roles":[{roles}]}}"#);
        let (code, out) = run(&[
            "token",
            "--dir",
            d,
            "--key",
            "shop/idp",
            "--iss",
            "https://id.shop.test",
            "--aud",
            "orders",
            "--sub",
            "bob",
            "--claims",
            &claims,
        ]);
        assert_eq!(code, 0, "{out}");
        format!("Bearer {}", out.trim())
    };
    let (clerk, nobody) = (token(r#""clerk""#), token(""));

    // No token: through, anonymous (a spoofed identity is cleared).
    let r = http(proxy, "GET", "api.test", "/orders/1", &[("X-User-Id", "spoofed")]).unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(upstream_header(&r, "x-user-id"), None);
    // A verified caller without the role: through, with its identity.
    let r = http(proxy, "GET", "api.test", "/orders/1", &[("Authorization", &nobody)]).unwrap();
    assert_eq!((r.status, upstream_header(&r, "x-user-id").as_deref()), (200, Some("bob")));
    // A caller the rule allows.
    let r = http(proxy, "GET", "api.test", "/orders/2", &[("Authorization", &clerk)]).unwrap();
    assert_eq!(r.status, 200);
    // The rule that overrides the policy's mode is enforced.
    let r = http(proxy, "GET", "api.test", "/orders/admin/x", &[("Authorization", &clerk)]).unwrap();
    assert_eq!(r.status, 403);

    let metrics = String::from_utf8(http(port, "GET", "x", "/metrics", &[]).unwrap().body).unwrap();
    for line in [
        r#"portcullis_audit_decisions_total{policy="shop/orders",reason="missing_token",result="would_deny",rule="read"} 1"#,
        r#"portcullis_audit_decisions_total{policy="shop/orders",reason="claims_not_satisfied",result="would_deny",rule="read"} 1"#,
        r#"portcullis_audit_decisions_total{policy="shop/orders",reason="",result="would_allow",rule="read"} 1"#,
    ] {
        assert!(metrics.contains(line), "{line} not in\n{metrics}");
    }
    assert!(!metrics.contains(r#"rule="admin""#), "enforced rules are not audit decisions");

    let status = http(port, "GET", "x", "/status", &[]).unwrap().json();
    let audit = &status["audit"][0];
    assert_eq!((audit["policy"].as_str(), audit["rule"].as_str()), (Some("shop/orders"), Some("read")), "{status}");
    assert_eq!((audit["wouldAllow"].as_u64(), audit["wouldDeny"].as_u64()), (Some(1), Some(2)), "{status}");
    assert_eq!(audit["reasons"]["missing_token"], 1);
    assert!(status["version"].as_str().is_some_and(|v| !v.is_empty()), "{status}");

    let log = wait_until("the audit log line", Duration::from_secs(5), || {
        let log = pc.log_text();
        log.contains("audit: allowed, enforcing would deny").then_some(log)
    });
    assert!(log.contains("claims_not_satisfied"), "{log}");
    assert!(!log.contains(nobody.trim_start_matches("Bearer ")), "the token is never logged");

    // `check` says what Audit does, and exits 1 for what enforcing would deny.
    let (code, out) = run(&["check", "--dir", d, "--url", "http://api.test/orders/1"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("ALLOW 200") && out.contains("enforcing would DENY 401 missing_token"), "{out}");
    let (code, out) = run(&["check", "--dir", d, "--url", "http://api.test/orders/1", "--token", &clerk[7..]]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("enforcing would allow too"), "{out}");
}
