//! Warming the model's weights while the cluster forms: every node reads
//! the files of `[serve.prefetch] paths` once, so that they are in the page
//! cache when vLLM loads them, or, with `copy-to`, copies them from a
//! shared volume to a local directory that the serve phase then gives vLLM
//! (when every serving node's copy is complete: see
//! [`crate::serve::plan_launch`]). One background thread, sequential reads
//! of 4 MiB, at most `max-mb-per-second`; progress (bytes done / total)
//! goes to `/status` and the metrics; a failure is logged and changes
//! nothing else (readiness never waits for it). Entry point:
//! [`Prefetch::spawn`].
//!
//! A copy writes each file under a temporary name of its process and renames it when
//! complete, with the source's modification time; a file already there
//! with the source's size and modification time is not copied again, so a
//! restarted pod resumes where it stopped.

use crate::endpoints::Status;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use crate::config::PrefetchConfig;
pub use orchestrator_domain::{PrefetchProgress, PrefetchState};

/// The prefetch thread; it stops when dropped.
#[derive(Debug)]
pub(crate) struct Prefetch {
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

/// Reads `path` to its end, writing each chunk to `sink` when there is
/// one and reporting it; paced to `bytes_per_s`.
fn read_file(
    path: &Path,
    mut sink: Option<&mut std::fs::File>,
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
        if let Some(sink) = sink.as_mut() {
            std::io::Write::write_all(sink, &buffer[..n])?;
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

/// Copies `from` (a file of the source tree) to `to`: under a temporary
/// name, renamed once complete, with the source's modification time.
/// Returns false when `to` already is a complete copy (same size and
/// modification time), which is then left alone.
fn copy_file(
    from: &Path,
    to: &Path,
    copy: impl FnOnce(&mut std::fs::File) -> std::io::Result<()>,
) -> std::io::Result<bool> {
    let named = |e: std::io::Error, p: &Path| {
        std::io::Error::new(e.kind(), format!("{}: {e}", p.display()))
    };
    let source = std::fs::metadata(from).map_err(|e| named(e, from))?;
    let modified = source.modified().map_err(|e| named(e, from))?;
    if let Ok(there) = std::fs::metadata(to)
        && there.len() == source.len()
        && there.modified().ok() == Some(modified)
    {
        return Ok(false);
    }
    if let Some(dir) = to.parent() {
        std::fs::create_dir_all(dir).map_err(|e| named(e, dir))?;
    }
    // A name of this process's own: two processes may copy into one
    // directory (pods sharing a host path, `orchestrator local`).
    let mut partial_name = to.as_os_str().to_owned();
    partial_name.push(format!(".partial-{}", std::process::id()));
    let partial = PathBuf::from(partial_name);
    let mut file = std::fs::File::create(&partial).map_err(|e| named(e, &partial))?;
    copy(&mut file)?;
    file.sync_all().map_err(|e| named(e, &partial))?;
    file.set_modified(modified)
        .map_err(|e| named(e, &partial))?;
    drop(file);
    std::fs::rename(&partial, to).map_err(|e| named(e, to))?;
    Ok(true)
}

/// Where the file `path` of the source tree `root` goes under `to`.
fn destination(root: &Path, path: &Path, to: &Path) -> PathBuf {
    match path.strip_prefix(root) {
        Ok(rel) if !rel.as_os_str().is_empty() => to.join(rel),
        _ => to.join(path.file_name().unwrap_or_default()),
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
    progress.copy_to = config.copy_to.clone();
    progress.state = if config.copy_to.is_some() {
        PrefetchState::Copying
    } else {
        PrefetchState::Reading
    };
    report(&progress);
    let rate = config.max_mb_per_second.saturating_mul(1 << 20);
    let mut last_report = Instant::now();
    let root = config.paths.first().cloned().unwrap_or_default();
    for (path, size) in &files {
        if stop.load(std::sync::atomic::Ordering::Relaxed) {
            break;
        }
        let before = progress.bytes_done;
        let mut on_chunk = |n| {
            progress.bytes_done += n;
            if last_report.elapsed() >= Duration::from_millis(200) {
                progress.elapsed_ms = started.elapsed().as_millis() as u64;
                report(&progress);
                last_report = Instant::now();
            }
        };
        let result = match &config.copy_to {
            None => read_file(path, None, rate, started, before, stop, &mut on_chunk),
            Some(to) => {
                let target = destination(&root, path, to);
                copy_file(path, &target, |sink| {
                    read_file(path, Some(sink), rate, started, before, stop, &mut on_chunk)?;
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        return Err(std::io::Error::other("stopped"));
                    }
                    Ok(())
                })
                .map(|copied| {
                    if !copied {
                        on_chunk(*size);
                    }
                })
            }
        };
        if let Err(e) = result {
            progress.state = PrefetchState::Failed;
            progress.error = Some(e.to_string());
            break;
        }
    }
    if stop.load(std::sync::atomic::Ordering::Relaxed) && progress.state != PrefetchState::Failed {
        progress.state = PrefetchState::Failed;
        progress.error = Some("stopped".into());
    }
    if matches!(
        progress.state,
        PrefetchState::Reading | PrefetchState::Copying
    ) {
        progress.state = PrefetchState::Done;
    }
    progress.elapsed_ms = started.elapsed().as_millis() as u64;
    report(&progress);
    progress
}

impl Prefetch {
    /// Starts warming `config.paths` on a thread of its own; none when
    /// there is nothing to prefetch.
    pub(crate) fn spawn(config: &PrefetchConfig, status: Arc<Status>) -> Option<Self> {
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
                match &config.copy_to {
                    None => tracing::info!(paths = %paths.join(", "), "prefetching the model's files into the page cache"),
                    Some(to) => tracing::info!(paths = %paths.join(", "), "copying the model's files to {}", to.display()),
                }
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
            copy_to: None,
            ..PrefetchConfig::default()
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
            copy_to: None,
            ..PrefetchConfig::default()
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
            copy_to: None,
            ..PrefetchConfig::default()
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

    #[test]
    fn copies_a_tree_to_a_local_directory_and_resumes_without_copying_again() {
        let dir = tempfile::tempdir().expect("temp dir");
        let model = dir.path().join("shared/model");
        std::fs::create_dir_all(model.join("sub")).expect("mkdir");
        std::fs::write(model.join("a.safetensors"), vec![1u8; 5 << 20]).expect("write");
        std::fs::write(model.join("sub/b.json"), b"{\"x\": 1}").expect("write");
        let local = dir.path().join("local/model");
        let config = PrefetchConfig {
            paths: vec![model.clone()],
            max_mb_per_second: 0,
            copy_to: Some(local.clone()),
            ..PrefetchConfig::default()
        };
        assert_eq!(config.check(), Ok(()));
        let mut states = Vec::new();
        let done = warm(&config, &AtomicBool::new(false), |p| states.push(p.state));
        assert_eq!(done.state, PrefetchState::Done, "{done:?}");
        assert!(states.contains(&PrefetchState::Copying));
        assert_eq!(done.bytes_done, done.bytes_total);
        assert_eq!(
            std::fs::read(local.join("a.safetensors")).expect("copied"),
            vec![1u8; 5 << 20]
        );
        assert_eq!(
            std::fs::read(local.join("sub/b.json")).expect("copied"),
            b"{\"x\": 1}"
        );
        assert_eq!(
            std::fs::read_dir(&local).expect("copied").count(),
            2,
            "no partial files left"
        );
        let inode =
            |p: &Path| std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(p).expect("copied"));
        let (first_a, first_b) = (
            inode(&local.join("a.safetensors")),
            inode(&local.join("sub/b.json")),
        );
        // A second run finds complete copies and leaves them alone; a
        // changed source file is copied again.
        std::fs::write(model.join("sub/b.json"), b"{\"x\": 22}").expect("write");
        let again = warm(&config, &AtomicBool::new(false), |_| {});
        assert_eq!(again.state, PrefetchState::Done);
        assert_eq!(again.bytes_done, again.bytes_total);
        assert_eq!(
            std::fs::read(local.join("sub/b.json")).expect("copied"),
            b"{\"x\": 22}"
        );
        assert_eq!(
            inode(&local.join("a.safetensors")),
            first_a,
            "not copied again"
        );
        assert_ne!(inode(&local.join("sub/b.json")), first_b, "copied again");
    }

    #[test]
    fn copy_to_needs_one_directory() {
        let config = PrefetchConfig {
            paths: vec![PathBuf::from("/a"), PathBuf::from("/b")],
            max_mb_per_second: 0,
            copy_to: Some(PathBuf::from("/local")),
            ..PrefetchConfig::default()
        };
        assert!(
            config
                .check()
                .is_err_and(|e| e.to_string().contains("exactly one directory"))
        );
    }
}
