//! Minting internal tokens (`forward.token: issue`) with a SigningKey's signing key.

use jiff::Timestamp;
use serde_json::{Map, Value, json};

use std::sync::Arc;

use http::HeaderValue;

use super::token::{Minted, Verified};
use crate::keys::store::KeyRing;
use crate::keys::{KeyError, SigningKeyPair, b64url};
use crate::policy::config::{IssueConfig, PublishedKeys, SigningWindow};

pub struct Minter {
    /// Keys this gateway holds, with the windows in which they sign.
    keys: Vec<(SigningWindow, SigningKeyPair)>,
    /// The key named active when the config was compiled: used when no window covers the clock.
    fallback: usize,
}

impl std::fmt::Debug for Minter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.keys.iter().map(|(w, _)| w)).finish()
    }
}

impl Minter {
    /// Pairs the published signing windows with the private keys delivered to this gateway (the
    /// config and the key Secret may arrive in either order: windows without a key are skipped).
    pub fn new(published: &PublishedKeys, ring: Option<&KeyRing>) -> Result<Self, String> {
        let key = published.key_ref();
        let ring = ring.ok_or_else(|| format!("no private keys for SigningKey {key}"))?;
        let mut keys = Vec::new();
        for w in &published.signing {
            if let Some(stored) = ring.keys.iter().find(|k| k.kid == w.kid) {
                keys.push((w.clone(), stored.key_pair().map_err(|e| format!("SigningKey {key}: {e}"))?));
            }
        }
        if keys.is_empty() {
            // No schedule in the config (or none of its keys here yet): sign with the ring's own
            // active key.
            let stored = ring.active().ok_or_else(|| format!("SigningKey {key} has no active key"))?;
            let window = SigningWindow { kid: stored.kid.clone(), from: Timestamp::MIN, until: None };
            keys.push((window, stored.key_pair().map_err(|e| format!("SigningKey {key}: {e}"))?));
        }
        let fallback = published.active_kid.as_ref().and_then(|a| keys.iter().position(|(w, _)| &w.kid == a)).unwrap_or(0);
        Ok(Self { keys, fallback })
    }

    /// The key that signs at `now`: the covering window that started last.
    pub fn current(&self, now: i64) -> &SigningKeyPair {
        let now = Timestamp::from_second(now).unwrap_or(Timestamp::MIN);
        let idx = self
            .keys
            .iter()
            .enumerate()
            .filter(|(_, (w, _))| w.contains(now))
            .max_by_key(|(_, (w, _))| w.from)
            .map_or(self.fallback, |(i, _)| i);
        &self.keys[idx].1
    }

    /// The `Authorization` value for the upstream on `route`: the token last minted for this
    /// caller while it has more than half of its lifetime left and the same key signs, else a
    /// freshly minted one (kept for the next request).
    pub fn authorization(
        &self,
        issuer_url: &str,
        issue: &IssueConfig,
        caller: &Verified,
        route: (u32, u32),
        now: i64,
    ) -> Result<HeaderValue, KeyError> {
        let kid = self.current(now).kid();
        if let Some(m) = caller.minted.load().as_deref()
            && m.route == route
            && m.kid == kid
            && now < m.refresh_after
        {
            return Ok(m.header.clone());
        }
        let (token, exp) = self.mint(issuer_url, issue, caller, now)?;
        let header = HeaderValue::try_from(format!("Bearer {token}")).map_err(|_| KeyError::Sign)?;
        let refresh_after = now + (exp - now) / 2;
        caller.minted.store(Some(Arc::new(Minted { route, kid: kid.to_owned(), header: header.clone(), refresh_after })));
        Ok(header)
    }

    /// A token for the upstream, and its `exp`: `iss` is the gateway, `sub` and the configured
    /// claims come from the caller's verified token; it never outlives the caller's token.
    pub fn mint(&self, issuer_url: &str, issue: &IssueConfig, caller: &Verified, now: i64) -> Result<(String, i64), KeyError> {
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
        Ok((self.current(now).sign_jwt(&Value::Object(claims))?, exp))
    }
}
