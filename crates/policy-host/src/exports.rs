//! The one function a policy exports, found by name when the plugin is
//! loaded and called with typed arguments. The argument types depend on
//! the contract version ([`crate::v0_1`], [`crate::v0_2`]), and the 0.1.0
//! inputs borrow from the domain values, so the function is typed at each
//! call (a structural check of the signature) rather than once.

use crate::sandbox::State;
use crate::{Version, World};
use wasmtime::Store;
use wasmtime::component::{
    Component, ComponentExportIndex, ComponentNamedList, ComponentType, Func, Instance, Lift,
    Lower, TypedFunc,
};

/// The exported function of `world`'s interface.
pub(crate) fn function_name(world: World) -> &'static str {
    match world {
        World::Readiness => "check",
        World::Launch => "plan",
        World::Health => "evaluate",
        World::NodeHealth => "judge",
        World::Scale => "recommend",
    }
}

/// Finds `world`'s function at `version` among the component's exports;
/// the error says what is missing.
pub(crate) fn find(
    component: &Component,
    world: World,
    version: Version,
) -> Result<ComponentExportIndex, String> {
    let export = world.export_name(version);
    let interface = component
        .get_export_index(None, &export)
        .ok_or_else(|| format!("no export {export}"))?;
    component
        .get_export_index(Some(&interface), function_name(world))
        .ok_or_else(|| format!("{export} exports no function `{}`", function_name(world)))
}

/// The function in a live instance, its signature checked against the
/// world's at `version`.
pub(crate) fn load(
    store: &mut Store<State>,
    instance: &Instance,
    index: &ComponentExportIndex,
    world: World,
    version: Version,
) -> wasmtime::Result<Func> {
    let func = instance.get_func(&mut *store, index).ok_or_else(|| {
        wasmtime::format_err!(
            "the export {} is not a function",
            world.export_name(version)
        )
    })?;
    match version {
        Version::V0_1_0 => crate::v0_1::typecheck(store, &func, world),
        Version::V0_2_0 => crate::v0_2::typecheck(store, &func, world),
        Version::V0_3_0 => crate::v0_3::typecheck(store, &func, world),
    }?;
    Ok(func)
}

/// `func` typed as taking `Args` and returning one `Ret` (a structural
/// check of its signature).
pub(crate) fn typed<Args, Ret>(
    store: &Store<State>,
    func: &Func,
) -> wasmtime::Result<TypedFunc<Args, (Ret,)>>
where
    Args: ComponentNamedList + Lower,
    Ret: ComponentType + Lift,
{
    func.typed::<Args, (Ret,)>(store)
}

/// Calls the world's function with the argument and result types of its
/// world and version.
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
