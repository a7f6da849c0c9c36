#![warn(unreachable_pub)]
//! Policies shipped through OCI registries, in the CNCF WebAssembly
//! artifact layout: `orchestrator plugin push` sends a component, and a
//! policy named `oci://host/repo:tag@sha256:...` is pulled at start,
//! verified against the pin and cached by digest, so a second start needs
//! no registry. Entry point: [`Registry`].
//!
//! Modules: [`reference`] (what `oci://` names), [`credentials`] (Docker
//! `config.json`, the format of a Kubernetes image pull secret),
//! [`artifact`] (manifest and config), [`registry`] (the distribution
//! API), [`cache`] (blobs by digest).

pub mod artifact;
pub mod cache;
pub mod credentials;
pub mod reference;
pub mod registry;
pub mod signature;

pub use artifact::ComponentInfo;
pub use credentials::{Credentials, CredentialsError};
pub use reference::{Digest, Reference, ReferenceError};
pub use registry::{OciError, Pulled, Registry, RegistrySettings};
pub use signature::{SigningKey, VerifyingKey};
