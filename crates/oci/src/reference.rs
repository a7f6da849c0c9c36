//! `oci://host[:port]/repository[:tag][@sha256:HEX]`: where a policy
//! lives in a registry. Entry point: [`Reference::parse`].

use std::fmt;

/// A policy's address in an OCI registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// `host` or `host:port`.
    pub registry: String,
    /// The repository path, e.g. `team/gpu-readiness`.
    pub repository: String,
    /// The tag, if given (`latest` is never assumed).
    pub tag: Option<String>,
    /// The manifest's digest the artifact must have (`sha256:HEX`).
    pub digest: Option<Digest>,
}

/// A `sha256:` digest (64 lowercase hex digits).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Digest(String);

impl Digest {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        use sha2::Digest as _;
        Self(hex::encode(sha2::Sha256::digest(bytes)))
    }

    /// Parses `sha256:HEX`.
    pub fn parse(text: &str) -> Result<Self, ReferenceError> {
        let hex = text
            .strip_prefix("sha256:")
            .ok_or_else(|| ReferenceError::Digest(text.to_string()))?;
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ReferenceError::Digest(text.to_string()));
        }
        Ok(Self(hex.to_ascii_lowercase()))
    }

    /// The 64 hex digits.
    pub fn hex(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.0)
    }
}

/// Why a reference was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReferenceError {
    /// Not an `oci://` reference at all.
    #[error(
        "{0:?} is not an OCI reference: write oci://HOST[:PORT]/REPOSITORY:TAG[@sha256:DIGEST]"
    )]
    Scheme(String),
    /// No repository after the host.
    #[error("{0:?} names no repository: write oci://HOST[:PORT]/REPOSITORY:TAG")]
    Repository(String),
    /// A repository with characters the distribution spec does not allow.
    #[error("repository {0:?} is not valid: lowercase letters, digits and . _ - separated by /")]
    RepositoryName(String),
    /// A tag the distribution spec does not allow.
    #[error(
        "tag {0:?} is not valid: up to 128 of letters, digits, . _ - (not starting with . or -)"
    )]
    Tag(String),
    /// Neither a tag nor a digest.
    #[error("{0:?} has neither a tag nor a digest: add :TAG, @sha256:DIGEST or both")]
    Nothing(String),
    /// A digest that is not `sha256:` and 64 hex digits.
    #[error("{0:?} is not a digest: write sha256: and 64 hex digits (plugin push prints it)")]
    Digest(String),
}

impl Reference {
    /// Parses `oci://host[:port]/repository[:tag][@sha256:HEX]`.
    ///
    /// ```
    /// use orchestrator_oci::Reference;
    /// let r = Reference::parse("oci://127.0.0.1:5000/team/readiness:v1").unwrap();
    /// assert_eq!(r.registry, "127.0.0.1:5000");
    /// assert_eq!(r.repository, "team/readiness");
    /// assert_eq!(r.tag.as_deref(), Some("v1"));
    /// assert!(r.digest.is_none());
    /// ```
    pub fn parse(text: &str) -> Result<Self, ReferenceError> {
        let rest = text
            .strip_prefix("oci://")
            .ok_or_else(|| ReferenceError::Scheme(text.to_string()))?;
        let (rest, digest) = match rest.split_once('@') {
            Some((rest, digest)) => (rest, Some(Digest::parse(digest)?)),
            None => (rest, None),
        };
        let (registry, path) = rest
            .split_once('/')
            .filter(|(host, path)| !host.is_empty() && !path.is_empty())
            .ok_or_else(|| ReferenceError::Repository(text.to_string()))?;
        // A tag follows the last ':' after the last '/'.
        let (repository, tag) = match path.rsplit_once(':') {
            Some((repo, tag)) if !tag.contains('/') => (repo, Some(tag.to_string())),
            _ => (path, None),
        };
        if !valid_repository(repository) {
            return Err(ReferenceError::RepositoryName(repository.to_string()));
        }
        if let Some(tag) = &tag
            && !valid_tag(tag)
        {
            return Err(ReferenceError::Tag(tag.clone()));
        }
        if tag.is_none() && digest.is_none() {
            return Err(ReferenceError::Nothing(text.to_string()));
        }
        Ok(Self {
            registry: registry.to_string(),
            repository: repository.to_string(),
            tag,
            digest,
        })
    }

    /// What the registry's manifest endpoint is asked for: the digest if
    /// pinned (the tag is then informative), else the tag.
    pub fn manifest_reference(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(digest), _) => digest.to_string(),
            (None, Some(tag)) => tag.clone(),
            (None, None) => String::new(),
        }
    }

    /// This reference pinned to `digest`.
    pub fn pinned(&self, digest: Digest) -> Self {
        Self {
            digest: Some(digest),
            ..self.clone()
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "oci://{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

fn valid_repository(name: &str) -> bool {
    !name.is_empty()
        && name.split('/').all(|part| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
                && part
                    .bytes()
                    .next()
                    .is_some_and(|b| b.is_ascii_alphanumeric())
        })
}

fn valid_tag(tag: &str) -> bool {
    !tag.is_empty()
        && tag.len() <= 128
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        && !tag.starts_with(['.', '-'])
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "aa11bb22cc33dd44ee55ff6600112233445566778899aabbccddeeff00112233";

    #[test]
    fn parses_tag_digest_and_port() {
        let r =
            Reference::parse(&format!("oci://reg.example:5000/a/b-c:v1.2@sha256:{HEX}")).unwrap();
        assert_eq!(r.registry, "reg.example:5000");
        assert_eq!(r.repository, "a/b-c");
        assert_eq!(r.tag.as_deref(), Some("v1.2"));
        assert_eq!(r.digest.as_ref().unwrap().hex(), HEX);
        assert_eq!(r.manifest_reference(), format!("sha256:{HEX}"));
        assert_eq!(
            r.to_string(),
            format!("oci://reg.example:5000/a/b-c:v1.2@sha256:{HEX}")
        );
        let r = Reference::parse(&format!("oci://ghcr.io/x/y@sha256:{HEX}")).unwrap();
        assert_eq!(r.tag, None);
    }

    #[test]
    fn refuses_what_a_registry_would() {
        for (text, want) in [
            ("ghcr.io/x/y:v1", "is not an OCI reference"),
            ("oci://ghcr.io", "names no repository"),
            ("oci://ghcr.io/x/y", "neither a tag nor a digest"),
            ("oci://ghcr.io/X/y:v1", "is not valid"),
            ("oci://ghcr.io/x/y:-v1", "tag \"-v1\" is not valid"),
            ("oci://ghcr.io/x/y:v1@sha256:abc", "is not a digest"),
            ("oci://ghcr.io/x/y:v1@md5:abc", "is not a digest"),
        ] {
            let e = Reference::parse(text).unwrap_err().to_string();
            assert!(e.contains(want), "{text}: {e}");
        }
    }
}
