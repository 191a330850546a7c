//! Gateway API semantics that an AuthPolicy attached to a route must reproduce exactly: which
//! hostnames a route serves on a listener, and which requests a route rule's matches select.
//! Pure functions over plain values; the controller reads the objects.
//!
//! What cannot be reproduced exactly is refused with a reason, never approximated: a policy that
//! protected fewer requests than the gateway routes would let the rest through.

use crate::api::PathMatch;
pub use crate::api::gateway_api::{GrpcMethodMatch, GrpcRouteMatch, HttpPathMatch, HttpRouteMatch};
use crate::policy::config::RequestCondition;

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

/// A route match as Portcullis matches requests: a path, the methods (empty: any) and the
/// header and query parameter values it requires.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RouteMatch {
    pub path: PathMatch,
    pub methods: Vec<String>,
    /// `Exact` header and query parameter matches, one per name (the first, as the spec says),
    /// sorted.
    pub when: Vec<RequestCondition>,
    /// What of the match only the proxy applies (a `RegularExpression` header or query match,
    /// whose dialect is the gateway's): the authorizer's match is wider. Sound where the proxy
    /// sends only the route's requests (Envoy Gateway: ext_authz per route); refused where the
    /// authorizer must select the route itself (Istio).
    pub proxy_only: Option<String>,
}

/// The conditions and proxy-only remainder of a match's header and query parameter matches.
/// `Exact` becomes a condition; anything else (`RegularExpression`, a `Host` header the proxy
/// keeps as `:authority`) stays the proxy's. Only the first match of a name counts (the spec).
fn conditions(headers: &[serde_json::Value], query: &[serde_json::Value]) -> Result<(Vec<RequestCondition>, Option<String>), String> {
    let (mut when, mut proxy_only, mut seen) = (Vec::new(), Vec::new(), Vec::new());
    for (header, m) in headers.iter().map(|m| (true, m)).chain(query.iter().map(|m| (false, m))) {
        let what = if header { "header" } else { "query parameter" };
        let (Some(name), Some(value)) = (m["name"].as_str(), m["value"].as_str()) else {
            return Err(format!("a {what} match without a name and value"));
        };
        let name = if header { name.to_ascii_lowercase() } else { name.to_owned() };
        if seen.contains(&(header, name.clone())) {
            continue;
        }
        seen.push((header, name.clone()));
        match m["type"].as_str().unwrap_or("Exact") {
            "Exact" if !(header && name == "host") => {
                let value = value.to_owned();
                when.push(if header { RequestCondition::Header { name, value } } else { RequestCondition::Query { name, value } })
            }
            kind => proxy_only.push(format!("{kind} {what} match {name:?}")),
        }
    }
    when.sort();
    Ok((when, (!proxy_only.is_empty()).then(|| proxy_only.join(", "))))
}

/// The Portcullis match for one HTTPRoute match, or why it cannot be reproduced exactly.
///
/// `PathPrefix` matches whole segments in Gateway API (`/abc` matches `/abc` and `/abc/d`, never
/// `/abcd`), as a Portcullis prefix does (`decide::tests`, `/ordersX`); a trailing slash is
/// ignored by both. A match without a
/// path matches every path (`PathPrefix /`). `Exact` header and query matches are conditions
/// the authorizer checks too; a `RegularExpression` one only the proxy applies
/// ([`RouteMatch::proxy_only`]). A `RegularExpression` path has no portable dialect: refused.
pub fn route_match(m: &HttpRouteMatch) -> Result<RouteMatch, String> {
    let (when, proxy_only) = conditions(&m.headers, &m.query_params)?;
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
    Ok(RouteMatch { path, methods: m.method.iter().cloned().collect(), when, proxy_only })
}

/// The Portcullis match for one GRPCRoute match: a gRPC call is `POST /<service>/<method>`, so a
/// service and method are an exact path, a service alone a prefix. A method of any service has
/// no path form, and regular expressions no portable dialect: refused.
pub fn grpc_route_match(m: &GrpcRouteMatch) -> Result<RouteMatch, String> {
    let (when, proxy_only) = conditions(&m.headers, &[])?;
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
    Ok(RouteMatch { path, methods: vec![], when, proxy_only })
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
        // Exact header and query matches: conditions, one per name (the first), header names in
        // lower case, query names as written; what only the proxy applies is said.
        let narrowed = m(serde_json::json!({"path": {"value": "/x"}, "headers": [
            {"name": "X-V", "value": "2"}, {"name": "x-v", "value": "3"}, {"type": "RegularExpression", "name": "x-r", "value": "a.*"},
            {"name": "Host", "value": "a.test"}
        ], "queryParams": [{"name": "V", "value": "2"}, {"name": "v", "value": "4"}, {"name": "V", "value": "5"}]}))
        .unwrap();
        let h = |n: &str, v: &str| RequestCondition::Header { name: n.into(), value: v.into() };
        let q = |n: &str, v: &str| RequestCondition::Query { name: n.into(), value: v.into() };
        assert_eq!(narrowed.path.prefix.as_deref(), Some("/x"));
        assert_eq!(narrowed.when, [h("x-v", "2"), q("V", "2"), q("v", "4")]);
        assert_eq!(narrowed.proxy_only.as_deref(), Some("RegularExpression header match \"x-r\", Exact header match \"host\""));
        assert_eq!((prefix.proxy_only, prefix.when.len()), (None, 0));
        assert!(m(serde_json::json!({"headers": [{"name": "x"}]})).unwrap_err().contains("without a name and value"));
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
        let with_header = m(serde_json::json!({"method": {"service": "s.S"}, "headers": [{"name": "X", "value": "y"}]})).unwrap();
        assert_eq!(with_header.path.prefix.as_deref(), Some("/s.S"));
        assert_eq!(with_header.when, [RequestCondition::Header { name: "x".into(), value: "y".into() }]);
    }
}
