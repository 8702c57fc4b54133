//! The reconcile loop: the shell around `edgefleet_core::supervisor::Supervisor`.
//!
//! It feeds the supervisor what arrives (a new desired state, a runtime event, the passing
//! of a deadline), hands the effects it answers with to the runtime, and publishes the
//! resulting status. It decides nothing itself: restarts, backoff, crash loops and
//! replacements are all the supervisor's. A desired state equal to the current one yields
//! no effects, which is why a reconnect never restarts a healthy workload.
//!
//! It is also where the flight recorder hears about workloads (`Witness`): each start,
//! failed start, exit, stop, entry into a crash loop, and start of a rolled-back revision,
//! with the deployment and revision the instance belongs to.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use edgefleet_core::supervisor::{Adopted, Effect, Event, Supervisor, Wanted};
use edgefleet_wire::api::{DesiredState, DesiredWorkload};
use edgefleet_wire::manifest::WorkloadSpec;
use edgefleet_wire::node::{NodeEventKind, WorkloadState, WorkloadStatus};
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use crate::data_api::DataApi;
use crate::files::{self, NodeContext, Rendered};
use crate::health::{self, ProbeHandle};
use crate::recorder::{NewEvent, Recorder};
use crate::runtime::{self, EventSender, ExecInWorkload, Runtime};
use crate::shutdown::Shutdown;

/// How long shutdown waits for processes that were sent SIGKILL and still did not exit
/// (stuck in uninterruptible IO): the agent exits rather than hang.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// What the agent runs, as reported to the server.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Status {
    /// The generation of the desired state last handed to the supervisor (0: none).
    pub applied_generation: u64,
    pub workloads: Vec<WorkloadStatus>,
}

/// The desired state the reconciler should run; `None` until one is known.
pub type DesiredSender = watch::Sender<Option<Arc<DesiredState>>>;
pub type DesiredReceiver = watch::Receiver<Option<Arc<DesiredState>>>;

pub struct Reconciler {
    supervisor: Supervisor,
    runtime: Box<dyn Runtime>,
    events: mpsc::UnboundedReceiver<Event>,
    status: watch::Sender<Status>,
    applied_generation: u64,
    /// The desired state last applied: where a started instance's deployment and
    /// revision come from.
    desired: Option<Arc<DesiredState>>,
    witness: Witness,
    /// Where the shell reports failures it finds itself (a file that cannot be written):
    /// the runtime's event channel.
    loopback: Option<EventSender>,
    files: Option<FilesConfig>,
    /// Each workload's files as last rendered for the desired state.
    rendered: HashMap<String, Rendered>,
    probes: Option<ProbeConfig>,
    /// The probes of each running instance, by workload: `(instance, handle)`.
    probing: HashMap<String, (u64, ProbeHandle)>,
    /// The local API workloads are told about, with their tokens.
    data_api: Option<Arc<DataApi>>,
}

/// Where workloads' files are rendered, and with what.
#[derive(Debug, Clone)]
pub struct FilesConfig {
    /// `<data>/files`: one directory per workload.
    pub root: PathBuf,
    pub node: NodeContext,
}

/// How exec probes run: on the node, or inside the workload's container.
#[derive(Clone)]
pub struct ProbeConfig {
    pub host: Arc<dyn ExecInWorkload>,
    pub container: Option<Arc<dyn ExecInWorkload>>,
}

fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

fn sleep_until(at: Instant) -> tokio::time::Sleep {
    tokio::time::sleep_until(tokio::time::Instant::from_std(at))
}

impl Reconciler {
    /// A reconciler driving `runtime`, which reports on the sender paired with `events`.
    pub fn new(
        runtime: Box<dyn Runtime>,
        events: mpsc::UnboundedReceiver<Event>,
    ) -> (Self, watch::Receiver<Status>) {
        let (status, status_rx) = watch::channel(Status::default());
        let reconciler = Self {
            supervisor: Supervisor::new(),
            runtime,
            events,
            status,
            applied_generation: 0,
            desired: None,
            witness: Witness::default(),
            loopback: None,
            files: None,
            rendered: HashMap::new(),
            probes: None,
            probing: HashMap::new(),
            data_api: None,
        };
        (reconciler, status_rx)
    }

    /// Renders workloads' files (see `files`); `loopback` is the runtime's event sender,
    /// where a file that cannot be written fails the start.
    pub fn with_files(mut self, config: FilesConfig, loopback: EventSender) -> Self {
        self.files = Some(config);
        self.loopback = Some(loopback);
        self
    }

    /// Gives every workload the local API's socket and its token in its environment, and
    /// keeps the data API's view of the desired state current.
    pub fn with_data_api(mut self, api: Arc<DataApi>) -> Self {
        self.data_api = Some(api);
        self
    }

    /// Runs the liveness and readiness probes of workloads that have them.
    pub fn with_probes(mut self, config: ProbeConfig) -> Self {
        self.probes = Some(config);
        self
    }

    /// Takes over instances found running when the agent started (containers): the
    /// supervisor keeps them if the desired state still wants them as they are, and the
    /// runtime reports on them from now on. Call before `run`.
    pub fn adopt(
        &mut self,
        found: Vec<runtime::Adoptable>,
        mut adopt: impl FnMut(&mut dyn Runtime, &str, u64),
    ) {
        for found in found {
            let instance = self.supervisor.adopt(
                now(),
                Adopted {
                    name: found.name.clone(),
                    key: found.key,
                    spec_hash: found.spec_hash,
                    deployment: found.deployment,
                    revision: found.revision,
                    pid: found.pid,
                    started_at: found.started_at,
                },
            );
            info!(workload = %found.name, instance, "adopted a running instance from the previous agent run");
            adopt(self.runtime.as_mut(), &found.name, instance);
        }
    }

    /// Records workload events in `recorder`.
    pub fn with_recorder(mut self, recorder: Arc<Recorder>) -> Self {
        self.witness.recorder = Some(recorder);
        self
    }

    /// Runs desired states from `desired` until `shutdown`, then stops every workload
    /// (SIGTERM, SIGKILL after its grace period) and returns once they are gone.
    pub async fn run(mut self, mut desired: DesiredReceiver, mut shutdown: Shutdown) {
        let initial = desired.borrow_and_update().clone();
        if let Some(state) = initial {
            self.apply(state);
        }
        let mut desired_open = true;
        loop {
            let deadline = self.supervisor.next_deadline();
            tokio::select! {
                biased;
                () = shutdown.wait() => break,
                Some(event) = self.events.recv() => self.on_event(event),
                changed = desired.changed(), if desired_open => match changed {
                    Ok(()) => {
                        let state = desired.borrow_and_update().clone();
                        if let Some(state) = state {
                            self.apply(state);
                        }
                    }
                    // Nobody will send desired states any more; keep running the last one.
                    Err(_) => desired_open = false,
                },
                () = sleep_until(deadline.unwrap_or_else(now)), if deadline.is_some() => {
                    let effects = self.supervisor.tick(now());
                    self.execute(effects);
                }
            }
            self.publish();
        }
        self.stop_all().await;
    }

    fn apply(&mut self, state: Arc<DesiredState>) {
        if state.generation != self.applied_generation {
            info!(
                generation = state.generation,
                workloads = state.workloads.len(),
                "applying desired state"
            );
        }
        let wanted: Vec<Wanted> = state
            .workloads
            .iter()
            .map(|workload| Wanted {
                key: self.render(workload),
                workload: workload.clone(),
            })
            .collect();
        if let Some(api) = &self.data_api {
            // Before anything starts: a new workload's first publish must find it.
            let labels = state
                .workloads
                .iter()
                .find(|w| !w.labels.is_empty())
                .map(|w| w.labels.clone())
                .unwrap_or_default();
            api.update(&state, &labels);
        }
        let effects = self.supervisor.set_wanted(now(), &wanted);
        self.applied_generation = state.generation;
        self.desired = Some(state);
        self.write_live_files();
        self.execute(effects);
        self.start_missing_probes();
        self.publish();
    }

    /// Renders `workload`'s files and returns its replacement key.
    fn render(&mut self, workload: &DesiredWorkload) -> String {
        let name = &workload.spec.name;
        let Some(config) = &self.files else {
            return workload.spec_hash.clone();
        };
        if workload.spec.files.is_empty() {
            self.rendered.remove(name);
            return workload.spec_hash.clone();
        }
        let rendered = files::render(&config.node, workload);
        let key = files::key(workload, &rendered);
        self.rendered.insert(name.clone(), rendered);
        key
    }

    /// Writes the files that change without a restart, for the workloads that keep
    /// running; removes the files of workloads no longer desired.
    fn write_live_files(&mut self) {
        let Some(config) = &self.files else {
            return;
        };
        let Some(state) = &self.desired else {
            return;
        };
        let running: BTreeSet<String> = self
            .supervisor
            .running()
            .into_iter()
            .map(|(name, _, _)| name)
            .collect();
        for workload in &state.workloads {
            let name = &workload.spec.name;
            if !running.contains(name) {
                continue;
            }
            if let Some(Ok(rendered)) = self.rendered.get(name)
                && let Err(error) = files::write(&files::dir(&config.root, name), rendered, true)
            {
                warn!(workload = %name, %error, "cannot update the workload's files");
            }
        }
        let wanted: BTreeSet<&str> = state
            .workloads
            .iter()
            .filter(|w| !w.spec.files.is_empty())
            .map(|w| w.spec.name.as_str())
            .collect();
        self.rendered
            .retain(|name, _| wanted.contains(name.as_str()));
        files::remove_unwanted(&config.root, &wanted);
    }

    /// Starts probes for running instances that have none yet (instances adopted before
    /// their spec was known).
    fn start_missing_probes(&mut self) {
        for (name, instance, _) in self.supervisor.running() {
            if self.probing.get(&name).is_none_or(|(i, _)| *i != instance) {
                self.start_probes(&name, instance);
            }
        }
    }

    fn start_probes(&mut self, name: &str, instance: u64) {
        let Some(config) = &self.probes else {
            return;
        };
        let Some(workload) = self.desired_workload(name) else {
            return;
        };
        let spec = &workload.spec;
        let exec = match (spec.runtime, &config.container) {
            (edgefleet_wire::manifest::Runtime::Container, Some(container)) => container.clone(),
            _ => config.host.clone(),
        };
        let Some(events) = self.loopback.clone() else {
            return;
        };
        let spec = spec.clone();
        if let Some(handle) = health::spawn(name, instance, &spec, exec, events) {
            self.probing.insert(name.to_owned(), (instance, handle));
        }
    }

    fn desired_workload(&self, name: &str) -> Option<&DesiredWorkload> {
        self.desired
            .as_ref()?
            .workloads
            .iter()
            .find(|w| w.spec.name == name)
    }

    /// The launch for an effect about `name`: the desired workload's labels, and for a
    /// start, its files written (the error fails the start).
    fn launch(
        &self,
        name: &str,
        spec: WorkloadSpec,
        start: bool,
    ) -> Result<runtime::Launch, String> {
        let workload = self.desired_workload(name);
        let spec_hash = workload
            .map(|w| w.spec_hash.clone())
            .unwrap_or_else(|| edgefleet_core::hash::workload_hash(&spec));
        let mut files_dir = None;
        if start
            && !spec.files.is_empty()
            && let Some(config) = &self.files
        {
            let dir = files::dir(&config.root, name);
            match self.rendered.get(name) {
                Some(Ok(rendered)) => files::write(&dir, rendered, false)?,
                Some(Err(error)) => return Err(error.clone()),
                None => return Err("its files were not rendered".to_owned()),
            }
            files_dir = Some(dir);
        }
        let key = workload
            .map(|w| match self.rendered.get(name) {
                Some(rendered) => files::key(w, rendered),
                None => w.spec_hash.clone(),
            })
            .unwrap_or_else(|| spec_hash.clone());
        Ok(runtime::Launch {
            spec,
            files_dir,
            spec_hash,
            key,
            deployment: workload.map(|w| w.deployment.clone()).unwrap_or_default(),
            revision: workload.map(|w| w.revision.clone()).unwrap_or_default(),
            local_api: self.data_api.as_ref().map(|api| runtime::LocalApiAccess {
                socket: api.socket().to_owned(),
                token: api.token(name),
            }),
        })
    }

    fn on_event(&mut self, event: Event) {
        self.witness.event(&event);
        match &event {
            Event::Prepared { instance, .. }
            | Event::PrepareFailed { instance, .. }
            | Event::StartFailed { instance, .. } => self.runtime.forget(*instance),
            Event::Exited { name, instance, .. } => {
                self.runtime.forget(*instance);
                if self.probing.get(name).is_some_and(|(i, _)| i == instance) {
                    self.probing.remove(name);
                }
            }
            Event::Unhealthy { name, instance, .. } => {
                if self.probing.get(name).is_some_and(|(i, _)| i == instance) {
                    self.probing.remove(name);
                }
            }
            Event::Progress { .. } | Event::Started { .. } | Event::Readiness { .. } => {}
        }
        let started = match &event {
            Event::Started { name, instance, .. } => Some((name.clone(), *instance)),
            _ => None,
        };
        let effects = self.supervisor.on_event(now(), event);
        if let Some((name, instance)) = started
            && self
                .supervisor
                .running()
                .iter()
                .any(|(n, i, _)| *n == name && *i == instance)
        {
            self.start_probes(&name, instance);
        }
        self.execute(effects);
    }

    fn execute(&mut self, effects: Vec<Effect>) {
        for effect in effects {
            self.witness.effect(&effect, self.desired.as_deref());
            match effect {
                Effect::Prepare {
                    name,
                    instance,
                    spec,
                } => match self.launch(&name, spec, false) {
                    Ok(launch) => self.runtime.prepare(&name, instance, &launch),
                    Err(error) => self.fail(Event::PrepareFailed {
                        name,
                        instance,
                        error,
                    }),
                },
                Effect::Start {
                    name,
                    instance,
                    spec,
                } => match self.launch(&name, spec, true) {
                    Ok(launch) => self.runtime.start(&name, instance, &launch),
                    Err(error) => self.fail(Event::StartFailed {
                        name,
                        instance,
                        error,
                    }),
                },
                Effect::Stop { name, instance } => self.runtime.stop(&name, instance),
                Effect::Kill { name, instance } => self.runtime.kill(&name, instance),
            }
        }
    }

    /// Reports a failure the shell found before the runtime was asked: through the
    /// runtime's channel, so the supervisor hears of it like of any other answer.
    fn fail(&mut self, event: Event) {
        match &self.loopback {
            Some(loopback) => {
                let _ = loopback.send(event);
            }
            None => warn!(?event, "cannot report a failure: no event channel"),
        }
    }

    fn publish(&mut self) {
        let status = Status {
            applied_generation: self.applied_generation,
            workloads: self.supervisor.status(),
        };
        let witness = &self.witness;
        self.status.send_if_modified(|current| {
            if *current == status {
                return false;
            }
            log_transitions(&current.workloads, &status.workloads);
            witness.transitions(&current.workloads, &status.workloads);
            *current = status;
            true
        });
    }

    async fn stop_all(mut self) {
        let effects = self.supervisor.set_desired(now(), &[]);
        self.execute(effects);
        self.publish();
        let mut give_up: Option<Instant> = None;
        while !self.supervisor.is_idle() {
            let deadline = self.supervisor.next_deadline();
            if deadline.is_none() && give_up.is_none() {
                give_up = Some(now() + KILL_WAIT);
            }
            let wake = deadline.or(give_up).unwrap_or_else(now);
            tokio::select! {
                Some(event) = self.events.recv() => self.on_event(event),
                () = sleep_until(wake) => {
                    if deadline.is_none() {
                        let stuck: Vec<_> = self.supervisor.running().into_iter().map(|(name, _, pid)| match pid { Some(pid) => format!("{name} (pid {pid})"), None => name }).collect();
                        warn!(workloads = %stuck.join(", "), "workloads did not exit after SIGKILL; exiting without them");
                        break;
                    }
                    let effects = self.supervisor.tick(now());
                    self.execute(effects);
                }
            }
            self.publish();
        }
    }
}

/// Logs each workload whose state changed: a handful of lines per start or exit, never
/// per request.
fn log_transitions(before: &[WorkloadStatus], after: &[WorkloadStatus]) {
    for workload in after {
        let previous = before.iter().find(|w| w.name == workload.name);
        if previous.map(|p| p.state) == Some(workload.state) {
            continue;
        }
        let message = workload.message.as_deref().unwrap_or("");
        match workload.state {
            WorkloadState::CrashLooping => {
                warn!(workload = %workload.name, message, "workload is crash-looping");
            }
            WorkloadState::Exited if workload.last_exit_code != Some(0) => {
                warn!(workload = %workload.name, message, "workload exited and stays down");
            }
            state => info!(
                workload = %workload.name,
                state = state.as_str(),
                pid = workload.pid,
                message,
                "workload state changed"
            ),
        }
    }
}

/// Tells the flight recorder what happens to workloads. It remembers which deployment
/// and revision each started instance belongs to (the runtime's events carry only the
/// workload name and instance), and which instances the agent asked to stop, so that
/// their exit is recorded as `workload-stopped` rather than `workload-exited`.
#[derive(Default)]
struct Witness {
    recorder: Option<Arc<Recorder>>,
    instances: HashMap<u64, Instance>,
    /// The spec hash last started per workload: a rolled-back revision is recorded when it
    /// is started, not again at each of its restarts.
    last_started: HashMap<String, String>,
}

struct Instance {
    name: String,
    deployment: String,
    revision: String,
    stopping: bool,
}

impl Witness {
    fn record(&self, kind: NodeEventKind, about: (&str, &str, &str), message: String) {
        if let Some(recorder) = &self.recorder {
            let (workload, deployment, revision) = about;
            recorder.record(NewEvent::new(kind, message).about(workload, deployment, revision));
        }
    }

    /// An effect about to be carried out; `desired` is the state it came from.
    fn effect(&mut self, effect: &Effect, desired: Option<&DesiredState>) {
        match effect {
            Effect::Prepare { .. } => {}
            Effect::Start { name, instance, .. } => {
                let wanted =
                    desired.and_then(|d| d.workloads.iter().find(|w| w.spec.name == *name));
                let (deployment, revision) = wanted
                    .map(|w| (w.deployment.clone(), w.revision.clone()))
                    .unwrap_or_default();
                if let Some(wanted) = wanted {
                    let first_start = self.last_started.get(name) != Some(&wanted.spec_hash);
                    if wanted.rolled_back && first_start {
                        self.record(
                            NodeEventKind::Rollback,
                            (name, &deployment, &revision),
                            format!(
                                "starting revision {revision} of deployment {deployment} again: a rollout of a newer revision was rolled back"
                            ),
                        );
                    }
                    self.last_started
                        .insert(name.clone(), wanted.spec_hash.clone());
                }
                self.instances.insert(
                    *instance,
                    Instance {
                        name: name.clone(),
                        deployment,
                        revision,
                        stopping: false,
                    },
                );
            }
            Effect::Stop { instance, .. } | Effect::Kill { instance, .. } => {
                if let Some(known) = self.instances.get_mut(instance) {
                    known.stopping = true;
                }
            }
        }
    }

    /// An observation from the runtime, before the supervisor sees it.
    fn event(&mut self, event: &Event) {
        let (kind, instance, message) = match event {
            Event::Started { instance, pid, .. } => {
                let Some(known) = self.instances.get(instance) else {
                    return;
                };
                let about = (
                    known.name.as_str(),
                    known.deployment.as_str(),
                    known.revision.as_str(),
                );
                self.record(
                    NodeEventKind::WorkloadStarted,
                    about,
                    match pid {
                        Some(pid) => format!("started (pid {pid})"),
                        None => "started".to_owned(),
                    },
                );
                return;
            }
            Event::StartFailed {
                instance, error, ..
            } => (
                NodeEventKind::WorkloadStartFailed,
                *instance,
                format!("failed to start: {error}"),
            ),
            Event::Exited {
                instance,
                code,
                signal,
                ..
            } => {
                let how = match (code, signal) {
                    (Some(code), _) => format!("exited with code {code}"),
                    (None, Some(signal)) => format!("killed by signal {signal}"),
                    (None, None) => "exited".to_owned(),
                };
                match self.instances.get(instance) {
                    Some(known) if known.stopping => (
                        NodeEventKind::WorkloadStopped,
                        *instance,
                        format!("stopped by the agent ({how})"),
                    ),
                    _ => (NodeEventKind::WorkloadExited, *instance, how),
                }
            }
            Event::Unhealthy {
                instance, reason, ..
            } => {
                self.record_about(
                    *instance,
                    NodeEventKind::ProbeChanged,
                    format!("liveness probe failed: {reason}; restarting"),
                );
                return;
            }
            Event::Readiness {
                instance,
                ready,
                reason,
                ..
            } => {
                let message = match (ready, reason) {
                    (true, _) => "ready".to_owned(),
                    (false, Some(reason)) => format!("not ready: {reason}"),
                    (false, None) => "not ready".to_owned(),
                };
                self.record_about(*instance, NodeEventKind::ProbeChanged, message);
                return;
            }
            Event::PrepareFailed { error, .. } => {
                // Preparations are not instances the witness tracks; record by name.
                let _ = error;
                return;
            }
            Event::Prepared { .. } | Event::Progress { .. } => return,
        };
        // The instance is over: it failed to start, or its process is gone.
        let Some(known) = self.instances.remove(&instance) else {
            return;
        };
        self.record(
            kind,
            (&known.name, &known.deployment, &known.revision),
            message,
        );
    }

    /// Records `kind` about a running instance the witness knows.
    fn record_about(&self, instance: u64, kind: NodeEventKind, message: String) {
        if let Some(known) = self.instances.get(&instance) {
            self.record(
                kind,
                (&known.name, &known.deployment, &known.revision),
                message,
            );
        }
    }

    /// A published status change: records workloads that entered a crash loop.
    fn transitions(&self, before: &[WorkloadStatus], after: &[WorkloadStatus]) {
        for workload in after {
            if workload.state != WorkloadState::CrashLooping {
                continue;
            }
            let previous = before.iter().find(|w| w.name == workload.name);
            if previous.map(|p| p.state) == Some(WorkloadState::CrashLooping) {
                continue;
            }
            let message = workload
                .message
                .clone()
                .unwrap_or_else(|| "crash-looping".to_owned());
            self.record(
                NodeEventKind::WorkloadCrashLooping,
                (&workload.name, &workload.deployment, &workload.revision),
                message,
            );
        }
    }
}
