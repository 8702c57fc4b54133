//! The data lake exporter's cursors: what has been written to which sink, so that a retry
//! after a crash writes the same files again, never new ones.
//!
//! The exporter reads two kinds of source: the stream records that name one sink
//! (`records:<sink>`) and the metric samples (`metrics`). Each source has a cursor: every
//! row with an id at or below `last_id` is in the lake or held (see below). Exporting is
//! three steps:
//! 1. `plan_lake_batch` fixes the next batch, the rows with ids in (`last_id`, `through_id`],
//!    and persists it (with the labels its nodes had then) before anything is written;
//! 2. the exporter writes the batch's files (named after the row ids they hold);
//! 3. `commit_lake_batch` moves the cursor to `through_id` and deletes the exported stream
//!    records, in one transaction.
//!
//! A crash anywhere before step 3 leaves the plan in place: the next attempt reads the same
//! rows (ids only grow, and only step 3 deletes) with the same labels, so it writes the same
//! files under the same names. Files are overwritten, never duplicated.
//!
//! Rows the exporter may not write (their node does not satisfy the sink's residency) are
//! held: counted in `held_rows`, and for stream records kept in the database below the
//! cursor. Metric samples are never deleted here (the metric retention of the telemetry
//! store removes them, and only those at or below the `metrics` cursor).

use async_trait::async_trait;

use super::StoreResult;
pub use crate::lake::rows::{
    LakeCommit, LakeCursor, LakeMetricRow, LakeRecordRow, LakeRows, LakeSource, PlannedBatch,
    RecordPayload, SinkBacklog,
};

#[async_trait]
pub trait LakeStore: Send + Sync {
    /// The cursor of `source` (the default for a source never exported).
    async fn lake_cursor(&self, source: &LakeSource) -> StoreResult<LakeCursor>;

    /// The batch to export next: the one in flight if there is one, else the next rows after
    /// the cursor, at most `max_rows` of them (at least one), persisted as in flight before
    /// this returns. `None` when there is nothing after the cursor.
    async fn plan_lake_batch(
        &self,
        source: &LakeSource,
        max_rows: u32,
    ) -> StoreResult<Option<PlannedBatch>>;

    /// The source's rows with ids in (`after_id`, `through_id`], in id order.
    async fn lake_rows(
        &self,
        source: &LakeSource,
        after_id: u64,
        through_id: u64,
    ) -> StoreResult<LakeRows>;

    /// Completes the batch in flight, in one transaction: the cursor moves to its
    /// `through_id`, the totals grow, exported stream records are deleted. False (and
    /// nothing changes) when `commit.through_id` is not the batch in flight.
    async fn commit_lake_batch(&self, commit: LakeCommit) -> StoreResult<bool>;

    /// How many rows of `source` wait after its cursor.
    async fn lake_pending(&self, source: &LakeSource) -> StoreResult<u64>;

    /// Every sink name stored stream records carry, with how many records wait for it
    /// (exported records are deleted, so held ones are included). Sorted by sink.
    async fn lake_record_sinks(&self) -> StoreResult<Vec<SinkBacklog>>;
}
