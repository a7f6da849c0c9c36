//! Node health without Ray: the built-in node-health policy through the
//! real plugin host, the head's board (staleness, Events) against an
//! in-memory store, a joining node pending its first report, and the
//! health loop restarting a server whose node turned unhealthy (with the
//! stand-in server of tests/fixtures).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use orchestrator_domain::{
    EventReason, GpuReading, HealthReport, KeyValue, LaunchPlan, Node, NodeHealth, NodeHealthState,
    NodeReadings, NodeVerdict, ServeSettings, ThrottleReason, XidEvent,
};
use orchestrator_phases::endpoints::Status;
use orchestrator_phases::membership::{HealthStore, RayGcs, StoreCall};
use orchestrator_phases::node_health::{Board, BoardEntry, NodeHealthPlan, board};
use orchestrator_phases::policies::{self, PolicyRef};
use orchestrator_phases::serve::{ServeContext, ServeOutcome, ServeSpec, supervise};
use orchestrator_phases::supervision::Shutdown;
use orchestrator_test_support::free_port;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn gpu(index: u32) -> GpuReading {
    GpuReading {
        index,
        name: "NVIDIA H100 80GB HBM3".into(),
        memory_total_bytes: 85_520_809_984,
        ecc_enabled: Some(true),
        ecc_uncorrected_volatile: Some(0),
        remap_pending: Some(false),
        remap_failed: Some(false),
        temperature_c: Some(40),
        ..GpuReading::default()
    }
}

fn healthy_readings(gpus: u32) -> NodeReadings {
    NodeReadings {
        address: "10.0.0.7".into(),
        advertised_gpus: f64::from(gpus),
        driver_version: Some("580.159.04".into()),
        gpus: (0..gpus).map(gpu).collect(),
        temp_dir: "/tmp/ray".into(),
        temp_dir_free_bytes: 50 << 30,
        temp_dir_total_bytes: 100 << 30,
        shm_total_bytes: Some(64 << 30),
        raylet_open_file_limit: Some(65_536),
        memory_available_bytes: 100 << 30,
        memory_total_bytes: 200 << 30,
        memory_pressure_percent: Some(0.0),
        raylet_alive: Some(true),
        ..NodeReadings::default()
    }
}

#[test]
fn the_builtin_node_health_policy_judges_each_fault() {
    let host = policies::host(&Default::default()).unwrap();
    let mut policy = policies::node_health(
        &host,
        &PolicyRef::parse("builtin:node-health/default"),
        "test",
    )
    .unwrap();
    let mut judge = |r: &NodeReadings, params: &[(&str, &str)]| {
        let params: Vec<KeyValue> = params.iter().map(|(k, v)| KeyValue::new(*k, *v)).collect();
        policy.judge(r, &params).unwrap()
    };
    assert_eq!(judge(&healthy_readings(4), &[]), NodeVerdict::Healthy);

    let unhealthy = |v: NodeVerdict| match v {
        NodeVerdict::Unhealthy(r) => r,
        other => panic!("expected unhealthy, got {other:?}"),
    };
    let degraded = |v: NodeVerdict| match v {
        NodeVerdict::Degraded(r) => r,
        other => panic!("expected degraded, got {other:?}"),
    };

    let mut r = healthy_readings(4);
    r.gpus[3].xids.push(XidEvent {
        xid: 79,
        age_ms: 10,
    });
    assert_eq!(
        unhealthy(judge(&r, &[])),
        "GPU 3 XID 79 (fallen off the bus)"
    );
    // An application's XID (13: graphics engine exception) is not the node's.
    let mut r = healthy_readings(1);
    r.gpus[0].xids.push(XidEvent {
        xid: 13,
        age_ms: 10,
    });
    assert_eq!(judge(&r, &[]), NodeVerdict::Healthy);
    assert_eq!(
        unhealthy(judge(&r, &[("fatal-xids", "13, 79")])),
        "GPU 0 XID 13"
    );
    assert!(unhealthy(judge(&r, &[("fatal-xids", "13,x")])).contains("\"x\" is not an XID number"));

    let mut r = healthy_readings(2);
    r.gpus[1].ecc_uncorrected_volatile = Some(1);
    assert_eq!(
        unhealthy(judge(&r, &[])),
        "GPU 1 has 1 uncorrectable ECC error"
    );

    let mut r = healthy_readings(2);
    r.gpus[0].remap_failed = Some(true);
    assert_eq!(unhealthy(judge(&r, &[])), "GPU 0 row remapping failed");
    let mut r = healthy_readings(2);
    r.gpus[0].remap_pending = Some(true);
    assert!(degraded(judge(&r, &[])).contains("GPU 0 has rows pending remapping"));

    let mut r = healthy_readings(8);
    r.gpus.truncate(7);
    assert_eq!(
        unhealthy(judge(&r, &[])),
        "7 GPUs visible, 8 advertised to Ray"
    );
    let mut r = healthy_readings(0);
    r.advertised_gpus = 2.0;
    r.nvml_unavailable = Some("no NVIDIA GPUs visible: libnvidia-ml.so.1: cannot open".into());
    assert!(
        degraded(judge(&r, &[]))
            .starts_with("2 GPUs advertised to Ray but the count cannot be checked (no NVIDIA"),
        "no NVML: another vendor's GPUs, or slots"
    );
    assert_eq!(
        judge(&r, &[("check-gpu-count", "false")]),
        NodeVerdict::Healthy,
        "a CPU node with stand-in GPU slots"
    );

    let mut r = healthy_readings(1);
    r.raylet_alive = Some(false);
    assert_eq!(unhealthy(judge(&r, &[])), "the local raylet is not running");

    let mut r = healthy_readings(1);
    r.gpus[0].throttle = vec![
        ThrottleReason::GpuIdle,
        ThrottleReason::HwPowerBrakeSlowdown,
    ];
    r.gpus[0].temperature_c = Some(70);
    assert_eq!(
        degraded(judge(&r, &[])),
        "GPU 0 throttled at 70 C: hw-power-brake-slowdown"
    );
    let mut r = healthy_readings(1);
    r.gpus[0].throttle = vec![ThrottleReason::GpuIdle, ThrottleReason::SwPowerCap];
    assert_eq!(
        judge(&r, &[]),
        NodeVerdict::Healthy,
        "idle and capped is normal"
    );

    let mut r = healthy_readings(0);
    r.temp_dir_free_bytes = 5 << 30;
    r.shm_total_bytes = Some(64 << 20);
    r.raylet_open_file_limit = Some(1024);
    r.memory_pressure_percent = Some(75.0);
    let text = degraded(judge(&r, &[]));
    for part in [
        "temp dir /tmp/ray is 95% full (5120 MiB free)",
        "/dev/shm is 64 MiB (min-shm-mb = 512)",
        "the raylet may open only 1024 files (min-open-files = 65536)",
        "memory pressure 75%",
    ] {
        assert!(text.contains(part), "{part} in {text}");
    }
    assert_eq!(
        judge(
            &r,
            &[
                ("max-temp-dir-used-percent", "99"),
                ("min-shm-mb", "32"),
                ("min-open-files", "1000"),
                ("max-memory-pressure-percent", "80")
            ]
        ),
        NodeVerdict::Healthy
    );
    // Unhealthy wins over degraded, and both name every finding.
    let mut r = healthy_readings(2);
    r.gpus[0].throttle = vec![ThrottleReason::HwSlowdown];
    r.gpus[1].ecc_uncorrected_volatile = Some(3);
    assert_eq!(
        unhealthy(judge(&r, &[])),
        "GPU 1 has 3 uncorrectable ECC errors"
    );
}

/// Reports held in memory, as the GCS key-value store holds them.
#[derive(Debug, Default)]
struct MemoryStore(Mutex<HashMap<String, HealthReport>>);

impl MemoryStore {
    fn put(&self, report: HealthReport) {
        self.0
            .lock()
            .unwrap()
            .insert(report.node_id.clone(), report);
    }
}

impl HealthStore for MemoryStore {
    fn own_node<'a>(
        &'a self,
        _: &'a str,
        _: Option<&'a str>,
        _: &'a str,
    ) -> StoreCall<'a, Option<Node>> {
        Box::pin(async { Ok(None) })
    }
    fn publish<'a>(&'a self, report: &'a HealthReport) -> StoreCall<'a, ()> {
        self.put(report.clone());
        Box::pin(async { Ok(()) })
    }
    fn withdraw<'a>(&'a self, node_id: &'a str) -> StoreCall<'a, ()> {
        self.0.lock().unwrap().remove(node_id);
        Box::pin(async { Ok(()) })
    }
    fn reports(&self) -> StoreCall<'_, Vec<HealthReport>> {
        let all = self.0.lock().unwrap().values().cloned().collect();
        Box::pin(async move { Ok(all) })
    }
}

fn report(id: &str, seq: u64, verdict: NodeVerdict) -> HealthReport {
    HealthReport {
        local_copy: None,
        node_id: id.into(),
        seq,
        interval_ms: 50,
        written_at_ms: 0,
        verdict,
        readings: NodeReadings {
            address: format!("10.0.0.{}", id.len()),
            ..healthy_readings(1)
        },
    }
}

fn plan(stale_ms: u64) -> NodeHealthPlan {
    NodeHealthPlan {
        interval: Duration::from_millis(50),
        stale_after: Duration::from_millis(stale_ms),
        follow_interval: Duration::from_millis(20),
        unhealthy_grace: Duration::from_secs(30),
        params: vec![],
    }
}

async fn board_until(
    rx: &mut tokio::sync::watch::Receiver<Arc<Board>>,
    check: impl Fn(&Board) -> bool,
) -> Arc<Board> {
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let b = rx.borrow_and_update().clone();
            if check(&b) {
                return b;
            }
            rx.changed().await.unwrap();
        }
    })
    .await
    .expect("the board never matched")
}

#[tokio::test]
async fn the_board_follows_reports_marks_silent_nodes_stale_and_records_events() {
    let store = Arc::new(MemoryStore::default());
    let status = Status::new();
    let mut events = status.subscribe_events();
    store.put(report("aaaa", 1, NodeVerdict::Healthy));
    store.put(report("bbbbbb", 1, NodeVerdict::Healthy));
    let mut rx = board::follow(store.clone(), &plan(300), Arc::clone(&status));
    board_until(&mut rx, |b| b.entries.len() == 2).await;

    // Node b: a fatal fault.
    store.put(report(
        "bbbbbb",
        2,
        NodeVerdict::Unhealthy("GPU 0 XID 79 (fallen off the bus)".into()),
    ));
    let b = board_until(&mut rx, |b| {
        b.health_of("bbbbbb").state == NodeHealthState::Unhealthy
    })
    .await;
    assert_eq!(
        b.health_of("bbbbbb").reason,
        "GPU 0 XID 79 (fallen off the bus)"
    );
    // Node a keeps reporting; node b goes quiet and turns stale.
    let keep_a = {
        let store = store.clone();
        tokio::spawn(async move {
            for seq in 2.. {
                store.put(report("aaaa", seq, NodeVerdict::Healthy));
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let quiet = Instant::now();
    let b = board_until(&mut rx, |b| {
        b.health_of("bbbbbb").state == NodeHealthState::Stale
    })
    .await;
    assert!(
        quiet.elapsed() >= Duration::from_millis(250),
        "{:?}",
        quiet.elapsed()
    );
    assert!(
        b.health_of("bbbbbb")
            .reason
            .contains("it last said unhealthy: GPU 0 XID 79"),
        "{:?}",
        b.health_of("bbbbbb")
    );
    assert_eq!(
        b.health_of("aaaa").state,
        NodeHealthState::Healthy,
        "a reporter is never stale"
    );
    assert_eq!(b.health_of("cc").state, NodeHealthState::Unknown);
    keep_a.abort();

    let mut reasons = Vec::new();
    while let Ok(e) = events.try_recv() {
        reasons.push((e.reason, e.message));
    }
    assert_eq!(
        reasons,
        vec![
            (
                EventReason::NodeUnhealthy,
                "node 10.0.0.6 unhealthy: GPU 0 XID 79 (fallen off the bus)".to_string()
            ),
            (
                EventReason::NodeHealthStale,
                reasons
                    .get(1)
                    .map(|(_, m)| m.clone())
                    .filter(|m| m.starts_with("node 10.0.0.6: no health report for"))
                    .unwrap_or_default()
            ),
        ]
    );
    let snapshot = status.snapshot();
    assert_eq!(snapshot.node_health.len(), 2);
}

#[test]
fn a_node_that_just_joined_is_pending_until_its_first_report_or_the_limit() {
    let now = Instant::now();
    let board = Board {
        entries: [(
            "known".to_string(),
            BoardEntry {
                health: NodeHealth {
                    state: NodeHealthState::Degraded,
                    reason: "hot".into(),
                },
                report: report("known", 1, NodeVerdict::Degraded("hot".into())),
            },
        )]
        .into(),
        first_report_within: Duration::from_secs(5),
    };
    let node = |id: &str| Node {
        id: id.into(),
        alive: true,
        ..Node::default()
    };
    let mut nodes = vec![node("known"), node("new"), node("old"), node("unseen")];
    let first_seen: HashMap<String, Instant> = [
        ("known".to_string(), now),
        ("new".to_string(), now - Duration::from_secs(1)),
        ("old".to_string(), now - Duration::from_secs(6)),
    ]
    .into();
    let until = board.annotate_joining(&mut nodes, &first_seen, now);
    let states: Vec<NodeHealthState> = nodes.iter().map(|n| n.health.state).collect();
    assert_eq!(
        states,
        vec![
            NodeHealthState::Degraded,
            NodeHealthState::Pending,
            NodeHealthState::Unknown,
            NodeHealthState::Unknown
        ]
    );
    assert!(!nodes[1].health.usable() && nodes[0].health.usable() && nodes[2].health.usable());
    assert_eq!(until, Some(now + Duration::from_secs(4)));
    assert!(
        nodes[1]
            .health
            .reason
            .contains("waiting up to 5 s for its first health report")
    );
}

async fn wait_status(
    status: &Status,
    f: impl Fn(&orchestrator_phases::endpoints::StatusState) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !f(&status.snapshot()) {
        assert!(Instant::now() < deadline, "{:?}", status.snapshot());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn the_health_loop_restarts_a_server_whose_node_turned_unhealthy_and_only_once() {
    let port = free_port();
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/stand_in_vllm.py"
    );
    let plan = LaunchPlan {
        argv: vec![
            "python3".into(),
            script.into(),
            "serve".into(),
            "/models/tiny".into(),
            "--port".into(),
            port.to_string(),
        ],
        env: vec![],
        early: false,
        ranks: vec![],
    };
    let spec = ServeSpec {
        settings: ServeSettings {
            model: "/models/tiny".into(),
            ..ServeSettings::default()
        },
        launch_params: vec![],
        health_params: vec![KeyValue::new("backoff-ms", "100")],
        probe_address: format!("127.0.0.1:{port}"),
        health_interval: Duration::from_millis(100),
        generation_interval: Duration::from_secs(60),
        health_timeout: Duration::from_secs(2),
        generation_timeout: Duration::from_secs(2),
        stop_grace: Duration::from_secs(3),
        drain_timeout: Duration::ZERO,
        ready_after_warmup: true,
        local_copy: None,
        copy_wait: Duration::ZERO,
        scale: None,
        stall: Default::default(),
        preflight: orchestrator_phases::preflight::PreflightSpec::of(&Default::default()),
        weights_wait: None,
        compile_cache_wait: None,
    };
    let nodes: Vec<Node> = ["head", "worker"]
        .iter()
        .map(|id| Node {
            id: (*id).into(),
            address: format!("10.0.0.{}", id.len()),
            alive: true,
            is_head: *id == "head",
            ..Node::default()
        })
        .collect();
    let (board_tx, board_rx) = tokio::sync::watch::channel(Arc::new(Board::default()));
    let status = Status::new();
    let (shutdown, trigger) = Shutdown::manual();
    let source = RayGcs::new("127.0.0.1:1");
    let host = policies::host(&Default::default()).unwrap();
    let mut health = policies::health(&host, &PolicyRef::parse("builtin:default"), "test").unwrap();
    let ctx = ServeContext {
        source: &source,
        status: &status,
        shutdown: &shutdown,
        health: Some(&board_rx),
        group: None,
    };
    let serving = supervise(&spec, &plan, &nodes, None, &mut health, ctx);
    let driver = async {
        wait_status(&status, |s| s.ready).await;
        let sick = Board {
            entries: [(
                "worker".to_string(),
                BoardEntry {
                    health: NodeHealth {
                        state: NodeHealthState::Unhealthy,
                        reason: "GPU 0 XID 79 (fallen off the bus)".into(),
                    },
                    report: report("worker", 1, NodeVerdict::Unhealthy("x".into())),
                },
            )]
            .into(),
            first_report_within: Duration::ZERO,
        };
        board_tx.send_replace(Arc::new(sick));
        wait_status(&status, |s| s.restarts == 1 && s.ready).await;
        let last = status.snapshot();
        // The new server runs without the unhealthy node: no second restart.
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(status.snapshot().restarts, 1, "{last:?}");
        trigger.request();
    };
    let (outcome, ()) = tokio::join!(serving, driver);
    assert_eq!(outcome, ServeOutcome::Stopped);
}
