//! The wire forms of `ray-orchestrator:policy/types@0.1.0`: what crosses
//! into a guest. wasmtime checks these derives against the WIT when a
//! plugin is instantiated, so a drift is caught at once. The rest of the
//! orchestrator uses `orchestrator_domain`'s types; [`crate::convert`]
//! maps between the two.
#![allow(missing_docs)] // Each item is documented in the WIT; see wit/policy-0.1.0/types.wit.

use wasmtime::component::{ComponentType, Lift, Lower};

/// A key and its value.
#[derive(ComponentType, Lift, Lower, Clone, Debug, PartialEq, Eq, Default)]
#[component(record)]
pub struct KeyValue {
    pub key: String,
    pub value: String,
}

/// An amount of a custom Ray resource.
#[derive(ComponentType, Lift, Lower, Clone, Debug, PartialEq, Default)]
#[component(record)]
pub struct ResourceAmount {
    pub name: String,
    pub amount: f64,
}

/// What a node offers in total.
#[derive(ComponentType, Lift, Lower, Clone, Debug, PartialEq, Default)]
#[component(record)]
pub struct Resources {
    pub cpu: f64,
    pub gpu: f64,
    #[component(name = "memory-bytes")]
    pub memory_bytes: u64,
    #[component(name = "object-store-memory-bytes")]
    pub object_store_memory_bytes: u64,
    pub custom: Vec<ResourceAmount>,
}

/// One Ray node as the GCS knows it.
#[derive(ComponentType, Lift, Lower, Clone, Debug, PartialEq, Default)]
#[component(record)]
pub struct Node {
    pub id: String,
    pub address: String,
    pub hostname: String,
    #[component(name = "is-head")]
    pub is_head: bool,
    pub alive: bool,
    pub resources: Resources,
    pub labels: Vec<KeyValue>,
    #[component(name = "start-time-ms")]
    pub start_time_ms: u64,
}

/// The expected shape of one group of nodes.
#[derive(ComponentType, Lift, Lower, Clone, Debug, PartialEq, Default)]
#[component(record)]
pub struct NodeGroup {
    pub name: String,
    pub replicas: u32,
    #[component(name = "cpus-per-node")]
    pub cpus_per_node: f64,
    #[component(name = "gpus-per-node")]
    pub gpus_per_node: f64,
}

/// The cluster the user asked for.
#[derive(ComponentType, Lift, Lower, Clone, Debug, PartialEq, Default)]
#[component(record)]
pub struct Topology {
    pub nodes: u32,
    pub gpus: f64,
    #[component(name = "min-gpus-per-node")]
    pub min_gpus_per_node: f64,
    pub groups: Vec<NodeGroup>,
}

/// Everything a readiness or launch policy may judge the cluster by.
#[derive(ComponentType, Lift, Lower, Clone, Debug, PartialEq, Default)]
#[component(record)]
pub struct ClusterSnapshot {
    pub nodes: Vec<Node>,
    pub expected: Topology,
    #[component(name = "elapsed-ms")]
    pub elapsed_ms: u64,
    #[component(name = "deadline-ms")]
    pub deadline_ms: u64,
    pub diagnostics: Vec<String>,
}

/// A readiness policy's verdict.
#[derive(ComponentType, Lift, Lower, Clone, Debug, PartialEq, Eq)]
#[component(variant)]
pub enum Readiness {
    #[component(name = "ready")]
    Ready,
    #[component(name = "wait")]
    Wait(String),
    #[component(name = "fail")]
    Fail(String),
}

/// How the user asked the model to be served.
#[derive(ComponentType, Lift, Lower, Clone, Debug, PartialEq, Eq, Default)]
#[component(record)]
pub struct ServeSettings {
    pub model: String,
    #[component(name = "served-model-name")]
    pub served_model_name: Option<String>,
    pub host: String,
    pub port: u16,
    #[component(name = "extra-args")]
    pub extra_args: Vec<String>,
    #[component(name = "tensor-parallel-size")]
    pub tensor_parallel_size: Option<u32>,
    #[component(name = "pipeline-parallel-size")]
    pub pipeline_parallel_size: Option<u32>,
}

/// The input of a launch policy.
#[derive(ComponentType, Lift, Lower, Clone, Debug, PartialEq, Default)]
#[component(record)]
pub struct LaunchRequest {
    pub cluster: ClusterSnapshot,
    pub settings: ServeSettings,
}

/// How to start the serving process.
#[derive(ComponentType, Lift, Lower, Clone, Debug, PartialEq, Eq, Default)]
#[component(record)]
pub struct LaunchPlan {
    pub argv: Vec<String>,
    pub env: Vec<KeyValue>,
}

/// Why a launch policy could not build a plan.
#[derive(ComponentType, Lift, Lower, Clone, Debug, PartialEq, Eq)]
#[component(variant)]
pub enum LaunchError {
    #[component(name = "impossible-layout")]
    ImpossibleLayout(String),
    #[component(name = "invalid-settings")]
    InvalidSettings(String),
    #[component(name = "other")]
    Other(String),
}

/// How the serving process ended.
#[derive(ComponentType, Lift, Lower, Clone, Debug, PartialEq, Eq, Default)]
#[component(record)]
pub struct ExitStatus {
    pub code: Option<i32>,
    pub signal: Option<i32>,
}

/// The serving process as the host sees it.
#[derive(ComponentType, Lift, Lower, Clone, Debug, PartialEq, Eq, Default)]
#[component(variant)]
pub enum ServerState {
    #[default]
    #[component(name = "starting")]
    Starting,
    #[component(name = "running")]
    Running,
    #[component(name = "exited")]
    Exited(ExitStatus),
}

/// The result of one probe.
#[derive(ComponentType, Lift, Lower, Clone, Debug, PartialEq, Eq, Default)]
#[component(record)]
pub struct ProbeResult {
    pub ok: bool,
    #[component(name = "status-code")]
    pub status_code: Option<u16>,
    #[component(name = "latency-ms")]
    pub latency_ms: u32,
    pub error: Option<String>,
    #[component(name = "age-ms")]
    pub age_ms: u64,
}

/// The kind of a membership change.
#[derive(ComponentType, Lift, Lower, Clone, Copy, Debug, PartialEq, Eq)]
#[component(enum)]
#[repr(u8)]
pub enum NodeChangeKind {
    #[component(name = "joined")]
    Joined,
    #[component(name = "died")]
    Died,
}

/// A membership change since the previous health evaluation.
#[derive(ComponentType, Lift, Lower, Clone, Debug, PartialEq, Eq)]
#[component(record)]
pub struct NodeChange {
    #[component(name = "node-id")]
    pub node_id: String,
    pub kind: NodeChangeKind,
}

/// Everything a health policy may judge the service by.
#[derive(ComponentType, Lift, Lower, Clone, Debug, PartialEq, Default)]
#[component(record)]
pub struct HealthSnapshot {
    pub server: ServerState,
    #[component(name = "server-uptime-ms")]
    pub server_uptime_ms: u64,
    #[component(name = "health-probe")]
    pub health_probe: Option<ProbeResult>,
    #[component(name = "generation-probe")]
    pub generation_probe: Option<ProbeResult>,
    #[component(name = "consecutive-probe-failures")]
    pub consecutive_probe_failures: u32,
    pub nodes: Vec<Node>,
    #[component(name = "server-nodes")]
    pub server_nodes: Vec<String>,
    pub changes: Vec<NodeChange>,
    pub restarts: u32,
    #[component(name = "uptime-ms")]
    pub uptime_ms: u64,
}

/// Restart the serving process.
#[derive(ComponentType, Lift, Lower, Clone, Debug, PartialEq, Eq)]
#[component(record)]
pub struct RestartAction {
    pub reason: String,
    #[component(name = "backoff-ms")]
    pub backoff_ms: u32,
}

/// Stop serving and end the orchestrator.
#[derive(ComponentType, Lift, Lower, Clone, Debug, PartialEq, Eq)]
#[component(record)]
pub struct ShutdownAction {
    #[component(name = "exit-code")]
    pub exit_code: i32,
    pub reason: String,
}

/// A health policy's verdict.
#[derive(ComponentType, Lift, Lower, Clone, Debug, PartialEq, Eq)]
#[component(variant)]
pub enum HealthVerdict {
    #[component(name = "healthy")]
    Healthy,
    #[component(name = "degraded")]
    Degraded(String),
    #[component(name = "restart")]
    Restart(RestartAction),
    #[component(name = "shutdown")]
    Shutdown(ShutdownAction),
}

// The `types` interface has no functions, so the linker needs nothing from
// it; these items let `bindgen!` map the interface to this module.
#[doc(hidden)]
pub trait Host {}
impl<T: ?Sized> Host for T {}

#[doc(hidden)]
pub trait HostWithStore<T>: wasmtime::component::HasData {}
impl<T, D: wasmtime::component::HasData> HostWithStore<T> for D {}

/// Defines the (type-only) `types` instance in a linker.
#[doc(hidden)]
pub fn add_to_linker<T, D>(
    linker: &mut wasmtime::component::Linker<T>,
    _host_getter: fn(&mut T) -> D::Data<'_>,
) -> wasmtime::Result<()>
where
    D: HostWithStore<T>,
    T: 'static,
{
    linker.instance("ray-orchestrator:policy/types@0.1.0")?;
    Ok(())
}
