//! Processes left behind by a crashed agent are found by their pid files and stopped.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, Stdio};
use std::time::Duration;

use edgefleet_agent::runtime::pidfile;

fn spawn_in_own_group(script: &str) -> std::process::Child {
    Command::new("/bin/sh")
        .args(["-c", script])
        .stdout(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap()
}

fn wait_ready(child: &mut std::process::Child) {
    use std::io::BufRead;
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "ready");
}

#[tokio::test]
async fn a_leftover_process_is_stopped_and_its_pid_file_removed() {
    let run = tempfile::tempdir().unwrap();
    let mut child = spawn_in_own_group("echo ready; exec sleep 100");
    wait_ready(&mut child);
    pidfile::write(run.path(), "web", child.id()).unwrap();

    let stopped = pidfile::stop_leftovers(run.path(), Duration::from_secs(5)).await;
    assert_eq!(stopped, ["web"]);
    assert_eq!(child.wait().unwrap().signal(), Some(15));
    assert!(!pidfile::path(run.path(), "web").exists());
}

#[tokio::test]
async fn a_leftover_ignoring_sigterm_gets_sigkill() {
    let run = tempfile::tempdir().unwrap();
    let mut child = spawn_in_own_group("trap '' TERM; echo ready; while :; do sleep 1; done");
    wait_ready(&mut child);
    pidfile::write(run.path(), "stubborn", child.id()).unwrap();

    let stopped = pidfile::stop_leftovers(run.path(), Duration::from_millis(300)).await;
    assert_eq!(stopped, ["stubborn"]);
    assert_eq!(child.wait().unwrap().signal(), Some(9));
}

#[tokio::test]
async fn a_pid_reused_by_another_process_is_left_alone() {
    let run = tempfile::tempdir().unwrap();
    let mut child = spawn_in_own_group("echo ready; exec sleep 100");
    wait_ready(&mut child);
    // Same pid, different start time: not the process the file was written for.
    let path = pidfile::path(run.path(), "web");
    let start = pidfile::start_time(child.id()).unwrap();
    std::fs::write(&path, format!("{} {}\n", child.id(), start + 1)).unwrap();
    std::fs::write(pidfile::path(run.path(), "garbage"), "not a pid file").unwrap();

    let stopped = pidfile::stop_leftovers(run.path(), Duration::from_secs(5)).await;
    assert!(stopped.is_empty(), "{stopped:?}");
    assert!(!path.exists(), "stale pid file kept");
    assert!(
        child.try_wait().unwrap().is_none(),
        "an unrelated process was killed"
    );
    child.kill().unwrap();
    child.wait().unwrap();
}
