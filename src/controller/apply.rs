//! The apply layer (Kubernetes I/O, thin): compare the desired object with what the watch cache
//! holds, and write only what differs.

use std::fmt::Debug;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::Error;
use super::desired::{FIELD_MANAGER, content_hash};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    Unchanged,
    Written,
}

/// Server-side applies `desired` unless `current` (the watch cache's copy) already carries the
/// same content hash.
pub async fn apply_if_changed<K>(api: &Api<K>, desired: &K, current: Option<&K>) -> Result<Applied, Error>
where
    K: Resource<Scope = NamespaceResourceScope> + Clone + DeserializeOwned + Serialize + Debug,
    K::DynamicType: Default,
{
    if current.is_some_and(|c| content_hash(c).is_some() && content_hash(c) == content_hash(desired)) {
        return Ok(Applied::Unchanged);
    }
    apply(api, desired).await?;
    Ok(Applied::Written)
}

/// Server-side applies `desired` (field manager `portcullis`); the object as stored.
pub async fn apply<K>(api: &Api<K>, desired: &K) -> Result<K, Error>
where
    K: Resource<Scope = NamespaceResourceScope> + Clone + DeserializeOwned + Serialize + Debug,
    K::DynamicType: Default,
{
    let mut obj = serde_json::to_value(desired).expect("objects serialize");
    obj["apiVersion"] = K::api_version(&Default::default()).into();
    obj["kind"] = K::kind(&Default::default()).into();
    api.patch(&desired.name_any(), &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&obj)).await.map_err(Error::Kube)
}

/// Writes a SigningKey's keyring Secret with optimistic concurrency: created when there is none,
/// replaced at exactly the resourceVersion it was read at otherwise. Two writers can never both
/// succeed from the same state, so two Active keys can never be stored.
pub async fn write_keyring_secret(api: &Api<Secret>, mut desired: Secret, current: Option<&Secret>) -> Result<Secret, Error> {
    let name = desired.name_any();
    let result = match current {
        None => api.create(&PostParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() }, &desired).await,
        Some(c) => {
            desired.metadata.resource_version = c.resource_version();
            desired.metadata.uid = c.metadata.uid.clone();
            api.replace(&name, &PostParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() }, &desired).await
        }
    };
    result.map_err(|e| match e {
        kube::Error::Api(s) if s.code == 409 => Error::Conflict(name),
        e => Error::Kube(e),
    })
}

/// Server-side applies a status; the resourceVersion of the object as stored (`None`: it was
/// deleted meanwhile).
pub async fn apply_status<K, S>(api: &Api<K>, name: &str, status: &S) -> Result<Option<String>, Error>
where
    K: Resource + Clone + DeserializeOwned + Debug,
    K::DynamicType: Default,
    S: Serialize,
{
    let patch = serde_json::json!({
        "apiVersion": K::api_version(&Default::default()),
        "kind": K::kind(&Default::default()),
        "status": status,
    });
    match api.patch_status(name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch)).await {
        Ok(stored) => Ok(stored.resource_version()),
        // Deleted since it was read: there is nobody left to tell, and the other objects of the
        // same pass must still get their status.
        Err(kube::Error::Api(s)) if s.code == 404 => {
            tracing::debug!(object = name, "status not written: the object is gone");
            Ok(None)
        }
        Err(e) => Err(Error::Kube(e)),
    }
}

/// Whether an API error says the namespace is being deleted (nothing can be created in it).
pub fn namespace_terminating(e: &Error) -> bool {
    matches!(e, Error::Kube(kube::Error::Api(s)) if s.code == 403 && (s.reason == "Forbidden" || s.reason == "NamespaceTerminating") && s.message.contains("being terminated"))
}
