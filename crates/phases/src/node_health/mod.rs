//! Node health: every node's orchestrator checks its own GPUs, host and
//! raylet, asks its node-health policy, and publishes the verdict with the
//! readings in the membership source's [`HealthStore`](crate::membership::HealthStore) (Ray's GCS
//! key-value store: no network path of its own); the head follows every
//! node's report.
//!
//! - [`reporter`]: this process's nodes, probed at the interval (and at
//!   once on a GPU's critical XID), judged and published. Entry point:
//!   [`Reporter::spawn`].
//! - [`board`]: the head's view of every node's report, stale ones marked
//!   as such; the wait phase and the health loop read it, `/status` and
//!   the metrics show it, Events name the nodes that turn unhealthy. Entry
//!   point: [`board::follow`].
//! - [`check`]: one reading and verdict of this node, for `orchestrator
//!   node check`. Entry point: [`check::check_this_node`].

pub mod board;
pub mod check;
pub mod reporter;

pub use board::{Board, BoardEntry};
pub use reporter::{OwnHealth, Reporter};

use crate::config::NodeHealthConfig;
use orchestrator_domain::KeyValue;
use orchestrator_node_probe::HostTarget;
use std::time::Duration;

/// The exit code of a worker that stayed unhealthy past its grace period.
pub(crate) const UNHEALTHY_EXIT_CODE: u8 = 3;

/// Resolves with the reason once one of this process's nodes has been
/// unhealthy for `grace` (it never resolves while all are healthy, or when
/// the checks end).
pub(crate) async fn unhealthy_for(
    own: &mut tokio::sync::watch::Receiver<Vec<OwnHealth>>,
    grace: Duration,
) -> String {
    use orchestrator_domain::NodeHealthState;
    loop {
        let due = own
            .borrow_and_update()
            .iter()
            .filter(|o| o.verdict.state() == NodeHealthState::Unhealthy)
            .map(|o| (o.since.checked_add(grace), o.verdict.reason().to_string()))
            .min_by_key(|(at, _)| *at);
        let wake = async {
            match &due {
                Some((Some(at), _)) => tokio::time::sleep_until((*at).into()).await,
                _ => std::future::pending().await,
            }
        };
        tokio::select! {
            () = wake => {
                if let Some((_, reason)) = due
                    && own.borrow().iter().any(|o| {
                        o.verdict.state() == NodeHealthState::Unhealthy
                            && o.since.elapsed() >= grace
                    })
                {
                    return reason;
                }
            }
            changed = own.changed() => {
                if changed.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        }
    }
}

/// How node health runs in this process.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeHealthPlan {
    /// How often the probes read and the verdict is published.
    pub interval: Duration,
    /// A report unchanged for this long is stale.
    pub stale_after: Duration,
    /// How often the head reads every report.
    pub follow_interval: Duration,
    /// How long a worker stays unhealthy before it exits.
    pub unhealthy_grace: Duration,
    /// The node-health policy's parameters.
    pub params: Vec<KeyValue>,
}

impl NodeHealthPlan {
    /// The plan of `[node-health]` with the policy's `params`; none when
    /// node health is off.
    pub fn from_config(config: &NodeHealthConfig, params: Vec<KeyValue>) -> Option<Self> {
        config.enabled.then(|| Self {
            interval: Duration::from_millis(config.interval_ms),
            stale_after: Duration::from_millis(config.stale_after_ms),
            follow_interval: Duration::from_millis(config.follow_interval_ms),
            unhealthy_grace: Duration::from_secs(config.unhealthy_grace_seconds),
            params,
        })
    }
}

/// What to probe for a Ray node started with `argv` (`ray start ...`):
/// its `--node-ip-address` and `--temp-dir` (Ray's default `/tmp/ray`),
/// and its raylet.
pub(crate) fn target_of(argv: &[String], raylet_pid: Option<i32>) -> HostTarget {
    let value = |name: &str| {
        let flag = format!("--{name}=");
        argv.iter()
            .rev()
            .find_map(|a| a.strip_prefix(&flag).map(str::to_string))
    };
    let mut target = HostTarget::new(
        value("node-ip-address").unwrap_or_default(),
        value("temp-dir").unwrap_or_else(|| "/tmp/ray".to_string()),
    );
    target.raylet_pid = raylet_pid;
    target
}
