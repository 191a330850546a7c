//! The gateway loop: on changes (debounced) compile every gateway's policies, publish its
//! ConfigMap and key Secret when they differ, then write policy statuses that differ.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::{Api, ResourceExt};
use tokio::sync::watch;

use super::apply::{Applied, apply_if_changed, apply_status};
use super::desired::{self, Programmed};
use super::signingkeys::publish_event;
use super::{Context, Error};
use crate::api::AuthPolicy;
use crate::policy::config::KeySource;
use crate::policy::{self, Outcome, PolicyConfig};

/// A full resync even without changes (catches drift, e.g. a ConfigMap edited by hand).
const RESYNC: Duration = Duration::from_secs(300);
const PROBE_EVERY: Duration = Duration::from_secs(300);

/// Reachability of remote JWKS as seen from the controller (`IssuerUnreachable`).
#[derive(Default)]
pub struct IssuerProbes(Mutex<HashMap<String, Probe>>);

/// When a JWKS URL was last probed, and the result once there is one.
type Probe = (Instant, Option<Result<(), String>>);

impl IssuerProbes {
    /// The last known failure for `uri`; starts a probe when none is recent.
    fn check(&self, uri: &str, ctx: &Arc<Context>) -> Option<String> {
        let mut probes = self.0.lock().expect("probe lock");
        let entry = probes.get(uri).cloned();
        if entry.as_ref().is_none_or(|(at, _)| at.elapsed() > PROBE_EVERY) {
            probes.insert(uri.to_owned(), (Instant::now(), entry.as_ref().and_then(|e| e.1.clone())));
            let (uri, ctx) = (uri.to_owned(), ctx.clone());
            tokio::spawn(async move {
                let client = crate::gateway::jwks::http_client(&ctx.opts.jwks_roots);
                let result = crate::gateway::jwks::fetch_jwks(&client, &uri).await.map(|_| ());
                let changed = {
                    let mut probes = ctx.probes.0.lock().expect("probe lock");
                    let before = probes.get(&uri).and_then(|e| e.1.clone());
                    probes.insert(uri.clone(), (Instant::now(), Some(result.clone())));
                    before != Some(result)
                };
                if changed {
                    ctx.trigger.notify_one();
                }
            });
        }
        match entry.and_then(|e| e.1) {
            Some(Err(why)) => Some(format!("jwks {uri} is not reachable from the controller ({why}); gateways keep retrying")),
            _ => None,
        }
    }
}

pub(super) struct LoopState {
    /// Per gateway, the last accepted version of each policy (recovered from the published
    /// ConfigMaps at start, so a restart does not drop a broken policy's last good version).
    pub(super) last_good: HashMap<String, HashMap<String, PolicyConfig>>,
}

pub async fn run(ctx: Arc<Context>, mut stop: watch::Receiver<bool>) {
    // Compile only from complete caches: a half-listed cache would look like deleted policies.
    while !ctx.ready.load(Ordering::Acquire) {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
    let mut state = LoopState { last_good: recover_last_good(&ctx) };
    loop {
        ctx.pending.store(0, Ordering::Relaxed);
        ctx.metrics.queue_depth.with_label_values(&["gateway"]).set(0);
        let started = Instant::now();
        let result = sync_all(&ctx, &mut state).await;
        ctx.metrics.duration.with_label_values(&["gateway"]).observe(started.elapsed().as_secs_f64());
        ctx.metrics.reconciles.with_label_values(&["gateway", if result.is_ok() { "success" } else { "error" }]).inc();
        let retry = match result {
            Ok(()) => RESYNC,
            Err(e) => {
                ctx.metrics.errors.with_label_values(&["gateway", e.metric_label()]).inc();
                tracing::warn!("publishing gateway configs failed, retrying: {e}");
                Duration::from_secs(5)
            }
        };
        // Wait for a change, then let a burst settle: quiet for `debounce`, at most `max_delay`.
        tokio::select! {
            _ = ctx.trigger.notified() => {}
            _ = tokio::time::sleep(retry) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let first = Instant::now();
        loop {
            let left = ctx.opts.max_delay.saturating_sub(first.elapsed());
            if left.is_zero() {
                break;
            }
            tokio::select! {
                _ = ctx.trigger.notified() => continue,
                _ = tokio::time::sleep(ctx.opts.debounce.min(left)) => break,
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }
}

fn recover_last_good(ctx: &Context) -> HashMap<String, HashMap<String, PolicyConfig>> {
    let mut out: HashMap<String, HashMap<String, PolicyConfig>> = HashMap::new();
    for cm in ctx.stores.gateway_configmaps.state() {
        match desired::config_from_configmap(&cm) {
            Ok(config) => {
                out.insert(config.gateway.clone(), config.policies_by_key());
            }
            Err(e) => tracing::warn!(configmap = %cm.name_any(), "published config unreadable, not used as last good: {e}"),
        }
    }
    out
}

pub(super) async fn sync_all(ctx: &Arc<Context>, state: &mut LoopState) -> Result<(), Error> {
    let ns = &ctx.opts.namespace;
    let policies = ctx.stores.policies.state();
    let signing_keys = ctx.stores.signing_keys.state();
    let (published, rings) = desired::published_keys(&signing_keys, |n, name| ctx.stores.key_secrets.get(n, name));
    let existing = ctx.stores.gateway_configmaps.state();
    let names = desired::gateway_names(
        &policies,
        &ctx.opts.gateways,
        existing.iter().filter_map(|c| c.labels().get(desired::LABEL_GATEWAY).map(String::as_str)),
    );
    let configmaps: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), ns);
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let mut first_error = None;
    for gateway in names {
        let empty = HashMap::new();
        let inputs = desired::policy_inputs(&policies, &gateway, state.last_good.get(&gateway).unwrap_or(&empty));
        let tenancy = desired::tenancy(&ctx.opts.gateway_settings, ns, &gateway, &signing_keys);
        let compiled = policy::compile(&gateway, &inputs, &published, &tenancy);
        let keys = desired::gateway_keys_secret(ns, &compiled.config, &rings);
        let cm = desired::gateway_configmap(ns, &compiled.config, &keys);
        // Keys first: a config that mints with a key must find it when it arrives.
        let written = async {
            let current_keys = ctx.stores.gateway_secrets.get(ns, &desired::gateway_secret_name(&gateway));
            if apply_if_changed(&secrets, &keys, current_keys.as_deref()).await? == Applied::Written {
                ctx.metrics.writes.with_label_values(&["Secret"]).inc();
            }
            let current_cm = ctx.stores.gateway_configmaps.get(ns, &desired::gateway_configmap_name(&gateway));
            let applied = apply_if_changed(&configmaps, &cm, current_cm.as_deref()).await?;
            if applied == Applied::Written {
                ctx.metrics.writes.with_label_values(&["ConfigMap"]).inc();
                tracing::info!(gateway = %gateway, version = %compiled.config.version, routes = compiled.config.route_count(), "gateway config published");
            }
            Ok::<_, Error>(())
        }
        .await;
        let programmed = match &written {
            Ok(()) => {
                ctx.metrics.last_compile.with_label_values(&[&gateway]).set(Timestamp::now().as_second());
                let size = cm.binary_data.as_ref().and_then(|d| d.get(desired::CONFIG_KEY)).map_or(0, |b| b.0.len());
                ctx.metrics.config_bytes.with_label_values(&[&gateway]).set(size as i64);
                state.last_good.insert(gateway.clone(), compiled.config.policies_by_key());
                Programmed::Published { gateway: gateway.clone() }
            }
            Err(e) => Programmed::Failed { gateway: gateway.clone(), why: e.to_string() },
        };
        let remote: BTreeMap<String, Vec<String>> = compiled
            .config
            .policies
            .iter()
            .map(|p| {
                let uris = p.issuers.iter().filter_map(|i| match &i.keys {
                    KeySource::Remote { uri, .. } => Some(uri.clone()),
                    _ => None,
                });
                (p.key(), uris.collect())
            })
            .collect();
        let outcomes: HashMap<(&str, &str), &Outcome> =
            compiled.outcomes.iter().map(|o| ((o.namespace.as_str(), o.name.as_str()), &o.outcome)).collect();
        for p in policies.iter().filter(|p| p.spec.gateway == gateway) {
            let (namespace, name) = (p.namespace().unwrap_or_default(), p.name_any());
            let Some(outcome) = outcomes.get(&(namespace.as_str(), name.as_str())) else { continue };
            let key = format!("{namespace}/{name}");
            let warning = remote.get(&key).into_iter().flatten().find_map(|uri| ctx.probes.check(uri, ctx));
            if let Err(e) = write_policy_status(ctx, p, outcome, &programmed, warning.as_deref()).await {
                first_error.get_or_insert(e);
            }
        }
        if let Err(e) = written {
            first_error.get_or_insert(e);
        }
    }
    first_error.map_or(Ok(()), Err)
}

async fn write_policy_status(
    ctx: &Context,
    p: &AuthPolicy,
    outcome: &Outcome,
    programmed: &Programmed,
    warning: Option<&str>,
) -> Result<(), Error> {
    let status = desired::policy_status(p.status.as_ref(), p.metadata.generation, outcome, programmed, warning, Timestamp::now());
    if p.status.as_ref() == Some(&status) {
        return Ok(());
    }
    let api: Api<AuthPolicy> = Api::namespaced(ctx.client.clone(), &p.namespace().unwrap_or_default());
    apply_status(&api, &p.name_any(), &status).await?;
    // Events for what people care about: a rejection, and a new generation going live.
    let old = |t: &str| p.status.as_ref().and_then(|s| s.conditions.iter().find(|c| c.type_ == t).cloned());
    let new = |t: &str| status.conditions.iter().find(|c| c.type_ == t).cloned();
    if let (Some(a), prev) = (new("Accepted"), old("Accepted"))
        && a.status == "False"
        && prev.as_ref().is_none_or(|c| c.status != "False" || c.reason != a.reason || c.message != a.message)
    {
        publish_event(ctx, p, true, "Rejected", format!("{}: {}", a.reason, a.message)).await;
    }
    if let Some(pr) = new("Programmed")
        && pr.status == "True"
        && matches!(outcome, Outcome::Accepted)
        && p.status.as_ref().and_then(|s| s.observed_generation) != p.metadata.generation
    {
        publish_event(ctx, p, false, "Programmed", pr.message).await;
    }
    Ok(())
}
