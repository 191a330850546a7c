//! Gateway API semantics that an AuthPolicy attached to a route must reproduce exactly: which
//! hostnames a route serves on a listener, and which requests a route rule's matches select.
//! Pure functions over plain values; the controller reads the objects.
//!
//! What cannot be reproduced exactly is refused with a reason, never approximated: a policy that
//! protected fewer requests than the gateway routes would let the rest through.

use crate::api::PathMatch;
pub use crate::api::gateway_api::{GrpcMethodMatch, GrpcRouteMatch, HttpPathMatch, HttpRouteMatch};

use super::host::HostPattern;

/// The hostnames a route serves on a listener: the intersection of the listener's hostname and
/// the route's (Gateway API, "hostname intersection"). No hostname on either side means any. A
/// wildcard (`*.example.com`) stands for one or more labels before its suffix, so the more
/// specific of two overlapping names is what both allow. `None`: no intersection, the route
/// does not attach to this listener.
pub fn route_hostnames(listener: Option<&str>, route: &[String]) -> Result<Option<Vec<HostPattern>>, String> {
    let listener = listener.map(HostPattern::parse).transpose()?.unwrap_or(HostPattern::Any);
    if route.is_empty() {
        return Ok(Some(vec![listener]));
    }
    let mut out: Vec<HostPattern> = Vec::new();
    for r in route {
        let r = HostPattern::parse(r)?;
        let both = if covers(&listener, &r) {
            Some(r)
        } else if covers(&r, &listener) {
            Some(listener.clone())
        } else {
            None
        };
        if let Some(h) = both
            && !out.contains(&h)
        {
            out.push(h);
        }
    }
    Ok((!out.is_empty()).then_some(out))
}

/// Whether every host `inner` matches is matched by `outer`.
fn covers(outer: &HostPattern, inner: &HostPattern) -> bool {
    match (outer, inner) {
        (HostPattern::Any, _) => true,
        (_, HostPattern::Any) => false,
        (HostPattern::Exact(a), HostPattern::Exact(b)) => a == b,
        (HostPattern::Exact(_), HostPattern::Wildcard(_)) => false,
        (HostPattern::Wildcard(_), HostPattern::Exact(b)) => outer.matches(b),
        // `.example.com` covers `.example.com` and `.a.example.com`.
        (HostPattern::Wildcard(a), HostPattern::Wildcard(b)) => b == a || b.ends_with(a.as_str()),
    }
}

/// A route match as Portcullis matches requests: a path and the methods (empty: any).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RouteMatch {
    pub path: PathMatch,
    pub methods: Vec<String>,
    /// What of the match only the proxy applies (header or query parameter matches): the
    /// authorizer's path and method match is wider. Sound where the proxy sends only the route's
    /// requests (Envoy Gateway: ext_authz per route); refused where the authorizer must select
    /// the route itself (Istio).
    pub proxy_only: Option<String>,
}

/// The Portcullis match for one HTTPRoute match, or why it cannot be reproduced exactly.
///
/// `PathPrefix` matches whole segments in Gateway API (`/abc` matches `/abc` and `/abc/d`, never
/// `/abcd`), as a Portcullis prefix does (`decide::tests`, `/ordersX`); a trailing slash is
/// ignored by both. A match without a
/// path matches every path (`PathPrefix /`). Header and query matches are the proxy's to apply
/// (`RouteMatch::proxy_only`), and `RegularExpression` has no portable dialect: refused.
pub fn route_match(m: &HttpRouteMatch) -> Result<RouteMatch, String> {
    let proxy_only = match (m.headers.is_empty(), m.query_params.is_empty()) {
        (true, true) => None,
        (false, true) => Some("header matches".to_owned()),
        (true, false) => Some("query parameter matches".to_owned()),
        (false, false) => Some("header and query parameter matches".to_owned()),
    };
    let path = m.path.clone().unwrap_or_default();
    if !path.value.starts_with('/') {
        return Err(format!("path {:?} does not start with '/'", path.value));
    }
    let path = match path.kind.as_str() {
        "Exact" => PathMatch { exact: Some(path.value), ..Default::default() },
        "PathPrefix" => PathMatch { prefix: Some(path.value), ..Default::default() },
        "RegularExpression" => {
            return Err(format!(
                "path match RegularExpression {:?}: its dialect is the gateway's own and cannot be reproduced exactly",
                path.value
            ));
        }
        other => return Err(format!("path match type {other:?} is not part of Gateway API")),
    };
    Ok(RouteMatch { path, methods: m.method.iter().cloned().collect(), proxy_only })
}

/// The Portcullis match for one GRPCRoute match: a gRPC call is `POST /<service>/<method>`, so a
/// service and method are an exact path, a service alone a prefix. A method of any service has
/// no path form, and regular expressions no portable dialect: refused.
pub fn grpc_route_match(m: &GrpcRouteMatch) -> Result<RouteMatch, String> {
    let proxy_only = (!m.headers.is_empty()).then(|| "header matches".to_owned());
    let path = match &m.method {
        None => PathMatch { prefix: Some("/".into()), ..Default::default() },
        Some(GrpcMethodMatch { kind, .. }) if kind != "Exact" => {
            return Err(format!("method match type {kind}: only Exact can be reproduced exactly"));
        }
        Some(GrpcMethodMatch { service: Some(svc), method: Some(method), .. }) => {
            PathMatch { exact: Some(format!("/{svc}/{method}")), ..Default::default() }
        }
        Some(GrpcMethodMatch { service: Some(svc), method: None, .. }) => {
            PathMatch { prefix: Some(format!("/{svc}")), ..Default::default() }
        }
        Some(GrpcMethodMatch { service: None, method: Some(method), .. }) => {
            return Err(format!("method {method:?} of any service has no path form; name the service too"));
        }
        Some(GrpcMethodMatch { service: None, method: None, .. }) => PathMatch { prefix: Some("/".into()), ..Default::default() },
    };
    Ok(RouteMatch { path, methods: vec![], proxy_only })
}

pub mod attach;
pub mod bind;
pub mod topology;

pub use attach::{Applied, Attaching, Attachment, Gateway, Route, RouteRule, TargetKind, TargetRef, attach};

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(listener: Option<&str>, route: &[&str]) -> Option<Vec<String>> {
        let route: Vec<String> = route.iter().map(|s| s.to_string()).collect();
        route_hostnames(listener, &route).unwrap().map(|v| v.iter().map(ToString::to_string).collect())
    }

    #[test]
    fn hostnames_intersect_as_the_gateway_api_spec_says() {
        let s = |v: &[&str]| Some(v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        // The spec's examples.
        assert_eq!(hosts(Some("test.example.com"), &[]), s(&["test.example.com"]));
        assert_eq!(hosts(Some("test.example.com"), &["test.example.com"]), s(&["test.example.com"]));
        assert_eq!(hosts(Some("test.example.com"), &["*.example.com"]), s(&["test.example.com"]));
        assert_eq!(
            hosts(Some("*.example.com"), &["*.example.com", "test.example.com", "foo.test.example.com"]),
            s(&["*.example.com", "test.example.com", "foo.test.example.com"])
        );
        assert_eq!(hosts(Some("*.example.com"), &["example.com", "test.example.net"]), None, "a wildcard needs a label before its suffix");
        // Nothing on either side: any host; one side only: that side.
        assert_eq!(hosts(None, &[]), s(&["*"]));
        assert_eq!(hosts(None, &["a.test", "*.b.test"]), s(&["a.test", "*.b.test"]));
        // The narrower of two wildcards; names outside the listener dropped, not widened.
        assert_eq!(hosts(Some("*.example.com"), &["*.a.example.com"]), s(&["*.a.example.com"]));
        assert_eq!(hosts(Some("*.a.example.com"), &["*.example.com"]), s(&["*.a.example.com"]));
        assert_eq!(hosts(Some("api.example.com"), &["api.example.com", "www.example.com"]), s(&["api.example.com"]));
        assert_eq!(hosts(Some("api.example.com"), &["*.example.com", "api.example.com"]), s(&["api.example.com"]), "no duplicates");
        assert!(route_hostnames(Some("Bad_Host"), &[]).is_err());
    }

    #[test]
    fn route_matches_become_portcullis_matches_or_are_refused_with_a_reason() {
        let m = |v: serde_json::Value| route_match(&serde_json::from_value(v).unwrap());
        let prefix = m(serde_json::json!({"path": {"type": "PathPrefix", "value": "/abc"}, "method": "GET"})).unwrap();
        assert_eq!(prefix.path.prefix.as_deref(), Some("/abc"));
        assert_eq!(prefix.methods, ["GET"]);
        assert_eq!(m(serde_json::json!({"path": {"type": "Exact", "value": "/a/b"}})).unwrap().path.exact.as_deref(), Some("/a/b"));
        // No path: every path, any method.
        let all = m(serde_json::json!({})).unwrap();
        assert_eq!((all.path.prefix.as_deref(), all.methods.len()), (Some("/"), 0));
        // The spec's default type is PathPrefix.
        assert_eq!(m(serde_json::json!({"path": {"value": "/x"}})).unwrap().path.prefix.as_deref(), Some("/x"));
        // Header and query matches: the path and method still, with what only the proxy applies.
        let narrowed = m(serde_json::json!({"path": {"value": "/x"}, "headers": [{"name": "x-v", "value": "2"}], "queryParams": [{"name": "v", "value": "2"}]})).unwrap();
        assert_eq!(
            (narrowed.path.prefix.as_deref(), narrowed.proxy_only.as_deref()),
            (Some("/x"), Some("header and query parameter matches"))
        );
        assert_eq!(prefix.proxy_only, None);
        for (refused, why) in [
            (serde_json::json!({"path": {"type": "RegularExpression", "value": "/a.*"}}), "cannot be reproduced exactly"),
            (serde_json::json!({"path": {"type": "Prefix", "value": "/a"}}), "not part of Gateway API"),
        ] {
            let e = m(refused.clone()).unwrap_err();
            assert!(e.contains(why), "{refused}: {e}");
        }
    }

    #[test]
    fn grpc_matches_are_paths_of_service_and_method() {
        let m = |v: serde_json::Value| grpc_route_match(&serde_json::from_value(v).unwrap());
        assert_eq!(
            m(serde_json::json!({"method": {"service": "shop.Orders", "method": "Get"}})).unwrap().path.exact.as_deref(),
            Some("/shop.Orders/Get")
        );
        assert_eq!(m(serde_json::json!({"method": {"service": "shop.Orders"}})).unwrap().path.prefix.as_deref(), Some("/shop.Orders"));
        assert_eq!(m(serde_json::json!({})).unwrap().path.prefix.as_deref(), Some("/"));
        assert!(m(serde_json::json!({"method": {"method": "Get"}})).unwrap_err().contains("no path form"));
        assert!(m(serde_json::json!({"method": {"type": "RegularExpression", "service": "shop.*"}})).unwrap_err().contains("only Exact"));
        let with_header = m(serde_json::json!({"method": {"service": "s.S"}, "headers": [{"name": "x", "value": "y"}]})).unwrap();
        assert_eq!((with_header.path.prefix.as_deref(), with_header.proxy_only.as_deref()), (Some("/s.S"), Some("header matches")));
    }
}
