//! Clean-up that follows the desired state: the artifact cache is trimmed to its size
//! limit and the container images edgefleet brought are removed once nothing needs them.
//!
//! It runs a while after each new desired state (so that preparations in progress find
//! what they fetched) and once an hour. What desired workloads reference is never removed:
//! the artifacts of every desired workload are kept, and so is every image a desired
//! container workload names or a container uses.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use crate::artifacts::ArtifactCache;
use crate::reconcile::DesiredReceiver;
use crate::runtime::container::ImageCollector;
use crate::shutdown::Shutdown;

/// How long after a new desired state the clean-up runs.
const SETTLE: Duration = Duration::from_secs(30);
/// How often it runs when nothing changes.
const PERIOD: Duration = Duration::from_secs(3600);

pub async fn run(
    mut desired: DesiredReceiver,
    artifacts: Arc<ArtifactCache>,
    images: ImageCollector,
    mut shutdown: Shutdown,
) {
    let mut open = true;
    loop {
        // Wait for a change (or the period), then for things to settle.
        tokio::select! {
            () = shutdown.wait() => return,
            changed = desired.changed(), if open => {
                if changed.is_err() {
                    open = false;
                }
            }
            () = tokio::time::sleep(PERIOD) => {}
        }
        tokio::select! {
            () = shutdown.wait() => return,
            () = tokio::time::sleep(SETTLE) => {}
        }
        let Some(state) = desired.borrow_and_update().clone() else {
            continue;
        };
        let keep: BTreeSet<String> = state
            .workloads
            .iter()
            .flat_map(|w| w.spec.artifacts())
            .map(|a| a.digest.clone())
            .collect();
        let cache = artifacts.clone();
        match tokio::task::spawn_blocking(move || cache.gc(&keep)).await {
            Ok(report) => {
                if !report.removed.is_empty() || !report.removed_partial.is_empty() {
                    info!(
                        removed = report.removed.len(),
                        partial = report.removed_partial.len(),
                        freed_bytes = report.freed_bytes,
                        "trimmed the artifact cache"
                    );
                }
            }
            Err(error) => warn!(%error, "trimming the artifact cache failed"),
        }
        let needed: BTreeSet<String> = state
            .workloads
            .iter()
            .filter_map(|w| w.spec.image.clone())
            .collect();
        match images.collect(&needed).await {
            Ok(removed) if !removed.is_empty() => {
                info!(images = %removed.join(", "), "removed container images no workload needs");
            }
            Ok(_) => {}
            Err(error) => warn!(%error, "removing unused container images failed"),
        }
    }
}
