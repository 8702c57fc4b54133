//! The pure part of a recompute: every node's desired workloads from the deployments, the
//! revision each rollout assigns the node, and the layered merge.

use std::collections::{BTreeMap, HashMap};

use edgefleet_core::merge::{DeploymentRef, NodeMerge, merge_for_node, same_workloads};
use edgefleet_core::rollout::{Assignment, Rollout};
use edgefleet_core::selector;
use edgefleet_wire::Labels;
use edgefleet_wire::manifest::DeploymentSpec;

use crate::store::{DeploymentRecord, DesiredUpdate, NodeRecord};

/// Specs of past revisions by (deployment, revision hash); a rollout may assign them.
pub type RevisionSpecs = HashMap<(String, String), DeploymentSpec>;

/// What a recompute found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recomputed {
    /// Per deployment, how many (unrevoked) nodes its newest revision selects.
    pub selected: BTreeMap<String, u32>,
    /// Nodes whose generation changed, with the new generation.
    pub changed: Vec<(String, u64)>,
}

/// Everything the desired state of a node depends on besides the node itself.
pub struct Fleet<'a> {
    pub deployments: &'a [DeploymentRecord],
    /// The newest rollout of each deployment that has one.
    pub rollouts: &'a BTreeMap<String, Rollout>,
    pub specs: &'a RevisionSpecs,
}

impl Fleet<'_> {
    /// The merge for one node, with each deployment at the revision assigned to the node.
    /// Also returns the deployments assigned because of a rollback.
    pub fn merge(&self, node: &str, labels: &Labels) -> NodeMerge {
        let mut refs = Vec::with_capacity(self.deployments.len());
        let mut rolled_back = Vec::new();
        for deployment in self.deployments {
            let assignment = match self.rollouts.get(&deployment.name) {
                Some(rollout) => rollout.assignment(node),
                None => Assignment::Revision {
                    hash: &deployment.revision,
                    rolled_back: false,
                },
            };
            let Assignment::Revision {
                hash,
                rolled_back: back,
            } = assignment
            else {
                continue;
            };
            let spec = if hash == deployment.revision {
                Some(&deployment.manifest.spec)
            } else {
                self.specs.get(&(deployment.name.clone(), hash.to_owned()))
            };
            let Some(spec) = spec else {
                // The controller loads every revision a rollout names before merging; a
                // missing one means the revision was deleted under it. The newest
                // revision is the safe fallback: it is what the operator asked for last.
                tracing::warn!(deployment = %deployment.name, revision = %hash, "revision assigned by a rollout is unknown; using the newest");
                refs.push(DeploymentRef {
                    name: &deployment.name,
                    revision: &deployment.revision,
                    spec: &deployment.manifest.spec,
                });
                continue;
            };
            if back {
                rolled_back.push(deployment.name.as_str());
            }
            refs.push(DeploymentRef {
                name: &deployment.name,
                revision: hash,
                spec,
            });
        }
        let mut merge = merge_for_node(labels, &refs);
        for workload in &mut merge.workloads {
            workload.rolled_back = rolled_back.contains(&workload.deployment.as_str());
        }
        merge
    }
}

/// Which nodes need a new desired state.
///
/// A node's generation moves only when its workload list changes; a change of conflicts
/// alone is stored without a new generation (the agent has nothing new to run).
pub fn desired_updates(
    nodes: &[NodeRecord],
    fleet: &Fleet<'_>,
) -> (Vec<DesiredUpdate>, Recomputed) {
    let mut recomputed = Recomputed {
        selected: fleet
            .deployments
            .iter()
            .map(|d| (d.name.clone(), 0))
            .collect(),
        changed: Vec::new(),
    };
    let mut updates = Vec::new();
    for node in nodes.iter().filter(|n| !n.revoked) {
        for deployment in fleet.deployments {
            if selector::matches(&deployment.manifest.spec.selector, &node.labels) {
                *recomputed
                    .selected
                    .entry(deployment.name.clone())
                    .or_default() += 1;
            }
        }
        let merge = fleet.merge(&node.name, &node.labels);
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

/// Every deployment at its newest revision, for read models that ignore rollouts.
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
