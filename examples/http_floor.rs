//! The floor under the authorizer's HTTP/1.1 hop: Portcullis' own server plumbing
//! (`portcullis::plumbing::http::serve`) answering every request 200 with no headers and no decision.
//! `bench/side-by-side.sh` puts it next to NGINX's `return 200` and Portcullis.
//!
//!   cargo run --release --example http_floor -- 127.0.0.1:9090

use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;

// The same allocator as the portcullis binary, so that the floor is the same stack.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:9090".into());
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&addr).await.expect("bind");
        let (_stop, shutdown) = tokio::sync::watch::channel(false);
        let handler = |_req| async { portcullis::plumbing::http::reply(StatusCode::OK, "text/plain", Bytes::new()) };
        portcullis::plumbing::http::serve(listener, handler, shutdown, Duration::from_secs(1)).await;
    });
}
