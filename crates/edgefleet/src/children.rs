//! The child processes of `edgefleet quickstart`, and the guard that stops them.
//!
//! Children run in process groups of their own, so a Ctrl-C in the terminal reaches only
//! the quickstart, which then stops them in order: agents first (they stop their workloads),
//! then the server. Each gets SIGTERM, a bounded wait, then SIGKILL. `Drop` does the same, so
//! every error path cleans up too.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

use crate::output::note;

/// What a child is; decides the stop order and what is cleaned up after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    Server,
    /// An agent, with its data directory (whose `run/*.pid` name its workloads).
    Agent {
        data_dir: PathBuf,
    },
}

#[derive(Debug)]
struct Child {
    name: String,
    role: Role,
    process: std::process::Child,
    log: PathBuf,
}

/// The running children. Stops them all when dropped.
#[derive(Debug, Default)]
pub struct Children {
    list: Vec<Child>,
}

const AGENT_STOP_WAIT: Duration = Duration::from_secs(20);
const SERVER_STOP_WAIT: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(50);

impl Children {
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts `command` with stdout and stderr appended to `log`, in its own process group.
    pub fn spawn(
        &mut self,
        name: &str,
        role: Role,
        mut command: Command,
        log: &Path,
    ) -> anyhow::Result<()> {
        let file = File::options()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening the log file {}", log.display()))?;
        let file_err = file
            .try_clone()
            .with_context(|| format!("opening the log file {}", log.display()))?;
        command
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(file_err)
            .process_group(0);
        let process = command
            .spawn()
            .with_context(|| format!("starting the {name} process"))?;
        self.list.push(Child {
            name: name.to_owned(),
            role,
            process,
            log: log.to_owned(),
        });
        Ok(())
    }

    /// Fails if any child has exited: the quickstart needs all of them.
    pub fn check(&mut self) -> anyhow::Result<()> {
        for child in &mut self.list {
            if let Ok(Some(status)) = child.process.try_wait() {
                anyhow::bail!(
                    "the {} process exited ({status}); the end of its log {}:\n{}",
                    child.name,
                    child.log.display(),
                    tail(&child.log, 15)
                );
            }
        }
        Ok(())
    }

    /// Stops every child: agents first, then the server. Bounded in time.
    pub fn stop(&mut self) {
        let (agents, rest): (Vec<Child>, Vec<Child>) = std::mem::take(&mut self.list)
            .into_iter()
            .partition(|c| matches!(c.role, Role::Agent { .. }));
        stop_group(agents, AGENT_STOP_WAIT);
        stop_group(rest, SERVER_STOP_WAIT);
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        self.stop();
    }
}

fn stop_group(mut group: Vec<Child>, wait: Duration) {
    group.retain_mut(|c| matches!(c.process.try_wait(), Ok(None)));
    if group.is_empty() {
        return;
    }
    for child in &group {
        signal(child, Signal::SIGTERM);
    }
    let deadline = Instant::now() + wait;
    while Instant::now() < deadline {
        group.retain_mut(|c| matches!(c.process.try_wait(), Ok(None)));
        if group.is_empty() {
            return;
        }
        std::thread::sleep(POLL);
    }
    for child in &mut group {
        note(&format!(
            "{} did not stop within {}s; killing it",
            child.name,
            wait.as_secs()
        ));
        let _ = child.process.kill();
        let _ = child.process.wait();
        if let Role::Agent { data_dir } = &child.role {
            // A killed agent could not stop its workloads, which run in their own groups.
            kill_workloads(&data_dir.join("run"));
        }
    }
}

fn signal(child: &Child, signal: Signal) {
    if let Ok(pid) = i32::try_from(child.process.id()) {
        let _ = kill(Pid::from_raw(pid), signal);
    }
}

/// Kills the process groups recorded in an agent's `run/*.pid` files (`<pid> <start time>`),
/// but only when the process is still the one recorded: pid and start time must both match.
fn kill_workloads(run_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(run_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some("pid") {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        let mut parts = text.split_whitespace();
        let (Some(Ok(pid)), Some(Ok(start))) = (
            parts.next().map(str::parse::<i32>),
            parts.next().map(str::parse::<u64>),
        ) else {
            continue;
        };
        if pid > 1 && process_start_time(pid) == Some(start) {
            let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

/// Field 22 of `/proc/<pid>/stat`: when the process started, in clock ticks since boot.
fn process_start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may itself hold spaces.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(22 - 3)?.parse().ok()
}

/// The last `n` lines of a log file, indented, for error messages.
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(n);
    if lines.is_empty() {
        return "  (empty)".to_owned();
    }
    lines[start..]
        .iter()
        .map(|l| format!("  {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn children_are_stopped_and_exits_reported() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("sleeper.log");
        let mut children = Children::new();
        let mut sleeper = Command::new("/bin/sh");
        sleeper.args(["-c", "echo started; exec sleep 30"]);
        children
            .spawn("sleeper", Role::Server, sleeper, &log)
            .unwrap();
        let mut quitter = Command::new("/bin/sh");
        quitter.args(["-c", "echo bye; exit 3"]);
        children
            .spawn(
                "quitter",
                Role::Agent {
                    data_dir: dir.path().into(),
                },
                quitter,
                &dir.path().join("q.log"),
            )
            .unwrap();
        // Wait for the quitter to exit (bounded).
        let deadline = Instant::now() + Duration::from_secs(10);
        let error = loop {
            match children.check() {
                Err(error) => break error,
                Ok(()) if Instant::now() > deadline => panic!("quitter did not exit"),
                Ok(()) => std::thread::sleep(POLL),
            }
        };
        let message = error.to_string();
        assert!(
            message.starts_with("the quitter process exited (exit status: 3)"),
            "{message}"
        );
        assert!(message.ends_with("  bye"), "{message}");
        let started = Instant::now();
        children.stop();
        assert!(
            started.elapsed() < SERVER_STOP_WAIT,
            "sleep should stop on SIGTERM"
        );
        assert!(children.list.is_empty());
    }

    #[test]
    fn start_time_of_self_is_readable() {
        let pid = i32::try_from(std::process::id()).unwrap();
        assert!(process_start_time(pid).is_some());
        assert_eq!(tail(Path::new("/nonexistent"), 3), "  (empty)");
    }
}
