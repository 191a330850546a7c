//! Against a real cluster — kind, k3d, anything — when `PORTCULLIS_E2E_KUBECONFIG` points at it
//! (see docs/kubernetes.md). They are `#[ignore]`d, so a plain `cargo test` lists them as ignored,
//! never as passed; run them with
//! `PORTCULLIS_E2E_KUBECONFIG=~/.kube/config cargo test --test cluster_e2e -- --ignored`.
//! Asked to run without the variable, they fail.
//!
//! They install the CRDs from `crds/`, run `portcullis controller` and `portcullis gateway
//! --configmap` as local processes against the cluster, and drive everything through the API.
//! The gateways' heartbeat Leases are written with the kubeconfig's own rights (the chart's
//! admission policy is not installed here).

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{IdpServer, Proc, free_port, http, portcullis, wait_ready};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::{Api, Client, Config};
use portcullis::api::{AuthPolicy, SigningAlgorithm, SigningKey};
use portcullis::testkit::TestIssuer;
use serde_json::{Value, json};

const ENV: &str = "PORTCULLIS_E2E_KUBECONFIG";

fn kubeconfig() -> String {
    match std::env::var(ENV) {
        Ok(v) if !v.is_empty() => v,
        _ => panic!("{ENV} is not set: these tests need a real cluster (docs/kubernetes.md); they are not a pass without one"),
    }
}

/// Whether the controller on `port` leads, from its metrics: the sample line, never the
/// `# HELP`/`# TYPE` lines that also name the metric.
fn leads(metrics: &str) -> bool {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.strip_prefix("portcullis_controller_leader"))
        .filter_map(|rest| rest.rsplit(' ').next())
        .any(|v| v.trim().parse::<f64>() == Ok(1.0))
}

async fn client(path: &str) -> Client {
    let kc = kube::config::Kubeconfig::read_from(path).expect("readable kubeconfig");
    let config = Config::from_custom_kubeconfig(kc, &Default::default()).await.expect("usable kubeconfig");
    Client::try_from(config).expect("client")
}

async fn apply<K>(api: &Api<K>, name: &str, obj: Value)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.patch(name, &PatchParams::apply("portcullis-e2e").force(), &Patch::Apply(&obj))
        .await
        .unwrap_or_else(|e| panic!("applying {name}: {e}"));
}

async fn eventually<T>(what: &str, timeout: Duration, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(start.elapsed() < timeout, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn install_crds(client: &Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in portcullis::api::crds() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("crds").join(portcullis::api::crd_file_name(&crd));
        let text = std::fs::read_to_string(&path).unwrap();
        let obj: Value = serde_saphyr::from_str(&text).unwrap();
        apply(&crds, crd.metadata.name.as_deref().unwrap(), obj).await;
        let name = crd.metadata.name.clone().unwrap();
        eventually("the CRD to be established", Duration::from_secs(30), async || {
            let c = crds.get(&name).await.ok()?;
            c.status?.conditions?.iter().any(|c| c.type_ == "Established" && c.status == "True").then_some(())
        })
        .await;
    }
}

struct Cluster {
    client: Client,
    kubeconfig: String,
    ns: String,
    /// A second team's namespace, watched too.
    tenant_ns: String,
    gateway_name: String,
    dir: tempfile::TempDir,
}

impl Cluster {
    async fn new(kubeconfig: String) -> Self {
        let client = client(&kubeconfig).await;
        install_crds(&client).await;
        let suffix = format!("{:x}", std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() % 0xffffff);
        let ns = format!("portcullis-e2e-{suffix}");
        let tenant_ns = format!("{ns}-b");
        for n in [&ns, &tenant_ns] {
            apply(&Api::<Namespace>::all(client.clone()), n, json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n}}))
                .await;
        }
        Self { client, kubeconfig, gateway_name: format!("e2e{suffix}"), ns, tenant_ns, dir: tempfile::tempdir().unwrap() }
    }

    fn controller(&self, admin: u16, identity: &str) -> Proc {
        let mut cmd = Command::new(portcullis());
        cmd.env("KUBECONFIG", &self.kubeconfig).env("RUST_LOG", "info,portcullis=debug").args([
            "controller",
            "--namespace",
            &self.ns,
            "--watch-namespaces",
            &format!("{},{}", self.ns, self.tenant_ns),
            "--gateways",
            &self.gateway_name,
            "--admin-listen",
            &format!("127.0.0.1:{admin}"),
            "--identity",
            identity,
            "--lease-name",
            &format!("portcullis-{}", self.gateway_name),
        ]);
        let mut p = Proc::spawn(identity, &mut cmd, self.dir.path().join(format!("{identity}.log")));
        wait_ready(&mut p, admin);
        p
    }

    fn gateway(&self, port: u16) -> Proc {
        self.gateway_replica(port, "gateway")
    }

    /// A gateway process with its own heartbeat (named `replica`).
    fn gateway_replica(&self, port: u16, replica: &str) -> Proc {
        let mut cmd = Command::new(portcullis());
        cmd.env("KUBECONFIG", &self.kubeconfig).env("RUST_LOG", "info,portcullis=debug").args([
            "gateway",
            "--configmap",
            &format!("{}/portcullis-gateway-{}", self.ns, self.gateway_name),
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--replica-name",
            replica,
        ]);
        let mut p = Proc::spawn(replica, &mut cmd, self.dir.path().join(format!("{replica}.log")));
        wait_ready(&mut p, port);
        p
    }

    async fn cleanup(self) {
        for n in [&self.ns, &self.tenant_ns] {
            let _ = Api::<Namespace>::all(self.client.clone()).delete(n, &DeleteParams::default()).await;
        }
    }
}

fn condition(obj: &AuthPolicy, type_: &str) -> Option<(String, String, String)> {
    let c = obj.status.as_ref()?.conditions.iter().find(|c| c.type_ == type_)?;
    Some((c.status.clone(), c.reason.clone(), c.message.clone()))
}

fn policy(ns: &str, gateway: &str, name: &str, prefix: &str, issuer: &TestIssuer) -> Value {
    json!({
        "apiVersion": "portcullis.dev/v1alpha1", "kind": "AuthPolicy",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "gateway": gateway,
            "issuers": [{"issuer": issuer.url, "audiences": ["api"], "algorithms": ["ES256"], "jwks": {"inline": issuer.jwks()}}],
            "rules": [{"name": "read", "match": {"paths": [{"prefix": prefix}]}, "require": [{"claim": "scope", "containsAll": ["read"]}]}],
            "forward": {"claimsToHeaders": {"X-User-Id": "sub"}, "token": "issue", "issue": {"signingKeyRef": {"name": "internal"}, "audience": "upstream", "ttl": "5s"}}
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Kubernetes cluster: PORTCULLIS_E2E_KUBECONFIG=... cargo test --test cluster_e2e -- --ignored"]
async fn policies_and_signing_keys_end_to_end_on_a_real_cluster() {
    let kubeconfig = kubeconfig();
    let cluster = Cluster::new(kubeconfig).await;
    let (ns, gw) = (cluster.ns.clone(), cluster.gateway_name.clone());
    let policies: Api<AuthPolicy> = Api::namespaced(cluster.client.clone(), &ns);
    let keys: Api<SigningKey> = Api::namespaced(cluster.client.clone(), &ns);
    let configmaps: Api<ConfigMap> = Api::namespaced(cluster.client.clone(), &ns);
    let _controller = cluster.controller(free_port(), "controller-a");
    let gateway_port = free_port();
    let issuer = TestIssuer::new("https://idp.e2e", SigningAlgorithm::ES256);
    let now = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let token = issuer.token("api", now(), json!({"scope": "read"}));
    let auth = format!("Bearer {token}");

    // A fast SigningKey for minting, then a policy: ConfigMap and Programmed=True within 2 s.
    apply(
        &keys,
        "internal",
        json!({"apiVersion": "portcullis.dev/v1alpha1", "kind": "SigningKey", "metadata": {"name": "internal", "namespace": ns},
        "spec": {"algorithm": "EdDSA", "rotationInterval": "10s", "prePublish": "3s", "retain": "8s"}}),
    )
    .await;
    eventually("the SigningKey to be Ready", Duration::from_secs(10), async || {
        let sk = keys.get("internal").await.ok()?;
        sk.status?.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True").then_some(())
    })
    .await;
    let applied_at = Instant::now();
    apply(&policies, "orders", policy(&ns, &gw, "orders", "/orders", &issuer)).await;
    eventually("Programmed=True", Duration::from_secs(2), async || {
        let p = policies.get("orders").await.ok()?;
        let (status, _, message) = condition(&p, "Programmed")?;
        (status == "True" && message == format!("gateway {gw}")).then_some(())
    })
    .await;
    eprintln!("policy programmed {:?} after apply", applied_at.elapsed());
    let cm = configmaps.get(&format!("portcullis-gateway-{gw}")).await.unwrap();
    let config = portcullis::controller::desired::config_from_configmap(&cm).unwrap();
    assert_eq!(config.policies[0].name, "orders");

    // The gateway enforces it.
    let _gateway = cluster.gateway(gateway_port);
    let ask = |path: &str| http(gateway_port, "GET", "api.test", &format!("/ext_authz{path}"), &[("Authorization", &auth)]).unwrap().status;
    eventually("the gateway to enforce the policy", Duration::from_secs(5), async || (ask("/orders/1") == 200).then_some(())).await;
    assert_eq!(ask("/other"), 403);

    // Another team tries to take the route over from its own namespace: refused for the host,
    // and nothing of the platform's policy changes. Its own key may not mint either.
    let tenant = cluster.tenant_ns.clone();
    let tenant_policies: Api<AuthPolicy> = Api::namespaced(cluster.client.clone(), &tenant);
    apply(&tenant_policies, "grab", json!({
        "apiVersion": "portcullis.dev/v1alpha1", "kind": "AuthPolicy", "metadata": {"name": "grab", "namespace": tenant},
        "spec": {"gateway": gw, "hosts": ["api.test"], "rules": [{"name": "open", "public": true, "match": {"paths": [{"exact": "/orders/1"}]}}]}
    })).await;
    let (_, reason, message) = eventually("the takeover to be refused", Duration::from_secs(5), async || {
        condition(&tenant_policies.get("grab").await.ok()?, "Accepted").filter(|c| c.0 == "False")
    })
    .await;
    assert_eq!(reason, "HostNotAllowed", "{message}");
    let without_token = http(gateway_port, "GET", "api.test", "/ext_authz/orders/1", &[]).unwrap().status;
    assert_eq!(without_token, 401, "the platform's route still needs a token");
    apply(&Api::<SigningKey>::namespaced(cluster.client.clone(), &tenant), "forge", json!({
        "apiVersion": "portcullis.dev/v1alpha1", "kind": "SigningKey", "metadata": {"name": "forge", "namespace": tenant}, "spec": {"algorithm": "EdDSA"}
    })).await;
    let mut mint = policy(&tenant, &gw, "mint", "/b", &issuer);
    mint["spec"]["hosts"] = json!(["b.test"]);
    mint["spec"]["forward"]["issue"]["signingKeyRef"]["name"] = json!("forge");
    apply(&tenant_policies, "mint", mint).await;
    let (_, reason, message) = eventually("minting with a team's own key to be refused", Duration::from_secs(5), async || {
        condition(&tenant_policies.get("mint").await.ok()?, "Accepted").filter(|c| c.0 == "False")
    })
    .await;
    assert!(reason == "SigningKeyNotAllowed" || reason == "HostNotAllowed", "{reason}: {message}");
    let jwks = http(gateway_port, "GET", "x", "/.well-known/jwks.json", &[]).unwrap().json();
    let forge_kids = Api::<SigningKey>::namespaced(cluster.client.clone(), &tenant)
        .get("forge")
        .await
        .unwrap()
        .status
        .map(|s| s.keys)
        .unwrap_or_default();
    for k in forge_kids {
        assert!(!jwks.to_string().contains(&k.kid), "team B's key is in the gateway JWKS");
    }

    // An invalid update: Accepted=False with a useful message, the previous config keeps serving.
    let mut bad = policy(&ns, &gw, "orders", "/orders", &issuer);
    bad["spec"]["rules"][0]["match"]["paths"][0]["prefix"] = json!("/orders/../admin");
    apply(&policies, "orders", bad).await;
    let (_, reason, message) = eventually("Accepted=False", Duration::from_secs(5), async || {
        let p = policies.get("orders").await.ok()?;
        condition(&p, "Accepted").filter(|c| c.0 == "False")
    })
    .await;
    assert_eq!(reason, "Invalid");
    assert!(message.contains("normalised form") && message.contains("previous accepted version keeps serving"), "{message}");
    assert_eq!(ask("/orders/1"), 200);
    apply(&policies, "orders", policy(&ns, &gw, "orders", "/orders", &issuer)).await;

    // Rotation under traffic: at least two rotations, no failed request.
    let started = Instant::now();
    let mut kids = std::collections::BTreeSet::new();
    let mut requests = 0;
    while kids.len() < 3 || started.elapsed() < Duration::from_secs(22) {
        let r = http(gateway_port, "GET", "api.test", "/ext_authz/orders/1", &[("Authorization", &auth)]).unwrap();
        assert_eq!(r.status, 200, "request {requests} failed during rotation: {}", String::from_utf8_lossy(&r.body));
        let minted = r.header("authorization").unwrap().trim_start_matches("Bearer ").to_owned();
        let header: Value = serde_json::from_slice(&portcullis::keys::b64url_decode(minted.split('.').next().unwrap()).unwrap()).unwrap();
        kids.insert(header["kid"].as_str().unwrap().to_owned());
        requests += 1;
        assert!(started.elapsed() < Duration::from_secs(60), "no two rotations within 60 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("{requests} requests, {} signing keys seen, no failure", kids.len());

    // rotate and revoke annotations.
    let before = keys.get("internal").await.unwrap().status.unwrap().keys.len();
    apply(&keys, "internal", json!({"apiVersion": "portcullis.dev/v1alpha1", "kind": "SigningKey", "metadata": {"name": "internal", "namespace": ns, "annotations": {"portcullis.dev/rotate": "e2e-1"}},
        "spec": {"algorithm": "EdDSA", "rotationInterval": "10s", "prePublish": "3s", "retain": "8s"}})).await;
    eventually("the rotation request to add a key", Duration::from_secs(5), async || {
        let s = keys.get("internal").await.ok()?.status?;
        (s.keys.len() > before || s.keys.iter().any(|k| format!("{:?}", k.state) == "Pending")).then_some(())
    })
    .await;
    let active = keys.get("internal").await.unwrap().status.unwrap().active_kid.unwrap();
    apply(&keys, "internal", json!({"apiVersion": "portcullis.dev/v1alpha1", "kind": "SigningKey", "metadata": {"name": "internal", "namespace": ns, "annotations": {"portcullis.dev/revoke": active}},
        "spec": {"algorithm": "EdDSA", "rotationInterval": "10s", "prePublish": "3s", "retain": "8s"}})).await;
    eventually("the revoked kid to leave the JWKS ConfigMap", Duration::from_secs(5), async || {
        let cm = configmaps.get("internal-jwks").await.ok()?;
        (!cm.data?.get("jwks.json")?.contains(&active)).then_some(())
    })
    .await;

    // Deleting the policy removes its routes.
    policies.delete("orders", &DeleteParams::default()).await.unwrap();
    eventually("the routes to be gone", Duration::from_secs(5), async || (ask("/orders/1") == 403).then_some(())).await;

    cluster.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Kubernetes cluster: PORTCULLIS_E2E_KUBECONFIG=... cargo test --test cluster_e2e -- --ignored"]
async fn only_one_controller_leads_and_it_hands_over_on_sigterm() {
    let kubeconfig = kubeconfig();
    let cluster = Cluster::new(kubeconfig).await;
    let (a_port, b_port) = (free_port(), free_port());
    let a = cluster.controller(a_port, "controller-a");
    let _b = cluster.controller(b_port, "controller-b");
    let leader = |port: u16| http(port, "GET", "x", "/metrics", &[]).ok().map(|r| leads(&String::from_utf8_lossy(&r.body)));
    eventually("a leader", Duration::from_secs(30), async || (leader(a_port)? || leader(b_port)?).then_some(())).await;
    for _ in 0..20 {
        assert!(!(leader(a_port).unwrap() && leader(b_port).unwrap()), "two leaders at once");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let (leading, other) = if leader(a_port).unwrap() { (a, b_port) } else { (_b, a_port) };
    let handed_over = Instant::now();
    let _ = Command::new("kill").args(["-TERM", &leading.pid().to_string()]).status();
    eventually("the other replica to lead", Duration::from_secs(10), async || leader(other)?.then_some(())).await;
    let took = handed_over.elapsed();
    eprintln!("handed over in {took:?}");
    assert!(took < Duration::from_secs(2), "a released Lease is taken over at once, not at its expiry: {took:?}");
    drop(leading);
    cluster.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Kubernetes cluster: PORTCULLIS_E2E_KUBECONFIG=... cargo test --test cluster_e2e -- --ignored"]
async fn status_tells_what_the_gateway_replicas_serve_on_a_real_cluster() {
    let kubeconfig = kubeconfig();
    let cluster = Cluster::new(kubeconfig).await;
    let (ns, gw) = (cluster.ns.clone(), cluster.gateway_name.clone());
    let policies: Api<AuthPolicy> = Api::namespaced(cluster.client.clone(), &ns);
    let _controller = cluster.controller(free_port(), "controller-a");
    let (port_a, port_b) = (free_port(), free_port());
    let _gw_a = cluster.gateway_replica(port_a, "gw-a");
    let mut gw_b = cluster.gateway_replica(port_b, "gw-b");
    let issuer = TestIssuer::new("https://idp.e2e", SigningAlgorithm::ES256);
    let idp = IdpServer::start();
    idp.serve(200, &[&issuer]);
    let spec = |prefix: &str| {
        json!({
            "apiVersion": "portcullis.dev/v1alpha1", "kind": "AuthPolicy", "metadata": {"name": "search", "namespace": ns},
            "spec": {
                "gateway": gw, "hosts": ["api.test"], "mode": "Audit",
                "issuers": [{"issuer": issuer.url, "audiences": ["api"], "algorithms": ["ES256"],
                             "jwks": {"uri": format!("http://127.0.0.1:{}/jwks", idp.port), "refreshInterval": "10s"}}],
                "rules": [{"name": "query", "match": {"paths": [{"prefix": prefix}]}, "require": [{"claim": "scope", "containsAll": ["search"]}]}]
            }
        })
    };
    let status = async || policies.get("search").await.ok()?.status;
    let enforced = async || {
        let p = policies.get("search").await.ok()?;
        condition(&p, "Enforced")
    };

    // Both replicas serve it: Enforced, 2 of 2, within 2 s of the apply.
    let applied = Instant::now();
    apply(&policies, "search", spec("/search")).await;
    eventually("Enforced=True", Duration::from_secs(5), async || enforced().await.filter(|c| c.0 == "True")).await;
    let took = applied.elapsed();
    eprintln!("apply -> Enforced=True in {took:?}");
    assert!(took < Duration::from_secs(2), "apply -> Enforced took {took:?}");
    let g = status().await.unwrap().gateways;
    assert_eq!((g[0].replicas, g[0].serving), (2, 2));
    eventually("IssuersReady=True", Duration::from_secs(15), async || {
        condition(&policies.get("search").await.ok()?, "IssuersReady").filter(|c| c.0 == "True")
    })
    .await;

    // Audit: requests the rule would deny go through, and the counts reach the status.
    for port in [port_a, port_b] {
        for _ in 0..5 {
            assert_eq!(http(port, "GET", "api.test", "/ext_authz/search?q=1", &[]).unwrap().status, 200);
        }
    }
    let audit = eventually("audit counts in status", Duration::from_secs(30), async || {
        let s = status().await?;
        (s.audit.first()?.would_deny >= 10).then_some(s)
    })
    .await;
    assert_eq!(audit.audit[0].top_reasons[0].reason, "missing_token");
    assert!(audit.audit_summary.unwrap().starts_with("would deny 100%"));

    // One replica dies without a word; the next change is Stale until its heartbeat expires.
    gw_b.kill();
    apply(&policies, "search", spec("/find")).await;
    let (_, reason, message) = eventually("Enforced=False (Stale)", Duration::from_secs(10), async || {
        enforced().await.filter(|c| c.0 == "False" && c.1 == "Stale")
    })
    .await;
    eprintln!("{reason}: {message}");
    eventually("Enforced=True once the dead replica expired", Duration::from_secs(45), async || enforced().await.filter(|c| c.0 == "True"))
        .await;
    assert_eq!(status().await.unwrap().gateways[0].replicas, 1);

    // The issuer's JWKS fails: IssuersReady=False, then True once it is back.
    idp.serve(503, &[]);
    eventually("IssuersReady=False", Duration::from_secs(30), async || {
        condition(&policies.get("search").await.ok()?, "IssuersReady").filter(|c| c.0 == "False")
    })
    .await;
    assert_eq!(status().await.unwrap().issuers[0].jwks, "Failing");
    idp.serve(200, &[&issuer]);
    eventually("IssuersReady=True again", Duration::from_secs(30), async || {
        condition(&policies.get("search").await.ok()?, "IssuersReady").filter(|c| c.0 == "True")
    })
    .await;
    cluster.cleanup().await;
}

#[test]
fn leadership_is_read_from_the_sample_not_the_help_line() {
    let follower = "# HELP portcullis_controller_leader 1 when this replica leads, else 0.\n# TYPE portcullis_controller_leader gauge\nportcullis_controller_leader 0\n";
    assert!(!leads(follower));
    assert!(leads(&follower.replace("leader 0\n", "leader 1\n")));
}
