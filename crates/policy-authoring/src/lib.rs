#![warn(unreachable_pub)]
//! # orchestrator-policy-authoring
//!
//! What a policy author runs, as a library the `orchestrator plugin`
//! commands print from:
//!
//! - [`scaffold`]: a new policy project of a world, in Rust or Python,
//!   that builds as written and passes its own fixture cases
//!   ([`scaffold::new_project`]);
//! - [`trial`]: one call of a policy on a JSON input, the input checked as
//!   strictly as the host checks it ([`trial::call`]);
//! - [`cases`]: a directory of fixture cases run through the real plugin
//!   host ([`cases::run_cases`]);
//! - [`publish`]: a policy pushed to an OCI registry, signed with a key
//!   when given ([`publish::push`]).

pub mod cases;
pub mod publish;
pub mod scaffold;
mod sdk_copy;
pub mod trial;

use std::path::PathBuf;

/// What can go wrong for an author: each names the problem and the fix.
#[derive(Debug, thiserror::Error)]
pub enum AuthoringError {
    /// Input that cannot be used (a name, a case, a parameter, a flag).
    #[error("{0}")]
    Invalid(String),
    /// A file or directory could not be read or written.
    #[error("cannot {action} {}", path.display())]
    Io {
        /// What was being done (`read`, `write`, `create`).
        action: &'static str,
        /// Where.
        path: PathBuf,
        /// The system's error.
        #[source]
        source: std::io::Error,
    },
    /// The policy could not be loaded.
    #[error(transparent)]
    Plugin(#[from] orchestrator_policy_host::PluginError),
    /// An answer could not be written as JSON.
    #[error("cannot write the answer as JSON")]
    Json(#[from] serde_json::Error),
}

impl AuthoringError {
    fn io(action: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io {
            action,
            path,
            source,
        }
    }
}

/// `Err(AuthoringError::Invalid(..))` from a format string.
macro_rules! invalid {
    ($($arg:tt)*) => {
        return Err($crate::AuthoringError::Invalid(format!($($arg)*)))
    };
}
pub(crate) use invalid;
