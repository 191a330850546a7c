//! Envoy's gRPC external authorization (`envoy.service.auth.v3.Authorization/Check`), as Istio
//! (`envoyExtAuthzGrpc`) and Envoy Gateway (`extAuth.grpc`) call it: the request's attributes
//! arrive structured (method, `:path` as Envoy normalised it, `:authority`, headers), and the
//! answer sets, overwrites and removes upstream headers and query parameters. The decision is
//! the HTTP mode's ([`Gateway::decide`]): one core, two transports. The HTTP/2 side is
//! [`super::grpc_transport`].

use envoy_types::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction;
use envoy_types::pb::envoy::config::core::v3::{HeaderValue, HeaderValueOption};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::HttpRequest;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{CheckRequest, CheckResponse, DeniedHttpResponse, OkHttpResponse};
use envoy_types::pb::envoy::r#type::v3::{HttpStatus, StatusCode as HttpCode};
use envoy_types::pb::google::protobuf::{ListValue, Struct, Value as PbValue, value::Kind};
use envoy_types::pb::google::rpc::Status as RpcStatus;
use http::{HeaderMap, HeaderName};
use serde_json::{Value, json};

use super::{Gateway, Slot, www_authenticate};
use crate::decide::{Decision, Denied, Request, Verdict};

/// gRPC status codes (google.rpc.Code): those Envoy reads in a Check's answer, and the
/// transport's own.
pub(super) mod code {
    pub const OK: i32 = 0;
    pub const INVALID_ARGUMENT: i32 = 3;
    pub const DEADLINE_EXCEEDED: i32 = 4;
    pub const PERMISSION_DENIED: i32 = 7;
    pub const RESOURCE_EXHAUSTED: i32 = 8;
    pub const UNIMPLEMENTED: i32 = 12;
    pub const INTERNAL: i32 = 13;
    pub const UNAVAILABLE: i32 = 14;
    pub const UNAUTHENTICATED: i32 = 16;
}

impl Gateway {
    /// Answers one Check: the same decision as the HTTP endpoints, in Envoy's terms.
    pub async fn check(&self, request: CheckRequest) -> CheckResponse {
        let Some(slot) = self.slot.load_full() else {
            return denied(
                code::UNAVAILABLE,
                503,
                "no config loaded yet",
                &[],
                json!({"error": "unavailable", "description": "no config loaded yet"}),
            );
        };
        let Some(mut attributes) = request.attributes else {
            self.count_unusable();
            return bad_request("the CheckRequest has no attributes");
        };
        // Set per route by the proxy's configuration (Envoy Gateway's SecurityPolicy
        // `contextExtensions`), never by the client.
        let routed = attributes.context_extensions.remove(crate::decide::ROUTED_POLICY);
        let Some(http) = attributes.request.and_then(|r| r.http) else {
            self.count_unusable();
            return bad_request("the CheckRequest has no HTTP request attributes");
        };
        let headers = match header_map(&http) {
            Ok(h) => h,
            Err(e) => {
                self.count_unusable();
                return bad_request(&e);
            }
        };
        // Sign-in's callback and sign-out are answered here, as over HTTP.
        if let Some(resp) =
            super::signin::endpoint(&slot.engine, &http.method, &http.host, &http.path, &headers, &self.jwks.post, &self.refreshes).await
        {
            return from_response(resp).await;
        }
        let req = Request {
            method: &http.method,
            host: &http.host,
            target: &http.path,
            headers: &headers,
            path_mode: self.path_mode,
            routed: routed.as_deref(),
        };
        match self.decide(&slot, &req, true).await {
            Ok(Decision::Allow(a)) => allowed(&slot, a),
            Ok(Decision::Deny(d)) => deny(slot.engine.realm(), &d),
            Err(e) => bad_request(&e.to_string()),
        }
    }
}

/// The request headers Envoy sent: one entry per header line with `encode_raw_headers: true`
/// (repeats kept, so two tokens are seen as two), else its merged map. Pseudo-headers are
/// Envoy's attributes, not headers.
fn header_map(http: &HttpRequest) -> Result<HeaderMap, String> {
    let mut out = HeaderMap::new();
    let mut add = |key: &str, value: &[u8]| -> Result<(), String> {
        if key.starts_with(':') {
            return Ok(());
        }
        let name = HeaderName::from_bytes(key.as_bytes()).map_err(|_| format!("header name {key:?} is not valid"))?;
        let value = http::HeaderValue::from_bytes(value).map_err(|_| format!("header {key} has an invalid value"))?;
        out.append(name, value);
        Ok(())
    };
    match &http.header_map {
        Some(raw) => {
            for h in &raw.headers {
                let value = if h.raw_value.is_empty() { h.value.as_bytes() } else { h.raw_value.as_slice() };
                add(&h.key, value)?;
            }
        }
        None => {
            for (k, v) in &http.headers {
                add(k, v.as_bytes())?;
            }
        }
    }
    Ok(out)
}

fn header(key: &str, value: &[u8]) -> HeaderValueOption {
    let header = match std::str::from_utf8(value) {
        Ok(text) => HeaderValue { key: key.to_owned(), value: text.to_owned(), raw_value: Vec::new() },
        Err(_) => HeaderValue { key: key.to_owned(), value: String::new(), raw_value: value.to_vec() },
    };
    HeaderValueOption { header: Some(header), append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32, ..Default::default() }
}

fn allowed(slot: &Slot, a: crate::decide::Allowed) -> CheckResponse {
    let mut ok = OkHttpResponse::default();
    for (name, value) in &a.headers {
        ok.headers.push(header(name.as_str(), value.as_bytes()));
    }
    match &a.authorization {
        Some(v) => ok.headers.push(header("authorization", v.as_bytes())),
        None => ok.headers_to_remove.push("authorization".into()),
    }
    ok.headers_to_remove.extend(a.strip.iter().map(|h| h.as_str().to_owned()));
    ok.query_parameters_to_remove = a.strip_query.clone();
    // A refreshed session: Envoy adds these to the response the browser gets.
    for c in &a.set_cookies {
        let mut cookie = header("set-cookie", c.as_bytes());
        cookie.append_action = HeaderAppendAction::AppendIfExistsOrAdd as i32;
        ok.response_headers_to_add.push(cookie);
    }
    // For Envoy's RBAC filter and access logs (namespace envoy.filters.http.ext_authz), built
    // straight from the claims (a copy of them first cost a map per request).
    let text = |s: &str| PbValue { kind: Some(Kind::StringValue(s.to_owned())) };
    let mut meta = Struct::default();
    meta.fields.insert("policy".into(), text(slot.engine.policy_key(a.route)));
    meta.fields.insert("rule".into(), text(slot.engine.rule_name(a.route)));
    if let Some(caller) = &a.caller {
        for claim in ["sub", "iss"] {
            if let Some(v) = caller.claims.get(claim) {
                meta.fields.insert(claim.into(), to_value(v));
            }
        }
        meta.fields.insert("claims".into(), to_value(&caller.claims));
    }
    if let Some(Verdict::WouldDeny { reason, .. }) = &a.audit {
        meta.fields.insert("audit_would_deny".into(), text(reason.as_str()));
    }
    CheckResponse {
        status: Some(RpcStatus { code: code::OK, ..Default::default() }),
        dynamic_metadata: Some(meta),
        http_response: Some(HttpResponse::OkResponse(ok)),
    }
}

fn deny(realm: &str, d: &Denied) -> CheckResponse {
    let status = d.reason.status();
    let grpc = match status {
        401 => code::UNAUTHENTICATED,
        400 => code::INVALID_ARGUMENT,
        503 => code::UNAVAILABLE,
        _ => code::PERMISSION_DENIED,
    };
    let challenge = www_authenticate(realm, d);
    let mut extra: Vec<(&str, &str)> = challenge.as_deref().map(|c| vec![("www-authenticate", c)]).unwrap_or_default();
    // Sign-in: Envoy sends the browser on, with the login cookie.
    if let Some(r) = &d.redirect {
        extra.push(("location", &r.location));
        extra.extend(r.set_cookies.iter().map(|c| ("set-cookie", c.as_str())));
    }
    denied(grpc, status, d.reason.as_str(), &extra, super::deny_body(d))
}

fn bad_request(why: &str) -> CheckResponse {
    denied(code::INVALID_ARGUMENT, 400, why, &[], super::bad_request_body(why))
}

/// An HTTP answer of the authorizer (a sign-in callback's redirect or page) as Envoy's denied
/// response: the browser gets its status, headers and body.
async fn from_response(resp: http::Response<http_body_util::Full<bytes::Bytes>>) -> CheckResponse {
    use http_body_util::BodyExt;
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let mut denied = DeniedHttpResponse {
        status: Some(HttpStatus { code: HttpCode::try_from(i32::from(parts.status.as_u16())).unwrap_or(HttpCode::Forbidden) as i32 }),
        body: String::from_utf8_lossy(&body).into_owned(),
        ..Default::default()
    };
    for (k, v) in &parts.headers {
        denied.headers.push(header(k.as_str(), v.as_bytes()));
    }
    let grpc = if parts.status.is_server_error() { code::UNAVAILABLE } else { code::PERMISSION_DENIED };
    CheckResponse {
        status: Some(RpcStatus { code: grpc, message: "sign-in callback".to_owned(), ..Default::default() }),
        dynamic_metadata: None,
        http_response: Some(HttpResponse::DeniedResponse(denied)),
    }
}

/// A denial: Envoy answers the client `http` with these headers and body.
fn denied(grpc: i32, http: u16, message: &str, extra: &[(&str, &str)], body: Value) -> CheckResponse {
    let mut resp = DeniedHttpResponse {
        status: Some(HttpStatus { code: HttpCode::try_from(i32::from(http)).unwrap_or(HttpCode::Forbidden) as i32 }),
        body: body.to_string(),
        ..Default::default()
    };
    resp.headers.push(header("content-type", b"application/json"));
    resp.headers.push(header("cache-control", b"no-store"));
    for (k, v) in extra {
        resp.headers.push(header(k, v.as_bytes()));
    }
    CheckResponse {
        status: Some(RpcStatus { code: grpc, message: message.to_owned(), ..Default::default() }),
        dynamic_metadata: None,
        http_response: Some(HttpResponse::DeniedResponse(resp)),
    }
}

fn to_struct(map: &serde_json::Map<String, Value>) -> Struct {
    Struct { fields: map.iter().map(|(k, v)| (k.clone(), to_value(v))).collect() }
}

fn to_value(v: &Value) -> PbValue {
    let kind = match v {
        Value::Null => Kind::NullValue(0),
        Value::Bool(b) => Kind::BoolValue(*b),
        Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        Value::String(s) => Kind::StringValue(s.clone()),
        Value::Array(items) => Kind::ListValue(ListValue { values: items.iter().map(to_value).collect() }),
        Value::Object(m) => Kind::StructValue(to_struct(m)),
    };
    PbValue { kind: Some(kind) }
}

#[cfg(test)]
#[path = "grpc_tests.rs"]
mod tests;
