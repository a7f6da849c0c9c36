//! `[serve]`: what vLLM serves and how it is probed and stopped. Entry
//! point: [`ServeConfig`].

use super::PrefetchConfig;
use orchestrator_domain::{ServeSettings, StageDeadlines};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// How the model is served.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct ServeConfig {
    /// The model: a path or a hub name.
    pub model: Option<String>,
    /// The name the API serves it under.
    pub served_model_name: Option<String>,
    /// Bind address.
    pub host: String,
    /// Port.
    pub port: u16,
    /// Extra `vllm serve` arguments.
    pub extra_args: Vec<String>,
    /// Tensor-parallel size, if fixed.
    pub tensor_parallel_size: Option<u32>,
    /// Pipeline-parallel size, if fixed.
    pub pipeline_parallel_size: Option<u32>,
    /// Where the probes reach the server (default: 127.0.0.1, or `host`
    /// when it is a specific address).
    pub probe_host: Option<String>,
    /// How often `/health` is probed and the health policy asked, ms.
    pub health_interval_ms: u64,
    /// How often a one-token completion is sent, ms.
    pub generation_interval_ms: u64,
    /// Timeout of a `/health` probe, ms.
    pub health_timeout_ms: u64,
    /// Timeout of a generation probe, ms.
    pub generation_timeout_ms: u64,
    /// Seconds the server gets to drain after SIGTERM before SIGKILL.
    pub stop_grace_seconds: u64,
    /// On a stop request, after `/readyz` turns false: how long requests
    /// already in flight (vLLM's running and waiting counts on its
    /// `/metrics`) may take to finish before the server is stopped, s
    /// (0: stop at once).
    pub drain_timeout_seconds: u64,
    /// `/readyz` turns 200 only once a warm-up completion (the first
    /// one-token generation probe) succeeded, so the first user request
    /// does not pay for the server's first-request warm-up. Off for a
    /// server without completions: ready at the first `/health` 200.
    pub ready_after_warmup: bool,
    /// How long each rank may stay in each start stage before it counts
    /// as stalled (seconds per stage; `[serve.stage-deadlines]`).
    pub stage_deadlines: StageDeadlines,
    /// The py-spy program that takes a stalled rank's stacks (default: the
    /// one beside the server's program, else `py-spy` on the PATH).
    pub py_spy: Option<PathBuf>,
    /// Where a stall's stacks are written.
    pub stacks_dir: PathBuf,
    /// The model's files to bring into the page cache on every node while
    /// the cluster forms.
    pub prefetch: PrefetchConfig,
    /// The gang preflight before the server starts.
    pub preflight: super::PreflightConfig,
    /// The model's files fetched from an origin once per group.
    pub weights: super::WeightsConfig,
    /// `[serve.compile-cache]`.
    pub compile_cache: super::CompileCacheConfig,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            model: None,
            served_model_name: None,
            host: "0.0.0.0".to_string(),
            port: 8000,
            extra_args: vec![],
            tensor_parallel_size: None,
            pipeline_parallel_size: None,
            probe_host: None,
            health_interval_ms: 2000,
            generation_interval_ms: 15_000,
            health_timeout_ms: 5000,
            generation_timeout_ms: 60_000,
            stop_grace_seconds: 30,
            drain_timeout_seconds: 30,
            ready_after_warmup: true,
            stage_deadlines: StageDeadlines::default(),
            py_spy: None,
            stacks_dir: PathBuf::from("/tmp/orchestrator-stacks"),
            prefetch: PrefetchConfig::default(),
            preflight: super::PreflightConfig::default(),
            weights: super::WeightsConfig::default(),
            compile_cache: super::CompileCacheConfig::default(),
        }
    }
}

impl ServeConfig {
    /// Where the probes reach the server, `HOST:PORT`.
    pub fn probe_address(&self) -> String {
        let host = self.probe_host.clone().unwrap_or_else(|| {
            if self.host == "0.0.0.0" || self.host == "::" {
                "127.0.0.1".to_string()
            } else {
                self.host.clone()
            }
        });
        format!("{host}:{}", self.port)
    }

    /// Whether a model is named: `model`, or the repository of
    /// `[serve.weights]`.
    pub fn has_model(&self) -> bool {
        self.model.is_some() || self.weights.enabled()
    }

    /// The serve settings in the policy contract's terms.
    pub fn settings(&self) -> ServeSettings {
        ServeSettings {
            // With `[serve.weights]` the launch serves the fetched folder
            // under this name.
            model: self
                .model
                .clone()
                .or_else(|| self.weights.enabled().then(|| self.weights.repo()))
                .unwrap_or_default(),
            served_model_name: self.served_model_name.clone(),
            host: self.host.clone(),
            port: self.port,
            extra_args: self.extra_args.clone(),
            tensor_parallel_size: self.tensor_parallel_size,
            pipeline_parallel_size: self.pipeline_parallel_size,
            native_group: None,
        }
    }
}
