//! The reconcile loop: the shell around `edgefleet_core::supervisor::Supervisor`.
//!
//! It feeds the supervisor what arrives (a new desired state, a runtime event, the passing
//! of a deadline), hands the effects it answers with to the runtime, and publishes the
//! resulting status. It decides nothing itself: restarts, backoff, crash loops and
//! replacements are all the supervisor's. A desired state equal to the current one yields
//! no effects, which is why a reconnect never restarts a healthy workload.

use std::sync::Arc;
use std::time::{Duration, Instant};

use edgefleet_core::supervisor::{Effect, Event, Supervisor};
use edgefleet_wire::api::DesiredState;
use edgefleet_wire::node::{WorkloadState, WorkloadStatus};
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

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
        };
        (reconciler, status_rx)
    }

    /// Runs desired states from `desired` until `shutdown`, then stops every workload
    /// (SIGTERM, SIGKILL after its grace period) and returns once they are gone.
    pub async fn run(mut self, mut desired: DesiredReceiver, mut shutdown: Shutdown) {
        let initial = desired.borrow_and_update().clone();
        if let Some(state) = initial {
            self.apply(&state);
        }
        let mut desired_open = true;
        loop {
            let deadline = self.supervisor.next_deadline();
            tokio::select! {
                biased;
                () = shutdown.wait() => break,
                Some(event) = self.events.recv() => {
                    let effects = self.supervisor.on_event(now(), event);
                    self.execute(effects);
                }
                changed = desired.changed(), if desired_open => match changed {
                    Ok(()) => {
                        let state = desired.borrow_and_update().clone();
                        if let Some(state) = state {
                            self.apply(&state);
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

    fn apply(&mut self, state: &DesiredState) {
        if state.generation != self.applied_generation {
            info!(
                generation = state.generation,
                workloads = state.workloads.len(),
                "applying desired state"
            );
        }
        let effects = self.supervisor.set_desired(now(), &state.workloads);
        self.applied_generation = state.generation;
        self.execute(effects);
        self.publish();
    }

    fn execute(&mut self, effects: Vec<Effect>) {
        for effect in effects {
            runtime::execute(self.runtime.as_mut(), effect);
        }
    }

    fn publish(&mut self) {
        let status = Status {
            applied_generation: self.applied_generation,
            workloads: self.supervisor.status(),
        };
        self.status.send_if_modified(|current| {
            if *current == status {
                return false;
            }
            log_transitions(&current.workloads, &status.workloads);
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
                Some(event) = self.events.recv() => {
                    let effects = self.supervisor.on_event(now(), event);
                    self.execute(effects);
                }
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
