#![warn(unreachable_pub)]
// The module docs name private items too: they are read in the source
// and with `cargo doc --document-private-items`.
#![allow(rustdoc::private_intra_doc_links)]
//! # orchestrator-phases
//!
//! The orchestrator as a library: the lifecycle of a pod, start -> wait ->
//! serve -> stop, and the phases it is made of. The binary is a thin
//! front end over [`lifecycle`].
//!
//! - [`lifecycle`]: the plan (from a configuration, or a local cluster)
//!   and the engine that runs it; the one owner of the phase.
//! - [`config`]: the configuration file, every field overridable by
//!   environment variables and `--set` flags.
//! - [`policies`]: which policy serves each phase, resolved and loaded.
//! - [`start`]: the open-file limit and the supervised Ray nodes (`ray
//!   start` argv, from the configuration or KubeRay's command).
//! - [`wait`]: membership into readiness snapshots, decided by the
//!   readiness policy.
//! - [`serve`]: the launch policy's plan run as a supervised server,
//!   probed, judged by the health policy.
//! - [`preflight`]: the gang preflight before the server starts (a
//!   timed collective over every node, the GPUs each sees).
//! - [`prefetch`]: the model's files read into the page cache on every
//!   node while the cluster forms.
//! - [`weights`]: the model's files fetched from an origin once per
//!   group (`[serve.weights]`), shared between the nodes.
//! - [`compile_cache`]: vLLM's compile caches kept under a key of what
//!   changes them (`[serve.compile-cache]`), a miss explained, taken from
//!   a peer.
//! - [`prepare`]: a checked configuration to a lifecycle on its backend.
//! - [`scale`]: the serving load sampled from vLLM's `/metrics`, the
//!   scale policy's recommended replicas exported for an autoscaler.
//! - [`membership`]: where membership comes from (Ray's GCS), and where
//!   nodes publish their health reports.
//! - [`node_health`]: every node's own checks (GPUs, host, raylet), the
//!   node-health policy's verdict, and the head's view of every node.
//! - [`supervision`]: process groups, the reaper, signals, `/proc`.
//! - [`endpoints`]: `/livez`, `/readyz`, `/status`, `/metrics`, and the
//!   events a platform records.
//! - [`platform`]: what Kubernetes says about the cluster.
//! - [`native`]: the second backend, vLLM's own multi-node mode without
//!   Ray: the leader's rendezvous, every rank's orders, group restarts.

pub mod compile_cache;
pub mod config;
pub mod endpoints;
pub mod lifecycle;
pub mod membership;
pub mod native;
pub mod node_health;
mod platform;
pub mod policies;
pub mod prefetch;
pub mod preflight;
pub mod prepare;
mod probe;
pub mod scale;
pub mod serve;
pub mod start;
pub mod supervision;
pub mod wait;
pub mod weights;
