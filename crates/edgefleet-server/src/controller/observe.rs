//! What a rollout sees of a node: turns a stored node record into the core's
//! `NodeObservation` for one deployment. Pure; `now` is an argument.

use std::collections::{BTreeSet, HashSet};
use std::time::Duration;

use edgefleet_core::lifecycle::node_status;
use edgefleet_core::rollout::{Health, NodeObservation, WindowGate};
use edgefleet_core::window::{CompiledWindow, node_window_state};
use edgefleet_wire::Timestamp;
use edgefleet_wire::api::NodeStatus;
use edgefleet_wire::node::{WorkloadState, WorkloadStatus};

use crate::status::is_failing;
use crate::store::NodeRecord;

/// Maintenance windows, compiled once per rollout pass.
pub type Windows = Vec<(String, CompiledWindow)>;

/// Whether the node may be updated now, by its maintenance windows.
pub fn window_gate(windows: &Windows, node: &NodeRecord, now: Timestamp) -> WindowGate {
    let state = node_window_state(
        windows.iter().map(|(name, window)| (name.as_str(), window)),
        &node.labels,
        node.facts.timezone.as_deref(),
        now,
    );
    if state.open {
        WindowGate::Open
    } else {
        WindowGate::Closed {
            windows: state.windows,
            next_open: state.next_open,
        }
    }
}

/// What a rollout compares node reports with.
pub struct RolloutView<'a> {
    pub deployment: &'a str,
    pub to_revision: &'a str,
    /// Hashes of the workload specs of the revision before. A workload whose spec did not
    /// change keeps its restart count from before the update, so only restarts of new
    /// specs (whose count starts at zero when the agent replaces them) count against it.
    pub previous_specs: &'a HashSet<String>,
}

/// The node as the rollout `view` sees it.
pub fn observe(
    node: &NodeRecord,
    view: &RolloutView<'_>,
    windows: &Windows,
    now: Timestamp,
    not_ready_after: Duration,
) -> Option<NodeObservation> {
    let RolloutView {
        deployment,
        to_revision,
        previous_specs,
    } = *view;
    if node.revoked {
        return None;
    }
    let online = node_status(now, node.last_seen, false, not_ready_after) == NodeStatus::Ready;
    let desired: Vec<_> = node
        .desired_workloads
        .iter()
        .filter(|w| w.deployment == deployment)
        .collect();
    let reported: Vec<&WorkloadStatus> = node
        .reported
        .iter()
        .flat_map(|r| r.workloads.iter())
        .filter(|w| w.deployment == deployment && w.state != WorkloadState::Stopped)
        .collect();
    let wanted: BTreeSet<(&str, &str)> = desired
        .iter()
        .map(|w| (w.spec.name.as_str(), w.spec_hash.as_str()))
        .collect();
    let running: BTreeSet<(&str, &str)> = reported
        .iter()
        .map(|w| (w.name.as_str(), w.spec_hash.as_str()))
        .collect();
    let updated = desired.iter().all(|w| w.revision == to_revision)
        && node.applied_generation >= node.desired_generation
        && wanted == running;
    let health = if let Some(failing) = reported.iter().find(|w| is_failing(w)) {
        Health::Unhealthy(format!(
            "workload {} is {}{}",
            failing.name,
            failing.state.as_str(),
            failing
                .message
                .as_deref()
                .map(|m| format!(": {m}"))
                .unwrap_or_default()
        ))
    } else if let Some(restarted) = reported
        .iter()
        .find(|w| w.restarts > 0 && !previous_specs.contains(&w.spec_hash))
    {
        // A new spec that exited since the agent started it: an instant crash is caught
        // here before the crash loop is declared (which takes several restarts).
        Health::Unhealthy(format!(
            "workload {} restarted {} times since the update{}",
            restarted.name,
            restarted.restarts,
            restarted
                .last_exit_code
                .map(|code| format!(" (last exit code {code})"))
                .unwrap_or_default()
        ))
    } else if reported.iter().all(|w| is_up(w)) {
        Health::Healthy
    } else {
        Health::Progressing
    };
    Some(NodeObservation {
        online,
        updated,
        health,
        window: window_gate(windows, node, now),
        locks: node
            .reported
            .as_ref()
            .map(|r| r.locks.clone())
            .unwrap_or_default(),
    })
}

/// Running (and ready, when it has a readiness probe), or done as its restart policy
/// intends (exited 0).
fn is_up(status: &WorkloadStatus) -> bool {
    match status.state {
        WorkloadState::Running => status.ready != Some(false),
        WorkloadState::Exited => status.last_exit_code == Some(0),
        _ => false,
    }
}
