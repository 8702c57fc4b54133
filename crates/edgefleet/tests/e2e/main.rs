//! End-to-end tests: the real `edgefleet` binary as server, agents and CLI, on loopback TLS.
//!
//! Each test starts its own server and agents in a temporary directory (see
//! `edgefleet-testkit`) and stops them by process id when it ends.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod alerts;
mod artifacts;
mod bad_input;
mod deploy;
mod logs;
mod offline;
mod plan;
mod rollouts;
mod security;
mod telemetry;
mod workloads;

use std::path::{Path, PathBuf};
use std::time::Duration;

use edgefleet_testkit::{Fleet, wait_for};

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_edgefleet"))
}

pub const LONG: Duration = Duration::from_secs(60);

/// A deployment manifest with one or more `/bin/sh -c SCRIPT` workloads.
pub fn manifest(name: &str, selector: &str, priority: i32, workloads: &[(&str, &str)]) -> String {
    let mut text = format!(
        "apiVersion: edgefleet.io/v1\nkind: Deployment\nmetadata:\n  name: {name}\nspec:\n  priority: {priority}\n"
    );
    if !selector.is_empty() {
        text.push_str("  selector:\n    matchLabels:\n");
        for term in selector.split(',') {
            let (k, v) = term.split_once('=').unwrap();
            text.push_str(&format!("      {k}: {v}\n"));
        }
    }
    text.push_str("  workloads:\n");
    for (workload, script) in workloads {
        text.push_str(&format!(
            "    - name: {workload}\n      command: /bin/sh\n      args: [\"-c\", {script:?}]\n      stopGracePeriod: 2s\n"
        ));
    }
    text
}

pub fn write(dir: &Path, file: &str, text: &str) -> PathBuf {
    let path = dir.join(file);
    std::fs::write(&path, text).unwrap();
    path
}

/// Applies manifest text through the CLI (`apply -f FILE`).
pub fn apply(fleet: &Fleet, file: &str, text: &str) -> String {
    let path = write(fleet.path(), file, text);
    fleet.cli_ok(&["apply", "-f", path.to_str().unwrap()])
}

/// Waits until `n` nodes are enrolled and Ready.
pub async fn wait_ready(fleet: &Fleet, n: usize) {
    let api = fleet.api();
    wait_for(&format!("{n} nodes Ready"), LONG, || {
        let api = api.clone();
        async move {
            let nodes: Vec<serde_json::Value> = api.get_json("/v1/nodes").await.ok()?;
            (nodes.iter().filter(|n| n["status"] == "Ready").count() == n).then_some(())
        }
    })
    .await;
}

/// Enrolls agents `(name, labels)` with one join token and waits until they are Ready.
pub async fn fleet_with(server_args: &[&str], agents: &[(&str, &str)]) -> Fleet {
    let mut fleet = Fleet::start(&bin(), server_args).await;
    let join = fleet.join_token(&["--ttl", "1h", "--labels", "tier=edge"]);
    for (name, labels) in agents {
        fleet.spawn_agent(name, labels, Some(&join), &[]);
    }
    wait_ready(&fleet, agents.len()).await;
    fleet
}

/// The pid the node reports for a workload.
pub fn reported_pid(detail: &serde_json::Value, workload: &str) -> u64 {
    edgefleet_testkit::workload(detail, workload)
        .and_then(|w| w["pid"].as_u64())
        .unwrap_or_else(|| panic!("no pid for {workload} in {detail:#}"))
}

/// Appends a `spec.rollout` block to a manifest from [`manifest`]: `strategy` holds one
/// `key: value` line per field (`"batchSize: 1\nbakeTime: 3s"`).
pub fn with_rollout(manifest: String, strategy: &str) -> String {
    let mut text = manifest;
    text.push_str("  rollout:\n");
    for line in strategy.lines() {
        text.push_str(&format!("    {line}\n"));
    }
    text
}

/// `GET /v1/nodes/NAME` as JSON.
pub async fn node_detail(fleet: &Fleet, node: &str) -> serde_json::Value {
    fleet
        .api()
        .get_json(&format!("/v1/nodes/{node}"))
        .await
        .unwrap_or_else(|e| panic!("GET /v1/nodes/{node}: {e}"))
}

/// Runs the CLI expecting it to fail; returns its exit code and stdout + stderr.
pub fn cli_fails(fleet: &Fleet, args: &[&str]) -> (Option<i32>, String) {
    let out = fleet.cli(args);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !out.status.success(),
        "edgefleet {args:?} succeeded, expected a failure:\n{text}"
    );
    (out.status.code(), text)
}
