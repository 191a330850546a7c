//! Request path normalisation and path patterns.
//!
//! A request path is normalised exactly once, into a canonical form in which two paths that an
//! upstream could read as the same resource are the same string:
//!
//! 1. the query (after the first `?`) is cut off; an absolute-form target loses scheme and
//!    authority;
//! 2. every percent-encoding is decoded, except `%25` (`%`), `%3F` (`?`), `%23` (`#`) and `%3B`
//!    (`;`), which stay encoded with upper-case hex, as do bytes that may not appear raw in a path
//!    (space, `"`, `<`, `>`, `\``, `^`, `{`, `|`, `}`, non-ASCII);
//! 3. dot segments are removed and repeated slashes merged (RFC 3986 §5.2.4, clamped at the root);
//!    a trailing slash is kept.
//!
//! What cannot be normalised safely is rejected instead of guessed: an encoded `/` or `\`, a raw
//! `\`, `#` or `;`, NUL or any control character (raw or encoded), a malformed `%`, bytes that are
//! not UTF-8 (raw or encoded, so overlong forms such as `%C0%AF` too), and paths over
//! [`MAX_PATH_LEN`].
//!
//! Normalisation is idempotent, so a gateway that already normalised the path (Envoy with
//! `normalize_path` and `merge_slashes`) and Portcullis agree.

use std::fmt;

pub const MAX_PATH_LEN: usize = 8192;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PathError {
    Empty,
    NotAbsolute,
    TooLong,
    EncodedSlash,
    EncodedBackslash,
    Backslash,
    Nul,
    ControlCharacter,
    Fragment,
    PathParameter,
    MalformedPercent,
    InvalidUtf8,
    /// The path is valid but not in canonical form, and the integration forwards it as sent.
    NotNormalized,
}

impl PathError {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Empty => "empty path",
            Self::NotAbsolute => "path does not start with /",
            Self::TooLong => "path too long",
            Self::EncodedSlash => "encoded slash (%2F) in path",
            Self::EncodedBackslash => "encoded backslash (%5C) in path",
            Self::Backslash => "backslash in path",
            Self::Nul => "NUL in path",
            Self::ControlCharacter => "control character in path",
            Self::Fragment => "fragment (#) in path",
            Self::PathParameter => "path parameter (;) in path",
            Self::MalformedPercent => "malformed percent-encoding in path",
            Self::InvalidUtf8 => "path is not valid UTF-8",
            Self::NotNormalized => "path is not in normal form",
        }
    }
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::error::Error for PathError {}

/// What to do with a valid path that is not in normal form (`/a/../b`, `//`, `%61`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PathMode {
    /// Refuse it: the proxy forwards the path as the client sent it, and the upstream may route
    /// that form differently from the normal form Portcullis would decide on.
    #[default]
    Strict,
    /// Decide on the normal form: only for proxies that forward the normalised path upstream.
    Normalize,
}

impl PathMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Strict => "strict",
            Self::Normalize => "normalize",
        }
    }
}

impl std::str::FromStr for PathMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "strict" => Ok(Self::Strict),
            "normalize" => Ok(Self::Normalize),
            other => Err(format!("{other:?} is not a path mode (strict or normalize)")),
        }
    }
}

/// Normalises `path` under `mode`: in strict mode a path that normalisation would change is
/// refused.
pub fn normalize_as(path: &str, mode: PathMode) -> Result<String, PathError> {
    let normal = normalize(path)?;
    if mode == PathMode::Strict && normal != path {
        return Err(PathError::NotNormalized);
    }
    Ok(normal)
}

/// Splits a request target into its path and query (without `?`). An absolute-form target
/// (`http://host/path`) loses its scheme and authority.
pub fn split_target(target: &str) -> (&str, Option<&str>) {
    let (target, absolute) = strip_authority(target);
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    if absolute && path.is_empty() { ("/", query) } else { (path, query) }
}

fn strip_authority(target: &str) -> (&str, bool) {
    for scheme in ["http://", "https://"] {
        if target.len() >= scheme.len() && target.as_bytes()[..scheme.len()].eq_ignore_ascii_case(scheme.as_bytes()) {
            let rest = &target[scheme.len()..];
            return (rest.find(['/', '?']).map_or("", |i| &rest[i..]), true);
        }
    }
    (target, false)
}

/// Bytes that may stand raw in a canonical path (RFC 3986 `pchar` without `;`, plus `/`).
fn is_raw_ok(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'-' | b'.' | b'_' | b'~' | b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b'=' | b':' | b'@' | b'/'
        )
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

fn push_encoded(out: &mut Vec<u8>, b: u8) {
    out.extend_from_slice(&[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
}

/// Normalises a request path (query already removed). See the module documentation.
pub fn normalize(path: &str) -> Result<String, PathError> {
    let raw = path.as_bytes();
    if raw.is_empty() {
        return Err(PathError::Empty);
    }
    if raw.len() > MAX_PATH_LEN {
        return Err(PathError::TooLong);
    }
    if raw[0] != b'/' {
        return Err(PathError::NotAbsolute);
    }

    // Pass 1: decode into canonical bytes, checking UTF-8 of every non-ASCII run.
    let mut decoded: Vec<u8> = Vec::with_capacity(raw.len());
    let mut utf8_run: Vec<u8> = Vec::new();
    let mut i = 0;
    while i < raw.len() {
        let (byte, was_encoded) = if raw[i] == b'%' {
            let (Some(hi), Some(lo)) = (raw.get(i + 1).copied().and_then(hex_val), raw.get(i + 2).copied().and_then(hex_val)) else {
                return Err(PathError::MalformedPercent);
            };
            i += 3;
            ((hi << 4) | lo, true)
        } else {
            i += 1;
            (raw[i - 1], false)
        };

        if byte >= 0x80 {
            utf8_run.push(byte);
            push_encoded(&mut decoded, byte);
            continue;
        }
        if !utf8_run.is_empty() {
            std::str::from_utf8(&utf8_run).map_err(|_| PathError::InvalidUtf8)?;
            utf8_run.clear();
        }
        match byte {
            0 => return Err(PathError::Nul),
            0x01..=0x1f | 0x7f => return Err(PathError::ControlCharacter),
            b'/' if was_encoded => return Err(PathError::EncodedSlash),
            b'\\' if was_encoded => return Err(PathError::EncodedBackslash),
            b'\\' => return Err(PathError::Backslash),
            b'#' if !was_encoded => return Err(PathError::Fragment),
            b';' if !was_encoded => return Err(PathError::PathParameter),
            b'%' | b'?' | b'#' | b';' => push_encoded(&mut decoded, byte),
            b if is_raw_ok(b) => decoded.push(b),
            b => push_encoded(&mut decoded, b),
        }
    }
    if !utf8_run.is_empty() {
        std::str::from_utf8(&utf8_run).map_err(|_| PathError::InvalidUtf8)?;
    }

    // Pass 2: remove dot segments and merge slashes. `decoded` is ASCII.
    let text = std::str::from_utf8(&decoded).map_err(|_| PathError::InvalidUtf8)?;
    let mut segments: Vec<&str> = Vec::new();
    let mut trailing_slash = false;
    for seg in text.split('/').skip(1) {
        match seg {
            "" => trailing_slash = true,
            "." => trailing_slash = true,
            ".." => {
                segments.pop();
                trailing_slash = true;
            }
            s => {
                segments.push(s);
                trailing_slash = false;
            }
        }
    }
    let mut out = String::with_capacity(text.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if trailing_slash || segments.is_empty() {
        out.push('/');
    }
    Ok(out)
}

/// Whether a path is already in canonical form (what policy paths must be).
pub fn is_normalized(path: &str) -> bool {
    normalize(path).is_ok_and(|n| n == path)
}

/// A compiled path pattern of a rule.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PathPattern {
    Exact(String),
    /// Segment-aware prefix, stored without a trailing slash (`/` stays `/`).
    Prefix(String),
    Template(Template),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Template {
    pub source: String,
    pub segments: Vec<TemplateSegment>,
    /// Ends in `{**}`: matches any rest, including nothing.
    pub tail: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TemplateSegment {
    Literal(String),
    Param(String),
}

/// The order of pattern kinds at equal literal length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PatternKind {
    Exact = 0,
    Prefix = 1,
    Template = 2,
}

impl PathPattern {
    pub fn exact(path: &str) -> Result<Self, String> {
        check_pattern_path(path)?;
        Ok(Self::Exact(path.to_owned()))
    }

    pub fn prefix(path: &str) -> Result<Self, String> {
        check_pattern_path(path)?;
        let trimmed = path.trim_end_matches('/');
        Ok(Self::Prefix(if trimmed.is_empty() { "/".to_owned() } else { trimmed.to_owned() }))
    }

    pub fn template(source: &str) -> Result<Self, String> {
        if !source.starts_with('/') {
            return Err(format!("template {source:?} must start with /"));
        }
        let parts: Vec<&str> = source[1..].split('/').collect();
        let mut segments = Vec::with_capacity(parts.len());
        let mut tail = false;
        let mut names = Vec::new();
        for (i, part) in parts.iter().enumerate() {
            if *part == "{**}" {
                if i + 1 != parts.len() {
                    return Err(format!("template {source:?}: {{**}} may only be the last segment"));
                }
                tail = true;
            } else if let Some(name) = part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
                let valid = !name.is_empty()
                    && name.bytes().next().is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
                    && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
                if !valid {
                    return Err(format!("template {source:?}: parameter {part:?} must be {{name}} with letters, digits or _"));
                }
                if names.contains(&name) {
                    return Err(format!("template {source:?}: parameter {{{name}}} appears twice"));
                }
                names.push(name);
                segments.push(TemplateSegment::Param(name.to_owned()));
            } else if part.contains('{') || part.contains('}') {
                return Err(format!(
                    "template {source:?}: segment {part:?} mixes text and a parameter; a parameter must be a whole segment"
                ));
            } else {
                if part.is_empty() && i + 1 != parts.len() {
                    return Err(format!("template {source:?} has an empty segment"));
                }
                segments.push(TemplateSegment::Literal((*part).to_owned()));
            }
        }
        let literal_form: String = segments
            .iter()
            .map(|s| match s {
                TemplateSegment::Literal(l) => format!("/{l}"),
                TemplateSegment::Param(_) => "/x".to_owned(),
            })
            .collect();
        if !literal_form.is_empty() {
            check_pattern_path(&literal_form).map_err(|e| e.replace(&format!("{literal_form:?}"), &format!("{source:?}")))?;
        }
        if segments.iter().all(|s| matches!(s, TemplateSegment::Literal(_))) && !tail {
            return Err(format!("template {source:?} has no parameter; use exact instead"));
        }
        Ok(Self::Template(Template { source: source.to_owned(), segments, tail }))
    }

    pub fn kind(&self) -> PatternKind {
        match self {
            Self::Exact(_) => PatternKind::Exact,
            Self::Prefix(_) => PatternKind::Prefix,
            Self::Template(_) => PatternKind::Template,
        }
    }

    /// Characters that must match literally; the main precedence key.
    pub fn literal_len(&self) -> usize {
        match self {
            Self::Exact(p) | Self::Prefix(p) => p.len(),
            Self::Template(t) => t
                .segments
                .iter()
                .map(|s| match s {
                    TemplateSegment::Literal(l) => l.len() + 1,
                    TemplateSegment::Param(_) => 1,
                })
                .sum(),
        }
    }

    /// The pattern as a user wrote it (normalised).
    pub fn text(&self) -> &str {
        match self {
            Self::Exact(p) | Self::Prefix(p) => p,
            Self::Template(t) => &t.source,
        }
    }

    /// Matches a normalised path.
    pub fn matches(&self, path: &str) -> bool {
        match self {
            Self::Exact(p) => p == path,
            Self::Prefix(p) => prefix_matches(p, path),
            Self::Template(t) => t.matches(path),
        }
    }
}

impl fmt::Display for PathPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exact(p) => write!(f, "exact {p}"),
            Self::Prefix(p) => write!(f, "prefix {p}"),
            Self::Template(t) => write!(f, "template {}", t.source),
        }
    }
}

pub fn prefix_matches(prefix: &str, path: &str) -> bool {
    prefix == "/" || (path.starts_with(prefix) && matches!(path.as_bytes().get(prefix.len()), None | Some(b'/')))
}

impl Template {
    /// The parameters of a normalised path this template matches, percent-decoded; `None` when
    /// it does not match or a parameter is not valid UTF-8 text.
    pub fn params(&self, path: &str) -> Option<Vec<(String, String)>> {
        if !self.matches(path) {
            return None;
        }
        self.segments
            .iter()
            .zip(path[1..].split('/'))
            .filter_map(|(seg, part)| match seg {
                TemplateSegment::Param(name) => Some(percent_decode(part).map(|v| (name.clone(), v))),
                TemplateSegment::Literal(_) => None,
            })
            .collect()
    }

    pub fn matches(&self, path: &str) -> bool {
        let mut parts = path[1..].split('/');
        for seg in &self.segments {
            let Some(part) = parts.next() else { return false };
            match seg {
                TemplateSegment::Literal(l) if l != part => return false,
                TemplateSegment::Param(_) if part.is_empty() => return false,
                _ => {}
            }
        }
        match parts.next() {
            None => true,
            Some(_) => self.tail,
        }
    }
}

/// Decodes every `%XX` of a path segment; `None` for a malformed escape or bytes that are not
/// UTF-8.
pub fn percent_decode(segment: &str) -> Option<String> {
    let raw = segment.as_bytes();
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'%' {
            let hi = raw.get(i + 1).copied().and_then(hex_val)?;
            let lo = raw.get(i + 2).copied().and_then(hex_val)?;
            out.push((hi << 4) | lo);
            i += 3;
        } else {
            out.push(raw[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn check_pattern_path(path: &str) -> Result<(), String> {
    match normalize(path) {
        Ok(n) if n == path => Ok(()),
        Ok(n) => Err(format!("path {path:?} is not in normalised form; write {n:?}")),
        Err(e) => Err(format!("path {path:?} can never match: {e}")),
    }
}

/// Every prefix key a normalised path can match, longest first: the path itself (without a
/// trailing slash), each ancestor, and `/`.
pub fn prefix_keys(path: &str) -> impl Iterator<Item = &str> {
    let trimmed = path.trim_end_matches('/');
    let first = if trimmed.is_empty() { None } else { Some(trimmed) };
    let ancestors = trimmed.rmatch_indices('/').filter(|(i, _)| *i > 0).map(move |(i, _)| &trimmed[..i]);
    first.into_iter().chain(ancestors).chain(std::iter::once("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(p: &str) -> Result<String, PathError> {
        normalize(p)
    }

    #[test]
    fn decodes_unreserved_and_safe_characters() {
        assert_eq!(n("/%6Frders/%7euser").unwrap(), "/orders/~user");
        assert_eq!(n("/a%21b%40c%3Ad").unwrap(), "/a!b@c:d");
        assert_eq!(n("/caf%c3%a9").unwrap(), "/caf%C3%A9");
        assert_eq!(n("/café").unwrap(), "/caf%C3%A9");
    }

    #[test]
    fn keeps_structural_characters_encoded() {
        assert_eq!(n("/a%25b").unwrap(), "/a%25b");
        assert_eq!(n("/a%3fb").unwrap(), "/a%3Fb");
        assert_eq!(n("/a%23b").unwrap(), "/a%23b");
        assert_eq!(n("/a%3bb").unwrap(), "/a%3Bb");
        assert_eq!(n("/a%20b").unwrap(), "/a%20b");
        assert_eq!(n("/a\"b").unwrap(), "/a%22b");
        // Decoding happens once: a double-encoded slash stays data.
        assert_eq!(n("/a%252Fb").unwrap(), "/a%252Fb");
    }

    #[test]
    fn removes_dot_segments_and_merges_slashes() {
        assert_eq!(n("/orders/../admin").unwrap(), "/admin");
        assert_eq!(n("/orders/./1").unwrap(), "/orders/1");
        assert_eq!(n("//admin").unwrap(), "/admin");
        assert_eq!(n("/a//b///c").unwrap(), "/a/b/c");
        assert_eq!(n("/%2e%2e/%2E%2e/admin").unwrap(), "/admin");
        assert_eq!(n("/a/b/..").unwrap(), "/a/");
        assert_eq!(n("/a/.").unwrap(), "/a/");
        assert_eq!(n("/..").unwrap(), "/");
        assert_eq!(n("/").unwrap(), "/");
        assert_eq!(n("/orders/").unwrap(), "/orders/");
        assert_eq!(n("/.well-known/jwks.json").unwrap(), "/.well-known/jwks.json");
        assert_eq!(n("/a/...").unwrap(), "/a/...");
    }

    #[test]
    fn rejects_what_cannot_be_normalised_safely() {
        assert_eq!(n("/orders%2F..%2Fadmin"), Err(PathError::EncodedSlash));
        assert_eq!(n("/orders%2f1"), Err(PathError::EncodedSlash));
        assert_eq!(n("/orders%5C..%5Cadmin"), Err(PathError::EncodedBackslash));
        assert_eq!(n("/orders\\..\\admin"), Err(PathError::Backslash));
        assert_eq!(n("/admin%00.json"), Err(PathError::Nul));
        assert_eq!(n("/admin%0a"), Err(PathError::ControlCharacter));
        assert_eq!(n("/admin\t"), Err(PathError::ControlCharacter));
        assert_eq!(n("/a#b"), Err(PathError::Fragment));
        assert_eq!(n("/admin;jsessionid=1"), Err(PathError::PathParameter));
        assert_eq!(n("/a%zz"), Err(PathError::MalformedPercent));
        assert_eq!(n("/a%4"), Err(PathError::MalformedPercent));
        assert_eq!(n("/%C0%AF"), Err(PathError::InvalidUtf8));
        assert_eq!(n("/%ff"), Err(PathError::InvalidUtf8));
        assert_eq!(n("/%C3"), Err(PathError::InvalidUtf8));
        assert_eq!(n("orders"), Err(PathError::NotAbsolute));
        assert_eq!(n(""), Err(PathError::Empty));
        assert_eq!(n(&format!("/{}", "a".repeat(MAX_PATH_LEN))), Err(PathError::TooLong));
    }

    #[test]
    fn splits_targets() {
        assert_eq!(split_target("/a?b=c?d"), ("/a", Some("b=c?d")));
        assert_eq!(split_target("/a"), ("/a", None));
        assert_eq!(split_target("http://h:80/x?y"), ("/x", Some("y")));
        assert_eq!(split_target("HTTPS://h"), ("/", None));
        assert_eq!(split_target("http://h?q"), ("/", Some("q")));
    }

    #[test]
    fn prefix_is_segment_aware() {
        let p = PathPattern::prefix("/orders").unwrap();
        assert!(p.matches("/orders"));
        assert!(p.matches("/orders/"));
        assert!(p.matches("/orders/1"));
        assert!(!p.matches("/ordersX"));
        assert!(!p.matches("/order"));
        assert_eq!(PathPattern::prefix("/orders/").unwrap(), p);
        assert!(PathPattern::prefix("/").unwrap().matches("/anything/at/all"));
    }

    #[test]
    fn templates_match_whole_segments() {
        let t = PathPattern::template("/orders/{id}/items").unwrap();
        assert!(t.matches("/orders/42/items"));
        assert!(!t.matches("/orders/42/items/1"));
        assert!(!t.matches("/orders//items"));
        assert!(!t.matches("/orders/42"));
        let tail = PathPattern::template("/files/{owner}/{**}").unwrap();
        assert!(tail.matches("/files/bob"));
        assert!(tail.matches("/files/bob/"));
        assert!(tail.matches("/files/bob/a/b/c"));
        assert!(!tail.matches("/files"));
        assert!(PathPattern::template("/{**}").unwrap().matches("/"));
    }

    #[test]
    fn rejects_bad_patterns_with_a_reason() {
        assert!(PathPattern::exact("/orders/../admin").unwrap_err().contains("normalised form"));
        assert!(PathPattern::prefix("/a%2Fb").unwrap_err().contains("can never match"));
        assert!(PathPattern::exact("/%7euser").unwrap_err().contains("\"/~user\""));
        assert!(PathPattern::template("/a/{**}/b").unwrap_err().contains("last segment"));
        assert!(PathPattern::template("/a/{id}.json").unwrap_err().contains("whole segment"));
        assert!(PathPattern::template("/a/{id}/{id}").unwrap_err().contains("twice"));
        assert!(PathPattern::template("/a/b").unwrap_err().contains("use exact"));
        assert!(PathPattern::template("/a//{x}").unwrap_err().contains("empty segment"));
    }

    #[test]
    fn literal_length_orders_specificity() {
        let t = PathPattern::template("/orders/{id}/items").unwrap();
        assert_eq!(t.literal_len(), "/orders//items".len());
        assert_eq!(PathPattern::prefix("/orders").unwrap().literal_len(), 7);
    }

    #[test]
    fn prefix_keys_walk_up_to_the_root() {
        assert_eq!(prefix_keys("/a/b/c").collect::<Vec<_>>(), ["/a/b/c", "/a/b", "/a", "/"]);
        assert_eq!(prefix_keys("/a/b/").collect::<Vec<_>>(), ["/a/b", "/a", "/"]);
        assert_eq!(prefix_keys("/").collect::<Vec<_>>(), ["/"]);
    }

    mod properties {
        use super::super::*;
        use proptest::prelude::*;

        /// Paths made of the characters that matter to normalisation.
        fn raw_path() -> impl Strategy<Value = String> {
            proptest::collection::vec(
                prop_oneof![
                    Just("/".to_owned()),
                    Just(".".to_owned()),
                    Just("..".to_owned()),
                    Just("%2e".to_owned()),
                    Just("%2F".to_owned()),
                    Just("%5c".to_owned()),
                    Just("%00".to_owned()),
                    Just("%41".to_owned()),
                    Just("%25".to_owned()),
                    Just("%C3%A9".to_owned()),
                    Just("%C0%AF".to_owned()),
                    Just(";".to_owned()),
                    Just("\\".to_owned()),
                    Just("~".to_owned()),
                    "[a-z]{1,3}".prop_map(|s| s),
                ],
                0..12,
            )
            .prop_map(|parts| format!("/{}", parts.concat()))
        }

        /// A clean path and a way of writing it that an upstream reads the same.
        fn disguised() -> impl Strategy<Value = (String, String)> {
            (proptest::collection::vec("[a-z]{1,4}", 1..6), proptest::collection::vec(0u8..6, 1..6)).prop_map(|(segs, tricks)| {
                let clean = format!("/{}", segs.join("/"));
                let mut out = String::new();
                for (i, seg) in segs.iter().enumerate() {
                    match tricks[i % tricks.len()] {
                        0 => out.push_str(&format!("/{seg}")),
                        1 => out.push_str(&format!("//{seg}")),
                        2 => out.push_str(&format!("/./{seg}")),
                        3 => out.push_str(&format!("/zz/../{seg}")),
                        4 => out.push_str(&format!("/%2e/{}", seg.bytes().map(|b| format!("%{b:02x}")).collect::<String>())),
                        _ => out.push_str(&format!("/{seg}/%2E%2E/{seg}")),
                    }
                }
                (clean, out)
            })
        }

        proptest! {
            #[test]
            fn normalisation_is_idempotent(p in raw_path()) {
                if let Ok(once) = normalize(&p) {
                    prop_assert_eq!(normalize(&once), Ok(once.clone()));
                }
            }

            #[test]
            fn normalised_paths_hold_no_tricks(p in raw_path()) {
                if let Ok(n) = normalize(&p) {
                    prop_assert!(n.starts_with('/'));
                    for bad in ["//", "/./", "/../", "%2F", "%5C", "%00", "\\", ";"] {
                        prop_assert!(!n.contains(bad), "{} holds {}", n, bad);
                    }
                    prop_assert!(!n.ends_with("/.") && !n.ends_with("/.."));
                }
            }

            #[test]
            fn disguises_normalise_to_the_clean_path((clean, disguised) in disguised()) {
                prop_assert_eq!(normalize(&disguised), Ok(clean));
            }

            #[test]
            fn an_encoded_separator_or_nul_is_always_rejected((_, disguised) in disguised(), at in 0usize..64, which in 0usize..4) {
                let insert = ["%2F", "%2f", "%5C", "%00"][which];
                // Anywhere after the leading slash, even inside another escape (which then is malformed).
                let at = 1 + at % disguised.len();
                let tricked = format!("{}{insert}{}", &disguised[..at], &disguised[at..]);
                prop_assert!(normalize(&tricked).is_err(), "{} was accepted", tricked);
            }
        }
    }
}
