#![warn(unreachable_pub)]
//! # orchestrator-policy-host
//!
//! Hosts the orchestrator's policy plugins: WebAssembly components that
//! implement one world of `ray-orchestrator:policy`, version 0.1.0 or 0.2.0
//! (see `wit/`): the host reads each plugin's version from its exports
//! and calls it through that version's bindings ([`Version`]).
//! Words: a *plugin* is the component (a file, or bytes such as the
//! built-ins), described by [`PluginSource`] and [`PluginInfo`]; a
//! *policy* is a loaded plugin serving one world, behind its typed handle.
//!
//! - [`PolicyHost::readiness`], [`PolicyHost::launch`] and
//!   [`PolicyHost::health`] load a component (a file, or bytes embedded by
//!   the caller such as the built-ins), check its sha256 pin, its header,
//!   the world and version it exports and the imports it needs, and say
//!   exactly what is wrong when something is. Each returns a typed handle
//!   ([`ReadinessPolicy`], [`LaunchPolicy`], [`HealthPolicy`]) whose one
//!   call takes and returns `orchestrator_domain` types, so a call to the
//!   wrong world cannot be written.
//! - Compiled code is cached on disk, keyed by the plugin's sha256 and the
//!   engine's settings, so later starts skip compilation.
//! - Every call is bounded by a deadline (epoch interruption) and a memory
//!   cap. Plugins get an empty WASI context: no files, no environment, no
//!   network, frozen clocks. Their stdout/stderr is captured.
//! - A trap, panic, timeout or memory exhaustion becomes a [`PluginError`]
//!   carrying the plugin's name and stderr; the broken instance is dropped
//!   and the next call instantiates afresh. A plugin cannot crash or hang
//!   the orchestrator.

mod cache;
mod error;
mod exports;
mod inspect;
mod sandbox;
// Public only because the generated bindings re-export it; not an API.
#[doc(hidden)]
pub mod v0_1;
mod v0_2;
mod v0_3;

pub use error::{ExitStatus, PluginError, Stderr};
pub use orchestrator_domain::world::{PACKAGE, VERSION, Version, World};

use orchestrator_domain::{
    ClusterSnapshot, HealthSnapshot, HealthVerdict, KeyValue, LaunchError, LaunchPlan,
    LaunchRequest, NodeReadings, NodeVerdict, Readiness, ScaleInput, ScaleRecommendation,
};
use sandbox::State;
use sha2::{Digest, Sha256};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::thread::Thread;
use std::time::{Duration, Instant};
use wasmtime::component::{Component, HasSelf, InstancePre, Linker};
use wasmtime::{Config, Engine, Store, Trap};

/// Limits and locations of the plugin host.
#[derive(Debug, Clone)]
pub struct HostConfig {
    /// The CPU one call (or one instantiation) may use, as time on an
    /// unloaded core: turned into wasmtime fuel ([`FUEL_PER_MS`]), so a
    /// loaded machine or a throttled pod does not shrink it. A wall-clock
    /// backstop of ten times this (at least 1 s) stops a call that waits
    /// rather than computes. Default 100 ms.
    pub call_timeout: Duration,
    /// Most linear memory one instance may use. Default 64 MiB.
    pub memory_limit_bytes: usize,
    /// Where compiled plugins are cached; `None` disables the cache.
    pub cache_dir: Option<PathBuf>,
}

impl Default for HostConfig {
    fn default() -> Self {
        Self {
            call_timeout: Duration::from_millis(100),
            memory_limit_bytes: 64 * 1024 * 1024,
            cache_dir: cache::default_dir(),
        }
    }
}

/// Where a plugin comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PluginSource {
    /// Bytes the caller embeds (the built-in policies), under a display
    /// name such as `builtin:node-count`.
    Embedded {
        /// The name errors and logs use.
        name: String,
        /// The component.
        bytes: &'static [u8],
    },
    /// A component file, optionally pinned by sha256 (hex).
    File {
        /// The file's path.
        path: PathBuf,
        /// The sha256 the file must have, when pinned.
        sha256: Option<String>,
    },
    /// A component fetched from elsewhere (an OCI registry) into a local
    /// file, named by where it came from.
    Pulled {
        /// Its origin, e.g. `oci://host/repo:tag@sha256:...`.
        name: String,
        /// The local file.
        path: PathBuf,
        /// The sha256 the file must have.
        sha256: String,
    },
}

impl PluginSource {
    /// An unpinned file.
    pub fn file(path: impl Into<PathBuf>) -> Self {
        Self::File {
            path: path.into(),
            sha256: None,
        }
    }
}

/// What the host knows about a loaded plugin.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PluginInfo {
    /// `builtin:<name>` or the file's path.
    pub name: String,
    /// The world it implements.
    pub world: World,
    /// The contract version it was built for.
    pub version: Version,
    /// The sha256 of its bytes, hex.
    pub sha256: String,
    /// Its size in bytes.
    pub size: usize,
    /// Everything it imports (all provided by the host).
    pub imports: Vec<String>,
    /// Everything it exports.
    pub exports: Vec<String>,
}

impl std::fmt::Display for PluginInfo {
    /// What `orchestrator plugin check` prints: one field a line, the
    /// imports one a line, and a note when a newer contract exists.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "plugin:  {}", self.name)?;
        writeln!(f, "world:   {}", self.world)?;
        writeln!(f, "version: {}", self.version)?;
        writeln!(f, "sha256:  {}", self.sha256)?;
        writeln!(f, "size:    {} bytes", self.size)?;
        writeln!(f, "exports: {}", self.exports.join(", "))?;
        writeln!(f, "imports:")?;
        for import in &self.imports {
            writeln!(f, "  {import}")?;
        }
        let latest = self.world.latest();
        if self.version < latest {
            let gains = if self.version < Version::V0_2_0 {
                "the cluster as a host resource (queries, packed nodes), much faster at scale"
            } else {
                "the server's start rank by rank (stages, stalls, the last failed start)"
            };
            writeln!(
                f,
                "note:    contract {latest} exists: rebuild with the current SDK for {gains}; this {} plugin keeps running as it is",
                self.version
            )?;
        }
        Ok(())
    }
}

/// Increments the engine's epoch while any call is running, and sleeps
/// (parked) when none is, so an idle orchestrator costs no CPU.
struct EpochTicker {
    engine: Engine,
    active: AtomicUsize,
    thread: std::sync::OnceLock<Thread>,
}

/// How often the epoch advances while a call runs.
const TICK: Duration = Duration::from_millis(2);

/// Fuel (about one unit per WebAssembly instruction) per millisecond of
/// CPU budget. Calibrated on the project's 2-core reference VM: the
/// endless-loop test guest burned 5.3 million a millisecond on an
/// unloaded core (2026-11-27) (`cargo test -p orchestrator-policy-host --release --
/// --ignored calibrate_fuel` prints the rate on any machine).
pub const FUEL_PER_MS: u64 = FUEL_PER_MS_CALIBRATED;
const FUEL_PER_MS_CALIBRATED: u64 = 5_000_000;

/// Most bytes a plugin may hand the host in one call (a log record, an
/// answer): wasmtime's per-call copy limit ("hostcall fuel").
pub const HOSTCALL_BYTES: usize = 4 * 1024 * 1024;

/// The wall-clock backstop for a call with CPU budget `budget`.
fn backstop(budget: Duration) -> Duration {
    (budget * 10).max(Duration::from_secs(1))
}

impl EpochTicker {
    fn start(engine: Engine) -> Result<Arc<Self>, PluginError> {
        let ticker = Arc::new(Self {
            engine,
            active: AtomicUsize::new(0),
            thread: std::sync::OnceLock::new(),
        });
        let weak: Weak<Self> = Arc::downgrade(&ticker);
        let handle = std::thread::Builder::new()
            .name("plugin-epoch".into())
            .spawn(move || {
                loop {
                    let Some(ticker) = weak.upgrade() else { return };
                    if ticker.active.load(Ordering::Acquire) == 0 {
                        drop(ticker);
                        std::thread::park_timeout(Duration::from_secs(5));
                        continue;
                    }
                    drop(ticker);
                    std::thread::sleep(TICK);
                    if let Some(ticker) = weak.upgrade() {
                        ticker.engine.increment_epoch();
                    }
                }
            })
            .map_err(|e| PluginError::Engine(format!("cannot start the epoch thread: {e}")))?;
        let _ = ticker.thread.set(handle.thread().clone());
        Ok(ticker)
    }

    /// Marks a call as running until the guard drops.
    fn enter(&self) -> ActiveCall<'_> {
        if self.active.fetch_add(1, Ordering::AcqRel) == 0
            && let Some(t) = self.thread.get()
        {
            t.unpark();
        }
        ActiveCall(self)
    }
}

struct ActiveCall<'a>(&'a EpochTicker);

impl Drop for ActiveCall<'_> {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The shared part of the host: engine, linker, limits.
struct Shared {
    engine: Engine,
    linker: Linker<State>,
    ticker: Arc<EpochTicker>,
    config: HostConfig,
    /// Epoch ticks a call may run (the wall-clock backstop).
    deadline_ticks: u64,
    /// Fuel a call may burn (the CPU budget).
    fuel: u64,
    /// Identifies the engine's settings in cache keys.
    engine_key: String,
}

/// Loads and checks plugins. Cheap to clone; share one per process.
#[derive(Clone)]
pub struct PolicyHost {
    shared: Arc<Shared>,
}

impl PolicyHost {
    /// Sets up the engine, the linker and the epoch thread.
    pub fn new(config: HostConfig) -> Result<Self, PluginError> {
        let mut wasm_config = Config::new();
        wasm_config
            .wasm_component_model(true)
            .epoch_interruption(true)
            .consume_fuel(true)
            .max_wasm_stack(512 * 1024);
        let engine = Engine::new(&wasm_config)
            .map_err(|e| PluginError::Engine(format!("cannot create the engine: {e}")))?;
        let mut linker: Linker<State> = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)
            .map_err(|e| PluginError::Engine(format!("cannot link WASI: {e}")))?;
        v0_1::bindings::log::add_to_linker::<State, HasSelf<State>>(&mut linker, |s| s)
            .and_then(|()| v0_1::wire::add_to_linker::<State, HasSelf<State>>(&mut linker, |s| s))
            .and_then(|()| {
                v0_2::bindings::Host_::add_to_linker::<State, HasSelf<State>>(&mut linker, |s| s)
            })
            .map_err(|e| PluginError::Engine(format!("cannot link the policy imports: {e}")))?;
        let ticker = EpochTicker::start(engine.clone())?;
        let wall = backstop(config.call_timeout);
        let ticks = wall.as_nanos().div_ceil(TICK.as_nanos()) as u64 + 1;
        let fuel = (config.call_timeout.as_micros() as u64)
            .saturating_mul(FUEL_PER_MS)
            .div_ceil(1000)
            .max(1);
        let engine_key = cache::engine_key(&engine);
        Ok(Self {
            shared: Arc::new(Shared {
                engine,
                linker,
                ticker,
                config,
                deadline_ticks: ticks,
                fuel,
                engine_key,
            }),
        })
    }

    /// The host's configuration.
    pub fn config(&self) -> &HostConfig {
        &self.shared.config
    }

    /// Reads a plugin's bytes and its display name.
    fn read(&self, source: &PluginSource) -> Result<(String, Vec<u8>), PluginError> {
        match source {
            PluginSource::Embedded { name, bytes } => Ok((name.clone(), bytes.to_vec())),
            PluginSource::File { path, sha256 } => {
                self.read_file(path.display().to_string(), path, sha256.as_deref())
            }
            PluginSource::Pulled { name, path, sha256 } => {
                self.read_file(name.clone(), path, Some(sha256))
            }
        }
    }

    /// A file's bytes, checked against `sha256` when given.
    fn read_file(
        &self,
        name: String,
        path: &std::path::Path,
        sha256: Option<&str>,
    ) -> Result<(String, Vec<u8>), PluginError> {
        let bytes = std::fs::read(path).map_err(|error| PluginError::Read {
            path: path.to_path_buf(),
            error,
        })?;
        if let Some(expected) = sha256 {
            let actual = hex::encode(Sha256::digest(&bytes));
            if !actual.eq_ignore_ascii_case(expected.trim()) {
                return Err(PluginError::DigestMismatch {
                    plugin: name,
                    expected: expected.trim().to_lowercase(),
                    actual,
                });
            }
        }
        Ok((name, bytes))
    }

    /// Compiles `bytes` (or loads the cached compilation) and checks what
    /// the component exports and imports.
    fn compile_checked(
        &self,
        name: &str,
        bytes: &[u8],
        want: Option<World>,
    ) -> Result<(Component, PluginInfo), PluginError> {
        inspect::check_header(name, bytes)?;
        let sha256 = hex::encode(Sha256::digest(bytes));
        let component = cache::compile(&self.shared, name, bytes, &sha256)?;
        let (exports, imports) = inspect::names(&self.shared.engine, &component);
        let (world, version) = inspect::world_of(name, &exports, &imports, want)?;
        Ok((
            component,
            PluginInfo {
                name: name.to_string(),
                world,
                version,
                sha256,
                size: bytes.len(),
                imports,
                exports,
            },
        ))
    }

    /// Checks a plugin without running any of its code: what
    /// `orchestrator plugin check` prints.
    pub fn inspect(&self, source: &PluginSource) -> Result<PluginInfo, PluginError> {
        let (name, bytes) = self.read(source)?;
        let (component, info) = self.compile_checked(&name, &bytes, None)?;
        // Linking proves every import is satisfiable.
        self.shared
            .linker
            .instantiate_pre(&component)
            .map_err(|e| PluginError::UnsupportedImports {
                plugin: name.clone(),
                imports: e.to_string(),
            })?;
        Ok(info)
    }

    /// Loads a readiness policy: pin, header, world, version and imports
    /// are checked; nothing of the plugin runs until its first call (or
    /// [`ReadinessPolicy::instantiate`]).
    pub fn readiness(&self, source: &PluginSource) -> Result<ReadinessPolicy, PluginError> {
        self.load(World::Readiness, source).map(ReadinessPolicy)
    }

    /// Loads a launch policy, checked as [`readiness`](Self::readiness).
    pub fn launch(&self, source: &PluginSource) -> Result<LaunchPolicy, PluginError> {
        self.load(World::Launch, source).map(LaunchPolicy)
    }

    /// Loads a health policy, checked as [`readiness`](Self::readiness).
    pub fn health(&self, source: &PluginSource) -> Result<HealthPolicy, PluginError> {
        self.load(World::Health, source).map(HealthPolicy)
    }

    /// Loads a node-health policy (contract 0.2.0 and later).
    pub fn node_health(&self, source: &PluginSource) -> Result<NodeHealthPolicy, PluginError> {
        self.load(World::NodeHealth, source).map(NodeHealthPolicy)
    }

    /// Loads a scale policy (contract 0.2.0 and later).
    pub fn scale(&self, source: &PluginSource) -> Result<ScalePolicy, PluginError> {
        self.load(World::Scale, source).map(ScalePolicy)
    }

    fn load(&self, world: World, source: &PluginSource) -> Result<Plugin, PluginError> {
        let (name, bytes) = self.read(source)?;
        self.load_bytes(world, &name, &bytes)
    }

    fn load_bytes(&self, world: World, name: &str, bytes: &[u8]) -> Result<Plugin, PluginError> {
        let (component, info) = self.compile_checked(name, bytes, Some(world))?;
        let pre = self
            .shared
            .linker
            .instantiate_pre(&component)
            .map_err(|e| PluginError::UnsupportedImports {
                plugin: name.to_string(),
                imports: e.to_string(),
            })?;
        let version = info.version;
        let export = exports::find(pre.component(), world, version).map_err(|e| {
            PluginError::WrongWorld {
                plugin: name.to_string(),
                expected: format!("the {} policy", world.name()),
                expected_export: world.export_name(version),
                found: format!("an export of the wrong shape ({e})"),
            }
        })?;
        Ok(Plugin {
            shared: Arc::clone(&self.shared),
            name: Arc::from(info.name.as_str()),
            info,
            pre,
            world,
            version,
            export,
            live: None,
        })
    }
}

struct Live {
    store: Store<State>,
    /// The world's one function.
    func: wasmtime::component::Func,
}

/// A loaded plugin of one world, behind one of the typed handles. Calls
/// are synchronous and short (bounded by the host's deadline); a failed
/// call drops the instance and the next call instantiates afresh.
struct Plugin {
    shared: Arc<Shared>,
    name: Arc<str>,
    info: PluginInfo,
    pre: InstancePre<State>,
    world: World,
    version: Version,
    export: wasmtime::component::ComponentExportIndex,
    live: Option<Live>,
}

impl Plugin {
    fn ensure_live(&mut self) -> Result<&mut Live, PluginError> {
        let mut attempt = 1;
        while self.live.is_none() {
            let state = State::new(
                Arc::clone(&self.name),
                self.shared.config.memory_limit_bytes,
            );
            let mut store = Store::new(&self.shared.engine, state);
            store.limiter(|s| &mut s.memory);
            store.set_epoch_deadline(self.shared.deadline_ticks);
            store.epoch_deadline_trap();
            store.set_hostcall_fuel(HOSTCALL_BYTES);
            if let Err(e) = store.set_fuel(self.shared.fuel) {
                return Err(PluginError::Engine(format!(
                    "cannot set the CPU budget: {e}"
                )));
            }
            let result = {
                let _active = self.shared.ticker.enter();
                self.pre.instantiate(&mut store).and_then(|instance| {
                    exports::load(
                        &mut store,
                        &instance,
                        &self.export,
                        self.world,
                        self.version,
                    )
                })
            };
            match result {
                Ok(func) => self.live = Some(Live { store, func }),
                Err(e) if attempt < INSTANTIATE_ATTEMPTS && is_transient_image_error(&e) => {
                    tracing::warn!(
                        plugin = %self.name,
                        attempt,
                        "the kernel refused to seal the plugin's memory image ({e:#}); trying again"
                    );
                    std::thread::sleep(Duration::from_millis(20 << attempt));
                    attempt += 1;
                }
                Err(e) => return Err(classify(&self.shared, &self.name, e, store.data())),
            }
        }
        self.live
            .as_mut()
            .ok_or_else(|| PluginError::Engine("instance vanished".to_string()))
    }

    /// Runs one call on the live instance, with the deadline and the
    /// memory cap, and turns any failure into a [`PluginError`].
    fn call<R>(
        &mut self,
        f: impl FnOnce(&mut Store<State>, &wasmtime::component::Func, Version) -> wasmtime::Result<R>,
    ) -> Result<R, PluginError> {
        let version = self.version;
        let shared = Arc::clone(&self.shared);
        let name = Arc::clone(&self.name);
        let live = self.ensure_live()?;
        live.store.data_mut().begin_call();
        live.store.set_epoch_deadline(shared.deadline_ticks);
        if let Err(e) = live.store.set_fuel(shared.fuel) {
            return Err(PluginError::Engine(format!(
                "cannot set the CPU budget: {e}"
            )));
        }
        let result = {
            let _active = shared.ticker.enter();
            f(&mut live.store, &live.func, version)
        };
        let state = live.store.data_mut();
        if let Some(text) = state.take_new_output() {
            tracing::debug!(plugin = %name, "plugin output: {}", text.trim_end());
        }
        if state.logs_dropped > 0 {
            tracing::warn!(plugin = %name, dropped = state.logs_dropped, "plugin logged too much; records dropped");
        }
        match result {
            Ok(value) => {
                if state.output_seen > sandbox::OUTPUT_CAPACITY / 2 {
                    self.live = None;
                }
                Ok(value)
            }
            Err(e) => {
                let err = classify(&shared, &name, e, live.store.data());
                self.live = None;
                Err(err)
            }
        }
    }
}

/// The methods every typed handle has.
macro_rules! handle {
    ($name:ident) => {
        impl $name {
            /// What the host knows about this plugin.
            pub fn info(&self) -> &PluginInfo {
                &self.0.info
            }

            /// The plugin's name (`builtin:<name>` or its path).
            pub fn name(&self) -> &str {
                &self.0.name
            }

            /// Drops the current instance; the next call instantiates afresh.
            pub fn reset(&mut self) {
                self.0.live = None;
            }

            /// Instantiates the plugin now (otherwise the first call does),
            /// so a fault in its start-up shows at once and the first call
            /// pays no set-up.
            pub fn instantiate(&mut self) -> Result<(), PluginError> {
                self.0.live = None;
                self.0.ensure_live()?;
                Ok(())
            }
        }

        impl std::fmt::Debug for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($name))
                    .field("info", &self.0.info)
                    .finish()
            }
        }
    };
}

/// A loaded readiness policy (`readiness-policy.check`).
pub struct ReadinessPolicy(Plugin);
handle!(ReadinessPolicy);

impl ReadinessPolicy {
    /// Asks whether the cluster is ready. A 0.2.0 plugin queries a copy of
    /// the snapshot; [`check_shared`](Self::check_shared) avoids the copy.
    pub fn check(
        &mut self,
        snapshot: &ClusterSnapshot,
        params: &[KeyValue],
    ) -> Result<Readiness, PluginError> {
        self.0.call(|store, func, version| match version {
            Version::V0_1_0 => v0_1::check(store, func, snapshot, params),
            Version::V0_2_0 => v0_2::check(store, func, &Arc::new(snapshot.clone()), params),
            Version::V0_3_0 => Err(absent(World::Readiness, version)),
        })
    }

    /// Asks whether the cluster is ready, lending the snapshot to a 0.2.0
    /// plugin without copying it: what the wait phase calls on every
    /// membership change.
    pub fn check_shared(
        &mut self,
        snapshot: &Arc<ClusterSnapshot>,
        params: &[KeyValue],
    ) -> Result<Readiness, PluginError> {
        self.0.call(|store, func, version| match version {
            Version::V0_1_0 => v0_1::check(store, func, snapshot, params),
            Version::V0_2_0 => v0_2::check(store, func, snapshot, params),
            Version::V0_3_0 => Err(absent(World::Readiness, version)),
        })
    }
}

/// A loaded launch policy (`launch-policy.plan`).
pub struct LaunchPolicy(Plugin);
handle!(LaunchPolicy);

impl LaunchPolicy {
    /// Asks for the serving process's argv and environment. A plan that
    /// cannot be executed as given ([`LaunchPlan::validate`]) is the
    /// plugin's failure, [`PluginError::InvalidPlan`].
    pub fn plan(
        &mut self,
        request: &LaunchRequest,
        params: &[KeyValue],
    ) -> Result<Result<LaunchPlan, LaunchError>, PluginError> {
        let answer = self.0.call(|store, func, version| match version {
            Version::V0_1_0 => v0_1::plan(store, func, request, params),
            Version::V0_2_0 => v0_2::plan(store, func, request, params),
            Version::V0_3_0 => Err(absent(World::Launch, version)),
        })?;
        if let Ok(plan) = &answer
            && let Err(invalid) = plan.validate()
        {
            return Err(PluginError::InvalidPlan {
                plugin: self.0.name.to_string(),
                field: invalid.field,
                problem: invalid.problem,
            });
        }
        Ok(answer)
    }
}

/// A loaded health policy (`health-policy.evaluate`).
pub struct HealthPolicy(Plugin);
handle!(HealthPolicy);

impl HealthPolicy {
    /// Asks what to do about the service's health.
    pub fn evaluate(
        &mut self,
        snapshot: &HealthSnapshot,
        params: &[KeyValue],
    ) -> Result<HealthVerdict, PluginError> {
        self.0.call(|store, func, version| match version {
            Version::V0_1_0 => v0_1::evaluate(store, func, snapshot, params),
            Version::V0_2_0 => v0_2::evaluate(store, func, snapshot, params),
            Version::V0_3_0 => v0_3::evaluate(store, func, snapshot, params),
        })
    }
}

/// A loaded node-health policy (`node-health-policy.judge`).
pub struct NodeHealthPolicy(Plugin);
handle!(NodeHealthPolicy);

impl NodeHealthPolicy {
    /// Judges one round of this node's readings.
    pub fn judge(
        &mut self,
        readings: &NodeReadings,
        params: &[KeyValue],
    ) -> Result<NodeVerdict, PluginError> {
        self.0.call(|store, func, version| match version {
            Version::V0_2_0 => v0_2::judge(store, func, readings, params),
            Version::V0_1_0 | Version::V0_3_0 => Err(absent(World::NodeHealth, version)),
        })
    }
}

/// A loaded scale policy (`scale-policy.recommend`).
pub struct ScalePolicy(Plugin);
handle!(ScalePolicy);

impl ScalePolicy {
    /// Recommends the replicas for one window of load. The answer is kept
    /// within the input's bounds ([`ScaleRecommendation::bounded`]).
    pub fn recommend(
        &mut self,
        input: &ScaleInput,
        params: &[KeyValue],
    ) -> Result<ScaleRecommendation, PluginError> {
        let (min, max) = (input.min_replicas, input.max_replicas);
        self.0
            .call(|store, func, version| match version {
                Version::V0_2_0 => v0_2::recommend(store, func, input, params),
                Version::V0_1_0 | Version::V0_3_0 => Err(absent(World::Scale, version)),
            })
            .map(|r| r.bounded(min, max))
    }
}

/// The error for a call to a world that contract `version` does not have
/// (the loader refuses such a plugin, so only a host bug reaches it).
fn absent(world: World, version: Version) -> wasmtime::Error {
    wasmtime::format_err!("contract {version} has no {world} world")
}

/// Turns a wasmtime failure into the error that says what happened.
/// How many times instantiation is tried when it fails for
/// [`is_transient_image_error`].
const INSTANTIATE_ATTEMPTS: u32 = 4;

/// Whether instantiation failed because the kernel would not seal the
/// memfd wasmtime builds a module's initial memory in. `F_ADD_SEALS` with
/// `F_SEAL_WRITE` answers EBUSY while the freshly written pages still
/// carry extra references (a per-CPU LRU batch on another core holds
/// them); a new memfd a moment later seals. wasmtime does not cache the
/// failure, so instantiating again builds the image again.
#[cfg(target_os = "linux")]
fn is_transient_image_error(err: &wasmtime::Error) -> bool {
    err.chain().any(|cause| {
        matches!(
            cause.downcast_ref::<memfd::Error>(),
            Some(memfd::Error::AddSeals(_))
        )
    })
}

#[cfg(not(target_os = "linux"))]
fn is_transient_image_error(_err: &wasmtime::Error) -> bool {
    false
}

fn classify(shared: &Shared, plugin: &str, err: wasmtime::Error, state: &State) -> PluginError {
    let stderr = Stderr(state.output_tail(4096));
    let plugin = plugin.to_string();
    if let Some(requested) = state.memory.denied {
        return PluginError::MemoryLimit {
            plugin,
            limit: shared.config.memory_limit_bytes,
            requested,
            stderr,
        };
    }
    let trap = err.downcast_ref::<Trap>().copied();
    if trap == Some(Trap::OutOfFuel) {
        return PluginError::CpuBudget {
            plugin,
            limit_ms: shared.config.call_timeout.as_millis() as u64,
            fuel: shared.fuel,
            stderr,
        };
    }
    if trap == Some(Trap::Interrupt) {
        return PluginError::Timeout {
            plugin,
            limit_ms: backstop(shared.config.call_timeout).as_millis() as u64,
            stderr,
        };
    }
    if let Some(exit) = err.downcast_ref::<wasmtime_wasi::I32Exit>() {
        return PluginError::Exited {
            plugin,
            status: error::ExitStatus(exit.0),
            stderr,
        };
    }
    if err
        .chain()
        .any(|cause| cause.to_string().contains("fuel allocated for hostcalls"))
    {
        return PluginError::CopyLimit {
            plugin,
            limit: HOSTCALL_BYTES,
            stderr,
        };
    }
    if stderr.0.contains("panicked at") {
        return PluginError::Panic { plugin, stderr };
    }
    let reason = match trap {
        Some(t) => format!("wasm trap: {t}"),
        None => format!("{err}"),
    };
    PluginError::Trap {
        plugin,
        reason,
        stderr,
    }
}

/// Times `f`, for benchmarks and logs.
pub fn timed<R>(f: impl FnOnce() -> R) -> (R, Duration) {
    let start = Instant::now();
    let r = f();
    (r, start.elapsed())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_os = "linux")]
    #[test]
    fn only_a_refused_memfd_seal_is_retried() {
        let busy = std::io::Error::from_raw_os_error(16);
        let sealing = wasmtime::Error::from(memfd::Error::AddSeals(busy))
            .context("cannot instantiate the component");
        assert!(is_transient_image_error(&sealing));
        let creating =
            wasmtime::Error::from(memfd::Error::Create(std::io::Error::from_raw_os_error(24)));
        assert!(!is_transient_image_error(&creating));
        let trap = wasmtime::Error::from(Trap::OutOfFuel);
        assert!(!is_transient_image_error(&trap));
    }
}
