//! Which request is being authorized: the method, host and target, read from exactly the
//! headers that the integration's proxy sets and overwrites (SECURITY.md, invariants 2 and 3).
//!
//! ```text
//!  /authz                ─ Forwarded     X-Forwarded-Method, X-Forwarded-Uri, X-Forwarded-Host
//!  /authz/ingress-nginx  ─ IngressNginx  X-Original-Method, X-Original-URL (host = its authority)
//!  /ext_authz/<path>     ─ EnvoyPrefix   the authorization request's own method, path and Host
//! ```
//! A profile never falls back to another header: a missing header is a misconfigured proxy, a
//! repeated one a client trying to win against the proxy's copy. Both are answered 400.

use http::{HeaderMap, HeaderName};

pub const X_FORWARDED_METHOD: HeaderName = HeaderName::from_static("x-forwarded-method");
pub const X_FORWARDED_URI: HeaderName = HeaderName::from_static("x-forwarded-uri");
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub const X_ORIGINAL_METHOD: HeaderName = HeaderName::from_static("x-original-method");
pub const X_ORIGINAL_URL: HeaderName = HeaderName::from_static("x-original-url");

pub const EXT_AUTHZ_PREFIX: &str = "/ext_authz";
pub const INGRESS_NGINX_PATH: &str = "/authz/ingress-nginx";

/// NGINX `auth_request` with browser sign-in: as `/authz`, but a sign-in is answered 401 (an
/// `auth_request` cannot pass a redirect on), for `error_page 401` to ask `/authz` for the redirect.
pub const AUTH_REQUEST_PATH: &str = "/authz/auth-request";

/// How an integration tells the authorizer about the request it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// NGINX `auth_request` (as docs/gateways/nginx.md), Traefik ForwardAuth, Caddy `forward_auth`.
    Forwarded,
    /// ingress-nginx's `auth-url` annotation: the controller sets `X-Original-URL` and
    /// `X-Original-Method` and passes every other client header through.
    IngressNginx,
    /// Envoy HTTP `ext_authz` with `path_prefix: /ext_authz`.
    EnvoyPrefix,
}

impl Profile {
    /// The profile an authorizer endpoint serves, if the path is one.
    pub fn for_path(path: &str) -> Option<Self> {
        match path {
            "/authz" | AUTH_REQUEST_PATH => Some(Self::Forwarded),
            INGRESS_NGINX_PATH => Some(Self::IngressNginx),
            p if p.starts_with(EXT_AUTHZ_PREFIX) && matches!(p.as_bytes().get(EXT_AUTHZ_PREFIX.len()), None | Some(b'/')) => {
                Some(Self::EnvoyPrefix)
            }
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Forwarded => "forwarded",
            Self::IngressNginx => "ingress-nginx",
            Self::EnvoyPrefix => "envoy-prefix",
        }
    }
}

/// The request a proxy asks about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Asked<'a> {
    pub method: &'a str,
    pub host: &'a str,
    /// Origin-form path and query, as the proxy forwards it.
    pub target: &'a str,
}

/// Why the authorization request itself is unusable (400).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BadRequest {
    Missing(HeaderName),
    Repeated(HeaderName),
    NotText(HeaderName),
    /// `X-Original-URL` that is not `http(s)://authority/path`.
    NotAbsoluteUrl,
    /// A target that is not in origin form (`/path?query`).
    NotOriginForm,
    /// A token in the query string that the upstream must not get: only an integration that
    /// rewrites the query (Envoy gRPC ext_authz) can take it out.
    QueryToken,
}

impl std::fmt::Display for BadRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Missing(h) => write!(f, "{h} is required (check the proxy configuration)"),
            Self::Repeated(h) => write!(f, "{h} is present more than once"),
            Self::NotText(h) => write!(f, "{h} is not valid text"),
            Self::NotAbsoluteUrl => write!(f, "{X_ORIGINAL_URL} is not an absolute http(s) URL"),
            Self::NotOriginForm => f.write_str("the request target does not start with /"),
            Self::QueryToken => f.write_str(
                "a token in the query string cannot be removed from the request by this integration; send it in a header or cookie, or use Envoy's gRPC ext_authz",
            ),
        }
    }
}

/// Exactly one value of `name`, as UTF-8 (raw non-ASCII bytes in a URI are left to path
/// normalisation). Absent is `Ok(None)`.
pub fn single<'h>(headers: &'h HeaderMap, name: &HeaderName) -> Result<Option<&'h str>, BadRequest> {
    let mut values = headers.get_all(name).iter();
    let Some(first) = values.next() else { return Ok(None) };
    if values.next().is_some() {
        return Err(BadRequest::Repeated(name.clone()));
    }
    std::str::from_utf8(first.as_bytes()).map(Some).map_err(|_| BadRequest::NotText(name.clone()))
}

fn required<'h>(headers: &'h HeaderMap, name: &HeaderName) -> Result<&'h str, BadRequest> {
    single(headers, name)?.filter(|v| !v.is_empty()).ok_or_else(|| BadRequest::Missing(name.clone()))
}

/// Reads the asked-about request for `profile`. `method` and `path_and_query` are the
/// authorization request's own (used by the Envoy profile only).
pub fn asked<'a>(profile: Profile, method: &'a str, path_and_query: &'a str, headers: &'a HeaderMap) -> Result<Asked<'a>, BadRequest> {
    // Repeated Host is refused whatever the profile: no proxy sends two.
    let host_header = single(headers, &http::header::HOST)?;
    let asked = match profile {
        Profile::Forwarded => Asked {
            method: required(headers, &X_FORWARDED_METHOD)?,
            target: required(headers, &X_FORWARDED_URI)?,
            host: required(headers, &X_FORWARDED_HOST)?,
        },
        Profile::IngressNginx => {
            let method = required(headers, &X_ORIGINAL_METHOD)?;
            let url = required(headers, &X_ORIGINAL_URL)?;
            let rest = ["http://", "https://"]
                .iter()
                .find_map(|s| (url.len() > s.len() && url[..s.len()].eq_ignore_ascii_case(s)).then(|| &url[s.len()..]))
                .ok_or(BadRequest::NotAbsoluteUrl)?;
            let split = rest.find(['/', '?']).unwrap_or(rest.len());
            let (host, target) = rest.split_at(split);
            if target.is_empty() {
                return Err(BadRequest::NotAbsoluteUrl);
            }
            Asked { method, host, target }
        }
        Profile::EnvoyPrefix => {
            let rest = &path_and_query[EXT_AUTHZ_PREFIX.len().min(path_and_query.len())..];
            let target = if rest.is_empty() || rest.starts_with('?') { "/" } else { rest };
            Asked { method, host: host_header.filter(|h| !h.is_empty()).ok_or(BadRequest::Missing(http::header::HOST))?, target }
        }
    };
    if !asked.target.starts_with('/') {
        return Err(BadRequest::NotOriginForm);
    }
    Ok(asked)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::header_map as headers;

    const FWD: [(&str, &str); 3] = [("x-forwarded-method", "GET"), ("x-forwarded-uri", "/orders/1"), ("x-forwarded-host", "api.test")];

    #[test]
    fn each_endpoint_has_one_profile() {
        assert_eq!(Profile::for_path("/authz"), Some(Profile::Forwarded));
        assert_eq!(Profile::for_path("/authz/ingress-nginx"), Some(Profile::IngressNginx));
        assert_eq!(Profile::for_path("/ext_authz"), Some(Profile::EnvoyPrefix));
        assert_eq!(Profile::for_path("/ext_authz/orders"), Some(Profile::EnvoyPrefix));
        assert_eq!(Profile::for_path("/ext_authzX"), None);
        assert_eq!(Profile::for_path("/authz/other"), None);
    }

    #[test]
    fn forwarded_profile_reads_only_the_forwarded_headers() {
        let mut pairs = FWD.to_vec();
        // What ingress-nginx would set, sent here by a client: never consulted.
        pairs.extend([("x-original-url", "http://api.test/healthz"), ("x-original-method", "GET"), ("x-original-uri", "/healthz")]);
        let h = headers(&pairs);
        let a = asked(Profile::Forwarded, "GET", "/authz", &h).unwrap();
        assert_eq!(a, Asked { method: "GET", host: "api.test", target: "/orders/1" });
    }

    #[test]
    fn forwarded_profile_never_falls_back() {
        for missing in ["x-forwarded-method", "x-forwarded-uri", "x-forwarded-host"] {
            let mut pairs: Vec<_> = FWD.iter().filter(|(k, _)| *k != missing).copied().collect();
            pairs.push(("host", "api.test"));
            pairs.push(("x-original-uri", "/orders/1"));
            pairs.push(("x-original-method", "GET"));
            let err = asked(Profile::Forwarded, "GET", "/authz", &headers(&pairs)).unwrap_err();
            assert_eq!(err, BadRequest::Missing(HeaderName::from_static(missing)), "{missing}");
        }
    }

    #[test]
    fn repeated_values_are_refused_never_first_wins() {
        for (name, value) in
            [("x-forwarded-method", "DELETE"), ("x-forwarded-uri", "/healthz"), ("x-forwarded-host", "other.test"), ("host", "a.test")]
        {
            let mut pairs = FWD.to_vec();
            if name == "host" {
                pairs.push(("host", "b.test"));
            }
            pairs.push((name, value));
            let err = asked(Profile::Forwarded, "GET", "/authz", &headers(&pairs)).unwrap_err();
            assert_eq!(err, BadRequest::Repeated(HeaderName::from_bytes(name.as_bytes()).unwrap()), "{name}");
        }
    }

    #[test]
    fn ingress_nginx_profile_ignores_client_forwarded_headers() {
        let h = headers(&[
            ("x-original-url", "https://api.test:8443/orders/admin/7?x=1"),
            ("x-original-method", "DELETE"),
            // A client's attempt to be authorized as something harmless.
            ("x-forwarded-uri", "/healthz"),
            ("x-forwarded-method", "GET"),
            ("x-forwarded-host", "public.test"),
            ("x-original-uri", "/healthz"),
        ]);
        let a = asked(Profile::IngressNginx, "GET", "/authz/ingress-nginx", &h).unwrap();
        assert_eq!(a, Asked { method: "DELETE", host: "api.test:8443", target: "/orders/admin/7?x=1" });
    }

    #[test]
    fn ingress_nginx_profile_needs_an_absolute_url() {
        for bad in ["/orders", "ftp://a/b", "http://", "http://api.test", "api.test/orders"] {
            let h = headers(&[("x-original-url", bad), ("x-original-method", "GET")]);
            assert!(asked(Profile::IngressNginx, "GET", "/authz/ingress-nginx", &h).is_err(), "{bad}");
        }
        let h = headers(&[("x-original-url", "http://api.test/"), ("x-original-method", "GET"), ("x-original-url", "http://x/")]);
        assert!(matches!(asked(Profile::IngressNginx, "GET", "/", &h), Err(BadRequest::Repeated(_))));
    }

    #[test]
    fn envoy_profile_uses_the_request_itself() {
        let h = headers(&[("host", "api.test"), ("x-forwarded-uri", "/healthz"), ("x-forwarded-host", "public.test")]);
        let a = asked(Profile::EnvoyPrefix, "DELETE", "/ext_authz/orders/admin?q=1", &h).unwrap();
        assert_eq!(a, Asked { method: "DELETE", host: "api.test", target: "/orders/admin?q=1" });
        let a = asked(Profile::EnvoyPrefix, "GET", "/ext_authz?q", &h).unwrap();
        assert_eq!(a.target, "/");
        assert_eq!(asked(Profile::EnvoyPrefix, "GET", "/ext_authz/x", &headers(&[])).unwrap_err(), BadRequest::Missing(http::header::HOST));
    }

    #[test]
    fn targets_must_be_origin_form() {
        let h =
            headers(&[("x-forwarded-method", "GET"), ("x-forwarded-uri", "http://evil.test/healthz"), ("x-forwarded-host", "api.test")]);
        assert_eq!(asked(Profile::Forwarded, "GET", "/authz", &h).unwrap_err(), BadRequest::NotOriginForm);
    }
}
