//! Keys: generation (RS256, ES256, EdDSA), PKCS#8 PEM, JWK/JWKS encoding and parsing, RFC 7638
//! thumbprints, and JWS signing. One crypto provider (aws-lc-rs) for everything, the same one
//! jsonwebtoken verifies with.

pub mod schedule;
pub mod store;

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self as sig, KeyPair as _};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::DecodingKey;
use serde_json::{Map, Value, json};

use crate::api::{JwtAlgorithm, SigningAlgorithm};

pub const MIN_RSA_BITS: usize = 2048;

pub fn b64url(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

pub fn b64url_decode(text: &str) -> Result<Vec<u8>, base64::DecodeError> {
    URL_SAFE_NO_PAD.decode(text)
}

/// The shape of a public key, which fixes the algorithms it may verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyFamily {
    Rsa,
    P256,
    P384,
    Ed25519,
}

impl KeyFamily {
    /// Whether a key of this family may verify `alg`. This is what defeats algorithm confusion:
    /// the key decides, not the token header.
    pub fn allows(self, alg: JwtAlgorithm) -> bool {
        use JwtAlgorithm::*;
        matches!(
            (self, alg),
            (Self::Rsa, RS256 | RS384 | RS512 | PS256 | PS384 | PS512) | (Self::P256, ES256) | (Self::P384, ES384) | (Self::Ed25519, EdDSA)
        )
    }
}

/// A public key that may verify tokens.
#[derive(Clone)]
pub struct VerifyKey {
    pub kid: Option<String>,
    /// The JWK's `alg`, when it names one: the key then verifies only that algorithm.
    pub alg: Option<JwtAlgorithm>,
    pub family: KeyFamily,
    pub decoding: DecodingKey,
}

impl VerifyKey {
    pub fn allows(&self, alg: JwtAlgorithm) -> bool {
        self.family.allows(alg) && self.alg.is_none_or(|a| a == alg)
    }
}

impl std::fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyKey").field("kid", &self.kid).field("alg", &self.alg).field("family", &self.family).finish()
    }
}

fn member<'a>(jwk: &'a Map<String, Value>, name: &str) -> Result<&'a str, String> {
    jwk.get(name).and_then(Value::as_str).ok_or_else(|| format!("missing string member {name:?}"))
}

fn member_bytes(jwk: &Map<String, Value>, name: &str) -> Result<Vec<u8>, String> {
    b64url_decode(member(jwk, name)?).map_err(|_| format!("member {name:?} is not base64url"))
}

/// Parses one JWK into a verification key, or says why it cannot be trusted.
/// `Ok(None)` means the key is well-formed but not meant for signatures (`use: enc`).
pub fn parse_jwk(jwk: &Map<String, Value>) -> Result<Option<VerifyKey>, String> {
    if jwk.get("use").and_then(Value::as_str).is_some_and(|u| u != "sig") {
        return Ok(None);
    }
    if let Some(ops) = jwk.get("key_ops").and_then(Value::as_array)
        && !ops.iter().any(|o| o.as_str() == Some("verify"))
    {
        return Ok(None);
    }
    let kid = match jwk.get("kid") {
        None => None,
        Some(Value::String(k)) if !k.is_empty() => Some(k.clone()),
        Some(_) => return Err("kid must be a non-empty string".into()),
    };
    let alg = match jwk.get("alg") {
        None => None,
        Some(Value::String(a)) => Some(JwtAlgorithm::from_name(a).ok_or_else(|| format!("unsupported alg {a:?}"))?),
        Some(_) => return Err("alg must be a string".into()),
    };
    let (family, decoding) = match member(jwk, "kty")? {
        "RSA" => {
            let n = member_bytes(jwk, "n")?;
            let e = member_bytes(jwk, "e")?;
            let n_trimmed: &[u8] = &n[n.iter().take_while(|b| **b == 0).count()..];
            let bits = n_trimmed.len() * 8 - n_trimmed.first().map_or(8, |b| b.leading_zeros() as usize);
            if bits < MIN_RSA_BITS {
                return Err(format!("RSA key of {bits} bits is too small (at least {MIN_RSA_BITS})"));
            }
            if e.is_empty() || e.len() > 8 {
                return Err("RSA exponent is malformed".into());
            }
            (KeyFamily::Rsa, DecodingKey::from_rsa_raw_components(&n, &e))
        }
        "EC" => {
            let (family, size) = match member(jwk, "crv")? {
                "P-256" => (KeyFamily::P256, 32),
                "P-384" => (KeyFamily::P384, 48),
                other => return Err(format!("unsupported curve {other:?}")),
            };
            let x = member_bytes(jwk, "x")?;
            let y = member_bytes(jwk, "y")?;
            if x.len() != size || y.len() != size {
                return Err("EC coordinates have the wrong length".into());
            }
            let mut point = Vec::with_capacity(1 + 2 * size);
            point.push(0x04);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            let curve = if family == KeyFamily::P256 { &sig::ECDSA_P256_SHA256_FIXED } else { &sig::ECDSA_P384_SHA384_FIXED };
            // Parsing checks that the point lies on the curve (an invalid-curve key is refused here,
            // not discovered per token).
            sig::ParsedPublicKey::new(curve, &point).map_err(|_| "EC point is not on the curve".to_owned())?;
            (family, DecodingKey::from_ec_der(&point))
        }
        "OKP" => {
            if member(jwk, "crv")? != "Ed25519" {
                return Err(format!("unsupported curve {:?}", member(jwk, "crv")?));
            }
            let x = member_bytes(jwk, "x")?;
            let Ok(x) = <[u8; 32]>::try_from(x.as_slice()) else {
                return Err("Ed25519 key has the wrong length".into());
            };
            if let Some(why) = weak_ed25519(&x) {
                return Err(format!("Ed25519 key is {why}"));
            }
            (KeyFamily::Ed25519, DecodingKey::from_ed_der(&x))
        }
        "oct" => return Err("symmetric (oct) keys are never trusted: HMAC tokens are not accepted".into()),
        other => return Err(format!("unsupported key type {other:?}")),
    };
    if let Some(a) = alg
        && !family.allows(a)
    {
        return Err(format!("alg {} does not fit a {family:?} key", a.as_str()));
    }
    Ok(Some(VerifyKey { kid, alg, family, decoding }))
}

/// The canonical encodings of the eight Ed25519 points of small order (computed from the curve
/// equation: identity, order 2, the two of order 4, the four of order 8). Under such a key a
/// signature with R = identity and S = 0 verifies for many messages.
const ED25519_SMALL_ORDER: [[u8; 32]; 8] = [
    hex32("0000000000000000000000000000000000000000000000000000000000000000"),
    hex32("0000000000000000000000000000000000000000000000000000000000000080"),
    hex32("0100000000000000000000000000000000000000000000000000000000000000"),
    hex32("26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05"),
    hex32("26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85"),
    hex32("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a"),
    hex32("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa"),
    hex32("ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
];

const fn hex32(text: &str) -> [u8; 32] {
    const fn nibble(c: u8) -> u8 {
        match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            _ => panic!("not lower-case hex"),
        }
    }
    let t = text.as_bytes();
    let mut out = [0u8; 32];
    let mut i = 0;
    while i < 32 {
        out[i] = (nibble(t[2 * i]) << 4) | nibble(t[2 * i + 1]);
        i += 1;
    }
    out
}

/// Why an Ed25519 public key must not be trusted: a non-canonical encoding (y ≥ p, or the sign
/// bit set on a point whose x is 0), a point of small order, or no point at all.
pub fn weak_ed25519(key: &[u8; 32]) -> Option<&'static str> {
    // y ≥ p = 2^255 - 19: the low 255 bits are 0x7fff…ffed or more.
    let y_top_all_ones = key[31] & 0x7f == 0x7f && key[1..31].iter().all(|b| *b == 0xff);
    let y_is_zero_x = {
        // y = 1 or y = p - 1: x = 0, so a set sign bit is a second encoding of the same point.
        let low = {
            let mut k = *key;
            k[31] &= 0x7f;
            k
        };
        low == ED25519_SMALL_ORDER[2] || low == ED25519_SMALL_ORDER[7]
    };
    if (y_top_all_ones && key[0] >= 0xed) || (y_is_zero_x && key[31] & 0x80 != 0) {
        return Some("not canonically encoded");
    }
    if ED25519_SMALL_ORDER.contains(key) {
        return Some("a point of small order");
    }
    sig::ParsedPublicKey::new(&sig::ED25519, key).err().map(|_| "not a point on the curve")
}

/// Parses a JWKS document: the usable keys, and why each other key was skipped.
pub fn parse_jwks(doc: &Value) -> Result<(Vec<VerifyKey>, Vec<String>), String> {
    let keys = doc.get("keys").and_then(Value::as_array).ok_or("not a JWKS document: no \"keys\" array")?;
    let mut usable = Vec::new();
    let mut skipped = Vec::new();
    for (i, key) in keys.iter().enumerate() {
        let Some(obj) = key.as_object() else {
            skipped.push(format!("key {i}: not an object"));
            continue;
        };
        match parse_jwk(obj) {
            Ok(Some(k)) => usable.push(k),
            Ok(None) => {}
            Err(why) => skipped.push(format!("key {}: {why}", obj.get("kid").and_then(Value::as_str).unwrap_or(&i.to_string()))),
        }
    }
    Ok((usable, skipped))
}

/// RFC 7638 JWK thumbprint (SHA-256, base64url) of a public JWK.
pub fn thumbprint(jwk: &Map<String, Value>) -> Result<String, String> {
    let s = |n: &str| member(jwk, n).map(str::to_owned);
    // serde_json writes members in the order given here, which is the lexicographic order RFC 7638
    // requires; the values are base64url or fixed names, so no escaping differences can arise.
    let canonical = match member(jwk, "kty")? {
        "RSA" => format!(r#"{{"e":"{}","kty":"RSA","n":"{}"}}"#, s("e")?, s("n")?),
        "EC" => format!(r#"{{"crv":"{}","kty":"EC","x":"{}","y":"{}"}}"#, s("crv")?, s("x")?, s("y")?),
        "OKP" => format!(r#"{{"crv":"{}","kty":"OKP","x":"{}"}}"#, s("crv")?, s("x")?),
        other => return Err(format!("no thumbprint for key type {other:?}")),
    };
    if canonical.contains('\\') {
        return Err("JWK members must not contain escapes".into());
    }
    Ok(b64url(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, canonical.as_bytes()).as_ref()))
}

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
