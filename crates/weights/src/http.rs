//! GET requests with every answer bounded in size and time, over HTTP or
//! HTTPS (the native roots). Entry point: [`HttpClient::get`].

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::header::HeaderMap;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use std::time::Duration;

/// Why a request got no usable answer. The URL never carries a secret
/// (tokens travel in headers), so it may be shown.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// No connection, a broken answer, or a bad URL.
    #[error("{url}: {reason}")]
    Failed {
        /// The URL asked.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// The whole answer did not arrive in time.
    #[error("{url}: no complete answer within {seconds} s")]
    Timeout {
        /// The URL asked.
        url: String,
        /// The bound.
        seconds: u64,
    },
    /// The answer passed its bound.
    #[error("{url}: the answer is larger than {limit} bytes; refused")]
    TooLarge {
        /// The URL asked.
        url: String,
        /// The bound.
        limit: usize,
    },
}

/// An answer read whole.
#[derive(Debug)]
pub struct Answer {
    /// The status code.
    pub status: u16,
    /// Its headers.
    pub headers: HeaderMap,
    /// Its body.
    pub body: Vec<u8>,
}

impl Answer {
    /// A header's value as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// A client; cloning shares its connections.
#[derive(Clone)]
pub struct HttpClient {
    http: Client<hyper_rustls::HttpsConnector<HttpConnector>, Empty<Bytes>>,
}

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HttpClient")
    }
}

impl HttpClient {
    /// A client trusting the system's roots for HTTPS.
    pub fn new() -> Result<Self, HttpError> {
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_native_roots()
            .map_err(|e| HttpError::Failed {
                url: String::new(),
                reason: format!("no TLS roots: {e}"),
            })?
            .https_or_http()
            .enable_http1()
            .build();
        Ok(Self {
            http: Client::builder(TokioExecutor::new()).build(https),
        })
    }

    /// `GET url` with `headers`; the answer (any status) read whole, at
    /// most `limit` bytes of body, all within `timeout`.
    pub async fn get(
        &self,
        url: &str,
        headers: &[(&str, String)],
        limit: usize,
        timeout: Duration,
    ) -> Result<Answer, HttpError> {
        let failed = |reason: String| HttpError::Failed {
            url: url.to_string(),
            reason,
        };
        let mut request = hyper::Request::get(url);
        for (name, value) in headers {
            request = request.header(*name, value.as_str());
        }
        let request = request
            .body(Empty::new())
            .map_err(|e| failed(e.to_string()))?;
        let exchange = async {
            let response = self
                .http
                .request(request)
                .await
                .map_err(|e| failed(describe(&e)))?;
            let status = response.status().as_u16();
            let headers = response.headers().clone();
            if let Some(length) = headers
                .get(hyper::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
                && length > limit as u64
            {
                return Err(HttpError::TooLarge {
                    url: url.to_string(),
                    limit,
                });
            }
            let mut body = response.into_body();
            let mut out = Vec::new();
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|e| failed(format!("reading the answer: {e}")))?;
                if let Ok(data) = frame.into_data() {
                    if out.len() + data.len() > limit {
                        return Err(HttpError::TooLarge {
                            url: url.to_string(),
                            limit,
                        });
                    }
                    out.extend_from_slice(&data);
                }
            }
            Ok(Answer {
                status,
                headers,
                body: out,
            })
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(answer) => answer,
            Err(_) => Err(HttpError::Timeout {
                url: url.to_string(),
                seconds: timeout.as_secs().max(1),
            }),
        }
    }
}

/// The error and its causes, on one line.
fn describe(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
