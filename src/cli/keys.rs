//! `token` and `keys`: the keys of a local directory.

use super::*;

pub(super) fn run_token(args: TokenArgs) -> Result<u8> {
    let loaded = load_once(&args.dir)?;
    let key = find_key(&loaded, &args.key)?;
    let ring = &loaded.rings[&key];
    let now = unix_now();
    let ts = jiff::Timestamp::from_second(now)?;
    let kid =
        signing_windows(ring).into_iter().filter(|w| w.contains(ts)).max_by_key(|w| w.from).map(|w| w.kid).context("no key signs now")?;
    let pair = ring.keys.iter().find(|k| k.kid == kid).context("signing key missing")?.key_pair()?;
    let mut claims: Value = serde_json::from_str(&args.claims).context("--claims must be a JSON object")?;
    let obj = claims.as_object_mut().context("--claims must be a JSON object")?;
    let mut iss = args.iss;
    if let Some(sa) = &args.service_account {
        let (ns, name) = crate::policy::validate::parse_service_account(sa).map_err(|e| anyhow::anyhow!("--service-account: {e}"))?;
        let name = name.context("--service-account names one ServiceAccount, not namespace/*")?;
        obj.entry("sub").or_insert(json!(crate::api::service_account_username(ns, name)));
        obj.entry("kubernetes.io").or_insert(json!({"namespace": ns, "serviceaccount": {"name": name, "uid": "local"}}));
        iss = iss.or_else(|| Some(args.dir.cluster_issuer.clone()));
    }
    for (name, value) in [("iss", iss), ("aud", args.aud), ("sub", args.sub)] {
        if let Some(v) = value {
            obj.entry(name).or_insert(json!(v));
        }
    }
    obj.entry("iat").or_insert(json!(now));
    obj.entry("exp").or_insert(json!(now + args.ttl.as_secs() as i64));
    outln!("{}", pair.sign_jwt(&claims)?);
    Ok(0)
}

pub(super) fn run_keys(action: KeysAction) -> Result<u8> {
    match action {
        KeysAction::List { dir, name } => {
            let loaded = load_once(&dir)?;
            let keys: Vec<KeyRef> = match &name {
                Some(n) => vec![find_key(&loaded, n)?],
                None => loaded.rings.keys().cloned().collect(),
            };
            for key in keys {
                let ring = &loaded.rings[&key];
                let spec = &loaded.specs[&key];
                outln!(
                    "SigningKey {key} ({}; rotation {}, prePublish {}, retain {})",
                    spec.algorithm.as_str(),
                    spec.rotation_interval,
                    spec.pre_publish,
                    spec.retain
                );
                outln!("  {:<44} {:<8} {:<22} {:<22} {:<22}", "KID", "STATE", "SIGNS FROM", "SIGNS UNTIL", "LEAVES JWKS");
                let t = |t: Option<jiff::Timestamp>| t.map_or("-".to_owned(), |t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string());
                for k in &ring.keys {
                    outln!(
                        "  {:<44} {:<8} {:<22} {:<22} {:<22}",
                        k.kid,
                        format!("{:?}", k.state),
                        t(Some(k.activates_at)),
                        t(k.retires_at),
                        t(k.removes_at)
                    );
                }
                if let Some(next) = crate::keys::schedule::next_transition(ring, spec) {
                    outln!("  next transition: {}", t(Some(next)));
                }
            }
            Ok(0)
        }
        KeysAction::Rotate { dir, name, immediate } => {
            let id = format!("{}{}", if immediate { "immediate-" } else { "local-" }, jiff::Timestamp::now().as_nanosecond());
            request_keys(&dir, &name, |_| Ok(Requests { rotate: Some(id), revoke: Vec::new() }))
        }
        KeysAction::Revoke { dir, name, kid } => request_keys(&dir, &name, |ring| {
            if !ring.keys.iter().any(|k| k.kid == kid) {
                bail!("SigningKey {name} has no key {kid}");
            }
            Ok(Requests { rotate: None, revoke: vec![kid.clone()] })
        }),
    }
}

/// Runs the schedule of one local SigningKey with a request and prints what happened.
pub(super) fn request_keys(
    dir: &DirArgs,
    name: &str,
    request: impl FnOnce(&crate::keys::store::KeyRing) -> Result<Requests>,
) -> Result<u8> {
    let loaded = load_once(dir)?;
    let key = find_key(&loaded, name)?;
    let requests = HashMap::from([(key.clone(), request(&loaded.rings[&key])?)]);
    let synced =
        dir.local()?.sync_keys(&[(key.clone(), loaded.specs[&key].clone())], jiff::Timestamp::now(), &requests).map_err(|e| anyhow!(e))?;
    for (_, e) in synced.events {
        outln!("{}", e.describe());
    }
    Ok(0)
}
