//! The WebAssembly runtime: WASI preview 1 modules run inside the agent by an embedded
//! wasmtime.
//!
//! `prepare` fetches the module (an artifact) and compiles it off the async runtime; compiled
//! modules stay in a small in-memory cache keyed by digest, so a restart or a second
//! workload using the same module starts without compiling again. `start` runs the module
//! on a thread of its own (see `instance`), so a busy module never holds up the agent or
//! another module: `argv[0]` is the workload's name, then `args`; `env`; `volumes`
//! preopened at their targets; the rendered files preopened read-only at
//! `FILES_MOUNT_PATH`; stdout and stderr into the workload's logs.
//!
//! Limits (`resources`): `memory` caps the linear memories and tables together, `fuel` is a
//! total instruction budget, `cpus` below one core throttles the module by pausing it in
//! proportion to the CPU time it used (see `limits`). A module has no signal handler to run,
//! so `stop` is as immediate as `kill`: both interrupt it at once, even in an endless loop
//! or while it waits in a WASI call, and it is reported as `Exited` with the reason
//! "stopped by the agent". Modules cannot outlive the agent: dropping the runtime stops
//! them all.
//!
//! The engine compiles and checks everything itself: no precompiled code is ever loaded
//! (that would need `unsafe`), so whatever an artifact holds, the worst it can do is fail
//! to compile.

mod cache;
mod instance;
mod limits;
mod output;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use edgefleet_core::supervisor::Event;
use edgefleet_wire::workload::ArtifactRef;
use tokio::task::JoinSet;
use tracing::debug;
use wasmtime::{Config, Engine, Linker, Module};

use self::cache::ModuleCache;
use self::instance::{Control, InstanceState, Job};
use self::limits::Ticker;
use super::logs::LogRegistry;
use super::{ArtifactSource, EventSender, Launch, Runtime};

/// What the WebAssembly runtime needs from the agent.
#[derive(Clone)]
pub struct WasmConfig {
    /// Where the modules' stdout and stderr go.
    pub logs: LogRegistry,
    /// Where modules come from.
    pub artifacts: Arc<dyn ArtifactSource>,
}

/// How often a download reports its progress, at most.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(1);

pub struct WasmRuntime {
    shared: Arc<Shared>,
    live: HashMap<String, Live>,
    /// Preparations and starts waiting for a download or a compilation. Owned so that
    /// dropping the runtime ends them.
    tasks: JoinSet<()>,
}

/// What preparations, starts and the module threads share.
struct Shared {
    /// The engine, or why it could not be set up (every workload then fails to prepare
    /// with that reason).
    engine: Result<Engines, String>,
    cache: Mutex<ModuleCache>,
    artifacts: Arc<dyn ArtifactSource>,
    logs: LogRegistry,
    events: EventSender,
    ticker: Arc<Ticker>,
}

struct Engines {
    engine: Engine,
    /// WASI preview 1, set up once for every instance.
    linker: Arc<Linker<InstanceState>>,
}

/// Where a start gets its module.
enum ModuleSource {
    Cached(Module),
    /// Fetched and compiled first, in a task on this runtime.
    Load(tokio::runtime::Handle),
}

struct Live {
    instance: u64,
    control: Arc<Control>,
}

impl WasmRuntime {
    pub fn new(config: WasmConfig, events: EventSender) -> Self {
        let engine = Engines::new();
        let ticker = Ticker::new(engine.as_ref().ok().map(|e| e.engine.clone()));
        Self {
            shared: Arc::new(Shared {
                engine,
                cache: Mutex::new(ModuleCache::default()),
                artifacts: config.artifacts,
                logs: config.logs,
                events,
                ticker,
            }),
            live: HashMap::new(),
            tasks: JoinSet::new(),
        }
    }

    fn begin(&mut self, name: &str, instance: u64, launch: &Launch) -> Result<(), String> {
        let engines = self.shared.engines()?;
        let artifact = module_of(launch)?.clone();
        let plan = instance::Plan::new(name, launch)?;
        let module = match self.shared.cached(&artifact) {
            Some(module) => ModuleSource::Cached(module),
            // Not prepared on this agent (or evicted since): load it first, then start.
            None => ModuleSource::Load(
                tokio::runtime::Handle::try_current()
                    .map_err(|_| "the agent's async runtime is not running".to_owned())?,
            ),
        };
        let control = Arc::new(Control::new(engines.engine.clone()));
        self.live.retain(|_, live| !live.control.finished());
        self.live.insert(
            name.to_owned(),
            Live {
                instance,
                control: control.clone(),
            },
        );
        let job = Job {
            name: name.to_owned(),
            instance,
            plan,
            control,
            linker: engines.linker.clone(),
            logs: self.shared.logs.workload(name),
            events: self.shared.events.clone(),
            ticker: self.shared.ticker.clone(),
        };
        let handle = match module {
            ModuleSource::Cached(module) => {
                if let Err(failed) = instance::spawn(job, module) {
                    self.shared.send(failed);
                }
                return Ok(());
            }
            ModuleSource::Load(handle) => handle,
        };
        let shared = self.shared.clone();
        while self.tasks.try_join_next().is_some() {}
        self.tasks.spawn_on(
            async move {
                match shared.load(&job.name, job.instance, &artifact).await {
                    Ok(module) => {
                        if let Err(failed) = instance::spawn(job, module) {
                            shared.send(failed);
                        }
                    }
                    Err(error) => shared.send(job.fail(error)),
                }
            },
            &handle,
        );
        Ok(())
    }

    fn interrupt(&mut self, name: &str, instance: u64) {
        match self.live.get(name) {
            Some(live) if live.instance == instance && !live.control.finished() => {
                live.control.stop();
            }
            _ => debug!(workload = name, instance, "not stopping: already exited"),
        }
    }
}

impl Drop for WasmRuntime {
    fn drop(&mut self) {
        for live in self.live.values() {
            live.control.stop();
        }
        self.shared.ticker.shut_down();
    }
}

impl Runtime for WasmRuntime {
    fn prepare(&mut self, name: &str, instance: u64, launch: &Launch) {
        let name = name.to_owned();
        let prepared = self
            .shared
            .engines()
            .and_then(|_| module_of(launch).cloned())
            .and_then(|artifact| {
                instance::Plan::new(&name, launch)?;
                Ok(artifact)
            });
        let artifact = match prepared {
            Ok(artifact) => artifact,
            Err(error) => return self.shared.send(prepare_failed(name, instance, error)),
        };
        if self.shared.cached(&artifact).is_some() {
            return self.shared.send(Event::Prepared { name, instance });
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            let error = "the agent's async runtime is not running".to_owned();
            return self.shared.send(prepare_failed(name, instance, error));
        };
        let shared = self.shared.clone();
        while self.tasks.try_join_next().is_some() {}
        self.tasks.spawn_on(
            async move {
                let event = match shared.load(&name, instance, &artifact).await {
                    Ok(_) => Event::Prepared { name, instance },
                    Err(error) => prepare_failed(name, instance, error),
                };
                shared.send(event);
            },
            &handle,
        );
    }

    fn start(&mut self, name: &str, instance: u64, launch: &Launch) {
        if let Err(error) = self.begin(name, instance, launch) {
            self.shared.send(Event::StartFailed {
                name: name.to_owned(),
                instance,
                error,
            });
        }
    }

    /// Interrupts the module at once: modules have no SIGTERM to handle.
    fn stop(&mut self, name: &str, instance: u64) {
        self.interrupt(name, instance);
    }

    fn kill(&mut self, name: &str, instance: u64) {
        self.interrupt(name, instance);
    }
}

impl Engines {
    fn new() -> Result<Self, String> {
        let mut config = Config::new();
        // Fuel and epochs are compiled into the code, so every module gets both: fuel
        // for `resources.fuel`, epochs for stopping and for the CPU share.
        config.consume_fuel(true).epoch_interruption(true);
        let engine = Engine::new(&config)
            .map_err(|error| format!("cannot set up the WebAssembly engine: {error:#}"))?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p1::add_to_linker_async(&mut linker, |state: &mut InstanceState| {
            &mut state.wasi
        })
        .map_err(|error| format!("cannot set up WASI for the WebAssembly engine: {error:#}"))?;
        Ok(Self {
            engine,
            linker: Arc::new(linker),
        })
    }
}

impl Shared {
    fn engines(&self) -> Result<&Engines, String> {
        self.engine.as_ref().map_err(Clone::clone)
    }

    fn send(&self, event: Event) {
        let _ = self.events.send(event);
    }

    fn cached(&self, artifact: &ArtifactRef) -> Option<Module> {
        self.cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&artifact.digest)
    }

    /// The compiled module: from the cache, or fetched and compiled (and then cached).
    async fn load(
        &self,
        name: &str,
        instance: u64,
        artifact: &ArtifactRef,
    ) -> Result<Module, String> {
        if let Some(module) = self.cached(artifact) {
            return Ok(module);
        }
        let engine = self.engines()?.engine.clone();
        let path = self.fetch(name, instance, artifact).await?;
        self.send(Event::Progress {
            name: name.to_owned(),
            instance,
            message: format!("compiling module {}", artifact.name),
        });
        let compiled_artifact = artifact.clone();
        let module =
            tokio::task::spawn_blocking(move || compile(&engine, &path, &compiled_artifact))
                .await
                .map_err(|error| format!("compiling module {artifact}: {error}"))??;
        self.cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(&artifact.digest, module.clone());
        Ok(module)
    }

    async fn fetch(
        &self,
        name: &str,
        instance: u64,
        artifact: &ArtifactRef,
    ) -> Result<PathBuf, String> {
        let last_report: Mutex<Option<Instant>> = Mutex::new(None);
        let progress = |done: u64, total: Option<u64>| {
            let now = Instant::now();
            let mut last = last_report.lock().unwrap_or_else(PoisonError::into_inner);
            if last.is_some_and(|at| now.duration_since(at) < PROGRESS_INTERVAL) {
                return;
            }
            *last = Some(now);
            self.send(Event::Progress {
                name: name.to_owned(),
                instance,
                message: format!(
                    "downloading module {}: {}",
                    artifact.name,
                    describe_progress(done, total)
                ),
            });
        };
        self.artifacts
            .fetch(artifact, &progress)
            .await
            .map_err(|error| format!("fetching module {artifact}: {error}"))
    }
}

fn module_of(launch: &Launch) -> Result<&ArtifactRef, String> {
    launch.spec.module.as_ref().ok_or_else(|| {
        "the workload has runtime wasm but no module (expected module: NAME@sha256:<digest>)"
            .to_owned()
    })
}

fn prepare_failed(name: String, instance: u64, error: String) -> Event {
    Event::PrepareFailed {
        name,
        instance,
        error,
    }
}

/// Compiles the module at `path`. Blocking: the engine works for as long as the module is
/// big.
fn compile(
    engine: &Engine,
    path: &std::path::Path,
    artifact: &ArtifactRef,
) -> Result<Module, String> {
    let bytes = std::fs::read(path)
        .map_err(|error| format!("reading module {artifact} from {}: {error}", path.display()))?;
    Module::from_binary(engine, &bytes).map_err(|error| {
        format!("artifact {artifact} is not a valid WebAssembly module: {error:#}")
    })
}

fn describe_progress(done: u64, total: Option<u64>) -> String {
    let mib = |bytes: u64| bytes as f64 / f64::from(1 << 20);
    match total {
        Some(total) => format!("{:.1} of {:.1} MiB", mib(done), mib(total)),
        None => format!("{:.1} MiB", mib(done)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_reads_in_mebibytes() {
        assert_eq!(
            describe_progress(12 << 20, Some(40 << 20)),
            "12.0 of 40.0 MiB"
        );
        assert_eq!(describe_progress(1 << 19, None), "0.5 MiB");
    }
}
