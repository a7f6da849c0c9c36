//! Connecting to the API server and finding this pod's RayCluster; API
//! errors explained as what to grant or fix.

use crate::config::KubernetesConfig;
use crate::raycluster::CLUSTER_LABEL;
use k8s_openapi::api::core::v1::Pod;
use kube::{Api, Client};
use std::time::Duration;

/// Timeout of one API request (watches excepted).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Where this pod is and how to reach the API server.
#[derive(Clone)]
pub struct KubeContext {
    /// The client.
    pub client: Client,
    /// The API server's URL, for messages.
    pub server: String,
    /// The namespace of this pod and its RayCluster.
    pub namespace: String,
    /// This (head) pod's name.
    pub pod_name: String,
    /// This pod's UID, when the pod could be read.
    pub pod_uid: Option<String>,
    /// The RayCluster's name.
    pub cluster_name: String,
}

impl std::fmt::Debug for KubeContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeContext")
            .field("server", &self.server)
            .field("namespace", &self.namespace)
            .field("pod_name", &self.pod_name)
            .field("cluster_name", &self.cluster_name)
            .finish_non_exhaustive()
    }
}

/// Why Kubernetes awareness could not start or a request failed, worded as
/// what to do.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    /// Not in a pod, or the configuration is incomplete.
    #[error("kubernetes.enabled is set, but {0}")]
    Setup(String),
    /// An API request failed.
    #[error(transparent)]
    Api(#[from] ApiError),
}

/// A failed API request; its message names the missing permission, the
/// token, the object or the unreachable server, and the source is kept.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The server answered with an error, or could not be reached.
    #[error("{}", describe(.source, *.access, .namespace, .name, .server))]
    Request {
        /// What was asked.
        access: Access,
        /// In which namespace.
        namespace: String,
        /// Of which object (empty for a collection).
        name: String,
        /// The API server's URL.
        server: String,
        /// The client's error.
        #[source]
        source: kube::Error,
    },
    /// No answer within [`REQUEST_TIMEOUT`].
    #[error(
        "the Kubernetes API server at {server} did not answer {what} within {} s; the wait goes on from the GCS alone",
        REQUEST_TIMEOUT.as_secs()
    )]
    Timeout {
        /// The API server's URL.
        server: String,
        /// The request (`get pod`, `create event`).
        what: &'static str,
    },
}

/// One kind of access, for naming a missing permission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Access {
    /// The verb (`get`, `list`, `watch`, `create`, `patch`).
    pub verb: &'static str,
    /// The API group (`""` for core).
    pub group: &'static str,
    /// The resource (plural).
    pub resource: &'static str,
}

impl Access {
    /// `verb` on core `resource`.
    pub const fn core(verb: &'static str, resource: &'static str) -> Self {
        Self {
            verb,
            group: "",
            resource,
        }
    }

    /// `verb` on `leaderworkersets.leaderworkerset.x-k8s.io`.
    pub const fn leaderworkersets(verb: &'static str) -> Self {
        Self {
            verb,
            group: "leaderworkerset.x-k8s.io",
            resource: "leaderworkersets",
        }
    }

    /// `verb` on `rayclusters.ray.io`.
    pub const fn rayclusters(verb: &'static str) -> Self {
        Self {
            verb,
            group: "ray.io",
            resource: "rayclusters",
        }
    }
}

/// A failed request, with what it was.
pub fn explain(
    source: kube::Error,
    access: Access,
    namespace: &str,
    name: &str,
    server: &str,
) -> ApiError {
    ApiError::Request {
        access,
        namespace: namespace.to_string(),
        name: name.to_string(),
        server: server.to_string(),
        source,
    }
}

/// Explains a failed request: 403 names the permission to grant, 401 the
/// token, 404 the object, anything else the unreachable server.
fn describe(
    error: &kube::Error,
    access: Access,
    namespace: &str,
    name: &str,
    server: &str,
) -> String {
    let resource = if access.group.is_empty() {
        access.resource.to_string()
    } else {
        format!("{}.{}", access.resource, access.group)
    };
    match error {
        kube::Error::Api(status) if status.code == 403 => format!(
            "the API server refused to {} {resource} in namespace {namespace} (403 Forbidden: {}); grant the pod's service account verb \"{}\" on resource \"{}\" in apiGroup \"{}\" with a Role and RoleBinding (deploy/kuberay/rbac.yaml has them)",
            access.verb, status.message, access.verb, access.resource, access.group
        ),
        kube::Error::Api(status) if status.code == 401 => format!(
            "the API server did not accept the service account's token (401 Unauthorized: {}); check automountServiceAccountToken and the token's expiry",
            status.message
        ),
        kube::Error::Api(status) if status.code == 404 => format!(
            "{resource} {name:?} was not found in namespace {namespace} (404); check kubernetes.cluster-name / kubernetes.namespace, or that the CRD is installed"
        ),
        kube::Error::Api(status) => format!(
            "the API server answered {} to {} {resource} in namespace {namespace}: {}",
            status.code, access.verb, status.message
        ),
        other => format!(
            "cannot reach the Kubernetes API server at {server} to {} {resource}: {other}; the wait goes on from the GCS alone",
            access.verb
        ),
    }
}

/// Runs `future` with [`REQUEST_TIMEOUT`], a timeout becoming an error
/// that names the server.
pub async fn timed<T>(
    server: &str,
    what: &'static str,
    future: impl Future<Output = Result<T, ApiError>>,
) -> Result<T, ApiError> {
    match tokio::time::timeout(REQUEST_TIMEOUT, future).await {
        Ok(result) => result,
        Err(_) => Err(ApiError::Timeout {
            server: server.to_string(),
            what,
        }),
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// Builds the client and finds this pod and its RayCluster: the namespace
/// from the configuration, `POD_NAMESPACE` or the service account; the pod
/// from the configuration, `POD_NAME` or `HOSTNAME`; the RayCluster from
/// the configuration or the pod's `ray.io/cluster` label.
pub async fn connect(config: &KubernetesConfig) -> Result<KubeContext, KubeError> {
    let (client, server, namespace, pod_name) = client_for(config).map_err(KubeError::Setup)?;
    let pod = read_pod(&client, &server, &namespace, &pod_name).await;
    let (pod_uid, label) = match pod {
        Ok(pod) => (
            pod.metadata.uid.clone(),
            pod.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(CLUSTER_LABEL).cloned()),
        ),
        Err(message) if config.cluster_name.is_some() => {
            tracing::warn!("kubernetes: cannot read this pod ({message})");
            (None, None)
        }
        Err(error) => return Err(KubeError::Api(error)),
    };
    let cluster_name = config.cluster_name.clone().or(label).ok_or_else(|| {
        KubeError::Setup(format!(
            "pod {pod_name} has no {CLUSTER_LABEL} label, so its RayCluster is unknown; is it a KubeRay pod? set kubernetes.cluster-name"
        ))
    })?;
    Ok(KubeContext {
        client,
        server,
        namespace,
        pod_name,
        pod_uid,
        cluster_name,
    })
}

/// Reads pod `name`, a failure explained.
pub(crate) async fn read_pod(
    client: &Client,
    server: &str,
    namespace: &str,
    name: &str,
) -> Result<Pod, ApiError> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    timed(server, "get pod", async {
        pods.get(name)
            .await
            .map_err(|e| explain(e, Access::core("get", "pods"), namespace, name, server))
    })
    .await
}

/// The client, the API server's URL, the namespace and this pod's name,
/// from the configuration and the pod's environment.
pub(crate) fn client_for(
    config: &KubernetesConfig,
) -> Result<(Client, String, String, String), String> {
    let mut kube_config = match &config.api_server {
        Some(url) => {
            let uri = url
                .parse()
                .map_err(|e| format!("kubernetes.api-server {url:?} is not a URL: {e}"))?;
            let mut c = kube::Config::new(uri);
            c.connect_timeout = Some(Duration::from_secs(5));
            c
        }
        None => kube::Config::incluster().map_err(|e| {
            format!(
                "this does not look like a pod ({e}); run it in a pod with a service account, set kubernetes.api-server (e.g. http://127.0.0.1:8001 behind kubectl proxy), or set kubernetes.enabled = false"
            )
        })?,
    };
    let namespace = config
        .namespace
        .clone()
        .or_else(|| env("POD_NAMESPACE"))
        .unwrap_or_else(|| kube_config.default_namespace.clone());
    kube_config.default_namespace = namespace.clone();
    let server = kube_config.cluster_url.to_string();
    let client = Client::try_from(kube_config)
        .map_err(|e| format!("cannot build a Kubernetes client: {e}"))?;
    let pod_name = config
        .pod_name
        .clone()
        .or_else(|| env("POD_NAME"))
        .or_else(|| env("HOSTNAME"))
        .ok_or_else(|| {
            "this pod's name is unknown; set POD_NAME from the downward API (fieldRef metadata.name) or kubernetes.pod-name".to_string()
        })?;
    Ok((client, server, namespace, pod_name))
}
