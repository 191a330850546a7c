//! What this replica serves, as a [`Heartbeat`]: on the admin port (`/status`) and, in a
//! cluster, renewed in the replica's heartbeat Lease for the controller to aggregate.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::{Api, Client};
use tokio::sync::watch;

use super::{Gateway, unix_now};
use crate::contract::heartbeat::{self, Heartbeat, RENEW_SECS};
use crate::decide::keyset::KeySetKind;

const FIELD_MANAGER: &str = "portcullis-gateway";

impl Gateway {
    /// The replica's report: config served, JWKS health of the URLs it uses, audit counts.
    pub fn status(&self, gateway: &str, replica: &str) -> Heartbeat {
        let Some(slot) = self.slot.load_full() else {
            return Heartbeat { gateway: gateway.to_owned(), replica: replica.to_owned(), ..Default::default() };
        };
        // Remote JWKS, and the discovery documents of sign-in's providers.
        let providers: Vec<String> = slot.engine.sign_in_issuers().into_iter().map(super::signin::discovery_url).collect();
        let uris: Vec<&str> = slot
            .engine
            .remote_key_sets()
            .iter()
            .filter(|s| s.kind == KeySetKind::Remote)
            .map(|s| s.label.as_str())
            .chain(providers.iter().map(String::as_str))
            .collect();
        Heartbeat {
            gateway: slot.engine.realm().to_owned(),
            replica: replica.to_owned(),
            version: Some(slot.engine.version().to_owned()),
            loaded_at: Some(slot.loaded_at),
            jwks: self.jwks.health(&uris),
            audit: self.audit.window(&slot.audited, unix_now()),
        }
    }
}

/// Keeps this replica's heartbeat Lease current: written at once when what it reports changes
/// (a config loads, a JWKS flips), renewed every [`RENEW_SECS`] otherwise, deleted on shutdown
/// so the controller counts the replica out without waiting for the Lease to expire.
pub async fn heartbeat(
    gateway: Arc<Gateway>,
    client: Client,
    namespace: String,
    name: String,
    replica: String,
    owner: Option<OwnerReference>,
    mut stop: watch::Receiver<bool>,
) {
    let api: Api<Lease> = Api::namespaced(client, &namespace);
    let lease_name = heartbeat::lease_name(&name, &replica);
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let mut last: Option<Heartbeat> = None;
    loop {
        // Registered before the state is read, so that a change during the write is not lost.
        let changed = gateway.changed.notified();
        let mut changed = std::pin::pin!(changed);
        changed.as_mut().enable();
        let hb = gateway.status(&name, &replica);
        let lease = heartbeat::to_lease(&namespace, &hb, jiff::Timestamp::now(), owner.clone());
        let retry = match api.patch(&lease_name, &params, &Patch::Apply(&lease)).await {
            Ok(_) => {
                if last.as_ref().map(|l| &l.version) != Some(&hb.version) {
                    tracing::info!(lease = %lease_name, version = hb.version.as_deref().unwrap_or("none"), "heartbeat: serving");
                }
                last = Some(hb);
                Duration::from_secs(RENEW_SECS)
            }
            Err(e) => {
                tracing::warn!(lease = %lease_name, "heartbeat not written, retrying: {e}");
                Duration::from_secs(2)
            }
        };
        tokio::select! {
            _ = changed => {}
            _ = tokio::time::sleep(retry) => {}
            _ = stop.wait_for(|s| *s) => break,
        }
    }
    match tokio::time::timeout(Duration::from_secs(3), api.delete(&lease_name, &DeleteParams::default())).await {
        Ok(Ok(_)) => tracing::info!(lease = %lease_name, "heartbeat removed"),
        Ok(Err(e)) => tracing::warn!(lease = %lease_name, "heartbeat not removed, it expires by itself: {e}"),
        Err(_) => tracing::warn!(lease = %lease_name, "heartbeat not removed in time, it expires by itself"),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use http::{Request, Response};
    use kube::client::Body;

    use super::*;
    use crate::gateway::metrics::Metrics;
    use crate::testkit::compile_yaml;

    const POLICY: &str = "name: orders\nnamespace: shop\nspec:\n  mode: Audit\n  rules:\n    - { name: open, public: true, match: { paths: [{ prefix: /x }] } }\n";

    type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

    /// The next request, answered with its own body: (method, path, body).
    async fn next(api: &mut Handle) -> (String, String, serde_json::Value) {
        let (req, reply) =
            tokio::time::timeout(Duration::from_secs(5), api.next_request()).await.expect("a request").expect("client alive");
        let (method, path) = (req.method().to_string(), req.uri().path().to_owned());
        let bytes = http_body_util::BodyExt::collect(req.into_body()).await.unwrap().to_bytes();
        let body: serde_json::Value = if bytes.is_empty() { serde_json::json!({}) } else { serde_json::from_slice(&bytes).unwrap() };
        let answer =
            if method == "DELETE" { serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}) } else { body.clone() };
        reply.send_response(Response::builder().status(200).body(Body::from(serde_json::to_vec(&answer).unwrap())).unwrap());
        (method, path, body)
    }

    fn state(body: &serde_json::Value) -> Heartbeat {
        serde_json::from_str(body["metadata"]["annotations"][heartbeat::ANNOTATION_STATE].as_str().unwrap()).unwrap()
    }

    #[tokio::test]
    async fn the_heartbeat_is_written_at_start_at_once_on_a_new_config_and_removed_on_shutdown() {
        let (svc, mut api) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = Client::new(svc, "default");
        let gateway = Gateway::new("https://gw.test", Metrics::new(), Duration::from_secs(1));
        let (stop_tx, stop) = watch::channel(false);
        let owner = Some(heartbeat::pod_owner("gw-1", "uid-1"));
        let task = tokio::spawn(heartbeat(gateway.clone(), client, "portcullis".into(), "default".into(), "gw-1".into(), owner, stop));

        let (method, path, body) = next(&mut api).await;
        assert_eq!(
            (method.as_str(), path.as_str()),
            ("PATCH", "/apis/coordination.k8s.io/v1/namespaces/portcullis/leases/portcullis-heartbeat-default-gw-1")
        );
        assert_eq!(state(&body).version, None, "no config yet");
        assert_eq!(body["metadata"]["ownerReferences"][0]["uid"], "uid-1");
        assert_eq!(body["metadata"]["labels"][heartbeat::LABEL_HEARTBEAT], "default");

        // A config loads: reported at once, not at the next renewal.
        let config = compile_yaml("default", POLICY, &BTreeMap::new()).config;
        let version = config.version.clone();
        let started = std::time::Instant::now();
        gateway.apply(config, &BTreeMap::new()).unwrap();
        let (_, _, body) = next(&mut api).await;
        assert!(started.elapsed() < Duration::from_secs(RENEW_SECS / 2), "{:?}", started.elapsed());
        let hb = state(&body);
        assert_eq!(hb.version.as_deref(), Some(version.as_str()));
        assert_eq!(hb.audit.len(), 1, "the audited rule, with zero counts: {:?}", hb.audit);

        stop_tx.send(true).unwrap();
        let (method, path, _) = next(&mut api).await;
        assert_eq!(
            (method.as_str(), path.as_str()),
            ("DELETE", "/apis/coordination.k8s.io/v1/namespaces/portcullis/leases/portcullis-heartbeat-default-gw-1")
        );
        tokio::time::timeout(Duration::from_secs(5), task).await.unwrap().unwrap();
    }
}
