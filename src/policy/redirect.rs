//! Where a sign-in may send the browser back to (pure): no open redirects.
//!
//! After a sign-in (or sign-out) the browser goes to a URL that came, one way or another, from
//! the request. Taken as it is, that is an open redirect: `?rd=https://evil.example` turns the
//! gateway into a phishing relay. A target is taken only if it is a path on the request's own
//! host, or an absolute `https` URL whose host is the request's or one the policy allows;
//! everything browsers read differently from servers (`//host`, `/\host`, backslashes, control
//! characters, user info, other schemes) is refused.

use super::host::HostPattern;

/// The longest target kept (it travels in a sealed cookie).
pub const MAX_TARGET: usize = 2048;

/// The target to send the browser to, or `None` when it may not be used (the caller falls back
/// to `/`). `host` is the request's host (lowercase, with its port if it has one); `allowed`
/// the hosts the policy lets sign-in return to besides it.
pub fn return_target(requested: &str, host: &str, allowed: &[HostPattern]) -> Option<String> {
    if requested.is_empty() || requested.len() > MAX_TARGET {
        return None;
    }
    // Browsers drop tabs and newlines inside URLs and read `\` as `/`: refused outright.
    if requested.bytes().any(|b| b.is_ascii_control() || b == b'\\' || b == b' ') {
        return None;
    }
    if requested.starts_with('/') {
        // `//evil.example/x` is a network-path reference: another host.
        return (!requested.starts_with("//")).then(|| requested.to_owned());
    }
    let rest = requested.strip_prefix("https://")?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.is_empty() || authority.contains('@') {
        return None;
    }
    let lower = authority.to_ascii_lowercase();
    let name = lower.split(':').next().unwrap_or_default();
    let same = lower == host || name == host;
    let ok = same || allowed.iter().any(|p| p.matches(name));
    // The host must be a plain name: `%2e`, IPv6 brackets and the like are not taken.
    let plain = name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    (ok && plain).then(|| requested.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn allowed() -> Vec<HostPattern> {
        vec![HostPattern::parse("*.shop.example").unwrap(), HostPattern::parse("docs.example").unwrap()]
    }

    #[test]
    fn paths_and_allowed_https_hosts_pass_and_everything_else_is_refused() {
        let host = "app.shop.example";
        for ok in [
            "/",
            "/orders/7?x=1#top",
            "https://app.shop.example/orders",
            "https://APP.shop.example",
            "https://api.shop.example/x",
            "https://docs.example/guide?q=1",
        ] {
            assert_eq!(return_target(ok, host, &allowed()).as_deref(), Some(ok), "{ok}");
        }
        for bad in [
            "",
            "//evil.example/x",
            "/\\evil.example",
            "\\\\evil.example",
            "https://evil.example/",
            "http://app.shop.example/",
            "https://app.shop.example@evil.example/",
            "https://evil.example\\@app.shop.example/",
            "https:evil.example",
            "https:///evil.example",
            "javascript:alert(1)",
            "data:text/html,hi",
            "/ok\n/evil",
            "/a\tb",
            "https://shop.example.evil.example/",
            "https://xn--shop-.example%2eevil.example/",
            "orders",
        ] {
            assert_eq!(return_target(bad, host, &allowed()), None, "{bad:?}");
        }
        assert_eq!(return_target(&format!("/{}", "a".repeat(MAX_TARGET)), host, &allowed()), None, "too long");
    }

    proptest! {
        /// Whatever is asked, the target is a path that browsers read as the same host, or an
        /// https URL of an allowed host.
        #[test]
        fn no_target_leaves_the_allowed_hosts(s in "[ -~]{0,40}", prefix in prop_oneof![Just(""), Just("/"), Just("//"), Just("https://"), Just("https:/"), Just("http://")]) {
            let requested = format!("{prefix}{s}");
            if let Some(t) = return_target(&requested, "app.shop.example", &allowed()) {
                if t.starts_with('/') {
                    prop_assert!(!t.starts_with("//") && !t.contains('\\'));
                } else {
                    let url: http::Uri = t.parse().map_err(|e| TestCaseError::fail(format!("{t}: {e}")))?;
                    prop_assert_eq!(url.scheme_str(), Some("https"));
                    let h = url.host().unwrap_or_default().to_ascii_lowercase();
                    prop_assert!(h == "app.shop.example" || h.ends_with(".shop.example") || h == "docs.example", "{}", t);
                }
            }
        }
    }
}
