//! Contract 0.2.0: the snapshot is a host-owned resource, `cluster`, that
//! the plugin queries. Aggregate queries ([`cluster::totals`]) cost the same
//! at any cluster size; the whole node table is packed into fixed-size
//! rows and one text ([`table::encode`]) only when the plugin asks for it.
//!
//! Entry points: [`check`], [`plan`], [`evaluate`], [`judge`] and [`recommend`], each taking the
//! domain values and returning the domain answer; the resource's methods
//! are implemented in [`cluster`].

pub(crate) mod bindings;
mod cluster;
pub(crate) mod convert;
mod table;

#[allow(unreachable_pub)] // bindgen's `with` names it from the generated module
pub use cluster::ClusterInput;

use crate::World;
use crate::exports;
use crate::sandbox::State;
use bindings::types as wire;
use orchestrator_domain::{
    ClusterSnapshot, HealthSnapshot, HealthVerdict, KeyValue, LaunchError, LaunchPlan,
    LaunchRequest, NodeReadings, NodeVerdict, Readiness, ScaleInput, ScaleRecommendation,
};
use std::sync::Arc;
use wasmtime::Store;
use wasmtime::component::{Func, Resource};

type Cluster = Resource<ClusterInput>;
type CheckArgs<'a> = (&'a Cluster, &'a [wire::KeyValue]);
type PlanArgs<'a> = (&'a Cluster, &'a wire::ServeSettings, &'a [wire::KeyValue]);
type PlanResult = Result<wire::LaunchPlan, wire::LaunchError>;
type EvaluateArgs<'a> = (&'a wire::HealthSnapshot, &'a Cluster, &'a [wire::KeyValue]);
type JudgeArgs<'a> = (&'a wire::NodeReadings, &'a [wire::KeyValue]);
type RecommendArgs<'a> = (&'a wire::ScaleInput, &'a [wire::KeyValue]);

/// Checks the signature of the world's function.
pub(crate) fn typecheck(store: &Store<State>, func: &Func, world: World) -> wasmtime::Result<()> {
    match world {
        World::Readiness => exports::typed::<CheckArgs<'_>, wire::Readiness>(store, func).map(drop),
        World::Launch => exports::typed::<PlanArgs<'_>, PlanResult>(store, func).map(drop),
        World::Health => {
            exports::typed::<EvaluateArgs<'_>, wire::HealthVerdict>(store, func).map(drop)
        }
        World::NodeHealth => {
            exports::typed::<JudgeArgs<'_>, wire::NodeVerdict>(store, func).map(drop)
        }
        World::Scale => {
            exports::typed::<RecommendArgs<'_>, wire::ScaleRecommendation>(store, func).map(drop)
        }
    }
}

/// Runs `call` with `input` lent to the plugin as a `cluster`, and takes
/// it back afterwards (also when the call failed).
pub(crate) fn with_cluster<R>(
    store: &mut Store<State>,
    input: ClusterInput,
    call: impl FnOnce(&mut Store<State>, &Cluster) -> wasmtime::Result<R>,
) -> wasmtime::Result<R> {
    let cluster = store.data_mut().table.push(input)?;
    let result = call(store, &cluster);
    let taken = store.data_mut().table.delete(cluster);
    let value = result?;
    taken?;
    Ok(value)
}

/// `readiness-policy.check`.
pub(crate) fn check(
    store: &mut Store<State>,
    func: &Func,
    snapshot: &Arc<ClusterSnapshot>,
    params: &[KeyValue],
) -> wasmtime::Result<Readiness> {
    let params = convert::params(params);
    with_cluster(
        store,
        ClusterInput::new(Arc::clone(snapshot)),
        |store, cluster| {
            exports::call::<CheckArgs<'_>, wire::Readiness>(store, func, (cluster, &params))
        },
    )
    .map(convert::readiness)
}

/// `launch-policy.plan`.
pub(crate) fn plan(
    store: &mut Store<State>,
    func: &Func,
    request: &LaunchRequest,
    params: &[KeyValue],
) -> wasmtime::Result<Result<LaunchPlan, LaunchError>> {
    let params = convert::params(params);
    let settings = convert::serve_settings(&request.settings);
    with_cluster(
        store,
        ClusterInput::new(Arc::new(request.cluster.clone())),
        |store, cluster| {
            exports::call::<PlanArgs<'_>, PlanResult>(store, func, (cluster, &settings, &params))
        },
    )
    .map(convert::plan_result)
}

/// `health-policy.evaluate`.
pub(crate) fn evaluate(
    store: &mut Store<State>,
    func: &Func,
    snapshot: &HealthSnapshot,
    params: &[KeyValue],
) -> wasmtime::Result<HealthVerdict> {
    let params = convert::params(params);
    let wire_snapshot = convert::health_snapshot(snapshot);
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
    .map(convert::health_verdict)
}

/// `node-health-policy.judge`.
pub(crate) fn judge(
    store: &mut Store<State>,
    func: &Func,
    readings: &NodeReadings,
    params: &[KeyValue],
) -> wasmtime::Result<NodeVerdict> {
    let params = convert::params(params);
    let readings = convert::node_readings(readings);
    exports::call::<JudgeArgs<'_>, wire::NodeVerdict>(store, func, (&readings, &params))
        .map(convert::node_verdict)
}

/// `scale-policy.recommend`.
pub(crate) fn recommend(
    store: &mut Store<State>,
    func: &Func,
    input: &ScaleInput,
    params: &[KeyValue],
) -> wasmtime::Result<ScaleRecommendation> {
    let params = convert::params(params);
    let input = convert::scale_input(input);
    exports::call::<RecommendArgs<'_>, wire::ScaleRecommendation>(store, func, (&input, &params))
        .map(convert::scale_recommendation)
}
