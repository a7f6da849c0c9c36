//! The on-disk cache of compiled plugins, keyed by the plugin's sha256 and
//! the engine's settings. Only artifacts this host wrote with the same
//! engine settings are ever deserialized.

use crate::Shared;
use crate::error::PluginError;
use sha2::{Digest, Sha256};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use wasmtime::Engine;
use wasmtime::component::Component;

/// `$XDG_CACHE_HOME/ray-orchestrator/plugins`, or `~/.cache/...`.
pub(crate) fn default_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("ray-orchestrator").join("plugins"))
}

/// Identifies everything about the engine that makes compiled code
/// (in)compatible: wasmtime's version and its settings.
pub(crate) fn engine_key(engine: &Engine) -> String {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut hasher);
    let mut digest = Sha256::new();
    digest.update(b"wasmtime-48.0.8/");
    digest.update(hasher.finish().to_le_bytes());
    hex::encode(&digest.finalize()[..12])
}

fn entry(dir: &Path, sha256: &str, engine_key: &str) -> PathBuf {
    dir.join(format!("{sha256}-{engine_key}.cwasm"))
}

/// Loads the compiled component from the cache, or compiles and stores it.
pub(crate) fn compile(
    shared: &Shared,
    name: &str,
    bytes: &[u8],
    sha256: &str,
) -> Result<Component, PluginError> {
    let path = shared
        .config
        .cache_dir
        .as_deref()
        .map(|dir| entry(dir, sha256, &shared.engine_key));
    if let Some(path) = path.as_deref()
        && path.is_file()
    {
        match load(&shared.engine, path) {
            Ok(component) => return Ok(component),
            Err(e) => {
                tracing::warn!(plugin = name, path = %path.display(), "cached compilation unusable, compiling again: {e}");
            }
        }
    }
    let component = Component::new(&shared.engine, bytes).map_err(|e| PluginError::Invalid {
        plugin: name.to_string(),
        reason: format!("{e:#}"),
    })?;
    if let Some(path) = path.as_deref()
        && let Err(e) = store(&component, path)
    {
        tracing::warn!(plugin = name, path = %path.display(), "cannot cache the compiled plugin (it still runs): {e}");
    }
    Ok(component)
}

/// Deserializes a cached artifact. The file is read into memory rather than
/// mapped: a mapped file that someone truncates later would crash the
/// process (SIGBUS) the next time the plugin runs.
#[allow(unsafe_code)]
fn load(engine: &Engine, path: &Path) -> wasmtime::Result<Component> {
    let bytes = std::fs::read(path)?;
    // SAFETY: `Component::deserialize` trusts its input to be code that
    // wasmtime compiled. Cache entries are only ever written by `store`
    // below, from `Component::serialize` of this same engine configuration:
    // the file name carries the plugin's sha256 and the engine key (wasmtime
    // version and settings), and wasmtime itself refuses an artifact whose
    // embedded version or settings differ. The cache directory belongs to
    // the orchestrator's user.
    unsafe { Component::deserialize(engine, &bytes) }
}

fn store(component: &Component, path: &Path) -> std::io::Result<()> {
    let bytes = component
        .serialize()
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}
