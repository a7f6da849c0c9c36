//! Shared-memory files a killed vLLM leaves behind. vLLM's CPU backend
//! keeps its tensor-parallel buffers in `/dev/shm/<port>-<group>-cpushm_<n>`
//! (the port is its distributed-init port, drawn at random); a vLLM killed
//! with SIGKILL (by the health policy, the OOM killer or a test) leaves them,
//! and a later vLLM on the same host that draws the same port fails its
//! start with `create shm in SHMManager failed. errno: 17`. Before each
//! launch and after each stop the orchestrator removes such files that no
//! live process has mapped. Entry point: [`remove_orphaned_segments`].

use std::collections::HashSet;
use std::path::Path;

/// Where vLLM creates them.
pub(crate) const SHM_DIR: &str = "/dev/shm";

/// Whether `name` is one of vLLM's CPU tensor-parallel buffers.
fn is_vllm_cpu_segment(name: &str) -> bool {
    name.contains("-cpushm_") || name.ends_with("-cpushm")
}

/// Every file under `dir` that a live process has mapped (from
/// `/proc/*/maps`).
fn mapped_under(dir: &Path) -> HashSet<String> {
    let prefix = format!("{}/", dir.display());
    let mut mapped = HashSet::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return mapped;
    };
    for entry in procs.flatten() {
        let name = entry.file_name();
        if !name.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(maps) = std::fs::read_to_string(entry.path().join("maps")) else {
            continue;
        };
        for line in maps.lines() {
            if let Some(at) = line.find(&prefix) {
                let path = line[at..].trim_end_matches(" (deleted)");
                if let Some(file) = path.strip_prefix(&prefix) {
                    mapped.insert(file.to_string());
                }
            }
        }
    }
    mapped
}

/// Removes vLLM's CPU tensor-parallel buffers in `dir` that no live
/// process maps; returns how many. Errors (a file gone meanwhile, no
/// permission) are skipped: this is housekeeping.
pub(crate) fn remove_orphaned_segments(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let candidates: Vec<String> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .filter(|n| is_vllm_cpu_segment(n))
        .collect();
    if candidates.is_empty() {
        return 0;
    }
    let mapped = mapped_under(dir);
    let mut removed = 0;
    for name in candidates {
        if !mapped.contains(&name) && std::fs::remove_file(dir.join(&name)).is_ok() {
            removed += 1;
        }
    }
    if removed > 0 {
        tracing::info!(
            "removed {removed} shared-memory file(s) of dead vLLM processes from {} (they would make a vLLM that draws the same port fail to start)",
            dir.display()
        );
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    #[test]
    fn removes_the_segments_no_process_maps_and_keeps_the_rest() {
        let dir = tempfile::tempdir().expect("temp dir");
        let orphan = "33175-tp:0-[0-1]-cpushm_0";
        let in_use = "34587-tp:0-[0-1]-cpushm_1";
        let other = "psm_00494270";
        for name in [orphan, in_use, other] {
            std::fs::write(dir.path().join(name), vec![0u8; 4096]).expect("write");
        }
        // A live process maps `in_use`, as a running vLLM does.
        let mut holder = Command::new("python3")
            .arg("-c")
            .arg(
                "import mmap, sys, time\nf = open(sys.argv[1], 'r+b')\nm = mmap.mmap(f.fileno(), 4096)\nprint('mapped', flush=True)\ntime.sleep(60)",
            )
            .arg(dir.path().join(in_use))
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3");
        let mut line = String::new();
        let mut out = std::io::BufReader::new(holder.stdout.take().expect("stdout"));
        let started = Instant::now();
        std::io::BufRead::read_line(&mut out, &mut line).expect("read");
        assert_eq!(line.trim(), "mapped");
        assert!(started.elapsed() < Duration::from_secs(30));

        assert_eq!(remove_orphaned_segments(dir.path()), 1);
        assert!(!dir.path().join(orphan).exists(), "the orphan is gone");
        assert!(dir.path().join(in_use).exists(), "a mapped one stays");
        assert!(dir.path().join(other).exists(), "other files stay");
        let _ = holder.kill();
        let _ = holder.wait();
        assert_eq!(
            remove_orphaned_segments(dir.path()),
            1,
            "unmapped once its process is gone"
        );
    }
}
