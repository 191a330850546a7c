//! Prometheus metrics of the gateway. Label handles for the hot path are resolved once per
//! config, so a decision only touches atomics.

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

use crate::plumbing::metrics::{register, render};

use crate::decide::DenyReason;

#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    decisions: IntCounterVec,
    denials: Vec<IntCounter>,
    pub decision_seconds: Histogram,
    config_info: IntGaugeVec,
    pub config_reloads_ok: IntCounter,
    pub config_reloads_failed: IntCounter,
    pub config_last_success: IntGauge,
    jwks_fetches: IntCounterVec,
    jwks_keys: IntGaugeVec,
    pub token_cache_entries: IntGauge,
    pub token_cache_bytes: IntGauge,
    /// Resources (files' documents, policies) refused by the last load; their last good
    /// versions keep serving.
    pub rejected_resources: IntGauge,
    signing_key_age: IntGaugeVec,
    signing_key_next: IntGaugeVec,
    pub audit_decisions: IntCounterVec,
    /// One counter per gRPC status answered, in [`GRPC_CODES`] order.
    grpc_checks: Vec<IntCounter>,
    /// Token exchange requests by result (`issued` or the OAuth error code).
    pub token_exchanges: IntCounterVec,
}

/// The gRPC statuses a Check answers with (google.rpc.Code), and the label of everything else.
/// The transport's own (a deadline, a message too large, another method or a compressed one, a
/// broken stream) are told apart from the decisions' too.
const GRPC_CODES: [(i32, &str); 10] = [
    (0, "OK"),
    (3, "INVALID_ARGUMENT"),
    (4, "DEADLINE_EXCEEDED"),
    (7, "PERMISSION_DENIED"),
    (8, "RESOURCE_EXHAUSTED"),
    (12, "UNIMPLEMENTED"),
    (13, "INTERNAL"),
    (14, "UNAVAILABLE"),
    (16, "UNAUTHENTICATED"),
    (-1, "OTHER"),
];

/// Decision counters of one policy (or of requests that matched no policy).
#[derive(Clone)]
pub struct PolicyCounters {
    pub allowed: IntCounter,
    pub denied: IntCounter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let decisions = IntCounterVec::new(
            Opts::new("portcullis_decisions_total", "Authorization decisions by policy and result."),
            &["policy", "result"],
        )
        .expect("valid metric");
        let denials_vec =
            IntCounterVec::new(Opts::new("portcullis_denials_total", "Denied requests by reason."), &["reason"]).expect("valid metric");
        let denials = DenyReason::ALL.iter().map(|r| denials_vec.with_label_values(&[r.as_str()])).collect();
        let decision_seconds = Histogram::with_opts(
            HistogramOpts::new("portcullis_decision_duration_seconds", "Time to decide one request, excluding HTTP.")
                .buckets(vec![2e-6, 5e-6, 10e-6, 20e-6, 50e-6, 100e-6, 250e-6, 1e-3, 5e-3, 25e-3, 0.1]),
        )
        .expect("valid metric");
        let config_info =
            IntGaugeVec::new(Opts::new("portcullis_config_info", "The gateway config being enforced (value 1)."), &["gateway", "version"])
                .expect("valid metric");
        let config_reloads = IntCounterVec::new(
            Opts::new("portcullis_config_reloads_total", "Config loads by result; a failed load keeps the previous config."),
            &["result"],
        )
        .expect("valid metric");
        let config_last_success =
            IntGauge::new("portcullis_config_last_success_timestamp_seconds", "When a config was last loaded.").expect("valid metric");
        let jwks_fetches =
            IntCounterVec::new(Opts::new("portcullis_jwks_fetches_total", "Remote JWKS fetches by URL and result."), &["uri", "result"])
                .expect("valid metric");
        let jwks_keys =
            IntGaugeVec::new(Opts::new("portcullis_jwks_keys", "Keys held for a remote JWKS URL."), &["uri"]).expect("valid metric");
        let token_cache_entries =
            IntGauge::new("portcullis_token_cache_entries", "Verified tokens held in the cache.").expect("valid metric");
        let token_cache_bytes = IntGauge::new(
            "portcullis_token_cache_bytes",
            "Bytes held by the verified-token cache (estimated per entry; bounded by --token-cache-mib).",
        )
        .expect("valid metric");
        let rejected_resources = IntGauge::new(
            "portcullis_config_rejected_resources",
            "Resources the last load refused (unparsable or invalid); the last good version of each keeps serving.",
        )
        .expect("valid metric");
        let signing_key_age = IntGaugeVec::new(
            Opts::new("portcullis_signing_key_active_age_seconds", "Age of the key that signs now, by SigningKey."),
            &["signing_key"],
        )
        .expect("valid metric");
        let signing_key_next = IntGaugeVec::new(
            Opts::new("portcullis_signing_key_next_transition_seconds", "Seconds until the next key state change, by SigningKey."),
            &["signing_key"],
        )
        .expect("valid metric");
        let audit_decisions = IntCounterVec::new(
            Opts::new(
                "portcullis_audit_decisions_total",
                "Decisions of rules in Audit mode (the request was allowed) by what enforcing would have done.",
            ),
            &["policy", "rule", "result", "reason"],
        )
        .expect("valid metric");
        let grpc_checks = IntCounterVec::new(
            Opts::new("portcullis_grpc_checks_total", "gRPC ext_authz Check calls by the gRPC status answered (OK allows)."),
            &["code"],
        )
        .expect("valid metric");
        let token_exchanges = IntCounterVec::new(
            Opts::new("portcullis_token_exchanges_total", "Token exchange requests by result: issued, or the OAuth error answered."),
            &["result"],
        )
        .expect("valid metric");
        register(
            &registry,
            vec![
                Box::new(token_exchanges.clone()),
                Box::new(decisions.clone()),
                Box::new(denials_vec),
                Box::new(decision_seconds.clone()),
                Box::new(config_info.clone()),
                Box::new(config_reloads.clone()),
                Box::new(config_last_success.clone()),
                Box::new(jwks_fetches.clone()),
                Box::new(jwks_keys.clone()),
                Box::new(token_cache_entries.clone()),
                Box::new(token_cache_bytes.clone()),
                Box::new(rejected_resources.clone()),
                Box::new(signing_key_age.clone()),
                Box::new(signing_key_next.clone()),
                Box::new(audit_decisions.clone()),
                Box::new(grpc_checks.clone()),
            ],
        );
        Self {
            registry,
            decisions,
            denials,
            decision_seconds,
            config_info,
            config_reloads_ok: config_reloads.with_label_values(&["success"]),
            config_reloads_failed: config_reloads.with_label_values(&["failure"]),
            config_last_success,
            jwks_fetches,
            jwks_keys,
            token_cache_entries,
            token_exchanges,
            token_cache_bytes,
            rejected_resources,
            signing_key_age,
            signing_key_next,
            audit_decisions,
            grpc_checks: GRPC_CODES.iter().map(|(_, name)| grpc_checks.with_label_values(&[name])).collect(),
        }
    }

    pub fn grpc_check(&self, code: i32) {
        let i = GRPC_CODES.iter().position(|(c, _)| *c == code).unwrap_or(GRPC_CODES.len() - 1);
        self.grpc_checks[i].inc();
    }

    pub fn policy_counters(&self, policy: &str) -> PolicyCounters {
        PolicyCounters {
            allowed: self.decisions.with_label_values(&[policy, "allow"]),
            denied: self.decisions.with_label_values(&[policy, "deny"]),
        }
    }

    pub fn forget_policy(&self, policy: &str) {
        let _ = self.decisions.remove_label_values(&[policy, "allow"]);
        let _ = self.decisions.remove_label_values(&[policy, "deny"]);
    }

    pub fn denial(&self, reason: DenyReason) -> &IntCounter {
        let i = DenyReason::ALL
            .iter()
            .position(|r| std::mem::discriminant(r) == std::mem::discriminant(&reason))
            .expect("every reason is listed");
        &self.denials[i]
    }

    pub fn set_config(&self, gateway: &str, version: &str) {
        self.config_info.reset();
        self.config_info.with_label_values(&[gateway, version]).set(1);
    }

    pub fn jwks_fetch(&self, uri: &str, ok: bool, keys: usize) {
        self.jwks_fetches.with_label_values(&[uri, if ok { "success" } else { "failure" }]).inc();
        if ok {
            self.jwks_keys.with_label_values(&[uri]).set(keys as i64);
        }
    }

    /// Key age and time to the next transition of every SigningKey in the config, at `now`.
    pub fn signing_keys(&self, config: &crate::policy::GatewayConfig, now: jiff::Timestamp) {
        self.signing_key_age.reset();
        self.signing_key_next.reset();
        for k in &config.signing_keys {
            let key = format!("{}/{}", k.namespace, k.name);
            let current = k.signing.iter().filter(|w| w.contains(now)).max_by_key(|w| w.from);
            if let Some(w) = current {
                self.signing_key_age.with_label_values(&[&key]).set((now - w.from).get_seconds().max(0));
            }
            let next_window = k.signing.iter().map(|w| w.from).filter(|from| *from > now).min();
            let next = [next_window, k.next_transition].into_iter().flatten().filter(|t| *t > now).min();
            if let Some(t) = next {
                self.signing_key_next.with_label_values(&[&key]).set((t - now).get_seconds());
            }
        }
    }

    pub fn render(&self) -> String {
        render(&self.registry)
    }
}
