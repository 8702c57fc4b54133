//! The exporter: one task per sink moves the rows waiting for it into Parquet files, batch
//! by batch, exactly once (see `crate::store::LakeStore` for the protocol), and applies
//! retention at most hourly. A sink that fails is retried with backoff and logged once per
//! new error; the other sinks go on. What each sink did is kept in a `StatusBook`, which
//! `Lake::status` reads.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use edgefleet_core::backoff::Backoff;
use edgefleet_wire::Timestamp;
use serde::Serialize;
use tokio::time::Instant;

use super::config::{LakeConfig, SinkConfig, SinkTarget};
use super::layout::{self, FileKind};
use super::parquet::{self, EncodeError};
use super::rows::{LakeCommit, LakeRows, LakeSource, PlannedBatch};
use super::sink::{SinkError, SinkIo};
use crate::store::{LakeStore, StoreError};

/// How often retention runs per sink.
pub const RETENTION_INTERVAL: Duration = Duration::from_secs(3600);
/// Pauses after a failed pass of a sink.
const FAILURE_BACKOFF: Backoff = Backoff {
    base: Duration::from_secs(1),
    cap: Duration::from_secs(300),
};

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("sink {sink}: {source}")]
    Store {
        sink: String,
        #[source]
        source: StoreError,
    },
    #[error("sink {sink}: {source}")]
    Encode {
        sink: String,
        #[source]
        source: EncodeError,
    },
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error(
        "sink {sink}: the batch of {lake_source} through id {through_id} is no longer in flight; another exporter may share this database"
    )]
    CommitRefused {
        sink: String,
        lake_source: LakeSource,
        through_id: u64,
    },
    #[error("sink {sink}: encoding task failed: {reason}")]
    Task { sink: String, reason: String },
}

/// How the exporter paces itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pacing {
    /// Pause between passes once a sink is caught up.
    pub interval: Duration,
    /// Rows per batch (and so at most per file).
    pub batch_rows: u32,
    /// Whether metric samples go to the `default` sink.
    pub metrics: bool,
}

/// A sink with what it exports.
#[derive(Debug)]
pub struct SinkRuntime {
    pub config: SinkConfig,
    pub io: SinkIo,
    pub sources: Vec<LakeSource>,
    /// Sources whose cursor the sink moves past without writing anything (metric samples
    /// when their export is off), so that the telemetry store's retention, which removes
    /// only samples behind the cursor, still removes them.
    pub skipped: Vec<LakeSource>,
}

/// What one batch did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchReport {
    pub rows: u64,
    pub files: u64,
    pub held: u64,
}

/// Status of one source of a sink.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SourceStatus {
    /// `records:<sink>` or `metrics`.
    pub source: String,
    /// Every row at or below this id is in the lake or held.
    pub cursor: u64,
    /// Rows after the cursor (the cursor lag).
    pub pending_rows: u64,
    pub exported_rows: u64,
    pub exported_files: u64,
    pub held_rows: u64,
    /// The end of the batch being written, when one is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub in_flight_through: Option<u64>,
}

/// Status of one sink.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SinkStatus {
    pub name: String,
    /// `local` or `s3`.
    pub kind: &'static str,
    /// The directory, or `s3://bucket/prefix` at the endpoint.
    pub location: String,
    /// The residency selector (empty: every node).
    pub residency: String,
    pub exported_files: u64,
    pub exported_rows: u64,
    /// Rows kept out of this sink by its residency.
    pub held_rows: u64,
    /// Rows waiting after the cursors.
    pub pending_rows: u64,
    /// Files removed by retention since the server started.
    pub expired_files: u64,
    pub sources: Vec<SourceStatus>,
    #[serde(
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub last_export: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub last_error_at: Option<Timestamp>,
}

/// Stream records naming a sink that is not configured: held until it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UnknownSink {
    pub sink: String,
    pub held_rows: u64,
}

/// `GET /v1/lake`: what the lake exporter did and holds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LakeStatus {
    pub sinks: Vec<SinkStatus>,
    pub unknown_sinks: Vec<UnknownSink>,
}

/// The status, shared between the sink tasks and readers.
#[derive(Debug)]
pub struct StatusBook {
    inner: Mutex<LakeStatus>,
}

impl StatusBook {
    pub fn new(sinks: &[Arc<SinkRuntime>]) -> Self {
        let sinks = sinks
            .iter()
            .map(|sink| SinkStatus {
                name: sink.config.name.clone(),
                kind: match sink.config.target {
                    SinkTarget::Local { .. } => "local",
                    SinkTarget::S3(_) => "s3",
                },
                location: location(&sink.config),
                residency: edgefleet_core::selector::to_string(&sink.config.residency),
                exported_files: 0,
                exported_rows: 0,
                held_rows: 0,
                pending_rows: 0,
                expired_files: 0,
                sources: Vec::new(),
                last_export: None,
                last_error: None,
                last_error_at: None,
            })
            .collect();
        Self {
            inner: Mutex::new(LakeStatus {
                sinks,
                unknown_sinks: Vec::new(),
            }),
        }
    }

    pub fn snapshot(&self) -> LakeStatus {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LakeStatus> {
        // Plain counters and strings: a panic elsewhere cannot leave them inconsistent.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn update(&self, sink: &str, change: impl FnOnce(&mut SinkStatus)) {
        if let Some(status) = self.lock().sinks.iter_mut().find(|s| s.name == sink) {
            change(status);
        }
    }
}

fn location(config: &SinkConfig) -> String {
    match &config.target {
        SinkTarget::Local { path } if config.prefix.is_empty() => path.display().to_string(),
        SinkTarget::Local { path } => path.join(&config.prefix).display().to_string(),
        SinkTarget::S3(s3) => format!("s3://{}/{} at {}", s3.bucket, config.prefix, s3.endpoint),
    }
}

/// The exporter of one server.
pub struct Exporter {
    pub store: Arc<dyn LakeStore>,
    pub config: Arc<LakeConfig>,
    pub sinks: Vec<Arc<SinkRuntime>>,
    pub pacing: Pacing,
    pub status: Arc<StatusBook>,
}

impl Exporter {
    /// Runs every sink's task until aborted.
    pub async fn run(self) {
        let exporter = Arc::new(self);
        let mut tasks = tokio::task::JoinSet::new();
        for index in 0..exporter.sinks.len() {
            let exporter = exporter.clone();
            tasks.spawn(async move { exporter.run_sink(index).await });
        }
        let unknown = exporter.clone();
        tasks.spawn(async move {
            loop {
                if let Err(error) = unknown.refresh_unknown_sinks().await {
                    tracing::debug!(%error, "counting records of unknown lake sinks");
                }
                tokio::time::sleep(unknown.pacing.interval.max(Duration::from_secs(1))).await;
            }
        });
        while tasks.join_next().await.is_some() {}
    }

    async fn run_sink(&self, index: usize) {
        let Some(sink) = self.sinks.get(index).cloned() else {
            return;
        };
        let mut failures: u32 = 0;
        let mut last_error: Option<String> = None;
        let mut retention_due = Instant::now();
        loop {
            let mut outcome = self.export_sink(&sink).await.map(drop);
            if outcome.is_ok() && Instant::now() >= retention_due {
                outcome = self.expire_sink(&sink).await.map(drop);
                if outcome.is_ok() {
                    retention_due = Instant::now() + RETENTION_INTERVAL;
                }
            }
            let pause = match outcome {
                Ok(()) => {
                    if last_error.take().is_some() {
                        tracing::info!(sink = %sink.config.name, "lake sink recovered");
                        self.status
                            .update(&sink.config.name, |s| s.last_error = None);
                    }
                    failures = 0;
                    self.pacing.interval
                }
                Err(error) => {
                    let text = error.to_string();
                    if last_error.as_deref() != Some(text.as_str()) {
                        tracing::warn!(sink = %sink.config.name, error = %text, "lake export failed; retrying with backoff");
                    }
                    self.status.update(&sink.config.name, |s| {
                        s.last_error = Some(text.clone());
                        s.last_error_at = Some(time::OffsetDateTime::now_utc());
                    });
                    last_error = Some(text);
                    let pause = FAILURE_BACKOFF.jittered(failures, rand::random());
                    failures = failures.saturating_add(1);
                    pause
                }
            };
            tokio::time::sleep(pause).await;
        }
    }

    /// Exports everything waiting for the sink, batch by batch; returns the total.
    pub async fn export_sink(&self, sink: &SinkRuntime) -> Result<BatchReport, ExportError> {
        let mut total = BatchReport::default();
        let mut outcome = Ok(());
        for source in &sink.sources {
            outcome = self.export_source(sink, source, &mut total).await;
            if outcome.is_err() {
                break;
            }
        }
        if outcome.is_ok() {
            outcome = self.skip_sources(sink).await;
        }
        // The status follows the store even when a source failed half way.
        let refreshed = self.refresh_sink_status(sink, total.files > 0).await;
        outcome.and(refreshed).map(|()| total)
    }

    /// Exports the batches of one source until none is left, adding them to `total`.
    async fn export_source(
        &self,
        sink: &SinkRuntime,
        source: &LakeSource,
        total: &mut BatchReport,
    ) -> Result<(), ExportError> {
        while let Some(batch) = self.plan(sink, source).await? {
            let report = self.export_batch(sink, source, batch).await?;
            total.rows += report.rows;
            total.files += report.files;
            total.held += report.held;
            // A long catch-up shows its progress.
            self.refresh_sink_status(sink, report.files > 0).await?;
        }
        Ok(())
    }

    async fn plan(
        &self,
        sink: &SinkRuntime,
        source: &LakeSource,
    ) -> Result<Option<PlannedBatch>, ExportError> {
        self.store
            .plan_lake_batch(source, self.pacing.batch_rows)
            .await
            .map_err(|source| ExportError::Store {
                sink: sink.config.name.clone(),
                source,
            })
    }

    async fn skip_sources(&self, sink: &SinkRuntime) -> Result<(), ExportError> {
        for source in &sink.skipped {
            while let Some(batch) = self.plan(sink, source).await? {
                let committed = self
                    .store
                    .commit_lake_batch(LakeCommit {
                        source: source.clone(),
                        through_id: batch.through_id,
                        exported_ids: Vec::new(),
                        files: 0,
                        held_rows: 0,
                    })
                    .await
                    .map_err(|error| ExportError::Store {
                        sink: sink.config.name.clone(),
                        source: error,
                    })?;
                if !committed {
                    return Err(ExportError::CommitRefused {
                        sink: sink.config.name.clone(),
                        lake_source: source.clone(),
                        through_id: batch.through_id,
                    });
                }
            }
        }
        Ok(())
    }

    /// Writes one planned batch and commits it.
    pub async fn export_batch(
        &self,
        sink: &SinkRuntime,
        source: &LakeSource,
        batch: PlannedBatch,
    ) -> Result<BatchReport, ExportError> {
        let name = sink.config.name.clone();
        let store_error = |source| ExportError::Store {
            sink: name.clone(),
            source,
        };
        let rows = self
            .store
            .lake_rows(source, batch.after_id, batch.through_id)
            .await
            .map_err(store_error)?;
        let residency = sink.config.residency.clone();
        let prefix = sink.config.prefix.clone();
        let labels = batch.node_labels;
        let encoded =
            tokio::task::spawn_blocking(move || encode_batch(&rows, &labels, &residency, &prefix))
                .await
                .map_err(|error| ExportError::Task {
                    sink: name.clone(),
                    reason: error.to_string(),
                })?
                .map_err(|source| ExportError::Encode {
                    sink: name.clone(),
                    source,
                })?;
        for (key, bytes) in encoded.files {
            sink.io.put(&key, bytes).await?;
        }
        let report = BatchReport {
            rows: encoded.exported_ids.len() as u64,
            files: encoded.file_count,
            held: encoded.held,
        };
        if encoded.held > 0 {
            tracing::debug!(sink = %name, source = %source, held = encoded.held, "rows held back by residency");
        }
        let committed = self
            .store
            .commit_lake_batch(LakeCommit {
                source: source.clone(),
                through_id: batch.through_id,
                exported_ids: encoded.exported_ids,
                files: encoded.file_count,
                held_rows: encoded.held,
            })
            .await
            .map_err(store_error)?;
        if !committed {
            return Err(ExportError::CommitRefused {
                sink: name.clone(),
                lake_source: source.clone(),
                through_id: batch.through_id,
            });
        }
        Ok(report)
    }

    /// Applies every stream's retention to the sink; returns the files removed.
    pub async fn expire_sink(&self, sink: &SinkRuntime) -> Result<u64, ExportError> {
        let now = time::OffsetDateTime::now_utc();
        let mut removed = 0;
        for (stream, retention) in &self.config.retention {
            let Some(cutoff) = layout::retention_cutoff(now, *retention) else {
                continue;
            };
            let prefix = layout::stream_prefix(&sink.config.prefix, stream);
            let count = sink.io.expire(&prefix, cutoff).await?;
            if count > 0 {
                tracing::info!(sink = %sink.config.name, stream = %stream, files = count, before = %cutoff, "lake retention removed files");
            }
            removed += count;
        }
        self.status
            .update(&sink.config.name, |s| s.expired_files += removed);
        Ok(removed)
    }

    async fn refresh_sink_status(
        &self,
        sink: &SinkRuntime,
        exported: bool,
    ) -> Result<(), ExportError> {
        let mut sources = Vec::with_capacity(sink.sources.len());
        for source in &sink.sources {
            let error = |source| ExportError::Store {
                sink: sink.config.name.clone(),
                source,
            };
            let cursor = self.store.lake_cursor(source).await.map_err(error)?;
            let pending = self.store.lake_pending(source).await.map_err(error)?;
            sources.push(SourceStatus {
                source: source.key(),
                cursor: cursor.last_id,
                pending_rows: pending,
                exported_rows: cursor.exported_rows,
                exported_files: cursor.exported_files,
                held_rows: cursor.held_rows,
                in_flight_through: cursor.in_flight.map(|b| b.through_id),
            });
        }
        let now = time::OffsetDateTime::now_utc();
        self.status.update(&sink.config.name, |status| {
            status.exported_files = sources.iter().map(|s| s.exported_files).sum();
            status.exported_rows = sources.iter().map(|s| s.exported_rows).sum();
            status.held_rows = sources.iter().map(|s| s.held_rows).sum();
            status.pending_rows = sources.iter().map(|s| s.pending_rows).sum();
            status.sources = sources;
            if exported {
                status.last_export = Some(now);
            }
        });
        Ok(())
    }

    /// Counts the stream records that name sinks not configured.
    pub async fn refresh_unknown_sinks(&self) -> Result<(), StoreError> {
        let backlog = self.store.lake_record_sinks().await?;
        let unknown: Vec<UnknownSink> = backlog
            .into_iter()
            .filter(|b| self.config.sink(&b.sink).is_none())
            .map(|b| UnknownSink {
                sink: b.sink,
                held_rows: b.rows,
            })
            .collect();
        self.status.lock().unknown_sinks = unknown;
        Ok(())
    }
}

/// A batch encoded for one sink.
struct EncodedBatch {
    files: Vec<(String, Vec<u8>)>,
    file_count: u64,
    exported_ids: Vec<u64>,
    held: u64,
}

fn encode_batch(
    rows: &LakeRows,
    labels: &BTreeMap<String, edgefleet_wire::Labels>,
    residency: &edgefleet_wire::manifest::Selector,
    prefix: &str,
) -> Result<EncodedBatch, EncodeError> {
    match rows {
        LakeRows::Records(rows) => {
            let plan = layout::plan_batch(rows, labels, residency, prefix);
            let files = plan
                .files
                .iter()
                .map(|file| {
                    Ok((
                        file.key.clone(),
                        parquet::encode_records(file.kind, &file.rows)?,
                    ))
                })
                .collect::<Result<Vec<_>, EncodeError>>()?;
            Ok(EncodedBatch {
                file_count: files.len() as u64,
                files,
                held: plan.held_rows(),
                exported_ids: plan.exported_ids,
            })
        }
        LakeRows::Metrics(rows) => {
            let plan = layout::plan_batch(rows, labels, residency, prefix);
            let files = plan
                .files
                .iter()
                .map(|file| {
                    debug_assert_eq!(file.kind, FileKind::Metrics);
                    Ok((file.key.clone(), parquet::encode_metrics(&file.rows)?))
                })
                .collect::<Result<Vec<_>, EncodeError>>()?;
            Ok(EncodedBatch {
                file_count: files.len() as u64,
                files,
                held: plan.held_rows(),
                exported_ids: plan.exported_ids,
            })
        }
    }
}
