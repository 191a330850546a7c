//! Keys: generation (RS256, ES256, EdDSA), PKCS#8 PEM, JWK/JWKS encoding and parsing, RFC 7638
//! thumbprints, and JWS signing. One crypto provider (aws-lc-rs) for everything, the same one
//! jsonwebtoken verifies with.

pub mod schedule;
pub mod seal;
pub mod store;

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self as sig, KeyPair as _};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Map, Value, json};

#[cfg(test)]
use crate::api::JwtAlgorithm;
use crate::api::SigningAlgorithm;

#[cfg(test)]
use crate::jwk::ED25519_SMALL_ORDER;
pub use crate::jwk::{KeyFamily, MIN_RSA_BITS, VerifyKey, b64url, b64url_decode, parse_jwk, parse_jwks, thumbprint, weak_ed25519};

enum Inner {
    Rsa(aws_lc_rs::rsa::KeyPair),
    Ec(sig::EcdsaKeyPair),
    Ed(sig::Ed25519KeyPair),
}

/// A private signing key. Its `Debug` never shows key material.
pub struct SigningKeyPair {
    algorithm: SigningAlgorithm,
    kid: String,
    inner: Inner,
    public_jwk: Map<String, Value>,
}

impl std::fmt::Debug for SigningKeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKeyPair").field("algorithm", &self.algorithm).field("kid", &self.kid).finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("key generation failed")]
    Generate,
    #[error("private key is not valid PKCS#8 for {0}: {1}")]
    Parse(&'static str, String),
    #[error("PEM: {0}")]
    Pem(&'static str),
    #[error("unsupported RSA size {0} (2048, 3072 or 4096)")]
    RsaSize(u32),
    #[error("signing failed")]
    Sign,
}

impl SigningKeyPair {
    pub fn generate(algorithm: SigningAlgorithm, rsa_bits: Option<u32>) -> Result<Self, KeyError> {
        let inner = match algorithm {
            SigningAlgorithm::RS256 => {
                let size = match rsa_bits.unwrap_or(2048) {
                    2048 => aws_lc_rs::rsa::KeySize::Rsa2048,
                    3072 => aws_lc_rs::rsa::KeySize::Rsa3072,
                    4096 => aws_lc_rs::rsa::KeySize::Rsa4096,
                    other => return Err(KeyError::RsaSize(other)),
                };
                Inner::Rsa(aws_lc_rs::rsa::KeyPair::generate(size).map_err(|_| KeyError::Generate)?)
            }
            SigningAlgorithm::ES256 => {
                Inner::Ec(sig::EcdsaKeyPair::generate(&sig::ECDSA_P256_SHA256_FIXED_SIGNING).map_err(|_| KeyError::Generate)?)
            }
            SigningAlgorithm::EdDSA => Inner::Ed(sig::Ed25519KeyPair::generate().map_err(|_| KeyError::Generate)?),
        };
        Ok(Self::from_inner(algorithm, inner))
    }

    pub fn from_pkcs8_der(algorithm: SigningAlgorithm, der: &[u8]) -> Result<Self, KeyError> {
        let inner = match algorithm {
            SigningAlgorithm::RS256 => {
                let kp = aws_lc_rs::rsa::KeyPair::from_pkcs8(der).map_err(|e| KeyError::Parse("RS256", e.to_string()))?;
                if kp.public_modulus_len() * 8 < MIN_RSA_BITS {
                    return Err(KeyError::Parse("RS256", "RSA key smaller than 2048 bits".into()));
                }
                Inner::Rsa(kp)
            }
            SigningAlgorithm::ES256 => Inner::Ec(
                sig::EcdsaKeyPair::from_pkcs8(&sig::ECDSA_P256_SHA256_FIXED_SIGNING, der)
                    .map_err(|e| KeyError::Parse("ES256", e.to_string()))?,
            ),
            SigningAlgorithm::EdDSA => {
                Inner::Ed(sig::Ed25519KeyPair::from_pkcs8(der).map_err(|e| KeyError::Parse("EdDSA", e.to_string()))?)
            }
        };
        Ok(Self::from_inner(algorithm, inner))
    }

    pub fn from_pkcs8_pem(algorithm: SigningAlgorithm, pem: &str) -> Result<Self, KeyError> {
        Self::from_pkcs8_der(algorithm, &pem_decode(pem, "PRIVATE KEY")?)
    }

    fn from_inner(algorithm: SigningAlgorithm, inner: Inner) -> Self {
        let mut public_jwk = match &inner {
            Inner::Rsa(kp) => {
                let pk = kp.public_key();
                let mut m = Map::new();
                m.insert("kty".into(), json!("RSA"));
                m.insert("n".into(), json!(b64url(pk.modulus().big_endian_without_leading_zero())));
                m.insert("e".into(), json!(b64url(pk.exponent().big_endian_without_leading_zero())));
                m
            }
            Inner::Ec(kp) => {
                let point = kp.public_key().as_ref();
                let mut m = Map::new();
                m.insert("kty".into(), json!("EC"));
                m.insert("crv".into(), json!("P-256"));
                m.insert("x".into(), json!(b64url(&point[1..33])));
                m.insert("y".into(), json!(b64url(&point[33..65])));
                m
            }
            Inner::Ed(kp) => {
                let mut m = Map::new();
                m.insert("kty".into(), json!("OKP"));
                m.insert("crv".into(), json!("Ed25519"));
                m.insert("x".into(), json!(b64url(kp.public_key().as_ref())));
                m
            }
        };
        let kid = thumbprint(&public_jwk).expect("a generated key has a thumbprint");
        public_jwk.insert("kid".into(), json!(kid));
        public_jwk.insert("alg".into(), json!(algorithm.as_str()));
        public_jwk.insert("use".into(), json!("sig"));
        Self { algorithm, kid, inner, public_jwk }
    }

    pub fn algorithm(&self) -> SigningAlgorithm {
        self.algorithm
    }

    /// RFC 7638 thumbprint of the public key.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public key as a JWK with `kid`, `alg` and `use`.
    pub fn public_jwk(&self) -> &Map<String, Value> {
        &self.public_jwk
    }

    pub fn to_pkcs8_der(&self) -> Result<Vec<u8>, KeyError> {
        let der = match &self.inner {
            Inner::Rsa(kp) => AsDer::<aws_lc_rs::encoding::Pkcs8V1Der>::as_der(kp).map(|d| d.as_ref().to_vec()),
            Inner::Ec(kp) => kp.to_pkcs8v1().map(|d| d.as_ref().to_vec()),
            Inner::Ed(kp) => kp.to_pkcs8().map(|d| d.as_ref().to_vec()),
        };
        der.map_err(|_| KeyError::Generate)
    }

    pub fn to_pkcs8_pem(&self) -> Result<String, KeyError> {
        Ok(pem_encode(&self.to_pkcs8_der()?, "PRIVATE KEY"))
    }

    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, KeyError> {
        let rng = SystemRandom::new();
        match &self.inner {
            Inner::Rsa(kp) => {
                let mut out = vec![0; kp.public_modulus_len()];
                kp.sign(&sig::RSA_PKCS1_SHA256, &rng, message, &mut out).map_err(|_| KeyError::Sign)?;
                Ok(out)
            }
            Inner::Ec(kp) => kp.sign(&rng, message).map(|s| s.as_ref().to_vec()).map_err(|_| KeyError::Sign),
            Inner::Ed(kp) => Ok(kp.sign(message).as_ref().to_vec()),
        }
    }

    /// Signs a JWT with this key; the header carries `alg`, `typ` and `kid`.
    pub fn sign_jwt(&self, claims: &Value) -> Result<String, KeyError> {
        let header = json!({"alg": self.algorithm.as_str(), "typ": "JWT", "kid": self.kid});
        let mut token = b64url(header.to_string().as_bytes());
        token.push('.');
        token.push_str(&b64url(claims.to_string().as_bytes()));
        let signature = self.sign(token.as_bytes())?;
        token.push('.');
        token.push_str(&b64url(&signature));
        Ok(token)
    }
}

pub fn pem_encode(der: &[u8], label: &str) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

pub fn pem_decode(pem: &str, label: &str) -> Result<Vec<u8>, KeyError> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = pem.find(&begin).ok_or(KeyError::Pem("no BEGIN line"))? + begin.len();
    let stop = pem[start..].find(&end).ok_or(KeyError::Pem("no END line"))? + start;
    let body: String = pem[start..stop].chars().filter(|c| !c.is_ascii_whitespace()).collect();
    STANDARD.decode(body).map_err(|_| KeyError::Pem("body is not base64"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verify_with_jsonwebtoken(key: &SigningKeyPair, alg: jsonwebtoken::Algorithm) {
        let token = key.sign_jwt(&json!({"sub": "x", "exp": 4_000_000_000u64})).unwrap();
        let parsed = parse_jwk(key.public_jwk()).unwrap().unwrap();
        let (message, signature) = token.rsplit_once('.').unwrap();
        assert!(jsonwebtoken::crypto::verify(signature, message.as_bytes(), &parsed.decoding, alg).unwrap());
        let mut tampered = message.to_owned();
        tampered.push('x');
        assert!(!jsonwebtoken::crypto::verify(signature, tampered.as_bytes(), &parsed.decoding, alg).unwrap_or(false));
        // The pre-parsed aws-lc path agrees with jsonwebtoken, for this algorithm and no other.
        let raw = b64url_decode(signature).unwrap();
        for other in JwtAlgorithm::ALL {
            let want = other.as_str() == format!("{alg:?}");
            assert_eq!(parsed.verify(other, message.as_bytes(), &raw), want, "{other:?}");
            assert!(!parsed.verify(other, tampered.as_bytes(), &raw), "{other:?} tampered");
        }
    }

    fn okp(x: &[u8]) -> Map<String, Value> {
        json!({"kty": "OKP", "crv": "Ed25519", "x": b64url(x)}).as_object().unwrap().clone()
    }

    #[test]
    fn small_order_and_non_canonical_ed25519_keys_are_refused() {
        // Why it matters: under the identity key, R = identity and S = 0 "signs" anything.
        let identity = ED25519_SMALL_ORDER[2];
        let mut forged = [0u8; 64];
        forged[..32].copy_from_slice(&identity);
        let verifies = sig::UnparsedPublicKey::new(&sig::ED25519, identity).verify(b"{\"sub\":\"admin\"}", &forged).is_ok();
        for key in ED25519_SMALL_ORDER {
            let err = parse_jwk(&okp(&key)).unwrap_err();
            assert!(err.contains("small order") || err.contains("not canonically encoded"), "{err}");
        }
        let mut p = [0xffu8; 32];
        p[0] = 0xed;
        p[31] = 0x7f;
        let mut p_plus_one = p;
        p_plus_one[0] = 0xee;
        let mut negative_identity = identity;
        negative_identity[31] |= 0x80;
        for key in [p, p_plus_one, negative_identity] {
            assert_eq!(weak_ed25519(&key), Some("not canonically encoded"), "{key:?}");
        }
        // A real key passes.
        let real = SigningKeyPair::generate(SigningAlgorithm::EdDSA, None).unwrap();
        assert!(parse_jwk(real.public_jwk()).unwrap().is_some());
        // The crypto library does not refuse the forgery itself: the check above is what does.
        assert!(verifies, "aws-lc now refuses small-order keys itself");
    }

    #[test]
    fn ec_points_off_the_curve_and_small_rsa_keys_are_refused() {
        let real = SigningKeyPair::generate(SigningAlgorithm::ES256, None).unwrap();
        let mut jwk = real.public_jwk().clone();
        let mut y = b64url_decode(jwk["y"].as_str().unwrap()).unwrap();
        y[31] ^= 1;
        jwk.insert("y".into(), json!(b64url(&y)));
        assert_eq!(parse_jwk(&jwk).unwrap_err(), "EC point is not on the curve");
        let rsa = json!({"kty": "RSA", "n": b64url(&[0xc1; 128]), "e": "AQAB"});
        assert!(parse_jwk(rsa.as_object().unwrap()).unwrap_err().contains("1024 bits is too small"));
    }

    #[test]
    fn generated_keys_sign_what_jsonwebtoken_verifies() {
        for (alg, jwt_alg) in [
            (SigningAlgorithm::RS256, jsonwebtoken::Algorithm::RS256),
            (SigningAlgorithm::ES256, jsonwebtoken::Algorithm::ES256),
            (SigningAlgorithm::EdDSA, jsonwebtoken::Algorithm::EdDSA),
        ] {
            let key = SigningKeyPair::generate(alg, None).unwrap();
            verify_with_jsonwebtoken(&key, jwt_alg);
        }
    }

    #[test]
    fn pkcs8_pem_round_trips_and_keeps_the_kid() {
        for alg in [SigningAlgorithm::RS256, SigningAlgorithm::ES256, SigningAlgorithm::EdDSA] {
            let key = SigningKeyPair::generate(alg, None).unwrap();
            let pem = key.to_pkcs8_pem().unwrap();
            assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"));
            let back = SigningKeyPair::from_pkcs8_pem(alg, &pem).unwrap();
            assert_eq!(back.kid(), key.kid());
            assert_eq!(back.public_jwk(), key.public_jwk());
        }
    }

    #[test]
    fn debug_output_hides_key_material() {
        let key = SigningKeyPair::generate(SigningAlgorithm::ES256, None).unwrap();
        let shown = format!("{key:?}");
        assert!(shown.contains(key.kid()));
        assert!(!shown.contains("PRIVATE"));
        assert!(shown.len() < 200);
    }

    #[test]
    fn thumbprint_matches_rfc7638_example() {
        // The example key of RFC 7638 §3.1.
        let jwk: Map<String, Value> = serde_json::from_value(json!({
            "kty": "RSA",
            "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
            "e": "AQAB",
            "alg": "RS256",
            "kid": "2011-04-29"
        }))
        .unwrap();
        assert_eq!(thumbprint(&jwk).unwrap(), "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs");
    }

    #[test]
    fn untrustworthy_jwks_are_refused_with_a_reason() {
        let ec = SigningKeyPair::generate(SigningAlgorithm::ES256, None).unwrap().public_jwk().clone();
        let cases = [
            (json!({"kty": "oct", "k": "c2VjcmV0"}), "never trusted"),
            (json!({"kty": "RSA", "n": b64url(&[0xff; 128]), "e": "AQAB"}), "too small"),
            (json!({"kty": "EC", "crv": "P-521", "x": "AA", "y": "AA"}), "unsupported curve"),
            (json!({"kty": "OKP", "crv": "Ed25519", "x": b64url(&[1; 31])}), "wrong length"),
            (json!({"kty": "EC", "crv": "P-256", "x": ec["x"], "y": ec["y"], "alg": "RS256"}), "does not fit"),
            (json!({"kty": "RSA", "n": b64url(&[0xff; 256]), "e": "AQAB", "alg": "HS256"}), "unsupported alg"),
        ];
        for (jwk, why) in cases {
            let err = parse_jwk(jwk.as_object().unwrap()).unwrap_err();
            assert!(err.contains(why), "{jwk}: {err}");
        }
        let enc = json!({"kty": "RSA", "n": b64url(&[0xff; 256]), "e": "AQAB", "use": "enc"});
        assert!(parse_jwk(enc.as_object().unwrap()).unwrap().is_none());
    }

    #[test]
    fn key_family_decides_the_algorithm() {
        assert!(KeyFamily::Rsa.allows(JwtAlgorithm::PS256));
        assert!(!KeyFamily::Rsa.allows(JwtAlgorithm::ES256));
        assert!(!KeyFamily::P256.allows(JwtAlgorithm::ES384));
        assert!(!KeyFamily::Ed25519.allows(JwtAlgorithm::RS256));
    }
}
