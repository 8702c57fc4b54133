//! `TrafficStore` in SQLite: one row per (node, category) holding running totals, upserted
//! in one transaction per batch; and the fleet counts read with plain column queries (no
//! JSON decoding), so a scrape of a large fleet stays cheap.

use std::collections::HashMap;

use async_trait::async_trait;
use edgefleet_wire::Timestamp;
use edgefleet_wire::telemetry::{TrafficCategory, TrafficTotals};
use rusqlite::{Connection, params};

use super::{SqliteStore, commit, corrupt, db, time_from_db, time_to_db, u64_from_db, write_tx};
use crate::store::{
    FleetCounts, NodeLiveness, StoreResult, TRAFFIC_CATEGORIES, TrafficDelta, TrafficStore,
};

/// Schema migration 7: the tables of `TrafficStore`.
pub(super) const MIGRATION: &str = r#"
CREATE TABLE node_traffic (
    node TEXT NOT NULL,
    category TEXT NOT NULL,
    bytes_up INTEGER NOT NULL DEFAULT 0,
    bytes_down INTEGER NOT NULL DEFAULT 0,
    requests INTEGER NOT NULL DEFAULT 0,
    since INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (node, category)
) STRICT, WITHOUT ROWID;
"#;

fn category_to_db(category: TrafficCategory) -> &'static str {
    match category {
        TrafficCategory::Control => "control",
        TrafficCategory::Telemetry => "telemetry",
        TrafficCategory::Data => "data",
        TrafficCategory::Artifacts => "artifacts",
    }
}

fn category_from_db(node: &str, text: &str) -> StoreResult<TrafficCategory> {
    TRAFFIC_CATEGORIES
        .into_iter()
        .find(|category| category_to_db(*category) == text)
        .ok_or_else(|| {
            corrupt(
                format!("traffic category of node {node}"),
                format!("unknown category {text:?}"),
            )
        })
}

fn add_traffic(
    connection: &mut Connection,
    deltas: &[TrafficDelta],
    at: Timestamp,
) -> StoreResult<()> {
    let tx = write_tx(connection)?;
    {
        // Totals saturate rather than fail: a counter stuck at 2^63 bytes is still
        // truthful enough, a failing flush would lose every other node's counts.
        let mut upsert = tx
            .prepare_cached(
                "INSERT INTO node_traffic \
                     (node, category, bytes_up, bytes_down, requests, since, updated_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6) \
                 ON CONFLICT (node, category) DO UPDATE SET \
                     bytes_up = MIN(bytes_up + excluded.bytes_up, 9223372036854775807), \
                     bytes_down = MIN(bytes_down + excluded.bytes_down, 9223372036854775807), \
                     requests = MIN(requests + excluded.requests, 9223372036854775807), \
                     updated_at = excluded.updated_at",
            )
            .map_err(db("storing node traffic"))?;
        for delta in deltas {
            upsert
                .execute(params![
                    delta.node,
                    category_to_db(delta.category),
                    clamp_to_db(delta.bytes_up),
                    clamp_to_db(delta.bytes_down),
                    clamp_to_db(delta.requests),
                    time_to_db(at),
                ])
                .map_err(db("storing node traffic"))?;
        }
    }
    commit(tx)
}

/// Deltas are at most a few seconds of traffic; one beyond 2^63 can only be a bug
/// upstream, and is stored as the largest value rather than failing the batch.
fn clamp_to_db(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

type TrafficRow = (String, i64, i64, i64, i64);

fn node_traffic(
    connection: &mut Connection,
    node: &str,
) -> StoreResult<(Option<Timestamp>, Vec<TrafficTotals>)> {
    let mut statement = connection
        .prepare_cached(
            "SELECT category, bytes_up, bytes_down, requests, since \
             FROM node_traffic WHERE node = ?1",
        )
        .map_err(db("reading node traffic"))?;
    let rows: Vec<TrafficRow> = statement
        .query_map([node], |row| {
            Ok((
                row.get(0)?,
                row.get(1)?,
                row.get(2)?,
                row.get(3)?,
                row.get(4)?,
            ))
        })
        .and_then(Iterator::collect)
        .map_err(db("reading node traffic"))?;
    let mut totals: Vec<TrafficTotals> = TRAFFIC_CATEGORIES
        .into_iter()
        .map(|category| TrafficTotals {
            category,
            bytes_up: 0,
            bytes_down: 0,
            requests: 0,
        })
        .collect();
    let mut since: Option<Timestamp> = None;
    let what = |column: &str| format!("traffic {column} of node {node}");
    for (category, bytes_up, bytes_down, requests, row_since) in rows {
        let category = category_from_db(node, &category)?;
        let row_since = time_from_db(&what("since"), row_since)?;
        since = Some(since.map_or(row_since, |s| s.min(row_since)));
        if let Some(entry) = totals.iter_mut().find(|t| t.category == category) {
            entry.bytes_up = u64_from_db(&what("bytes_up"), bytes_up)?;
            entry.bytes_down = u64_from_db(&what("bytes_down"), bytes_down)?;
            entry.requests = u64_from_db(&what("requests"), requests)?;
        }
    }
    Ok((since, totals))
}

/// A node's name, stored `last_seen` and whether it is revoked.
type LivenessRow = (String, Option<i64>, bool);

/// Nodes and rollout phases as stored, without buffered presence; and the number of
/// deployments.
fn stored_counts(connection: &mut Connection) -> StoreResult<(Vec<LivenessRow>, Vec<String>, u64)> {
    let mut nodes = connection
        .prepare_cached("SELECT name, last_seen, revoked FROM nodes")
        .map_err(db("counting nodes"))?;
    let nodes: Vec<LivenessRow> = nodes
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
        .and_then(Iterator::collect)
        .map_err(db("counting nodes"))?;
    let mut phases = connection
        .prepare_cached(
            "SELECT r.phase FROM rollouts r \
             WHERE r.number = (SELECT MAX(number) FROM rollouts WHERE deployment = r.deployment)",
        )
        .map_err(db("counting rollouts"))?;
    let phases: Vec<String> = phases
        .query_map([], |row| row.get(0))
        .and_then(Iterator::collect)
        .map_err(db("counting rollouts"))?;
    let deployments: i64 = connection
        .query_row("SELECT COUNT(*) FROM deployments", [], |row| row.get(0))
        .map_err(db("counting deployments"))?;
    Ok((nodes, phases, u64_from_db("deployment count", deployments)?))
}

#[async_trait]
impl TrafficStore for SqliteStore {
    async fn add_traffic(&self, deltas: Vec<TrafficDelta>, at: Timestamp) -> StoreResult<()> {
        if deltas.is_empty() {
            return Ok(());
        }
        self.run(move |c| add_traffic(c, &deltas, at)).await
    }

    async fn node_traffic(
        &self,
        node: &str,
    ) -> StoreResult<(Option<Timestamp>, Vec<TrafficTotals>)> {
        let node = node.to_owned();
        self.run(move |c| node_traffic(c, &node)).await
    }

    async fn fleet_counts(&self) -> StoreResult<FleetCounts> {
        // Presence is read before the table: what a flush writes meanwhile is then in
        // one or the other (or both), never in neither.
        let pending: HashMap<String, Timestamp> = self
            .pending_presence()
            .iter()
            .map(|(name, presence)| (name.clone(), presence.last_seen))
            .collect();
        let (rows, rollout_phases, deployments) = self.run(stored_counts).await?;
        let mut nodes = Vec::with_capacity(rows.len());
        for (name, last_seen, revoked) in rows {
            let stored = last_seen
                .map(|t| time_from_db(&format!("last_seen of node {name}"), t))
                .transpose()?;
            let last_seen = match (stored, pending.get(&name)) {
                (Some(stored), Some(buffered)) => Some(stored.max(*buffered)),
                (stored, buffered) => stored.or(buffered.copied()),
            };
            nodes.push(NodeLiveness { last_seen, revoked });
        }
        Ok(FleetCounts {
            nodes,
            rollout_phases,
            deployments,
            presence_pending: u64::try_from(pending.len()).unwrap_or(u64::MAX),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_unix_timestamp(1_700_000_000 + seconds).unwrap()
    }

    fn delta(node: &str, category: TrafficCategory, up: u64, down: u64) -> TrafficDelta {
        TrafficDelta {
            node: node.into(),
            category,
            bytes_up: up,
            bytes_down: down,
            requests: 1,
        }
    }

    #[tokio::test]
    async fn totals_accumulate_per_node_and_category() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("db")).await.unwrap();
        let (since, totals) = store.node_traffic("n1").await.unwrap();
        assert_eq!(since, None);
        assert_eq!(totals.len(), 4);
        assert!(totals.iter().all(|t| t.bytes_up == 0 && t.requests == 0));

        store
            .add_traffic(
                vec![
                    delta("n1", TrafficCategory::Control, 10, 20),
                    delta("n1", TrafficCategory::Artifacts, 1, 1000),
                    delta("n2", TrafficCategory::Control, 5, 5),
                ],
                at(0),
            )
            .await
            .unwrap();
        store
            .add_traffic(
                vec![
                    delta("n1", TrafficCategory::Control, 1, 2),
                    delta("n1", TrafficCategory::Data, 7, 0),
                ],
                at(10),
            )
            .await
            .unwrap();
        let (since, totals) = store.node_traffic("n1").await.unwrap();
        assert_eq!(since, Some(at(0)));
        let by = |category| totals.iter().find(|t| t.category == category).unwrap();
        assert_eq!(
            (
                by(TrafficCategory::Control).bytes_up,
                by(TrafficCategory::Control).bytes_down,
                by(TrafficCategory::Control).requests
            ),
            (11, 22, 2)
        );
        assert_eq!(by(TrafficCategory::Artifacts).bytes_down, 1000);
        assert_eq!(by(TrafficCategory::Data).bytes_up, 7);
        assert_eq!(by(TrafficCategory::Telemetry).requests, 0);
        assert_eq!(
            totals.iter().map(|t| t.category).collect::<Vec<_>>(),
            TRAFFIC_CATEGORIES
        );
        let (_, other) = store.node_traffic("n2").await.unwrap();
        assert_eq!(other[0].bytes_up, 5);
    }

    #[tokio::test]
    async fn huge_deltas_saturate_instead_of_failing() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("db")).await.unwrap();
        let huge = delta("n1", TrafficCategory::Data, u64::MAX, i64::MAX as u64);
        store.add_traffic(vec![huge.clone()], at(0)).await.unwrap();
        store.add_traffic(vec![huge], at(1)).await.unwrap();
        let (_, totals) = store.node_traffic("n1").await.unwrap();
        let data = totals
            .iter()
            .find(|t| t.category == TrafficCategory::Data)
            .unwrap();
        assert_eq!(data.bytes_up, i64::MAX as u64);
        assert_eq!(data.bytes_down, i64::MAX as u64);
    }

    /// The scrape of a large fleet reads 10,000 nodes here: it must stay far from
    /// seconds (measured: see the printed time with `--nocapture`).
    #[tokio::test]
    async fn fleet_counts_of_ten_thousand_nodes_are_cheap() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("db")).await.unwrap();
        store
            .run(|c| {
                let tx = write_tx(c)?;
                {
                    let mut insert = tx
                        .prepare(
                            "INSERT INTO nodes (name, labels, facts, enrolled_at, last_seen, \
                             revoked, cert_serial, cert_not_after, reported, desired_workloads) \
                             VALUES (?1, '{\"site\":\"a\"}', ?2, 0, ?3, ?4, '01', 0, ?2, '[]')",
                        )
                        .unwrap();
                    // Facts and reports of realistic size, which this query must not decode.
                    let blob = format!("{{\"pad\":\"{}\"}}", "x".repeat(2000));
                    for i in 0..10_000i64 {
                        let last_seen = (i % 3 != 0).then(|| time_to_db(at(i % 100)));
                        insert
                            .execute(params![
                                format!("node-{i:05}"),
                                blob,
                                last_seen,
                                i % 50 == 0
                            ])
                            .unwrap();
                    }
                }
                commit(tx)
            })
            .await
            .unwrap();
        let started = std::time::Instant::now();
        let counts = store.fleet_counts().await.unwrap();
        let elapsed = started.elapsed();
        eprintln!("fleet_counts of 10000 nodes: {elapsed:?}");
        assert_eq!(counts.nodes.len(), 10_000);
        assert_eq!(counts.nodes.iter().filter(|n| n.revoked).count(), 200);
        assert_eq!(
            counts
                .nodes
                .iter()
                .filter(|n| n.last_seen.is_none())
                .count(),
            3334
        );
        assert!(elapsed < std::time::Duration::from_secs(1), "{elapsed:?}");
    }

    #[tokio::test]
    async fn fleet_counts_see_buffered_presence() {
        use crate::store::{Presence, Store};
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("db")).await.unwrap();
        store
            .run(|c| {
                c.execute(
                    "INSERT INTO nodes (name, labels, facts, enrolled_at, last_seen, cert_serial, \
                     cert_not_after) VALUES ('a', '{}', '{}', 0, ?1, '01', 0), \
                     ('b', '{}', '{}', 0, NULL, '01', 0)",
                    [time_to_db(at(50))],
                )
                .map_err(db("test"))?;
                Ok(())
            })
            .await
            .unwrap();
        for (node, seen) in [("a", 40), ("b", 60)] {
            store
                .record_presence(Presence {
                    node: node.into(),
                    last_seen: at(seen),
                    applied_generation: None,
                    reported: None,
                })
                .await
                .unwrap();
        }
        let counts = store.fleet_counts().await.unwrap();
        let mut seen: Vec<_> = counts.nodes.iter().map(|n| n.last_seen).collect();
        seen.sort();
        // The newer of stored and buffered wins.
        assert_eq!(seen, vec![Some(at(50)), Some(at(60))]);
        assert_eq!(counts.presence_pending, 2);
        store.flush_presence().await.unwrap();
        assert_eq!(store.fleet_counts().await.unwrap().presence_pending, 0);
    }

    #[tokio::test]
    async fn fleet_counts_of_an_empty_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("db")).await.unwrap();
        let counts = store.fleet_counts().await.unwrap();
        assert_eq!(counts, FleetCounts::default());
    }
}
