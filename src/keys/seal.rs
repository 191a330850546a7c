//! Sealing (pure): authenticated encryption of small values — sign-in sessions and login state
//! kept in the browser's cookies — with keys that rotate with a SigningKey.
//!
//! Each key of the SigningKey's ring gives a sealing key of its own (HKDF-SHA256 over its private
//! key, for one purpose), so sealing follows the SigningKey's schedule: the Active key seals,
//! Pending and Retired keys still open what they sealed (old sessions survive a rotation), and a
//! revoked key, gone from the ring, opens nothing any more (its sessions end).
//!
//! ```text
//!  sealed = "v1." kid "." base64url( nonce(12) ‖ AES-256-GCM(plaintext, aad) ‖ tag(16) )
//! ```
//! The additional data binds a sealed value to where it was set (cookie name and host): moved
//! to another cookie or host, it does not open.

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::hkdf::{HKDF_SHA256, KeyType, Salt};

use super::store::KeyRing;
use super::{KeyError, b64url, b64url_decode};

const VERSION: &str = "v1";
const SALT: &[u8] = b"portcullis sealing v1";
const TAG_LEN: usize = 16;

/// Why a sealed value did not open. Deliberately coarse: which check failed is no business of
/// whoever sent it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Unsealed {
    /// Not the sealed format, or not openable with any key (tampered, truncated, foreign).
    #[error("not a value sealed here")]
    Invalid,
    /// Sealed with a key that is no longer in the ring (revoked, or long removed).
    #[error("sealed with a key that is gone")]
    UnknownKey,
}

struct SealKey {
    kid: String,
    key: LessSafeKey,
}

/// The sealing keys of one SigningKey for one purpose.
pub struct Sealer {
    keys: Vec<SealKey>,
    /// The key that seals (the ring's Active key).
    sealing: usize,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.keys.iter().map(|k| &k.kid)).finish()
    }
}

struct Len32;

impl KeyType for Len32 {
    fn len(&self) -> usize {
        32
    }
}

impl Sealer {
    /// Sealing keys for `purpose` (e.g. `session:shop/web`) from every key of the ring.
    pub fn new(ring: &KeyRing, purpose: &str) -> Result<Self, KeyError> {
        let active = ring.active().ok_or(KeyError::Parse("keyring", "no active key to seal with".into()))?;
        let salt = Salt::new(HKDF_SHA256, SALT);
        let mut keys = Vec::with_capacity(ring.keys.len());
        let mut sealing = 0;
        for stored in &ring.keys {
            let info = [purpose.as_bytes(), b"\0", stored.kid.as_bytes()];
            let prk = salt.extract(stored.private_key_pem.as_bytes());
            let okm = prk.expand(&info, Len32).map_err(|_| KeyError::Generate)?;
            let mut bytes = [0u8; 32];
            okm.fill(&mut bytes).map_err(|_| KeyError::Generate)?;
            let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &bytes).map_err(|_| KeyError::Generate)?);
            if stored.kid == active.kid {
                sealing = keys.len();
            }
            keys.push(SealKey { kid: stored.kid.clone(), key });
        }
        Ok(Self { keys, sealing })
    }

    /// The kid of the key that seals now.
    pub fn sealing_kid(&self) -> &str {
        &self.keys[self.sealing].kid
    }

    /// Seals `plaintext`, bound to `aad`.
    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Result<String, KeyError> {
        let k = &self.keys[self.sealing];
        let mut nonce = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce).map_err(|_| KeyError::Generate)?;
        let mut buf = Vec::with_capacity(NONCE_LEN + plaintext.len() + TAG_LEN);
        buf.extend_from_slice(&nonce);
        buf.extend_from_slice(plaintext);
        let tag = k
            .key
            .seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad), &mut buf[NONCE_LEN..])
            .map_err(|_| KeyError::Sign)?;
        buf.extend_from_slice(tag.as_ref());
        Ok(format!("{VERSION}.{}.{}", k.kid, b64url(&buf)))
    }

    /// Opens a value sealed by [`Sealer::seal`] with `aad`, with any key still in the ring.
    pub fn unseal(&self, aad: &[u8], sealed: &str) -> Result<Vec<u8>, Unsealed> {
        let mut parts = sealed.splitn(3, '.');
        let (Some(VERSION), Some(kid), Some(body)) = (parts.next(), parts.next(), parts.next()) else { return Err(Unsealed::Invalid) };
        let key = self.keys.iter().find(|k| k.kid == kid).ok_or(Unsealed::UnknownKey)?;
        let mut buf = b64url_decode(body).map_err(|_| Unsealed::Invalid)?;
        if buf.len() < NONCE_LEN + TAG_LEN {
            return Err(Unsealed::Invalid);
        }
        let nonce = Nonce::try_assume_unique_for_key(&buf[..NONCE_LEN]).map_err(|_| Unsealed::Invalid)?;
        let opened = key.key.open_in_place(nonce, Aad::from(aad), &mut buf[NONCE_LEN..]).map_err(|_| Unsealed::Invalid)?;
        Ok(opened.to_vec())
    }
}

/// `bytes` random bytes, base64url: for `state`, `nonce` and PKCE verifiers.
pub fn random_token(bytes: usize) -> Result<String, KeyError> {
    let mut buf = vec![0u8; bytes];
    aws_lc_rs::rand::fill(&mut buf).map_err(|_| KeyError::Generate)?;
    Ok(b64url(&buf))
}

/// The PKCE S256 challenge of a verifier (RFC 7636).
pub fn pkce_challenge(verifier: &str) -> String {
    b64url(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, verifier.as_bytes()).as_ref())
}

/// Compares two secrets in time independent of where they differ.
pub fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len() && aws_lc_rs::constant_time::verify_slices_are_equal(a.as_bytes(), b.as_bytes()).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::SigningKeySpec;
    use crate::keys::schedule::{Requests, generate, plan};
    use proptest::prelude::*;

    fn spec() -> SigningKeySpec {
        serde_json::from_value(serde_json::json!({"algorithm": "EdDSA", "rotationInterval": "1h", "prePublish": "1m", "retain": "10m"}))
            .unwrap()
    }

    fn ring() -> KeyRing {
        plan(jiff::Timestamp::from_second(1_800_000_000).unwrap(), &spec(), Default::default(), &Requests::default(), &mut generate)
            .unwrap()
            .ring
    }

    #[test]
    fn what_one_key_seals_opens_only_with_the_same_purpose_and_binding() {
        let ring = ring();
        let s = Sealer::new(&ring, "session:shop/web").unwrap();
        let sealed = s.seal(b"cookie=pc_session;host=shop.example", b"alice").unwrap();
        assert!(sealed.starts_with(&format!("v1.{}.", s.sealing_kid())));
        assert_eq!(s.unseal(b"cookie=pc_session;host=shop.example", &sealed).unwrap(), b"alice");
        assert_eq!(s.unseal(b"cookie=pc_session;host=evil.example", &sealed), Err(Unsealed::Invalid), "another host");
        let other_purpose = Sealer::new(&ring, "login:shop/web").unwrap();
        assert_eq!(other_purpose.unseal(b"cookie=pc_session;host=shop.example", &sealed), Err(Unsealed::Invalid));
        let other_ring = Sealer::new(&self::ring(), "session:shop/web").unwrap();
        assert_eq!(other_ring.unseal(b"cookie=pc_session;host=shop.example", &sealed), Err(Unsealed::UnknownKey));
        // Two seals of one value differ (a fresh nonce each time).
        assert_ne!(s.seal(b"a", b"x").unwrap(), s.seal(b"a", b"x").unwrap());
    }

    #[test]
    fn a_rotation_keeps_old_values_open_and_a_revocation_closes_them() {
        let t0 = jiff::Timestamp::from_second(1_800_000_000).unwrap();
        let ring = ring();
        let before = Sealer::new(&ring, "session").unwrap();
        let sealed = before.seal(b"", b"old session").unwrap();
        let old_kid = before.sealing_kid().to_owned();
        let rotated =
            plan(t0, &spec(), ring, &Requests { rotate: Some("immediate-1".into()), revoke: vec![] }, &mut generate).unwrap().ring;
        let after = Sealer::new(&rotated, "session").unwrap();
        assert_ne!(after.sealing_kid(), old_kid, "the successor seals");
        assert_eq!(after.unseal(b"", &sealed).unwrap(), b"old session", "sessions survive a rotation");
        let revoked = plan(t0, &spec(), rotated, &Requests { rotate: None, revoke: vec![old_kid] }, &mut generate).unwrap().ring;
        let revoked = Sealer::new(&revoked, "session").unwrap();
        assert_eq!(revoked.unseal(b"", &sealed), Err(Unsealed::UnknownKey), "a revoked key's sessions end");
    }

    #[test]
    fn pkce_follows_rfc_7636() {
        // RFC 7636, Appendix B.
        assert_eq!(pkce_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"), "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM");
        let v = random_token(32).unwrap();
        assert_eq!(v.len(), 43);
        assert_ne!(v, random_token(32).unwrap());
        assert!(same_secret(&v, &v.clone()) && !same_secret(&v, &random_token(32).unwrap()) && !same_secret("a", "ab"));
    }

    static SEALER: std::sync::LazyLock<Sealer> = std::sync::LazyLock::new(|| Sealer::new(&ring(), "session").unwrap());

    proptest! {
        /// No change of a sealed value opens: any flipped bit, any truncation, any byte added.
        #[test]
        fn a_changed_sealed_value_never_opens(plain in proptest::collection::vec(any::<u8>(), 0..256), at in any::<prop::sample::Index>(), bit in 0u8..8, cut in any::<prop::sample::Index>()) {
            let sealed = SEALER.seal(b"aad", &plain).unwrap();
            prop_assert_eq!(SEALER.unseal(b"aad", &sealed).unwrap(), plain);
            let mut flipped = sealed.clone().into_bytes();
            let i = at.index(flipped.len());
            flipped[i] ^= 1 << bit;
            if let Ok(text) = String::from_utf8(flipped) {
                prop_assert!(SEALER.unseal(b"aad", &text).is_err(), "flipped at {}", i);
            }
            let n = cut.index(sealed.len());
            prop_assert!(SEALER.unseal(b"aad", &sealed[..n]).is_err(), "truncated to {}", n);
            let longer = format!("{sealed}A");
            prop_assert!(SEALER.unseal(b"aad", &longer).is_err());
        }
    }
}
