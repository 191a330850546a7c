//! Leader election on a `coordination.k8s.io` Lease, in the manner of client-go's: the decision
//! logic ([`Election`]) is pure and driven by a monotonic clock; the I/O loop ([`elect`]) watches
//! the Lease and writes it only with resourceVersion-guarded updates.
//!
//! Why not sleep until the holder's expiry: a released Lease would then sit idle until the old
//! expiry (6–14 s hand-overs measured). Here followers watch the Lease, so a release is taken
//! over as soon as it is seen.
//!
//! Why two leaders cannot overlap: a leader acts only while its last successful renewal was
//! *sent* less than `renew_deadline` ago; a follower takes over only when it has seen the
//! Lease unchanged for `lease_duration` on its own clock (never comparing clocks across
//! machines). The renewal was written after it was sent and the follower saw it after it was
//! written, so the old leader stops `lease_duration - renew_deadline` before anyone may start,
//! even when the apiserver is unreachable to everyone.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{ObjectMeta, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// How long a Lease not renewed stays valid (`leaseDurationSeconds`).
    pub lease: Duration,
    /// A leader that has not renewed for this long stops acting. Shorter than `lease`.
    pub renew_deadline: Duration,
    /// How often the leader renews, and how often a failed write is retried.
    pub retry: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self { lease: Duration::from_secs(15), renew_deadline: Duration::from_secs(10), retry: Duration::from_secs(2) }
    }
}

/// The parts of a Lease that election looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub holder: Option<String>,
    pub renewed: Option<Timestamp>,
    pub duration_secs: i64,
    pub transitions: i32,
}

impl Record {
    pub fn of(lease: &Lease) -> Self {
        let spec = lease.spec.clone().unwrap_or_default();
        Self {
            holder: spec.holder_identity.filter(|h| !h.is_empty()),
            renewed: spec.renew_time.map(|t| t.0),
            duration_secs: spec.lease_duration_seconds.unwrap_or(15).into(),
            transitions: spec.lease_transitions.unwrap_or(0),
        }
    }
}

/// What to do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// Write the Lease with this replica as holder now.
    Acquire,
    /// Renew at this time.
    Renew(Instant),
    /// Nothing to do before this time (or before the Lease changes).
    WaitUntil(Instant),
    /// The renew deadline passed: stop acting as leader now.
    StepDown,
}

#[derive(Debug)]
pub struct Election {
    pub me: String,
    pub timing: Timing,
    /// The Lease as last seen (None: there is none) and when it last changed, locally.
    observed: Option<(Option<Record>, Instant)>,
    /// When the last successful acquire or renewal was sent; Some while leading.
    renewed_at: Option<Instant>,
}

impl Election {
    pub fn new(me: &str, timing: Timing) -> Self {
        Self { me: me.to_owned(), timing, observed: None, renewed_at: None }
    }

    /// Records the Lease as seen now (from the watch, a read or a write's answer).
    pub fn observe(&mut self, record: Option<Record>, now: Instant) {
        match &self.observed {
            Some((seen, _)) if *seen == record => {}
            _ => self.observed = Some((record, now)),
        }
    }

    /// Time left before the renew deadline, while leading.
    pub fn time_left(&self, now: Instant) -> Option<Duration> {
        self.renewed_at.map(|t| self.timing.renew_deadline.saturating_sub(now.duration_since(t))).filter(|d| !d.is_zero())
    }

    pub fn is_leading(&self, now: Instant) -> bool {
        self.renewed_at.is_some_and(|t| now.duration_since(t) < self.timing.renew_deadline)
    }

    pub fn plan(&self, now: Instant) -> Plan {
        if let Some(sent) = self.renewed_at {
            return if now.duration_since(sent) >= self.timing.renew_deadline {
                Plan::StepDown
            } else {
                Plan::Renew((sent + self.timing.retry).max(now))
            };
        }
        match &self.observed {
            // Never read yet: nothing is known, read first.
            None => Plan::WaitUntil(now),
            Some((None, _)) => Plan::Acquire,
            Some((Some(r), _)) if r.holder.is_none() || r.holder.as_deref() == Some(self.me.as_str()) => Plan::Acquire,
            Some((Some(r), seen)) => {
                let expires = *seen + Duration::from_secs(r.duration_secs.max(1) as u64);
                if now >= expires { Plan::Acquire } else { Plan::WaitUntil(expires) }
            }
        }
    }

    /// A write with this replica as holder, sent at `sent`, succeeded.
    pub fn written(&mut self, record: Record, sent: Instant, now: Instant) {
        self.renewed_at = Some(sent);
        self.observe(Some(record), now);
    }

    pub fn step_down(&mut self) {
        self.renewed_at = None;
    }

    /// The Lease to write for an acquire or renewal at `now`.
    pub fn next_record(&self, wall: Timestamp) -> Record {
        let current = self.observed.as_ref().and_then(|(r, _)| r.clone());
        let transitions = match &current {
            Some(r) if r.holder.as_deref() == Some(self.me.as_str()) => r.transitions,
            Some(r) => r.transitions + 1,
            None => 0,
        };
        Record { holder: Some(self.me.clone()), renewed: Some(wall), duration_secs: self.timing.lease.as_secs() as i64, transitions }
    }
}

fn lease_object(name: &str, namespace: &str, record: &Record, acquired: Option<Timestamp>, base: Option<&Lease>) -> Lease {
    let mut lease = base.cloned().unwrap_or_else(|| Lease {
        metadata: ObjectMeta { name: Some(name.to_owned()), namespace: Some(namespace.to_owned()), ..Default::default() },
        spec: None,
    });
    let mut spec = lease.spec.take().unwrap_or_else(LeaseSpec::default);
    spec.holder_identity = record.holder.clone();
    spec.renew_time = record.renewed.map(MicroTime);
    spec.lease_duration_seconds = Some(record.duration_secs as i32);
    spec.lease_transitions = Some(record.transitions);
    if let Some(t) = acquired {
        spec.acquire_time = Some(MicroTime(t));
    }
    lease.spec = Some(spec);
    lease
}

/// Runs the election until every receiver of the returned channel is dropped, then releases
/// the Lease if held. The channel says whether this replica leads.
pub fn elect(
    client: Client,
    namespace: &str,
    name: &str,
    identity: &str,
    field_manager: String,
    timing: Timing,
) -> (watch::Receiver<bool>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = watch::channel(false);
    let api: Api<Lease> = Api::namespaced(client, namespace);
    let (name, namespace, identity) = (name.to_owned(), namespace.to_owned(), identity.to_owned());
    let task = tokio::spawn(async move {
        let (obs_tx, obs_rx) = mpsc::channel(16);
        let watch = tokio::spawn(watch_lease(api.clone(), name.clone(), obs_tx));
        run(api, &name, &namespace, Election::new(&identity, timing), field_manager, tx, obs_rx).await;
        watch.abort();
    });
    (rx, task)
}

/// Feeds every state of the Lease into `out` (None: it does not exist).
async fn watch_lease(api: Api<Lease>, name: String, out: mpsc::Sender<Option<Lease>>) {
    use futures::StreamExt;
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let stream = watcher(api, config).backoff(crate::plumbing::watch_backoff::WatchBackoff::default());
    let mut stream = std::pin::pin!(stream);
    let mut listed: Option<Lease> = None;
    while let Some(event) = stream.next().await {
        let seen = match event {
            Ok(watcher::Event::Apply(l)) => Some(Some(l)),
            Ok(watcher::Event::Delete(_)) => Some(None),
            Ok(watcher::Event::Init) => {
                listed = None;
                None
            }
            Ok(watcher::Event::InitApply(l)) => {
                listed = Some(l);
                None
            }
            Ok(watcher::Event::InitDone) => Some(listed.take()),
            Err(e) => {
                tracing::warn!(lease = %name, "watching the leader Lease failed, retrying: {e}");
                None
            }
        };
        if let Some(s) = seen
            && out.send(s).await.is_err()
        {
            return;
        }
    }
}

async fn run(
    api: Api<Lease>,
    name: &str,
    namespace: &str,
    mut election: Election,
    field_manager: String,
    tx: watch::Sender<bool>,
    mut seen: mpsc::Receiver<Option<Lease>>,
) {
    let params = PostParams { field_manager: Some(field_manager), ..Default::default() };
    let mut current: Option<Lease> = None;
    let mut known = false;
    loop {
        let now = Instant::now();
        if election.plan(now) == Plan::StepDown {
            tracing::warn!(lease = name, "could not renew the leader Lease in time: no longer acting as leader");
            election.step_down();
        }
        let leading = election.is_leading(now);
        tx.send_if_modified(|l| std::mem::replace(l, leading) != leading);
        let (at, write) = match election.plan(now) {
            // The watch answers first; a read covers a watch that cannot.
            _ if !known => (now + election.timing.retry, false),
            Plan::Acquire => (now, true),
            Plan::Renew(at) => (at, true),
            Plan::WaitUntil(t) => (t, false),
            Plan::StepDown => (now, false),
        };
        if at > now {
            tokio::select! {
                s = seen.recv() => {
                    let Some(lease) = s else { break };
                    election.observe(lease.as_ref().map(Record::of), Instant::now());
                    (current, known) = (lease, true);
                    continue;
                }
                _ = tokio::time::sleep_until(at) => {}
                _ = tx.closed() => break,
            }
        }
        if !write {
            if !known && let Ok(Ok(l)) = tokio::time::timeout(election.timing.retry, api.get_opt(name)).await {
                election.observe(l.as_ref().map(Record::of), Instant::now());
                (current, known) = (l, true);
            }
            continue;
        }
        // Create when there is no Lease, else replace at the version last seen. A write that
        // hangs may not outlive the renew deadline.
        let sent = Instant::now();
        let budget = election.time_left(sent).unwrap_or(election.timing.retry).min(election.timing.retry);
        let wall = Timestamp::now();
        let record = election.next_record(wall);
        let newly = !election.is_leading(sent);
        let lease = lease_object(name, namespace, &record, newly.then_some(wall), current.as_ref());
        let write = async {
            match &current {
                None => api.create(&params, &lease).await,
                Some(_) => api.replace(name, &params, &lease).await,
            }
        };
        match tokio::time::timeout(budget, write).await {
            Ok(Ok(written)) => {
                if newly {
                    tracing::info!(lease = name, identity = %election.me, "acquired the leader Lease");
                }
                election.written(Record::of(&written), sent, Instant::now());
                current = Some(written);
            }
            failed => {
                match failed {
                    Ok(Err(kube::Error::Api(s))) if s.code == 409 => {}
                    Ok(Err(e)) => tracing::warn!(lease = name, "writing the leader Lease failed: {e}"),
                    _ => tracing::warn!(lease = name, "writing the leader Lease timed out"),
                }
                // Someone else wrote it, or it is unknown how it stands: read it again, and
                // wait a retry period before the next attempt.
                if let Ok(Ok(l)) = tokio::time::timeout(election.timing.retry, api.get_opt(name)).await {
                    election.observe(l.as_ref().map(Record::of), Instant::now());
                    current = l;
                }
                tokio::select! {
                    _ = tokio::time::sleep(election.timing.retry) => {}
                    _ = tx.closed() => break,
                }
            }
        }
    }
    // Release: another replica takes over as soon as it sees the Lease without a holder.
    let _ = tx.send(false);
    if election.is_leading(Instant::now())
        && let Some(l) = current
    {
        let released = Record { holder: None, renewed: Some(Timestamp::now()), duration_secs: 1, transitions: Record::of(&l).transitions };
        let lease = lease_object(name, namespace, &released, None, Some(&l));
        match tokio::time::timeout(Duration::from_secs(3), api.replace(name, &params, &lease)).await {
            Ok(Ok(_)) => tracing::info!(lease = name, "leader Lease released"),
            Ok(Err(e)) => tracing::warn!(lease = name, "releasing the leader Lease failed; it expires by itself: {e}"),
            Err(_) => tracing::warn!(lease = name, "releasing the leader Lease timed out; it expires by itself"),
        }
    }
}

#[cfg(test)]
#[path = "leader_tests.rs"]
mod tests;
