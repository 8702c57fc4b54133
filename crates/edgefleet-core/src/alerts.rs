//! Alert rules and the pure alert engine.
//!
//! An operator applies `kind: AlertRule` documents (see `edgefleet_wire::alert`):
//!
//! ```yaml
//! apiVersion: edgefleet.io/v1
//! kind: AlertRule
//! metadata: {name: disk-full}
//! spec:
//!   severity: critical            # info | warning | critical (default warning)
//!   selector: {matchLabels: {site: berlin}}   # the nodes watched (default all)
//!   for: 10m
//!   condition:                    # exactly one of:
//!     metric: {name: disk.used_percent, labels: {mount: /}, op: ">", value: 90}
//!     # nodeOffline: {}
//!     # crashLoop: {restarts: 3, within: 10m, workload: web}
//!     # certExpiry: {within: 48h}
//!     # outboxDropping: {stream: camera}
//!   siteGrouping: {label: site, fraction: 0.5, window: 2m}   # nodeOffline only; default on
//!   webhooks: ["https://hooks.example/edgefleet"]            # plus the server-wide ones
//!   repeatInterval: 4h            # re-notify a still-firing alert; 0s never (default 4h)
//! ```
//!
//! What `for` means depends on the condition:
//! - `metric`, `crashLoop`, `certExpiry`: the condition must hold that long before the
//!   alert fires (default `0s`: at once). The condition holding, then not, then holding
//!   again starts the wait over, so a flapping condition fires at most once per `for`.
//! - `nodeOffline`: a node is offline once not heard from for `for` (default `5m`).
//! - `outboxDropping`: the node's drop totals grew within the last `for` (default `10m`).
//!
//! Conditions:
//! - `metric`: each series of the metric whose labels include `labels`, per node, is its
//!   own alert; its latest sample (not older than the engine's staleness bound) is
//!   compared. A series that stops reporting resolves.
//! - `nodeOffline`: last seen (or, never seen, enrolled) at least `for` ago.
//! - `crashLoop`: the reported restart count of a workload grew by at least `restarts`
//!   within `within` (the engine keeps the counts it saw; a count that goes down starts
//!   the history again).
//! - `certExpiry`: the node's current certificate ends within `within`, or has ended.
//! - `outboxDropping`: see `for` above.
//!
//! Site grouping (`nodeOffline` only): nodes are grouped by the value of `label`. When a
//! site of at least two selected nodes has at least `fraction` of them (and at least two)
//! offline, with the moments they went silent all within `window`, one alert about the
//! site fires and no per-node offline alert of that rule fires for a node of that site;
//! per-node alerts of the site already firing end (resolved, not notified: the node is
//! not back). Per-node offline alerts of nodes in a site of two or more wait `window`
//! longer before firing, so that a site going dark one node at a time is still reported
//! once. When the site no longer counts as dark, its alert resolves, and nodes still
//! offline get their own alerts.
//!
//! Silences (`edgefleet_wire::alert::Silence`) match alerts by rule, node, site and
//! labels. A silenced alert is tracked (state `silenced`) but not notified; when the
//! silence ends and the alert is still firing, it is notified then. A resolution is
//! notified when the firing was.
//!
//! **Invariant:** `evaluate` is a pure function of the previous `EngineState` and its
//! `Input`; time is `Input::now`. For every alert key the notifications alternate
//! `Fired` (then any `Repeat`s) and `Resolved`, never two `Fired` in a row, and nothing
//! fires before its condition held `for` (property-tested in `alerts/tests.rs`).

use std::time::Duration;

use edgefleet_wire::API_VERSION;
use edgefleet_wire::Labels;
use edgefleet_wire::alert::{ALERT_RULE_KIND, AlertRuleManifest, Severity};
use edgefleet_wire::manifest::Selector;

use crate::labels::{validate_key, validate_labels, validate_name};
use crate::selector;

mod engine;
#[cfg(test)]
mod tests;

pub use engine::{
    AlertKey, DropObservation, EngineState, Evaluation, Input, MetricObservation, NodeObservation,
    Notification, NotificationKind, WorkloadObservation, evaluate, silence_is_active,
    silence_matches, validate_silence_matcher,
};

/// Default `for` of `nodeOffline`.
pub const DEFAULT_OFFLINE_AFTER: Duration = Duration::from_secs(300);
/// Default `for` of `outboxDropping`.
pub const DEFAULT_DROP_LOOKBACK: Duration = Duration::from_secs(600);
/// The most receivers a rule may name.
pub const MAX_WEBHOOKS: usize = 10;

/// A comparison of a metric condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Comparison {
    Greater,
    GreaterOrEqual,
    Less,
    LessOrEqual,
}

impl Comparison {
    pub fn parse(op: &str) -> Option<Self> {
        match op.trim() {
            ">" => Some(Self::Greater),
            ">=" => Some(Self::GreaterOrEqual),
            "<" => Some(Self::Less),
            "<=" => Some(Self::LessOrEqual),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Greater => ">",
            Self::GreaterOrEqual => ">=",
            Self::Less => "<",
            Self::LessOrEqual => "<=",
        }
    }

    /// Whether `value` compared with `threshold` holds.
    pub fn holds(self, value: f64, threshold: f64) -> bool {
        match self {
            Self::Greater => value > threshold,
            Self::GreaterOrEqual => value >= threshold,
            Self::Less => value < threshold,
            Self::LessOrEqual => value <= threshold,
        }
    }
}

/// A rule's condition, with every default filled in.
#[derive(Debug, Clone, PartialEq)]
pub enum Condition {
    Metric {
        name: String,
        labels: Labels,
        comparison: Comparison,
        threshold: f64,
        hold_for: Duration,
    },
    NodeOffline {
        after: Duration,
        grouping: Option<Grouping>,
    },
    CrashLoop {
        restarts: u32,
        within: Duration,
        workload: Option<String>,
        hold_for: Duration,
    },
    CertExpiry {
        within: Duration,
        hold_for: Duration,
    },
    OutboxDropping {
        stream: Option<String>,
        lookback: Duration,
    },
}

/// Site grouping of a `nodeOffline` rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Grouping {
    pub label: String,
    pub fraction: f64,
    pub window: Duration,
}

/// A checked alert rule, ready for the engine.
#[derive(Debug, Clone, PartialEq)]
pub struct CompiledRule {
    pub name: String,
    pub severity: Severity,
    pub selector: Selector,
    pub condition: Condition,
    pub webhooks: Vec<String>,
    /// Zero: never re-notify.
    pub repeat_interval: Duration,
}

/// What is wrong with an alert rule: the field path and what would be right.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct RuleError {
    pub field: String,
    pub message: String,
}

fn rule_error(field: impl Into<String>, message: impl Into<String>) -> RuleError {
    RuleError {
        field: field.into(),
        message: message.into(),
    }
}

const CONDITION_NAMES: &str = "metric, nodeOffline, crashLoop, certExpiry, outboxDropping";

impl CompiledRule {
    /// Checks a rule and fills in its defaults. What validates is exactly what compiles.
    pub fn new(manifest: &AlertRuleManifest) -> Result<Self, RuleError> {
        validate_header(manifest)?;
        let spec = &manifest.spec;
        selector::validate(&spec.selector, "spec.selector").map_err(|error| match error {
            selector::SelectorError::Label { field, source } => {
                rule_error(field, source.to_string())
            }
            other => rule_error("spec.selector", other.to_string()),
        })?;
        let condition = compile_condition(manifest)?;
        if spec.site_grouping.is_some() && !matches!(condition, Condition::NodeOffline { .. }) {
            return Err(rule_error(
                "spec.siteGrouping",
                "siteGrouping applies only to the nodeOffline condition",
            ));
        }
        if spec.webhooks.len() > MAX_WEBHOOKS {
            return Err(rule_error(
                "spec.webhooks",
                format!("at most {MAX_WEBHOOKS} webhooks per rule"),
            ));
        }
        for (i, url) in spec.webhooks.iter().enumerate() {
            validate_webhook_url(url).map_err(|m| rule_error(format!("spec.webhooks[{i}]"), m))?;
        }
        let repeat_interval = spec.repeat_interval.as_duration();
        if !repeat_interval.is_zero() && repeat_interval < Duration::from_secs(1) {
            return Err(rule_error(
                "spec.repeatInterval",
                format!(
                    "repeatInterval {} is too short: use at least 1s, or 0s to never repeat",
                    spec.repeat_interval
                ),
            ));
        }
        let mut webhooks = spec.webhooks.clone();
        webhooks.dedup();
        Ok(Self {
            name: manifest.metadata.name.clone(),
            severity: spec.severity,
            selector: spec.selector.clone(),
            condition,
            webhooks,
            repeat_interval,
        })
    }

    /// How long the condition must hold before the alert fires (zero for the conditions
    /// whose `for` is part of the condition itself).
    pub fn hold_for(&self) -> Duration {
        match &self.condition {
            Condition::Metric { hold_for, .. }
            | Condition::CrashLoop { hold_for, .. }
            | Condition::CertExpiry { hold_for, .. } => *hold_for,
            Condition::NodeOffline { .. } | Condition::OutboxDropping { .. } => Duration::ZERO,
        }
    }
}

/// Checks an alert rule beyond its shape. The error is `(field path, message)`, as the
/// other kinds of `crate::manifest` report it.
pub fn validate_rule(manifest: &AlertRuleManifest) -> Result<(), (String, String)> {
    CompiledRule::new(manifest)
        .map(drop)
        .map_err(|error| (error.field, error.message))
}

fn validate_header(manifest: &AlertRuleManifest) -> Result<(), RuleError> {
    if manifest.api_version != API_VERSION {
        return Err(rule_error(
            "apiVersion",
            format!(
                "unsupported apiVersion {:?}: expected {API_VERSION:?}",
                manifest.api_version
            ),
        ));
    }
    if manifest.kind != ALERT_RULE_KIND {
        return Err(rule_error(
            "kind",
            format!(
                "unsupported kind {:?}: expected {ALERT_RULE_KIND:?}",
                manifest.kind
            ),
        ));
    }
    let name = &manifest.metadata.name;
    validate_name(name)
        .map_err(|reason| rule_error("metadata.name", format!("name {name:?} {reason}")))?;
    validate_labels(&manifest.metadata.labels)
        .map_err(|e| rule_error("metadata.labels", e.to_string()))
}

/// At least 1s: shorter durations are below the evaluation's resolution anyway.
fn at_least_a_second(field: &str, name: &str, value: Duration) -> Result<(), RuleError> {
    if value < Duration::from_secs(1) {
        return Err(rule_error(
            field,
            format!(
                "{name} {} is too short: use at least 1s",
                edgefleet_wire::DurationSpec(value)
            ),
        ));
    }
    Ok(())
}

fn compile_condition(manifest: &AlertRuleManifest) -> Result<Condition, RuleError> {
    let spec = &manifest.spec;
    let given = &spec.condition;
    let present: Vec<&str> = [
        ("metric", given.metric.is_some()),
        ("nodeOffline", given.node_offline.is_some()),
        ("crashLoop", given.crash_loop.is_some()),
        ("certExpiry", given.cert_expiry.is_some()),
        ("outboxDropping", given.outbox_dropping.is_some()),
    ]
    .into_iter()
    .filter(|(_, set)| *set)
    .map(|(name, _)| name)
    .collect();
    match present.as_slice() {
        [_] => {}
        [] => {
            return Err(rule_error(
                "spec.condition",
                format!(
                    "no condition given: set exactly one of {CONDITION_NAMES} (a condition \
                     without settings is written with braces: `nodeOffline: {{}}`)"
                ),
            ));
        }
        several => {
            return Err(rule_error(
                "spec.condition",
                format!(
                    "{} are given, but a rule has exactly one condition: split it into \
                     several rules",
                    several.join(" and ")
                ),
            ));
        }
    }
    let for_duration = spec.for_duration.map(|d| d.as_duration());
    let hold_for = for_duration.unwrap_or(Duration::ZERO);
    if let Some(metric) = &given.metric {
        return compile_metric(metric, hold_for);
    }
    if given.node_offline.is_some() {
        let after = for_duration.unwrap_or(DEFAULT_OFFLINE_AFTER);
        at_least_a_second("spec.for", "for", after)?;
        let grouping = compile_grouping(spec.site_grouping.clone().unwrap_or_default())?;
        return Ok(Condition::NodeOffline { after, grouping });
    }
    if let Some(crash) = &given.crash_loop {
        if crash.restarts == 0 {
            return Err(rule_error(
                "spec.condition.crashLoop.restarts",
                "restarts must be at least 1",
            ));
        }
        let within = crash.within.as_duration();
        at_least_a_second("spec.condition.crashLoop.within", "within", within)?;
        if let Some(workload) = &crash.workload {
            validate_name(workload).map_err(|reason| {
                rule_error(
                    "spec.condition.crashLoop.workload",
                    format!("workload name {workload:?} {reason}"),
                )
            })?;
        }
        return Ok(Condition::CrashLoop {
            restarts: crash.restarts,
            within,
            workload: crash.workload.clone(),
            hold_for,
        });
    }
    if let Some(cert) = &given.cert_expiry {
        let within = cert.within.as_duration();
        at_least_a_second("spec.condition.certExpiry.within", "within", within)?;
        return Ok(Condition::CertExpiry { within, hold_for });
    }
    if let Some(drops) = &given.outbox_dropping {
        if drops.stream.as_deref().is_some_and(|s| s.trim().is_empty()) {
            return Err(rule_error(
                "spec.condition.outboxDropping.stream",
                "stream is empty: name a stream or leave the field out for every stream",
            ));
        }
        let lookback = for_duration.unwrap_or(DEFAULT_DROP_LOOKBACK);
        at_least_a_second("spec.for", "for", lookback)?;
        return Ok(Condition::OutboxDropping {
            stream: drops.stream.clone(),
            lookback,
        });
    }
    // `present` held exactly one of the five, and each returned above.
    Err(rule_error(
        "spec.condition",
        format!("set exactly one of {CONDITION_NAMES}"),
    ))
}

fn compile_metric(
    metric: &edgefleet_wire::alert::MetricCondition,
    hold_for: Duration,
) -> Result<Condition, RuleError> {
    let field = |name: &str| format!("spec.condition.metric.{name}");
    let name = metric.name.trim();
    let valid_name = !name.is_empty()
        && name.len() <= 200
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
        });
    if !valid_name {
        return Err(rule_error(
            field("name"),
            format!(
                "metric name {:?} is not valid: expected a dotted lowercase name like \
                 disk.used_percent",
                metric.name
            ),
        ));
    }
    for key in metric.labels.keys() {
        if key.is_empty() || key.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(rule_error(
                field(&format!("labels.{key}")),
                format!("invalid metric label name {key:?}"),
            ));
        }
    }
    let comparison = Comparison::parse(&metric.op).ok_or_else(|| {
        rule_error(
            field("op"),
            format!("must be one of >, >=, <, <= (found {:?})", metric.op),
        )
    })?;
    if !metric.value.0.is_finite() {
        return Err(rule_error(
            field("value"),
            format!("value {} is not a finite number", metric.value),
        ));
    }
    Ok(Condition::Metric {
        name: name.to_owned(),
        labels: metric.labels.clone(),
        comparison,
        threshold: metric.value.0,
        hold_for,
    })
}

fn compile_grouping(
    grouping: edgefleet_wire::alert::SiteGrouping,
) -> Result<Option<Grouping>, RuleError> {
    if !grouping.enabled {
        return Ok(None);
    }
    validate_key(&grouping.label)
        .map_err(|e| rule_error("spec.siteGrouping.label", e.to_string()))?;
    let fraction = grouping.fraction.0;
    if !(fraction > 0.0 && fraction <= 1.0) {
        return Err(rule_error(
            "spec.siteGrouping.fraction",
            format!(
                "fraction {} is out of range: a share of a site's nodes, above 0 and at most 1 \
                 (0.5 is half)",
                grouping.fraction
            ),
        ));
    }
    let window = grouping.window.as_duration();
    at_least_a_second("spec.siteGrouping.window", "window", window)?;
    Ok(Some(Grouping {
        label: grouping.label,
        fraction,
        window,
    }))
}

/// A webhook URL: `http://` or `https://`, a host, no whitespace.
pub fn validate_webhook_url(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(|| format!("webhook {url:?} is not an http:// or https:// URL"))?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = authority.rsplit('@').next().unwrap_or_default();
    if host.is_empty() || host.starts_with(':') {
        return Err(format!("webhook {url:?} has no host"));
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("webhook {url:?} contains whitespace"));
    }
    if url.len() > 2048 {
        return Err("webhook URL is longer than 2048 characters".into());
    }
    Ok(())
}
