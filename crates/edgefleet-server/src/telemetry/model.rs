//! The data of telemetry storage and queries: decoded uploads as the store writes them,
//! the outcome of ingest and maintenance steps, bucketed reads, and the pure accumulator
//! that averages nodes into group series. Shared by the store (`crate::store`), the ingest
//! decoder, the query planner and the handlers.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use edgefleet_wire::telemetry::{DropCount, Resolution, StreamAck};
use edgefleet_wire::{Labels, Timestamp};

/// The width of a rollup bucket.
pub const ROLLUP_BUCKET: Duration = Duration::from_secs(300);

/// An upload, checked and decoded (see `crate::telemetry::ingest`): what the store writes.
///
/// Invariants the decoder guarantees and the store relies on: stream names are unique
/// within the batch, sequence numbers grow strictly within a stream and fit in an `i64`,
/// metric values are finite.
#[derive(Debug, Clone, PartialEq)]
pub struct IngestBatch {
    pub outbox: String,
    pub streams: Vec<IngestStream>,
    /// Totals per (stream, reason), since the outbox was created.
    pub dropped: Vec<DropCount>,
    pub backlog_bytes: u64,
    pub backlog_records: u64,
}

/// The records of one stream in a batch.
#[derive(Debug, Clone, PartialEq)]
pub struct IngestStream {
    pub stream: String,
    pub sink: String,
    pub deployment: String,
    pub records: Vec<IngestRecord>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct IngestRecord {
    pub seq: u64,
    /// When the node's outbox accepted the record.
    pub time: Timestamp,
    pub payload: IngestPayload,
}

#[derive(Debug, Clone, PartialEq)]
pub enum IngestPayload {
    /// A metric set: stored as one `metric_samples` row per sample.
    Metrics(IngestMetricSet),
    /// Application data as JSON text.
    Json(String),
    /// Application data as raw bytes.
    Bytes(Vec<u8>),
}

/// A metric set, its labels already in their stored form.
#[derive(Debug, Clone, PartialEq)]
pub struct IngestMetricSet {
    pub time: Timestamp,
    pub samples: Vec<IngestSample>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct IngestSample {
    pub name: String,
    /// Canonical JSON of the labels (keys sorted, `{}` when none): equal label sets are
    /// equal strings, so series can be grouped by this text.
    pub labels: String,
    pub value: f64,
}

/// What `ingest_upload` did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IngestOutcome {
    /// Through which sequence number each stream of the batch is stored, in batch order.
    pub acks: Vec<StreamAck>,
    /// Metric sets stored now (not before).
    pub metric_sets_stored: u64,
    /// Metric samples stored now.
    pub samples_stored: u64,
    /// Application records stored now.
    pub records_stored: u64,
    /// Records of any stream skipped because they were stored before.
    pub duplicates: u64,
}

/// What one step of `roll_up_metrics` did.
#[derive(Debug, Clone, PartialEq)]
pub struct RollupStep {
    /// Every sample with an id up to this one is in the rollups.
    pub rolled_up_through: u64,
    /// Raw samples summed into rollups by this step.
    pub samples_rolled_up: u64,
    /// Whether samples remain to be rolled up (call again).
    pub more: bool,
}

/// What one step of `expire_metrics` deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExpireStep {
    pub raw_deleted: u64,
    pub rollups_deleted: u64,
}

impl ExpireStep {
    /// Whether a step deleted a full chunk of either kind, so more may be left.
    pub fn more(&self, limit: u64) -> bool {
        self.raw_deleted >= limit || self.rollups_deleted >= limit
    }
}

/// Equal time buckets: bucket `i` is `[origin + i * width, origin + (i + 1) * width)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BucketGrid {
    pub origin: Timestamp,
    pub width: Duration,
}

impl BucketGrid {
    /// The start of bucket `index` (saturating far beyond any real time).
    pub fn start(&self, index: u64) -> Timestamp {
        let offset = self.width.as_nanos().saturating_mul(u128::from(index));
        let offset = time::Duration::nanoseconds(i64::try_from(offset).unwrap_or(i64::MAX));
        self.origin.saturating_add(offset)
    }
}

/// A metric read: which samples, over which range, from which table, in which buckets.
#[derive(Debug, Clone, PartialEq)]
pub struct BucketQuery {
    /// Only this node's samples.
    pub node: Option<String>,
    /// Only this metric. A query names at least one of `node` and `metric`.
    pub metric: Option<String>,
    pub since: Timestamp,
    pub until: Timestamp,
    pub grid: BucketGrid,
    /// `Raw`: raw samples only. `Rollup`: rollups for the time they cover (before the
    /// watermark), raw samples after it; the grid's width is then a multiple of
    /// `ROLLUP_BUCKET` and its origin a bucket boundary.
    pub source: Resolution,
}

/// One bucket of one node's series.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeBucket {
    pub start: Timestamp,
    /// The time of the earliest sample (or rollup bucket) in it.
    pub first: Timestamp,
    pub count: u64,
    pub sum: f64,
    pub min: f64,
    pub max: f64,
}

/// One node's series (metric and labels), its buckets in time order.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeSeries {
    pub node: String,
    pub name: String,
    pub labels: Labels,
    pub buckets: Vec<NodeBucket>,
}

/// Series by node, sorted by node, metric and labels.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeSeriesAnswer {
    pub series: Vec<NodeSeries>,
    /// More series matched than the limit asked for; `series` holds the first ones.
    pub truncated: bool,
}

/// One bucket of a group series: the nodes' averages, averaged.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupBucket {
    pub start: Timestamp,
    /// The mean of the nodes' averages in this bucket.
    pub mean: f64,
    /// The lowest and highest node average.
    pub min: f64,
    pub max: f64,
    /// Samples behind the bucket, all nodes together.
    pub samples: u64,
    /// Nodes with samples in the bucket.
    pub nodes: u64,
}

/// One group's series (a value of the grouping label, a metric and its labels).
#[derive(Debug, Clone, PartialEq)]
pub struct GroupSeries {
    pub group: String,
    pub name: String,
    pub labels: Labels,
    /// Nodes with samples anywhere in the series.
    pub nodes: u64,
    pub buckets: Vec<GroupBucket>,
}

/// Sums per-node buckets into group series as rows arrive, holding only the answer.
///
/// Each row is one node's bucket (its sum and count); the node's average in the bucket is
/// one observation of the group's bucket. Pure, so the SQLite reader and tests share it.
#[derive(Debug, Default)]
pub struct GroupAccumulator {
    series: HashMap<(String, String, String), GroupState>,
}

#[derive(Debug, Default)]
struct GroupState {
    nodes: HashSet<String>,
    buckets: BTreeMap<u64, GroupBucketState>,
}

#[derive(Debug)]
struct GroupBucketState {
    sum_of_means: f64,
    min: f64,
    max: f64,
    samples: u64,
    nodes: u64,
}

impl GroupAccumulator {
    /// Adds one node's bucket `index` of (`name`, `labels` as canonical JSON) to `group`.
    /// Rows with no samples are ignored.
    #[allow(clippy::too_many_arguments)] // one row of the per-node aggregation, as it arrives
    pub fn add(
        &mut self,
        group: &str,
        node: &str,
        name: &str,
        labels: &str,
        index: u64,
        count: u64,
        sum: f64,
    ) {
        if count == 0 {
            return;
        }
        let mean = sum / count as f64;
        let key = (group.to_owned(), name.to_owned(), labels.to_owned());
        let state = self.series.entry(key).or_default();
        if !state.nodes.contains(node) {
            state.nodes.insert(node.to_owned());
        }
        state
            .buckets
            .entry(index)
            .and_modify(|bucket| {
                bucket.sum_of_means += mean;
                bucket.min = bucket.min.min(mean);
                bucket.max = bucket.max.max(mean);
                bucket.samples += count;
                bucket.nodes += 1;
            })
            .or_insert(GroupBucketState {
                sum_of_means: mean,
                min: mean,
                max: mean,
                samples: count,
                nodes: 1,
            });
    }

    /// The group series, sorted by group, metric and labels; `decode_labels` turns the
    /// canonical JSON back into labels.
    pub fn finish<E>(
        self,
        grid: &BucketGrid,
        decode_labels: impl Fn(&str) -> Result<Labels, E>,
    ) -> Result<Vec<GroupSeries>, E> {
        let mut series = self
            .series
            .into_iter()
            .map(|((group, name, labels), state)| {
                Ok(GroupSeries {
                    group,
                    name,
                    labels: decode_labels(&labels)?,
                    nodes: state.nodes.len() as u64,
                    buckets: state
                        .buckets
                        .into_iter()
                        .map(|(index, bucket)| GroupBucket {
                            start: grid.start(index),
                            mean: bucket.sum_of_means / bucket.nodes as f64,
                            min: bucket.min,
                            max: bucket.max,
                            samples: bucket.samples,
                            nodes: bucket.nodes,
                        })
                        .collect(),
                })
            })
            .collect::<Result<Vec<_>, E>>()?;
        series.sort_by(|a, b| (&a.group, &a.name, &a.labels).cmp(&(&b.group, &b.name, &b.labels)));
        Ok(series)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn labels(text: &str) -> Result<Labels, serde_json::Error> {
        serde_json::from_str(text)
    }

    #[test]
    fn groups_average_node_averages() {
        let grid = BucketGrid {
            origin: datetime!(2024-05-01 12:00 UTC),
            width: Duration::from_secs(60),
        };
        let mut groups = GroupAccumulator::default();
        // Node a: two samples averaging 10; node b: one sample of 40. The group's mean is
        // the mean of node means (25), not of samples (20).
        groups.add("site-1", "a", "cpu", "{}", 0, 2, 20.0);
        groups.add("site-1", "b", "cpu", "{}", 0, 1, 40.0);
        groups.add("site-1", "b", "cpu", "{}", 2, 1, 7.0);
        groups.add("site-2", "c", "cpu", "{}", 1, 1, 1.0);
        groups.add("site-2", "c", "cpu", r#"{"mount":"/"}"#, 1, 3, 3.0);
        groups.add("site-2", "d", "cpu", "{}", 1, 0, 0.0);
        let series = groups.finish(&grid, labels).unwrap();
        assert_eq!(series.len(), 3);
        let first = &series[0];
        assert_eq!((first.group.as_str(), first.nodes), ("site-1", 2));
        assert_eq!(first.buckets.len(), 2);
        assert_eq!(
            first.buckets[0],
            GroupBucket {
                start: grid.origin,
                mean: 25.0,
                min: 10.0,
                max: 40.0,
                samples: 3,
                nodes: 2,
            }
        );
        assert_eq!(first.buckets[1].start, datetime!(2024-05-01 12:02 UTC));
        assert_eq!((first.buckets[1].mean, first.buckets[1].nodes), (7.0, 1));
        assert_eq!(series[1].group, "site-2");
        assert!(series[1].labels.is_empty());
        assert_eq!(series[2].labels["mount"], "/");
        assert_eq!(series[2].buckets[0].mean, 1.0);
        assert_eq!(
            series[2].nodes, 1,
            "a node with an empty row is not counted"
        );
    }

    #[test]
    fn grid_starts() {
        let grid = BucketGrid {
            origin: datetime!(2024-05-01 12:00 UTC),
            width: Duration::from_secs(300),
        };
        assert_eq!(grid.start(0), grid.origin);
        assert_eq!(grid.start(3), datetime!(2024-05-01 12:15 UTC));
    }

    #[test]
    fn expire_steps_say_when_more_is_left() {
        let step = ExpireStep {
            raw_deleted: 10,
            rollups_deleted: 0,
        };
        assert!(step.more(10));
        assert!(!step.more(11));
    }
}
