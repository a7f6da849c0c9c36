//! Built-in readiness policy `node-count`.
//!
//! Nodes that their own node-health check judged unhealthy do not count,
//! and the reason names them (`node 10.0.0.7 unhealthy: GPU 3 XID 79
//! (fallen off the bus)`).
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

/// Most nodes named in one reason.
const NAMED: u32 = 8;

impl ReadinessPolicy for NodeCount {
    fn check(cluster: &Cluster, params: &Params) -> Readiness {
        match judge(cluster, params) {
            Ok(None) => Readiness::Ready,
            Ok(Some(missing)) => {
                if cluster.deadline_passed() {
                    let mut reason = format!(
                        "not ready after {}: {missing}",
                        seconds(cluster.elapsed_ms())
                    );
                    for line in cluster.diagnostics() {
                        reason.push_str("; ");
                        reason.push_str(&line);
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

/// `a, b, c` from the first names, `... and N more` past them.
fn names(totals: &Totals) -> String {
    let mut text = totals.names.join(", ");
    let more = totals.count as usize - totals.names.len().min(totals.count as usize);
    if more > 0 {
        text.push_str(&format!(" and {more} more"));
    }
    text
}

/// `Ok(None)` when ready, `Ok(Some(what is missing))` otherwise. Counts
/// and totals come from the host's aggregate queries, so a ready verdict
/// never copies a node, whatever the cluster's size.
fn judge(
    cluster: &Cluster,
    params: &Params,
) -> Result<Option<String>, orchestrator_plugin_sdk::ParamError> {
    let expected = cluster.expected();
    let want_nodes = params.u32_or("nodes", expected.nodes)?.max(1);
    let want_gpus = params.f64_or("gpus", expected.gpus)?;
    let want_per_node = params.f64_or("min-gpus-per-node", expected.min_gpus_per_node)?;

    // Nodes whose own health check said unhealthy do not count.
    let alive = cluster.totals(&Filter::alive().usable());
    let mut missing = Vec::new();
    let unhealthy = cluster.count(&Filter::alive().unhealthy());
    if unhealthy > 0 {
        let mut named: Vec<String> = cluster
            .nodes()
            .filter(|n| n.alive() && !n.usable())
            .take(NAMED as usize)
            .map(|n| match n.health() {
                NodeHealthState::Pending => {
                    format!("node {}: {}", n.address(), n.health_reason())
                }
                _ => format!("node {} unhealthy: {}", n.address(), n.health_reason()),
            })
            .collect();
        if unhealthy > NAMED {
            named.push(format!("and {} more not usable", unhealthy - NAMED));
        }
        missing.push(named.join("; "));
    }

    if alive.count < want_nodes {
        let mut text = format!("{} of {want_nodes} nodes alive", alive.count);
        if unhealthy > 0 {
            text.push_str(" and healthy");
        }
        let dead = cluster.totals_named(&Filter::dead(), NAMED);
        if dead.count > 0 {
            text.push_str(&format!(" (dead: {})", names(&dead)));
        }
        missing.push(text);
    }

    if want_gpus > 0.0 && alive.gpus + 1e-9 < want_gpus {
        missing.push(format!(
            "missing GPUs: {} of {}",
            trim(want_gpus - alive.gpus),
            trim(want_gpus)
        ));
    }

    if want_per_node > 0.0 {
        let below = Filter::alive().usable().gpus_below(want_per_node - 1e-9);
        let short = cluster.count(&below);
        if short > 0 {
            // Only now is each node looked at, to say what it has.
            let mut named: Vec<String> = cluster
                .nodes()
                .filter(|n| n.alive() && n.usable() && n.gpu() + 1e-9 < want_per_node)
                .take(NAMED as usize)
                .map(|n| format!("{} has {} GPUs", n.name(), trim(n.gpu())))
                .collect();
            if short > NAMED {
                named.push(format!("and {} more", short - NAMED));
            }
            missing.push(format!(
                "nodes below {} GPUs each: {}",
                trim(want_per_node),
                named.join(", ")
            ));
        }
    }

    Ok(if missing.is_empty() {
        None
    } else {
        Some(missing.join("; "))
    })
}

fn trim(x: f64) -> String {
    if (x - x.round()).abs() < 1e-9 {
        format!("{}", x.round() as i64)
    } else {
        format!("{x:.2}")
    }
}
