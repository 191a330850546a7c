//! The apply layer and the reconcilers against a mocked API server (`tower-test`, as kube-rs's
//! controller-rs does): each test lists the exact conversation it expects — method, path and the
//! parts of the body that matter — and fails on any request it did not expect.

use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::Client;
use kube::client::Body;
use kube::runtime::reflector::{self, store::Writer};
use kube::runtime::watcher;
use serde_json::{Value, json};

use super::apply::{Applied, apply_if_changed, write_keyring_secret};
use super::desired::{self, ANNOTATION_ROTATE};
use super::desired_tests::{keyed, policy, signing_key};
use super::gateways::{LoopState, sync_all};
use super::metrics::ControllerMetrics;
use super::signingkeys::reconcile_inner;
use super::{Context, Error, MultiStore, Options, Scope, Stores};
use crate::api::{AuthPolicy, SigningKey};

struct ApiServer(tower_test::mock::Handle<Request<Body>, Response<Body>>);

impl ApiServer {
    /// The next request must be `method path`; it is answered with `status` and `body` (`null`:
    /// the request's own body, as the API server answers a successful write).
    async fn expect(&mut self, method: &str, path: &str, status: u16, body: Value) -> (String, Value) {
        let (req, reply) = tokio::time::timeout(Duration::from_secs(2), self.0.next_request())
            .await
            .unwrap_or_else(|_| panic!("expected {method} {path}, but no request came"))
            .expect("the client is gone");
        let uri = req.uri().to_string();
        assert_eq!((req.method().as_str(), req.uri().path()), (method, path), "unexpected request {} {uri}", req.method());
        let bytes = req.into_body().collect_bytes().await.unwrap();
        let sent: Value = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap() };
        let body = if body.is_null() { echo(&sent) } else { body };
        reply.send_response(Response::builder().status(status).body(Body::from(serde_json::to_vec(&body).unwrap())).unwrap());
        (uri, sent)
    }

    /// Answers every request until none comes for a while (each echoed with 200), in order.
    async fn answer_all(&mut self) -> Vec<(String, String, Value)> {
        let mut seen = Vec::new();
        while let Ok(Some((req, reply))) = tokio::time::timeout(Duration::from_millis(500), self.0.next_request()).await {
            let (method, path) = (req.method().to_string(), req.uri().path().to_owned());
            let bytes = req.into_body().collect_bytes().await.unwrap();
            let sent: Value = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap() };
            reply.send_response(Response::builder().status(200).body(Body::from(serde_json::to_vec(&echo(&sent)).unwrap())).unwrap());
            seen.push((method, path, sent));
        }
        seen
    }

    async fn expect_nothing(&mut self) {
        if let Ok(Some((req, _))) = tokio::time::timeout(Duration::from_millis(300), self.0.next_request()).await {
            panic!("no request expected, got {} {}", req.method(), req.uri());
        }
    }
}

/// A written object as stored: the request body, with a resourceVersion (and for a status
/// patch, the rest of the object the client expects back).
fn echo(sent: &Value) -> Value {
    let mut v = sent.clone();
    if v.get("metadata").is_none() {
        v["metadata"] = json!({"name": "x"});
    }
    if v.get("spec").is_none() && v["kind"] != "ConfigMap" && v["kind"] != "Secret" && v["kind"] != "Event" {
        v["spec"] = match v["kind"].as_str() {
            Some("SigningKey") => json!({"algorithm": "EdDSA"}),
            Some("TokenExchangePolicy") => json!({"audience": {"serviceAccount": "x"}, "signingKeyRef": {"name": "x"}, "from": []}),
            _ => json!({"rules": []}),
        };
    }
    v["metadata"]["resourceVersion"] = json!("100");
    v
}

/// The result of a spawned reconcile: a conversation that changed under a test fails it within
/// seconds instead of hanging it.
async fn finished<T>(task: tokio::task::JoinHandle<T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), task).await.expect("the task did not finish within 10 s").expect("the task panicked")
}

fn mock() -> (Client, ApiServer) {
    let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    (Client::new(svc, "default"), ApiServer(handle))
}

fn status_error(code: u16, reason: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": reason, "reason": reason, "code": code})
}

struct Writers {
    policies: Writer<AuthPolicy>,
    keys: Writer<SigningKey>,
    exchanges: Writer<crate::api::TokenExchangePolicy>,
    key_secrets: Writer<Secret>,
    client_secrets: Writer<Secret>,
    jwks: Writer<ConfigMap>,
    gateway_configmaps: Writer<ConfigMap>,
    gateway_secrets: Writer<Secret>,
    heartbeats: Writer<Lease>,
}

/// A controller in namespace `portcullis` for gateway `default`, without a Lease, with quick
/// debouncing; the shop's policies have no hosts and mint with the shop's key, and the platform
/// allows both.
fn options(identity: &str) -> Options {
    Options {
        namespace: "portcullis".into(),
        scope: Scope::All,
        gateways: vec!["default".into()],
        identity: identity.into(),
        lease_name: None,
        debounce: Duration::from_millis(10),
        max_delay: Duration::from_millis(50),
        jwks_roots: Vec::new(),
        gateway_settings: crate::policy::tenancy::parse_settings("default: { anyHostNamespaces: [shop], mintingKeys: [shop/internal] }")
            .unwrap(),
        wiring: Default::default(),
        rediscover: Duration::from_secs(60),
    }
}

fn context(client: Client) -> (Arc<Context>, Writers) {
    fn pair<K>() -> (MultiStore<K>, Writer<K>)
    where
        K: kube::Resource + Clone + 'static,
        K::DynamicType: std::hash::Hash + Eq + Clone + Default,
    {
        let (r, w) = reflector::store();
        (MultiStore(vec![r]), w)
    }
    let (policies, pw) = pair();
    let (exchanges, xw) = pair();
    let (signing_keys, kw) = pair();
    let (key_secrets, sw) = pair();
    let (client_secrets, csw) = pair();
    let (jwks, jw) = pair();
    let (gateway_configmaps, gcw) = pair();
    let (gateway_secrets, gsw) = pair();
    let (heartbeats, hw) = pair();
    let opts = options("test");
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
        gateway_api: Default::default(),
    };
    let ctx = Arc::new(Context::new(client, opts, stores, ControllerMetrics::new()));
    (
        ctx,
        Writers {
            policies: pw,
            exchanges: xw,
            keys: kw,
            key_secrets: sw,
            client_secrets: csw,
            jwks: jw,
            gateway_configmaps: gcw,
            gateway_secrets: gsw,
            heartbeats: hw,
        },
    )
}

fn put<K>(w: &mut Writer<K>, obj: K)
where
    K: kube::Resource + Clone,
    K::DynamicType: std::hash::Hash + Eq + Clone + Default,
{
    w.apply_watcher_event(&watcher::Event::Apply(obj));
}

/// The object as the API server would return it after a write.
fn stored<K: serde::Serialize>(obj: &K, resource_version: &str) -> Value {
    let mut v = serde_json::to_value(obj).unwrap();
    v["metadata"]["resourceVersion"] = json!(resource_version);
    v["metadata"]["uid"] = json!(format!("uid-{resource_version}"));
    v
}

#[tokio::test]
async fn apply_creates_updates_and_skips_unchanged_content() {
    let (client, mut api) = mock();
    let cms: kube::Api<ConfigMap> = kube::Api::namespaced(client, "portcullis");
    let config = crate::policy::GatewayConfig::new("default", Vec::new(), Vec::new());
    let desired = desired::gateway_configmap(
        "portcullis",
        &config,
        &desired::gateway_keys_secret("portcullis", &config, &Default::default(), |_| None),
    );

    let task = tokio::spawn({
        let (cms, desired) = (cms.clone(), desired.clone());
        async move { apply_if_changed(&cms, &desired, None).await }
    });
    let (uri, body) =
        api.expect("PATCH", "/api/v1/namespaces/portcullis/configmaps/portcullis-gateway-default", 201, stored(&desired, "1")).await;
    assert!(uri.contains("fieldManager=portcullis") && uri.contains("force=true"), "server-side apply with a field manager: {uri}");
    assert_eq!((body["apiVersion"].as_str(), body["kind"].as_str()), (Some("v1"), Some("ConfigMap")));
    assert!(body["binaryData"][desired::CONFIG_KEY].is_string());
    assert_eq!(finished(task).await.unwrap(), Applied::Written);

    // Same content hash in the watch cache: no request at all.
    assert_eq!(apply_if_changed(&cms, &desired, Some(&desired)).await.unwrap(), Applied::Unchanged);
    api.expect_nothing().await;

    // Changed content: written again.
    let mut old = desired.clone();
    old.metadata.annotations.as_mut().unwrap().insert(desired::ANNOTATION_HASH.into(), "older".into());
    let task = tokio::spawn(async move { apply_if_changed(&cms, &desired, Some(&old)).await });
    api.expect("PATCH", "/api/v1/namespaces/portcullis/configmaps/portcullis-gateway-default", 200, Value::Null).await;
    assert_eq!(finished(task).await.unwrap(), Applied::Written);
}

#[tokio::test]
async fn keyring_secrets_are_written_at_the_version_they_were_read() {
    let (client, mut api) = mock();
    let secrets: kube::Api<Secret> = kube::Api::namespaced(client, "shop");
    let sk = signing_key("shop", "internal", json!({"algorithm": "EdDSA"}));
    let (_, desired) = keyed(&sk);

    let task = tokio::spawn({
        let (secrets, desired) = (secrets.clone(), desired.clone());
        async move { write_keyring_secret(&secrets, desired, None).await }
    });
    let (_, body) = api.expect("POST", "/api/v1/namespaces/shop/secrets", 201, stored(&desired, "7")).await;
    assert_eq!(body["metadata"]["ownerReferences"][0]["kind"], "SigningKey");
    assert!(body["data"][crate::keys::store::SECRET_KEY].is_string());
    finished(task).await.unwrap();

    let mut current = desired.clone();
    current.metadata.resource_version = Some("7".into());
    let task = tokio::spawn({
        let (secrets, desired, current) = (secrets.clone(), desired.clone(), current.clone());
        async move { write_keyring_secret(&secrets, desired, Some(&current)).await }
    });
    let (_, body) = api.expect("PUT", "/api/v1/namespaces/shop/secrets/internal", 200, stored(&desired, "8")).await;
    assert_eq!(body["metadata"]["resourceVersion"], "7");
    finished(task).await.unwrap();

    // Someone else wrote first: a conflict, never a blind overwrite.
    let task = tokio::spawn(async move { write_keyring_secret(&secrets, desired, Some(&current)).await });
    api.expect("PUT", "/api/v1/namespaces/shop/secrets/internal", 409, status_error(409, "Conflict")).await;
    assert!(matches!(finished(task).await, Err(Error::Conflict(_))));
}

#[tokio::test]
async fn a_new_signing_key_gets_its_secret_jwks_status_and_events() {
    let (client, mut api) = mock();
    let (ctx, _w) = context(client);
    let sk = signing_key("shop", "internal", json!({"algorithm": "EdDSA", "rotationInterval": "1h", "prePublish": "5m"}));
    let task = tokio::spawn({
        let (ctx, sk) = (ctx.clone(), sk.clone());
        async move { reconcile_inner(&sk, &ctx).await }
    });
    let (_, secret) = api.expect("POST", "/api/v1/namespaces/shop/secrets", 201, Value::Null).await;
    let ring = crate::keys::store::KeyRing::from_json(&base64_decode(secret["data"]["keyring.json"].as_str().unwrap())).unwrap();
    let kid = ring.active().unwrap().kid.clone();
    for reason in ["KeyPublished", "KeyActivated"] {
        let (_, ev) = api.expect("POST", "/apis/events.k8s.io/v1/namespaces/shop/events", 201, Value::Null).await;
        assert_eq!(ev["reason"], reason);
        assert_eq!(ev["regarding"]["name"], "internal");
    }
    let (_, cm) = api.expect("PATCH", "/api/v1/namespaces/shop/configmaps/internal-jwks", 201, Value::Null).await;
    assert!(cm["data"]["jwks.json"].as_str().unwrap().contains(&kid));
    let (uri, status) =
        api.expect("PATCH", "/apis/portcullis.dev/v1alpha1/namespaces/shop/signingkeys/internal/status", 200, Value::Null).await;
    assert!(uri.contains("fieldManager=portcullis"));
    assert_eq!(status["status"]["activeKid"], kid.as_str());
    assert_eq!(status["status"]["conditions"][0]["type"], "Ready");
    assert_eq!(status["status"]["conditions"][0]["status"], "True");
    let action = finished(task).await.unwrap();
    // Requeued exactly for the successor's creation: 1h - 5m - 1s after the first key.
    assert!((3297.0..=3299.0).contains(&requeue_secs(&action)), "{action:?}");
}

#[tokio::test]
async fn a_reconcile_before_the_cache_shows_its_own_write_waits_instead_of_writing_from_the_old_keyring() {
    let (client, mut api) = mock();
    let (ctx, mut w) = context(client);
    let sk = signing_key("shop", "internal", json!({"algorithm": "EdDSA"}));
    let task = tokio::spawn({
        let (ctx, sk) = (ctx.clone(), sk.clone());
        async move { reconcile_inner(&sk, &ctx).await }
    });
    let (_, created) = api.expect("POST", "/api/v1/namespaces/shop/secrets", 201, Value::Null).await;
    api.answer_all().await;
    finished(task).await.unwrap();
    // The status write triggers the next reconcile at once; the Secret is not in the cache yet.
    // It used to create the Secret again: 409, reported as "not owned by this SigningKey".
    let task = tokio::spawn({
        let (ctx, sk) = (ctx.clone(), sk.clone());
        async move { reconcile_inner(&sk, &ctx).await }
    });
    api.expect_nothing().await;
    assert_eq!(requeue_secs(&finished(task).await.unwrap()), 0.2);
    // The cache shows the write (the resourceVersion the create returned): on as usual.
    put(&mut w.key_secrets, serde_json::from_value(echo(&created)).unwrap());
    let task = tokio::spawn({
        let (ctx, sk) = (ctx.clone(), sk.clone());
        async move { reconcile_inner(&sk, &ctx).await }
    });
    let seen = api.answer_all().await;
    finished(task).await.unwrap();
    assert!(!seen.iter().any(|(_, p, _)| p.contains("/secrets")), "no keyring write: {:?}", seen.iter().map(|s| &s.1).collect::<Vec<_>>());
}

fn requeue_secs(action: &kube::runtime::controller::Action) -> f64 {
    let text = format!("{action:?}");
    let inner = text.split("Some(").nth(1).expect("a requeue").split(')').next().unwrap();
    match inner.strip_suffix("ms") {
        Some(ms) => ms.parse::<f64>().unwrap() / 1000.0,
        None => inner.trim_end_matches('s').parse().unwrap(),
    }
}

fn base64_decode(s: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.decode(s).unwrap()
}

#[tokio::test]
async fn an_unchanged_signing_key_costs_no_request_and_a_stale_cache_never_writes_blindly() {
    let (client, mut api) = mock();
    let (ctx, mut w) = context(client);
    let mut sk = signing_key("shop", "internal", json!({"algorithm": "EdDSA"}));
    let (ring, mut secret) = keyed(&sk);
    secret.metadata.resource_version = Some("41".into());
    put(&mut w.key_secrets, secret);
    put(&mut w.jwks, desired::jwks_configmap(&sk, &ring).unwrap());
    sk.status = Some(desired::signing_key_status(None, &sk, Some(&ring), None, jiff::Timestamp::now()));
    reconcile_inner(&sk, &ctx).await.unwrap();
    api.expect_nothing().await;

    // A rotation request, but the cache is behind the API server: the write conflicts.
    sk.metadata.annotations = Some([(ANNOTATION_ROTATE.to_owned(), "now".to_owned())].into());
    let task = tokio::spawn({
        let (ctx, sk) = (ctx.clone(), sk.clone());
        async move { reconcile_inner(&sk, &ctx).await }
    });
    let (_, body) = api.expect("PUT", "/api/v1/namespaces/shop/secrets/internal", 409, status_error(409, "Conflict")).await;
    assert_eq!(body["metadata"]["resourceVersion"], "41");
    let err = finished(task).await.unwrap_err();
    assert!(matches!(err, Error::Conflict(_)));
    let action = super::signingkeys::error_policy(Arc::new(sk), &err, ctx);
    assert_eq!(requeue_secs(&action), 0.5, "retried soon, from the fresh cache");
    api.expect_nothing().await;
}

fn shop_world(w: &mut Writers) {
    let idp = signing_key("shop", "idp", json!({"algorithm": "ES256"}));
    let internal = signing_key("shop", "internal", json!({"algorithm": "EdDSA", "retain": "1h"}));
    for sk in [idp, internal] {
        let (_, secret) = keyed(&sk);
        put(&mut w.key_secrets, secret);
        put(&mut w.keys, sk);
    }
    put(
        &mut w.policies,
        policy(
            "shop",
            "orders",
            0,
            json!({
                "issuers": [{"issuer": "https://id", "audiences": ["orders"], "algorithms": ["ES256"], "jwks": {"signingKeyRef": {"name": "idp"}}}],
                "rules": [{"name": "read", "match": {"paths": [{"prefix": "/orders"}]}}],
                "forward": {"token": "issue", "issue": {"signingKeyRef": {"name": "internal"}, "audience": "billing"}}
            }),
        ),
    );
}

/// One pass of the gateway loop in the background, handing its state back.
fn spawn_sync(ctx: Arc<Context>, mut state: LoopState) -> tokio::task::JoinHandle<(Result<(), Error>, LoopState)> {
    tokio::spawn(async move {
        let r = sync_all(&ctx, &mut state).await;
        (r, state)
    })
}

#[tokio::test]
async fn a_gateway_is_published_once_and_then_left_alone() {
    let (client, mut api) = mock();
    let (ctx, mut w) = context(client);
    shop_world(&mut w);
    let state = LoopState::default();
    let task = spawn_sync(ctx.clone(), state);
    // The hosts the shop's policies hold are kept first (they have no hosts: every host).
    let (_, claims) =
        api.expect("PATCH", "/api/v1/namespaces/portcullis/configmaps/portcullis-gateway-default-hosts", 201, Value::Null).await;
    assert_eq!(claims["data"]["claims"], "* shop\n");
    let (_, keys) = api.expect("PATCH", "/api/v1/namespaces/portcullis/secrets/portcullis-gateway-default-keys", 201, Value::Null).await;
    assert_eq!(keys["data"].as_object().unwrap().keys().collect::<Vec<_>>(), ["shop.internal.json"]);
    let (_, cm) = api.expect("PATCH", "/api/v1/namespaces/portcullis/configmaps/portcullis-gateway-default", 201, Value::Null).await;
    assert!(cm["metadata"]["annotations"][desired::ANNOTATION_VERSION].as_str().is_some_and(|v| !v.is_empty()));
    let (_, status) =
        api.expect("PATCH", "/apis/portcullis.dev/v1alpha1/namespaces/shop/authpolicies/orders/status", 200, Value::Null).await;
    let conditions = status["status"]["conditions"].as_array().unwrap();
    assert_eq!(conditions[0]["type"], "Accepted");
    assert_eq!(conditions[1]["message"], "gateway default");
    assert_eq!(status["status"]["observedGeneration"], 3);
    let (_, ev) = api.expect("POST", "/apis/events.k8s.io/v1/namespaces/shop/events", 201, Value::Null).await;
    assert_eq!(ev["reason"], "Programmed");
    let (result, mut state) = finished(task).await;
    result.unwrap();
    assert_eq!(state.last_good["default"].len(), 1);

    // The watches deliver what was written: the next pass writes nothing.
    let cm: ConfigMap = serde_json::from_value(cm).unwrap();
    put(&mut w.gateway_configmaps, cm);
    put(&mut w.gateway_secrets, serde_json::from_value(keys).unwrap());
    let mut p = (*ctx.stores.policies.get("shop", "orders").unwrap()).clone();
    p.status = Some(serde_json::from_value(status["status"].clone()).unwrap());
    put(&mut w.policies, p);
    sync_all(&ctx, &mut state).await.unwrap();
    api.expect_nothing().await;
}

/// A status write, fed back into the watch cache of its kind.
fn feed_status(ctx: &Context, w: &mut Writers, path: &str, sent: &Value) {
    let (ns, name) = (path.split('/').nth(5).unwrap(), path.trim_end_matches("/status").rsplit('/').next().unwrap());
    let status = sent["status"].clone();
    if path.contains("/tokenexchangepolicies/") {
        let mut x = (*ctx.stores.exchanges.get(ns, name).unwrap()).clone();
        x.status = Some(serde_json::from_value(status).unwrap());
        put(&mut w.exchanges, x);
    } else {
        let mut p = (*ctx.stores.policies.get(ns, name).unwrap()).clone();
        p.status = Some(serde_json::from_value(status).unwrap());
        put(&mut w.policies, p);
    }
}

/// Answers every request of a pass (echoed with 200) and feeds each write back into the watch
/// caches, as the real watches would. Returns `METHOD path` per request.
async fn serve_pass(api: &mut ApiServer, w: &mut Writers, ctx: &Arc<Context>) -> Vec<String> {
    let mut seen = Vec::new();
    for (method, path, sent) in api.answer_all().await {
        if path.ends_with("/status") {
            feed_status(ctx, w, &path, &sent);
        } else if path.contains("/configmaps/") {
            put(&mut w.gateway_configmaps, serde_json::from_value(stored(&sent, "2")).unwrap());
        } else if path.contains("/secrets/") {
            put(&mut w.gateway_secrets, serde_json::from_value(stored(&sent, "3")).unwrap());
        }
        match sent["reason"].as_str() {
            Some(reason) if path.contains("/events") => seen.push(format!("{method} {path} {reason}")),
            _ => seen.push(format!("{method} {path}")),
        }
    }
    seen
}

#[tokio::test]
async fn editing_one_of_three_hundred_policies_writes_the_status_of_that_policy_only() {
    let (client, mut api) = mock();
    let (ctx, mut w) = context(client);
    let spec = |i: usize, methods: &[&str]| {
        json!({
            "issuers": [{"issuer": "https://id", "audiences": ["orders"], "algorithms": ["ES256"], "jwks": {"signingKeyRef": {"name": "idp"}}}],
            "rules": [{"name": "read", "match": {"paths": [{"prefix": format!("/svc{i}")}], "methods": methods}}],
        })
    };
    let idp = signing_key("shop", "idp", json!({"algorithm": "ES256"}));
    put(&mut w.key_secrets, keyed(&idp).1);
    put(&mut w.keys, idp);
    for i in 0..300 {
        put(&mut w.policies, policy("shop", &format!("p{i}"), i as i64, spec(i, &["GET"])));
    }
    let (first, state) = full_pass(&mut api, &mut w, &ctx, LoopState::default()).await;
    assert_eq!(first.iter().filter(|p| p.ends_with("/status")).count(), 300, "{first:?}");

    let mut edited = policy("shop", "p7", 7, spec(7, &["GET", "POST"]));
    edited.metadata.generation = Some(4);
    edited.status = ctx.stores.policies.get("shop", "p7").unwrap().status.clone();
    put(&mut w.policies, edited);
    let (mut second, _) = full_pass(&mut api, &mut w, &ctx, state).await;
    let events = second.extract_if(.., |p| p.contains("/events")).count();
    assert_eq!(events, 1, "one Programmed event for the new generation");
    assert_eq!(
        second,
        [
            "PATCH /api/v1/namespaces/portcullis/configmaps/portcullis-gateway-default",
            "PATCH /apis/portcullis.dev/v1alpha1/namespaces/shop/authpolicies/p7/status",
        ],
        "the new config and the edited policy's status, nothing else"
    );
}

#[tokio::test]
async fn an_api_error_keeps_the_last_good_config_and_says_so_in_status() {
    let (client, mut api) = mock();
    let (ctx, mut w) = context(client);
    shop_world(&mut w);
    let state = LoopState::default();
    let task = spawn_sync(ctx.clone(), state);
    api.expect("PATCH", "/api/v1/namespaces/portcullis/configmaps/portcullis-gateway-default-hosts", 200, Value::Null).await;
    api.expect("PATCH", "/api/v1/namespaces/portcullis/secrets/portcullis-gateway-default-keys", 200, Value::Null).await;
    api.expect("PATCH", "/api/v1/namespaces/portcullis/configmaps/portcullis-gateway-default", 500, status_error(500, "InternalError"))
        .await;
    let (_, status) =
        api.expect("PATCH", "/apis/portcullis.dev/v1alpha1/namespaces/shop/authpolicies/orders/status", 200, Value::Null).await;
    let programmed = &status["status"]["conditions"][1];
    assert_eq!((programmed["status"].as_str(), programmed["reason"].as_str()), (Some("False"), Some("PublishFailed")));
    let (result, state) = finished(task).await;
    assert!(matches!(result, Err(Error::Kube(_))));
    assert!(state.last_good.is_empty(), "nothing was published, so nothing new counts as last good");
    api.expect_nothing().await;
}

#[tokio::test]
async fn a_burst_of_a_hundred_changes_is_compiled_a_handful_of_times() {
    let (client, mut api) = mock();
    let (ctx, mut w) = context(client);
    ctx.ready.store(true, std::sync::atomic::Ordering::Release);
    let writes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    // Answer every request; count the gateway ConfigMap writes.
    let counter = writes.clone();
    tokio::spawn(async move {
        while let Ok(Some((req, reply))) = tokio::time::timeout(Duration::from_secs(5), api.0.next_request()).await {
            if req.uri().path().ends_with("/configmaps/portcullis-gateway-default") {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            let bytes = req.into_body().collect_bytes().await.unwrap();
            let sent: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            reply.send_response(Response::builder().status(200).body(Body::from(serde_json::to_vec(&echo(&sent)).unwrap())).unwrap());
        }
    });
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let gateway_loop = tokio::spawn(super::gateways::run(ctx.clone(), stop_rx));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let initial = writes.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(initial, 1, "the empty default gateway is published at start");

    // 100 applies, 2 ms apart, each changing what the gateway enforces.
    let started = std::time::Instant::now();
    for i in 0..100 {
        let spec = json!({"rules": [{"name": "r", "public": true, "match": {"paths": [{"prefix": format!("/v{i}")}]}}]});
        put(&mut w.policies, policy("shop", &format!("p{i}"), i, spec));
        ctx.changed();
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let burst_ms = started.elapsed().as_millis() as usize;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let burst = writes.load(std::sync::atomic::Ordering::SeqCst) - initial;
    eprintln!("100 changes over {burst_ms}ms: {burst} ConfigMap writes");
    // At most one compile per max_delay (50 ms here) while changes keep coming, plus the last.
    assert!(burst >= 1 && burst <= burst_ms / 50 + 2 && burst < 20, "{burst} writes for a burst of 100 changes over {burst_ms}ms");
    let _ = stop_tx.send(true);
    gateway_loop.await.unwrap();
}

/// An API server with nothing in it: empty lists, quiet watches, writes echoed. Counts requests.
async fn empty_api_server(mut api: ApiServer, seen: Arc<std::sync::Mutex<Vec<String>>>) {
    while let Some((req, reply)) = api.0.next_request().await {
        let line = format!("{} {}", req.method(), req.uri().path());
        let is_watch = req.uri().query().is_some_and(|q| q.contains("watch=true"));
        seen.lock().unwrap().push(line);
        // API discovery of the optional kinds: a cluster without Gateway API.
        if req.uri().path().starts_with("/apis/") && req.uri().path().matches('/').count() == 3 {
            let body = serde_json::to_vec(&status_error(404, "NotFound")).unwrap();
            reply.send_response(Response::builder().status(404).body(Body::from(body)).unwrap());
            continue;
        }
        let bytes = req.into_body().collect_bytes().await.unwrap();
        let body = if is_watch {
            tokio::time::sleep(Duration::from_millis(100)).await;
            Vec::new()
        } else if bytes.is_empty() {
            serde_json::to_vec(&json!({"kind": "List", "apiVersion": "v1", "metadata": {"resourceVersion": "1"}, "items": []})).unwrap()
        } else {
            serde_json::to_vec(&echo(&serde_json::from_slice(&bytes).unwrap())).unwrap()
        };
        reply.send_response(Response::builder().status(200).body(Body::from(body)).unwrap());
    }
}

#[tokio::test]
async fn without_a_lease_the_controller_leads_once_publishes_and_stops_cleanly() {
    let (client, api) = mock();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    tokio::spawn(empty_api_server(api, seen.clone()));
    let opts = options("solo");
    let metrics = ControllerMetrics::new();
    let cell = Arc::new(tokio::sync::OnceCell::new());
    let ctx = super::run(client, opts, metrics.clone(), tokio::time::sleep(Duration::from_millis(1500)), cell.clone()).await.unwrap();
    assert!(ctx.ready.load(std::sync::atomic::Ordering::Acquire), "the watch caches synced");
    let seen = seen.lock().unwrap().clone();
    let count = |line: &str| seen.iter().filter(|l| l.as_str() == line).count();
    assert_eq!(count("PATCH /api/v1/namespaces/portcullis/configmaps/portcullis-gateway-default"), 1, "{seen:#?}");
    assert_eq!(count("PATCH /api/v1/namespaces/portcullis/secrets/portcullis-gateway-default-keys"), 1);
    // Heartbeat Leases are listed and watched; no Lease is read by name or written.
    assert!(!seen.iter().any(|l| l.contains("/leases/") || (l.contains("/leases") && !l.starts_with("GET "))), "{seen:#?}");
    assert!(seen.iter().any(|l| l == "GET /apis/coordination.k8s.io/v1/namespaces/portcullis/leases"), "{seen:#?}");
    // Without Gateway API: asked once, then nothing of it is watched or written.
    assert!(seen.iter().any(|l| l == "GET /apis/gateway.networking.k8s.io/v1"), "{seen:#?}");
    let gateway_api: Vec<&String> =
        seen.iter().filter(|l| l.contains("gateway.networking.k8s.io") || l.contains("gateway.envoyproxy.io")).collect();
    assert!(gateway_api.iter().all(|l| l.starts_with("GET /apis/") && l.matches('/').count() == 3), "{gateway_api:#?}");
    assert!(metrics.render().contains("portcullis_controller_leader 0"), "not leading after shutdown");
}

/// An empty cluster whose API discovery answers that it serves every kind Portcullis reads once
/// `installed` is set (Gateway API installed while the controller runs).
async fn installing_api_server(
    mut api: ApiServer,
    seen: Arc<std::sync::Mutex<Vec<String>>>,
    installed: Arc<std::sync::atomic::AtomicBool>,
) {
    while let Some((req, reply)) = api.0.next_request().await {
        let path = req.uri().path().to_owned();
        seen.lock().unwrap().push(format!("{} {path}", req.method()));
        let is_watch = req.uri().query().is_some_and(|q| q.contains("watch=true"));
        let (status, body) = if path.starts_with("/apis/") && path.matches('/').count() == 3 {
            if installed.load(std::sync::atomic::Ordering::SeqCst) {
                let names = [
                    "httproutes",
                    "gateways",
                    "gatewayclasses",
                    "grpcroutes",
                    "referencegrants",
                    "securitypolicies",
                    "authorizationpolicies",
                ];
                let resources: Vec<Value> = names
                    .iter()
                    .map(|n| json!({"name": n, "singularName": "", "namespaced": true, "kind": "X", "verbs": ["get"]}))
                    .collect();
                (200, json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": &path[6..], "resources": resources}))
            } else {
                (404, status_error(404, "NotFound"))
            }
        } else if is_watch {
            // A watch that ends after a while, answered beside the other requests.
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(100)).await;
                reply.send_response(Response::builder().status(200).body(Body::from(Vec::new())).unwrap());
            });
            continue;
        } else {
            (200, json!({"kind": "List", "apiVersion": "v1", "metadata": {"resourceVersion": "1"}, "items": []}))
        };
        reply.send_response(Response::builder().status(status).body(Body::from(serde_json::to_vec(&body).unwrap())).unwrap());
    }
}

#[tokio::test]
async fn gateway_api_installed_after_the_start_is_found_watched_and_used_once_its_caches_are_complete() {
    let (client, api) = mock();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let installed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    tokio::spawn(installing_api_server(api, seen.clone(), installed.clone()));
    let opts = Options { rediscover: Duration::from_millis(200), ..options("solo") };
    let cell = Arc::new(tokio::sync::OnceCell::new());
    let run =
        tokio::spawn(super::run(client, opts, ControllerMetrics::new(), tokio::time::sleep(Duration::from_millis(2500)), cell.clone()));
    tokio::time::sleep(Duration::from_millis(700)).await;
    let ctx = cell.get().unwrap_or_else(|| panic!("not running: {:?}", seen.lock().unwrap())).clone();
    assert!(ctx.stores.gateway_api.get().is_none(), "not installed yet");
    assert!(!seen.lock().unwrap().iter().any(|l| l.contains("/httproutes")), "nothing of it watched yet");
    installed.store(true, std::sync::atomic::Ordering::SeqCst);
    for _ in 0..30 {
        if ctx.stores.gateway_api.get().is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ctx.stores.gateway_api.get().is_some(), "found and its caches synced");
    assert!(seen.lock().unwrap().iter().any(|l| l == "GET /apis/gateway.networking.k8s.io/v1/httproutes"), "watched");
    finished(run).await.unwrap();
    // Stopped with the controller: no request after it returned.
    let after = seen.lock().unwrap().len();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(seen.lock().unwrap().len(), after, "the late watches stop with the controller");
}

#[tokio::test]
async fn another_namespaces_takeover_attempt_is_refused_in_its_own_status_and_changes_nothing_of_the_shop() {
    let (client, mut api) = mock();
    let (ctx, mut w) = context(client);
    shop_world(&mut w);
    // Team B: no hosts (every host, the shop's too) and a public rule on the shop's admin path.
    put(
        &mut w.policies,
        policy("team-b", "grab", 10, json!({"rules": [{"name": "open", "public": true, "match": {"paths": [{"prefix": "/orders"}]}}]})),
    );
    let task = spawn_sync(ctx.clone(), LoopState::default());
    let seen = api.answer_all().await;
    let (result, _) = finished(task).await;
    result.unwrap();
    let body = |method: &str, path: &str| {
        seen.iter()
            .find(|(m, p, _)| m == method && p == path)
            .map(|(_, _, b)| b.clone())
            .unwrap_or_else(|| panic!("no {method} {path}: {seen:#?}"))
    };
    let cm: ConfigMap =
        serde_json::from_value(body("PATCH", "/api/v1/namespaces/portcullis/configmaps/portcullis-gateway-default")).unwrap();
    let config = desired::config_from_configmap(&cm).unwrap();
    assert_eq!(config.policies.iter().map(|p| p.key()).collect::<Vec<_>>(), ["shop/orders"], "team B's policy is not served");
    let grab = body("PATCH", "/apis/portcullis.dev/v1alpha1/namespaces/team-b/authpolicies/grab/status");
    let accepted = &grab["status"]["conditions"][0];
    assert_eq!(
        (accepted["type"].as_str(), accepted["status"].as_str(), accepted["reason"].as_str()),
        (Some("Accepted"), Some("False"), Some("HostNotAllowed"))
    );
    assert!(accepted["message"].as_str().unwrap().contains("anyHostNamespaces"), "{accepted}");
    let orders = body("PATCH", "/apis/portcullis.dev/v1alpha1/namespaces/shop/authpolicies/orders/status");
    assert_eq!(orders["status"]["conditions"][0]["status"], "True");
    // The refusal is an Event in team B's namespace, not the shop's.
    let events: Vec<&Value> = seen.iter().filter(|(m, p, _)| m == "POST" && p.ends_with("/events")).map(|(_, _, b)| b).collect();
    assert!(events.iter().any(|e| e["regarding"]["namespace"] == "team-b" && e["type"] == "Warning"), "{events:#?}");
    assert!(!events.iter().any(|e| e["regarding"]["namespace"] == "shop" && e["type"] == "Warning"), "{events:#?}");
}

#[tokio::test]
async fn without_gateway_api_a_policy_with_target_refs_applies_nowhere_and_says_why() {
    let (client, mut api) = mock();
    let (ctx, mut w) = context(client);
    shop_world(&mut w);
    let target = json!([{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": "orders"}]);
    put(&mut w.policies, policy("shop", "attached", 10, json!({"targetRefs": target, "rules": [{"name": "all", "public": true}]})));
    let task = spawn_sync(ctx.clone(), LoopState::default());
    let seen = api.answer_all().await;
    finished(task).await.0.unwrap();
    let status = seen
        .iter()
        .find(|(m, p, _)| m == "PATCH" && p == "/apis/portcullis.dev/v1alpha1/namespaces/shop/authpolicies/attached/status")
        .map(|(_, _, b)| b.clone())
        .unwrap_or_else(|| panic!("{seen:#?}"));
    let accepted = &status["status"]["conditions"][0];
    assert_eq!((accepted["status"].as_str(), accepted["reason"].as_str()), (Some("False"), Some("TargetNotFound")));
    assert!(accepted["message"].as_str().unwrap().contains("Gateway API is not installed"), "{accepted}");
    // The shop's other policy is served as before; nothing of Gateway API is asked for.
    let cm = seen.iter().find(|(m, p, _)| m == "PATCH" && p.ends_with("/configmaps/portcullis-gateway-default")).unwrap();
    let config = desired::config_from_configmap(&serde_json::from_value(cm.2.clone()).unwrap()).unwrap();
    assert_eq!(config.policies.iter().map(|p| p.key()).collect::<Vec<_>>(), ["shop/orders"]);
    assert!(!seen.iter().any(|(_, p, _)| p.contains("gateway.networking.k8s.io") || p.contains("gateway.envoyproxy.io")), "{seen:#?}");
}

#[tokio::test]
async fn a_status_for_a_policy_deleted_meanwhile_does_not_fail_the_pass() {
    let (client, mut api) = mock();
    let (ctx, mut w) = context(client);
    shop_world(&mut w);
    let task = spawn_sync(ctx.clone(), LoopState::default());
    api.expect("PATCH", "/api/v1/namespaces/portcullis/configmaps/portcullis-gateway-default-hosts", 201, Value::Null).await;
    api.expect("PATCH", "/api/v1/namespaces/portcullis/secrets/portcullis-gateway-default-keys", 201, Value::Null).await;
    api.expect("PATCH", "/api/v1/namespaces/portcullis/configmaps/portcullis-gateway-default", 201, Value::Null).await;
    api.expect("PATCH", "/apis/portcullis.dev/v1alpha1/namespaces/shop/authpolicies/orders/status", 404, status_error(404, "NotFound"))
        .await;
    let seen = api.answer_all().await;
    let (result, _) = finished(task).await;
    result.expect("a deleted policy's status is not an error of the whole pass");
    assert!(seen.iter().all(|(m, p, _)| !(m == "PATCH" && p.contains("/status"))), "no retry of the gone object: {seen:?}");
}

#[tokio::test]
async fn a_signing_key_in_a_terminating_namespace_never_recreates_its_secret() {
    let (client, mut api) = mock();
    let (ctx, _w) = context(client);
    let sk = signing_key("gone", "internal", json!({"algorithm": "EdDSA"}));
    let task = tokio::spawn({
        let (ctx, sk) = (ctx.clone(), sk.clone());
        async move { reconcile_inner(&sk, &ctx).await }
    });
    let terminating = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Forbidden", "code": 403,
        "message": "secrets \"internal\" is forbidden: unable to create new content in namespace gone because it is being terminated"});
    api.expect("POST", "/api/v1/namespaces/gone/secrets", 403, terminating).await;
    let action = finished(task).await.expect("not an error to retry");
    assert_eq!(action, kube::runtime::controller::Action::await_change());
    api.expect_nothing().await;

    // A SigningKey being deleted is left alone from the start.
    let mut deleting = signing_key("shop", "old", json!({"algorithm": "EdDSA"}));
    deleting.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now()));
    assert_eq!(reconcile_inner(&deleting, &ctx).await.unwrap(), kube::runtime::controller::Action::await_change());
    api.expect_nothing().await;
}

#[test]
fn each_replica_writes_the_lease_under_its_own_field_manager() {
    let (a, b) = (super::lease_field_manager("controller-7d9f-a"), super::lease_field_manager("controller-7d9f-b"));
    assert_ne!(a, b);
    assert!(a.starts_with("portcullis-") && a.len() <= 128);
    assert!(super::lease_field_manager(&"x".repeat(300)).len() <= 128);
}

fn beat(version: Option<&str>, replica: &str, renewed: jiff::Timestamp, jwks: Vec<crate::contract::heartbeat::JwksHealth>) -> Lease {
    let hb = crate::contract::heartbeat::Heartbeat {
        gateway: "default".into(),
        replica: replica.into(),
        version: version.map(str::to_owned),
        jwks,
        ..Default::default()
    };
    crate::contract::heartbeat::to_lease("portcullis", &hb, renewed, None)
}

fn delete<K>(w: &mut Writer<K>, obj: K)
where
    K: kube::Resource + Clone,
    K::DynamicType: std::hash::Hash + Eq + Clone + Default,
{
    w.apply_watcher_event(&watcher::Event::Delete(obj));
}

fn condition_of(ctx: &Context, name: &str, type_: &str) -> (String, String) {
    let p = ctx.stores.policies.get("shop", name).unwrap();
    let c = p.status.as_ref().unwrap().conditions.iter().find(|c| c.type_ == type_).unwrap().clone();
    (c.status, c.reason)
}

/// One pass of statuses only (heartbeats changed), answered and fed back.
async fn status_pass(api: &mut ApiServer, w: &mut Writers, ctx: &Arc<Context>, state: LoopState) -> (Vec<String>, LoopState) {
    let task = {
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let mut state = state;
            let r = super::gateways::write_statuses(&ctx, &mut state, false).await;
            (r, state)
        })
    };
    let seen = serve_pass(api, w, ctx).await;
    let (r, state) = finished(task).await;
    r.unwrap();
    (seen, state)
}

/// One full pass (compile, publish, statuses), answered and fed back.
async fn full_pass(api: &mut ApiServer, w: &mut Writers, ctx: &Arc<Context>, state: LoopState) -> (Vec<String>, LoopState) {
    let task = spawn_sync(ctx.clone(), state);
    let seen = serve_pass(api, w, ctx).await;
    let (r, state) = finished(task).await;
    r.unwrap();
    (seen, state)
}

#[tokio::test]
async fn heartbeats_make_a_policy_enforced_with_one_status_write_per_real_change_whatever_the_replica_count() {
    let (client, mut api) = mock();
    let (ctx, mut w) = context(client);
    shop_world(&mut w);
    let (_, state) = full_pass(&mut api, &mut w, &ctx, LoopState::default()).await;
    assert_eq!(condition_of(&ctx, "orders", "Enforced"), ("False".into(), "NoReplicas".into()));
    let cm = ctx.stores.gateway_configmaps.get("portcullis", "portcullis-gateway-default").unwrap();
    let version = cm.metadata.annotations.as_ref().unwrap()[desired::ANNOTATION_VERSION].clone();
    let now = jiff::Timestamp::now();

    // A hundred replicas report the current config: one write, Enforced.
    for i in 0..100 {
        put(&mut w.heartbeats, beat(Some(&version), &format!("gw-{i}"), now, Vec::new()));
    }
    let (seen, state) = status_pass(&mut api, &mut w, &ctx, state).await;
    assert_eq!(seen, ["PATCH /apis/portcullis.dev/v1alpha1/namespaces/shop/authpolicies/orders/status"]);
    assert_eq!(condition_of(&ctx, "orders", "Enforced"), ("True".into(), "Enforced".into()));
    let gateways = ctx.stores.policies.get("shop", "orders").unwrap().status.clone().unwrap().gateways;
    assert_eq!((gateways[0].replicas, gateways[0].serving), (100, 100));

    // They all renew, three times: nothing to write.
    let mut state = state;
    for round in 1..=3 {
        for i in 0..100 {
            put(&mut w.heartbeats, beat(Some(&version), &format!("gw-{i}"), now + jiff::SignedDuration::from_secs(round * 10), Vec::new()));
        }
        let (seen, s) = status_pass(&mut api, &mut w, &ctx, state).await;
        assert!(seen.is_empty(), "renewals alone write nothing: {seen:?}");
        state = s;
    }

    // One replica restarts on a config the controller never published: Stale, one write.
    put(&mut w.heartbeats, beat(Some("0000000000000000"), "gw-7", now, Vec::new()));
    let (seen, state) = status_pass(&mut api, &mut w, &ctx, state).await;
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(condition_of(&ctx, "orders", "Enforced"), ("False".into(), "Stale".into()));

    // It goes away (Lease deleted): the 99 others serve it, Enforced again.
    delete(&mut w.heartbeats, beat(Some("0000000000000000"), "gw-7", now, Vec::new()));
    let (seen, state) = status_pass(&mut api, &mut w, &ctx, state).await;
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(condition_of(&ctx, "orders", "Enforced"), ("True".into(), "Enforced".into()));

    // Every heartbeat stops being renewed: once they expire, no replicas.
    let long_ago = now - jiff::SignedDuration::from_secs(120);
    for i in 0..100 {
        put(&mut w.heartbeats, beat(Some(&version), &format!("gw-{i}"), long_ago, Vec::new()));
    }
    let (seen, _) = status_pass(&mut api, &mut w, &ctx, state).await;
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(condition_of(&ctx, "orders", "Enforced"), ("False".into(), "NoReplicas".into()));
}

#[tokio::test]
async fn an_issuer_failing_on_a_gateway_replica_is_in_status_with_an_event_when_it_fails_and_recovers() {
    let (client, mut api) = mock();
    let (ctx, mut w) = context(client);
    // The controller's own probe of this URL fails at once (nothing listens on port 9).
    let uri = "http://127.0.0.1:9/jwks";
    put(
        &mut w.policies,
        policy(
            "shop",
            "orders",
            0,
            json!({
                "issuers": [{"issuer": "https://id", "audiences": ["orders"], "algorithms": ["RS256"], "jwks": {"uri": uri}}],
                "rules": [{"name": "read", "match": {"paths": [{"prefix": "/orders"}]}}],
            }),
        ),
    );
    let mut state = LoopState::default();
    // Two passes: the second carries the controller probe's result.
    for _ in 0..2 {
        state = full_pass(&mut api, &mut w, &ctx, state).await.1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(condition_of(&ctx, "orders", "IssuersReady"), ("Unknown".into(), "JwksUnknown".into()));
    let cm = ctx.stores.gateway_configmaps.get("portcullis", "portcullis-gateway-default").unwrap();
    let version = cm.metadata.annotations.as_ref().unwrap()[desired::ANNOTATION_VERSION].clone();
    let now = jiff::Timestamp::new(jiff::Timestamp::now().as_second(), 123_456_789).unwrap();
    let health = |ready: bool| crate::contract::heartbeat::JwksHealth {
        uri: uri.into(),
        ready,
        keys: 2,
        last_error: (!ready).then(|| "HTTP 503".to_owned()),
        since: now,
    };
    put(&mut w.heartbeats, beat(Some(&version), "a", now, vec![health(true)]));
    put(&mut w.heartbeats, beat(Some(&version), "b", now, vec![health(true)]));
    let (seen, state) = status_pass(&mut api, &mut w, &ctx, state).await;
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(condition_of(&ctx, "orders", "IssuersReady"), ("True".into(), "JwksReady".into()));

    put(&mut w.heartbeats, beat(Some(&version), "b", now, vec![health(false)]));
    let (seen, state) = status_pass(&mut api, &mut w, &ctx, state).await;
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(seen[0].ends_with("/authpolicies/orders/status") && seen[1].ends_with(" IssuerFailing"), "{seen:?}");
    assert_eq!(condition_of(&ctx, "orders", "IssuersReady"), ("False".into(), "JwksFailing".into()));
    let issuers = ctx.stores.policies.get("shop", "orders").unwrap().status.clone().unwrap().issuers;
    assert_eq!((issuers[0].jwks.as_str(), issuers[0].last_error.as_deref(), issuers[0].keys), ("Failing", Some("HTTP 503"), 2));

    put(&mut w.heartbeats, beat(Some(&version), "b", now, vec![health(true)]));
    let (seen, state) = status_pass(&mut api, &mut w, &ctx, state).await;
    assert!(seen.len() == 2 && seen[1].ends_with(" IssuerRecovered"), "status and an event: {seen:?}");
    assert_eq!(condition_of(&ctx, "orders", "IssuersReady"), ("True".into(), "JwksReady".into()));

    // Nothing changed: a full pass writes nothing. The status as stored has whole seconds (the
    // heartbeat's `since` had nanoseconds); a status computed with finer times never equalled
    // it, and every pass rewrote every policy's status.
    let (seen, _) = full_pass(&mut api, &mut w, &ctx, state).await;
    assert!(seen.is_empty(), "{seen:?}");
}

#[tokio::test]
async fn audit_counts_reach_the_status_at_once_and_then_at_most_once_a_minute() {
    let (client, mut api) = mock();
    let (ctx, mut w) = context(client);
    shop_world(&mut w);
    let mut audited = (*ctx.stores.policies.get("shop", "orders").unwrap()).clone();
    audited.spec.mode = Some(crate::api::Mode::Audit);
    put(&mut w.policies, audited);
    let (_, state) = full_pass(&mut api, &mut w, &ctx, LoopState::default()).await;
    let status = || ctx.stores.policies.get("shop", "orders").unwrap().status.clone().unwrap();
    assert_eq!(status().audit_summary.as_deref(), Some("audit: no requests yet"));
    let version =
        ctx.stores.gateway_configmaps.get("portcullis", "portcullis-gateway-default").unwrap().metadata.annotations.as_ref().unwrap()
            [desired::ANNOTATION_VERSION]
            .clone();
    let counted = |allow, deny| {
        let hb = crate::contract::heartbeat::Heartbeat {
            gateway: "default".into(),
            replica: "a".into(),
            version: Some(version.clone()),
            audit: vec![crate::contract::heartbeat::AuditCounts {
                policy: "shop/orders".into(),
                rule: "read".into(),
                would_allow: allow,
                would_deny: deny,
                reasons: [("expired".to_owned(), deny)].into(),
            }],
            ..Default::default()
        };
        crate::contract::heartbeat::to_lease("portcullis", &hb, jiff::Timestamp::now(), None)
    };
    // The first traffic: written at once.
    put(&mut w.heartbeats, counted(0, 0));
    let (_, state) = status_pass(&mut api, &mut w, &ctx, state).await;
    put(&mut w.heartbeats, counted(997, 3));
    let (seen, state) = status_pass(&mut api, &mut w, &ctx, state).await;
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(status().audit_summary.as_deref(), Some("would deny 0.3% (expired)"));
    // Counts move on within the minute: nothing written.
    put(&mut w.heartbeats, counted(1990, 10));
    let (seen, _) = status_pass(&mut api, &mut w, &ctx, state).await;
    assert!(seen.is_empty(), "{seen:?}");
    assert_eq!(status().audit[0].would_deny, 3);
}

fn squatting_world(w: &mut Writers) {
    let spec = |open: bool| {
        let rule = if open {
            json!({"name": "x", "public": true, "match": {"paths": [{"exact": "/x/1"}]}})
        } else {
            json!({"name": "x", "match": {"paths": [{"exact": "/x/1"}]}, "require": [{"claim": "scope", "containsAll": ["x"]}]})
        };
        let jwks = crate::testkit::TestIssuer::new("https://id", crate::api::SigningAlgorithm::ES256).jwks();
        json!({"hosts": ["sq.test"], "issuers": [{"issuer": "https://id", "audiences": ["a"], "algorithms": ["ES256"], "jwks": {"inline": jwks}}], "rules": [rule]})
    };
    put(&mut w.policies, policy("sq-own", "p", 0, spec(false)));
    put(&mut w.policies, policy("sq-bad", "grab", 10, spec(true)));
}

fn accepted_reason(ctx: &Context, ns: &str, name: &str) -> (String, String) {
    let p = ctx.stores.policies.get(ns, name).unwrap();
    let c = p.status.as_ref().unwrap().conditions.iter().find(|c| c.type_ == "Accepted").unwrap().clone();
    (c.reason, c.message)
}

fn served(ctx: &Context) -> Vec<String> {
    let cm = ctx.stores.gateway_configmaps.get("portcullis", "portcullis-gateway-default").unwrap();
    desired::config_from_configmap(&cm).unwrap().policies.iter().map(|p| p.key()).collect()
}

#[tokio::test]
async fn a_squatter_never_inherits_a_host_when_its_owner_redeploys_even_before_the_cache_sees_the_claims() {
    let (client, mut api) = mock();
    let (ctx, mut w) = context(client);
    squatting_world(&mut w);
    let hosts = "/api/v1/namespaces/portcullis/configmaps/portcullis-gateway-default-hosts";

    // The owner's claim is written before its config.
    let task = spawn_sync(ctx.clone(), LoopState::default());
    let (_, claims) = api.expect("PATCH", hosts, 201, Value::Null).await;
    assert_eq!(claims["data"]["claims"], "sq.test sq-own\n");
    let claims_cm: ConfigMap = serde_json::from_value(stored(&claims, "7")).unwrap();
    // Everything else is fed back, except the claims: the cache lags behind that write.
    for (_, path, sent) in api.answer_all().await {
        if path.ends_with("/status") {
            feed_status(&ctx, &mut w, &path, &sent);
        } else if path.ends_with("/configmaps/portcullis-gateway-default") {
            put(&mut w.gateway_configmaps, serde_json::from_value(stored(&sent, "8")).unwrap());
        }
    }
    let (result, state) = finished(task).await;
    result.unwrap();
    assert_eq!(accepted_reason(&ctx, "sq-bad", "grab").0, "HostNotAllowed");
    assert_eq!(served(&ctx), ["sq-own/p"]);

    // The owner deletes its policy to redeploy: the squatter stays refused, nothing serves /x/1.
    let owner = (*ctx.stores.policies.get("sq-own", "p").unwrap()).clone();
    w.policies.apply_watcher_event(&watcher::Event::Delete(owner.clone()));
    let (seen, state) = full_pass(&mut api, &mut w, &ctx, state).await;
    assert!(!seen.iter().any(|s| s.contains("-hosts")), "the claims did not change: {seen:?}");
    let (reason, message) = accepted_reason(&ctx, "sq-bad", "grab");
    assert_eq!(reason, "HostNotAllowed");
    assert!(message.contains("belongs to namespace sq-own (it claimed sq.test first and keeps the claim"), "{message}");
    assert!(served(&ctx).is_empty());

    // A controller restart meanwhile (`helm upgrade` of Portcullis): the claims are read back.
    drop(state);
    put(&mut w.gateway_configmaps, claims_cm);
    let (_, state) = full_pass(&mut api, &mut w, &ctx, LoopState::default()).await;
    assert_eq!(accepted_reason(&ctx, "sq-bad", "grab").0, "HostNotAllowed");

    // Re-applied under a new name, newer than the squatter: the host is the owner's again.
    let mut again = policy("sq-own", "p-renamed", 20, serde_json::to_value(&owner.spec).unwrap());
    again.metadata.generation = Some(1);
    put(&mut w.policies, again);
    let (_, _) = full_pass(&mut api, &mut w, &ctx, state).await;
    assert_eq!(accepted_reason(&ctx, "sq-own", "p-renamed").0, "Valid");
    assert_eq!(accepted_reason(&ctx, "sq-bad", "grab").0, "HostNotAllowed");
    assert_eq!(served(&ctx), ["sq-own/p-renamed"]);
}

#[tokio::test]
async fn the_platform_team_releases_a_held_host_by_deleting_its_line() {
    let (client, mut api) = mock();
    let (ctx, mut w) = context(client);
    squatting_world(&mut w);
    let (_, state) = full_pass(&mut api, &mut w, &ctx, LoopState::default()).await;
    let owner = (*ctx.stores.policies.get("sq-own", "p").unwrap()).clone();
    w.policies.apply_watcher_event(&watcher::Event::Delete(owner));
    let (_, state) = full_pass(&mut api, &mut w, &ctx, state).await;
    assert_eq!(accepted_reason(&ctx, "sq-bad", "grab").0, "HostNotAllowed");
    // `kubectl edit`: the line goes, a new resourceVersion comes.
    let mut cm = (*ctx.stores.gateway_configmaps.get("portcullis", "portcullis-gateway-default-hosts").unwrap()).clone();
    cm.data.as_mut().unwrap().insert("claims".into(), "# released sq.test\n".into());
    cm.metadata.resource_version = Some("99".into());
    put(&mut w.gateway_configmaps, cm);
    let (seen, _) = full_pass(&mut api, &mut w, &ctx, state).await;
    assert_eq!(accepted_reason(&ctx, "sq-bad", "grab").0, "Valid");
    assert_eq!(served(&ctx), ["sq-bad/grab"]);
    assert!(seen.contains(&"PATCH /api/v1/namespaces/portcullis/configmaps/portcullis-gateway-default-hosts".to_owned()), "{seen:?}");
    let claims = ctx.stores.gateway_configmaps.get("portcullis", "portcullis-gateway-default-hosts").unwrap();
    assert_eq!(claims.data.as_ref().unwrap()["claims"], "sq.test sq-bad\n");
}

#[tokio::test]
async fn a_policy_that_goes_live_once_its_signing_key_is_ready_gets_its_programmed_event() {
    let (client, mut api) = mock();
    let (ctx, mut w) = context(client);
    shop_world(&mut w);
    // The minting key's keyring is not written yet (the SigningKey was applied a moment ago).
    let internal = ctx.stores.key_secrets.get("shop", "internal").unwrap();
    w.key_secrets.apply_watcher_event(&watcher::Event::Delete((*internal).clone()));
    let (seen, state) = full_pass(&mut api, &mut w, &ctx, LoopState::default()).await;
    let status = ctx.stores.policies.get("shop", "orders").unwrap().status.clone().unwrap();
    assert_eq!(status.conditions[0].reason, "KeyNotFound");
    assert_eq!(status.observed_generation, Some(3), "this generation was observed already");
    assert!(!seen.iter().any(|s| s.ends_with(" Programmed")), "{seen:?}");
    // The keyring arrives: same generation, now live — and said so with an Event.
    put(&mut w.key_secrets, (*internal).clone());
    let (seen, state) = full_pass(&mut api, &mut w, &ctx, state).await;
    assert_eq!(condition_of(&ctx, "orders", "Programmed"), ("True".to_owned(), "ConfigPublished".to_owned()));
    assert!(seen.contains(&"POST /apis/events.k8s.io/v1/namespaces/shop/events Programmed".to_owned()), "{seen:?}");
    // And only once.
    let (seen, _) = full_pass(&mut api, &mut w, &ctx, state).await;
    assert!(!seen.iter().any(|s| s.contains("/events")), "{seen:?}");
}

#[tokio::test]
async fn a_pass_before_the_cache_shows_the_last_statuses_does_not_write_them_again() {
    let (client, mut api) = mock();
    let (ctx, mut w) = context(client);
    shop_world(&mut w);
    // A first pass whose status write the watch cache does not show yet (feed nothing back but
    // the config, as a lagging cache under a bulk apply would).
    let task = spawn_sync(ctx.clone(), LoopState::default());
    for (_, path, sent) in api.answer_all().await {
        if path.ends_with("/configmaps/portcullis-gateway-default") {
            put(&mut w.gateway_configmaps, serde_json::from_value(stored(&sent, "8")).unwrap());
        }
    }
    let (result, state) = finished(task).await;
    result.unwrap();
    // Another policy changes, in a later second: a full pass. The shop's status is the same (a
    // status computed from the cache's older copy would carry new transition times): not
    // written again.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    put(
        &mut w.policies,
        policy("shop", "search", 5, json!({"rules": [{"name": "r", "public": true, "match": {"paths": [{"prefix": "/search"}]}}]})),
    );
    let (seen, _) = full_pass(&mut api, &mut w, &ctx, state).await;
    assert!(!seen.iter().any(|s| s.contains("/authpolicies/orders/status")), "{seen:?}");
    assert!(seen.iter().any(|s| s.contains("/authpolicies/search/status")), "{seen:?}");
}

#[tokio::test]
async fn a_config_too_large_for_a_configmap_is_refused_in_every_status_and_the_last_one_keeps_serving() {
    let (client, mut api) = mock();
    let (ctx, mut w) = context(client);
    shop_world(&mut w);
    let (_, state) = full_pass(&mut api, &mut w, &ctx, LoopState::default()).await;
    let served_before = ctx.stores.gateway_configmaps.get("portcullis", "portcullis-gateway-default").unwrap();
    assert_eq!(condition_of(&ctx, "orders", "Programmed"), ("True".into(), "ConfigPublished".into()));
    // Paths that do not compress: 20 policies whose config is well over a MiB gzipped.
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    let mut path = || format!("/{}", crate::testkit::random_word(&mut seed, 200, b"abcdefghijklmnopqrstuvwxyz0123456789"));
    let mut huge = Vec::new();
    for i in 0..20 {
        let rules: Vec<Value> = (0..16)
            .map(|r| json!({"name": format!("r{r}"), "public": true, "match": {"paths": (0..32).map(|_| json!({"prefix": path()})).collect::<Vec<_>>()}}))
            .collect();
        let p = policy("shop", &format!("huge-{i}"), 10 + i, json!({"rules": rules}));
        huge.push(p.clone());
        put(&mut w.policies, p);
    }
    let (seen, state) = full_pass(&mut api, &mut w, &ctx, state).await;
    assert!(seen.iter().all(|s| s.ends_with("/status")), "nothing but statuses is written: {seen:?}");
    assert_eq!(seen.len(), 21, "every policy of the gateway says so: {seen:?}");
    for name in ["orders", "huge-0", "huge-19"] {
        assert_eq!(condition_of(&ctx, name, "Programmed"), ("False".into(), "ConfigTooLarge".into()), "{name}");
        assert_eq!(condition_of(&ctx, name, "Accepted").0, "True", "{name} is valid; only its publication failed");
    }
    let message = ctx.stores.policies.get("shop", "huge-3").unwrap().status.as_ref().unwrap().conditions[1].message.clone();
    assert!(message.contains("over the 1048576 a ConfigMap holds") && message.contains("last published config keeps serving"), "{message}");
    assert_eq!(ctx.stores.gateway_configmaps.get("portcullis", "portcullis-gateway-default").unwrap(), served_before);
    assert_eq!(state.last_good["default"].len(), 1, "only what was published counts as last good");
    // Removing the cause publishes again.
    for p in huge {
        delete(&mut w.policies, p);
    }
    let (seen, _) = full_pass(&mut api, &mut w, &ctx, state).await;
    assert_eq!(condition_of(&ctx, "orders", "Programmed"), ("True".into(), "ConfigPublished".into()), "{seen:?}");
}

#[tokio::test]
async fn a_pass_writes_a_batch_of_statuses_and_the_status_passes_that_follow_write_the_rest() {
    let (client, mut api) = mock();
    let (ctx, mut w) = context(client);
    for i in 0..650 {
        let spec = json!({"rules": [{"name": "r", "public": true, "match": {"paths": [{"prefix": format!("/svc{i}")}]}}]});
        put(&mut w.policies, policy("shop", &format!("p{i}"), i as i64, spec));
    }
    let (first, state) = full_pass(&mut api, &mut w, &ctx, LoopState::default()).await;
    assert_eq!(first.iter().filter(|p| p.ends_with("/status")).count(), 500, "one batch");
    assert!(first.iter().any(|p| p.ends_with("/configmaps/portcullis-gateway-default")), "the config goes out at once");
    // The loop is told to run a status pass at once; it writes what is still missing.
    tokio::time::timeout(Duration::from_secs(1), ctx.status_trigger.notified()).await.expect("a status pass is asked for");
    let (second, state) = status_pass(&mut api, &mut w, &ctx, state).await;
    assert_eq!(second.iter().filter(|p| p.ends_with("/status")).count(), 150, "{second:?}");
    let programmed = ctx.stores.policies.state().iter().filter(|p| p.status.is_some()).count();
    assert_eq!(programmed, 650);
    let (third, _) = status_pass(&mut api, &mut w, &ctx, state).await;
    assert!(third.iter().all(|p| !p.ends_with("/status")), "nothing left: {third:?}");
}

fn exchange_policy(ns: &str, name: &str, generation: i64, spec: Value) -> crate::api::TokenExchangePolicy {
    let mut x = crate::api::TokenExchangePolicy::new(name, serde_json::from_value(spec).unwrap());
    x.metadata.namespace = Some(ns.into());
    x.metadata.generation = Some(generation);
    x.metadata.uid = Some(format!("uid-{ns}-{name}"));
    x
}

fn exchange_condition(ctx: &Context, ns: &str, name: &str, type_: &str) -> (String, String) {
    let x = ctx.stores.exchanges.get(ns, name).unwrap();
    let c = x.status.as_ref().unwrap().conditions.iter().find(|c| c.type_ == type_).unwrap().clone();
    (c.status, c.reason)
}

#[tokio::test]
async fn a_token_exchange_policy_is_accepted_programmed_and_enforced_and_a_key_not_allowed_is_refused_in_its_status() {
    let (client, mut api) = mock();
    let (ctx, mut w) = context(client);
    shop_world(&mut w);
    let bank_key = signing_key("bank", "internal", json!({"algorithm": "EdDSA"}));
    put(&mut w.key_secrets, keyed(&bank_key).1);
    put(&mut w.keys, bank_key);
    let spec = json!({"audience": {"serviceAccount": "orders"}, "signingKeyRef": {"name": "internal"}, "from": [{"serviceAccount": "shop/checkout"}]});
    put(&mut w.exchanges, exchange_policy("shop", "orders", 2, spec.clone()));
    put(&mut w.exchanges, exchange_policy("bank", "orders", 1, spec));
    let cluster = crate::testkit::TestIssuer::new("https://kubernetes.default.svc.cluster.local", crate::api::SigningAlgorithm::RS256);
    let discovered = crate::policy::config::ClusterIssuer {
        issuer: cluster.url.clone(),
        keys: vec![crate::api::JwkObject(cluster.key.public_jwk().clone())],
    };
    ctx.cluster_issuer.lock().unwrap().issuer = Some(discovered.clone());

    let (seen, state) = full_pass(&mut api, &mut w, &ctx, LoopState::default()).await;
    assert!(
        seen.contains(&"PATCH /apis/portcullis.dev/v1alpha1/namespaces/shop/tokenexchangepolicies/orders/status".to_owned()),
        "{seen:?}"
    );
    let cm = ctx.stores.gateway_configmaps.get("portcullis", "portcullis-gateway-default").unwrap();
    let config = desired::config_from_configmap(&cm).unwrap();
    assert_eq!(config.exchanges.len(), 1);
    assert_eq!(config.exchanges[0].audience, "system:serviceaccount:shop:orders");
    assert_eq!(config.cluster_issuer, Some(discovered), "the cluster's issuer goes with the config that needs it");
    assert_eq!(exchange_condition(&ctx, "shop", "orders", "Accepted"), ("True".into(), "Valid".into()));
    assert_eq!(exchange_condition(&ctx, "shop", "orders", "Programmed"), ("True".into(), "ConfigPublished".into()));
    assert_eq!(exchange_condition(&ctx, "shop", "orders", "Enforced"), ("False".into(), "NoReplicas".into()));
    assert_eq!(exchange_condition(&ctx, "bank", "orders", "Accepted"), ("False".into(), "SigningKeyNotAllowed".into()));
    assert_eq!(exchange_condition(&ctx, "bank", "orders", "Programmed").0, "False");

    // The replicas serve the config: Enforced, with one write.
    let version = cm.metadata.annotations.as_ref().unwrap()[desired::ANNOTATION_VERSION].clone();
    put(&mut w.heartbeats, beat(Some(&version), "gw-0", jiff::Timestamp::now(), Vec::new()));
    let (seen, state) = status_pass(&mut api, &mut w, &ctx, state).await;
    assert!(
        seen.contains(&"PATCH /apis/portcullis.dev/v1alpha1/namespaces/shop/tokenexchangepolicies/orders/status".to_owned()),
        "{seen:?}"
    );
    assert_eq!(exchange_condition(&ctx, "shop", "orders", "Enforced"), ("True".into(), "Enforced".into()));
    // Nothing changed: nothing written.
    let (seen, _) = status_pass(&mut api, &mut w, &ctx, state).await;
    assert!(!seen.iter().any(|s| s.contains("tokenexchangepolicies")), "{seen:?}");
}

/// A sign-in client Secret, as its team would label it.
fn client_secret(value: &str) -> Secret {
    serde_json::from_value(json!({
        "metadata": {"name": "web-oidc", "namespace": "shop", "resourceVersion": value, "labels": {crate::policy::validate::CLIENT_SECRET_LABEL: "true"}},
        "data": {"client-secret": base64::Engine::encode(&base64::engine::general_purpose::STANDARD, value)},
    }))
    .unwrap()
}

#[tokio::test]
async fn a_sign_in_client_secret_is_delivered_with_the_keys_once_its_labelled_secret_exists_and_again_when_it_changes() {
    let (client, mut api) = mock();
    let (ctx, mut w) = context(client);
    shop_world(&mut w);
    let sessions = signing_key("shop", "sessions", json!({"algorithm": "EdDSA"}));
    put(&mut w.key_secrets, keyed(&sessions).1);
    put(&mut w.keys, sessions);
    put(
        &mut w.policies,
        policy(
            "shop",
            "web",
            0,
            json!({
                "hosts": ["web.shop.example"],
                "signIn": {"issuer": "https://id.shop.example", "clientId": "web", "sessionKeyRef": {"name": "sessions"}, "clientSecretRef": {"name": "web-oidc"}},
                "rules": [{"name": "app", "match": {"paths": [{"prefix": "/"}]}}]
            }),
        ),
    );
    let entry = crate::policy::config::SecretRef { namespace: "shop".into(), name: "web-oidc".into(), key: "client-secret".into() }.entry();
    let delivered = |ctx: &Context| {
        let keys = ctx.stores.gateway_secrets.get("portcullis", "portcullis-gateway-default-keys")?;
        crate::contract::publish::client_secrets_from_secret(&keys).get(&entry).cloned()
    };
    let mut state = LoopState::default();
    // Without the Secret: the policy is refused, saying which Secret and label it needs.
    let task = spawn_sync(ctx.clone(), state);
    let seen = serve_pass(&mut api, &mut w, &ctx).await;
    let (result, s) = finished(task).await;
    result.unwrap();
    state = s;
    assert!(seen.iter().any(|r| r.contains("authpolicies/web/status")), "{seen:?}");
    let web = ctx.stores.policies.get("shop", "web").unwrap();
    let accepted = &web.status.as_ref().unwrap().conditions[0];
    assert_eq!((accepted.status.as_str(), accepted.reason.as_str()), ("False", "KeyNotFound"));
    assert!(accepted.message.contains("web-oidc") && accepted.message.contains("portcullis.dev/client-secret"), "{}", accepted.message);
    assert_eq!(delivered(&ctx), None);

    // The Secret appears: accepted, and its value goes out with the keys, never in the config.
    put(&mut w.client_secrets, client_secret("first-value"));
    let task = spawn_sync(ctx.clone(), state);
    serve_pass(&mut api, &mut w, &ctx).await;
    let (result, s) = finished(task).await;
    result.unwrap();
    state = s;
    assert_eq!(ctx.stores.policies.get("shop", "web").unwrap().status.as_ref().unwrap().conditions[0].status, "True");
    assert_eq!(delivered(&ctx).as_deref(), Some("first-value"));
    let cm = ctx.stores.gateway_configmaps.get("portcullis", "portcullis-gateway-default").unwrap();
    let published = serde_json::to_string(&crate::contract::publish::config_from_configmap(&cm).unwrap()).unwrap();
    assert!(published.contains("web-oidc") && !published.contains("first-value"));
    let keys_hash = |ctx: &Context| {
        let cm = ctx.stores.gateway_configmaps.get("portcullis", "portcullis-gateway-default").unwrap();
        cm.metadata.annotations.as_ref().unwrap()[desired::ANNOTATION_KEYS].clone()
    };
    let before = keys_hash(&ctx);

    // Rotated at the provider and in the Secret: delivered again, with the config naming the new keys.
    put(&mut w.client_secrets, client_secret("second-value"));
    let task = spawn_sync(ctx.clone(), state);
    serve_pass(&mut api, &mut w, &ctx).await;
    finished(task).await.0.unwrap();
    assert_eq!(delivered(&ctx).as_deref(), Some("second-value"));
    assert_ne!(keys_hash(&ctx), before, "the config and its keys stay one consistent pair");
}
