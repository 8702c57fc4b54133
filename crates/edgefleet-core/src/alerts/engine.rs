//! The alert engine: one pure step from the previous state and what is observed now to
//! the next state, the alerts to store and the notifications to send.
//!
//! Per alert key (rule, subject, series) the engine keeps a `Pending` entry while the
//! condition holds but has not held long enough, and a `Firing` entry once it fired; a
//! key whose condition stops holding is forgotten (pending) or resolved (firing). The
//! restart counts `crashLoop` rules need are kept in the state too, so that a restart of
//! the server loses nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use edgefleet_wire::alert::{
    Alert, AlertState, AlertSubject, NotificationStatus, Severity, Silence, SilenceMatcher,
};
use edgefleet_wire::{DurationSpec, Labels, Timestamp};
use serde::{Deserialize, Serialize};

use super::{CompiledRule, Condition, Grouping};
use crate::labels::{validate_name, validate_value};
use crate::selector;

/// What the engine needs to know about one enrolled, not revoked node.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeObservation {
    pub name: String,
    pub labels: Labels,
    pub enrolled_at: Timestamp,
    pub last_seen: Option<Timestamp>,
    /// When the node's current certificate ends.
    pub cert_not_after: Option<Timestamp>,
    /// The workloads the node last reported.
    pub workloads: Vec<WorkloadObservation>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadObservation {
    pub name: String,
    /// The restart count the agent reports (it only grows while the workload's spec
    /// stays the same).
    pub restarts: u32,
}

/// One metric sample of one node.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricObservation {
    pub node: String,
    pub labels: Labels,
    pub time: Timestamp,
    pub value: f64,
}

/// A drop total of one stream of one node's outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DropObservation {
    pub node: String,
    pub stream: String,
    pub records: u64,
    pub bytes: u64,
    /// When the total last changed.
    pub changed_at: Timestamp,
}

/// Everything one evaluation looks at.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    pub now: Timestamp,
    pub rules: &'a [CompiledRule],
    /// Enrolled nodes that are not revoked.
    pub nodes: &'a [NodeObservation],
    /// Recent samples by metric name; only the names metric rules use are read.
    pub metrics: &'a BTreeMap<String, Vec<MetricObservation>>,
    pub drops: &'a [DropObservation],
    /// Silences; the engine picks the active ones.
    pub silences: &'a [Silence],
    /// A metric series whose newest sample is older than this counts as gone.
    pub metric_staleness: Duration,
}

/// What an alert is about, within its rule: the subject and, for metric and crash-loop
/// rules, the series (`mount=/`, `workload=web`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct AlertKey {
    pub rule: String,
    pub subject: AlertSubject,
    #[serde(default, skip_serializing_if = "Labels::is_empty")]
    pub series: Labels,
}

impl AlertKey {
    fn node(rule: &str, node: &str, series: Labels) -> Self {
        Self {
            rule: rule.to_owned(),
            subject: AlertSubject::Node {
                name: node.to_owned(),
            },
            series,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "lowercase")]
enum Phase {
    Pending {
        #[serde(with = "time::serde::rfc3339")]
        since: Timestamp,
    },
    Firing {
        id: String,
        #[serde(with = "time::serde::rfc3339")]
        started_at: Timestamp,
        /// Whether its `Fired` notification went out (not while silenced).
        notified: bool,
        #[serde(default, with = "time::serde::rfc3339::option")]
        last_notified_at: Option<Timestamp>,
    },
}

/// One key the engine tracks, with what was last observed about it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Tracked {
    key: AlertKey,
    phase: Phase,
    severity: Severity,
    #[serde(default)]
    labels: Labels,
    summary: String,
    #[serde(default)]
    last_value: Option<f64>,
    /// The rule's receivers, kept so a deleted rule's alerts still resolve to them.
    #[serde(default)]
    webhooks: Vec<String>,
    #[serde(default)]
    silenced_by: Vec<String>,
}

impl Tracked {
    fn alert(&self) -> Option<Alert> {
        let Phase::Firing { id, started_at, .. } = &self.phase else {
            return None;
        };
        Some(Alert {
            id: id.clone(),
            rule: self.key.rule.clone(),
            severity: self.severity,
            state: if self.silenced_by.is_empty() {
                AlertState::Firing
            } else {
                AlertState::Silenced
            },
            subject: self.key.subject.clone(),
            labels: self.labels.clone(),
            summary: self.summary.clone(),
            started_at: *started_at,
            resolved_at: None,
            last_value: self.last_value,
            silenced_by: self.silenced_by.clone(),
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct RestartSample {
    #[serde(with = "time::serde::rfc3339")]
    at: Timestamp,
    count: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct RestartHistory {
    node: String,
    workload: String,
    samples: Vec<RestartSample>,
}

/// The engine's memory between evaluations; the server stores it (as JSON) after each.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EngineState {
    /// Sorted by key.
    #[serde(default)]
    alerts: Vec<Tracked>,
    /// Sorted by node and workload.
    #[serde(default)]
    restarts: Vec<RestartHistory>,
}

impl EngineState {
    /// The alerts firing now (silenced ones included).
    pub fn firing(&self) -> Vec<Alert> {
        self.alerts.iter().filter_map(Tracked::alert).collect()
    }

    /// How many keys hold but have not fired yet.
    pub fn pending_count(&self) -> usize {
        self.alerts
            .iter()
            .filter(|t| matches!(t.phase, Phase::Pending { .. }))
            .count()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NotificationKind {
    Fired,
    /// Still firing, `repeatInterval` after the last notification.
    Repeat,
    Resolved,
}

impl NotificationKind {
    pub fn status(self) -> NotificationStatus {
        match self {
            Self::Fired | Self::Repeat => NotificationStatus::Firing,
            Self::Resolved => NotificationStatus::Resolved,
        }
    }
}

/// A notification to send to the rule's receivers (the server adds its own).
#[derive(Debug, Clone, PartialEq)]
pub struct Notification {
    pub kind: NotificationKind,
    pub alert: Alert,
    pub webhooks: Vec<String>,
}

/// The result of one evaluation.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    pub state: EngineState,
    /// Every alert firing now, and every alert that resolved in this evaluation: what the
    /// server stores.
    pub alerts: Vec<Alert>,
    /// In the order they happened, per key.
    pub notifications: Vec<Notification>,
}

/// Whether a silence is in force at `now`.
pub fn silence_is_active(silence: &Silence, now: Timestamp) -> bool {
    silence.starts_at <= now && now < silence.ends_at
}

/// Whether a silence's matcher selects an alert (see `SilenceMatcher`). An empty matcher
/// selects nothing.
pub fn silence_matches(matcher: &SilenceMatcher, alert: &Alert) -> bool {
    if matcher.rule.is_none()
        && matcher.node.is_none()
        && matcher.site.is_none()
        && matcher.labels.is_empty()
    {
        return false;
    }
    let rule = matcher.rule.as_ref().is_none_or(|rule| *rule == alert.rule);
    let node = matcher
        .node
        .as_ref()
        .is_none_or(|node| matches!(&alert.subject, AlertSubject::Node { name } if name == node));
    let site = matcher
        .site
        .as_ref()
        .is_none_or(|site| match &alert.subject {
            AlertSubject::Site { value, .. } => value == site,
            AlertSubject::Node { .. } => alert.labels.get("site") == Some(site),
        });
    let labels = matcher
        .labels
        .iter()
        .all(|(key, value)| alert.labels.get(key) == Some(value));
    rule && node && site && labels
}

/// Checks a silence's matcher. The error is `(field path, message)`.
pub fn validate_silence_matcher(matcher: &SilenceMatcher) -> Result<(), (String, String)> {
    if matcher.rule.is_none()
        && matcher.node.is_none()
        && matcher.site.is_none()
        && matcher.labels.is_empty()
    {
        return Err((
            "matcher".into(),
            "the matcher is empty: give at least one of rule, node, site, labels".into(),
        ));
    }
    for (field, value) in [("rule", &matcher.rule), ("node", &matcher.node)] {
        if let Some(value) = value {
            validate_name(value).map_err(|reason| {
                (
                    format!("matcher.{field}"),
                    format!("{field} {value:?} {reason}"),
                )
            })?;
        }
    }
    if let Some(site) = &matcher.site {
        validate_value("site", site).map_err(|e| ("matcher.site".into(), e.to_string()))?;
    }
    for key in matcher.labels.keys() {
        if key.is_empty() || key.chars().any(char::is_whitespace) {
            return Err((
                format!("matcher.labels.{key}"),
                format!("invalid label name {key:?}"),
            ));
        }
    }
    Ok(())
}

/// What holds now about one key.
#[derive(Debug, Clone)]
struct Observed {
    severity: Severity,
    labels: Labels,
    summary: String,
    value: Option<f64>,
    webhooks: Vec<String>,
    repeat_interval: Duration,
    /// When the condition began to hold, when the data says (offline since, expiry
    /// window entered); otherwise the first evaluation that saw it counts.
    since: Option<Timestamp>,
    hold_for: Duration,
}

impl Observed {
    fn new(rule: &CompiledRule, labels: Labels, summary: String, value: Option<f64>) -> Self {
        Self {
            severity: rule.severity,
            labels,
            summary,
            value,
            webhooks: rule.webhooks.clone(),
            repeat_interval: rule.repeat_interval,
            since: None,
            hold_for: rule.hold_for(),
        }
    }
}

/// What holds now: the keys whose conditions hold, and the per-node keys a site alert
/// replaces (with the site).
#[derive(Debug, Default)]
struct Observations {
    holding: BTreeMap<AlertKey, Observed>,
    grouped: BTreeMap<AlertKey, AlertSubject>,
}

/// One evaluation step. See the module docs of `crate::alerts` for the rules.
pub fn evaluate(previous: &EngineState, input: &Input<'_>) -> Evaluation {
    let now = input.now;
    let restarts = update_restarts(&previous.restarts, input);
    let observations = observe(input, &restarts);
    let mut remaining: BTreeMap<AlertKey, Tracked> = previous
        .alerts
        .iter()
        .map(|t| (t.key.clone(), t.clone()))
        .collect();
    let active_silences: Vec<&Silence> = input
        .silences
        .iter()
        .filter(|s| silence_is_active(s, now))
        .collect();
    let mut next = Vec::new();
    let mut alerts = Vec::new();
    let mut notifications = Vec::new();

    for (key, observed) in observations.holding {
        let previous_phase = remaining.remove(&key).map(|t| t.phase);
        let mut tracked = Tracked {
            key,
            phase: Phase::Pending { since: now },
            severity: observed.severity,
            labels: observed.labels.clone(),
            summary: observed.summary.clone(),
            last_value: observed.value,
            webhooks: observed.webhooks.clone(),
            silenced_by: Vec::new(),
        };
        let (id, started_at, notified, last_notified_at) = match previous_phase {
            Some(Phase::Firing {
                id,
                started_at,
                notified,
                last_notified_at,
            }) => (id, started_at, notified, last_notified_at),
            pending => {
                let since = observed
                    .since
                    .or(match pending {
                        Some(Phase::Pending { since }) => Some(since),
                        _ => None,
                    })
                    .unwrap_or(now)
                    .min(now);
                if elapsed(now, since) < observed.hold_for {
                    tracked.phase = Phase::Pending { since };
                    next.push(tracked);
                    continue;
                }
                (alert_id(&tracked.key, now), now, false, None)
            }
        };
        tracked.phase = Phase::Firing {
            id: id.clone(),
            started_at,
            notified,
            last_notified_at,
        };
        tracked.silenced_by = silenced_by(&active_silences, &tracked);
        let silenced = !tracked.silenced_by.is_empty();
        let kind = if silenced {
            None
        } else if !notified {
            Some(NotificationKind::Fired)
        } else if !observed.repeat_interval.is_zero()
            && last_notified_at.is_none_or(|at| elapsed(now, at) >= observed.repeat_interval)
        {
            Some(NotificationKind::Repeat)
        } else {
            None
        };
        if let Some(kind) = kind {
            tracked.phase = Phase::Firing {
                id,
                started_at,
                notified: true,
                last_notified_at: Some(now),
            };
            if let Some(alert) = tracked.alert() {
                notifications.push(Notification {
                    kind,
                    alert,
                    webhooks: tracked.webhooks.clone(),
                });
            }
        }
        alerts.extend(tracked.alert());
        next.push(tracked);
    }

    for (key, tracked) in remaining {
        let Phase::Firing { notified, .. } = tracked.phase else {
            continue;
        };
        let Some(mut alert) = tracked.alert() else {
            continue;
        };
        alert.state = AlertState::Resolved;
        alert.resolved_at = Some(now);
        alert.silenced_by = Vec::new();
        let grouped_into = observations.grouped.get(&key);
        if let Some(site) = grouped_into {
            alert.summary = format!("{} (now part of the alert about {site})", alert.summary);
        }
        if notified && grouped_into.is_none() {
            notifications.push(Notification {
                kind: NotificationKind::Resolved,
                alert: alert.clone(),
                webhooks: tracked.webhooks.clone(),
            });
        }
        alerts.push(alert);
    }

    next.sort_by(|a, b| a.key.cmp(&b.key));
    Evaluation {
        state: EngineState {
            alerts: next,
            restarts: restarts
                .into_iter()
                .map(|((node, workload), samples)| RestartHistory {
                    node,
                    workload,
                    samples,
                })
                .collect(),
        },
        alerts,
        notifications,
    }
}

fn silenced_by(silences: &[&Silence], tracked: &Tracked) -> Vec<String> {
    let Some(alert) = tracked.alert() else {
        return Vec::new();
    };
    silences
        .iter()
        .filter(|s| silence_matches(&s.matcher, &alert))
        .map(|s| s.id.clone())
        .collect()
}

/// An alert's id: unique per key and firing time, the same however often it is computed.
fn alert_id(key: &AlertKey, started_at: Timestamp) -> String {
    let mut text = serde_json::to_string(key).unwrap_or_default();
    text.push_str(&started_at.unix_timestamp_nanos().to_string());
    crate::hash::sha256_hex(text.as_bytes())[..16].to_owned()
}

/// `now - since`, zero when `since` is later.
fn elapsed(now: Timestamp, since: Timestamp) -> Duration {
    Duration::try_from(now - since).unwrap_or(Duration::ZERO)
}

fn minus(at: Timestamp, duration: Duration) -> Timestamp {
    time::Duration::try_from(duration)
        .ok()
        .and_then(|d| at.checked_sub(d))
        .unwrap_or(time::PrimitiveDateTime::MIN.assume_utc())
}

fn plus(at: Timestamp, duration: Duration) -> Timestamp {
    time::Duration::try_from(duration)
        .ok()
        .and_then(|d| at.checked_add(d))
        .unwrap_or(time::PrimitiveDateTime::MAX.assume_utc())
}

/// A duration for people, to the second: `5m30s`.
fn human(duration: Duration) -> DurationSpec {
    DurationSpec(Duration::from_secs(duration.as_secs()))
}

fn rfc3339(at: Timestamp) -> String {
    at.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| at.to_string())
}

type RestartMap = BTreeMap<(String, String), Vec<RestartSample>>;

/// The restart counts seen, extended by what the nodes report now and trimmed to the
/// longest `within` of the crash-loop rules (nothing is kept without such a rule).
fn update_restarts(previous: &[RestartHistory], input: &Input<'_>) -> RestartMap {
    let keep = input
        .rules
        .iter()
        .filter_map(|rule| match rule.condition {
            Condition::CrashLoop { within, .. } => Some(within),
            _ => None,
        })
        .max();
    let Some(keep) = keep else {
        return RestartMap::new();
    };
    let mut old: RestartMap = previous
        .iter()
        .map(|h| ((h.node.clone(), h.workload.clone()), h.samples.clone()))
        .collect();
    let cutoff = minus(input.now, keep);
    let mut next = RestartMap::new();
    for node in input.nodes {
        for workload in &node.workloads {
            let key = (node.name.clone(), workload.name.clone());
            let mut samples = old.remove(&key).unwrap_or_default();
            let sample = RestartSample {
                at: input.now,
                count: workload.restarts,
            };
            match samples.last() {
                Some(last) if last.count == sample.count => {}
                // Fewer restarts than before: a new instance of the workload (or a new
                // agent); its history starts here.
                Some(last) if sample.count < last.count => samples = vec![sample],
                _ => samples.push(sample),
            }
            // Keep the newest sample at or before the cutoff: it is the baseline.
            let before_cutoff = samples.iter().rposition(|s| s.at <= cutoff).unwrap_or(0);
            samples.drain(..before_cutoff);
            next.insert(key, samples);
        }
    }
    next
}

/// How much a restart count grew since `since`: from the newest sample at or before it,
/// or from the oldest known when the history starts later.
fn restarts_since(samples: &[RestartSample], since: Timestamp, current: u32) -> u32 {
    let baseline = samples
        .iter()
        .rev()
        .find(|s| s.at <= since)
        .or_else(|| samples.first())
        .map_or(current, |s| s.count);
    current.saturating_sub(baseline)
}

fn observe(input: &Input<'_>, restarts: &RestartMap) -> Observations {
    let mut observations = Observations::default();
    for rule in input.rules {
        let nodes: Vec<&NodeObservation> = input
            .nodes
            .iter()
            .filter(|node| selector::matches(&rule.selector, &node.labels))
            .collect();
        match &rule.condition {
            Condition::NodeOffline { after, grouping } => observe_offline(
                rule,
                *after,
                grouping.as_ref(),
                &nodes,
                input.now,
                &mut observations,
            ),
            Condition::Metric { .. } => observe_metric(rule, &nodes, input, &mut observations),
            Condition::CrashLoop {
                restarts: threshold,
                within,
                workload,
                ..
            } => {
                let since = minus(input.now, *within);
                for node in &nodes {
                    for observed in &node.workloads {
                        if workload.as_ref().is_some_and(|w| *w != observed.name) {
                            continue;
                        }
                        let samples = restarts
                            .get(&(node.name.clone(), observed.name.clone()))
                            .map(Vec::as_slice)
                            .unwrap_or_default();
                        let grown = restarts_since(samples, since, observed.restarts);
                        if grown < *threshold {
                            continue;
                        }
                        let series = Labels::from([("workload".to_owned(), observed.name.clone())]);
                        let mut labels = node.labels.clone();
                        labels.extend(series.clone());
                        let summary = format!(
                            "workload {} on node {} restarted {grown} times within {}",
                            observed.name,
                            node.name,
                            human(*within)
                        );
                        observations.holding.insert(
                            AlertKey::node(&rule.name, &node.name, series),
                            Observed::new(rule, labels, summary, Some(f64::from(grown))),
                        );
                    }
                }
            }
            Condition::CertExpiry { within, .. } => {
                for node in &nodes {
                    let Some(not_after) = node.cert_not_after else {
                        continue;
                    };
                    let entered = minus(not_after, *within);
                    if input.now < entered {
                        continue;
                    }
                    let remaining = (not_after - input.now).as_seconds_f64();
                    let summary = if remaining > 0.0 {
                        format!(
                            "the certificate of node {} expires at {} (in {})",
                            node.name,
                            rfc3339(not_after),
                            human(elapsed(not_after, input.now))
                        )
                    } else {
                        format!(
                            "the certificate of node {} expired at {}",
                            node.name,
                            rfc3339(not_after)
                        )
                    };
                    let mut observed =
                        Observed::new(rule, node.labels.clone(), summary, Some(remaining));
                    observed.since = Some(entered);
                    observations.holding.insert(
                        AlertKey::node(&rule.name, &node.name, Labels::new()),
                        observed,
                    );
                }
            }
            Condition::OutboxDropping { stream, lookback } => {
                let since = minus(input.now, *lookback);
                for node in &nodes {
                    let recent: Vec<&DropObservation> = input
                        .drops
                        .iter()
                        .filter(|d| d.node == node.name && d.records > 0 && d.changed_at >= since)
                        .filter(|d| stream.as_ref().is_none_or(|s| *s == d.stream))
                        .collect();
                    if recent.is_empty() {
                        continue;
                    }
                    let records: u64 = recent.iter().map(|d| d.records).sum();
                    let streams: BTreeSet<&str> =
                        recent.iter().map(|d| d.stream.as_str()).collect();
                    let summary = format!(
                        "the outbox of node {} dropped records within the last {} (streams {}; {records} records dropped in total)",
                        node.name,
                        human(*lookback),
                        streams.into_iter().collect::<Vec<_>>().join(", "),
                    );
                    #[allow(clippy::cast_precision_loss)] // a count shown to people
                    let value = records as f64;
                    observations.holding.insert(
                        AlertKey::node(&rule.name, &node.name, Labels::new()),
                        Observed::new(rule, node.labels.clone(), summary, Some(value)),
                    );
                }
            }
        }
    }
    observations
}

fn observe_metric(
    rule: &CompiledRule,
    nodes: &[&NodeObservation],
    input: &Input<'_>,
    observations: &mut Observations,
) {
    let Condition::Metric {
        name,
        labels: wanted,
        comparison,
        threshold,
        ..
    } = &rule.condition
    else {
        return;
    };
    let Some(samples) = input.metrics.get(name) else {
        return;
    };
    let fresh_after = minus(input.now, input.metric_staleness);
    let selected: BTreeMap<&str, &NodeObservation> =
        nodes.iter().map(|n| (n.name.as_str(), *n)).collect();
    // The newest sample of each series of each selected node.
    let mut latest: BTreeMap<(&str, &Labels), &MetricObservation> = BTreeMap::new();
    for sample in samples {
        if sample.time < fresh_after
            || !selected.contains_key(sample.node.as_str())
            || !wanted.iter().all(|(k, v)| sample.labels.get(k) == Some(v))
        {
            continue;
        }
        let entry = latest
            .entry((sample.node.as_str(), &sample.labels))
            .or_insert(sample);
        if sample.time >= entry.time {
            *entry = sample;
        }
    }
    for ((node_name, series), sample) in latest {
        if !sample.value.is_finite() || !comparison.holds(sample.value, *threshold) {
            continue;
        }
        let Some(node) = selected.get(node_name) else {
            continue;
        };
        let mut labels = node.labels.clone();
        labels.extend(series.clone());
        let series_text = if series.is_empty() {
            String::new()
        } else {
            let pairs: Vec<String> = series.iter().map(|(k, v)| format!("{k}={v}")).collect();
            format!("{{{}}}", pairs.join(","))
        };
        let summary = format!(
            "{name}{series_text} on node {node_name} is {} ({} {threshold})",
            sample.value,
            comparison.as_str()
        );
        observations.holding.insert(
            AlertKey::node(&rule.name, node_name, series.clone()),
            Observed::new(rule, labels, summary, Some(sample.value)),
        );
    }
}

/// When a node went silent: last seen, or enrolled when never seen.
fn silent_since(node: &NodeObservation) -> Timestamp {
    node.last_seen.unwrap_or(node.enrolled_at)
}

fn observe_offline(
    rule: &CompiledRule,
    after: Duration,
    grouping: Option<&Grouping>,
    nodes: &[&NodeObservation],
    now: Timestamp,
    observations: &mut Observations,
) {
    let offline = |node: &NodeObservation| elapsed(now, silent_since(node)) >= after;
    // Nodes of sites that can be grouped (two nodes or more), by site.
    let mut sites: BTreeMap<&str, Vec<&NodeObservation>> = BTreeMap::new();
    if let Some(grouping) = grouping {
        for node in nodes {
            if let Some(site) = node.labels.get(&grouping.label) {
                sites.entry(site.as_str()).or_default().push(node);
            }
        }
        sites.retain(|_, members| members.len() >= 2);
    }
    let mut dark_nodes: BTreeMap<&str, AlertSubject> = BTreeMap::new();
    if let Some(grouping) = grouping {
        for (site, members) in &sites {
            let Some(observed) = dark_site(rule, grouping, site, members, &offline) else {
                continue;
            };
            let subject = AlertSubject::Site {
                label: grouping.label.clone(),
                value: (*site).to_owned(),
            };
            for member in members {
                dark_nodes.insert(member.name.as_str(), subject.clone());
            }
            observations.holding.insert(
                AlertKey {
                    rule: rule.name.clone(),
                    subject,
                    series: Labels::new(),
                },
                observed,
            );
        }
    }
    for node in nodes {
        let key = AlertKey::node(&rule.name, &node.name, Labels::new());
        if let Some(site) = dark_nodes.get(node.name.as_str()) {
            observations.grouped.insert(key, site.clone());
            continue;
        }
        if !offline(node) {
            continue;
        }
        let silent = silent_since(node);
        let summary = format!(
            "node {} has not been heard from for {} (since {})",
            node.name,
            human(elapsed(now, silent)),
            rfc3339(silent)
        );
        let mut observed = Observed::new(
            rule,
            node.labels.clone(),
            summary,
            Some(elapsed(now, silent).as_secs_f64()),
        );
        observed.since = Some(plus(silent, after));
        // A node with site-mates waits for them, so a site going dark is one alert.
        let in_group = grouping.is_some_and(|g| {
            node.labels
                .get(&g.label)
                .is_some_and(|site| sites.contains_key(site.as_str()))
        });
        if let (true, Some(grouping)) = (in_group, grouping) {
            observed.hold_for = grouping.window;
        }
        observations.holding.insert(key, observed);
    }
}

/// The site alert when enough of a site's nodes went offline within the window.
fn dark_site(
    rule: &CompiledRule,
    grouping: &Grouping,
    site: &str,
    members: &[&NodeObservation],
    offline: &dyn Fn(&NodeObservation) -> bool,
) -> Option<Observed> {
    let mut dark: Vec<(Timestamp, &str)> = members
        .iter()
        .filter(|n| offline(n))
        .map(|n| (silent_since(n), n.name.as_str()))
        .collect();
    dark.sort();
    // The most nodes that went silent within one window of each other.
    let mut largest = 0;
    let mut first = 0;
    for last in 0..dark.len() {
        while elapsed(dark[last].0, dark[first].0) > grouping.window {
            first += 1;
        }
        largest = largest.max(last - first + 1);
    }
    #[allow(
        clippy::cast_precision_loss,
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss
    )]
    let needed = ((members.len() as f64 * grouping.fraction).ceil() as usize).max(2);
    if largest < needed {
        return None;
    }
    let names: Vec<&str> = dark.iter().map(|(_, name)| *name).collect();
    let shown = names
        .iter()
        .take(10)
        .copied()
        .collect::<Vec<_>>()
        .join(", ");
    let more = names.len().saturating_sub(10);
    let summary = format!(
        "{} of {} nodes of site {}={site} are offline, {largest} of them went silent within {}: {shown}{}",
        names.len(),
        members.len(),
        grouping.label,
        human(grouping.window),
        if more > 0 {
            format!(" and {more} more")
        } else {
            String::new()
        },
    );
    #[allow(clippy::cast_precision_loss)]
    let share = names.len() as f64 / members.len() as f64;
    let labels = Labels::from([(grouping.label.clone(), site.to_owned())]);
    Some(Observed::new(rule, labels, summary, Some(share)))
}
