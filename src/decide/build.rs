//! Building an engine from a compiled config: key sets, minters and interned headers, once per
//! config.

use super::*;

impl Engine {
    pub fn build(config: GatewayConfig, opts: &BuildOptions<'_>) -> Result<Self, String> {
        let routes = RouteTable::build(&config)?;
        let mut warnings = Vec::new();
        let mut static_sets: HashMap<String, Arc<KeySet>> = HashMap::new();
        let mut remote_sets: Vec<Arc<KeySet>> = Vec::new();
        let mut remote_by_uri: HashMap<&str, Arc<KeySet>> = HashMap::new();
        let mut minters: HashMap<KeyRef, Option<Arc<Minter>>> = HashMap::new();
        let mut identity: Vec<HeaderName> = Vec::new();
        // `cookie` always: header-mode proxies configured to take Cookie from the answer must get
        // it on every answer, whether or not a policy reads cookies today.
        let mut carriers: Vec<HeaderName> = vec![http::header::COOKIE];
        let mut policies = Vec::with_capacity(config.policies.len());
        // What many rules and policies declare alike is built once and shared: 10,000 policies
        // usually repeat a few identity-header lists, token sources, issuers and minting setups.
        let mut shared_headers: HashMap<&HeaderClaims, Arc<[(HeaderName, ClaimPath)]>> = HashMap::new();
        let mut shared_issues: HashMap<&IssueConfig, Arc<IssueConfig>> = HashMap::new();
        let mut shared_sources: HashMap<&[TokenSource], Arc<[TokenSource]>> = HashMap::new();
        type IssuerKey<'a> = (&'a str, &'a [String], &'a [JwtAlgorithm], u64, *const KeySet, Option<i64>);
        let mut shared_issuers: HashMap<IssuerKey, Arc<RtIssuer>> = HashMap::new();
        // The cluster's ServiceAccount issuer: unloaded (its tokens get 503) until discovered.
        let cluster = match &config.cluster_issuer {
            Some(c) => {
                let set =
                    static_key_set(&mut static_sets, &mut warnings, "cluster".into(), format!("cluster issuer {}", c.issuer), &c.keys)?;
                (c.issuer.clone(), set)
            }
            None => (String::new(), KeySet::new_remote("cluster issuer (not discovered)")),
        };
        for p in &config.policies {
            let key = p.key();
            let mut token_headers = Vec::new();
            let mut token_cookies = Vec::new();
            let token_queries: Vec<String> = p.token_sources.iter().filter_map(|s| s.query.as_ref().map(|q| q.name.clone())).collect();
            for source in &p.token_sources {
                let carrier = match (&source.header, &source.cookie) {
                    (Some(h), _) => {
                        let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| format!("{key}: bad token header {}", h.name))?;
                        if name == http::header::AUTHORIZATION {
                            continue;
                        }
                        token_headers.push(name.clone());
                        name
                    }
                    (None, Some(c)) => {
                        token_cookies.push(c.name.clone());
                        http::header::COOKIE
                    }
                    (None, None) => continue,
                };
                if !carriers.contains(&carrier) {
                    carriers.push(carrier);
                }
            }
            let mut issuers = Vec::new();
            for i in &p.issuers {
                let keys = match &i.keys {
                    // One set per URL, asked for once: 10,000 policies usually share a handful.
                    KeySource::Remote { uri, refresh_secs } => match remote_by_uri.get(uri.as_str()) {
                        Some(set) => Arc::clone(set),
                        None => {
                            let set = opts.remote.key_set(uri, *refresh_secs);
                            remote_by_uri.insert(uri.as_str(), set.clone());
                            remote_sets.push(set.clone());
                            set
                        }
                    },
                    KeySource::Inline { keys } => {
                        let id = serde_json::to_string(keys).expect("JWKs serialize");
                        static_key_set(&mut static_sets, &mut warnings, id, format!("inline keys of {key} issuer {}", i.issuer), keys)?
                    }
                    KeySource::Cluster { .. } => {
                        if config.cluster_issuer.is_none() {
                            warnings.push(format!("{key}: the cluster's ServiceAccount issuer is not known: its tokens are refused (503)"));
                        }
                        cluster.1.clone()
                    }
                    KeySource::SigningKey(r) => {
                        let published = config.published_keys(r).ok_or_else(|| format!("{key}: SigningKey {r} is not in the config"))?;
                        static_key_set(
                            &mut static_sets,
                            &mut warnings,
                            format!("signingkey:{r}"),
                            format!("SigningKey {r}"),
                            &published.keys,
                        )?
                    }
                };
                let (issuer, max_lifetime) = match &i.keys {
                    KeySource::Cluster { max_lifetime_secs } => (cluster.0.as_str(), Some(*max_lifetime_secs as i64)),
                    _ => (i.issuer.as_str(), None),
                };
                let shared =
                    shared_issuers.entry((issuer, &i.audiences, &i.algorithms, i.clock_skew_secs, Arc::as_ptr(&keys), max_lifetime));
                issuers.push(
                    shared
                        .or_insert_with(|| {
                            Arc::new(RtIssuer {
                                issuer: issuer.to_owned(),
                                audiences: i.audiences.clone(),
                                algorithms: i.algorithms.clone(),
                                skew: i.clock_skew_secs as i64,
                                keys,
                                cluster: max_lifetime,
                            })
                        })
                        .clone(),
                );
            }
            let mut rules = Vec::with_capacity(p.rules.len());
            for r in &p.rules {
                let at = |e: String| format!("{key} rule {}: {e}", r.name);
                let require = compile_requirements(&r.require).map_err(at)?;
                let any_of: Vec<Vec<ClaimRequirement>> =
                    r.any_of.iter().map(|g| compile_requirements(g)).collect::<Result<_, _>>().map_err(at)?;
                let headers = match shared_headers.get(&r.forward.claims_to_headers) {
                    Some(h) => h.clone(),
                    None => {
                        let mut headers = Vec::with_capacity(r.forward.claims_to_headers.len());
                        for (h, path) in r.forward.claims_to_headers.iter() {
                            let name = HeaderName::from_bytes(h.as_bytes()).map_err(|_| at(format!("bad header name {h}")))?;
                            if !identity.contains(&name) {
                                identity.push(name.clone());
                            }
                            headers.push((name, ClaimPath(path.clone())));
                        }
                        let headers: Arc<[(HeaderName, ClaimPath)]> = headers.into();
                        shared_headers.insert(&r.forward.claims_to_headers, headers.clone());
                        headers
                    }
                };
                let issue = match &r.forward.issue {
                    Some(ic) if r.forward.token == TokenForwarding::Issue => {
                        let minter = minter_for(&mut minters, &config, opts, &mut warnings, &key, &ic.signing_key);
                        Some((shared_issues.entry(ic).or_insert_with(|| Arc::new(ic.clone())).clone(), minter))
                    }
                    _ => None,
                };
                let binds_params = require.iter().chain(any_of.iter().flatten()).any(|q: &ClaimRequirement| q.path_param().is_some());
                let templates = if binds_params {
                    r.paths
                        .iter()
                        .filter_map(|pm| match crate::policy::validate::compile_path(pm) {
                            Ok(crate::policy::path::PathPattern::Template(t)) => Some(t),
                            _ => None,
                        })
                        .collect()
                } else {
                    Vec::new()
                };
                rules.push(RtRule {
                    name: r.name.clone(),
                    public: r.public,
                    optional: r.optional,
                    templates,
                    require,
                    any_of,
                    service_accounts: r.service_accounts.iter().map(|s| WorkloadPattern::parse(s)).collect::<Result<_, _>>().map_err(at)?,
                    headers,
                    token: r.forward.token,
                    issue,
                    audit: r.audit,
                });
            }
            let (sign_in, sign_in_hosts) = match &p.sign_in {
                None => (None, Vec::new()),
                Some(c) => {
                    let sealer = |purpose: &str, warnings: &mut Vec<String>| {
                        let ring = opts.minting.get(&c.session_key);
                        match ring.map(|ring| crate::keys::seal::Sealer::new(ring, &format!("{purpose}:{key}"))) {
                            Some(Ok(s)) => Some(s),
                            Some(Err(e)) => {
                                warnings.push(format!("{key}: sign-in cannot seal with SigningKey {}: {e}", c.session_key));
                                None
                            }
                            None => {
                                warnings
                                    .push(format!("{key}: sign-in: the keys of SigningKey {} are not on this gateway yet", c.session_key));
                                None
                            }
                        }
                    };
                    let allowed = c.allowed_redirect_hosts.iter().filter_map(|h| crate::policy::host::HostPattern::parse(h).ok()).collect();
                    let hosts = p.hosts.iter().filter_map(|h| crate::policy::host::HostPattern::parse(h).ok()).collect();
                    // Its cookies never reach the upstream.
                    let mut cookies: Vec<String> = (0..signin::MAX_CHUNKS).map(|i| signin::chunk_name(c.session_cookie(), i)).collect();
                    cookies.push(c.login_cookie().to_owned());
                    let sessions = sealer("session", &mut warnings);
                    let logins = sealer("login", &mut warnings);
                    let client_secret = c.client_secret.as_ref().and_then(|r| {
                        let found = opts.remote.client_secret(&r.entry());
                        if found.is_none() {
                            warnings.push(format!("{key}: sign-in: the client secret in Secret {r} is not on this gateway yet"));
                        }
                        found
                    });
                    let rt = signin::RtSignIn {
                        client_secret,
                        config: c.clone(),
                        policy: key.clone(),
                        provider: opts.remote.provider(&c.issuer),
                        sessions,
                        logins,
                        allowed,
                        cookies,
                    };
                    (Some(Arc::new(rt)), hosts)
                }
            };
            policies.push(RtPolicy {
                key,
                issuers,
                token_sources: shared_sources.entry(&p.token_sources).or_insert_with(|| p.token_sources.as_slice().into()).clone(),
                token_headers,
                token_cookies,
                token_queries,
                rules,
                cors_preflight: p.cors_preflight,
                sign_in,
                sign_in_hosts,
            });
        }
        let mut exchanges = Vec::with_capacity(config.exchanges.len());
        for x in &config.exchanges {
            let minter = minter_for(
                &mut minters,
                &config,
                opts,
                &mut warnings,
                &format!("TokenExchangePolicy {}/{}", x.namespace, x.name),
                &x.signing_key,
            );
            exchanges.push(exchange::RtExchange::build(x, minter)?);
        }
        let subjects = crate::keys::parse_jwks(&config.minting_jwks())?.0;
        let exchange = exchange::ExchangeRt {
            cluster: config.cluster_issuer.as_ref().map(|_| cluster.clone()),
            subjects: KeySet::new_static("the gateway's minting keys", subjects),
            exchanges,
        };
        Ok(Self {
            exchange,
            config: Arc::new(config),
            routes,
            policies,
            identity_headers: identity,
            token_carriers: carriers,
            cache: TokenCache::new(opts.cache_bytes),
            issuer_url: opts.issuer_url.to_owned(),
            remote_sets,
            warnings,
        })
    }

    /// The engine without the policies' rules, issuers and token sources in `config` (compiled
    /// into the engine already): what a serving gateway keeps. The full policies of 10,000 were
    /// half its memory, and twice that while a new config is built beside the serving one.
    /// `near_misses` finds nothing in such an engine.
    pub fn without_policy_details(mut self) -> Self {
        let mut config = Arc::unwrap_or_clone(self.config);
        config.policies = config
            .policies
            .iter()
            .map(|p| {
                Arc::new(PolicyConfig {
                    namespace: p.namespace.clone(),
                    name: p.name.clone(),
                    generation: p.generation,
                    created: p.created,
                    hosts: Vec::new(),
                    issuers: Vec::new(),
                    token_sources: Vec::new(),
                    rules: Vec::new(),
                    cors_preflight: p.cors_preflight,
                    sign_in: None,
                })
            })
            .collect();
        self.config = Arc::new(config);
        self
    }
}

/// The minter of a SigningKey, made once per config; `None` (with a warning) when this gateway
/// cannot mint with it yet.
fn minter_for(
    minters: &mut HashMap<KeyRef, Option<Arc<Minter>>>,
    config: &GatewayConfig,
    opts: &BuildOptions<'_>,
    warnings: &mut Vec<String>,
    who: &str,
    key: &KeyRef,
) -> Option<Arc<Minter>> {
    minters
        .entry(key.clone())
        .or_insert_with(|| {
            let made = config
                .published_keys(key)
                .ok_or_else(|| format!("SigningKey {key} is not in the config"))
                .and_then(|published| Minter::new(published, opts.minting.get(key)));
            match made {
                Ok(m) => Some(Arc::new(m)),
                Err(e) => {
                    warnings.push(format!("{who}: cannot mint: {e}"));
                    None
                }
            }
        })
        .clone()
}

/// One key set per distinct source, shared by every issuer that uses it (and so is its cache).
fn static_key_set(
    sets: &mut HashMap<String, Arc<KeySet>>,
    warnings: &mut Vec<String>,
    id: String,
    label: String,
    keys: &[crate::api::JwkObject],
) -> Result<Arc<KeySet>, String> {
    if let Some(s) = sets.get(&id) {
        return Ok(s.clone());
    }
    let (usable, skipped) = crate::keys::parse_jwks(&serde_json::json!({ "keys": keys }))?;
    warnings.extend(skipped.into_iter().map(|s| format!("{label}: {s}")));
    let set = KeySet::new_static(label, usable);
    sets.insert(id, set.clone());
    Ok(set)
}
