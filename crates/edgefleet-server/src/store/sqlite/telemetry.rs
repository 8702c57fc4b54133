//! `TelemetryStore` in SQLite: stream cursors, stream records, metric samples, five-minute
//! rollups, drop totals and per-node upload status.
//!
//! See `crate::store::telemetry` for the guarantees. Here:
//! - `metric_samples` and `stream_records` ids come from AUTOINCREMENT: they grow in
//!   insertion order and are never reused (the lake exporter's cursors rely on it).
//! - `metric_samples` has one secondary index, `(node, name, time)`: every index costs
//!   ingest speed (each one roughly halves it), so reads across nodes walk the `nodes`
//!   table and seek that index once per node (`CROSS JOIN` fixes that loop order), and
//!   maintenance works by id (the primary key), never by time.
//! - Rollups are kept by id: the `rollup` cursor in `telemetry_cursors_by_id` says every
//!   sample with a lower or equal id is summed into `metric_rollups`, and it moves in the
//!   transaction that adds those samples, so rolling up again never counts twice.
//! - Raw retention counts from arrival: `metric_arrivals` notes, at each rollup run, the
//!   highest id that had arrived by then; samples that arrived before the raw retention
//!   are deleted in id order, once rolled up and exported to the lake.
//! - Every maintenance step is one short transaction over a bounded id range.

use std::collections::{HashMap, HashSet};

use async_trait::async_trait;
use edgefleet_wire::telemetry::{DropCount, DropReason, NodeTelemetry, Resolution, StreamAck};
use edgefleet_wire::{Labels, Timestamp};
use rusqlite::types::Value;
use rusqlite::{Connection, OptionalExtension, Row, Transaction, params, params_from_iter};

use super::{
    SqliteStore, commit, corrupt, db, from_json, time_from_db, time_to_db, u64_from_db, u64_to_db,
    write_tx,
};
use crate::store::telemetry::{MetricRow, NodeDropCount};
use crate::store::{StoreResult, TelemetryStore};
use crate::telemetry::model::{
    BucketQuery, ExpireStep, GroupAccumulator, GroupSeries, IngestBatch, IngestOutcome,
    IngestPayload, IngestSample, IngestStream, NodeBucket, NodeSeries, NodeSeriesAnswer,
    ROLLUP_BUCKET, RollupStep,
};

/// Schema migration 4: the tables of `TelemetryStore`.
pub(super) const MIGRATION: &str = r#"
CREATE TABLE telemetry_cursors (
    node TEXT NOT NULL,
    stream TEXT NOT NULL,
    outbox TEXT NOT NULL,
    stored_through INTEGER NOT NULL,
    PRIMARY KEY (node, stream)
) STRICT, WITHOUT ROWID;

CREATE TABLE stream_records (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    node TEXT NOT NULL,
    stream TEXT NOT NULL,
    sink TEXT NOT NULL,
    deployment TEXT NOT NULL,
    seq INTEGER NOT NULL,
    time INTEGER NOT NULL,
    received_at INTEGER NOT NULL,
    kind TEXT NOT NULL,
    data BLOB NOT NULL
) STRICT;

CREATE TABLE metric_samples (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    node TEXT NOT NULL,
    name TEXT NOT NULL,
    labels TEXT NOT NULL,
    time INTEGER NOT NULL,
    value REAL NOT NULL
) STRICT;

CREATE INDEX metric_samples_by_node ON metric_samples (node, name, time);

CREATE TABLE metric_rollups (
    id INTEGER PRIMARY KEY,
    node TEXT NOT NULL,
    name TEXT NOT NULL,
    labels TEXT NOT NULL,
    bucket INTEGER NOT NULL,
    sample_count INTEGER NOT NULL,
    value_sum REAL NOT NULL,
    value_min REAL NOT NULL,
    value_max REAL NOT NULL,
    UNIQUE (node, name, bucket, labels)
) STRICT;

CREATE INDEX metric_rollups_by_bucket ON metric_rollups (bucket);

CREATE TABLE telemetry_cursors_by_id (
    name TEXT PRIMARY KEY,
    last_id INTEGER NOT NULL
) STRICT, WITHOUT ROWID;

CREATE TABLE metric_arrivals (
    at INTEGER PRIMARY KEY,
    last_id INTEGER NOT NULL
) STRICT;

CREATE TABLE telemetry_drops (
    node TEXT NOT NULL,
    stream TEXT NOT NULL,
    reason TEXT NOT NULL,
    outbox TEXT NOT NULL,
    records INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    changed_at INTEGER NOT NULL,
    PRIMARY KEY (node, stream, reason)
) STRICT, WITHOUT ROWID;

CREATE TABLE telemetry_nodes (
    node TEXT PRIMARY KEY,
    outbox TEXT NOT NULL,
    backlog_bytes INTEGER NOT NULL,
    backlog_records INTEGER NOT NULL,
    last_upload INTEGER NOT NULL
) STRICT, WITHOUT ROWID;
"#;

/// The key of the rollup cursor in `telemetry_cursors_by_id`.
const ROLLUP_CURSOR: &str = "rollup";

/// The width of a rollup bucket in nanoseconds.
const BUCKET_NANOS: i64 = ROLLUP_BUCKET.as_secs() as i64 * 1_000_000_000;

/// The id through which samples are rolled up (0: none yet).
fn rollup_cursor(connection: &Connection) -> StoreResult<i64> {
    connection
        .prepare_cached("SELECT last_id FROM telemetry_cursors_by_id WHERE name = ?1")
        .and_then(|mut statement| {
            statement
                .query_row([ROLLUP_CURSOR], |row| row.get(0))
                .optional()
        })
        .map(Option::unwrap_or_default)
        .map_err(db("reading the rollup cursor"))
}

fn set_rollup_cursor(tx: &Transaction<'_>, last_id: i64) -> StoreResult<()> {
    tx.prepare_cached(
        "INSERT INTO telemetry_cursors_by_id (name, last_id) VALUES (?1, ?2) \
         ON CONFLICT (name) DO UPDATE SET last_id = excluded.last_id",
    )
    .and_then(|mut statement| statement.execute(params![ROLLUP_CURSOR, last_id]))
    .map_err(db("moving the rollup cursor"))?;
    Ok(())
}

fn max_sample_id(connection: &Connection) -> StoreResult<i64> {
    connection
        .query_row("SELECT IFNULL(MAX(id), 0) FROM metric_samples", [], |row| {
            row.get(0)
        })
        .map_err(db("reading the newest metric sample"))
}

fn reason_to_db(reason: DropReason) -> &'static str {
    match reason {
        DropReason::Full => "full",
        DropReason::Expired => "expired",
    }
}

fn reason_from_db(text: &str) -> StoreResult<DropReason> {
    match text {
        "full" => Ok(DropReason::Full),
        "expired" => Ok(DropReason::Expired),
        other => Err(corrupt("drop reason", format!("unknown reason {other:?}"))),
    }
}

// ---- ingest ----

fn ingest(
    connection: &mut Connection,
    node: &str,
    batch: &IngestBatch,
    now: Timestamp,
) -> StoreResult<IngestOutcome> {
    let tx = write_tx(connection)?;
    let received_at = time_to_db(now);
    let mut outcome = IngestOutcome::default();
    for stream in &batch.streams {
        let stored_through =
            ingest_stream(&tx, node, &batch.outbox, stream, received_at, &mut outcome)?;
        outcome.acks.push(StreamAck {
            stream: stream.stream.clone(),
            stored_through,
        });
    }
    let previous_outbox: Option<String> = tx
        .prepare_cached("SELECT outbox FROM telemetry_nodes WHERE node = ?1")
        .and_then(|mut statement| statement.query_row([node], |row| row.get(0)).optional())
        .map_err(db("reading a node's upload status"))?;
    if previous_outbox.as_deref() != Some(batch.outbox.as_str()) {
        // Totals are per outbox: a new outbox starts from zero.
        tx.prepare_cached("DELETE FROM telemetry_drops WHERE node = ?1 AND outbox <> ?2")
            .and_then(|mut statement| statement.execute(params![node, batch.outbox]))
            .map_err(db("resetting drop totals"))?;
    }
    for dropped in &batch.dropped {
        store_drop_total(&tx, node, &batch.outbox, dropped, received_at)?;
    }
    tx.prepare_cached(
        "INSERT INTO telemetry_nodes (node, outbox, backlog_bytes, backlog_records, last_upload) \
         VALUES (?1, ?2, ?3, ?4, ?5) \
         ON CONFLICT (node) DO UPDATE SET outbox = excluded.outbox, \
         backlog_bytes = excluded.backlog_bytes, backlog_records = excluded.backlog_records, \
         last_upload = excluded.last_upload",
    )
    .and_then(|mut statement| {
        statement.execute(params![
            node,
            batch.outbox,
            i64::try_from(batch.backlog_bytes).unwrap_or(i64::MAX),
            i64::try_from(batch.backlog_records).unwrap_or(i64::MAX),
            received_at
        ])
    })
    .map_err(db("storing a node's upload status"))?;
    commit(tx)?;
    Ok(outcome)
}

/// Stores the new records of one stream and advances its cursor; returns the cursor.
fn ingest_stream(
    tx: &Transaction<'_>,
    node: &str,
    outbox: &str,
    stream: &IngestStream,
    received_at: i64,
    outcome: &mut IngestOutcome,
) -> StoreResult<u64> {
    let cursor: Option<(String, i64)> = tx
        .prepare_cached(
            "SELECT outbox, stored_through FROM telemetry_cursors WHERE node = ?1 AND stream = ?2",
        )
        .and_then(|mut statement| {
            statement
                .query_row([node, stream.stream.as_str()], |row| {
                    Ok((row.get(0)?, row.get(1)?))
                })
                .optional()
        })
        .map_err(db("reading a stream cursor"))?;
    let mut stored_through = match cursor {
        // The same outbox: continue after what is stored.
        Some((stored_outbox, through)) if stored_outbox == outbox => {
            u64_from_db("stored_through of a stream cursor", through)?
        }
        // A new stream, or a wiped outbox starting again at 1: everything is new.
        _ => 0,
    };
    let mut samples = SampleWriter::new(tx, node)?;
    let mut record_insert = tx
        .prepare_cached(
            "INSERT INTO stream_records \
             (node, stream, sink, deployment, seq, time, received_at, kind, data) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        )
        .map_err(db("storing stream records"))?;
    for record in &stream.records {
        if record.seq <= stored_through {
            outcome.duplicates += 1;
            continue;
        }
        let seq = u64_to_db("record seq", record.seq)?;
        match &record.payload {
            IngestPayload::Metrics(set) => {
                let time = time_to_db(set.time);
                for sample in &set.samples {
                    samples.push(sample, time)?;
                }
                outcome.metric_sets_stored += 1;
                outcome.samples_stored += set.samples.len() as u64;
            }
            IngestPayload::Json(text) => {
                insert_record(
                    &mut record_insert,
                    node,
                    stream,
                    seq,
                    record.time,
                    received_at,
                    "json",
                    text.as_bytes(),
                )?;
                outcome.records_stored += 1;
            }
            IngestPayload::Bytes(bytes) => {
                insert_record(
                    &mut record_insert,
                    node,
                    stream,
                    seq,
                    record.time,
                    received_at,
                    "bytes",
                    bytes,
                )?;
                outcome.records_stored += 1;
            }
        }
        stored_through = record.seq;
    }
    samples.finish()?;
    let stored_through_db = u64_to_db("stored_through of a stream cursor", stored_through)?;
    tx.prepare_cached(
        "INSERT INTO telemetry_cursors (node, stream, outbox, stored_through) \
         VALUES (?1, ?2, ?3, ?4) \
         ON CONFLICT (node, stream) DO UPDATE SET outbox = excluded.outbox, \
         stored_through = excluded.stored_through",
    )
    .and_then(|mut statement| {
        statement.execute(params![node, stream.stream, outbox, stored_through_db])
    })
    .map_err(db("advancing a stream cursor"))?;
    Ok(stored_through)
}

/// Samples inserted per statement: a multi-row INSERT saves most of the per-statement work.
const SAMPLES_PER_INSERT: usize = 32;

/// Writes metric samples of one node in multi-row INSERTs (ids still follow the order of
/// `push`); `finish` writes the rest.
struct SampleWriter<'t, 'b> {
    node: &'b str,
    many: rusqlite::CachedStatement<'t>,
    one: rusqlite::CachedStatement<'t>,
    pending: Vec<(&'b str, &'b str, i64, f64)>,
}

impl<'t, 'b> SampleWriter<'t, 'b> {
    fn new(tx: &'t Transaction<'_>, node: &'b str) -> StoreResult<Self> {
        let rows = vec!["(?, ?, ?, ?, ?)"; SAMPLES_PER_INSERT].join(", ");
        let many = tx
            .prepare_cached(&format!(
                "INSERT INTO metric_samples (node, name, labels, time, value) VALUES {rows}"
            ))
            .map_err(db("storing metric samples"))?;
        let one = tx
            .prepare_cached(
                "INSERT INTO metric_samples (node, name, labels, time, value) \
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )
            .map_err(db("storing metric samples"))?;
        Ok(Self {
            node,
            many,
            one,
            pending: Vec::with_capacity(SAMPLES_PER_INSERT),
        })
    }

    fn push(&mut self, sample: &'b IngestSample, time: i64) -> StoreResult<()> {
        self.pending
            .push((&sample.name, &sample.labels, time, sample.value));
        if self.pending.len() == SAMPLES_PER_INSERT {
            let node = self.node;
            let params: Vec<&dyn rusqlite::ToSql> = self
                .pending
                .iter()
                .flat_map(|(name, labels, time, value)| {
                    [
                        &node as &dyn rusqlite::ToSql,
                        name as &dyn rusqlite::ToSql,
                        labels,
                        time,
                        value,
                    ]
                })
                .collect();
            self.many
                .execute(params.as_slice())
                .map_err(db("storing metric samples"))?;
            self.pending.clear();
        }
        Ok(())
    }

    fn finish(mut self) -> StoreResult<()> {
        for (name, labels, time, value) in self.pending.drain(..) {
            self.one
                .execute(params![self.node, name, labels, time, value])
                .map_err(db("storing metric samples"))?;
        }
        Ok(())
    }
}

#[allow(clippy::too_many_arguments)] // the columns of one stream_records row
fn insert_record(
    statement: &mut rusqlite::CachedStatement<'_>,
    node: &str,
    stream: &IngestStream,
    seq: i64,
    time: Timestamp,
    received_at: i64,
    kind: &str,
    data: &[u8],
) -> StoreResult<()> {
    statement
        .execute(params![
            node,
            stream.stream,
            stream.sink,
            stream.deployment,
            seq,
            time_to_db(time),
            received_at,
            kind,
            data
        ])
        .map_err(db("storing stream records"))?;
    Ok(())
}

/// Keeps the highest total reported by the node's current outbox; `changed_at` moves only
/// when a total grows (or the outbox is new).
fn store_drop_total(
    tx: &Transaction<'_>,
    node: &str,
    outbox: &str,
    dropped: &DropCount,
    now: i64,
) -> StoreResult<()> {
    tx.prepare_cached(
        "INSERT INTO telemetry_drops (node, stream, reason, outbox, records, bytes, changed_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) \
         ON CONFLICT (node, stream, reason) DO UPDATE SET \
         changed_at = CASE WHEN outbox = excluded.outbox AND records >= excluded.records \
             AND bytes >= excluded.bytes THEN changed_at ELSE excluded.changed_at END, \
         records = CASE WHEN outbox = excluded.outbox \
             THEN max(records, excluded.records) ELSE excluded.records END, \
         bytes = CASE WHEN outbox = excluded.outbox \
             THEN max(bytes, excluded.bytes) ELSE excluded.bytes END, \
         outbox = excluded.outbox",
    )
    .and_then(|mut statement| {
        statement.execute(params![
            node,
            dropped.stream,
            reason_to_db(dropped.reason),
            outbox,
            i64::try_from(dropped.records).unwrap_or(i64::MAX),
            i64::try_from(dropped.bytes).unwrap_or(i64::MAX),
            now
        ])
    })
    .map_err(db("storing drop totals"))?;
    Ok(())
}

// ---- reads for alerts and `describe node` ----

/// One index seek per node (see the module docs).
const METRIC_WINDOW_SQL: &str = "SELECT s.node, s.labels, s.time, s.value \
    FROM nodes AS n CROSS JOIN metric_samples AS s \
    WHERE s.node = n.name AND s.name = ?1 AND s.time >= ?2 ORDER BY s.time, s.id";

fn metric_window(
    connection: &mut Connection,
    name: &str,
    since: Timestamp,
) -> StoreResult<Vec<MetricRow>> {
    let mut statement = connection
        .prepare_cached(METRIC_WINDOW_SQL)
        .map_err(db("reading a metric window"))?;
    let rows: Vec<(String, String, i64, f64)> = statement
        .query_map(params![name, time_to_db(since)], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
        })
        .and_then(Iterator::collect)
        .map_err(db("reading a metric window"))?;
    let mut labels_cache = LabelsCache::default();
    rows.into_iter()
        .map(|(node, labels, time, value)| {
            Ok(MetricRow {
                labels: labels_cache.decode(&labels)?,
                time: time_from_db("time of a metric sample", time)?,
                node,
                name: name.to_owned(),
                value,
            })
        })
        .collect()
}

/// Decodes label JSON, reusing the last result: rows of one series repeat the same text.
#[derive(Default)]
struct LabelsCache {
    last: Option<(String, Labels)>,
}

impl LabelsCache {
    fn decode(&mut self, text: &str) -> StoreResult<Labels> {
        if let Some((last_text, labels)) = &self.last
            && last_text == text
        {
            return Ok(labels.clone());
        }
        let labels: Labels = from_json("labels of a metric sample", text)?;
        self.last = Some((text.to_owned(), labels.clone()));
        Ok(labels)
    }
}

fn drop_row(row: &Row<'_>) -> rusqlite::Result<(String, String, String, i64, i64, i64)> {
    Ok((
        row.get(0)?,
        row.get(1)?,
        row.get(2)?,
        row.get(3)?,
        row.get(4)?,
        row.get(5)?,
    ))
}

fn decode_drop(
    (node, stream, reason, records, bytes, changed_at): (String, String, String, i64, i64, i64),
) -> StoreResult<NodeDropCount> {
    let what = |column: &str| format!("{column} of the drop total of node {node} stream {stream}");
    let records = u64_from_db(&what("records"), records)?;
    let bytes = u64_from_db(&what("bytes"), bytes)?;
    let changed_at = time_from_db(&what("changed_at"), changed_at)?;
    Ok(NodeDropCount {
        count: DropCount {
            reason: reason_from_db(&reason)?,
            records,
            bytes,
            stream,
        },
        changed_at,
        node,
    })
}

const DROP_COLUMNS: &str = "node, stream, reason, records, bytes, changed_at";

fn drop_totals(connection: &mut Connection) -> StoreResult<Vec<NodeDropCount>> {
    super::query_all(
        connection,
        "reading drop totals",
        &format!("SELECT {DROP_COLUMNS} FROM telemetry_drops ORDER BY node, stream, reason"),
        &[],
        drop_row,
        decode_drop,
    )
}

fn node_telemetry(connection: &mut Connection, node: &str) -> StoreResult<NodeTelemetry> {
    let dropped = super::query_all(
        connection,
        "reading drop totals",
        &format!(
            "SELECT {DROP_COLUMNS} FROM telemetry_drops WHERE node = ?1 ORDER BY stream, reason"
        ),
        &[&node],
        drop_row,
        decode_drop,
    )?
    .into_iter()
    .map(|total| total.count)
    .collect();
    let status: Option<(i64, i64, i64)> = connection
        .query_row(
            "SELECT backlog_bytes, backlog_records, last_upload FROM telemetry_nodes \
             WHERE node = ?1",
            [node],
            |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
        )
        .optional()
        .map_err(db("reading a node's upload status"))?;
    let mut telemetry = NodeTelemetry {
        dropped,
        ..NodeTelemetry::default()
    };
    if let Some((bytes, records, last_upload)) = status {
        let what = |column: &str| format!("{column} of the upload status of node {node}");
        telemetry.backlog_bytes = u64_from_db(&what("backlog_bytes"), bytes)?;
        telemetry.backlog_records = u64_from_db(&what("backlog_records"), records)?;
        telemetry.last_upload = Some(time_from_db(&what("last_upload"), last_upload)?);
    }
    Ok(telemetry)
}

// ---- rollups and retention ----

fn roll_up(
    connection: &mut Connection,
    now: Timestamp,
    max_samples: u64,
) -> StoreResult<RollupStep> {
    let tx = write_tx(connection)?;
    let cursor = rollup_cursor(&tx)?;
    let newest = max_sample_id(&tx)?;
    // Every sample up to `newest` has arrived by `now`: raw retention counts from here.
    tx.prepare_cached(
        "INSERT INTO metric_arrivals (at, last_id) VALUES (?1, ?2) \
         ON CONFLICT (at) DO UPDATE SET last_id = max(last_id, excluded.last_id)",
    )
    .and_then(|mut statement| statement.execute(params![time_to_db(now), newest]))
    .map_err(db("noting metric arrivals"))?;
    let to = newest.min(cursor.saturating_add(i64::try_from(max_samples).unwrap_or(i64::MAX)));
    let mut samples = 0;
    if to > cursor {
        tx.prepare_cached(
            "INSERT INTO metric_rollups \
             (node, name, labels, bucket, sample_count, value_sum, value_min, value_max) \
             SELECT node, name, labels, (time / ?3) * ?3 AS bucket, \
                 COUNT(*), SUM(value), MIN(value), MAX(value) \
             FROM metric_samples WHERE id > ?1 AND id <= ?2 \
             GROUP BY node, name, bucket, labels \
             ON CONFLICT (node, name, bucket, labels) DO UPDATE SET \
             sample_count = sample_count + excluded.sample_count, \
             value_sum = value_sum + excluded.value_sum, \
             value_min = min(value_min, excluded.value_min), \
             value_max = max(value_max, excluded.value_max)",
        )
        .and_then(|mut statement| statement.execute(params![cursor, to, BUCKET_NANOS]))
        .map_err(db("rolling up metrics"))?;
        samples = tx
            .query_row(
                "SELECT COUNT(*) FROM metric_samples WHERE id > ?1 AND id <= ?2",
                params![cursor, to],
                |row| row.get::<_, i64>(0),
            )
            .map_err(db("rolling up metrics"))?;
        set_rollup_cursor(&tx, to)?;
    }
    commit(tx)?;
    Ok(RollupStep {
        rolled_up_through: u64::try_from(to.max(cursor)).unwrap_or(0),
        samples_rolled_up: u64::try_from(samples).unwrap_or(0),
        more: to < newest,
    })
}

/// The id through which the lake exporter has exported metric samples: 0 while it has
/// exported nothing (or the lake's tables do not exist).
fn lake_exported_through(connection: &Connection) -> StoreResult<i64> {
    let lake_exists: bool = connection
        .query_row(
            "SELECT EXISTS (SELECT 1 FROM sqlite_master \
             WHERE type = 'table' AND name = 'lake_cursors')",
            [],
            |row| row.get(0),
        )
        .map_err(db("reading the lake's metrics cursor"))?;
    if !lake_exists {
        return Ok(0);
    }
    connection
        .query_row(
            "SELECT last_id FROM lake_cursors WHERE source = 'metrics'",
            [],
            |row| row.get(0),
        )
        .optional()
        .map(Option::unwrap_or_default)
        .map_err(db("reading the lake's metrics cursor"))
}

fn expire(
    connection: &mut Connection,
    raw_before: Timestamp,
    rollups_before: Timestamp,
    limit: u64,
) -> StoreResult<ExpireStep> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let raw_before = time_to_db(raw_before);
    let tx = write_tx(connection)?;
    let arrived_before: i64 = tx
        .query_row(
            "SELECT IFNULL(MAX(last_id), 0) FROM metric_arrivals WHERE at <= ?1",
            [raw_before],
            |row| row.get(0),
        )
        .map_err(db("reading metric arrivals"))?;
    // Never a sample the rollups lack or the lake has not exported.
    let bound = arrived_before
        .min(rollup_cursor(&tx)?)
        .min(lake_exported_through(&tx)?);
    let raw_deleted = tx
        .prepare_cached(
            "DELETE FROM metric_samples WHERE id IN \
             (SELECT id FROM metric_samples WHERE id <= ?1 ORDER BY id LIMIT ?2)",
        )
        .and_then(|mut statement| statement.execute(params![bound, limit]))
        .map_err(db("deleting expired metric samples"))?;
    // The newest arrival at or before the cutoff is the one the next step needs.
    tx.prepare_cached(
        "DELETE FROM metric_arrivals WHERE at < \
         (SELECT MAX(at) FROM metric_arrivals WHERE at <= ?1)",
    )
    .and_then(|mut statement| statement.execute([raw_before]))
    .map_err(db("deleting old metric arrivals"))?;
    let rollups_deleted = tx
        .prepare_cached(
            "DELETE FROM metric_rollups WHERE id IN (SELECT id FROM metric_rollups \
             WHERE bucket < ?1 ORDER BY bucket LIMIT ?2)",
        )
        .and_then(|mut statement| statement.execute(params![time_to_db(rollups_before), limit]))
        .map_err(db("deleting expired metric rollups"))?;
    commit(tx)?;
    Ok(ExpireStep {
        raw_deleted: raw_deleted as u64,
        rollups_deleted: rollups_deleted as u64,
    })
}

// ---- metric queries ----

/// Numbered SQL parameters, bound in the order the SQL text is built.
#[derive(Default)]
struct SqlParams {
    values: Vec<Value>,
}

impl SqlParams {
    fn bind(&mut self, value: impl Into<Value>) -> String {
        self.values.push(value.into());
        format!("?{}", self.values.len())
    }

    /// The tables and node/metric terms of a query over `table` (as `t`): one node's rows
    /// directly; every node's through the `nodes` table, one index seek per node.
    fn source(&mut self, table: &str, query: &BucketQuery) -> (String, Vec<String>) {
        let mut terms = Vec::new();
        let from = match &query.node {
            Some(node) => {
                terms.push(format!("t.node = {}", self.bind(node.clone())));
                format!("{table} AS t")
            }
            None if query.metric.is_some() => {
                terms.push("t.node = n.name".to_owned());
                format!("nodes AS n CROSS JOIN {table} AS t")
            }
            None => format!("{table} AS t"),
        };
        if let Some(metric) = &query.metric {
            terms.push(format!("t.name = {}", self.bind(metric.clone())));
        }
        (from, terms)
    }
}

/// SQL and its parameters for the per-node buckets of a query, unordered: one row per
/// (node, metric, labels, bucket index) with count, sum, min, max and earliest time.
///
/// `Rollup` reads rollups for every sample with an id up to `rollup_cursor` and raw
/// samples above it, so no sample is counted twice or missed.
fn bucket_sql(query: &BucketQuery, rollup_cursor: i64) -> (String, Vec<Value>) {
    let mut params = SqlParams::default();
    let origin = time_to_db(query.grid.origin);
    let width = i64::try_from(query.grid.width.as_nanos())
        .unwrap_or(i64::MAX)
        .max(1);
    let until = time_to_db(query.until);
    let raw = |params: &mut SqlParams, from_time: i64, after_id: Option<i64>| {
        let (from, mut terms) = params.source("metric_samples", query);
        terms.push(format!("t.time >= {}", params.bind(from_time)));
        terms.push(format!("t.time < {}", params.bind(until)));
        if let Some(after_id) = after_id {
            terms.push(format!("t.id > {}", params.bind(after_id)));
        }
        format!(
            "SELECT t.node AS node, t.name AS name, t.labels AS labels, t.time AS t, 1 AS c, \
                 t.value AS s, t.value AS lo, t.value AS hi \
             FROM {from} WHERE {}",
            terms.join(" AND ")
        )
    };
    let source = match query.source {
        Resolution::Raw => raw(&mut params, time_to_db(query.since), None),
        Resolution::Rollup => {
            let (from, mut terms) = params.source("metric_rollups", query);
            terms.push(format!("t.bucket >= {}", params.bind(origin)));
            terms.push(format!("t.bucket < {}", params.bind(until)));
            let rollups = format!(
                "SELECT t.node AS node, t.name AS name, t.labels AS labels, t.bucket AS t, \
                     t.sample_count AS c, t.value_sum AS s, t.value_min AS lo, \
                     t.value_max AS hi \
                 FROM {from} WHERE {}",
                terms.join(" AND ")
            );
            let recent = raw(&mut params, origin, Some(rollup_cursor));
            format!("{rollups} UNION ALL {recent}")
        }
    };
    let origin = params.bind(origin);
    let width = params.bind(width);
    (
        format!(
            "SELECT node, name, labels, (t - {origin}) / {width} AS b, SUM(c), SUM(s), \
                 MIN(lo), MAX(hi), MIN(t) \
             FROM ({source}) GROUP BY node, name, labels, b"
        ),
        params.values,
    )
}

/// One row of `bucket_sql`.
struct BucketRow {
    node: String,
    name: String,
    labels: String,
    index: i64,
    count: i64,
    sum: f64,
    min: f64,
    max: f64,
    first: i64,
}

fn bucket_row(row: &Row<'_>) -> rusqlite::Result<BucketRow> {
    Ok(BucketRow {
        node: row.get(0)?,
        name: row.get(1)?,
        labels: row.get(2)?,
        index: row.get(3)?,
        count: row.get(4)?,
        sum: row.get(5)?,
        min: row.get(6)?,
        max: row.get(7)?,
        first: row.get(8)?,
    })
}

fn node_series(
    connection: &mut Connection,
    query: &BucketQuery,
    nodes: Option<&HashSet<String>>,
    max_series: usize,
) -> StoreResult<NodeSeriesAnswer> {
    let (sql, values) = bucket_sql(query, rollup_cursor(connection)?);
    let sql = format!("{sql} ORDER BY node, name, labels, b");
    let mut statement = connection.prepare(&sql).map_err(db("querying metrics"))?;
    let mut rows = statement
        .query(params_from_iter(values))
        .map_err(db("querying metrics"))?;
    let mut answer = NodeSeriesAnswer::default();
    let mut current_labels = String::new();
    while let Some(row) = rows.next().map_err(db("querying metrics"))? {
        let row = bucket_row(row).map_err(db("querying metrics"))?;
        if nodes.is_some_and(|nodes| !nodes.contains(&row.node)) {
            continue;
        }
        let same_series = answer.series.last().is_some_and(|last| {
            last.node == row.node && last.name == row.name && current_labels == row.labels
        });
        if !same_series {
            if answer.series.len() == max_series {
                answer.truncated = true;
                break;
            }
            answer.series.push(NodeSeries {
                labels: from_json("labels of a metric series", &row.labels)?,
                node: row.node.clone(),
                name: row.name.clone(),
                buckets: Vec::new(),
            });
            current_labels = row.labels.clone();
        }
        let bucket = NodeBucket {
            start: query.grid.start(u64::try_from(row.index).unwrap_or(0)),
            first: time_from_db("time of a metric sample", row.first)?,
            count: u64_from_db("sample count", row.count)?,
            sum: row.sum,
            min: row.min,
            max: row.max,
        };
        if let Some(series) = answer.series.last_mut() {
            series.buckets.push(bucket);
        }
    }
    // SQL ordered label sets by their JSON text; answers order them as label maps.
    answer
        .series
        .sort_by(|a, b| (&a.node, &a.name, &a.labels).cmp(&(&b.node, &b.name, &b.labels)));
    Ok(answer)
}

fn group_series(
    connection: &mut Connection,
    query: &BucketQuery,
    groups: &HashMap<String, String>,
) -> StoreResult<Vec<GroupSeries>> {
    let (sql, values) = bucket_sql(query, rollup_cursor(connection)?);
    let mut statement = connection.prepare(&sql).map_err(db("querying metrics"))?;
    let mut rows = statement
        .query(params_from_iter(values))
        .map_err(db("querying metrics"))?;
    let mut accumulator = GroupAccumulator::default();
    while let Some(row) = rows.next().map_err(db("querying metrics"))? {
        let row = bucket_row(row).map_err(db("querying metrics"))?;
        let Some(group) = groups.get(&row.node) else {
            continue;
        };
        accumulator.add(
            group,
            &row.node,
            &row.name,
            &row.labels,
            u64::try_from(row.index).unwrap_or(0),
            u64_from_db("sample count", row.count)?,
            row.sum,
        );
    }
    accumulator.finish(&query.grid, |text| {
        from_json::<Labels>("labels of a metric series", text)
    })
}

#[async_trait]
impl TelemetryStore for SqliteStore {
    async fn metric_window(&self, name: &str, since: Timestamp) -> StoreResult<Vec<MetricRow>> {
        let name = name.to_owned();
        self.run(move |c| metric_window(c, &name, since)).await
    }

    async fn drop_totals(&self) -> StoreResult<Vec<NodeDropCount>> {
        self.run(drop_totals).await
    }

    async fn ingest_upload(
        &self,
        node: &str,
        batch: IngestBatch,
        now: Timestamp,
    ) -> StoreResult<IngestOutcome> {
        let node = node.to_owned();
        self.run(move |c| ingest(c, &node, &batch, now)).await
    }

    async fn node_telemetry(&self, node: &str) -> StoreResult<NodeTelemetry> {
        let node = node.to_owned();
        self.run(move |c| node_telemetry(c, &node)).await
    }

    async fn roll_up_metrics(&self, now: Timestamp, max_samples: u64) -> StoreResult<RollupStep> {
        self.run(move |c| roll_up(c, now, max_samples)).await
    }

    async fn expire_metrics(
        &self,
        raw_before: Timestamp,
        rollups_before: Timestamp,
        limit: u64,
    ) -> StoreResult<ExpireStep> {
        self.run(move |c| expire(c, raw_before, rollups_before, limit))
            .await
    }

    async fn metric_node_series(
        &self,
        query: BucketQuery,
        nodes: Option<HashSet<String>>,
        max_series: usize,
    ) -> StoreResult<NodeSeriesAnswer> {
        self.run(move |c| node_series(c, &query, nodes.as_ref(), max_series))
            .await
    }

    async fn metric_group_series(
        &self,
        query: BucketQuery,
        groups: HashMap<String, String>,
    ) -> StoreResult<Vec<GroupSeries>> {
        self.run(move |c| group_series(c, &query, &groups)).await
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use edgefleet_wire::telemetry::DropCount;
    use time::macros::datetime;

    use super::*;
    use crate::telemetry::model::{
        BucketGrid, IngestMetricSet, IngestRecord, IngestSample, IngestStream,
    };

    const T0: Timestamp = datetime!(2024-05-01 12:00 UTC);

    fn at(minutes: i64, seconds: i64) -> Timestamp {
        T0 + time::Duration::minutes(minutes) + time::Duration::seconds(seconds)
    }

    async fn store() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("test.db"))
            .await
            .unwrap();
        (dir, store)
    }

    fn sample(name: &str, labels: &str, value: f64) -> IngestSample {
        IngestSample {
            name: name.into(),
            labels: labels.into(),
            value,
        }
    }

    fn set(seq: u64, time: Timestamp, samples: Vec<IngestSample>) -> IngestRecord {
        IngestRecord {
            seq,
            time,
            payload: IngestPayload::Metrics(IngestMetricSet { time, samples }),
        }
    }

    fn metrics_batch(outbox: &str, records: Vec<IngestRecord>) -> IngestBatch {
        IngestBatch {
            outbox: outbox.into(),
            streams: vec![IngestStream {
                stream: "metrics".into(),
                sink: "default".into(),
                deployment: String::new(),
                records,
            }],
            dropped: vec![],
            backlog_bytes: 0,
            backlog_records: 0,
        }
    }

    /// One cpu sample per record: value `v` at `time`.
    fn cpu_batch(outbox: &str, first_seq: u64, points: &[(Timestamp, f64)]) -> IngestBatch {
        let records = points
            .iter()
            .enumerate()
            .map(|(i, (time, value))| {
                set(
                    first_seq + i as u64,
                    *time,
                    vec![sample("cpu", "{}", *value)],
                )
            })
            .collect();
        metrics_batch(outbox, records)
    }

    /// Every rollup row: (node, bucket start minute offset from T0, count, sum, min, max).
    async fn rollups(store: &SqliteStore) -> Vec<(String, i64, i64, f64, f64, f64)> {
        let t0 = time_to_db(T0);
        store
            .run(move |c| {
                let mut statement = c
                    .prepare(
                        "SELECT node, bucket, sample_count, value_sum, value_min, value_max \
                         FROM metric_rollups ORDER BY node, bucket",
                    )
                    .map_err(db("test"))?;
                statement
                    .query_map([], |row| {
                        let bucket: i64 = row.get(1)?;
                        Ok((
                            row.get(0)?,
                            (bucket - t0) / 60_000_000_000,
                            row.get(2)?,
                            row.get(3)?,
                            row.get(4)?,
                            row.get(5)?,
                        ))
                    })
                    .and_then(Iterator::collect)
                    .map_err(db("test"))
            })
            .await
            .unwrap()
    }

    async fn sample_ids(store: &SqliteStore) -> Vec<i64> {
        store
            .run(|c| {
                let mut statement = c
                    .prepare("SELECT id FROM metric_samples ORDER BY id")
                    .map_err(db("test"))?;
                statement
                    .query_map([], |row| row.get(0))
                    .and_then(Iterator::collect)
                    .map_err(db("test"))
            })
            .await
            .unwrap()
    }

    async fn set_lake_cursor(store: &SqliteStore, last_id: i64) {
        store
            .run(move |c| {
                c.execute_batch(
                    "CREATE TABLE IF NOT EXISTS lake_cursors \
                     (source TEXT PRIMARY KEY, last_id INTEGER NOT NULL)",
                )
                .map_err(db("test"))?;
                c.execute(
                    "INSERT INTO lake_cursors (source, last_id) VALUES ('metrics', ?1) \
                     ON CONFLICT (source) DO UPDATE SET last_id = excluded.last_id",
                    [last_id],
                )
                .map_err(db("test"))?;
                Ok(())
            })
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn ingest_is_exactly_once_per_outbox() {
        let (_dir, store) = store().await;
        add_nodes(&store, &["n", "m"]).await;
        let batch = cpu_batch("a", 1, &[(at(0, 0), 1.0), (at(0, 10), 2.0)]);
        let outcome = store
            .ingest_upload("n", batch.clone(), at(1, 0))
            .await
            .unwrap();
        assert_eq!(outcome.samples_stored, 2);
        assert_eq!(outcome.metric_sets_stored, 2);
        assert_eq!(outcome.acks[0].stored_through, 2);
        let again = store.ingest_upload("n", batch, at(1, 0)).await.unwrap();
        assert_eq!((again.samples_stored, again.duplicates), (0, 2));
        assert_eq!(again.acks, outcome.acks);
        // Another node's stream of the same name has its own cursor.
        let other = cpu_batch("a", 1, &[(at(0, 0), 1.0)]);
        assert_eq!(
            store
                .ingest_upload("m", other, at(1, 0))
                .await
                .unwrap()
                .samples_stored,
            1
        );
        assert_eq!(sample_ids(&store).await, [1, 2, 3]);
        let window = store.metric_window("cpu", at(0, 5)).await.unwrap();
        let seen: Vec<(&str, f64)> = window.iter().map(|r| (r.node.as_str(), r.value)).collect();
        assert_eq!(seen, [("n", 2.0)]);
    }

    #[tokio::test]
    async fn drop_totals_keep_the_highest_and_note_changes() {
        let (_dir, store) = store().await;
        let drops = |records: u64| IngestBatch {
            outbox: "a".into(),
            streams: vec![],
            dropped: vec![DropCount {
                stream: "metrics".into(),
                reason: DropReason::Full,
                records,
                bytes: records * 10,
            }],
            backlog_bytes: 7,
            backlog_records: 1,
        };
        store.ingest_upload("n", drops(4), at(0, 0)).await.unwrap();
        store.ingest_upload("n", drops(2), at(1, 0)).await.unwrap();
        let totals = store.drop_totals().await.unwrap();
        assert_eq!(totals[0].count.records, 4);
        assert_eq!(totals[0].changed_at, at(0, 0), "no change, no new time");
        store.ingest_upload("n", drops(6), at(2, 0)).await.unwrap();
        let totals = store.drop_totals().await.unwrap();
        assert_eq!((totals[0].count.records, totals[0].count.bytes), (6, 60));
        assert_eq!(totals[0].changed_at, at(2, 0));
        let node = store.node_telemetry("n").await.unwrap();
        assert_eq!(node.last_upload, Some(at(2, 0)));
        assert_eq!((node.backlog_bytes, node.backlog_records), (7, 1));
    }

    #[tokio::test]
    async fn rollups_count_every_sample_once() {
        let (_dir, store) = store().await;
        // Buckets 12:00, 12:05 and 12:10.
        let points = [
            (at(0, 0), 1.0),
            (at(1, 0), 3.0),
            (at(5, 0), 10.0),
            (at(9, 59), 20.0),
            (at(10, 0), 5.0),
        ];
        store
            .ingest_upload("n", cpu_batch("a", 1, &points), at(11, 0))
            .await
            .unwrap();
        let step = store.roll_up_metrics(at(11, 0), 1000).await.unwrap();
        assert_eq!(
            step,
            RollupStep {
                rolled_up_through: 5,
                samples_rolled_up: 5,
                more: false
            }
        );
        let mut expected = vec![
            ("n".to_owned(), 0, 2, 4.0, 1.0, 3.0),
            ("n".to_owned(), 5, 2, 30.0, 10.0, 20.0),
            ("n".to_owned(), 10, 1, 5.0, 5.0, 5.0),
        ];
        assert_eq!(rollups(&store).await, expected);
        // Rolling up again (a second run, or a retry after a crash) counts nothing twice.
        let step = store.roll_up_metrics(at(12, 0), 1000).await.unwrap();
        assert_eq!((step.samples_rolled_up, step.more), (0, false));
        assert_eq!(rollups(&store).await, expected);
        // More samples for the open bucket, and a late one (a node that was offline) for
        // an old bucket: both are merged into their buckets, once.
        let more = cpu_batch("a", 6, &[(at(2, 0), 8.0), (at(11, 0), 7.0)]);
        store
            .ingest_upload("n", more.clone(), at(13, 0))
            .await
            .unwrap();
        store.ingest_upload("n", more, at(13, 0)).await.unwrap();
        let step = store.roll_up_metrics(at(13, 0), 1000).await.unwrap();
        assert_eq!((step.rolled_up_through, step.samples_rolled_up), (7, 2));
        store.roll_up_metrics(at(14, 0), 1000).await.unwrap();
        expected[0] = ("n".to_owned(), 0, 3, 12.0, 1.0, 8.0);
        expected[2] = ("n".to_owned(), 10, 2, 12.0, 5.0, 7.0);
        assert_eq!(rollups(&store).await, expected);
    }

    #[tokio::test]
    async fn rollups_in_small_chunks_equal_one_big_one() {
        let points: Vec<(Timestamp, f64)> = (0..120).map(|i| (at(i, 7), i as f64)).collect();
        let now = at(200, 0);
        let (_dir_a, big) = store().await;
        big.ingest_upload("n", cpu_batch("a", 1, &points), now)
            .await
            .unwrap();
        let step = big.roll_up_metrics(now, 1_000_000).await.unwrap();
        assert_eq!((step.samples_rolled_up, step.more), (120, false));
        let (_dir_b, small) = store().await;
        small
            .ingest_upload("n", cpu_batch("a", 1, &points), now)
            .await
            .unwrap();
        let mut steps = 0;
        loop {
            let step = small.roll_up_metrics(now, 7).await.unwrap();
            steps += 1;
            assert!(step.samples_rolled_up <= 7, "bounded chunks: {step:?}");
            if !step.more {
                break;
            }
        }
        assert_eq!(steps, 18);
        assert_eq!(rollups(&small).await, rollups(&big).await);
        assert_eq!(rollups(&big).await.len(), 24);
    }

    async fn arrivals(store: &SqliteStore) -> Vec<(i64, i64)> {
        store
            .run(|c| {
                let mut statement = c
                    .prepare("SELECT at, last_id FROM metric_arrivals ORDER BY at")
                    .map_err(db("test"))?;
                statement
                    .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
                    .and_then(Iterator::collect)
                    .map_err(db("test"))
            })
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn retention_waits_for_arrival_rollups_and_the_lake() {
        let (_dir, store) = store().await;
        let day = time::Duration::days(1);
        let points: Vec<(Timestamp, f64)> = (0..6).map(|i| (at(i * 10, 0), 1.0)).collect();
        let arrived = at(60, 0);
        store
            .ingest_upload("n", cpu_batch("a", 1, &points), arrived)
            .await
            .unwrap();
        // The first rollup run notes that ids 1 to 6 arrived by now, and rolls up 1 to 3.
        store.roll_up_metrics(arrived, 3).await.unwrap();
        assert_eq!(arrivals(&store).await, [(time_to_db(arrived), 6)]);
        let expire = |raw_before: Timestamp| {
            let store = &store;
            async move {
                store
                    .expire_metrics(raw_before, T0 - 30 * day, 2)
                    .await
                    .unwrap()
            }
        };
        set_lake_cursor(&store, 100).await;
        // Arrived too recently: nothing goes.
        assert_eq!(expire(arrived - day).await, ExpireStep::default());
        // Old enough and exported, but only ids 1 to 3 are rolled up: those go, in chunks.
        assert_eq!(expire(arrived).await.raw_deleted, 2);
        assert_eq!(expire(arrived).await.raw_deleted, 1);
        assert_eq!(expire(arrived).await.raw_deleted, 0);
        assert_eq!(sample_ids(&store).await, [4, 5, 6]);
        // Rolled up, but the lake has exported only through id 4.
        let later = arrived + day;
        store.roll_up_metrics(later, 100).await.unwrap();
        set_lake_cursor(&store, 4).await;
        assert_eq!(expire(arrived).await.raw_deleted, 1);
        assert_eq!(expire(arrived).await.raw_deleted, 0);
        set_lake_cursor(&store, 6).await;
        assert_eq!(expire(arrived).await.raw_deleted, 2);
        assert!(sample_ids(&store).await.is_empty());
        // Arrival notes older than the one the cutoff needs are dropped.
        assert_eq!(expire(later).await, ExpireStep::default());
        assert_eq!(arrivals(&store).await, [(time_to_db(later), 6)]);
        // Ids are never reused once the rows are gone (the lake's cursors rely on it).
        store
            .ingest_upload("n", cpu_batch("a", 7, &[(at(70, 0), 1.0)]), later)
            .await
            .unwrap();
        assert_eq!(sample_ids(&store).await, [7]);
        // Rollups outlive raw samples, then expire too, oldest first.
        assert_eq!(rollups(&store).await.len(), 6);
        let step = store.expire_metrics(T0, at(25, 0), 100).await.unwrap();
        assert_eq!(step.rollups_deleted, 3);
        let left: Vec<i64> = rollups(&store).await.iter().map(|r| r.1).collect();
        assert_eq!(left, [30, 40, 50]);
    }

    #[tokio::test]
    async fn retention_without_the_lake_keeps_raw_samples() {
        let (_dir, store) = store().await;
        store
            .ingest_upload("n", cpu_batch("a", 1, &[(at(0, 0), 1.0)]), at(1, 0))
            .await
            .unwrap();
        store.roll_up_metrics(at(1, 0), 100).await.unwrap();
        let later = at(1, 0) + time::Duration::days(3);
        let step = store
            .expire_metrics(later, T0 - time::Duration::days(1), 100)
            .await
            .unwrap();
        assert_eq!(step, ExpireStep::default());
        assert_eq!(sample_ids(&store).await, [1]);
    }

    async fn add_nodes(store: &SqliteStore, names: &[&str]) {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        store
            .run(move |c| {
                for name in names {
                    c.execute(
                        "INSERT INTO nodes (name, labels, facts, enrolled_at, cert_serial, \
                         cert_not_after) VALUES (?1, '{}', '{}', 0, '01', 0)",
                        [name],
                    )
                    .map_err(db("test"))?;
                }
                Ok(())
            })
            .await
            .unwrap();
    }

    fn bucket_query(
        source: Resolution,
        width: Duration,
        since: Timestamp,
        until: Timestamp,
    ) -> BucketQuery {
        BucketQuery {
            node: None,
            metric: Some("cpu".into()),
            since,
            until,
            grid: BucketGrid {
                origin: since,
                width,
            },
            source,
        }
    }

    #[tokio::test]
    async fn rollup_queries_join_rollups_and_recent_raw_samples() {
        let (_dir, store) = store().await;
        let points: Vec<(Timestamp, f64)> = (0..60).map(|i| (at(i, 0), i as f64)).collect();
        store
            .ingest_upload("n", cpu_batch("a", 1, &points), at(60, 0))
            .await
            .unwrap();
        add_nodes(&store, &["n"]).await;
        // Roll up the first 25 samples only (12:00 to 12:24); the rest are still raw, and
        // bucket 12:20 is half rollup, half raw.
        store.roll_up_metrics(at(60, 0), 25).await.unwrap();
        let query = bucket_query(Resolution::Rollup, Duration::from_secs(600), T0, at(60, 0));
        let answer = store.metric_node_series(query, None, 10).await.unwrap();
        let buckets = &answer.series[0].buckets;
        assert_eq!(buckets.len(), 6);
        for (i, bucket) in buckets.iter().enumerate() {
            let first = i as f64 * 10.0;
            assert_eq!(bucket.start, at(i as i64 * 10, 0));
            assert_eq!(
                bucket.count, 10,
                "bucket {i}: no sample twice, none missing"
            );
            assert_eq!(bucket.sum, (0..10).map(|k| first + k as f64).sum::<f64>());
            assert_eq!((bucket.min, bucket.max), (first, first + 9.0));
        }
        // The same range from raw samples gives the same buckets.
        let raw = bucket_query(Resolution::Raw, Duration::from_secs(600), T0, at(60, 0));
        let raw = store.metric_node_series(raw, None, 10).await.unwrap();
        let counts: Vec<(u64, f64)> = raw.series[0]
            .buckets
            .iter()
            .map(|b| (b.count, b.sum))
            .collect();
        let rolled: Vec<(u64, f64)> = buckets.iter().map(|b| (b.count, b.sum)).collect();
        assert_eq!(counts, rolled);
    }

    /// The query plan of `sql`, one line per step.
    async fn query_plan(store: &SqliteStore, sql: String, values: Vec<Value>) -> String {
        store
            .run(move |c| {
                let mut statement = c
                    .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
                    .map_err(db("test"))?;
                let lines: Vec<String> = statement
                    .query_map(params_from_iter(values), |row| row.get(3))
                    .and_then(Iterator::collect)
                    .map_err(db("test"))?;
                Ok(lines.join("\n"))
            })
            .await
            .unwrap()
    }

    /// Reads across nodes seek the one index per node instead of scanning the samples:
    /// with thousands of nodes and a day of samples, a scan would take seconds.
    #[tokio::test]
    async fn fleet_reads_seek_the_index_per_node() {
        let (_dir, store) = store().await;
        for source in [Resolution::Raw, Resolution::Rollup] {
            let query = bucket_query(source, Duration::from_secs(60), T0, at(60, 0));
            let (sql, values) = bucket_sql(&query, 0);
            let plan = query_plan(&store, sql, values).await;
            assert!(plan.contains("SCAN n"), "{source:?}: {plan}");
            assert!(
                plan.contains("SEARCH t USING INDEX metric_samples_by_node (node=? AND name=? AND time>? AND time<?)"),
                "{source:?}: {plan}"
            );
            assert!(!plan.contains("SCAN t"), "{source:?}: {plan}");
            let mut one_node = query.clone();
            one_node.node = Some("n".into());
            let (sql, values) = bucket_sql(&one_node, 0);
            let plan = query_plan(&store, sql, values).await;
            assert!(!plan.contains("SCAN n"), "{source:?}: {plan}");
            assert!(!plan.contains("SCAN t"), "{source:?}: {plan}");
            assert!(
                plan.contains("SEARCH t USING INDEX metric_samples_by_node (node=? AND name=?"),
                "{source:?}: {plan}"
            );
        }
        let plan = query_plan(
            &store,
            METRIC_WINDOW_SQL.to_owned(),
            vec![Value::Text("cpu".into()), Value::Integer(0)],
        )
        .await;
        assert!(plan.contains("SCAN n"), "{plan}");
        assert!(
            plan.contains(
                "SEARCH s USING INDEX metric_samples_by_node (node=? AND name=? AND time>?)"
            ),
            "{plan}"
        );
    }

    #[tokio::test]
    async fn node_series_are_capped_and_filtered() {
        let (_dir, store) = store().await;
        add_nodes(&store, &["a", "b", "c"]).await;
        for node in ["a", "b", "c"] {
            store
                .ingest_upload(node, cpu_batch("x", 1, &[(at(0, 0), 1.0)]), at(1, 0))
                .await
                .unwrap();
        }
        let query = bucket_query(Resolution::Raw, Duration::from_secs(60), T0, at(10, 0));
        let answer = store
            .metric_node_series(query.clone(), None, 2)
            .await
            .unwrap();
        assert!(answer.truncated);
        assert_eq!(answer.series.len(), 2);
        let only: HashSet<String> = ["c".to_owned()].into();
        let answer = store
            .metric_node_series(query.clone(), Some(only), 2)
            .await
            .unwrap();
        assert!(!answer.truncated);
        assert_eq!(answer.series[0].node, "c");
        let groups: HashMap<String, String> = [
            ("a".to_owned(), "g".to_owned()),
            ("b".to_owned(), "g".to_owned()),
        ]
        .into();
        let series = store.metric_group_series(query, groups).await.unwrap();
        assert_eq!((series.len(), series[0].nodes), (1, 2));
    }

    /// Ingests `batches_per_node` batches of `sets_per_batch` 60-sample metric sets from
    /// each of `nodes` nodes into a fresh store, one transaction per batch, and returns
    /// samples per second. `synchronous` is the store's `PRAGMA synchronous` for the run.
    async fn measure_ingest(
        nodes: usize,
        batches_per_node: u64,
        sets_per_batch: u64,
        synchronous: &'static str,
    ) -> f64 {
        const SAMPLES_PER_SET: usize = 60;
        let (_dir, store) = store().await;
        store
            .run(move |c| {
                c.pragma_update(None, "synchronous", synchronous)
                    .map_err(db("test"))
            })
            .await
            .unwrap();
        let batches: Vec<(String, IngestBatch)> = (0..batches_per_node)
            .flat_map(|b| (0..nodes).map(move |n| (n, b)))
            .map(|(n, b)| {
                let records = (0..sets_per_batch)
                    .map(|s| {
                        let seq = b * sets_per_batch + s + 1;
                        let samples = (0..SAMPLES_PER_SET)
                            .map(|k| {
                                sample(&format!("metric.{k}"), r#"{"sensor":"cpu0"}"#, k as f64)
                            })
                            .collect();
                        set(seq, T0 + time::Duration::seconds(seq as i64 * 10), samples)
                    })
                    .collect();
                (format!("node-{n}"), metrics_batch("bench", records))
            })
            .collect();
        let samples = batches.len() as u64 * sets_per_batch * SAMPLES_PER_SET as u64;
        let cpu_before = process_cpu_time();
        let started = Instant::now();
        for (node, batch) in batches {
            store.ingest_upload(&node, batch, at(300, 0)).await.unwrap();
        }
        let elapsed = started.elapsed();
        let cpu = process_cpu_time() - cpu_before;
        let stored: i64 = store
            .run(|c| {
                c.query_row("SELECT COUNT(*) FROM metric_samples", [], |row| row.get(0))
                    .map_err(db("test"))
            })
            .await
            .unwrap();
        assert_eq!(stored as u64, samples);
        let rate = samples as f64 / elapsed.as_secs_f64();
        println!(
            "store ingest: {samples} samples, {nodes} nodes, {} samples per batch, \
             synchronous={synchronous}: {elapsed:.2?}, {rate:.0} samples/s \
             ({:.0} samples per CPU second)",
            sets_per_batch * SAMPLES_PER_SET as u64,
            samples as f64 / cpu.as_secs_f64().max(1e-9)
        );
        rate
    }

    /// CPU time (user + system) of this process so far, from /proc (a busy machine makes
    /// wall-clock rates noisy; CPU time is what the ingest itself costs).
    fn process_cpu_time() -> Duration {
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
        // Fields after the command name (which may hold spaces) start at field 3.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .unwrap()
            .1
            .split_whitespace()
            .collect();
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        let per_second = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
            .unwrap()
            .unwrap() as u64;
        Duration::from_secs_f64(ticks as f64 / per_second as f64)
    }

    /// Ingest speed into the store through `TelemetryStore::ingest_upload`, with the store's
    /// own settings (synchronous=FULL: every batch is durable when acknowledged): batches of
    /// ten 60-sample metric sets, and batches of seventy (about what an agent's 256 KiB
    /// upload holds); then the small batches with synchronous=NORMAL, to show what the
    /// per-commit fsync costs. Run with `--release --nocapture` for real numbers.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ingest_rate() {
        measure_ingest(20, 15, 10, "FULL").await;
        measure_ingest(20, 3, 70, "FULL").await;
        measure_ingest(20, 15, 10, "NORMAL").await;
    }
}
