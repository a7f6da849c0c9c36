//! A model prefetch's progress, as the prefetch reports it and `/status`
//! shows it.

use serde::Serialize;
use std::path::PathBuf;

/// Where a prefetch stands, as `/status` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum PrefetchState {
    /// Listing the files.
    #[default]
    Listing,
    /// Reading them.
    Reading,
    /// Copying them (`copy-to`).
    Copying,
    /// Every file read (or copied).
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
    /// Where the files are copied, with `copy-to`.
    pub copy_to: Option<PathBuf>,
}
