//! The Bearer-token flow of registries such as ghcr.io and Docker Hub
//! (which the CNCF registry in `tests/oci_registry.rs`, with htpasswd,
//! does not use): a 401 with `WWW-Authenticate: Bearer realm=...`, a token
//! from the realm (with the Basic login when there is one), the request
//! again with the token. Against a loopback server in that exact shape.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use orchestrator_oci::artifact::{ComponentInfo, Manifest};
use orchestrator_oci::{Credentials, Digest, OciError, Reference, Registry, RegistrySettings};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

/// Requests seen: (request line, Authorization header).
type Seen = Arc<Mutex<Vec<(String, String)>>>;

/// Serves one manifest and one layer behind Bearer tokens; `login` is
/// the Basic value the token endpoint demands, if any.
fn serve(manifest: Vec<u8>, layer: Vec<u8>, login: Option<String>) -> (String, Seen) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let host = listener.local_addr().unwrap().to_string();
    let seen: Seen = Arc::default();
    let realm = format!("http://{host}/token");
    let log = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            let mut auth = String::new();
            loop {
                let mut header = String::new();
                reader.read_line(&mut header).unwrap();
                if header.trim().is_empty() {
                    break;
                }
                if let Some(v) = header.strip_prefix("authorization: ") {
                    auth = v.trim().to_string();
                }
            }
            log.lock()
                .unwrap()
                .push((line.trim().to_string(), auth.clone()));
            let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
            let (status, extra, body): (&str, String, Vec<u8>) = if path.starts_with("/token") {
                if login.as_ref().is_some_and(|l| *l != auth) {
                    ("401 Unauthorized", String::new(), b"{}".to_vec())
                } else {
                    assert!(
                        path.contains("scope=repository%3Ateam%2Fpolicy%3Apull"),
                        "{path}"
                    );
                    ("200 OK", String::new(), br#"{"token":"t0k3n"}"#.to_vec())
                }
            } else if auth != "Bearer t0k3n" {
                (
                    "401 Unauthorized",
                    format!(
                        "WWW-Authenticate: Bearer realm=\"{realm}\",service=\"fake\",scope=\"repository:team/policy:pull\"\r\n"
                    ),
                    br#"{"errors":[{"code":"UNAUTHORIZED"}]}"#.to_vec(),
                )
            } else if path.contains("/manifests/") {
                ("200 OK", String::new(), manifest.clone())
            } else if path.contains("/blobs/") {
                ("200 OK", String::new(), layer.clone())
            } else {
                ("404 Not Found", String::new(), b"{}".to_vec())
            };
            let head = format!(
                "HTTP/1.1 {status}\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(&body);
        }
    });
    (host, seen)
}

fn artifact() -> (Vec<u8>, Vec<u8>) {
    let wasm = b"\0asm\x0d\0\x01\0 a component's bytes".to_vec();
    let (manifest, _) = Manifest::for_component(&wasm, ComponentInfo::default());
    (serde_json::to_vec(&manifest).unwrap(), wasm)
}

fn settings(host: &str, dir: &std::path::Path, credentials: Credentials) -> RegistrySettings {
    let mut settings = RegistrySettings::new(dir.to_path_buf());
    settings.insecure = vec![host.to_string()];
    settings.credentials = credentials;
    settings
}

#[tokio::test]
async fn an_anonymous_token_is_fetched_and_used() {
    let (manifest, wasm) = artifact();
    let (host, seen) = serve(manifest.clone(), wasm.clone(), None);
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::new(settings(&host, dir.path(), Credentials::none())).unwrap();
    let pin = Digest::of(&manifest);
    let reference = Reference::parse(&format!("oci://{host}/team/policy:v1@{pin}")).unwrap();
    let pulled = registry.pull(&reference).await.unwrap();
    assert_eq!(std::fs::read(&pulled.path).unwrap(), wasm);
    assert_eq!(pulled.layer, Digest::of(&wasm));
    let seen = seen.lock().unwrap().clone();
    // manifest (401), token, manifest, layer: the token is reused.
    assert_eq!(seen.len(), 4, "{seen:#?}");
    assert!(seen[1].0.starts_with("GET /token?scope="), "{seen:#?}");
    assert_eq!(seen[1].1, "", "no login was sent");
    assert_eq!(seen[3].1, "Bearer t0k3n");
}

#[tokio::test]
async fn the_token_endpoint_gets_the_login_and_a_refusal_names_the_fix() {
    let (manifest, wasm) = artifact();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.json");
    let (host, _) = serve(
        manifest.clone(),
        wasm,
        Some("Basic dXNlcjpwYXNz".to_string()), // user:pass
    );
    let write = |auth: &str| {
        std::fs::write(
            &file,
            format!(r#"{{"auths":{{"{host}":{{"auth":"{auth}"}}}}}}"#),
        )
        .unwrap();
        Credentials::load(&file).unwrap()
    };
    let reference = Reference::parse(&format!("oci://{host}/team/policy:v1")).unwrap();

    let good = Registry::new(settings(&host, dir.path(), write("dXNlcjpwYXNz"))).unwrap();
    let pulled = good.pull(&reference).await.unwrap();
    assert_eq!(pulled.reference.digest, Some(Digest::of(&manifest)));

    // user:wrong
    let bad = Registry::new(settings(&host, dir.path(), write("dXNlcjp3cm9uZw=="))).unwrap();
    match bad.pull(&reference).await {
        Err(e @ OciError::Unauthorized { .. }) => {
            assert!(
                e.to_string().contains("check the user name and password"),
                "{e}"
            );
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}
