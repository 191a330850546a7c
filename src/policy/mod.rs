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
pub mod host;
pub mod ownership;
pub mod path;
pub mod tenancy;
pub mod validate;

use std::collections::{BTreeMap, HashMap};

pub use config::{GatewayConfig, KeyRef, PolicyConfig, PublishedKeys};
pub use tenancy::Tenancy;
pub use validate::{PolicyMeta, RejectReason, Rejection, validate};

use crate::api::AuthPolicySpec;
use host::HostPattern;
use jiff::Timestamp;
use ownership::{HostIndex, HostLedger};
use path::PatternKind;

#[derive(Debug, Clone)]
pub struct PolicyInput {
    pub meta: PolicyMeta,
    pub spec: AuthPolicySpec,
    /// The last accepted version of this policy; it keeps serving while the current one is
    /// rejected as invalid or conflicting.
    pub last_good: Option<PolicyConfig>,
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

type RouteKey = (HostPattern, PatternKind, String);

struct Claimed {
    policy: String,
    rule: String,
    methods: u16,
    created: Option<Timestamp>,
    served: bool,
}

/// The order in which policies claim hosts and routes: older first; at equal creation time the
/// one already serving (its last accepted version is in the config); then namespace/name.
fn claim_order(meta: &PolicyMeta, served: bool) -> (Option<Timestamp>, bool, &str, &str) {
    (meta.created, !served, &meta.namespace, &meta.name)
}

/// Every (host, path, methods) route a policy declares.
fn routes_of(cfg: &PolicyConfig) -> Vec<(RouteKey, u16, &str)> {
    let hosts: Vec<HostPattern> =
        if cfg.hosts.is_empty() { vec![HostPattern::Any] } else { cfg.hosts.iter().filter_map(|h| HostPattern::parse(h).ok()).collect() };
    let mut out = Vec::new();
    for rule in &cfg.rules {
        let mask = validate::method_mask(&rule.methods);
        for pm in &rule.paths {
            let Ok(pattern) = validate::compile_path(pm) else { continue };
            for h in &hosts {
                out.push(((h.clone(), pattern.kind(), pattern.text().to_owned()), mask, rule.name.as_str()));
            }
        }
    }
    out
}

fn describe_methods(mask: u16) -> String {
    if mask == u16::MAX {
        return "every method".into();
    }
    crate::api::HttpMethod::ALL.iter().filter(|m| mask & validate::method_bit(**m) != 0).map(|m| m.as_str()).collect::<Vec<_>>().join(",")
}

/// Why the route's holder came first, for messages: local mode has no creation times.
fn precedes(holder: &Claimed, created: Option<Timestamp>, by_time: bool) -> &'static str {
    if holder.created < created {
        "is older (created first)"
    } else if holder.served {
        if by_time { "was created in the same second and already serves it" } else { "already serves it" }
    } else if by_time {
        "was created in the same second and sorts first by namespace/name"
    } else {
        "sorts first by namespace/name (no creation times here)"
    }
}

fn find_conflict(claimed: &HashMap<RouteKey, Vec<Claimed>>, cfg: &PolicyConfig, by_time: bool) -> Option<String> {
    for (key, mask, rule) in routes_of(cfg) {
        if let Some(c) = claimed.get(&key).and_then(|v| v.iter().find(|c| c.methods & mask != 0)) {
            let kind = match key.1 {
                PatternKind::Exact => "exact",
                PatternKind::Prefix => "prefix",
                PatternKind::Template => "template",
            };
            return Some(format!(
                "rule {rule} ({kind} {} on host {}, {}) conflicts with rule {} of AuthPolicy {}, which {} and keeps it",
                key.2,
                key.0,
                describe_methods(mask & c.methods),
                c.rule,
                c.policy,
                precedes(c, cfg.created, by_time)
            ));
        }
    }
    None
}

/// Records an accepted policy's routes and hosts.
fn claim(claimed: &mut HashMap<RouteKey, Vec<Claimed>>, hosts: &mut HostIndex, ledger: &mut HostLedger, cfg: &PolicyConfig, served: bool) {
    let policy = cfg.key();
    for (key, methods, rule) in routes_of(cfg) {
        claimed.entry(key).or_default().push(Claimed {
            policy: policy.clone(),
            rule: rule.to_owned(),
            methods,
            created: cfg.created,
            served,
        });
    }
    for c in tenancy::claims_of(cfg) {
        ledger.hold(c.pattern.clone(), &c.namespace);
        hosts.insert(c);
    }
}

/// Compiles the policies of `gateway` (inputs for other gateways are ignored). `tenancy` says
/// which namespace may use which hosts and keys (and which hosts are held already); policies
/// are taken oldest first (creation time, then the one already serving, then namespace/name),
/// and the one taken first keeps a contested route or host.
pub fn compile(gateway: &str, inputs: &[PolicyInput], keys: &BTreeMap<KeyRef, PublishedKeys>, tenancy: &Tenancy) -> Compiled {
    struct Candidate<'a> {
        input: &'a PolicyInput,
        current: Result<PolicyConfig, Rejection>,
    }
    let mut candidates: Vec<Candidate> = inputs
        .iter()
        .filter(|i| i.spec.gateway == gateway)
        .map(|input| Candidate { input, current: validate(&input.meta, &input.spec, keys) })
        .collect();
    // Policies claim their routes in this order; a later one that conflicts is the one reported.
    candidates.sort_by(|a, b| {
        claim_order(&a.input.meta, a.input.last_good.is_some()).cmp(&claim_order(&b.input.meta, b.input.last_good.is_some()))
    });

    let by_time = candidates.iter().any(|c| c.input.meta.created.is_some());
    let key_exists = |cfg: &PolicyConfig| referenced_keys(cfg).iter().all(|k| keys.contains_key(k));
    let mut claimed: HashMap<RouteKey, Vec<Claimed>> = HashMap::new();
    let mut hosts = HostIndex::default();
    let mut ledger = tenancy.held.clone();
    tenancy.held.claims().for_each(|c| hosts.insert(c));
    let mut accepted = Vec::new();
    let mut outcomes = Vec::new();
    for c in candidates {
        let meta = &c.input.meta;
        let served = c.input.last_good.is_some();
        let rejection = match c.current.and_then(|cfg| tenancy.check(&cfg, &hosts).map(|()| cfg)) {
            Ok(cfg) => match find_conflict(&claimed, &cfg, by_time) {
                None => {
                    claim(&mut claimed, &mut hosts, &mut ledger, &cfg, served);
                    accepted.push(cfg);
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
        // A missing key cannot be served from memory: its public keys are gone too.
        let previous = c.input.last_good.as_ref().filter(|prev| {
            rejection.reason != RejectReason::KeyNotFound
                && key_exists(prev)
                && tenancy.check(prev, &hosts).is_ok()
                && find_conflict(&claimed, prev, by_time).is_none()
        });
        if let Some(prev) = previous {
            claim(&mut claimed, &mut hosts, &mut ledger, prev, true);
            accepted.push(prev.clone());
        }
        outcomes.push(PolicyOutcome {
            namespace: meta.namespace.clone(),
            name: meta.name.clone(),
            generation: meta.generation,
            outcome: Outcome::Rejected { rejection, serving_previous: previous.is_some() },
        });
    }

    accepted.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    let mut used: Vec<KeyRef> = accepted.iter().flat_map(referenced_keys).collect();
    used.sort();
    used.dedup();
    let signing_keys = used.iter().filter_map(|k| keys.get(k).cloned()).collect();
    outcomes.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    Compiled { config: GatewayConfig::new(gateway, accepted, signing_keys), outcomes, ledger }
}

/// SigningKeys a policy depends on, for verification or for minting.
pub fn referenced_keys(cfg: &PolicyConfig) -> Vec<KeyRef> {
    let verify = cfg.issuers.iter().filter_map(|i| match &i.keys {
        config::KeySource::SigningKey(k) => Some(k.clone()),
        _ => None,
    });
    let mint = cfg.rules.iter().filter_map(|r| r.forward.issue.as_ref().map(|i| i.signing_key.clone()));
    verify.chain(mint).collect()
}

#[cfg(test)]
mod ownership_tests;
