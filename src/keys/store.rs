//! The stored form of one SigningKey's keys — the same JSON document in local mode's state
//! directory and in the Kubernetes Secret (key `keyring.json`). See docs/keys.md.
//!
//! Everything the rotation schedule needs lives here, so that a restart in the middle of a
//! rotation loses nothing: private keys (PKCS#8 PEM), kids (RFC 7638 thumbprints), states and
//! the times of their transitions.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{KeyError, SigningKeyPair};
use crate::api::{KeyState, SigningAlgorithm};

pub const FORMAT_VERSION: u32 = 1;
/// Key of the document inside a Secret's `data`.
pub const SECRET_KEY: &str = "keyring.json";

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KeyRing {
    pub format: u32,
    pub keys: Vec<StoredKey>,
    /// The last `portcullis.dev/rotate` request acted on, so that each request rotates once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_rotate_request: Option<String>,
    /// kids revoked on request; never published again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub revoked: Vec<String>,
}

#[derive(Serialize, Deserialize, Clone, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StoredKey {
    pub kid: String,
    pub algorithm: SigningAlgorithm,
    pub state: KeyState,
    pub created_at: Timestamp,
    /// When it starts (or started) signing.
    pub activates_at: Timestamp,
    /// When it stops (or stopped) signing; set once a successor is scheduled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retires_at: Option<Timestamp>,
    /// When it leaves the JWKS; set once it is retired.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub removes_at: Option<Timestamp>,
    pub private_key_pem: String,
}

impl StoredKey {
    /// Parses the private key and checks that it is the key the kid names.
    pub fn key_pair(&self) -> Result<SigningKeyPair, KeyError> {
        let pair = SigningKeyPair::from_pkcs8_pem(self.algorithm, &self.private_key_pem)?;
        if pair.kid() != self.kid {
            return Err(KeyError::Parse(self.algorithm.as_str(), format!("kid {} does not match its key", self.kid)));
        }
        Ok(pair)
    }

    pub fn new(pair: &SigningKeyPair, state: KeyState, created_at: Timestamp, activates_at: Timestamp) -> Result<Self, KeyError> {
        Ok(Self {
            kid: pair.kid().to_owned(),
            algorithm: pair.algorithm(),
            state,
            created_at,
            activates_at,
            retires_at: None,
            removes_at: None,
            private_key_pem: pair.to_pkcs8_pem()?,
        })
    }
}

impl Default for KeyRing {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for StoredKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredKey")
            .field("kid", &self.kid)
            .field("algorithm", &self.algorithm)
            .field("state", &self.state)
            .field("created_at", &self.created_at)
            .field("activates_at", &self.activates_at)
            .field("retires_at", &self.retires_at)
            .field("removes_at", &self.removes_at)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("writing {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("{path} is not a valid keyring: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

impl KeyRing {
    pub fn new() -> Self {
        Self { format: FORMAT_VERSION, keys: Vec::new(), last_rotate_request: None, revoked: Vec::new() }
    }

    pub fn from_json(bytes: &[u8]) -> Result<Self, String> {
        let ring: KeyRing = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        ring.check()?;
        Ok(ring)
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("a keyring serializes")
    }

    /// Structural checks that hold for every keyring written by Portcullis.
    pub fn check(&self) -> Result<(), String> {
        if self.format != FORMAT_VERSION {
            return Err(format!("unsupported format {} (this build reads {FORMAT_VERSION})", self.format));
        }
        let active = self.keys.iter().filter(|k| k.state == KeyState::Active).count();
        if active > 1 {
            return Err(format!("{active} keys are Active; at most one may be"));
        }
        let mut seen = std::collections::BTreeSet::new();
        for k in &self.keys {
            if !seen.insert(&k.kid) {
                return Err(format!("kid {} appears twice", k.kid));
            }
        }
        Ok(())
    }

    pub fn active(&self) -> Option<&StoredKey> {
        self.keys.iter().find(|k| k.state == KeyState::Active)
    }

    /// Parses the private keys (done once per keyring change, never per request).
    pub fn key_pairs(&self) -> Result<BTreeMap<String, SigningKeyPair>, KeyError> {
        self.keys
            .iter()
            .map(|k| {
                let pair = k.key_pair()?;
                Ok((k.kid.clone(), pair))
            })
            .collect()
    }

    /// The public JWKS: every published key (Pending, Active, Retired), in a stable order.
    pub fn public_jwks(&self) -> Result<Value, KeyError> {
        let pairs = self.key_pairs()?;
        let keys: Vec<Value> = self.keys.iter().filter_map(|k| pairs.get(&k.kid)).map(|p| Value::Object(p.public_jwk().clone())).collect();
        Ok(json!({ "keys": keys }))
    }
}

/// Writes a file so that a crash at any point leaves either the old or the new content:
/// write to a temporary file in the same directory, fsync, rename over, fsync the directory.
pub fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> Result<(), StoreError> {
    let err = |source| StoreError::Write { path: path.to_owned(), source };
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(err)?;
    let tmp = dir.join(format!(".{}.tmp", path.file_name().and_then(|n| n.to_str()).unwrap_or("file")));
    {
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, mode);
        let mut f = opts.open(&tmp).map_err(err)?;
        // The mode given at creation is filtered by the umask; set it explicitly.
        #[cfg(unix)]
        std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(mode)).map_err(err)?;
        f.write_all(bytes).map_err(err)?;
        f.sync_all().map_err(err)?;
    }
    std::fs::rename(&tmp, path).map_err(err)?;
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(err)?;
    Ok(())
}

/// Reads a keyring file; `Ok(None)` when there is none yet.
pub fn read_keyring(path: &Path) -> Result<Option<KeyRing>, StoreError> {
    match std::fs::read(path) {
        Ok(bytes) => KeyRing::from_json(&bytes).map(Some).map_err(|reason| StoreError::Invalid { path: path.to_owned(), reason }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(StoreError::Read { path: path.to_owned(), source }),
    }
}

pub fn write_keyring(path: &Path, ring: &KeyRing) -> Result<(), StoreError> {
    write_atomically(path, &ring.to_json(), 0o600)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring_with_one_key(alg: SigningAlgorithm) -> KeyRing {
        let pair = SigningKeyPair::generate(alg, None).unwrap();
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        let mut ring = KeyRing::new();
        ring.keys.push(StoredKey::new(&pair, KeyState::Active, now, now).unwrap());
        ring
    }

    #[test]
    fn keyring_round_trips_through_a_private_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys").join("ring.json");
        let ring = ring_with_one_key(SigningAlgorithm::ES256);
        write_keyring(&path, &ring).unwrap();
        assert_eq!(read_keyring(&path).unwrap().unwrap(), ring);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
        assert!(read_keyring(&dir.path().join("absent.json")).unwrap().is_none());
    }

    #[test]
    fn public_jwks_has_no_private_parts() {
        let ring = ring_with_one_key(SigningAlgorithm::RS256);
        let jwks = ring.public_jwks().unwrap();
        let key = &jwks["keys"][0];
        assert_eq!(key["kid"], ring.keys[0].kid);
        for private in ["d", "p", "q", "dp", "dq", "qi"] {
            assert!(key.get(private).is_none());
        }
    }

    #[test]
    fn a_keyring_with_two_active_keys_is_refused() {
        let mut ring = ring_with_one_key(SigningAlgorithm::EdDSA);
        let mut second = ring_with_one_key(SigningAlgorithm::EdDSA).keys.remove(0);
        second.state = KeyState::Active;
        ring.keys.push(second);
        assert!(KeyRing::from_json(&ring.to_json()).unwrap_err().contains("Active"));
    }

    #[test]
    fn a_key_whose_kid_does_not_match_is_refused() {
        let mut ring = ring_with_one_key(SigningAlgorithm::ES256);
        ring.keys[0].kid = "forged".into();
        assert!(ring.key_pairs().unwrap_err().to_string().contains("does not match"));
    }

    #[test]
    fn a_crash_before_the_rename_leaves_the_previous_keyring_intact() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ring.json");
        let old = ring_with_one_key(SigningAlgorithm::ES256);
        write_keyring(&path, &old).unwrap();
        // A writer killed after writing part of the temporary file, before renaming it.
        std::fs::write(dir.path().join(".ring.json.tmp"), &old.to_json()[..40]).unwrap();
        assert_eq!(read_keyring(&path).unwrap().unwrap(), old);
        let new = ring_with_one_key(SigningAlgorithm::ES256);
        write_keyring(&path, &new).unwrap();
        assert_eq!(read_keyring(&path).unwrap().unwrap(), new);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no temporary file is left behind");
    }
}
