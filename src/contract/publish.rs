//! What the controller publishes and gateways read (pure): the gateway ConfigMap and key
//! Secret formats, their names and content hashes. Both sides use this module; neither imports
//! the other.
//!
//! ```text
//!  controller ─ writes ─▶ portcullis-gateway-<g>       (binaryData config.json.gz, keys-hash)
//!                         portcullis-gateway-<g>-keys  (<namespace>.<name>.json keyrings)
//!  gateway    ─ reads ──▶ the pair, applied only when it belongs together
//! ```

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::Resource;

use crate::keys::store::KeyRing;
use crate::policy::{GatewayConfig, KeyRef};

pub const ANNOTATION_HASH: &str = "portcullis.dev/content-hash";

pub const ANNOTATION_VERSION: &str = "portcullis.dev/config-version";

/// On the gateway ConfigMap: the content hash of the key Secret this config needs. Gateways
/// serve a config only together with exactly those keys.
pub const ANNOTATION_KEYS: &str = "portcullis.dev/keys-hash";

/// The compiled config inside the gateway ConfigMap (`binaryData`, gzip-compressed JSON).
pub const CONFIG_KEY: &str = "config.json.gz";

pub fn gateway_configmap_name(gateway: &str) -> String {
    format!("portcullis-gateway-{gateway}")
}

pub fn gateway_secret_name(gateway: &str) -> String {
    format!("portcullis-gateway-{gateway}-keys")
}

pub(crate) fn sha256_hex(parts: &[&[u8]]) -> String {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for p in parts {
        ctx.update(&(p.len() as u64).to_be_bytes());
        ctx.update(p);
    }
    ctx.finish().as_ref()[..16].iter().map(|b| format!("{b:02x}")).collect()
}

pub fn content_hash<K: Resource>(obj: &K) -> Option<&str> {
    obj.meta().annotations.as_ref()?.get(ANNOTATION_HASH).map(String::as_str)
}

/// Whether a gateway ConfigMap and key Secret belong together: the Secret holds exactly the
/// keys the config was published with. A config from before this annotation pairs with any
/// Secret. The controller writes the Secret first, so a gateway that sees a new Secret before
/// the new config keeps serving the old pair instead of an inconsistent one (a config that mints
/// with a key its Secret no longer has answers 503).
pub fn pair_is_consistent(cm: &ConfigMap, keys: Option<&Secret>) -> bool {
    let Some(want) = cm.metadata.annotations.as_ref().and_then(|a| a.get(ANNOTATION_KEYS)) else { return true };
    match keys {
        Some(secret) => content_hash(secret) == Some(want.as_str()),
        None => *want == sha256_hex(&[]),
    }
}

/// The config held by a gateway ConfigMap, if it holds a valid one.
pub fn config_from_configmap(cm: &ConfigMap) -> Result<GatewayConfig, String> {
    if let Some(b) = cm.binary_data.as_ref().and_then(|d| d.get(CONFIG_KEY)) {
        return GatewayConfig::from_bytes(&b.0);
    }
    if let Some(s) = cm.data.as_ref().and_then(|d| d.get("config.json")) {
        return GatewayConfig::from_bytes(s.as_bytes());
    }
    Err(format!("ConfigMap has neither binaryData.{CONFIG_KEY} nor data.config.json"))
}

/// File name of a SigningKey's keyring in a keys directory or Secret: `<namespace>.<name>.json`
/// (namespaces have no dots, so the first dot separates).
pub fn keyring_file_name(key: &KeyRef) -> String {
    format!("{}.{}.json", key.namespace, key.name)
}

pub fn parse_keyring_file_name(file: &str) -> Option<KeyRef> {
    let stem = file.strip_suffix(".json")?;
    let (namespace, name) = stem.split_once('.')?;
    (!namespace.is_empty() && !name.is_empty()).then(|| KeyRef { namespace: namespace.to_owned(), name: name.to_owned() })
}

/// A sign-in client secret's value in its Secret: the Secret carries the client-secret label,
/// and its key is there and not empty.
pub fn client_secret_value(secret: Option<&Secret>, r: &crate::policy::config::SecretRef) -> Option<Vec<u8>> {
    let secret = secret?;
    let labelled = secret.metadata.labels.as_ref().is_some_and(|l| l.contains_key(crate::policy::validate::CLIENT_SECRET_LABEL));
    let value = secret.data.as_ref()?.get(&r.key)?;
    (labelled && !value.0.is_empty()).then(|| value.0.clone())
}

/// Sign-in client secrets from the gateway's key Secret, by entry name
/// ([`crate::policy::config::SecretRef::entry`]).
pub fn client_secrets_from_secret(secret: &Secret) -> BTreeMap<String, String> {
    secret
        .data
        .iter()
        .flatten()
        .filter(|(entry, _)| entry.starts_with(crate::policy::config::CLIENT_SECRET_PREFIX))
        .filter_map(|(entry, v)| Some((entry.clone(), String::from_utf8(v.0.clone()).ok()?)))
        .collect()
}

/// Minting keyrings from the gateway's key Secret. An entry that does not parse fails the whole
/// Secret, so the previous config and keys keep serving instead of losing a minting key.
pub fn keys_from_secret(secret: &Secret) -> Result<BTreeMap<KeyRef, KeyRing>, String> {
    let mut out = BTreeMap::new();
    for (file, bytes) in secret.data.iter().flatten() {
        let Some(key) = parse_keyring_file_name(file) else { continue };
        let ring = KeyRing::from_json(&bytes.0).map_err(|e| format!("key Secret entry {file} is not a valid keyring: {e}"))?;
        out.insert(key, ring);
    }
    Ok(out)
}
