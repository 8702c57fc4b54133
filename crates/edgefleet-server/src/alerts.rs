//! Monitoring and alerts: rule evaluation, site grouping, silences and webhook notifications.

use std::path::Path;

use crate::state::AppState;

/// Flags of this part of the server (flattened into `ServerArgs`).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct AlertArgs {}

/// What handlers and background tasks share of this part (held in `AppState`).
#[derive(Debug)]
pub struct Alerts {}

impl Alerts {
    pub fn new(_args: &AlertArgs, _data_dir: &Path) -> anyhow::Result<Self> {
        Ok(Self {})
    }
}

/// The background work of this part; runs until the server stops (it is aborted then).
pub async fn run(_state: AppState) {}
