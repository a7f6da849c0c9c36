//! Kubernetes Events on the head pod: each phase change, failure and
//! restart, so `kubectl describe pod` and `kubectl get events` tell the
//! story.
//!
//! Rate-limited so a flapping state cannot flood the API server:
//! - an Event equal to one sent in the last ten minutes (same type, reason
//!   and message) is not created again; its `count` and `lastTimestamp` are
//!   patched, as the kubelet does;
//! - every request (create or patch) takes a token from a bucket of
//!   `event-burst` tokens refilled one per `event-interval-seconds`; with no
//!   token the Event is dropped and counted, and the next one sent says how
//!   many were dropped.
//!
//! Errors are logged (once per distinct error) and never stop anything.

use crate::api::{Access, KubeContext, explain, timed};
use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use orchestrator_domain::{Event as OrchestratorEvent, EventKind, EventReason};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// The component Events are reported as.
pub const COMPONENT: &str = "ray-orchestrator";
/// How long an Event is patched instead of created again.
pub const AGGREGATION_WINDOW: Duration = Duration::from_secs(600);
/// Longest message sent (the API server caps Event messages).
const MAX_MESSAGE: usize = 1024;

/// A token bucket.
#[derive(Debug, Clone)]
pub struct RateLimit {
    burst: f64,
    per_token: Duration,
    tokens: f64,
    last: Instant,
}

impl RateLimit {
    /// `burst` tokens at once, then one per `per_token`.
    pub fn new(burst: u32, per_token: Duration, now: Instant) -> Self {
        Self {
            burst: f64::from(burst.max(1)),
            per_token: per_token.max(Duration::from_millis(1)),
            tokens: f64::from(burst.max(1)),
            last: now,
        }
    }

    /// Takes a token if there is one.
    pub fn try_take(&mut self, now: Instant) -> bool {
        let refill =
            now.saturating_duration_since(self.last).as_secs_f64() / self.per_token.as_secs_f64();
        self.tokens = (self.tokens + refill).min(self.burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// What the recorder does with one event, decided without I/O.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Create a new Event with this message.
    Create {
        /// The message, with the count of dropped Events appended.
        message: String,
    },
    /// Patch the Event `name` to `count`.
    Patch {
        /// The Event's name.
        name: String,
        /// The new count.
        count: i32,
    },
    /// Dropped by the rate limit.
    Drop,
}

#[derive(Debug, Clone)]
struct Sent {
    name: String,
    count: i32,
    at: Instant,
}

/// The aggregation and rate-limit decisions.
#[derive(Debug)]
pub struct Aggregator {
    limit: RateLimit,
    sent: HashMap<(EventReason, String), Sent>,
    dropped: u32,
}

impl Aggregator {
    /// A fresh aggregator.
    pub fn new(limit: RateLimit) -> Self {
        Self {
            limit,
            sent: HashMap::new(),
            dropped: 0,
        }
    }

    /// Events dropped so far and not yet reported.
    pub fn dropped(&self) -> u32 {
        self.dropped
    }

    /// Decides what to do with `event` at `now`.
    pub fn decide(&mut self, event: &OrchestratorEvent, now: Instant) -> Action {
        self.sent
            .retain(|_, s| now.saturating_duration_since(s.at) < AGGREGATION_WINDOW);
        if !self.limit.try_take(now) {
            self.dropped += 1;
            return Action::Drop;
        }
        let key = (event.reason, event.message.clone());
        if let Some(sent) = self.sent.get_mut(&key) {
            sent.count += 1;
            sent.at = now;
            return Action::Patch {
                name: sent.name.clone(),
                count: sent.count,
            };
        }
        let mut message = event.message.clone();
        if self.dropped > 0 {
            message.push_str(&format!(
                " ({} earlier event{} dropped by the rate limit)",
                self.dropped,
                if self.dropped == 1 { " was" } else { "s were" }
            ));
            self.dropped = 0;
        }
        Action::Create {
            message: truncate(message),
        }
    }

    /// Remembers that `event` was created as `name`.
    pub fn created(&mut self, event: &OrchestratorEvent, name: String, now: Instant) {
        self.sent.insert(
            (event.reason, event.message.clone()),
            Sent {
                name,
                count: 1,
                at: now,
            },
        );
    }
}

fn truncate(message: String) -> String {
    crate::pods::shorten(message, MAX_MESSAGE)
}

/// The Event object for `event`, on the pod in `context`.
pub fn event_object(
    context: &KubeContext,
    event: &OrchestratorEvent,
    message: &str,
    now: Timestamp,
) -> Event {
    let name = format!(
        "{}.{:x}",
        context.pod_name,
        now.as_nanosecond().unsigned_abs()
    );
    Event {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: Some(context.namespace.clone()),
            ..ObjectMeta::default()
        },
        involved_object: ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            name: Some(context.pod_name.clone()),
            namespace: Some(context.namespace.clone()),
            uid: context.pod_uid.clone(),
            ..ObjectReference::default()
        },
        reason: Some(event.reason.name().to_string()),
        message: Some(message.to_string()),
        type_: Some(
            match event.kind() {
                EventKind::Normal => "Normal",
                EventKind::Warning => "Warning",
            }
            .into(),
        ),
        count: Some(1),
        first_timestamp: Some(Time(now)),
        last_timestamp: Some(Time(now)),
        source: Some(EventSource {
            component: Some(COMPONENT.into()),
            host: None,
        }),
        reporting_component: Some(COMPONENT.into()),
        reporting_instance: Some(context.pod_name.clone()),
        ..Event::default()
    }
}

/// Records `events` as Kubernetes Events until the channel closes.
pub async fn record_events(
    context: KubeContext,
    mut events: mpsc::Receiver<OrchestratorEvent>,
    limit: RateLimit,
) {
    let api: Api<Event> = Api::namespaced(context.client.clone(), &context.namespace);
    let mut aggregator = Aggregator::new(limit);
    let mut last_error: Option<String> = None;
    while let Some(event) = events.recv().await {
        let now = Instant::now();
        let result = match aggregator.decide(&event, now) {
            Action::Drop => {
                tracing::debug!(reason = %event.reason, "event dropped by the rate limit");
                continue;
            }
            Action::Create { message } => {
                let object = event_object(&context, &event, &message, Timestamp::now());
                let name = object.metadata.name.clone().unwrap_or_default();
                let r = timed(&context.server, "create event", async {
                    api.create(&PostParams::default(), &object)
                        .await
                        .map_err(|e| {
                            explain(
                                e,
                                Access::core("create", "events"),
                                &context.namespace,
                                &name,
                                &context.server,
                            )
                        })
                })
                .await;
                if r.is_ok() {
                    aggregator.created(&event, name, now);
                }
                r.map(|_| ())
            }
            Action::Patch { name, count } => {
                let patch = serde_json::json!({
                    "count": count,
                    "lastTimestamp": Time(Timestamp::now()),
                });
                timed(&context.server, "patch event", async {
                    api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                        .await
                        .map(|_| ())
                        .map_err(|e| {
                            explain(
                                e,
                                Access::core("patch", "events"),
                                &context.namespace,
                                &name,
                                &context.server,
                            )
                        })
                })
                .await
            }
        };
        match result {
            Ok(()) => last_error = None,
            Err(e) => {
                let text = e.to_string();
                if last_error.as_deref() != Some(text.as_str()) {
                    tracing::warn!("kubernetes: cannot record an event: {text}");
                }
                last_error = Some(text);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(reason: EventReason, message: &str) -> OrchestratorEvent {
        OrchestratorEvent::new(reason, message)
    }

    #[test]
    fn repeats_are_patched_and_floods_dropped() {
        let t0 = Instant::now();
        let mut agg = Aggregator::new(RateLimit::new(3, Duration::from_secs(10), t0));
        let a = ev(EventReason::ServerRestarting, "restart: /health failed");
        assert!(matches!(agg.decide(&a, t0), Action::Create { .. }));
        agg.created(&a, "pod.1".into(), t0);
        assert_eq!(
            agg.decide(&a, t0),
            Action::Patch {
                name: "pod.1".into(),
                count: 2
            }
        );
        assert!(matches!(
            agg.decide(&ev(EventReason::RayExited, "y"), t0),
            Action::Create { .. }
        ));
        // The bucket is empty: 50 more in the same second are dropped.
        for i in 0..50 {
            assert_eq!(
                agg.decide(&ev(EventReason::ServerDegraded, &i.to_string()), t0),
                Action::Drop
            );
        }
        assert_eq!(agg.dropped(), 50);
        // One token back after 10 s; the next Event says what was dropped.
        let t1 = t0 + Duration::from_secs(10);
        match agg.decide(&ev(EventReason::Serving, "ok"), t1) {
            Action::Create { message } => {
                assert!(
                    message.contains("50 earlier events were dropped"),
                    "{message}"
                )
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(agg.dropped(), 0);
        assert_eq!(
            agg.decide(&ev(EventReason::Serving, "again"), t1),
            Action::Drop
        );
        // After the aggregation window, the same Event is created anew.
        let t2 = t0 + AGGREGATION_WINDOW + Duration::from_secs(60);
        assert!(matches!(agg.decide(&a, t2), Action::Create { .. }));
    }

    #[test]
    fn long_messages_are_cut() {
        let long = "x".repeat(5000);
        assert_eq!(truncate(long).len(), MAX_MESSAGE);
    }
}
