//! `[serve.weights]` as metrics: the revision's bytes here and in all,
//! and where this run took them from. Entry point:
//! [`WeightsMetrics::register`].

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Labels of a source.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct SourceLabel {
    source: &'static str,
}

/// The weights metrics.
#[derive(Debug, Default)]
pub(super) struct WeightsMetrics {
    done: Gauge,
    total: Gauge,
    taken: Family<SourceLabel, Gauge>,
}

fn gauge_value(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl WeightsMetrics {
    /// Registers every metric.
    pub(super) fn register(&self, registry: &mut Registry) {
        registry.register(
            "weights_bytes_done",
            "Bytes of the model's revision on this node, verified",
            self.done.clone(),
        );
        registry.register(
            "weights_bytes_total",
            "Bytes of the model's revision",
            self.total.clone(),
        );
        registry.register(
            "weights_taken_bytes",
            "Bytes this run took, by source (origin or peers)",
            self.taken.clone(),
        );
    }

    /// Records `progress`.
    pub(super) fn update(&self, progress: &orchestrator_weights::Progress) {
        self.done.set(gauge_value(progress.done_bytes));
        self.total.set(gauge_value(progress.total_bytes));
        self.taken
            .get_or_create(&SourceLabel { source: "origin" })
            .set(gauge_value(progress.from_origin_bytes));
        self.taken
            .get_or_create(&SourceLabel { source: "peers" })
            .set(gauge_value(progress.from_peers_bytes.values().sum()));
    }
}
