//! Built-in scale policy `default`: the serving replicas the load needs,
//! with hysteresis and a stabilization window so that a noisy load does
//! not make the recommendation flap.
//!
//! The samples are this replica's own load (vLLM's `/metrics`); the load
//! is taken to be spread evenly over the current replicas, so the whole
//! service holds `requests x current-replicas`. For each sample the
//! replicas it needs are `ceil(total requests / target-requests-per-replica)`,
//! except:
//! - **tolerance**: within `tolerance` (0.1) of the target per replica,
//!   the current count is kept (no change for a 5 % wobble);
//! - **KV cache**: a sample with KV-cache usage at or above
//!   `max-kv-cache-usage` (0.9) needs at least one replica more (the
//!   engine is out of memory for new sequences before its queue shows it).
//!
//! Then, against the previous answer (the current count before the
//! first), so that an autoscaler still catching up does not make the
//! answer swing back:
//! - **scale up** at once: to the *smallest* need of the samples in the
//!   last `scale-up-window-ms` (0: the newest sample alone), so one busy
//!   sample scales up within one interval, and a longer window asks the
//!   load to last that long (and for that much history);
//! - **scale down** only after a full window: to the *largest* need of
//!   the samples in the last `scale-down-window-ms` (0: the input's whole
//!   window), and only once the samples cover that much time. A burst
//!   inside the window holds the replicas up (the stabilization window of
//!   Kubernetes' HPA, done once here rather than on every autoscaler);
//! - otherwise **hold** at the previous answer.
//!
//! The host keeps the answer within `min-replicas..=max-replicas`.

use orchestrator_plugin_sdk::scale::*;

/// The `default` scale policy.
pub struct DefaultScale;

struct Settings {
    target: f64,
    max_kv_cache_usage: f64,
    tolerance: f64,
    up_window_ms: u64,
    down_window_ms: u64,
}

impl Settings {
    fn from(params: &Params, input: &ScaleInput) -> Result<Self, String> {
        let e = |e: orchestrator_plugin_sdk::ParamError| e.to_string();
        let target = params
            .f64_or("target-requests-per-replica", 8.0)
            .map_err(e)?;
        if target <= 0.0 {
            return Err(format!(
                "policy parameter `target-requests-per-replica` = {target}: it must be above 0 (e.g. 8)"
            ));
        }
        let tolerance = params.f64_or("tolerance", 0.1).map_err(e)?;
        if !(0.0..1.0).contains(&tolerance) {
            return Err(format!(
                "policy parameter `tolerance` = {tolerance}: it is a fraction from 0 up to 1 (e.g. 0.1)"
            ));
        }
        let ms = |key: &str, default: u64| -> Result<u64, String> {
            params.f64_or(key, default as f64).map_err(e).and_then(|v| {
                if v < 0.0 {
                    Err(format!(
                        "policy parameter `{key}` = {v}: give milliseconds, 0 or more"
                    ))
                } else {
                    Ok(v as u64)
                }
            })
        };
        let down = ms("scale-down-window-ms", 0)?;
        Ok(Self {
            target,
            max_kv_cache_usage: params.f64_or("max-kv-cache-usage", 0.9).map_err(e)?,
            tolerance,
            up_window_ms: ms("scale-up-window-ms", 0)?,
            down_window_ms: if down == 0 { input.window_ms } else { down },
        })
    }

    /// The replicas one sample needs, `current` being the replicas now.
    fn need(&self, sample: &LoadSample, current: u32) -> u32 {
        let replicas = current.max(1);
        let per_replica = sample.running + sample.waiting;
        let ratio = per_replica / self.target;
        let mut need = if current > 0 && (ratio - 1.0).abs() <= self.tolerance {
            current
        } else {
            let total = per_replica * f64::from(replicas);
            (total / self.target).ceil().min(f64::from(u32::MAX)) as u32
        };
        if sample.kv_cache_usage >= self.max_kv_cache_usage {
            need = need.max(replicas.saturating_add(1));
        }
        need
    }
}

fn trim(x: f64) -> String {
    let rounded = (x * 10.0).round() / 10.0;
    if rounded.fract() == 0.0 {
        format!("{}", rounded as i64)
    } else {
        format!("{rounded:.1}")
    }
}

impl ScalePolicy for DefaultScale {
    fn recommend(input: &ScaleInput, params: &Params) -> ScaleRecommendation {
        let current = input.current_replicas;
        let base = input.previous_desired.unwrap_or(current);
        let hold = |reason: String| ScaleRecommendation {
            desired_replicas: base,
            reason,
        };
        let settings = match Settings::from(params, input) {
            Ok(s) => s,
            Err(e) => return hold(format!("holding at {base}: {e}")),
        };
        let Some(newest) = input.samples.last() else {
            return hold(format!("holding at {base}: no load sample yet"));
        };
        let since = |window: u64| {
            let from = newest.at_ms.saturating_sub(window);
            input.samples.iter().filter(move |s| s.at_ms >= from)
        };
        let load = format!(
            "{} requests a replica (running {}, waiting {}; target {}), KV cache {}%",
            trim(newest.running + newest.waiting),
            trim(newest.running),
            trim(newest.waiting),
            trim(settings.target),
            trim(newest.kv_cache_usage * 100.0)
        );
        let covered = newest
            .at_ms
            .saturating_sub(input.samples[0].at_ms)
            .saturating_add(input.interval_ms);
        let up = since(settings.up_window_ms)
            .map(|s| settings.need(s, current))
            .min()
            .unwrap_or(current);
        if up > base && covered > settings.up_window_ms {
            return ScaleRecommendation {
                desired_replicas: up,
                reason: format!("scale up to {up}: {load}"),
            };
        }
        let down = since(settings.down_window_ms)
            .map(|s| settings.need(s, current))
            .max()
            .unwrap_or(current);
        if down < base {
            if covered < settings.down_window_ms {
                return hold(format!(
                    "holding at {base}: the load would need {down}, but the samples cover {} s of the {} s a scale-down waits for; {load}",
                    covered / 1000,
                    settings.down_window_ms / 1000
                ));
            }
            return ScaleRecommendation {
                desired_replicas: down,
                reason: format!(
                    "scale down to {down}: the load needed at most {down} for {} s; {load}",
                    settings.down_window_ms / 1000
                ),
            };
        }
        hold(format!("holding at {base}: {load}"))
    }
}

orchestrator_plugin_sdk::export_scale_policy!(DefaultScale);
