//! The host's readings: free space where Ray writes, `/dev/shm`, memory
//! and memory pressure (PSI), and the raylet's own open-file limit and
//! liveness, all from the kernel (statvfs and `/proc`). Entry point:
//! [`read`].

use orchestrator_domain::NodeReadings;
use std::path::{Path, PathBuf};

/// What to read on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostTarget {
    /// The node's address, copied into the readings.
    pub address: String,
    /// Where Ray writes (its `--temp-dir`, `/tmp/ray` by default).
    pub temp_dir: PathBuf,
    /// The local raylet, when this node runs one.
    pub raylet_pid: Option<i32>,
    /// `/dev/shm` (a parameter for tests).
    pub shm_dir: PathBuf,
    /// `/proc` (a parameter for tests).
    pub proc_dir: PathBuf,
}

impl HostTarget {
    /// The usual paths for a node at `address` writing to `temp_dir`.
    pub fn new(address: impl Into<String>, temp_dir: impl Into<PathBuf>) -> Self {
        Self {
            address: address.into(),
            temp_dir: temp_dir.into(),
            raylet_pid: None,
            shm_dir: PathBuf::from("/dev/shm"),
            proc_dir: PathBuf::from("/proc"),
        }
    }
}

/// The host's readings (GPU fields left empty).
pub fn read(target: &HostTarget) -> NodeReadings {
    let (free, total) = space(&existing_ancestor(&target.temp_dir)).unwrap_or((0, 0));
    let shm = space(&target.shm_dir).map(|(_, total)| total);
    let (available, mem_total) = meminfo(&target.proc_dir);
    let (raylet_alive, raylet_limit) = match target.raylet_pid {
        Some(pid) => {
            let alive = process_alive(&target.proc_dir, pid);
            let limit = if alive {
                open_file_limit(&target.proc_dir, pid)
            } else {
                None
            };
            (Some(alive), limit)
        }
        None => (None, None),
    };
    NodeReadings {
        address: target.address.clone(),
        temp_dir: target.temp_dir.display().to_string(),
        temp_dir_free_bytes: free,
        temp_dir_total_bytes: total,
        shm_total_bytes: shm,
        raylet_open_file_limit: raylet_limit,
        memory_available_bytes: available,
        memory_total_bytes: mem_total,
        memory_pressure_percent: memory_pressure(&target.proc_dir),
        raylet_alive,
        ..NodeReadings::default()
    }
}

/// The directory itself, or its nearest existing parent (Ray creates its
/// temp dir on start; the file system is what matters).
fn existing_ancestor(path: &Path) -> PathBuf {
    path.ancestors()
        .find(|p| p.exists())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("/"))
}

/// (free bytes for unprivileged users, total bytes) of the file system
/// holding `path`.
fn space(path: &Path) -> Option<(u64, u64)> {
    let s = rustix::fs::statvfs(path).ok()?;
    Some((
        s.f_bavail.saturating_mul(s.f_frsize),
        s.f_blocks.saturating_mul(s.f_frsize),
    ))
}

/// (MemAvailable, MemTotal) in bytes from `/proc/meminfo`.
fn meminfo(proc_dir: &Path) -> (u64, u64) {
    let text = std::fs::read_to_string(proc_dir.join("meminfo")).unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .map_or(0, |kib| kib * 1024)
    };
    (field("MemAvailable:"), field("MemTotal:"))
}

/// PSI `some avg10` of `/proc/pressure/memory`, percent.
fn memory_pressure(proc_dir: &Path) -> Option<f64> {
    let text = std::fs::read_to_string(proc_dir.join("pressure/memory")).ok()?;
    let some = text.lines().find(|l| l.starts_with("some "))?;
    some.split_whitespace()
        .find_map(|kv| kv.strip_prefix("avg10="))
        .and_then(|v| v.parse().ok())
}

/// Whether `pid` runs (exists and is not a zombie).
/// Whether `pid` runs: not a zombie, not dead, and not stopped (SIGSTOP
/// or a tracer: a frozen raylet answers nobody, and the GCS would list it
/// as alive until its health checks give up).
fn process_alive(proc_dir: &Path, pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(proc_dir.join(pid.to_string()).join("stat")) else {
        return false;
    };
    // The state follows the command name's closing parenthesis.
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .is_some_and(|state| !matches!(state, "Z" | "X" | "x" | "T" | "t"))
}

/// The soft `Max open files` of `pid`.
fn open_file_limit(proc_dir: &Path, pid: i32) -> Option<u64> {
    let text = std::fs::read_to_string(proc_dir.join(pid.to_string()).join("limits")).ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    let soft = line
        .strip_prefix("Max open files")?
        .split_whitespace()
        .next()?;
    match soft {
        "unlimited" => Some(u64::MAX),
        n => n.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_host_and_this_process_as_the_raylet() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut target = HostTarget::new("127.0.0.2", dir.path().join("not-yet-created"));
        target.raylet_pid = Some(std::process::id() as i32);
        let r = read(&target);
        assert!(r.temp_dir_total_bytes > 0 && r.temp_dir_free_bytes <= r.temp_dir_total_bytes);
        assert!(r.memory_total_bytes > r.memory_available_bytes / 2);
        assert!(r.memory_available_bytes > 0);
        assert_eq!(r.raylet_alive, Some(true));
        let limit = r.raylet_open_file_limit.expect("own limit");
        let own = rustix::process::getrlimit(rustix::process::Resource::Nofile)
            .current
            .unwrap_or(u64::MAX);
        assert_eq!(limit, own);
        assert!(r.shm_total_bytes.is_some_and(|s| s > 0));
    }

    #[test]
    fn a_process_that_is_gone_is_not_alive_and_has_no_limit() {
        let mut target = HostTarget::new("127.0.0.2", "/tmp");
        target.raylet_pid = Some(i32::MAX - 7);
        let r = read(&target);
        assert_eq!(r.raylet_alive, Some(false));
        assert_eq!(r.raylet_open_file_limit, None);
    }

    #[test]
    fn readings_come_from_the_proc_files_given() {
        let dir = tempfile::tempdir().expect("temp dir");
        let proc_dir = dir.path();
        std::fs::create_dir_all(proc_dir.join("pressure")).expect("mkdir");
        std::fs::create_dir_all(proc_dir.join("77")).expect("mkdir");
        std::fs::write(
            proc_dir.join("meminfo"),
            "MemTotal:       16384 kB\nMemFree:  1 kB\nMemAvailable:    4096 kB\n",
        )
        .expect("write");
        std::fs::write(
            proc_dir.join("pressure/memory"),
            "some avg10=12.50 avg60=1.00 avg300=0.00 total=5\nfull avg10=3.00 avg60=0.00 avg300=0.00 total=1\n",
        )
        .expect("write");
        std::fs::write(proc_dir.join("77/stat"), "77 (raylet) S 1 77 77 0").expect("write");
        std::fs::write(
            proc_dir.join("77/limits"),
            "Limit                     Soft Limit           Hard Limit           Units\nMax open files            1024                 4096                 files\n",
        )
        .expect("write");
        let target = HostTarget {
            address: "10.0.0.7".into(),
            temp_dir: dir.path().into(),
            raylet_pid: Some(77),
            shm_dir: dir.path().join("no-shm"),
            proc_dir: proc_dir.into(),
        };
        let r = read(&target);
        assert_eq!(
            (r.memory_total_bytes, r.memory_available_bytes),
            (16 << 20, 4 << 20)
        );
        assert_eq!(r.memory_pressure_percent, Some(12.5));
        assert_eq!(r.raylet_open_file_limit, Some(1024));
        assert_eq!(r.raylet_alive, Some(true));
        assert_eq!(
            r.shm_total_bytes, None,
            "a missing /dev/shm is reported as such"
        );
        std::fs::write(proc_dir.join("77/stat"), "77 (ray let) Z 1 77 77 0").expect("write");
        assert_eq!(
            read(&target).raylet_alive,
            Some(false),
            "a zombie is not alive"
        );
        std::fs::write(proc_dir.join("77/stat"), "77 (raylet) T 1 77 77 0").expect("write");
        assert_eq!(
            read(&target).raylet_alive,
            Some(false),
            "a stopped (frozen) raylet does not run"
        );
    }
}
