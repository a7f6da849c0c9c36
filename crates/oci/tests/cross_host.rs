//! Credentials never leave the registry's host: a blob upload whose
//! `Location` names another host is sent there without the registry's
//! login (Docker does the same), and so is a pull redirected elsewhere.
//! Against two loopback servers: the registry (Basic login required) and
//! "storage" on another address, each recording what it was sent.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use orchestrator_oci::artifact::ComponentInfo;
use orchestrator_oci::{Credentials, Reference, Registry, RegistrySettings};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

/// Requests seen: (request line, Authorization header).
type Seen = Arc<Mutex<Vec<(String, String)>>>;

const LOGIN: &str = "Basic dXNlcjpwYXNz"; // user:pass

/// A minimal HTTP/1.1 server: `answer(request line, auth)` gives status,
/// extra headers and body.
fn server(
    bind: &str,
    answer: impl Fn(&str, &str) -> (&'static str, String) + Send + 'static,
) -> (String, Seen) {
    let listener = TcpListener::bind(bind).unwrap();
    let host = listener.local_addr().unwrap().to_string();
    let seen: Seen = Arc::default();
    let log = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            let mut auth = String::new();
            let mut length = 0usize;
            loop {
                let mut header = String::new();
                reader.read_line(&mut header).unwrap();
                if header.trim().is_empty() {
                    break;
                }
                let lower = header.to_ascii_lowercase();
                if let Some(v) = lower.strip_prefix("authorization: ") {
                    auth = header[header.len() - v.len()..].trim().to_string();
                }
                if let Some(v) = lower.strip_prefix("content-length: ") {
                    length = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; length];
            reader.read_exact(&mut body).unwrap();
            let line = line.trim().to_string();
            log.lock().unwrap().push((line.clone(), auth.clone()));
            let (status, extra) = answer(&line, &auth);
            let head = format!(
                "HTTP/1.1 {status}\r\n{extra}Content-Length: 0\r\nConnection: close\r\n\r\n"
            );
            let _ = stream.write_all(head.as_bytes());
        }
    });
    (host, seen)
}

#[tokio::test]
async fn an_upload_location_on_another_host_gets_no_credentials() {
    // "Storage" on another loopback address: takes any PUT.
    let (storage, stored) = server("127.0.0.3:0", |_, _| ("201 Created", String::new()));
    let storage_url = format!("http://{storage}/upload/abc");
    let (registry_host, registry_seen) = server("127.0.0.1:0", move |line, auth| {
        if auth != LOGIN {
            return (
                "401 Unauthorized",
                "WWW-Authenticate: Basic realm=\"r\"\r\n".to_string(),
            );
        }
        if line.starts_with("HEAD ") {
            ("404 Not Found", String::new())
        } else if line.starts_with("POST ") {
            ("202 Accepted", format!("Location: {storage_url}\r\n"))
        } else {
            ("201 Created", String::new())
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.json");
    std::fs::write(
        &file,
        format!(r#"{{"auths":{{"{registry_host}":{{"auth":"dXNlcjpwYXNz"}}}}}}"#),
    )
    .unwrap();
    let mut settings = RegistrySettings::new(dir.path().to_path_buf());
    settings.insecure = vec![registry_host.clone(), storage.clone()];
    settings.credentials = Credentials::load(&file).unwrap();
    let registry = Registry::new(settings).unwrap();
    let reference = Reference::parse(&format!("oci://{registry_host}/team/policy:v1")).unwrap();
    let wasm = b"\0asm\x0d\0\x01\0".to_vec();
    registry
        .push(&wasm, ComponentInfo::default(), &reference)
        .await
        .unwrap();
    let stored = stored.lock().unwrap().clone();
    assert_eq!(stored.len(), 2, "both blobs went to storage: {stored:#?}");
    for (line, auth) in &stored {
        assert!(line.starts_with("PUT /upload/abc?"), "{line}");
        assert_eq!(auth, "", "the registry's login went to another host");
    }
    // The registry itself did get the login (so the test could fail).
    let seen = registry_seen.lock().unwrap().clone();
    assert!(seen.iter().any(|(_, a)| a == LOGIN), "{seen:#?}");
}
