//! The start of the serving process as metrics: when each startup step
//! happened, the stage each rank's server reached, and the starts that
//! failed. Entry point: [`StartupMetrics::register`].

use orchestrator_domain::{ServerStage, StartupStep};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

/// Labels of a startup step.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct StepLabel {
    step: &'static str,
}

/// Labels of a rank.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RankLabel {
    rank: u32,
}

/// The startup metrics.
#[derive(Debug, Default)]
pub(super) struct StartupMetrics {
    seconds: Family<StepLabel, Gauge<f64, AtomicU64>>,
    stage: Family<RankLabel, Gauge>,
    failures: Counter,
}

impl StartupMetrics {
    /// Registers every metric.
    pub(super) fn register(&self, registry: &mut Registry) {
        registry.register(
            "startup_seconds",
            "When each startup step happened, seconds after the orchestrator started (node-joined: the last join)",
            self.seconds.clone(),
        );
        registry.register(
            "server_stage",
            "The stage each rank's server reached: 0 process-up, 1 imports-done, 2 distributed-init, 3 weights-loaded, 4 kv-cache-allocated, 5 api-up, 6 warmed-up",
            self.stage.clone(),
        );
        registry.register(
            "server_startup_failures",
            "Serving processes that exited before they served",
            self.failures.clone(),
        );
    }

    /// `step` happened `seconds` after the orchestrator started.
    pub(super) fn step(&self, step: StartupStep, seconds: f64) {
        self.seconds
            .get_or_create(&StepLabel { step: step.name() })
            .set(seconds);
    }

    /// `rank`'s server reached `stage`.
    pub(super) fn stage(&self, rank: u32, stage: ServerStage) {
        let ordinal = ServerStage::ALL
            .iter()
            .position(|s| *s == stage)
            .unwrap_or(0);
        self.stage
            .get_or_create(&RankLabel { rank })
            .set(ordinal as i64);
    }

    /// A start failed.
    pub(super) fn failed(&self) {
        self.failures.inc();
    }
}
