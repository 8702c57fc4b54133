//! Alerting on the wire: `kind: AlertRule` manifests, alerts, silences, webhook payloads
//! and their delivery records.
//!
//! An `AlertRuleManifest` is a user file and rejects unknown fields like every manifest;
//! the API bodies here (`Alert`, `Silence`, `WebhookDelivery`, ...) accept unknown fields.
//! What the fields mean, and which combinations are valid, is checked and evaluated by
//! `edgefleet_core::alerts`; this module only reads and writes them.
//!
//! Routes (operator writes, viewer reads):
//!
//! | Route | Access | Body → answer |
//! |---|---|---|
//! | POST /v1/alert-rules | operator | `Vec<AlertRuleManifest>` → `Vec<AlertRuleApplyResult>` |
//! | GET /v1/alert-rules | viewer | → `Vec<AlertRuleInfo>` |
//! | DELETE /v1/alert-rules/{name} | operator | → `Ack` |
//! | GET /v1/alerts?state=firing\|all | viewer | → `Vec<Alert>` (firing: firing and silenced) |
//! | GET /v1/alerts/{id} | viewer | → `AlertDetail` (with webhook deliveries) |
//! | POST /v1/silences | operator | `CreateSilence` → `Silence` |
//! | GET /v1/silences | viewer | → `Vec<Silence>` (newest first) |
//! | DELETE /v1/silences/{id} | operator | → `Silence` (expired now) |
//!
//! A webhook receiver gets `POST` requests whose JSON body is a `WebhookPayload`:
//! `{"version":1,"status":"firing"|"resolved","alert":{...},"notification":N}`. Delivery
//! is at least once (a receiver may see a notification twice; `notification` tells
//! repeats apart) and in order per alert and receiver.

use serde::{Deserialize, Serialize};

use crate::manifest::{Metadata, Selector};
use crate::{DurationSpec, Labels, Timestamp};

/// The `kind` of an alert rule document.
pub const ALERT_RULE_KIND: &str = "AlertRule";

/// One `kind: AlertRule` document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AlertRuleManifest {
    pub api_version: String,
    pub kind: String,
    pub metadata: Metadata,
    pub spec: AlertRuleSpec,
}

impl AlertRuleManifest {
    /// A `kind: AlertRule` document of the current `apiVersion`.
    pub fn new(name: impl Into<String>, spec: AlertRuleSpec) -> Self {
        Self {
            api_version: crate::API_VERSION.to_owned(),
            kind: ALERT_RULE_KIND.to_owned(),
            metadata: Metadata {
                name: name.into(),
                labels: Labels::new(),
            },
            spec,
        }
    }
}

/// `spec` of an alert rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AlertRuleSpec {
    #[serde(default)]
    pub severity: Severity,
    /// The nodes the rule watches; empty selects every node.
    #[serde(default)]
    pub selector: Selector,
    /// `for`: how long the condition must hold before the alert fires. For `nodeOffline`
    /// it is how long a node must be silent (default 5m); for `outboxDropping`, how
    /// recent a drop must be (default 10m); otherwise the pending time (default 0s).
    #[serde(default, rename = "for", skip_serializing_if = "Option::is_none")]
    pub for_duration: Option<DurationSpec>,
    pub condition: AlertCondition,
    /// For `nodeOffline` only: one alert for a site that goes dark (on by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site_grouping: Option<SiteGrouping>,
    /// Receivers of this rule's notifications, in addition to the server-wide ones.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub webhooks: Vec<String>,
    /// A still-firing alert is notified again after this long; `0s` never. Default 4h.
    #[serde(default = "default_repeat_interval")]
    pub repeat_interval: DurationSpec,
}

/// The default `repeatInterval`.
pub const DEFAULT_REPEAT_INTERVAL: DurationSpec = DurationSpec::from_secs(4 * 3600);

fn default_repeat_interval() -> DurationSpec {
    DEFAULT_REPEAT_INTERVAL
}

/// `spec.condition`: exactly one of the fields is given.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AlertCondition {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<MetricCondition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_offline: Option<NodeOfflineCondition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crash_loop: Option<CrashLoopCondition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_expiry: Option<CertExpiryCondition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outbox_dropping: Option<OutboxDroppingCondition>,
}

/// A metric sample compared with a threshold: `disk.used_percent{mount=/} > 90`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MetricCondition {
    /// The metric's dotted name (`disk.used_percent`).
    pub name: String,
    /// Only series carrying these labels (others may be present too); each matching
    /// series of each node is its own alert.
    #[serde(default, skip_serializing_if = "Labels::is_empty")]
    pub labels: Labels,
    /// `>`, `>=`, `<` or `<=` (checked by the core, so the error names the field).
    pub op: String,
    pub value: Number,
}

/// A node not heard from for the rule's `for`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeOfflineCondition {}

/// A workload restarting at least `restarts` times within `within`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CrashLoopCondition {
    #[serde(default = "default_crash_restarts")]
    pub restarts: u32,
    #[serde(default = "default_crash_within")]
    pub within: DurationSpec,
    /// Only this workload; every workload when left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<String>,
}

fn default_crash_restarts() -> u32 {
    3
}

fn default_crash_within() -> DurationSpec {
    DurationSpec::from_secs(600)
}

/// A node certificate expiring within `within` (or expired).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CertExpiryCondition {
    #[serde(default = "default_cert_within")]
    pub within: DurationSpec,
}

fn default_cert_within() -> DurationSpec {
    DurationSpec::from_secs(48 * 3600)
}

/// A node's outbox dropped records recently (its drop totals grew within `for`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct OutboxDroppingCondition {
    /// Only drops of this stream; any stream when left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
}

/// `spec.siteGrouping`: when at least `fraction` of a site's nodes (and at least two)
/// went offline within `window` of each other, one alert about the site replaces the
/// per-node alerts of its nodes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SiteGrouping {
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// The node label naming the site.
    #[serde(default = "default_site_label")]
    pub label: String,
    #[serde(default = "default_fraction")]
    pub fraction: Number,
    #[serde(default = "default_group_window")]
    pub window: DurationSpec,
}

impl Default for SiteGrouping {
    fn default() -> Self {
        Self {
            enabled: true,
            label: default_site_label(),
            fraction: default_fraction(),
            window: default_group_window(),
        }
    }
}

fn default_true() -> bool {
    true
}

fn default_site_label() -> String {
    "site".to_owned()
}

fn default_fraction() -> Number {
    Number(0.5)
}

fn default_group_window() -> DurationSpec {
    DurationSpec::from_secs(120)
}

/// A number in a manifest. Compared bit for bit, so manifests holding one can be `Eq`
/// (the core refuses NaN and infinities).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Number(pub f64);

impl PartialEq for Number {
    fn eq(&self, other: &Self) -> bool {
        self.0.to_bits() == other.0.to_bits()
    }
}

impl Eq for Number {}

impl std::fmt::Display for Number {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    #[default]
    Warning,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Info => "info",
            Self::Warning => "warning",
            Self::Critical => "critical",
        }
    }
}

/// What an alert is about: one node, or a whole site (nodes sharing a label value).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum AlertSubject {
    Node { name: String },
    Site { label: String, value: String },
}

impl std::fmt::Display for AlertSubject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Node { name } => write!(f, "node {name}"),
            Self::Site { label, value } => write!(f, "site {label}={value}"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertState {
    Firing,
    /// Firing, but a silence matches it: tracked, not notified.
    Silenced,
    Resolved,
}

impl AlertState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Firing => "firing",
            Self::Silenced => "silenced",
            Self::Resolved => "resolved",
        }
    }
}

/// One firing of a rule about one subject (and one metric series or workload), from
/// when it fired to when it resolved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// Unique per firing: the same condition firing again later is a new alert.
    pub id: String,
    pub rule: String,
    pub severity: Severity,
    pub state: AlertState,
    pub subject: AlertSubject,
    /// The subject's labels (a node's labels, a site's label) and the series' labels
    /// (`mount=/`, `workload=web`).
    #[serde(default, skip_serializing_if = "Labels::is_empty")]
    pub labels: Labels,
    pub summary: String,
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: Timestamp,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    pub resolved_at: Option<Timestamp>,
    /// The value behind the condition when last evaluated (the metric's value, seconds
    /// offline, restarts within the window, seconds to expiry, records dropped).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_value: Option<f64>,
    /// The silences that match it now.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub silenced_by: Vec<String>,
}

/// Which alerts a silence mutes: every given field must match (an empty matcher is
/// refused by the server).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SilenceMatcher {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// Alerts about this node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Alerts about this site, or about nodes whose `site` label has this value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
    /// Alerts carrying all these labels.
    #[serde(default, skip_serializing_if = "Labels::is_empty")]
    pub labels: Labels,
}

/// A silence: alerts it matches are tracked but not notified until it ends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Silence {
    pub id: String,
    pub matcher: SilenceMatcher,
    #[serde(default)]
    pub comment: String,
    pub created_by: String,
    #[serde(with = "time::serde::rfc3339")]
    pub starts_at: Timestamp,
    #[serde(with = "time::serde::rfc3339")]
    pub ends_at: Timestamp,
}

/// `POST /v1/silences`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateSilence {
    pub matcher: SilenceMatcher,
    /// How long from now (`2h`).
    pub duration: DurationSpec,
    #[serde(default)]
    pub comment: String,
}

/// What applying one alert rule did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertRuleApplyResult {
    pub name: String,
    pub action: crate::api::ApplyAction,
}

/// `GET /v1/alert-rules`: a rule and how many of its alerts are firing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertRuleInfo {
    pub manifest: AlertRuleManifest,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: Timestamp,
    #[serde(default)]
    pub firing: u32,
}

/// The status a webhook notification reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NotificationStatus {
    Firing,
    Resolved,
}

impl NotificationStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Firing => "firing",
            Self::Resolved => "resolved",
        }
    }
}

/// The body of a webhook `POST`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookPayload {
    /// 1.
    pub version: u32,
    pub status: NotificationStatus,
    pub alert: Alert,
    /// The notification's id: the same in every retry of it.
    #[serde(default)]
    pub notification: u64,
}

/// The payload version this release sends.
pub const WEBHOOK_PAYLOAD_VERSION: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryState {
    /// Not delivered yet; attempts continue.
    Pending,
    Delivered,
    /// Given up after the last allowed attempt.
    Failed,
}

impl DeliveryState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Delivered => "delivered",
            Self::Failed => "failed",
        }
    }
}

/// One notification to one receiver, and how its delivery went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookDelivery {
    pub notification: u64,
    pub alert_id: String,
    pub receiver: String,
    pub status: NotificationStatus,
    pub state: DeliveryState,
    /// Attempts made so far.
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: Timestamp,
    /// When the next attempt is due (pending deliveries).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    pub next_attempt_at: Option<Timestamp>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    pub delivered_at: Option<Timestamp>,
}

/// `GET /v1/alerts/{id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertDetail {
    pub alert: Alert,
    #[serde(default)]
    pub deliveries: Vec<WebhookDelivery>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_shape() {
        let alert = Alert {
            id: "a1".into(),
            rule: "offline".into(),
            severity: Severity::Critical,
            state: AlertState::Firing,
            subject: AlertSubject::Site {
                label: "site".into(),
                value: "berlin".into(),
            },
            labels: Labels::new(),
            summary: "s".into(),
            started_at: time::macros::datetime!(2026-01-01 0:00 UTC),
            resolved_at: None,
            last_value: Some(1.0),
            silenced_by: vec![],
        };
        let payload = WebhookPayload {
            version: WEBHOOK_PAYLOAD_VERSION,
            status: NotificationStatus::Firing,
            alert,
            notification: 7,
        };
        let json = serde_json::to_value(&payload).unwrap();
        assert_eq!(json["version"], 1);
        assert_eq!(json["status"], "firing");
        assert_eq!(json["alert"]["subject"]["kind"], "site");
        assert_eq!(json["alert"]["subject"]["value"], "berlin");
        assert_eq!(json["alert"]["state"], "firing");
        let back: WebhookPayload = serde_json::from_value(json).unwrap();
        assert_eq!(back, payload);
    }

    #[test]
    fn numbers_compare_by_bits() {
        assert_eq!(Number(1.5), Number(1.5));
        assert_ne!(Number(0.0), Number(-0.0));
    }
}
