//! `LakeStore` in SQLite: one row of `lake_cursors` per source, read and written in
//! transactions together with the rows of `stream_records` and `metric_samples` (the tables
//! of the telemetry store) they describe.

use std::collections::BTreeMap;

use async_trait::async_trait;
use edgefleet_wire::Labels;
use rusqlite::types::ValueRef;
use rusqlite::{Connection, OptionalExtension, Row, Transaction, params};

use super::{
    SqliteStore, commit, corrupt, db, from_json, time_from_db, to_json, u64_from_db, u64_to_db,
    write_tx,
};
use crate::store::lake::{
    LakeCommit, LakeCursor, LakeMetricRow, LakeRecordRow, LakeRows, LakeSource, PlannedBatch,
    RecordPayload, SinkBacklog,
};
use crate::store::{LakeStore, StoreResult};

/// Schema migration 6: the exporter's cursors. `last_id`: every row of the source at or
/// below it is in the lake or held. `planned_through` and `planned_labels` (JSON: node →
/// labels) describe the batch in flight, NULL when none.
pub(super) const MIGRATION: &str = r#"
CREATE TABLE lake_cursors (
    source TEXT PRIMARY KEY,
    last_id INTEGER NOT NULL,
    planned_through INTEGER,
    planned_labels TEXT,
    exported_rows INTEGER NOT NULL DEFAULT 0,
    exported_files INTEGER NOT NULL DEFAULT 0,
    held_rows INTEGER NOT NULL DEFAULT 0
) STRICT;
"#;

type CursorRow = (i64, Option<i64>, Option<String>, i64, i64, i64);

fn cursor_row(row: &Row<'_>) -> rusqlite::Result<CursorRow> {
    Ok((
        row.get(0)?,
        row.get(1)?,
        row.get(2)?,
        row.get(3)?,
        row.get(4)?,
        row.get(5)?,
    ))
}

fn read_cursor(connection: &Connection, source: &LakeSource) -> StoreResult<LakeCursor> {
    let key = source.key();
    let raw = connection
        .query_row(
            "SELECT last_id, planned_through, planned_labels, exported_rows, exported_files, \
             held_rows FROM lake_cursors WHERE source = ?1",
            [&key],
            cursor_row,
        )
        .optional()
        .map_err(db("reading a lake cursor"))?;
    let Some((last_id, planned_through, planned_labels, rows, files, held)) = raw else {
        return Ok(LakeCursor::default());
    };
    let what = |column: &str| format!("{column} of lake cursor {key}");
    let last_id = u64_from_db(&what("last_id"), last_id)?;
    let in_flight = match planned_through {
        None => None,
        Some(through) => Some(PlannedBatch {
            after_id: last_id,
            through_id: u64_from_db(&what("planned_through"), through)?,
            node_labels: match planned_labels {
                Some(text) => from_json(&what("planned_labels"), &text)?,
                None => BTreeMap::new(),
            },
        }),
    };
    Ok(LakeCursor {
        last_id,
        in_flight,
        exported_rows: u64_from_db(&what("exported_rows"), rows)?,
        exported_files: u64_from_db(&what("exported_files"), files)?,
        held_rows: u64_from_db(&what("held_rows"), held)?,
    })
}

/// The id of the `max_rows`-th row after `after`, or of the last one when there are fewer.
fn batch_end(
    tx: &Transaction<'_>,
    source: &LakeSource,
    after: i64,
    max_rows: u32,
) -> StoreResult<Option<i64>> {
    let offset = i64::from(max_rows.max(1)) - 1;
    let (nth, last) = match source {
        LakeSource::Records { sink } => (
            tx.query_row(
                "SELECT id FROM stream_records WHERE sink = ?1 AND id > ?2 ORDER BY id \
                 LIMIT 1 OFFSET ?3",
                params![sink, after, offset],
                |row| row.get::<_, i64>(0),
            )
            .optional(),
            "SELECT MAX(id) FROM stream_records WHERE sink = ?1 AND id > ?2",
        ),
        LakeSource::Metrics => (
            tx.query_row(
                "SELECT id FROM metric_samples WHERE id > ?1 ORDER BY id LIMIT 1 OFFSET ?2",
                params![after, offset],
                |row| row.get::<_, i64>(0),
            )
            .optional(),
            "SELECT MAX(id) FROM metric_samples WHERE id > ?1",
        ),
    };
    if let Some(id) = nth.map_err(db("planning a lake batch"))? {
        return Ok(Some(id));
    }
    let last = match source {
        LakeSource::Records { sink } => tx.query_row(last, params![sink, after], |row| row.get(0)),
        LakeSource::Metrics => tx.query_row(last, params![after], |row| row.get(0)),
    };
    last.map_err(db("planning a lake batch"))
}

/// The labels, as stored, of the nodes that have rows in the batch.
fn batch_labels(
    tx: &Transaction<'_>,
    source: &LakeSource,
    after: i64,
    through: i64,
) -> StoreResult<BTreeMap<String, Labels>> {
    let (sql, sink) = match source {
        LakeSource::Records { sink } => (
            "SELECT n.name, n.labels FROM nodes n WHERE n.name IN \
             (SELECT DISTINCT node FROM stream_records WHERE sink = ?3 AND id > ?1 AND id <= ?2)",
            sink.as_str(),
        ),
        LakeSource::Metrics => (
            // ?3 is unused here; binding it keeps one call shape for both sources.
            "SELECT n.name, n.labels FROM nodes n WHERE ?3 = ?3 AND n.name IN \
             (SELECT DISTINCT node FROM metric_samples WHERE id > ?1 AND id <= ?2)",
            "",
        ),
    };
    let mut statement = tx.prepare_cached(sql).map_err(db("reading node labels"))?;
    let rows: Vec<(String, String)> = statement
        .query_map(params![after, through, sink], |row| {
            Ok((row.get(0)?, row.get(1)?))
        })
        .and_then(Iterator::collect)
        .map_err(db("reading node labels"))?;
    rows.into_iter()
        .map(|(name, labels)| {
            let labels = from_json(&format!("labels of node {name}"), &labels)?;
            Ok((name, labels))
        })
        .collect()
}

fn plan(
    connection: &mut Connection,
    source: &LakeSource,
    max_rows: u32,
) -> StoreResult<Option<PlannedBatch>> {
    let tx = write_tx(connection)?;
    let cursor = read_cursor(&tx, source)?;
    if let Some(batch) = cursor.in_flight {
        return Ok(Some(batch));
    }
    let after = u64_to_db("lake cursor", cursor.last_id)?;
    let Some(through) = batch_end(&tx, source, after, max_rows)? else {
        return Ok(None);
    };
    let node_labels = batch_labels(&tx, source, after, through)?;
    tx.execute(
        "INSERT INTO lake_cursors (source, last_id, planned_through, planned_labels) \
         VALUES (?1, ?2, ?3, ?4) \
         ON CONFLICT (source) DO UPDATE SET planned_through = ?3, planned_labels = ?4",
        params![
            source.key(),
            after,
            through,
            to_json("planned node labels", &node_labels)?
        ],
    )
    .map_err(db("planning a lake batch"))?;
    commit(tx)?;
    Ok(Some(PlannedBatch {
        after_id: cursor.last_id,
        through_id: u64_from_db("planned lake batch", through)?,
        node_labels,
    }))
}

/// A BLOB or TEXT cell as bytes (NULL: empty).
fn cell_bytes(value: ValueRef<'_>) -> Vec<u8> {
    match value {
        ValueRef::Text(bytes) | ValueRef::Blob(bytes) => bytes.to_vec(),
        ValueRef::Null => Vec::new(),
        ValueRef::Integer(n) => n.to_string().into_bytes(),
        ValueRef::Real(x) => x.to_string().into_bytes(),
    }
}

/// A record's payload. A `json` record whose data is not UTF-8 is exported as bytes rather
/// than stopping the exporter on it.
fn payload(kind: &str, data: Vec<u8>) -> RecordPayload {
    if kind == "json" {
        match String::from_utf8(data) {
            Ok(text) => RecordPayload::Json(text),
            Err(error) => RecordPayload::Bytes(error.into_bytes()),
        }
    } else {
        RecordPayload::Bytes(data)
    }
}

type RawRecord = (i64, String, String, String, i64, i64, i64, String, Vec<u8>);

fn read_records(
    connection: &Connection,
    sink: &str,
    after: i64,
    through: i64,
) -> StoreResult<Vec<LakeRecordRow>> {
    let mut statement = connection
        .prepare_cached(
            "SELECT id, node, stream, deployment, seq, time, received_at, kind, data \
             FROM stream_records WHERE sink = ?1 AND id > ?2 AND id <= ?3 ORDER BY id",
        )
        .map_err(db("reading stream records"))?;
    let raw: Vec<RawRecord> = statement
        .query_map(params![sink, after, through], |row| {
            Ok((
                row.get(0)?,
                row.get::<_, Option<String>>(1)?.unwrap_or_default(),
                row.get::<_, Option<String>>(2)?.unwrap_or_default(),
                row.get::<_, Option<String>>(3)?.unwrap_or_default(),
                row.get::<_, Option<i64>>(4)?.unwrap_or_default(),
                row.get::<_, Option<i64>>(5)?.unwrap_or_default(),
                row.get::<_, Option<i64>>(6)?.unwrap_or_default(),
                row.get::<_, Option<String>>(7)?.unwrap_or_default(),
                cell_bytes(row.get_ref(8)?),
            ))
        })
        .and_then(Iterator::collect)
        .map_err(db("reading stream records"))?;
    raw.into_iter()
        .map(
            |(id, node, stream, deployment, seq, time, received_at, kind, data)| {
                let what = |column: &str| format!("{column} of stream record {id}");
                Ok(LakeRecordRow {
                    id: u64_from_db(&what("id"), id)?,
                    seq: u64_from_db(&what("seq"), seq)?,
                    time: time_from_db(&what("time"), time)?,
                    received_at: time_from_db(&what("received_at"), received_at)?,
                    payload: payload(&kind, data),
                    node,
                    stream,
                    deployment,
                })
            },
        )
        .collect()
}

type RawMetric = (i64, String, String, String, i64, Option<f64>);

fn read_metrics(
    connection: &Connection,
    after: i64,
    through: i64,
) -> StoreResult<Vec<LakeMetricRow>> {
    let mut statement = connection
        .prepare_cached(
            "SELECT id, node, name, labels, time, value FROM metric_samples \
             WHERE id > ?1 AND id <= ?2 ORDER BY id",
        )
        .map_err(db("reading metric samples"))?;
    let raw: Vec<RawMetric> = statement
        .query_map(params![after, through], |row| {
            Ok((
                row.get(0)?,
                row.get::<_, Option<String>>(1)?.unwrap_or_default(),
                row.get::<_, Option<String>>(2)?.unwrap_or_default(),
                row.get::<_, Option<String>>(3)?
                    .unwrap_or_else(|| "{}".to_owned()),
                row.get::<_, Option<i64>>(4)?.unwrap_or_default(),
                row.get(5)?,
            ))
        })
        .and_then(Iterator::collect)
        .map_err(db("reading metric samples"))?;
    raw.into_iter()
        .map(|(id, node, name, labels, time, value)| {
            let what = |column: &str| format!("{column} of metric sample {id}");
            Ok(LakeMetricRow {
                id: u64_from_db(&what("id"), id)?,
                time: time_from_db(&what("time"), time)?,
                value: value.unwrap_or(f64::NAN),
                node,
                name,
                labels,
            })
        })
        .collect()
}

fn commit_batch(connection: &mut Connection, batch: &LakeCommit) -> StoreResult<bool> {
    let tx = write_tx(connection)?;
    let cursor = read_cursor(&tx, &batch.source)?;
    match &cursor.in_flight {
        Some(planned) if planned.through_id == batch.through_id => {}
        _ => return Ok(false),
    }
    let after = u64_to_db("lake cursor", cursor.last_id)?;
    let through = u64_to_db("lake batch end", batch.through_id)?;
    let exported = u64_to_db("exported rows", batch.exported_ids.len() as u64)?;
    if let LakeSource::Records { sink } = &batch.source {
        let mut delete = tx
            .prepare_cached(
                "DELETE FROM stream_records WHERE id = ?1 AND sink = ?2 AND id > ?3 AND id <= ?4",
            )
            .map_err(db("deleting exported stream records"))?;
        for id in &batch.exported_ids {
            let id = u64_to_db("stream record id", *id)?;
            delete
                .execute(params![id, sink, after, through])
                .map_err(db("deleting exported stream records"))?;
        }
    }
    tx.execute(
        "UPDATE lake_cursors SET last_id = ?2, planned_through = NULL, planned_labels = NULL, \
         exported_rows = exported_rows + ?3, exported_files = exported_files + ?4, \
         held_rows = held_rows + ?5 WHERE source = ?1",
        params![
            batch.source.key(),
            through,
            exported,
            u64_to_db("exported files", batch.files)?,
            u64_to_db("held rows", batch.held_rows)?,
        ],
    )
    .map_err(db("committing a lake batch"))?;
    commit(tx)?;
    Ok(true)
}

fn pending(connection: &Connection, source: &LakeSource) -> StoreResult<u64> {
    let cursor = read_cursor(connection, source)?;
    let after = u64_to_db("lake cursor", cursor.last_id)?;
    let count: i64 = match source {
        LakeSource::Records { sink } => connection.query_row(
            "SELECT COUNT(*) FROM stream_records WHERE sink = ?1 AND id > ?2",
            params![sink, after],
            |row| row.get(0),
        ),
        LakeSource::Metrics => connection.query_row(
            "SELECT COUNT(*) FROM metric_samples WHERE id > ?1",
            params![after],
            |row| row.get(0),
        ),
    }
    .map_err(db("counting rows waiting for the lake"))?;
    u64_from_db("row count", count)
}

fn record_sinks(connection: &Connection) -> StoreResult<Vec<SinkBacklog>> {
    let mut statement = connection
        .prepare_cached(
            "SELECT COALESCE(sink, ''), COUNT(*) FROM stream_records GROUP BY sink ORDER BY sink",
        )
        .map_err(db("counting stream records by sink"))?;
    let rows: Vec<(String, i64)> = statement
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
        .and_then(Iterator::collect)
        .map_err(db("counting stream records by sink"))?;
    rows.into_iter()
        .map(|(sink, rows)| {
            Ok(SinkBacklog {
                rows: u64::try_from(rows).map_err(|_| {
                    corrupt("stream record count", format!("negative count {rows}"))
                })?,
                sink,
            })
        })
        .collect()
}

#[async_trait]
impl LakeStore for SqliteStore {
    async fn lake_cursor(&self, source: &LakeSource) -> StoreResult<LakeCursor> {
        let source = source.clone();
        self.run(move |connection| read_cursor(connection, &source))
            .await
    }

    async fn plan_lake_batch(
        &self,
        source: &LakeSource,
        max_rows: u32,
    ) -> StoreResult<Option<PlannedBatch>> {
        let source = source.clone();
        self.run(move |connection| plan(connection, &source, max_rows))
            .await
    }

    async fn lake_rows(
        &self,
        source: &LakeSource,
        after_id: u64,
        through_id: u64,
    ) -> StoreResult<LakeRows> {
        let source = source.clone();
        self.run(move |connection| {
            let after = u64_to_db("lake cursor", after_id)?;
            let through = u64_to_db("lake batch end", through_id)?;
            match &source {
                LakeSource::Records { sink } => {
                    read_records(connection, sink, after, through).map(LakeRows::Records)
                }
                LakeSource::Metrics => {
                    read_metrics(connection, after, through).map(LakeRows::Metrics)
                }
            }
        })
        .await
    }

    async fn commit_lake_batch(&self, batch: LakeCommit) -> StoreResult<bool> {
        self.run(move |connection| commit_batch(connection, &batch))
            .await
    }

    async fn lake_pending(&self, source: &LakeSource) -> StoreResult<u64> {
        let source = source.clone();
        self.run(move |connection| pending(connection, &source))
            .await
    }

    async fn lake_record_sinks(&self) -> StoreResult<Vec<SinkBacklog>> {
        self.run(|connection| record_sinks(connection)).await
    }
}
