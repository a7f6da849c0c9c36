//! What one revision of a model is: its files, their sizes and the
//! origin's digests ([`Manifest`]), cut into chunks of one size; and what
//! a node offers of it ([`Offer`]: the manifest and the sha256 of every
//! chunk it holds, verified). Names from an origin or a peer are checked
//! before any file is made from them ([`Manifest::validate`]).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The most files of one revision.
pub const MAX_FILES: usize = 100_000;
/// The largest file accepted (16 TiB).
pub const MAX_FILE_BYTES: u64 = 16 << 40;
/// The longest file name (a path relative to the revision's folder).
pub const MAX_PATH_BYTES: usize = 1024;

/// One revision of a model.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Manifest {
    /// The repository (`org/name`), or the directory's last name.
    pub repo: String,
    /// The revision as the origin resolved it (a commit, or a digest of a
    /// directory's listing).
    pub revision: String,
    /// Every chunk's size but a file's last.
    pub chunk_bytes: u64,
    /// The files, sorted by path.
    pub files: Vec<ManifestFile>,
}

/// One file of a revision.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ManifestFile {
    /// Its path under the revision's folder (`/`-separated).
    pub path: String,
    /// Its size in bytes.
    pub size: u64,
    /// Its sha256 (hex) where the origin gives one (a hub's LFS files).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

/// What is wrong with a manifest.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ManifestError {
    /// A name that could leave the folder or hide in it.
    #[error(
        "file name {0:?} is refused: names must be relative, without `..`, `.`, empty parts, a leading `.orchestrator` or a trailing `.orchestrator-partial`"
    )]
    UnsafePath(String),
    /// Limits passed.
    #[error("{0}")]
    Bounds(String),
    /// Two files of one name.
    #[error("file {0:?} is listed twice")]
    Duplicate(String),
    /// Not a digest.
    #[error("file {path:?}: sha256 {digest:?} is not 64 hex digits")]
    Digest {
        /// The file.
        path: String,
        /// What was given.
        digest: String,
    },
}

impl Manifest {
    /// Checks names, sizes and digests (a manifest from an origin or a
    /// peer is checked before use).
    pub fn validate(&self) -> Result<(), ManifestError> {
        if self.files.len() > MAX_FILES {
            return Err(ManifestError::Bounds(format!(
                "{} files, more than {MAX_FILES}",
                self.files.len()
            )));
        }
        if !(1 << 16..=1 << 30).contains(&self.chunk_bytes) {
            return Err(ManifestError::Bounds(format!(
                "chunk size {} is outside 64 KiB..1 GiB",
                self.chunk_bytes
            )));
        }
        for name in [&self.repo, &self.revision] {
            if name.is_empty() || name.len() > 256 || !safe_path(name) {
                return Err(ManifestError::UnsafePath(name.clone()));
            }
        }
        let mut seen = std::collections::HashSet::new();
        for file in &self.files {
            if !safe_path(&file.path) || file.path.len() > MAX_PATH_BYTES {
                return Err(ManifestError::UnsafePath(file.path.clone()));
            }
            if file.size > MAX_FILE_BYTES {
                return Err(ManifestError::Bounds(format!(
                    "file {:?} is {} bytes, more than {MAX_FILE_BYTES}",
                    file.path, file.size
                )));
            }
            if let Some(digest) = &file.sha256
                && !is_sha256(digest)
            {
                return Err(ManifestError::Digest {
                    path: file.path.clone(),
                    digest: digest.clone(),
                });
            }
            if !seen.insert(file.path.as_str()) {
                return Err(ManifestError::Duplicate(file.path.clone()));
            }
        }
        Ok(())
    }

    /// All files' bytes.
    pub fn total_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }

    /// How many chunks file `file` has (an empty file has none).
    pub fn chunks(&self, file: usize) -> u32 {
        self.files
            .get(file)
            .map_or(0, |f| f.size.div_ceil(self.chunk_bytes) as u32)
    }

    /// Chunk `chunk` of file `file`: its offset and length.
    pub fn chunk_span(&self, file: usize, chunk: u32) -> Option<(u64, u64)> {
        let size = self.files.get(file)?.size;
        let start = u64::from(chunk) * self.chunk_bytes;
        (start < size).then(|| (start, self.chunk_bytes.min(size - start)))
    }

    /// Every (file, chunk) of the revision.
    pub fn all_chunks(&self) -> impl Iterator<Item = (usize, u32)> + '_ {
        (0..self.files.len()).flat_map(move |f| (0..self.chunks(f)).map(move |c| (f, c)))
    }
}

/// A relative `/`-separated path that stays under its folder and is not
/// the store's own state.
pub fn safe_path(path: &str) -> bool {
    !path.is_empty()
        && !path.starts_with('/')
        && !path.starts_with(".orchestrator")
        && !path.ends_with(crate::store::PARTIAL)
        && !path.contains('\\')
        && !path.contains('\0')
        && path
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..")
}

/// 64 lowercase or uppercase hex digits.
pub fn is_sha256(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// What a node holds of one revision: the manifest and, per file, the
/// sha256 of every chunk it verified.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Offer {
    /// The revision.
    pub manifest: Manifest,
    /// Per file (same order), chunk index -> sha256 (hex).
    pub have: Vec<BTreeMap<u32, String>>,
}

impl Offer {
    /// Checks the manifest and that every chunk named exists and has a
    /// digest.
    pub fn validate(&self) -> Result<(), ManifestError> {
        self.manifest.validate()?;
        if self.have.len() != self.manifest.files.len() {
            return Err(ManifestError::Bounds(format!(
                "the offer lists {} files' chunks for {} files",
                self.have.len(),
                self.manifest.files.len()
            )));
        }
        for (file, chunks) in self.have.iter().enumerate() {
            for (chunk, digest) in chunks {
                if *chunk >= self.manifest.chunks(file) || !is_sha256(digest) {
                    return Err(ManifestError::Bounds(format!(
                        "the offer's chunk {chunk} of {:?} does not exist or has no sha256",
                        self.manifest.files[file].path
                    )));
                }
            }
        }
        Ok(())
    }

    /// The digest this offer gives chunk `chunk` of file `file`.
    pub fn digest(&self, file: usize, chunk: u32) -> Option<&str> {
        self.have.get(file)?.get(&chunk).map(String::as_str)
    }

    /// Chunks offered.
    pub fn count(&self) -> usize {
        self.have.iter().map(BTreeMap::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(paths: &[&str]) -> Manifest {
        Manifest {
            repo: "org/model".into(),
            revision: "abc".into(),
            chunk_bytes: 1 << 20,
            files: paths
                .iter()
                .map(|p| ManifestFile {
                    path: (*p).into(),
                    size: (5 << 20) / 2,
                    sha256: None,
                })
                .collect(),
        }
    }

    #[test]
    fn names_that_leave_the_folder_are_refused() {
        for bad in [
            "../etc/passwd",
            "/etc/passwd",
            "a/../../b",
            "a//b",
            "./a",
            ".orchestrator/state",
            "model.safetensors.orchestrator-partial",
            "a\\..\\b",
            "",
        ] {
            assert_eq!(
                manifest(&[bad]).validate(),
                Err(ManifestError::UnsafePath(bad.into())),
                "{bad}"
            );
        }
        assert!(
            manifest(&["config.json", "sub/model.safetensors"])
                .validate()
                .is_ok()
        );
        assert_eq!(
            manifest(&["a", "a"]).validate(),
            Err(ManifestError::Duplicate("a".into()))
        );
    }

    #[test]
    fn chunks_cover_each_file_exactly() {
        let m = manifest(&["a"]);
        assert_eq!(m.chunks(0), 3);
        assert_eq!(m.chunk_span(0, 0), Some((0, 1 << 20)));
        assert_eq!(m.chunk_span(0, 2), Some((2 << 20, 1 << 19)));
        assert_eq!(m.chunk_span(0, 3), None);
        assert_eq!(m.all_chunks().count(), 3);
    }

    #[test]
    fn an_offer_of_chunks_that_do_not_exist_is_refused() {
        let mut offer = Offer {
            manifest: manifest(&["a"]),
            have: vec![BTreeMap::from([(0, "0".repeat(64))])],
        };
        assert!(offer.validate().is_ok());
        offer.have[0].insert(7, "0".repeat(64));
        assert!(offer.validate().is_err());
        offer.have[0].remove(&7);
        offer.have[0].insert(1, "xyz".into());
        assert!(offer.validate().is_err());
    }
}
