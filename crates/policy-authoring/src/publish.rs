//! A policy component pushed to an OCI registry as an artifact (Wasm OCI
//! Artifact layout), optionally signed: what `orchestrator plugin push`
//! does before it prints. Entry point: [`push`].

use orchestrator_oci::{
    ComponentInfo, OciError, Reference, Registry, RegistrySettings, SigningKey,
};
use orchestrator_policy_host::{HostConfig, PluginSource, PolicyHost};
use std::path::Path;

/// What to push, and where.
#[derive(Debug)]
pub struct Push<'a> {
    /// The component file.
    pub file: &'a Path,
    /// `registry/repository:tag`.
    pub reference: &'a str,
    /// A PEM signing key (ECDSA P-256): the artifact is signed too.
    pub signing_key: Option<&'a Path>,
    /// The host that checks the file is a policy component.
    pub host: HostConfig,
    /// The registry's credentials, TLS and cache.
    pub registry: RegistrySettings,
}

/// What was pushed.
#[derive(Debug, Clone, PartialEq)]
pub struct Pushed {
    /// The manifest's digest.
    pub digest: String,
    /// The reference pinned by digest.
    pub pinned: String,
    /// The policy's world and contract version, e.g. `readiness 0.2.0`.
    pub world: String,
    /// The component's size in bytes.
    pub size: usize,
    /// The signature's tag, when signed.
    pub signed: Option<String>,
}

/// Why nothing (or not everything) was pushed.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// The input cannot be pushed: nothing was sent (exit 2).
    #[error("{0}")]
    Refused(String),
    /// The registry refused or could not be reached (exit 1).
    #[error(transparent)]
    Registry(#[from] OciError),
}

impl PushError {
    /// The exit code of `plugin push` for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Refused(_) => 2,
            Self::Registry(_) => 1,
        }
    }
}

/// Checks the key, the reference and the component first (a bad one
/// pushes nothing), then pushes the component and, with a key, its
/// signature.
pub fn push(request: Push<'_>) -> Result<Pushed, PushError> {
    let refused = |e: &dyn std::fmt::Display| PushError::Refused(e.to_string());
    let signing = match request.signing_key {
        None => None,
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                PushError::Refused(format!(
                    "cannot read the signing key {}: {e}",
                    path.display()
                ))
            })?;
            Some(
                SigningKey::from_pem(&text)
                    .map_err(|e| PushError::Refused(format!("{}: {e}", path.display())))?,
            )
        }
    };
    let reference = Reference::parse(request.reference).map_err(|e| refused(&e))?;
    if reference.tag.is_none() {
        return Err(refused(&OciError::PushNeedsTag(reference.to_string())));
    }
    let host = PolicyHost::new(request.host).map_err(|e| refused(&e))?;
    let source = PluginSource::File {
        path: request.file.to_path_buf(),
        sha256: None,
    };
    let info = host.inspect(&source).map_err(|e| {
        PushError::Refused(format!(
            "{e}\nonly policy components are pushed: check it with `orchestrator plugin check FILE`"
        ))
    })?;
    let wasm = std::fs::read(request.file)
        .map_err(|e| PushError::Refused(format!("cannot read {}: {e}", request.file.display())))?;
    let component = ComponentInfo {
        exports: info.exports.clone(),
        imports: info.imports.clone(),
        target: Some(format!(
            "ray-orchestrator:policy/{}@{}",
            info.world, info.version
        )),
    };
    let settings = request.registry;
    let (pinned, signed) = on_own_runtime(async move {
        let registry = Registry::new(settings)?;
        let pinned = registry.push(&wasm, component, &reference).await?;
        let signed = match &signing {
            Some(key) => Some(registry.push_signature(&pinned, key).await?),
            None => None,
        };
        Ok::<_, OciError>((pinned, signed))
    })?;
    Ok(Pushed {
        digest: pinned
            .digest
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
        pinned: pinned.to_string(),
        world: format!("{} {}", info.world, info.version),
        size: info.size,
        signed,
    })
}

/// Runs the registry client on a runtime of its own thread (callers may
/// be inside another runtime, or none).
fn on_own_runtime<T: Send + 'static>(
    work: impl std::future::Future<Output = Result<T, OciError>> + Send + 'static,
) -> Result<T, PushError> {
    let thread = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| PushError::Refused(format!("cannot start the async runtime: {e}")))?;
        runtime.block_on(work).map_err(PushError::from)
    });
    thread
        .join()
        .map_err(|_| PushError::Refused("the registry client's thread stopped".to_string()))?
}
