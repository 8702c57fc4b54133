use std::collections::{BTreeMap, BTreeSet};

use edgefleet_wire::manifest::{Amount, CanaryStrategy, RolloutStrategy};
use edgefleet_wire::node::UpdateLock;
use edgefleet_wire::rollout::{RolloutNodeState, RolloutPhase};
use edgefleet_wire::{DurationSpec, Timestamp};
use proptest::prelude::*;

use super::*;

const FROM: &str = "rev-1";
const TO: &str = "rev-2";

fn t0() -> Timestamp {
    time::macros::datetime!(2026-11-26 12:00 UTC)
}

fn strategy() -> RolloutStrategy {
    RolloutStrategy::default()
}

/// One simulated node: it runs whatever it is assigned as soon as it is online.
#[derive(Debug, Clone)]
struct SimNode {
    online: bool,
    /// Its workloads crash on the new revision.
    bad: bool,
    window_open: bool,
    lock: Option<UpdateLock>,
    runs: Option<String>,
}

impl SimNode {
    fn good() -> Self {
        Self {
            online: true,
            bad: false,
            window_open: true,
            lock: None,
            runs: Some(FROM.to_owned()),
        }
    }
}

/// A fleet and a rollout, ticking one second at a time.
struct Sim {
    rollout: Rollout,
    nodes: BTreeMap<String, SimNode>,
    now: Timestamp,
}

impl Sim {
    fn new(n: usize, strategy: RolloutStrategy) -> Self {
        Self::with_partitions(n, 0, strategy)
    }

    fn with_partitions(n: usize, n_partitions: usize, strategy: RolloutStrategy) -> Self {
        let targets: Vec<RolloutTarget> = (0..n)
            .map(|i| RolloutTarget {
                node: format!("n{i:03}"),
                partition: (n_partitions > 0).then(|| format!("p{}", i % n_partitions)),
            })
            .collect();
        let nodes = targets
            .iter()
            .map(|t| (t.node.clone(), SimNode::good()))
            .collect();
        let rollout = Rollout::new(
            RolloutSpec {
                deployment: "web".into(),
                number: 2,
                from_revision: Some((FROM.into(), 1)),
                to_revision: (TO.into(), 2),
                strategy,
            },
            &targets,
            BTreeMap::new(),
            t0(),
        );
        Self {
            rollout,
            nodes,
            now: t0(),
        }
    }

    fn node(&mut self, name: &str) -> &mut SimNode {
        self.nodes.get_mut(name).unwrap()
    }

    fn observe(&self, name: &str) -> Option<NodeObservation> {
        let node = self.nodes.get(name)?;
        let updated = node.runs.as_deref() == Some(TO);
        Some(NodeObservation {
            online: node.online,
            updated,
            health: if node.bad {
                Health::Unhealthy("crash-looping".into())
            } else {
                Health::Healthy
            },
            window: if node.window_open {
                WindowGate::Open
            } else {
                WindowGate::Closed {
                    windows: vec!["nights".into()],
                    next_open: None,
                }
            },
            locks: node.lock.iter().cloned().collect(),
        })
    }

    /// Online nodes converge on their assignment, then the rollout steps.
    fn tick(&mut self) -> StepOutcome {
        self.now += time::Duration::seconds(1);
        for (name, node) in &mut self.nodes {
            if node.online {
                node.runs = match self.rollout.assignment(name) {
                    Assignment::Revision { hash, .. } => Some(hash.to_owned()),
                    Assignment::Nothing => None,
                };
            }
        }
        let observations: BTreeMap<String, NodeObservation> = self
            .nodes
            .keys()
            .filter_map(|n| self.observe(n).map(|o| (n.clone(), o)))
            .collect();
        let outcome = self
            .rollout
            .step(self.now, &|n| observations.get(n).cloned());
        check_invariants(&self.rollout);
        outcome
    }

    fn run(&mut self, ticks: usize) {
        for _ in 0..ticks {
            self.tick();
        }
    }

    fn run_until(&mut self, max_ticks: usize, done: impl Fn(&Rollout) -> bool) {
        for _ in 0..max_ticks {
            if done(&self.rollout) {
                return;
            }
            self.tick();
        }
        assert!(
            done(&self.rollout),
            "not done after {max_ticks} ticks: {:#?}",
            self.rollout.status(true)
        );
    }

    fn on_new(&self) -> BTreeSet<String> {
        self.nodes
            .keys()
            .filter(|n| {
                matches!(
                    self.rollout.assignment(n),
                    Assignment::Revision { hash: TO, .. }
                )
            })
            .cloned()
            .collect()
    }

    fn running_new(&self) -> BTreeSet<String> {
        self.nodes
            .iter()
            .filter(|(_, n)| n.runs.as_deref() == Some(TO))
            .map(|(name, _)| name.clone())
            .collect()
    }
}

fn names(range: std::ops::Range<usize>) -> BTreeSet<String> {
    range.map(|i| format!("n{i:03}")).collect()
}

/// The safety properties that must hold after every step, whatever happened.
fn check_invariants(rollout: &Rollout) {
    for (node, progress) in &rollout.nodes {
        if progress.released_at.is_some() {
            assert!(
                progress.step <= rollout.current_step,
                "{node} released in step {} while the rollout is at step {}",
                progress.step,
                rollout.current_step
            );
        }
        let assignment = rollout.assignment(node);
        match rollout.phase {
            RolloutPhase::RolledBack => assert_eq!(
                assignment,
                Assignment::Revision {
                    hash: rollout.held.get(node).map(String::as_str).unwrap_or(FROM),
                    rolled_back: true
                },
                "{node} must be back on its previous revision"
            ),
            _ => {
                if assignment
                    == (Assignment::Revision {
                        hash: TO,
                        rolled_back: false,
                    })
                {
                    assert!(
                        progress.released_at.is_some(),
                        "{node} has the new revision without being released"
                    );
                }
            }
        }
    }
}

#[test]
fn steps_put_the_canary_first_and_never_span_partitions() {
    let targets: Vec<RolloutTarget> = (0..10)
        .map(|i| RolloutTarget {
            node: format!("n{i}"),
            partition: match i % 3 {
                0 => Some("berlin".to_owned()),
                1 => Some("austin".to_owned()),
                _ => None,
            },
        })
        .collect();
    let strategy = RolloutStrategy {
        canary: Some(CanaryStrategy {
            size: Amount::Count(1),
            manual_promotion: false,
        }),
        batch_size: Amount::Count(2),
        partition_by: Some("site".into()),
        partition_order: vec!["berlin".into()],
        ..strategy()
    };
    let steps: Vec<(StepKind, Option<String>, Vec<String>)> = plan_steps(&strategy, &targets)
        .into_iter()
        .map(|s| (s.kind, s.partition, s.nodes))
        .collect();
    let owned = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    assert_eq!(
        steps,
        vec![
            (StepKind::Canary, Some("berlin".into()), owned(&["n0"])),
            (StepKind::Batch, Some("berlin".into()), owned(&["n3", "n6"])),
            (StepKind::Batch, Some("berlin".into()), owned(&["n9"])),
            (StepKind::Batch, Some("austin".into()), owned(&["n1", "n4"])),
            (StepKind::Batch, Some("austin".into()), owned(&["n7"])),
            (StepKind::Batch, None, owned(&["n2", "n5"])),
            (StepKind::Batch, None, owned(&["n8"])),
        ]
    );
}

#[test]
fn percentages_round_up_and_default_is_four_batches() {
    let targets: Vec<RolloutTarget> = (0..10)
        .map(|i| RolloutTarget {
            node: format!("n{i}"),
            partition: None,
        })
        .collect();
    let sizes: Vec<usize> = plan_steps(&strategy(), &targets)
        .iter()
        .map(|s| s.nodes.len())
        .collect();
    assert_eq!(sizes, vec![3, 3, 3, 1]);
    assert!(plan_steps(&strategy(), &[]).is_empty());
}

#[test]
fn a_healthy_fleet_is_updated_batch_by_batch() {
    let mut sim = Sim::new(8, strategy());
    // Tick 1: the first batch (2 nodes) is released; nobody else.
    sim.tick();
    assert_eq!(sim.on_new(), names(0..2));
    assert_eq!(sim.rollout.phase, RolloutPhase::Progressing);
    // Tick 2: they run it and are healthy, so step 2 is released in the same step.
    sim.tick();
    assert_eq!(sim.on_new(), names(0..4));
    sim.run_until(20, |r| r.phase == RolloutPhase::Succeeded);
    assert_eq!(sim.on_new(), names(0..8));
    sim.tick();
    assert_eq!(sim.running_new(), names(0..8));
    assert!(sim.rollout.is_complete());
    let status = sim.rollout.status(true);
    assert_eq!(status.counts.healthy, 8);
    assert_eq!(status.steps.len(), 4);
    assert!(status.steps.iter().all(|s| s.state == "passed"));
}

#[test]
fn a_failing_canary_aborts_and_rolls_back_while_no_other_node_is_touched() {
    let mut sim = Sim::new(
        10,
        RolloutStrategy {
            canary: Some(CanaryStrategy {
                size: Amount::Count(1),
                manual_promotion: false,
            }),
            ..strategy()
        },
    );
    sim.node("n000").bad = true;
    sim.run_until(10, |r| !r.phase.is_active());
    assert_eq!(sim.rollout.phase, RolloutPhase::RolledBack);
    let reason = sim.rollout.abort_reason.clone().unwrap();
    assert!(reason.contains("step 1 (canary)"), "{reason}");
    assert!(reason.contains("n000: crash-looping"), "{reason}");
    // Only the canary ever ran the new revision, and it is back on the old one.
    sim.tick();
    assert!(sim.running_new().is_empty());
    let released: Vec<&String> = sim
        .rollout
        .nodes
        .iter()
        .filter(|(_, p)| p.released_at.is_some())
        .map(|(n, _)| n)
        .collect();
    assert_eq!(released, vec!["n000"]);
    assert_eq!(
        sim.rollout.assignment("n000"),
        Assignment::Revision {
            hash: FROM,
            rolled_back: true
        }
    );
}

#[test]
fn a_failure_during_the_bake_of_step_two_rolls_back_steps_one_and_two() {
    let mut sim = Sim::new(
        9,
        RolloutStrategy {
            batch_size: Amount::Count(3),
            bake_time: DurationSpec::from_secs(30),
            ..strategy()
        },
    );
    sim.run_until(60, |r| {
        r.current_step == 1 && r.phase == RolloutPhase::Baking
    });
    assert_eq!(sim.running_new(), names(0..6));
    sim.node("n004").bad = true;
    sim.tick();
    assert_eq!(sim.rollout.phase, RolloutPhase::RolledBack);
    assert!(
        sim.rollout
            .abort_reason
            .as_deref()
            .unwrap()
            .starts_with("step 2 (batch): 1 of 3 nodes unhealthy")
    );
    sim.tick();
    assert!(sim.running_new().is_empty(), "steps one and two roll back");
    assert_eq!(sim.rollout.status(false).counts.rolled_back, 6);
    assert_eq!(sim.rollout.status(false).counts.waiting, 3);
}

#[test]
fn without_auto_rollback_an_abort_leaves_nodes_where_they_are() {
    let mut sim = Sim::new(
        4,
        RolloutStrategy {
            auto_rollback: false,
            ..strategy()
        },
    );
    sim.node("n000").bad = true;
    sim.run_until(10, |r| !r.phase.is_active());
    assert_eq!(sim.rollout.phase, RolloutPhase::Aborted);
    sim.tick();
    assert_eq!(sim.running_new(), names(0..1));
    // Nothing moves after an abort.
    sim.node("n000").bad = false;
    sim.run(5);
    assert_eq!(sim.running_new(), names(0..1));
}

#[test]
fn a_failure_threshold_tolerates_some_unhealthy_nodes() {
    let mut sim = Sim::new(
        8,
        RolloutStrategy {
            batch_size: Amount::Count(4),
            failure_threshold: Amount::Percent(25),
            ..strategy()
        },
    );
    sim.node("n001").bad = true;
    sim.run_until(20, |r| !r.phase.is_active());
    assert_eq!(
        sim.rollout.phase,
        RolloutPhase::Succeeded,
        "1 of 4 is exactly 25%"
    );
    let mut sim = Sim::new(
        8,
        RolloutStrategy {
            batch_size: Amount::Count(4),
            failure_threshold: Amount::Percent(25),
            ..strategy()
        },
    );
    sim.node("n001").bad = true;
    sim.node("n002").bad = true;
    sim.run_until(20, |r| !r.phase.is_active());
    assert_eq!(sim.rollout.phase, RolloutPhase::RolledBack);
}

#[test]
fn offline_nodes_are_deferred_counted_and_updated_when_they_return() {
    let mut sim = Sim::new(10, strategy());
    for name in ["n001", "n004", "n007"] {
        sim.node(name).online = false;
    }
    sim.run_until(30, |r| r.phase == RolloutPhase::Succeeded);
    let status = sim.rollout.status(false);
    assert_eq!(status.counts.offline, 3);
    assert_eq!(status.counts.healthy, 7);
    assert!(!sim.rollout.is_complete());
    assert!(
        status.waiting_for.unwrap().starts_with("3 deferred nodes"),
        "the status says what is left"
    );
    // They kept the old revision and get the new one when they come back.
    assert_eq!(
        sim.rollout.assignment("n004"),
        Assignment::Revision {
            hash: FROM,
            rolled_back: false
        }
    );
    for name in ["n001", "n004", "n007"] {
        sim.node(name).online = true;
    }
    sim.run(3);
    assert_eq!(sim.running_new(), names(0..10));
    assert!(sim.rollout.is_complete());
    assert_eq!(sim.rollout.status(false).counts.healthy, 10);
}

#[test]
fn a_node_going_offline_after_its_update_counts_as_failed() {
    let mut sim = Sim::new(4, strategy());
    sim.tick();
    sim.tick();
    assert_eq!(sim.rollout.nodes["n000"].state, RolloutNodeState::Healthy);
    sim.node("n000").online = false;
    sim.tick();
    assert_eq!(sim.rollout.phase, RolloutPhase::RolledBack);
    assert!(
        sim.rollout
            .abort_reason
            .as_deref()
            .unwrap()
            .contains("went offline after taking the update")
    );
}

#[test]
fn windows_and_locks_hold_back_only_their_own_node() {
    let mut sim = Sim::new(
        4,
        RolloutStrategy {
            batch_size: Amount::Count(2),
            max_lock_deferral: DurationSpec::from_secs(60),
            ..strategy()
        },
    );
    sim.node("n000").window_open = false;
    sim.node("n002").lock = Some(UpdateLock {
        workload: "till".into(),
        reason: "sale in progress".into(),
        since: t0(),
    });
    sim.run_until(20, |r| r.phase == RolloutPhase::Succeeded);
    assert_eq!(sim.running_new(), ["n001", "n003"].map(String::from).into());
    let n000 = sim.rollout.node_status("n000").unwrap();
    assert_eq!(n000.state, RolloutNodeState::Blocked);
    assert!(
        n000.reason
            .unwrap()
            .contains("outside maintenance window nights")
    );
    let n002 = sim.rollout.node_status("n002").unwrap();
    assert!(
        n002.reason
            .unwrap()
            .contains("till holds its update lock (sale in progress)")
    );

    sim.node("n000").window_open = true;
    sim.run(2);
    assert!(sim.running_new().contains("n000"));
    assert!(!sim.running_new().contains("n002"), "the lock still holds");
    // The lock is honoured for at most maxLockDeferral.
    sim.run_until(70, |r| r.is_complete());
    assert!(sim.now - t0() >= time::Duration::seconds(60));
    sim.tick();
    assert_eq!(sim.running_new(), names(0..4));
}

#[test]
fn manual_promotion_waits_for_the_operator() {
    let mut sim = Sim::new(
        6,
        RolloutStrategy {
            canary: Some(CanaryStrategy {
                size: Amount::Count(1),
                manual_promotion: true,
            }),
            ..strategy()
        },
    );
    sim.run(10);
    assert_eq!(sim.rollout.phase, RolloutPhase::AwaitingPromotion);
    assert_eq!(sim.running_new(), names(0..1));
    assert!(
        sim.rollout
            .waiting_for
            .as_deref()
            .unwrap()
            .contains("edgefleet rollout promote web")
    );
    sim.rollout.command(Command::Promote, sim.now).unwrap();
    sim.run_until(20, |r| r.phase == RolloutPhase::Succeeded);
    assert_eq!(
        sim.rollout.command(Command::Promote, sim.now),
        Err(CommandError::Finished {
            deployment: "web".into(),
            number: 2,
            phase: "succeeded",
            action: "promote"
        })
    );
}

#[test]
fn pause_stops_releases_and_abort_rolls_back() {
    let mut sim = Sim::new(8, strategy());
    sim.tick();
    sim.rollout.command(Command::Pause, sim.now).unwrap();
    sim.run(5);
    assert_eq!(sim.on_new(), names(0..2), "nothing new while paused");
    assert!(
        sim.rollout
            .waiting_for
            .as_deref()
            .unwrap()
            .starts_with("paused")
    );
    sim.rollout.command(Command::Resume, sim.now).unwrap();
    sim.tick();
    assert_eq!(sim.on_new(), names(0..4));
    sim.rollout.command(Command::Abort, sim.now).unwrap();
    assert_eq!(sim.rollout.phase, RolloutPhase::RolledBack);
    assert_eq!(
        sim.rollout.abort_reason.as_deref(),
        Some("aborted by an operator")
    );
    sim.tick();
    assert!(sim.running_new().is_empty());
}

#[test]
fn a_node_that_never_becomes_healthy_fails_at_the_progress_deadline() {
    let mut sim = Sim::new(
        4,
        RolloutStrategy {
            progress_deadline: DurationSpec::from_secs(30),
            ..strategy()
        },
    );
    sim.tick();
    // n000 is online but never applies anything (say, its runtime hangs).
    let stuck = sim.rollout.nodes["n000"].released_at.is_some();
    assert!(stuck);
    for _ in 0..40 {
        sim.now += time::Duration::seconds(1);
        let observations: BTreeMap<String, NodeObservation> = sim
            .nodes
            .keys()
            .filter_map(|n| sim.observe(n).map(|o| (n.clone(), o)))
            .map(|(n, mut o)| {
                if n == "n000" {
                    o.updated = false;
                }
                (n, o)
            })
            .collect();
        sim.rollout.step(sim.now, &|n| observations.get(n).cloned());
    }
    assert_eq!(sim.rollout.phase, RolloutPhase::RolledBack);
    assert!(
        sim.rollout
            .abort_reason
            .as_deref()
            .unwrap()
            .contains("not healthy within the progress deadline (30s)")
    );
}

#[test]
fn a_new_deployment_reaches_nodes_only_when_released() {
    let targets: Vec<RolloutTarget> = (0..4)
        .map(|i| RolloutTarget {
            node: format!("n{i}"),
            partition: None,
        })
        .collect();
    let mut rollout = Rollout::new(
        RolloutSpec {
            deployment: "new".into(),
            number: 1,
            from_revision: None,
            to_revision: (TO.into(), 1),
            strategy: strategy(),
        },
        &targets,
        BTreeMap::new(),
        t0(),
    );
    assert_eq!(rollout.assignment("n0"), Assignment::Nothing);
    let observe = |_: &str| {
        Some(NodeObservation {
            online: true,
            updated: false,
            health: Health::Progressing,
            window: WindowGate::Open,
            locks: vec![],
        })
    };
    let outcome = rollout.step(t0(), &observe);
    assert!(outcome.changed);
    assert_eq!(outcome.reassigned, vec!["n0".to_owned()]);
    assert_eq!(
        rollout.assignment("n0"),
        Assignment::Revision {
            hash: TO,
            rolled_back: false
        }
    );
    assert_eq!(rollout.assignment("n1"), Assignment::Nothing);
    // A node that joined after the start waits for the rollout to finish.
    assert_eq!(rollout.assignment("late"), Assignment::Nothing);
    rollout.command(Command::Abort, t0()).unwrap();
    assert_eq!(rollout.assignment("n0"), Assignment::Nothing);
}

#[test]
fn held_nodes_stay_on_their_revision_until_released() {
    let targets: Vec<RolloutTarget> = (0..2)
        .map(|i| RolloutTarget {
            node: format!("n{i}"),
            partition: None,
        })
        .collect();
    let held = BTreeMap::from([
        ("n1".to_owned(), "rev-0".to_owned()),
        ("n0".to_owned(), FROM.to_owned()),
    ]);
    let rollout = Rollout::new(
        RolloutSpec {
            deployment: "web".into(),
            number: 3,
            from_revision: Some((FROM.into(), 1)),
            to_revision: (TO.into(), 2),
            strategy: strategy(),
        },
        &targets,
        held,
        t0(),
    );
    assert_eq!(rollout.held.len(), 1, "held on `from` is not held at all");
    assert_eq!(
        rollout.assignment("n1"),
        Assignment::Revision {
            hash: "rev-0",
            rolled_back: false
        }
    );
}

#[test]
fn a_persisted_rollout_resumes_exactly_where_it_was() {
    let strategy = RolloutStrategy {
        batch_size: Amount::Count(2),
        bake_time: DurationSpec::from_secs(3),
        ..strategy()
    };
    let mut straight = Sim::new(8, strategy.clone());
    let mut restarted = Sim::new(8, strategy);
    for tick in 0..30 {
        straight.tick();
        restarted.tick();
        if tick % 4 == 1 {
            // "Kill the server": keep only what was persisted.
            let json = serde_json::to_string(&restarted.rollout).unwrap();
            restarted.rollout = serde_json::from_str(&json).unwrap();
        }
        assert_eq!(straight.rollout, restarted.rollout, "tick {tick}");
    }
    assert_eq!(straight.rollout.phase, RolloutPhase::Succeeded);
}

#[test]
fn max_unavailable_limits_nodes_updating_at_once() {
    let mut rollout = Sim::new(
        10,
        RolloutStrategy {
            batch_size: Amount::Percent(100),
            max_unavailable: Some(Amount::Count(3)),
            ..strategy()
        },
    )
    .rollout;
    // Nobody ever becomes healthy: only three are released.
    let observe = |_: &str| {
        Some(NodeObservation {
            online: true,
            updated: false,
            health: Health::Progressing,
            window: WindowGate::Open,
            locks: vec![],
        })
    };
    for second in 1..5 {
        rollout.step(t0() + time::Duration::seconds(second), &observe);
    }
    let status = rollout.status(false);
    assert_eq!(status.counts.updating, 3);
    assert_eq!(status.counts.blocked, 7);
    assert!(
        status
            .waiting_for
            .unwrap()
            .contains("3 nodes to become healthy")
    );
}

#[derive(Debug, Clone)]
enum Action {
    Tick,
    SetOnline(usize, bool),
    SetBad(usize, bool),
    SetWindow(usize, bool),
    SetLock(usize, bool),
    Command(Command),
    Restart,
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        6 => Just(Action::Tick),
        1 => (0..40usize, any::<bool>()).prop_map(|(n, b)| Action::SetOnline(n, b)),
        1 => (0..40usize, prop::bool::weighted(0.2)).prop_map(|(n, b)| Action::SetBad(n, b)),
        1 => (0..40usize, any::<bool>()).prop_map(|(n, b)| Action::SetWindow(n, b)),
        1 => (0..40usize, any::<bool>()).prop_map(|(n, b)| Action::SetLock(n, b)),
        1 => prop_oneof![
            Just(Command::Pause),
            Just(Command::Resume),
            Just(Command::Promote),
            Just(Command::Abort)
        ]
        .prop_map(Action::Command),
        1 => Just(Action::Restart),
    ]
}

fn amount() -> impl Strategy<Value = Amount> {
    prop_oneof![
        (1..6u32).prop_map(Amount::Count),
        (1..=100u32).prop_map(Amount::Percent)
    ]
}

fn rollout_strategy() -> impl Strategy<Value = RolloutStrategy> {
    (
        proptest::option::of((amount(), any::<bool>())),
        amount(),
        proptest::option::of(amount()),
        0..4u64,
        prop_oneof![Just(0u32), Just(25), Just(50), Just(100)],
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(
            |(canary, batch, max_unavailable, bake, threshold, rollback, partitioned)| {
                RolloutStrategy {
                    canary: canary.map(|(size, manual_promotion)| CanaryStrategy {
                        size,
                        manual_promotion,
                    }),
                    batch_size: batch,
                    max_unavailable,
                    bake_time: DurationSpec::from_secs(bake),
                    progress_deadline: DurationSpec::from_secs(20),
                    partition_by: partitioned.then(|| "site".to_owned()),
                    failure_threshold: Amount::Percent(threshold),
                    auto_rollback: rollback,
                    max_lock_deferral: DurationSpec::from_secs(15),
                    ..RolloutStrategy::default()
                }
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Whatever the fleet does and the operator says, the invariants hold after every step
    /// (checked in `tick`), and a rollout restored from its persisted form behaves the same.
    #[test]
    fn invariants_hold_under_random_fleets_failures_and_interleavings(
        n in 1..40usize,
        partitions in 0..4usize,
        strategy in rollout_strategy(),
        actions in prop::collection::vec(action(), 1..120),
    ) {
        let mut sim = Sim::with_partitions(n, partitions, strategy);
        let name = |i: usize| format!("n{:03}", i % n);
        for action in actions {
            match action {
                Action::Tick => { sim.tick(); }
                Action::SetOnline(i, online) => sim.node(&name(i)).online = online,
                Action::SetBad(i, bad) => sim.node(&name(i)).bad = bad,
                Action::SetWindow(i, open) => sim.node(&name(i)).window_open = open,
                Action::SetLock(i, held) => {
                    let since = sim.now;
                    sim.node(&name(i)).lock = held.then(|| UpdateLock {
                        workload: "w".into(),
                        reason: String::new(),
                        since,
                    });
                }
                Action::Command(command) => {
                    let _ = sim.rollout.command(command, sim.now);
                    check_invariants(&sim.rollout);
                }
                Action::Restart => {
                    let json = serde_json::to_string(&sim.rollout).unwrap();
                    let restored: Rollout = serde_json::from_str(&json).unwrap();
                    prop_assert_eq!(&restored, &sim.rollout);
                    sim.rollout = restored;
                }
            }
        }
        // A rolled-back node ends on its previous revision.
        if sim.rollout.phase == RolloutPhase::RolledBack {
            for node in sim.nodes.clone().keys() {
                sim.node(node).online = true;
            }
            sim.tick();
            prop_assert!(sim.running_new().is_empty());
        }
    }

    /// A fleet that is healthy, online and unblocked is always fully rolled out.
    #[test]
    fn a_healthy_fleet_always_finishes(
        n in 1..40usize,
        partitions in 0..4usize,
        strategy in rollout_strategy(),
    ) {
        let mut sim = Sim::with_partitions(n, partitions, strategy);
        for _ in 0..(4 * n + 20) {
            if sim.rollout.phase == RolloutPhase::AwaitingPromotion {
                sim.rollout.command(Command::Promote, sim.now).unwrap();
            }
            sim.tick();
        }
        prop_assert_eq!(sim.rollout.phase, RolloutPhase::Succeeded);
        prop_assert!(sim.rollout.is_complete());
        prop_assert_eq!(sim.running_new().len(), n);
    }
}
