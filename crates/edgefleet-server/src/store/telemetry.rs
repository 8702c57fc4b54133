//! Telemetry uploaded by agents: outbox stream cursors (deduplication), stored records,
//! metric samples and their five-minute rollups.
//!
//! **Exactly once.** Every (node, stream) has a cursor: the outbox id it belongs to and the
//! highest sequence number stored. `ingest_upload` stores, in one transaction, only the
//! records above the cursor and advances it, so a batch sent again has no effect. A batch
//! from another outbox id (the node's outbox was wiped) resets the stream's cursor first.
//!
//! **Rollups.** Raw samples are summed into five-minute buckets per (node, metric, labels)
//! (count, sum, min, max: sums merge, so a bucket can take its samples in several steps).
//! A cursor over sample ids says how far that went, with this invariant: every sample with
//! an id up to the cursor is counted in the rollups exactly once, no sample above it is.
//! `roll_up_metrics` moves the cursor forward in bounded chunks, each chunk in one
//! transaction together with the rollups it adds, so a crash or a second run never counts
//! a sample twice. Samples that arrive late (a node that was offline) simply have higher
//! ids and are rolled up like any other.
//!
//! **Retention.** Raw samples are deleted once they arrived more than the raw retention
//! ago (each rollup step notes which ids had arrived by when), are rolled up, and are
//! exported to the lake (`id <=` the lake's `metrics` cursor). Rollups of buckets older
//! than the rollup retention are deleted. Stream records are deleted by the lake
//! exporter, never here.
//!
//! The data types of uploads, steps and reads live in `crate::telemetry::model` (shared
//! with the decoder and the query planner) and are re-exported here.

use std::collections::{HashMap, HashSet};

use async_trait::async_trait;
use edgefleet_wire::telemetry::{DropCount, NodeTelemetry};
use edgefleet_wire::{Labels, Timestamp};

use super::StoreResult;
pub use crate::telemetry::model::{
    BucketQuery, ExpireStep, GroupSeries, IngestBatch, IngestOutcome, NodeSeriesAnswer, RollupStep,
};

/// One stored metric sample.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricRow {
    pub node: String,
    pub name: String,
    pub labels: Labels,
    pub time: Timestamp,
    pub value: f64,
}

/// What one node's outbox reported it dropped (totals).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeDropCount {
    pub node: String,
    pub count: DropCount,
    /// When the server last saw the total change.
    pub changed_at: Timestamp,
}

#[async_trait]
pub trait TelemetryStore: Send + Sync {
    /// Raw samples of metric `name` of every node taken at or after `since`, oldest first
    /// (nodes of the node table, enrolled or revoked; uploads come only from them).
    /// Alert rules read their windows through this.
    async fn metric_window(&self, name: &str, since: Timestamp) -> StoreResult<Vec<MetricRow>>;

    /// The drop totals every node reported.
    async fn drop_totals(&self) -> StoreResult<Vec<NodeDropCount>>;

    /// Stores an upload of `node` exactly once (see the module docs), in one transaction:
    /// records above each stream's cursor, the cursors, drop totals (the highest reported
    /// for the outbox), the backlog and `now` as the node's last upload.
    async fn ingest_upload(
        &self,
        node: &str,
        batch: IngestBatch,
        now: Timestamp,
    ) -> StoreResult<IngestOutcome>;

    /// A node's drop totals, backlog and last upload (`traffic` and `since` are left empty:
    /// traffic accounting fills them).
    async fn node_telemetry(&self, node: &str) -> StoreResult<NodeTelemetry>;

    /// Rolls up the next samples not rolled up yet, at most `max_samples` of them, and
    /// notes that every sample stored so far arrived by `now` (for raw retention).
    /// Idempotent: the cursor moves in the same transaction as the rollups.
    async fn roll_up_metrics(&self, now: Timestamp, max_samples: u64) -> StoreResult<RollupStep>;

    /// Deletes at most `limit` raw samples that arrived before `raw_before` (only rolled-up
    /// ones the lake has exported, oldest first) and at most `limit` rollups of buckets
    /// before `rollups_before`.
    async fn expire_metrics(
        &self,
        raw_before: Timestamp,
        rollups_before: Timestamp,
        limit: u64,
    ) -> StoreResult<ExpireStep>;

    /// Per-node series of a query, at most `max_series` of them; only nodes in `nodes`
    /// when given.
    async fn metric_node_series(
        &self,
        query: BucketQuery,
        nodes: Option<HashSet<String>>,
        max_series: usize,
    ) -> StoreResult<NodeSeriesAnswer>;

    /// Series aggregated over the nodes of each group: `groups` maps each node taken into
    /// account to its group; samples of other nodes are ignored.
    async fn metric_group_series(
        &self,
        query: BucketQuery,
        groups: HashMap<String, String>,
    ) -> StoreResult<Vec<GroupSeries>>;
}
