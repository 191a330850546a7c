//! Binding: a validated attached policy and the route rules it applies to ([`Applied`]) become
//! the rules the authorizer matches — each with the hosts of its route and the paths and methods
//! of the route rule's matches, narrowed by the policy rule's own `match` where it has one.
//!
//! A narrowing that cannot be expressed exactly (a template only partly inside a route's prefix)
//! is refused, never widened or shrunk: the authorizer must select exactly the requests the
//! gateway routes there.

use crate::api::{HttpMethod, PathMatch};
use crate::policy::config::{PolicyConfig, RuleConfig};
use crate::policy::host::HostPattern;
use crate::policy::path::{PathPattern, TemplateSegment, prefix_matches};
use crate::policy::validate::compile_path;

use super::Applied;

/// `cfg` (validated; rules without `match` have no paths) applied to `applied`. Rules are kept
/// in the policy's order, one per (policy rule, route rule host set); hosts of the policy are
/// the union of its rules' (no host on some route: every host).
pub fn bind(cfg: &PolicyConfig, applied: &[Applied]) -> Result<PolicyConfig, Vec<String>> {
    let mut problems = Vec::new();
    let mut rules: Vec<RuleConfig> = Vec::new();
    for rule in &cfg.rules {
        let mut fits = false;
        for a in applied {
            let hosts = host_strings(&a.hosts);
            for m in &a.matches {
                let target = match compile_path(&m.path) {
                    Ok(p) => p,
                    Err(e) => {
                        problems.push(format!("{}: path {e}", where_(a)));
                        continue;
                    }
                };
                let target_methods = match methods(&m.methods) {
                    Ok(ms) => ms,
                    Err(e) => {
                        problems.push(format!("{}: {e}", where_(a)));
                        continue;
                    }
                };
                let Some(methods) = intersect_methods(&rule.methods, &target_methods) else { continue };
                let paths: Vec<PathMatch> = if rule.paths.is_empty() {
                    vec![m.path.clone()]
                } else {
                    let mut out = Vec::new();
                    for p in &rule.paths {
                        match intersect(p, &target) {
                            Ok(Some(x)) => out.push(x),
                            Ok(None) => {}
                            Err(e) => problems.push(format!("rules[{}]: {e} ({})", rule.name, where_(a))),
                        }
                    }
                    out
                };
                if paths.is_empty() {
                    continue;
                }
                fits = true;
                // Same rule, hosts, methods and conditions: one entry with all its paths.
                match rules.iter_mut().find(|r| r.name == rule.name && r.hosts == hosts && r.methods == methods && r.when == m.when) {
                    Some(r) => paths.into_iter().for_each(|p| {
                        if !r.paths.contains(&p) {
                            r.paths.push(p)
                        }
                    }),
                    None => rules.push(RuleConfig { hosts: hosts.clone(), paths, methods, when: m.when.clone(), ..rule.clone() }),
                }
            }
        }
        if !fits && !applied.is_empty() && !rule.paths.is_empty() {
            problems.push(format!("rules[{}]: its match lies outside every path and method its targets route", rule.name));
        }
    }
    if !problems.is_empty() {
        problems.dedup();
        return Err(problems);
    }
    let mut hosts: Vec<String> = Vec::new();
    let any = rules.iter().any(|r| r.hosts.is_empty());
    if !any {
        for h in rules.iter().flat_map(|r| &r.hosts) {
            if !hosts.contains(h) {
                hosts.push(h.clone());
            }
        }
        hosts.sort();
    }
    // A rule whose hosts are the policy's needs none of its own.
    for r in &mut rules {
        if r.hosts == hosts {
            r.hosts.clear();
        }
    }
    Ok(PolicyConfig { hosts, rules, ..cfg.clone() })
}

fn where_(a: &Applied) -> String {
    format!("route {}/{} {}", a.route.0, a.route.1, a.rule.as_deref().unwrap_or("(unnamed rule)"))
}

/// Hosts as config strings; empty when any of them is every host.
fn host_strings(hosts: &[HostPattern]) -> Vec<String> {
    if hosts.is_empty() || hosts.contains(&HostPattern::Any) {
        return Vec::new();
    }
    let mut out: Vec<String> = hosts.iter().map(ToString::to_string).collect();
    out.sort();
    out.dedup();
    out
}

fn methods(names: &[String]) -> Result<Vec<HttpMethod>, String> {
    names.iter().map(|n| HttpMethod::from_name(n).ok_or_else(|| format!("method {n:?} is not one Portcullis matches"))).collect()
}

/// Methods both allow (empty: any); `None` when they share none.
fn intersect_methods(a: &[HttpMethod], b: &[HttpMethod]) -> Option<Vec<HttpMethod>> {
    let out: Vec<HttpMethod> = match (a.is_empty(), b.is_empty()) {
        (true, _) => b.to_vec(),
        (_, true) => a.to_vec(),
        _ => a.iter().copied().filter(|m| b.contains(m)).collect(),
    };
    ((a.is_empty() && b.is_empty()) || !out.is_empty()).then_some(out)
}

/// The requests both a rule's path and a route's path select, as one path match: `None` when
/// they are disjoint, an error when the overlap has no exact form.
pub fn intersect(rule: &PathMatch, route: &PathPattern) -> Result<Option<PathMatch>, String> {
    let rule_pattern = compile_path(rule)?;
    let exact = |p: &str| PathMatch { exact: Some(p.to_owned()), ..Default::default() };
    Ok(match (&rule_pattern, route) {
        (_, PathPattern::Exact(e)) => rule_pattern.matches(e).then(|| exact(e)),
        (PathPattern::Exact(e), PathPattern::Prefix(p)) => prefix_matches(p, e).then(|| rule.clone()),
        (PathPattern::Prefix(q), PathPattern::Prefix(p)) => {
            if prefix_matches(p, q) {
                Some(rule.clone())
            } else if prefix_matches(q, p) {
                Some(PathMatch { prefix: Some(p.clone()), ..Default::default() })
            } else {
                None
            }
        }
        (PathPattern::Template(t), PathPattern::Prefix(p)) => {
            // The literal segments before the first parameter: every path the template matches
            // starts with them.
            let literal: String = t
                .segments
                .iter()
                .map_while(|s| match s {
                    TemplateSegment::Literal(l) => Some(format!("/{l}")),
                    TemplateSegment::Param(_) => None,
                })
                .collect();
            let literal = if literal.is_empty() { "/".to_owned() } else { literal };
            if prefix_matches(p, &literal) {
                Some(rule.clone())
            } else if !template_may_reach(t, p) {
                None
            } else {
                return Err(format!("template {} is only partly inside the route's prefix {p}; narrow it to paths under {p}", t.source));
            }
        }
        (_, PathPattern::Template(_)) => return Err("a route path cannot be a template".into()),
    })
}

/// Whether some path the template matches lies under `prefix`.
fn template_may_reach(t: &crate::policy::path::Template, prefix: &str) -> bool {
    if prefix == "/" {
        return true;
    }
    let wanted: Vec<&str> = prefix[1..].split('/').collect();
    for (i, w) in wanted.iter().enumerate() {
        match t.segments.get(i) {
            Some(TemplateSegment::Literal(l)) if l != w => return false,
            Some(_) => {}
            None => return t.tail,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::super::RouteMatch;
    use super::*;
    use crate::testkit;

    fn route_matches(paths: &[(&str, &str)]) -> Vec<RouteMatch> {
        paths
            .iter()
            .map(|(kind, value)| RouteMatch {
                path: match *kind {
                    "Exact" => PathMatch { exact: Some((*value).to_owned()), ..Default::default() },
                    _ => PathMatch { prefix: Some((*value).to_owned()), ..Default::default() },
                },
                ..Default::default()
            })
            .collect()
    }

    fn pm(kind: &str, v: &str) -> PathMatch {
        match kind {
            "exact" => PathMatch { exact: Some(v.into()), ..Default::default() },
            "prefix" => PathMatch { prefix: Some(v.into()), ..Default::default() },
            _ => PathMatch { template: Some(v.into()), ..Default::default() },
        }
    }

    fn show(m: &PathMatch) -> String {
        match (&m.exact, &m.prefix, &m.template) {
            (Some(e), _, _) => format!("exact {e}"),
            (_, Some(p), _) => format!("prefix {p}"),
            (_, _, Some(t)) => format!("template {t}"),
            _ => unreachable!(),
        }
    }

    #[test]
    fn a_rule_narrows_a_route_segment_wise_and_never_widens_it() {
        let prefix = |p: &str| PathPattern::prefix(p).unwrap();
        let exact = |p: &str| PathPattern::exact(p).unwrap();
        type Case = (PathMatch, PathPattern, Result<Option<&'static str>, &'static str>);
        let cases: Vec<Case> = vec![
            // Inside the route's prefix: the rule as written.
            (pm("prefix", "/orders/admin"), prefix("/orders"), Ok(Some("prefix /orders/admin"))),
            (pm("exact", "/orders/1"), prefix("/orders"), Ok(Some("exact /orders/1"))),
            (pm("template", "/orders/{id}"), prefix("/orders"), Ok(Some("template /orders/{id}"))),
            // Wider than the route: the route.
            (pm("prefix", "/"), prefix("/orders"), Ok(Some("prefix /orders"))),
            (pm("prefix", "/orders"), exact("/orders/1"), Ok(Some("exact /orders/1"))),
            // Segment boundaries: /orders is not a prefix of /ordersX, nor the other way.
            (pm("prefix", "/ordersX"), prefix("/orders"), Ok(None)),
            (pm("prefix", "/orders"), prefix("/ordersX"), Ok(None)),
            (pm("exact", "/ordersX"), prefix("/orders"), Ok(None)),
            (pm("template", "/ordersX/{id}"), prefix("/orders"), Ok(None)),
            (pm("exact", "/orders"), exact("/orders/"), Ok(None)),
            // A template only partly inside: no exact form.
            (pm("template", "/{tenant}/orders"), prefix("/a"), Err("only partly inside")),
            (pm("template", "/orders/{id}"), prefix("/orders/1"), Err("only partly inside")),
            (pm("template", "/orders/{id}"), prefix("/orders/1/items"), Ok(None)),
        ];
        for (rule, route, want) in cases {
            let got = intersect(&rule, &route).map(|o| o.map(|m| show(&m)));
            match (&got, &want) {
                (Ok(g), Ok(w)) => assert_eq!(g.as_deref(), *w, "{} ∩ {route}", show(&rule)),
                (Err(e), Err(w)) => assert!(e.contains(w), "{e}"),
                _ => panic!("{} ∩ {route}: got {got:?}, want {want:?}", show(&rule)),
            }
        }
    }

    fn applied(route: &str, rule: &str, hosts: &[&str], paths: &[(&str, &str)], methods: &[&str]) -> Applied {
        let mut matches = route_matches(paths);
        matches.iter_mut().for_each(|m| m.methods = methods.iter().map(|s| s.to_string()).collect());
        Applied {
            gateway: ("infra".into(), "web".into()),
            route: ("shop".into(), route.into()),
            rule: Some(rule.into()),
            hosts: hosts.iter().map(|h| if *h == "*" { HostPattern::Any } else { HostPattern::parse(h).unwrap() }).collect(),
            matches,
        }
    }

    fn policy(rules: &str) -> PolicyConfig {
        let yaml = format!(
            "name: p\nnamespace: shop\nspec:\n  targetRefs: [{{ group: gateway.networking.k8s.io, kind: HTTPRoute, name: orders }}]\n  rules: {rules}\n"
        );
        let input = &testkit::inputs_from_yaml(&yaml)[0];
        crate::policy::validate(&input.meta, &input.spec, &Default::default()).unwrap()
    }

    #[test]
    fn a_rule_without_match_takes_each_route_rule_with_its_own_hosts() {
        let cfg = policy("[{ name: all, public: true }]");
        let bound = bind(
            &cfg,
            &[
                applied("orders", "read", &["api.shop.test"], &[("PathPrefix", "/orders")], &["GET"]),
                applied("admin", "all", &["admin.shop.test"], &[("Exact", "/admin"), ("PathPrefix", "/admin/")], &[]),
            ],
        )
        .unwrap();
        assert_eq!(bound.hosts, ["admin.shop.test", "api.shop.test"]);
        let rules: Vec<_> =
            bound.rules.iter().map(|r| (r.hosts.clone(), r.paths.iter().map(show).collect::<Vec<_>>(), r.methods.clone())).collect();
        assert_eq!(
            rules,
            [
                (vec!["api.shop.test".to_owned()], vec!["prefix /orders".to_owned()], vec![HttpMethod::GET]),
                (vec!["admin.shop.test".to_owned()], vec!["exact /admin".to_owned(), "prefix /admin/".to_owned()], vec![]),
            ]
        );
        // One host everywhere: the policy's, none per rule.
        let one = bind(&cfg, &[applied("orders", "read", &["api.shop.test"], &[("PathPrefix", "/orders")], &[])]).unwrap();
        assert_eq!((one.hosts.as_slice(), one.rules[0].hosts.as_slice()), (["api.shop.test".to_owned()].as_slice(), [].as_slice()));
        // A route on a listener without hostname, without hostnames itself: every host.
        let any = bind(&cfg, &[applied("orders", "read", &["*"], &[("PathPrefix", "/orders")], &[])]).unwrap();
        assert!(any.hosts.is_empty() && any.rules[0].hosts.is_empty());
    }

    #[test]
    fn rules_with_match_narrow_paths_and_methods_and_a_rule_outside_every_target_is_refused() {
        let cfg = policy(
            "[{ name: read, match: { paths: [{ template: '/orders/{id}' }], methods: [GET] }, public: true }, { name: rest, match: { paths: [{ prefix: / }] }, public: true }]",
        );
        let route = applied("orders", "r", &["api.shop.test"], &[("PathPrefix", "/orders")], &[]);
        let bound = bind(&cfg, std::slice::from_ref(&route)).unwrap();
        let rules: Vec<_> = bound.rules.iter().map(|r| (r.name.as_str(), show(&r.paths[0]), r.methods.clone())).collect();
        assert_eq!(rules, [("read", "template /orders/{id}".into(), vec![HttpMethod::GET]), ("rest", "prefix /orders".into(), vec![])]);
        // The route only takes POST: the GET rule has nothing there, the other takes POST.
        let post = applied("orders", "r", &["api.shop.test"], &[("PathPrefix", "/orders")], &["POST"]);
        let err = bind(&cfg, std::slice::from_ref(&post)).unwrap_err();
        assert!(err.iter().any(|e| e.contains("rules[read]") && e.contains("outside every path")), "{err:?}");
        let only_rest = policy("[{ name: rest, match: { paths: [{ prefix: / }] }, public: true }]");
        assert_eq!(bind(&only_rest, &[post]).unwrap().rules[0].methods, [HttpMethod::POST]);
        // A method Portcullis does not match is refused, not dropped.
        let odd = applied("orders", "r", &["api.shop.test"], &[("PathPrefix", "/orders")], &["PURGE"]);
        assert!(bind(&only_rest, &[odd]).unwrap_err()[0].contains("PURGE"));
    }
}
