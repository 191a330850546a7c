//! The HTTP/2 side of gRPC Check, with a real HTTP/2 client (Envoy itself in tests/).

use std::collections::BTreeMap;

use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request as AttrRequest};
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, check_response::HttpResponse};
use tokio::net::TcpStream;

use super::*;
use crate::gateway::metrics::Metrics;
use crate::testkit::compile_yaml;

fn gateway() -> Arc<Gateway> {
    let yaml = "name: open\nnamespace: shop\nspec:\n  hosts: [api.test]\n  rules: [{ name: health, match: { paths: [{ exact: /healthz }] }, public: true }]\n";
    let gw = Gateway::new("https://gw.test", Metrics::new(), Duration::from_secs(1));
    gw.apply(compile_yaml("default", yaml, &BTreeMap::new()).config, &BTreeMap::new()).unwrap();
    gw
}

fn check_request(path: &str) -> CheckRequest {
    let http = HttpRequest { method: "GET".into(), path: path.into(), host: "api.test".into(), ..Default::default() };
    CheckRequest {
        attributes: Some(AttributeContext { request: Some(AttrRequest { http: Some(http), ..Default::default() }), ..Default::default() }),
    }
}

fn framed(message: &[u8]) -> Bytes {
    let mut b = BytesMut::new();
    b.put_u8(0);
    b.put_u32(message.len() as u32);
    b.extend_from_slice(message);
    b.freeze()
}

struct Server {
    port: u16,
    gateway: Arc<Gateway>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<(), String>>,
}

async fn start(limits: Limits, tls: Option<Arc<rustls::ServerConfig>>) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (stop, rx) = watch::channel(false);
    let gw = gateway();
    let task = tokio::spawn(serve(listener, gw.clone(), limits, tls, rx));
    Server { port, gateway: gw, stop, task }
}

type Client = h2::client::SendRequest<Bytes>;

async fn client<T: AsyncRead + AsyncWrite + Unpin + Send + 'static>(io: T) -> Client {
    let (client, conn) = h2::client::handshake(io).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// One call: the gRPC status, and the CheckResponse when there is one.
async fn call(client: &mut Client, path: &str, content_type: &str, body: Bytes) -> (String, Option<CheckResponse>) {
    call_with(client, path, &[("content-type", content_type)], body).await
}

async fn call_with(client: &mut Client, path: &str, headers: &[(&str, &str)], body: Bytes) -> (String, Option<CheckResponse>) {
    let mut request = http::Request::post(format!("http://api.test{path}"));
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let request = request.body(()).unwrap();
    let (response, mut send) = client.clone().ready().await.unwrap().send_request(request, false).unwrap();
    send.send_data(body, true).unwrap();
    let response = response.await.unwrap();
    assert_eq!(response.status(), 200);
    let status_of = |h: &HeaderMap| h.get("grpc-status").map(|v| v.to_str().unwrap().to_owned());
    if let Some(code) = status_of(response.headers()) {
        return (code, None); // trailers-only
    }
    let mut body = response.into_body();
    let mut data = BytesMut::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
        data.extend_from_slice(&chunk);
    }
    let trailers = body.trailers().await.unwrap().expect("trailers");
    let message = frame(&data).unwrap();
    (status_of(&trailers).unwrap(), Some(CheckResponse::decode(message).unwrap()))
}

fn allowed(answer: &CheckResponse) -> bool {
    matches!(answer.http_response, Some(HttpResponse::OkResponse(_))) && answer.status.as_ref().is_some_and(|s| s.code == 0)
}

#[tokio::test]
async fn many_checks_on_one_connection_are_answered_each_with_its_own_decision() {
    let server = start(Limits::default(), None).await;
    let mut c = client(TcpStream::connect(("127.0.0.1", server.port)).await.unwrap()).await;
    let calls = (0..64).map(|i| {
        let mut c = c.clone();
        let path = if i % 2 == 0 { "/healthz" } else { "/admin" };
        async move { (path, call(&mut c, CHECK_PATH, "application/grpc", framed(&check_request(path).encode_to_vec())).await) }
    });
    for (path, (code, answer)) in futures::future::join_all(calls).await {
        let answer = answer.unwrap_or_else(|| panic!("{path}: no message, status {code}"));
        assert_eq!(code, "0", "{path}");
        assert_eq!(allowed(&answer), path == "/healthz", "{path}: {answer:?}");
    }
    // Another call on the same connection afterwards.
    let (code, answer) = call(&mut c, CHECK_PATH, "application/grpc+proto", framed(&check_request("/healthz").encode_to_vec())).await;
    assert!(code == "0" && allowed(&answer.unwrap()));
    server.stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(5), server.task).await.expect("stops").unwrap().unwrap();
}

#[tokio::test]
async fn what_is_not_one_plain_check_request_gets_a_grpc_error_and_no_decision() {
    let server = start(Limits { max_message_bytes: 1024, ..Default::default() }, None).await;
    let mut c = client(TcpStream::connect(("127.0.0.1", server.port)).await.unwrap()).await;
    let good = check_request("/healthz").encode_to_vec();
    let mut compressed = framed(&good).to_vec();
    compressed[0] = 1;
    let mut short = framed(&good).to_vec();
    short.pop();
    let cases: Vec<(&str, &str, Bytes, &str)> = vec![
        ("/envoy.service.auth.v3.Authorization/Other", "application/grpc", framed(&good), "12"),
        (CHECK_PATH, "application/json", framed(&good), "3"),
        (CHECK_PATH, "application/grpc", Bytes::from(compressed), "12"),
        (CHECK_PATH, "application/grpc", Bytes::from(short), "3"),
        (CHECK_PATH, "application/grpc", Bytes::from_static(b"\0\0"), "3"),
        (CHECK_PATH, "application/grpc", framed(b"\xff\xff\xff\xff"), "3"),
        (CHECK_PATH, "application/grpc", framed(&[0u8; 2048]), "8"),
    ];
    for (path, content_type, body, want) in cases {
        let (code, answer) = call(&mut c, path, content_type, body).await;
        assert_eq!((code.as_str(), answer.is_none()), (want, true), "{path} {content_type}");
    }
    // The connection still serves.
    let (code, answer) = call(&mut c, CHECK_PATH, "application/grpc", framed(&good)).await;
    assert!(code == "0" && allowed(&answer.unwrap()));
    // Counted by their own codes.
    let metrics = server.gateway.metrics.render();
    for (code, n) in [("UNIMPLEMENTED", 2), ("INVALID_ARGUMENT", 4), ("RESOURCE_EXHAUSTED", 1), ("OK", 1)] {
        let line = format!("portcullis_grpc_checks_total{{code=\"{code}\"}} {n}");
        assert!(metrics.lines().any(|l| l == line), "{line} in\n{metrics}");
    }
}

#[tokio::test]
async fn over_tls_only_http2_is_offered_and_checks_are_answered() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = crate::testkit::localhost_certificate(dir.path(), "authz");
    assert!(tls_config(&cert, &dir.path().join("missing.pem")).unwrap_err().contains("missing.pem"));
    assert!(tls_config(&key, &key).unwrap_err().contains("no certificate"));
    let server = start(Limits::default(), Some(tls_config(&cert, &key).unwrap())).await;

    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(rustls::pki_types::CertificateDer::from_pem_file(&cert).unwrap()).unwrap();
    let mut config = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(("127.0.0.1", server.port)).await.unwrap();
    let tls = connector.connect("localhost".try_into().unwrap(), tcp).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let mut c = client(tls).await;
    let (code, answer) = call(&mut c, CHECK_PATH, "application/grpc", framed(&check_request("/healthz").encode_to_vec())).await;
    assert!(code == "0" && allowed(&answer.unwrap()));
}

#[tokio::test]
async fn a_slow_decision_is_cut_at_the_deadline_and_a_fast_one_sets_no_timer() {
    let fast = within(Duration::ZERO, async { 7 }).await;
    assert_eq!(fast, Some(7), "ready at once: no deadline applies, even a zero one");
    let slow = within(Duration::from_millis(20), tokio::time::sleep(Duration::from_secs(5))).await;
    assert_eq!(slow, None);
    let waits = within(Duration::from_secs(5), async {
        tokio::task::yield_now().await;
        8
    })
    .await;
    assert_eq!(waits, Some(8));
}

#[tokio::test]
async fn a_peer_that_stops_answering_pings_is_closed_and_one_that_answers_stays() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let keepalive = Duration::from_millis(100);
    let server = start(Limits { keepalive, ..Default::default() }, None).await;
    // A raw HTTP/2 peer: the preface and its SETTINGS, then silence (no SETTINGS ack, no PING
    // answer). The server must close it, not hold it forever.
    let mut raw = TcpStream::connect(("127.0.0.1", server.port)).await.unwrap();
    raw.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0").await.unwrap();
    let mut sink = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), raw.read_to_end(&mut sink)).await;
    assert!(closed.is_ok(), "the silent peer was never closed");
    // A PING frame header: length 8, type 6, no flags, stream 0.
    assert!(sink.windows(9).any(|w| w == [0, 0, 8, 6, 0, 0, 0, 0, 0]), "a PING was sent first");
    // A peer that never says anything: closed too.
    let mut mute = TcpStream::connect(("127.0.0.1", server.port)).await.unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(5), mute.read_to_end(&mut sink)).await;
    assert!(closed.is_ok(), "the mute peer was never closed");
    // A real client answers pings: after several keepalive periods it is still served.
    let mut c = client(TcpStream::connect(("127.0.0.1", server.port)).await.unwrap()).await;
    tokio::time::sleep(keepalive * 5).await;
    let (code, answer) = call(&mut c, CHECK_PATH, "application/grpc", framed(&check_request("/healthz").encode_to_vec())).await;
    assert!(code == "0" && allowed(&answer.unwrap()));
}

#[test]
fn the_callers_grpc_timeout_is_read_and_anything_malformed_ignored() {
    let t = |v: &str| grpc_timeout(&HeaderValue::from_str(v).unwrap());
    assert_eq!(t("2000m"), Some(Duration::from_millis(2000)));
    assert_eq!(t("1S"), Some(Duration::from_secs(1)));
    assert_eq!(t("3M"), Some(Duration::from_secs(180)));
    assert_eq!(t("1H"), Some(Duration::from_secs(3600)));
    assert_eq!(t("250u"), Some(Duration::from_micros(250)));
    assert_eq!(t("99999999n"), Some(Duration::from_nanos(99_999_999)));
    for bad in ["", "m", "123456789m", "10", "10x", "-1S", "1.5S", " 1S"] {
        assert_eq!(t(bad), None, "{bad:?}");
    }
}

/// A decision that has to wait (a refetch of the issuer's keys, for a token signed with a key
/// they do not list, from an IdP that no longer answers) is cut at the caller's `grpc-timeout`,
/// not at the refetch's own 2 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_callers_grpc_timeout_cuts_a_decision_that_waits() {
    use crate::api::SigningAlgorithm;
    use crate::testkit::TestIssuer;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (known, unknown) =
        (TestIssuer::new("https://idp.test", SigningAlgorithm::ES256), TestIssuer::new("https://idp.test", SigningAlgorithm::ES256));
    // The IdP answers its JWKS once, then holds every later connection without a word.
    let idp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let idp_port = idp.local_addr().unwrap().port();
    let jwks = known.jwks().to_string();
    tokio::spawn(async move {
        let mut held = Vec::new();
        for n in 0.. {
            let Ok((mut s, _)) = idp.accept().await else { return };
            if n == 0 {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{jwks}",
                    jwks.len()
                );
                let _ = s.write_all(answer.as_bytes()).await;
            } else {
                held.push(s);
            }
        }
    });
    let yaml = format!(
        "name: api\nnamespace: shop\nspec:\n  hosts: [api.test]\n  issuers: [{{ issuer: \"https://idp.test\", audiences: [api], algorithms: [ES256], jwks: {{ uri: \"http://127.0.0.1:{idp_port}/jwks\" }} }}]\n  rules: [{{ name: all, match: {{ paths: [{{ prefix: / }}] }} }}]\n"
    );
    let gw = Gateway::new("https://gw.test", Metrics::new(), Duration::from_millis(10));
    let engine = gw.apply(compile_yaml("default", &yaml, &BTreeMap::new()).config, &BTreeMap::new()).unwrap();
    assert!(crate::gateway::jwks::first_fetched(&engine, Duration::from_secs(2)).await, "the JWKS was fetched once");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (_stop, rx) = watch::channel(false);
    tokio::spawn(serve(listener, gw, Limits::default(), None, rx));
    let mut c = client(TcpStream::connect(("127.0.0.1", port)).await.unwrap()).await;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let mut request = check_request("/orders");
    let http = request.attributes.as_mut().unwrap().request.as_mut().unwrap().http.as_mut().unwrap();
    http.headers.insert("authorization".into(), format!("Bearer {}", unknown.token("api", now, serde_json::json!({"sub": "a"}))));
    let body = framed(&request.encode_to_vec());
    tokio::time::sleep(Duration::from_millis(50)).await; // past the shortest time between fetches
    let started = std::time::Instant::now();
    let (code, _) = call_with(&mut c, CHECK_PATH, &[("content-type", "application/grpc"), ("grpc-timeout", "200m")], body).await;
    let took = started.elapsed();
    assert_eq!(code, "4", "DEADLINE_EXCEEDED");
    assert!(took < Duration::from_millis(1500), "cut at the caller's 200 ms, not the refetch's 2 s: {took:?}");
}
