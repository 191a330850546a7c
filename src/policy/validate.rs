//! One validation for every entry point (controller, `local`, `check`, tests): an AuthPolicy spec
//! becomes a [`PolicyConfig`] with defaults applied and references resolved, or a rejection that
//! names every problem.

use std::collections::{BTreeMap, BTreeSet};

use http::HeaderName;
use jiff::Timestamp;

use super::claims::{ClaimPath, ClaimRequirement};
use super::config::{ForwardConfig, IssueConfig, IssuerConfig, KeyRef, KeySource, PolicyConfig, PublishedKeys, RuleConfig, SignInConfig};
use super::host::HostPattern;
use super::path::PathPattern;
use crate::api::JwtAlgorithm;
use crate::api::{
    AuthPolicySpec, DNS_LABEL_PATTERN, Forward, HeaderClaim, HeaderSource, HttpMethod, IssuerSpec, PathMatch, Requirement, TokenForwarding,
    TokenSource,
};

pub const DEFAULT_CLOCK_SKEW_SECS: u64 = 60;
pub const MAX_CLOCK_SKEW_SECS: u64 = 300;
pub const DEFAULT_REFRESH_SECS: u64 = 300;
pub const MIN_REFRESH_SECS: u64 = 10;
pub const DEFAULT_ISSUE_TTL_SECS: u64 = 300;
pub const MAX_ISSUE_TTL_SECS: u64 = 3600;
pub const DEFAULT_SA_TOKEN_LIFETIME_SECS: u64 = 3600;
pub const DEFAULT_SESSION_SECS: u64 = 8 * 3600;
pub const DEFAULT_CALLBACK_PATH: &str = "/.portcullis/callback";
pub const DEFAULT_LOGOUT_PATH: &str = "/.portcullis/logout";
pub const MIN_SA_TOKEN_LIFETIME_SECS: u64 = 600;
pub const MAX_SA_TOKEN_LIFETIME_SECS: u64 = 24 * 3600;

/// Claims the minter sets itself; a policy cannot copy them from the caller.
pub const MINTED_CLAIMS: [&str; 7] = ["iss", "aud", "sub", "exp", "nbf", "iat", "jti"];

/// Headers that carry routing, framing or credentials: a claim may never be written into them.
const FORBIDDEN_HEADERS: [&str; 16] = [
    "host",
    "content-length",
    "content-type",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
    "te",
    "trailer",
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    "www-authenticate",
    "forwarded",
    "x-real-ip",
];
const FORBIDDEN_HEADER_PREFIXES: [&str; 4] = ["x-forwarded-", "x-envoy-", "x-original-", "proxy-"];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyMeta {
    pub namespace: String,
    pub name: String,
    pub generation: Option<i64>,
    pub created: Option<Timestamp>,
    /// Whether the sign-in's client Secret was found, where whoever compiles can tell (`None`:
    /// not looked up, as in tests).
    pub client_secret_found: Option<bool>,
}

/// The label a Secret needs for the controller to read it as a client secret.
pub const CLIENT_SECRET_LABEL: &str = "portcullis.dev/client-secret";
/// The key of a client Secret's data read when `clientSecretRef.key` is not given.
pub const DEFAULT_SECRET_KEY: &str = "client-secret";

/// The Secret key a policy's sign-in reads its client secret from, if it has one.
pub fn client_secret_ref(meta: &PolicyMeta, spec: &AuthPolicySpec) -> Option<crate::policy::config::SecretRef> {
    Some(secret_ref(meta, spec.sign_in.as_ref()?.client_secret_ref.as_ref()?))
}

fn secret_ref(meta: &PolicyMeta, r: &crate::api::SecretKeyRef) -> crate::policy::config::SecretRef {
    let key = r.key.clone().unwrap_or_else(|| DEFAULT_SECRET_KEY.to_owned());
    crate::policy::config::SecretRef { namespace: meta.namespace.clone(), name: r.name.clone(), key }
}

impl PolicyMeta {
    pub fn new(namespace: &str, name: &str) -> Self {
        Self { namespace: namespace.to_owned(), name: name.to_owned(), generation: None, created: None, client_secret_found: None }
    }

    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// Why a policy is not (or not entirely) enforced; the strings are the `Accepted` condition's
/// reasons.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectReason {
    Invalid,
    Conflicted,
    KeyNotFound,
    HostNotAllowed,
    SigningKeyNotAllowed,
    /// A `targetRefs` entry names nothing the gateways route (or Gateway API is not there).
    TargetNotFound,
    /// The target's Gateway is of a class Portcullis cannot wire.
    Unsupported,
}

impl RejectReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Invalid => "Invalid",
            Self::Conflicted => "Conflicted",
            Self::KeyNotFound => "KeyNotFound",
            Self::HostNotAllowed => "HostNotAllowed",
            Self::SigningKeyNotAllowed => "SigningKeyNotAllowed",
            Self::TargetNotFound => "TargetNotFound",
            Self::Unsupported => "Unsupported",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub reason: RejectReason,
    pub problems: Vec<String>,
}

impl Rejection {
    pub fn message(&self) -> String {
        self.problems.join("; ")
    }
}

#[derive(Default)]
struct Problems {
    invalid: Vec<String>,
    missing_keys: Vec<String>,
}

impl Problems {
    fn add(&mut self, at: &str, what: impl std::fmt::Display) {
        self.invalid.push(if at.is_empty() { what.to_string() } else { format!("{at}: {what}") });
    }
}

pub fn default_token_sources() -> Vec<TokenSource> {
    vec![TokenSource {
        header: Some(HeaderSource { name: "Authorization".into(), prefix: Some("Bearer ".into()) }),
        cookie: None,
        query: None,
    }]
}

/// Validates a spec for the gateway it names, against the SigningKeys known in the cluster (or
/// directory).
pub fn validate(meta: &PolicyMeta, spec: &AuthPolicySpec, keys: &BTreeMap<KeyRef, PublishedKeys>) -> Result<PolicyConfig, Rejection> {
    let mut p = Problems::default();

    if !is_dns_label(&spec.gateway) {
        p.add("gateway", format!("{:?} must match {DNS_LABEL_PATTERN}", spec.gateway));
    }

    if !spec.target_refs.is_empty() && !spec.hosts.is_empty() {
        p.add("targetRefs", "targetRefs and hosts are exclusive: a policy attached to Gateway API objects takes its hosts from them");
    }
    let mut targets = BTreeSet::new();
    for (i, t) in spec.target_refs.iter().enumerate() {
        if t.group != crate::api::GATEWAY_API_GROUP {
            p.add(&format!("targetRefs[{i}]"), format!("group must be {}", crate::api::GATEWAY_API_GROUP));
        }
        if !targets.insert((t.kind, &t.name, &t.section_name)) {
            p.add(&format!("targetRefs[{i}]"), "the target is listed twice");
        }
    }
    let mut hosts = BTreeSet::new();
    for h in &spec.hosts {
        match HostPattern::parse(h) {
            Ok(_) if !hosts.insert(h.clone()) => p.add("hosts", format!("{h:?} is listed twice")),
            Ok(_) => {}
            Err(e) => p.add("hosts", e),
        }
    }

    let mut issuers = Vec::new();
    let mut issuer_names = BTreeSet::new();
    for (i, iss) in spec.issuers.iter().enumerate() {
        let at = format!("issuers[{i}]");
        let name = iss.issuer.as_deref().unwrap_or(if iss.kubernetes.is_some() { "kubernetes" } else { "" });
        if !issuer_names.insert(name) {
            p.add(&at, format!("issuer {name:?} is listed twice"));
        }
        if let Some(ic) = validate_issuer(&at, meta, iss, keys, &mut p) {
            issuers.push(ic);
        }
    }

    let token_sources = if spec.token_sources.is_empty() { default_token_sources() } else { spec.token_sources.clone() };
    for (i, ts) in token_sources.iter().enumerate() {
        let at = format!("tokenSources[{i}]");
        let set = [ts.header.is_some(), ts.cookie.is_some(), ts.query.is_some()].iter().filter(|b| **b).count();
        if set != 1 {
            p.add(&at, "exactly one of header, cookie or query must be set");
        }
        let name = ts.header.as_ref().map(|h| &h.name).or(ts.cookie.as_ref().map(|c| &c.name)).or(ts.query.as_ref().map(|q| &q.name));
        if let Some(name) = name
            && (name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+.^_`|~-".contains(&b)))
        {
            p.add(&at, format!("{name:?} is not a valid name"));
        }
    }

    let policy_forward = spec.forward.as_ref().map(|f| validate_forward("forward", meta, f, keys, &mut p));

    if spec.rules.is_empty() {
        p.add("rules", "at least one rule is required");
    }
    let mut rules = Vec::new();
    let mut rule_names = BTreeSet::new();
    // (pattern, methods) of earlier rules, to find rules that can never match.
    let mut seen_routes: Vec<(PathPattern, u16, String)> = Vec::new();
    for rule in &spec.rules {
        let at = format!("rules[{}]", rule.name);
        if !is_dns_label(&rule.name) {
            p.add(&at, format!("name must match {DNS_LABEL_PATTERN}"));
        }
        if !rule_names.insert(rule.name.as_str()) {
            p.add(&at, "rule name is used twice");
        }
        let (paths, rule_methods): (&[PathMatch], &[HttpMethod]) = match &rule.match_ {
            Some(m) => (&m.paths, &m.methods),
            // The whole target: paths come from it when the policy is bound to its routes.
            None if !spec.target_refs.is_empty() => (&[], &[]),
            None => {
                p.add(&at, "match is required (a rule without match covers a whole target, which needs targetRefs)");
                (&[], &[])
            }
        };
        if rule.match_.as_ref().is_some_and(|m| m.paths.is_empty()) {
            p.add(&at, "match.paths needs at least one path");
        }
        let mask = method_mask(rule_methods);
        for (j, pm) in paths.iter().enumerate() {
            match compile_path(pm) {
                Ok(pattern) => {
                    if let Some((_, _, other)) = seen_routes.iter().find(|(pat, m, _)| *pat == pattern && m & mask != 0) {
                        p.add(&at, format!("path {pattern} overlaps rule {other} for the same methods, so one of them could never match"));
                    }
                    seen_routes.push((pattern, mask, rule.name.clone()));
                }
                Err(e) => p.add(&format!("{at}.match.paths[{j}]"), e),
            }
        }
        let methods: BTreeSet<HttpMethod> = rule_methods.iter().copied().collect();

        if rule.public && (!rule.require.is_empty() || !rule.any_of.is_empty() || !rule.service_accounts.is_empty()) {
            p.add(&at, "a public rule cannot have require, anyOf or serviceAccounts");
        }
        if !rule.service_accounts.is_empty() && !spec.issuers.iter().any(|i| i.kubernetes.is_some()) {
            p.add(&format!("{at}.serviceAccounts"), "needs an issuer of kind kubernetes in issuers");
        }
        for sa in &rule.service_accounts {
            if let Err(e) = parse_service_account(sa) {
                p.add(&format!("{at}.serviceAccounts"), e);
            }
        }
        if !rule.public && spec.issuers.is_empty() && spec.sign_in.is_none() {
            p.add(&at, "the rule needs a token but the policy trusts no issuer");
        }
        for (k, r) in rule.require.iter().enumerate() {
            if let Err(e) = ClaimRequirement::compile(r) {
                p.add(&format!("{at}.require[{k}]"), e);
            }
        }
        for (g, group) in rule.any_of.iter().enumerate() {
            if group.require.is_empty() {
                p.add(&format!("{at}.anyOf[{g}]"), "a group needs at least one requirement");
            }
            for (k, r) in group.require.iter().enumerate() {
                if let Err(e) = ClaimRequirement::compile(r) {
                    p.add(&format!("{at}.anyOf[{g}].require[{k}]"), e);
                }
            }
        }
        // A claim bound to a path parameter needs that parameter in every path of the rule:
        // otherwise some matching requests would have nothing to compare it with.
        let bound =
            rule.require.iter().chain(rule.any_of.iter().flat_map(|g| g.require.iter())).filter_map(|r| r.equals_path_param.as_deref());
        for name in bound {
            if rule.match_.is_none() {
                p.add(&at, format!("equalsPathParam {name} needs match.paths with templates that have {{{name}}}"));
            }
            for (j, pm) in paths.iter().enumerate() {
                let has = matches!(compile_path(pm), Ok(PathPattern::Template(t)) if t.segments.iter().any(|s| matches!(s, crate::policy::path::TemplateSegment::Param(n) if n == name)));
                if !has {
                    p.add(
                        &format!("{at}.match.paths[{j}]"),
                        format!("equalsPathParam {name} needs every path of the rule to be a template with {{{name}}}"),
                    );
                }
            }
        }
        let forward = match &rule.forward {
            Some(f) => validate_forward(&format!("{at}.forward"), meta, f, keys, &mut p),
            None => policy_forward.clone().unwrap_or_default(),
        };
        if rule.public && forward.token == TokenForwarding::Issue {
            p.add(&at, "a public rule has no caller token to issue an internal token from");
        }
        let optional = rule.authentication == Some(crate::api::Authentication::Optional);
        if rule.public && optional {
            p.add(&at, "a public rule takes no token; authentication: Optional is for rules that check one when it is there");
        }
        rules.push(RuleConfig {
            name: rule.name.clone(),
            hosts: Vec::new(),
            paths: paths.to_vec(),
            methods: methods.into_iter().collect(),
            when: Vec::new(),
            public: rule.public,
            optional,
            require: rule.require.clone(),
            any_of: rule.any_of.iter().map(|g| g.require.clone()).collect(),
            service_accounts: rule.service_accounts.clone(),
            forward,
            audit: rule.mode.or(spec.mode) == Some(crate::api::Mode::Audit),
        });
    }
    let sign_in = spec.sign_in.as_ref().and_then(|s| validate_sign_in("signIn", meta, s, keys, &mut p));

    if !p.invalid.is_empty() {
        let mut problems = p.invalid;
        problems.extend(p.missing_keys);
        return Err(Rejection { reason: RejectReason::Invalid, problems });
    }
    if !p.missing_keys.is_empty() {
        return Err(Rejection { reason: RejectReason::KeyNotFound, problems: p.missing_keys });
    }
    Ok(PolicyConfig {
        namespace: meta.namespace.clone(),
        name: meta.name.clone(),
        generation: meta.generation,
        created: meta.created,
        hosts: hosts.into_iter().collect(),
        issuers,
        token_sources,
        rules,
        cors_preflight: spec.cors_preflight,
        sign_in,
    })
}

fn validate_issuer(
    at: &str,
    meta: &PolicyMeta,
    iss: &IssuerSpec,
    keys: &BTreeMap<KeyRef, PublishedKeys>,
    p: &mut Problems,
) -> Option<IssuerConfig> {
    if iss.audiences.is_empty() || iss.audiences.iter().any(String::is_empty) {
        p.add(at, "audiences needs at least one non-empty audience");
    }
    let clock_skew_secs = iss.clock_skew.map_or(DEFAULT_CLOCK_SKEW_SECS, |d| d.as_secs());
    if clock_skew_secs > MAX_CLOCK_SKEW_SECS {
        p.add(at, format!("clockSkew {clock_skew_secs}s is more than {MAX_CLOCK_SKEW_SECS}s"));
    }
    let algorithms = |default: &[JwtAlgorithm]| {
        let given = if iss.algorithms.is_empty() { default } else { &iss.algorithms };
        given.iter().copied().collect::<BTreeSet<_>>().into_iter().collect()
    };
    if let Some(k) = &iss.kubernetes {
        if iss.issuer.is_some() || iss.jwks.is_some() {
            p.add(at, "kubernetes takes its issuer and keys from the cluster: give no issuer or jwks");
        }
        let max_lifetime_secs = k.max_token_lifetime.map_or(DEFAULT_SA_TOKEN_LIFETIME_SECS, |d| d.as_secs());
        if !(MIN_SA_TOKEN_LIFETIME_SECS..=MAX_SA_TOKEN_LIFETIME_SECS).contains(&max_lifetime_secs) {
            p.add(&format!("{at}.kubernetes.maxTokenLifetime"), "must be between 10m and 24h");
        }
        return Some(IssuerConfig {
            issuer: String::new(),
            audiences: iss.audiences.clone(),
            algorithms: algorithms(&[JwtAlgorithm::RS256, JwtAlgorithm::ES256]),
            clock_skew_secs,
            keys: KeySource::Cluster { max_lifetime_secs },
        });
    }
    let issuer = iss.issuer.clone().unwrap_or_default();
    if issuer.is_empty() {
        p.add(at, "issuer must not be empty");
    }
    if iss.algorithms.is_empty() {
        p.add(at, "algorithms needs at least one algorithm");
    }
    let Some(j) = &iss.jwks else {
        p.add(at, "jwks is required (or kubernetes, for the cluster's ServiceAccount tokens)");
        return None;
    };
    let sources = [j.uri.is_some(), j.inline.is_some(), j.signing_key_ref.is_some()].iter().filter(|b| **b).count();
    if sources != 1 {
        p.add(&format!("{at}.jwks"), "exactly one of uri, inline or signingKeyRef must be set");
        return None;
    }
    let keys_source = if let Some(uri) = &j.uri {
        let refresh_secs = j.refresh_interval.map_or(DEFAULT_REFRESH_SECS, |d| d.as_secs());
        if refresh_secs < MIN_REFRESH_SECS {
            p.add(&format!("{at}.jwks.refreshInterval"), format!("must be at least {MIN_REFRESH_SECS}s"));
        }
        match uri.parse::<http::Uri>() {
            Ok(u) if matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some() => {}
            _ => p.add(&format!("{at}.jwks.uri"), format!("{uri:?} is not an http(s) URL")),
        }
        KeySource::Remote { uri: uri.clone(), refresh_secs }
    } else if let Some(inline) = &j.inline {
        let mut usable = 0;
        for (k, jwk) in inline.keys.iter().enumerate() {
            match crate::jwk::parse_jwk(&jwk.0) {
                Ok(Some(_)) => usable += 1,
                Ok(None) => {}
                Err(e) => p.add(&format!("{at}.jwks.inline.keys[{k}]"), e),
            }
        }
        if usable == 0 {
            p.add(&format!("{at}.jwks.inline"), "no key usable for verifying signatures");
        }
        KeySource::Inline { keys: inline.keys.clone() }
    } else {
        let r = j.signing_key_ref.as_ref().expect("one source is set");
        let key = KeyRef { namespace: r.namespace.clone().unwrap_or_else(|| meta.namespace.clone()), name: r.name.clone() };
        if !keys.contains_key(&key) {
            p.missing_keys.push(format!("{at}.jwks.signingKeyRef: SigningKey {key} not found"));
        }
        KeySource::SigningKey(key)
    };
    Some(IssuerConfig { issuer, audiences: iss.audiences.clone(), algorithms: algorithms(&[]), clock_skew_secs, keys: keys_source })
}

fn validate_sign_in(
    at: &str,
    meta: &PolicyMeta,
    s: &crate::api::SignIn,
    keys: &BTreeMap<KeyRef, PublishedKeys>,
    p: &mut Problems,
) -> Option<SignInConfig> {
    match s.issuer.parse::<http::Uri>() {
        Ok(u) if matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some() && u.query().is_none() => {}
        _ => p.add(&format!("{at}.issuer"), format!("{:?} is not an http(s) issuer URL", s.issuer)),
    }
    if s.client_id.is_empty() {
        p.add(&format!("{at}.clientId"), "must not be empty");
    }
    let mut scopes = vec!["openid".to_owned()];
    for sc in &s.scopes {
        if sc.is_empty() || sc.bytes().any(|b| b <= b' ' || b == b'"' || b == b'\\' || b >= 0x7f) {
            p.add(&format!("{at}.scopes"), format!("{sc:?} is not a scope"));
        } else if !scopes.contains(sc) {
            scopes.push(sc.clone());
        }
    }
    let session_lifetime_secs = s.session_lifetime.map_or(DEFAULT_SESSION_SECS, |d| d.as_secs());
    if !(300..=7 * 24 * 3600).contains(&session_lifetime_secs) {
        p.add(&format!("{at}.sessionLifetime"), "must be between 5m and 7d");
    }
    let callback_path = s.callback_path.clone().unwrap_or_else(|| DEFAULT_CALLBACK_PATH.to_owned());
    if crate::policy::path::normalize(&callback_path).ok().as_deref() != Some(callback_path.as_str()) || callback_path == "/" {
        p.add(&format!("{at}.callbackPath"), format!("{callback_path:?} is not a normalised path of its own"));
    }
    let logout_path = s.logout_path.clone().unwrap_or_else(|| DEFAULT_LOGOUT_PATH.to_owned());
    if crate::policy::path::normalize(&logout_path).ok().as_deref() != Some(logout_path.as_str())
        || logout_path == "/"
        || logout_path == callback_path
    {
        p.add(&format!("{at}.logoutPath"), format!("{logout_path:?} is not a normalised path of its own"));
    }
    let post_logout_redirect = s.post_logout_redirect.clone().unwrap_or_else(|| "/".to_owned());
    let allowed: Vec<HostPattern> = s.allowed_redirect_hosts.iter().filter_map(|h| HostPattern::parse(h).ok()).collect();
    if crate::policy::redirect::return_target(&post_logout_redirect, "", &allowed).is_none() {
        p.add(&format!("{at}.postLogoutRedirect"), "must be a path, or an https URL of an allowed redirect host");
    }
    for h in &s.allowed_redirect_hosts {
        if let Err(e) = HostPattern::parse(h) {
            p.add(&format!("{at}.allowedRedirectHosts"), e);
        }
    }
    let session_key = KeyRef { namespace: meta.namespace.clone(), name: s.session_key_ref.name.clone() };
    if !keys.contains_key(&session_key) {
        p.missing_keys.push(format!("{at}.sessionKeyRef: SigningKey {session_key} not found"));
    }
    let client_secret = s.client_secret_ref.as_ref().map(|r| secret_ref(meta, r));
    if let Some(r) = &client_secret
        && meta.client_secret_found == Some(false)
    {
        p.missing_keys.push(format!(
            "{at}.clientSecretRef: Secret {r} not found (the Secret needs the label {CLIENT_SECRET_LABEL} and a non-empty key)"
        ));
    }
    Some(SignInConfig {
        issuer: s.issuer.clone(),
        client_id: s.client_id.clone(),
        client_secret,
        scopes,
        session_key,
        session_lifetime_secs,
        callback_path,
        logout_path,
        post_logout_redirect,
        https: s.scheme.unwrap_or_default() == crate::api::SignInScheme::Https,
        allowed_redirect_hosts: s.allowed_redirect_hosts.clone(),
        userinfo: s.userinfo,
    })
}

fn validate_forward(at: &str, meta: &PolicyMeta, f: &Forward, keys: &BTreeMap<KeyRef, PublishedKeys>, p: &mut Problems) -> ForwardConfig {
    let mut claims_to_headers = BTreeMap::new();
    for (header, claim) in &f.claims_to_headers {
        let lower = header.to_ascii_lowercase();
        match HeaderName::from_bytes(lower.as_bytes()) {
            Err(_) => p.add(&format!("{at}.claimsToHeaders"), format!("{header:?} is not a header name")),
            Ok(_) if FORBIDDEN_HEADERS.contains(&lower.as_str()) || FORBIDDEN_HEADER_PREFIXES.iter().any(|x| lower.starts_with(x)) => {
                p.add(&format!("{at}.claimsToHeaders"), format!("{header} carries routing or credentials and cannot be set from a claim"))
            }
            Ok(_) => {}
        }
        let path = match claim {
            HeaderClaim::Dotted(d) => ClaimPath::dotted(d),
            HeaderClaim::Path(levels) => ClaimPath::segments(levels),
        };
        match path {
            Ok(path) => {
                if claims_to_headers.insert(lower.clone(), path.0).is_some() {
                    p.add(&format!("{at}.claimsToHeaders"), format!("{header} is listed twice (header names ignore case)"));
                }
            }
            Err(e) => p.add(&format!("{at}.claimsToHeaders[{header}]"), e),
        }
    }
    if claims_to_headers.len() > 32 {
        p.add(&format!("{at}.claimsToHeaders"), "at most 32 headers");
    }
    let token = f.token.unwrap_or_default();
    let issue = match (&f.issue, token) {
        (None, TokenForwarding::Issue) => {
            p.add(at, "token: issue needs issue.signingKeyRef");
            None
        }
        (Some(is), _) => {
            let key = KeyRef { namespace: meta.namespace.clone(), name: is.signing_key_ref.name.clone() };
            let ttl_secs = is.ttl.map_or(DEFAULT_ISSUE_TTL_SECS, |d| d.as_secs());
            if !(1..=MAX_ISSUE_TTL_SECS).contains(&ttl_secs) {
                p.add(&format!("{at}.issue.ttl"), format!("must be between 1s and {MAX_ISSUE_TTL_SECS}s"));
            }
            if is.audience.is_empty() {
                p.add(&format!("{at}.issue.audience"), "must not be empty");
            }
            for c in &is.claims {
                if MINTED_CLAIMS.contains(&c.as_str()) {
                    p.add(&format!("{at}.issue.claims"), format!("{c} is set by the gateway and cannot be copied"));
                }
            }
            match keys.get(&key) {
                None => p.missing_keys.push(format!("{at}.issue.signingKeyRef: SigningKey {key} not found")),
                Some(pk) if pk.retain_secs < ttl_secs => p.add(
                    &format!("{at}.issue.ttl"),
                    format!(
                        "tokens live {ttl_secs}s but SigningKey {key} keeps retired keys only {}s (retain): they could outlive their key",
                        pk.retain_secs
                    ),
                ),
                Some(_) => {}
            }
            Some(IssueConfig { signing_key: key, audience: is.audience.clone(), ttl_secs, claims: is.claims.clone() })
        }
        (None, _) => None,
    };
    ForwardConfig { claims_to_headers: claims_to_headers.into(), token, issue }
}

pub fn compile_path(pm: &PathMatch) -> Result<PathPattern, String> {
    match (&pm.exact, &pm.prefix, &pm.template) {
        (Some(e), None, None) => PathPattern::exact(e),
        (None, Some(p), None) => PathPattern::prefix(p),
        (None, None, Some(t)) => PathPattern::template(t),
        _ => Err("exactly one of exact, prefix or template must be set".into()),
    }
}

/// Methods as a bit set; empty means every method (all bits, plus those for other methods).
pub fn method_mask(methods: &[HttpMethod]) -> u16 {
    if methods.is_empty() { u16::MAX } else { methods.iter().fold(0, |m, x| m | method_bit(*x)) }
}

pub fn method_bit(m: HttpMethod) -> u16 {
    1 << (m as u16)
}

/// The bit of a request method; methods outside the enum match only rules without `methods`.
pub fn request_method_bit(method: &str) -> u16 {
    HttpMethod::from_name(method).map_or(1 << 15, method_bit)
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Compiles every requirement of a rule (validation guarantees this succeeds).
pub fn compile_requirements(reqs: &[Requirement]) -> Result<Vec<ClaimRequirement>, String> {
    reqs.iter().map(ClaimRequirement::compile).collect()
}

/// `namespace/name` or `namespace/*` of a ServiceAccount: (namespace, `None` for any name).
pub fn parse_service_account(s: &str) -> Result<(&str, Option<&str>), String> {
    let bad = || format!("{s:?} is not namespace/serviceaccount or namespace/*");
    let (ns, name) = s.split_once('/').ok_or_else(bad)?;
    if !is_dns_label(ns) || name.is_empty() || name.len() > 253 || name.contains('/') {
        return Err(bad());
    }
    if name == "*" {
        return Ok((ns, None));
    }
    let ok = name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name.as_bytes()[name.len() - 1].is_ascii_alphanumeric();
    if ok { Ok((ns, Some(name))) } else { Err(bad()) }
}
