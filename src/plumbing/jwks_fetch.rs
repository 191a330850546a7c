//! Fetching a JWKS over HTTP(S): the client (public roots plus a private CA), and one fetch with
//! its limits. The gateway refreshes key sets with it; the controller probes issuers with it.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

const MAX_JWKS_BYTES: usize = 1024 * 1024;
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

pub type HttpClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Empty<Bytes>>;
/// The same, for requests with a body (an OpenID provider's token endpoint).
pub type PostClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// An HTTP(S) client that trusts the Mozilla roots plus `extra_roots` (an identity provider
/// behind a private CA).
pub fn http_client(extra_roots: &[CertificateDer<'static>]) -> HttpClient {
    client(extra_roots)
}

pub fn post_client(extra_roots: &[CertificateDer<'static>]) -> PostClient {
    client(extra_roots)
}

fn client<B>(extra_roots: &[CertificateDer<'static>]) -> Client<hyper_rustls::HttpsConnector<HttpConnector>, B>
where
    B: hyper::body::Body + Send + 'static + Unpin,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
    let (added, ignored) = roots.add_parsable_certificates(extra_roots.iter().cloned());
    if ignored > 0 {
        tracing::warn!(added, ignored, "some extra CA certificates could not be used");
    }
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("the aws-lc-rs provider supports the default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let https = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls).https_or_http().enable_http1().build();
    Client::builder(TokioExecutor::new()).build(https)
}

/// CA certificates (PEM) to trust for JWKS URLs besides the public roots.
pub fn read_ca_file(path: &std::path::Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("reading {}: {e}", path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{} holds no PEM certificate", path.display()));
    }
    Ok(certs)
}

/// Fetches a JSON document (at most `max` bytes); the error says what went wrong without
/// echoing the body.
pub async fn fetch_json(client: &HttpClient, uri: &str, max: usize) -> Result<serde_json::Value, String> {
    let parsed: http::Uri = uri.parse().map_err(|e| format!("bad URL: {e}"))?;
    let req = http::Request::get(parsed).header("accept", "application/json").body(Empty::new()).map_err(|e| e.to_string())?;
    let resp =
        tokio::time::timeout(FETCH_TIMEOUT, client.request(req)).await.map_err(|_| "timed out".to_owned())?.map_err(|e| e.to_string())?;
    if !resp.status().is_success() {
        return Err(format!("HTTP {}", resp.status()));
    }
    json_body(resp, max).await
}

/// POSTs a form and reads the JSON answer (at most `max` bytes), whatever its status: an OAuth
/// error is a JSON body too. The error never echoes the body.
pub async fn post_form(
    client: &PostClient,
    uri: &str,
    form: String,
    authorization: Option<&str>,
    max: usize,
) -> Result<(http::StatusCode, serde_json::Value), String> {
    let parsed: http::Uri = uri.parse().map_err(|e| format!("bad URL: {e}"))?;
    let mut req =
        http::Request::post(parsed).header("accept", "application/json").header("content-type", "application/x-www-form-urlencoded");
    if let Some(a) = authorization {
        req = req.header("authorization", a);
    }
    let req = req.body(Full::new(Bytes::from(form))).map_err(|e| e.to_string())?;
    let resp =
        tokio::time::timeout(FETCH_TIMEOUT, client.request(req)).await.map_err(|_| "timed out".to_owned())?.map_err(|e| e.to_string())?;
    let status = resp.status();
    Ok((status, json_body(resp, max).await?))
}

/// A GET with a bearer token (an OpenID provider's userinfo), its status and JSON body.
pub async fn get_json_bearer(
    client: &PostClient,
    uri: &str,
    token: &str,
    max: usize,
) -> Result<(http::StatusCode, serde_json::Value), String> {
    let parsed: http::Uri = uri.parse().map_err(|e| format!("bad URL: {e}"))?;
    let req = http::Request::get(parsed)
        .header("accept", "application/json")
        .header("authorization", format!("Bearer {token}"))
        .body(Full::new(Bytes::new()))
        .map_err(|_| "the access token is not a valid header value".to_owned())?;
    let resp =
        tokio::time::timeout(FETCH_TIMEOUT, client.request(req)).await.map_err(|_| "timed out".to_owned())?.map_err(|e| e.to_string())?;
    let status = resp.status();
    Ok((status, json_body(resp, max).await?))
}

async fn json_body(resp: http::Response<hyper::body::Incoming>, max: usize) -> Result<serde_json::Value, String> {
    let body = tokio::time::timeout(FETCH_TIMEOUT, Limited::new(resp.into_body(), max).collect())
        .await
        .map_err(|_| "timed out reading the body".to_owned())?
        .map_err(|e| format!("reading the body: {e}"))?
        .to_bytes();
    serde_json::from_slice(&body).map_err(|e| format!("not JSON: {e}"))
}

/// Fetches and parses a JWKS; the error says what went wrong without echoing the body.
pub async fn fetch_jwks(client: &HttpClient, uri: &str) -> Result<(Vec<crate::keys::VerifyKey>, Vec<String>), String> {
    let doc = fetch_json(client, uri, MAX_JWKS_BYTES).await?;
    let (keys, skipped) = crate::keys::parse_jwks(&doc)?;
    if keys.is_empty() {
        return Err(format!(
            "no usable signing key ({})",
            if skipped.is_empty() { "empty key set".to_owned() } else { skipped.join("; ") }
        ));
    }
    Ok((keys, skipped))
}
