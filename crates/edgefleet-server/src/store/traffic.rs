//! Bytes moved over each node's channel, by category (control, telemetry, data, artifacts).

use async_trait::async_trait;

#[async_trait]
pub trait TrafficStore: Send + Sync {}
