//! Browser sign-in, the I/O (thin): OpenID providers discovered and their keys fetched, and the
//! callback — the authorization code exchanged at the provider's token endpoint. Every decision
//! (sessions, login state, ID token checks, redirects) is `decide::signin`'s.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::header::{CACHE_CONTROL, LOCATION, SET_COOKIE};
use http::{HeaderMap, HeaderValue, Response, StatusCode};
use http_body_util::Full;
use tokio::task::JoinHandle;

use super::unix_now;
use crate::decide::signin::{Endpoint, LoginError, Provider, ProviderMeta, Redirect, RtSignIn, Session, cookie_value, finish_login};
use crate::decide::{Decision, Denied, DenyReason, Engine, Request};
use crate::plumbing::http::reply;
use crate::plumbing::jwks_fetch::{HttpClient, PostClient, fetch_json, fetch_jwks, get_json_bearer, post_form};

/// Discovery documents and token responses larger than this are refused.
const MAX_DOC_BYTES: usize = 256 * 1024;
const REFRESH: Duration = Duration::from_secs(300);

/// One discovery loop per provider issuer, shared by every config that uses it.
#[derive(Default)]
pub struct Providers(Mutex<HashMap<String, Discovered>>);

/// A provider and the task that keeps it discovered.
type Discovered = (Arc<Provider>, JoinHandle<()>);

impl Drop for Providers {
    fn drop(&mut self) {
        for (_, (_, task)) in self.0.lock().expect("providers lock").drain() {
            task.abort();
        }
    }
}

pub use crate::policy::config::discovery_url;

type Health = (Arc<Mutex<HashMap<String, crate::contract::heartbeat::JwksHealth>>>, Arc<tokio::sync::Notify>);

impl Providers {
    pub fn get(&self, issuer: &str, client: &HttpClient, health: Health) -> Arc<Provider> {
        let mut map = self.0.lock().expect("providers lock");
        let entry = map.entry(issuer.to_owned()).or_insert_with(|| {
            let provider = Provider::new(issuer);
            let task = tokio::spawn(discovery_loop(client.clone(), provider.clone(), health));
            (provider, task)
        });
        entry.0.clone()
    }

    /// The discovery URLs of the providers in use.
    pub fn discovery_urls(&self) -> Vec<String> {
        self.0.lock().expect("providers lock").keys().map(|i| discovery_url(i)).collect()
    }

    /// Stops discovering the providers no config uses any more.
    pub fn retain_only(&self, in_use: &[&str]) {
        self.0.lock().expect("providers lock").retain(|issuer, (_, task)| {
            let keep = in_use.contains(&issuer.as_str());
            if !keep {
                task.abort();
            }
            keep
        });
    }
}

/// The provider's discovery document and keys, refreshed every five minutes; a failure keeps
/// what was there and is retried sooner.
async fn discovery_loop(client: HttpClient, provider: Arc<Provider>, (health, changed): Health) {
    let mut failures = 0u32;
    let url = discovery_url(&provider.issuer);
    loop {
        let result = discover(&client, &provider.issuer).await;
        let report = result.as_ref().map(|(_, keys)| (keys.clone(), Vec::new())).map_err(Clone::clone);
        let held = provider.keys.state().keys.len();
        if super::jwks::record_health(&mut health.lock().expect("health lock"), &url, &report, held, jiff::Timestamp::now()) {
            changed.notify_waiters();
        }
        let next = match result {
            Ok((meta, keys)) => {
                failures = 0;
                provider.keys.replace(keys);
                provider.meta.store(Some(Arc::new(meta)));
                REFRESH
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                tracing::warn!(issuer = %provider.issuer, "sign-in provider discovery failed, retrying: {e}");
                Duration::from_secs(1u64 << failures.min(5))
            }
        };
        tokio::time::sleep(next).await;
    }
}

async fn discover(client: &HttpClient, issuer: &str) -> Result<(ProviderMeta, Vec<crate::keys::VerifyKey>), String> {
    let doc = fetch_json(client, &discovery_url(issuer), MAX_DOC_BYTES).await?;
    let meta: ProviderMeta = serde_json::from_value(doc).map_err(|e| format!("discovery document: {e}"))?;
    // OpenID Connect Discovery 4.3: the document is the issuer's own.
    if meta.issuer != issuer {
        return Err(format!("the discovery document names issuer {:?}, not {issuer:?}", meta.issuer));
    }
    for (what, u) in [("authorization_endpoint", &meta.authorization_endpoint), ("token_endpoint", &meta.token_endpoint)] {
        if !(u.starts_with("https://") || u.starts_with("http://")) {
            return Err(format!("{what} is not an http(s) URL"));
        }
    }
    let (keys, _) = fetch_jwks(client, &meta.jwks_uri).await?;
    Ok((meta, keys))
}

/// The answer of a sign-in endpoint (callback or sign-out) when `target` on `host` is one.
pub async fn endpoint(
    engine: &Engine,
    method: &str,
    raw_host: &str,
    target: &str,
    headers: &HeaderMap,
    client: &PostClient,
    refreshes: &Refreshes,
) -> Option<Response<Full<Bytes>>> {
    let host = crate::policy::host::normalize_host(raw_host)?;
    let (path, query) = crate::policy::path::split_target(target);
    let (si, which) = engine.sign_in_endpoint(&host, path)?;
    Some(match which {
        Endpoint::Callback => callback(engine, si, &host, raw_host, query, headers, client).await,
        Endpoint::Start => {
            // A session that only went stale is refreshed, not sent through the provider's pages.
            if let Some(session) = engine.refreshable_session(si, raw_host, headers, unix_now())
                && let Refreshed::Session(new) = refreshes.refresh(engine, si, &session, client).await
                && let Ok(cookies) = engine.session_cookies(si, &host, &new, unix_now())
            {
                return Some(match engine.back_from_start(si, raw_host, query, cookies) {
                    Ok(r) => redirect(&r),
                    Err(why) => page(StatusCode::BAD_REQUEST, "Sign-in failed", why),
                });
            }
            match engine.sign_in_start(si, raw_host, query, unix_now()) {
                Ok(r) => redirect(&r),
                Err(why) => page(StatusCode::SERVICE_UNAVAILABLE, "Sign-in unavailable", why),
            }
        }
        Endpoint::Logout => match engine.sign_out(si, raw_host, method, headers) {
            Ok(r) => {
                tracing::info!(policy = %si.policy, "signed out");
                redirect(&r)
            }
            Err((status, why)) => page(StatusCode::from_u16(status).unwrap_or(StatusCode::FORBIDDEN), "Sign-out refused", why),
        },
    })
}

/// Answers a sign-in callback (`?code&state`): the login cookie checked, the code exchanged
/// (with the PKCE verifier) at the provider, the ID token checked, the session set. Every
/// failure is a page that says what failed, and never a session (nor a redirect loop).
pub async fn callback(
    engine: &Engine,
    si: &RtSignIn,
    host: &str,
    raw_host: &str,
    query: Option<&str>,
    headers: &HeaderMap,
    client: &PostClient,
) -> Response<Full<Bytes>> {
    let now = unix_now();
    let mut params: HashMap<String, String> = HashMap::new();
    for (k, v) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        if params.insert(k.into_owned(), v.into_owned()).is_some() {
            return page(StatusCode::BAD_REQUEST, "Sign-in failed", "a parameter of the callback is repeated");
        }
    }
    if let Some(error) = params.get("error") {
        let error: String = error.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '_').take(64).collect();
        return page(StatusCode::FORBIDDEN, "Sign-in failed", &format!("the identity provider answered {error}"));
    }
    let (Some(code), Some(state)) = (params.get("code"), params.get("state")) else {
        return page(StatusCode::BAD_REQUEST, "Sign-in failed", "the callback has no code or state");
    };
    let cookie = si.config.login_cookie();
    let Ok(sealed) = cookie_value(headers, cookie) else {
        return page(StatusCode::BAD_REQUEST, "Sign-in failed", "the login cookie appears more than once");
    };
    let Some(logins) = &si.logins else {
        return page(StatusCode::SERVICE_UNAVAILABLE, "Sign-in unavailable", "the gateway does not hold the session keys yet");
    };
    let login = match finish_login(logins, cookie, host, sealed, state, now) {
        Ok(l) => l,
        Err(e @ (LoginError::NoLogin | LoginError::StateMismatch | LoginError::Expired)) => {
            tracing::info!(policy = %si.policy, "sign-in callback refused: {e}");
            return page(StatusCode::BAD_REQUEST, "Sign-in failed", &format!("{e}; start again from the page you wanted"));
        }
    };
    let Some(meta) = si.provider.meta.load_full() else {
        return page(StatusCode::SERVICE_UNAVAILABLE, "Sign-in unavailable", "the identity provider cannot be reached");
    };
    let form = form_urlencoded::Serializer::new(String::new())
        .append_pair("grant_type", "authorization_code")
        .append_pair("code", code)
        .append_pair("redirect_uri", &format!("{}{}", si.config.origin(raw_host), si.config.callback_path))
        .append_pair("client_id", &si.config.client_id)
        .append_pair("code_verifier", &login.verifier)
        .finish();
    let tokens = match post_form(client, &meta.token_endpoint, form, si.client_authorization().as_deref(), MAX_DOC_BYTES).await {
        Ok((status, body)) if status.is_success() => body,
        Ok((status, _)) if status.is_server_error() => {
            tracing::warn!(policy = %si.policy, %status, "sign-in: the token endpoint failed");
            return page(StatusCode::SERVICE_UNAVAILABLE, "Sign-in unavailable", "the identity provider cannot be reached");
        }
        Ok((status, body)) => {
            let error = body.get("error").and_then(|e| e.as_str()).unwrap_or("error");
            let error: String = error.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '_').take(64).collect();
            tracing::info!(policy = %si.policy, %status, error, "sign-in: the provider refused the code");
            return page(StatusCode::FORBIDDEN, "Sign-in failed", &format!("the identity provider refused the code ({error})"));
        }
        Err(e) => {
            tracing::warn!(policy = %si.policy, "sign-in: the token endpoint failed: {e}");
            return page(StatusCode::SERVICE_UNAVAILABLE, "Sign-in unavailable", "the identity provider cannot be reached");
        }
    };
    // The ID token is verified before its access token is used for the userinfo.
    let claims = match engine.verify_sign_in(si, &login, &tokens, now) {
        Ok(c) => c,
        Err(e) => {
            tracing::info!(policy = %si.policy, "sign-in refused: {e}");
            return page(StatusCode::FORBIDDEN, "Sign-in failed", &e);
        }
    };
    let info = match userinfo(si, &tokens, client).await {
        Ok(info) => info,
        Err(e) => {
            tracing::warn!(policy = %si.policy, "sign-in: {e}");
            return page(StatusCode::SERVICE_UNAVAILABLE, "Sign-in unavailable", "the identity provider's userinfo cannot be read");
        }
    };
    let claims = crate::decide::signin::with_userinfo(claims, info.as_ref(), false);
    match claims.and_then(|claims| engine.complete_sign_in(si, raw_host, &login, claims, &tokens, now)) {
        Ok(r) => redirect(&r),
        Err(e) => {
            tracing::info!(policy = %si.policy, "sign-in refused: {e}");
            page(StatusCode::FORBIDDEN, "Sign-in failed", &e)
        }
    }
}

/// What a refresh at the provider came to.
#[derive(Debug, Clone)]
pub enum Refreshed {
    Session(Box<Session>),
    /// The provider refused (the grant was revoked or expired): the session is over.
    Refused,
    /// The provider could not be asked: the session stands while its claims are fresh.
    Unavailable,
}

/// Refreshes in flight or just done, by a hash of the refresh token. Requests that carry the same
/// session share one refresh, and those that still carry the old cookie (sent before the browser
/// had the new one, or through a proxy that drops `Set-Cookie` on allowed answers) get the same
/// result: a provider that rotates refresh tokens takes a second use of one as theft and revokes
/// the grant.
#[derive(Default)]
pub struct Refreshes(Mutex<HashMap<[u8; 32], RefreshEntry>>);

type RefreshEntry = (std::time::Instant, Arc<tokio::sync::OnceCell<Refreshed>>);

/// Refreshes remembered at most; past it, a refresh is not shared.
const MAX_REFRESHES: usize = 10_000;

impl Refreshes {
    /// The refreshed session of `old` (which holds a refresh token), asking the provider at most
    /// once per refresh token and replica while the answer is remembered.
    pub async fn refresh(&self, engine: &Engine, si: &RtSignIn, old: &Session, client: &PostClient) -> Refreshed {
        let Some(token) = old.refresh_token.as_deref() else { return Refreshed::Refused };
        // By policy and token: one policy's refresh never answers for another's session.
        let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        ctx.update(si.policy.as_bytes());
        ctx.update(b"\0");
        ctx.update(token.as_bytes());
        let key: [u8; 32] = ctx.finish().as_ref().try_into().expect("32 bytes");
        let cell = {
            let mut map = self.0.lock().expect("refreshes lock");
            let now = std::time::Instant::now();
            if map.len() >= MAX_REFRESHES {
                map.retain(|_, (until, _)| *until > now);
            }
            match map.get(&key) {
                Some((until, cell)) if *until > now => Some(cell.clone()),
                _ if map.len() >= MAX_REFRESHES => None,
                _ => {
                    let cell = Arc::new(tokio::sync::OnceCell::new());
                    // Held while in flight; how long once done depends on the answer (below).
                    map.insert(key, (now + Duration::from_secs(60), cell.clone()));
                    Some(cell)
                }
            }
        };
        let Some(cell) = cell else { return ask(engine, si, old, token, client).await };
        let result = cell.get_or_init(|| ask(engine, si, old, token, client)).await.clone();
        let keep = match &result {
            Refreshed::Session(s) => Duration::from_secs((s.fresh_until - unix_now()).clamp(1, 3600) as u64),
            Refreshed::Refused => Duration::from_secs(60),
            Refreshed::Unavailable => Duration::from_secs(5),
        };
        if let Some((until, c)) = self.0.lock().expect("refreshes lock").get_mut(&key)
            && Arc::ptr_eq(c, &cell)
        {
            *until = std::time::Instant::now() + keep;
        }
        result
    }
}

/// One refresh at the provider's token endpoint (`grant_type=refresh_token`).
async fn ask(engine: &Engine, si: &RtSignIn, old: &Session, token: &str, client: &PostClient) -> Refreshed {
    let Some(meta) = si.provider.meta.load_full() else { return Refreshed::Unavailable };
    let form = form_urlencoded::Serializer::new(String::new())
        .append_pair("grant_type", "refresh_token")
        .append_pair("refresh_token", token)
        .append_pair("client_id", &si.config.client_id)
        .finish();
    match post_form(client, &meta.token_endpoint, form, si.client_authorization().as_deref(), MAX_DOC_BYTES).await {
        Ok((status, body)) if status.is_success() => {
            let now = unix_now();
            // The new ID token is verified before its access token is used for the userinfo.
            let id_claims = match engine.verify_refresh(si, old, &body, now) {
                Ok(c) => c,
                Err(e) => {
                    tracing::info!(policy = %si.policy, "sign-in refresh refused: {e}");
                    return Refreshed::Refused;
                }
            };
            let info = match userinfo(si, &body, client).await {
                Ok(info) => info,
                Err(e) => {
                    tracing::warn!(policy = %si.policy, "sign-in refresh: {e}");
                    return Refreshed::Unavailable;
                }
            };
            match old.refreshed(&body, id_claims, info.as_ref(), now) {
                Ok(s) => {
                    tracing::debug!(policy = %si.policy, "sign-in session refreshed");
                    Refreshed::Session(Box::new(s))
                }
                Err(e) => {
                    tracing::info!(policy = %si.policy, "sign-in refresh refused: {e}");
                    Refreshed::Refused
                }
            }
        }
        Ok((status, _)) if status.is_server_error() => {
            tracing::warn!(policy = %si.policy, %status, "sign-in refresh: the token endpoint failed");
            Refreshed::Unavailable
        }
        Ok((status, body)) => {
            let error = body.get("error").and_then(|e| e.as_str()).unwrap_or("error");
            let error: String = error.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '_').take(64).collect();
            tracing::info!(policy = %si.policy, %status, error, "sign-in refresh: the provider ended the session");
            Refreshed::Refused
        }
        Err(e) => {
            tracing::warn!(policy = %si.policy, "sign-in refresh: the token endpoint failed: {e}");
            Refreshed::Unavailable
        }
    }
}

impl super::Gateway {
    /// A decision whose session was due for refresh, once refreshed at the provider: a page load
    /// is sent to itself with the new cookies; anything else is decided again with them, and
    /// the answer sets them. A provider that refuses ends the session (decided as without one);
    /// one that cannot be asked leaves a fresh session as it is and a stale one unusable (503).
    pub(super) async fn after_refresh(
        &self,
        slot: &super::Slot,
        request: &Request<'_>,
        due: crate::decide::signin::RefreshDue,
        decision: Decision,
    ) -> Decision {
        let engine = &slot.engine;
        let (Some(si), Some(host)) = (engine.sign_in_of(due.policy), crate::policy::host::normalize_host(request.host)) else {
            return decision;
        };
        let base = si.config.session_cookie();
        let unavailable = |d: Decision| {
            let why = "the session could not be refreshed: the identity provider cannot be reached";
            Decision::Deny(Denied::new(DenyReason::SignInUnavailable, d.route(), Some(why.into())))
        };
        match self.refreshes.refresh(engine, si, &due.session, &self.jwks.post).await {
            Refreshed::Session(new) => {
                let now = unix_now();
                let Ok(set_cookies) = engine.session_cookies(si, &host, &new, now) else { return unavailable(decision) };
                if due.navigation {
                    let location = format!("{}{}", si.config.origin(request.host), request.target);
                    let redirect = Some(Box::new(crate::decide::signin::Redirect { location, set_cookies }));
                    return Decision::Deny(Denied { redirect, ..Denied::new(DenyReason::SessionRefreshed, decision.route(), None) });
                }
                let headers = crate::decide::signin::with_session_cookies(request.headers, base, &set_cookies);
                let mut again = engine.decide(&Request { headers: &headers, ..*request }, now);
                if let Decision::Allow(a) = &mut again {
                    a.set_cookies = set_cookies;
                }
                again
            }
            Refreshed::Refused => {
                // Without the session's cookies: as if it were not there.
                let headers = crate::decide::signin::with_session_cookies(request.headers, base, &[]);
                engine.decide(&Request { headers: &headers, ..*request }, unix_now())
            }
            Refreshed::Unavailable if due.staleness == crate::decide::signin::Staleness::Due => decision,
            Refreshed::Unavailable => unavailable(decision),
        }
    }
}

/// The provider's userinfo for a token response's access token, where the sign-in asks for it.
async fn userinfo(si: &RtSignIn, tokens: &serde_json::Value, client: &PostClient) -> Result<Option<serde_json::Value>, String> {
    if !si.config.userinfo {
        return Ok(None);
    }
    let meta = si.provider.meta.load_full().ok_or("the provider's discovery document is not loaded")?;
    let endpoint = meta.userinfo_endpoint.as_deref().ok_or("the provider's discovery document names no userinfo_endpoint")?;
    let access = tokens.get("access_token").and_then(|t| t.as_str()).ok_or("the provider sent no access token for its userinfo")?;
    match get_json_bearer(client, endpoint, access, MAX_DOC_BYTES).await {
        Ok((status, info)) if status.is_success() => Ok(Some(info)),
        Ok((status, _)) => Err(format!("the userinfo endpoint answered {status}")),
        Err(e) => Err(format!("the userinfo endpoint failed: {e}")),
    }
}

/// A 302 with its cookies, never cached.
pub fn redirect(r: &Redirect) -> Response<Full<Bytes>> {
    let mut resp = page(StatusCode::FOUND, "Redirecting", "");
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::try_from(r.location.as_str()) {
        h.insert(LOCATION, v);
    }
    for c in &r.set_cookies {
        if let Ok(v) = HeaderValue::try_from(c.as_str()) {
            h.append(SET_COOKIE, v);
        }
    }
    resp
}

/// A small HTML page (what a person in a browser sees), never cached.
pub fn page(status: StatusCode, title: &str, text: &str) -> Response<Full<Bytes>> {
    let escape = |s: &str| s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;");
    let body = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{t}</title></head><body><h1>{t}</h1><p>{x}</p></body></html>\n",
        t = escape(title),
        x = escape(text)
    );
    let mut resp = reply(status, "text/html; charset=utf-8", Bytes::from(body));
    resp.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    struct At(Arc<Provider>);

    impl crate::decide::RemoteKeys for At {
        fn key_set(&self, uri: &str, _: u64) -> Arc<crate::decide::keyset::KeySet> {
            crate::decide::keyset::KeySet::new_remote(uri)
        }
        fn provider(&self, _: &str) -> Arc<Provider> {
            self.0.clone()
        }
    }

    /// A token endpoint that counts its requests and answers each with `status` and `body`
    /// after a short delay (so that requests meet while one is in flight).
    async fn token_endpoint(status: u16, body: &'static str, count: Arc<AtomicUsize>) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                let count = count.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 8192];
                    let _ = s.read(&mut buf).await;
                    count.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    let resp = format!(
                        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = s.write_all(resp.as_bytes()).await;
                });
            }
        });
        format!("http://{addr}/token")
    }

    fn engine(token_endpoint: &str) -> Engine {
        let spec: crate::api::SigningKeySpec = serde_json::from_value(json!({"algorithm": "EdDSA"})).unwrap();
        let key: crate::policy::KeyRef = "shop/sessions".parse().unwrap();
        let now = jiff::Timestamp::now();
        let ring = crate::keys::schedule::plan(now, &spec, Default::default(), &Default::default(), &mut crate::keys::schedule::generate)
            .unwrap()
            .ring;
        let published = BTreeMap::from([(key.clone(), crate::keys::schedule::publish(&key, &spec, &ring).unwrap())]);
        let yaml = "name: web\nnamespace: shop\nspec:\n  signIn: { issuer: \"https://id.example\", clientId: web, sessionKeyRef: { name: sessions } }\n  rules: [{ name: app, match: { paths: [{ prefix: / }] } }]\n";
        let compiled = crate::testkit::compile_yaml("default", yaml, &published);
        let provider = Provider::new("https://id.example");
        provider.meta.store(Some(Arc::new(ProviderMeta {
            issuer: "https://id.example".into(),
            authorization_endpoint: "https://id.example/auth".into(),
            token_endpoint: token_endpoint.into(),
            jwks_uri: "https://id.example/jwks".into(),
            end_session_endpoint: None,
            userinfo_endpoint: None,
        })));
        let minting = BTreeMap::from([(key, ring)]);
        let opts = crate::decide::BuildOptions { issuer_url: "https://gw", minting: &minting, remote: &At(provider), cache_bytes: 1 << 20 };
        Engine::build(compiled.config, &opts).unwrap()
    }

    #[tokio::test]
    async fn requests_of_one_session_share_one_refresh_and_a_refusal_is_remembered() {
        let now = unix_now();
        let session = Session::from_id_token(&json!({"sub": "alice"}), now + 3600).with_refresh(Some("rt1".into()), now + 1, now - 299);
        let client = crate::plumbing::jwks_fetch::post_client(&[]);

        // The provider rotates the refresh token: ten requests at once ask it once, and a request
        // that still carries the old cookie later gets the same answer without asking again.
        let count = Arc::new(AtomicUsize::new(0));
        let e = engine(&token_endpoint(200, r#"{"access_token":"a","refresh_token":"rt2","expires_in":300}"#, count.clone()).await);
        let si = e.sign_in_of(0).unwrap();
        let refreshes = Refreshes::default();
        let all = futures::future::join_all((0..10).map(|_| refreshes.refresh(&e, si, &session, &client))).await;
        let late = refreshes.refresh(&e, si, &session, &client).await;
        assert_eq!(count.load(Ordering::SeqCst), 1);
        for r in all.iter().chain([&late]) {
            let Refreshed::Session(s) = r else { panic!("{r:?}") };
            assert_eq!((s.refresh_token.as_deref(), s.exp), (Some("rt2"), session.exp), "rotated, never extended");
        }

        // The provider refuses: the session is over, and saying so again costs no request.
        let count = Arc::new(AtomicUsize::new(0));
        let e = engine(&token_endpoint(400, r#"{"error":"invalid_grant"}"#, count.clone()).await);
        let si = e.sign_in_of(0).unwrap();
        let refreshes = Refreshes::default();
        for _ in 0..3 {
            assert!(matches!(refreshes.refresh(&e, si, &session, &client).await, Refreshed::Refused));
        }
        assert_eq!(count.load(Ordering::SeqCst), 1);

        // A provider in trouble is not a refusal.
        let e = engine(&token_endpoint(503, "{}", Arc::new(AtomicUsize::new(0))).await);
        let si = e.sign_in_of(0).unwrap();
        assert!(matches!(Refreshes::default().refresh(&e, si, &session, &client).await, Refreshed::Unavailable));
    }
}
