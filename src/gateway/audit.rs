//! Decisions of rules in Audit mode: counted per rule and reason in one-minute buckets, so a
//! heartbeat (and `/status`) can say what the last ten minutes would have denied, and in the
//! Prometheus counter `portcullis_audit_decisions_total{policy,rule,result,reason}`.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;

use prometheus::IntCounterVec;

use crate::contract::heartbeat::{AUDIT_WINDOW_SECS, AuditCounts, TOP_REASONS};
use crate::decide::Verdict;

/// Counts of one rule in one bucket: would-allow, and would-deny by reason.
#[derive(Default, Clone, Debug, PartialEq)]
struct Tally {
    allow: u64,
    deny: BTreeMap<&'static str, u64>,
}

type Key = (String, String);

pub struct AuditLog {
    /// (minute, counts per (policy, rule)), oldest first.
    buckets: Mutex<VecDeque<(u64, BTreeMap<Key, Tally>)>>,
    counter: IntCounterVec,
}

impl AuditLog {
    pub fn new(counter: IntCounterVec) -> Self {
        Self { buckets: Mutex::default(), counter }
    }

    pub fn record(&self, policy: &str, rule: &str, verdict: &Verdict, unix_secs: i64) {
        let reason = match verdict {
            Verdict::WouldAllow => None,
            Verdict::WouldDeny { reason, .. } => Some(reason.as_str()),
        };
        let result = if reason.is_some() { "would_deny" } else { "would_allow" };
        self.counter.with_label_values(&[policy, rule, result, reason.unwrap_or("")]).inc();
        let minute = unix_secs.max(0) as u64 / 60;
        let mut buckets = self.buckets.lock().expect("audit lock");
        if buckets.back().is_none_or(|(m, _)| *m != minute) {
            buckets.push_back((minute, BTreeMap::new()));
            let keep = AUDIT_WINDOW_SECS / 60;
            while buckets.front().is_some_and(|(m, _)| *m + keep <= minute) {
                buckets.pop_front();
            }
        }
        let tally = buckets.back_mut().expect("just pushed").1.entry((policy.to_owned(), rule.to_owned())).or_default();
        match reason {
            None => tally.allow += 1,
            Some(r) => *tally.deny.entry(r).or_default() += 1,
        }
    }

    /// The counts of the last [`AUDIT_WINDOW_SECS`] for each audited rule (zero when it saw no
    /// request), with its most frequent deny reasons.
    pub fn window(&self, audited: &[(String, String)], unix_secs: i64) -> Vec<AuditCounts> {
        let minute = unix_secs.max(0) as u64 / 60;
        let keep = AUDIT_WINDOW_SECS / 60;
        let buckets = self.buckets.lock().expect("audit lock");
        audited
            .iter()
            .map(|(policy, rule)| {
                let key = (policy.clone(), rule.clone());
                let mut sum = Tally::default();
                for (_, b) in buckets.iter().filter(|(m, _)| *m + keep > minute) {
                    if let Some(t) = b.get(&key) {
                        sum.allow += t.allow;
                        for (r, n) in &t.deny {
                            *sum.deny.entry(r).or_default() += n;
                        }
                    }
                }
                let mut reasons: Vec<(&str, u64)> = sum.deny.iter().map(|(r, n)| (*r, *n)).collect();
                reasons.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
                AuditCounts {
                    policy: policy.clone(),
                    rule: rule.clone(),
                    would_allow: sum.allow,
                    would_deny: sum.deny.values().sum(),
                    reasons: reasons.into_iter().take(TOP_REASONS).map(|(r, n)| (r.to_owned(), n)).collect(),
                }
            })
            .collect()
    }

    /// Stops exporting counters of rules no longer audited.
    pub fn retain(&self, audited: &[(String, String)]) {
        self.buckets.lock().expect("audit lock").iter_mut().for_each(|(_, b)| b.retain(|k, _| audited.contains(k)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::DenyReason;

    fn log() -> AuditLog {
        AuditLog::new(IntCounterVec::new(prometheus::Opts::new("t", "t"), &["policy", "rule", "result", "reason"]).unwrap())
    }

    #[test]
    fn the_window_counts_the_last_ten_minutes_per_rule_with_the_top_reasons() {
        let log = log();
        let deny = |reason| Verdict::WouldDeny { reason, detail: None };
        let t0 = 1_800_000_000 / 60 * 60;
        for _ in 0..3 {
            log.record("shop/orders", "read", &Verdict::WouldAllow, t0);
        }
        log.record("shop/orders", "read", &deny(DenyReason::WrongAudience), t0 + 61);
        log.record("shop/orders", "read", &deny(DenyReason::WrongAudience), t0 + 62);
        log.record("shop/orders", "read", &deny(DenyReason::Expired), t0 + 300);
        log.record("shop/orders", "write", &Verdict::WouldAllow, t0 + 300);
        let audited = vec![("shop/orders".to_owned(), "read".to_owned()), ("shop/orders".to_owned(), "quiet".to_owned())];
        let w = log.window(&audited, t0 + 320);
        assert_eq!((w[0].would_allow, w[0].would_deny), (3, 3));
        assert_eq!(w[0].reasons, BTreeMap::from([("wrong_audience".to_owned(), 2), ("expired".to_owned(), 1)]));
        assert_eq!((w[1].rule.as_str(), w[1].would_allow, w[1].would_deny), ("quiet", 0, 0), "audited but not asked: zero");
        // Ten minutes on, the first minute has left the window.
        let w = log.window(&audited, t0 + 600);
        assert_eq!((w[0].would_allow, w[0].would_deny), (0, 3));
        let w = log.window(&audited, t0 + 1000);
        assert_eq!((w[0].would_allow, w[0].would_deny), (0, 0));
        assert_eq!(log.counter.with_label_values(&["shop/orders", "read", "would_deny", "wrong_audience"]).get(), 2);
    }
}
