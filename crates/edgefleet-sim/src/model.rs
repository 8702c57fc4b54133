//! What a simulated node "runs": the pure model behind its status reports and its
//! flight recorder.
//!
//! `NodeModel::apply` takes a desired state and decides, per workload and from the
//! workload's `SIM_*` variables (see `behaviour`), whether it runs, fails to start, or
//! runs until a scripted crash. A workload whose spec hash did not change is left alone,
//! like the real agent's supervisor does: a re-delivered desired state restarts nothing.
//! Time is an argument; nothing here reads the clock or does IO.

use std::collections::VecDeque;
use std::time::Duration;

use edgefleet_wire::Timestamp;
use edgefleet_wire::api::{DesiredState, DesiredWorkload};
use edgefleet_wire::node::{
    EventBatch, NodeEvent, NodeEventKind, ReportedState, UpdateLock, WorkloadState, WorkloadStatus,
};

use crate::behaviour::{Outcome, WorkloadBehaviour};

/// Undelivered events kept per node; older ones are dropped (and the drop is recorded).
pub const EVENT_BUFFER: usize = 64;
/// Events sent in one `POST /v1/agent/events`.
pub const EVENT_BATCH: usize = 32;
/// The first fake pid of a node's workloads.
const FIRST_PID: u32 = 1000;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    Running,
    /// Runs until then, then crash-loops.
    CrashesAt(Timestamp),
    CrashLooping {
        since: Timestamp,
        message: String,
    },
}

#[derive(Debug, Clone)]
struct SimWorkload {
    name: String,
    deployment: String,
    revision: String,
    spec_hash: String,
    pid: u32,
    started_at: Timestamp,
    phase: Phase,
}

impl SimWorkload {
    fn state(&self) -> WorkloadState {
        match self.phase {
            Phase::Running | Phase::CrashesAt(_) => WorkloadState::Running,
            Phase::CrashLooping { .. } => WorkloadState::CrashLooping,
        }
    }

    fn status(&self, now: Timestamp) -> WorkloadStatus {
        let (pid, restarts, last_exit_code, started_at, message) = match &self.phase {
            Phase::Running | Phase::CrashesAt(_) => {
                (Some(self.pid), 0, None, Some(self.started_at), None)
            }
            Phase::CrashLooping { since, message } => (
                None,
                restarts_since(*since, now),
                Some(1),
                None,
                Some(message.clone()),
            ),
        };
        WorkloadStatus {
            name: self.name.clone(),
            deployment: self.deployment.clone(),
            revision: self.revision.clone(),
            spec_hash: self.spec_hash.clone(),
            state: self.state(),
            pid,
            restarts,
            last_exit_code,
            started_at,
            message,
            ready: None,
            runtime: None,
        }
    }
}

/// How many restarts a workload crash-looping since `since` has had by `now`, with the
/// agent's restart backoff (1 s doubling): one at once, then one after 1, 3, 7, 15 s...
fn restarts_since(since: Timestamp, now: Timestamp) -> u32 {
    let elapsed = (now - since).whole_seconds().max(0) as u64;
    1 + (elapsed + 1).ilog2()
}

/// A workload as the simulator's inspection API shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadSnapshot {
    pub name: String,
    pub deployment: String,
    pub revision: String,
    pub spec_hash: String,
    pub state: WorkloadState,
}

/// The node's flight recorder: events waiting for delivery, numbered from 1.
#[derive(Debug, Default)]
struct EventLog {
    next_seq: u64,
    pending: VecDeque<NodeEvent>,
    dropped: u64,
}

impl EventLog {
    /// Records an event, dropping the oldest undelivered one when the buffer is full.
    fn push(&mut self, event: NewEvent, now: Timestamp) {
        if self.pending.len() >= EVENT_BUFFER {
            self.pending.pop_front();
            self.dropped += 1;
        }
        self.append(event, now);
    }

    /// Records an event even when the buffer is full (for the drop marker itself).
    fn append(&mut self, event: NewEvent, now: Timestamp) {
        self.next_seq = self.next_seq.max(1);
        let seq = self.next_seq;
        self.next_seq += 1;
        self.pending.push_back(NodeEvent {
            seq,
            at: now,
            kind: event.kind,
            workload: event.workload,
            deployment: event.deployment,
            revision: event.revision,
            message: event.message,
        });
    }
}

struct NewEvent {
    kind: NodeEventKind,
    workload: Option<String>,
    deployment: Option<String>,
    revision: Option<String>,
    message: String,
}

impl NewEvent {
    fn node(kind: NodeEventKind, message: String) -> Self {
        Self {
            kind,
            workload: None,
            deployment: None,
            revision: None,
            message,
        }
    }

    fn workload(kind: NodeEventKind, workload: &SimWorkload, message: String) -> Self {
        Self {
            kind,
            workload: Some(workload.name.clone()),
            deployment: Some(workload.deployment.clone()),
            revision: Some(workload.revision.clone()),
            message,
        }
    }
}

/// Everything a simulated node knows about its workloads, locks and events.
#[derive(Debug, Default)]
pub struct NodeModel {
    applied_generation: u64,
    workloads: Vec<SimWorkload>,
    locks: Vec<UpdateLock>,
    events: EventLog,
    next_pid: u32,
    /// Increases with every change a status report would show.
    version: u64,
}

impl NodeModel {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn applied_generation(&self) -> u64 {
        self.applied_generation
    }

    /// Increases whenever the status report would change.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The agent started (the first event of every node).
    pub fn started(&mut self, now: Timestamp) {
        self.events.push(
            NewEvent::node(
                NodeEventKind::AgentStarted,
                "simulated agent started".to_owned(),
            ),
            now,
        );
    }

    /// Takes on a new desired state. Workloads whose spec hash is unchanged keep running
    /// (their revision and deployment are updated); new or changed ones start anew and
    /// follow their scripted behaviour on `node`; the rest stop.
    pub fn apply(&mut self, node: &str, desired: &DesiredState, now: Timestamp) {
        self.events.push(
            NewEvent::node(
                NodeEventKind::DesiredReceived,
                format!("generation {}", desired.generation),
            ),
            now,
        );
        let mut previous = std::mem::take(&mut self.workloads);
        let mut next = Vec::with_capacity(desired.workloads.len());
        for wanted in &desired.workloads {
            let position = previous.iter().position(|w| w.name == wanted.spec.name);
            let kept = position.map(|p| previous.swap_remove(p));
            let workload = match kept {
                Some(mut same) if same.spec_hash == wanted.spec_hash => {
                    same.deployment.clone_from(&wanted.deployment);
                    same.revision.clone_from(&wanted.revision);
                    same
                }
                replaced => {
                    if let Some(old) = replaced {
                        self.events.push(
                            NewEvent::workload(
                                NodeEventKind::WorkloadStopped,
                                &old,
                                "replaced by a new spec".to_owned(),
                            ),
                            now,
                        );
                    }
                    self.start(node, wanted, now)
                }
            };
            next.push(workload);
        }
        for gone in previous {
            self.events.push(
                NewEvent::workload(
                    NodeEventKind::WorkloadStopped,
                    &gone,
                    "no longer desired".to_owned(),
                ),
                now,
            );
        }
        self.workloads = next;
        self.applied_generation = desired.generation;
        self.version += 1;
    }

    fn start(&mut self, node: &str, wanted: &DesiredWorkload, now: Timestamp) -> SimWorkload {
        self.next_pid = self.next_pid.max(FIRST_PID).wrapping_add(1);
        let mut workload = SimWorkload {
            name: wanted.spec.name.clone(),
            deployment: wanted.deployment.clone(),
            revision: wanted.revision.clone(),
            spec_hash: wanted.spec_hash.clone(),
            pid: self.next_pid,
            started_at: now,
            phase: Phase::Running,
        };
        if wanted.rolled_back {
            self.events.push(
                NewEvent::workload(
                    NodeEventKind::Rollback,
                    &workload,
                    "put back on an earlier revision".to_owned(),
                ),
                now,
            );
        }
        let failure = match WorkloadBehaviour::from_env(&wanted.spec.env) {
            Ok(behaviour) => match behaviour.outcome(node) {
                Outcome::Run => None,
                Outcome::CrashAfter(after) => {
                    workload.phase = Phase::CrashesAt(now + to_time(after));
                    None
                }
                Outcome::FailStart => Some("simulated start failure (SIM_FAIL_START)".to_owned()),
            },
            Err(error) => Some(format!("simulator cannot read the workload's env: {error}")),
        };
        match failure {
            None => {
                let message = format!("pid {}", workload.pid);
                self.events.push(
                    NewEvent::workload(NodeEventKind::WorkloadStarted, &workload, message),
                    now,
                );
            }
            Some(message) => {
                self.events.push(
                    NewEvent::workload(
                        NodeEventKind::WorkloadStartFailed,
                        &workload,
                        message.clone(),
                    ),
                    now,
                );
                self.events.push(
                    NewEvent::workload(
                        NodeEventKind::WorkloadCrashLooping,
                        &workload,
                        "restarting with backoff".to_owned(),
                    ),
                    now,
                );
                workload.phase = Phase::CrashLooping {
                    since: now,
                    message,
                };
            }
        }
        workload
    }

    /// Lets time pass: scripted crashes that are due happen. Returns whether anything changed.
    pub fn advance(&mut self, now: Timestamp) -> bool {
        let mut changed = false;
        for workload in &mut self.workloads {
            let Phase::CrashesAt(at) = workload.phase else {
                continue;
            };
            if at > now {
                continue;
            }
            let ran_for = at - workload.started_at;
            let message = format!(
                "simulated crash {}s after start (SIM_CRASH_AFTER); restarting with backoff",
                ran_for.as_seconds_f64()
            );
            self.events.push(
                NewEvent::workload(
                    NodeEventKind::WorkloadExited,
                    workload,
                    "exited with code 1".to_owned(),
                ),
                at,
            );
            self.events.push(
                NewEvent::workload(
                    NodeEventKind::WorkloadCrashLooping,
                    workload,
                    message.clone(),
                ),
                at,
            );
            workload.phase = Phase::CrashLooping { since: at, message };
            changed = true;
        }
        if changed {
            self.version += 1;
        }
        changed
    }

    /// When `advance` next has something to do.
    pub fn next_deadline(&self) -> Option<Timestamp> {
        self.workloads
            .iter()
            .filter_map(|w| match w.phase {
                Phase::CrashesAt(at) => Some(at),
                _ => None,
            })
            .min()
    }

    /// Holds an update lock for `workload`. False if it is held already.
    pub fn hold_lock(&mut self, workload: &str, reason: &str, now: Timestamp) -> bool {
        if self.locks.iter().any(|lock| lock.workload == workload) {
            return false;
        }
        self.locks.push(UpdateLock {
            workload: workload.to_owned(),
            reason: reason.to_owned(),
            since: now,
        });
        let mut event = NewEvent::node(NodeEventKind::LockAcquired, reason.to_owned());
        event.workload = Some(workload.to_owned());
        self.events.push(event, now);
        self.version += 1;
        true
    }

    /// Releases the update lock of `workload`. False if none was held.
    pub fn release_lock(&mut self, workload: &str, now: Timestamp) -> bool {
        let before = self.locks.len();
        self.locks.retain(|lock| lock.workload != workload);
        if self.locks.len() == before {
            return false;
        }
        let mut event = NewEvent::node(NodeEventKind::LockReleased, String::new());
        event.workload = Some(workload.to_owned());
        self.events.push(event, now);
        self.version += 1;
        true
    }

    pub fn locks(&self) -> impl Iterator<Item = &str> {
        self.locks.iter().map(|lock| lock.workload.as_str())
    }

    /// The status report, as of `now`.
    pub fn report(
        &self,
        node: &str,
        certificate_not_after: Option<Timestamp>,
        now: Timestamp,
    ) -> ReportedState {
        ReportedState {
            node: node.to_owned(),
            applied_generation: self.applied_generation,
            workloads: self.workloads.iter().map(|w| w.status(now)).collect(),
            agent_version: edgefleet_wire::AGENT_VERSION.to_owned(),
            certificate_not_after,
            locks: self.locks.clone(),
        }
    }

    pub fn workloads(&self) -> Vec<WorkloadSnapshot> {
        self.workloads
            .iter()
            .map(|w| WorkloadSnapshot {
                name: w.name.clone(),
                deployment: w.deployment.clone(),
                revision: w.revision.clone(),
                spec_hash: w.spec_hash.clone(),
                state: w.state(),
            })
            .collect()
    }

    /// Whether every workload runs (true for a node without workloads).
    pub fn healthy(&self) -> bool {
        self.workloads
            .iter()
            .all(|w| w.state() == WorkloadState::Running)
    }

    pub fn has_events(&self) -> bool {
        !self.events.pending.is_empty() || self.events.dropped > 0
    }

    /// The oldest undelivered events, at most `EVENT_BATCH`. Records dropped events first.
    pub fn event_batch(&mut self, now: Timestamp) -> Option<EventBatch> {
        if self.events.dropped > 0 {
            let dropped = std::mem::take(&mut self.events.dropped);
            self.events.append(
                NewEvent::node(
                    NodeEventKind::EventsDropped,
                    format!("dropped the {dropped} oldest undelivered events"),
                ),
                now,
            );
        }
        if self.events.pending.is_empty() {
            return None;
        }
        let events = self
            .events
            .pending
            .iter()
            .take(EVENT_BATCH)
            .cloned()
            .collect();
        Some(EventBatch { events })
    }

    /// The server stored every event up to `stored_through`.
    pub fn events_stored(&mut self, stored_through: u64) {
        while self
            .events
            .pending
            .front()
            .is_some_and(|e| e.seq <= stored_through)
        {
            self.events.pending.pop_front();
        }
        if self.events.pending.is_empty() {
            // Give the buffer's memory back: most of the time a node has nothing to send.
            self.events.pending = VecDeque::new();
        }
    }
}

fn to_time(duration: Duration) -> time::Duration {
    time::Duration::try_from(duration).unwrap_or(time::Duration::days(365))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use edgefleet_wire::manifest::WorkloadSpec;
    use time::macros::datetime;

    use super::*;

    const T0: Timestamp = datetime!(2030-01-01 00:00 UTC);

    fn workload(name: &str, hash: &str, env: &[(&str, &str)]) -> DesiredWorkload {
        let mut spec = WorkloadSpec::process(name, "/bin/true");
        spec.env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>();
        DesiredWorkload {
            streams: Vec::new(),
            deployment: "app".into(),
            revision: format!("rev-{hash}"),
            spec_hash: hash.into(),
            spec,
            rolled_back: false,
            labels: Default::default(),
        }
    }

    fn desired(generation: u64, workloads: Vec<DesiredWorkload>) -> DesiredState {
        DesiredState {
            node: "sim-00001".into(),
            generation,
            workloads,
        }
    }

    fn states(model: &NodeModel, now: Timestamp) -> Vec<(String, WorkloadState, u32)> {
        model
            .report("sim-00001", None, now)
            .workloads
            .into_iter()
            .map(|w| (w.name, w.state, w.restarts))
            .collect()
    }

    fn kinds(model: &mut NodeModel) -> Vec<&'static str> {
        let batch = model.event_batch(T0).map(|b| b.events).unwrap_or_default();
        batch.iter().map(|e| e.kind.as_str()).collect()
    }

    #[test]
    fn runs_fails_and_crashes_as_scripted() {
        let mut model = NodeModel::new();
        model.apply(
            "sim-00001",
            &desired(
                1,
                vec![
                    workload("ok", "h1", &[]),
                    workload("bad", "h2", &[("SIM_FAIL_START", "sim-00001")]),
                    workload("spared", "h3", &[("SIM_FAIL_START", "sim-00002")]),
                    workload("flaky", "h4", &[("SIM_CRASH_AFTER", "3s")]),
                ],
            ),
            T0,
        );
        let running = WorkloadState::Running;
        let looping = WorkloadState::CrashLooping;
        assert_eq!(
            states(&model, T0),
            vec![
                ("ok".into(), running, 0),
                ("bad".into(), looping, 1),
                ("spared".into(), running, 0),
                ("flaky".into(), running, 0),
            ]
        );
        assert!(!model.healthy());
        let report = model.report("sim-00001", None, T0);
        assert_eq!(report.applied_generation, 1);
        assert!(report.workloads[0].pid.is_some());
        assert_eq!(
            report.workloads[1].message.as_deref(),
            Some("simulated start failure (SIM_FAIL_START)")
        );

        let crash_at = T0 + time::Duration::seconds(3);
        assert_eq!(model.next_deadline(), Some(crash_at));
        assert!(!model.advance(T0 + time::Duration::seconds(2)));
        assert!(model.advance(crash_at));
        assert_eq!(model.next_deadline(), None);
        let later = crash_at + time::Duration::seconds(7);
        assert_eq!(states(&model, later)[3], ("flaky".into(), looping, 4));
        assert_eq!(
            kinds(&mut model),
            [
                "desired-received",
                "workload-started",
                "workload-start-failed",
                "workload-crash-looping",
                "workload-started",
                "workload-started",
                "workload-exited",
                "workload-crash-looping",
            ]
        );
    }

    #[test]
    fn unchanged_specs_keep_running_and_removed_ones_stop() {
        let mut model = NodeModel::new();
        model.apply(
            "sim-00001",
            &desired(1, vec![workload("a", "h1", &[]), workload("b", "h2", &[])]),
            T0,
        );
        let pid = model.report("sim-00001", None, T0).workloads[0].pid;
        model.events_stored(u64::MAX);

        let later = T0 + time::Duration::minutes(1);
        let mut same_spec = workload("a", "h1", &[]);
        same_spec.revision = "rev-new".into();
        model.apply("sim-00001", &desired(2, vec![same_spec]), later);
        let report = model.report("sim-00001", None, later);
        assert_eq!(report.applied_generation, 2);
        assert_eq!(report.workloads.len(), 1);
        assert_eq!(
            report.workloads[0].pid, pid,
            "an unchanged spec was restarted"
        );
        assert_eq!(report.workloads[0].revision, "rev-new");
        assert_eq!(report.workloads[0].started_at, Some(T0));
        assert_eq!(kinds(&mut model), ["desired-received", "workload-stopped"]);
    }

    #[test]
    fn invalid_sim_values_fail_visibly() {
        let mut model = NodeModel::new();
        model.apply(
            "sim-00001",
            &desired(
                1,
                vec![workload("a", "h1", &[("SIM_CRASH_AFTER", "later")])],
            ),
            T0,
        );
        let report = model.report("sim-00001", None, T0);
        assert_eq!(report.workloads[0].state, WorkloadState::CrashLooping);
        let message = report.workloads[0].message.clone().unwrap();
        assert!(message.contains("SIM_CRASH_AFTER=\"later\""), "{message}");
    }

    #[test]
    fn locks_are_reported_and_recorded() {
        let mut model = NodeModel::new();
        let v0 = model.version();
        assert!(model.hold_lock("web", "mid-sale", T0));
        assert!(!model.hold_lock("web", "again", T0));
        assert!(model.version() > v0);
        let report = model.report("sim-00001", None, T0);
        assert_eq!(report.locks.len(), 1);
        assert_eq!(report.locks[0].since, T0);
        assert_eq!(report.locks[0].reason, "mid-sale");
        assert!(model.release_lock("web", T0));
        assert!(!model.release_lock("web", T0));
        assert!(model.report("sim-00001", None, T0).locks.is_empty());
        assert_eq!(kinds(&mut model), ["lock-acquired", "lock-released"]);
    }

    #[test]
    fn events_are_numbered_bounded_and_acknowledged() {
        let mut model = NodeModel::new();
        model.started(T0);
        for i in 0..(EVENT_BUFFER as u64 + 10) {
            model.hold_lock(&format!("w{i}"), "", T0);
        }
        let batch = model.event_batch(T0).unwrap();
        assert_eq!(batch.events.len(), EVENT_BATCH);
        // The 11 oldest were dropped; the marker comes last, with the newest number.
        assert_eq!(batch.events[0].seq, 12);
        let all: Vec<u64> = batch
            .events
            .windows(2)
            .map(|w| w[1].seq - w[0].seq)
            .collect();
        assert!(all.iter().all(|d| *d == 1));
        model.events_stored(batch.events.last().unwrap().seq);
        let mut last = None;
        while let Some(batch) = model.event_batch(T0) {
            last = batch.events.last().cloned();
            model.events_stored(last.as_ref().unwrap().seq);
        }
        let last = last.unwrap();
        assert_eq!(last.kind, NodeEventKind::EventsDropped);
        assert_eq!(last.message, "dropped the 11 oldest undelivered events");
        assert!(!model.has_events());
    }
}
