//! Minting internal tokens (`forward.token: issue`) with a SigningKey's active key.

use serde_json::{Map, Value, json};

use super::token::Verified;
use crate::keys::store::KeyRing;
use crate::keys::{KeyError, SigningKeyPair, b64url};
use crate::policy::KeyRef;
use crate::policy::config::IssueConfig;

pub struct Minter {
    pair: SigningKeyPair,
}

impl std::fmt::Debug for Minter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Minter").field("kid", &self.pair.kid()).finish()
    }
}

impl Minter {
    /// Picks the key that signs: the one the config names as active when this gateway has it
    /// (the config and the key Secret may arrive in either order), else the keyring's own active
    /// key. Both are published, so either choice verifies downstream.
    pub fn new(key: &KeyRef, ring: Option<&KeyRing>, active_kid: Option<&str>) -> Result<Self, String> {
        let ring = ring.ok_or_else(|| format!("no private keys for SigningKey {key}"))?;
        let stored = active_kid
            .and_then(|kid| ring.keys.iter().find(|k| k.kid == kid))
            .or_else(|| ring.active())
            .ok_or_else(|| format!("SigningKey {key} has no active key"))?;
        let pair = SigningKeyPair::from_pkcs8_pem(ring.algorithm, &stored.private_key_pem).map_err(|e| e.to_string())?;
        if pair.kid() != stored.kid {
            return Err(format!("SigningKey {key}: stored kid does not match its key"));
        }
        Ok(Self { pair })
    }

    pub fn kid(&self) -> &str {
        self.pair.kid()
    }

    /// A token for the upstream: `iss` is the gateway, `sub` and the configured claims come from
    /// the caller's verified token; it never outlives the caller's token.
    pub fn mint(&self, issuer_url: &str, issue: &IssueConfig, caller: &Verified, now: i64) -> Result<String, KeyError> {
        let mut claims = Map::new();
        for name in &issue.claims {
            if let Some(v) = caller.claims.get(name.as_str()) {
                claims.insert(name.clone(), v.clone());
            }
        }
        if let Some(sub) = caller.claims.get("sub") {
            claims.insert("sub".into(), sub.clone());
        }
        let mut jti = [0u8; 16];
        aws_lc_rs::rand::fill(&mut jti).map_err(|_| KeyError::Sign)?;
        let exp = (now + issue.ttl_secs as i64).min(caller.exp);
        claims.insert("iss".into(), json!(issuer_url));
        claims.insert("aud".into(), json!(issue.audience));
        claims.insert("iat".into(), json!(now));
        claims.insert("nbf".into(), json!(now));
        claims.insert("exp".into(), json!(exp));
        claims.insert("jti".into(), json!(b64url(&jti)));
        self.pair.sign_jwt(&Value::Object(claims))
    }
}
