//! Talking to a registry (the OCI distribution API): push a policy, pull
//! one verified against its pin, with Basic or Bearer-token auth, plain
//! HTTP only for hosts configured so, every request bounded in time and
//! every body in size. Entry point: [`Registry::new`].

use crate::artifact::{ComponentInfo, MANIFEST_MEDIA_TYPE, Manifest};
use crate::cache::BlobCache;
use crate::credentials::Credentials;
use crate::reference::{Digest, Reference};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode, header};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

/// A manifest is small; more than this is refused.
const MAX_MANIFEST_BYTES: usize = 4 << 20;
/// Error bodies are read this far, for the message.
const MAX_ERROR_BYTES: usize = 16 << 10;

/// How to reach registries.
#[derive(Debug, Clone)]
pub struct RegistrySettings {
    /// Logins, from a Docker config.json.
    pub credentials: Credentials,
    /// Registries (`host[:port]`) that may be reached over plain HTTP.
    pub insecure: Vec<String>,
    /// Where pulled artifacts are kept, by digest.
    pub cache_dir: PathBuf,
    /// The largest layer accepted, in bytes.
    pub max_layer_bytes: u64,
    /// Deadline of each request (body included).
    pub timeout: Duration,
    /// When set, a policy is used only with a signature by this key
    /// (cosign's layout, checked offline), cached or not.
    pub require_signature: Option<crate::signature::VerifyingKey>,
}

impl RegistrySettings {
    /// Anonymous, HTTPS only, cache in `cache_dir`, layers up to 64 MiB,
    /// 60 s per request.
    pub fn new(cache_dir: PathBuf) -> Self {
        Self {
            credentials: Credentials::none(),
            insecure: Vec::new(),
            cache_dir,
            max_layer_bytes: 64 << 20,
            timeout: Duration::from_secs(60),
            require_signature: None,
        }
    }
}

/// What a pull produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pulled {
    /// The reference pinned to the manifest's digest.
    pub reference: Reference,
    /// The component file (in the cache).
    pub path: PathBuf,
    /// The component's digest (its sha256).
    pub layer: Digest,
    /// Its size in bytes.
    pub size: u64,
    /// Whether no registry was asked (a pinned reference found in the cache).
    pub from_cache: bool,
}

/// Why a push or pull failed; each names the fix.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    /// No connection (refused, no route, DNS, TLS).
    #[error("cannot reach registry {registry}: {detail}{hint}")]
    Unreachable {
        /// `host[:port]`.
        registry: String,
        /// What failed.
        detail: String,
        /// A hint about HTTPS vs plain HTTP, if relevant.
        hint: String,
    },
    /// A request ran past its deadline.
    #[error("registry {registry} did not answer {what} within {seconds} s")]
    Timeout {
        /// `host[:port]`.
        registry: String,
        /// Which request.
        what: String,
        /// The deadline.
        seconds: u64,
    },
    /// 401/403 after trying the credentials there are.
    #[error("registry {registry} refused access to {repository} ({status}): {advice}")]
    Unauthorized {
        /// `host[:port]`.
        registry: String,
        /// The repository.
        repository: String,
        /// 401 or 403.
        status: u16,
        /// Where a login goes.
        advice: String,
    },
    /// No such tag, digest or repository.
    #[error(
        "{reference}: {what} not found in the registry ({detail}); check the name, or push it with `orchestrator plugin push`"
    )]
    NotFound {
        /// The reference.
        reference: String,
        /// `tag v1`, `digest sha256:..`, the layer.
        what: String,
        /// The registry's error code.
        detail: String,
    },
    /// The registry served other bytes than pinned.
    #[error(
        "{reference}: {what} has digest {actual}, not the pinned {expected}: the tag was pushed again or the registry served other bytes; pin the new digest if that is intended"
    )]
    DigestMismatch {
        /// The reference.
        reference: String,
        /// Manifest or layer.
        what: String,
        /// The pin.
        expected: String,
        /// What was served.
        actual: String,
    },
    /// Not a WebAssembly policy artifact.
    #[error("{reference} is not a WebAssembly policy: {detail}")]
    NotWasm {
        /// The reference.
        reference: String,
        /// Why.
        detail: String,
    },
    /// A layer over the size limit.
    #[error(
        "{reference}: the layer is {size} bytes, over the limit of {limit} bytes ([registry] max-layer-mib); refused before downloading it"
    )]
    TooLarge {
        /// The reference.
        reference: String,
        /// Its declared size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// The registry sent more than it declared, or an unusable answer.
    #[error("registry {registry}: {detail}")]
    Protocol {
        /// `host[:port]`.
        registry: String,
        /// What was wrong.
        detail: String,
    },
    /// An unexpected HTTP status.
    #[error("registry {registry} answered {status} to {what}: {body}")]
    Status {
        /// `host[:port]`.
        registry: String,
        /// The status.
        status: u16,
        /// Which request.
        what: String,
        /// The start of its body.
        body: String,
    },
    /// A push needs a tag.
    #[error(
        "{0}: a push needs a tag (oci://HOST/REPOSITORY:TAG); the digest is what the push prints"
    )]
    PushNeedsTag(String),
    /// A signing or verifying key cannot be used.
    #[error("signature key: {0}")]
    Key(String),
    /// No signature by the configured key (fails closed).
    #[error(
        "{reference}: {detail}; sign it with `orchestrator plugin push --sign KEY.pem`, or turn [registry] require-signature off"
    )]
    Unsigned {
        /// The reference pulled.
        reference: String,
        /// What was found instead.
        detail: String,
    },
    /// The local cache failed.
    #[error(transparent)]
    Cache(#[from] crate::cache::CacheError),
    /// No TLS roots on this machine.
    #[error(
        "cannot set up HTTPS: {0} (install the CA certificates, e.g. the ca-certificates package)"
    )]
    Tls(String),
}

type HttpClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// A client for OCI registries with one set of settings.
pub struct Registry {
    settings: RegistrySettings,
    http: HttpClient,
    cache: BlobCache,
    /// Authorization values that worked, per registry and scope.
    tokens: Mutex<HashMap<(String, String), String>>,
}

impl Registry {
    /// A client for `settings`.
    pub fn new(settings: RegistrySettings) -> Result<Self, OciError> {
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_native_roots()
            .map_err(|e| OciError::Tls(e.to_string()))?
            .https_or_http()
            .enable_http1()
            .build();
        let http = Client::builder(TokioExecutor::new()).build(https);
        let cache = BlobCache::new(settings.cache_dir.clone());
        Ok(Self {
            settings,
            http,
            cache,
            tokens: Mutex::new(HashMap::new()),
        })
    }

    /// Pushes `wasm` (described by `component`) to `reference`'s tag and
    /// returns the reference pinned to the manifest's digest.
    pub async fn push(
        &self,
        wasm: &[u8],
        component: ComponentInfo,
        reference: &Reference,
    ) -> Result<Reference, OciError> {
        let Some(tag) = &reference.tag else {
            return Err(OciError::PushNeedsTag(reference.to_string()));
        };
        let scope = format!("repository:{}:pull,push", reference.repository);
        let (manifest, config) = Manifest::for_component(wasm, component);
        self.upload_blob(reference, &scope, &config).await?;
        self.upload_blob(reference, &scope, wasm).await?;
        let body = serde_json::to_vec(&manifest).map_err(|e| OciError::Protocol {
            registry: reference.registry.clone(),
            detail: e.to_string(),
        })?;
        let digest = Digest::of(&body);
        self.put_manifest(reference, &scope, tag, body, "the manifest upload")
            .await?;
        Ok(reference.pinned(digest))
    }

    /// PUTs `body` as the manifest tagged `tag`; 201 expected.
    async fn put_manifest(
        &self,
        reference: &Reference,
        scope: &str,
        tag: &str,
        body: Vec<u8>,
        what: &str,
    ) -> Result<(), OciError> {
        let url = self.url(reference, &format!("manifests/{tag}"));
        let response = self
            .send(reference, scope, what, || {
                Request::builder()
                    .method(Method::PUT)
                    .uri(&url)
                    .header(header::CONTENT_TYPE, MANIFEST_MEDIA_TYPE)
                    .body(Full::new(Bytes::from(body.clone())))
            })
            .await?;
        self.expect(reference, response, &[StatusCode::CREATED], what)
            .await?;
        Ok(())
    }

    /// Pulls `reference`: from the cache when pinned and present (no
    /// registry needed), else from the registry, verified against the pin
    /// and the layer's digest, refused if not a policy or too large.
    pub async fn pull(&self, reference: &Reference) -> Result<Pulled, OciError> {
        let pulled = self.pull_unverified(reference).await?;
        if let Some(key) = &self.settings.require_signature {
            self.verify_signature(&pulled.reference, key).await?;
        }
        Ok(pulled)
    }

    /// Signs the manifest `pinned` names (cosign's layout: a manifest
    /// tagged `sha256-<hex>.sig` beside it); returns that tag.
    pub async fn push_signature(
        &self,
        pinned: &Reference,
        key: &crate::signature::SigningKey,
    ) -> Result<String, OciError> {
        use crate::signature::{PAYLOAD_MEDIA_TYPE, SIGNATURE_ANNOTATION, payload, signature_tag};
        let digest = pinned
            .digest
            .clone()
            .ok_or_else(|| OciError::PushNeedsTag(pinned.to_string()))?;
        let scope = format!("repository:{}:pull,push", pinned.repository);
        let text = payload(
            &format!("{}/{}", pinned.registry, pinned.repository),
            &digest,
        );
        let signature = key.sign(&text)?;
        let config = serde_json::to_vec(&serde_json::json!({
            "architecture": "", "os": "", "config": {},
            "rootfs": {"type": "layers", "diff_ids": [Digest::of(&text).to_string()]}
        }))
        .map_err(|e| self.protocol(pinned, e.to_string()))?;
        self.upload_blob(pinned, &scope, &config).await?;
        self.upload_blob(pinned, &scope, &text).await?;
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": MANIFEST_MEDIA_TYPE,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": Digest::of(&config).to_string(),
                "size": config.len()
            },
            "layers": [{
                "mediaType": PAYLOAD_MEDIA_TYPE,
                "digest": Digest::of(&text).to_string(),
                "size": text.len(),
                "annotations": {SIGNATURE_ANNOTATION: signature}
            }]
        }))
        .map_err(|e| self.protocol(pinned, e.to_string()))?;
        let tag = signature_tag(&digest);
        self.put_manifest(pinned, &scope, &tag, manifest, "the signature upload")
            .await?;
        Ok(tag)
    }

    /// Checks that the manifest `pinned` names carries a signature by
    /// `key` (any of its signature layers), offline: no transparency log.
    pub async fn verify_signature(
        &self,
        pinned: &Reference,
        key: &crate::signature::VerifyingKey,
    ) -> Result<(), OciError> {
        use crate::signature::{
            PAYLOAD_MEDIA_TYPE, SIGNATURE_ANNOTATION, signature_tag, signed_digest,
        };
        let unsigned = |detail: String| OciError::Unsigned {
            reference: pinned.to_string(),
            detail,
        };
        let digest = pinned
            .digest
            .clone()
            .ok_or_else(|| unsigned("no digest to check a signature of".into()))?;
        let scope = format!("repository:{}:pull", pinned.repository);
        let bytes = match self.manifest(pinned, &scope, &signature_tag(&digest)).await {
            Ok(bytes) => bytes,
            Err(OciError::NotFound { .. }) => {
                return Err(unsigned(format!(
                    "no signature ({} is absent)",
                    signature_tag(&digest)
                )));
            }
            Err(e) => return Err(e),
        };
        let manifest: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|e| unsigned(format!("the signature manifest does not parse ({e})")))?;
        let layers = manifest["layers"].as_array().cloned().unwrap_or_default();
        let mut seen = Vec::new();
        for layer in layers.iter().take(16) {
            if layer["mediaType"] != PAYLOAD_MEDIA_TYPE {
                continue;
            }
            let (Some(sig), Some(layer_digest), Some(size)) = (
                layer["annotations"][SIGNATURE_ANNOTATION].as_str(),
                layer["digest"].as_str().and_then(|d| Digest::parse(d).ok()),
                layer["size"].as_u64().filter(|s| *s <= 64 * 1024),
            ) else {
                seen.push("a signature layer without a signature, digest or sane size".to_string());
                continue;
            };
            let text = self
                .download_layer(pinned, &scope, &layer_digest, size)
                .await?;
            if !key.verifies(&text, sig) {
                seen.push("a signature by another key, or of other bytes".to_string());
                continue;
            }
            match signed_digest(&text) {
                Some(d) if d == digest.to_string() => return Ok(()),
                Some(d) => seen.push(format!("a valid signature of another manifest ({d})")),
                None => seen.push("a signed payload that is not a cosign signature".to_string()),
            }
        }
        Err(unsigned(if seen.is_empty() {
            "the signature manifest has no signature layer".to_string()
        } else {
            format!("no signature by the configured key: {}", seen.join("; "))
        }))
    }

    async fn pull_unverified(&self, reference: &Reference) -> Result<Pulled, OciError> {
        if let Some(pin) = &reference.digest
            && let Some((manifest, _)) = self.cache.manifest(pin)?
            && let Ok(layer) = manifest.wasm_layer()
            && let Ok(digest) = Digest::parse(&layer.digest)
            && let Some(path) = self.cache.blob(&digest)?
        {
            return Ok(Pulled {
                reference: reference.clone(),
                path,
                layer: digest,
                size: layer.size,
                from_cache: true,
            });
        }
        let scope = format!("repository:{}:pull", reference.repository);
        let bytes = match self
            .manifest(reference, &scope, &reference.manifest_reference())
            .await
        {
            Ok(bytes) => bytes,
            // A pin the registry does not have: say where the tag points.
            Err(OciError::NotFound { .. })
                if reference.digest.is_some() && reference.tag.is_some() =>
            {
                let tag = reference.tag.clone().unwrap_or_default();
                let current = self.manifest(reference, &scope, &tag).await?;
                return Err(OciError::DigestMismatch {
                    reference: reference.to_string(),
                    what: format!("the registry has no such manifest; tag {tag}"),
                    expected: reference
                        .digest
                        .as_ref()
                        .map(ToString::to_string)
                        .unwrap_or_default(),
                    actual: Digest::of(&current).to_string(),
                });
            }
            Err(e) => return Err(e),
        };
        let digest = Digest::of(&bytes);
        if let Some(pin) = &reference.digest
            && &digest != pin
        {
            return Err(OciError::DigestMismatch {
                reference: reference.to_string(),
                what: "the manifest".to_string(),
                expected: pin.to_string(),
                actual: digest.to_string(),
            });
        }
        let manifest: Manifest = serde_json::from_slice(&bytes).map_err(|e| OciError::NotWasm {
            reference: reference.to_string(),
            detail: format!("its manifest is not an OCI image manifest ({e})"),
        })?;
        let layer = manifest.wasm_layer().map_err(|e| OciError::NotWasm {
            reference: reference.to_string(),
            detail: e.to_string(),
        })?;
        let layer_digest = Digest::parse(&layer.digest).map_err(|_| OciError::NotWasm {
            reference: reference.to_string(),
            detail: format!("its layer's digest {:?} is not sha256", layer.digest),
        })?;
        if layer.size > self.settings.max_layer_bytes {
            return Err(OciError::TooLarge {
                reference: reference.to_string(),
                size: layer.size,
                limit: self.settings.max_layer_bytes,
            });
        }
        let path = match self.cache.blob(&layer_digest)? {
            Some(path) => path,
            None => {
                let wasm = self
                    .download_layer(reference, &scope, &layer_digest, layer.size)
                    .await?;
                self.cache.put_blob(&layer_digest, &wasm)?
            }
        };
        self.cache.put_manifest(&digest, &bytes)?;
        Ok(Pulled {
            reference: reference.pinned(digest),
            path,
            layer: layer_digest,
            size: layer.size,
            from_cache: false,
        })
    }

    /// A manifest's bytes, by tag or digest.
    async fn manifest(
        &self,
        reference: &Reference,
        scope: &str,
        name: &str,
    ) -> Result<Vec<u8>, OciError> {
        let what = if name.starts_with("sha256:") {
            format!("digest {name}")
        } else {
            format!("tag {name}")
        };
        let url = self.url(reference, &format!("manifests/{name}"));
        let response = self
            .send(reference, scope, "the manifest", || {
                Request::builder()
                    .method(Method::GET)
                    .uri(&url)
                    .header(
                        header::ACCEPT,
                        format!(
                            "{MANIFEST_MEDIA_TYPE}, application/vnd.docker.distribution.manifest.v2+json"
                        ),
                    )
                    .body(Full::new(Bytes::new()))
            })
            .await?;
        let response = self.found(reference, response, &what).await?;
        self.read_capped(
            reference,
            response,
            MAX_MANIFEST_BYTES as u64,
            "the manifest",
        )
        .await
    }

    async fn download_layer(
        &self,
        reference: &Reference,
        scope: &str,
        digest: &Digest,
        size: u64,
    ) -> Result<Vec<u8>, OciError> {
        let mut url = self.url(reference, &format!("blobs/{digest}"));
        let mut redirects = 0;
        let response = loop {
            // Registries may redirect blobs to object storage: followed
            // without the registry's credentials.
            let response = if redirects == 0 {
                self.send(reference, scope, "the layer", || empty(Method::GET, &url))
                    .await?
            } else {
                let request = empty(Method::GET, &url)
                    .map_err(|e| self.protocol(reference, e.to_string()))?;
                self.request(reference, "the layer", request).await?
            };
            let redirect = response.status().is_redirection();
            match response.headers().get(header::LOCATION) {
                Some(location) if redirect && redirects < 5 => {
                    url = location
                        .to_str()
                        .map_err(|_| {
                            self.protocol(reference, "a redirect to a non-text location".into())
                        })?
                        .to_string();
                    redirects += 1;
                }
                _ => break response,
            }
        };
        let response = self.found(reference, response, "the layer").await?;
        let wasm = self
            .read_capped(reference, response, size, "the layer")
            .await?;
        let actual = Digest::of(&wasm);
        if &actual != digest {
            return Err(OciError::DigestMismatch {
                reference: reference.to_string(),
                what: "the layer".to_string(),
                expected: digest.to_string(),
                actual: actual.to_string(),
            });
        }
        Ok(wasm)
    }

    async fn upload_blob(
        &self,
        reference: &Reference,
        scope: &str,
        bytes: &[u8],
    ) -> Result<(), OciError> {
        let digest = Digest::of(bytes);
        let head_url = self.url(reference, &format!("blobs/{digest}"));
        let head = self
            .send(reference, scope, "a blob check", || {
                empty(Method::HEAD, &head_url)
            })
            .await?;
        if head.status() == StatusCode::OK {
            return Ok(());
        }
        let start_url = self.url(reference, "blobs/uploads/");
        let started = self
            .send(reference, scope, "a blob upload", || {
                empty(Method::POST, &start_url)
            })
            .await?;
        let started = self
            .expect(reference, started, &[StatusCode::ACCEPTED], "a blob upload")
            .await?;
        let location = started
            .headers()
            .get(header::LOCATION)
            .and_then(|l| l.to_str().ok())
            .ok_or_else(|| self.protocol(reference, "a blob upload without a Location".into()))?;
        let mut put_url = if location.starts_with("http://") || location.starts_with("https://") {
            location.to_string()
        } else {
            format!("{}{location}", self.base(reference))
        };
        put_url.push(if put_url.contains('?') { '&' } else { '?' });
        put_url.push_str(&format!(
            "digest={}",
            digest.to_string().replace(':', "%3A")
        ));
        let body = Bytes::copy_from_slice(bytes);
        let done = self
            .send(reference, scope, "a blob upload", || {
                Request::builder()
                    .method(Method::PUT)
                    .uri(&put_url)
                    .header(header::CONTENT_TYPE, "application/octet-stream")
                    .body(Full::new(body.clone()))
            })
            .await?;
        self.expect(reference, done, &[StatusCode::CREATED], "a blob upload")
            .await?;
        Ok(())
    }

    fn base(&self, reference: &Reference) -> String {
        let scheme = if self
            .settings
            .insecure
            .iter()
            .any(|h| h.eq_ignore_ascii_case(&reference.registry))
        {
            "http"
        } else {
            "https"
        };
        format!("{scheme}://{}", reference.registry)
    }

    fn url(&self, reference: &Reference, path: &str) -> String {
        format!(
            "{}/v2/{}/{path}",
            self.base(reference),
            reference.repository
        )
    }

    fn protocol(&self, reference: &Reference, detail: String) -> OciError {
        OciError::Protocol {
            registry: reference.registry.clone(),
            detail,
        }
    }

    /// One request with its deadline; connection failures named.
    async fn request(
        &self,
        reference: &Reference,
        what: &str,
        request: Request<Full<Bytes>>,
    ) -> Result<Response<Incoming>, OciError> {
        let https = request.uri().scheme_str() == Some("https");
        match tokio::time::timeout(self.settings.timeout, self.http.request(request)).await {
            Err(_) => Err(OciError::Timeout {
                registry: reference.registry.clone(),
                what: what.to_string(),
                seconds: self.settings.timeout.as_secs(),
            }),
            Ok(Err(e)) => {
                let mut detail = e.to_string();
                let mut source = std::error::Error::source(&e);
                while let Some(s) = source {
                    detail = format!("{detail}: {s}");
                    source = s.source();
                }
                let hint = if https {
                    format!(
                        " (over HTTPS; if it serves plain HTTP, allow that with --insecure-registry {0} or [registry] insecure = [\"{0}\"])",
                        reference.registry
                    )
                } else {
                    String::new()
                };
                Err(OciError::Unreachable {
                    registry: reference.registry.clone(),
                    detail,
                    hint,
                })
            }
            Ok(Ok(response)) => Ok(response),
        }
    }

    /// A request with auth: the remembered authorization first; on 401
    /// the registry's challenge answered (Basic, or a Bearer token from
    /// its realm) and the request sent again.
    async fn send(
        &self,
        reference: &Reference,
        scope: &str,
        what: &str,
        make: impl Fn() -> Result<Request<Full<Bytes>>, hyper::http::Error>,
    ) -> Result<Response<Incoming>, OciError> {
        let key = (reference.registry.clone(), scope.to_string());
        // Credentials go only to the registry itself: an upload Location
        // or a redirect to another host gets none (as Docker does).
        let own_host = make()
            .map_err(|e| self.protocol(reference, e.to_string()))?
            .uri()
            .authority()
            .is_some_and(|a| a.as_str().eq_ignore_ascii_case(&reference.registry));
        if !own_host {
            let request = make().map_err(|e| self.protocol(reference, e.to_string()))?;
            let response = self.request(reference, what, request).await?;
            if response.status() == StatusCode::UNAUTHORIZED {
                return Err(self.unauthorized(reference, 401));
            }
            return Ok(response);
        }
        let remembered = self.tokens.lock().ok().and_then(|t| t.get(&key).cloned());
        let build = |auth: Option<&str>| {
            let mut request = make().map_err(|e| self.protocol(reference, e.to_string()))?;
            if let Some(value) = auth {
                let value = header::HeaderValue::from_str(value)
                    .map_err(|_| self.protocol(reference, "an unusable credential".into()))?;
                request.headers_mut().insert(header::AUTHORIZATION, value);
            }
            Ok::<_, OciError>(request)
        };
        let response = self
            .request(reference, what, build(remembered.as_deref())?)
            .await?;
        if response.status() != StatusCode::UNAUTHORIZED {
            return Ok(response);
        }
        let challenge = response
            .headers()
            .get(header::WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let login = self.settings.credentials.login(&reference.registry);
        let authorization = match Challenge::parse(&challenge) {
            Challenge::Bearer { realm, service } => {
                self.token(
                    reference,
                    &realm,
                    service.as_deref(),
                    scope,
                    login.map(|l| l.basic()),
                )
                .await?
            }
            Challenge::Basic => match login {
                Some(login) => login.basic(),
                None => return Err(self.unauthorized(reference, 401)),
            },
        };
        if remembered.as_deref() == Some(authorization.as_str()) {
            return Err(self.unauthorized(reference, 401));
        }
        let response = self
            .request(reference, what, build(Some(&authorization))?)
            .await?;
        match response.status() {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                Err(self.unauthorized(reference, response.status().as_u16()))
            }
            _ => {
                if let Ok(mut tokens) = self.tokens.lock() {
                    tokens.insert(key, authorization);
                }
                Ok(response)
            }
        }
    }

    /// A token from a Bearer challenge's realm.
    async fn token(
        &self,
        reference: &Reference,
        realm: &str,
        service: Option<&str>,
        scope: &str,
        basic: Option<String>,
    ) -> Result<String, OciError> {
        let mut url = format!("{realm}?scope={}", encode(scope));
        if let Some(service) = service {
            url.push_str(&format!("&service={}", encode(service)));
        }
        let mut request = Request::builder().method(Method::GET).uri(&url);
        if let Some(basic) = &basic {
            request = request.header(header::AUTHORIZATION, basic);
        }
        let request = request
            .body(Full::new(Bytes::new()))
            .map_err(|e| self.protocol(reference, format!("token realm {realm:?}: {e}")))?;
        let response = self.request(reference, "a token", request).await?;
        match response.status() {
            StatusCode::OK => {}
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                return Err(self.unauthorized(reference, response.status().as_u16()));
            }
            status => {
                let body = self.error_body(response).await;
                return Err(OciError::Status {
                    registry: reference.registry.clone(),
                    status: status.as_u16(),
                    what: format!("a token request to {realm}"),
                    body,
                });
            }
        }
        let bytes = self
            .read_capped(reference, response, MAX_MANIFEST_BYTES as u64, "a token")
            .await?;
        let value: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| {
            self.protocol(reference, format!("a token answer that is not JSON ({e})"))
        })?;
        value
            .get("token")
            .or_else(|| value.get("access_token"))
            .and_then(|t| t.as_str())
            .map(|t| format!("Bearer {t}"))
            .ok_or_else(|| self.protocol(reference, "a token answer without a token".into()))
    }

    fn unauthorized(&self, reference: &Reference, status: u16) -> OciError {
        OciError::Unauthorized {
            registry: reference.registry.clone(),
            repository: reference.repository.clone(),
            status,
            advice: self.settings.credentials.advice(&reference.registry),
        }
    }

    /// 404 becomes [`OciError::NotFound`]; other failures their status.
    async fn found(
        &self,
        reference: &Reference,
        response: Response<Incoming>,
        what: &str,
    ) -> Result<Response<Incoming>, OciError> {
        if response.status() == StatusCode::NOT_FOUND {
            let body = self.error_body(response).await;
            let code = serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["errors"][0]["code"].as_str().map(str::to_string))
                .unwrap_or_else(|| "404".to_string());
            return Err(OciError::NotFound {
                reference: reference.to_string(),
                what: what.to_string(),
                detail: code,
            });
        }
        self.expect(reference, response, &[StatusCode::OK], what)
            .await
    }

    async fn expect(
        &self,
        reference: &Reference,
        response: Response<Incoming>,
        ok: &[StatusCode],
        what: &str,
    ) -> Result<Response<Incoming>, OciError> {
        let status = response.status();
        if ok.contains(&status) {
            return Ok(response);
        }
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Err(self.unauthorized(reference, status.as_u16()));
        }
        let body = self.error_body(response).await;
        Err(OciError::Status {
            registry: reference.registry.clone(),
            status: status.as_u16(),
            what: what.to_string(),
            body,
        })
    }

    async fn error_body(&self, response: Response<Incoming>) -> String {
        let mut body = response.into_body();
        let mut out = Vec::new();
        let read = async {
            while let Some(Ok(frame)) = body.frame().await {
                if let Ok(data) = frame.into_data() {
                    out.extend_from_slice(&data);
                    if out.len() > MAX_ERROR_BYTES {
                        break;
                    }
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(5), read).await;
        out.truncate(MAX_ERROR_BYTES);
        String::from_utf8_lossy(&out).trim().to_string()
    }

    /// The body, refused once it passes `limit` bytes (a registry that
    /// sends more than the manifest declared stops there).
    async fn read_capped(
        &self,
        reference: &Reference,
        response: Response<Incoming>,
        limit: u64,
        what: &str,
    ) -> Result<Vec<u8>, OciError> {
        let mut body = response.into_body();
        let mut out = Vec::new();
        let read = async {
            while let Some(frame) = body.frame().await {
                let frame =
                    frame.map_err(|e| self.protocol(reference, format!("reading {what}: {e}")))?;
                if let Ok(data) = frame.into_data() {
                    if (out.len() + data.len()) as u64 > limit {
                        return Err(self.protocol(
                            reference,
                            format!("{what} is larger than the {limit} bytes declared; refused"),
                        ));
                    }
                    out.extend_from_slice(&data);
                }
            }
            Ok(())
        };
        match tokio::time::timeout(self.settings.timeout, read).await {
            Ok(result) => result.map(|()| out),
            Err(_) => Err(OciError::Timeout {
                registry: reference.registry.clone(),
                what: what.to_string(),
                seconds: self.settings.timeout.as_secs(),
            }),
        }
    }
}

/// A request without a body.
fn empty(method: Method, uri: &str) -> Result<Request<Full<Bytes>>, hyper::http::Error> {
    Request::builder()
        .method(method)
        .uri(uri)
        .body(Full::new(Bytes::new()))
}

/// A `WWW-Authenticate` challenge.
#[derive(Debug, PartialEq, Eq)]
enum Challenge {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
    },
}

impl Challenge {
    fn parse(text: &str) -> Self {
        let Some(params) = text
            .strip_prefix("Bearer ")
            .or_else(|| text.strip_prefix("bearer "))
        else {
            return Self::Basic;
        };
        let mut realm = None;
        let mut service = None;
        for part in split_params(params) {
            if let Some((key, value)) = part.split_once('=') {
                let value = value.trim().trim_matches('"').to_string();
                match key.trim() {
                    "realm" => realm = Some(value),
                    "service" => service = Some(value),
                    _ => {}
                }
            }
        }
        match realm {
            Some(realm) => Self::Bearer { realm, service },
            None => Self::Basic,
        }
    }
}

/// Splits `a="x,y",b="z"` at commas outside quotes.
fn split_params(text: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut start, mut quoted) = (0, false);
    for (i, c) in text.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
}

/// Percent-encodes a query value.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges() {
        assert_eq!(Challenge::parse("Basic realm=\"test\""), Challenge::Basic);
        assert_eq!(
            Challenge::parse(
                "Bearer realm=\"https://auth.example/token\",service=\"reg\",scope=\"repository:a/b:pull,push\""
            ),
            Challenge::Bearer {
                realm: "https://auth.example/token".into(),
                service: Some("reg".into())
            }
        );
        assert_eq!(
            encode("repository:a/b:pull,push"),
            "repository%3Aa%2Fb%3Apull%2Cpush"
        );
    }
}
