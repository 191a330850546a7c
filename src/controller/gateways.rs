//! The gateway loop: on changes (debounced) compile every gateway's policies, publish its
//! ConfigMap and key Secret when they differ, then write policy statuses that differ.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::{Api, ResourceExt};
use tokio::sync::watch;

use super::apply::{Applied, apply, apply_if_changed, apply_status};
use super::claims::HeldClaims;
use super::dataplane::{self, History};
use super::desired::{self, Programmed};
use super::signingkeys::publish_event;
use super::{Context, Error};
use super::{exchanges, gateway_api, wiring};
use crate::api::{AuthPolicy, AuthPolicyStatus};
use crate::contract::heartbeat::{self, Heartbeat};
use crate::policy::GatewayConfig;
use crate::policy::config::{ExchangeConfig, KeySource};
use crate::policy::{self, Outcome, PolicyConfig};

/// A full resync even without changes (catches drift, e.g. a ConfigMap edited by hand).
const RESYNC: Duration = Duration::from_secs(300);
const PROBE_EVERY: Duration = Duration::from_secs(300);
/// How often statuses are re-derived from heartbeats without any event (replicas that stop
/// renewing send none).
const STATUS_EVERY: Duration = Duration::from_secs(heartbeat::RENEW_SECS);
/// Audit counts change with traffic: a policy's are rewritten at most this often.
const AUDIT_EVERY: Duration = Duration::from_secs(60);
/// Status writes in flight at once.
const STATUS_WRITES: usize = 16;
/// Status writes per pass (a few seconds of the API server under load).
const STATUS_BATCH: usize = 500;
/// Events in flight beside them: fewer, so that statuses keep most of the API server.
const EVENT_WRITES: usize = 4;

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
                let client = crate::plumbing::jwks_fetch::http_client(&ctx.opts.jwks_roots);
                let result = crate::plumbing::jwks_fetch::fetch_jwks(&client, &uri).await.map(|_| ());
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

#[derive(Default)]
pub(super) struct LoopState {
    /// Per gateway, the last accepted version of each policy (recovered from the published
    /// ConfigMaps at start, so a restart does not drop a broken policy's last good version).
    pub(super) last_good: HashMap<String, HashMap<String, Arc<PolicyConfig>>>,
    /// Per gateway, the same for TokenExchangePolicies.
    last_good_exchanges: HashMap<String, HashMap<String, ExchangeConfig>>,
    /// Per gateway, the validations of the last compilation.
    validations: HashMap<String, policy::ValidationCache>,
    /// Per gateway, what the last pass compiled and whether it was published: statuses are
    /// rewritten from this when only heartbeats change.
    published: BTreeMap<String, Pass>,
    /// Recent configs per gateway, to tell which replicas serve which policy generation.
    history: History,
    /// When each policy's audit counts were last written (they change with every request).
    audit_written: HashMap<String, Instant>,
    /// Per gateway, the heartbeats the statuses were last computed from: an unchanged data
    /// plane is not recomputed.
    seen: HashMap<String, (Vec<Heartbeat>, bool)>,
    /// Per gateway, which namespace holds which host.
    pub(super) claims: HashMap<String, HeldClaims>,
    /// Statuses written and not yet seen in the watch cache.
    statuses: WrittenStatuses,
    /// Gateway API: each attached policy's ancestors, and the generated objects that exist.
    wiring: (HashMap<String, Vec<wiring::Ancestor>>, BTreeMap<wiring::ObjectKey, wiring::Wired>),
}

/// Statuses this replica wrote, by policy: what, and the resourceVersion the write returned. A
/// pass that runs before the watch cache shows a write (under load, seconds later) takes the
/// written status as the current one; from the cache's older copy it would compute the same
/// status with new transition times and write it again.
#[derive(Default)]
struct WrittenStatuses(HashMap<String, (Option<String>, AuthPolicyStatus, Instant)>);

/// How long a write is trusted over a cache that does not show it yet.
const CACHE_CATCH_UP: Duration = Duration::from_secs(10);

impl WrittenStatuses {
    /// The status written for `key` when the cache (at `cached_version`) does not show it yet.
    fn unseen(&mut self, key: &str, cached_version: Option<&str>) -> Option<AuthPolicyStatus> {
        let (version, status, at) = self.0.get(key)?;
        if version.as_deref() == cached_version || at.elapsed() > CACHE_CATCH_UP {
            self.0.remove(key);
            return None;
        }
        Some(status.clone())
    }

    fn written(&mut self, key: String, resource_version: Option<String>, status: AuthPolicyStatus) {
        self.0.insert(key, (resource_version, status, Instant::now()));
    }
}

struct Pass {
    config: Arc<GatewayConfig>,
    outcomes: HashMap<(String, String), (Option<i64>, Outcome)>,
    exchange_outcomes: HashMap<(String, String), (Option<i64>, Outcome)>,
    programmed: Programmed,
    /// Remote JWKS per policy key (for the controller's own reachability probe).
    remote: BTreeMap<String, Vec<String>>,
    /// Why the cluster's ServiceAccount issuer is missing from a config that needs it.
    cluster_warning: Option<String>,
}

impl LoopState {
    pub(super) fn recovered(last_good: HashMap<String, HashMap<String, Arc<PolicyConfig>>>) -> Self {
        Self { last_good, ..Default::default() }
    }
}

pub async fn run(ctx: Arc<Context>, mut stop: watch::Receiver<bool>) {
    // Compile only from complete caches: a half-listed cache would look like deleted policies.
    while !ctx.ready.load(Ordering::Acquire) {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
    let mut state = LoopState::recovered(recover_last_good(&ctx));
    for cm in ctx.stores.gateway_configmaps.state() {
        if desired::config_gateway(&cm).is_some()
            && let Ok(config) = desired::config_from_configmap(&cm)
        {
            state.history.record(&config);
            let exchanges = config.exchanges.iter().map(|x| (format!("{}/{}", x.namespace, x.name), x.clone())).collect();
            state.last_good_exchanges.insert(config.gateway.clone(), exchanges);
        }
    }
    let mut full = true;
    let mut retry = Duration::ZERO;
    let mut last_full = Instant::now();
    loop {
        let started = Instant::now();
        let (kind, result) = if full {
            ctx.pending.store(0, Ordering::Relaxed);
            ctx.metrics.queue_depth.with_label_values(&["gateway"]).set(0);
            last_full = Instant::now();
            ("gateway", sync_all(&ctx, &mut state).await)
        } else {
            ("status", write_statuses(&ctx, &mut state, false).await)
        };
        ctx.metrics.duration.with_label_values(&[kind]).observe(started.elapsed().as_secs_f64());
        ctx.metrics.reconciles.with_label_values(&[kind, if result.is_ok() { "success" } else { "error" }]).inc();
        if full {
            retry = match result {
                Ok(()) => RESYNC,
                Err(e) => {
                    ctx.metrics.errors.with_label_values(&["gateway", e.metric_label()]).inc();
                    tracing::warn!("publishing gateway configs failed, retrying: {e}");
                    Duration::from_secs(5)
                }
            };
        } else if let Err(e) = result {
            ctx.metrics.errors.with_label_values(&["status", e.metric_label()]).inc();
            tracing::warn!("writing data-plane status failed, retrying: {e}");
        }
        // Wait for a change (inputs: compile; heartbeats only: statuses), then let a burst
        // settle: quiet for `debounce`, at most `max_delay`. Statuses are also re-derived every
        // heartbeat period, as replicas that stop renewing send no event.
        let due = retry.saturating_sub(last_full.elapsed());
        full = tokio::select! {
            _ = ctx.trigger.notified() => true,
            _ = ctx.status_trigger.notified() => false,
            _ = tokio::time::sleep(due.min(STATUS_EVERY)) => due <= STATUS_EVERY,
            _ = stop.wait_for(|s| *s) => return,
        };
        let first = Instant::now();
        loop {
            let left = ctx.opts.max_delay.saturating_sub(first.elapsed());
            if left.is_zero() {
                break;
            }
            tokio::select! {
                _ = ctx.trigger.notified() => full = true,
                _ = ctx.status_trigger.notified() => {}
                _ = tokio::time::sleep(ctx.opts.debounce.min(left)) => break,
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }
}

fn recover_last_good(ctx: &Context) -> HashMap<String, HashMap<String, Arc<PolicyConfig>>> {
    let mut out: HashMap<String, HashMap<String, Arc<PolicyConfig>>> = HashMap::new();
    for cm in ctx.stores.gateway_configmaps.state().iter().filter(|cm| desired::config_gateway(cm).is_some()) {
        match desired::config_from_configmap(cm) {
            Ok(config) => {
                out.insert(config.gateway.clone(), config.policies_by_key());
            }
            Err(e) => tracing::warn!(configmap = %cm.name_any(), "published config unreadable, not used as last good: {e}"),
        }
    }
    out
}

pub(super) async fn sync_all(ctx: &Arc<Context>, state: &mut LoopState) -> Result<(), Error> {
    let started = Instant::now();
    let ns = &ctx.opts.namespace;
    let policies = ctx.stores.policies.state();
    let signing_keys = ctx.stores.signing_keys.state();
    let (published, rings) = desired::published_keys(&signing_keys, |n, name| ctx.stores.key_secrets.get(n, name));
    let exchange_policies = ctx.stores.exchanges.state();
    let existing = ctx.stores.gateway_configmaps.state();
    let mut names = desired::gateway_names(
        &policies,
        &ctx.opts.gateways,
        existing.iter().filter_map(|c| c.labels().get(desired::LABEL_GATEWAY).map(String::as_str)),
    );
    names.extend(exchange_policies.iter().map(|x| x.spec.gateway.clone()));
    let configmaps: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), ns);
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let mut first_error = None;
    let plan = ctx.stores.gateway_api.get().map(|s| wiring::plan(&policies, &s.world(), &ctx.opts.wiring));
    for gateway in &names {
        let gateway = gateway.clone();
        let empty = HashMap::new();
        let mut inputs = desired::policy_inputs(&policies, &gateway, state.last_good.get(&gateway).unwrap_or(&empty));
        desired::resolve_client_secrets(&mut inputs, |n, name| ctx.stores.client_secrets.get(n, name));
        if let Some(plan) = &plan {
            for input in inputs.iter_mut().filter(|i| !i.spec.target_refs.is_empty()) {
                input.attachment = plan.attachments.get(&input.meta.key()).cloned();
            }
        }
        let claims_name = desired::host_claims_configmap_name(&gateway);
        let held = state.claims.entry(gateway.clone()).or_default();
        let (held_now, problems) = held.current(ctx.stores.gateway_configmaps.get(ns, &claims_name).as_deref());
        let held_now = held_now.clone();
        for p in problems {
            tracing::warn!(gateway = %gateway, configmap = %claims_name, "host claims: {p}; the line is skipped (its claim is released)");
        }
        let tenancy = desired::tenancy(&ctx.opts.gateway_settings, ns, &gateway, &signing_keys, held_now.clone());
        let mut compiled =
            policy::compile_cached(&gateway, &inputs, &published, &tenancy, state.validations.entry(gateway.clone()).or_default());
        let exchange_inputs = exchanges::inputs(&exchange_policies, &gateway, state.last_good_exchanges.get(&gateway));
        let (needs_cluster, cluster) = exchanges::cluster_issuer_for(ctx, &compiled.config, &exchange_inputs);
        let exchange_outcomes = policy::exchange::complete(&mut compiled.config, cluster, &exchange_inputs, &published, &tenancy);
        let client_secret = |r: &crate::policy::config::SecretRef| {
            crate::contract::publish::client_secret_value(ctx.stores.client_secrets.get(&r.namespace, &r.name).as_deref(), r)
        };
        let keys = desired::gateway_keys_secret(ns, &compiled.config, &rings, client_secret);
        let cm = desired::gateway_configmap(ns, &compiled.config, &keys);
        let claims_cm = (compiled.ledger != held_now).then(|| desired::host_claims_configmap(ns, &gateway, &compiled.ledger));
        // The API server would refuse it, again on every retry: refused here, with the size in
        // every status, before anything of this pass is written.
        let too_large = std::iter::once((&cm, "config"))
            .chain(claims_cm.as_ref().map(|c| (c, "host claims")))
            .map(|(cm, object)| (object, desired::configmap_bytes(cm)))
            .find(|(_, bytes)| *bytes > desired::CONFIGMAP_MAX_BYTES);
        // Host claims first: a host the config serves is held before the config goes out, so
        // that a restart or a deletion right after cannot hand it to another namespace. Then
        // keys: a config that mints with a key must find it when it arrives.
        let written = async {
            if too_large.is_some() {
                return Ok(());
            }
            if let Some(claims_cm) = &claims_cm {
                let written = apply(&configmaps, claims_cm).await?;
                ctx.metrics.writes.with_label_values(&["ConfigMap"]).inc();
                held.written(compiled.ledger.clone(), written.metadata.resource_version);
            }
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
        let programmed = match (&written, too_large) {
            (Ok(()), Some((object, bytes))) => {
                tracing::error!(gateway = %gateway, version = %compiled.config.version, object, bytes, limit = desired::CONFIGMAP_MAX_BYTES,
                    "gateway config too large for a ConfigMap: not published, the last published config keeps serving");
                Programmed::TooLarge { gateway: gateway.clone(), object: object.to_owned(), bytes }
            }
            (Ok(()), None) => {
                ctx.metrics.last_compile.with_label_values(&[&gateway]).set(Timestamp::now().as_second());
                let size = cm.binary_data.as_ref().and_then(|d| d.get(desired::CONFIG_KEY)).map_or(0, |b| b.0.len());
                ctx.metrics.config_bytes.with_label_values(&[&gateway]).set(size as i64);
                state.last_good.insert(gateway.clone(), compiled.config.policies_by_key());
                let exchanges = compiled.config.exchanges.iter().map(|x| (format!("{}/{}", x.namespace, x.name), x.clone())).collect();
                state.last_good_exchanges.insert(gateway.clone(), exchanges);
                state.history.record(&compiled.config);
                Programmed::Published { gateway: gateway.clone() }
            }
            (Err(e), _) => Programmed::Failed { gateway: gateway.clone(), why: e.to_string() },
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
        let by_key = |o: Vec<policy::PolicyOutcome>| o.into_iter().map(|o| ((o.namespace, o.name), (o.generation, o.outcome))).collect();
        let (outcomes, exchange_outcomes) = (by_key(compiled.outcomes), by_key(exchange_outcomes));
        let cluster_warning = needs_cluster.then(|| exchanges::cluster_issuer_warning(ctx)).flatten();
        let pass = Pass { config: Arc::new(compiled.config), outcomes, exchange_outcomes, programmed, remote, cluster_warning };
        state.published.insert(gateway.clone(), pass);
        if let Err(e) = written {
            first_error.get_or_insert(e);
        }
    }
    state.published.retain(|g, _| names.contains(g));
    state.validations.retain(|g, _| names.contains(g));
    // The gateways' wiring after the configs: a route sent to the authorizer before its policy
    // arrives there is denied (no route), never let through.
    if let (Some(stores), Some(plan)) = (ctx.stores.gateway_api.get(), plan) {
        let (live, error) = gateway_api::write(&ctx.client, stores, &plan).await;
        if let Some(e) = error {
            first_error.get_or_insert(e);
        }
        state.wiring = (plan.ancestors, live);
    }
    let published_in = started.elapsed();
    if let Err(e) = write_statuses(ctx, state, true).await {
        first_error.get_or_insert(e);
    }
    // Where a slow pass spent its time (thousands of status writes after a bulk apply, or the
    // compilation itself).
    if started.elapsed() > Duration::from_secs(1) {
        tracing::info!(
            policies = policies.len(),
            compiled_and_published_ms = published_in.as_millis() as u64,
            statuses_ms = (started.elapsed() - published_in).as_millis() as u64,
            "slow pass"
        );
    }
    first_error.map_or(Ok(()), Err)
}

/// Writes every policy status that differs from what its compilation, its gateway's
/// publication and the gateway replicas' heartbeats say. `inputs_changed`: policies were
/// compiled since the last call (otherwise a gateway whose heartbeats did not change is
/// skipped).
pub(super) async fn write_statuses(ctx: &Arc<Context>, state: &mut LoopState, inputs_changed: bool) -> Result<(), Error> {
    let now = Timestamp::now();
    let leases = ctx.stores.heartbeats.state();
    let policies = ctx.stores.policies.state();
    let mut first_error = None;
    let mut writes = Vec::new();
    state.statuses.0.retain(|_, (_, _, at)| at.elapsed() < CACHE_CATCH_UP);
    for (gateway, pass) in &state.published {
        let live = heartbeat::live(leases.iter().map(|l| &**l), gateway, now);
        // Recomputed when a heartbeat changed (audit counts included: the first counts show at
        // once) or when some policy's audit counts may be written again.
        let audit_due = state.audit_written.values().any(|t| t.elapsed() >= AUDIT_EVERY);
        let seen = (live.clone(), audit_due);
        if !inputs_changed && state.seen.get(gateway) == Some(&seen) {
            continue;
        }
        state.seen.insert(gateway.clone(), seen);
        let in_config: HashMap<String, &PolicyConfig> = pass.config.policies.iter().map(|p| (p.key(), &**p)).collect();
        for p in policies.iter().filter(|p| p.spec.gateway == *gateway) {
            let (namespace, name) = (p.namespace().unwrap_or_default(), p.name_any());
            // Changed since it was compiled: the next compile writes its status.
            let Some((generation, outcome)) = pass.outcomes.get(&(namespace.clone(), name.clone())) else { continue };
            if *generation != p.metadata.generation {
                continue;
            }
            let key = format!("{namespace}/{name}");
            let config = in_config.get(&key).copied();
            let cluster_warning = config.filter(|c| c.issuers.iter().any(|i| i.is_cluster())).and(pass.cluster_warning.clone());
            let warning = pass.remote.get(&key).into_iter().flatten().find_map(|uri| ctx.probes.check(uri, ctx)).or(cluster_warning);
            let plane = dataplane::View {
                enforced: dataplane::enforced(gateway, &key, config.map(|c| c.generation), &live, &state.history),
                issuers: dataplane::issuers(config, &live),
                audit: dataplane::audit(&key, config, &live),
            };
            let written = state.statuses.unseen(&key, p.metadata.resource_version.as_deref());
            let existing = written.as_ref().or(p.status.as_ref());
            let mut status = desired::policy_status(existing, p.metadata.generation, outcome, &pass.programmed, warning.as_deref(), now);
            dataplane::add_to_status(&mut status, existing, plane, p.metadata.generation, now);
            if let Some(ancestors) = state.wiring.0.get(&key) {
                let served = match status.conditions.iter().find(|c| c.type_ == "Enforced") {
                    Some(c) if c.status == "True" => Ok(()),
                    Some(c) => Err(c.message.clone()),
                    None => Err("the Portcullis replicas do not serve this policy yet".to_owned()),
                };
                let before = existing.map(|s| s.ancestors.as_slice()).unwrap_or_default();
                status.ancestors = wiring::ancestor_statuses(ancestors, &state.wiring.1, served, before, p.metadata.generation, now);
            }
            let audit_fresh = state.audit_written.get(&key).is_some_and(|t| t.elapsed() < AUDIT_EVERY);
            if audit_fresh {
                dataplane::keep_recent_audit(&mut status, existing);
            }
            if existing == Some(&status) {
                continue;
            }
            let audit_changed = existing.map_or(!status.audit.is_empty(), |s| s.audit != status.audit);
            let previous = existing.cloned();
            writes.push((p.clone(), outcome.clone(), status, previous, key, audit_changed));
        }
    }
    // A new verdict first (accepted or not, programmed or not), then what the data plane says
    // (Enforced, issuers, audit): after a bulk apply the gateway's reload changes every policy's
    // Enforced, and those writes must not hold back the policies not yet programmed.
    writes.sort_by_key(|(_, _, status, previous, _, _)| !verdict_changed(status, previous.as_ref()));
    // A batch at a time: the 30,000 writes of a 10,000-policy apply would hold the loop for a
    // minute and more, and an edit meanwhile would wait for all of them. The rest go out in
    // the status passes that follow at once (each recomputes what still differs).
    if writes.len() > STATUS_BATCH {
        tracing::debug!(deferred = writes.len() - STATUS_BATCH, "status writes deferred to the next status pass");
        writes.truncate(STATUS_BATCH);
        state.seen.clear();
        ctx.status_trigger.notify_one();
    }
    // Thousands of statuses after a bulk apply: several requests in flight, not one at a time.
    let written: Vec<_> = futures::stream::iter(writes)
        .map(|(p, outcome, status, previous, key, audit_changed)| async move {
            let api: Api<AuthPolicy> = Api::namespaced(ctx.client.clone(), &p.namespace().unwrap_or_default());
            let result = apply_status(&api, &p.name_any(), &status).await;
            let events = if result.is_ok() { policy_events(&p, &outcome, &status, previous.as_ref()) } else { vec![] };
            (p, status, key, audit_changed, result, events)
        })
        .buffer_unordered(STATUS_WRITES)
        .collect()
        .await;
    // Events after every status: at a bulk apply they are as many requests again, and the
    // statuses are what people and tools wait for.
    let mut events = Vec::new();
    for (p, status, key, audit_changed, result, policy_events) in written {
        match result {
            Ok(resource_version) => {
                if audit_changed {
                    state.audit_written.insert(key.clone(), Instant::now());
                }
                state.statuses.written(key, resource_version, status);
                events.extend(policy_events.into_iter().map(|e| (p.clone(), e)));
            }
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    let live = |g: &str| heartbeat::live(leases.iter().map(|l| &**l), g, now);
    let passes = state.published.iter().map(|(g, p)| (g, &*p.config, &p.exchange_outcomes, &p.programmed));
    if let Err(e) = exchanges::write_statuses(ctx, passes, live, &state.history, now).await {
        first_error.get_or_insert(e);
    }
    // Sent beside the next pass, not before it: after a bulk apply they took a pass 20 s longer,
    // with the next policies waiting.
    if !events.is_empty() {
        let ctx = ctx.clone();
        tokio::spawn(async move {
            futures::stream::iter(events)
                .for_each_concurrent(EVENT_WRITES, |(p, (warning, reason, note))| {
                    let ctx = &ctx;
                    async move { publish_event(ctx, &*p, warning, reason, note).await }
                })
                .await;
        });
    }
    first_error.map_or(Ok(()), Err)
}

/// Whether the Accepted or Programmed condition (or the generation they observed) changes.
fn verdict_changed(status: &AuthPolicyStatus, previous: Option<&AuthPolicyStatus>) -> bool {
    let verdict = |s: &AuthPolicyStatus| {
        let conditions = s.conditions.iter().filter(|c| c.type_ == "Accepted" || c.type_ == "Programmed");
        conditions.map(|c| (c.type_.clone(), c.status.clone(), c.reason.clone(), c.observed_generation)).collect::<Vec<_>>()
    };
    previous.is_none_or(|p| verdict(p) != verdict(status))
}

/// The Events a policy's new status calls for: a rejection, a new generation going live, an
/// issuer starting or stopping to fail on the gateways.
fn policy_events(
    p: &AuthPolicy,
    outcome: &Outcome,
    status: &AuthPolicyStatus,
    previous: Option<&AuthPolicyStatus>,
) -> Vec<(bool, &'static str, String)> {
    let mut events = Vec::new();
    let old = |t: &str| previous.and_then(|s| s.conditions.iter().find(|c| c.type_ == t).cloned());
    let new = |t: &str| status.conditions.iter().find(|c| c.type_ == t).cloned();
    if let (Some(a), prev) = (new("Accepted"), old("Accepted"))
        && a.status == "False"
        && prev.as_ref().is_none_or(|c| c.status != "False" || c.reason != a.reason || c.message != a.message)
    {
        events.push((true, "Rejected", format!("{}: {}", a.reason, a.message)));
    }
    // Going live is the Programmed condition becoming True for this generation — also when the
    // status already observed the generation (it was refused for a missing SigningKey, or the
    // publication failed, and then went live without an edit).
    if let Some(pr) = new("Programmed")
        && pr.status == "True"
        && matches!(outcome, Outcome::Accepted)
        && old("Programmed").is_none_or(|c| c.status != "True" || c.message != pr.message || c.observed_generation != p.metadata.generation)
    {
        events.push((false, "Programmed", pr.message));
    }
    if let Some(ir) = new("IssuersReady")
        && let Some(before) = old("IssuersReady")
        && ir.status != before.status
    {
        match ir.status.as_str() {
            "False" => events.push((true, "IssuerFailing", ir.message)),
            "True" if before.status == "False" => events.push((false, "IssuerRecovered", ir.message)),
            _ => {}
        }
    }
    events
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(conditions: &[(&str, &str, &str, i64)]) -> AuthPolicyStatus {
        let conditions: Vec<serde_json::Value> = conditions
            .iter()
            .map(|(t, s, r, g)| serde_json::json!({"type": t, "status": s, "reason": r, "message": "m", "observedGeneration": g, "lastTransitionTime": "2026-01-01T00:00:00Z"}))
            .collect();
        serde_json::from_value(serde_json::json!({"conditions": conditions})).unwrap()
    }

    #[test]
    fn a_new_verdict_is_told_apart_from_what_the_data_plane_adds() {
        let programmed = status(&[("Accepted", "True", "Valid", 1), ("Programmed", "True", "ConfigPublished", 1)]);
        let enforced =
            status(&[("Accepted", "True", "Valid", 1), ("Programmed", "True", "ConfigPublished", 1), ("Enforced", "True", "Enforced", 1)]);
        assert!(verdict_changed(&programmed, None), "a first status");
        assert!(!verdict_changed(&enforced, Some(&programmed)), "only Enforced changed");
        let next = status(&[("Accepted", "True", "Valid", 2), ("Programmed", "True", "ConfigPublished", 2)]);
        assert!(verdict_changed(&next, Some(&enforced)), "a new generation");
        let refused = status(&[("Accepted", "False", "Invalid", 1), ("Programmed", "True", "ConfigPublished", 1)]);
        assert!(verdict_changed(&refused, Some(&programmed)));
    }
}
