//! The Kubernetes code against the fake API server (no real API server can
//! run on the test machines): recorded RayCluster and Pod JSON, real HTTP,
//! real watch streams.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use orchestrator_domain::ExternalFacts;
use orchestrator_domain::Node;
use orchestrator_domain::{ClusterConfig, Event, EventReason};
use orchestrator_fake_kube_api::{FakeApiServer, fixture};
use orchestrator_kubernetes::events::{RateLimit, record_events};
use orchestrator_kubernetes::{
    KubeContext, KubernetesConfig, connect, watch_cluster, watch_cluster_for,
};
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use tokio::sync::watch;

const NS: &str = "inference";
const HEAD: &str = "vllm-llama-head-x7k2p";

fn settings(server: &FakeApiServer) -> KubernetesConfig {
    KubernetesConfig {
        enabled: true,
        api_server: Some(server.url()),
        namespace: Some(NS.into()),
        pod_name: Some(HEAD.into()),
        ..KubernetesConfig::default()
    }
}

async fn cluster_with(pods: &[&str]) -> FakeApiServer {
    let mut objects = vec![fixture("raycluster.json"), fixture("pod-head.json")];
    objects.extend(pods.iter().map(|p| fixture(p)));
    FakeApiServer::start(objects)
        .await
        .expect("fake API server")
}

/// Waits until `facts` satisfy `check`, up to 10 s.
async fn until(
    facts: &mut watch::Receiver<ExternalFacts>,
    what: &str,
    check: impl Fn(&ExternalFacts) -> bool,
) -> ExternalFacts {
    let r = tokio::time::timeout(Duration::from_secs(10), facts.wait_for(|f| check(f)))
        .await
        .map(|r| r.map(|f| f.clone()));
    match r {
        Ok(Ok(f)) => f,
        _ => panic!("{what}: never happened; last facts: {:?}", *facts.borrow()),
    }
}

#[tokio::test]
async fn topology_comes_from_the_raycluster_spec_and_explicit_config_wins() {
    let server = cluster_with(&["pod-worker-running.json"]).await;
    let context = connect(&settings(&server)).await.expect("connect");
    // Found from the head pod's ray.io/cluster label.
    assert_eq!(context.cluster_name, "vllm-llama");
    assert!(context.pod_uid.is_some());
    let facts = watch_cluster(&context, ClusterConfig::default()).await;
    let expected = facts.borrow().expected.clone().expect("topology");
    // 1 head + 2 replicas of gpu-group; 1 GPU each from nvidia.com/gpu limits.
    assert_eq!(expected.nodes, 3);
    assert_eq!(expected.gpus, 3.0);
    assert_eq!(expected.groups.len(), 1);
    assert_eq!(expected.groups[0].name, "gpu-group");
    assert_eq!(expected.groups[0].gpus_per_node, 1.0);
    assert_eq!(expected.groups[0].cpus_per_node, 4.0);

    let explicit = ClusterConfig {
        nodes: Some(5),
        gpus: 8.0,
        ..ClusterConfig::default()
    };
    let facts = watch_cluster(&context, explicit).await;
    let expected = facts.borrow().expected.clone().expect("topology");
    assert_eq!((expected.nodes, expected.gpus), (5, 8.0));
    // The requests were the real API paths.
    let uris: Vec<String> = server.requests().iter().map(|r| r.uri.clone()).collect();
    assert!(
        uris.iter()
            .any(|u| u.starts_with("/api/v1/namespaces/inference/pods/vllm-llama-head-x7k2p")),
        "{uris:?}"
    );
    assert!(
        uris.iter().any(|u| u.starts_with(
            "/apis/ray.io/v1/namespaces/inference/rayclusters?&fieldSelector=metadata.name%3Dvllm-llama"
        ) || u.contains("rayclusters?fieldSelector=metadata.name%3Dvllm-llama")),
        "{uris:?}"
    );
}

#[tokio::test]
async fn a_scale_up_during_the_wait_updates_the_expectation() {
    let server = cluster_with(&["pod-worker-running.json"]).await;
    let context = connect(&settings(&server)).await.expect("connect");
    let mut facts = watch_cluster(&context, ClusterConfig::default()).await;
    assert_eq!(facts.borrow().expected.as_ref().map(|t| t.nodes), Some(3));
    let mut scaled = server
        .get("ray.io/v1", "RayCluster", NS, "vllm-llama")
        .expect("stored");
    scaled["spec"]["workerGroupSpecs"][0]["replicas"] = json!(4);
    let at = Instant::now();
    server.apply(scaled);
    let f = until(&mut facts, "scale-up seen", |f| {
        f.expected.as_ref().is_some_and(|t| t.nodes == 5)
    })
    .await;
    let seen_after = at.elapsed();
    eprintln!("scale-up seen by the watcher {seen_after:?} after the API change");
    assert_eq!(f.expected.as_ref().map(|t| t.gpus), Some(5.0));
    // Two of four pods exist: the group shortfall is a note.
    assert!(
        f.notes
            .iter()
            .any(|n| n.contains("gpu-group") && n.contains("1 of 4 pods exist")),
        "{:?}",
        f.notes
    );
}

#[tokio::test]
async fn a_raycluster_scaled_by_rays_autoscaler_is_reported_as_such() {
    // minReplicas 0 and no worker yet: replicas (0) are not the layout.
    let mut cluster = fixture("raycluster.json");
    cluster["spec"]["enableInTreeAutoscaling"] = json!(true);
    cluster["spec"]["workerGroupSpecs"][0]["replicas"] = json!(0);
    cluster["spec"]["workerGroupSpecs"][0]["minReplicas"] = json!(0);
    let server = FakeApiServer::start(vec![cluster, fixture("pod-head.json")])
        .await
        .expect("fake API server");
    let context = connect(&settings(&server)).await.expect("connect");
    // No layout anywhere: the GPU group's maxReplicas (4) are expected.
    let facts = watch_cluster(&context, ClusterConfig::default()).await;
    let f = facts.borrow().clone();
    assert!(f.autoscaling);
    assert_eq!(f.expected.as_ref().map(|t| t.nodes), Some(5));
    assert!(
        f.notes.iter().any(|n| n
            .contains("RayCluster vllm-llama scales its workers with Ray's autoscaler: expecting 4 workers (each GPU group's maxReplicas")
            && n.contains("set [[cluster.groups]] to expect other workers")),
        "{:?}",
        f.notes
    );
    // The serve layout's GPUs (TP x PP = 3; the head has 1 GPU): 2 workers
    // of 1 GPU.
    let facts = watch_cluster_for(&context, ClusterConfig::default(), Some(3.0)).await;
    let f = facts.borrow().clone();
    let t = f.expected.clone().unwrap();
    assert_eq!((t.nodes, t.gpus, t.groups[0].replicas), (3, 3.0, 2));
    assert!(
        f.notes
            .iter()
            .any(|n| n.contains("expecting 2 workers (for the serve layout's 3 GPUs")),
        "{:?}",
        f.notes
    );
    // With the layout configured, it is the expectation and no note is due.
    let layout = ClusterConfig {
        groups: vec![orchestrator_domain::GroupConfig {
            name: "gpu-group".into(),
            replicas: 2,
            cpus_per_node: 4.0,
            gpus_per_node: 1.0,
        }],
        ..ClusterConfig::default()
    };
    let facts = watch_cluster(&context, layout).await;
    let f = facts.borrow().clone();
    assert!(f.autoscaling);
    assert_eq!(f.expected.as_ref().map(|t| t.nodes), Some(3));
    assert!(
        !f.notes.iter().any(|n| n.contains("autoscaler")),
        "{:?}",
        f.notes
    );
    // Without autoscaling (the other tests' RayCluster) the flag is off.
    let plain = cluster_with(&[]).await;
    let context = connect(&settings(&plain)).await.expect("connect");
    let facts = watch_cluster(&context, ClusterConfig::default()).await;
    assert!(!facts.borrow().autoscaling);
}

#[tokio::test]
async fn a_pending_worker_is_diagnosed_with_the_scheduler_message() {
    let server = cluster_with(&["pod-worker-running.json", "pod-worker-unschedulable.json"]).await;
    let context = connect(&settings(&server)).await.expect("connect");
    let mut facts = watch_cluster(&context, ClusterConfig::default()).await;
    // The running worker joined (its pod IP is a GCS node); the other not.
    let nodes = vec![node("10.244.1.12", true), node("10.244.2.7", true)];
    let lines = facts.borrow().diagnose(&nodes);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].contains("vllm-llama-gpu-group-worker-2xq9z")
            && lines[0].contains(
                "Pending, unschedulable: 0/4 nodes are available: 4 Insufficient nvidia.com/gpu"
            ),
        "{lines:?}"
    );
    // The pod gets a GPU node and starts: the watch brings it.
    let mut started = fixture("pod-worker-running.json");
    started["metadata"]["name"] = json!("vllm-llama-gpu-group-worker-2xq9z");
    started["status"]["podIP"] = json!("10.244.3.8");
    server.apply(started);
    let f = until(&mut facts, "pod running", |f| {
        f.members
            .iter()
            .any(|m| m.ip.as_deref() == Some("10.244.3.8"))
    })
    .await;
    let lines = f.diagnose(&nodes);
    assert!(
        lines.len() == 1 && lines[0].contains("Running at 10.244.3.8 but not yet in the GCS"),
        "{lines:?}"
    );
    let mut all = nodes.clone();
    all.push(node("10.244.3.8", true));
    assert!(f.diagnose(&all).is_empty());
    // A deleted pod drops out.
    server.delete(&fixture("pod-worker-running.json"));
    let f = until(&mut facts, "pod deleted", |f| f.members.len() == 1).await;
    assert_eq!(f.members[0].name, "vllm-llama-gpu-group-worker-2xq9z");
}

#[tokio::test]
async fn image_pull_and_crash_loop_are_named() {
    let server = cluster_with(&[
        "pod-worker-imagepullbackoff.json",
        "pod-worker-crashloopbackoff.json",
    ])
    .await;
    let context = connect(&settings(&server)).await.expect("connect");
    let facts = watch_cluster(&context, ClusterConfig::default()).await;
    let lines = facts.borrow().diagnose(&[node("10.244.1.12", true)]);
    let text = lines.join("\n");
    assert!(
        text.contains("ImagePullBackOff (container ray-worker): Back-off pulling image \"registry.example.com/ray-orchestrator/vllm:0.32.1\""),
        "{text}"
    );
    assert!(
        text.contains("CrashLoopBackOff (container ray-worker, restarted 6 times; last exit: Error, code 2, error: invalid configuration"),
        "{text}"
    );
}

#[tokio::test]
async fn a_watch_too_old_is_relisted() {
    let server = cluster_with(&["pod-worker-running.json"]).await;
    let context = connect(&settings(&server)).await.expect("connect");
    let mut facts = watch_cluster(&context, ClusterConfig::default()).await;
    // The server restarts after a compaction with a change no watch saw:
    // the re-watch from the old version gets 410 Gone, and only a fresh
    // list shows the change.
    let lists_before = server
        .requests()
        .iter()
        .filter(|r| r.uri.contains("rayclusters?") && !r.uri.contains("watch=true"))
        .count();
    let mut scaled = server
        .get("ray.io/v1", "RayCluster", NS, "vllm-llama")
        .expect("stored");
    scaled["spec"]["workerGroupSpecs"][0]["replicas"] = json!(3);
    server.compact_with(scaled);
    until(&mut facts, "scale seen", |f| {
        f.expected.as_ref().is_some_and(|t| t.nodes == 4)
    })
    .await;
    let lists_after = server
        .requests()
        .iter()
        .filter(|r| r.uri.contains("rayclusters?") && !r.uri.contains("watch=true"))
        .count();
    assert!(lists_after > lists_before, "relisted");
}

#[tokio::test]
async fn the_watches_end_when_nobody_reads_the_facts() {
    let server = cluster_with(&["pod-worker-running.json"]).await;
    let context = connect(&settings(&server)).await.expect("connect");
    let facts = watch_cluster(&context, ClusterConfig::default()).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while server.open_watches() < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(server.open_watches(), 2, "RayCluster and pods watched");
    drop(facts);
    let deadline = Instant::now() + Duration::from_secs(3);
    while server.open_watches() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        server.open_watches(),
        0,
        "watches closed without waiting for a change"
    );
}

#[tokio::test]
async fn missing_rbac_names_the_permission_and_the_wait_goes_on() {
    let server = cluster_with(&["pod-worker-unschedulable.json"]).await;
    server.forbid("list", "pods");
    server.forbid("watch", "pods");
    let context = connect(&settings(&server)).await.expect("connect");
    let mut facts = watch_cluster(&context, ClusterConfig::default()).await;
    let f = facts.borrow().clone();
    // The topology still comes from the RayCluster ...
    assert_eq!(f.expected.as_ref().map(|t| t.nodes), Some(3));
    // ... and the note says what to grant.
    let text = f.notes.join("\n");
    assert!(
        text.contains("403 Forbidden")
            && text.contains("verb \"list\" on resource \"pods\" in apiGroup \"\"")
            && text.contains("rbac.yaml"),
        "{text}"
    );
    // Fixed RBAC is picked up by the next relist, without a restart.
    server.allow("list", "pods");
    server.allow("watch", "pods");
    let f = until(&mut facts, "pods listed after the fix", |f| {
        f.notes.iter().all(|n| !n.contains("403")) && !f.members.is_empty()
    })
    .await;
    assert_eq!(f.members.len(), 1);

    // Without access to RayClusters the expected topology is unknown (the
    // configuration's is used) and the note names rayclusters.ray.io.
    let server = cluster_with(&[]).await;
    server.forbid("list", "rayclusters");
    let context = connect(&settings(&server)).await.expect("connect");
    let facts = watch_cluster(&context, ClusterConfig::default()).await;
    let f = facts.borrow().clone();
    assert!(f.expected.is_none());
    assert!(
        f.notes.iter().any(|n| n.contains("rayclusters.ray.io")
            && n.contains("verb \"list\" on resource \"rayclusters\" in apiGroup \"ray.io\"")),
        "{:?}",
        f.notes
    );

    // Without `get pods` and no configured cluster name, connect says so.
    let server = cluster_with(&[]).await;
    server.forbid("get", "pods");
    let err = connect(&settings(&server)).await.expect_err("forbidden");
    assert!(
        err.to_string()
            .contains("verb \"get\" on resource \"pods\""),
        "{err}"
    );
    // With the name configured it goes on.
    let mut s = settings(&server);
    s.cluster_name = Some("vllm-llama".into());
    let context = connect(&s).await.expect("connect with a configured name");
    assert_eq!(context.cluster_name, "vllm-llama");
}

#[tokio::test]
async fn an_unreachable_api_server_is_a_clear_error() {
    // A port nothing listens on.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let s = KubernetesConfig {
        enabled: true,
        api_server: Some(format!("http://127.0.0.1:{port}")),
        namespace: Some(NS.into()),
        pod_name: Some(HEAD.into()),
        ..KubernetesConfig::default()
    };
    let err = tokio::time::timeout(Duration::from_secs(30), connect(&s))
        .await
        .expect("a bounded attempt, not a hang")
        .expect_err("unreachable");
    assert!(
        err.to_string()
            .contains("cannot reach the Kubernetes API server at http://127.0.0.1:"),
        "{err}"
    );
    // Not in a pod and no api-server: the setup error says what to do.
    let err = connect(&KubernetesConfig {
        enabled: true,
        ..KubernetesConfig::default()
    })
    .await
    .expect_err("not a pod");
    assert!(
        err.to_string().contains("kubernetes.enabled = false"),
        "{err}"
    );
}

fn node(address: &str, alive: bool) -> Node {
    Node {
        address: address.into(),
        alive,
        ..Node::default()
    }
}

fn events(server: &FakeApiServer) -> Vec<Value> {
    server.all("v1", "Event", NS)
}

#[tokio::test]
async fn events_are_recorded_on_the_head_pod_aggregated_and_rate_limited() {
    let server = cluster_with(&[]).await;
    let context: KubeContext = connect(&settings(&server)).await.expect("connect");
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let recorder = tokio::spawn(record_events(
        context.clone(),
        rx,
        RateLimit::new(5, Duration::from_secs(3600), Instant::now()),
    ));
    let restarting = "restart: /health failed 3 times";
    for (reason, message) in [
        (
            EventReason::WaitingForCluster,
            "waiting (1 of 2 nodes alive)",
        ),
        (EventReason::ServerRestarting, restarting),
        (EventReason::ServerRestarted, "restart 1"),
        (EventReason::ServerRestarting, restarting),
        (EventReason::ServerRestarted, "restart 2"),
    ] {
        tx.send(Event::new(reason, message)).await.unwrap();
    }
    // A flapping state: 40 more distinct events in a moment.
    for i in 0..40 {
        tx.send(Event::new(EventReason::ServerDegraded, format!("flap {i}")))
            .await
            .unwrap();
    }
    // The end of the stream: the recorder finishes what it took.
    drop(tx);
    tokio::time::timeout(Duration::from_secs(10), recorder)
        .await
        .expect("the recorder ends when the stream does")
        .expect("no panic");
    let stored = events(&server);
    let requests = server.requests();
    let posts = requests.iter().filter(|r| r.method == "POST").count();
    let patches = requests.iter().filter(|r| r.method == "PATCH").count();
    // Burst 5: WaitingForCluster, ServerRestarting, ServerRestarted
    // (restart 1), ServerRestarting again (same message: a patch),
    // ServerRestarted (restart 2). The 40 flaps find the bucket empty.
    assert_eq!((posts, patches), (4, 1));
    let first = &stored
        .iter()
        .find(|e| e["reason"] == "WaitingForCluster")
        .expect("WaitingForCluster event");
    assert_eq!(first["involvedObject"]["kind"], "Pod");
    assert_eq!(first["involvedObject"]["name"], HEAD);
    assert_eq!(first["involvedObject"]["uid"], json!(context.pod_uid));
    assert_eq!(first["type"], "Normal");
    assert_eq!(first["source"]["component"], "ray-orchestrator");
    let restarting = stored
        .iter()
        .find(|e| e["reason"] == "ServerRestarting")
        .expect("ServerRestarting");
    assert_eq!(restarting["type"], "Warning");
    // The same event again is a patch of the count, not a new object.
    assert_eq!(restarting["count"], json!(2), "{restarting}");
    assert!(
        stored
            .iter()
            .filter(|e| e["reason"] == "ServerDegraded")
            .count()
            == 0,
        "the flood was dropped"
    );
}

#[tokio::test]
async fn event_errors_do_not_stop_the_recorder() {
    let server = cluster_with(&[]).await;
    server.forbid("create", "events");
    let context = connect(&settings(&server)).await.expect("connect");
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let recorder = tokio::spawn(record_events(
        context,
        rx,
        RateLimit::new(10, Duration::from_secs(1), Instant::now()),
    ));
    tx.send(Event::new(EventReason::WaitingForCluster, "waiting"))
        .await
        .unwrap();
    // The recorder tried: its POST was made and refused (403), so nothing
    // was stored.
    let posted = |server: &FakeApiServer| {
        server
            .requests()
            .iter()
            .filter(|r| r.method == "POST" && r.uri.contains("/events"))
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while posted(&server) == 0 {
        assert!(Instant::now() < deadline, "the recorder never tried");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(events(&server).is_empty());
    server.allow("create", "events");
    tx.send(Event::new(EventReason::Serving, "serving"))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while events(&server).is_empty() {
        assert!(Instant::now() < deadline, "the next event was never stored");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stored = events(&server);
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert_eq!(stored[0]["reason"], "Serving");
    assert_eq!(posted(&server), 2, "one refused, one accepted");
    assert!(!recorder.is_finished());
}
