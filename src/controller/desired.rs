//! Desired state (pure): resources in, the ConfigMaps, Secrets and statuses the cluster should
//! hold out. The apply layer only compares and writes what these functions return.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use jiff::Timestamp;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, OwnerReference, Time};
use kube::api::ObjectMeta;
use kube::{Resource, ResourceExt};

use crate::api::{AuthPolicy, AuthPolicyStatus, KeyStatus, SigningKey, SigningKeyStatus};
use crate::contract::publish::sha256_hex;
pub use crate::contract::publish::{
    ANNOTATION_HASH, ANNOTATION_KEYS, ANNOTATION_VERSION, CONFIG_KEY, config_from_configmap, content_hash, gateway_configmap_name,
    gateway_secret_name, pair_is_consistent,
};
use crate::keys::schedule::{self, Requests};
use crate::keys::store::{KeyRing, SECRET_KEY};
use crate::policy::ownership::HostLedger;
use crate::policy::tenancy::{ANNOTATION_VERIFIABLE_FROM, SettingsByGateway, parse_grant};
use crate::policy::{GatewayConfig, KeyRef, Outcome, PolicyConfig, PolicyInput, PolicyMeta, PublishedKeys, Tenancy};

pub const FIELD_MANAGER: &str = "portcullis";
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "portcullis");
pub const LABEL_GATEWAY: &str = "portcullis.dev/gateway";
pub const LABEL_SIGNING_KEY: &str = "portcullis.dev/signing-key";
pub const ANNOTATION_ROTATE: &str = "portcullis.dev/rotate";
pub const ANNOTATION_REVOKE: &str = "portcullis.dev/revoke";
/// The public JWKS inside a SigningKey's `<name>-jwks` ConfigMap.
pub const JWKS_KEY: &str = "jwks.json";

pub mod reasons {
    pub const VALID: &str = "Valid";
    pub const ISSUER_UNREACHABLE: &str = "IssuerUnreachable";
    pub const CONFIG_PUBLISHED: &str = "ConfigPublished";
    pub const PUBLISH_FAILED: &str = "PublishFailed";
    pub const CONFIG_TOO_LARGE: &str = "ConfigTooLarge";
    pub const NOT_SERVED: &str = "NotServed";
    pub const KEYS_READY: &str = "KeysReady";
    pub const SECRET_CONFLICT: &str = "SecretConflict";
    pub const SECRET_INVALID: &str = "SecretInvalid";
}

pub fn jwks_configmap_name(signing_key: &str) -> String {
    format!("{signing_key}-jwks")
}

fn labels(extra: &[(&str, &str)]) -> BTreeMap<String, String> {
    let mut l = BTreeMap::from([
        (MANAGED_BY.0.to_owned(), MANAGED_BY.1.to_owned()),
        ("app.kubernetes.io/name".to_owned(), "portcullis".to_owned()),
    ]);
    l.extend(extra.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
    l
}

/// The identity of a policy (of any kind) for compilation: creation time and generation from
/// its metadata.
pub fn policy_meta(p: &impl kube::Resource) -> PolicyMeta {
    PolicyMeta {
        namespace: p.namespace().unwrap_or_default(),
        name: p.name_any(),
        generation: p.meta().generation,
        created: p.meta().creation_timestamp.as_ref().map(|t| t.0),
        client_secret_found: None,
    }
}

/// Marks each input's sign-in client Secret found or not (validation rejects a policy whose
/// Secret is missing, so its last good version keeps serving).
pub fn resolve_client_secrets(inputs: &mut [PolicyInput], secret: impl Fn(&str, &str) -> Option<Arc<Secret>>) {
    for input in inputs {
        let Some(r) = crate::policy::validate::client_secret_ref(&input.meta, &input.spec) else { continue };
        input.meta.client_secret_found =
            Some(crate::contract::publish::client_secret_value(secret(&r.namespace, &r.name).as_deref(), &r).is_some());
    }
}

/// Gateways to publish: those named by policies, those asked for on the command line (so a new
/// gateway gets an empty, deny-all config at once), and those published before (so a gateway
/// whose last policy was deleted gets an empty config rather than a stale one).
pub fn gateway_names<'a>(policies: &[Arc<AuthPolicy>], wanted: &[String], published: impl Iterator<Item = &'a str>) -> BTreeSet<String> {
    policies.iter().map(|p| p.spec.gateway.clone()).chain(wanted.iter().cloned()).chain(published.map(str::to_owned)).collect()
}

/// Why a SigningKey's Secret cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RingProblem {
    /// The Secret exists but was not created for this SigningKey: it is never touched.
    Foreign,
    Invalid(String),
}

impl RingProblem {
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Foreign => reasons::SECRET_CONFLICT,
            Self::Invalid(_) => reasons::SECRET_INVALID,
        }
    }

    pub fn message(&self, secret: &str) -> String {
        match self {
            Self::Foreign => format!("Secret {secret} exists and is not owned by this SigningKey; Portcullis will not touch it"),
            Self::Invalid(why) => format!("Secret {secret} holds no valid keyring ({why}); it is left as it is"),
        }
    }
}

/// The keyring held by a SigningKey's Secret (`None`: no Secret yet).
pub fn ring_from_secret(secret: Option<&Secret>, sk: &SigningKey) -> Result<Option<KeyRing>, RingProblem> {
    let Some(secret) = secret else { return Ok(None) };
    let owned =
        secret.metadata.owner_references.iter().flatten().any(|o| Some(&o.uid) == sk.metadata.uid.as_ref() && o.kind == "SigningKey");
    if !owned {
        return Err(RingProblem::Foreign);
    }
    let Some(bytes) = secret.data.as_ref().and_then(|d| d.get(SECRET_KEY)) else {
        return Err(RingProblem::Invalid(format!("no {SECRET_KEY}")));
    };
    KeyRing::from_json(&bytes.0).map(Some).map_err(RingProblem::Invalid)
}

/// The public side of every SigningKey with a usable keyring, and the keyrings themselves.
pub fn published_keys(
    signing_keys: &[Arc<SigningKey>],
    secret_of: impl Fn(&str, &str) -> Option<Arc<Secret>>,
) -> (BTreeMap<KeyRef, PublishedKeys>, BTreeMap<KeyRef, KeyRing>) {
    let mut published = BTreeMap::new();
    let mut rings = BTreeMap::new();
    for sk in signing_keys {
        let key = KeyRef { namespace: sk.namespace().unwrap_or_default(), name: sk.name_any() };
        let secret = secret_of(&key.namespace, &key.name);
        let Ok(Some(ring)) = ring_from_secret(secret.as_deref(), sk) else { continue };
        if ring.active().is_none() {
            continue;
        }
        if let Ok(p) = schedule::publish(&key, &sk.spec, &ring) {
            published.insert(key.clone(), p);
            rings.insert(key, ring);
        }
    }
    (published, rings)
}

/// Tenancy for one gateway: its settings, the controller's namespace as the platform's, the
/// verification grants SigningKeys give other namespaces (annotation
/// `portcullis.dev/verifiable-from`), and the hosts namespaces hold.
pub fn tenancy(
    settings: &SettingsByGateway,
    platform_namespace: &str,
    gateway: &str,
    signing_keys: &[Arc<SigningKey>],
    held: HostLedger,
) -> Tenancy {
    let verify_grants = signing_keys
        .iter()
        .filter_map(|sk| {
            let grant = sk.annotations().get(ANNOTATION_VERIFIABLE_FROM)?;
            Some((KeyRef { namespace: sk.namespace().unwrap_or_default(), name: sk.name_any() }, parse_grant(grant)))
        })
        .collect();
    Tenancy {
        settings: settings.get(gateway).cloned().unwrap_or_default(),
        platform_namespace: Some(platform_namespace.to_owned()),
        single_owner: false,
        verify_grants,
        held,
    }
}

/// The ConfigMap that keeps which namespace holds which host of a gateway, one `<pattern>
/// <namespace>` line each. The platform team reads it, and releases a claim by deleting its line
/// (the host then goes to the next policy that claims it).
pub fn host_claims_configmap(namespace: &str, gateway: &str, ledger: &HostLedger) -> ConfigMap {
    let text = ledger.render();
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(host_claims_configmap_name(gateway)),
            namespace: Some(namespace.to_owned()),
            labels: Some(labels(&[("app.kubernetes.io/component", "host-claims"), (LABEL_GATEWAY, gateway)])),
            annotations: Some(BTreeMap::from([(ANNOTATION_HASH.to_owned(), sha256_hex(&[text.as_bytes()]))])),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(HOST_CLAIMS_KEY.to_owned(), text)])),
        ..Default::default()
    }
}

pub const HOST_CLAIMS_KEY: &str = "claims";

/// What the API server stores in one ConfigMap: the sum of its values, measured on v1.36 (one
/// byte more is refused as `Too long`; key names do not count).
pub const CONFIGMAP_MAX_BYTES: usize = 1 << 20;

/// The bytes of a ConfigMap that count against [`CONFIGMAP_MAX_BYTES`].
pub fn configmap_bytes(cm: &ConfigMap) -> usize {
    let data = cm.data.iter().flatten().map(|(_, v)| v.len());
    let binary = cm.binary_data.iter().flatten().map(|(_, v)| v.0.len());
    data.chain(binary).sum()
}

pub fn host_claims_configmap_name(gateway: &str) -> String {
    format!("{}-hosts", gateway_configmap_name(gateway))
}

/// The claims a host-claims ConfigMap holds, and the lines that are not claims.
pub fn ledger_from_configmap(cm: &ConfigMap) -> (HostLedger, Vec<String>) {
    HostLedger::parse(cm.data.as_ref().and_then(|d| d.get(HOST_CLAIMS_KEY)).map_or("", String::as_str))
}

/// The gateway a ConfigMap of the gateway label holds the compiled config of (`None` for its
/// host claims).
pub fn config_gateway(cm: &ConfigMap) -> Option<&str> {
    let gateway = cm.labels().get(LABEL_GATEWAY)?;
    (cm.metadata.name.as_deref() == Some(gateway_configmap_name(gateway).as_str())).then_some(gateway.as_str())
}

/// Compilation inputs for the policies of one gateway.
pub fn policy_inputs(policies: &[Arc<AuthPolicy>], gateway: &str, last_good: &HashMap<String, Arc<PolicyConfig>>) -> Vec<PolicyInput> {
    policies
        .iter()
        .filter(|p| p.spec.gateway == gateway)
        .map(|p| {
            let meta = policy_meta(&**p);
            let key = meta.key();
            PolicyInput { spec: crate::policy::Spec::Object(p.clone()), last_good: last_good.get(&key).cloned(), meta, attachment: None }
        })
        .collect()
}

/// The gateway's ConfigMap: the compiled config, gzip-compressed (10,000 routes stay far below
/// the 1 MiB object limit), with its version as an annotation.
pub fn gateway_configmap(namespace: &str, config: &GatewayConfig, keys: &Secret) -> ConfigMap {
    let keys_hash = content_hash(keys).unwrap_or_default().to_owned();
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(gateway_configmap_name(&config.gateway)),
            namespace: Some(namespace.to_owned()),
            labels: Some(labels(&[("app.kubernetes.io/component", "gateway-config"), (LABEL_GATEWAY, &config.gateway)])),
            annotations: Some(BTreeMap::from([
                (ANNOTATION_VERSION.to_owned(), config.version.clone()),
                (ANNOTATION_HASH.to_owned(), sha256_hex(&[config.version.as_bytes(), keys_hash.as_bytes()])),
                (ANNOTATION_KEYS.to_owned(), keys_hash),
            ])),
            ..Default::default()
        },
        binary_data: Some(BTreeMap::from([(CONFIG_KEY.to_owned(), ByteString(config.to_gzip()))])),
        ..Default::default()
    }
}

/// The gateway's key Secret: the keyrings of the SigningKeys its rules mint with, and nothing
/// else. Private keys never go into the ConfigMap.
pub fn gateway_keys_secret(
    namespace: &str,
    config: &GatewayConfig,
    rings: &BTreeMap<KeyRef, KeyRing>,
    client_secret: impl Fn(&crate::policy::config::SecretRef) -> Option<Vec<u8>>,
) -> Secret {
    // Exactly the keys the gateway mints with (those it publishes in its JWKS), those that
    // seal its sign-in sessions (never published), and its sign-in clients' secrets.
    let mut data: BTreeMap<String, ByteString> = config
        .minting_keys()
        .chain(config.sealing_keys())
        .map(|k| k.key_ref())
        .filter_map(|k| rings.get(&k).map(|r| (crate::contract::publish::keyring_file_name(&k), ByteString(r.to_json()))))
        .collect();
    for r in config.client_secrets() {
        if let Some(v) = client_secret(r) {
            data.insert(r.entry(), ByteString(v));
        }
    }
    let parts: Vec<&[u8]> = data.iter().flat_map(|(k, v)| [k.as_bytes(), &v.0[..]]).collect();
    Secret {
        metadata: ObjectMeta {
            name: Some(gateway_secret_name(&config.gateway)),
            namespace: Some(namespace.to_owned()),
            labels: Some(labels(&[("app.kubernetes.io/component", "gateway-keys"), (LABEL_GATEWAY, &config.gateway)])),
            annotations: Some(BTreeMap::from([(ANNOTATION_HASH.to_owned(), sha256_hex(&parts))])),
            ..Default::default()
        },
        type_: Some("Opaque".to_owned()),
        data: Some(data),
        ..Default::default()
    }
}

fn owner_reference(sk: &SigningKey) -> Option<OwnerReference> {
    sk.controller_owner_ref(&())
}

/// A SigningKey's Secret holding its keyring, owned by the SigningKey (deleted with it).
pub fn keyring_secret(sk: &SigningKey, ring: &KeyRing) -> Secret {
    let json = ring.to_json();
    Secret {
        metadata: ObjectMeta {
            name: Some(sk.name_any()),
            namespace: sk.namespace(),
            labels: Some(labels(&[("app.kubernetes.io/component", "signing-key"), (LABEL_SIGNING_KEY, &sk.name_any())])),
            annotations: Some(BTreeMap::from([(ANNOTATION_HASH.to_owned(), sha256_hex(&[&json]))])),
            owner_references: owner_reference(sk).map(|o| vec![o]),
            ..Default::default()
        },
        type_: Some("Opaque".to_owned()),
        data: Some(BTreeMap::from([(SECRET_KEY.to_owned(), ByteString(json))])),
        ..Default::default()
    }
}

/// The public JWKS of a SigningKey, for services to mount.
pub fn jwks_configmap(sk: &SigningKey, ring: &KeyRing) -> Result<ConfigMap, crate::keys::KeyError> {
    let jwks = serde_json::to_string_pretty(&ring.public_jwks()?).expect("JSON serializes");
    Ok(ConfigMap {
        metadata: ObjectMeta {
            name: Some(jwks_configmap_name(&sk.name_any())),
            namespace: sk.namespace(),
            labels: Some(labels(&[("app.kubernetes.io/component", "jwks"), (LABEL_SIGNING_KEY, &sk.name_any())])),
            annotations: Some(BTreeMap::from([(ANNOTATION_HASH.to_owned(), sha256_hex(&[jwks.as_bytes()]))])),
            owner_references: owner_reference(sk).map(|o| vec![o]),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(JWKS_KEY.to_owned(), jwks)])),
        ..Default::default()
    })
}

/// What the SigningKey's annotations ask for.
pub fn signing_key_requests(sk: &SigningKey) -> Requests {
    let ann = sk.annotations();
    Requests {
        rotate: ann.get(ANNOTATION_ROTATE).filter(|v| !v.is_empty()).cloned(),
        revoke: ann
            .get(ANNOTATION_REVOKE)
            .map(|v| v.split(',').map(str::trim).filter(|k| !k.is_empty()).map(str::to_owned).collect())
            .unwrap_or_default(),
    }
}

/// A status time as the API server stores it: whole seconds (`metav1.Time`). A status built with
/// a finer time never equals its stored copy, and is written again on every pass.
pub fn k8s_time(t: Timestamp) -> Time {
    Time(Timestamp::from_second(t.as_second()).expect("a second of a valid time is valid"))
}

pub fn condition(type_: &str, ok: bool, reason: &str, message: String, generation: Option<i64>, now: Timestamp) -> Condition {
    Condition {
        type_: type_.to_owned(),
        status: if ok { "True" } else { "False" }.to_owned(),
        reason: reason.to_owned(),
        message,
        observed_generation: generation,
        last_transition_time: k8s_time(now),
    }
}

/// New conditions, keeping the transition time of those whose status did not change (so an
/// unchanged status compares equal and is not written again).
pub fn merge_conditions(existing: &[Condition], new: Vec<Condition>) -> Vec<Condition> {
    new.into_iter()
        .map(|mut c| {
            if let Some(old) = existing.iter().find(|o| o.type_ == c.type_)
                && old.status == c.status
            {
                c.last_transition_time = old.last_transition_time.clone();
            }
            c
        })
        .collect()
}

/// Whether (and where) a gateway config that contains the policy was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Programmed {
    /// No version here: it would change every policy's status on any edit (the version lives in
    /// the ConfigMap's annotation and in `status.gateways`' heartbeat view instead).
    Published {
        gateway: String,
    },
    Failed {
        gateway: String,
        why: String,
    },
    /// Not written: the config (or its host claims) does not fit in a ConfigMap. Retrying cannot
    /// help; a change of the policies can.
    TooLarge {
        gateway: String,
        object: String,
        bytes: usize,
    },
}

/// An AuthPolicy's status from its compilation outcome and the publication of its gateway.
pub fn policy_status(
    existing: Option<&AuthPolicyStatus>,
    generation: Option<i64>,
    outcome: &Outcome,
    programmed: &Programmed,
    issuer_warning: Option<&str>,
    now: Timestamp,
) -> AuthPolicyStatus {
    let (accepted, served) = match outcome {
        Outcome::Accepted => match issuer_warning {
            None => (condition("Accepted", true, reasons::VALID, "the policy is valid".into(), generation, now), true),
            Some(w) => (condition("Accepted", true, reasons::ISSUER_UNREACHABLE, w.to_owned(), generation, now), true),
        },
        Outcome::Rejected { rejection, serving_previous } => {
            let mut msg = rejection.message();
            if *serving_previous {
                msg.push_str(". The previous accepted version keeps serving");
            }
            (condition("Accepted", false, rejection.reason.as_str(), truncate(msg), generation, now), *serving_previous)
        }
    };
    let programmed = match (programmed, served) {
        (Programmed::Published { gateway }, true) => {
            let what = if matches!(outcome, Outcome::Accepted) { "" } else { "previous version in " };
            condition("Programmed", true, reasons::CONFIG_PUBLISHED, format!("{what}gateway {gateway}"), generation, now)
        }
        (Programmed::Published { gateway, .. }, false) => {
            condition("Programmed", false, reasons::NOT_SERVED, format!("not part of the config of gateway {gateway}"), generation, now)
        }
        (Programmed::Failed { gateway, why }, _) => condition(
            "Programmed",
            false,
            reasons::PUBLISH_FAILED,
            truncate(format!("writing the config of gateway {gateway} failed: {why}")),
            generation,
            now,
        ),
        (Programmed::TooLarge { gateway, object, bytes }, _) => condition(
            "Programmed",
            false,
            reasons::CONFIG_TOO_LARGE,
            format!(
                "the {object} of gateway {gateway} would be {bytes} bytes, over the {CONFIGMAP_MAX_BYTES} a ConfigMap holds; \
                 nothing was published and the last published config keeps serving. Spread the policies over more gateways \
                 (spec.gateway) or remove some"
            ),
            generation,
            now,
        ),
    };
    let existing_conditions = existing.map(|s| s.conditions.as_slice()).unwrap_or_default();
    AuthPolicyStatus {
        observed_generation: generation,
        conditions: merge_conditions(existing_conditions, vec![accepted, programmed]),
        ..Default::default()
    }
}

fn truncate(mut s: String) -> String {
    const MAX: usize = 4096;
    if s.len() > MAX {
        let cut = (0..=MAX).rev().find(|i| s.is_char_boundary(*i)).unwrap_or(0);
        s.truncate(cut);
        s.push('…');
    }
    s
}

/// A SigningKey's status: the schedule mirrored from its keyring, and readiness.
pub fn signing_key_status(
    existing: Option<&SigningKeyStatus>,
    sk: &SigningKey,
    ring: Option<&KeyRing>,
    problem: Option<(&str, String)>,
    now: Timestamp,
) -> SigningKeyStatus {
    let generation = sk.metadata.generation;
    let ready = match (&problem, ring.and_then(KeyRing::active)) {
        (Some((reason, message)), _) => condition("Ready", false, reason, message.clone(), generation, now),
        (None, Some(a)) => condition("Ready", true, reasons::KEYS_READY, format!("key {} signs", a.kid), generation, now),
        (None, None) => condition("Ready", false, "NoActiveKey", "no key signs yet".into(), generation, now),
    };
    let keys = ring
        .map(|r| {
            r.keys
                .iter()
                .map(|k| KeyStatus {
                    kid: k.kid.clone(),
                    state: k.state,
                    created_at: k8s_time(k.created_at),
                    activates_at: k8s_time(k.activates_at),
                    retires_at: k.retires_at.map(k8s_time),
                    removes_at: k.removes_at.map(k8s_time),
                })
                .collect()
        })
        .unwrap_or_default();
    let existing_conditions = existing.map(|s| s.conditions.as_slice()).unwrap_or_default();
    SigningKeyStatus {
        observed_generation: generation,
        active_kid: ring.and_then(|r| r.active()).map(|k| k.kid.clone()),
        next_transition: ring.and_then(|r| schedule::next_transition(r, &sk.spec)).map(k8s_time),
        keys,
        conditions: merge_conditions(existing_conditions, vec![ready]),
    }
}

/// Kubernetes Event reasons for schedule events.
pub fn key_event(event: &schedule::Event) -> Option<(bool, &'static str)> {
    use schedule::Event as E;
    match event {
        E::Created { .. } => Some((false, "KeyPublished")),
        E::Activated { .. } => Some((false, "KeyActivated")),
        E::Retired { .. } => Some((false, "KeyRotated")),
        E::Removed { .. } => Some((false, "KeyRemoved")),
        E::Revoked { .. } => Some((true, "KeyRevoked")),
        E::RotationRequested { .. } => None,
    }
}
