//! The token endpoint (HTTP I/O, thin): `POST /oauth2/token` with an RFC 8693 token exchange
//! form, decided by [`Engine::exchange`](crate::decide::Engine::exchange). Services call it
//! directly (in-cluster), not through the proxy in front of the gateway.

use std::time::Duration;

use bytes::Bytes;
use http::header::{ALLOW, CACHE_CONTROL, CONTENT_TYPE, PRAGMA};
use http::{HeaderValue, Method, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde_json::json;

use super::{Gateway, not_ready, unix_now};
use crate::decide::exchange::{ExchangeError, MAX_FORM_BYTES, parse_form};
use crate::plumbing::http::reply;

pub const TOKEN_PATH: &str = "/oauth2/token";
/// A client that takes longer to send two tokens is not waited for.
const BODY_TIMEOUT: Duration = Duration::from_secs(5);

impl Gateway {
    pub(super) async fn token_exchange(&self, req: hyper::Request<Incoming>) -> Response<Full<Bytes>> {
        let Some(slot) = self.slot.load_full() else { return not_ready() };
        let result = match read_form(req).await {
            Ok(body) => parse_form(&body).and_then(|r| slot.engine.exchange(&r, unix_now())),
            Err(e) => Err(e),
        };
        match result {
            Ok(issued) => {
                self.metrics.token_exchanges.with_label_values(&["issued"]).inc();
                tracing::info!(policy = %issued.policy, actor = %issued.actor, expires_in = issued.expires_in, "token exchanged");
                answer(StatusCode::OK, issued.body())
            }
            Err(e) => {
                self.metrics.token_exchanges.with_label_values(&[e.code()]).inc();
                tracing::debug!(error = e.code(), description = e.description(), "token exchange refused");
                let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_REQUEST);
                let mut resp = answer(status, json!({"error": e.code(), "error_description": e.description()}));
                if matches!(&e, ExchangeError::InvalidRequest(d) if d == NOT_POST) {
                    *resp.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
                    resp.headers_mut().insert(ALLOW, HeaderValue::from_static("POST"));
                }
                resp
            }
        }
    }
}

const NOT_POST: &str = "the token endpoint takes POST";

/// The body of a form POST, bounded in bytes and time; anything else is an `invalid_request`.
async fn read_form(req: hyper::Request<Incoming>) -> Result<Bytes, ExchangeError> {
    let bad = |d: &str| ExchangeError::InvalidRequest(d.to_owned());
    if req.method() != Method::POST {
        return Err(bad(NOT_POST));
    }
    let form = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(';').next().is_some_and(|m| m.trim().eq_ignore_ascii_case("application/x-www-form-urlencoded")));
    if !form || req.headers().get_all(CONTENT_TYPE).iter().count() != 1 {
        return Err(bad("the body must be application/x-www-form-urlencoded"));
    }
    let declared = req.headers().get(http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_FORM_BYTES as u64) {
        return Err(bad("request too large"));
    }
    match tokio::time::timeout(BODY_TIMEOUT, Limited::new(req.into_body(), MAX_FORM_BYTES).collect()).await {
        Ok(Ok(body)) => Ok(body.to_bytes()),
        Ok(Err(_)) => Err(bad("request too large, or its body could not be read")),
        Err(_) => Err(bad("the body was not sent in time")),
    }
}

fn answer(status: StatusCode, body: serde_json::Value) -> Response<Full<Bytes>> {
    let mut resp = reply(status, "application/json", Bytes::from(body.to_string()));
    resp.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp.headers_mut().insert(PRAGMA, HeaderValue::from_static("no-cache"));
    resp
}
