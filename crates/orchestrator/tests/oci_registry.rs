//! Policies through a real OCI registry: Debian's `docker-registry` (the
//! CNCF distribution registry) started on loopback with htpasswd auth.
//! `orchestrator plugin push`, pinned pulls at start (`plan` loads the
//! head's policies as `run` does), the cache that makes a second start
//! independent of the registry, and every bad case with one clear line.
//! Needs `ORCHESTRATOR_REGISTRY_BIN` (`cargo xtask test` installs the
//! package and sets it).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use orchestrator_test_support::{TestNode, free_port};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const USER: &str = "policy-author";
const PASSWORD: &str = "policy-pass";
/// bcrypt of PASSWORD (cost 5), as `htpasswd -B` writes it.
const HTPASSWD: &str =
    "policy-author:$2b$05$8VFya5jyrShdZR9v.2nHbORLLD403BUoKYHjD1wTrWyiypuFIPFRy\n";

/// A registry on 127.0.0.1, killed (by the kill system call) on drop.
struct Registry {
    child: Child,
    host: String,
    _dir: tempfile::TempDir,
}

impl Registry {
    fn start() -> Self {
        let bin = std::env::var("ORCHESTRATOR_REGISTRY_BIN")
            .expect("ORCHESTRATOR_REGISTRY_BIN: run through `cargo xtask test`");
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let host = format!("127.0.0.1:{port}");
        std::fs::write(dir.path().join("htpasswd"), HTPASSWD).unwrap();
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {root}\nhttp:\n  addr: {host}\n  secret: test-secret\nauth:\n  htpasswd:\n    realm: policies\n    path: {htpasswd}\n",
                root = dir.path().join("data").display(),
                htpasswd = dir.path().join("htpasswd").display(),
            ),
        )
        .unwrap();
        let child = Command::new(bin)
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start docker-registry");
        let registry = Self {
            child,
            host,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        // With the test's login, /v2/ answers 200 once it serves.
        while registry.request("GET", "/v2/", &[], None).0 != 200 {
            assert!(Instant::now() < deadline, "the registry did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        registry
    }

    /// One HTTP/1.1 request with the test login; (status, headers, body).
    fn request(
        &self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: Option<(&mut dyn Read, u64)>,
    ) -> (u16, String, Vec<u8>) {
        let Ok(mut stream) = TcpStream::connect(&self.host) else {
            return (0, String::new(), vec![]);
        };
        let auth = base64_encode(format!("{USER}:{PASSWORD}").as_bytes());
        let mut head = format!(
            "{method} {target} HTTP/1.1\r\nHost: {}\r\nAuthorization: Basic {auth}\r\nConnection: close\r\n",
            self.host
        );
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        let length = body.as_ref().map_or(0, |(_, n)| *n);
        head.push_str(&format!("Content-Length: {length}\r\n\r\n"));
        stream.write_all(head.as_bytes()).unwrap();
        if let Some((reader, _)) = body {
            std::io::copy(reader, &mut stream).unwrap();
        }
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).unwrap();
        let split = answer
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap_or(answer.len());
        let headers = String::from_utf8_lossy(&answer[..split]).into_owned();
        let status = headers
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        (
            status,
            headers,
            answer[(split + 4).min(answer.len())..].to_vec(),
        )
    }

    /// Uploads a blob (monolithic) from `reader`; returns its digest.
    fn blob(&self, repo: &str, reader: &mut dyn Read, size: u64, digest: &str) {
        let (status, headers, _) =
            self.request("POST", &format!("/v2/{repo}/blobs/uploads/"), &[], None);
        assert_eq!(status, 202, "{headers}");
        let location = headers
            .lines()
            .find_map(|l| l.strip_prefix("Location: "))
            .unwrap()
            .trim()
            .to_string();
        let path = location
            .strip_prefix(&format!("http://{}", self.host))
            .unwrap_or(&location)
            .to_string();
        let sep = if path.contains('?') { '&' } else { '?' };
        let (status, headers, _) = self.request(
            "PUT",
            &format!("{path}{sep}digest={digest}"),
            &[("Content-Type", "application/octet-stream")],
            Some((reader, size)),
        );
        assert_eq!(status, 201, "{headers}");
    }

    /// Pushes an artifact by hand: a config of `config_type` and one layer.
    fn artifact(&self, repo: &str, tag: &str, config_type: &str, layer: (&str, &str, u64)) {
        let config = b"{}";
        let config_digest = sha256_of(config);
        self.blob(repo, &mut &config[..], 2, &config_digest);
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"{config_type}","digest":"{config_digest}","size":2}},"layers":[{{"mediaType":"{}","digest":"{}","size":{}}}]}}"#,
            layer.0, layer.1, layer.2
        );
        let (status, headers, body) = self.request(
            "PUT",
            &format!("/v2/{repo}/manifests/{tag}"),
            &[("Content-Type", "application/vnd.oci.image.manifest.v1+json")],
            Some((&mut manifest.as_bytes(), manifest.len() as u64)),
        );
        assert_eq!(status, 201, "{headers}{}", String::from_utf8_lossy(&body));
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn sha256_of(bytes: &[u8]) -> String {
    use sha2::Digest;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A user's files: credentials in the pull-secret format, an OCI cache.
struct User {
    dir: tempfile::TempDir,
}

impl User {
    fn new(registry: &Registry, password: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let auth = base64_encode(format!("{USER}:{password}").as_bytes());
        std::fs::write(
            dir.path().join(".dockerconfigjson"),
            format!(r#"{{"auths":{{"{}":{{"auth":"{auth}"}}}}}}"#, registry.host),
        )
        .unwrap();
        Self { dir }
    }

    fn credentials(&self) -> PathBuf {
        self.dir.path().join(".dockerconfigjson")
    }

    fn cache(&self) -> PathBuf {
        self.dir.path().join("oci-cache")
    }

    /// `orchestrator ARGS` with this user's credentials and cache;
    /// `insecure`: the registry is allowed over plain HTTP.
    fn run(&self, args: &[&str], insecure: Option<&str>) -> Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_orchestrator"));
        cmd.args(args)
            .env("ORCHESTRATOR_PLUGIN_NO_CACHE", "true")
            .env("ORCHESTRATOR_REGISTRY_CONFIG", self.credentials())
            .env("ORCHESTRATOR_OCI_CACHE_DIR", self.cache())
            .env_remove("ORCHESTRATOR_INSECURE_REGISTRIES")
            .env_remove("DOCKER_CONFIG");
        if let Some(host) = insecure {
            cmd.env("ORCHESTRATOR_INSECURE_REGISTRIES", host);
        }
        orchestrator_test_support::output_within(&mut cmd, Duration::from_secs(120))
    }
}

fn out(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The one `error:` line of a failed command.
fn one_error_line(o: &Output) -> String {
    let text = err(o);
    let errors: Vec<&str> = text.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "one error line expected:\n{text}");
    errors[0].to_string()
}

/// The built-in health policy as a file, to push.
fn policy_file(dir: &Path) -> PathBuf {
    let builtin = orchestrator_builtin_plugins::find("health", "default").unwrap();
    let path = dir.join("health.wasm");
    std::fs::write(&path, builtin.wasm).unwrap();
    path
}

fn snapshot(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/snapshots")
        .join(name)
        .display()
        .to_string()
}

/// Pushes the health policy to `repo:tag`; returns the pinned reference.
fn push(user: &User, registry: &Registry, repo: &str, tag: &str) -> String {
    let file = policy_file(user.dir.path());
    let o = user.run(
        &[
            "plugin",
            "push",
            file.to_str().unwrap(),
            &format!("oci://{}/{repo}:{tag}", registry.host),
        ],
        Some(&registry.host),
    );
    assert!(o.status.success(), "{}", err(&o));
    let stdout = out(&o);
    let digest = stdout
        .lines()
        .find_map(|l| l.strip_prefix("digest: "))
        .unwrap_or_else(|| panic!("no digest printed: {stdout}"));
    assert!(
        digest.starts_with("sha256:") && digest.len() == 71,
        "{stdout}"
    );
    let pinned = stdout
        .lines()
        .find_map(|l| l.strip_prefix("pinned: "))
        .unwrap()
        .to_string();
    assert_eq!(
        pinned,
        format!("oci://{}/{repo}:{tag}@{digest}", registry.host)
    );
    pinned
}

/// A head whose health policy is `oci`, pulled with `user`'s credentials
/// from `registry` (`plan` loads it; Ray is never started).
fn head_config(dir: &Path, registry: &Registry, user: &User, oci: &str) -> PathBuf {
    TestNode::head_using("127.0.0.1", "ray")
        .with(|c| {
            c.policies.health.oci = Some(oci.into());
            c.registry.credentials = Some(user.credentials());
            c.registry.insecure = vec![registry.host.clone()];
            c.registry.cache_dir = Some(user.cache());
        })
        .write(dir, "head.toml")
}

#[test]
#[ignore = "needs docker-registry: run by `cargo xtask test`"]
fn a_pushed_policy_is_pulled_pinned_at_start_and_then_needs_no_registry() {
    let registry = Registry::start();
    let user = User::new(&registry, PASSWORD);
    let pinned = push(&user, &registry, "team/health", "v1");

    // The artifact has the CNCF WebAssembly layout.
    let digest = pinned.rsplit_once('@').unwrap().1;
    let (status, _, manifest) = registry.request(
        "GET",
        &format!("/v2/team/health/manifests/{digest}"),
        &[("Accept", "application/vnd.oci.image.manifest.v1+json")],
        None,
    );
    assert_eq!(status, 200);
    assert_eq!(sha256_of(&manifest), digest);
    let manifest: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
    assert_eq!(
        manifest["config"]["mediaType"],
        "application/vnd.wasm.config.v0+json"
    );
    assert_eq!(manifest["layers"].as_array().unwrap().len(), 1);
    assert_eq!(manifest["layers"][0]["mediaType"], "application/wasm");
    let builtin = orchestrator_builtin_plugins::find("health", "default").unwrap();
    assert_eq!(
        manifest["layers"][0]["digest"],
        sha256_of(builtin.wasm).as_str()
    );

    // plugin check and plugin run take the reference.
    let o = user.run(&["plugin", "check", &pinned], Some(&registry.host));
    assert!(o.status.success(), "{}", err(&o));
    assert!(
        out(&o).contains(&format!("plugin:  {pinned}")) && out(&o).contains("world:   health"),
        "{}",
        out(&o)
    );
    let o = user.run(
        &[
            "plugin",
            "run",
            &pinned,
            "--input",
            &snapshot("health-server-exited.json"),
        ],
        Some(&registry.host),
    );
    assert!(o.status.success(), "{}", err(&o));
    assert!(out(&o).contains("restart"), "{}", out(&o));

    // At start (plan loads the head's policies as run does) from the
    // configuration's [registry] alone.
    let dir = tempfile::tempdir().unwrap();
    let config = head_config(dir.path(), &registry, &user, &pinned);
    let o = user.run(&["plan", "--config", config.to_str().unwrap()], None);
    assert!(o.status.success(), "{}", err(&o));
    let plan: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        plan["policies"]["health"]["plugin"],
        pinned.as_str(),
        "{plan:#}"
    );
    assert_eq!(
        plan["policies"]["health"]["sha256"],
        sha256_of(builtin.wasm).trim_start_matches("sha256:")
    );
    // A tag alone works and says to pin it.
    let by_tag = format!("oci://{}/team/health:v1", registry.host);
    let o = user.run(&["plugin", "check", &by_tag], Some(&registry.host));
    assert!(o.status.success(), "{}", err(&o));
    assert!(
        err(&o).contains(&format!("pin it as {pinned}")),
        "{}",
        err(&o)
    );

    // The registry goes away: the pinned policy starts from the cache.
    drop(registry);
    let o = user.run(&["plan", "--config", config.to_str().unwrap()], None);
    assert!(o.status.success(), "{}", err(&o));
    assert!(err(&o).contains("cached=true"), "{}", err(&o));
    let o = user.run(&["plugin", "check", &pinned], None);
    assert!(o.status.success(), "{}", err(&o));
    // A tag must be asked for: it can move.
    let o = user.run(&["plugin", "check", &by_tag], None);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        one_error_line(&o).contains("cannot reach registry"),
        "{}",
        err(&o)
    );

    // A damaged cache entry is not trusted: without the registry the
    // start fails instead of loading other bytes.
    let blob = user
        .cache()
        .join("blobs/sha256")
        .join(sha256_of(builtin.wasm).trim_start_matches("sha256:"));
    std::fs::write(&blob, b"tampered").unwrap();
    let o = user.run(&["plugin", "check", &pinned], None);
    assert_eq!(o.status.code(), Some(2), "{}", err(&o));
    assert!(one_error_line(&o).contains("cannot reach registry"));
}

#[test]
#[ignore = "needs docker-registry: run by `cargo xtask test`"]
fn bad_references_fail_with_one_clear_line_each() {
    let registry = Registry::start();
    let user = User::new(&registry, PASSWORD);
    let pinned = push(&user, &registry, "team/health", "v1");
    let host = registry.host.clone();
    let insecure = Some(host.as_str());
    let check = |user: &User, reference: &str, insecure: Option<&str>| {
        let o = user.run(&["plugin", "check", reference], insecure);
        assert_eq!(o.status.code(), Some(2), "{reference}: {}", err(&o));
        one_error_line(&o)
    };

    // Unreachable: nothing listens there.
    let closed = format!("127.0.0.1:{}", free_port());
    let line = check(
        &user,
        &format!("oci://{closed}/team/health:v1"),
        Some(&closed),
    );
    assert!(
        line.contains(&format!("cannot reach registry {closed}"))
            && line.contains("Connection refused"),
        "{line}"
    );
    // Plain HTTP not allowed: HTTPS to an HTTP registry, with the fix.
    let line = check(&user, &pinned, None);
    assert!(
        line.contains("over HTTPS") && line.contains(&format!("--insecure-registry {host}")),
        "{line}"
    );
    // 401: no login, and a wrong one.
    let anonymous = User::new(&registry, PASSWORD);
    std::fs::write(anonymous.credentials(), "{\"auths\": {}}").unwrap();
    let line = check(&anonymous, &pinned, insecure);
    assert!(
        line.contains("refused access to team/health (401)")
            && line.contains(&format!("has no login for {host}")),
        "{line}"
    );
    let wrong = User::new(&registry, "not-the-password");
    let line = check(&wrong, &pinned, insecure);
    assert!(
        line.contains("(401)") && line.contains("check the user name and password"),
        "{line}"
    );
    // A tag that is not there.
    let line = check(&user, &format!("oci://{host}/team/health:v9"), insecure);
    assert!(
        line.contains("tag v9 not found") && line.contains("MANIFEST_UNKNOWN"),
        "{line}"
    );
    // A pin the tag does not have.
    let other = format!("sha256:{}", "1".repeat(64));
    let line = check(
        &user,
        &format!("oci://{host}/team/health:v1@{other}"),
        insecure,
    );
    let current = pinned.rsplit_once('@').unwrap().1;
    assert!(
        line.contains(&format!("has digest {current}, not the pinned {other}")),
        "{line}"
    );
    // Not a WebAssembly policy: a container image's config.
    let data = b"not a component";
    let data_digest = sha256_of(data);
    registry.blob(
        "team/image",
        &mut &data[..],
        data.len() as u64,
        &data_digest,
    );
    registry.artifact(
        "team/image",
        "v1",
        "application/vnd.oci.image.config.v1+json",
        (
            "application/vnd.oci.image.layer.v1.tar",
            &data_digest,
            data.len() as u64,
        ),
    );
    let line = check(&user, &format!("oci://{host}/team/image:v1"), insecure);
    assert!(
        line.contains("is not a WebAssembly policy")
            && line.contains("application/vnd.oci.image.config.v1+json"),
        "{line}"
    );
    // The wasm layout around bytes that are not a component.
    registry.blob("team/fake", &mut &data[..], data.len() as u64, &data_digest);
    registry.artifact(
        "team/fake",
        "v1",
        "application/vnd.wasm.config.v0+json",
        ("application/wasm", &data_digest, data.len() as u64),
    );
    let line = check(&user, &format!("oci://{host}/team/fake:v1"), insecure);
    assert!(line.contains("is not a WebAssembly file"), "{line}");

    // A 500 MB layer: refused by its size, before any download.
    let size: u64 = 500 * 1000 * 1000;
    let big = {
        // Hash 500 MB of zeros once, then stream them to the registry.
        use sha2::Digest;
        let mut hasher = sha2::Sha256::new();
        let chunk = vec![0u8; 1 << 20];
        let mut left = size;
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            hasher.update(&chunk[..n]);
            left -= n as u64;
        }
        format!("sha256:{}", hex::encode(hasher.finalize()))
    };
    registry.blob("team/big", &mut std::io::repeat(0).take(size), size, &big);
    registry.artifact(
        "team/big",
        "v1",
        "application/vnd.wasm.config.v0+json",
        ("application/wasm", &big, size),
    );
    let started = Instant::now();
    let line = check(&user, &format!("oci://{host}/team/big:v1"), insecure);
    let took = started.elapsed();
    assert!(
        line.contains("the layer is 500000000 bytes, over the limit of 67108864 bytes")
            && line.contains("refused before downloading it"),
        "{line}"
    );
    assert!(
        took < Duration::from_secs(10),
        "refused in {took:?}: it was not downloaded"
    );
    // The same blob behind a manifest that says 1000 bytes: the download
    // stops there.
    registry.artifact(
        "team/big",
        "liar",
        "application/vnd.wasm.config.v0+json",
        ("application/wasm", &big, 1000),
    );
    let line = check(&user, &format!("oci://{host}/team/big:liar"), insecure);
    assert!(
        line.contains("the layer is larger than the 1000 bytes declared"),
        "{line}"
    );
    let cached: Vec<_> = std::fs::read_dir(user.cache().join("blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .collect();
    assert!(
        cached.iter().all(|len| *len < 1 << 20),
        "nothing large was cached: {cached:?}"
    );

    // A configuration with a reference that does not parse.
    let dir = tempfile::tempdir().unwrap();
    let config = head_config(dir.path(), &registry, &user, "oci://bad/REPO:v1");
    let o = user.run(&["plan", "--config", config.to_str().unwrap()], None);
    assert_eq!(o.status.code(), Some(2));
    let line = one_error_line(&o);
    assert!(
        line.contains("policies.health.oci") && line.contains("\"REPO\" is not valid"),
        "{line}"
    );
    // A push of something that is not a policy sends nothing.
    let o = user.run(
        &[
            "plugin",
            "push",
            config.to_str().unwrap(),
            &format!("oci://{host}/team/notes:v1"),
        ],
        insecure,
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(one_error_line(&o).contains("is not a WebAssembly file"));
    let (status, _, _) = registry.request("GET", "/v2/team/notes/tags/list", &[], None);
    assert_eq!(status, 404, "nothing was pushed");
}

/// Pushes `file` to `repo:tag` (signed with `sign` when given); returns
/// the pinned reference and the command's stdout.
fn push_file(
    user: &User,
    registry: &Registry,
    file: &Path,
    repo: &str,
    tag: &str,
    sign: Option<&Path>,
) -> (String, String) {
    let reference = format!("oci://{}/{repo}:{tag}", registry.host);
    let mut args = vec!["plugin", "push", file.to_str().unwrap(), &reference];
    if let Some(key) = sign {
        args.extend(["--sign", key.to_str().unwrap()]);
    }
    let o = user.run(&args, Some(&registry.host));
    assert!(o.status.success(), "{}", err(&o));
    let stdout = out(&o);
    let pinned = stdout
        .lines()
        .find_map(|l| l.strip_prefix("pinned: "))
        .unwrap_or_else(|| panic!("{stdout}"))
        .to_string();
    (pinned, stdout)
}

#[test]
#[ignore = "needs docker-registry: run by `cargo xtask test`"]
fn signed_policies_verify_and_unsigned_tampered_or_wrong_key_ones_fail_closed() {
    let registry = Registry::start();
    let user = User::new(&registry, PASSWORD);
    let dir = user.dir.path();
    let (key, private_pem) = orchestrator_oci::SigningKey::generate().unwrap();
    let (other, _) = orchestrator_oci::SigningKey::generate().unwrap();
    let (key_file, public, other_public) = (
        dir.join("key.pem"),
        dir.join("key.pub"),
        dir.join("other.pub"),
    );
    std::fs::write(&key_file, private_pem).unwrap();
    std::fs::write(&public, key.public_pem()).unwrap();
    std::fs::write(&other_public, other.public_pem()).unwrap();
    let check = |reference: &str, key: &Path| {
        user.run(
            &[
                "plugin",
                "check",
                reference,
                "--require-signature",
                key.to_str().unwrap(),
            ],
            Some(&registry.host),
        )
    };

    // Signed: in cosign's layout, and verified with the key.
    let (signed, stdout) = push_file(
        &user,
        &registry,
        &policy_file(dir),
        "team/policies",
        "signed",
        Some(&key_file),
    );
    let digest = signed.rsplit_once('@').unwrap().1.to_string();
    let tag = format!("{}.sig", digest.replace(':', "-"));
    assert!(stdout.contains(&format!("signed: {tag}")), "{stdout}");
    let (status, _, sig_manifest) = registry.request(
        "GET",
        &format!("/v2/team/policies/manifests/{tag}"),
        &[("Accept", "application/vnd.oci.image.manifest.v1+json")],
        None,
    );
    assert_eq!(status, 200);
    let parsed: serde_json::Value = serde_json::from_slice(&sig_manifest).unwrap();
    assert_eq!(
        parsed["layers"][0]["mediaType"],
        "application/vnd.dev.cosign.simplesigning.v1+json"
    );
    assert!(parsed["layers"][0]["annotations"]["dev.cosignproject.cosign/signature"].is_string());
    let ok = check(&signed, &public);
    assert!(ok.status.success(), "{}", err(&ok));

    // Another key: refused.
    let wrong = check(&signed, &other_public);
    assert!(!wrong.status.success());
    assert!(
        one_error_line(&wrong).contains("no signature by the configured key"),
        "{}",
        err(&wrong)
    );

    // Unsigned (another policy, pushed without --sign): refused; without
    // require-signature it is used.
    let readiness = dir.join("readiness.wasm");
    std::fs::write(
        &readiness,
        orchestrator_builtin_plugins::find("readiness", "node-count")
            .unwrap()
            .wasm,
    )
    .unwrap();
    let (unsigned, _) = push_file(
        &user,
        &registry,
        &readiness,
        "team/policies",
        "unsigned",
        None,
    );
    let refused = check(&unsigned, &public);
    assert!(!refused.status.success());
    assert!(
        one_error_line(&refused).contains("no signature"),
        "{}",
        err(&refused)
    );
    let plain = user.run(&["plugin", "check", &unsigned], Some(&registry.host));
    assert!(plain.status.success(), "{}", err(&plain));

    // Tampered: the signed policy's signature copied under the unsigned
    // one's signature tag (a valid signature, of another manifest).
    let unsigned_digest = unsigned.rsplit_once('@').unwrap().1;
    let copied_tag = format!("{}.sig", unsigned_digest.replace(':', "-"));
    let mut body = std::io::Cursor::new(sig_manifest.clone());
    let (status, headers, _) = registry.request(
        "PUT",
        &format!("/v2/team/policies/manifests/{copied_tag}"),
        &[("Content-Type", "application/vnd.oci.image.manifest.v1+json")],
        Some((&mut body, sig_manifest.len() as u64)),
    );
    assert_eq!(status, 201, "{headers}");
    let tampered = check(&unsigned, &public);
    assert!(!tampered.status.success());
    assert!(
        one_error_line(&tampered).contains("a valid signature of another manifest"),
        "{}",
        err(&tampered)
    );

    // A bad signing key pushes nothing (exit 2).
    let bad_key = dir.join("bad.pem");
    std::fs::write(
        &bad_key,
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let o = user.run(
        &[
            "plugin",
            "push",
            policy_file(dir).to_str().unwrap(),
            &format!("oci://{}/team/policies:bad", registry.host),
            "--sign",
            bad_key.to_str().unwrap(),
        ],
        Some(&registry.host),
    );
    assert_eq!(o.status.code(), Some(2), "{}", err(&o));
}
