//! Heartbeats × published configs → status, as tables.

use std::collections::BTreeMap;

use super::*;
use crate::contract::heartbeat::{AuditCounts, JwksHealth};
use crate::policy::config::PolicyConfig;
use crate::testkit::compile_yaml;

const POLICIES: &str = r#"
name: orders
namespace: shop
spec:
  hosts: [api.shop.test]
  mode: Audit
  issuers:
    - { issuer: "https://id", audiences: [orders], algorithms: [RS256], jwks: { uri: "https://id/jwks" } }
    - { issuer: "https://partner", audiences: [orders], algorithms: [RS256], jwks: { uri: "https://partner/jwks" } }
  rules:
    - { name: read, match: { paths: [{ prefix: /orders }] } }
    - { name: write, match: { paths: [{ prefix: /pay }] }, mode: Enforce }
---
name: billing
namespace: shop
spec:
  hosts: [api.shop.test]
  rules:
    - { name: open, public: true, match: { paths: [{ prefix: /billing }] } }
"#;

fn config(generation: i64) -> GatewayConfig {
    let mut c = compile_yaml("default", POLICIES, &BTreeMap::new()).config;
    for p in &mut c.policies {
        let p = std::sync::Arc::make_mut(p);
        p.generation = Some(if p.name == "orders" { generation } else { 1 });
    }
    c.version = format!("v{generation}");
    c
}

fn t(s: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000 + s).unwrap()
}

fn replica(name: &str, version: Option<&str>) -> Heartbeat {
    Heartbeat { gateway: "default".into(), replica: name.into(), version: version.map(str::to_owned), ..Default::default() }
}

fn orders(c: &GatewayConfig) -> &PolicyConfig {
    c.policies.iter().find(|p| p.name == "orders").unwrap()
}

#[test]
fn enforced_needs_every_live_replica_on_a_version_that_holds_the_current_generation() {
    let mut history = History::default();
    history.record(&config(1));
    history.record(&config(2));
    type Case = (&'static str, &'static str, Option<Option<i64>>, Vec<Heartbeat>, &'static str, &'static str, (u32, u32));
    let cases: Vec<Case> = vec![
        (
            "both replicas on the newest config",
            "shop/orders",
            Some(Some(2)),
            vec![replica("a", Some("v2")), replica("b", Some("v2"))],
            "True",
            reasons::ENFORCED,
            (2, 2),
        ),
        (
            "one replica still on the previous config",
            "shop/orders",
            Some(Some(2)),
            vec![replica("a", Some("v2")), replica("b", Some("v1"))],
            "False",
            reasons::STALE,
            (2, 1),
        ),
        (
            "nobody has loaded it yet",
            "shop/orders",
            Some(Some(2)),
            vec![replica("a", Some("v1")), replica("b", None)],
            "False",
            reasons::PENDING,
            (2, 0),
        ),
        // Another policy's edit made v2; v1 holds billing at the same generation.
        (
            "an older config holding the same generation counts",
            "shop/billing",
            Some(Some(1)),
            vec![replica("a", Some("v2")), replica("b", Some("v1"))],
            "True",
            reasons::ENFORCED,
            (2, 2),
        ),
        (
            "a version the controller never published counts as stale",
            "shop/billing",
            Some(Some(1)),
            vec![replica("a", Some("v2")), replica("b", Some("v0"))],
            "False",
            reasons::STALE,
            (2, 1),
        ),
        ("no live replica", "shop/orders", Some(Some(2)), vec![], "False", reasons::NO_REPLICAS, (0, 0)),
        ("not in the config at all", "shop/orders", None, vec![replica("a", Some("v2"))], "False", reasons::NOT_PROGRAMMED, (1, 0)),
    ];
    for (what, policy, served, live, status, reason, (replicas, serving)) in cases {
        let (v, g) = enforced("default", policy, served, &live, &history);
        assert_eq!((v.status, v.reason), (status, reason), "{what}: {}", v.message);
        assert_eq!((g.replicas, g.serving), (replicas, serving), "{what}");
    }
    let (v, _) = enforced(
        "default",
        "shop/orders",
        Some(Some(2)),
        &[replica("a", Some("v2")), replica("b", Some("v1")), replica("c", Some("v1"))],
        &history,
    );
    assert_eq!(v.message, "2 of 3 replicas of gateway default are on an older version");
}

#[test]
fn history_forgets_old_versions_and_keeps_the_gateways_apart() {
    let mut history = History::default();
    for g in 0..40 {
        history.record(&config(g));
    }
    assert!(history.holds("default", "v39", "shop/orders", Some(39)));
    assert!(history.holds("default", "v8", "shop/orders", Some(8)));
    assert!(!history.holds("default", "v7", "shop/orders", Some(7)), "only the last 32 are kept");
    assert!(!history.holds("other", "v39", "shop/orders", Some(39)));
    assert!(!history.holds("default", "v39", "shop/orders", Some(38)));
}

fn jwks(uri: &str, ready: bool, keys: u32, since: i64) -> JwksHealth {
    JwksHealth { uri: uri.into(), ready, keys, last_error: (!ready).then(|| "HTTP 503".to_owned()), since: t(since) }
}

#[test]
fn an_issuer_failing_on_one_replica_only_is_failing_with_that_replicas_error() {
    let c = config(1);
    let mut a = replica("a", Some("v1"));
    let mut b = replica("b", Some("v1"));
    a.jwks = vec![jwks("https://id/jwks", true, 3, -100), jwks("https://partner/jwks", true, 1, -50)];
    b.jwks = vec![jwks("https://id/jwks", false, 3, -20), jwks("https://partner/jwks", true, 1, -40)];
    let (v, health) = issuers(Some(orders(&c)), &[a.clone(), b]);
    assert_eq!((v.status, v.reason), ("False", reasons::JWKS_FAILING));
    assert!(v.message.contains("https://id/jwks (HTTP 503)"), "{}", v.message);
    assert_eq!(health[0].jwks, "Failing");
    assert_eq!(
        (health[0].keys, health[0].last_error.as_deref(), health[0].since.as_ref().map(|s| s.0)),
        (3, Some("HTTP 503"), Some(t(-20)))
    );
    assert_eq!((health[1].jwks.as_str(), health[1].since.as_ref().map(|s| s.0)), ("Ready", Some(t(-40))));

    // Both ready on the one replica that reports: ready; nobody reports: unknown.
    let (v, _) = issuers(Some(orders(&c)), &[a]);
    assert_eq!((v.status, v.reason), ("True", reasons::JWKS_READY));
    let (v, health) = issuers(Some(orders(&c)), &[replica("c", Some("v1"))]);
    assert_eq!((v.status, health[0].jwks.as_str()), ("Unknown", "Unknown"));
    // A policy without remote key sets has nothing to fail.
    let billing = c.policies.iter().find(|p| p.name == "billing").unwrap();
    let (v, health) = issuers(Some(billing), &[]);
    assert_eq!((v.status, health.len()), ("True", 0));
}

#[test]
fn audit_counts_add_up_across_replicas_and_summarise_in_one_line() {
    let c = config(1);
    let counts = |allow, deny, reasons: &[(&str, u64)]| AuditCounts {
        policy: "shop/orders".into(),
        rule: "read".into(),
        would_allow: allow,
        would_deny: deny,
        reasons: reasons.iter().map(|(r, n)| ((*r).to_owned(), *n)).collect(),
    };
    let mut a = replica("a", Some("v1"));
    let mut b = replica("b", Some("v1"));
    a.audit = vec![counts(600, 2, &[("wrong_audience", 2)])];
    b.audit = vec![counts(397, 1, &[("expired", 1)]), AuditCounts { policy: "shop/other".into(), ..counts(5, 5, &[("expired", 5)]) }];
    let (rules, summary) = audit("shop/orders", Some(orders(&c)), &[a, b]);
    assert_eq!(rules.len(), 1, "only the audited rule (write is enforced)");
    assert_eq!((rules[0].would_allow, rules[0].would_deny), (997, 3));
    assert_eq!(rules[0].top_reasons[0], ReasonCount { reason: "wrong_audience".into(), count: 2 });
    assert_eq!(summary.as_deref(), Some("would deny 0.3% (wrong_audience)"));

    let (_, summary) = audit("shop/orders", Some(orders(&c)), &[replica("a", Some("v1"))]);
    assert_eq!(summary.as_deref(), Some("audit: no requests yet"));
    let billing = c.policies.iter().find(|p| p.name == "billing").unwrap();
    assert_eq!(audit("shop/billing", Some(billing), &[]), (Vec::new(), None), "nothing audited, no summary");
}

#[test]
fn percentages_never_round_to_all_or_nothing() {
    assert_eq!(percent(0, 10), "0%");
    assert_eq!(percent(1, 100_000), "<0.1%");
    assert_eq!(percent(99_999, 100_000), ">99.9%");
    assert_eq!(percent(3, 1000), "0.3%");
    assert_eq!(percent(1, 4), "25%");
    assert_eq!(percent(7, 7), "100%");
}

#[test]
fn recent_audit_counts_are_kept_unless_the_audited_rules_changed() {
    let rule = |name: &str, deny| RuleAudit { rule: name.into(), would_deny: deny, window_seconds: 600, ..Default::default() };
    let old = AuthPolicyStatus { audit: vec![rule("read", 1)], audit_summary: Some("would deny 1%".into()), ..Default::default() };
    let mut new = AuthPolicyStatus { audit: vec![rule("read", 5)], audit_summary: Some("would deny 5%".into()), ..Default::default() };
    keep_recent_audit(&mut new, Some(&old));
    assert_eq!((new.audit, new.audit_summary), (old.audit.clone(), old.audit_summary.clone()));
    // A rule switched to Audit: shown at once.
    let mut new = AuthPolicyStatus { audit: vec![rule("read", 5), rule("write", 0)], ..Default::default() };
    keep_recent_audit(&mut new, Some(&old));
    assert_eq!(new.audit.len(), 2);
    // Nothing counted yet: the first traffic shows at once.
    let zero = AuthPolicyStatus { audit: vec![rule("read", 0)], ..Default::default() };
    let mut new = AuthPolicyStatus { audit: vec![rule("read", 5)], ..Default::default() };
    keep_recent_audit(&mut new, Some(&zero));
    assert_eq!(new.audit[0].would_deny, 5);
}

proptest::proptest! {
    /// The history kept as changes answers as 32 full copies would: policies coming, going and
    /// changing generation, versions published again (a revert).
    #[test]
    fn history_as_changes_answers_as_full_copies(steps in proptest::collection::vec((0u8..6, 0i64..4, 0u8..12), 1..120)) {
        let base = config(1);
        let mut history = History::default();
        let mut model: std::collections::VecDeque<(String, std::collections::HashMap<String, Option<i64>>)> = Default::default();
        let mut current: BTreeMap<u8, i64> = BTreeMap::new();
        for (policy, generation, version) in steps {
            // Toggle the policy in or out, or change its generation.
            match current.get(&policy) {
                Some(g) if *g == generation => { current.remove(&policy); }
                _ => { current.insert(policy, generation); }
            }
            let mut c = base.clone();
            let template = c.policies[0].clone();
            c.policies = current.iter().map(|(p, g)| {
                let mut pc = (*template).clone();
                pc.name = format!("p{p}");
                pc.generation = Some(*g);
                std::sync::Arc::new(pc)
            }).collect();
            c.version = format!("v{version}");
            history.record(&c);
            if model.back().is_none_or(|(v, _)| *v != c.version) {
                model.retain(|(v, _)| *v != c.version);
                model.push_back((c.version.clone(), c.policies.iter().map(|p| (p.key(), p.generation)).collect()));
                while model.len() > 32 { model.pop_front(); }
            }
            for v in 0..12 {
                for p in 0..6u8 {
                    for g in 0..4 {
                        let (version, key) = (format!("v{v}"), format!("{}/p{p}", template.namespace));
                        let want = model.iter().find(|(mv, _)| *mv == version).is_some_and(|(_, m)| m.get(&key) == Some(&Some(g)));
                        proptest::prop_assert_eq!(history.holds("default", &version, &key, Some(g)), want, "{} {} {}", version, key, g);
                    }
                }
            }
        }
    }
}

#[test]
fn a_sign_in_provider_is_an_issuer_whose_discovery_the_replicas_report() {
    let c = config(1);
    let mut web = (*c.policies.iter().find(|p| p.name == "billing").unwrap().clone()).clone();
    web.sign_in = Some(crate::policy::config::SignInConfig {
        issuer: "https://id.example".into(),
        client_id: "web".into(),
        client_secret: None,
        userinfo: false,
        scopes: vec!["openid".into()],
        session_key: "shop/sessions".parse().unwrap(),
        session_lifetime_secs: 3600,
        callback_path: "/.portcullis/callback".into(),
        logout_path: "/.portcullis/logout".into(),
        post_logout_redirect: "/".into(),
        https: true,
        allowed_redirect_hosts: Vec::new(),
    });
    let discovery = "https://id.example/.well-known/openid-configuration";
    let mut a = replica("a", Some("v1"));
    a.jwks = vec![jwks(discovery, false, 0, -30)];
    let (v, health) = issuers(Some(&web), &[a.clone()]);
    assert_eq!((v.status, v.reason), ("False", reasons::JWKS_FAILING));
    assert_eq!((health[0].issuer.as_str(), health[0].uri.as_str(), health[0].jwks.as_str()), ("https://id.example", discovery, "Failing"));
    a.jwks = vec![jwks(discovery, true, 2, -5)];
    let (v, health) = issuers(Some(&web), &[a]);
    assert_eq!((v.status, health[0].keys), ("True", 2));
}
