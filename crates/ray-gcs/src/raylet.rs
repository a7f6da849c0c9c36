//! Whether a node's raylet answers, asked of the raylet itself. The GCS
//! declares a frozen or cut-off raylet dead only after its health checks
//! fail several times (about 30 s under Ray's defaults); until then it
//! lists the node as alive. One harmless call with a short deadline tells
//! sooner. Entry point: [`probe_raylet`].

use crate::proto::GetSystemConfigRequest;
use crate::proto::node_manager_service_client::NodeManagerServiceClient;
use crate::{RayAuth, endpoint, error_chain};
use std::time::Duration;
use tonic::Code;

/// What a raylet did when asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RayletAnswer {
    /// It answered (a reply, or a status it sent itself).
    Answered,
    /// It accepted the connection or not, but sent nothing within the
    /// limit: frozen, overloaded, or cut off by the network.
    Silent,
    /// It could not be asked: nothing listens there, or the address is
    /// not one.
    Unreachable(String),
}

/// Asks the raylet at `address` (`HOST:PORT`, the node manager's address
/// and port as the GCS lists them) for Ray's system configuration,
/// waiting up to `limit` in all, with the credentials `auth` (a raylet of
/// a cluster with token authentication refuses calls without them).
pub async fn probe_raylet(address: &str, limit: Duration, auth: &RayAuth) -> RayletAnswer {
    let endpoint = match endpoint(address) {
        Ok(e) => e.connect_timeout(limit),
        Err(e) => return RayletAnswer::Unreachable(e.to_string()),
    };
    let ask = async {
        let channel = endpoint.connect().await.map_err(|e| {
            if error_chain(&e).contains("timed out") {
                None
            } else {
                Some(format!("cannot connect: {}", error_chain(&e)))
            }
        })?;
        let mut request = tonic::Request::new(GetSystemConfigRequest {});
        request.set_timeout(limit);
        auth.apply(&mut request);
        match NodeManagerServiceClient::new(channel)
            .get_system_config(request)
            .await
        {
            Ok(_) => Ok(()),
            // A status the raylet sent: it is alive, of another version
            // perhaps (or refusing these credentials, which the GCS took).
            Err(s)
                if matches!(
                    s.code(),
                    Code::Unimplemented | Code::InvalidArgument | Code::Unauthenticated
                ) =>
            {
                Ok(())
            }
            Err(s) if matches!(s.code(), Code::DeadlineExceeded | Code::Cancelled) => Err(None),
            Err(s) => Err(Some(format!("{}: {}", s.code(), s.message()))),
        }
    };
    match tokio::time::timeout(limit, ask).await {
        Ok(Ok(())) => RayletAnswer::Answered,
        Ok(Err(Some(reason))) => RayletAnswer::Unreachable(reason),
        Ok(Err(None)) | Err(_) => RayletAnswer::Silent,
    }
}
