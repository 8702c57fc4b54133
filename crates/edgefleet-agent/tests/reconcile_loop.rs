//! The reconcile loop: supervisor decisions carried out by a runtime.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use edgefleet_agent::reconcile::{Reconciler, Status};
use edgefleet_agent::recorder::Recorder;
use edgefleet_agent::runtime::{EventSender, Launch, ProcessConfig, ProcessRuntime, Runtime};
use edgefleet_agent::shutdown;
use edgefleet_core::supervisor::Event;
use edgefleet_wire::api::{DesiredState, DesiredWorkload};
use edgefleet_wire::manifest::WorkloadSpec;
use edgefleet_wire::node::{NodeEventKind, WorkloadState};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use support::{desired, eventually, is_alive, spec};
use tokio::sync::{mpsc, watch};

const LIMIT: Duration = Duration::from_secs(10);

/// An in-memory runtime: records what it was asked to do, and answers at once.
struct FakeRuntime {
    calls: Arc<Mutex<Vec<String>>>,
    events: EventSender,
    next_pid: u32,
}

impl Runtime for FakeRuntime {
    fn prepare(&mut self, name: &str, instance: u64, _launch: &Launch) {
        self.events
            .send(Event::Prepared {
                name: name.into(),
                instance,
            })
            .unwrap();
    }

    fn start(&mut self, name: &str, instance: u64, launch: &Launch) {
        self.calls.lock().unwrap().push(format!("start {name}"));
        if launch.spec.command == "fail" {
            self.events
                .send(Event::StartFailed {
                    name: name.into(),
                    instance,
                    error: "no such program".into(),
                })
                .unwrap();
            return;
        }
        self.next_pid += 1;
        self.events
            .send(Event::Started {
                name: name.into(),
                instance,
                pid: Some(self.next_pid),
                at: time::OffsetDateTime::now_utc(),
            })
            .unwrap();
    }

    fn stop(&mut self, name: &str, instance: u64) {
        self.calls.lock().unwrap().push(format!("stop {name}"));
        self.events
            .send(Event::Exited {
                name: name.into(),
                instance,
                code: None,
                signal: Some(15),
                reason: None,
            })
            .unwrap();
    }

    fn kill(&mut self, name: &str, instance: u64) {
        self.calls.lock().unwrap().push(format!("kill {name}"));
        self.events
            .send(Event::Exited {
                name: name.into(),
                instance,
                code: None,
                signal: Some(9),
                reason: None,
            })
            .unwrap();
    }
}

fn state(generation: u64, specs: Vec<WorkloadSpec>) -> Option<Arc<DesiredState>> {
    Some(Arc::new(DesiredState {
        node: "node-a".into(),
        generation,
        workloads: specs.into_iter().map(desired).collect(),
    }))
}

async fn status_where(
    status: &mut watch::Receiver<Status>,
    what: &str,
    mut check: impl FnMut(&Status) -> bool,
) -> Status {
    let result = tokio::time::timeout(LIMIT, status.wait_for(|s| check(s)))
        .await
        .map(|r| r.unwrap().clone());
    match result {
        Ok(status) => status,
        Err(_) => panic!(
            "timed out waiting for {what}; status: {:?}",
            status.borrow()
        ),
    }
}

#[tokio::test]
async fn the_same_desired_state_again_changes_nothing() {
    let calls = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = mpsc::unbounded_channel();
    let runtime = FakeRuntime {
        calls: calls.clone(),
        events: tx,
        next_pid: 100,
    };
    let (reconciler, mut status) = Reconciler::new(Box::new(runtime), rx);
    let web = spec("web", "/bin/sleep", &["100"]);
    let (desired_tx, desired_rx) = watch::channel(state(1, vec![web.clone()]));
    let (trigger, stop) = shutdown::channel();
    let task = tokio::spawn(reconciler.run(desired_rx, stop));

    status_where(&mut status, "web running", |s| {
        s.workloads
            .iter()
            .any(|w| w.state == WorkloadState::Running)
    })
    .await;
    // What a reconnect delivers: the same workloads, possibly under a new generation.
    desired_tx.send_replace(state(1, vec![web.clone()]));
    desired_tx.send_replace(state(2, vec![web.clone()]));
    let now = status_where(&mut status, "generation 2 applied", |s| {
        s.applied_generation == 2
    })
    .await;
    assert_eq!(now.workloads[0].pid, Some(101));
    assert_eq!(*calls.lock().unwrap(), ["start web"]);

    // A changed spec replaces it; a removed workload is stopped.
    let changed = spec("web", "/bin/sleep", &["200"]);
    desired_tx.send_replace(state(3, vec![changed]));
    status_where(&mut status, "the replacement", |s| {
        s.applied_generation == 3 && s.workloads[0].pid == Some(102)
    })
    .await;
    desired_tx.send_replace(state(4, vec![]));
    status_where(&mut status, "removal", |s| s.workloads.is_empty()).await;
    assert_eq!(
        *calls.lock().unwrap(),
        ["start web", "stop web", "start web", "stop web"]
    );

    trigger.trigger();
    tokio::time::timeout(LIMIT, task).await.unwrap().unwrap();
}

#[tokio::test]
async fn a_workload_killed_from_outside_is_restarted_and_shutdown_stops_it() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("run")).unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    let runtime = ProcessRuntime::new(
        ProcessConfig {
            run_dir: dir.path().join("run"),
            logs: edgefleet_agent::runtime::logs::LogRegistry::new(
                dir.path().join("logs"),
                4096,
                1,
            ),
        },
        tx,
    );
    let (reconciler, mut status) = Reconciler::new(Box::new(runtime), rx);
    let (_desired_tx, desired_rx) =
        watch::channel(state(1, vec![spec("sleeper", "/bin/sleep", &["100"])]));
    let (trigger, stop) = shutdown::channel();
    let task = tokio::spawn(reconciler.run(desired_rx, stop));

    let running = |s: &Status| {
        s.workloads
            .first()
            .filter(|w| w.state == WorkloadState::Running)
            .and_then(|w| w.pid)
    };
    let first =
        running(&status_where(&mut status, "first start", |s| running(s).is_some()).await).unwrap();
    kill(Pid::from_raw(first as i32), Signal::SIGKILL).unwrap();
    let after = status_where(&mut status, "a restart with a new pid", |s| {
        running(s).is_some_and(|pid| pid != first)
    })
    .await;
    let second = running(&after).unwrap();
    assert_eq!(after.workloads[0].restarts, 1);
    assert!(is_alive(second));

    trigger.trigger();
    tokio::time::timeout(LIMIT, task).await.unwrap().unwrap();
    eventually("the workload to be gone after shutdown", LIMIT, || async {
        (!is_alive(second)).then_some(())
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn workload_events_reach_the_flight_recorder() {
    let dir = tempfile::tempdir().unwrap();
    let recorder = Arc::new(Recorder::open(dir.path(), 1000).unwrap());
    let (tx, rx) = mpsc::unbounded_channel();
    let runtime = FakeRuntime {
        calls: Arc::new(Mutex::new(Vec::new())),
        events: tx.clone(),
        next_pid: 100,
    };
    let (reconciler, mut status) = Reconciler::new(Box::new(runtime), rx);
    let reconciler = reconciler.with_recorder(recorder.clone());
    let (desired_tx, desired_rx) =
        watch::channel(state(1, vec![spec("web", "/bin/sleep", &["100"])]));
    let (trigger, stop) = shutdown::channel();
    let task = tokio::spawn(reconciler.run(desired_rx, stop));

    let pid_is = |pid: u32| {
        move |s: &Status| {
            s.workloads
                .iter()
                .any(|w| w.state == WorkloadState::Running && w.pid == Some(pid))
        }
    };
    status_where(&mut status, "web running", pid_is(101)).await;
    // It exits by itself three times in a row (instances 2 to 4; instance 1 was its
    // preparation): a crash loop.
    for (instance, next_pid) in [(2, 102), (3, 103), (4, 104)] {
        tx.send(Event::Exited {
            name: "web".into(),
            instance,
            code: Some(3),
            signal: None,
            reason: None,
        })
        .unwrap();
        status_where(&mut status, "web restarted", pid_is(next_pid)).await;
    }

    // A rollback to an earlier revision replaces it; a repeat of that state (a new
    // generation only) records nothing new.
    let rolled_back = DesiredWorkload {
        streams: Vec::new(),
        deployment: "test".into(),
        revision: "rev-0".into(),
        spec_hash: "hash-of-rev-0".into(),
        spec: spec("web", "/bin/sleep", &["50"]),
        rolled_back: true,
        labels: Default::default(),
    };
    let with_rollback = |generation: u64, extra: Vec<DesiredWorkload>| {
        let mut workloads = vec![rolled_back.clone()];
        workloads.extend(extra);
        Some(Arc::new(DesiredState {
            node: "node-a".into(),
            generation,
            workloads,
        }))
    };
    desired_tx.send_replace(with_rollback(2, vec![]));
    status_where(&mut status, "the rolled-back revision running", pid_is(105)).await;
    desired_tx.send_replace(with_rollback(3, vec![]));
    status_where(&mut status, "generation 3", |s| s.applied_generation == 3).await;
    // A workload that cannot start, and stays down (restart policy never).
    let broken: WorkloadSpec = serde_json::from_value(serde_json::json!({
        "name": "broken", "command": "fail", "restartPolicy": "never"
    }))
    .unwrap();
    desired_tx.send_replace(with_rollback(4, vec![desired(broken)]));
    status_where(&mut status, "broken given up", |s| {
        s.workloads
            .iter()
            .any(|w| w.name == "broken" && w.state == WorkloadState::Exited)
    })
    .await;

    trigger.trigger();
    tokio::time::timeout(LIMIT, task).await.unwrap().unwrap();

    use NodeEventKind::*;
    let events = recorder.events();
    let kinds: Vec<_> = events.iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        [
            WorkloadStarted,
            WorkloadExited,
            WorkloadStarted,
            WorkloadExited,
            WorkloadStarted,
            WorkloadExited,
            WorkloadCrashLooping,
            WorkloadStarted,
            WorkloadStopped,
            Rollback,
            WorkloadStarted,
            WorkloadStartFailed,
            WorkloadStopped,
        ],
        "{events:#?}"
    );
    let about = |i: usize| {
        (
            events[i].workload.as_deref().unwrap_or(""),
            events[i].deployment.as_deref().unwrap_or(""),
            events[i].revision.as_deref().unwrap_or(""),
            events[i].message.as_str(),
        )
    };
    assert_eq!(about(0), ("web", "test", "rev-1", "started (pid 101)"));
    assert_eq!(about(1), ("web", "test", "rev-1", "exited with code 3"));
    assert!(about(6).3.starts_with("crash loop"), "{:?}", about(6));
    assert_eq!(
        about(8),
        (
            "web",
            "test",
            "rev-1",
            "stopped by the agent (killed by signal 15)"
        )
    );
    assert_eq!(about(9).0, "web");
    assert_eq!(about(9).2, "rev-0");
    assert_eq!(about(10), ("web", "test", "rev-0", "started (pid 105)"));
    assert_eq!(
        about(11),
        (
            "broken",
            "test",
            "rev-1",
            "failed to start: no such program"
        )
    );
    assert_eq!(about(12).2, "rev-0");
}
