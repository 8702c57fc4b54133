//! Enrollment, deployments, layered merge, delivery, reconcile, CLI views.

use std::time::{Duration, Instant};

use edgefleet_testkit::{pid_alive, wait_for, workload};

use crate::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enroll_apply_converge_and_inspect() {
    let fleet = fleet_with(&[], &[("edge-1", "site=berlin"), ("edge-2", "site=lisbon")]).await;
    let text = format!(
        "{}---\n{}",
        manifest(
            "base",
            "",
            0,
            &[
                ("hello", "echo hello from base; exec sleep 1000"),
                ("sidecar", "exec sleep 1000")
            ]
        ),
        manifest(
            "berlin",
            "site=berlin",
            10,
            &[("hello", "echo hello from berlin; exec sleep 1000")]
        ),
    );
    let out = apply(&fleet, "deploy.yaml", &text);
    assert!(out.contains("deployment/base created"), "{out}");
    assert!(out.contains("deployment/berlin created"), "{out}");

    let edge1 = fleet.wait_converged("edge-1", LONG).await;
    let edge2 = fleet.wait_converged("edge-2", LONG).await;
    // Layered merge: the higher-priority site deployment wins `hello` on berlin only.
    assert_eq!(workload(&edge1, "hello").unwrap()["deployment"], "berlin");
    assert_eq!(workload(&edge1, "sidecar").unwrap()["deployment"], "base");
    assert_eq!(workload(&edge2, "hello").unwrap()["deployment"], "base");

    // The workload really runs, and its output lands in its log file on the node.
    let pid = reported_pid(&edge1, "hello");
    assert!(pid_alive(pid as u32), "pid {pid} not running");
    let log = fleet.path().join("agents/edge-1/logs/hello/stdout.log");
    wait_for("hello's stdout in its log file", LONG, || async {
        std::fs::read_to_string(&log)
            .ok()
            .filter(|t| t.contains("hello from berlin"))
    })
    .await;
    // The desired state was journaled on the node.
    let journal =
        std::fs::read_to_string(fleet.path().join("agents/edge-1/journal/desired.json")).unwrap();
    assert!(journal.contains("hello from berlin"));

    // Inventory and token labels.
    let facts = &edge1["facts"];
    assert!(!facts["hostname"].as_str().unwrap().is_empty());
    assert!(facts["cpu"]["count"].as_u64().unwrap() > 0);
    assert!(facts["memory_bytes"].as_u64().unwrap() > 0);
    assert!(!facts["interfaces"].as_array().unwrap().is_empty());
    assert_eq!(edge1["summary"]["labels"]["tier"], "edge");

    // CLI views.
    let nodes = fleet.cli_ok(&["get", "nodes"]);
    assert!(
        nodes.contains("NAME") && nodes.contains("edge-1") && nodes.contains("Ready"),
        "{nodes}"
    );
    let selected = fleet.cli_ok(&["get", "nodes", "-l", "site=lisbon", "-o", "json"]);
    let selected: Vec<serde_json::Value> = serde_json::from_str(&selected).unwrap();
    assert_eq!(selected.len(), 1);
    assert_eq!(selected[0]["name"], "edge-2");

    let deployments = fleet.cli_ok(&["get", "deployments", "-o", "json"]);
    let deployments: Vec<serde_json::Value> = serde_json::from_str(&deployments).unwrap();
    let base = deployments.iter().find(|d| d["name"] == "base").unwrap();
    assert_eq!(base["selected"], 2);
    assert_eq!(base["up_to_date"], 2, "{base}");
    assert_eq!(base["running"], 2, "{base}");
    assert_eq!(base["failing"], 0);
    let table = fleet.cli_ok(&["get", "deployments"]);
    assert!(
        table.contains("UP-TO-DATE") && table.contains("berlin"),
        "{table}"
    );

    let describe = fleet.cli_ok(&["describe", "node", "edge-1"]);
    for needle in [
        "edge-1",
        "site=berlin",
        "hello",
        "sidecar",
        "running",
        facts["hostname"].as_str().unwrap(),
    ] {
        assert!(
            describe.contains(needle),
            "describe node lacks {needle:?}:\n{describe}"
        );
    }
    let describe = fleet.cli_ok(&["describe", "deployment", "berlin"]);
    assert!(
        describe.contains("edge-1") && !describe.contains("edge-2"),
        "{describe}"
    );

    let audit = fleet.cli_ok(&["audit", "-o", "json"]);
    let audit: Vec<serde_json::Value> = serde_json::from_str(&audit).unwrap();
    assert!(
        audit
            .iter()
            .any(|e| e["action"] == "apply" && e["object"] == "deployment/berlin")
    );
    assert!(
        audit
            .iter()
            .any(|e| e["action"] == "enroll" && e["object"] == "node/edge-2")
    );

    // Applying the same thing again changes nothing.
    let out = apply(&fleet, "deploy.yaml", &text);
    assert!(out.contains("deployment/base unchanged"), "{out}");
    let again = fleet.wait_converged("edge-1", LONG).await;
    assert_eq!(reported_pid(&again, "hello"), pid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_reach_agents_at_once_and_reconcile() {
    let fleet = fleet_with(&[], &[("edge-1", "site=a"), ("edge-2", "site=b")]).await;
    apply(
        &fleet,
        "a.yaml",
        &manifest(
            "app",
            "site=a",
            0,
            &[("web", "exec sleep 1000"), ("extra", "exec sleep 1000")],
        ),
    );
    let before = fleet.wait_converged("edge-1", LONG).await;
    let old_pid = reported_pid(&before, "web");
    let extra_pid = reported_pid(&before, "extra");
    let generation = before["desired"]["generation"].as_u64().unwrap();

    // A change is pushed over the agent's open connection, not found by slow polling.
    let started = Instant::now();
    apply(
        &fleet,
        "a.yaml",
        &manifest("app", "site=a", 0, &[("web", "echo v2; exec sleep 1000")]),
    );
    let api = fleet.api();
    wait_for(
        "edge-1 applied the new generation",
        Duration::from_secs(20),
        || {
            let api = api.clone();
            async move {
                let d: serde_json::Value = api.get_json("/v1/nodes/edge-1").await.ok()?;
                (d["reported"]["applied_generation"].as_u64()? > generation).then_some(())
            }
        },
    )
    .await;
    let elapsed = started.elapsed();
    // The long poll waits 30 s; anything near that would mean the push did not work.
    assert!(
        elapsed < Duration::from_secs(10),
        "change took {elapsed:?} to reach the node"
    );

    let after = fleet.wait_converged("edge-1", LONG).await;
    assert_ne!(
        reported_pid(&after, "web"),
        old_pid,
        "changed workload was not replaced"
    );
    assert!(
        workload(&after, "extra").is_none(),
        "removed workload still reported"
    );
    wait_for("the removed workload's process is gone", LONG, || async {
        (!pid_alive(extra_pid as u32)).then_some(())
    })
    .await;
    wait_for(
        "the replaced workload's old process is gone",
        LONG,
        || async { (!pid_alive(old_pid as u32)).then_some(()) },
    )
    .await;

    // Relabelling a node moves it into the deployment.
    fleet.cli_ok(&["label", "node", "edge-2", "site=a", "role=spare"]);
    let edge2 = fleet.wait_converged("edge-2", LONG).await;
    assert!(workload(&edge2, "web").is_some(), "{edge2:#}");
    assert_eq!(edge2["summary"]["labels"]["role"], "spare");
    fleet.cli_ok(&["label", "node", "edge-2", "role-"]);
    let nodes = fleet.cli_ok(&["get", "nodes", "-l", "role", "-o", "json"]);
    assert_eq!(
        serde_json::from_str::<Vec<serde_json::Value>>(&nodes)
            .unwrap()
            .len(),
        0
    );

    // Deleting the deployment stops its workloads everywhere.
    let web_pid = reported_pid(&edge2, "web");
    fleet.cli_ok(&["delete", "deployment", "app"]);
    wait_for("workloads removed after delete", LONG, || async {
        (!pid_alive(web_pid as u32)).then_some(())
    })
    .await;
    let gone = fleet.wait_converged("edge-2", LONG).await;
    assert!(workload(&gone, "web").is_none());
    let out = fleet.cli(&["delete", "deployment", "app"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("app"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_policies_and_crash_loops_are_reported() {
    let fleet = fleet_with(&[], &[("edge-1", "site=a")]).await;
    let text = "apiVersion: edgefleet.io/v1\nkind: Deployment\nmetadata:\n  name: jobs\nspec:\n  rollout:\n    autoRollback: false\n  workloads:\n    - name: crasher\n      command: /bin/sh\n      args: [\"-c\", \"echo dying >&2; exit 3\"]\n    - name: once\n      command: /bin/sh\n      args: [\"-c\", \"exit 0\"]\n      restartPolicy: on-failure\n    - name: missing\n      command: /no/such/binary\n";
    apply(&fleet, "jobs.yaml", text);
    let api = fleet.api();
    let detail = wait_for("crasher crash-looping, once exited", LONG, || {
        let api = api.clone();
        async move {
            let d: serde_json::Value = api.get_json("/v1/nodes/edge-1").await.ok()?;
            let crasher = workload(&d, "crasher")?;
            let once = workload(&d, "once")?;
            (crasher["state"] == "crash-looping" && once["state"] == "exited").then_some(d)
        }
    })
    .await;
    let crasher = workload(&detail, "crasher").unwrap();
    assert!(crasher["restarts"].as_u64().unwrap() >= 3, "{crasher}");
    assert_eq!(crasher["last_exit_code"], 3);
    assert_eq!(workload(&detail, "once").unwrap()["last_exit_code"], 0);
    let missing = workload(&detail, "missing").unwrap();
    assert!(
        missing["message"]
            .as_str()
            .unwrap_or("")
            .contains("/no/such/binary"),
        "{missing}"
    );
    let stderr =
        std::fs::read_to_string(fleet.path().join("agents/edge-1/logs/crasher/stderr.log"))
            .unwrap();
    assert!(stderr.contains("dying"));

    let deployments: Vec<serde_json::Value> = api.get_json("/v1/deployments").await.unwrap();
    assert_eq!(deployments[0]["failing"], 1, "{:#}", deployments[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_state_survives_restart() {
    let mut fleet = fleet_with(&[], &[("edge-1", "site=a")]).await;
    apply(
        &fleet,
        "a.yaml",
        &manifest("app", "", 0, &[("web", "exec sleep 1000")]),
    );
    let before = fleet.wait_converged("edge-1", LONG).await;
    let token = fleet.server.admin_token();
    fleet.server.stop();
    fleet.server.start().await;
    assert_eq!(fleet.server.admin_token(), token);
    let after = fleet.wait_converged("edge-1", LONG).await;
    assert_eq!(
        before["desired"]["generation"],
        after["desired"]["generation"]
    );
    assert_eq!(reported_pid(&before, "web"), reported_pid(&after, "web"));
    let out = fleet.cli_ok(&["get", "deployments"]);
    assert!(out.contains("app"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quickstart_converges_and_cleans_up() {
    let tmp = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(bin())
        .args([
            "quickstart",
            "--dir",
            tmp.path().to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--exit-when-converged",
        ])
        .env("HOME", tmp.path().join("home"))
        .env_remove("EDGEFLEET_CONFIG")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "quickstart failed:\n{text}");
    assert!(text.contains("converged"), "{text}");
    for node in ["edge-1", "edge-2", "edge-3"] {
        assert!(text.contains(node), "{node} missing:\n{text}");
    }
    // Every process quickstart started is gone: no workload keeps running.
    let pids = std::fs::read_dir(tmp.path().join("agents"))
        .unwrap()
        .flat_map(|agent| {
            std::fs::read_dir(agent.unwrap().path().join("run"))
                .into_iter()
                .flatten()
        });
    for pid_file in pids {
        let text = std::fs::read_to_string(pid_file.unwrap().path()).unwrap_or_default();
        if let Some(pid) = text
            .split_whitespace()
            .next()
            .and_then(|p| p.parse::<u32>().ok())
        {
            assert!(!pid_alive(pid), "workload pid {pid} survived quickstart");
        }
    }
}
