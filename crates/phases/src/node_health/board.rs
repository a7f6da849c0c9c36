//! The head's view of every node's health report ([`Board`]), read from
//! the [`HealthStore`] at the follow interval. A report whose sequence
//! number has not moved for `stale-after` is stale (the clocks of the
//! nodes never matter). Each change of a node's state or reason is
//! published to the wait phase and the health loop; `/status` and the
//! metrics get every round's readings; a node turning unhealthy or stale
//! is logged and recorded as an Event. Entry point: [`follow`].

use super::NodeHealthPlan;
use crate::endpoints::{NodeHealthView, Status};
use crate::membership::HealthStore;
use orchestrator_domain::{EventReason, HealthReport, Node, NodeHealth, NodeHealthState};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// One node's last report, as the head judges it.
#[derive(Debug, Clone, PartialEq)]
pub struct BoardEntry {
    /// Its state (stale when the reports stopped) and reason.
    pub health: NodeHealth,
    /// The last report.
    pub report: HealthReport,
}

/// Every node's health as the head knows it, by Ray node id.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Board {
    /// By node id.
    pub entries: BTreeMap<String, BoardEntry>,
    /// How long a node that joined may go without a first report before
    /// it counts anyway (its checks may be off): until then it is pending.
    pub first_report_within: Duration,
}

impl Board {
    /// What is known of node `id` (unknown when it never reported).
    pub fn health_of(&self, id: &str) -> NodeHealth {
        self.entries
            .get(id)
            .map(|e| e.health.clone())
            .unwrap_or_default()
    }

    /// Writes each node's health into `nodes`.
    pub(crate) fn annotate(&self, nodes: &mut [Node]) {
        for node in nodes {
            node.health = self.health_of(&node.id);
        }
    }

    /// [`annotate`](Self::annotate), and an alive node with no report yet
    /// that was first seen (`first_seen`, by id) less than
    /// `first_report_within` ago is pending. Returns when the first
    /// pending node stops being pending.
    pub fn annotate_joining(
        &self,
        nodes: &mut [Node],
        first_seen: &HashMap<String, Instant>,
        now: Instant,
    ) -> Option<Instant> {
        let mut next = None::<Instant>;
        for node in nodes {
            node.health = self.health_of(&node.id);
            if !node.alive || !node.health.is_unknown() || self.first_report_within.is_zero() {
                continue;
            }
            let Some(seen) = first_seen.get(&node.id) else {
                continue;
            };
            let until = *seen + self.first_report_within;
            if now < until {
                node.health = NodeHealth {
                    state: NodeHealthState::Pending,
                    reason: format!(
                        "joined {:.1} s ago; waiting up to {:.0} s for its first health report",
                        now.duration_since(*seen).as_secs_f64(),
                        self.first_report_within.as_secs_f64()
                    ),
                };
                next = Some(next.map_or(until, |n| n.min(until)));
            }
        }
        next
    }
}

/// Per node: the last sequence number seen and since when.
struct Seen {
    seq: u64,
    since: Instant,
    health: NodeHealth,
}

/// Follows every node's report until the receiver is dropped.
pub fn follow(
    store: Arc<dyn HealthStore>,
    plan: &NodeHealthPlan,
    status: Arc<Status>,
) -> watch::Receiver<Arc<Board>> {
    let (tx, rx) = watch::channel(Arc::new(Board {
        first_report_within: plan.stale_after,
        ..Board::default()
    }));
    let plan = plan.clone();
    tokio::spawn(async move {
        let mut seen: HashMap<String, Seen> = HashMap::new();
        let mut tick = tokio::time::interval(plan.follow_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        while !tx.is_closed() {
            tick.tick().await;
            let reports = match tokio::time::timeout(Duration::from_secs(2), store.reports()).await
            {
                Ok(Ok(r)) => {
                    failing = false;
                    r
                }
                Ok(Err(e)) => {
                    if !failing {
                        tracing::warn!("cannot read the nodes' health reports: {e}");
                    }
                    failing = true;
                    continue;
                }
                Err(_) => {
                    failing = true;
                    continue;
                }
            };
            for why in store.rejected() {
                status.event(EventReason::NodeHealthReportRejected, why);
            }
            let mut board = judge(reports, &mut seen, plan.stale_after, &status);
            board.first_report_within = plan.stale_after;
            status.node_health(
                board
                    .entries
                    .iter()
                    .map(|(id, e)| {
                        NodeHealthView::new(
                            id.clone(),
                            e.health.state,
                            e.health.reason.clone(),
                            &e.report.readings,
                            seen.get(id)
                                .map_or(0, |s| s.since.elapsed().as_millis() as u64),
                        )
                    })
                    .collect(),
            );
            // News for the watchers: a node's health or its local copy
            // (the launch waits on copies), not every reading.
            let changed =
                {
                    let current = tx.borrow();
                    current.entries.len() != board.entries.len()
                        || current.entries.iter().zip(board.entries.iter()).any(
                            |((a, x), (b, y))| {
                                a != b
                                    || x.health != y.health
                                    || x.report.local_copy != y.report.local_copy
                            },
                        )
                };
            if changed {
                tx.send_replace(Arc::new(board));
            }
        }
    });
    rx
}

/// Each report's health now, logging and recording changes.
fn judge(
    reports: Vec<HealthReport>,
    seen: &mut HashMap<String, Seen>,
    stale_after: Duration,
    status: &Status,
) -> Board {
    let now = Instant::now();
    let mut board = Board::default();
    for report in reports {
        let said = NodeHealth {
            state: report.verdict.state(),
            reason: report.verdict.reason().to_string(),
        };
        let entry = seen.entry(report.node_id.clone()).or_insert(Seen {
            seq: report.seq,
            since: now,
            health: NodeHealth::default(),
        });
        // Only a sequence that moves up is news: a replayed or
        // alternating older report does not keep a node fresh.
        if report.seq > entry.seq {
            entry.seq = report.seq;
            entry.since = now;
        }
        let quiet = now.duration_since(entry.since);
        let health = if quiet > stale_after {
            NodeHealth {
                state: NodeHealthState::Stale,
                reason: format!(
                    "no health report for {:.0} s (it last said {}{})",
                    quiet.as_secs_f64(),
                    said.state,
                    if said.reason.is_empty() {
                        String::new()
                    } else {
                        format!(": {}", said.reason)
                    }
                ),
            }
        } else {
            said
        };
        if health.state != entry.health.state {
            let address = &report.readings.address;
            match health.state {
                NodeHealthState::Unhealthy => {
                    tracing::warn!(node = %address, "node unhealthy: {}", health.reason);
                    status.event(
                        EventReason::NodeUnhealthy,
                        format!("node {address} unhealthy: {}", health.reason),
                    );
                }
                NodeHealthState::Stale => {
                    tracing::warn!(node = %address, "{}", health.reason);
                    status.event(
                        EventReason::NodeHealthStale,
                        format!("node {address}: {}", health.reason),
                    );
                }
                NodeHealthState::Degraded => {
                    tracing::warn!(node = %address, "node degraded: {}", health.reason);
                }
                NodeHealthState::Healthy | NodeHealthState::Unknown | NodeHealthState::Pending => {
                    tracing::info!(node = %address, "node {}", health.state);
                }
            }
        }
        entry.health = health.clone();
        board
            .entries
            .insert(report.node_id.clone(), BoardEntry { health, report });
    }
    board
}
