//! One running module: its thread, its store, and how its end is reported.
//!
//! Each instance gets an OS thread with a single-threaded event loop of its own. The
//! module runs there as a future (wasmtime's async calls), which is what makes `stop`
//! immediate in every state: while the module computes, the epoch callback sees the stop
//! flag at the next tick (or at once: `stop` also advances the epoch); while it waits in a
//! WASI call (a sleep, a read), the stop wakes the loop and the module's future is dropped,
//! which unwinds it.
//!
//! The thread answers `Started` once the module is instantiated, or `StartFailed`, and
//! then `Exited`: `proc_exit(n)` is code n, returning from `_start` is 0, anything else
//! (a trap, the fuel running out, the memory limit, a stop) has no code and a reason in
//! words. Should the thread itself fail, a guard still answers, so the supervisor is never
//! left waiting.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use edgefleet_core::supervisor::Event;
use edgefleet_wire::session::LogStream;
use edgefleet_wire::workload::{ByteSize, Cpus, FILES_DIR_ENV, FILES_MOUNT_PATH};
use tokio::sync::Notify;
use tracing::debug;
use wasmtime::{Engine, Linker, Module, Store, Trap, UpdateDeadline};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::{FsPerms, I32Exit, WasiCtxBuilder};

use super::limits::{MemoryBudget, Throttle, Ticker};
use super::output::LogOutput;
use crate::runtime::logs::WorkloadLogs;
use crate::runtime::{EventSender, Launch};

/// The reason given for a module the agent stopped or killed.
pub(super) const STOPPED: &str = "stopped by the agent";

/// How long a module's file-operation thread waits for more work before it ends.
const BLOCKING_THREAD_KEEP_ALIVE: Duration = Duration::from_secs(2);

/// What a module runs with, checked before anything runs.
#[derive(Debug, Clone)]
pub(super) struct Plan {
    /// `argv`: the workload's name, then its `args`.
    args: Vec<String>,
    env: Vec<(String, String)>,
    preopens: Vec<Preopen>,
    memory: Option<ByteSize>,
    fuel: Option<u64>,
    cpus: Option<Cpus>,
}

#[derive(Debug, Clone)]
struct Preopen {
    host: PathBuf,
    guest: String,
    read_only: bool,
    /// Where it comes from, for errors: `volumes[0]`, "the workload's files".
    origin: String,
}

impl Plan {
    pub(super) fn new(name: &str, launch: &Launch) -> Result<Self, String> {
        let spec = &launch.spec;
        let mut preopens = Vec::with_capacity(spec.volumes.len() + 1);
        for (index, volume) in spec.volumes.iter().enumerate() {
            let origin = format!("volumes[{index}]");
            if !volume.source.starts_with('/') {
                return Err(format!(
                    "{origin}: source {:?} must be an absolute directory on the node (WebAssembly modules have no named volumes)",
                    volume.source
                ));
            }
            if !volume.target.starts_with('/') {
                return Err(format!(
                    "{origin}: target {:?} must be an absolute path",
                    volume.target
                ));
            }
            preopens.push(Preopen {
                host: PathBuf::from(&volume.source),
                guest: volume.target.clone(),
                read_only: volume.read_only,
                origin,
            });
        }
        let mut env: Vec<(String, String)> = spec
            .env
            .iter()
            .filter(|(key, _)| launch.files_dir.is_none() || key.as_str() != FILES_DIR_ENV)
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect();
        if let Some(dir) = &launch.files_dir {
            env.push((FILES_DIR_ENV.to_owned(), FILES_MOUNT_PATH.to_owned()));
            preopens.push(Preopen {
                host: dir.clone(),
                guest: FILES_MOUNT_PATH.to_owned(),
                read_only: true,
                origin: "the workload's files".to_owned(),
            });
        }
        let args = std::iter::once(name.to_owned())
            .chain(spec.args.iter().cloned())
            .collect();
        Ok(Self {
            args,
            env,
            preopens,
            memory: spec.resources.memory,
            fuel: spec.resources.fuel,
            cpus: spec.resources.cpus,
        })
    }
}

/// How the agent reaches a running instance.
pub(super) struct Control {
    stop: AtomicBool,
    finished: AtomicBool,
    wake: Notify,
    engine: Engine,
}

impl Control {
    pub(super) fn new(engine: Engine) -> Self {
        Self {
            stop: AtomicBool::new(false),
            finished: AtomicBool::new(false),
            wake: Notify::new(),
            engine,
        }
    }

    /// Interrupts the instance wherever it is.
    pub(super) fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        self.wake.notify_waiters();
        // A module computing notices at its next epoch check: make that now.
        self.engine.increment_epoch();
    }

    pub(super) fn finished(&self) -> bool {
        self.finished.load(Ordering::Acquire)
    }

    fn stop_requested(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    /// Resolves once a stop has been asked for.
    async fn stopped(&self) {
        loop {
            let notified = self.wake.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            if self.stop_requested() {
                return;
            }
            notified.await;
        }
    }
}

/// The data of an instance's store.
pub(super) struct InstanceState {
    pub(super) wasi: WasiP1Ctx,
    memory: MemoryBudget,
}

/// Everything a module thread needs.
pub(super) struct Job {
    pub(super) name: String,
    pub(super) instance: u64,
    pub(super) plan: Plan,
    pub(super) control: Arc<Control>,
    pub(super) linker: Arc<Linker<InstanceState>>,
    pub(super) logs: WorkloadLogs,
    pub(super) events: EventSender,
    pub(super) ticker: Arc<Ticker>,
}

impl Job {
    /// Gives up before any thread exists: the `StartFailed` to send.
    pub(super) fn fail(self, error: String) -> Event {
        self.control.finished.store(true, Ordering::Release);
        Event::StartFailed {
            name: self.name,
            instance: self.instance,
            error,
        }
    }
}

/// Runs `module` on a new thread. When no thread can be created, the `StartFailed` to send.
pub(super) fn spawn(job: Job, module: Module) -> Result<(), Event> {
    let control = job.control.clone();
    let (name, instance) = (job.name.clone(), job.instance);
    // Named after the workload (cut to 15 bytes by the kernel), for `top -H` and the like.
    let spawned = std::thread::Builder::new()
        .name(format!("wasm-{name}"))
        .spawn(move || run_thread(job, module));
    match spawned {
        Ok(_) => Ok(()),
        Err(error) => {
            control.finished.store(true, Ordering::Release);
            Err(Event::StartFailed {
                name,
                instance,
                error: format!("cannot create a thread for the module: {error}"),
            })
        }
    }
}

fn run_thread(job: Job, module: Module) {
    let mut reporter = Reporter {
        name: job.name.clone(),
        instance: job.instance,
        events: job.events.clone(),
        control: job.control.clone(),
        phase: Phase::Starting,
    };
    // File operations run on the loop's blocking pool: one thread, gone when idle.
    let event_loop = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(1)
        .thread_keep_alive(BLOCKING_THREAD_KEEP_ALIVE)
        .build();
    match event_loop {
        Ok(event_loop) => event_loop.block_on(run(job, module, &mut reporter)),
        Err(error) => {
            reporter.start_failed(format!("cannot create the module's event loop: {error}"));
        }
    }
}

async fn run(job: Job, module: Module, reporter: &mut Reporter) {
    let _running = job.ticker.running();
    let mut store = match new_store(&job, &module) {
        Ok(store) => store,
        Err(error) => return reporter.start_failed(error),
    };
    let instantiated = tokio::select! {
        biased;
        () = job.control.stopped() => {
            return reporter.start_failed(format!("{STOPPED} before it started"));
        }
        instantiated = job.linker.instantiate_async(&mut store, &module) => instantiated,
    };
    let instance = match instantiated {
        Ok(instance) => instance,
        Err(error) => {
            debug!(workload = job.name, ?error, "instantiation failed");
            return reporter.start_failed(describe_instantiation_error(&error, &store, &job.plan));
        }
    };
    let start = match instance.get_typed_func::<(), ()>(&mut store, "_start") {
        Ok(start) => start,
        Err(error) => {
            return reporter.start_failed(format!(
                "the module has no `_start` function without parameters or results ({error}): it must be a WASI command, such as a program built for wasm32-wasip1"
            ));
        }
    };
    reporter.started();
    let result = tokio::select! {
        biased;
        () = job.control.stopped() => None,
        result = start.call_async(&mut store, ()) => Some(result),
    };
    job.logs.flush(LogStream::Stdout);
    job.logs.flush(LogStream::Stderr);
    if let Some(Err(error)) = &result {
        debug!(workload = job.name, ?error, "module ended with an error");
    }
    let (code, reason) = describe_end(result, &store, &job.plan);
    reporter.exited(code, reason);
}

fn new_store(job: &Job, module: &Module) -> Result<Store<InstanceState>, String> {
    let plan = &job.plan;
    let mut wasi = WasiCtxBuilder::new();
    wasi.args(&plan.args)
        .envs(&plan.env)
        .stdout(LogOutput::new(job.logs.clone(), LogStream::Stdout))
        .stderr(LogOutput::new(job.logs.clone(), LogStream::Stderr))
        // Not on the module's own thread, though it could: a blocked thread (a sleep in
        // `poll_oneoff` is then a thread sleep) could not be stopped.
        .allow_blocking_current_thread(false);
    for preopen in &plan.preopens {
        let perms = if preopen.read_only {
            FsPerms::ReadOnly
        } else {
            FsPerms::ReadWrite
        };
        wasi.preopened_dir(&preopen.host, &preopen.guest, perms)
            .map_err(|error| {
                format!(
                    "{}: cannot open directory {} to show it at {}: {error:#}",
                    preopen.origin,
                    preopen.host.display(),
                    preopen.guest
                )
            })?;
    }
    let state = InstanceState {
        wasi: wasi.build_p1(),
        memory: MemoryBudget::new(plan.memory),
    };
    let mut store = Store::new(module.engine(), state);
    store.limiter(|state| &mut state.memory);
    store
        .set_fuel(plan.fuel.unwrap_or(u64::MAX))
        .map_err(|error| format!("cannot give the module its fuel: {error:#}"))?;
    let control = job.control.clone();
    let mut throttle = Throttle::for_this_thread(plan.cpus);
    store.epoch_deadline_callback(move |_| {
        if control.stop_requested() {
            return Err(StoppedByAgent.into());
        }
        Ok(match throttle.as_mut().and_then(Throttle::pause) {
            Some(pause) => UpdateDeadline::YieldCustom(1, Box::pin(tokio::time::sleep(pause))),
            None => UpdateDeadline::Continue(1),
        })
    });
    store.set_epoch_deadline(1);
    Ok(store)
}

/// Raised inside the module when the agent stops it.
#[derive(Debug, thiserror::Error)]
#[error("{STOPPED}")]
struct StoppedByAgent;

fn fuel_reason(plan: &Plan) -> String {
    match plan.fuel {
        Some(fuel) => format!("used up its CPU budget (fuel {fuel})"),
        None => "used up its CPU budget".to_owned(),
    }
}

fn memory_reason(limit: ByteSize) -> String {
    format!("exceeded its memory limit of {limit}")
}

fn describe_instantiation_error(
    error: &wasmtime::Error,
    store: &Store<InstanceState>,
    plan: &Plan,
) -> String {
    if let Some(limit) = store.data().memory.exceeded() {
        return format!("the module needs more memory to start than its memory limit of {limit}");
    }
    if error.is::<StoppedByAgent>() {
        return format!("{STOPPED} before it started");
    }
    if matches!(error.downcast_ref::<Trap>(), Some(Trap::OutOfFuel)) {
        return format!("{} before it started", fuel_reason(plan));
    }
    format!("cannot instantiate the module: {error:#}")
}

/// The exit code and the reason for how a module ended; `None` when it was stopped while
/// waiting in a WASI call.
fn describe_end(
    result: Option<wasmtime::Result<()>>,
    store: &Store<InstanceState>,
    plan: &Plan,
) -> (Option<i32>, Option<String>) {
    let memory = store.data().memory.exceeded();
    let error = match result {
        None => return (None, Some(STOPPED.to_owned())),
        Some(Ok(())) => return (Some(0), None),
        Some(Err(error)) => error,
    };
    if let Some(I32Exit(code)) = error.downcast_ref::<I32Exit>() {
        // A module that exits with an error after an allocation was refused most likely
        // exits because of it.
        let reason = memory.filter(|_| *code != 0).map(memory_reason);
        return (Some(*code), reason);
    }
    if error.is::<StoppedByAgent>() {
        return (None, Some(STOPPED.to_owned()));
    }
    let trap = error.downcast_ref::<Trap>();
    if matches!(trap, Some(Trap::OutOfFuel)) {
        return (None, Some(fuel_reason(plan)));
    }
    if let Some(limit) = memory {
        return (None, Some(memory_reason(limit)));
    }
    let reason = match trap {
        // "wasm trap: integer divide by zero" reads "trapped: integer divide by zero".
        Some(trap) => {
            let trap = trap.to_string();
            format!(
                "trapped: {}",
                trap.strip_prefix("wasm trap: ").unwrap_or(&trap)
            )
        }
        None => format!("failed: {}", error.root_cause()),
    };
    (None, Some(reason))
}

enum Phase {
    Starting,
    Running,
    Done,
}

/// Sends the instance's `Started`/`StartFailed` and `Exited`, each exactly once: if the
/// thread ends without having sent them (a panic), dropping it sends what is missing.
struct Reporter {
    name: String,
    instance: u64,
    events: EventSender,
    control: Arc<Control>,
    phase: Phase,
}

impl Reporter {
    fn start_failed(&mut self, error: String) {
        self.phase = Phase::Done;
        let _ = self.events.send(Event::StartFailed {
            name: self.name.clone(),
            instance: self.instance,
            error,
        });
    }

    fn started(&mut self) {
        self.phase = Phase::Running;
        let _ = self.events.send(Event::Started {
            name: self.name.clone(),
            instance: self.instance,
            pid: None,
            at: time::OffsetDateTime::now_utc(),
        });
    }

    fn exited(&mut self, code: Option<i32>, reason: Option<String>) {
        self.phase = Phase::Done;
        let _ = self.events.send(Event::Exited {
            name: self.name.clone(),
            instance: self.instance,
            code,
            signal: None,
            reason,
        });
    }
}

impl Drop for Reporter {
    fn drop(&mut self) {
        match self.phase {
            Phase::Starting => self.start_failed(
                "the agent's WebAssembly runtime failed while starting the module".to_owned(),
            ),
            Phase::Running => self.exited(
                None,
                Some("the agent's WebAssembly runtime failed while running the module".to_owned()),
            ),
            Phase::Done => {}
        }
        self.control.finished.store(true, Ordering::Release);
    }
}
