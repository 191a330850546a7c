//! I/O plumbing shared by the gateway and the controller: their HTTP servers, metrics rendering,
//! JWKS fetching, and the backoff of their Kubernetes watches.

pub mod http;
pub mod jwks_fetch;
pub mod metrics;
pub mod watch_backoff;
