//! `[serve.prefetch]`: the model's files warmed (or copied to a local
//! disk) while the cluster forms.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// `[serve.prefetch]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct PrefetchConfig {
    /// Files or directories (read recursively) to bring into the page
    /// cache; none: no prefetch.
    pub paths: Vec<PathBuf>,
    /// Read at most this many MiB a second (0: as fast as the disk goes).
    pub max_mb_per_second: u64,
    /// Copy the files of the one directory in `paths` here (a local disk)
    /// instead of only reading them; the serve phase then serves from the
    /// copy where every serving node completed it.
    pub copy_to: Option<PathBuf>,
    /// At the ready decision, how long the launch waits for copies still
    /// in progress (on any serving node) before it serves from the shared
    /// path instead (0: it does not wait).
    pub copy_wait_seconds: u64,
}

impl Default for PrefetchConfig {
    fn default() -> Self {
        Self {
            paths: Vec::new(),
            max_mb_per_second: 0,
            copy_to: None,
            copy_wait_seconds: 30,
        }
    }
}

impl PrefetchConfig {
    /// The copy of `model` this prefetch makes: `copy-to` when the one
    /// path is the model's directory.
    pub(crate) fn local_copy_of(&self, model: &str) -> Option<PathBuf> {
        let to = self.copy_to.as_ref()?;
        match self.paths.as_slice() {
            [from] if from.as_path() == Path::new(model) => Some(to.clone()),
            _ => None,
        }
    }

    /// A `copy-to` needs exactly one directory in `paths`, and not itself.
    pub fn check(&self) -> Result<(), CopyToProblem> {
        let Some(to) = &self.copy_to else {
            return Ok(());
        };
        match self.paths.as_slice() {
            [from] if from == to => Err(CopyToProblem::Itself(to.clone())),
            [_] => Ok(()),
            _ => Err(CopyToProblem::NotOneDirectory(self.paths.len())),
        }
    }
}

/// Why a `copy-to` cannot be done.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CopyToProblem {
    /// The copy would go onto its source.
    #[error("serve.prefetch.copy-to is the directory it copies ({}): name a local directory", .0.display())]
    Itself(PathBuf),
    /// Not exactly one directory to copy.
    #[error(
        "serve.prefetch.copy-to needs exactly one directory in serve.prefetch.paths (the model's), not {0}"
    )]
    NotOneDirectory(usize),
}
