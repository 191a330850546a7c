//! Verification keys are not minting keys (SECURITY.md, invariant 7), end to end: team B's own
//! SigningKey, referenced by its own policy, never becomes a key that a service verifying
//! internal tokens against the gateway's JWKS accepts — checked by PyJWT, as a service would.

mod common;

use std::process::Command;

use common::{Proc, free_port, http, portcullis, wait_ready};

const RESOURCES: &str = r#"
apiVersion: portcullis.dev/v1alpha1
kind: SigningKey
metadata: { name: internal, namespace: shop }
spec: { algorithm: EdDSA, rotationInterval: 1h, prePublish: 1m, retain: 10m }
---
apiVersion: portcullis.dev/v1alpha1
kind: SigningKey
metadata: { name: idp, namespace: shop }
spec: { algorithm: ES256, rotationInterval: 24h, prePublish: 1h, retain: 2h }
---
apiVersion: portcullis.dev/v1alpha1
kind: AuthPolicy
metadata: { name: billing, namespace: shop }
spec:
  hosts: [api.shop.test]
  issuers: [{ issuer: "https://id.shop.test", audiences: [billing], algorithms: [ES256], jwks: { signingKeyRef: { name: idp } } }]
  rules: [{ name: pay, match: { paths: [{ prefix: /billing }] } }]
  forward: { token: issue, issue: { signingKeyRef: { name: internal }, audience: billing-svc, ttl: 2m } }
---
apiVersion: portcullis.dev/v1alpha1
kind: SigningKey
metadata: { name: forge, namespace: team-b }
spec: { algorithm: EdDSA, rotationInterval: 1h, prePublish: 1m, retain: 10m }
---
# Team B verifies its own callers with its own key: allowed, and never published.
apiVersion: portcullis.dev/v1alpha1
kind: AuthPolicy
metadata: { name: mine, namespace: team-b }
spec:
  hosts: [b.test]
  issuers: [{ issuer: "https://b.test", audiences: [b], algorithms: [EdDSA], jwks: { signingKeyRef: { name: forge } } }]
  rules: [{ name: all, match: { paths: [{ prefix: / }] } }]
---
# Team B tries to mint with its own key: the settings do not list it.
apiVersion: portcullis.dev/v1alpha1
kind: AuthPolicy
metadata: { name: mint, namespace: team-b }
spec:
  hosts: [b2.test]
  issuers: [{ issuer: "https://b.test", audiences: [b], algorithms: [EdDSA], jwks: { signingKeyRef: { name: forge } } }]
  rules: [{ name: all, match: { paths: [{ prefix: / }] } }]
  forward: { token: issue, issue: { signingKeyRef: { name: forge }, audience: billing-svc } }
"#;

const VERIFY: &str = r#"
import sys, jwt
jwks_url, issuer, audience, token = sys.argv[1:5]
try:
    key = jwt.PyJWKClient(jwks_url).get_signing_key_from_jwt(token)
    jwt.decode(token, key.key, algorithms=["EdDSA", "ES256", "RS256"], audience=audience, issuer=issuer)
    print("ACCEPTED")
except Exception as e:
    print("REJECTED", type(e).__name__, e)
"#;

fn run(args: &[&str]) -> String {
    let (code, out, err) = common::run_portcullis(args);
    assert_eq!(code, 0, "{args:?}: {err}");
    out.trim().to_owned()
}

/// What a service that pins the gateway's issuer and verifies with its JWKS says of a token.
fn service_says(port: u16, issuer: &str, token: &str) -> String {
    let out = Command::new("python3")
        .args(["-c", VERIFY, &format!("http://127.0.0.1:{port}/.well-known/jwks.json"), issuer, "billing-svc", token])
        .output()
        .expect("python3 (pip install 'pyjwt[crypto]')");
    let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(!text.is_empty(), "verifier failed: {}", String::from_utf8_lossy(&out.stderr));
    text
}

#[test]
fn a_teams_own_key_never_signs_what_services_trust() {
    let dir = tempfile::tempdir().unwrap();
    let policies = dir.path().join("policies");
    std::fs::create_dir_all(&policies).unwrap();
    std::fs::write(policies.join("all.yaml"), RESOURCES).unwrap();
    let d = policies.to_str().unwrap();
    let port = free_port();
    let issuer = format!("http://127.0.0.1:{port}");
    let mut cmd = Command::new(portcullis());
    cmd.args(["local", "--dir", d, "--listen", &format!("127.0.0.1:{port}"), "--issuer-url", &issuer])
        .args(["--gateway-settings", "default: { mintingKeys: [shop/internal] }"]);
    let mut pc = Proc::spawn("portcullis", &mut cmd, dir.path().join("portcullis.log"));
    wait_ready(&mut pc, port);

    // Team B's minting policy is refused, visibly; its verifying policy is accepted.
    let log = pc.log_text();
    assert!(log.contains("REJECTED  AuthPolicy team-b/mint (SigningKeyNotAllowed)"), "{log}");
    assert!(log.contains("SigningKey team-b/forge may not mint"), "{log}");
    assert!(log.contains("accepted  AuthPolicy team-b/mine"), "{log}");

    // The gateway publishes the shop's minting key, and nothing else.
    let jwks = http(port, "GET", "x", "/.well-known/jwks.json", &[]).unwrap().json();
    let kids: Vec<&str> = jwks["keys"].as_array().unwrap().iter().map(|k| k["kid"].as_str().unwrap()).collect();
    let keys = run(&["keys", "list", "--dir", d]);
    let kid_of = |name: &str| -> String {
        let section = keys.split("SigningKey ").find(|s| s.starts_with(name)).unwrap_or_else(|| panic!("{name} in {keys}"));
        section.lines().nth(2).and_then(|l| l.split_whitespace().next()).unwrap().to_owned()
    };
    assert_eq!(kids, vec![kid_of("shop/internal").as_str()], "{keys}");

    // A token team B signs with its key, claiming everything a service could want, is refused.
    let forged = run(&[
        "token",
        "--dir",
        d,
        "--key",
        "team-b/forge",
        "--iss",
        &issuer,
        "--aud",
        "billing-svc",
        "--claims",
        r#"{"sub":"admin","roles":["admin"]}"#,
    ]);
    let verdict = service_says(port, &issuer, &forged);
    assert!(verdict.starts_with("REJECTED"), "a token signed with a team's own key was accepted: {verdict}");

    // The same service accepts what the gateway really mints (the check above can fail).
    let caller = run(&["token", "--dir", d, "--key", "shop/idp", "--iss", "https://id.shop.test", "--aud", "billing", "--sub", "alice"]);
    let minted = http(port, "GET", "api.shop.test", "/ext_authz/billing/1", &[("Authorization", &format!("Bearer {caller}"))]).unwrap();
    assert_eq!(minted.status, 200, "{}", String::from_utf8_lossy(&minted.body));
    let internal = minted.header("authorization").and_then(|a| a.strip_prefix("Bearer ")).expect("a minted token").to_owned();
    assert_eq!(service_says(port, &issuer, &internal), "ACCEPTED");
}
