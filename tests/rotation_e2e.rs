//! Key rotation under continuous traffic: real NGINX → `portcullis local` (minting internal
//! tokens) → an upstream in Python that verifies every internal token with PyJWT against the
//! gateway's JWKS, cached for exactly the `max-age` the gateway sends. No request may fail —
//! across five rotations, and across a kill -9 and restart in the middle of a rotation.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Proc, free_port, http, portcullis, start_nginx, wait_ready, wait_until};
use portcullis::api::SigningAlgorithm;
use portcullis::testkit::TestIssuer;
use serde_json::{Value, json};

const CALLER_ISS: &str = "https://caller.test";

struct Stack {
    dir: tempfile::TempDir,
    policies: PathBuf,
    authz_port: u16,
    portcullis: Option<Proc>,
    upstream_port: u16,
    _upstream: Proc,
    _nginx: Proc,
    nginx_port: u16,
    caller_token: String,
}

fn policies(caller: &TestIssuer, schedule: &str, ttl: &str) -> String {
    format!(
        r#"
apiVersion: portcullis.dev/v1alpha1
kind: SigningKey
metadata: {{ name: internal, namespace: rot }}
spec: {schedule}
---
apiVersion: portcullis.dev/v1alpha1
kind: AuthPolicy
metadata: {{ name: api, namespace: rot }}
spec:
  issuers: [{{ issuer: "{CALLER_ISS}", audiences: [api], algorithms: [ES256], jwks: {{ inline: {jwks} }} }}]
  rules: [{{ name: all, match: {{ paths: [{{ prefix: / }}] }} }}]
  forward:
    claimsToHeaders: {{ X-User-Id: sub }}
    token: issue
    issue: {{ signingKeyRef: {{ name: internal }}, audience: upstream, ttl: {ttl} }}
"#,
        jwks = caller.jwks()
    )
}

fn start_portcullis(policies: &Path, port: u16, log: PathBuf) -> Proc {
    let mut cmd = Command::new(portcullis());
    cmd.args(["local", "--dir"]).arg(policies).args([
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--issuer-url",
        &format!("http://127.0.0.1:{port}"),
    ]);
    cmd.env("RUST_LOG", "info");
    let mut p = Proc::spawn("portcullis", &mut cmd, log);
    wait_ready(&mut p, port);
    p
}

fn start_upstream(dir: &Path, port: u16, authz: u16) -> Proc {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/upstream/verify_upstream.py");
    let check = Command::new("python3").args(["-c", "import jwt, cryptography"]).output().expect("python3");
    assert!(check.status.success(), "PyJWT is not installed: pip install pyjwt cryptography (CI installs it in .ci/run)");
    let mut cmd = Command::new("python3");
    cmd.arg(script).args([
        port.to_string(),
        format!("http://127.0.0.1:{authz}/.well-known/jwks.json"),
        format!("http://127.0.0.1:{authz}"),
        "upstream".to_owned(),
    ]);
    let mut p = Proc::spawn("upstream", &mut cmd, dir.join("upstream.log"));
    p.wait_serving(Duration::from_secs(10), || http(port, "GET", "x", "/__stats", &[]).ok());
    p
}

fn stack(schedule: &str, ttl: &str) -> Stack {
    let dir = tempfile::tempdir().unwrap();
    let policies_dir = dir.path().join("policies");
    std::fs::create_dir_all(&policies_dir).unwrap();
    let caller = TestIssuer::new(CALLER_ISS, SigningAlgorithm::ES256);
    std::fs::write(policies_dir.join("rot.yaml"), policies(&caller, schedule, ttl)).unwrap();
    let authz_port = free_port();
    let pc = start_portcullis(&policies_dir, authz_port, dir.path().join("portcullis-1.log"));
    let upstream_port = free_port();
    let upstream = start_upstream(dir.path(), upstream_port, authz_port);
    let (nginx, nginx_port) = start_nginx(&dir.path().join("nginx"), authz_port, upstream_port);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let caller_token = caller.token("api", now, json!({"sub": "alice"}));
    Stack {
        policies: policies_dir,
        authz_port,
        portcullis: Some(pc),
        upstream_port,
        _upstream: upstream,
        _nginx: nginx,
        nginx_port,
        caller_token,
        dir,
    }
}

/// Requests sent continuously through NGINX by a few clients: (start, status).
struct Load {
    stop: Arc<AtomicBool>,
    results: Arc<Mutex<Vec<(Instant, u16)>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(port: u16, token: &str, clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let results = Arc::new(Mutex::new(Vec::new()));
        let threads = (0..clients)
            .map(|_| {
                let (stop, results, auth) = (stop.clone(), results.clone(), format!("Bearer {token}"));
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let at = Instant::now();
                        let status = http(port, "GET", "api.rot", "/orders", &[("Authorization", &auth)]).map_or(0, |r| r.status);
                        results.lock().unwrap().push((at, status));
                    }
                })
            })
            .collect();
        Load { stop, results, threads }
    }

    fn finish(self) -> Vec<(Instant, u16)> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
        Arc::try_unwrap(self.results).unwrap().into_inner().unwrap()
    }
}

fn upstream_stats(port: u16) -> Value {
    http(port, "GET", "x", "/__stats", &[]).unwrap().json()
}

fn keyring(stack: &Stack) -> Value {
    let path = stack.policies.join(".portcullis/keys/rot.internal.json");
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn summary(stack: &Stack, results: &[(Instant, u16)]) -> String {
    let stats = upstream_stats(stack.upstream_port);
    let log: String = std::fs::read_dir(stack.dir.path())
        .unwrap()
        .flatten()
        .filter(|f| f.file_name().to_string_lossy().starts_with("portcullis"))
        .map(|f| std::fs::read_to_string(f.path()).unwrap_or_default())
        .collect();
    format!("{} requests; upstream stats {stats}; portcullis logs:\n{log}", results.len())
}

const FAST: &str = "{ algorithm: EdDSA, rotationInterval: 6s, prePublish: 2s, retain: 4s }";

#[test]
fn five_rotations_under_load_without_a_failed_request() {
    let stack = stack(FAST, "3s");
    let load = Load::start(stack.nginx_port, &stack.caller_token, 4);
    let started = Instant::now();
    // Five rotations: six keys sign, each for 6s.
    wait_until("five rotations", Duration::from_secs(60), || {
        let kids = upstream_stats(stack.upstream_port)["kids"].as_array().unwrap().len();
        (kids >= 6 && started.elapsed() > Duration::from_secs(31)).then_some(())
    });
    let results = load.finish();
    let failed: Vec<_> = results.iter().filter(|(_, s)| *s != 200).collect();
    let stats = upstream_stats(stack.upstream_port);
    let rotations = stats["kids"].as_array().unwrap().len() - 1;
    eprintln!(
        "rotation under load: {} requests in {:.1}s, {rotations} rotations, {} failed, upstream verified {} (JWKS fetched {} times)",
        results.len(),
        started.elapsed().as_secs_f64(),
        failed.len(),
        stats["verified"],
        stats["fetches"]
    );
    assert!(rotations >= 5);
    assert!(results.len() > 500, "too little traffic to prove anything: {}", summary(&stack, &results));
    assert!(failed.is_empty(), "{} requests failed: {}", failed.len(), summary(&stack, &results));
    assert_eq!(stats["failed"], 0);
}

#[test]
fn a_kill_in_the_middle_of_a_rotation_loses_no_key_and_fails_no_request_after_restart() {
    let mut stack = stack(FAST, "3s");
    let load = Load::start(stack.nginx_port, &stack.caller_token, 4);
    let started = Instant::now();
    // Wait for a pre-published key, then kill -9 while it waits to sign.
    let pending = wait_until("a Pending key", Duration::from_secs(30), || {
        keyring(&stack)["keys"].as_array().unwrap().iter().find(|k| k["state"] == "Pending").map(|k| k["kid"].as_str().unwrap().to_owned())
    });
    std::thread::sleep(Duration::from_millis(300));
    let killed_at = Instant::now();
    stack.portcullis.as_mut().unwrap().kill();
    std::thread::sleep(Duration::from_secs(1));
    stack.portcullis = Some(start_portcullis(&stack.policies, stack.authz_port, stack.dir.path().join("portcullis-2.log")));
    let back_at = Instant::now();
    let ring = keyring(&stack);
    let kids: Vec<&str> = ring["keys"].as_array().unwrap().iter().map(|k| k["kid"].as_str().unwrap()).collect();
    assert!(kids.contains(&pending.as_str()), "the pre-published key survived the kill: {kids:?}");
    assert_eq!(ring["keys"].as_array().unwrap().iter().filter(|k| k["state"] == "Active").count(), 1);

    // Two more rotations after the restart.
    wait_until("two more rotations", Duration::from_secs(40), || (back_at.elapsed() > Duration::from_secs(15)).then_some(()));
    let results = load.finish();
    // Requests started while Portcullis was down (or in flight when it was killed) are the outage.
    let outage = |t: &Instant| *t >= killed_at - Duration::from_millis(200) && *t <= back_at;
    let during: Vec<_> = results.iter().filter(|(t, _)| outage(t)).collect();
    let failed: Vec<_> = results.iter().filter(|(t, s)| *s != 200 && !outage(t)).collect();
    let stats = upstream_stats(stack.upstream_port);
    let rotations = stats["kids"].as_array().unwrap().len() - 1;
    eprintln!(
        "restart mid-rotation: {} requests in {:.1}s, {rotations} rotations, outage {:.2}s with {} requests ({} failed) excluded, {} failed outside it",
        results.len(),
        started.elapsed().as_secs_f64(),
        (back_at - killed_at).as_secs_f64(),
        during.len(),
        during.iter().filter(|(_, s)| *s != 200).count(),
        failed.len()
    );
    assert!(
        stats["kids"].as_array().unwrap().iter().any(|k| k == &json!(pending)),
        "the key pre-published before the kill signed after it"
    );
    assert!(rotations >= 3, "{}", summary(&stack, &results));
    assert!(failed.is_empty(), "{} requests failed outside the outage: {}", failed.len(), summary(&stack, &results));
}

#[test]
fn a_revoked_key_is_rejected_by_the_upstream_once_its_cache_expires() {
    let stack = stack("{ algorithm: ES256, rotationInterval: 1h, prePublish: 2s, retain: 2h }", "30m");
    // An internal token minted with the current key, as the upstream would receive it.
    let auth = format!("Bearer {}", stack.caller_token);
    let minted = http(stack.authz_port, "GET", "api.rot", "/ext_authz/orders", &[("Authorization", &auth)]).unwrap();
    assert_eq!(minted.status, 200);
    let internal = minted.header("authorization").unwrap().to_owned();
    assert_eq!(http(stack.upstream_port, "GET", "x", "/orders", &[("Authorization", &internal)]).unwrap().status, 200);
    let header: Value =
        serde_json::from_slice(&portcullis::keys::b64url_decode(internal[7..].split('.').next().unwrap()).unwrap()).unwrap();
    let kid = header["kid"].as_str().unwrap().to_owned();

    let out = Command::new(portcullis()).args(["keys", "revoke", "--dir"]).arg(&stack.policies).args(["internal", &kid]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("revoked"));
    // The gateway drops the key from its JWKS and signs with a new one at once.
    wait_until("the JWKS without the revoked key", Duration::from_secs(10), || {
        let jwks = http(stack.authz_port, "GET", "x", "/.well-known/jwks.json", &[]).unwrap().json();
        (!jwks["keys"].as_array().unwrap().iter().any(|k| k["kid"] == kid.as_str())).then_some(())
    });
    let fresh = http(stack.authz_port, "GET", "api.rot", "/ext_authz/orders", &[("Authorization", &auth)]).unwrap();
    assert_ne!(fresh.header("authorization").unwrap(), internal);

    // Once the upstream's JWKS cache (max-age = prePublish = 2s) has expired, the revoked
    // kid is refused and the new key is accepted.
    std::thread::sleep(Duration::from_millis(2300));
    let r = http(stack.upstream_port, "GET", "x", "/orders", &[("Authorization", &internal)]).unwrap();
    assert_eq!(r.status, 401, "{}", String::from_utf8_lossy(&r.body));
    assert!(String::from_utf8_lossy(&r.body).contains("unknown kid"));
    let fresh_auth = fresh.header("authorization").unwrap().to_owned();
    assert_eq!(http(stack.upstream_port, "GET", "x", "/orders", &[("Authorization", &fresh_auth)]).unwrap().status, 200);
}
