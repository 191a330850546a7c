//! `check`: would this request be allowed, and why.

use super::*;

pub(super) async fn run_check(args: CheckArgs) -> Result<u8> {
    let loaded = load_once(&args.dir)?;
    for p in &loaded.scanned.problems {
        eprintln!("warning: skipped {p}");
    }
    for o in &loaded.compiled.outcomes {
        if let Outcome::Rejected { rejection, .. } = &o.outcome {
            eprintln!(
                "warning: AuthPolicy {}/{} is not enforced ({}): {}",
                o.namespace,
                o.name,
                rejection.reason.as_str(),
                rejection.message()
            );
        }
    }
    let roots = match &args.jwks_ca_file {
        Some(path) => crate::plumbing::jwks_fetch::read_ca_file(path).map_err(|e| anyhow!(e))?,
        None => Vec::new(),
    };
    let gateway = Gateway::with_options("https://portcullis.invalid", Metrics::new(), Duration::from_secs(1), &roots, Default::default());
    gateway.keep_policy_details();
    let engine = gateway.apply(loaded.compiled.config.clone(), &loaded.rings).map_err(|e| anyhow!(e))?;
    // Remote JWKS are fetched once, briefly.
    crate::gateway::jwks::first_fetched(&engine, Duration::from_secs(5)).await;

    let uri = absolute_url(&args.url)?;
    let host = uri.authority().map(|a| a.as_str().to_owned()).expect("absolute URLs have an authority");
    let target = uri.path_and_query().map_or("/", |pq| pq.as_str());
    let mut headers = http::HeaderMap::new();
    if let Some(t) = &args.token {
        let t = t.trim();
        // `--token 'Bearer eyJ…'` (copied from a header) means the token itself.
        let t = match t.get(..7) {
            Some(scheme) if scheme.eq_ignore_ascii_case("bearer ") => {
                eprintln!("note: --token takes the token itself; the leading \"Bearer \" was dropped");
                t[7..].trim_start()
            }
            _ => t,
        };
        headers.insert(http::header::AUTHORIZATION, format!("Bearer {t}").parse().context("token is not a valid header value")?);
    }
    for h in &args.headers {
        let (name, value) = h.split_once(':').with_context(|| format!("header {h:?} must be Name: value"))?;
        headers.append(http::HeaderName::from_bytes(name.trim().as_bytes())?, value.trim().parse()?);
    }
    if !args.cookie.is_empty() {
        for c in &args.cookie {
            if c.split_once('=').is_none_or(|(name, _)| name.trim().is_empty()) {
                bail!("cookie {c:?} must be NAME=VALUE");
            }
        }
        headers.append(http::header::COOKIE, args.cookie.join("; ").parse().context("a cookie is not a valid header value")?);
    }
    let decision = engine.decide(
        &Request { method: &args.method, host: &host, target, headers: &headers, path_mode: Default::default(), routed: None },
        unix_now(),
    );
    let route = decision.route().map(|r| format!("AuthPolicy {}, rule {}", engine.policy_key(r), engine.rule_name(r)));
    match decision {
        Decision::Allow(a) => {
            outln!("ALLOW 200");
            outln!("  route:   {}", route.unwrap_or_default());
            match &a.audit {
                Some(crate::decide::Verdict::WouldAllow) => outln!("  audit:   the rule is in Audit mode; enforcing would allow too"),
                Some(crate::decide::Verdict::WouldDeny { reason, detail }) => {
                    outln!(
                        "  audit:   allowed only because the rule is in Audit mode; enforcing would DENY {} {}",
                        reason.status(),
                        reason.as_str()
                    );
                    outln!("  because: {}", detail.clone().unwrap_or_else(|| reason.description().to_owned()));
                }
                None => {}
            }
            for (name, value) in &a.headers {
                outln!("  header:  {name}: {}", value.to_str().unwrap_or("<binary>"));
            }
            match &a.authorization {
                Some(v) if v.to_str().is_ok_and(|s| args.token.as_ref().is_some_and(|t| s.ends_with(t.as_str()))) => {
                    outln!("  forward: the caller's token")
                }
                Some(_) => outln!("  forward: a minted internal token"),
                None => outln!("  forward: no token"),
            }
            // Exit 1 for what enforcing would deny, so scripts see the same answer either way.
            Ok(if matches!(a.audit, Some(crate::decide::Verdict::WouldDeny { .. })) { 1 } else { 0 })
        }
        Decision::Deny(d) => {
            outln!("DENY {} {}", d.reason.status(), d.reason.as_str());
            outln!("  route:   {}", route.unwrap_or_else(|| "none".into()));
            outln!("  because: {}", d.detail.clone().unwrap_or_else(|| d.reason.description().to_owned()));
            if d.reason == crate::decide::DenyReason::NoRoute {
                for near in engine.near_misses(&host, target, &args.method) {
                    outln!("  near:    {near}");
                }
            }
            if let Some(r) = &d.redirect {
                let to = r.location.split('?').next().unwrap_or_default();
                outln!("  sign in: the browser is sent to {to}");
            }
            if let Some(w) = crate::gateway::www_authenticate(engine.realm(), &d) {
                outln!("  WWW-Authenticate: {w}");
            }
            Ok(1)
        }
    }
}
