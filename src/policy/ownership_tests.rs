//! Hosts and routes that are served stay served (SECURITY.md 10), through `compile` — pure:
//! redeploys, renames and ties in creation time, run as the controller runs them (each
//! compilation gets the last one's served policies and host claims).

use std::collections::{BTreeMap, HashMap};

use jiff::Timestamp;

use super::ownership::HostLedger;
use super::{Compiled, Outcome, PolicyConfig, PolicyInput, RejectReason, Tenancy, compile};
use crate::testkit::inputs_from_yaml;

/// Policies as a cluster holds them: namespace, name, creation second, rule paths (public when
/// `open`), on one host.
#[derive(Clone)]
struct P {
    ns: &'static str,
    name: &'static str,
    created: i64,
    host: &'static str,
    path: &'static str,
    open: bool,
}

fn owner(name: &'static str, created: i64) -> P {
    P { ns: "sq-own", name, created, host: "sq.test", path: "/x/1", open: false }
}

fn squatter(created: i64) -> P {
    P { ns: "sq-bad", name: "grab", created, host: "sq.test", path: "/x/1", open: true }
}

/// The controller's loop in miniature: what was served and held feeds the next compilation.
#[derive(Default)]
struct Gateway {
    served: HashMap<String, std::sync::Arc<PolicyConfig>>,
    held: HostLedger,
    settings: &'static str,
}

impl Gateway {
    fn compile(&mut self, policies: &[P]) -> Compiled {
        let inputs: Vec<PolicyInput> = policies
            .iter()
            .map(|p| {
                let rule = if p.open {
                    format!("{{ name: r, public: true, match: {{ paths: [{{ exact: \"{}\" }}] }} }}", p.path)
                } else {
                    format!(
                        "{{ name: r, match: {{ paths: [{{ exact: \"{}\" }}] }}, require: [{{ claim: scope, containsAll: [x] }}] }}",
                        p.path
                    )
                };
                let yaml = format!(
                    "name: {}\nnamespace: {}\nspec:\n  hosts: [{}]\n  issuers: [{{ issuer: https://id, audiences: [a], algorithms: [ES256], jwks: {{ uri: \"https://id/jwks\" }} }}]\n  rules: [{rule}]\n",
                    p.name, p.ns, p.host
                );
                let mut input = inputs_from_yaml(&yaml).remove(0);
                input.meta.created = Some(Timestamp::from_second(1_800_000_000 + p.created).unwrap());
                input.meta.generation = Some(1);
                input.last_good = self.served.get(&input.meta.key()).cloned();
                input
            })
            .collect();
        let settings = super::tenancy::parse_settings(&format!("default: {}", if self.settings.is_empty() { "{}" } else { self.settings }))
            .unwrap()
            .remove("default")
            .unwrap();
        let tenancy = Tenancy { settings, platform_namespace: Some("portcullis".into()), held: self.held.clone(), ..Tenancy::default() };
        let compiled = compile("default", &inputs, &BTreeMap::new(), &tenancy);
        self.served = compiled.config.policies_by_key();
        self.held = compiled.ledger.clone();
        compiled
    }
}

fn outcome<'a>(c: &'a Compiled, ns: &str, name: &str) -> &'a Outcome {
    &c.outcomes.iter().find(|o| o.namespace == ns && o.name == name).unwrap_or_else(|| panic!("no outcome for {ns}/{name}")).outcome
}

fn refused(c: &Compiled, ns: &str, name: &str, reason: RejectReason) -> String {
    match outcome(c, ns, name) {
        Outcome::Rejected { rejection, .. } if rejection.reason == reason => rejection.message(),
        other => panic!("{ns}/{name}: expected {reason:?}, got {other:?}"),
    }
}

/// Who answers `path` on `host`: the policy serving it, and whether it is public.
fn serving(c: &Compiled, host: &str, path: &str) -> Option<(String, bool)> {
    c.config
        .policies
        .iter()
        .filter(|p| p.hosts.iter().any(|h| h == host))
        .find_map(|p| p.rules.iter().find(|r| r.paths.iter().any(|m| m.exact.as_deref() == Some(path))).map(|r| (p.key(), r.public)))
}

#[test]
fn a_squatter_never_inherits_a_host_when_its_owner_redeploys_renames_or_reinstalls() {
    let mut gw = Gateway::default();
    // The owner serves; the squatter is refused (the reproduction, sq-own / sq-bad).
    let c = gw.compile(&[owner("p", 0), squatter(10)]);
    assert_eq!(outcome(&c, "sq-own", "p"), &Outcome::Accepted);
    refused(&c, "sq-bad", "grab", RejectReason::HostNotAllowed);
    // Delete: nothing serves /x/1 (403 no_route), and the squatter is still refused.
    let c = gw.compile(&[squatter(10)]);
    assert_eq!(serving(&c, "sq.test", "/x/1"), None);
    let why = refused(&c, "sq-bad", "grab", RejectReason::HostNotAllowed);
    assert!(why.contains("belongs to namespace sq-own (it claimed sq.test first and keeps the claim"), "{why}");
    // Re-apply, now newer than the squatter: the owner gets its host back.
    let c = gw.compile(&[owner("p", 20), squatter(10)]);
    assert_eq!(outcome(&c, "sq-own", "p"), &Outcome::Accepted);
    refused(&c, "sq-bad", "grab", RejectReason::HostNotAllowed);
    assert_eq!(serving(&c, "sq.test", "/x/1"), Some(("sq-own/p".into(), false)));
    // A rename in one step, and in two (delete first).
    let c = gw.compile(&[owner("p2", 30), squatter(10)]);
    assert_eq!(outcome(&c, "sq-own", "p2"), &Outcome::Accepted);
    gw.compile(&[squatter(10)]);
    let c = gw.compile(&[squatter(10), owner("p3", 40)]);
    assert_eq!(outcome(&c, "sq-own", "p3"), &Outcome::Accepted);
    refused(&c, "sq-bad", "grab", RejectReason::HostNotAllowed);
    // `helm uninstall` + install with a controller restart in between: the served config is
    // gone from memory, the held claims are read back.
    gw.compile(&[squatter(10)]);
    let mut restarted = Gateway { held: gw.held.clone(), ..Gateway::default() };
    let c = restarted.compile(&[squatter(10)]);
    refused(&c, "sq-bad", "grab", RejectReason::HostNotAllowed);
    let c = restarted.compile(&[squatter(10), owner("p", 50)]);
    assert_eq!(outcome(&c, "sq-own", "p"), &Outcome::Accepted);
    assert_eq!(serving(&c, "sq.test", "/x/1"), Some(("sq-own/p".into(), false)));
}

#[test]
fn a_released_claim_goes_to_the_next_policy_and_the_settings_still_share_hosts() {
    let mut gw = Gateway::default();
    gw.compile(&[owner("p", 0), squatter(10)]);
    gw.compile(&[squatter(10)]);
    // The platform team deletes the claim's line: the host is free for the next claimant.
    gw.held = HostLedger::parse(&gw.held.render().replace("sq.test sq-own\n", "")).0;
    let c = gw.compile(&[squatter(10)]);
    assert_eq!(outcome(&c, "sq-bad", "grab"), &Outcome::Accepted);
    assert_eq!(gw.held.render(), "sq.test sq-bad\n");
    // Settings win over claims both ways.
    let mut shared = Gateway {
        held: HostLedger::parse("sq.test sq-own\n").0,
        settings: "{ hosts: [{ pattern: sq.test, namespaces: [sq-bad] }] }",
        ..Gateway::default()
    };
    assert_eq!(outcome(&shared.compile(&[squatter(10)]), "sq-bad", "grab"), &Outcome::Accepted);
    let c = shared.compile(&[owner("p", 20), squatter(10)]);
    assert!(refused(&c, "sq-own", "p", RejectReason::HostNotAllowed).contains("to namespace(s) sq-bad only"));
}

#[test]
fn a_tie_in_creation_time_never_hands_over_a_host_or_route_that_is_served() {
    // The measurement: owner pcm-j-own/tie, squatter pcm-j-bad/tie-grab, both created in
    // the same second; the squatter's namespace sorts first. The owner was compiled (and served)
    // before the squatter appeared.
    let own = P { ns: "pcm-j-own", name: "tie", created: 0, host: "tie.test", path: "/x/1", open: false };
    let bad = P { ns: "pcm-j-bad", name: "tie-grab", created: 0, host: "tie.test", path: "/x/1", open: true };
    let mut gw = Gateway::default();
    gw.compile(std::slice::from_ref(&own));
    let c = gw.compile(&[own.clone(), bad.clone()]);
    assert_eq!(outcome(&c, "pcm-j-own", "tie"), &Outcome::Accepted);
    refused(&c, "pcm-j-bad", "tie-grab", RejectReason::HostNotAllowed);
    // Even with no held claim (the ledger lost), the one serving wins the tie.
    let mut forgetful = Gateway { served: gw.served.clone(), ..Gateway::default() };
    let c = forgetful.compile(&[own.clone(), bad.clone()]);
    assert_eq!(outcome(&c, "pcm-j-own", "tie"), &Outcome::Accepted);
    refused(&c, "pcm-j-bad", "tie-grab", RejectReason::HostNotAllowed);

    // Rules: two namespaces the settings share a host between, same second, same route.
    let settings = "{ hosts: [{ pattern: tie.test, namespaces: [pcm-j-own, pcm-j-bad] }] }";
    let mut gw = Gateway { settings, ..Gateway::default() };
    gw.compile(std::slice::from_ref(&own));
    let c = gw.compile(&[own.clone(), bad.clone()]);
    let why = refused(&c, "pcm-j-bad", "tie-grab", RejectReason::Conflicted);
    assert!(why.contains("which was created in the same second and already serves it"), "{why}");
    assert_eq!(serving(&c, "tie.test", "/x/1"), Some(("pcm-j-own/tie".into(), false)));
    // The same, inside one namespace (a second policy of the same team).
    let twin = P { ns: "pcm-j-own", name: "a-twin", ..bad.clone() };
    let c = gw.compile(&[own.clone(), twin]);
    refused(&c, "pcm-j-own", "a-twin", RejectReason::Conflicted);
    // Between newcomers of the same second, namespace/name decides, and says so.
    let mut fresh = Gateway { settings, ..Gateway::default() };
    let c = fresh.compile(&[own, bad]);
    let why = refused(&c, "pcm-j-own", "tie", RejectReason::Conflicted);
    assert!(why.contains("was created in the same second and sorts first by namespace/name"), "{why}");
}
