//! Policy attachment (GEP-713): which policy applies to which rule of which route, through which
//! Gateway, with Gateway API's precedence.

use super::{HostPattern, RouteMatch, route_hostnames};

/// The Gateway API kinds an AuthPolicy attaches to (`spec.targetRefs[].kind`).
pub use crate::api::TargetRefKind as TargetKind;

/// One entry of an AuthPolicy's `targetRefs` (GEP-713): in the policy's own namespace; the
/// section is an HTTPRoute rule's or a Gateway listener's name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TargetRef {
    pub kind: TargetKind,
    pub name: String,
    pub section: Option<String>,
}

/// A Gateway, as far as attachment reads it.
#[derive(Debug, Clone, Default)]
pub struct Gateway {
    pub namespace: String,
    pub name: String,
    /// Listener name → hostname (`None`: any).
    pub listeners: Vec<(String, Option<String>)>,
}

/// A route, its rules' matches already in Portcullis terms, and the listeners its gateways
/// accepted it on (from the route's `status.parents`: the gateway decides attachment —
/// `allowedRoutes`, hostnames, its own rules — and Portcullis follows, never guesses).
#[derive(Debug, Clone)]
pub struct Route {
    pub kind: TargetKind,
    pub namespace: String,
    pub name: String,
    pub hostnames: Vec<String>,
    /// Gateway (namespace, name) and listener names, from the accepted parents.
    pub parents: Vec<((String, String), Vec<String>)>,
    pub rules: Vec<RouteRule>,
}

#[derive(Debug, Clone)]
pub struct RouteRule {
    pub name: Option<String>,
    /// The rule's matches, or why they cannot be reproduced.
    pub matches: Result<Vec<RouteMatch>, String>,
}

/// An AuthPolicy as attachment sees it.
#[derive(Debug, Clone)]
pub struct Attaching {
    pub namespace: String,
    pub name: String,
    pub created: Option<jiff::Timestamp>,
    pub targets: Vec<TargetRef>,
}

impl Attaching {
    fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// Where a policy applies: one rule of one route on one gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub gateway: (String, String),
    pub route: (String, String),
    pub rule: Option<String>,
    pub hosts: Vec<HostPattern>,
    pub matches: Vec<RouteMatch>,
}

/// What became of one target of one policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attachment {
    /// Applies on these route rules (possibly fewer than the target has: see `overridden`).
    Accepted {
        applied: Vec<Applied>,
        overridden: usize,
    },
    TargetNotFound(String),
    /// Another policy of the same specificity is older (or sorts first): it applies instead.
    Conflicted(String),
    /// A more specific policy applies on every rule this one targets.
    Overridden(String),
    /// The target's matches cannot be reproduced exactly.
    Invalid(String),
}

/// How specific an attachment is: a rule section beats its route, a route beats its Gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Level {
    Gateway,
    Route,
    Section,
}

/// Resolves every policy's `targetRefs` against the Gateways and routes: per rule of every
/// route, the most specific policy applies (section, then route, then the route's Gateway as a
/// default); between equals the oldest, then namespace/name. Each policy learns per target where
/// it applies, or why not.
pub fn attach(policies: &[Attaching], gateways: &[Gateway], routes: &[Route]) -> Vec<(String, TargetRef, Attachment)> {
    // Every (policy, target) that names an existing object, with the rules it would cover.
    struct Claim {
        policy: usize,
        target: TargetRef,
        level: Level,
    }
    let mut out: Vec<(String, TargetRef, Attachment)> = Vec::new();
    let mut claims: Vec<Claim> = Vec::new();
    let route_index: std::collections::HashMap<(TargetKind, &str, &str), &Route> =
        routes.iter().map(|r| ((r.kind, r.namespace.as_str(), r.name.as_str()), r)).collect();
    for (i, p) in policies.iter().enumerate() {
        for t in &p.targets {
            let missing = |what: String| (p.key(), t.clone(), Attachment::TargetNotFound(what));
            match t.kind {
                TargetKind::Gateway => {
                    let Some(g) = gateways.iter().find(|g| g.namespace == p.namespace && g.name == t.name) else {
                        out.push(missing(format!("Gateway {}/{} does not exist", p.namespace, t.name)));
                        continue;
                    };
                    if let Some(section) = &t.section
                        && !g.listeners.iter().any(|(l, _)| l == section)
                    {
                        out.push(missing(format!("Gateway {}/{} has no listener {section:?}", p.namespace, t.name)));
                        continue;
                    }
                    claims.push(Claim { policy: i, target: t.clone(), level: Level::Gateway });
                }
                TargetKind::HttpRoute | TargetKind::GrpcRoute => {
                    let Some(r) = route_index.get(&(t.kind, p.namespace.as_str(), t.name.as_str())) else {
                        out.push(missing(format!("{} {}/{} does not exist", t.kind.as_str(), p.namespace, t.name)));
                        continue;
                    };
                    if let Some(section) = &t.section
                        && !r.rules.iter().any(|rule| rule.name.as_ref() == Some(section))
                    {
                        out.push(missing(format!("{} {}/{} has no rule named {section:?}", t.kind.as_str(), p.namespace, t.name)));
                        continue;
                    }
                    if r.parents.is_empty() {
                        out.push(missing(format!(
                            "{} {}/{} is not accepted by any Gateway (its status.parents say so)",
                            t.kind.as_str(),
                            p.namespace,
                            t.name
                        )));
                        continue;
                    }
                    let level = if t.section.is_some() { Level::Section } else { Level::Route };
                    claims.push(Claim { policy: i, target: t.clone(), level });
                }
            }
        }
    }
    // Per rule of every route on every gateway listener it attaches to: who applies.
    let order = |c: &Claim| {
        let p = &policies[c.policy];
        (std::cmp::Reverse(c.level), p.created.is_none(), p.created, p.namespace.clone(), p.name.clone())
    };
    // Claims by what they name: a route's rules are covered by the claims on the route and on
    // its Gateways, never by a scan of all of them.
    let mut by_target: std::collections::HashMap<(TargetKind, &str, &str), Vec<usize>> = Default::default();
    for (i, c) in claims.iter().enumerate() {
        by_target.entry((c.target.kind, policies[c.policy].namespace.as_str(), c.target.name.as_str())).or_default().push(i);
    }
    let mut won: std::collections::HashMap<usize, Vec<Applied>> = Default::default();
    let mut lost_to: std::collections::HashMap<usize, (Level, String, usize)> = Default::default();
    let mut invalid: std::collections::HashMap<usize, String> = Default::default();
    for r in routes {
        for ((gw_ns, gw_name), listeners) in &r.parents {
            let Some(g) = gateways.iter().find(|g| g.namespace == *gw_ns && g.name == *gw_name) else { continue };
            for (rule_index, rule) in r.rules.iter().enumerate() {
                let on_route = by_target.get(&(r.kind, r.namespace.as_str(), r.name.as_str())).into_iter().flatten();
                let on_gateway = by_target.get(&(TargetKind::Gateway, g.namespace.as_str(), g.name.as_str())).into_iter().flatten();
                let covering: Vec<(usize, &Claim)> = on_route
                    .chain(on_gateway)
                    .map(|&i| (i, &claims[i]))
                    .filter(|(_, c)| {
                        let p = &policies[c.policy];
                        match c.target.kind {
                            TargetKind::Gateway => {
                                g.namespace == p.namespace
                                    && g.name == c.target.name
                                    && c.target.section.as_ref().is_none_or(|s| listeners.contains(s))
                            }
                            kind => {
                                kind == r.kind
                                    && r.namespace == p.namespace
                                    && r.name == c.target.name
                                    && c.target.section.as_ref().is_none_or(|s| rule.name.as_ref() == Some(s))
                            }
                        }
                    })
                    .collect();
                let Some((winner, claim)) = covering.iter().min_by_key(|(_, c)| order(c)).copied() else { continue };
                let hosts = listeners
                    .iter()
                    .filter_map(|l| g.listeners.iter().find(|(name, _)| name == l))
                    .filter_map(|(_, hostname)| route_hostnames(hostname.as_deref(), &r.hostnames).ok().flatten())
                    .flatten()
                    .fold(Vec::new(), |mut acc: Vec<HostPattern>, h| {
                        if !acc.contains(&h) {
                            acc.push(h);
                        }
                        acc
                    });
                match &rule.matches {
                    Ok(matches) => won.entry(winner).or_default().push(Applied {
                        gateway: (g.namespace.clone(), g.name.clone()),
                        route: (r.namespace.clone(), r.name.clone()),
                        rule: rule.name.clone().or_else(|| Some(format!("rule {rule_index}"))),
                        hosts,
                        matches: matches.clone(),
                    }),
                    Err(why) => {
                        invalid.entry(winner).or_insert_with(|| {
                            format!(
                                "{} {}/{} rule {}: {why}",
                                r.kind.as_str(),
                                r.namespace,
                                r.name,
                                rule.name.as_deref().unwrap_or("(unnamed)")
                            )
                        });
                    }
                }
                for (loser, c) in covering.iter().filter(|(i, _)| *i != winner) {
                    let entry = lost_to.entry(*loser).or_insert((claim.level, policies[claim.policy].key(), 0));
                    entry.2 += 1;
                    if claim.level > c.level {
                        entry.0 = entry.0.max(claim.level);
                    }
                }
            }
        }
    }
    for (i, c) in claims.iter().enumerate() {
        let policy = policies[c.policy].key();
        let attachment = if let Some(why) = invalid.get(&i) {
            Attachment::Invalid(why.clone())
        } else if let Some(applied) = won.remove(&i) {
            Attachment::Accepted { applied, overridden: lost_to.get(&i).map_or(0, |l| l.2) }
        } else if let Some((level, by, _)) = lost_to.get(&i) {
            if *level > c.level {
                Attachment::Overridden(format!("policy {by} is attached more specifically and applies instead"))
            } else {
                Attachment::Conflicted(format!("policy {by} targets the same and is older; it applies instead"))
            }
        } else {
            // Attached, with no route on it yet (a Gateway without routes): it applies to the
            // routes that attach later.
            Attachment::Accepted { applied: vec![], overridden: 0 }
        };
        out.push((policy, c.target.clone(), attachment));
    }
    out.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::PathMatch;

    fn prefix(p: &str) -> RouteMatch {
        RouteMatch { path: PathMatch { prefix: Some(p.into()), ..Default::default() }, ..Default::default() }
    }

    fn world() -> (Vec<Gateway>, Vec<Route>) {
        let gw = Gateway {
            namespace: "shop".into(),
            name: "web".into(),
            listeners: vec![("https".into(), Some("*.shop.test".into())), ("admin".into(), Some("admin.shop.test".into()))],
        };
        let route = Route {
            kind: TargetKind::HttpRoute,
            namespace: "shop".into(),
            name: "orders".into(),
            hostnames: vec!["api.shop.test".into(), "other.test".into()],
            parents: vec![(("shop".into(), "web".into()), vec!["https".into()])],
            rules: vec![
                RouteRule { name: Some("read".into()), matches: Ok(vec![prefix("/orders")]) },
                RouteRule { name: Some("pay".into()), matches: Ok(vec![prefix("/pay")]) },
            ],
        };
        let search = Route {
            name: "search".into(),
            hostnames: vec![],
            rules: vec![RouteRule { name: None, matches: Ok(vec![prefix("/search")]) }],
            ..route.clone()
        };
        (vec![gw], vec![route, search])
    }

    fn policy(name: &str, created: i64, targets: &[(TargetKind, &str, Option<&str>)]) -> Attaching {
        Attaching {
            namespace: "shop".into(),
            name: name.into(),
            created: Some(jiff::Timestamp::from_second(1_800_000_000 + created).unwrap()),
            targets: targets
                .iter()
                .map(|(kind, name, section)| TargetRef { kind: *kind, name: name.to_string(), section: section.map(str::to_owned) })
                .collect(),
        }
    }

    fn outcome<'a>(all: &'a [(String, TargetRef, Attachment)], policy: &str) -> &'a Attachment {
        &all.iter().find(|(p, _, _)| p == &format!("shop/{policy}")).unwrap().2
    }

    fn rules(a: &Attachment) -> Vec<String> {
        match a {
            Attachment::Accepted { applied, .. } => {
                applied.iter().map(|x| format!("{}:{}", x.route.1, x.rule.as_deref().unwrap_or(""))).collect()
            }
            other => panic!("not accepted: {other:?}"),
        }
    }

    #[test]
    fn a_section_beats_its_route_and_a_route_beats_its_gateway() {
        let (gateways, routes) = world();
        use TargetKind::*;
        let all = attach(
            &[
                policy("gw-default", 0, &[(Gateway, "web", None)]),
                policy("orders", 5, &[(HttpRoute, "orders", None)]),
                policy("pay", 9, &[(HttpRoute, "orders", Some("pay"))]),
            ],
            &gateways,
            &routes,
        );
        assert_eq!(rules(outcome(&all, "pay")), ["orders:pay"], "the newest, but the most specific");
        assert_eq!(rules(outcome(&all, "orders")), ["orders:read"]);
        assert!(matches!(outcome(&all, "orders"), Attachment::Accepted { overridden: 1, .. }));
        // The Gateway's policy is the default where no route has one.
        assert_eq!(rules(outcome(&all, "gw-default")), ["search:rule 0"]);
        // A Gateway without routes: attached, applying nowhere yet.
        let alone = attach(&[policy("gw-default", 0, &[(Gateway, "web", None)])], &gateways, &[]);
        assert_eq!(outcome(&alone, "gw-default"), &Attachment::Accepted { applied: vec![], overridden: 0 });
        // Without the search route, everything it targets is overridden.
        let only_orders = attach(
            &[policy("gw-default", 0, &[(Gateway, "web", None)]), policy("orders", 5, &[(HttpRoute, "orders", None)])],
            &gateways,
            &routes[..1],
        );
        assert!(matches!(outcome(&only_orders, "gw-default"), Attachment::Overridden(m) if m.contains("shop/orders")), "{only_orders:?}");
    }

    #[test]
    fn between_equals_the_oldest_applies_then_the_name_and_the_other_is_told() {
        let (gateways, routes) = world();
        let t = [(TargetKind::HttpRoute, "orders", None)];
        let all = attach(&[policy("young", 7, &t), policy("old", 3, &t)], &gateways, &routes);
        assert_eq!(rules(outcome(&all, "old")), ["orders:read", "orders:pay"]);
        assert!(matches!(outcome(&all, "young"), Attachment::Conflicted(m) if m.contains("shop/old")));
        // Created in the same second: the name decides, whatever the input order.
        for order in [["b", "a"], ["a", "b"]] {
            let all = attach(&order.map(|n| policy(n, 3, &t)), &gateways, &routes);
            assert!(matches!(outcome(&all, "a"), Attachment::Accepted { .. }));
            assert!(matches!(outcome(&all, "b"), Attachment::Conflicted(_)));
        }
    }

    #[test]
    fn hosts_are_the_listener_and_route_intersection() {
        let (gateways, routes) = world();
        let all = attach(&[policy("orders", 0, &[(TargetKind::HttpRoute, "orders", None)])], &gateways, &routes);
        let Attachment::Accepted { applied, .. } = outcome(&all, "orders") else { panic!() };
        let hosts: Vec<String> = applied[0].hosts.iter().map(ToString::to_string).collect();
        assert_eq!(hosts, ["api.shop.test"], "other.test is outside the listener's *.shop.test");
        // A route without hostnames takes the listener's.
        let all = attach(&[policy("s", 0, &[(TargetKind::HttpRoute, "search", None)])], &gateways, &routes);
        let Attachment::Accepted { applied, .. } = outcome(&all, "s") else { panic!() };
        assert_eq!(applied[0].hosts.iter().map(ToString::to_string).collect::<Vec<_>>(), ["*.shop.test"]);
    }

    #[test]
    fn missing_targets_unaccepted_routes_and_unreproducible_matches_are_refused_with_the_reason() {
        let (gateways, mut routes) = world();
        use TargetKind::*;
        let all = attach(
            &[
                policy("a", 0, &[(HttpRoute, "nope", None)]),
                policy("b", 0, &[(HttpRoute, "orders", Some("nope"))]),
                policy("c", 0, &[(Gateway, "web", Some("nope"))]),
                policy("d", 0, &[(GrpcRoute, "orders", None)]),
            ],
            &gateways,
            &routes,
        );
        for (p, why) in [
            ("a", "HTTPRoute shop/nope does not exist"),
            ("b", "no rule named \"nope\""),
            ("c", "no listener \"nope\""),
            ("d", "GRPCRoute shop/orders does not exist"),
        ] {
            assert!(matches!(outcome(&all, p), Attachment::TargetNotFound(m) if m.contains(why)), "{p}: {:?}", outcome(&all, p));
        }
        routes[1].parents.clear();
        let all = attach(&[policy("s", 0, &[(HttpRoute, "search", None)])], &gateways, &routes);
        assert!(matches!(outcome(&all, "s"), Attachment::TargetNotFound(m) if m.contains("not accepted by any Gateway")));
        routes[0].rules[1].matches = Err("path match RegularExpression \"/p.*\": …".into());
        let all = attach(&[policy("o", 0, &[(HttpRoute, "orders", None)])], &gateways, &routes);
        assert!(matches!(outcome(&all, "o"), Attachment::Invalid(m) if m.contains("rule pay") && m.contains("RegularExpression")));
    }
}
