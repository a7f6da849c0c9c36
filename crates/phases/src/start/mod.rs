//! The start phase: the open-file limit for the whole process tree, then
//! Ray, supervised. `run` starts one node (its pod's); `local` starts a
//! head and N workers on one machine, the workers one at a time in the
//! background while the wait phase already runs. Entry point:
//! [`RayNodes::start`].

pub mod leftover;
mod limits;
pub mod ray_node;
pub mod ray_start;
pub mod words;

pub use ray_node::{Daemon, RayNode, RayNodeError};
pub use ray_start::{KUBERAY_ENV, RayStart, RayStartError};

use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// One Ray node to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeLaunch {
    /// A name for logs (`head`, `worker`, `worker-2`).
    pub label: String,
    /// The `ray start` argv, program first.
    pub argv: Vec<String>,
}

/// The Ray nodes this orchestrator starts.
#[derive(Debug, Clone, PartialEq)]
pub struct StartPlan {
    /// The first is started before anything else goes on; the others
    /// (local workers) one at a time in the background, since concurrent
    /// `ray start`s on one host pick the same socket names and ports.
    pub nodes: Vec<NodeLaunch>,
    /// Environment added for Ray's processes.
    pub env: Vec<(String, String)>,
    /// How long each background start is held back (to show the wait).
    pub(crate) stagger: Duration,
    /// How long one `ray start` may take.
    pub timeout: Duration,
    /// Where the first node is recorded for the next orchestrator on this
    /// machine (`run`; `local` stops its own nodes).
    pub record: Option<RecordSpec>,
}

/// Where a node's record lives ([`leftover`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordSpec {
    /// The record file.
    pub path: std::path::PathBuf,
    /// Ray's temp dir (its `session_latest` names the session).
    pub temp_dir: std::path::PathBuf,
    /// How long a leftover node gets after SIGTERM.
    pub grace: Duration,
    /// The head's own GCS address (`None` on a worker).
    pub gcs_address: Option<String>,
}

impl RecordSpec {
    /// Before the node starts: stops what an orchestrator that is gone
    /// left running here ([`leftover`]) and, on a head, Ray's stale cluster
    /// address. False when the record belongs to an orchestrator that still
    /// runs: its record is not overwritten.
    async fn prepare(&self) -> bool {
        let write = match leftover::NodeRecord::clear_leftover(&self.path, self.grace).await {
            leftover::Leftover::Supervised { orchestrator } => {
                tracing::warn!(
                    record = %self.path.display(),
                    "another orchestrator (pid {orchestrator}) runs a Ray node here; if `ray start` says \"already running\", stop that one first"
                );
                false
            }
            leftover::Leftover::Stopped {
                all_gone: false,
                pids,
            } => {
                tracing::warn!(pids = ?pids, "the previous Ray node did not stop completely");
                true
            }
            _ => true,
        };
        if let Some(address) = &self.gcs_address {
            leftover::clear_stale_cluster_address(&self.temp_dir, address);
        }
        write
    }

    /// Records `node` for the next orchestrator; true when written.
    fn write_for(&self, node: &RayNode) -> bool {
        let Some(record) =
            leftover::NodeRecord::of_node(node.pgid(), node.daemons(), &self.temp_dir)
        else {
            return false;
        };
        match record.write(&self.path) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(
                    record = %self.path.display(),
                    "cannot record the Ray node for the next orchestrator: {e}"
                );
                false
            }
        }
    }
}

/// Raises the open-file limit to `want` and logs what it achieved.
pub(crate) fn raise_open_file_limit(want: u64) {
    let nofile = limits::raise_nofile(want);
    match &nofile.short_of {
        None => tracing::info!(
            before = nofile.before,
            now = nofile.now,
            "open-file limit raised"
        ),
        Some(why) => tracing::warn!(
            wanted = want,
            now = nofile.now,
            "open-file limit raised only to {}: {why}",
            nofile.now
        ),
    }
}

/// The Ray nodes started so far, and those still being started.
pub(crate) struct RayNodes {
    nodes: Vec<RayNode>,
    /// The record written for the first node, removed once it is stopped.
    record: Option<std::path::PathBuf>,
    late: mpsc::UnboundedReceiver<Result<RayNode, RayNodeError>>,
    stop_starting: watch::Sender<bool>,
    starter: Option<JoinHandle<()>>,
}

impl RayNodes {
    /// Starts the plan's first node and waits for it (a half-started node
    /// is still stopped: its process group is known); the others start in
    /// the background and arrive through [`next_started`](Self::next_started).
    ///
    /// A stop request of `stop` ends a `ray start` in progress at once
    /// (its process group is stopped: [`RayNodeError::Stopped`]).
    pub(crate) async fn start(
        plan: &StartPlan,
        stop: Option<&crate::supervision::Shutdown>,
    ) -> Result<Self, RayNodeError> {
        let (late_tx, late) = mpsc::unbounded_channel();
        let (stop_starting, mut stop_rx) = watch::channel(false);
        let mut nodes = Vec::new();
        let mut record = None;
        let mut rest = plan.nodes.iter();
        if let Some(first) = rest.next() {
            let write_record = match &plan.record {
                Some(spec) => spec.prepare().await.then_some(spec),
                None => None,
            };
            tracing::info!(node = %first.label, "starting: {}", ray_start::redact(&first.argv).join(" "));
            let node =
                RayNode::start(&first.label, &first.argv, &plan.env, plan.timeout, stop).await?;
            if let Some(spec) = write_record
                && spec.write_for(&node)
            {
                record = Some(spec.path.clone());
            }
            nodes.push(node);
        }
        let rest: Vec<NodeLaunch> = rest.cloned().collect();
        let starter = (!rest.is_empty()).then(|| {
            let (env, stagger, timeout) = (plan.env.clone(), plan.stagger, plan.timeout);
            let stop = stop.cloned();
            tokio::spawn(async move {
                for node in rest {
                    tokio::select! {
                        () = tokio::time::sleep(stagger) => {}
                        _ = stop_rx.wait_for(|stop| *stop) => return,
                    }
                    tracing::info!(node = %node.label, "starting: {}", ray_start::redact(&node.argv).join(" "));
                    let started =
                        RayNode::start(&node.label, &node.argv, &env, timeout, stop.as_ref()).await;
                    let failed = started.is_err();
                    if late_tx.send(started).is_err() || failed {
                        return;
                    }
                }
            })
        });
        Ok(Self {
            nodes,
            record,
            late,
            stop_starting,
            starter,
        })
    }

    /// The nodes running now and the starts still to come, borrowed
    /// apart so both can be waited on at once; a node that arrives is
    /// handed back with [`adopt`](Self::adopt).
    pub(crate) fn watch_parts(&mut self) -> (RunningNodes<'_>, LateStarts<'_>) {
        (RunningNodes(&self.nodes), LateStarts(&mut self.late))
    }

    /// Supervises a node that started in the background.
    pub(crate) fn adopt(&mut self, node: RayNode) {
        self.nodes.push(node);
    }

    /// The nodes running now, the first one first.
    pub(crate) fn running(&self) -> &[RayNode] {
        &self.nodes
    }

    /// The first daemon exit among the first `count` nodes (all: `usize::MAX`),
    /// with the node's label. Pending forever when there are none.
    pub(crate) async fn first_exit(&self, count: usize) -> (String, Daemon) {
        RunningNodes(&self.nodes).first_exit(count).await
    }

    /// Stops the first node and starts it again from `plan` (a worker
    /// rejoining a new cluster at the same head address); its record is
    /// rewritten.
    pub(crate) async fn restart_first(
        &mut self,
        plan: &StartPlan,
        grace: Duration,
        stop: Option<&crate::supervision::Shutdown>,
    ) -> Result<(), RayNodeError> {
        let Some(launch) = plan.nodes.first() else {
            return Ok(());
        };
        if let Some(old) = self.nodes.first() {
            old.stop(grace, stop).await;
        }
        tracing::info!(node = %launch.label, "starting again: {}", ray_start::redact(&launch.argv).join(" "));
        let node =
            RayNode::start(&launch.label, &launch.argv, &plan.env, plan.timeout, stop).await?;
        if self.record.is_some()
            && let Some(spec) = &plan.record
        {
            spec.write_for(&node);
        }
        match self.nodes.first_mut() {
            Some(first) => *first = node,
            None => self.nodes.push(node),
        }
        Ok(())
    }

    /// Stops every node, the last started first: a start in progress is
    /// let finish (not cut off half-way) and then stopped too. True when
    /// no process of any node is left.
    /// A forced stop of `force` (a second SIGTERM) cuts every grace short.
    pub(crate) async fn stop(
        mut self,
        grace: Duration,
        force: Option<&crate::supervision::Shutdown>,
    ) -> bool {
        let _ = self.stop_starting.send(true);
        if let Some(starter) = self.starter.take() {
            let _ = starter.await;
        }
        while let Ok(started) = self.late.try_recv() {
            if let Ok(node) = started {
                self.nodes.push(node);
            }
        }
        let mut all_stopped = true;
        for node in self.nodes.iter().rev() {
            all_stopped &= node.stop(grace, force).await;
        }
        if all_stopped && let Some(record) = &self.record {
            let _ = std::fs::remove_file(record);
        }
        all_stopped
    }
}

/// The running nodes, borrowed from [`RayNodes::watch_parts`].
pub(crate) struct RunningNodes<'a>(&'a [RayNode]);

impl RunningNodes<'_> {
    /// See [`RayNodes::first_exit`].
    pub(crate) async fn first_exit(&self, count: usize) -> (String, Daemon) {
        let mut waits: Vec<_> = self
            .0
            .iter()
            .take(count)
            .map(|n| Box::pin(async move { (n.label().to_string(), n.exited().await) }))
            .collect();
        if waits.is_empty() {
            return std::future::pending().await;
        }
        std::future::poll_fn(move |cx| {
            for w in waits.iter_mut() {
                if let std::task::Poll::Ready(v) = w.as_mut().poll(cx) {
                    return std::task::Poll::Ready(v);
                }
            }
            std::task::Poll::Pending
        })
        .await
    }
}

/// The starts still to come, borrowed from [`RayNodes::watch_parts`].
pub(crate) struct LateStarts<'a>(&'a mut mpsc::UnboundedReceiver<Result<RayNode, RayNodeError>>);

impl LateStarts<'_> {
    /// The next background start's result; pending forever when no more
    /// starts are coming.
    pub(crate) async fn next(&mut self) -> Result<RayNode, RayNodeError> {
        match self.0.recv().await {
            Some(started) => started,
            None => std::future::pending().await,
        }
    }
}
