//! Desired state, tested directly: resources in, ConfigMaps, Secrets and statuses out.

use std::collections::HashMap;
use std::sync::Arc;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::ObjectMeta;
use serde_json::json;

use super::desired::*;
use crate::api::{AuthPolicy, SigningKey};
use crate::keys::schedule::{Requests, generate, plan};
use crate::keys::store::KeyRing;
use crate::policy::{self, KeyRef, Outcome, RejectReason};

const NS: &str = "portcullis";

fn now() -> Timestamp {
    Timestamp::from_second(1_800_000_000).unwrap()
}

pub(super) fn signing_key(ns: &str, name: &str, spec: serde_json::Value) -> SigningKey {
    let mut sk = SigningKey::new(name, serde_json::from_value(spec).unwrap());
    sk.metadata.namespace = Some(ns.into());
    sk.metadata.uid = Some(format!("uid-{ns}-{name}"));
    sk.metadata.generation = Some(1);
    sk
}

pub(super) fn policy(ns: &str, name: &str, created: i64, spec: serde_json::Value) -> AuthPolicy {
    let mut p = AuthPolicy::new(name, serde_json::from_value(spec).unwrap());
    p.metadata.namespace = Some(ns.into());
    p.metadata.generation = Some(3);
    p.metadata.uid = Some(format!("uid-{ns}-{name}"));
    p.metadata.creation_timestamp = Some(Time(Timestamp::from_second(1_700_000_000 + created).unwrap()));
    p
}

/// A SigningKey with a keyring Secret as the controller would have written it.
pub(super) fn keyed(sk: &SigningKey) -> (KeyRing, Secret) {
    let ring = plan(now(), &sk.spec, KeyRing::new(), &Requests::default(), &mut generate).unwrap().ring;
    let secret = keyring_secret(sk, &ring);
    (ring, secret)
}

fn orders_spec() -> serde_json::Value {
    json!({
        "hosts": ["api.shop.example"],
        "issuers": [{"issuer": "https://id", "audiences": ["orders"], "algorithms": ["ES256"], "jwks": {"signingKeyRef": {"name": "idp"}}}],
        "rules": [
            {"name": "read", "match": {"paths": [{"prefix": "/orders"}], "methods": ["GET"]}},
            {"name": "pay", "match": {"paths": [{"prefix": "/pay"}]}},
        ],
        "forward": {"token": "issue", "issue": {"signingKeyRef": {"name": "internal"}, "audience": "billing", "ttl": "5m"}},
    })
}

struct World {
    policies: Vec<Arc<AuthPolicy>>,
    keys: Vec<Arc<SigningKey>>,
    secrets: HashMap<(String, String), Arc<Secret>>,
    settings: policy::tenancy::SettingsByGateway,
}

impl World {
    fn shop() -> Self {
        let idp = signing_key("shop", "idp", json!({"algorithm": "ES256"}));
        let internal = signing_key("shop", "internal", json!({"algorithm": "EdDSA", "retain": "1h"}));
        let secrets = [&idp, &internal]
            .iter()
            .map(|sk| ((sk.metadata.namespace.clone().unwrap(), sk.metadata.name.clone().unwrap()), Arc::new(keyed(sk).1)))
            .collect();
        Self {
            policies: vec![Arc::new(policy("shop", "orders", 0, orders_spec()))],
            keys: vec![Arc::new(idp), Arc::new(internal)],
            secrets,
            // The platform lets the shop mint with its own key.
            settings: policy::tenancy::parse_settings("default: { mintingKeys: [shop/internal] }").unwrap(),
        }
    }

    fn compile(
        &self,
        gateway: &str,
        last_good: &HashMap<String, Arc<crate::policy::PolicyConfig>>,
    ) -> (policy::Compiled, std::collections::BTreeMap<KeyRef, KeyRing>) {
        let (published, rings) = published_keys(&self.keys, |ns, name| self.secrets.get(&(ns.to_owned(), name.to_owned())).cloned());
        let tenancy = tenancy(&self.settings, "portcullis", gateway, &self.keys, Default::default());
        (policy::compile(gateway, &policy_inputs(&self.policies, gateway, last_good), &published, &tenancy), rings)
    }
}

#[test]
fn a_valid_policy_becomes_a_compressed_configmap_and_a_key_secret_with_only_minting_keys() {
    let world = World::shop();
    let (compiled, rings) = world.compile("default", &HashMap::new());
    assert_eq!(compiled.outcomes[0].outcome, Outcome::Accepted);
    let keys = gateway_keys_secret(NS, &compiled.config, &rings, |_| None);
    let cm = gateway_configmap(NS, &compiled.config, &keys);
    assert_eq!(cm.metadata.name.as_deref(), Some("portcullis-gateway-default"));
    assert_eq!(cm.metadata.namespace.as_deref(), Some(NS));
    assert_eq!(cm.metadata.labels.as_ref().unwrap()[LABEL_GATEWAY], "default");
    assert_eq!(cm.metadata.labels.as_ref().unwrap()[MANAGED_BY.0], MANAGED_BY.1);
    assert_eq!(cm.metadata.annotations.as_ref().unwrap()[ANNOTATION_VERSION], compiled.config.version);
    let back = config_from_configmap(&cm).unwrap();
    assert_eq!(back, compiled.config);
    assert!(cm.data.is_none(), "nothing but the compressed config");

    let secret = gateway_keys_secret(NS, &compiled.config, &rings, |_| None);
    let entries: Vec<&String> = secret.data.as_ref().unwrap().keys().collect();
    assert_eq!(entries, ["shop.internal.json"], "the identity provider's private key does not go to the gateway");
    let json = String::from_utf8(cm.binary_data.as_ref().unwrap()[CONFIG_KEY].0.clone()).unwrap_or_default();
    assert!(!json.contains("PRIVATE KEY"));
    let config_text = String::from_utf8(compiled.config.to_json()).unwrap();
    assert!(!config_text.contains("PRIVATE KEY") && !config_text.contains("privateKeyPem"));
}

#[test]
fn statuses_say_accepted_and_programmed_and_stay_equal_when_nothing_changes() {
    let world = World::shop();
    let (compiled, _) = world.compile("default", &HashMap::new());
    let programmed = Programmed::Published { gateway: "default".into() };
    let status = policy_status(None, Some(3), &compiled.outcomes[0].outcome, &programmed, None, now());
    assert_eq!(status.observed_generation, Some(3));
    let by = |t: &str| status.conditions.iter().find(|c| c.type_ == t).unwrap().clone();
    assert_eq!((by("Accepted").status.as_str(), by("Accepted").reason.as_str()), ("True", "Valid"));
    assert_eq!(by("Programmed").status, "True");
    assert_eq!(by("Programmed").message, "gateway default");
    // Later, same content: identical (so the controller writes nothing).
    let later = Timestamp::from_second(1_800_000_600).unwrap();
    assert_eq!(policy_status(Some(&status), Some(3), &compiled.outcomes[0].outcome, &programmed, None, later), status);
    // A failed publication is visible, and a transition gets a new time.
    let failed = Programmed::Failed { gateway: "default".into(), why: "HTTP 500".into() };
    let s2 = policy_status(Some(&status), Some(3), &compiled.outcomes[0].outcome, &failed, None, later);
    let p = s2.conditions.iter().find(|c| c.type_ == "Programmed").unwrap();
    assert_eq!((p.status.as_str(), p.reason.as_str(), p.last_transition_time.0), ("False", reasons::PUBLISH_FAILED, later));
    // An unreachable issuer does not reject the policy, but says so.
    let s3 = policy_status(None, Some(3), &Outcome::Accepted, &programmed, Some("jwks https://x unreachable"), now());
    let a = s3.conditions.iter().find(|c| c.type_ == "Accepted").unwrap();
    assert_eq!((a.status.as_str(), a.reason.as_str()), ("True", reasons::ISSUER_UNREACHABLE));
}

#[test]
fn an_invalid_update_is_reported_while_its_last_good_version_stays_published() {
    let mut world = World::shop();
    let (good, _) = world.compile("default", &HashMap::new());
    let last_good: HashMap<_, _> = good.config.policies.iter().map(|p| (format!("{}/{}", p.namespace, p.name), p.clone())).collect();
    let mut bad = orders_spec();
    bad["rules"][0]["match"]["paths"][0]["prefix"] = json!("/orders/../admin");
    world.policies = vec![Arc::new(policy("shop", "orders", 0, bad))];
    let (compiled, _) = world.compile("default", &last_good);
    assert_eq!(compiled.config.version, good.config.version, "the gateway keeps enforcing the last good version");
    let programmed = Programmed::Published { gateway: "default".into() };
    let status = policy_status(None, Some(4), &compiled.outcomes[0].outcome, &programmed, None, now());
    let a = status.conditions.iter().find(|c| c.type_ == "Accepted").unwrap();
    assert_eq!((a.status.as_str(), a.reason.as_str()), ("False", "Invalid"));
    assert!(
        a.message.contains("rules[read].match.paths[0]") && a.message.contains("previous accepted version keeps serving"),
        "{}",
        a.message
    );
    let p = status.conditions.iter().find(|c| c.type_ == "Programmed").unwrap();
    assert_eq!(p.status, "True");
    assert!(p.message.starts_with("previous version in gateway default"));
}

#[test]
fn a_conflict_and_a_deleted_signing_key_are_reported_on_the_right_policy() {
    let mut world = World::shop();
    let mut later = orders_spec();
    later["rules"] = json!([{"name": "mine", "match": {"paths": [{"prefix": "/orders"}], "methods": ["GET"]}}]);
    later["forward"] = json!(null);
    later["issuers"][0]["jwks"]["signingKeyRef"]["namespace"] = json!("shop");
    // Another namespace cannot even contest the shop's host: it is refused for the host, and
    // the shop's policy stays whole.
    world.policies.push(Arc::new(policy("team-b", "grab", 10, later.clone())));
    // In the shop's own namespace the same route is a conflict, and the older policy keeps it.
    world.policies.push(Arc::new(policy("shop", "grab", 20, later)));
    let (compiled, _) = world.compile("default", &HashMap::new());
    let outcome = |ns: &str, n: &str| compiled.outcomes.iter().find(|o| o.namespace == ns && o.name == n).unwrap().outcome.clone();
    assert_eq!(outcome("shop", "orders"), Outcome::Accepted);
    let Outcome::Rejected { rejection, .. } = outcome("team-b", "grab") else { panic!() };
    assert_eq!(rejection.reason, RejectReason::HostNotAllowed);
    assert!(
        rejection.message().contains("host api.shop.example belongs to namespace shop (AuthPolicy shop/orders"),
        "{}",
        rejection.message()
    );
    let Outcome::Rejected { rejection, .. } = outcome("shop", "grab") else { panic!() };
    assert_eq!(rejection.reason, RejectReason::Conflicted);
    assert!(rejection.message().contains("shop/orders, which is older (created first)"), "{}", rejection.message());
    world.policies.retain(|p| p.metadata.name.as_deref() != Some("grab"));

    // The SigningKey the policy mints with is deleted (its Secret goes with it).
    world.keys.retain(|k| k.metadata.name.as_deref() != Some("internal"));
    world.secrets.remove(&("shop".to_owned(), "internal".to_owned()));
    let (compiled, rings) = world.compile("default", &HashMap::new());
    let Outcome::Rejected { rejection, serving_previous } = outcome_of(&compiled, "orders") else { panic!() };
    assert_eq!((rejection.reason, serving_previous), (RejectReason::KeyNotFound, false));
    assert!(rejection.message().contains("SigningKey shop/internal not found"));
    let programmed = Programmed::Published { gateway: "default".into() };
    let status = policy_status(None, Some(3), &outcome_of(&compiled, "orders"), &programmed, None, now());
    assert!(status.conditions.iter().any(|c| c.type_ == "Programmed" && c.status == "False" && c.reason == reasons::NOT_SERVED));
    assert!(gateway_keys_secret(NS, &compiled.config, &rings, |_| None).data.unwrap().is_empty());
}

fn outcome_of(c: &policy::Compiled, name: &str) -> Outcome {
    c.outcomes.iter().find(|o| o.name == name).unwrap().outcome.clone()
}

#[test]
fn ten_thousand_routes_fit_one_configmap() {
    let mut policies = Vec::new();
    for i in 0..1000 {
        let rules: Vec<serde_json::Value> = (0..10)
            .map(|r| json!({"name": format!("r{r}"), "match": {"paths": [{"prefix": format!("/svc{i}/api/v1/resource-{r}")}], "methods": ["GET", "POST"]},
                             "require": [{"claim": "scope", "containsAll": [format!("svc{i}:r{r}")]}]}))
            .collect();
        let spec = json!({"hosts": [format!("svc{}.example.com", i % 100)],
            "issuers": [{"issuer": format!("https://id{}.example.com", i % 7), "audiences": [format!("svc{i}")], "algorithms": ["RS256"], "jwks": {"uri": format!("https://id{}.example.com/jwks", i % 7)}}],
            "rules": rules, "forward": {"claimsToHeaders": {"X-User-Id": "sub", "X-Tenant": "tenant"}}});
        policies.push(Arc::new(policy(&format!("team-{}", i % 40), &format!("svc-{i}"), i, spec)));
    }
    let started = std::time::Instant::now();
    let compiled = policy::compile(
        "default",
        &policy_inputs(&policies, "default", &HashMap::new()),
        &Default::default(),
        &policy::Tenancy::single_owner(),
    );
    let cm = gateway_configmap(NS, &compiled.config, &gateway_keys_secret(NS, &compiled.config, &Default::default(), |_| None));
    let elapsed = started.elapsed();
    assert_eq!(compiled.config.route_count(), 10_000);
    assert!(compiled.outcomes.iter().all(|o| o.outcome == Outcome::Accepted));
    let stored = cm.binary_data.as_ref().unwrap()[CONFIG_KEY].0.len();
    let object = serde_json::to_vec(&cm).unwrap().len();
    eprintln!(
        "10,000 routes: {} bytes of JSON, {stored} bytes gzip in the ConfigMap ({object} bytes as an object), compiled in {elapsed:?}",
        compiled.config.to_json().len()
    );
    assert!(object < 1024 * 1024, "a ConfigMap of {object} bytes does not fit the 1 MiB object limit");
}

#[test]
fn signing_key_secrets_are_owned_and_foreign_or_broken_ones_are_left_alone() {
    let sk = signing_key("shop", "internal", json!({"algorithm": "EdDSA"}));
    let (ring, secret) = keyed(&sk);
    let owner = &secret.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!((owner.kind.as_str(), owner.uid.as_str(), owner.controller), ("SigningKey", "uid-shop-internal", Some(true)));
    assert_eq!(secret.type_.as_deref(), Some("Opaque"));
    assert_eq!(ring_from_secret(Some(&secret), &sk).unwrap().unwrap(), ring);
    assert_eq!(ring_from_secret(None, &sk).unwrap(), None);

    let foreign = Secret {
        metadata: ObjectMeta { name: Some("internal".into()), ..Default::default() },
        data: secret.data.clone(),
        ..Default::default()
    };
    assert_eq!(ring_from_secret(Some(&foreign), &sk).unwrap_err(), RingProblem::Foreign);
    let mut broken = secret.clone();
    broken.data.as_mut().unwrap().insert(crate::keys::store::SECRET_KEY.into(), k8s_openapi::ByteString(b"{".to_vec()));
    assert!(matches!(ring_from_secret(Some(&broken), &sk), Err(RingProblem::Invalid(_))));

    let jwks = jwks_configmap(&sk, &ring).unwrap();
    let doc: serde_json::Value = serde_json::from_str(&jwks.data.as_ref().unwrap()[JWKS_KEY]).unwrap();
    assert_eq!(doc["keys"][0]["kid"], ring.keys[0].kid);
    assert!(doc["keys"][0].get("d").is_none());
    assert_eq!(jwks.metadata.name.as_deref(), Some("internal-jwks"));
}

#[test]
fn signing_key_status_mirrors_the_schedule_and_annotations_become_requests() {
    let mut sk = signing_key("shop", "internal", json!({"algorithm": "EdDSA", "rotationInterval": "1h", "prePublish": "5m"}));
    let (ring, _) = keyed(&sk);
    let status = signing_key_status(None, &sk, Some(&ring), None, now());
    assert_eq!(status.active_kid.as_deref(), Some(ring.keys[0].kid.as_str()));
    assert_eq!(status.keys.len(), 1);
    assert_eq!(status.next_transition.unwrap().0, Timestamp::from_second(1_800_000_000 + 3600 - 300 - 1).unwrap());
    assert!(status.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True"));

    sk.metadata.annotations =
        Some([(ANNOTATION_ROTATE.to_owned(), "2026-11-29".to_owned()), (ANNOTATION_REVOKE.to_owned(), " a, b ,".to_owned())].into());
    let r = signing_key_requests(&sk);
    assert_eq!(r.rotate.as_deref(), Some("2026-11-29"));
    assert_eq!(r.revoke, ["a", "b"]);
}

#[test]
fn a_second_team_cannot_take_a_host_mint_trusted_tokens_or_borrow_keys_without_consent() {
    let mut world = World::shop();
    // Team B: its own SigningKey, a policy that mints with it, and one that verifies callers
    // with the shop's identity provider key.
    let forge = signing_key("team-b", "forge", json!({"algorithm": "EdDSA"}));
    world.secrets.insert(("team-b".into(), "forge".into()), Arc::new(keyed(&forge).1));
    world.keys.push(Arc::new(forge));
    let b_issuer =
        json!([{"issuer": "https://b", "audiences": ["b"], "algorithms": ["EdDSA"], "jwks": {"signingKeyRef": {"name": "forge"}}}]);
    world.policies.push(Arc::new(policy(
        "team-b",
        "mint",
        5,
        json!({
            "hosts": ["b.example"], "issuers": b_issuer,
            "rules": [{"name": "all", "match": {"paths": [{"prefix": "/"}]}}],
            "forward": {"token": "issue", "issue": {"signingKeyRef": {"name": "forge"}, "audience": "billing"}},
        }),
    )));
    world.policies.push(Arc::new(policy("team-b", "borrow", 6, json!({
        "hosts": ["b2.example"],
        "issuers": [{"issuer": "https://id", "audiences": ["orders"], "algorithms": ["ES256"], "jwks": {"signingKeyRef": {"name": "idp", "namespace": "shop"}}}],
        "rules": [{"name": "all", "match": {"paths": [{"prefix": "/"}]}}],
    }))));
    world.policies.push(Arc::new(policy(
        "team-b",
        "takeover",
        7,
        json!({
            "hosts": ["api.shop.example"],
            "rules": [{"name": "open", "public": true, "match": {"paths": [{"exact": "/orders/admin/7"}]}}],
        }),
    )));
    let (compiled, rings) = world.compile("default", &HashMap::new());
    let reason = |n: &str| match outcome_of(&compiled, n) {
        Outcome::Rejected { rejection, .. } => (rejection.reason, rejection.message()),
        Outcome::Accepted => panic!("{n} accepted"),
    };
    assert_eq!(outcome_of(&compiled, "orders"), Outcome::Accepted);
    assert_eq!(reason("takeover").0, RejectReason::HostNotAllowed);
    assert_eq!(reason("mint").0, RejectReason::SigningKeyNotAllowed);
    let (why, message) = reason("borrow");
    assert_eq!(why, RejectReason::KeyNotFound);
    assert!(message.contains("portcullis.dev/verifiable-from"), "{message}");
    // Only the shop's minting key reaches the gateway's keys Secret and JWKS.
    let secret = gateway_keys_secret(NS, &compiled.config, &rings, |_| None);
    assert_eq!(secret.data.unwrap().keys().cloned().collect::<Vec<_>>(), ["shop.internal.json"]);
    let published: Vec<String> = compiled.config.minting_keys().map(|k| k.key_ref().to_string()).collect();
    assert_eq!(published, ["shop/internal"]);

    // With the shop's consent, team B may verify with its identity provider's key.
    let mut idp = (*world.keys[0]).clone();
    assert_eq!(idp.metadata.name.as_deref(), Some("idp"));
    idp.metadata.annotations = Some([(crate::policy::tenancy::ANNOTATION_VERIFIABLE_FROM.to_owned(), "team-b".to_owned())].into());
    world.keys[0] = Arc::new(idp);
    let (compiled, _) = world.compile("default", &HashMap::new());
    assert_eq!(outcome_of(&compiled, "borrow"), Outcome::Accepted);
    assert!(compiled.config.minting_keys().all(|k| k.namespace == "shop"), "verifying never publishes");
}

#[test]
fn a_gateway_serves_a_config_only_with_the_keys_it_was_published_with() {
    let mut world = World::shop();
    let (minting, rings) = world.compile("default", &HashMap::new());
    let keys_on = gateway_keys_secret(NS, &minting.config, &rings, |_| None);
    let cm_on = gateway_configmap(NS, &minting.config, &keys_on);
    // Minting is switched off: the controller writes the (now empty) Secret first, then the config.
    let mut spec = orders_spec();
    spec["forward"] = json!(null);
    world.policies = vec![Arc::new(policy("shop", "orders", 0, spec))];
    let (plain, rings) = world.compile("default", &HashMap::new());
    let keys_off = gateway_keys_secret(NS, &plain.config, &rings, |_| None);
    let cm_off = gateway_configmap(NS, &plain.config, &keys_off);
    assert!(keys_off.data.as_ref().unwrap().is_empty());
    // Each config pairs with its own keys, never with the other's: the gateway keeps serving the
    // old pair (which mints) until the new config arrives, instead of a config without its key.
    assert!(pair_is_consistent(&cm_on, Some(&keys_on)));
    assert!(pair_is_consistent(&cm_off, Some(&keys_off)));
    assert!(!pair_is_consistent(&cm_on, Some(&keys_off)), "old config with the new Secret: 503 mint_unavailable");
    assert!(!pair_is_consistent(&cm_off, Some(&keys_on)));
    assert!(!pair_is_consistent(&cm_on, None));
    // A config from before the annotation pairs with anything (an upgrade never stalls).
    let mut legacy = cm_on.clone();
    legacy.metadata.annotations.as_mut().unwrap().remove(ANNOTATION_KEYS);
    assert!(pair_is_consistent(&legacy, Some(&keys_off)));
    // The config object changes whenever its keys do, so the pair always moves together.
    assert_ne!(content_hash(&cm_on), content_hash(&gateway_configmap(NS, &minting.config, &keys_off)));
}

#[test]
fn a_status_equals_its_stored_copy_so_an_unchanged_one_is_never_written_again() {
    // metav1.Time is stored with whole seconds: every time in a status must be one already.
    let now = Timestamp::new(1_800_000_000, 123_456_789).unwrap();
    let sk = signing_key("shop", "internal", json!({"algorithm": "EdDSA"}));
    let ring = plan(now, &sk.spec, KeyRing::new(), &Requests::default(), &mut generate).unwrap().ring;
    assert!(ring.keys[0].created_at.subsec_nanosecond() != 0, "the keyring keeps its own precision");
    let status = signing_key_status(None, &sk, Some(&ring), None, now);
    let back: crate::api::SigningKeyStatus = serde_json::from_value(serde_json::to_value(&status).unwrap()).unwrap();
    assert_eq!(back, status);
    let programmed = Programmed::Published { gateway: "default".into() };
    let status = policy_status(None, Some(1), &Outcome::Accepted, &programmed, None, now);
    let back: crate::api::AuthPolicyStatus = serde_json::from_value(serde_json::to_value(&status).unwrap()).unwrap();
    assert_eq!(back, status);
}

#[test]
fn a_session_key_reaches_the_gateway_with_the_minting_keys_and_is_never_published() {
    let mut world = World::shop();
    let sessions = signing_key("shop", "sessions", json!({"algorithm": "EdDSA"}));
    world.secrets.insert(("shop".into(), "sessions".into()), Arc::new(keyed(&sessions).1));
    world.keys.push(Arc::new(sessions));
    let mut spec = orders_spec();
    spec["signIn"] = json!({"issuer": "https://id.shop.example", "clientId": "web", "sessionKeyRef": {"name": "sessions"}});
    world.policies = vec![Arc::new(policy("shop", "orders", 0, spec))];
    let (compiled, rings) = world.compile("default", &HashMap::new());
    assert_eq!(compiled.outcomes[0].outcome, Outcome::Accepted, "{:?}", compiled.outcomes);
    let secret = gateway_keys_secret(NS, &compiled.config, &rings, |_| None);
    let entries: Vec<&String> = secret.data.as_ref().unwrap().keys().collect();
    assert_eq!(entries, ["shop.internal.json", "shop.sessions.json"]);
    // What services trust is only what the gateway mints with.
    let jwks = compiled.config.minting_jwks();
    let session_kids: Vec<String> = rings[&"shop/sessions".parse::<KeyRef>().unwrap()].keys.iter().map(|k| k.kid.clone()).collect();
    let published: Vec<&str> = jwks["keys"].as_array().unwrap().iter().filter_map(|k| k["kid"].as_str()).collect();
    assert!(!published.is_empty() && published.iter().all(|k| !session_kids.iter().any(|s| s == k)), "{published:?}");
}

#[test]
fn a_client_secret_reaches_the_gateway_with_its_keys_only_from_a_labelled_secret_of_the_policys_namespace() {
    let mut world = World::shop();
    let sessions = signing_key("shop", "sessions", json!({"algorithm": "EdDSA"}));
    world.secrets.insert(("shop".into(), "sessions".into()), Arc::new(keyed(&sessions).1));
    world.keys.push(Arc::new(sessions));
    let mut spec = orders_spec();
    spec["signIn"] = json!({"issuer": "https://id.shop.example", "clientId": "web", "sessionKeyRef": {"name": "sessions"}, "clientSecretRef": {"name": "web-oidc"}});
    world.policies = vec![Arc::new(policy("shop", "orders", 0, spec))];
    let client_secret = |namespace: &str, labelled: bool, key: &str| Secret {
        metadata: ObjectMeta {
            name: Some("web-oidc".into()),
            namespace: Some(namespace.into()),
            labels: labelled.then(|| [(crate::policy::validate::CLIENT_SECRET_LABEL.to_owned(), "true".to_owned())].into()),
            ..Default::default()
        },
        data: Some([(key.to_owned(), k8s_openapi::ByteString(b"s3cret-value".to_vec()))].into()),
        ..Default::default()
    };
    let run = |secret: Option<Secret>| {
        let (published, rings) = published_keys(&world.keys, |ns, name| world.secrets.get(&(ns.to_owned(), name.to_owned())).cloned());
        let lookup = |ns: &str, name: &str| {
            secret.clone().filter(|s| s.metadata.namespace.as_deref() == Some(ns) && s.metadata.name.as_deref() == Some(name)).map(Arc::new)
        };
        let mut inputs = policy_inputs(&world.policies, "default", &HashMap::new());
        resolve_client_secrets(&mut inputs, lookup);
        let tenancy = tenancy(&world.settings, "portcullis", "default", &world.keys, Default::default());
        let compiled = policy::compile("default", &inputs, &published, &tenancy);
        let keys = gateway_keys_secret(NS, &compiled.config, &rings, |r| {
            crate::contract::publish::client_secret_value(lookup(&r.namespace, &r.name).as_deref(), r)
        });
        (compiled, keys)
    };
    let (compiled, keys) = run(Some(client_secret("shop", true, "client-secret")));
    assert_eq!(compiled.outcomes[0].outcome, Outcome::Accepted, "{:?}", compiled.outcomes);
    let r = compiled.config.policies[0].sign_in.as_ref().unwrap().client_secret.clone().unwrap();
    assert_eq!((r.namespace.as_str(), r.name.as_str(), r.key.as_str()), ("shop", "web-oidc", "client-secret"));
    assert_eq!(keys.data.as_ref().unwrap()[&r.entry()].0, b"s3cret-value");
    // The config, which every replica and `kubectl get` can read, holds only the reference.
    let cm = gateway_configmap(NS, &compiled.config, &keys);
    assert!(!serde_json::to_string(&config_from_configmap(&cm).unwrap()).unwrap().contains("s3cret"));
    assert_eq!(crate::contract::publish::client_secrets_from_secret(&keys).get(&r.entry()).map(String::as_str), Some("s3cret-value"));
    // Unlabelled, in another namespace, without the key, or absent: refused, naming the label.
    for (what, secret) in [
        ("unlabelled", Some(client_secret("shop", false, "client-secret"))),
        ("another namespace", Some(client_secret("other", true, "client-secret"))),
        ("another key", Some(client_secret("shop", true, "secret"))),
        ("absent", None),
    ] {
        let (compiled, keys) = run(secret);
        let Outcome::Rejected { rejection, .. } = &compiled.outcomes[0].outcome else { panic!("{what}: {:?}", compiled.outcomes) };
        assert_eq!(rejection.reason, RejectReason::KeyNotFound, "{what}");
        assert!(rejection.message().contains("portcullis.dev/client-secret"), "{what}: {}", rejection.message());
        assert!(keys.data.as_ref().is_none_or(|d| !d.keys().any(|k| k.starts_with("client-secret-"))), "{what}");
    }
}
