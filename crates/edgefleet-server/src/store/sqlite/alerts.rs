//! `AlertStore` in SQLite.
//!
//! Rules and silences are stored whole as JSON, with the columns queries need beside
//! them. The engine's state is one row. An alert is stored as the JSON of the wire
//! `Alert` plus `state` and `resolved_at` columns, which are authoritative (the JSON is
//! what was last evaluated). The notification queue keeps every notification with its
//! delivery record; `id` (AUTOINCREMENT) orders notifications of one alert and receiver.

use async_trait::async_trait;
use edgefleet_core::alerts::EngineState;
use edgefleet_wire::Timestamp;
use edgefleet_wire::alert::{
    Alert, AlertState, DeliveryState, NotificationStatus, Silence, WebhookDelivery,
};
use edgefleet_wire::api::ApplyAction;
use rusqlite::{Connection, OptionalExtension, Row, params};

use super::{
    HashedTable, SqliteStore, apply_hashed, commit, corrupt, db, from_json, insert_audit,
    time_from_db, time_to_db, to_json, u32_from_db, u64_from_db, u64_to_db, write_tx,
};
use crate::store::{
    AlertFilter, AlertRuleRecord, AlertStore, DeliveryOutcome, NewAudit, NewNotification, Pruned,
    QueuedNotification, StoreResult,
};

/// Schema migration 5: the tables of `AlertStore`.
pub(super) const MIGRATION: &str = r#"
CREATE TABLE alert_rules (
    name TEXT PRIMARY KEY,
    hash TEXT NOT NULL,
    manifest TEXT NOT NULL,
    updated_at INTEGER NOT NULL
) STRICT;

CREATE TABLE alert_engine (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    state TEXT NOT NULL,
    updated_at INTEGER NOT NULL
) STRICT;

CREATE TABLE alerts (
    id TEXT PRIMARY KEY,
    rule TEXT NOT NULL,
    state TEXT NOT NULL,
    started_at INTEGER NOT NULL,
    resolved_at INTEGER,
    alert TEXT NOT NULL,
    updated_at INTEGER NOT NULL
) STRICT;

CREATE INDEX alerts_by_state ON alerts (state, started_at);
CREATE INDEX alerts_by_start ON alerts (started_at);

CREATE TABLE silences (
    id TEXT PRIMARY KEY,
    silence TEXT NOT NULL,
    starts_at INTEGER NOT NULL,
    ends_at INTEGER NOT NULL
) STRICT;

CREATE TABLE alert_notifications (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    alert_id TEXT NOT NULL,
    receiver TEXT NOT NULL,
    status TEXT NOT NULL,
    alert TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    created_at INTEGER NOT NULL,
    next_attempt_at INTEGER,
    delivered_at INTEGER
) STRICT;

CREATE INDEX alert_notifications_due ON alert_notifications (state, next_attempt_at);
CREATE INDEX alert_notifications_order ON alert_notifications (alert_id, receiver, id);
"#;

fn state_to_db(state: AlertState) -> &'static str {
    state.as_str()
}

fn state_from_db(text: &str) -> StoreResult<AlertState> {
    match text {
        "firing" => Ok(AlertState::Firing),
        "silenced" => Ok(AlertState::Silenced),
        "resolved" => Ok(AlertState::Resolved),
        other => Err(corrupt("alert state", format!("unknown state {other:?}"))),
    }
}

fn status_from_db(text: &str) -> StoreResult<NotificationStatus> {
    match text {
        "firing" => Ok(NotificationStatus::Firing),
        "resolved" => Ok(NotificationStatus::Resolved),
        other => Err(corrupt(
            "notification status",
            format!("unknown status {other:?}"),
        )),
    }
}

fn delivery_state_from_db(text: &str) -> StoreResult<DeliveryState> {
    match text {
        "pending" => Ok(DeliveryState::Pending),
        "delivered" => Ok(DeliveryState::Delivered),
        "failed" => Ok(DeliveryState::Failed),
        other => Err(corrupt(
            "delivery state",
            format!("unknown state {other:?}"),
        )),
    }
}

// ---- rules ----

fn apply_rules(
    connection: &mut Connection,
    items: &[AlertRuleRecord],
    actor: &str,
    at: Timestamp,
) -> StoreResult<Vec<(String, ApplyAction)>> {
    const RULES: HashedTable = HashedTable {
        select_hash: "SELECT hash FROM alert_rules WHERE name = ?1",
        upsert: "INSERT INTO alert_rules (name, hash, manifest, updated_at) VALUES (?1, ?2, ?3, ?4) \
                 ON CONFLICT (name) DO UPDATE SET hash = ?2, manifest = ?3, updated_at = ?4",
        reading: "reading an alert rule",
        saving: "saving an alert rule",
        noun: "alert rule",
        object: "alert-rule",
    };
    let tx = write_tx(connection)?;
    let mut results = Vec::with_capacity(items.len());
    for item in items {
        let name = &item.manifest.metadata.name;
        let action = apply_hashed(&tx, &RULES, (name, &item.hash, &item.manifest), actor, at)?;
        results.push((name.clone(), action));
    }
    commit(tx)?;
    Ok(results)
}

fn list_rules(connection: &Connection) -> StoreResult<Vec<AlertRuleRecord>> {
    let mut statement = connection
        .prepare_cached("SELECT name, hash, manifest, updated_at FROM alert_rules ORDER BY name")
        .map_err(db("listing alert rules"))?;
    let rows: Vec<(String, String, String, i64)> = statement
        .query_map([], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
        })
        .and_then(Iterator::collect)
        .map_err(db("listing alert rules"))?;
    rows.into_iter()
        .map(|(name, hash, manifest, updated_at)| {
            let what = format!("alert rule {name}");
            Ok(AlertRuleRecord {
                manifest: from_json(&what, &manifest)?,
                hash,
                updated_at: time_from_db(&what, updated_at)?,
            })
        })
        .collect()
}

fn delete_rule(connection: &mut Connection, name: &str, audit: &NewAudit) -> StoreResult<bool> {
    let tx = write_tx(connection)?;
    let deleted = tx
        .execute("DELETE FROM alert_rules WHERE name = ?1", [name])
        .map_err(db("deleting an alert rule"))?;
    if deleted == 0 {
        return Ok(false);
    }
    insert_audit(&tx, audit)?;
    commit(tx)?;
    Ok(true)
}

// ---- engine state and alerts ----

fn load_engine(connection: &Connection) -> StoreResult<Option<EngineState>> {
    let state: Option<String> = connection
        .query_row("SELECT state FROM alert_engine WHERE id = 1", [], |row| {
            row.get(0)
        })
        .optional()
        .map_err(db("reading the alert engine's state"))?;
    state
        .map(|text| from_json("alert engine state", &text))
        .transpose()
}

fn pending_count(connection: &Connection) -> StoreResult<u64> {
    let count: i64 = connection
        .query_row(
            "SELECT COUNT(*) FROM alert_notifications WHERE state = 'pending'",
            [],
            |row| row.get(0),
        )
        .map_err(db("counting pending notifications"))?;
    u64_from_db("pending notification count", count)
}

fn save_evaluation(
    connection: &mut Connection,
    engine: &EngineState,
    alerts: &[Alert],
    notifications: &[NewNotification],
    at: Timestamp,
) -> StoreResult<u64> {
    let tx = write_tx(connection)?;
    let state = to_json("alert engine state", engine)?;
    tx.execute(
        "INSERT INTO alert_engine (id, state, updated_at) VALUES (1, ?1, ?2) \
         ON CONFLICT (id) DO UPDATE SET state = ?1, updated_at = ?2",
        params![state, time_to_db(at)],
    )
    .map_err(db("saving the alert engine's state"))?;
    {
        let mut upsert = tx
            .prepare_cached(
                "INSERT INTO alerts (id, rule, state, started_at, resolved_at, alert, updated_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) \
                 ON CONFLICT (id) DO UPDATE SET state = ?3, resolved_at = ?5, alert = ?6, \
                 updated_at = ?7",
            )
            .map_err(db("saving alerts"))?;
        for alert in alerts {
            upsert
                .execute(params![
                    alert.id,
                    alert.rule,
                    state_to_db(alert.state),
                    time_to_db(alert.started_at),
                    alert.resolved_at.map(time_to_db),
                    to_json("alert", alert)?,
                    time_to_db(at),
                ])
                .map_err(db("saving alerts"))?;
        }
    }
    // Alerts stored as firing that the engine no longer has (its state was lost or
    // reset): resolved now, so the table shows what the engine knows.
    let open: Vec<String> = {
        let mut statement = tx
            .prepare_cached("SELECT id FROM alerts WHERE state != 'resolved'")
            .map_err(db("listing firing alerts"))?;
        statement
            .query_map([], |row| row.get(0))
            .and_then(Iterator::collect)
            .map_err(db("listing firing alerts"))?
    };
    let current: std::collections::HashSet<&str> = alerts.iter().map(|a| a.id.as_str()).collect();
    for id in open.iter().filter(|id| !current.contains(id.as_str())) {
        tx.execute(
            "UPDATE alerts SET state = 'resolved', resolved_at = ?2, updated_at = ?2 WHERE id = ?1",
            params![id, time_to_db(at)],
        )
        .map_err(db("resolving forgotten alerts"))?;
    }
    {
        let mut insert = tx
            .prepare_cached(
                "INSERT INTO alert_notifications \
                 (alert_id, receiver, status, alert, created_at, next_attempt_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?5)",
            )
            .map_err(db("queueing notifications"))?;
        for notification in notifications {
            insert
                .execute(params![
                    notification.alert.id,
                    notification.receiver,
                    notification.status.as_str(),
                    to_json("alert", &notification.alert)?,
                    time_to_db(at),
                ])
                .map_err(db("queueing notifications"))?;
        }
    }
    let pending = pending_count(&tx)?;
    commit(tx)?;
    Ok(pending)
}

type AlertRow = (String, String, Option<i64>, String);

fn alert_row(row: &Row<'_>) -> rusqlite::Result<AlertRow> {
    Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
}

fn decode_alert((id, state, resolved_at, json): AlertRow) -> StoreResult<Alert> {
    let what = format!("alert {id}");
    let mut alert: Alert = from_json(&what, &json)?;
    alert.state = state_from_db(&state)?;
    alert.resolved_at = resolved_at.map(|t| time_from_db(&what, t)).transpose()?;
    if alert.state == AlertState::Resolved {
        alert.silenced_by.clear();
    }
    Ok(alert)
}

fn list_alerts(
    connection: &Connection,
    filter: AlertFilter,
    limit: u32,
) -> StoreResult<Vec<Alert>> {
    let sql = match filter {
        AlertFilter::Firing => {
            "SELECT id, state, resolved_at, alert FROM alerts WHERE state != 'resolved' \
             ORDER BY started_at, id LIMIT ?1"
        }
        AlertFilter::All => {
            "SELECT id, state, resolved_at, alert FROM alerts \
             ORDER BY started_at DESC, id LIMIT ?1"
        }
    };
    let mut statement = connection
        .prepare_cached(sql)
        .map_err(db("listing alerts"))?;
    let rows: Vec<AlertRow> = statement
        .query_map([limit], alert_row)
        .and_then(Iterator::collect)
        .map_err(db("listing alerts"))?;
    rows.into_iter().map(decode_alert).collect()
}

fn get_alert(connection: &Connection, id: &str) -> StoreResult<Option<Alert>> {
    connection
        .query_row(
            "SELECT id, state, resolved_at, alert FROM alerts WHERE id = ?1",
            [id],
            alert_row,
        )
        .optional()
        .map_err(db("reading an alert"))?
        .map(decode_alert)
        .transpose()
}

// ---- silences ----

fn create_silence(
    connection: &mut Connection,
    silence: &Silence,
    audit: &NewAudit,
) -> StoreResult<()> {
    let tx = write_tx(connection)?;
    tx.execute(
        "INSERT INTO silences (id, silence, starts_at, ends_at) VALUES (?1, ?2, ?3, ?4)",
        params![
            silence.id,
            to_json("silence", silence)?,
            time_to_db(silence.starts_at),
            time_to_db(silence.ends_at)
        ],
    )
    .map_err(db("saving a silence"))?;
    insert_audit(&tx, audit)?;
    commit(tx)
}

fn list_silences(connection: &Connection) -> StoreResult<Vec<Silence>> {
    let mut statement = connection
        .prepare_cached("SELECT id, silence FROM silences ORDER BY starts_at DESC, id")
        .map_err(db("listing silences"))?;
    let rows: Vec<(String, String)> = statement
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
        .and_then(Iterator::collect)
        .map_err(db("listing silences"))?;
    rows.into_iter()
        .map(|(id, json)| from_json(&format!("silence {id}"), &json))
        .collect()
}

fn expire_silence(
    connection: &mut Connection,
    id: &str,
    at: Timestamp,
    audit: &NewAudit,
) -> StoreResult<Option<Silence>> {
    let tx = write_tx(connection)?;
    let json: Option<String> = tx
        .query_row("SELECT silence FROM silences WHERE id = ?1", [id], |row| {
            row.get(0)
        })
        .optional()
        .map_err(db("reading a silence"))?;
    let Some(json) = json else {
        return Ok(None);
    };
    let mut silence: Silence = from_json(&format!("silence {id}"), &json)?;
    silence.ends_at = silence.ends_at.min(at);
    silence.starts_at = silence.starts_at.min(silence.ends_at);
    tx.execute(
        "UPDATE silences SET silence = ?2, starts_at = ?3, ends_at = ?4 WHERE id = ?1",
        params![
            id,
            to_json("silence", &silence)?,
            time_to_db(silence.starts_at),
            time_to_db(silence.ends_at)
        ],
    )
    .map_err(db("expiring a silence"))?;
    insert_audit(&tx, audit)?;
    commit(tx)?;
    Ok(Some(silence))
}

// ---- notifications ----

fn due(
    connection: &Connection,
    now: Timestamp,
    limit: u32,
) -> StoreResult<Vec<QueuedNotification>> {
    let mut statement = connection
        .prepare_cached(
            "SELECT n.id, n.receiver, n.status, n.alert, n.attempts FROM alert_notifications n \
             WHERE n.state = 'pending' AND n.next_attempt_at <= ?1 \
             AND NOT EXISTS (SELECT 1 FROM alert_notifications o \
                 WHERE o.alert_id = n.alert_id AND o.receiver = n.receiver \
                 AND o.state = 'pending' AND o.id < n.id) \
             ORDER BY n.id LIMIT ?2",
        )
        .map_err(db("reading due notifications"))?;
    let rows: Vec<(i64, String, String, String, i64)> = statement
        .query_map(params![time_to_db(now), limit], |row| {
            Ok((
                row.get(0)?,
                row.get(1)?,
                row.get(2)?,
                row.get(3)?,
                row.get(4)?,
            ))
        })
        .and_then(Iterator::collect)
        .map_err(db("reading due notifications"))?;
    rows.into_iter()
        .map(|(id, receiver, status, alert, attempts)| {
            let what = format!("notification {id}");
            Ok(QueuedNotification {
                id: u64_from_db(&what, id)?,
                receiver,
                status: status_from_db(&status)?,
                alert: from_json(&what, &alert)?,
                attempts: u32_from_db(&what, attempts)?,
            })
        })
        .collect()
}

fn next_due(connection: &Connection) -> StoreResult<Option<Timestamp>> {
    let next: Option<i64> = connection
        .query_row(
            "SELECT MIN(n.next_attempt_at) FROM alert_notifications n WHERE n.state = 'pending' \
             AND NOT EXISTS (SELECT 1 FROM alert_notifications o \
                 WHERE o.alert_id = n.alert_id AND o.receiver = n.receiver \
                 AND o.state = 'pending' AND o.id < n.id)",
            [],
            |row| row.get(0),
        )
        .map_err(db("reading the next notification"))?;
    next.map(|t| time_from_db("next notification time", t))
        .transpose()
}

fn record_delivery(
    connection: &mut Connection,
    id: u64,
    outcome: &DeliveryOutcome,
    at: Timestamp,
) -> StoreResult<u64> {
    let tx = write_tx(connection)?;
    let id = u64_to_db("notification id", id)?;
    let changed = match outcome {
        DeliveryOutcome::Delivered => tx.execute(
            "UPDATE alert_notifications SET state = 'delivered', attempts = attempts + 1, \
             delivered_at = ?2, next_attempt_at = NULL WHERE id = ?1 AND state = 'pending'",
            params![id, time_to_db(at)],
        ),
        DeliveryOutcome::Retry {
            error,
            next_attempt_at,
        } => tx.execute(
            "UPDATE alert_notifications SET attempts = attempts + 1, last_error = ?2, \
             next_attempt_at = ?3 WHERE id = ?1 AND state = 'pending'",
            params![id, error, time_to_db(*next_attempt_at)],
        ),
        DeliveryOutcome::GaveUp { error } => tx.execute(
            "UPDATE alert_notifications SET state = 'failed', attempts = attempts + 1, \
             last_error = ?2, next_attempt_at = NULL WHERE id = ?1 AND state = 'pending'",
            params![id, error],
        ),
    }
    .map_err(db("recording a webhook delivery"))?;
    if changed == 0 {
        return Err(corrupt(
            format!("notification {id}"),
            "no pending notification with this id",
        ));
    }
    let pending = pending_count(&tx)?;
    commit(tx)?;
    Ok(pending)
}

fn list_deliveries(connection: &Connection, alert_id: &str) -> StoreResult<Vec<WebhookDelivery>> {
    let mut statement = connection
        .prepare_cached(
            "SELECT id, receiver, status, state, attempts, last_error, created_at, \
             next_attempt_at, delivered_at FROM alert_notifications WHERE alert_id = ?1 \
             ORDER BY id",
        )
        .map_err(db("listing webhook deliveries"))?;
    type Raw = (
        i64,
        String,
        String,
        String,
        i64,
        Option<String>,
        i64,
        Option<i64>,
        Option<i64>,
    );
    let rows: Vec<Raw> = statement
        .query_map([alert_id], |row| {
            Ok((
                row.get(0)?,
                row.get(1)?,
                row.get(2)?,
                row.get(3)?,
                row.get(4)?,
                row.get(5)?,
                row.get(6)?,
                row.get(7)?,
                row.get(8)?,
            ))
        })
        .and_then(Iterator::collect)
        .map_err(db("listing webhook deliveries"))?;
    rows.into_iter()
        .map(
            |(id, receiver, status, state, attempts, last_error, created, next, delivered)| {
                let what = format!("notification {id}");
                let state = delivery_state_from_db(&state)?;
                Ok(WebhookDelivery {
                    notification: u64_from_db(&what, id)?,
                    alert_id: alert_id.to_owned(),
                    receiver,
                    status: status_from_db(&status)?,
                    state,
                    attempts: u32_from_db(&what, attempts)?,
                    last_error,
                    created_at: time_from_db(&what, created)?,
                    next_attempt_at: next
                        .filter(|_| state == DeliveryState::Pending)
                        .map(|t| time_from_db(&what, t))
                        .transpose()?,
                    delivered_at: delivered.map(|t| time_from_db(&what, t)).transpose()?,
                })
            },
        )
        .collect()
}

fn prune(connection: &mut Connection, before: Timestamp) -> StoreResult<Pruned> {
    let tx = write_tx(connection)?;
    let before = time_to_db(before);
    let count = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
    let alerts = tx
        .execute(
            "DELETE FROM alerts WHERE state = 'resolved' AND resolved_at < ?1",
            [before],
        )
        .map_err(db("pruning resolved alerts"))?;
    let notifications = tx
        .execute(
            "DELETE FROM alert_notifications WHERE state != 'pending' AND created_at < ?1",
            [before],
        )
        .map_err(db("pruning webhook deliveries"))?;
    let silences = tx
        .execute("DELETE FROM silences WHERE ends_at < ?1", [before])
        .map_err(db("pruning silences"))?;
    commit(tx)?;
    Ok(Pruned {
        alerts: count(alerts),
        notifications: count(notifications),
        silences: count(silences),
    })
}

#[async_trait]
impl AlertStore for SqliteStore {
    async fn apply_alert_rules(
        &self,
        items: Vec<AlertRuleRecord>,
        actor: &str,
        at: Timestamp,
    ) -> StoreResult<Vec<(String, ApplyAction)>> {
        let actor = actor.to_owned();
        self.run(move |c| apply_rules(c, &items, &actor, at)).await
    }

    async fn list_alert_rules(&self) -> StoreResult<Vec<AlertRuleRecord>> {
        self.run(|c| list_rules(c)).await
    }

    async fn delete_alert_rule(&self, name: &str, audit: NewAudit) -> StoreResult<bool> {
        let name = name.to_owned();
        self.run(move |c| delete_rule(c, &name, &audit)).await
    }

    async fn load_alert_engine(&self) -> StoreResult<Option<EngineState>> {
        self.run(|c| load_engine(c)).await
    }

    async fn save_alert_evaluation(
        &self,
        engine: &EngineState,
        alerts: Vec<Alert>,
        notifications: Vec<NewNotification>,
        at: Timestamp,
    ) -> StoreResult<u64> {
        let engine = engine.clone();
        self.run(move |c| save_evaluation(c, &engine, &alerts, &notifications, at))
            .await
    }

    async fn list_alerts(&self, filter: AlertFilter, limit: u32) -> StoreResult<Vec<Alert>> {
        self.run(move |c| list_alerts(c, filter, limit)).await
    }

    async fn get_alert(&self, id: &str) -> StoreResult<Option<Alert>> {
        let id = id.to_owned();
        self.run(move |c| get_alert(c, &id)).await
    }

    async fn create_silence(&self, silence: Silence, audit: NewAudit) -> StoreResult<()> {
        self.run(move |c| create_silence(c, &silence, &audit)).await
    }

    async fn list_silences(&self) -> StoreResult<Vec<Silence>> {
        self.run(|c| list_silences(c)).await
    }

    async fn expire_silence(
        &self,
        id: &str,
        at: Timestamp,
        audit: NewAudit,
    ) -> StoreResult<Option<Silence>> {
        let id = id.to_owned();
        self.run(move |c| expire_silence(c, &id, at, &audit)).await
    }

    async fn due_notifications(
        &self,
        now: Timestamp,
        limit: u32,
    ) -> StoreResult<Vec<QueuedNotification>> {
        self.run(move |c| due(c, now, limit)).await
    }

    async fn next_notification_due(&self) -> StoreResult<Option<Timestamp>> {
        self.run(|c| next_due(c)).await
    }

    async fn record_delivery(
        &self,
        id: u64,
        outcome: DeliveryOutcome,
        at: Timestamp,
    ) -> StoreResult<u64> {
        self.run(move |c| record_delivery(c, id, &outcome, at))
            .await
    }

    async fn list_deliveries(&self, alert_id: &str) -> StoreResult<Vec<WebhookDelivery>> {
        let alert_id = alert_id.to_owned();
        self.run(move |c| list_deliveries(c, &alert_id)).await
    }

    async fn prune_alert_history(&self, before: Timestamp) -> StoreResult<Pruned> {
        self.run(move |c| prune(c, before)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgefleet_wire::alert::{AlertSubject, SilenceMatcher};
    use time::macros::datetime;

    const T0: Timestamp = datetime!(2026-03-01 12:00 UTC);

    async fn store() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = super::super::open_in(dir.path()).await.unwrap();
        (dir, store)
    }

    fn alert(id: &str, state: AlertState) -> Alert {
        Alert {
            id: id.into(),
            rule: "offline".into(),
            severity: Default::default(),
            state,
            subject: AlertSubject::Node { name: "a".into() },
            labels: Default::default(),
            summary: "s".into(),
            started_at: T0,
            resolved_at: None,
            last_value: None,
            silenced_by: vec![],
        }
    }

    fn notification(alert_id: &str, receiver: &str, status: NotificationStatus) -> NewNotification {
        NewNotification {
            receiver: receiver.into(),
            status,
            alert: alert(alert_id, AlertState::Firing),
        }
    }

    #[tokio::test]
    async fn evaluations_round_trip_and_forgotten_alerts_resolve() {
        let (_dir, store) = store().await;
        assert_eq!(store.load_alert_engine().await.unwrap(), None);
        let engine = EngineState::default();
        store
            .save_alert_evaluation(
                &engine,
                vec![
                    alert("a1", AlertState::Firing),
                    alert("a2", AlertState::Silenced),
                ],
                vec![],
                T0,
            )
            .await
            .unwrap();
        assert_eq!(
            store.load_alert_engine().await.unwrap(),
            Some(engine.clone())
        );
        let firing = store.list_alerts(AlertFilter::Firing, 10).await.unwrap();
        assert_eq!(firing.len(), 2);
        // a2 is not among the next evaluation's alerts: resolved.
        let later = T0 + time::Duration::seconds(15);
        store
            .save_alert_evaluation(
                &engine,
                vec![alert("a1", AlertState::Firing)],
                vec![],
                later,
            )
            .await
            .unwrap();
        let a2 = store.get_alert("a2").await.unwrap().unwrap();
        assert_eq!(a2.state, AlertState::Resolved);
        assert_eq!(a2.resolved_at, Some(later));
        assert_eq!(
            store
                .list_alerts(AlertFilter::Firing, 10)
                .await
                .unwrap()
                .len(),
            1
        );
        assert_eq!(
            store.list_alerts(AlertFilter::All, 10).await.unwrap().len(),
            2
        );
        assert_eq!(
            store.list_alerts(AlertFilter::All, 1).await.unwrap().len(),
            1
        );
    }

    #[tokio::test]
    async fn notifications_are_handed_out_in_order_per_alert_and_receiver() {
        let (_dir, store) = store().await;
        let queued = vec![
            notification("a1", "http://r1", NotificationStatus::Firing),
            notification("a1", "http://r2", NotificationStatus::Firing),
            notification("a2", "http://r1", NotificationStatus::Firing),
            notification("a1", "http://r1", NotificationStatus::Resolved),
        ];
        let pending = store
            .save_alert_evaluation(&EngineState::default(), vec![], queued, T0)
            .await
            .unwrap();
        assert_eq!(pending, 4);
        let due = store.due_notifications(T0, 10).await.unwrap();
        let ids: Vec<u64> = due.iter().map(|n| n.id).collect();
        // The resolution of a1 to r1 waits for its firing.
        assert_eq!(ids, [1, 2, 3]);
        let retry_at = T0 + time::Duration::seconds(1);
        store
            .record_delivery(
                1,
                DeliveryOutcome::Retry {
                    error: "HTTP 500".into(),
                    next_attempt_at: retry_at,
                },
                T0,
            )
            .await
            .unwrap();
        let due: Vec<u64> = store
            .due_notifications(T0, 10)
            .await
            .unwrap()
            .iter()
            .map(|n| n.id)
            .collect();
        assert_eq!(due, [2, 3]);
        assert_eq!(store.next_notification_due().await.unwrap(), Some(T0));
        store
            .record_delivery(2, DeliveryOutcome::Delivered, T0)
            .await
            .unwrap();
        store
            .record_delivery(3, DeliveryOutcome::Delivered, T0)
            .await
            .unwrap();
        assert_eq!(store.next_notification_due().await.unwrap(), Some(retry_at));
        let due = store.due_notifications(retry_at, 10).await.unwrap();
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].attempts, 1);
        let pending = store
            .record_delivery(1, DeliveryOutcome::Delivered, retry_at)
            .await
            .unwrap();
        assert_eq!(pending, 1);
        let due = store.due_notifications(retry_at, 10).await.unwrap();
        assert_eq!(due[0].id, 4);
        assert_eq!(due[0].status, NotificationStatus::Resolved);
        store
            .record_delivery(
                4,
                DeliveryOutcome::GaveUp {
                    error: "timeout".into(),
                },
                retry_at,
            )
            .await
            .unwrap();
        let deliveries = store.list_deliveries("a1").await.unwrap();
        let summary: Vec<(u64, &str, DeliveryState, u32, Option<&str>)> = deliveries
            .iter()
            .map(|d| {
                (
                    d.notification,
                    d.receiver.as_str(),
                    d.state,
                    d.attempts,
                    d.last_error.as_deref(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                (
                    1,
                    "http://r1",
                    DeliveryState::Delivered,
                    2,
                    Some("HTTP 500")
                ),
                (2, "http://r2", DeliveryState::Delivered, 1, None),
                (4, "http://r1", DeliveryState::Failed, 1, Some("timeout")),
            ]
        );
        // A delivery recorded twice is an error, not a silent double count.
        assert!(
            store
                .record_delivery(4, DeliveryOutcome::Delivered, T0)
                .await
                .is_err()
        );
        let pruned = store
            .prune_alert_history(T0 + time::Duration::days(1))
            .await
            .unwrap();
        assert_eq!(pruned.notifications, 4);
    }

    #[tokio::test]
    async fn rules_and_silences() {
        let (_dir, store) = store().await;
        let manifest = edgefleet_wire::alert::AlertRuleManifest::new(
            "offline",
            edgefleet_wire::alert::AlertRuleSpec {
                severity: Default::default(),
                selector: Default::default(),
                for_duration: None,
                condition: edgefleet_wire::alert::AlertCondition {
                    node_offline: Some(Default::default()),
                    ..Default::default()
                },
                site_grouping: None,
                webhooks: vec![],
                repeat_interval: edgefleet_wire::alert::DEFAULT_REPEAT_INTERVAL,
            },
        );
        let record = |hash: &str| AlertRuleRecord {
            manifest: manifest.clone(),
            hash: hash.into(),
            updated_at: T0,
        };
        let applied = store
            .apply_alert_rules(vec![record("h1")], "token:admin", T0)
            .await
            .unwrap();
        assert_eq!(applied, [("offline".to_owned(), ApplyAction::Created)]);
        let applied = store
            .apply_alert_rules(vec![record("h1")], "token:admin", T0)
            .await
            .unwrap();
        assert_eq!(applied[0].1, ApplyAction::Unchanged);
        assert_eq!(
            store.list_alert_rules().await.unwrap()[0].manifest,
            manifest
        );
        let audit = |what: &str| NewAudit::new(T0, "token:admin", "delete", what, "deleted");
        assert!(
            store
                .delete_alert_rule("offline", audit("alert-rule/offline"))
                .await
                .unwrap()
        );
        assert!(
            !store
                .delete_alert_rule("offline", audit("alert-rule/offline"))
                .await
                .unwrap()
        );

        let silence = Silence {
            id: "s1".into(),
            matcher: SilenceMatcher {
                node: Some("a".into()),
                ..Default::default()
            },
            comment: "maintenance".into(),
            created_by: "token:admin".into(),
            starts_at: T0,
            ends_at: T0 + time::Duration::hours(2),
        };
        store
            .create_silence(silence.clone(), audit("silence/s1"))
            .await
            .unwrap();
        assert_eq!(
            store.list_silences().await.unwrap(),
            std::slice::from_ref(&silence)
        );
        let at = T0 + time::Duration::minutes(5);
        let expired = store
            .expire_silence("s1", at, audit("silence/s1"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(expired.ends_at, at);
        assert_eq!(store.list_silences().await.unwrap()[0].ends_at, at);
        assert!(
            store
                .expire_silence("nope", at, audit("silence/nope"))
                .await
                .unwrap()
                .is_none()
        );
    }
}
