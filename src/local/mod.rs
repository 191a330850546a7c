//! Local mode, the embedded default: AuthPolicies and SigningKeys from YAML files in a
//! directory, keys in a state directory, the gateway in the same process — no cluster.
//!
//! ```text
//!  DIR/*.yaml ─scan─▶ policies + SigningKeys ─▶ keys::schedule::plan ─▶ DIR/.portcullis/keys/*.json
//!                               │                                           │
//!                               └──────────▶ policy::compile ◀── published ─┘ ─▶ Gateway::apply
//! ```
//! `local`, `check`, `token` and `keys` all go through [`LocalDir::load`], so they see the same
//! policies and keys. `portcullis test` ([`policytest`]) runs its cases on what this loads.

pub mod policytest;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use jiff::Timestamp;
use serde_json::Value;

use crate::api::{self, SigningKeySpec};
use crate::keys::schedule::{self, Event, Requests};
use crate::keys::store::{KeyRing, read_keyring, write_keyring};
use crate::policy::config::{ClusterIssuer, ExchangeConfig};
use crate::policy::exchange::ExchangeInput;
use crate::policy::ownership::HostLedger;
use crate::policy::{self, Compiled, KeyRef, PolicyConfig, PolicyInput, PolicyMeta, PublishedKeys};

/// A problem with one document; the rest of the directory still loads.
#[derive(Debug, Clone)]
pub struct DocProblem {
    pub file: PathBuf,
    pub document: usize,
    pub message: String,
}

impl std::fmt::Display for DocProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (document {}): {}", self.file.display(), self.document + 1, self.message)
    }
}

#[derive(Debug, Default, Clone)]
pub struct Scanned {
    pub policies: Vec<(PolicyMeta, api::AuthPolicySpec)>,
    pub signing_keys: Vec<(KeyRef, SigningKeySpec)>,
    pub exchanges: Vec<(PolicyMeta, api::TokenExchangePolicySpec)>,
    pub problems: Vec<DocProblem>,
    /// The file each resource came from (`AuthPolicy ns/name`, `SigningKey ns/name`).
    pub sources: HashMap<String, PathBuf>,
    /// Resources whose file is broken now, served from their last good parse.
    pub kept: Vec<String>,
    /// `v1` Secrets (sign-in client secrets), by namespace and name.
    pub secrets: BTreeMap<(String, String), Arc<k8s_openapi::api::core::v1::Secret>>,
}

fn resource_id(kind: &str, key: &str) -> String {
    format!("{kind} {key}")
}

/// The last good parse of every resource of a directory, and the file that held it: a file that
/// stops parsing keeps its resources serving as they were (SECURITY.md, invariant 9).
#[derive(Debug, Default, Clone)]
pub struct Memory {
    policies: HashMap<String, (PathBuf, PolicyMeta, api::AuthPolicySpec)>,
    signing_keys: HashMap<KeyRef, (PathBuf, SigningKeySpec)>,
    exchanges: HashMap<String, (PathBuf, PolicyMeta, api::TokenExchangePolicySpec)>,
    /// Accepted policy versions, the compiler's `last_good`.
    pub accepted: HashMap<String, Arc<PolicyConfig>>,
    accepted_exchanges: HashMap<String, ExchangeConfig>,
    /// Hosts claimed so far (with `--gateway-settings`): a policy file removed and put back
    /// finds its hosts still its own, as on a cluster.
    pub held: HostLedger,
}

impl Memory {
    /// Remembers what a load parsed and accepted; forgets resources whose files are gone.
    pub fn remember(&mut self, loaded: &Loaded) {
        let s = &loaded.scanned;
        let source = |id: String| s.sources.get(&id).cloned().unwrap_or_default();
        self.policies =
            s.policies.iter().map(|(m, spec)| (m.key(), (source(resource_id("AuthPolicy", &m.key())), m.clone(), spec.clone()))).collect();
        self.signing_keys =
            s.signing_keys.iter().map(|(k, spec)| (k.clone(), (source(resource_id("SigningKey", &k.to_string())), spec.clone()))).collect();
        self.exchanges = s
            .exchanges
            .iter()
            .map(|(m, spec)| (m.key(), (source(resource_id("TokenExchangePolicy", &m.key())), m.clone(), spec.clone())))
            .collect();
        self.accepted.extend(loaded.compiled.config.policies_by_key());
        self.accepted.retain(|k, _| self.policies.contains_key(k));
        self.accepted_exchanges.extend(loaded.compiled.config.exchanges.iter().map(|x| (format!("{}/{}", x.namespace, x.name), x.clone())));
        self.accepted_exchanges.retain(|k, _| self.exchanges.contains_key(k));
        self.held = loaded.compiled.ledger.clone();
    }

    /// Puts back every resource that a now-broken file held at the last good parse.
    fn keep_broken(&self, scanned: &mut Scanned) {
        let broken: std::collections::HashSet<&PathBuf> = scanned.problems.iter().map(|p| &p.file).collect();
        let mut kept_policies: Vec<_> = self
            .policies
            .iter()
            .filter(|(key, (file, _, _))| broken.contains(file) && !scanned.policies.iter().any(|(m, _)| &m.key() == *key))
            .collect();
        kept_policies.sort_by(|a, b| a.0.cmp(b.0));
        let mut kept_keys: Vec<_> = self
            .signing_keys
            .iter()
            .filter(|(key, (file, _))| broken.contains(file) && !scanned.signing_keys.iter().any(|(k, _)| k == *key))
            .collect();
        kept_keys.sort_by(|a, b| a.0.cmp(b.0));
        for (key, (file, meta, spec)) in kept_policies {
            let id = resource_id("AuthPolicy", key);
            scanned.policies.push((meta.clone(), spec.clone()));
            scanned.sources.insert(id.clone(), file.clone());
            scanned.kept.push(format!("{id}: {} is broken; its last good version keeps serving", file.display()));
        }
        let mut kept_exchanges: Vec<_> = self
            .exchanges
            .iter()
            .filter(|(key, (file, _, _))| broken.contains(file) && !scanned.exchanges.iter().any(|(m, _)| &m.key() == *key))
            .collect();
        kept_exchanges.sort_by(|a, b| a.0.cmp(b.0));
        for (key, (file, meta, spec)) in kept_exchanges {
            let id = resource_id("TokenExchangePolicy", key);
            scanned.exchanges.push((meta.clone(), spec.clone()));
            scanned.sources.insert(id.clone(), file.clone());
            scanned.kept.push(format!("{id}: {} is broken; its last good version keeps serving", file.display()));
        }
        for (key, (file, spec)) in kept_keys {
            let id = resource_id("SigningKey", &key.to_string());
            scanned.signing_keys.push((key.clone(), spec.clone()));
            scanned.sources.insert(id.clone(), file.clone());
            scanned.kept.push(format!("{id}: {} is broken; its last good version keeps its keys", file.display()));
        }
    }
}

/// Deserialises a spec, naming the field that failed: `rules[read].require[0].containsAny:
/// invalid type: string "admin", expected a sequence`.
fn parse_spec<T: serde::de::DeserializeOwned>(spec: &Value) -> Result<T, String> {
    serde_path_to_error::deserialize(spec).map_err(|e| {
        let path = named_rules(&e.path().to_string(), spec);
        let inner = e.into_inner().to_string();
        if path == "." { format!("spec: {inner}") } else { format!("spec.{path}: {inner}") }
    })
}

/// `rules[2]…` → `rules[read]…` when the rule has a name: what a person searches for.
fn named_rules(path: &str, spec: &Value) -> String {
    let Some(rest) = path.strip_prefix("rules[") else { return path.to_owned() };
    let Some((index, tail)) = rest.split_once(']') else { return path.to_owned() };
    match index.parse::<usize>().ok().and_then(|i| spec.get("rules")?.get(i)?.get("name")?.as_str()) {
        Some(name) => format!("rules[{name}]{tail}"),
        None => path.to_owned(),
    }
}

/// Every YAML file under `dir` (recursively), skipping hidden entries such as the state dir.
pub fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let name = e.file_name();
            if name.to_string_lossy().starts_with('.') {
                continue;
            }
            let path = e.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|x| x == "yaml" || x == "yml") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// Parses the resources of one file. Documents of other kinds are skipped.
pub fn parse_documents(file: &Path, text: &str, out: &mut Scanned) {
    take_documents(file, parse_yaml(text), out);
}

/// The documents of a file, or why it is not YAML (the part of a scan that can run in parallel).
fn parse_yaml(text: &str) -> Result<Vec<Value>, String> {
    serde_saphyr::from_multiple(text).map_err(|e| format!("not valid YAML: {e}"))
}

fn take_documents(file: &Path, docs: Result<Vec<Value>, String>, out: &mut Scanned) {
    let problem = |document: usize, message: String| DocProblem { file: file.to_path_buf(), document, message };
    let docs = match docs {
        Ok(d) => d,
        Err(e) => {
            out.problems.push(problem(0, e));
            return;
        }
    };
    for (i, doc) in docs.into_iter().enumerate() {
        if doc.is_null() {
            continue;
        }
        let kind = doc.get("kind").and_then(Value::as_str).unwrap_or_default().to_owned();
        let api_version = doc.get("apiVersion").and_then(Value::as_str).unwrap_or_default();
        // Policy tests live next to the policies; `portcullis test` reads them.
        if kind == api::POLICY_TEST_KIND && api_version == api::API_VERSION {
            continue;
        }
        // A Secret holds what a policy refers to (a sign-in client secret), as in a cluster.
        if kind == "Secret" && api_version == "v1" {
            match serde_json::from_value::<k8s_openapi::api::core::v1::Secret>(doc.clone()) {
                Ok(mut secret) => {
                    let (ns, name) = (
                        secret.metadata.namespace.clone().unwrap_or_else(|| "default".into()),
                        secret.metadata.name.clone().unwrap_or_default(),
                    );
                    // `stringData` is what `kubectl apply` would turn into `data`.
                    for (k, v) in secret.string_data.take().unwrap_or_default() {
                        secret.data.get_or_insert_default().insert(k, k8s_openapi::ByteString(v.into_bytes()));
                    }
                    out.secrets.insert((ns, name), Arc::new(secret));
                }
                Err(e) => out.problems.push(problem(i, format!("Secret: {e}"))),
            }
            continue;
        }
        let ours = matches!(kind.as_str(), "AuthPolicy" | "SigningKey" | "TokenExchangePolicy");
        if !ours || api_version != api::API_VERSION {
            // Other manifests may share the directory; but one of our kinds with a mistyped
            // apiVersion, or our group with a mistyped kind, is a broken resource, not a
            // stranger to skip.
            if ours || api_version.contains("portcullis") || !doc.is_object() || looks_like_ours(&doc) {
                out.problems.push(problem(
                    i,
                    format!("kind {kind:?} apiVersion {api_version:?} is not a resource this version of Portcullis knows (AuthPolicy, SigningKey or TokenExchangePolicy, {})", api::API_VERSION),
                ));
            }
            continue;
        }
        let schema = api::schema_check::schema_of(&kind).expect("one of our kinds");
        let meta = doc.get("metadata");
        let name = meta.and_then(|m| m.get("name")).and_then(Value::as_str).unwrap_or_default().to_owned();
        let namespace = meta.and_then(|m| m.get("namespace")).and_then(Value::as_str).unwrap_or("default").to_owned();
        if name.is_empty() {
            out.problems.push(problem(i, format!("{kind} without metadata.name")));
            continue;
        }
        let key = format!("{namespace}/{name}");
        let unknown = api::schema_check::unknown_fields(schema, &doc);
        if !unknown.is_empty() {
            let spec = doc.get("spec").unwrap_or(&Value::Null);
            let named: Vec<String> = unknown
                .iter()
                .map(|u| u.strip_prefix("spec.").map_or_else(|| u.clone(), |p| format!("spec.{}", named_rules(p, spec))))
                .collect();
            out.problems.push(problem(i, format!("{kind} {key}: unknown field(s) {}", named.join(", "))));
            continue;
        }
        let spec = doc.get("spec").cloned().unwrap_or(Value::Null);
        // `sources` holds every resource parsed so far (a lookup, not a scan of all of them).
        if out.sources.contains_key(&resource_id(&kind, &key)) {
            out.problems.push(problem(i, format!("{kind} {key} is defined more than once; this one is ignored")));
            continue;
        }
        match kind.as_str() {
            "AuthPolicy" => match parse_spec::<api::AuthPolicySpec>(&spec) {
                Ok(s) => {
                    out.sources.insert(resource_id(&kind, &key), file.to_path_buf());
                    out.policies.push((PolicyMeta::new(&namespace, &name), s))
                }
                Err(e) => out.problems.push(problem(i, format!("AuthPolicy {key}: {e}"))),
            },
            "TokenExchangePolicy" => match parse_spec::<api::TokenExchangePolicySpec>(&spec) {
                Ok(s) => {
                    out.sources.insert(resource_id(&kind, &key), file.to_path_buf());
                    out.exchanges.push((PolicyMeta::new(&namespace, &name), s))
                }
                Err(e) => out.problems.push(problem(i, format!("TokenExchangePolicy {key}: {e}"))),
            },
            _ => match parse_spec::<SigningKeySpec>(&spec) {
                Ok(s) if s.pre_publish >= s.rotation_interval => {
                    out.problems.push(problem(i, format!("SigningKey {key}: prePublish must be shorter than rotationInterval")))
                }
                Ok(s) => {
                    out.sources.insert(resource_id(&kind, &key), file.to_path_buf());
                    out.signing_keys.push((KeyRef { namespace, name }, s))
                }
                Err(e) => out.problems.push(problem(i, format!("SigningKey {key}: {e}"))),
            },
        }
    }
}

/// A document that lost its `apiVersion` or `kind` to a typo but is still recognisably one of
/// ours (it names portcullis, or has an AuthPolicy's or SigningKey's spec): broken, not foreign.
fn looks_like_ours(doc: &Value) -> bool {
    let missing = |k: &str| doc.get(k).and_then(Value::as_str).is_none_or(str::is_empty);
    let spec = doc.get("spec");
    (missing("apiVersion") || missing("kind"))
        && (doc.to_string().contains("portcullis")
            || ["rules", "issuers", "rotationInterval", "algorithm"].iter().any(|k| spec.and_then(|s| s.get(k)).is_some()))
}

pub fn scan(dir: &Path) -> Scanned {
    let files = yaml_files(dir);
    // Reading and YAML parsing run on every core, a few files per thread at a time (so that
    // parsed documents do not pile up); what the documents mean is then taken in file order, so
    // the result (which of two definitions wins) does not depend on threads.
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut out = Scanned::default();
    for batch in files.chunks(threads * 4) {
        let per_thread = batch.len().div_ceil(threads);
        let parsed: Vec<Result<Vec<Value>, String>> = std::thread::scope(|s| {
            let workers: Vec<_> = batch
                .chunks(per_thread)
                .map(|part| {
                    s.spawn(move || {
                        let read = |f: &PathBuf| std::fs::read_to_string(f).map_err(|e| format!("unreadable: {e}"));
                        part.iter().map(|f| read(f).and_then(|t| parse_yaml(&t))).collect::<Vec<_>>()
                    })
                })
                .collect();
            workers.into_iter().flat_map(|w| w.join().expect("a parser thread panicked")).collect()
        });
        for (file, docs) in batch.iter().zip(parsed) {
            take_documents(file, docs, &mut out);
        }
    }
    out
}

/// A directory of resources and the state directory that holds its keys.
#[derive(Debug, Clone)]
pub struct LocalDir {
    pub dir: PathBuf,
    pub state_dir: PathBuf,
    pub gateway: String,
    /// One owner for the whole directory unless gateway settings say otherwise.
    pub tenancy: policy::Tenancy,
    /// A SigningKey of the directory standing in for the cluster's ServiceAccount issuer, and
    /// the issuer URL its tokens carry.
    pub cluster_issuer: Option<(String, KeyRef)>,
}

/// Keyrings after a schedule run, what changed, and when the schedule next needs a run.
pub struct KeySync {
    pub rings: BTreeMap<KeyRef, KeyRing>,
    pub events: Vec<(KeyRef, Event)>,
    pub next_wakeup: Option<Timestamp>,
}

/// One load of a local directory.
pub struct Loaded {
    pub scanned: Scanned,
    pub compiled: Compiled,
    pub rings: BTreeMap<KeyRef, KeyRing>,
    pub specs: BTreeMap<KeyRef, SigningKeySpec>,
    pub key_events: Vec<(KeyRef, Event)>,
    pub next_wakeup: Option<Timestamp>,
    /// What became of each TokenExchangePolicy.
    pub exchange_outcomes: Vec<policy::PolicyOutcome>,
    /// The sign-in client secrets the config needs, by entry name (as in the keys Secret).
    pub client_secrets: BTreeMap<String, String>,
}

impl LocalDir {
    pub fn new(dir: &Path, state_dir: Option<&Path>, gateway: &str) -> Self {
        Self {
            dir: dir.to_path_buf(),
            state_dir: state_dir.map_or_else(|| dir.join(".portcullis"), Path::to_path_buf),
            gateway: gateway.to_owned(),
            tenancy: policy::Tenancy::single_owner(),
            cluster_issuer: None,
        }
    }

    pub fn keys_dir(&self) -> PathBuf {
        self.state_dir.join("keys")
    }

    pub fn keyring_path(&self, key: &KeyRef) -> PathBuf {
        self.keys_dir().join(crate::contract::publish::keyring_file_name(key))
    }

    /// Runs `f` holding the state directory's lock, so that concurrent commands (a running
    /// `local` and a `keys rotate`) never both write keys.
    pub fn locked<T>(&self, f: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
        std::fs::create_dir_all(self.keys_dir()).map_err(|e| format!("creating {}: {e}", self.keys_dir().display()))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for dir in [&self.state_dir, &self.keys_dir()] {
                let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
            }
        }
        let lock_path = self.state_dir.join("lock");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| format!("opening {}: {e}", lock_path.display()))?;
        lock.lock().map_err(|e| format!("locking {}: {e}", lock_path.display()))?;
        let out = f();
        let _ = lock.unlock();
        out
    }

    /// Brings the keyrings of the SigningKeys up to date (generating keys on first use) and
    /// returns them with what changed.
    pub fn sync_keys(
        &self,
        specs: &[(KeyRef, SigningKeySpec)],
        now: Timestamp,
        requests: &HashMap<KeyRef, Requests>,
    ) -> Result<KeySync, String> {
        self.locked(|| {
            let mut rings = BTreeMap::new();
            let mut events = Vec::new();
            let mut next: Option<Timestamp> = None;
            for (key, spec) in specs {
                let path = self.keyring_path(key);
                let ring = read_keyring(&path).map_err(|e| e.to_string())?.unwrap_or_default();
                let req = requests.get(key).cloned().unwrap_or_default();
                let plan = schedule::plan(now, spec, ring, &req, &mut schedule::generate).map_err(|e| format!("SigningKey {key}: {e}"))?;
                if plan.changed() {
                    write_keyring(&path, &plan.ring).map_err(|e| e.to_string())?;
                }
                events.extend(plan.events.into_iter().map(|e| (key.clone(), e)));
                next = match (next, plan.next_wakeup) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                rings.insert(key.clone(), plan.ring);
            }
            Ok(KeySync { rings, events, next_wakeup: next })
        })
    }

    /// Scans, syncs keys and compiles. `memory` (the previous loads) keeps a resource whose file
    /// no longer parses, and the last accepted version of a policy that no longer validates,
    /// serving.
    pub fn load(&self, now: Timestamp, requests: &HashMap<KeyRef, Requests>, memory: &Memory) -> Result<Loaded, String> {
        let mut scanned = scan(&self.dir);
        memory.keep_broken(&mut scanned);
        let last_good = &memory.accepted;
        let KeySync { rings, events: key_events, next_wakeup } = self.sync_keys(&scanned.signing_keys, now, requests)?;
        let specs: BTreeMap<KeyRef, SigningKeySpec> = scanned.signing_keys.iter().cloned().collect();
        let mut published: BTreeMap<KeyRef, PublishedKeys> = BTreeMap::new();
        for (key, ring) in &rings {
            published.insert(key.clone(), schedule::publish(key, &specs[key], ring).map_err(|e| format!("SigningKey {key}: {e}"))?);
        }
        let secret_of = |r: &crate::policy::config::SecretRef| {
            let secret = scanned.secrets.get(&(r.namespace.clone(), r.name.clone()));
            crate::contract::publish::client_secret_value(secret.map(|s| &**s), r)
        };
        let inputs: Vec<PolicyInput> = scanned
            .policies
            .iter()
            .map(|(meta, spec)| {
                let mut meta = meta.clone();
                meta.client_secret_found = policy::validate::client_secret_ref(&meta, spec).map(|r| secret_of(&r).is_some());
                PolicyInput { spec: spec.clone().into(), last_good: last_good.get(&meta.key()).cloned(), meta, attachment: None }
            })
            .collect();
        let tenancy = policy::Tenancy { held: memory.held.clone(), ..self.tenancy.clone() };
        let mut compiled = policy::compile(&self.gateway, &inputs, &published, &tenancy);
        let cluster = match &self.cluster_issuer {
            None => None,
            Some((url, key)) => {
                let keys =
                    published.get(key).ok_or_else(|| format!("--cluster-issuer-key: SigningKey {key} is not in {}", self.dir.display()))?;
                Some(ClusterIssuer { issuer: url.clone(), keys: keys.keys.clone() })
            }
        };
        let exchanges: Vec<ExchangeInput> = scanned
            .exchanges
            .iter()
            .map(|(meta, spec)| ExchangeInput {
                meta: meta.clone(),
                spec: Arc::new(spec.clone()),
                last_good: memory.accepted_exchanges.get(&meta.key()).cloned(),
            })
            .collect();
        let exchange_outcomes = policy::exchange::complete(&mut compiled.config, cluster, &exchanges, &published, &tenancy);
        let client_secrets =
            compiled.config.client_secrets().filter_map(|r| Some((r.entry(), String::from_utf8(secret_of(r)?).ok()?))).collect();
        Ok(Loaded { scanned, compiled, rings, specs, key_events, next_wakeup, exchange_outcomes, client_secrets })
    }

    /// The fingerprint to compare the next round with, after a load that began at `before`: the
    /// key files as this load left them, the resource files as they were when it began.
    pub fn seen_after_load(&self, before: &[(PathBuf, Option<SystemTime>, u64)]) -> Vec<(PathBuf, Option<SystemTime>, u64)> {
        let keys = self.keys_dir();
        let resources = before.iter().filter(|(p, ..)| !p.starts_with(&keys)).cloned();
        resources.chain(self.fingerprint().into_iter().filter(|(p, ..)| p.starts_with(&keys))).collect()
    }

    /// Changes to the resources or the keys (modification times and sizes).
    pub fn fingerprint(&self) -> Vec<(PathBuf, Option<SystemTime>, u64)> {
        let mut files = yaml_files(&self.dir);
        if let Ok(rd) = std::fs::read_dir(self.keys_dir()) {
            files.extend(rd.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "json")));
        }
        files
            .into_iter()
            .map(|p| {
                let m = std::fs::metadata(&p).ok();
                let modified = m.as_ref().and_then(|m| m.modified().ok());
                (p, modified, m.map_or(0, |m| m.len()))
            })
            .collect()
    }
}

/// Human-readable lines about a load: what was accepted, rejected, and the keys.
pub fn report(loaded: &Loaded) -> Vec<String> {
    let mut lines = Vec::new();
    for p in &loaded.scanned.problems {
        lines.push(format!("  BROKEN    {p}"));
    }
    for k in &loaded.scanned.kept {
        lines.push(format!("  kept      {k}"));
    }
    for o in &loaded.compiled.outcomes {
        let rules = loaded.compiled.config.policy(&o.namespace, &o.name).map_or(0, |p| p.rules.len());
        match &o.outcome {
            policy::Outcome::Accepted => lines.push(format!("  accepted  AuthPolicy {}/{} ({rules} rules)", o.namespace, o.name)),
            policy::Outcome::Rejected { rejection, serving_previous } => lines.push(format!(
                "  REJECTED  AuthPolicy {}/{} ({}){}: {}{}",
                o.namespace,
                o.name,
                rejection.reason.as_str(),
                loaded
                    .scanned
                    .sources
                    .get(&resource_id("AuthPolicy", &format!("{}/{}", o.namespace, o.name)))
                    .map_or(String::new(), |f| format!(" in {}", f.display())),
                rejection.message(),
                if *serving_previous { " — the previous version keeps serving" } else { "" }
            )),
        }
    }
    for o in &loaded.exchange_outcomes {
        match &o.outcome {
            policy::Outcome::Accepted => lines.push(format!("  accepted  TokenExchangePolicy {}/{}", o.namespace, o.name)),
            policy::Outcome::Rejected { rejection, serving_previous } => lines.push(format!(
                "  REJECTED  TokenExchangePolicy {}/{} ({}): {}{}",
                o.namespace,
                o.name,
                rejection.reason.as_str(),
                rejection.message(),
                if *serving_previous { " — the previous version keeps serving" } else { "" }
            )),
        }
    }
    for (key, ring) in &loaded.rings {
        let active = ring.active().map_or("none", |k| k.kid.as_str());
        lines.push(format!("  key       SigningKey {key}: {} keys, active kid {active}", ring.keys.len()));
    }
    lines
}

/// How many resources the load refused: broken documents and rejected policies.
pub fn rejected_count(loaded: &Loaded) -> usize {
    loaded.scanned.problems.len()
        + loaded.compiled.outcomes.iter().chain(&loaded.exchange_outcomes).filter(|o| o.outcome != policy::Outcome::Accepted).count()
}

pub fn now() -> Timestamp {
    Timestamp::now()
}

/// How often local mode looks for changed files.
pub const POLL: Duration = Duration::from_millis(500);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::SigningAlgorithm;
    use crate::testkit::TestIssuer;

    fn policy(jwks: &str, require: &str) -> String {
        format!(
            r#"apiVersion: portcullis.dev/v1alpha1
kind: AuthPolicy
metadata: {{ name: orders, namespace: shop }}
spec:
  hosts: [api.test]
  issuers: [{{ issuer: "https://idp.test", audiences: [orders], algorithms: [ES256], jwks: {{ inline: {jwks} }} }}]
  rules:
    - {{ name: health, public: true, match: {{ paths: [{{ exact: /healthz }}] }} }}
    - name: read
      match: {{ paths: [{{ prefix: /orders }}] }}
      require:
        - {require}
"#
        )
    }

    const KEY: &str = "apiVersion: portcullis.dev/v1alpha1\nkind: SigningKey\nmetadata: { name: internal, namespace: shop }\nspec: { algorithm: EdDSA, rotationInterval: 1h, prePublish: 1m, retain: 10m }\n";

    struct Dir {
        tmp: tempfile::TempDir,
        local: LocalDir,
        memory: Memory,
    }

    impl Dir {
        fn new() -> Self {
            let tmp = tempfile::tempdir().unwrap();
            let local = LocalDir::new(tmp.path(), None, "default");
            Self { tmp, local, memory: Memory::default() }
        }

        fn write(&self, file: &str, text: &str) {
            std::fs::write(self.tmp.path().join(file), text).unwrap();
        }

        fn load(&mut self) -> Loaded {
            let loaded = self.local.load(Timestamp::now(), &HashMap::new(), &self.memory).unwrap();
            self.memory.remember(&loaded);
            loaded
        }
    }

    fn read_rule(loaded: &Loaded) -> Option<crate::api::Requirement> {
        loaded
            .compiled
            .config
            .policy("shop", "orders")
            .and_then(|p| p.rules.iter().find(|r| r.name == "read"))
            .map(|r| r.require[0].clone())
    }

    #[test]
    fn a_file_that_stops_parsing_keeps_every_resource_it_held() {
        let issuer = TestIssuer::new("https://idp.test", SigningAlgorithm::ES256);
        let jwks = issuer.jwks().to_string();
        let good = policy(&jwks, r#"{ claim: scope, containsAny: ["orders:read"] }"#);
        let mut d = Dir::new();
        d.write("orders.yaml", &good);
        d.write("key.yaml", KEY);
        let first = d.load();
        let rule = read_rule(&first).expect("accepted");
        assert_eq!(rejected_count(&first), 0);
        let kid = first.rings[&KeyRef { namespace: "shop".into(), name: "internal".into() }].active().unwrap().kid.clone();

        for (what, broken, says) in [
            ("YAML syntax", good.replace("rules:", "rules: [").clone(), "not valid YAML"),
            ("unknown field", good.replace("require:", "requir:"), "unknown field(s) spec.rules[read].requir"),
            (
                "unknown operator",
                good.replace("containsAny", "containsAnyy"),
                "unknown field(s) spec.rules[read].require[0].containsAnyy (did you mean containsAny?)",
            ),
            (
                "wrong type",
                good.replace(r#"containsAny: ["orders:read"]"#, r#"containsAny: "admin""#),
                "spec.rules[read].require[0].containsAny: invalid type: string \"admin\", expected a sequence",
            ),
            ("wrong type at the top", good.replace("hosts: [api.test]", "hosts: api.test"), "spec.hosts: invalid type"),
            // Found by the fuzzer: a lost line break merges apiVersion and kind into one key.
            (
                "apiVersion and kind run together",
                good.replacen("apiVersion: portcullis.dev/v1alpha1\nkind", "apiVersion:portcullis.dev/v1alpha1kind", 1),
                "is not a resource this version of Portcullis knows",
            ),
        ] {
            d.write("orders.yaml", &broken);
            let loaded = d.load();
            assert_eq!(read_rule(&loaded).as_ref(), Some(&rule), "{what}: the policy must keep serving");
            let text = report(&loaded).join("\n");
            assert!(text.contains("orders.yaml") && text.contains(says), "{what}: {text}");
            assert!(text.contains("kept      AuthPolicy shop/orders"), "{what}: {text}");
            assert!(rejected_count(&loaded) >= 1, "{what}");
            // Broken twice in a row: still the same last good version.
            assert_eq!(read_rule(&d.load()).as_ref(), Some(&rule), "{what}, second load");
        }

        // A SigningKey whose file breaks keeps its keys (and so the JWKS services trust).
        d.write("orders.yaml", &good);
        d.write("key.yaml", &KEY.replace("rotationInterval: 1h", "rotationInterval: 5"));
        let loaded = d.load();
        let ring = &loaded.rings[&KeyRef { namespace: "shop".into(), name: "internal".into() }];
        assert_eq!(ring.active().unwrap().kid, kid);
        assert!(loaded.specs.contains_key(&KeyRef { namespace: "shop".into(), name: "internal".into() }), "still scheduled");
        assert!(report(&loaded).join("\n").contains("kept      SigningKey shop/internal"));

        // Removing a file does remove what it held.
        std::fs::remove_file(d.tmp.path().join("orders.yaml")).unwrap();
        assert!(read_rule(&d.load()).is_none());
    }

    #[test]
    fn without_a_last_good_version_a_broken_file_serves_nothing_of_it() {
        let issuer = TestIssuer::new("https://idp.test", SigningAlgorithm::ES256);
        let mut d = Dir::new();
        d.write("orders.yaml", &policy(&issuer.jwks().to_string(), "{ claim: scope, containsAny: admin }"));
        let loaded = d.load();
        assert!(read_rule(&loaded).is_none());
        assert_eq!(rejected_count(&loaded), 1);
        assert!(loaded.scanned.kept.is_empty());
    }

    #[test]
    fn a_resource_defined_twice_keeps_the_first_and_reports_the_second() {
        let jwks = TestIssuer::new("https://idp.test", SigningAlgorithm::ES256).jwks().to_string();
        let first = policy(&jwks, "{ claim: scope, containsAll: [read] }");
        let second = policy(&jwks, "{ claim: scope, containsAll: [write] }");
        let mut out = Scanned::default();
        parse_documents(Path::new("a.yaml"), &format!("{first}---\n{KEY}"), &mut out);
        parse_documents(Path::new("b.yaml"), &format!("{KEY}---\n{second}"), &mut out);
        assert_eq!((out.policies.len(), out.signing_keys.len()), (1, 1));
        assert_eq!(out.policies[0].1.rules[1].require[0].contains_all.as_deref(), Some(&["read".to_owned()][..]));
        let messages: Vec<(String, usize, String)> =
            out.problems.iter().map(|p| (p.file.display().to_string(), p.document, p.message.clone())).collect();
        assert_eq!(
            messages,
            [
                ("b.yaml".to_owned(), 0, "SigningKey shop/internal is defined more than once; this one is ignored".to_owned()),
                ("b.yaml".to_owned(), 1, "AuthPolicy shop/orders is defined more than once; this one is ignored".to_owned()),
            ]
        );
    }

    #[test]
    fn a_scan_takes_files_in_name_order_whatever_the_threads() {
        // Forty files each define the same policy with another scope: the first file by name wins,
        // every other one is reported, in file order; a broken file in the middle changes nothing.
        let jwks = TestIssuer::new("https://idp.test", SigningAlgorithm::ES256).jwks().to_string();
        let dir = tempfile::tempdir().unwrap();
        for i in 0..40 {
            let text =
                if i == 17 { "rules: [unclosed".to_owned() } else { policy(&jwks, &format!("{{ claim: scope, containsAll: [s{i:02}] }}")) };
            std::fs::write(dir.path().join(format!("p{i:02}.yaml")), text).unwrap();
        }
        let scanned = scan(dir.path());
        assert_eq!(scanned.policies.len(), 1);
        assert_eq!(scanned.policies[0].1.rules[1].require[0].contains_all.as_deref(), Some(&["s00".to_owned()][..]));
        let files: Vec<String> = scanned.problems.iter().map(|p| p.file.file_name().unwrap().to_string_lossy().into_owned()).collect();
        let want: Vec<String> = (1..40).map(|i| format!("p{i:02}.yaml")).collect();
        assert_eq!(files, want);
        assert!(scanned.problems[16].message.starts_with("not valid YAML"), "{}", scanned.problems[16].message);
    }

    #[test]
    fn a_resource_written_while_a_load_runs_is_loaded_on_the_next_round() {
        let d = Dir::new();
        std::fs::write(d.tmp.path().join("key.yaml"), KEY).unwrap();
        let before = d.local.fingerprint();
        // The load writes keys; meanwhile someone edits a resource.
        d.local.load(jiff::Timestamp::now(), &HashMap::new(), &d.memory).unwrap();
        std::fs::write(d.tmp.path().join("key.yaml"), format!("{KEY}# edited\n")).unwrap();
        let seen = d.local.seen_after_load(&before);
        assert_ne!(seen, d.local.fingerprint(), "the edit is still to be loaded");
        // Without an edit, the keys the load wrote count as seen.
        let before = d.local.fingerprint();
        d.local.load(jiff::Timestamp::now(), &HashMap::new(), &d.memory).unwrap();
        assert_eq!(d.local.seen_after_load(&before), d.local.fingerprint());
    }
}
