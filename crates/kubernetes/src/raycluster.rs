//! The part of KubeRay's `RayCluster` (ray.io/v1) and AIBrix's
//! `RayClusterFleet` (orchestration.aibrix.ai/v1alpha1) the orchestrator
//! reads, as typed structs, and the expected topology they imply.
//!
//! Why hand-written structs with a hand-written [`kube::Resource`] impl
//! rather than kube's `CustomResource` derive: we read a subset of CRDs we
//! do not own. The derive generates (and needs schemars for) a full schema
//! that would claim to be the CRD; a subset that ignores unknown fields
//! keeps working across KubeRay releases that add fields, while the typed
//! `Api<RayCluster>` still gives compile-checked access to what we use.
//! Pod templates are k8s-openapi's own `PodTemplateSpec`.

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::core::v1::{Container, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, ObjectMeta};
use orchestrator_domain::{NodeGroup, Topology};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::collections::BTreeMap;

/// The label KubeRay puts on every pod of a RayCluster: the cluster's name.
pub const CLUSTER_LABEL: &str = "ray.io/cluster";
/// The label telling `head` from `worker` pods.
pub const NODE_TYPE_LABEL: &str = "ray.io/node-type";
/// The label naming a worker pod's group.
pub const GROUP_LABEL: &str = "ray.io/group";

/// A KubeRay `RayCluster`, the fields the orchestrator reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct RayCluster {
    /// Name, namespace, labels, resource version.
    pub metadata: ObjectMeta,
    /// The desired cluster.
    pub spec: RayClusterSpec,
    /// What KubeRay observed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<RayClusterStatus>,
}

/// `RayCluster.spec`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct RayClusterSpec {
    /// The head pod.
    pub head_group_spec: HeadGroupSpec,
    /// The worker groups.
    #[serde(default)]
    pub worker_group_specs: Vec<WorkerGroupSpec>,
    /// The Ray version, informational.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ray_version: Option<String>,
    /// A suspended cluster has no pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suspend: Option<bool>,
    /// KubeRay runs Ray's autoscaler beside the head, which sets the
    /// groups' `replicas` from Ray's demand.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_in_tree_autoscaling: Option<bool>,
    /// `autoscalerOptions`, kept as written (the orchestrator does not read
    /// them; KubeRay's autoscaler does).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaler_options: Option<serde_json::Value>,
    /// `gcsFaultToleranceOptions`, kept as written: KubeRay turns them into
    /// the head's `RAY_REDIS_ADDRESS`, `REDIS_PASSWORD` and
    /// `--redis-password=$REDIS_PASSWORD` (which the orchestrator expands)
    /// and the workers' reconnect timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gcs_fault_tolerance_options: Option<serde_json::Value>,
    /// `authOptions` (KubeRay >= 1.5.1), kept as written: with
    /// `mode: token` KubeRay makes a Secret with a random token and sets
    /// `RAY_AUTH_MODE` and `RAY_AUTH_TOKEN` on every Ray container, which
    /// the orchestrator reads like Ray does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_options: Option<serde_json::Value>,
}

/// `spec.headGroupSpec`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct HeadGroupSpec {
    /// `ray start` parameters KubeRay turns into flags.
    #[serde(default)]
    pub ray_start_params: BTreeMap<String, String>,
    /// The head pod's template.
    pub template: PodTemplateSpec,
    /// A custom head Service (KubeRay keeps its spec, sets the selector).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_service: Option<HeadService>,
}

/// `spec.headGroupSpec.headService`: a Service template without
/// `apiVersion`/`kind`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct HeadService {
    /// Name, labels, annotations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<ObjectMeta>,
    /// The Service's spec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<k8s_openapi::api::core::v1::ServiceSpec>,
}

/// One entry of `spec.workerGroupSpecs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct WorkerGroupSpec {
    /// The group's name (pods carry it as `ray.io/group`).
    pub group_name: String,
    /// Desired replicas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    /// Lower bound of `replicas`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_replicas: Option<i32>,
    /// Upper bound of `replicas`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_replicas: Option<i32>,
    /// Pods per replica (multi-host groups).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_of_hosts: Option<i32>,
    /// A suspended group has no pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suspend: Option<bool>,
    /// `ray start` parameters.
    #[serde(default)]
    pub ray_start_params: BTreeMap<String, String>,
    /// The worker pods' template.
    pub template: PodTemplateSpec,
}

/// `RayCluster.status`, the fields the diagnosis uses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct RayClusterStatus {
    /// `ready`, `suspended`, ... (older KubeRay).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// Worker replicas KubeRay wants.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_worker_replicas: Option<i32>,
    /// Worker replicas that are ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_worker_replicas: Option<i32>,
    /// Conditions (`RayClusterProvisioned`, `HeadPodReady`,
    /// `ReplicaFailure`, ...).
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

/// An AIBrix `RayClusterFleet`: a Deployment whose unit is a RayCluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct RayClusterFleet {
    /// Name, namespace, labels.
    pub metadata: ObjectMeta,
    /// The desired fleet.
    pub spec: RayClusterFleetSpec,
}

/// `RayClusterFleet.spec`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct RayClusterFleetSpec {
    /// RayClusters in the fleet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    /// Which RayClusters belong to it.
    pub selector: LabelSelector,
    /// How a new template rolls out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<FleetStrategy>,
    /// The RayCluster template.
    pub template: RayClusterTemplate,
}

/// `RayClusterFleet.spec.strategy`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct FleetStrategy {
    /// `RollingUpdate` or `Recreate`.
    #[serde(rename = "type")]
    pub type_: String,
    /// Surge and unavailability bounds of a rolling update.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rolling_update: Option<RollingUpdate>,
}

/// `strategy.rollingUpdate`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct RollingUpdate {
    /// RayClusters above `replicas` during an update.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_surge: Option<k8s_openapi::apimachinery::pkg::util::intstr::IntOrString>,
    /// RayClusters that may be unavailable during an update.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_unavailable: Option<k8s_openapi::apimachinery::pkg::util::intstr::IntOrString>,
}

/// `RayClusterFleet.spec.template`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct RayClusterTemplate {
    /// Labels and annotations of each RayCluster.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// Each RayCluster's spec.
    pub spec: RayClusterSpec,
}

macro_rules! namespaced_resource {
    ($ty:ty, $group:literal, $version:literal, $kind:literal, $plural:literal) => {
        impl kube::Resource for $ty {
            type DynamicType = ();
            type Scope = NamespaceResourceScope;

            fn kind(_: &()) -> Cow<'_, str> {
                Cow::Borrowed($kind)
            }
            fn group(_: &()) -> Cow<'_, str> {
                Cow::Borrowed($group)
            }
            fn version(_: &()) -> Cow<'_, str> {
                Cow::Borrowed($version)
            }
            fn plural(_: &()) -> Cow<'_, str> {
                Cow::Borrowed($plural)
            }
            fn meta(&self) -> &ObjectMeta {
                &self.metadata
            }
            fn meta_mut(&mut self) -> &mut ObjectMeta {
                &mut self.metadata
            }
        }
    };
}

namespaced_resource!(RayCluster, "ray.io", "v1", "RayCluster", "rayclusters");
namespaced_resource!(
    RayClusterFleet,
    "orchestration.aibrix.ai",
    "v1alpha1",
    "RayClusterFleet",
    "rayclusterfleets"
);

impl WorkerGroupSpec {
    /// The pods KubeRay runs for this group: `replicas` clamped to
    /// `[minReplicas, maxReplicas]` (as KubeRay does), times `numOfHosts`;
    /// 0 when suspended.
    pub fn desired_pods(&self) -> u32 {
        if self.suspend == Some(true) {
            return 0;
        }
        let min = self.min_replicas.unwrap_or(0).max(0);
        let max = self.max_replicas.unwrap_or(i32::MAX).max(0);
        let replicas = self.replicas.unwrap_or(min).max(0);
        let replicas = if min > max {
            max
        } else {
            replicas.clamp(min, max)
        };
        let hosts = self.num_of_hosts.unwrap_or(1).max(1);
        u32::try_from(replicas.saturating_mul(hosts)).unwrap_or(0)
    }
}

/// GPUs and CPUs one pod offers Ray, as KubeRay computes them: the
/// `num-gpus`/`num-cpus` start parameters, else the Ray container's limits
/// (GPUs: any `*/gpu` resource such as `nvidia.com/gpu`; CPUs fall back to
/// requests).
pub fn pod_resources(params: &BTreeMap<String, String>, template: &PodTemplateSpec) -> (f64, f64) {
    let container: Option<&Container> = template.spec.as_ref().and_then(|s| s.containers.first());
    let resources = container.and_then(|c| c.resources.as_ref());
    let limits = resources.and_then(|r| r.limits.as_ref());
    let requests = resources.and_then(|r| r.requests.as_ref());
    let gpus = params
        .get("num-gpus")
        .and_then(|v| v.trim_matches('"').parse::<f64>().ok())
        .or_else(|| {
            limits.map(|l| {
                l.iter()
                    .filter(|(k, _)| k.ends_with("/gpu"))
                    .filter_map(|(_, q)| quantity(q))
                    .sum()
            })
        })
        .unwrap_or(0.0);
    let cpus = params
        .get("num-cpus")
        .and_then(|v| v.trim_matches('"').parse::<f64>().ok())
        .or_else(|| limits.and_then(|l| l.get("cpu")).and_then(quantity))
        .or_else(|| requests.and_then(|r| r.get("cpu")).and_then(quantity))
        .unwrap_or(0.0);
    (cpus, gpus)
}

/// A Kubernetes quantity as a number (`2`, `500m`, `1.5`, `1k`, `1Gi`).
pub fn quantity(q: &Quantity) -> Option<f64> {
    let text = q.0.trim();
    let split = text
        .find(|c: char| c.is_ascii_alphabetic())
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let value: f64 = number.parse().ok()?;
    let scale = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024.0_f64.powi(4),
        _ => return None,
    };
    Some(value * scale)
}

impl RayClusterSpec {
    /// The expected topology: the head plus every group's desired pods,
    /// GPUs from the start parameters or container limits.
    pub fn topology(&self) -> Topology {
        let (_, head_gpus) = pod_resources(
            &self.head_group_spec.ray_start_params,
            &self.head_group_spec.template,
        );
        let suspended = self.suspend == Some(true);
        let groups: Vec<NodeGroup> = self
            .worker_group_specs
            .iter()
            .map(|g| {
                let (cpus, gpus) = pod_resources(&g.ray_start_params, &g.template);
                NodeGroup {
                    name: g.group_name.clone(),
                    replicas: if suspended { 0 } else { g.desired_pods() },
                    cpus_per_node: cpus,
                    gpus_per_node: gpus,
                }
            })
            .collect();
        let workers: u32 = groups.iter().map(|g| g.replicas).sum();
        let gpus = head_gpus
            + groups
                .iter()
                .map(|g| f64::from(g.replicas) * g.gpus_per_node)
                .sum::<f64>();
        Topology {
            nodes: workers + 1,
            gpus,
            min_gpus_per_node: 0.0,
            groups,
        }
    }

    /// The expected topology when Ray's autoscaler sizes the worker groups
    /// (`enableInTreeAutoscaling`): their `replicas` are then what Ray asked
    /// for so far (0 from `minReplicas: 0`), not the layout. The layout
    /// instead: with `layout_gpus` (tensor x pipeline parallel size, when
    /// the serve settings name them) the GPU groups, in order, get the
    /// workers for the GPUs the head lacks (per group at least
    /// `minReplicas`, at most `maxReplicas`, times `numOfHosts`); without
    /// it each GPU group its `maxReplicas`. Groups without GPUs keep their
    /// `minReplicas`.
    pub fn autoscaled_topology(&self, layout_gpus: Option<f64>) -> Topology {
        let mut topology = self.topology();
        if self.suspend == Some(true) {
            return topology;
        }
        let (_, head_gpus) = pod_resources(
            &self.head_group_spec.ray_start_params,
            &self.head_group_spec.template,
        );
        let mut missing = layout_gpus.map(|g| (g - head_gpus).max(0.0));
        for (group, spec) in topology.groups.iter_mut().zip(&self.worker_group_specs) {
            let hosts = u32::try_from(spec.num_of_hosts.unwrap_or(1).max(1)).unwrap_or(1);
            let min = u32::try_from(spec.min_replicas.unwrap_or(0).max(0)).unwrap_or(0);
            let max = spec
                .max_replicas
                .map_or(u32::MAX, |m| u32::try_from(m.max(0)).unwrap_or(0))
                .max(min);
            let replicas = if group.gpus_per_node <= 0.0 {
                min
            } else {
                match missing.as_mut() {
                    Some(left) => {
                        let per_replica = group.gpus_per_node * f64::from(hosts);
                        let wanted = (*left / per_replica).ceil() as u32;
                        let n = wanted.clamp(min, max);
                        *left = (*left - f64::from(n) * per_replica).max(0.0);
                        n
                    }
                    None if max == u32::MAX => min,
                    None => max,
                }
            };
            group.replicas = replicas.saturating_mul(hosts);
        }
        let workers: u32 = topology.groups.iter().map(|g| g.replicas).sum();
        topology.nodes = workers + 1;
        topology.gpus = head_gpus
            + topology
                .groups
                .iter()
                .map(|g| f64::from(g.replicas) * g.gpus_per_node)
                .sum::<f64>();
        topology
    }
}

/// Why a manifest yields no topology.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The text is not YAML.
    #[error("not YAML: {0}")]
    Yaml(#[source] serde_yaml::Error),
    /// A RayCluster or RayClusterFleet document does not parse.
    #[error("not a valid {kind}: {source}")]
    Invalid {
        /// `RayCluster` or `RayClusterFleet`.
        kind: &'static str,
        /// What is wrong.
        #[source]
        source: serde_json::Error,
    },
    /// No document is a RayCluster or RayClusterFleet.
    #[error("no RayCluster or RayClusterFleet document")]
    Missing,
}

/// The expected topology of the first RayCluster or RayClusterFleet in a
/// (multi-document) YAML text, as `orchestrator plan --raycluster` reads it.
pub fn topology_from_yaml(text: &str) -> Result<Topology, ManifestError> {
    use serde::Deserialize;
    for document in serde_yaml::Deserializer::from_str(text) {
        let value = serde_json::Value::deserialize(document).map_err(ManifestError::Yaml)?;
        match value["kind"].as_str() {
            Some("RayCluster") => {
                let rc: RayCluster =
                    serde_json::from_value(value).map_err(|source| ManifestError::Invalid {
                        kind: "RayCluster",
                        source,
                    })?;
                return Ok(rc.spec.topology());
            }
            Some("RayClusterFleet") => {
                let fleet: RayClusterFleet =
                    serde_json::from_value(value).map_err(|source| ManifestError::Invalid {
                        kind: "RayClusterFleet",
                        source,
                    })?;
                return Ok(fleet.spec.template.spec.topology());
            }
            _ => {}
        }
    }
    Err(ManifestError::Missing)
}

/// The label AIBrix's gateway routes a model by.
pub const AIBRIX_MODEL_LABEL: &str = "model.aibrix.ai/name";

/// The model name AIBrix's gateway routes to the head pods of the first
/// RayClusterFleet in a manifest: the `model.aibrix.ai/name` label of its
/// head pod template (what the gateway matches), else of its cluster
/// template, else of the fleet. None without a fleet or the label.
pub fn aibrix_model_label(text: &str) -> Option<String> {
    use serde::Deserialize;
    for document in serde_yaml::Deserializer::from_str(text) {
        // After a document that does not parse, serde_yaml's iterator
        // yields the same error for ever: stop there (found by the
        // property test below; it hung on any malformed YAML).
        let Ok(value) = serde_json::Value::deserialize(document) else {
            return None;
        };
        if value["kind"].as_str() != Some("RayClusterFleet") {
            continue;
        }
        let template = &value["spec"]["template"];
        return [
            &template["spec"]["headGroupSpec"]["template"]["metadata"]["labels"],
            &template["metadata"]["labels"],
            &value["metadata"]["labels"],
        ]
        .into_iter()
        .find_map(|labels| labels[AIBRIX_MODEL_LABEL].as_str())
        .map(str::to_string);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gateway_label_comes_from_the_head_pods_first() {
        let fleet = "kind: RayClusterFleet\nmetadata:\n  labels:\n    model.aibrix.ai/name: fleet\nspec:\n  template:\n    metadata:\n      labels:\n        model.aibrix.ai/name: cluster\n    spec:\n      headGroupSpec:\n        template:\n          metadata:\n            labels:\n              model.aibrix.ai/name: head\n";
        assert_eq!(aibrix_model_label(fleet).as_deref(), Some("head"));
        let bare = "kind: RayClusterFleet\nmetadata:\n  labels:\n    model.aibrix.ai/name: fleet\n";
        assert_eq!(aibrix_model_label(bare).as_deref(), Some("fleet"));
        assert_eq!(aibrix_model_label("kind: RayCluster\n"), None);
    }

    #[test]
    fn quantities() {
        let q = |s: &str| quantity(&Quantity(s.to_string()));
        assert_eq!(q("2"), Some(2.0));
        assert_eq!(q("500m"), Some(0.5));
        assert_eq!(q("1Gi"), Some(1073741824.0));
        assert_eq!(q("x"), None);
    }

    #[test]
    fn an_autoscaled_cluster_expects_the_layout_not_its_replicas() {
        let gpu_limit = |n: &str| PodTemplateSpec {
            spec: Some(k8s_openapi::api::core::v1::PodSpec {
                containers: vec![k8s_openapi::api::core::v1::Container {
                    resources: Some(k8s_openapi::api::core::v1::ResourceRequirements {
                        limits: Some(
                            [("nvidia.com/gpu".to_string(), Quantity(n.to_string()))].into(),
                        ),
                        ..Default::default()
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..PodTemplateSpec::default()
        };
        let spec = RayClusterSpec {
            head_group_spec: HeadGroupSpec {
                template: gpu_limit("1"),
                ..HeadGroupSpec::default()
            },
            worker_group_specs: vec![WorkerGroupSpec {
                group_name: "gpu".into(),
                replicas: Some(0),
                min_replicas: Some(0),
                max_replicas: Some(3),
                template: gpu_limit("2"),
                ..WorkerGroupSpec::default()
            }],
            enable_in_tree_autoscaling: Some(true),
            ..RayClusterSpec::default()
        };
        assert_eq!(
            spec.topology().nodes,
            1,
            "replicas: what Ray asked for so far"
        );
        // TP 4 x PP 1 = 4 GPUs: the head has 1, so 2 workers of 2.
        let t = spec.autoscaled_topology(Some(4.0));
        assert_eq!((t.nodes, t.gpus, t.groups[0].replicas), (3, 5.0, 2));
        // More than maxReplicas can give: capped at 3.
        assert_eq!(spec.autoscaled_topology(Some(16.0)).groups[0].replicas, 3);
        // No layout named: the group's maxReplicas.
        assert_eq!(spec.autoscaled_topology(None).nodes, 4);
    }

    #[test]
    fn desired_pods_clamps_like_kuberay() {
        let g = |replicas, min, max, hosts| WorkerGroupSpec {
            replicas,
            min_replicas: min,
            max_replicas: max,
            num_of_hosts: hosts,
            ..WorkerGroupSpec::default()
        };
        assert_eq!(g(Some(3), None, None, None).desired_pods(), 3);
        assert_eq!(g(Some(5), Some(1), Some(2), None).desired_pods(), 2);
        assert_eq!(g(None, Some(2), Some(4), None).desired_pods(), 2);
        assert_eq!(g(Some(2), None, None, Some(4)).desired_pods(), 8);
        let mut s = g(Some(2), None, None, None);
        s.suspend = Some(true);
        assert_eq!(s.desired_pods(), 0);
    }
}

#[cfg(test)]
mod hostile_manifests {
    //! Property tests: any text, and the shipped manifests with any value
    //! swapped in anywhere, give a topology or an error, never a panic.
    use super::*;
    use proptest::prelude::*;

    const SHIPPED: [&str; 3] = [
        include_str!("../../../deploy/kuberay/raycluster.yaml"),
        include_str!("../../../deploy/kuberay/raycluster-autoscaling.yaml"),
        include_str!("../../../deploy/aibrix/rayclusterfleet.yaml"),
    ];

    /// Hostile scalars: negative, huge, fractional and non-numeric
    /// replicas and quantities.
    fn hostile_scalar() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("-1".to_string()),
            Just("1e308".to_string()),
            Just("18446744073709551616".to_string()),
            Just("0.5".to_string()),
            Just("\"-3Gi\"".to_string()),
            Just("\"1e9999\"".to_string()),
            Just("null".to_string()),
            Just("[]".to_string()),
            Just("{}".to_string()),
            "[a-zA-Z0-9.+-]{0,12}",
            any::<i64>().prop_map(|n| n.to_string()),
            any::<f64>().prop_map(|n| format!("{n}")),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        /// Includes malformed YAML after a valid document, on which
        /// `aibrix_model_label` used to loop for ever.
        #[test]
        fn any_text_is_a_topology_or_an_error(text in "\\PC{0,400}") {
            let _ = topology_from_yaml(&text);
            let _ = aibrix_model_label(&text);
        }

        #[test]
        fn shipped_manifests_with_any_value_swapped_never_panic(
            which in 0..SHIPPED.len(),
            line in any::<prop::sample::Index>(),
            value in hostile_scalar(),
        ) {
            let text = SHIPPED[which];
            let lines: Vec<&str> = text.lines().collect();
            let at = line.index(lines.len());
            let swapped: Vec<String> = lines
                .iter()
                .enumerate()
                .map(|(i, l)| match (i == at, l.split_once(": ")) {
                    (true, Some((key, _))) => format!("{key}: {value}"),
                    _ => l.to_string(),
                })
                .collect();
            if let Ok(topology) = topology_from_yaml(&swapped.join("\n")) {
                prop_assert!(topology.gpus.is_finite() || topology.gpus.is_nan() || topology.gpus.is_infinite());
            }
        }
    }
}

#[cfg(test)]
mod corpus {
    //! Inputs that once hung or crashed, kept as plain tests.
    use super::*;

    #[test]
    fn malformed_yaml_ends_the_label_search() {
        for text in [
            "'unterminated",
            "kind: RayCluster\n---\n{[",
            "a: b\n---\n\"x\n",
            "{|Ѩ m1{ [`Ýt",
        ] {
            let (tx, rx) = std::sync::mpsc::channel();
            let owned = text.to_string();
            std::thread::spawn(move || {
                let _ = tx.send(aibrix_model_label(&owned));
            });
            let answer = rx.recv_timeout(std::time::Duration::from_secs(5));
            assert_eq!(answer, Ok(None), "{text:?}");
            assert!(topology_from_yaml(text).is_err(), "{text:?}");
        }
    }
}
