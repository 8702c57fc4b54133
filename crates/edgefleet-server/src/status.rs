//! Read models: the API's summaries, conditions and roll-ups computed from store records.
//!
//! Pure functions with `now` passed in, so every rule here is unit-tested without a
//! server. The rules themselves (liveness, token state, the merge) come from
//! `edgefleet_core`; this module only assembles API bodies from them.

use std::collections::HashMap;
use std::time::Duration;

use edgefleet_core::lifecycle::{node_status, token_state};
use edgefleet_core::merge::NodeMerge;
use edgefleet_wire::api::{
    ApiTokenInfo, Condition, Conflict, DeploymentNodeStatus, DeploymentSummary, DesiredWorkload,
    JoinTokenInfo, NodeStatus, NodeSummary,
};
use edgefleet_wire::node::{WorkloadState, WorkloadStatus};
use edgefleet_wire::{DurationSpec, Timestamp};

use crate::store::{ApiTokenRecord, DeploymentRecord, JoinTokenRecord, NodeRecord};

/// Whether a reported workload counts as failing: crash-looping, or exited with an error.
pub fn is_failing(status: &WorkloadStatus) -> bool {
    match status.state {
        WorkloadState::CrashLooping => true,
        WorkloadState::Exited => status.last_exit_code.is_some_and(|code| code != 0),
        _ => false,
    }
}

/// The node's reported workloads by name.
fn reported_by_name(node: &NodeRecord) -> HashMap<&str, &WorkloadStatus> {
    node.reported
        .iter()
        .flat_map(|r| r.workloads.iter())
        .map(|w| (w.name.as_str(), w))
        .collect()
}

fn status_of(node: &NodeRecord, now: Timestamp, not_ready_after: Duration) -> NodeStatus {
    node_status(now, node.last_seen, node.revoked, not_ready_after)
}

pub fn node_summary(node: &NodeRecord, now: Timestamp, not_ready_after: Duration) -> NodeSummary {
    let reported = reported_by_name(node);
    let desired_reports = || {
        node.desired_workloads
            .iter()
            .filter_map(|w| reported.get(w.spec.name.as_str()).copied())
    };
    let agent_version = node
        .reported
        .as_ref()
        .map(|r| r.agent_version.clone())
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| node.facts.agent_version.clone());
    NodeSummary {
        name: node.name.clone(),
        status: status_of(node, now, not_ready_after),
        labels: node.labels.clone(),
        last_seen: node.last_seen,
        desired_generation: node.desired_generation,
        applied_generation: node.applied_generation,
        workloads_total: count(node.desired_workloads.len()),
        workloads_running: count(
            desired_reports()
                .filter(|w| w.state == WorkloadState::Running)
                .count(),
        ),
        workloads_failing: count(desired_reports().filter(|w| is_failing(w)).count()),
        certificate_not_after: Some(node.cert.not_after),
        agent_version,
        enrolled_at: node.enrolled_at,
    }
}

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// A duration as people read it, to the second: `3d4h`, `12s`.
fn human(duration: time::Duration) -> String {
    let seconds = duration.whole_seconds().unsigned_abs();
    DurationSpec::from_secs(seconds).to_string()
}

pub(crate) fn rfc3339(at: Timestamp) -> String {
    at.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| at.to_string())
}

pub fn node_conditions(
    node: &NodeRecord,
    now: Timestamp,
    not_ready_after: Duration,
) -> Vec<Condition> {
    let condition = |kind: &str, status: bool, reason: String| Condition {
        kind: kind.to_owned(),
        status,
        reason,
    };
    let status = status_of(node, now, not_ready_after);
    let ready_reason = match (status, node.last_seen) {
        (NodeStatus::Revoked, _) => "the node's certificate was revoked".to_owned(),
        (NodeStatus::Unknown, _) | (_, None) => "never heard from since enrollment".to_owned(),
        (NodeStatus::Ready, Some(seen)) => format!("last heard from {} ago", human(now - seen)),
        (NodeStatus::NotReady, Some(seen)) => format!(
            "not heard from for {} (NotReady after {})",
            human(now - seen),
            DurationSpec(not_ready_after)
        ),
    };
    let up_to_date = node.applied_generation >= node.desired_generation;
    let up_to_date_reason = if up_to_date {
        format!(
            "applied generation {} of {}",
            node.applied_generation, node.desired_generation
        )
    } else {
        format!(
            "applied generation {}, desired generation is {}",
            node.applied_generation, node.desired_generation
        )
    };
    let (healthy, health_reason) = workload_health(node);
    let cert_valid = !node.revoked && node.cert.not_after > now;
    let cert_reason = if node.revoked {
        "revoked".to_owned()
    } else if cert_valid {
        format!(
            "valid until {} ({} left)",
            rfc3339(node.cert.not_after),
            human(node.cert.not_after - now)
        )
    } else {
        format!("expired at {}", rfc3339(node.cert.not_after))
    };
    vec![
        condition("Ready", status == NodeStatus::Ready, ready_reason),
        condition("UpToDate", up_to_date, up_to_date_reason),
        condition("WorkloadsHealthy", healthy, health_reason),
        condition("CertificateValid", cert_valid, cert_reason),
    ]
}

fn workload_health(node: &NodeRecord) -> (bool, String) {
    if node.desired_workloads.is_empty() {
        return (true, "no workloads desired".to_owned());
    }
    let reported = reported_by_name(node);
    let mut problems = Vec::new();
    for desired in &node.desired_workloads {
        let name = &desired.spec.name;
        match reported.get(name.as_str()) {
            None => problems.push(format!("{name}: not reported yet")),
            Some(w) if w.state == WorkloadState::CrashLooping => {
                problems.push(format!("{name}: crash-looping ({} restarts)", w.restarts));
            }
            Some(w) if is_failing(w) => problems.push(format!(
                "{name}: exited with code {}",
                w.last_exit_code.unwrap_or_default()
            )),
            Some(w) if matches!(w.state, WorkloadState::Running | WorkloadState::Exited) => {}
            Some(w) => problems.push(format!("{name}: {}", w.state.as_str())),
        }
    }
    if problems.is_empty() {
        (
            true,
            format!(
                "all {} workloads running or completed",
                node.desired_workloads.len()
            ),
        )
    } else {
        (false, problems.join("; "))
    }
}

/// One node as a deployment roll-up sees it.
pub struct NodeView<'a> {
    pub node: &'a NodeRecord,
    pub merge: NodeMerge,
}

/// A deployment's counts and per-node status over the nodes that select it.
pub struct Rollup {
    pub summary: DeploymentSummary,
    pub nodes: Vec<DeploymentNodeStatus>,
    pub conflicts: Vec<Conflict>,
}

pub fn deployment_rollup(
    deployment: &DeploymentRecord,
    views: &[NodeView<'_>],
    now: Timestamp,
    not_ready_after: Duration,
) -> Rollup {
    let name = deployment.name.as_str();
    let mut summary = DeploymentSummary {
        name: deployment.name.clone(),
        revision: deployment.revision.clone(),
        revision_count: deployment.revision_count,
        priority: deployment.manifest.spec.priority,
        selected: 0,
        up_to_date: 0,
        running: 0,
        failing: 0,
        updated_at: deployment.updated_at,
    };
    let mut nodes = Vec::new();
    let mut conflicts: Vec<Conflict> = Vec::new();
    for view in views.iter().filter(|v| !v.node.revoked) {
        for conflict in &view.merge.conflicts {
            let involved = conflict.winner == name || conflict.losers.iter().any(|l| l == name);
            if involved && !conflicts.contains(conflict) {
                conflicts.push(conflict.clone());
            }
        }
        if !view.merge.selected_by.iter().any(|d| d == name) {
            continue;
        }
        let contributed: Vec<&DesiredWorkload> = view
            .merge
            .workloads
            .iter()
            .filter(|w| w.deployment == name)
            .collect();
        let reported = reported_by_name(view.node);
        let current = |w: &DesiredWorkload| {
            reported
                .get(w.spec.name.as_str())
                .copied()
                .filter(|r| r.spec_hash == w.spec_hash)
        };
        let up_to_date = view.node.applied_generation >= view.node.desired_generation
            && contributed.iter().all(|w| current(w).is_some());
        let running = !contributed.is_empty()
            && contributed
                .iter()
                .all(|w| current(w).is_some_and(|r| r.state == WorkloadState::Running));
        let failing = contributed.iter().any(|w| {
            reported
                .get(w.spec.name.as_str())
                .is_some_and(|r| is_failing(r))
        });
        summary.selected += 1;
        summary.up_to_date += u32::from(up_to_date);
        summary.running += u32::from(running);
        summary.failing += u32::from(failing);
        nodes.push(DeploymentNodeStatus {
            node: view.node.name.clone(),
            node_status: status_of(view.node, now, not_ready_after),
            up_to_date,
            workloads: contributed
                .iter()
                .map(|w| {
                    let state = reported.get(w.spec.name.as_str()).map(|r| r.state);
                    (w.spec.name.clone(), state)
                })
                .collect(),
        });
    }
    Rollup {
        summary,
        nodes,
        conflicts,
    }
}

pub fn join_token_info(token: &JoinTokenRecord, now: Timestamp) -> JoinTokenInfo {
    let state = token_state(
        now,
        token.expires_at,
        token.uses,
        token.uses_allowed,
        token.revoked,
    );
    JoinTokenInfo {
        id: token.id.clone(),
        labels: token.labels.clone(),
        created_at: token.created_at,
        expires_at: token.expires_at,
        uses_allowed: token.uses_allowed,
        uses: token.uses,
        revoked: token.revoked,
        description: token.description.clone(),
        state: state.as_str().to_owned(),
    }
}

pub fn api_token_info(token: &ApiTokenRecord) -> ApiTokenInfo {
    ApiTokenInfo {
        id: token.id.clone(),
        name: token.name.clone(),
        role: token.role,
        created_at: token.created_at,
        revoked: token.revoked,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::CertRecord;
    use edgefleet_core::merge::{DeploymentRef, merge_for_node};
    use edgefleet_wire::manifest::*;
    use edgefleet_wire::node::ReportedState;
    use time::macros::datetime;

    const NOW: Timestamp = datetime!(2026-01-01 12:00 UTC);
    const WINDOW: Duration = Duration::from_secs(45);

    fn workload(name: &str) -> WorkloadSpec {
        WorkloadSpec::process(name, "/bin/true")
    }

    fn deployment(name: &str, workloads: &[&str]) -> DeploymentRecord {
        let spec = DeploymentSpec {
            streams: Vec::new(),
            selector: Selector::default(),
            priority: 0,
            workloads: workloads.iter().map(|w| workload(w)).collect(),
            rollout: Default::default(),
        };
        crate::store::fixtures::deployment(name, spec, NOW)
    }

    fn node_running(
        deployments: &[DeploymentRecord],
        states: &[(&str, WorkloadState, Option<i32>)],
    ) -> NodeRecord {
        let refs = crate::controller::deployment_refs(deployments);
        let merge = merge_for_node(&Default::default(), &refs);
        let reported = ReportedState {
            node: "n".into(),
            applied_generation: 1,
            workloads: states
                .iter()
                .map(|(name, state, code)| {
                    let desired = merge
                        .workloads
                        .iter()
                        .find(|w| w.spec.name == *name)
                        .unwrap();
                    WorkloadStatus {
                        name: (*name).into(),
                        deployment: desired.deployment.clone(),
                        revision: desired.revision.clone(),
                        spec_hash: desired.spec_hash.clone(),
                        state: *state,
                        pid: None,
                        restarts: 3,
                        last_exit_code: *code,
                        started_at: None,
                        message: None,
                        ready: None,
                        runtime: None,
                    }
                })
                .collect(),
            agent_version: "9.9.9".into(),
            certificate_not_after: None,
            locks: vec![],
        };
        NodeRecord {
            name: "n".into(),
            labels: Default::default(),
            facts: Default::default(),
            enrolled_at: NOW - time::Duration::days(1),
            last_seen: Some(NOW - time::Duration::seconds(5)),
            revoked: false,
            cert: CertRecord {
                serial: "01".into(),
                not_after: NOW + time::Duration::days(3),
            },
            previous_cert_serial: None,
            applied_generation: 1,
            reported: Some(reported),
            desired_generation: 1,
            desired_workloads: merge.workloads,
            conflicts: vec![],
        }
    }

    fn views<'a>(nodes: &'a [NodeRecord], deployments: &[DeploymentRecord]) -> Vec<NodeView<'a>> {
        let refs: Vec<DeploymentRef<'_>> = crate::controller::deployment_refs(deployments);
        nodes
            .iter()
            .map(|node| NodeView {
                node,
                merge: merge_for_node(&node.labels, &refs),
            })
            .collect()
    }

    #[test]
    fn failing_means_crash_looping_or_nonzero_exit() {
        let mut status = node_running(
            &[deployment("d", &["a"])],
            &[("a", WorkloadState::Running, None)],
        )
        .reported
        .unwrap()
        .workloads
        .remove(0);
        assert!(!is_failing(&status));
        status.state = WorkloadState::CrashLooping;
        assert!(is_failing(&status));
        status.state = WorkloadState::Exited;
        status.last_exit_code = Some(0);
        assert!(!is_failing(&status));
        status.last_exit_code = Some(2);
        assert!(is_failing(&status));
    }

    #[test]
    fn summary_and_conditions_of_a_healthy_node() {
        let deployments = [deployment("d", &["a", "b"])];
        let node = node_running(
            &deployments,
            &[
                ("a", WorkloadState::Running, None),
                ("b", WorkloadState::Running, None),
            ],
        );
        let summary = node_summary(&node, NOW, WINDOW);
        assert_eq!(summary.status, NodeStatus::Ready);
        assert_eq!(
            (
                summary.workloads_total,
                summary.workloads_running,
                summary.workloads_failing
            ),
            (2, 2, 0)
        );
        assert_eq!(summary.agent_version, "9.9.9");
        let conditions = node_conditions(&node, NOW, WINDOW);
        let kinds: Vec<(&str, bool)> = conditions
            .iter()
            .map(|c| (c.kind.as_str(), c.status))
            .collect();
        assert_eq!(
            kinds,
            [
                ("Ready", true),
                ("UpToDate", true),
                ("WorkloadsHealthy", true),
                ("CertificateValid", true)
            ]
        );
        assert_eq!(conditions[0].reason, "last heard from 5s ago");
        assert_eq!(
            conditions[3].reason,
            "valid until 2026-01-04T12:00:00Z (3d left)"
        );
    }

    #[test]
    fn conditions_explain_what_is_wrong() {
        let deployments = [deployment("d", &["a", "b"])];
        let mut node = node_running(&deployments, &[("a", WorkloadState::CrashLooping, Some(1))]);
        node.last_seen = Some(NOW - time::Duration::minutes(2));
        node.desired_generation = 2;
        node.cert.not_after = NOW - time::Duration::hours(1);
        let conditions = node_conditions(&node, NOW, WINDOW);
        assert!(conditions.iter().all(|c| !c.status), "{conditions:?}");
        assert_eq!(
            conditions[0].reason,
            "not heard from for 2m (NotReady after 45s)"
        );
        assert_eq!(
            conditions[1].reason,
            "applied generation 1, desired generation is 2"
        );
        assert_eq!(
            conditions[2].reason,
            "a: crash-looping (3 restarts); b: not reported yet"
        );
        assert_eq!(conditions[3].reason, "expired at 2026-01-01T11:00:00Z");
        assert_eq!(node_summary(&node, NOW, WINDOW).workloads_failing, 1);
    }

    #[test]
    fn rollup_counts_per_deployment() {
        let deployments = [deployment("d", &["a"]), deployment("e", &["b"])];
        let nodes = [
            node_running(
                &deployments,
                &[
                    ("a", WorkloadState::Running, None),
                    ("b", WorkloadState::Exited, Some(1)),
                ],
            ),
            node_running(&deployments, &[("a", WorkloadState::Pending, None)]),
        ];
        let views = views(&nodes, &deployments);
        let d = deployment_rollup(&deployments[0], &views, NOW, WINDOW).summary;
        assert_eq!(
            (d.selected, d.up_to_date, d.running, d.failing),
            (2, 2, 1, 0)
        );
        let rollup = deployment_rollup(&deployments[1], &views, NOW, WINDOW);
        let e = rollup.summary;
        // Node 2 has not reported b at all: not up to date, not running, not failing.
        assert_eq!(
            (e.selected, e.up_to_date, e.running, e.failing),
            (2, 1, 0, 1)
        );
        assert_eq!(rollup.nodes[1].workloads, vec![("b".to_string(), None)]);
    }

    #[test]
    fn token_state_is_reported() {
        let token = JoinTokenRecord {
            id: "abcd1234".into(),
            secret_sha256: String::new(),
            labels: Default::default(),
            created_at: NOW,
            expires_at: NOW + time::Duration::hours(1),
            uses_allowed: Some(1),
            uses: 1,
            revoked: false,
            description: None,
        };
        assert_eq!(join_token_info(&token, NOW).state, "used-up");
        assert_eq!(
            join_token_info(&token, NOW + time::Duration::hours(2)).state,
            "expired"
        );
    }
}
