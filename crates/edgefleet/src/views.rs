//! The human views of API bodies: the `get` and `events` tables and the `describe` texts,
//! and the pieces other views share (`Fields`, `section`).
//!
//! Pure functions of the body and `now`; the commands fetch and print. Empty values show as
//! `-` (or `<none>` for label sets) so every table cell holds one word-ish token.

use edgefleet_core::hash::short;
use edgefleet_wire::Labels;
use edgefleet_wire::api::{
    ApiTokenInfo, AuditEntry, Condition, Conflict, DeploymentDetail, DeploymentSummary,
    JoinTokenInfo, NodeDetail, NodeSummary, WindowInfo,
};
use edgefleet_wire::manifest::{WeeklyOpening, WorkloadSpec};
use edgefleet_wire::node::{NodeFacts, StoredNodeEvent, WorkloadStatus};
use time::OffsetDateTime;

use crate::human;
use crate::table::Table;
use edgefleet_wire::telemetry::NodeTelemetry;

/// `k=v,k2=v2`, or `<none>`.
pub fn labels(labels: &Labels) -> String {
    if labels.is_empty() {
        return "<none>".to_owned();
    }
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

pub fn or_dash<T: ToString>(value: Option<T>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

fn yes_no(value: bool) -> &'static str {
    if value { "yes" } else { "no" }
}

pub fn nodes_table(nodes: &[NodeSummary], now: OffsetDateTime) -> String {
    let mut table = Table::new([
        "NAME",
        "STATUS",
        "WORKLOADS",
        "GENERATION",
        "LAST-SEEN",
        "CERT-EXPIRES",
        "LABELS",
    ]);
    for node in nodes {
        table.row([
            node.name.clone(),
            node.status.as_str().to_owned(),
            format!("{}/{}", node.workloads_running, node.workloads_total),
            format!("{}/{}", node.applied_generation, node.desired_generation),
            human::age(node.last_seen, now),
            human::remaining(node.certificate_not_after, now),
            labels(&node.labels),
        ]);
    }
    table.render()
}

pub fn deployments_table(deployments: &[DeploymentSummary], now: OffsetDateTime) -> String {
    let mut table = Table::new([
        "NAME",
        "REVISION",
        "PRIORITY",
        "SELECTED",
        "UP-TO-DATE",
        "RUNNING",
        "FAILING",
        "AGE",
    ]);
    for deployment in deployments {
        table.row([
            deployment.name.clone(),
            short(&deployment.revision).to_owned(),
            deployment.priority.to_string(),
            deployment.selected.to_string(),
            deployment.up_to_date.to_string(),
            deployment.running.to_string(),
            deployment.failing.to_string(),
            human::age(Some(deployment.updated_at), now),
        ]);
    }
    table.render()
}

fn token_uses(token: &JoinTokenInfo) -> String {
    match token.uses_allowed {
        Some(allowed) => format!("{}/{allowed}", token.uses),
        None => format!("{}/unlimited", token.uses),
    }
}

pub fn tokens_table(tokens: &[JoinTokenInfo], now: OffsetDateTime) -> String {
    let mut table = Table::new(["ID", "STATE", "USES", "EXPIRES", "LABELS", "DESCRIPTION"]);
    for token in tokens {
        table.row([
            token.id.clone(),
            token.state.clone(),
            token_uses(token),
            human::remaining(Some(token.expires_at), now),
            labels(&token.labels),
            token.description.clone().unwrap_or_default(),
        ]);
    }
    table.render()
}

pub fn api_tokens_table(tokens: &[ApiTokenInfo], now: OffsetDateTime) -> String {
    let mut table = Table::new(["ID", "NAME", "ROLE", "STATE", "AGE"]);
    for token in tokens {
        table.row([
            token.id.clone(),
            token.name.clone(),
            token.role.as_str().to_owned(),
            if token.revoked { "revoked" } else { "active" }.to_owned(),
            human::age(Some(token.created_at), now),
        ]);
    }
    table.render()
}

pub fn audit_table(entries: &[AuditEntry]) -> String {
    let mut table = Table::new(["AT", "ACTOR", "ACTION", "OBJECT", "DETAIL"]);
    for entry in entries {
        table.row([
            human::timestamp(entry.at),
            entry.actor.clone(),
            entry.action.clone(),
            entry.object.clone(),
            entry.detail.clone(),
        ]);
    }
    table.render()
}

/// `mon,tue 02:00 for 2h; daily 23:00 for 30m`.
fn schedule(openings: &[WeeklyOpening]) -> String {
    if openings.is_empty() {
        return "never".to_owned();
    }
    openings
        .iter()
        .map(|opening| {
            let days = if opening.days.is_empty() {
                "daily".to_owned()
            } else {
                opening.days.join(",")
            };
            format!("{days} {} for {}", opening.start, opening.duration)
        })
        .collect::<Vec<_>>()
        .join("; ")
}

pub fn windows_table(windows: &[WindowInfo]) -> String {
    let mut table = Table::new([
        "NAME", "SELECTOR", "SCHEDULE", "TIMEZONE", "NODES", "OPEN-NOW",
    ]);
    for window in windows {
        let spec = &window.manifest.spec;
        let selector = edgefleet_core::selector::to_string(&spec.selector);
        table.row([
            window.manifest.metadata.name.clone(),
            if selector.is_empty() {
                "<all nodes>".to_owned()
            } else {
                selector
            },
            schedule(&spec.schedule),
            spec.time_zone
                .clone()
                .unwrap_or_else(|| "node-local".to_owned()),
            window.selected_nodes.to_string(),
            window.open_nodes.to_string(),
        ]);
    }
    table.render()
}

fn event_cells(event: &StoredNodeEvent) -> [String; 4] {
    let event = &event.event;
    [
        event.kind.as_str().to_owned(),
        or_dash(event.workload.as_deref()),
        or_dash(event.revision.as_deref().map(short)),
        event.message.clone(),
    ]
}

/// `events node`: the events oldest first (the API sends them newest first).
pub fn events_table(newest_first: &[StoredNodeEvent]) -> String {
    let mut table = Table::new(["TIME", "KIND", "WORKLOAD", "REVISION", "MESSAGE"]);
    for event in newest_first.iter().rev() {
        let [kind, workload, revision, message] = event_cells(event);
        table.row([
            human::timestamp(event.event.at),
            kind,
            workload,
            revision,
            message,
        ]);
    }
    table.render()
}

/// How many events `describe node` shows in its timeline.
pub const TIMELINE_EVENTS: usize = 15;

/// `describe node`'s `Timeline:`: the newest events, oldest of them first.
fn timeline_section(newest_first: &[StoredNodeEvent], now: OffsetDateTime) -> String {
    let mut table = Table::new(["AGE", "KIND", "WORKLOAD", "REVISION", "MESSAGE"]);
    for event in newest_first.iter().take(TIMELINE_EVENTS).rev() {
        let [kind, workload, revision, message] = event_cells(event);
        table.row([
            human::age(Some(event.event.at), now),
            kind,
            workload,
            revision,
            message,
        ]);
    }
    section("Timeline", &table)
}

/// `Key:   value` lines with the values aligned.
#[derive(Debug)]
pub struct Fields {
    indent: &'static str,
    rows: Vec<(String, String)>,
}

impl Fields {
    pub fn new(indent: &'static str) -> Self {
        Self {
            indent,
            rows: Vec::new(),
        }
    }

    pub fn add(&mut self, key: &str, value: impl Into<String>) -> &mut Self {
        self.rows.push((format!("{key}:"), value.into()));
        self
    }

    pub fn render(&self) -> String {
        let width = self
            .rows
            .iter()
            .map(|(k, _)| k.chars().count())
            .max()
            .unwrap_or(0);
        let mut out = String::new();
        for (key, value) in &self.rows {
            let line = format!("{}{key:<width$}  {value}", self.indent);
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// A titled block: `Title:` then the indented table, or `Title: <none>` when empty.
pub fn section(title: &str, table: &Table) -> String {
    if table.is_empty() {
        format!("{title}: <none>\n")
    } else {
        format!("{title}:\n{}", table.render_indented("  "))
    }
}

fn conflicts_section(conflicts: &[Conflict]) -> String {
    let mut table = Table::new(["WORKLOAD", "PRIORITY", "WINNER", "LOSERS"]);
    for conflict in conflicts {
        table.row([
            conflict.workload.clone(),
            conflict.priority.to_string(),
            conflict.winner.clone(),
            conflict.losers.join(","),
        ]);
    }
    section("Conflicts", &table)
}

fn conditions_section(conditions: &[Condition]) -> String {
    let mut table = Table::new(["KIND", "STATUS", "REASON"]);
    for condition in conditions {
        table.row([
            condition.kind.clone(),
            if condition.status { "True" } else { "False" }.to_owned(),
            condition.reason.clone(),
        ]);
    }
    section("Conditions", &table)
}

/// The node's description; `timeline` holds its newest events (newest first), or `None`
/// when the server has no events endpoint (then the section is left out).
pub fn describe_node(
    detail: &NodeDetail,
    timeline: Option<&[StoredNodeEvent]>,
    now: OffsetDateTime,
) -> String {
    let summary = &detail.summary;
    let generation_state = if summary.applied_generation >= summary.desired_generation {
        "up to date"
    } else {
        "applying"
    };
    let mut fields = Fields::new("");
    fields
        .add("Name", summary.name.clone())
        .add("Status", summary.status.as_str())
        .add("Labels", labels(&summary.labels))
        .add(
            "Last seen",
            human::timestamp_with_age(summary.last_seen, now),
        )
        .add(
            "Enrolled",
            human::timestamp_with_age(Some(summary.enrolled_at), now),
        )
        .add(
            "Certificate expires",
            human::deadline(summary.certificate_not_after, now),
        )
        .add("Agent version", non_empty(&summary.agent_version))
        .add(
            "Generation",
            format!(
                "desired {}, applied {} ({generation_state})",
                summary.desired_generation, summary.applied_generation
            ),
        )
        .add(
            "Running",
            format!(
                "{} of {} workloads ({} failing)",
                summary.workloads_running, summary.workloads_total, summary.workloads_failing
            ),
        );
    let reported = detail
        .reported
        .as_ref()
        .map(|r| r.workloads.as_slice())
        .unwrap_or(&[]);
    let mut sections = vec![
        fields.render(),
        describe_facts(&detail.facts, now),
        node_workloads_section(&detail.desired.workloads, reported, now),
        conflicts_section(&detail.conflicts),
        conditions_section(&detail.conditions),
    ];
    if let Some(telemetry) = &detail.telemetry {
        sections.push(telemetry_section(telemetry, now));
    }
    sections.push(recent_changes_section(&detail.recent_changes, now));
    if let Some(events) = timeline {
        sections.push(timeline_section(events, now));
    }
    sections.join("\n")
}

/// Traffic by category (with the per-day rate since counting began) and the outbox.
fn telemetry_section(telemetry: &NodeTelemetry, now: OffsetDateTime) -> String {
    let mut text = String::from("Traffic:\n");
    if telemetry.traffic.is_empty() {
        text.push_str("  (none counted yet)\n");
    } else {
        let days = telemetry
            .since
            .map(|since| (now - since).as_seconds_f64() / 86_400.0)
            .filter(|days| *days > 0.0);
        let mut table = Table::new(["CATEGORY", "UP", "DOWN", "REQUESTS", "PER DAY"]);
        for totals in &telemetry.traffic {
            let per_day = days.map_or("-".to_owned(), |days| {
                human::size(((totals.bytes_up + totals.bytes_down) as f64 / days) as u64)
            });
            table.row([
                serde_json::to_value(totals.category)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default(),
                human::size(totals.bytes_up),
                human::size(totals.bytes_down),
                totals.requests.to_string(),
                per_day,
            ]);
        }
        text.push_str(&table.render_indented("  "));
        if let Some(since) = telemetry.since {
            text.push_str(&format!(
                "  counted since {}\n",
                human::timestamp_with_age(Some(since), now)
            ));
        }
    }
    text.push_str(&format!(
        "Outbox:\n  backlog {} in {} records, last upload {}\n",
        human::size(telemetry.backlog_bytes),
        telemetry.backlog_records,
        human::timestamp_with_age(telemetry.last_upload, now)
    ));
    for drop in &telemetry.dropped {
        text.push_str(&format!(
            "  dropped from {}: {} records ({}), {}\n",
            drop.stream,
            drop.records,
            human::size(drop.bytes),
            match drop.reason {
                edgefleet_wire::telemetry::DropReason::Full => "outbox full",
                edgefleet_wire::telemetry::DropReason::Expired => "older than the stream's ttl",
            }
        ));
    }
    text
}

fn non_empty(value: &str) -> String {
    if value.is_empty() {
        "-".to_owned()
    } else {
        value.to_owned()
    }
}

fn describe_facts(facts: &NodeFacts, now: OffsetDateTime) -> String {
    let mut os = non_empty(&facts.os.name);
    if !facts.os.version.is_empty() && !facts.os.name.contains(&facts.os.version) {
        os = format!("{os} {}", facts.os.version);
    }
    let cpu = match (facts.cpu.count, facts.cpu.model.as_str()) {
        (0, "") => "-".to_owned(),
        (count, "") => format!("{count} cores"),
        (count, model) => format!("{count} x {model}"),
    };
    let boot_time = facts
        .boot_time
        .and_then(|t| OffsetDateTime::from_unix_timestamp(t).ok());
    let dmi = facts.dmi.as_ref().map(|dmi| {
        format!(
            "vendor {}, product {}, serial {}",
            or_dash(dmi.vendor.as_deref()),
            or_dash(dmi.product.as_deref()),
            or_dash(dmi.serial.as_deref())
        )
    });
    let mut fields = Fields::new("  ");
    fields
        .add("Hostname", non_empty(&facts.hostname))
        .add("OS", os)
        .add("Kernel", non_empty(&facts.os.kernel))
        .add("Architecture", non_empty(&facts.arch))
        .add("CPU", cpu)
        .add(
            "Memory",
            if facts.memory_bytes == 0 {
                "-".to_owned()
            } else {
                human::size(facts.memory_bytes)
            },
        )
        .add(
            "Boot time",
            boot_time.map_or_else(
                || "-".to_owned(),
                |t| human::timestamp_with_age(Some(t), now),
            ),
        )
        .add("Machine ID", or_dash(facts.machine_id.as_deref()))
        .add("DMI", or_dash(dmi));

    let mut disks = Table::new(["MOUNT", "DEVICE", "FS", "SIZE", "FREE"]);
    for disk in &facts.disks {
        disks.row([
            disk.mount.clone(),
            disk.device.clone(),
            disk.fs_type.clone(),
            human::size(disk.total_bytes),
            human::size(disk.free_bytes),
        ]);
    }
    let mut interfaces = Table::new(["NAME", "MAC", "ADDRESSES"]);
    for interface in &facts.interfaces {
        interfaces.row([
            interface.name.clone(),
            or_dash(interface.mac.as_deref()),
            interface.addresses.join(","),
        ]);
    }
    let mut accelerators = Table::new(["KIND", "NAME", "PATH"]);
    for accelerator in &facts.accelerators {
        accelerators.row([
            accelerator.kind.clone(),
            accelerator.name.clone(),
            accelerator.path.clone(),
        ]);
    }
    let sub_section = |title: &str, table: &Table| {
        if table.is_empty() {
            format!("  {title}: <none>\n")
        } else {
            format!("  {title}:\n{}", table.render_indented("    "))
        }
    };
    format!(
        "Facts:\n{}{}{}{}",
        fields.render(),
        sub_section("Disks", &disks),
        sub_section("Interfaces", &interfaces),
        sub_section("Accelerators", &accelerators)
    )
}

fn node_workloads_section(
    desired: &[edgefleet_wire::api::DesiredWorkload],
    reported: &[WorkloadStatus],
    now: OffsetDateTime,
) -> String {
    let mut table = Table::new([
        "NAME",
        "DEPLOYMENT",
        "RUNTIME",
        "STATE",
        "READY",
        "PID",
        "RESTARTS",
        "LAST-EXIT",
        "STARTED",
        "MESSAGE",
    ]);
    let runtime_of = |name: &str| {
        desired
            .iter()
            .find(|w| w.spec.name == name)
            .map(|w| w.spec.runtime.as_str().to_owned())
    };
    let status_row = |status: &WorkloadStatus, message: Option<&str>| -> Vec<String> {
        vec![
            status.name.clone(),
            status.deployment.clone(),
            status
                .runtime
                .clone()
                .or_else(|| runtime_of(&status.name))
                .unwrap_or_else(|| "-".into()),
            status.state.as_str().to_owned(),
            match status.ready {
                Some(true) => "yes".into(),
                Some(false) => "no".into(),
                None => "-".into(),
            },
            or_dash(status.pid),
            status.restarts.to_string(),
            or_dash(status.last_exit_code),
            human::age(status.started_at, now),
            status
                .message
                .clone()
                .or(message.map(str::to_owned))
                .unwrap_or_default(),
        ]
    };
    for workload in desired {
        match reported.iter().find(|s| s.name == workload.spec.name) {
            Some(status) if status.spec_hash != workload.spec_hash => {
                table.row(status_row(status, Some("update pending")));
            }
            Some(status) => {
                table.row(status_row(status, None));
            }
            None => {
                table.row([
                    workload.spec.name.clone(),
                    workload.deployment.clone(),
                    workload.spec.runtime.as_str().to_owned(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    "not reported yet".into(),
                ]);
            }
        }
    }
    for status in reported {
        if !desired.iter().any(|w| w.spec.name == status.name) {
            table.row(status_row(status, Some("no longer desired")));
        }
    }
    section("Workloads", &table)
}

fn recent_changes_section(entries: &[AuditEntry], now: OffsetDateTime) -> String {
    let mut table = Table::new(["AGE", "ACTOR", "ACTION", "DETAIL"]);
    for entry in entries {
        table.row([
            human::age(Some(entry.at), now),
            entry.actor.clone(),
            entry.action.clone(),
            entry.detail.clone(),
        ]);
    }
    section("Recent changes", &table)
}

/// `command arg 'arg with spaces'` (for a container its image first, for a module the
/// module), cut to 60 characters for tables.
pub fn command_line(spec: &WorkloadSpec) -> String {
    let mut words = Vec::new();
    if let Some(image) = &spec.image {
        words.push(shell_word(image));
    }
    if let Some(module) = &spec.module {
        words.push(shell_word(&module.to_string()));
    }
    if !spec.command.is_empty() || words.is_empty() {
        words.push(shell_word(&spec.command));
    }
    words.extend(spec.args.iter().map(|a| shell_word(a)));
    let line = words.join(" ");
    match line.char_indices().nth(57) {
        Some((cut, _)) if line.chars().count() > 60 => format!("{}...", &line[..cut]),
        _ => line,
    }
}

/// A word as a POSIX shell would need it: unchanged when plain, else single-quoted.
pub fn shell_word(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
    if plain {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

pub fn describe_deployment(detail: &DeploymentDetail, now: OffsetDateTime) -> String {
    let summary = &detail.summary;
    let spec = &detail.manifest.spec;
    let revision_number = detail
        .revisions
        .iter()
        .find(|r| r.revision == summary.revision)
        .map(|r| r.number);
    let revision = match revision_number {
        Some(number) => format!(
            "{} (#{number} of {})",
            short(&summary.revision),
            summary.revision_count
        ),
        None => short(&summary.revision).to_owned(),
    };
    let selector = edgefleet_core::selector::to_string(&spec.selector);
    let mut fields = Fields::new("");
    fields
        .add("Name", summary.name.clone())
        .add("Labels", labels(&detail.manifest.metadata.labels))
        .add("Revision", revision)
        .add("Priority", summary.priority.to_string())
        .add(
            "Selector",
            if selector.is_empty() {
                "<all nodes>".to_owned()
            } else {
                selector
            },
        )
        .add(
            "Updated",
            human::timestamp_with_age(Some(summary.updated_at), now),
        )
        .add(
            "Nodes",
            format!(
                "{} selected, {} up to date, {} running, {} failing",
                summary.selected, summary.up_to_date, summary.running, summary.failing
            ),
        );

    let mut workloads = Table::new(["NAME", "RUNTIME", "RESTART", "STOP-GRACE", "COMMAND"]);
    for workload in &spec.workloads {
        workloads.row([
            workload.name.clone(),
            format!("{:?}", workload.runtime).to_lowercase(),
            workload.restart_policy.as_str().to_owned(),
            workload.stop_grace_period.to_string(),
            command_line(workload),
        ]);
    }
    let mut revisions = Table::new(["NUMBER", "REVISION", "CREATED", "BY"]);
    for info in &detail.revisions {
        // By number: `rollout undo` makes a new revision with an old one's content hash.
        let marker = if info.number == summary.revision_count {
            " (current)"
        } else {
            ""
        };
        revisions.row([
            format!("{}{marker}", info.number),
            short(&info.revision).to_owned(),
            human::timestamp_with_age(Some(info.created_at), now),
            info.created_by.clone(),
        ]);
    }
    let mut nodes = Table::new(["NODE", "STATUS", "UP-TO-DATE", "WORKLOADS"]);
    for node in &detail.nodes {
        let states = node
            .workloads
            .iter()
            .map(|(name, state)| format!("{name}={}", state.map_or("-", |s| s.as_str())))
            .collect::<Vec<_>>()
            .join(",");
        nodes.row([
            node.node.clone(),
            node.node_status.as_str().to_owned(),
            yes_no(node.up_to_date).to_owned(),
            states,
        ]);
    }
    [
        fields.render(),
        section("Workloads", &workloads),
        section("Revisions", &revisions),
        section("Nodes", &nodes),
        conflicts_section(&detail.conflicts),
    ]
    .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgefleet_wire::api::{
        DeploymentNodeStatus, DesiredState, DesiredWorkload, NodeStatus, RevisionInfo, Role,
    };
    use edgefleet_wire::manifest::{DeploymentManifest, DeploymentSpec, Metadata, Selector};
    use edgefleet_wire::node::{DiskFacts, ReportedState, WorkloadState};
    use time::macros::datetime;

    const NOW: OffsetDateTime = datetime!(2025-03-01 12:00:00 UTC);

    fn label_set(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn node(name: &str, status: NodeStatus, labels: Labels) -> NodeSummary {
        NodeSummary {
            name: name.into(),
            status,
            labels,
            last_seen: Some(datetime!(2025-03-01 11:59:57 UTC)),
            desired_generation: 3,
            applied_generation: 2,
            workloads_total: 2,
            workloads_running: 1,
            workloads_failing: 1,
            certificate_not_after: Some(datetime!(2025-03-08 12:00:00 UTC)),
            agent_version: "0.1.0".into(),
            enrolled_at: datetime!(2025-03-01 10:00:00 UTC),
        }
    }

    fn workload(name: &str) -> WorkloadSpec {
        WorkloadSpec {
            args: vec!["-c".into(), "echo hi; sleep 5".into()],
            stop_grace_period: "5s".parse().unwrap(),
            ..WorkloadSpec::process(name, "/bin/sh")
        }
    }

    #[test]
    fn nodes() {
        let mut offline = node("edge-2", NodeStatus::NotReady, Labels::new());
        offline.last_seen = None;
        offline.certificate_not_after = Some(datetime!(2025-02-01 00:00:00 UTC));
        let nodes = [
            node(
                "edge-1",
                NodeStatus::Ready,
                label_set(&[("site", "berlin"), ("tier", "edge")]),
            ),
            offline,
        ];
        assert_eq!(
            nodes_table(&nodes, NOW),
            "NAME     STATUS     WORKLOADS   GENERATION   LAST-SEEN   CERT-EXPIRES   LABELS\n\
             edge-1   Ready      1/2         2/3          3s          7d             site=berlin,tier=edge\n\
             edge-2   NotReady   1/2         2/3          -           expired        <none>\n"
        );
    }

    #[test]
    fn deployments() {
        let deployment = DeploymentSummary {
            name: "base".into(),
            revision: "0123456789abcdef0123".into(),
            revision_count: 2,
            priority: 10,
            selected: 3,
            up_to_date: 2,
            running: 2,
            failing: 0,
            updated_at: datetime!(2025-03-01 10:00:00 UTC),
        };
        assert_eq!(
            deployments_table(&[deployment], NOW),
            "NAME   REVISION       PRIORITY   SELECTED   UP-TO-DATE   RUNNING   FAILING   AGE\n\
             base   0123456789ab   10         3          2            2         0         2h\n"
        );
        assert_eq!(
            deployments_table(&[], NOW),
            "NAME   REVISION   PRIORITY   SELECTED   UP-TO-DATE   RUNNING   FAILING   AGE\n"
        );
    }

    #[test]
    fn tokens_and_api_tokens_and_audit() {
        let token = JoinTokenInfo {
            id: "k3x9".into(),
            labels: label_set(&[("site", "lisbon")]),
            created_at: datetime!(2025-03-01 10:00:00 UTC),
            expires_at: datetime!(2025-03-02 11:00:00 UTC),
            uses_allowed: None,
            uses: 2,
            revoked: false,
            description: Some("lab rack".into()),
            state: "active".into(),
        };
        let used_up = JoinTokenInfo {
            id: "a1".into(),
            labels: Labels::new(),
            uses_allowed: Some(1),
            uses: 1,
            description: None,
            state: "used-up".into(),
            ..token.clone()
        };
        assert_eq!(
            tokens_table(&[token, used_up], NOW),
            "ID     STATE     USES          EXPIRES   LABELS        DESCRIPTION\n\
             k3x9   active    2/unlimited   23h       site=lisbon   lab rack\n\
             a1     used-up   1/1           23h       <none>\n"
        );
        let api_token = ApiTokenInfo {
            id: "t1".into(),
            name: "ci".into(),
            role: Role::Operator,
            created_at: datetime!(2025-02-27 12:00:00 UTC),
            revoked: true,
        };
        assert_eq!(
            api_tokens_table(&[api_token], NOW),
            "ID   NAME   ROLE       STATE     AGE\nt1   ci     operator   revoked   2d\n"
        );
        let entry = AuditEntry {
            id: 1,
            at: datetime!(2025-03-01 11:00:00 UTC),
            actor: "token:admin".into(),
            action: "apply".into(),
            object: "deployment/base".into(),
            detail: "created revision 0123456789ab".into(),
        };
        assert_eq!(
            audit_table(&[entry]),
            "AT                     ACTOR         ACTION   OBJECT            DETAIL\n\
             2025-03-01T11:00:00Z   token:admin   apply    deployment/base   created revision 0123456789ab\n"
        );
    }

    fn event(seq: u64, at: OffsetDateTime) -> StoredNodeEvent {
        StoredNodeEvent {
            node: "edge-1".into(),
            event: edgefleet_wire::node::NodeEvent {
                seq,
                at,
                kind: edgefleet_wire::node::NodeEventKind::WorkloadExited,
                workload: Some("greeter".into()),
                deployment: Some("base".into()),
                revision: Some("abcdef0123456789".into()),
                message: format!("event {seq}"),
            },
            received_at: at,
        }
    }

    #[test]
    fn events_oldest_first() {
        use edgefleet_wire::node::NodeEventKind;
        let mut started = event(1, datetime!(2025-03-01 11:00:00 UTC));
        started.event.kind = NodeEventKind::AgentStarted;
        started.event.workload = None;
        started.event.deployment = None;
        started.event.revision = None;
        started.event.message = "agent 0.1.0 started".into();
        let mut crashed = event(2, datetime!(2025-03-01 11:01:30 UTC));
        crashed.event.kind = NodeEventKind::WorkloadCrashLooping;
        crashed.event.message = "exited 3 times in 1m; next start in 8s".into();
        // Newest first, as the API sends them.
        let events = [crashed, started];
        assert_eq!(
            events_table(&events),
            "TIME                   KIND                     WORKLOAD   REVISION       MESSAGE\n\
             2025-03-01T11:00:00Z   agent-started            -          -              agent 0.1.0 started\n\
             2025-03-01T11:01:30Z   workload-crash-looping   greeter    abcdef012345   exited 3 times in 1m; next start in 8s\n"
        );
        assert_eq!(
            events_table(&[]),
            "TIME   KIND   WORKLOAD   REVISION   MESSAGE\n"
        );
    }

    #[test]
    fn windows() {
        use edgefleet_wire::manifest::{MaintenanceWindowManifest, MaintenanceWindowSpec};
        let night = MaintenanceWindowManifest::new(
            "night",
            MaintenanceWindowSpec {
                selector: Selector {
                    match_labels: label_set(&[("site", "berlin")]),
                    match_expressions: vec![],
                },
                schedule: vec![
                    WeeklyOpening {
                        days: vec!["mon".into(), "tue".into()],
                        start: "02:00".into(),
                        duration: "2h".parse().unwrap(),
                    },
                    WeeklyOpening {
                        days: vec![],
                        start: "23:00".into(),
                        duration: "30m".parse().unwrap(),
                    },
                ],
                time_zone: Some("Europe/Berlin".into()),
            },
        );
        let everywhere = MaintenanceWindowManifest::new(
            "weekend",
            MaintenanceWindowSpec {
                selector: Selector::default(),
                schedule: vec![],
                time_zone: None,
            },
        );
        let windows = [
            WindowInfo {
                manifest: night,
                selected_nodes: 20,
                open_nodes: 0,
                updated_at: NOW,
            },
            WindowInfo {
                manifest: everywhere,
                selected_nodes: 3,
                open_nodes: 3,
                updated_at: NOW,
            },
        ];
        assert_eq!(
            windows_table(&windows),
            "NAME      SELECTOR      SCHEDULE                                    TIMEZONE        NODES   OPEN-NOW\n\
             night     site=berlin   mon,tue 02:00 for 2h; daily 23:00 for 30m   Europe/Berlin   20      0\n\
             weekend   <all nodes>   never                                       node-local      3       3\n"
        );
    }

    #[test]
    fn commands_are_quoted_and_cut() {
        assert_eq!(
            command_line(&workload("w")),
            "/bin/sh -c 'echo hi; sleep 5'"
        );
        let mut long = workload("w");
        long.args = vec!["-c".into(), "x".repeat(100)];
        let line = command_line(&long);
        assert_eq!(line.chars().count(), 60);
        assert!(line.ends_with("..."));
        assert_eq!(shell_word("it's"), r"'it'\''s'");
    }

    fn node_detail() -> NodeDetail {
        let spec = workload("greeter");
        let status = WorkloadStatus {
            name: "greeter".into(),
            deployment: "base".into(),
            revision: "r1".into(),
            spec_hash: "h1".into(),
            state: WorkloadState::Running,
            pid: Some(4242),
            restarts: 1,
            last_exit_code: Some(1),
            started_at: Some(datetime!(2025-03-01 11:55:00 UTC)),
            message: None,
            ready: None,
            runtime: None,
        };
        let old = WorkloadStatus {
            name: "legacy".into(),
            state: WorkloadState::Stopped,
            pid: None,
            last_exit_code: None,
            started_at: None,
            ..status.clone()
        };
        NodeDetail {
            summary: node(
                "edge-1",
                NodeStatus::Ready,
                label_set(&[("site", "berlin")]),
            ),
            facts: NodeFacts {
                hostname: "box1".into(),
                os: edgefleet_wire::node::OsFacts {
                    name: "Debian GNU/Linux 12 (bookworm)".into(),
                    version: "12".into(),
                    kernel: "6.1.0".into(),
                },
                arch: "x86_64".into(),
                cpu: edgefleet_wire::node::CpuFacts {
                    model: "Ryzen".into(),
                    count: 8,
                },
                memory_bytes: 16 * 1024 * 1024 * 1024,
                disks: vec![DiskFacts {
                    mount: "/".into(),
                    device: "/dev/sda1".into(),
                    fs_type: "ext4".into(),
                    total_bytes: 100 * 1024 * 1024 * 1024,
                    free_bytes: 50 * 1024 * 1024 * 1024,
                }],
                boot_time: Some(datetime!(2025-03-01 00:00:00 UTC).unix_timestamp()),
                ..NodeFacts::default()
            },
            desired: DesiredState {
                node: "edge-1".into(),
                generation: 3,
                workloads: vec![
                    DesiredWorkload {
                        streams: Vec::new(),
                        deployment: "base".into(),
                        revision: "r1".into(),
                        spec_hash: "h1".into(),
                        spec: spec.clone(),
                        rolled_back: false,
                        labels: Default::default(),
                    },
                    DesiredWorkload {
                        streams: Vec::new(),
                        deployment: "base".into(),
                        revision: "r1".into(),
                        spec_hash: "h2".into(),
                        spec: workload("ticker"),
                        rolled_back: false,
                        labels: Default::default(),
                    },
                ],
            },
            reported: Some(ReportedState {
                node: "edge-1".into(),
                applied_generation: 2,
                workloads: vec![status, old],
                agent_version: "0.1.0".into(),
                certificate_not_after: None,
                locks: vec![],
            }),
            conflicts: vec![],
            conditions: vec![Condition {
                kind: "Ready".into(),
                status: true,
                reason: "heartbeat 3s ago".into(),
            }],
            recent_changes: vec![],
            telemetry: None,
        }
    }

    #[test]
    fn describe_node_text() {
        let expected = "\
Name:                 edge-1
Status:               Ready
Labels:               site=berlin
Last seen:            2025-03-01T11:59:57Z (3s ago)
Enrolled:             2025-03-01T10:00:00Z (2h ago)
Certificate expires:  2025-03-08T12:00:00Z (in 7d)
Agent version:        0.1.0
Generation:           desired 3, applied 2 (applying)
Running:              1 of 2 workloads (1 failing)

Facts:
  Hostname:      box1
  OS:            Debian GNU/Linux 12 (bookworm)
  Kernel:        6.1.0
  Architecture:  x86_64
  CPU:           8 x Ryzen
  Memory:        16.0 GiB
  Boot time:     2025-03-01T00:00:00Z (12h ago)
  Machine ID:    -
  DMI:           -
  Disks:
    MOUNT   DEVICE      FS     SIZE        FREE
    /       /dev/sda1   ext4   100.0 GiB   50.0 GiB
  Interfaces: <none>
  Accelerators: <none>

Workloads:
  NAME      DEPLOYMENT   RUNTIME   STATE     READY   PID    RESTARTS   LAST-EXIT   STARTED   MESSAGE
  greeter   base         process   running   -       4242   1          1           5m
  ticker    base         process   -         -       -      -          -           -         not reported yet
  legacy    base         -         stopped   -       -      1          -           -         no longer desired

Conflicts: <none>

Conditions:
  KIND    STATUS   REASON
  Ready   True     heartbeat 3s ago

Recent changes: <none>
";
        assert_eq!(describe_node(&node_detail(), None, NOW), expected);
        let start = datetime!(2025-03-01 11:00:00 UTC);
        let events: Vec<StoredNodeEvent> = (0..20_u8)
            .rev()
            .map(|i| event(i.into(), start + time::Duration::minutes(i.into())))
            .collect();
        let with_timeline = describe_node(&node_detail(), Some(&events), NOW);
        let timeline = with_timeline
            .strip_prefix(expected)
            .expect("the timeline comes last");
        let lines: Vec<&str> = timeline.lines().collect();
        assert_eq!(lines.len(), 3 + TIMELINE_EVENTS, "{timeline}");
        assert_eq!(lines[0], "");
        assert_eq!(lines[1], "Timeline:");
        assert_eq!(
            lines[3],
            "  55m   workload-exited   greeter    abcdef012345   event 5"
        );
        assert_eq!(
            lines[2 + TIMELINE_EVENTS],
            "  41m   workload-exited   greeter    abcdef012345   event 19"
        );
        assert_eq!(
            describe_node(&node_detail(), Some(&[]), NOW),
            format!("{expected}\nTimeline: <none>\n")
        );
    }

    #[test]
    fn describe_deployment_text() {
        let detail = DeploymentDetail {
            summary: DeploymentSummary {
                name: "berlin".into(),
                revision: "abcdef0123456789".into(),
                revision_count: 2,
                priority: 10,
                selected: 2,
                up_to_date: 1,
                running: 1,
                failing: 0,
                updated_at: datetime!(2025-03-01 11:00:00 UTC),
            },
            manifest: DeploymentManifest {
                api_version: "edgefleet.io/v1".into(),
                kind: "Deployment".into(),
                metadata: Metadata {
                    name: "berlin".into(),
                    labels: Labels::new(),
                },
                spec: DeploymentSpec {
                    streams: Vec::new(),
                    selector: Selector {
                        match_labels: label_set(&[("site", "berlin")]),
                        match_expressions: vec![],
                    },
                    priority: 10,
                    workloads: vec![workload("greeter")],
                    rollout: Default::default(),
                },
            },
            revisions: vec![
                RevisionInfo {
                    revision: "0000000000001111".into(),
                    number: 1,
                    created_at: datetime!(2025-03-01 10:00:00 UTC),
                    created_by: "token:admin".into(),
                },
                RevisionInfo {
                    revision: "abcdef0123456789".into(),
                    number: 2,
                    created_at: datetime!(2025-03-01 11:00:00 UTC),
                    created_by: "token:admin".into(),
                },
            ],
            nodes: vec![DeploymentNodeStatus {
                node: "edge-1".into(),
                node_status: NodeStatus::Ready,
                up_to_date: true,
                workloads: vec![
                    ("greeter".into(), Some(WorkloadState::Running)),
                    ("x".into(), None),
                ],
            }],
            conflicts: vec![Conflict {
                workload: "greeter".into(),
                winner: "berlin".into(),
                losers: vec!["other".into()],
                priority: 10,
            }],
        };
        let expected = "\
Name:      berlin
Labels:    <none>
Revision:  abcdef012345 (#2 of 2)
Priority:  10
Selector:  site=berlin
Updated:   2025-03-01T11:00:00Z (1h ago)
Nodes:     2 selected, 1 up to date, 1 running, 0 failing

Workloads:
  NAME      RUNTIME   RESTART   STOP-GRACE   COMMAND
  greeter   process   always    5s           /bin/sh -c 'echo hi; sleep 5'

Revisions:
  NUMBER        REVISION       CREATED                         BY
  1             000000000000   2025-03-01T10:00:00Z (2h ago)   token:admin
  2 (current)   abcdef012345   2025-03-01T11:00:00Z (1h ago)   token:admin

Nodes:
  NODE     STATUS   UP-TO-DATE   WORKLOADS
  edge-1   Ready    yes          greeter=running,x=-

Conflicts:
  WORKLOAD   PRIORITY   WINNER   LOSERS
  greeter    10         berlin   other
";
        assert_eq!(describe_deployment(&detail, NOW), expected);
    }
}
