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
    /// The node's IANA time zone (`Europe/Berlin`), when it can tell; maintenance windows
    /// without a time zone of their own are read in it.
    pub timezone: Option<String>,
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
    /// A human explanation for the state (why it failed to start, when the next restart is,
    /// how far an image pull has got).
    #[serde(default)]
    pub message: Option<String>,
    /// The readiness probe's verdict; `None` when the workload has no readiness probe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready: Option<bool>,
    /// The runtime running it (`process`, `container`, `wasm`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<String>,
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
    /// Update locks held by workloads on the node (see `local`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub locks: Vec<UpdateLock>,
}

/// A workload asks not to be updated right now (a robot mid-task, a till mid-sale). A
/// rollout leaves the node alone while the lock is held, for at most the deployment's
/// `maxLockDeferral`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateLock {
    pub workload: String,
    /// Why, in the holder's words.
    #[serde(default)]
    pub reason: String,
    #[serde(with = "time::serde::rfc3339")]
    pub since: Timestamp,
}

/// What kind of thing happened on a node, as its flight recorder saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NodeEventKind {
    AgentStarted,
    /// A new desired state arrived (with its generation in the message).
    DesiredReceived,
    WorkloadStarted,
    WorkloadStartFailed,
    WorkloadExited,
    WorkloadCrashLooping,
    WorkloadStopped,
    ProbeChanged,
    /// The desired state put a workload back on an earlier revision.
    Rollback,
    LockAcquired,
    LockReleased,
    /// The bounded on-node log was full and dropped its oldest undelivered events.
    EventsDropped,
    /// Anything newer peers send that this version does not know.
    #[serde(other)]
    Other,
}

impl NodeEventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AgentStarted => "agent-started",
            Self::DesiredReceived => "desired-received",
            Self::WorkloadStarted => "workload-started",
            Self::WorkloadStartFailed => "workload-start-failed",
            Self::WorkloadExited => "workload-exited",
            Self::WorkloadCrashLooping => "workload-crash-looping",
            Self::WorkloadStopped => "workload-stopped",
            Self::ProbeChanged => "probe-changed",
            Self::Rollback => "rollback",
            Self::LockAcquired => "lock-acquired",
            Self::LockReleased => "lock-released",
            Self::EventsDropped => "events-dropped",
            Self::Other => "other",
        }
    }
}

/// One entry of a node's flight recorder. `seq` increases by one per event on the node and
/// survives agent restarts, so the server can store each event exactly once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeEvent {
    pub seq: u64,
    #[serde(with = "time::serde::rfc3339")]
    pub at: Timestamp,
    pub kind: NodeEventKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    #[serde(default)]
    pub message: String,
}

/// `POST /v1/agent/events`: a batch of flight-recorder events, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventBatch {
    pub events: Vec<NodeEvent>,
}

/// The server stored every event up to and including `stored_through`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventsAck {
    pub stored_through: u64,
}

/// An event as the server shows it: with the node it came from and when it arrived.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredNodeEvent {
    pub node: String,
    #[serde(flatten)]
    pub event: NodeEvent,
    #[serde(with = "time::serde::rfc3339")]
    pub received_at: Timestamp,
}
