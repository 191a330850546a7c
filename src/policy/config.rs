//! `GatewayConfig`: the compiled, immutable configuration of one gateway — what the controller
//! publishes and the authorizer enforces. Defaults are applied and references resolved; the
//! `version` is a hash of the content.

use std::collections::BTreeMap;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::api::{HttpMethod, JwkObject, JwtAlgorithm, PathMatch, Requirement, SigningAlgorithm, TokenForwarding, TokenSource};

pub const CONFIG_FORMAT: u32 = 1;
/// Upper bound for a decompressed config, against decompression bombs.
pub const MAX_CONFIG_BYTES: u64 = 256 * 1024 * 1024;

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GatewayConfig {
    pub format: u32,
    pub gateway: String,
    /// Content hash of everything else; changes exactly when the content does.
    pub version: String,
    /// Accepted policies, ordered by namespace and name.
    pub policies: Vec<PolicyConfig>,
    /// Public keys of the SigningKeys the policies reference, ordered by namespace and name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub signing_keys: Vec<PublishedKeys>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyConfig {
    pub namespace: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
    /// Creation time, the first tie-breaker between equally specific routes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<Timestamp>,
    /// Empty means every host.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub issuers: Vec<IssuerConfig>,
    pub token_sources: Vec<TokenSource>,
    pub rules: Vec<RuleConfig>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cors_preflight: bool,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IssuerConfig {
    pub issuer: String,
    pub audiences: Vec<String>,
    pub algorithms: Vec<JwtAlgorithm>,
    pub clock_skew_secs: u64,
    pub keys: KeySource,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KeyRef {
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for KeyRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

impl std::str::FromStr for KeyRef {
    type Err = String;

    /// `namespace/name`.
    fn from_str(s: &str) -> Result<Self, String> {
        match s.split_once('/') {
            Some((namespace, name)) if !namespace.is_empty() && !name.is_empty() && !name.contains('/') => {
                Ok(Self { namespace: namespace.to_owned(), name: name.to_owned() })
            }
            _ => Err(format!("{s:?} is not namespace/name")),
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum KeySource {
    #[serde(rename_all = "camelCase")]
    Remote {
        uri: String,
        refresh_secs: u64,
    },
    Inline {
        keys: Vec<JwkObject>,
    },
    SigningKey(KeyRef),
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuleConfig {
    pub name: String,
    pub paths: Vec<PathMatch>,
    /// Empty means every method.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<HttpMethod>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub public: bool,
    /// A request without a token is allowed as anonymous.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub optional: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub require: Vec<Requirement>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub any_of: Vec<Vec<Requirement>>,
    pub forward: ForwardConfig,
    /// Audit mode: decided and counted, but allowed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub audit: bool,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ForwardConfig {
    /// Lower-case header name → claim path, one entry per level.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub claims_to_headers: BTreeMap<String, Vec<String>>,
    pub token: TokenForwarding,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issue: Option<IssueConfig>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IssueConfig {
    pub signing_key: KeyRef,
    pub audience: String,
    pub ttl_secs: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub claims: Vec<String>,
}

/// The public half of a SigningKey, as the gateway publishes it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PublishedKeys {
    pub namespace: String,
    pub name: String,
    pub algorithm: SigningAlgorithm,
    /// The kid that signed when the config was compiled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_kid: Option<String>,
    /// When each key signs. Gateways pick the signing key by their own clock from these windows,
    /// so a switch to a pre-published key happens on time even if the next config is late.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub signing: Vec<SigningWindow>,
    /// Upper bound for `Cache-Control: max-age` on the JWKS (the SigningKey's prePublish), so that
    /// no verifier caches the JWKS past the moment a pre-published key starts signing.
    pub max_age_secs: u64,
    /// Pending, Active and Retired public keys.
    pub keys: Vec<JwkObject>,
    /// The SigningKey's retain, in seconds (checked against token lifetimes).
    pub retain_secs: u64,
    /// When the schedule next changes a key's state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_transition: Option<Timestamp>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SigningWindow {
    pub kid: String,
    pub from: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<Timestamp>,
}

impl SigningWindow {
    pub fn contains(&self, now: Timestamp) -> bool {
        self.from <= now && self.until.is_none_or(|u| now < u)
    }
}

impl PublishedKeys {
    pub fn key_ref(&self) -> KeyRef {
        KeyRef { namespace: self.namespace.clone(), name: self.name.clone() }
    }
}

impl PolicyConfig {
    /// `namespace/name`, how policies are named in logs, metrics and maps.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

impl GatewayConfig {
    /// A served policy by namespace and name (`policies` is ordered by them).
    pub fn policy(&self, namespace: &str, name: &str) -> Option<&PolicyConfig> {
        let i = self.policies.binary_search_by(|p| (p.namespace.as_str(), p.name.as_str()).cmp(&(namespace, name))).ok()?;
        Some(&self.policies[i])
    }

    /// The policies this config serves, by `namespace/name` (the last good versions).
    pub fn policies_by_key(&self) -> std::collections::HashMap<String, PolicyConfig> {
        self.policies.iter().map(|p| (p.key(), p.clone())).collect()
    }

    /// Builds a config and stamps its version.
    pub fn new(gateway: &str, policies: Vec<PolicyConfig>, signing_keys: Vec<PublishedKeys>) -> Self {
        let mut config = Self { format: CONFIG_FORMAT, gateway: gateway.to_owned(), version: String::new(), policies, signing_keys };
        config.version = config.content_hash();
        config
    }

    /// SHA-256 over the canonical JSON of the config without its version, first 16 hex digits.
    pub fn content_hash(&self) -> String {
        let mut unversioned = self.clone();
        unversioned.version = String::new();
        let bytes = serde_json::to_vec(&unversioned).expect("a config serializes");
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &bytes);
        digest.as_ref()[..8].iter().map(|b| format!("{b:02x}")).collect()
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a config serializes")
    }

    /// Parses a config and checks that its version matches its content.
    pub fn from_json(bytes: &[u8]) -> Result<Self, String> {
        let config: Self = serde_json::from_slice(bytes).map_err(|e| format!("not a gateway config: {e}"))?;
        if config.format != CONFIG_FORMAT {
            return Err(format!("config format {} is not supported by this build (expects {CONFIG_FORMAT})", config.format));
        }
        let expected = config.content_hash();
        if config.version != expected {
            return Err(format!(
                "config version {} does not match its content ({expected}): it was altered after compilation",
                config.version
            ));
        }
        Ok(config)
    }

    /// Parses JSON or gzip-compressed JSON (large configs are stored compressed).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, String> {
        if bytes.starts_with(&[0x1f, 0x8b]) {
            use std::io::Read;
            let mut json = Vec::new();
            flate2::read::GzDecoder::new(bytes)
                .take(MAX_CONFIG_BYTES + 1)
                .read_to_end(&mut json)
                .map_err(|e| format!("not valid gzip: {e}"))?;
            if json.len() as u64 > MAX_CONFIG_BYTES {
                return Err(format!("decompressed config is larger than {MAX_CONFIG_BYTES} bytes"));
            }
            Self::from_json(&json)
        } else {
            Self::from_json(bytes)
        }
    }

    pub fn to_gzip(&self) -> Vec<u8> {
        use std::io::Write;
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        enc.write_all(&self.to_json()).expect("writing to memory");
        enc.finish().expect("writing to memory")
    }

    /// The SigningKeys some rule mints with: the only keys the gateway publishes (what services
    /// trust). Keys used only to verify callers are never published.
    pub fn minting_keys(&self) -> impl Iterator<Item = &PublishedKeys> {
        let minting: std::collections::BTreeSet<KeyRef> = self
            .policies
            .iter()
            .flat_map(|p| p.rules.iter().filter_map(|r| r.forward.issue.as_ref().map(|i| i.signing_key.clone())))
            .collect();
        self.signing_keys.iter().filter(move |k| minting.contains(&k.key_ref()))
    }

    pub fn published_keys(&self, key: &KeyRef) -> Option<&PublishedKeys> {
        self.signing_keys.iter().find(|k| k.namespace == key.namespace && k.name == key.name)
    }

    pub fn route_count(&self) -> usize {
        self.policies.iter().map(|p| p.rules.iter().map(|r| r.paths.len()).sum::<usize>() * p.hosts.len().max(1)).sum()
    }
}
