//! The one function a policy exports, found by name when the plugin is
//! loaded and called with typed arguments. The inputs' wire types borrow
//! from the domain values ([`crate::wire`]), so they are typed at each call
//! (a structural check of the signature) rather than once with a fixed
//! lifetime.

use crate::sandbox::State;
use crate::wire;
use crate::world::World;
use wasmtime::Store;
use wasmtime::component::{Component, ComponentExportIndex, Func, Instance};

/// The exported function of `world`'s interface.
pub(crate) fn function_name(world: World) -> &'static str {
    match world {
        World::Readiness => "check",
        World::Launch => "plan",
        World::Health => "evaluate",
    }
}

/// Finds `world`'s function among the component's exports; the error says
/// what is missing.
pub(crate) fn find(component: &Component, world: World) -> Result<ComponentExportIndex, String> {
    let interface = component
        .get_export_index(None, world.export_name())
        .ok_or_else(|| format!("no export {}", world.export_name()))?;
    component
        .get_export_index(Some(&interface), function_name(world))
        .ok_or_else(|| {
            format!(
                "{} exports no function `{}`",
                world.export_name(),
                function_name(world)
            )
        })
}

/// The function in a live instance, its signature checked against the
/// world's.
pub(crate) fn load(
    store: &mut Store<State>,
    instance: &Instance,
    index: &ComponentExportIndex,
    world: World,
) -> wasmtime::Result<Func> {
    let func = instance.get_func(&mut *store, index).ok_or_else(|| {
        wasmtime::format_err!("the export {} is not a function", world.export_name())
    })?;
    match world {
        World::Readiness => func
            .typed::<CheckArgs<'_>, (wire::Readiness,)>(&*store)
            .map(drop),
        World::Launch => func.typed::<PlanArgs<'_>, (PlanResult,)>(&*store).map(drop),
        World::Health => func
            .typed::<EvaluateArgs<'_>, (wire::HealthVerdict,)>(&*store)
            .map(drop),
    }?;
    Ok(func)
}

pub(crate) type CheckArgs<'a> = (&'a wire::ClusterSnapshot<'a>, &'a [wire::KeyValue]);
pub(crate) type PlanArgs<'a> = (&'a wire::LaunchRequest<'a>, &'a [wire::KeyValue]);
pub(crate) type PlanResult = Result<wire::LaunchPlan, wire::LaunchError>;
pub(crate) type EvaluateArgs<'a> = (&'a wire::HealthSnapshot<'a>, &'a [wire::KeyValue]);

/// Calls `check`.
pub(crate) fn check(
    store: &mut Store<State>,
    func: &Func,
    args: CheckArgs<'_>,
) -> wasmtime::Result<wire::Readiness> {
    let typed = func.typed::<CheckArgs<'_>, (wire::Readiness,)>(&*store)?;
    typed.call(store, args).map(|(r,)| r)
}

/// Calls `plan`.
pub(crate) fn plan(
    store: &mut Store<State>,
    func: &Func,
    args: PlanArgs<'_>,
) -> wasmtime::Result<PlanResult> {
    let typed = func.typed::<PlanArgs<'_>, (PlanResult,)>(&*store)?;
    typed.call(store, args).map(|(r,)| r)
}

/// Calls `evaluate`.
pub(crate) fn evaluate(
    store: &mut Store<State>,
    func: &Func,
    args: EvaluateArgs<'_>,
) -> wasmtime::Result<wire::HealthVerdict> {
    let typed = func.typed::<EvaluateArgs<'_>, (wire::HealthVerdict,)>(&*store)?;
    typed.call(store, args).map(|(r,)| r)
}
