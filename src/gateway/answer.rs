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
    // A refreshed session, for the proxies that pass an allowed answer's cookies to the browser.
    for c in &a.set_cookies {
        if let Ok(v) = HeaderValue::try_from(c.as_str()) {
            h.append(http::header::SET_COOKIE, v);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::RouteRef;
    use crate::testkit::header_map as request;

    fn allow(headers: &[(&str, &str)], authorization: Option<&str>, strip: &[&str]) -> Allowed {
        Allowed {
            route: RouteRef { policy: 0, rule: 0 },
            headers: headers
                .iter()
                .map(|(k, v)| (HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap()))
                .collect(),
            authorization: authorization.map(|v| HeaderValue::from_str(v).unwrap()),
            strip: strip.iter().map(|n| HeaderName::from_bytes(n.as_bytes()).unwrap()).collect(),
            audit: None,
            caller: None,
            strip_query: Vec::new(),
            refresh: None,
            set_cookies: Vec::new(),
        }
    }

    fn answered(r: &Response<Full<Bytes>>) -> Vec<(String, String)> {
        let mut all: Vec<(String, String)> =
            r.headers().iter().map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap().to_owned())).collect();
        all.sort();
        all
    }

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut all: Vec<(String, String)> = p.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        all.sort();
        all
    }

    const CARRIERS: [HeaderName; 2] = [http::header::COOKIE, HeaderName::from_static("x-api-token")];

    #[test]
    fn header_mode_answers_every_identity_and_token_carrying_header() {
        // The caller's token goes on; two cookie headers are passed on as one, the token header
        // the client did not send is answered empty; a stripped identity header is answered empty.
        let req = request(&[("authorization", "Bearer t"), ("cookie", "a=1"), ("cookie", "b=2"), ("x-user-id", "mallory")]);
        for profile in [Profile::Forwarded, Profile::IngressNginx] {
            let r = allowed(profile, allow(&[("x-user-id", "alice")], Some("Bearer t"), &["x-user-roles"]), &req, &CARRIERS);
            assert_eq!(
                answered(&r),
                pairs(&[
                    ("authorization", "Bearer t"),
                    ("cookie", "a=1; b=2"),
                    ("x-api-token", ""),
                    ("x-user-id", "alice"),
                    ("x-user-roles", ""),
                ]),
                "{profile:?}"
            );
        }
        // No token forwarded: Authorization answered empty; a rewritten cookie (the decision's
        // own header) is not replaced by the client's; repeated values join with ", ".
        let req = request(&[("authorization", "Bearer t"), ("cookie", "session=t; a=1"), ("x-api-token", "1"), ("x-api-token", "2")]);
        let r = allowed(Profile::Forwarded, allow(&[("cookie", "a=1")], None, &[]), &req, &CARRIERS);
        assert_eq!(answered(&r), pairs(&[("authorization", ""), ("cookie", "a=1"), ("x-api-token", "1, 2")]));
    }

    #[test]
    fn envoy_prefix_answers_what_to_set_and_lists_what_to_remove() {
        let req = request(&[("authorization", "Bearer t"), ("cookie", "a=1")]);
        let r = allowed(Profile::EnvoyPrefix, allow(&[("x-user-id", "alice")], Some("Bearer minted"), &["x-user-roles"]), &req, &CARRIERS);
        assert_eq!(
            answered(&r),
            pairs(&[("authorization", "Bearer minted"), ("x-envoy-auth-headers-to-remove", "x-user-roles"), ("x-user-id", "alice")])
        );
        // No token forwarded: Envoy removes the client's.
        let r = allowed(Profile::EnvoyPrefix, allow(&[], None, &["x-user-id"]), &req, &CARRIERS);
        assert_eq!(answered(&r), pairs(&[("x-envoy-auth-headers-to-remove", "x-user-id,authorization")]));
    }
}
