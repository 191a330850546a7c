//! What the controller writes for the gateway that routes an attached AuthPolicy's traffic (pure):
//! an Envoy Gateway `SecurityPolicy` per target, or an Istio `AuthorizationPolicy` per Gateway,
//! both sending the requests to the Portcullis authorizer over gRPC and failing closed.
//!
//! ```text
//!  GatewayClass.controllerName ─ settings ─▶ Integration ─┬─ EnvoyGateway: SecurityPolicy → target (+ ReferenceGrant)
//!                                                         └─ Istio: AuthorizationPolicy CUSTOM → Gateway
//! ```

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::api::gateway_api::SecurityPolicy;
use crate::policy::gateway_api::{TargetKind, TargetRef};
use crate::policy::host::HostPattern;

use super::desired::MANAGED_BY;

/// The AuthPolicy a generated object is for (labels; objects in another namespace than the
/// policy cannot be owned by it, and are collected by these).
pub const LABEL_POLICY: &str = "portcullis.dev/policy";
pub const LABEL_POLICY_NAMESPACE: &str = "portcullis.dev/policy-namespace";
/// Sent to the authorizer with every check from a generated object: which AuthPolicy the
/// proxy's own route match chose.
pub const CONTEXT_POLICY: &str = "portcullis.dev/policy";
pub const CONTROLLER_NAME: &str = "portcullis.dev/controller";

/// How a GatewayClass's gateways are wired.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Integration {
    #[serde(rename = "envoy-gateway")]
    EnvoyGateway,
    #[serde(rename = "istio")]
    Istio,
}

/// The platform team's word on Gateway API wiring (chart `gatewayAPI`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WiringSettings {
    /// GatewayClass `controllerName` → integration.
    #[serde(default = "default_integrations")]
    pub integrations: BTreeMap<String, Integration>,
    /// Istio's name of the Portcullis extension provider (mesh config `extensionProviders`).
    #[serde(default = "default_istio_provider")]
    pub istio_provider: String,
    /// Per Portcullis gateway, the Service of its authorizer's gRPC port.
    #[serde(default)]
    pub authorizers: BTreeMap<String, ServiceRef>,
}

impl Default for WiringSettings {
    fn default() -> Self {
        Self { integrations: default_integrations(), istio_provider: default_istio_provider(), authorizers: BTreeMap::new() }
    }
}

fn default_integrations() -> BTreeMap<String, Integration> {
    [
        ("gateway.envoyproxy.io/gatewayclass-controller".to_owned(), Integration::EnvoyGateway),
        ("istio.io/gateway-controller".to_owned(), Integration::Istio),
    ]
    .into()
}

fn default_istio_provider() -> String {
    "portcullis".into()
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceRef {
    pub namespace: String,
    pub name: String,
    pub port: u16,
}

impl WiringSettings {
    /// The integration of a GatewayClass's controller, or why there is none.
    pub fn integration(&self, class: &str, controller_name: Option<&str>) -> Result<Integration, String> {
        let Some(controller) = controller_name else {
            return Err(format!("GatewayClass {class} does not exist"));
        };
        self.integrations.get(controller).copied().ok_or_else(|| {
            format!(
                "GatewayClass {class} is implemented by {controller}, which Portcullis cannot wire (supported: {}); the route would be unprotected, so the policy is not applied",
                self.integrations.keys().cloned().collect::<Vec<_>>().join(", ")
            )
        })
    }
}

/// A Kubernetes object name from parts: joined with `-`, and cut with a hash suffix when longer
/// than `max` (so that two long names never collide).
pub fn object_name(parts: &[&str], max: usize) -> String {
    let name = parts.iter().filter(|p| !p.is_empty()).map(|p| p.to_ascii_lowercase()).collect::<Vec<_>>().join("-");
    if name.len() <= max {
        return name;
    }
    let hash = format!("{:08x}", super::hash_of(&name) as u32);
    format!("{}-{hash}", name[..max - 9].trim_end_matches(['-', '.']))
}

fn kind_slug(kind: TargetKind) -> &'static str {
    match kind {
        TargetKind::Gateway => "gateway",
        TargetKind::HttpRoute => "httproute",
        TargetKind::GrpcRoute => "grpcroute",
    }
}

fn kind_name(kind: TargetKind) -> &'static str {
    match kind {
        TargetKind::Gateway => "Gateway",
        TargetKind::HttpRoute => "HTTPRoute",
        TargetKind::GrpcRoute => "GRPCRoute",
    }
}

/// The owner (a policy) and identity labels of a generated object.
pub struct Owner<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub uid: &'a str,
}

impl Owner<'_> {
    fn labels(&self) -> Value {
        json!({
            MANAGED_BY.0: MANAGED_BY.1,
            LABEL_POLICY: label_value(self.name),
            LABEL_POLICY_NAMESPACE: self.namespace,
        })
    }

    fn metadata(&self, name: String, namespace: &str) -> Value {
        let mut meta = json!({"name": name, "namespace": namespace, "labels": self.labels()});
        // Owner references cannot cross namespaces (the garbage collector would delete the
        // object at once): elsewhere the controller collects by label.
        if namespace == self.namespace {
            meta["ownerReferences"] = json!([{
                "apiVersion": crate::api::API_VERSION, "kind": "AuthPolicy", "name": self.name, "uid": self.uid,
                "controller": true, "blockOwnerDeletion": false,
            }]);
        }
        meta
    }
}

/// A label value: at most 63 characters (longer policy names are hashed).
pub fn label_value(name: &str) -> String {
    object_name(&[name], 63)
}

/// The Envoy Gateway `SecurityPolicy` for one target of a policy: ext_authz over gRPC to the
/// authorizer, never failing open, telling it which policy the route belongs to.
pub fn security_policy(owner: &Owner, target: &TargetRef, authorizer: &ServiceRef) -> Value {
    let mut target_ref = json!({"group": crate::api::GATEWAY_API_GROUP, "kind": kind_name(target.kind), "name": target.name});
    if let Some(s) = &target.section {
        target_ref["sectionName"] = json!(s);
    }
    let name = object_name(&["portcullis", owner.name, kind_slug(target.kind), &target.name, target.section.as_deref().unwrap_or("")], 253);
    json!({
        "apiVersion": "gateway.envoyproxy.io/v1alpha1",
        "kind": "SecurityPolicy",
        "metadata": owner.metadata(name, owner.namespace),
        "spec": {
            "targetRefs": [target_ref],
            "extAuth": {
                "grpc": {"backendRefs": [{"group": "", "kind": "Service", "name": authorizer.name, "namespace": authorizer.namespace, "port": authorizer.port}]},
                "failOpen": false,
                "contextExtensions": [{"name": CONTEXT_POLICY, "type": "Value", "value": format!("{}/{}", owner.namespace, owner.name)}],
            },
        },
    })
}

/// The `ReferenceGrant` that lets SecurityPolicies of `from_namespace` send to the authorizer's
/// Service in its own namespace (Gateway API's rule for cross-namespace references).
pub fn reference_grant(from_namespace: &str, authorizer: &ServiceRef) -> Value {
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1beta1",
        "kind": "ReferenceGrant",
        "metadata": {
            "name": object_name(&["portcullis", &authorizer.name, "from", from_namespace], 253),
            "namespace": authorizer.namespace,
            "labels": {MANAGED_BY.0: MANAGED_BY.1, LABEL_POLICY_NAMESPACE: from_namespace},
        },
        "spec": {
            "from": [{"group": "gateway.envoyproxy.io", "kind": "SecurityPolicy", "namespace": from_namespace}],
            "to": [{"group": "", "kind": "Service", "name": authorizer.name}],
        },
    })
}

/// The Istio `AuthorizationPolicy` that sends a Gateway's requests for a policy's hosts to the
/// authorizer (`CUSTOM`). Istio cannot target a route: the authorizer matches the route itself.
/// Hosts are listed with and without a port (Istio compares the whole `Host`).
pub fn authorization_policy(owner: &Owner, gateway: (&str, &str), hosts: &[HostPattern], provider: &str) -> Value {
    let mut to_hosts: Vec<String> = Vec::new();
    for h in hosts {
        match h {
            HostPattern::Any => {
                to_hosts.clear();
                break;
            }
            HostPattern::Exact(e) => to_hosts.extend([e.clone(), format!("{e}:*")]),
            HostPattern::Wildcard(_) => to_hosts.push(h.to_string()),
        }
    }
    let rule = if to_hosts.is_empty() { json!({}) } else { json!({"to": [{"operation": {"hosts": to_hosts}}]}) };
    json!({
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": owner.metadata(object_name(&["portcullis", owner.namespace, owner.name], 253), gateway.0),
        "spec": {
            "targetRefs": [{"group": crate::api::GATEWAY_API_GROUP, "kind": "Gateway", "name": gateway.1}],
            "action": "CUSTOM",
            "provider": {"name": provider},
            "rules": [rule],
        },
    })
}

/// A SecurityPolicy Portcullis did not write that targets the same object: Envoy Gateway applies
/// one per target, so the generated one would be ignored (or would displace the user's).
pub fn foreign_security_policy<'a>(existing: &'a [std::sync::Arc<SecurityPolicy>], namespace: &str, target: &TargetRef) -> Option<&'a str> {
    existing
        .iter()
        .filter(|sp| sp.metadata.namespace.as_deref() == Some(namespace))
        .filter(|sp| sp.metadata.labels.as_ref().and_then(|l| l.get(MANAGED_BY.0)).map(String::as_str) != Some(MANAGED_BY.1))
        .find(|sp| {
            sp.spec.target_ref.iter().chain(sp.spec.target_refs.iter()).any(|r| {
                r["kind"] == kind_name(target.kind)
                    && r["name"] == target.name.as_str()
                    && r.get("sectionName").and_then(Value::as_str).is_none_or(|s| Some(s) == target.section.as_deref())
            })
        })
        .and_then(|sp| sp.metadata.name.as_deref())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_names_are_cut_with_a_hash_and_never_collide() {
        assert_eq!(object_name(&["portcullis", "orders", "httproute", "web", ""], 253), "portcullis-orders-httproute-web");
        let a = object_name(&["portcullis", &"a".repeat(250), "x"], 253);
        let b = object_name(&["portcullis", &"a".repeat(250), "y"], 253);
        assert!(a.len() <= 253 && b.len() <= 253 && a != b, "{a} {b}");
        assert_eq!(label_value(&"p".repeat(100)).len(), 63);
    }

    #[test]
    fn classes_map_to_integrations_and_any_other_is_refused_by_name() {
        let s = WiringSettings::default();
        assert_eq!(s.integration("eg", Some("gateway.envoyproxy.io/gatewayclass-controller")), Ok(Integration::EnvoyGateway));
        assert_eq!(s.integration("istio", Some("istio.io/gateway-controller")), Ok(Integration::Istio));
        let e = s.integration("nginx", Some("gateway.nginx.org/nginx-gateway-controller")).unwrap_err();
        assert!(
            e.contains("GatewayClass nginx") && e.contains("gateway.nginx.org/nginx-gateway-controller") && e.contains("unprotected"),
            "{e}"
        );
        assert!(s.integration("gone", None).unwrap_err().contains("does not exist"));
    }

    #[test]
    fn generated_objects_fail_closed_and_are_owned_only_within_their_namespace() {
        let owner = Owner { namespace: "shop", name: "orders", uid: "u-1" };
        let authorizer = ServiceRef { namespace: "portcullis".into(), name: "portcullis-gateway".into(), port: 9001 };
        let target = TargetRef { kind: TargetKind::HttpRoute, name: "orders".into(), section: Some("pay".into()) };
        let sp = security_policy(&owner, &target, &authorizer);
        assert_eq!(sp["spec"]["extAuth"]["failOpen"], false);
        assert_eq!(sp["spec"]["targetRefs"][0]["sectionName"], "pay");
        assert_eq!(sp["spec"]["extAuth"]["contextExtensions"][0]["value"], "shop/orders");
        assert_eq!(sp["metadata"]["ownerReferences"][0]["uid"], "u-1");
        let ap = authorization_policy(&owner, ("infra", "web"), &[HostPattern::parse("api.shop.test").unwrap()], "portcullis");
        assert_eq!(ap["metadata"]["namespace"], "infra");
        assert!(ap["metadata"].get("ownerReferences").is_none(), "another namespace: collected by label");
        assert_eq!(ap["spec"]["rules"][0]["to"][0]["operation"]["hosts"], json!(["api.shop.test", "api.shop.test:*"]));
        // Every host: every request through the Gateway.
        let all = authorization_policy(&owner, ("shop", "web"), &[HostPattern::Any], "portcullis");
        assert_eq!(all["spec"]["rules"], json!([{}]));
    }
}
