//! Leader election as a simulation: replicas, an API server that can go away, and a clock.

use super::*;

const TICK: Duration = Duration::from_millis(100);

fn held_by(holder: &str, renewed_secs_ago: i64) -> Record {
    Record {
        holder: Some(holder.into()),
        renewed: Some(Timestamp::now() - jiff::SignedDuration::from_secs(renewed_secs_ago)),
        duration_secs: 15,
        transitions: 3,
    }
}

#[test]
fn a_follower_times_the_holders_expiry_on_its_own_clock_and_takes_a_released_lease_at_once() {
    let t0 = Instant::now();
    let mut e = Election::new("b", Timing::default());
    assert_eq!(e.plan(t0), Plan::WaitUntil(t0), "nothing read yet");
    // The holder's renewTime says an hour ago (its clock is off): what counts is when this
    // replica saw the Lease change.
    e.observe(Some(held_by("a", 3600)), t0);
    assert_eq!(e.plan(t0 + Duration::from_secs(14)), Plan::WaitUntil(t0 + Duration::from_secs(15)));
    // A renewal by the holder starts the wait over.
    let mut renewed = held_by("a", 3600);
    renewed.renewed = Some(Timestamp::now());
    e.observe(Some(renewed.clone()), t0 + Duration::from_secs(10));
    assert_eq!(e.plan(t0 + Duration::from_secs(16)), Plan::WaitUntil(t0 + Duration::from_secs(25)));
    // Seeing the same record again changes nothing.
    e.observe(Some(renewed), t0 + Duration::from_secs(20));
    assert_eq!(e.plan(t0 + Duration::from_secs(25)), Plan::Acquire);
    // Released: at once.
    let mut e = Election::new("b", Timing::default());
    e.observe(Some(Record { holder: None, ..held_by("a", 0) }), t0);
    assert_eq!(e.plan(t0), Plan::Acquire);
    let next = e.next_record(Timestamp::now());
    assert_eq!((next.holder.as_deref(), next.transitions, next.duration_secs), (Some("b"), 4, 15));
}

#[test]
fn a_leader_renews_every_retry_period_and_stops_acting_at_the_renew_deadline() {
    let t0 = Instant::now();
    let mut e = Election::new("a", Timing::default());
    e.observe(None, t0);
    assert_eq!(e.plan(t0), Plan::Acquire);
    e.written(held_by("a", 0), t0, t0);
    assert!(e.is_leading(t0));
    assert_eq!(e.plan(t0), Plan::Renew(t0 + Duration::from_secs(2)));
    // Renewals fail from here on.
    assert!(e.is_leading(t0 + Duration::from_millis(9_900)));
    assert_eq!(e.time_left(t0 + Duration::from_secs(9)), Some(Duration::from_secs(1)));
    assert_eq!(e.plan(t0 + Duration::from_secs(10)), Plan::StepDown);
    assert!(!e.is_leading(t0 + Duration::from_secs(10)));
    e.step_down();
    // It holds the record still, so it tries to take it back, which only a guarded write can.
    assert_eq!(e.plan(t0 + Duration::from_secs(10)), Plan::Acquire);
}

/// An API server holding one Lease with a resourceVersion; it may be unreachable.
struct Server {
    record: Option<Record>,
    version: u64,
    up: bool,
}

struct Replica {
    election: Election,
    /// The version this replica's last read or write saw.
    version: u64,
    alive: bool,
    /// Partitioned from the API server (which the others still reach).
    cut_off: bool,
}

/// Runs replicas against the server for `duration`, calling `events` at every tick (it may
/// take the server down, kill or release a replica). Returns, per tick, who leads.
fn simulate(
    replicas: &mut [Replica],
    server: &mut Server,
    duration: Duration,
    mut events: impl FnMut(Duration, &mut [Replica], &mut Server),
) -> Vec<(Duration, Vec<usize>)> {
    let t0 = Instant::now();
    let mut timeline = Vec::new();
    let mut at = Duration::ZERO;
    while at <= duration {
        let now = t0 + at;
        events(at, replicas, server);
        for r in replicas.iter_mut().filter(|r| r.alive) {
            // The watch delivers the current Lease while the server is up.
            let reachable = server.up && !r.cut_off;
            if reachable {
                r.election.observe(server.record.clone(), now);
                r.version = server.version;
            }
            let e = &mut r.election;
            let plan = e.plan(now);
            if plan == Plan::StepDown {
                e.step_down();
            }
            let write = match e.plan(now) {
                Plan::Acquire => true,
                Plan::Renew(when) => when <= now,
                _ => false,
            };
            if write && reachable {
                if r.version == server.version {
                    let record = e.next_record(Timestamp::now());
                    server.record = Some(record.clone());
                    server.version += 1;
                    r.version = server.version;
                    e.written(record, now, now);
                } else {
                    e.observe(server.record.clone(), now);
                    r.version = server.version;
                }
            }
        }
        let leaders: Vec<usize> =
            replicas.iter().enumerate().filter(|(_, r)| r.alive && r.election.is_leading(now)).map(|(i, _)| i).collect();
        timeline.push((at, leaders));
        at += TICK;
    }
    timeline
}

fn replicas(n: usize, timing: Timing) -> Vec<Replica> {
    (0..n).map(|i| Replica { election: Election::new(&format!("r{i}"), timing), version: 0, alive: true, cut_off: false }).collect()
}

fn first_leader_after(timeline: &[(Duration, Vec<usize>)], after: Duration, not: Option<usize>) -> Option<(Duration, usize)> {
    timeline.iter().filter(|(at, _)| *at >= after).find_map(|(at, l)| l.iter().find(|i| Some(**i) != not).map(|i| (*at - after, *i)))
}

#[test]
fn never_two_leaders_through_outages_kills_and_releases_and_hand_overs_are_fast() {
    let mut server = Server { record: None, version: 0, up: true };
    let mut rs = replicas(4, Timing::default());
    // 0 s: start. 20 s: a 30 s outage for everyone. 80 s: the leader releases (SIGTERM).
    // 100 s: the next leader is killed without releasing. 120 s: the leader is cut off from
    // the API server for 30 s while the other replica still reaches it.
    let mut released_by = None;
    let mut killed = None;
    let mut partitioned = None;
    let timeline = simulate(&mut rs, &mut server, Duration::from_secs(180), |at, rs, server| {
        let now_leading = |server: &Server| server.record.as_ref().and_then(|r| r.holder.clone());
        if at == Duration::from_secs(20) {
            server.up = false;
        }
        if at == Duration::from_secs(50) {
            server.up = true;
        }
        if at == Duration::from_secs(80) {
            let holder = now_leading(server).unwrap();
            let i = rs.iter().position(|r| r.election.me == holder).unwrap();
            rs[i].alive = false;
            server.record.as_mut().unwrap().holder = None;
            server.version += 1;
            released_by = Some(i);
        }
        if at == Duration::from_secs(100) {
            let holder = now_leading(server).unwrap();
            let i = rs.iter().position(|r| r.election.me == holder).unwrap();
            rs[i].alive = false;
            killed = Some(i);
        }
        if at == Duration::from_secs(120) {
            let holder = now_leading(server).unwrap();
            let i = rs.iter().position(|r| r.election.me == holder).unwrap();
            rs[i].cut_off = true;
            partitioned = Some(i);
        }
        if at == Duration::from_secs(150) {
            rs.iter_mut().for_each(|r| r.cut_off = false);
        }
    });
    for (at, leaders) in &timeline {
        assert!(leaders.len() <= 1, "two leaders at {at:?}: {leaders:?}");
    }
    // A leader from the start.
    assert_eq!(first_leader_after(&timeline, Duration::ZERO, None).map(|(d, _)| d), Some(Duration::ZERO));
    // The outage: the leader stops acting before its Lease could expire, and someone leads
    // again within a tick of the API server's return.
    let during: Vec<_> =
        timeline.iter().filter(|(at, l)| *at >= Duration::from_secs(30) && *at < Duration::from_secs(50) && !l.is_empty()).collect();
    assert!(during.is_empty(), "nobody acts as leader 10 s into an outage: {:?}", during.first());
    let (back, _) = first_leader_after(&timeline, Duration::from_secs(50), None).unwrap();
    assert!(back <= TICK, "{back:?}");
    // A released Lease is taken over at once, a killed leader within the lease duration.
    let (handover, who) = first_leader_after(&timeline, Duration::from_secs(80), released_by).unwrap();
    assert!(handover <= TICK && Some(who) != released_by, "{handover:?}");
    let (replaced, who) = first_leader_after(&timeline, Duration::from_secs(100), killed).unwrap();
    assert!(replaced <= Duration::from_secs(15) + TICK && replaced >= Duration::from_secs(10), "{replaced:?}");
    assert_ne!(Some(who), killed);
    // Cut off, the leader steps down; the one still connected takes over once the Lease
    // expired on its clock, and the old leader does not come back when the partition heals.
    let (taken, who) = first_leader_after(&timeline, Duration::from_secs(120), partitioned).unwrap();
    assert!(taken <= Duration::from_secs(15) + TICK, "{taken:?}");
    assert_ne!(Some(who), partitioned);
    assert!(timeline.iter().filter(|(at, _)| *at >= Duration::from_secs(150)).all(|(_, l)| l == &vec![who]), "the new leader stays");
}

#[test]
fn the_simulation_catches_a_renew_deadline_as_long_as_the_lease() {
    // The check above can fail: with no margin between renew deadline and lease duration, a
    // partitioned leader still acts when the other replica takes over.
    let timing = Timing { renew_deadline: Duration::from_secs(16), ..Timing::default() };
    let mut server = Server { record: None, version: 0, up: true };
    let mut rs = replicas(2, timing);
    let timeline = simulate(&mut rs, &mut server, Duration::from_secs(40), |at, rs, _| {
        if at == Duration::from_secs(5) {
            rs[0].cut_off = true;
        }
    });
    assert!(timeline.iter().any(|(_, l)| l.len() == 2), "the unsafe timing must show two leaders");
}

#[tokio::test]
async fn a_released_lease_is_taken_over_with_a_guarded_write_and_released_again_on_shutdown() {
    use http::{Request, Response};
    use kube::client::Body;
    let (svc, mut api) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(svc, "default");
    let timing = Timing { lease: Duration::from_secs(15), renew_deadline: Duration::from_secs(10), retry: Duration::from_secs(2) };
    let (mut leading, task) = elect(client, "portcullis", "portcullis-controller", "me", "portcullis-me".into(), timing);
    let released = serde_json::json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "portcullis-controller", "namespace": "portcullis", "resourceVersion": "41"},
        "spec": {"holderIdentity": "", "leaseDurationSeconds": 1, "leaseTransitions": 7}
    });
    let started = std::time::Instant::now();
    let mut writes = Vec::new();
    let mut held = Vec::new();
    // Serve: the watch lists the released Lease; the write is answered as written.
    let server = async {
        while let Some((req, reply)) = api.next_request().await {
            let (method, uri) = (req.method().clone(), req.uri().clone());
            let bytes = http_body_util::BodyExt::collect(req.into_body()).await.unwrap().to_bytes();
            if method == "GET" && uri.query().is_some_and(|q| q.contains("watch=true")) {
                held.push(reply);
                continue;
            }
            let body = if method == "GET" {
                serde_json::json!({"apiVersion": "coordination.k8s.io/v1", "kind": "LeaseList", "metadata": {"resourceVersion": "41"}, "items": [released]})
            } else {
                let mut sent: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
                writes.push((method.to_string(), uri.to_string(), sent.clone()));
                sent["metadata"]["resourceVersion"] = serde_json::json!("42");
                sent
            };
            reply.send_response(Response::builder().status(200).body(Body::from(serde_json::to_vec(&body).unwrap())).unwrap());
            if writes.len() == 2 {
                break;
            }
        }
        (writes, held)
    };
    let observer = async {
        leading.wait_for(|l| *l).await.unwrap();
        let took = started.elapsed();
        drop(leading);
        took
    };
    let ((writes, _held), took) =
        tokio::time::timeout(Duration::from_secs(10), async { tokio::join!(server, observer) }).await.expect("in time");
    assert!(took < Duration::from_secs(2), "a released Lease is taken at once: {took:?}");
    let (method, uri, acquire) = &writes[0];
    assert_eq!(
        (method.as_str(), uri.split('?').next().unwrap()),
        ("PUT", "/apis/coordination.k8s.io/v1/namespaces/portcullis/leases/portcullis-controller")
    );
    assert!(uri.contains("fieldManager=portcullis-me"), "{uri}");
    assert_eq!(acquire["metadata"]["resourceVersion"], "41", "guarded by the version read");
    assert_eq!((acquire["spec"]["holderIdentity"].as_str(), acquire["spec"]["leaseTransitions"].as_i64()), (Some("me"), Some(8)));
    assert_eq!(acquire["spec"]["leaseDurationSeconds"], 15);
    // Nobody listens any more: released, at the version just written.
    let (method, _, release) = &writes[1];
    assert_eq!(method, "PUT");
    assert_eq!((release["metadata"]["resourceVersion"].as_str(), release["spec"]["holderIdentity"].as_str()), (Some("42"), None));
    tokio::time::timeout(Duration::from_secs(5), task).await.unwrap().unwrap();
}
