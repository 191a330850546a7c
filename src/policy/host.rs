//! Host patterns (`api.example.com`, `*.example.com`) and request host normalisation.

use std::borrow::Cow;

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HostPattern {
    Exact(String),
    /// `*.example.com`, stored as `.example.com`: matches one or more labels before the suffix.
    Wildcard(String),
    Any,
}

impl HostPattern {
    pub fn parse(pattern: &str) -> Result<Self, String> {
        let (wild, name) = match pattern.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, pattern),
        };
        if !is_hostname(name) {
            return Err(format!("host {pattern:?} is not a lowercase DNS name or *.suffix wildcard (no port)"));
        }
        Ok(if wild { Self::Wildcard(format!(".{name}")) } else { Self::Exact(name.to_owned()) })
    }

    pub fn matches(&self, host: &str) -> bool {
        match self {
            Self::Exact(h) => h == host,
            Self::Wildcard(suffix) => host.len() > suffix.len() && host.ends_with(suffix.as_str()),
            Self::Any => true,
        }
    }
}

impl std::fmt::Display for HostPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Exact(h) => f.write_str(h),
            Self::Wildcard(s) => write!(f, "*{s}"),
            Self::Any => f.write_str("*"),
        }
    }
}

fn is_hostname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// Normalises a request's host (from `Host` or `X-Forwarded-Host`): lower case, no port, no
/// trailing dot. `None` when it is not a host name or IP literal.
pub fn normalize_host(raw: &str) -> Option<Cow<'_, str>> {
    let raw = raw.trim();
    let host = if raw.starts_with('[') {
        let end = raw.find(']')?;
        let rest = &raw[end + 1..];
        if !(rest.is_empty() || rest.strip_prefix(':').is_some_and(is_port)) {
            return None;
        }
        let inner = &raw[1..end];
        if inner.is_empty() || !inner.bytes().all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.') {
            return None;
        }
        &raw[..=end]
    } else {
        let host = match raw.rsplit_once(':') {
            Some((h, port)) if is_port(port) => h,
            Some(_) => return None,
            None => raw,
        };
        host.strip_suffix('.').unwrap_or(host)
    };
    if host.is_empty() || host.len() > 253 {
        return None;
    }
    // Every label non-empty, so that `a..example.com` or `.example.com` can never satisfy a
    // `*.example.com` wildcard.
    if !host.starts_with('[')
        && !host
            .split('.')
            .all(|l| !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
    {
        return None;
    }
    if host.bytes().any(|b| b.is_ascii_uppercase()) { Some(Cow::Owned(host.to_ascii_lowercase())) } else { Some(Cow::Borrowed(host)) }
}

fn is_port(p: &str) -> bool {
    !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_case_port_and_trailing_dot() {
        assert_eq!(normalize_host("API.Example.com:8443").unwrap(), "api.example.com");
        assert_eq!(normalize_host("api.example.com.").unwrap(), "api.example.com");
        assert_eq!(normalize_host("[::1]:8080").unwrap(), "[::1]");
        assert_eq!(normalize_host("10.0.0.1").unwrap(), "10.0.0.1");
        assert!(matches!(normalize_host("plain"), Some(Cow::Borrowed("plain"))));
    }

    #[test]
    fn rejects_what_is_not_a_host() {
        for bad in [
            "",
            "a b",
            "a:b",
            "a/b",
            "[::1",
            "[zz]",
            "a:99999999",
            "évil.com",
            "a@b",
            ".example.com",
            "a..example.com",
            "a.b..",
            ".",
            "a,b.com",
            "a.com, b.com",
        ] {
            assert!(normalize_host(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn wildcards_need_at_least_one_label() {
        let p = HostPattern::parse("*.example.com").unwrap();
        assert!(p.matches("a.example.com"));
        assert!(p.matches("a.b.example.com"));
        assert!(!p.matches("example.com"));
        assert!(!p.matches("badexample.com"));
        // Request hosts reach `matches` only normalised; malformed ones never get there.
        for bad in [".example.com", "a..example.com", "..example.com"] {
            assert!(normalize_host(bad).is_none_or(|h| !p.matches(&h)), "{bad}");
        }
        assert!(HostPattern::parse("Example.com").is_err());
        assert!(HostPattern::parse("example.com:80").is_err());
        assert!(HostPattern::parse("*.*.com").is_err());
    }
}
