//! The policy worlds, the contract versions the plugin host speaks, and the
//! names the host checks components by.

use std::fmt;

/// The WIT package every plugin implements a world of.
pub const PACKAGE: &str = "ray-orchestrator:policy";
/// The newest contract version this host provides, the one the SDK builds.
pub const VERSION: &str = Version::LATEST.as_str();

/// A version of the policy contract (`ray-orchestrator:policy@<version>`)
/// this host can call. A plugin's version is read from its exports, and
/// each version is called through its own bindings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Version {
    /// The first contract: the whole snapshot copied into the plugin as
    /// records and lists.
    V0_1_0,
    /// The snapshot as a host resource the plugin queries (aggregates, or
    /// every node packed).
    V0_2_0,
    /// The health world sees the server's start rank by rank (stages, a
    /// stall, the last failed start). Only the health world has a 0.3.0;
    /// its shared types and `log` are 0.2.0's, and the other worlds stay
    /// at 0.2.0.
    V0_3_0,
}

impl Version {
    /// Every version the host calls, oldest first.
    pub const SUPPORTED: [Version; 3] = [Version::V0_1_0, Version::V0_2_0, Version::V0_3_0];
    /// The newest (of any world; [`World::latest`] says each world's).
    pub const LATEST: Version = Version::V0_3_0;

    /// `0.1.0`, `0.2.0` or `0.3.0`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Version::V0_1_0 => "0.1.0",
            Version::V0_2_0 => "0.2.0",
            Version::V0_3_0 => "0.3.0",
        }
    }

    /// The version of the package's `types` and `log` interfaces that a
    /// plugin of this contract imports: 0.3.0 reuses 0.2.0's.
    pub const fn imports(self) -> Version {
        match self {
            Version::V0_3_0 => Version::V0_2_0,
            other => other,
        }
    }

    /// Parses a version string exactly as WIT spells it.
    pub fn parse(text: &str) -> Option<Version> {
        Version::SUPPORTED.into_iter().find(|v| v.as_str() == text)
    }

    /// `0.1.0, 0.2.0`: for messages.
    pub fn supported_list() -> String {
        Version::SUPPORTED.map(Version::as_str).join(", ")
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl serde::Serialize for Version {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

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
    /// Judges one node's own readings (`node-health-policy.judge`); from
    /// contract 0.2.0 on.
    NodeHealth,
    /// Recommends the serving replicas the load needs
    /// (`scale-policy.recommend`); from contract 0.2.0 on.
    Scale,
}

impl World {
    /// Every world, in phase order.
    pub const ALL: [World; 5] = [
        World::Readiness,
        World::Launch,
        World::Health,
        World::NodeHealth,
        World::Scale,
    ];

    /// The world's name in the WIT: `readiness`, `launch` or `health`.
    pub fn name(self) -> &'static str {
        match self {
            World::Readiness => "readiness",
            World::Launch => "launch",
            World::Health => "health",
            World::NodeHealth => "node-health",
            World::Scale => "scale",
        }
    }

    /// The first contract version that has this world.
    pub fn since(self) -> Version {
        match self {
            World::NodeHealth | World::Scale => Version::V0_2_0,
            _ => Version::V0_1_0,
        }
    }

    /// The newest contract version that has this world: the one the SDK
    /// builds.
    pub fn latest(self) -> Version {
        match self {
            World::Health => Version::V0_3_0,
            _ => Version::V0_2_0,
        }
    }

    /// Whether contract `version` has this world.
    pub fn has(self, version: Version) -> bool {
        self.since() <= version && version <= self.latest()
    }

    /// The interface a plugin of this world exports, without version.
    pub fn interface(self) -> &'static str {
        match self {
            World::Readiness => "readiness-policy",
            World::Launch => "launch-policy",
            World::Health => "health-policy",
            World::NodeHealth => "node-health-policy",
            World::Scale => "scale-policy",
        }
    }

    /// The full export name at `version`, e.g.
    /// `ray-orchestrator:policy/readiness-policy@0.2.0`.
    pub fn export_name(self, version: Version) -> String {
        format!("{PACKAGE}/{}@{version}", self.interface())
    }

    /// Parses `readiness`, `launch`, `health` or `node-health`.
    pub fn parse(text: &str) -> Option<World> {
        World::ALL.into_iter().find(|w| w.name() == text)
    }
}

impl fmt::Display for World {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}
