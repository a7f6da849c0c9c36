//! The scale recommendation and the load it was made from, as gauges for
//! an autoscaler (HPA through a metrics adapter, KEDA's Prometheus
//! scaler, AIBrix's PodAutoscaler). Entry point: [`ScaleMetrics::update`].

use super::ScaleView;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

type F64Gauge = Gauge<f64, AtomicU64>;

/// The scale gauges.
#[derive(Debug, Default)]
pub(super) struct ScaleMetrics {
    desired: Gauge,
    demand: F64Gauge,
    current: Gauge,
    min: Gauge,
    max: Gauge,
    running: F64Gauge,
    waiting: F64Gauge,
    kv_cache_usage: F64Gauge,
    generation_tps: F64Gauge,
    prompt_tps: F64Gauge,
}

impl ScaleMetrics {
    /// Registers every gauge.
    pub(super) fn register(&self, registry: &mut Registry) {
        let gauges: [(&str, &str, Gauge); 4] = [
            (
                "desired_replicas",
                "Serving replicas the scale policy recommends for the load (absent until its first answer)",
                self.desired.clone(),
            ),
            (
                "scale_current_replicas",
                "Serving replicas the load is spread over, as the scale policy was told",
                self.current.clone(),
            ),
            (
                "scale_min_replicas",
                "The least replicas a recommendation may name",
                self.min.clone(),
            ),
            (
                "scale_max_replicas",
                "The most replicas a recommendation may name",
                self.max.clone(),
            ),
        ];
        for (name, help, gauge) in gauges {
            registry.register(name, help, gauge);
        }
        let loads: [(&str, &str, F64Gauge); 6] = [
            (
                "replica_demand",
                "This replica's share of the recommendation (desired / current replicas): summed over every head it is the recommendation, what HPA's Pods metrics, KEDA's sum() query and AIBrix's pod metric source scale on with a target of 1",
                self.demand.clone(),
            ),
            (
                "load_requests_running",
                "Requests in the serving engine's batches (vllm:num_requests_running), at the last sample",
                self.running.clone(),
            ),
            (
                "load_requests_waiting",
                "Requests queued in the serving engine (vllm:num_requests_waiting), at the last sample",
                self.waiting.clone(),
            ),
            (
                "load_kv_cache_usage",
                "KV-cache usage of the fullest engine, 0 to 1, at the last sample",
                self.kv_cache_usage.clone(),
            ),
            (
                "load_generation_tokens_per_second",
                "Generated tokens per second between the last two samples",
                self.generation_tps.clone(),
            ),
            (
                "load_prompt_tokens_per_second",
                "Prompt tokens per second between the last two samples",
                self.prompt_tps.clone(),
            ),
        ];
        for (name, help, gauge) in loads {
            registry.register(name, help, gauge);
        }
    }

    /// Sets every gauge from the latest view.
    pub(super) fn update(&self, view: &ScaleView) {
        if let Some(desired) = view.desired_replicas {
            self.desired.set(i64::from(desired));
            self.demand
                .set(f64::from(desired) / f64::from(view.current_replicas.max(1)));
        }
        self.current.set(i64::from(view.current_replicas));
        self.min.set(i64::from(view.min_replicas));
        self.max.set(i64::from(view.max_replicas));
        if let Some(s) = &view.last_sample {
            self.running.set(s.running);
            self.waiting.set(s.waiting);
            self.kv_cache_usage.set(s.kv_cache_usage);
            self.generation_tps.set(s.generation_tokens_per_second);
            self.prompt_tps.set(s.prompt_tokens_per_second);
        }
    }
}
