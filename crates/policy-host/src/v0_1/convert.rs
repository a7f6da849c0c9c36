//! Conversions between the domain types (`orchestrator_domain`) and the
//! WIT wire types ([`crate::v0_1::wire`]). Inputs go to the wire by reference
//! ([`ToWire`]); answers come back by value ([`FromWire`]). Field lists are
//! written once per record, by macro, so a field added on one side and
//! not the other fails to compile.

use crate::v0_1::wire;
use orchestrator_domain as domain;

/// A domain value's wire form, borrowing its text.
pub(crate) trait ToWire<'a> {
    type Wire;
    fn to_wire(&'a self) -> Self::Wire;
}

/// A wire value's domain form.
pub(crate) trait FromWire<W> {
    fn from_wire(wire: W) -> Self;
}

macro_rules! same {
    ($($t:ty),*) => {$(
        impl<'a> ToWire<'a> for $t {
            type Wire = $t;
            fn to_wire(&'a self) -> $t { *self }
        }
        impl FromWire<$t> for $t {
            fn from_wire(wire: $t) -> $t { wire }
        }
    )*};
}
same!(bool, f64, u64, u32, u16, i32);

impl<'a> ToWire<'a> for String {
    type Wire = &'a str;
    fn to_wire(&'a self) -> &'a str {
        self
    }
}

impl FromWire<String> for String {
    fn from_wire(wire: String) -> String {
        wire
    }
}

impl<'a, T: ToWire<'a>> ToWire<'a> for Vec<T> {
    type Wire = Vec<T::Wire>;
    fn to_wire(&'a self) -> Self::Wire {
        self.iter().map(ToWire::to_wire).collect()
    }
}

impl<'a, T: ToWire<'a>> ToWire<'a> for Option<T> {
    type Wire = Option<T::Wire>;
    fn to_wire(&'a self) -> Self::Wire {
        self.as_ref().map(ToWire::to_wire)
    }
}

impl<W, T: FromWire<W>> FromWire<Vec<W>> for Vec<T> {
    fn from_wire(wire: Vec<W>) -> Self {
        wire.into_iter().map(T::from_wire).collect()
    }
}

impl<W, T: FromWire<W>> FromWire<Option<W>> for Option<T> {
    fn from_wire(wire: Option<W>) -> Self {
        wire.map(T::from_wire)
    }
}

/// Policy parameters: the generated bindings take owned pairs (the same
/// record type also comes back from guests), and there are few of them.
pub(crate) fn params(params: &[domain::KeyValue]) -> Vec<wire::KeyValue> {
    params
        .iter()
        .map(|kv| wire::KeyValue {
            key: kv.key.clone(),
            value: kv.value.clone(),
        })
        .collect()
}

/// Records that go to the guest, borrowing.
macro_rules! to_wire_record {
    ($($name:ident { $($field:ident),* $(,)? })*) => {$(
        impl<'a> ToWire<'a> for domain::$name {
            type Wire = wire::$name<'a>;
            fn to_wire(&'a self) -> wire::$name<'a> {
                wire::$name { $($field: self.$field.to_wire()),* }
            }
        }
    )*};
}

/// Records that come back from the guest.
macro_rules! from_wire_record {
    ($($name:ident { $($field:ident),* $(,)? })*) => {$(
        impl FromWire<wire::$name> for domain::$name {
            fn from_wire(w: wire::$name) -> Self {
                domain::$name { $($field: FromWire::from_wire(w.$field)),* }
            }
        }
    )*};
}

impl<'a> ToWire<'a> for domain::KeyValue {
    type Wire = wire::KeyValue<&'a str>;
    fn to_wire(&'a self) -> Self::Wire {
        wire::KeyValue {
            key: &self.key,
            value: &self.value,
        }
    }
}

/// 0.1.0 has no early launch.
impl FromWire<wire::LaunchPlan> for domain::LaunchPlan {
    fn from_wire(w: wire::LaunchPlan) -> Self {
        domain::LaunchPlan {
            argv: FromWire::from_wire(w.argv),
            env: FromWire::from_wire(w.env),
            early: false,
            ranks: Vec::new(),
        }
    }
}

impl<'a> ToWire<'a> for domain::ExitStatus {
    type Wire = wire::ExitStatus;
    fn to_wire(&'a self) -> wire::ExitStatus {
        wire::ExitStatus {
            code: self.code,
            signal: self.signal,
        }
    }
}

to_wire_record! {
    ResourceAmount { name, amount }
    Resources { cpu, gpu, memory_bytes, object_store_memory_bytes, custom }
    Node { id, address, hostname, is_head, alive, resources, labels, start_time_ms }
    NodeGroup { name, replicas, cpus_per_node, gpus_per_node }
    Topology { nodes, gpus, min_gpus_per_node, groups }
    ClusterSnapshot { nodes, expected, elapsed_ms, deadline_ms, diagnostics }
    ServeSettings { model, served_model_name, host, port, extra_args, tensor_parallel_size, pipeline_parallel_size }
    LaunchRequest { cluster, settings }
    ProbeResult { ok, status_code, latency_ms, error, age_ms }
    NodeChange { node_id, kind }
    HealthSnapshot { server, server_uptime_ms, health_probe, generation_probe, consecutive_probe_failures, nodes, server_nodes, changes, restarts, uptime_ms }
}

from_wire_record! {
    KeyValue { key, value }
    RestartAction { reason, backoff_ms }
    ShutdownAction { exit_code, reason }
}

impl<'a> ToWire<'a> for domain::NodeChangeKind {
    type Wire = wire::NodeChangeKind;
    fn to_wire(&'a self) -> wire::NodeChangeKind {
        match self {
            Self::Joined => wire::NodeChangeKind::Joined,
            Self::Died => wire::NodeChangeKind::Died,
        }
    }
}

impl<'a> ToWire<'a> for domain::ServerState {
    type Wire = wire::ServerState;
    fn to_wire(&'a self) -> wire::ServerState {
        match self {
            Self::Starting => wire::ServerState::Starting,
            Self::Running => wire::ServerState::Running,
            Self::Exited(how) => wire::ServerState::Exited(how.to_wire()),
        }
    }
}

impl FromWire<wire::Readiness> for domain::Readiness {
    fn from_wire(w: wire::Readiness) -> Self {
        match w {
            wire::Readiness::Ready => Self::Ready,
            wire::Readiness::Wait(reason) => Self::Wait(reason),
            wire::Readiness::Fail(reason) => Self::Fail(reason),
        }
    }
}

impl FromWire<wire::LaunchError> for domain::LaunchError {
    fn from_wire(w: wire::LaunchError) -> Self {
        match w {
            wire::LaunchError::ImpossibleLayout(m) => Self::ImpossibleLayout(m),
            wire::LaunchError::InvalidSettings(m) => Self::InvalidSettings(m),
            wire::LaunchError::Other(m) => Self::Other(m),
        }
    }
}

impl FromWire<wire::HealthVerdict> for domain::HealthVerdict {
    fn from_wire(w: wire::HealthVerdict) -> Self {
        match w {
            wire::HealthVerdict::Healthy => Self::Healthy,
            wire::HealthVerdict::Degraded(reason) => Self::Degraded(reason),
            wire::HealthVerdict::Restart(a) => Self::Restart(FromWire::from_wire(a)),
            wire::HealthVerdict::Shutdown(a) => Self::Shutdown(FromWire::from_wire(a)),
        }
    }
}

impl<P, E, DP: FromWire<P>, DE: FromWire<E>> FromWire<Result<P, E>> for Result<DP, DE> {
    fn from_wire(w: Result<P, E>) -> Self {
        w.map(DP::from_wire).map_err(DE::from_wire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_keeps_every_field_on_the_wire() {
        let node = domain::Node {
            id: "ab".into(),
            address: "10.0.0.7".into(),
            hostname: "w-1".into(),
            is_head: false,
            alive: true,
            resources: domain::Resources {
                cpu: 8.0,
                gpu: 4.0,
                memory_bytes: 1 << 30,
                object_store_memory_bytes: 1 << 20,
                custom: vec![domain::ResourceAmount {
                    name: "TPU".into(),
                    amount: 2.0,
                }],
            },
            labels: vec![domain::KeyValue::new("accelerator", "h100")],
            start_time_ms: 42,
            health: Default::default(),
        };
        let w = node.to_wire();
        assert_eq!((w.id, w.address, w.hostname), ("ab", "10.0.0.7", "w-1"));
        assert_eq!((w.is_head, w.alive, w.start_time_ms), (false, true, 42));
        assert_eq!((w.resources.cpu, w.resources.gpu), (8.0, 4.0));
        assert_eq!(w.resources.memory_bytes, 1 << 30);
        assert_eq!(w.resources.object_store_memory_bytes, 1 << 20);
        assert_eq!(w.resources.custom[0].name, "TPU");
        assert_eq!(w.labels[0].value, "h100");
        assert!(std::ptr::eq(w.id, node.id.as_str()), "borrowed, not copied");
    }

    #[test]
    fn verdicts_come_back_with_their_payloads() {
        let v: domain::HealthVerdict =
            FromWire::from_wire(wire::HealthVerdict::Restart(wire::RestartAction {
                reason: "exited".into(),
                backoff_ms: 500,
            }));
        assert_eq!(
            v,
            domain::HealthVerdict::Restart(domain::RestartAction {
                reason: "exited".into(),
                backoff_ms: 500
            })
        );
        let r: Result<domain::LaunchPlan, domain::LaunchError> =
            FromWire::from_wire(Err(wire::LaunchError::ImpossibleLayout("tp 4".into())));
        assert_eq!(r, Err(domain::LaunchError::ImpossibleLayout("tp 4".into())));
    }
}
