//! `local`, `gateway` and `controller`: the commands that serve.

use super::*;

pub(super) async fn run_gateway(args: GatewayArgs) -> Result<u8> {
    let gateway = args.serve.gateway()?;
    let (stop, mut tasks, addr) = start_serving(&gateway, &args.serve).await?;
    let source = match (&args.config, &args.configmap) {
        (Some(path), _) => {
            tracing::info!(%addr, config = %path.display(), "gateway listening");
            tokio::spawn(crate::gateway::source::watch_files(
                gateway.clone(),
                path.clone(),
                args.keys.clone(),
                Duration::from_secs(1),
                stop.subscribe(),
            ))
        }
        (None, Some(cm)) => {
            let (namespace, name) = cm.split_once('/').context("--configmap must be NAMESPACE/NAME")?;
            let client = kube::Client::try_default().await.context("connecting to the Kubernetes API")?;
            tracing::info!(%addr, configmap = %cm, "gateway listening");
            let replica = args.replica_name.clone().unwrap_or_else(host_name);
            let _ = gateway.replica.set(replica.clone());
            if !args.no_heartbeat {
                let owner = args.pod_uid.as_ref().map(|uid| crate::contract::heartbeat::pod_owner(&replica, uid));
                let gateway_name = name.strip_prefix("portcullis-gateway-").unwrap_or(name).to_owned();
                tasks.push(tokio::spawn(crate::gateway::status::heartbeat(
                    gateway.clone(),
                    client.clone(),
                    namespace.to_owned(),
                    gateway_name,
                    replica,
                    owner,
                    stop.subscribe(),
                )));
            }
            tokio::spawn(crate::gateway::cluster::watch_configmap(
                gateway.clone(),
                client,
                namespace.to_owned(),
                name.to_owned(),
                stop.subscribe(),
            ))
        }
        (None, None) => bail!("give --config FILE or --configmap NAMESPACE/NAME"),
    };
    shutdown_signal().await;
    tracing::info!("shutting down");
    let _ = stop.send(true);
    for t in tasks {
        let _ = t.await;
    }
    let _ = source.await;
    Ok(0)
}

fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok().map(|h| h.trim().to_owned()))
        .unwrap_or_else(|| format!("portcullis-{}", std::process::id()))
}

pub(super) async fn run_controller(args: ControllerArgs) -> Result<u8> {
    let client = kube::Client::try_default().await.context("connecting to the Kubernetes API")?;
    let identity = args.identity.clone().unwrap_or_else(host_name);
    let mut wiring: crate::controller::wiring::WiringSettings = match &args.gateway_api_settings {
        Some(text) => serde_saphyr::from_str(text).map_err(|e| anyhow!("--gateway-api-settings: {e}"))?,
        None => Default::default(),
    };
    wiring.instance = crate::controller::wiring::instance_label(&args.namespace, &args.lease_name);
    let opts = crate::controller::Options {
        namespace: args.namespace,
        scope: if args.watch_namespaces.is_empty() {
            crate::controller::Scope::All
        } else {
            crate::controller::Scope::Namespaces(args.watch_namespaces)
        },
        gateways: args.gateways,
        identity,
        lease_name: (!args.no_leader_election).then_some(args.lease_name),
        debounce: args.debounce,
        max_delay: args.max_delay,
        jwks_roots: match &args.jwks_ca_file {
            Some(path) => crate::plumbing::jwks_fetch::read_ca_file(path).map_err(|e| anyhow!(e))?,
            None => Vec::new(),
        },
        gateway_settings: match &args.gateway_settings {
            Some(text) => crate::policy::tenancy::parse_settings(text).map_err(|e| anyhow!(e))?,
            None => Default::default(),
        },
        wiring,
        rediscover: Duration::from_secs(60),
    };
    let metrics = crate::controller::metrics::ControllerMetrics::new();
    let (admin_stop, admin_rx) = watch::channel(false);
    let listener = tokio::net::TcpListener::bind(args.admin_listen).await.with_context(|| format!("binding {}", args.admin_listen))?;
    tracing::info!(admin = %listener.local_addr()?, namespace = %opts.namespace, "controller starting");
    let ctx_cell: Arc<tokio::sync::OnceCell<Arc<crate::controller::Context>>> = Arc::default();
    let admin_metrics = metrics.clone();
    let cell = ctx_cell.clone();
    let admin = tokio::spawn(crate::plumbing::http::serve(
        listener,
        move |req: hyper::Request<hyper::body::Incoming>| {
            let (cell, metrics) = (cell.clone(), admin_metrics.clone());
            async move {
                match cell.get() {
                    Some(ctx) => crate::controller::admin(ctx.clone(), req).await,
                    // Before the watches exist: alive, not ready.
                    None => match req.uri().path() {
                        "/healthz" => crate::plumbing::http::reply(http::StatusCode::OK, "text/plain", "ok\n"),
                        "/metrics" => crate::plumbing::http::reply(http::StatusCode::OK, "text/plain; version=0.0.4", metrics.render()),
                        _ => crate::plumbing::http::reply(http::StatusCode::SERVICE_UNAVAILABLE, "text/plain", "starting\n"),
                    },
                }
            }
        },
        admin_rx,
        Duration::from_secs(5),
    ));
    let ctx = crate::controller::run(client, opts, metrics, shutdown_signal(), ctx_cell.clone()).await?;
    drop(ctx);
    let _ = admin_stop.send(true);
    let _ = admin.await;
    Ok(0)
}

/// Applies one load of a local directory to the gateway and remembers it, so that a file that
/// breaks later keeps its resources serving.
pub(super) fn apply_local(gateway: &Gateway, loaded: &Loaded, memory: &mut Memory) {
    memory.remember(loaded);
    gateway.metrics.rejected_resources.set(crate::local::rejected_count(loaded) as i64);
    // apply() logs and counts a failure itself.
    let _ = gateway.apply_with(loaded.compiled.config.clone(), &loaded.rings, &loaded.client_secrets);
}

pub(super) async fn run_local(args: LocalArgs) -> Result<u8> {
    let local = args.dir.local()?;
    let gateway = args.serve.gateway()?;
    let mut memory = Memory::default();
    let mut loaded = local.load(jiff::Timestamp::now(), &HashMap::new(), &memory).map_err(|e| anyhow!(e))?;
    apply_local(&gateway, &loaded, &mut memory);
    let (stop, tasks, addr) = start_serving(&gateway, &args.serve).await?;
    // A server keeps serving when nobody reads its stdout.
    let _ = print_welcome(&local, &loaded, addr);

    let mut fingerprint = local.fingerprint();
    let mut shutdown = std::pin::pin!(shutdown_signal());
    let mut audit_logged = (std::time::Instant::now(), Vec::new());
    loop {
        tokio::select! {
            _ = tokio::time::sleep(crate::local::POLL) => {}
            _ = &mut shutdown => break,
        }
        // What /status says about Audit rules, in the log once a minute when it changed.
        if audit_logged.0.elapsed() >= Duration::from_secs(60) {
            let audit = gateway.status(&local.gateway, "local").audit;
            if audit != audit_logged.1 {
                for a in &audit {
                    let reasons: Vec<String> = a.reasons.iter().map(|(r, n)| format!("{r} {n}")).collect();
                    tracing::info!(
                        policy = %a.policy,
                        rule = %a.rule,
                        would_allow = a.would_allow,
                        would_deny = a.would_deny,
                        reasons = %reasons.join(", "),
                        "audit: last 10 minutes"
                    );
                }
            }
            audit_logged = (std::time::Instant::now(), audit);
        }
        let now = jiff::Timestamp::now();
        let due = loaded.next_wakeup.is_some_and(|w| w <= now);
        let current = local.fingerprint();
        if current == fingerprint && !due {
            continue;
        }
        match local.load(now, &HashMap::new(), &memory) {
            Ok(next) => {
                for (key, event) in &next.key_events {
                    tracing::info!(signing_key = %key, "{}", event.describe());
                }
                if next.compiled.config.version != loaded.compiled.config.version || current != fingerprint {
                    for line in report(&next) {
                        tracing::info!("{}", line.trim_start());
                    }
                }
                apply_local(&gateway, &next, &mut memory);
                loaded = next;
            }
            Err(e) => tracing::error!("reload failed, the previous config keeps serving: {e}"),
        }
        // Key files written by this load count as seen; resource files as they were before it
        // was read (one written while it loaded is loaded on the next round, not taken as seen).
        fingerprint = local.seen_after_load(&current);
    }
    tracing::info!("shutting down");
    let _ = stop.send(true);
    for t in tasks {
        let _ = t.await;
    }
    Ok(0)
}

pub(super) fn print_welcome(local: &LocalDir, loaded: &Loaded, addr: SocketAddr) -> std::io::Result<()> {
    outln!("portcullis local: gateway \"{}\" from {} (config {})", local.gateway, local.dir.display(), loaded.compiled.config.version);
    for line in report(loaded) {
        outln!("{line}");
    }
    outln!(
        "listening on http://{addr}  (NGINX/Traefik/Caddy: /authz · ingress-nginx: /authz/ingress-nginx · Envoy: /ext_authz/<path> · JWKS: /.well-known/jwks.json · /metrics)"
    );
    // A rule that a token from a local SigningKey can satisfy, with claims that satisfy it.
    let example = loaded.compiled.config.policies.iter().find_map(|p| {
        let (issuer, key) = p.issuers.iter().find_map(|i| match &i.keys {
            crate::policy::config::KeySource::SigningKey(k) => Some((i, k)),
            _ => None,
        })?;
        let (rule, claims) = p.rules.iter().filter(|r| !r.public).find_map(|r| example_claims(r).map(|c| (r, c)))?;
        let path = rule.paths.iter().find_map(|m| m.exact.clone().or(m.prefix.clone()))?;
        Some((p, issuer, key, path, claims))
    });
    if let Some((p, issuer, key, path, claims)) = example {
        let host = p.hosts.first().map_or("example.com", String::as_str).trim_start_matches("*.");
        outln!("try it:");
        outln!("  curl -i -H 'Host: {host}' http://{addr}/ext_authz{path}        # 401: no token");
        outln!(
            "  TOKEN=$(portcullis token --dir {} --key {key} --iss {} --aud {} --claims '{claims}')",
            local.dir.display(),
            issuer.issuer,
            issuer.audiences[0]
        );
        outln!("  curl -i -H 'Host: {host}' -H \"Authorization: Bearer $TOKEN\" http://{addr}/ext_authz{path}        # 200");
    }
    Ok(())
}

/// Claims that satisfy a rule's simple requirements (None when it needs more than claims).
pub(super) fn example_claims(rule: &crate::policy::config::RuleConfig) -> Option<Value> {
    let mut claims = json!({"sub": "alice"});
    let reqs = rule.require.iter().chain(rule.any_of.first().into_iter().flatten());
    for r in reqs {
        let path: Vec<String> = match (&r.claim, &r.claim_path) {
            (Some(c), _) => c.split('.').map(str::to_owned).collect(),
            (None, Some(p)) => p.clone(),
            _ => return None,
        };
        let value = if let Some(v) = &r.equals {
            json!(v)
        } else if let Some(v) = r.in_.as_ref().and_then(|v| v.first()) {
            json!(v)
        } else if let Some(v) = r.contains_all.as_ref().or(r.contains_any.as_ref()) {
            let items = if r.contains_all.is_some() { v.clone() } else { vec![v[0].clone()] };
            if matches!(path.as_slice(), [s] if s == "scope" || s == "scp") { json!(items.join(" ")) } else { json!(items) }
        } else if r.exists == Some(true) {
            json!("example")
        } else if r.absent == Some(true) {
            continue;
        } else {
            return None;
        };
        let mut at = &mut claims;
        for (i, seg) in path.iter().enumerate() {
            if i + 1 == path.len() {
                at[seg.as_str()] = value.clone();
            } else {
                if !at.get(seg.as_str()).is_some_and(Value::is_object) {
                    at[seg.as_str()] = json!({});
                }
                at = &mut at[seg.as_str()];
            }
        }
    }
    Some(claims)
}
