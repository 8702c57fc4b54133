//! The data lake: Parquet files of streams and metrics, exported exactly once to sinks (a local directory by default, S3-compatible object storage when configured), with residency and retention.

use std::path::Path;

use crate::state::AppState;

/// Flags of this part of the server (flattened into `ServerArgs`).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct LakeArgs {}

/// What handlers and background tasks share of this part (held in `AppState`).
#[derive(Debug)]
pub struct Lake {}

impl Lake {
    pub fn new(_args: &LakeArgs, _data_dir: &Path) -> anyhow::Result<Self> {
        Ok(Self {})
    }
}

/// The background work of this part; runs until the server stops (it is aborted then).
pub async fn run(_state: AppState) {}
