//! Registry credentials from a Docker `config.json`, the format of a
//! Kubernetes image pull secret (`.dockerconfigjson`; the older
//! `.dockercfg`, a bare map of registries, is read too). Entry point:
//! [`Credentials::load`].

use base64::Engine as _;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A user name and password (or identity token) for one registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Login {
    /// The user name.
    pub username: String,
    /// The password or token.
    pub password: String,
}

impl std::fmt::Debug for Login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Login({}, <redacted>)", self.username)
    }
}

impl Login {
    /// The `Authorization: Basic` value.
    pub fn basic(&self) -> String {
        let pair = format!("{}:{}", self.username, self.password);
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(pair)
        )
    }
}

/// Every registry's login from one file.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    file: Option<PathBuf>,
    logins: BTreeMap<String, Login>,
    helpers: Vec<String>,
}

/// Why a credentials file was refused.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    /// It could not be read.
    #[error("cannot read registry credentials {path}: {error}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What the system said.
        #[source]
        error: std::io::Error,
    },
    /// It is not a Docker config.json.
    #[error(
        "registry credentials {path} are not a Docker config.json ({detail}): expected {{\"auths\": {{\"HOST\": {{\"auth\": \"base64(user:password)\"}}}}}}"
    )]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// The public key that signatures are checked with cannot be used.
    #[error(
        "[registry] public-key {path}: {detail}; give the PEM public key the policies are signed for (`cosign public-key`)"
    )]
    PublicKey {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
}

#[derive(Deserialize)]
struct ConfigJson {
    #[serde(default)]
    auths: Option<BTreeMap<String, AuthEntry>>,
    #[serde(default, rename = "credHelpers")]
    cred_helpers: BTreeMap<String, String>,
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
}

#[derive(Deserialize, Default)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    identitytoken: Option<String>,
}

impl Credentials {
    /// None at all (anonymous access).
    pub fn none() -> Self {
        Self::default()
    }

    /// Reads `path`.
    pub fn load(path: &Path) -> Result<Self, CredentialsError> {
        let text = std::fs::read_to_string(path).map_err(|error| CredentialsError::Read {
            path: path.to_path_buf(),
            error,
        })?;
        Self::parse(&text, path)
    }

    /// The file Docker would use: `$DOCKER_CONFIG/config.json`, else
    /// `~/.docker/config.json`, when it exists.
    pub fn default_file() -> Option<PathBuf> {
        let dir = match std::env::var_os("DOCKER_CONFIG") {
            Some(dir) => PathBuf::from(dir),
            None => PathBuf::from(std::env::var_os("HOME")?).join(".docker"),
        };
        let file = dir.join("config.json");
        file.is_file().then_some(file)
    }

    fn parse(text: &str, path: &Path) -> Result<Self, CredentialsError> {
        let format = |detail: String| CredentialsError::Format {
            path: path.to_path_buf(),
            detail,
        };
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| format(e.to_string()))?;
        // `.dockercfg`: the map of registries at the top.
        let config: ConfigJson = if value.get("auths").is_some()
            || value.get("credHelpers").is_some()
            || value.get("credsStore").is_some()
        {
            serde_json::from_value(value).map_err(|e| format(e.to_string()))?
        } else {
            ConfigJson {
                auths: Some(serde_json::from_value(value).map_err(|e| format(e.to_string()))?),
                cred_helpers: BTreeMap::new(),
                creds_store: None,
            }
        };
        let mut logins = BTreeMap::new();
        for (key, entry) in config.auths.unwrap_or_default() {
            let login = match (
                entry.auth,
                entry.username,
                entry.password,
                entry.identitytoken,
            ) {
                (Some(auth), _, _, _) if !auth.is_empty() => {
                    let decoded = base64::engine::general_purpose::STANDARD
                        .decode(auth.trim())
                        .map_err(|e| format(format!("auths.{key}.auth is not base64: {e}")))?;
                    let pair = String::from_utf8(decoded)
                        .map_err(|_| format(format!("auths.{key}.auth is not UTF-8")))?;
                    let (user, pass) = pair.split_once(':').ok_or_else(|| {
                        format(format!("auths.{key}.auth is not base64 of user:password"))
                    })?;
                    Login {
                        username: user.to_string(),
                        password: pass.to_string(),
                    }
                }
                (_, Some(username), Some(password), _) => Login { username, password },
                (_, _, _, Some(token)) => Login {
                    username: "<token>".to_string(),
                    password: token,
                },
                _ => continue,
            };
            logins.insert(registry_key(&key), login);
        }
        let mut helpers: Vec<String> = config.cred_helpers.into_keys().collect();
        if config.creds_store.is_some() {
            helpers.push("*".to_string());
        }
        Ok(Self {
            file: Some(path.to_path_buf()),
            logins,
            helpers,
        })
    }

    /// The login for `registry` (`host[:port]`), if the file has one.
    pub fn login(&self, registry: &str) -> Option<&Login> {
        self.logins.get(&registry_key(registry))
    }

    /// What to tell a user whom `registry` refused: where a login would go.
    pub fn advice(&self, registry: &str) -> String {
        match &self.file {
            None => format!(
                "give credentials for {registry} in a Docker config.json (--registry-config FILE, [registry] credentials, or $DOCKER_CONFIG/config.json; a Kubernetes image pull secret's .dockerconfigjson is that format)"
            ),
            Some(file) if self.login(registry).is_some() => format!(
                "the login for {registry} in {} was refused: check the user name and password",
                file.display()
            ),
            Some(file)
                if self
                    .helpers
                    .iter()
                    .any(|h| h == "*" || registry_key(h) == registry_key(registry)) =>
            {
                format!(
                    "{} sends {registry} to a credential helper, which the orchestrator does not run: put the login under \"auths\" instead",
                    file.display()
                )
            }
            Some(file) => format!(
                "{} has no login for {registry}: add it under \"auths\"",
                file.display()
            ),
        }
    }
}

/// `https://index.docker.io/v1/` and `index.docker.io` name one registry.
fn registry_key(key: &str) -> String {
    let key = key
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    let host = key.split('/').next().unwrap_or(key);
    match host {
        "docker.io" | "registry-1.docker.io" => "index.docker.io".to_string(),
        other => other.to_ascii_lowercase(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_pull_secret_and_a_dockercfg() {
        let path = Path::new("secret.json");
        let auth = base64::engine::general_purpose::STANDARD.encode("me:pa:ss");
        let c = Credentials::parse(
            &format!(
                r#"{{"auths": {{"https://127.0.0.1:5000/v1/": {{"auth": "{auth}"}},
                "ghcr.io": {{"username": "u", "password": "p"}}}},
                "credHelpers": {{"gcr.io": "gcloud"}}}}"#
            ),
            path,
        )
        .unwrap();
        let login = c.login("127.0.0.1:5000").unwrap();
        assert_eq!(
            (login.username.as_str(), login.password.as_str()),
            ("me", "pa:ss")
        );
        assert_eq!(c.login("ghcr.io").unwrap().username, "u");
        assert!(c.login("quay.io").is_none());
        assert!(
            c.advice("gcr.io").contains("credential helper"),
            "{}",
            c.advice("gcr.io")
        );
        assert!(c.advice("quay.io").contains("has no login for quay.io"));
        assert!(!format!("{login:?}").contains("pa:ss"));

        let old =
            Credentials::parse(&format!(r#"{{"quay.io": {{"auth": "{auth}"}}}}"#), path).unwrap();
        assert_eq!(old.login("quay.io").unwrap().username, "me");
    }

    #[test]
    fn a_malformed_file_is_named() {
        let e = Credentials::parse(
            r#"{"auths": {"h": {"auth": "%%%"}}}"#,
            Path::new("/s/c.json"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("/s/c.json") && e.contains("auths.h.auth is not base64"),
            "{e}"
        );
    }
}
