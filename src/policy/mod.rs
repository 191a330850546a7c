//! Policy compilation (pure): every AuthPolicy of one gateway → one immutable [`GatewayConfig`].
//!
//! ```text
//!  AuthPolicy specs ──validate──▶ PolicyConfig ──conflicts──▶ GatewayConfig (+ version hash)
//!   (+ last good)         │                          │
//!                         └──── Rejection ◀──────────┘ (Invalid · KeyNotFound · Conflicted)
//! ```
//! One broken policy never takes the others down: it is reported, and its last accepted version
//! (when there is one) keeps serving. What is served stays served: a contested host or route goes
//! to the older policy, and between policies created in the same second (creation times have
//! one-second resolution) to the one already serving it, never to a newcomer that sorts first.

pub mod claims;
pub mod config;
pub mod exchange;
pub mod gateway_api;
pub mod host;
pub mod ownership;
pub mod path;
pub mod redirect;
pub mod tenancy;
pub mod validate;
pub mod workload;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

pub use config::{GatewayConfig, KeyRef, PolicyConfig, PublishedKeys};
pub use tenancy::Tenancy;
pub use validate::{PolicyMeta, RejectReason, Rejection, validate};

use crate::api::{AuthPolicy, AuthPolicySpec, PathMatch};
use jiff::Timestamp;
use ownership::{HostIndex, HostLedger};
use path::PatternKind;

#[derive(Debug, Clone)]
pub struct PolicyInput {
    pub meta: PolicyMeta,
    /// Shared with the caller's copy, never copied: see [`Spec`].
    pub spec: Spec,
    /// The last accepted version of this policy; it keeps serving while the current one is
    /// rejected as invalid or conflicting.
    pub last_good: Option<Arc<PolicyConfig>>,
    /// For a policy with `targetRefs`: the route rules it applies to (`gateway_api::attach`),
    /// or why it applies nowhere. `None`: nothing was resolved (no Gateway API here).
    pub attachment: Option<Result<Vec<gateway_api::Applied>, Rejection>>,
}

/// A policy's spec as compiled: a copy of its own, or the object of a watch cache (10,000 specs
/// copied out of the cache were 40 MiB of the controller's memory).
#[derive(Debug, Clone)]
pub enum Spec {
    Owned(Arc<AuthPolicySpec>),
    Object(Arc<AuthPolicy>),
}

impl std::ops::Deref for Spec {
    type Target = AuthPolicySpec;

    fn deref(&self) -> &AuthPolicySpec {
        match self {
            Spec::Owned(spec) => spec,
            Spec::Object(object) => &object.spec,
        }
    }
}

impl From<AuthPolicySpec> for Spec {
    fn from(spec: AuthPolicySpec) -> Self {
        Spec::Owned(Arc::new(spec))
    }
}

/// What a validation was of: the same `Arc` of a spec, or the same uid and generation of an
/// object (the API server bumps the generation on every change of the spec). An object itself
/// is not kept: a cache of its older copies would hold them all.
#[derive(Debug)]
enum SpecIdentity {
    Owned(Arc<AuthPolicySpec>),
    Object(String, i64),
    None,
}

impl SpecIdentity {
    fn of(spec: &Spec) -> Self {
        match spec {
            Spec::Owned(s) => SpecIdentity::Owned(s.clone()),
            Spec::Object(o) => match (&o.metadata.uid, o.metadata.generation) {
                (Some(uid), Some(generation)) => SpecIdentity::Object(uid.clone(), generation),
                _ => SpecIdentity::None,
            },
        }
    }

    fn is(&self, spec: &Spec) -> bool {
        match (self, spec) {
            (SpecIdentity::Owned(a), Spec::Owned(b)) => Arc::ptr_eq(a, b),
            (SpecIdentity::Object(uid, generation), Spec::Object(o)) => {
                o.metadata.uid.as_ref() == Some(uid) && o.metadata.generation == Some(*generation)
            }
            _ => false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Accepted,
    Rejected { rejection: Rejection, serving_previous: bool },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyOutcome {
    pub namespace: String,
    pub name: String,
    pub generation: Option<i64>,
    pub outcome: Outcome,
}

#[derive(Debug, Clone)]
pub struct Compiled {
    pub config: GatewayConfig,
    pub outcomes: Vec<PolicyOutcome>,
    /// The held claims and every host the accepted policies claim: what the next compilation
    /// must be given as `tenancy.held`.
    pub ledger: HostLedger,
}

/// Validations of the last compilation, reused for a policy whose spec is the same
/// ([`SpecIdentity`]), whose metadata is the same, and while the SigningKeys are (`validate`
/// reads only which exist and their `retain`). Re-validating 10,000 unchanged policies on every
/// edit was a third of a pass.
#[derive(Debug, Default)]
pub struct ValidationCache {
    keys: u64,
    entries: HashMap<String, Validated>,
}

/// A spec and metadata as validated, and the result.
type Validated = (SpecIdentity, PolicyMeta, Result<Arc<PolicyConfig>, Rejection>);

impl ValidationCache {
    fn validate(
        &mut self,
        input: &PolicyInput,
        keys: &BTreeMap<KeyRef, PublishedKeys>,
        keys_digest: u64,
    ) -> Result<Arc<PolicyConfig>, Rejection> {
        let key = input.meta.key();
        if let Some((spec, meta, result)) = self.entries.get(&key)
            && spec.is(&input.spec)
            && *meta == input.meta
            && self.keys == keys_digest
        {
            return result.clone();
        }
        let result = validate(&input.meta, &input.spec, keys).map(Arc::new);
        self.entries.insert(key, (SpecIdentity::of(&input.spec), input.meta.clone(), result.clone()));
        result
    }
}

fn keys_digest(keys: &BTreeMap<KeyRef, PublishedKeys>) -> u64 {
    use std::hash::BuildHasher;
    foldhash::fast::FixedState::with_seed(0).hash_one(keys.iter().map(|(k, p)| (k, p.retain_secs)).collect::<Vec<_>>())
}

/// A route as policies declare it: host pattern, kind and path (a prefix without its trailing
/// slash, as it matches).
fn route_path(pm: &PathMatch) -> Option<(PatternKind, &str)> {
    match (&pm.exact, &pm.prefix, &pm.template) {
        (Some(e), None, None) => Some((PatternKind::Exact, e.as_str())),
        (None, Some(p), None) => Some((
            PatternKind::Prefix,
            match p.trim_end_matches('/') {
                "" => "/",
                t => t,
            },
        )),
        (None, None, Some(t)) => Some((PatternKind::Template, t.as_str())),
        _ => None,
    }
}

/// Every route of a policy: (host, kind, path, methods, rule index, host index, path index);
/// no host means every host (`*`).
fn routes_of(cfg: &PolicyConfig) -> impl Iterator<Item = (&str, PatternKind, &str, u16, usize, usize, usize)> + '_ {
    cfg.rules.iter().enumerate().flat_map(move |(r, rule)| {
        let mask = validate::method_mask(&rule.methods);
        let hosts: Vec<&str> = match cfg.rule_hosts(rule) {
            [] => vec!["*"],
            hosts => hosts.iter().map(String::as_str).collect(),
        };
        rule.paths
            .iter()
            .enumerate()
            .filter_map(route_path_at)
            .flat_map(move |(p, kind, path)| hosts.clone().into_iter().enumerate().map(move |(h, host)| (host, kind, path, mask, r, h, p)))
    })
}

fn route_path_at((i, pm): (usize, &PathMatch)) -> Option<(usize, PatternKind, &str)> {
    route_path(pm).map(|(kind, path)| (i, kind, path))
}

/// The routes accepted policies hold, by a hash of (host, kind, path); a hit is confirmed
/// against the holder's own strings. Nothing is copied per route.
#[derive(Default)]
struct RouteIndex(HashMap<u64, Vec<Holder>>);

/// Who holds a route: the index of its policy among those accepted, and where in it.
#[derive(Clone, Copy)]
struct Holder {
    policy: u32,
    rule: u32,
    host: u32,
    path: u32,
    methods: u16,
}

fn route_hash(host: &str, kind: PatternKind, path: &str) -> u64 {
    use std::hash::BuildHasher;
    foldhash::fast::FixedState::with_seed(0).hash_one((host, kind, path))
}

/// The accepted policies so far, with whether each was serving already.
struct Held {
    configs: Vec<Arc<PolicyConfig>>,
    served: Vec<bool>,
}

impl Held {
    fn route(&self, h: &Holder) -> Option<(&str, PatternKind, &str)> {
        let cfg = &self.configs[h.policy as usize];
        let rule = cfg.rules.get(h.rule as usize)?;
        let host = match cfg.rule_hosts(rule) {
            [] => "*",
            hosts => hosts.get(h.host as usize)?,
        };
        let (kind, path) = route_path(rule.paths.get(h.path as usize)?)?;
        Some((host, kind, path))
    }
}

fn describe_methods(mask: u16) -> String {
    if mask == u16::MAX {
        return "every method".into();
    }
    crate::api::HttpMethod::ALL.iter().filter(|m| mask & validate::method_bit(**m) != 0).map(|m| m.as_str()).collect::<Vec<_>>().join(",")
}

/// The order in which policies claim hosts and routes: older first; at equal creation time the
/// one already serving (its last accepted version is in the config); then namespace/name.
fn claim_order(meta: &PolicyMeta, served: bool) -> (Option<Timestamp>, bool, &str, &str) {
    (meta.created, !served, &meta.namespace, &meta.name)
}

/// Why the route's holder came first, for messages: local mode has no creation times.
fn precedes(holder: &PolicyConfig, served: bool, created: Option<Timestamp>, by_time: bool) -> &'static str {
    if holder.created < created {
        "is older (created first)"
    } else if served {
        if by_time { "was created in the same second and already serves it" } else { "already serves it" }
    } else if by_time {
        "was created in the same second and sorts first by namespace/name"
    } else {
        "sorts first by namespace/name (no creation times here)"
    }
}

fn find_conflict(routes: &RouteIndex, held: &Held, cfg: &PolicyConfig, by_time: bool) -> Option<String> {
    for (host, kind, path, mask, r, _, _) in routes_of(cfg) {
        let Some(holders) = routes.0.get(&route_hash(host, kind, path)) else { continue };
        let when = &cfg.rules[r].when;
        let Some(h) = holders.iter().find(|h| {
            h.methods & mask != 0
                && held.route(h) == Some((host, kind, path))
                && may_tie(&held.configs[h.policy as usize].rules[h.rule as usize].when, when)
        }) else {
            continue;
        };
        let holder = &held.configs[h.policy as usize];
        let kind = match kind {
            PatternKind::Exact => "exact",
            PatternKind::Prefix => "prefix",
            PatternKind::Template => "template",
        };
        let conditions = match when.len() {
            0 => String::new(),
            n => format!(", {n} header or query parameter condition{}", if n == 1 { "" } else { "s" }),
        };
        return Some(format!(
            "rule {} ({kind} {path} on host {host}, {}{conditions}) conflicts with rule {} of AuthPolicy {}, which {} and keeps it",
            cfg.rules[r].name,
            describe_methods(mask & h.methods),
            holder.rules[h.rule as usize].name,
            holder.key(),
            precedes(holder, held.served[h.policy as usize], cfg.created, by_time)
        ));
    }
    None
}

/// Whether one request can match two routes of the same path and methods with neither more
/// specific: as many header and as many query parameter conditions, none contradicting the
/// other. Gateway API then picks the older *route*, which the authorizer does not know; without
/// conditions this is the plain same-route conflict.
fn may_tie(a: &[config::RequestCondition], b: &[config::RequestCondition]) -> bool {
    let headers = |c: &[config::RequestCondition]| c.iter().filter(|c| c.is_header()).count();
    headers(a) == headers(b) && a.len() == b.len() && config::compatible(a, b)
}

/// Records an accepted policy's routes and hosts.
fn claim(routes: &mut RouteIndex, held: &mut Held, hosts: &mut HostIndex, ledger: &mut HostLedger, cfg: Arc<PolicyConfig>, served: bool) {
    let policy = held.configs.len() as u32;
    for (host, kind, path, methods, r, h, p) in routes_of(&cfg) {
        let holder = Holder { policy, rule: r as u32, host: h as u32, path: p as u32, methods };
        routes.0.entry(route_hash(host, kind, path)).or_default().push(holder);
    }
    for c in tenancy::claims_of(&cfg) {
        ledger.hold(c.pattern.clone(), &c.namespace);
        hosts.insert(c);
    }
    held.configs.push(cfg);
    held.served.push(served);
}

/// Compiles the policies of `gateway` (inputs for other gateways are ignored). `tenancy` says
/// which namespace may use which hosts and keys (and which hosts are held already); policies
/// are taken oldest first (creation time, then the one already serving, then namespace/name),
/// and the one taken first keeps a contested route or host.
pub fn compile(gateway: &str, inputs: &[PolicyInput], keys: &BTreeMap<KeyRef, PublishedKeys>, tenancy: &Tenancy) -> Compiled {
    compile_cached(gateway, inputs, keys, tenancy, &mut ValidationCache::default())
}

/// [`compile`], reusing (and updating) the validations of an earlier compilation.
pub fn compile_cached(
    gateway: &str,
    inputs: &[PolicyInput],
    keys: &BTreeMap<KeyRef, PublishedKeys>,
    tenancy: &Tenancy,
    cache: &mut ValidationCache,
) -> Compiled {
    struct Candidate<'a> {
        input: &'a PolicyInput,
        current: Result<Arc<PolicyConfig>, Rejection>,
    }
    let digest = keys_digest(keys);
    let mut candidates: Vec<Candidate> = inputs
        .iter()
        .filter(|i| i.spec.gateway == gateway)
        .map(|input| Candidate { input, current: cache.validate(input, keys, digest).and_then(|cfg| bound(input, cfg)) })
        .collect();
    cache.keys = digest;
    let wanted: std::collections::HashSet<String> = candidates.iter().map(|c| c.input.meta.key()).collect();
    cache.entries.retain(|k, _| wanted.contains(k));
    // Policies claim their routes in this order; a later one that conflicts is the one reported.
    candidates.sort_by(|a, b| {
        claim_order(&a.input.meta, a.input.last_good.is_some()).cmp(&claim_order(&b.input.meta, b.input.last_good.is_some()))
    });

    let by_time = candidates.iter().any(|c| c.input.meta.created.is_some());
    let key_exists = |cfg: &PolicyConfig| referenced_keys(cfg).iter().all(|k| keys.contains_key(k));
    let mut routes = RouteIndex::default();
    let mut held = Held { configs: Vec::new(), served: Vec::new() };
    let mut hosts = HostIndex::default();
    let mut ledger = tenancy.held.clone();
    tenancy.held.claims().for_each(|c| hosts.insert(c));
    let mut outcomes = Vec::new();
    for c in candidates {
        let meta = &c.input.meta;
        let served = c.input.last_good.is_some();
        let rejection = match c.current.and_then(|cfg| tenancy.check(&cfg, &hosts).map(|()| cfg)) {
            Ok(cfg) => match find_conflict(&routes, &held, &cfg, by_time) {
                None => {
                    claim(&mut routes, &mut held, &mut hosts, &mut ledger, cfg, served);
                    outcomes.push(PolicyOutcome {
                        namespace: meta.namespace.clone(),
                        name: meta.name.clone(),
                        generation: meta.generation,
                        outcome: Outcome::Accepted,
                    });
                    continue;
                }
                Some(why) => Rejection { reason: RejectReason::Conflicted, problems: vec![why] },
            },
            Err(r) => r,
        };
        // A missing key cannot be served from memory: its public keys are gone too; nor a
        // route that is gone.
        let previous = c.input.last_good.as_ref().filter(|prev| {
            !matches!(rejection.reason, RejectReason::KeyNotFound | RejectReason::TargetNotFound)
                && key_exists(prev)
                && tenancy.check(prev, &hosts).is_ok()
                && find_conflict(&routes, &held, prev, by_time).is_none()
        });
        if let Some(prev) = previous {
            claim(&mut routes, &mut held, &mut hosts, &mut ledger, prev.clone(), true);
        }
        outcomes.push(PolicyOutcome {
            namespace: meta.namespace.clone(),
            name: meta.name.clone(),
            generation: meta.generation,
            outcome: Outcome::Rejected { rejection, serving_previous: previous.is_some() },
        });
    }

    let mut accepted = held.configs;
    accepted.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    let mut used: Vec<KeyRef> = accepted.iter().flat_map(|p| referenced_keys(p)).collect();
    used.sort();
    used.dedup();
    let signing_keys = used.iter().filter_map(|k| keys.get(k).cloned()).collect();
    outcomes.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    Compiled { config: GatewayConfig::new(gateway, accepted, signing_keys), outcomes, ledger }
}

/// A validated policy as it applies: a policy with `targetRefs` bound to the route rules its
/// attachment found (never cached: routes change without the policy changing).
fn bound(input: &PolicyInput, cfg: Arc<PolicyConfig>) -> Result<Arc<PolicyConfig>, Rejection> {
    if input.spec.target_refs.is_empty() {
        return Ok(cfg);
    }
    match &input.attachment {
        None => Err(Rejection {
            reason: RejectReason::TargetNotFound,
            problems: vec!["targetRefs name Gateway API objects, and none were read here (Gateway API is not installed, or this is local mode); use hosts instead".into()],
        }),
        Some(Err(rejection)) => Err(rejection.clone()),
        Some(Ok(applied)) => gateway_api::bind::bind(&cfg, applied)
            .map(Arc::new)
            .map_err(|problems| Rejection { reason: RejectReason::Invalid, problems }),
    }
}

/// SigningKeys a policy depends on, for verification or for minting.
pub fn referenced_keys(cfg: &PolicyConfig) -> Vec<KeyRef> {
    let verify = cfg.issuers.iter().filter_map(|i| match &i.keys {
        config::KeySource::SigningKey(k) => Some(k.clone()),
        _ => None,
    });
    let mint = cfg.rules.iter().filter_map(|r| r.forward.issue.as_ref().map(|i| i.signing_key.clone()));
    let seal = cfg.sign_in.as_ref().map(|s| s.session_key.clone());
    verify.chain(mint).chain(seal).collect()
}

#[cfg(test)]
mod ownership_tests;

#[cfg(test)]
mod cache_tests {
    use super::*;
    use crate::testkit::inputs_from_yaml;

    const YAML: &str =
        "name: p\nnamespace: shop\nspec:\n  hosts: [a.test]\n  rules: [{ name: r, public: true, match: { paths: [{ prefix: /a }] } }]\n";

    #[test]
    fn a_validation_is_reused_only_for_the_same_spec_metadata_and_keys() {
        let mut cache = ValidationCache::default();
        let inputs = inputs_from_yaml(YAML);
        let t = Tenancy::single_owner();
        let keys = BTreeMap::new();
        let first = compile_cached("default", &inputs, &keys, &t, &mut cache).config.policies[0].clone();
        let again = compile_cached("default", &inputs, &keys, &t, &mut cache).config.policies[0].clone();
        assert!(Arc::ptr_eq(&first, &again), "the same spec: validated once");
        // An equal spec in another Arc (a new generation, as the controller hands it over).
        let fresh = inputs_from_yaml(YAML);
        let other = compile_cached("default", &fresh, &keys, &t, &mut cache).config.policies[0].clone();
        assert!(!Arc::ptr_eq(&again, &other));
        // Other metadata (a new generation), or other SigningKeys: validated again.
        let mut newer = fresh.clone();
        newer[0].meta.generation = Some(2);
        let third = compile_cached("default", &newer, &keys, &t, &mut cache).config.policies[0].clone();
        assert_eq!(third.generation, Some(2));
        let mut with_key = BTreeMap::new();
        let published: PublishedKeys = serde_json::from_value(serde_json::json!({
            "namespace": "shop", "name": "k", "algorithm": "EdDSA", "maxAgeSecs": 60, "keys": [], "retainSecs": 3600
        }))
        .unwrap();
        with_key.insert(published.key_ref(), published);
        let fourth = compile_cached("default", &newer, &with_key, &t, &mut cache).config.policies[0].clone();
        assert!(!Arc::ptr_eq(&third, &fourth));
        // A policy that is gone is forgotten.
        compile_cached("default", &[], &with_key, &t, &mut cache);
        assert!(cache.entries.is_empty());
    }

    #[test]
    fn a_watched_objects_validation_is_reused_for_its_uid_and_generation_whatever_its_status() {
        let object = |uid: Option<&str>, generation: i64, status: Option<&str>| {
            let mut inputs = inputs_from_yaml(YAML);
            let mut p: AuthPolicy = serde_json::from_value(serde_json::json!({
                "apiVersion": "portcullis.dev/v1alpha1", "kind": "AuthPolicy",
                "metadata": {"name": "p", "namespace": "shop", "uid": uid, "generation": generation},
                "spec": serde_json::to_value(&*inputs[0].spec).unwrap()
            }))
            .unwrap();
            p.status = status.map(|reason| {
                serde_json::from_value(serde_json::json!({"conditions": [{"type": "Accepted", "status": "True",
                "reason": reason, "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}))
                .unwrap()
            });
            inputs[0].spec = Spec::Object(Arc::new(p));
            inputs[0].meta.generation = Some(generation);
            inputs
        };
        let (mut cache, t, keys) = (ValidationCache::default(), Tenancy::single_owner(), BTreeMap::new());
        let mut compile = |inputs: &[PolicyInput]| compile_cached("default", inputs, &keys, &t, &mut cache).config.policies[0].clone();
        let first = compile(&object(Some("u1"), 1, None));
        // The object again, as the watch cache has it after a status write: another Arc.
        assert!(Arc::ptr_eq(&first, &compile(&object(Some("u1"), 1, Some("Valid")))), "same uid and generation: reused");
        assert!(!Arc::ptr_eq(&first, &compile(&object(Some("u1"), 2, Some("Valid")))), "a new generation is validated");
        let recreated = compile(&object(Some("u2"), 2, None));
        assert!(!Arc::ptr_eq(&recreated, &compile(&object(Some("u3"), 2, None))), "deleted and created again: validated");
        let anonymous = compile(&object(None, 2, None));
        assert!(!Arc::ptr_eq(&anonymous, &compile(&object(None, 2, None))), "without a uid nothing is assumed");
    }
}
