//! TokenExchangePolicies of one gateway → the `exchanges` of its config (pure).
//!
//! A namespace may only allow tokens addressed to itself: the audience is one of its own
//! ServiceAccounts, by construction. The minting key must be one the gateway settings allow (what
//! services trust). Two policies for one audience: the older one serves, the newer is
//! `Conflicted`. A policy that turns invalid keeps its last good version serving.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use super::config::{ClusterIssuer, ExchangeActorConfig, ExchangeConfig, GatewayConfig};
use super::validate::{MAX_ISSUE_TTL_SECS, MINTED_CLAIMS, PolicyMeta, RejectReason, Rejection, parse_service_account};
use super::{KeyRef, Outcome, PolicyOutcome, PublishedKeys, Tenancy};
use crate::api::{TokenExchangePolicySpec, service_account_username};
use crate::policy::claims::ClaimRequirement;

pub const DEFAULT_EXCHANGE_TTL_SECS: u64 = 300;
pub const DEFAULT_MAX_DEPTH: u32 = 2;
pub const MAX_DEPTH: u32 = 8;

#[derive(Debug, Clone)]
pub struct ExchangeInput {
    pub meta: PolicyMeta,
    pub spec: Arc<TokenExchangePolicySpec>,
    pub last_good: Option<ExchangeConfig>,
}

/// Validates one policy on its own.
pub fn validate(
    meta: &PolicyMeta,
    spec: &TokenExchangePolicySpec,
    keys: &BTreeMap<KeyRef, PublishedKeys>,
) -> Result<ExchangeConfig, Rejection> {
    let mut invalid = Vec::new();
    let sa = &spec.audience.service_account;
    if parse_service_account(&format!("{}/{sa}", meta.namespace)).map_or(true, |(_, n)| n.is_none()) {
        invalid.push(format!("audience.serviceAccount: {sa:?} is not a ServiceAccount name"));
    }
    let ttl_secs = spec.ttl.map_or(DEFAULT_EXCHANGE_TTL_SECS, |d| d.as_secs());
    if !(1..=MAX_ISSUE_TTL_SECS).contains(&ttl_secs) {
        invalid.push(format!("ttl: must be between 1s and {MAX_ISSUE_TTL_SECS}s"));
    }
    let mut claims = BTreeSet::new();
    for c in &spec.claims {
        if MINTED_CLAIMS.contains(&c.as_str()) || c == "act" {
            invalid.push(format!("claims: {c} is set by the gateway and cannot be copied"));
        } else if !claims.insert(c.clone()) {
            invalid.push(format!("claims: {c} is listed twice"));
        }
    }
    for (k, r) in spec.require.iter().enumerate() {
        if r.equals_header.is_some() || r.equals_path_param.is_some() {
            invalid.push(format!("require[{k}]: an exchange has no request headers or path to compare with"));
        } else if let Err(e) = ClaimRequirement::compile(r) {
            invalid.push(format!("require[{k}]: {e}"));
        }
    }
    let max_depth = spec.max_delegation_depth.unwrap_or(DEFAULT_MAX_DEPTH);
    if !(1..=MAX_DEPTH).contains(&max_depth) {
        invalid.push(format!("maxDelegationDepth: must be between 1 and {MAX_DEPTH}"));
    }
    if spec.from.is_empty() {
        invalid.push("from: needs at least one workload".into());
    }
    let mut actors = Vec::new();
    for (i, a) in spec.from.iter().enumerate() {
        if let Err(e) = parse_service_account(&a.service_account) {
            invalid.push(format!("from[{i}].serviceAccount: {e}"));
        }
        if a.subject_audiences.iter().any(String::is_empty) {
            invalid.push(format!("from[{i}].subjectAudiences: must not be empty strings"));
        }
        actors.push(ExchangeActorConfig { service_account: a.service_account.clone(), subject_audiences: a.subject_audiences.clone() });
    }
    let signing_key = KeyRef { namespace: meta.namespace.clone(), name: spec.signing_key_ref.name.clone() };
    match keys.get(&signing_key) {
        Some(k) if k.retain_secs < ttl_secs => invalid.push(format!(
            "ttl: tokens live {ttl_secs}s but SigningKey {signing_key} keeps retired keys only {}s (retain): they could outlive their key",
            k.retain_secs
        )),
        Some(_) => {}
        None if invalid.is_empty() => {
            return Err(Rejection {
                reason: RejectReason::KeyNotFound,
                problems: vec![format!("signingKeyRef: SigningKey {signing_key} not found")],
            });
        }
        None => {}
    }
    if !invalid.is_empty() {
        return Err(Rejection { reason: RejectReason::Invalid, problems: invalid });
    }
    Ok(ExchangeConfig {
        namespace: meta.namespace.clone(),
        name: meta.name.clone(),
        generation: meta.generation,
        audience: service_account_username(&meta.namespace, sa),
        signing_key,
        ttl_secs,
        claims: claims.into_iter().collect(),
        require: spec.require.clone(),
        max_depth,
        actors,
    })
}

/// Puts the cluster issuer and the accepted exchanges of `inputs` (this gateway's) into `config`,
/// with the public keys of their minting SigningKeys, and stamps the config's version again.
pub fn complete(
    config: &mut GatewayConfig,
    cluster_issuer: Option<ClusterIssuer>,
    inputs: &[ExchangeInput],
    keys: &BTreeMap<KeyRef, PublishedKeys>,
    tenancy: &Tenancy,
) -> Vec<PolicyOutcome> {
    let mut mine: Vec<&ExchangeInput> = inputs.iter().filter(|i| i.spec.gateway == config.gateway).collect();
    // The older policy keeps an audience; then the one already serving; then by name.
    mine.sort_by(|a, b| {
        (a.meta.created, a.last_good.is_none(), &a.meta.namespace, &a.meta.name).cmp(&(
            b.meta.created,
            b.last_good.is_none(),
            &b.meta.namespace,
            &b.meta.name,
        ))
    });
    let mut by_audience: BTreeMap<String, String> = BTreeMap::new();
    let mut accepted = Vec::new();
    let mut outcomes = Vec::new();
    for input in mine {
        let meta = &input.meta;
        let checked = validate(meta, &input.spec, keys).and_then(|x| allowed(x, tenancy));
        let rejection = match checked {
            Ok(x) => match by_audience.get(&x.audience) {
                None => {
                    by_audience.insert(x.audience.clone(), meta.key());
                    accepted.push(x);
                    outcomes.push(outcome(meta, Outcome::Accepted));
                    continue;
                }
                Some(holder) => Rejection {
                    reason: RejectReason::Conflicted,
                    problems: vec![format!("TokenExchangePolicy {holder} already allows exchanges for {}", x.audience)],
                },
            },
            Err(r) => r,
        };
        let previous = input.last_good.as_ref().filter(|prev| {
            rejection.reason != RejectReason::KeyNotFound
                && keys.contains_key(&prev.signing_key)
                && tenancy.may_mint(&prev.signing_key)
                && !by_audience.contains_key(&prev.audience)
        });
        if let Some(prev) = previous {
            by_audience.insert(prev.audience.clone(), meta.key());
            accepted.push(prev.clone());
        }
        outcomes.push(outcome(meta, Outcome::Rejected { rejection, serving_previous: previous.is_some() }));
    }
    accepted.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    for x in &accepted {
        if config.published_keys(&x.signing_key).is_none()
            && let Some(k) = keys.get(&x.signing_key)
        {
            config.signing_keys.push(k.clone());
        }
    }
    config.signing_keys.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    config.exchanges = accepted;
    config.cluster_issuer = cluster_issuer;
    config.version = config.content_hash();
    outcomes.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    outcomes
}

fn allowed(x: ExchangeConfig, tenancy: &Tenancy) -> Result<ExchangeConfig, Rejection> {
    if tenancy.may_mint(&x.signing_key) {
        return Ok(x);
    }
    Err(Rejection {
        reason: RejectReason::SigningKeyNotAllowed,
        problems: vec![format!(
            "signingKeyRef: SigningKey {} may not mint for this gateway: services trust every key the gateway mints with, so the platform team must list it in the gateway settings' mintingKeys",
            x.signing_key
        )],
    })
}

fn outcome(meta: &PolicyMeta, outcome: Outcome) -> PolicyOutcome {
    PolicyOutcome { namespace: meta.namespace.clone(), name: meta.name.clone(), generation: meta.generation, outcome }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::tenancy::parse_settings;

    fn keys(refs: &[&str]) -> BTreeMap<KeyRef, PublishedKeys> {
        refs.iter()
            .map(|r| {
                let k: KeyRef = r.parse().unwrap();
                let published = PublishedKeys {
                    namespace: k.namespace.clone(),
                    name: k.name.clone(),
                    algorithm: crate::api::SigningAlgorithm::EdDSA,
                    active_kid: None,
                    signing: Vec::new(),
                    max_age_secs: 60,
                    keys: Vec::new(),
                    retain_secs: 3600,
                    next_transition: None,
                };
                (k, published)
            })
            .collect()
    }

    fn input(ns: &str, name: &str, created: i64, yaml: &str) -> ExchangeInput {
        let mut meta = PolicyMeta::new(ns, name);
        meta.created = Some(jiff::Timestamp::from_second(created).unwrap());
        ExchangeInput { meta, spec: Arc::new(serde_saphyr::from_str(yaml).unwrap()), last_good: None }
    }

    const SPEC: &str =
        "{ audience: { serviceAccount: orders }, signingKeyRef: { name: internal }, from: [{ serviceAccount: shop/checkout }] }";

    fn run(inputs: &[ExchangeInput], keys: &BTreeMap<KeyRef, PublishedKeys>, tenancy: &Tenancy) -> (GatewayConfig, Vec<PolicyOutcome>) {
        let mut config = GatewayConfig::new("default", Vec::new(), Vec::new());
        let outcomes = complete(&mut config, None, inputs, keys, tenancy);
        (config, outcomes)
    }

    fn reason(o: &PolicyOutcome) -> Option<RejectReason> {
        match &o.outcome {
            Outcome::Accepted => None,
            Outcome::Rejected { rejection, .. } => Some(rejection.reason),
        }
    }

    #[test]
    fn a_namespace_allows_tokens_only_for_its_own_accounts_and_mints_only_with_allowed_keys() {
        let tenancy = Tenancy {
            settings: parse_settings("default: { mintingKeys: [shop/internal] }").unwrap()["default"].clone(),
            ..Tenancy::default()
        };
        let k = keys(&["shop/internal", "bank/internal"]);
        let (mut config, outcomes) = run(&[input("shop", "orders", 1, SPEC), input("bank", "orders", 1, SPEC)], &k, &tenancy);
        // The same spec in two namespaces addresses two different workloads.
        assert_eq!(reason(&outcomes[0]), Some(RejectReason::SigningKeyNotAllowed), "bank/internal is not a minting key");
        assert_eq!(reason(&outcomes[1]), None);
        assert_eq!(config.exchanges.len(), 1);
        assert_eq!(config.exchanges[0].audience, "system:serviceaccount:shop:orders");
        assert_eq!(config.minting_keys().map(|k| k.key_ref().to_string()).collect::<Vec<_>>(), ["shop/internal"]);
        let before = config.version.clone();
        assert_eq!(config.content_hash(), before, "the version is stamped after the exchanges went in");
    }

    #[test]
    fn the_older_policy_keeps_an_audience_and_a_broken_one_keeps_its_last_good_version() {
        let k = keys(&["shop/internal"]);
        let t = Tenancy::single_owner();
        let (config, outcomes) = run(&[input("shop", "b-newer", 5, SPEC), input("shop", "a-older", 1, SPEC)], &k, &t);
        assert_eq!(reason(&outcomes[0]), None);
        assert_eq!(reason(&outcomes[1]), Some(RejectReason::Conflicted));
        assert_eq!(config.exchanges[0].name, "a-older");

        let good = config.exchanges[0].clone();
        let mut broken = input(
            "shop",
            "a-older",
            1,
            "{ audience: { serviceAccount: orders }, signingKeyRef: { name: internal }, claims: [exp], from: [{ serviceAccount: shop/checkout }] }",
        );
        broken.last_good = Some(good.clone());
        let (config, outcomes) = run(&[broken.clone()], &k, &t);
        assert!(
            matches!(&outcomes[0].outcome, Outcome::Rejected { rejection, serving_previous: true } if rejection.problems[0].contains("exp"))
        );
        assert_eq!(config.exchanges, [good]);

        // Its key gone: nothing is served from memory.
        let (config, outcomes) = run(&[broken], &BTreeMap::new(), &t);
        assert!(matches!(&outcomes[0].outcome, Outcome::Rejected { serving_previous: false, .. }));
        assert!(config.exchanges.is_empty());
    }

    #[test]
    fn invalid_specs_are_refused_with_the_field_named() {
        let k = keys(&["shop/internal"]);
        for (spec, field) in [
            ("{ audience: { serviceAccount: Orders }, signingKeyRef: { name: internal }, from: [{ serviceAccount: shop/a }] }", "audience"),
            ("{ audience: { serviceAccount: o }, signingKeyRef: { name: internal }, ttl: 2h, from: [{ serviceAccount: shop/a }] }", "ttl"),
            (
                "{ audience: { serviceAccount: o }, signingKeyRef: { name: internal }, claims: [act], from: [{ serviceAccount: shop/a }] }",
                "claims",
            ),
            (
                "{ audience: { serviceAccount: o }, signingKeyRef: { name: internal }, require: [{ claim: t, equalsHeader: X-T }], from: [{ serviceAccount: shop/a }] }",
                "require[0]",
            ),
            (
                "{ audience: { serviceAccount: o }, signingKeyRef: { name: internal }, maxDelegationDepth: 9, from: [{ serviceAccount: shop/a }] }",
                "maxDelegationDepth",
            ),
            ("{ audience: { serviceAccount: o }, signingKeyRef: { name: internal }, from: [{ serviceAccount: shop }] }", "from[0]"),
            ("{ audience: { serviceAccount: o }, signingKeyRef: { name: internal }, from: [] }", "from"),
        ] {
            let r = validate(&PolicyMeta::new("shop", "x"), &serde_saphyr::from_str(spec).unwrap(), &k).unwrap_err();
            assert_eq!(r.reason, RejectReason::Invalid, "{spec}");
            assert!(r.problems.iter().any(|p| p.starts_with(field)), "{spec}: {:?}", r.problems);
        }
        let r = validate(&PolicyMeta::new("shop", "x"), &serde_saphyr::from_str(SPEC).unwrap(), &BTreeMap::new()).unwrap_err();
        assert_eq!(r.reason, RejectReason::KeyNotFound);
    }
}
