//! The GCS client against a stand-in GCS that answers badly: bytes that are
//! not HTTP/2, truncated gRPC frames, a frame announcing 2 GiB and
//! streaming zeros, frames that are not protobuf, a wrong content type, a
//! gRPC error, and a server that takes the connection and never answers.
//! Last, a GCS that answers the subscription and snapshot as Ray does but
//! every long poll with a truncated frame.
//! For each the watcher must report a lost connection (never a snapshot),
//! keep reconnecting, never panic, and never buffer without bound.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use hyper::body::{Body, Bytes, Frame};
use orchestrator_domain::UpdateSource;
use orchestrator_ray_gcs::{GcsClient, watch_membership};
use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    /// Random bytes instead of an HTTP/2 server preface.
    NotHttp2,
    /// A gRPC frame announcing 1000 bytes, 10 sent, then the stream ends.
    Truncated,
    /// A frame announcing 2 GiB, then zeros for as long as they are read.
    Oversized,
    /// A well-framed message whose bytes are not protobuf.
    NotProtobuf,
    /// HTTP 200 with `text/html` (a web server on the GCS port).
    NotGrpc,
    /// A gRPC error (UNIMPLEMENTED: another service on the port).
    GrpcError,
    /// The connection and request are taken, nothing is answered.
    Silent,
    /// Subscribing and the snapshot answered as Ray does, then every long
    /// poll answered with a truncated frame.
    BadPoll,
}

/// A response body from a list of chunks, then `zeros` bytes of zeros,
/// then trailers; counts what it handed to hyper.
struct Reply {
    chunks: VecDeque<Bytes>,
    zeros: u64,
    trailers: Option<hyper::HeaderMap>,
    sent: Arc<AtomicU64>,
}

impl Body for Reply {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(chunk) = self.chunks.pop_front() {
            self.sent.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        if self.zeros > 0 {
            let n = self.zeros.min(64 * 1024);
            self.zeros -= n;
            self.sent.fetch_add(n, Ordering::Relaxed);
            return Poll::Ready(Some(Ok(Frame::data(Bytes::from(vec![0u8; n as usize])))));
        }
        Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }
}

fn grpc_frame(announced: u32, payload: &[u8]) -> Bytes {
    let mut frame = vec![0u8];
    frame.extend_from_slice(&announced.to_be_bytes());
    frame.extend_from_slice(payload);
    Bytes::from(frame)
}

fn trailers(status: u32, message: &str) -> hyper::HeaderMap {
    let mut t = hyper::HeaderMap::new();
    t.insert("grpc-status", status.to_string().parse().unwrap());
    if !message.is_empty() {
        t.insert("grpc-message", message.parse().unwrap());
    }
    t
}

fn respond(mode: Mode, path: &str, sent: &Arc<AtomicU64>) -> hyper::Response<Reply> {
    let body = |chunks: Vec<Bytes>, zeros: u64, trailers: Option<hyper::HeaderMap>| Reply {
        chunks: chunks.into(),
        zeros,
        trailers,
        sent: Arc::clone(sent),
    };
    let grpc = |reply: Reply| {
        hyper::Response::builder()
            .header("content-type", "application/grpc")
            .body(reply)
            .unwrap()
    };
    match mode {
        Mode::Truncated => grpc(body(vec![grpc_frame(1000, &[7u8; 10])], 0, None)),
        Mode::Oversized => grpc(body(vec![grpc_frame(0x8000_0000, &[])], 64 << 20, None)),
        Mode::NotProtobuf => grpc(body(
            vec![grpc_frame(64, &[0xff; 64])],
            0,
            Some(trailers(0, "")),
        )),
        Mode::NotGrpc => hyper::Response::builder()
            .header("content-type", "text/html")
            .body(body(
                vec![Bytes::from_static(b"<html>hello</html>")],
                0,
                None,
            ))
            .unwrap(),
        Mode::GrpcError => grpc(body(vec![], 0, Some(trailers(12, "no such service")))),
        Mode::BadPoll if !path.ends_with("/GcsSubscriberPoll") => {
            use orchestrator_ray_gcs::proto::{
                GcsSubscriberCommandBatchReply, GetAllNodeInfoReply,
            };
            use prost::Message;
            let payload = if path.ends_with("/GetAllNodeInfo") {
                GetAllNodeInfoReply::default().encode_to_vec()
            } else {
                GcsSubscriberCommandBatchReply::default().encode_to_vec()
            };
            grpc(body(
                vec![grpc_frame(payload.len() as u32, &payload)],
                0,
                Some(trailers(0, "")),
            ))
        }
        Mode::BadPoll => grpc(body(vec![grpc_frame(1000, &[7u8; 10])], 0, None)),
        Mode::NotHttp2 | Mode::Silent => grpc(body(vec![], 0, None)),
    }
}

struct Hostile {
    address: String,
    connections: Arc<AtomicU64>,
    sent: Arc<AtomicU64>,
}

async fn hostile(mode: Mode) -> Hostile {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let connections = Arc::new(AtomicU64::new(0));
    let sent = Arc::new(AtomicU64::new(0));
    let (c, s) = (Arc::clone(&connections), Arc::clone(&sent));
    tokio::spawn(async move {
        let mut garbage: u64 = 0x9e37_79b9_7f4a_7c15;
        while let Ok((mut stream, _)) = listener.accept().await {
            c.fetch_add(1, Ordering::Relaxed);
            if mode == Mode::NotHttp2 {
                let bytes: Vec<u8> = (0..4096)
                    .map(|_| {
                        garbage ^= garbage << 13;
                        garbage ^= garbage >> 7;
                        garbage ^= garbage << 17;
                        garbage as u8
                    })
                    .collect();
                let _ = stream.write_all(&bytes).await;
                continue;
            }
            let s = Arc::clone(&s);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request: hyper::Request<_>| {
                    let s = Arc::clone(&s);
                    let path = request.uri().path().to_string();
                    async move {
                        if mode == Mode::Silent {
                            std::future::pending::<()>().await;
                        }
                        Ok::<_, Infallible>(respond(mode, &path, &s))
                    }
                });
                let _ =
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
            });
        }
    });
    Hostile {
        address,
        connections,
        sent,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_hostile_reply_is_reported_and_retried_without_panic_or_growth() {
    for mode in [
        Mode::NotHttp2,
        Mode::Truncated,
        Mode::Oversized,
        Mode::NotProtobuf,
        Mode::NotGrpc,
        Mode::GrpcError,
        Mode::Silent,
        Mode::BadPoll,
    ] {
        let server = hostile(mode).await;
        let mut updates = watch_membership(server.address.clone());
        // A silent server is found out by the call timeout (5 s).
        let window = if mode == Mode::Silent {
            Duration::from_secs(12)
        } else {
            Duration::from_secs(4)
        };
        let start = Instant::now();
        let mut errors: Vec<String> = vec![];
        let mut snapshots = 0;
        while start.elapsed() < window && errors.len() < 3 {
            match tokio::time::timeout(window - start.elapsed(), updates.recv()).await {
                Ok(Some(update)) => match update.source {
                    UpdateSource::Disconnected { error } => errors.push(error),
                    // The only good answers: the empty snapshots of BadPoll.
                    UpdateSource::Snapshot if mode == Mode::BadPoll => {
                        assert_eq!(update.view.map(|v| v.nodes.len()), Some(0));
                        snapshots += 1;
                    }
                    other => panic!("{mode:?}: the watcher accepted a reply: {other:?}"),
                },
                Ok(None) => panic!("{mode:?}: the watcher ended (a panic in its task?)"),
                Err(_) => break,
            }
        }
        let want = if mode == Mode::Silent { 1 } else { 3 };
        assert!(
            errors.len() >= want,
            "{mode:?}: {} lost-connection reports in {window:?}: {errors:?}",
            errors.len()
        );
        assert!(
            errors.iter().all(|e| e.contains(&server.address)),
            "{mode:?}: every report names the GCS: {errors:?}"
        );
        if mode == Mode::BadPoll {
            assert!(snapshots >= 3, "a snapshot on every reconnect: {snapshots}");
            assert!(
                errors.iter().all(|e| e.contains("polling node changes")),
                "{errors:?}"
            );
        }
        let connections = server.connections.load(Ordering::Relaxed);
        assert!(
            connections >= want as u64,
            "{mode:?}: {connections} connections: no retry"
        );
        let sent = server.sent.load(Ordering::Relaxed);
        assert!(
            sent < 32 << 20,
            "{mode:?}: the client took {sent} bytes of a reply it should refuse"
        );
        eprintln!(
            "{mode:?}: {} reports, {connections} connections, {} KiB sent; first: {}",
            errors.len(),
            sent / 1024,
            errors.first().map(String::as_str).unwrap_or_default()
        );
        drop(updates);

        // One-shot calls fail with an error naming the GCS, within their
        // deadline (BadPoll's snapshot is a good one).
        if mode == Mode::BadPoll {
            continue;
        }
        let started = Instant::now();
        let result = GcsClient::connect_until(&server.address, Duration::from_secs(1)).await;
        let error = result.expect_err("a hostile GCS is not a GCS").to_string();
        assert!(error.contains(&server.address), "{mode:?}: {error}");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{mode:?}: connect_until overran its 1 s deadline: {:?}",
            started.elapsed()
        );
    }
}
