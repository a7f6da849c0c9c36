//! HTTP probes of the serving process: `GET /health` and a real generation
//! request (a one-token completion), because a wedged engine can keep
//! `/health` and `/v1/models` at 200 while generation is dead.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use orchestrator_domain::ProbeResult;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

/// An HTTP answer: status and body.
#[derive(Debug, Clone)]
pub(crate) struct HttpAnswer {
    /// The status code.
    pub status: u16,
    /// The body, as text.
    pub body: String,
}

/// The largest answer [`http`] reads (vLLM's `/metrics` of a large
/// server is well under 1 MiB).
pub(crate) const MAX_ANSWER_BYTES: usize = 8 << 20;

/// Why an HTTP request of [`http`] (or a reading built on it) failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HttpError {
    /// No TCP connection.
    #[error("cannot connect to {address}: {source}")]
    Connect {
        /// `HOST:PORT`.
        address: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The HTTP/1.1 handshake failed.
    #[error("HTTP handshake with {address} failed: {source}")]
    Handshake {
        /// `HOST:PORT`.
        address: String,
        /// Why.
        #[source]
        source: hyper::Error,
    },
    /// The request could not be built (a method or path that is not HTTP).
    #[error("{method} {path} is not a valid request: {source}")]
    Request {
        /// The method.
        method: String,
        /// The path.
        path: String,
        /// Why.
        #[source]
        source: hyper::http::Error,
    },
    /// Sending the request or reading the answer's head failed.
    #[error("{method} {path} failed: {source}")]
    Send {
        /// The method.
        method: String,
        /// The path.
        path: String,
        /// Why.
        #[source]
        source: hyper::Error,
    },
    /// The answer's body was over [`MAX_ANSWER_BYTES`] or broken.
    #[error("reading the answer to {method} {path} failed (over {} MiB, or broken): {source}", MAX_ANSWER_BYTES >> 20)]
    Read {
        /// The method.
        method: String,
        /// The path.
        path: String,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// No whole answer within the time given.
    #[error("{method} {path} timed out after {} ms", timeout.as_millis())]
    Timeout {
        /// The method.
        method: String,
        /// The path.
        path: String,
        /// The time given.
        timeout: Duration,
    },
    /// An answer, but not the 200 that was needed.
    #[error("{path} answered {status}")]
    Status {
        /// The path.
        path: String,
        /// The status.
        status: u16,
    },
    /// `/metrics` without vLLM's request gauges.
    #[error("/metrics has no vllm:num_requests_running or vllm:num_requests_waiting")]
    NotVllm,
}

/// One HTTP/1.1 request on a fresh connection, bounded by `timeout`;
/// the answer is capped at [`MAX_ANSWER_BYTES`].
pub(crate) async fn http(
    address: &str,
    method: &str,
    path: &str,
    body: Option<String>,
    timeout: Duration,
) -> Result<HttpAnswer, HttpError> {
    let work = async {
        let stream = TcpStream::connect(address)
            .await
            .map_err(|source| HttpError::Connect {
                address: address.to_string(),
                source,
            })?;
        let _ = stream.set_nodelay(true);
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|source| HttpError::Handshake {
                address: address.to_string(),
                source,
            })?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let mut builder = Request::builder()
            .method(method)
            .uri(path)
            .header("host", address);
        if body.is_some() {
            builder = builder.header("content-type", "application/json");
        }
        let request = builder
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|source| HttpError::Request {
                method: method.to_string(),
                path: path.to_string(),
                source,
            })?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|source| HttpError::Send {
                method: method.to_string(),
                path: path.to_string(),
                source,
            })?;
        let status = response.status().as_u16();
        // Bounded: a peer (a leader, a server's /metrics) cannot grow
        // this process by answering without end.
        let bytes = http_body_util::Limited::new(response.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await
            .map_err(|source| HttpError::Read {
                method: method.to_string(),
                path: path.to_string(),
                source,
            })?
            .to_bytes();
        Ok(HttpAnswer {
            status,
            body: String::from_utf8_lossy(&bytes).into_owned(),
        })
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(result) => result,
        Err(_) => Err(HttpError::Timeout {
            method: method.to_string(),
            path: path.to_string(),
            timeout,
        }),
    }
}

/// A probe's outcome in the policy contract's terms (`age-ms` is filled in
/// when the snapshot is built).
fn result(ok: bool, status: Option<u16>, started: Instant, error: Option<String>) -> ProbeResult {
    ProbeResult {
        ok,
        status_code: status,
        latency_ms: started.elapsed().as_millis().min(u128::from(u32::MAX)) as u32,
        error,
        age_ms: 0,
    }
}

/// `GET /health`: ok on 200.
pub(crate) async fn health(address: &str, timeout: Duration) -> ProbeResult {
    let started = Instant::now();
    match http(address, "GET", "/health", None, timeout).await {
        Ok(a) if a.status == 200 => result(true, Some(a.status), started, None),
        Ok(a) => result(
            false,
            Some(a.status),
            started,
            Some(format!("/health answered {}", a.status)),
        ),
        Err(e) => result(false, None, started, Some(e.to_string())),
    }
}

/// The warm-up completions' tokens: the prompt's pass and several decode
/// steps, as a user's first request runs them.
pub(crate) const WARM_UP_TOKENS: u32 = 16;

/// The warm-up completions, one after the other: vLLM's CPU build was
/// measured paying ~0.4 s once more on the first prompt after the first
/// one (`cargo xtask bench startup`), so ready comes after a second.
pub(crate) const WARM_UP_PROMPTS: [&str; 2] = [
    "ping",
    "The orchestrator warms the server up before it takes traffic.",
];

/// A completion of `model` of `tokens` tokens: ok on 200 with a `choices`
/// list.
pub(crate) async fn generation(
    address: &str,
    model: &str,
    prompt: &str,
    tokens: u32,
    timeout: Duration,
) -> ProbeResult {
    let started = Instant::now();
    let body = serde_json::json!({"model": model, "prompt": prompt, "max_tokens": tokens, "temperature": 0})
        .to_string();
    match http(address, "POST", "/v1/completions", Some(body), timeout).await {
        Ok(a) if a.status == 200 => {
            let parsed: Option<serde_json::Value> = serde_json::from_str(&a.body).ok();
            let has_choice = parsed
                .as_ref()
                .and_then(|v| v.get("choices"))
                .and_then(|c| c.as_array())
                .is_some_and(|c| !c.is_empty());
            if has_choice {
                result(true, Some(200), started, None)
            } else {
                result(
                    false,
                    Some(200),
                    started,
                    Some("the completion had no choices".into()),
                )
            }
        }
        Ok(a) => {
            let snippet: String = a.body.chars().take(200).collect();
            result(
                false,
                Some(a.status),
                started,
                Some(format!("completion answered {}: {snippet}", a.status)),
            )
        }
        Err(e) => result(false, None, started, Some(e.to_string())),
    }
}

/// Requests the server holds: the sum of vLLM's `vllm:num_requests_running`
/// and `vllm:num_requests_waiting` gauges on `GET /metrics` (every engine
/// and model label). An error when `/metrics` cannot be read or has
/// neither gauge (a server that is not vLLM: nothing to wait for).
pub(crate) async fn requests_in_flight(address: &str, timeout: Duration) -> Result<u64, HttpError> {
    let answer = http(address, "GET", "/metrics", None, timeout).await?;
    if answer.status != 200 {
        return Err(HttpError::Status {
            path: "/metrics".into(),
            status: answer.status,
        });
    }
    in_flight_of(&answer.body).ok_or(HttpError::NotVllm)
}

/// [`requests_in_flight`] of a Prometheus text exposition.
pub(crate) fn in_flight_of(metrics: &str) -> Option<u64> {
    let mut found = false;
    let mut total = 0.0;
    for (name, value) in samples_of(metrics) {
        if name != "vllm:num_requests_running" && name != "vllm:num_requests_waiting" {
            continue;
        }
        found = true;
        if value.is_finite() && value > 0.0 {
            total += value;
        }
    }
    found.then_some(total.round() as u64)
}

/// Every sample line of a Prometheus text exposition: the metric's name
/// (labels dropped) and its value. Comments and lines whose value does
/// not parse are skipped.
pub(crate) fn samples_of(metrics: &str) -> impl Iterator<Item = (&str, f64)> {
    metrics.lines().filter_map(|line| {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            return None;
        }
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let name = &line[..name_end];
        // The value follows the labels (which may hold spaces in quotes).
        let rest = match line[name_end..].strip_prefix('{') {
            Some(labels) => labels.rsplit_once('}').map_or("", |(_, v)| v),
            None => &line[name_end..],
        };
        let value = rest.split_whitespace().next()?.parse::<f64>().ok()?;
        Some((name, value))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_flight_sums_running_and_waiting_over_engines() {
        let text = "# HELP vllm:num_requests_running Number of requests in model execution batches.\n\
# TYPE vllm:num_requests_running gauge\n\
vllm:num_requests_running{engine=\"0\",model_name=\"tiny model\"} 2.0\n\
vllm:num_requests_running{engine=\"1\",model_name=\"tiny model\"} 1.0\n\
vllm:num_requests_waiting{engine=\"0\",model_name=\"tiny model\"} 3.0\n\
vllm:num_requests_waiting_by_reason{engine=\"0\",reason=\"capacity\"} 9.0\n\
vllm:num_preemptions_total{engine=\"0\"} 7.0\n";
        assert_eq!(in_flight_of(text), Some(6));
        assert_eq!(
            in_flight_of("vllm:num_requests_running 0\nvllm:num_requests_waiting 0\n"),
            Some(0)
        );
        assert_eq!(in_flight_of("process_cpu_seconds_total 3.5\n"), None);
    }

    #[tokio::test]
    async fn an_endless_answer_is_cut_at_the_cap_not_read_into_memory() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let address = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("{e}"))
            .to_string();
        tokio::spawn(async move {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let mut head = [0u8; 1024];
            let _ = stream.read(&mut head).await;
            let total = 200usize << 20;
            let header = format!("HTTP/1.1 200 OK\r\nContent-Length: {total}\r\n\r\n");
            let _ = stream.write_all(header.as_bytes()).await;
            let chunk = vec![b'x'; 1 << 20];
            for _ in 0..200 {
                if stream.write_all(&chunk).await.is_err() {
                    return;
                }
            }
        });
        let answer = http(&address, "GET", "/metrics", None, Duration::from_secs(20)).await;
        let error = answer.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(error.contains("over 8 MiB"), "{error}");
    }
}
