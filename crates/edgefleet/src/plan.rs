//! `edgefleet plan -f PATH... [--out FILE]`: what applying the files would change, without
//! changing anything; and the plan file that `edgefleet apply --plan FILE` applies.
//!
//! The server computes the plan; this module loads the files (as `apply` does), renders the
//! answer compactly enough for fleets of ten thousand nodes (nodes with identical changes
//! are one group, long lists are cut with a count), and saves and reads plan files.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use anyhow::{Context, bail};
use edgefleet_core::hash::short;
use edgefleet_wire::api::ApplyAction;
use edgefleet_wire::manifest::{Amount, RolloutStrategy};
use edgefleet_wire::plan::{
    BlockedNode, ChangeGroup, ChangeKind, FieldChange, Plan, PlanRequest, PlannedDeployment,
    PlannedStep, PlannedWindow, Shadowing, WorkloadChange,
};

use crate::apply::{self, Intent, n_nodes};
use crate::cli::PlanArgs;
use crate::client::ApiClient;
use crate::human;
use crate::output::{self, note};

/// Change groups shown before the rest are summed up in one line.
const MAX_GROUPS: usize = 20;
/// Lines of blocked nodes shown before the rest are summed up in one line.
const MAX_BLOCKED_LINES: usize = 20;
/// Node names shown for a group before `and N more`.
const NAMES_SHOWN: usize = 3;
/// Longest field value shown in a change line.
const MAX_VALUE_CHARS: usize = 60;

pub async fn run(client: &ApiClient, args: &PlanArgs) -> anyhow::Result<()> {
    let documents = apply::load(&apply::expand_paths(&args.files)?, Intent::Plan)?;
    let request = PlanRequest {
        deployments: documents.deployments,
        windows: documents.windows,
    };
    let plan: Plan = client.post(&["v1", "plan"], &request).await?;
    if let Some(path) = &args.out {
        write_plan_file(&plan, path)?;
    }
    output::print(&plan, args.output.output, || render(&plan))?;
    if let Some(path) = &args.out {
        let path = crate::views::shell_word(&path.display().to_string());
        note(&format!(
            "saved plan to {path}; apply exactly this with: edgefleet apply --plan {path}"
        ));
    }
    Ok(())
}

/// Writes `plan` as JSON to `path` atomically: a temporary file next to it, flushed to
/// disk, then renamed over `path`, so a reader never sees half a plan.
pub fn write_plan_file(plan: &Plan, path: &Path) -> anyhow::Result<()> {
    let mut text = serde_json::to_string_pretty(plan).context("encoding the plan as JSON")?;
    text.push('\n');
    let Some(file_name) = path.file_name() else {
        bail!(
            "--out {}: expected a file name, such as plan.json",
            path.display()
        );
    };
    let dir = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let temporary = dir.join(format!(
        ".{}.tmp-{}",
        file_name.to_string_lossy(),
        std::process::id()
    ));
    let written =
        write_synced(&temporary, text.as_bytes()).and_then(|()| std::fs::rename(&temporary, path));
    if let Err(error) = written {
        let _ = std::fs::remove_file(&temporary);
        return Err(error).with_context(|| format!("saving the plan to {}", path.display()));
    }
    Ok(())
}

fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut file = std::fs::File::create(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// Reads a plan saved by `edgefleet plan --out`; anything else is an error naming the file.
pub fn read_plan_file(path: &Path) -> anyhow::Result<Plan> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the plan file {}", path.display()))?;
    parse_plan(&path.display().to_string(), &text)
}

fn parse_plan(name: &str, text: &str) -> anyhow::Result<Plan> {
    let how = "save one with `edgefleet plan -f PATH --out FILE`";
    if !text.trim_start().starts_with('{') {
        bail!("{name} is not an edgefleet plan: plans are JSON objects; {how}");
    }
    let plan: Plan = serde_json::from_str(text)
        .map_err(|e| anyhow::anyhow!("{name} is not an edgefleet plan: {e}; {how}"))?;
    if plan.request.deployments.is_empty() && plan.request.windows.is_empty() {
        bail!(
            "the plan in {name} holds no deployments and no maintenance windows; nothing to apply"
        );
    }
    Ok(plan)
}

/// The plan for a person: deployments and windows, the change groups, unaffected nodes,
/// blocked nodes, overrides and conflicts.
pub fn render(plan: &Plan) -> String {
    let mut out = format!(
        "Plan for a fleet of {}, computed {}\n\n",
        n_nodes(plan.basis.n_nodes),
        human::timestamp(plan.computed_at)
    );
    for deployment in &plan.deployments {
        let strategy = plan
            .request
            .deployments
            .iter()
            .find(|m| m.metadata.name == deployment.name)
            .map(|m| &m.spec.rollout);
        out.push_str(&deployment_lines(deployment, strategy));
    }
    for window in &plan.windows {
        out.push_str(&window_line(window));
    }
    out.push('\n');
    out.push_str(&changes_section(&plan.groups, plan.changed_nodes.len()));
    out.push_str(&format!(
        "\nUnaffected: {}\n",
        node_list(&plan.unaffected_nodes)
    ));
    if !plan.blocked.is_empty() {
        out.push('\n');
        out.push_str(&blocked_section(&plan.blocked));
    }
    let (conflicts, overrides): (Vec<&Shadowing>, Vec<&Shadowing>) =
        plan.shadowing.iter().partition(|s| s.conflict);
    if !overrides.is_empty() {
        out.push_str("\nOverrides:\n");
        for shadowing in overrides {
            out.push_str(&format!("  {}\n", override_text(shadowing)));
        }
    }
    if !conflicts.is_empty() {
        out.push_str("\nConflicts:\n");
        for shadowing in conflicts {
            out.push_str(&format!("  warning: {}\n", conflict_text(shadowing)));
        }
    }
    out
}

fn action_word(action: ApplyAction) -> &'static str {
    match action {
        ApplyAction::Created => "created",
        ApplyAction::Updated => "updated",
        ApplyAction::Unchanged => "unchanged",
    }
}

fn deployment_lines(deployment: &PlannedDeployment, strategy: Option<&RolloutStrategy>) -> String {
    let to = short(&deployment.to_revision);
    let revision = match deployment.from_revision.as_deref() {
        Some(from) if from != deployment.to_revision => format!("{} → {to}", short(from)),
        _ => to.to_owned(),
    };
    let mut out = format!(
        "deployment/{} {}: revision {revision}\n  {} selected, {} changed\n",
        deployment.name,
        action_word(deployment.action),
        n_nodes(deployment.selected_nodes),
        deployment.changed_nodes
    );
    if deployment.steps.is_empty() {
        return out;
    }
    if deployment.steps.iter().any(|s| s.partition.is_some()) {
        out.push_str("  rollout:\n");
        let key = strategy.and_then(|s| s.partition_by.as_deref());
        for step in &deployment.steps {
            out.push_str(&format!("    {}\n", partitioned_step(step, key)));
        }
    } else {
        out.push_str(&format!(
            "  rollout: {}\n",
            steps_summary(&deployment.steps, strategy)
        ));
    }
    out
}

/// `step 2: batch of 10 in site=berlin`.
fn partitioned_step(step: &PlannedStep, partition_key: Option<&str>) -> String {
    let place = match (step.partition.as_deref(), partition_key) {
        (Some(value), Some(key)) if !value.contains('=') => format!(" in {key}={value}"),
        (Some(value), _) => format!(" in {value}"),
        (None, _) => String::new(),
    };
    format!(
        "step {}: {} of {}{place}",
        step.number, step.kind, step.nodes
    )
}

/// `canary 1 node, then 4 batches of 25% (2500 nodes each)`.
fn steps_summary(steps: &[PlannedStep], strategy: Option<&RolloutStrategy>) -> String {
    let mut parts = Vec::new();
    for canary in steps.iter().filter(|s| s.kind == "canary") {
        let manual = strategy
            .and_then(|s| s.canary.as_ref())
            .is_some_and(|c| c.manual_promotion);
        parts.push(format!(
            "canary {}{}",
            n_nodes(canary.nodes),
            if manual {
                " (then waits for `edgefleet rollout promote`)"
            } else {
                ""
            }
        ));
    }
    let batches: Vec<u32> = steps
        .iter()
        .filter(|s| s.kind != "canary")
        .map(|s| s.nodes)
        .collect();
    if let Some(&largest) = batches.iter().max() {
        let count = match batches.len() {
            1 => "1 batch".to_owned(),
            n => format!("{n} batches"),
        };
        let all_equal = batches.iter().all(|&n| n == largest);
        let each = if batches.len() == 1 { "" } else { " each" };
        let size = match strategy.map(|s| s.batch_size) {
            Some(Amount::Percent(percent)) if all_equal => {
                format!("{percent}% ({}{each})", n_nodes(largest))
            }
            Some(Amount::Percent(percent)) => {
                format!("{percent}% (up to {}{each})", n_nodes(largest))
            }
            _ if all_equal => n_nodes(largest),
            _ => format!("up to {}", n_nodes(largest)),
        };
        parts.push(format!("{count} of {size}"));
    }
    parts.join(", then ")
}

fn window_line(window: &PlannedWindow) -> String {
    format!(
        "window/{} {}: {} selected\n",
        window.name,
        action_word(window.action),
        n_nodes(window.selected_nodes)
    )
}

/// `3 nodes (edge-1, edge-2, edge-3)`, `10000 nodes (edge-1, edge-2, edge-3 and 9997 more)`.
pub fn node_list(nodes: &[String]) -> String {
    if nodes.is_empty() {
        return "0 nodes".to_owned();
    }
    let shown = nodes
        .iter()
        .take(NAMES_SHOWN)
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(", ");
    let rest = nodes.len().saturating_sub(NAMES_SHOWN);
    let more = if rest > 0 {
        format!(" and {rest} more")
    } else {
        String::new()
    };
    format!("{} ({shown}{more})", n_nodes(nodes.len() as u64))
}

fn changes_section(groups: &[ChangeGroup], n_changed: usize) -> String {
    if groups.is_empty() {
        return "Changes: none; no node's workloads change\n".to_owned();
    }
    let n_groups = match groups.len() {
        1 => "1 group".to_owned(),
        n => format!("{n} groups"),
    };
    let mut out = format!("Changes: {} in {n_groups}\n", n_nodes(n_changed as u64));
    for group in groups.iter().take(MAX_GROUPS) {
        out.push_str(&format!("  {}\n", node_list(&group.nodes)));
        for change in &group.changes {
            for line in change_lines(change) {
                out.push_str(&format!("    {line}\n"));
            }
        }
    }
    let rest = &groups[groups.len().min(MAX_GROUPS)..];
    if !rest.is_empty() {
        let n_rest: usize = rest.iter().map(|g| g.nodes.len()).sum();
        out.push_str(&format!(
            "  ... and {} more groups of {} (-o json lists them all)\n",
            rest.len(),
            n_nodes(n_rest as u64)
        ));
    }
    out
}

/// `+ sidecar (deployment web)`, `- legacy (deployment old)`, and one `~ web: FIELD: A → B`
/// line per changed field.
pub fn change_lines(change: &WorkloadChange) -> Vec<String> {
    let name = &change.workload;
    let from_deployment = |d: &Option<String>| {
        d.as_deref()
            .map(|d| format!(" (deployment {d})"))
            .unwrap_or_default()
    };
    match change.kind {
        ChangeKind::Added => vec![format!(
            "+ {name}{}",
            from_deployment(&change.to_deployment)
        )],
        ChangeKind::Removed => vec![format!(
            "- {name}{}",
            from_deployment(&change.from_deployment)
        )],
        ChangeKind::Changed => {
            let mut lines = Vec::new();
            // Servers that list the move among the fields get it once.
            let move_listed = change.fields.iter().any(|f| f.path == "deployment");
            if let (Some(from), Some(to)) = (&change.from_deployment, &change.to_deployment)
                && from != to
                && !move_listed
            {
                lines.push(format!("~ {name}: deployment: {from} → {to}"));
            }
            lines.extend(
                change
                    .fields
                    .iter()
                    .map(|field| format!("~ {name}: {}", field_text(field))),
            );
            if lines.is_empty() {
                lines.push(format!("~ {name}"));
            }
            lines
        }
    }
}

fn field_text(field: &FieldChange) -> String {
    let value = |v: &Option<String>| v.as_deref().map_or_else(|| "(none)".to_owned(), cut);
    format!(
        "{}: {} → {}",
        field.path,
        value(&field.from),
        value(&field.to)
    )
}

fn cut(value: &str) -> String {
    let value = value.replace('\n', "\\n");
    match value.char_indices().nth(MAX_VALUE_CHARS - 3) {
        Some((at, _)) if value.chars().count() > MAX_VALUE_CHARS => {
            format!("{}...", &value[..at])
        }
        _ => value,
    }
}

/// Blocked nodes grouped by their reasons, largest group first.
fn blocked_section(blocked: &[BlockedNode]) -> String {
    let mut by_reason: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for node in blocked {
        let reason = node
            .blockers
            .iter()
            .map(|b| b.describe())
            .collect::<Vec<_>>()
            .join("; ");
        by_reason.entry(reason).or_default().push(node.node.clone());
    }
    let mut groups: Vec<(String, Vec<String>)> = by_reason.into_iter().collect();
    groups.sort_by(|a, b| b.1.len().cmp(&a.1.len()).then_with(|| a.0.cmp(&b.0)));
    let mut out = format!(
        "Blocked: {} will not be updated right away\n",
        n_nodes(blocked.len() as u64)
    );
    for (reason, mut nodes) in groups.iter().take(MAX_BLOCKED_LINES).cloned() {
        nodes.sort();
        let who = match nodes.as_slice() {
            [one] => one.clone(),
            _ => node_list(&nodes),
        };
        out.push_str(&format!("  {who}: {reason}\n"));
    }
    let rest = &groups[groups.len().min(MAX_BLOCKED_LINES)..];
    if !rest.is_empty() {
        let n_rest: usize = rest.iter().map(|(_, nodes)| nodes.len()).sum();
        out.push_str(&format!(
            "  ... and {} held back for {} other reasons (-o json lists them all)\n",
            n_nodes(n_rest as u64),
            rest.len()
        ));
    }
    out
}

/// `web: deployment berlin overrides deployment base on 20 nodes (higher priority)`.
pub fn override_text(shadowing: &Shadowing) -> String {
    format!(
        "{}: deployment {} overrides deployment {} on {} (higher priority)",
        shadowing.workload,
        shadowing.by,
        shadowing.deployment,
        n_nodes(shadowing.nodes)
    )
}

/// `web: deployments a and b have the same priority; a wins on 5 nodes only by its name ...`.
pub fn conflict_text(shadowing: &Shadowing) -> String {
    format!(
        "{}: deployments {} and {} have the same priority; {} wins on {} only by its name \
         (give one of them a higher priority)",
        shadowing.workload,
        shadowing.by,
        shadowing.deployment,
        shadowing.by,
        n_nodes(shadowing.nodes)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgefleet_wire::manifest::{
        CanaryStrategy, DeploymentManifest, DeploymentSpec, WorkloadSpec,
    };
    use edgefleet_wire::node::UpdateLock;
    use edgefleet_wire::plan::{Blocker, PlanBasis};
    use time::macros::datetime;

    fn names(prefix: &str, range: std::ops::Range<u32>) -> Vec<String> {
        range.map(|i| format!("{prefix}{i:05}")).collect()
    }

    fn manifest(name: &str, rollout: RolloutStrategy) -> DeploymentManifest {
        DeploymentManifest::new(
            name,
            DeploymentSpec {
                streams: Vec::new(),
                selector: Default::default(),
                priority: 0,
                workloads: vec![WorkloadSpec::process("web", "/bin/web")],
                rollout,
            },
        )
    }

    fn step(number: u32, kind: &str, partition: Option<&str>, nodes: u32) -> PlannedStep {
        PlannedStep {
            number,
            kind: kind.into(),
            partition: partition.map(str::to_owned),
            nodes,
        }
    }

    fn big_plan() -> Plan {
        let all = names("edge-", 0..10_000);
        let canary_rollout = RolloutStrategy {
            canary: Some(CanaryStrategy {
                size: Amount::Count(1),
                manual_promotion: false,
            }),
            ..RolloutStrategy::default()
        };
        let mut steps = vec![step(1, "canary", None, 1)];
        steps.extend(
            [2500, 2500, 2500, 2499]
                .iter()
                .enumerate()
                .map(|(i, &n)| step(i as u32 + 2, "batch", None, n)),
        );
        Plan {
            computed_at: datetime!(2025-03-01 12:00:00 UTC),
            basis: PlanBasis {
                n_nodes: 10_002,
                ..PlanBasis::default()
            },
            request: PlanRequest {
                deployments: vec![manifest("web", canary_rollout)],
                windows: vec![],
            },
            deployments: vec![PlannedDeployment {
                name: "web".into(),
                action: ApplyAction::Updated,
                from_revision: Some("0123456789abcdef".into()),
                to_revision: "abcdef0123456789".into(),
                selected_nodes: 10_000,
                changed_nodes: 10_000,
                steps,
            }],
            windows: vec![],
            changed_nodes: all.clone(),
            groups: vec![
                ChangeGroup {
                    nodes: all[..9_000].to_vec(),
                    changes: vec![WorkloadChange {
                        workload: "web".into(),
                        kind: ChangeKind::Changed,
                        from_deployment: Some("web".into()),
                        to_deployment: Some("web".into()),
                        fields: vec![FieldChange {
                            path: "args".into(),
                            from: Some("[--mode, v1]".into()),
                            to: Some("[--mode, v2]".into()),
                        }],
                    }],
                },
                ChangeGroup {
                    nodes: all[9_000..].to_vec(),
                    changes: vec![
                        WorkloadChange {
                            workload: "web".into(),
                            kind: ChangeKind::Changed,
                            from_deployment: Some("web".into()),
                            to_deployment: Some("web".into()),
                            fields: vec![
                                FieldChange {
                                    path: "args".into(),
                                    from: Some("[--mode, v1]".into()),
                                    to: Some("[--mode, v2]".into()),
                                },
                                FieldChange {
                                    path: "env.DEBUG".into(),
                                    from: None,
                                    to: Some("1".into()),
                                },
                            ],
                        },
                        WorkloadChange {
                            workload: "sidecar".into(),
                            kind: ChangeKind::Added,
                            from_deployment: None,
                            to_deployment: Some("web".into()),
                            fields: vec![],
                        },
                        WorkloadChange {
                            workload: "legacy".into(),
                            kind: ChangeKind::Removed,
                            from_deployment: Some("old".into()),
                            to_deployment: None,
                            fields: vec![],
                        },
                    ],
                },
            ],
            unaffected_nodes: vec!["gw-1".into(), "gw-2".into()],
            blocked: vec![],
            shadowing: vec![],
        }
    }

    #[test]
    fn ten_thousand_nodes_in_two_groups_fit_in_a_few_lines() {
        let expected = "\
Plan for a fleet of 10002 nodes, computed 2025-03-01T12:00:00Z

deployment/web updated: revision 0123456789ab → abcdef012345
  10000 nodes selected, 10000 changed
  rollout: canary 1 node, then 4 batches of 25% (up to 2500 nodes each)

Changes: 10000 nodes in 2 groups
  9000 nodes (edge-00000, edge-00001, edge-00002 and 8997 more)
    ~ web: args: [--mode, v1] → [--mode, v2]
  1000 nodes (edge-09000, edge-09001, edge-09002 and 997 more)
    ~ web: args: [--mode, v1] → [--mode, v2]
    ~ web: env.DEBUG: (none) → 1
    + sidecar (deployment web)
    - legacy (deployment old)

Unaffected: 2 nodes (gw-1, gw-2)
";
        assert_eq!(render(&big_plan()), expected);
    }

    #[test]
    fn blocked_nodes_overrides_and_conflicts() {
        let mut plan = big_plan();
        plan.groups.truncate(1);
        plan.groups[0].nodes = vec!["edge-1".into()];
        plan.changed_nodes = vec!["edge-1".into()];
        plan.unaffected_nodes = vec![];
        plan.deployments[0].action = ApplyAction::Created;
        plan.deployments[0].from_revision = None;
        plan.deployments[0].selected_nodes = 1;
        plan.deployments[0].changed_nodes = 1;
        plan.deployments[0].steps = vec![step(1, "batch", None, 1)];
        plan.request.deployments[0].spec.rollout = RolloutStrategy::default();
        plan.windows = vec![PlannedWindow {
            name: "night".into(),
            action: ApplyAction::Created,
            selected_nodes: 3,
        }];
        let outside = Blocker::OutsideWindow {
            windows: vec!["night".into()],
            next_open: Some(datetime!(2025-03-01 22:00:00 UTC)),
        };
        plan.blocked = vec![
            BlockedNode {
                node: "edge-3".into(),
                blockers: vec![outside.clone()],
            },
            BlockedNode {
                node: "edge-2".into(),
                blockers: vec![outside],
            },
            BlockedNode {
                node: "edge-9".into(),
                blockers: vec![
                    Blocker::Offline { since: None },
                    Blocker::Locked {
                        lock: UpdateLock {
                            workload: "robot".into(),
                            reason: "mid-task".into(),
                            since: datetime!(2025-03-01 11:00:00 UTC),
                        },
                    },
                ],
            },
        ];
        plan.shadowing = vec![
            Shadowing {
                workload: "web".into(),
                deployment: "base".into(),
                by: "web".into(),
                conflict: false,
                nodes: 20,
            },
            Shadowing {
                workload: "agent".into(),
                deployment: "b".into(),
                by: "a".into(),
                conflict: true,
                nodes: 1,
            },
        ];
        let expected = "\
Plan for a fleet of 10002 nodes, computed 2025-03-01T12:00:00Z

deployment/web created: revision abcdef012345
  1 node selected, 1 changed
  rollout: 1 batch of 25% (1 node)
window/night created: 3 nodes selected

Changes: 1 node in 1 group
  1 node (edge-1)
    ~ web: args: [--mode, v1] → [--mode, v2]

Unaffected: 0 nodes

Blocked: 3 nodes will not be updated right away
  2 nodes (edge-2, edge-3): outside maintenance window night, next opens 2025-03-01T22:00:00Z
  edge-9: never connected; converges when it connects; workload robot holds its update lock (mid-task)

Overrides:
  web: deployment web overrides deployment base on 20 nodes (higher priority)

Conflicts:
  warning: agent: deployments a and b have the same priority; a wins on 1 node only by its name (give one of them a higher priority)
";
        assert_eq!(render(&plan), expected);
    }

    #[test]
    fn partitioned_rollouts_get_a_line_per_step() {
        let strategy = RolloutStrategy {
            partition_by: Some("site".into()),
            canary: Some(CanaryStrategy {
                size: Amount::Count(1),
                manual_promotion: true,
            }),
            ..RolloutStrategy::default()
        };
        let deployment = PlannedDeployment {
            name: "web".into(),
            action: ApplyAction::Unchanged,
            from_revision: Some("abcdef0123456789".into()),
            to_revision: "abcdef0123456789".into(),
            selected_nodes: 21,
            changed_nodes: 0,
            steps: vec![
                step(1, "canary", Some("berlin"), 1),
                step(2, "batch", Some("berlin"), 10),
                step(3, "batch", Some("lisbon"), 10),
            ],
        };
        assert_eq!(
            deployment_lines(&deployment, Some(&strategy)),
            "deployment/web unchanged: revision abcdef012345\n  21 nodes selected, 0 changed\n  rollout:\n    \
             step 1: canary of 1 in site=berlin\n    step 2: batch of 10 in site=berlin\n    \
             step 3: batch of 10 in site=lisbon\n"
        );
        let unpartitioned = [step(1, "canary", None, 1), step(2, "batch", None, 5)];
        assert_eq!(
            steps_summary(&unpartitioned, Some(&strategy)),
            "canary 1 node (then waits for `edgefleet rollout promote`), then 1 batch of 25% (5 nodes)"
        );
        let counted = RolloutStrategy {
            batch_size: Amount::Count(10),
            ..RolloutStrategy::default()
        };
        let batches = [step(1, "batch", None, 10), step(2, "batch", None, 4)];
        assert_eq!(
            steps_summary(&batches, Some(&counted)),
            "2 batches of up to 10 nodes"
        );
        assert_eq!(steps_summary(&batches[..1], None), "1 batch of 10 nodes");
    }

    #[test]
    fn a_workload_moving_between_deployments_is_shown_once() {
        let mut change = WorkloadChange {
            workload: "web".into(),
            kind: ChangeKind::Changed,
            from_deployment: Some("web".into()),
            to_deployment: Some("base".into()),
            fields: vec![FieldChange {
                path: "args".into(),
                from: Some("[\"1000\"]".into()),
                to: Some("[\"3000\"]".into()),
            }],
        };
        assert_eq!(
            change_lines(&change),
            [
                "~ web: deployment: web → base",
                "~ web: args: [\"1000\"] → [\"3000\"]"
            ]
        );
        change.fields.insert(
            0,
            FieldChange {
                path: "deployment".into(),
                from: Some("web".into()),
                to: Some("base".into()),
            },
        );
        assert_eq!(
            change_lines(&change),
            [
                "~ web: deployment: web → base",
                "~ web: args: [\"1000\"] → [\"3000\"]"
            ]
        );
        change.fields.clear();
        change.to_deployment = Some("web".into());
        assert_eq!(change_lines(&change), ["~ web"]);
    }

    #[test]
    fn many_groups_are_cut_with_a_count() {
        let groups: Vec<ChangeGroup> = (0..25)
            .map(|i| ChangeGroup {
                nodes: vec![format!("n{i}")],
                changes: vec![],
            })
            .collect();
        let text = changes_section(&groups, 25);
        assert_eq!(text.lines().count(), 1 + MAX_GROUPS + 1, "{text}");
        assert!(
            text.ends_with("  ... and 5 more groups of 5 nodes (-o json lists them all)\n"),
            "{text}"
        );
        assert_eq!(
            changes_section(&[], 0),
            "Changes: none; no node's workloads change\n"
        );
        assert_eq!(cut(&"x".repeat(100)).chars().count(), MAX_VALUE_CHARS);
    }

    #[test]
    fn plan_files_round_trip_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("plan.json");
        std::fs::write(&path, "old").unwrap();
        let plan = big_plan();
        write_plan_file(&plan, &path).unwrap();
        assert_eq!(read_plan_file(&path).unwrap(), plan);
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers, vec![std::ffi::OsString::from("plan.json")]);
        let error = write_plan_file(&plan, &dir.path().join("missing/plan.json")).unwrap_err();
        assert!(
            format!("{error:#}").starts_with(&format!(
                "saving the plan to {}",
                dir.path().join("missing/plan.json").display()
            )),
            "{error:#}"
        );
    }

    #[test]
    fn files_that_are_not_plans_are_named() {
        let error = parse_plan("web.yaml", "apiVersion: edgefleet.io/v1\n").unwrap_err();
        assert_eq!(
            error.to_string(),
            "web.yaml is not an edgefleet plan: plans are JSON objects; save one with \
             `edgefleet plan -f PATH --out FILE`"
        );
        let error = parse_plan("r.json", r#"{"results": []}"#).unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("r.json is not an edgefleet plan: missing field"),
            "{error}"
        );
        let mut empty = big_plan();
        empty.request.deployments.clear();
        let text = serde_json::to_string(&empty).unwrap();
        assert_eq!(
            parse_plan("p.json", &text).unwrap_err().to_string(),
            "the plan in p.json holds no deployments and no maintenance windows; nothing to apply"
        );
        let error = read_plan_file(Path::new("/nonexistent/plan.json")).unwrap_err();
        assert!(
            format!("{error:#}").starts_with("reading the plan file /nonexistent/plan.json"),
            "{error:#}"
        );
    }
}
