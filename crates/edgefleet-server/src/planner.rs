//! `plan` and `explain`: what a change would do to the fleet, and why a node runs what it
//! runs. Pure functions over store records, the rollouts and `now`; the handlers fetch
//! the inputs and serialise the answers.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use edgefleet_core::diff::{diff_workloads, group_changes};
use edgefleet_core::hash::{revision_hash, sha256_hex};
use edgefleet_core::lifecycle::node_status;
use edgefleet_core::merge::NodeMerge;
use edgefleet_core::rollout::{Assignment, Rollout, RolloutTarget, WindowGate, plan_steps};
use edgefleet_core::selector;
use edgefleet_wire::Timestamp;
use edgefleet_wire::api::{ApplyAction, NodeStatus};
use edgefleet_wire::manifest::MaintenanceWindowManifest;
use edgefleet_wire::plan::{
    BlockedNode, Blocker, DeploymentExplanation, Explanation, NodeRolloutPosition, Plan, PlanBasis,
    PlanRequest, PlannedDeployment, PlannedStep, PlannedWindow, Shadowing,
};
use edgefleet_wire::rollout::RolloutPhase;

use crate::controller::{Fleet, RevisionSpecs, Windows, compile_windows, window_gate};
use crate::store::{DeploymentRecord, NodeRecord, WindowRecord};

/// The content hash of a maintenance window manifest.
pub fn window_hash(manifest: &MaintenanceWindowManifest) -> String {
    sha256_hex(
        serde_json::to_string(&manifest.spec)
            .unwrap_or_default()
            .as_bytes(),
    )
}

/// What a plan is computed against.
pub fn basis(
    deployments: &[DeploymentRecord],
    windows: &[WindowRecord],
    nodes: &[NodeRecord],
) -> PlanBasis {
    let mut fingerprint = String::new();
    let mut n_nodes = 0u32;
    for node in nodes {
        // Nodes come sorted by name; labels are a sorted map: the text is canonical.
        fingerprint.push_str(&node.name);
        fingerprint.push('\0');
        fingerprint.push_str(&serde_json::to_string(&node.labels).unwrap_or_default());
        fingerprint.push(if node.revoked { '\u{1}' } else { '\0' });
        if !node.revoked {
            n_nodes += 1;
        }
    }
    let node_labels = nodes
        .iter()
        .filter(|n| !n.revoked)
        .map(|n| {
            let labels = serde_json::to_string(&n.labels).unwrap_or_default();
            let hash = sha256_hex(labels.as_bytes());
            (
                n.name.clone(),
                edgefleet_core::hash::short(&hash).to_owned(),
            )
        })
        .collect();
    PlanBasis {
        node_labels,
        deployments: deployments
            .iter()
            .map(|d| (d.name.clone(), d.revision.clone()))
            .collect(),
        windows: windows
            .iter()
            .map(|w| (w.manifest.metadata.name.clone(), w.hash.clone()))
            .collect(),
        nodes_fingerprint: sha256_hex(fingerprint.as_bytes()),
        n_nodes,
    }
}

/// What changed between the basis a plan saw and the current one, one line each; empty
/// when nothing did.
pub fn basis_differences(planned: &PlanBasis, current: &PlanBasis) -> Vec<String> {
    let mut differences = Vec::new();
    let short = edgefleet_core::hash::short;
    compare_maps(
        "deployment",
        &planned.deployments,
        &current.deployments,
        &mut differences,
        |then, now| {
            format!(
                "is at revision {} now (the plan saw {})",
                short(now),
                short(then)
            )
        },
    );
    compare_maps(
        "maintenance window",
        &planned.windows,
        &current.windows,
        &mut differences,
        |_, _| "was changed".to_owned(),
    );
    if planned.nodes_fingerprint != current.nodes_fingerprint {
        let mut nodes = Vec::new();
        compare_maps(
            "node",
            &planned.node_labels,
            &current.node_labels,
            &mut nodes,
            |_, _| "was relabelled".to_owned(),
        );
        let nodes = nodes
            .into_iter()
            .map(|line| {
                line.replace(" was deleted", " was revoked")
                    .replace(" was created", " was enrolled")
            })
            .collect::<Vec<_>>();
        const SHOWN: usize = 10;
        if nodes.is_empty() {
            // A plan from before per-node hashes, or a revocation flag alone.
            differences.push(format!(
                "the fleet changed: nodes were enrolled, revoked or relabelled ({} nodes when planned, {} now)",
                planned.n_nodes, current.n_nodes
            ));
        }
        let more = nodes.len().saturating_sub(SHOWN);
        differences.extend(nodes.into_iter().take(SHOWN));
        if more > 0 {
            differences.push(format!("and {more} more nodes changed"));
        }
    }
    differences
}

fn compare_maps(
    noun: &str,
    planned: &BTreeMap<String, String>,
    current: &BTreeMap<String, String>,
    differences: &mut Vec<String>,
    changed: impl Fn(&str, &str) -> String,
) {
    for (name, then) in planned {
        match current.get(name) {
            None => differences.push(format!("{noun} {name} was deleted")),
            Some(now) if now != then => {
                differences.push(format!("{noun} {name} {}", changed(then, now)))
            }
            Some(_) => {}
        }
    }
    for name in current.keys().filter(|n| !planned.contains_key(*n)) {
        differences.push(format!("{noun} {name} was created"));
    }
}

/// Everything a plan or an explanation looks at.
pub struct World<'a> {
    pub nodes: &'a [NodeRecord],
    pub deployments: &'a [DeploymentRecord],
    pub windows: &'a [WindowRecord],
    pub rollouts: &'a BTreeMap<String, Rollout>,
    pub specs: &'a RevisionSpecs,
    pub now: Timestamp,
    pub not_ready_after: Duration,
}

impl World<'_> {
    fn fleet(&self) -> Fleet<'_> {
        Fleet {
            deployments: self.deployments,
            rollouts: self.rollouts,
            specs: self.specs,
        }
    }

    fn status(&self, node: &NodeRecord) -> NodeStatus {
        node_status(self.now, node.last_seen, node.revoked, self.not_ready_after)
    }

    fn blockers(&self, node: &NodeRecord, windows: &Windows) -> Vec<Blocker> {
        let mut blockers = Vec::new();
        if self.status(node) != NodeStatus::Ready {
            blockers.push(Blocker::Offline {
                since: node.last_seen,
            });
        }
        if let WindowGate::Closed { windows, next_open } = window_gate(windows, node, self.now) {
            blockers.push(Blocker::OutsideWindow { windows, next_open });
        }
        for lock in node.reported.iter().flat_map(|r| r.locks.iter()) {
            blockers.push(Blocker::Locked { lock: lock.clone() });
        }
        blockers
    }
}

/// The windows after the request: current ones replaced or joined by those it carries.
fn windows_after(current: &[WindowRecord], request: &PlanRequest) -> Vec<WindowRecord> {
    let mut by_name: BTreeMap<String, WindowRecord> = current
        .iter()
        .map(|w| (w.manifest.metadata.name.clone(), w.clone()))
        .collect();
    for manifest in &request.windows {
        by_name.insert(
            manifest.metadata.name.clone(),
            WindowRecord {
                hash: window_hash(manifest),
                manifest: manifest.clone(),
                updated_at: Timestamp::UNIX_EPOCH,
            },
        );
    }
    by_name.into_values().collect()
}

/// Computes what applying `request` would do, without changing anything.
pub fn plan(world: &World<'_>, request: PlanRequest) -> Plan {
    let current: HashMap<&str, &DeploymentRecord> = world
        .deployments
        .iter()
        .map(|d| (d.name.as_str(), d))
        .collect();
    // The deployments after the apply, each changed one at its new revision.
    let mut after: BTreeMap<String, DeploymentRecord> = world
        .deployments
        .iter()
        .map(|d| (d.name.clone(), d.clone()))
        .collect();
    let mut actions = Vec::new();
    for manifest in &request.deployments {
        let name = manifest.metadata.name.clone();
        let revision = revision_hash(&manifest.spec);
        let action = match current.get(name.as_str()) {
            None => ApplyAction::Created,
            Some(d) if d.revision == revision => ApplyAction::Unchanged,
            Some(_) => ApplyAction::Updated,
        };
        if action != ApplyAction::Unchanged {
            let count = current.get(name.as_str()).map_or(0, |d| d.revision_count);
            after.insert(
                name.clone(),
                DeploymentRecord {
                    name: name.clone(),
                    revision: revision.clone(),
                    revision_count: count + 1,
                    manifest: manifest.clone(),
                    updated_at: world.now,
                },
            );
        }
        actions.push((name, action, revision));
    }
    let changed_deployments: BTreeSet<&str> = actions
        .iter()
        .filter(|(_, action, _)| *action != ApplyAction::Unchanged)
        .map(|(name, _, _)| name.as_str())
        .collect();
    let after: Vec<DeploymentRecord> = after.into_values().collect();
    // Changed deployments end with their new revision everywhere; the others keep what
    // their own rollouts assign.
    let rollouts_after: BTreeMap<String, Rollout> = world
        .rollouts
        .iter()
        .filter(|(name, _)| !changed_deployments.contains(name.as_str()))
        .map(|(name, r)| (name.clone(), r.clone()))
        .collect();
    let fleet_before = world.fleet();
    let fleet_after = Fleet {
        deployments: &after,
        rollouts: &rollouts_after,
        specs: world.specs,
    };
    let windows = windows_after(world.windows, &request);
    let compiled = compile_windows(&windows);

    let mut per_node = Vec::new();
    let mut unaffected = Vec::new();
    let mut blocked = Vec::new();
    let mut merges_after: Vec<(&NodeRecord, NodeMerge)> = Vec::new();
    for node in world.nodes.iter().filter(|n| !n.revoked) {
        let before = fleet_before.merge(&node.name, &node.labels);
        let after_merge = fleet_after.merge(&node.name, &node.labels);
        let changes = diff_workloads(&before.workloads, &after_merge.workloads);
        if changes.is_empty() {
            unaffected.push(node.name.clone());
        } else {
            let blockers = world.blockers(node, &compiled);
            if !blockers.is_empty() {
                blocked.push(BlockedNode {
                    node: node.name.clone(),
                    blockers,
                });
            }
            per_node.push((node.name.clone(), changes));
        }
        merges_after.push((node, after_merge));
    }

    let deployments = actions
        .iter()
        .map(|(name, action, revision)| {
            let record = after.iter().find(|d| &d.name == name);
            let selected = record.map_or(0, |d| count_selected(world.nodes, d));
            let changed_nodes = per_node
                .iter()
                .filter(|(_, changes)| {
                    changes.iter().any(|c| {
                        c.from_deployment.as_deref() == Some(name)
                            || c.to_deployment.as_deref() == Some(name)
                    })
                })
                .count();
            let steps = match (action, record) {
                (ApplyAction::Unchanged, _) | (_, None) => Vec::new(),
                (_, Some(record)) => planned_steps(world, record, current.get(name.as_str())),
            };
            PlannedDeployment {
                name: name.clone(),
                action: *action,
                from_revision: current.get(name.as_str()).map(|d| d.revision.clone()),
                to_revision: revision.clone(),
                selected_nodes: selected,
                changed_nodes: to_u32(changed_nodes),
                steps,
            }
        })
        .collect();

    let planned_windows = request
        .windows
        .iter()
        .map(|manifest| {
            let name = &manifest.metadata.name;
            let action = match world
                .windows
                .iter()
                .find(|w| &w.manifest.metadata.name == name)
            {
                None => ApplyAction::Created,
                Some(w) if w.hash == window_hash(manifest) => ApplyAction::Unchanged,
                Some(_) => ApplyAction::Updated,
            };
            PlannedWindow {
                name: name.clone(),
                action,
                selected_nodes: to_u32(
                    world
                        .nodes
                        .iter()
                        .filter(|n| {
                            !n.revoked && selector::matches(&manifest.spec.selector, &n.labels)
                        })
                        .count(),
                ),
            }
        })
        .collect();

    let requested: BTreeSet<&str> = request
        .deployments
        .iter()
        .map(|d| d.metadata.name.as_str())
        .collect();
    let shadowing = shadowing(&merges_after, |s| {
        requested.contains(s.deployment.as_str()) || requested.contains(s.by.as_str())
    });
    let changed_nodes = per_node.iter().map(|(node, _)| node.clone()).collect();
    Plan {
        computed_at: world.now,
        basis: basis(world.deployments, world.windows, world.nodes),
        deployments,
        windows: planned_windows,
        changed_nodes,
        groups: group_changes(per_node),
        unaffected_nodes: unaffected,
        blocked,
        shadowing,
        request,
    }
}

fn to_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn count_selected(nodes: &[NodeRecord], deployment: &DeploymentRecord) -> u32 {
    to_u32(
        nodes
            .iter()
            .filter(|n| {
                !n.revoked && selector::matches(&deployment.manifest.spec.selector, &n.labels)
            })
            .count(),
    )
}

/// The steps a rollout of `record` would go through, over the same targets the controller
/// would pick.
fn planned_steps(
    world: &World<'_>,
    record: &DeploymentRecord,
    current: Option<&&DeploymentRecord>,
) -> Vec<PlannedStep> {
    let spec = &record.manifest.spec;
    let partition_by = spec.rollout.partition_by.as_deref();
    let targets: Vec<RolloutTarget> = world
        .nodes
        .iter()
        .filter(|n| !n.revoked)
        .filter(|n| {
            selector::matches(&spec.selector, &n.labels)
                || current.is_some_and(|c| selector::matches(&c.manifest.spec.selector, &n.labels))
                || n.desired_workloads
                    .iter()
                    .any(|w| w.deployment == record.name)
        })
        .map(|n| RolloutTarget {
            node: n.name.clone(),
            partition: partition_by.and_then(|key| n.labels.get(key).cloned()),
        })
        .collect();
    plan_steps(&spec.rollout, &targets)
        .into_iter()
        .enumerate()
        .map(|(index, step)| PlannedStep {
            number: to_u32(index + 1),
            kind: step.kind.as_str().to_owned(),
            partition: step.partition,
            nodes: to_u32(step.nodes.len()),
        })
        .collect()
}

/// Shadowing over many nodes, counted per (workload, deployment, winner).
fn shadowing(
    merges: &[(&NodeRecord, NodeMerge)],
    keep: impl Fn(&edgefleet_core::merge::Shadowed) -> bool,
) -> Vec<Shadowing> {
    let mut counted: BTreeMap<(String, String, String), (bool, u32)> = BTreeMap::new();
    for (_, merge) in merges {
        for shadowed in merge.shadowed.iter().filter(|s| keep(s)) {
            let conflict = merge.conflicts.iter().any(|c| {
                c.workload == shadowed.workload
                    && c.winner == shadowed.by
                    && c.losers.contains(&shadowed.deployment)
            });
            let entry = counted
                .entry((
                    shadowed.workload.clone(),
                    shadowed.deployment.clone(),
                    shadowed.by.clone(),
                ))
                .or_insert((conflict, 0));
            entry.0 |= conflict;
            entry.1 += 1;
        }
    }
    counted
        .into_iter()
        .map(
            |((workload, deployment, by), (conflict, nodes))| Shadowing {
                workload,
                deployment,
                by,
                conflict,
                nodes,
            },
        )
        .collect()
}

/// Why a node runs what it runs, deployment by deployment.
pub fn explain(world: &World<'_>, node: &NodeRecord, only: Option<&str>) -> Explanation {
    let compiled = compile_windows(world.windows);
    let window_state = edgefleet_core::window::node_window_state(
        compiled
            .iter()
            .map(|(name, window)| (name.as_str(), window)),
        &node.labels,
        node.facts.timezone.as_deref(),
        world.now,
    );
    let status = world.status(node);
    let merge = world.fleet().merge(&node.name, &node.labels);
    let locks: Vec<_> = node
        .reported
        .iter()
        .flat_map(|r| r.locks.iter().cloned())
        .collect();
    let deployments = world
        .deployments
        .iter()
        .filter(|d| only.is_none_or(|name| name == d.name))
        .map(|deployment| {
            explain_deployment(
                world,
                node,
                deployment,
                &merge,
                status,
                &window_state,
                &locks,
            )
        })
        .collect();
    Explanation {
        node: node.name.clone(),
        node_status: status,
        last_seen: node.last_seen,
        labels: node.labels.clone(),
        windows: window_state.windows.clone(),
        window_open: window_state.open,
        next_window_open: if window_state.open {
            None
        } else {
            window_state.next_open
        },
        locks,
        deployments,
    }
}

fn revision_number(world: &World<'_>, deployment: &DeploymentRecord, hash: &str) -> String {
    let short = edgefleet_core::hash::short(hash);
    if hash == deployment.revision {
        return format!("{} ({short})", deployment.revision_count);
    }
    match world.rollouts.get(&deployment.name) {
        Some(r) if r.to_revision == hash => format!("{} ({short})", r.to_revision_number),
        Some(r) if r.from_revision.as_deref() == Some(hash) => match r.from_revision_number {
            Some(number) => format!("{number} ({short})"),
            None => short.to_owned(),
        },
        _ => short.to_owned(),
    }
}

#[allow(clippy::too_many_arguments)]
fn explain_deployment(
    world: &World<'_>,
    node: &NodeRecord,
    deployment: &DeploymentRecord,
    merge: &NodeMerge,
    status: NodeStatus,
    window_state: &edgefleet_core::window::WindowState,
    locks: &[edgefleet_wire::node::UpdateLock],
) -> DeploymentExplanation {
    let name = &deployment.name;
    let spec = &deployment.manifest.spec;
    let terms = selector::explain(&spec.selector, &node.labels);
    let selects = terms.iter().all(|t| t.satisfied);
    let failing_terms: Vec<String> = terms
        .iter()
        .filter(|t| !t.satisfied)
        .map(ToString::to_string)
        .collect();
    let shadowed: Vec<Shadowing> = merge
        .shadowed
        .iter()
        .filter(|s| &s.deployment == name)
        .map(|s| one_shadowing(s, merge))
        .collect();
    let shadows: Vec<Shadowing> = merge
        .shadowed
        .iter()
        .filter(|s| &s.by == name)
        .map(|s| one_shadowing(s, merge))
        .collect();
    let desired_revision = node
        .desired_workloads
        .iter()
        .find(|w| &w.deployment == name)
        .map(|w| w.revision.clone());
    let applied_revision = node
        .reported
        .iter()
        .flat_map(|r| r.workloads.iter())
        .find(|w| &w.deployment == name)
        .map(|w| w.revision.clone());
    let rollout = world.rollouts.get(name);
    let position = rollout.and_then(|r| {
        r.node_status(&node.name).map(|n| NodeRolloutPosition {
            number: r.number,
            phase: r.phase,
            paused: r.paused,
            step: n.step,
            n_steps: to_u32(r.steps.len()),
            current_step: r.status(false).current_step,
            state: n.state,
            reason: n.reason,
            waiting_for: r.waiting_for.clone(),
        })
    });

    let mut blocked = Vec::new();
    if status != NodeStatus::Ready {
        blocked.push(
            Blocker::Offline {
                since: node.last_seen,
            }
            .describe(),
        );
    }
    if !window_state.open {
        blocked.push(
            Blocker::OutsideWindow {
                windows: window_state.windows.clone(),
                next_open: window_state.next_open,
            }
            .describe(),
        );
    }
    for lock in locks {
        blocked.push(Blocker::Locked { lock: lock.clone() }.describe());
    }
    if let Some(r) = rollout {
        if r.paused && r.phase.is_active() {
            blocked.push(format!("rollout {} is paused", r.number));
        }
        if matches!(r.phase, RolloutPhase::Aborted | RolloutPhase::RolledBack) {
            blocked.push(format!(
                "rollout {} was {}: {}",
                r.number,
                if r.phase == RolloutPhase::RolledBack {
                    "rolled back"
                } else {
                    "aborted"
                },
                r.abort_reason.as_deref().unwrap_or("")
            ));
        }
    }

    let latest = revision_number(world, deployment, &deployment.revision);
    let assignment = rollout.map_or(
        Assignment::Revision {
            hash: &deployment.revision,
            rolled_back: false,
        },
        |r| r.assignment(&node.name),
    );
    let summary = summarise(SummaryInput {
        world,
        node,
        deployment,
        selects,
        failing_terms: &failing_terms,
        shadowed: &shadowed,
        assignment,
        desired: desired_revision.as_deref(),
        applied: applied_revision.as_deref(),
        rollout,
        position: position.as_ref(),
        latest: &latest,
    });
    DeploymentExplanation {
        deployment: name.clone(),
        selects,
        selector: selector::to_string(&spec.selector),
        failing_terms,
        shadowed,
        shadows,
        latest_revision: deployment.revision.clone(),
        desired_revision,
        applied_revision,
        rollout: position,
        blocked,
        summary,
    }
}

fn one_shadowing(s: &edgefleet_core::merge::Shadowed, merge: &NodeMerge) -> Shadowing {
    Shadowing {
        workload: s.workload.clone(),
        deployment: s.deployment.clone(),
        by: s.by.clone(),
        conflict: merge
            .conflicts
            .iter()
            .any(|c| c.workload == s.workload && c.losers.contains(&s.deployment)),
        nodes: 1,
    }
}

struct SummaryInput<'a> {
    world: &'a World<'a>,
    node: &'a NodeRecord,
    deployment: &'a DeploymentRecord,
    selects: bool,
    failing_terms: &'a [String],
    shadowed: &'a [Shadowing],
    assignment: Assignment<'a>,
    desired: Option<&'a str>,
    applied: Option<&'a str>,
    rollout: Option<&'a Rollout>,
    position: Option<&'a NodeRolloutPosition>,
    latest: &'a str,
}

fn summarise(input: SummaryInput<'_>) -> String {
    let SummaryInput {
        world,
        node,
        deployment,
        selects,
        failing_terms,
        shadowed,
        assignment,
        desired,
        applied,
        rollout,
        position,
        latest,
    } = input;
    let name = &deployment.name;
    let node_name = &node.name;
    let n_workloads = deployment.manifest.spec.workloads.len();
    let assigned = match assignment {
        Assignment::Revision { hash, .. } => Some(hash),
        Assignment::Nothing => None,
    };
    if !selects && desired.is_none() {
        return format!(
            "{name} does not select {node_name}: {}",
            failing_terms.join(", ")
        );
    }
    if selects && !shadowed.is_empty() && shadowed.len() >= n_workloads && desired.is_none() {
        let by: BTreeSet<&str> = shadowed.iter().map(|s| s.by.as_str()).collect();
        return format!(
            "{name} selects {node_name}, but every workload of it is shadowed by {}",
            by.into_iter().collect::<Vec<_>>().join(", ")
        );
    }
    let rollout_note = match (rollout, position) {
        (Some(r), Some(p)) if r.phase.is_active() && assigned != Some(r.to_revision.as_str()) => {
            Some(format!(
                "; rollout {} of revision {} is at step {} of {}, and this node (step {}) is {}{}",
                r.number,
                r.to_revision_number,
                p.current_step,
                p.n_steps,
                p.step,
                p.state.as_str(),
                p.reason
                    .as_deref()
                    .map(|reason| format!(": {reason}"))
                    .unwrap_or_default()
            ))
        }
        (Some(r), _) if r.phase == RolloutPhase::RolledBack => Some(format!(
            "; rollout {} of revision {} was rolled back: {}",
            r.number,
            r.to_revision_number,
            r.abort_reason.as_deref().unwrap_or("")
        )),
        (Some(r), Some(p))
            if r.phase == RolloutPhase::Succeeded && assigned != Some(r.to_revision.as_str()) =>
        {
            Some(format!(
                "; the rollout succeeded but this node was deferred: {}",
                p.reason.as_deref().unwrap_or(p.state.as_str())
            ))
        }
        _ => None,
    };
    let desired_text = desired.map(|hash| revision_number(world, deployment, hash));
    let state = match (desired, applied) {
        (Some(d), Some(a)) if d == a => format!(
            "{node_name} runs {name} revision {}",
            desired_text.as_deref().unwrap_or(d)
        ),
        (Some(d), _) => format!(
            "{node_name} should run {name} revision {} but has not applied it yet",
            desired_text.as_deref().unwrap_or(d)
        ),
        (None, Some(_)) => format!("{node_name} still runs workloads of {name} it should remove"),
        (None, None) => format!("{node_name} runs nothing of {name} yet"),
    };
    let latest_note = if desired == Some(deployment.revision.as_str()) {
        " (the latest)".to_owned()
    } else {
        format!("; the latest revision is {latest}")
    };
    format!("{state}{latest_note}{}", rollout_note.unwrap_or_default())
}

#[cfg(test)]
mod tests;
