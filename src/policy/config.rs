//! `GatewayConfig`: the compiled, immutable configuration of one gateway — what the controller
//! publishes and the authorizer enforces. Defaults are applied and references resolved; the
//! `version` is a hash of the content.

use std::collections::BTreeMap;
use std::sync::Arc;

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
    /// Accepted policies, ordered by namespace and name. Shared (`Arc`) with the compiler's
    /// last-good versions and validation cache: 10,000 policies are not copied per compilation.
    #[serde(deserialize_with = "compact_policies")]
    pub policies: Vec<Arc<PolicyConfig>>,
    /// Public keys of the SigningKeys the policies reference, ordered by namespace and name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub signing_keys: Vec<PublishedKeys>,
    /// The cluster's ServiceAccount token issuer, for `kubernetes` issuers and token exchange.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_issuer: Option<ClusterIssuer>,
    /// Accepted TokenExchangePolicies, ordered by namespace and name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exchanges: Vec<ExchangeConfig>,
}

/// The issuer of the cluster's ServiceAccount tokens and its public keys, as the controller
/// discovered them (or local mode's stand-in).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClusterIssuer {
    pub issuer: String,
    pub keys: Vec<JwkObject>,
}

/// One TokenExchangePolicy, compiled.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExchangeConfig {
    pub namespace: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
    /// The `aud` of exchanged tokens: a ServiceAccount username of `namespace`.
    pub audience: String,
    pub signing_key: KeyRef,
    pub ttl_secs: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub claims: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub require: Vec<Requirement>,
    pub max_depth: u32,
    pub actors: Vec<ExchangeActorConfig>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExchangeActorConfig {
    /// `namespace/name`, or `namespace/*`.
    pub service_account: String,
    /// Accepted `aud` of the subject token; empty: the actor's own username.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subject_audiences: Vec<String>,
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sign_in: Option<SignInConfig>,
}

/// Browser sign-in of a policy (`spec.signIn`), defaults applied.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SignInConfig {
    pub issuer: String,
    pub client_id: String,
    /// A confidential client's secret (delivered with the gateway's keys, never in its config).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret: Option<SecretRef>,
    /// Always starts with `openid`.
    pub scopes: Vec<String>,
    pub session_key: KeyRef,
    pub session_lifetime_secs: u64,
    pub callback_path: String,
    pub logout_path: String,
    pub post_logout_redirect: String,
    pub https: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_redirect_hosts: Vec<String>,
    /// Claims of the provider's userinfo endpoint join the session's.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub userinfo: bool,
}

/// A key of a Secret: where a confidential client's secret is.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretRef {
    pub namespace: String,
    pub name: String,
    pub key: String,
}

impl SecretRef {
    /// Its entry in the gateway's keys Secret (and keys directory): a digest of the reference,
    /// so that no name can collide with another or with a keyring file.
    pub fn entry(&self) -> String {
        let digest =
            aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, format!("{}\0{}\0{}", self.namespace, self.name, self.key).as_bytes());
        let hex: String = digest.as_ref()[..16].iter().map(|b| format!("{b:02x}")).collect();
        format!("{CLIENT_SECRET_PREFIX}{hex}")
    }
}

impl std::fmt::Display for SecretRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{} (key {})", self.namespace, self.name, self.key)
    }
}

/// The name prefix of client secret entries in a gateway's keys.
pub const CLIENT_SECRET_PREFIX: &str = "client-secret-";

/// Where an OpenID provider's discovery document is; also the name its health is reported under.
pub fn discovery_url(issuer: &str) -> String {
    format!("{}/.well-known/openid-configuration", issuer.trim_end_matches('/'))
}

impl SignInConfig {
    /// `scheme://host` as browsers reach `raw_host` (the proxy's Host, port included).
    pub fn origin(&self, raw_host: &str) -> String {
        format!("{}://{}", if self.https { "https" } else { "http" }, raw_host.to_ascii_lowercase())
    }

    /// `target` as a browser on `raw_host` is sent there: a path of the host made absolute (some
    /// proxies, Traefik's forward auth, resolve a relative `Location` against the authorizer's
    /// own URL), a URL as it is.
    pub fn absolute(&self, raw_host: &str, target: &str) -> String {
        if target.starts_with('/') { format!("{}{target}", self.origin(raw_host)) } else { target.to_owned() }
    }

    /// The session cookie's name (its chunks add `-0`, `-1`): `__Host-` where browsers hold
    /// such cookies to host-only, `Secure`, `Path=/`.
    pub fn session_cookie(&self) -> &'static str {
        if self.https { "__Host-portcullis-session" } else { "portcullis-session" }
    }

    pub fn login_cookie(&self) -> &'static str {
        if self.https { "__Host-portcullis-login" } else { "portcullis-login" }
    }
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

impl IssuerConfig {
    pub fn is_cluster(&self) -> bool {
        matches!(self.keys, KeySource::Cluster { .. })
    }
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
    /// The cluster's ServiceAccount issuer (the config's `clusterIssuer`; `issuer` is empty):
    /// only expiring tokens naming a ServiceAccount, issued for at most `maxLifetimeSecs`.
    #[serde(rename_all = "camelCase")]
    Cluster {
        max_lifetime_secs: u64,
    },
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuleConfig {
    pub name: String,
    /// This rule's hosts where they are not the policy's (a policy attached to Gateway API
    /// routes: each route has its own). Empty: the policy's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    pub paths: Vec<PathMatch>,
    /// Empty means every method.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<HttpMethod>,
    /// Header and query parameter values a request must carry besides its path and method (a
    /// Gateway API route match the authorizer reproduces). At most one per name, sorted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub when: Vec<RequestCondition>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub public: bool,
    /// A request without a token is allowed as anonymous.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub optional: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub require: Vec<Requirement>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub any_of: Vec<Vec<Requirement>>,
    /// The caller must be one of these workloads (`namespace/name` or `namespace/*`), with a
    /// token of the policy's cluster issuer.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub service_accounts: Vec<String>,
    pub forward: ForwardConfig,
    /// Audit mode: decided and counted, but allowed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub audit: bool,
}

/// A request header (name lower-case, compared case-insensitively as HTTP does) or query
/// parameter (name case-sensitive) that must have exactly this value: Gateway API's `Exact`
/// header and query parameter matches.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(tag = "in", rename_all = "camelCase", deny_unknown_fields)]
pub enum RequestCondition {
    Header { name: String, value: String },
    Query { name: String, value: String },
}

impl RequestCondition {
    pub fn is_header(&self) -> bool {
        matches!(self, Self::Header { .. })
    }
}

/// Whether two condition sets can hold for one request: no name asks for two values.
pub fn compatible(a: &[RequestCondition], b: &[RequestCondition]) -> bool {
    use RequestCondition::*;
    a.iter().all(|x| {
        b.iter().all(|y| match (x, y) {
            (Header { name: n, value: v }, Header { name: m, value: w }) | (Query { name: n, value: v }, Query { name: m, value: w }) => {
                n != m || v == w
            }
            _ => true,
        })
    })
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ForwardConfig {
    /// Lower-case header name → claim path, one entry per level.
    #[serde(default, skip_serializing_if = "HeaderClaims::is_empty")]
    pub claims_to_headers: HeaderClaims,
    pub token: TokenForwarding,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issue: Option<IssueConfig>,
}

/// Header → claim path, ordered by header: an object in JSON, a vector in memory. Every rule
/// carries its effective `forward`, and a map's node costs ~550 bytes even for two entries (a
/// fifth of a compiled policy, held by every gateway replica).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct HeaderClaims(Vec<(String, Vec<String>)>);

impl HeaderClaims {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &Vec<String>)> {
        self.0.iter().map(|(h, c)| (h, c))
    }
}

impl From<BTreeMap<String, Vec<String>>> for HeaderClaims {
    fn from(map: BTreeMap<String, Vec<String>>) -> Self {
        Self(map.into_iter().collect())
    }
}

impl Serialize for HeaderClaims {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.iter())
    }
}

impl<'de> Deserialize<'de> for HeaderClaims {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        BTreeMap::<String, Vec<String>>::deserialize(d).map(Self::from)
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash)]
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

/// Serialized JSON straight into SHA-256, without holding it.
struct Sha256Writer(aws_lc_rs::digest::Context);

impl std::io::Write for Sha256Writer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
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

/// The policies of a config, each given its spare capacity back as soon as it is parsed: a
/// vector of one element is parsed with room for four, a requirement takes 248 bytes, and a
/// third of a parsed policy was empty slots (held by every gateway replica, twice while a new
/// config is built beside the serving one).
fn compact_policies<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Arc<PolicyConfig>>, D::Error> {
    struct Policies;
    impl<'de> serde::de::Visitor<'de> for Policies {
        type Value = Vec<Arc<PolicyConfig>>;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a list of policies")
        }

        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0));
            while let Some(mut p) = seq.next_element::<PolicyConfig>()? {
                p.shrink();
                out.push(Arc::new(p));
            }
            out.shrink_to_fit();
            Ok(out)
        }
    }
    d.deserialize_seq(Policies)
}

impl PolicyConfig {
    fn shrink(&mut self) {
        fn strings(v: &mut Vec<String>) {
            v.shrink_to_fit();
        }
        fn requirements(v: &mut Vec<Requirement>) {
            v.shrink_to_fit();
            for r in v {
                for list in [&mut r.in_, &mut r.not_in, &mut r.contains_all, &mut r.contains_any, &mut r.claim_path].into_iter().flatten() {
                    strings(list);
                }
            }
        }
        strings(&mut self.hosts);
        self.issuers.shrink_to_fit();
        for i in &mut self.issuers {
            strings(&mut i.audiences);
            i.algorithms.shrink_to_fit();
        }
        self.token_sources.shrink_to_fit();
        self.rules.shrink_to_fit();
        for r in &mut self.rules {
            strings(&mut r.hosts);
            r.paths.shrink_to_fit();
            r.methods.shrink_to_fit();
            r.when.shrink_to_fit();
            requirements(&mut r.require);
            r.any_of.shrink_to_fit();
            r.any_of.iter_mut().for_each(requirements);
            r.forward.claims_to_headers.0.shrink_to_fit();
            r.forward.claims_to_headers.0.iter_mut().for_each(|(_, c)| strings(c));
        }
    }

    /// The hosts a rule applies on (empty: every host).
    pub fn rule_hosts<'a>(&'a self, rule: &'a RuleConfig) -> &'a [String] {
        if rule.hosts.is_empty() { &self.hosts } else { &rule.hosts }
    }

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
    pub fn policies_by_key(&self) -> std::collections::HashMap<String, Arc<PolicyConfig>> {
        self.policies.iter().map(|p| (p.key(), p.clone())).collect()
    }

    /// Builds a config and stamps its version.
    pub fn new(gateway: &str, policies: Vec<Arc<PolicyConfig>>, signing_keys: Vec<PublishedKeys>) -> Self {
        let mut config = Self {
            format: CONFIG_FORMAT,
            gateway: gateway.to_owned(),
            version: String::new(),
            policies,
            signing_keys,
            cluster_issuer: None,
            exchanges: Vec::new(),
        };
        config.version = config.content_hash();
        config
    }

    /// SHA-256 over the canonical JSON of the config without its version, first 16 hex digits.
    pub fn content_hash(&mut self) -> String {
        // The version is taken out while the rest is serialized: a clone of a large config cost
        // as much again in time and memory.
        let version = std::mem::take(&mut self.version);
        let mut hasher =
            std::io::BufWriter::with_capacity(64 * 1024, Sha256Writer(aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256)));
        serde_json::to_writer(&mut hasher, &*self).expect("a config serializes");
        self.version = version;
        let digest = hasher.into_inner().unwrap_or_else(|_| unreachable!("hashing never fails")).0.finish();
        digest.as_ref()[..8].iter().map(|b| format!("{b:02x}")).collect()
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a config serializes")
    }

    /// Parses a config and checks that its version matches its content.
    pub fn from_json(bytes: &[u8]) -> Result<Self, String> {
        let mut config: Self = serde_json::from_slice(bytes).map_err(|e| format!("not a gateway config: {e}"))?;
        config.check_version()?;
        Ok(config)
    }

    /// Checks the format and that the version matches the content.
    fn check_version(&mut self) -> Result<(), String> {
        if self.format != CONFIG_FORMAT {
            return Err(format!("config format {} is not supported by this build (expects {CONFIG_FORMAT})", self.format));
        }
        let expected = self.content_hash();
        if self.version != expected {
            return Err(format!(
                "config version {} does not match its content ({expected}): it was altered after compilation",
                self.version
            ));
        }
        Ok(())
    }

    /// Parses JSON or gzip-compressed JSON (large configs are stored compressed).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, String> {
        if bytes.starts_with(&[0x1f, 0x8b]) {
            use std::io::Read;
            // Parsed as it is decompressed: the JSON of a large config is never held whole.
            let mut limited = flate2::read::GzDecoder::new(bytes).take(MAX_CONFIG_BYTES + 1);
            let parsed: Result<Self, _> = serde_json::from_reader(std::io::BufReader::with_capacity(64 * 1024, &mut limited));
            if limited.limit() == 0 {
                return Err(format!("decompressed config is larger than {MAX_CONFIG_BYTES} bytes"));
            }
            let mut config = parsed.map_err(|e| match e.classify() {
                serde_json::error::Category::Io => format!("not valid gzip: {e}"),
                _ => format!("not a gateway config: {e}"),
            })?;
            config.check_version()?;
            Ok(config)
        } else {
            Self::from_json(bytes)
        }
    }

    /// Compressed JSON, serialized straight into the compressor (a large config's JSON is never
    /// held whole). The default level: `best` took twice as long for a 0.01% smaller result.
    pub fn to_gzip(&self) -> Vec<u8> {
        use std::io::Write;
        // Buffered: the encoder zeroes its 32 KiB output buffer on every write, and the
        // serializer writes token by token (three quarters of a pass's time went to memset).
        let mut out =
            std::io::BufWriter::with_capacity(64 * 1024, flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default()));
        serde_json::to_writer(&mut out, self).expect("writing to memory");
        out.flush().expect("writing to memory");
        out.into_inner().unwrap_or_else(|_| unreachable!("flushed")).finish().expect("writing to memory")
    }

    /// The SigningKeys some rule mints with: the only keys the gateway publishes (what services
    /// trust). Keys used only to verify callers are never published.
    pub fn minting_keys(&self) -> impl Iterator<Item = &PublishedKeys> {
        let minting: std::collections::BTreeSet<KeyRef> = self
            .policies
            .iter()
            .flat_map(|p| p.rules.iter().filter_map(|r| r.forward.issue.as_ref().map(|i| i.signing_key.clone())))
            .chain(self.exchanges.iter().map(|x| x.signing_key.clone()))
            .collect();
        self.signing_keys.iter().filter(move |k| minting.contains(&k.key_ref()))
    }

    /// The SigningKeys that seal sign-in sessions: delivered to the gateway with the minting keys,
    /// never published.
    pub fn sealing_keys(&self) -> impl Iterator<Item = &PublishedKeys> {
        let sealing: std::collections::BTreeSet<KeyRef> =
            self.policies.iter().filter_map(|p| p.sign_in.as_ref().map(|s| s.session_key.clone())).collect();
        self.signing_keys.iter().filter(move |k| sealing.contains(&k.key_ref()))
    }

    /// The client secrets of the sign-ins: delivered to the gateway with its keys.
    pub fn client_secrets(&self) -> impl Iterator<Item = &SecretRef> {
        self.policies.iter().filter_map(|p| p.sign_in.as_ref().and_then(|s| s.client_secret.as_ref()))
    }

    /// The JWKS of the keys the gateway mints with, each kid once: what services trust.
    pub fn minting_jwks(&self) -> serde_json::Value {
        let mut seen = std::collections::BTreeSet::new();
        let keys: Vec<&serde_json::Map<String, serde_json::Value>> = self
            .minting_keys()
            .flat_map(|k| k.keys.iter().map(|j| &j.0))
            .filter(|j| seen.insert(j.get("kid").and_then(|k| k.as_str()).unwrap_or_default().to_owned()))
            .collect();
        serde_json::json!({ "keys": keys })
    }

    pub fn published_keys(&self, key: &KeyRef) -> Option<&PublishedKeys> {
        self.signing_keys.iter().find(|k| k.namespace == key.namespace && k.name == key.name)
    }

    pub fn route_count(&self) -> usize {
        self.policies.iter().map(|p| p.rules.iter().map(|r| r.paths.len()).sum::<usize>() * p.hosts.len().max(1)).sum()
    }
}
