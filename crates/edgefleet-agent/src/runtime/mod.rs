//! Workload runtimes: the IO half of the supervisor.
//!
//! `edgefleet_core::supervisor::Supervisor` decides what to prepare, start, stop and kill; a
//! `Runtime` carries it out and reports back what happened as supervisor `Event`s on the
//! channel it was built with. Runtimes make no decisions of their own: no restarts, no
//! backoff. `Runtimes` routes each effect to the runtime the workload's spec names
//! (`process`, `container`, `wasm`).
//!
//! The contract, per instance (a number the supervisor gives each attempt):
//! - `prepare` answers exactly one `Event::Prepared` or `Event::PrepareFailed`, and may send
//!   `Event::Progress` before it. It makes what the instance needs present on the node
//!   (image pulled or loaded, artifact downloaded and verified, module compiled) without
//!   touching anything that runs: an update prepares while the old instance keeps running.
//! - `start` answers exactly one `Event::Started` or `Event::StartFailed`, and later
//!   `Event::Exited` if it started.
//! - `stop` asks the instance to stop (SIGTERM or the runtime's equivalent); `kill` forces
//!   it. Both are no-ops for instances that already exited.

pub mod container;
pub mod logs;
pub mod pidfile;
pub mod process;
pub mod router;
#[cfg(feature = "wasm")]
pub mod wasm;

use std::path::PathBuf;

use edgefleet_core::supervisor::Event;
use edgefleet_wire::manifest::WorkloadSpec;
use tokio::sync::mpsc;

pub use process::{ProcessConfig, ProcessRuntime};
pub use router::Runtimes;

/// Where a runtime sends what happened to the workloads it runs.
pub type EventSender = mpsc::UnboundedSender<Event>;

/// What a runtime is asked to run: the spec, where the agent rendered the workload's files
/// (`None` when the spec declares none), and what the instance belongs to (for labels on
/// containers, so that a restarted agent can adopt them).
#[derive(Debug, Clone)]
pub struct Launch {
    pub spec: WorkloadSpec,
    pub files_dir: Option<PathBuf>,
    /// The content hash of `spec` (`DesiredWorkload::spec_hash`).
    pub spec_hash: String,
    /// What the supervisor compares to decide whether a running instance must be replaced:
    /// the spec hash, plus the rendered files that restart the workload when they change.
    pub key: String,
    pub deployment: String,
    pub revision: String,
    /// How the workload reaches the agent's local API (`None` when the agent runs none).
    pub local_api: Option<LocalApiAccess>,
}

/// The local API's socket and the workload's token, handed to it in its environment
/// (`edgefleet_wire::local::LOCAL_API_ENV`, `WORKLOAD_TOKEN_ENV`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalApiAccess {
    /// The socket on the node, in a directory of its own (containers get that directory
    /// mounted at `edgefleet_wire::local::CONTAINER_API_DIR`).
    pub socket: PathBuf,
    pub token: String,
}

impl Launch {
    /// A launch of `spec` alone: keyed by its hash, no files, no deployment.
    pub fn new(spec: WorkloadSpec) -> Self {
        let spec_hash = edgefleet_core::hash::workload_hash(&spec);
        Self {
            spec,
            files_dir: None,
            key: spec_hash.clone(),
            spec_hash,
            deployment: String::new(),
            revision: String::new(),
            local_api: None,
        }
    }
}

/// An instance found running when the agent started (a container its predecessor
/// created), for the supervisor to adopt instead of starting it again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Adoptable {
    pub name: String,
    /// The spec hash it was started with (from the container's labels).
    pub spec_hash: String,
    /// The supervisor's replacement key it was started with (see `Supervisor::adopt`).
    pub key: String,
    pub deployment: String,
    pub revision: String,
    pub pid: Option<u32>,
    pub started_at: Option<edgefleet_wire::Timestamp>,
}

pub trait Runtime: Send {
    fn prepare(&mut self, name: &str, instance: u64, launch: &Launch);
    fn start(&mut self, name: &str, instance: u64, launch: &Launch);
    fn stop(&mut self, name: &str, instance: u64);
    fn kill(&mut self, name: &str, instance: u64);
    /// Takes over an instance found by `discover` under the supervisor's `instance` number:
    /// from now on it reports `Exited` for it like for one it started itself.
    fn adopt(&mut self, _name: &str, _instance: u64) {}
    /// The supervisor is done with `instance` (prepared, failed, exited): bookkeeping about
    /// it can go.
    fn forget(&mut self, _instance: u64) {}
}

/// Where runtimes get artifacts (WebAssembly modules, image archives): the node's artifact
/// cache, which downloads from the server with resume and verifies the SHA-256 before
/// handing out a path. Implemented by `crate::artifacts::ArtifactCache`.
pub trait ArtifactSource: Send + Sync {
    /// The local path of `artifact`'s verified content, downloading it first if needed.
    /// `progress(done, total)` is called as bytes arrive. The error says what went wrong
    /// and with which artifact.
    fn fetch<'a>(
        &'a self,
        artifact: &'a edgefleet_wire::workload::ArtifactRef,
        progress: &'a (dyn Fn(u64, Option<u64>) + Send + Sync),
    ) -> futures_util::future::BoxFuture<'a, Result<PathBuf, String>>;
}

/// Runs a command where a workload runs (inside its container; on the node for processes
/// and WebAssembly modules), for exec health probes.
pub trait ExecInWorkload: Send + Sync {
    /// The command's exit code; an error when it could not be run or ran past `timeout`
    /// (it is then killed).
    fn exec<'a>(
        &'a self,
        workload: &'a str,
        command: &'a [String],
        timeout: std::time::Duration,
    ) -> futures_util::future::BoxFuture<'a, Result<i32, String>>;
}
