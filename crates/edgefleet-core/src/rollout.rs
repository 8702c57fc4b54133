//! The rollout engine: how a new revision of a deployment reaches its nodes, step by step,
//! and stops itself when nodes break.
//!
//! A `Rollout` is a state machine the server persists as a whole. The shell calls
//! [`Rollout::step`] with the current time and an observation of each node (online, updated,
//! healthy, window, lock); the rollout releases nodes of the current step, checks the
//! health gates, bakes, advances, and aborts (rolling back) when too many nodes of a step
//! are unhealthy. [`Rollout::assignment`] says which revision each node must run; the
//! shell computes desired states from it and nothing else.
//!
//! **Invariants** (property-tested in `tests`):
//! - a node is assigned the new revision only once it is released, and it is released only
//!   when its step is the current step or an earlier one;
//! - after an abort with rollback, every node is assigned the revision it ran before;
//! - at release time, no more than `maxUnavailable` released nodes are still updating.
//!
//! Nodes that are offline, outside their maintenance window, or held by an update lock are
//! not released; the rollout does not wait for them (it waits only for the nodes it did
//! release), and releases them later when they can be updated, even after it succeeded.

use std::collections::BTreeMap;
use std::time::Duration;

use edgefleet_wire::Timestamp;
use edgefleet_wire::manifest::{Amount, RolloutStrategy};
use edgefleet_wire::node::UpdateLock;
use edgefleet_wire::rollout::{
    RolloutCounts, RolloutNodeState, RolloutNodeStatus, RolloutPhase, RolloutStatus,
    RolloutStepStatus,
};
use serde::{Deserialize, Serialize};

/// A node a rollout covers, with its partition (the value of `partitionBy`) if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolloutTarget {
    pub node: String,
    pub partition: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StepKind {
    Canary,
    Batch,
}

impl StepKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Canary => "canary",
            Self::Batch => "batch",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    pub kind: StepKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition: Option<String>,
    /// Sorted by name.
    pub nodes: Vec<String>,
}

/// Orders the targets into steps: partitions one after the other (in `partitionOrder`,
/// then alphabetically, then nodes without the label), a canary taken from the first
/// partition, then batches that never span two partitions. Nodes are in name order within
/// a partition, so the same fleet always gives the same steps.
pub fn plan_steps(strategy: &RolloutStrategy, targets: &[RolloutTarget]) -> Vec<Step> {
    let total = targets.len();
    if total == 0 {
        return Vec::new();
    }
    let mut partitions: BTreeMap<Option<&str>, Vec<&str>> = BTreeMap::new();
    for target in targets {
        let key = if strategy.partition_by.is_some() {
            target.partition.as_deref()
        } else {
            None
        };
        partitions.entry(key).or_default().push(&target.node);
    }
    let rank = |partition: Option<&str>| match partition {
        Some(value) => match strategy.partition_order.iter().position(|p| p == value) {
            Some(index) => (0, index, value.to_owned()),
            None => (1, 0, value.to_owned()),
        },
        None => (2, 0, String::new()),
    };
    let mut ordered: Vec<(Option<&str>, Vec<&str>)> = partitions.into_iter().collect();
    ordered.sort_by_cached_key(|(partition, _)| rank(*partition));

    let batch = strategy.batch_size.of(total).max(1);
    let mut steps = Vec::new();
    for (index, (partition, mut nodes)) in ordered.into_iter().enumerate() {
        nodes.sort_unstable();
        let partition = partition.map(str::to_owned);
        let mut rest: &[&str] = &nodes;
        if index == 0
            && let Some(canary) = &strategy.canary
        {
            let size = canary.size.of(total).clamp(1, rest.len());
            let (canary_nodes, after) = rest.split_at(size);
            steps.push(Step {
                kind: StepKind::Canary,
                partition: partition.clone(),
                nodes: canary_nodes.iter().map(|n| (*n).to_owned()).collect(),
            });
            rest = after;
        }
        for chunk in rest.chunks(batch) {
            steps.push(Step {
                kind: StepKind::Batch,
                partition: partition.clone(),
                nodes: chunk.iter().map(|n| (*n).to_owned()).collect(),
            });
        }
    }
    steps
}

/// How a node's workloads of this deployment are doing, once it runs the new revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    Healthy,
    /// Starting, or not reported yet.
    Progressing,
    Unhealthy(String),
}

/// Whether a maintenance window lets the node be updated now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WindowGate {
    Open,
    Closed {
        windows: Vec<String>,
        next_open: Option<Timestamp>,
    },
}

/// What the shell sees of one node at `now`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeObservation {
    /// Heartbeats arrive.
    pub online: bool,
    /// The node reports this deployment's workloads exactly as the new revision wants them.
    pub updated: bool,
    /// Meaningful when `updated`.
    pub health: Health,
    pub window: WindowGate,
    pub locks: Vec<UpdateLock>,
}

/// Which revision of the deployment a node must run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Assignment<'a> {
    /// Nothing of this deployment (a new deployment the rollout has not reached yet).
    Nothing,
    Revision {
        hash: &'a str,
        /// Assigned because the rollout was rolled back.
        rolled_back: bool,
    },
}

/// One node's progress, persisted with the rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeProgress {
    /// Index into `Rollout::steps`.
    pub step: usize,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub released_at: Option<Timestamp>,
    /// The node reported the new revision at least once since its release.
    #[serde(default)]
    pub took_update: bool,
    pub state: RolloutNodeState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Operator commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Pause,
    Resume,
    Promote,
    Abort,
}

impl Command {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pause => "pause",
            Self::Resume => "resume",
            Self::Promote => "promote",
            Self::Abort => "abort",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error("rollout {number} of {deployment} is {phase} and cannot be {action}d")]
    Finished {
        deployment: String,
        number: u32,
        phase: &'static str,
        action: &'static str,
    },
    #[error(
        "rollout {number} of {deployment} is not waiting for promotion (it is {phase}); promote applies after a healthy canary with manualPromotion, or skips a bake"
    )]
    NothingToPromote {
        deployment: String,
        number: u32,
        phase: &'static str,
    },
}

/// What a call to `step` changed, for the shell: persist when `changed`, recompute the
/// desired states of `reassigned` (the nodes whose assignment changed).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StepOutcome {
    pub changed: bool,
    pub reassigned: Vec<String>,
}

impl StepOutcome {
    pub fn assignments_changed(&self) -> bool {
        !self.reassigned.is_empty()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rollout {
    pub deployment: String,
    pub number: u32,
    #[serde(default)]
    pub from_revision: Option<String>,
    #[serde(default)]
    pub from_revision_number: Option<u32>,
    pub to_revision: String,
    pub to_revision_number: u32,
    pub strategy: RolloutStrategy,
    pub steps: Vec<Step>,
    pub nodes: BTreeMap<String, NodeProgress>,
    /// Nodes that, until released, stay on a revision other than `from_revision` (they
    /// were on it when this rollout started: updated by an unfinished earlier rollout).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub held: BTreeMap<String, String>,
    /// Index of the current step; `steps.len()` once every step passed.
    pub current_step: usize,
    pub phase: RolloutPhase,
    pub paused: bool,
    /// When the current step's gate last started to hold (the bake clock).
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub gate_held_since: Option<Timestamp>,
    #[serde(default)]
    pub promoted: bool,
    #[serde(default)]
    pub abort_reason: Option<String>,
    #[serde(default)]
    pub waiting_for: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: Timestamp,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: Timestamp,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub finished_at: Option<Timestamp>,
}

/// The identity of a rollout: which deployment moves from which revision to which.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolloutSpec {
    pub deployment: String,
    pub number: u32,
    pub from_revision: Option<(String, u32)>,
    pub to_revision: (String, u32),
    pub strategy: RolloutStrategy,
}

impl Rollout {
    pub fn new(
        spec: RolloutSpec,
        targets: &[RolloutTarget],
        held: BTreeMap<String, String>,
        now: Timestamp,
    ) -> Self {
        let steps = plan_steps(&spec.strategy, targets);
        let nodes = steps
            .iter()
            .enumerate()
            .flat_map(|(index, step)| {
                step.nodes.iter().map(move |node| {
                    (
                        node.clone(),
                        NodeProgress {
                            step: index,
                            released_at: None,
                            took_update: false,
                            state: RolloutNodeState::Waiting,
                            reason: None,
                        },
                    )
                })
            })
            .collect();
        let (from_revision, from_revision_number) = match spec.from_revision {
            Some((hash, number)) => (Some(hash), Some(number)),
            None => (None, None),
        };
        let held = held
            .into_iter()
            .filter(|(_, revision)| Some(revision) != from_revision.as_ref())
            .collect();
        Self {
            deployment: spec.deployment,
            number: spec.number,
            from_revision,
            from_revision_number,
            to_revision: spec.to_revision.0,
            to_revision_number: spec.to_revision.1,
            strategy: spec.strategy,
            steps,
            nodes,
            held,
            current_step: 0,
            phase: RolloutPhase::Progressing,
            paused: false,
            gate_held_since: None,
            promoted: false,
            abort_reason: None,
            waiting_for: None,
            started_at: now,
            updated_at: now,
            finished_at: None,
        }
    }

    /// The revision `node` must run now.
    pub fn assignment(&self, node: &str) -> Assignment<'_> {
        let before = |rolled_back| match self.held.get(node).or(self.from_revision.as_ref()) {
            Some(hash) => Assignment::Revision { hash, rolled_back },
            None => Assignment::Nothing,
        };
        let to = Assignment::Revision {
            hash: &self.to_revision,
            rolled_back: false,
        };
        match self.phase {
            RolloutPhase::RolledBack => before(true),
            _ => match self.nodes.get(node) {
                Some(progress) if progress.released_at.is_some() => to,
                Some(_) => before(false),
                // Not a target when the rollout started (enrolled or relabelled since):
                // the new revision once the rollout has succeeded, the old one until then.
                None if self.phase == RolloutPhase::Succeeded => to,
                None => before(false),
            },
        }
    }

    /// Whether there is nothing left to watch: stopped, or succeeded with every target
    /// released and known healthy or failed. A succeeded rollout with deferred nodes (or
    /// released nodes that have not reported the update yet) still needs steps.
    pub fn is_complete(&self) -> bool {
        match self.phase {
            RolloutPhase::Succeeded => self.nodes.values().all(|n| {
                n.released_at.is_some()
                    && matches!(
                        n.state,
                        RolloutNodeState::Healthy | RolloutNodeState::Failed
                    )
            }),
            RolloutPhase::Progressing | RolloutPhase::Baking | RolloutPhase::AwaitingPromotion => {
                false
            }
            _ => true,
        }
    }

    fn total(&self) -> usize {
        self.nodes.len()
    }

    fn max_unavailable(&self) -> usize {
        let total = self.total();
        self.strategy
            .max_unavailable
            .map(|amount| amount.of(total))
            .unwrap_or_else(|| self.strategy.batch_size.of(total))
            .max(1)
    }

    fn threshold_percent(&self) -> u32 {
        match self.strategy.failure_threshold {
            Amount::Percent(p) => p,
            // Validation refuses counts; treat one as "that many percent" rather than panic.
            Amount::Count(n) => n.min(100),
        }
    }

    /// A newer revision was applied: this rollout stops where it is.
    pub fn supersede(&mut self, now: Timestamp) {
        if !matches!(
            self.phase,
            RolloutPhase::RolledBack | RolloutPhase::Aborted | RolloutPhase::Superseded
        ) {
            if self.phase != RolloutPhase::Succeeded {
                self.phase = RolloutPhase::Superseded;
            }
            self.finished_at.get_or_insert(now);
            self.waiting_for = None;
            self.updated_at = now;
        }
    }

    /// The revision each node runs under this rollout, for the next rollout's `held` map.
    pub fn current_revisions(&self) -> BTreeMap<String, String> {
        self.nodes
            .keys()
            .filter_map(|node| match self.assignment(node) {
                Assignment::Revision { hash, .. } => Some((node.clone(), hash.to_owned())),
                Assignment::Nothing => None,
            })
            .collect()
    }

    /// The revision a new rollout starts from: what nodes that are not held run.
    pub fn stable_revision(&self) -> Option<(String, u32)> {
        match self.phase {
            RolloutPhase::Succeeded => Some((self.to_revision.clone(), self.to_revision_number)),
            _ => self.from_revision.clone().zip(self.from_revision_number),
        }
    }

    pub fn command(&mut self, command: Command, now: Timestamp) -> Result<(), CommandError> {
        let finished = |rollout: &Self| CommandError::Finished {
            deployment: rollout.deployment.clone(),
            number: rollout.number,
            phase: rollout.phase.as_str(),
            action: command.as_str(),
        };
        if !self.phase.is_active() {
            return Err(finished(self));
        }
        match command {
            Command::Pause => self.paused = true,
            Command::Resume => self.paused = false,
            Command::Promote => match self.phase {
                RolloutPhase::AwaitingPromotion => {
                    self.promoted = true;
                    self.advance(now);
                }
                RolloutPhase::Baking => self.advance(now),
                _ => {
                    return Err(CommandError::NothingToPromote {
                        deployment: self.deployment.clone(),
                        number: self.number,
                        phase: self.phase.as_str(),
                    });
                }
            },
            Command::Abort => self.abort(now, "aborted by an operator".to_owned(), true),
        }
        self.updated_at = now;
        Ok(())
    }

    fn abort(&mut self, now: Timestamp, reason: String, roll_back: bool) {
        self.phase = if roll_back {
            RolloutPhase::RolledBack
        } else {
            RolloutPhase::Aborted
        };
        if roll_back {
            for progress in self.nodes.values_mut() {
                if progress.released_at.is_some() {
                    progress.state = RolloutNodeState::RolledBack;
                }
            }
        }
        self.abort_reason = Some(reason);
        self.waiting_for = None;
        self.finished_at = Some(now);
        self.updated_at = now;
    }

    fn advance(&mut self, now: Timestamp) {
        self.current_step += 1;
        self.gate_held_since = None;
        self.promoted = false;
        if self.current_step >= self.steps.len() {
            self.current_step = self.steps.len();
            self.phase = RolloutPhase::Succeeded;
            self.finished_at = Some(now);
        } else {
            self.phase = RolloutPhase::Progressing;
        }
    }

    /// Advances the rollout as far as the observations allow at `now`.
    pub fn step(
        &mut self,
        now: Timestamp,
        observe: &dyn Fn(&str) -> Option<NodeObservation>,
    ) -> StepOutcome {
        let before = self.clone();
        let phase_before = self.phase;
        if self.phase.is_active() || self.phase == RolloutPhase::Succeeded {
            // Bounded: each pass either advances a step or stops.
            for _ in 0..=self.steps.len() {
                let step_before = self.current_step;
                self.pass(now, observe);
                if self.current_step == step_before || !self.phase.is_active() {
                    break;
                }
            }
        }
        let rolled_back_now = self.phase != phase_before && self.phase == RolloutPhase::RolledBack;
        let reassigned = self
            .nodes
            .iter()
            .filter(|(node, progress)| {
                let released = progress.released_at.is_some();
                let was_released = before
                    .nodes
                    .get(*node)
                    .is_some_and(|p| p.released_at.is_some());
                released && (rolled_back_now || !was_released)
            })
            .map(|(node, _)| node.clone())
            .collect();
        let changed = *self != before;
        if changed {
            self.updated_at = now;
        }
        StepOutcome {
            changed,
            reassigned,
        }
    }

    /// The last step index whose nodes may be released.
    fn last_open_step(&self) -> Option<usize> {
        if self.steps.is_empty() {
            return None;
        }
        Some(self.current_step.min(self.steps.len() - 1))
    }

    fn pass(&mut self, now: Timestamp, observe: &dyn Fn(&str) -> Option<NodeObservation>) {
        let Some(last_open) = self.last_open_step() else {
            if self.phase.is_active() {
                self.advance(now);
            }
            return;
        };
        let deadline = self.strategy.progress_deadline.as_duration();
        let observations: BTreeMap<String, Option<NodeObservation>> = self
            .nodes
            .iter()
            .filter(|(_, p)| p.step <= last_open)
            .map(|(node, _)| (node.clone(), observe(node)))
            .collect();

        // 1. Where every released node is.
        for (node, observation) in &observations {
            if let Some(progress) = self.nodes.get_mut(node)
                && let Some(released_at) = progress.released_at
            {
                evaluate_released(progress, observation.as_ref(), released_at, now, deadline);
            }
        }

        // 2. Too many failures in a step that started: stop.
        if self.phase.is_active()
            && let Some(reason) = self.failure_reason(last_open)
        {
            let roll_back = self.strategy.auto_rollback;
            self.abort(now, reason, roll_back);
            return;
        }

        // 3. Release what may be released.
        if !self.paused {
            self.release(now, last_open, &observations);
        }

        // 4. The current step's gate, bake and promotion.
        if self.phase.is_active() && !self.paused {
            self.check_gate(now);
        }
        self.describe_waiting();
    }

    fn failure_reason(&self, last_open: usize) -> Option<String> {
        let threshold = u64::from(self.threshold_percent());
        for (index, step) in self.steps.iter().enumerate().take(last_open + 1) {
            let failed: Vec<(&String, &NodeProgress)> = step
                .nodes
                .iter()
                .filter_map(|node| self.nodes.get(node).map(|p| (node, p)))
                .filter(|(_, p)| p.state == RolloutNodeState::Failed)
                .collect();
            let n = step.nodes.len() as u64;
            if (failed.len() as u64) * 100 > threshold * n {
                let examples: Vec<String> = failed
                    .iter()
                    .take(3)
                    .map(|(node, p)| {
                        format!("{node}: {}", p.reason.as_deref().unwrap_or("unhealthy"))
                    })
                    .collect();
                let more = failed.len().saturating_sub(examples.len());
                return Some(format!(
                    "step {} ({}): {} of {} nodes unhealthy, more than the failure threshold of {}%: {}{}",
                    index + 1,
                    step.kind.as_str(),
                    failed.len(),
                    n,
                    threshold,
                    examples.join("; "),
                    if more > 0 {
                        format!(" and {more} more")
                    } else {
                        String::new()
                    }
                ));
            }
        }
        None
    }

    fn release(
        &mut self,
        now: Timestamp,
        last_open: usize,
        observations: &BTreeMap<String, Option<NodeObservation>>,
    ) {
        let max_unavailable = self.max_unavailable();
        let max_deferral = self.strategy.max_lock_deferral.as_duration();
        let mut in_flight = self
            .nodes
            .values()
            .filter(|p| p.released_at.is_some() && p.state == RolloutNodeState::Updating)
            .count();
        // Earlier steps first, then by name: deferred nodes of old steps go before new ones.
        for step in self.steps.iter().take(last_open + 1) {
            for node in &step.nodes {
                let Some(progress) = self.nodes.get_mut(node) else {
                    continue;
                };
                if progress.released_at.is_some() {
                    continue;
                }
                let observation = observations.get(node).and_then(Option::as_ref);
                match release_gate(observation, now, max_deferral) {
                    Err((state, reason)) => {
                        progress.state = state;
                        progress.reason = Some(reason);
                    }
                    Ok(()) if in_flight >= max_unavailable => {
                        progress.state = RolloutNodeState::Blocked;
                        progress.reason = Some(format!(
                            "waiting for a slot: {in_flight} of at most {max_unavailable} nodes are updating"
                        ));
                    }
                    Ok(()) => {
                        progress.released_at = Some(now);
                        progress.took_update = false;
                        progress.state = RolloutNodeState::Updating;
                        progress.reason = None;
                        in_flight += 1;
                    }
                }
            }
        }
    }

    fn check_gate(&mut self, now: Timestamp) {
        let Some(step) = self.steps.get(self.current_step) else {
            self.advance(now);
            return;
        };
        let progress: Vec<&NodeProgress> = step
            .nodes
            .iter()
            .filter_map(|n| self.nodes.get(n))
            .collect();
        let updating = progress
            .iter()
            .filter(|p| p.released_at.is_some() && p.state == RolloutNodeState::Updating)
            .count();
        let healthy = progress
            .iter()
            .filter(|p| p.state == RolloutNodeState::Healthy)
            .count();
        let blocked_by_slots = progress.iter().any(|p| {
            p.released_at.is_none()
                && p.state == RolloutNodeState::Blocked
                && p.reason
                    .as_deref()
                    .is_some_and(|r| r.starts_with("waiting for a slot"))
        });
        // A canary must prove itself on at least one node; a batch whose nodes are all
        // deferred (offline, window, lock) does not hold the fleet back.
        let proven = step.kind != StepKind::Canary || healthy > 0;
        if updating > 0 || blocked_by_slots || !proven {
            self.gate_held_since = None;
            if self.phase == RolloutPhase::Baking {
                self.phase = RolloutPhase::Progressing;
            }
            return;
        }
        let since = *self.gate_held_since.get_or_insert(now);
        let bake = self.strategy.bake_time.as_duration();
        if elapsed(since, now) < bake {
            self.phase = RolloutPhase::Baking;
            return;
        }
        let manual = step.kind == StepKind::Canary
            && self
                .strategy
                .canary
                .as_ref()
                .is_some_and(|c| c.manual_promotion);
        if manual && !self.promoted {
            self.phase = RolloutPhase::AwaitingPromotion;
            return;
        }
        self.advance(now);
    }

    fn describe_waiting(&mut self) {
        self.waiting_for = match self.phase {
            RolloutPhase::AwaitingPromotion => Some(format!(
                "manual promotion of the canary: `edgefleet rollout promote {}`",
                self.deployment
            )),
            _ if self.paused && self.phase.is_active() => Some(format!(
                "paused: `edgefleet rollout resume {}`",
                self.deployment
            )),
            RolloutPhase::Baking => self.gate_held_since.map(|since| {
                format!(
                    "step {} to bake for {} (healthy since {})",
                    self.current_step + 1,
                    self.strategy.bake_time,
                    rfc3339(since)
                )
            }),
            RolloutPhase::Progressing => self.steps.get(self.current_step).map(|step| {
                let counts = self.counts_of(step.nodes.iter());
                let mut parts = Vec::new();
                if counts.updating > 0 {
                    parts.push(format!("{} nodes to become healthy", counts.updating));
                }
                if counts.blocked > 0 {
                    parts.push(format!("{} blocked nodes", counts.blocked));
                }
                if step.kind == StepKind::Canary && counts.healthy == 0 && counts.updating == 0 {
                    parts.push("a canary node that can be updated".to_owned());
                }
                if parts.is_empty() {
                    parts.push("the next step".to_owned());
                }
                format!(
                    "step {} of {} ({}): {}",
                    self.current_step + 1,
                    self.steps.len(),
                    step.kind.as_str(),
                    parts.join(", ")
                )
            }),
            RolloutPhase::Succeeded => {
                let deferred = self
                    .nodes
                    .values()
                    .filter(|p| p.released_at.is_none())
                    .count();
                (deferred > 0).then(|| {
                    format!("{deferred} deferred nodes (offline, outside their window or locked)")
                })
            }
            _ => None,
        };
    }

    fn counts_of<'a>(&self, nodes: impl Iterator<Item = &'a String>) -> RolloutCounts {
        let mut counts = RolloutCounts::default();
        for node in nodes {
            let Some(progress) = self.nodes.get(node) else {
                continue;
            };
            counts.nodes += 1;
            let slot = match progress.state {
                RolloutNodeState::Waiting => &mut counts.waiting,
                RolloutNodeState::Blocked => &mut counts.blocked,
                RolloutNodeState::Offline => &mut counts.offline,
                RolloutNodeState::Updating => &mut counts.updating,
                RolloutNodeState::Healthy => &mut counts.healthy,
                RolloutNodeState::Failed => &mut counts.failed,
                RolloutNodeState::RolledBack => &mut counts.rolled_back,
            };
            *slot += 1;
        }
        counts
    }

    /// Where one node stands, for explain.
    pub fn node_status(&self, node: &str) -> Option<RolloutNodeStatus> {
        self.nodes.get(node).map(|progress| RolloutNodeStatus {
            node: node.to_owned(),
            step: index_to_number(progress.step),
            state: progress.state,
            reason: progress.reason.clone(),
        })
    }

    pub fn status(&self, include_nodes: bool) -> RolloutStatus {
        let steps = self
            .steps
            .iter()
            .enumerate()
            .map(|(index, step)| RolloutStepStatus {
                number: index_to_number(index),
                kind: step.kind.as_str().to_owned(),
                partition: step.partition.clone(),
                state: match index.cmp(&self.current_step) {
                    std::cmp::Ordering::Less => "passed",
                    std::cmp::Ordering::Equal if self.phase == RolloutPhase::Baking => "baking",
                    std::cmp::Ordering::Equal if self.phase.is_active() => "active",
                    std::cmp::Ordering::Equal => "stopped",
                    std::cmp::Ordering::Greater => "pending",
                }
                .to_owned(),
                counts: self.counts_of(step.nodes.iter()),
            })
            .collect();
        let nodes = if include_nodes {
            self.nodes
                .keys()
                .filter_map(|node| self.node_status(node))
                .collect()
        } else {
            Vec::new()
        };
        RolloutStatus {
            deployment: self.deployment.clone(),
            number: self.number,
            from_revision: self.from_revision.clone(),
            from_revision_number: self.from_revision_number,
            to_revision: self.to_revision.clone(),
            to_revision_number: self.to_revision_number,
            phase: self.phase,
            paused: self.paused,
            waiting_for: self.waiting_for.clone(),
            abort_reason: self.abort_reason.clone(),
            current_step: if self.steps.is_empty() {
                0
            } else {
                index_to_number(self.current_step.min(self.steps.len() - 1))
            },
            steps,
            counts: self.counts_of(self.nodes.keys()),
            nodes,
            started_at: self.started_at,
            updated_at: self.updated_at,
            finished_at: self.finished_at,
        }
    }
}

fn index_to_number(index: usize) -> u32 {
    u32::try_from(index.saturating_add(1)).unwrap_or(u32::MAX)
}

fn elapsed(since: Timestamp, now: Timestamp) -> Duration {
    Duration::try_from(now - since).unwrap_or(Duration::ZERO)
}

fn rfc3339(at: Timestamp) -> String {
    at.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| at.to_string())
}

/// Whether a node that has not been released yet may be; if not, its state and why.
fn release_gate(
    observation: Option<&NodeObservation>,
    now: Timestamp,
    max_deferral: Duration,
) -> Result<(), (RolloutNodeState, String)> {
    let Some(observation) = observation else {
        return Err((
            RolloutNodeState::Offline,
            "no longer in the fleet (revoked or deleted)".to_owned(),
        ));
    };
    if !observation.online {
        return Err((
            RolloutNodeState::Offline,
            "offline; updated when it returns".to_owned(),
        ));
    }
    if let WindowGate::Closed { windows, next_open } = &observation.window {
        let next = next_open
            .map(|t| format!(", opens {}", rfc3339(t)))
            .unwrap_or_default();
        return Err((
            RolloutNodeState::Blocked,
            format!("outside maintenance window {}{next}", windows.join(", ")),
        ));
    }
    if let Some(lock) = observation
        .locks
        .iter()
        .find(|lock| elapsed(lock.since, now) < max_deferral)
    {
        let reason = if lock.reason.is_empty() {
            String::new()
        } else {
            format!(" ({})", lock.reason)
        };
        return Err((
            RolloutNodeState::Blocked,
            format!(
                "workload {} holds its update lock{reason} since {}",
                lock.workload,
                rfc3339(lock.since)
            ),
        ));
    }
    Ok(())
}

fn evaluate_released(
    progress: &mut NodeProgress,
    observation: Option<&NodeObservation>,
    released_at: Timestamp,
    now: Timestamp,
    deadline: Duration,
) {
    let (state, reason) = match observation {
        None => (
            RolloutNodeState::Offline,
            Some("no longer in the fleet (revoked or deleted)".to_owned()),
        ),
        Some(observation) => {
            if observation.updated && observation.online {
                progress.took_update = true;
            }
            match (observation.online, observation.updated, &observation.health) {
                (false, _, _) if progress.took_update => (
                    RolloutNodeState::Failed,
                    Some("went offline after taking the update".to_owned()),
                ),
                (false, _, _) => (
                    RolloutNodeState::Offline,
                    Some("offline; takes the update when it returns".to_owned()),
                ),
                (true, true, Health::Healthy) => (RolloutNodeState::Healthy, None),
                (true, true, Health::Unhealthy(why)) => {
                    (RolloutNodeState::Failed, Some(why.clone()))
                }
                (true, _, _) => (RolloutNodeState::Updating, None),
            }
        }
    };
    let (state, reason) =
        if state == RolloutNodeState::Updating && elapsed(released_at, now) > deadline {
            (
                RolloutNodeState::Failed,
                Some(format!(
                    "not healthy within the progress deadline ({}) after its release",
                    edgefleet_wire::DurationSpec(deadline)
                )),
            )
        } else {
            (state, reason)
        };
    progress.state = state;
    progress.reason = reason;
}

#[cfg(test)]
mod tests;
