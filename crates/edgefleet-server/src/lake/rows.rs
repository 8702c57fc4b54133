//! The rows and cursors the lake exporter and its store (`crate::store::LakeStore`)
//! exchange. They live here, beside the exporter, so that both sides can name them; the
//! store re-exports them.

use std::collections::BTreeMap;

use edgefleet_wire::{Labels, Timestamp};

/// Where the exporter reads rows from.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LakeSource {
    /// The stream records that name this sink.
    Records { sink: String },
    /// Every metric sample.
    Metrics,
}

impl LakeSource {
    pub fn records(sink: &str) -> Self {
        Self::Records {
            sink: sink.to_owned(),
        }
    }

    /// The source's key in the cursor table: `records:<sink>` or `metrics`.
    pub fn key(&self) -> String {
        match self {
            Self::Records { sink } => format!("records:{sink}"),
            Self::Metrics => "metrics".to_owned(),
        }
    }
}

impl std::fmt::Display for LakeSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.key())
    }
}

/// A batch whose rows are being written: the source's rows with ids in
/// (`LakeCursor::last_id`, `through_id`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedBatch {
    /// The cursor the batch starts after.
    pub after_id: u64,
    pub through_id: u64,
    /// The labels of the batch's nodes when it was planned; a node unknown then is absent.
    /// A retry uses these, so label changes in between do not move rows to other files.
    pub node_labels: BTreeMap<String, Labels>,
}

/// The exporter's progress on one source (all zero for a source never exported).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LakeCursor {
    /// Every row of the source with an id at or below this is in the lake or held.
    pub last_id: u64,
    /// The batch planned and not committed yet.
    pub in_flight: Option<PlannedBatch>,
    /// Totals over every committed batch.
    pub exported_rows: u64,
    pub exported_files: u64,
    pub held_rows: u64,
}

/// What a stream record holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordPayload {
    /// JSON text.
    Json(String),
    /// Raw bytes.
    Bytes(Vec<u8>),
}

/// One stored stream record, as the exporter reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LakeRecordRow {
    pub id: u64,
    pub node: String,
    pub stream: String,
    pub deployment: String,
    pub seq: u64,
    pub time: Timestamp,
    pub received_at: Timestamp,
    pub payload: RecordPayload,
}

/// One stored metric sample, as the exporter reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct LakeMetricRow {
    pub id: u64,
    pub node: String,
    pub name: String,
    /// The labels as stored: a JSON object.
    pub labels: String,
    pub time: Timestamp,
    /// NaN for a sample stored without a value (SQLite keeps NaN as NULL).
    pub value: f64,
}

/// The rows of one batch, in id order.
#[derive(Debug, Clone, PartialEq)]
pub enum LakeRows {
    Records(Vec<LakeRecordRow>),
    Metrics(Vec<LakeMetricRow>),
}

impl LakeRows {
    pub fn len(&self) -> usize {
        match self {
            Self::Records(rows) => rows.len(),
            Self::Metrics(rows) => rows.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The end of a batch: its files are written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LakeCommit {
    pub source: LakeSource,
    /// The `through_id` of the batch in flight; the commit is refused for any other.
    pub through_id: u64,
    /// Rows written to the lake. For stream records these rows are deleted in the same
    /// transaction (ids outside the batch are ignored).
    pub exported_ids: Vec<u64>,
    pub files: u64,
    /// Rows of the batch not written (residency).
    pub held_rows: u64,
}

/// Stream records waiting in the database for one sink name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkBacklog {
    pub sink: String,
    pub rows: u64,
}
