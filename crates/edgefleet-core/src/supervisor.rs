//! The agent's workload supervisor: a pure state machine.
//!
//! The agent shell feeds it the desired workloads and what happened to the processes it
//! started (started, failed to start, exited); the supervisor answers with effects (start
//! this, send SIGTERM to that, SIGKILL it) and tells the shell when to call `tick` next.
//! It owns every decision about restarts, backoff, crash loops, replacement and removal.
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
    /// Start the workload; answer with `Event::Started` or `Event::StartFailed`.
    Start {
        name: String,
        instance: u64,
        spec: WorkloadSpec,
    },
    /// Ask the process to stop (SIGTERM to its process group).
    Stop {
        name: String,
        instance: u64,
        pid: u32,
    },
    /// Force it (SIGKILL to its process group); its grace period has run out.
    Kill {
        name: String,
        instance: u64,
        pid: u32,
    },
}

/// What happened, as the shell observed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Started {
        name: String,
        instance: u64,
        pid: u32,
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
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    /// A start was requested; waiting for `Started` or `StartFailed`.
    Starting { instance: u64 },
    Running {
        instance: u64,
        pid: u32,
        since: Instant,
    },
    /// SIGTERM sent; SIGKILL at `deadline` unless it exits first.
    Stopping {
        instance: u64,
        pid: u32,
        deadline: Instant,
        killed: bool,
    },
    /// Waiting before the next start (restart backoff).
    Waiting { until: Instant },
    /// Exited, and its restart policy says it stays down.
    Finished,
}

#[derive(Debug, Clone)]
struct Slot {
    /// `None`: no longer desired; the slot goes away once the process is gone.
    desired: Option<DesiredWorkload>,
    /// The spec the current or last process was started with.
    running_spec_hash: Option<String>,
    phase: Phase,
    restarts: u32,
    rapid_failures: u32,
    last_exit_code: Option<i32>,
    started_at: Option<Timestamp>,
    pid: Option<u32>,
    message: Option<String>,
}

impl Slot {
    fn new(desired: DesiredWorkload, phase: Phase) -> Self {
        Self {
            running_spec_hash: Some(desired.spec_hash.clone()),
            desired: Some(desired),
            phase,
            restarts: 0,
            rapid_failures: 0,
            last_exit_code: None,
            started_at: None,
            pid: None,
            message: None,
        }
    }
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

    fn start(&mut self, name: &str) -> Vec<Effect> {
        self.next_instance += 1;
        let instance = self.next_instance;
        let Some(slot) = self.slots.get_mut(name) else {
            return vec![];
        };
        let Some(desired) = &slot.desired else {
            return vec![];
        };
        slot.phase = Phase::Starting { instance };
        slot.running_spec_hash = Some(desired.spec_hash.clone());
        vec![Effect::Start {
            name: name.to_owned(),
            instance,
            spec: desired.spec.clone(),
        }]
    }

    fn stop(slot: &mut Slot, name: &str, now: Instant, grace: Duration) -> Vec<Effect> {
        match slot.phase {
            Phase::Running { instance, pid, .. } => {
                slot.phase = Phase::Stopping {
                    instance,
                    pid,
                    deadline: now + grace,
                    killed: false,
                };
                vec![Effect::Stop {
                    name: name.to_owned(),
                    instance,
                    pid,
                }]
            }
            _ => vec![],
        }
    }

    /// Sets what should run. Workloads whose spec hash is unchanged are left alone (only
    /// their deployment and revision labels are updated): a repeated or reordered desired
    /// state never restarts anything.
    pub fn set_desired(&mut self, now: Instant, desired: &[DesiredWorkload]) -> Vec<Effect> {
        let mut effects = Vec::new();
        let wanted: BTreeMap<&str, &DesiredWorkload> =
            desired.iter().map(|d| (d.spec.name.as_str(), d)).collect();

        // Removals.
        let names: Vec<String> = self.slots.keys().cloned().collect();
        for name in names {
            if wanted.contains_key(name.as_str()) {
                continue;
            }
            let Some(slot) = self.slots.get_mut(&name) else {
                continue;
            };
            let grace = slot
                .desired
                .as_ref()
                .map(|d| d.spec.stop_grace_period.as_duration())
                .unwrap_or_default();
            slot.desired = None;
            match slot.phase {
                Phase::Running { .. } => effects.extend(Self::stop(slot, &name, now, grace)),
                // Stopped once it reports in (Starting) or exits (Stopping).
                Phase::Starting { .. } | Phase::Stopping { .. } => {}
                Phase::Waiting { .. } | Phase::Finished => {
                    self.slots.remove(&name);
                }
            }
        }

        // Additions and changes.
        for (name, want) in wanted {
            match self.slots.get_mut(name) {
                None => {
                    self.slots
                        .insert(name.to_owned(), Slot::new(want.clone(), Phase::Finished));
                    effects.extend(self.start(name));
                }
                Some(slot) => {
                    let same_spec = slot.running_spec_hash.as_deref() == Some(&want.spec_hash);
                    let old_grace = slot
                        .desired
                        .as_ref()
                        .map(|d| d.spec.stop_grace_period.as_duration())
                        .unwrap_or_else(|| want.spec.stop_grace_period.as_duration());
                    slot.desired = Some(want.clone());
                    if same_spec {
                        continue;
                    }
                    slot.restarts = 0;
                    slot.rapid_failures = 0;
                    slot.message = None;
                    match slot.phase {
                        Phase::Running { .. } => {
                            effects.extend(Self::stop(slot, name, now, old_grace));
                        }
                        // Replaced when it reports in or exits.
                        Phase::Starting { .. } | Phase::Stopping { .. } => {}
                        Phase::Waiting { .. } | Phase::Finished => {
                            effects.extend(self.start(name));
                        }
                    }
                }
            }
        }
        effects
    }

    /// Feeds an observation. Events about unknown instances are ignored.
    pub fn on_event(&mut self, now: Instant, event: Event) -> Vec<Effect> {
        match event {
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
                self.after_exit(now, &name, None, Duration::ZERO, true)
            }
            Event::Exited {
                name,
                instance,
                code,
                signal,
            } => {
                let Some(slot) = self.slots.get_mut(&name) else {
                    return vec![];
                };
                let ran_for = match slot.phase {
                    Phase::Running {
                        instance: current,
                        since,
                        ..
                    } if current == instance => now.saturating_duration_since(since),
                    Phase::Stopping {
                        instance: current, ..
                    } if current == instance => {
                        slot.pid = None;
                        slot.last_exit_code = code;
                        return self.after_stop(&name);
                    }
                    _ => return vec![],
                };
                slot.pid = None;
                slot.last_exit_code = code;
                slot.message = Some(match (code, signal) {
                    (Some(code), _) => format!("exited with code {code}"),
                    (None, Some(signal)) => format!("killed by signal {signal}"),
                    (None, None) => "exited".to_owned(),
                });
                let failed = code != Some(0);
                self.after_exit(now, &name, code, ran_for, failed)
            }
        }
    }

    fn on_started(
        &mut self,
        now: Instant,
        name: &str,
        instance: u64,
        pid: u32,
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
            pid,
            since: now,
        };
        slot.pid = Some(pid);
        slot.started_at = Some(at);
        if slot.rapid_failures < CRASH_LOOP_AFTER {
            slot.message = None;
        }
        // It became unwanted, or its spec changed, while it was starting.
        let grace = slot
            .desired
            .as_ref()
            .map(|d| d.spec.stop_grace_period.as_duration());
        let stale = match &slot.desired {
            None => true,
            Some(d) => slot.running_spec_hash.as_deref() != Some(&d.spec_hash),
        };
        if stale {
            return Self::stop(slot, name, now, grace.unwrap_or_default());
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
            Some(_) => self.start(name),
        }
    }

    /// A process exited on its own (or failed to start).
    fn after_exit(
        &mut self,
        now: Instant,
        name: &str,
        code: Option<i32>,
        ran_for: Duration,
        failed: bool,
    ) -> Vec<Effect> {
        let Some(slot) = self.slots.get_mut(name) else {
            return vec![];
        };
        let Some(desired) = &slot.desired else {
            self.slots.remove(name);
            return vec![];
        };
        if slot.running_spec_hash.as_deref() != Some(&desired.spec_hash) {
            // Its spec changed while it ran: start the new one right away.
            return self.start(name);
        }
        let restart = match desired.spec.restart_policy {
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure => failed,
            RestartPolicy::Never => false,
        };
        if !restart {
            slot.phase = Phase::Finished;
            let _ = code;
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
            return self.start(name);
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

    /// Acts on deadlines that have passed: restarts whose backoff ended, and SIGKILL for
    /// processes that outlived their grace period.
    pub fn tick(&mut self, now: Instant) -> Vec<Effect> {
        let mut effects = Vec::new();
        let due: Vec<String> = self
            .slots
            .iter()
            .filter(|(_, s)| matches!(s.phase, Phase::Waiting { until } if until <= now))
            .map(|(n, _)| n.clone())
            .collect();
        for name in due {
            effects.extend(self.start(&name));
        }
        for (name, slot) in &mut self.slots {
            if let Phase::Stopping {
                instance,
                pid,
                deadline,
                killed: false,
            } = slot.phase
                && deadline <= now
            {
                slot.phase = Phase::Stopping {
                    instance,
                    pid,
                    deadline,
                    killed: true,
                };
                effects.push(Effect::Kill {
                    name: name.clone(),
                    instance,
                    pid,
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
                _ => None,
            })
            .min()
    }

    /// Whether nothing is running or stopping (every process has been reaped).
    pub fn is_idle(&self) -> bool {
        self.slots.values().all(|s| {
            !matches!(
                s.phase,
                Phase::Running { .. } | Phase::Stopping { .. } | Phase::Starting { .. }
            )
        })
    }

    /// The processes currently alive, `(name, instance, pid)`: what to stop on shutdown.
    pub fn running(&self) -> Vec<(String, u64, u32)> {
        self.slots
            .iter()
            .filter_map(|(name, s)| match s.phase {
                Phase::Running { instance, pid, .. } | Phase::Stopping { instance, pid, .. } => {
                    Some((name.clone(), instance, pid))
                }
                _ => None,
            })
            .collect()
    }

    /// The status of every desired workload (and of those still being stopped), by name.
    pub fn status(&self) -> Vec<WorkloadStatus> {
        self.slots
            .iter()
            .map(|(name, slot)| {
                let state = match slot.phase {
                    Phase::Starting { .. } => WorkloadState::Pending,
                    Phase::Running { .. } => WorkloadState::Running,
                    Phase::Stopping { .. } => WorkloadState::Stopped,
                    Phase::Waiting { .. } if slot.rapid_failures >= CRASH_LOOP_AFTER => {
                        WorkloadState::CrashLooping
                    }
                    Phase::Waiting { .. } => WorkloadState::Pending,
                    Phase::Finished => WorkloadState::Exited,
                };
                let (deployment, revision, spec_hash) = match &slot.desired {
                    Some(d) => (
                        d.deployment.clone(),
                        d.revision.clone(),
                        d.spec_hash.clone(),
                    ),
                    None => (
                        String::new(),
                        String::new(),
                        slot.running_spec_hash.clone().unwrap_or_default(),
                    ),
                };
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
                    message: slot.message.clone(),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests;
