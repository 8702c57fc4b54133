//! Workload runtimes: the IO half of the supervisor.
//!
//! `edgefleet_core::supervisor::Supervisor` decides what to start, stop and kill; a
//! `Runtime` carries it out and reports back what happened as supervisor `Event`s on the
//! channel it was built with (`Started`/`StartFailed` for each start, `Exited` when a
//! process ends). Runtimes make no decisions of their own: no restarts, no backoff.
//! The process runtime is the first; container and wasm runtimes implement the same trait.

pub mod logs;
pub mod pidfile;
pub mod process;

use edgefleet_core::supervisor::{Effect, Event};
use edgefleet_wire::manifest::WorkloadSpec;
use tokio::sync::mpsc;

pub use process::{ProcessConfig, ProcessRuntime};

/// Where a runtime sends what happened to the workloads it runs.
pub type EventSender = mpsc::UnboundedSender<Event>;

pub trait Runtime: Send {
    /// Starts instance `instance` of workload `name`. Must answer with exactly one
    /// `Event::Started` or `Event::StartFailed` for it, and later `Event::Exited` if it started.
    fn start(&mut self, name: &str, instance: u64, spec: &WorkloadSpec);
    /// Asks the instance to stop (SIGTERM or the runtime's equivalent).
    fn stop(&mut self, name: &str, instance: u64, pid: u32);
    /// Forces the instance to stop now (SIGKILL or equivalent).
    fn kill(&mut self, name: &str, instance: u64, pid: u32);
}

/// Carries out one supervisor effect on `runtime`.
pub fn execute(runtime: &mut dyn Runtime, effect: Effect) {
    match effect {
        Effect::Start {
            name,
            instance,
            spec,
        } => runtime.start(&name, instance, &spec),
        Effect::Stop {
            name,
            instance,
            pid,
        } => runtime.stop(&name, instance, pid),
        Effect::Kill {
            name,
            instance,
            pid,
        } => runtime.kill(&name, instance, pid),
    }
}
