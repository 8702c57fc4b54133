//! `edgefleet explain node NAME [deployment NAME]`: why a node runs what it runs, or why it
//! does not update. The server answers; this module renders the answer, summary first.

use edgefleet_core::hash::short;
use edgefleet_wire::node::UpdateLock;
use edgefleet_wire::plan::{DeploymentExplanation, Explanation, NodeRolloutPosition, Shadowing};
use time::OffsetDateTime;

use crate::cli::ExplainCommand;
use crate::client::ApiClient;
use crate::human;
use crate::output;
use crate::views::{Fields, labels};

pub async fn run(client: &ApiClient, command: &ExplainCommand) -> anyhow::Result<()> {
    let ExplainCommand::Node {
        name,
        deployment,
        output,
        ..
    } = command;
    let query: Vec<(&str, String)> = deployment
        .iter()
        .map(|d| ("deployment", d.clone()))
        .collect();
    let explanation: Explanation = client
        .get(&["v1", "explain", "nodes", name], &query)
        .await?;
    let now = OffsetDateTime::now_utc();
    output::print(&explanation, output.output, || {
        explanation_text(&explanation, now)
    })
}

/// The node (status, labels, windows, locks), then each deployment, its summary first.
pub fn explanation_text(explanation: &Explanation, now: OffsetDateTime) -> String {
    let mut fields = Fields::new("");
    fields
        .add("Node", explanation.node.clone())
        .add(
            "Status",
            format!(
                "{}, last seen {}",
                explanation.node_status.as_str(),
                human::timestamp_with_age(explanation.last_seen, now)
            ),
        )
        .add("Labels", labels(&explanation.labels))
        .add("Windows", windows(explanation, now))
        .add("Locks", locks(&explanation.locks, now));
    let mut out = fields.render();
    if explanation.deployments.is_empty() {
        out.push_str("\nNo deployment selects this node or defines anything for it.\n");
    }
    for deployment in &explanation.deployments {
        out.push('\n');
        out.push_str(&deployment_text(deployment));
    }
    out
}

fn windows(explanation: &Explanation, now: OffsetDateTime) -> String {
    if explanation.windows.is_empty() {
        return "none; rollouts may update the node at any time".to_owned();
    }
    let names = explanation.windows.join(", ");
    if explanation.window_open {
        return format!("{names}: open now");
    }
    match explanation.next_window_open {
        Some(next) => format!(
            "{names}: closed, next opens {}",
            human::deadline(Some(next), now)
        ),
        None => format!("{names}: closed, no opening ahead"),
    }
}

fn locks(locks: &[UpdateLock], now: OffsetDateTime) -> String {
    if locks.is_empty() {
        return "none".to_owned();
    }
    locks
        .iter()
        .map(|lock| {
            let reason = if lock.reason.is_empty() {
                String::new()
            } else {
                format!(": {}", lock.reason)
            };
            format!(
                "{} holds its update lock since {}{reason}",
                lock.workload,
                human::timestamp_with_age(Some(lock.since), now)
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn revision(hash: Option<&str>) -> &str {
    hash.map_or("none", short)
}

fn deployment_text(deployment: &DeploymentExplanation) -> String {
    let selector = if deployment.selector.is_empty() {
        "<all nodes>"
    } else {
        deployment.selector.as_str()
    };
    let mut fields = Fields::new("  ");
    fields.add(
        "Selects",
        format!(
            "{} (selector {selector})",
            if deployment.selects { "yes" } else { "no" }
        ),
    );
    if !deployment.failing_terms.is_empty() {
        fields.add("Failing terms", deployment.failing_terms.join("; "));
    }
    if !deployment.shadowed.is_empty() {
        fields.add("Overridden", join(&deployment.shadowed, shadowed_text));
    }
    if !deployment.shadows.is_empty() {
        fields.add("Overrides", join(&deployment.shadows, shadows_text));
    }
    let runs_something =
        deployment.desired_revision.is_some() || deployment.applied_revision.is_some();
    if deployment.selects || runs_something {
        fields.add(
            "Revisions",
            format!(
                "latest {}, desired {}, applied {}",
                short(&deployment.latest_revision),
                revision(deployment.desired_revision.as_deref()),
                revision(deployment.applied_revision.as_deref())
            ),
        );
    }
    if let Some(rollout) = &deployment.rollout {
        add_rollout(&mut fields, rollout);
    }
    if !deployment.blocked.is_empty() {
        fields.add("Blocked", deployment.blocked.join("; "));
    }
    format!(
        "deployment/{}: {}\n{}",
        deployment.deployment,
        deployment.summary,
        fields.render()
    )
}

fn add_rollout(fields: &mut Fields, rollout: &NodeRolloutPosition) {
    let paused = if rollout.paused { " (paused)" } else { "" };
    fields.add(
        "Rollout",
        format!(
            "#{} {}{paused}; this node: step {}/{} ({}), current step {}",
            rollout.number,
            rollout.phase.as_str(),
            rollout.step,
            rollout.n_steps,
            rollout.state.as_str(),
            rollout.current_step
        ),
    );
    if let Some(reason) = &rollout.reason {
        fields.add("Reason", reason.clone());
    }
    if let Some(waiting_for) = &rollout.waiting_for {
        fields.add("Waiting for", waiting_for.clone());
    }
}

fn join(items: &[Shadowing], text: fn(&Shadowing) -> String) -> String {
    items.iter().map(text).collect::<Vec<_>>().join("; ")
}

fn conflict_note(shadowing: &Shadowing) -> &'static str {
    if shadowing.conflict {
        " (warning: same priority, decided by name)"
    } else {
        ""
    }
}

/// A workload of this deployment that another one wins on the node.
fn shadowed_text(shadowing: &Shadowing) -> String {
    format!(
        "{} by deployment {}{}",
        shadowing.workload,
        shadowing.by,
        conflict_note(shadowing)
    )
}

/// A workload of another deployment that this one wins on the node.
fn shadows_text(shadowing: &Shadowing) -> String {
    format!(
        "{} of deployment {}{}",
        shadowing.workload,
        shadowing.deployment,
        conflict_note(shadowing)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgefleet_wire::api::NodeStatus;
    use edgefleet_wire::rollout::{RolloutNodeState, RolloutPhase};
    use time::macros::datetime;

    const NOW: OffsetDateTime = datetime!(2025-03-01 12:00:00 UTC);

    fn explanation() -> Explanation {
        Explanation {
            node: "edge-1".into(),
            node_status: NodeStatus::Ready,
            last_seen: Some(datetime!(2025-03-01 11:59:57 UTC)),
            labels: [("site".to_owned(), "berlin".to_owned())].into(),
            windows: vec!["night".into()],
            window_open: false,
            next_window_open: Some(datetime!(2025-03-01 22:00:00 UTC)),
            locks: vec![UpdateLock {
                workload: "robot".into(),
                reason: "mid-task".into(),
                since: datetime!(2025-03-01 11:55:00 UTC),
            }],
            deployments: vec![
                DeploymentExplanation {
                    deployment: "web".into(),
                    selects: true,
                    selector: "site=berlin".into(),
                    failing_terms: vec![],
                    shadowed: vec![],
                    shadows: vec![Shadowing {
                        workload: "web".into(),
                        deployment: "base".into(),
                        by: "web".into(),
                        conflict: false,
                        nodes: 1,
                    }],
                    latest_revision: "abcdef0123456789".into(),
                    desired_revision: Some("0123456789abcdef".into()),
                    applied_revision: Some("0123456789abcdef".into()),
                    rollout: Some(NodeRolloutPosition {
                        number: 3,
                        phase: RolloutPhase::Progressing,
                        paused: false,
                        step: 3,
                        n_steps: 4,
                        current_step: 2,
                        state: RolloutNodeState::Blocked,
                        reason: Some("window night closed".into()),
                        waiting_for: Some("step 2: 26 of 50 nodes healthy".into()),
                    }),
                    blocked: vec![
                        "outside maintenance window night, next opens 2025-03-01T22:00:00Z".into(),
                        "workload robot holds its update lock (mid-task)".into(),
                    ],
                    summary: "edge-1 runs revision 0123456789ab; it gets abcdef012345 in step 3 \
                              of rollout #3, once window night opens and robot releases its lock"
                        .into(),
                },
                DeploymentExplanation {
                    deployment: "lisbon".into(),
                    selects: false,
                    selector: "site=lisbon".into(),
                    failing_terms: vec!["site=lisbon (node has site=berlin)".into()],
                    shadowed: vec![],
                    shadows: vec![],
                    latest_revision: "1111111111112222".into(),
                    desired_revision: None,
                    applied_revision: None,
                    rollout: None,
                    blocked: vec![],
                    summary: "lisbon does not select edge-1".into(),
                },
                DeploymentExplanation {
                    deployment: "base".into(),
                    selects: true,
                    selector: String::new(),
                    failing_terms: vec![],
                    shadowed: vec![Shadowing {
                        workload: "web".into(),
                        deployment: "base".into(),
                        by: "web".into(),
                        conflict: true,
                        nodes: 1,
                    }],
                    shadows: vec![],
                    latest_revision: "3333333333334444".into(),
                    desired_revision: Some("3333333333334444".into()),
                    applied_revision: Some("3333333333334444".into()),
                    rollout: None,
                    blocked: vec![],
                    summary: "edge-1 runs the latest revision 333333333333".into(),
                },
            ],
        }
    }

    #[test]
    fn explanation_summary_first() {
        let expected = "\
Node:     edge-1
Status:   Ready, last seen 2025-03-01T11:59:57Z (3s ago)
Labels:   site=berlin
Windows:  night: closed, next opens 2025-03-01T22:00:00Z (in 10h)
Locks:    robot holds its update lock since 2025-03-01T11:55:00Z (5m ago): mid-task

deployment/web: edge-1 runs revision 0123456789ab; it gets abcdef012345 in step 3 of rollout #3, once window night opens and robot releases its lock
  Selects:      yes (selector site=berlin)
  Overrides:    web of deployment base
  Revisions:    latest abcdef012345, desired 0123456789ab, applied 0123456789ab
  Rollout:      #3 progressing; this node: step 3/4 (blocked), current step 2
  Reason:       window night closed
  Waiting for:  step 2: 26 of 50 nodes healthy
  Blocked:      outside maintenance window night, next opens 2025-03-01T22:00:00Z; workload robot holds its update lock (mid-task)

deployment/lisbon: lisbon does not select edge-1
  Selects:        no (selector site=lisbon)
  Failing terms:  site=lisbon (node has site=berlin)

deployment/base: edge-1 runs the latest revision 333333333333
  Selects:     yes (selector <all nodes>)
  Overridden:  web by deployment web (warning: same priority, decided by name)
  Revisions:   latest 333333333333, desired 333333333333, applied 333333333333
";
        assert_eq!(explanation_text(&explanation(), NOW), expected);
    }

    #[test]
    fn node_without_windows_locks_or_deployments() {
        let mut bare = explanation();
        bare.windows.clear();
        bare.window_open = true;
        bare.locks.clear();
        bare.deployments.clear();
        bare.last_seen = None;
        let expected = "\
Node:     edge-1
Status:   Ready, last seen never
Labels:   site=berlin
Windows:  none; rollouts may update the node at any time
Locks:    none

No deployment selects this node or defines anything for it.
";
        assert_eq!(explanation_text(&bare, NOW), expected);
        let mut open = explanation();
        open.window_open = true;
        assert_eq!(windows(&open, NOW), "night: open now");
        open.window_open = false;
        open.next_window_open = None;
        assert_eq!(windows(&open, NOW), "night: closed, no opening ahead");
    }
}
