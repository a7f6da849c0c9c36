//! Asking Ray's autoscaler for capacity, as
//! `ray.autoscaler.sdk.request_resources` does: the bundles the cluster
//! must be able to hold at once, set as the GCS's cluster resource
//! constraint (read by autoscaler v2, KubeRay's `version: v2`) and written
//! to the internal key-value store's `autoscaler_resource_request` (read
//! by autoscaler v1, the default). A request lasts until replaced; an
//! empty one clears it. Entry point: [`GcsClient::request_resources`].

use crate::proto::autoscaler as pb;
use crate::{GcsClient, GcsError};
use std::collections::BTreeMap;

/// One bundle: resource name to amount, e.g. `{"GPU": 1.0}`.
pub type Bundle = BTreeMap<String, f64>;

/// The internal key-value key that autoscaler v1 reads requests from.
pub const RESOURCE_REQUEST_KEY: &str = "autoscaler_resource_request";

impl GcsClient {
    fn autoscaler(
        &self,
    ) -> pb::autoscaler_state_service_client::AutoscalerStateServiceClient<tonic::transport::Channel>
    {
        pb::autoscaler_state_service_client::AutoscalerStateServiceClient::new(self.channel.clone())
    }

    /// Asks the autoscaler for room for every bundle of `bundles` at once
    /// (both autoscaler versions); `[]` withdraws the request.
    pub async fn request_resources(&self, bundles: &[Bundle]) -> Result<(), GcsError> {
        let v1 = serde_json::to_vec(bundles).map_err(|e| GcsError::Rpc {
            address: self.address.clone(),
            message: format!("cannot encode the request: {e}"),
        })?;
        self.kv_put("", RESOURCE_REQUEST_KEY, v1).await?;
        let mut grouped: Vec<(Bundle, i64)> = Vec::new();
        for bundle in bundles {
            match grouped.iter_mut().find(|(b, _)| b == bundle) {
                Some((_, count)) => *count += 1,
                None => grouped.push((bundle.clone(), 1)),
            }
        }
        let constraint = pb::ClusterResourceConstraint {
            resource_requests: grouped
                .into_iter()
                .map(|(bundle, count)| pb::ResourceRequestByCount {
                    request: Some(pb::ResourceRequest {
                        resources_bundle: bundle.into_iter().collect(),
                    }),
                    count,
                })
                .collect(),
        };
        let request = self.request(pb::RequestClusterResourceConstraintRequest {
            cluster_resource_constraint: Some(constraint),
        });
        self.autoscaler()
            .request_cluster_resource_constraint(request)
            .await
            .map_err(|s| self.rpc_error("RequestClusterResourceConstraint", s))?;
        Ok(())
    }

    /// The bundles the GCS holds as the cluster resource constraint (what
    /// autoscaler v2 sees), one entry per bundle.
    pub async fn requested_resources(&self) -> Result<Vec<Bundle>, GcsError> {
        let request = self.request(pb::GetClusterResourceStateRequest {
            last_seen_cluster_resource_state_version: 0,
        });
        let state = self
            .autoscaler()
            .get_cluster_resource_state(request)
            .await
            .map_err(|s| self.rpc_error("GetClusterResourceState", s))?
            .into_inner();
        let mut bundles = Vec::new();
        for constraint in state
            .cluster_resource_state
            .map(|s| s.cluster_resource_constraints)
            .unwrap_or_default()
        {
            for by_count in constraint.resource_requests {
                let bundle: Bundle = by_count
                    .request
                    .map(|r| r.resources_bundle.into_iter().collect())
                    .unwrap_or_default();
                for _ in 0..by_count.count.max(0) {
                    bundles.push(bundle.clone());
                }
            }
        }
        Ok(bundles)
    }
}
