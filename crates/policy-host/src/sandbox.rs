//! The per-instance store state: an empty WASI context, a memory cap, and
//! the `log` import.

use crate::v0_1::bindings::log;
use crate::v0_1::wire::KeyValue;
use crate::v0_2::bindings::log as log_v0_2;
use crate::v0_2::bindings::types::KeyValue as KeyValueV0_2;
use std::sync::Arc;
use std::time::Duration;
use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{HostMonotonicClock, HostWallClock, WasiCtx, WasiCtxView, WasiView};

/// Bytes of plugin stdout+stderr kept per instance; the instance is
/// recycled once half of it is used, so a chatty plugin never fills it.
pub(crate) const OUTPUT_CAPACITY: usize = 64 * 1024;
/// Log records a plugin may write per call; the rest are counted, not kept.
const LOG_RECORDS_PER_CALL: u32 = 64;
/// Longest message kept from a plugin's log record.
const LOG_MESSAGE_MAX: usize = 2048;
/// Most fields kept from a plugin's log record.
const LOG_FIELDS_MAX: usize = 16;

/// A clock that always reads zero: plugins get no clock. Every duration a
/// policy may judge by is in its input.
struct FrozenClock;

impl HostWallClock for FrozenClock {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }
    fn now(&self) -> Duration {
        Duration::ZERO
    }
}

impl HostMonotonicClock for FrozenClock {
    fn resolution(&self) -> u64 {
        1_000_000_000
    }
    fn now(&self) -> u64 {
        0
    }
}

/// Caps the total linear memory of one instance and remembers a refusal,
/// so a failed allocation is reported as what it is.
pub(crate) struct MemoryCap {
    limit: usize,
    used: usize,
    pub(crate) denied: Option<usize>,
}

impl ResourceLimiter for MemoryCap {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let after = self.used.saturating_sub(current).saturating_add(desired);
        if after > self.limit {
            self.denied = Some(after);
            return Ok(false);
        }
        self.used = after;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

/// Everything one plugin instance's store holds.
pub(crate) struct State {
    wasi: WasiCtx,
    pub(crate) table: ResourceTable,
    pub(crate) memory: MemoryCap,
    pub(crate) plugin: Arc<str>,
    pub(crate) output: MemoryOutputPipe,
    /// Output bytes already forwarded to the log.
    pub(crate) output_seen: usize,
    log_budget: u32,
    pub(crate) logs_dropped: u32,
}

impl State {
    pub(crate) fn new(plugin: Arc<str>, memory_limit: usize) -> Self {
        let output = MemoryOutputPipe::new(OUTPUT_CAPACITY);
        let wasi = WasiCtx::builder()
            .stdout(output.clone())
            .stderr(output.clone())
            .wall_clock(FrozenClock)
            .monotonic_clock(FrozenClock)
            // No network: these are the defaults, stated so a future
            // default cannot open it.
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        Self {
            wasi,
            table: ResourceTable::new(),
            memory: MemoryCap {
                limit: memory_limit,
                used: 0,
                denied: None,
            },
            plugin,
            output,
            output_seen: 0,
            log_budget: LOG_RECORDS_PER_CALL,
            logs_dropped: 0,
        }
    }

    /// Resets the per-call budgets before a call.
    pub(crate) fn begin_call(&mut self) {
        self.log_budget = LOG_RECORDS_PER_CALL;
        self.logs_dropped = 0;
    }

    /// The last `max` bytes of the plugin's output, as text.
    pub(crate) fn output_tail(&self, max: usize) -> String {
        let bytes = self.output.contents();
        let start = bytes.len().saturating_sub(max);
        String::from_utf8_lossy(&bytes[start..]).into_owned()
    }

    /// Output written since the last call to this, for the log.
    pub(crate) fn take_new_output(&mut self) -> Option<String> {
        let bytes = self.output.contents();
        if bytes.len() <= self.output_seen {
            return None;
        }
        let text = String::from_utf8_lossy(&bytes[self.output_seen..]).into_owned();
        self.output_seen = bytes.len();
        Some(text)
    }
}

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

fn truncate(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// A log record's level, whatever the contract version.
#[derive(Clone, Copy)]
enum LogLevel {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

impl State {
    /// Writes one plugin log record, within the call's budget and with
    /// message and fields truncated.
    fn write_log<'a>(
        &mut self,
        level: LogLevel,
        message: &str,
        fields: impl Iterator<Item = (&'a str, &'a str)>,
    ) {
        if self.log_budget == 0 {
            self.logs_dropped += 1;
            return;
        }
        self.log_budget -= 1;
        let message = truncate(message, LOG_MESSAGE_MAX);
        let fields: String = fields
            .take(LOG_FIELDS_MAX)
            .map(|(key, value)| {
                format!(
                    "{}={}",
                    truncate(key, 64),
                    truncate(value, LOG_MESSAGE_MAX / 4)
                )
            })
            .collect::<Vec<_>>()
            .join(" ");
        let plugin = &*self.plugin;
        match level {
            LogLevel::Trace => tracing::trace!(plugin, fields, "{message}"),
            LogLevel::Debug => tracing::debug!(plugin, fields, "{message}"),
            LogLevel::Info => tracing::info!(plugin, fields, "{message}"),
            LogLevel::Warn => tracing::warn!(plugin, fields, "{message}"),
            LogLevel::Error => tracing::error!(plugin, fields, "{message}"),
        }
    }
}

impl log::Host for State {
    fn log(&mut self, level: log::Level, message: String, fields: Vec<KeyValue>) {
        let level = match level {
            log::Level::Trace => LogLevel::Trace,
            log::Level::Debug => LogLevel::Debug,
            log::Level::Info => LogLevel::Info,
            log::Level::Warn => LogLevel::Warn,
            log::Level::Error => LogLevel::Error,
        };
        self.write_log(
            level,
            &message,
            fields.iter().map(|kv| (kv.key.as_str(), kv.value.as_str())),
        );
    }
}

impl log_v0_2::Host for State {
    fn log(
        &mut self,
        level: log_v0_2::Level,
        message: String,
        fields: Vec<KeyValueV0_2>,
    ) -> wasmtime::Result<()> {
        let level = match level {
            log_v0_2::Level::Trace => LogLevel::Trace,
            log_v0_2::Level::Debug => LogLevel::Debug,
            log_v0_2::Level::Info => LogLevel::Info,
            log_v0_2::Level::Warn => LogLevel::Warn,
            log_v0_2::Level::Error => LogLevel::Error,
        };
        self.write_log(
            level,
            &message,
            fields.iter().map(|kv| (kv.key.as_str(), kv.value.as_str())),
        );
        Ok(())
    }
}
