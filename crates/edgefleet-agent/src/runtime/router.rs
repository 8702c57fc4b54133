//! `Runtimes`: one `Runtime` made of several, routing each instance to the runtime its
//! spec names (`process`, `container`, `wasm`).
//!
//! Prepare and start carry the spec, so they are routed by it; stop, kill and forget carry
//! only the instance number, so the router remembers which runtime each live instance
//! went to. A workload whose runtime this agent does not have fails to prepare with a
//! message saying why, rather than being ignored.

use std::collections::HashMap;

use edgefleet_core::supervisor::Event;
use edgefleet_wire::manifest::Runtime as Kind;
use tracing::debug;

use super::{EventSender, Launch, Runtime};

pub struct Runtimes {
    runtimes: HashMap<Kind, Box<dyn Runtime>>,
    owners: HashMap<u64, Kind>,
    events: EventSender,
}

impl std::fmt::Debug for Runtimes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtimes")
            .field("runtimes", &self.runtimes.keys().collect::<Vec<_>>())
            .field("instances", &self.owners.len())
            .finish()
    }
}

/// Why this agent cannot run a workload of `kind`.
pub fn unsupported(kind: Kind) -> String {
    match kind {
        Kind::Wasm => "this agent was built without WebAssembly support (the `wasm` feature): \
                       run `edgefleet agent`, or build edgefleet-agent with `--features wasm`"
            .to_owned(),
        other => format!("this agent has no {} runtime", other.as_str()),
    }
}

impl Runtimes {
    /// No runtimes yet; `events` is where failures to route are reported.
    pub fn new(events: EventSender) -> Self {
        Self {
            runtimes: HashMap::new(),
            owners: HashMap::new(),
            events,
        }
    }

    /// Runs workloads of `kind` on `runtime`.
    #[must_use]
    pub fn with(mut self, kind: Kind, runtime: Box<dyn Runtime>) -> Self {
        self.runtimes.insert(kind, runtime);
        self
    }

    fn route(&mut self, kind: Kind, instance: u64) -> Option<&mut Box<dyn Runtime>> {
        let runtime = self.runtimes.get_mut(&kind)?;
        self.owners.insert(instance, kind);
        Some(runtime)
    }

    fn owner(&mut self, instance: u64) -> Option<&mut Box<dyn Runtime>> {
        let kind = self.owners.get(&instance)?;
        self.runtimes.get_mut(kind)
    }

    /// Takes over an instance of `kind` found running (see `Runtime::adopt`).
    pub fn adopt_as(&mut self, kind: Kind, name: &str, instance: u64) {
        if let Some(runtime) = self.route(kind, instance) {
            runtime.adopt(name, instance);
        }
    }
}

impl Runtime for Runtimes {
    fn prepare(&mut self, name: &str, instance: u64, launch: &Launch) {
        let kind = launch.spec.runtime;
        match self.route(kind, instance) {
            Some(runtime) => runtime.prepare(name, instance, launch),
            None => {
                let _ = self.events.send(Event::PrepareFailed {
                    name: name.to_owned(),
                    instance,
                    error: unsupported(kind),
                });
            }
        }
    }

    fn start(&mut self, name: &str, instance: u64, launch: &Launch) {
        let kind = launch.spec.runtime;
        match self.route(kind, instance) {
            Some(runtime) => runtime.start(name, instance, launch),
            None => {
                let _ = self.events.send(Event::StartFailed {
                    name: name.to_owned(),
                    instance,
                    error: unsupported(kind),
                });
            }
        }
    }

    fn stop(&mut self, name: &str, instance: u64) {
        match self.owner(instance) {
            Some(runtime) => runtime.stop(name, instance),
            None => debug!(workload = name, instance, "not stopping: unknown instance"),
        }
    }

    fn kill(&mut self, name: &str, instance: u64) {
        match self.owner(instance) {
            Some(runtime) => runtime.kill(name, instance),
            None => debug!(workload = name, instance, "not killing: unknown instance"),
        }
    }

    /// Only containers outlive the agent, so only they are adopted.
    fn adopt(&mut self, name: &str, instance: u64) {
        self.adopt_as(Kind::Container, name, instance);
    }

    fn forget(&mut self, instance: u64) {
        if let Some(kind) = self.owners.remove(&instance)
            && let Some(runtime) = self.runtimes.get_mut(&kind)
        {
            runtime.forget(instance);
        }
    }
}
