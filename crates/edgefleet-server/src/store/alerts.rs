//! Alert rules, the alert engine's state, alerts with their history, silences, and the
//! queue of webhook notifications.
//!
//! The engine's state, the alerts an evaluation changed and the notifications it produced
//! are written together (`save_alert_evaluation`), so a crash never leaves a notification
//! that is queued but whose firing the engine forgot, or the other way round: after a
//! restart the engine continues from its stored state and notifies nothing twice.
//!
//! A notification is queued once per receiver and leaves the queue only when delivered
//! or given up (`record_delivery`); `due_notifications` hands out, per alert and
//! receiver, only the oldest pending notification, so deliveries keep their order.

use async_trait::async_trait;
use edgefleet_core::alerts::EngineState;
use edgefleet_wire::Timestamp;
use edgefleet_wire::alert::{
    Alert, AlertRuleManifest, NotificationStatus, Silence, WebhookDelivery,
};
use edgefleet_wire::api::ApplyAction;

use super::{NewAudit, StoreResult};

/// An alert rule with the content hash of its manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertRuleRecord {
    pub manifest: AlertRuleManifest,
    pub hash: String,
    pub updated_at: Timestamp,
}

/// A notification of an alert to one receiver, to queue.
#[derive(Debug, Clone, PartialEq)]
pub struct NewNotification {
    pub receiver: String,
    pub status: NotificationStatus,
    /// The alert as notified (its id keys the delivery order).
    pub alert: Alert,
}

/// A queued notification whose next attempt is due.
#[derive(Debug, Clone, PartialEq)]
pub struct QueuedNotification {
    pub id: u64,
    pub receiver: String,
    pub status: NotificationStatus,
    pub alert: Alert,
    /// Attempts made before this one.
    pub attempts: u32,
}

/// How one delivery attempt went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryOutcome {
    Delivered,
    /// Failed; try again at `next_attempt_at`.
    Retry {
        error: String,
        next_attempt_at: Timestamp,
    },
    /// Failed, and it was the last attempt allowed.
    GaveUp {
        error: String,
    },
}

/// Which alerts to list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlertFilter {
    /// Firing and silenced.
    Firing,
    /// Also resolved ones (history), newest first.
    All,
}

/// What `prune_alert_history` removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    pub alerts: u64,
    pub notifications: u64,
    pub silences: u64,
}

#[async_trait]
pub trait AlertStore: Send + Sync {
    /// Creates or replaces every rule whose hash differs, with an audit entry each, in one
    /// transaction. Results are in request order.
    async fn apply_alert_rules(
        &self,
        items: Vec<AlertRuleRecord>,
        actor: &str,
        at: Timestamp,
    ) -> StoreResult<Vec<(String, ApplyAction)>>;
    /// Sorted by name.
    async fn list_alert_rules(&self) -> StoreResult<Vec<AlertRuleRecord>>;
    async fn delete_alert_rule(&self, name: &str, audit: NewAudit) -> StoreResult<bool>;

    /// The engine's state as last saved (`None` before the first evaluation).
    async fn load_alert_engine(&self) -> StoreResult<Option<EngineState>>;
    /// Saves one evaluation in one transaction: the engine's state; the alerts it changed
    /// (inserted or updated by id; an alert stored as firing whose id is not among
    /// `alerts` any more is marked resolved at `at`, so the table never disagrees with
    /// the engine); and the notifications to queue. Returns how many notifications are
    /// pending afterwards.
    async fn save_alert_evaluation(
        &self,
        engine: &EngineState,
        alerts: Vec<Alert>,
        notifications: Vec<NewNotification>,
        at: Timestamp,
    ) -> StoreResult<u64>;
    /// Firing alerts oldest first, or every alert newest first; at most `limit`.
    async fn list_alerts(&self, filter: AlertFilter, limit: u32) -> StoreResult<Vec<Alert>>;
    async fn get_alert(&self, id: &str) -> StoreResult<Option<Alert>>;

    async fn create_silence(&self, silence: Silence, audit: NewAudit) -> StoreResult<()>;
    /// Newest first.
    async fn list_silences(&self) -> StoreResult<Vec<Silence>>;
    /// Ends a silence at `at` (earlier end times stay). `None` when it does not exist.
    async fn expire_silence(
        &self,
        id: &str,
        at: Timestamp,
        audit: NewAudit,
    ) -> StoreResult<Option<Silence>>;

    /// Pending notifications due at `now`, oldest first, at most one per alert and
    /// receiver (the oldest pending one: later ones wait for it).
    async fn due_notifications(
        &self,
        now: Timestamp,
        limit: u32,
    ) -> StoreResult<Vec<QueuedNotification>>;
    /// When the next notification `due_notifications` would hand out is due, if any.
    async fn next_notification_due(&self) -> StoreResult<Option<Timestamp>>;
    /// Records an attempt; returns how many notifications are pending afterwards.
    async fn record_delivery(
        &self,
        id: u64,
        outcome: DeliveryOutcome,
        at: Timestamp,
    ) -> StoreResult<u64>;
    /// The deliveries of an alert's notifications, oldest first.
    async fn list_deliveries(&self, alert_id: &str) -> StoreResult<Vec<WebhookDelivery>>;
    /// Deletes resolved alerts, finished deliveries and ended silences older than `before`.
    async fn prune_alert_history(&self, before: Timestamp) -> StoreResult<Pruned>;
}
