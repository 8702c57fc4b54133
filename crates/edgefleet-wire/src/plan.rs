//! `edgefleet plan` and `edgefleet explain`: what a change would do, and why a node runs
//! what it runs.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::Timestamp;
use crate::api::{ApplyAction, NodeStatus};
use crate::manifest::{DeploymentManifest, MaintenanceWindowManifest};
use crate::node::UpdateLock;
use crate::rollout::{RolloutNodeState, RolloutPhase};

/// `POST /v1/plan`: the same documents `apply` would take.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanRequest {
    pub deployments: Vec<DeploymentManifest>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub windows: Vec<MaintenanceWindowManifest>,
}

/// What a plan was computed against. `apply --plan` sends it back, and the server refuses
/// to apply when the current basis differs, naming what changed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanBasis {
    /// Every deployment's current revision hash, by name.
    pub deployments: BTreeMap<String, String>,
    /// Every maintenance window's content hash, by name.
    #[serde(default)]
    pub windows: BTreeMap<String, String>,
    /// A hash over every node's name, labels and revocation.
    pub nodes_fingerprint: String,
    pub n_nodes: u32,
    /// Per (unrevoked) node, a short hash of its labels, so a refusal can name the nodes
    /// that were enrolled, revoked or relabelled since.
    #[serde(default)]
    pub node_labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChangeKind {
    Added,
    Changed,
    Removed,
}

impl ChangeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Added => "added",
            Self::Changed => "changed",
            Self::Removed => "removed",
        }
    }
}

/// One field of a workload that differs, by its path in the manifest (`env.MODE`, `args`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldChange {
    pub path: String,
    #[serde(default)]
    pub from: Option<String>,
    #[serde(default)]
    pub to: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkloadChange {
    pub workload: String,
    pub kind: ChangeKind,
    /// The deployment the workload comes from before the change (`removed`, `changed`).
    #[serde(default)]
    pub from_deployment: Option<String>,
    /// The deployment it comes from after the change (`added`, `changed`).
    #[serde(default)]
    pub to_deployment: Option<String>,
    /// Field-level differences of a `changed` workload.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<FieldChange>,
}

/// Nodes that get exactly the same changes, shown once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeGroup {
    /// Sorted.
    pub nodes: Vec<String>,
    pub changes: Vec<WorkloadChange>,
}

/// Why a node that the change touches will not be updated right away.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Blocker {
    /// Not heard from recently; it converges when it returns.
    Offline {
        #[serde(default, with = "time::serde::rfc3339::option")]
        since: Option<Timestamp>,
    },
    /// Outside every maintenance window that selects it.
    OutsideWindow {
        windows: Vec<String>,
        #[serde(default, with = "time::serde::rfc3339::option")]
        next_open: Option<Timestamp>,
    },
    /// A workload holds its update lock.
    Locked { lock: UpdateLock },
}

impl Blocker {
    /// One line for a person.
    pub fn describe(&self) -> String {
        let at = |t: &Option<Timestamp>| {
            t.and_then(|t| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
        };
        match self {
            Self::Offline { since } => match at(since) {
                Some(since) => format!("offline since {since}; converges when it returns"),
                None => "never connected; converges when it connects".to_owned(),
            },
            Self::OutsideWindow { windows, next_open } => {
                let next = at(next_open)
                    .map(|t| format!(", next opens {t}"))
                    .unwrap_or_default();
                format!("outside maintenance window {}{next}", windows.join(", "))
            }
            Self::Locked { lock } => format!(
                "workload {} holds its update lock{}",
                lock.workload,
                if lock.reason.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", lock.reason)
                }
            ),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockedNode {
    pub node: String,
    pub blockers: Vec<Blocker>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedStep {
    pub number: u32,
    /// `canary` or `batch`.
    pub kind: String,
    #[serde(default)]
    pub partition: Option<String>,
    pub nodes: u32,
}

/// A workload a deployment defines that another deployment's workload of the same name
/// wins on some nodes (by priority, or by name on a tie: then it is also a conflict).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shadowing {
    pub workload: String,
    pub deployment: String,
    pub by: String,
    /// Same priority: decided by name, which is almost never what anyone meant.
    pub conflict: bool,
    pub nodes: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedDeployment {
    pub name: String,
    pub action: ApplyAction,
    #[serde(default)]
    pub from_revision: Option<String>,
    pub to_revision: String,
    /// Nodes the deployment selects after the change.
    pub selected_nodes: u32,
    /// Nodes whose workloads this deployment's change alters.
    pub changed_nodes: u32,
    /// The rollout steps the change will go through (empty when nothing changes).
    pub steps: Vec<PlannedStep>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedWindow {
    pub name: String,
    pub action: ApplyAction,
    pub selected_nodes: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    #[serde(with = "time::serde::rfc3339")]
    pub computed_at: Timestamp,
    pub basis: PlanBasis,
    /// The documents the plan is about; `apply --plan` applies exactly these.
    pub request: PlanRequest,
    pub deployments: Vec<PlannedDeployment>,
    #[serde(default)]
    pub windows: Vec<PlannedWindow>,
    /// Every node whose desired workloads will change, sorted.
    pub changed_nodes: Vec<String>,
    /// The changed nodes, grouped by identical changes, largest group first.
    pub groups: Vec<ChangeGroup>,
    /// Nodes the change does not touch, sorted.
    pub unaffected_nodes: Vec<String>,
    /// Changed nodes that will not be updated right away, and why.
    pub blocked: Vec<BlockedNode>,
    /// Shadowing after the change, over the nodes it selects.
    pub shadowing: Vec<Shadowing>,
}

/// `GET /v1/explain/nodes/{node}?deployment=D`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Explanation {
    pub node: String,
    pub node_status: NodeStatus,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub last_seen: Option<Timestamp>,
    pub labels: crate::Labels,
    /// Maintenance windows selecting the node; empty: it may be updated at any time.
    pub windows: Vec<String>,
    /// Whether the node is inside one of its windows now (true when it has none).
    pub window_open: bool,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub next_window_open: Option<Timestamp>,
    pub locks: Vec<UpdateLock>,
    pub deployments: Vec<DeploymentExplanation>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentExplanation {
    pub deployment: String,
    pub selects: bool,
    /// The selector as written, and for a node it does not select, each failing term with
    /// the node's actual value.
    pub selector: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failing_terms: Vec<String>,
    /// Workloads of this deployment that another deployment wins on this node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shadowed: Vec<Shadowing>,
    /// Workloads of other deployments this deployment wins on this node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shadows: Vec<Shadowing>,
    /// The deployment's newest revision.
    pub latest_revision: String,
    /// The revision the node should run now (none: nothing of this deployment).
    #[serde(default)]
    pub desired_revision: Option<String>,
    /// The revision the node reports running (none: nothing of this deployment).
    #[serde(default)]
    pub applied_revision: Option<String>,
    #[serde(default)]
    pub rollout: Option<NodeRolloutPosition>,
    /// Everything holding the node back, one line each.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub blocked: Vec<String>,
    /// The answer in one sentence.
    pub summary: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRolloutPosition {
    pub number: u32,
    pub phase: RolloutPhase,
    pub paused: bool,
    /// 1-based step of the node, and how many steps there are.
    pub step: u32,
    pub n_steps: u32,
    pub current_step: u32,
    pub state: RolloutNodeState,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub waiting_for: Option<String>,
}
