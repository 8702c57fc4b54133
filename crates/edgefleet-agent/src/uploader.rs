//! Sends the outbox's records to the server.
//!
//! `POST /v1/agent/telemetry` with an `UploadBatch` (JSON, gzip-compressed): per stream,
//! the oldest waiting records in `seq` order, highest priority stream first, at most
//! `batch_max_bytes` of payload per batch (a single larger record goes alone). JSON
//! records travel as JSON, others as base64. The server answers `UploadAck` (through which
//! `seq` each stream is stored) and the outbox forgets those records. A failed batch is
//! retried with the reconnect backoff: the same records again, so every stream arrives in
//! order; the server stores each `(outbox, stream, seq)` once.
//!
//! **When.** After an append the task waits up to `flush_interval` for more records, so an
//! idle node sends one request per interval, not one per record; once a batch's worth
//! waits (or the interval is up, or records are left from before a restart) batches go
//! back to back until nothing waits. Before each batch it drops the records past their
//! time to live (`Outbox::expire`).
//!
//! An old server without the route (404) is told once at WARN and asked again only every
//! `OLD_SERVER_RETRY`; the records wait on the node meanwhile (bounded by the outbox).

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use base64::Engine;
use edgefleet_wire::telemetry::{RecordData, StreamChunk, UploadAck, UploadBatch, UploadRecord};
use flate2::Compression;
use flate2::write::GzEncoder;
use reqwest::StatusCode;
use reqwest::header::{CONTENT_ENCODING, CONTENT_TYPE};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::channel::{CallError, REQUEST_TIMEOUT, ServerChannel, send_raw};
use crate::outbox::{Outbox, OutboxError, Pending, RecordKind};
use crate::shutdown::Shutdown;

/// The route batches go to.
pub const ROUTE: &str = "/v1/agent/telemetry";
/// The default payload bytes of one batch.
pub const BATCH_MAX_BYTES: usize = 256 << 10;
/// The most records of one stream in one batch.
pub const BATCH_MAX_RECORDS: usize = 10_000;
/// The default wait for more records after an append.
pub const DEFAULT_FLUSH_INTERVAL: Duration = Duration::from_secs(60);
/// How often a server that does not know the route is asked again.
pub const OLD_SERVER_RETRY: Duration = Duration::from_secs(5 * 60);
/// How long to wait when records wait but none can be read yet (not yet flushed).
const UNREADABLE_RETRY: Duration = Duration::from_secs(1);

/// The sink and deployment of a stream: `(sink, deployment)`.
pub type StreamMeta = Arc<dyn Fn(&str) -> (String, String) + Send + Sync>;

/// How the uploader behaves.
#[derive(Clone)]
pub struct UploaderConfig {
    /// How long to wait after an append for more records (zero: send at once).
    pub flush_interval: Duration,
    /// Payload bytes per batch (a single larger record goes alone).
    pub batch_max_bytes: usize,
    /// The sink and deployment of a stream (the lead's desired state knows them).
    pub stream_meta: StreamMeta,
    /// What the uploader sent and received, for metrics.
    pub counters: Arc<UploadCounters>,
}

impl std::fmt::Debug for UploaderConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UploaderConfig")
            .field("flush_interval", &self.flush_interval)
            .field("batch_max_bytes", &self.batch_max_bytes)
            .finish_non_exhaustive()
    }
}

impl Default for UploaderConfig {
    fn default() -> Self {
        Self {
            flush_interval: DEFAULT_FLUSH_INTERVAL,
            batch_max_bytes: BATCH_MAX_BYTES,
            stream_meta: Arc::new(|_| {
                (
                    edgefleet_wire::telemetry::DEFAULT_SINK.to_owned(),
                    String::new(),
                )
            }),
            counters: Arc::default(),
        }
    }
}

/// Totals of the uploader's traffic since the agent started. Request bodies are counted
/// as sent (compressed) when the server answered; answer bodies of successes as received.
#[derive(Debug, Default)]
pub struct UploadCounters {
    bytes_sent: AtomicU64,
    bytes_received: AtomicU64,
    requests: AtomicU64,
    failed_requests: AtomicU64,
    records_stored: AtomicU64,
}

/// A snapshot of `UploadCounters`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UploadTotals {
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub requests: u64,
    pub failed_requests: u64,
    /// Records the server acknowledged.
    pub records_stored: u64,
}

impl UploadCounters {
    pub fn totals(&self) -> UploadTotals {
        UploadTotals {
            bytes_sent: self.bytes_sent.load(Ordering::Relaxed),
            bytes_received: self.bytes_received.load(Ordering::Relaxed),
            requests: self.requests.load(Ordering::Relaxed),
            failed_requests: self.failed_requests.load(Ordering::Relaxed),
            records_stored: self.records_stored.load(Ordering::Relaxed),
        }
    }

    fn add(counter: &AtomicU64, amount: u64) {
        counter.fetch_add(amount, Ordering::Relaxed);
    }
}

/// A batch ready to send: the request and which `seq`s of which streams it carries.
#[derive(Debug, Clone, PartialEq)]
pub struct CutBatch {
    pub batch: UploadBatch,
    /// `(stream, first seq, last seq)` per chunk.
    pub spans: Vec<(String, u64, u64)>,
    pub payload_bytes: usize,
}

impl CutBatch {
    pub fn records(&self) -> usize {
        self.batch.streams.iter().map(|c| c.records.len()).sum()
    }
}

/// Cuts the next batch from the outbox: streams by priority, each from its oldest waiting
/// record, at most `max_bytes` of payload (at least one record). `None` when nothing can
/// be read. A batch holds either the agent's metrics or application streams, never both,
/// so the server can count its bytes as telemetry or as data. Blocking.
pub fn cut_batch(
    outbox: &Outbox,
    max_bytes: usize,
    stream_meta: &StreamMeta,
) -> Result<Option<CutBatch>, OutboxError> {
    let mut chunks = Vec::new();
    let mut spans = Vec::new();
    let mut payload_bytes = 0usize;
    let mut metrics_batch: Option<bool> = None;
    for stream in outbox.streams_with_pending() {
        let is_metrics = stream == edgefleet_wire::telemetry::METRICS_STREAM;
        if metrics_batch.is_some_and(|metrics| metrics != is_metrics) {
            continue;
        }
        let budget = max_bytes.saturating_sub(payload_bytes);
        if budget == 0 {
            break;
        }
        let records = outbox.peek(&stream, BATCH_MAX_RECORDS, budget)?;
        let (Some(first), Some(last)) = (records.first(), records.last()) else {
            continue;
        };
        // A record above what is left goes first in a later batch, not over this one.
        if !chunks.is_empty() && first.payload.len() > budget {
            break;
        }
        metrics_batch = Some(is_metrics);
        spans.push((stream.clone(), first.seq, last.seq));
        payload_bytes += records.iter().map(|r| r.payload.len()).sum::<usize>();
        let (sink, deployment) = stream_meta(&stream);
        chunks.push(StreamChunk {
            stream,
            sink,
            deployment,
            records: records.into_iter().map(upload_record).collect(),
        });
    }
    if chunks.is_empty() {
        return Ok(None);
    }
    let (backlog_bytes, backlog_records) = outbox.backlog();
    Ok(Some(CutBatch {
        batch: UploadBatch {
            outbox: outbox.id().to_owned(),
            streams: chunks,
            dropped: outbox.dropped(),
            backlog_bytes,
            backlog_records,
        },
        spans,
        payload_bytes,
    }))
}

/// A record as it goes on the wire. A JSON record that does not parse (the outbox checks
/// JSON when it accepts it, so only an older outbox could hold one) goes as bytes.
pub fn upload_record(record: Pending) -> UploadRecord {
    let time = record.time();
    let data = match record.kind {
        RecordKind::Json => match serde_json::from_slice(&record.payload) {
            Ok(value) => RecordData::Json(value),
            Err(_) => {
                RecordData::Bytes(base64::engine::general_purpose::STANDARD.encode(&record.payload))
            }
        },
        RecordKind::Bytes => {
            RecordData::Bytes(base64::engine::general_purpose::STANDARD.encode(&record.payload))
        }
    };
    UploadRecord {
        seq: record.seq,
        time,
        data,
    }
}

/// The gzip-compressed JSON of `batch`.
pub fn encode_batch(batch: &UploadBatch) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
    // Writing to a Vec cannot fail, and the wire types always serialise.
    let _ = serde_json::to_writer(&mut encoder, batch);
    let _ = encoder.flush();
    encoder.finish().unwrap_or_default()
}

/// What became of one attempt.
enum Outcome {
    /// Stored; go on.
    Progress,
    /// Records wait but none could be read yet.
    Unreadable,
    /// Try again after this long.
    RetryAfter(Duration),
}

struct Uploader {
    outbox: Arc<Outbox>,
    channel: Arc<ServerChannel>,
    config: UploaderConfig,
    /// Consecutive failed attempts: the backoff's attempt number.
    failures: u32,
    /// A 404 was logged and not followed by a success yet.
    told_old_server: bool,
    /// `config.batch_max_bytes`, or less after the server refused a batch as too large.
    batch_max: usize,
}

/// Uploads the outbox's records until shutdown.
pub async fn run(
    outbox: Arc<Outbox>,
    channel: Arc<ServerChannel>,
    config: UploaderConfig,
    mut shutdown: Shutdown,
) {
    let batch_max = config.batch_max_bytes.max(1);
    let flush_interval = config.flush_interval;
    let mut uploader = Uploader {
        outbox,
        channel,
        config,
        failures: 0,
        told_old_server: false,
        batch_max,
    };
    // Records left from before a restart go at once.
    let mut due: Option<Instant> = Some(Instant::now());
    let mut retry_at: Option<Instant> = None;
    loop {
        if let Some(at) = retry_at.take() {
            tokio::select! {
                () = shutdown.wait() => return,
                () = tokio::time::sleep_until(at) => {}
            }
        }
        let (pending_bytes, pending_records) = uploader.outbox.backlog();
        if pending_records == 0 {
            due = None;
            tokio::select! {
                () = shutdown.wait() => return,
                () = uploader.outbox.appended() => {}
            }
            continue;
        }
        let now = Instant::now();
        let send_at = *due.get_or_insert(now + flush_interval);
        if pending_bytes < uploader.batch_max as u64 && now < send_at {
            tokio::select! {
                () = shutdown.wait() => return,
                () = tokio::time::sleep_until(send_at) => {}
                // Recheck whether a batch's worth waits now.
                () = uploader.outbox.appended() => {}
            }
            continue;
        }
        let outcome = tokio::select! {
            () = shutdown.wait() => return,
            outcome = uploader.upload_one() => outcome,
        };
        match outcome {
            Outcome::Progress => {}
            Outcome::Unreadable => retry_at = Some(Instant::now() + UNREADABLE_RETRY),
            Outcome::RetryAfter(delay) => retry_at = Some(Instant::now() + delay),
        }
    }
}

impl Uploader {
    /// Cuts, sends and acknowledges one batch.
    async fn upload_one(&mut self) -> Outcome {
        let outbox = self.outbox.clone();
        let batch_max = self.batch_max;
        let stream_meta = self.config.stream_meta.clone();
        let cut = tokio::task::spawn_blocking(move || {
            outbox.expire(time::OffsetDateTime::now_utc())?;
            // Readers see flushed records only; a failed flush is retried here.
            outbox.flush()?;
            let cut = cut_batch(&outbox, batch_max, &stream_meta)?;
            Ok::<_, OutboxError>(cut.map(|cut| {
                let body = encode_batch(&cut.batch);
                (cut, body)
            }))
        })
        .await;
        let (cut, body) = match cut {
            Ok(Ok(Some(cut))) => cut,
            Ok(Ok(None)) => return Outcome::Unreadable,
            Ok(Err(error)) => return self.retry(format!("cannot read the outbox: {error}")),
            Err(error) => return self.retry(format!("outbox read task failed: {error}")),
        };
        let body_bytes = body.len() as u64;
        let counters = self.config.counters.clone();
        UploadCounters::add(&counters.requests, 1);
        let ack = match send(&self.channel, body).await {
            Ok((ack, received)) => {
                UploadCounters::add(&counters.bytes_sent, body_bytes);
                UploadCounters::add(&counters.bytes_received, received as u64);
                ack
            }
            Err(error) => {
                UploadCounters::add(&counters.failed_requests, 1);
                if matches!(error, CallError::Status { .. }) {
                    UploadCounters::add(&counters.bytes_sent, body_bytes);
                }
                return self.failed(&error, &cut);
            }
        };
        if self.told_old_server {
            self.told_old_server = false;
            info!("the server accepts telemetry uploads now");
        }
        self.batch_max = self.config.batch_max_bytes.max(1);
        let records = cut.records();
        match self.acknowledge(&cut, ack).await {
            Ok(stored) => {
                UploadCounters::add(&counters.records_stored, stored);
                if self.failures > 0 {
                    debug!(failures = self.failures, "uploading telemetry works again");
                }
                self.failures = 0;
                debug!(
                    records,
                    payload_bytes = cut.payload_bytes,
                    body_bytes,
                    "uploaded outbox records"
                );
                Outcome::Progress
            }
            Err(problem) => self.retry(problem),
        }
    }

    /// Moves the outbox's cursors to what the server stored. Returns how many of the
    /// records sent are stored, or why the batch did not count as progress.
    async fn acknowledge(&self, cut: &CutBatch, ack: UploadAck) -> Result<u64, String> {
        let mut acks = Vec::new();
        let mut stored = 0u64;
        let mut missing = Vec::new();
        for (stream, first, last) in &cut.spans {
            let through = ack
                .streams
                .iter()
                .find(|a| &a.stream == stream)
                .map(|a| a.stored_through);
            match through {
                Some(through) if through >= *first => {
                    stored += through.min(*last) - first + 1;
                    acks.push((stream.clone(), through));
                }
                _ => missing.push(format!(
                    "{stream} (sent seq {first} to {last}, stored through {})",
                    through.map_or_else(|| "nothing".to_owned(), |t| t.to_string())
                )),
            }
        }
        let outbox = self.outbox.clone();
        let acked = tokio::task::spawn_blocking(move || {
            for (stream, through) in acks {
                outbox.ack(&stream, through)?;
            }
            Ok::<_, OutboxError>(())
        })
        .await;
        match acked {
            Ok(Ok(())) => {}
            // The records are on the server; the worst outcome is sending them again.
            Ok(Err(error)) => return Err(format!("cannot record what the server stored: {error}")),
            Err(error) => return Err(format!("outbox acknowledgement task failed: {error}")),
        }
        if missing.is_empty() {
            Ok(stored)
        } else {
            // Asking again at once would spin.
            Err(format!(
                "the server stored none of the records sent of {}",
                missing.join(", ")
            ))
        }
    }

    fn retry(&mut self, problem: String) -> Outcome {
        let delay = crate::reconnect_delay(self.failures);
        self.failures = self.failures.saturating_add(1);
        warn!(retry_in_ms = delay.as_millis() as u64, "{problem}");
        Outcome::RetryAfter(delay)
    }

    fn failed(&mut self, error: &CallError, cut: &CutBatch) -> Outcome {
        let status = match error {
            CallError::Status { status, .. } => Some(*status),
            _ => None,
        };
        if status == Some(StatusCode::NOT_FOUND) {
            if !self.told_old_server {
                self.told_old_server = true;
                warn!(%error, retry_in_s = OLD_SERVER_RETRY.as_secs(), "the server does not accept telemetry uploads (an older version?); the records are kept on the node and sent once it does");
            }
            return Outcome::RetryAfter(OLD_SERVER_RETRY);
        }
        if status == Some(StatusCode::PAYLOAD_TOO_LARGE) && cut.records() > 1 {
            // Smaller batches get through a server with a lower body limit.
            self.batch_max = (cut.payload_bytes / 2).max(1);
            warn!(%error, batch_max_bytes = self.batch_max, "the server refused a telemetry batch as too large; sending smaller ones");
            return Outcome::RetryAfter(Duration::ZERO);
        }
        let delay = if error.is_auth() {
            // The desired-state poll reports a refused certificate; no need to say it twice.
            crate::reconnect_delay(u32::MAX)
        } else {
            crate::reconnect_delay(self.failures)
        };
        if error.is_permanent() && !error.is_auth() {
            warn!(%error, retry_in_ms = delay.as_millis() as u64, "the server refused a telemetry batch");
        } else {
            debug!(%error, retry_in_ms = delay.as_millis() as u64, "uploading telemetry failed");
        }
        self.failures = self.failures.saturating_add(1);
        Outcome::RetryAfter(delay)
    }
}

/// Sends one compressed batch; the answer and the size of its body.
async fn send(channel: &ServerChannel, body: Vec<u8>) -> Result<(UploadAck, usize), CallError> {
    let request = channel
        .client()
        .post(channel.url(ROUTE))
        .header(CONTENT_TYPE, "application/json")
        .header(CONTENT_ENCODING, "gzip")
        .timeout(REQUEST_TIMEOUT)
        .body(body);
    let response = send_raw(request).await?;
    let bytes = response.bytes().await.map_err(CallError::Transport)?;
    let ack = serde_json::from_slice(&bytes).map_err(|e| CallError::Decode(e.to_string()))?;
    Ok((ack, bytes.len()))
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;
    use crate::outbox::{OutboxConfig, StreamPolicy, from_unix_ms};

    fn pending(seq: u64, kind: RecordKind, payload: &[u8]) -> Pending {
        Pending {
            seq,
            time_ms: 1_750_000_000_123,
            kind,
            payload: payload.to_vec(),
        }
    }

    #[test]
    fn records_go_as_json_or_base64() {
        let json = upload_record(pending(3, RecordKind::Json, br#"{"cpu":0.5}"#));
        assert_eq!(json.seq, 3);
        assert_eq!(json.time, from_unix_ms(1_750_000_000_123));
        assert_eq!(json.data, RecordData::Json(serde_json::json!({"cpu": 0.5})));
        let bytes = upload_record(pending(4, RecordKind::Bytes, b"\x00\xffhi"));
        assert_eq!(bytes.data, RecordData::Bytes("AP9oaQ==".to_owned()));
        // Not JSON after all: sent as bytes rather than lost.
        let odd = upload_record(pending(5, RecordKind::Json, b"{oops"));
        assert_eq!(odd.data, RecordData::Bytes("e29vcHM=".to_owned()));
    }

    #[test]
    fn batches_are_gzipped_json() {
        let batch = UploadBatch {
            outbox: "abc".into(),
            streams: vec![],
            dropped: vec![],
            backlog_bytes: 7,
            backlog_records: 1,
        };
        let body = encode_batch(&batch);
        let mut text = String::new();
        flate2::read::GzDecoder::new(&body[..])
            .read_to_string(&mut text)
            .unwrap();
        assert_eq!(serde_json::from_str::<UploadBatch>(&text).unwrap(), batch);
    }

    #[test]
    fn batches_follow_priority_and_stay_under_the_byte_budget() {
        let dir = tempfile::tempdir().unwrap();
        let (outbox, _) = Outbox::open(dir.path(), OutboxConfig::default()).unwrap();
        let now = from_unix_ms(1_750_000_000_000);
        outbox
            .set_policy(
                "urgent",
                StreamPolicy {
                    priority: 9,
                    ttl: Duration::from_secs(3600),
                },
            )
            .unwrap();
        for i in 0..10 {
            outbox
                .append(
                    "metrics",
                    RecordKind::Json,
                    format!("{{\"i\":{i}}}").as_bytes(),
                    now,
                )
                .unwrap();
            outbox
                .append("urgent", RecordKind::Bytes, &[b'u'; 100], now)
                .unwrap();
        }
        let meta: StreamMeta =
            Arc::new(|stream: &str| (format!("sink-{stream}"), "dep".to_owned()));
        let cut = cut_batch(&outbox, 550, &meta).unwrap().unwrap();
        // Five urgent records (500 bytes) first; the metrics go in a batch of their own.
        assert_eq!(cut.spans, [("urgent".to_owned(), 1, 5)]);
        assert!(cut.payload_bytes <= 550, "{}", cut.payload_bytes);
        assert_eq!(cut.batch.outbox, outbox.id());
        assert_eq!(cut.batch.streams[0].sink, "sink-urgent");
        assert_eq!(cut.batch.streams[0].deployment, "dep");
        assert_eq!(cut.batch.backlog_records, 20);
        // A record larger than the budget goes alone.
        let alone = cut_batch(&outbox, 10, &meta).unwrap().unwrap();
        assert_eq!(alone.records(), 1);
        assert_eq!(alone.spans, [("urgent".to_owned(), 1, 1)]);
        // Once the application records are stored, the metrics go, alone.
        outbox.ack("urgent", 10).unwrap();
        let metrics = cut_batch(&outbox, 550, &meta).unwrap().unwrap();
        assert_eq!(metrics.spans, [("metrics".to_owned(), 1, 10)]);
        // Nothing waits: no batch.
        outbox.ack("metrics", 10).unwrap();
        assert_eq!(cut_batch(&outbox, 550, &meta).unwrap(), None);
    }
}
