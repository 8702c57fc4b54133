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

/// A small tmpfs mounted for one test, unmounted when dropped.
struct SmallDisk {
    path: std::path::PathBuf,
}

impl SmallDisk {
    fn mount(path: std::path::PathBuf, size: &str) -> Self {
        std::fs::create_dir_all(&path).unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .output()
            .expect("running mount");
        assert!(
            out.status.success(),
            "this test needs root to mount a small tmpfs at {}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Self { path }
    }

    /// Fills the disk to the last byte; returns the filler file.
    fn fill(&self) -> std::path::PathBuf {
        use std::io::Write;
        let filler = self.path.join("filler");
        let mut file = std::fs::File::create(&filler).unwrap();
        let block = vec![0u8; 4096];
        while file.write_all(&block).is_ok() {}
        let mut byte = [0u8; 1];
        while file.write_all(&byte).is_ok() {
            byte[0] = 1;
        }
        filler
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.path)
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_disk_keeps_the_last_desired_state_and_recovers() {
    let mut fleet = fleet_with(&[], &[]).await;
    let disk = SmallDisk::mount(fleet.path().join("agents/edge-1"), "2m");
    let join = fleet.join_token(&[]);
    fleet.spawn_agent(
        "edge-1",
        "site=a",
        Some(&join),
        &["--log-max-bytes", "4096", "--log-files", "1"],
    );
    wait_ready(&fleet, 1).await;
    apply(
        &fleet,
        "a.yaml",
        &manifest("app", "", 0, &[("web", "echo v1; exec sleep 1000")]),
    );
    let v1 = fleet.wait_converged("edge-1", LONG).await;
    let pid = reported_pid(&v1, "web");
    let generation = v1["desired"]["generation"].as_u64().unwrap();

    let filler = disk.fill();
    apply(
        &fleet,
        "a.yaml",
        &manifest("app", "", 0, &[("web", "echo v2; exec sleep 1000")]),
    );
    let journal = fleet.path().join("agents/edge-1/journal/desired.json");
    let log = fleet.agent("edge-1").proc.as_ref().unwrap().log.clone();
    wait_for(
        "the agent to report the full disk, naming the journal",
        LONG,
        || async {
            let text = std::fs::read_to_string(&log).ok()?;
            (text.contains("No space left") && text.contains("journal")).then_some(())
        },
    )
    .await;
    // Nothing accepted before is lost: the old workload runs, the journal is intact, the
    // node has not claimed the new generation, and the agent is alive.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(pid_alive(pid as u32));
    let text = std::fs::read_to_string(&journal).unwrap();
    let parsed: serde_json::Value = serde_json::from_str(&text).expect("journal is valid JSON");
    assert!(text.contains("v1") && !text.contains("v2"), "{parsed:#}");
    let detail: serde_json::Value = fleet.api().get_json("/v1/nodes/edge-1").await.unwrap();
    assert_eq!(
        detail["reported"]["applied_generation"].as_u64(),
        Some(generation)
    );
    assert!(
        fleet
            .agent("edge-1")
            .proc
            .as_mut()
            .unwrap()
            .try_exit_code()
            .is_none(),
        "agent died on a full disk"
    );

    // Space comes back: the agent catches up by itself.
    std::fs::remove_file(filler).unwrap();
    let v2 = wait_for("edge-1 applies v2 once space is back", LONG, || {
        let api = fleet.api();
        async move {
            let d: serde_json::Value = api.get_json("/v1/nodes/edge-1").await.ok()?;
            (edgefleet_testkit::converged(&d) && d["desired"]["generation"].as_u64()? > generation)
                .then_some(d)
        }
    })
    .await;
    assert_ne!(reported_pid(&v2, "web"), pid);
    assert!(std::fs::read_to_string(&journal).unwrap().contains("v2"));
    fleet.agent("edge-1").stop();
    drop(disk);
}
