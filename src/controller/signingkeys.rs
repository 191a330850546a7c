//! SigningKey reconciler: run the rotation schedule against the keyring Secret, publish the JWKS,
//! mirror the schedule into status, and wake up exactly at the next transition.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event as KubeEvent, EventType};
use kube::runtime::{Controller, watcher};
use kube::{Api, Resource, ResourceExt};
use tokio::sync::watch;

use super::apply::{Applied, apply_if_changed, apply_status, write_keyring_secret};
use super::desired::{self, RingProblem};
use super::{Context, Error};
use crate::api::SigningKey;
use crate::keys::schedule;

const MAX_REQUEUE: Duration = Duration::from_secs(3600);
/// How long a reconcile waits for the watch cache to show the keyring it wrote last.
const CACHE_CATCH_UP: Duration = Duration::from_secs(10);

/// The keyring Secrets this replica wrote, by namespace/name: the resourceVersion the API server
/// returned and when. A reconcile that runs before the watch cache shows its own last write
/// (the status write that followed it triggers one at once) would plan from the older keyring
/// and be refused at its stale resourceVersion — or, right after a create, take its own Secret
/// for someone else's. It waits for the cache instead.
#[derive(Default)]
pub struct WrittenRings(std::sync::Mutex<std::collections::HashMap<(String, String), (String, Instant)>>);

impl WrittenRings {
    fn record(&self, ns: &str, name: &str, resource_version: Option<String>) {
        let mut written = self.0.lock().expect("lock");
        match resource_version {
            Some(rv) => written.insert((ns.to_owned(), name.to_owned()), (rv, Instant::now())),
            None => written.remove(&(ns.to_owned(), name.to_owned())),
        };
    }

    /// Whether the cache's copy (`current`) is older than this replica's last write of it.
    fn cache_behind(&self, ns: &str, name: &str, current: Option<&Secret>) -> bool {
        let mut written = self.0.lock().expect("lock");
        let key = (ns.to_owned(), name.to_owned());
        let Some((rv, at)) = written.get(&key) else { return false };
        if current.and_then(|c| c.metadata.resource_version.as_ref()) == Some(rv) || at.elapsed() > CACHE_CATCH_UP {
            // Caught up (or someone else wrote since): the cache is the truth again.
            written.remove(&key);
            return false;
        }
        true
    }
}

pub async fn run(ctx: Arc<Context>, mut stop: watch::Receiver<bool>) {
    let label = watcher::Config::default().labels(desired::LABEL_SIGNING_KEY);
    let controllers = ctx.opts.scope.apis::<SigningKey>(&ctx.client).into_iter().map(|api| {
        let ns = api.namespace().map(str::to_owned);
        let (secrets, configmaps): (Api<Secret>, Api<ConfigMap>) = match &ns {
            Some(n) => (Api::namespaced(ctx.client.clone(), n), Api::namespaced(ctx.client.clone(), n)),
            None => (Api::all(ctx.client.clone()), Api::all(ctx.client.clone())),
        };
        let mut stop = stop.clone();
        Controller::new(api, watcher::Config::default())
            .owns(secrets, label.clone())
            .owns(configmaps, label.clone())
            .graceful_shutdown_on(async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .run(reconcile, error_policy, ctx.clone())
            .for_each(|result| async move {
                if let Err(e) = result {
                    tracing::debug!("SigningKey reconcile: {e}");
                }
            })
    });
    let all = futures::future::join_all(controllers);
    tokio::select! {
        _ = all => {}
        _ = stop.wait_for(|s| *s) => {}
    }
}

pub(super) fn error_policy(sk: Arc<SigningKey>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.errors.with_label_values(&["signingkey", error.metric_label()]).inc();
    let key = format!("{}/{}", sk.namespace().unwrap_or_default(), sk.name_any());
    match error {
        // Someone else wrote the Secret since the cache was read (this replica's own writes are
        // waited for): expected, and retried quietly from the fresh cache.
        Error::Conflict(_) => {
            tracing::debug!(signing_key = %key, "reconcile: {error}");
            Action::requeue(Duration::from_millis(500))
        }
        _ => {
            tracing::warn!(signing_key = %key, "reconcile failed: {error}");
            Action::requeue(Duration::from_secs(10))
        }
    }
}

async fn reconcile(sk: Arc<SigningKey>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let result = reconcile_inner(&sk, &ctx).await;
    ctx.metrics.duration.with_label_values(&["signingkey"]).observe(started.elapsed().as_secs_f64());
    ctx.metrics.reconciles.with_label_values(&["signingkey", if result.is_ok() { "success" } else { "error" }]).inc();
    result
}

pub(super) async fn reconcile_inner(sk: &SigningKey, ctx: &Context) -> Result<Action, Error> {
    // Being deleted (its namespace too, perhaps): its Secret goes with it; never recreate it.
    if sk.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = sk.namespace().unwrap_or_default();
    let name = sk.name_any();
    let now = Timestamp::now();
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let configmaps: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &ns);
    let statuses: Api<SigningKey> = Api::namespaced(ctx.client.clone(), &ns);
    let current = ctx.stores.key_secrets.get(&ns, &name);
    if ctx.rings_written.cache_behind(&ns, &name, current.as_deref()) {
        tracing::debug!(signing_key = %format!("{ns}/{name}"), "waiting for the watch cache to show the keyring written last");
        return Ok(Action::requeue(Duration::from_millis(200)));
    }

    let ring = match desired::ring_from_secret(current.as_deref(), sk) {
        Ok(ring) => ring.unwrap_or_default(),
        Err(problem) => {
            // Never overwrite a Secret that is not ours or that we cannot read: keys could be lost.
            report_problem(sk, ctx, &statuses, &problem, now).await?;
            return Ok(Action::requeue(Duration::from_secs(60)));
        }
    };
    let plan = schedule::plan(now, &sk.spec, ring, &desired::signing_key_requests(sk), &mut schedule::generate)?;
    if plan.changed() {
        match write_keyring_secret(&secrets, desired::keyring_secret(sk, &plan.ring), current.as_deref()).await {
            Ok(written) => {
                ctx.metrics.writes.with_label_values(&["Secret"]).inc();
                ctx.rings_written.record(&ns, &name, written.metadata.resource_version);
            }
            // Created by someone else under our name (the watch cache only sees our own Secrets).
            Err(Error::Conflict(_)) if current.is_none() => {
                report_problem(sk, ctx, &statuses, &RingProblem::Foreign, now).await?;
                return Ok(Action::requeue(Duration::from_secs(60)));
            }
            // A namespace being deleted takes the SigningKey with it: nothing to recreate.
            Err(e) if super::apply::namespace_terminating(&e) => {
                tracing::debug!(signing_key = %format!("{ns}/{name}"), "namespace is being deleted; keyring not recreated");
                return Ok(Action::await_change());
            }
            Err(e) => return Err(e),
        }
        for event in &plan.events {
            tracing::info!(signing_key = %format!("{ns}/{name}"), "{}", event.describe());
            if let Some((warning, reason)) = desired::key_event(event) {
                publish_event(ctx, sk, warning, reason, event.describe()).await;
            }
        }
    }
    let jwks = desired::jwks_configmap(sk, &plan.ring)?;
    let current_jwks = ctx.stores.jwks.get(&ns, &desired::jwks_configmap_name(&name));
    if apply_if_changed(&configmaps, &jwks, current_jwks.as_deref()).await? == Applied::Written {
        ctx.metrics.writes.with_label_values(&["ConfigMap"]).inc();
    }
    let status = desired::signing_key_status(sk.status.as_ref(), sk, Some(&plan.ring), None, now);
    if sk.status.as_ref() != Some(&status) {
        apply_status(&statuses, &name, &status).await?;
    }
    let wait = plan.next_wakeup.map_or(MAX_REQUEUE, |t| Duration::try_from(t.duration_since(now)).unwrap_or_default());
    Ok(Action::requeue(wait.clamp(Duration::from_millis(200), MAX_REQUEUE)))
}

async fn report_problem(
    sk: &SigningKey,
    ctx: &Context,
    statuses: &Api<SigningKey>,
    problem: &RingProblem,
    now: Timestamp,
) -> Result<(), Error> {
    let message = problem.message(&sk.name_any());
    let status = desired::signing_key_status(sk.status.as_ref(), sk, None, Some((problem.reason(), message.clone())), now);
    if sk.status.as_ref() != Some(&status) {
        tracing::warn!(signing_key = %format!("{}/{}", sk.namespace().unwrap_or_default(), sk.name_any()), "{message}");
        publish_event(ctx, sk, true, problem.reason(), message).await;
        apply_status(statuses, &sk.name_any(), &status).await?;
    }
    Ok(())
}

pub(super) async fn publish_event<K: Resource<DynamicType = ()>>(ctx: &Context, obj: &K, warning: bool, reason: &str, note: String) {
    let event = KubeEvent {
        type_: if warning { EventType::Warning } else { EventType::Normal },
        reason: reason.to_owned(),
        note: Some(note.chars().take(1000).collect()),
        action: "Reconcile".to_owned(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &obj.object_ref(&())).await {
        tracing::debug!("publishing an Event failed: {e}");
    }
}
