//! Flight-recorder events in SQLite: one row per (node, seq), so a batch sent twice (the
//! agent did not get the first answer) is stored once.

use edgefleet_wire::Timestamp;
use edgefleet_wire::node::{NodeEvent, StoredNodeEvent};
use rusqlite::{Connection, params};

use super::{
    commit, db, from_json, time_from_db, time_to_db, to_json, u64_from_db, u64_to_db, write_tx,
};
use crate::store::{EVENTS_KEPT_PER_NODE, StoreResult};

pub(super) fn insert_node_events(
    connection: &mut Connection,
    node: &str,
    events: &[NodeEvent],
    received_at: Timestamp,
) -> StoreResult<u64> {
    let tx = write_tx(connection)?;
    {
        let mut insert = tx
            .prepare_cached(
                "INSERT OR IGNORE INTO node_events (node, seq, at, event, received_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )
            .map_err(db("storing node events"))?;
        for event in events {
            insert
                .execute(params![
                    node,
                    u64_to_db("event seq", event.seq)?,
                    time_to_db(event.at),
                    to_json("node event", event)?,
                    time_to_db(received_at)
                ])
                .map_err(db("storing node events"))?;
        }
    }
    let highest: Option<i64> = tx
        .query_row(
            "SELECT MAX(seq) FROM node_events WHERE node = ?1",
            [node],
            |row| row.get(0),
        )
        .map_err(db("storing node events"))?;
    let highest = match highest {
        Some(seq) => u64_from_db("event seq", seq)?,
        None => 0,
    };
    if highest > EVENTS_KEPT_PER_NODE {
        tx.execute(
            "DELETE FROM node_events WHERE node = ?1 AND seq <= ?2",
            params![
                node,
                u64_to_db("event seq", highest - EVENTS_KEPT_PER_NODE)?
            ],
        )
        .map_err(db("dropping old node events"))?;
    }
    commit(tx)?;
    // The agent advances its cursor to this: everything it sent is stored (or was
    // already), even when the batch was older than what is kept.
    let sent = events.iter().map(|e| e.seq).max().unwrap_or(0);
    Ok(highest.max(sent))
}

pub(super) fn list_node_events(
    connection: &mut Connection,
    node: &str,
    limit: u32,
) -> StoreResult<Vec<StoredNodeEvent>> {
    let mut statement = connection
        .prepare_cached(
            "SELECT event, received_at FROM node_events WHERE node = ?1 \
             ORDER BY seq DESC LIMIT ?2",
        )
        .map_err(db("listing node events"))?;
    let rows: Vec<(String, i64)> = statement
        .query_map(params![node, limit], |row| Ok((row.get(0)?, row.get(1)?)))
        .and_then(Iterator::collect)
        .map_err(db("listing node events"))?;
    rows.into_iter()
        .map(|(event, received_at)| {
            let what = format!("event of node {node}");
            Ok(StoredNodeEvent {
                node: node.to_owned(),
                event: from_json(&what, &event)?,
                received_at: time_from_db(&what, received_at)?,
            })
        })
        .collect()
}
