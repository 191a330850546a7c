//! The driver of `bench/scale.sh`: thousands of AuthPolicies on a real API server, and how fast
//! the controller programs them. Talks to the cluster of `KUBECONFIG`.
//!
//!   scale crds NAMESPACE                             applies the CRDs, creates the controller's namespace
//!   scale setup NAMESPACES POLICIES KEYS JWKS_URL   namespaces, SigningKeys and policies (32 writes at once)
//!   scale programmed POLICIES                        waits until every policy is Programmed at its generation
//!   scale edits COUNT                                edits one policy at a time: apply → Programmed, p50/p99
//!   scale jwks PORT                                  serves a JWKS for the policies' issuer (until killed)
//!   scale config FILE NAMESPACES POLICIES KEYS       the compiled gateway config of those policies, without a
//!                                                    cluster (gzip; for `portcullis gateway --config`);
//!                                                    SCALE_RANDOM_NAMES=1: random hosts and resource names
//!   scale memory NAMESPACES POLICIES KEYS            where the controller's memory goes, without a cluster
//!                                                    (live heap bytes after each part of its state)
//!   scale size NAMESPACE                             the gateway ConfigMap's size, compressed and not
//!   scale cleanup                                    deletes the namespaces
//!
//! The policies are `testkit::scale_policy` (4 routes each; `cargo bench --bench decide scale`
//! measures the controller's work on the same ones without an API server).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use portcullis::api::{AuthPolicy, SigningKey};
use portcullis::testkit::scale_policy;
use serde_json::json;

const PREFIX: &str = "scale";

/// Live heap bytes, for `scale memory`.
struct Counting;
static LIVE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
static PEAK: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

unsafe impl std::alloc::GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        use std::sync::atomic::Ordering::Relaxed;
        let live = LIVE.fetch_add(layout.size(), Relaxed) + layout.size();
        PEAK.fetch_max(live, Relaxed);
        unsafe { std::alloc::System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        LIVE.fetch_sub(layout.size(), std::sync::atomic::Ordering::Relaxed);
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn namespace(n: usize) -> String {
    format!("{PREFIX}-{n:03}")
}

async fn setup(client: Client, namespaces: usize, policies: usize, keys: usize, jwks: String) {
    let started = Instant::now();
    let ns_api: Api<Namespace> = Api::all(client.clone());
    for n in 0..namespaces {
        let ns = serde_json::from_value(json!({"metadata": {"name": namespace(n)}})).unwrap();
        match ns_api.create(&PostParams::default(), &ns).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => panic!("namespace: {e}"),
        }
    }
    for n in 0..keys.min(namespaces) {
        let api: Api<SigningKey> = Api::namespaced(client.clone(), &namespace(n));
        let sk = serde_json::from_value(json!({"metadata": {"name": "internal"}, "spec": {"algorithm": "EdDSA"}})).unwrap();
        let _ = api.create(&PostParams::default(), &sk).await;
    }
    let per_ns = policies / namespaces;
    let writes = (0..namespaces).flat_map(|n| (0..per_ns).map(move |i| (n, i)));
    let count = futures::stream::iter(writes)
        .map(|(n, i)| {
            let (client, jwks) = (client.clone(), jwks.clone());
            async move {
                let api: Api<AuthPolicy> = Api::namespaced(client, &namespace(n));
                let p: AuthPolicy = serde_json::from_value(scale_policy(&namespace(n), i, n < keys, &jwks)).unwrap();
                loop {
                    match api.create(&PostParams::default(), &p).await {
                        Ok(_) => return,
                        Err(kube::Error::Api(s)) if s.code == 409 => return,
                        Err(e) => {
                            eprintln!("create {}/p{i}: {e}; retrying", namespace(n));
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                    }
                }
            }
        })
        .buffer_unordered(32)
        .count()
        .await;
    println!("created {count} policies in {namespaces} namespaces ({keys} SigningKeys) in {:.1} s", started.elapsed().as_secs_f64());
}

fn programmed_at(p: &AuthPolicy) -> bool {
    p.status.as_ref().is_some_and(|s| {
        s.conditions.iter().any(|c| c.type_ == "Programmed" && c.status == "True" && c.observed_generation == p.metadata.generation)
    })
}

async fn programmed(client: Client, want: usize) {
    let started = Instant::now();
    let api: Api<AuthPolicy> = Api::all(client);
    let mut state: HashMap<String, bool> = HashMap::new();
    let stream = watcher(api, watcher::Config::default().any_semantic()).applied_objects();
    let mut stream = std::pin::pin!(stream);
    let mut last = Instant::now();
    while let Some(p) = stream.try_next().await.expect("watch") {
        if !p.namespace().unwrap_or_default().starts_with(PREFIX) {
            continue;
        }
        state.insert(format!("{}/{}", p.namespace().unwrap_or_default(), p.name_any()), programmed_at(&p));
        let done = state.values().filter(|v| **v).count();
        if last.elapsed() > Duration::from_secs(5) {
            eprintln!("{done}/{want} programmed after {:.0} s", started.elapsed().as_secs_f64());
            last = Instant::now();
        }
        if done >= want {
            break;
        }
    }
    println!("all {want} policies Programmed {:.1} s after the wait started", started.elapsed().as_secs_f64());
}

async fn edits(client: Client, count: usize) {
    let api: Api<AuthPolicy> = Api::all(client.clone());
    let all = api.list(&ListParams::default()).await.unwrap();
    let mine: Vec<AuthPolicy> = all.items.into_iter().filter(|p| p.namespace().unwrap_or_default().starts_with(PREFIX)).collect();
    assert!(!mine.is_empty(), "no policies: run setup first");
    let mut latencies = Vec::new();
    for k in 0..count {
        let target = &mine[(k * 7919) % mine.len()];
        let (ns, name) = (target.namespace().unwrap(), target.name_any());
        let api: Api<AuthPolicy> = Api::namespaced(client.clone(), &ns);
        let patch = json!({"spec": {"rules": [{"name": "health", "match": {"paths": [{"exact": format!("/healthz/{k}")}]}, "public": true, "forward": {"token": "none"}}]}});
        let started = Instant::now();
        let edited = api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
        wait_programmed(&api, &name, edited.metadata.generation).await;
        if started.elapsed() > Duration::from_secs(1) {
            eprintln!("edit {k} ({ns}/{name}) took {:.3} s", started.elapsed().as_secs_f64());
        }
        latencies.push(started.elapsed());
        // The rules list is replaced by the patch: put the policy back as it was.
        let original = json!({"spec": {"rules": target.spec.rules}});
        let restored = api.patch(&name, &PatchParams::default(), &Patch::Merge(&original)).await.unwrap();
        wait_programmed(&api, &name, restored.metadata.generation).await;
    }
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() as f64 * q).ceil() as usize).clamp(1, latencies.len()) - 1].as_secs_f64();
    println!("one edit -> Programmed over {count} edits: p50 {:.3} s, p99 {:.3} s, max {:.3} s", at(0.5), at(0.99), at(1.0));
}

async fn wait_programmed(api: &Api<AuthPolicy>, name: &str, generation: Option<i64>) {
    let stream = watcher(api.clone(), watcher::Config::default().fields(&format!("metadata.name={name}"))).applied_objects();
    let mut stream = std::pin::pin!(stream);
    while let Some(p) = stream.try_next().await.expect("watch") {
        if p.metadata.generation == generation && programmed_at(&p) {
            return;
        }
    }
}

async fn crds(client: Client, namespace: &str) {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in portcullis::api::crds() {
        let name = crd.metadata.name.clone().unwrap();
        api.patch(&name, &PatchParams::apply("portcullis-scale").force(), &Patch::Apply(&crd)).await.unwrap();
    }
    let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}});
    Api::<Namespace>::all(client).patch(namespace, &PatchParams::apply("portcullis-scale"), &Patch::Apply(&ns)).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
}

async fn size(client: Client, namespace: &str) {
    let api: Api<k8s_openapi::api::core::v1::ConfigMap> = Api::namespaced(client, namespace);
    let cm = api.get("portcullis-gateway-default").await.unwrap();
    let compressed = cm.binary_data.as_ref().and_then(|d| d.get(portcullis::contract::publish::CONFIG_KEY)).map_or(0, |b| b.0.len());
    let config = portcullis::contract::publish::config_from_configmap(&cm).unwrap();
    let json = config.to_json().len();
    let object = serde_json::to_vec(&cm).unwrap().len();
    println!(
        "gateway ConfigMap: {} KiB object, {} KiB compressed config of {:.1} MiB JSON ({:.0}x), {} policies, {} routes, version {}",
        object / 1024,
        compressed / 1024,
        json as f64 / 1048576.0,
        json as f64 / compressed.max(1) as f64,
        config.policies.len(),
        config.route_count(),
        config.version
    );
    if let Ok(hosts) = api.get("portcullis-gateway-default-hosts").await {
        let lines = hosts.data.as_ref().and_then(|d| d.get("claims")).map_or(0, |c| c.lines().count());
        println!("host claims: {lines} lines, {} KiB", serde_json::to_vec(&hosts).unwrap().len() / 1024);
    }
}

async fn cleanup(client: Client) {
    let api: Api<Namespace> = Api::all(client);
    for ns in api.list(&ListParams::default()).await.unwrap().items {
        if ns.name_any().starts_with(&format!("{PREFIX}-")) {
            let _ = api.delete(&ns.name_any(), &DeleteParams::default()).await;
        }
    }
}

/// The gateway config the controller would publish for these policies.
fn offline_config(file: &str, namespaces: usize, policies: usize, keys: usize) {
    use portcullis::controller::desired;
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    let random = std::env::var_os("SCALE_RANDOM_NAMES").is_some();
    let mut i = 0;
    let world = portcullis::testkit::scale_world(namespaces, policies, keys, "http://127.0.0.1:1/jwks", |p| {
        let resource = format!("res{}", i % (policies / namespaces));
        i += 1;
        if random { randomize_names(p, &resource, &mut seed) } else { p }
    });
    let (published, _) = desired::published_keys(&world.signing_keys, |n, _| world.secrets.get(n).cloned());
    let inputs = desired::policy_inputs(&world.policies, "default", &Default::default());
    let tenancy = desired::tenancy(&world.settings, "portcullis", "default", &world.signing_keys, Default::default());
    let compiled = portcullis::policy::compile("default", &inputs, &published, &tenancy);
    std::fs::write(file, compiled.config.to_gzip()).unwrap();
    println!("{}: {} policies, {} routes", file, compiled.config.policies.len(), compiled.config.route_count());
}

/// The controller's state for these policies, part by part, as live heap bytes: the watch
/// cache's objects (with a status as the controller writes it), one
/// compilation with its validation cache, and what a pass keeps afterwards.
fn memory(namespaces: usize, policies: usize, keys: usize) {
    use std::sync::atomic::Ordering::Relaxed;

    use portcullis::controller::desired;
    let mib = |b: usize| b as f64 / (1 << 20) as f64;
    let mut last = LIVE.load(Relaxed);
    let mut step = |what: &str| {
        let live = LIVE.load(Relaxed);
        println!("{what:<58} {:>+8.1} MiB  (live {:.1} MiB, peak {:.1} MiB)", mib(live) - mib(last), mib(live), mib(PEAK.load(Relaxed)));
        last = live;
    };
    let now = jiff::Timestamp::now();
    let status = desired::policy_status(
        None,
        Some(1),
        &portcullis::policy::Outcome::Accepted,
        &desired::Programmed::Published { gateway: "default".into() },
        None,
        now,
    );
    let mut version = 100_000;
    let world = portcullis::testkit::scale_world(namespaces, policies, keys, "https://id.scale.test/jwks", |mut p| {
        version += 1;
        p["metadata"]["resourceVersion"] = json!(version.to_string());
        p["status"] = serde_json::to_value(&status).unwrap();
        p
    });
    let (signing_keys, secrets, settings, cache) = (world.signing_keys, world.secrets, world.settings, world.policies);
    step(&format!("watch caches: {} AuthPolicies with their statuses, SigningKeys, keyring Secrets", cache.len()));
    let mut validations = portcullis::policy::ValidationCache::default();
    let (published, rings) = desired::published_keys(&signing_keys, |n, _| secrets.get(n).cloned());
    let inputs = desired::policy_inputs(&cache, "default", &Default::default());
    step("the inputs of a compilation");
    let tenancy = desired::tenancy(&settings, "portcullis", "default", &signing_keys, Default::default());
    let compiled = portcullis::policy::compile_cached("default", &inputs, &published, &tenancy, &mut validations);
    step("one compilation: config, outcomes, ledger, validation cache");
    let secret = desired::gateway_keys_secret("portcullis", &compiled.config, &rings, |_| None);
    let cm = desired::gateway_configmap("portcullis", &compiled.config, &secret);
    step(&format!("the ConfigMap ({} bytes) and key Secret", desired::configmap_bytes(&cm)));
    drop(inputs);
    let last_good = compiled.config.policies_by_key();
    step("inputs dropped; last good set kept");
    let mut history = portcullis::controller::dataplane::History::default();
    let mut compiled = compiled;
    let version = compiled.config.version.clone();
    for k in 0..40 {
        compiled.config.version = format!("{version}-{k}");
        history.record(&compiled.config);
    }
    compiled.config.version = version;
    step("the history of the last published configs (full)");
    let inputs = desired::policy_inputs(&cache, "default", &last_good);
    let again = portcullis::policy::compile_cached("default", &inputs, &published, &tenancy, &mut validations);
    drop((inputs, again));
    step("a second pass, dropped (what it leaves behind)");
    drop((compiled, cm, secret, last_good, history, validations));
    step("all but the watch cache dropped");
}

/// The policy with its resource name (in paths and scopes) and its host replaced by random
/// lowercase words: real names do not differ by a counter, and compress far less.
fn randomize_names(policy: serde_json::Value, resource: &str, seed: &mut u64) -> serde_json::Value {
    let mut word = |len: usize| portcullis::testkit::random_word(seed, len, b"abcdefghijklmnopqrstuvwxyz");
    let text = policy.to_string();
    let host = policy["spec"]["hosts"][0].as_str().unwrap().to_owned();
    let text = text.replace(&host, &format!("{}.{}.example", word(8), word(6))).replace(resource, &word(10));
    serde_json::from_str(&text).unwrap()
}

fn serve_jwks(port: u16) {
    use std::io::{Read, Write};
    let issuer = portcullis::testkit::TestIssuer::new(portcullis::testkit::SCALE_ISSUER, portcullis::api::SigningAlgorithm::ES256);
    let body = json!({"keys": issuer.jwks()["keys"]}).to_string();
    let listener = std::net::TcpListener::bind(("127.0.0.1", port)).expect("bind");
    for mut s in listener.incoming().flatten() {
        let mut buf = [0u8; 4096];
        let _ = s.read(&mut buf);
        let _ = write!(
            s,
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| args.get(i).unwrap_or_else(|| panic!("missing argument {i}: see the module docs")).clone();
    let num = |i: usize| arg(i).parse::<usize>().expect("a number");
    match args.first().map(String::as_str) {
        Some("jwks") => return serve_jwks(num(1) as u16),
        Some("config") => return offline_config(&arg(1), num(2), num(3), num(4)),
        Some("memory") => return memory(num(1), num(2), num(3)),
        _ => {}
    }
    let client = Client::try_default().await.expect("KUBECONFIG");
    match arg(0).as_str() {
        "setup" => setup(client, num(1), num(2), num(3), arg(4)).await,
        "programmed" => programmed(client, num(1)).await,
        "edits" => edits(client, num(1)).await,
        "cleanup" => cleanup(client).await,
        "crds" => crds(client, &arg(1)).await,
        "size" => size(client, &arg(1)).await,
        other => panic!("unknown command {other}"),
    }
}
