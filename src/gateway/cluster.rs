//! Config from the cluster: `portcullis gateway --configmap NAMESPACE/NAME` watches exactly the
//! gateway's ConfigMap and its `-keys` Secret (field selectors on the name, so RBAC can grant
//! `resourceNames`), and swaps the engine when either changes. API errors and invalid content
//! leave the last good config serving.

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use tokio::sync::watch;

use super::Gateway;
use crate::contract::publish::{config_from_configmap, gateway_secret_name, keys_from_secret, pair_is_consistent};

/// Watches the two objects and applies every new combination of them.
pub async fn watch_configmap(gateway: Arc<Gateway>, client: Client, namespace: String, name: String, mut stop: watch::Receiver<bool>) {
    let secret_name = gateway_secret_name_for(&name);
    let cm_api: Api<ConfigMap> = Api::namespaced(client.clone(), &namespace);
    let secret_api: Api<Secret> = Api::namespaced(client, &namespace);
    let (cm_store, cm_writer) = reflector::store();
    let (secret_store, secret_writer) = reflector::store();
    let cms = reflector::reflector(
        cm_writer,
        watcher(cm_api, watcher::Config::default().fields(&format!("metadata.name={name}")))
            .backoff(crate::plumbing::watch_backoff::WatchBackoff::default()),
    );
    let secrets = reflector::reflector(
        secret_writer,
        watcher(secret_api, watcher::Config::default().fields(&format!("metadata.name={secret_name}")))
            .backoff(crate::plumbing::watch_backoff::WatchBackoff::default()),
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
        // Only a pair that belongs together: a new key Secret seen before its config (or the
        // other way round) waits for its partner while the current pair keeps serving.
        if !pair_is_consistent(&cm, secret.as_deref()) {
            tracing::debug!("config and key Secret are of different publications; waiting for the other");
            continue;
        }
        // Apply each distinct pair of versions once.
        let versions =
            (cm.metadata.resource_version.clone().unwrap_or_default(), secret.as_ref().and_then(|s| s.metadata.resource_version.clone()));
        if applied.as_ref() == Some(&versions) {
            continue;
        }
        applied = Some(versions);
        let keys = secret.as_deref().map(keys_from_secret).transpose().map(Option::unwrap_or_default);
        match (config_from_configmap(&cm), keys) {
            (Ok(config), Ok(keys)) => {
                let secrets = secret.as_deref().map(crate::contract::publish::client_secrets_from_secret).unwrap_or_default();
                drop(gateway.apply_with(config, &keys, &secrets))
            }
            (Err(e), _) => gateway.load_failed(&format!("ConfigMap {namespace}/{name}: {e}")),
            (_, Err(e)) => gateway.load_failed(&format!("Secret {namespace}/{secret_name}: {e}")),
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http::{Request, Response};
    use kube::client::Body;
    use serde_json::{Value, json};

    use super::*;
    use crate::controller::desired::gateway_configmap;
    use crate::gateway::metrics::Metrics;
    use crate::policy::GatewayConfig;

    /// Answers the two watches like an API server: a list, then a watch that delivers `events`
    /// (once) and ends. Records every request URI.
    async fn api_server(
        mut handle: tower_test::mock::Handle<Request<Body>, Response<Body>>,
        cm: Value,
        secret: Value,
        events: Vec<Value>,
        seen: Arc<std::sync::Mutex<Vec<String>>>,
    ) {
        let mut pending_events = Some(events);
        while let Some((req, reply)) = handle.next_request().await {
            let uri = req.uri().to_string();
            seen.lock().unwrap().push(uri.clone());
            let kind_is_cm = req.uri().path().ends_with("/configmaps");
            let body = if uri.contains("watch=true") {
                let lines: Vec<String> = match (kind_is_cm, pending_events.take()) {
                    (true, Some(ev)) => ev.iter().map(|e| e.to_string()).collect(),
                    (true, None) => {
                        pending_events = None;
                        Vec::new()
                    }
                    (false, ev) => {
                        pending_events = pending_events.or(ev);
                        Vec::new()
                    }
                };
                // Hold quiet watches open a little so the client does not spin.
                if lines.is_empty() {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                lines.join("\n")
            } else {
                let item = if kind_is_cm { cm.clone() } else { secret.clone() };
                json!({"kind": "List", "apiVersion": "v1", "metadata": {"resourceVersion": "10"}, "items": [item]}).to_string()
            };
            reply.send_response(Response::builder().status(200).body(Body::from(body.into_bytes())).unwrap());
        }
    }

    fn with_rv(mut v: Value, rv: &str) -> Value {
        v["metadata"]["resourceVersion"] = json!(rv);
        v
    }

    #[tokio::test]
    async fn watches_only_its_two_objects_and_keeps_the_last_good_config() {
        let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = Client::new(svc, "default");
        let config = GatewayConfig::new("default", Vec::new(), Vec::new());
        let keys_secret = crate::controller::desired::gateway_keys_secret("portcullis", &config, &Default::default(), |_| None);
        let mut cm = serde_json::to_value(gateway_configmap("portcullis", &config, &keys_secret)).unwrap();
        cm = with_rv(cm, "5");
        let mut secret = serde_json::to_value(&keys_secret).unwrap();
        secret["apiVersion"] = json!("v1");
        secret["kind"] = json!("Secret");
        secret = with_rv(secret, "6");
        let mut broken = cm.clone();
        broken["binaryData"][crate::contract::publish::CONFIG_KEY] = json!("bm90IGd6aXA=");
        let events = vec![json!({"type": "MODIFIED", "object": with_rv(broken, "11")})];
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        tokio::spawn(api_server(handle, cm, secret, events, seen.clone()));

        let gateway = Gateway::new("https://gw", Metrics::new(), Duration::from_secs(1));
        let (_stop, stop_rx) = watch::channel(false);
        tokio::spawn(watch_configmap(gateway.clone(), client, "portcullis".into(), "portcullis-gateway-default".into(), stop_rx));
        for _ in 0..100 {
            if gateway.metrics.render().contains("portcullis_config_reloads_total{result=\"failure\"} 1") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(gateway.engine().expect("ready after the first load").version(), config.version);
        let metrics = gateway.metrics.render();
        assert!(metrics.contains("portcullis_config_reloads_total{result=\"failure\"} 1"), "the broken update was rejected: {metrics}");
        let seen = seen.lock().unwrap().clone();
        assert!(!seen.is_empty());
        for uri in &seen {
            assert!(
                uri.contains("fieldSelector=metadata.name%3Dportcullis-gateway-default")
                    || uri.contains("fieldSelector=metadata.name%3Dportcullis-gateway-default-keys"),
                "every request is narrowed to the gateway's own objects: {uri}"
            );
        }
    }

    #[test]
    fn a_broken_key_secret_entry_fails_the_secret_instead_of_dropping_a_key() {
        use k8s_openapi::ByteString;
        let mut secret = Secret::default();
        let good = ByteString(crate::keys::store::KeyRing::default().to_json());
        secret.data = Some([("shop.a.json".to_owned(), good.clone()), ("..data".to_owned(), ByteString(b"x".to_vec()))].into());
        assert_eq!(keys_from_secret(&secret).unwrap().len(), 1);
        secret.data.as_mut().unwrap().insert("shop.b.json".to_owned(), ByteString(b"{".to_vec()));
        assert!(keys_from_secret(&secret).unwrap_err().contains("shop.b.json is not a valid keyring"));
    }
}
