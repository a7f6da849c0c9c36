//! The endpoints under hostile load: a 10 MB header gets 431, idle
//! connections are closed, the connection bound keeps `/livez` answering.
//! (The open-file limit is in `endpoints_fd_limit.rs`: it lowers the
//! limit of its whole process.)

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use orchestrator_phases::endpoints::{
    IDLE_TIMEOUT, MAX_CONNECTIONS, MAX_HEADER_BYTES, Status, serve_endpoints,
};
use orchestrator_test_support::free_port;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

async fn endpoints() -> SocketAddr {
    let address: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    serve_endpoints(address, Status::new()).await.unwrap();
    address
}

/// One GET on a fresh connection: the status line.
fn get(address: SocketAddr, path: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&address, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    Ok(text.lines().next().unwrap_or_default().to_string())
}

/// Whether the server closed `s` (EOF or reset) within `wait`.
fn closed_by_server(mut s: &TcpStream, wait: Duration) -> bool {
    s.set_read_timeout(Some(wait)).unwrap();
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_header_gets_431_not_a_reset() {
    let address = endpoints().await;
    let answer = tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(address).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let header = format!(
            "GET /livez HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
            "a".repeat(10 * 1024 * 1024)
        );
        // The server answers long before the header is all sent; the write
        // may or may not finish, the answer must arrive either way.
        let _ = s.write_all(header.as_bytes());
        let mut text = String::new();
        let _ = s.read_to_string(&mut text);
        text
    })
    .await
    .unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 431"),
        "a head over {MAX_HEADER_BYTES} bytes: {:?}",
        &answer[..answer.len().min(200)]
    );
    // And the endpoints go on.
    let line = tokio::task::spawn_blocking(move || get(address, "/livez"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(line, "HTTP/1.1 200 OK");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_and_the_bound_keeps_livez_answering() {
    let address = endpoints().await;
    tokio::task::spawn_blocking(move || {
        // Past the bound, every connection idle: each new one (a probe)
        // still gets through, the idlest making room.
        let idle: Vec<TcpStream> = (0..MAX_CONNECTIONS + 44)
            .map(|_| TcpStream::connect(address).unwrap())
            .collect();
        std::thread::sleep(Duration::from_millis(800));
        for _ in 0..5 {
            assert_eq!(get(address, "/livez").unwrap(), "HTTP/1.1 200 OK");
        }
        let closed_early = idle
            .iter()
            .filter(|s| closed_by_server(s, Duration::from_millis(20)))
            .count();
        assert!(
            closed_early >= 44,
            "{closed_early} of {} closed to stay within {MAX_CONNECTIONS}",
            idle.len()
        );
        // After the idle timeout, every one is closed.
        let start = Instant::now();
        std::thread::sleep(IDLE_TIMEOUT + Duration::from_secs(1));
        let still_open = idle
            .iter()
            .filter(|s| !closed_by_server(s, Duration::from_millis(20)))
            .count();
        assert_eq!(still_open, 0, "after {:?}", start.elapsed());
        // A kept-alive connection that sent a request, then went quiet.
        let mut s = TcpStream::connect(address).unwrap();
        write!(s, "GET /livez HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut buf = [0u8; 512];
        let n = s.read(&mut buf).unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
        assert!(closed_by_server(&s, IDLE_TIMEOUT + Duration::from_secs(2)));
    })
    .await
    .unwrap();
}

/// `/livez` from another address within `limit`, on a connection bound to
/// `source`.
async fn livez_from(source: &str, address: SocketAddr) -> Result<String, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let socket = tokio::net::TcpSocket::new_v4().map_err(|e| e.to_string())?;
    socket
        .bind(format!("{source}:0").parse().map_err(|e| format!("{e}"))?)
        .map_err(|e| e.to_string())?;
    let work = async {
        let mut s = socket.connect(address).await.map_err(|e| e.to_string())?;
        s.write_all(b"GET /livez HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .map_err(|e| e.to_string())?;
        let mut text = String::new();
        s.read_to_string(&mut text)
            .await
            .map_err(|e| e.to_string())?;
        Ok(text.lines().next().unwrap_or_default().to_string())
    };
    tokio::time::timeout(Duration::from_secs(3), work)
        .await
        .map_err(|_| "timed out".to_string())?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_on_every_connection_do_not_starve_livez_from_another_peer() {
    use tokio::io::AsyncWriteExt;
    let address = endpoints().await;
    // 300 connections from 127.0.0.1, each trickling a byte every 250 ms
    // (never idle, never a whole head).
    let trickle = tokio::spawn(async move {
        let mut conns = Vec::new();
        for _ in 0..300 {
            if let Ok(s) = tokio::net::TcpStream::connect(address).await {
                conns.push(s);
            }
        }
        for _ in 0..40 {
            for s in &mut conns {
                let _ = s.write_all(b"G").await;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    // A probe from another peer (the kubelet's address) answers, every time.
    for _ in 0..5 {
        let answer = livez_from("127.0.0.2", address).await;
        assert_eq!(answer.as_deref(), Ok("HTTP/1.1 200 OK"), "{answer:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    trickle.abort();
}
