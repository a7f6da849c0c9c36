//! Starting a supervised child: in a process group of its own (so it and
//! everything it starts can be signalled together), never through a shell,
//! registered with the reaper, its output forwarded line by line to the log
//! with the last lines kept for error messages.

use std::collections::VecDeque;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};

/// The last lines a child wrote (stdout and stderr interleaved).
pub(crate) type OutputTail = Arc<Mutex<VecDeque<String>>>;

/// Called with every line a child writes, after it is logged.
pub(crate) type LineObserver = Arc<dyn Fn(&str) + Send + Sync>;

/// Spawns `argv` (program first) with `env` added. Each output line is
/// logged as `{prefix}{line}` under `process = label`; the last `keep`
/// lines stay in the returned tail; `observe`, when given, sees each line
/// too. The child's pid is registered with the reaper (the caller releases
/// it once it has waited for the child).
pub(crate) fn spawn_in_group(
    label: &str,
    prefix: &'static str,
    argv: &[String],
    env: &[(String, String)],
    keep: usize,
    observe: Option<LineObserver>,
) -> std::io::Result<(Child, OutputTail)> {
    let (program, args) = argv
        .split_first()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "empty argv"))?;
    let mut child = Command::new(program)
        .args(args)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
        crate::supervision::reaper::manage(pid);
    }
    let tail: OutputTail = Arc::new(Mutex::new(VecDeque::new()));
    let streams: [Option<Box<dyn AsyncRead + Unpin + Send>>; 2] = [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn AsyncRead + Unpin + Send>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn AsyncRead + Unpin + Send>),
    ];
    for stream in streams.into_iter().flatten() {
        let (label, tail, observe) = (label.to_string(), Arc::clone(&tail), observe.clone());
        tokio::spawn(async move {
            let mut lines = BufReader::new(stream).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                tracing::info!(process = %label, "{prefix}{line}");
                if let Some(observe) = &observe {
                    observe(&line);
                }
                if keep > 0
                    && let Ok(mut t) = tail.lock()
                {
                    if t.len() == keep {
                        t.pop_front();
                    }
                    t.push_back(line);
                }
            }
        });
    }
    Ok((child, tail))
}
