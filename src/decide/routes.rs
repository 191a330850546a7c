//! The route table: host groups, each with exact, prefix and template indexes.
//!
//! Precedence is a total order (see [`precedence`]):
//! host (exact name > longer wildcard suffix > any host), then within a host group
//! exact path > longer literal > prefix before template at equal length > a method match >
//! more header conditions > more query parameter conditions (Gateway API's order) > older policy
//! (creation time) > namespace/name > rule order > path order. Routes of different policies with
//! the same pattern never share a method unless their conditions tell them apart (validation and
//! conflict detection guarantee it).

use std::cmp::{Ordering, Reverse};
use std::collections::HashMap;

use foldhash::fast::RandomState;

use crate::policy::GatewayConfig;
use crate::policy::config::RequestCondition;
use crate::policy::host::HostPattern;
use crate::policy::path::{PathPattern, PatternKind, prefix_keys};
use crate::policy::validate::{compile_path, method_mask};

#[derive(Debug, Clone)]
pub struct RouteEntry {
    pub pattern: PathPattern,
    pub literal_len: usize,
    pub methods: u16,
    pub policy: u32,
    pub rule: u32,
    pub path_index: u32,
    /// The policy's place among all policies by creation time, then namespace/name: the
    /// tie-breaker between equally specific routes, as a number (40,000 routes each holding
    /// their policy's names cost megabytes, and comparing them made the sort slow).
    pub age_rank: u32,
    /// The route's header and query parameter conditions: an index into the table's, or
    /// [`NO_CONDITIONS`].
    pub when: u32,
    /// Gateway API's tie-breakers after the path, higher first: a method match, the number of
    /// header conditions, the number of query parameter conditions.
    pub specificity: (bool, u8, u8),
}

pub const NO_CONDITIONS: u32 = u32::MAX;

/// Orders two routes of the same host group; `Less` wins.
pub fn precedence(a: &RouteEntry, b: &RouteEntry) -> Ordering {
    let key = |r: &RouteEntry| {
        (
            r.pattern.kind() != PatternKind::Exact,
            Reverse(r.literal_len),
            r.pattern.kind(),
            Reverse(r.specificity),
            r.age_rank,
            r.rule,
            r.path_index,
        )
    };
    key(a).cmp(&key(b))
}

/// Each policy's rank by creation time, then namespace/name.
fn age_ranks(config: &GatewayConfig) -> Vec<u32> {
    let mut order: Vec<usize> = (0..config.policies.len()).collect();
    order.sort_by(|&a, &b| {
        let (a, b) = (&config.policies[a], &config.policies[b]);
        (a.created, &a.namespace, &a.name).cmp(&(b.created, &b.namespace, &b.name))
    });
    let mut ranks = vec![0; order.len()];
    for (rank, i) in order.into_iter().enumerate() {
        ranks[i] = rank as u32;
    }
    ranks
}

#[derive(Default, Debug)]
struct PathTable {
    exact: HashMap<Box<str>, Vec<u32>, RandomState>,
    prefix: HashMap<Box<str>, Vec<u32>, RandomState>,
    /// Template routes in precedence order.
    templates: Vec<u32>,
    /// The templates by segment, holding positions in `templates`: a lookup walks the path's
    /// segments instead of trying every template.
    trie: TemplateNode,
}

/// A segment trie over templates. A path segment follows the literal child of that name and,
/// when not empty, the parameter child; `ends` match when the path ends at the node, `tails`
/// (templates ending in `{**}`) whatever follows.
#[derive(Default, Debug)]
struct TemplateNode {
    /// Literal children, sorted by segment (a map per node cost ~10 MB for 10,000 templates).
    literal: Vec<(Box<str>, TemplateNode)>,
    param: Option<Box<TemplateNode>>,
    ends: Vec<u32>,
    tails: Vec<u32>,
}

impl TemplateNode {
    fn insert(&mut self, t: &crate::policy::path::Template, rank: u32) {
        use crate::policy::path::TemplateSegment;
        let mut node = self;
        for seg in &t.segments {
            node = match seg {
                TemplateSegment::Literal(l) => {
                    let at = match node.literal.binary_search_by(|(k, _)| k.as_ref().cmp(l.as_str())) {
                        Ok(at) => at,
                        Err(at) => {
                            node.literal.insert(at, (l.as_str().into(), TemplateNode::default()));
                            at
                        }
                    };
                    &mut node.literal[at].1
                }
                TemplateSegment::Param(_) => node.param.get_or_insert_with(Default::default),
            };
        }
        if t.tail { node.tails.push(rank) } else { node.ends.push(rank) }
    }

    /// The lowest rank among templates matching the rest of a path (`parts[at..]`) that
    /// `fits`; `best` is the lowest found so far, which nothing here can beat when lower.
    fn best(&self, parts: &[&str], at: usize, fits: &impl Fn(u32) -> bool, best: &mut Option<u32>) {
        let mut consider = |ranks: &[u32]| {
            for &r in ranks {
                if best.is_none_or(|b| r < b) && fits(r) {
                    *best = Some(r);
                }
            }
        };
        consider(&self.tails);
        let Some(part) = parts.get(at) else {
            consider(&self.ends);
            return;
        };
        if let Ok(i) = self.literal.binary_search_by(|(k, _)| k.as_ref().cmp(part)) {
            self.literal[i].1.best(parts, at + 1, fits, best);
        }
        if let Some(child) = &self.param
            && !part.is_empty()
        {
            child.best(parts, at + 1, fits, best);
        }
    }
}

impl PathTable {
    fn insert(&mut self, id: u32, entry: &RouteEntry) {
        match &entry.pattern {
            PathPattern::Exact(p) => self.exact.entry(p.as_str().into()).or_default().push(id),
            PathPattern::Prefix(p) => self.prefix.entry(p.as_str().into()).or_default().push(id),
            PathPattern::Template(_) => self.templates.push(id),
        }
    }

    fn sort(&mut self, entries: &[RouteEntry]) {
        let by = |a: &u32, b: &u32| precedence(&entries[*a as usize], &entries[*b as usize]);
        self.exact.values_mut().for_each(|v| v.sort_by(by));
        self.prefix.values_mut().for_each(|v| v.sort_by(by));
        self.templates.sort_by(by);
        for (rank, id) in self.templates.iter().enumerate() {
            if let PathPattern::Template(t) = &entries[*id as usize].pattern {
                self.trie.insert(t, rank as u32);
            }
        }
    }

    fn lookup(&self, entries: &[RouteEntry], path: &str, fits_id: &impl Fn(u32) -> bool) -> Option<u32> {
        let fits = |id: &&u32| fits_id(**id);
        if let Some(id) = self.exact.get(path).and_then(|ids| ids.iter().find(fits)) {
            return Some(*id);
        }
        // The best template (templates are ranked by precedence, so by literal length first)
        // beats a prefix whose literal is shorter; a prefix wins at equal length.
        let template = if self.templates.is_empty() {
            None
        } else {
            let parts: Vec<&str> = path[1..].split('/').collect();
            let mut best = None;
            let fits_rank = |rank: u32| fits_id(self.templates[rank as usize]);
            self.trie.best(&parts, 0, &fits_rank, &mut best);
            best.map(|rank| self.templates[rank as usize])
        };
        let template_len = template.map(|t| entries[t as usize].literal_len);
        for key in prefix_keys(path) {
            if template_len.is_some_and(|len| len > key.len()) {
                return template;
            }
            if let Some(id) = self.prefix.get(key).and_then(|ids| ids.iter().find(fits)) {
                return Some(*id);
            }
        }
        template
    }

    fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.prefix.is_empty() && self.templates.is_empty()
    }
}

#[derive(Default, Debug)]
pub struct RouteTable {
    entries: Vec<RouteEntry>,
    /// Distinct condition sets of the routes that have them.
    conditions: Vec<Box<[RequestCondition]>>,
    exact_hosts: HashMap<Box<str>, PathTable, RandomState>,
    /// Keyed by suffix with its leading dot (`.example.com`).
    wildcard_hosts: HashMap<Box<str>, PathTable, RandomState>,
    any_host: PathTable,
}

impl RouteTable {
    /// Builds the table; `config` has passed validation, so every pattern compiles.
    pub fn build(config: &GatewayConfig) -> Result<Self, String> {
        let mut table = RouteTable::default();
        // Each distinct condition set once, by value.
        let mut interned: HashMap<&[RequestCondition], u32, RandomState> = HashMap::default();
        let ranks = age_ranks(config);
        for (pi, policy) in config.policies.iter().enumerate() {
            for (ri, rule) in policy.rules.iter().enumerate() {
                let hosts = match policy.rule_hosts(rule) {
                    [] => vec![HostPattern::Any],
                    hosts => hosts.iter().map(|h| HostPattern::parse(h)).collect::<Result<_, _>>()?,
                };
                let methods = method_mask(&rule.methods);
                let when = match rule.when.as_slice() {
                    [] => NO_CONDITIONS,
                    when => *interned.entry(when).or_insert_with(|| {
                        table.conditions.push(when.into());
                        (table.conditions.len() - 1) as u32
                    }),
                };
                let headers = rule.when.iter().filter(|c| c.is_header()).count();
                let count = |n: usize| {
                    u8::try_from(n).map_err(|_| format!("{}/{} rule {}: too many conditions", policy.namespace, policy.name, rule.name))
                };
                let specificity = (methods != u16::MAX, count(headers)?, count(rule.when.len() - headers)?);
                for (xi, pm) in rule.paths.iter().enumerate() {
                    let pattern = compile_path(pm).map_err(|e| format!("{}/{} rule {}: {e}", policy.namespace, policy.name, rule.name))?;
                    let entry = RouteEntry {
                        literal_len: pattern.literal_len(),
                        pattern,
                        methods,
                        policy: pi as u32,
                        rule: ri as u32,
                        path_index: xi as u32,
                        age_rank: ranks[pi],
                        when,
                        specificity,
                    };
                    for host in &hosts {
                        let id = table.entries.len() as u32;
                        let group = match host {
                            HostPattern::Exact(h) => table.exact_hosts.entry(h.as_str().into()).or_default(),
                            HostPattern::Wildcard(s) => table.wildcard_hosts.entry(s.as_str().into()).or_default(),
                            HostPattern::Any => &mut table.any_host,
                        };
                        group.insert(id, &entry);
                        table.entries.push(entry.clone());
                    }
                }
            }
        }
        let entries = std::mem::take(&mut table.entries);
        table.exact_hosts.values_mut().chain(table.wildcard_hosts.values_mut()).for_each(|g| g.sort(&entries));
        table.any_host.sort(&entries);
        table.entries = entries;
        Ok(table)
    }

    /// The route for a normalised host and path, if any; `when` says whether the request meets
    /// a route's conditions.
    pub fn lookup(&self, host: &str, path: &str, method: u16, when: &impl Fn(&[RequestCondition]) -> bool) -> Option<&RouteEntry> {
        let fits = |id: u32| {
            let e = &self.entries[id as usize];
            e.methods & method != 0 && (e.when == NO_CONDITIONS || when(&self.conditions[e.when as usize]))
        };
        let groups = self
            .exact_hosts
            .get(host)
            .into_iter()
            .chain(host.match_indices('.').filter_map(|(i, _)| self.wildcard_hosts.get(&host[i..])))
            .chain((!self.any_host.is_empty()).then_some(&self.any_host));
        for group in groups {
            if let Some(id) = group.lookup(&self.entries, path, &fits) {
                return Some(&self.entries[id as usize]);
            }
        }
        None
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{HttpMethod, PathMatch, TokenForwarding};
    use crate::policy::config::{ForwardConfig, PolicyConfig, RuleConfig};
    use crate::policy::validate::default_token_sources;
    use proptest::prelude::*;

    fn path_match() -> impl Strategy<Value = PathMatch> {
        let seg = prop_oneof![Just("a"), Just("b"), Just("ab")];
        let segs = proptest::collection::vec(seg, 0..3).prop_map(|s| format!("/{}", s.join("/")));
        (segs, 0u8..4).prop_map(|(p, kind)| {
            let mut m = PathMatch { exact: None, prefix: None, template: None };
            match kind {
                0 => m.exact = Some(p),
                1 => m.prefix = Some(p),
                2 => m.template = Some(format!("{}/{{x}}", p.trim_end_matches('/'))),
                _ => m.template = Some(format!("{}/{{**}}", p.trim_end_matches('/'))),
            }
            m
        })
    }

    fn policy(i: usize) -> impl Strategy<Value = PolicyConfig> {
        let host = prop_oneof![Just(None), Just(Some("api.x.io")), Just(Some("*.x.io")), Just(Some("*.io"))];
        let rule = (
            proptest::collection::vec(path_match(), 1..3),
            proptest::collection::vec(prop_oneof![Just(HttpMethod::GET), Just(HttpMethod::POST)], 0..2),
            prop_oneof![4 => Just(vec![]), 1 => Just(vec![x(1)]), 1 => Just(vec![x(2)]), 1 => Just(vec![v(1)]), 1 => Just(vec![x(1), v(1)])],
        );
        (host, proptest::collection::vec(rule, 1..4), 0i64..3).prop_map(move |(host, rules, created)| PolicyConfig {
            namespace: "ns".into(),
            name: format!("p{i}"),
            generation: None,
            created: Some(jiff::Timestamp::from_second(1_700_000_000 + created).unwrap()),
            hosts: host.into_iter().map(str::to_owned).collect(),
            issuers: Vec::new(),
            token_sources: default_token_sources(),
            rules: rules
                .into_iter()
                .enumerate()
                .map(|(r, (paths, methods, when))| RuleConfig {
                    name: format!("r{r}"),
                    hosts: Vec::new(),
                    paths,
                    methods,
                    when,
                    public: true,
                    optional: false,
                    require: Vec::new(),
                    any_of: Vec::new(),
                    service_accounts: Vec::new(),
                    forward: ForwardConfig { token: TokenForwarding::Original, ..Default::default() },
                    audit: false,
                })
                .collect(),
            cors_preflight: false,
            sign_in: None,
        })
    }

    fn x(n: u8) -> RequestCondition {
        RequestCondition::Header { name: "x".into(), value: n.to_string() }
    }

    fn v(n: u8) -> RequestCondition {
        RequestCondition::Query { name: "v".into(), value: n.to_string() }
    }

    /// What a request carries: header `x` and query parameter `v`, each absent or a value.
    type Facts = (Option<u8>, Option<u8>);

    fn facts() -> impl Strategy<Value = Facts> {
        (prop_oneof![Just(None), Just(Some(1)), Just(Some(2))], prop_oneof![Just(None), Just(Some(1))])
    }

    fn holds(facts: Facts) -> impl Fn(&[RequestCondition]) -> bool {
        move |when| {
            when.iter().all(|c| match c {
                RequestCondition::Header { value, .. } => facts.0.map(|n| n.to_string()).as_ref() == Some(value),
                RequestCondition::Query { value, .. } => facts.1.map(|n| n.to_string()).as_ref() == Some(value),
            })
        }
    }

    fn config() -> impl Strategy<Value = GatewayConfig> {
        (policy(0), policy(1), policy(2))
            .prop_map(|(a, b, c)| GatewayConfig::new("default", vec![a.into(), b.into(), c.into()], Vec::new()))
    }

    fn request_path() -> impl Strategy<Value = String> {
        proptest::collection::vec(prop_oneof![Just("a"), Just("b"), Just("ab"), Just("c"), Just("")], 0..4)
            .prop_map(|s| format!("/{}", s.join("/")))
            .prop_filter_map("normalised", |p| crate::policy::path::normalize(&p).ok())
    }

    /// The host patterns each route was indexed under.
    fn route_hosts(t: &RouteTable) -> Vec<Vec<HostPattern>> {
        let mut hosts = vec![Vec::new(); t.entries.len()];
        let ids =
            |g: &PathTable| -> Vec<u32> { g.exact.values().chain(g.prefix.values()).flatten().chain(&g.templates).copied().collect() };
        for (k, g) in t.exact_hosts.iter().chain(t.wildcard_hosts.iter()) {
            let h = if k.starts_with('.') { HostPattern::Wildcard(k.to_string()) } else { HostPattern::Exact(k.to_string()) };
            ids(g).into_iter().for_each(|id| hosts[id as usize].push(h.clone()));
        }
        ids(&t.any_host).into_iter().for_each(|id| hosts[id as usize].push(HostPattern::Any));
        hosts
    }

    /// The same answer by brute force: host groups in order, routes in precedence order.
    fn reference<'t>(t: &'t RouteTable, host: &str, path: &str, method: u16, facts: Facts) -> Option<&'t RouteEntry> {
        reference_with(t, &route_hosts(t), host, path, method, facts)
    }

    fn reference_with<'t>(
        t: &'t RouteTable,
        hosts: &[Vec<HostPattern>],
        host: &str,
        path: &str,
        method: u16,
        facts: Facts,
    ) -> Option<&'t RouteEntry> {
        let holds = holds(facts);
        let rank = |h: &HostPattern| match h {
            HostPattern::Exact(_) => (0, 0),
            HostPattern::Wildcard(s) => (1, usize::MAX - s.len()),
            HostPattern::Any => (2, 0),
        };
        let mut candidates: Vec<((i32, usize), &RouteEntry)> = t
            .entries
            .iter()
            .zip(hosts)
            .flat_map(|(e, hs)| hs.iter().filter(|h| h.matches(host)).map(move |h| (rank(h), e)))
            .filter(|(_, e)| e.methods & method != 0 && e.pattern.matches(path))
            .filter(|(_, e)| e.when == NO_CONDITIONS || holds(&t.conditions[e.when as usize]))
            .collect();
        candidates.sort_by(|(ra, a), (rb, b)| ra.cmp(rb).then_with(|| precedence(a, b)));
        candidates.first().map(|(_, e)| *e)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        #[test]
        fn indexed_lookup_agrees_with_brute_force(
            config in config(),
            path in request_path(),
            host in prop_oneof![Just("api.x.io"), Just("b.x.io"), Just("c.io"), Just("other.test")],
            post in any::<bool>(),
            facts in facts(),
        ) {
            let table = RouteTable::build(&config).unwrap();
            let method = if post { 1 << (HttpMethod::POST as u16) } else { 1 << (HttpMethod::GET as u16) };
            let got = table.lookup(host, &path, method, &holds(facts)).map(|e| (e.policy, e.rule, e.path_index));
            let want = reference(&table, host, &path, method, facts).map(|e| (e.policy, e.rule, e.path_index));
            prop_assert_eq!(got, want);
        }

        #[test]
        fn precedence_is_a_total_order(config in config()) {
            let table = RouteTable::build(&config).unwrap();
            let es = &table.entries;
            for a in es {
                prop_assert_eq!(precedence(a, a), Ordering::Equal);
                for b in es {
                    prop_assert_eq!(precedence(a, b), precedence(b, a).reverse());
                    let same_route = (a.policy, a.rule, a.path_index) == (b.policy, b.rule, b.path_index);
                    prop_assert_eq!(precedence(a, b) == Ordering::Equal, same_route);
                    for c in es {
                        if precedence(a, b) != Ordering::Greater && precedence(b, c) != Ordering::Greater {
                            prop_assert_ne!(precedence(a, c), Ordering::Greater);
                        }
                    }
                }
            }
        }

        #[test]
        fn the_order_of_policies_in_the_input_does_not_matter(config in config(), path in request_path(), facts in facts()) {
            let mut reversed = config.clone();
            reversed.policies.reverse();
            let (a, b) = (RouteTable::build(&config).unwrap(), RouteTable::build(&reversed).unwrap());
            let get = 1 << (HttpMethod::GET as u16);
            for host in ["api.x.io", "b.x.io", "c.io"] {
                let name = |t: &RouteTable, c: &GatewayConfig| t.lookup(host, &path, get, &holds(facts)).map(|e| (c.policies[e.policy as usize].name.clone(), e.rule, e.path_index));
                prop_assert_eq!(name(&a, &config), name(&b, &reversed));
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        /// Hundreds of routes over a small alphabet, so that many exact, prefix and template
        /// routes overlap on every path.
        #[test]
        fn lookup_agrees_with_brute_force_on_large_random_route_sets(
            policies in (0..120).map(policy).collect::<Vec<_>>(),
            paths in proptest::collection::vec(request_path(), 30),
            facts in facts(),
        ) {
            let config = GatewayConfig::new("default", policies.into_iter().map(std::sync::Arc::new).collect(), Vec::new());
            let table = RouteTable::build(&config).unwrap();
            let hosts = route_hosts(&table);
            for path in &paths {
                for host in ["api.x.io", "b.x.io", "other.test"] {
                    for method in [1 << (HttpMethod::GET as u16), 1 << (HttpMethod::POST as u16)] {
                        let got = table.lookup(host, path, method, &holds(facts)).map(|e| (e.policy, e.rule, e.path_index));
                        let want = reference_with(&table, &hosts, host, path, method, facts).map(|e| (e.policy, e.rule, e.path_index));
                        prop_assert_eq!(got, want, "{} {} among {} routes", host, path, table.len());
                    }
                }
            }
        }
    }
}
