//! Prometheus metrics of the controller.

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

use crate::plumbing::metrics::{register, render};

#[derive(Clone)]
pub struct ControllerMetrics {
    pub registry: Registry,
    pub reconciles: IntCounterVec,
    pub errors: IntCounterVec,
    pub duration: HistogramVec,
    pub queue_depth: IntGaugeVec,
    pub last_compile: IntGaugeVec,
    pub config_bytes: IntGaugeVec,
    pub writes: IntCounterVec,
    pub leader: IntGauge,
}

impl Default for ControllerMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl ControllerMetrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let reconciles = IntCounterVec::new(
            Opts::new("portcullis_controller_reconciles_total", "Reconciliations by controller and result."),
            &["controller", "result"],
        )
        .expect("valid metric");
        let errors = IntCounterVec::new(
            Opts::new("portcullis_controller_errors_total", "Reconciliation errors by controller and kind."),
            &["controller", "kind"],
        )
        .expect("valid metric");
        let duration = HistogramVec::new(
            HistogramOpts::new("portcullis_controller_reconcile_duration_seconds", "Time per reconciliation.")
                .buckets(vec![0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
            &["controller"],
        )
        .expect("valid metric");
        let queue_depth = IntGaugeVec::new(
            Opts::new(
                "portcullis_controller_queue_depth",
                "Changes waiting to be reconciled (gateway: watch events since the last compile).",
            ),
            &["controller"],
        )
        .expect("valid metric");
        let last_compile = IntGaugeVec::new(
            Opts::new(
                "portcullis_controller_last_compile_success_timestamp_seconds",
                "When a gateway's config was last compiled and published.",
            ),
            &["gateway"],
        )
        .expect("valid metric");
        let config_bytes = IntGaugeVec::new(
            Opts::new("portcullis_controller_config_bytes", "Size of a gateway's published (compressed) config."),
            &["gateway"],
        )
        .expect("valid metric");
        let writes = IntCounterVec::new(Opts::new("portcullis_controller_writes_total", "Objects written, by kind."), &["kind"])
            .expect("valid metric");
        let leader = IntGauge::new("portcullis_controller_leader", "1 while this replica holds the leader Lease.").expect("valid metric");
        register(
            &registry,
            vec![
                Box::new(reconciles.clone()),
                Box::new(errors.clone()),
                Box::new(duration.clone()),
                Box::new(queue_depth.clone()),
                Box::new(last_compile.clone()),
                Box::new(config_bytes.clone()),
                Box::new(writes.clone()),
                Box::new(leader.clone()),
            ],
        );
        Self { registry, reconciles, errors, duration, queue_depth, last_compile, config_bytes, writes, leader }
    }

    pub fn render(&self) -> String {
        render(&self.registry)
    }
}
