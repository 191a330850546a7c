//! JSON Web Keys (pure, no key generation): base64url, parsing a JWK or JWKS into keys that may
//! verify, and refusing the ones that must not (symmetric, weak, off-curve, small-order). Below
//! `policy`, which validates inline JWKS with it, and `keys`, which re-exports it.

use aws_lc_rs::signature as sig;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::DecodingKey;
use serde_json::{Map, Value};

use crate::api::JwtAlgorithm;

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
    /// The key parsed once per algorithm it may verify: verification goes straight to aws-lc
    /// without re-parsing the key (and, for RSA, re-deriving its parameters) per token.
    verifiers: Vec<(JwtAlgorithm, sig::ParsedPublicKey)>,
}

impl VerifyKey {
    pub fn allows(&self, alg: JwtAlgorithm) -> bool {
        self.family.allows(alg) && self.alg.is_none_or(|a| a == alg)
    }

    /// Whether `signature` (raw bytes, JWS encoding) signs `message` under `alg` with this key.
    pub fn verify(&self, alg: JwtAlgorithm, message: &[u8], signature: &[u8]) -> bool {
        self.verifiers.iter().find(|(a, _)| *a == alg).is_some_and(|(_, key)| key.verify_sig(message, signature).is_ok())
    }
}

/// aws-lc's verification algorithm for a JWS algorithm (ECDSA in JWS' fixed r||s encoding).
fn verification(alg: JwtAlgorithm) -> &'static dyn sig::VerificationAlgorithm {
    match alg {
        JwtAlgorithm::RS256 => &sig::RSA_PKCS1_2048_8192_SHA256,
        JwtAlgorithm::RS384 => &sig::RSA_PKCS1_2048_8192_SHA384,
        JwtAlgorithm::RS512 => &sig::RSA_PKCS1_2048_8192_SHA512,
        JwtAlgorithm::PS256 => &sig::RSA_PSS_2048_8192_SHA256,
        JwtAlgorithm::PS384 => &sig::RSA_PSS_2048_8192_SHA384,
        JwtAlgorithm::PS512 => &sig::RSA_PSS_2048_8192_SHA512,
        JwtAlgorithm::ES256 => &sig::ECDSA_P256_SHA256_FIXED,
        JwtAlgorithm::ES384 => &sig::ECDSA_P384_SHA384_FIXED,
        JwtAlgorithm::EdDSA => &sig::ED25519,
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
    // The key in the encoding aws-lc parses: RSA as PKCS#1 DER, EC as an uncompressed point,
    // Ed25519 as its 32 bytes.
    let (family, decoding, public) = match member(jwk, "kty")? {
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
            let der = rsa_public_der(n_trimmed, &e);
            (KeyFamily::Rsa, DecodingKey::from_rsa_raw_components(&n, &e), der)
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
            (family, DecodingKey::from_ec_der(&point), point)
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
            (KeyFamily::Ed25519, DecodingKey::from_ed_der(&x), x.to_vec())
        }
        "oct" => return Err("symmetric (oct) keys are never trusted: HMAC tokens are not accepted".into()),
        other => return Err(format!("unsupported key type {other:?}")),
    };
    if let Some(a) = alg
        && !family.allows(a)
    {
        return Err(format!("alg {} does not fit a {family:?} key", a.as_str()));
    }
    let mut verifiers = Vec::new();
    for a in JwtAlgorithm::ALL.into_iter().filter(|a| family.allows(*a) && alg.is_none_or(|k| k == *a)) {
        let parsed = sig::ParsedPublicKey::new(verification(a), &public).map_err(|_| format!("the key cannot verify {}", a.as_str()))?;
        verifiers.push((a, parsed));
    }
    Ok(Some(VerifyKey { kid, alg, family, decoding, verifiers }))
}

/// An RSA public key as PKCS#1 `RSAPublicKey ::= SEQUENCE { n INTEGER, e INTEGER }` (DER).
fn rsa_public_der(n: &[u8], e: &[u8]) -> Vec<u8> {
    fn len(out: &mut Vec<u8>, n: usize) {
        match n {
            0..=0x7f => out.push(n as u8),
            0x80..=0xff => out.extend_from_slice(&[0x81, n as u8]),
            _ => out.extend_from_slice(&[0x82, (n >> 8) as u8, n as u8]),
        }
    }
    fn integer(out: &mut Vec<u8>, v: &[u8]) {
        let v = &v[v.iter().take_while(|b| **b == 0).count().min(v.len().saturating_sub(1))..];
        let pad = v.first().is_some_and(|b| b & 0x80 != 0);
        out.push(0x02);
        len(out, v.len() + usize::from(pad));
        if pad {
            out.push(0);
        }
        out.extend_from_slice(v);
    }
    let mut body = Vec::with_capacity(n.len() + e.len() + 16);
    integer(&mut body, n);
    integer(&mut body, e);
    let mut out = Vec::with_capacity(body.len() + 4);
    out.push(0x30);
    len(&mut out, body.len());
    out.extend_from_slice(&body);
    out
}

/// The canonical encodings of the eight Ed25519 points of small order (computed from the curve
/// equation: identity, order 2, the two of order 4, the four of order 8). Under such a key a
/// signature with R = identity and S = 0 verifies for many messages.
pub(crate) const ED25519_SMALL_ORDER: [[u8; 32]; 8] = [
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
