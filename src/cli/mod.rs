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
    /// A SigningKey of the directory (`namespace/name`) that stands in for the cluster's
    /// ServiceAccount token issuer: `kubernetes` issuers and token exchange trust its keys.
    #[arg(long)]
    cluster_issuer_key: Option<String>,
    /// The `iss` of the stand-in cluster issuer's tokens.
    #[arg(long, default_value = "https://kubernetes.default.svc.cluster.local")]
    cluster_issuer: String,
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
        if let Some(key) = &self.cluster_issuer_key {
            let key = key.parse().map_err(|e: String| anyhow!("--cluster-issuer-key: {e}"))?;
            local.cluster_issuer = Some((self.cluster_issuer.clone(), key));
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
    /// Memory for verified tokens (MiB): each distinct token costs about its length plus its
    /// claims; least recently inserted tokens go first. Keep it well under the memory limit.
    #[arg(long, default_value_t = 64, env = "PORTCULLIS_TOKEN_CACHE_MIB")]
    token_cache_mib: usize,
    /// Address for Envoy's gRPC ext_authz (`envoy.service.auth.v3.Authorization`, HTTP/2);
    /// off unless given.
    #[arg(long, env = "PORTCULLIS_GRPC_LISTEN")]
    grpc_listen: Option<SocketAddr>,
    /// PEM certificate chain for gRPC over TLS (with --grpc-tls-key); plaintext without.
    #[arg(long, requires = "grpc_tls_key", env = "PORTCULLIS_GRPC_TLS_CERT")]
    grpc_tls_cert: Option<PathBuf>,
    #[arg(long, requires = "grpc_tls_cert", env = "PORTCULLIS_GRPC_TLS_KEY")]
    grpc_tls_key: Option<PathBuf>,
}

impl ServeArgs {
    fn gateway(&self) -> Result<Arc<Gateway>> {
        let roots = match &self.jwks_ca_file {
            Some(path) => crate::plumbing::jwks_fetch::read_ca_file(path).map_err(|e| anyhow!(e))?,
            None => Vec::new(),
        };
        let gateway = Gateway::with_options(&issuer_url(self), Metrics::new(), self.jwks_min_refetch, &roots, self.path_mode);
        gateway.set_token_cache_bytes(self.token_cache_mib << 20);
        Ok(gateway)
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
    /// This replica's name in its heartbeat Lease (with --configmap); default: the host name.
    #[arg(long, env = "POD_NAME")]
    replica_name: Option<String>,
    /// The Pod's UID: the heartbeat Lease is owned by the Pod and deleted with it.
    #[arg(long, env = "POD_UID")]
    pod_uid: Option<String>,
    /// Do not publish a heartbeat Lease (the controller then cannot report `Enforced`).
    #[arg(long)]
    no_heartbeat: bool,
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
    /// Gateway API wiring (JSON or YAML): `integrations` (GatewayClass controllerName →
    /// envoy-gateway | istio), `istioProvider`, and per Portcullis gateway the `authorizers`
    /// Service ({namespace, name, port}) that generated objects send requests to
    /// (docs/gateways/gateway-api.md).
    #[arg(long, env = "PORTCULLIS_GATEWAY_API_SETTINGS")]
    gateway_api_settings: Option<String>,
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
    /// A cookie, `NAME=VALUE` (e.g. a sign-in session, `portcullis-session-0=v1....`).
    #[arg(long)]
    cookie: Vec<String>,
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
    /// A ServiceAccount token of the stand-in cluster issuer for `namespace/name`: `sub` and the
    /// `kubernetes.io` claim name it, `iss` defaults to --cluster-issuer.
    #[arg(long)]
    service_account: Option<String>,
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
        /// As `portcullis keys list` shows it. A kid is base64url and may start with `-`: taken
        /// as the value it is, not as an option.
        #[arg(allow_hyphen_values = true)]
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

mod check;
mod compile;
mod keys;
mod serve;
mod test;

use check::run_check;
use compile::run_compile;
use keys::{run_keys, run_token};
use serve::{run_controller, run_gateway, run_local};
use test::run_tests;

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
    if let Some(addr) = args.grpc_listen {
        let tls = match (&args.grpc_tls_cert, &args.grpc_tls_key) {
            (Some(cert), Some(key)) => Some(crate::gateway::grpc_transport::tls_config(cert, key).map_err(|e| anyhow!(e))?),
            _ => None,
        };
        let l = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))?;
        tracing::info!(grpc = %l.local_addr()?, tls = tls.is_some(), "gRPC ext_authz listening");
        let (gw, stop) = (gateway.clone(), stop_rx.clone());
        tasks.push(tokio::spawn(async move {
            if let Err(e) = crate::gateway::grpc_transport::serve(l, gw, Default::default(), tls, stop).await {
                tracing::error!("{e}");
            }
        }));
    }
    Ok((stop_tx, tasks, main_addr))
}

fn issuer_url(args: &ServeArgs) -> String {
    args.issuer_url.clone().unwrap_or_else(|| format!("http://{}", args.listen))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kid_that_starts_with_a_dash_is_revoked_not_read_as_an_option() {
        let cli = Cli::try_parse_from(["portcullis", "keys", "revoke", "--dir", "d", "internal", "-J5xQ"]).unwrap();
        let Command::Keys(KeysArgs { action: KeysAction::Revoke { kid, name, .. } }) = cli.command else { panic!("{cli:?}") };
        assert_eq!((name.as_str(), kid.as_str()), ("internal", "-J5xQ"));
    }
}
