//! The process runtime against real processes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use edgefleet_agent::runtime::{Launch, ProcessConfig, ProcessRuntime, Runtime};
use edgefleet_core::supervisor::Event;
use support::{group_members, is_alive, spec, until};
use tokio::sync::mpsc;

const LIMIT: Duration = Duration::from_secs(10);

struct Harness {
    dir: tempfile::TempDir,
    runtime: ProcessRuntime,
    events: mpsc::UnboundedReceiver<Event>,
}

fn harness() -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let (tx, events) = mpsc::unbounded_channel();
    let runtime = ProcessRuntime::new(
        ProcessConfig {
            run_dir: dir.path().join("run"),
            logs: edgefleet_agent::runtime::logs::LogRegistry::new(
                dir.path().join("logs"),
                1 << 20,
                2,
            ),
        },
        tx,
    );
    std::fs::create_dir_all(dir.path().join("run")).unwrap();
    Harness {
        dir,
        runtime,
        events,
    }
}

impl Harness {
    async fn next(&mut self) -> Event {
        tokio::time::timeout(LIMIT, self.events.recv())
            .await
            .expect("no event in time")
            .expect("event channel closed")
    }

    async fn started(&mut self) -> u32 {
        match self.next().await {
            Event::Started { pid, .. } => pid.expect("a process has a pid"),
            other => panic!("expected Started, got {other:?}"),
        }
    }

    async fn exited(&mut self) -> (Option<i32>, Option<i32>) {
        match self.next().await {
            Event::Exited { code, signal, .. } => (code, signal),
            other => panic!("expected Exited, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn stop_kills_the_whole_process_group() {
    let mut h = harness();
    h.runtime.start(
        "group",
        1,
        &Launch::new(spec("group", "/bin/sh", &["-c", "sleep 100 & sleep 100"])),
    );
    let pid = h.started().await;
    // The shell and both sleeps (however the shell forks) are in the group.
    until("the grandchild to start", LIMIT, || {
        group_members(pid).len() >= 2
    })
    .await;
    let members = group_members(pid);
    assert!(
        members.iter().any(|&m| m != pid),
        "no grandchild in {members:?}"
    );

    h.runtime.stop("group", 1);
    let (code, signal) = h.exited().await;
    assert_eq!((code, signal), (None, Some(15)));
    until("every group member to die", LIMIT, || {
        members.iter().all(|&m| !is_alive(m))
    })
    .await;
}

#[tokio::test]
async fn kill_sends_sigkill_to_a_process_ignoring_sigterm() {
    let mut h = harness();
    h.runtime.start(
        "stubborn",
        1,
        &Launch::new(spec(
            "stubborn",
            "/bin/sh",
            &["-c", "trap '' TERM; echo ready; while :; do sleep 1; done"],
        )),
    );
    h.started().await;
    let log = h.dir.path().join("logs/stubborn/stdout.log");
    until("the trap to be set", LIMIT, || {
        std::fs::read_to_string(&log).is_ok_and(|s| s.contains("ready"))
    })
    .await;
    h.runtime.kill("stubborn", 1);
    assert_eq!(h.exited().await, (None, Some(9)));
}

#[tokio::test]
async fn exit_code_and_signal_are_reported() {
    let mut h = harness();
    h.runtime.start(
        "seven",
        1,
        &Launch::new(spec("seven", "/bin/sh", &["-c", "exit 7"])),
    );
    h.started().await;
    assert_eq!(h.exited().await, (Some(7), None));

    h.runtime.start(
        "selfkill",
        2,
        &Launch::new(spec("selfkill", "/bin/sh", &["-c", "kill -9 $$"])),
    );
    h.started().await;
    assert_eq!(h.exited().await, (None, Some(9)));
}

#[tokio::test]
async fn start_failure_names_the_command_and_the_os_error() {
    let mut h = harness();
    h.runtime.start(
        "missing",
        3,
        &Launch::new(spec("missing", "/no/such/binary", &[])),
    );
    match h.next().await {
        Event::StartFailed {
            name,
            instance,
            error,
        } => {
            assert_eq!((name.as_str(), instance), ("missing", 3));
            assert!(error.contains("/no/such/binary"), "{error}");
            assert!(error.contains("No such file"), "{error}");
        }
        other => panic!("expected StartFailed, got {other:?}"),
    }
    // A name that could escape the logs directory is refused before anything runs.
    h.runtime.start(
        "../evil",
        4,
        &Launch::new(spec("../evil", "/bin/true", &[])),
    );
    assert!(matches!(
        h.next().await,
        Event::StartFailed { instance: 4, .. }
    ));
}

#[tokio::test]
async fn output_env_working_dir_and_pid_file() {
    let mut h = harness();
    let workdir = tempfile::tempdir().unwrap();
    let mut spec = spec(
        "env",
        "/bin/sh",
        &[
            "-c",
            "echo \"foo=$FOO\"; pwd; echo oops >&2; read line; echo \"stdin=[$line]\"; sleep 100",
        ],
    );
    spec.env.insert("FOO".into(), "bar".into());
    spec.working_dir = Some(workdir.path().display().to_string());
    h.runtime.start("env", 1, &Launch::new(spec));
    let pid = h.started().await;

    let pid_file = h.dir.path().join("run/env.pid");
    let recorded = std::fs::read_to_string(&pid_file).unwrap();
    assert!(recorded.starts_with(&format!("{pid} ")), "{recorded}");

    let stdout = h.dir.path().join("logs/env/stdout.log");
    let stderr = h.dir.path().join("logs/env/stderr.log");
    until("the output to be logged", LIMIT, || {
        std::fs::read_to_string(&stdout).is_ok_and(|s| s.contains("stdin=[]"))
    })
    .await;
    let out = std::fs::read_to_string(&stdout).unwrap();
    assert!(out.contains("foo=bar"), "{out}");
    assert!(out.contains(&workdir.path().display().to_string()), "{out}");
    until("stderr to be logged", LIMIT, || {
        std::fs::read_to_string(&stderr).is_ok_and(|s| s.contains("oops"))
    })
    .await;

    h.runtime.stop("env", 1);
    h.exited().await;
    assert!(!pid_file.exists(), "pid file left behind after exit");
}

#[tokio::test]
async fn signals_for_an_old_instance_are_ignored() {
    let mut h = harness();
    h.runtime
        .start("w", 1, &Launch::new(spec("w", "/bin/sleep", &["100"])));
    h.started().await;
    // Signals naming another instance must not reach the running one: had the SIGKILL
    // gone out, the process would die of signal 9, not of the SIGTERM sent after it.
    h.runtime.kill("w", 99);
    h.runtime.stop("w", 99);
    h.runtime.stop("w", 1);
    assert_eq!(h.exited().await, (None, Some(15)));
}
