//! Telemetry: the agents' uploads of outbox streams (metrics and application data),
//! metric queries, and the Prometheus exposition of the server itself.

use crate::routes::RouteSpec;

/// The routes of this module, appended to the route table.
pub fn routes() -> Vec<RouteSpec> {
    Vec::new()
}
