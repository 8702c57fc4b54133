//! Telemetry ingest and metric storage: rollups and retention of metric samples.

use std::path::Path;

use crate::state::AppState;

/// Flags of this part of the server (flattened into `ServerArgs`).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct TelemetryArgs {}

/// What handlers and background tasks share of this part (held in `AppState`).
#[derive(Debug)]
pub struct Telemetry {}

impl Telemetry {
    pub fn new(_args: &TelemetryArgs, _data_dir: &Path) -> anyhow::Result<Self> {
        Ok(Self {})
    }
}

/// The background work of this part; runs until the server stops (it is aborted then).
pub async fn run(_state: AppState) {}
