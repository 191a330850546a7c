//! `SigningKey`: a signing key pair that Portcullis generates, rotates and publishes.
// kube's repeated `printcolumn(type_ = ..)` arguments look like duplicated attributes to clippy.
#![allow(clippy::duplicated_attributes)]

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::Duration;

fn default_rotation_interval() -> Duration {
    Duration::from_secs(24 * 3600)
}

fn default_pre_publish() -> Duration {
    Duration::from_secs(15 * 60)
}

fn default_retain() -> Duration {
    Duration::from_secs(3600)
}

/// A signing key pair kept in a Secret and rotated on a schedule: the next key is published
/// `prePublish` before it signs, and an old key stays published `retain` after it stops signing.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "portcullis.dev",
    version = "v1alpha1",
    kind = "SigningKey",
    namespaced,
    status = "SigningKeyStatus",
    shortname = "sigkey",
    category = "portcullis",
    doc = "SigningKey asks Portcullis for a signing key pair kept in a Secret, rotated on a schedule without ever breaking a valid token.",
    printcolumn(name = "Algorithm", type_ = "string", json_path = ".spec.algorithm"),
    printcolumn(name = "Active", type_ = "string", json_path = ".status.activeKid"),
    // A `date` column shows a future time as <invalid>: the next transition is in the future.
    printcolumn(name = "Next", type_ = "string", json_path = ".status.nextTransition"),
    printcolumn(name = "Ready", type_ = "string", json_path = r#".status.conditions[?(@.type=="Ready")].status"#),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "duration(self.prePublish) < duration(self.rotationInterval)",
        "message": "prePublish must be shorter than rotationInterval"
    },
    {
        "rule": "!has(self.rsaBits) || self.algorithm == 'RS256'",
        "message": "rsaBits applies only to RS256"
    }
]))]
pub struct SigningKeySpec {
    pub algorithm: SigningAlgorithm,
    /// How long each key signs.
    #[serde(default = "default_rotation_interval")]
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": "duration(self) >= duration('1s')", "message": "rotationInterval must be at least 1s"}
    ]))]
    pub rotation_interval: Duration,
    /// How long a new key is in the JWKS before it signs: at least the longest time any verifier
    /// caches the JWKS.
    #[serde(default = "default_pre_publish")]
    pub pre_publish: Duration,
    /// How long a key stays in the JWKS after it stopped signing: at least the longest lifetime of
    /// a token it signed, plus clock skew.
    #[serde(default = "default_retain")]
    pub retain: Duration,
    /// RSA modulus size for RS256 (default 2048).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = [2048, 3072, 4096]))]
    pub rsa_bits: Option<u32>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, JsonSchema)]
pub enum SigningAlgorithm {
    RS256,
    ES256,
    EdDSA,
}

impl SigningAlgorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RS256 => "RS256",
            Self::ES256 => "ES256",
            Self::EdDSA => "EdDSA",
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum KeyState {
    /// Published in the JWKS, not signing yet.
    Pending,
    /// Signing (exactly one key at a time).
    Active,
    /// Published, no longer signing; removed once every token it signed has expired.
    Retired,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeyStatus {
    pub kid: String,
    pub state: KeyState,
    pub created_at: Time,
    pub activates_at: Time,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retires_at: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub removes_at: Option<Time>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SigningKeyStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_kid: Option<String>,
    /// When the schedule next changes a key's state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_transition: Option<Time>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["kid"]))]
    pub keys: Vec<KeyStatus>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}
