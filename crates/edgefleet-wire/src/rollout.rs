//! Rollouts as the API shows them: `GET /v1/deployments/{name}/rollout` and friends.

use serde::{Deserialize, Serialize};

use crate::Timestamp;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RolloutPhase {
    /// Releasing the current step's nodes and waiting for them to be healthy.
    Progressing,
    /// The current step is healthy; waiting out its bake time.
    Baking,
    /// The canary is healthy; waiting for `edgefleet rollout promote`.
    AwaitingPromotion,
    /// Every step passed. Nodes held back by a window, a lock or being offline are
    /// still updated when they can be.
    Succeeded,
    /// Stopped by a failed gate or an operator; updated nodes stay where they are.
    Aborted,
    /// Stopped, and every updated node put back on the previous revision.
    RolledBack,
    /// A newer revision was applied before this rollout finished.
    Superseded,
}

impl RolloutPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Progressing => "progressing",
            Self::Baking => "baking",
            Self::AwaitingPromotion => "awaiting-promotion",
            Self::Succeeded => "succeeded",
            Self::Aborted => "aborted",
            Self::RolledBack => "rolled-back",
            Self::Superseded => "superseded",
        }
    }

    /// Whether the rollout can still move on its own or by `promote`/`resume`.
    pub fn is_active(self) -> bool {
        matches!(
            self,
            Self::Progressing | Self::Baking | Self::AwaitingPromotion
        )
    }
}

/// Where one node is in a rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RolloutNodeState {
    /// Its step has not started.
    Waiting,
    /// Its step started but it is held back (window closed, update lock, max unavailable).
    Blocked,
    /// Released and offline: it takes the update when it comes back.
    Offline,
    /// Released; has not taken the update or is not healthy yet.
    Updating,
    Healthy,
    Failed,
    /// Put back on the previous revision.
    RolledBack,
}

impl RolloutNodeState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Waiting => "waiting",
            Self::Blocked => "blocked",
            Self::Offline => "offline",
            Self::Updating => "updating",
            Self::Healthy => "healthy",
            Self::Failed => "failed",
            Self::RolledBack => "rolled-back",
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutCounts {
    pub nodes: u32,
    pub waiting: u32,
    pub blocked: u32,
    pub offline: u32,
    pub updating: u32,
    pub healthy: u32,
    pub failed: u32,
    pub rolled_back: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutStepStatus {
    /// 1-based, as shown to people.
    pub number: u32,
    /// `canary` or `batch`.
    pub kind: String,
    /// The partition (label value) this step covers, when partitioned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition: Option<String>,
    /// `pending`, `active`, `baking`, `passed`.
    pub state: String,
    pub counts: RolloutCounts,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutNodeStatus {
    pub node: String,
    /// 1-based step number.
    pub step: u32,
    pub state: RolloutNodeState,
    /// Why it is in that state, for a person (`window closed until ...`, `crash-looping`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutStatus {
    pub deployment: String,
    /// Rollouts of a deployment are numbered from 1.
    pub number: u32,
    /// The revision the fleet ran before (none for a new deployment).
    #[serde(default)]
    pub from_revision: Option<String>,
    #[serde(default)]
    pub from_revision_number: Option<u32>,
    pub to_revision: String,
    pub to_revision_number: u32,
    pub phase: RolloutPhase,
    pub paused: bool,
    /// What the rollout waits for right now, for a person; none when it is finished.
    #[serde(default)]
    pub waiting_for: Option<String>,
    /// Why it was aborted, when it was.
    #[serde(default)]
    pub abort_reason: Option<String>,
    /// 1-based; 0 before the first step starts.
    pub current_step: u32,
    pub steps: Vec<RolloutStepStatus>,
    pub counts: RolloutCounts,
    /// Every node of the rollout; left out by `?nodes=false`.
    #[serde(default)]
    pub nodes: Vec<RolloutNodeStatus>,
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: Timestamp,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: Timestamp,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub finished_at: Option<Timestamp>,
}

/// `POST /v1/deployments/{name}/rollout/undo`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UndoRequest {
    /// The revision number to go back to; the one before the current revision when left out.
    #[serde(default)]
    pub to_revision: Option<u32>,
}
