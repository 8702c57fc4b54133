//! Progressive rollouts against the real server, with simulated fleets: the scenarios a
//! rollout must survive. A watcher samples every simulated node throughout each test, so
//! "no other node was touched" is checked over the whole rollout, not only at the end.
//!
//! The server binary is `target/<profile>/edgefleet` (built by `cargo test --workspace`,
//! or `cargo build -p edgefleet`), or `$EDGEFLEET_BIN`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use edgefleet_sim::{Selection, ServerTarget, SimConfig, Simulator};
use edgefleet_testkit::{Fleet, wait_for};
use edgefleet_wire::JoinString;
use edgefleet_wire::rollout::RolloutStatus;
use serde_json::Value;
use support::edgefleet_bin;

const LONG: Duration = Duration::from_secs(60);

/// A server that notices silent nodes after 3 s, and `n` simulated nodes heartbeating
/// every second.
async fn fleet_of(n: u32) -> (Fleet, Simulator) {
    let fleet = Fleet::start(&edgefleet_bin(), &["--not-ready-after", "3s"]).await;
    let join = fleet.join_token(&["--ttl", "1h"]);
    let mut config = SimConfig::new(ServerTarget::Join(JoinString::decode(&join).unwrap()), n);
    config.heartbeat_interval = Duration::from_secs(1);
    config.enroll_concurrency = 8;
    let sim = Simulator::start(config).await.expect("enrolling the fleet");
    (fleet, sim)
}

/// A deployment of one workload `app`; `env` lines script the simulated nodes.
fn manifest(version: &str, rollout: &str, env: &[(&str, &str)]) -> String {
    let mut text = format!(
        "apiVersion: edgefleet.io/v1\nkind: Deployment\nmetadata:\n  name: app\nspec:\n  rollout:\n{rollout}  workloads:\n    - name: app\n      command: /opt/app/{version}\n"
    );
    if !env.is_empty() {
        text.push_str("      env:\n");
        for (key, value) in env {
            text.push_str(&format!("        {key}: {value:?}\n"));
        }
    }
    text
}

/// Applies with the CLI; returns the new revision hash.
fn apply(fleet: &Fleet, text: &str) -> String {
    let path = fleet.path().join("app.yaml");
    std::fs::write(&path, text).unwrap();
    fleet.cli_ok(&["apply", "-f", path.to_str().unwrap()]);
    let list: Vec<Value> =
        serde_json::from_str(&fleet.cli_ok(&["get", "deployments", "-o", "json"])).unwrap();
    list.iter()
        .find(|d| d["name"] == "app")
        .and_then(|d| d["revision"].as_str())
        .unwrap()
        .to_owned()
}

async fn rollout(fleet: &Fleet) -> RolloutStatus {
    fleet
        .api()
        .get_json("/v1/deployments/app/rollout")
        .await
        .unwrap()
}

async fn wait_rollout(
    fleet: &Fleet,
    what: &str,
    done: impl Fn(&RolloutStatus) -> bool,
) -> RolloutStatus {
    let api = fleet.api();
    let done = &done;
    wait_for(what, LONG, || {
        let api = api.clone();
        async move {
            let status: RolloutStatus = api.get_json("/v1/deployments/app/rollout").await.ok()?;
            done(&status).then_some(status)
        }
    })
    .await
}

/// The nodes that run `revision` of `app` right now (as the simulated agents see it).
fn running(sim: &Simulator, revision: &str) -> BTreeSet<String> {
    sim.nodes()
        .into_iter()
        .filter(|n| n.revision_of("app") == Some(revision))
        .map(|n| n.name)
        .collect()
}

async fn wait_running(sim: &Simulator, names: &BTreeSet<String>, revision: &str) {
    wait_for(
        &format!("{} nodes running {}", names.len(), &revision[..12]),
        LONG,
        || async {
            let now = running(sim, revision);
            names.is_subset(&now).then_some(())
        },
    )
    .await;
}

/// Every node that ever ran `revision` while the watcher was on.
struct Watcher {
    seen: Arc<Mutex<BTreeSet<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Watcher {
    fn start(sim: &Arc<Simulator>, revision: &str) -> Self {
        let seen = Arc::new(Mutex::new(BTreeSet::new()));
        let task = {
            let (sim, seen, revision) = (sim.clone(), seen.clone(), revision.to_owned());
            tokio::spawn(async move {
                loop {
                    let now = running(&sim, &revision);
                    seen.lock().unwrap().extend(now);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
        };
        Self { seen, task }
    }

    fn seen(&self) -> BTreeSet<String> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn names(numbers: std::ops::RangeInclusive<u32>) -> BTreeSet<String> {
    numbers.map(|i| format!("sim-{i:05}")).collect()
}

/// Rolls out a first, healthy revision to everyone and waits until all run it.
async fn baseline(fleet: &Fleet, sim: &Simulator, n: u32) -> String {
    let v1 = apply(fleet, &manifest("v1", "    batchSize: 50%\n", &[]));
    wait_running(sim, &names(1..=n), &v1).await;
    wait_rollout(fleet, "the first rollout succeeded", |s| {
        s.phase.as_str() == "succeeded"
    })
    .await;
    v1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_canary_aborts_and_rolls_back_while_no_other_node_is_touched() {
    let (fleet, sim) = fleet_of(20).await;
    let sim = Arc::new(sim);
    let v1 = baseline(&fleet, &sim, 20).await;

    // Revision 2 fails to start wherever it lands.
    let v2_text = manifest(
        "v2",
        "    canary:\n      size: 1\n    batchSize: 25%\n",
        &[("SIM_FAIL_START", "*")],
    );
    let v2 = edgefleet_core::hash::revision_hash(
        &edgefleet_core::manifest::parse("v2", &v2_text).unwrap()[0].spec,
    );
    let watcher = Watcher::start(&sim, &v2);
    assert_eq!(apply(&fleet, &v2_text), v2);
    let status = wait_rollout(&fleet, "the rollout stopped", |s| !s.phase.is_active()).await;
    assert_eq!(status.phase.as_str(), "rolled-back", "{status:#?}");
    let reason = status.abort_reason.clone().unwrap();
    assert!(reason.starts_with("step 1 (canary)"), "{reason}");
    assert!(reason.contains("sim-00001"), "{reason}");
    assert_eq!(status.counts.rolled_back, 1);
    assert_eq!(status.counts.waiting, 19, "{status:#?}");

    // The canary is back on revision 1 and nobody else ever saw revision 2.
    wait_running(&sim, &names(1..=20), &v1).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(watcher.seen(), names(1..=1));
    let events: Vec<Value> = fleet
        .api()
        .get_json("/v1/nodes/sim-00001/events?limit=50")
        .await
        .unwrap();
    assert!(
        events.iter().any(|e| e["kind"] == "workload-crash-looping"),
        "{events:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_during_the_bake_of_step_two_rolls_back_steps_one_and_two() {
    let (fleet, sim) = fleet_of(9).await;
    let sim = Arc::new(sim);
    let v1 = baseline(&fleet, &sim, 9).await;

    // Nodes 1-3 are step one, 4-6 step two. Node 5 runs revision 2 for 2 s, then crashes:
    // inside step two's 5 s bake.
    let v2_text = manifest(
        "v2",
        "    batchSize: 3\n    bakeTime: 5s\n",
        &[("SIM_CRASH_AFTER", "2s"), ("SIM_CRASH_NODES", "sim-00005")],
    );
    let v2 = edgefleet_core::hash::revision_hash(
        &edgefleet_core::manifest::parse("v2", &v2_text).unwrap()[0].spec,
    );
    let watcher = Watcher::start(&sim, &v2);
    apply(&fleet, &v2_text);
    let status = wait_rollout(&fleet, "the rollout stopped", |s| !s.phase.is_active()).await;
    assert_eq!(status.phase.as_str(), "rolled-back", "{status:#?}");
    let reason = status.abort_reason.clone().unwrap();
    assert!(reason.starts_with("step 2 (batch)"), "{reason}");
    assert!(reason.contains("sim-00005"), "{reason}");
    assert_eq!(status.counts.rolled_back, 6);

    wait_running(&sim, &names(1..=9), &v1).await;
    assert_eq!(
        watcher.seen(),
        names(1..=6),
        "steps one and two took revision 2, step three never did"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_nodes_are_counted_and_converge_when_they_return() {
    let (fleet, sim) = fleet_of(20).await;
    let v1 = baseline(&fleet, &sim, 20).await;

    let offline: BTreeSet<String> = sim
        .set_online(&Selection::Fraction(0.3), false)
        .unwrap()
        .into_iter()
        .collect();
    assert_eq!(offline.len(), 6);
    let api = fleet.api();
    wait_for("the server sees 6 nodes NotReady", LONG, || {
        let api = api.clone();
        async move {
            let nodes: Vec<Value> = api.get_json("/v1/nodes").await.ok()?;
            (nodes.iter().filter(|n| n["status"] == "NotReady").count() == 6).then_some(())
        }
    })
    .await;

    let v2 = apply(&fleet, &manifest("v2", "    batchSize: 25%\n", &[]));
    let status = wait_rollout(&fleet, "the rollout succeeded", |s| {
        s.phase.as_str() == "succeeded"
    })
    .await;
    // Counted as offline, not failed; everyone online runs revision 2.
    assert_eq!(
        (
            status.counts.healthy,
            status.counts.offline,
            status.counts.failed
        ),
        (14, 6, 0),
        "{status:#?}"
    );
    assert!(
        status
            .waiting_for
            .as_deref()
            .unwrap()
            .starts_with("6 deferred nodes"),
        "{status:#?}"
    );
    let online: BTreeSet<String> = names(1..=20).difference(&offline).cloned().collect();
    wait_running(&sim, &online, &v2).await;
    assert_eq!(running(&sim, &v1), offline, "offline nodes keep revision 1");

    sim.set_online(&Selection::names(offline.iter().cloned()), true)
        .unwrap();
    wait_running(&sim, &names(1..=20), &v2).await;
    let status = wait_rollout(&fleet, "every node healthy", |s| s.counts.healthy == 20).await;
    assert_eq!(status.counts.offline, 0);
    assert_eq!(status.waiting_for, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_mid_rollout_resumes_it() {
    let (mut fleet, sim) = fleet_of(12).await;
    let sim = Arc::new(sim);
    baseline(&fleet, &sim, 12).await;

    let v2_text = manifest("v2", "    batchSize: 2\n    bakeTime: 2s\n", &[]);
    let v2 = edgefleet_core::hash::revision_hash(
        &edgefleet_core::manifest::parse("v2", &v2_text).unwrap()[0].spec,
    );
    apply(&fleet, &v2_text);
    let before = wait_rollout(&fleet, "the rollout reached step 3", |s| {
        s.current_step >= 3
    })
    .await;
    let updated_before = running(&sim, &v2);
    fleet.server.kill9();
    tokio::time::sleep(Duration::from_millis(500)).await;
    fleet.server.start().await;

    let after = rollout(&fleet).await;
    assert_eq!(
        after.number, before.number,
        "the same rollout, not a new one"
    );
    assert!(
        after.current_step >= before.current_step,
        "resumed at step {} after step {}",
        after.current_step,
        before.current_step
    );
    let status = wait_rollout(&fleet, "the rollout succeeded", |s| {
        s.phase.as_str() == "succeeded"
    })
    .await;
    assert_eq!(status.counts.healthy, 12);
    wait_running(&sim, &names(1..=12), &v2).await;
    assert!(updated_before.len() >= 4, "{updated_before:?}");
    let history: Vec<Value> = fleet
        .api()
        .get_json("/v1/deployments/app/rollouts")
        .await
        .unwrap();
    assert_eq!(history.len(), 2, "no rollout was started twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workload_holding_its_lock_delays_only_its_own_node() {
    let (fleet, sim) = fleet_of(6).await;
    let v1 = baseline(&fleet, &sim, 6).await;

    assert!(sim.hold_lock("sim-00002", "app", "mid-task").unwrap());
    let api = fleet.api();
    wait_for("the server knows about the lock", LONG, || {
        let api = api.clone();
        async move {
            let node: Value = api.get_json("/v1/nodes/sim-00002").await.ok()?;
            (node["reported"]["locks"][0]["workload"] == "app").then_some(())
        }
    })
    .await;

    let v2 = apply(&fleet, &manifest("v2", "    batchSize: 2\n", &[]));
    let status = wait_rollout(&fleet, "the rollout succeeded", |s| {
        s.phase.as_str() == "succeeded"
    })
    .await;
    let others: BTreeSet<String> = names(1..=6)
        .into_iter()
        .filter(|n| n != "sim-00002")
        .collect();
    wait_running(&sim, &others, &v2).await;
    assert_eq!(status.counts.blocked, 1, "{status:#?}");
    let locked = status.nodes.iter().find(|n| n.node == "sim-00002").unwrap();
    assert!(
        locked
            .reason
            .as_deref()
            .unwrap()
            .contains("app holds its update lock (mid-task)"),
        "{locked:?}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        sim.node("sim-00002").unwrap().revision_of("app"),
        Some(v1.as_str())
    );

    assert!(sim.release_lock("sim-00002", "app").unwrap());
    wait_running(&sim, &names(1..=6), &v2).await;
}
