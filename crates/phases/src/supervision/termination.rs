//! The pod's termination message: why the orchestrator exited with a
//! failure, where Kubernetes reads it into the container's status
//! (`terminationMessagePath`, `/dev/termination-log` by default), so
//! `kubectl describe pod` shows the cause after the pod restarted. Entry
//! points: [`message`], [`write`].

use std::path::PathBuf;

/// Kubernetes keeps at most this many bytes of a termination message.
pub(crate) const MAX_BYTES: usize = 4096;

/// Where the message goes: `ORCHESTRATOR_TERMINATION_LOG`, else
/// `/dev/termination-log` when it exists (the kubelet mounts it; nothing
/// is created under `/dev` outside a pod).
fn path() -> Option<PathBuf> {
    match std::env::var_os("ORCHESTRATOR_TERMINATION_LOG") {
        Some(path) if !path.is_empty() => Some(PathBuf::from(path)),
        _ => {
            let default = PathBuf::from("/dev/termination-log");
            default.exists().then_some(default)
        }
    }
}

/// The message for an exit with `error`, and the last startup failure's
/// `cause` when there was one, at most [`MAX_BYTES`] (cut at a character
/// boundary).
pub(crate) fn message(error: &str, cause: Option<&str>) -> String {
    let mut text = match cause {
        Some(cause) if !error.contains(cause) => {
            format!("{error}\nlast startup failure: {cause}")
        }
        _ => error.to_string(),
    };
    if text.len() > MAX_BYTES {
        let mut end = MAX_BYTES;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

/// Writes `message` where the platform reads it; a failure to write is
/// logged, never fatal.
pub(crate) fn write(message: &str) {
    let Some(path) = path() else {
        return;
    };
    if let Err(e) = std::fs::write(&path, message) {
        tracing::warn!(
            "cannot write the termination message to {}: {e}",
            path.display()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_message_carries_the_cause_and_fits_kubernetes_limit() {
        let m = message(
            "the health policy shut down",
            Some("rank 1's server failed"),
        );
        assert_eq!(
            m,
            "the health policy shut down\nlast startup failure: rank 1's server failed"
        );
        assert_eq!(
            message("x: rank 1's server failed", Some("rank 1's server failed")),
            "x: rank 1's server failed"
        );
        let long = "é".repeat(5000);
        let m = message(&long, None);
        assert!(m.len() <= MAX_BYTES && m.len() >= MAX_BYTES - 1);
    }
}
