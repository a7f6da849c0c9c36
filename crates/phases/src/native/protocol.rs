//! The rendezvous protocol between the leader's orchestrator and every
//! other rank's, as JSON over HTTP on the leader's endpoints port:
//!
//! - `POST /native/v1/register` ([`Registration`]) -> 200 [`Registered`],
//!   or 409 [`Refusal`] (a duplicate or out-of-range rank, another group
//!   size);
//! - `POST /native/v1/heartbeat` ([`Heartbeat`]) -> 200 [`Order`] (held
//!   up to one heartbeat interval until the order changes, so an order
//!   reaches every rank at once), or 410 [`Refusal`] when the leader does
//!   not know the instance (it restarted: register again);
//! - `POST /native/v1/leave` ([`Leave`]) -> 200 on a clean stop.

use orchestrator_domain::{ExitStatus, KeyValue};
use serde::{Deserialize, Serialize};

/// The path of registrations.
pub(crate) const REGISTER: &str = "/native/v1/register";
/// The path of heartbeats.
pub(crate) const HEARTBEAT: &str = "/native/v1/heartbeat";
/// The path of a clean leave.
pub(crate) const LEAVE: &str = "/native/v1/leave";

/// A rank's orchestrator introduces itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Registration {
    /// Its node rank, 1 to group size - 1.
    pub rank: u32,
    /// The group size it was configured with (must match the leader's).
    pub(crate) group_size: u32,
    /// This run of the orchestrator (a new one after every restart).
    pub instance: String,
    /// The address it is reached at (its pod IP).
    pub address: String,
    /// Its host name.
    pub hostname: String,
    /// GPUs (or accelerator slots) it offers.
    pub gpus: f64,
    /// CPUs it offers.
    pub cpus: f64,
}

/// What a registration claims that a rank may not.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BadRegistration {
    /// A GPU count out of range.
    #[error("a registration offers {0} GPUs; a node offers 0 to {MAX_GPUS}")]
    Gpus(f64),
    /// A CPU count out of range.
    #[error("a registration offers {0} CPUs; a node offers 0 to {MAX_CPUS}")]
    Cpus(f64),
    /// A name empty, too long or with control characters.
    #[error("a registration's {what} is empty, over {max} bytes or holds control characters")]
    Name {
        /// Which name.
        what: &'static str,
        /// Its most bytes.
        max: usize,
    },
}

impl Registration {
    /// Checks what a rank may claim: finite GPU and CPU counts in range,
    /// names of sane length. Names the first problem.
    pub fn check(&self) -> Result<(), BadRegistration> {
        if !self.gpus.is_finite() || !(0.0..=MAX_GPUS).contains(&self.gpus) {
            return Err(BadRegistration::Gpus(self.gpus));
        }
        if !self.cpus.is_finite() || !(0.0..=MAX_CPUS).contains(&self.cpus) {
            return Err(BadRegistration::Cpus(self.cpus));
        }
        for (what, text, max) in [
            ("instance", &self.instance, 128),
            ("address", &self.address, 255),
            ("hostname", &self.hostname, 255),
        ] {
            if text.is_empty() || text.len() > max || text.chars().any(char::is_control) {
                return Err(BadRegistration::Name { what, max });
            }
        }
        Ok(())
    }
}

/// The most GPUs (or accelerator slots) one node may offer.
pub(crate) const MAX_GPUS: f64 = 1024.0;
/// The most CPUs one node may offer.
pub(crate) const MAX_CPUS: f64 = 1_000_000.0;

/// The leader accepted a registration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Registered {
    /// The leader's run (a new one after every restart).
    pub leader: String,
    /// How often to send a heartbeat, in ms.
    pub heartbeat_ms: u64,
    /// After how long without a heartbeat the leader counts the rank lost.
    pub timeout_ms: u64,
}

/// Why the leader refused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Refusal {
    /// What is wrong and what to do about it.
    pub error: String,
    /// Retrying cannot help (a configuration error), as opposed to a rank
    /// still held by a run the leader has not yet counted lost.
    pub(crate) permanent: bool,
}

impl Refusal {
    /// The refusal with its text made safe to log ([`peer_text`]).
    pub(crate) fn for_log(self) -> Self {
        Self {
            error: peer_text(&self.error),
            ..self
        }
    }
}

/// Text from a peer as it may be logged: at most 1 KiB, control
/// characters (newlines among them) as spaces, so it cannot forge lines
/// or flood the log.
pub(crate) fn peer_text(text: &str) -> String {
    let mut shown: String = text
        .chars()
        .take(1024)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if text.chars().nth(1024).is_some() {
        shown.push_str(" [...]");
    }
    shown
}

/// What a rank's serving process is doing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub enum ProcessState {
    /// Nothing runs.
    #[default]
    Idle,
    /// Its rank of the server runs.
    Running,
    /// It exited (or could not be started) without being told to stop.
    Exited(ExitStatus),
}

/// A rank's heartbeat: who it is and what it did with the last order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Heartbeat {
    /// Its node rank.
    pub rank: u32,
    /// Its run.
    pub instance: String,
    /// The leader run it registered with.
    pub leader: String,
    /// The generation of the last order it carried out.
    pub generation: u64,
    /// Its serving process.
    pub process: ProcessState,
    /// Its node-health report, when it checks itself (`[node-health]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<orchestrator_domain::HealthReport>,
    /// How far its serving process came, and how it failed if it exited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub startup: Option<RankStartup>,
    /// Its part of the gang preflight, for the order of that generation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preflight: Option<PreflightDone>,
}

/// A rank's preflight result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct PreflightDone {
    /// The generation of the preflight order.
    pub generation: u64,
    /// What the rank's check reported.
    pub check: crate::preflight::RankCheck,
}

/// A rank's server as its own output tells it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct RankStartup {
    /// The last stage it reached.
    pub stage: orchestrator_domain::ServerStage,
    /// Since when, ms since the Unix epoch.
    pub since_unix_ms: u64,
    /// Why it exited, when it did on its own (secrets redacted by the
    /// rank; the leader bounds and cleans it again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<orchestrator_domain::StartupFailure>,
    /// Its serving process is stopped (state `T`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stopped: bool,
    /// The stacks it took when the leader asked ([`Order::stacks_wanted`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stacks: Option<crate::serve::RankStacks>,
}

/// What a rank is told to do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub enum Command {
    /// Nothing yet (the group is forming).
    #[default]
    Wait,
    /// Run this rank of the server now.
    Run {
        /// The argv.
        argv: Vec<String>,
        /// Environment added (secret values are never sent: see
        /// `from_own_env`).
        env: Vec<KeyValue>,
        /// Secret variables of the plan the rank takes from its own
        /// environment (the leader does not send their values).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        from_own_env: Vec<String>,
    },
    /// Stop this rank's server.
    Stop,
    /// Run this rank's part of the gang preflight now and report it.
    Preflight(PreflightOrder),
}

/// A rank's part of the gang preflight.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct PreflightOrder {
    /// Ranks in the check.
    pub world: u32,
    /// The master rank 0 hosts, `HOST:PORT`.
    pub master: String,
    /// The Python with torch (the server's own).
    pub python: String,
    /// The collective's library (`auto`, `gloo`, `nccl`).
    pub backend: crate::config::CollectiveBackend,
    /// The all-reduce's size.
    pub bytes: u64,
    /// Every rank's timeout, seconds.
    pub timeout_seconds: u64,
    /// Whether the rank must see the GPUs it offers.
    pub check_gpus: bool,
    /// The server's network settings (`GLOO_*`, `NCCL_*`, ...; never a
    /// secret).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<KeyValue>,
}

/// The leader's answer to a heartbeat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Order {
    /// Increases with every new order.
    pub generation: u64,
    /// What to do.
    pub command: Command,
    /// The leader found this rank stalled in the stage it entered at this
    /// time (ms since the Unix epoch): take its stacks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stacks_wanted: Option<StacksWanted>,
}

/// The leader asks a rank for its server's stacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct StacksWanted {
    /// The start of the stage the rank stalled in, ms since the Unix
    /// epoch (as the rank reported it).
    pub since_unix_ms: u64,
    /// The stage's deadline, ms.
    pub deadline_ms: u64,
}

/// A rank leaves on a clean stop.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Leave {
    /// Its node rank.
    pub rank: u32,
    /// Its run.
    pub instance: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_text_cannot_forge_log_lines_or_flood() {
        let forged = "refused\n2026-12-06T00:00:00Z INFO cluster ready\r";
        let shown = peer_text(forged);
        assert!(!shown.contains('\n') && !shown.contains('\r'), "{shown}");
        let long = "x".repeat(10_000);
        assert!(peer_text(&long).len() < 1100);
    }
}
