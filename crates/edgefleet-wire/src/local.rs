//! The agent's local API: a unix socket (`<data-dir>/agent.sock`, and for workloads
//! `$EDGEFLEET_LOCAL_API`) that workloads on the node use to hold an update lock, publish
//! records to their deployment's streams and read their own configuration; optionally the
//! same protocol on a loopback TCP port. One JSON request per line, one JSON response per
//! line.
//!
//! ```text
//! → {"op":"acquire","workload":"till","reason":"sale in progress"}
//! ← {"ok":true,"locks":[{"workload":"till","reason":"sale in progress","since":"..."}]}
//! → {"op":"release","workload":"till"}
//! → {"op":"list"}
//! → {"op":"publish","token":"...","stream":"readings","json":{"t":21.5}}
//! ← {"ok":true,"seq":42}
//! → {"op":"publish","token":"...","stream":"readings","records":[{"t":1},{"t":2}]}
//! ← {"ok":true,"seqs":[43,44]}
//! → {"op":"publish","token":"...","stream":"frames","bytes":"AAEC"}
//! → {"op":"config","token":"..."}
//! ← {"ok":true,"config":{"node":"n1","workload":"web",...}}
//! ```
//!
//! `publish` and `config` need the workload's token (`$EDGEFLEET_WORKLOAD_TOKEN`, given to
//! each workload by the agent): it says which workload is asking. A `publish` is answered
//! only once its records are on the node's disk, in the outbox: from then on they reach
//! the server even if the agent or the node crashes.

use serde::{Deserialize, Serialize};

use crate::node::UpdateLock;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum LocalRequest {
    /// Hold the update lock of `workload` (idempotent: the first `since` is kept).
    Acquire {
        workload: String,
        #[serde(default)]
        reason: String,
    },
    Release {
        workload: String,
    },
    List,
    /// Publish records to a stream of the caller's deployment: one JSON value (`json`),
    /// several (`records`, stored together), or opaque bytes in base64 (`bytes`).
    Publish {
        token: String,
        stream: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        json: Option<serde_json::Value>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        records: Vec<serde_json::Value>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        bytes: Option<String>,
    },
    /// The caller's own configuration.
    Config {
        token: String,
    },
}

/// What `config` answers: the calling workload as the node runs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkloadConfig {
    pub node: String,
    pub workload: String,
    pub deployment: String,
    pub revision: String,
    /// The node's labels.
    #[serde(default)]
    pub labels: crate::Labels,
    #[serde(default)]
    pub env: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    pub streams: Vec<crate::manifest::StreamSpec>,
    pub spec: crate::manifest::WorkloadSpec,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalResponse {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Every lock held after the request.
    #[serde(default)]
    pub locks: Vec<UpdateLock>,
    /// The sequence number `publish` gave the one record it stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// The sequence numbers `publish` gave `records`, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub seqs: Vec<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<Box<WorkloadConfig>>,
}

/// The environment variable that holds the local API's socket path, in every workload.
pub const LOCAL_API_ENV: &str = "EDGEFLEET_LOCAL_API";
/// The environment variable that holds the workload's local API token.
pub const WORKLOAD_TOKEN_ENV: &str = "EDGEFLEET_WORKLOAD_TOKEN";
/// Where the local API's socket directory is mounted in containers.
pub const CONTAINER_API_DIR: &str = "/run/edgefleet/api";
