//! Config from files: a compiled `GatewayConfig` (e.g. a mounted ConfigMap) and a directory of
//! keyrings for minting (e.g. a mounted Secret), polled for changes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::Gateway;
use crate::keys::store::KeyRing;
use crate::policy::{GatewayConfig, KeyRef};

pub use crate::contract::publish::{keyring_file_name, parse_keyring_file_name};

/// Reads a compiled config: JSON, or gzip-compressed JSON.
pub fn read_config(path: &Path) -> Result<GatewayConfig, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    GatewayConfig::from_bytes(&bytes).map_err(|e| format!("{}: {e}", path.display()))
}

/// Reads every keyring of a keys directory. Files not named like keyrings are skipped (a mounted
/// Secret also holds `..data` links and the like); a keyring file that does not parse fails the
/// whole read, so the previous config and keys keep serving instead of losing a minting key.
pub fn read_keys_dir(dir: &Path) -> Result<BTreeMap<KeyRef, KeyRing>, String> {
    let mut out = BTreeMap::new();
    let entries = std::fs::read_dir(dir).map_err(|e| format!("reading {}: {e}", dir.display()))?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let Some(key) = parse_keyring_file_name(&name) else { continue };
        let bytes = std::fs::read(entry.path()).map_err(|e| format!("reading {}: {e}", entry.path().display()))?;
        let ring = KeyRing::from_json(&bytes).map_err(|e| format!("{}: not a valid keyring: {e}", entry.path().display()))?;
        out.insert(key, ring);
    }
    Ok(out)
}

/// Reads the sign-in client secrets of a keys directory (its `client-secret-*` files).
pub fn read_client_secrets_dir(dir: &Path) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    let entries = std::fs::read_dir(dir).map_err(|e| format!("reading {}: {e}", dir.display()))?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with(crate::policy::config::CLIENT_SECRET_PREFIX) {
            continue;
        }
        let text = std::fs::read_to_string(entry.path()).map_err(|e| format!("reading {}: {e}", entry.path().display()))?;
        out.insert(name, text);
    }
    Ok(out)
}

fn fingerprint(paths: &[&Path]) -> Vec<u8> {
    let mut out = Vec::new();
    for p in paths {
        let files: Vec<PathBuf> = if p.is_dir() {
            let mut v: Vec<PathBuf> = std::fs::read_dir(p).map(|rd| rd.flatten().map(|e| e.path()).collect()).unwrap_or_default();
            v.sort();
            v
        } else {
            vec![p.to_path_buf()]
        };
        for f in files {
            out.extend_from_slice(f.to_string_lossy().as_bytes());
            out.extend_from_slice(&std::fs::read(&f).unwrap_or_default());
        }
    }
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &out).as_ref().to_vec()
}

/// Loads the config file (and keys) into the gateway, then again whenever their content
/// changes. A bad file is logged and the previous config keeps serving.
pub async fn watch_files(gateway: Arc<Gateway>, config: PathBuf, keys: Option<PathBuf>, every: Duration, mut stop: watch::Receiver<bool>) {
    let mut last = Vec::new();
    loop {
        let mut watched = vec![config.as_path()];
        watched.extend(keys.as_deref());
        let now = fingerprint(&watched);
        if now != last {
            last = now;
            let loaded = read_config(&config).and_then(|c| {
                let rings = keys.as_deref().map(read_keys_dir).transpose()?.unwrap_or_default();
                let secrets = keys.as_deref().map(read_client_secrets_dir).transpose()?.unwrap_or_default();
                Ok((c, rings, secrets))
            });
            match loaded {
                // apply() reports its own failures.
                Ok((c, k, secrets)) => drop(gateway.apply_with(c, &k, &secrets)),
                Err(e) => gateway.load_failed(&e),
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_broken_keyring_fails_the_read_instead_of_dropping_its_keys() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("shop.good.json"), KeyRing::default().to_json()).unwrap();
        std::fs::write(dir.path().join("..data"), "ignored").unwrap();
        assert_eq!(read_keys_dir(dir.path()).unwrap().len(), 1);
        std::fs::write(dir.path().join("shop.internal.json"), b"{\"format\": 1, \"keys\": [").unwrap();
        let err = read_keys_dir(dir.path()).unwrap_err();
        assert!(err.contains("shop.internal.json: not a valid keyring"), "{err}");
    }

    #[test]
    fn keyring_file_names_round_trip() {
        let k = KeyRef { namespace: "shop".into(), name: "internal.v2".into() };
        assert_eq!(keyring_file_name(&k), "shop.internal.v2.json");
        assert_eq!(parse_keyring_file_name("shop.internal.v2.json"), Some(k));
        assert_eq!(parse_keyring_file_name("..data"), None);
        assert_eq!(parse_keyring_file_name("x.json"), None);
    }
}
