//! The endpoints' listener under load: at most [`MAX_CONNECTIONS`] open
//! connections (at the bound, the connection idle longest makes room for
//! the new one, so a liveness probe still gets through; when none is idle
//! the new one is closed), request heads of at most [`MAX_HEADER_BYTES`] (a larger
//! one gets `431` and the connection closes), idle connections closed
//! after [`IDLE_TIMEOUT`], a head that takes longer than
//! [`HEADER_READ_TIMEOUT`] closed, and an accept loop that backs off and
//! says so when `accept()` fails (at the open-file limit it fails at once,
//! over and over). Entry point: [`accept_loop`].
//!
//! A connection ends with a lingering close: the write side is shut, then
//! what the client still sends is read and dropped for a moment, so a
//! client in the middle of a 10 MB header reads the `431` rather than a
//! connection reset.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

/// Connections served at once; more are closed as they are accepted.
pub const MAX_CONNECTIONS: usize = 256;
/// Connections served at once from one peer address: a slow client
/// trickling bytes on many connections cannot take every place, and when
/// the bound is reached the peer holding the most gives one up.
pub const MAX_PER_PEER: usize = 64;
/// The largest request head (request line and headers) read.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;
/// A connection with no bytes either way for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(15);
/// A request head must arrive within this.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection idle at least this long may be closed to make room.
const EVICTABLE_AFTER: Duration = Duration::from_millis(500);
/// How long a closing connection's late input is read and dropped.
const LINGER: Duration = Duration::from_secs(2);
/// The most late input read while lingering.
const LINGER_BYTES: usize = 32 * 1024 * 1024;

/// A TCP stream shared between hyper and the connection's task, which
/// keeps it for the idle watch and the lingering close.
#[derive(Clone)]
struct Shared {
    stream: Arc<TcpStream>,
    /// Milliseconds since `epoch` of the last byte in or out.
    last_active_ms: Arc<AtomicU64>,
    epoch: Instant,
}

impl Shared {
    fn touch(&self) {
        self.last_active_ms
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn idle_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_active_ms.load(Ordering::Relaxed));
        self.epoch.elapsed().saturating_sub(last)
    }
}

impl AsyncRead for Shared {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            ready!(self.stream.poll_read_ready(cx))?;
            match self.stream.try_read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    self.touch();
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for Shared {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.stream.poll_write_ready(cx))?;
            match self.stream.try_write(data) {
                Ok(n) => {
                    self.touch();
                    return Poll::Ready(Ok(n));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(shut_write(&self.stream))
    }
}

fn shut_write(stream: &TcpStream) -> io::Result<()> {
    rustix::net::shutdown(stream, rustix::net::Shutdown::Write).map_err(io::Error::from)
}

/// Shuts the write side and reads what the client still sends, for at
/// most [`LINGER`] and [`LINGER_BYTES`], so the last answer is not lost
/// to a reset.
async fn linger(stream: &TcpStream) {
    let _ = shut_write(stream);
    let deadline = tokio::time::Instant::now() + LINGER;
    let mut buf = vec![0u8; 64 * 1024];
    let mut read = 0;
    while read < LINGER_BYTES {
        match tokio::time::timeout_at(deadline, stream.readable()).await {
            Ok(Ok(())) => match stream.try_read(&mut buf) {
                Ok(0) => return,
                Ok(n) => read += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return,
            },
            _ => return,
        }
    }
}

/// A warning said at most once per interval, with how often it happened.
struct Throttled {
    last: Option<Instant>,
    count: u64,
}

impl Throttled {
    const EVERY: Duration = Duration::from_secs(10);

    fn new() -> Self {
        Self {
            last: None,
            count: 0,
        }
    }

    /// Counts one occurrence; true when it is time to say so.
    fn hit(&mut self) -> Option<u64> {
        self.count += 1;
        if self.last.is_some_and(|t| t.elapsed() < Self::EVERY) {
            return None;
        }
        self.last = Some(Instant::now());
        Some(std::mem::take(&mut self.count))
    }
}

/// Serves one HTTP/1 connection.
pub(crate) type Serve =
    Arc<dyn Fn(ServeIo) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// The IO a connection is served on (hyper's adapter over the shared
/// stream).
pub(crate) type ServeIo = hyper_util::rt::TokioIo<SharedIo>;

/// The connection as hyper sees it.
pub(crate) struct SharedIo(Shared);

impl AsyncRead for SharedIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for SharedIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, data)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// The open connections, each with what closes it.
#[derive(Default)]
struct Open {
    next: u64,
    conns: HashMap<u64, (Shared, Arc<Notify>, IpAddr)>,
}

impl Open {
    fn close(&mut self, id: u64) {
        if let Some((_, close, _)) = self.conns.remove(&id) {
            close.notify_one();
        }
    }

    /// The connection of `peer` (any peer: `None`) idle longest.
    fn idlest(&self, peer: Option<IpAddr>) -> Option<(u64, Duration)> {
        self.conns
            .iter()
            .filter(|(_, (_, _, p))| peer.is_none_or(|peer| *p == peer))
            .map(|(id, (shared, _, _))| (*id, shared.idle_for()))
            .max_by_key(|(_, idle)| *idle)
    }

    /// Makes room for one more connection from `peer`: within the
    /// peer's share, then within the bound, closing the one idle longest
    /// (of the peer at its share; else of all; else, when every one is
    /// busy, the busiest of the peer holding the most, if not `peer`).
    /// False when there is no room.
    fn make_room(&mut self, peer: IpAddr) -> bool {
        let of_peer = self.conns.values().filter(|(_, _, p)| *p == peer).count();
        if of_peer >= MAX_PER_PEER {
            return match self.idlest(Some(peer)) {
                Some((id, idle)) if idle >= EVICTABLE_AFTER => {
                    self.close(id);
                    true
                }
                _ => false,
            };
        }
        if self.conns.len() < MAX_CONNECTIONS {
            return true;
        }
        if let Some((id, idle)) = self.idlest(None)
            && idle >= EVICTABLE_AFTER
        {
            self.close(id);
            return true;
        }
        let mut per_peer: HashMap<IpAddr, usize> = HashMap::new();
        for (_, _, p) in self.conns.values() {
            *per_peer.entry(*p).or_default() += 1;
        }
        let greediest = per_peer.into_iter().max_by_key(|(_, n)| *n);
        match greediest {
            Some((top, n)) if top != peer && n > of_peer + 1 => {
                if let Some((id, _)) = self.idlest(Some(top)) {
                    self.close(id);
                }
                true
            }
            _ => false,
        }
    }
}

/// Accepts connections on `listener` forever, serving each with `serve`
/// within the module's bounds.
pub(crate) async fn accept_loop(listener: TcpListener, serve: Serve) {
    let open = Arc::new(Mutex::new(Open::default()));
    let mut refused = Throttled::new();
    let mut failed = Throttled::new();
    let mut backoff = Duration::ZERO;
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok((stream, peer)) => {
                backoff = Duration::ZERO;
                (stream, peer.ip())
            }
            Err(e) => {
                // At the open-file limit accept() fails at once, every
                // time: wait rather than spin, longer while it lasts.
                backoff = (backoff * 2).clamp(Duration::from_millis(10), Duration::from_secs(1));
                if let Some(n) = failed.hit() {
                    tracing::warn!(
                        failures = n,
                        "endpoints: accept() fails ({e}); retrying in {backoff:?} (at the open-file limit?)"
                    );
                }
                tokio::time::sleep(backoff).await;
                continue;
            }
        };
        let shared = Shared {
            stream: Arc::new(stream),
            last_active_ms: Arc::new(AtomicU64::new(0)),
            epoch: Instant::now(),
        };
        let close = Arc::new(Notify::new());
        let id = {
            let mut open = open.lock().unwrap_or_else(|p| p.into_inner());
            if !open.make_room(peer) {
                drop(open);
                if let Some(n) = refused.hit() {
                    tracing::warn!(
                        refused = n,
                        %peer,
                        "endpoints: no room ({MAX_CONNECTIONS} connections in all, {MAX_PER_PEER} per peer, open and busy); closing new ones"
                    );
                }
                continue;
            }
            open.next += 1;
            let id = open.next;
            open.conns
                .insert(id, (shared.clone(), Arc::clone(&close), peer));
            id
        };
        let serve = Arc::clone(&serve);
        let open = Arc::clone(&open);
        tokio::spawn(async move {
            let io = hyper_util::rt::TokioIo::new(SharedIo(shared.clone()));
            let idle = async {
                loop {
                    let left = IDLE_TIMEOUT.saturating_sub(shared.idle_for());
                    if left.is_zero() {
                        return;
                    }
                    tokio::time::sleep(left).await;
                }
            };
            tokio::select! {
                () = serve(io) => {}
                () = idle => {}
                () = close.notified() => {}
            }
            // Counted until its socket is closed: a lingering connection
            // holds an fd too (the bound evicts it like any idle one).
            linger(&shared.stream).await;
            open.lock()
                .unwrap_or_else(|p| p.into_inner())
                .conns
                .remove(&id);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warnings_are_throttled_and_count_what_they_skipped() {
        let mut t = Throttled::new();
        assert_eq!(t.hit(), Some(1));
        assert_eq!(t.hit(), None);
        assert_eq!(t.hit(), None);
        t.last = Some(Instant::now() - Throttled::EVERY);
        assert_eq!(t.hit(), Some(3));
    }
}
