//! The data lake: Parquet files of streams and metrics, exported exactly once to sinks (a
//! local directory by default, S3-compatible object storage when configured), with
//! residency and retention.
//!
//! Layout of this module:
//! - `config`: the sinks file (`--lake-sinks`), validated at start;
//! - `layout` (pure): residency, grouping of rows into files, keys, retention dates;
//! - `parquet`: encoding of files; `sigv4` (pure) and `s3`: the S3 client;
//! - `sink`: writing files to a directory or a bucket; `exporter`: the per-sink tasks;
//! - `rows`: the plain types the exporter and `crate::store::LakeStore` exchange.
//!
//! **Invariant:** a row reaches a sink at most once under one key, and a batch's cursor
//! moves (and its stream records are deleted) only after every file of the batch is written,
//! so a crash or a failure at any point leads to the same files being written again, never
//! to lost or duplicated rows. Data of a node whose labels do not match a sink's residency
//! selector never reaches that sink.

mod config;
mod exporter;
mod layout;
mod parquet;
pub(crate) mod rows;
mod s3;
mod sigv4;
mod sink;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use axum::Json;
use axum::extract::State;
use axum::routing::on;
use edgefleet_wire::DurationSpec;
use edgefleet_wire::api::Role;
use edgefleet_wire::telemetry::DEFAULT_SINK;

use self::config::LakeConfig;
pub use self::exporter::LakeStatus;
use self::exporter::{Exporter, Pacing, SinkRuntime, StatusBook};
use self::rows::LakeSource;
use crate::routes::{Access, HttpMethod, RouteSpec, route};
use crate::state::AppState;
use crate::store::LakeStore;

/// Flags of this part of the server (flattened into `ServerArgs`).
#[derive(clap::Args, Debug, Clone, PartialEq, Eq)]
pub struct LakeArgs {
    /// The lake's sinks and per-stream retention; without it, everything goes to the
    /// `default` sink, the directory `<data-dir>/lake`
    #[arg(long = "lake-sinks", env = "EDGEFLEET_LAKE_SINKS", value_name = "FILE")]
    pub lake_sinks: Option<PathBuf>,
    /// Export metric samples to the `default` sink, as stream `metrics` (when off, the
    /// exporter only marks them as passed, so metric retention can remove them)
    #[arg(
        long = "lake-metrics",
        env = "EDGEFLEET_LAKE_METRICS",
        default_value_t = true,
        action = clap::ArgAction::Set,
        num_args = 0..=1,
        default_missing_value = "true",
    )]
    pub lake_metrics: bool,
    /// How often the exporter looks for rows to export
    #[arg(
        long = "lake-interval",
        env = "EDGEFLEET_LAKE_INTERVAL",
        default_value = "1m"
    )]
    pub lake_interval: DurationSpec,
    /// Rows per export batch, and so at most per Parquet file
    #[arg(
        long = "lake-batch-rows",
        env = "EDGEFLEET_LAKE_BATCH_ROWS",
        default_value_t = 50_000
    )]
    pub lake_batch_rows: u32,
}

impl Default for LakeArgs {
    /// The clap defaults.
    fn default() -> Self {
        Self {
            lake_sinks: None,
            lake_metrics: true,
            lake_interval: DurationSpec::from_secs(60),
            lake_batch_rows: 50_000,
        }
    }
}

/// What handlers and background tasks share of this part (held in `AppState`).
#[derive(Debug)]
pub struct Lake {
    config: Arc<LakeConfig>,
    sinks: Vec<Arc<SinkRuntime>>,
    pacing: Pacing,
    status: Arc<StatusBook>,
}

impl Lake {
    /// Reads the sinks file and the sinks' credentials (from the environment); fails on any
    /// mistake so that the server does not start half configured.
    pub fn new(args: &LakeArgs, data_dir: &Path) -> anyhow::Result<Self> {
        Self::with_env(args, data_dir, &|name| std::env::var(name).ok())
    }

    /// `new`, with `env` looking up environment variables.
    pub(crate) fn with_env(
        args: &LakeArgs,
        data_dir: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> anyhow::Result<Self> {
        if args.lake_batch_rows == 0 {
            bail!("--lake-batch-rows must be at least 1");
        }
        if args.lake_interval.as_duration().is_zero() {
            bail!("--lake-interval must be longer than 0s");
        }
        let config = match &args.lake_sinks {
            Some(path) => LakeConfig::load(path, data_dir)?,
            None => LakeConfig::builtin(data_dir),
        };
        let pacing = Pacing {
            interval: args.lake_interval.as_duration(),
            batch_rows: args.lake_batch_rows,
            metrics: args.lake_metrics,
        };
        Self::from_config(config, pacing, env)
    }

    pub(crate) fn from_config(
        config: LakeConfig,
        pacing: Pacing,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> anyhow::Result<Self> {
        let mut sinks = Vec::with_capacity(config.sinks.len());
        for sink_config in &config.sinks {
            let io = sink::open(sink_config, env)
                .with_context(|| format!("setting up lake sink {}", sink_config.name))?;
            let mut sources = vec![LakeSource::records(&sink_config.name)];
            let mut skipped = Vec::new();
            if sink_config.name == DEFAULT_SINK {
                if pacing.metrics {
                    sources.push(LakeSource::Metrics);
                } else {
                    skipped.push(LakeSource::Metrics);
                }
            }
            sinks.push(Arc::new(SinkRuntime {
                config: sink_config.clone(),
                io,
                sources,
                skipped,
            }));
        }
        let status = Arc::new(StatusBook::new(&sinks));
        Ok(Self {
            config: Arc::new(config),
            sinks,
            pacing,
            status,
        })
    }

    /// Exported files and rows per sink, held rows, last errors and cursor lag, as of the
    /// exporter's last pass.
    pub fn status(&self) -> LakeStatus {
        self.status.snapshot()
    }

    pub(crate) fn exporter(&self, store: Arc<dyn LakeStore>) -> Exporter {
        Exporter {
            store,
            config: self.config.clone(),
            sinks: self.sinks.clone(),
            pacing: self.pacing,
            status: self.status.clone(),
        }
    }
}

/// The background work of this part; runs until the server stops (it is aborted then).
pub async fn run(state: AppState) {
    let store: Arc<dyn LakeStore> = state.store.clone();
    state.lake.exporter(store).run().await;
}

/// The routes of this module, appended to the route table.
pub fn routes() -> Vec<RouteSpec> {
    vec![route(
        HttpMethod::Get,
        "/v1/lake",
        "The data lake exporter: files and rows exported per sink, held rows, errors, cursor lag",
        Access::Token(Role::Viewer),
        None,
        "LakeStatus",
        |m| on(m, status),
    )]
}

async fn status(State(state): State<AppState>) -> Json<LakeStatus> {
    Json(state.lake.status())
}
