//! The on-disk cache of compiled plugins, keyed by the plugin's sha256 and
//! the engine's settings. Entry point: [`compile`].
//!
//! An entry is bound to what it was compiled from: its first line names the
//! plugin's sha256, the engine key and the sha256 of the compiled bytes
//! that follow, and an entry whose line does not match the plugin being
//! loaded (another plugin's entry copied under this name, a truncated or
//! altered file, another engine) is refused and compiled afresh. A cache
//! directory that others may write is not used at all: code from it would
//! run as ours.

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

/// The first bytes of every entry, before its binding line.
const MAGIC: &str = "ray-orchestrator-cwasm/1";

/// The line that binds an entry to its plugin, engine and contents.
fn binding(plugin_sha256: &str, engine_key: &str, compiled: &[u8]) -> String {
    format!(
        "{MAGIC} plugin={plugin_sha256} engine={engine_key} compiled={}\n",
        hex::encode(Sha256::digest(compiled))
    )
}

/// Why a directory may not hold code we run, if it may not.
#[cfg(unix)]
fn unsafe_dir(dir: &Path) -> Option<String> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let meta = std::fs::metadata(dir).ok()?;
    let mode = meta.permissions().mode();
    if mode & 0o022 != 0 {
        return Some(format!(
            "it is writable by its group or by everyone (mode {:o}); run `chmod go-w {}`",
            mode & 0o7777,
            dir.display()
        ));
    }
    let ours = std::fs::metadata("/proc/self").map(|m| m.uid()).ok();
    if let Some(uid) = ours
        && uid != meta.uid()
        && meta.uid() != 0
    {
        return Some(format!(
            "it belongs to user {} and this process runs as {uid}; give each user its own cache",
            meta.uid()
        ));
    }
    None
}

#[cfg(not(unix))]
fn unsafe_dir(_dir: &Path) -> Option<String> {
    None
}

/// Loads the compiled component from the cache, or compiles and stores it.
pub(crate) fn compile(
    shared: &Shared,
    name: &str,
    bytes: &[u8],
    sha256: &str,
) -> Result<Component, PluginError> {
    let dir = shared.config.cache_dir.as_deref().filter(|dir| {
        match unsafe_dir(dir) {
            Some(why) => {
                tracing::warn!(plugin = name, dir = %dir.display(), "not using the compile cache: {why}");
                false
            }
            None => true,
        }
    });
    let path = dir.map(|dir| entry(dir, sha256, &shared.engine_key));
    if let Some(path) = path.as_deref()
        && path.is_file()
    {
        match load(&shared.engine, path, sha256, &shared.engine_key) {
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
        && let Err(e) = store(&component, path, sha256, &shared.engine_key)
    {
        tracing::warn!(plugin = name, path = %path.display(), "cannot cache the compiled plugin (it still runs): {e}");
    }
    Ok(component)
}

/// Deserializes a cached artifact. The file is read into memory rather than
/// mapped: a mapped file that someone truncates later would crash the
/// process (SIGBUS) the next time the plugin runs.
#[allow(unsafe_code)]
fn load(
    engine: &Engine,
    path: &Path,
    plugin_sha256: &str,
    engine_key: &str,
) -> wasmtime::Result<Component> {
    let bytes = std::fs::read(path)?;
    let split = bytes
        .iter()
        .position(|b| *b == b'\n')
        .filter(|_| bytes.starts_with(MAGIC.as_bytes()))
        .ok_or_else(|| wasmtime::format_err!("the entry has no binding line"))?;
    let (line, compiled) = (&bytes[..=split], &bytes[split + 1..]);
    if line != binding(plugin_sha256, engine_key, compiled).as_bytes() {
        wasmtime::bail!(
            "the entry is bound to another plugin, engine or contents ({}); refused",
            String::from_utf8_lossy(line).trim_end()
        );
    }
    // SAFETY: `Component::deserialize` trusts its input to be code that
    // wasmtime compiled. The binding line just checked says these bytes are
    // what `store` below wrote from `Component::serialize` for this very
    // plugin (its sha256) and this engine configuration, and are whole (the
    // compiled bytes' sha256); wasmtime itself also refuses an artifact
    // whose embedded version or settings differ. The directory is writable
    // by this user only (`unsafe_dir`).
    unsafe { Component::deserialize(engine, compiled) }
}

fn store(
    component: &Component,
    path: &Path,
    plugin_sha256: &str,
    engine_key: &str,
) -> std::io::Result<()> {
    let compiled = component
        .serialize()
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    if let Some(dir) = path.parent()
        && !dir.is_dir()
    {
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder.create(dir)?;
    }
    let mut bytes = binding(plugin_sha256, engine_key, &compiled).into_bytes();
    bytes.extend_from_slice(&compiled);
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}
