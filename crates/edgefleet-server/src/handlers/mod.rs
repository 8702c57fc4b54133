//! Route handlers, one module per area of the route table (`crate::routes`): `meta`
//! (health, CA, OpenAPI), `agent` (enrollment and the node channel), `nodes`,
//! `deployments`, `rollouts`, `plan` (plan and explain), `windows`, `tokens` (join tokens,
//! API tokens, audit log), `artifacts` (pushed blobs and their download), `sessions`
//! (workload logs, relayed from the agent).
//!
//! Handlers authenticate nothing themselves: the route table's access middleware has
//! already put an `ApiCaller` or `NodeCaller` into the request.

pub mod agent;
pub mod alerts;
pub mod artifacts;
pub mod deployments;
pub mod meta;
pub mod nodes;
pub mod plan;
pub mod rollouts;
pub mod sessions;
pub mod telemetry;
pub mod tokens;
pub mod windows;
