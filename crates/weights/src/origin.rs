//! Where a revision comes from: a mirror of the Hugging Face hub's API
//! (`HF_ENDPOINT`-style: `/api/models/<repo>/revision/<rev>?blobs=true`
//! lists the files, their sizes and LFS sha256s and resolves the revision
//! to a commit; `/<repo>/resolve/<commit>/<file>` serves each, with
//! ranges), or a plain HTTP(S) directory (its files named in the
//! configuration, or listed by nginx's JSON autoindex). A token, where
//! one is configured, is read from the environment and sent as a bearer
//! token; it never appears in a URL, a log line or an error. Entry point:
//! [`Origin::new`].

use crate::http::{HttpClient, HttpError};
use crate::manifest::{Manifest, ManifestError, ManifestFile, safe_path};
use sha2::{Digest, Sha256};
use std::time::Duration;

/// The largest listing read from an origin.
const MAX_LISTING_BYTES: usize = 32 << 20;
/// Folders of a directory origin walked at most.
const MAX_FOLDERS: usize = 1_000;

/// Where the files come from, as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OriginSpec {
    /// A hub mirror.
    Hub {
        /// Its base URL (what `HF_ENDPOINT` would be).
        endpoint: String,
        /// `org/name`.
        repo: String,
        /// A branch, tag or commit.
        revision: String,
        /// The environment variable holding the token, if any.
        token_env: Option<String>,
    },
    /// A plain directory.
    Directory {
        /// Its URL.
        url: String,
        /// The model's name in the cache.
        name: String,
        /// The revision's name; without one, a digest of the listing.
        revision: Option<String>,
        /// The files; without them, nginx's JSON autoindex is read.
        files: Vec<String>,
        /// The environment variable holding the token, if any.
        token_env: Option<String>,
    },
}

/// What went wrong with the origin.
#[derive(Debug, thiserror::Error)]
pub enum OriginError {
    /// No usable answer.
    #[error("origin: {0}")]
    Http(#[from] HttpError),
    /// An answer other than the one asked for.
    #[error("origin: {url} answered {status}{hint}")]
    Status {
        /// The URL.
        url: String,
        /// The status.
        status: u16,
        /// What to do.
        hint: String,
    },
    /// A listing that does not say what is needed.
    #[error("origin: the listing at {url} is not usable: {reason}")]
    Listing {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// The token's variable is set but not valid text.
    #[error("origin: the token variable {0} is not valid text")]
    Token(String),
    /// What the listing names is refused.
    #[error("origin: {0}")]
    Manifest(#[from] ManifestError),
}

/// A revision as the origin lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listing {
    /// The revision resolved.
    pub revision: String,
    /// The files, sorted.
    pub files: Vec<ManifestFile>,
}

/// One origin, with its token.
#[derive(Clone)]
pub struct Origin {
    spec: OriginSpec,
    http: HttpClient,
    token: Option<String>,
    timeout: Duration,
}

impl std::fmt::Debug for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Origin")
            .field("spec", &self.spec)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// Percent-encodes what a URL path segment may not hold as is.
fn encode(text: &str) -> String {
    let mut out = String::new();
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~/".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

fn trimmed(url: &str) -> &str {
    url.trim_end_matches('/')
}

impl Origin {
    /// The origin of `spec`, its token read from the environment; every
    /// answer bounded by `timeout`.
    pub fn new(spec: OriginSpec, timeout: Duration) -> Result<Self, OriginError> {
        let token_env = match &spec {
            OriginSpec::Hub { token_env, .. } | OriginSpec::Directory { token_env, .. } => {
                token_env.clone()
            }
        };
        let token = match token_env {
            Some(name) => match std::env::var(&name) {
                Ok(value) if !value.trim().is_empty() => Some(value.trim().to_string()),
                Ok(_) | Err(std::env::VarError::NotPresent) => None,
                Err(std::env::VarError::NotUnicode(_)) => return Err(OriginError::Token(name)),
            },
            None => None,
        };
        Ok(Self {
            spec,
            http: HttpClient::new()?,
            token,
            timeout,
        })
    }

    /// The model's name in the cache.
    pub fn repo(&self) -> &str {
        match &self.spec {
            OriginSpec::Hub { repo, .. } => repo,
            OriginSpec::Directory { name, .. } => name,
        }
    }

    /// The origin in words (no token).
    pub fn describe(&self) -> String {
        match &self.spec {
            OriginSpec::Hub {
                endpoint,
                repo,
                revision,
                ..
            } => format!("hub {} ({repo} at {revision})", trimmed(endpoint)),
            OriginSpec::Directory { url, .. } => format!("directory {}", trimmed(url)),
        }
    }

    /// The group's name for what is configured: the same on every node of
    /// one configuration, another for another origin, repo or revision.
    pub fn id(&self) -> String {
        let text = format!("{:?}", self.spec);
        hex::encode(&Sha256::digest(text.as_bytes())[..12])
    }

    fn headers(&self) -> Vec<(&'static str, String)> {
        self.token
            .as_ref()
            .map(|t| vec![("authorization", format!("Bearer {t}"))])
            .unwrap_or_default()
    }

    fn status_error(&self, url: &str, status: u16) -> OriginError {
        let hint = match (status, &self.spec) {
            (
                401 | 403,
                OriginSpec::Hub {
                    token_env, repo, ..
                },
            ) => format!(
                ": set {} to a token that may read {repo}",
                token_env
                    .as_deref()
                    .unwrap_or("a token variable (weights.token-env)")
            ),
            (404, _) => ": no such repository, revision or file at the origin".into(),
            _ => String::new(),
        };
        OriginError::Status {
            url: url.to_string(),
            status,
            hint,
        }
    }

    /// The revision's files, sizes and digests, its revision resolved.
    pub async fn list(&self, chunk_bytes: u64) -> Result<Manifest, OriginError> {
        let listing = match &self.spec {
            OriginSpec::Hub {
                endpoint,
                repo,
                revision,
                ..
            } => self.list_hub(endpoint, repo, revision).await?,
            OriginSpec::Directory {
                url,
                revision,
                files,
                ..
            } => self.list_directory(url, revision.as_deref(), files).await?,
        };
        let manifest = Manifest {
            repo: self.repo().to_string(),
            revision: listing.revision,
            chunk_bytes,
            files: listing.files,
        };
        manifest.validate()?;
        Ok(manifest)
    }

    async fn list_hub(
        &self,
        endpoint: &str,
        repo: &str,
        revision: &str,
    ) -> Result<Listing, OriginError> {
        let url = format!(
            "{}/api/models/{}/revision/{}?blobs=true",
            trimmed(endpoint),
            encode(repo),
            encode(revision)
        );
        let answer = self
            .http
            .get(&url, &self.headers(), MAX_LISTING_BYTES, self.timeout)
            .await?;
        if answer.status != 200 {
            return Err(self.status_error(&url, answer.status));
        }
        let bad = |reason: String| OriginError::Listing {
            url: url.clone(),
            reason,
        };
        let info: serde_json::Value =
            serde_json::from_slice(&answer.body).map_err(|e| bad(e.to_string()))?;
        let resolved = info["sha"].as_str().unwrap_or(revision).to_string();
        let siblings = info["siblings"]
            .as_array()
            .ok_or_else(|| bad("no `siblings`".into()))?;
        let mut files = Vec::new();
        for sibling in siblings {
            let path = sibling["rfilename"]
                .as_str()
                .ok_or_else(|| bad("a sibling without `rfilename`".into()))?;
            let size = sibling["size"]
                .as_u64()
                .or_else(|| sibling["lfs"]["size"].as_u64())
                .ok_or_else(|| bad(format!("{path:?} has no size (is ?blobs=true served?)")))?;
            files.push(ManifestFile {
                path: path.to_string(),
                size,
                sha256: sibling["lfs"]["sha256"].as_str().map(str::to_string),
            });
        }
        files.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(Listing {
            revision: resolved,
            files,
        })
    }

    async fn list_directory(
        &self,
        url: &str,
        revision: Option<&str>,
        named: &[String],
    ) -> Result<Listing, OriginError> {
        let mut files = Vec::new();
        let mut stamps = String::new();
        if named.is_empty() {
            let mut folders = vec![String::new()];
            let mut walked = 0;
            while let Some(folder) = folders.pop() {
                walked += 1;
                if walked > MAX_FOLDERS {
                    return Err(OriginError::Listing {
                        url: url.to_string(),
                        reason: format!("more than {MAX_FOLDERS} folders"),
                    });
                }
                for (name, is_dir, size, mtime) in self.autoindex(url, &folder).await? {
                    let path = format!("{folder}{name}");
                    if is_dir {
                        folders.push(format!("{path}/"));
                    } else {
                        stamps.push_str(&format!("{path} {size} {mtime}\n"));
                        files.push(ManifestFile {
                            path,
                            size,
                            sha256: None,
                        });
                    }
                }
            }
        } else {
            for path in named {
                if !safe_path(path) {
                    return Err(ManifestError::UnsafePath(path.clone()).into());
                }
                let size = self.size_of(url, path).await?;
                stamps.push_str(&format!("{path} {size}\n"));
                files.push(ManifestFile {
                    path: path.clone(),
                    size,
                    sha256: None,
                });
            }
        }
        files.sort_by(|a, b| a.path.cmp(&b.path));
        let revision = match revision {
            Some(r) => r.to_string(),
            None => format!("listing-{}", hex::encode(&Sha256::digest(stamps)[..8])),
        };
        Ok(Listing { revision, files })
    }

    /// One folder of nginx's JSON autoindex: (name, folder?, size, mtime).
    async fn autoindex(
        &self,
        url: &str,
        folder: &str,
    ) -> Result<Vec<(String, bool, u64, String)>, OriginError> {
        let at = format!("{}/{}", trimmed(url), encode(folder));
        let answer = self
            .http
            .get(&at, &self.headers(), MAX_LISTING_BYTES, self.timeout)
            .await?;
        if answer.status != 200 {
            return Err(self.status_error(&at, answer.status));
        }
        let bad = |reason: &str| OriginError::Listing {
            url: at.clone(),
            reason: format!(
                "{reason}; serve it with nginx's `autoindex on; autoindex_format json;`, or name the files in weights.files"
            ),
        };
        let entries: Vec<serde_json::Value> =
            serde_json::from_slice(&answer.body).map_err(|_| bad("not a JSON listing"))?;
        let mut out = Vec::new();
        for entry in entries {
            let name = entry["name"]
                .as_str()
                .ok_or_else(|| bad("an entry without a name"))?;
            let is_dir = entry["type"].as_str() == Some("directory");
            if !is_dir && entry["type"].as_str() != Some("file") {
                continue;
            }
            out.push((
                name.to_string(),
                is_dir,
                entry["size"].as_u64().unwrap_or(0),
                entry["mtime"].as_str().unwrap_or_default().to_string(),
            ));
        }
        Ok(out)
    }

    /// A file's size, from a one-byte range.
    async fn size_of(&self, url: &str, path: &str) -> Result<u64, OriginError> {
        let at = format!("{}/{}", trimmed(url), encode(path));
        let mut headers = self.headers();
        headers.push(("range", "bytes=0-0".into()));
        let answer = match self.http.get(&at, &headers, 1, self.timeout).await {
            Err(HttpError::TooLarge { .. }) => {
                return Err(OriginError::Listing {
                    url: at,
                    reason: "it does not answer range requests".into(),
                });
            }
            other => other?,
        };
        match answer.status {
            206 => answer
                .header("content-range")
                .and_then(|r| r.rsplit('/').next())
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| OriginError::Listing {
                    url: at,
                    reason: "a range answer without the file's size".into(),
                }),
            // A range past the end of an empty file.
            416 | 200 if answer.body.is_empty() => Ok(0),
            status => Err(self.status_error(&at, status)),
        }
    }

    /// The URL of `path` at `revision`.
    fn url_of(&self, revision: &str, path: &str) -> String {
        match &self.spec {
            OriginSpec::Hub { endpoint, repo, .. } => format!(
                "{}/{}/resolve/{}/{}",
                trimmed(endpoint),
                encode(repo),
                encode(revision),
                encode(path)
            ),
            OriginSpec::Directory { url, .. } => format!("{}/{}", trimmed(url), encode(path)),
        }
    }

    /// `len` bytes of `path` at `revision` from `start` (a file of `size`).
    pub async fn range(
        &self,
        revision: &str,
        path: &str,
        (start, len, size): (u64, u64, u64),
    ) -> Result<Vec<u8>, OriginError> {
        let url = self.url_of(revision, path);
        let mut headers = self.headers();
        let whole = start == 0 && len == size;
        if !whole {
            headers.push(("range", format!("bytes={start}-{}", start + len - 1)));
        }
        let answer = self
            .http
            .get(&url, &headers, len as usize, self.timeout)
            .await?;
        match answer.status {
            206 | 200 if answer.body.len() as u64 == len => Ok(answer.body),
            206 | 200 => Err(OriginError::Listing {
                url,
                reason: format!("asked {len} bytes at {start}, got {}", answer.body.len()),
            }),
            status => Err(self.status_error(&url, status)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_encoded_and_the_token_never_shown() {
        assert_eq!(encode("org/my model+1"), "org/my%20model%2B1");
        let mut spec = OriginSpec::Hub {
            endpoint: "http://mirror/".into(),
            repo: "org/m".into(),
            revision: "main".into(),
            token_env: Some("ORCH_WEIGHTS_TEST_TOKEN_UNSET".into()),
        };
        let origin = Origin::new(spec.clone(), Duration::from_secs(1)).unwrap();
        assert_eq!(
            origin.url_of("abc", "a b.json"),
            "http://mirror/org/m/resolve/abc/a%20b.json"
        );
        assert_eq!(origin.describe(), "hub http://mirror (org/m at main)");
        let OriginSpec::Hub { revision, .. } = &mut spec else {
            unreachable!()
        };
        *revision = "v2".into();
        let other = Origin::new(spec, Duration::from_secs(1)).unwrap();
        assert_ne!(origin.id(), other.id());
        assert!(!format!("{origin:?}").contains("Bearer"));
    }
}
