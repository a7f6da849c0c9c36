//! Domain values to 0.2.0 wire values and back. Only the small records
//! cross as values; nodes stay on the host side behind the `cluster`
//! resource.

use super::bindings::types as wire;
use orchestrator_domain as domain;

pub(crate) fn params(params: &[domain::KeyValue]) -> Vec<wire::KeyValue> {
    params
        .iter()
        .map(|kv| wire::KeyValue {
            key: kv.key.clone(),
            value: kv.value.clone(),
        })
        .collect()
}

pub(crate) fn topology(t: &domain::Topology) -> wire::Topology {
    wire::Topology {
        nodes: t.nodes,
        gpus: t.gpus,
        min_gpus_per_node: t.min_gpus_per_node,
        groups: t
            .groups
            .iter()
            .map(|g| wire::NodeGroup {
                name: g.name.clone(),
                replicas: g.replicas,
                cpus_per_node: g.cpus_per_node,
                gpus_per_node: g.gpus_per_node,
            })
            .collect(),
    }
}

pub(crate) fn serve_settings(s: &domain::ServeSettings) -> wire::ServeSettings {
    wire::ServeSettings {
        model: s.model.clone(),
        served_model_name: s.served_model_name.clone(),
        host: s.host.clone(),
        port: s.port,
        extra_args: s.extra_args.clone(),
        tensor_parallel_size: s.tensor_parallel_size,
        pipeline_parallel_size: s.pipeline_parallel_size,
    }
}

fn probe(p: &domain::ProbeResult) -> wire::ProbeResult {
    wire::ProbeResult {
        ok: p.ok,
        status_code: p.status_code,
        latency_ms: p.latency_ms,
        error: p.error.clone(),
        age_ms: p.age_ms,
    }
}

pub(crate) fn health_snapshot(s: &domain::HealthSnapshot) -> wire::HealthSnapshot {
    wire::HealthSnapshot {
        server: match &s.server {
            domain::ServerState::Starting => wire::ServerState::Starting,
            domain::ServerState::Running => wire::ServerState::Running,
            domain::ServerState::Exited(e) => wire::ServerState::Exited(wire::ExitStatus {
                code: e.code,
                signal: e.signal,
            }),
        },
        server_uptime_ms: s.server_uptime_ms,
        health_probe: s.health_probe.as_ref().map(probe),
        generation_probe: s.generation_probe.as_ref().map(probe),
        consecutive_probe_failures: s.consecutive_probe_failures,
        changes: s
            .changes
            .iter()
            .map(|c| wire::NodeChange {
                node_id: c.node_id.clone(),
                kind: match c.kind {
                    domain::NodeChangeKind::Joined => wire::NodeChangeKind::Joined,
                    domain::NodeChangeKind::Died => wire::NodeChangeKind::Died,
                },
            })
            .collect(),
        restarts: s.restarts,
        uptime_ms: s.uptime_ms,
    }
}

pub(crate) fn readiness(r: wire::Readiness) -> domain::Readiness {
    match r {
        wire::Readiness::Ready => domain::Readiness::Ready,
        wire::Readiness::Wait(m) => domain::Readiness::Wait(m),
        wire::Readiness::Fail(m) => domain::Readiness::Fail(m),
    }
}

pub(crate) fn plan_result(
    r: Result<wire::LaunchPlan, wire::LaunchError>,
) -> Result<domain::LaunchPlan, domain::LaunchError> {
    match r {
        Ok(plan) => Ok(domain::LaunchPlan {
            argv: plan.argv,
            env: plan
                .env
                .into_iter()
                .map(|kv| domain::KeyValue {
                    key: kv.key,
                    value: kv.value,
                })
                .collect(),
        }),
        Err(wire::LaunchError::ImpossibleLayout(m)) => {
            Err(domain::LaunchError::ImpossibleLayout(m))
        }
        Err(wire::LaunchError::InvalidSettings(m)) => Err(domain::LaunchError::InvalidSettings(m)),
        Err(wire::LaunchError::Other(m)) => Err(domain::LaunchError::Other(m)),
    }
}

pub(crate) fn health_verdict(v: wire::HealthVerdict) -> domain::HealthVerdict {
    match v {
        wire::HealthVerdict::Healthy => domain::HealthVerdict::Healthy,
        wire::HealthVerdict::Degraded(m) => domain::HealthVerdict::Degraded(m),
        wire::HealthVerdict::Restart(a) => domain::HealthVerdict::Restart(domain::RestartAction {
            reason: a.reason,
            backoff_ms: a.backoff_ms,
        }),
        wire::HealthVerdict::Shutdown(a) => {
            domain::HealthVerdict::Shutdown(domain::ShutdownAction {
                exit_code: a.exit_code,
                reason: a.reason,
            })
        }
    }
}
