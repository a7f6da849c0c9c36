//! Where cluster membership comes from. The wait and serve phases follow a
//! [`MembershipSource`] and never name Ray: [`RayGcs`] is the source for
//! Ray clusters (GetAllNodeInfo snapshot, then node-info pub/sub); another
//! backend brings its own. Nodes' health reports go to the source's
//! [`HealthStore`] ([`GcsHealthStore`]: the GCS's key-value store).

/// Ray's token authentication, as every GCS and raylet call sends it.
pub use orchestrator_ray_gcs::{AuthError, GcsClient, RayAuth};

use orchestrator_domain::{HealthReport, KeyValue, MembershipUpdate, Node};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// What [`MembershipSource::reachable`] returns: answers once the source
/// does, or says why it never did within the limit.
pub(crate) type Reachable<'a> = Pin<Box<dyn Future<Output = Result<(), SourceError>> + Send + 'a>>;

/// Why a call to a membership source, a health store or the autoscaler
/// failed, with its cause.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The GCS could not be reached, or refused the call.
    #[error(transparent)]
    Gcs(#[from] orchestrator_ray_gcs::GcsError),
    /// Ray's token authentication cannot be used.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// This node's health report cannot be stored.
    #[error("{0}")]
    Report(String),
    /// The source is gone (a rendezvous that stopped, a channel closed).
    #[error("{0}")]
    Gone(String),
}

/// A source of membership updates.
pub trait MembershipSource: Send + Sync + std::fmt::Debug {
    /// Starts following the membership on the current tokio runtime. The
    /// first update is a full snapshot; connection problems arrive as
    /// `Disconnected` updates; it runs until the receiver is dropped.
    fn watch(&self) -> mpsc::UnboundedReceiver<MembershipUpdate>;

    /// Where the membership comes from, for messages (`the Ray GCS at
    /// 10.0.0.1:6379`).
    fn describe(&self) -> String;

    /// Environment the serving process needs to join this cluster.
    fn serving_env(&self) -> Vec<KeyValue> {
        Vec::new()
    }

    /// Resolves once the source answers (a worker waits for it before it
    /// starts its node), retrying for up to `limit`.
    fn reachable(&self, limit: Duration) -> Reachable<'_>;

    /// Where nodes publish their health reports and the head reads them,
    /// when this source has such a place.
    fn health_store(&self) -> Option<Arc<dyn HealthStore>> {
        None
    }

    /// Where capacity is asked of the cluster's autoscaler, when this
    /// source has one.
    fn capacity_requests(&self) -> Option<Arc<dyn CapacityRequests>> {
        None
    }

    /// Asks each of the nodes `ids` itself (Ray: its raylet) whether it
    /// answers within `limit`, and returns those that did not, each with
    /// what happened. Sources that cannot ask nodes directly answer none.
    fn silent_nodes<'a>(
        &'a self,
        ids: &'a [String],
        limit: Duration,
    ) -> StoreCall<'a, Vec<(String, String)>> {
        let _ = (ids, limit);
        Box::pin(async { Ok(vec![]) })
    }
}

/// Capacity asked of a cluster's autoscaler.
pub trait CapacityRequests: Send + Sync + std::fmt::Debug {
    /// Asks for room for every bundle at once (replacing the last
    /// request); `[]` withdraws it.
    fn request<'a>(&'a self, bundles: &'a [Bundle]) -> StoreCall<'a, ()>;
}

/// One bundle of resources, e.g. `{"GPU": 1.0}`.
pub use orchestrator_ray_gcs::Bundle;

/// Capacity requests through a Ray GCS (both autoscaler versions).
#[derive(Debug)]
pub(crate) struct GcsCapacityRequests {
    address: String,
    client: tokio::sync::OnceCell<orchestrator_ray_gcs::GcsClient>,
}

impl GcsCapacityRequests {
    /// Requests through the GCS at `address`; connects on first use.
    pub(crate) fn new(address: impl Into<String>) -> Self {
        Self {
            address: address.into(),
            client: tokio::sync::OnceCell::new(),
        }
    }
}

impl CapacityRequests for GcsCapacityRequests {
    fn request<'a>(&'a self, bundles: &'a [Bundle]) -> StoreCall<'a, ()> {
        Box::pin(async move {
            let client = self
                .client
                .get_or_try_init(|| async {
                    orchestrator_ray_gcs::GcsClient::connect(&self.address, Duration::from_secs(2))
                        .await
                        .map_err(SourceError::from)
                })
                .await?;
            client
                .request_resources(bundles)
                .await
                .map_err(SourceError::from)
        })
    }
}

/// A future of a [`HealthStore`] call.
pub type StoreCall<'a, T> = Pin<Box<dyn Future<Output = Result<T, SourceError>> + Send + 'a>>;

/// Where nodes publish their health reports, without a network path of
/// their own: Ray's GCS key-value store for Ray clusters.
pub trait HealthStore: Send + Sync + std::fmt::Debug {
    /// The node this process checks under `label` (the name the reporter
    /// was given it by): the newest alive node at `address`, or (no
    /// address) on this `hostname`.
    fn own_node<'a>(
        &'a self,
        label: &'a str,
        address: Option<&'a str>,
        hostname: &'a str,
    ) -> StoreCall<'a, Option<Node>>;
    /// Writes (replaces) this node's report.
    fn publish<'a>(&'a self, report: &'a HealthReport) -> StoreCall<'a, ()>;
    /// Removes a node's report (a clean stop).
    fn withdraw<'a>(&'a self, node_id: &'a str) -> StoreCall<'a, ()>;
    /// Every node's last report; ones that do not parse are skipped with a
    /// warning.
    fn reports(&self) -> StoreCall<'_, Vec<HealthReport>>;
    /// The entries [`reports`](Self::reports) ignored since the last call,
    /// each once, with why (the head raises one Event for each).
    fn rejected(&self) -> Vec<String> {
        Vec::new()
    }
}

/// The GCS key-value namespace of the orchestrator's own entries.
pub const KV_NAMESPACE: &str = "ray-orchestrator";
/// The key prefix of node health reports: `node-health/<node id>`.
pub(crate) const HEALTH_KEY_PREFIX: &str = "node-health/";

/// The largest health report written or read, bytes.
pub(crate) const MAX_REPORT_BYTES: usize = 64 * 1024;
/// Reports fetched per call: at [`MAX_REPORT_BYTES`] each, a page stays
/// under gRPC's 4 MiB message limit whatever the cluster's size.
pub(crate) const REPORTS_PER_PAGE: usize = 48;

/// A report as stored: bound to its node and, when the cluster has a Ray
/// token, signed with a key derived from it (so a process without the
/// token cannot write a report another node's head believes).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct StoredReport {
    node_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    mac: Option<String>,
    report: String,
}

/// The key node reports are signed with: HMAC-SHA256 keyed by the Ray
/// token's derivation; none without a token.
fn report_key(auth: &RayAuth) -> Option<ring::hmac::Key> {
    let bearer = auth.bearer()?;
    let derived = ring::digest::digest(
        &ring::digest::SHA256,
        format!("ray-orchestrator node-health/1\n{bearer}").as_bytes(),
    );
    Some(ring::hmac::Key::new(
        ring::hmac::HMAC_SHA256,
        derived.as_ref(),
    ))
}

fn report_mac_input(node_id: &str, report: &str) -> Vec<u8> {
    let mut text = Vec::with_capacity(node_id.len() + report.len() + 1);
    text.extend_from_slice(node_id.as_bytes());
    text.push(0);
    text.extend_from_slice(report.as_bytes());
    text
}

/// Wraps `report` for the store.
fn seal_report(report: &HealthReport, auth: &RayAuth) -> Result<Vec<u8>, SourceError> {
    let text = serde_json::to_string(report).map_err(|e| SourceError::Report(e.to_string()))?;
    if text.len() > MAX_REPORT_BYTES {
        return Err(SourceError::Report(format!(
            "this node's health report is {} bytes, over the {MAX_REPORT_BYTES}-byte limit",
            text.len()
        )));
    }
    let mac = report_key(auth).map(|key| {
        hex::encode(ring::hmac::sign(&key, &report_mac_input(&report.node_id, &text)).as_ref())
    });
    serde_json::to_vec(&StoredReport {
        node_id: report.node_id.clone(),
        mac,
        report: text,
    })
    .map_err(|e| SourceError::Report(e.to_string()))
}

/// Opens a stored report found under `key`: the report, or why it is not
/// taken.
fn open_report(
    key: &str,
    value: &[u8],
    signing: Option<&ring::hmac::Key>,
) -> Result<HealthReport, String> {
    if value.len() > MAX_REPORT_BYTES + 1024 {
        return Err(format!("{} bytes, over the limit", value.len()));
    }
    let stored: StoredReport =
        serde_json::from_slice(value).map_err(|e| format!("not a report ({e})"))?;
    if key.strip_prefix(HEALTH_KEY_PREFIX) != Some(stored.node_id.as_str()) {
        return Err("written under another node's key".to_string());
    }
    if let Some(signing) = signing {
        let mac = stored
            .mac
            .as_deref()
            .and_then(|m| hex::decode(m).ok())
            .ok_or("not signed, and this cluster has a Ray token")?;
        ring::hmac::verify(
            signing,
            &report_mac_input(&stored.node_id, &stored.report),
            &mac,
        )
        .map_err(|_| "its signature does not match (forged, or another cluster's token)")?;
    }
    let report: HealthReport =
        serde_json::from_str(&stored.report).map_err(|e| format!("does not parse ({e})"))?;
    if report.node_id != stored.node_id {
        return Err("about another node than its key".to_string());
    }
    Ok(report)
}

/// Health reports in a Ray GCS's internal key-value store.
#[derive(Debug)]
pub struct GcsHealthStore {
    address: String,
    client: tokio::sync::OnceCell<orchestrator_ray_gcs::GcsClient>,
    /// Keys already warned about (one line each).
    refused: std::sync::Mutex<std::collections::HashSet<String>>,
    /// Those not yet handed out by [`HealthStore::rejected`].
    fresh_refusals: std::sync::Mutex<Vec<String>>,
    /// Credentials given (else this process's environment's).
    auth: Option<RayAuth>,
}

impl GcsHealthStore {
    /// The store of the GCS at `address`; connects on first use.
    pub fn new(address: impl Into<String>) -> Self {
        Self {
            address: address.into(),
            client: tokio::sync::OnceCell::new(),
            refused: std::sync::Mutex::default(),
            fresh_refusals: std::sync::Mutex::default(),
            auth: None,
        }
    }

    /// The store of the GCS at `address`, with the credentials `auth`
    /// rather than the environment's.
    pub fn with_auth(address: impl Into<String>, auth: RayAuth) -> Self {
        Self {
            auth: Some(auth),
            ..Self::new(address)
        }
    }

    fn refuse(&self, key: &str, why: &str) {
        let first = self
            .refused
            .lock()
            .map(|mut seen| seen.len() < 100_000 && seen.insert(key.to_string()))
            .unwrap_or(false);
        if first {
            let key: String = key
                .chars()
                .take(128)
                .collect::<String>()
                .replace(['\n', '\r'], " ");
            tracing::warn!(key, "ignoring a node-health entry: {why}");
            if let Ok(mut fresh) = self.fresh_refusals.lock()
                && fresh.len() < 1000
            {
                fresh.push(format!("ignored the node-health entry {key}: {why}"));
            }
        }
    }

    async fn client(&self) -> Result<&orchestrator_ray_gcs::GcsClient, SourceError> {
        self.client
            .get_or_try_init(|| async {
                let limit = Duration::from_secs(2);
                match &self.auth {
                    Some(auth) => {
                        orchestrator_ray_gcs::GcsClient::connect_with(
                            &self.address,
                            limit,
                            auth.clone(),
                        )
                        .await
                    }
                    None => orchestrator_ray_gcs::GcsClient::connect(&self.address, limit).await,
                }
                .map_err(SourceError::from)
            })
            .await
    }
}

impl HealthStore for GcsHealthStore {
    fn own_node<'a>(
        &'a self,
        _label: &'a str,
        address: Option<&'a str>,
        hostname: &'a str,
    ) -> StoreCall<'a, Option<Node>> {
        Box::pin(async move {
            let nodes = self
                .client()
                .await?
                .get_all_nodes()
                .await
                .map_err(SourceError::from)?;
            Ok(nodes
                .into_iter()
                .filter(|n| n.alive)
                .filter(|n| match address {
                    Some(a) => n.address == a,
                    None => n.hostname == hostname,
                })
                .max_by_key(|n| n.start_time_ms))
        })
    }

    fn publish<'a>(&'a self, report: &'a HealthReport) -> StoreCall<'a, ()> {
        Box::pin(async move {
            let client = self.client().await?;
            let value = seal_report(report, client.auth())?;
            let key = format!("{HEALTH_KEY_PREFIX}{}", report.node_id);
            client
                .kv_put(KV_NAMESPACE, &key, value)
                .await
                .map_err(SourceError::from)
        })
    }

    fn withdraw<'a>(&'a self, node_id: &'a str) -> StoreCall<'a, ()> {
        Box::pin(async move {
            let key = format!("{HEALTH_KEY_PREFIX}{node_id}");
            self.client()
                .await?
                .kv_delete(KV_NAMESPACE, &key)
                .await
                .map_err(SourceError::from)
        })
    }

    fn rejected(&self) -> Vec<String> {
        self.fresh_refusals
            .lock()
            .map(|mut fresh| std::mem::take(&mut *fresh))
            .unwrap_or_default()
    }

    fn reports(&self) -> StoreCall<'_, Vec<HealthReport>> {
        Box::pin(async move {
            let client = self.client().await?;
            let keys = client
                .kv_keys(KV_NAMESPACE, HEALTH_KEY_PREFIX)
                .await
                .map_err(SourceError::from)?;
            let mut reports = Vec::with_capacity(keys.len());
            // Derived once per scan, not once per report.
            let signing = report_key(client.auth());
            // In pages that stay within gRPC's limits; a page that fails
            // (one oversized value) is read key by key, so one bad entry
            // never hides the others.
            for page in keys.chunks(REPORTS_PER_PAGE) {
                let entries = match client.kv_multi_get(KV_NAMESPACE, page.to_vec()).await {
                    Ok(entries) => entries,
                    Err(_) => {
                        let mut one_by_one = Vec::new();
                        for key in page {
                            match client.kv_multi_get(KV_NAMESPACE, vec![key.clone()]).await {
                                Ok(mut entry) => one_by_one.append(&mut entry),
                                Err(e) => {
                                    self.refuse(&String::from_utf8_lossy(key), &e.to_string())
                                }
                            }
                        }
                        one_by_one
                    }
                };
                for (key, value) in entries {
                    match open_report(&key, &value, signing.as_ref()) {
                        Ok(report) => reports.push(report),
                        Err(why) => self.refuse(&key, &why),
                    }
                }
            }
            Ok(reports)
        })
    }
}

/// A Ray cluster's GCS.
#[derive(Debug, Clone)]
pub struct RayGcs {
    /// `HOST:PORT`.
    pub address: String,
    /// Each node's raylet, as the watch saw it register.
    raylets: orchestrator_ray_gcs::RayletBook,
    /// Asks raylets on kept connections; made on first use (it needs
    /// this process's credentials).
    prober: Arc<std::sync::OnceLock<Arc<orchestrator_ray_gcs::RayletProber>>>,
}

impl PartialEq for RayGcs {
    fn eq(&self, other: &Self) -> bool {
        self.address == other.address
    }
}

impl RayGcs {
    /// The GCS at `address` (`HOST:PORT`).
    pub fn new(address: impl Into<String>) -> Self {
        Self {
            address: address.into(),
            raylets: Default::default(),
            prober: Default::default(),
        }
    }

    fn prober(&self) -> Result<Arc<orchestrator_ray_gcs::RayletProber>, SourceError> {
        if let Some(p) = self.prober.get() {
            return Ok(p.clone());
        }
        let auth = RayAuth::from_env()?;
        let made = Arc::new(orchestrator_ray_gcs::RayletProber::new(
            self.address.clone(),
            auth,
            self.raylets.clone(),
        ));
        Ok(self.prober.get_or_init(|| made).clone())
    }
}

impl MembershipSource for RayGcs {
    fn watch(&self) -> mpsc::UnboundedReceiver<MembershipUpdate> {
        orchestrator_ray_gcs::watch_membership_recording(self.address.clone(), self.raylets.clone())
    }

    fn describe(&self) -> String {
        format!("the Ray GCS at {}", self.address)
    }

    /// vLLM's driver joins this cluster, not whatever `ray.init("auto")`
    /// would find in /tmp/ray.
    fn serving_env(&self) -> Vec<KeyValue> {
        vec![
            KeyValue::new("RAY_ADDRESS", self.address.clone()),
            // Every rank's own lines reach the driver's output (Ray would
            // fold lines alike across workers into one): the startup
            // watch reads each rank's stage from them.
            KeyValue::new("RAY_DEDUP_LOGS", "0"),
        ]
    }

    fn reachable(&self, limit: Duration) -> Reachable<'_> {
        Box::pin(async move {
            orchestrator_ray_gcs::GcsClient::connect_until(&self.address, limit)
                .await
                .map(drop)
                .map_err(SourceError::from)
        })
    }

    fn health_store(&self) -> Option<Arc<dyn HealthStore>> {
        Some(Arc::new(GcsHealthStore::new(self.address.clone())))
    }

    fn capacity_requests(&self) -> Option<Arc<dyn CapacityRequests>> {
        Some(Arc::new(GcsCapacityRequests::new(self.address.clone())))
    }

    /// Each raylet's `NodeManagerService`, asked at the address the GCS
    /// lists for it, all at once, on connections kept between asks.
    fn silent_nodes<'a>(
        &'a self,
        ids: &'a [String],
        limit: Duration,
    ) -> StoreCall<'a, Vec<(String, String)>> {
        use orchestrator_ray_gcs::RayletAnswer;
        Box::pin(async move {
            let answers = self
                .prober()?
                .ask(ids, limit)
                .await
                .map_err(SourceError::from)?;
            let mut silent: Vec<(String, String)> = answers
                .into_iter()
                .filter_map(|(id, address, answer)| match answer {
                    RayletAnswer::Answered => None,
                    RayletAnswer::Silent => Some((
                        id,
                        format!(
                            "its raylet at {address} did not answer within {:.1} s (frozen, overloaded or cut off?)",
                            limit.as_secs_f64()
                        ),
                    )),
                    RayletAnswer::Unreachable(why) => {
                        Some((id, format!("its raylet at {address} cannot be reached: {why}")))
                    }
                })
                .collect();
            silent.sort();
            Ok(silent)
        })
    }
}
