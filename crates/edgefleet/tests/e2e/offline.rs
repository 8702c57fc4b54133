//! Offline behaviour: server outages, agent restarts while the server is down, reconnects.

use std::time::Duration;

use edgefleet_testkit::{pid_alive, wait_for};

use crate::*;

/// The pid recorded in the agent's pid file for a workload, when that process is alive.
fn live_pid_from_file(
    fleet: &edgefleet_testkit::Fleet,
    agent: &str,
    workload: &str,
) -> Option<u32> {
    let text = std::fs::read_to_string(
        fleet
            .path()
            .join(format!("agents/{agent}/run/{workload}.pid")),
    )
    .ok()?;
    let pid: u32 = text.split_whitespace().next()?.parse().ok()?;
    pid_alive(pid).then_some(pid)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workloads_survive_outages_and_agent_restarts() {
    let mut fleet = fleet_with(&[], &[("edge-1", "site=a")]).await;
    apply(
        &fleet,
        "a.yaml",
        &manifest(
            "app",
            "",
            0,
            &[("web", "exec sleep 1000"), ("worker", "exec sleep 1000")],
        ),
    );
    let online = fleet.wait_converged("edge-1", LONG).await;
    let web = reported_pid(&online, "web") as u32;

    // Server down: the agent keeps its workloads running and keeps retrying.
    fleet.server.stop();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(pid_alive(web), "workload stopped while the server was down");
    let agent_alive = fleet
        .agent("edge-1")
        .proc
        .as_mut()
        .unwrap()
        .try_exit_code()
        .is_none();
    assert!(agent_alive, "agent exited while the server was down");

    // The agent restarts (a crash: SIGKILL) while the server is still down: it brings its
    // workloads back from its journal, and nothing runs twice.
    fleet.agent("edge-1").kill9();
    fleet.spawn_agent("edge-1", "site=a", None, &[]);
    let restarted = wait_for("workloads restarted from the journal", LONG, || async {
        let web = live_pid_from_file(&fleet, "edge-1", "web")?;
        let worker = live_pid_from_file(&fleet, "edge-1", "worker")?;
        (web != reported_pid(&online, "web") as u32).then_some((web, worker))
    })
    .await;
    wait_for(
        "the pre-crash workload was stopped (no duplicates)",
        LONG,
        || async { (!pid_alive(web)).then_some(()) },
    )
    .await;

    // The server comes back: the node converges without restarting healthy workloads. (The
    // server's stored report predates the outage, so wait for the restarted agent's own.)
    fleet.server.start().await;
    let api = fleet.api();
    let same_pids = |d: &serde_json::Value| {
        edgefleet_testkit::workload(d, "web").and_then(|w| w["pid"].as_u64())
            == Some(u64::from(restarted.0))
            && edgefleet_testkit::workload(d, "worker").and_then(|w| w["pid"].as_u64())
                == Some(u64::from(restarted.1))
    };
    wait_for(
        "the node converged on reconnect with the same workload pids",
        LONG,
        || {
            let api = api.clone();
            async move {
                let d: serde_json::Value = api.get_json("/v1/nodes/edge-1").await.ok()?;
                (edgefleet_testkit::converged(&d) && same_pids(&d)).then_some(())
            }
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let back: serde_json::Value = api.get_json("/v1/nodes/edge-1").await.unwrap();
    assert!(
        same_pids(&back),
        "healthy workload restarted after reconnect: {back:#}"
    );
    assert!(pid_alive(restarted.0) && pid_alive(restarted.1));
    assert_eq!(back["summary"]["status"], "Ready");

    // And a change made while it was away... (made now) still arrives.
    apply(
        &fleet,
        "a.yaml",
        &manifest("app", "", 0, &[("web", "exec sleep 1000")]),
    );
    let changed = wait_for("worker removed after reconnect", LONG, || {
        let api = fleet.api();
        async move {
            let d: serde_json::Value = api.get_json("/v1/nodes/edge-1").await.ok()?;
            (edgefleet_testkit::converged(&d)
                && edgefleet_testkit::workload(&d, "worker").is_none())
            .then_some(d)
        }
    })
    .await;
    assert_eq!(reported_pid(&changed, "web") as u32, restarted.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_goes_not_ready_when_silent_and_ready_when_back() {
    let mut fleet = fleet_with(&["--not-ready-after", "3s"], &[("edge-1", "site=a")]).await;
    fleet.agent("edge-1").stop();
    let api = fleet.api();
    wait_for("edge-1 NotReady", LONG, || {
        let api = api.clone();
        async move {
            let d: serde_json::Value = api.get_json("/v1/nodes/edge-1").await.ok()?;
            (d["summary"]["status"] == "NotReady").then_some(())
        }
    })
    .await;
    let table = fleet.cli_ok(&["get", "nodes"]);
    assert!(table.contains("NotReady"), "{table}");
    fleet.spawn_agent("edge-1", "site=a", None, &[]);
    wait_ready(&fleet, 1).await;
}
