//! The one function a policy exports, found by name when the plugin is
//! loaded and called with typed arguments. The inputs' wire types borrow
//! from the domain values ([`crate::wire`]), so they are typed at each call
//! (a structural check of the signature) rather than once with a fixed
//! lifetime.

use crate::sandbox::State;
use crate::wire;
use crate::world::World;
use wasmtime::Store;
use wasmtime::component::{
    Component, ComponentExportIndex, ComponentNamedList, ComponentType, Func, Instance, Lift, Lower,
};

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
        World::Readiness => typed::<CheckArgs<'_>, wire::Readiness>(store, &func).map(drop),
        World::Launch => typed::<PlanArgs<'_>, PlanResult>(store, &func).map(drop),
        World::Health => typed::<EvaluateArgs<'_>, wire::HealthVerdict>(store, &func).map(drop),
    }?;
    Ok(func)
}

pub(crate) type CheckArgs<'a> = (&'a wire::ClusterSnapshot<'a>, &'a [wire::KeyValue]);
pub(crate) type PlanArgs<'a> = (&'a wire::LaunchRequest<'a>, &'a [wire::KeyValue]);
pub(crate) type PlanResult = Result<wire::LaunchPlan, wire::LaunchError>;
pub(crate) type EvaluateArgs<'a> = (&'a wire::HealthSnapshot<'a>, &'a [wire::KeyValue]);

/// `func` typed as taking `Args` and returning one `Ret` (a structural
/// check of its signature).
fn typed<Args, Ret>(
    store: &Store<State>,
    func: &Func,
) -> wasmtime::Result<wasmtime::component::TypedFunc<Args, (Ret,)>>
where
    Args: ComponentNamedList + Lower,
    Ret: ComponentType + Lift,
{
    func.typed::<Args, (Ret,)>(store)
}

/// Calls the world's function: `check`, `plan` or `evaluate`, with the
/// argument and result types of its world.
pub(crate) fn call<Args, Ret>(
    store: &mut Store<State>,
    func: &Func,
    args: Args,
) -> wasmtime::Result<Ret>
where
    Args: ComponentNamedList + Lower,
    Ret: ComponentType + Lift,
{
    typed::<Args, Ret>(store, func)?
        .call(store, args)
        .map(|(r,)| r)
}
