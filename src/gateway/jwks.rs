//! Remote JWKS: fetched over HTTP(S), cached, refreshed on a schedule and once (rate-limited) on
//! an unknown kid. A failed fetch, or one that yields no usable key, keeps the last good keys.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::pki_types::CertificateDer;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use super::metrics::Metrics;
use crate::contract::heartbeat::JwksHealth;
use crate::decide::RemoteKeys;
use crate::decide::keyset::KeySet;
use crate::plumbing::jwks_fetch::{HttpClient, fetch_jwks, http_client};

struct Remote {
    set: Arc<KeySet>,
    wake: Arc<Notify>,
    /// Incremented after every fetch attempt; waiters watch it.
    attempts: watch::Receiver<u64>,
    last_attempt: Arc<Mutex<Option<Instant>>>,
    task: JoinHandle<()>,
}

impl Drop for Remote {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One fetcher per (URL, refresh interval), shared by every config that uses it.
pub struct JwksRegistry {
    remotes: Mutex<HashMap<(String, u64), Remote>>,
    /// Per URL, the outcome of its fetches (for heartbeats and `/status`).
    health: Arc<Mutex<HashMap<String, JwksHealth>>>,
    /// Notified when a URL starts or stops failing.
    pub health_changed: Arc<Notify>,
    client: HttpClient,
    metrics: Metrics,
    /// Shortest time between two fetches of one URL, whatever asks for them.
    min_interval: Duration,
    /// OpenID providers of sign-in, and the client for their token endpoints.
    pub providers: super::signin::Providers,
    pub post: crate::plumbing::jwks_fetch::PostClient,
}

impl JwksRegistry {
    pub fn new(metrics: Metrics, min_interval: Duration, extra_roots: &[CertificateDer<'static>]) -> Arc<Self> {
        Arc::new(Self {
            remotes: Mutex::new(HashMap::new()),
            health: Arc::default(),
            health_changed: Arc::default(),
            client: http_client(extra_roots),
            metrics,
            min_interval,
            providers: Default::default(),
            post: crate::plumbing::jwks_fetch::post_client(extra_roots),
        })
    }

    /// Asks for one early refetch of `set` (an unknown kid was seen) and waits for it, at most
    /// `wait`. Returns false when rate limiting refused, or nothing new arrived in time.
    pub async fn refetch(&self, set: &Arc<KeySet>, wait: Duration) -> bool {
        let (wake, mut attempts, last_attempt) = {
            let remotes = self.remotes.lock().expect("registry lock");
            let Some(r) = remotes.values().find(|r| Arc::ptr_eq(&r.set, set)) else { return false };
            (r.wake.clone(), r.attempts.clone(), r.last_attempt.clone())
        };
        let allowed = last_attempt.lock().expect("lock").is_none_or(|t| t.elapsed() >= self.min_interval);
        if !allowed {
            return false;
        }
        let before = set.generation();
        attempts.mark_unchanged();
        wake.notify_one();
        let _ = tokio::time::timeout(wait, attempts.changed()).await;
        set.generation() != before
    }

    /// Stops fetchers that no current config uses.
    pub fn retain_only(&self, in_use: &[Arc<KeySet>]) {
        let mut remotes = self.remotes.lock().expect("registry lock");
        remotes.retain(|_, r| in_use.iter().any(|s| Arc::ptr_eq(s, &r.set)));
        let providers = self.providers.discovery_urls();
        self.health.lock().expect("health lock").retain(|uri, _| remotes.keys().any(|(u, _)| u == uri) || providers.contains(uri));
    }

    /// The health of `uris` that have been fetched at least once, in order.
    pub fn health(&self, uris: &[&str]) -> Vec<JwksHealth> {
        let health = self.health.lock().expect("health lock");
        uris.iter().filter_map(|u| health.get(*u).cloned()).collect()
    }

    fn spawn(&self, uri: &str, refresh: Duration) -> Remote {
        let set = KeySet::new_remote(uri);
        let wake = Arc::new(Notify::new());
        let (tx, rx) = watch::channel(0u64);
        let last_attempt = Arc::new(Mutex::new(None));
        let task = tokio::spawn(fetch_loop(
            self.client.clone(),
            self.metrics.clone(),
            uri.to_owned(),
            set.clone(),
            refresh,
            self.min_interval,
            wake.clone(),
            tx,
            last_attempt.clone(),
            (self.health.clone(), self.health_changed.clone()),
        ));
        Remote { set, wake, attempts: rx, last_attempt, task }
    }
}

impl RemoteKeys for JwksRegistry {
    fn key_set(&self, uri: &str, refresh_secs: u64) -> Arc<KeySet> {
        let mut remotes = self.remotes.lock().expect("registry lock");
        remotes.entry((uri.to_owned(), refresh_secs)).or_insert_with(|| self.spawn(uri, Duration::from_secs(refresh_secs))).set.clone()
    }

    fn provider(&self, issuer: &str) -> Arc<crate::decide::signin::Provider> {
        self.providers.get(issuer, &self.client, (self.health.clone(), self.health_changed.clone()))
    }
}

#[allow(clippy::too_many_arguments)]
async fn fetch_loop(
    client: HttpClient,
    metrics: Metrics,
    uri: String,
    set: Arc<KeySet>,
    refresh: Duration,
    min_interval: Duration,
    wake: Arc<Notify>,
    attempts: watch::Sender<u64>,
    last_attempt: Arc<Mutex<Option<Instant>>>,
    (health, health_changed): (Arc<Mutex<HashMap<String, JwksHealth>>>, Arc<Notify>),
) {
    let mut failures: u32 = 0;
    loop {
        *last_attempt.lock().expect("lock") = Some(Instant::now());
        let result = fetch_jwks(&client, &uri).await;
        let flipped =
            record_health(&mut health.lock().expect("health lock"), &uri, &result, set.state().keys.len(), jiff::Timestamp::now());
        if flipped {
            health_changed.notify_waiters();
        }
        let next = match result {
            Ok((keys, skipped)) => {
                for s in &skipped {
                    tracing::warn!(%uri, "JWKS key skipped: {s}");
                }
                metrics.jwks_fetch(&uri, true, keys.len());
                let n = keys.len();
                if set.replace(keys) {
                    tracing::info!(%uri, keys = n, generation = set.generation(), "JWKS updated");
                }
                failures = 0;
                refresh
            }
            Err(why) => {
                metrics.jwks_fetch(&uri, false, 0);
                failures = failures.saturating_add(1);
                let kept = set.state().keys.len();
                tracing::warn!(%uri, kept_keys = kept, "JWKS fetch failed, keeping the last good keys: {why}");
                // Back off from 1s up to the refresh interval.
                Duration::from_secs(1u64 << failures.min(8)).min(refresh)
            }
        };
        attempts.send_modify(|n| *n += 1);
        tokio::select! {
            _ = tokio::time::sleep(next) => {}
            _ = wake.notified() => {
                // Honour the rate limit even when woken early.
                let since = last_attempt.lock().expect("lock").map_or(min_interval, |t| t.elapsed());
                if since < min_interval {
                    tokio::time::sleep(min_interval - since).await;
                }
            }
        }
    }
}

/// Records one fetch of `uri` (`held`: keys in use after it); true when it started or stopped
/// failing (or is the first result).
pub(super) fn record_health(
    health: &mut HashMap<String, JwksHealth>,
    uri: &str,
    result: &Result<(Vec<crate::keys::VerifyKey>, Vec<String>), String>,
    held: usize,
    now: jiff::Timestamp,
) -> bool {
    let (ready, keys, last_error) = match result {
        Ok((keys, _)) => (true, keys.len(), None),
        Err(why) => (false, held, Some(why.clone())),
    };
    let previous = health.get(uri);
    let flipped = previous.is_none_or(|h| h.ready != ready);
    let since = match previous {
        Some(h) if !flipped => h.since,
        _ => now,
    };
    let entry = JwksHealth { uri: uri.to_owned(), ready, keys: keys as u32, last_error, since };
    health.insert(uri.to_owned(), entry);
    flipped
}

/// Waits until every remote JWKS of `engine` has been fetched once, at most `within`; whether
/// they all were.
pub async fn first_fetched(engine: &crate::decide::Engine, within: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if engine.remote_key_sets().iter().all(|s| s.state().loaded) {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[cfg(test)]
mod health_tests {
    use super::*;

    #[test]
    fn health_says_since_when_a_url_fails_and_flips_only_on_a_change() {
        let mut h = HashMap::new();
        let t = |s: i64| jiff::Timestamp::from_second(1_800_000_000 + s).unwrap();
        assert!(record_health(&mut h, "u", &Ok((Vec::new(), Vec::new())), 0, t(0)), "first result");
        assert!(!record_health(&mut h, "u", &Ok((Vec::new(), Vec::new())), 0, t(5)));
        assert_eq!(h["u"].since, t(0));
        assert!(record_health(&mut h, "u", &Err("HTTP 503".into()), 2, t(10)));
        assert!(!record_health(&mut h, "u", &Err("timed out".into()), 2, t(20)));
        let e = &h["u"];
        assert_eq!((e.ready, e.keys, e.last_error.as_deref(), e.since), (false, 2, Some("timed out"), t(10)));
    }
}
