//! The controllers: desired state and rollouts.
//!
//! Every node's stored desired state is the layered merge (`edgefleet_core::merge`) of the
//! deployments, each at the revision its newest rollout assigns the node
//! (`edgefleet_core::rollout`). An apply that changes a deployment starts a rollout; the
//! rollout loop steps every unfinished rollout with observations of the nodes, persists
//! it, and recomputes desired states when it released nodes or rolled back.
//!
//! Applies, rollout steps, operator commands and recomputes are serialised by one lock
//! around the in-memory rollouts, so no two changes interleave. The rollout is persisted
//! before the desired states derived from it: after a crash between the two, the startup
//! recompute derives them again, and no node ever holds a revision its rollout did not
//! assign. Each node has a `watch` channel whose value is only a wake-up counter: a waiter
//! re-reads the store, which stays the source of truth.

mod desired;
mod observe;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use edgefleet_core::rollout::{Command, CommandError, Rollout, RolloutSpec, RolloutTarget};
use edgefleet_core::selector;
use edgefleet_core::window::CompiledWindow;
use edgefleet_wire::Timestamp;
use edgefleet_wire::api::ApplyAction;
use edgefleet_wire::plan::PlanBasis;
use edgefleet_wire::rollout::RolloutPhase;
use tokio::sync::{Notify, watch};

pub use desired::{Fleet, Recomputed, RevisionSpecs, deployment_refs, desired_updates};
pub use observe::{RolloutView, Windows, observe, window_gate};

use edgefleet_core::hash::workload_hash;

use crate::store::{
    AppliedDeployment, ApplyItem, DeploymentRecord, NewAudit, NodeRecord, Store, StoreError,
    StoreResult, WindowRecord,
};

/// The rollout loop steps at least this often while a rollout is unfinished (bake times,
/// progress deadlines and nodes going NotReady need time to pass, not events).
pub const ROLLOUT_TICK: Duration = Duration::from_secs(1);

/// How often a succeeded rollout that still waits for deferred nodes is stepped.
pub const TAIL_INTERVAL: Duration = Duration::from_secs(5);

pub struct Controller {
    store: Arc<dyn Store>,
    not_ready_after: Duration,
    state: tokio::sync::Mutex<ControllerState>,
    wakeups: Mutex<HashMap<String, watch::Sender<u64>>>,
    /// A recompute failed after a change was committed; `resync_if_dirty` retries it.
    dirty: AtomicBool,
    /// Something a rollout watches changed (a status report); step soon.
    poke: Notify,
    /// When rollouts that only wait for deferred nodes were last stepped.
    last_tail_pass: Mutex<Option<std::time::Instant>>,
}

#[derive(Default)]
struct ControllerState {
    /// The newest rollout of each deployment.
    rollouts: BTreeMap<String, Rollout>,
    specs: RevisionSpecs,
}

/// What an apply did.
#[derive(Debug, Clone, Default)]
pub struct Applied {
    pub deployments: Vec<AppliedDeployment>,
    pub windows: Vec<(String, ApplyAction)>,
    pub recomputed: Recomputed,
}

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// `apply --plan` with a plan computed against another fleet or other deployments.
    #[error("the fleet or the deployments changed since the plan was computed")]
    StalePlan(Vec<String>),
}

#[derive(Debug, thiserror::Error)]
pub enum RolloutCommandError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("deployment {0:?} has no rollout")]
    NoRollout(String),
    #[error(transparent)]
    Refused(#[from] CommandError),
}

impl Controller {
    pub fn new(store: Arc<dyn Store>, not_ready_after: Duration) -> Self {
        Self {
            store,
            not_ready_after,
            state: tokio::sync::Mutex::new(ControllerState::default()),
            wakeups: Mutex::new(HashMap::new()),
            dirty: AtomicBool::new(false),
            poke: Notify::new(),
            last_tail_pass: Mutex::new(None),
        }
    }

    /// Loads the rollouts and reconciles: a deployment whose newest revision has no
    /// rollout (the server stopped between storing an apply and its rollout) gets one now,
    /// then every desired state is recomputed. Startup is a reconcile like any other.
    pub async fn load(&self, now: Timestamp) -> StoreResult<()> {
        let mut state = self.state.lock().await;
        state.rollouts = self
            .store
            .latest_rollouts()
            .await?
            .into_iter()
            .map(|r| (r.deployment.clone(), r))
            .collect();
        let deployments = self.store.list_deployments().await?;
        let nodes = self.store.list_nodes().await?;
        let mut to_save = Vec::new();
        for deployment in &deployments {
            let has_rollout = state.rollouts.get(&deployment.name).map(|r| &r.to_revision);
            let needs_rollout = match has_rollout {
                Some(revision) => *revision != deployment.revision,
                // A deployment from before rollouts existed runs its newest revision
                // everywhere already; only a brand-new one must roll out.
                None => deployment.revision_count == 1,
            };
            if needs_rollout {
                tracing::info!(deployment = %deployment.name, "starting the rollout an interrupted apply left out");
                to_save.extend(
                    self.start_rollout(&mut state, deployment, &nodes, now)
                        .await?,
                );
            }
        }
        self.store.save_rollouts(to_save).await?;
        self.recompute_locked(&mut state).await?;
        Ok(())
    }

    /// A receiver that changes whenever something about the node changes. Subscribe
    /// before reading the store so that no change can fall between the read and the wait.
    pub fn subscribe(&self, node: &str) -> watch::Receiver<u64> {
        self.wakeup_map()
            .entry(node.to_owned())
            .or_insert_with(|| watch::Sender::new(0))
            .subscribe()
    }

    /// Wakes every waiter of the node.
    pub fn notify(&self, node: &str) {
        if let Some(sender) = self.wakeup_map().get(node) {
            sender.send_modify(|counter| *counter = counter.wrapping_add(1));
        }
    }

    /// Forgets the wake-up channel of a node nobody waits on any more.
    pub fn forget_idle(&self, node: &str) {
        let mut map = self.wakeup_map();
        if map.get(node).is_some_and(|s| s.receiver_count() == 0) {
            map.remove(node);
        }
    }

    fn wakeup_map(&self) -> MutexGuard<'_, HashMap<String, watch::Sender<u64>>> {
        // Only wake-up channels live here; a poisoned map is still a valid map.
        self.wakeups.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Something rollouts watch changed (a node reported); the rollout loop steps soon.
    pub fn poke(&self) {
        self.poke.notify_one();
    }

    /// Waits for a poke.
    pub async fn poked(&self) {
        self.poke.notified().await;
    }

    /// Recomputes the desired state of every node, stores what changed, and wakes the
    /// nodes whose generation moved.
    pub async fn recompute(&self) -> StoreResult<Recomputed> {
        let mut state = self.state.lock().await;
        self.recompute_locked(&mut state).await
    }

    /// Retries a failed recompute; called periodically by the server.
    pub async fn resync_if_dirty(&self) {
        if self.dirty.swap(false, Ordering::Relaxed) {
            match self.recompute().await {
                Ok(_) => tracing::info!("recomputed desired state after an earlier failure"),
                Err(error) => tracing::warn!(%error, "recomputing desired state failed again"),
            }
        }
    }

    async fn recompute_locked(&self, state: &mut ControllerState) -> StoreResult<Recomputed> {
        let result = self.recompute_inner(state).await;
        if result.is_err() {
            self.dirty.store(true, Ordering::Relaxed);
        }
        result
    }

    async fn recompute_inner(&self, state: &mut ControllerState) -> StoreResult<Recomputed> {
        let nodes = self.store.list_nodes().await?;
        self.recompute_for(state, &nodes).await
    }

    /// Recomputes the desired state of one node (just enrolled or relabelled): nothing
    /// else depends on it, so a big fleet does not pay for every enrollment.
    pub async fn recompute_node(&self, name: &str) -> StoreResult<()> {
        let mut state = self.state.lock().await;
        let nodes: Vec<NodeRecord> = self.store.get_node(name).await?.into_iter().collect();
        if let Err(error) = self.recompute_for(&mut state, &nodes).await {
            self.dirty.store(true, Ordering::Relaxed);
            return Err(error);
        }
        Ok(())
    }

    /// Recomputes and stores the desired states of `nodes` (current records) only. The
    /// `selected` counts of the result cover only these nodes.
    async fn recompute_for(
        &self,
        state: &mut ControllerState,
        nodes: &[NodeRecord],
    ) -> StoreResult<Recomputed> {
        let deployments = self.store.list_deployments().await?;
        self.load_specs(state).await?;
        let fleet = Fleet {
            deployments: &deployments,
            rollouts: &state.rollouts,
            specs: &state.specs,
        };
        let (updates, recomputed) = desired_updates(nodes, &fleet);
        let n_updates = updates.len();
        self.store.set_desired_states(updates).await?;
        for (node, generation) in &recomputed.changed {
            tracing::debug!(node = %node, generation, "desired state changed");
            self.notify(node);
        }
        if !recomputed.changed.is_empty() {
            tracing::info!(
                n_nodes_changed = recomputed.changed.len(),
                n_nodes_updated = n_updates,
                "recomputed desired state"
            );
        }
        Ok(recomputed)
    }

    /// Makes sure the spec of every revision a rollout may assign is in memory.
    async fn load_specs(&self, state: &mut ControllerState) -> StoreResult<()> {
        let mut missing = Vec::new();
        for rollout in state.rollouts.values() {
            let wanted = rollout
                .from_revision
                .iter()
                .chain(rollout.held.values())
                .chain(std::iter::once(&rollout.to_revision));
            for hash in wanted {
                if !state
                    .specs
                    .contains_key(&(rollout.deployment.clone(), hash.clone()))
                {
                    missing.push(rollout.deployment.clone());
                    break;
                }
            }
        }
        for deployment in missing {
            self.load_revisions(state, &deployment).await?;
        }
        Ok(())
    }

    async fn load_revisions(
        &self,
        state: &mut ControllerState,
        deployment: &str,
    ) -> StoreResult<()> {
        for revision in self.store.list_revisions(deployment).await? {
            state.specs.insert(
                (deployment.to_owned(), revision.revision),
                revision.manifest.spec,
            );
        }
        Ok(())
    }

    /// Starts a rollout of the deployment's newest revision; returns the rollouts to save
    /// (the new one and the one it supersedes).
    async fn start_rollout(
        &self,
        state: &mut ControllerState,
        deployment: &DeploymentRecord,
        nodes: &[NodeRecord],
        now: Timestamp,
    ) -> StoreResult<Vec<Rollout>> {
        self.load_revisions(state, &deployment.name).await?;
        let mut to_save = Vec::new();
        let (number, from, held) = match state.rollouts.get_mut(&deployment.name) {
            Some(previous) => {
                let held = previous.current_revisions();
                let from = previous.stable_revision();
                previous.supersede(now);
                to_save.push(previous.clone());
                (previous.number.saturating_add(1), from, held)
            }
            None => {
                // Rolled out before rollouts existed: everyone runs the revision before.
                let revisions = self.store.list_revisions(&deployment.name).await?;
                let from = revisions
                    .iter()
                    .find(|r| r.number + 1 == deployment.revision_count)
                    .map(|r| (r.revision.clone(), r.number));
                (1, from, BTreeMap::new())
            }
        };
        let new_spec = &deployment.manifest.spec;
        let from_spec = from
            .as_ref()
            .and_then(|(hash, _)| state.specs.get(&(deployment.name.clone(), hash.clone())));
        let partition_by = new_spec.rollout.partition_by.as_deref();
        let targets: Vec<RolloutTarget> = nodes
            .iter()
            .filter(|node| !node.revoked)
            .filter(|node| {
                selector::matches(&new_spec.selector, &node.labels)
                    || from_spec.is_some_and(|spec| selector::matches(&spec.selector, &node.labels))
                    || node
                        .desired_workloads
                        .iter()
                        .any(|w| w.deployment == deployment.name)
            })
            .map(|node| RolloutTarget {
                node: node.name.clone(),
                partition: partition_by.and_then(|key| node.labels.get(key).cloned()),
            })
            .collect();
        let rollout = Rollout::new(
            RolloutSpec {
                deployment: deployment.name.clone(),
                number,
                from_revision: from,
                to_revision: (deployment.revision.clone(), deployment.revision_count),
                strategy: new_spec.rollout.clone(),
            },
            &targets,
            held,
            now,
        );
        tracing::info!(
            deployment = %deployment.name,
            rollout = number,
            n_nodes = targets.len(),
            n_steps = rollout.steps.len(),
            "rollout started"
        );
        to_save.push(rollout.clone());
        state.rollouts.insert(deployment.name.clone(), rollout);
        Ok(to_save)
    }

    /// Stores deployments and windows, starts a rollout for each changed deployment, and
    /// recomputes. With `basis`, refuses when the fleet is no longer what it describes.
    pub async fn apply(
        &self,
        items: Vec<ApplyItem>,
        windows: Vec<WindowRecord>,
        basis: Option<&PlanBasis>,
        actor: &str,
        now: Timestamp,
    ) -> Result<Applied, ApplyError> {
        let mut state = self.state.lock().await;
        if let Some(basis) = basis {
            let current = self.basis().await?;
            let differences = crate::planner::basis_differences(basis, &current);
            if !differences.is_empty() {
                return Err(ApplyError::StalePlan(differences));
            }
        }
        let deployments_applied = self.store.apply_deployments(items, actor, now).await?;
        let windows_applied = if windows.is_empty() {
            Vec::new()
        } else {
            self.store.apply_windows(windows, actor, now).await?
        };
        let changed: Vec<&str> = deployments_applied
            .iter()
            .filter(|a| a.action != ApplyAction::Unchanged)
            .map(|a| a.name.as_str())
            .collect();
        if !changed.is_empty() {
            let deployments = self.store.list_deployments().await?;
            let nodes = self.store.list_nodes().await?;
            let mut to_save = Vec::new();
            for deployment in deployments
                .iter()
                .filter(|d| changed.contains(&d.name.as_str()))
            {
                to_save.extend(
                    self.start_rollout(&mut state, deployment, &nodes, now)
                        .await?,
                );
            }
            self.store.save_rollouts(to_save).await?;
        }
        let recomputed = self.recompute_locked(&mut state).await?;
        drop(state);
        // Release the first step now rather than at the next tick.
        self.poke();
        Ok(Applied {
            deployments: deployments_applied,
            windows: windows_applied,
            recomputed,
        })
    }

    /// Deletes a deployment with its rollouts; its workloads leave every node at once.
    pub async fn delete_deployment(&self, name: &str, audit: NewAudit) -> StoreResult<bool> {
        let mut state = self.state.lock().await;
        if !self.store.delete_deployment(name, audit).await? {
            return Ok(false);
        }
        state.rollouts.remove(name);
        state.specs.retain(|(deployment, _), _| deployment != name);
        if let Err(error) = self.recompute_locked(&mut state).await {
            tracing::error!(%error, "recomputing desired state failed; retrying in the background");
        }
        Ok(true)
    }

    /// What a plan is computed against now.
    pub async fn basis(&self) -> StoreResult<PlanBasis> {
        let deployments = self.store.list_deployments().await?;
        let windows = self.store.list_windows().await?;
        let nodes = self.store.list_nodes().await?;
        Ok(crate::planner::basis(&deployments, &windows, &nodes))
    }

    /// The newest rollout of a deployment.
    pub async fn rollout(&self, deployment: &str) -> Option<Rollout> {
        self.state.lock().await.rollouts.get(deployment).cloned()
    }

    /// The newest rollout of every deployment, with the specs of every revision they may
    /// assign: what plan and explain need to merge like a recompute does.
    pub async fn snapshot(&self) -> StoreResult<(BTreeMap<String, Rollout>, RevisionSpecs)> {
        let mut state = self.state.lock().await;
        self.load_specs(&mut state).await?;
        Ok((state.rollouts.clone(), state.specs.clone()))
    }

    /// Pause, resume, promote or abort the newest rollout of a deployment.
    pub async fn command(
        &self,
        deployment: &str,
        command: Command,
        actor: &str,
        now: Timestamp,
    ) -> Result<Rollout, RolloutCommandError> {
        let mut state = self.state.lock().await;
        let rollout = state
            .rollouts
            .get_mut(deployment)
            .ok_or_else(|| RolloutCommandError::NoRollout(deployment.to_owned()))?;
        rollout.command(command, now)?;
        let rollout = rollout.clone();
        self.store.save_rollouts(vec![rollout.clone()]).await?;
        self.store
            .record_audit(NewAudit::new(
                now,
                actor,
                format!("rollout.{}", command.as_str()),
                format!("deployment/{deployment}"),
                format!(
                    "rollout {} (revision {})",
                    rollout.number, rollout.to_revision_number
                ),
            ))
            .await?;
        if rollout.phase == RolloutPhase::RolledBack {
            self.recompute_locked(&mut state).await?;
        }
        drop(state);
        self.poke();
        Ok(rollout)
    }

    /// Steps every unfinished rollout once; called by the rollout loop.
    pub async fn step_rollouts(&self, now: Timestamp) -> StoreResult<()> {
        let mut state = self.state.lock().await;
        if state.rollouts.values().all(Rollout::is_complete) {
            return Ok(());
        }
        // Rollouts that succeeded and only wait for deferred nodes (offline, windows,
        // locks) are looked at less often: on a big fleet a pass reads every node.
        let only_tails = state
            .rollouts
            .values()
            .filter(|r| !r.is_complete())
            .all(|r| r.phase == RolloutPhase::Succeeded);
        {
            let mut last = self
                .last_tail_pass
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if only_tails && last.is_some_and(|at| at.elapsed() < TAIL_INTERVAL) {
                return Ok(());
            }
            *last = only_tails.then(std::time::Instant::now);
        }
        let nodes = self.store.list_nodes().await?;
        let windows = self.compiled_windows().await?;
        let by_name: HashMap<&str, &NodeRecord> =
            nodes.iter().map(|n| (n.name.as_str(), n)).collect();
        let mut to_save = Vec::new();
        let mut audits = Vec::new();
        let mut reassigned: HashSet<String> = HashSet::new();
        let mut recompute_all = false;
        let ControllerState { rollouts, specs } = &mut *state;
        for rollout in rollouts.values_mut().filter(|r| !r.is_complete()) {
            let phase_before = rollout.phase;
            let deployment = rollout.deployment.clone();
            let to_revision = rollout.to_revision.clone();
            let previous_specs: HashSet<String> = rollout
                .from_revision
                .iter()
                .chain(rollout.held.values())
                .filter_map(|hash| specs.get(&(deployment.clone(), hash.clone())))
                .flat_map(|spec| spec.workloads.iter().map(workload_hash))
                .collect();
            let view = RolloutView {
                deployment: &deployment,
                to_revision: &to_revision,
                previous_specs: &previous_specs,
            };
            let observe_node = |name: &str| {
                by_name
                    .get(name)
                    .and_then(|node| observe(node, &view, &windows, now, self.not_ready_after))
            };
            let outcome = rollout.step(now, &observe_node);
            if outcome.changed {
                to_save.push(rollout.clone());
            }
            reassigned.extend(outcome.reassigned);
            if rollout.phase != phase_before && !rollout.phase.is_active() {
                // Nodes outside the rollout (enrolled since it started) switch revision
                // when it succeeds: every node may change.
                recompute_all = true;
                audits.push(finished_audit(rollout, now));
            }
        }
        if !to_save.is_empty() {
            self.store.save_rollouts(to_save).await?;
        }
        for audit in audits {
            tracing::info!(object = %audit.object, detail = %audit.detail, "rollout finished");
            self.store.record_audit(audit).await?;
        }
        if recompute_all {
            self.recompute_locked(&mut state).await?;
        } else if !reassigned.is_empty() {
            let affected: Vec<NodeRecord> = nodes
                .into_iter()
                .filter(|n| reassigned.contains(&n.name))
                .collect();
            if let Err(error) = self.recompute_for(&mut state, &affected).await {
                self.dirty.store(true, Ordering::Relaxed);
                return Err(error);
            }
        }
        Ok(())
    }

    async fn compiled_windows(&self) -> StoreResult<Windows> {
        Ok(compile_windows(&self.store.list_windows().await?))
    }
}

/// Compiles stored windows; one that no longer compiles (validated at apply, so only after
/// a downgrade of the time zone database) is left out with a warning.
pub fn compile_windows(records: &[WindowRecord]) -> Windows {
    records
        .iter()
        .filter_map(|record| match CompiledWindow::new(&record.manifest.spec) {
            Ok(window) => Some((record.manifest.metadata.name.clone(), window)),
            Err(error) => {
                tracing::warn!(window = %record.manifest.metadata.name, %error, "maintenance window ignored");
                None
            }
        })
        .collect()
}

fn finished_audit(rollout: &Rollout, now: Timestamp) -> NewAudit {
    let detail = match rollout.phase {
        RolloutPhase::Succeeded => format!(
            "rollout {} of revision {} succeeded",
            rollout.number, rollout.to_revision_number
        ),
        phase => format!(
            "rollout {} of revision {} {}: {}",
            rollout.number,
            rollout.to_revision_number,
            phase.as_str(),
            rollout.abort_reason.as_deref().unwrap_or("")
        ),
    };
    NewAudit::new(
        now,
        "server",
        "rollout",
        format!("deployment/{}", rollout.deployment),
        detail,
    )
}

#[cfg(test)]
mod tests;
