//! Every manifest in `deploy/` parses into its typed form (core kinds into
//! k8s-openapi, RayCluster and RayClusterFleet into the orchestrator's
//! structs) with nothing left over, says what the issue asks of it (RBAC
//! verbs, probes, ports, the command annotation), and mounts a
//! configuration that `orchestrator plan` accepts in that container's
//! environment, KubeRay's generated start command included. Every custom
//! resource is also checked against its upstream CRD's OpenAPI schema
//! (KubeRay's RayCluster, AIBrix's RayClusterFleet and PodAutoscaler,
//! KEDA's ScaledObject; `tests/fixtures/crds/`, descriptions stripped,
//! each file naming the commit it was read from).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use base64::Engine;
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, Namespace, PodTemplateSpec, ServiceAccount,
};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use orchestrator_kubernetes::raycluster::{RayCluster, RayClusterFleet, RayClusterSpec, quantity};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use sha2::Digest;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy")
}

/// Every YAML document under deploy/, with its file.
fn documents() -> Vec<(PathBuf, Value)> {
    let mut files = vec![];
    let mut dirs = vec![deploy_dir()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                files.push(path);
            }
        }
    }
    files.sort();
    assert!(files.len() >= 5, "manifests found: {files:?}");
    let mut docs = vec![];
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let value: Value = serde_yaml::with::singleton_map_recursive::deserialize(doc)
                .unwrap_or_else(|e| panic!("{}: not YAML: {e}", file.display()));
            if !value.is_null() {
                docs.push((file.clone(), value));
            }
        }
    }
    docs
}

/// Parses `value` as `T` and checks that serializing it back gives the same
/// JSON: a misspelt or misplaced field would be dropped and show up here.
fn typed<T: DeserializeOwned + Serialize>(file: &Path, value: &Value) -> T {
    let parsed: T = serde_json::from_value(value.clone())
        .unwrap_or_else(|e| panic!("{}: {e}\n{value:#}", file.display()));
    let back = serde_json::to_value(&parsed).unwrap();
    let mut expected = value.clone();
    // Typed core objects serialize their own apiVersion/kind; the CRD
    // subsets do not carry them.
    for v in [&mut expected] {
        if let Some(map) = v.as_object_mut()
            && back.get("kind").is_none()
        {
            map.remove("apiVersion");
            map.remove("kind");
        }
    }
    assert_eq!(
        back,
        expected,
        "{}: fields were dropped or changed when parsed as {}",
        file.display(),
        std::any::type_name::<T>()
    );
    parsed
}

struct Manifests {
    config_maps: BTreeMap<String, ConfigMap>,
    roles: Vec<Role>,
    bindings: Vec<RoleBinding>,
    accounts: Vec<ServiceAccount>,
    /// (file, name, spec, annotations)
    clusters: Vec<(PathBuf, String, RayClusterSpec, BTreeMap<String, String>)>,
    fleets: Vec<RayClusterFleet>,
    /// Documents checked only against their CRD schema: (file, document).
    custom: Vec<(PathBuf, Value)>,
}

fn manifests() -> Manifests {
    let mut m = Manifests {
        config_maps: BTreeMap::new(),
        roles: vec![],
        bindings: vec![],
        accounts: vec![],
        clusters: vec![],
        fleets: vec![],
        custom: vec![],
    };
    for (file, doc) in documents() {
        let kind = doc["kind"].as_str().unwrap_or_default().to_string();
        match kind.as_str() {
            "Namespace" => {
                typed::<Namespace>(&file, &doc);
            }
            "ServiceAccount" => m.accounts.push(typed(&file, &doc)),
            "Role" => m.roles.push(typed(&file, &doc)),
            "RoleBinding" => m.bindings.push(typed(&file, &doc)),
            "ConfigMap" => {
                let cm: ConfigMap = typed(&file, &doc);
                m.config_maps.insert(cm.metadata.name.clone().unwrap(), cm);
            }
            "RayCluster" => {
                assert_eq!(doc["apiVersion"], "ray.io/v1", "{}", file.display());
                let rc: RayCluster = typed(&file, &doc);
                m.clusters.push((
                    file,
                    rc.metadata.name.clone().unwrap(),
                    rc.spec.clone(),
                    rc.metadata.annotations.clone().unwrap_or_default(),
                ));
            }
            "RayClusterFleet" => {
                assert_eq!(
                    doc["apiVersion"],
                    "orchestration.aibrix.ai/v1alpha1",
                    "{}",
                    file.display()
                );
                let fleet: RayClusterFleet = typed(&file, &doc);
                m.clusters.push((
                    file,
                    fleet.metadata.name.clone().unwrap(),
                    fleet.spec.template.spec.clone(),
                    fleet
                        .spec
                        .template
                        .metadata
                        .annotations
                        .clone()
                        .unwrap_or_default(),
                ));
                m.fleets.push(fleet);
            }
            "Service" => {
                typed::<k8s_openapi::api::core::v1::Service>(&file, &doc);
            }
            "PodAutoscaler" | "ScaledObject" | "LeaderWorkerSet" => m.custom.push((file, doc)),
            other => panic!("{}: unexpected kind {other:?}", file.display()),
        }
    }
    m
}

#[test]
fn rbac_grants_exactly_what_the_orchestrator_uses() {
    let m = manifests();
    assert_eq!(m.roles.len(), 1);
    let mut granted = BTreeSet::new();
    for rule in m.roles[0].rules.clone().unwrap_or_default() {
        for group in rule.api_groups.unwrap_or_default() {
            for resource in rule.resources.clone().unwrap_or_default() {
                for verb in &rule.verbs {
                    granted.insert(format!("{group}/{resource}/{verb}"));
                }
            }
        }
    }
    let needed: BTreeSet<String> = [
        "ray.io/rayclusters/get",
        "ray.io/rayclusters/list",
        "ray.io/rayclusters/watch",
        "/pods/get",
        "/pods/list",
        "/pods/watch",
        "/events/create",
        "/events/patch",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(granted, needed);
    let binding = &m.bindings[0];
    assert_eq!(binding.role_ref.kind, "Role");
    assert_eq!(
        Some(&binding.role_ref.name),
        m.roles[0].metadata.name.as_ref()
    );
    let subject = &binding.subjects.as_ref().unwrap()[0];
    assert_eq!(subject.kind, "ServiceAccount");
    assert_eq!(Some(&subject.name), m.accounts[0].metadata.name.as_ref());
    assert_eq!(subject.namespace, m.roles[0].metadata.namespace);
    // Every head runs as that service account.
    for (file, _, spec, _) in &m.clusters {
        let pod = spec.head_group_spec.template.spec.as_ref().unwrap();
        assert_eq!(
            pod.service_account_name,
            subject.name.clone().into(),
            "{}",
            file.display()
        );
    }
}

fn probe_path(probe: &Option<k8s_openapi::api::core::v1::Probe>) -> (String, String) {
    let get = probe.as_ref().unwrap().http_get.as_ref().unwrap();
    let port = match &get.port {
        k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(i) => i.to_string(),
        k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(s) => s.clone(),
    };
    (get.path.clone().unwrap_or_default(), port)
}

fn container_port(c: &Container, name: &str) -> Option<i32> {
    c.ports
        .as_ref()?
        .iter()
        .find(|p| p.name.as_deref() == Some(name))
        .map(|p| p.container_port)
}

fn ray_container(t: &PodTemplateSpec) -> &Container {
    &t.spec.as_ref().unwrap().containers[0]
}

#[test]
fn ray_clusters_run_the_orchestrator_with_probes_ports_and_the_origin_shape() {
    let m = manifests();
    assert!(m.clusters.len() >= 3, "kuberay, custom policy, aibrix");
    for (file, name, spec, annotations) in &m.clusters {
        let at = format!("{} ({name})", file.display());
        assert_eq!(
            annotations
                .get("ray.io/overwrite-container-cmd")
                .map(String::as_str),
            Some("true"),
            "{at}"
        );
        // Workers must reach a head that is not Ready yet.
        let service = spec.head_group_spec.head_service.as_ref().unwrap();
        assert_eq!(
            service.spec.as_ref().unwrap().publish_not_ready_addresses,
            Some(true),
            "{at}"
        );
        // The origin document's head: 1 CPU, 1 GPU; one worker group.
        let head = ray_container(&spec.head_group_spec.template);
        let limits = head.resources.as_ref().unwrap().limits.as_ref().unwrap();
        assert_eq!(quantity(&limits["cpu"]), Some(1.0), "{at}");
        assert_eq!(quantity(&limits["nvidia.com/gpu"]), Some(1.0), "{at}");
        assert_eq!(spec.worker_group_specs.len(), 1, "{at}");
        let topology = spec.topology();
        if spec.enable_in_tree_autoscaling == Some(true) {
            // From zero: the autoscaler starts the worker the head asks for.
            let group = &spec.worker_group_specs[0];
            assert_eq!(
                (group.replicas, group.min_replicas),
                (Some(0), Some(0)),
                "{at}"
            );
            assert!(group.max_replicas.unwrap_or(0) >= 1, "{at}");
            assert_eq!(topology.nodes, 1, "{at}");
        } else {
            assert_eq!(topology.nodes, 2, "{at}");
            assert_eq!(topology.gpus, 2.0, "{at}");
        }
        // Dashboard and metrics as in the origin document.
        assert_eq!(container_port(head, "dashboard"), Some(8265), "{at}");
        assert_eq!(container_port(head, "metrics"), Some(8080), "{at}");
        assert_eq!(
            spec.head_group_spec
                .ray_start_params
                .get("metrics-export-port")
                .map(String::as_str),
            Some("8080"),
            "{at}"
        );
        for (t, role) in std::iter::once((&spec.head_group_spec.template, "head")).chain(
            spec.worker_group_specs
                .iter()
                .map(|g| (&g.template, "worker")),
        ) {
            let c = ray_container(t);
            assert_eq!(
                c.command.as_deref(),
                Some(&["/usr/local/bin/orchestrator".to_string()][..]),
                "{at}"
            );
            let args = c.args.clone().unwrap();
            assert_eq!(args[0], "run", "{at}");
            assert_eq!(args[args.len() - 1], role, "{at}");
            assert_eq!(
                container_port(c, "orchestrator"),
                Some(i32::from(orchestrator_phases_port())),
                "{at}"
            );
            assert_eq!(
                probe_path(&c.liveness_probe),
                ("/livez".into(), "orchestrator".into()),
                "{at}"
            );
            assert_eq!(
                probe_path(&c.readiness_probe),
                ("/readyz".into(), "orchestrator".into()),
                "{at}"
            );
        }
        // The head's startupProbe covers a long model load (>= 30 min).
        let startup = head.startup_probe.as_ref().unwrap();
        assert_eq!(probe_path(&head.startup_probe).0, "/readyz", "{at}");
        let budget = startup.period_seconds.unwrap_or(10) * startup.failure_threshold.unwrap_or(3);
        assert!(budget >= 1800, "{at}: startupProbe allows only {budget} s");
    }
    // The fleet rolls out one RayCluster at a time, never below replicas.
    let fleet = &m.fleets[0];
    let strategy = fleet.spec.strategy.as_ref().unwrap();
    assert_eq!(strategy.type_, "RollingUpdate");
    let rolling = strategy.rolling_update.as_ref().unwrap();
    assert_eq!(
        rolling.max_unavailable,
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(0))
    );
    let selector = fleet.spec.selector.match_labels.clone().unwrap();
    let labels = fleet.spec.template.metadata.labels.clone().unwrap();
    for (k, v) in selector {
        assert_eq!(
            labels.get(&k),
            Some(&v),
            "the selector matches the template"
        );
    }
}

fn orchestrator_phases_port() -> u16 {
    8471
}

/// KUBERAY_GEN_RAY_START_CMD as KubeRay builds it (kuberay.md): sorted
/// flags from rayStartParams and the container's limits, defaults filled
/// in, `--block` always.
fn kuberay_command(
    role: &str,
    cluster: &str,
    params: &BTreeMap<String, String>,
    c: &Container,
) -> String {
    let mut flags: BTreeMap<String, String> = params.clone();
    let limits = c
        .resources
        .as_ref()
        .and_then(|r| r.limits.clone())
        .unwrap_or_default();
    if let Some(cpu) = limits.get("cpu") {
        flags
            .entry("num-cpus".into())
            .or_insert(format!("{}", quantity(cpu).unwrap()));
    }
    if let Some(mem) = limits.get("memory") {
        flags
            .entry("memory".into())
            .or_insert(format!("{}", quantity(mem).unwrap() as u64));
    }
    if let Some(gpu) = limits.get("nvidia.com/gpu") {
        flags
            .entry("num-gpus".into())
            .or_insert(format!("{}", quantity(gpu).unwrap()));
    }
    flags
        .entry("metrics-export-port".into())
        .or_insert("8080".into());
    flags
        .entry("dashboard-agent-listen-port".into())
        .or_insert("52365".into());
    if role == "head" {
        flags
            .entry("dashboard-host".into())
            .or_insert("0.0.0.0".into());
    } else {
        flags
            .entry("address".into())
            .or_insert(format!("{cluster}-head-svc.vllm.svc.cluster.local:6379"));
    }
    flags.remove("block");
    let mut cmd = String::from("ray start");
    if role == "head" {
        cmd.push_str(" --head");
    }
    cmd.push_str(" --block");
    for (k, v) in flags {
        cmd.push_str(&format!(" --{k}={v}"));
    }
    cmd
}

/// The container's environment as the kubelet would set it.
fn container_env(c: &Container, pod_ip: &str, pod_name: &str) -> Vec<(String, String)> {
    c.env
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|e| {
            if let Some(v) = e.value {
                return Some((e.name, v));
            }
            let from = e.value_from?;
            // A Secret's value: the same for every pod that names it.
            if let Some(secret) = from.secret_key_ref {
                return Some((
                    e.name,
                    format!("test-secret-of-{}-{}", secret.name, secret.key),
                ));
            }
            let field = from.field_ref?.field_path;
            let v = match field.as_str() {
                "status.podIP" => pod_ip.to_string(),
                "metadata.name" => pod_name.to_string(),
                "metadata.namespace" => "vllm".to_string(),
                other => panic!("unexpected fieldRef {other}"),
            };
            Some((e.name, v))
        })
        .collect()
}

/// The name of the ConfigMap mounted at `dir` in the template's Ray
/// container.
fn config_map_at(t: &PodTemplateSpec, dir: &str) -> String {
    let mount = ray_container(t)
        .volume_mounts
        .as_ref()
        .unwrap()
        .iter()
        .find(|v| v.mount_path == dir)
        .unwrap_or_else(|| panic!("nothing is mounted at {dir}"));
    let volume = t
        .spec
        .as_ref()
        .unwrap()
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .find(|v| v.name == mount.name)
        .unwrap();
    volume.config_map.as_ref().unwrap().name.clone()
}

/// The ConfigMap mounted at the `--config` file's directory, and the key.
fn mounted_config<'a>(m: &'a Manifests, t: &PodTemplateSpec) -> (&'a ConfigMap, String) {
    let args = ray_container(t).args.clone().unwrap();
    let path = &args[args.iter().position(|a| a == "--config").unwrap() + 1];
    let (dir, key) = path.rsplit_once('/').unwrap();
    let name = config_map_at(t, dir);
    let cm = m
        .config_maps
        .get(&name)
        .unwrap_or_else(|| panic!("ConfigMap {name} is not in deploy/"));
    (cm, key.to_string())
}

fn plan(
    config: &Path,
    role: &str,
    env: &[(String, String)],
    sets: &[String],
) -> (bool, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_orchestrator"));
    cmd.args(["plan", "--config"])
        .arg(config)
        .args(["--role", role]);
    for s in sets {
        if s.starts_with("--") {
            cmd.arg(s);
        } else {
            cmd.args(["--set", s]);
        }
    }
    // Only what the pod would have.
    for (k, _) in std::env::vars() {
        if k.starts_with("ORCHESTRATOR") || k.starts_with("KUBERAY") {
            cmd.env_remove(k);
        }
    }
    cmd.env("ORCHESTRATOR_PLUGIN_NO_CACHE", "true");
    cmd.envs(env.iter().cloned());
    let out =
        orchestrator_test_support::output_within(&mut cmd, std::time::Duration::from_secs(120));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn every_mounted_config_is_accepted_by_plan_in_its_container() {
    let m = manifests();
    let dir = tempfile::tempdir().unwrap();
    let example_wasm = std::fs::read(orchestrator_test_plugins::ACCELERATOR_READINESS).unwrap();
    let example_sha = hex::encode(sha2::Sha256::digest(&example_wasm));
    let mut checked = 0;
    for (file, name, spec, _) in &m.clusters {
        let cluster_name = name.as_str();
        let groups = std::iter::once((
            &spec.head_group_spec.template,
            &spec.head_group_spec.ray_start_params,
            "head",
        ))
        .chain(
            spec.worker_group_specs
                .iter()
                .map(|g| (&g.template, &g.ray_start_params, "worker")),
        );
        for (template, params, role) in groups {
            let at = format!("{} ({name}, {role})", file.display());
            let (cm, key) = mounted_config(&m, template);
            let text = cm
                .data
                .as_ref()
                .unwrap()
                .get(&key)
                .unwrap_or_else(|| panic!("{at}: no {key}"));
            let config = dir.path().join(format!("{name}-{role}.toml"));
            std::fs::write(&config, text).unwrap();
            let c = ray_container(template);
            let pod_ip = if role == "head" {
                "10.244.1.12"
            } else {
                "10.244.2.7"
            };
            let mut env = container_env(c, pod_ip, &format!("{cluster_name}-{role}-x7k2p"));
            let mut command = kuberay_command(role, cluster_name, params, c);
            // What KubeRay adds for gcsFaultToleranceOptions: on the head the
            // Redis address, the password from its Secret and
            // `--redis-password=$REDIS_PASSWORD` in the command; on workers
            // the raylets' reconnect timeout.
            let ft = spec.gcs_fault_tolerance_options.as_ref();
            if let Some(ft) = ft {
                if role == "head" {
                    let secret = &ft["redisPassword"]["valueFrom"]["secretKeyRef"];
                    assert!(
                        secret["name"].is_string() && secret["key"].is_string(),
                        "{at}: {ft}"
                    );
                    env.push(("REDIS_PASSWORD".into(), "from-the-secret".into()));
                    env.push((
                        "RAY_REDIS_ADDRESS".into(),
                        ft["redisAddress"].as_str().unwrap().into(),
                    ));
                    command.push_str(" --redis-password=$REDIS_PASSWORD");
                } else {
                    env.push((
                        "RAY_gcs_rpc_server_reconnect_timeout_s".into(),
                        "600".into(),
                    ));
                }
            }
            env.push(("KUBERAY_GEN_RAY_START_CMD".into(), command));
            let mut sets = vec![];
            // A custom policy: materialize its ConfigMap the way
            // `kubectl create configmap --from-file` stores it (binaryData)
            // and point the config at it.
            let parsed: toml::Table = text.parse().unwrap();
            let policy_file = parsed
                .get("policies")
                .and_then(|p| p.get("readiness"))
                .and_then(|r| r.get("file"))
                .and_then(|f| f.as_str());
            if let (Some(policy_file), "head") = (policy_file, role) {
                let (policy_dir, policy_key) = policy_file.rsplit_once('/').unwrap();
                let cm_name = config_map_at(template, policy_dir);
                let header = std::fs::read_to_string(file).unwrap();
                assert!(
                    header.contains(&format!("create configmap {cm_name}"))
                        && header.contains(&format!("--from-file={policy_key}=")),
                    "{at}: the file must say how to create ConfigMap {cm_name} with key {policy_key}"
                );
                let stored = base64::engine::general_purpose::STANDARD.encode(&example_wasm);
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(stored)
                    .unwrap();
                let local = dir.path().join(policy_key);
                std::fs::write(&local, decoded).unwrap();
                sets.push(format!("policies.readiness.file=\"{}\"", local.display()));
                let pinned = parsed["policies"]["readiness"]["sha256"].as_str().unwrap();
                if pinned != example_sha {
                    // A stale pin is refused, naming the real sha256.
                    let (ok, _, stderr) = plan(&config, role, &env, &sets);
                    assert!(
                        !ok && stderr.contains(&example_sha) && stderr.contains("pins"),
                        "{at}: {stderr}"
                    );
                    sets.push(format!("policies.readiness.sha256=\"{example_sha}\""));
                }
            }
            // The head's plan takes the topology from the manifest itself.
            if role == "head" {
                sets.push(format!("--raycluster={}", file.display()));
            }
            let (ok, stdout, stderr) = plan(&config, role, &env, &sets);
            assert!(ok, "{at}: plan refused the mounted config: {stderr}");
            assert!(!stderr.contains("warning:"), "{at}: {stderr}");
            let plan: Value = serde_json::from_str(&stdout).unwrap();
            let argv: Vec<String> = serde_json::from_value(plan["start"]["argv"].clone()).unwrap();
            assert!(!argv.contains(&"--block".to_string()), "{at}: {argv:?}");
            assert!(
                argv.contains(&format!("--node-ip-address={pod_ip}")),
                "{at}: {argv:?}"
            );
            assert_eq!(plan["start"]["from-kuberay-command"], true, "{at}");
            if ft.is_some() && role == "head" {
                // Expanded from the environment, and never shown.
                assert!(
                    argv.contains(&"--redis-password=<redacted>".to_string()),
                    "{at}: {argv:?}"
                );
                assert!(
                    !stdout.contains("from-the-secret"),
                    "{at}: the password is shown"
                );
            }
            if role == "head" {
                assert!(argv.contains(&"--head".to_string()), "{at}: {argv:?}");
                assert_eq!(plan["kubernetes"]["enabled"], true, "{at}");
                let serve = plan["serve"]["argv"].to_string();
                assert!(serve.contains("Qwen/Qwen2.5-7B-Instruct"), "{at}: {plan:#}");
                // 2 nodes of 1 GPU each: TP 1 x PP 2 over Ray.
                assert!(
                    serve.contains("\"--pipeline-parallel-size\",\"2\""),
                    "{at}: {serve}"
                );
                assert_eq!(plan["wait"]["expected"]["nodes"], 2, "{at}");
                if policy_file.is_some() {
                    assert_eq!(
                        plan["policies"]["readiness"]["sha256"],
                        example_sha.as_str(),
                        "{at}"
                    );
                }
            } else {
                assert!(
                    argv.iter().any(|a| a
                        == &format!(
                            "--address={cluster_name}-head-svc.vllm.svc.cluster.local:6379"
                        )),
                    "{at}: {argv:?}"
                );
            }
            checked += 1;
        }
    }
    assert!(checked >= 6, "checked {checked} containers");
}

#[test]
fn the_leaderworkerset_runs_every_rank_from_one_config_with_the_lws_environment() {
    let m = manifests();
    let dir = tempfile::tempdir().unwrap();
    let (file, lws) = m
        .custom
        .iter()
        .find(|(_, d)| d["kind"] == "LeaderWorkerSet")
        .expect("deploy/lws has a LeaderWorkerSet");
    let name = lws["metadata"]["name"].as_str().unwrap();
    let namespace = lws["metadata"]["namespace"].as_str().unwrap();
    let template = &lws["spec"]["leaderWorkerTemplate"];
    let size = template["size"].as_u64().unwrap();
    assert_eq!(size, 2, "{}", file.display());
    // The orchestrator restarts the group in place; LWS must not recreate
    // it on every pod restart.
    assert_eq!(template["restartPolicy"], "None");
    // What the LWS controller sets in group 0's pods.
    let leader_address = format!("{name}-0.{name}.{namespace}");
    for (rank, key, pod_ip) in [
        (0, "leaderTemplate", "10.244.1.20"),
        (1, "workerTemplate", "10.244.2.21"),
    ] {
        let at = format!("{} ({key})", file.display());
        let t: PodTemplateSpec = serde_json::from_value(template[key].clone()).unwrap();
        let (cm, config_key) = mounted_config(&m, &t);
        let text = cm.data.as_ref().unwrap().get(&config_key).unwrap();
        let config = dir.path().join(format!("{key}.toml"));
        std::fs::write(&config, text).unwrap();
        let c = ray_container(&t);
        let pod_name = if rank == 0 {
            format!("{name}-0")
        } else {
            format!("{name}-0-{rank}")
        };
        let mut env = container_env(c, pod_ip, &pod_name);
        env.extend([
            ("LWS_LEADER_ADDRESS".to_string(), leader_address.clone()),
            ("LWS_GROUP_SIZE".to_string(), size.to_string()),
            ("LWS_WORKER_INDEX".to_string(), rank.to_string()),
        ]);
        // Every rank authenticates with the group's Secret.
        assert!(
            env.iter()
                .any(|(k, v)| k == "ORCHESTRATOR_GROUP_SECRET"
                    && v.contains("vllm-llama-native-group")),
            "{at}: the group secret comes from the Secret vllm-llama-native-group"
        );
        // NVML would see the pod's nvidia.com/gpu limit there.
        let sets = vec!["native.gpus=1".to_string()];
        let (ok, stdout, stderr) = plan(&config, "head", &env, &sets);
        assert!(ok, "{at}: plan refused the mounted config: {stderr}");
        let plan: Value = serde_json::from_str(&stdout).unwrap();
        assert_eq!(plan["backend"], "native", "{at}");
        assert_eq!(plan["rank"], rank, "{at}: {plan:#}");
        assert_eq!(plan["node-address"], pod_ip, "{at}: POD_IP");
        assert_eq!(plan["master"], format!("{leader_address}:29500"), "{at}");
        if rank == 0 {
            assert_eq!(plan["rendezvous"]["serves-on"], "0.0.0.0:8471", "{at}");
            let ranks = plan["ranks"]
                .as_array()
                .unwrap_or_else(|| panic!("{at}: {plan:#}"));
            assert_eq!(ranks.len(), 2, "{at}");
            let leader = ranks[0]["argv"].to_string();
            let worker = ranks[1]["argv"].to_string();
            for expected in [
                "\"--nnodes\",\"2\"",
                &format!("\"--master-addr\",\"{leader_address}\""),
            ] {
                assert!(
                    leader.contains(expected) && worker.contains(expected),
                    "{at}: {leader} / {worker}"
                );
            }
            assert!(
                leader.contains("\"--node-rank\",\"0\"")
                    && leader.contains("Qwen/Qwen2.5-7B-Instruct")
            );
            assert!(worker.contains("\"--node-rank\",\"1\"") && worker.contains("\"--headless\""));
            assert!(!leader.contains("--headless"), "{at}: {leader}");
            // The container exposes what the leader serves on.
            assert_eq!(container_port(c, "orchestrator"), Some(8471), "{at}");
            assert_eq!(container_port(c, "http"), Some(8000), "{at}");
        } else {
            assert_eq!(
                plan["rendezvous"]["registers-with"],
                format!("{leader_address}:8471"),
                "{at}"
            );
        }
    }
}

/// The upstream CRD schema of `kind` at `version`.
fn crd_schema(kind: &str, version: &str) -> Value {
    let file = match kind {
        "RayCluster" => "ray.io_rayclusters.json",
        "RayClusterFleet" => "orchestration.aibrix.ai_rayclusterfleets.json",
        "PodAutoscaler" => "autoscaling.aibrix.ai_podautoscalers.json",
        "ScaledObject" => "keda.sh_scaledobjects.json",
        "LeaderWorkerSet" => "leaderworkerset.x-k8s.io_leaderworkersets.json",
        other => panic!("no CRD for {other}"),
    };
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/crds")
        .join(file);
    let crd: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    crd["versions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == version && v["served"] == true)
        .unwrap_or_else(|| panic!("{kind} {version} is not served by the CRD"))["schema"]
        .clone()
}

/// The places where `value` breaks the structural OpenAPI v3 `schema` the
/// API server would apply: unknown fields (pruned by the server, so a
/// setting silently lost), missing required fields, wrong types, values
/// outside an enum, numbers outside their bounds, short lists.
fn schema_errors(value: &Value, schema: &Value, at: &str, errors: &mut Vec<String>) {
    if schema["x-kubernetes-int-or-string"] == true {
        if !(value.is_i64() || value.is_u64() || value.is_string()) {
            errors.push(format!("{at}: {value} is neither an integer nor a string"));
        }
        return;
    }
    if let Some(allowed) = schema["enum"].as_array()
        && !allowed.contains(value)
    {
        errors.push(format!("{at}: {value} is not one of {allowed:?}"));
    }
    let number = |v: &Value| v.as_f64();
    if let (Some(v), Some(min)) = (number(value), schema["minimum"].as_f64())
        && v < min
    {
        errors.push(format!("{at}: {v} is below the minimum {min}"));
    }
    if let (Some(v), Some(max)) = (number(value), schema["maximum"].as_f64())
        && v > max
    {
        errors.push(format!("{at}: {v} is above the maximum {max}"));
    }
    match schema["type"].as_str() {
        Some("object") => {
            let Some(map) = value.as_object() else {
                errors.push(format!("{at}: expected an object, found {value}"));
                return;
            };
            for required in schema["required"].as_array().into_iter().flatten() {
                let key = required.as_str().unwrap_or_default();
                if !map.contains_key(key) {
                    errors.push(format!("{at}: required field {key} is missing"));
                }
            }
            let properties = schema["properties"].as_object();
            let additional = &schema["additionalProperties"];
            let preserve = schema["x-kubernetes-preserve-unknown-fields"] == true;
            for (key, child) in map {
                let path = format!("{at}.{key}");
                match properties.and_then(|p| p.get(key)) {
                    Some(child_schema) => schema_errors(child, child_schema, &path, errors),
                    None if additional.is_object() => {
                        schema_errors(child, additional, &path, errors)
                    }
                    None if preserve || additional == &Value::Bool(true) => {}
                    None if properties.is_none() => {}
                    None => errors.push(format!(
                        "{path}: not a field of the schema (the API server would drop it)"
                    )),
                }
            }
        }
        Some("array") => {
            let Some(items) = value.as_array() else {
                errors.push(format!("{at}: expected a list, found {value}"));
                return;
            };
            if let Some(min) = schema["minItems"].as_u64()
                && (items.len() as u64) < min
            {
                errors.push(format!(
                    "{at}: {} items, at least {min} needed",
                    items.len()
                ));
            }
            for (i, item) in items.iter().enumerate() {
                schema_errors(item, &schema["items"], &format!("{at}[{i}]"), errors);
            }
        }
        Some("string") if !value.is_string() => {
            errors.push(format!("{at}: expected a string, found {value}"))
        }
        Some("integer") if !(value.is_i64() || value.is_u64()) => {
            errors.push(format!("{at}: expected an integer, found {value}"))
        }
        Some("number") if !value.is_number() => {
            errors.push(format!("{at}: expected a number, found {value}"))
        }
        Some("boolean") if !value.is_boolean() => {
            errors.push(format!("{at}: expected a boolean, found {value}"))
        }
        _ => {}
    }
}

#[test]
fn the_kuberay_cluster_turns_on_rays_token_authentication() {
    let doc = documents()
        .into_iter()
        .map(|(_, d)| d)
        .find(|d| d["kind"] == "RayCluster" && d["metadata"]["name"] == "vllm-llama")
        .or_else(|| {
            documents()
                .into_iter()
                .map(|(_, d)| d)
                .find(|d| d["kind"] == "RayCluster")
        })
        .expect("deploy/kuberay has a RayCluster");
    assert_eq!(doc["spec"]["authOptions"]["mode"], "token", "{doc:#}");
    // The upstream schema has the field (checked with every other field in
    // every_custom_resource_matches_its_upstream_crd_schema).
    let schema = crd_schema("RayCluster", "v1");
    assert!(
        schema["properties"]["spec"]["properties"]["authOptions"]["properties"]["mode"]["enum"]
            .as_array()
            .is_some_and(|modes| modes.iter().any(|m| m == "token")),
        "the fixture CRD has authOptions.mode"
    );
}

#[test]
fn every_custom_resource_matches_its_upstream_crd_schema() {
    let mut checked = BTreeSet::new();
    for (file, doc) in documents() {
        let kind = doc["kind"].as_str().unwrap_or_default();
        if !matches!(
            kind,
            "RayCluster" | "RayClusterFleet" | "PodAutoscaler" | "ScaledObject" | "LeaderWorkerSet"
        ) {
            continue;
        }
        let version = doc["apiVersion"]
            .as_str()
            .and_then(|v| v.rsplit_once('/'))
            .map(|(_, v)| v)
            .unwrap();
        let mut errors = vec![];
        schema_errors(&doc, &crd_schema(kind, version), kind, &mut errors);
        assert!(
            errors.is_empty(),
            "{} does not match the upstream {kind} CRD:\n{}",
            file.display(),
            errors.join("\n")
        );
        checked.insert(kind.to_string());
    }
    assert_eq!(
        checked.into_iter().collect::<Vec<_>>(),
        [
            "LeaderWorkerSet",
            "PodAutoscaler",
            "RayCluster",
            "RayClusterFleet",
            "ScaledObject"
        ]
    );
}

#[test]
fn the_schema_check_finds_what_the_api_server_would_drop_or_refuse() {
    let (_, mut fleet) = documents()
        .into_iter()
        .find(|(_, d)| d["kind"] == "RayClusterFleet")
        .unwrap();
    let schema = crd_schema("RayClusterFleet", "v1alpha1");
    fleet["spec"]["replicas"] = Value::from("two");
    fleet["spec"]["template"]["spec"]["headGroupSpec"]["rayStartParam"] = serde_json::json!({});
    let mut errors = vec![];
    schema_errors(&fleet, &schema, "RayClusterFleet", &mut errors);
    let text = errors.join("\n");
    assert!(
        text.contains("spec.replicas: expected an integer"),
        "{text}"
    );
    assert!(
        text.contains("headGroupSpec.rayStartParam: not a field"),
        "{text}"
    );
    let (_, mut autoscaler) = documents()
        .into_iter()
        .find(|(_, d)| d["kind"] == "PodAutoscaler")
        .unwrap();
    autoscaler["spec"]["scalingStrategy"] = Value::from("HPAX");
    autoscaler["spec"]["metricsSources"] = serde_json::json!([]);
    autoscaler["spec"]
        .as_object_mut()
        .unwrap()
        .remove("maxReplicas");
    let mut errors = vec![];
    let schema = crd_schema("PodAutoscaler", "v1alpha1");
    schema_errors(&autoscaler, &schema, "PodAutoscaler", &mut errors);
    let text = errors.join("\n");
    assert!(
        text.contains("spec.scalingStrategy: \"HPAX\" is not one of"),
        "{text}"
    );
    assert!(
        text.contains("spec.metricsSources: 0 items, at least 1 needed"),
        "{text}"
    );
    assert!(
        text.contains("required field maxReplicas is missing"),
        "{text}"
    );
}

#[test]
fn plan_warns_when_the_gateway_routes_a_name_vllm_does_not_serve() {
    let fleet = deploy_dir().join("aibrix/rayclusterfleet.yaml");
    let m = manifests();
    let cm = &m.config_maps["vllm-llama-orchestrator"];
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("head.toml");
    std::fs::write(&config, &cm.data.as_ref().unwrap()["config.toml"]).unwrap();
    let raycluster = format!("--raycluster={}", fleet.display());
    let kuberay = (
        "KUBERAY_GEN_RAY_START_CMD".to_string(),
        "ray start --head --dashboard-host=0.0.0.0 --block".to_string(),
    );
    // Without the served name the fleet's head sets, the plan warns.
    let (ok, _, stderr) = plan(
        &config,
        "head",
        std::slice::from_ref(&kuberay),
        std::slice::from_ref(&raycluster),
    );
    assert!(ok, "{stderr}");
    assert!(
        stderr.contains("warning: AIBrix's gateway routes model \"qwen25-7b\"")
            && stderr.contains("vLLM serves \"Qwen/Qwen2.5-7B-Instruct\"")
            && stderr.contains("serve.served-model-name = \"qwen25-7b\""),
        "{stderr}"
    );
    // With it, no warning.
    let env = [
        (
            "ORCHESTRATOR__SERVE__SERVED_MODEL_NAME".to_string(),
            "qwen25-7b".to_string(),
        ),
        kuberay,
    ];
    let (ok, _, stderr) = plan(&config, "head", &env, &[raycluster]);
    assert!(ok && !stderr.contains("warning:"), "{stderr}");
}

#[test]
fn an_environment_variable_that_is_not_utf8_stops_only_when_it_is_ours() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    let run = |name: &[u8], value: &[u8]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_orchestrator"));
        cmd.args([
            "plan",
            "--role",
            "worker",
            "--set",
            "ray.gcs-address=\"10.0.0.1:6379\"",
        ])
        .env("ORCHESTRATOR_PLUGIN_NO_CACHE", "true")
        .env(OsStr::from_bytes(name), OsStr::from_bytes(value));
        orchestrator_test_support::output_within(&mut cmd, std::time::Duration::from_secs(60))
    };
    // Not ours: ignored (it used to panic in std's env::vars, exit 101).
    let out = run(b"CONTAINER_JUNK", b"caf\xe9");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Ours: refused by name, exit 2.
    let out = run(b"ORCHESTRATOR__RAY__NODE_IP", b"10.0.0.\xff");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("ORCHESTRATOR__RAY__NODE_IP") && stderr.contains("not UTF-8"),
        "{stderr}"
    );
}

/// Every container that runs the orchestrator may take a stalled rank's
/// Python stacks: py-spy needs ptrace, so the container adds SYS_PTRACE.
#[test]
fn every_orchestrator_container_may_take_python_stacks() {
    fn walk(value: &Value, found: &mut Vec<Value>) {
        match value {
            Value::Object(map) => {
                let image = map.get("image").and_then(Value::as_str).unwrap_or_default();
                if image.starts_with("vllm-orchestrator:") {
                    found.push(value.clone());
                }
                for v in map.values() {
                    walk(v, found);
                }
            }
            Value::Array(items) => items.iter().for_each(|v| walk(v, found)),
            _ => {}
        }
    }
    let mut containers = vec![];
    for (_, doc) in documents() {
        walk(&doc, &mut containers);
    }
    assert!(containers.len() >= 10, "{} containers", containers.len());
    for c in containers {
        let added = &c["securityContext"]["capabilities"]["add"];
        assert!(
            added
                .as_array()
                .is_some_and(|caps| caps.iter().any(|cap| cap.as_str() == Some("SYS_PTRACE"))),
            "container {:?} does not add SYS_PTRACE",
            c["name"]
        );
    }
}
