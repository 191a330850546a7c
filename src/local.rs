//! Local mode, the embedded default: AuthPolicies and SigningKeys from YAML files in a
//! directory, keys in a state directory, the gateway in the same process — no cluster.
//!
//! ```text
//!  DIR/*.yaml ─scan─▶ policies + SigningKeys ─▶ keys::schedule::plan ─▶ DIR/.portcullis/keys/*.json
//!                               │                                           │
//!                               └──────────▶ policy::compile ◀── published ─┘ ─▶ Gateway::apply
//! ```
//! `local`, `check`, `token` and `keys` all go through [`LocalDir::load`], so they see the same
//! policies and keys.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use jiff::Timestamp;
use kube::CustomResourceExt;
use serde_json::Value;

use crate::api::{self, AuthPolicy, SigningKey, SigningKeySpec};
use crate::keys::schedule::{self, Event, Requests};
use crate::keys::store::{KeyRing, read_keyring, write_keyring};
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
    pub problems: Vec<DocProblem>,
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
    let problem = |document: usize, message: String| DocProblem { file: file.to_path_buf(), document, message };
    let docs: Vec<Value> = match serde_saphyr::from_multiple(text) {
        Ok(d) => d,
        Err(e) => {
            out.problems.push(problem(0, format!("not valid YAML: {e}")));
            return;
        }
    };
    for (i, doc) in docs.into_iter().enumerate() {
        if doc.is_null() {
            continue;
        }
        let kind = doc.get("kind").and_then(Value::as_str).unwrap_or_default().to_owned();
        let api_version = doc.get("apiVersion").and_then(Value::as_str).unwrap_or_default();
        if !matches!(kind.as_str(), "AuthPolicy" | "SigningKey") || api_version != api::API_VERSION {
            if api_version.starts_with(api::GROUP) {
                out.problems.push(problem(i, format!("{kind} {api_version} is not a resource this version of Portcullis knows")));
            }
            continue;
        }
        let crd = if kind == "AuthPolicy" { AuthPolicy::crd() } else { SigningKey::crd() };
        let unknown = api::schema_check::unknown_fields(&api::schema_check::crd_schema(&crd), &doc);
        if !unknown.is_empty() {
            out.problems.push(problem(i, format!("{kind}: unknown field(s) {}", unknown.join(", "))));
            continue;
        }
        let meta = doc.get("metadata");
        let name = meta.and_then(|m| m.get("name")).and_then(Value::as_str).unwrap_or_default().to_owned();
        let namespace = meta.and_then(|m| m.get("namespace")).and_then(Value::as_str).unwrap_or("default").to_owned();
        if name.is_empty() {
            out.problems.push(problem(i, format!("{kind} without metadata.name")));
            continue;
        }
        let spec = doc.get("spec").cloned().unwrap_or(Value::Null);
        let key = format!("{namespace}/{name}");
        let duplicate = match kind.as_str() {
            "AuthPolicy" => out.policies.iter().any(|(m, _)| m.namespace == namespace && m.name == name),
            _ => out.signing_keys.iter().any(|(k, _)| k.namespace == namespace && k.name == name),
        };
        if duplicate {
            out.problems.push(problem(i, format!("{kind} {key} is defined more than once; this one is ignored")));
            continue;
        }
        match kind.as_str() {
            "AuthPolicy" => match serde_json::from_value::<api::AuthPolicySpec>(spec) {
                Ok(s) => out.policies.push((PolicyMeta::new(&namespace, &name), s)),
                Err(e) => out.problems.push(problem(i, format!("AuthPolicy {key}: {e}"))),
            },
            _ => match serde_json::from_value::<SigningKeySpec>(spec) {
                Ok(s) if s.pre_publish >= s.rotation_interval => {
                    out.problems.push(problem(i, format!("SigningKey {key}: prePublish must be shorter than rotationInterval")))
                }
                Ok(s) => out.signing_keys.push((KeyRef { namespace, name }, s)),
                Err(e) => out.problems.push(problem(i, format!("SigningKey {key}: {e}"))),
            },
        }
    }
}

pub fn scan(dir: &Path) -> Scanned {
    let mut out = Scanned::default();
    for file in yaml_files(dir) {
        match std::fs::read_to_string(&file) {
            Ok(text) => parse_documents(&file, &text, &mut out),
            Err(e) => out.problems.push(DocProblem { file, document: 0, message: format!("unreadable: {e}") }),
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
}

impl LocalDir {
    pub fn new(dir: &Path, state_dir: Option<&Path>, gateway: &str) -> Self {
        Self {
            dir: dir.to_path_buf(),
            state_dir: state_dir.map_or_else(|| dir.join(".portcullis"), Path::to_path_buf),
            gateway: gateway.to_owned(),
        }
    }

    pub fn keys_dir(&self) -> PathBuf {
        self.state_dir.join("keys")
    }

    pub fn keyring_path(&self, key: &KeyRef) -> PathBuf {
        self.keys_dir().join(crate::gateway::source::keyring_file_name(key))
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

    /// Scans, syncs keys and compiles. `last_good` keeps the previously accepted version of a
    /// policy serving while its file is broken.
    pub fn load(
        &self,
        now: Timestamp,
        requests: &HashMap<KeyRef, Requests>,
        last_good: &HashMap<String, PolicyConfig>,
    ) -> Result<Loaded, String> {
        let scanned = scan(&self.dir);
        let KeySync { rings, events: key_events, next_wakeup } = self.sync_keys(&scanned.signing_keys, now, requests)?;
        let specs: BTreeMap<KeyRef, SigningKeySpec> = scanned.signing_keys.iter().cloned().collect();
        let mut published: BTreeMap<KeyRef, PublishedKeys> = BTreeMap::new();
        for (key, ring) in &rings {
            published.insert(key.clone(), schedule::publish(key, &specs[key], ring).map_err(|e| format!("SigningKey {key}: {e}"))?);
        }
        let inputs: Vec<PolicyInput> = scanned
            .policies
            .iter()
            .map(|(meta, spec)| PolicyInput { meta: meta.clone(), spec: spec.clone(), last_good: last_good.get(&meta.key()).cloned() })
            .collect();
        let compiled = policy::compile(&self.gateway, &inputs, &published);
        Ok(Loaded { scanned, compiled, rings, specs, key_events, next_wakeup })
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
        lines.push(format!("  skipped   {p}"));
    }
    for o in &loaded.compiled.outcomes {
        let rules = loaded.compiled.config.policy(&o.namespace, &o.name).map_or(0, |p| p.rules.len());
        match &o.outcome {
            policy::Outcome::Accepted => lines.push(format!("  accepted  AuthPolicy {}/{} ({rules} rules)", o.namespace, o.name)),
            policy::Outcome::Rejected { rejection, serving_previous } => lines.push(format!(
                "  REJECTED  AuthPolicy {}/{} ({}): {}{}",
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

pub fn now() -> Timestamp {
    Timestamp::now()
}

/// How often local mode looks for changed files.
pub const POLL: Duration = Duration::from_millis(500);
