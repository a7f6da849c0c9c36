//! Built-in readiness policy `node-count`.
//!
//! Ready when at least the expected number of nodes is alive and, when asked,
//! the alive nodes offer the expected GPUs in total and every alive node
//! offers the per-node minimum. Otherwise `wait` with a reason naming what is
//! missing, and `fail` once the phase's deadline has passed.
//!
//! Parameters (all optional; they override the expected topology):
//! `nodes`, `gpus`, `min-gpus-per-node`.

use orchestrator_plugin_sdk::readiness::*;

/// The `node-count` policy.
pub struct NodeCount;

impl ReadinessPolicy for NodeCount {
    fn check(snapshot: &ClusterSnapshot, params: &Params) -> Readiness {
        match judge(snapshot, params) {
            Ok(None) => Readiness::Ready,
            Ok(Some(missing)) => {
                if snapshot.deadline_ms > 0 && snapshot.elapsed_ms >= snapshot.deadline_ms {
                    let mut reason = format!(
                        "not ready after {}: {missing}",
                        seconds(snapshot.elapsed_ms)
                    );
                    for line in &snapshot.diagnostics {
                        reason.push_str("; ");
                        reason.push_str(line);
                    }
                    Readiness::Fail(reason)
                } else {
                    Readiness::Wait(missing)
                }
            }
            Err(e) => Readiness::Fail(e.to_string()),
        }
    }
}

orchestrator_plugin_sdk::export_readiness_policy!(NodeCount);

fn seconds(ms: u64) -> String {
    format!("{}.{:01}s", ms / 1000, (ms % 1000) / 100)
}

/// `Ok(None)` when ready, `Ok(Some(what is missing))` otherwise.
fn judge(
    snapshot: &ClusterSnapshot,
    params: &Params,
) -> Result<Option<String>, orchestrator_plugin_sdk::ParamError> {
    let want_nodes = params.u32_or("nodes", snapshot.expected.nodes)?.max(1);
    let want_gpus = params.f64_or("gpus", snapshot.expected.gpus)?;
    let want_per_node = params.f64_or("min-gpus-per-node", snapshot.expected.min_gpus_per_node)?;

    let alive: Vec<&Node> = snapshot.nodes.iter().filter(|n| n.alive).collect();
    let mut missing = Vec::new();

    let alive_count = alive.len() as u32;
    if alive_count < want_nodes {
        let mut text = format!("{alive_count} of {want_nodes} nodes alive");
        let dead: Vec<&str> = snapshot
            .nodes
            .iter()
            .filter(|n| !n.alive)
            .map(label_of)
            .collect();
        if !dead.is_empty() {
            text.push_str(&format!(" (dead: {})", dead.join(", ")));
        }
        missing.push(text);
    }

    if want_gpus > 0.0 {
        let have: f64 = alive.iter().map(|n| n.resources.gpu).sum();
        if have + 1e-9 < want_gpus {
            missing.push(format!(
                "missing GPUs: {} of {}",
                trim(want_gpus - have),
                trim(want_gpus)
            ));
        }
    }

    if want_per_node > 0.0 {
        let short: Vec<String> = alive
            .iter()
            .filter(|n| n.resources.gpu + 1e-9 < want_per_node)
            .map(|n| format!("{} has {} GPUs", label_of(n), trim(n.resources.gpu)))
            .collect();
        if !short.is_empty() {
            missing.push(format!(
                "nodes below {} GPUs each: {}",
                trim(want_per_node),
                short.join(", ")
            ));
        }
    }

    Ok(if missing.is_empty() {
        None
    } else {
        Some(missing.join("; "))
    })
}

fn label_of(node: &Node) -> &str {
    if node.hostname.is_empty() {
        &node.address
    } else {
        &node.hostname
    }
}

fn trim(x: f64) -> String {
    if (x - x.round()).abs() < 1e-9 {
        format!("{}", x.round() as i64)
    } else {
        format!("{x:.2}")
    }
}
