//! The agent's workload supervisor: a pure state machine.
//!
//! The agent shell feeds it the desired workloads and what happened to the instances it
//! started (prepared, started, failed to start, exited, failed its liveness probe, became
//! ready); the supervisor answers with effects (prepare this, start it, stop that, kill it)
//! and tells the shell when to call `tick` next. It owns every decision about restarts,
//! backoff, crash loops, replacement and removal.
//!
//! Updates prepare first: a running workload whose spec changed keeps running while what
//! the new spec needs is made present (`Prepare`: an image pulled, an artifact downloaded),
//! and is replaced only once that succeeded. A preparation that fails leaves the old
//! instance running and is retried with backoff.
//!
//! Instances: every start gets a fresh instance number, and events carry it, so a late
//! exit of a replaced process can never be mistaken for the exit of its successor.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use edgefleet_wire::Timestamp;
use edgefleet_wire::api::DesiredWorkload;
use edgefleet_wire::manifest::{RestartPolicy, WorkloadSpec};
use edgefleet_wire::node::{WorkloadState, WorkloadStatus};

use crate::backoff::Backoff;

/// A process that ran at least this long before exiting is not counted as a rapid failure.
pub const STABLE_AFTER: Duration = Duration::from_secs(10);
/// Rapid consecutive failures from which a workload is reported as crash-looping.
pub const CRASH_LOOP_AFTER: u32 = 3;

/// What the shell must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Make what the workload needs present (image, artifacts) without touching what runs;
    /// answer with `Event::Prepared` or `Event::PrepareFailed`.
    Prepare {
        name: String,
        instance: u64,
        spec: WorkloadSpec,
    },
    /// Start the workload; answer with `Event::Started` or `Event::StartFailed`.
    Start {
        name: String,
        instance: u64,
        spec: WorkloadSpec,
    },
    /// Ask the instance to stop (SIGTERM to its process group, or the runtime's equivalent).
    Stop { name: String, instance: u64 },
    /// Force it (SIGKILL); its grace period has run out.
    Kill { name: String, instance: u64 },
}

/// What happened, as the shell observed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Prepared {
        name: String,
        instance: u64,
    },
    PrepareFailed {
        name: String,
        instance: u64,
        error: String,
    },
    /// How a preparation is going ("pulling busybox:1.36: 12 of 40 MiB").
    Progress {
        name: String,
        instance: u64,
        message: String,
    },
    Started {
        name: String,
        instance: u64,
        /// The process on the node, when there is one (not for WebAssembly modules, which
        /// run inside the agent).
        pid: Option<u32>,
        at: Timestamp,
    },
    StartFailed {
        name: String,
        instance: u64,
        error: String,
    },
    Exited {
        name: String,
        instance: u64,
        /// The exit code; `None` when killed by a signal.
        code: Option<i32>,
        /// The signal that killed it, if any.
        signal: Option<i32>,
        /// Why, when the runtime knows more than the code ("exceeded its memory limit").
        reason: Option<String>,
    },
    /// The liveness probe failed `failureThreshold` times in a row: restart the instance.
    Unhealthy {
        name: String,
        instance: u64,
        reason: String,
    },
    /// The readiness probe's verdict changed.
    Readiness {
        name: String,
        instance: u64,
        ready: bool,
        reason: Option<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    /// Nothing runs; what the next instance needs is being prepared (`Prepare` sent).
    Preparing {
        instance: u64,
    },
    /// A start was requested; waiting for `Started` or `StartFailed`.
    Starting {
        instance: u64,
    },
    Running {
        instance: u64,
        since: Instant,
    },
    /// Stop sent; Kill at `deadline` unless it exits first.
    Stopping {
        instance: u64,
        since: Instant,
        deadline: Instant,
        killed: bool,
    },
    /// Waiting before the next attempt (restart or preparation backoff).
    Waiting {
        until: Instant,
    },
    /// Exited, and its restart policy says it stays down.
    Finished,
}

/// What the current (or last) instance was started with.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Started {
    key: String,
    spec_hash: String,
    deployment: String,
    revision: String,
}

/// A preparation for a new spec going on while the old instance keeps running.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Update {
    instance: u64,
    spec_hash: String,
    /// Set after a failed attempt: when to try again.
    retry_at: Option<Instant>,
}

#[derive(Debug, Clone)]
struct Slot {
    /// `None`: no longer desired; the slot goes away once the instance is gone.
    desired: Option<Wanted>,
    started: Option<Started>,
    /// The spec hash whose preparation succeeded: starts of it need no new `Prepare`.
    prepared: Option<String>,
    /// The spec hash of the preparation in flight (phase `Preparing`).
    preparing: Option<String>,
    update: Option<Update>,
    phase: Phase,
    restarts: u32,
    rapid_failures: u32,
    prepare_failures: u32,
    last_exit_code: Option<i32>,
    started_at: Option<Timestamp>,
    pid: Option<u32>,
    message: Option<String>,
    /// The latest progress of a preparation ("pulling …: 40%").
    progress: Option<String>,
    ready: Option<bool>,
    not_ready_reason: Option<String>,
    /// The liveness probe failed: the stop in progress is a restart.
    liveness_failed: bool,
}

impl Slot {
    fn new(phase: Phase) -> Self {
        Self {
            desired: None,
            started: None,
            prepared: None,
            preparing: None,
            update: None,
            phase,
            restarts: 0,
            rapid_failures: 0,
            prepare_failures: 0,
            last_exit_code: None,
            started_at: None,
            pid: None,
            message: None,
            progress: None,
            ready: None,
            not_ready_reason: None,
            liveness_failed: false,
        }
    }

    fn desired_key(&self) -> Option<&str> {
        self.desired.as_ref().map(|w| w.key.as_str())
    }

    fn started_key(&self) -> Option<&str> {
        self.started.as_ref().map(|s| s.key.as_str())
    }

    fn grace(&self) -> Duration {
        self.desired
            .as_ref()
            .map(|d| d.workload.spec.stop_grace_period.as_duration())
            .unwrap_or_default()
    }
}

/// A desired workload and its replacement key: a running instance is replaced when the key
/// it was started with differs from the desired one. The key is the spec hash, plus
/// whatever else the shell wants to restart the workload for (rendered files).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    pub workload: DesiredWorkload,
    pub key: String,
}

impl Wanted {
    /// Keyed by its spec hash alone.
    pub fn new(workload: DesiredWorkload) -> Self {
        Self {
            key: workload.spec_hash.clone(),
            workload,
        }
    }
}

/// An instance found running when the shell started, to be adopted instead of restarted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Adopted {
    pub name: String,
    pub key: String,
    pub spec_hash: String,
    pub deployment: String,
    pub revision: String,
    pub pid: Option<u32>,
    pub started_at: Option<Timestamp>,
}

#[derive(Debug, Default)]
pub struct Supervisor {
    slots: BTreeMap<String, Slot>,
    next_instance: u64,
}

impl Supervisor {
    pub fn new() -> Self {
        Self::default()
    }

    fn next_instance(&mut self) -> u64 {
        self.next_instance += 1;
        self.next_instance
    }

    /// Takes over an instance that was running before the shell started, as if it had been
    /// started by this supervisor. Call before the first `set_desired`; an instance that is
    /// not desired then is stopped by it. Returns the instance number the shell must use
    /// for it.
    pub fn adopt(&mut self, now: Instant, adopted: Adopted) -> u64 {
        let instance = self.next_instance();
        let mut slot = Slot::new(Phase::Running {
            instance,
            since: now,
        });
        slot.prepared = Some(adopted.spec_hash.clone());
        slot.started = Some(Started {
            key: adopted.key,
            spec_hash: adopted.spec_hash,
            deployment: adopted.deployment,
            revision: adopted.revision,
        });
        slot.pid = adopted.pid;
        slot.started_at = adopted.started_at;
        self.slots.insert(adopted.name, slot);
        instance
    }

    /// Starts the next instance of `name`: `Prepare` first unless its spec is prepared.
    fn begin(&mut self, name: &str) -> Vec<Effect> {
        let instance = self.next_instance();
        let Some(slot) = self.slots.get_mut(name) else {
            return vec![];
        };
        let Some(wanted) = &slot.desired else {
            return vec![];
        };
        let spec = wanted.workload.spec.clone();
        let spec_hash = wanted.workload.spec_hash.clone();
        if slot.prepared.as_deref() == Some(spec_hash.as_str()) {
            slot.phase = Phase::Starting { instance };
            slot.started = Some(Started {
                key: wanted.key.clone(),
                spec_hash,
                deployment: wanted.workload.deployment.clone(),
                revision: wanted.workload.revision.clone(),
            });
            slot.ready = None;
            slot.not_ready_reason = None;
            vec![Effect::Start {
                name: name.to_owned(),
                instance,
                spec,
            }]
        } else {
            slot.phase = Phase::Preparing { instance };
            slot.preparing = Some(spec_hash);
            slot.progress = None;
            vec![Effect::Prepare {
                name: name.to_owned(),
                instance,
                spec,
            }]
        }
    }

    /// Prepares the desired spec while the current instance keeps running.
    fn prepare_update(&mut self, name: &str) -> Vec<Effect> {
        let instance = self.next_instance();
        let Some(slot) = self.slots.get_mut(name) else {
            return vec![];
        };
        let Some(wanted) = &slot.desired else {
            return vec![];
        };
        slot.update = Some(Update {
            instance,
            spec_hash: wanted.workload.spec_hash.clone(),
            retry_at: None,
        });
        slot.progress = None;
        vec![Effect::Prepare {
            name: name.to_owned(),
            instance,
            spec: wanted.workload.spec.clone(),
        }]
    }

    fn stop(slot: &mut Slot, name: &str, now: Instant, grace: Duration) -> Vec<Effect> {
        match slot.phase {
            Phase::Running { instance, since } => {
                slot.phase = Phase::Stopping {
                    instance,
                    since,
                    deadline: now + grace,
                    killed: false,
                };
                vec![Effect::Stop {
                    name: name.to_owned(),
                    instance,
                }]
            }
            _ => vec![],
        }
    }

    /// Sets what should run, keyed by spec hash (see `set_wanted`).
    pub fn set_desired(&mut self, now: Instant, desired: &[DesiredWorkload]) -> Vec<Effect> {
        let wanted: Vec<Wanted> = desired.iter().cloned().map(Wanted::new).collect();
        self.set_wanted(now, &wanted)
    }

    /// Sets what should run. Workloads whose key is unchanged are left alone (only their
    /// deployment and revision labels are updated): a repeated or reordered desired state
    /// never restarts anything. A changed workload that runs keeps running until what its
    /// new spec needs is prepared (an image pulled, say), then is replaced.
    pub fn set_wanted(&mut self, now: Instant, desired: &[Wanted]) -> Vec<Effect> {
        let mut effects = Vec::new();
        let wanted: BTreeMap<&str, &Wanted> = desired
            .iter()
            .map(|d| (d.workload.spec.name.as_str(), d))
            .collect();

        // Removals.
        let names: Vec<String> = self.slots.keys().cloned().collect();
        for name in names {
            if wanted.contains_key(name.as_str()) {
                continue;
            }
            let Some(slot) = self.slots.get_mut(&name) else {
                continue;
            };
            let grace = slot.grace();
            slot.desired = None;
            slot.update = None;
            match slot.phase {
                Phase::Running { .. } => effects.extend(Self::stop(slot, &name, now, grace)),
                // Stopped once it reports in (Starting) or exits (Stopping).
                Phase::Starting { .. } | Phase::Stopping { .. } => {}
                Phase::Preparing { .. } | Phase::Waiting { .. } | Phase::Finished => {
                    self.slots.remove(&name);
                }
            }
        }

        // Additions and changes.
        for (name, want) in wanted {
            let Some(slot) = self.slots.get_mut(name) else {
                let mut slot = Slot::new(Phase::Finished);
                slot.desired = Some(want.clone());
                self.slots.insert(name.to_owned(), slot);
                effects.extend(self.begin(name));
                continue;
            };
            let old_grace = if slot.desired.is_some() {
                slot.grace()
            } else {
                want.workload.spec.stop_grace_period.as_duration()
            };
            let changed = slot.desired_key() != Some(want.key.as_str());
            slot.desired = Some(want.clone());
            let same_as_started = slot.started_key() == Some(want.key.as_str());
            if same_as_started && let Some(started) = &mut slot.started {
                started.deployment.clone_from(&want.workload.deployment);
                started.revision.clone_from(&want.workload.revision);
            }
            if !changed {
                continue;
            }
            slot.restarts = 0;
            slot.rapid_failures = 0;
            slot.prepare_failures = 0;
            slot.message = None;
            slot.update = None;
            match slot.phase {
                // An adopted instance, now desired as it is: its readiness is unknown until
                // its probe says.
                Phase::Running { .. } if same_as_started => {
                    if slot.ready.is_none() && want.workload.spec.readiness_probe.is_some() {
                        slot.ready = Some(false);
                    }
                }
                Phase::Running { .. } => {
                    if slot.prepared.as_deref() == Some(want.workload.spec_hash.as_str()) {
                        effects.extend(Self::stop(slot, name, now, old_grace));
                    } else {
                        effects.extend(self.prepare_update(name));
                    }
                }
                // Replaced when it reports in or exits.
                Phase::Starting { .. } | Phase::Stopping { .. } => {}
                Phase::Preparing { .. } | Phase::Waiting { .. } | Phase::Finished => {
                    effects.extend(self.begin(name));
                }
            }
        }
        effects
    }

    /// Feeds an observation. Events about unknown or past instances are ignored.
    pub fn on_event(&mut self, now: Instant, event: Event) -> Vec<Effect> {
        match event {
            Event::Prepared { name, instance } => self.on_prepared(now, &name, instance),
            Event::PrepareFailed {
                name,
                instance,
                error,
            } => self.on_prepare_failed(now, &name, instance, error),
            Event::Progress {
                name,
                instance,
                message,
            } => {
                if let Some(slot) = self.slots.get_mut(&name) {
                    let current = slot.phase == Phase::Preparing { instance }
                        || slot.update.as_ref().map(|u| u.instance) == Some(instance);
                    if current {
                        slot.progress = Some(message);
                    }
                }
                vec![]
            }
            Event::Started {
                name,
                instance,
                pid,
                at,
            } => self.on_started(now, &name, instance, pid, at),
            Event::StartFailed {
                name,
                instance,
                error,
            } => {
                let Some(slot) = self.slots.get_mut(&name) else {
                    return vec![];
                };
                if slot.phase != (Phase::Starting { instance }) {
                    return vec![];
                }
                slot.message = Some(format!("failed to start: {error}"));
                slot.pid = None;
                self.after_exit(now, &name, Duration::ZERO, true)
            }
            Event::Exited {
                name,
                instance,
                code,
                signal,
                reason,
            } => {
                let Some(slot) = self.slots.get_mut(&name) else {
                    return vec![];
                };
                let how = match (code, signal) {
                    (Some(code), _) => format!("exited with code {code}"),
                    (None, Some(signal)) => format!("killed by signal {signal}"),
                    (None, None) => "exited".to_owned(),
                };
                let how = match reason {
                    Some(reason) => format!("{how}: {reason}"),
                    None => how,
                };
                match slot.phase {
                    Phase::Running {
                        instance: current,
                        since,
                    } if current == instance => {
                        slot.pid = None;
                        slot.last_exit_code = code;
                        slot.message = Some(how);
                        slot.ready = None;
                        let failed = code != Some(0);
                        self.after_exit(now, &name, now.saturating_duration_since(since), failed)
                    }
                    Phase::Stopping {
                        instance: current,
                        since,
                        ..
                    } if current == instance => {
                        slot.pid = None;
                        slot.last_exit_code = code;
                        slot.ready = None;
                        if std::mem::take(&mut slot.liveness_failed) {
                            // A restart for a failed liveness probe counts like a crash.
                            self.after_exit(now, &name, now.saturating_duration_since(since), true)
                        } else {
                            self.after_stop(&name)
                        }
                    }
                    _ => vec![],
                }
            }
            Event::Unhealthy {
                name,
                instance,
                reason,
            } => {
                let Some(slot) = self.slots.get_mut(&name) else {
                    return vec![];
                };
                if !matches!(slot.phase, Phase::Running { instance: current, .. } if current == instance)
                {
                    return vec![];
                }
                slot.liveness_failed = true;
                slot.message = Some(format!("liveness probe failed: {reason}; restarting"));
                let grace = slot.grace();
                Self::stop(slot, &name, now, grace)
            }
            Event::Readiness {
                name,
                instance,
                ready,
                reason,
            } => {
                if let Some(slot) = self.slots.get_mut(&name)
                    && matches!(slot.phase, Phase::Running { instance: current, .. } if current == instance)
                {
                    slot.ready = Some(ready);
                    slot.not_ready_reason = if ready { None } else { reason };
                }
                vec![]
            }
        }
    }

    fn on_prepared(&mut self, now: Instant, name: &str, instance: u64) -> Vec<Effect> {
        let Some(slot) = self.slots.get_mut(name) else {
            return vec![];
        };
        if slot.phase == (Phase::Preparing { instance }) {
            slot.prepared = slot.preparing.take();
            slot.prepare_failures = 0;
            slot.progress = None;
            slot.message = None;
            // `begin` starts it now if the spec prepared is still the desired one, and
            // prepares the newer one otherwise.
            return self.begin(name);
        }
        let Some(update) = slot.update.clone() else {
            return vec![];
        };
        if update.instance != instance {
            return vec![];
        }
        slot.update = None;
        slot.prepared = Some(update.spec_hash.clone());
        slot.prepare_failures = 0;
        slot.progress = None;
        slot.message = None;
        let still_wanted = slot
            .desired
            .as_ref()
            .is_some_and(|w| w.workload.spec_hash == update.spec_hash);
        if !still_wanted {
            return vec![];
        }
        let grace = slot
            .started
            .as_ref()
            .and(slot.desired.as_ref())
            .map(|_| slot.grace())
            .unwrap_or_default();
        Self::stop(slot, name, now, grace)
    }

    fn on_prepare_failed(
        &mut self,
        now: Instant,
        name: &str,
        instance: u64,
        error: String,
    ) -> Vec<Effect> {
        let Some(slot) = self.slots.get_mut(name) else {
            return vec![];
        };
        let in_place = slot.update.as_ref().map(|u| u.instance) == Some(instance);
        if slot.phase != (Phase::Preparing { instance }) && !in_place {
            return vec![];
        }
        slot.prepare_failures = slot.prepare_failures.saturating_add(1);
        let delay = Backoff::RESTART.delay(slot.prepare_failures - 1);
        slot.progress = None;
        slot.preparing = None;
        if in_place {
            slot.message = Some(format!(
                "the update could not be prepared: {error}; still running the previous spec; retrying in {}s",
                delay.as_secs()
            ));
            if let Some(update) = &mut slot.update {
                update.retry_at = Some(now + delay);
            }
        } else {
            slot.message = Some(format!(
                "could not prepare: {error}; retrying in {}s",
                delay.as_secs()
            ));
            slot.phase = Phase::Waiting { until: now + delay };
        }
        vec![]
    }

    fn on_started(
        &mut self,
        now: Instant,
        name: &str,
        instance: u64,
        pid: Option<u32>,
        at: Timestamp,
    ) -> Vec<Effect> {
        let Some(slot) = self.slots.get_mut(name) else {
            return vec![];
        };
        if slot.phase != (Phase::Starting { instance }) {
            return vec![];
        }
        slot.phase = Phase::Running {
            instance,
            since: now,
        };
        slot.pid = pid;
        slot.started_at = Some(at);
        slot.liveness_failed = false;
        if slot.rapid_failures < CRASH_LOOP_AFTER {
            slot.message = None;
        }
        // It became unwanted, or its key changed, while it was starting.
        let stale = match &slot.desired {
            None => true,
            Some(d) => slot.started_key() != Some(d.key.as_str()),
        };
        let has_readiness = slot
            .desired
            .as_ref()
            .is_some_and(|d| d.workload.spec.readiness_probe.is_some());
        slot.ready = has_readiness.then_some(false);
        if stale {
            let grace = slot.grace();
            return Self::stop(slot, name, now, grace);
        }
        vec![]
    }

    /// A stop the supervisor asked for has completed.
    fn after_stop(&mut self, name: &str) -> Vec<Effect> {
        let Some(slot) = self.slots.get_mut(name) else {
            return vec![];
        };
        match &slot.desired {
            None => {
                self.slots.remove(name);
                vec![]
            }
            Some(_) => self.begin(name),
        }
    }

    /// An instance ended on its own, failed to start, or was restarted for failing its
    /// liveness probe.
    fn after_exit(
        &mut self,
        now: Instant,
        name: &str,
        ran_for: Duration,
        failed: bool,
    ) -> Vec<Effect> {
        let Some(slot) = self.slots.get_mut(name) else {
            return vec![];
        };
        let Some(wanted) = &slot.desired else {
            self.slots.remove(name);
            return vec![];
        };
        if slot.started_key() != Some(wanted.key.as_str()) {
            // Its spec changed while it ran: start the new one right away.
            return self.begin(name);
        }
        let restart = match wanted.workload.spec.restart_policy {
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure => failed,
            RestartPolicy::Never => false,
        };
        if !restart {
            slot.phase = Phase::Finished;
            return vec![];
        }
        if ran_for >= STABLE_AFTER {
            slot.rapid_failures = 0;
        } else {
            slot.rapid_failures = slot.rapid_failures.saturating_add(1);
        }
        slot.restarts = slot.restarts.saturating_add(1);
        let delay = if slot.rapid_failures == 0 {
            Duration::ZERO
        } else {
            Backoff::RESTART.delay(slot.rapid_failures - 1)
        };
        if delay.is_zero() {
            return self.begin(name);
        }
        if slot.rapid_failures >= CRASH_LOOP_AFTER {
            let reason = slot.message.clone().unwrap_or_default();
            slot.message = Some(format!(
                "crash loop: {reason}; restart {} in {}s",
                slot.restarts,
                delay.as_secs()
            ));
        }
        slot.phase = Phase::Waiting { until: now + delay };
        vec![]
    }

    /// Acts on deadlines that have passed: restarts and preparations whose backoff ended,
    /// and Kill for instances that outlived their grace period.
    pub fn tick(&mut self, now: Instant) -> Vec<Effect> {
        let mut effects = Vec::new();
        let due: Vec<String> = self
            .slots
            .iter()
            .filter(|(_, s)| matches!(s.phase, Phase::Waiting { until } if until <= now))
            .map(|(n, _)| n.clone())
            .collect();
        for name in due {
            effects.extend(self.begin(&name));
        }
        let retry: Vec<String> = self
            .slots
            .iter()
            .filter(|(_, s)| {
                matches!(s.phase, Phase::Running { .. })
                    && s.update
                        .as_ref()
                        .and_then(|u| u.retry_at)
                        .is_some_and(|at| at <= now)
            })
            .map(|(n, _)| n.clone())
            .collect();
        for name in retry {
            effects.extend(self.prepare_update(&name));
        }
        for (name, slot) in &mut self.slots {
            if let Phase::Stopping {
                instance,
                since,
                deadline,
                killed: false,
            } = slot.phase
                && deadline <= now
            {
                slot.phase = Phase::Stopping {
                    instance,
                    since,
                    deadline,
                    killed: true,
                };
                effects.push(Effect::Kill {
                    name: name.clone(),
                    instance,
                });
            }
        }
        effects
    }

    /// When `tick` should next be called, if anything is waiting on time.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.slots
            .values()
            .filter_map(|s| match s.phase {
                Phase::Waiting { until } => Some(until),
                Phase::Stopping {
                    deadline,
                    killed: false,
                    ..
                } => Some(deadline),
                Phase::Running { .. } => s.update.as_ref().and_then(|u| u.retry_at),
                _ => None,
            })
            .min()
    }

    /// Whether nothing is running, starting or stopping (every instance has ended).
    pub fn is_idle(&self) -> bool {
        self.slots.values().all(|s| {
            !matches!(
                s.phase,
                Phase::Running { .. } | Phase::Stopping { .. } | Phase::Starting { .. }
            )
        })
    }

    /// The instances currently alive, `(name, instance, pid)`: what to stop on shutdown
    /// and what to probe.
    pub fn running(&self) -> Vec<(String, u64, Option<u32>)> {
        self.slots
            .iter()
            .filter_map(|(name, s)| match s.phase {
                Phase::Running { instance, .. } | Phase::Stopping { instance, .. } => {
                    Some((name.clone(), instance, s.pid))
                }
                _ => None,
            })
            .collect()
    }

    /// The status of every desired workload (and of those still being stopped), by name.
    /// A running instance is reported with the spec, deployment and revision it was
    /// started with, even when a newer one is desired: that is what runs.
    pub fn status(&self) -> Vec<WorkloadStatus> {
        self.slots
            .iter()
            .map(|(name, slot)| {
                let alive = matches!(
                    slot.phase,
                    Phase::Starting { .. } | Phase::Running { .. } | Phase::Stopping { .. }
                );
                let state = match slot.phase {
                    Phase::Preparing { .. } | Phase::Starting { .. } => WorkloadState::Pending,
                    Phase::Running { .. } => WorkloadState::Running,
                    Phase::Stopping { .. } => WorkloadState::Stopped,
                    Phase::Waiting { .. } if slot.rapid_failures >= CRASH_LOOP_AFTER => {
                        WorkloadState::CrashLooping
                    }
                    Phase::Waiting { .. } => WorkloadState::Pending,
                    Phase::Finished => WorkloadState::Exited,
                };
                let (deployment, revision, spec_hash) = match (&slot.started, &slot.desired) {
                    (Some(started), _) if alive || slot.desired.is_none() => (
                        started.deployment.clone(),
                        started.revision.clone(),
                        started.spec_hash.clone(),
                    ),
                    (_, Some(d)) => (
                        d.workload.deployment.clone(),
                        d.workload.revision.clone(),
                        d.workload.spec_hash.clone(),
                    ),
                    _ => Default::default(),
                };
                let message = match (&slot.progress, &slot.message, &slot.not_ready_reason) {
                    (Some(progress), _, _) if slot.update.is_some() => {
                        Some(format!("preparing the update: {progress}"))
                    }
                    (Some(progress), _, _) => Some(progress.clone()),
                    (None, Some(message), _) => Some(message.clone()),
                    (None, None, Some(reason)) if slot.ready == Some(false) => {
                        Some(format!("not ready: {reason}"))
                    }
                    _ => None,
                };
                let runtime = slot
                    .desired
                    .as_ref()
                    .map(|d| d.workload.spec.runtime.as_str().to_owned());
                WorkloadStatus {
                    name: name.clone(),
                    deployment,
                    revision,
                    spec_hash,
                    state,
                    pid: slot.pid,
                    restarts: slot.restarts,
                    last_exit_code: slot.last_exit_code,
                    started_at: slot.started_at,
                    message,
                    ready: if matches!(slot.phase, Phase::Running { .. }) {
                        slot.ready
                    } else {
                        None
                    },
                    runtime,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests;
