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

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use edgefleet_core::supervisor::{Effect, Event, Supervisor};
use edgefleet_wire::api::DesiredState;
use edgefleet_wire::node::{NodeEventKind, WorkloadState, WorkloadStatus};
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use crate::recorder::{NewEvent, Recorder};
use crate::runtime::{self, Runtime};
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
        };
        (reconciler, status_rx)
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
        let effects = self.supervisor.set_desired(now(), &state.workloads);
        self.applied_generation = state.generation;
        self.desired = Some(state);
        self.execute(effects);
        self.publish();
    }

    fn on_event(&mut self, event: Event) {
        self.witness.event(&event);
        let effects = self.supervisor.on_event(now(), event);
        self.execute(effects);
    }

    fn execute(&mut self, effects: Vec<Effect>) {
        for effect in effects {
            self.witness.effect(&effect, self.desired.as_deref());
            runtime::execute(self.runtime.as_mut(), effect);
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
                        let stuck: Vec<_> = self.supervisor.running().into_iter().map(|(name, _, pid)| format!("{name} (pid {pid})")).collect();
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
                    format!("started (pid {pid})"),
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
