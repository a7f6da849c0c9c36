//! Signatures of pushed policies in cosign's layout, with a key pair
//! (ECDSA P-256, SHA-256), verified offline. Entry points: [`SigningKey`],
//! [`VerifyingKey`], [`Registry::push_signature`](crate::Registry::push_signature)
//! and [`Registry::verify_signature`](crate::Registry::verify_signature).
//!
//! As cosign stores it: for the manifest `sha256:<hex>`, a manifest tagged
//! `sha256-<hex>.sig` in the same repository whose layer (media type
//! `application/vnd.dev.cosign.simplesigning.v1+json`) is the "simple
//! signing" payload naming the signed digest, and whose annotation
//! `dev.cosignproject.cosign/signature` holds the base64 ASN.1 ECDSA
//! signature over the payload's bytes. Keys are PEM: `PRIVATE KEY`
//! (PKCS#8, e.g. `openssl genpkey -algorithm EC -pkeyopt
//! ec_paramgen_curve:P-256`) and `PUBLIC KEY` (as `cosign public-key`
//! prints it). No transparency log is consulted.

use crate::OciError;
use crate::reference::Digest;
use base64::Engine;
use ring::signature::{self, EcdsaKeyPair, KeyPair};

/// The media type of the signed payload.
pub const PAYLOAD_MEDIA_TYPE: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
/// The annotation holding the signature.
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
/// DER prefix of a P-256 SubjectPublicKeyInfo, before the 65-byte point.
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

fn key_error(detail: &str) -> OciError {
    OciError::Key(detail.to_string())
}

/// The DER of the first PEM block labelled `label`.
fn pem(text: &str, label: &str) -> Result<Vec<u8>, OciError> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let body = text
        .split_once(&begin)
        .and_then(|(_, rest)| rest.split_once(&end))
        .map(|(body, _)| body)
        .ok_or_else(|| key_error(&format!("no `{begin}` block")))?;
    let b64: String = body.chars().filter(|c| !c.is_whitespace()).collect();
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|e| key_error(&format!("the {label} block is not base64 ({e})")))
}

/// A private key that signs.
pub struct SigningKey(EcdsaKeyPair);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey(<redacted>)")
    }
}

impl SigningKey {
    /// From a PEM `PRIVATE KEY` (PKCS#8, P-256).
    pub fn from_pem(text: &str) -> Result<Self, OciError> {
        let der = pem(text, "PRIVATE KEY")?;
        let rng = ring::rand::SystemRandom::new();
        EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_ASN1_SIGNING, &der, &rng)
            .map(Self)
            .map_err(|e| key_error(&format!("not a PKCS#8 ECDSA P-256 key ({e}); make one with `openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out key.pem`")))
    }

    /// A fresh key (tests), with its PKCS#8 PEM.
    pub fn generate() -> Result<(Self, String), OciError> {
        let rng = ring::rand::SystemRandom::new();
        let der = EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_ASN1_SIGNING, &rng)
            .map_err(|e| key_error(&e.to_string()))?;
        let pem_text = to_pem("PRIVATE KEY", der.as_ref());
        Ok((Self::from_pem(&pem_text)?, pem_text))
    }

    /// The matching public key, as PEM `PUBLIC KEY`.
    pub fn public_pem(&self) -> String {
        let mut der = P256_SPKI_PREFIX.to_vec();
        der.extend_from_slice(self.0.public_key().as_ref());
        to_pem("PUBLIC KEY", &der)
    }

    /// The base64 signature of `payload`.
    pub fn sign(&self, payload: &[u8]) -> Result<String, OciError> {
        let rng = ring::rand::SystemRandom::new();
        let sig = self
            .0
            .sign(&rng, payload)
            .map_err(|e| key_error(&e.to_string()))?;
        Ok(base64::engine::general_purpose::STANDARD.encode(sig.as_ref()))
    }
}

fn to_pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut text = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        text.push_str(&String::from_utf8_lossy(line));
        text.push('\n');
    }
    text.push_str(&format!("-----END {label}-----\n"));
    text
}

/// A public key that verifies.
#[derive(Clone, PartialEq, Eq)]
pub struct VerifyingKey(Vec<u8>);

impl std::fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "VerifyingKey({})",
            hex::encode(&self.0[..8.min(self.0.len())])
        )
    }
}

impl VerifyingKey {
    /// From a PEM `PUBLIC KEY` (P-256).
    pub fn from_pem(text: &str) -> Result<Self, OciError> {
        let der = pem(text, "PUBLIC KEY")?;
        match der.strip_prefix(&P256_SPKI_PREFIX[..]) {
            Some(point) if point.len() == 65 && point[0] == 4 => Ok(Self(point.to_vec())),
            _ => Err(key_error(
                "not an ECDSA P-256 public key (cosign's default); `cosign public-key --key cosign.key` prints one",
            )),
        }
    }

    /// Whether `signature_b64` is this key's signature of `payload`.
    pub fn verifies(&self, payload: &[u8], signature_b64: &str) -> bool {
        let Ok(sig) = base64::engine::general_purpose::STANDARD.decode(signature_b64.trim()) else {
            return false;
        };
        signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_ASN1, &self.0)
            .verify(payload, &sig)
            .is_ok()
    }
}

/// The tag of `digest`'s signature manifest.
pub fn signature_tag(digest: &Digest) -> String {
    digest.to_string().replace(':', "-") + ".sig"
}

/// The simple-signing payload for the manifest `digest` of
/// `repository` (`HOST/REPO`).
pub fn payload(repository: &str, digest: &Digest) -> Vec<u8> {
    serde_json::json!({
        "critical": {
            "identity": {"docker-reference": repository},
            "image": {"docker-manifest-digest": digest.to_string()},
            "type": "cosign container image signature"
        },
        "optional": null
    })
    .to_string()
    .into_bytes()
}

/// The manifest digest a payload signs, when it is a simple-signing one.
pub fn signed_digest(payload: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(payload).ok()?;
    let critical = &value["critical"];
    if critical["type"] != "cosign container image signature" {
        return None;
    }
    critical["image"]["docker-manifest-digest"]
        .as_str()
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_with_its_key_only() {
        let (key, _) = SigningKey::generate().unwrap_or_else(|e| panic!("{e}"));
        let public = VerifyingKey::from_pem(&key.public_pem()).unwrap_or_else(|e| panic!("{e}"));
        let digest = Digest::of(b"manifest");
        let text = payload("r.local/team/p", &digest);
        let sig = key.sign(&text).unwrap_or_else(|e| panic!("{e}"));
        assert!(public.verifies(&text, &sig));
        assert_eq!(signed_digest(&text), Some(digest.to_string()));
        let mut tampered = text.clone();
        tampered[10] ^= 1;
        assert!(!public.verifies(&tampered, &sig));
        let (other, _) = SigningKey::generate().unwrap_or_else(|e| panic!("{e}"));
        let other = VerifyingKey::from_pem(&other.public_pem()).unwrap_or_else(|e| panic!("{e}"));
        assert!(!other.verifies(&text, &sig));
        assert!(VerifyingKey::from_pem("nonsense").is_err());
        assert!(
            signature_tag(&digest).starts_with("sha256-")
                && signature_tag(&digest).ends_with(".sig")
        );
    }
}
