//! This process's Ray nodes, checked at the interval: the host's readings
//! and the GPUs' (from the [`GpuProbe`](orchestrator_node_probe::GpuProbe) thread, which wakes this task at
//! once on a critical XID), judged by the node-health policy, published in
//! the [`HealthStore`] under each node's Ray id. Entry point:
//! [`Reporter::spawn`].

use super::NodeHealthPlan;
use crate::endpoints::{NodeHealthView, Status};
use crate::membership::HealthStore;
use orchestrator_domain::{HealthReport, LocalCopy, NodeHealthState, NodeReadings, NodeVerdict};
use orchestrator_node_probe::{GpuSnapshot, HostTarget, host};
use orchestrator_policy_host::NodeHealthPolicy;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, watch};

/// How soon a node not yet in the GCS is looked up again.
const LOOKUP_RETRY: Duration = Duration::from_millis(100);

/// What this process's own checks last said about one of its nodes.
#[derive(Debug, Clone, PartialEq)]
pub struct OwnHealth {
    /// The node's label (`head`, `worker`, `worker-2`).
    pub label: String,
    /// Its Ray node id, once found in the GCS.
    pub node_id: Option<String>,
    /// The verdict.
    pub verdict: NodeVerdict,
    /// The readings it judged.
    pub readings: NodeReadings,
    /// Since when the verdict's state holds.
    pub since: Instant,
}

/// One node this process checks.
struct Checked {
    label: String,
    target: HostTarget,
    node_id: Option<String>,
    advertised_gpus: f64,
    next_lookup: Instant,
    lookups: u32,
    seq: u64,
    state: Option<(NodeHealthState, Instant)>,
    publish_failing: bool,
}

/// The reporter task of this process; it ends when dropped.
#[derive(Debug)]
pub struct Reporter {
    own: watch::Receiver<Vec<OwnHealth>>,
    add: mpsc::UnboundedSender<(String, HostTarget)>,
    store: Option<Arc<dyn HealthStore>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Reporter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn hostname() -> String {
    rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned()
}

impl Reporter {
    /// Starts checking; nodes are added with [`add`](Self::add).
    pub fn spawn(
        plan: &NodeHealthPlan,
        policy: NodeHealthPolicy,
        gpus: watch::Receiver<GpuSnapshot>,
        store: Option<Arc<dyn HealthStore>>,
        status: Arc<Status>,
    ) -> Self {
        let (own_tx, own) = watch::channel(Vec::new());
        let (add, added) = mpsc::unbounded_channel();
        let task = tokio::spawn(run(
            plan.clone(),
            policy,
            gpus,
            store.clone(),
            status,
            own_tx,
            added,
        ));
        Self {
            own,
            add,
            store,
            task,
        }
    }

    /// Checks one more node of this process from now on; a node with the
    /// same label is replaced (it was started again).
    pub fn add(&self, label: &str, target: HostTarget) {
        let _ = self.add.send((label.to_string(), target));
    }

    /// What the checks last said about each node.
    pub fn subscribe(&self) -> watch::Receiver<Vec<OwnHealth>> {
        self.own.clone()
    }

    /// Stops checking and removes this process's reports from the store
    /// (a clean stop is not a stale node).
    pub async fn withdraw(self) {
        self.task.abort();
        let Some(store) = &self.store else { return };
        let ids: Vec<String> = self
            .own
            .borrow()
            .iter()
            .filter_map(|o| o.node_id.clone())
            .collect();
        for id in ids {
            let _ = tokio::time::timeout(Duration::from_secs(1), store.withdraw(&id)).await;
        }
    }
}

async fn run(
    plan: NodeHealthPlan,
    mut policy: NodeHealthPolicy,
    mut gpus: watch::Receiver<GpuSnapshot>,
    store: Option<Arc<dyn HealthStore>>,
    status: Arc<Status>,
    own_tx: watch::Sender<Vec<OwnHealth>>,
    mut added: mpsc::UnboundedReceiver<(String, HostTarget)>,
) {
    let host_name = hostname();
    let mut nodes: Vec<Checked> = Vec::new();
    let mut tick = tokio::time::interval(plan.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut gpus_open = true;
    // A copy's progress is in every report; its completion is reported at
    // once (a fast ready decision waits on it), not at the next tick.
    let mut prefetch = status.prefetch_states();
    let mut prefetch_open = true;
    loop {
        // A node not yet found in the GCS is looked up again soon: its
        // first report is what lets the head count it.
        let lookup_at = nodes
            .iter()
            .filter(|n| n.node_id.is_none())
            .map(|n| n.next_lookup)
            .min();
        let lookup = async {
            match lookup_at {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tick.tick() => {}
            () = lookup => {}
            changed = gpus.changed(), if gpus_open => {
                // The probe thread ends at once where there is no NVML.
                gpus_open = changed.is_ok();
            }
            changed = prefetch.changed(), if prefetch_open => {
                prefetch_open = changed.is_ok();
            }
            Some((label, target)) = added.recv() => {
                // A node started again (a worker rejoining a new cluster)
                // replaces its old entry: new raylet, new node id.
                nodes.retain(|n| n.label != label);
                nodes.push(Checked {
                    label,
                    target,
                    node_id: None,
                    advertised_gpus: 0.0,
                    next_lookup: Instant::now(),
                    lookups: 0,
                    // From the clock: a restarted reporter goes on above
                    // the sequence its last run reached (the head counts
                    // only a sequence that moves up as fresh).
                    seq: now_ms(),
                    state: None,
                    publish_failing: false,
                });
            }
        }
        let snapshot = gpus.borrow_and_update().clone();
        let local_copy = local_copy(&status);
        let mut reports = Vec::with_capacity(nodes.len());
        for node in &mut nodes {
            reports.push(
                check(
                    node,
                    &plan,
                    &mut policy,
                    &snapshot,
                    store.as_deref(),
                    &host_name,
                    local_copy.as_ref(),
                )
                .await,
            );
        }
        status.own_node_health(reports.iter().map(OwnHealth::view).collect());
        own_tx.send_replace(reports);
    }
}

/// This node's copy of the model (`copy-to`), as the prefetch left it.
fn local_copy(status: &Status) -> Option<LocalCopy> {
    status.local_copy_progress().and_then(|p| {
        p.copy_to.as_ref().map(|to| LocalCopy {
            path: to.display().to_string(),
            complete: p.state == crate::prefetch::PrefetchState::Done,
            bytes_done: p.bytes_done,
            bytes_total: p.bytes_total,
        })
    })
}

impl OwnHealth {
    /// What `/status` shows of it.
    fn view(&self) -> NodeHealthView {
        NodeHealthView::new(
            self.node_id.clone().unwrap_or_default(),
            self.verdict.state(),
            self.verdict.reason().to_string(),
            &self.readings,
            0,
        )
    }
}

/// One round for one node: read, judge, publish.
async fn check(
    node: &mut Checked,
    plan: &NodeHealthPlan,
    policy: &mut NodeHealthPolicy,
    gpus: &GpuSnapshot,
    store: Option<&dyn HealthStore>,
    host_name: &str,
    local_copy: Option<&LocalCopy>,
) -> OwnHealth {
    let now = Instant::now();
    if node.node_id.is_none()
        && now >= node.next_lookup
        && let Some(store) = store
    {
        let address = (!node.target.address.is_empty()).then_some(node.target.address.as_str());
        match tokio::time::timeout(
            Duration::from_secs(2),
            store.own_node(&node.label, address, host_name),
        )
        .await
        {
            Ok(Ok(Some(found))) => {
                tracing::info!(node = %node.label, id = %found.short_id(), gpus = found.resources.gpu, "node health: reporting for this Ray node");
                if node.target.address.is_empty() {
                    node.target.address = found.address.clone();
                }
                node.advertised_gpus = found.resources.gpu;
                node.node_id = Some(found.id);
            }
            Ok(Ok(None)) | Ok(Err(_)) | Err(_) => {
                // 100 ms, 200 ms, ... up to 2 s between lookups.
                let backoff = LOOKUP_RETRY * 2u32.saturating_pow(node.lookups.min(5));
                node.next_lookup = now + backoff.min(Duration::from_secs(2));
                node.lookups += 1;
            }
        }
    }

    let mut readings = host::read(&node.target);
    readings.advertised_gpus = node.advertised_gpus;
    gpus.fill(&mut readings);
    let verdict = match policy.judge(&readings, &plan.params) {
        Ok(v) => v,
        Err(e) => NodeVerdict::Degraded(format!("the node-health policy failed: {e}")),
    };
    let state = verdict.state();
    let since = match node.state {
        Some((s, since)) if s == state => since,
        _ => {
            match &verdict {
                NodeVerdict::Unhealthy(reason) => {
                    tracing::warn!(node = %node.label, "this node is unhealthy: {reason}");
                }
                NodeVerdict::Degraded(reason) => {
                    tracing::warn!(node = %node.label, "this node is degraded: {reason}");
                }
                NodeVerdict::Healthy => {
                    tracing::info!(node = %node.label, "this node is healthy");
                }
            }
            node.state = Some((state, now));
            now
        }
    };

    if let (Some(store), Some(id)) = (store, &node.node_id) {
        node.seq += 1;
        let report = HealthReport {
            node_id: id.clone(),
            seq: node.seq,
            interval_ms: plan.interval.as_millis() as u64,
            written_at_ms: now_ms(),
            verdict: verdict.clone(),
            readings: readings.clone(),
            local_copy: local_copy.cloned(),
        };
        let published = tokio::time::timeout(Duration::from_secs(2), store.publish(&report)).await;
        match published {
            Ok(Ok(())) => node.publish_failing = false,
            Ok(Err(e)) if !node.publish_failing => {
                tracing::warn!(node = %node.label, "cannot publish the health report: {e}");
                node.publish_failing = true;
            }
            Err(_) if !node.publish_failing => {
                tracing::warn!(node = %node.label, "publishing the health report timed out");
                node.publish_failing = true;
            }
            _ => {}
        }
    }

    OwnHealth {
        label: node.label.clone(),
        node_id: node.node_id.clone(),
        verdict,
        readings,
        since,
    }
}
