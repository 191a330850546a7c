//! What the controller writes for the gateway that routes an attached AuthPolicy's traffic (pure):
//! an Envoy Gateway `SecurityPolicy` per target, or an Istio `AuthorizationPolicy` per Gateway,
//! both sending the requests to the Portcullis authorizer over gRPC and failing closed.
//!
//! ```text
//!  GatewayClass.controllerName ─ settings ─▶ Integration ─┬─ EnvoyGateway: SecurityPolicy → target (+ ReferenceGrant)
//!                                                         └─ Istio: AuthorizationPolicy CUSTOM → Gateway
//! ```

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::api::gateway_api::{
    AuthorizationPolicy, GRPCRoute, Gateway as GatewayObject, GatewayClass, HTTPRoute, ReferenceGrant, SecurityPolicy,
};
use crate::api::{AncestorRef, AuthPolicy, PolicyAncestorStatus};
use crate::policy::gateway_api::{Applied, Attaching, Attachment, Route, TargetKind, TargetRef, attach, topology};
use crate::policy::host::HostPattern;
use crate::policy::{RejectReason, Rejection};
use kube::Resource;

use super::desired::{MANAGED_BY, condition, merge_conditions};

/// The AuthPolicy a generated object is for (labels; objects in another namespace than the
/// policy cannot be owned by it, and are collected by these).
pub const LABEL_POLICY: &str = "portcullis.dev/policy";
pub const LABEL_POLICY_NAMESPACE: &str = "portcullis.dev/policy-namespace";
/// Which Portcullis installation wrote a generated object: two releases in one cluster each
/// keep and delete only their own.
pub const LABEL_INSTANCE: &str = "portcullis.dev/instance";
/// Sent to the authorizer with every check from a generated object: which AuthPolicy the
/// proxy's own route match chose.
pub const CONTEXT_POLICY: &str = crate::decide::ROUTED_POLICY;
pub const CONTROLLER_NAME: &str = "portcullis.dev/controller";

/// A generated object: (kind, namespace, name).
pub type ObjectKey = (String, String, String);

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
    /// `false`: Gateway API is not read even where it is installed.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// GatewayClass `controllerName` → integration.
    #[serde(default = "default_integrations")]
    pub integrations: BTreeMap<String, Integration>,
    /// Istio's name of the Portcullis extension provider (mesh config `extensionProviders`).
    #[serde(default = "default_istio_provider")]
    pub istio_provider: String,
    /// Per Portcullis gateway, the Service of its authorizer's gRPC port.
    #[serde(default)]
    pub authorizers: BTreeMap<String, ServiceRef>,
    /// This installation's [`LABEL_INSTANCE`] (the controller's namespace and Lease); empty:
    /// none is written.
    #[serde(skip)]
    pub instance: String,
}

impl Default for WiringSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            integrations: default_integrations(),
            istio_provider: default_istio_provider(),
            authorizers: BTreeMap::new(),
            instance: String::new(),
        }
    }
}

fn yes() -> bool {
    true
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

/// The owner (a policy) and identity labels of a generated object.
pub struct Owner<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub uid: &'a str,
    pub instance: &'a str,
}

impl Owner<'_> {
    fn labels(&self) -> Value {
        let mut labels = json!({
            MANAGED_BY.0: MANAGED_BY.1,
            LABEL_POLICY: label_value(self.name),
            LABEL_POLICY_NAMESPACE: self.namespace,
        });
        if !self.instance.is_empty() {
            labels[LABEL_INSTANCE] = json!(self.instance);
        }
        labels
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
    let mut target_ref = json!({"group": crate::api::GATEWAY_API_GROUP, "kind": target.kind.as_str(), "name": target.name});
    if let Some(s) = &target.section {
        target_ref["sectionName"] = json!(s);
    }
    let name = object_name(&["portcullis", owner.name, target.kind.as_str(), &target.name, target.section.as_deref().unwrap_or("")], 253);
    json!({
        "apiVersion": SecurityPolicy::api_version(&()),
        "kind": SecurityPolicy::kind(&()),
        "metadata": owner.metadata(name, owner.namespace),
        "spec": {
            "targetRefs": [target_ref],
            "extAuth": {
                "grpc": {"backendRefs": [{"group": "", "kind": "Service", "name": authorizer.name, "namespace": authorizer.namespace, "port": authorizer.port, "weight": 1}]},
                "failOpen": false,
                "contextExtensions": [{"name": CONTEXT_POLICY, "type": "Value", "value": format!("{}/{}", owner.namespace, owner.name)}],
            },
        },
    })
}

/// The `ReferenceGrant` that lets SecurityPolicies of `from_namespace` send to the authorizer's
/// Service in its own namespace (Gateway API's rule for cross-namespace references).
pub fn reference_grant(from_namespace: &str, authorizer: &ServiceRef, instance: &str) -> Value {
    let mut grant = json!({
        "apiVersion": ReferenceGrant::api_version(&()),
        "kind": ReferenceGrant::kind(&()),
        "metadata": {
            "name": object_name(&["portcullis", &authorizer.name, "from", from_namespace], 253),
            "namespace": authorizer.namespace,
            "labels": {MANAGED_BY.0: MANAGED_BY.1, LABEL_POLICY_NAMESPACE: from_namespace},
        },
        "spec": {
            "from": [{"group": SecurityPolicy::group(&()), "kind": SecurityPolicy::kind(&()), "namespace": from_namespace}],
            "to": [{"group": "", "kind": "Service", "name": authorizer.name}],
        },
    });
    if !instance.is_empty() {
        grant["metadata"]["labels"][LABEL_INSTANCE] = json!(instance);
    }
    grant
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
        "apiVersion": AuthorizationPolicy::api_version(&()),
        "kind": AuthorizationPolicy::kind(&()),
        "metadata": owner.metadata(object_name(&["portcullis", owner.namespace, owner.name], 253), gateway.0),
        "spec": {
            "targetRefs": [{"group": crate::api::GATEWAY_API_GROUP, "kind": "Gateway", "name": gateway.1}],
            "action": "CUSTOM",
            "provider": {"name": provider},
            "rules": [rule],
        },
    })
}

/// Whether `stored` holds everything `desired` sets: the same values for every field written,
/// whatever else the API server added (CRD defaults such as a backendRef's `weight`, another
/// controller's labels). Comparing for equality rewrote such an object on every pass, and each
/// write woke the next pass.
pub fn holds(stored: &Value, desired: &Value) -> bool {
    match (stored, desired) {
        (Value::Object(s), Value::Object(d)) => d.iter().all(|(k, dv)| s.get(k).is_some_and(|sv| holds(sv, dv))),
        (Value::Array(s), Value::Array(d)) => s.len() == d.len() && s.iter().zip(d).all(|(sv, dv)| holds(sv, dv)),
        (s, d) => s == d,
    }
}

/// A generated object as status and logs name it: `kind namespace/name`.
pub fn describe((kind, namespace, name): &ObjectKey) -> String {
    format!("{kind} {namespace}/{name}")
}

/// Whether this installation wrote the object: Portcullis' managed-by label and its instance
/// label (an object without one was written before instances were labelled: taken as ours, and
/// labelled on the next write).
pub fn is_ours(meta: &kube::api::ObjectMeta, instance: &str) -> bool {
    let label = |k: &str| meta.labels.as_ref().and_then(|l| l.get(k)).map(String::as_str);
    label(MANAGED_BY.0) == Some(MANAGED_BY.1) && label(LABEL_INSTANCE).is_none_or(|i| i == instance)
}

/// This installation's instance label value: its namespace and Lease.
pub fn instance_label(namespace: &str, lease: &str) -> String {
    label_value(&format!("{namespace}.{lease}"))
}

/// A SecurityPolicy Portcullis did not write that targets the same object: Envoy Gateway applies
/// one per target, so the generated one would be ignored (or would displace the user's).
pub fn foreign_security_policy<'a>(
    existing: &'a [std::sync::Arc<SecurityPolicy>],
    namespace: &str,
    target: &TargetRef,
    instance: &str,
) -> Option<&'a str> {
    existing
        .iter()
        .filter(|sp| sp.metadata.namespace.as_deref() == Some(namespace))
        .filter(|sp| !is_ours(&sp.metadata, instance))
        .find(|sp| {
            let single = sp.spec.0.get("targetRef").into_iter();
            let many = sp.spec.0.get("targetRefs").and_then(Value::as_array).into_iter().flatten();
            single.chain(many).any(|r| {
                r["kind"] == target.kind.as_str()
                    && r["name"] == target.name.as_str()
                    && r.get("sectionName").and_then(Value::as_str).is_none_or(|s| Some(s) == target.section.as_deref())
            })
        })
        .and_then(|sp| sp.metadata.name.as_deref())
}

/// The Gateway API objects of the cluster, as the watch caches hold them.
#[derive(Default, Clone)]
pub struct World {
    pub classes: Vec<std::sync::Arc<GatewayClass>>,
    pub gateways: Vec<std::sync::Arc<GatewayObject>>,
    pub http_routes: Vec<std::sync::Arc<HTTPRoute>>,
    pub grpc_routes: Vec<std::sync::Arc<GRPCRoute>>,
    pub security_policies: Vec<std::sync::Arc<SecurityPolicy>>,
    /// Generated kinds whose CRDs the cluster does not serve.
    pub missing_kinds: Vec<String>,
}

/// What an attached policy is at one Gateway: accepted or why not (GEP-713 reasons), and the
/// object that wires it there.
#[derive(Debug, Clone, PartialEq)]
pub struct Ancestor {
    /// The Gateway; for a target no Gateway accepted (or that does not exist), the target
    /// itself, so that the status names what is missing.
    pub kind: TargetKind,
    pub gateway: (String, String),
    pub section: Option<String>,
    /// `Err((reason, message))`.
    pub accepted: Result<(), (RejectReason, String)>,
    /// The generated object (kind, namespace, name) that routes this Gateway's requests to the
    /// authorizer.
    pub wired_by: Option<ObjectKey>,
}

/// Everything Gateway API decides for one pass: what each attached policy compiles from, its
/// ancestors, and the objects that must exist.
#[derive(Debug, Default)]
pub struct Plan {
    pub attachments: HashMap<String, Result<Vec<Applied>, Rejection>>,
    pub ancestors: HashMap<String, Vec<Ancestor>>,
    /// (kind, namespace, name) → the object.
    pub objects: BTreeMap<ObjectKey, Value>,
    /// The installation the objects belong to ([`WiringSettings::instance`]).
    pub instance: String,
}

fn object_key(doc: &Value) -> ObjectKey {
    let s = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    (s(&doc["kind"]), s(&doc["metadata"]["namespace"]), s(&doc["metadata"]["name"]))
}

/// Resolves every policy with `targetRefs` against the Gateway API objects and the settings.
pub fn plan(policies: &[std::sync::Arc<AuthPolicy>], world: &World, settings: &WiringSettings) -> Plan {
    let gateways = topology::gateways(&world.gateways);
    let routes = topology::routes(&world.http_routes, &world.grpc_routes, &gateways);
    let attached: Vec<&std::sync::Arc<AuthPolicy>> = policies.iter().filter(|p| !p.spec.target_refs.is_empty()).collect();
    let attaching: Vec<Attaching> = attached
        .iter()
        .map(|p| Attaching {
            namespace: p.metadata.namespace.clone().unwrap_or_default(),
            name: p.metadata.name.clone().unwrap_or_default(),
            created: p.metadata.creation_timestamp.as_ref().map(|t| t.0),
            targets: p
                .spec
                .target_refs
                .iter()
                .map(|t| TargetRef { kind: t.kind, name: t.name.clone(), section: t.section_name.clone() })
                .collect(),
        })
        .collect();
    let outcomes = attach(&attaching, &gateways, &routes);
    let mut outcomes_of: HashMap<&str, Vec<(&TargetRef, &Attachment)>> = HashMap::new();
    for (key, target, outcome) in &outcomes {
        outcomes_of.entry(key.as_str()).or_default().push((target, outcome));
    }
    let route_index: HashMap<(TargetKind, &str, &str), &Route> =
        routes.iter().map(|r| ((r.kind, r.namespace.as_str(), r.name.as_str()), r)).collect();
    let class_of = |ns: &str, name: &str| -> Result<Integration, String> {
        let g = world.gateways.iter().find(|g| g.metadata.namespace.as_deref() == Some(ns) && g.metadata.name.as_deref() == Some(name));
        let Some(g) = g else { return Err(format!("Gateway {ns}/{name} does not exist")) };
        let class = &g.spec.gateway_class_name;
        let controller = world.classes.iter().find(|c| c.metadata.name.as_deref() == Some(class)).map(|c| c.spec.controller_name.as_str());
        let integration = settings.integration(class, controller)?;
        let needs = match integration {
            Integration::EnvoyGateway => SecurityPolicy::kind(&()),
            Integration::Istio => AuthorizationPolicy::kind(&()),
        };
        if world.missing_kinds.iter().any(|k| *k == needs) {
            return Err(format!("GatewayClass {class} needs {needs}, whose CRD this cluster does not serve"));
        }
        Ok(integration)
    };
    let mut plan = Plan { instance: settings.instance.clone(), ..Default::default() };
    for p in attached {
        let (namespace, name) = (p.metadata.namespace.clone().unwrap_or_default(), p.metadata.name.clone().unwrap_or_default());
        let key = format!("{namespace}/{name}");
        let owner =
            Owner { namespace: &namespace, name: &name, uid: p.metadata.uid.as_deref().unwrap_or_default(), instance: &settings.instance };
        let authorizer = settings.authorizers.get(&p.spec.gateway);
        let mut applied_all: Vec<Applied> = Vec::new();
        let mut problems: Vec<(RejectReason, String)> = Vec::new();
        let mut ancestors: Vec<Ancestor> = Vec::new();
        // Istio: one AuthorizationPolicy per Gateway, for the hosts this policy applies on there.
        let mut istio_hosts: BTreeMap<(String, String), Vec<HostPattern>> = BTreeMap::new();
        for (target, outcome) in outcomes_of.get(key.as_str()).into_iter().flatten().copied() {
            let target_gateways: Vec<(String, String)> = match target.kind {
                TargetKind::Gateway => vec![(namespace.clone(), target.name.clone())],
                kind => route_index
                    .get(&(kind, namespace.as_str(), target.name.as_str()))
                    .map(|r| r.parents.iter().map(|(g, _)| g.clone()).collect())
                    .unwrap_or_default(),
            };
            let refused = |reason: RejectReason, why: &str| (reason, why.to_owned());
            let verdict = match outcome {
                Attachment::Accepted { .. } => Ok(()),
                Attachment::TargetNotFound(why) => Err(refused(RejectReason::TargetNotFound, why)),
                Attachment::Conflicted(why) | Attachment::Overridden(why) => Err(refused(RejectReason::Conflicted, why)),
                Attachment::Invalid(why) => Err(refused(RejectReason::Invalid, why)),
            };
            if let Err(e) = &verdict {
                problems.push(e.clone());
            }
            if target_gateways.is_empty() {
                ancestors.push(Ancestor {
                    kind: target.kind,
                    gateway: (namespace.clone(), target.name.clone()),
                    section: None,
                    accepted: verdict.clone(),
                    wired_by: None,
                });
            }
            for gw in target_gateways {
                let mut ancestor =
                    Ancestor { kind: TargetKind::Gateway, gateway: gw.clone(), section: None, accepted: verdict.clone(), wired_by: None };
                if target.kind == TargetKind::Gateway {
                    ancestor.section = target.section.clone();
                }
                // An invalid policy is wired too: its route then gets only what the last good
                // version allows, or nothing (no route: denied) — never served as if unprotected.
                let invalid = matches!(&verdict, Err((RejectReason::Invalid, _)));
                if verdict.is_ok() || invalid {
                    let keep = |e: (RejectReason, String)| if invalid { verdict.clone() } else { Err(e) };
                    match class_of(&gw.0, &gw.1) {
                        Err(why) => {
                            ancestor.accepted = keep((RejectReason::Unsupported, why.clone()));
                            problems.push((RejectReason::Unsupported, why));
                        }
                        Ok(Integration::EnvoyGateway) => {
                            match (authorizer, foreign_security_policy(&world.security_policies, &namespace, target, &settings.instance)) {
                                (_, Some(theirs)) => {
                                    let why = format!(
                                        "SecurityPolicy {namespace}/{theirs} already targets {} {}; Envoy Gateway applies one per target, so Portcullis does not wire it",
                                        target.kind.as_str(),
                                        target.name
                                    );
                                    ancestor.accepted = keep((RejectReason::Conflicted, why.clone()));
                                    problems.push((RejectReason::Conflicted, why));
                                }
                                (None, None) => {
                                    let why = format!(
                                        "no authorizer Service is configured for Portcullis gateway {:?} (gatewayAPI.authorizers)",
                                        p.spec.gateway
                                    );
                                    ancestor.accepted = keep((RejectReason::Invalid, why.clone()));
                                    problems.push((RejectReason::Invalid, why));
                                }
                                (Some(svc), None)
                                    if svc.namespace != namespace
                                        && world.missing_kinds.iter().any(|k| *k == ReferenceGrant::kind(&())) =>
                                {
                                    let why = format!(
                                        "the authorizer Service is in namespace {} and this cluster does not serve ReferenceGrant, which Envoy Gateway needs to send {namespace}'s requests there",
                                        svc.namespace
                                    );
                                    ancestor.accepted = keep((RejectReason::Unsupported, why.clone()));
                                    problems.push((RejectReason::Unsupported, why));
                                }
                                (Some(svc), None) => {
                                    let sp = security_policy(&owner, target, svc);
                                    ancestor.wired_by = Some(object_key(&sp));
                                    plan.objects.insert(object_key(&sp), sp);
                                    if svc.namespace != namespace {
                                        let grant = reference_grant(&namespace, svc, &settings.instance);
                                        plan.objects.insert(object_key(&grant), grant);
                                    }
                                }
                            }
                        }
                        Ok(Integration::Istio) if proxy_only(outcome, &gw).is_some() => {
                            let why = format!(
                                "{} on this Gateway: Istio sends every request of the Gateway to Portcullis, which cannot select the route by it exactly; use an Exact match, or attach to a route without it",
                                proxy_only(outcome, &gw).unwrap_or_default()
                            );
                            ancestor.accepted = keep((RejectReason::Invalid, why.clone()));
                            problems.push((RejectReason::Invalid, why));
                        }
                        Ok(Integration::Istio) => {
                            istio_hosts.entry(gw.clone()).or_default();
                            ancestor.wired_by = Some((
                                AuthorizationPolicy::kind(&()).into_owned(),
                                gw.0.clone(),
                                object_name(&["portcullis", &namespace, &name], 253),
                            ));
                        }
                    }
                }
                if let Attachment::Accepted { applied, .. } = outcome
                    && ancestor.accepted.is_ok()
                {
                    for a in applied.iter().filter(|a| a.gateway == gw) {
                        if let Some(hosts) = istio_hosts.get_mut(&gw) {
                            hosts.extend(a.hosts.iter().filter(|h| !hosts.contains(h)).cloned().collect::<Vec<_>>());
                        }
                        applied_all.push(a.clone());
                    }
                }
                if !ancestors.iter().any(|a| (a.kind, &a.gateway, &a.section) == (ancestor.kind, &ancestor.gateway, &ancestor.section)) {
                    ancestors.push(ancestor);
                }
            }
        }
        for (gw, hosts) in istio_hosts.into_iter().filter(|(_, h)| !h.is_empty()) {
            let ap = authorization_policy(&owner, (&gw.0, &gw.1), &hosts, &settings.istio_provider);
            plan.objects.insert(object_key(&ap), ap);
        }
        // A target that cannot be reproduced refuses the whole policy (its last good version
        // keeps serving); otherwise it applies where it could attach, and says where not.
        let invalid: Vec<String> = problems.iter().filter(|(r, _)| *r == RejectReason::Invalid).map(|(_, m)| m.clone()).collect();
        let attachment = if !invalid.is_empty() {
            Err(Rejection { reason: RejectReason::Invalid, problems: invalid })
        } else if applied_all.is_empty() && !problems.is_empty() {
            Err(Rejection { reason: problems[0].0, problems: problems.iter().map(|(_, m)| m.clone()).collect() })
        } else {
            Ok(applied_all)
        };
        ancestors.sort_by(|a, b| (a.kind, &a.gateway, &a.section).cmp(&(b.kind, &b.gateway, &b.section)));
        ancestors.truncate(16);
        plan.attachments.insert(key.clone(), attachment);
        plan.ancestors.insert(key, ancestors);
    }
    plan
}

/// A route rule match of `outcome` on Gateway `gw` that only the proxy applies (a
/// `RegularExpression` header or query parameter match), described with where it is.
fn proxy_only(outcome: &Attachment, gw: &(String, String)) -> Option<String> {
    let Attachment::Accepted { applied, .. } = outcome else { return None };
    applied.iter().filter(|a| a.gateway == *gw).find_map(|a| {
        let m = a.matches.iter().find_map(|m| m.proxy_only.clone())?;
        Some(format!("route {}/{} {} has {m}", a.route.0, a.route.1, a.rule.as_deref().unwrap_or("(unnamed rule)")))
    })
}

/// A generated object as it exists: the generation written, and the status its gateway's
/// controller gave it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Wired {
    pub generation: Option<i64>,
    pub status: Value,
}

/// What the gateway's own controller says of a generated object at one Gateway: `Ok` with a
/// note for the message, or `Err` with the reason and why it is not enforced there.
///
/// Envoy Gateway reports per Gateway in a SecurityPolicy's `status.ancestors` (`Accepted`, for
/// the generation it saw). Istio reports nothing for a policy attached to a Gateway — only
/// problems, in `status.conditions` — so there the object written is all that can be known, and
/// the message says so.
pub fn gateway_verdict(key: &ObjectKey, wired: &Wired, gateway: &(String, String)) -> Result<&'static str, (&'static str, String)> {
    let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    if key.0 == AuthorizationPolicy::kind(&()) {
        let conditions = wired.status["conditions"].as_array().map(Vec::as_slice).unwrap_or_default();
        return match conditions.iter().find(|c| c["status"] == "False") {
            Some(c) => Err((
                "RejectedByGateway",
                format!("Istio reports {} on {}: {}: {}", text(&c["type"]), describe(key), text(&c["reason"]), text(&c["message"])),
            )),
            None => Ok(" (Istio reports no acceptance for a policy attached to a Gateway: written, not confirmed)"),
        };
    }
    let ancestors = wired.status["ancestors"].as_array().map(Vec::as_slice).unwrap_or_default();
    let here: Vec<&Value> = ancestors
        .iter()
        .filter(|a| {
            let r = &a["ancestorRef"];
            r["kind"].as_str().unwrap_or("Gateway") == "Gateway"
                && r["name"] == gateway.1.as_str()
                && r["namespace"].as_str().unwrap_or(&key.1) == gateway.0
        })
        .collect();
    let pending = |what: String| Err(("PendingGateway", what));
    if here.is_empty() {
        return pending(format!("Envoy Gateway has not reported on {} at this Gateway yet", describe(key)));
    }
    for a in here {
        let conditions = a["conditions"].as_array().map(Vec::as_slice).unwrap_or_default();
        let Some(accepted) = conditions.iter().find(|c| c["type"] == "Accepted") else {
            return pending(format!("Envoy Gateway has not accepted {} at this Gateway yet", describe(key)));
        };
        if accepted["status"] != "True" {
            return Err((
                "RejectedByGateway",
                format!("Envoy Gateway does not accept {}: {}: {}", describe(key), text(&accepted["reason"]), text(&accepted["message"])),
            ));
        }
        if let (Some(seen), Some(written)) = (accepted["observedGeneration"].as_i64(), wired.generation)
            && seen < written
        {
            return pending(format!("Envoy Gateway has not seen generation {written} of {} yet", describe(key)));
        }
    }
    Ok("")
}

/// The `status.ancestors` of a policy: per Gateway, `Accepted` as planned and `Enforced` when
/// it is wired (its generated object exists and the gateway's controller accepts it there) and
/// served by the Portcullis replicas.
pub fn ancestor_statuses(
    ancestors: &[Ancestor],
    wired: &BTreeMap<ObjectKey, Wired>,
    served: Result<(), String>,
    existing: &[PolicyAncestorStatus],
    generation: Option<i64>,
    now: jiff::Timestamp,
) -> Vec<PolicyAncestorStatus> {
    ancestors
        .iter()
        .map(|a| {
            let ancestor_ref = AncestorRef {
                group: crate::api::GATEWAY_API_GROUP.into(),
                kind: a.kind.as_str().into(),
                namespace: a.gateway.0.clone(),
                name: a.gateway.1.clone(),
                section_name: a.section.clone(),
            };
            let accepted = match &a.accepted {
                Ok(()) => condition(
                    "Accepted",
                    true,
                    "Accepted",
                    "the policy applies to its targets through this Gateway".into(),
                    generation,
                    now,
                ),
                Err((reason, why)) => condition("Accepted", false, reason.as_str(), why.clone(), generation, now),
            };
            let enforced = match (&a.accepted, &a.wired_by) {
                (Err(_), _) => condition("Enforced", false, "NotAccepted", "not accepted at this Gateway".into(), generation, now),
                (Ok(()), None) => condition("Enforced", false, "NotWired", "no route of this Gateway is wired yet".into(), generation, now),
                (Ok(()), Some(w)) => match wired.get(w).map(|o| gateway_verdict(w, o, &a.gateway)) {
                    None => condition("Enforced", false, "NotWired", format!("{} is not written yet", describe(w)), generation, now),
                    Some(Err((reason, why))) => condition("Enforced", false, reason, why, generation, now),
                    Some(Ok(_)) if served.is_err() => {
                        condition("Enforced", false, "NotServed", served.clone().unwrap_err(), generation, now)
                    }
                    Some(Ok(note)) => condition(
                        "Enforced",
                        true,
                        "Enforced",
                        format!("{} sends this Gateway's requests to the serving authorizer{note}", describe(w)),
                        generation,
                        now,
                    ),
                },
            };
            let before = existing.iter().find(|e| e.ancestor_ref == ancestor_ref).map(|e| e.conditions.as_slice()).unwrap_or_default();
            PolicyAncestorStatus {
                ancestor_ref,
                controller_name: CONTROLLER_NAME.into(),
                conditions: merge_conditions(before, vec![accepted, enforced]),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_object_with_defaults_and_foreign_labels_holds_what_was_written_and_a_changed_one_does_not() {
        let owner = Owner { namespace: "shop", name: "orders", uid: "u-1", instance: "" };
        let authorizer = ServiceRef { namespace: "portcullis".into(), name: "portcullis-gateway".into(), port: 9001 };
        let target = TargetRef { kind: TargetKind::HttpRoute, name: "orders".into(), section: None };
        let desired = security_policy(&owner, &target, &authorizer);
        let mut stored = desired.clone();
        // As the API server stores it: fields the CRD defaults, a label of someone else's.
        stored["spec"]["extAuth"]["timeout"] = json!("10s");
        stored["metadata"]["labels"]["team"] = json!("shop");
        assert!(holds(&stored, &desired));
        for change in [
            json!({"spec": {"extAuth": {"failOpen": true}}}),
            json!({"spec": {"extAuth": {"contextExtensions": []}}}),
            json!({"metadata": {"labels": {"portcullis.dev/policy": "other"}}}),
        ] {
            let mut edited = stored.clone();
            json_merge(&mut edited, &change);
            assert!(!holds(&edited, &desired), "{change}");
        }
        let mut extra_target = stored.clone();
        extra_target["spec"]["targetRefs"].as_array_mut().unwrap().push(json!({"kind": "HTTPRoute", "name": "x"}));
        assert!(!holds(&extra_target, &desired), "a list is the list written");
    }

    fn json_merge(into: &mut Value, patch: &Value) {
        match (into, patch) {
            (Value::Object(i), Value::Object(p)) => p.iter().for_each(|(k, v)| json_merge(i.entry(k.clone()).or_insert(Value::Null), v)),
            (i, p) => *i = p.clone(),
        }
    }

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
        let owner = Owner { namespace: "shop", name: "orders", uid: "u-1", instance: "" };
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

    fn eg_status(ancestors: Value) -> Wired {
        Wired { generation: Some(2), status: json!({ "ancestors": ancestors }) }
    }

    fn ancestor_entry(name: &str, status: &str, generation: i64) -> Value {
        json!({"ancestorRef": {"group": "gateway.networking.k8s.io", "kind": "Gateway", "namespace": "infra", "name": name},
               "controllerName": "gateway.envoyproxy.io/gatewayclass-controller",
               "conditions": [{"type": "Accepted", "status": status, "reason": if status == "True" { "Accepted" } else { "Conflicted" },
                               "message": "m", "observedGeneration": generation}]})
    }

    #[test]
    fn enforced_at_a_gateway_needs_its_controller_to_accept_the_generated_object_there_and_the_replicas_to_serve() {
        let sp: ObjectKey = ("SecurityPolicy".into(), "shop".into(), "portcullis-orders-httproute-orders".into());
        let ap: ObjectKey = ("AuthorizationPolicy".into(), "infra".into(), "portcullis-shop-orders".into());
        let web = ("infra".to_owned(), "web".to_owned());
        let verdict = |key: &ObjectKey, w: Wired| gateway_verdict(key, &w, &web);
        // Envoy Gateway: per Gateway, for the generation written.
        assert!(verdict(&sp, eg_status(json!([ancestor_entry("web", "True", 2)]))).is_ok());
        assert!(matches!(verdict(&sp, Wired::default()), Err(("PendingGateway", m)) if m.contains("not reported")));
        assert!(matches!(verdict(&sp, eg_status(json!([ancestor_entry("other", "True", 2)]))), Err(("PendingGateway", _))));
        assert!(
            matches!(verdict(&sp, eg_status(json!([ancestor_entry("web", "True", 1)]))), Err(("PendingGateway", m)) if m.contains("generation 2"))
        );
        assert!(
            matches!(verdict(&sp, eg_status(json!([ancestor_entry("web", "True", 2), ancestor_entry("web", "False", 2)]))), Err(("RejectedByGateway", m)) if m.contains("Conflicted"))
        );
        // Istio: only problems are reported.
        assert!(matches!(verdict(&ap, Wired::default()), Ok(note) if note.contains("not confirmed")));
        let refused = Wired {
            generation: Some(1),
            status: json!({"conditions": [{"type": "Reconciled", "status": "False", "reason": "Invalid", "message": "bad"}]}),
        };
        assert!(matches!(verdict(&ap, refused), Err(("RejectedByGateway", m)) if m.contains("Reconciled") && m.contains("bad")));

        // The status: each half named when it is missing, Enforced only with both.
        let now = jiff::Timestamp::from_second(1_800_000_000).unwrap();
        let ancestor =
            Ancestor { kind: TargetKind::Gateway, gateway: web.clone(), section: None, accepted: Ok(()), wired_by: Some(sp.clone()) };
        let enforced = |wired: &BTreeMap<ObjectKey, Wired>, served: Result<(), String>| {
            let st = ancestor_statuses(std::slice::from_ref(&ancestor), wired, served, &[], Some(3), now);
            let c = st[0].conditions.iter().find(|c| c.type_ == "Enforced").unwrap().clone();
            (c.status, c.reason)
        };
        let accepted = BTreeMap::from([(sp.clone(), eg_status(json!([ancestor_entry("web", "True", 2)])))]);
        let pending = BTreeMap::from([(sp.clone(), Wired { generation: Some(2), status: Value::Null })]);
        assert_eq!(enforced(&accepted, Ok(())), ("True".into(), "Enforced".into()));
        assert_eq!(enforced(&accepted, Err("not yet".into())), ("False".into(), "NotServed".into()));
        assert_eq!(enforced(&pending, Ok(())), ("False".into(), "PendingGateway".into()));
        assert_eq!(enforced(&BTreeMap::new(), Ok(())), ("False".into(), "NotWired".into()));
    }
}

#[cfg(test)]
mod plan_tests {
    use super::*;
    use std::sync::Arc;

    fn obj<T: serde::de::DeserializeOwned>(v: Value) -> Arc<T> {
        Arc::new(serde_json::from_value(v).unwrap())
    }

    fn accepted_by(gw: &str) -> Value {
        json!({"parents": [{"parentRef": {"name": gw, "namespace": "infra"}, "controllerName": "x",
            "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted", "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}]})
    }

    fn world() -> World {
        let class = |name: &str, controller: &str| {
            obj(
                json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass", "metadata": {"name": name}, "spec": {"controllerName": controller}}),
            )
        };
        let gateway = |name: &str, class: &str| {
            obj(json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway", "metadata": {"namespace": "infra", "name": name},
                "spec": {"gatewayClassName": class, "listeners": [{"name": "https", "hostname": "*.shop.test"}]}}))
        };
        let route = |name: &str, gw: &str| {
            obj(json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute", "metadata": {"namespace": "shop", "name": name},
                "spec": {"hostnames": [format!("{name}.shop.test")], "rules": [{"name": "all", "matches": [{"path": {"type": "PathPrefix", "value": "/"}}]}]},
                "status": accepted_by(gw)}))
        };
        World {
            classes: vec![
                class("eg", "gateway.envoyproxy.io/gatewayclass-controller"),
                class("istio", "istio.io/gateway-controller"),
                class("nginx", "gateway.nginx.org/nginx-gateway-controller"),
            ],
            gateways: vec![gateway("eg-web", "eg"), gateway("istio-web", "istio"), gateway("nginx-web", "nginx")],
            http_routes: vec![route("orders", "eg-web"), route("mesh", "istio-web"), route("plain", "nginx-web"), route("taken", "eg-web")],
            grpc_routes: vec![],
            security_policies: vec![obj(json!({"apiVersion": "gateway.envoyproxy.io/v1alpha1", "kind": "SecurityPolicy",
                "metadata": {"namespace": "shop", "name": "their-own"},
                "spec": {"targetRefs": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": "taken"}], "basicAuth": {}}}))],
            missing_kinds: vec![],
        }
    }

    fn policy(name: &str, route: &str) -> Arc<AuthPolicy> {
        obj(json!({"apiVersion": "portcullis.dev/v1alpha1", "kind": "AuthPolicy",
            "metadata": {"namespace": "shop", "name": name, "uid": format!("uid-{name}"), "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"targetRefs": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": route}], "rules": [{"name": "r", "public": true}]}}))
    }

    fn settings() -> WiringSettings {
        WiringSettings {
            authorizers: [(
                "default".to_owned(),
                ServiceRef { namespace: "portcullis".into(), name: "portcullis-gateway".into(), port: 9001 },
            )]
            .into(),
            ..Default::default()
        }
    }

    #[test]
    fn each_gateway_class_gets_its_wiring_and_the_rest_are_refused_by_name() {
        let policies = [
            policy("orders", "orders"),
            policy("mesh", "mesh"),
            policy("plain", "plain"),
            policy("taken", "taken"),
            policy("gone", "nope"),
        ];
        let plan = plan(&policies, &world(), &settings());
        let kinds: Vec<(&str, &str, &str)> = plan.objects.keys().map(|(k, n, m)| (k.as_str(), n.as_str(), m.as_str())).collect();
        assert_eq!(
            kinds,
            [
                ("AuthorizationPolicy", "infra", "portcullis-shop-mesh"),
                ("ReferenceGrant", "portcullis", "portcullis-portcullis-gateway-from-shop"),
                ("SecurityPolicy", "shop", "portcullis-orders-httproute-orders"),
            ]
        );
        let accepted = |p: &str| {
            plan.ancestors[&format!("shop/{p}")].iter().map(|a| a.accepted.clone().map_err(|(r, m)| (r.as_str(), m))).collect::<Vec<_>>()
        };
        assert_eq!(accepted("orders"), [Ok(())]);
        assert!(plan.attachments["shop/orders"].as_ref().is_ok_and(|a| a.len() == 1));
        assert!(matches!(&accepted("plain")[0], Err(("Unsupported", m)) if m.contains("gateway.nginx.org/nginx-gateway-controller")));
        assert!(matches!(&plan.attachments["shop/plain"], Err(r) if r.reason == RejectReason::Unsupported), "never served as if protected");
        assert!(matches!(&accepted("taken")[0], Err(("Conflicted", m)) if m.contains("shop/their-own")));
        assert!(matches!(&plan.attachments["shop/gone"], Err(r) if r.reason == RejectReason::TargetNotFound));
        let gone = &plan.ancestors["shop/gone"][0];
        assert_eq!(
            (gone.kind, gone.gateway.1.as_str()),
            (TargetKind::HttpRoute, "nope"),
            "the status names the missing route, not a Gateway"
        );
        // Istio: the authorizer matches the route itself, on the route's hosts.
        let ap = &plan.objects[&("AuthorizationPolicy".to_owned(), "infra".to_owned(), "portcullis-shop-mesh".to_owned())];
        assert_eq!(ap["spec"]["rules"][0]["to"][0]["operation"]["hosts"], json!(["mesh.shop.test", "mesh.shop.test:*"]));
    }

    #[test]
    fn exact_header_matches_are_matched_by_portcullis_and_regular_expressions_are_refused_where_it_selects_the_route() {
        let mut w = world();
        let with_header = |name: &str, gw: &str, kind: &str| {
            obj(json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute", "metadata": {"namespace": "shop", "name": name},
                "spec": {"rules": [{"name": "beta", "matches": [{"path": {"type": "PathPrefix", "value": "/beta"}, "headers": [{"type": kind, "name": "x-beta", "value": "1"}]}]}]},
                "status": accepted_by(gw)}))
        };
        w.http_routes = vec![
            with_header("eg-beta", "eg-web", "RegularExpression"),
            with_header("istio-beta", "istio-web", "Exact"),
            with_header("istio-re", "istio-web", "RegularExpression"),
        ];
        let plan = plan(&[policy("eg", "eg-beta"), policy("istio", "istio-beta"), policy("istio-re", "istio-re")], &w, &settings());
        // Envoy Gateway checks per route: what only the proxy can match stays the proxy's.
        let eg = &plan.attachments["shop/eg"].as_ref().unwrap()[0].matches[0];
        assert_eq!((eg.path.prefix.as_deref(), eg.when.len(), eg.proxy_only.is_some()), (Some("/beta"), 0, true));
        // Istio sends the whole Gateway: an exact header match is a condition Portcullis checks …
        let istio = &plan.attachments["shop/istio"].as_ref().unwrap()[0].matches[0];
        assert_eq!(istio.when, [crate::policy::config::RequestCondition::Header { name: "x-beta".into(), value: "1".into() }]);
        // … and a regular expression it cannot reproduce refuses the policy.
        let refused = plan.attachments["shop/istio-re"].as_ref().unwrap_err();
        assert_eq!(refused.reason, RejectReason::Invalid);
        assert!(
            refused.message().contains("route shop/istio-re beta has RegularExpression header match \"x-beta\""),
            "{}",
            refused.message()
        );
    }

    #[test]
    fn each_installation_labels_its_objects_and_another_ones_security_policy_is_someone_elses() {
        let settings = WiringSettings { instance: instance_label("portcullis-a", "portcullis-controller"), ..settings() };
        assert_eq!(settings.instance, "portcullis-a.portcullis-controller");
        assert!(instance_label(&"n".repeat(63), "portcullis-controller").len() <= 63, "a label value");
        let mut w = world();
        // Installation b wired the orders route already (its own AuthPolicy there).
        let theirs = |instance: Option<&str>| -> Arc<SecurityPolicy> {
            let mut labels = json!({MANAGED_BY.0: MANAGED_BY.1});
            if let Some(i) = instance {
                labels[LABEL_INSTANCE] = json!(i);
            }
            obj(json!({"apiVersion": "gateway.envoyproxy.io/v1alpha1", "kind": "SecurityPolicy",
                "metadata": {"namespace": "shop", "name": "portcullis-other-httproute-orders", "labels": labels},
                "spec": {"targetRefs": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": "orders"}], "extAuth": {}}}))
        };
        w.security_policies = vec![theirs(Some("portcullis-b.portcullis-controller"))];
        let conflicted = plan(&[policy("orders", "orders")], &w, &settings);
        assert!(
            matches!(&conflicted.attachments["shop/orders"], Err(r) if r.reason == RejectReason::Conflicted && r.message().contains("portcullis-other-httproute-orders"))
        );
        // Without it, every generated object carries this installation's label.
        w.security_policies.clear();
        let wired = plan(&[policy("orders", "orders"), policy("mesh", "mesh")], &w, &settings);
        assert!(!wired.objects.is_empty());
        for (key, doc) in &wired.objects {
            assert_eq!(doc["metadata"]["labels"][LABEL_INSTANCE], json!(settings.instance), "{key:?}");
        }
        // Ours: this installation's, or unlabelled (written before instances had labels).
        let meta = |labels: Value| -> kube::api::ObjectMeta { serde_json::from_value(json!({"labels": labels})).unwrap() };
        assert!(is_ours(&meta(json!({MANAGED_BY.0: MANAGED_BY.1, LABEL_INSTANCE: settings.instance})), &settings.instance));
        assert!(is_ours(&meta(json!({MANAGED_BY.0: MANAGED_BY.1})), &settings.instance));
        assert!(!is_ours(
            &meta(json!({MANAGED_BY.0: MANAGED_BY.1, LABEL_INSTANCE: "portcullis-b.portcullis-controller"})),
            &settings.instance
        ));
        assert!(!is_ours(&meta(json!({LABEL_INSTANCE: settings.instance})), &settings.instance), "not Portcullis'");
    }

    #[test]
    fn a_missing_crd_is_reported_and_never_half_wired() {
        let mut w = world();
        w.missing_kinds = vec!["ReferenceGrant".into(), "AuthorizationPolicy".into()];
        let plan = plan(&[policy("orders", "orders"), policy("mesh", "mesh")], &w, &settings());
        assert!(plan.objects.is_empty(), "no SecurityPolicy without the grant it needs: {:?}", plan.objects.keys());
        assert!(matches!(&plan.attachments["shop/orders"], Err(r) if r.message().contains("ReferenceGrant")));
        assert!(
            matches!(&plan.attachments["shop/mesh"], Err(r) if r.reason == RejectReason::Unsupported && r.message().contains("AuthorizationPolicy"))
        );
    }

    #[test]
    fn without_an_authorizer_service_nothing_is_wired_and_the_policy_says_why() {
        let plan = plan(&[policy("orders", "orders")], &world(), &WiringSettings::default());
        assert!(plan.objects.is_empty());
        assert!(matches!(&plan.attachments["shop/orders"], Err(r) if r.message().contains("gatewayAPI.authorizers")));
    }
}
