//! Telemetry ingest and metric storage: the flags, the shared state (limits and ingest
//! counters), and the background maintenance of metric samples (rollups, then retention).
//!
//! - `model`: the data of storage and queries (decoded uploads, steps, buckets), shared with
//!   the store.
//! - `ingest`: decoding and checking an upload (pure).
//! - `query`: planning a metric query and shaping its answer (pure).
//! - The HTTP routes are `crate::handlers::telemetry`; storage is `crate::store::TelemetryStore`.
//!
//! **Maintenance** (`run`) wakes every `--metrics-maintenance-interval`: it rolls the
//! samples that arrived since the last run up into five-minute buckets, chunk by chunk
//! (each a short transaction of at most `ROLLUP_CHUNK_SAMPLES` samples), then deletes
//! expired raw samples and rollups in chunks of `EXPIRE_CHUNK_ROWS`. Between chunks the
//! database is free for requests. Both steps are idempotent, so a crash or a restart at
//! any point only means the next run continues. Raw retention counts from a sample's
//! arrival, as noted by the rollup runs (see `crate::store::TelemetryStore`).

pub mod ingest;
pub mod model;
pub mod query;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::bail;
use edgefleet_wire::workload::ByteSize;
use edgefleet_wire::{DurationSpec, Timestamp};

use crate::state::AppState;
use crate::store::{StoreResult, TelemetryStore};

/// Raw samples summed per rollup transaction, at most.
pub const ROLLUP_CHUNK_SAMPLES: u64 = 50_000;
/// Rows deleted per retention transaction, at most.
pub const EXPIRE_CHUNK_ROWS: u64 = 10_000;
/// Chunks one maintenance run does at most per kind, so a huge backlog cannot keep one run
/// going for ever (the next run continues).
const MAX_CHUNKS_PER_RUN: u32 = 10_000;

/// Flags of this part of the server (flattened into `ServerArgs`).
#[derive(clap::Args, Debug, Clone, PartialEq, Eq)]
pub struct TelemetryArgs {
    /// How long raw metric samples are kept (they are deleted only once rolled up and
    /// exported to the lake)
    #[arg(long, env = "EDGEFLEET_METRICS_RAW_RETENTION", default_value = "24h")]
    pub metrics_raw_retention: DurationSpec,
    /// How long five-minute metric rollups are kept
    #[arg(
        long,
        env = "EDGEFLEET_METRICS_ROLLUP_RETENTION",
        default_value = "30d"
    )]
    pub metrics_rollup_retention: DurationSpec,
    /// How often metric rollups and retention run
    #[arg(
        long,
        env = "EDGEFLEET_METRICS_MAINTENANCE_INTERVAL",
        default_value = "1m"
    )]
    pub metrics_maintenance_interval: DurationSpec,
    /// Largest telemetry upload accepted, after decompression (32Mi, 64Mi, ...)
    #[arg(
        long,
        env = "EDGEFLEET_TELEMETRY_MAX_UPLOAD_SIZE",
        default_value = "32Mi"
    )]
    pub telemetry_max_upload_size: ByteSize,
}

impl Default for TelemetryArgs {
    /// The clap defaults (a unit test keeps them equal).
    fn default() -> Self {
        Self {
            metrics_raw_retention: DurationSpec::from_secs(24 * 3600),
            metrics_rollup_retention: DurationSpec::from_secs(30 * 86_400),
            metrics_maintenance_interval: DurationSpec::from_secs(60),
            telemetry_max_upload_size: ByteSize(32 << 20),
        }
    }
}

/// What handlers and background tasks share of this part (held in `AppState`).
///
/// The counters are totals since the server started, for the Prometheus exposition
/// (`edgefleet_telemetry_*_total`); they count what was stored now, never again what a
/// repeated batch carried.
#[derive(Debug)]
pub struct Telemetry {
    raw_retention: Duration,
    rollup_retention: Duration,
    maintenance_interval: Duration,
    max_upload_bytes: usize,
    batches: AtomicU64,
    samples: AtomicU64,
    records: AtomicU64,
    duplicates: AtomicU64,
    rejected: AtomicU64,
}

// The counter accessors are read by the Prometheus exposition (`crate::metrics`), which
// the lead connects; until then nothing in the crate calls them.
#[allow(dead_code)]
impl Telemetry {
    pub fn new(args: &TelemetryArgs, _data_dir: &Path) -> anyhow::Result<Self> {
        let raw_retention = args.metrics_raw_retention.as_duration();
        let rollup_retention = args.metrics_rollup_retention.as_duration();
        let interval = args.metrics_maintenance_interval.as_duration();
        if raw_retention < Duration::from_secs(15 * 60) {
            bail!(
                "--metrics-raw-retention {} is too short: keep raw samples at least 15m, so \
                 they are rolled up before they expire",
                args.metrics_raw_retention
            );
        }
        if rollup_retention < raw_retention {
            bail!(
                "--metrics-rollup-retention {} is shorter than --metrics-raw-retention {}: \
                 rollups must outlive raw samples",
                args.metrics_rollup_retention,
                args.metrics_raw_retention
            );
        }
        if interval < Duration::from_secs(1) || interval > Duration::from_secs(3600) {
            bail!(
                "--metrics-maintenance-interval {} is out of range: use between 1s and 1h",
                args.metrics_maintenance_interval
            );
        }
        let max_upload_bytes = usize::try_from(args.telemetry_max_upload_size.0)
            .ok()
            .filter(|bytes| (1024..=(1 << 32)).contains(bytes));
        let Some(max_upload_bytes) = max_upload_bytes else {
            bail!(
                "--telemetry-max-upload-size {} is out of range: use between 1Ki and 4Gi",
                args.telemetry_max_upload_size
            );
        };
        Ok(Self {
            raw_retention,
            rollup_retention,
            maintenance_interval: interval,
            max_upload_bytes,
            batches: AtomicU64::new(0),
            samples: AtomicU64::new(0),
            records: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
        })
    }

    /// How long raw samples are kept; queries reaching further back read rollups.
    pub fn raw_retention(&self) -> Duration {
        self.raw_retention
    }

    /// The largest upload accepted, in bytes, after decompression.
    pub fn max_upload_bytes(&self) -> usize {
        self.max_upload_bytes
    }

    /// Uploads stored (including repeats that stored nothing new).
    pub fn batches_ingested(&self) -> u64 {
        self.batches.load(Ordering::Relaxed)
    }

    /// Metric samples stored (`edgefleet_telemetry_samples_ingested_total`).
    pub fn samples_ingested(&self) -> u64 {
        self.samples.load(Ordering::Relaxed)
    }

    /// Application stream records stored (`edgefleet_telemetry_records_ingested_total`).
    pub fn records_ingested(&self) -> u64 {
        self.records.load(Ordering::Relaxed)
    }

    /// Records (metric sets or application records) skipped because they were stored
    /// before (`edgefleet_telemetry_duplicates_total`).
    pub fn duplicates(&self) -> u64 {
        self.duplicates.load(Ordering::Relaxed)
    }

    /// Uploads refused as malformed or too large.
    pub fn uploads_rejected(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }

    pub(crate) fn count_ingest(&self, outcome: &model::IngestOutcome) {
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.samples
            .fetch_add(outcome.samples_stored, Ordering::Relaxed);
        self.records
            .fetch_add(outcome.records_stored, Ordering::Relaxed);
        self.duplicates
            .fetch_add(outcome.duplicates, Ordering::Relaxed);
    }

    pub(crate) fn count_rejected(&self) {
        self.rejected.fetch_add(1, Ordering::Relaxed);
    }
}

/// What one maintenance run did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MaintenanceReport {
    /// Every sample with an id up to this one is in the rollups.
    pub rolled_up_through: u64,
    pub samples_rolled_up: u64,
    pub raw_deleted: u64,
    pub rollups_deleted: u64,
}

/// One maintenance run at `now`: roll up every sample not rolled up yet, then expire, each
/// in bounded chunks.
pub async fn maintain(
    store: &(impl TelemetryStore + ?Sized),
    telemetry: &Telemetry,
    now: Timestamp,
) -> StoreResult<MaintenanceReport> {
    let mut report = MaintenanceReport::default();
    for _ in 0..MAX_CHUNKS_PER_RUN {
        let step = store.roll_up_metrics(now, ROLLUP_CHUNK_SAMPLES).await?;
        report.rolled_up_through = step.rolled_up_through;
        report.samples_rolled_up += step.samples_rolled_up;
        if !step.more {
            break;
        }
        tokio::task::yield_now().await;
    }
    let back = |retention: Duration| {
        now.saturating_sub(time::Duration::try_from(retention).unwrap_or(time::Duration::MAX))
    };
    let (raw_before, rollups_before) = (
        back(telemetry.raw_retention),
        back(telemetry.rollup_retention),
    );
    for _ in 0..MAX_CHUNKS_PER_RUN {
        let step = store
            .expire_metrics(raw_before, rollups_before, EXPIRE_CHUNK_ROWS)
            .await?;
        report.raw_deleted += step.raw_deleted;
        report.rollups_deleted += step.rollups_deleted;
        if !step.more(EXPIRE_CHUNK_ROWS) {
            break;
        }
        tokio::task::yield_now().await;
    }
    Ok(report)
}

/// The background work of this part; runs until the server stops (it is aborted then).
pub async fn run(state: AppState) {
    let mut ticker = tokio::time::interval(state.telemetry.maintenance_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        match maintain(state.store.as_ref(), &state.telemetry, crate::state::now()).await {
            Ok(report) => {
                if report.samples_rolled_up + report.raw_deleted + report.rollups_deleted > 0 {
                    tracing::debug!(
                        samples_rolled_up = report.samples_rolled_up,
                        raw_deleted = report.raw_deleted,
                        rollups_deleted = report.rollups_deleted,
                        "metric maintenance"
                    );
                }
            }
            Err(error) => {
                tracing::warn!(%error, "metric rollups or retention failed; retrying at the next run")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: TelemetryArgs,
    }

    #[test]
    fn clap_defaults_are_the_default() {
        let parsed = Cli::try_parse_from(["edgefleet"]).unwrap().args;
        assert_eq!(parsed, TelemetryArgs::default());
        let parsed = Cli::try_parse_from([
            "edgefleet",
            "--metrics-raw-retention",
            "2h",
            "--telemetry-max-upload-size",
            "1Mi",
        ])
        .unwrap()
        .args;
        assert_eq!(parsed.metrics_raw_retention, DurationSpec::from_secs(7200));
        assert_eq!(parsed.telemetry_max_upload_size, ByteSize(1 << 20));
    }

    #[test]
    fn settings_are_checked() {
        let dir = Path::new("/nonexistent");
        let check = |change: fn(&mut TelemetryArgs)| {
            let mut args = TelemetryArgs::default();
            change(&mut args);
            Telemetry::new(&args, dir).err().map(|e| e.to_string())
        };
        assert_eq!(check(|_| {}), None);
        assert!(
            check(|a| a.metrics_raw_retention = DurationSpec::from_secs(60))
                .unwrap()
                .starts_with("--metrics-raw-retention 1m is too short")
        );
        assert!(
            check(|a| a.metrics_rollup_retention = DurationSpec::from_secs(3600))
                .unwrap()
                .contains("rollups must outlive raw samples")
        );
        assert!(
            check(|a| a.metrics_maintenance_interval = DurationSpec::from_secs(0))
                .unwrap()
                .contains("between 1s and 1h")
        );
        assert!(
            check(|a| a.telemetry_max_upload_size = ByteSize(10))
                .unwrap()
                .contains("between 1Ki and 4Gi")
        );
    }

    #[test]
    fn counters_count_what_was_stored() {
        let telemetry = Telemetry::new(&TelemetryArgs::default(), Path::new("/x")).unwrap();
        telemetry.count_ingest(&model::IngestOutcome {
            acks: vec![],
            metric_sets_stored: 2,
            samples_stored: 120,
            records_stored: 3,
            duplicates: 4,
        });
        telemetry.count_rejected();
        assert_eq!(
            (
                telemetry.batches_ingested(),
                telemetry.samples_ingested(),
                telemetry.records_ingested(),
                telemetry.duplicates(),
                telemetry.uploads_rejected()
            ),
            (1, 120, 3, 4, 1)
        );
    }
}
