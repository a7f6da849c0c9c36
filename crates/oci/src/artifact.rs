//! The CNCF WebAssembly OCI artifact layout: an image manifest whose
//! config has media type `application/vnd.wasm.config.v0+json` and whose
//! one layer is the component (`application/wasm`). Entry point:
//! [`Manifest::for_component`].

use crate::reference::Digest;
use serde::{Deserialize, Serialize};

/// The manifest's own media type (an OCI image manifest).
pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
/// The config's media type.
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.wasm.config.v0+json";
/// The layer's media type.
pub const LAYER_MEDIA_TYPE: &str = "application/wasm";

/// One blob a manifest points at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// What the blob is.
    pub media_type: String,
    /// `sha256:HEX`.
    pub digest: String,
    /// Its size in bytes.
    pub size: u64,
}

/// An OCI image manifest (the fields this project reads and writes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// Always 2.
    pub schema_version: u32,
    /// [`MANIFEST_MEDIA_TYPE`] (absent in some registries' answers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// The config blob.
    pub config: Descriptor,
    /// The layers: exactly one for a policy.
    #[serde(default)]
    pub layers: Vec<Descriptor>,
}

/// The config blob of a WebAssembly artifact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WasmConfig {
    /// RFC 3339 creation time.
    pub created: String,
    /// Always `wasm`.
    pub architecture: String,
    /// `wasip2` for a component.
    pub os: String,
    /// The layers' digests, in order.
    pub layer_digests: Vec<String>,
    /// What the component exports and imports.
    pub component: ComponentInfo,
}

/// The component's interface, as the config describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct ComponentInfo {
    /// Exported interfaces.
    pub exports: Vec<String>,
    /// Imported interfaces.
    pub imports: Vec<String>,
    /// The world it targets, e.g. `orchestrator:policy/readiness@0.2.0`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

impl Manifest {
    /// The manifest and config blob for one component (`wasm`).
    pub fn for_component(wasm: &[u8], component: ComponentInfo) -> (Self, Vec<u8>) {
        let layer = Digest::of(wasm);
        let config = WasmConfig {
            created: now_rfc3339(),
            architecture: "wasm".to_string(),
            os: "wasip2".to_string(),
            layer_digests: vec![layer.to_string()],
            component,
        };
        // Serializing these plain structs cannot fail; an empty object
        // would still be a valid blob.
        let config_bytes = serde_json::to_vec(&config).unwrap_or_else(|_| b"{}".to_vec());
        let manifest = Self {
            schema_version: 2,
            media_type: Some(MANIFEST_MEDIA_TYPE.to_string()),
            config: Descriptor {
                media_type: CONFIG_MEDIA_TYPE.to_string(),
                digest: Digest::of(&config_bytes).to_string(),
                size: config_bytes.len() as u64,
            },
            layers: vec![Descriptor {
                media_type: LAYER_MEDIA_TYPE.to_string(),
                digest: layer.to_string(),
                size: wasm.len() as u64,
            }],
        };
        (manifest, config_bytes)
    }

    /// The one WebAssembly layer, or why this is not a policy artifact.
    pub fn wasm_layer(&self) -> Result<&Descriptor, NotAPolicy> {
        if self.config.media_type != CONFIG_MEDIA_TYPE {
            return Err(NotAPolicy::Config(self.config.media_type.clone()));
        }
        match self.layers.as_slice() {
            [layer] if layer.media_type == LAYER_MEDIA_TYPE => Ok(layer),
            [layer] => Err(NotAPolicy::Layer(layer.media_type.clone())),
            layers => Err(NotAPolicy::Layers(layers.len())),
        }
    }
}

/// Why a manifest is not a policy artifact's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotAPolicy {
    /// Another config media type.
    #[error(
        "its config is {0:?}, not {CONFIG_MEDIA_TYPE:?} (a container image or another artifact; push a policy with `orchestrator plugin push`)"
    )]
    Config(String),
    /// One layer of another media type.
    #[error("its layer is {0:?}, not {LAYER_MEDIA_TYPE:?}")]
    Layer(String),
    /// Not exactly one layer.
    #[error("it has {0} layers; a policy artifact has exactly one {LAYER_MEDIA_TYPE:?} layer")]
    Layers(usize),
}

/// Now as RFC 3339 UTC (seconds), without a date library.
fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic
/// Gregorian calendar (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_512), (2026, 2, 28));
        assert_eq!(civil_from_days(20_783), (2026, 11, 26));
    }

    #[test]
    fn a_component_manifest_has_the_cncf_layout() {
        let (m, config) = Manifest::for_component(b"\0asm\x0d\0\x01\0", ComponentInfo::default());
        let layer = m.wasm_layer().unwrap();
        assert_eq!(layer.size, 8);
        assert_eq!(m.config.digest, Digest::of(&config).to_string());
        let c: WasmConfig = serde_json::from_slice(&config).unwrap();
        assert_eq!((c.architecture.as_str(), c.os.as_str()), ("wasm", "wasip2"));
        assert_eq!(c.layer_digests, vec![layer.digest.clone()]);
        let json = serde_json::to_value(&m).unwrap();
        assert_eq!(json["config"]["mediaType"], CONFIG_MEDIA_TYPE);
        assert_eq!(json["layers"][0]["mediaType"], LAYER_MEDIA_TYPE);

        let mut image = m.clone();
        image.config.media_type = "application/vnd.oci.image.config.v1+json".into();
        assert!(
            image
                .wasm_layer()
                .unwrap_err()
                .to_string()
                .contains("container image")
        );
    }
}
