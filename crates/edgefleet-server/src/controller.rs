//! The desired-state controller: keeps every node's stored desired state equal to the
//! layered merge (`edgefleet_core::merge`) of the current deployments, and wakes the
//! node's long poll when it changes.
//!
//! Recomputes are serialised by one lock, so two concurrent changes cannot both read
//! generation N and both write N + 1. Each node has a `watch` channel whose value is only
//! a wake-up counter: a waiter re-reads the store, which stays the source of truth.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use edgefleet_core::merge::{DeploymentRef, merge_for_node, same_workloads};
use tokio::sync::watch;

use crate::store::{DeploymentRecord, DesiredUpdate, NodeRecord, Store, StoreResult};

pub struct Controller {
    store: Arc<dyn Store>,
    recompute_lock: tokio::sync::Mutex<()>,
    wakeups: Mutex<HashMap<String, watch::Sender<u64>>>,
    /// A recompute failed after a change was committed; `resync_if_dirty` retries it.
    dirty: AtomicBool,
}

/// What a recompute found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recomputed {
    /// Per deployment, how many (unrevoked) nodes select it.
    pub selected: BTreeMap<String, u32>,
    /// Nodes whose generation changed, with the new generation.
    pub changed: Vec<(String, u64)>,
}

impl Controller {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self {
            store,
            recompute_lock: tokio::sync::Mutex::new(()),
            wakeups: Mutex::new(HashMap::new()),
            dirty: AtomicBool::new(false),
        }
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

    fn wakeup_map(&self) -> MutexGuard<'_, HashMap<String, watch::Sender<u64>>> {
        // Only wake-up channels live here; a poisoned map is still a valid map.
        self.wakeups.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Recomputes the desired state of every node, stores what changed, and wakes the
    /// nodes whose generation moved.
    pub async fn recompute(&self) -> StoreResult<Recomputed> {
        let result = self.recompute_serialised().await;
        if result.is_err() {
            self.dirty.store(true, Ordering::Relaxed);
        }
        result
    }

    /// Recompute after a change that is already committed: a failure must not fail the
    /// request (the change happened), so it is logged and retried in the background.
    pub async fn recompute_logged(&self) {
        if let Err(error) = self.recompute().await {
            tracing::error!(%error, "recomputing desired state failed; retrying in the background");
        }
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

    async fn recompute_serialised(&self) -> StoreResult<Recomputed> {
        let _serialised = self.recompute_lock.lock().await;
        let deployments = self.store.list_deployments().await?;
        let nodes = self.store.list_nodes().await?;
        let (updates, recomputed) = plan(&nodes, &deployments);
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
}

/// The pure part of a recompute: which nodes need a new desired state.
///
/// A node's generation moves only when its workload list changes; a change of conflicts
/// alone is stored without a new generation (the agent has nothing new to run).
pub fn plan(
    nodes: &[NodeRecord],
    deployments: &[DeploymentRecord],
) -> (Vec<DesiredUpdate>, Recomputed) {
    let refs = deployment_refs(deployments);
    let mut recomputed = Recomputed {
        selected: deployments.iter().map(|d| (d.name.clone(), 0)).collect(),
        changed: Vec::new(),
    };
    let mut updates = Vec::new();
    for node in nodes.iter().filter(|n| !n.revoked) {
        let merge = merge_for_node(&node.labels, &refs);
        for name in &merge.selected_by {
            *recomputed.selected.entry(name.clone()).or_default() += 1;
        }
        let workloads_changed = !same_workloads(&merge.workloads, &node.desired_workloads);
        if !workloads_changed && merge.conflicts == node.conflicts {
            continue;
        }
        let generation = if workloads_changed {
            node.desired_generation.saturating_add(1)
        } else {
            node.desired_generation
        };
        if workloads_changed {
            recomputed.changed.push((node.name.clone(), generation));
        }
        updates.push(DesiredUpdate {
            node: node.name.clone(),
            generation,
            workloads: merge.workloads,
            conflicts: merge.conflicts,
        });
    }
    (updates, recomputed)
}

pub fn deployment_refs(deployments: &[DeploymentRecord]) -> Vec<DeploymentRef<'_>> {
    deployments
        .iter()
        .map(|d| DeploymentRef {
            name: &d.name,
            revision: &d.revision,
            spec: &d.manifest.spec,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::CertRecord;
    use edgefleet_core::labels::parse_assignments;
    use edgefleet_wire::manifest::*;

    fn node(name: &str, labels: &str) -> NodeRecord {
        let now = time::OffsetDateTime::UNIX_EPOCH;
        NodeRecord {
            name: name.into(),
            labels: parse_assignments(labels).unwrap(),
            facts: Default::default(),
            enrolled_at: now,
            last_seen: None,
            revoked: false,
            cert: CertRecord {
                serial: "01".into(),
                not_after: now,
            },
            previous_cert_serial: None,
            applied_generation: 0,
            reported: None,
            desired_generation: 0,
            desired_workloads: vec![],
            conflicts: vec![],
        }
    }

    fn deployment(name: &str, selector: &str, priority: i32, command: &str) -> DeploymentRecord {
        let spec = DeploymentSpec {
            selector: edgefleet_core::selector::parse(selector).unwrap(),
            priority,
            workloads: vec![WorkloadSpec::process("app", command)],
            rollout: Default::default(),
        };
        DeploymentRecord {
            name: name.into(),
            revision: edgefleet_core::hash::revision_hash(&spec),
            revision_count: 1,
            manifest: DeploymentManifest::new(name, spec),
            updated_at: time::OffsetDateTime::UNIX_EPOCH,
        }
    }

    /// Applies a plan to the node records, as the store would.
    fn store(nodes: &mut [NodeRecord], updates: Vec<DesiredUpdate>) {
        for update in updates {
            let node = nodes.iter_mut().find(|n| n.name == update.node).unwrap();
            node.desired_generation = update.generation;
            node.desired_workloads = update.workloads;
            node.conflicts = update.conflicts;
        }
    }

    #[test]
    fn generation_moves_only_when_workloads_change() {
        let mut nodes = vec![node("a", "site=x"), node("b", "site=y")];
        let deployments = vec![deployment("web", "site=x", 0, "/bin/web")];
        let (updates, recomputed) = plan(&nodes, &deployments);
        assert_eq!(recomputed.changed, vec![("a".to_string(), 1)]);
        assert_eq!(recomputed.selected["web"], 1);
        store(&mut nodes, updates);
        assert_eq!(nodes[0].desired_workloads.len(), 1);
        assert_eq!(nodes[0].desired_workloads[0].deployment, "web");

        // Nothing changed: no updates, no new generation.
        let (updates, recomputed) = plan(&nodes, &deployments);
        assert!(updates.is_empty());
        assert!(recomputed.changed.is_empty());

        // A new revision moves the generation again.
        let deployments = vec![deployment("web", "site=x", 0, "/bin/web2")];
        let (updates, recomputed) = plan(&nodes, &deployments);
        assert_eq!(recomputed.changed, vec![("a".to_string(), 2)]);
        store(&mut nodes, updates);

        // Deleting everything empties the node with one more generation.
        let (_, recomputed) = plan(&nodes, &[]);
        assert_eq!(recomputed.changed, vec![("a".to_string(), 3)]);
    }

    #[test]
    fn conflicts_are_stored_without_a_new_generation_and_revoked_nodes_are_left_alone() {
        let mut nodes = vec![node("a", ""), node("gone", "")];
        nodes[1].revoked = true;
        let first = vec![deployment("one", "", 5, "/bin/one")];
        let (updates, _) = plan(&nodes, &first);
        assert!(updates.iter().all(|u| u.node == "a"));
        store(&mut nodes, updates);
        assert_eq!(nodes[0].desired_generation, 1);

        // "two" loses the tie by name, so the workloads stay the same but a conflict appears.
        let both = vec![first[0].clone(), deployment("two", "", 5, "/bin/two")];
        let (updates, recomputed) = plan(&nodes, &both);
        assert!(recomputed.changed.is_empty());
        assert_eq!(
            recomputed.selected["two"], 1,
            "revoked nodes are not counted"
        );
        assert_eq!(updates.len(), 1);
        assert_eq!(updates[0].generation, 1);
        assert_eq!(updates[0].conflicts[0].losers, vec!["two".to_string()]);
    }

    #[tokio::test]
    async fn notify_wakes_subscribers() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::open(dir.path()).await.unwrap();
        let controller = Controller::new(store);
        let mut rx = controller.subscribe("a");
        controller.notify("b");
        assert!(!rx.has_changed().unwrap());
        controller.notify("a");
        assert!(rx.has_changed().unwrap());
        rx.changed().await.unwrap();
    }
}
