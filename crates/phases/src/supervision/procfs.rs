//! The process table from `/proc`: one scanner for every question the
//! orchestrator asks of it (a process group's members, zombie children).

/// One process, from `/proc/<pid>/stat`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcEntry {
    /// Its pid.
    pub pid: i32,
    /// Its command name (may contain spaces).
    pub comm: String,
    /// Its state letter (`R`, `S`, `Z`, ...).
    pub state: char,
    /// Its parent's pid.
    pub ppid: i32,
    /// Its process group.
    pub pgid: i32,
}

impl ProcEntry {
    /// Whether it has exited and waits to be reaped.
    pub fn is_zombie(&self) -> bool {
        self.state == 'Z'
    }
}

/// Parses one `/proc/<pid>/stat` line: `pid (comm) state ppid pgrp ...`.
fn parse(pid: i32, stat: &str) -> Option<ProcEntry> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?.to_string();
    let mut fields = stat.get(close + 1..)?.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    let pgid = fields.next()?.parse().ok()?;
    Some(ProcEntry {
        pid,
        comm,
        state,
        ppid,
        pgid,
    })
}

/// When `pid` started, in clock ticks since boot (`/proc/<pid>/stat` field
/// 22): with the pid, it names one process across pid reuse.
pub(crate) fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let close = stat.rfind(')')?;
    // Fields after the comm start at field 3 (state); field 22 is the 20th.
    stat.get(close + 1..)?
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()
}

/// `pid`'s command line, arguments joined by spaces (empty when unknown).
pub fn cmdline(pid: i32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .unwrap_or_default()
}

/// Every process visible in `/proc` (processes that vanish mid-scan are
/// skipped).
pub fn processes() -> Vec<ProcEntry> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()))
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            parse(pid, &stat)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_with_spaces_and_parentheses() {
        let e = parse(42, "42 (ray::Dash (x) y) S 7 40 40 0 -1").expect("parses");
        assert_eq!(e.comm, "ray::Dash (x) y");
        assert_eq!((e.state, e.ppid, e.pgid), ('S', 7, 40));
        assert!(parse(1, "garbage").is_none());
    }

    #[test]
    fn sees_this_process() {
        let me = std::process::id() as i32;
        assert!(processes().iter().any(|p| p.pid == me && !p.is_zombie()));
    }
}
