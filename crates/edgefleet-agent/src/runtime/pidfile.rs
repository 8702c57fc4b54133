//! PID files: which process runs each workload, so a restarted agent can find processes
//! its crashed predecessor left behind and stop them before starting anything, and nothing
//! runs twice.
//!
//! `run/<workload>.pid` holds `<pid> <start time>`, the start time being field 22 of
//! `/proc/<pid>/stat` (clock ticks since boot). A pid alone is not enough: after a reboot or
//! a long time the pid may belong to an unrelated process; pid and start time together
//! identify one process.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tracing::{debug, warn};

use crate::fsutil::{self, FsError};

/// How long a leftover process gets between SIGTERM and SIGKILL.
pub const LEFTOVER_GRACE: Duration = Duration::from_secs(5);

const POLL: Duration = Duration::from_millis(50);

pub fn path(run_dir: &Path, workload: &str) -> PathBuf {
    run_dir.join(format!("{workload}.pid"))
}

/// The start time (field 22) from the text of `/proc/<pid>/stat`.
pub fn parse_start_time(stat: &str) -> Option<u64> {
    // The command name (field 2) is in parentheses and may itself hold spaces and ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    // Fields after the name start at field 3 (state); the start time is field 22.
    rest.split_whitespace().nth(22 - 3)?.parse().ok()
}

/// The state letter (field 3) from the text of `/proc/<pid>/stat`.
pub fn parse_state(stat: &str) -> Option<char> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().next()?.chars().next()
}

fn read_stat(pid: u32) -> Option<String> {
    fs::read_to_string(format!("/proc/{pid}/stat")).ok()
}

/// The start time of a live process, `None` if there is no such process.
pub fn start_time(pid: u32) -> Option<u64> {
    read_stat(pid).as_deref().and_then(parse_start_time)
}

/// Whether `pid` is a live process (not a zombie) that started at `start_time`.
fn is_same_live_process(pid: u32, start_time: u64) -> bool {
    let Some(stat) = read_stat(pid) else {
        return false;
    };
    parse_start_time(&stat) == Some(start_time) && !matches!(parse_state(&stat), Some('Z' | 'X'))
}

/// Records that `workload` runs as `pid`. Returns the start time written.
pub fn write(run_dir: &Path, workload: &str, pid: u32) -> Result<u64, FsError> {
    let path = path(run_dir, workload);
    let start = start_time(pid).ok_or_else(|| {
        FsError::new(
            "reading the start time for",
            &path,
            std::io::Error::other(format!("process {pid} is gone")),
        )
    })?;
    fsutil::write_atomic(&path, format!("{pid} {start}\n").as_bytes(), fsutil::PUBLIC)?;
    Ok(start)
}

/// Removes the pid file of `workload` if it still names `pid` (and not a later instance).
pub fn remove(run_dir: &Path, workload: &str, pid: u32) {
    let path = path(run_dir, workload);
    let recorded = fs::read_to_string(&path)
        .ok()
        .as_deref()
        .and_then(parse_record);
    if recorded.is_some_and(|(recorded_pid, _)| recorded_pid != pid) {
        return;
    }
    if let Err(error) = fs::remove_file(&path)
        && error.kind() != std::io::ErrorKind::NotFound
    {
        warn!(%error, path = %path.display(), "could not remove pid file");
    }
}

fn parse_record(text: &str) -> Option<(u32, u64)> {
    let mut parts = text.split_whitespace();
    let pid = parts.next()?.parse().ok()?;
    let start = parts.next()?.parse().ok()?;
    Some((pid, start))
}

/// Stops every process recorded in `run_dir` that is still the same process (SIGTERM to
/// its process group, SIGKILL after `grace`), and removes the pid files. Returns the names
/// of the workloads whose processes were found running.
pub async fn stop_leftovers(run_dir: &Path, grace: Duration) -> Vec<String> {
    let Ok(entries) = fs::read_dir(run_dir) else {
        return vec![];
    };
    let mut leftovers = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let Some(workload) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".pid"))
            .map(str::to_owned)
        else {
            continue;
        };
        let record = fs::read_to_string(&path)
            .ok()
            .as_deref()
            .and_then(parse_record);
        match record {
            Some((pid, start)) if pid > 1 && is_same_live_process(pid, start) => {
                warn!(
                    workload,
                    pid, "stopping a process left over from a previous agent run"
                );
                signal_group(pid, Signal::SIGTERM);
                leftovers.push((workload, pid, start, path));
            }
            _ => {
                debug!(path = %path.display(), "removing stale pid file");
                let _ = fs::remove_file(&path);
            }
        }
    }
    let deadline = tokio::time::Instant::now() + grace;
    while leftovers
        .iter()
        .any(|(_, pid, start, _)| is_same_live_process(*pid, *start))
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(POLL).await;
    }
    let mut names = Vec::new();
    for (workload, pid, start, path) in leftovers {
        // Also when the leader is gone: its children may still be in the group.
        if is_same_live_process(pid, start) {
            warn!(
                workload,
                pid, "leftover process ignored SIGTERM; sending SIGKILL"
            );
        }
        signal_group(pid, Signal::SIGKILL);
        let _ = fs::remove_file(&path);
        names.push(workload);
    }
    names
}

/// Sends `signal` to the process group led by `pid`; a group that is already gone is fine.
pub fn signal_group(pid: u32, signal: Signal) {
    let Ok(raw) = i32::try_from(pid) else {
        return;
    };
    // pid 0 or 1 would address our own group or everything: never valid for a workload.
    if raw <= 1 {
        return;
    }
    match killpg(Pid::from_raw(raw), signal) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
        Err(error) => warn!(%error, pid, signal = %signal, "could not signal process group"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_lines() {
        let stat = "1234 (my (odd) cmd) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 50";
        assert_eq!(parse_start_time(stat), Some(987654));
        assert_eq!(parse_state(stat), Some('S'));
        assert_eq!(parse_start_time("garbage"), None);
        assert_eq!(parse_start_time("1 (x) S 1 2"), None);
    }

    #[test]
    fn own_process_has_a_start_time() {
        assert!(start_time(std::process::id()).is_some());
    }

    #[test]
    fn parses_records() {
        assert_eq!(parse_record("42 1000\n"), Some((42, 1000)));
        assert_eq!(parse_record("42"), None);
        assert_eq!(parse_record("x y"), None);
    }
}
