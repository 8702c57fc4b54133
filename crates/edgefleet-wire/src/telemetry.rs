//! Telemetry on the wire: what agents upload from their outbox (metric sets and records of
//! named streams), what the server answers, and metric queries.
//!
//! **Upload** (`POST /v1/agent/telemetry`, node certificate): an `UploadBatch`, JSON,
//! gzip-compressed (`Content-Encoding: gzip`). Every record carries its stream's sequence
//! number, assigned by the node's outbox when the record was accepted; sequence numbers of a
//! stream only grow, and gaps are records the outbox dropped (counted in `dropped`). The
//! server stores a record only if its sequence number is above the highest it has stored
//! for that (node, outbox, stream), so a batch sent twice (a lost acknowledgement, a crash
//! before the node recorded the acknowledgement) has the effect of one. The answer,
//! `UploadAck`, says through which sequence number each stream is stored; the node may
//! then forget those records.
//!
//! An outbox has an id, made when it is created: a node whose outbox was wiped starts again
//! at sequence 1 with a new id, and the server does not mistake its records for repeats.

use serde::{Deserialize, Serialize};

use crate::{Labels, Timestamp};

/// The stream host and workload metrics travel in.
pub const METRICS_STREAM: &str = "metrics";

/// What a `MetricSet` record's `data` holds: `{"json": <MetricSet>}`.
///
/// One collection: every sample taken at `time`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricSet {
    #[serde(with = "time::serde::rfc3339")]
    pub time: Timestamp,
    pub samples: Vec<MetricSample>,
}

/// One value of one metric. Names are dotted, lowercase (`cpu.used_percent`,
/// `disk.used_percent`, `workload.memory_bytes`); labels tell instances apart
/// (`mount=/`, `interface=eth0`, `workload=web`, `sensor=cpu0`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricSample {
    pub name: String,
    #[serde(default, skip_serializing_if = "Labels::is_empty")]
    pub labels: Labels,
    pub value: f64,
}

/// A record's content.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RecordData {
    /// A JSON value (a `MetricSet` on the `metrics` stream).
    Json(serde_json::Value),
    /// Opaque bytes, base64 (standard alphabet, padded).
    Bytes(String),
}

/// One record of a stream, as the outbox accepted it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UploadRecord {
    pub seq: u64,
    /// When the outbox accepted it.
    #[serde(with = "time::serde::rfc3339")]
    pub time: Timestamp,
    pub data: RecordData,
}

/// Records of one stream, in sequence order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamChunk {
    pub stream: String,
    /// The sink the stream's deployment sends it to (`default` when it names none).
    #[serde(default = "default_sink")]
    pub sink: String,
    /// The deployment that declared the stream; empty for the agent's own streams.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub deployment: String,
    pub records: Vec<UploadRecord>,
}

/// The name of the sink used when a stream names none.
pub const DEFAULT_SINK: &str = "default";

fn default_sink() -> String {
    DEFAULT_SINK.to_owned()
}

/// Why an outbox dropped records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DropReason {
    /// The outbox was full; the oldest records of the lowest priority made room.
    Full,
    /// The record outlived its stream's time to live before it could be sent.
    Expired,
}

/// What one stream of an outbox dropped since the outbox was created: totals, so that
/// sending them again changes nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DropCount {
    pub stream: String,
    pub reason: DropReason,
    pub records: u64,
    pub bytes: u64,
}

/// `POST /v1/agent/telemetry`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UploadBatch {
    /// The outbox's id (see the module docs).
    pub outbox: String,
    #[serde(default)]
    pub streams: Vec<StreamChunk>,
    /// Totals of what the outbox dropped, per stream and reason.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dropped: Vec<DropCount>,
    /// Bytes and records waiting in the outbox when the batch was cut (this batch included).
    #[serde(default)]
    pub backlog_bytes: u64,
    #[serde(default)]
    pub backlog_records: u64,
}

/// Through which sequence number one stream is stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamAck {
    pub stream: String,
    pub stored_through: u64,
}

/// The answer to an `UploadBatch`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadAck {
    pub streams: Vec<StreamAck>,
}

/// Resolution of stored metric points.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Resolution {
    /// As collected.
    Raw,
    /// Five-minute rollups (average, minimum, maximum, count).
    Rollup,
}

/// `GET /v1/metrics?node=N&metric=M&since=S&until=U&group_by=K&selector=SEL`:
/// the query string of a metric query. `since` and `until` are RFC 3339 times or
/// durations back from now (`1h`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetricQuery {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
    /// A node label key: one aggregate series per value of it (`site`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_by: Option<String>,
    /// Only nodes matching this label selector.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
}

/// One point of a series: the value, and for rollups and aggregates the spread.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricPoint {
    #[serde(with = "time::serde::rfc3339")]
    pub time: Timestamp,
    /// The value (an average for rollups and aggregates).
    pub value: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    /// Samples behind the point (1 for raw points).
    #[serde(default = "one")]
    pub count: u64,
}

fn one() -> u64 {
    1
}

/// A series: one metric with one label set, of one node or one group of nodes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricSeries {
    pub metric: String,
    #[serde(default, skip_serializing_if = "Labels::is_empty")]
    pub labels: Labels,
    /// The node, for per-node series.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The group's label value, for `group_by` series (`(none)` for nodes without it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Nodes behind a group series.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<u64>,
    pub resolution: Resolution,
    pub points: Vec<MetricPoint>,
}

/// The answer to a metric query.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricsResponse {
    pub series: Vec<MetricSeries>,
}

/// Bytes a node moved over its channel, by category.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TrafficCategory {
    /// Desired state, heartbeats, status, facts, events, renewal, sessions.
    Control,
    /// Metrics.
    Telemetry,
    /// Application streams.
    Data,
    /// Artifact downloads.
    Artifacts,
}

/// Bytes up (node to server) and down (server to node) of one category, since `since`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrafficTotals {
    pub category: TrafficCategory,
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub requests: u64,
}

/// A node's traffic and outbox health, shown by `describe node`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeTelemetry {
    /// Totals since this time (the first traffic the server counted for the node).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    pub since: Option<Timestamp>,
    #[serde(default)]
    pub traffic: Vec<TrafficTotals>,
    #[serde(default)]
    pub dropped: Vec<DropCount>,
    #[serde(default)]
    pub backlog_bytes: u64,
    #[serde(default)]
    pub backlog_records: u64,
    /// When the node's last upload arrived.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    pub last_upload: Option<Timestamp>,
}
