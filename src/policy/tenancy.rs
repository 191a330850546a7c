//! Who may do what on a shared gateway (SECURITY.md, invariants 7 and 10) — pure.
//!
//! ```text
//!  policy in namespace N ─┬─ hosts: each host must be allowed to N ── HostNotAllowed
//!                         ├─ forward.issue: the SigningKey must be a minting key ── SigningKeyNotAllowed
//!                         └─ issuers[].jwks.signingKeyRef in another namespace: granted ── KeyNotFound
//! ```
//! Hosts. A settings rule (`hosts[]`: a pattern and the namespaces that may use it) governs every
//! host pattern that overlaps it — in either direction, since a request for a host falls through
//! from exact to wildcard to host-less routes. A host no rule governs belongs to the namespace
//! that claimed it first, for good ([`ownership`](super::ownership): the claim outlives its
//! policies); other namespaces are refused. With `unlistedHosts: Refuse` such hosts are refused
//! to every tenant instead. A policy without `hosts` matches (and so claims) every host, and is
//! allowed only to namespaces the settings list in `anyHostNamespaces`. The platform namespace
//! (the controller's) may do all of this.
//!
//! Minting. A gateway's JWKS is what services trust, so only SigningKeys the settings name in
//! `mintingKeys` (or keys in the platform namespace) may mint for it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::config::{KeySource, PolicyConfig};
use super::host::HostPattern;
use super::ownership::{HostClaim, HostIndex, HostLedger};
use super::{KeyRef, RejectReason, Rejection};

/// The platform team's word on one gateway.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GatewaySettings {
    /// Host patterns and the namespaces that may attach rules to them.
    #[serde(default)]
    pub hosts: Vec<HostGrant>,
    /// Namespaces whose policies may omit `hosts` (and so match every host); `*` for all.
    #[serde(default)]
    pub any_host_namespaces: Vec<String>,
    /// SigningKeys (`namespace/name`) that may mint internal tokens for this gateway.
    #[serde(default)]
    pub minting_keys: Vec<String>,
    /// Hosts no `hosts` rule governs: `FirstClaim` (default) gives each to the namespace that
    /// claims it first, for good; `Refuse` gives them to nobody but the platform namespace.
    #[serde(default)]
    pub unlisted_hosts: UnlistedHosts,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum UnlistedHosts {
    #[default]
    FirstClaim,
    Refuse,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HostGrant {
    /// An exact host or a `*.suffix` wildcard, as in AuthPolicy `hosts`.
    pub pattern: String,
    /// Namespaces that may use hosts this pattern overlaps; `*` for all.
    pub namespaces: Vec<String>,
}

/// Settings of every gateway, as given to the controller or `local` (`--gateway-settings`).
pub type SettingsByGateway = BTreeMap<String, GatewaySettings>;

/// Parses `--gateway-settings` (JSON or YAML), checking every pattern and key name.
pub fn parse_settings(text: &str) -> Result<SettingsByGateway, String> {
    let settings: SettingsByGateway = serde_saphyr::from_str(text).map_err(|e| format!("gateway settings: {e}"))?;
    for (gateway, s) in &settings {
        for (i, h) in s.hosts.iter().enumerate() {
            HostPattern::parse(&h.pattern).map_err(|e| format!("gateway settings {gateway}.hosts[{i}]: {e}"))?;
            if h.namespaces.is_empty() {
                return Err(format!("gateway settings {gateway}.hosts[{i}]: namespaces is empty (list namespaces, or \"*\")"));
            }
        }
        for k in &s.minting_keys {
            k.parse::<KeyRef>().map_err(|e| format!("gateway settings {gateway}.mintingKeys: {e}"))?;
        }
    }
    Ok(settings)
}

/// Everything the compiler needs to decide tenancy for one gateway.
#[derive(Debug, Clone, Default)]
pub struct Tenancy {
    pub settings: GatewaySettings,
    /// The controller's namespace: trusted like the settings themselves.
    pub platform_namespace: Option<String>,
    /// One owner for everything (local mode without settings): nothing is refused for tenancy.
    pub single_owner: bool,
    /// SigningKeys other namespaces may verify with (annotation `portcullis.dev/verifiable-from`).
    pub verify_grants: BTreeMap<KeyRef, Vec<String>>,
    /// Hosts claimed before, held even when no policy of the holder is left.
    pub held: HostLedger,
}

/// The annotation on a SigningKey that lets policies in other namespaces verify with its
/// public keys: comma-separated namespaces, or `*`.
pub const ANNOTATION_VERIFIABLE_FROM: &str = "portcullis.dev/verifiable-from";

pub fn parse_grant(annotation: &str) -> Vec<String> {
    annotation.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect()
}

fn lists(namespaces: &[String], ns: &str) -> bool {
    namespaces.iter().any(|n| n == "*" || n == ns)
}

/// Whether some host matches both patterns.
pub fn overlaps(a: &HostPattern, b: &HostPattern) -> bool {
    match (a, b) {
        (HostPattern::Any, _) | (_, HostPattern::Any) => true,
        (HostPattern::Exact(x), HostPattern::Exact(y)) => x == y,
        (HostPattern::Exact(h), w @ HostPattern::Wildcard(_)) | (w @ HostPattern::Wildcard(_), HostPattern::Exact(h)) => w.matches(h),
        (HostPattern::Wildcard(x), HostPattern::Wildcard(y)) => x.ends_with(y.as_str()) || y.ends_with(x.as_str()),
    }
}

impl Tenancy {
    /// No tenancy checks: one party owns everything (local mode, tests).
    pub fn single_owner() -> Self {
        Self { single_owner: true, ..Self::default() }
    }

    fn trusted(&self, namespace: &str) -> bool {
        self.single_owner || self.platform_namespace.as_deref() == Some(namespace)
    }

    /// Why `cfg` may not be accepted, given the hosts others hold (the ledger and the policies
    /// accepted before it).
    pub fn check(&self, cfg: &PolicyConfig, claims: &HostIndex) -> Result<(), Rejection> {
        self.check_hosts(cfg, claims).map_err(|m| Rejection { reason: RejectReason::HostNotAllowed, problems: vec![m] })?;
        self.check_minting(cfg).map_err(|m| Rejection { reason: RejectReason::SigningKeyNotAllowed, problems: m })?;
        self.check_verify_refs(cfg).map_err(|m| Rejection { reason: RejectReason::KeyNotFound, problems: m })
    }

    fn check_hosts(&self, cfg: &PolicyConfig, claims: &HostIndex) -> Result<(), String> {
        let ns = cfg.namespace.as_str();
        if self.trusted(ns) {
            return Ok(());
        }
        if cfg.hosts.is_empty() {
            return if lists(&self.settings.any_host_namespaces, ns) {
                Ok(())
            } else {
                Err(format!(
                    "the policy has no hosts, so it would match every host of the gateway, and namespace {ns} is not in the gateway settings' anyHostNamespaces; list the hosts it is for"
                ))
            };
        }
        for h in &cfg.hosts {
            let Ok(pattern) = HostPattern::parse(h) else { continue };
            let governing: Vec<&HostGrant> =
                self.settings.hosts.iter().filter(|g| HostPattern::parse(&g.pattern).is_ok_and(|p| overlaps(&p, &pattern))).collect();
            if let Some(g) = governing.iter().find(|g| !lists(&g.namespaces, ns)) {
                return Err(format!(
                    "host {h}: the gateway settings give hosts matching {} to namespace(s) {} only, not {ns}",
                    g.pattern,
                    g.namespaces.join(", ")
                ));
            }
            if !governing.is_empty() {
                continue;
            }
            if self.settings.unlisted_hosts == UnlistedHosts::Refuse {
                return Err(format!(
                    "host {h}: no rule of the gateway settings' hosts gives it to namespace {ns}, and unlisted hosts are refused on this gateway (unlistedHosts: Refuse)"
                ));
            }
            if let Some(c) = claims.held_by_other(&pattern, ns) {
                return Err(c.refusal(h));
            }
        }
        Ok(())
    }

    /// Whether `key` may mint tokens that the gateway's JWKS vouches for.
    pub fn may_mint(&self, key: &KeyRef) -> bool {
        self.trusted(&key.namespace) || self.settings.minting_keys.iter().any(|k| *k == key.to_string())
    }

    fn check_minting(&self, cfg: &PolicyConfig) -> Result<(), Vec<String>> {
        let mut problems = Vec::new();
        for r in &cfg.rules {
            let Some(issue) = &r.forward.issue else { continue };
            let key = &issue.signing_key;
            if !self.may_mint(key) {
                problems.push(format!(
                    "rules[{}].forward.issue.signingKeyRef: SigningKey {key} may not mint internal tokens for this gateway: services trust every key the gateway mints with, so the platform team must list it in the gateway settings' mintingKeys",
                    r.name
                ));
            }
        }
        if problems.is_empty() { Ok(()) } else { Err(problems) }
    }

    fn check_verify_refs(&self, cfg: &PolicyConfig) -> Result<(), Vec<String>> {
        if self.single_owner {
            return Ok(());
        }
        let mut problems = Vec::new();
        for (i, iss) in cfg.issuers.iter().enumerate() {
            let KeySource::SigningKey(key) = &iss.keys else { continue };
            if key.namespace == cfg.namespace || self.platform_namespace.as_deref() == Some(key.namespace.as_str()) {
                continue;
            }
            if !self.verify_grants.get(key).is_some_and(|g| lists(g, &cfg.namespace)) {
                problems.push(format!(
                    "issuers[{i}].jwks.signingKeyRef: SigningKey {key} does not grant namespace {} its keys (annotation {ANNOTATION_VERIFIABLE_FROM} on the SigningKey)",
                    cfg.namespace
                ));
            }
        }
        if problems.is_empty() { Ok(()) } else { Err(problems) }
    }
}

/// The host patterns an accepted policy holds. A policy without hosts holds every host: its
/// routes are the fall-back of every host, so another namespace's host-specific routes would
/// override them — only the settings can share a host then.
pub fn claims_of(cfg: &PolicyConfig) -> impl Iterator<Item = HostClaim> + '_ {
    let patterns: Vec<HostPattern> =
        if cfg.hosts.is_empty() { vec![HostPattern::Any] } else { cfg.hosts.iter().filter_map(|h| HostPattern::parse(h).ok()).collect() };
    let policy = cfg.key();
    patterns.into_iter().map(move |pattern| HostClaim { pattern, namespace: cfg.namespace.clone(), policy: Some(policy.clone()) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::config::{ForwardConfig, IssueConfig, IssuerConfig, RuleConfig};

    fn policy(ns: &str, hosts: &[&str]) -> PolicyConfig {
        PolicyConfig {
            namespace: ns.into(),
            name: "p".into(),
            generation: None,
            created: None,
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            issuers: Vec::new(),
            token_sources: Vec::new(),
            rules: Vec::new(),
            cors_preflight: false,
            sign_in: None,
        }
    }

    fn minting(ns: &str, key: &str) -> PolicyConfig {
        let mut p = policy(ns, &["a.test"]);
        p.rules.push(RuleConfig {
            name: "r".into(),
            hosts: Vec::new(),
            paths: Vec::new(),
            methods: Vec::new(),
            when: Vec::new(),
            public: false,
            optional: false,
            require: Vec::new(),
            any_of: Vec::new(),
            service_accounts: Vec::new(),
            forward: ForwardConfig {
                issue: Some(IssueConfig { signing_key: key.parse().unwrap(), audience: "x".into(), ttl_secs: 60, claims: Vec::new() }),
                ..ForwardConfig::default()
            },
            audit: false,
        });
        p
    }

    fn tenancy(settings: &str) -> Tenancy {
        let all = parse_settings(&format!("default: {settings}")).unwrap();
        Tenancy { settings: all["default"].clone(), platform_namespace: Some("platform".into()), ..Tenancy::default() }
    }

    fn claim_any(ns: &str) -> HostClaim {
        HostClaim { pattern: HostPattern::Any, namespace: ns.into(), policy: Some(format!("{ns}/first")) }
    }

    fn claim(pattern: &str, ns: &str) -> HostClaim {
        HostClaim { pattern: HostPattern::parse(pattern).unwrap(), namespace: ns.into(), policy: Some(format!("{ns}/first")) }
    }

    /// A claim kept in the ledger after its policies were deleted.
    fn held(pattern: &str, ns: &str) -> HostClaim {
        HostClaim { policy: None, ..claim(pattern, ns) }
    }

    fn index(claims: &[HostClaim]) -> HostIndex {
        let mut index = HostIndex::default();
        claims.iter().cloned().for_each(|c| index.insert(c));
        index
    }

    #[test]
    fn host_ownership_table() {
        let shared = "{ hosts: [{ pattern: \"*.shop.example\", namespaces: [shop, shop-admin] }, { pattern: api.shared.example, namespaces: [\"*\"] }], anyHostNamespaces: [edge] }";
        let a_claims = [claim("api.a.example", "team-a"), claim("*.wild.example", "team-a")];
        // (settings, namespace, hosts, earlier claims) → Ok or the words the refusal must use.
        type Row<'a> = (&'a str, &'a str, &'a [&'a str], &'a [HostClaim], Result<(), &'a str>);
        let table: &[Row] = &[
            // Settings give hosts to namespaces, in both directions of overlap.
            (shared, "shop", &["api.shop.example"], &[], Ok(())),
            (shared, "shop-admin", &["*.shop.example"], &[], Ok(())),
            (
                shared,
                "team-b",
                &["api.shop.example"],
                &[],
                Err("hosts matching *.shop.example to namespace(s) shop, shop-admin only, not team-b"),
            ),
            (shared, "team-b", &["*.example"], &[], Err("*.shop.example")),
            (shared, "team-b", &["api.shared.example"], &[], Ok(())),
            // A setting wins over who came first.
            (shared, "shop", &["api.shop.example"], &[claim("api.shop.example", "team-b")], Ok(())),
            // No setting: the first namespace to claim a host owns it, and overlaps count.
            ("{}", "team-a", &["api.a.example"], &a_claims, Ok(())),
            (
                "{}",
                "team-b",
                &["api.a.example"],
                &a_claims,
                Err("host api.a.example belongs to namespace team-a (AuthPolicy team-a/first claimed api.a.example first)"),
            ),
            ("{}", "team-b", &["*.a.example"], &a_claims, Err("belongs to namespace team-a")),
            ("{}", "team-b", &["x.wild.example"], &a_claims, Err("belongs to namespace team-a")),
            ("{}", "team-b", &["other.example"], &a_claims, Ok(())),
            // A host-less policy holds every host: nobody else may claim one, unless settings share it.
            (
                "{}",
                "team-b",
                &["other.example"],
                &[claim_any("edge")],
                Err("belongs to namespace edge (AuthPolicy edge/first claimed every host (it has no hosts) first)"),
            ),
            (shared, "team-b", &["api.shared.example"], &[claim_any("edge")], Ok(())),
            // A claim held in the ledger (its policies deleted, e.g. for a redeploy) still refuses.
            (
                "{}",
                "team-b",
                &["api.a.example"],
                &[held("api.a.example", "team-a")],
                Err(
                    "host api.a.example belongs to namespace team-a (it claimed api.a.example first and keeps the claim when its policies are deleted or redeployed)",
                ),
            ),
            ("{}", "team-a", &["api.a.example"], &[held("api.a.example", "team-a")], Ok(())),
            // Refuse: unlisted hosts are for nobody but the platform, claimed or not.
            (
                "{ unlistedHosts: Refuse }",
                "team-a",
                &["api.a.example"],
                &[],
                Err("no rule of the gateway settings' hosts gives it to namespace team-a"),
            ),
            (
                "{ unlistedHosts: Refuse, hosts: [{ pattern: api.a.example, namespaces: [team-a] }] }",
                "team-a",
                &["api.a.example"],
                &[],
                Ok(()),
            ),
            ("{ unlistedHosts: Refuse }", "platform", &["api.a.example"], &[], Ok(())),
            // Host-less policies match every host: only where the settings say so.
            ("{}", "team-b", &[], &[], Err("not in the gateway settings' anyHostNamespaces")),
            (shared, "edge", &[], &a_claims, Ok(())),
            // The platform namespace may do anything.
            ("{}", "platform", &[], &a_claims, Ok(())),
            ("{}", "platform", &["api.a.example"], &a_claims, Ok(())),
        ];
        for (settings, ns, hosts, claims, want) in table {
            let got = tenancy(settings).check(&policy(ns, hosts), &index(claims));
            match (got, want) {
                (Ok(()), Ok(())) => {}
                (Err(r), Err(words)) => {
                    assert_eq!(r.reason, RejectReason::HostNotAllowed);
                    assert!(r.message().contains(words), "{ns} {hosts:?}: {}", r.message());
                }
                (got, want) => panic!("{settings} / {ns} {hosts:?}: got {got:?}, want {want:?}"),
            }
        }
        // One owner (local mode): nothing is refused.
        assert!(Tenancy::single_owner().check(&policy("team-b", &["api.a.example"]), &index(&a_claims)).is_ok());
    }

    #[test]
    fn only_listed_or_platform_keys_mint() {
        let t = tenancy("{ mintingKeys: [shop/internal] }");
        assert!(t.check(&minting("shop", "shop/internal"), &HostIndex::default()).is_ok());
        assert!(t.check(&minting("platform", "platform/internal"), &HostIndex::default()).is_ok());
        let r = t.check(&minting("team-b", "team-b/forge"), &HostIndex::default()).unwrap_err();
        assert_eq!(r.reason, RejectReason::SigningKeyNotAllowed);
        assert!(r.message().contains("SigningKey team-b/forge may not mint"), "{}", r.message());
    }

    #[test]
    fn verifying_with_another_namespaces_key_needs_its_grant() {
        let mut p = policy("team-b", &["b.test"]);
        p.issuers.push(IssuerConfig {
            issuer: "i".into(),
            audiences: vec!["a".into()],
            algorithms: Vec::new(),
            clock_skew_secs: 60,
            keys: KeySource::SigningKey("shop/idp".parse().unwrap()),
        });
        let mut t = tenancy("{}");
        let r = t.check(&p, &HostIndex::default()).unwrap_err();
        assert_eq!(r.reason, RejectReason::KeyNotFound);
        assert!(
            r.message().contains("does not grant namespace team-b its keys (annotation portcullis.dev/verifiable-from"),
            "{}",
            r.message()
        );
        t.verify_grants.insert("shop/idp".parse().unwrap(), parse_grant("team-a, team-b"));
        assert!(t.check(&p, &HostIndex::default()).is_ok());
        t.verify_grants.insert("shop/idp".parse().unwrap(), parse_grant("*"));
        assert!(t.check(&p, &HostIndex::default()).is_ok());
    }

    #[test]
    fn settings_are_checked_when_read() {
        assert!(parse_settings("default: { hosts: [{ pattern: \"API.x\", namespaces: [a] }] }").is_err());
        assert!(parse_settings("default: { hosts: [{ pattern: a.x, namespaces: [] }] }").is_err());
        assert!(parse_settings("default: { mintingKeys: [internal] }").unwrap_err().contains("namespace/name"));
        assert!(parse_settings("default: { hostz: [] }").is_err());
        assert!(parse_settings("{\"default\": {\"anyHostNamespaces\": [\"edge\"]}}").is_ok());
    }
}
