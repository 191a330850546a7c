//! What each gateway replica reports about the data plane (pure): the config version it serves,
//! the health of the remote JWKS it uses, and what its Audit rules would have decided. Gateways
//! write it, the controller reads it; neither imports the other.
//!
//! A heartbeat is a `coordination.k8s.io/v1` Lease per replica, in the namespace of the
//! gateway's ConfigMap, named `portcullis-heartbeat-<gateway>-<replica>` and labelled
//! `portcullis.dev/heartbeat=<gateway>`. Leases are what Kubernetes itself uses for
//! heartbeats (node leases): small, cheap to renew, and `renewTime` + `leaseDurationSeconds`
//! say when a replica that stopped renewing is gone. The Pod owns its Lease, so garbage
//! collection removes it with the Pod; the state travels as JSON in one annotation.

use std::collections::BTreeMap;

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, OwnerReference};
use kube::api::ObjectMeta;
use serde::{Deserialize, Serialize};

/// Label on every heartbeat Lease; its value is the gateway's name.
pub const LABEL_HEARTBEAT: &str = "portcullis.dev/heartbeat";
/// Annotation holding the [`Heartbeat`] as JSON.
pub const ANNOTATION_STATE: &str = "portcullis.dev/state";
/// How often a replica renews when nothing changes (a change is reported at once).
pub const RENEW_SECS: u64 = 10;
/// A replica that has not renewed for this long is gone.
pub const LEASE_SECS: i32 = 30;
/// Audit counts cover this much recent time.
pub const AUDIT_WINDOW_SECS: u64 = 600;
/// Deny reasons kept per audited rule (the most frequent).
pub const TOP_REASONS: usize = 5;

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Heartbeat {
    pub gateway: String,
    pub replica: String,
    /// The config version served; none before the first config loads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loaded_at: Option<Timestamp>,
    /// One entry per remote JWKS URL the served config uses.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub jwks: Vec<JwksHealth>,
    /// Per audited rule, its decisions over the last [`AUDIT_WINDOW_SECS`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audit: Vec<AuditCounts>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct JwksHealth {
    pub uri: String,
    /// The last fetch succeeded (keys are fresh).
    pub ready: bool,
    /// Keys held (a failing URL keeps its last good keys).
    pub keys: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// When `ready` last changed (or the first fetch finished).
    pub since: Timestamp,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct AuditCounts {
    /// `namespace/name` of the AuthPolicy.
    pub policy: String,
    pub rule: String,
    pub would_allow: u64,
    pub would_deny: u64,
    /// The most frequent deny reasons with their counts.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub reasons: BTreeMap<String, u64>,
}

/// A Lease name for a replica: DNS-1123, at most 253 characters.
pub fn lease_name(gateway: &str, replica: &str) -> String {
    let clean: String =
        replica.to_ascii_lowercase().chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '.' { c } else { '-' }).collect();
    let name = format!("portcullis-heartbeat-{gateway}-{clean}");
    let mut name: String = name.chars().take(253).collect();
    while name.ends_with(['-', '.']) {
        name.pop();
    }
    name
}

/// The Lease a replica writes for `hb`, renewed at `now`.
pub fn to_lease(namespace: &str, hb: &Heartbeat, now: Timestamp, owner: Option<OwnerReference>) -> Lease {
    Lease {
        metadata: ObjectMeta {
            name: Some(lease_name(&hb.gateway, &hb.replica)),
            namespace: Some(namespace.to_owned()),
            labels: Some(BTreeMap::from([
                (LABEL_HEARTBEAT.to_owned(), hb.gateway.clone()),
                ("app.kubernetes.io/managed-by".to_owned(), "portcullis".to_owned()),
            ])),
            annotations: Some(BTreeMap::from([(ANNOTATION_STATE.to_owned(), serde_json::to_string(hb).expect("serializes"))])),
            owner_references: owner.map(|o| vec![o]),
            ..Default::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(hb.replica.clone()),
            lease_duration_seconds: Some(LEASE_SECS),
            renew_time: Some(MicroTime(now)),
            ..Default::default()
        }),
    }
}

/// A heartbeat read back from its Lease, with the time it stops being live. `None` for a
/// Lease that is not a heartbeat or cannot be read (it then counts as no replica at all).
pub fn from_lease(lease: &Lease) -> Option<(Heartbeat, Timestamp)> {
    let state = lease.metadata.annotations.as_ref()?.get(ANNOTATION_STATE)?;
    let hb: Heartbeat = serde_json::from_str(state).ok()?;
    let gateway = lease.metadata.labels.as_ref()?.get(LABEL_HEARTBEAT)?;
    if *gateway != hb.gateway {
        return None;
    }
    let spec = lease.spec.as_ref()?;
    let renewed = spec.renew_time.as_ref()?.0;
    let expires = renewed.checked_add(jiff::SignedDuration::from_secs(spec.lease_duration_seconds.unwrap_or(LEASE_SECS).into())).ok()?;
    Some((hb, expires))
}

/// The live heartbeats of `gateway` at `now`.
pub fn live<'a>(leases: impl IntoIterator<Item = &'a Lease>, gateway: &str, now: Timestamp) -> Vec<Heartbeat> {
    let mut out: Vec<Heartbeat> = leases
        .into_iter()
        .filter_map(from_lease)
        .filter(|(hb, expires)| hb.gateway == gateway && *expires > now)
        .map(|(hb, _)| hb)
        .collect();
    out.sort_by(|a, b| a.replica.cmp(&b.replica));
    out
}

/// The owner reference that ties a heartbeat to its Pod (from the downward API's name and UID).
pub fn pod_owner(name: &str, uid: &str) -> OwnerReference {
    OwnerReference { api_version: "v1".into(), kind: "Pod".into(), name: name.into(), uid: uid.into(), ..Default::default() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    #[test]
    fn a_heartbeat_round_trips_through_its_lease_and_expires_by_itself() {
        let hb = Heartbeat {
            gateway: "default".into(),
            replica: "gw-7d9f_X".into(),
            version: Some("abc".into()),
            loaded_at: Some(t(0)),
            jwks: vec![JwksHealth {
                uri: "https://id/jwks".into(),
                ready: false,
                keys: 2,
                last_error: Some("HTTP 503".into()),
                since: t(-5),
            }],
            audit: vec![AuditCounts {
                policy: "shop/orders".into(),
                rule: "read".into(),
                would_allow: 9,
                would_deny: 1,
                reasons: BTreeMap::from([("expired".into(), 1)]),
            }],
        };
        let lease = to_lease("portcullis", &hb, t(1), Some(pod_owner("gw-7d9f_X", "uid-1")));
        assert_eq!(lease.metadata.name.as_deref(), Some("portcullis-heartbeat-default-gw-7d9f-x"));
        assert_eq!(from_lease(&lease), Some((hb.clone(), t(1 + LEASE_SECS as i64))));
        assert_eq!(live([&lease], "default", t(10)), vec![hb.clone()]);
        assert!(live([&lease], "default", t(31)).is_empty(), "not renewed for 30 s: gone");
        assert!(live([&lease], "other", t(10)).is_empty());
        // A label that disagrees with the state, or no state: not a heartbeat.
        let mut wrong = lease.clone();
        wrong.metadata.labels.as_mut().unwrap().insert(LABEL_HEARTBEAT.into(), "other".into());
        assert_eq!(from_lease(&wrong), None);
        let mut garbled = lease;
        garbled.metadata.annotations.as_mut().unwrap().insert(ANNOTATION_STATE.into(), "{".into());
        assert_eq!(from_lease(&garbled), None);
        let long = lease_name("default", &"a".repeat(400));
        assert!(long.len() <= 253);
    }
}
