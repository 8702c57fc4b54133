//! Alert rules, alert states, silences and webhook deliveries.

use async_trait::async_trait;

#[async_trait]
pub trait AlertStore: Send + Sync {}
