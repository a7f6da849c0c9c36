//! Warming the model's weights while the cluster forms: every node reads
//! the files of `[serve.prefetch] paths` once, so that they are in the page
//! cache when vLLM loads them. One background thread, sequential reads of
//! 4 MiB, at most `max-mb-per-second`; progress (bytes done / total) goes
//! to `/status` and the metrics; a failure is logged and changes nothing
//! else (readiness never waits for it). Entry point: [`Prefetch::spawn`].

use crate::endpoints::Status;
use serde::{Deserialize, Serialize};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// `[serve.prefetch]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct PrefetchConfig {
    /// Files or directories (read recursively) to bring into the page
    /// cache; none: no prefetch.
    pub paths: Vec<PathBuf>,
    /// Read at most this many MiB a second (0: as fast as the disk goes).
    pub max_mb_per_second: u64,
}

/// Where a prefetch stands, as `/status` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum PrefetchState {
    /// Listing the files.
    #[default]
    Listing,
    /// Reading them.
    Reading,
    /// Every file read.
    Done,
    /// Stopped on an error (logged; nothing else depends on it).
    Failed,
}

/// A prefetch's progress.
#[derive(Debug, Clone, PartialEq, Serialize, Default)]
#[serde(rename_all = "kebab-case")]
pub struct PrefetchProgress {
    /// Where it stands.
    pub state: PrefetchState,
    /// Files found.
    pub files: u64,
    /// Bytes read so far.
    pub bytes_done: u64,
    /// Bytes of every file found.
    pub bytes_total: u64,
    /// Time spent so far, ms.
    pub elapsed_ms: u64,
    /// What stopped it, when something did.
    pub error: Option<String>,
}

/// The prefetch thread; it stops when dropped.
#[derive(Debug)]
pub struct Prefetch {
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl Drop for Prefetch {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Every regular file under `paths`, with its size.
fn list(paths: &[PathBuf]) -> std::io::Result<Vec<(PathBuf, u64)>> {
    let mut files = Vec::new();
    let mut pending: Vec<PathBuf> = paths.to_vec();
    while let Some(path) = pending.pop() {
        let meta = std::fs::metadata(&path)
            .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        if meta.is_dir() {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(&path)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .collect();
            entries.sort();
            pending.extend(entries.into_iter().rev());
        } else if meta.is_file() {
            files.push((path, meta.len()));
        }
    }
    Ok(files)
}

const CHUNK: usize = 4 << 20;

/// Reads `path` to its end, reporting each chunk; paced to `bytes_per_s`.
fn read_file(
    path: &Path,
    bytes_per_s: u64,
    started: Instant,
    done_before: u64,
    stop: &std::sync::atomic::AtomicBool,
    mut on_chunk: impl FnMut(u64),
) -> std::io::Result<()> {
    let mut file = std::fs::File::open(path)
        .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    let mut buffer = vec![0u8; CHUNK];
    let mut done = done_before;
    loop {
        if stop.load(std::sync::atomic::Ordering::Relaxed) {
            return Ok(());
        }
        let n = file.read(&mut buffer)?;
        if n == 0 {
            return Ok(());
        }
        done += n as u64;
        on_chunk(n as u64);
        if bytes_per_s > 0 {
            let due = Duration::from_secs_f64(done as f64 / bytes_per_s as f64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(wait);
            }
        }
    }
}

/// Brings every file of `config.paths` into the page cache, calling
/// `report` with the progress after each chunk and at the end. Returns the
/// final progress. What `Prefetch::spawn` runs on its thread, and what
/// `cargo xtask bench prefetch` times.
pub fn warm(
    config: &PrefetchConfig,
    stop: &std::sync::atomic::AtomicBool,
    mut report: impl FnMut(&PrefetchProgress),
) -> PrefetchProgress {
    let started = Instant::now();
    let mut progress = PrefetchProgress::default();
    report(&progress);
    let files = match list(&config.paths) {
        Ok(f) => f,
        Err(e) => {
            progress.state = PrefetchState::Failed;
            progress.error = Some(e.to_string());
            report(&progress);
            return progress;
        }
    };
    progress.files = files.len() as u64;
    progress.bytes_total = files.iter().map(|(_, n)| n).sum();
    progress.state = PrefetchState::Reading;
    report(&progress);
    let rate = config.max_mb_per_second.saturating_mul(1 << 20);
    let mut last_report = Instant::now();
    for (path, _) in &files {
        let before = progress.bytes_done;
        let result = read_file(path, rate, started, before, stop, |n| {
            progress.bytes_done += n;
            if last_report.elapsed() >= Duration::from_millis(200) {
                progress.elapsed_ms = started.elapsed().as_millis() as u64;
                report(&progress);
                last_report = Instant::now();
            }
        });
        if let Err(e) = result {
            progress.state = PrefetchState::Failed;
            progress.error = Some(e.to_string());
            break;
        }
    }
    if progress.state == PrefetchState::Reading {
        progress.state = PrefetchState::Done;
    }
    progress.elapsed_ms = started.elapsed().as_millis() as u64;
    report(&progress);
    progress
}

impl Prefetch {
    /// Starts warming `config.paths` on a thread of its own; none when
    /// there is nothing to prefetch.
    pub fn spawn(config: &PrefetchConfig, status: Arc<Status>) -> Option<Self> {
        if config.paths.is_empty() {
            return None;
        }
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (config, flag) = (config.clone(), Arc::clone(&stop));
        let spawned = std::thread::Builder::new()
            .name("prefetch".into())
            .spawn(move || {
                let paths: Vec<String> =
                    config.paths.iter().map(|p| p.display().to_string()).collect();
                tracing::info!(paths = %paths.join(", "), "prefetching the model's files into the page cache");
                let done = warm(&config, &flag, |p| status.prefetch(p.clone()));
                match done.state {
                    PrefetchState::Done => tracing::info!(
                        files = done.files,
                        mib = done.bytes_done >> 20,
                        seconds = done.elapsed_ms as f64 / 1000.0,
                        "prefetch done"
                    ),
                    _ => tracing::warn!(
                        "prefetch stopped after {} of {} MiB: {}; serving goes on without it",
                        done.bytes_done >> 20,
                        done.bytes_total >> 20,
                        done.error.as_deref().unwrap_or("stopped")
                    ),
                }
            });
        match spawned {
            Ok(_) => Some(Self { stop }),
            Err(e) => {
                tracing::warn!("cannot start the prefetch thread: {e}");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    #[test]
    fn warms_every_file_of_a_tree_and_reports_progress() {
        let dir = tempfile::tempdir().expect("temp dir");
        let model = dir.path().join("model");
        std::fs::create_dir_all(model.join("sub")).expect("mkdir");
        std::fs::write(model.join("a.safetensors"), vec![1u8; 5 << 20]).expect("write");
        std::fs::write(model.join("sub/b.safetensors"), vec![2u8; 3 << 20]).expect("write");
        std::fs::write(model.join("config.json"), b"{}").expect("write");
        let mut seen = Vec::new();
        let config = PrefetchConfig {
            paths: vec![model],
            max_mb_per_second: 0,
        };
        let done = warm(&config, &AtomicBool::new(false), |p| seen.push(p.clone()));
        assert_eq!(done.state, PrefetchState::Done);
        assert_eq!(done.files, 3);
        assert_eq!(done.bytes_total, (8 << 20) + 2);
        assert_eq!(done.bytes_done, done.bytes_total);
        assert_eq!(seen.first().map(|p| p.state), Some(PrefetchState::Listing));
        assert!(seen.iter().any(|p| p.state == PrefetchState::Reading));
    }

    #[test]
    fn the_rate_limit_paces_the_reads() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("w.bin");
        std::fs::write(&file, vec![0u8; 12 << 20]).expect("write");
        let config = PrefetchConfig {
            paths: vec![file],
            max_mb_per_second: 24,
        };
        let started = Instant::now();
        let done = warm(&config, &AtomicBool::new(false), |_| {});
        assert_eq!(done.state, PrefetchState::Done);
        // 12 MiB at 24 MiB/s: about half a second (the last chunk is paced too).
        assert!(
            started.elapsed() >= Duration::from_millis(400),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn a_missing_path_fails_with_its_name_and_nothing_else() {
        let config = PrefetchConfig {
            paths: vec![PathBuf::from("/nonexistent/model")],
            max_mb_per_second: 0,
        };
        let done = warm(&config, &AtomicBool::new(false), |_| {});
        assert_eq!(done.state, PrefetchState::Failed);
        assert!(
            done.error
                .as_deref()
                .is_some_and(|e| e.contains("/nonexistent/model")),
            "{done:?}"
        );
    }
}
