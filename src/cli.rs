//! The `portcullis` command line: the wiring, read top to bottom.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::decide::{Decision, Request};
use crate::gateway::metrics::Metrics;
use crate::gateway::{Endpoints, Gateway, serve, shutdown_signal, unix_now};
use crate::keys::schedule::{Requests, signing_windows};
use crate::local::{Loaded, LocalDir, Memory, report};
use crate::policy::{KeyRef, Outcome};

#[derive(Parser, Debug)]
#[command(name = "portcullis", version, about = "JWT authentication and claim-based authorization for the routes behind an API gateway")]
pub struct Cli {
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true, env = "PORTCULLIS_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the gateway authorizer on the resources of a directory (no cluster needed).
    Local(LocalArgs),
    /// Run the gateway authorizer on a compiled config (a file, or a ConfigMap through the API).
    Gateway(GatewayArgs),
    /// Run the Kubernetes controller.
    Controller(ControllerArgs),
    /// Print the CustomResourceDefinitions (or write them to a directory).
    Crds {
        /// Write one file per CRD into this directory instead of printing (repeatable:
        /// `--out crds --out charts/portcullis/crds`).
        #[arg(long)]
        out: Vec<PathBuf>,
    },
    /// Would this request be allowed, and why? Exit code 0: allowed, 1: denied, 2: error.
    /// Run policy tests (`*.test.yaml`, kind AuthPolicyTest) against a directory, no server
    /// needed (exit 0 all passed, 1 some failed, 2 broken input).
    Test(TestArgs),
    Check(CheckArgs),
    /// Print a token signed by a SigningKey of a directory (for trying things out).
    Token(TokenArgs),
    /// Compile the policies of a directory into a gateway config file.
    Compile(CompileArgs),
    /// List, rotate or revoke the keys of a directory's SigningKeys.
    Keys(KeysArgs),
}

#[derive(Args, Debug, Clone)]
struct DirArgs {
    /// Directory with AuthPolicy and SigningKey YAML files.
    #[arg(long)]
    dir: PathBuf,
    /// Where generated keys are kept (default: DIR/.portcullis).
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// The gateway whose policies are used.
    #[arg(long, default_value = "default")]
    gateway: String,
    /// Who may use which hosts and minting keys, per gateway (JSON or YAML; docs/kubernetes.md,
    /// "Multi-tenant gateways"). Without it the directory has one owner and nothing is refused
    /// for tenancy.
    #[arg(long, env = "PORTCULLIS_GATEWAY_SETTINGS")]
    gateway_settings: Option<String>,
}

impl DirArgs {
    /// The directory, which must exist: a typo in `--dir` is an error, never an empty (and so
    /// deny-everything, or worse, freshly keyed) directory.
    fn local(&self) -> Result<LocalDir> {
        if !self.dir.is_dir() {
            bail!("--dir {:?} is not a directory", self.dir.display().to_string());
        }
        let mut local = LocalDir::new(&self.dir, self.state_dir.as_deref(), &self.gateway);
        if let Some(text) = &self.gateway_settings {
            let mut all = crate::policy::tenancy::parse_settings(text).map_err(|e| anyhow!(e))?;
            local.tenancy = crate::policy::Tenancy { settings: all.remove(&self.gateway).unwrap_or_default(), ..Default::default() };
        }
        Ok(local)
    }
}

#[derive(Args, Debug)]
struct ServeArgs {
    /// Address for decisions and the JWKS (and admin endpoints unless --admin-listen is given).
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Separate address for /healthz, /readyz and /metrics.
    #[arg(long)]
    admin_listen: Option<SocketAddr>,
    /// `iss` of minted internal tokens and base of the discovery document (default: http://LISTEN).
    #[arg(long)]
    issuer_url: Option<String>,
    /// Shortest time between two fetches of one remote JWKS.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    jwks_min_refetch: Duration,
    /// PEM file of CA certificates to trust for JWKS URLs, besides the public roots.
    #[arg(long, env = "PORTCULLIS_JWKS_CA_FILE")]
    jwks_ca_file: Option<PathBuf>,
    /// Paths not in normal form (`/a/../b`, `//`, `%61`): `strict` refuses them (403
    /// unsafe_path); `normalize` decides on the normal form, only for a proxy that forwards the
    /// normalised path upstream (docs/gateways/).
    #[arg(long, default_value = "strict", env = "PORTCULLIS_PATH_MODE")]
    path_mode: crate::policy::path::PathMode,
}

impl ServeArgs {
    fn gateway(&self) -> Result<Arc<Gateway>> {
        let roots = match &self.jwks_ca_file {
            Some(path) => crate::gateway::jwks::read_ca_file(path).map_err(|e| anyhow!(e))?,
            None => Vec::new(),
        };
        Ok(Gateway::with_options(&issuer_url(self), Metrics::new(), self.jwks_min_refetch, &roots, self.path_mode))
    }
}

#[derive(Args, Debug)]
struct LocalArgs {
    #[command(flatten)]
    dir: DirArgs,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Args, Debug)]
#[group(id = "source", required = true, multiple = false, args = ["config", "configmap"])]
struct GatewayArgs {
    /// Compiled config (JSON or gzip), e.g. a mounted ConfigMap's file; reloaded when it changes.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Directory of keyrings for minting (`<namespace>.<name>.json`), e.g. a mounted Secret.
    #[arg(long, requires = "config")]
    keys: Option<PathBuf>,
    /// The gateway ConfigMap, `NAMESPACE/NAME`, watched through the API together with its
    /// `-keys` Secret (and nothing else).
    #[arg(long, env = "PORTCULLIS_CONFIGMAP")]
    configmap: Option<String>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Args, Debug)]
struct ControllerArgs {
    /// Namespace of the controller: gateway ConfigMaps and Secrets and the Lease live here.
    #[arg(long, env = "POD_NAMESPACE", default_value = "portcullis")]
    namespace: String,
    /// Watch only these namespaces (comma-separated); default: all.
    #[arg(long, env = "PORTCULLIS_WATCH_NAMESPACES", value_delimiter = ',')]
    watch_namespaces: Vec<String>,
    /// Gateways that get a config even before a policy names them (comma-separated).
    #[arg(long, env = "PORTCULLIS_GATEWAYS", value_delimiter = ',', default_value = "default")]
    gateways: Vec<String>,
    /// Address for /healthz, /readyz and /metrics.
    #[arg(long, default_value = "0.0.0.0:9090")]
    admin_listen: SocketAddr,
    /// The Lease that elects the one replica that writes.
    #[arg(long, default_value = "portcullis-controller")]
    lease_name: String,
    /// Run without leader election (a single replica only).
    #[arg(long)]
    no_leader_election: bool,
    /// This replica's name in the Lease (default: POD_NAME, else the host name).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Quiet time that ends a burst of changes before compiling.
    #[arg(long, default_value = "200ms", value_parser = parse_duration)]
    debounce: Duration,
    /// The longest a change waits to be compiled during a continuous burst.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    max_delay: Duration,
    /// PEM CA certificates to trust when probing JWKS URLs (as the gateways do).
    #[arg(long, env = "PORTCULLIS_JWKS_CA_FILE")]
    jwks_ca_file: Option<PathBuf>,
    /// Per gateway: which namespaces may use which hosts, which may write policies without
    /// hosts, and which SigningKeys may mint (JSON or YAML; docs/kubernetes.md, "Multi-tenant
    /// gateways"). Without it: a host belongs to the namespace that claimed it first, only the
    /// controller's namespace may omit hosts or mint.
    #[arg(long, env = "PORTCULLIS_GATEWAY_SETTINGS")]
    gateway_settings: Option<String>,
}

#[derive(Args, Debug)]
struct CheckArgs {
    #[command(flatten)]
    dir: DirArgs,
    #[arg(long, default_value = "GET")]
    method: String,
    /// The request URL, e.g. https://api.example.com/orders/1?x=y
    #[arg(long)]
    url: String,
    /// A token, sent as `Authorization: Bearer TOKEN` (a leading `Bearer ` is accepted).
    #[arg(long)]
    token: Option<String>,
    /// More request headers, `Name: value`.
    #[arg(short = 'H', long = "header")]
    headers: Vec<String>,
    /// PEM file of CA certificates to trust for JWKS URLs, as the gateway's.
    #[arg(long, env = "PORTCULLIS_JWKS_CA_FILE")]
    jwks_ca_file: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct TestArgs {
    #[command(flatten)]
    dir: DirArgs,
    /// Test files or directories (default: every `*.test.yaml` under --dir).
    paths: Vec<PathBuf>,
    /// Also write the results as JUnit XML, for CI systems.
    #[arg(long)]
    junit: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct TokenArgs {
    #[command(flatten)]
    dir: DirArgs,
    /// The SigningKey, `[namespace/]name`.
    #[arg(long)]
    key: String,
    /// Claims as a JSON object.
    #[arg(long, default_value = "{}")]
    claims: String,
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    ttl: Duration,
    /// `iss` (unless in --claims).
    #[arg(long)]
    iss: Option<String>,
    /// `aud` (unless in --claims).
    #[arg(long)]
    aud: Option<String>,
    /// `sub` (unless in --claims).
    #[arg(long)]
    sub: Option<String>,
}

#[derive(Args, Debug)]
struct CompileArgs {
    #[command(flatten)]
    dir: DirArgs,
    /// Output file (default: standard output).
    #[arg(long)]
    out: Option<PathBuf>,
    /// gzip the output.
    #[arg(long)]
    gzip: bool,
}

#[derive(Args, Debug)]
struct KeysArgs {
    #[command(subcommand)]
    action: KeysAction,
}

#[derive(Subcommand, Debug)]
enum KeysAction {
    /// Each key's kid, state and the times of its transitions.
    List {
        #[command(flatten)]
        dir: DirArgs,
        /// Only this SigningKey, `[namespace/]name`.
        name: Option<String>,
    },
    /// Rotate early: the next key is published now and signs after prePublish.
    Rotate {
        #[command(flatten)]
        dir: DirArgs,
        name: String,
        /// Sign with the new key at once (verifiers that cache the JWKS may reject it until they refresh).
        #[arg(long)]
        immediate: bool,
    },
    /// Revoke a key at once (compromise): it leaves the JWKS now.
    Revoke {
        #[command(flatten)]
        dir: DirArgs,
        name: String,
        kid: String,
    },
}

/// `--url` as an absolute http(s) URL, or an error that quotes it.
fn absolute_url(url: &str) -> Result<http::Uri> {
    match url.parse::<http::Uri>() {
        Ok(u) if matches!(u.scheme_str(), Some("http" | "https")) && u.authority().is_some_and(|a| !a.host().is_empty()) => Ok(u),
        _ => bail!("--url {url:?} is not an absolute http(s) URL (e.g. https://api.example.com/orders)"),
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    s.parse::<crate::api::Duration>().map(|d| d.as_std()).map_err(|e| e.to_string())
}

/// Writes to stdout; a failure (a closed pipe: `portcullis crds | head`) ends the command
/// through `?`, and `main` exits quietly on a broken pipe.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout(), $($arg)*)?
    }};
}

macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        write!(std::io::stdout(), $($arg)*)?
    }};
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe))
}

pub fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // Servers log what they do; one-shot commands only what goes wrong (their output is stdout).
    let serving = matches!(cli.command, Command::Local(_) | Command::Gateway(_) | Command::Controller(_));
    init_logging(cli.log_format, if serving { "info" } else { "warn" });
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    match runtime.block_on(run(cli.command)) {
        Ok(code) => std::process::ExitCode::from(code),
        Err(e) if is_broken_pipe(&e) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

fn init_logging(format: LogFormat, default_level: &str) {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

async fn run(command: Command) -> Result<u8> {
    match command {
        Command::Local(args) => run_local(args).await,
        Command::Gateway(args) => run_gateway(args).await,
        Command::Controller(args) => run_controller(args).await,
        Command::Crds { out } => write_crds(&out),
        Command::Check(args) => run_check(args).await,
        Command::Test(args) => run_tests(args),
        Command::Token(args) => run_token(args),
        Command::Compile(args) => run_compile(args),
        Command::Keys(args) => run_keys(args.action),
    }
}

fn write_crds(out: &[PathBuf]) -> Result<u8> {
    for crd in crate::api::crds() {
        let yaml = crate::api::crd_yaml(&crd)?;
        if out.is_empty() {
            out!("---\n{yaml}");
        }
        for dir in out {
            let path = dir.join(crate::api::crd_file_name(&crd));
            std::fs::write(&path, &yaml).with_context(|| format!("writing {}", path.display()))?;
            eprintln!("wrote {}", path.display());
        }
    }
    Ok(0)
}

/// Binds the listeners and serves until SIGTERM/SIGINT; returns the shutdown sender.
async fn start_serving(
    gateway: &Arc<Gateway>,
    args: &ServeArgs,
) -> Result<(watch::Sender<bool>, Vec<tokio::task::JoinHandle<()>>, SocketAddr)> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let main = tokio::net::TcpListener::bind(args.listen).await.with_context(|| format!("binding {}", args.listen))?;
    let main_addr = main.local_addr()?;
    let mut tasks = Vec::new();
    let main_endpoints = if args.admin_listen.is_some() { Endpoints::Main } else { Endpoints::All };
    tasks.push(tokio::spawn(serve(main, gateway.clone(), main_endpoints, stop_rx.clone(), Duration::from_secs(10))));
    if let Some(admin) = args.admin_listen {
        let l = tokio::net::TcpListener::bind(admin).await.with_context(|| format!("binding {admin}"))?;
        tasks.push(tokio::spawn(serve(l, gateway.clone(), Endpoints::Admin, stop_rx.clone(), Duration::from_secs(10))));
    }
    Ok((stop_tx, tasks, main_addr))
}

fn issuer_url(args: &ServeArgs) -> String {
    args.issuer_url.clone().unwrap_or_else(|| format!("http://{}", args.listen))
}

async fn run_gateway(args: GatewayArgs) -> Result<u8> {
    let gateway = args.serve.gateway()?;
    let (stop, tasks, addr) = start_serving(&gateway, &args.serve).await?;
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

async fn run_controller(args: ControllerArgs) -> Result<u8> {
    let client = kube::Client::try_default().await.context("connecting to the Kubernetes API")?;
    let identity = args.identity.clone().unwrap_or_else(|| {
        std::fs::read_to_string("/etc/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| format!("portcullis-{}", std::process::id()))
    });
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
            Some(path) => crate::gateway::jwks::read_ca_file(path).map_err(|e| anyhow!(e))?,
            None => Vec::new(),
        },
        gateway_settings: match &args.gateway_settings {
            Some(text) => crate::policy::tenancy::parse_settings(text).map_err(|e| anyhow!(e))?,
            None => Default::default(),
        },
    };
    let metrics = crate::controller::metrics::ControllerMetrics::new();
    let (admin_stop, admin_rx) = watch::channel(false);
    let listener = tokio::net::TcpListener::bind(args.admin_listen).await.with_context(|| format!("binding {}", args.admin_listen))?;
    tracing::info!(admin = %listener.local_addr()?, namespace = %opts.namespace, "controller starting");
    let ctx_cell: Arc<tokio::sync::OnceCell<Arc<crate::controller::Context>>> = Arc::default();
    let admin_metrics = metrics.clone();
    let cell = ctx_cell.clone();
    let admin = tokio::spawn(crate::http::serve(
        listener,
        move |req: hyper::Request<hyper::body::Incoming>| {
            let (cell, metrics) = (cell.clone(), admin_metrics.clone());
            async move {
                match cell.get() {
                    Some(ctx) => crate::controller::admin(ctx.clone(), req).await,
                    // Before the watches exist: alive, not ready.
                    None => match req.uri().path() {
                        "/healthz" => crate::http::reply(http::StatusCode::OK, "text/plain", "ok\n"),
                        "/metrics" => crate::http::reply(http::StatusCode::OK, "text/plain; version=0.0.4", metrics.render()),
                        _ => crate::http::reply(http::StatusCode::SERVICE_UNAVAILABLE, "text/plain", "starting\n"),
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
fn apply_local(gateway: &Gateway, loaded: &Loaded, memory: &mut Memory) {
    memory.remember(loaded);
    gateway.metrics.rejected_resources.set(crate::local::rejected_count(loaded) as i64);
    // apply() logs and counts a failure itself.
    let _ = gateway.apply(loaded.compiled.config.clone(), &loaded.rings);
}

async fn run_local(args: LocalArgs) -> Result<u8> {
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
    loop {
        tokio::select! {
            _ = tokio::time::sleep(crate::local::POLL) => {}
            _ = &mut shutdown => break,
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
        // Key files written by this load count as seen.
        fingerprint = local.fingerprint();
    }
    tracing::info!("shutting down");
    let _ = stop.send(true);
    for t in tasks {
        let _ = t.await;
    }
    Ok(0)
}

fn print_welcome(local: &LocalDir, loaded: &Loaded, addr: SocketAddr) -> std::io::Result<()> {
    outln!("portcullis local: gateway \"{}\" from {} (config {})", local.gateway, local.dir.display(), loaded.compiled.config.version);
    for line in report(loaded) {
        outln!("{line}");
    }
    outln!(
        "listening on http://{addr}  (NGINX/Traefik/Caddy: /authz · Envoy: /ext_authz/<path> · JWKS: /.well-known/jwks.json · /metrics)"
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
fn example_claims(rule: &crate::policy::config::RuleConfig) -> Option<Value> {
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

fn load_once(dir: &DirArgs) -> Result<Loaded> {
    dir.local()?.load(jiff::Timestamp::now(), &HashMap::new(), &Memory::default()).map_err(|e| anyhow!(e))
}

fn find_key(loaded: &Loaded, name: &str) -> Result<KeyRef> {
    let matches: Vec<&KeyRef> = loaded.rings.keys().filter(|k| k.to_string() == name || k.name == name).collect();
    match matches[..] {
        [k] => Ok(k.clone()),
        [] => bail!(
            "no SigningKey {name} in the directory (known: {})",
            loaded.rings.keys().map(|k| k.to_string()).collect::<Vec<_>>().join(", ")
        ),
        _ => bail!("SigningKey {name} exists in several namespaces; write namespace/name"),
    }
}

fn run_token(args: TokenArgs) -> Result<u8> {
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
    for (name, value) in [("iss", args.iss), ("aud", args.aud), ("sub", args.sub)] {
        if let Some(v) = value {
            obj.entry(name).or_insert(json!(v));
        }
    }
    obj.entry("iat").or_insert(json!(now));
    obj.entry("exp").or_insert(json!(now + args.ttl.as_secs() as i64));
    outln!("{}", pair.sign_jwt(&claims)?);
    Ok(0)
}

fn run_compile(args: CompileArgs) -> Result<u8> {
    let loaded = load_once(&args.dir)?;
    for line in report(&loaded) {
        eprintln!("{line}");
    }
    let rejected = loaded.compiled.outcomes.iter().any(|o| o.outcome != Outcome::Accepted);
    if rejected || !loaded.scanned.problems.is_empty() {
        // A config without the broken resources would drop them from the gateway it is given to.
        eprintln!("error: not compiled: fix the resources above (nothing was written)");
        return Ok(2);
    }
    let config = &loaded.compiled.config;
    let bytes = if args.gzip { config.to_gzip() } else { config.to_json() };
    match &args.out {
        Some(path) => std::fs::write(path, &bytes).with_context(|| format!("writing {}", path.display()))?,
        None => {
            use std::io::Write;
            std::io::stdout().write_all(&bytes)?;
        }
    }
    Ok(0)
}

fn run_tests(args: TestArgs) -> Result<u8> {
    use crate::policytest;
    let loaded = load_once(&args.dir)?;
    let broken_input = !loaded.scanned.problems.is_empty() || loaded.compiled.outcomes.iter().any(|o| o.outcome != Outcome::Accepted);
    if broken_input {
        for line in report(&loaded) {
            eprintln!("{line}");
        }
        eprintln!("error: the policies do not all load; fix them before testing them");
        return Ok(2);
    }
    let mut files = Vec::new();
    let roots = if args.paths.is_empty() { vec![args.dir.dir.clone()] } else { args.paths.clone() };
    for root in roots {
        if root.is_dir() {
            files.extend(policytest::find_files(&root));
        } else if root.is_file() {
            files.push(root);
        } else {
            bail!("{:?} is not a test file or directory", root.display().to_string());
        }
    }
    if files.is_empty() {
        eprintln!("error: no *.test.yaml files found");
        return Ok(2);
    }
    let (engine, signers) = policytest::engine(loaded.compiled.config.clone(), &loaded.rings).map_err(|e| anyhow!(e))?;
    let now = unix_now();
    let mut results = Vec::new();
    for path in &files {
        let file = match policytest::read_file(path) {
            Ok(f) => f,
            Err(policytest::Broken(why)) => {
                eprintln!("error: {why}");
                return Ok(2);
            }
        };
        let shown = path.display().to_string();
        for case in &file.spec.cases {
            results.push(policytest::run_case(&engine, &signers, &shown, case, now));
        }
    }
    let failed: Vec<&policytest::CaseResult> = results.iter().filter(|r| !r.failures.is_empty()).collect();
    for r in &failed {
        outln!("FAIL {}: {}", r.file, r.name);
        for f in &r.failures {
            outln!("  {f}");
        }
        outln!("  decided: {}", r.explanation);
    }
    if let Some(path) = &args.junit {
        std::fs::write(path, policytest::junit(&results)).with_context(|| format!("writing {}", path.display()))?;
    }
    outln!("{} passed, {} failed", results.len() - failed.len(), failed.len());
    Ok(u8::from(!failed.is_empty()))
}

async fn run_check(args: CheckArgs) -> Result<u8> {
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
        Some(path) => crate::gateway::jwks::read_ca_file(path).map_err(|e| anyhow!(e))?,
        None => Vec::new(),
    };
    let gateway = Gateway::with_options("https://portcullis.invalid", Metrics::new(), Duration::from_secs(1), &roots, Default::default());
    let engine = gateway.apply(loaded.compiled.config.clone(), &loaded.rings).map_err(|e| anyhow!(e))?;
    // Remote JWKS are fetched once, briefly.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while engine.remote_key_sets().iter().any(|s| !s.state().loaded) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

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
    let decision =
        engine.decide(&Request { method: &args.method, host: &host, target, headers: &headers, path_mode: Default::default() }, unix_now());
    let route = decision.route().map(|r| format!("AuthPolicy {}, rule {}", engine.policy_key(r), engine.rule_name(r)));
    match decision {
        Decision::Allow(a) => {
            outln!("ALLOW 200");
            outln!("  route:   {}", route.unwrap_or_default());
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
            Ok(0)
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
            if let Some(w) = crate::gateway::www_authenticate(engine.realm(), &d) {
                outln!("  WWW-Authenticate: {w}");
            }
            Ok(1)
        }
    }
}

fn run_keys(action: KeysAction) -> Result<u8> {
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
fn request_keys(dir: &DirArgs, name: &str, request: impl FnOnce(&crate::keys::store::KeyRing) -> Result<Requests>) -> Result<u8> {
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
