//! Tokens: finding one in a request, verifying it, and caching what was verified.
//!
//! The key decides the algorithm: a token's `alg` must be on the issuer's allow-list *and* fit the
//! family of the key it names (RSA for RS*/PS*, P-256 for ES256, ...). HMAC and `none` are not
//! representable, and headers that point at other keys (`jku`, `x5u`, `jwk`, `x5c`) or demand
//! unknown extensions (`crit`) are refused.

use http::HeaderMap;
use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::Value;

use super::DenyReason;
use super::keyset::KeySet;
use crate::api::{JwtAlgorithm, TokenSource};
use crate::keys::b64url_decode;

pub const MAX_TOKEN_LEN: usize = 16 * 1024;
/// Without a `kid`, at most this many keys of the right family are tried.
const MAX_KEYS_WITHOUT_KID: usize = 4;

#[derive(Debug)]
pub enum Extracted<'a> {
    None,
    Found {
        token: &'a str,
        from_authorization: bool,
    },
    /// The same source appears more than once (two `Authorization` headers, two cookies ...).
    Ambiguous,
}

/// Finds the token in the first source that is present.
pub fn extract<'a>(sources: &[TokenSource], headers: &'a HeaderMap, query: Option<&'a str>) -> Extracted<'a> {
    for source in sources {
        if let Some(h) = &source.header {
            let mut values = headers.get_all(h.name.as_str()).iter();
            let Some(first) = values.next() else { continue };
            if values.next().is_some() {
                return Extracted::Ambiguous;
            }
            let Ok(text) = first.to_str() else { return Extracted::Ambiguous };
            let token = match &h.prefix {
                Some(p) if text.len() >= p.len() && text.as_bytes()[..p.len()].eq_ignore_ascii_case(p.as_bytes()) => &text[p.len()..],
                Some(_) => continue,
                None => text,
            };
            let token = token.trim();
            if token.is_empty() {
                continue;
            }
            return Extracted::Found { token, from_authorization: h.name.eq_ignore_ascii_case("authorization") };
        }
        if let Some(c) = &source.cookie {
            let mut found = None;
            for header in headers.get_all(http::header::COOKIE) {
                let Ok(text) = header.to_str() else { continue };
                for pair in text.split(';') {
                    if let Some((name, value)) = pair.trim().split_once('=')
                        && name == c.name
                    {
                        if found.is_some() {
                            return Extracted::Ambiguous;
                        }
                        found = Some(value.trim_matches('"'));
                    }
                }
            }
            if let Some(token) = found.filter(|t| !t.is_empty()) {
                return Extracted::Found { token, from_authorization: false };
            }
        }
        if let (Some(q), Some(query)) = (&source.query, query) {
            let mut found = None;
            for pair in query.split('&') {
                let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
                if name == q.name {
                    if found.is_some() {
                        return Extracted::Ambiguous;
                    }
                    found = Some(value);
                }
            }
            // JWTs are base64url and dots: a percent sign means the value was mangled.
            if let Some(token) = found.filter(|t| !t.is_empty() && !t.contains('%')) {
                return Extracted::Found { token, from_authorization: false };
            }
        }
    }
    Extracted::None
}

#[derive(Deserialize)]
struct JoseHeader {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    jku: Option<IgnoredAny>,
    #[serde(default)]
    x5u: Option<IgnoredAny>,
    #[serde(default)]
    jwk: Option<IgnoredAny>,
    #[serde(default)]
    x5c: Option<IgnoredAny>,
    #[serde(default)]
    crit: Option<IgnoredAny>,
}

/// A token split and decoded, not yet trusted.
pub struct Unverified<'a> {
    pub alg: JwtAlgorithm,
    pub kid: Option<String>,
    pub signing_input: &'a str,
    pub signature: &'a str,
    pub claims: Value,
}

pub fn parse(token: &str) -> Result<Unverified<'_>, DenyReason> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(DenyReason::MalformedToken);
    }
    let (signing_input, signature) = token.rsplit_once('.').ok_or(DenyReason::MalformedToken)?;
    let (header_b64, payload_b64) = signing_input.split_once('.').ok_or(DenyReason::MalformedToken)?;
    if payload_b64.contains('.') {
        return Err(DenyReason::MalformedToken);
    }
    let header_bytes = b64url_decode(header_b64).map_err(|_| DenyReason::MalformedToken)?;
    let header: JoseHeader = serde_json::from_slice(&header_bytes).map_err(|_| DenyReason::MalformedToken)?;
    if header.jku.is_some() || header.x5u.is_some() || header.jwk.is_some() || header.x5c.is_some() {
        return Err(DenyReason::ForbiddenHeader);
    }
    if header.crit.is_some() {
        return Err(DenyReason::ForbiddenHeader);
    }
    // `none`, HS256 and friends are not JwtAlgorithms: they can never be accepted.
    let alg = JwtAlgorithm::from_name(&header.alg).ok_or(DenyReason::UnsupportedAlgorithm)?;
    if signature.is_empty() {
        return Err(DenyReason::MalformedToken);
    }
    let payload = b64url_decode(payload_b64).map_err(|_| DenyReason::MalformedToken)?;
    let claims: Value = serde_json::from_slice(&payload).map_err(|_| DenyReason::MalformedToken)?;
    if !claims.is_object() {
        return Err(DenyReason::MalformedToken);
    }
    Ok(Unverified { alg, kid: header.kid, signing_input, signature, claims })
}

pub fn jwt_algorithm(alg: JwtAlgorithm) -> jsonwebtoken::Algorithm {
    use jsonwebtoken::Algorithm as A;
    match alg {
        JwtAlgorithm::RS256 => A::RS256,
        JwtAlgorithm::RS384 => A::RS384,
        JwtAlgorithm::RS512 => A::RS512,
        JwtAlgorithm::PS256 => A::PS256,
        JwtAlgorithm::PS384 => A::PS384,
        JwtAlgorithm::PS512 => A::PS512,
        JwtAlgorithm::ES256 => A::ES256,
        JwtAlgorithm::ES384 => A::ES384,
        JwtAlgorithm::EdDSA => A::EdDSA,
    }
}

/// Verifies the signature with the key set's keys; the key's family and `alg` must fit.
pub fn verify_signature(t: &Unverified<'_>, keys: &KeySet) -> Result<(), DenyReason> {
    let state = keys.state();
    if !state.loaded {
        return Err(DenyReason::KeysUnavailable);
    }
    // Decoded once for every key tried; an undecodable signature verifies with none.
    let signature = crate::jwk::b64url_decode(t.signature).unwrap_or_default();
    let mut tried = 0;
    let mut kid_known = false;
    for key in &state.keys {
        match &t.kid {
            Some(kid) if key.kid.as_deref() != Some(kid.as_str()) => continue,
            Some(_) => kid_known = true,
            None if tried >= MAX_KEYS_WITHOUT_KID => break,
            None => {}
        }
        if !key.allows(t.alg) {
            continue;
        }
        tried += 1;
        if !signature.is_empty() && key.verify(t.alg, t.signing_input.as_bytes(), &signature) {
            return Ok(());
        }
    }
    match (tried, kid_known) {
        (0, false) => Err(DenyReason::UnknownKey),
        (0, true) => Err(DenyReason::UnsupportedAlgorithm),
        _ => Err(DenyReason::BadSignature),
    }
}

/// What a verified token established; cached until it expires.
#[derive(Debug)]
pub struct Verified {
    pub keyset: u64,
    pub generation: u64,
    pub alg: JwtAlgorithm,
    pub iss: String,
    pub aud: Vec<String>,
    pub exp: i64,
    pub nbf: Option<i64>,
    pub claims: Value,
    /// The internal token last minted for this caller token (one slot: a caller mostly hits one
    /// route), reused while it is fresh so that minting does not sign on every request.
    pub minted: arc_swap::ArcSwapOption<Minted>,
}

#[derive(Debug)]
pub struct Minted {
    pub route: (u32, u32),
    pub kid: String,
    pub header: http::HeaderValue,
    /// After this the token has less than half of its lifetime left: mint a new one.
    pub refresh_after: i64,
}

fn numeric_date(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64().or_else(|| n.as_f64().filter(|f| f.is_finite()).map(|f| f.floor() as i64)),
        _ => None,
    }
}

impl Verified {
    /// Reads the registered claims after the signature was checked.
    pub fn from_claims(keyset: &KeySet, generation: u64, alg: JwtAlgorithm, claims: Value) -> Result<Self, DenyReason> {
        let iss = claims.get("iss").and_then(Value::as_str).ok_or(DenyReason::UntrustedIssuer)?.to_owned();
        let exp = claims.get("exp").and_then(numeric_date).ok_or(DenyReason::MalformedToken)?;
        let nbf = match claims.get("nbf") {
            None => None,
            Some(v) => Some(numeric_date(v).ok_or(DenyReason::MalformedToken)?),
        };
        let aud = match claims.get("aud") {
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Array(items)) => {
                items.iter().map(|i| i.as_str().map(str::to_owned)).collect::<Option<_>>().ok_or(DenyReason::MalformedToken)?
            }
            Some(_) => return Err(DenyReason::MalformedToken),
            None => Vec::new(),
        };
        Ok(Self { keyset: keyset.id(), generation, alg, iss, aud, exp, nbf, claims, minted: Default::default() })
    }

    pub fn check_time(&self, now: i64, skew: i64) -> Result<(), DenyReason> {
        if now - skew >= self.exp {
            return Err(DenyReason::Expired);
        }
        if self.nbf.is_some_and(|nbf| now + skew < nbf) {
            return Err(DenyReason::NotYetValid);
        }
        Ok(())
    }

    pub fn audience_matches(&self, accepted: &[String]) -> bool {
        self.aud.iter().any(|a| accepted.contains(a))
    }
}
