//! The data plane's truth in AuthPolicy status (pure): gateway heartbeats × published configs
//! → `Enforced`, `status.gateways`, `status.issuers` + `IssuersReady`, and audit counts.

use std::collections::{BTreeMap, HashMap, VecDeque};

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

use crate::api::{AuthPolicyStatus, GatewayServing, IssuerHealth, ReasonCount, RuleAudit};
use crate::contract::heartbeat::{AUDIT_WINDOW_SECS, Heartbeat, TOP_REASONS};
use crate::policy::GatewayConfig;
use crate::policy::config::KeySource;

pub mod reasons {
    pub const ENFORCED: &str = "Enforced";
    pub const PENDING: &str = "Pending";
    pub const STALE: &str = "Stale";
    pub const NO_REPLICAS: &str = "NoReplicas";
    pub const NOT_PROGRAMMED: &str = "NotProgrammed";
    pub const JWKS_READY: &str = "JwksReady";
    pub const JWKS_FAILING: &str = "JwksFailing";
    pub const JWKS_UNKNOWN: &str = "JwksUnknown";
}

/// Versions a gateway's replicas may still serve: the last few published configs, and the
/// generation of every policy in each. A replica on a version not remembered here (published
/// before the controller started) counts as not serving anything newer.
#[derive(Default, Debug)]
pub struct History(HashMap<String, Versions>);

/// Kept as changes: 32 full copies of 10,000 policies' generations were ~25 MiB, and most
/// versions differ from the one before in a single policy.
#[derive(Default, Debug)]
struct Versions {
    /// The versions kept, oldest first, each with its sequence number.
    versions: VecDeque<(String, u64)>,
    next: u64,
    /// Per policy, from which sequence number on which generation was in the config (`None`:
    /// the policy was not).
    changes: HashMap<String, Vec<Change>>,
}

/// From sequence number, the policy's generation in the config (`None`: not in it).
type Change = (u64, Option<Option<i64>>);

const HISTORY: usize = 32;

impl History {
    pub fn record(&mut self, config: &GatewayConfig) {
        let vs = self.0.entry(config.gateway.clone()).or_default();
        if vs.versions.back().is_some_and(|(v, _)| *v == config.version) {
            return;
        }
        let seq = vs.next;
        vs.next += 1;
        let mut present = std::collections::HashSet::with_capacity(config.policies.len());
        let exchanges = config.exchanges.iter().map(|x| (super::exchanges::history_key(&x.namespace, &x.name), x.generation));
        for (key, generation) in config.policies.iter().map(|p| (p.key(), p.generation)).chain(exchanges) {
            let changes = vs.changes.entry(key.clone()).or_default();
            if changes.last().map(|(_, g)| *g) != Some(Some(generation)) {
                changes.push((seq, Some(generation)));
            }
            present.insert(key);
        }
        for (key, changes) in vs.changes.iter_mut() {
            if !present.contains(key) && changes.last().is_some_and(|(_, g)| g.is_some()) {
                changes.push((seq, None));
            }
        }
        vs.versions.retain(|(v, _)| *v != config.version);
        vs.versions.push_back((config.version.clone(), seq));
        while vs.versions.len() > HISTORY {
            vs.versions.pop_front();
        }
        // What no kept version can ask about any more: every change before the one in force at
        // the oldest version, and policies absent since then.
        let oldest = vs.versions.front().map_or(seq, |(_, s)| *s);
        vs.changes.retain(|_, changes| {
            let in_force = changes.iter().rposition(|(s, _)| *s <= oldest).unwrap_or(0);
            changes.drain(..in_force);
            !(changes.len() == 1 && changes[0].1.is_none())
        });
    }

    /// Whether config `version` of `gateway` holds `policy` at `generation`.
    pub fn holds(&self, gateway: &str, version: &str, policy: &str, generation: Option<i64>) -> bool {
        let Some(vs) = self.0.get(gateway) else { return false };
        let Some((_, seq)) = vs.versions.iter().rev().find(|(v, _)| v == version) else { return false };
        vs.changes.get(policy).and_then(|changes| changes.iter().rev().find(|(s, _)| s <= seq)).is_some_and(|(_, g)| *g == Some(generation))
    }
}

/// A status condition without its transition time (set when merged).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub status: &'static str,
    pub reason: &'static str,
    pub message: String,
}

impl Verdict {
    pub fn into_condition(self, type_: &str, generation: Option<i64>, now: Timestamp) -> Condition {
        Condition {
            type_: type_.to_owned(),
            status: self.status.to_owned(),
            reason: self.reason.to_owned(),
            message: self.message,
            observed_generation: generation,
            last_transition_time: super::desired::k8s_time(now),
        }
    }
}

/// `Enforced` for a policy whose published config holds it at `served` (None: not in the
/// config), given the live heartbeats of its gateway.
pub fn enforced(
    gateway: &str,
    policy: &str,
    served: Option<Option<i64>>,
    live: &[Heartbeat],
    history: &History,
) -> (Verdict, GatewayServing) {
    let replicas = live.len() as u32;
    let serving = match served {
        Some(generation) => {
            live.iter().filter(|hb| hb.version.as_deref().is_some_and(|v| history.holds(gateway, v, policy, generation))).count() as u32
        }
        None => 0,
    };
    let summary = GatewayServing { name: gateway.to_owned(), replicas, serving };
    let verdict = match (served, replicas, serving) {
        (None, _, _) => {
            Verdict { status: "False", reason: reasons::NOT_PROGRAMMED, message: format!("not part of the config of gateway {gateway}") }
        }
        (Some(_), 0, _) => Verdict {
            status: "False",
            reason: reasons::NO_REPLICAS,
            message: format!("no replica of gateway {gateway} reports a heartbeat"),
        },
        (Some(_), n, s) if s == n => {
            Verdict { status: "True", reason: reasons::ENFORCED, message: format!("{s}/{n} replicas of gateway {gateway} serve it") }
        }
        (Some(_), n, 0) => {
            Verdict { status: "False", reason: reasons::PENDING, message: format!("0/{n} replicas of gateway {gateway} serve it yet") }
        }
        (Some(_), n, s) => Verdict {
            status: "False",
            reason: reasons::STALE,
            message: format!("{} of {n} replicas of gateway {gateway} are on an older version", n - s),
        },
    };
    (verdict, summary)
}

/// Per remote JWKS of the policy's issuers, its health across the live replicas, and
/// `IssuersReady`. Issuers with inline keys or a SigningKey have nothing to fetch.
pub fn issuers(config: Option<&crate::policy::PolicyConfig>, live: &[Heartbeat]) -> (Verdict, Vec<IssuerHealth>) {
    let mut out = Vec::new();
    // Remote JWKS of the issuers, and the discovery document of sign-in's provider.
    let remote = config.map(|c| c.issuers.as_slice()).unwrap_or_default().iter().filter_map(|i| match &i.keys {
        KeySource::Remote { uri, .. } => Some((i.issuer.clone(), uri.clone())),
        _ => None,
    });
    let provider = config.and_then(|c| c.sign_in.as_ref()).map(|s| (s.issuer.clone(), crate::policy::config::discovery_url(&s.issuer)));
    for (issuer, uri) in remote.chain(provider) {
        let uri = &uri;
        let reports: Vec<&crate::contract::heartbeat::JwksHealth> =
            live.iter().flat_map(|hb| hb.jwks.iter().filter(|j| j.uri == *uri)).collect();
        let keys = reports.iter().map(|r| r.keys).min().unwrap_or(0);
        let worst_failing = reports.iter().filter(|r| !r.ready).min_by_key(|r| r.since);
        let (jwks, last_error, since) = match (reports.is_empty(), worst_failing) {
            (true, _) => ("Unknown", None, None),
            (false, Some(worst)) => ("Failing", worst.last_error.clone(), Some(worst.since)),
            (false, None) => ("Ready", None, reports.iter().map(|r| r.since).max()),
        };
        let health =
            IssuerHealth { issuer, uri: uri.clone(), jwks: jwks.into(), keys, last_error, since: since.map(super::desired::k8s_time) };
        out.push(health);
    }
    let failing: Vec<String> = out
        .iter()
        .filter(|h| h.jwks == "Failing")
        .map(|h| format!("{} ({})", h.uri, h.last_error.as_deref().unwrap_or("failing")))
        .collect();
    let unknown = out.iter().filter(|h| h.jwks == "Unknown").count();
    let verdict = if !failing.is_empty() {
        Verdict {
            status: "False",
            reason: reasons::JWKS_FAILING,
            message: format!("gateway replicas cannot fetch {}; they keep the last good keys", failing.join(", ")),
        }
    } else if unknown > 0 {
        Verdict {
            status: "Unknown",
            reason: reasons::JWKS_UNKNOWN,
            message: format!("{unknown} key set(s) not fetched by any replica yet"),
        }
    } else if out.is_empty() {
        Verdict { status: "True", reason: reasons::JWKS_READY, message: "no remote key sets".into() }
    } else {
        Verdict { status: "True", reason: reasons::JWKS_READY, message: format!("{} remote key set(s) fresh on every replica", out.len()) }
    };
    (verdict, out)
}

/// Everything the data plane says about one policy.
pub struct View {
    pub enforced: (Verdict, GatewayServing),
    pub issuers: (Verdict, Vec<IssuerHealth>),
    pub audit: (Vec<RuleAudit>, Option<String>),
}

/// Adds `Enforced`, `IssuersReady` and the data-plane fields to a status, keeping the
/// transition time of conditions whose status did not change since `existing`.
pub fn add_to_status(
    status: &mut AuthPolicyStatus,
    existing: Option<&AuthPolicyStatus>,
    view: View,
    generation: Option<i64>,
    now: Timestamp,
) {
    let (enforced, serving) = view.enforced;
    let (ready, issuers) = view.issuers;
    let new = vec![enforced.into_condition("Enforced", generation, now), ready.into_condition("IssuersReady", generation, now)];
    let merged = crate::controller::desired::merge_conditions(existing.map(|s| s.conditions.as_slice()).unwrap_or_default(), new);
    status.conditions.extend(merged);
    status.gateways = vec![serving];
    status.issuers = issuers;
    (status.audit, status.audit_summary) = view.audit;
}

/// Keeps the audit counts already in `existing` (written recently), unless the audited rules
/// themselves changed or the old counts were all zero (the first traffic shows at once): counts
/// move with every request and would otherwise be rewritten on every heartbeat.
pub fn keep_recent_audit(status: &mut AuthPolicyStatus, existing: Option<&AuthPolicyStatus>) {
    let Some(old) = existing else { return };
    let rules = |s: &AuthPolicyStatus| s.audit.iter().map(|r| r.rule.clone()).collect::<Vec<_>>();
    let counted = old.audit.iter().any(|r| r.would_allow + r.would_deny > 0);
    if counted && rules(old) == rules(status) {
        status.audit = old.audit.clone();
        status.audit_summary = old.audit_summary.clone();
    }
}

/// The audited rules' counts summed over the live replicas, and a one-line summary.
pub fn audit(policy: &str, config: Option<&crate::policy::PolicyConfig>, live: &[Heartbeat]) -> (Vec<RuleAudit>, Option<String>) {
    let Some(config) = config else { return (Vec::new(), None) };
    let mut rules = Vec::new();
    let mut reasons_all: BTreeMap<String, u64> = BTreeMap::new();
    for r in config.rules.iter().filter(|r| r.audit) {
        let mut sum = RuleAudit { rule: r.name.clone(), window_seconds: AUDIT_WINDOW_SECS, ..Default::default() };
        let mut reasons: BTreeMap<String, u64> = BTreeMap::new();
        for c in live.iter().flat_map(|hb| hb.audit.iter().filter(|c| c.policy == policy && c.rule == r.name)) {
            sum.would_allow += c.would_allow;
            sum.would_deny += c.would_deny;
            for (reason, n) in &c.reasons {
                *reasons.entry(reason.clone()).or_default() += n;
                *reasons_all.entry(reason.clone()).or_default() += n;
            }
        }
        sum.top_reasons = top(reasons);
        rules.push(sum);
    }
    if rules.is_empty() {
        return (rules, None);
    }
    let (allow, deny) = rules.iter().fold((0, 0), |(a, d), r| (a + r.would_allow, d + r.would_deny));
    let summary = match (allow + deny, top(reasons_all).first()) {
        (0, _) => "audit: no requests yet".to_owned(),
        (total, Some(r)) => format!("would deny {} ({})", percent(deny, total), r.reason),
        (total, None) => format!("would deny {}", percent(deny, total)),
    };
    (rules, Some(summary))
}

fn top(reasons: BTreeMap<String, u64>) -> Vec<ReasonCount> {
    let mut v: Vec<ReasonCount> = reasons.into_iter().map(|(reason, count)| ReasonCount { reason, count }).collect();
    v.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.reason.cmp(&b.reason)));
    v.truncate(TOP_REASONS);
    v
}

/// A share as a percentage with one decimal; never rounds a non-zero share to "0%" or a
/// partial one to "100%".
fn percent(part: u64, total: u64) -> String {
    let p = part as f64 * 100.0 / total as f64;
    let shown = if part > 0 && p < 0.1 {
        "<0.1".to_owned()
    } else if part < total && p > 99.9 {
        ">99.9".to_owned()
    } else {
        let s = format!("{p:.1}");
        s.strip_suffix(".0").map(str::to_owned).unwrap_or(s)
    };
    format!("{shown}%")
}

#[cfg(test)]
#[path = "dataplane_tests.rs"]
mod tests;
