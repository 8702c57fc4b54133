//! Progressive rollouts on real agents: a bad revision rolled back, pause/resume/undo,
//! maintenance windows and update locks holding nodes back, the flight recorder.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use edgefleet_testkit::{Fleet, pid_alive, wait_for, workload};

use crate::*;

const NODES: [&str; 3] = ["edge-1", "edge-2", "edge-3"];
const AGENTS: &[(&str, &str)] = &[
    ("edge-1", "site=berlin"),
    ("edge-2", "site=berlin"),
    ("edge-3", "site=lisbon"),
];

/// A one-workload deployment `app` on every node with a rollout strategy.
fn app(workload: &str, script: &str, strategy: &str) -> String {
    with_rollout(manifest("app", "", 0, &[(workload, script)]), strategy)
}

/// The current revision hash of a deployment.
async fn current_revision(fleet: &Fleet, deployment: &str) -> String {
    let detail: serde_json::Value = fleet
        .api()
        .get_json(&format!("/v1/deployments/{deployment}"))
        .await
        .unwrap();
    detail["summary"]["revision"].as_str().unwrap().to_owned()
}

/// The revision of `deployment` a node detail says the node should run.
fn desired_revision(detail: &serde_json::Value, deployment: &str) -> Option<String> {
    detail["desired"]["workloads"]
        .as_array()?
        .iter()
        .find(|w| w["deployment"] == deployment)
        .and_then(|w| w["revision"].as_str())
        .map(str::to_owned)
}

/// The spec hash of a desired workload of a node detail.
fn desired_spec_hash(detail: &serde_json::Value, workload: &str) -> String {
    detail["desired"]["workloads"]
        .as_array()
        .and_then(|ws| ws.iter().find(|w| w["spec"]["name"] == workload))
        .and_then(|w| w["spec_hash"].as_str())
        .unwrap_or_else(|| panic!("no desired {workload} in {detail:#}"))
        .to_owned()
}

/// Waits until a node runs `deployment` at `revision`: desired, applied and running.
async fn wait_on_revision(
    fleet: &Fleet,
    node: &str,
    deployment: &str,
    revision: &str,
) -> serde_json::Value {
    let api = fleet.api();
    wait_for(
        &format!("{node} running {deployment} at revision {revision}"),
        LONG,
        || {
            let api = api.clone();
            async move {
                let d: serde_json::Value = api.get_json(&format!("/v1/nodes/{node}")).await.ok()?;
                let running_it = d["reported"]["workloads"]
                    .as_array()?
                    .iter()
                    .any(|w| w["deployment"] == deployment && w["revision"] == revision);
                (edgefleet_testkit::converged(&d)
                    && desired_revision(&d, deployment).as_deref() == Some(revision)
                    && running_it)
                    .then_some(d)
            }
        },
    )
    .await
}

/// Checks `holds` every 100 ms for `duration`, panicking with `what` the first time it
/// does not. For things that must *not* happen (a paused or blocked node being updated).
async fn hold_for<F, Fut>(what: &str, duration: Duration, mut holds: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let start = Instant::now();
    while start.elapsed() < duration {
        if let Err(why) = holds().await {
            panic!("{what} stopped holding after {:?}: {why}", start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Fails when any node but `allowed` is desired on another revision of `app` than `old`.
async fn only_these_updated(
    api: &edgefleet_testkit::Api,
    allowed: &BTreeSet<String>,
    old: &str,
) -> Result<(), String> {
    for node in NODES {
        let d: serde_json::Value = api
            .get_json(&format!("/v1/nodes/{node}"))
            .await
            .map_err(|e| e.to_string())?;
        let revision = desired_revision(&d, "app");
        if !allowed.contains(node) && revision.as_deref() != Some(old) {
            return Err(format!("{node} was given revision {revision:?}"));
        }
    }
    Ok(())
}

/// Records, in the background, every node that is ever desired on a revision of `app` other
/// than `old`, until stopped.
struct RevisionWatch {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<BTreeSet<String>>,
}

impl RevisionWatch {
    fn start(fleet: &Fleet, old: &str) -> Self {
        let api = fleet.api();
        let old = old.to_owned();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            let mut seen = BTreeSet::new();
            while !stopped.load(Ordering::SeqCst) {
                for node in NODES {
                    let Ok(d) = api
                        .get_json::<serde_json::Value>(&format!("/v1/nodes/{node}"))
                        .await
                    else {
                        continue;
                    };
                    if desired_revision(&d, "app").is_some_and(|r| r != old) {
                        seen.insert(node.to_owned());
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            seen
        });
        Self { stop, task }
    }

    async fn finish(self) -> BTreeSet<String> {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.unwrap()
    }
}

/// A node's flight-recorder events as the server stores them, newest first.
async fn events(fleet: &Fleet, node: &str) -> Vec<serde_json::Value> {
    fleet
        .api()
        .get_json(&format!("/v1/nodes/{node}/events?limit=1000"))
        .await
        .unwrap()
}

fn has_event(events: &[serde_json::Value], kind: &str) -> bool {
    events.iter().any(|e| e["kind"] == kind)
}

/// The lean `edgefleet-agent` binary. It belongs to another package, so cargo does not build
/// it for these tests: build it (once per test run) next to `edgefleet`.
fn agent_bin() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let path = bin().with_file_name("edgefleet-agent");
            let profile_dir = bin().parent().unwrap().to_owned();
            let mut build = Command::new(env!("CARGO"));
            // Without the variables cargo set for this test run: build scripts that watch
            // them (ring watches CARGO_MANIFEST_DIR) would rebuild, here and then again in
            // the next ordinary build.
            for (name, _) in std::env::vars_os() {
                let name = name.to_string_lossy();
                if name.starts_with("CARGO_PKG_")
                    || name.starts_with("CARGO_BIN_EXE_")
                    || [
                        "CARGO_MANIFEST_DIR",
                        "CARGO_MANIFEST_PATH",
                        "CARGO_CRATE_NAME",
                        "CARGO_PRIMARY_PACKAGE",
                        "CARGO_TARGET_TMPDIR",
                    ]
                    .contains(&name.as_ref())
                {
                    build.env_remove(name.as_ref());
                }
            }
            build
                .args([
                    "build",
                    "--quiet",
                    "-p",
                    "edgefleet-agent",
                    "--bin",
                    "edgefleet-agent",
                ])
                .arg("--target-dir")
                .arg(profile_dir.parent().unwrap());
            if profile_dir.file_name().is_some_and(|n| n == "release") {
                build.arg("--release");
            }
            let out = build
                .output()
                .expect("running cargo build for edgefleet-agent");
            assert!(
                out.status.success() && path.exists(),
                "building edgefleet-agent failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            path
        })
        .clone()
}

/// `edgefleet-agent lock ARGS --data-dir DIR` against a node's running agent.
fn agent_lock(fleet: &Fleet, node: &str, args: &[&str]) -> String {
    let dir = &fleet
        .agents
        .iter()
        .find(|a| a.name == node)
        .unwrap_or_else(|| panic!("no agent {node}"))
        .dir;
    let out = Command::new(agent_bin())
        .arg("lock")
        .args(args)
        .arg("--data-dir")
        .arg(dir)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "edgefleet-agent lock {args:?} failed:\n{text}"
    );
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_revision_stops_at_its_first_node_and_is_rolled_back() {
    let fleet = fleet_with(&[], AGENTS).await;
    apply(
        &fleet,
        "app.yaml",
        &app("svc", "while true; do sleep 1; done", "batchSize: 1"),
    );
    let mut before = BTreeMap::new();
    for node in NODES {
        let detail = fleet.wait_converged(node, LONG).await;
        before.insert(node, detail);
    }
    let good = current_revision(&fleet, "app").await;
    let good_spec = desired_spec_hash(&before["edge-1"], "svc");

    let watch = RevisionWatch::start(&fleet, &good);
    apply(&fleet, "app.yaml", &app("svc", "exit 3", "batchSize: 1"));
    let bad = current_revision(&fleet, "app").await;
    assert_ne!(bad, good);
    let mut status_watch = Command::new(&fleet.bin);
    status_watch
        .args(["rollout", "status", "app", "-w"])
        .envs(fleet.cli_env());
    let watched = tokio::task::spawn_blocking(move || status_watch.output().unwrap())
        .await
        .unwrap();
    let watched_text = format!(
        "{}{}",
        String::from_utf8_lossy(&watched.stdout),
        String::from_utf8_lossy(&watched.stderr)
    );
    assert_eq!(watched.status.code(), Some(1), "{watched_text}");

    let rollout: serde_json::Value = fleet
        .api()
        .get_json("/v1/deployments/app/rollout")
        .await
        .unwrap();
    assert_eq!(rollout["phase"], "rolled-back", "{rollout:#}");
    let reason = rollout["abort_reason"].as_str().unwrap();
    assert!(reason.contains("exit code 3"), "{rollout:#}");
    assert!(watched_text.contains("rolled back"), "{watched_text}");
    assert!(watched_text.contains(reason), "{watched_text}");
    let canary: Vec<&str> = rollout["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["state"] == "rolled-back")
        .map(|n| n["node"].as_str().unwrap())
        .collect();
    assert_eq!(canary.len(), 1, "{rollout:#}");
    let canary = canary[0];

    // Every node ends on the good revision: the canary restarted on it, the others never
    // noticed anything.
    for node in NODES {
        let detail = wait_on_revision(&fleet, node, "app", &good).await;
        let svc = workload(&detail, "svc").unwrap();
        assert_eq!(svc["spec_hash"], good_spec.as_str(), "{detail:#}");
        let pid = reported_pid(&detail, "svc");
        assert!(pid_alive(pid as u32));
        let old_pid = reported_pid(&before[node], "svc");
        if node == canary {
            assert_ne!(pid, old_pid, "the canary should have run the bad revision");
        } else {
            assert_eq!(pid, old_pid, "{node} restarted its workload");
        }
    }
    // No other node was ever given the bad revision (the canary's short spell on it may fall
    // between two polls; its flight recorder below shows it ran it).
    let ever_updated = watch.finish().await;
    assert!(
        ever_updated.iter().all(|node| node == canary),
        "nodes ever given the bad revision: {ever_updated:?}, canary {canary}"
    );

    // The flight recorders agree: only the canary ever started the bad revision, and it
    // recorded going back.
    let canary_events = wait_for("the canary's rollback event", LONG, || async {
        let events = events(&fleet, canary).await;
        has_event(&events, "rollback").then_some(events)
    })
    .await;
    assert!(
        canary_events
            .iter()
            .any(|e| e["kind"] == "workload-started" && e["revision"] == bad.as_str()),
        "{canary_events:#?}"
    );
    assert!(
        canary_events
            .iter()
            .any(|e| e["kind"] == "rollback" && e["revision"] == good.as_str()),
        "{canary_events:#?}"
    );
    for node in NODES.iter().filter(|n| **n != canary) {
        let events = events(&fleet, node).await;
        assert!(
            !events.iter().any(|e| e["revision"] == bad.as_str()),
            "{node} ran the bad revision: {events:#?}"
        );
    }

    let history = fleet.cli_ok(&["rollout", "history", "app"]);
    let rows: Vec<&str> = history.lines().skip(1).collect();
    assert_eq!(rows.len(), 2, "{history}");
    assert!(
        rows[0].starts_with('2') && rows[0].contains("rolled-back"),
        "{history}"
    );
    assert!(
        rows[1].starts_with('1') && rows[1].contains("succeeded"),
        "{history}"
    );

    let timeline = fleet.cli_ok(&["events", "node", canary]);
    let rollback_line = timeline
        .lines()
        .find(|l| l.contains("rollback"))
        .unwrap_or_else(|| panic!("no rollback event:\n{timeline}"));
    assert!(rollback_line.contains("svc"), "{timeline}");
    assert!(timeline.contains("workload-started"), "{timeline}");
    let describe = fleet.cli_ok(&["describe", "node", canary]);
    let (_, timeline) = describe
        .split_once("Timeline:")
        .unwrap_or_else(|| panic!("describe node has no Timeline:\n{describe}"));
    assert!(timeline.contains("rollback"), "{describe}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_rollout_releases_no_node_until_resumed_and_undo_restores_revision_one() {
    let fleet = fleet_with(&[], AGENTS).await;
    apply(
        &fleet,
        "app.yaml",
        &app("svc", "echo one; exec sleep 1000", "batchSize: 100%"),
    );
    for node in NODES {
        fleet.wait_converged(node, LONG).await;
    }
    let one = current_revision(&fleet, "app").await;
    let one_manifest: serde_json::Value =
        fleet.api().get_json("/v1/deployments/app").await.unwrap();
    let one_spec = desired_spec_hash(&node_detail(&fleet, "edge-1").await, "svc");

    apply(
        &fleet,
        "app.yaml",
        &app(
            "svc",
            "echo two; exec sleep 1000",
            "batchSize: 1\nbakeTime: 3s",
        ),
    );
    let two = current_revision(&fleet, "app").await;
    let api = fleet.api();
    let first = wait_for("the first step's node released", LONG, || {
        let api = api.clone();
        let two = two.clone();
        async move {
            for node in NODES {
                let d: serde_json::Value = api.get_json(&format!("/v1/nodes/{node}")).await.ok()?;
                if desired_revision(&d, "app").as_deref() == Some(two.as_str()) {
                    return Some(node.to_owned());
                }
            }
            None
        }
    })
    .await;
    let out = fleet.cli_ok(&["rollout", "pause", "app"]);
    assert!(out.contains("paused"), "{out}");

    // Twice the bake time: an unpaused rollout would have released the next node by then.
    let allowed = BTreeSet::from([first.clone()]);
    hold_for(
        "no further node updated while paused",
        Duration::from_secs(6),
        || only_these_updated(&api, &allowed, &one),
    )
    .await;
    let status = fleet.cli_ok(&["rollout", "status", "app"]);
    assert!(status.contains("(paused)"), "{status}");
    let status: serde_json::Value = api.get_json("/v1/deployments/app/rollout").await.unwrap();
    assert_eq!(status["paused"], true, "{status:#}");
    assert_eq!(status["current_step"], 1, "{status:#}");

    let out = fleet.cli_ok(&["rollout", "resume", "app"]);
    assert!(out.contains("resumed"), "{out}");
    let out = fleet.cli_ok(&["rollout", "status", "app", "-w"]);
    assert!(out.contains("succeeded"), "{out}");
    for node in NODES {
        wait_on_revision(&fleet, node, "app", &two).await;
    }

    let out = fleet.cli_ok(&["rollout", "undo", "app"]);
    assert!(out.contains("deployment/app updated"), "{out}");
    let out = fleet.cli_ok(&["rollout", "status", "app", "-w"]);
    assert!(out.contains("succeeded"), "{out}");
    let detail: serde_json::Value = api.get_json("/v1/deployments/app").await.unwrap();
    let revisions = detail["revisions"].as_array().unwrap();
    assert_eq!(revisions.len(), 3, "{detail:#}");
    let three = revisions.iter().find(|r| r["number"] == 3).unwrap();
    assert_eq!(three["revision"], one.as_str(), "{detail:#}");
    assert_eq!(detail["summary"]["revision"], one.as_str());
    assert_eq!(detail["manifest"], one_manifest["manifest"], "{detail:#}");
    let rollout: serde_json::Value = api.get_json("/v1/deployments/app/rollout").await.unwrap();
    assert_eq!(rollout["to_revision_number"], 3, "{rollout:#}");
    for node in NODES {
        let d = wait_on_revision(&fleet, node, "app", &one).await;
        assert_eq!(workload(&d, "svc").unwrap()["spec_hash"], one_spec.as_str());
    }
}

/// Follows the rollout of `app` to success and checks that every node but `held` took
/// revision `two` while `held` kept revision `one` and its workload's pid for 3 s. Returns
/// `held`'s line of `rollout status --nodes`, which says it is blocked.
async fn rollout_holds_back_one_node(
    fleet: &Fleet,
    held: &str,
    (workload, pid): (&str, u64),
    (one, two): (&str, &str),
    why: &str,
) -> String {
    let out = fleet.cli_ok(&["rollout", "status", "app", "-w"]);
    assert!(out.contains("succeeded"), "{out}");
    let others: BTreeSet<String> = NODES
        .iter()
        .filter(|n| **n != held)
        .map(|n| (*n).to_owned())
        .collect();
    for node in &others {
        wait_on_revision(fleet, node, "app", two).await;
    }
    let api = fleet.api();
    hold_for(
        &format!("{held} kept on the old revision {why}"),
        Duration::from_secs(3),
        || only_these_updated(&api, &others, one),
    )
    .await;
    assert_eq!(reported_pid(&node_detail(fleet, held).await, workload), pid);
    let status = fleet.cli_ok(&["rollout", "status", "app", "--nodes"]);
    let line = status
        .lines()
        .find(|l| l.trim_start().starts_with(held))
        .unwrap_or_else(|| panic!("{held} not listed:\n{status}"))
        .to_owned();
    assert!(line.contains("blocked"), "{status}");
    line
}

/// `HH:MM` (UTC) `hours` from now: the start of a window that is closed now.
fn utc_hhmm_in(hours: i64) -> String {
    let at = time::OffsetDateTime::now_utc() + time::Duration::hours(hours);
    format!("{:02}:{:02}", at.hour(), at.minute())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_maintenance_window_defers_its_node_until_deleted() {
    let fleet = fleet_with(&[], AGENTS).await;
    apply(
        &fleet,
        "app.yaml",
        &app("svc", "echo one; exec sleep 1000", "batchSize: 100%"),
    );
    for node in NODES {
        fleet.wait_converged(node, LONG).await;
    }
    let one = current_revision(&fleet, "app").await;
    let lisbon_pid = reported_pid(&node_detail(&fleet, "edge-3").await, "svc");

    // Open for an hour from three hours from now, every day: closed now.
    let window = format!(
        "apiVersion: edgefleet.io/v1\nkind: MaintenanceWindow\nmetadata:\n  name: lisbon-nights\nspec:\n  selector:\n    matchLabels:\n      site: lisbon\n  schedule:\n    - start: \"{}\"\n      duration: 1h\n  timeZone: UTC\n",
        utc_hhmm_in(3)
    );
    let text = format!(
        "{window}---\n{}",
        app("svc", "echo two; exec sleep 1000", "batchSize: 100%")
    );
    let out = apply(&fleet, "window.yaml", &text);
    assert!(out.contains("window/lisbon-nights created"), "{out}");
    let two = current_revision(&fleet, "app").await;
    let windows = fleet.cli_ok(&["get", "windows"]);
    assert!(
        windows.contains("lisbon-nights") && windows.contains("UTC"),
        "{windows}"
    );
    let windows: Vec<serde_json::Value> =
        serde_json::from_str(&fleet.cli_ok(&["get", "windows", "-o", "json"])).unwrap();
    assert_eq!(windows.len(), 1);
    assert_eq!(windows[0]["selected_nodes"], 1, "{windows:#?}");
    assert_eq!(windows[0]["open_nodes"], 0, "{windows:#?}");

    // The rollout goes through everywhere else and leaves the lisbon node deferred.
    let line = rollout_holds_back_one_node(
        &fleet,
        "edge-3",
        ("svc", lisbon_pid),
        (&one, &two),
        "outside its window",
    )
    .await;
    assert!(
        line.contains("outside maintenance window lisbon-nights"),
        "{line}"
    );
    let explain = fleet.cli_ok(&["explain", "node", "edge-3"]);
    assert!(
        explain.contains("outside maintenance window lisbon-nights"),
        "{explain}"
    );
    assert!(explain.contains("lisbon-nights: closed"), "{explain}");

    let out = fleet.cli_ok(&["delete", "window", "lisbon-nights"]);
    assert!(out.contains("lisbon-nights"), "{out}");
    let detail = wait_on_revision(&fleet, "edge-3", "app", &two).await;
    assert_ne!(reported_pid(&detail, "svc"), lisbon_pid);
    let windows = fleet.cli_ok(&["get", "windows"]);
    assert!(!windows.contains("lisbon-nights"), "{windows}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_lock_holds_back_only_its_node_until_released() {
    // Built before the fleet starts, so a (re)build does not eat into the fleet's timeouts.
    agent_bin();
    let fleet = fleet_with(&[], AGENTS).await;
    apply(
        &fleet,
        "app.yaml",
        &app("till", "echo one; exec sleep 1000", "batchSize: 100%"),
    );
    for node in NODES {
        fleet.wait_converged(node, LONG).await;
    }
    let one = current_revision(&fleet, "app").await;
    let locked_pid = reported_pid(&node_detail(&fleet, "edge-2").await, "till");

    let out = agent_lock(
        &fleet,
        "edge-2",
        &["acquire", "till", "--reason", "mid-task"],
    );
    assert!(out.contains("till"), "{out}");
    let api = fleet.api();
    wait_for("the server knows edge-2's lock", LONG, || {
        let api = api.clone();
        async move {
            let d: serde_json::Value = api.get_json("/v1/nodes/edge-2").await.ok()?;
            let locks = d["reported"]["locks"].as_array()?;
            locks
                .iter()
                .any(|l| l["workload"] == "till" && l["reason"] == "mid-task")
                .then_some(())
        }
    })
    .await;

    apply(
        &fleet,
        "app.yaml",
        &app("till", "echo two; exec sleep 1000", "batchSize: 100%"),
    );
    let two = current_revision(&fleet, "app").await;
    rollout_holds_back_one_node(
        &fleet,
        "edge-2",
        ("till", locked_pid),
        (&one, &two),
        "while locked",
    )
    .await;

    // A plan of a further change names the lock.
    let next = write(
        fleet.path(),
        "next.yaml",
        &app("till", "echo three; exec sleep 1000", "batchSize: 100%"),
    );
    let next = next.to_str().unwrap();
    let human = fleet.cli_ok(&["plan", "-f", next]);
    assert!(
        human.contains("edge-2: workload till holds its update lock (mid-task)"),
        "{human}"
    );
    let plan: serde_json::Value =
        serde_json::from_str(&fleet.cli_ok(&["plan", "-f", next, "-o", "json"])).unwrap();
    let blocked = plan["blocked"].as_array().unwrap();
    assert_eq!(blocked.len(), 1, "{plan:#}");
    assert_eq!(blocked[0]["node"], "edge-2");
    assert_eq!(blocked[0]["blockers"][0]["kind"], "locked", "{plan:#}");
    assert_eq!(blocked[0]["blockers"][0]["lock"]["workload"], "till");

    let out = agent_lock(&fleet, "edge-2", &["release", "till"]);
    assert!(out.contains("till"), "{out}");
    let detail = wait_on_revision(&fleet, "edge-2", "app", &two).await;
    assert_ne!(reported_pid(&detail, "till"), locked_pid);

    wait_for("edge-2's lock events", LONG, || async {
        let events = events(&fleet, "edge-2").await;
        (has_event(&events, "lock-acquired") && has_event(&events, "lock-released")).then_some(())
    })
    .await;
    let text = fleet.cli_ok(&["events", "node", "edge-2"]);
    let acquired = text
        .find("lock-acquired")
        .unwrap_or_else(|| panic!("{text}"));
    let released = text
        .find("lock-released")
        .unwrap_or_else(|| panic!("{text}"));
    assert!(acquired < released, "events out of order:\n{text}");
    assert!(text.contains("mid-task"), "{text}");
}
