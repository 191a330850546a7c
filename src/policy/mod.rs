//! Policy compilation (pure): every AuthPolicy of one gateway → one immutable [`GatewayConfig`].
//!
//! ```text
//!  AuthPolicy specs ──validate──▶ PolicyConfig ──conflicts──▶ GatewayConfig (+ version hash)
//!   (+ last good)         │                          │
//!                         └──── Rejection ◀──────────┘ (Invalid · KeyNotFound · Conflicted)
//! ```
//! One broken policy never takes the others down: it is reported, and its last accepted version
//! (when there is one) keeps serving.

pub mod claims;
pub mod config;
pub mod host;
pub mod path;
pub mod tenancy;
pub mod validate;

use std::collections::{BTreeMap, HashMap};

pub use config::{GatewayConfig, KeyRef, PolicyConfig, PublishedKeys};
pub use tenancy::Tenancy;
pub use validate::{PolicyMeta, RejectReason, Rejection, validate};

use crate::api::AuthPolicySpec;
use host::HostPattern;
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
}

type RouteKey = (HostPattern, PatternKind, String);

struct Claimed {
    policy: String,
    rule: String,
    methods: u16,
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

/// How "older" was decided, for messages: local mode has no creation times.
fn older_rule(by_time: bool) -> &'static str {
    if by_time { "is older (created first)" } else { "sorts first by namespace/name (no creation times here)" }
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
                older_rule(by_time)
            ));
        }
    }
    None
}

fn claim(claimed: &mut HashMap<RouteKey, Vec<Claimed>>, cfg: &PolicyConfig) {
    let policy = cfg.key();
    for (key, methods, rule) in routes_of(cfg) {
        claimed.entry(key).or_default().push(Claimed { policy: policy.clone(), rule: rule.to_owned(), methods });
    }
}

/// Compiles the policies of `gateway` (inputs for other gateways are ignored). `tenancy` says
/// which namespace may use which hosts and keys; policies are taken oldest first (creation
/// time, then namespace/name), and an older policy keeps a contested route or host.
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
    // Older policies claim their routes first; a newer one that conflicts is the one reported.
    candidates.sort_by(|a, b| {
        (a.input.meta.created, &a.input.meta.namespace, &a.input.meta.name).cmp(&(
            b.input.meta.created,
            &b.input.meta.namespace,
            &b.input.meta.name,
        ))
    });

    let by_time = candidates.iter().any(|c| c.input.meta.created.is_some());
    let key_exists = |cfg: &PolicyConfig| referenced_keys(cfg).iter().all(|k| keys.contains_key(k));
    let mut claimed: HashMap<RouteKey, Vec<Claimed>> = HashMap::new();
    let mut hosts: Vec<tenancy::HostClaim> = Vec::new();
    let mut accepted = Vec::new();
    let mut outcomes = Vec::new();
    for c in candidates {
        let meta = &c.input.meta;
        let rejection = match c.current.and_then(|cfg| tenancy.check(&cfg, &hosts).map(|()| cfg)) {
            Ok(cfg) => match find_conflict(&claimed, &cfg, by_time) {
                None => {
                    claim(&mut claimed, &cfg);
                    hosts.extend(tenancy::claims_of(&cfg));
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
            claim(&mut claimed, prev);
            hosts.extend(tenancy::claims_of(prev));
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
    Compiled { config: GatewayConfig::new(gateway, accepted, signing_keys), outcomes }
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
