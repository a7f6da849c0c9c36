//! A node's configuration for a test, built from the orchestrator's own
//! [`Config`] (so a renamed or removed setting fails to compile here, not
//! at run time in some test's TOML text): a head or a worker with the
//! test's address, its own ports and temp dir, and bounded memory, then
//! whatever the test changes. Entry points: [`TestNode::head`],
//! [`TestNode::worker`].
//!
//! ```no_run
//! use orchestrator_test_support::TestNode;
//! let dir = tempfile::tempdir().unwrap();
//! let head = TestNode::head("127.0.0.90").with(|c| c.cluster.nodes = Some(2));
//! let worker = TestNode::worker("127.0.0.91", &head.gcs_address());
//! let (head_file, worker_file) = (head.write(dir.path(), "head.toml"), worker.write(dir.path(), "worker.toml"));
//! ```

use crate::{free_port, ray_bin};
use orchestrator_phases::config::{Config, Role};
use std::path::{Path, PathBuf};

/// Ray's memory for a test node: 500 MB, its object store 80 MB.
const MEMORY: u64 = 500_000_000;
const OBJECT_STORE: u64 = 80_000_000;

/// One node's configuration; [`write`](Self::write) it for `orchestrator
/// run --config`.
#[derive(Debug, Clone)]
pub struct TestNode {
    /// The configuration as it will be written.
    pub config: Config,
}

impl TestNode {
    /// A head at `ip`: Ray from `ORCHESTRATOR_RAY_BIN` on a free GCS port
    /// with its temp dir `/tmp/ray-t<port>`, one CPU, bounded memory, its
    /// own agent and metrics ports, usage stats off, a 5 s stop grace, its
    /// endpoints on a free port of 127.0.0.1; everything else (what the
    /// cluster is expected to be included) as the orchestrator's defaults.
    pub fn head(ip: &str) -> Self {
        Self::head_using(ip, &ray_bin())
    }

    /// [`head`](Self::head) with `ray` as Ray's executable (a stand-in).
    pub fn head_using(ip: &str, ray: &str) -> Self {
        let mut config = Self::ray_node(ip, ray);
        config.role = Role::Head;
        config.ray.gcs_port = free_port();
        config.ray.temp_dir = Some(PathBuf::from(format!("/tmp/ray-t{}", config.ray.gcs_port)));
        config.endpoints_port = free_port();
        config.endpoints_host = "127.0.0.1".into();
        Self { config }
    }

    /// A worker at `ip` joining the GCS at `gcs_address` (`HOST:PORT`):
    /// like [`head`](Self::head), without endpoints.
    pub fn worker(ip: &str, gcs_address: &str) -> Self {
        Self::worker_using(ip, gcs_address, &ray_bin())
    }

    /// [`worker`](Self::worker) with `ray` as Ray's executable.
    pub fn worker_using(ip: &str, gcs_address: &str, ray: &str) -> Self {
        let mut config = Self::ray_node(ip, ray);
        config.role = Role::Worker;
        config.ray.gcs_address = Some(gcs_address.into());
        config.endpoints_port = 0;
        Self { config }
    }

    fn ray_node(ip: &str, ray: &str) -> Config {
        let mut config = Config::default();
        config.ray.bin = PathBuf::from(ray);
        config.ray.node_ip = Some(ip.into());
        config.ray.num_cpus = Some(1.0);
        config.ray.memory = Some(MEMORY);
        config.ray.object_store_memory = Some(OBJECT_STORE);
        config.ray.dashboard_agent_listen_port = Some(free_port());
        config.ray.metrics_export_port = Some(free_port());
        config.ray.stop_grace_seconds = 5;
        config
            .ray
            .env
            .insert("RAY_USAGE_STATS_ENABLED".into(), "0".into());
        config
    }

    /// The same node with `change` applied.
    pub fn with(mut self, change: impl FnOnce(&mut Config)) -> Self {
        change(&mut self.config);
        self
    }

    /// Serving `model` as `tiny` with real vLLM's CPU build (the test
    /// platform plugin: one "GPU" a node), tensor parallel over two nodes,
    /// from `vllm`, on `host`: short context, bfloat16, eager; probed
    /// every 500 ms, a completion every 5 s.
    pub fn serve_tiny_on_cpu_vllm(c: &mut Config, model: &str, vllm: &str, host: &str) {
        c.serve.model = Some(model.into());
        c.serve.served_model_name = Some("tiny".into());
        c.serve.host = host.into();
        c.serve.tensor_parallel_size = Some(2);
        c.serve.extra_args = [
            "--max-model-len",
            "256",
            "--dtype",
            "bfloat16",
            "--enforce-eager",
        ]
        .map(String::from)
        .to_vec();
        c.serve.health_interval_ms = 500;
        c.serve.generation_interval_ms = 5000;
        for (key, value) in [
            ("program", vllm),
            ("env.VLLM_HOST_IP", host),
            ("env.VLLM_CPU_RAY_TEST_PLATFORM", "1"),
            ("env.VLLM_CPU_KVCACHE_SPACE", "1"),
            ("env.HF_HUB_OFFLINE", "1"),
        ] {
            c.policies.launch.params.insert(key.into(), value.into());
        }
    }

    /// Where a worker finds this head's GCS.
    pub fn gcs_address(&self) -> String {
        format!(
            "{}:{}",
            self.config.ray.node_ip.as_deref().unwrap_or("127.0.0.1"),
            self.config.ray.gcs_port
        )
    }

    /// Where this node's endpoints answer (`HOST:PORT`).
    pub fn endpoints(&self) -> String {
        format!(
            "{}:{}",
            self.config.endpoints_host, self.config.endpoints_port
        )
    }

    /// Ray's temp dir of this node, if it has its own.
    pub fn temp_dir(&self) -> Option<&Path> {
        self.config.ray.temp_dir.as_deref()
    }

    /// Writes the configuration as TOML to `dir/name`; returns the path.
    pub fn write(&self, dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(name);
        let text = toml::to_string(&self.config).expect("a configuration serializes");
        std::fs::write(&path, text).expect("the configuration is written");
        path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What is written loads back as the same configuration, and passes
    /// the orchestrator's own validation.
    #[test]
    fn a_written_head_and_worker_load_back_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let head = TestNode::head_using("127.0.0.90", "/opt/ray/bin/ray").with(|c| {
            c.cluster.nodes = Some(2);
            c.serve.model = Some("/models/tiny".into());
        });
        let worker = TestNode::worker_using("127.0.0.91", &head.gcs_address(), "/opt/ray/bin/ray");
        for (node, name) in [(&head, "head.toml"), (&worker, "worker.toml")] {
            let path = node.write(dir.path(), name);
            let loaded = Config::load(Some(&path), Vec::new(), &[]).unwrap();
            assert_eq!(
                loaded,
                node.config,
                "{}",
                std::fs::read_to_string(&path).unwrap()
            );
        }
        assert_eq!(worker.config.ray.gcs_address, Some(head.gcs_address()));
    }
}
