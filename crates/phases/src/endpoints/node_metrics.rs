//! The node-health metrics: each node's verdict and its main readings as
//! gauges, labelled by the node's address (and the GPU's index). Entry
//! point: [`NodeMetrics::update`], given every node's latest view.

use super::NodeHealthView;
use orchestrator_domain::NodeHealthState;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct NodeVerdictLabel {
    node: String,
    verdict: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct NodeLabel {
    node: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct GpuLabel {
    node: String,
    gpu: u32,
}

type F64Gauge = Gauge<f64, AtomicU64>;

/// The node-health gauges.
#[derive(Debug, Default)]
pub(super) struct NodeMetrics {
    health: Family<NodeVerdictLabel, Gauge>,
    gpus_visible: Family<NodeLabel, Gauge>,
    advertised_gpus: Family<NodeLabel, F64Gauge>,
    temp_dir_free: Family<NodeLabel, Gauge>,
    shm: Family<NodeLabel, Gauge>,
    memory_available: Family<NodeLabel, Gauge>,
    raylet_nofile: Family<NodeLabel, Gauge>,
    report_age: Family<NodeLabel, F64Gauge>,
    gpu_temperature: Family<GpuLabel, Gauge>,
    gpu_memory_used: Family<GpuLabel, Gauge>,
    gpu_memory_total: Family<GpuLabel, Gauge>,
    gpu_ecc_uncorrected: Family<GpuLabel, Gauge>,
    gpu_power: Family<GpuLabel, F64Gauge>,
    gpu_xids: Family<GpuLabel, Gauge>,
}

fn int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl NodeMetrics {
    /// Registers every gauge.
    pub(super) fn register(&self, registry: &mut Registry) {
        registry.register(
            "node_health",
            "1 for each node's current node-health verdict (healthy, degraded, unhealthy, stale, unknown), 0 otherwise",
            self.health.clone(),
        );
        registry.register(
            "node_gpus_visible",
            "GPUs NVML sees on the node",
            self.gpus_visible.clone(),
        );
        registry.register(
            "node_gpus_advertised",
            "GPUs the node offers to Ray",
            self.advertised_gpus.clone(),
        );
        registry.register(
            "node_temp_dir_free_bytes",
            "Free space where Ray writes",
            self.temp_dir_free.clone(),
        );
        registry.register("node_shm_bytes", "Size of /dev/shm", self.shm.clone());
        registry.register(
            "node_memory_available_bytes",
            "Memory available (MemAvailable)",
            self.memory_available.clone(),
        );
        registry.register(
            "node_raylet_open_file_limit",
            "The raylet's open-file limit (soft)",
            self.raylet_nofile.clone(),
        );
        registry.register(
            "node_health_report_age_seconds",
            "Time since the node's last new health report",
            self.report_age.clone(),
        );
        registry.register(
            "node_gpu_temperature_celsius",
            "GPU temperature",
            self.gpu_temperature.clone(),
        );
        registry.register(
            "node_gpu_memory_used_bytes",
            "GPU memory in use",
            self.gpu_memory_used.clone(),
        );
        registry.register(
            "node_gpu_memory_total_bytes",
            "GPU memory in total",
            self.gpu_memory_total.clone(),
        );
        registry.register(
            "node_gpu_ecc_uncorrected_volatile",
            "Uncorrectable ECC errors since the driver loaded",
            self.gpu_ecc_uncorrected.clone(),
        );
        registry.register(
            "node_gpu_power_watts",
            "GPU power draw",
            self.gpu_power.clone(),
        );
        registry.register(
            "node_gpu_critical_xids",
            "Critical XID events seen on the GPU",
            self.gpu_xids.clone(),
        );
    }

    /// Replaces every gauge with `views` (nodes gone are dropped).
    pub(super) fn update(&self, views: &[NodeHealthView]) {
        self.health.clear();
        self.gpus_visible.clear();
        self.advertised_gpus.clear();
        self.temp_dir_free.clear();
        self.shm.clear();
        self.memory_available.clear();
        self.raylet_nofile.clear();
        self.report_age.clear();
        self.gpu_temperature.clear();
        self.gpu_memory_used.clear();
        self.gpu_memory_total.clear();
        self.gpu_ecc_uncorrected.clear();
        self.gpu_power.clear();
        self.gpu_xids.clear();
        for v in views {
            let node = if v.address.is_empty() {
                v.node_id.clone()
            } else {
                v.address.clone()
            };
            for state in NodeHealthState::ALL {
                self.health
                    .get_or_create(&NodeVerdictLabel {
                        node: node.clone(),
                        verdict: state.name(),
                    })
                    .set(i64::from(state == v.state));
            }
            let n = NodeLabel { node: node.clone() };
            let r = &v.readings;
            self.gpus_visible.get_or_create(&n).set(r.gpus.len() as i64);
            self.advertised_gpus
                .get_or_create(&n)
                .set(r.advertised_gpus);
            self.temp_dir_free
                .get_or_create(&n)
                .set(int(r.temp_dir_free_bytes));
            if let Some(shm) = r.shm_total_bytes {
                self.shm.get_or_create(&n).set(int(shm));
            }
            self.memory_available
                .get_or_create(&n)
                .set(int(r.memory_available_bytes));
            if let Some(limit) = r.raylet_open_file_limit {
                self.raylet_nofile.get_or_create(&n).set(int(limit));
            }
            self.report_age
                .get_or_create(&n)
                .set(v.report_age_ms as f64 / 1000.0);
            for g in &r.gpus {
                let l = GpuLabel {
                    node: node.clone(),
                    gpu: g.index,
                };
                if let Some(t) = g.temperature_c {
                    self.gpu_temperature.get_or_create(&l).set(i64::from(t));
                }
                self.gpu_memory_used
                    .get_or_create(&l)
                    .set(int(g.memory_used_bytes));
                self.gpu_memory_total
                    .get_or_create(&l)
                    .set(int(g.memory_total_bytes));
                if let Some(e) = g.ecc_uncorrected_volatile {
                    self.gpu_ecc_uncorrected.get_or_create(&l).set(int(e));
                }
                if let Some(p) = g.power_watts {
                    self.gpu_power.get_or_create(&l).set(p);
                }
                self.gpu_xids.get_or_create(&l).set(g.xids.len() as i64);
            }
        }
    }
}
