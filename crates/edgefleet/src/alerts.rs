//! `edgefleet alerts`: alerts, alert rules and silences.

use anyhow::bail;
use edgefleet_wire::alert::{
    Alert, AlertDetail, AlertRuleInfo, AlertState, CreateSilence, Silence, SilenceMatcher,
};
use edgefleet_wire::api::Ack;
use time::OffsetDateTime;

use crate::cli::{AlertsArgs, AlertsCommand};
use crate::client::ApiClient;
use crate::human;
use crate::output;
use crate::table::Table;

pub async fn run(client: &ApiClient, args: &AlertsArgs) -> anyhow::Result<()> {
    let now = OffsetDateTime::now_utc();
    match &args.command {
        None => {
            let state = if args.all { "all" } else { "firing" };
            let alerts: Vec<Alert> = client
                .get(&["v1", "alerts"], &[("state", state.to_owned())])
                .await?;
            if alerts.is_empty() && args.output.output == output::OutputFormat::Table {
                output::note(if args.all {
                    "no alerts"
                } else {
                    "no alerts firing"
                });
                return Ok(());
            }
            output::print(&alerts, args.output.output, || alerts_table(&alerts, now))
        }
        Some(AlertsCommand::Show { id, output: format }) => {
            let detail: AlertDetail = client.get(&["v1", "alerts", id], &[]).await?;
            output::print(&detail, format.output, || describe_alert(&detail, now))
        }
        Some(AlertsCommand::Rules { output: format }) => {
            let rules: Vec<AlertRuleInfo> = client.get(&["v1", "alert-rules"], &[]).await?;
            output::print(&rules, format.output, || {
                let mut table =
                    Table::new(["NAME", "SEVERITY", "SELECTOR", "FOR", "FIRING", "UPDATED"]);
                for rule in &rules {
                    let spec = &rule.manifest.spec;
                    let selector = serde_json::to_value(&spec.selector)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .filter(|s| !s.is_empty())
                        .unwrap_or_else(|| "(all nodes)".into());
                    table.row([
                        rule.manifest.metadata.name.clone(),
                        spec.severity.as_str().to_owned(),
                        selector,
                        spec.for_duration
                            .map_or_else(|| "default".to_owned(), |d| d.to_string()),
                        rule.firing.to_string(),
                        human::age(Some(rule.updated_at), now),
                    ]);
                }
                table.render()
            })
        }
        Some(AlertsCommand::DeleteRule { name }) => {
            let _: Ack = client.delete(&["v1", "alert-rules", name]).await?;
            output::stdout(&format!("rule/{name} deleted\n"))
        }
        Some(AlertsCommand::Silence {
            rule,
            node,
            site,
            labels,
            duration,
            comment,
        }) => {
            let matcher = SilenceMatcher {
                rule: rule.clone(),
                node: node.clone(),
                site: site.clone(),
                labels: edgefleet_core::labels::parse_assignments(labels)
                    .map_err(|e| anyhow::anyhow!("--labels: {e}"))?,
            };
            if matcher == SilenceMatcher::default() {
                bail!("say what to silence: --rule, --node, --site and/or --labels");
            }
            let silence: Silence = client
                .post(
                    &["v1", "silences"],
                    &CreateSilence {
                        matcher,
                        duration: *duration,
                        comment: comment.clone(),
                    },
                )
                .await?;
            output::stdout(&format!(
                "silence/{} created, until {}\n",
                silence.id,
                human::timestamp(silence.ends_at)
            ))
        }
        Some(AlertsCommand::Silences { output: format }) => {
            let silences: Vec<Silence> = client.get(&["v1", "silences"], &[]).await?;
            output::print(&silences, format.output, || {
                let mut table = Table::new(["ID", "MATCHES", "ENDS", "BY", "COMMENT"]);
                for silence in &silences {
                    table.row([
                        silence.id.clone(),
                        matcher_text(&silence.matcher),
                        if silence.ends_at <= now {
                            "ended".to_owned()
                        } else {
                            format!("in {}", human::remaining(Some(silence.ends_at), now))
                        },
                        silence.created_by.clone(),
                        silence.comment.clone(),
                    ]);
                }
                table.render()
            })
        }
        Some(AlertsCommand::Unsilence { id }) => {
            let silence: Silence = client.delete(&["v1", "silences", id]).await?;
            output::stdout(&format!("silence/{} ended\n", silence.id))
        }
    }
}

fn matcher_text(matcher: &SilenceMatcher) -> String {
    let mut parts = Vec::new();
    if let Some(rule) = &matcher.rule {
        parts.push(format!("rule={rule}"));
    }
    if let Some(node) = &matcher.node {
        parts.push(format!("node={node}"));
    }
    if let Some(site) = &matcher.site {
        parts.push(format!("site={site}"));
    }
    parts.extend(matcher.labels.iter().map(|(k, v)| format!("{k}={v}")));
    parts.join(",")
}

/// The alert list: firing first, then by start, newest first.
pub fn alerts_table(alerts: &[Alert], now: OffsetDateTime) -> String {
    let mut sorted: Vec<&Alert> = alerts.iter().collect();
    sorted.sort_by_key(|a| {
        (
            a.state != AlertState::Firing,
            std::cmp::Reverse(a.started_at),
        )
    });
    let mut table = Table::new([
        "ID", "STATE", "SEVERITY", "RULE", "SUBJECT", "SINCE", "SUMMARY",
    ]);
    for alert in sorted {
        let since = match alert.resolved_at {
            Some(resolved) => format!(
                "{} (resolved {} ago)",
                human::age(Some(alert.started_at), now),
                human::age(Some(resolved), now)
            ),
            None => human::age(Some(alert.started_at), now),
        };
        table.row([
            alert.id.clone(),
            alert.state.as_str().to_owned(),
            alert.severity.as_str().to_owned(),
            alert.rule.clone(),
            alert.subject.to_string(),
            since,
            alert.summary.clone(),
        ]);
    }
    table.render()
}

fn describe_alert(detail: &AlertDetail, now: OffsetDateTime) -> String {
    let alert = &detail.alert;
    let mut text = format!(
        "Alert:     {}\nRule:      {}\nState:     {}\nSeverity:  {}\nSubject:   {}\nSummary:   {}\nStarted:   {}\n",
        alert.id,
        alert.rule,
        alert.state.as_str(),
        alert.severity.as_str(),
        alert.subject,
        alert.summary,
        human::timestamp_with_age(Some(alert.started_at), now),
    );
    if let Some(resolved) = alert.resolved_at {
        text.push_str(&format!(
            "Resolved:  {}\n",
            human::timestamp_with_age(Some(resolved), now)
        ));
    }
    if let Some(value) = alert.last_value {
        text.push_str(&format!("Value:     {}\n", crate::metrics::number(value)));
    }
    if !alert.labels.is_empty() {
        text.push_str(&format!(
            "Labels:    {}\n",
            crate::views::labels(&alert.labels)
        ));
    }
    if !alert.silenced_by.is_empty() {
        text.push_str(&format!("Silenced:  {}\n", alert.silenced_by.join(", ")));
    }
    text.push_str("Webhooks:\n");
    if detail.deliveries.is_empty() {
        text.push_str("  (none)\n");
    } else {
        let mut table = Table::new(["#", "RECEIVER", "STATUS", "STATE", "ATTEMPTS", "LAST ERROR"]);
        for delivery in &detail.deliveries {
            table.row([
                delivery.notification.to_string(),
                delivery.receiver.clone(),
                delivery.status.as_str().to_owned(),
                delivery.state.as_str().to_owned(),
                delivery.attempts.to_string(),
                delivery.last_error.clone().unwrap_or_else(|| "-".into()),
            ]);
        }
        text.push_str(&table.render_indented("  "));
    }
    text
}
