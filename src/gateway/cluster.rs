//! Config from the cluster: `portcullis gateway --configmap NAMESPACE/NAME` watches exactly the
//! gateway's ConfigMap and its `-keys` Secret (field selectors on the name, so RBAC can grant
//! `resourceNames`), and swaps the engine when either changes. API errors and invalid content
//! leave the last good config serving.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use tokio::sync::watch;

use super::Gateway;
use super::source::parse_keyring_file_name;
use crate::controller::desired::{config_from_configmap, gateway_secret_name};
use crate::keys::store::KeyRing;
use crate::policy::KeyRef;

/// Minting keyrings from the gateway's key Secret.
pub fn keys_from_secret(secret: &Secret) -> BTreeMap<KeyRef, KeyRing> {
    let mut out = BTreeMap::new();
    for (file, bytes) in secret.data.iter().flatten() {
        let Some(key) = parse_keyring_file_name(file) else { continue };
        match KeyRing::from_json(&bytes.0) {
            Ok(ring) => {
                out.insert(key, ring);
            }
            Err(e) => tracing::warn!(entry = %file, "key Secret entry is not a keyring, skipped: {e}"),
        }
    }
    out
}

/// Watches the two objects and applies every new combination of them.
pub async fn watch_configmap(gateway: Arc<Gateway>, client: Client, namespace: String, name: String, mut stop: watch::Receiver<bool>) {
    let secret_name = gateway_secret_name_for(&name);
    let cm_api: Api<ConfigMap> = Api::namespaced(client.clone(), &namespace);
    let secret_api: Api<Secret> = Api::namespaced(client, &namespace);
    let (cm_store, cm_writer) = reflector::store();
    let (secret_store, secret_writer) = reflector::store();
    let cms = reflector::reflector(
        cm_writer,
        watcher(cm_api, watcher::Config::default().fields(&format!("metadata.name={name}"))).default_backoff(),
    );
    let secrets = reflector::reflector(
        secret_writer,
        watcher(secret_api, watcher::Config::default().fields(&format!("metadata.name={secret_name}"))).default_backoff(),
    );
    let mut events = std::pin::pin!(futures::stream::select(cms.map(|e| e.map(|_| ())), secrets.map(|e| e.map(|_| ()))));
    let mut applied: Option<(String, Option<String>)> = None;
    loop {
        let event = tokio::select! {
            e = events.next() => e,
            _ = stop.changed() => return,
        };
        match event {
            None => return,
            Some(Err(e)) => {
                tracing::warn!("watching {namespace}/{name} failed, the current config keeps serving: {e}");
                continue;
            }
            Some(Ok(())) => {}
        }
        let Some(cm) = cm_store.get(&ObjectRef::new(&name).within(&namespace)) else { continue };
        let secret = secret_store.get(&ObjectRef::new(&secret_name).within(&namespace));
        // Apply each distinct pair of versions once.
        let versions =
            (cm.metadata.resource_version.clone().unwrap_or_default(), secret.as_ref().and_then(|s| s.metadata.resource_version.clone()));
        if applied.as_ref() == Some(&versions) {
            continue;
        }
        applied = Some(versions);
        match config_from_configmap(&cm) {
            Ok(config) => {
                let keys = secret.as_deref().map(keys_from_secret).unwrap_or_default();
                let _ = gateway.apply(config, &keys);
            }
            Err(e) => gateway.load_failed(&format!("ConfigMap {namespace}/{name}: {e}")),
        }
    }
}

/// `portcullis-gateway-<g>` → `portcullis-gateway-<g>-keys`; any other ConfigMap name gets `-keys`.
fn gateway_secret_name_for(configmap: &str) -> String {
    match configmap.strip_prefix("portcullis-gateway-") {
        Some(g) => gateway_secret_name(g),
        None => format!("{configmap}-keys"),
    }
}
