//! Workload identity: what a Kubernetes ServiceAccount token says about its caller (pure).
//!
//! A projected token names its ServiceAccount twice: `sub` (`system:serviceaccount:NS:NAME`) and
//! the private `kubernetes.io` claim (`namespace`, `serviceaccount.name`). Both must agree, or the
//! token is not taken as a workload's. Legacy Secret-based tokens carry neither `exp` nor the
//! `kubernetes.io` claim, and are refused before this.

use serde_json::Value;

pub use crate::api::service_account_username as username;

/// A ServiceAccount, as a token names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Workload<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
}

impl Workload<'_> {
    pub fn username(&self) -> String {
        username(self.namespace, self.name)
    }
}

impl std::fmt::Display for Workload<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// The ServiceAccount a token's claims name, when `sub` and `kubernetes.io` agree.
pub fn of_claims(claims: &Value) -> Option<Workload<'_>> {
    let k = claims.get("kubernetes.io")?;
    let namespace = k.get("namespace")?.as_str()?;
    let name = k.get("serviceaccount")?.get("name")?.as_str()?;
    let sub = claims.get("sub")?.as_str()?;
    let rest = sub.strip_prefix("system:serviceaccount:")?;
    (rest.split_once(':') == Some((namespace, name)) && !namespace.is_empty() && !name.is_empty()).then_some(Workload { namespace, name })
}

/// `namespace/name` or `namespace/*` (validated before), as (namespace, name or any).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct WorkloadPattern {
    pub namespace: String,
    pub name: Option<String>,
}

impl WorkloadPattern {
    pub fn parse(s: &str) -> Result<Self, String> {
        let (namespace, name) = super::validate::parse_service_account(s)?;
        Ok(Self { namespace: namespace.to_owned(), name: name.map(str::to_owned) })
    }

    pub fn matches(&self, w: Workload<'_>) -> bool {
        self.namespace == w.namespace && self.name.as_deref().is_none_or(|n| n == w.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn token(sub: &str, ns: &str, name: &str) -> Value {
        json!({"sub": sub, "kubernetes.io": {"namespace": ns, "serviceaccount": {"name": name, "uid": "u"}}})
    }

    #[test]
    fn a_workload_is_named_only_when_sub_and_the_kubernetes_claim_agree() {
        let t = token("system:serviceaccount:shop:checkout", "shop", "checkout");
        assert_eq!(of_claims(&t), Some(Workload { namespace: "shop", name: "checkout" }));
        assert_eq!(of_claims(&t).unwrap().username(), "system:serviceaccount:shop:checkout");
        for bad in [
            token("system:serviceaccount:shop:other", "shop", "checkout"),
            token("system:serviceaccount:admin:checkout", "shop", "checkout"),
            token("checkout", "shop", "checkout"),
            token("system:serviceaccount:shop:checkout:x", "shop", "checkout"),
            token("system:serviceaccount::", "", ""),
            json!({"sub": "system:serviceaccount:shop:checkout"}),
            json!({"sub": "system:serviceaccount:shop:checkout", "kubernetes.io/serviceaccount/namespace": "shop"}),
        ] {
            assert_eq!(of_claims(&bad), None, "{bad}");
        }
    }

    #[test]
    fn patterns_name_one_account_or_a_whole_namespace() {
        let w = Workload { namespace: "shop", name: "checkout" };
        assert!(WorkloadPattern::parse("shop/checkout").unwrap().matches(w));
        assert!(WorkloadPattern::parse("shop/*").unwrap().matches(w));
        assert!(!WorkloadPattern::parse("shop/check").unwrap().matches(w));
        assert!(!WorkloadPattern::parse("shopx/*").unwrap().matches(w));
        for bad in ["shop", "/x", "shop/", "Shop/x", "shop/x/y", "shop/-x", "shop/**"] {
            assert!(WorkloadPattern::parse(bad).is_err(), "{bad}");
        }
    }
}
