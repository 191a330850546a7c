//! `TokenExchangePolicy`: which workloads may exchange the internal token they received for one
//! addressed to a workload of this namespace (RFC 8693 token exchange at the gateway).
// kube's repeated `printcolumn(type_ = ..)` arguments look like duplicated attributes to clippy.
#![allow(clippy::duplicated_attributes)]

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::authpolicy::{default_gateway, is_default_gateway};
use super::{DNS_LABEL_PATTERN, Duration, GatewayServing, LocalObjectRef, Requirement, SERVICE_ACCOUNT_PATTERN};

/// Declared by the team of the receiving workload: the audience is one of its own
/// ServiceAccounts, so a namespace can only allow tokens addressed to itself.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "portcullis.dev",
    version = "v1alpha1",
    kind = "TokenExchangePolicy",
    namespaced,
    status = "TokenExchangePolicyStatus",
    shortname = "txpol",
    category = "portcullis",
    doc = "TokenExchangePolicy says which workloads may exchange the internal token they received for one addressed to a ServiceAccount of this namespace, on behalf of the same user (RFC 8693).",
    printcolumn(name = "Gateway", type_ = "string", json_path = ".spec.gateway"),
    printcolumn(name = "Audience", type_ = "string", json_path = ".spec.audience.serviceAccount"),
    printcolumn(name = "Accepted", type_ = "string", json_path = r#".status.conditions[?(@.type=="Accepted")].status"#),
    printcolumn(name = "Programmed", type_ = "string", json_path = r#".status.conditions[?(@.type=="Programmed")].status"#),
    printcolumn(name = "Enforced", type_ = "string", json_path = r#".status.conditions[?(@.type=="Enforced")].status"#),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct TokenExchangePolicySpec {
    /// Name of the gateway whose token endpoint exchanges.
    #[serde(default = "default_gateway", skip_serializing_if = "is_default_gateway")]
    #[schemars(regex(pattern = DNS_LABEL_PATTERN), length(max = 63))]
    #[schemars(extend("default" = "default"))]
    pub gateway: String,
    /// Who the new tokens are for.
    pub audience: ExchangeAudience,
    /// A SigningKey of this namespace that may mint for the gateway (its settings' `mintingKeys`).
    pub signing_key_ref: LocalObjectRef,
    /// Lifetime of an exchanged token (default 5m, at most 1h); never beyond the subject token's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": "duration(self) >= duration('1s') && duration(self) <= duration('1h')", "message": "ttl must be between 1s and 1h"}
    ]))]
    pub ttl: Option<Duration>,
    /// Claims carried over from the subject token (top-level names; `sub` always is). Nothing
    /// the subject token does not carry is ever added.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(min = 1, max = 256)))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub claims: Vec<String>,
    /// Conditions on the subject token's claims (as in AuthPolicy rules).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub require: Vec<Requirement>,
    /// How many workloads may stand between the user and the audience, counting the caller
    /// (nested `act` claims; default 2, at most 8).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 8))]
    pub max_delegation_depth: Option<u32>,
    /// The workloads that may exchange, and for which subject tokens.
    #[schemars(length(min = 1, max = 64))]
    pub from: Vec<ExchangeActor>,
}

/// A ServiceAccount of the policy's namespace: the exchanged token's `aud` is its username,
/// `system:serviceaccount:<namespace>:<name>`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExchangeAudience {
    #[schemars(regex(pattern = r"^[a-z0-9]([-.a-z0-9]*[a-z0-9])?$"), length(min = 1, max = 253))]
    pub service_account: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExchangeActor {
    /// The calling workload, `namespace/serviceaccount`: it proves itself with its own projected
    /// ServiceAccount token (`actor_token`).
    #[schemars(regex(pattern = SERVICE_ACCOUNT_PATTERN), length(max = 317))]
    pub service_account: String,
    /// The `aud` values of the subject tokens it may present: tokens that were minted for it.
    /// Default: its ServiceAccount username (`system:serviceaccount:<namespace>:<name>`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(min = 1, max = 256)))]
    pub subject_audiences: Vec<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TokenExchangePolicyStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The data plane as the gateway replicas report it (their heartbeats).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gateways: Vec<GatewayServing>,
}

/// The username Kubernetes gives a ServiceAccount (`sub` of its tokens).
pub fn service_account_username(namespace: &str, name: &str) -> String {
    format!("system:serviceaccount:{namespace}:{name}")
}
