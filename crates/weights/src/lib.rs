//! Model weights fetched once per group. One node (the Ray head or the
//! native leader) lists the revision at its origin ([`origin`]) and takes
//! its chunks from there; every other node takes them from any node that
//! already has them ([`peer`], over each orchestrator's own port, signed
//! with the group's key); every chunk is checked against its sha256
//! ([`manifest`]), written into this node's cache and logged, so a
//! download resumes ([`store`]). A folder this node made (vLLM's compile
//! cache) travels the same way ([`folder`]). Entry point:
//! [`fetch::Fetcher::run`].

pub mod fetch;
pub mod folder;
pub mod http;
pub mod manifest;
pub mod origin;
pub mod peer;
pub mod store;

pub use fetch::{FetchError, FetchSettings, FetchState, Fetcher, Peers, Progress, Role};
pub use manifest::{Manifest, ManifestFile, Offer};
pub use origin::{Origin, OriginError, OriginSpec};
pub use peer::{PeerAnswer, PeerClient, PeerKey, PeerService};
pub use store::{Store, StoreError};
