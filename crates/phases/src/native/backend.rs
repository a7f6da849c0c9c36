//! The native backend behind the one lifecycle: on the leader the
//! rendezvous (served on the endpoints' port), the wait on the ranks that
//! registered and the group's launch; on another rank its registration,
//! heartbeats and its part of the server; `orchestrator local --backend
//! native` runs the other ranks in this process beside the leader. Entry
//! point: [`NativeBackend`].

use super::member::{self, HeartbeatReports, MemberPlan, OwnChecks, run_member};
use super::rendezvous::{self, Rendezvous};
use super::{NativePlan, NativeRole, run_leader};
use crate::endpoints::{PostRoutes, Status};
use crate::lifecycle::{Around, Backend, Exit, PhasesFuture, Surroundings};
use crate::membership::HealthStore;
use crate::node_health::{NodeHealthPlan, Reporter};
use crate::platform::kubernetes::Owner;
use crate::policies::Policies;
use crate::supervision::Shutdown;
use orchestrator_node_probe::{GpuProbe, HostTarget};
use orchestrator_policy_host::NodeHealthPolicy;
use std::sync::Arc;

/// A native plan's run; the leader's `policies` are loaded by the caller.
pub struct NativeBackend {
    plan: NativePlan,
    policies: Option<Policies>,
    /// The leader's rendezvous (the ranks register with it).
    rendezvous: Option<Rendezvous>,
}

impl NativeBackend {
    /// A run of `plan`; `policies` are the leader's (none for a rank).
    pub fn new(plan: NativePlan, policies: Option<Policies>) -> Self {
        let rendezvous = match &plan.role {
            NativeRole::Leader { rendezvous, .. } => Some(Rendezvous::new(rendezvous.clone())),
            NativeRole::Member(_) => None,
        };
        Self {
            plan,
            policies,
            rendezvous,
        }
    }
}

impl Backend for NativeBackend {
    fn surroundings(&self) -> Surroundings {
        let kubernetes = match &self.plan.role {
            NativeRole::Leader { plan, .. } => plan
                .kubernetes
                .clone()
                .map(|settings| (settings, Owner::LeaderWorkerSet)),
            NativeRole::Member(_) => None,
        };
        Surroundings {
            endpoints: self.plan.endpoints,
            open_file_limit: self.plan.open_file_limit,
            prefetch: self.plan.prefetch.clone(),
            weights: self.plan.weights.clone(),
            compile_cache: self.plan.compile_cache.clone(),
            kubernetes,
        }
    }

    fn routes(&self) -> Option<Arc<dyn PostRoutes>> {
        self.rendezvous
            .clone()
            .map(|r| Arc::new(r) as Arc<dyn PostRoutes>)
    }

    fn phases<'a>(&'a mut self, around: Around<'a>) -> PhasesFuture<'a> {
        Box::pin(self.start_to_stop(around))
    }
}

impl NativeBackend {
    /// The leader or the member (and the local members beside the
    /// leader) until they end.
    async fn start_to_stop(&mut self, around: Around<'_>) -> Exit {
        let Around {
            status,
            shutdown,
            kubernetes,
            node_health,
            on_ready,
        } = around;
        let checks = match (&self.plan.node_health, node_health) {
            (Some(health), Some(policy)) => Some((health.clone(), policy)),
            _ => None,
        };
        let leader_plan = match &self.plan.role {
            NativeRole::Member(member) => {
                let checks =
                    checks.map(|(health, policy)| member_checks(member, &health, policy, status));
                return run_member(member, checks.as_ref(), status, shutdown).await;
            }
            NativeRole::Leader { plan, .. } => plan.clone(),
        };
        let Some(rendezvous) = self.rendezvous.clone() else {
            return Exit::failed(1, "the leader has no rendezvous");
        };
        let Some(policies) = self.policies.as_mut() else {
            return Exit::failed(1, "the leader has no policies loaded");
        };
        let sweep = rendezvous.spawn_sweep();
        let local = LocalRanks::spawn(&self.plan.local_members, shutdown);
        // The leader checks itself and follows every rank's report.
        let mut _reporter = None;
        let board = checks.map(|(health, policy)| {
            let store: Arc<dyn HealthStore> = Arc::new(rendezvous.clone());
            let reporter = own_reporter(&health, policy, Some(Arc::clone(&store)), status);
            let leader = rendezvous.nodes().into_iter().next().unwrap_or_default();
            reporter.add(
                &leader.id,
                HostTarget::new(leader.address.clone(), std::env::temp_dir()),
            );
            // The ranks run in this process are checked here too.
            for member in &self.plan.local_members {
                reporter.add(
                    &rendezvous::node_id(member.rank),
                    HostTarget::new(member.address.clone(), std::env::temp_dir()),
                );
            }
            _reporter = Some(reporter);
            crate::node_health::board::follow(store, &health, Arc::clone(status))
        });
        let facts = match kubernetes.as_mut().and_then(|k| k.facts.take()) {
            Some(setup) => tokio::select! {
                facts = setup => facts.ok().flatten(),
                () = shutdown.requested() => None,
            },
            None => None,
        };
        let exit = run_leader(
            &leader_plan,
            &rendezvous,
            policies,
            super::leader::Around {
                board,
                facts,
                on_ready,
                status,
                shutdown,
            },
        )
        .await;
        local.stop().await;
        sweep.abort();
        exit
    }
}

/// The ranks run in this process beside the leader (`orchestrator local
/// --backend native`): they stop when asked, or once the leader is done.
struct LocalRanks {
    ranks: Vec<tokio::task::JoinHandle<Exit>>,
    trigger: Arc<crate::supervision::Trigger>,
    forward: tokio::task::JoinHandle<()>,
}

impl LocalRanks {
    fn spawn(members: &[MemberPlan], shutdown: &Shutdown) -> Self {
        let (members_shutdown, trigger) = Shutdown::manual();
        let trigger = Arc::new(trigger);
        let forward = {
            let (shutdown, trigger) = (shutdown.clone(), Arc::clone(&trigger));
            tokio::spawn(async move {
                shutdown.requested().await;
                trigger.request();
                shutdown.forced().await;
                trigger.request();
            })
        };
        let ranks = members
            .iter()
            .cloned()
            .map(|member| {
                let shutdown = members_shutdown.clone();
                tokio::spawn(async move {
                    let status = Status::new();
                    run_member(&member, None, &status, &shutdown).await
                })
            })
            .collect();
        Self {
            ranks,
            trigger,
            forward,
        }
    }

    async fn stop(self) {
        self.trigger.request();
        for rank in self.ranks {
            if let Ok(e) = rank.await
                && e.code != 0
            {
                tracing::warn!(
                    "a local rank ended with {}: {}",
                    e.code,
                    e.error.unwrap_or_default()
                );
            }
        }
        self.forward.abort();
    }
}

/// This process's reporter: GPUs probed at the interval, judged by
/// `policy`, published to `store`.
fn own_reporter(
    health: &NodeHealthPlan,
    policy: NodeHealthPolicy,
    store: Option<Arc<dyn HealthStore>>,
    status: &Arc<Status>,
) -> Reporter {
    let probe = GpuProbe::spawn(
        orchestrator_node_probe::gpu::library_path(),
        health.interval,
    );
    Reporter::spawn(health, policy, probe.subscribe(), store, Arc::clone(status))
}

/// A rank's own checks, reported in its heartbeats.
fn member_checks(
    member: &MemberPlan,
    health: &NodeHealthPlan,
    policy: NodeHealthPolicy,
    status: &Arc<Status>,
) -> OwnChecks {
    let node = orchestrator_domain::Node {
        id: rendezvous::node_id(member.rank),
        address: member.address.clone(),
        hostname: member.hostname.clone(),
        alive: true,
        resources: orchestrator_domain::Resources {
            cpu: member.cpus,
            gpu: member.gpus,
            ..orchestrator_domain::Resources::default()
        },
        ..orchestrator_domain::Node::default()
    };
    let reports = Arc::new(HeartbeatReports::new(node));
    let store: Arc<dyn HealthStore> = reports.clone();
    let reporter = own_reporter(health, policy, Some(store), status);
    reporter.add(
        &rendezvous::node_id(member.rank),
        HostTarget::new(member.address.clone(), std::env::temp_dir()),
    );
    member::OwnChecks {
        reporter,
        reports,
        grace: health.unhealthy_grace,
    }
}
