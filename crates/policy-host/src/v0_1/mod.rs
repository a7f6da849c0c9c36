//! Contract 0.1.0: the snapshot is copied into the plugin as records and
//! lists. Plugins built for it keep loading and running; this module is
//! how the host calls them.
//!
//! Entry points: [`check`], [`plan`] and [`evaluate`], each taking the
//! domain values and returning the domain answer.

pub(crate) mod bindings;
pub(crate) mod convert;
#[doc(hidden)]
pub mod wire;

use crate::exports;
use crate::sandbox::State;
use convert::{FromWire, ToWire};
use orchestrator_domain::{
    ClusterSnapshot, HealthSnapshot, HealthVerdict, KeyValue, LaunchError, LaunchPlan,
    LaunchRequest, Readiness,
};
use wasmtime::Store;
use wasmtime::component::Func;

pub(crate) type CheckArgs<'a> = (&'a wire::ClusterSnapshot<'a>, &'a [wire::KeyValue]);
pub(crate) type PlanArgs<'a> = (&'a wire::LaunchRequest<'a>, &'a [wire::KeyValue]);
pub(crate) type PlanResult = Result<wire::LaunchPlan, wire::LaunchError>;
pub(crate) type EvaluateArgs<'a> = (&'a wire::HealthSnapshot<'a>, &'a [wire::KeyValue]);

/// Checks the signature of the world's function.
pub(crate) fn typecheck(
    store: &Store<State>,
    func: &Func,
    world: crate::World,
) -> wasmtime::Result<()> {
    use crate::World;
    match world {
        World::Readiness => exports::typed::<CheckArgs<'_>, wire::Readiness>(store, func).map(drop),
        World::Launch => exports::typed::<PlanArgs<'_>, PlanResult>(store, func).map(drop),
        World::Health => {
            exports::typed::<EvaluateArgs<'_>, wire::HealthVerdict>(store, func).map(drop)
        }
        World::NodeHealth | World::Scale => Err(wasmtime::format_err!(
            "contract 0.1.0 has no {world} world; build the plugin against 0.2.0"
        )),
    }
}

/// `readiness-policy.check`.
pub(crate) fn check(
    store: &mut Store<State>,
    func: &Func,
    snapshot: &ClusterSnapshot,
    params: &[KeyValue],
) -> wasmtime::Result<Readiness> {
    let (snapshot, params) = (snapshot.to_wire(), convert::params(params));
    exports::call::<CheckArgs<'_>, wire::Readiness>(store, func, (&snapshot, &params))
        .map(FromWire::from_wire)
}

/// `launch-policy.plan`.
pub(crate) fn plan(
    store: &mut Store<State>,
    func: &Func,
    request: &LaunchRequest,
    params: &[KeyValue],
) -> wasmtime::Result<Result<LaunchPlan, LaunchError>> {
    let (request, params) = (request.to_wire(), convert::params(params));
    exports::call::<PlanArgs<'_>, PlanResult>(store, func, (&request, &params))
        .map(FromWire::from_wire)
}

/// `health-policy.evaluate`.
pub(crate) fn evaluate(
    store: &mut Store<State>,
    func: &Func,
    snapshot: &HealthSnapshot,
    params: &[KeyValue],
) -> wasmtime::Result<HealthVerdict> {
    let (snapshot, params) = (snapshot.to_wire(), convert::params(params));
    exports::call::<EvaluateArgs<'_>, wire::HealthVerdict>(store, func, (&snapshot, &params))
        .map(FromWire::from_wire)
}
