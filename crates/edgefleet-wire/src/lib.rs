//! Wire types shared by the edgefleet server, agent and CLI.
//!
//! Everything that crosses a process boundary (HTTP bodies, the join string, deployment
//! manifests) is defined here, once. API bodies evolve additively: they accept unknown
//! fields so an older peer can talk to a newer one. Manifests are user files and are
//! strict instead: they reject unknown fields so a typo is an error, not a silent no-op.

#![forbid(unsafe_code)]

pub mod alert;
pub mod api;
pub mod artifact;
pub mod duration;
pub mod join;
pub mod local;
pub mod manifest;
pub mod node;
pub mod plan;
pub mod rollout;
pub mod session;
pub mod telemetry;
pub mod workload;

pub use duration::DurationSpec;
pub use join::JoinString;

/// Labels on nodes and manifests. Ordered so that serialisation and hashing are stable.
pub type Labels = std::collections::BTreeMap<String, String>;

/// The `apiVersion` every manifest of this release carries.
pub const API_VERSION: &str = "edgefleet.io/v1";

/// The version of the edgefleet binaries, reported by agents and shown by the CLI.
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// A point in time on the wire: RFC 3339 in JSON.
pub type Timestamp = time::OffsetDateTime;
