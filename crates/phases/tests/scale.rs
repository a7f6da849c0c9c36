//! The built-in scale policy through the real plugin host, fed by the
//! host's own [`Window`]: a load trace recorded from real vLLM (the CPU
//! build serving the tiny model, sampled by `orchestrator local --scale`
//! at 1 s), and made-up loads that sit on the edge of the target.
//! Checked: the recommendation reacts to a burst within one interval,
//! goes down only after a whole window of less load, and does not flap.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use orchestrator_domain::{KeyValue, LoadSample};
use orchestrator_phases::policies::{self, PolicyRef};
use orchestrator_phases::scale::{ScaleSpec, Window};
use orchestrator_policy_host::ScalePolicy;
use std::time::Duration;

fn policy() -> ScalePolicy {
    let host = policies::host(&Default::default()).unwrap();
    policies::scale(&host, &PolicyRef::parse("builtin:default"), "test").unwrap()
}

fn spec(interval_ms: u64, window_ms: u64, target: f64) -> ScaleSpec {
    ScaleSpec {
        interval: Duration::from_millis(interval_ms),
        window: Duration::from_millis(window_ms),
        min_replicas: 1,
        max_replicas: 8,
        current_replicas: 1,
        params: vec![KeyValue::new(
            "target-requests-per-replica",
            target.to_string(),
        )],
    }
}

fn sample(at_ms: u64, running: f64, waiting: f64) -> LoadSample {
    LoadSample {
        at_ms,
        running,
        waiting,
        kv_cache_usage: 0.1,
        generation_tokens_per_second: 0.0,
        prompt_tokens_per_second: 0.0,
    }
}

/// Replays `samples` and returns (at-ms, desired) after each.
fn replay(
    window: &mut Window,
    policy: &mut ScalePolicy,
    samples: &[LoadSample],
) -> Vec<(u64, u32)> {
    samples
        .iter()
        .map(|s| {
            window.push(s.clone());
            let (answer, _) = window.recommend(policy, s.at_ms).unwrap();
            (s.at_ms, answer.desired_replicas)
        })
        .collect()
}

/// The changes of a series of answers: (at-ms, from, to).
fn changes(answers: &[(u64, u32)]) -> Vec<(u64, u32, u32)> {
    answers
        .windows(2)
        .filter(|w| w[0].1 != w[1].1)
        .map(|w| (w[1].0, w[0].1, w[1].1))
        .collect()
}

/// Every scale-down comes a whole window after the change before it
/// (no up-down-up inside a window).
fn assert_no_flapping(answers: &[(u64, u32)], window_ms: u64) {
    let changes = changes(answers);
    for pair in changes.windows(2) {
        let ((t0, _, _), (t1, from, to)) = (pair[0], pair[1]);
        if to < from {
            assert!(
                t1 - t0 >= window_ms,
                "scaled down {from} -> {to} at {t1} ms, {} ms after the previous change: {changes:?}",
                t1 - t0
            );
        }
    }
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
#[allow(dead_code)] // `recorded` says how the trace was made.
struct Trace {
    recorded: String,
    interval_ms: u64,
    window_ms: u64,
    target_requests_per_replica: f64,
    samples: Vec<LoadSample>,
}

#[test]
fn the_recorded_vllm_burst_is_followed_within_an_interval_and_released_after_a_window() {
    let trace: Trace = serde_json::from_str(include_str!("fixtures/vllm-load-trace.json")).unwrap();
    let target = trace.target_requests_per_replica;
    let mut window = Window::new(spec(trace.interval_ms, trace.window_ms, target));
    let answers = replay(&mut window, &mut policy(), &trace.samples);
    let requests = |s: &LoadSample| s.running + s.waiting;
    // The burst: the first sample whose load is well over one replica's.
    let burst = trace
        .samples
        .iter()
        .position(|s| requests(s) > target * 1.1)
        .expect("the trace has a burst");
    let at_burst = answers[burst];
    assert!(
        at_burst.1 >= 2,
        "at the burst's first sample ({} requests) the answer was {}",
        requests(&trace.samples[burst]),
        at_burst.1
    );
    let peak = answers.iter().map(|a| a.1).max().unwrap();
    let highest = trace.samples.iter().map(requests).fold(0.0, f64::max);
    assert_eq!(
        peak,
        ((highest / target).ceil() as u32).clamp(1, 8),
        "the peak answer matches the busiest sample ({highest} requests)"
    );
    // The quiet end: back to 1, but not before a whole window of quiet.
    let last_busy = trace
        .samples
        .iter()
        .rposition(|s| requests(s) > target * 1.1)
        .unwrap();
    let quiet_from = trace.samples[last_busy].at_ms;
    let back_to_one = answers
        .iter()
        .find(|(at, d)| *at > quiet_from && *d == 1)
        .expect("the answer returns to 1 after the load ends");
    assert!(
        back_to_one.0 - quiet_from >= trace.window_ms,
        "back to 1 at {} ms, {} ms after the last busy sample: before a whole window",
        back_to_one.0,
        back_to_one.0 - quiet_from
    );
    assert!(
        back_to_one.0 - quiet_from <= trace.window_ms + 3 * trace.interval_ms,
        "back to 1 only {} ms after the last busy sample",
        back_to_one.0 - quiet_from
    );
    assert_no_flapping(&answers, trace.window_ms);
    eprintln!("changes: {:?}", changes(&answers));
}

#[test]
fn a_load_wobbling_around_the_target_does_not_flap() {
    // 2 replicas' worth of load (target 4 each) wobbling within the 10 %
    // tolerance every sample for 5 minutes: no change at all.
    let mut window = Window::new(spec(1000, 30_000, 4.0));
    window.set_current(2);
    let samples: Vec<_> = (0..300u64)
        .map(|i| sample(i * 1000, [3.7, 4.3, 3.8, 4.2, 4.0][i as usize % 5], 0.0))
        .collect();
    let answers = replay(&mut window, &mut policy(), &samples);
    assert!(
        changes(&answers).is_empty(),
        "a load within the tolerance changed the answer: {:?}",
        changes(&answers)
    );
    // Wobbling wider (3 to 5 a replica): up once to cover the peaks, and
    // never down while the peaks keep coming.
    let mut window = Window::new(spec(1000, 30_000, 4.0));
    window.set_current(2);
    let samples: Vec<_> = (0..300u64)
        .map(|i| sample(i * 1000, if i % 4 == 3 { 5.0 } else { 3.0 }, 0.0))
        .collect();
    let answers = replay(&mut window, &mut policy(), &samples);
    assert_eq!(changes(&answers), vec![(3_000, 2, 3)]);
}

#[test]
fn spikes_shorter_than_the_up_window_are_ignored_and_longer_ones_are_not() {
    let mut params = spec(1000, 30_000, 4.0);
    params
        .params
        .push(KeyValue::new("scale-up-window-ms", "3000"));
    let mut window = Window::new(params);
    // 2-sample spikes to 12 requests every 10 s: never 3 s long.
    let spiky: Vec<_> = (0..60u64)
        .map(|i| sample(i * 1000, if i % 10 < 2 { 12.0 } else { 2.0 }, 0.0))
        .collect();
    let answers = replay(&mut window, &mut policy(), &spiky);
    assert!(
        answers.iter().all(|a| a.1 == 1),
        "short spikes scaled up: {:?}",
        changes(&answers)
    );
    // Then a lasting burst: up once it has lasted the up window.
    let lasting: Vec<_> = (60..70u64).map(|i| sample(i * 1000, 12.0, 0.0)).collect();
    let answers = replay(&mut window, &mut policy(), &lasting);
    let up = answers.iter().find(|a| a.1 == 3).expect("scaled up to 3");
    assert_eq!(up.0, 63_000, "up after 3 s of load: {answers:?}");
}

#[test]
fn the_window_drops_old_samples_and_tells_the_time_since_the_last_change() {
    let mut window = Window::new(spec(1000, 5_000, 4.0));
    for i in 0..10u64 {
        window.push(sample(i * 1000, 1.0, 0.0));
    }
    // An out-of-order sample is not taken.
    window.push(sample(3_000, 50.0, 0.0));
    let input = window.input(9_000);
    assert_eq!(input.samples.first().unwrap().at_ms, 4_000);
    assert_eq!(input.samples.len(), 6);
    assert_eq!(input.previous_desired, None);
    assert!(window.answered(3, 9_000));
    assert!(!window.answered(3, 12_000));
    let input = window.input(12_000);
    assert_eq!(input.previous_desired, Some(3));
    assert_eq!(input.since_change_ms, 3_000);
}

#[test]
fn a_full_kv_cache_asks_for_one_more_replica() {
    let mut window = Window::new(spec(1000, 10_000, 8.0));
    let mut s = sample(0, 3.0, 0.0);
    s.kv_cache_usage = 0.95;
    let answers = replay(&mut window, &mut policy(), &[s]);
    assert_eq!(answers[0].1, 2);
}
