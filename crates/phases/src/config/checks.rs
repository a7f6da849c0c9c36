//! The checks of a loaded configuration, one function per section: every
//! number in its range (so no arithmetic on a loaded value can overflow),
//! then what parses but cannot work, each error naming the field and the
//! fix. Entry point: [`validate`].

use super::{Config, ConfigError, Role};
use orchestrator_policy_host::World;

const DAY_S: u64 = 24 * 3600;
const DAY_MS: u64 = DAY_S * 1000;
const YEAR_S: u64 = 365 * DAY_S;

/// A field, its value and the range it may take.
type Bound = (&'static str, u64, u64, u64);

fn invalid(field: &str, problem: String, fix: &str) -> ConfigError {
    ConfigError::Invalid {
        field: field.to_string(),
        problem,
        fix: fix.to_string(),
    }
}

/// Checks values that parse but cannot work, section by section.
pub(super) fn validate(config: &Config) -> Result<(), ConfigError> {
    for (field, value, min, max) in bounds(config) {
        if value < min || value > max {
            return Err(invalid(
                field,
                format!("is {value}, outside {min} to {max}"),
                &format!("give a value from {min} to {max}"),
            ));
        }
    }
    numbers(config)?;
    prefetch(config)?;
    weights(config)?;
    ray(config)?;
    cluster(config)?;
    node_health(config)?;
    scale(config)?;
    policies(config)?;
    registry(config)?;
    kubernetes(config)?;
    plugins(config)?;
    Ok(())
}

/// Every duration, size and count with the range it may take.
fn bounds(config: &Config) -> Vec<Bound> {
    let mut all = Vec::new();
    all.extend(cluster_bounds(config));
    all.extend(ray_bounds(config));
    all.extend(registry_bounds(config));
    all.extend(node_health_bounds(config));
    all.extend(scale_bounds(config));
    all.extend(plugins_bounds(config));
    all.extend(serve_bounds(config));
    all.extend(native_bounds(config));
    all.extend(kubernetes_bounds(config));
    all
}

fn cluster_bounds(config: &Config) -> Vec<Bound> {
    let opt32 = |v: Option<u32>| u64::from(v.unwrap_or(1));
    vec![
        ("open-file-limit", config.open_file_limit, 0, 1 << 30),
        (
            "cluster.wait-timeout-seconds",
            config.cluster.wait_timeout_seconds,
            0,
            YEAR_S,
        ),
        ("cluster.nodes", opt32(config.cluster.nodes), 0, 100_000),
    ]
}

fn ray_bounds(config: &Config) -> Vec<Bound> {
    let opt = |v: Option<u64>| v.unwrap_or(1);
    vec![
        ("ray.memory", opt(config.ray.memory), 1, 1 << 50),
        (
            "ray.object-store-memory",
            opt(config.ray.object_store_memory),
            1,
            1 << 50,
        ),
        (
            "ray.gcs-wait-seconds",
            config.ray.gcs_wait_seconds,
            0,
            YEAR_S,
        ),
        (
            "ray.stop-grace-seconds",
            config.ray.stop_grace_seconds,
            0,
            DAY_S,
        ),
        (
            "ray.gcs-fault-tolerance.reconnect-timeout-seconds",
            config
                .ray
                .gcs_fault_tolerance
                .as_ref()
                .map_or(1, |f| f.reconnect_timeout_seconds),
            0,
            YEAR_S,
        ),
    ]
}

fn registry_bounds(config: &Config) -> Vec<Bound> {
    vec![
        (
            "registry.max-layer-mib",
            config.registry.max_layer_mib,
            0,
            1 << 20,
        ),
        (
            "registry.timeout-seconds",
            config.registry.timeout_seconds,
            1,
            DAY_S,
        ),
    ]
}

fn node_health_bounds(config: &Config) -> Vec<Bound> {
    vec![
        (
            "node-health.interval-ms",
            config.node_health.interval_ms,
            0,
            DAY_MS,
        ),
        (
            "node-health.stale-after-ms",
            config.node_health.stale_after_ms,
            0,
            DAY_MS,
        ),
        (
            "node-health.follow-interval-ms",
            config.node_health.follow_interval_ms,
            0,
            DAY_MS,
        ),
        (
            "node-health.unhealthy-grace-seconds",
            config.node_health.unhealthy_grace_seconds,
            0,
            YEAR_S,
        ),
    ]
}

fn scale_bounds(config: &Config) -> Vec<Bound> {
    vec![
        ("scale.interval-ms", config.scale.interval_ms, 0, DAY_MS),
        (
            "scale.window-seconds",
            config.scale.window_seconds,
            0,
            30 * DAY_S,
        ),
        (
            "scale.min-replicas",
            u64::from(config.scale.min_replicas),
            0,
            100_000,
        ),
        (
            "scale.max-replicas",
            u64::from(config.scale.max_replicas),
            0,
            100_000,
        ),
        (
            "scale.current-replicas",
            u64::from(config.scale.current_replicas),
            0,
            100_000,
        ),
    ]
}

fn plugins_bounds(config: &Config) -> Vec<Bound> {
    vec![
        (
            "plugins.call-timeout-ms",
            config.plugins.call_timeout_ms,
            0,
            3_600_000,
        ),
        (
            "plugins.memory-limit-mib",
            config.plugins.memory_limit_mib as u64,
            0,
            1 << 20,
        ),
    ]
}

/// `[serve.preflight]`'s sizes and durations.
fn weights_bounds(config: &Config) -> Vec<Bound> {
    let w = &config.serve.weights;
    vec![
        ("serve.weights.chunk-mib", w.chunk_mib, 1, 1024),
        ("serve.weights.parallel", w.parallel, 1, 64),
        (
            "serve.weights.peer-wait-seconds",
            w.peer_wait_seconds,
            0,
            DAY_S,
        ),
        ("serve.weights.stall-seconds", w.stall_seconds, 1, DAY_S),
        ("serve.weights.timeout-seconds", w.timeout_seconds, 1, DAY_S),
        ("serve.weights.wait-seconds", w.wait_seconds, 0, 7 * DAY_S),
        (
            "serve.compile-cache.wait-seconds",
            config.serve.compile_cache.wait_seconds,
            0,
            DAY_S,
        ),
        (
            "serve.compile-cache.timeout-seconds",
            config.serve.compile_cache.timeout_seconds,
            1,
            DAY_S,
        ),
    ]
}

fn preflight_bounds(config: &Config) -> Vec<Bound> {
    let p = &config.serve.preflight;
    vec![
        ("serve.preflight.kib", p.kib, 1, 1 << 20),
        (
            "serve.preflight.timeout-seconds",
            p.timeout_seconds,
            1,
            3600,
        ),
        ("serve.preflight.max-p2p-ms", p.max_p2p_ms, 1, DAY_MS),
        (
            "serve.preflight.max-allreduce-ms",
            p.max_allreduce_ms,
            1,
            DAY_MS,
        ),
    ]
}

fn serve_bounds(config: &Config) -> Vec<Bound> {
    let opt32 = |v: Option<u32>| u64::from(v.unwrap_or(1));
    let mut bounds = vec![
        (
            "serve.tensor-parallel-size",
            opt32(config.serve.tensor_parallel_size),
            1,
            100_000,
        ),
        (
            "serve.pipeline-parallel-size",
            opt32(config.serve.pipeline_parallel_size),
            1,
            100_000,
        ),
        (
            "serve.health-interval-ms",
            config.serve.health_interval_ms,
            0,
            DAY_MS,
        ),
        (
            "serve.generation-interval-ms",
            config.serve.generation_interval_ms,
            0,
            DAY_MS,
        ),
        (
            "serve.health-timeout-ms",
            config.serve.health_timeout_ms,
            0,
            DAY_MS,
        ),
        (
            "serve.generation-timeout-ms",
            config.serve.generation_timeout_ms,
            0,
            DAY_MS,
        ),
        (
            "serve.stop-grace-seconds",
            config.serve.stop_grace_seconds,
            0,
            DAY_S,
        ),
        (
            "serve.drain-timeout-seconds",
            config.serve.drain_timeout_seconds,
            0,
            DAY_S,
        ),
        (
            "serve.prefetch.max-mb-per-second",
            config.serve.prefetch.max_mb_per_second,
            0,
            1 << 30,
        ),
        (
            "serve.prefetch.copy-wait-seconds",
            config.serve.prefetch.copy_wait_seconds,
            0,
            DAY_S,
        ),
    ];
    bounds.extend(preflight_bounds(config));
    bounds.extend(weights_bounds(config));
    let d = &config.serve.stage_deadlines;
    for (key, value) in [
        ("serve.stage-deadlines.process-up", d.process_up),
        ("serve.stage-deadlines.imports-done", d.imports_done),
        ("serve.stage-deadlines.distributed-init", d.distributed_init),
        ("serve.stage-deadlines.weights-loaded", d.weights_loaded),
        (
            "serve.stage-deadlines.kv-cache-allocated",
            d.kv_cache_allocated,
        ),
        ("serve.stage-deadlines.api-up", d.api_up),
    ] {
        bounds.push((key, value, 1, 7 * DAY_S));
    }
    bounds
}

fn native_bounds(config: &Config) -> Vec<Bound> {
    let opt32 = |v: Option<u32>| u64::from(v.unwrap_or(1));
    vec![
        (
            "native.heartbeat-ms",
            config.native.heartbeat_ms,
            1,
            3_600_000,
        ),
        (
            "native.heartbeat-timeout-ms",
            config.native.heartbeat_timeout_ms,
            1,
            DAY_MS,
        ),
        (
            "native.leader-wait-seconds",
            config.native.leader_wait_seconds,
            0,
            YEAR_S,
        ),
        ("native.rank", opt32(config.native.rank), 0, 100_000),
        (
            "native.group-size",
            opt32(config.native.group_size),
            1,
            100_000,
        ),
    ]
}

fn kubernetes_bounds(config: &Config) -> Vec<Bound> {
    vec![
        (
            "kubernetes.event-burst",
            u64::from(config.kubernetes.event_burst),
            0,
            100_000,
        ),
        (
            "kubernetes.event-interval-seconds",
            config.kubernetes.event_interval_seconds,
            0,
            DAY_S,
        ),
    ]
}

/// GPU counts that are numbers a cluster can have.
fn numbers(config: &Config) -> Result<(), ConfigError> {
    for (field, value) in [
        ("cluster.gpus", config.cluster.gpus),
        (
            "cluster.min-gpus-per-node",
            config.cluster.min_gpus_per_node,
        ),
    ] {
        if !value.is_finite() || value > 1e7 {
            return Err(invalid(
                field,
                format!("is {value}, outside 0 to 10000000"),
                "give a GPU count from 0 (no check) up",
            ));
        }
    }
    if let Some(g) = config.native.gpus
        && (!g.is_finite() || !(0.0..=1024.0).contains(&g))
    {
        return Err(invalid(
            "native.gpus",
            format!("is {g}, outside 0 to 1024"),
            "give the GPUs this rank offers, or leave it out to count them",
        ));
    }
    Ok(())
}

/// `[serve.weights]`: an origin that can be fetched, and not beside a copy.
fn weights(config: &Config) -> Result<(), ConfigError> {
    let w = &config.serve.weights;
    let problem = w.check().err().or_else(|| {
        (w.enabled() && config.serve.prefetch.copy_to.is_some())
            .then_some(super::WeightsProblem::WithCopy)
    });
    match problem {
        Some(problem) => Err(invalid(
            "serve.weights",
            problem.to_string(),
            "see the configuration reference's [serve.weights]",
        )),
        None => Ok(()),
    }
}

/// `[serve.prefetch]`: a copy needs one model directory.
fn prefetch(config: &Config) -> Result<(), ConfigError> {
    if let Err(problem) = config.serve.prefetch.check() {
        return Err(invalid(
            "serve.prefetch.copy-to",
            problem.to_string(),
            "give serve.prefetch.paths the one model directory to copy, e.g. paths = [\"/shared/models/llama\"], copy-to = \"/local/models/llama\"",
        ));
    }
    Ok(())
}

/// `[ray]`: where a worker joins, and GCS fault tolerance.
fn ray(config: &Config) -> Result<(), ConfigError> {
    if config.role == Role::Worker
        && config.ray.gcs_address.is_none()
        && !config.ray.use_kuberay_command
    {
        return Err(invalid(
            "ray.gcs-address",
            "is required for a worker".into(),
            "set it to the head's GCS, e.g. ray.gcs-address = \"raycluster-head-svc:6379\"",
        ));
    }
    if let Some(addr) = &config.ray.gcs_address
        && addr
            .rsplit_once(':')
            .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
    {
        return Err(invalid(
            "ray.gcs-address",
            format!("is {addr:?}, not HOST:PORT"),
            "write it like \"10.0.0.5:6379\"",
        ));
    }
    if let Some(ft) = &config.ray.gcs_fault_tolerance {
        match &ft.redis_address {
            None if config.role == Role::Head && !config.ray.use_kuberay_command => {
                return Err(invalid(
                    "ray.gcs-fault-tolerance.redis-address",
                    "is required on the head".into(),
                    "set it to the Redis the GCS keeps its tables in, e.g. redis-address = \"redis:6379\"",
                ));
            }
            Some(addr)
                if addr
                    .rsplit_once(':')
                    .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err()) =>
            {
                return Err(invalid(
                    "ray.gcs-fault-tolerance.redis-address",
                    format!("is {addr:?}, not HOST:PORT"),
                    "write it like \"redis:6379\"",
                ));
            }
            _ => {}
        }
        if ft.reconnect_timeout_seconds == 0 {
            return Err(invalid(
                "ray.gcs-fault-tolerance.reconnect-timeout-seconds",
                "is 0".into(),
                "give raylets time to reach a restarted GCS: KubeRay uses 600",
            ));
        }
    }
    Ok(())
}

/// `[cluster]` and the open-file limit: counts and timeouts that can work.
fn cluster(config: &Config) -> Result<(), ConfigError> {
    if config.cluster.nodes == Some(0) {
        return Err(invalid(
            "cluster.nodes",
            "is 0".into(),
            "count the head too: a head alone is nodes = 1",
        ));
    }
    if config.cluster.gpus < 0.0 || config.cluster.min_gpus_per_node < 0.0 {
        return Err(invalid(
            "cluster.gpus",
            "is negative".into(),
            "use 0 to not check GPUs",
        ));
    }
    if config.cluster.wait_timeout_seconds == 0 {
        return Err(invalid(
            "cluster.wait-timeout-seconds",
            "is 0".into(),
            "give the cluster time to form, e.g. 600",
        ));
    }
    if config.open_file_limit == 0 {
        return Err(invalid(
            "open-file-limit",
            "is 0".into(),
            "leave it out for 65536",
        ));
    }
    Ok(())
}

/// `[node-health]`: probe and follow intervals that can work.
fn node_health(config: &Config) -> Result<(), ConfigError> {
    let h = &config.node_health;
    if h.enabled && (h.interval_ms == 0 || h.follow_interval_ms == 0) {
        return Err(invalid(
            "node-health.interval-ms",
            "or node-health.follow-interval-ms is 0".into(),
            "probe at most every few ms; the default is 1000 (follow: 250)",
        ));
    }
    if h.enabled && h.stale_after_ms < 2 * h.interval_ms {
        return Err(invalid(
            "node-health.stale-after-ms",
            format!(
                "is {} ms, less than two probe intervals ({} ms)",
                h.stale_after_ms,
                2 * h.interval_ms
            ),
            "give a node at least a few intervals, e.g. 5 x interval-ms",
        ));
    }
    Ok(())
}

/// `[scale]`: a sampling interval, window and replica range that can work.
fn scale(config: &Config) -> Result<(), ConfigError> {
    let s = &config.scale;
    if s.enabled && s.interval_ms == 0 {
        return Err(invalid(
            "scale.interval-ms",
            "is 0".into(),
            "sample the load every few seconds, e.g. 5000",
        ));
    }
    if s.enabled && s.window_seconds.saturating_mul(1000) < s.interval_ms {
        return Err(invalid(
            "scale.window-seconds",
            format!(
                "({} s) is shorter than one interval ({} ms)",
                s.window_seconds, s.interval_ms
            ),
            "give the window several intervals, e.g. window-seconds = 60 with interval-ms = 5000",
        ));
    }
    if s.min_replicas > s.max_replicas {
        return Err(invalid(
            "scale.min-replicas",
            format!(
                "({}) is above max-replicas ({})",
                s.min_replicas, s.max_replicas
            ),
            "make min-replicas <= max-replicas",
        ));
    }
    Ok(())
}

/// `[policies.*]`: one source per world, a valid reference or digest.
fn policies(config: &Config) -> Result<(), ConfigError> {
    for world in World::ALL {
        let (policy, _) = config.policies.for_world(world);
        let sources = [
            policy.builtin.is_some(),
            policy.file.is_some(),
            policy.oci.is_some(),
        ];
        if sources.iter().filter(|set| **set).count() > 1 {
            return Err(invalid(
                &format!("policies.{world}"),
                "sets more than one of `builtin`, `file` and `oci`".into(),
                "keep one of them",
            ));
        }
        if let Some(reference) = &policy.oci
            && let Err(e) = orchestrator_oci::Reference::parse(reference)
        {
            return Err(invalid(
                &format!("policies.{world}.oci"),
                e.to_string(),
                "e.g. oci = \"oci://registry.example/team/readiness:v1@sha256:<digest from plugin push>\"",
            ));
        }
        if policy.sha256.is_some() && policy.file.is_none() {
            return Err(invalid(
                &format!("policies.{world}.sha256"),
                "is set without `file`".into(),
                "built-ins are embedded; pin only files (an oci reference is pinned by its @sha256: digest)",
            ));
        }
        if let Some(sha) = &policy.sha256
            && (sha.len() != 64 || !sha.chars().all(|c| c.is_ascii_hexdigit()))
        {
            return Err(invalid(
                &format!("policies.{world}.sha256"),
                format!("is {sha:?}, not 64 hex digits"),
                "copy it from `orchestrator plugin check FILE`",
            ));
        }
    }
    Ok(())
}

/// `[registry]`: signatures need a key; layers a size; hosts a name.
fn registry(config: &Config) -> Result<(), ConfigError> {
    if config.registry.require_signature && config.registry.public_key.is_none() {
        return Err(invalid(
            "registry.require-signature",
            "is on without registry.public-key".into(),
            "set public-key to the PEM public key the policies are signed for",
        ));
    }
    if config.registry.max_layer_mib == 0 {
        return Err(invalid(
            "registry.max-layer-mib",
            "is 0".into(),
            "leave it out for 64, or give the size of your largest policy",
        ));
    }
    if let Some(host) = config
        .registry
        .insecure
        .iter()
        .find(|h| h.is_empty() || h.contains('/'))
    {
        return Err(invalid(
            "registry.insecure",
            format!("holds {host:?}, not HOST[:PORT]"),
            "name the registry as in the reference, e.g. insecure = [\"registry.local:5000\"]",
        ));
    }
    Ok(())
}

/// `[kubernetes]`: a URL for the API server, room for Events.
fn kubernetes(config: &Config) -> Result<(), ConfigError> {
    if let Some(url) = &config.kubernetes.api_server
        && !(url.starts_with("https://") || url.starts_with("http://"))
    {
        return Err(invalid(
            "kubernetes.api-server",
            format!("is {url:?}, not an http(s) URL"),
            "leave it out in a pod (the service account is used), or write it like \"https://10.0.0.1:6443\"",
        ));
    }
    if config.kubernetes.events && config.kubernetes.event_burst == 0 {
        return Err(invalid(
            "kubernetes.event-burst",
            "is 0 with events on".into(),
            "set kubernetes.events = false to send none, or leave it out for 10",
        ));
    }
    Ok(())
}

/// `[plugins]`: limits above zero.
fn plugins(config: &Config) -> Result<(), ConfigError> {
    if config.plugins.call_timeout_ms == 0 || config.plugins.memory_limit_mib == 0 {
        return Err(invalid(
            "plugins",
            "sets a zero limit".into(),
            "leave the limits out for 100 ms and 64 MiB",
        ));
    }
    Ok(())
}
