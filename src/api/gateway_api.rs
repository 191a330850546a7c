//! Read-only views of the Gateway API objects an AuthPolicy attaches to, and of the objects of
//! the gateways Portcullis wires: only the fields Portcullis reads (the rest is ignored, never
//! written back). Their CRDs belong to Gateway API and the gateways, not to Portcullis.
// kube's repeated `printcolumn`-style arguments look like duplicated attributes to clippy.
#![allow(clippy::duplicated_attributes)]

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// `GatewayClass`: which controller implements the Gateways of this class.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(group = "gateway.networking.k8s.io", version = "v1", kind = "GatewayClass")]
#[serde(rename_all = "camelCase")]
pub struct GatewayClassSpec {
    pub controller_name: String,
}

/// `Gateway`: its class and listeners.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(group = "gateway.networking.k8s.io", version = "v1", kind = "Gateway", namespaced)]
#[serde(rename_all = "camelCase")]
pub struct GatewaySpec {
    pub gateway_class_name: String,
    #[serde(default)]
    pub listeners: Vec<Listener>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct Listener {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
}

/// `HTTPRoute`: hostnames, rules and the parents that accepted it (status).
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(group = "gateway.networking.k8s.io", version = "v1", kind = "HTTPRoute", namespaced, status = "RouteStatus")]
#[serde(rename_all = "camelCase")]
pub struct HTTPRouteSpec {
    #[serde(default)]
    pub hostnames: Vec<String>,
    #[serde(default)]
    pub rules: Vec<HttpRouteRule>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct HttpRouteRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Gateway API's default for a rule without matches: one `PathPrefix /`.
    #[serde(default = "one_default_match")]
    pub matches: Vec<HttpRouteMatch>,
}

fn one_default_match() -> Vec<HttpRouteMatch> {
    vec![HttpRouteMatch::default()]
}

/// `GRPCRoute`: as an HTTPRoute, with gRPC method matches.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(group = "gateway.networking.k8s.io", version = "v1", kind = "GRPCRoute", namespaced, status = "RouteStatus")]
#[serde(rename_all = "camelCase")]
pub struct GRPCRouteSpec {
    #[serde(default)]
    pub hostnames: Vec<String>,
    #[serde(default)]
    pub rules: Vec<GrpcRouteRule>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct GrpcRouteRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default = "one_default_grpc_match")]
    pub matches: Vec<GrpcRouteMatch>,
}

fn one_default_grpc_match() -> Vec<GrpcRouteMatch> {
    vec![GrpcRouteMatch::default()]
}

/// A route's status: per parent, whether that Gateway accepted it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
pub struct RouteStatus {
    #[serde(default)]
    pub parents: Vec<RouteParentStatus>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RouteParentStatus {
    pub parent_ref: ParentRef,
    #[serde(default)]
    pub controller_name: String,
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ParentRef {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub section_name: Option<String>,
}

/// An HTTPRoute rule match, as far as the authorizer reads it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<HttpPathMatch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<Value>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub query_params: Vec<Value>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct HttpPathMatch {
    #[serde(rename = "type", default = "path_prefix")]
    pub kind: String,
    #[serde(default = "root")]
    pub value: String,
}

/// Gateway API's default path match: `PathPrefix /`.
impl Default for HttpPathMatch {
    fn default() -> Self {
        Self { kind: path_prefix(), value: root() }
    }
}

fn path_prefix() -> String {
    "PathPrefix".into()
}

fn root() -> String {
    "/".into()
}

/// A GRPCRoute rule match, as far as the authorizer reads it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct GrpcRouteMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<GrpcMethodMatch>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<Value>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct GrpcMethodMatch {
    #[serde(rename = "type", default = "exact")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
}

fn exact() -> String {
    "Exact".into()
}

/// Envoy Gateway's `SecurityPolicy`: the ones Portcullis writes, and the users' (Envoy Gateway
/// applies one per target). The spec is kept as written.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(group = "gateway.envoyproxy.io", version = "v1alpha1", kind = "SecurityPolicy", namespaced, status = "ObjectStatus")]
pub struct SecurityPolicySpec(pub serde_json::Map<String, Value>);

/// Istio's `AuthorizationPolicy`, as Portcullis writes it (spec kept as written).
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(group = "security.istio.io", version = "v1", kind = "AuthorizationPolicy", namespaced, status = "ObjectStatus")]
pub struct AuthorizationPolicySpec(pub serde_json::Map<String, Value>);

/// The status another controller writes on an object Portcullis generated (Envoy Gateway's
/// `ancestors`, Istio's `conditions`), kept as written.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
pub struct ObjectStatus(pub serde_json::Map<String, Value>);

/// Gateway API's `ReferenceGrant`, as Portcullis writes it (spec kept as written).
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(group = "gateway.networking.k8s.io", version = "v1beta1", kind = "ReferenceGrant", namespaced)]
pub struct ReferenceGrantSpec(pub serde_json::Map<String, Value>);
