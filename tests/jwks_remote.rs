//! Remote JWKS (`jwks.uri`) over real HTTP: fetched at start, refetched once (rate-limited) on an
//! unknown kid, and on failure — an error, or a set without usable keys — the last good keys stay.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::IdpServer;
use portcullis::api::SigningAlgorithm;
use portcullis::gateway::metrics::Metrics;
use portcullis::gateway::{Endpoints, Gateway, serve};
use portcullis::testkit::{TestIssuer, compile_yaml};
use serde_json::json;

const ISS: &str = "https://idp.test";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_keys_are_fetched_refetched_on_unknown_kid_and_kept_on_failure() {
    let idp = IdpServer::start();
    let a = TestIssuer::new(ISS, SigningAlgorithm::ES256);
    let b = TestIssuer::new(ISS, SigningAlgorithm::RS256);
    let c = TestIssuer::new(ISS, SigningAlgorithm::EdDSA);
    idp.serve(200, &[&a]);

    let yaml = format!(
        "name: api\nspec:\n  issuers: [{{ issuer: \"{ISS}\", audiences: [api], algorithms: [ES256, RS256, EdDSA], jwks: {{ uri: \"http://127.0.0.1:{}/jwks\", refreshInterval: 1h }} }}]\n  rules: [{{ name: all, match: {{ paths: [{{ prefix: / }}] }} }}]\n",
        idp.port
    );
    let compiled = compile_yaml("default", &yaml, &Default::default());
    let gateway = Gateway::new("https://gw.test", Metrics::new(), Duration::from_millis(800));
    let engine = gateway.apply(compiled.config, &Default::default()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (_stop, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(serve(listener, gateway.clone(), Endpoints::All, stop_rx, Duration::from_secs(1)));

    let ask = move |issuer: &TestIssuer| {
        let auth = format!("Bearer {}", issuer.token("api", now(), json!({})));
        async move {
            tokio::task::spawn_blocking(move || common::http(port, "GET", "h", "/ext_authz/x", &[("Authorization", &auth)]).unwrap().status)
                .await
                .unwrap()
        }
    };

    // Fetched at start.
    assert!(portcullis::gateway::jwks::first_fetched(&engine, Duration::from_secs(2)).await, "the JWKS was fetched");
    assert_eq!(ask(&a).await, 200);
    let hits_after_start = idp.hits.load(Ordering::SeqCst);

    // The IdP rotates in a new key: the unknown kid triggers one refetch and the request passes.
    tokio::time::sleep(Duration::from_millis(900)).await;
    idp.serve(200, &[&a, &b]);
    assert_eq!(ask(&b).await, 200);
    assert_eq!(idp.hits.load(Ordering::SeqCst), hits_after_start + 1);

    // Another new key right away: the refetch is rate-limited, so the token is refused ...
    idp.serve(200, &[&a, &b, &c]);
    assert_eq!(ask(&c).await, 401);
    assert_eq!(idp.hits.load(Ordering::SeqCst), hits_after_start + 1, "no second fetch inside the rate limit");
    // ... and accepted once the limit has passed.
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert_eq!(ask(&c).await, 200);

    // The IdP fails, then answers a set without any usable key: the last good keys stay.
    let d = TestIssuer::new(ISS, SigningAlgorithm::ES256);
    for (status, body) in [(500, "oops".to_owned()), (200, json!({"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}).to_string())] {
        tokio::time::sleep(Duration::from_millis(900)).await;
        idp.answer(status, body);
        let before = idp.hits.load(Ordering::SeqCst);
        assert_eq!(ask(&d).await, 401, "an unknown kid is still unknown");
        assert_eq!(idp.hits.load(Ordering::SeqCst), before + 1);
        assert_eq!(ask(&a).await, 200, "known keys keep working after a failed fetch");
        assert_eq!(ask(&c).await, 200);
    }
    let metrics = gateway.metrics.render();
    let uri = format!("http://127.0.0.1:{}/jwks", idp.port);
    assert!(metrics.contains(&format!(r#"portcullis_jwks_fetches_total{{result="failure",uri="{uri}"}} 2"#)), "{metrics}");
    assert!(metrics.contains(&format!(r#"portcullis_jwks_keys{{uri="{uri}"}} 3"#)), "{metrics}");
}

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

fn openssl(dir: &std::path::Path, args: &[&str]) {
    let out = std::process::Command::new("openssl").args(args).current_dir(dir).output().expect("openssl (apt-get install openssl)");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A private CA and a certificate for 127.0.0.1 signed by it.
fn private_ca(dir: &std::path::Path) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=Test CA",
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "idp.key",
            "-out",
            "idp.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
    );
    std::fs::write(
        dir.join("san.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "idp.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "idp.pem",
            "-days",
            "2",
            "-extfile",
            "san.ext",
        ],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_keys_over_https_from_a_private_ca() {
    let dir = tempfile::tempdir().unwrap();
    private_ca(dir.path());
    let issuer = TestIssuer::new(ISS, SigningAlgorithm::ES256);
    std::fs::write(dir.path().join("jwks"), issuer.jwks().to_string()).unwrap();
    let port = common::free_port();
    let server = format!(
        "import http.server, ssl\nctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)\nctx.load_cert_chain('idp.pem', 'idp.key')\n\
         httpd = http.server.HTTPServer(('127.0.0.1', {port}), http.server.SimpleHTTPRequestHandler)\nhttpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)\nhttpd.serve_forever()\n"
    );
    let mut cmd = std::process::Command::new("python3");
    cmd.args(["-c", &server]).current_dir(dir.path());
    let _idp = common::Proc::spawn("https idp", &mut cmd, dir.path().join("idp.log"));

    let yaml = format!(
        "name: api\nspec:\n  issuers: [{{ issuer: \"{ISS}\", audiences: [api], algorithms: [ES256], jwks: {{ uri: \"https://127.0.0.1:{port}/jwks\" }} }}]\n  rules: [{{ name: all, match: {{ paths: [{{ prefix: / }}] }} }}]\n"
    );
    let compiled = compile_yaml("default", &yaml, &Default::default());
    let token = issuer.token("api", now(), json!({}));
    let mut headers = http::HeaderMap::new();
    headers.insert("authorization", format!("Bearer {token}").parse().unwrap());
    let decide = |g: &Gateway| {
        let engine = g.engine().unwrap();
        engine.decide(
            &portcullis::decide::Request {
                method: "GET",
                host: "h",
                target: "/",
                headers: &headers,
                path_mode: Default::default(),
                routed: None,
            },
            now(),
        )
    };
    let wait_loaded = async |g: &Gateway| {
        for _ in 0..150 {
            if g.engine().unwrap().remote_key_sets()[0].state().loaded {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    };

    // Trusting the private CA: the keys load over TLS and the token verifies.
    let roots = portcullis::plumbing::jwks_fetch::read_ca_file(&dir.path().join("ca.pem")).unwrap();
    let trusting = Gateway::with_options("https://gw", Metrics::new(), Duration::from_millis(100), &roots, Default::default());
    trusting.apply(compiled.config.clone(), &Default::default()).unwrap();
    assert!(wait_loaded(&trusting).await, "JWKS over https with the private CA: {}", trusting.metrics.render());
    assert!(decide(&trusting).is_allow());

    // The public roots alone do not trust that server: nothing loads, tokens get 503, not 200.
    let strict = Gateway::new("https://gw", Metrics::new(), Duration::from_millis(100));
    strict.apply(compiled.config, &Default::default()).unwrap();
    assert!(!wait_loaded(&strict).await);
    match decide(&strict) {
        portcullis::decide::Decision::Deny(d) => assert_eq!(d.reason, portcullis::decide::DenyReason::KeysUnavailable),
        other => panic!("{other:?}"),
    }
    assert!(strict.metrics.render().contains("portcullis_jwks_fetches_total{result=\"failure\""));
}
