//! Who holds which host (SECURITY.md, invariant 10) — pure.
//!
//! A host no settings rule governs belongs to the namespace that claimed it first, and the claim
//! is kept in a ledger that outlives the policies that made it. A team that deletes and
//! re-applies its policies (a redeploy, a rename, `helm uninstall` + install) finds its hosts
//! still its own, and a namespace lying in wait with a policy for the same host stays refused.
//! Only the platform team releases a claim (it edits the ledger) or shares a host (settings).
//!
//! ```text
//!  ledger (held claims) ───┐
//!                          ├──▶ HostIndex ── overlaps(pattern)? ──▶ another namespace holds it
//!  accepted policies ──────┘     (label trie, right to left)
//!        └────────────────▶ new ledger = held ∪ every accepted policy's hosts
//! ```

use std::collections::{BTreeMap, HashMap};

use super::host::HostPattern;

/// A host pattern and the namespace holding it; `policy` names the accepted policy that claimed
/// it in this compilation (`None`: held in the ledger).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostClaim {
    pub pattern: HostPattern,
    pub namespace: String,
    pub policy: Option<String>,
}

impl HostClaim {
    /// Why `host` is refused to another namespace, for status messages.
    pub fn refusal(&self, host: &str) -> String {
        let what = if self.pattern == HostPattern::Any { "every host (it has no hosts)".to_owned() } else { self.pattern.to_string() };
        let how = match &self.policy {
            Some(p) => format!("AuthPolicy {p} claimed {what} first"),
            None => format!("it claimed {what} first and keeps the claim when its policies are deleted or redeployed"),
        };
        format!(
            "host {host} belongs to namespace {} ({how}); a platform team can share it in the gateway settings' hosts or release the claim",
            self.namespace
        )
    }
}

/// The durable claims of one gateway: host pattern → the namespace holding it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostLedger(pub BTreeMap<HostPattern, String>);

impl HostLedger {
    /// Records a claim; a pattern keeps the namespace that holds it already.
    pub fn hold(&mut self, pattern: HostPattern, namespace: &str) {
        self.0.entry(pattern).or_insert_with(|| namespace.to_owned());
    }

    pub fn claims(&self) -> impl Iterator<Item = HostClaim> + '_ {
        self.0.iter().map(|(pattern, namespace)| HostClaim { pattern: pattern.clone(), namespace: namespace.clone(), policy: None })
    }

    /// One claim per line, `<pattern> <namespace>`, sorted; `*` is every host (a policy without
    /// hosts). Plain text, so that a platform team can read and edit it with `kubectl edit`.
    pub fn render(&self) -> String {
        self.0.iter().map(|(p, ns)| format!("{p} {ns}\n")).collect()
    }

    /// Parses [`render`](Self::render)'s format; blank lines and `#` comments are skipped. A line
    /// that is not a claim is reported and skipped (an edit that breaks a line releases it).
    pub fn parse(text: &str) -> (Self, Vec<String>) {
        let mut ledger = Self::default();
        let mut problems = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut parts = line.split_whitespace();
            let parsed = match (parts.next(), parts.next(), parts.next()) {
                (Some(p), Some(ns), None) if is_namespace(ns) => {
                    let pattern = if p == "*" { Ok(HostPattern::Any) } else { HostPattern::parse(p) };
                    pattern.map(|p| (p, ns))
                }
                _ => Err("expected `<host pattern> <namespace>`".to_owned()),
            };
            match parsed {
                Ok((pattern, ns)) => ledger.hold(pattern, ns),
                Err(e) => problems.push(format!("line {}: {e}", i + 1)),
            }
        }
        (ledger, problems)
    }
}

fn is_namespace(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Up to two claims of different namespaces: enough to answer "does anyone but N hold one?".
#[derive(Debug, Default, Clone, Copy)]
struct Sample([Option<u32>; 2]);

impl Sample {
    fn add(&mut self, id: u32, claims: &[HostClaim]) {
        match self.0 {
            [None, _] => self.0[0] = Some(id),
            [Some(first), None] if claims[first as usize].namespace != claims[id as usize].namespace => self.0[1] = Some(id),
            _ => {}
        }
    }

    fn other(&self, namespace: &str, claims: &[HostClaim]) -> Option<u32> {
        self.0.into_iter().flatten().find(|id| claims[*id as usize].namespace != namespace)
    }
}

/// A DNS label of a host pattern, right to left: `api.shop.example` is `example` → `shop` → `api`.
#[derive(Debug, Default)]
struct Node {
    children: HashMap<Box<str>, Node>,
    /// Claims of exactly this name.
    exact: Sample,
    /// Claims of `*.` this name.
    wild: Sample,
    /// Every claim strictly below this name.
    below: Sample,
}

/// Host claims indexed for the overlap question each policy asks, in time proportional to the
/// labels of its host (a list scan made compiling 10,000 policies quadratic).
#[derive(Debug, Default)]
pub struct HostIndex {
    claims: Vec<HostClaim>,
    any: Sample,
    root: Node,
}

fn labels(pattern: &HostPattern) -> Option<(std::iter::Rev<std::str::Split<'_, char>>, bool)> {
    match pattern {
        HostPattern::Exact(h) => Some((h.split('.').rev(), false)),
        HostPattern::Wildcard(s) => Some((s.trim_start_matches('.').split('.').rev(), true)),
        HostPattern::Any => None,
    }
}

impl HostIndex {
    pub fn insert(&mut self, claim: HostClaim) {
        let id = self.claims.len() as u32;
        let pattern = claim.pattern.clone();
        self.claims.push(claim);
        let claims = &self.claims;
        let Some((labels, wild)) = labels(&pattern) else {
            self.any.add(id, claims);
            return;
        };
        let mut node = &mut self.root;
        for label in labels {
            node.below.add(id, claims);
            node = node.children.entry(label.into()).or_default();
        }
        if wild { node.wild.add(id, claims) } else { node.exact.add(id, claims) }
    }

    /// A claim of another namespace than `namespace` on a host that `pattern` also matches.
    pub fn held_by_other(&self, pattern: &HostPattern, namespace: &str) -> Option<&HostClaim> {
        let found = self.any.other(namespace, &self.claims).or_else(|| match labels(pattern) {
            None => self.root.below.other(namespace, &self.claims),
            Some((labels, wild)) => {
                let labels: Vec<&str> = labels.collect();
                let mut node = &self.root;
                let mut found = None;
                for (i, label) in labels.iter().enumerate() {
                    let Some(child) = node.children.get(*label) else { break };
                    node = child;
                    let last = i + 1 == labels.len();
                    // `*.suffix` at or above a wildcard overlaps it; above an exact name, matches it.
                    if !last || wild {
                        found = node.wild.other(namespace, &self.claims);
                    }
                    if found.is_none() && last {
                        found = if wild { node.below.other(namespace, &self.claims) } else { node.exact.other(namespace, &self.claims) };
                    }
                    if found.is_some() {
                        break;
                    }
                }
                found
            }
        });
        found.map(|id| &self.claims[id as usize])
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::policy::tenancy::overlaps;

    fn claim(pattern: &str, ns: &str) -> HostClaim {
        let pattern = if pattern == "*" { HostPattern::Any } else { HostPattern::parse(pattern).unwrap() };
        HostClaim { pattern, namespace: ns.into(), policy: None }
    }

    #[test]
    fn the_ledger_reads_back_what_it_writes_and_reports_broken_lines() {
        let mut ledger = HostLedger::default();
        ledger.hold(HostPattern::parse("api.shop.example").unwrap(), "shop");
        ledger.hold(HostPattern::parse("*.blog.example").unwrap(), "blog");
        ledger.hold(HostPattern::Any, "edge");
        ledger.hold(HostPattern::parse("api.shop.example").unwrap(), "squatter");
        let text = ledger.render();
        assert_eq!(text, "api.shop.example shop\n*.blog.example blog\n* edge\n");
        assert_eq!(HostLedger::parse(&text), (ledger.clone(), Vec::new()));
        let (edited, problems) = HostLedger::parse(
            "# released api.old.example\n\n* edge\nAPI.x.example shop\napi.y.example\napi.z.example a b\n*.blog.example blog\n",
        );
        assert_eq!(edited.0.len(), 2);
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems[0].starts_with("line 4: host \"API.x.example\""), "{problems:?}");
        assert!(problems[1].starts_with("line 5: expected"), "{problems:?}");
    }

    #[test]
    fn overlap_queries_follow_the_host_patterns() {
        let mut index = HostIndex::default();
        for (p, ns) in [("api.a.example", "a"), ("*.w.example", "w"), ("deep.x.y.example", "x")] {
            index.insert(claim(p, ns));
        }
        // (pattern, asking namespace) → the namespace holding an overlapping host, if another.
        let table: &[(&str, &str, Option<&str>)] = &[
            ("api.a.example", "b", Some("a")),
            ("api.a.example", "a", None),
            ("other.a.example", "b", None),
            ("a.example", "b", None),
            ("*.a.example", "b", Some("a")),
            ("*.example", "b", Some("a")),
            ("x.w.example", "b", Some("w")),
            ("w.example", "b", None),
            ("*.w.example", "b", Some("w")),
            ("*.q.w.example", "b", Some("w")),
            ("*.y.example", "b", Some("x")),
            ("y.example", "b", None),
            ("*", "b", Some("a")),
            ("*", "a", Some("w")),
            ("unrelated.test", "b", None),
        ];
        for (p, ns, want) in table {
            let pattern = claim(p, ns).pattern;
            let got = index.held_by_other(&pattern, ns).map(|c| c.namespace.as_str());
            assert_eq!(got, *want, "{p} asked by {ns}");
        }
        index.insert(claim("*", "edge"));
        assert_eq!(index.held_by_other(&claim("unrelated.test", "b").pattern, "b").unwrap().namespace, "edge");
    }

    fn pattern_strategy() -> impl Strategy<Value = HostPattern> {
        let label = prop::sample::select(vec!["a", "b", "api", "x"]);
        (prop::collection::vec(label, 1..4), 0..5u8).prop_map(|(labels, kind)| {
            let name = format!("{}.example", labels.join("."));
            match kind {
                0 => HostPattern::Any,
                1 | 2 => HostPattern::parse(&format!("*.{name}")).unwrap(),
                _ => HostPattern::parse(&name).unwrap(),
            }
        })
    }

    proptest! {
        /// The index answers exactly what comparing with every claim answers.
        #[test]
        fn the_index_equals_a_scan(
            held in prop::collection::vec((pattern_strategy(), 0..3usize), 0..24),
            asked in prop::collection::vec((pattern_strategy(), 0..3usize), 1..24),
        ) {
            let ns = ["a", "b", "c"];
            let mut index = HostIndex::default();
            let mut all = Vec::new();
            for (p, n) in held {
                let c = HostClaim { pattern: p, namespace: ns[n].into(), policy: None };
                all.push(c.clone());
                index.insert(c);
            }
            for (p, n) in asked {
                let scan = all.iter().any(|c| c.namespace != ns[n] && overlaps(&c.pattern, &p));
                let found = index.held_by_other(&p, ns[n]);
                prop_assert_eq!(found.is_some(), scan, "{} asked by {}", p, ns[n]);
                if let Some(c) = found {
                    prop_assert!(c.namespace != ns[n] && overlaps(&c.pattern, &p));
                }
            }
        }
    }
}
