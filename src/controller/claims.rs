//! The host claims a gateway's namespaces hold, between the controller's memory and the
//! `portcullis-gateway-<g>-hosts` ConfigMap (pure).
//!
//! The watch cache lags behind the controller's own writes. Reading the claims from it alone
//! would lose a claim written a moment ago whenever its policy is deleted before the cache
//! catches up (a `helm uninstall` right after an install), and the host would go to the next
//! namespace that asks. So the controller keeps what it wrote, and takes the cache's version
//! only when it is one the controller has not seen: an edit by the platform team (a release),
//! or the first read after a start.
//!
//! ```text
//!  cache shows a version we wrote or adopted ── keep memory (it is that version or newer)
//!  cache shows an unknown version ───────────── adopt it (someone edited the claims)
//!  cache shows none, having shown one ────────── deleted: every orphan claim is released
//! ```

use k8s_openapi::api::core::v1::ConfigMap;

use super::desired::ledger_from_configmap;
use crate::policy::ownership::HostLedger;

/// How many of our own recent versions are remembered (the cache is never further behind).
const KNOWN: usize = 16;

#[derive(Debug, Default)]
pub struct HeldClaims {
    ledger: HostLedger,
    /// resourceVersions of the ConfigMap that hold `ledger` or an older state of it.
    known: Vec<String>,
    /// Whether the cache has shown the ConfigMap since it was last adopted or written.
    seen: bool,
}

impl HeldClaims {
    /// The claims to compile with, given what the watch cache holds now; with the lines of an
    /// adopted version that are not claims (they are skipped, and so released).
    pub fn current(&mut self, stored: Option<&ConfigMap>) -> (&HostLedger, Vec<String>) {
        let mut problems = Vec::new();
        match stored {
            Some(cm) => {
                let rv = cm.metadata.resource_version.clone().unwrap_or_default();
                if !self.known.contains(&rv) {
                    let (ledger, p) = ledger_from_configmap(cm);
                    problems = p;
                    self.ledger = ledger;
                    self.known = vec![rv];
                }
                self.seen = true;
            }
            None if self.seen => {
                self.ledger = HostLedger::default();
                self.known.clear();
                self.seen = false;
            }
            None => {}
        }
        (&self.ledger, problems)
    }

    /// The claims as written (or found unchanged) after a compilation; `resource_version` of
    /// the object the write returned.
    pub fn written(&mut self, ledger: HostLedger, resource_version: Option<String>) {
        self.ledger = ledger;
        if let Some(rv) = resource_version
            && !self.known.contains(&rv)
        {
            self.known.push(rv);
            if self.known.len() > KNOWN {
                self.known.remove(0);
            }
            self.seen = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::desired::host_claims_configmap;
    use crate::policy::host::HostPattern;

    fn ledger(lines: &[(&str, &str)]) -> HostLedger {
        let mut l = HostLedger::default();
        for (p, ns) in lines {
            l.hold(HostPattern::parse(p).unwrap(), ns);
        }
        l
    }

    fn stored(l: &HostLedger, rv: &str) -> ConfigMap {
        let mut cm = host_claims_configmap("portcullis", "default", l);
        cm.metadata.resource_version = Some(rv.into());
        cm
    }

    #[test]
    fn a_cache_behind_our_own_write_never_loses_the_claim() {
        let mut held = HeldClaims::default();
        let owner = ledger(&[("api.a.example", "team-a")]);
        // First start: nothing stored yet.
        assert_eq!(held.current(None).0, &HostLedger::default());
        held.written(owner.clone(), Some("10".into()));
        // The cache has not seen the create yet, then shows it.
        assert_eq!(held.current(None).0, &owner);
        assert_eq!(held.current(Some(&stored(&owner, "10"))).0, &owner);
        // A second write; the cache still shows the first version for a while.
        let both = ledger(&[("api.a.example", "team-a"), ("api.b.example", "team-b")]);
        held.written(both.clone(), Some("11".into()));
        assert_eq!(held.current(Some(&stored(&owner, "10"))).0, &both, "a stale cache does not drop team-b's claim");
        assert_eq!(held.current(Some(&stored(&both, "11"))).0, &both);
    }

    #[test]
    fn an_edit_by_someone_else_is_adopted_and_a_deletion_releases_everything() {
        let mut held = HeldClaims::default();
        let both = ledger(&[("api.a.example", "team-a"), ("api.b.example", "team-b")]);
        // Adopted at start (written by an earlier controller).
        assert_eq!(held.current(Some(&stored(&both, "5"))).0, &both);
        // The platform team releases team-b's host by deleting its line.
        let released = ledger(&[("api.a.example", "team-a")]);
        let mut edited = stored(&both, "6");
        edited.data.as_mut().unwrap().insert("claims".into(), "api.a.example team-a\nnot a claim line\n".into());
        let (current, problems) = held.current(Some(&edited));
        assert_eq!(current, &released);
        assert_eq!(problems.len(), 1);
        // Deleting the ConfigMap releases every claim no policy holds.
        assert_eq!(held.current(None).0, &HostLedger::default());
    }
}
