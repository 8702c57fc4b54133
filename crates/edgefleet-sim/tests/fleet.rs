//! The simulator against the real `edgefleet` server (started by `edgefleet-testkit` on
//! loopback): enrollment, convergence of a deployment, offline nodes, scripted failures,
//! update locks, and a server restart.
//!
//! The server binary is `target/<profile>/edgefleet`; build it first with
//! `cargo build -p edgefleet` (or point `EDGEFLEET_BIN` at one). Rollouts are progressive
//! (batches that must become healthy), so every wait is generous.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use edgefleet_sim::{NodeLabels, Selection, ServerTarget, SimConfig, Simulator};
use edgefleet_testkit::{Fleet, wait_for};
use edgefleet_wire::JoinString;
use edgefleet_wire::node::WorkloadState;
use serde_json::Value;
use support::edgefleet_bin;

const LONG: Duration = Duration::from_secs(60);

async fn fleet(server_args: &[&str]) -> Fleet {
    Fleet::start(&edgefleet_bin(), server_args).await
}

/// Enrolls `nodes` simulated nodes (heartbeat 1 s) with a fresh join token.
async fn simulate(fleet: &Fleet, nodes: u32, labels: &[&str]) -> Simulator {
    let join = fleet.join_token(&["--ttl", "1h"]);
    let mut config = SimConfig::new(
        ServerTarget::Join(JoinString::decode(&join).expect("join string")),
        nodes,
    );
    config.labels = NodeLabels::templates(labels).unwrap();
    config.heartbeat_interval = Duration::from_secs(1);
    config.enroll_concurrency = 8;
    Simulator::start(config).await.expect("enrolling the fleet")
}

/// Applies manifest text with the CLI and returns the deployment's revision hash.
fn apply(fleet: &Fleet, name: &str, text: &str) -> String {
    let path = fleet.path().join(format!("{name}.yaml"));
    std::fs::write(&path, text).unwrap();
    let out = fleet.cli_ok(&["apply", "-f", path.to_str().unwrap()]);
    assert!(out.contains(&format!("deployment/{name}")), "{out}");
    let detail = fleet.cli_ok(&["get", "deployments", "-o", "json"]);
    let deployments: Vec<Value> = serde_json::from_str(&detail).unwrap();
    deployments
        .iter()
        .find(|d| d["name"] == name)
        .and_then(|d| d["revision"].as_str())
        .unwrap_or_else(|| panic!("no revision for {name} in {detail}"))
        .to_owned()
}

fn deployment(name: &str, extra_spec: &str, workloads: &[(&str, &[(&str, &str)])]) -> String {
    let mut text = format!(
        "apiVersion: edgefleet.io/v1\nkind: Deployment\nmetadata:\n  name: {name}\nspec:\n{extra_spec}  workloads:\n"
    );
    for (workload, env) in workloads {
        text.push_str(&format!(
            "    - name: {workload}\n      command: /bin/sleep\n      args: [\"1000\"]\n"
        ));
        if !env.is_empty() {
            text.push_str("      env:\n");
            for (k, v) in *env {
                text.push_str(&format!("        {k}: {v:?}\n"));
            }
        }
    }
    text
}

async fn server_node(fleet: &Fleet, name: &str) -> Value {
    fleet
        .api()
        .get_json(&format!("/v1/nodes/{name}"))
        .await
        .unwrap()
}

/// Waits until the server lists these nodes with `status`.
async fn wait_status(fleet: &Fleet, names: &[String], status: &str) {
    let api = fleet.api();
    wait_for(&format!("{names:?} {status} on the server"), LONG, || {
        let api = api.clone();
        async move {
            let nodes: Vec<Value> = api.get_json("/v1/nodes").await.ok()?;
            names
                .iter()
                .all(|name| {
                    nodes
                        .iter()
                        .any(|n| n["name"] == name.as_str() && n["status"] == status)
                })
                .then_some(())
        }
    })
    .await;
}

/// Waits until every listed node runs `workload` at `revision`, on the simulator's side.
async fn wait_running(sim: &Simulator, names: &[String], workload: &str, revision: &str) {
    wait_for(
        &format!("{} nodes running {workload} at {revision}", names.len()),
        LONG,
        || async {
            names
                .iter()
                .all(|name| {
                    let node = sim.node(name).unwrap();
                    node.revision_of(workload) == Some(revision)
                        && node.state_of(workload) == Some(WorkloadState::Running)
                })
                .then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_nodes_enroll_and_converge_on_a_deployment() {
    let fleet = fleet(&[]).await;
    let sim = simulate(&fleet, 50, &["site=site-{i%5}", "tier=edge"]).await;
    assert_eq!(sim.len(), 50);
    assert_eq!(sim.names()[0], "sim-00001");
    assert_eq!(sim.enrollment().nodes, 50);

    // Each node is enrolled under its own name, with its labels, and comes up Ready.
    let names = sim.names();
    wait_status(&fleet, &names, "Ready").await;
    let node7 = server_node(&fleet, "sim-00007").await;
    assert_eq!(node7["summary"]["labels"]["site"], "site-2");
    assert_eq!(node7["summary"]["labels"]["tier"], "edge");
    assert_eq!(node7["facts"]["hostname"], "sim-00007");

    let revision = apply(&fleet, "web", &deployment("web", "", &[("web", &[])]));
    wait_running(&sim, &names, "web", &revision).await;

    // The server agrees: every node reports the workload running at the revision.
    let api = fleet.api();
    wait_for("the server sees 50 nodes running web", LONG, || {
        let api = api.clone();
        async move {
            let detail: Value = api.get_json("/v1/deployments/web").await.ok()?;
            let summary = &detail["summary"];
            (summary["running"] == 50 && summary["up_to_date"] == 50).then_some(())
        }
    })
    .await;
    let node = server_node(&fleet, "sim-00042").await;
    assert!(edgefleet_testkit::converged(&node), "{node:#}");
    let reported = edgefleet_testkit::workload(&node, "web").unwrap();
    assert_eq!(reported["revision"], revision.as_str());
    assert!(reported["pid"].as_u64().is_some(), "{reported}");

    let summary = sim.summary();
    assert_eq!(summary.converged, 50, "{summary:?}");
    assert_eq!(
        summary
            .revisions
            .get(&format!("web@{}", edgefleet_sim::short(&revision))),
        Some(&50),
        "{summary:?}"
    );

    // Flight-recorder events reach the server where it has the route.
    let events = api
        .get("/v1/nodes/sim-00001/events?limit=50")
        .await
        .unwrap();
    if events.status == 200 {
        let kinds: Vec<String> = events
            .json()
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["kind"].as_str().unwrap_or_default().to_owned())
            .collect();
        for kind in ["agent-started", "desired-received", "workload-started"] {
            assert!(kinds.iter().any(|k| k == kind), "{kind} missing: {kinds:?}");
        }
    }
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_node_goes_not_ready_and_converges_when_back() {
    let fleet = fleet(&["--not-ready-after", "3s"]).await;
    let sim = simulate(&fleet, 8, &[]).await;
    let names = sim.names();
    wait_status(&fleet, &names, "Ready").await;

    let offline = sim.set_online(&Selection::one("sim-00002"), false).unwrap();
    assert_eq!(offline, ["sim-00002"]);
    assert!(!sim.node("sim-00002").unwrap().online);
    wait_status(&fleet, &offline, "NotReady").await;
    let others: Vec<String> = names
        .iter()
        .filter(|n| *n != "sim-00002")
        .cloned()
        .collect();
    wait_status(&fleet, &others, "Ready").await;

    // A deployment while it is away reaches everyone else, and not the offline node.
    let revision = apply(&fleet, "app", &deployment("app", "", &[("app", &[])]));
    wait_running(&sim, &others, "app", &revision).await;
    let away = sim.node("sim-00002").unwrap();
    assert_eq!(away.revision_of("app"), None, "{away:?}");
    assert!(!away.reachable);

    // Back online: it heartbeats again, takes the deployment and reports it.
    sim.set_online(&Selection::one("sim-00002"), true).unwrap();
    wait_status(&fleet, &offline, "Ready").await;
    wait_running(&sim, &offline, "app", &revision).await;
    let node = fleet.wait_converged("sim-00002", LONG).await;
    assert_eq!(
        edgefleet_testkit::workload(&node, "app").unwrap()["revision"],
        revision.as_str()
    );

    // A fraction picks spread-out nodes, the same ones every time.
    let picked = sim.select(&Selection::Fraction(0.25)).unwrap();
    assert_eq!(picked.len(), 2);
    assert_eq!(picked, sim.select(&Selection::Fraction(0.25)).unwrap());
    assert!(sim.set_loss(&Selection::All, 1.5).is_err());
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripted_failures_hit_exactly_the_named_nodes() {
    let fleet = fleet(&[]).await;
    let sim = simulate(&fleet, 10, &[]).await;
    let names = sim.names();
    wait_status(&fleet, &names, "Ready").await;

    // Everything at once, no abort: this test is about which nodes fail, not the rollout.
    let strategy = "  rollout:\n    batchSize: \"100%\"\n    failureThreshold: \"100%\"\n    autoRollback: false\n";
    let revision = apply(
        &fleet,
        "shaky",
        &deployment(
            "shaky",
            strategy,
            &[
                ("starter", &[("SIM_FAIL_START", "sim-00003, sim-00007")]),
                (
                    "crasher",
                    &[("SIM_CRASH_AFTER", "2s"), ("SIM_CRASH_NODES", "sim-00005")],
                ),
            ],
        ),
    );
    let failing = |name: &str| sim.node(name).unwrap().state_of("starter");
    wait_for("every node took the deployment", LONG, || async {
        names
            .iter()
            .all(|n| sim.node(n).unwrap().revision_of("starter") == Some(revision.as_str()))
            .then_some(())
    })
    .await;
    for name in &names {
        let expected = if name == "sim-00003" || name == "sim-00007" {
            WorkloadState::CrashLooping
        } else {
            WorkloadState::Running
        };
        assert_eq!(failing(name), Some(expected), "{name}");
    }
    wait_for("sim-00005's crasher crash-loops", LONG, || async {
        (sim.node("sim-00005").unwrap().state_of("crasher") == Some(WorkloadState::CrashLooping))
            .then_some(())
    })
    .await;
    for name in names.iter().filter(|n| *n != "sim-00005") {
        assert_eq!(
            sim.node(name).unwrap().state_of("crasher"),
            Some(WorkloadState::Running),
            "{name}"
        );
    }

    // The server sees the same: crash-looping with restarts and the reason, on those nodes.
    let api = fleet.api();
    wait_for("the server sees three failing nodes", LONG, || {
        let api = api.clone();
        async move {
            let detail: Value = api.get_json("/v1/deployments/shaky").await.ok()?;
            (detail["summary"]["failing"] == 3).then_some(())
        }
    })
    .await;
    let node = server_node(&fleet, "sim-00003").await;
    let starter = edgefleet_testkit::workload(&node, "starter").unwrap();
    assert_eq!(starter["state"], "crash-looping", "{starter}");
    assert!(starter["restarts"].as_u64().unwrap() > 0, "{starter}");
    assert!(
        starter["message"]
            .as_str()
            .unwrap()
            .contains("simulated start failure"),
        "{starter}"
    );
    let node = server_node(&fleet, "sim-00004").await;
    assert_eq!(
        edgefleet_testkit::workload(&node, "starter").unwrap()["state"],
        "running"
    );
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_locks_are_reported_at_once() {
    let fleet = fleet(&[]).await;
    let sim = simulate(&fleet, 2, &[]).await;
    wait_status(&fleet, &sim.names(), "Ready").await;
    // Heartbeats every second would report it anyway; a long interval shows the lock goes
    // out by itself, during the node's open poll.
    let join = fleet.join_token(&["--ttl", "1h"]);
    let mut config = SimConfig::new(ServerTarget::Join(JoinString::decode(&join).unwrap()), 1);
    config.name_prefix = "slow-".into();
    config.heartbeat_interval = Duration::from_secs(600);
    let slow = Simulator::start(config).await.unwrap();
    let api = fleet.api();
    wait_for("slow-00001 reported once", LONG, || {
        let api = api.clone();
        async move {
            let node: Value = api.get_json("/v1/nodes/slow-00001").await.ok()?;
            (!node["reported"].is_null()).then_some(())
        }
    })
    .await;

    assert!(slow.hold_lock("slow-00001", "web", "mid-sale").unwrap());
    assert!(!slow.hold_lock("slow-00001", "web", "again").unwrap());
    assert_eq!(slow.node("slow-00001").unwrap().locks, ["web"]);
    let lock = wait_for("the lock on the server", Duration::from_secs(10), || {
        let api = api.clone();
        async move {
            let node: Value = api.get_json("/v1/nodes/slow-00001").await.ok()?;
            node["reported"]["locks"].as_array()?.first().cloned()
        }
    })
    .await;
    assert_eq!(lock["workload"], "web");
    assert_eq!(lock["reason"], "mid-sale");
    assert!(lock["since"].as_str().is_some(), "{lock}");

    assert!(slow.release_lock("slow-00001", "web").unwrap());
    wait_for(
        "the lock released on the server",
        Duration::from_secs(10),
        || {
            let api = api.clone();
            async move {
                let node: Value = api.get_json("/v1/nodes/slow-00001").await.ok()?;
                let locks = &node["reported"]["locks"];
                (locks.is_null() || locks.as_array().is_some_and(Vec::is_empty)).then_some(())
            }
        },
    )
    .await;
    assert!(slow.hold_lock("no-such-node", "web", "").is_err());
    slow.shutdown().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_reconnect_after_a_server_restart() {
    let mut fleet = fleet(&[]).await;
    let sim = simulate(&fleet, 20, &[]).await;
    let names = sim.names();
    wait_status(&fleet, &names, "Ready").await;
    let first = apply(&fleet, "app", &deployment("app", "", &[("app", &[])]));
    wait_running(&sim, &names, "app", &first).await;

    fleet.server.stop();
    wait_for("nodes notice the server is gone", LONG, || async {
        (sim.summary().reachable == 0).then_some(())
    })
    .await;
    fleet.server.start().await;
    // A new revision after the restart reaches every node, without re-enrollment.
    let second = apply(
        &fleet,
        "app",
        &deployment("app", "", &[("app", &[("VERSION", "2")])]),
    );
    assert_ne!(first, second);
    wait_running(&sim, &names, "app", &second).await;
    wait_for("every node reachable again", LONG, || async {
        (sim.summary().reachable == names.len()).then_some(())
    })
    .await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_clear_errors() {
    let fleet = fleet(&[]).await;
    let sim = simulate(&fleet, 1, &[]).await;
    // The same names again: the server refuses, and the error says which node and why.
    let join = fleet.join_token(&["--ttl", "1h"]);
    let config = SimConfig::new(ServerTarget::Join(JoinString::decode(&join).unwrap()), 1);
    let error = Simulator::start(config).await.unwrap_err().to_string();
    assert!(
        error.contains("enrolling node sim-00001") && error.contains("already enrolled"),
        "{error}"
    );
    // A join string pinning another CA never gets as far as enrolling.
    let mut wrong = JoinString::decode(&join).unwrap();
    wrong.ca_sha256 = "0".repeat(64);
    let error = Simulator::start(SimConfig::new(ServerTarget::Join(wrong), 1))
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("fetching the server's CA"), "{error}");
    // An invalid template is refused before anything is sent.
    let mut config = SimConfig::new(ServerTarget::Join(JoinString::decode(&join).unwrap()), 3);
    config.name_prefix = "Bad_".into();
    let error = Simulator::start(config).await.unwrap_err().to_string();
    assert!(error.contains("\"Bad_00001\""), "{error}");
    sim.shutdown().await;
}
