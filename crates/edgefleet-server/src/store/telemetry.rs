//! Telemetry uploaded by agents: outbox stream cursors (deduplication), stored records,
//! metric samples and their rollups.

use async_trait::async_trait;
use edgefleet_wire::telemetry::{DropCount, UploadBatch};
use edgefleet_wire::{Labels, Timestamp};

use super::StoreResult;

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
    /// Raw samples of metric `name` of every node taken at or after `since`, oldest first.
    /// Alert rules read their windows through this.
    async fn metric_window(&self, _name: &str, _since: Timestamp) -> StoreResult<Vec<MetricRow>> {
        Ok(Vec::new())
    }

    /// The drop totals every node reported.
    async fn drop_totals(&self) -> StoreResult<Vec<NodeDropCount>> {
        Ok(Vec::new())
    }

    /// Stores an upload (see `edgefleet_wire::telemetry`).
    async fn ingest_upload(
        &self,
        _node: &str,
        _batch: UploadBatch,
        _now: Timestamp,
    ) -> StoreResult<()> {
        Ok(())
    }
}
