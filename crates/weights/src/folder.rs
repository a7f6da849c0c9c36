//! A folder this node made itself (vLLM's compile cache) offered to the
//! group as a revision of its own, and taken from a peer the same way
//! weights are: [`seal`] copies the folder into the store under a
//! revision named by the digest of its listing (every file's sha256 in
//! the manifest, so a peer's copy is checked file by file); [`pull`] takes
//! a peer's whole offer over the signed channel. Entry points: [`seal`],
//! [`pull`].

use crate::manifest::{MAX_FILES, Manifest, ManifestFile};
use crate::peer::{PeerClient, PeerError};
use crate::store::{Store, StoreError};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// Why a folder could not be sealed or pulled.
#[derive(Debug, thiserror::Error)]
pub enum FolderError {
    /// Reading the folder or writing the store.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The folder could not be listed.
    #[error("{path}: {source}")]
    List {
        /// The folder.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// More files than a manifest may hold.
    #[error("{0} holds more than {MAX_FILES} files; it is not offered")]
    TooMany(PathBuf),
    /// The peer.
    #[error(transparent)]
    Peer(#[from] PeerError),
    /// A blocking task ended abnormally.
    #[error("folder task: {0}")]
    Task(String),
}

/// The regular files under `root` (symbolic links and names the store
/// refuses are skipped), `/`-separated, sorted.
fn list(root: &Path) -> Result<Vec<(String, PathBuf)>, FolderError> {
    let mut found = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let entries = std::fs::read_dir(&dir).map_err(|source| FolderError::List {
            path: dir.clone(),
            source,
        })?;
        for entry in entries.flatten() {
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            let path = entry.path();
            if kind.is_dir() {
                pending.push(path);
            } else if kind.is_file() {
                let Ok(relative) = path.strip_prefix(root) else {
                    continue;
                };
                let name = relative
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect::<Vec<_>>()
                    .join("/");
                if crate::manifest::safe_path(&name) {
                    found.push((name, path));
                }
                if found.len() > MAX_FILES {
                    return Err(FolderError::TooMany(root.to_path_buf()));
                }
            }
        }
    }
    found.sort();
    Ok(found)
}

/// Copies `source` into the store under `cache` as a revision of `repo`
/// (named by its content) and returns the store, complete. Blocking
/// (disk). A folder whose content was sealed before is not copied again.
pub fn seal(
    cache: &Path,
    repo: &str,
    source: &Path,
    chunk_bytes: u64,
) -> Result<Store, FolderError> {
    let mut files = Vec::new();
    let mut paths = Vec::new();
    let mut listing = Sha256::new();
    for (name, path) in list(source)? {
        let failed = |source| FolderError::List {
            path: path.clone(),
            source,
        };
        let mut hasher = Sha256::new();
        let size = std::io::copy(
            &mut std::fs::File::open(&path).map_err(failed)?,
            &mut hasher,
        )
        .map_err(failed)?;
        let digest = hex::encode(hasher.finalize());
        listing.update(format!("{name}\0{size}\0{digest}\n"));
        files.push(ManifestFile {
            path: name,
            size,
            sha256: Some(digest),
        });
        paths.push(path);
    }
    let revision = hex::encode(&listing.finalize()[..16]);
    let manifest = Manifest {
        repo: repo.to_string(),
        revision,
        chunk_bytes,
        files,
    };
    let store = Store::open(cache, manifest)?;
    if store.is_complete() {
        return Ok(store);
    }
    for (f, path) in paths.iter().enumerate() {
        let failed = |source| FolderError::List {
            path: path.clone(),
            source,
        };
        let handle = std::fs::File::open(path).map_err(failed)?;
        for chunk in 0..store.manifest().chunks(f) {
            let Some((start, len)) = store.manifest().chunk_span(f, chunk) else {
                continue;
            };
            let mut span = vec![0u8; len as usize];
            std::os::unix::fs::FileExt::read_exact_at(&handle, &mut span, start).map_err(failed)?;
            store.put(f, chunk, &span, None)?;
        }
    }
    store.finish()?;
    Ok(store)
}

/// Takes `peer`'s whole offer of `id` into the store under `cache`:
/// `None` when the peer offers nothing under that id (or not all of it).
/// Every chunk is checked against the signed offer, every file against
/// its sha256.
pub async fn pull(
    client: &PeerClient,
    peer: &str,
    id: &str,
    cache: &Path,
) -> Result<Option<Store>, FolderError> {
    let offer = match client.offer(peer, id).await {
        Ok(offer) => offer,
        Err(PeerError::Status { status: 404, .. }) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    if offer.count() != offer.manifest.all_chunks().count() {
        return Ok(None);
    }
    let cache = cache.to_path_buf();
    let manifest = offer.manifest.clone();
    let store = blocking(move || Store::open(&cache, manifest).map_err(FolderError::from)).await?;
    let store = std::sync::Arc::new(store);
    for (f, chunk) in store.missing() {
        let (Some(digest), Some((_, len))) =
            (offer.digest(f, chunk), offer.manifest.chunk_span(f, chunk))
        else {
            return Ok(None);
        };
        let bytes = client.chunk(peer, id, f, chunk, len).await?;
        let digest = digest.to_string();
        let into = std::sync::Arc::clone(&store);
        blocking(move || {
            into.put(f, chunk, &bytes, Some(&digest))
                .map(drop)
                .map_err(FolderError::from)
        })
        .await?;
    }
    let into = std::sync::Arc::clone(&store);
    blocking(move || into.finish().map_err(FolderError::from)).await?;
    Ok(std::sync::Arc::into_inner(store))
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, FolderError> + Send + 'static,
) -> Result<T, FolderError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| FolderError::Task(e.to_string()))?
}

/// Copies into `into` every file of `from` that `into` lacks (files both
/// hold are kept as they are); the number copied. Blocking (disk).
pub fn merge(from: &Path, into: &Path) -> Result<usize, FolderError> {
    let mut copied = 0;
    for (name, path) in list(from)? {
        let target = into.join(&name);
        if target.exists() {
            continue;
        }
        let failed = |source| FolderError::List {
            path: target.clone(),
            source,
        };
        if let Some(dir) = target.parent() {
            std::fs::create_dir_all(dir).map_err(failed)?;
        }
        let mut temp = target.as_os_str().to_owned();
        temp.push(".orchestrator-partial");
        std::fs::copy(&path, &temp).map_err(failed)?;
        std::fs::rename(&temp, &target).map_err(failed)?;
        copied += 1;
    }
    Ok(copied)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_folder_sealed_twice_is_one_revision_and_merge_adds_only_what_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("src");
        std::fs::create_dir_all(source.join("rank_0_0/inductor")).unwrap();
        std::fs::write(source.join("rank_0_0/inductor/a.so"), vec![7u8; 200_000]).unwrap();
        std::fs::write(source.join("modelinfo.json"), b"{}").unwrap();
        std::fs::write(source.join("empty"), b"").unwrap();
        let cache = dir.path().join("cache");
        let first = seal(&cache, "compile--k", &source, 1 << 16).unwrap();
        assert!(first.is_complete());
        assert_eq!(first.manifest().files.len(), 3);
        assert_eq!(
            std::fs::read(first.path().join("rank_0_0/inductor/a.so")).unwrap(),
            vec![7u8; 200_000]
        );
        let again = seal(&cache, "compile--k", &source, 1 << 16).unwrap();
        assert_eq!(again.manifest().revision, first.manifest().revision);
        std::fs::write(source.join("modelinfo.json"), b"{\"x\":1}").unwrap();
        let changed = seal(&cache, "compile--k", &source, 1 << 16).unwrap();
        assert_ne!(changed.manifest().revision, first.manifest().revision);

        let into = dir.path().join("into");
        std::fs::create_dir_all(&into).unwrap();
        std::fs::write(into.join("modelinfo.json"), b"mine").unwrap();
        assert_eq!(merge(first.path(), &into).unwrap(), 2);
        assert_eq!(std::fs::read(into.join("modelinfo.json")).unwrap(), b"mine");
        assert_eq!(
            std::fs::metadata(into.join("rank_0_0/inductor/a.so"))
                .unwrap()
                .len(),
            200_000
        );
        assert_eq!(merge(first.path(), &into).unwrap(), 0);
    }
}
