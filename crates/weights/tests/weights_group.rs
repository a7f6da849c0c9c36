//! A group of nodes fetching one revision from a real nginx origin (a
//! mirror of the hub's API laid out as files, or a JSON autoindex),
//! each node's chunks served to the others by its own peer service on
//! loopback: the origin serves the revision once; a corrupt chunk, a
//! peer killed mid-transfer, the origin gone after the first fetch and a
//! revision change. nginx: see `orchestrator_test_support::Nginx`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use http_body_util::Full;
use hyper::body::Bytes;
use orchestrator_weights::{
    FetchSettings, FetchState, Fetcher, Origin, OriginSpec, PeerClient, PeerKey, PeerService,
    Peers, Progress, Role, store::sha256_hex,
};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

const CHUNK: u64 = 1 << 20;
const SECRET: &[u8] = b"weights-test-group-secret-0123456789";

fn free_port(ip: &str) -> u16 {
    orchestrator_test_support::free_port_on(ip)
}

/// nginx serving `root`, its state in a folder of its own.
struct Nginx {
    inner: orchestrator_test_support::Nginx,
    _state: tempfile::TempDir,
}

impl Nginx {
    fn start(root: &Path, ip: &str, rate: &str) -> Self {
        let state = tempfile::tempdir().unwrap();
        let inner = orchestrator_test_support::Nginx::start(state.path(), root, ip, rate);
        Self {
            inner,
            _state: state,
        }
    }

    fn url(&self) -> String {
        self.inner.url()
    }

    fn file_bytes(&self) -> u64 {
        self.inner.file_bytes()
    }

    fn stop(&mut self) {
        self.inner.stop();
    }
}

/// Random bytes, reproducible.
fn bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// The files of one revision.
fn revision(seed: u64) -> Vec<(String, Vec<u8>)> {
    vec![
        (
            "config.json".into(),
            format!("{{\"seed\": {seed}}}\n").into_bytes(),
        ),
        (
            "model-00001-of-00002.safetensors".into(),
            bytes(9 << 20, seed),
        ),
        (
            "model-00002-of-00002.safetensors".into(),
            bytes((5 << 20) + 12345, seed + 1),
        ),
        ("tokenizer/empty.txt".into(), Vec::new()),
    ]
}

fn total(files: &[(String, Vec<u8>)]) -> u64 {
    files.iter().map(|(_, b)| b.len() as u64).sum()
}

/// Lays `files` out as a hub mirror: `org/model/resolve/<commit>/...`
/// and the API's answer for `branch` and for the commit.
fn publish_hub(root: &Path, commit: &str, branch: &str, files: &[(String, Vec<u8>)]) {
    let siblings: Vec<serde_json::Value> = files
        .iter()
        .map(|(path, content)| {
            let mut s = serde_json::json!({"rfilename": path, "size": content.len()});
            if path.ends_with(".safetensors") {
                s["lfs"] =
                    serde_json::json!({"sha256": sha256_hex(content), "size": content.len()});
            }
            s
        })
        .collect();
    for (path, content) in files {
        let at = root.join("org/model/resolve").join(commit).join(path);
        std::fs::create_dir_all(at.parent().unwrap()).unwrap();
        std::fs::write(at, content).unwrap();
    }
    let api = root.join("api/models/org/model/revision");
    std::fs::create_dir_all(&api).unwrap();
    let answer = serde_json::json!({"id": "org/model", "sha": commit, "siblings": siblings});
    for name in [branch, commit] {
        std::fs::write(api.join(name), answer.to_string()).unwrap();
    }
}

fn hub(origin: &Nginx) -> Origin {
    Origin::new(
        OriginSpec::Hub {
            endpoint: origin.url(),
            repo: "org/model".into(),
            revision: "main".into(),
            token_env: None,
        },
        Duration::from_secs(20),
    )
    .unwrap()
}

/// One node: its fetch, and its peer service on `address`.
struct Node {
    fetcher: Arc<Fetcher>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Node {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn serve_peers(address: String, service: Arc<PeerService>) -> tokio::task::JoinHandle<()> {
    // A node started again on its address: the one before it may hold the
    // port for a moment after its task was aborted.
    let until = Instant::now() + Duration::from_secs(10);
    let listener = loop {
        match tokio::net::TcpListener::bind(&address).await {
            Ok(listener) => break listener,
            Err(e) if Instant::now() < until => {
                eprintln!("{address}: {e}; trying again");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("{address}: {e}"),
        }
    };
    tokio::spawn(async move {
        let mut connections = tokio::task::JoinSet::new();
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let service = Arc::clone(&service);
            connections.spawn(async move {
                let handle = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let service = Arc::clone(&service);
                        async move {
                            let auth = req
                                .headers()
                                .get(orchestrator_weights::peer::REQUEST_HEADER)
                                .and_then(|v| v.to_str().ok())
                                .map(str::to_string);
                            let target = req
                                .uri()
                                .path_and_query()
                                .map(|p| p.as_str())
                                .unwrap_or("/");
                            let answer = service.answer(target, auth.as_deref()).await;
                            let mut response = hyper::Response::builder()
                                .status(answer.status)
                                .header("content-type", answer.content_type);
                            if let Some(mac) = answer.mac {
                                response =
                                    response.header(orchestrator_weights::peer::ANSWER_HEADER, mac);
                            }
                            Ok::<_, std::convert::Infallible>(
                                response.body(Full::new(Bytes::from(answer.body))).unwrap(),
                            )
                        }
                    },
                );
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, handle)
                    .await;
            });
        }
    })
}

struct Plan<'a> {
    origin: Origin,
    cache: &'a Path,
    role: Role,
    address: &'a str,
    peers: Peers,
    parallel: usize,
    stall: Duration,
}

impl<'a> Plan<'a> {
    /// The seed: four chunks at once, the origin after 1 s.
    fn seed(origin: Origin, cache: &'a Path, address: &'a str) -> Self {
        Self {
            origin,
            cache,
            role: Role::Seed,
            address,
            peers: Peers::Fixed(vec![]),
            parallel: 4,
            stall: Duration::from_secs(1),
        }
    }

    /// A joiner asking `seed`.
    fn join(origin: Origin, cache: &'a Path, address: &'a str, seed: &str) -> Self {
        Self {
            role: Role::Join,
            peers: Peers::Fixed(vec![seed.to_string()]),
            ..Self::seed(origin, cache, address)
        }
    }

    /// Two chunks at once, the origin after 3 s.
    fn slower(self) -> Self {
        Self {
            parallel: 2,
            stall: Duration::from_secs(3),
            ..self
        }
    }
}

async fn node(plan: Plan<'_>) -> Node {
    let key = Arc::new(PeerKey::from_secret(SECRET).unwrap());
    let service = Arc::new(PeerService::new(Arc::clone(&key)));
    let client = PeerClient::new(key, Duration::from_secs(10)).unwrap();
    let server = serve_peers(plan.address.to_string(), Arc::clone(&service)).await;
    let settings = FetchSettings {
        cache: plan.cache.to_path_buf(),
        chunk_bytes: CHUNK,
        parallel: plan.parallel,
        peer_wait: Duration::from_secs(10),
        stall: plan.stall,
    };
    let fetcher =
        Fetcher::new(plan.origin, settings, plan.role).with_peers(plan.peers, client, service);
    Node {
        fetcher: Arc::new(fetcher),
        server,
    }
}

fn progress(node: &Node) -> Progress {
    node.fetcher.progress().lock().unwrap().clone()
}

fn run(node: &Node) -> tokio::task::JoinHandle<Result<PathBuf, String>> {
    let fetcher = Arc::clone(&node.fetcher);
    tokio::spawn(async move { fetcher.run().await.map_err(|e| e.to_string()) })
}

/// Every file of `files` under `folder`, byte for byte.
fn assert_holds(folder: &Path, files: &[(String, Vec<u8>)]) {
    for (path, content) in files {
        let got = std::fs::read(folder.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
        assert!(got == *content, "{path} differs under {}", folder.display());
    }
}

fn caches(n: usize) -> Vec<tempfile::TempDir> {
    (0..n).map(|_| tempfile::tempdir().unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs nginx: run by `cargo xtask test`"]
async fn three_nodes_take_the_revision_once_from_the_origin() {
    let root = tempfile::tempdir().unwrap();
    let files = revision(1);
    publish_hub(root.path(), "c0ffee01", "main", &files);
    let origin = Nginx::start(root.path(), "127.0.0.41", "4m");
    let caches = caches(3);
    let addresses: Vec<String> = (0..3)
        .map(|i| {
            format!(
                "127.0.0.4{}:{}",
                i + 2,
                free_port(&format!("127.0.0.4{}", i + 2))
            )
        })
        .collect();
    let mut nodes = Vec::new();
    for i in 0..3 {
        // The joiners know only the seed; it introduces them to each other.
        let peers = if i == 0 {
            Peers::Fixed(vec![])
        } else {
            Peers::Via {
                seed: addresses[0].clone(),
                me: addresses[i].clone(),
            }
        };
        nodes.push(
            node(Plan {
                role: if i == 0 { Role::Seed } else { Role::Join },
                peers,
                ..Plan::seed(hub(&origin), caches[i].path(), &addresses[i])
            })
            .await,
        );
    }
    let runs: Vec<_> = nodes.iter().map(run).collect();
    for (i, handle) in runs.into_iter().enumerate() {
        let folder = handle
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("node {i}: {e}"));
        assert!(
            folder.ends_with("org--model/c0ffee01"),
            "{}",
            folder.display()
        );
        assert_holds(&folder, &files);
    }
    let served = origin.file_bytes();
    let ratio = served as f64 / total(&files) as f64;
    assert!(
        ratio <= 1.05,
        "the origin served {served} bytes: {ratio:.2} x the revision"
    );
    for joiner in &nodes[1..] {
        let p = progress(joiner);
        assert_eq!(p.state, FetchState::Done);
        assert_eq!(p.from_origin_bytes, 0, "{p:?}");
        assert_eq!(
            p.from_peers_bytes.values().sum::<u64>(),
            p.total_bytes,
            "{p:?}"
        );
    }
    assert_eq!(progress(&nodes[0]).from_origin_bytes, total(&files));
    // The seed introduced the joiners to each other.
    let key = Arc::new(PeerKey::from_secret(SECRET).unwrap());
    let client = PeerClient::new(key, Duration::from_secs(5)).unwrap();
    let id = nodes[0].fetcher.id();
    let heard = client
        .introduce(&addresses[0], &id, &addresses[1])
        .await
        .unwrap();
    assert_eq!(heard, vec![addresses[2].clone()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs nginx: run by `cargo xtask test`"]
async fn a_corrupt_chunk_from_a_peer_is_refused_and_fetched_elsewhere() {
    let root = tempfile::tempdir().unwrap();
    let files = revision(2);
    publish_hub(root.path(), "c0ffee02", "main", &files);
    let origin = Nginx::start(root.path(), "127.0.0.51", "50m");
    let caches = caches(2);
    let a = "127.0.0.52:".to_string() + &free_port("127.0.0.52").to_string();
    let b = "127.0.0.53:".to_string() + &free_port("127.0.0.53").to_string();
    let seed = node(Plan::seed(hub(&origin), caches[0].path(), &a)).await;
    let folder = run(&seed).await.unwrap().unwrap();
    // One byte of chunk 3 of the first shard flips on the seed's disk.
    let shard = folder.join("model-00001-of-00002.safetensors");
    let mut content = std::fs::read(&shard).unwrap();
    content[(3 << 20) + 17] ^= 0x40;
    std::fs::write(&shard, content).unwrap();
    let before = origin.file_bytes();
    let joiner = node(Plan::join(hub(&origin), caches[1].path(), &b, &a).slower()).await;
    let got = run(&joiner).await.unwrap().unwrap();
    assert_holds(&got, &files);
    let p = progress(&joiner);
    assert!(p.corrupt_chunks >= 1, "{p:?}");
    // Only the chunk the seed could not give came from the origin.
    let from_origin = origin.file_bytes() - before;
    assert_eq!(from_origin, CHUNK, "{p:?}");
    assert_eq!(p.from_origin_bytes, from_origin);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs nginx: run by `cargo xtask test`"]
async fn a_peer_killed_mid_transfer_is_routed_around() {
    // A plain directory (JSON autoindex) this time.
    let root = tempfile::tempdir().unwrap();
    let files = revision(3);
    for (path, content) in &files {
        let at = root.path().join("models/m").join(path);
        std::fs::create_dir_all(at.parent().unwrap()).unwrap();
        std::fs::write(at, content).unwrap();
    }
    let origin = Nginx::start(root.path(), "127.0.0.61", "1m");
    let directory = || {
        Origin::new(
            OriginSpec::Directory {
                url: format!("{}/models/m/", origin.url()),
                name: "m".into(),
                revision: None,
                files: vec![],
                token_env: None,
            },
            Duration::from_secs(20),
        )
        .unwrap()
    };
    let caches = caches(2);
    let a = "127.0.0.62:".to_string() + &free_port("127.0.0.62").to_string();
    let b = "127.0.0.63:".to_string() + &free_port("127.0.0.63").to_string();
    let seed = node(Plan {
        peers: Peers::Fixed(vec![b.clone()]),
        ..Plan::seed(directory(), caches[0].path(), &a).slower()
    })
    .await;
    let joiner = node(Plan::join(directory(), caches[1].path(), &b, &a).slower()).await;
    let seeding = run(&seed);
    let joining = run(&joiner);
    // The seed goes once the joiner holds a third of the revision.
    let until = Instant::now() + Duration::from_secs(60);
    while progress(&joiner).done_bytes < total(&files) / 3 {
        assert!(Instant::now() < until, "{:?}", progress(&joiner));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    seeding.abort();
    drop(seed);
    let got = joining.await.unwrap().unwrap();
    assert_holds(&got, &files);
    let p = progress(&joiner);
    assert!(p.revision.starts_with("listing-"), "{p:?}");
    let from_peers = p.from_peers_bytes.values().sum::<u64>();
    assert!(from_peers >= 3 * CHUNK, "{p:?}");
    assert!(p.from_origin_bytes > 0, "{p:?}");
    assert_eq!(from_peers + p.from_origin_bytes, total(&files), "{p:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs nginx: run by `cargo xtask test`"]
async fn the_origin_gone_after_the_first_fetch_does_not_stop_the_group() {
    let root = tempfile::tempdir().unwrap();
    let files = revision(4);
    publish_hub(root.path(), "c0ffee04", "main", &files);
    let mut origin = Nginx::start(root.path(), "127.0.0.71", "50m");
    let caches = caches(3);
    let a = "127.0.0.72:".to_string() + &free_port("127.0.0.72").to_string();
    let seed = node(Plan::seed(hub(&origin), caches[0].path(), &a)).await;
    run(&seed).await.unwrap().unwrap();
    let hub_origin = hub(&origin);
    origin.stop();
    for (i, cache) in caches[1..].iter().enumerate() {
        let address = format!(
            "127.0.0.7{}:{}",
            i + 3,
            free_port(&format!("127.0.0.7{}", i + 3))
        );
        let joiner = node(Plan::join(hub_origin.clone(), cache.path(), &address, &a)).await;
        let got = run(&joiner).await.unwrap().unwrap();
        assert_holds(&got, &files);
    }
    // The seed restarted: the cache, without the origin.
    drop(seed);
    let again = node(Plan::seed(hub_origin, caches[0].path(), &a)).await;
    let got = run(&again).await.unwrap().unwrap();
    assert_holds(&got, &files);
    assert!(progress(&again).cached);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs nginx: run by `cargo xtask test`"]
async fn a_revision_change_fetches_the_new_revision_beside_the_old() {
    let root = tempfile::tempdir().unwrap();
    let old = revision(5);
    publish_hub(root.path(), "c0ffee05", "main", &old);
    let origin = Nginx::start(root.path(), "127.0.0.81", "50m");
    let caches = caches(2);
    let a = "127.0.0.82:".to_string() + &free_port("127.0.0.82").to_string();
    let b = "127.0.0.83:".to_string() + &free_port("127.0.0.83").to_string();
    let seed = node(Plan::seed(hub(&origin), caches[0].path(), &a)).await;
    let first = run(&seed).await.unwrap().unwrap();
    assert_holds(&first, &old);
    // `main` moves to a new commit.
    let new = revision(6);
    publish_hub(root.path(), "c0ffee06", "main", &new);
    let second = run(&seed).await.unwrap().unwrap();
    assert!(
        second.ends_with("org--model/c0ffee06"),
        "{}",
        second.display()
    );
    assert_holds(&second, &new);
    assert_holds(&first, &old);
    assert!(!progress(&seed).cached);
    // A joiner gets the new one from the seed.
    let joiner = node(Plan::join(hub(&origin), caches[1].path(), &b, &a)).await;
    let got = run(&joiner).await.unwrap().unwrap();
    assert!(got.ends_with("org--model/c0ffee06"));
    assert_holds(&got, &new);
    assert_eq!(progress(&joiner).from_origin_bytes, 0);
}
