//! The container runtime: workloads as containers of a Docker Engine API engine (`dockerd`,
//! or Podman's Docker-compatible service), supervised by the agent.
//!
//! - `prepare` makes the image present, never touching a running container: it pulls
//!   (`imagePullPolicy`: if-not-present, always, never) with progress reported at most once
//!   a second, or loads the workload's `imageArtifact` (a `docker save` archive) for nodes
//!   that cannot reach a registry. An update therefore downloads while the old container
//!   keeps running, and the container is replaced only once the new image is on the node.
//!   Pulls send no registry credentials: images of private registries come as artifacts.
//! - `start` removes a leftover container of the same name, creates the container
//!   (`ef-<short agent id>-<workload>`, labelled with the agent id, workload, spec hash,
//!   replacement key, deployment and revision), starts it and reports its pid and start
//!   time. Its PID 1 is the engine's init (`HostConfig.Init`), which passes SIGTERM on and
//!   reaps zombies; Podman needs `catatonit` installed for it (or `init_path` set in
//!   containers.conf). The engine's restart policy stays "no": restarts are the
//!   supervisor's decision.
//! - A task per container waits for it to exit, removes it (so the next instance finds its
//!   name free) and reports `Exited` with the engine's exit code, and "out of memory (limit
//!   64Mi)" when the engine says the limit killed it (Podman does not say so on hybrid
//!   cgroup layouts: an unexplained exit 137 under a memory limit is reported as probably
//!   out of memory). Another task copies its output into the workload's log
//!   (`LogRegistry`) with the engine's timestamps (see `logstream` for how a copy resumes).
//! - `stop` sends SIGTERM and `kill` SIGKILL through the engine.
//! - A restarted agent `discover`s its running containers by their labels and `adopt`s
//!   them: nothing restarts, the copy of their output resumes after the newest line
//!   already in the log. Containers of other agents on the same engine are never touched.
//! - `collect_images` removes images edgefleet pulled or loaded that nothing needs any more
//!   (see `images`).
//!
//! The engine is found on first use (see `socket`); an agent without container workloads
//! never needs one. When the engine is unreachable every operation fails with an error
//! saying so; the supervisor decides what to retry.

mod engine;
mod images;
mod logstream;
mod pull;
mod socket;
mod spec;

pub use self::engine::EngineError;
pub use self::images::RecordError;
pub use self::socket::ResolveError;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use edgefleet_core::labels::validate_name;
use edgefleet_core::supervisor::Event;
use edgefleet_wire::Timestamp;
use edgefleet_wire::manifest::WorkloadSpec;
use edgefleet_wire::workload::{ArtifactRef, ByteSize, PullPolicy};
use futures_util::future::BoxFuture;
use hyper::Method;
use time::format_description::well_known::Rfc3339;
use tokio::task::JoinSet;
use tracing::{debug, warn};

use self::engine::{
    ContainerInspect, ContainerSummary, CreateExec, Created, Engine, EngineKind, ExecInspect,
    ImageInspect, StartExec, WaitAnswer, encode, json_lines, label_filter, next_chunk,
};
use self::images::{Origin, Record, Recorded};
use self::logstream::{Cursor, Demux, FrameError, second_of, split_timestamp};
use self::pull::{PullProgress, Throttle, describe_bytes, pull_parameters};
use self::socket::EngineCell;
use self::spec::{
    LABEL_AGENT, LABEL_DEPLOYMENT, LABEL_KEY, LABEL_MANAGED, LABEL_REVISION, LABEL_SPEC_HASH,
    LABEL_WORKLOAD, container_name, create_request, label, short_agent_id,
};
use super::logs::{LogRegistry, WorkloadLogs};
use super::{Adoptable, ArtifactSource, EventSender, ExecInWorkload, Launch, Runtime};

/// After a container exited, how long its output copy may take to read the last lines.
const LOG_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause before asking an unreachable engine again (waits, log copies).
const RETRY_AFTER: Duration = Duration::from_secs(1);
/// A container being removed by someone else is waited for this many times this long.
const REMOVAL_RETRIES: u32 = 25;
const REMOVAL_RETRY_AFTER: Duration = Duration::from_millis(200);
/// How long an exec's exit code may lag behind the end of its output.
const EXEC_EXIT_CODE_WAIT: Duration = Duration::from_secs(2);

/// What the container runtime needs from the agent.
#[derive(Clone)]
pub struct ContainerConfig {
    /// The engine's socket; `None`: look for one (see `socket`).
    pub socket: Option<PathBuf>,
    /// This agent's id, on every container it creates.
    pub agent_id: String,
    pub logs: LogRegistry,
    pub artifacts: Arc<dyn ArtifactSource>,
    /// Where the runtime keeps its own state (the record of the images it brought).
    pub state_dir: PathBuf,
}

impl std::fmt::Debug for ContainerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContainerConfig")
            .field("socket", &self.socket)
            .field("agent_id", &self.agent_id)
            .field("state_dir", &self.state_dir)
            .finish_non_exhaustive()
    }
}

/// An operation of the container runtime that failed, saying what it was doing.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error(transparent)]
    NoEngine(#[from] ResolveError),
    #[error("{doing}: {source}")]
    Engine {
        doing: String,
        #[source]
        source: EngineError,
    },
    #[error(transparent)]
    Record(#[from] RecordError),
}

fn doing(what: impl Into<String>) -> impl FnOnce(EngineError) -> ContainerError {
    let doing = what.into();
    move |source| ContainerError::Engine { doing, source }
}

/// What the runtime's tasks share.
struct Shared {
    agent_id: String,
    short_agent_id: String,
    logs: LogRegistry,
    artifacts: Arc<dyn ArtifactSource>,
    state_dir: PathBuf,
    engine: EngineCell,
    /// Serialises read-modify-write of the image record.
    record: tokio::sync::Mutex<()>,
    /// The current instance of each workload, for signals and exec probes.
    instances: Mutex<HashMap<String, Arc<Instance>>>,
}

impl Shared {
    fn instances(&self) -> MutexGuard<'_, HashMap<String, Arc<Instance>>> {
        self.instances
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The id of the container `workload` runs in now, if it runs.
    fn running_container(&self, workload: &str) -> Option<String> {
        let instance = self.instances().get(workload).cloned()?;
        let state = instance.state();
        if state.exited {
            return None;
        }
        state.container_id.clone()
    }

    /// Marks `current` exited and drops it from the current instances (unless a newer
    /// instance took its place already).
    fn forget(&self, current: &Arc<Instance>) {
        current.state().exited = true;
        let mut instances = self.instances();
        if instances
            .get(&current.workload)
            .is_some_and(|latest| Arc::ptr_eq(latest, current))
        {
            instances.remove(&current.workload);
        }
    }

    async fn remember_image(&self, image: &str, origin: Origin) {
        let _guard = self.record.lock().await;
        let result = Record::load(&self.state_dir).and_then(|mut record| {
            record.images.insert(image.to_owned(), origin);
            record.save(&self.state_dir)
        });
        if let Err(error) = result {
            // The image is there and the workload runs; only its clean-up later is lost.
            warn!(%error, image, "cannot record an image edgefleet brought; it will not be cleaned up");
        }
    }
}

/// One instance of a workload: a container being created, running, or gone.
struct Instance {
    workload: String,
    instance: u64,
    state: Mutex<InstanceState>,
}

#[derive(Debug, Default)]
struct InstanceState {
    container_id: Option<String>,
    exited: bool,
    /// The strongest signal asked for, sent again once the container has started (a stop
    /// that arrives while it is being created must not be lost).
    requested: Option<StopSignal>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum StopSignal {
    Term,
    Kill,
}

impl StopSignal {
    fn name(self) -> &'static str {
        match self {
            Self::Term => "SIGTERM",
            Self::Kill => "SIGKILL",
        }
    }
}

impl Instance {
    fn new(workload: &str, instance: u64, container_id: Option<String>) -> Arc<Self> {
        Arc::new(Self {
            workload: workload.to_owned(),
            instance,
            state: Mutex::new(InstanceState {
                container_id,
                ..InstanceState::default()
            }),
        })
    }

    fn state(&self) -> MutexGuard<'_, InstanceState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

pub struct ContainerRuntime {
    shared: Arc<Shared>,
    events: EventSender,
    /// Running containers found by `discover`, by workload, until adopted.
    discovered: HashMap<String, String>,
    /// Prepare, start, wait and signal tasks. Owned so that dropping the runtime (the agent
    /// going away without a shutdown) ends them: the containers live on for the next agent
    /// to adopt.
    tasks: JoinSet<()>,
}

impl std::fmt::Debug for ContainerRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContainerRuntime")
            .field("agent_id", &self.shared.agent_id)
            .field("discovered", &self.discovered)
            .finish_non_exhaustive()
    }
}

impl ContainerRuntime {
    pub fn new(config: ContainerConfig, events: EventSender) -> Self {
        Self {
            shared: Arc::new(Shared {
                short_agent_id: short_agent_id(&config.agent_id),
                agent_id: config.agent_id,
                logs: config.logs,
                artifacts: config.artifacts,
                state_dir: config.state_dir,
                engine: EngineCell::new(config.socket),
                record: tokio::sync::Mutex::new(()),
                instances: Mutex::new(HashMap::new()),
            }),
            events,
            discovered: HashMap::new(),
            tasks: JoinSet::new(),
        }
    }

    /// Runs exec probes inside the workloads' containers.
    pub fn exec_handle(&self) -> Arc<dyn ExecInWorkload> {
        Arc::new(ContainerExec {
            shared: self.shared.clone(),
        })
    }

    /// The containers this agent left running, for the supervisor to adopt (`adopt`);
    /// exited ones are removed. Finds nothing (and needs no engine) when no engine is
    /// installed.
    pub async fn discover(&mut self) -> Result<Vec<Adoptable>, ContainerError> {
        let engine = match self.shared.engine.get().await {
            Ok(engine) => engine,
            Err(ResolveError::NotFound { tried }) => {
                debug!(%tried, "no container engine; no containers to adopt");
                return Ok(Vec::new());
            }
            Err(error) => return Err(error.into()),
        };
        let filter = label_filter(&[
            format!("{LABEL_AGENT}={}", self.shared.agent_id),
            format!("{LABEL_MANAGED}=true"),
        ]);
        let containers: Vec<ContainerSummary> = engine
            .get(&format!("/containers/json?all=1&filters={filter}"))
            .await
            .map_err(doing("listing this agent's containers"))?;
        let mut by_workload: BTreeMap<String, ContainerSummary> = BTreeMap::new();
        let mut unwanted = Vec::new();
        for container in containers {
            let labels = container.labels.clone().unwrap_or_default();
            // The engine filtered by label already; this guards against one that did not.
            if label(&labels, LABEL_AGENT) != self.shared.agent_id {
                continue;
            }
            let workload = label(&labels, LABEL_WORKLOAD).to_owned();
            if container.state != "running" || validate_name(&workload).is_err() {
                unwanted.push(container);
                continue;
            }
            let canonical = format!(
                "/{}",
                container_name(&self.shared.short_agent_id, &workload)
            );
            match by_workload.remove(&workload) {
                // Two running containers for one workload: keep the one with the name
                // this agent gives it.
                Some(other) if !container.names.contains(&canonical) => {
                    by_workload.insert(workload, other);
                    unwanted.push(container);
                }
                Some(other) => {
                    by_workload.insert(workload, container);
                    unwanted.push(other);
                }
                None => {
                    by_workload.insert(workload, container);
                }
            }
        }
        for container in unwanted {
            debug!(container = %container.id, state = %container.state, "removing a leftover container");
            if let Err(error) = remove_container(&engine, &container.id).await {
                warn!(%error, container = %container.id, "cannot remove a leftover container");
            }
        }
        let mut adoptable = Vec::new();
        self.discovered.clear();
        for (workload, container) in by_workload {
            let inspect: ContainerInspect = match engine
                .get(&format!("/containers/{}/json", container.id))
                .await
            {
                Ok(inspect) => inspect,
                // Gone since it was listed: nothing to adopt.
                Err(error) if error.is_not_found() => continue,
                Err(error) => {
                    return Err(ContainerError::Engine {
                        doing: format!(
                            "inspecting container {} of workload {workload}",
                            container.id
                        ),
                        source: error,
                    });
                }
            };
            let labels = inspect.config.labels.clone().unwrap_or_default();
            adoptable.push(Adoptable {
                name: workload.clone(),
                spec_hash: label(&labels, LABEL_SPEC_HASH).to_owned(),
                key: label(&labels, LABEL_KEY).to_owned(),
                deployment: label(&labels, LABEL_DEPLOYMENT).to_owned(),
                revision: label(&labels, LABEL_REVISION).to_owned(),
                pid: (inspect.state.pid > 0).then_some(inspect.state.pid),
                started_at: parse_time(&inspect.state.started_at),
            });
            self.discovered.insert(workload, inspect.id);
        }
        Ok(adoptable)
    }

    /// Removes the images edgefleet pulled or loaded that no desired workload needs
    /// (`needed`: the `image` of every desired container workload) and no container uses.
    /// Returns the references removed.
    pub async fn collect_images(
        &self,
        needed: &BTreeSet<String>,
    ) -> Result<Vec<String>, ContainerError> {
        self.image_collector().collect(needed).await
    }

    /// A handle for `collect_images` that outlives lending the runtime out.
    pub fn image_collector(&self) -> ImageCollector {
        ImageCollector {
            shared: self.shared.clone(),
        }
    }

    fn signal(&mut self, name: &str, instance: u64, signal: StopSignal) {
        let Some(current) = self.shared.instances().get(name).cloned() else {
            debug!(
                workload = name,
                instance, "not signalling: no such container"
            );
            return;
        };
        if current.instance != instance {
            debug!(
                workload = name,
                instance, "not signalling: another instance runs"
            );
            return;
        }
        let container_id = {
            let mut state = current.state();
            if state.exited {
                debug!(workload = name, instance, "not signalling: already exited");
                return;
            }
            state.requested = state.requested.max(Some(signal));
            state.container_id.clone()
        };
        // Without a container yet, the start task sends the signal once it has one.
        if let Some(container_id) = container_id {
            let shared = self.shared.clone();
            let name = name.to_owned();
            self.tasks.spawn(async move {
                send_signal(&shared, &name, &container_id, signal).await;
            });
        }
    }

    fn reap_tasks(&mut self) {
        while self.tasks.try_join_next().is_some() {}
    }
}

impl Runtime for ContainerRuntime {
    fn prepare(&mut self, name: &str, instance: u64, launch: &Launch) {
        self.reap_tasks();
        let shared = self.shared.clone();
        let events = self.events.clone();
        let name = name.to_owned();
        let spec = launch.spec.clone();
        self.tasks.spawn(async move {
            let event = match prepare_image(&shared, &events, &name, instance, &spec).await {
                Ok(()) => Event::Prepared { name, instance },
                Err(error) => Event::PrepareFailed {
                    name,
                    instance,
                    error,
                },
            };
            let _ = events.send(event);
        });
    }

    fn start(&mut self, name: &str, instance: u64, launch: &Launch) {
        self.reap_tasks();
        if let Err(reason) = validate_name(name) {
            let _ = self.events.send(Event::StartFailed {
                name: name.to_owned(),
                instance,
                error: format!("invalid workload name {name:?}: {reason}"),
            });
            return;
        }
        let current = Instance::new(name, instance, None);
        self.shared
            .instances()
            .insert(name.to_owned(), current.clone());
        let shared = self.shared.clone();
        let events = self.events.clone();
        let launch = launch.clone();
        self.tasks
            .spawn(async move { run_instance(shared, events, current, launch).await });
    }

    fn stop(&mut self, name: &str, instance: u64) {
        self.signal(name, instance, StopSignal::Term);
    }

    fn kill(&mut self, name: &str, instance: u64) {
        self.signal(name, instance, StopSignal::Kill);
    }

    fn adopt(&mut self, name: &str, instance: u64) {
        self.reap_tasks();
        let shared = self.shared.clone();
        let events = self.events.clone();
        let Some(container_id) = self.discovered.remove(name) else {
            let _ = events.send(Event::Exited {
                name: name.to_owned(),
                instance,
                code: None,
                signal: None,
                reason: Some(format!(
                    "no running container of workload {name} was found to adopt"
                )),
            });
            return;
        };
        let current = Instance::new(name, instance, Some(container_id.clone()));
        shared.instances().insert(name.to_owned(), current.clone());
        self.tasks.spawn(async move {
            let engine = match shared.engine.get().await {
                Ok(engine) => engine,
                Err(error) => {
                    let exit = Exit::unknown(format!("adopting container {container_id}: {error}"));
                    finish(&shared, &events, &current, None, exit).await;
                    return;
                }
            };
            let logs = shared.logs.workload(&current.workload);
            let cursor = resume_cursor(&logs).await;
            supervise(
                &shared,
                &events,
                &current,
                &engine,
                &container_id,
                logs,
                cursor,
            )
            .await;
        });
    }
}

/// Removes unused images edgefleet brought (`ContainerRuntime::image_collector`).
#[derive(Clone)]
pub struct ImageCollector {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for ImageCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageCollector").finish_non_exhaustive()
    }
}

impl ImageCollector {
    /// See `ContainerRuntime::collect_images`.
    pub async fn collect(&self, needed: &BTreeSet<String>) -> Result<Vec<String>, ContainerError> {
        let shared = &self.shared;
        let _guard = shared.record.lock().await;
        let mut record = Record::load(&shared.state_dir)?;
        if record.images.is_empty() {
            return Ok(Vec::new());
        }
        let engine = match shared.engine.get().await {
            Ok(engine) => engine,
            Err(ResolveError::NotFound { .. }) => return Ok(Vec::new()),
            Err(error) => return Err(error.into()),
        };
        let mut recorded = Vec::new();
        for reference in record.images.keys() {
            let image_id = image_id(&engine, reference)
                .await
                .map_err(doing(format!("looking for image {reference}")))?;
            recorded.push(Recorded {
                reference: reference.clone(),
                image_id,
            });
        }
        let mut needed_ids = BTreeSet::new();
        for reference in needed {
            if let Some(id) = image_id(&engine, reference)
                .await
                .map_err(doing(format!("looking for image {reference}")))?
            {
                needed_ids.insert(id);
            }
        }
        let containers: Vec<ContainerSummary> = engine
            .get("/containers/json?all=1")
            .await
            .map_err(doing("listing containers"))?;
        let used_ids = containers
            .iter()
            .map(|c| normalize_image_id(&c.image_id))
            .collect();
        let plan = images::plan(&recorded, needed, &needed_ids, &used_ids);
        let mut removed = Vec::new();
        for reference in &plan.remove {
            match engine
                .delete(&format!("/images/{}", encode(reference, true)))
                .await
            {
                Ok(_) => {
                    record.images.remove(reference);
                    removed.push(reference.clone());
                }
                Err(error) if error.is_not_found() => {
                    record.images.remove(reference);
                }
                // In use after all (a container created since the list): kept.
                Err(error) => {
                    debug!(%error, image = %reference, "image not removed");
                }
            }
        }
        for reference in &plan.forget {
            record.images.remove(reference);
        }
        record.save(&shared.state_dir)?;
        Ok(removed)
    }
}

/// The id of `image` in the engine, `None` if the engine does not have it.
async fn image_id(engine: &Engine, image: &str) -> Result<Option<String>, EngineError> {
    match engine
        .get::<ImageInspect>(&format!("/images/{}/json", encode(image, true)))
        .await
    {
        Ok(inspect) => Ok(Some(normalize_image_id(&inspect.id))),
        Err(error) if error.is_not_found() => Ok(None),
        Err(error) => Err(error),
    }
}

/// Image ids without their `sha256:` prefix (engines differ on whether they show it).
fn normalize_image_id(id: &str) -> String {
    id.strip_prefix("sha256:").unwrap_or(id).to_owned()
}

fn parse_time(text: &str) -> Option<Timestamp> {
    Timestamp::parse(text, &Rfc3339)
        .ok()
        .filter(|at| at.year() > 1)
}

// --- Prepare ---

enum Fetch<'a> {
    Nothing,
    Pull,
    Load(&'a ArtifactRef),
}

async fn prepare_image(
    shared: &Shared,
    events: &EventSender,
    name: &str,
    instance: u64,
    spec: &WorkloadSpec,
) -> Result<(), String> {
    let image = spec
        .image
        .as_deref()
        .filter(|image| !image.trim().is_empty())
        .ok_or_else(|| format!("container workload {name} has no image"))?;
    let engine = shared.engine.get().await.map_err(|e| e.to_string())?;
    let present = image_id(&engine, image)
        .await
        .map_err(|e| format!("looking for image {image} for workload {name}: {e}"))?
        .is_some();
    let fetch = match (&spec.image_artifact, spec.image_pull_policy) {
        (Some(artifact), PullPolicy::Always) => Fetch::Load(artifact),
        (Some(artifact), _) if !present => Fetch::Load(artifact),
        (None, PullPolicy::Always) => Fetch::Pull,
        (None, PullPolicy::IfNotPresent) if !present => Fetch::Pull,
        (None, PullPolicy::Never) if !present => {
            return Err(format!(
                "image {image} is not on the node and workload {name} has imagePullPolicy: never (load the image into the engine, or give the workload an imageArtifact)"
            ));
        }
        _ => Fetch::Nothing,
    };
    let progress = |message: String| {
        let _ = events.send(Event::Progress {
            name: name.to_owned(),
            instance,
            message,
        });
    };
    let origin = match fetch {
        Fetch::Nothing => return Ok(()),
        Fetch::Pull => {
            pull_image(&engine, image, &progress)
                .await
                .map_err(|e| format!("pulling {image} for workload {name}: {e}"))?;
            Origin::Pulled
        }
        Fetch::Load(artifact) => {
            load_archive(shared, &engine, name, image, artifact, &progress).await?;
            Origin::Loaded
        }
    };
    let now_present = image_id(&engine, image)
        .await
        .map_err(|e| format!("looking for image {image} for workload {name}: {e}"))?;
    if now_present.is_none() {
        return Err(format!(
            "image {image} for workload {name} is still not on the node after it was {}",
            match origin {
                Origin::Pulled => "pulled",
                Origin::Loaded => "loaded",
            }
        ));
    }
    if !present {
        shared.remember_image(image, origin).await;
    }
    Ok(())
}

async fn pull_image(
    engine: &Engine,
    image: &str,
    progress: &(dyn Fn(String) + Sync),
) -> Result<(), EngineError> {
    let (from_image, tag) = pull_parameters(image);
    let path = format!(
        "/images/create?fromImage={}&tag={}",
        encode(from_image, false),
        encode(tag, false)
    );
    let response = engine.send(Method::POST, &path, None).await?;
    let mut layers = PullProgress::default();
    let mut throttle = Throttle::new();
    json_lines(
        response,
        &Engine::request_name(&Method::POST, &path),
        |message| {
            layers.update(message);
            if let Some((done, total)) = layers.totals()
                && throttle.ready(Instant::now())
            {
                progress(format!(
                    "pulling {image}: {}",
                    describe_bytes(done, Some(total))
                ));
            }
        },
    )
    .await
}

async fn load_archive(
    shared: &Shared,
    engine: &Engine,
    name: &str,
    image: &str,
    artifact: &ArtifactRef,
    progress: &(dyn Fn(String) + Sync),
) -> Result<(), String> {
    let throttle = Mutex::new(Throttle::new());
    let report = |done: u64, total: Option<u64>| {
        let ready = throttle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .ready(Instant::now());
        if ready {
            progress(format!(
                "fetching image archive {} for {image}: {}",
                artifact.name,
                describe_bytes(done, total)
            ));
        }
    };
    let path = shared
        .artifacts
        .fetch(artifact, &report)
        .await
        .map_err(|e| format!("fetching image archive {artifact} for workload {name}: {e}"))?;
    progress(format!(
        "loading image archive {} into the engine",
        artifact.name
    ));
    let request = &Engine::request_name(&Method::POST, "/images/load?quiet=1");
    let response = engine
        .post_file("/images/load?quiet=1", &path, "application/x-tar")
        .await
        .map_err(|e| format!("loading image archive {artifact} for workload {name}: {e}"))?;
    let mut loaded = Vec::new();
    json_lines(response, request, |message| {
        if let Some(text) = &message.stream
            && let Some(image) = text.trim().strip_prefix("Loaded image: ")
        {
            loaded.push(image.to_owned());
        }
    })
    .await
    .map_err(|e| format!("loading image archive {artifact} for workload {name}: {e}"))?;
    if image_id(engine, image).await.ok().flatten().is_none() {
        return Err(format!(
            "image archive {artifact} does not hold image {image} (it holds: {})",
            if loaded.is_empty() {
                "nothing the engine named".to_owned()
            } else {
                loaded.join(", ")
            }
        ));
    }
    Ok(())
}

// --- Start, wait, logs ---

/// How a container ended.
#[derive(Debug)]
struct Exit {
    code: Option<i32>,
    reason: Option<String>,
}

impl Exit {
    fn unknown(reason: String) -> Self {
        Self {
            code: None,
            reason: Some(reason),
        }
    }
}

struct StartedContainer {
    engine: Engine,
    container_id: String,
    pid: Option<u32>,
    at: Timestamp,
}

async fn run_instance(
    shared: Arc<Shared>,
    events: EventSender,
    current: Arc<Instance>,
    launch: Launch,
) {
    let name = current.workload.clone();
    let instance = current.instance;
    let started = match create_and_start(&shared, &current, &launch).await {
        Ok(started) => started,
        Err(error) => {
            shared.forget(&current);
            let _ = events.send(Event::StartFailed {
                name,
                instance,
                error,
            });
            return;
        }
    };
    let _ = events.send(Event::Started {
        name: name.clone(),
        instance,
        pid: started.pid,
        at: started.at,
    });
    // A stop asked for while the container was being created.
    let requested = current.state().requested;
    if let Some(signal) = requested {
        send_signal(&shared, &name, &started.container_id, signal).await;
    }
    let logs = shared.logs.workload(&name);
    supervise(
        &shared,
        &events,
        &current,
        &started.engine,
        &started.container_id,
        logs,
        Cursor::fresh(),
    )
    .await;
}

async fn create_and_start(
    shared: &Shared,
    current: &Instance,
    launch: &Launch,
) -> Result<StartedContainer, String> {
    let workload = current.workload.as_str();
    let body = create_request(&shared.agent_id, workload, launch)?;
    let engine = shared.engine.get().await.map_err(|e| e.to_string())?;
    let container_name = container_name(&shared.short_agent_id, workload);
    remove_leftover(shared, &engine, &container_name).await?;
    let created: Created = engine
        .post(
            &format!("/containers/create?name={}", encode(&container_name, false)),
            &body,
        )
        .await
        .map_err(|e| format!("creating container {container_name} for workload {workload}: {e}"))?;
    let container_id = created.id;
    current.state().container_id = Some(container_id.clone());
    let started = async {
        engine
            .post_empty(&format!("/containers/{container_id}/start"))
            .await
            .map_err(|e| {
                format!("starting container {container_name} for workload {workload}: {e}")
            })?;
        engine
            .get::<ContainerInspect>(&format!("/containers/{container_id}/json"))
            .await
            .map_err(|e| {
                format!("inspecting container {container_name} of workload {workload}: {e}")
            })
    };
    match started.await {
        Ok(inspect) => Ok(StartedContainer {
            engine,
            pid: (inspect.state.pid > 0).then_some(inspect.state.pid),
            at: parse_time(&inspect.state.started_at).unwrap_or_else(Timestamp::now_utc),
            container_id,
        }),
        Err(error) => {
            if let Err(remove_error) = remove_container(&engine, &container_id).await {
                warn!(error = %remove_error, container = %container_id, "cannot remove a container that did not start");
            }
            Err(error)
        }
    }
}

/// Removes a container left with this workload's name (by a crashed agent, or an instance
/// whose removal failed), refusing to touch one this agent did not create.
async fn remove_leftover(
    shared: &Shared,
    engine: &Engine,
    container_name: &str,
) -> Result<(), String> {
    let inspect = match engine
        .get::<ContainerInspect>(&format!("/containers/{container_name}/json"))
        .await
    {
        Ok(inspect) => inspect,
        Err(error) if error.is_not_found() => return Ok(()),
        Err(error) => {
            return Err(format!(
                "looking for a leftover container {container_name}: {error}"
            ));
        }
    };
    let labels = inspect.config.labels.unwrap_or_default();
    let owner = label(&labels, LABEL_AGENT);
    if owner != shared.agent_id {
        return Err(format!(
            "a container named {container_name} exists that this agent did not create (its {LABEL_AGENT} label is {owner:?}); remove or rename it"
        ));
    }
    debug!(container = %inspect.id, name = container_name, "removing leftover container");
    remove_container(engine, &inspect.id)
        .await
        .map_err(|e| format!("removing leftover container {container_name}: {e}"))
}

/// Removes a container (force: also a running one), waiting out a removal already under
/// way. A container that is already gone is no error.
async fn remove_container(engine: &Engine, container_id: &str) -> Result<(), EngineError> {
    let mut attempts = 0;
    loop {
        match engine
            .delete(&format!("/containers/{container_id}?force=1&v=1"))
            .await
        {
            Ok(_) => return Ok(()),
            Err(error) if error.is_not_found() => return Ok(()),
            Err(error)
                if error.status() == Some(hyper::StatusCode::CONFLICT)
                    && attempts < REMOVAL_RETRIES =>
            {
                attempts += 1;
                tokio::time::sleep(REMOVAL_RETRY_AFTER).await;
            }
            Err(error) => return Err(error),
        }
    }
}

async fn send_signal(shared: &Shared, name: &str, container_id: &str, signal: StopSignal) {
    let engine = match shared.engine.get().await {
        Ok(engine) => engine,
        Err(error) => {
            warn!(%error, workload = name, signal = signal.name(), "cannot signal container");
            return;
        }
    };
    let result = engine
        .post_empty(&format!(
            "/containers/{container_id}/kill?signal={}",
            signal.name()
        ))
        .await;
    match result {
        Ok(_) => debug!(
            workload = name,
            container = container_id,
            signal = signal.name(),
            "signalled container"
        ),
        // Gone or no longer running: it exited already, which is what was asked.
        Err(error)
            if error.is_not_found() || error.status() == Some(hyper::StatusCode::CONFLICT) =>
        {
            debug!(%error, workload = name, "container already stopped");
        }
        Err(error) => {
            warn!(%error, workload = name, container = container_id, signal = signal.name(), "cannot signal container");
        }
    }
}

/// Copies the container's output while waiting for it to exit; then reports the exit
/// and removes the container.
async fn supervise(
    shared: &Shared,
    events: &EventSender,
    current: &Arc<Instance>,
    engine: &Engine,
    container_id: &str,
    logs: WorkloadLogs,
    cursor: Cursor,
) {
    // Owned here: when this task ends or is aborted, the copy ends with it.
    let mut copy = JoinSet::new();
    copy.spawn(copy_logs(
        engine.clone(),
        container_id.to_owned(),
        logs,
        cursor,
    ));
    let exit = wait_for_exit(engine, container_id, current).await;
    // The copy's stream ends with the container; give it time to store the last lines.
    let _ = tokio::time::timeout(LOG_DRAIN_TIMEOUT, copy.join_next()).await;
    drop(copy);
    finish(shared, events, current, Some((engine, container_id)), exit).await;
}

async fn finish(
    shared: &Shared,
    events: &EventSender,
    current: &Arc<Instance>,
    container: Option<(&Engine, &str)>,
    exit: Exit,
) {
    shared.forget(current);
    // Removed before `Exited` goes out, so that the next instance finds its name free.
    if let Some((engine, container_id)) = container
        && let Err(error) = remove_container(engine, container_id).await
    {
        warn!(%error, workload = %current.workload, container = container_id, "cannot remove exited container; the next start or agent start removes it");
    }
    let _ = events.send(Event::Exited {
        name: current.workload.clone(),
        instance: current.instance,
        code: exit.code,
        signal: None,
        reason: exit.reason,
    });
}

/// Waits until the container is no longer running, through engine restarts.
async fn wait_for_exit(engine: &Engine, container_id: &str, current: &Instance) -> Exit {
    let mut warned = false;
    let status_code = loop {
        match engine
            .call_untimed::<WaitAnswer>(Method::POST, &format!("/containers/{container_id}/wait"))
            .await
        {
            Ok(answer) => break answer.status_code,
            Err(error) if error.is_not_found() => {
                return Exit::unknown(format!(
                    "container {} disappeared from the engine",
                    short_id(container_id)
                ));
            }
            Err(error) => {
                if !warned {
                    warn!(%error, workload = %current.workload, container = container_id, "cannot wait for container; retrying");
                    warned = true;
                }
                tokio::time::sleep(RETRY_AFTER).await;
            }
        }
    };
    let inspect = engine
        .get::<ContainerInspect>(&format!("/containers/{container_id}/json"))
        .await
        .ok();
    let code = inspect
        .as_ref()
        .map(|i| i.state.exit_code)
        .or_else(|| i32::try_from(status_code).ok());
    let signalled = current.state().requested.is_some();
    let reason = inspect
        .as_ref()
        .and_then(|i| exit_reason(engine.kind(), i, signalled));
    Exit { code, reason }
}

/// Why a container ended, when the engine knows more than its exit code.
fn exit_reason(kind: EngineKind, inspect: &ContainerInspect, signalled: bool) -> Option<String> {
    let limit = u64::try_from(inspect.host_config.memory)
        .ok()
        .filter(|&m| m > 0)
        .map(ByteSize);
    if inspect.state.oom_killed {
        return Some(match limit {
            Some(limit) => format!("out of memory (limit {limit})"),
            None => "out of memory".to_owned(),
        });
    }
    // Podman does not report OOM kills on every cgroup layout: a SIGKILL nobody here sent,
    // under a memory limit, is most likely one.
    match (kind, limit) {
        (EngineKind::Podman, Some(limit)) if inspect.state.exit_code == 137 && !signalled => {
            Some(format!(
                "killed (exit code 137) under a memory limit of {limit}: probably out of memory"
            ))
        }
        _ => None,
    }
}

fn short_id(container_id: &str) -> &str {
    container_id.get(..12).unwrap_or(container_id)
}

/// Where the copy of an adopted container's output continues: after the newest line the
/// log holds (read from its files, so off the async threads).
async fn resume_cursor(logs: &WorkloadLogs) -> Cursor {
    let logs = logs.clone();
    let counted = tokio::task::spawn_blocking(move || {
        let newest = logs.last_timestamp()?;
        let in_second = match logs.read(Some(second_of(newest)), None) {
            Ok(lines) => lines.iter().filter(|line| line.ts <= newest).count(),
            Err(error) => {
                // Without the count, the whole second is taken as copied.
                warn!(%error, workload = logs.name(), "cannot read the log to resume copying; skipping the rest of its newest second");
                usize::MAX
            }
        };
        Some((newest, in_second))
    })
    .await;
    match counted {
        Ok(Some((newest, in_second))) => Cursor::resume_after(Some(newest), in_second),
        _ => Cursor::fresh(),
    }
}

#[derive(Debug, thiserror::Error)]
enum CopyError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Frame(#[from] FrameError),
}

/// Copies the container's output into its log until the container stops, reconnecting
/// (without doubling lines) when the connection drops.
async fn copy_logs(engine: Engine, container_id: String, logs: WorkloadLogs, mut cursor: Cursor) {
    let mut warned = false;
    loop {
        match copy_once(&engine, &container_id, &logs, &mut cursor).await {
            Ok(()) => {
                // The stream ends when the container stops, or when the engine goes away.
                match engine
                    .get::<ContainerInspect>(&format!("/containers/{container_id}/json"))
                    .await
                {
                    Ok(inspect) if !inspect.state.running => return,
                    Err(error) if error.is_not_found() => return,
                    _ => {}
                }
            }
            Err(error) => {
                if !warned {
                    warn!(%error, workload = logs.name(), container = %container_id, "copying container output; retrying");
                    warned = true;
                }
            }
        }
        tokio::time::sleep(RETRY_AFTER).await;
        cursor.rewind();
    }
}

async fn copy_once(
    engine: &Engine,
    container_id: &str,
    logs: &WorkloadLogs,
    cursor: &mut Cursor,
) -> Result<(), CopyError> {
    let mut path =
        format!("/containers/{container_id}/logs?follow=1&stdout=1&stderr=1&timestamps=1");
    if let Some(since) = cursor.since() {
        path.push_str(&format!("&since={since}"));
    }
    let response = engine.send(Method::GET, &path, None).await?;
    let request = Engine::request_name(&Method::GET, &path);
    let mut body = response.into_body();
    let mut demux = Demux::default();
    while let Some(chunk) = next_chunk(&mut body, &request).await {
        demux.push(&chunk?);
        while let Some((stream, payload)) = demux.next_frame()? {
            let (at, line) = split_timestamp(&payload);
            let at = at.unwrap_or_else(Timestamp::now_utc);
            if cursor.admit(at) {
                logs.write_line(stream, at, line);
            }
        }
    }
    Ok(())
}

// --- Exec probes ---

/// Runs commands inside the workloads' containers (`ContainerRuntime::exec_handle`).
#[derive(Clone)]
struct ContainerExec {
    shared: Arc<Shared>,
}

impl ExecInWorkload for ContainerExec {
    fn exec<'a>(
        &'a self,
        workload: &'a str,
        command: &'a [String],
        timeout: Duration,
    ) -> BoxFuture<'a, Result<i32, String>> {
        Box::pin(self.run(workload, command, timeout))
    }
}

impl ContainerExec {
    async fn run(
        &self,
        workload: &str,
        command: &[String],
        timeout: Duration,
    ) -> Result<i32, String> {
        let container_id = self
            .shared
            .running_container(workload)
            .ok_or_else(|| format!("workload {workload} has no running container"))?;
        let engine = self.shared.engine.get().await.map_err(|e| e.to_string())?;
        let failed = |e: EngineError| format!("running {command:?} in workload {workload}: {e}");
        let created: Created = engine
            .post(
                &format!("/containers/{container_id}/exec"),
                &CreateExec {
                    cmd: command.to_vec(),
                    attach_stdout: true,
                    attach_stderr: true,
                },
            )
            .await
            .map_err(failed)?;
        let exec_id = created.id;
        // Attached: the output stream ends when the command does (Podman does not
        // report a detached command's end).
        let run = async {
            let response = engine
                .post_streaming(
                    &format!("/exec/{exec_id}/start"),
                    &StartExec {
                        detach: false,
                        tty: false,
                    },
                )
                .await?;
            engine::drain(
                response,
                &Engine::request_name(&Method::POST, &format!("/exec/{exec_id}/start")),
            )
            .await
        };
        match tokio::time::timeout(timeout, run).await {
            Ok(result) => result.map_err(failed)?,
            Err(_) => {
                kill_exec(&engine, &exec_id, &container_id).await;
                return Err(format!(
                    "{command:?} in workload {workload} ran longer than {timeout:?} and was killed"
                ));
            }
        }
        let deadline = Instant::now() + EXEC_EXIT_CODE_WAIT;
        loop {
            let inspect: ExecInspect = engine
                .get(&format!("/exec/{exec_id}/json"))
                .await
                .map_err(failed)?;
            match inspect.exit_code {
                Some(code) if !inspect.running => return Ok(code),
                _ if Instant::now() >= deadline => {
                    return Err(format!(
                        "{command:?} in workload {workload} ended its output but the engine reports no exit code"
                    ));
                }
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }
}

/// Kills an exec'd command that ran too long. The engine has no call for that, so its
/// process is killed on the node, after checking that the pid is in the container's
/// cgroup (an agent in another pid namespace than the engine must not kill a stranger).
async fn kill_exec(engine: &Engine, exec_id: &str, container_id: &str) {
    let Ok(inspect) = engine
        .get::<ExecInspect>(&format!("/exec/{exec_id}/json"))
        .await
    else {
        return;
    };
    if !inspect.running || inspect.pid == 0 {
        return;
    }
    let cgroup =
        std::fs::read_to_string(format!("/proc/{}/cgroup", inspect.pid)).unwrap_or_default();
    if !cgroup.contains(container_id) {
        warn!(
            pid = inspect.pid,
            container = container_id,
            "cannot kill a timed-out exec probe: its pid is not in the container's cgroup here"
        );
        return;
    }
    let Ok(pid) = i32::try_from(inspect.pid) else {
        return;
    };
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    );
}

#[cfg(test)]
mod tests {
    use super::engine::{ContainerState, HostConfigAnswer};
    use super::*;

    fn ended(exit_code: i32, oom_killed: bool, memory: i64) -> ContainerInspect {
        ContainerInspect {
            id: "c1".to_owned(),
            state: ContainerState {
                exit_code,
                oom_killed,
                ..ContainerState::default()
            },
            host_config: HostConfigAnswer { memory },
            ..ContainerInspect::default()
        }
    }

    #[test]
    fn exit_reasons_name_the_memory_limit() {
        let limit = 64 << 20;
        let check = |kind, inspect: &ContainerInspect, signalled, expected: Option<&str>| {
            assert_eq!(
                exit_reason(kind, inspect, signalled).as_deref(),
                expected,
                "{kind} {inspect:?} signalled: {signalled}"
            );
        };
        for kind in [EngineKind::Docker, EngineKind::Podman] {
            check(
                kind,
                &ended(137, true, limit),
                false,
                Some("out of memory (limit 64Mi)"),
            );
            check(kind, &ended(137, true, 0), false, Some("out of memory"));
            check(kind, &ended(1, false, limit), false, None);
            check(kind, &ended(137, false, 0), false, None);
            // Killed by the agent: no guessing.
            check(kind, &ended(137, false, limit), true, None);
        }
        check(EngineKind::Docker, &ended(137, false, limit), false, None);
        check(
            EngineKind::Podman,
            &ended(137, false, limit),
            false,
            Some("killed (exit code 137) under a memory limit of 64Mi: probably out of memory"),
        );
    }

    #[test]
    fn image_ids_compare_without_their_prefix() {
        assert_eq!(normalize_image_id("sha256:abc"), "abc");
        assert_eq!(normalize_image_id("abc"), "abc");
        assert_eq!(short_id("0123456789abcdef"), "0123456789ab");
        assert_eq!(short_id("short"), "short");
    }
}
