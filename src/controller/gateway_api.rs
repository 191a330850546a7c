//! Gateway API I/O (thin): finds which Gateway API and gateway kinds the cluster serves, watches
//! them read-only, and writes the objects [`wiring::plan`] asks for — only those, under their
//! own field manager, removing the ones no policy needs any more. Without Gateway API nothing
//! of this runs, and policies with `targetRefs` say why they apply nowhere.

use std::collections::BTreeMap;
use std::sync::Arc;

use kube::api::{DeleteParams, Patch, PatchParams};
use kube::core::{ApiResource, DynamicObject};
use kube::runtime::watcher;
use kube::{Api, Client, Resource};
use serde_json::Value;

use super::desired::MANAGED_BY;
use super::wiring::{self, ObjectKey, Wired, World};
use super::{Context, Error, MultiStore, Scope, any_change};
use crate::api::gateway_api::{AuthorizationPolicy, GRPCRoute, Gateway, GatewayClass, HTTPRoute, ReferenceGrant, SecurityPolicy};

/// The field manager of generated objects: apart from the controller's other writes.
pub const FIELD_MANAGER: &str = "portcullis-gateway-api";

/// Which of the kinds Portcullis reads and writes the API server serves.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Presence {
    pub gateway_api: bool,
    pub grpc_routes: bool,
    pub reference_grants: bool,
    pub security_policies: bool,
    pub authorization_policies: bool,
}

/// Whether the API server serves the kind of `K` (its group, version and plural as the view
/// type declares them).
async fn serves<K: Resource<DynamicType = ()>>(client: &Client) -> bool {
    let (group_version, plural) = (K::api_version(&()), K::plural(&()));
    match client.list_api_group_resources(&group_version).await {
        Ok(list) => list.resources.iter().any(|r| r.name == plural),
        Err(kube::Error::Api(s)) if s.code == 404 => false,
        Err(e) => {
            tracing::warn!(%group_version, "API discovery failed, taking {plural} as absent: {e}");
            false
        }
    }
}

pub async fn discover(client: &Client) -> Presence {
    Presence {
        gateway_api: serves::<HTTPRoute>(client).await && serves::<Gateway>(client).await && serves::<GatewayClass>(client).await,
        grpc_routes: serves::<GRPCRoute>(client).await,
        reference_grants: serves::<ReferenceGrant>(client).await,
        security_policies: serves::<SecurityPolicy>(client).await,
        authorization_policies: serves::<AuthorizationPolicy>(client).await,
    }
}

/// The watch caches of the Gateway API objects and of the generated ones.
pub struct Stores {
    pub presence: Presence,
    pub classes: MultiStore<GatewayClass>,
    pub gateways: MultiStore<Gateway>,
    pub http_routes: MultiStore<HTTPRoute>,
    pub grpc_routes: Option<MultiStore<GRPCRoute>>,
    /// Every SecurityPolicy (the users' too: one per target).
    pub security_policies: Option<MultiStore<SecurityPolicy>>,
    /// Generated ones only (label managed-by).
    pub authorization_policies: Option<MultiStore<AuthorizationPolicy>>,
    pub reference_grants: Option<MultiStore<ReferenceGrant>>,
}

type Tasks = Vec<tokio::task::JoinHandle<()>>;

pub(super) fn watch(
    slot: Arc<tokio::sync::OnceCell<Arc<Context>>>,
    client: &Client,
    scope: &Scope,
    own_namespace: &str,
    presence: Presence,
) -> (Stores, Tasks) {
    let all = watcher::Config::default();
    let managed = watcher::Config::default().labels(&format!("{}={}", MANAGED_BY.0, MANAGED_BY.1));
    let changed = Context::changed;
    let mut tasks = Vec::new();
    let (classes, t) = super::watch_kind(slot.clone(), vec![Api::all(client.clone())], all.clone(), any_change, changed);
    tasks.extend(t);
    let (gateways, t) = super::watch_kind(slot.clone(), scope.apis(client), all.clone(), any_change, changed);
    tasks.extend(t);
    let (http_routes, t) = super::watch_kind(slot.clone(), scope.apis(client), all.clone(), any_change, changed);
    tasks.extend(t);
    let grpc_routes = presence.grpc_routes.then(|| {
        let (s, t) = super::watch_kind(slot.clone(), scope.apis(client), all.clone(), any_change, changed);
        tasks.extend(t);
        s
    });
    let security_policies = presence.security_policies.then(|| {
        let (s, t) = super::watch_kind(slot.clone(), scope.apis(client), all.clone(), any_change, changed);
        tasks.extend(t);
        s
    });
    let authorization_policies = presence.authorization_policies.then(|| {
        let (s, t) = super::watch_kind(slot.clone(), scope.apis(client), managed.clone(), any_change, changed);
        tasks.extend(t);
        s
    });
    let reference_grants = presence.reference_grants.then(|| {
        let own = Scope::Namespaces(vec![own_namespace.to_owned()]);
        let (s, t) = super::watch_kind(slot.clone(), own.apis(client), managed.clone(), any_change, changed);
        tasks.extend(t);
        s
    });
    let stores =
        Stores { presence, classes, gateways, http_routes, grpc_routes, security_policies, authorization_policies, reference_grants };
    (stores, tasks)
}

impl Stores {
    pub async fn wait_until_ready(&self) {
        self.classes.wait_until_ready().await;
        self.gateways.wait_until_ready().await;
        self.http_routes.wait_until_ready().await;
        for s in self.grpc_routes.iter() {
            s.wait_until_ready().await;
        }
        for s in self.security_policies.iter() {
            s.wait_until_ready().await;
        }
        for s in self.authorization_policies.iter() {
            s.wait_until_ready().await;
        }
        for s in self.reference_grants.iter() {
            s.wait_until_ready().await;
        }
    }

    pub fn world(&self) -> World {
        let p = &self.presence;
        let missing = [
            (p.security_policies, SecurityPolicy::kind(&())),
            (p.authorization_policies, AuthorizationPolicy::kind(&())),
            (p.reference_grants, ReferenceGrant::kind(&())),
        ]
        .into_iter()
        .filter(|(served, _)| !served)
        .map(|(_, kind)| kind.into_owned())
        .collect();
        World {
            classes: self.classes.state(),
            gateways: self.gateways.state(),
            http_routes: self.http_routes.state(),
            grpc_routes: self.grpc_routes.as_ref().map(MultiStore::state).unwrap_or_default(),
            security_policies: self.security_policies.as_ref().map(MultiStore::state).unwrap_or_default(),
            missing_kinds: missing,
        }
    }

    /// Generated objects as the caches hold them: (kind, namespace, name) → ((spec, labels,
    /// owners), as it exists).
    fn generated(&self, instance: &str) -> Vec<(ObjectKey, (Value, Wired))> {
        fn of<K: Resource<DynamicType = ()> + serde::Serialize + Clone>(
            s: Option<&MultiStore<K>>,
            instance: &str,
        ) -> Vec<(ObjectKey, (Value, Wired))> {
            s.map(|s| s.state())
                .unwrap_or_default()
                .into_iter()
                .filter(|o| wiring::is_ours(o.meta(), instance))
                .map(|o| {
                    let mut v = serde_json::to_value(&*o).expect("objects serialize");
                    let wired = Wired { generation: o.meta().generation, status: v["status"].take() };
                    (key_of(&K::kind(&()), o.meta()), (comparable(&v), wired))
                })
                .collect()
        }
        let mut out = of(self.security_policies.as_ref(), instance);
        out.extend(of(self.authorization_policies.as_ref(), instance));
        out.extend(of(self.reference_grants.as_ref(), instance));
        out
    }
}

fn key_of(kind: &str, meta: &kube::api::ObjectMeta) -> ObjectKey {
    (kind.to_owned(), meta.namespace.clone().unwrap_or_default(), meta.name.clone().unwrap_or_default())
}

/// What of an object (as JSON) Portcullis writes: its spec, labels and owners.
fn comparable(v: &Value) -> Value {
    serde_json::json!({"spec": v["spec"], "labels": v["metadata"]["labels"], "owners": owners(v)})
}

fn owners(v: &Value) -> Value {
    let refs = v["metadata"]["ownerReferences"].as_array().cloned().unwrap_or_default();
    Value::Array(refs.iter().map(|r| serde_json::json!({"kind": r["kind"], "name": r["name"], "uid": r["uid"]})).collect())
}

/// The API of a generated kind, as its view type declares it.
fn api_resource(kind: &str) -> ApiResource {
    match kind {
        k if k == SecurityPolicy::kind(&()) => ApiResource::erase::<SecurityPolicy>(&()),
        k if k == AuthorizationPolicy::kind(&()) => ApiResource::erase::<AuthorizationPolicy>(&()),
        _ => ApiResource::erase::<ReferenceGrant>(&()),
    }
}

/// Writes the planned objects that differ from the caches and deletes generated ones no longer
/// planned. Returns the planned objects that exist now (written or unchanged), with the
/// generation written and the status their gateway's controller gave them.
pub async fn write(client: &Client, stores: &Stores, plan: &wiring::Plan) -> (BTreeMap<ObjectKey, Wired>, Option<Error>) {
    let existing: std::collections::HashMap<_, _> = stores.generated(&plan.instance).into_iter().collect();
    let mut live = BTreeMap::new();
    let mut first_error = None;
    for (key, doc) in &plan.objects {
        let (kind, namespace, name) = key;
        if let Some(stored) = existing.get(key)
            && wiring::holds(&stored.0, &comparable(doc))
        {
            live.insert(key.clone(), stored.1.clone());
            continue;
        }
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &api_resource(kind));
        match api.patch(name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(doc)).await {
            Ok(written) => {
                tracing::info!(kind = %kind, namespace = %namespace, name = %name, "gateway wiring written");
                // Whatever the gateway said was about an earlier generation (checked against it).
                let status = existing.get(key).map(|e| e.1.status.clone()).unwrap_or_default();
                live.insert(key.clone(), Wired { generation: written.metadata.generation, status });
            }
            Err(e) => {
                tracing::warn!(kind = %kind, namespace = %namespace, name = %name, "writing gateway wiring failed: {e}");
                first_error.get_or_insert(Error::Kube(e));
            }
        }
    }
    for key in existing.keys().filter(|k| !plan.objects.contains_key(*k)) {
        let (kind, namespace, name) = key;
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &api_resource(kind));
        match api.delete(name, &DeleteParams::default()).await {
            Ok(_) => tracing::info!(kind = %kind, namespace = %namespace, name = %name, "gateway wiring removed: no policy needs it"),
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => {
                tracing::warn!(kind = %kind, namespace = %namespace, name = %name, "removing gateway wiring failed: {e}");
                first_error.get_or_insert(Error::Kube(e));
            }
        }
    }
    (live, first_error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discovery_asks_for_the_resource_names_the_api_server_serves() {
        let names = [
            HTTPRoute::plural(&()),
            Gateway::plural(&()),
            GatewayClass::plural(&()),
            GRPCRoute::plural(&()),
            ReferenceGrant::plural(&()),
            SecurityPolicy::plural(&()),
            AuthorizationPolicy::plural(&()),
        ];
        let want =
            ["httproutes", "gateways", "gatewayclasses", "grpcroutes", "referencegrants", "securitypolicies", "authorizationpolicies"];
        assert_eq!(names.map(|n| n.into_owned()), want.map(str::to_owned));
        assert_eq!(api_resource("SecurityPolicy").api_version, "gateway.envoyproxy.io/v1alpha1");
        assert_eq!(api_resource("ReferenceGrant").api_version, "gateway.networking.k8s.io/v1beta1");
        assert_eq!(api_resource("AuthorizationPolicy").plural, "authorizationpolicies");
    }
}
