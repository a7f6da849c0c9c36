//! One revision on this node's disk, chunk by chunk: every chunk is
//! verified before it is written, written in place into its file's
//! partial copy, flushed, then logged with its sha256; a restart reads the
//! log and verifies the chunks again (a torn write is fetched again), so a
//! download resumes where it stopped. A complete file is checked against
//! the origin's sha256 where there is one and renamed to its name; the
//! revision is complete when every file is. Entry point: [`Store::open`].
//!
//! Layout under the cache: `<org>--<name>/<revision>/` holds the files
//! (the folder vLLM is given), and its `.orchestrator/` the manifest, the
//! chunk log and the `complete` mark.

use crate::manifest::{Manifest, ManifestError, Offer};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

/// The suffix of a file still being fetched.
pub const PARTIAL: &str = ".orchestrator-partial";
const STATE: &str = ".orchestrator";

/// What went wrong with the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file of the store could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A chunk whose bytes are not the ones the offer named.
    #[error(
        "chunk {chunk} of {file:?} is corrupt: sha256 {got}, expected {expected} ({bytes} bytes)"
    )]
    Corrupt {
        /// The file.
        file: String,
        /// The chunk.
        chunk: u32,
        /// The digest named.
        expected: String,
        /// The digest of what came.
        got: String,
        /// Its length.
        bytes: usize,
    },
    /// A complete file that is not the origin's.
    #[error(
        "{file:?} as fetched has sha256 {got}, but the origin names {expected}; its chunks are dropped and fetched again"
    )]
    FileDigest {
        /// The file.
        file: String,
        /// The origin's digest.
        expected: String,
        /// The digest of what was fetched.
        got: String,
    },
    /// A chunk that does not exist or is not here.
    #[error("chunk {chunk} of file {file} is not in this store")]
    NoChunk {
        /// The file's index.
        file: usize,
        /// The chunk.
        chunk: u32,
    },
    /// A bad manifest.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The sha256 of `bytes`, hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[derive(Debug)]
struct State {
    have: Vec<BTreeMap<u32, String>>,
    /// Files renamed to their own names.
    done: Vec<bool>,
    complete: bool,
}

/// One revision on disk.
#[derive(Debug)]
pub struct Store {
    folder: PathBuf,
    manifest: Manifest,
    state: Mutex<State>,
    log: Mutex<std::fs::File>,
}

impl Store {
    /// The folder of `repo` at `revision` under `cache`.
    pub fn folder(cache: &Path, repo: &str, revision: &str) -> PathBuf {
        cache
            .join(repo.replace('/', "--"))
            .join(revision.replace('/', "--"))
    }

    /// The manifest of a complete revision under `cache`, if there is one.
    pub fn cached(cache: &Path, repo: &str, revision: &str) -> Option<Manifest> {
        let state = Self::folder(cache, repo, revision).join(STATE);
        if !state.join("complete").is_file() {
            return None;
        }
        let text = std::fs::read(state.join("manifest.json")).ok()?;
        let manifest: Manifest = serde_json::from_slice(&text).ok()?;
        manifest.validate().ok()?;
        Some(manifest)
    }

    /// Opens (or makes) the store of `manifest` under `cache`, resuming
    /// from its chunk log: every chunk logged is verified again.
    pub fn open(cache: &Path, manifest: Manifest) -> Result<Self, StoreError> {
        manifest.validate()?;
        let folder = Self::folder(cache, &manifest.repo, &manifest.revision);
        let state_dir = folder.join(STATE);
        std::fs::create_dir_all(&state_dir).map_err(io(&state_dir))?;
        let manifest_path = state_dir.join("manifest.json");
        let log_path = state_dir.join("chunks.log");
        let complete_mark = state_dir.join("complete");
        let same = std::fs::read(&manifest_path)
            .ok()
            .and_then(|t| serde_json::from_slice::<Manifest>(&t).ok())
            .is_some_and(|m| m == manifest);
        if !same {
            // Another cut of the revision (another chunk size): start over.
            let _ = std::fs::remove_file(&log_path);
            let _ = std::fs::remove_file(&complete_mark);
            let text = serde_json::to_vec_pretty(&manifest).unwrap_or_default();
            write_atomically(&manifest_path, &text)?;
        }
        let complete = complete_mark.is_file();
        let files = manifest.files.len();
        let mut state = State {
            have: vec![BTreeMap::new(); files],
            done: vec![false; files],
            complete,
        };
        let logged = read_log(&log_path, &manifest);
        let store_files: Vec<PathBuf> = (0..files)
            .map(|f| folder.join(&manifest.files[f].path))
            .collect();
        for (f, final_path) in store_files.iter().enumerate() {
            state.done[f] = complete
                || (final_path.is_file()
                    && logged.iter().filter(|(lf, _, _)| *lf == f).count()
                        == manifest.chunks(f) as usize
                    && std::fs::metadata(final_path)
                        .is_ok_and(|m| m.len() == manifest.files[f].size));
        }
        for (f, chunk, digest) in logged {
            let ok = complete || {
                let path = if state.done[f] {
                    store_files[f].clone()
                } else {
                    partial_of(&store_files[f])
                };
                read_span(&path, &manifest, f, chunk).is_ok_and(|b| sha256_hex(&b) == digest)
            };
            if ok {
                state.have[f].insert(chunk, digest);
            } else {
                state.done[f] = false;
            }
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(io(&log_path))?;
        Ok(Self {
            folder,
            manifest,
            state: Mutex::new(state),
            log: Mutex::new(log),
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        match self.state.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// The folder holding the files (what vLLM is given).
    pub fn path(&self) -> &Path {
        &self.folder
    }

    /// The revision.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Whether every file is here, verified and named.
    pub fn is_complete(&self) -> bool {
        self.state().complete
    }

    /// The chunks not here yet.
    pub fn missing(&self) -> Vec<(usize, u32)> {
        let state = self.state();
        self.manifest
            .all_chunks()
            .filter(|(f, c)| !state.have[*f].contains_key(c))
            .collect()
    }

    /// Bytes here, verified.
    pub fn done_bytes(&self) -> u64 {
        let state = self.state();
        state
            .have
            .iter()
            .enumerate()
            .flat_map(|(f, chunks)| {
                chunks
                    .keys()
                    .filter_map(move |c| self.manifest.chunk_span(f, *c).map(|(_, len)| len))
            })
            .sum()
    }

    /// What this node offers its peers.
    pub fn offer(&self) -> Offer {
        Offer {
            manifest: self.manifest.clone(),
            have: self.state().have.clone(),
        }
    }

    fn file_path(&self, file: usize) -> PathBuf {
        self.folder.join(&self.manifest.files[file].path)
    }

    /// Writes chunk `chunk` of file `file` after checking its length and,
    /// with `expected`, its sha256; returns its sha256. Blocking (disk).
    pub fn put(
        &self,
        file: usize,
        chunk: u32,
        bytes: &[u8],
        expected: Option<&str>,
    ) -> Result<String, StoreError> {
        let (start, len) = self
            .manifest
            .chunk_span(file, chunk)
            .ok_or(StoreError::NoChunk { file, chunk })?;
        let digest = sha256_hex(bytes);
        let name = &self.manifest.files[file].path;
        if bytes.len() as u64 != len || expected.is_some_and(|e| !e.eq_ignore_ascii_case(&digest)) {
            return Err(StoreError::Corrupt {
                file: name.clone(),
                chunk,
                expected: expected.unwrap_or("(none)").to_string(),
                got: digest,
                bytes: bytes.len(),
            });
        }
        if self.state().have[file].contains_key(&chunk) {
            return Ok(digest);
        }
        let path = partial_of(&self.file_path(file));
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io(dir))?;
        }
        let handle = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .open(&path)
            .map_err(io(&path))?;
        handle.write_all_at(bytes, start).map_err(io(&path))?;
        handle.sync_data().map_err(io(&path))?;
        {
            let mut log = match self.log.lock() {
                Ok(l) => l,
                Err(poisoned) => poisoned.into_inner(),
            };
            writeln!(log, "{file} {chunk} {digest}").map_err(io(&path))?;
        }
        self.state().have[file].insert(chunk, digest.clone());
        Ok(digest)
    }

    /// The bytes of a chunk this store holds. Blocking (disk).
    pub fn read(&self, file: usize, chunk: u32) -> Result<Vec<u8>, StoreError> {
        let done = {
            let state = self.state();
            if !state.have.get(file).is_some_and(|h| h.contains_key(&chunk)) {
                return Err(StoreError::NoChunk { file, chunk });
            }
            state.done[file]
        };
        let path = if done {
            self.file_path(file)
        } else {
            partial_of(&self.file_path(file))
        };
        read_span(&path, &self.manifest, file, chunk).map_err(io(&path))
    }

    /// Once every chunk is here: each file checked against the origin's
    /// sha256 (a mismatch drops its chunks), flushed and renamed; then the
    /// revision marked complete. Blocking (disk).
    pub fn finish(&self) -> Result<(), StoreError> {
        if self.is_complete() {
            return Ok(());
        }
        for (f, file) in self.manifest.files.iter().enumerate() {
            let (all, done) = {
                let state = self.state();
                (
                    state.have[f].len() == self.manifest.chunks(f) as usize,
                    state.done[f],
                )
            };
            if done {
                continue;
            }
            if !all {
                return Err(StoreError::NoChunk {
                    file: f,
                    chunk: (0..self.manifest.chunks(f))
                        .find(|c| !self.state().have[f].contains_key(c))
                        .unwrap_or(0),
                });
            }
            let target = self.file_path(f);
            let partial = partial_of(&target);
            if file.size == 0 {
                if let Some(dir) = partial.parent() {
                    std::fs::create_dir_all(dir).map_err(io(dir))?;
                }
                std::fs::File::create(&partial).map_err(io(&partial))?;
            }
            if let Some(expected) = &file.sha256 {
                let got = file_sha256(&partial).map_err(io(&partial))?;
                if !got.eq_ignore_ascii_case(expected) {
                    self.state().have[f].clear();
                    return Err(StoreError::FileDigest {
                        file: file.path.clone(),
                        expected: expected.clone(),
                        got,
                    });
                }
            }
            let handle = std::fs::File::open(&partial).map_err(io(&partial))?;
            handle.sync_all().map_err(io(&partial))?;
            std::fs::rename(&partial, &target).map_err(io(&target))?;
            self.state().done[f] = true;
        }
        let mark = self.folder.join(STATE).join("complete");
        write_atomically(&mark, b"complete\n")?;
        self.state().complete = true;
        Ok(())
    }
}

fn partial_of(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(PARTIAL);
    PathBuf::from(name)
}

fn read_span(
    path: &Path,
    manifest: &Manifest,
    file: usize,
    chunk: u32,
) -> std::io::Result<Vec<u8>> {
    let (start, len) = manifest
        .chunk_span(file, chunk)
        .ok_or_else(|| std::io::Error::other("no such chunk"))?;
    let handle = std::fs::File::open(path)?;
    let mut out = vec![0u8; len as usize];
    handle.read_exact_at(&mut out, start)?;
    Ok(out)
}

fn file_sha256(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher)?;
    Ok(hex::encode(hasher.finalize()))
}

/// The log's entries that name a chunk of the manifest (other lines are
/// ignored: a torn last line after a crash).
fn read_log(path: &Path, manifest: &Manifest) -> Vec<(usize, u32, String)> {
    let Ok(file) = std::fs::File::open(path) else {
        return Vec::new();
    };
    std::io::BufReader::new(file)
        .lines()
        .map_while(Result::ok)
        .filter_map(|line| {
            let mut parts = line.split(' ');
            let f: usize = parts.next()?.parse().ok()?;
            let c: u32 = parts.next()?.parse().ok()?;
            let digest = parts.next()?.to_string();
            (f < manifest.files.len()
                && c < manifest.chunks(f)
                && crate::manifest::is_sha256(&digest))
            .then_some((f, c, digest))
        })
        .collect()
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let mut temp = path.as_os_str().to_owned();
    temp.push(format!(".tmp-{}", std::process::id()));
    let temp = PathBuf::from(temp);
    let mut file = std::fs::File::create(&temp).map_err(io(&temp))?;
    file.write_all(bytes).map_err(io(&temp))?;
    file.sync_all().map_err(io(&temp))?;
    std::fs::rename(&temp, path).map_err(io(path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::ManifestFile;

    fn manifest(content: &[u8], with_digest: bool) -> Manifest {
        Manifest {
            repo: "org/model".into(),
            revision: "r1".into(),
            chunk_bytes: 1 << 16,
            files: vec![
                ManifestFile {
                    path: "sub/weights.bin".into(),
                    size: content.len() as u64,
                    sha256: with_digest.then(|| sha256_hex(content)),
                },
                ManifestFile {
                    path: "empty.txt".into(),
                    size: 0,
                    sha256: None,
                },
            ],
        }
    }

    fn content() -> Vec<u8> {
        (0..(3 << 16) + 100).map(|i| (i * 7 % 251) as u8).collect()
    }

    fn chunk(content: &[u8], c: usize) -> &[u8] {
        let end = ((c + 1) << 16).min(content.len());
        &content[c << 16..end]
    }

    #[test]
    fn chunks_resume_after_a_restart_and_a_torn_write_is_fetched_again() {
        let cache = tempfile::tempdir().unwrap();
        let data = content();
        let store = Store::open(cache.path(), manifest(&data, true)).unwrap();
        assert_eq!(store.missing().len(), 4);
        store.put(0, 0, chunk(&data, 0), None).unwrap();
        store
            .put(0, 2, chunk(&data, 2), Some(&sha256_hex(chunk(&data, 2))))
            .unwrap();
        drop(store);
        // A write the log names but the disk lost.
        let partial =
            partial_of(&Store::folder(cache.path(), "org/model", "r1").join("sub/weights.bin"));
        let handle = std::fs::OpenOptions::new()
            .write(true)
            .open(&partial)
            .unwrap();
        handle.write_all_at(&[0u8; 10], 2 << 16).unwrap();
        let store = Store::open(cache.path(), manifest(&data, true)).unwrap();
        assert_eq!(store.missing(), vec![(0, 1), (0, 2), (0, 3)]);
        for c in 1..4 {
            store.put(0, c as u32, chunk(&data, c), None).unwrap();
        }
        store.finish().unwrap();
        let folder = store.path().to_path_buf();
        assert_eq!(std::fs::read(folder.join("sub/weights.bin")).unwrap(), data);
        assert_eq!(std::fs::read(folder.join("empty.txt")).unwrap(), b"");
        assert!(!partial.exists());
        assert_eq!(
            Store::cached(cache.path(), "org/model", "r1"),
            Some(manifest(&data, true))
        );
        // Served from the named file once complete.
        assert_eq!(store.read(0, 3).unwrap(), chunk(&data, 3));
    }

    #[test]
    fn a_chunk_with_the_wrong_digest_or_length_is_refused() {
        let cache = tempfile::tempdir().unwrap();
        let data = content();
        let store = Store::open(cache.path(), manifest(&data, false)).unwrap();
        let mut bad = chunk(&data, 1).to_vec();
        bad[5] ^= 1;
        let err = store
            .put(0, 1, &bad, Some(&sha256_hex(chunk(&data, 1))))
            .unwrap_err();
        assert!(matches!(err, StoreError::Corrupt { chunk: 1, .. }), "{err}");
        assert!(store.put(0, 1, &data[..10], None).is_err());
        assert_eq!(store.missing().len(), 4);
        assert!(matches!(store.read(0, 1), Err(StoreError::NoChunk { .. })));
    }

    #[test]
    fn a_file_unlike_the_origins_digest_is_dropped() {
        let cache = tempfile::tempdir().unwrap();
        let data = content();
        let mut m = manifest(&data, true);
        m.files[0].sha256 = Some("0".repeat(64));
        let store = Store::open(cache.path(), m).unwrap();
        for c in 0..4 {
            store.put(0, c as u32, chunk(&data, c), None).unwrap();
        }
        let err = store.finish().unwrap_err();
        assert!(matches!(err, StoreError::FileDigest { .. }), "{err}");
        assert_eq!(store.missing().len(), 4);
        assert!(!store.is_complete());
    }
}
