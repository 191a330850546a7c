//! The Kubernetes controller (I/O, thin): watches AuthPolicies, SigningKeys and the objects
//! Portcullis owns; while it holds the leader Lease it reconciles SigningKeys into keyring
//! Secrets and JWKS ConfigMaps, and compiles every gateway's policies into its ConfigMap and key
//! Secret, writing statuses and Events.
//!
//! ```text
//!  watches (always) ──▶ stores ──┬─▶ SigningKey Controller ─ plan() ─▶ Secret, <name>-jwks, status, Events
//!        │ events                │          (leader only)
//!        └──────────▶ trigger ───┴─▶ gateway loop (debounced) ─ compile() ─▶ portcullis-gateway-<g>[-keys],
//!                                           (leader only)                     AuthPolicy status, Events
//! ```
//! Every decision is made by pure functions (`desired`, `policy`, `keys::schedule`); this module
//! reads from watch caches (no per-event LIST) and writes only what differs.

pub mod apply;
mod claims;
pub mod cluster_issuer;
pub mod dataplane;
pub mod desired;
pub mod exchanges;
pub mod gateway_api;
mod gateways;
pub mod leader;
pub mod metrics;
mod signingkeys;
pub mod wiring;

#[cfg(test)]
mod api_tests;
#[cfg(test)]
mod desired_tests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_controllers_own_status_writes_wake_no_compilation() {
        let mut p = crate::api::AuthPolicy::new("orders", serde_json::from_value(serde_json::json!({"rules": []})).unwrap());
        p.metadata.namespace = Some("shop".into());
        p.metadata.generation = Some(1);
        p.metadata.resource_version = Some("10".into());
        let mut seen = Seen::default();
        let apply = |p: &crate::api::AuthPolicy| watcher::Event::Apply(p.clone());
        assert!(seen.wakes(&apply(&p), spec_change));
        // A status write: new resourceVersion, same generation.
        p.metadata.resource_version = Some("11".into());
        p.status = Some(Default::default());
        assert!(!seen.wakes(&apply(&p), spec_change));
        // (For the objects Portcullis owns, every write counts.)
        let mut owned = Seen::default();
        assert!(owned.wakes(&apply(&p), any_change));
        p.metadata.resource_version = Some("12".into());
        assert!(owned.wakes(&apply(&p), any_change));
        // An edit of the spec.
        p.metadata.generation = Some(2);
        assert!(seen.wakes(&apply(&p), spec_change));
        // Deleted, and created again under the same name (generation 1 again).
        assert!(seen.wakes(&watcher::Event::Delete(p.clone()), spec_change));
        p.metadata.generation = Some(1);
        assert!(seen.wakes(&apply(&p), spec_change));
        assert!(seen.wakes(&watcher::Event::<crate::api::AuthPolicy>::InitDone, spec_change));
        // A SigningKey's annotations (rotate, revoke, verifiable-from) matter too.
        let mut sk = crate::api::SigningKey::new("k", serde_json::from_value(serde_json::json!({"algorithm": "EdDSA"})).unwrap());
        sk.metadata.generation = Some(1);
        let mut seen = Seen::default();
        assert!(seen.wakes(&watcher::Event::Apply(sk.clone()), spec_or_annotation_change));
        sk.status = Some(Default::default());
        assert!(!seen.wakes(&watcher::Event::Apply(sk.clone()), spec_or_annotation_change));
        sk.metadata.annotations = Some([("portcullis.dev/rotate".to_owned(), "now".to_owned())].into());
        assert!(seen.wakes(&watcher::Event::Apply(sk), spec_or_annotation_change));
    }
}

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::{Notify, watch};

use crate::api::{AuthPolicy, SigningKey, TokenExchangePolicy};
use metrics::ControllerMetrics;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[source] kube::Error),
    #[error("{0} was changed by someone else; retrying from the latest version")]
    Conflict(String),
    #[error("keys: {0}")]
    Keys(#[from] crate::keys::KeyError),
}

impl Error {
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Kube(_) => "kube",
            Self::Conflict(_) => "conflict",
            Self::Keys(_) => "keys",
        }
    }
}

/// Which namespaces the controller watches.
#[derive(Debug, Clone)]
pub enum Scope {
    All,
    Namespaces(Vec<String>),
}

impl Scope {
    fn apis<K>(&self, client: &Client) -> Vec<Api<K>>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        K::DynamicType: Default,
    {
        match self {
            Self::All => vec![Api::all(client.clone())],
            Self::Namespaces(ns) => ns.iter().map(|n| Api::namespaced(client.clone(), n)).collect(),
        }
    }
}

/// The watch caches of one kind across the watched namespaces.
#[derive(Clone)]
pub struct MultiStore<K: Resource + 'static>(pub Vec<Store<K>>)
where
    K::DynamicType: std::hash::Hash + Eq + Clone;

impl<K> MultiStore<K>
where
    K: Resource + Clone + 'static,
    K::DynamicType: std::hash::Hash + Eq + Clone + Default,
{
    pub fn state(&self) -> Vec<Arc<K>> {
        let mut all: Vec<Arc<K>> = self.0.iter().flat_map(Store::state).collect();
        all.sort_by(|a, b| (&a.meta().namespace, &a.meta().name).cmp(&(&b.meta().namespace, &b.meta().name)));
        all
    }

    pub fn get(&self, namespace: &str, name: &str) -> Option<Arc<K>> {
        let key = reflector::ObjectRef::<K>::new(name).within(namespace);
        self.0.iter().find_map(|s| s.get(&key))
    }

    pub async fn wait_until_ready(&self) {
        for s in &self.0 {
            let _ = s.wait_until_ready().await;
        }
    }
}

pub struct Stores {
    pub policies: MultiStore<AuthPolicy>,
    pub exchanges: MultiStore<TokenExchangePolicy>,
    pub signing_keys: MultiStore<SigningKey>,
    /// SigningKey keyring Secrets (label `portcullis.dev/signing-key`).
    pub key_secrets: MultiStore<Secret>,
    /// Sign-in client Secrets (label `portcullis.dev/client-secret`): only those, never every
    /// Secret of the cluster.
    pub client_secrets: MultiStore<Secret>,
    /// SigningKey JWKS ConfigMaps (label `portcullis.dev/signing-key`).
    pub jwks: MultiStore<ConfigMap>,
    /// Gateway ConfigMaps and Secrets in the controller's namespace (label `portcullis.dev/gateway`).
    pub gateway_configmaps: MultiStore<ConfigMap>,
    pub gateway_secrets: MultiStore<Secret>,
    /// Gateway replicas' heartbeat Leases in the controller's namespace (label
    /// `portcullis.dev/heartbeat`).
    pub heartbeats: MultiStore<Lease>,
    /// Gateway API and the generated objects, once the cluster serves Gateway API (found at
    /// start, or later: set only when its caches are complete).
    pub gateway_api: std::sync::OnceLock<gateway_api::Stores>,
}

pub struct Options {
    /// Namespace of the controller: gateway ConfigMaps, Secrets and the Lease live here.
    pub namespace: String,
    pub scope: Scope,
    /// Gateways that always get a config, even before any policy names them.
    pub gateways: Vec<String>,
    pub identity: String,
    pub lease_name: Option<String>,
    /// Quiet time before a burst of changes is compiled, and the longest a change waits.
    pub debounce: Duration,
    pub max_delay: Duration,
    /// Extra CA certificates for probing JWKS URLs (as the gateways' `--jwks-ca-file`).
    pub jwks_roots: Vec<rustls::pki_types::CertificateDer<'static>>,
    /// The platform team's word per gateway: hosts, host-less namespaces, minting keys.
    pub gateway_settings: crate::policy::tenancy::SettingsByGateway,
    /// How Gateway API gateways are wired to the authorizer.
    pub wiring: wiring::WiringSettings,
    /// How often a cluster without Gateway API is asked again whether it serves it now.
    pub rediscover: Duration,
}

/// Each replica writes the Lease under a field manager of its own: with one shared manager,
/// server-side apply cannot see two writers contend, and another replica silently takes the
/// Lease.
pub fn lease_field_manager(identity: &str) -> String {
    let name = format!("{}-{identity}", desired::FIELD_MANAGER);
    // Field managers are at most 128 characters.
    name.chars().take(128).collect()
}

pub struct Context {
    pub client: Client,
    pub opts: Options,
    pub stores: Stores,
    pub recorder: Recorder,
    pub metrics: ControllerMetrics,
    /// Wakes the gateway loop; `pending` counts the watch events it has not compiled yet.
    pub trigger: Notify,
    /// Wakes the gateway loop for statuses only (a heartbeat changed).
    pub status_trigger: Notify,
    pub pending: AtomicI64,
    pub ready: AtomicBool,
    /// The cluster's ServiceAccount token issuer, as last discovered.
    pub cluster_issuer: std::sync::Mutex<cluster_issuer::Discovered>,
    probes: gateways::IssuerProbes,
    rings_written: signingkeys::WrittenRings,
    /// Tasks started after `run` began (Gateway API found later), stopped with the others.
    background: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Context {
    pub fn new(client: Client, opts: Options, stores: Stores, metrics: ControllerMetrics) -> Self {
        let reporter = Reporter { controller: "portcullis".into(), instance: Some(opts.identity.clone()) };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            stores,
            metrics,
            trigger: Notify::new(),
            status_trigger: Notify::new(),
            pending: AtomicI64::new(0),
            ready: AtomicBool::new(false),
            cluster_issuer: Default::default(),
            probes: gateways::IssuerProbes::default(),
            rings_written: signingkeys::WrittenRings::default(),
            background: Default::default(),
            opts,
        }
    }

    fn heartbeat_changed(&self) {
        self.status_trigger.notify_one();
    }

    fn changed(&self) {
        let n = self.pending.fetch_add(1, Ordering::Relaxed) + 1;
        self.metrics.queue_depth.with_label_values(&["gateway"]).set(n);
        self.trigger.notify_one();
    }
}

/// What of an object the controller reacts to: a change of this value wakes `on_event`.
type Fingerprint<K> = fn(&K) -> u64;

/// Any change (objects Portcullis owns: every change of theirs matters).
fn any_change<K: Resource>(obj: &K) -> u64 {
    hash_of(&obj.meta().resource_version)
}

/// A change of the spec (the generation): status writes — the controller's own, thousands at a
/// time — wake nothing.
fn spec_change<K: Resource>(obj: &K) -> u64 {
    hash_of(&obj.meta().generation)
}

/// A change of the spec or the annotations (a SigningKey's rotate, revoke and verifiable-from).
fn spec_or_annotation_change<K: Resource>(obj: &K) -> u64 {
    hash_of(&(obj.meta().generation, &obj.meta().annotations))
}

fn hash_of(v: &impl std::hash::Hash) -> u64 {
    use std::hash::BuildHasher;
    foldhash::fast::FixedState::with_seed(0).hash_one(v)
}

/// The fingerprint of every object a watch delivered, to tell the changes that matter.
#[derive(Default)]
struct Seen(std::collections::HashMap<(Option<String>, Option<String>), u64>);

impl Seen {
    /// Whether `event` changes what the controller reacts to.
    fn wakes<K: Resource>(&mut self, event: &watcher::Event<K>, fingerprint: Fingerprint<K>) -> bool {
        match event {
            watcher::Event::Apply(obj) | watcher::Event::InitApply(obj) => {
                let key = (obj.meta().namespace.clone(), obj.meta().name.clone());
                let fp = fingerprint(obj);
                self.0.insert(key, fp) != Some(fp)
            }
            watcher::Event::Delete(obj) => {
                self.0.remove(&(obj.meta().namespace.clone(), obj.meta().name.clone()));
                true
            }
            watcher::Event::InitDone => true,
            watcher::Event::Init => false,
        }
    }
}

/// Starts a reflector for every API of a kind; returns the store and the tasks driving them.
/// `on_event` runs for each object whose `fingerprint` changed, each deletion and each (re)list.
fn watch_kind<K>(
    ctx_slot: Arc<tokio::sync::OnceCell<Arc<Context>>>,
    apis: Vec<Api<K>>,
    config: watcher::Config,
    fingerprint: Fingerprint<K>,
    on_event: fn(&Context),
) -> (MultiStore<K>, Vec<tokio::task::JoinHandle<()>>)
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    K::DynamicType: std::hash::Hash + Eq + Clone + Default + Send + Sync,
{
    let mut stores = Vec::new();
    let mut tasks = Vec::new();
    for api in apis {
        let (reader, writer) = reflector::store::<K>();
        stores.push(reader);
        // The cache never needs managedFields or kubectl's copy of the last applied object
        // (each as large as the spec): dropped before they are stored.
        let stream = watcher(api, config.clone()).backoff(crate::plumbing::watch_backoff::WatchBackoff::default()).modify(|obj: &mut K| {
            let meta = obj.meta_mut();
            meta.managed_fields = None;
            if let Some(a) = meta.annotations.as_mut() {
                a.remove("kubectl.kubernetes.io/last-applied-configuration");
            }
        });
        let stream = reflector::reflector(writer, stream);
        let slot = ctx_slot.clone();
        tasks.push(tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            let mut seen = Seen::default();
            while let Some(event) = stream.next().await {
                let wake = match &event {
                    Ok(event) => seen.wakes(event, fingerprint),
                    Err(e) => {
                        tracing::warn!(kind = %K::kind(&Default::default()), "watch failed, retrying: {e}");
                        false
                    }
                };
                if wake && let Some(ctx) = slot.get() {
                    on_event(ctx);
                }
            }
        }));
    }
    (MultiStore(stores), tasks)
}

/// Runs the controller until `shutdown` resolves: watches always, reconcilers while leader.
pub async fn run(
    client: Client,
    opts: Options,
    metrics: ControllerMetrics,
    shutdown: impl std::future::Future<Output = ()>,
    published: Arc<tokio::sync::OnceCell<Arc<Context>>>,
) -> anyhow::Result<Arc<Context>> {
    let slot = Arc::new(tokio::sync::OnceCell::new());
    let managed_keys =
        watcher::Config::default().labels(&format!("{}={},{}", desired::MANAGED_BY.0, desired::MANAGED_BY.1, desired::LABEL_SIGNING_KEY));
    let managed_gateways =
        watcher::Config::default().labels(&format!("{}={},{}", desired::MANAGED_BY.0, desired::MANAGED_BY.1, desired::LABEL_GATEWAY));
    let own_ns = Scope::Namespaces(vec![opts.namespace.clone()]);
    let changed = Context::changed;
    let all = watcher::Config::default();
    let (policies, mut tasks) = watch_kind(slot.clone(), opts.scope.apis(&client), all.clone(), spec_change, changed);
    let (signing_keys, t) = watch_kind(slot.clone(), opts.scope.apis(&client), all.clone(), spec_or_annotation_change, changed);
    tasks.extend(t);
    let (exchanges, t) = watch_kind(slot.clone(), opts.scope.apis(&client), all, spec_change, changed);
    tasks.extend(t);
    let (key_secrets, t) = watch_kind(slot.clone(), opts.scope.apis(&client), managed_keys.clone(), any_change, changed);
    tasks.extend(t);
    let (jwks, t) = watch_kind(slot.clone(), opts.scope.apis(&client), managed_keys, any_change, changed);
    tasks.extend(t);
    let labelled_client_secrets = watcher::Config::default().labels(crate::policy::validate::CLIENT_SECRET_LABEL);
    let (client_secrets, t) = watch_kind(slot.clone(), opts.scope.apis(&client), labelled_client_secrets, any_change, changed);
    tasks.extend(t);
    let (gateway_configmaps, t) = watch_kind(slot.clone(), own_ns.apis(&client), managed_gateways.clone(), any_change, changed);
    tasks.extend(t);
    let (gateway_secrets, t) = watch_kind(slot.clone(), own_ns.apis(&client), managed_gateways, any_change, changed);
    tasks.extend(t);
    let heartbeat_leases = watcher::Config::default().labels(crate::contract::heartbeat::LABEL_HEARTBEAT);
    let (heartbeats, t) = watch_kind(slot.clone(), own_ns.apis(&client), heartbeat_leases, any_change, Context::heartbeat_changed);
    tasks.extend(t);

    let presence = if opts.wiring.enabled { gateway_api::discover(&client).await } else { Default::default() };
    let gateway_api = std::sync::OnceLock::new();
    if presence.gateway_api {
        tracing::info!(?presence, "Gateway API found: policies with targetRefs are attached and wired");
        let (stores, t) = gateway_api::watch(slot.clone(), &client, &opts.scope, &opts.namespace, presence);
        tasks.extend(t);
        let _ = gateway_api.set(stores);
    } else if opts.wiring.enabled {
        tracing::info!("Gateway API is not installed: policies with targetRefs are not applied (their status says so)");
    }
    let stores = Stores {
        policies,
        exchanges,
        signing_keys,
        key_secrets,
        client_secrets,
        jwks,
        gateway_configmaps,
        gateway_secrets,
        heartbeats,
        gateway_api,
    };
    let ctx = Arc::new(Context::new(client.clone(), opts, stores, metrics));
    let _ = slot.set(ctx.clone());
    let _ = published.set(ctx.clone());
    {
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let s = &ctx.stores;
            s.policies.wait_until_ready().await;
            s.exchanges.wait_until_ready().await;
            s.signing_keys.wait_until_ready().await;
            s.key_secrets.wait_until_ready().await;
            s.client_secrets.wait_until_ready().await;
            s.jwks.wait_until_ready().await;
            s.gateway_configmaps.wait_until_ready().await;
            s.gateway_secrets.wait_until_ready().await;
            s.heartbeats.wait_until_ready().await;
            if let Some(g) = s.gateway_api.get() {
                g.wait_until_ready().await;
            }
            ctx.ready.store(true, Ordering::Release);
            tracing::info!("watch caches synced");
        });
    }

    if ctx.opts.wiring.enabled && ctx.stores.gateway_api.get().is_none() {
        let task = tokio::spawn(rediscover(ctx.clone(), slot.clone()));
        ctx.background.lock().expect("task list").push(task);
    }

    let mut shutdown = std::pin::pin!(shutdown);
    // Leadership: a Lease, or (without one) always leader.
    // Without a Lease this replica always leads; the sender lives as long as `run`.
    let (always, not_elected) = watch::channel(true);
    let (mut leading, lease_task) = match &ctx.opts.lease_name {
        Some(name) => {
            let field_manager = lease_field_manager(&ctx.opts.identity);
            let (rx, task) =
                leader::elect(client.clone(), &ctx.opts.namespace, name, &ctx.opts.identity, field_manager, leader::Timing::default());
            (rx, Some(task))
        }
        None => (not_elected, None),
    };
    let _always = always;

    loop {
        // Wait to lead (or to stop). If the Lease manager is gone, this replica can never know
        // it leads: stop, and let Kubernetes restart it, rather than act unsure.
        while !*leading.borrow_and_update() {
            tokio::select! {
                changed = leading.changed() => if changed.is_err() {
                    finish(ctx, leading, lease_task, tasks).await?;
                    anyhow::bail!("leader election stopped");
                },
                _ = &mut shutdown => return finish(ctx, leading, lease_task, tasks).await,
            }
        }
        tracing::info!(identity = %ctx.opts.identity, "leading: reconciling");
        ctx.metrics.leader.set(1);
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut work = tokio::spawn(lead(ctx.clone(), stop_rx));
        let stopping = tokio::select! {
            _ = async { while *leading.borrow() { if leading.changed().await.is_err() { break } } } => false,
            _ = &mut shutdown => true,
            _ = &mut work => false,
        };
        let _ = stop_tx.send(true);
        if stopping {
            // Still holding the Lease: let the work finish what it is writing (briefly).
            if tokio::time::timeout(Duration::from_secs(10), &mut work).await.is_err() {
                work.abort();
            }
        } else {
            // Leadership is gone (another replica may take over shortly): stop acting now.
            work.abort();
            let _ = work.await;
        }
        ctx.metrics.leader.set(0);
        tracing::info!(identity = %ctx.opts.identity, "no longer leading");
        if stopping {
            return finish(ctx, leading, lease_task, tasks).await;
        }
    }
}

/// Releases the Lease (so another replica takes over at once) and stops the watches.
async fn finish(
    ctx: Arc<Context>,
    leading: watch::Receiver<bool>,
    lease_task: Option<tokio::task::JoinHandle<()>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
) -> anyhow::Result<Arc<Context>> {
    drop(leading);
    if let Some(t) = lease_task {
        // The election releases the Lease (if held) once nobody listens to it any more.
        if tokio::time::timeout(Duration::from_secs(5), t).await.is_err() {
            tracing::warn!("releasing the Lease timed out");
        }
    }
    for t in tasks.into_iter().chain(std::mem::take(&mut *ctx.background.lock().expect("task list"))) {
        t.abort();
    }
    Ok(ctx)
}

/// Gateway API installed after the controller started (or not answered at start): asked again
/// until it is there, then watched; policies are attached from the first pass after its caches
/// are complete (a half-listed cache would read as deleted routes).
async fn rediscover(ctx: Arc<Context>, slot: Arc<tokio::sync::OnceCell<Arc<Context>>>) {
    loop {
        tokio::time::sleep(ctx.opts.rediscover).await;
        let presence = gateway_api::discover(&ctx.client).await;
        if !presence.gateway_api {
            continue;
        }
        tracing::info!(?presence, "Gateway API found: policies with targetRefs are attached and wired from now on");
        let (stores, tasks) = gateway_api::watch(slot, &ctx.client, &ctx.opts.scope, &ctx.opts.namespace, presence);
        ctx.background.lock().expect("task list").extend(tasks);
        stores.wait_until_ready().await;
        let _ = ctx.stores.gateway_api.set(stores);
        ctx.changed();
        return;
    }
}

/// The leader's work: SigningKey reconcilers and the gateway loop, until `stop`.
async fn lead(ctx: Arc<Context>, stop: watch::Receiver<bool>) {
    // Known before the first pass, so that it does not publish configs without it.
    cluster_issuer::refresh(&ctx).await;
    let keys = signingkeys::run(ctx.clone(), stop.clone());
    let issuer = cluster_issuer::run(ctx.clone(), stop.clone());
    let gateways = gateways::run(ctx.clone(), stop);
    tokio::join!(keys, issuer, gateways);
}

/// Admin endpoints of the controller: health, readiness (watch caches synced), metrics.
pub async fn admin(ctx: Arc<Context>, req: hyper::Request<hyper::body::Incoming>) -> crate::plumbing::http::Reply {
    use crate::plumbing::http::reply;
    use http::StatusCode;
    match req.uri().path() {
        "/healthz" => reply(StatusCode::OK, "text/plain", "ok\n"),
        "/readyz" if ctx.ready.load(Ordering::Acquire) => reply(StatusCode::OK, "text/plain", "ready\n"),
        "/readyz" => reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "watch caches not synced yet\n"),
        "/metrics" => reply(StatusCode::OK, "text/plain; version=0.0.4", ctx.metrics.render()),
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
    }
}
