//! Header and query parameter conditions of routes (Gateway API `Exact` matches the authorizer
//! reproduces), as a request meets them.

use http::{HeaderMap, HeaderValue};

use crate::policy::config::RequestCondition;

/// A request's headers and query as route conditions see them. A condition on a header sent
/// more than once, or on a query parameter repeated or percent-encoded (in its name or value),
/// is ambiguous: gateways join, pick or decode such values each their own way.
pub(super) struct Conditions<'a> {
    headers: &'a HeaderMap,
    query: Option<&'a str>,
    pub(super) ambiguous: std::cell::Cell<bool>,
}

impl<'a> Conditions<'a> {
    pub(super) fn of(headers: &'a HeaderMap, query: Option<&'a str>) -> Self {
        Self { headers, query, ambiguous: std::cell::Cell::new(false) }
    }

    pub(super) fn hold(&self, when: &[RequestCondition]) -> bool {
        when.iter().all(|c| {
            let got = match c {
                RequestCondition::Header { name, value } => self.header(name).map(|v| v == Some(value.as_bytes())),
                RequestCondition::Query { name, value } => self.query(name).map(|v| v == Some(value.as_bytes())),
            };
            got.unwrap_or_else(|()| {
                self.ambiguous.set(true);
                false
            })
        })
    }

    fn header(&self, name: &str) -> Result<Option<&[u8]>, ()> {
        let mut all = self.headers.get_all(name).iter();
        match (all.next(), all.next()) {
            (Some(_), Some(_)) => Err(()),
            (v, _) => Ok(v.map(HeaderValue::as_bytes)),
        }
    }

    fn query(&self, name: &str) -> Result<Option<&[u8]>, ()> {
        let encoded = |s: &str| s.contains(['%', '+']);
        let mut found = None;
        for pair in self.query.unwrap_or("").split('&') {
            let (n, v) = pair.split_once('=').unwrap_or((pair, ""));
            if n == name {
                if found.is_some() || encoded(v) {
                    return Err(());
                }
                found = Some(v.as_bytes());
            } else if encoded(n) {
                return Err(());
            }
        }
        Ok(found)
    }
}
