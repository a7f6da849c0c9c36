//! A test-only stand-in for NVIDIA's `libnvidia-ml.so.1`: a shared library
//! exporting the NVML functions the node probe calls, with NVML's C
//! signatures, answering from a JSON file whose path is in
//! `NVML_STANDIN_STATE` (re-read whenever it changes). The probe loads it
//! through the same dynamic loading path as the driver's library
//! (`ORCHESTRATOR_NVML_LIBRARY=<path of this .so>`), so a test injects GPU
//! faults (XIDs, ECC errors, a lost or missing GPU, throttling) by
//! rewriting the file.
//!
//! The file (every field optional):
//!
//! ```json
//! {"driver": "580.00-standin",
//!  "gpus": [{"name": "Stand-in H100", "memory_total": 85520809984,
//!            "ecc": true, "ecc_uncorrected": 0, "remap_pending": false,
//!            "remap_failed": false, "temperature": 35, "throttle": 0,
//!            "power_mw": 80000, "lost": false}],
//!  "xids": [{"gpu": 0, "xid": 79}]}
//! ```
//!
//! `xids` are delivered in order by `nvmlEventSetWait_v2`, each once, to
//! the event sets created after the library was loaded.
#![allow(unsafe_code, missing_docs, non_snake_case, clippy::missing_safety_doc)]

use serde::Deserialize;
use std::ffi::{c_char, c_uint, c_ulonglong};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

type Return = c_uint;
const SUCCESS: Return = 0;
const INVALID_ARGUMENT: Return = 2;
const NOT_SUPPORTED: Return = 3;
const INSUFFICIENT_SIZE: Return = 7;
const TIMEOUT: Return = 10;
const GPU_IS_LOST: Return = 15;
const UNKNOWN: Return = 999;

/// `nvmlEventTypeXidCriticalError`.
const XID_CRITICAL: c_ulonglong = 8;

#[derive(Deserialize, Default, Clone)]
#[serde(default)]
struct Gpu {
    name: Option<String>,
    uuid: Option<String>,
    memory_total: Option<u64>,
    memory_used: u64,
    ecc: Option<bool>,
    ecc_uncorrected: u64,
    remap_pending: bool,
    remap_failed: bool,
    temperature: Option<u32>,
    throttle: u64,
    power_mw: Option<u32>,
    lost: bool,
}

#[derive(Deserialize, Default, Clone)]
#[serde(default)]
struct Xid {
    gpu: u32,
    xid: u64,
}

#[derive(Deserialize, Default, Clone)]
#[serde(default)]
struct State {
    driver: Option<String>,
    init_error: bool,
    gpus: Vec<Gpu>,
    xids: Vec<Xid>,
}

struct Cache {
    modified: Option<SystemTime>,
    state: State,
    /// XIDs delivered so far.
    delivered: usize,
}

static CACHE: Mutex<Option<Cache>> = Mutex::new(None);

/// The state file's current content (re-read when its mtime changes).
fn with_state<R>(f: impl FnOnce(&State, &mut usize) -> R) -> R {
    let path = std::env::var_os("NVML_STANDIN_STATE");
    let modified = path
        .as_ref()
        .and_then(|p| std::fs::metadata(p).ok())
        .and_then(|m| m.modified().ok());
    let mut guard = match CACHE.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    };
    let stale = guard.as_ref().is_none_or(|c| c.modified != modified);
    if stale {
        let state = path
            .as_ref()
            .and_then(|p| std::fs::read(p).ok())
            .and_then(|b| serde_json::from_slice::<State>(&b).ok())
            .unwrap_or_default();
        let delivered = guard.as_ref().map_or(0, |c| c.delivered);
        *guard = Some(Cache {
            modified,
            state,
            delivered,
        });
    }
    match guard.as_mut() {
        Some(c) => f(&c.state, &mut c.delivered),
        None => f(&State::default(), &mut 0),
    }
}

/// Device handles are the index plus one, as a pointer.
fn index_of(device: *mut u8) -> Option<usize> {
    (device as usize).checked_sub(1)
}

fn with_gpu(device: *mut u8, f: impl FnOnce(&Gpu) -> Return) -> Return {
    let Some(i) = index_of(device) else {
        return INVALID_ARGUMENT;
    };
    with_state(|s, _| match s.gpus.get(i) {
        None => INVALID_ARGUMENT,
        Some(g) if g.lost => GPU_IS_LOST,
        Some(g) => f(g),
    })
}

unsafe fn write_str(text: &str, out: *mut c_char, len: c_uint) -> Return {
    if out.is_null() {
        return INVALID_ARGUMENT;
    }
    let bytes = text.as_bytes();
    if bytes.len() + 1 > len as usize {
        return INSUFFICIENT_SIZE;
    }
    unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr().cast::<c_char>(), out, bytes.len());
        *out.add(bytes.len()) = 0;
    }
    SUCCESS
}

unsafe fn put<T>(out: *mut T, value: T) -> Return {
    if out.is_null() {
        return INVALID_ARGUMENT;
    }
    unsafe { *out = value };
    SUCCESS
}

#[unsafe(no_mangle)]
pub extern "C" fn nvmlInit_v2() -> Return {
    with_state(|s, _| if s.init_error { UNKNOWN } else { SUCCESS })
}

#[unsafe(no_mangle)]
pub extern "C" fn nvmlInitWithFlags(_flags: c_uint) -> Return {
    nvmlInit_v2()
}

#[unsafe(no_mangle)]
pub extern "C" fn nvmlShutdown() -> Return {
    SUCCESS
}

#[unsafe(no_mangle)]
pub extern "C" fn nvmlErrorString(_result: Return) -> *const c_char {
    c"NVML stand-in error".as_ptr()
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlSystemGetDriverVersion(out: *mut c_char, len: c_uint) -> Return {
    let driver = with_state(|s, _| s.driver.clone().unwrap_or_else(|| "580.00-standin".into()));
    unsafe { write_str(&driver, out, len) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetCount_v2(count: *mut c_uint) -> Return {
    let n = with_state(|s, _| s.gpus.len() as c_uint);
    unsafe { put(count, n) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetHandleByIndex_v2(
    index: c_uint,
    device: *mut *mut u8,
) -> Return {
    let n = with_state(|s, _| s.gpus.len());
    if index as usize >= n {
        return INVALID_ARGUMENT;
    }
    unsafe { put(device, (index as usize + 1) as *mut u8) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetIndex(device: *mut u8, index: *mut c_uint) -> Return {
    match index_of(device) {
        Some(i) => unsafe { put(index, i as c_uint) },
        None => INVALID_ARGUMENT,
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetName(
    device: *mut u8,
    out: *mut c_char,
    len: c_uint,
) -> Return {
    let name = match with_name(device, |g, _| {
        g.name.clone().unwrap_or_else(|| "NVIDIA Stand-in".into())
    }) {
        Ok(n) => n,
        Err(r) => return r,
    };
    unsafe { write_str(&name, out, len) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetUUID(
    device: *mut u8,
    out: *mut c_char,
    len: c_uint,
) -> Return {
    let uuid = match with_name(device, |g, i| {
        g.uuid
            .clone()
            .unwrap_or_else(|| format!("GPU-00000000-0000-0000-0000-{i:012}"))
    }) {
        Ok(u) => u,
        Err(r) => return r,
    };
    unsafe { write_str(&uuid, out, len) }
}

fn with_name(device: *mut u8, f: impl FnOnce(&Gpu, usize) -> String) -> Result<String, Return> {
    let i = index_of(device).ok_or(INVALID_ARGUMENT)?;
    with_state(|s, _| match s.gpus.get(i) {
        None => Err(INVALID_ARGUMENT),
        Some(g) if g.lost => Err(GPU_IS_LOST),
        Some(g) => Ok(f(g, i)),
    })
}

#[repr(C)]
pub struct MemoryV2 {
    version: c_uint,
    total: c_ulonglong,
    reserved: c_ulonglong,
    free: c_ulonglong,
    used: c_ulonglong,
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetMemoryInfo_v2(
    device: *mut u8,
    info: *mut MemoryV2,
) -> Return {
    with_gpu(device, |g| {
        if info.is_null() {
            return INVALID_ARGUMENT;
        }
        let total = g.memory_total.unwrap_or(85_520_809_984);
        unsafe {
            (*info).total = total;
            (*info).reserved = 0;
            (*info).used = g.memory_used;
            (*info).free = total.saturating_sub(g.memory_used);
        }
        SUCCESS
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetEccMode(
    device: *mut u8,
    current: *mut c_uint,
    pending: *mut c_uint,
) -> Return {
    with_gpu(device, |g| match g.ecc {
        None => NOT_SUPPORTED,
        Some(on) => unsafe {
            let r = put(current, c_uint::from(on));
            if r != SUCCESS {
                return r;
            }
            put(pending, c_uint::from(on))
        },
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetTotalEccErrors(
    device: *mut u8,
    error_type: c_uint,
    _counter: c_uint,
    count: *mut c_ulonglong,
) -> Return {
    with_gpu(device, |g| {
        // 1 = NVML_MEMORY_ERROR_TYPE_UNCORRECTED
        let n = if error_type == 1 {
            g.ecc_uncorrected
        } else {
            0
        };
        unsafe { put(count, n) }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetRemappedRows(
    device: *mut u8,
    corrected: *mut c_uint,
    uncorrected: *mut c_uint,
    pending: *mut c_uint,
    failed: *mut c_uint,
) -> Return {
    with_gpu(device, |g| unsafe {
        for r in [
            put(corrected, 0),
            put(uncorrected, 0),
            put(pending, c_uint::from(g.remap_pending)),
            put(failed, c_uint::from(g.remap_failed)),
        ] {
            if r != SUCCESS {
                return r;
            }
        }
        SUCCESS
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetTemperature(
    device: *mut u8,
    _sensor: c_uint,
    temp: *mut c_uint,
) -> Return {
    with_gpu(device, |g| unsafe {
        put(temp, g.temperature.unwrap_or(35))
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetCurrentClocksThrottleReasons(
    device: *mut u8,
    reasons: *mut c_ulonglong,
) -> Return {
    with_gpu(device, |g| unsafe { put(reasons, g.throttle) })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetPowerUsage(device: *mut u8, mw: *mut c_uint) -> Return {
    with_gpu(device, |g| match g.power_mw {
        None => NOT_SUPPORTED,
        Some(p) => unsafe { put(mw, p) },
    })
}

/// Event sets are never dereferenced: one shared cursor serves them all.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlEventSetCreate(set: *mut *mut u8) -> Return {
    unsafe { put(set, std::ptr::dangling_mut::<u8>()) }
}

#[unsafe(no_mangle)]
pub extern "C" fn nvmlDeviceRegisterEvents(
    device: *mut u8,
    events: c_ulonglong,
    _set: *mut u8,
) -> Return {
    if events & XID_CRITICAL == 0 {
        return NOT_SUPPORTED;
    }
    with_gpu(device, |_| SUCCESS)
}

#[repr(C)]
pub struct EventData {
    device: *mut u8,
    event_type: c_ulonglong,
    event_data: c_ulonglong,
    gpu_instance_id: c_uint,
    compute_instance_id: c_uint,
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlEventSetWait_v2(
    _set: *mut u8,
    data: *mut EventData,
    timeout_ms: c_uint,
) -> Return {
    if data.is_null() {
        return INVALID_ARGUMENT;
    }
    let until = Instant::now() + Duration::from_millis(u64::from(timeout_ms));
    loop {
        let next = with_state(|s, delivered| {
            let xid = s.xids.get(*delivered).cloned();
            if xid.is_some() {
                *delivered += 1;
            }
            xid
        });
        if let Some(x) = next {
            unsafe {
                (*data).device = (x.gpu as usize + 1) as *mut u8;
                (*data).event_type = XID_CRITICAL;
                (*data).event_data = x.xid;
                (*data).gpu_instance_id = 0;
                (*data).compute_instance_id = 0;
            }
            return SUCCESS;
        }
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return TIMEOUT;
        }
        std::thread::sleep(left.min(Duration::from_millis(10)));
    }
}

#[unsafe(no_mangle)]
pub extern "C" fn nvmlEventSetFree(_set: *mut u8) -> Return {
    SUCCESS
}
