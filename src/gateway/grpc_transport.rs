//! gRPC over HTTP/2 for the one method the authorizer serves, `Authorization/Check`, on the `h2`
//! crate directly.
//!
//! Why not a generic gRPC server: Envoy multiplexes every Check of a worker on one connection,
//! and a generic server ran each stream as its own task behind a stack of middleware, and wrote
//! each answer twice (its headers, then — once flow control let the body go — data and
//! trailers). Here a connection is one task: streams are decided next to the connection that
//! reads them, an answer's three frames are queued at once, and one write carries them (and any
//! other answers ready by then). docs/performance.md has the numbers.

use std::future::Future;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use envoy_types::pb::envoy::service::auth::v3::{CheckRequest, CheckResponse};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use h2::RecvStream;
use h2::server::SendResponse;
use http::{HeaderMap, HeaderValue, Response};
use prost::Message;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::Gateway;
use super::grpc::code;

/// The one method served.
pub const CHECK_PATH: &str = "/envoy.service.auth.v3.Authorization/Check";

/// How the gRPC listener is bounded.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Longest time one Check may take (Envoy's own timeout should be shorter).
    pub deadline: Duration,
    /// Concurrent streams per HTTP/2 connection (Envoy multiplexes on few connections).
    pub max_streams: u32,
    /// Largest CheckRequest accepted (headers only; Envoy sends no body unless asked).
    pub max_message_bytes: usize,
    /// A connection that does not answer a ping within this is closed.
    pub keepalive: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self { deadline: Duration::from_secs(5), max_streams: 1024, max_message_bytes: 1 << 20, keepalive: Duration::from_secs(30) }
    }
}

/// The connection as a stream without vectored writes. On a vectored stream the HTTP/2 codec
/// sends a DATA payload over 256 bytes as its own buffer, and writes it out before it takes the
/// next frame: every answer cost two writes (headers and data, then the status trailers).
/// Without, it copies payloads up to 1 KiB into its buffer — an answer's frames, and the answers
/// ready together, go in one write.
struct Unvectored<T>(T);

impl<T: AsyncRead + Unpin> AsyncRead for Unvectored<T> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Unvectored<T> {
    fn poll_write(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// Serves gRPC Check on `listener` until `shutdown` turns true, with optional TLS (the config
/// must offer ALPN `h2`). Open connections finish their streams and close (GOAWAY).
pub async fn serve(
    listener: TcpListener,
    gateway: Arc<Gateway>,
    limits: Limits,
    tls: Option<Arc<rustls::ServerConfig>>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), String> {
    let tls = tls.map(tokio_rustls::TlsAcceptor::from);
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors and the like: wait, never spin.
                    tracing::warn!("gRPC accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = stopped(&mut shutdown) => break,
        };
        let _ = tcp.set_nodelay(true);
        let (gateway, limits, tls, stop) = (gateway.clone(), limits.clone(), tls.clone(), shutdown.clone());
        connections.spawn(async move {
            let result = match tls {
                Some(acceptor) => match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(io)) => connection(io, gateway, limits, stop).await,
                    Ok(Err(e)) => Err(format!("TLS handshake: {e}")),
                    Err(_) => Err("TLS handshake timed out".into()),
                },
                None => connection(tcp, gateway, limits, stop).await,
            };
            if let Err(e) = result {
                tracing::debug!(%peer, "gRPC connection: {e}");
            }
        });
        while connections.try_join_next().is_some() {}
    }
    while connections.join_next().await.is_some() {}
    Ok(())
}

/// One HTTP/2 connection: its streams are decided in this task, beside the connection itself.
async fn connection<T>(io: T, gateway: Arc<Gateway>, limits: Limits, mut shutdown: watch::Receiver<bool>) -> Result<(), String>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let window = (limits.max_message_bytes as u32 + 5).max(65_535);
    let io = Unvectored(io);
    let handshake = h2::server::Builder::new()
        .max_concurrent_streams(limits.max_streams)
        .initial_window_size(window)
        .initial_connection_window_size(window.saturating_mul(4))
        .max_header_list_size(64 * 1024)
        .handshake::<_, Bytes>(io);
    // A peer that connects and never speaks HTTP/2 holds nothing for long.
    let mut conn = match tokio::time::timeout(limits.keepalive.min(Duration::from_secs(10)), handshake).await {
        Ok(conn) => conn.map_err(|e| format!("handshake: {e}"))?,
        Err(_) => return Err("no HTTP/2 handshake".into()),
    };
    let keepalive = keepalive(conn.ping_pong(), limits.keepalive);
    tokio::pin!(keepalive);
    let mut streams = FuturesUnordered::new();
    let mut closing = false;
    loop {
        tokio::select! {
            accepted = conn.accept() => match accepted {
                Some(Ok((request, respond))) => streams.push(stream(&gateway, &limits, request, respond)),
                Some(Err(e)) => return Err(e.to_string()),
                None => break,
            },
            Some(()) = streams.next(), if !streams.is_empty() => {}
            () = stopped(&mut shutdown), if !closing => {
                closing = true;
                conn.graceful_shutdown();
            }
            why = &mut keepalive => return Err(why),
        }
    }
    // The peer closed or went away after a GOAWAY: answer what is left.
    while streams.next().await.is_some() {}
    Ok(())
}

/// The listener's TLS: the certificate chain and key (PEM), offering HTTP/2 only.
pub fn tls_config(cert: &std::path::Path, key: &std::path::Path) -> Result<Arc<rustls::ServerConfig>, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("reading certificates from {}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!("no certificate in {}", cert.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("reading a private key from {}: {e}", key.display()))?;
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| format!("the certificate in {} and its key: {e}", cert.display()))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}

/// Pings every `every`; resolves (with why) when a ping goes unanswered for as long.
async fn keepalive(ping: Option<h2::PingPong>, every: Duration) -> String {
    let Some(mut ping) = ping else { return std::future::pending().await };
    loop {
        tokio::time::sleep(every).await;
        match tokio::time::timeout(every, ping.ping(h2::Ping::opaque())).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return format!("ping: {e}"),
            Err(_) => return "no answer to a ping".into(),
        }
    }
}

/// One stream: one Check, answered with headers, the message and the status trailers queued
/// together.
async fn stream(gateway: &Gateway, limits: &Limits, request: http::Request<RecvStream>, mut respond: SendResponse<Bytes>) {
    let (code, message) = match check(gateway, limits, request).await {
        Ok(answer) => {
            let code = answer.status.as_ref().map_or(0, |s| s.code);
            gateway.metrics.grpc_check(code);
            let mut body = BytesMut::with_capacity(5 + answer.encoded_len());
            body.put_u8(0);
            body.put_u32(answer.encoded_len() as u32);
            answer.encode(&mut body).expect("capacity reserved");
            let Ok(mut send) = respond.send_response(grpc_head(), false) else { return };
            let _ = send.send_data(body.freeze(), false);
            let _ = send.send_trailers(status_trailers(0, ""));
            return;
        }
        Err(e) => e,
    };
    gateway.metrics.grpc_check(code);
    // Trailers-only: the status in the one HEADERS frame.
    let mut head = grpc_head();
    head.headers_mut().extend(status_trailers(code, &message));
    let _ = respond.send_response(head, true);
}

/// The CheckResponse for a request, or the gRPC status the transport answers instead.
async fn check(gateway: &Gateway, limits: &Limits, request: http::Request<RecvStream>) -> Result<CheckResponse, (i32, String)> {
    let (parts, mut body) = request.into_parts();
    if parts.method != http::Method::POST || parts.uri.path() != CHECK_PATH {
        return Err((code::UNIMPLEMENTED, format!("only {CHECK_PATH} is served")));
    }
    let grpc =
        parts.headers.get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|t| t.starts_with("application/grpc"));
    if !grpc {
        return Err((code::INVALID_ARGUMENT, "content-type is not application/grpc".into()));
    }
    let limit = limits.max_message_bytes + 5;
    let mut buf = BytesMut::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.map_err(|e| (code::INTERNAL, format!("reading the request: {e}")))?;
        let _ = body.flow_control().release_capacity(chunk.len());
        if buf.len() + chunk.len() > limit {
            return Err((code::RESOURCE_EXHAUSTED, format!("a CheckRequest larger than {} bytes", limits.max_message_bytes)));
        }
        buf.extend_from_slice(&chunk);
    }
    let message = frame(&buf)?;
    let request = CheckRequest::decode(message).map_err(|e| (code::INVALID_ARGUMENT, format!("not a CheckRequest: {e}")))?;
    // The caller's own deadline when it is the shorter: an answer after it reaches nobody.
    let deadline = parts.headers.get("grpc-timeout").and_then(grpc_timeout).map_or(limits.deadline, |t| t.min(limits.deadline));
    within(deadline, gateway.check(request)).await.ok_or((code::DEADLINE_EXCEEDED, "the decision took too long".into()))
}

/// A `grpc-timeout` header: up to 8 digits and a unit (`H`, `M`, `S`, `m`, `u`, `n`); anything
/// else is no timeout (the listener's own deadline still applies).
fn grpc_timeout(value: &HeaderValue) -> Option<Duration> {
    let v = value.as_bytes();
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b"H" => Duration::from_secs(n * 3600),
        b"M" => Duration::from_secs(n * 60),
        b"S" => Duration::from_secs(n),
        b"m" => Duration::from_millis(n),
        b"u" => Duration::from_micros(n),
        b"n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The one message of a unary request: a flag byte (0: not compressed), its length, itself.
fn frame(buf: &[u8]) -> Result<&[u8], (i32, String)> {
    let Some((&[flag, a, b, c, d], rest)) = buf.split_first_chunk::<5>() else {
        return Err((code::INVALID_ARGUMENT, "no gRPC message".into()));
    };
    if flag != 0 {
        return Err((code::UNIMPLEMENTED, "compressed messages are not accepted".into()));
    }
    if u32::from_be_bytes([a, b, c, d]) as usize != rest.len() {
        return Err((code::INVALID_ARGUMENT, "one gRPC message per Check".into()));
    }
    Ok(rest)
}

/// `fut`, given at most `deadline` once it has to wait: a decision from memory sets no timer.
async fn within<F: Future>(deadline: Duration, fut: F) -> Option<F::Output> {
    let mut fut = std::pin::pin!(fut);
    if let Poll::Ready(out) = std::future::poll_fn(|cx| Poll::Ready(fut.as_mut().poll(cx))).await {
        return Some(out);
    }
    tokio::time::timeout(deadline, fut).await.ok()
}

fn grpc_head() -> Response<()> {
    let mut head = Response::new(());
    head.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    head
}

fn status_trailers(code: i32, message: &str) -> HeaderMap {
    let mut trailers = HeaderMap::with_capacity(2);
    trailers.insert("grpc-status", HeaderValue::from(code));
    if !message.is_empty() {
        // Percent-encoded as gRPC says; our messages are ASCII, anything else is dropped.
        let text: String = message.chars().filter(|c| c.is_ascii() && !c.is_ascii_control() && *c != '%').collect();
        if let Ok(v) = HeaderValue::from_str(&text) {
            trailers.insert("grpc-message", v);
        }
    }
    trailers
}

#[cfg(test)]
#[path = "grpc_transport_tests.rs"]
mod tests;
