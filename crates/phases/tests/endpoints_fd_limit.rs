//! The endpoints at the open-file limit: `accept()` fails at once, over
//! and over; the loop must back off (no spinning), say so, and answer
//! again once descriptors are free. Its own test binary: it lowers the
//! open-file limit of the whole process.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use orchestrator_phases::endpoints::{Status, serve_endpoints};
use orchestrator_test_support::free_port;
use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// CPU seconds this process has used (user + system), read from its
/// `/proc/self/stat` opened beforehand (no descriptor is left to open it
/// at the limit).
fn cpu_seconds(stat: &mut std::fs::File) -> f64 {
    use std::io::Seek;
    stat.rewind().unwrap();
    let mut text = String::new();
    stat.read_to_string(&mut text).unwrap();
    let after = &text[text.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15 (1-based) of the whole line.
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_open_file_limit_accept_backs_off_and_recovers() {
    let address: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    serve_endpoints(address, Status::new()).await.unwrap();
    let old = getrlimit(Resource::Nofile);
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(128),
            maximum: old.maximum,
        },
    )
    .unwrap();
    let mut stat = std::fs::File::open("/proc/self/stat").unwrap();
    let (cpu, recovered) = tokio::task::spawn_blocking(move || {
        // Connect until this process has no descriptor left: the server's
        // pending accepts then fail with EMFILE.
        let mut held = Vec::new();
        while let Ok(s) = TcpStream::connect_timeout(&address, Duration::from_secs(1)) {
            held.push(s);
            if held.len() > 1000 {
                panic!("the limit did not bite");
            }
        }
        let before = cpu_seconds(&mut stat);
        std::thread::sleep(Duration::from_secs(3));
        let cpu = cpu_seconds(&mut stat) - before;
        // Free descriptors: /livez answers again.
        held.truncate(held.len() / 4);
        let mut answered = None;
        for _ in 0..50 {
            if let Ok(mut s) = TcpStream::connect_timeout(&address, Duration::from_secs(1)) {
                s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
                let _ = write!(
                    s,
                    "GET /livez HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                );
                let mut text = String::new();
                let _ = s.read_to_string(&mut text);
                if text.starts_with("HTTP/1.1 200") {
                    answered = Some(text);
                    break;
                }
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        (cpu, answered.is_some())
    })
    .await
    .unwrap();
    setrlimit(Resource::Nofile, old).unwrap();
    assert!(
        cpu < 0.5,
        "{cpu:.2} CPU-s in 3 s at the limit: the accept loop spins"
    );
    assert!(recovered, "/livez answers once descriptors are free");
}
