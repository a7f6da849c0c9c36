//! A real nginx (Debian's) serving a folder on loopback, each connection
//! held to a rate, its access log counting the bytes of files served.
//! `$ORCHESTRATOR_NGINX_BIN`, else `/usr/sbin/nginx` (`cargo xtask test`
//! installs it). Entry point: [`Nginx::start`].

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The nginx binary.
pub fn nginx_bin() -> PathBuf {
    std::env::var_os("ORCHESTRATOR_NGINX_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/usr/sbin/nginx".into())
}

/// A running nginx; stopped when dropped.
#[derive(Debug)]
pub struct Nginx {
    child: Option<std::process::Child>,
    state: PathBuf,
    /// `HOST:PORT`.
    pub address: String,
}

impl Nginx {
    /// Serves `root` on `ip` (a free port), every connection held to
    /// `rate` (nginx's `limit_rate`: `50m` is 50 MB/s; `0` is none),
    /// with its state (config, logs) in `state`. `/api/` answers files as
    /// JSON (a hub mirror's API laid out as files); folders are listed by
    /// the JSON autoindex.
    pub fn start(state: &Path, root: &Path, ip: &str, rate: &str) -> Self {
        Self::start_at(state, root, (ip, crate::free_port_on(ip)), rate, &[])
    }

    /// [`Nginx::start`] on `ip:port`, its command run behind `prefix`
    /// (`ip netns exec NAME`: an origin in a network namespace).
    pub fn start_at(
        state: &Path,
        root: &Path,
        (ip, port): (&str, u16),
        rate: &str,
        prefix: &[&str],
    ) -> Self {
        std::fs::create_dir_all(state).unwrap_or_else(|e| panic!("{}: {e}", state.display()));
        let d = state.display();
        let conf = format!(
            r#"daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log;
events {{ worker_connections 256; }}
http {{
  log_format served '$uri $status $body_bytes_sent';
  access_log {d}/access.log served;
  client_body_temp_path {d}/body;
  proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fastcgi;
  uwsgi_temp_path {d}/uwsgi;
  scgi_temp_path {d}/scgi;
  server {{
    listen {ip}:{port};
    root {root};
    location /api/ {{ default_type application/json; }}
    location / {{ autoindex on; autoindex_format json; limit_rate {rate}; }}
  }}
}}
"#,
            root = root.display()
        );
        std::fs::write(state.join("nginx.conf"), conf).unwrap_or_else(|e| panic!("{e}"));
        let bin = nginx_bin();
        let mut command = match prefix.split_first() {
            Some((first, rest)) => {
                let mut c = std::process::Command::new(first);
                c.args(rest).arg(&bin);
                c
            }
            None => std::process::Command::new(&bin),
        };
        let child = command
            .arg("-c")
            .arg(state.join("nginx.conf"))
            .arg("-p")
            .arg(state)
            .arg("-e")
            .arg(state.join("error.log"))
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", nginx_bin().display()));
        let address = format!("{ip}:{port}");
        let until = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(&address).is_err() {
            assert!(Instant::now() < until, "nginx did not listen on {address}");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self {
            child: Some(child),
            state: state.to_path_buf(),
            address,
        }
    }

    /// The server's pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(std::process::Child::id)
    }

    /// `http://HOST:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// Bytes of file bodies served (folder listings and `/api/` aside).
    pub fn file_bytes(&self) -> u64 {
        std::fs::read_to_string(self.state.join("access.log"))
            .unwrap_or_default()
            .lines()
            .filter(|l| {
                let uri = l.split(' ').next().unwrap_or("/");
                !uri.starts_with("/api/") && !uri.ends_with('/')
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    }

    /// Stops it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        self.stop();
    }
}
