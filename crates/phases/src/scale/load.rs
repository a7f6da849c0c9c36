//! The serving process's load from its own `/metrics`: vLLM's gauges read
//! as they are, its token counters turned into rates between two reads.
//! Entry point: [`LoadReader::sample`].

use crate::probe;
use orchestrator_domain::LoadSample;

/// One read of vLLM's metrics, summed over engines (KV cache: the fullest
/// engine's).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct Counters {
    /// `vllm:num_requests_running`.
    pub running: f64,
    /// `vllm:num_requests_waiting`.
    pub waiting: f64,
    /// `vllm:kv_cache_usage_perc` (older releases: `gpu_cache_usage_perc`),
    /// 0.0 to 1.0.
    pub kv_cache_usage: f64,
    /// `vllm:generation_tokens_total`.
    pub(crate) generation_tokens: f64,
    /// `vllm:prompt_tokens_total`.
    pub(crate) prompt_tokens: f64,
}

impl Counters {
    /// The counters of a Prometheus text exposition; none when it has
    /// neither of vLLM's request gauges (not a vLLM server).
    pub(crate) fn of(metrics: &str) -> Option<Self> {
        let mut c = Counters::default();
        let mut found = false;
        for (name, value) in probe::samples_of(metrics) {
            if !value.is_finite() || value < 0.0 {
                continue;
            }
            match name {
                "vllm:num_requests_running" => {
                    found = true;
                    c.running += value;
                }
                "vllm:num_requests_waiting" => {
                    found = true;
                    c.waiting += value;
                }
                "vllm:kv_cache_usage_perc" | "vllm:gpu_cache_usage_perc" => {
                    c.kv_cache_usage = c.kv_cache_usage.max(value.min(1.0));
                }
                "vllm:generation_tokens_total" => c.generation_tokens += value,
                "vllm:prompt_tokens_total" => c.prompt_tokens += value,
                _ => {}
            }
        }
        found.then_some(c)
    }
}

/// Turns successive reads into samples: the token counters' rates are
/// taken against the previous read (0 for the first, and after a counter
/// went back, which is a restarted server).
#[derive(Debug, Default)]
pub(crate) struct LoadReader {
    last: Option<(u64, Counters)>,
}

impl LoadReader {
    /// The sample of `counters` read at `at_ms`.
    pub(crate) fn sample(&mut self, at_ms: u64, counters: Counters) -> LoadSample {
        let rate = |now: f64, before: f64, seconds: f64| {
            if seconds > 0.0 && now >= before {
                (now - before) / seconds
            } else {
                0.0
            }
        };
        let (generation, prompt) = match self.last {
            Some((then, before)) if at_ms > then => {
                let seconds = (at_ms - then) as f64 / 1000.0;
                (
                    rate(
                        counters.generation_tokens,
                        before.generation_tokens,
                        seconds,
                    ),
                    rate(counters.prompt_tokens, before.prompt_tokens, seconds),
                )
            }
            _ => (0.0, 0.0),
        };
        self.last = Some((at_ms, counters));
        LoadSample {
            at_ms,
            running: counters.running,
            waiting: counters.waiting,
            kv_cache_usage: counters.kv_cache_usage,
            generation_tokens_per_second: generation,
            prompt_tokens_per_second: prompt,
        }
    }

    /// Forgets the previous read (the server was replaced).
    pub(crate) fn reset(&mut self) {
        self.last = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const METRICS: &str = "# TYPE vllm:num_requests_running gauge\n\
vllm:num_requests_running{engine=\"0\",model_name=\"m\"} 3.0\n\
vllm:num_requests_running{engine=\"1\",model_name=\"m\"} 1.0\n\
vllm:num_requests_waiting{engine=\"0\",model_name=\"m\"} 2.0\n\
vllm:kv_cache_usage_perc{engine=\"0\",model_name=\"m\"} 0.25\n\
vllm:kv_cache_usage_perc{engine=\"1\",model_name=\"m\"} 0.5\n\
vllm:generation_tokens_total{engine=\"0\",model_name=\"m\"} 1000.0\n\
vllm:prompt_tokens_total{engine=\"0\",model_name=\"m\"} 200.0\n\
vllm:generation_tokens_created{engine=\"0\",model_name=\"m\"} 1.7e9\n";

    #[test]
    fn gauges_sum_over_engines_and_the_kv_cache_is_the_fullest() {
        let c = Counters::of(METRICS).unwrap();
        assert_eq!(c.running, 4.0);
        assert_eq!(c.waiting, 2.0);
        assert_eq!(c.kv_cache_usage, 0.5);
        assert_eq!(c.generation_tokens, 1000.0);
        assert_eq!(c.prompt_tokens, 200.0);
        assert_eq!(Counters::of("process_cpu_seconds_total 3\n"), None);
    }

    #[test]
    fn counters_become_rates_and_a_reset_counts_zero() {
        let mut reader = LoadReader::default();
        let mut c = Counters::of(METRICS).unwrap();
        assert_eq!(reader.sample(1_000, c).generation_tokens_per_second, 0.0);
        c.generation_tokens += 500.0;
        c.prompt_tokens += 50.0;
        let s = reader.sample(3_000, c);
        assert_eq!(s.generation_tokens_per_second, 250.0);
        assert_eq!(s.prompt_tokens_per_second, 25.0);
        c.generation_tokens = 10.0;
        assert_eq!(reader.sample(4_000, c).generation_tokens_per_second, 0.0);
    }
}
