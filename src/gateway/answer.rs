//! The answer to an allowed request over HTTP, in the shape each integration's proxy applies:
//! every identity and token-carrying header the upstream receives is decided here
//! (SECURITY.md, invariant 5).

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Response};
use http_body_util::Full;

use super::Profile;
use crate::decide::Allowed;

/// Envoy removes the headers listed here from the request it forwards upstream.
const ENVOY_REMOVE: HeaderName = HeaderName::from_static("x-envoy-auth-headers-to-remove");

/// `carriers`: `cookie` and the other headers besides `Authorization` that carry a token for
/// some policy.
pub fn allowed(profile: Profile, a: Allowed, request: &HeaderMap, carriers: &[HeaderName]) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::new()));
    let h = resp.headers_mut();
    for (name, value) in a.headers {
        h.insert(name, value);
    }
    let header_mode = profile != Profile::EnvoyPrefix;
    match (header_mode, a.authorization) {
        (_, Some(v)) => {
            h.insert(http::header::AUTHORIZATION, v);
        }
        (true, None) => {
            h.insert(http::header::AUTHORIZATION, HeaderValue::from_static(""));
        }
        (false, None) => {}
    }
    if header_mode {
        // Proxies that copy named response headers must overwrite what a client sent, so every
        // identity header is answered, empty when the caller has no value.
        for name in a.strip {
            h.insert(name, HeaderValue::from_static(""));
        }
        // The same proxies overwrite token-carrying headers from the answer: those this answer
        // leaves alone are passed on as the client sent them.
        for name in carriers {
            if !h.contains_key(name) {
                h.insert(name.clone(), passthrough(request, name));
            }
        }
    } else {
        let mut remove: Vec<&str> = a.strip.iter().map(HeaderName::as_str).collect();
        if !h.contains_key(http::header::AUTHORIZATION) {
            remove.push("authorization");
        }
        if !remove.is_empty() {
            h.insert(ENVOY_REMOVE, HeaderValue::try_from(remove.join(",")).expect("header names are valid values"));
        }
    }
    resp
}

/// A request header's values as one value (cookies joined with `; `, others with `, `).
fn passthrough(headers: &HeaderMap, name: &HeaderName) -> HeaderValue {
    let mut values = headers.get_all(name).iter();
    match (values.next(), values.next()) {
        (None, _) => HeaderValue::from_static(""),
        (Some(one), None) => one.clone(),
        (Some(first), Some(second)) => {
            let sep: &[u8] = if name == http::header::COOKIE { b"; " } else { b", " };
            let mut joined = first.as_bytes().to_vec();
            for v in std::iter::once(second).chain(values) {
                joined.extend_from_slice(sep);
                joined.extend_from_slice(v.as_bytes());
            }
            HeaderValue::from_bytes(&joined).unwrap_or_else(|_| HeaderValue::from_static(""))
        }
    }
}
