//! Browser sign-in end to end: a certified OpenID provider (npm `oidc-provider`), Portcullis in
//! local mode, a real Envoy (HTTP ext_authz), an upstream that echoes what it got, and Debian's
//! Chromium driven through the provider's login form. Then the attacks of issue 21, item 6, each
//! through the same Envoy.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::Value;

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

fn require_browser_tools() {
    let modules = browser_dir().join("node_modules");
    assert!(
        modules.join("oidc-provider").exists() && modules.join("playwright-core").exists(),
        "the sign-in tests need `npm ci` in tests/browser (CI runs it in .ci/run)"
    );
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(Path::new(&chromium).exists(), "the sign-in tests need Chromium: apt-get install chromium (CI installs it in .ci/run)");
}

/// The client secret of the runs with a confidential client.
const CLIENT_SECRET: &str = "a-client-secret-never-logged-7f3a";

fn policies(provider_port: u16, confidential: bool) -> String {
    // A confidential client: its secret in a labelled Secret of the policy's namespace.
    let (secret, secret_ref) = if confidential {
        (
            format!(
                "apiVersion: v1\nkind: Secret\nmetadata: {{ name: web-oidc, namespace: shop, labels: {{ portcullis.dev/client-secret: \"true\" }} }}\nstringData: {{ client-secret: {CLIENT_SECRET} }}\n---"
            ),
            "    clientSecretRef: { name: web-oidc }\n",
        )
    } else {
        (String::new(), "")
    };
    format!(
        r#"{secret}
apiVersion: portcullis.dev/v1alpha1
kind: SigningKey
metadata: {{ name: sessions, namespace: shop }}
spec: {{ algorithm: EdDSA }}
---
apiVersion: portcullis.dev/v1alpha1
kind: SigningKey
metadata: {{ name: internal, namespace: shop }}
spec: {{ algorithm: EdDSA }}
---
apiVersion: portcullis.dev/v1alpha1
kind: AuthPolicy
metadata: {{ name: web, namespace: shop }}
spec:
  hosts: [shop.localhost]
  signIn:
    issuer: http://127.0.0.1:{provider_port}
    clientId: web
{secret_ref}    # offline_access: a refresh token, so that the session's claims are refreshed (ID tokens
    # live 5 s here) and end when the provider revokes the grant.
    scopes: [email, offline_access]
    sessionKeyRef: {{ name: sessions }}
    scheme: http
    # oidc-provider puts email in its userinfo only.
    userinfo: true
  rules:
    - name: app
      match: {{ paths: [{{ prefix: / }}] }}
      forward:
        # The docs' proxy configurations pass X-User-Id, X-User-Roles and X-Tenant-Id: the
        # email (a userinfo claim) travels in the last.
        claimsToHeaders: {{ X-User-Id: sub, X-Tenant-Id: email }}
        # The signed-in user reaches the upstream as a minted internal token, as a bearer would.
        token: issue
        issue: {{ signingKeyRef: {{ name: internal }}, audience: shop-app }}
"#
    )
}

/// The login cookie and the provider's `state` of a fresh redirect to sign in.
fn start_sign_in(envoy: u16, host: &str) -> (String, String) {
    let mut r = http(envoy, "GET", host, "/orders", &[("Accept", "text/html")]).unwrap();
    assert_eq!(r.status, 302, "{}", String::from_utf8_lossy(&r.body));
    // ingress-nginx first sends the browser to the host's sign-in start.
    if let Some(start) = r.header("location").and_then(|l| l.strip_prefix(&format!("http://{host}"))).map(str::to_owned) {
        r = http(envoy, "GET", host, &start, &[("Accept", "text/html")]).unwrap();
        assert_eq!(r.status, 302, "{}", String::from_utf8_lossy(&r.body));
    }
    let location = r.header("location").unwrap().to_owned();
    let state = location.split(['?', '&']).find_map(|p| p.strip_prefix("state=")).unwrap().to_owned();
    let cookie = r.header("set-cookie").unwrap().split(';').next().unwrap().to_owned();
    (cookie, state)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Through {
    EnvoyHttp,
    EnvoyGrpc,
    Nginx,
    Traefik,
    Caddy,
    IngressNginx,
}

#[test]
fn a_browser_signs_in_through_envoy_http_ext_authz_and_every_attack_on_the_flow_is_refused() {
    signs_in(Through::EnvoyHttp);
}

#[test]
fn a_browser_signs_in_through_envoy_grpc_ext_authz_and_every_attack_on_the_flow_is_refused() {
    signs_in(Through::EnvoyGrpc);
}

#[test]
fn a_browser_signs_in_through_nginx_auth_request_and_every_attack_on_the_flow_is_refused() {
    signs_in(Through::Nginx);
}

#[test]
fn a_browser_signs_in_through_ingress_nginx_auth_signin_and_every_attack_on_the_flow_is_refused() {
    signs_in(Through::IngressNginx);
}

/// What ingress-nginx generates for an Ingress with `auth-url` and `auth-signin` (docs/sign-in.md),
/// and the Ingress without auth that sends `/.portcullis/` of the host to the gateway.
fn ingress_nginx_sign_in_site(port: u16, authz: u16, upstream: u16) -> String {
    let site = ingress_nginx_site(port, authz, upstream);
    let site = site.replacen(
        "    auth_request /_external-auth-Lw-Prefix;\n",
        "    auth_request /_external-auth-Lw-Prefix;\n    error_page 401 = @auth-signin;\n",
        1,
    );
    let extra = r#"
  location @auth-signin {
    internal;
    return 302 http://$http_host/.portcullis/sign-in?rd=$scheme://$http_host$request_uri;
  }

  location /.portcullis/ {
    proxy_set_header Host $http_host;
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    proxy_pass http://portcullis;
  }
"#;
    let end = site.rfind('}').unwrap();
    assert!(site.contains("error_page 401 = @auth-signin"), "the ingress-nginx site changed: {site}");
    format!("{}{extra}{}", &site[..end], &site[end..])
}

#[test]
fn a_browser_signs_in_through_traefik_forward_auth_and_every_attack_on_the_flow_is_refused() {
    signs_in(Through::Traefik);
}

#[test]
fn a_browser_signs_in_through_caddy_forward_auth_and_every_attack_on_the_flow_is_refused() {
    signs_in(Through::Caddy);
}

/// The NGINX site of docs/gateways/nginx.md with the additions of docs/sign-in.md: the
/// `auth_request` asks `/authz/auth-request`, and `error_page 401` fetches the answer a browser
/// needs (a redirect, the callback, sign-out) from `/authz`.
fn nginx_sign_in_site(port: u16, authz: u16, upstream: u16) -> String {
    let site = nginx_site(port, authz, upstream);
    let site =
        site.replacen("    auth_request /_portcullis;\n", "    auth_request /_portcullis;\n    error_page 401 = @portcullis_sign_in;\n", 1);
    let site = site.replacen("proxy_pass http://portcullis/authz;", "proxy_pass http://portcullis/authz/auth-request;", 1);
    let named = r#"
  location @portcullis_sign_in {
    # A named location's proxy_pass takes no URI: the rewrite names the endpoint.
    rewrite ^ /authz break;
    proxy_pass http://portcullis;
    proxy_pass_request_body off;
    proxy_set_header Content-Length "";
    proxy_set_header X-Forwarded-Method $request_method;
    proxy_set_header X-Forwarded-Uri $request_uri;
    # The host as the browser wrote it, port included: it is in the redirect URI.
    proxy_set_header X-Forwarded-Host $http_host;
    proxy_http_version 1.1;
    proxy_set_header Connection "";
  }
"#;
    let end = site.rfind('}').unwrap();
    assert!(
        site.contains("error_page 401 = @portcullis_sign_in") && site.contains("/authz/auth-request"),
        "the docs' site changed: {site}"
    );
    format!("{}{named}{}", &site[..end], &site[end..])
}

fn signs_in(through: Through) {
    require_browser_tools();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("policies");
    std::fs::create_dir_all(&dir).unwrap();
    let (provider_port, authz_port, grpc_port) = (free_port(), free_port(), free_port());
    let upstream = start_echo();
    let (_proxy, envoy_port) = match through {
        Through::EnvoyGrpc => start_envoy_grpc(&tmp.path().join("envoy"), grpc_port, upstream),
        Through::EnvoyHttp => start_envoy(&tmp.path().join("envoy"), authz_port, upstream),
        Through::Nginx => start_nginx_site(&tmp.path().join("nginx"), |port| nginx_sign_in_site(port, authz_port, upstream)),
        // Their forward auth passes the authorizer's redirects and pages on as they are.
        Through::Traefik => start_traefik(&tmp.path().join("traefik"), authz_port, upstream),
        Through::Caddy => start_caddy(&tmp.path().join("caddy"), authz_port, upstream),
        Through::IngressNginx => start_nginx_site(&tmp.path().join("nginx"), |port| ingress_nginx_sign_in_site(port, authz_port, upstream)),
    };
    let host = format!("shop.localhost:{envoy_port}");
    let mut cmd = Command::new("node");
    cmd.current_dir(browser_dir()).args([
        "provider.mjs",
        &provider_port.to_string(),
        "web",
        &format!("http://{host}/.portcullis/callback"),
        &format!("http://{host}/"),
    ]);
    cmd.env("ID_TOKEN_TTL", "5");
    // Envoy's gRPC and Traefik runs sign in as a confidential client, the others as a public one.
    let confidential = matches!(through, Through::EnvoyGrpc | Through::Traefik);
    if confidential {
        cmd.env("CLIENT_SECRET", CLIENT_SECRET);
    }
    let mut provider = Proc::spawn("provider", &mut cmd, tmp.path().join("provider.log"));
    provider.wait_serving(Duration::from_secs(20), || {
        http(provider_port, "GET", "127.0.0.1", "/.well-known/openid-configuration", &[]).ok().filter(|r| r.status == 200)
    });
    std::fs::write(dir.join("web.yaml"), policies(provider_port, confidential)).unwrap();
    let grpc_listen = format!("127.0.0.1:{grpc_port}");
    let portcullis = start_local_with(&dir, authz_port, tmp.path().join("portcullis.log"), &["--grpc-listen", &grpc_listen]);
    // The provider is discovered in the background: until then a navigation gets a 503 page.
    wait_until("the provider discovered", Duration::from_secs(20), || {
        (http(envoy_port, "GET", &host, "/", &[("Accept", "text/html")]).ok()?.status == 302).then_some(())
    });

    // The replica reports the provider's discovery like a remote JWKS (status.issuers).
    let status = http(authz_port, "GET", "localhost", "/status", &[]).unwrap().json();
    let discovery = format!("http://127.0.0.1:{provider_port}/.well-known/openid-configuration");
    let reported = status["jwks"].as_array().unwrap().iter().find(|j| j["uri"] == discovery.as_str()).cloned();
    assert_eq!(reported.map(|j| j["ready"].clone()), Some(Value::Bool(true)), "{status:#}");

    // A real browser: protected page → provider's login form → back, served with the identity.
    let url = format!("http://{host}/orders?page=2");
    let out = Command::new("node")
        .current_dir(browser_dir())
        .args(["signin.mjs", &url, &format!("http://127.0.0.1:{provider_port}")])
        .env("REFRESH_WAIT", "6")
        .output()
        .expect("node runs");
    let seen: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)));
    assert!(seen.get("error").is_none(), "{seen:#}\n{}\n{}", portcullis.log_text(), provider.log_text());
    assert!(seen["loginPage"]["url"].as_str().unwrap().starts_with(&format!("http://127.0.0.1:{provider_port}/")), "{seen:#}");
    assert_eq!(seen["afterSignIn"]["url"], url.as_str(), "back on the page asked for");
    let body = &seen["afterSignIn"]["body"];
    assert_eq!(body["target"], "/orders?page=2");
    assert_eq!(body["headers"]["x-user-id"][0], "alice", "served with the identity header: {body:#}");
    assert_eq!(body["headers"]["x-tenant-id"][0], "alice@shop.example", "a claim of the provider's userinfo: {body:#}");
    let minted = body["headers"]["authorization"][0].as_str().and_then(|a| a.strip_prefix("Bearer ")).expect("a minted token upstream");
    let claims: Value = {
        use base64::Engine;
        serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(minted.split('.').nth(1).unwrap()).unwrap())
            .unwrap()
    };
    let gateway_url = format!("http://127.0.0.1:{authz_port}");
    assert_eq!(
        (claims["sub"].as_str(), claims["aud"].as_str(), claims["iss"].as_str()),
        (Some("alice"), Some("shop-app"), Some(gateway_url.as_str()))
    );
    assert!(claims["exp"].as_i64().unwrap() <= claims["iat"].as_i64().unwrap() + 300);
    let cookies_upstream = body["headers"]["cookie"].to_string();
    assert!(!cookies_upstream.contains("portcullis-"), "the session never reaches the upstream: {cookies_upstream}");
    let session = seen["cookies"].as_array().unwrap().iter().find(|c| c["name"] == "portcullis-session-0").expect("a session cookie");
    assert_eq!(
        (session["httpOnly"].as_bool(), session["sameSite"].as_str(), session["domain"].as_str()),
        (Some(true), Some("Lax"), Some("shop.localhost"))
    );
    // Reloading works without the provider; without the cookie, it is the provider again.
    assert_eq!(seen["afterReload"]["body"]["headers"]["x-user-id"][0], "alice");
    assert_eq!(seen["afterReload"]["providerRequests"], 0);
    // The claims went stale: a page load is refreshed behind the scenes (the browser never sees
    // the provider) and sent to itself with the new session; a script is allowed at once, and
    // gets the new cookies where the proxy passes an allowed answer's `Set-Cookie` on.
    let stale = &seen["afterStaleReload"];
    assert_eq!((stale["url"].as_str(), stale["providerRequests"].as_i64()), (Some(url.as_str()), Some(0)), "{seen:#}");
    assert_eq!(stale["body"]["headers"]["x-user-id"][0], "alice");
    assert_eq!(stale["body"]["headers"]["x-tenant-id"][0], "alice@shop.example", "the userinfo's claims survive a refresh");
    assert_eq!(stale["cookieChanged"], true, "the page load got the refreshed session");
    let script = &seen["scriptWhenStale"];
    assert_eq!(script["status"], 200, "{seen:#}");
    assert!(script["body"].as_str().unwrap().contains("\"alice\""), "{seen:#}");
    let passes_cookies = matches!(through, Through::EnvoyHttp | Through::EnvoyGrpc | Through::Traefik);
    assert_eq!(script["cookieChanged"], passes_cookies, "{seen:#}");
    let refreshes = http(provider_port, "GET", "127.0.0.1", "/test/refreshes", &[]).unwrap().json();
    assert!(refreshes["count"].as_i64().unwrap() >= 2, "{refreshes}");
    // The provider revoked the grant: the refresh is refused and the page goes to sign in.
    assert!(seen["afterRevoke"]["url"].as_str().unwrap().starts_with(&format!("http://127.0.0.1:{provider_port}/")), "{seen:#}");
    assert_eq!(seen["afterSecondSignIn"]["url"], url.as_str());
    // Signed out: the provider confirms, the session is gone, and the page asks to sign in again.
    assert!(seen["signOutPage"]["url"].as_str().unwrap().contains("/session/end"), "{seen:#}");
    assert_eq!(seen["afterSignOut"]["title"], "Sign-in", "{seen:#}");
    assert_eq!(seen["afterSignOut"]["sessionCookies"], 0);
    assert!(seen["afterCookiesCleared"]["url"].as_str().unwrap().starts_with(&format!("http://127.0.0.1:{provider_port}/")));

    // Sign-out is a POST from the host's own pages: a cross-site form or a GET is refused.
    let cross =
        http(envoy_port, "POST", &host, "/.portcullis/logout", &[("Origin", "http://evil.localhost"), ("Content-Length", "0")]).unwrap();
    assert_eq!(cross.status, 403);
    assert!(cross.header("set-cookie").is_none());
    assert_eq!(http(envoy_port, "GET", &host, "/.portcullis/logout", &[]).unwrap().status, 405);
    let own =
        http(envoy_port, "POST", &host, "/.portcullis/logout", &[("Origin", &format!("http://{host}")), ("Content-Length", "0")]).unwrap();
    assert_eq!(own.status, 302);
    assert!(own.header("set-cookie").unwrap().starts_with("portcullis-session-0=;"));

    // Scripts are not sent to a login page: 401. (ingress-nginx's `auth-signin` sends every 401
    // to sign in: it cannot tell a script from a page.)
    let script = if through == Through::IngressNginx { 302 } else { 401 };
    assert_eq!(http(envoy_port, "GET", &host, "/orders", &[("Accept", "application/json")]).unwrap().status, script);
    let xhr = http(envoy_port, "GET", &host, "/orders", &[("Accept", "text/html"), ("X-Requested-With", "XMLHttpRequest")]).unwrap();
    assert_eq!(xhr.status, script);
    // A tampered or foreign session cookie is no session.
    for cookie in ["portcullis-session-0=v1.x.y", "portcullis-session-0=garbage"] {
        let r = http(envoy_port, "GET", &host, "/orders", &[("Accept", "application/json"), ("Cookie", cookie)]).unwrap();
        assert_eq!(r.status, script, "{cookie}");
        let r = http(envoy_port, "GET", &host, "/orders", &[("Accept", "text/html"), ("Cookie", cookie)]).unwrap();
        assert_eq!(r.status, 302, "{cookie}: sent to sign in, not served");
    }
    // The callback: a forged state, no login cookie, a login cookie of another sign-in, an
    // error from the provider — a page that says so, never a session.
    let callback = |query: &str, cookie: Option<&str>| {
        let headers: Vec<(&str, &str)> = cookie.map(|c| vec![("Cookie", c)]).unwrap_or_default();
        http(envoy_port, "GET", &host, &format!("/.portcullis/callback?{query}"), &headers).unwrap()
    };
    let (login, state) = start_sign_in(envoy_port, &host);
    let (other_login, _) = start_sign_in(envoy_port, &host);
    for (what, query, cookie, status) in [
        ("forged state", "code=c&state=forged".to_owned(), Some(login.as_str()), 400),
        ("no login cookie", format!("code=c&state={state}"), None, 400),
        ("another sign-in's login cookie", format!("code=c&state={state}"), Some(other_login.as_str()), 400),
        ("a state given twice", format!("code=c&state={state}&state={state}"), Some(login.as_str()), 400),
        ("a code the provider never issued", format!("code=forged&state={state}"), Some(login.as_str()), 403),
        ("the provider's error", "error=access_denied&state=x".to_owned(), Some(login.as_str()), 403),
    ] {
        let r = callback(&query, cookie);
        assert_eq!(r.status, status, "{what}: {}", String::from_utf8_lossy(&r.body));
        assert!(r.header("set-cookie").is_none_or(|c| !c.starts_with("portcullis-session")), "{what}: a session was set");
        assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"), "{what}");
    }
    // The provider goes down in the middle of a sign-in: a 503 page, not a loop. NGINX and gRPC
    // ext_authz relay the authorizer's page; Envoy's HTTP ext_authz takes any 5xx of the authorizer as
    // its own failure and answers `status_on_error` (403) itself.
    drop(provider);
    let r = callback(&format!("code=c&state={state}"), Some(&login));
    assert!(r.header("location").is_none() && r.header("set-cookie").is_none());
    if through != Through::EnvoyHttp {
        assert_eq!(r.status, 503, "{}", String::from_utf8_lossy(&r.body));
        assert!(String::from_utf8_lossy(&r.body).contains("cannot be reached"));
    } else {
        assert_eq!(r.status, 403, "through Envoy: {}", String::from_utf8_lossy(&r.body));
        let direct =
            http(authz_port, "GET", &host, &format!("/ext_authz/.portcullis/callback?code=c&state={state}"), &[("Cookie", &login)])
                .unwrap();
        assert_eq!(direct.status, 503, "{}", String::from_utf8_lossy(&direct.body));
        assert!(String::from_utf8_lossy(&direct.body).contains("cannot be reached"));
    }
    // No token, code or cookie value in any log line.
    let log = portcullis.log_text();
    for secret in [login.split_once('=').unwrap().1, state.as_str(), CLIENT_SECRET] {
        assert!(!log.contains(secret), "a secret in the gateway's log");
    }
}

#[test]
fn a_forged_or_foreign_id_token_never_becomes_a_session_and_a_revoked_key_ends_sessions_through_envoy() {
    rogue_provider_attacks(Through::EnvoyHttp);
}

#[test]
fn a_forged_or_foreign_id_token_never_becomes_a_session_and_a_revoked_key_ends_sessions_through_nginx() {
    rogue_provider_attacks(Through::Nginx);
}

/// Issue 21, item 6, the attacks only a provider can make: the gateway talks to a provider that
/// sends whatever the test asks (`tests/upstream/rogue_provider.py`), through a real proxy. Then a
/// session sealed with a key that was revoked.
fn rogue_provider_attacks(through: Through) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("policies");
    std::fs::create_dir_all(&dir).unwrap();
    let (provider_port, authz_port) = (free_port(), free_port());
    let upstream = start_echo();
    let (_proxy, proxy_port) = match through {
        Through::EnvoyHttp => start_envoy(&tmp.path().join("envoy"), authz_port, upstream),
        _ => start_nginx_site(&tmp.path().join("nginx"), |port| nginx_sign_in_site(port, authz_port, upstream)),
    };
    let host = format!("shop.localhost:{proxy_port}");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/upstream/rogue_provider.py");
    let mut provider =
        Proc::spawn("rogue provider", Command::new("python3").arg(&script).arg(provider_port.to_string()), tmp.path().join("rogue.log"));
    provider.wait_serving(Duration::from_secs(20), || {
        http(provider_port, "GET", "127.0.0.1", "/.well-known/openid-configuration", &[]).ok().filter(|r| r.status == 200)
    });
    let yaml = policies(provider_port, false).replace("scopes: [email, offline_access]", "scopes: [email]");
    std::fs::write(dir.join("web.yaml"), yaml).unwrap();
    let portcullis = start_local_with(&dir, authz_port, tmp.path().join("portcullis.log"), &[]);
    wait_until("the provider discovered", Duration::from_secs(20), || {
        (http(proxy_port, "GET", &host, "/", &[("Accept", "text/html")]).ok()?.status == 302).then_some(())
    });

    // A sign-in whose token response is `scenario`: the provider's redirect back, then the
    // callback through the proxy with this browser's login cookie.
    let sign_in = |scenario: &str| {
        let r = post(provider_port, "/scenario", "application/x-www-form-urlencoded", &format!("scenario={scenario}"));
        assert_eq!(r.status, 200);
        let start = http(proxy_port, "GET", &host, "/orders", &[("Accept", "text/html")]).unwrap();
        assert_eq!(start.status, 302);
        let login = start.header("set-cookie").unwrap().split(';').next().unwrap().to_owned();
        let to_provider = start.header("location").unwrap().strip_prefix(&format!("http://127.0.0.1:{provider_port}")).unwrap().to_owned();
        let back = http(provider_port, "GET", "127.0.0.1", &to_provider, &[]).unwrap();
        let callback = back.header("location").unwrap().strip_prefix(&format!("http://{host}")).unwrap().to_owned();
        assert!(callback.starts_with("/.portcullis/callback?code="), "{callback}");
        http(proxy_port, "GET", &host, &callback, &[("Cookie", &login)]).unwrap()
    };
    let unavailable = if through == Through::EnvoyHttp { 403 } else { 503 };
    for (scenario, status, says) in [
        ("wrong-nonce", 403, "nonce"),
        ("other-issuer", 403, "another issuer"),
        ("other-client", 403, "another client"),
        ("other-azp", 403, "another client"),
        ("expired", 403, "expired"),
        ("forged-signature", 403, "ID token"),
        ("alg-none", 403, "ID token"),
        ("hs256-public-key", 403, "ID token"),
        ("no-id-token", 403, "no ID token"),
        ("userinfo-other-subject", 403, "another subject"),
        ("server-error", unavailable, "cannot be reached"),
    ] {
        let r = sign_in(scenario);
        let body = String::from_utf8_lossy(&r.body);
        assert_eq!(r.status, status, "{scenario}: {body}");
        assert!(r.header("set-cookie").is_none_or(|c| !c.contains("portcullis-session")), "{scenario}: a session was set");
        // Envoy's HTTP ext_authz answers an authorizer's 5xx with its own 403 and no page.
        if !(through == Through::EnvoyHttp && scenario == "server-error") {
            assert!(body.contains(says), "{scenario}: {body}");
        }
    }

    // The same provider, well behaved: a session, served upstream.
    let r = sign_in("good");
    assert_eq!(r.status, 302, "{}", String::from_utf8_lossy(&r.body));
    let session: Vec<String> = r
        .headers
        .iter()
        .filter(|(k, v)| k.eq_ignore_ascii_case("set-cookie") && v.starts_with("portcullis-session-") && !v.contains("Max-Age=0"))
        .map(|(_, v)| v.split(';').next().unwrap().to_owned())
        .collect();
    assert_eq!(session.len(), 1, "{:?}", r.headers);
    let served = http(proxy_port, "GET", &host, "/orders", &[("Accept", "text/html"), ("Cookie", &session[0])]).unwrap();
    assert_eq!(served.status, 200);
    assert_eq!(served.json()["headers"]["x-user-id"][0], "mallory");
    assert_eq!(served.json()["headers"]["x-tenant-id"][0], "mallory@evil.example", "the userinfo's email");

    // The session SigningKey's key is revoked: the session it sealed ends at once.
    let list = Command::new(env!("CARGO_BIN_EXE_portcullis")).args(["keys", "list", "--dir"]).arg(&dir).output().unwrap();
    let listing = String::from_utf8_lossy(&list.stdout).into_owned();
    let kid = listing
        .lines()
        .skip_while(|l| !l.contains("shop/sessions"))
        .find_map(|l| l.split_whitespace().find(|w| w.len() == 43))
        .unwrap_or_else(|| panic!("no kid of shop/sessions in: {listing}"))
        .to_owned();
    let revoked = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["keys", "revoke", "--dir"])
        .arg(&dir)
        .args(["sessions", &kid])
        .output()
        .unwrap();
    assert!(revoked.status.success(), "{}", String::from_utf8_lossy(&revoked.stderr));
    wait_until("the revoked key's session refused", Duration::from_secs(20), || {
        let r = http(proxy_port, "GET", &host, "/orders", &[("Accept", "text/html"), ("Cookie", &session[0])]).ok()?;
        (r.status == 302).then_some(())
    });
    let script = http(proxy_port, "GET", &host, "/orders", &[("Accept", "application/json"), ("Cookie", &session[0])]).unwrap();
    assert_eq!(script.status, 401);
    let log = portcullis.log_text();
    assert!(!log.contains(session[0].split_once('=').unwrap().1), "a session cookie in the gateway's log");
}
