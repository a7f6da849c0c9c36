//! Ray's token authentication (Ray >= 2.52), as Ray's own clients do it.
//! Entry point: [`RayAuth::from_env`].
//!
//! With `RAY_AUTH_MODE=token` every GCS and raylet call carries the
//! metadata `authorization: Bearer <token>`. The token comes, in Ray's
//! order, from `RAY_AUTH_TOKEN` (the value), `RAY_AUTH_TOKEN_PATH` (a
//! file: unreadable or empty is an error, with no fallback), or Ray's
//! default file `~/.ray/auth_token`. Surrounding whitespace (a trailing
//! newline in a mounted Secret) is not part of the token.
//!
//! The token is never printed: [`RayAuth`]'s `Debug` says only whether
//! one is set.

use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The metadata key Ray's gRPC clients and servers use.
pub(crate) const AUTHORIZATION: &str = "authorization";

/// The largest token file read (Ray's tokens are 32 hex characters).
const MAX_TOKEN_FILE: u64 = 64 * 1024;

/// What can be wrong with the token configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// `RAY_AUTH_MODE` is neither `disabled` nor `token`.
    #[error(
        "RAY_AUTH_MODE={0:?} is not a Ray authentication mode; set it to `token` (with RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH) or `disabled`, the same on every node"
    )]
    Mode(String),
    /// Token mode, but no token anywhere.
    #[error(
        "RAY_AUTH_MODE=token but no token is set: give this pod the cluster's token in RAY_AUTH_TOKEN or a file named by RAY_AUTH_TOKEN_PATH (KubeRay: the Secret that authOptions creates), or write it to {0}"
    )]
    Missing(String),
    /// `RAY_AUTH_TOKEN_PATH` cannot be read or is empty.
    #[error(
        "RAY_AUTH_TOKEN_PATH={path}: {reason}; mount the token's Secret there or unset RAY_AUTH_TOKEN_PATH"
    )]
    File {
        /// The path as given.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The token holds characters that cannot be sent as gRPC metadata.
    #[error(
        "the Ray token (from {0}) holds characters that cannot be sent in a header (control characters or non-ASCII); use the token `ray get-auth-token` prints"
    )]
    Unprintable(String),
}

/// How this process authenticates to Ray: no token, or a token.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct RayAuth {
    /// `Bearer <token>`, ready to send.
    bearer: Option<Arc<str>>,
    /// Where the token came from, for messages (never the token).
    from: Option<Arc<str>>,
}

impl std::fmt::Debug for RayAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.from {
            Some(from) => write!(f, "RayAuth(token from {from}, <redacted>)"),
            None => write!(f, "RayAuth(disabled)"),
        }
    }
}

impl RayAuth {
    /// No authentication (Ray's default).
    pub fn disabled() -> Self {
        Self::default()
    }

    /// Authenticates with `token` (surrounding whitespace removed).
    pub fn token(token: &str, from: &str) -> Result<Self, AuthError> {
        let token = token.trim();
        if token.is_empty() {
            return Err(AuthError::Missing(default_token_path_text(None)));
        }
        if !token.bytes().all(|b| (0x21..0x7f).contains(&b)) {
            return Err(AuthError::Unprintable(from.to_string()));
        }
        Ok(Self {
            bearer: Some(format!("Bearer {token}").into()),
            from: Some(from.into()),
        })
    }

    /// Whether a token is sent.
    pub fn is_enabled(&self) -> bool {
        self.bearer.is_some()
    }

    /// Where the token came from (`RAY_AUTH_TOKEN`, a path), when set.
    pub fn source(&self) -> Option<&str> {
        self.from.as_deref()
    }

    /// Reads this process's environment the way Ray does.
    pub fn from_env() -> Result<Self, AuthError> {
        let var = |name: &str| std::env::var_os(name).map(|v| v.to_string_lossy().into_owned());
        Self::from_vars(
            var("RAY_AUTH_MODE").as_deref(),
            var("RAY_AUTH_TOKEN").as_deref(),
            var("RAY_AUTH_TOKEN_PATH").as_deref(),
            std::env::var_os("HOME").map(PathBuf::from).as_deref(),
        )
    }

    /// [`from_env`](Self::from_env) with the variables given.
    pub fn from_vars(
        mode: Option<&str>,
        token: Option<&str>,
        token_path: Option<&str>,
        home: Option<&Path>,
    ) -> Result<Self, AuthError> {
        match mode.map(str::trim).map(str::to_ascii_lowercase).as_deref() {
            None | Some("") | Some("disabled") => return Ok(Self::disabled()),
            Some("token") => {}
            Some(_) => return Err(AuthError::Mode(mode.unwrap_or_default().to_string())),
        }
        if let Some(token) = token.filter(|t| !t.trim().is_empty()) {
            return Self::token(token, "RAY_AUTH_TOKEN");
        }
        if let Some(path) = token_path.filter(|p| !p.is_empty()) {
            let text = read_token_file(Path::new(path)).map_err(|reason| AuthError::File {
                path: path.to_string(),
                reason,
            })?;
            return Self::token(&text, path);
        }
        let default = home.map(|h| h.join(".ray").join("auth_token"));
        if let Some(default) = &default
            && let Ok(text) = read_token_file(default)
            && !text.trim().is_empty()
        {
            return Self::token(&text, &default.display().to_string());
        }
        Err(AuthError::Missing(default_token_path_text(home)))
    }

    /// Adds the token to a request's metadata (nothing when disabled).
    pub(crate) fn apply<T>(&self, request: &mut tonic::Request<T>) {
        if let Some(bearer) = &self.bearer
            && let Ok(value) = bearer.parse()
        {
            request.metadata_mut().insert(AUTHORIZATION, value);
        }
    }

    /// `Authorization` header value for Ray's HTTP endpoints, when set.
    /// It is the secret itself: never log it.
    pub fn bearer(&self) -> Option<&str> {
        self.bearer.as_deref()
    }
}

fn default_token_path_text(home: Option<&Path>) -> String {
    match home {
        Some(h) => h.join(".ray/auth_token").display().to_string(),
        None => "~/.ray/auth_token".to_string(),
    }
}

fn read_token_file(path: &Path) -> Result<String, String> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| format!("cannot be read ({e})"))?;
    let mut text = String::new();
    file.take(MAX_TOKEN_FILE)
        .read_to_string(&mut text)
        .map_err(|e| format!("cannot be read as text ({e})"))?;
    if text.trim().is_empty() {
        return Err("the file is empty".to_string());
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rays_order_value_then_path_then_default_file() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let file = dir.path().join("token");
        std::fs::write(&file, "from-file\n").unwrap_or_else(|e| panic!("{e}"));
        std::fs::create_dir_all(dir.path().join(".ray")).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(dir.path().join(".ray/auth_token"), "from-home")
            .unwrap_or_else(|e| panic!("{e}"));
        let path = file.to_str();
        let home = Some(dir.path());
        let a = RayAuth::from_vars(Some("token"), Some("from-value"), path, home);
        assert_eq!(
            a.ok()
                .and_then(|a| a.bearer().map(str::to_string))
                .as_deref(),
            Some("Bearer from-value")
        );
        let a = RayAuth::from_vars(Some("token"), None, path, home);
        assert_eq!(
            a.ok()
                .and_then(|a| a.bearer().map(str::to_string))
                .as_deref(),
            Some("Bearer from-file")
        );
        let a = RayAuth::from_vars(Some("TOKEN"), Some("  "), None, home);
        assert_eq!(
            a.ok()
                .and_then(|a| a.bearer().map(str::to_string))
                .as_deref(),
            Some("Bearer from-home")
        );
        // Disabled: nothing is read.
        let a = RayAuth::from_vars(None, Some("x"), path, home);
        assert_eq!(a, Ok(RayAuth::disabled()));
        let a = RayAuth::from_vars(Some("disabled"), Some("x"), path, home);
        assert_eq!(a, Ok(RayAuth::disabled()));
    }

    #[test]
    fn a_missing_or_empty_token_file_is_an_error_with_no_fallback() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        std::fs::create_dir_all(dir.path().join(".ray")).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(dir.path().join(".ray/auth_token"), "from-home")
            .unwrap_or_else(|e| panic!("{e}"));
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "\n").unwrap_or_else(|e| panic!("{e}"));
        let e = RayAuth::from_vars(Some("token"), None, empty.to_str(), Some(dir.path()));
        assert!(
            matches!(&e, Err(AuthError::File { reason, .. }) if reason.contains("empty")),
            "{e:?}"
        );
        let e = RayAuth::from_vars(
            Some("token"),
            None,
            Some("/nonexistent/t"),
            Some(dir.path()),
        );
        assert!(matches!(&e, Err(AuthError::File { .. })), "{e:?}");
        let e = RayAuth::from_vars(Some("token"), None, None, Some(Path::new("/nonexistent")));
        let text = e.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            text.contains("RAY_AUTH_TOKEN") && text.contains("authOptions"),
            "{text}"
        );
        let e = RayAuth::from_vars(Some("tokens"), None, None, None);
        assert!(matches!(e, Err(AuthError::Mode(_))));
        let e = RayAuth::from_vars(Some("token"), Some("a\nb"), None, None);
        assert!(matches!(e, Err(AuthError::Unprintable(_))));
    }

    #[test]
    fn debug_never_shows_the_token() {
        let a = RayAuth::token("s3cr3t-canary", "RAY_AUTH_TOKEN").unwrap_or_else(|e| panic!("{e}"));
        let shown = format!("{a:?}");
        assert!(!shown.contains("s3cr3t-canary"), "{shown}");
        assert!(shown.contains("RAY_AUTH_TOKEN"));
    }
}
