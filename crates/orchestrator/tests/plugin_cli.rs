//! `orchestrator plugin list|check|run` as a user runs them.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use orchestrator_test_plugins as guests;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn orchestrator(args: &[&str]) -> Output {
    orchestrator_test_support::output_within(
        Command::new(env!("CARGO_BIN_EXE_orchestrator"))
            .args(args)
            .env("ORCHESTRATOR_PLUGIN_NO_CACHE", "true"),
        std::time::Duration::from_secs(120),
    )
}

fn snapshot(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/snapshots")
        .join(name)
        .display()
        .to_string()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn list_shows_each_builtin_with_world_version_and_digest() {
    let out = orchestrator(&["plugin", "list"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    for (name, world, version) in [
        ("node-count", "readiness", "0.2.0"),
        ("vllm", "launch", "0.2.0"),
        ("default", "health", "0.3.0"),
    ] {
        let line = text
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("{name} missing from:\n{text}"));
        let cols: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(cols[1], world, "{line}");
        assert_eq!(cols[2], version, "{line}");
        assert_eq!(cols[3].len(), 64, "sha256 hex: {line}");
        assert!(cols[3].chars().all(|c| c.is_ascii_hexdigit()));
    }
}

#[test]
fn check_accepts_a_policy_and_prints_what_it_is() {
    let out = orchestrator(&["plugin", "check", guests::ACCELERATOR_READINESS]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("world:   readiness"), "{text}");
    assert!(text.contains("version: 0.2.0"), "{text}");
    assert!(
        text.contains("ray-orchestrator:policy/types@0.2.0"),
        "imports listed: {text}"
    );
    assert!(
        !text.contains("note:"),
        "no note for the current version: {text}"
    );

    // The 0.1.0 build of the same example: accepted, with a one-line note.
    let out = orchestrator(&["plugin", "check", guests::v0_1::ACCELERATOR_READINESS]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("version: 0.1.0"), "{text}");
    let notes: Vec<&str> = text.lines().filter(|l| l.starts_with("note:")).collect();
    assert_eq!(notes.len(), 1, "{text}");
    assert!(notes[0].contains("contract 0.2.0 exists"), "{text}");
}

#[test]
fn run_answers_alike_through_a_0_1_0_and_a_0_2_0_build() {
    for plugin in [
        guests::ACCELERATOR_READINESS,
        guests::v0_1::ACCELERATOR_READINESS,
    ] {
        let out = orchestrator(&[
            "plugin",
            "run",
            plugin,
            "--input",
            &snapshot("readiness-worker-died.json"),
            "--param",
            "accelerator=a100",
            "--param",
            "nodes=2",
        ]);
        assert!(out.status.success(), "{plugin}: {}", stderr(&out));
        let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
        assert_eq!(
            v["wait"],
            "1 of 2 nodes with accelerator=a100 alive, 1 of 1 with a GPU; 1 such node(s) died",
            "{plugin}"
        );
    }
}

#[test]
fn check_refuses_bad_files_with_one_clear_line_and_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let core = dir.path().join("core.wasm");
    std::fs::write(&core, b"\0asm\x01\0\0\0").unwrap();
    let text = dir.path().join("policy.wasm");
    std::fs::write(&text, "not wasm").unwrap();
    let missing: PathBuf = dir.path().join("missing.wasm");
    let cases: [(&str, &str); 5] = [
        (guests::WRONG_WORLD, "does not implement any policy world"),
        (guests::WRONG_VERSION, "@0.9.0"),
        (core.to_str().unwrap(), "core WebAssembly module"),
        (text.to_str().unwrap(), "not a WebAssembly file"),
        (missing.to_str().unwrap(), "cannot read plugin file"),
    ];
    for (file, expected) in cases {
        let out = orchestrator(&["plugin", "check", file]);
        assert_eq!(out.status.code(), Some(2), "{file}: {}", stderr(&out));
        let err = stderr(&out);
        let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "one line: {err}");
        assert!(lines[0].starts_with("error: "), "{err}");
        assert!(
            err.contains(expected),
            "{file}: expected {expected:?} in {err}"
        );
    }
}

#[test]
fn run_prints_the_verdict_as_json_for_each_world() {
    let out = orchestrator(&[
        "plugin",
        "run",
        "builtin:node-count",
        "--input",
        &snapshot("readiness-missing-worker.json"),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["wait"], "2 of 3 nodes alive; missing GPUs: 1 of 4");

    let out = orchestrator(&[
        "plugin",
        "run",
        "builtin:vllm",
        "--input",
        &snapshot("launch-impossible-tp4.json"),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert!(
        v["error"]["impossible-layout"]
            .as_str()
            .unwrap()
            .contains("needs 4 GPUs"),
        "{v}"
    );

    let out = orchestrator(&[
        "plugin",
        "run",
        "builtin:default",
        "--input",
        &snapshot("health-server-exited.json"),
        "--param",
        "max-restarts=1",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["shutdown"]["exit-code"], 1, "{v}");

    // A file plugin: the world is found from its exports.
    let out = orchestrator(&[
        "plugin",
        "run",
        guests::ACCELERATOR_READINESS,
        "--input",
        &snapshot("readiness-ready.json"),
        "--param",
        "accelerator=a100",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "\"ready\"");
}

#[test]
fn run_names_the_bad_field_of_an_input() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("bad.json");
    std::fs::write(&input, r#"{"nodes": [], "expected": {"node-count": 3}}"#).unwrap();
    let out = orchestrator(&[
        "plugin",
        "run",
        "builtin:node-count",
        "--input",
        input.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains("unknown field `node-count`"), "{err}");
    assert!(err.contains("kebab-case"), "{err}");

    let out = orchestrator(&[
        "plugin",
        "run",
        "builtin:node-count",
        "--input",
        &snapshot("readiness-ready.json"),
        "--param",
        "nodes",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("is not KEY=VALUE"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn run_reports_a_runaway_plugin_and_exits_1() {
    let out = orchestrator(&[
        "plugin",
        "run",
        guests::INFINITE_LOOP,
        "--input",
        &snapshot("readiness-ready.json"),
        "--call-timeout-ms",
        "30",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("CPU budget of about 30 ms"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn run_refuses_missing_fields_and_negative_gpus() {
    let dir = tempfile::tempdir().unwrap();
    let full: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(snapshot("readiness-ready.json")).unwrap())
            .unwrap();
    // A node without `alive`: once silently false, now an error.
    let mut missing = full.clone();
    missing["nodes"][0].as_object_mut().unwrap().remove("alive");
    let mut negative = full.clone();
    negative["nodes"][1]["resources"]["gpu"] = serde_json::json!(-2.0);
    for (name, input, want) in [
        ("missing.json", missing, "missing field `alive`"),
        ("negative.json", negative, "nodes[1].resources.gpu is -2"),
    ] {
        let path = dir.path().join(name);
        std::fs::write(&path, input.to_string()).unwrap();
        let out = orchestrator(&[
            "plugin",
            "run",
            "builtin:node-count",
            "--input",
            path.to_str().unwrap(),
        ]);
        assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
        assert!(stderr(&out).contains(want), "{name}: {}", stderr(&out));
        assert!(
            stderr(&out).contains(name),
            "names the file: {}",
            stderr(&out)
        );
    }
}

#[test]
fn run_refuses_an_unexecutable_plan_naming_plugin_and_field() {
    let out = orchestrator(&[
        "plugin",
        "run",
        guests::HOSTILE_LAUNCH,
        "--input",
        &snapshot("launch-two-gpu-nodes.json"),
        "--param",
        "env-key=A=B",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains(guests::HOSTILE_LAUNCH) && err.contains("`env[0].key` \"A=B\" contains `=`"),
        "{err}"
    );
    assert!(stdout(&out).is_empty(), "nothing printed: {}", stdout(&out));
}

fn cases_dir() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/accelerator-readiness/cases")
        .display()
        .to_string()
}

#[test]
fn test_runs_the_examples_cases_through_the_real_host() {
    let out = orchestrator(&[
        "plugin",
        "test",
        guests::ACCELERATOR_READINESS,
        &cases_dir(),
    ]);
    let text = stdout(&out);
    assert!(out.status.success(), "{text}{}", stderr(&out));
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 5, "{text}");
    assert!(lines[..4].iter().all(|l| l.starts_with("ok    ")), "{text}");
    assert!(
        lines[0].contains("missing-parameter.json (the required parameter is missing"),
        "cases run in name order, with their description: {text}"
    );
    assert_eq!(lines[4], "4 passed, 0 failed");
}

#[test]
fn test_reports_a_wrong_answer_and_a_trapping_call_as_failures_with_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let ready = snapshot("readiness-ready.json");
    std::fs::write(
        dir.path().join("a-wrong.json"),
        format!(
            r#"{{"input": "{ready}", "params": {{"accelerator": "a100"}}, "expect": {{"wait": "never"}}}}"#
        ),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("b-right.json"),
        format!(r#"{{"input": "{ready}", "params": {{"accelerator": "a100", "min-gpu-nodes": 2}}, "expect": "ready"}}"#),
    )
    .unwrap();
    let out = orchestrator(&[
        "plugin",
        "test",
        guests::ACCELERATOR_READINESS,
        &dir.path().display().to_string(),
    ]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}{}", stderr(&out));
    assert!(
        text.contains("FAIL  a-wrong.json: at /: expected {\"wait\":\"never\"}, got \"ready\""),
        "{text}"
    );
    assert!(text.contains("ok    b-right.json"), "{text}");
    assert!(text.ends_with("1 passed, 1 failed\n"), "{text}");

    // A plugin whose call traps fails its case; the run goes on.
    let out = orchestrator(&[
        "plugin",
        "test",
        guests::PANIC,
        &dir.path().display().to_string(),
    ]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}{}", stderr(&out));
    assert!(
        text.contains("FAIL  a-wrong.json: the plugin failed:"),
        "{text}"
    );
    assert!(text.ends_with("0 passed, 2 failed\n"), "{text}");
}

#[test]
fn test_refuses_bad_input_with_exit_2_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let run = |dir: &Path| {
        orchestrator(&[
            "plugin",
            "test",
            guests::ACCELERATOR_READINESS,
            &dir.display().to_string(),
        ])
    };
    // No cases.
    let out = run(dir.path());
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("holds no *.json case files"),
        "{}",
        stderr(&out)
    );
    // A case without `expect`.
    std::fs::write(dir.path().join("c.json"), r#"{"input": {}}"#).unwrap();
    let out = run(dir.path());
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("c.json is not a case") && err.contains("expect"),
        "{err}"
    );
    // An input the world cannot read.
    std::fs::write(
        dir.path().join("c.json"),
        r#"{"input": {"nodes": 3}, "expect": "ready"}"#,
    )
    .unwrap();
    let out = run(dir.path());
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("is not a valid cluster-snapshot"),
        "{}",
        stderr(&out)
    );
    assert!(stdout(&out).is_empty(), "nothing ran: {}", stdout(&out));
}
