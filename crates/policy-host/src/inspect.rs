//! What a component is, before anything of it runs: its header, the world
//! and version it exports, and whether the host provides all it imports.

use crate::error::PluginError;
use crate::{PACKAGE, Version, World};
use wasmtime::Engine;
use wasmtime::component::Component;

/// WASI 0.2 interfaces the host links (with an empty context: no
/// preopened directories, no environment, no network, frozen clocks).
const WASI_PROVIDED: &[&str] = &[
    "wasi:io/error",
    "wasi:io/poll",
    "wasi:io/streams",
    "wasi:cli/environment",
    "wasi:cli/exit",
    "wasi:cli/stdin",
    "wasi:cli/stdout",
    "wasi:cli/stderr",
    "wasi:cli/terminal-input",
    "wasi:cli/terminal-output",
    "wasi:cli/terminal-stdin",
    "wasi:cli/terminal-stdout",
    "wasi:cli/terminal-stderr",
    "wasi:clocks/wall-clock",
    "wasi:clocks/monotonic-clock",
    "wasi:filesystem/types",
    "wasi:filesystem/preopens",
    "wasi:random/random",
    "wasi:random/insecure",
    "wasi:random/insecure-seed",
    "wasi:sockets/network",
    "wasi:sockets/instance-network",
    "wasi:sockets/tcp",
    "wasi:sockets/tcp-create-socket",
    "wasi:sockets/udp",
    "wasi:sockets/udp-create-socket",
    "wasi:sockets/ip-name-lookup",
];

/// Interfaces of our own package a plugin may import.
const POLICY_IMPORTS: &[&str] = &["types", "log"];

/// Checks the header: WebAssembly at all, and a component, not a module.
pub(crate) fn check_header(plugin: &str, bytes: &[u8]) -> Result<(), PluginError> {
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        return Err(PluginError::NotWasm {
            plugin: plugin.to_string(),
        });
    }
    // Bytes 4..6 are the version, 6..8 the layer: 0 = core module, 1 = component.
    let layer = u16::from_le_bytes([bytes[6], bytes[7]]);
    if layer == 0 {
        return Err(PluginError::CoreModule {
            plugin: plugin.to_string(),
        });
    }
    Ok(())
}

/// Splits `pkg:name/iface@1.2.3` into (`pkg:name/iface`, `1.2.3`).
fn split_version(name: &str) -> (&str, Option<&str>) {
    match name.rsplit_once('@') {
        Some((base, version)) => (base, Some(version)),
        None => (name, None),
    }
}

/// Whether an import is one the host links for a plugin of `contract`.
fn provided(import: &str, contract: Version) -> bool {
    let (base, version) = split_version(import);
    if let Some(iface) = base.strip_prefix(&format!("{PACKAGE}/")) {
        return POLICY_IMPORTS.contains(&iface) && version == Some(contract.imports().as_str());
    }
    // WASI 0.2.x: wasmtime links any 0.2 patch version to its own.
    WASI_PROVIDED.contains(&base) && version.is_some_and(|v| v.starts_with("0.2."))
}

/// The exports and imports of a compiled component, by name.
pub(crate) fn names(engine: &Engine, component: &Component) -> (Vec<String>, Vec<String>) {
    let ty = component.component_type();
    let exports = ty.exports(engine).map(|(n, _)| n.to_string()).collect();
    let imports = ty.imports(engine).map(|(n, _)| n.to_string()).collect();
    (exports, imports)
}

/// Which world and contract version the exports implement, or why none
/// fits. When `want` is given the component must implement that world.
pub(crate) fn world_of(
    plugin: &str,
    exports: &[String],
    imports: &[String],
    want: Option<World>,
) -> Result<(World, Version), PluginError> {
    // Every policy interface exported, at whatever version.
    let mut ours = Vec::new();
    for name in exports {
        let (base, version) = split_version(name);
        if let Some(iface) = base.strip_prefix(&format!("{PACKAGE}/"))
            && let Some(world) = World::ALL.into_iter().find(|w| w.interface() == iface)
        {
            ours.push((world, version.unwrap_or(""), name.as_str()));
        }
    }

    // A policy interface at a version this host does not call.
    let wrong_version = |found: &str| PluginError::WrongVersion {
        plugin: plugin.to_string(),
        found: found.to_string(),
    };

    let candidates: Vec<&(World, &str, &str)> = ours
        .iter()
        .filter(|(w, _, _)| want.is_none_or(|want| *w == want))
        .collect();
    // The newest supported version wins when a plugin exports several.
    let found = candidates
        .iter()
        .filter_map(|(world, v, _)| {
            Version::parse(v)
                .filter(|v| world.has(*v))
                .map(|v| (*world, v))
        })
        .max_by_key(|(_, v)| *v);
    let (world, version) = match found {
        Some(found) => found,
        None => {
            if let Some((_, _, name)) = candidates.first() {
                return Err(wrong_version(name));
            }
            let expected = want.map_or("any policy".to_string(), |w| {
                format!("the {} policy", w.name())
            });
            let expected_export = want.map_or_else(
                || {
                    format!(
                        "{PACKAGE}/<readiness|launch|health|node-health|scale>-policy@{}",
                        Version::V0_2_0
                    )
                },
                |w| w.export_name(w.latest()),
            );
            let found = if exports.is_empty() {
                "nothing".to_string()
            } else {
                exports.join(", ")
            };
            return Err(PluginError::WrongWorld {
                plugin: plugin.to_string(),
                expected,
                expected_export,
                found,
            });
        }
    };

    let missing: Vec<&String> = imports.iter().filter(|i| !provided(i, version)).collect();
    if !missing.is_empty() {
        // Our own package at another version means the plugin mixes
        // releases of the SDK.
        if let Some(other) = missing
            .iter()
            .find(|i| i.starts_with(&format!("{PACKAGE}/")))
        {
            return Err(wrong_version(other));
        }
        return Err(PluginError::UnsupportedImports {
            plugin: plugin.to_string(),
            imports: missing
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    Ok((world, version))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wasi_patch_versions_are_provided_and_others_are_not() {
        let v1 = Version::V0_1_0;
        assert!(provided("wasi:cli/environment@0.2.6", v1));
        assert!(provided("ray-orchestrator:policy/log@0.1.0", v1));
        assert!(!provided("ray-orchestrator:policy/log@0.2.0", v1));
        assert!(provided(
            "ray-orchestrator:policy/log@0.2.0",
            Version::V0_2_0
        ));
        assert!(provided(
            "ray-orchestrator:policy/types@0.2.0",
            Version::V0_2_0
        ));
        assert!(!provided("wasi:http/outgoing-handler@0.2.6", v1));
        assert!(!provided("wasi:cli/environment@0.3.0", v1));
    }

    fn exports(version: &str) -> Vec<String> {
        exports_of(World::Readiness, version)
    }

    fn exports_of(world: World, version: &str) -> Vec<String> {
        vec![format!(
            "ray-orchestrator:policy/{}@{version}",
            world.interface()
        )]
    }

    #[test]
    fn each_supported_version_of_each_world_is_recognised() {
        for world in World::ALL {
            for v in Version::SUPPORTED {
                let found = world_of("p", &exports_of(world, v.as_str()), &[], Some(world));
                if world.has(v) {
                    assert_eq!(found.unwrap(), (world, v));
                } else {
                    assert!(
                        matches!(found, Err(PluginError::WrongVersion { .. })),
                        "{world} {v}"
                    );
                }
            }
        }
        assert!(World::Health.has(Version::V0_3_0));
        assert!(!World::Readiness.has(Version::V0_3_0));
    }

    #[test]
    fn a_health_policy_of_0_3_0_imports_the_0_2_0_types_and_log() {
        let imports = vec![
            "ray-orchestrator:policy/types@0.2.0".to_string(),
            "ray-orchestrator:policy/log@0.2.0".to_string(),
        ];
        let found = world_of("p", &exports_of(World::Health, "0.3.0"), &imports, None);
        assert_eq!(found.unwrap(), (World::Health, Version::V0_3_0));
        let wrong = vec!["ray-orchestrator:policy/log@0.3.0".to_string()];
        let err = world_of("p", &exports_of(World::Health, "0.3.0"), &wrong, None).unwrap_err();
        assert!(matches!(err, PluginError::WrongVersion { .. }), "{err}");
    }

    #[test]
    fn unknown_versions_are_refused_naming_the_supported_ones() {
        for v in ["0.4.0", "0.0.9", "1.0.0"] {
            let err = world_of("p", &exports(v), &[], None).unwrap_err();
            let text = err.to_string();
            assert!(matches!(err, PluginError::WrongVersion { .. }), "{text}");
            assert!(text.contains(&format!("@{v}")), "{text}");
            assert!(text.contains("0.1.0, 0.2.0, 0.3.0"), "{text}");
        }
    }

    #[test]
    fn imports_must_match_the_exported_version() {
        let imports = vec!["ray-orchestrator:policy/log@0.1.0".to_string()];
        let err = world_of("p", &exports("0.2.0"), &imports, None).unwrap_err();
        assert!(matches!(err, PluginError::WrongVersion { .. }), "{err}");
    }

    #[test]
    fn header_tells_module_from_component() {
        let module = b"\0asm\x01\0\0\0";
        let component = b"\0asm\x0d\0\x01\0";
        assert!(matches!(
            check_header("m", module),
            Err(PluginError::CoreModule { .. })
        ));
        assert!(check_header("c", component).is_ok());
        assert!(matches!(
            check_header("x", b"hello world"),
            Err(PluginError::NotWasm { .. })
        ));
    }
}
