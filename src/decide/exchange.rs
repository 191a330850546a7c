//! Token exchange (RFC 8693), the decision (pure): a workload presents the internal token it
//! received (`subject_token`) and its own ServiceAccount token (`actor_token`), names the
//! workload it wants to call (`audience`), and gets a token for that audience on behalf of the
//! same subject — or an OAuth error, never a token.
//!
//! ```text
//!  form ─▶ ExchangeRequest ─▶ audience: a TokenExchangePolicy? ── invalid_target
//!                              actor: cluster token for the gateway, listed? ── unauthorized_client
//!                              subject: minted by this gateway for the actor, in time,
//!                                       chain short and without loops, require holds ── invalid_grant
//!                              ─▶ mint: sub + allowed claims, aud, act (nested), exp ≤ subject's
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Map, Value, json};

use super::keyset::KeySet;
use super::mint::Minter;
use super::token::{self, Verified};
use super::{DenyReason, Engine};
use crate::api::JwtAlgorithm;
use crate::keys::b64url;
use crate::policy::claims::{ClaimRequirement, RequestFacts};
use crate::policy::config::ExchangeConfig;
use crate::policy::validate::{DEFAULT_SA_TOKEN_LIFETIME_SECS, compile_requirements};
use crate::policy::workload::{self, WorkloadPattern};

pub const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
pub const TOKEN_TYPE_JWT: &str = "urn:ietf:params:oauth:token-type:jwt";
pub const TOKEN_TYPE_ACCESS: &str = "urn:ietf:params:oauth:token-type:access_token";
/// A request body larger than this is refused unread: two tokens and a few names.
pub const MAX_FORM_BYTES: usize = 40 * 1024;
/// Clock tolerance for both tokens.
const SKEW_SECS: i64 = 60;
/// Nested `act` claims read at most: a deeper chain is refused, whatever a policy allows.
const MAX_CHAIN: usize = 16;

/// Why no token was issued, as an OAuth error (RFC 6749 §5.2, RFC 8693 §2.2.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExchangeError {
    /// Not a usable token exchange request (shape, types, sizes, malformed tokens).
    InvalidRequest(String),
    UnsupportedGrantType,
    /// The subject token cannot be exchanged: foreign, expired, minted for another workload,
    /// its chain too long or looping back, or its claims not what the policy requires.
    InvalidGrant(String),
    /// The actor token is not a valid ServiceAccount token of this cluster for this gateway, or
    /// its workload may not exchange for the audience.
    UnauthorizedClient(String),
    /// No policy allows tokens for the audience.
    InvalidTarget(String),
    /// Portcullis cannot issue now (keys not loaded, minting key not delivered).
    Unavailable(String),
}

impl ExchangeError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidRequest(_) => "invalid_request",
            Self::UnsupportedGrantType => "unsupported_grant_type",
            Self::InvalidGrant(_) => "invalid_grant",
            Self::UnauthorizedClient(_) => "unauthorized_client",
            Self::InvalidTarget(_) => "invalid_target",
            Self::Unavailable(_) => "temporarily_unavailable",
        }
    }

    pub fn status(&self) -> u16 {
        match self {
            Self::Unavailable(_) => 503,
            _ => 400,
        }
    }

    /// Client-safe: names what failed, never a token value.
    pub fn description(&self) -> &str {
        match self {
            Self::UnsupportedGrantType => "only token exchange is supported",
            Self::InvalidRequest(d)
            | Self::InvalidGrant(d)
            | Self::UnauthorizedClient(d)
            | Self::InvalidTarget(d)
            | Self::Unavailable(d) => d,
        }
    }
}

/// The parameters of a token exchange request.
#[derive(Debug, Default)]
pub struct ExchangeRequest {
    pub subject_token: String,
    pub actor_token: String,
    pub audience: String,
}

/// Parses an `application/x-www-form-urlencoded` body. Every parameter at most once (RFC 6749
/// §3.2); what Portcullis does not support is refused rather than ignored.
pub fn parse_form(body: &[u8]) -> Result<ExchangeRequest, ExchangeError> {
    let bad = |d: &str| ExchangeError::InvalidRequest(d.to_owned());
    if body.len() > MAX_FORM_BYTES {
        return Err(bad("request too large"));
    }
    let mut params: BTreeMap<String, String> = BTreeMap::new();
    for (k, v) in form_urlencoded::parse(body) {
        if params.insert(k.clone().into_owned(), v.into_owned()).is_some() {
            return Err(ExchangeError::InvalidRequest(format!("{k} is given more than once")));
        }
    }
    let mut take = |name: &str| params.remove(name).filter(|v| !v.is_empty());
    match take("grant_type").as_deref() {
        Some(GRANT_TYPE) => {}
        Some(_) => return Err(ExchangeError::UnsupportedGrantType),
        None => return Err(bad("grant_type is missing")),
    }
    let subject_token = take("subject_token").ok_or_else(|| bad("subject_token is missing"))?;
    match take("subject_token_type").as_deref() {
        Some(TOKEN_TYPE_JWT | TOKEN_TYPE_ACCESS) => {}
        Some(_) => return Err(bad("subject_token_type must be a JWT (urn:ietf:params:oauth:token-type:jwt)")),
        None => return Err(bad("subject_token_type is missing")),
    }
    let actor_token = take("actor_token").ok_or_else(|| bad("actor_token is missing: the calling workload's ServiceAccount token"))?;
    match take("actor_token_type").as_deref() {
        Some(TOKEN_TYPE_JWT) => {}
        Some(_) => return Err(bad("actor_token_type must be urn:ietf:params:oauth:token-type:jwt")),
        None => return Err(bad("actor_token_type is missing")),
    }
    match take("requested_token_type").as_deref() {
        None | Some(TOKEN_TYPE_JWT | TOKEN_TYPE_ACCESS) => {}
        Some(_) => return Err(bad("requested_token_type: only JWTs are issued")),
    }
    let audience = take("audience").ok_or_else(|| bad("audience is missing"))?;
    if let Some(other) = params.keys().find(|k| matches!(k.as_str(), "resource" | "scope" | "client_id" | "client_secret")) {
        return Err(ExchangeError::InvalidRequest(format!("{other} is not supported: name the workload with audience")));
    }
    Ok(ExchangeRequest { subject_token, actor_token, audience })
}

/// An issued token.
#[derive(Debug)]
pub struct Exchanged {
    pub access_token: String,
    pub expires_in: i64,
    /// The policy that allowed it (`namespace/name`), for metrics and logs.
    pub policy: String,
    /// The calling workload, `namespace/name`.
    pub actor: String,
}

impl Exchanged {
    /// The RFC 8693 §2.2.1 response body.
    pub fn body(&self) -> Value {
        json!({
            "access_token": self.access_token,
            "issued_token_type": TOKEN_TYPE_JWT,
            "token_type": "Bearer",
            "expires_in": self.expires_in,
        })
    }
}

pub(super) struct RtExchange {
    key: String,
    config: ExchangeConfig,
    require: Vec<ClaimRequirement>,
    actors: Vec<(WorkloadPattern, Vec<String>)>,
    minter: Option<Arc<Minter>>,
}

impl RtExchange {
    pub(super) fn build(x: &ExchangeConfig, minter: Option<Arc<Minter>>) -> Result<Self, String> {
        let key = format!("{}/{}", x.namespace, x.name);
        let at = |e: String| format!("TokenExchangePolicy {key}: {e}");
        let actors = x
            .actors
            .iter()
            .map(|a| Ok((WorkloadPattern::parse(&a.service_account)?, a.subject_audiences.clone())))
            .collect::<Result<_, String>>()
            .map_err(at)?;
        Ok(Self { require: compile_requirements(&x.require).map_err(at)?, actors, minter, config: x.clone(), key })
    }
}

pub(super) struct ExchangeRt {
    /// The cluster's ServiceAccount issuer and its keys, when known.
    pub cluster: Option<(String, Arc<KeySet>)>,
    /// The gateway's own minting keys: subject tokens are tokens it issued.
    pub subjects: Arc<KeySet>,
    pub exchanges: Vec<RtExchange>,
}

impl Engine {
    /// Decides a token exchange and mints the token. `now` in seconds; nothing here logs a token.
    pub fn exchange(&self, req: &ExchangeRequest, now: i64) -> Result<Exchanged, ExchangeError> {
        let x = self.exchange.exchanges.iter().find(|x| x.config.audience == req.audience).ok_or_else(|| {
            ExchangeError::InvalidTarget(format!("no TokenExchangePolicy of this gateway allows tokens for {}", shown(&req.audience)))
        })?;

        // The actor: a ServiceAccount token of this cluster, issued for this gateway.
        let unauthorized = |d: &str| ExchangeError::UnauthorizedClient(format!("actor_token: {d}"));
        let (cluster_iss, cluster_keys) = self
            .exchange
            .cluster
            .as_ref()
            .ok_or_else(|| ExchangeError::Unavailable("the cluster's ServiceAccount issuer is not known".into()))?;
        let actor = verify(&req.actor_token, cluster_iss, &[JwtAlgorithm::RS256, JwtAlgorithm::ES256], cluster_keys, now)
            .map_err(|e| e.into_error(unauthorized))?;
        if !actor.aud.contains(&self.issuer_url) {
            return Err(unauthorized(&format!("not issued for this gateway (its aud must include {})", self.issuer_url)));
        }
        super::admit_workload(&actor, DEFAULT_SA_TOKEN_LIFETIME_SECS as i64).map_err(|r| match r {
            DenyReason::LifetimeTooLong => unauthorized("issued for longer than 1h, or without iat"),
            _ => unauthorized("does not name a ServiceAccount"),
        })?;
        let workload = workload::of_claims(&actor.claims).expect("admitted");
        let Some((_, subject_audiences)) = x.actors.iter().find(|(p, _)| p.matches(workload)) else {
            return Err(ExchangeError::UnauthorizedClient(format!(
                "ServiceAccount {workload} may not exchange for {} (TokenExchangePolicy {})",
                x.config.audience, x.key
            )));
        };

        // The subject: a token this gateway minted, for the actor.
        let invalid = |d: &str| ExchangeError::InvalidGrant(format!("subject_token: {d}"));
        let all_algs = JwtAlgorithm::ALL;
        let subject =
            verify(&req.subject_token, &self.issuer_url, &all_algs, &self.exchange.subjects, now).map_err(|e| e.into_error(invalid))?;
        let username = workload.username();
        let minted_for_actor = if subject_audiences.is_empty() {
            subject.aud.contains(&username)
        } else {
            subject.aud.iter().any(|a| subject_audiences.contains(a))
        };
        if !minted_for_actor {
            return Err(invalid(&format!("not minted for the calling workload {workload}")));
        }
        let sub = subject.claims.get("sub").filter(|s| s.is_string()).ok_or_else(|| invalid("has no sub"))?;
        let chain = act_chain(&subject.claims).ok_or_else(|| invalid("its act claim is not a chain of actors"))?;
        if chain.len() + 1 > x.config.max_depth as usize {
            return Err(invalid(&format!(
                "the delegation chain would be {} workloads long; {} allows {}",
                chain.len() + 1,
                x.key,
                x.config.max_depth
            )));
        }
        if req.audience == username || chain.contains(&req.audience.as_str()) {
            return Err(ExchangeError::InvalidTarget(format!("{} is already in this token's chain of callers", shown(&req.audience))));
        }
        let facts = RequestFacts { headers: &http::HeaderMap::new(), params: &[] };
        for r in &x.require {
            r.check(&subject.claims, facts).map_err(|u| invalid(&format!("{r}: {}", u.as_str())))?;
        }

        let minter =
            x.minter.as_ref().ok_or_else(|| ExchangeError::Unavailable("the signing key is not available to this gateway".into()))?;
        let claims = exchanged_claims(&self.issuer_url, &x.config, &subject, sub, &username, now);
        let exp = claims["exp"].as_i64().expect("set");
        let access_token = minter.current(now).sign_jwt(&claims).map_err(|e| ExchangeError::Unavailable(e.to_string()))?;
        Ok(Exchanged { access_token, expires_in: exp - now, policy: x.key.clone(), actor: workload.to_string() })
    }

    /// Whether this engine can exchange at all (some policy allows it).
    pub fn exchanges(&self) -> usize {
        self.exchange.exchanges.len()
    }
}

/// The requested audience as errors (and so logs) may show it: a ServiceAccount username, or
/// nothing of what the client sent (it could be anything, a token included).
fn shown(audience: &str) -> &str {
    let username = audience.len() <= 317
        && audience
            .strip_prefix("system:serviceaccount:")
            .is_some_and(|r| r.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-.:".contains(&b)));
    if username { audience } else { "the requested audience" }
}

/// The new token's claims: the subject's `sub` and the claims the policy carries over (only
/// those present), `aud` the one asked for, `act` the caller over the subject's own chain, and an
/// `exp` never beyond the subject's.
fn exchanged_claims(issuer: &str, x: &ExchangeConfig, subject: &Verified, sub: &Value, actor: &str, now: i64) -> Value {
    let mut claims = Map::new();
    for name in &x.claims {
        if let Some(v) = subject.claims.get(name.as_str()) {
            claims.insert(name.clone(), v.clone());
        }
    }
    let mut act = Map::new();
    act.insert("sub".into(), json!(actor));
    if let Some(prior) = subject.claims.get("act") {
        act.insert("act".into(), prior.clone());
    }
    let mut jti = [0u8; 16];
    // A failing RNG leaves jti zero: it is an identifier, not a secret.
    let _ = aws_lc_rs::rand::fill(&mut jti);
    claims.insert("iss".into(), json!(issuer));
    claims.insert("sub".into(), sub.clone());
    claims.insert("aud".into(), json!(x.audience));
    claims.insert("act".into(), Value::Object(act));
    claims.insert("iat".into(), json!(now));
    claims.insert("nbf".into(), json!(now));
    claims.insert("exp".into(), json!((now + x.ttl_secs as i64).min(subject.exp)));
    claims.insert("jti".into(), json!(b64url(&jti)));
    Value::Object(claims)
}

/// The actors of a token's nested `act` claims, outermost (the latest) first; `None` when the
/// claim is not a chain of objects with a string `sub`, or deeper than [`MAX_CHAIN`].
pub fn act_chain(claims: &Value) -> Option<Vec<&str>> {
    let mut chain = Vec::new();
    let mut next = claims.get("act");
    while let Some(act) = next {
        if chain.len() == MAX_CHAIN {
            return None;
        }
        chain.push(act.as_object()?.get("sub")?.as_str()?);
        next = act.get("act");
    }
    Some(chain)
}

enum Failure {
    Malformed,
    Denied(DenyReason),
}

impl Failure {
    fn into_error(self, wrap: impl Fn(&str) -> ExchangeError) -> ExchangeError {
        match self {
            Failure::Malformed => ExchangeError::InvalidRequest("a token is not a JWT".into()),
            Failure::Denied(DenyReason::KeysUnavailable) => ExchangeError::Unavailable("keys not loaded".into()),
            Failure::Denied(DenyReason::UntrustedIssuer) => wrap("issued by another issuer"),
            Failure::Denied(r) => wrap(r.description()),
        }
    }
}

/// Full verification against one issuer and key set: signature, `iss`, `exp`/`nbf`.
fn verify(token: &str, issuer: &str, algorithms: &[JwtAlgorithm], keys: &KeySet, now: i64) -> Result<Verified, Failure> {
    let t =
        token::parse(token.trim()).map_err(|r| if r == DenyReason::MalformedToken { Failure::Malformed } else { Failure::Denied(r) })?;
    if t.claims.get("iss").and_then(Value::as_str) != Some(issuer) {
        return Err(Failure::Denied(DenyReason::UntrustedIssuer));
    }
    if !algorithms.contains(&t.alg) {
        return Err(Failure::Denied(DenyReason::UnsupportedAlgorithm));
    }
    let generation = keys.generation();
    token::verify_signature(&t, keys).map_err(Failure::Denied)?;
    let v = Verified::from_claims(keys, generation, t.alg, t.claims).map_err(Failure::Denied)?;
    v.check_time(now, SKEW_SECS).map_err(Failure::Denied)?;
    Ok(v)
}
