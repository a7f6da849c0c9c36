//! The three policy worlds and the names the host checks components by.

use std::fmt;

/// The WIT package every plugin implements a world of.
pub const PACKAGE: &str = "ray-orchestrator:policy";
/// The package version this host provides.
pub const VERSION: &str = "0.1.0";

/// Which phase a policy serves: one world of the WIT package each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum World {
    /// Decides when the cluster is ready (`readiness-policy.check`).
    Readiness,
    /// Builds the serving command (`launch-policy.plan`).
    Launch,
    /// Judges health and picks an action (`health-policy.evaluate`).
    Health,
}

impl World {
    /// Every world, in phase order.
    pub const ALL: [World; 3] = [World::Readiness, World::Launch, World::Health];

    /// The world's name in the WIT: `readiness`, `launch` or `health`.
    pub fn name(self) -> &'static str {
        match self {
            World::Readiness => "readiness",
            World::Launch => "launch",
            World::Health => "health",
        }
    }

    /// The interface a plugin of this world exports, without version.
    pub fn interface(self) -> &'static str {
        match self {
            World::Readiness => "readiness-policy",
            World::Launch => "launch-policy",
            World::Health => "health-policy",
        }
    }

    /// The full export name, e.g. `ray-orchestrator:policy/readiness-policy@0.1.0`.
    pub fn export_name(self) -> String {
        format!("{PACKAGE}/{}@{VERSION}", self.interface())
    }

    /// Parses `readiness`, `launch` or `health`.
    pub fn parse(text: &str) -> Option<World> {
        World::ALL.into_iter().find(|w| w.name() == text)
    }
}

impl fmt::Display for World {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}
