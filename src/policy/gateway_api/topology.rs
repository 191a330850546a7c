//! The Gateway API objects as attachment sees them: Gateways with their listeners, routes with
//! their rules' matches (in Portcullis terms, or why not) and the Gateways that accepted them.

use std::sync::Arc;

use crate::api::gateway_api::{GRPCRoute, Gateway as GatewayObject, HTTPRoute, RouteStatus};

use super::{Gateway, Route, RouteMatch, RouteRule, TargetKind, grpc_route_match, route_match};

pub fn gateways(objects: &[Arc<GatewayObject>]) -> Vec<Gateway> {
    objects
        .iter()
        .map(|g| Gateway {
            namespace: g.metadata.namespace.clone().unwrap_or_default(),
            name: g.metadata.name.clone().unwrap_or_default(),
            listeners: g.spec.listeners.iter().map(|l| (l.name.clone(), l.hostname.clone())).collect(),
        })
        .collect()
}

/// Every HTTPRoute and GRPCRoute. A rule without matches matches everything (Gateway API's
/// default `PathPrefix /`).
pub fn routes(http: &[Arc<HTTPRoute>], grpc: &[Arc<GRPCRoute>], gateways: &[Gateway]) -> Vec<Route> {
    let http_routes = http.iter().map(|r| {
        let rules = r.spec.rules.iter().map(|rule| RouteRule { name: rule.name.clone(), matches: matches_of(&rule.matches, route_match) });
        route(TargetKind::HttpRoute, &r.metadata, &r.spec.hostnames, rules.collect(), r.status.as_ref(), gateways)
    });
    let grpc_routes = grpc.iter().map(|r| {
        let rules =
            r.spec.rules.iter().map(|rule| RouteRule { name: rule.name.clone(), matches: matches_of(&rule.matches, grpc_route_match) });
        route(TargetKind::GrpcRoute, &r.metadata, &r.spec.hostnames, rules.collect(), r.status.as_ref(), gateways)
    });
    http_routes.chain(grpc_routes).collect()
}

/// A rule's matches in Portcullis terms; none is one default match.
fn matches_of<M: Default + Clone>(matches: &[M], convert: fn(&M) -> Result<RouteMatch, String>) -> Result<Vec<RouteMatch>, String> {
    if matches.is_empty() { convert(&M::default()).map(|m| vec![m]) } else { matches.iter().map(convert).collect() }
}

fn route(
    kind: TargetKind,
    meta: &kube::api::ObjectMeta,
    hostnames: &[String],
    rules: Vec<RouteRule>,
    status: Option<&RouteStatus>,
    gateways: &[Gateway],
) -> Route {
    let namespace = meta.namespace.clone().unwrap_or_default();
    Route {
        kind,
        parents: accepted_parents(&namespace, status, gateways),
        namespace,
        name: meta.name.clone().unwrap_or_default(),
        hostnames: hostnames.to_vec(),
        rules,
    }
}

/// The Gateways whose controller accepted the route (`Accepted=True` in `status.parents`), each
/// with the listeners it may be on: the one named by `sectionName`, or all of them (hostnames
/// that do not intersect are dropped by attachment).
fn accepted_parents(route_namespace: &str, status: Option<&RouteStatus>, gateways: &[Gateway]) -> Vec<((String, String), Vec<String>)> {
    let mut out: Vec<((String, String), Vec<String>)> = Vec::new();
    for p in status.map(|s| s.parents.as_slice()).unwrap_or_default() {
        let r = &p.parent_ref;
        let is_gateway =
            r.group.as_deref().is_none_or(|g| g == crate::api::GATEWAY_API_GROUP) && r.kind.as_deref().is_none_or(|k| k == "Gateway");
        let accepted = p.conditions.iter().any(|c| c.type_ == "Accepted" && c.status == "True");
        if !is_gateway || !accepted {
            continue;
        }
        let key = (r.namespace.clone().unwrap_or_else(|| route_namespace.to_owned()), r.name.clone());
        let Some(g) = gateways.iter().find(|g| (&g.namespace, &g.name) == (&key.0, &key.1)) else { continue };
        let listeners: Vec<String> = match &r.section_name {
            Some(s) => g.listeners.iter().filter(|(l, _)| l == s).map(|(l, _)| l.clone()).collect(),
            None => g.listeners.iter().map(|(l, _)| l.clone()).collect(),
        };
        match out.iter_mut().find(|(k, _)| *k == key) {
            Some((_, ls)) => ls.extend(listeners.into_iter().filter(|l| !ls.contains(l)).collect::<Vec<_>>()),
            None => out.push((key, listeners)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn http_route(v: serde_json::Value) -> Arc<HTTPRoute> {
        Arc::new(serde_json::from_value(v).unwrap())
    }

    #[test]
    fn routes_attach_where_their_gateway_accepted_them_and_unnamed_rules_match_everything() {
        let gw: Arc<GatewayObject> = Arc::new(
            serde_json::from_value(serde_json::json!({
                "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
                "metadata": {"namespace": "infra", "name": "web"},
                "spec": {"gatewayClassName": "eg", "listeners": [{"name": "https", "hostname": "*.shop.test", "port": 443, "protocol": "HTTPS"}, {"name": "admin", "port": 8443, "protocol": "HTTPS"}]}
            }))
            .unwrap(),
        );
        let gws = gateways(&[gw]);
        let accepted = |section: Option<&str>, status: &str| {
            serde_json::json!({"parentRef": {"name": "web", "namespace": "infra", "sectionName": section}, "controllerName": "x",
                "conditions": [{"type": "Accepted", "status": status, "reason": "r", "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}]})
        };
        let route = http_route(serde_json::json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"namespace": "shop", "name": "orders"},
            "spec": {"hostnames": ["api.shop.test"], "rules": [{"name": "read", "matches": [{"path": {"type": "PathPrefix", "value": "/orders"}}]}, {}]},
            "status": {"parents": [accepted(Some("https"), "True"), {"parentRef": {"name": "other"}, "controllerName": "x", "conditions": []}]}
        }));
        let rs = routes(std::slice::from_ref(&route), &[], &gws);
        assert_eq!(rs[0].parents, [(("infra".to_owned(), "web".to_owned()), vec!["https".to_owned()])]);
        assert_eq!(rs[0].rules[0].matches.as_ref().unwrap()[0].path.prefix.as_deref(), Some("/orders"));
        assert_eq!(rs[0].rules[1].matches.as_ref().unwrap()[0].path.prefix.as_deref(), Some("/"), "no matches: PathPrefix /");
        // Not accepted (yet, or any more): no parent, so attachment says so.
        let mut refused = (*route).clone();
        refused.status = Some(serde_json::from_value(serde_json::json!({"parents": [accepted(None, "False")]})).unwrap());
        assert!(routes(&[Arc::new(refused)], &[], &gws)[0].parents.is_empty());
        // Accepted without a section: every listener of the Gateway.
        let mut all = (*route).clone();
        all.status = Some(serde_json::from_value(serde_json::json!({"parents": [accepted(None, "True")]})).unwrap());
        assert_eq!(routes(&[Arc::new(all)], &[], &gws)[0].parents[0].1, ["https", "admin"]);
    }
}
