//! {{name}}: a scale policy (world `scale` of
//! `ray-orchestrator:policy@0.2.0`), asked on the head after every load
//! sample while serving. Recommends enough replicas for the newest
//! sample's requests at `target-requests-per-replica` (8) each.
//!
//! The samples are this replica's own load (vLLM's `/metrics`), oldest
//! first; the host keeps the window and the previous answer, and keeps the
//! answer within `min-replicas..=max-replicas`.

use orchestrator_plugin_sdk::scale::*;

/// The policy.
pub struct Policy;

impl ScalePolicy for Policy {
    fn recommend(input: &ScaleInput, params: &Params) -> ScaleRecommendation {
        let current = input.current_replicas;
        let target = match params.f64_or("target-requests-per-replica", 8.0) {
            Ok(t) if t > 0.0 => t,
            Ok(t) => {
                return ScaleRecommendation {
                    desired_replicas: current,
                    reason: format!("target-requests-per-replica = {t}: give a number above 0"),
                };
            }
            Err(e) => {
                return ScaleRecommendation {
                    desired_replicas: current,
                    reason: e.to_string(),
                };
            }
        };
        let Some(newest) = input.samples.last() else {
            return ScaleRecommendation {
                desired_replicas: current,
                reason: "no load sample yet".into(),
            };
        };
        let requests = (newest.running + newest.waiting) * f64::from(current.max(1));
        let desired = (requests / target).ceil() as u32;
        ScaleRecommendation {
            desired_replicas: desired,
            reason: format!("{requests} requests at {target} a replica"),
        }
    }
}

orchestrator_plugin_sdk::export_scale_policy!(Policy);
