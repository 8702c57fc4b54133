//! `edgefleet rollout status|pause|resume|promote|abort|undo|history`: follow and steer the
//! rollout of a deployment's newest revision.
//!
//! The renderers are pure functions of a `RolloutStatus` (and `now`); `watch` is the only
//! loop: it polls once a second, redraws one progress line on a terminal or prints a line
//! when something changed otherwise, and ends when the rollout does.

use std::io::IsTerminal;
use std::time::Duration;

use edgefleet_core::hash::short;
use edgefleet_wire::api::ApplyResponse;
use edgefleet_wire::rollout::{
    RolloutCounts, RolloutNodeState, RolloutNodeStatus, RolloutPhase, RolloutStatus, UndoRequest,
};
use time::OffsetDateTime;

use crate::apply;
use crate::cli::{RolloutCommand, RolloutStatusArgs};
use crate::client::{ApiClient, ClientError};
use crate::human;
use crate::output::{self, note};
use crate::table::Table;
use crate::views::{Fields, section};

const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// Failed polls in a row (the server restarting, a network blip) a watch rides out.
const MAX_POLL_FAILURES: u32 = 30;
const BAR_WIDTH: usize = 20;

pub async fn run(client: &ApiClient, command: &RolloutCommand) -> anyhow::Result<()> {
    match command {
        RolloutCommand::Status(args) if args.watch => watch(client, &args.name).await,
        RolloutCommand::Status(args) => status(client, args).await,
        RolloutCommand::Pause { name } => act(client, name, "pause", "paused").await,
        RolloutCommand::Resume { name } => act(client, name, "resume", "resumed").await,
        RolloutCommand::Promote { name } => act(client, name, "promote", "promoted").await,
        RolloutCommand::Abort { name } => act(client, name, "abort", "aborted").await,
        RolloutCommand::Undo { name, to_revision } => {
            let request = UndoRequest {
                to_revision: *to_revision,
            };
            let response: ApplyResponse = client
                .post(&["v1", "deployments", name, "rollout", "undo"], &request)
                .await?;
            output::stdout(&apply::response_lines(&response))
        }
        RolloutCommand::History { name, output } => {
            let rollouts: Vec<RolloutStatus> = client
                .get(&["v1", "deployments", name, "rollouts"], &[])
                .await?;
            output::print(&rollouts, output.output, || history_table(&rollouts))
        }
    }
}

async fn fetch(client: &ApiClient, name: &str, nodes: bool) -> Result<RolloutStatus, ClientError> {
    client
        .get(
            &["v1", "deployments", name, "rollout"],
            &[("nodes", nodes.to_string())],
        )
        .await
}

async fn status(client: &ApiClient, args: &RolloutStatusArgs) -> anyhow::Result<()> {
    let status = fetch(client, &args.name, args.nodes).await?;
    let now = OffsetDateTime::now_utc();
    output::print(&status, args.output.output, || {
        let mut text = status_text(&status, now);
        if args.nodes {
            text.push('\n');
            text.push_str(&unhealthy_nodes_section(&status));
        }
        text
    })
}

async fn act(client: &ApiClient, name: &str, action: &str, done: &str) -> anyhow::Result<()> {
    let status: RolloutStatus = client
        .post(
            &["v1", "deployments", name, "rollout", action],
            &serde_json::json!({}),
        )
        .await?;
    output::stdout(&format!(
        "rollout #{} of {} {done}: {}\n",
        status.number,
        status.deployment,
        summary(&status)
    ))
}

/// Polls until the rollout finishes: `Ok` if it succeeded, an error with the reason if it
/// did not; Ctrl-C stops watching (not the rollout) and is not an error.
async fn watch(client: &ApiClient, name: &str) -> anyhow::Result<()> {
    let terminal = std::io::stdout().is_terminal();
    let width = terminal_width();
    let stop = crate::shutdown::requested()?;
    tokio::pin!(stop);
    let mut watched: Option<u32> = None;
    let mut shown = String::new();
    let mut failures = 0;
    loop {
        let fetched = tokio::select! {
            () = &mut stop => return stopped_watching(terminal, name),
            fetched = fetch(client, name, false) => fetched,
        };
        match fetched {
            Ok(status) => {
                failures = 0;
                let number = *watched.get_or_insert(status.number);
                if number != status.number {
                    end_line(terminal)?;
                    anyhow::bail!(
                        "rollout #{number} of {name} was superseded by rollout #{} (revision {})",
                        status.number,
                        revision(Some(&status.to_revision), Some(status.to_revision_number))
                    );
                }
                if shown.is_empty() {
                    output::stdout(&format!("{}\n", header_line(&status)))?;
                }
                let line = if terminal {
                    progress_line(&status, width)
                } else {
                    plain_line(&status)
                };
                if line != shown {
                    if terminal {
                        output::stdout(&format!("\r\x1b[2K{line}"))?;
                    } else {
                        output::stdout(&format!("{line}\n"))?;
                    }
                    shown = line;
                }
                if !status.phase.is_active() {
                    end_line(terminal)?;
                    return match outcome(&status) {
                        Ok(line) => output::stdout(&format!("{line}\n")),
                        Err(reason) => Err(anyhow::anyhow!(reason)),
                    };
                }
            }
            Err(error) if is_transient(&error) && failures < MAX_POLL_FAILURES => {
                failures += 1;
                if failures == 1 {
                    end_line(terminal)?;
                    note(&format!("{error}; retrying every second"));
                    shown.clear();
                }
            }
            Err(error) => {
                end_line(terminal)?;
                return Err(error.into());
            }
        }
        tokio::select! {
            () = &mut stop => return stopped_watching(terminal, name),
            () = tokio::time::sleep(POLL_INTERVAL) => {}
        }
    }
}

/// Ends a progress line that was drawn without a newline.
fn end_line(terminal: bool) -> anyhow::Result<()> {
    if terminal {
        output::stdout("\n")?;
    }
    Ok(())
}

fn stopped_watching(terminal: bool, name: &str) -> anyhow::Result<()> {
    end_line(terminal)?;
    note(&format!(
        "stopped watching; the rollout goes on (edgefleet rollout status {name})"
    ));
    Ok(())
}

fn is_transient(error: &ClientError) -> bool {
    matches!(
        error,
        ClientError::Unreachable { .. } | ClientError::Timeout { .. } | ClientError::Other { .. }
    )
}

/// `COLUMNS` when the shell exports it, else 80.
fn terminal_width() -> usize {
    std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.trim().parse::<usize>().ok())
        .filter(|&c| c >= 20)
        .unwrap_or(80)
}

/// `0123456789ab (#2)`; `none` without a hash.
fn revision(hash: Option<&str>, number: Option<u32>) -> String {
    match (hash, number) {
        (Some(hash), Some(number)) => format!("{} (#{number})", short(hash)),
        (Some(hash), None) => short(hash).to_owned(),
        (None, _) => "none".to_owned(),
    }
}

fn revisions(status: &RolloutStatus) -> String {
    format!(
        "{} → {}",
        revision(status.from_revision.as_deref(), status.from_revision_number),
        revision(Some(&status.to_revision), Some(status.to_revision_number))
    )
}

/// `progressing` or `progressing (paused)`.
fn phase(status: &RolloutStatus) -> String {
    if status.paused {
        format!("{} (paused)", status.phase.as_str())
    } else {
        status.phase.as_str().to_owned()
    }
}

fn step_position(status: &RolloutStatus) -> String {
    format!("step {}/{}", status.current_step, status.steps.len())
}

/// `52/100 healthy, 10 updating, 1 failed`: the counts that are not zero.
fn counts_summary(counts: &RolloutCounts) -> String {
    let mut parts = vec![format!("{}/{} healthy", counts.healthy, counts.nodes)];
    for (n, what) in [
        (counts.updating, "updating"),
        (counts.failed, "failed"),
        (counts.offline, "offline"),
        (counts.blocked, "blocked"),
        (counts.waiting, "waiting"),
        (counts.rolled_back, "rolled back"),
    ] {
        if n > 0 {
            parts.push(format!("{n} {what}"));
        }
    }
    parts.join(", ")
}

/// Every count, zeros included: `100 nodes: 52 healthy, 10 updating, 0 failed, ...`.
fn totals(counts: &RolloutCounts) -> String {
    format!(
        "{}: {} healthy, {} updating, {} failed, {} offline, {} blocked, {} waiting, {} rolled back",
        apply::n_nodes(counts.nodes),
        counts.healthy,
        counts.updating,
        counts.failed,
        counts.offline,
        counts.blocked,
        counts.waiting,
        counts.rolled_back
    )
}

/// `progressing, step 2/6, 52/100 healthy, 10 updating`.
pub fn summary(status: &RolloutStatus) -> String {
    format!(
        "{}, {}, {}",
        phase(status),
        step_position(status),
        counts_summary(&status.counts)
    )
}

/// `rollout #3 of web: 0123456789ab (#2) → abcdef012345 (#3)`.
pub fn header_line(status: &RolloutStatus) -> String {
    format!(
        "rollout #{} of {}: {}",
        status.number,
        status.deployment,
        revisions(status)
    )
}

/// One line for logs, printed by `--watch` whenever it changes.
pub fn plain_line(status: &RolloutStatus) -> String {
    let mut line = summary(status);
    if let Some(waiting_for) = &status.waiting_for {
        line.push_str("; waiting for: ");
        line.push_str(waiting_for);
    }
    line
}

/// `[##########..........] 52/100 healthy  step 3/6  waiting for: ...`, at most `width - 1`
/// characters so it never wraps (a wrapped line cannot be redrawn with `\r`).
pub fn progress_line(status: &RolloutStatus, width: usize) -> String {
    let counts = &status.counts;
    let filled = if counts.nodes == 0 {
        0
    } else {
        (counts.healthy.min(counts.nodes) as usize * BAR_WIDTH) / counts.nodes as usize
    };
    let mut line = format!(
        "[{}{}] {}/{} healthy",
        "#".repeat(filled),
        ".".repeat(BAR_WIDTH - filled),
        counts.healthy,
        counts.nodes
    );
    if counts.failed > 0 {
        line.push_str(&format!("  {} failed", counts.failed));
    }
    line.push_str(&format!("  {}", step_position(status)));
    if status.paused || status.phase != RolloutPhase::Progressing {
        line.push_str(&format!("  {}", phase(status)));
    }
    if let Some(waiting_for) = &status.waiting_for {
        line.push_str(&format!("  waiting for: {waiting_for}"));
    }
    let max = width.saturating_sub(1);
    if line.chars().count() > max {
        line = line.chars().take(max.saturating_sub(3)).collect::<String>() + "...";
    }
    line
}

/// How a finished rollout ended: the line to print when it succeeded, the error otherwise.
pub fn outcome(status: &RolloutStatus) -> Result<String, String> {
    let which = format!("rollout #{} of {}", status.number, status.deployment);
    let reason = status.abort_reason.as_deref().unwrap_or("no reason given");
    match status.phase {
        RolloutPhase::Succeeded => Ok(format!(
            "{which} succeeded: {}",
            counts_summary(&status.counts)
        )),
        RolloutPhase::Aborted => Err(format!("{which} was aborted: {reason}")),
        RolloutPhase::RolledBack => Err(format!("{which} was aborted and rolled back: {reason}")),
        RolloutPhase::Superseded => Err(format!(
            "{which} was superseded: a newer revision was applied before it finished"
        )),
        active => Err(format!("{which} is still {}", active.as_str())),
    }
}

/// The human view of `rollout status`.
pub fn status_text(status: &RolloutStatus, now: OffsetDateTime) -> String {
    let mut fields = Fields::new("");
    fields
        .add(
            "Rollout",
            format!("#{} of {}", status.number, status.deployment),
        )
        .add("Revisions", revisions(status))
        .add("Phase", phase(status))
        .add(
            "Step",
            format!("{} of {}", status.current_step, status.steps.len()),
        );
    if let Some(waiting_for) = &status.waiting_for {
        fields.add("Waiting for", waiting_for.clone());
    }
    if let Some(reason) = &status.abort_reason {
        fields.add("Abort reason", reason.clone());
    }
    fields
        .add("Nodes", totals(&status.counts))
        .add(
            "Started",
            human::timestamp_with_age(Some(status.started_at), now),
        )
        .add(
            "Updated",
            human::timestamp_with_age(Some(status.updated_at), now),
        );
    if let Some(finished) = status.finished_at {
        fields.add("Finished", human::timestamp_with_age(Some(finished), now));
    }
    let mut steps = Table::new([
        "STEP",
        "KIND",
        "PARTITION",
        "STATE",
        "NODES",
        "HEALTHY",
        "UPDATING",
        "FAILED",
        "OFFLINE",
        "BLOCKED",
        "WAITING",
        "ROLLED-BACK",
    ]);
    for step in &status.steps {
        let c = &step.counts;
        steps.row([
            step.number.to_string(),
            step.kind.clone(),
            step.partition.clone().unwrap_or_else(|| "-".to_owned()),
            step.state.clone(),
            c.nodes.to_string(),
            c.healthy.to_string(),
            c.updating.to_string(),
            c.failed.to_string(),
            c.offline.to_string(),
            c.blocked.to_string(),
            c.waiting.to_string(),
            c.rolled_back.to_string(),
        ]);
    }
    format!("{}\n{}", fields.render(), section("Steps", &steps))
}

/// Where a state sorts in the `--nodes` list: what needs attention first.
fn attention(state: RolloutNodeState) -> u8 {
    match state {
        RolloutNodeState::Failed => 0,
        RolloutNodeState::RolledBack => 1,
        RolloutNodeState::Blocked => 2,
        RolloutNodeState::Offline => 3,
        RolloutNodeState::Updating => 4,
        RolloutNodeState::Waiting => 5,
        RolloutNodeState::Healthy => 6,
    }
}

/// `rollout status --nodes`: every node that is not healthy, failed ones first.
pub fn unhealthy_nodes_section(status: &RolloutStatus) -> String {
    let mut nodes: Vec<&RolloutNodeStatus> = status
        .nodes
        .iter()
        .filter(|n| n.state != RolloutNodeState::Healthy)
        .collect();
    nodes.sort_by(|a, b| {
        (attention(a.state), a.step, &a.node).cmp(&(attention(b.state), b.step, &b.node))
    });
    let title = format!(
        "Nodes not healthy ({} of {})",
        nodes.len(),
        status.nodes.len()
    );
    let mut table = Table::new(["NODE", "STEP", "STATE", "REASON"]);
    for node in nodes {
        table.row([
            node.node.clone(),
            node.step.to_string(),
            node.state.as_str().to_owned(),
            node.reason.clone().unwrap_or_else(|| "-".to_owned()),
        ]);
    }
    section(&title, &table)
}

/// `rollout history`: one row per rollout, as the server orders them (newest first).
pub fn history_table(rollouts: &[RolloutStatus]) -> String {
    let mut table = Table::new([
        "NUMBER", "FROM", "TO", "PHASE", "STARTED", "FINISHED", "REASON",
    ]);
    for rollout in rollouts {
        table.row([
            rollout.number.to_string(),
            match rollout.from_revision.as_deref() {
                Some(hash) => revision(Some(hash), rollout.from_revision_number),
                None => "-".to_owned(),
            },
            revision(Some(&rollout.to_revision), Some(rollout.to_revision_number)),
            phase(rollout),
            human::timestamp(rollout.started_at),
            rollout
                .finished_at
                .map_or_else(|| "-".to_owned(), human::timestamp),
            rollout
                .abort_reason
                .clone()
                .unwrap_or_else(|| "-".to_owned()),
        ]);
    }
    table.render()
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgefleet_wire::rollout::RolloutStepStatus;
    use time::macros::datetime;

    const NOW: OffsetDateTime = datetime!(2025-03-01 12:00:00 UTC);

    fn counts(nodes: u32, healthy: u32, updating: u32, failed: u32, waiting: u32) -> RolloutCounts {
        RolloutCounts {
            nodes,
            healthy,
            updating,
            failed,
            waiting,
            ..RolloutCounts::default()
        }
    }

    fn step(number: u32, kind: &str, state: &str, counts: RolloutCounts) -> RolloutStepStatus {
        RolloutStepStatus {
            number,
            kind: kind.into(),
            partition: None,
            state: state.into(),
            counts,
        }
    }

    fn rollout() -> RolloutStatus {
        let mut totals = counts(100, 52, 10, 1, 34);
        totals.offline = 1;
        totals.blocked = 2;
        let mut batch2 = counts(50, 26, 10, 1, 10);
        batch2.offline = 1;
        batch2.blocked = 2;
        RolloutStatus {
            deployment: "web".into(),
            number: 3,
            from_revision: Some("0123456789abcdef".into()),
            from_revision_number: Some(2),
            to_revision: "abcdef0123456789".into(),
            to_revision_number: 3,
            phase: RolloutPhase::Progressing,
            paused: false,
            waiting_for: Some("step 2: 26 of 50 nodes healthy".into()),
            abort_reason: None,
            current_step: 2,
            steps: vec![
                step(1, "canary", "passed", counts(1, 1, 0, 0, 0)),
                RolloutStepStatus {
                    partition: Some("berlin".into()),
                    ..step(2, "batch", "active", batch2)
                },
                step(3, "batch", "pending", counts(49, 25, 0, 0, 24)),
            ],
            counts: totals,
            nodes: vec![
                RolloutNodeStatus {
                    node: "edge-1".into(),
                    step: 1,
                    state: RolloutNodeState::Healthy,
                    reason: None,
                },
                RolloutNodeStatus {
                    node: "edge-9".into(),
                    step: 3,
                    state: RolloutNodeState::Waiting,
                    reason: None,
                },
                RolloutNodeStatus {
                    node: "edge-5".into(),
                    step: 2,
                    state: RolloutNodeState::Blocked,
                    reason: Some("window night closed until 2025-03-01T22:00:00Z".into()),
                },
                RolloutNodeStatus {
                    node: "edge-7".into(),
                    step: 2,
                    state: RolloutNodeState::Failed,
                    reason: Some("web is crash-looping".into()),
                },
            ],
            started_at: datetime!(2025-03-01 11:00:00 UTC),
            updated_at: datetime!(2025-03-01 11:59:00 UTC),
            finished_at: None,
        }
    }

    #[test]
    fn status_text_with_steps_and_totals() {
        let expected = "\
Rollout:      #3 of web
Revisions:    0123456789ab (#2) → abcdef012345 (#3)
Phase:        progressing
Step:         2 of 3
Waiting for:  step 2: 26 of 50 nodes healthy
Nodes:        100 nodes: 52 healthy, 10 updating, 1 failed, 1 offline, 2 blocked, 34 waiting, 0 rolled back
Started:      2025-03-01T11:00:00Z (1h ago)
Updated:      2025-03-01T11:59:00Z (1m ago)

Steps:
  STEP   KIND     PARTITION   STATE     NODES   HEALTHY   UPDATING   FAILED   OFFLINE   BLOCKED   WAITING   ROLLED-BACK
  1      canary   -           passed    1       1         0          0        0         0         0         0
  2      batch    berlin      active    50      26        10         1        1         2         10        0
  3      batch    -           pending   49      25        0          0        0         0         24        0
";
        assert_eq!(status_text(&rollout(), NOW), expected);
    }

    #[test]
    fn finished_rollouts_show_their_reason() {
        let mut status = rollout();
        status.phase = RolloutPhase::RolledBack;
        status.waiting_for = None;
        status.abort_reason = Some("step 2: 1 of 50 nodes failed (threshold 0%)".into());
        status.from_revision = None;
        status.from_revision_number = None;
        status.finished_at = Some(datetime!(2025-03-01 11:59:30 UTC));
        let text = status_text(&status, NOW);
        let head: Vec<&str> = text.lines().take(9).collect();
        assert_eq!(
            head,
            [
                "Rollout:       #3 of web",
                "Revisions:     none → abcdef012345 (#3)",
                "Phase:         rolled-back",
                "Step:          2 of 3",
                "Abort reason:  step 2: 1 of 50 nodes failed (threshold 0%)",
                "Nodes:         100 nodes: 52 healthy, 10 updating, 1 failed, 1 offline, 2 blocked, 34 waiting, 0 rolled back",
                "Started:       2025-03-01T11:00:00Z (1h ago)",
                "Updated:       2025-03-01T11:59:00Z (1m ago)",
                "Finished:      2025-03-01T11:59:30Z (30s ago)",
            ]
        );
        assert_eq!(
            outcome(&status),
            Err("rollout #3 of web was aborted and rolled back: step 2: 1 of 50 nodes failed (threshold 0%)".into())
        );
    }

    #[test]
    fn nodes_not_healthy_are_listed_failed_first() {
        let expected = "\
Nodes not healthy (3 of 4):
  NODE     STEP   STATE     REASON
  edge-7   2      failed    web is crash-looping
  edge-5   2      blocked   window night closed until 2025-03-01T22:00:00Z
  edge-9   3      waiting   -
";
        assert_eq!(unhealthy_nodes_section(&rollout()), expected);
    }

    #[test]
    fn watch_lines() {
        let mut status = rollout();
        assert_eq!(
            header_line(&status),
            "rollout #3 of web: 0123456789ab (#2) → abcdef012345 (#3)"
        );
        assert_eq!(
            plain_line(&status),
            "progressing, step 2/3, 52/100 healthy, 10 updating, 1 failed, 1 offline, 2 blocked, \
             34 waiting; waiting for: step 2: 26 of 50 nodes healthy"
        );
        assert_eq!(
            progress_line(&status, 200),
            "[##########..........] 52/100 healthy  1 failed  step 2/3  waiting for: step 2: 26 of 50 nodes healthy"
        );
        let narrow = progress_line(&status, 60);
        assert_eq!(narrow.chars().count(), 59);
        assert_eq!(
            narrow,
            "[##########..........] 52/100 healthy  1 failed  step 2/..."
        );
        status.paused = true;
        status.waiting_for = None;
        status.counts = counts(100, 100, 0, 0, 0);
        assert_eq!(
            progress_line(&status, 80),
            "[####################] 100/100 healthy  step 2/3  progressing (paused)"
        );
        assert_eq!(
            plain_line(&status),
            "progressing (paused), step 2/3, 100/100 healthy"
        );
        status.counts = RolloutCounts::default();
        assert!(progress_line(&status, 80).starts_with("[....................] 0/0 healthy"));
    }

    #[test]
    fn outcomes() {
        let mut status = rollout();
        status.phase = RolloutPhase::Succeeded;
        status.counts = counts(100, 100, 0, 0, 0);
        assert_eq!(
            outcome(&status),
            Ok("rollout #3 of web succeeded: 100/100 healthy".into())
        );
        status.phase = RolloutPhase::Aborted;
        assert_eq!(
            outcome(&status),
            Err("rollout #3 of web was aborted: no reason given".into())
        );
        status.phase = RolloutPhase::Superseded;
        assert_eq!(
            outcome(&status),
            Err(
                "rollout #3 of web was superseded: a newer revision was applied before it finished"
                    .into()
            )
        );
        assert_eq!(
            summary(&rollout()),
            "progressing, step 2/3, 52/100 healthy, 10 updating, 1 failed, 1 offline, 2 blocked, 34 waiting"
        );
    }

    #[test]
    fn history() {
        let mut first = rollout();
        first.number = 1;
        first.from_revision = None;
        first.from_revision_number = None;
        first.to_revision = "0123456789abcdef".into();
        first.to_revision_number = 1;
        first.phase = RolloutPhase::Succeeded;
        first.finished_at = Some(datetime!(2025-03-01 10:00:00 UTC));
        let mut second = rollout();
        second.number = 2;
        second.phase = RolloutPhase::Aborted;
        second.abort_reason = Some("aborted by token:admin".into());
        second.finished_at = Some(datetime!(2025-03-01 11:30:00 UTC));
        let expected = "\
NUMBER   FROM                TO                  PHASE         STARTED                FINISHED               REASON
3        0123456789ab (#2)   abcdef012345 (#3)   progressing   2025-03-01T11:00:00Z   -                      -
2        0123456789ab (#2)   abcdef012345 (#3)   aborted       2025-03-01T11:00:00Z   2025-03-01T11:30:00Z   aborted by token:admin
1        -                   0123456789ab (#1)   succeeded     2025-03-01T11:00:00Z   2025-03-01T10:00:00Z   -
";
        assert_eq!(history_table(&[rollout(), second, first]), expected);
    }
}
