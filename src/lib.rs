//! Portcullis: JWT authentication and claim-based authorization for the routes behind an API
//! gateway, configured through Kubernetes resources.
//!
//! ```text
//!   api ──▶ policy (validate · compile) ──▶ GatewayConfig ──▶ decide (hot path)
//!             ▲                                  │                 ▲
//!   keys ─────┘ (public JWKS, minting keys)      ▼                 │
//!                                      gateway (HTTP, swaps configs atomically)
//! ```
//! `policy`, `keys` and `decide` are pure; `gateway`, `local` and the CLI move data in and out.
#![forbid(unsafe_code)]

pub mod api;
pub mod cli;
pub mod contract;
pub mod controller;
pub mod decide;
pub mod gateway;
pub mod jwk;
pub mod keys;
pub mod local;
pub mod plumbing;
pub mod policy;
#[doc(hidden)]
pub mod testkit;
