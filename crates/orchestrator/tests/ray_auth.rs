//! Ray's token authentication (`RAY_AUTH_MODE=token`) against real Ray
//! 2.60: a cluster formed by `orchestrator local` with a token, then
//! `orchestrator wait` with the token (as a value and as a file), with a
//! wrong one and with none. A canary token is searched for in every
//! output and in `/status`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use orchestrator_test_support::*;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

const TOKEN: &str = "canarytoken0123456789abcdef0123456";

fn orchestrator() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_orchestrator"));
    c.env("ORCHESTRATOR_RAY_BIN", ray_bin())
        .env("ORCHESTRATOR_PLUGIN_NO_CACHE", "true")
        .env_remove("RAY_AUTH_MODE")
        .env_remove("RAY_AUTH_TOKEN")
        .env_remove("RAY_AUTH_TOKEN_PATH");
    c
}

fn wait(address: &str, timeout: u64, env: &[(&str, &str)]) -> Output {
    let mut cmd = orchestrator();
    cmd.args(["wait", "--address", address, "--nodes", "2"])
        .args(["--timeout", &timeout.to_string()]);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_with_deadline(child, Duration::from_secs(timeout + 60))
}

#[test]
#[ignore = "needs Ray 2.60: run by `cargo xtask test`"]
fn wait_and_local_work_with_rays_token_and_name_a_wrong_or_missing_one() {
    let (gcs, agent, metrics, endpoints) = (free_port(), free_port(), free_port(), free_port());
    let temp = format!("/tmp/ray-t{gcs}");
    let address = format!("127.0.0.180:{gcs}");
    let mut local = orchestrator()
        .args(["local", "--workers", "1", "--head-ip", "127.0.0.180"])
        .args([
            "--gcs-port",
            &gcs.to_string(),
            "--agent-port",
            &agent.to_string(),
        ])
        .args(["--metrics-port", &metrics.to_string(), "--temp-dir", &temp])
        .args(["--memory-mib", "500", "--object-store-mib", "80"])
        .args(["--endpoints-port", &endpoints.to_string()])
        .env("RAY_AUTH_MODE", "token")
        .env("RAY_AUTH_TOKEN", TOKEN)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let _guard = Guard(vec![local.id() as i32]);
    let local_log = Captured::stderr_of(&mut local);

    // The token as a value: ready.
    let ok = wait(
        &address,
        120,
        &[("RAY_AUTH_MODE", "token"), ("RAY_AUTH_TOKEN", TOKEN)],
    );
    let (stdout, stderr) = text(&ok);
    assert!(ok.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.starts_with("ready after"), "{stdout}");

    // The token as a file (a mounted Secret, with its newline): ready.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, format!("{TOKEN}\n")).unwrap();
    let path = file.display().to_string();
    let ok = wait(
        &address,
        30,
        &[("RAY_AUTH_MODE", "token"), ("RAY_AUTH_TOKEN_PATH", &path)],
    );
    let (stdout, stderr) = text(&ok);
    assert!(ok.status.success(), "{stdout}\n{stderr}");

    // A wrong token: refused, named as such with the fix, never "is the
    // head running?".
    let wrong = wait(
        &address,
        3,
        &[
            ("RAY_AUTH_MODE", "token"),
            ("RAY_AUTH_TOKEN", "not-the-token"),
        ],
    );
    let (_, stderr) = text(&wrong);
    assert_eq!(wrong.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("refused this orchestrator's credentials"),
        "{stderr}"
    );
    assert!(
        stderr.contains("the token from RAY_AUTH_TOKEN is not the cluster's"),
        "{stderr}"
    );
    assert!(!stderr.contains("head is running"), "{stderr}");
    assert!(
        !stderr.contains("not-the-token"),
        "the wrong token itself is not printed: {stderr}"
    );

    // No token at all: the fix says to turn token mode on.
    let none = wait(&address, 3, &[]);
    let (_, stderr) = text(&none);
    assert_eq!(none.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("RAY_AUTH_MODE=token"), "{stderr}");

    // Token mode with an unreadable file: refused before anything (exit 2).
    let bad = wait(
        &address,
        3,
        &[
            ("RAY_AUTH_MODE", "token"),
            ("RAY_AUTH_TOKEN_PATH", "/nonexistent/token"),
        ],
    );
    let (_, stderr) = text(&bad);
    assert_eq!(bad.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("RAY_AUTH_TOKEN_PATH=/nonexistent/token"),
        "{stderr}"
    );

    // Node-health reports through the GCS with the token: signed, read in
    // pages past gRPC's 4 MiB, and forged, misfiled or oversized entries
    // ignored without hiding the others.
    node_health_reports_are_signed_paged_and_forgeries_ignored(&address);

    // The canary appears in no output and no endpoint.
    let status = http_get(&format!("127.0.0.1:{endpoints}"), "/status");
    let metrics_text = http_get(&format!("127.0.0.1:{endpoints}"), "/metrics");
    assert!(
        status.contains("ready") || status.contains("serving"),
        "{status}"
    );
    for (what, text) in [("/status", &status), ("/metrics", &metrics_text)] {
        assert!(!text.contains(TOKEN), "the token is in {what}");
    }

    signal(local.id() as i32, Sig::TERM);
    let out = wait_with_deadline(local, Duration::from_secs(60));
    let (stdout, _) = text(&out);
    assert!(out.status.success(), "{stdout}\n{}", local_log.text());
    assert!(
        !stdout.contains(TOKEN) && !local_log.text().contains(TOKEN),
        "the token was printed"
    );
    assert_nothing_left(&[&temp, "127.0.0.180", "127.0.0.181"]);
}

fn report(node_id: &str, seq: u64, padding: usize) -> orchestrator_domain::HealthReport {
    orchestrator_domain::HealthReport {
        node_id: node_id.to_string(),
        seq,
        interval_ms: 1000,
        written_at_ms: now_ms(),
        verdict: orchestrator_domain::NodeVerdict::Degraded("x".repeat(padding)),
        readings: orchestrator_domain::NodeReadings::default(),
        local_copy: None,
    }
}

fn node_health_reports_are_signed_paged_and_forgeries_ignored(address: &str) {
    use orchestrator_phases::membership::{GcsHealthStore, HealthStore, KV_NAMESPACE, RayAuth};
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let auth = RayAuth::token(TOKEN, "test").unwrap();
        let store = GcsHealthStore::with_auth(address, auth.clone());
        // 120 reports of ~40 KB: 4.8 MB, more than one gRPC message holds.
        for i in 0..120 {
            store
                .publish(&report(&format!("node-{i:03}"), 1, 40_000))
                .await
                .unwrap();
        }
        let raw = orchestrator_phases::membership::GcsClient::connect_with(
            address,
            Duration::from_secs(5),
            auth.clone(),
        )
        .await
        .unwrap();
        let put = |key: &str, value: Vec<u8>| {
            let raw = raw.clone();
            let key = key.to_string();
            async move { raw.kv_put(KV_NAMESPACE, &key, value).await.unwrap() }
        };
        // Forged: a report for node-900 with a made-up signature.
        let inner = serde_json::to_string(&report("node-900", 1, 10)).unwrap();
        let forged =
            serde_json::json!({"node-id": "node-900", "mac": "00".repeat(32), "report": inner});
        put("node-health/node-900", forged.to_string().into_bytes()).await;
        // Unsigned, as a Ray job without the orchestrator's format writes it.
        put("node-health/node-901", inner.clone().into_bytes()).await;
        // Oversized: 5 MiB under one key.
        put("node-health/node-902", vec![b'{'; 5 << 20]).await;
        let reports = store.reports().await.unwrap();
        // Ours, and the cluster's own nodes' (signed by their reporters).
        let ids: Vec<&str> = reports.iter().map(|r| r.node_id.as_str()).collect();
        let ours = ids.iter().filter(|id| id.starts_with("node-")).count();
        assert_eq!(ours, 120, "{:?}", &ids[..ids.len().min(5)]);
        assert!(!ids.iter().any(|id| id.starts_with("node-90")), "{ids:?}");
        assert_eq!(
            ids.len(),
            122,
            "the two real nodes' own reports are read too"
        );
        // Each ignored entry is handed out once, for one Event each.
        let mut rejected = store.rejected();
        rejected.sort();
        assert_eq!(rejected.len(), 3, "{rejected:#?}");
        for (why, node) in rejected.iter().zip(["node-900", "node-901", "node-902"]) {
            assert!(why.contains(node), "{why}");
        }
        assert!(store.rejected().is_empty());
        store.reports().await.unwrap();
        assert!(store.rejected().is_empty(), "once per entry");
        // The autoscaler request with the token: written and read back.
        let bundle: orchestrator_phases::membership::Bundle =
            [("CPU".to_string(), 1.0)].into_iter().collect();
        raw.request_resources(std::slice::from_ref(&bundle))
            .await
            .unwrap();
        assert_eq!(raw.requested_resources().await.unwrap(), vec![bundle]);
        raw.request_resources(&[]).await.unwrap();
        // Without the token the store is refused, named as such.
        let open = GcsHealthStore::with_auth(address, RayAuth::disabled());
        let refused = open.reports().await.unwrap_err();
        // The GCS's error is kept as the cause, not flattened to text.
        assert!(
            matches!(
                refused,
                orchestrator_phases::membership::SourceError::Gcs(_)
            ),
            "{refused:?}"
        );
        assert!(
            refused
                .to_string()
                .contains("refused this orchestrator's credentials"),
            "{refused}"
        );
    });
}
