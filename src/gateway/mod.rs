//! The gateway authorizer (HTTP I/O, thin): asks the current [`Engine`] about each request,
//! swaps engines atomically when the config changes, and serves health, readiness, metrics and
//! the JWKS of the config's SigningKeys.
//!
//! ```text
//!  NGINX auth_request / Traefik / Caddy ─▶ GET /authz   (X-Forwarded-Method/Uri/Host)
//!  Envoy ext_authz (path_prefix)        ─▶ ANY /ext_authz/<original path>
//!                                            │
//!                                   ArcSwap<Slot{Engine, counters}> ◀── apply(config) ◀── file / ConfigMap / local dir
//! ```

mod answer;
pub mod audit;
pub mod cluster;
pub mod exchange;
pub mod grpc;
pub mod grpc_transport;
pub mod jwks;
pub mod metrics;
pub mod request;
pub mod signin;
pub mod source;
pub mod status;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http::header::{CACHE_CONTROL, WWW_AUTHENTICATE};
use http::{HeaderValue, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::decide::{self, BuildOptions, DEFAULT_TOKEN_CACHE_BYTES, Decision, Denied, DenyReason, Engine, Request};
use crate::keys::store::KeyRing;
use crate::plumbing::http::reply;
use crate::policy::path::PathMode;
use crate::policy::{GatewayConfig, KeyRef};
use jwks::JwksRegistry;
use metrics::{Metrics, PolicyCounters};

pub use request::{EXT_AUTHZ_PREFIX, Profile};
/// How long a request waits for a JWKS refetch after an unknown kid.
const REFETCH_WAIT: Duration = Duration::from_secs(2);

pub fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

/// Which endpoints a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoints {
    /// Decisions, JWKS and admin (one port for everything).
    All,
    /// Decisions and JWKS.
    Main,
    /// Health, readiness and metrics.
    Admin,
}

struct Slot {
    engine: Arc<Engine>,
    loaded_at: jiff::Timestamp,
    /// (policy, rule) of every rule in Audit mode.
    audited: Vec<(String, String)>,
    counters: Vec<PolicyCounters>,
    jwks: Bytes,
    jwks_max_age: u64,
    discovery: Bytes,
}

pub struct Gateway {
    slot: ArcSwapOption<Slot>,
    pub metrics: Metrics,
    pub jwks: Arc<JwksRegistry>,
    issuer_url: String,
    path_mode: PathMode,
    no_route: PolicyCounters,
    /// Serialises `apply` so that two sources cannot interleave swaps.
    apply_lock: std::sync::Mutex<()>,
    pub audit: audit::AuditLog,
    /// Notified when what `/status` and the heartbeat report changes: a config loads, or a
    /// JWKS starts or stops failing.
    pub changed: Arc<tokio::sync::Notify>,
    /// This replica's name in `/status` (the Pod's name in a cluster).
    pub replica: std::sync::OnceLock<String>,
    /// Byte budget of each engine's verified-token cache.
    token_cache_bytes: AtomicUsize,
    policy_details: AtomicBool,
    pub(crate) refreshes: signin::Refreshes,
}

impl Gateway {
    pub fn new(issuer_url: &str, metrics: Metrics, jwks_min_interval: Duration) -> Arc<Self> {
        Self::with_options(issuer_url, metrics, jwks_min_interval, &[], PathMode::Strict)
    }

    /// Like [`Gateway::new`], trusting `jwks_roots` (PEM CA certificates) for JWKS URLs too, and
    /// with `path_mode` for paths that are not in normal form: `Normalize` only for proxies
    /// that forward the normalised path upstream (docs/gateways/).
    pub fn with_options(
        issuer_url: &str,
        metrics: Metrics,
        jwks_min_interval: Duration,
        jwks_roots: &[rustls::pki_types::CertificateDer<'static>],
        path_mode: PathMode,
    ) -> Arc<Self> {
        let jwks = JwksRegistry::new(metrics.clone(), jwks_min_interval, jwks_roots);
        Arc::new(Self {
            slot: ArcSwapOption::empty(),
            changed: jwks.health_changed.clone(),
            replica: std::sync::OnceLock::new(),
            token_cache_bytes: AtomicUsize::new(DEFAULT_TOKEN_CACHE_BYTES),
            policy_details: AtomicBool::new(false),
            audit: audit::AuditLog::new(metrics.audit_decisions.clone()),
            jwks,
            no_route: metrics.policy_counters(""),
            metrics,
            issuer_url: issuer_url.trim_end_matches('/').to_owned(),
            path_mode,
            apply_lock: std::sync::Mutex::new(()),
            refreshes: Default::default(),
        })
    }

    /// Engines of the configs applied from now on keep the policies' details (for
    /// `Engine::near_misses`, which `portcullis check` shows); a serving gateway does not.
    pub fn keep_policy_details(&self) {
        self.policy_details.store(true, Ordering::Relaxed);
    }

    /// The verified-token cache budget for the configs applied from now on.
    pub fn set_token_cache_bytes(&self, bytes: usize) {
        self.token_cache_bytes.store(bytes, Ordering::Relaxed);
    }

    pub fn engine(&self) -> Option<Arc<Engine>> {
        self.slot.load().as_ref().map(|s| s.engine.clone())
    }

    pub fn is_ready(&self) -> bool {
        self.slot.load().is_some()
    }

    /// A config could not be loaded at all (unreadable, not a config): counted and logged; the
    /// previous config keeps serving.
    pub fn load_failed(&self, why: &str) {
        self.metrics.config_reloads_failed.inc();
        tracing::error!("config rejected, the previous config keeps serving: {why}");
    }

    /// Builds an engine for `config` and swaps it in. On error (logged and counted here) the
    /// previous engine keeps serving.
    pub fn apply(&self, config: GatewayConfig, minting: &BTreeMap<KeyRef, KeyRing>) -> Result<Arc<Engine>, String> {
        self.apply_with(config, minting, &BTreeMap::new())
    }

    /// [`Gateway::apply`] with the sign-in client secrets delivered with the keys (by entry name).
    pub fn apply_with(
        &self,
        config: GatewayConfig,
        minting: &BTreeMap<KeyRef, KeyRing>,
        client_secrets: &BTreeMap<String, String>,
    ) -> Result<Arc<Engine>, String> {
        let _guard = self.apply_lock.lock().expect("apply lock");
        let version = config.version.clone();
        let jwks_doc = public_jwks(&config);
        let jwks_max_age = config.minting_keys().map(|k| k.max_age_secs).min().unwrap_or(300);
        let opts = BuildOptions {
            issuer_url: &self.issuer_url,
            minting,
            remote: &decide::WithClientSecrets { remote: &*self.jwks, secrets: client_secrets },
            cache_bytes: self.token_cache_bytes.load(Ordering::Relaxed),
        };
        let engine = match Engine::build(config, &opts) {
            Ok(e) => e,
            Err(e) => {
                let why = format!("config {version}: {e}");
                self.load_failed(&why);
                return Err(why);
            }
        };
        for w in &engine.warnings {
            tracing::warn!(version = %version, "{w}");
        }
        let counters = engine.config.policies.iter().map(|p| self.metrics.policy_counters(&p.key())).collect();
        let audited: Vec<(String, String)> = engine
            .config
            .policies
            .iter()
            .flat_map(|p| p.rules.iter().filter(|r| r.audit).map(move |r| (p.key(), r.name.clone())))
            .collect();
        let engine = Arc::new(if self.policy_details.load(Ordering::Relaxed) { engine } else { engine.without_policy_details() });
        self.audit.retain(&audited);
        let previous = self.slot.swap(Some(Arc::new(Slot {
            engine: engine.clone(),
            loaded_at: jiff::Timestamp::now(),
            audited,
            counters,
            jwks: Bytes::from(jwks_doc.to_string()),
            jwks_max_age,
            discovery: Bytes::from(self.discovery(&engine.config).to_string()),
        })));
        self.jwks.retain_only(engine.remote_key_sets());
        self.jwks.providers.retain_only(&engine.sign_in_issuers());
        if let Some(prev) = previous {
            let current: std::collections::HashSet<(&str, &str)> =
                engine.config.policies.iter().map(|p| (p.namespace.as_str(), p.name.as_str())).collect();
            for p in &prev.engine.config.policies {
                if !current.contains(&(p.namespace.as_str(), p.name.as_str())) {
                    self.metrics.forget_policy(&p.key());
                }
            }
        }
        self.metrics.config_reloads_ok.inc();
        self.metrics.config_last_success.set(unix_now());
        self.metrics.set_config(engine.realm(), &version);
        tracing::info!(gateway = engine.realm(), version = %version, policies = engine.policy_count(), routes = engine.route_count(), "config loaded");
        self.changed.notify_waiters();
        Ok(engine)
    }

    fn discovery(&self, config: &GatewayConfig) -> serde_json::Value {
        let mut algs: Vec<&str> = config.minting_keys().map(|k| k.algorithm.as_str()).collect();
        algs.sort_unstable();
        algs.dedup();
        let mut doc = json!({
            "issuer": self.issuer_url,
            "jwks_uri": format!("{}/.well-known/jwks.json", self.issuer_url),
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": algs,
        });
        if !config.exchanges.is_empty() {
            doc["token_endpoint"] = json!(format!("{}{}", self.issuer_url, exchange::TOKEN_PATH));
            doc["grant_types_supported"] = json!([crate::decide::exchange::GRANT_TYPE]);
        }
        doc
    }

    pub async fn handle(self: &Arc<Self>, req: hyper::Request<Incoming>, endpoints: Endpoints) -> Response<Full<Bytes>> {
        let decisions = endpoints != Endpoints::Admin;
        let admin = endpoints != Endpoints::Main;
        if decisions && req.uri().path() == exchange::TOKEN_PATH {
            return self.token_exchange(req).await;
        }
        let path = req.uri().path();
        match path {
            p if decisions && let Some(profile) = Profile::for_path(p) => self.authorize(&req, profile).await,
            "/.well-known/jwks.json" if decisions => self.jwks_response(),
            "/.well-known/openid-configuration" if decisions => match &*self.slot.load() {
                Some(s) => reply(StatusCode::OK, "application/json", s.discovery.clone()),
                None => not_ready(),
            },
            "/healthz" if admin => reply(StatusCode::OK, "text/plain", Bytes::from_static(b"ok\n")),
            "/readyz" if admin => match &*self.slot.load() {
                Some(s) => reply(StatusCode::OK, "text/plain", Bytes::from(format!("ready: config {}\n", s.engine.version()))),
                None => not_ready(),
            },
            "/status" if admin => {
                let replica = self.replica.get().map_or("local", String::as_str);
                let status = serde_json::to_vec_pretty(&self.status("", replica)).expect("serializes");
                reply(StatusCode::OK, "application/json", Bytes::from(status))
            }
            "/metrics" if admin => {
                if let Some(s) = &*self.slot.load() {
                    self.metrics.token_cache_entries.set(s.engine.cached_tokens() as i64);
                    self.metrics.token_cache_bytes.set(s.engine.cached_bytes() as i64);
                    self.metrics.signing_keys(&s.engine.config, jiff::Timestamp::now());
                }
                reply(StatusCode::OK, "text/plain; version=0.0.4", Bytes::from(self.metrics.render()))
            }
            // Sign-in's endpoints asked directly, on the protected host's own path (a proxy that
            // sends `/.portcullis/` of each host here, as for ingress-nginx).
            p if decisions && p.starts_with("/.") => self.sign_in_direct(req).await,
            _ => reply(StatusCode::NOT_FOUND, "text/plain", Bytes::from_static(b"not found\n")),
        }
    }

    fn jwks_response(&self) -> Response<Full<Bytes>> {
        let Some(slot) = &*self.slot.load() else { return not_ready() };
        let mut resp = reply(StatusCode::OK, "application/jwk-set+json", slot.jwks.clone());
        resp.headers_mut().insert(CACHE_CONTROL, HeaderValue::try_from(format!("public, max-age={}", slot.jwks_max_age)).expect("ascii"));
        resp
    }

    async fn authorize(self: &Arc<Self>, req: &hyper::Request<Incoming>, profile: Profile) -> Response<Full<Bytes>> {
        let Some(slot) = self.slot.load_full() else { return not_ready() };
        let headers = req.headers();
        let path_and_query = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
        let request::Asked { method, host, target } = match request::asked(profile, req.method().as_str(), path_and_query, headers) {
            Ok(a) => a,
            Err(e) => {
                self.count_unusable();
                tracing::warn!(profile = profile.as_str(), "authorization request refused: {e}");
                return bad_request(&e);
            }
        };
        // NGINX's auth_request passes on nothing but 2xx, 401 and 403: a sign-in (its redirect, its
        // callback, sign-out) is a 401 there, which `error_page 401` takes to `/authz`.
        let deferred = req.uri().path() == request::AUTH_REQUEST_PATH || profile == Profile::IngressNginx;
        // Sign-in's callback and sign-out are answered here: they are no requests for the upstream.
        if deferred {
            if slot.engine.is_sign_in_endpoint(host, target) {
                return sign_in_deferred();
            }
        } else if let Some(resp) = signin::endpoint(&slot.engine, method, host, target, headers, &self.jwks.post, &self.refreshes).await {
            return resp;
        }
        let request = Request { method, host, target, headers, path_mode: self.path_mode, routed: None };
        // These proxies forward the target as the client sent it: a query token cannot be taken out.
        let decision = match self.decide(&slot, &request, false).await {
            Ok(d) => d,
            Err(e) => return bad_request(&e),
        };
        match decision {
            Decision::Allow(a) => answer::allowed(profile, a, headers, slot.engine.token_carriers()),
            Decision::Deny(d) if deferred && matches!(d.reason, DenyReason::SignInRequired | DenyReason::SessionRefreshed) => {
                sign_in_deferred()
            }
            Decision::Deny(d) => deny_response(slot.engine.realm(), &d),
        }
    }

    async fn sign_in_direct(&self, req: hyper::Request<Incoming>) -> Response<Full<Bytes>> {
        let not_found = || reply(StatusCode::NOT_FOUND, "text/plain", Bytes::from_static(b"not found\n"));
        let Some(slot) = self.slot.load_full() else { return not_ready() };
        let mut hosts = req.headers().get_all(http::header::HOST).iter();
        let (Some(host), None) = (hosts.next().and_then(|h| h.to_str().ok()), hosts.next()) else { return not_found() };
        let target = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
        signin::endpoint(&slot.engine, req.method().as_str(), host, target, req.headers(), &self.jwks.post, &self.refreshes)
            .await
            .unwrap_or_else(not_found)
    }

    /// An authorization request too malformed to decide on (400): a denial of no policy, over
    /// HTTP and gRPC alike.
    fn count_unusable(&self) {
        self.no_route.denied.inc();
        self.metrics.denial(DenyReason::BadRequest).inc();
    }

    /// The one decision path of every integration: decide (once more after a JWKS refetch on
    /// an unknown kid), then count and log it. An integration that cannot rewrite the query
    /// (`rewrites_query` false) gets a 400 where a token would have to leave it, counted as such.
    async fn decide(&self, slot: &Slot, request: &Request<'_>, rewrites_query: bool) -> Result<Decision, request::BadRequest> {
        let started = Instant::now();
        let mut decision = slot.engine.decide(request, unix_now());
        if let Decision::Deny(Denied { refetch: Some(set), .. }) = &decision
            && self.jwks.refetch(set, REFETCH_WAIT).await
        {
            decision = slot.engine.decide(request, unix_now());
        }
        let due = match &mut decision {
            Decision::Allow(a) => a.refresh.take(),
            Decision::Deny(d) => d.refresh.take(),
        };
        if let Some(due) = due {
            decision = self.after_refresh(slot, request, *due, decision).await;
        }
        self.metrics.decision_seconds.observe(started.elapsed().as_secs_f64());
        let counters = decision.route().map_or(&self.no_route, |r| &slot.counters[r.policy as usize]);
        let (policy, rule) = decision.route().map_or(("", ""), |r| (slot.engine.policy_key(r), slot.engine.rule_name(r)));
        let (method, host) = (request.method, request.host);
        let path = request.target.split('?').next().unwrap_or("");
        match &decision {
            Decision::Allow(a) if !rewrites_query && !a.strip_query.is_empty() => {
                counters.denied.inc();
                self.metrics.denial(DenyReason::BadRequest).inc();
                tracing::debug!(policy, rule, method, host, path, "refused: a query token cannot be removed by this integration");
                return Err(request::BadRequest::QueryToken);
            }
            Decision::Allow(a) => {
                counters.allowed.inc();
                match &a.audit {
                    None => tracing::debug!(policy, rule, method, host, path, "allow"),
                    Some(v) => {
                        self.audit.record(policy, rule, v, unix_now());
                        if let decide::Verdict::WouldDeny { reason, detail } = v {
                            let (reason, detail) = (reason.as_str(), detail.as_deref().unwrap_or(""));
                            tracing::info!(policy, rule, method, host, path, reason, detail, "audit: allowed, enforcing would deny");
                        }
                    }
                }
            }
            Decision::Deny(d) => {
                counters.denied.inc();
                self.metrics.denial(d.reason).inc();
                let (reason, detail) = (d.reason.as_str(), d.detail.as_deref().unwrap_or(""));
                tracing::debug!(policy, rule, method, host, path, reason, detail, "deny");
            }
        }
        Ok(decision)
    }
}

fn bad_request(e: &request::BadRequest) -> Response<Full<Bytes>> {
    let mut resp = reply(StatusCode::BAD_REQUEST, "application/json", Bytes::from(bad_request_body(&e.to_string()).to_string()));
    resp.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// A sign-in asked of NGINX's `auth_request`: 401, for `error_page` to fetch it from `/authz`.
fn sign_in_deferred() -> Response<Full<Bytes>> {
    let mut resp = reply(StatusCode::UNAUTHORIZED, "application/json", Bytes::from_static(br#"{"error":"sign_in_required"}"#));
    resp.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

fn not_ready() -> Response<Full<Bytes>> {
    reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", Bytes::from_static(b"no config loaded yet\n"))
}

/// RFC 6750 `WWW-Authenticate` for a denial, if it needs one.
pub fn www_authenticate(realm: &str, d: &Denied) -> Option<String> {
    let status = d.reason.status();
    if status != 401 && d.reason.bearer_error() != Some("insufficient_scope") {
        return None;
    }
    let mut v = format!("Bearer realm=\"{realm}\"");
    if let Some(err) = d.reason.bearer_error() {
        v.push_str(&format!(", error=\"{err}\", error_description=\"{}\"", d.reason.description()));
    }
    if !d.scopes.is_empty() {
        v.push_str(&format!(", scope=\"{}\"", d.scopes.join(" ")));
    }
    Some(v)
}

/// The JSON body of a 400 (the same over HTTP and gRPC).
fn bad_request_body(why: &str) -> serde_json::Value {
    json!({"error": "invalid_request", "reason": DenyReason::BadRequest.as_str(), "description": why})
}

/// The JSON body of a denial (the same over HTTP and gRPC).
fn deny_body(d: &Denied) -> serde_json::Value {
    json!({"error": d.reason.bearer_error().unwrap_or(d.reason.as_str()), "reason": d.reason.as_str(), "description": d.reason.description()})
}

fn deny_response(realm: &str, d: &Denied) -> Response<Full<Bytes>> {
    if let Some(r) = &d.redirect {
        return signin::redirect(r);
    }
    if d.reason == DenyReason::SignInUnavailable {
        return signin::page(StatusCode::SERVICE_UNAVAILABLE, "Sign-in unavailable", d.reason.description());
    }
    let status = StatusCode::from_u16(d.reason.status()).expect("valid status");
    let mut resp = reply(status, "application/json", Bytes::from(deny_body(d).to_string()));
    let h = resp.headers_mut();
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Some(v) = www_authenticate(realm, d).and_then(|v| HeaderValue::try_from(v).ok()) {
        h.insert(WWW_AUTHENTICATE, v);
    }
    resp
}

/// The public keys of the SigningKeys the gateway mints with, each kid once. Keys that only
/// verify callers stay out: a team's own key must never become one that services trust.
pub fn public_jwks(config: &GatewayConfig) -> serde_json::Value {
    config.minting_jwks()
}

/// Serves one listener with the gateway's endpoints until `shutdown` turns true.
pub async fn serve(listener: TcpListener, gateway: Arc<Gateway>, endpoints: Endpoints, shutdown: watch::Receiver<bool>, drain: Duration) {
    let handler = move |req| {
        let gw = gateway.clone();
        async move { gw.handle(req, endpoints).await }
    };
    crate::plumbing::http::serve(listener, handler, shutdown, drain).await
}

pub use crate::plumbing::http::shutdown_signal;
