//! Prometheus plumbing shared by the gateway's and the controller's metrics.

use prometheus::{Encoder, Registry, TextEncoder};

/// Registers collectors whose names are fixed in code (so registration cannot fail).
pub fn register(registry: &Registry, collectors: Vec<Box<dyn prometheus::core::Collector>>) {
    for c in collectors {
        registry.register(c).expect("metric names are unique");
    }
}

/// The Prometheus text format of a registry.
pub fn render(registry: &Registry) -> String {
    let mut out = Vec::new();
    TextEncoder::new().encode(&registry.gather(), &mut out).expect("text encoding cannot fail");
    String::from_utf8(out).expect("metrics are UTF-8")
}
