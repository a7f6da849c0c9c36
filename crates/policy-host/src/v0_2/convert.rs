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
        native_group: s.native_group.as_ref().map(|g| wire::NativeGroup {
            nodes: g.nodes,
            master_addr: g.master_addr.clone(),
            master_port: g.master_port,
        }),
    }
}

fn key_values(kvs: Vec<wire::KeyValue>) -> Vec<domain::KeyValue> {
    kvs.into_iter()
        .map(|kv| domain::KeyValue {
            key: kv.key,
            value: kv.value,
        })
        .collect()
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
            early: plan.early,
            argv: plan.argv,
            env: key_values(plan.env),
            ranks: plan
                .ranks
                .into_iter()
                .map(|r| domain::RankPlan {
                    rank: r.rank,
                    argv: r.argv,
                    env: key_values(r.env),
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

fn throttle(reasons: &[domain::ThrottleReason]) -> wire::ThrottleReasons {
    use domain::ThrottleReason as R;
    let mut flags = wire::ThrottleReasons::empty();
    for r in reasons {
        flags |= match r {
            R::GpuIdle => wire::ThrottleReasons::GPU_IDLE,
            R::ApplicationsClocksSetting => wire::ThrottleReasons::APPLICATIONS_CLOCKS_SETTING,
            R::SwPowerCap => wire::ThrottleReasons::SW_POWER_CAP,
            R::HwSlowdown => wire::ThrottleReasons::HW_SLOWDOWN,
            R::SyncBoost => wire::ThrottleReasons::SYNC_BOOST,
            R::SwThermalSlowdown => wire::ThrottleReasons::SW_THERMAL_SLOWDOWN,
            R::HwThermalSlowdown => wire::ThrottleReasons::HW_THERMAL_SLOWDOWN,
            R::HwPowerBrakeSlowdown => wire::ThrottleReasons::HW_POWER_BRAKE_SLOWDOWN,
            R::DisplayClockSetting => wire::ThrottleReasons::DISPLAY_CLOCK_SETTING,
        };
    }
    flags
}

fn gpu(g: &domain::GpuReading) -> wire::GpuReading {
    wire::GpuReading {
        index: g.index,
        uuid: g.uuid.clone(),
        name: g.name.clone(),
        memory_total_bytes: g.memory_total_bytes,
        memory_used_bytes: g.memory_used_bytes,
        ecc_enabled: g.ecc_enabled,
        ecc_uncorrected_volatile: g.ecc_uncorrected_volatile,
        remap_pending: g.remap_pending,
        remap_failed: g.remap_failed,
        xids: g
            .xids
            .iter()
            .map(|x| wire::XidEvent {
                xid: x.xid,
                age_ms: x.age_ms,
            })
            .collect(),
        temperature_c: g.temperature_c,
        throttle: throttle(&g.throttle),
        power_watts: g.power_watts,
        error: g.error.clone(),
    }
}

pub(crate) fn node_readings(r: &domain::NodeReadings) -> wire::NodeReadings {
    wire::NodeReadings {
        address: r.address.clone(),
        advertised_gpus: r.advertised_gpus,
        nvml_unavailable: r.nvml_unavailable.clone(),
        driver_version: r.driver_version.clone(),
        gpus: r.gpus.iter().map(gpu).collect(),
        temp_dir: r.temp_dir.clone(),
        temp_dir_free_bytes: r.temp_dir_free_bytes,
        temp_dir_total_bytes: r.temp_dir_total_bytes,
        shm_total_bytes: r.shm_total_bytes,
        raylet_open_file_limit: r.raylet_open_file_limit,
        memory_available_bytes: r.memory_available_bytes,
        memory_total_bytes: r.memory_total_bytes,
        memory_pressure_percent: r.memory_pressure_percent,
        raylet_alive: r.raylet_alive,
    }
}

pub(crate) fn node_verdict(v: wire::NodeVerdict) -> domain::NodeVerdict {
    match v {
        wire::NodeVerdict::Healthy => domain::NodeVerdict::Healthy,
        wire::NodeVerdict::Degraded(r) => domain::NodeVerdict::Degraded(r),
        wire::NodeVerdict::Unhealthy(r) => domain::NodeVerdict::Unhealthy(r),
    }
}

pub(crate) fn scale_input(i: &domain::ScaleInput) -> wire::ScaleInput {
    wire::ScaleInput {
        samples: i
            .samples
            .iter()
            .map(|s| wire::LoadSample {
                at_ms: s.at_ms,
                running: s.running,
                waiting: s.waiting,
                kv_cache_usage: s.kv_cache_usage,
                generation_tokens_per_second: s.generation_tokens_per_second,
                prompt_tokens_per_second: s.prompt_tokens_per_second,
            })
            .collect(),
        window_ms: i.window_ms,
        interval_ms: i.interval_ms,
        current_replicas: i.current_replicas,
        min_replicas: i.min_replicas,
        max_replicas: i.max_replicas,
        previous_desired: i.previous_desired,
        since_change_ms: i.since_change_ms,
    }
}

pub(crate) fn scale_recommendation(r: wire::ScaleRecommendation) -> domain::ScaleRecommendation {
    domain::ScaleRecommendation {
        desired_replicas: r.desired_replicas,
        reason: r.reason,
    }
}
