//! Pulled artifacts on disk, by digest: `blobs/sha256/HEX`, each file
//! checked against its name when read, written whole or not at all. A
//! pinned policy found here needs no registry. Entry point: [`BlobCache`].

use crate::artifact::Manifest;
use crate::reference::Digest;
use std::io::Write;
use std::path::PathBuf;

/// The cache directory.
#[derive(Debug, Clone)]
pub struct BlobCache {
    dir: PathBuf,
}

/// The cache could not be read or written.
#[derive(Debug, thiserror::Error)]
#[error(
    "the policy cache {path}: {error} (set another with [registry] cache-dir or ORCHESTRATOR_OCI_CACHE_DIR)"
)]
pub struct CacheError {
    /// The file or directory.
    pub path: PathBuf,
    /// What the system said.
    #[source]
    pub error: std::io::Error,
}

impl BlobCache {
    /// The cache in `dir` (created on first write).
    pub fn new(dir: PathBuf) -> Self {
        Self { dir }
    }

    fn path(&self, digest: &Digest) -> PathBuf {
        self.dir.join("blobs").join("sha256").join(digest.hex())
    }

    /// The blob's file if present and intact (a damaged one is removed).
    pub fn blob(&self, digest: &Digest) -> Result<Option<PathBuf>, CacheError> {
        Ok(self.verified(digest)?.map(|(path, _)| path))
    }

    /// The blob's file and bytes if present and intact (a damaged one is
    /// removed).
    fn verified(&self, digest: &Digest) -> Result<Option<(PathBuf, Vec<u8>)>, CacheError> {
        let path = self.path(digest);
        match std::fs::read(&path) {
            Ok(bytes) if &Digest::of(&bytes) == digest => Ok(Some((path, bytes))),
            Ok(_) => {
                tracing::warn!(path = %path.display(), "a damaged cached blob was removed");
                let _ = std::fs::remove_file(&path);
                Ok(None)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(CacheError { path, error }),
        }
    }

    /// A cached manifest and its bytes.
    pub fn manifest(&self, digest: &Digest) -> Result<Option<(Manifest, Vec<u8>)>, CacheError> {
        let Some((_, bytes)) = self.verified(digest)? else {
            return Ok(None);
        };
        Ok(serde_json::from_slice(&bytes).ok().map(|m| (m, bytes)))
    }

    /// Stores a blob (already verified) and returns its file.
    pub fn put_blob(&self, digest: &Digest, bytes: &[u8]) -> Result<PathBuf, CacheError> {
        let path = self.path(digest);
        let fail = |path: &PathBuf| {
            let path = path.clone();
            move |error| CacheError { path, error }
        };
        let dir = path.parent().map(PathBuf::from).unwrap_or_default();
        std::fs::create_dir_all(&dir).map_err(fail(&dir))?;
        let partial = dir.join(format!(".{}.partial-{}", digest.hex(), std::process::id()));
        let mut file = std::fs::File::create(&partial).map_err(fail(&partial))?;
        file.write_all(bytes).map_err(fail(&partial))?;
        file.sync_all().map_err(fail(&partial))?;
        std::fs::rename(&partial, &path).map_err(fail(&path))?;
        Ok(path)
    }

    /// Stores a manifest's bytes under its digest.
    pub fn put_manifest(&self, digest: &Digest, bytes: &[u8]) -> Result<(), CacheError> {
        self.put_blob(digest, bytes).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_damaged_blob_is_a_miss() {
        let dir = tempfile::tempdir().unwrap();
        let cache = BlobCache::new(dir.path().to_path_buf());
        let digest = Digest::of(b"policy");
        assert!(cache.blob(&digest).unwrap().is_none());
        let path = cache.put_blob(&digest, b"policy").unwrap();
        assert_eq!(cache.blob(&digest).unwrap(), Some(path.clone()));
        std::fs::write(&path, b"tampered").unwrap();
        assert!(cache.blob(&digest).unwrap().is_none());
        assert!(!path.exists());
    }
}
