//! Claim requirements: compiled from the resource form once, evaluated per request.

use std::fmt;

use http::{HeaderMap, HeaderName};
use regex::Regex;
use serde_json::Value;

use crate::api::Requirement;

/// Where a claim sits in the token: one entry per level, so that names containing dots or
/// slashes (`https://example.com/roles`) are as expressible as nested ones (`realm_access.roles`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ClaimPath(pub Vec<String>);

impl ClaimPath {
    pub fn dotted(path: &str) -> Result<Self, String> {
        if path.contains("://") {
            return Err(format!(
                "claim {path:?} looks like a URL, and a dotted name is split at every dot; name it with claimPath: [{path:?}]"
            ));
        }
        if path.is_empty() || path.split('.').any(str::is_empty) {
            return Err(format!("claim {path:?} has an empty segment"));
        }
        Ok(Self(path.split('.').map(str::to_owned).collect()))
    }

    pub fn segments(segments: &[String]) -> Result<Self, String> {
        if segments.is_empty() || segments.iter().any(String::is_empty) {
            return Err("claimPath needs at least one non-empty entry".into());
        }
        Ok(Self(segments.to_vec()))
    }

    /// The value at this path; `None` when absent or JSON null.
    pub fn lookup<'v>(&self, claims: &'v Value) -> Option<&'v Value> {
        let mut v = claims;
        for seg in &self.0 {
            v = v.as_object()?.get(seg.as_str())?;
        }
        (!v.is_null()).then_some(v)
    }
}

impl fmt::Display for ClaimPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.iter().any(|s| s.contains('.')) { write!(f, "{:?}", self.0) } else { f.write_str(&self.0.join(".")) }
    }
}

#[derive(Debug, Clone)]
pub enum ClaimOp {
    Equals(String),
    In(Vec<String>),
    NotIn(Vec<String>),
    ContainsAll(Vec<String>),
    ContainsAny(Vec<String>),
    Exists,
    Absent,
    Matches(Regex),
    EqualsHeader(HeaderName),
    EqualsPathParam(String),
}

/// What a requirement may compare a claim with besides the claims: the request's headers and
/// the parameters of the path template the request matched.
#[derive(Clone, Copy)]
pub struct RequestFacts<'a> {
    pub headers: &'a HeaderMap,
    /// `(name, percent-decoded value)` of the matched template's parameters.
    pub params: &'a [(String, String)],
}

#[derive(Debug, Clone)]
pub struct ClaimRequirement {
    pub path: ClaimPath,
    pub op: ClaimOp,
}

/// Why a requirement did not hold. Never carries claim values: they may be personal data, and
/// this ends up in logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unmet {
    ClaimAbsent,
    ClaimPresent,
    WrongType,
    NoMatch,
    HeaderMissing,
    ParamMissing,
}

impl Unmet {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ClaimAbsent => "claim is absent",
            Self::ClaimPresent => "claim is present",
            Self::WrongType => "claim has the wrong type",
            Self::NoMatch => "claim value does not satisfy it",
            Self::HeaderMissing => "request header is missing or repeated",
            Self::ParamMissing => "path parameter is missing or not valid text",
        }
    }
}

/// The scalar text of a claim: strings as they are, numbers and booleans as JSON prints them.
fn scalar_text(v: &Value) -> Option<std::borrow::Cow<'_, str>> {
    match v {
        Value::String(s) => Some(s.as_str().into()),
        Value::Number(n) => Some(n.to_string().into()),
        Value::Bool(b) => Some(if *b { "true" } else { "false" }.into()),
        _ => None,
    }
}

/// A claim read as a set: a JSON array of scalars, or a space-delimited string (`scope`).
fn set_items(v: &Value) -> Option<Vec<std::borrow::Cow<'_, str>>> {
    match v {
        Value::String(s) => Some(s.split_ascii_whitespace().map(Into::into).collect()),
        Value::Array(items) => items.iter().map(scalar_text).collect(),
        _ => None,
    }
}

impl ClaimRequirement {
    pub fn compile(req: &Requirement) -> Result<Self, String> {
        let path = match (&req.claim, &req.claim_path) {
            (Some(c), None) => ClaimPath::dotted(c)?,
            (None, Some(p)) => ClaimPath::segments(p)?,
            _ => return Err("exactly one of claim or claimPath must be set".into()),
        };
        let mut ops = Vec::new();
        if let Some(v) = &req.equals {
            ops.push(ClaimOp::Equals(v.clone()));
        }
        if let Some(v) = &req.in_ {
            ops.push(ClaimOp::In(non_empty("in", v)?));
        }
        if let Some(v) = &req.not_in {
            ops.push(ClaimOp::NotIn(non_empty("notIn", v)?));
        }
        if let Some(v) = &req.contains_all {
            ops.push(ClaimOp::ContainsAll(non_empty("containsAll", v)?));
        }
        if let Some(v) = &req.contains_any {
            ops.push(ClaimOp::ContainsAny(non_empty("containsAny", v)?));
        }
        match req.exists {
            Some(true) => ops.push(ClaimOp::Exists),
            Some(false) => return Err("exists can only be true; use absent: true".into()),
            None => {}
        }
        match req.absent {
            Some(true) => ops.push(ClaimOp::Absent),
            Some(false) => return Err("absent can only be true; use exists: true".into()),
            None => {}
        }
        if let Some(re) = &req.matches {
            let anchored = format!("^(?:{re})$");
            let compiled = regex::RegexBuilder::new(&anchored)
                .size_limit(1 << 20)
                .build()
                .map_err(|e| format!("matches {re:?} is not a valid regular expression: {e}"))?;
            ops.push(ClaimOp::Matches(compiled));
        }
        if let Some(h) = &req.equals_header {
            let name = HeaderName::from_bytes(h.as_bytes()).map_err(|_| format!("equalsHeader {h:?} is not a header name"))?;
            ops.push(ClaimOp::EqualsHeader(name));
        }
        if let Some(p) = &req.equals_path_param {
            ops.push(ClaimOp::EqualsPathParam(p.clone()));
        }
        if ops.len() != 1 {
            return Err(format!(
                "claim {path}: exactly one operator (equals, in, notIn, containsAll, containsAny, exists, absent, matches, equalsHeader, equalsPathParam) must be set, found {}",
                ops.len()
            ));
        }
        Ok(Self { path, op: ops.remove(0) })
    }

    /// The path parameter this requirement compares with, if any.
    pub fn path_param(&self) -> Option<&str> {
        match &self.op {
            ClaimOp::EqualsPathParam(p) => Some(p),
            _ => None,
        }
    }

    pub fn check(&self, claims: &Value, facts: RequestFacts<'_>) -> Result<(), Unmet> {
        let value = self.path.lookup(claims);
        let value = match (&self.op, value) {
            (ClaimOp::Absent, None) => return Ok(()),
            (ClaimOp::Absent, Some(_)) => return Err(Unmet::ClaimPresent),
            (_, None) => return Err(Unmet::ClaimAbsent),
            (_, Some(v)) => v,
        };
        let holds = match &self.op {
            ClaimOp::Exists => true,
            ClaimOp::Absent => unreachable!("handled above"),
            ClaimOp::Equals(want) => scalar_text(value).ok_or(Unmet::WrongType)? == want.as_str(),
            ClaimOp::In(set) => {
                let v = scalar_text(value).ok_or(Unmet::WrongType)?;
                set.iter().any(|s| *s == v)
            }
            ClaimOp::NotIn(set) => match value {
                Value::Array(_) => set_items(value).ok_or(Unmet::WrongType)?.iter().all(|i| !set.iter().any(|s| s == i)),
                _ => {
                    let v = scalar_text(value).ok_or(Unmet::WrongType)?;
                    !set.iter().any(|s| *s == v)
                }
            },
            ClaimOp::ContainsAll(want) => {
                let items = set_items(value).ok_or(Unmet::WrongType)?;
                want.iter().all(|w| items.iter().any(|i| i == w))
            }
            ClaimOp::ContainsAny(want) => {
                let items = set_items(value).ok_or(Unmet::WrongType)?;
                want.iter().any(|w| items.iter().any(|i| i == w))
            }
            ClaimOp::Matches(re) => match value {
                Value::Array(items) => items.iter().filter_map(scalar_text).any(|t| re.is_match(&t)),
                _ => re.is_match(&scalar_text(value).ok_or(Unmet::WrongType)?),
            },
            ClaimOp::EqualsHeader(name) => {
                let mut values = facts.headers.get_all(name).iter();
                let (Some(header), None) = (values.next(), values.next()) else {
                    return Err(Unmet::HeaderMissing);
                };
                let v = scalar_text(value).ok_or(Unmet::WrongType)?;
                header.as_bytes() == v.as_bytes()
            }
            ClaimOp::EqualsPathParam(name) => {
                let param = facts.params.iter().find(|(n, _)| n == name).ok_or(Unmet::ParamMissing)?;
                scalar_text(value).ok_or(Unmet::WrongType)? == param.1.as_str()
            }
        };
        if holds { Ok(()) } else { Err(Unmet::NoMatch) }
    }

    /// The scopes this requirement asks for, for `WWW-Authenticate: ... scope="..."`.
    pub fn required_scopes(&self) -> Option<&[String]> {
        let is_scope = self.path.0.len() == 1 && matches!(self.path.0[0].as_str(), "scope" | "scp");
        match &self.op {
            ClaimOp::ContainsAll(v) | ClaimOp::ContainsAny(v) if is_scope => Some(v),
            _ => None,
        }
    }
}

fn non_empty(op: &str, v: &[String]) -> Result<Vec<String>, String> {
    if v.is_empty() { Err(format!("{op} needs at least one value")) } else { Ok(v.to_vec()) }
}

impl fmt::Display for ClaimRequirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = &self.path;
        match &self.op {
            ClaimOp::Equals(v) => write!(f, "{p} equals {v:?}"),
            ClaimOp::In(v) => write!(f, "{p} in {v:?}"),
            ClaimOp::NotIn(v) => write!(f, "{p} notIn {v:?}"),
            ClaimOp::ContainsAll(v) => write!(f, "{p} containsAll {v:?}"),
            ClaimOp::ContainsAny(v) => write!(f, "{p} containsAny {v:?}"),
            ClaimOp::Exists => write!(f, "{p} exists"),
            ClaimOp::Absent => write!(f, "{p} absent"),
            ClaimOp::Matches(re) => {
                let src = re.as_str();
                write!(f, "{p} matches {:?}", &src[4..src.len() - 2])
            }
            ClaimOp::EqualsHeader(h) => write!(f, "{p} equalsHeader {h}"),
            ClaimOp::EqualsPathParam(n) => write!(f, "{p} equalsPathParam {{{n}}}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn req(v: Value) -> ClaimRequirement {
        ClaimRequirement::compile(&serde_json::from_value(v).unwrap()).unwrap()
    }

    fn claims() -> Value {
        json!({
            "sub": "alice",
            "scope": "orders:read orders:write",
            "realm_access": {"roles": ["clerk", "viewer"]},
            "https://example.com/roles": ["admin"],
            "tenant": "acme",
            "level": 3,
            "verified": true,
            "nothing": null,
        })
    }

    fn check(r: Value) -> Result<(), Unmet> {
        let mut headers = HeaderMap::new();
        headers.insert("x-tenant", "acme".parse().unwrap());
        req(r).check(&claims(), RequestFacts { headers: &headers, params: &[] })
    }

    #[test]
    fn scopes_split_on_spaces() {
        assert_eq!(check(json!({"claim": "scope", "containsAll": ["orders:read"]})), Ok(()));
        assert_eq!(check(json!({"claim": "scope", "containsAll": ["orders:read", "orders:admin"]})), Err(Unmet::NoMatch));
        assert_eq!(check(json!({"claim": "scope", "containsAny": ["x", "orders:write"]})), Ok(()));
        // A scope is a whole word, never a substring.
        assert_eq!(check(json!({"claim": "scope", "containsAny": ["orders"]})), Err(Unmet::NoMatch));
    }

    #[test]
    fn nested_and_dotted_names_are_both_expressible() {
        assert_eq!(check(json!({"claim": "realm_access.roles", "containsAny": ["clerk", "admin"]})), Ok(()));
        assert_eq!(check(json!({"claim": "realm_access.roles", "containsAny": ["admin"]})), Err(Unmet::NoMatch));
        assert_eq!(check(json!({"claimPath": ["https://example.com/roles"], "containsAll": ["admin"]})), Ok(()));
        // A URL as a dotted name would split at every dot and never match: refused, with the fix.
        let err = ClaimRequirement::compile(
            &serde_json::from_value(json!({"claim": "https://example.com/roles", "containsAll": ["admin"]})).unwrap(),
        )
        .unwrap_err();
        assert!(err.contains("claimPath: [\"https://example.com/roles\"]"), "{err}");
    }

    #[test]
    fn scalar_operators() {
        assert_eq!(check(json!({"claim": "tenant", "equals": "acme"})), Ok(()));
        assert_eq!(check(json!({"claim": "level", "equals": "3"})), Ok(()));
        assert_eq!(check(json!({"claim": "verified", "equals": "true"})), Ok(()));
        assert_eq!(check(json!({"claim": "tenant", "in": ["globex", "acme"]})), Ok(()));
        assert_eq!(check(json!({"claim": "tenant", "notIn": ["acme"]})), Err(Unmet::NoMatch));
        assert_eq!(check(json!({"claim": "realm_access.roles", "notIn": ["banned"]})), Ok(()));
        assert_eq!(check(json!({"claim": "realm_access.roles", "notIn": ["viewer"]})), Err(Unmet::NoMatch));
        assert_eq!(check(json!({"claim": "missing", "notIn": ["x"]})), Err(Unmet::ClaimAbsent));
        assert_eq!(check(json!({"claim": "realm_access", "equals": "x"})), Err(Unmet::WrongType));
    }

    #[test]
    fn presence_operators_treat_null_as_absent() {
        assert_eq!(check(json!({"claim": "sub", "exists": true})), Ok(()));
        assert_eq!(check(json!({"claim": "nothing", "exists": true})), Err(Unmet::ClaimAbsent));
        assert_eq!(check(json!({"claim": "nothing", "absent": true})), Ok(()));
        assert_eq!(check(json!({"claim": "sub", "absent": true})), Err(Unmet::ClaimPresent));
    }

    #[test]
    fn matches_is_anchored() {
        assert_eq!(check(json!({"claim": "sub", "matches": "ali.*"})), Ok(()));
        assert_eq!(check(json!({"claim": "sub", "matches": "lic"})), Err(Unmet::NoMatch));
        assert_eq!(check(json!({"claim": "sub", "matches": "x|alice"})), Ok(()));
        assert_eq!(check(json!({"claim": "realm_access.roles", "matches": "cl.*"})), Ok(()));
    }

    #[test]
    fn equals_header_compares_exactly() {
        assert_eq!(check(json!({"claim": "tenant", "equalsHeader": "X-Tenant"})), Ok(()));
        assert_eq!(check(json!({"claim": "sub", "equalsHeader": "X-Tenant"})), Err(Unmet::NoMatch));
        assert_eq!(check(json!({"claim": "tenant", "equalsHeader": "X-Other"})), Err(Unmet::HeaderMissing));
        let mut two = HeaderMap::new();
        two.append("x-tenant", "acme".parse().unwrap());
        two.append("x-tenant", "globex".parse().unwrap());
        let r = req(json!({"claim": "tenant", "equalsHeader": "X-Tenant"}));
        assert_eq!(r.check(&claims(), RequestFacts { headers: &two, params: &[] }), Err(Unmet::HeaderMissing));
    }

    #[test]
    fn compile_errors_are_specific() {
        let err = |v: Value| ClaimRequirement::compile(&serde_json::from_value(v).unwrap()).unwrap_err();
        assert!(err(json!({"claim": "a", "equals": "x", "exists": true})).contains("found 2"));
        assert!(err(json!({"claim": "a"})).contains("found 0"));
        assert!(err(json!({"claim": "a..b", "exists": true})).contains("empty segment"));
        assert!(err(json!({"claim": "a", "matches": "("})).contains("not a valid regular expression"));
        assert!(err(json!({"claim": "a", "claimPath": ["a"], "exists": true})).contains("exactly one of claim"));
        assert!(err(json!({"claim": "a", "exists": false})).contains("absent: true"));
    }

    #[test]
    fn descriptions_name_the_requirement_without_values_of_the_token() {
        assert_eq!(req(json!({"claim": "scope", "containsAll": ["a"]})).to_string(), r#"scope containsAll ["a"]"#);
        assert_eq!(req(json!({"claim": "sub", "matches": "a.*"})).to_string(), r#"sub matches "a.*""#);
        assert_eq!(req(json!({"claimPath": ["https://x.io/r"], "exists": true})).to_string(), r#"["https://x.io/r"] exists"#);
    }
}
