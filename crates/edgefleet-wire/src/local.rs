//! The agent's local API: a unix socket (`<data-dir>/agent.sock`) that workloads on the
//! node use to hold an update lock. One JSON request per line, one JSON response per line.
//!
//! ```text
//! → {"op":"acquire","workload":"till","reason":"sale in progress"}
//! ← {"ok":true,"locks":[{"workload":"till","reason":"sale in progress","since":"..."}]}
//! → {"op":"release","workload":"till"}
//! → {"op":"list"}
//! ```

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
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalResponse {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Every lock held after the request.
    #[serde(default)]
    pub locks: Vec<UpdateLock>,
}
