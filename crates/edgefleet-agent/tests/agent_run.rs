//! `edgefleet_agent::run` end to end against the fake server: enrollment, the journal,
//! reconnects, revocation, renewal, crash recovery and shutdown.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod fake_server;
mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use edgefleet_agent::AgentArgs;
use edgefleet_agent::journal::Journal;
use edgefleet_wire::JoinString;
use edgefleet_wire::api::{DesiredState, EnrollRequest};
use edgefleet_wire::node::ReportedState;
use fake_server::FakeServer;
use support::{Agent, agent_args, desired, is_alive, spec, start_agent, until};

const LIMIT: Duration = Duration::from_secs(15);

fn args(data_dir: &Path, join: Option<String>) -> AgentArgs {
    agent_args(data_dir, join)
}

fn join(server: &FakeServer, ca_sha256: &str) -> String {
    JoinString {
        url: server.url.clone(),
        secret: "tok.secret".into(),
        ca_sha256: ca_sha256.into(),
    }
    .encode()
}

fn start(args: AgentArgs) -> Agent {
    start_agent(args)
}

fn workload_state(generation: u64, marker: &str) -> DesiredState {
    DesiredState {
        node: "node-a".into(),
        generation,
        workloads: vec![desired(spec("web", "/bin/sleep", &[marker]))],
    }
}

fn pid_of(data: &Path, workload: &str) -> Option<u32> {
    let text = std::fs::read_to_string(data.join("run").join(format!("{workload}.pid"))).ok()?;
    text.split_whitespace().next()?.parse().ok()
}

/// Live processes whose command line holds `marker`.
fn processes_with(marker: &str) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(marker) && is_alive(pid) {
            found.push(pid);
        }
    }
    found
}

fn last_status(server: &FakeServer) -> Option<ReportedState> {
    let report = server.requests_to("PUT", "/v1/agent/status").pop()?;
    serde_json::from_str(&report.body).ok()
}

#[tokio::test]
async fn enrolls_runs_reports_and_survives_reconnects_and_revocation() {
    let server = FakeServer::start().await;
    let marker: &str = &format!("1001.{}", std::process::id());
    server.set_desired(workload_state(1, marker));
    let data = tempfile::tempdir().unwrap();
    let d = data.path();
    let agent = start(args(d, Some(join(&server, &server.ca_sha256))));

    until("the workload to run", LIMIT, || {
        pid_of(d, "web").is_some_and(is_alive)
    })
    .await;
    let pid = pid_of(d, "web").unwrap();

    // Enrollment: key on the node, 0600; the request carried name, labels, CSR, facts.
    let mode = std::fs::metadata(d.join("identity/node.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let server_json = std::fs::read_to_string(d.join("identity/server.json")).unwrap();
    assert!(server_json.contains("node-a") && server_json.contains(&server.url));
    let enroll = server.requests_to("POST", "/v1/enroll").pop().unwrap();
    let enroll: EnrollRequest = serde_json::from_str(&enroll.body).unwrap();
    assert_eq!(enroll.name, "node-a");
    assert_eq!(enroll.labels.get("site").map(String::as_str), Some("lab"));
    assert!(enroll.csr_pem.contains("CERTIFICATE REQUEST"));
    assert!(!enroll.facts.hostname.is_empty());
    // The desired state went to the journal.
    let journaled = Journal::new(&d.join("journal")).load().unwrap().unwrap();
    assert_eq!(journaled.generation, 1);

    // Status reports the running workload; heartbeats flow.
    until("a status report with the workload running", LIMIT, || {
        last_status(&server).is_some_and(|s| {
            s.applied_generation == 1
                && s.certificate_not_after.is_some()
                && s.workloads.iter().any(|w| w.pid == Some(pid))
        })
    })
    .await;
    until("a heartbeat", LIMIT, || {
        !server.requests_to("POST", "/v1/agent/heartbeat").is_empty()
    })
    .await;

    // The server goes away and comes back with the same workloads under a new generation.
    server.state.lock().unwrap().desired_error = Some(503);
    let before = server.requests_to("GET", "/v1/agent/desired").len();
    until("failed polls", LIMIT, || {
        server.requests_to("GET", "/v1/agent/desired")[before..]
            .iter()
            .filter(|r| r.status == 503)
            .count()
            >= 2
    })
    .await;
    {
        let mut state = server.state.lock().unwrap();
        state.desired_error = None;
        state.desired = Some(workload_state(2, marker));
    }
    until("generation 2 to be reported", LIMIT, || {
        last_status(&server).is_some_and(|s| s.applied_generation == 2)
    })
    .await;
    assert_eq!(
        pid_of(d, "web"),
        Some(pid),
        "the reconnect restarted the workload"
    );
    assert!(is_alive(pid));
    assert_eq!(
        Journal::new(&d.join("journal"))
            .load()
            .unwrap()
            .unwrap()
            .generation,
        2
    );

    // Revoked: the poll is refused; the workload keeps running.
    server.state.lock().unwrap().desired_error = Some(403);
    until("a refused poll", LIMIT, || {
        server
            .requests_to("GET", "/v1/agent/desired")
            .iter()
            .any(|r| r.status == 403)
    })
    .await;
    assert!(is_alive(pid));
    assert_eq!(processes_with(marker), [pid]);

    agent.shutdown().await.unwrap();
    until("the workload to be stopped", LIMIT, || !is_alive(pid)).await;
    assert!(pid_of(d, "web").is_none(), "pid file left after shutdown");
}

#[tokio::test]
async fn starts_from_the_journal_offline_and_never_runs_a_workload_twice() {
    // Enroll once, then make the server unreachable for good.
    let server = FakeServer::start().await;
    let data = tempfile::tempdir().unwrap();
    let d = data.path();
    let agent = start(args(d, Some(join(&server, &server.ca_sha256))));
    until("enrollment", LIMIT, || {
        d.join("identity/server.json").exists()
    })
    .await;
    agent.shutdown().await.unwrap();
    drop(server);

    let marker: &str = &format!("1002.{}", std::process::id());
    Journal::new(&d.join("journal"))
        .store(&workload_state(7, marker))
        .unwrap();

    // The --join given again is ignored: the node is enrolled.
    let first = start(args(d, Some("EFJ1.garbage".into())));
    until("the journal's workload to run", LIMIT, || {
        pid_of(d, "web").is_some_and(is_alive)
    })
    .await;
    let old_pid = pid_of(d, "web").unwrap();

    // The agent dies without stopping anything (a crash): its workload lives on.
    first.task.abort();
    let _ = first.task.await;
    assert!(is_alive(old_pid));

    let second = start(args(d, None));
    until("a new instance", LIMIT, || {
        pid_of(d, "web").is_some_and(|pid| pid != old_pid && is_alive(pid))
    })
    .await;
    until("the leftover to be gone", LIMIT, || !is_alive(old_pid)).await;
    let new_pid = pid_of(d, "web").unwrap();
    assert_eq!(processes_with(marker), [new_pid]);

    second.shutdown().await.unwrap();
    until("everything to be stopped", LIMIT, || {
        processes_with(marker).is_empty()
    })
    .await;
}

#[tokio::test]
async fn a_corrupt_journal_is_set_aside_and_the_agent_runs_on() {
    let server = FakeServer::start().await;
    let marker: &str = &format!("1003.{}", std::process::id());
    server.set_desired(workload_state(3, marker));
    let data = tempfile::tempdir().unwrap();
    let d = data.path();
    std::fs::create_dir_all(d.join("journal")).unwrap();
    std::fs::write(
        d.join("journal/desired.json"),
        "{\"node\": \"node-a\", \"gener",
    )
    .unwrap();

    let agent = start(args(d, Some(join(&server, &server.ca_sha256))));
    until("the server's workload to run", LIMIT, || {
        pid_of(d, "web").is_some_and(is_alive)
    })
    .await;
    assert!(d.join("journal/desired.json.corrupt").exists());
    assert_eq!(
        Journal::new(&d.join("journal"))
            .load()
            .unwrap()
            .unwrap()
            .generation,
        3
    );
    agent.shutdown().await.unwrap();
}

#[tokio::test]
async fn renews_the_certificate_without_disturbing_workloads() {
    let server = FakeServer::start().await;
    // Renewal is due at two thirds of the life: about two seconds in.
    server.state.lock().unwrap().enroll_validity = Duration::from_secs(3);
    let marker: &str = &format!("1004.{}", std::process::id());
    server.set_desired(workload_state(1, marker));
    let data = tempfile::tempdir().unwrap();
    let d = data.path();
    let agent = start(args(d, Some(join(&server, &server.ca_sha256))));
    until("the workload to run", LIMIT, || {
        pid_of(d, "web").is_some_and(is_alive)
    })
    .await;
    let pid = pid_of(d, "web").unwrap();
    let first_cert = std::fs::read_to_string(d.join("identity/node.crt")).unwrap();
    let first_serial = edgefleet_tls::cert_info(&first_cert).unwrap().serial;

    until("a renewal", LIMIT, || {
        !server.requests_to("POST", "/v1/agent/renew").is_empty()
    })
    .await;
    until("the new certificate on disk", LIMIT, || {
        std::fs::read_to_string(d.join("identity/node.crt")).is_ok_and(|c| c != first_cert)
    })
    .await;
    let renewed =
        edgefleet_tls::cert_info(&std::fs::read_to_string(d.join("identity/node.crt")).unwrap())
            .unwrap();
    assert!(renewed.not_after - renewed.not_before > time::Duration::minutes(30));
    // Later requests present the new certificate.
    until("a request with the new certificate", LIMIT, || {
        server
            .requests()
            .iter()
            .any(|r| r.client_serial.as_deref() == Some(renewed.serial.as_str()))
    })
    .await;
    assert!(
        server
            .requests()
            .iter()
            .any(|r| r.client_serial.as_deref() == Some(first_serial.as_str()))
    );
    assert_eq!(pid_of(d, "web"), Some(pid));
    assert!(is_alive(pid));
    assert_eq!(server.requests_to("POST", "/v1/agent/renew").len(), 1);
    agent.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_refused_enrollment_is_fatal_and_carries_the_server_message() {
    let server = FakeServer::start().await;
    server.state.lock().unwrap().enroll_error =
        Some((401, "join token has expired; create a new one".into()));
    let data = tempfile::tempdir().unwrap();
    let agent = start(args(data.path(), Some(join(&server, &server.ca_sha256))));
    let error = tokio::time::timeout(LIMIT, agent.task)
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    let message = format!("{error:#}");
    assert!(message.contains("join token has expired"), "{message}");
    assert!(!data.path().join("identity/server.json").exists());
}

#[tokio::test]
async fn a_server_failing_the_ca_pin_is_told_nothing() {
    let server = FakeServer::start().await;
    let data = tempfile::tempdir().unwrap();
    let wrong = "ab".repeat(32);
    let agent = start(args(data.path(), Some(join(&server, &wrong))));
    let error = tokio::time::timeout(LIMIT, agent.task)
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    let message = format!("{error:#}");
    assert!(
        message.contains("certificate") && message.contains(&wrong),
        "{message}"
    );
    assert!(
        server.requests().is_empty(),
        "a request reached the server: {:?}",
        server.requests()
    );
}

#[tokio::test]
async fn without_identity_or_join_the_error_says_what_to_do() {
    let data = tempfile::tempdir().unwrap();
    let error = edgefleet_agent::run(args(data.path(), None), std::future::pending())
        .await
        .unwrap_err();
    let message = format!("{error:#}");
    assert!(
        message.contains("--join") && message.contains("not enrolled"),
        "{message}"
    );
}

#[tokio::test]
async fn an_unusable_data_dir_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("file");
    std::fs::write(&blocker, "").unwrap();
    let error = edgefleet_agent::run(args(&blocker.join("data"), None), std::future::pending())
        .await
        .unwrap_err();
    let message = format!("{error:#}");
    assert!(
        message.contains(&blocker.join("data").display().to_string()),
        "{message}"
    );
}
