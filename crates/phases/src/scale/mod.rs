//! Load-driven capacity, decided by a policy and carried out by the
//! autoscalers that exist: while the head serves, vLLM's own `/metrics`
//! are read at an interval ([`load`]), a window of samples is kept
//! ([`Window`]), the scale policy recommends the replicas the load needs,
//! and the answer and its inputs go to `/status` and `/metrics`
//! (`orchestrator_desired_replicas`, `orchestrator_load_*`) for HPA, KEDA
//! or AIBrix's PodAutoscaler to act on. The orchestrator never scales
//! anything itself. Entry point: [`recommend_while_serving`].

pub mod load;

use crate::config::{PoliciesConfig, ScaleConfig};
use crate::endpoints::{ScaleView, Status};
use crate::probe;
use load::{Counters, LoadReader};
use orchestrator_domain::{KeyValue, LoadSample, ScaleInput, ScaleRecommendation};
use orchestrator_policy_host::{ScalePolicy, World};
use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::{Duration, Instant};

/// What the recommendation works with.
#[derive(Debug, Clone, PartialEq)]
pub struct ScaleSpec {
    /// Between two samples (and policy calls).
    pub interval: Duration,
    /// How much history the policy sees.
    pub window: Duration,
    /// The least replicas an answer may name.
    pub min_replicas: u32,
    /// The most replicas an answer may name.
    pub max_replicas: u32,
    /// The replicas the load is spread over now.
    pub current_replicas: u32,
    /// The scale policy's parameters.
    pub params: Vec<KeyValue>,
}

impl ScaleSpec {
    /// The spec of `[scale]`, none when it is not enabled.
    pub fn from_config(scale: &ScaleConfig, policies: &PoliciesConfig) -> Option<Self> {
        scale.enabled.then(|| Self {
            interval: Duration::from_millis(scale.interval_ms.max(10)),
            window: Duration::from_secs(scale.window_seconds),
            min_replicas: scale.min_replicas,
            max_replicas: scale.max_replicas,
            current_replicas: scale.current_replicas,
            params: policies.scale.params(),
        })
    }
}

/// The window of samples and the previous answer: everything a stateless
/// policy needs to be stable, kept by the host. Time is the samples' own
/// (`at-ms`), so a recorded trace replays exactly.
#[derive(Debug)]
pub struct Window {
    spec: ScaleSpec,
    samples: VecDeque<LoadSample>,
    previous: Option<u32>,
    changed_at_ms: u64,
}

impl Window {
    /// An empty window for `spec`.
    pub fn new(spec: ScaleSpec) -> Self {
        Self {
            spec,
            samples: VecDeque::new(),
            previous: None,
            changed_at_ms: 0,
        }
    }

    /// The spec it keeps.
    pub fn spec(&self) -> &ScaleSpec {
        &self.spec
    }

    /// Sets the replicas there are now (a platform read them).
    pub fn set_current(&mut self, replicas: u32) {
        self.spec.current_replicas = replicas;
    }

    /// Adds a sample; drops those older than the window (and any that
    /// would go back in time).
    pub fn push(&mut self, sample: LoadSample) {
        if self
            .samples
            .back()
            .is_some_and(|last| sample.at_ms < last.at_ms)
        {
            return;
        }
        let window = self.spec.window.as_millis() as u64;
        let from = sample.at_ms.saturating_sub(window);
        self.samples.push_back(sample);
        while self.samples.front().is_some_and(|s| s.at_ms < from) {
            self.samples.pop_front();
        }
    }

    /// The newest sample.
    pub fn newest(&self) -> Option<&LoadSample> {
        self.samples.back()
    }

    /// The policy's input at `now_ms` (the samples' clock).
    pub fn input(&self, now_ms: u64) -> ScaleInput {
        ScaleInput {
            samples: self.samples.iter().cloned().collect(),
            window_ms: self.spec.window.as_millis() as u64,
            interval_ms: self.spec.interval.as_millis() as u64,
            current_replicas: self.spec.current_replicas,
            min_replicas: self.spec.min_replicas,
            max_replicas: self.spec.max_replicas,
            previous_desired: self.previous,
            since_change_ms: now_ms.saturating_sub(self.changed_at_ms),
        }
    }

    /// Records an answer given at `now_ms`; true when it changed.
    pub fn answered(&mut self, desired: u32, now_ms: u64) -> bool {
        let changed = self.previous != Some(desired);
        if changed {
            self.previous = Some(desired);
            self.changed_at_ms = now_ms;
        }
        changed
    }

    /// Asks `policy` about the window at `now_ms` and records the answer.
    /// Returns it and whether it changed.
    pub fn recommend(
        &mut self,
        policy: &mut ScalePolicy,
        now_ms: u64,
    ) -> Result<(ScaleRecommendation, bool), orchestrator_policy_host::PluginError> {
        let answer = policy.recommend(&self.input(now_ms), &self.spec.params)?;
        let changed = self.answered(answer.desired_replicas, now_ms);
        Ok((answer, changed))
    }
}

/// Samples the server at `address` every interval and asks `policy`,
/// publishing each answer in `status`; runs until dropped (the serve
/// phase runs it beside the health loop). A server that does not answer
/// yet (starting, restarting) is skipped; a failing policy keeps the
/// previous answer.
pub(crate) async fn recommend_while_serving(
    spec: &ScaleSpec,
    policy: &mut ScalePolicy,
    address: &str,
    status: &Status,
) -> Infallible {
    let started = Instant::now();
    let mut window = Window::new(spec.clone());
    let mut reader = LoadReader::default();
    let mut tick = tokio::time::interval(spec.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let timeout = spec.interval.min(Duration::from_secs(2));
    let mut last_problem: Option<String> = None;
    let policy_name = policy.name().to_string();
    let mut view = initial_view(spec, &policy_name);
    status.scale(view.clone());
    tracing::info!(
        policy = %policy_name,
        interval_ms = spec.interval.as_millis() as u64,
        window_s = spec.window.as_secs(),
        "recommending replicas from the serving load"
    );
    loop {
        tick.tick().await;
        let now_ms = started.elapsed().as_millis() as u64;
        let counters = probe::http(address, "GET", "/metrics", None, timeout)
            .await
            .and_then(|a| match a.status {
                200 => Counters::of(&a.body).ok_or(probe::HttpError::NotVllm),
                status => Err(probe::HttpError::Status {
                    path: "/metrics".into(),
                    status,
                }),
            });
        let counters = match counters {
            Ok(c) => c,
            Err(e) => {
                let e = e.to_string();
                if last_problem.as_deref() != Some(e.as_str()) {
                    tracing::info!("no load sample: {e}");
                    last_problem = Some(e.clone());
                }
                reader.reset();
                view.error = Some(format!("no load sample: {e}"));
                status.scale(view.clone());
                continue;
            }
        };
        last_problem = None;
        let sample = reader.sample(now_ms, counters);
        window.push(sample);
        let asked = Instant::now();
        let answer = window.recommend(policy, now_ms);
        status.policy_call(World::Scale, asked.elapsed().as_secs_f64());
        view.samples = window.samples.len() as u32;
        view.last_sample = window.newest().cloned();
        match answer {
            Ok((recommendation, changed)) => {
                if changed {
                    tracing::info!(
                        desired = recommendation.desired_replicas,
                        "scale recommendation: {}",
                        recommendation.reason
                    );
                }
                view.desired_replicas = Some(recommendation.desired_replicas);
                view.reason = recommendation.reason;
                view.error = None;
            }
            Err(e) => {
                tracing::error!("scale policy failed: {e}");
                view.error = Some(format!("scale policy failed: {e}"));
            }
        }
        status.scale(view.clone());
    }
}

/// What `/status` shows of the scale loop before any sample.
fn initial_view(spec: &ScaleSpec, policy: &str) -> ScaleView {
    ScaleView {
        policy: policy.to_string(),
        desired_replicas: None,
        reason: "no load sample yet".into(),
        current_replicas: spec.current_replicas,
        min_replicas: spec.min_replicas,
        max_replicas: spec.max_replicas,
        samples: 0,
        window_seconds: spec.window.as_secs(),
        last_sample: None,
        error: None,
    }
}
