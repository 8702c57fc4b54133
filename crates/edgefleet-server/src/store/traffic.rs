//! Bytes moved over each node's channel, by category (control, telemetry, data, artifacts),
//! and the cheap fleet counts the Prometheus exposition reads at every scrape.
//!
//! The server counts traffic in memory (`crate::metrics`) and adds it here in batches, one
//! transaction per batch, so a crash loses at most the last few seconds of counts. Totals
//! only grow; a node's `since` is when the server first stored traffic for it.

use async_trait::async_trait;
use edgefleet_wire::Timestamp;
use edgefleet_wire::telemetry::{TrafficCategory, TrafficTotals};

use super::StoreResult;

/// Every category, in the order `node_traffic` returns them.
pub const TRAFFIC_CATEGORIES: [TrafficCategory; 4] = [
    TrafficCategory::Control,
    TrafficCategory::Telemetry,
    TrafficCategory::Data,
    TrafficCategory::Artifacts,
];

/// Traffic of one node and category counted since the previous batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrafficDelta {
    pub node: String,
    pub category: TrafficCategory,
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub requests: u64,
}

/// What a node's liveness is computed from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeLiveness {
    pub last_seen: Option<Timestamp>,
    pub revoked: bool,
}

/// Counts the Prometheus exposition needs at scrape time. Reading them must stay cheap
/// for a fleet of tens of thousands of nodes: no decoding of stored JSON.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FleetCounts {
    /// Every enrolled node (revoked ones included), with buffered presence applied.
    pub nodes: Vec<NodeLiveness>,
    /// The phase (`RolloutPhase::as_str`) of the newest rollout of every deployment.
    pub rollout_phases: Vec<String>,
    pub deployments: u64,
    /// Presence updates (heartbeats, last seen) buffered and not yet written.
    pub presence_pending: u64,
}

#[async_trait]
pub trait TrafficStore: Send + Sync {
    /// Adds each delta to its node's totals, all in one transaction. A (node, category)
    /// seen for the first time starts its totals at `at`.
    async fn add_traffic(&self, deltas: Vec<TrafficDelta>, at: Timestamp) -> StoreResult<()>;

    /// A node's totals of every category (in `TRAFFIC_CATEGORIES` order, zero where
    /// nothing was counted), and since when (`None` when nothing was ever counted).
    async fn node_traffic(
        &self,
        node: &str,
    ) -> StoreResult<(Option<Timestamp>, Vec<TrafficTotals>)>;

    /// See `FleetCounts`.
    async fn fleet_counts(&self) -> StoreResult<FleetCounts>;
}
