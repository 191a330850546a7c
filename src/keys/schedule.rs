//! The rotation schedule, as a pure function of the time, the SigningKey's spec and the stored
//! keys (cert-manager style: decisions return reasons; the clock is a parameter).
//!
//! ```text
//!   created ──prePublish──▶ activates_at ─────rotationInterval─────▶ retires_at ──retain──▶ removed
//!   Pending (published)      Active (signs)                           Retired (published)
//! ```
//! The successor of the Active key is created `prePublish` before it is due, so verifiers that
//! cache the JWKS know it before it signs; a key leaves the JWKS `retain` after it stopped
//! signing, so every token it signed has expired by then. Gateways switch keys by the published
//! windows on their own clock, so a late controller never delays or advances a switch. A missed
//! wake-up never shortens a pre-publication: a successor created late activates `prePublish`
//! after it was created, and the old key signs until then.

use jiff::Timestamp;

use super::store::{KeyRing, StoredKey};
use super::{KeyError, SigningKeyPair};
use crate::api::{KeyState, SigningAlgorithm, SigningKeySpec};
use crate::policy::config::{KeyRef, PublishedKeys, SigningWindow};

/// What the user asked for, besides the schedule.
#[derive(Debug, Default, Clone)]
pub struct Requests {
    /// A rotation request id (the `portcullis.dev/rotate` annotation); each new value rotates once.
    pub rotate: Option<String>,
    /// kids to revoke at once (compromise): they leave the JWKS now.
    pub revoke: Vec<String>,
}

impl Requests {
    /// A rotation request whose id starts with `immediate` skips the pre-publication.
    pub fn immediate(&self) -> bool {
        self.rotate.as_deref().is_some_and(|r| r.starts_with("immediate"))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Created { kid: String, activates_at: Timestamp },
    Activated { kid: String },
    Retired { kid: String, removes_at: Timestamp },
    Removed { kid: String },
    Revoked { kid: String },
    RotationRequested { request: String },
}

impl Event {
    /// A one-line description for logs and Kubernetes Events.
    pub fn describe(&self) -> String {
        match self {
            Self::Created { kid, activates_at } => format!("key {kid} created; it signs from {activates_at}"),
            Self::Activated { kid } => format!("key {kid} now signs"),
            Self::Retired { kid, removes_at } => format!("key {kid} retired; it leaves the JWKS at {removes_at}"),
            Self::Removed { kid } => format!("key {kid} removed from the JWKS"),
            Self::Revoked { kid } => format!("key {kid} revoked and removed from the JWKS"),
            Self::RotationRequested { request } => format!("rotation requested ({request})"),
        }
    }
}

#[derive(Debug)]
pub struct Plan {
    pub ring: KeyRing,
    /// When the schedule next changes something (`None`: never on its own).
    pub next_wakeup: Option<Timestamp>,
    pub events: Vec<Event>,
}

impl Plan {
    pub fn changed(&self) -> bool {
        !self.events.is_empty()
    }
}

fn plus(t: Timestamp, d: std::time::Duration) -> Timestamp {
    jiff::SignedDuration::try_from(d).ok().and_then(|d| t.checked_add(d).ok()).unwrap_or(Timestamp::MAX)
}

fn minus(t: Timestamp, d: std::time::Duration) -> Timestamp {
    jiff::SignedDuration::try_from(d).ok().and_then(|d| t.checked_sub(d).ok()).unwrap_or(Timestamp::MIN)
}

pub type Generator<'a> = dyn FnMut(SigningAlgorithm, Option<u32>) -> Result<SigningKeyPair, KeyError> + 'a;

/// Real key generation.
pub fn generate(alg: SigningAlgorithm, rsa_bits: Option<u32>) -> Result<SigningKeyPair, KeyError> {
    SigningKeyPair::generate(alg, rsa_bits)
}

/// Brings a keyring up to date at `now`.
pub fn plan(
    now: Timestamp,
    spec: &SigningKeySpec,
    mut ring: KeyRing,
    requests: &Requests,
    generate: &mut Generator<'_>,
) -> Result<Plan, KeyError> {
    // Tokens and gateways count whole seconds. A key that signs "at once" starts at the second
    // already begun (so a clock read in seconds sees it now); a scheduled key starts on a whole
    // second no earlier than prePublish after its real creation.
    let now_floor = Timestamp::from_second(now.as_second()).unwrap_or(now);
    let now_ceil = if now_floor == now { now } else { Timestamp::from_second(now.as_second() + 1).unwrap_or(now) };
    let interval = spec.rotation_interval.as_std();
    let pre_publish = spec.pre_publish.as_std();
    let retain = spec.retain.as_std();
    let mut events = Vec::new();
    let mut new_key = |ring: &mut KeyRing, events: &mut Vec<Event>, state: KeyState, activates_at: Timestamp| -> Result<(), KeyError> {
        let pair = generate(spec.algorithm, spec.rsa_bits)?;
        ring.keys.push(StoredKey::new(&pair, state, now, activates_at)?);
        events.push(Event::Created { kid: pair.kid().to_owned(), activates_at });
        if state == KeyState::Active {
            events.push(Event::Activated { kid: pair.kid().to_owned() });
        }
        Ok(())
    };

    // Revocations: gone from the JWKS now, and never again.
    for kid in &requests.revoke {
        if ring.revoked.contains(kid) {
            continue;
        }
        ring.revoked.push(kid.clone());
        if let Some(i) = ring.keys.iter().position(|k| &k.kid == kid) {
            ring.keys.remove(i);
            events.push(Event::Revoked { kid: kid.clone() });
        }
    }

    // A rotation request (each id once). Immediate: the successor signs now.
    let rotate = requests.rotate.as_ref().filter(|r| ring.last_rotate_request.as_ref() != Some(*r)).cloned();
    if let Some(request) = rotate {
        ring.last_rotate_request = Some(request.clone());
        events.push(Event::RotationRequested { request });
        let due = if requests.immediate() { now_floor } else { plus(now_ceil, pre_publish) };
        let has_active = ring.active().is_some();
        match ring.keys.iter_mut().filter(|k| k.state == KeyState::Pending).min_by_key(|k| k.activates_at) {
            // Never earlier than prePublish after the key appeared, unless immediate.
            Some(p) => {
                p.activates_at = p.activates_at.min(due.max(if requests.immediate() { now_floor } else { plus(p.created_at, pre_publish) }))
            }
            None if has_active => new_key(&mut ring, &mut events, KeyState::Pending, due)?,
            None => {}
        }
    }

    // A changed algorithm is a rotation to a key of the new algorithm.
    if let Some(active) = ring.active()
        && active.algorithm != spec.algorithm
        && !ring.keys.iter().any(|k| k.state == KeyState::Pending && k.algorithm == spec.algorithm)
    {
        ring.keys.retain(|k| k.state != KeyState::Pending);
        let due = plus(now_ceil, pre_publish);
        new_key(&mut ring, &mut events, KeyState::Pending, due)?;
    }

    loop {
        // No signing key at all (new SigningKey, or its Active key was revoked): the earliest
        // Pending key signs now, or a new key does.
        if ring.active().is_none() {
            match ring.keys.iter_mut().filter(|k| k.state == KeyState::Pending).min_by_key(|k| k.activates_at) {
                Some(p) => {
                    p.state = KeyState::Active;
                    p.activates_at = p.activates_at.min(now_floor);
                    events.push(Event::Activated { kid: p.kid.clone() });
                }
                None => new_key(&mut ring, &mut events, KeyState::Active, now_floor)?,
            }
            continue;
        }
        // A Pending key whose time has come takes over; the old key retires at that moment.
        if let Some(due) = ring.keys.iter().filter(|k| k.state == KeyState::Pending && k.activates_at <= now).min_by_key(|k| k.activates_at)
        {
            let (kid, at) = (due.kid.clone(), due.activates_at);
            for k in ring.keys.iter_mut() {
                if k.state == KeyState::Active {
                    let removes_at = plus(at, retain);
                    k.state = KeyState::Retired;
                    k.retires_at = Some(at);
                    k.removes_at = Some(removes_at);
                    events.push(Event::Retired { kid: k.kid.clone(), removes_at });
                } else if k.kid == kid {
                    k.state = KeyState::Active;
                    events.push(Event::Activated { kid: kid.clone() });
                }
            }
            continue;
        }
        // Retired keys whose tokens have all expired leave.
        if let Some(i) = ring.keys.iter().position(|k| k.state == KeyState::Retired && k.removes_at.is_some_and(|r| r <= now)) {
            let k = ring.keys.remove(i);
            events.push(Event::Removed { kid: k.kid });
            continue;
        }
        // The successor is created prePublish before the Active key is due to retire.
        let active = ring.active().expect("an active key exists here");
        let has_successor = ring.keys.iter().any(|k| k.state == KeyState::Pending);
        let due = plus(active.activates_at, interval);
        if !has_successor && now >= successor_due(active.activates_at, spec) {
            let activates_at = due.max(plus(now_ceil, pre_publish));
            new_key(&mut ring, &mut events, KeyState::Pending, activates_at)?;
            continue;
        }
        break;
    }

    // The Active key's retirement follows its successor's activation.
    let successor_at = ring.keys.iter().filter(|k| k.state == KeyState::Pending).map(|k| k.activates_at).min();
    for k in ring.keys.iter_mut().filter(|k| k.state == KeyState::Active) {
        k.retires_at = successor_at;
    }

    let next_wakeup = next_transition(&ring, spec);
    Ok(Plan { ring, next_wakeup, events })
}

/// When the successor of a key that signs from `activates_at` is created: prePublish before the
/// key is due to retire, and one second more, so that a successor created a fraction of a
/// second late still activates exactly on time (activation is rounded up to whole seconds).
fn successor_due(activates_at: Timestamp, spec: &SigningKeySpec) -> Timestamp {
    minus(plus(activates_at, spec.rotation_interval.as_std()), spec.pre_publish.as_std() + std::time::Duration::from_secs(1))
}

/// When the schedule next changes something: a Pending key activates, a Retired key leaves, or
/// the Active key's successor is due to be created.
pub fn next_transition(ring: &KeyRing, spec: &SigningKeySpec) -> Option<Timestamp> {
    let has_successor = ring.keys.iter().any(|k| k.state == KeyState::Pending);
    let successor_due = ring.active().filter(|_| !has_successor).map(|a| successor_due(a.activates_at, spec));
    ring.keys
        .iter()
        .filter_map(|k| match k.state {
            KeyState::Pending => Some(k.activates_at),
            KeyState::Retired => k.removes_at,
            KeyState::Active => None,
        })
        .chain(successor_due)
        .min()
}

/// The public side of a SigningKey for gateway configs: JWKS, signing windows, cache bounds.
pub fn publish(key: &KeyRef, spec: &SigningKeySpec, ring: &KeyRing) -> Result<PublishedKeys, KeyError> {
    let jwks = ring.public_jwks()?;
    let keys = jwks["keys"].as_array().into_iter().flatten().filter_map(|k| k.as_object().cloned().map(crate::api::JwkObject)).collect();
    Ok(PublishedKeys {
        namespace: key.namespace.clone(),
        name: key.name.clone(),
        algorithm: spec.algorithm,
        active_kid: ring.active().map(|k| k.kid.clone()),
        signing: signing_windows(ring),
        max_age_secs: spec.pre_publish.as_secs().max(1),
        keys,
        retain_secs: spec.retain.as_secs(),
        next_transition: next_transition(ring, spec),
    })
}

/// When each published key signs: Active until its successor, Pending from its activation.
pub fn signing_windows(ring: &KeyRing) -> Vec<SigningWindow> {
    let mut windows: Vec<SigningWindow> = ring
        .keys
        .iter()
        .filter(|k| k.state != KeyState::Retired)
        .map(|k| SigningWindow { kid: k.kid.clone(), from: k.activates_at, until: None })
        .collect();
    windows.sort_by_key(|w| w.from);
    for i in 1..windows.len() {
        let from = windows[i].from;
        windows[i - 1].until = Some(from);
    }
    windows
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Duration;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn spec(interval: u64, pre: u64, retain: u64) -> SigningKeySpec {
        SigningKeySpec {
            algorithm: SigningAlgorithm::EdDSA,
            rotation_interval: Duration::from_secs(interval),
            pre_publish: Duration::from_secs(pre),
            retain: Duration::from_secs(retain),
            rsa_bits: None,
        }
    }

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    fn run(now: i64, spec: &SigningKeySpec, ring: KeyRing, req: &Requests) -> Plan {
        plan(t(now), spec, ring, req, &mut generate).unwrap()
    }

    fn states(ring: &KeyRing) -> Vec<KeyState> {
        ring.keys.iter().map(|k| k.state).collect()
    }

    #[test]
    fn the_first_key_signs_at_once() {
        let s = spec(100, 10, 20);
        let p = run(0, &s, KeyRing::new(), &Requests::default());
        assert_eq!(states(&p.ring), [KeyState::Active]);
        assert_eq!(p.next_wakeup, Some(t(89)), "the successor is due prePublish (and a second) before rotation");
        assert!(matches!(&p.events[..], [Event::Created { .. }, Event::Activated { .. }]));
    }

    #[test]
    fn a_full_rotation_pre_publishes_switches_and_retains() {
        let s = spec(100, 10, 20);
        let none = Requests::default();
        let p0 = run(0, &s, KeyRing::new(), &none);
        let first = p0.ring.keys[0].kid.clone();
        let p1 = run(89, &s, p0.ring, &none);
        assert_eq!(states(&p1.ring), [KeyState::Active, KeyState::Pending]);
        assert_eq!(p1.ring.keys[1].activates_at, t(100));
        assert_eq!(p1.ring.keys[0].retires_at, Some(t(100)));
        assert_eq!(p1.next_wakeup, Some(t(100)));
        let p2 = run(100, &s, p1.ring, &none);
        assert_eq!(states(&p2.ring), [KeyState::Retired, KeyState::Active]);
        assert_eq!(p2.ring.keys[0].removes_at, Some(t(120)));
        assert_eq!(p2.next_wakeup, Some(t(120)));
        let p3 = run(120, &s, p2.ring, &none);
        assert!(p3.ring.keys.iter().all(|k| k.kid != first));
        assert_eq!(p3.next_wakeup, Some(t(189)));
        assert!(!run(150, &s, p3.ring, &none).changed(), "nothing is due in between");
    }

    #[test]
    fn fractional_clocks_never_shorten_the_pre_publication() {
        let s = spec(100, 10, 20);
        let at = |ms: i64| t(0).checked_add(jiff::SignedDuration::from_millis(ms)).unwrap();
        let p0 = plan(at(400), &s, KeyRing::new(), &Requests::default(), &mut generate).unwrap();
        assert_eq!(p0.ring.keys[0].activates_at, t(0), "a first key signs in the second already begun");
        // Woken 0.4s after the successor was due to be created: it still activates on time.
        let p1 = plan(at(89_400), &s, p0.ring, &Requests::default(), &mut generate).unwrap();
        let successor = &p1.ring.keys[1];
        assert_eq!(successor.created_at, at(89_400));
        assert_eq!(successor.activates_at, t(100));
        // Woken 1.4s late: the pre-publication is not shortened, the rotation waits.
        let p0 = plan(at(400), &s, KeyRing::new(), &Requests::default(), &mut generate).unwrap();
        let p1 = plan(at(90_400), &s, p0.ring, &Requests::default(), &mut generate).unwrap();
        let successor = &p1.ring.keys[1];
        assert_eq!(successor.activates_at, t(101));
        assert!(successor.activates_at.duration_since(successor.created_at) >= jiff::SignedDuration::from_secs(10));
    }

    #[test]
    fn a_late_wake_up_still_pre_publishes_for_the_full_time() {
        let s = spec(100, 10, 20);
        let p0 = run(0, &s, KeyRing::new(), &Requests::default());
        // Asleep until well after the rotation was due.
        let p1 = run(250, &s, p0.ring, &Requests::default());
        assert_eq!(states(&p1.ring), [KeyState::Active, KeyState::Pending]);
        assert_eq!(p1.ring.keys[1].activates_at, t(260));
    }

    #[test]
    fn rotation_requests_act_once_and_immediate_skips_pre_publication() {
        let s = spec(100, 10, 20);
        let p0 = run(0, &s, KeyRing::new(), &Requests::default());
        let req = Requests { rotate: Some("r1".into()), ..Default::default() };
        let p1 = run(30, &s, p0.ring, &req);
        assert_eq!(p1.ring.keys[1].activates_at, t(40));
        let again = run(31, &s, p1.ring.clone(), &req);
        assert_eq!(again.ring.keys.len(), 2, "the same request does not rotate twice");
        let now = Requests { rotate: Some("immediate-1".into()), ..Default::default() };
        let p2 = run(32, &s, p1.ring, &now);
        assert_eq!(states(&p2.ring), [KeyState::Retired, KeyState::Active]);
        assert_eq!(p2.ring.keys[1].activates_at, t(32));
    }

    #[test]
    fn revoking_the_active_key_makes_a_new_one_at_once() {
        let s = spec(100, 10, 20);
        let p0 = run(0, &s, KeyRing::new(), &Requests::default());
        let kid = p0.ring.keys[0].kid.clone();
        let p1 = run(5, &s, p0.ring, &Requests { revoke: vec![kid.clone()], ..Default::default() });
        assert_eq!(states(&p1.ring), [KeyState::Active]);
        assert_ne!(p1.ring.keys[0].kid, kid);
        assert!(p1.events.contains(&Event::Revoked { kid: kid.clone() }));
        assert_eq!(p1.ring.revoked, [kid]);
    }

    #[test]
    fn an_algorithm_change_rotates_through_pending() {
        let s = spec(100, 10, 20);
        let p0 = run(0, &s, KeyRing::new(), &Requests::default());
        let mut es = s.clone();
        es.algorithm = SigningAlgorithm::ES256;
        let p1 = run(5, &es, p0.ring, &Requests::default());
        assert_eq!(states(&p1.ring), [KeyState::Active, KeyState::Pending]);
        assert_eq!(p1.ring.keys[1].algorithm, SigningAlgorithm::ES256);
        assert_eq!(p1.ring.keys[1].activates_at, t(15));
    }

    #[test]
    fn windows_hand_over_at_activation() {
        let s = spec(100, 10, 20);
        let p = run(89, &s, run(0, &s, KeyRing::new(), &Requests::default()).ring, &Requests::default());
        let w = signing_windows(&p.ring);
        assert_eq!(w.len(), 2);
        assert_eq!((w[0].from, w[0].until), (t(0), Some(t(100))));
        assert_eq!((w[1].from, w[1].until), (t(100), None));
    }

    #[derive(Debug, Clone)]
    enum Step {
        /// Wake up this long after the planned wake-up (may be negative: early, or huge: missed).
        Wake(i64),
        Rotate(bool),
        RevokeActive,
        RevokePending,
        /// Round-trip the keyring through its stored form (a restart).
        Restart,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            8 => prop_oneof![Just(0i64), -3i64..3, 0i64..400].prop_map(Step::Wake),
            1 => any::<bool>().prop_map(Step::Rotate),
            1 => Just(Step::RevokeActive),
            1 => Just(Step::RevokePending),
            1 => Just(Step::Restart),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// Over simulated time: exactly one Active key; a key signs only after it was published
        /// for prePublish (unless an immediate rotation or a revocation forced it); and no token
        /// signed with a key whose window covered its minting time ever outlives the key's
        /// presence in the JWKS.
        #[test]
        fn rotation_never_breaks_a_valid_token(
            interval in 5u64..200,
            pre_frac in 0.05f64..0.9,
            ttl in 1u64..100,
            extra_retain in 0u64..50,
            steps in proptest::collection::vec(step(), 1..60),
            mint_offsets in proptest::collection::vec(0.0f64..1.0, 60),
        ) {
            let pre = ((interval as f64 * pre_frac) as u64).clamp(1, interval - 1);
            let s = spec(interval, pre, ttl + extra_retain);
            let mut now = 0i64;
            let mut p = run(now, &s, KeyRing::new(), &Requests::default());
            let mut forced: std::collections::BTreeSet<String> = p.ring.keys.iter().map(|k| k.kid.clone()).collect();
            let mut first_seen: BTreeMap<String, i64> = p.ring.keys.iter().map(|k| (k.kid.clone(), now)).collect();
            // Tokens minted so far: (kid, exp); revoked kids are exempt (revocation is meant to break them).
            let mut tokens: Vec<(String, i64)> = Vec::new();
            let mut n_rot = 0;
            for (i, st) in steps.iter().enumerate() {
                let mut req = Requests::default();
                let next = p.next_wakeup.map_or(now + 1000, |w| w.as_second() - 1_800_000_000);
                let mut then = now;
                match st {
                    Step::Wake(jitter) => then = (next + jitter).max(now),
                    Step::Rotate(immediate) => {
                        n_rot += 1;
                        req.rotate = Some(format!("{}{n_rot}", if *immediate { "immediate-" } else { "r" }));
                    }
                    Step::RevokeActive => req.revoke = vec![p.ring.active().unwrap().kid.clone()],
                    Step::RevokePending => req.revoke = p.ring.keys.iter().filter(|k| k.state == KeyState::Pending).map(|k| k.kid.clone()).collect(),
                    Step::Restart => p.ring = KeyRing::from_json(&p.ring.to_json()).unwrap(),
                }
                // Tokens minted between now and then by a gateway following the published windows.
                let windows = signing_windows(&p.ring);
                let mint_at = now + ((then - now) as f64 * mint_offsets[i]) as i64;
                let signer = windows.iter().filter(|w| w.contains(t(mint_at))).max_by_key(|w| w.from).unwrap();
                tokens.push((signer.kid.clone(), mint_at + ttl as i64));

                now = then;
                let immediate = req.immediate() && req.rotate.is_some();
                let revoking = !req.revoke.is_empty();
                p = run(now, &s, p.ring, &req);
                prop_assert_eq!(p.ring.keys.iter().filter(|k| k.state == KeyState::Active).count(), 1);
                for k in &p.ring.keys {
                    first_seen.entry(k.kid.clone()).or_insert(now);
                    if (immediate || revoking) && (k.state == KeyState::Active && k.activates_at == t(now)) {
                        forced.insert(k.kid.clone());
                    }
                    if k.state == KeyState::Active && !forced.contains(&k.kid) {
                        let published_for = k.activates_at.as_second() - 1_800_000_000 - first_seen[&k.kid];
                        prop_assert!(published_for >= pre as i64, "{} signed after {}s of {}s", k.kid, published_for, pre);
                    }
                }
                for (kid, exp) in &tokens {
                    if *exp > now && !p.ring.revoked.contains(kid) {
                        prop_assert!(p.ring.keys.iter().any(|k| &k.kid == kid), "a valid token's key {} left the JWKS at {}", kid, now);
                    }
                }
            }
        }
    }
}
