//! The flight recorder end to end against the fake server: events recorded while the
//! server is unreachable (across an agent restart) arrive once and in order when it comes
//! back; a backlog goes in bounded batches; a full log says what it dropped; an older
//! server without the route is not hammered. Also update locks as the server sees them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod fake_server;
mod support;

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;

use edgefleet_agent::local_api::{self, LockArgs, LockCommand};
use edgefleet_agent::recorder::{NewEvent, Recorder, parse_log};
use edgefleet_wire::api::{DesiredState, DesiredWorkload};
use edgefleet_wire::local::{LocalRequest, LocalResponse};
use edgefleet_wire::node::{EventBatch, NodeEvent, NodeEventKind, ReportedState};
use fake_server::FakeServer;
use support::{AGENT_LIMIT as LIMIT, agent_args, desired, eventually, spec, start_agent, until};

/// The agent's own event log, as on disk now.
fn local_log(data: &Path) -> Vec<NodeEvent> {
    let text = std::fs::read_to_string(data.join("events/events.jsonl")).unwrap_or_default();
    parse_log(&text).events.into_iter().collect()
}

/// The agent's delivery cursor on disk (0 when there is none).
fn cursor(data: &Path) -> u64 {
    std::fs::read_to_string(data.join("events/delivered"))
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(0)
}

/// Waits until the server has everything in the agent's log and the agent has persisted
/// that (a restart before the cursor is written sends the last batch again, which the
/// server would deduplicate but these tests count).
async fn all_delivered(server: &FakeServer, data: &Path) {
    until("every event on the server and acknowledged", LIMIT, || {
        let stored = server.events();
        stored == local_log(data) && stored.last().map_or(0, |e| e.seq) == cursor(data)
    })
    .await;
}

fn count(events: &[NodeEvent], kind: NodeEventKind) -> usize {
    events.iter().filter(|e| e.kind == kind).count()
}

/// A workload that exits with code 3 at once and stays down.
fn exits_with_3() -> DesiredWorkload {
    let spec = serde_json::from_value(serde_json::json!({
        "name": "once",
        "command": "/bin/sh",
        "args": ["-c", "exit 3"],
        "restartPolicy": "never",
    }))
    .unwrap();
    desired(spec)
}

async fn ask(data: &Path, request: LocalRequest) -> LocalResponse {
    eventually("the agent's local API", LIMIT, || {
        let request = request.clone();
        async move { local_api::request(data, &request).await.ok() }
    })
    .await
}

fn acquire(workload: &str) -> LocalRequest {
    LocalRequest::Acquire {
        workload: workload.into(),
        reason: "test".into(),
    }
}

#[tokio::test]
async fn events_recorded_while_the_server_is_unreachable_arrive_once_and_in_order() {
    let server = FakeServer::start().await;
    let marker: &str = &format!("2001.{}", std::process::id());
    server.set_desired(DesiredState {
        node: "node-a".into(),
        generation: 1,
        workloads: vec![
            desired(spec("web", "/bin/sleep", &[marker])),
            exits_with_3(),
        ],
    });
    let data = tempfile::tempdir().unwrap();
    let d = data.path();
    let agent = start_agent(agent_args(d, Some(server.join())));

    // Online, events go to the server as they happen.
    until("the first events on the server", LIMIT, || {
        let events = server.events();
        count(&events, NodeEventKind::WorkloadExited) == 1
            && count(&events, NodeEventKind::WorkloadStarted) == 2
    })
    .await;
    all_delivered(&server, d).await;
    let delivered_online = server.events().len();

    // Unreachable: a lock comes and goes, the agent restarts (stopping and starting its
    // workloads), a lock is taken again.
    server.set_offline(true);
    assert!(ask(d, acquire("web")).await.ok);
    assert!(
        ask(
            d,
            LocalRequest::Release {
                workload: "web".into()
            }
        )
        .await
        .ok
    );
    agent.shutdown().await.unwrap();
    let agent = start_agent(agent_args(d, None));
    assert!(ask(d, acquire("web")).await.ok);
    until("the workloads' events after the restart", LIMIT, || {
        let events = local_log(d);
        count(&events, NodeEventKind::WorkloadExited) == 2
            && count(&events, NodeEventKind::WorkloadStarted) == 4
    })
    .await;
    let recorded = local_log(d);
    assert_eq!(
        server.events().len(),
        delivered_online,
        "events reached an unreachable server"
    );
    assert!(recorded.len() > delivered_online + 5, "{recorded:#?}");

    // Back: every event arrives, once, in order.
    server.set_offline(false);
    all_delivered(&server, d).await;
    let stored = server.events();
    let n = stored.len() as u64;
    assert_eq!(
        stored.iter().map(|e| e.seq).collect::<Vec<_>>(),
        (1..=n).collect::<Vec<_>>()
    );
    let received = server.state.lock().unwrap().events_received.clone();
    assert_eq!(
        received,
        (1..=n).collect::<Vec<_>>(),
        "an event was sent twice or out of order"
    );
    assert_eq!(count(&stored, NodeEventKind::AgentStarted), 2);
    assert_eq!(count(&stored, NodeEventKind::DesiredReceived), 1);
    assert_eq!(count(&stored, NodeEventKind::LockAcquired), 2);
    assert_eq!(count(&stored, NodeEventKind::LockReleased), 1);
    // At the restart both workloads were stopped or gone; web was stopped.
    assert!(
        stored
            .iter()
            .any(|e| e.kind == NodeEventKind::WorkloadStopped
                && e.workload.as_deref() == Some("web")
                && e.deployment.as_deref() == Some("test")
                && e.revision.as_deref() == Some("rev-1"))
    );
    let exited: Vec<_> = stored
        .iter()
        .filter(|e| e.kind == NodeEventKind::WorkloadExited)
        .collect();
    assert!(
        exited
            .iter()
            .all(|e| e.message == "exited with code 3" && e.workload.as_deref() == Some("once")),
        "{exited:#?}"
    );
    // Timestamps do not go backwards.
    assert!(stored.windows(2).all(|w| w[0].at <= w[1].at));
    agent.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_backlog_is_sent_in_batches_of_at_most_500() {
    let server = FakeServer::start().await;
    let data = tempfile::tempdir().unwrap();
    let d = data.path();
    let agent = start_agent(agent_args(d, Some(server.join())));
    until("agent-started on the server", LIMIT, || {
        !server.events().is_empty()
    })
    .await;
    all_delivered(&server, d).await;
    agent.shutdown().await.unwrap();

    // What a long time offline leaves behind.
    let recorder = Recorder::open(&d.join("events"), 10_000).unwrap();
    for i in 0..1200 {
        recorder.record(
            NewEvent::new(NodeEventKind::LockAcquired, format!("backlog {i}"))
                .about("bulk", "", ""),
        );
    }
    drop(recorder);

    let agent = start_agent(agent_args(d, None));
    all_delivered(&server, d).await;
    assert!(server.events().len() > 1200);
    let sizes: Vec<usize> = server
        .requests_to("POST", "/v1/agent/events")
        .iter()
        .map(|r| {
            serde_json::from_str::<EventBatch>(&r.body)
                .unwrap()
                .events
                .len()
        })
        .collect();
    assert!(sizes.iter().all(|&n| n <= 500), "{sizes:?}");
    assert!(
        sizes.iter().filter(|&&n| n == 500).count() >= 2,
        "{sizes:?}"
    );
    let received = server.state.lock().unwrap().events_received.clone();
    assert!(
        received.windows(2).all(|w| w[0] + 1 == w[1]),
        "out of order"
    );
    agent.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_full_log_drops_the_oldest_undelivered_events_and_says_so() {
    let server = FakeServer::start().await;
    let data = tempfile::tempdir().unwrap();
    let d = data.path();
    let agent = start_agent(agent_args(d, Some(server.join())));
    until("agent-started on the server", LIMIT, || {
        !server.events().is_empty()
    })
    .await;
    all_delivered(&server, d).await;
    agent.shutdown().await.unwrap();
    let before = server.events().len() as u64;

    // Offline for long with a log of 20: 50 events do not fit.
    let recorder = Recorder::open(&d.join("events"), 20).unwrap();
    for i in 0..50 {
        recorder.record(NewEvent::new(
            NodeEventKind::LockReleased,
            format!("offline {i}"),
        ));
    }
    drop(recorder);

    let mut args = agent_args(d, None);
    args.events_max = 20;
    let agent = start_agent(args);
    until("the surviving events on the server", LIMIT, || {
        let stored = server.events();
        stored.len() as u64 > before && stored.ends_with(&local_log(d))
    })
    .await;
    let stored = server.events();
    let marker = stored
        .iter()
        .find(|e| e.kind == NodeEventKind::EventsDropped)
        .expect("no events-dropped event");
    assert!(
        marker.message.contains("undelivered events")
            && marker.message.contains("at most 20 events"),
        "{}",
        marker.message
    );
    // What arrived plus what was dropped is everything, with no seq used twice.
    let seqs: Vec<u64> = stored.iter().map(|e| e.seq).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    assert!(stored.len() < 50, "nothing was dropped");
    agent.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_older_server_without_the_events_route_is_asked_rarely() {
    let server = FakeServer::start().await;
    server.state.lock().unwrap().events_route_missing = true;
    let data = tempfile::tempdir().unwrap();
    let d = data.path();
    let agent = start_agent(agent_args(d, Some(server.join())));
    until("a refused batch", LIMIT, || {
        server
            .requests_to("POST", "/v1/agent/events")
            .iter()
            .any(|r| r.status == 404)
    })
    .await;
    // More events; the agent keeps working (two more heartbeats) but does not send them.
    assert!(ask(d, acquire("till")).await.ok);
    let heartbeats = server.requests_to("POST", "/v1/agent/heartbeat").len();
    until("two more heartbeats", LIMIT, || {
        server.requests_to("POST", "/v1/agent/heartbeat").len() >= heartbeats + 2
    })
    .await;
    assert_eq!(server.requests_to("POST", "/v1/agent/events").len(), 1);
    // They wait on the node.
    assert_eq!(
        count(&local_log(d), NodeEventKind::LockAcquired),
        1,
        "{:#?}",
        local_log(d)
    );
    agent.shutdown().await.unwrap();
}

fn last_status_since(server: &FakeServer, skip: usize) -> Option<ReportedState> {
    let reports = server.requests_to("PUT", "/v1/agent/status");
    let report = reports.get(skip..)?.last()?;
    serde_json::from_str(&report.body).ok()
}

fn lock_args(data: &Path, command: LockCommand) -> LockArgs {
    LockArgs {
        data_dir: data.to_owned(),
        command,
    }
}

#[tokio::test]
async fn update_locks_are_reported_at_once_and_survive_a_restart() {
    let server = FakeServer::start().await;
    let data = tempfile::tempdir().unwrap();
    let d = data.path();
    // Heartbeats (which carry the status too) are far apart: only the lock change itself
    // can bring a report in time.
    let mut args = agent_args(d, Some(server.join()));
    args.heartbeat_interval = "1h".parse().unwrap();
    let agent = start_agent(args.clone());
    ask(d, LocalRequest::List).await;
    let socket = d.join("agent.sock");
    let meta = std::fs::metadata(&socket).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    until("the first status report", LIMIT, || {
        last_status_since(&server, 0).is_some()
    })
    .await;

    let output = edgefleet_agent::lock_command(&lock_args(
        d,
        LockCommand::Acquire {
            workload: "till".into(),
            reason: "sale in progress".into(),
        },
    ))
    .await
    .unwrap();
    assert!(
        output.starts_with("holding the update lock of till (since "),
        "{output}"
    );
    until("a report with the lock", LIMIT, || {
        last_status_since(&server, 0).is_some_and(|s| {
            s.locks.len() == 1
                && s.locks[0].workload == "till"
                && s.locks[0].reason == "sale in progress"
        })
    })
    .await;
    let since = last_status_since(&server, 0).unwrap().locks[0].since;

    agent.shutdown().await.unwrap();
    assert!(!socket.exists(), "the socket outlived the agent");
    let error = edgefleet_agent::lock_command(&lock_args(d, LockCommand::List))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains(&format!(
            "no agent is running with data dir {}",
            d.display()
        )),
        "{error}"
    );

    let reports_before = server.requests_to("PUT", "/v1/agent/status").len();
    let agent = start_agent(args);
    until("a report after the restart, with the lock", LIMIT, || {
        last_status_since(&server, reports_before).is_some_and(|s| {
            s.locks.len() == 1 && s.locks[0].workload == "till" && s.locks[0].since == since
        })
    })
    .await;
    let listed = edgefleet_agent::lock_command(&lock_args(d, LockCommand::List))
        .await
        .unwrap();
    assert!(
        listed.contains("till") && listed.contains("sale in progress"),
        "{listed}"
    );

    let release = |workload: &str| {
        lock_args(
            d,
            LockCommand::Release {
                workload: workload.into(),
            },
        )
    };
    edgefleet_agent::lock_command(&release("till"))
        .await
        .unwrap();
    until("a report without the lock", LIMIT, || {
        last_status_since(&server, reports_before).is_some_and(|s| s.locks.is_empty())
    })
    .await;
    let error = edgefleet_agent::lock_command(&release("till"))
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("\"till\" holds no update lock"), "{error}");
    agent.shutdown().await.unwrap();
}
