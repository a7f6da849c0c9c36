//! The wire forms of `ray-orchestrator:policy/types@0.1.0`: what crosses
//! into a guest. What only goes in (snapshots, requests) borrows its
//! strings from the domain values, so a call copies no text on the host
//! side: the component model copies it once, into the guest. wasmtime checks these derives against the WIT when a
//! plugin is instantiated, so a drift is caught at once. The rest of the
//! orchestrator uses `orchestrator_domain`'s types; [`crate::v0_1::convert`]
//! maps between the two.
#![allow(missing_docs)] // Each item is documented in the WIT; see wit/policy-0.1.0/types.wit.

use wasmtime::component::{ComponentType, Lift, Lower};

/// A key and its value.
#[derive(ComponentType, Lift, Lower, Clone, Debug, PartialEq, Eq, Default)]
#[component(record)]
pub struct KeyValue<S = String> {
    pub key: S,
    pub value: S,
}

/// An amount of a custom Ray resource.
#[derive(ComponentType, Lower, Clone, Debug, PartialEq)]
#[component(record)]
pub struct ResourceAmount<'a> {
    pub name: &'a str,
    pub amount: f64,
}

/// What a node offers in total.
#[derive(ComponentType, Lower, Clone, Debug, PartialEq)]
#[component(record)]
pub struct Resources<'a> {
    pub cpu: f64,
    pub gpu: f64,
    #[component(name = "memory-bytes")]
    pub memory_bytes: u64,
    #[component(name = "object-store-memory-bytes")]
    pub object_store_memory_bytes: u64,
    pub custom: Vec<ResourceAmount<'a>>,
}

/// One Ray node as the GCS knows it.
#[derive(ComponentType, Lower, Clone, Debug, PartialEq)]
#[component(record)]
pub struct Node<'a> {
    pub id: &'a str,
    pub address: &'a str,
    pub hostname: &'a str,
    #[component(name = "is-head")]
    pub is_head: bool,
    pub alive: bool,
    pub resources: Resources<'a>,
    pub labels: Vec<KeyValue<&'a str>>,
    #[component(name = "start-time-ms")]
    pub start_time_ms: u64,
}

/// The expected shape of one group of nodes.
#[derive(ComponentType, Lower, Clone, Debug, PartialEq)]
#[component(record)]
pub struct NodeGroup<'a> {
    pub name: &'a str,
    pub replicas: u32,
    #[component(name = "cpus-per-node")]
    pub cpus_per_node: f64,
    #[component(name = "gpus-per-node")]
    pub gpus_per_node: f64,
}

/// The cluster the user asked for.
#[derive(ComponentType, Lower, Clone, Debug, PartialEq)]
#[component(record)]
pub struct Topology<'a> {
    pub nodes: u32,
    pub gpus: f64,
    #[component(name = "min-gpus-per-node")]
    pub min_gpus_per_node: f64,
    pub groups: Vec<NodeGroup<'a>>,
}

/// Everything a readiness or launch policy may judge the cluster by.
#[derive(ComponentType, Lower, Clone, Debug, PartialEq)]
#[component(record)]
pub struct ClusterSnapshot<'a> {
    pub nodes: Vec<Node<'a>>,
    pub expected: Topology<'a>,
    #[component(name = "elapsed-ms")]
    pub elapsed_ms: u64,
    #[component(name = "deadline-ms")]
    pub deadline_ms: u64,
    pub diagnostics: Vec<&'a str>,
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
#[derive(ComponentType, Lower, Clone, Debug, PartialEq)]
#[component(record)]
pub struct ServeSettings<'a> {
    pub model: &'a str,
    #[component(name = "served-model-name")]
    pub served_model_name: Option<&'a str>,
    pub host: &'a str,
    pub port: u16,
    #[component(name = "extra-args")]
    pub extra_args: Vec<&'a str>,
    #[component(name = "tensor-parallel-size")]
    pub tensor_parallel_size: Option<u32>,
    #[component(name = "pipeline-parallel-size")]
    pub pipeline_parallel_size: Option<u32>,
}

/// The input of a launch policy.
#[derive(ComponentType, Lower, Clone, Debug, PartialEq)]
#[component(record)]
pub struct LaunchRequest<'a> {
    pub cluster: ClusterSnapshot<'a>,
    pub settings: ServeSettings<'a>,
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
#[derive(ComponentType, Lower, Clone, Debug, PartialEq)]
#[component(record)]
pub struct ProbeResult<'a> {
    pub ok: bool,
    #[component(name = "status-code")]
    pub status_code: Option<u16>,
    #[component(name = "latency-ms")]
    pub latency_ms: u32,
    pub error: Option<&'a str>,
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
#[derive(ComponentType, Lower, Clone, Debug, PartialEq)]
#[component(record)]
pub struct NodeChange<'a> {
    #[component(name = "node-id")]
    pub node_id: &'a str,
    pub kind: NodeChangeKind,
}

/// Everything a health policy may judge the service by.
#[derive(ComponentType, Lower, Clone, Debug, PartialEq)]
#[component(record)]
pub struct HealthSnapshot<'a> {
    pub server: ServerState,
    #[component(name = "server-uptime-ms")]
    pub server_uptime_ms: u64,
    #[component(name = "health-probe")]
    pub health_probe: Option<ProbeResult<'a>>,
    #[component(name = "generation-probe")]
    pub generation_probe: Option<ProbeResult<'a>>,
    #[component(name = "consecutive-probe-failures")]
    pub consecutive_probe_failures: u32,
    pub nodes: Vec<Node<'a>>,
    #[component(name = "server-nodes")]
    pub server_nodes: Vec<&'a str>,
    pub changes: Vec<NodeChange<'a>>,
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
