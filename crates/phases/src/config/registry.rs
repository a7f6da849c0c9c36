//! `[registry]`: how `oci://` policies are pulled (logins, TLS, the
//! signature a policy must carry). Entry point: [`RegistryConfig`].

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// How policies named `oci://HOST/REPO:TAG@sha256:...` are pulled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct RegistryConfig {
    /// A Docker `config.json` with the logins (a Kubernetes image pull
    /// secret's `.dockerconfigjson`); default: `$DOCKER_CONFIG/config.json`
    /// or `~/.docker/config.json` when present.
    pub credentials: Option<PathBuf>,
    /// Registries (`HOST[:PORT]`) that may be reached over plain HTTP.
    pub insecure: Vec<String>,
    /// Where pulled policies are kept by digest (default:
    /// `$ORCHESTRATOR_OCI_CACHE_DIR` or `~/.cache/ray-orchestrator/oci`).
    pub cache_dir: Option<PathBuf>,
    /// The largest policy layer accepted, MiB.
    pub max_layer_mib: u64,
    /// Deadline of each registry request, seconds.
    pub timeout_seconds: u64,
    /// Use a policy only with a signature by `public-key` (cosign's
    /// layout, checked offline); fails closed.
    pub require_signature: bool,
    /// The PEM public key (ECDSA P-256) signatures are checked with.
    pub public_key: Option<PathBuf>,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            credentials: None,
            insecure: Vec::new(),
            cache_dir: None,
            max_layer_mib: 64,
            timeout_seconds: 60,
            require_signature: false,
            public_key: None,
        }
    }
}

impl RegistryConfig {
    /// The OCI client's settings (credentials read now).
    pub fn settings(
        &self,
    ) -> Result<orchestrator_oci::RegistrySettings, orchestrator_oci::CredentialsError> {
        let cache_dir = self
            .cache_dir
            .clone()
            .or_else(|| std::env::var_os("ORCHESTRATOR_OCI_CACHE_DIR").map(PathBuf::from))
            .or_else(|| {
                std::env::var_os("HOME")
                    .map(|home| PathBuf::from(home).join(".cache/ray-orchestrator/oci"))
            })
            .unwrap_or_else(|| std::env::temp_dir().join("ray-orchestrator-oci"));
        let credentials = match self
            .credentials
            .clone()
            .or_else(orchestrator_oci::Credentials::default_file)
        {
            Some(file) => orchestrator_oci::Credentials::load(&file)?,
            None => orchestrator_oci::Credentials::none(),
        };
        let mut settings = orchestrator_oci::RegistrySettings::new(cache_dir);
        settings.credentials = credentials;
        settings.insecure = self.insecure.clone();
        settings.max_layer_bytes = self.max_layer_mib.saturating_mul(1 << 20);
        settings.timeout = std::time::Duration::from_secs(self.timeout_seconds.max(1));
        if self.require_signature {
            let path = self.public_key.clone().unwrap_or_default();
            let bad = |detail: String| orchestrator_oci::CredentialsError::PublicKey {
                path: path.clone(),
                detail,
            };
            let text = std::fs::read_to_string(&path).map_err(|e| bad(e.to_string()))?;
            let key =
                orchestrator_oci::VerifyingKey::from_pem(&text).map_err(|e| bad(e.to_string()))?;
            settings.require_signature = Some(key);
        }
        Ok(settings)
    }
}
