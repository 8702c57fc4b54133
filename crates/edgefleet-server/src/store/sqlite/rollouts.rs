//! Rollouts and maintenance windows in SQLite. A rollout is stored whole, as the JSON of
//! the core's `Rollout`, keyed by deployment and number; the phase has its own column so
//! that the newest rollout of each deployment is one indexed query.

use edgefleet_core::rollout::Rollout;
use edgefleet_wire::Timestamp;
use edgefleet_wire::api::ApplyAction;
use rusqlite::{Connection, params};

use super::{
    HashedTable, apply_hashed, commit, db, from_json, insert_audit, time_from_db, time_to_db,
    to_json, write_tx,
};
use crate::store::{NewAudit, StoreResult, WindowRecord};

pub(super) fn save_rollouts(connection: &mut Connection, rollouts: &[Rollout]) -> StoreResult<()> {
    let tx = write_tx(connection)?;
    {
        let mut statement = tx
            .prepare_cached(
                "INSERT INTO rollouts (deployment, number, phase, state, started_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5) \
                 ON CONFLICT (deployment, number) DO UPDATE SET phase = ?3, state = ?4",
            )
            .map_err(db("saving a rollout"))?;
        for rollout in rollouts {
            let state = to_json("rollout", rollout)?;
            statement
                .execute(params![
                    rollout.deployment,
                    rollout.number,
                    rollout.phase.as_str(),
                    state,
                    time_to_db(rollout.started_at)
                ])
                .map_err(db("saving a rollout"))?;
        }
    }
    commit(tx)
}

fn decode_rollouts(rows: Vec<(String, i64, String)>) -> StoreResult<Vec<Rollout>> {
    rows.into_iter()
        .map(|(deployment, number, state)| {
            from_json(
                &format!("rollout {number} of deployment {deployment}"),
                &state,
            )
        })
        .collect()
}

fn query_rollouts(
    connection: &Connection,
    sql: &str,
    params: &[&dyn rusqlite::ToSql],
) -> StoreResult<Vec<Rollout>> {
    let mut statement = connection
        .prepare_cached(sql)
        .map_err(db("listing rollouts"))?;
    let rows: Vec<(String, i64, String)> = statement
        .query_map(params, |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
        .and_then(Iterator::collect)
        .map_err(db("listing rollouts"))?;
    decode_rollouts(rows)
}

pub(super) fn latest_rollouts(connection: &mut Connection) -> StoreResult<Vec<Rollout>> {
    query_rollouts(
        connection,
        "SELECT r.deployment, r.number, r.state FROM rollouts r \
         WHERE r.number = (SELECT MAX(number) FROM rollouts WHERE deployment = r.deployment) \
         ORDER BY r.deployment",
        &[],
    )
}

pub(super) fn list_rollouts(
    connection: &mut Connection,
    deployment: &str,
    limit: u32,
) -> StoreResult<Vec<Rollout>> {
    query_rollouts(
        connection,
        "SELECT deployment, number, state FROM rollouts WHERE deployment = ?1 \
         ORDER BY number DESC LIMIT ?2",
        &[&deployment, &limit],
    )
}

pub(super) fn apply_windows(
    connection: &mut Connection,
    items: &[WindowRecord],
    actor: &str,
    at: Timestamp,
) -> StoreResult<Vec<(String, ApplyAction)>> {
    const WINDOWS: HashedTable = HashedTable {
        select_hash: "SELECT hash FROM windows WHERE name = ?1",
        upsert: "INSERT INTO windows (name, hash, manifest, updated_at) VALUES (?1, ?2, ?3, ?4) \
                 ON CONFLICT (name) DO UPDATE SET hash = ?2, manifest = ?3, updated_at = ?4",
        reading: "reading a maintenance window",
        saving: "saving a maintenance window",
        noun: "maintenance window",
        object: "window",
    };
    let tx = write_tx(connection)?;
    let mut results = Vec::with_capacity(items.len());
    for item in items {
        let name = &item.manifest.metadata.name;
        let action = apply_hashed(&tx, &WINDOWS, (name, &item.hash, &item.manifest), actor, at)?;
        results.push((name.clone(), action));
    }
    commit(tx)?;
    Ok(results)
}

pub(super) fn list_windows(connection: &Connection) -> StoreResult<Vec<WindowRecord>> {
    let mut statement = connection
        .prepare_cached("SELECT name, hash, manifest, updated_at FROM windows ORDER BY name")
        .map_err(db("listing maintenance windows"))?;
    let rows: Vec<(String, String, String, i64)> = statement
        .query_map([], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
        })
        .and_then(Iterator::collect)
        .map_err(db("listing maintenance windows"))?;
    rows.into_iter()
        .map(|(name, hash, manifest, updated_at)| {
            let what = format!("maintenance window {name}");
            Ok(WindowRecord {
                manifest: from_json(&what, &manifest)?,
                hash,
                updated_at: time_from_db(&what, updated_at)?,
            })
        })
        .collect()
}

pub(super) fn delete_window(
    connection: &mut Connection,
    name: &str,
    audit: &NewAudit,
) -> StoreResult<bool> {
    let tx = write_tx(connection)?;
    let deleted = tx
        .execute("DELETE FROM windows WHERE name = ?1", [name])
        .map_err(db("deleting a maintenance window"))?;
    if deleted == 0 {
        return Ok(false);
    }
    insert_audit(&tx, audit)?;
    commit(tx)?;
    Ok(true)
}
