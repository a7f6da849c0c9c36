//! Contract 0.3.0: only the health world changed. Its snapshot adds the
//! server's start rank by rank (stages, a stall, the last failed start);
//! the `cluster` resource, the verdict and `log` are 0.2.0's, so the call
//! goes through [`crate::v0_2`]'s resource and conversions.
//!
//! Entry points: [`typecheck`] and [`evaluate`].

pub(crate) mod bindings;

use crate::World;
use crate::exports;
use crate::sandbox::State;
use crate::v0_2::bindings::types as wire;
use crate::v0_2::{ClusterInput, convert as convert_v0_2, with_cluster};
use bindings::health;
use orchestrator_domain::startup::now_unix_ms;
use orchestrator_domain::{
    HealthSnapshot, HealthVerdict, KeyValue, RankStage, ServerStage, Stall, StartupFailure,
};
use wasmtime::Store;
use wasmtime::component::{Func, Resource};

type EvaluateArgs<'a> = (
    &'a health::HealthSnapshot,
    &'a Resource<ClusterInput>,
    &'a [wire::KeyValue],
);

/// Checks the signature of the world's function: 0.3.0 has only health.
pub(crate) fn typecheck(store: &Store<State>, func: &Func, world: World) -> wasmtime::Result<()> {
    match world {
        World::Health => {
            exports::typed::<EvaluateArgs<'_>, wire::HealthVerdict>(store, func).map(drop)
        }
        other => Err(wasmtime::format_err!(
            "contract 0.3.0 has no {other} world (it is 0.2.0's)"
        )),
    }
}

/// `health-policy.evaluate` of 0.3.0.
pub(crate) fn evaluate(
    store: &mut Store<State>,
    func: &Func,
    snapshot: &HealthSnapshot,
    params: &[KeyValue],
) -> wasmtime::Result<HealthVerdict> {
    let params = convert_v0_2::params(params);
    let wire_snapshot = health_snapshot(snapshot, now_unix_ms());
    with_cluster(
        store,
        ClusterInput::for_health(snapshot),
        |store, cluster| {
            exports::call::<EvaluateArgs<'_>, wire::HealthVerdict>(
                store,
                func,
                (&wire_snapshot, cluster, &params),
            )
        },
    )
    .map(convert_v0_2::health_verdict)
}

/// The 0.3.0 snapshot: 0.2.0's fields, then the start. `now` turns the
/// stages' times into ages.
fn health_snapshot(s: &HealthSnapshot, now: u64) -> health::HealthSnapshot {
    let base = convert_v0_2::health_snapshot(s);
    health::HealthSnapshot {
        server: base.server,
        server_uptime_ms: base.server_uptime_ms,
        health_probe: base.health_probe,
        generation_probe: base.generation_probe,
        consecutive_probe_failures: base.consecutive_probe_failures,
        changes: base.changes,
        restarts: base.restarts,
        uptime_ms: base.uptime_ms,
        stages: s.stages.iter().map(|r| rank_stage(r, now)).collect(),
        stall: s.stall.as_ref().map(stall),
        last_failure: s.last_failure.as_ref().map(startup_failure),
    }
}

fn stage(s: ServerStage) -> health::ServerStage {
    match s {
        ServerStage::ProcessUp => health::ServerStage::ProcessUp,
        ServerStage::ImportsDone => health::ServerStage::ImportsDone,
        ServerStage::DistributedInit => health::ServerStage::DistributedInit,
        ServerStage::WeightsLoaded => health::ServerStage::WeightsLoaded,
        ServerStage::KvCacheAllocated => health::ServerStage::KvCacheAllocated,
        ServerStage::ApiUp => health::ServerStage::ApiUp,
        ServerStage::WarmedUp => health::ServerStage::WarmedUp,
    }
}

fn rank_stage(r: &RankStage, now: u64) -> health::RankStage {
    health::RankStage {
        rank: r.rank,
        node: r.node.clone(),
        stage: stage(r.stage),
        for_ms: now.saturating_sub(r.since_unix_ms),
    }
}

fn stall(s: &Stall) -> health::Stall {
    health::Stall {
        rank: s.rank,
        node: s.node.clone(),
        stage: stage(s.stage),
        stalled_ms: s.stalled_ms,
        deadline_ms: s.deadline_ms,
        top_frames: s.top_frames.clone(),
    }
}

fn startup_failure(f: &StartupFailure) -> health::StartupFailure {
    health::StartupFailure {
        rank: f.rank,
        node: f.node.clone(),
        stage: stage(f.stage),
        exit_code: f.exit.code,
        signal: f.exit.signal,
        exception: f.exception.clone(),
        identical: f.identical,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use orchestrator_domain::ExitStatus;

    #[test]
    fn the_start_is_carried_with_ages_and_the_failure_count() {
        let snapshot = HealthSnapshot {
            stages: vec![RankStage {
                rank: 1,
                node: "127.0.0.3".into(),
                stage: ServerStage::WeightsLoaded,
                since_unix_ms: 10_000,
                pid: None,
            }],
            last_failure: Some(StartupFailure {
                rank: 1,
                node: "127.0.0.3".into(),
                stage: ServerStage::ImportsDone,
                exit: ExitStatus {
                    code: Some(1),
                    signal: None,
                },
                exception: Some("ValueError: no".into()),
                last_lines: vec!["secret-free".into()],
                at_unix_ms: 9_000,
                identical: 3,
            }),
            restarts: 2,
            ..HealthSnapshot::default()
        };
        let wire = health_snapshot(&snapshot, 12_500);
        assert_eq!(wire.restarts, 2);
        assert_eq!(wire.stages.len(), 1);
        assert_eq!(wire.stages[0].for_ms, 2_500);
        assert!(matches!(
            wire.stages[0].stage,
            health::ServerStage::WeightsLoaded
        ));
        let failure = wire.last_failure.expect("failure carried");
        assert_eq!((failure.identical, failure.exit_code), (3, Some(1)));
        assert!(wire.stall.is_none());
    }
}
