//! Service to service, end to end without a cluster: `portcullis local` plays the cluster's
//! ServiceAccount issuer (a SigningKey stands in for it), a user calls service A through a real
//! NGINX, A exchanges the internal token it got for one addressed to service B (RFC 8693),
//! presenting its own ServiceAccount token, and B (PyJWT) accepts only tokens for itself whose
//! actor is A. Every bad exchange of the issue's list is refused with its OAuth error.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::{Value, json};

const A: &str = "system:serviceaccount:shop:checkout";
const B: &str = "system:serviceaccount:shop:orders";

fn resources() -> String {
    format!(
        r#"
apiVersion: portcullis.dev/v1alpha1
kind: SigningKey
metadata: {{ name: internal, namespace: shop }}
spec: {{ algorithm: EdDSA }}
---
apiVersion: portcullis.dev/v1alpha1
kind: SigningKey
metadata: {{ name: idp, namespace: shop }}
spec: {{ algorithm: ES256 }}
---
# Stands in for the cluster's ServiceAccount token issuer (--cluster-issuer-key).
apiVersion: portcullis.dev/v1alpha1
kind: SigningKey
metadata: {{ name: cluster, namespace: kube-system }}
spec: {{ algorithm: RS256 }}
---
apiVersion: portcullis.dev/v1alpha1
kind: SigningKey
metadata: {{ name: other-cluster, namespace: kube-system }}
spec: {{ algorithm: RS256 }}
---
apiVersion: portcullis.dev/v1alpha1
kind: AuthPolicy
metadata: {{ name: front, namespace: shop }}
spec:
  hosts: [shop.example]
  issuers:
    - issuer: https://id.shop.example
      audiences: [shop]
      jwks: {{ signingKeyRef: {{ name: idp }} }}
      algorithms: [ES256]
  rules:
    - name: checkout
      match: {{ paths: [{{ prefix: /checkout }}] }}
      forward:
        token: issue
        issue: {{ signingKeyRef: {{ name: internal }}, audience: "{A}", claims: [email, scope] }}
---
apiVersion: portcullis.dev/v1alpha1
kind: AuthPolicy
metadata: {{ name: internal-api, namespace: shop }}
spec:
  hosts: [orders.shop.svc]
  issuers:
    - kubernetes: {{}}
      audiences: [orders.shop.svc]
  rules:
    - name: from-checkout
      match: {{ paths: [{{ prefix: / }}] }}
      serviceAccounts: [shop/checkout]
      forward: {{ claimsToHeaders: {{ X-Caller: {{ claimPath: [kubernetes.io, serviceaccount, name] }} }} }}
---
apiVersion: portcullis.dev/v1alpha1
kind: TokenExchangePolicy
metadata: {{ name: orders, namespace: shop }}
spec:
  audience: {{ serviceAccount: orders }}
  signingKeyRef: {{ name: internal }}
  claims: [email]
  from:
    - serviceAccount: shop/checkout
"#
    )
}

fn token(dir: &Path, args: &[&str]) -> String {
    let mut all = vec!["token", "--dir", dir.to_str().unwrap()];
    all.extend_from_slice(args);
    let (code, out, err) = run_portcullis(&all);
    assert_eq!(code, 0, "portcullis token {args:?}: {err}");
    out.trim().to_owned()
}

fn service(dir: &Path, name: &str, args: &[String]) -> Proc {
    let check = Command::new("python3").args(["-c", "import jwt, cryptography"]).output().expect("python3");
    assert!(check.status.success(), "PyJWT is not installed: pip install 'pyjwt[crypto]' (CI installs it in .ci/run)");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/upstream/exchange_services.py");
    let mut cmd = Command::new("python3");
    cmd.arg(script).args(args);
    let mut p = Proc::spawn(name, &mut cmd, dir.join(format!("{name}.log")));
    let port: u16 = args[1].parse().unwrap();
    p.wait_serving(Duration::from_secs(10), || http(port, "GET", "x", "/", &[]).ok());
    p
}

#[test]
fn a_service_calls_another_on_behalf_of_the_user_through_the_exchange_and_every_bad_exchange_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("policies");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("shop.yaml"), resources()).unwrap();
    let gw_port = free_port();
    let gw = format!("http://127.0.0.1:{gw_port}");
    let portcullis = start_local_with(
        &dir,
        gw_port,
        tmp.path().join("portcullis.log"),
        &["--cluster-issuer-key", "kube-system/cluster", "--issuer-url", &gw],
    );
    let discovery = http(gw_port, "GET", "gateway", "/.well-known/openid-configuration", &[]).unwrap().json();
    assert_eq!(discovery["token_endpoint"], format!("{gw}/oauth2/token"));

    // Tokens: the user's from their identity provider; each workload's projected ServiceAccount
    // token, for the gateway's audience, from the (stand-in) cluster issuer.
    let user = token(
        &dir,
        &[
            "--key",
            "shop/idp",
            "--iss",
            "https://id.shop.example",
            "--aud",
            "shop",
            "--sub",
            "alice",
            "--claims",
            r#"{"email":"alice@shop.example","scope":"orders:write"}"#,
        ],
    );
    let sa = |key: &str, account: &str, aud: &str| token(&dir, &["--key", key, "--service-account", account, "--aud", aud, "--ttl", "10m"]);
    let checkout_sa = sa("kube-system/cluster", "shop/checkout", &gw);
    let sa_file = tmp.path().join("checkout.token");
    std::fs::write(&sa_file, &checkout_sa).unwrap();

    let (b_port, a_port) = (free_port(), free_port());
    let _b = service(tmp.path(), "orders", &["b".into(), b_port.to_string(), gw.clone()]);
    let _a = service(
        tmp.path(),
        "checkout",
        &["a".into(), a_port.to_string(), gw.clone(), sa_file.display().to_string(), format!("http://127.0.0.1:{b_port}")],
    );
    let (_nginx, nginx_port) = start_nginx(&tmp.path().join("nginx"), gw_port, a_port);

    // user → NGINX → (Portcullis mints A's token) → A → exchange → B.
    let resp = http(nginx_port, "GET", "shop.example", "/checkout", &[("Authorization", &format!("Bearer {user}"))]).unwrap();
    assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&resp.body));
    let answer = resp.json();
    assert_eq!(answer["user"], "alice");
    assert_eq!(answer["orders"]["sub"], "alice", "B serves the user A acts for");
    assert_eq!(answer["orders"]["email"], "alice@shop.example");
    assert_eq!(answer["orders"]["act"], json!({"sub": A}));
    assert_eq!(answer["orders"]["scope"], Value::Null, "a claim the TokenExchangePolicy does not carry over never reaches B");
    // Without a user token nothing reaches A.
    assert_eq!(http(nginx_port, "GET", "shop.example", "/checkout", &[]).unwrap().status, 401);

    // What A holds is no key to B: B takes only tokens addressed to it.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let for_a = token(&dir, &["--key", "shop/internal", "--iss", &gw, "--aud", A, "--sub", "alice"]);
    for t in [&user, &for_a, &checkout_sa] {
        assert_eq!(http(b_port, "GET", "b", "/orders", &[("Authorization", &format!("Bearer {t}"))]).unwrap().status, 401);
    }

    // The workload's own token on a route of a `kubernetes` issuer: its account decides.
    let ask = |t: &str| http(gw_port, "GET", "orders.shop.svc", "/ext_authz/orders", &[("Authorization", &format!("Bearer {t}"))]).unwrap();
    let allowed = ask(&sa("kube-system/cluster", "shop/checkout", "orders.shop.svc"));
    assert_eq!((allowed.status, allowed.header("x-caller")), (200, Some("checkout")));
    assert_eq!(ask(&sa("kube-system/cluster", "shop/web", "orders.shop.svc")).status, 403);
    assert_eq!(ask(&sa("kube-system/cluster", "shop/checkout", &gw)).status, 401, "a token for another audience");
    assert_eq!(ask(&sa("kube-system/other-cluster", "shop/checkout", "orders.shop.svc")).status, 401, "another cluster's token");

    // Every bad exchange of the issue's list: an OAuth error, never a token.
    let expired = token(
        &dir,
        &[
            "--key",
            "shop/internal",
            "--iss",
            &gw,
            "--aud",
            A,
            "--sub",
            "alice",
            "--claims",
            &json!({"iat": now - 900, "exp": now - 300}).to_string(),
        ],
    );
    let foreign = token(&dir, &["--key", "shop/idp", "--iss", &gw, "--aud", A, "--sub", "alice"]);
    let for_web = token(&dir, &["--key", "shop/internal", "--iss", &gw, "--aud", "system:serviceaccount:shop:web", "--sub", "alice"]);
    let other_cluster = sa("kube-system/other-cluster", "shop/checkout", &gw);
    let wrong_aud_actor = sa("kube-system/cluster", "shop/checkout", "https://kubernetes.default.svc");
    let web_actor = sa("kube-system/cluster", "shop/web", &gw);
    let urlenc = "application/x-www-form-urlencoded";
    let cases: Vec<(&str, String, &str, u16, &str)> = vec![
        ("expired subject token", exchange_form(&expired, &checkout_sa, B), urlenc, 400, "invalid_grant"),
        ("foreign subject token", exchange_form(&foreign, &checkout_sa, B), urlenc, 400, "invalid_grant"),
        ("subject token minted for another workload", exchange_form(&for_web, &checkout_sa, B), urlenc, 400, "invalid_grant"),
        ("the user's own token as subject", exchange_form(&user, &checkout_sa, B), urlenc, 400, "invalid_grant"),
        ("actor token of another cluster", exchange_form(&for_a, &other_cluster, B), urlenc, 400, "unauthorized_client"),
        ("actor token for another audience", exchange_form(&for_a, &wrong_aud_actor, B), urlenc, 400, "unauthorized_client"),
        ("actor not allowed", exchange_form(&for_a, &web_actor, B), urlenc, 400, "unauthorized_client"),
        ("audience not allowed", exchange_form(&for_a, &checkout_sa, "system:serviceaccount:shop:billing"), urlenc, 400, "invalid_target"),
        ("its own audience", exchange_form(&for_a, &checkout_sa, A), urlenc, 400, "invalid_target"),
        ("JSON, not a form", json!({"subject_token": for_a}).to_string(), "application/json", 400, "invalid_request"),
        ("a parameter twice", format!("{}&audience=x", exchange_form(&for_a, &checkout_sa, B)), urlenc, 400, "invalid_request"),
        ("oversized", format!("{}&pad={}", exchange_form(&for_a, &checkout_sa, B), "x".repeat(64 * 1024)), urlenc, 400, "invalid_request"),
        ("another grant type", "grant_type=client_credentials".into(), urlenc, 400, "unsupported_grant_type"),
    ];
    for (what, body, content_type, status, error) in &cases {
        let r = post(gw_port, "/oauth2/token", content_type, body);
        assert_eq!((r.status, r.json()["error"].as_str()), (*status, Some(*error)), "{what}: {}", String::from_utf8_lossy(&r.body));
        assert!(r.json().get("access_token").is_none(), "{what}");
        assert_eq!(r.header("cache-control"), Some("no-store"), "{what}");
    }
    let get = http(gw_port, "GET", "gateway", "/oauth2/token", &[]).unwrap();
    assert_eq!((get.status, get.json()["error"].as_str(), get.header("allow")), (405, Some("invalid_request"), Some("POST")));

    // A good exchange straight at the endpoint: RFC 8693's answer.
    let r = post(gw_port, "/oauth2/token", urlenc, &exchange_form(&for_a, &checkout_sa, B));
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let body = r.json();
    assert_eq!(body["issued_token_type"], "urn:ietf:params:oauth:token-type:jwt");
    assert_eq!(body["token_type"], "Bearer");
    assert!(body["expires_in"].as_i64().unwrap() <= 300);

    let metrics = String::from_utf8(http(gw_port, "GET", "gateway", "/metrics", &[]).unwrap().body).unwrap();
    for (result, at_least) in
        [("issued", 2), ("invalid_grant", 4), ("unauthorized_client", 3), ("invalid_target", 2), ("invalid_request", 4)]
    {
        let line = metrics
            .lines()
            .find(|l| l.starts_with(&format!("portcullis_token_exchanges_total{{result=\"{result}\"}}")))
            .unwrap_or_else(|| panic!("{result} not counted"));
        let n: u64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        assert!(n >= at_least, "{line}");
    }
    // No token in any log line of the gateway.
    let log = portcullis.log_text();
    assert!(log.contains("token exchanged"), "{log}");
    for t in [&user, &for_a, &checkout_sa, &expired, &foreign, &other_cluster, &web_actor] {
        let signature = t.rsplit('.').next().unwrap();
        assert!(!log.contains(signature), "a token in the gateway's log");
    }
}
