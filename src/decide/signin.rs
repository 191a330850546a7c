//! Browser sign-in, the pure part (issue 21): the sealed session a browser carries, the sealed
//! login state between the redirect to the provider and the callback, the checks of an ID token,
//! and what counts as a navigation (redirected to sign in) rather than a script (answered 401).
//!
//! ```text
//!  navigation without session ─▶ begin_login: state, nonce, PKCE verifier, return target
//!                                  sealed in the login cookie (10 min) ─▶ 302 to the provider
//!  callback ?code&state ─▶ finish_login: the login cookie opens, state matches, in time
//!                        ─▶ (gateway: code → tokens) ─▶ check_id_token: iss, aud, azp, exp, nonce
//!                        ─▶ seal_session: claims + expiry, in at most two cookies
//!  request with session cookies ─▶ open_session: opens, one value per chunk, not expired
//! ```
//! Every sealed value is bound to its purpose, its cookie and its host (`binding`): a login cookie
//! is no session, and neither moves to another host.

use std::sync::Arc;

use arc_swap::ArcSwapOption;
use http::HeaderMap;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::keyset::KeySet;
use crate::keys::KeyError;
use crate::keys::seal::{Sealer, random_token, same_secret};
use crate::policy::config::SignInConfig;
use crate::policy::host::HostPattern;

/// An OpenID provider as the gateway discovered it; `meta` is empty until its discovery
/// document and keys were fetched (sign-in then answers 503, never a loop).
#[derive(Debug)]
pub struct Provider {
    pub issuer: String,
    pub meta: ArcSwapOption<ProviderMeta>,
    /// The provider's signing keys (from its `jwks_uri`).
    pub keys: Arc<KeySet>,
}

impl Provider {
    pub fn new(issuer: &str) -> Arc<Self> {
        Arc::new(Self { issuer: issuer.to_owned(), meta: ArcSwapOption::empty(), keys: KeySet::new_remote(issuer) })
    }
}

/// What a provider's discovery document says that sign-in needs.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ProviderMeta {
    pub issuer: String,
    pub authorization_endpoint: String,
    pub token_endpoint: String,
    pub jwks_uri: String,
    #[serde(default)]
    pub end_session_endpoint: Option<String>,
    #[serde(default)]
    pub userinfo_endpoint: Option<String>,
}

/// A policy's sign-in, ready to decide: its provider and the sealers of its session and login
/// cookies (`None` until this gateway holds the session SigningKey's keys).
pub struct RtSignIn {
    pub config: SignInConfig,
    pub policy: String,
    pub provider: Arc<Provider>,
    /// A confidential client's secret (never logged: this type has no `Debug`).
    pub client_secret: Option<String>,
    pub sessions: Option<Sealer>,
    pub logins: Option<Sealer>,
    pub allowed: Vec<HostPattern>,
    /// Its session chunks and login cookie: removed from every upstream request.
    pub cookies: Vec<String>,
}

/// A sealed value per cookie at most this long: with the cookie's name and attributes it stays
/// under the 4,096 bytes browsers keep per cookie.
pub const CHUNK: usize = 3800;
/// Cookies a session may take: two keep the `Cookie` header under NGINX's default 8 KiB line.
pub const MAX_CHUNKS: usize = 2;
/// How long a sign-in may take from the redirect to the callback.
pub const LOGIN_SECS: i64 = 600;
/// Claims of an ID token that describe the token, not the person: not kept in a session.
const TOKEN_CLAIMS: [&str; 8] = ["nonce", "at_hash", "c_hash", "s_hash", "auth_time", "jti", "nbf", "iat"];

/// A signed-in browser's session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Session {
    /// The identity, as the ID token stated it (its bookkeeping claims left out).
    #[serde(rename = "c")]
    pub claims: Value,
    /// When the session ends, whatever happens (seconds): refreshing never moves it.
    #[serde(rename = "e")]
    pub exp: i64,
    /// The provider's refresh token, when it gave one: the claims are then refreshed with it
    /// before `fresh_until`, and the session ends when the provider refuses.
    #[serde(rename = "r", default, skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    /// Until when the provider vouches for the claims (the ID token's `exp`, capped at `exp`).
    #[serde(rename = "f", default)]
    pub fresh_until: i64,
    /// When the claims were obtained (sign-in or the last refresh).
    #[serde(rename = "i", default)]
    pub issued: i64,
}

/// How long before `fresh_until` a session is refreshed: a quarter of its freshness, at most a
/// minute, so that a request in flight never meets stale claims.
const REFRESH_EARLY: i64 = 60;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    #[error("no session")]
    Missing,
    #[error("a session cookie appears more than once")]
    Ambiguous,
    #[error("the session does not open")]
    Invalid,
    #[error("the session has expired")]
    Expired,
    #[error("the session is too large for {MAX_CHUNKS} cookies")]
    TooLarge,
}

impl Session {
    /// A session from a verified ID token's claims, ending at `exp`, without refresh.
    pub fn from_id_token(claims: &Value, exp: i64) -> Self {
        let mut kept = claims.as_object().cloned().unwrap_or_default();
        for c in TOKEN_CLAIMS {
            kept.remove(c);
        }
        Self { claims: Value::Object(kept), exp, refresh_token: None, fresh_until: exp, issued: 0 }
    }

    /// With the provider's refresh token: the claims are fresh until `fresh_until` (never past
    /// the session's end), as of `now`.
    pub fn with_refresh(mut self, refresh_token: Option<String>, fresh_until: i64, now: i64) -> Self {
        self.refresh_token = refresh_token.filter(|t| !t.is_empty());
        self.fresh_until = fresh_until.min(self.exp);
        self.issued = now;
        self
    }

    /// Whether the session is to be refreshed at `now`, and whether its claims are already
    /// stale (past `fresh_until`: not to be used without a refresh).
    pub fn refresh_due(&self, now: i64) -> Option<Staleness> {
        self.refresh_token.as_ref()?;
        let early = REFRESH_EARLY.min((self.fresh_until - self.issued).max(0) / 4);
        if now >= self.fresh_until {
            Some(Staleness::Stale)
        } else if now >= self.fresh_until - early {
            Some(Staleness::Due)
        } else {
            None
        }
    }

    /// This session after the provider answered its refresh (`id_claims`: those of its new ID
    /// token, verified by [`super::Engine::verify_refresh`]): the new claims, or the old ones
    /// when it sent no ID token; the refresh token rotated when it sent a new one. The session's
    /// end stays.
    pub fn refreshed(&self, tokens: &Value, id_claims: Option<Value>, userinfo: Option<&Value>, now: i64) -> Result<Session, String> {
        let old = self;
        let refresh_token = tokens.get("refresh_token").and_then(Value::as_str).map(str::to_owned).or_else(|| old.refresh_token.clone());
        let (claims, fresh_until) = match id_claims {
            Some(claims) => {
                let exp = claims.get("exp").and_then(Value::as_i64).unwrap_or(now);
                (Session::from_id_token(&with_userinfo(claims, userinfo, false)?, old.exp).claims, exp)
            }
            // No new ID token: the claims stand for as long as the last ones did, brought up to
            // date by the userinfo where it is asked for.
            None => (with_userinfo(old.claims.clone(), userinfo, true)?, now + (old.fresh_until - old.issued).max(0)),
        };
        let session = Session { claims, ..old.clone() }.with_refresh(refresh_token, fresh_until, now);
        if session.fresh_until <= now {
            return Err("the provider's refreshed claims are already expired".into());
        }
        Ok(session)
    }
}

/// A session with a refresh token near or past the end of its claims' freshness.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Staleness {
    /// Still fresh: used as it is, refreshed on the way.
    Due,
    /// Stale: used only once refreshed.
    Stale,
}

/// A session due for refresh, and how stale it is.
pub type DueSession = (Session, Staleness);

/// A session the gateway is to refresh at the provider (the decision knows no I/O).
#[derive(Debug, Clone)]
pub struct RefreshDue {
    pub policy: u32,
    pub session: Session,
    pub staleness: Staleness,
    /// Whether the request is a page load (answered with a redirect to itself and the new
    /// cookies, which every proxy passes on) or a script (allowed with `Set-Cookie`).
    pub navigation: bool,
}

/// The name of chunk `i` of a cookie.
pub fn chunk_name(base: &str, i: usize) -> String {
    format!("{base}-{i}")
}

/// What binds a sealed value to its place: purpose, cookie and host.
pub fn binding(purpose: &str, cookie: &str, host: &str) -> Vec<u8> {
    format!("{purpose}\0{cookie}\0{host}").into_bytes()
}

/// The session sealed into cookies `base-0`, `base-1`, … (as few as it needs).
pub fn seal_session(sealer: &Sealer, base: &str, host: &str, session: &Session) -> Result<Vec<(String, String)>, SessionError> {
    let plain = serde_json::to_vec(session).map_err(|_| SessionError::Invalid)?;
    let sealed = sealer.seal(&binding("session", base, host), &plain).map_err(|_| SessionError::Invalid)?;
    if sealed.len() > CHUNK * MAX_CHUNKS {
        return Err(SessionError::TooLarge);
    }
    Ok(sealed.as_bytes().chunks(CHUNK).enumerate().map(|(i, c)| (chunk_name(base, i), String::from_utf8_lossy(c).into_owned())).collect())
}

/// The session in the request's cookies, open and in time at `now`.
pub fn open_session(sealer: &Sealer, base: &str, host: &str, headers: &HeaderMap, now: i64) -> Result<Session, SessionError> {
    let mut chunks: [Option<&str>; MAX_CHUNKS] = [None; MAX_CHUNKS];
    let names: Vec<String> = (0..MAX_CHUNKS).map(|i| chunk_name(base, i)).collect();
    for header in headers.get_all(http::header::COOKIE) {
        let Ok(text) = header.to_str() else { continue };
        for pair in text.split(';') {
            let Some((name, value)) = pair.trim().split_once('=') else { continue };
            if let Some(i) = names.iter().position(|n| n == name)
                && chunks[i].replace(value).is_some()
            {
                return Err(SessionError::Ambiguous);
            }
        }
    }
    // The chunks in order, with no gap: a missing first chunk is no session at all.
    let present = chunks.iter().take_while(|c| c.is_some()).count();
    if present == 0 {
        return Err(if chunks.iter().any(Option::is_some) { SessionError::Invalid } else { SessionError::Missing });
    }
    if chunks[present..].iter().any(Option::is_some) {
        return Err(SessionError::Invalid);
    }
    let sealed: String = chunks[..present].iter().flatten().copied().collect();
    let plain = sealer.unseal(&binding("session", base, host), &sealed).map_err(|_| SessionError::Invalid)?;
    let session: Session = serde_json::from_slice(&plain).map_err(|_| SessionError::Invalid)?;
    if now >= session.exp {
        return Err(SessionError::Expired);
    }
    Ok(session)
}

/// What a login carries from the redirect to the callback.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginState {
    #[serde(rename = "s")]
    pub state: String,
    #[serde(rename = "n")]
    pub nonce: String,
    /// The PKCE code verifier.
    #[serde(rename = "v")]
    pub verifier: String,
    /// Where the browser goes once signed in (checked before it was sealed).
    #[serde(rename = "r")]
    pub return_to: String,
    #[serde(rename = "e")]
    pub exp: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LoginError {
    #[error("no sign-in is in progress in this browser")]
    NoLogin,
    #[error("the sign-in state does not match")]
    StateMismatch,
    #[error("the sign-in took too long")]
    Expired,
}

/// A new login: its state and the sealed value of the login cookie `cookie`.
pub fn begin_login(sealer: &Sealer, cookie: &str, host: &str, return_to: &str, now: i64) -> Result<(LoginState, String), KeyError> {
    let login = LoginState {
        state: random_token(16)?,
        nonce: random_token(16)?,
        verifier: random_token(32)?,
        return_to: return_to.to_owned(),
        exp: now + LOGIN_SECS,
    };
    let sealed = sealer.seal(&binding("login", cookie, host), &serde_json::to_vec(&login).expect("serializes"))?;
    Ok((login, sealed))
}

/// The login a callback finishes: the login cookie opens, is in time, and its state is the
/// callback's `state` (a forged or replayed state from another browser matches nothing).
pub fn finish_login(
    sealer: &Sealer,
    cookie: &str,
    host: &str,
    sealed: Option<&str>,
    state: &str,
    now: i64,
) -> Result<LoginState, LoginError> {
    let sealed = sealed.ok_or(LoginError::NoLogin)?;
    let plain = sealer.unseal(&binding("login", cookie, host), sealed).map_err(|_| LoginError::NoLogin)?;
    let login: LoginState = serde_json::from_slice(&plain).map_err(|_| LoginError::NoLogin)?;
    if now >= login.exp {
        return Err(LoginError::Expired);
    }
    if !same_secret(&login.state, state) {
        return Err(LoginError::StateMismatch);
    }
    Ok(login)
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdTokenError {
    #[error("the ID token is from another issuer")]
    Issuer,
    #[error("the ID token is for another client")]
    Audience,
    #[error("the ID token has expired")]
    Expired,
    #[error("the ID token's nonce does not match this sign-in")]
    Nonce,
    #[error("the ID token has no subject, or another one than the session's")]
    Subject,
}

/// The checks of OpenID Connect Core §3.1.3.7 on a signature-verified ID token's claims: `iss`,
/// `aud` (and `azp` when it names several audiences or is there at all), `exp`, `nonce`, `sub`.
pub fn check_id_token(claims: &Value, issuer: &str, client_id: &str, nonce: &str, now: i64, skew: i64) -> Result<(), IdTokenError> {
    check_id_token_for(claims, issuer, client_id, now, skew)?;
    if !claims.get("nonce").and_then(Value::as_str).is_some_and(|n| same_secret(n, nonce)) {
        return Err(IdTokenError::Nonce);
    }
    Ok(())
}

/// The checks of a refreshed ID token (OpenID Connect Core §12.2): those of sign-in but the
/// nonce, and the same subject as the session's.
pub fn check_refreshed_id_token(claims: &Value, issuer: &str, client_id: &str, sub: &str, now: i64, skew: i64) -> Result<(), IdTokenError> {
    check_id_token_for(claims, issuer, client_id, now, skew)?;
    if claims.get("sub").and_then(Value::as_str) != Some(sub) {
        return Err(IdTokenError::Subject);
    }
    Ok(())
}

fn check_id_token_for(claims: &Value, issuer: &str, client_id: &str, now: i64, skew: i64) -> Result<(), IdTokenError> {
    if claims.get("iss").and_then(Value::as_str) != Some(issuer) {
        return Err(IdTokenError::Issuer);
    }
    let aud: Vec<&str> = match claims.get("aud") {
        Some(Value::String(a)) => vec![a.as_str()],
        Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    if !aud.contains(&client_id) {
        return Err(IdTokenError::Audience);
    }
    match claims.get("azp").map(Value::as_str) {
        Some(Some(azp)) if azp != client_id => return Err(IdTokenError::Audience),
        Some(None) => return Err(IdTokenError::Audience),
        None if aud.len() > 1 => return Err(IdTokenError::Audience),
        _ => {}
    }
    match claims.get("exp").and_then(Value::as_i64) {
        Some(exp) if now - skew < exp => {}
        _ => return Err(IdTokenError::Expired),
    }
    if claims.get("sub").and_then(Value::as_str).is_none_or(str::is_empty) {
        return Err(IdTokenError::Subject);
    }
    Ok(())
}

/// Whether a request is a browser navigation (sent to sign in) rather than a script or an API
/// client (answered 401, so that it does not follow a login page): `GET` or `HEAD`, asking for
/// HTML, and not marked as an XHR.
pub fn is_navigation(method: &str, headers: &HeaderMap) -> bool {
    if method != "GET" && method != "HEAD" {
        return false;
    }
    if headers.contains_key("x-requested-with") {
        return false;
    }
    if headers.get("sec-fetch-mode").is_some_and(|m| m.as_bytes() != b"navigate") {
        return false;
    }
    headers.get_all(http::header::ACCEPT).iter().filter_map(|v| v.to_str().ok()).any(|v| v.to_ascii_lowercase().contains("text/html"))
}

/// A `Set-Cookie` value: host-only, `Path=/`, `HttpOnly`, `SameSite=Lax`, `Secure` on https;
/// `max_age` 0 deletes it.
pub fn set_cookie(name: &str, value: &str, max_age: i64, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{name}={value}; Path=/; Max-Age={}; HttpOnly; SameSite=Lax{secure}", max_age.max(0))
}

/// The endpoints of sign-in that the authorizer answers itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Callback,
    Logout,
    /// `START_PATH?rd=URL`: a sign-in started by a proxy that redirects on its own (ingress-nginx's
    /// `auth-signin`), back to `rd` once signed in.
    Start,
}

/// Where a proxy that cannot ask for the redirect itself sends browsers to sign in.
pub const START_PATH: &str = "/.portcullis/sign-in";

/// Where a [`START_PATH`] request returns: `rd` as a path when it is a URL of this host.
fn start_target(si: &RtSignIn, raw_host: &str, query: Option<&str>) -> Result<String, &'static str> {
    let mut rd = None;
    for (k, v) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        if k == "rd" && rd.replace(v.into_owned()).is_some() {
            return Err("rd is given more than once");
        }
    }
    let own = si.config.origin(raw_host);
    // A full URL of this host comes back as its path: what ingress-nginx sends.
    Ok(match rd {
        Some(r) => match r.strip_prefix(&own) {
            Some(rest) if rest.starts_with('/') => rest.to_owned(),
            Some("") => "/".to_owned(),
            _ => r,
        },
        None => "/".to_owned(),
    })
}

/// Where a browser is sent, and the cookies set on the way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redirect {
    pub location: String,
    pub set_cookies: Vec<String>,
}

/// The one value of cookie `name` in the request; `Err` when it appears more than once.
pub fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, SessionError> {
    let mut found = None;
    for header in headers.get_all(http::header::COOKIE) {
        let Ok(text) = header.to_str() else { continue };
        for pair in text.split(';') {
            if let Some((n, v)) = pair.trim().split_once('=')
                && n == name
                && found.replace(v).is_some()
            {
                return Err(SessionError::Ambiguous);
            }
        }
    }
    Ok(found)
}

impl RtSignIn {
    /// `client_secret_basic` (RFC 6749 §2.3.1: both parts form-encoded) for a confidential
    /// client; `None` for a public one.
    pub fn client_authorization(&self) -> Option<String> {
        use base64::Engine;
        let secret = self.client_secret.as_deref()?;
        let enc = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
        let pair = format!("{}:{}", enc(&self.config.client_id), enc(secret));
        Some(format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(pair)))
    }

    /// Where a browser may go back to from `target` on `host` (normalised): a path of the host
    /// or an https URL of an allowed host; anything else is `/`.
    pub fn return_to(&self, host: &str, target: &str) -> String {
        crate::policy::redirect::return_target(target, host, &self.allowed).unwrap_or_else(|| "/".to_owned())
    }

    /// Whether this sign-in serves `host` (normalised, without port).
    pub fn serves(&self, hosts: &[HostPattern], host: &str) -> bool {
        hosts.is_empty() || hosts.iter().any(|h| h.matches(host))
    }
}

impl super::Engine {
    /// The session of a request to a sign-in policy, as a verified caller, and the session
    /// itself when it is due for refresh.
    pub(super) fn session(
        &self,
        si: &RtSignIn,
        req: &super::Request<'_>,
        now: i64,
    ) -> Result<(Arc<super::Verified>, Option<DueSession>), SessionError> {
        let sealer = si.sessions.as_ref().ok_or(SessionError::Invalid)?;
        let host = crate::policy::host::normalize_host(req.host).ok_or(SessionError::Invalid)?;
        let mut s = open_session(sealer, si.config.session_cookie(), &host, req.headers, now)?;
        let due = s.refresh_due(now);
        // The claims are copied only for a session that goes on to be refreshed.
        let claims = if due.is_some() { s.claims.clone() } else { std::mem::take(&mut s.claims) };
        let verified = Arc::new(super::Verified {
            keyset: 0,
            generation: 0,
            alg: crate::api::JwtAlgorithm::EdDSA,
            iss: si.provider.issuer.clone(),
            aud: vec![si.config.client_id.clone()],
            exp: s.exp,
            nbf: None,
            claims,
            minted: Default::default(),
        });
        Ok((verified, due.map(|d| (s, d))))
    }

    /// The redirect to the provider that starts a sign-in, or why it cannot start.
    pub(super) fn sign_in_redirect(&self, si: &RtSignIn, route: super::RouteRef, req: &super::Request<'_>, now: i64) -> super::Denied {
        let (reason, detail, redirect) = match self.login_redirect(si, req.host, req.target, now) {
            Ok(r) => (super::DenyReason::SignInRequired, "a browser without a session", Some(Box::new(r))),
            Err(why) => (super::DenyReason::SignInUnavailable, why, None),
        };
        super::Denied { redirect, ..super::Denied::new(reason, Some(route), Some(detail.to_owned())) }
    }

    /// A new login for `raw_host`, coming back to `target` (when it is allowed, else `/`): the
    /// provider's authorization URL and the login cookie.
    fn login_redirect(&self, si: &RtSignIn, raw_host: &str, target: &str, now: i64) -> Result<Redirect, &'static str> {
        let meta = si.provider.meta.load_full().ok_or("the provider's discovery document is not loaded")?;
        let logins = si.logins.as_ref().ok_or("the session SigningKey's keys are not on this gateway")?;
        let host = crate::policy::host::normalize_host(raw_host).ok_or("invalid host")?;
        let return_to = si.return_to(&host, target);
        let cookie = si.config.login_cookie();
        let (login, sealed) = begin_login(logins, cookie, &host, &return_to, now).map_err(|_| "sealing failed")?;
        let redirect_uri = format!("{}{}", si.config.origin(raw_host), si.config.callback_path);
        // OpenID Connect Core §11: a refresh token for offline access is asked for with consent.
        let offline = si.config.scopes.iter().any(|s| s == "offline_access");
        let query = form_urlencoded::Serializer::new(String::new())
            .append_pair("response_type", "code")
            .append_pair("client_id", &si.config.client_id)
            .append_pair("redirect_uri", &redirect_uri)
            .append_pair("scope", &si.config.scopes.join(" "))
            .append_pair("state", &login.state)
            .append_pair("nonce", &login.nonce)
            .append_pair("code_challenge", &crate::keys::seal::pkce_challenge(&login.verifier))
            .append_pair("code_challenge_method", "S256")
            .extend_pairs(offline.then_some(("prompt", "consent")))
            .finish();
        let sep = if meta.authorization_endpoint.contains('?') { '&' } else { '?' };
        Ok(Redirect {
            location: format!("{}{sep}{query}", meta.authorization_endpoint),
            set_cookies: vec![set_cookie(cookie, &sealed, LOGIN_SECS, si.config.https)],
        })
    }

    /// The issuers of every sign-in of this engine.
    pub fn sign_in_issuers(&self) -> Vec<&str> {
        self.policies.iter().filter_map(|p| p.sign_in.as_ref().map(|si| si.config.issuer.as_str())).collect()
    }

    /// The sign-in endpoint `path` on `host` (normalised) is, of exactly one policy.
    pub fn sign_in_endpoint(&self, host: &str, path: &str) -> Option<(&RtSignIn, Endpoint)> {
        let mut found = self.policies.iter().filter_map(|p| {
            let si = p.sign_in.as_deref().filter(|si| si.serves(&p.sign_in_hosts, host))?;
            let endpoint = if si.config.callback_path == path {
                Endpoint::Callback
            } else if si.config.logout_path == path {
                Endpoint::Logout
            } else if path == START_PATH {
                Endpoint::Start
            } else {
                return None;
            };
            Some((si, endpoint))
        });
        let first = found.next()?;
        found.next().is_none().then_some(first)
    }

    /// A sign-in started at [`START_PATH`]: to the provider, back to `rd` (a path of the host, or
    /// an https URL of an allowed host; anything else returns to `/`).
    pub fn sign_in_start(&self, si: &RtSignIn, raw_host: &str, query: Option<&str>, now: i64) -> Result<Redirect, &'static str> {
        let return_to = start_target(si, raw_host, query)?;
        self.login_redirect(si, raw_host, &return_to, now).map_err(|_| "the identity provider cannot be reached")
    }

    /// The session a browser brings to [`START_PATH`] when refreshing it is all it needs (its
    /// claims went stale; a proxy that redirects on its own sent it here).
    pub fn refreshable_session(&self, si: &RtSignIn, raw_host: &str, headers: &HeaderMap, now: i64) -> Option<Session> {
        let host = crate::policy::host::normalize_host(raw_host)?;
        let session = open_session(si.sessions.as_ref()?, si.config.session_cookie(), &host, headers, now).ok()?;
        session.refresh_due(now).is_some().then_some(session)
    }

    /// Back to where a [`START_PATH`] request asked (`rd`, checked), with `set_cookies`.
    pub fn back_from_start(
        &self,
        si: &RtSignIn,
        raw_host: &str,
        query: Option<&str>,
        set_cookies: Vec<String>,
    ) -> Result<Redirect, &'static str> {
        let target = start_target(si, raw_host, query)?;
        let host = crate::policy::host::normalize_host(raw_host).ok_or("invalid host")?;
        Ok(Redirect { location: si.config.absolute(raw_host, &si.return_to(&host, &target)), set_cookies })
    }

    /// The `Cookie` pairs of a session with `claims` on `raw_host`, sealed as the sign-in of that
    /// host would seal it: what `portcullis test` sends for a signed-in case.
    pub fn test_session_cookie(&self, raw_host: &str, claims: &Value, now: i64) -> Result<String, String> {
        let host = crate::policy::host::normalize_host(raw_host).ok_or("invalid host")?;
        let mut serving = self.policies.iter().filter_map(|p| p.sign_in.as_deref().filter(|si| si.serves(&p.sign_in_hosts, &host)));
        let si = match (serving.next(), serving.next()) {
            (Some(si), None) => si,
            (None, _) => return Err(format!("no policy with signIn serves {host}")),
            (Some(_), Some(_)) => return Err(format!("more than one policy with signIn serves {host}")),
        };
        let sealer = si.sessions.as_ref().ok_or("the session SigningKey's keys are not available")?;
        let session = Session::from_id_token(claims, now + si.config.session_lifetime_secs as i64);
        let chunks = seal_session(sealer, si.config.session_cookie(), &host, &session).map_err(|e| e.to_string())?;
        Ok(chunks.iter().map(|(n, v)| format!("{n}={v}")).collect::<Vec<_>>().join("; "))
    }

    /// Whether `target` on `raw_host` is a sign-in endpoint (callback or sign-out).
    pub fn is_sign_in_endpoint(&self, raw_host: &str, target: &str) -> bool {
        let Some(host) = crate::policy::host::normalize_host(raw_host) else { return false };
        self.sign_in_endpoint(&host, crate::policy::path::split_target(target).0).is_some()
    }

    /// Signing out: a `POST` from a page of the same host (`Origin`; a cross-site form is
    /// refused), the session cookies cleared, and on to the provider's sign-out where it has
    /// one. `Err` is the status and a message for the page.
    pub fn sign_out(&self, si: &RtSignIn, raw_host: &str, method: &str, headers: &HeaderMap) -> Result<Redirect, (u16, &'static str)> {
        if method != "POST" {
            return Err((405, "sign out with a POST (a form button on your page)"));
        }
        let origin = si.config.origin(raw_host);
        let mut origins = headers.get_all(http::header::ORIGIN).iter();
        match (origins.next(), origins.next()) {
            (Some(o), None) if o.as_bytes().eq_ignore_ascii_case(origin.as_bytes()) => {}
            _ => return Err((403, "a sign-out from another site is refused")),
        }
        let target = &si.config.post_logout_redirect;
        let absolute = si.config.absolute(raw_host, target);
        let location = match si.provider.meta.load().as_ref().and_then(|m| m.end_session_endpoint.clone()) {
            Some(end) => {
                let query = form_urlencoded::Serializer::new(String::new())
                    .append_pair("client_id", &si.config.client_id)
                    .append_pair("post_logout_redirect_uri", &absolute)
                    .finish();
                format!("{end}{}{query}", if end.contains('?') { '&' } else { '?' })
            }
            None => absolute,
        };
        let https = si.config.https;
        let mut set_cookies: Vec<String> =
            (0..MAX_CHUNKS).map(|i| set_cookie(&chunk_name(si.config.session_cookie(), i), "", 0, https)).collect();
        set_cookies.push(set_cookie(si.config.login_cookie(), "", 0, https));
        Ok(Redirect { location, set_cookies })
    }

    /// The end of a sign-in, once the gateway has the ID token's verified claims
    /// ([`Self::verify_sign_in`]), with the userinfo's where asked ([`with_userinfo`]): the session, with the token
    /// response's refresh token when there is one, sealed into cookies, with the way back.
    pub fn complete_sign_in(
        &self,
        si: &RtSignIn,
        raw_host: &str,
        login: &LoginState,
        claims: Value,
        tokens: &Value,
        now: i64,
    ) -> Result<Redirect, String> {
        let normalized = crate::policy::host::normalize_host(raw_host).ok_or("invalid host")?;
        let fresh_until = claims.get("exp").and_then(Value::as_i64).unwrap_or(now);
        let refresh_token = tokens.get("refresh_token").and_then(Value::as_str).map(str::to_owned);
        let session =
            Session::from_id_token(&claims, now + si.config.session_lifetime_secs as i64).with_refresh(refresh_token, fresh_until, now);
        let mut set_cookies = self.session_cookies(si, &normalized, &session, now)?;
        set_cookies.push(set_cookie(si.config.login_cookie(), "", 0, si.config.https));
        Ok(Redirect { location: si.config.absolute(raw_host, &login.return_to), set_cookies })
    }

    /// The claims of a sign-in's ID token: its signature verified with the provider's keys,
    /// then OIDC Core 3.1.3.7. Done before the token response's access token is used.
    pub fn verify_sign_in(&self, si: &RtSignIn, login: &LoginState, tokens: &Value, now: i64) -> Result<Value, String> {
        let meta = si.provider.meta.load_full().ok_or("the provider's discovery document is not loaded")?;
        let claims = verify_id_token(si, tokens)?;
        check_id_token(&claims, &meta.issuer, &si.config.client_id, &login.nonce, now, 60).map_err(|e| e.to_string())?;
        Ok(claims)
    }

    /// The claims of a refresh's new ID token, if it sent one: verified as at sign-in but the
    /// nonce, and of the session's subject (OIDC Core §12.2).
    pub fn verify_refresh(&self, si: &RtSignIn, old: &Session, tokens: &Value, now: i64) -> Result<Option<Value>, String> {
        if tokens.get("id_token").is_none() {
            return Ok(None);
        }
        let meta = si.provider.meta.load_full().ok_or("the provider's discovery document is not loaded")?;
        let claims = verify_id_token(si, tokens)?;
        let sub = old.claims.get("sub").and_then(Value::as_str).unwrap_or_default();
        check_refreshed_id_token(&claims, &meta.issuer, &si.config.client_id, sub, now, 60).map_err(|e| e.to_string())?;
        Ok(Some(claims))
    }

    /// `Set-Cookie` values that hold `session` on `host` (normalised), and delete the chunks it
    /// no longer needs.
    pub fn session_cookies(&self, si: &RtSignIn, host: &str, session: &Session, now: i64) -> Result<Vec<String>, String> {
        let sessions = si.sessions.as_ref().ok_or("the session SigningKey's keys are not on this gateway")?;
        let base = si.config.session_cookie();
        let chunks = seal_session(sessions, base, host, session).map_err(|e| e.to_string())?;
        let https = si.config.https;
        let mut set_cookies: Vec<String> = chunks.iter().map(|(n, v)| set_cookie(n, v, session.exp - now, https)).collect();
        set_cookies.extend((chunks.len()..MAX_CHUNKS).map(|i| set_cookie(&chunk_name(base, i), "", 0, https)));
        Ok(set_cookies)
    }

    /// The sign-in of policy `policy` (an index of a decision's route).
    pub fn sign_in_of(&self, policy: u32) -> Option<&RtSignIn> {
        self.policies.get(policy as usize)?.sign_in.as_deref()
    }
}

/// Claims with the userinfo response's added (OpenID Connect Core §5.3.2: only of the same
/// `sub`). Where both have a claim, the ID token's wins, unless `update` (the claims are a
/// session's, and the userinfo is newer).
pub fn with_userinfo(mut claims: Value, userinfo: Option<&Value>, update: bool) -> Result<Value, String> {
    let Some(info) = userinfo else { return Ok(claims) };
    let info = info.as_object().ok_or("the userinfo response is not a JSON object")?;
    if info.get("sub").is_none() || info.get("sub") != claims.get("sub") {
        return Err("the userinfo response is about another subject".into());
    }
    if let Some(c) = claims.as_object_mut() {
        for (k, v) in info {
            if update || !c.contains_key(k) {
                c.insert(k.clone(), v.clone());
            }
        }
    }
    Ok(claims)
}

/// The claims of the ID token in a token response, its signature verified with the provider's
/// keys and an algorithm sign-in accepts.
fn verify_id_token(si: &RtSignIn, tokens: &Value) -> Result<Value, String> {
    let id_token = tokens.get("id_token").and_then(Value::as_str).ok_or("the identity provider sent no ID token")?;
    let t = super::token::parse(id_token).map_err(|r| format!("ID token: {}", r.description()))?;
    if !matches!(
        t.alg,
        crate::api::JwtAlgorithm::RS256
            | crate::api::JwtAlgorithm::ES256
            | crate::api::JwtAlgorithm::PS256
            | crate::api::JwtAlgorithm::EdDSA
    ) {
        return Err("ID token: algorithm not accepted".into());
    }
    super::token::verify_signature(&t, &si.provider.keys).map_err(|r| format!("ID token: {}", r.description()))?;
    Ok(t.claims)
}

/// The request's headers with its session cookies replaced by `set_cookies`' values: the
/// request as it is once the browser holds the refreshed session.
pub fn with_session_cookies(headers: &HeaderMap, base: &str, set_cookies: &[String]) -> HeaderMap {
    let mut out = headers.clone();
    let mut pairs: Vec<String> = Vec::new();
    for header in headers.get_all(http::header::COOKIE) {
        let Ok(text) = header.to_str() else { continue };
        pairs.extend(
            text.split(';')
                .map(str::trim)
                .filter(|p| {
                    !p.is_empty() && !p.split_once('=').is_some_and(|(n, _)| n.strip_prefix(base).is_some_and(|r| r.starts_with('-')))
                })
                .map(str::to_owned),
        );
    }
    for c in set_cookies {
        let pair = c.split(';').next().unwrap_or_default();
        if pair.split_once('=').is_some_and(|(_, v)| !v.is_empty()) {
            pairs.push(pair.to_owned());
        }
    }
    out.remove(http::header::COOKIE);
    if let Ok(v) = http::HeaderValue::try_from(pairs.join("; ")) {
        out.insert(http::header::COOKIE, v);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::SigningKeySpec;
    use crate::keys::schedule::{Requests, generate, plan};
    use crate::keys::store::KeyRing;
    use crate::testkit::header_map;
    use proptest::prelude::*;
    use serde_json::json;
    use std::collections::BTreeMap;

    const NOW: i64 = 1_800_000_000;

    fn ring() -> KeyRing {
        let spec: SigningKeySpec = serde_json::from_value(json!({"algorithm": "EdDSA"})).unwrap();
        plan(jiff::Timestamp::from_second(NOW).unwrap(), &spec, Default::default(), &Requests::default(), &mut generate).unwrap().ring
    }

    static SEALER: std::sync::LazyLock<Sealer> = std::sync::LazyLock::new(|| Sealer::new(&ring(), "session:shop/web").unwrap());

    fn cookies(pairs: &[(String, String)]) -> HeaderMap {
        let line = pairs.iter().map(|(n, v)| format!("{n}={v}")).collect::<Vec<_>>().join("; ");
        header_map(&[("cookie", &format!("other=1; {line}"))])
    }

    #[test]
    fn a_session_opens_on_its_host_until_it_expires_and_large_ones_take_two_cookies() {
        let s = Session::from_id_token(&json!({"sub": "alice", "email": "a@x", "nonce": "n", "iat": 1, "at_hash": "h"}), NOW + 60);
        assert_eq!(s.claims, json!({"sub": "alice", "email": "a@x"}));
        let sealed = seal_session(&SEALER, "pc-session", "shop.example", &s).unwrap();
        assert_eq!(sealed.len(), 1);
        let h = cookies(&sealed);
        assert_eq!(open_session(&SEALER, "pc-session", "shop.example", &h, NOW).unwrap(), s);
        assert_eq!(open_session(&SEALER, "pc-session", "shop.example", &h, NOW + 60), Err(SessionError::Expired));
        assert_eq!(open_session(&SEALER, "pc-session", "evil.example", &h, NOW), Err(SessionError::Invalid), "another host");
        assert_eq!(open_session(&SEALER, "pc-other", "shop.example", &h, NOW), Err(SessionError::Missing));
        assert_eq!(open_session(&SEALER, "pc-session", "shop.example", &header_map(&[]), NOW), Err(SessionError::Missing));

        let big = Session::from_id_token(
            &json!({"sub": "alice", "groups": (0..300).map(|i| format!("group-{i}")).collect::<Vec<_>>()}),
            NOW + 60,
        );
        let sealed = seal_session(&SEALER, "pc-session", "shop.example", &big).unwrap();
        assert_eq!(sealed.len(), 2);
        assert!(sealed.iter().all(|(n, v)| set_cookie(n, v, 3600, true).len() < 4096));
        assert_eq!(open_session(&SEALER, "pc-session", "shop.example", &cookies(&sealed), NOW).unwrap(), big);
        // One chunk lost, the chunks swapped, or one sent twice: no session.
        assert_eq!(open_session(&SEALER, "pc-session", "shop.example", &cookies(&sealed[1..]), NOW), Err(SessionError::Invalid));
        assert!(open_session(&SEALER, "pc-session", "shop.example", &cookies(&sealed[..1]), NOW).is_err());
        let swapped = vec![(sealed[0].0.clone(), sealed[1].1.clone()), (sealed[1].0.clone(), sealed[0].1.clone())];
        assert_eq!(open_session(&SEALER, "pc-session", "shop.example", &cookies(&swapped), NOW), Err(SessionError::Invalid));
        let twice = vec![sealed[0].clone(), sealed[0].clone(), sealed[1].clone()];
        assert_eq!(open_session(&SEALER, "pc-session", "shop.example", &cookies(&twice), NOW), Err(SessionError::Ambiguous));

        let huge = Session::from_id_token(&json!({"blob": "x".repeat(CHUNK * MAX_CHUNKS)}), NOW + 60);
        assert_eq!(seal_session(&SEALER, "pc-session", "shop.example", &huge), Err(SessionError::TooLarge));
    }

    #[test]
    fn a_login_finishes_once_in_its_own_browser_and_in_time() {
        let login = Sealer::new(&ring(), "login:shop/web").unwrap();
        let (state, sealed) = begin_login(&login, "pc-login", "shop.example", "/orders?x=1", NOW).unwrap();
        assert_eq!(state.exp, NOW + LOGIN_SECS);
        let done = finish_login(&login, "pc-login", "shop.example", Some(&sealed), &state.state, NOW + 5).unwrap();
        assert_eq!(done, state);
        let other = begin_login(&login, "pc-login", "shop.example", "/", NOW).unwrap().0;
        let cases = [
            (Some(sealed.as_str()), other.state.as_str(), NOW, LoginError::StateMismatch),
            (Some(sealed.as_str()), "", NOW, LoginError::StateMismatch),
            (None, state.state.as_str(), NOW, LoginError::NoLogin),
            (Some("v1.x.y"), state.state.as_str(), NOW, LoginError::NoLogin),
            (Some(sealed.as_str()), state.state.as_str(), NOW + LOGIN_SECS, LoginError::Expired),
        ];
        for (cookie, st, at, want) in cases {
            assert_eq!(finish_login(&login, "pc-login", "shop.example", cookie, st, at), Err(want));
        }
        // A session cookie is no login, a login cookie no session.
        assert_eq!(finish_login(&SEALER, "pc-login", "shop.example", Some(&sealed), &state.state, NOW), Err(LoginError::NoLogin));
        assert_eq!(
            open_session(&login, "pc-login", "shop.example", &header_map(&[("cookie", &format!("pc-login-0={sealed}"))]), NOW),
            Err(SessionError::Invalid)
        );
    }

    #[test]
    fn an_id_token_must_be_the_providers_for_this_client_this_sign_in_and_in_time() {
        let good = json!({"iss": "https://id", "aud": "web", "sub": "alice", "exp": NOW + 60, "nonce": "n1"});
        assert_eq!(check_id_token(&good, "https://id", "web", "n1", NOW, 0), Ok(()));
        let with = |k: &str, v: Value| {
            let mut c = good.clone();
            if v.is_null() {
                c.as_object_mut().unwrap().remove(k);
            } else {
                c[k] = v;
            }
            c
        };
        for (claims, want) in [
            (with("iss", json!("https://other")), IdTokenError::Issuer),
            (with("aud", json!("another-client")), IdTokenError::Audience),
            (with("aud", json!(["web", "api"])), IdTokenError::Audience),
            (with("azp", json!("api")), IdTokenError::Audience),
            (with("exp", json!(NOW)), IdTokenError::Expired),
            (with("exp", Value::Null), IdTokenError::Expired),
            (with("nonce", json!("n2")), IdTokenError::Nonce),
            (with("nonce", Value::Null), IdTokenError::Nonce),
            (with("sub", json!("")), IdTokenError::Subject),
        ] {
            assert_eq!(check_id_token(&claims, "https://id", "web", "n1", NOW, 0), Err(want));
        }
        let several = with("aud", json!(["web", "api"]));
        let mut several = several;
        several["azp"] = json!("web");
        assert_eq!(check_id_token(&several, "https://id", "web", "n1", NOW, 0), Ok(()), "several audiences with azp = the client");
    }

    #[test]
    fn only_html_navigations_are_sent_to_sign_in() {
        let html = [("accept", "text/html,application/xhtml+xml;q=0.9,*/*;q=0.8")];
        assert!(is_navigation("GET", &header_map(&html)));
        assert!(is_navigation("GET", &header_map(&[html[0], ("sec-fetch-mode", "navigate")])));
        assert!(!is_navigation("POST", &header_map(&html)));
        assert!(!is_navigation("GET", &header_map(&[("accept", "application/json")])));
        assert!(!is_navigation("GET", &header_map(&[])));
        assert!(!is_navigation("GET", &header_map(&[html[0], ("x-requested-with", "XMLHttpRequest")])));
        assert!(!is_navigation("GET", &header_map(&[html[0], ("sec-fetch-mode", "cors")])));
        assert_eq!(set_cookie("pc-session-0", "v", 60, true), "pc-session-0=v; Path=/; Max-Age=60; HttpOnly; SameSite=Lax; Secure");
    }

    #[test]
    fn userinfo_adds_claims_of_the_same_subject_only() {
        let id = json!({"sub": "alice", "email": "id@x"});
        let info = json!({"sub": "alice", "email": "info@x", "groups": ["staff"]});
        assert_eq!(with_userinfo(id.clone(), None, false).unwrap(), id);
        assert_eq!(with_userinfo(id.clone(), Some(&info), false).unwrap(), json!({"sub": "alice", "email": "id@x", "groups": ["staff"]}));
        assert_eq!(with_userinfo(id.clone(), Some(&info), true).unwrap(), json!({"sub": "alice", "email": "info@x", "groups": ["staff"]}));
        for bad in [json!({"sub": "mallory", "groups": ["admins"]}), json!({"groups": ["admins"]}), json!(["sub", "alice"])] {
            assert!(with_userinfo(id.clone(), Some(&bad), false).is_err(), "{bad}");
        }
    }

    /// A provider whose ID tokens the test signs.
    struct TestProvider(Arc<Provider>);

    impl crate::decide::RemoteKeys for TestProvider {
        fn key_set(&self, uri: &str, _: u64) -> Arc<KeySet> {
            KeySet::new_remote(uri)
        }
        fn provider(&self, _: &str) -> Arc<Provider> {
            self.0.clone()
        }
    }

    #[test]
    fn a_session_is_refreshed_before_its_claims_go_stale_and_the_providers_answer_decides() {
        const ISSUER: &str = "https://id.example";
        let spec: SigningKeySpec = serde_json::from_value(json!({"algorithm": "EdDSA"})).unwrap();
        let key = crate::policy::KeyRef { namespace: "shop".into(), name: "sessions".into() };
        let published = BTreeMap::from([(key.clone(), crate::keys::schedule::publish(&key, &spec, &ring()).unwrap())]);
        let compiled = crate::testkit::compile_yaml(
            "default",
            r#"
name: web
namespace: shop
spec:
  hosts: [app.example]
  signIn: { issuer: "https://id.example", clientId: web, sessionKeyRef: { name: sessions } }
  rules:
    - name: admin
      match: { paths: [{ prefix: / }] }
      require: [{ claim: groups, containsAny: [admins] }]
"#,
            &published,
        );
        let idp = crate::keys::SigningKeyPair::generate(crate::api::SigningAlgorithm::EdDSA, None).unwrap();
        let provider = Provider::new(ISSUER);
        let meta = ProviderMeta {
            issuer: ISSUER.into(),
            authorization_endpoint: format!("{ISSUER}/auth"),
            token_endpoint: format!("{ISSUER}/token"),
            jwks_uri: format!("{ISSUER}/jwks"),
            end_session_endpoint: None,
            userinfo_endpoint: None,
        };
        provider.meta.store(Some(Arc::new(meta)));
        provider.keys.replace(crate::keys::parse_jwks(&json!({"keys": [idp.public_jwk()]})).unwrap().0);
        let minting = BTreeMap::from([(key, ring())]);
        let opts = crate::decide::BuildOptions {
            issuer_url: "https://gw",
            minting: &minting,
            remote: &TestProvider(provider),
            cache_bytes: 1 << 20,
        };
        let engine = crate::decide::Engine::build(compiled.config, &opts).unwrap();
        let si = engine.sign_in_of(0).unwrap();
        let id_token = |claims: Value| {
            let b64 = |v: &Value| crate::keys::b64url(v.to_string().as_bytes());
            let input = format!("{}.{}", b64(&json!({"alg": "EdDSA", "kid": idp.kid()})), b64(&claims));
            format!("{input}.{}", crate::keys::b64url(&idp.sign(input.as_bytes()).unwrap()))
        };

        // Signed in at NOW: claims fresh for 5 minutes, the session for an hour.
        let session = Session::from_id_token(&json!({"sub": "alice", "groups": ["admins"]}), NOW + 3600).with_refresh(
            Some("rt1".into()),
            NOW + 300,
            NOW,
        );
        let set = engine.session_cookies(si, "app.example", &session, NOW).unwrap();
        let headers = with_session_cookies(&header_map(&[("cookie", "theme=dark")]), si.config.session_cookie(), &set);
        assert!(headers.get("cookie").unwrap().to_str().unwrap().starts_with("theme=dark; __Host-portcullis-session-0="));
        let decide = |headers: &HeaderMap, accept: &str, at: i64| {
            let mut h = headers.clone();
            h.insert("accept", accept.parse().unwrap());
            let req = crate::decide::Request {
                method: "GET",
                host: "app.example",
                target: "/x",
                headers: &h,
                path_mode: Default::default(),
                routed: None,
            };
            engine.decide(&req, at)
        };
        let due = |d: &crate::decide::Decision| match d {
            crate::decide::Decision::Allow(a) => a.refresh.as_ref().map(|r| r.staleness),
            crate::decide::Decision::Deny(d) => d.refresh.as_ref().map(|r| r.staleness),
        };
        // Fresh: no refresh. The last minute: allowed, refreshed on the way. Past it: not used
        // until refreshed (a page is sent to sign in, a script gets 401, either way refreshed).
        let d = decide(&headers, "text/html", NOW + 10);
        assert!(d.is_allow() && due(&d).is_none(), "{d:?}");
        let d = decide(&headers, "text/html", NOW + 240);
        assert!(d.is_allow() && due(&d) == Some(Staleness::Due), "{d:?}");
        let d = decide(&headers, "text/html", NOW + 300);
        assert!(matches!(&d, crate::decide::Decision::Deny(x) if x.reason == crate::decide::DenyReason::SignInRequired), "{d:?}");
        assert_eq!(due(&d), Some(Staleness::Stale));
        let d = decide(&headers, "application/json", NOW + 300);
        assert!(matches!(&d, crate::decide::Decision::Deny(x) if x.reason == crate::decide::DenyReason::MissingToken), "{d:?}");
        assert_eq!(due(&d), Some(Staleness::Stale));

        // The provider's answer: new claims (no longer an admin), a rotated refresh token.
        let at = NOW + 300;
        let refresh = |tokens: &Value| engine.verify_refresh(si, &session, tokens, at).and_then(|c| session.refreshed(tokens, c, None, at));
        let good = json!({"iss": ISSUER, "aud": "web", "sub": "alice", "groups": ["staff"], "exp": at + 300, "iat": at});
        let tokens = json!({"id_token": id_token(good.clone()), "refresh_token": "rt2"});
        let new = refresh(&tokens).unwrap();
        assert_eq!(
            (new.claims["groups"].clone(), new.refresh_token.as_deref(), new.fresh_until, new.exp),
            (json!(["staff"]), Some("rt2"), at + 300, NOW + 3600)
        );
        let set = engine.session_cookies(si, "app.example", &new, at).unwrap();
        let d = decide(&with_session_cookies(&headers, si.config.session_cookie(), &set), "text/html", at);
        assert!(
            matches!(&d, crate::decide::Decision::Deny(x) if x.reason == crate::decide::DenyReason::ClaimsNotSatisfied),
            "the refreshed claims decide: {d:?}"
        );
        // Never past the session's end; without an ID token, the claims stand as long again.
        let mut late = good.clone();
        late["exp"] = json!(NOW + 9999);
        assert_eq!(refresh(&json!({"id_token": id_token(late)})).unwrap().fresh_until, NOW + 3600);
        let kept = refresh(&json!({"access_token": "a"})).unwrap();
        assert_eq!((kept.claims.clone(), kept.refresh_token.as_deref(), kept.fresh_until), (session.claims.clone(), Some("rt1"), at + 300));
        // Another subject, issuer or client, an expired or unsigned ID token: refused.
        for (k, v) in [("sub", json!("mallory")), ("iss", json!("https://evil")), ("aud", json!("other")), ("exp", json!(at - 120))] {
            let mut c = good.clone();
            c[k] = v;
            assert!(refresh(&json!({"id_token": id_token(c)})).is_err(), "{k}");
        }
        let forged = format!("{}x", id_token(good));
        assert!(refresh(&json!({"id_token": forged})).is_err());
        // Removing the session cookies leaves the others.
        let none = with_session_cookies(&headers, si.config.session_cookie(), &[]);
        assert_eq!(none.get("cookie").unwrap(), "theme=dark");
    }

    proptest! {
        /// An expired session never passes; a live one always does; no edited cookie opens.
        #[test]
        fn sessions_open_only_unchanged_and_in_time(exp_in in -100i64..100, at in any::<prop::sample::Index>(), with in "[A-Za-z0-9_-]") {
            let s = Session::from_id_token(&json!({"sub": "alice"}), NOW + exp_in);
            let sealed = seal_session(&SEALER, "pc", "h", &s).unwrap();
            let opened = open_session(&SEALER, "pc", "h", &cookies(&sealed), NOW);
            if exp_in <= 0 { prop_assert_eq!(opened, Err(SessionError::Expired)); } else { prop_assert_eq!(opened, Ok(s)); }
            let mut edited = sealed.clone();
            let v = &mut edited[0].1;
            let i = at.index(v.len());
            let replaced = format!("{}{}{}", &v[..i], with, &v[i + 1..]);
            if replaced != *v {
                *v = replaced;
                prop_assert!(open_session(&SEALER, "pc", "h", &cookies(&edited), NOW - 1000).is_err());
            }
        }
    }
}
