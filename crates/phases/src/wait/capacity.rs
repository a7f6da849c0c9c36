//! Capacity asked of Ray's autoscaler while the head waits: the expected
//! workers as resource bundles, set through the GCS (what
//! `ray.autoscaler.sdk.request_resources` sends), so that worker groups
//! that start below the layout (`minReplicas: 0` with KubeRay's in-tree
//! autoscaler) are scaled up instead of waited for forever. Entry point:
//! [`Follower::spawn`].

use crate::membership::{Bundle, CapacityRequests};
use orchestrator_domain::{Resources, Topology};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// The bundles of the whole expected layout: the head's own resources
/// (when known) first, then the expected workers: each group's replicas,
/// one bundle per node of its GPUs (and CPUs); without groups, `nodes - 1`
/// workers of `min-gpus-per-node` GPUs (or one CPU) each.
///
/// The head is asked for too because Ray's autoscaler packs the request
/// onto every node there is: a head with a GPU would otherwise satisfy a
/// worker's `{GPU: 1}` itself, and no worker would ever be started.
pub(crate) fn bundles_for(expected: &Topology, head: Option<&Resources>) -> Vec<Bundle> {
    let mut all: Vec<Bundle> = head
        .map(|r| {
            let mut b = Bundle::new();
            if r.gpu > 0.0 {
                b.insert("GPU".to_string(), r.gpu);
            }
            if r.cpu > 0.0 {
                b.insert("CPU".to_string(), r.cpu);
            }
            b
        })
        .filter(|b| !b.is_empty())
        .into_iter()
        .collect();
    all.extend(workers(expected));
    all
}

/// The expected workers' bundles.
fn workers(expected: &Topology) -> Vec<Bundle> {
    let bundle = |gpus: f64, cpus: f64| {
        let mut b = Bundle::new();
        if gpus > 0.0 {
            b.insert("GPU".to_string(), gpus);
        }
        if cpus > 0.0 {
            b.insert("CPU".to_string(), cpus);
        }
        if b.is_empty() {
            b.insert("CPU".to_string(), 1.0);
        }
        b
    };
    if expected.groups.is_empty() {
        let workers = expected.nodes.saturating_sub(1) as usize;
        return vec![bundle(expected.min_gpus_per_node, 0.0); workers];
    }
    expected
        .groups
        .iter()
        .flat_map(|g| {
            std::iter::repeat_n(
                bundle(g.gpus_per_node, g.cpus_per_node),
                g.replicas as usize,
            )
        })
        .collect()
}

/// Sends the latest bundles to the autoscaler from a task of its own
/// (a slow or absent GCS never delays the wait), retrying every 2 s until
/// the latest is accepted.
pub(crate) struct Follower {
    wanted: watch::Sender<Option<Vec<Bundle>>>,
}

impl Follower {
    /// Starts following on the current runtime; ends when dropped.
    pub(crate) fn spawn(requests: Arc<dyn CapacityRequests>) -> Self {
        let (wanted, mut rx) = watch::channel::<Option<Vec<Bundle>>>(None);
        tokio::spawn(async move {
            loop {
                let current = rx.borrow_and_update().clone();
                if let Some(bundles) = current {
                    match requests.request(&bundles).await {
                        Ok(()) => tracing::info!(
                            bundles = bundles.len(),
                            "asked Ray's autoscaler for the layout (the head, then the expected workers): {}",
                            describe(&bundles)
                        ),
                        Err(e) => {
                            tracing::warn!("cannot ask Ray's autoscaler for capacity yet: {e}");
                            tokio::select! {
                                () = tokio::time::sleep(Duration::from_secs(2)) => {
                                    rx.mark_changed();
                                    continue;
                                }
                                changed = rx.changed() => if changed.is_err() { return } else { continue },
                            }
                        }
                    }
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        });
        Self { wanted }
    }

    /// Asks for `expected`'s layout, `head` being the head's resources
    /// when known (nothing is sent if unchanged).
    pub(crate) fn ask(&self, expected: &Topology, head: Option<&Resources>) {
        let bundles = bundles_for(expected, head);
        self.wanted.send_if_modified(|current| {
            if current.as_ref() == Some(&bundles) {
                false
            } else {
                *current = Some(bundles);
                true
            }
        });
    }
}

/// `2 x {GPU: 1}, 1 x {CPU: 4}`.
pub fn describe(bundles: &[Bundle]) -> String {
    let mut grouped: Vec<(&Bundle, usize)> = Vec::new();
    for b in bundles {
        match grouped.iter_mut().find(|(g, _)| *g == b) {
            Some((_, n)) => *n += 1,
            None => grouped.push((b, 1)),
        }
    }
    if grouped.is_empty() {
        return "nothing".to_string();
    }
    grouped
        .iter()
        .map(|(b, n)| {
            let inner: Vec<String> = b.iter().map(|(k, v)| format!("{k}: {v}")).collect();
            format!("{n} x {{{}}}", inner.join(", "))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use orchestrator_domain::NodeGroup;

    #[test]
    fn bundles_are_the_expected_workers() {
        let groups = Topology {
            nodes: 4,
            groups: vec![
                NodeGroup {
                    name: "gpu".into(),
                    replicas: 2,
                    cpus_per_node: 0.0,
                    gpus_per_node: 1.0,
                },
                NodeGroup {
                    name: "cpu".into(),
                    replicas: 1,
                    cpus_per_node: 4.0,
                    gpus_per_node: 0.0,
                },
            ],
            ..Topology::default()
        };
        assert_eq!(
            describe(&bundles_for(&groups, None)),
            "2 x {GPU: 1}, 1 x {CPU: 4}"
        );
        // The head's own resources come first: Ray's autoscaler packs the
        // whole request onto the nodes there are.
        let head = Resources {
            cpu: 2.0,
            gpu: 1.0,
            ..Resources::default()
        };
        assert_eq!(
            describe(&bundles_for(&groups, Some(&head))),
            "1 x {CPU: 2, GPU: 1}, 2 x {GPU: 1}, 1 x {CPU: 4}"
        );
        let plain = Topology {
            nodes: 3,
            min_gpus_per_node: 2.0,
            ..Topology::default()
        };
        assert_eq!(describe(&bundles_for(&plain, None)), "2 x {GPU: 2}");
        let alone = Topology {
            nodes: 1,
            ..Topology::default()
        };
        assert_eq!(describe(&bundles_for(&alone, None)), "nothing");
    }
}
