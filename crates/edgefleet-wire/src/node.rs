//! What a node says about itself: facts (inventory) and reported state.

use serde::{Deserialize, Serialize};

use crate::Timestamp;

/// Hardware and OS inventory, gathered by the agent at enrollment and whenever it changes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct NodeFacts {
    pub hostname: String,
    pub os: OsFacts,
    pub arch: String,
    pub cpu: CpuFacts,
    pub memory_bytes: u64,
    pub disks: Vec<DiskFacts>,
    pub interfaces: Vec<InterfaceFacts>,
    /// Seconds since the Unix epoch at which the node booted.
    pub boot_time: Option<i64>,
    pub machine_id: Option<String>,
    pub dmi: Option<DmiFacts>,
    pub accelerators: Vec<AcceleratorFacts>,
    pub agent_version: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct OsFacts {
    /// `PRETTY_NAME` from os-release, or the kernel name.
    pub name: String,
    pub version: String,
    pub kernel: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct CpuFacts {
    pub model: String,
    pub count: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DiskFacts {
    pub mount: String,
    pub device: String,
    pub fs_type: String,
    pub total_bytes: u64,
    pub free_bytes: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct InterfaceFacts {
    pub name: String,
    pub mac: Option<String>,
    pub addresses: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DmiFacts {
    pub vendor: Option<String>,
    pub product: Option<String>,
    pub serial: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct AcceleratorFacts {
    /// `gpu`, `npu`, `tpu`, `fpga`, ... as far as the agent can tell.
    pub kind: String,
    pub name: String,
    /// Where it was seen (`/dev/nvidia0`, `/sys/class/drm/card0`).
    pub path: String,
}

/// The lifecycle state of a workload on a node, as the agent reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WorkloadState {
    /// Desired but not started yet (or waiting to be restarted after a normal exit).
    Pending,
    Running,
    /// Exited and, by its restart policy, will not be started again.
    Exited,
    /// Exiting repeatedly; restarts are delayed by exponential backoff.
    CrashLooping,
    /// Stopped by the agent (being removed or replaced).
    Stopped,
}

impl WorkloadState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Exited => "exited",
            Self::CrashLooping => "crash-looping",
            Self::Stopped => "stopped",
        }
    }
}

/// One workload as the agent sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkloadStatus {
    pub name: String,
    pub deployment: String,
    pub revision: String,
    /// The hash of the workload spec this status is about (see `DesiredWorkload::spec_hash`).
    pub spec_hash: String,
    pub state: WorkloadState,
    #[serde(default)]
    pub pid: Option<u32>,
    #[serde(default)]
    pub restarts: u32,
    #[serde(default)]
    pub last_exit_code: Option<i32>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub started_at: Option<Timestamp>,
    /// A human explanation for the state (why it failed to start, when the next restart is).
    #[serde(default)]
    pub message: Option<String>,
}

/// Everything the agent reports about what it runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportedState {
    /// The node this report is about; the server refuses a report for any node but the
    /// one named in the client certificate.
    pub node: String,
    /// The desired-state generation the agent has applied (0: none yet).
    pub applied_generation: u64,
    #[serde(default)]
    pub workloads: Vec<WorkloadStatus>,
    #[serde(default)]
    pub agent_version: String,
    /// When the agent's current client certificate expires.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub certificate_not_after: Option<Timestamp>,
}
