//! The decision (pure, the hot path): a [`GatewayConfig`] built into an [`Engine`] answers, for a
//! request, Allow (with identity headers and maybe a minted token) or Deny (401/403 and why).
//!
//! ```text
//!  request ─▶ normalise host+path ─▶ route table ─▶ public? ──────────────────────────▶ Allow
//!                                        │            └─▶ token ─▶ cache / verify ─▶ claims ─▶ Allow
//!                                        └─▶ none: Deny 403          │ 401                 │ 403
//! ```
//! Nothing here does I/O or reads a clock: `now` is a parameter, remote keys are fetched by the
//! gateway, which is told (through [`Denied::refetch`]) when a kid was unknown.

mod build;
pub mod cache;
mod conditions;
pub mod exchange;
pub mod keyset;
pub mod mint;
mod reason;
pub mod routes;
pub mod signin;
pub mod token;

#[cfg(test)]
mod exchange_tests;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue};
use serde_json::Value;

use crate::api::{HttpMethod, JwtAlgorithm, TokenForwarding, TokenSource};
use crate::keys::store::KeyRing;
use crate::policy::claims::{ClaimPath, ClaimRequirement, RequestFacts, Unmet};
use crate::policy::config::{HeaderClaims, IssueConfig, KeySource};
use crate::policy::host::normalize_host;
use crate::policy::path::{PathMode, normalize_as, split_target};
use crate::policy::validate::{compile_requirements, request_method_bit};
use crate::policy::workload::{self, WorkloadPattern};
use crate::policy::{GatewayConfig, KeyRef, PolicyConfig};
use cache::TokenCache;
use conditions::Conditions;
use keyset::KeySet;
use mint::Minter;
use routes::RouteTable;
use token::{Extracted, Verified};

pub use reason::DenyReason;

/// The verified-token cache's byte budget: well inside the chart's 256 MiB memory limit.
pub const DEFAULT_TOKEN_CACHE_BYTES: usize = 64 << 20;

/// A request as the gateway presents it.
/// The Envoy context extension that carries [`Request::routed`]: the controller writes it into
/// generated gateway objects, the gRPC authorizer reads it.
pub const ROUTED_POLICY: &str = "portcullis.dev/policy";

pub struct Request<'a> {
    pub method: &'a str,
    pub host: &'a str,
    /// Path and query exactly as the client sent them.
    pub target: &'a str,
    pub headers: &'a HeaderMap,
    /// Whether a path that is not in normal form is refused or normalised.
    pub path_mode: PathMode,
    /// The policy (`namespace/name`) the proxy's own route match chose, where its configuration
    /// says so (Envoy Gateway: the generated SecurityPolicy's context extension). Set only from
    /// proxy configuration, never from a request header.
    pub routed: Option<&'a str>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteRef {
    pub policy: u32,
    pub rule: u32,
}

#[derive(Debug)]
pub struct Allowed {
    pub route: RouteRef,
    /// Identity headers for the upstream.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// What the upstream's `Authorization` header must be; `None` removes it.
    pub authorization: Option<HeaderValue>,
    /// Headers the upstream must not receive: identity headers this answer does not set, and
    /// the token's own header (or `cookie`, when only token cookies were sent) when the policy
    /// does not forward the caller's token. The gateway removes whatever a client sent in them.
    pub strip: Vec<HeaderName>,
    /// Set on rules in Audit mode: what enforcing would have decided.
    pub audit: Option<Verdict>,
    /// The verified caller (for integrations that pass claims on, e.g. Envoy's dynamic metadata).
    pub caller: Option<Arc<Verified>>,
    /// Query parameters carrying a token that the upstream must not receive. Only an
    /// integration that can rewrite the query (Envoy gRPC ext_authz) can allow such a request.
    pub strip_query: Vec<String>,
    /// A sign-in session to refresh on the way (the gateway does the I/O).
    pub refresh: Option<Box<signin::RefreshDue>>,
    /// `Set-Cookie` values for the browser (a refreshed session), where the proxy passes them on.
    pub set_cookies: Vec<String>,
}

/// What an audited rule would have decided, had it been enforced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    WouldAllow,
    WouldDeny { reason: DenyReason, detail: Option<String> },
}

#[derive(Debug)]
pub struct Denied {
    pub reason: DenyReason,
    pub route: Option<RouteRef>,
    /// What failed, for logs and `portcullis check` (names requirements, never token values).
    pub detail: Option<String>,
    /// Scopes that would have satisfied the failed requirement.
    pub scopes: Vec<String>,
    /// The remote key set that did not know the token's kid: worth one (rate-limited) refetch.
    pub refetch: Option<Arc<KeySet>>,
    /// Where a browser is sent instead (sign-in), with the cookies to set.
    pub redirect: Option<Box<signin::Redirect>>,
    /// A stale sign-in session: refreshed, it may decide otherwise.
    pub refresh: Option<Box<signin::RefreshDue>>,
}

impl Denied {
    /// A denial for `reason` at `route`, with what failed and nothing else.
    pub fn new(reason: DenyReason, route: Option<RouteRef>, detail: Option<String>) -> Self {
        Self { reason, route, detail, scopes: Vec::new(), refetch: None, redirect: None, refresh: None }
    }
}

#[derive(Debug)]
pub enum Decision {
    Allow(Allowed),
    Deny(Denied),
}

impl Decision {
    fn deny(reason: DenyReason) -> Self {
        Self::Deny(Denied::new(reason, None, None))
    }

    pub fn route(&self) -> Option<RouteRef> {
        match self {
            Self::Allow(a) => Some(a.route),
            Self::Deny(d) => d.route,
        }
    }

    pub fn is_allow(&self) -> bool {
        matches!(self, Self::Allow(_))
    }
}

struct RtIssuer {
    issuer: String,
    audiences: Vec<String>,
    algorithms: Vec<JwtAlgorithm>,
    skew: i64,
    keys: Arc<KeySet>,
    /// The cluster's ServiceAccount issuer: the longest lifetime a token may be issued with.
    cluster: Option<i64>,
}

struct RtPolicy {
    key: String,
    issuers: Vec<Arc<RtIssuer>>,
    token_sources: Arc<[TokenSource]>,
    /// Header sources other than `Authorization`, and cookie names, the token may come from.
    token_headers: Vec<HeaderName>,
    token_cookies: Vec<String>,
    token_queries: Vec<String>,
    rules: Vec<RtRule>,
    cors_preflight: bool,
    sign_in: Option<Arc<signin::RtSignIn>>,
    /// The policy's hosts, for its sign-in callback (empty: every host).
    sign_in_hosts: Vec<crate::policy::host::HostPattern>,
}

struct RtRule {
    name: String,
    public: bool,
    /// Without a token: allowed as anonymous.
    optional: bool,
    /// The rule's path templates, when a requirement compares a claim with a path parameter.
    templates: Vec<crate::policy::path::Template>,
    require: Vec<ClaimRequirement>,
    any_of: Vec<Vec<ClaimRequirement>>,
    service_accounts: Vec<WorkloadPattern>,
    headers: Arc<[(HeaderName, ClaimPath)]>,
    token: TokenForwarding,
    issue: Option<(Arc<IssueConfig>, Option<Arc<Minter>>)>,
    audit: bool,
}

/// Supplies key sets that live longer than one engine (remote JWKS, fetched by the gateway).
pub trait RemoteKeys {
    fn key_set(&self, uri: &str, refresh_secs: u64) -> Arc<KeySet>;

    /// The OpenID provider of `issuer`, discovered by whoever can fetch (never, here).
    fn provider(&self, issuer: &str) -> Arc<signin::Provider> {
        signin::Provider::new(issuer)
    }

    /// A sign-in client secret delivered with the gateway's keys, by entry name.
    fn client_secret(&self, _entry: &str) -> Option<String> {
        None
    }
}

/// Remote keys, and the client secrets that came with a config's keys.
pub struct WithClientSecrets<'a> {
    pub remote: &'a dyn RemoteKeys,
    pub secrets: &'a BTreeMap<String, String>,
}

impl RemoteKeys for WithClientSecrets<'_> {
    fn key_set(&self, uri: &str, refresh_secs: u64) -> Arc<KeySet> {
        self.remote.key_set(uri, refresh_secs)
    }

    fn provider(&self, issuer: &str) -> Arc<signin::Provider> {
        self.remote.provider(issuer)
    }

    fn client_secret(&self, entry: &str) -> Option<String> {
        self.secrets.get(entry).cloned()
    }
}

/// No remote fetching: every remote key set stays unloaded (its tokens get 503).
pub struct NoRemoteKeys;

impl RemoteKeys for NoRemoteKeys {
    fn key_set(&self, uri: &str, _refresh_secs: u64) -> Arc<KeySet> {
        KeySet::new_remote(uri)
    }
}

pub struct BuildOptions<'a> {
    /// `iss` of minted tokens.
    pub issuer_url: &'a str,
    /// Private keys for minting, by SigningKey.
    pub minting: &'a BTreeMap<KeyRef, KeyRing>,
    pub remote: &'a dyn RemoteKeys,
    /// Byte budget of the verified-token cache (0: no cache).
    pub cache_bytes: usize,
}

/// A GatewayConfig ready to decide. Immutable; replaced as a whole when the config changes.
pub struct Engine {
    pub config: Arc<GatewayConfig>,
    routes: RouteTable,
    policies: Vec<RtPolicy>,
    identity_headers: Vec<HeaderName>,
    /// Request headers that may carry a token for some policy, and `cookie`: header-mode proxies
    /// overwrite them from every answer, so every answer says what they must be.
    token_carriers: Vec<HeaderName>,
    cache: TokenCache,
    issuer_url: String,
    remote_sets: Vec<Arc<KeySet>>,
    exchange: exchange::ExchangeRt,
    /// Problems that do not stop the engine (a minting key not delivered yet, skipped JWKs).
    pub warnings: Vec<String>,
}

impl Engine {
    pub fn version(&self) -> &str {
        &self.config.version
    }

    /// The gateway's name, used as the `WWW-Authenticate` realm.
    pub fn realm(&self) -> &str {
        &self.config.gateway
    }

    pub fn policy_key(&self, route: RouteRef) -> &str {
        &self.policies[route.policy as usize].key
    }

    pub fn rule_name(&self, route: RouteRef) -> &str {
        &self.policies[route.policy as usize].rules[route.rule as usize].name
    }

    pub fn policy_count(&self) -> usize {
        self.policies.len()
    }

    pub fn route_count(&self) -> usize {
        self.routes.len()
    }

    pub fn cached_tokens(&self) -> usize {
        self.cache.len()
    }

    pub fn cached_bytes(&self) -> usize {
        self.cache.bytes()
    }

    /// Remote key sets this engine relies on.
    pub fn remote_key_sets(&self) -> &[Arc<KeySet>] {
        &self.remote_sets
    }

    /// Every header some rule sets from claims (for proxies that must strip them).
    pub fn identity_headers(&self) -> &[HeaderName] {
        &self.identity_headers
    }

    /// `cookie` and the headers besides `Authorization` that carry a token for some policy.
    pub fn token_carriers(&self) -> &[HeaderName] {
        &self.token_carriers
    }

    pub fn decide(&self, req: &Request<'_>, now: i64) -> Decision {
        let Some(method_bit) = accepted_method_bit(req.method) else { return Decision::deny(DenyReason::BadMethod) };
        let Some(host) = normalize_host(req.host) else { return Decision::deny(DenyReason::BadHost) };
        let (raw_path, query) = split_target(req.target);
        let path = match normalize_as(raw_path, req.path_mode) {
            Ok(p) => p,
            Err(e) => return Decision::deny(DenyReason::UnsafePath(e)),
        };
        if let Some((policy, mut allowed)) = self.cors_preflight(req, &host, &path, query) {
            allowed.strip_query = query_tokens(policy, query);
            return Decision::Allow(allowed);
        }
        let conditions = Conditions::of(req.headers, query);
        let entry = self.routes.lookup(&host, &path, method_bit, &|when| conditions.hold(when));
        if conditions.ambiguous.get() {
            return Decision::deny(DenyReason::AmbiguousRoute);
        }
        let Some(entry) = entry else {
            return Decision::deny(DenyReason::NoRoute);
        };
        let route = RouteRef { policy: entry.policy, rule: entry.rule };
        let policy = &self.policies[entry.policy as usize];
        // The proxy chose another policy's route (a match Portcullis does not see the same way):
        // neither is applied as if the other were not there.
        if let Some(routed) = req.routed
            && *self.policies[entry.policy as usize].key != *routed
        {
            return Decision::deny(DenyReason::RouteMismatch);
        }
        let rule = &policy.rules[entry.rule as usize];
        let mut refresh = None;
        let (decision, caller) = self.decide_rule(route, policy, rule, req, &path, query, now, &mut refresh);
        let mut decision = if rule.audit { self.audited(decision, caller, route, policy, rule, req.headers, now) } else { decision };
        match &mut decision {
            Decision::Allow(a) => a.refresh = refresh.map(Box::new),
            Decision::Deny(d) => d.refresh = refresh.map(Box::new),
        }
        // A token read from the query goes on only where the rule forwards the caller's own.
        if let Decision::Allow(a) = &mut decision
            && !(rule.token == TokenForwarding::Original && a.caller.is_some())
        {
            a.strip_query = query_tokens(policy, query);
        }
        decision
    }

    /// Audit: allowed whatever the rule says, with the caller's identity when the token
    /// verified; what enforcing would have done travels with the answer.
    #[allow(clippy::too_many_arguments)]
    fn audited(
        &self,
        decision: Decision,
        caller: Option<(Arc<Verified>, bool)>,
        route: RouteRef,
        policy: &RtPolicy,
        rule: &RtRule,
        request: &HeaderMap,
        now: i64,
    ) -> Decision {
        match decision {
            Decision::Allow(mut a) => {
                a.audit = Some(Verdict::WouldAllow);
                Decision::Allow(a)
            }
            Decision::Deny(d) => {
                let mut a = caller
                    .and_then(|(verified, from_authorization)| {
                        self.identity(route, policy, rule, &verified, request, from_authorization, now).ok()
                    })
                    .unwrap_or_else(|| self.anonymous(route, policy, request));
                a.audit = Some(Verdict::WouldDeny { reason: d.reason, detail: d.detail });
                Decision::Allow(a)
            }
        }
    }

    /// The decision of one rule, and the verified caller when there is one (for Audit).
    #[allow(clippy::too_many_arguments)]
    fn decide_rule(
        &self,
        route: RouteRef,
        policy: &RtPolicy,
        rule: &RtRule,
        req: &Request<'_>,
        path: &str,
        query: Option<&str>,
        now: i64,
        refresh: &mut Option<signin::RefreshDue>,
    ) -> (Decision, Option<(Arc<Verified>, bool)>) {
        let deny = |reason: DenyReason, detail: Option<String>| Denied::new(reason, Some(route), detail);

        if rule.public {
            return (Decision::Allow(self.anonymous(route, policy, req.headers)), None);
        }

        let extracted = token::extract(&policy.token_sources, req.headers, query);
        // Sign-in: without a token, the browser's session is the caller; a navigation without
        // either is sent to sign in. A session due for refresh goes out with the answer; a stale
        // one counts as none until refreshed.
        let session = match (&extracted, &policy.sign_in) {
            (Extracted::None, Some(si)) => match self.session(si, req, now) {
                Ok((verified, None)) => Some(verified),
                Ok((verified, Some((session, staleness)))) => {
                    let navigation = signin::is_navigation(req.method, req.headers);
                    *refresh = Some(signin::RefreshDue { policy: route.policy, session, staleness, navigation });
                    match staleness {
                        signin::Staleness::Due => Some(verified),
                        signin::Staleness::Stale if rule.optional => None,
                        signin::Staleness::Stale if navigation => {
                            return (Decision::Deny(self.sign_in_redirect(si, route, req, now)), None);
                        }
                        signin::Staleness::Stale => None,
                    }
                }
                Err(_) if rule.optional => None,
                Err(_) if signin::is_navigation(req.method, req.headers) => {
                    return (Decision::Deny(self.sign_in_redirect(si, route, req, now)), None);
                }
                Err(_) => None,
            },
            _ => None,
        };
        let (verified, from_authorization) = if let Some(v) = session {
            (v, false)
        } else {
            let (token, from_authorization) = match extracted {
                Extracted::Found { token, from_authorization } => (token, from_authorization),
                // Optional authentication: no token is an anonymous caller; a token that is there
                // is verified below like any other, and an invalid one is a 401, never anonymous.
                Extracted::None if rule.optional => return (Decision::Allow(self.anonymous(route, policy, req.headers)), None),
                Extracted::None => return (Decision::Deny(deny(DenyReason::MissingToken, None)), None),
                Extracted::Ambiguous => return (Decision::Deny(deny(DenyReason::AmbiguousToken, None)), None),
            };
            match self.authenticate(policy, token, now) {
                Ok(v) => (v, from_authorization),
                Err((reason, refetch)) => {
                    let detail =
                        (reason == DenyReason::UntrustedIssuer).then(|| "the token's iss is not among the policy's issuers".to_owned());
                    return (Decision::Deny(Denied { refetch, ..deny(reason, detail) }), None);
                }
            }
        };

        if !rule.service_accounts.is_empty() {
            // Only the cluster's issuer speaks for workloads: another issuer's `kubernetes.io`
            // claim is just a claim.
            let from_cluster = policy.issuers.iter().find(|i| i.issuer == verified.iss).is_some_and(|i| i.cluster.is_some());
            let caller = workload::of_claims(&verified.claims).filter(|_| from_cluster);
            if !caller.is_some_and(|w| rule.service_accounts.iter().any(|p| p.matches(w))) {
                let detail = if from_cluster {
                    "serviceAccounts: the caller is not one of them"
                } else {
                    "serviceAccounts: not a ServiceAccount token of the cluster"
                };
                return (
                    Decision::Deny(deny(DenyReason::ClaimsNotSatisfied, Some(detail.to_owned()))),
                    Some((verified, from_authorization)),
                );
            }
        }
        let params = rule.templates.iter().find_map(|t| t.params(path)).unwrap_or_default();
        let facts = RequestFacts { headers: req.headers, params: &params };
        let decision = match check_rule(rule, &verified.claims, facts) {
            Err((req_text, unmet, scopes)) => {
                Decision::Deny(Denied { scopes, ..deny(DenyReason::ClaimsNotSatisfied, Some(format!("{req_text}: {}", unmet.as_str()))) })
            }
            Ok(()) => match self.identity(route, policy, rule, &verified, req.headers, from_authorization, now) {
                Ok(a) => Decision::Allow(a),
                Err(detail) => Decision::Deny(deny(DenyReason::MintUnavailable, Some(detail))),
            },
        };
        (decision, Some((verified, from_authorization)))
    }

    /// What the upstream gets for a verified caller: identity headers, the token the rule
    /// forwards (or a minted one), and what must be stripped. Fails only when minting cannot.
    #[allow(clippy::too_many_arguments)]
    fn identity(
        &self,
        route: RouteRef,
        policy: &RtPolicy,
        rule: &RtRule,
        verified: &Arc<Verified>,
        request: &HeaderMap,
        from_authorization: bool,
        now: i64,
    ) -> Result<Allowed, String> {
        let mut headers = Vec::with_capacity(rule.headers.len());
        for (name, path) in rule.headers.iter() {
            if let Some(v) = path.lookup(&verified.claims).and_then(header_value) {
                headers.push((name.clone(), v));
            }
        }
        let authorization = match (&rule.token, &rule.issue) {
            (TokenForwarding::Issue, Some((issue, Some(minter)))) => {
                Some(minter.authorization(&self.issuer_url, issue, verified, (route.policy, route.rule), now).map_err(|e| e.to_string())?)
            }
            (TokenForwarding::Issue, _) => return Err("the signing key is not available to this gateway".into()),
            (TokenForwarding::Original, _) if from_authorization => request.get(http::header::AUTHORIZATION).cloned(),
            _ => None,
        };
        let mut strip: Vec<HeaderName> = self.identity_headers.iter().filter(|h| !headers.iter().any(|(n, _)| n == *h)).cloned().collect();
        // The session cookies of sign-in go nowhere, whatever the rule forwards.
        remove_token(policy, request, &mut headers, &mut strip, rule.token != TokenForwarding::Original);
        Ok(Allowed {
            route,
            headers,
            authorization,
            strip,
            audit: None,
            caller: Some(verified.clone()),
            strip_query: Vec::new(),
            refresh: None,
            set_cookies: Vec::new(),
        })
    }

    /// Rules whose host and path match a request but whose methods do not: what `check` shows
    /// to explain a `no_route`.
    pub fn near_misses(&self, host: &str, target: &str, method: &str) -> Vec<String> {
        let (Some(host), Ok(path)) = (normalize_host(host), crate::policy::path::normalize(split_target(target).0)) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for p in &self.config.policies {
            for r in &p.rules {
                let hosts = p.rule_hosts(r);
                let host_ok = hosts.is_empty()
                    || hosts.iter().any(|h| crate::policy::host::HostPattern::parse(h).is_ok_and(|pat| pat.matches(&host)));
                if !host_ok {
                    continue;
                }
                let path_ok = r.paths.iter().any(|pm| crate::policy::validate::compile_path(pm).is_ok_and(|pat| pat.matches(&path)));
                if path_ok && !r.methods.is_empty() && !r.methods.iter().any(|m| m.as_str() == method) {
                    let methods: Vec<&str> = r.methods.iter().map(|m| m.as_str()).collect();
                    out.push(format!(
                        "path matches rule {} of AuthPolicy {}, but {method} is not in [{}]",
                        r.name,
                        p.key(),
                        methods.join(", ")
                    ));
                }
            }
        }
        out
    }

    /// An allowed request with no verified caller: nothing that could pass for a credential or
    /// an identity goes upstream.
    fn anonymous(&self, route: RouteRef, policy: &RtPolicy, request: &HeaderMap) -> Allowed {
        let mut headers = Vec::new();
        let mut strip = self.identity_headers.clone();
        remove_token(policy, request, &mut headers, &mut strip, true);
        Allowed {
            route,
            headers,
            authorization: None,
            strip,
            audit: None,
            caller: None,
            strip_query: Vec::new(),
            refresh: None,
            set_cookies: Vec::new(),
        }
    }

    /// A CORS preflight (`OPTIONS` with one `Origin` and one `Access-Control-Request-Method`)
    /// for a route of a policy that lets preflights through: allowed as anonymous.
    fn cors_preflight(&self, req: &Request<'_>, host: &str, path: &str, query: Option<&str>) -> Option<(&RtPolicy, Allowed)> {
        if req.method != "OPTIONS" {
            return None;
        }
        let one = |name: &str| {
            let mut v = req.headers.get_all(name).iter();
            match (v.next(), v.next()) {
                (Some(x), None) if !x.is_empty() => x.to_str().ok(),
                _ => None,
            }
        };
        one("origin")?;
        let requested = one("access-control-request-method")?;
        if requested == "OPTIONS" {
            return None;
        }
        // An ambiguous preflight is not answered here: it goes on to be refused as such.
        let conditions = Conditions::of(req.headers, query);
        let entry = self.routes.lookup(host, path, accepted_method_bit(requested)?, &|when| conditions.hold(when));
        let entry = entry.filter(|_| !conditions.ambiguous.get())?;
        let policy = &self.policies[entry.policy as usize];
        policy.cors_preflight.then(|| (policy, self.anonymous(RouteRef { policy: entry.policy, rule: entry.rule }, policy, req.headers)))
    }

    /// Establishes who the caller is: from the cache when the same token was verified with the
    /// same keys before, else by full verification.
    fn authenticate(&self, policy: &RtPolicy, token: &str, now: i64) -> Result<Arc<Verified>, (DenyReason, Option<Arc<KeySet>>)> {
        if let Some(v) = self.cache.get(token) {
            let issuer = policy.issuers.iter().find(|i| i.issuer == v.iss).ok_or((DenyReason::UntrustedIssuer, None))?;
            if issuer.keys.id() == v.keyset && issuer.keys.generation() == v.generation && issuer.algorithms.contains(&v.alg) {
                admit(&v, issuer, now).map_err(|r| (r, None))?;
                return Ok(v);
            }
        }
        let unverified = token::parse(token).map_err(|r| (r, None))?;
        let iss = unverified.claims.get("iss").and_then(Value::as_str).ok_or((DenyReason::UntrustedIssuer, None))?;
        let Some(issuer) = policy.issuers.iter().find(|i| i.issuer == iss) else {
            // The cluster's issuer is not discovered yet: the token may well be its.
            let undiscovered = policy.issuers.iter().any(|i| i.cluster.is_some() && i.issuer.is_empty());
            return Err((if undiscovered { DenyReason::KeysUnavailable } else { DenyReason::UntrustedIssuer }, None));
        };
        if !issuer.algorithms.contains(&unverified.alg) {
            return Err((DenyReason::UnsupportedAlgorithm, None));
        }
        let generation = issuer.keys.generation();
        if let Err(reason) = token::verify_signature(&unverified, &issuer.keys) {
            let refetch = (reason == DenyReason::UnknownKey && issuer.keys.kind == keyset::KeySetKind::Remote).then(|| issuer.keys.clone());
            return Err((reason, refetch));
        }
        let verified = Verified::from_claims(&issuer.keys, generation, unverified.alg, unverified.claims).map_err(|r| (r, None))?;
        admit(&verified, issuer, now).map_err(|r| (r, None))?;
        let verified = Arc::new(verified);
        self.cache.insert(token, verified.clone());
        Ok(verified)
    }
}

/// The policy's token query parameters present in `query`.
fn query_tokens(policy: &RtPolicy, query: Option<&str>) -> Vec<String> {
    let Some(query) = query else { return Vec::new() };
    policy
        .token_queries
        .iter()
        .filter(|name| query.split('&').any(|pair| pair.split_once('=').map_or(pair, |(n, _)| n) == name.as_str()))
        .cloned()
        .collect()
}

/// Takes every token source of the policy out of the upstream request: its headers are
/// stripped, its cookies cut out of `Cookie` (which is then set to the rest, or stripped).
/// `Authorization` is the caller's `authorization` answer and is handled there.
fn remove_token(
    policy: &RtPolicy,
    request: &HeaderMap,
    headers: &mut Vec<(HeaderName, HeaderValue)>,
    strip: &mut Vec<HeaderName>,
    token_sources: bool,
) {
    if token_sources {
        strip.extend(policy.token_headers.iter().cloned());
    }
    let sign_in = policy.sign_in.as_ref().map(|si| &si.cookies[..]).unwrap_or_default();
    let removed_names = |name: &str| (token_sources && policy.token_cookies.iter().any(|c| c == name)) || sign_in.iter().any(|c| c == name);
    if (policy.token_cookies.is_empty() || !token_sources) && sign_in.is_empty() || !request.contains_key(http::header::COOKIE) {
        return;
    }
    let mut kept: Vec<&str> = Vec::new();
    let mut removed = false;
    for value in request.get_all(http::header::COOKIE) {
        // A Cookie header that is not text cannot be rewritten safely: drop all of it.
        let Ok(text) = value.to_str() else {
            removed = true;
            kept.clear();
            break;
        };
        for pair in text.split(';').map(str::trim).filter(|p| !p.is_empty()) {
            let name = pair.split_once('=').map_or(pair, |(n, _)| n).trim();
            if removed_names(name) {
                removed = true;
            } else {
                kept.push(pair);
            }
        }
    }
    if !removed {
        return;
    }
    match HeaderValue::try_from(kept.join("; ")) {
        Ok(v) if !kept.is_empty() => headers.push((http::header::COOKIE, v)),
        _ => strip.push(http::header::COOKIE),
    }
}

/// The route bit of a request method (as `request_method_bit`), or `None` when the method is
/// refused. A method is an HTTP token; one that equals a standard method but for case
/// (`delete`) is refused, so that it can never slip past a rule that names `DELETE` into a rule
/// without methods. The method is parsed once.
fn accepted_method_bit(method: &str) -> Option<u16> {
    let token =
        !method.is_empty() && method.len() <= 32 && method.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if !token {
        return None;
    }
    match HttpMethod::from_name(method) {
        Some(m) => Some(crate::policy::validate::method_bit(m)),
        None if HttpMethod::ALL.iter().any(|m| m.as_str().eq_ignore_ascii_case(method)) => None,
        None => Some(request_method_bit(method)),
    }
}

/// What a verified token must also satisfy for this issuer of this policy, cached or not.
fn admit(v: &Verified, issuer: &RtIssuer, now: i64) -> Result<(), DenyReason> {
    v.check_time(now, issuer.skew)?;
    if !v.audience_matches(&issuer.audiences) {
        return Err(DenyReason::WrongAudience);
    }
    if let Some(max_lifetime) = issuer.cluster {
        admit_workload(v, max_lifetime)?;
    }
    Ok(())
}

/// A ServiceAccount token: it names its workload consistently, and was issued (`iat`) for no
/// longer than accepted. A token outlives the Pod it was bound to, and only its lifetime
/// bounds that.
pub(crate) fn admit_workload(v: &Verified, max_lifetime: i64) -> Result<(), DenyReason> {
    workload::of_claims(&v.claims).ok_or(DenyReason::MalformedToken)?;
    let iat = v.claims.get("iat").and_then(Value::as_i64).ok_or(DenyReason::LifetimeTooLong)?;
    if v.exp - iat > max_lifetime { Err(DenyReason::LifetimeTooLong) } else { Ok(()) }
}

/// `require` all hold, and (when there are groups) every requirement of at least one group.
fn check_rule(rule: &RtRule, claims: &Value, facts: RequestFacts<'_>) -> Result<(), (String, Unmet, Vec<String>)> {
    for r in &rule.require {
        r.check(claims, facts).map_err(|u| (r.to_string(), u, r.required_scopes().map(<[String]>::to_vec).unwrap_or_default()))?;
    }
    if rule.any_of.is_empty() {
        return Ok(());
    }
    let mut first_failure = None;
    for group in &rule.any_of {
        match group.iter().try_for_each(|r| r.check(claims, facts).map_err(|u| (r, u))) {
            Ok(()) => return Ok(()),
            Err((r, u)) => {
                first_failure.get_or_insert((r, u));
            }
        }
    }
    let (r, u) = first_failure.expect("at least one group failed");
    Err((format!("no anyOf group holds (first: {r})"), u, Vec::new()))
}

/// A claim as a header value: strings as they are, arrays joined with commas, other values as
/// JSON. Values that cannot be a header (control characters) are left out.
fn header_value(v: &Value) -> Option<HeaderValue> {
    let text = match v {
        Value::String(s) => s.clone(),
        Value::Array(items) => {
            items.iter().map(|i| i.as_str().map(str::to_owned).unwrap_or_else(|| i.to_string())).collect::<Vec<_>>().join(",")
        }
        other => other.to_string(),
    };
    HeaderValue::try_from(text).ok()
}
