//! TokenExchangePolicies in the gateway loop: their inputs to each gateway's config, and their
//! statuses (Accepted, Programmed, Enforced, as for AuthPolicies). The decisions are pure
//! (`policy::exchange`, `desired`); this reads the watch cache and writes what differs.

use std::collections::HashMap;
use std::sync::Arc;

use jiff::Timestamp;
use kube::{Api, ResourceExt};

use super::apply::apply_status;
use super::dataplane::{self, History};
use super::desired::{self, Programmed};
use super::{Context, Error};
use crate::api::{TokenExchangePolicy, TokenExchangePolicyStatus};
use crate::contract::heartbeat::Heartbeat;
use crate::policy::Outcome;
use crate::policy::config::{ClusterIssuer, ExchangeConfig, GatewayConfig};
use crate::policy::exchange::ExchangeInput;

/// How a TokenExchangePolicy is named in the config history (apart from AuthPolicies').
pub fn history_key(namespace: &str, name: &str) -> String {
    format!("TokenExchangePolicy {namespace}/{name}")
}

/// The inputs of `gateway`, each with its last accepted version.
pub(super) fn inputs(
    policies: &[Arc<TokenExchangePolicy>],
    gateway: &str,
    last_good: Option<&HashMap<String, ExchangeConfig>>,
) -> Vec<ExchangeInput> {
    policies
        .iter()
        .filter(|p| p.spec.gateway == gateway)
        .map(|p| {
            let meta = desired::policy_meta(&**p);
            let last_good = last_good.and_then(|l| l.get(&meta.key())).cloned();
            ExchangeInput { meta, spec: Arc::new(p.spec.clone()), last_good }
        })
        .collect()
}

/// The cluster issuer a config needs (a `kubernetes` issuer or an exchange), if known.
pub(super) fn cluster_issuer_for(ctx: &Context, config: &GatewayConfig, exchanges: &[ExchangeInput]) -> (bool, Option<ClusterIssuer>) {
    let needed = !exchanges.is_empty() || config.policies.iter().any(|p| p.issuers.iter().any(|i| i.is_cluster()));
    let known = ctx.cluster_issuer.lock().expect("cluster issuer lock").issuer.clone();
    (needed, known.filter(|_| needed))
}

/// Why the cluster's issuer is not known, for the statuses of what needs it.
pub(super) fn cluster_issuer_warning(ctx: &Context) -> Option<String> {
    let known = ctx.cluster_issuer.lock().expect("cluster issuer lock");
    match (&known.issuer, &known.error) {
        (None, Some(e)) => Some(format!("the cluster's ServiceAccount issuer cannot be read ({e}): its tokens are refused (503)")),
        (None, None) => Some("the cluster's ServiceAccount issuer is not discovered yet: its tokens are refused (503)".into()),
        (Some(_), _) => None,
    }
}

/// A TokenExchangePolicy's status from its outcome, its gateway's publication and heartbeats.
#[allow(clippy::too_many_arguments)]
pub fn status(
    existing: Option<&TokenExchangePolicyStatus>,
    generation: Option<i64>,
    outcome: &Outcome,
    programmed: &Programmed,
    served: Option<Option<i64>>,
    gateway: &str,
    key: &str,
    live: &[Heartbeat],
    history: &History,
    warning: Option<&str>,
    now: Timestamp,
) -> TokenExchangePolicyStatus {
    let existing_policy = existing.map(|s| crate::api::AuthPolicyStatus { conditions: s.conditions.clone(), ..Default::default() });
    let base = desired::policy_status(existing_policy.as_ref(), generation, outcome, programmed, warning, now);
    let (enforced, serving) = dataplane::enforced(gateway, key, served, live, history);
    let merged = desired::merge_conditions(
        existing.map(|s| s.conditions.as_slice()).unwrap_or_default(),
        vec![enforced.into_condition("Enforced", generation, now)],
    );
    let mut conditions = base.conditions;
    conditions.extend(merged);
    TokenExchangePolicyStatus { observed_generation: generation, conditions, gateways: vec![serving] }
}

/// Writes every TokenExchangePolicy status that differs.
pub(super) async fn write_statuses(
    ctx: &Arc<Context>,
    passes: impl Iterator<Item = (&String, &GatewayConfig, &HashMap<(String, String), (Option<i64>, Outcome)>, &Programmed)>,
    live: impl Fn(&str) -> Vec<Heartbeat>,
    history: &History,
    now: Timestamp,
) -> Result<(), Error> {
    let policies = ctx.stores.exchanges.state();
    let warning = cluster_issuer_warning(ctx);
    let mut first_error = None;
    for (gateway, config, outcomes, programmed) in passes {
        let live = live(gateway);
        for p in policies.iter().filter(|p| p.spec.gateway == *gateway) {
            let (namespace, name) = (p.namespace().unwrap_or_default(), p.name_any());
            let Some((generation, outcome)) = outcomes.get(&(namespace.clone(), name.clone())) else { continue };
            if *generation != p.metadata.generation {
                continue;
            }
            let served = config.exchanges.iter().find(|x| x.namespace == namespace && x.name == name).map(|x| x.generation);
            let key = history_key(&namespace, &name);
            let new =
                status(p.status.as_ref(), *generation, outcome, programmed, served, gateway, &key, &live, history, warning.as_deref(), now);
            if p.status.as_ref() == Some(&new) {
                continue;
            }
            let api: Api<TokenExchangePolicy> = Api::namespaced(ctx.client.clone(), &namespace);
            if let Err(e) = apply_status(&api, &name, &new).await {
                first_error.get_or_insert(e);
            }
        }
    }
    first_error.map_or(Ok(()), Err)
}
