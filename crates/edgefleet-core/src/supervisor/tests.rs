use std::time::{Duration, Instant};

use edgefleet_wire::api::DesiredWorkload;
use edgefleet_wire::manifest::{RestartPolicy, WorkloadSpec};
use edgefleet_wire::node::WorkloadState;
use proptest::prelude::*;

use super::*;
use crate::hash::workload_hash;

fn desired(name: &str, command: &str, policy: RestartPolicy) -> DesiredWorkload {
    let spec = WorkloadSpec {
        restart_policy: policy,
        ..WorkloadSpec::process(name, command)
    };
    DesiredWorkload {
        deployment: "d".into(),
        revision: "r1".into(),
        spec_hash: workload_hash(&spec),
        spec,
        rolled_back: false,
    }
}

/// A tiny simulated shell: remembers the pid of every started instance.
struct Harness {
    sup: Supervisor,
    t0: Instant,
    now: Instant,
    next_pid: u32,
    log: Vec<Effect>,
}

impl Harness {
    fn new() -> Self {
        let t0 = Instant::now();
        Self {
            sup: Supervisor::new(),
            t0,
            now: t0,
            next_pid: 100,
            log: vec![],
        }
    }
    fn at(&mut self, secs: f64) {
        self.now = self.t0 + Duration::from_secs_f64(secs);
    }
    fn wall(&self) -> Timestamp {
        time::macros::datetime!(2026-01-01 0:00 UTC)
    }
    /// Carries out effects like a shell whose starts always succeed.
    fn run(&mut self, effects: Vec<Effect>) -> Vec<Effect> {
        let mut out = effects.clone();
        for effect in effects {
            if let Effect::Start { name, instance, .. } = effect {
                self.next_pid += 1;
                let ev = Event::Started {
                    name,
                    instance,
                    pid: self.next_pid,
                    at: self.wall(),
                };
                let more = self.sup.on_event(self.now, ev);
                out.extend(self.run(more));
            }
        }
        self.log.extend(out.clone());
        out
    }
    fn set(&mut self, desired: &[DesiredWorkload]) -> Vec<Effect> {
        let e = self.sup.set_desired(self.now, desired);
        self.run(e)
    }
    fn exit(&mut self, name: &str, code: Option<i32>) -> Vec<Effect> {
        let (instance, _) = self.instance(name).expect("running");
        let e = self.sup.on_event(
            self.now,
            Event::Exited {
                name: name.into(),
                instance,
                code,
                signal: None,
            },
        );
        self.run(e)
    }
    fn tick(&mut self) -> Vec<Effect> {
        let e = self.sup.tick(self.now);
        self.run(e)
    }
    fn instance(&self, name: &str) -> Option<(u64, u32)> {
        self.sup
            .running()
            .into_iter()
            .find(|(n, _, _)| n == name)
            .map(|(_, i, p)| (i, p))
    }
    fn state(&self, name: &str) -> Option<WorkloadState> {
        self.sup
            .status()
            .into_iter()
            .find(|s| s.name == name)
            .map(|s| s.state)
    }
}

fn starts(effects: &[Effect]) -> usize {
    effects
        .iter()
        .filter(|e| matches!(e, Effect::Start { .. }))
        .count()
}

#[test]
fn starts_what_is_missing_and_leaves_unchanged_alone() {
    let mut h = Harness::new();
    let a = desired("a", "/bin/a", RestartPolicy::Always);
    let b = desired("b", "/bin/b", RestartPolicy::Always);
    let e = h.set(&[a.clone(), b.clone()]);
    assert_eq!(starts(&e), 2);
    assert_eq!(h.state("a"), Some(WorkloadState::Running));
    let pid_a = h.instance("a").unwrap().1;
    // The same desired state again, reordered and with a new revision label: no effect.
    let mut a2 = a.clone();
    a2.revision = "r2".into();
    assert!(h.set(&[b, a2]).is_empty());
    assert_eq!(h.instance("a").unwrap().1, pid_a);
    assert_eq!(h.sup.status()[0].revision, "r2");
}

#[test]
fn removal_stops_then_kills_after_grace() {
    let mut h = Harness::new();
    h.set(&[desired("a", "/bin/a", RestartPolicy::Always)]);
    let (instance, pid) = h.instance("a").unwrap();
    let e = h.set(&[]);
    assert_eq!(
        e,
        vec![Effect::Stop {
            name: "a".into(),
            instance,
            pid
        }]
    );
    assert_eq!(h.state("a"), Some(WorkloadState::Stopped));
    h.at(9.0);
    assert!(h.tick().is_empty());
    h.at(10.0);
    assert_eq!(
        h.tick(),
        vec![Effect::Kill {
            name: "a".into(),
            instance,
            pid
        }]
    );
    // Only one SIGKILL.
    h.at(11.0);
    assert!(h.tick().is_empty());
    h.exit("a", None);
    assert_eq!(h.state("a"), None);
    assert!(h.sup.is_idle());
}

#[test]
fn change_replaces_after_old_one_exits() {
    let mut h = Harness::new();
    h.set(&[desired("a", "/bin/a", RestartPolicy::Always)]);
    let (old_instance, _) = h.instance("a").unwrap();
    let e = h.set(&[desired("a", "/bin/a2", RestartPolicy::Always)]);
    assert!(matches!(e.as_slice(), [Effect::Stop { .. }]));
    let e = h.exit("a", Some(143));
    assert_eq!(starts(&e), 1);
    let (new_instance, _) = h.instance("a").unwrap();
    assert_ne!(old_instance, new_instance);
    assert_eq!(h.state("a"), Some(WorkloadState::Running));
    assert_eq!(h.sup.status()[0].restarts, 0);
}

#[test]
fn restart_policies() {
    for (policy, code, restarted) in [
        (RestartPolicy::Always, Some(0), true),
        (RestartPolicy::Always, Some(1), true),
        (RestartPolicy::OnFailure, Some(0), false),
        (RestartPolicy::OnFailure, Some(3), true),
        (RestartPolicy::OnFailure, None, true),
        (RestartPolicy::Never, Some(1), false),
    ] {
        let mut h = Harness::new();
        h.set(&[desired("a", "/bin/a", policy)]);
        h.at(60.0);
        let e = h.exit("a", code);
        assert_eq!(starts(&e) == 1, restarted, "{policy:?} {code:?}");
        if !restarted {
            assert_eq!(h.state("a"), Some(WorkloadState::Exited));
            assert_eq!(h.sup.status()[0].last_exit_code, code);
        }
    }
}

#[test]
fn rapid_exits_back_off_exponentially_and_show_a_crash_loop() {
    let mut h = Harness::new();
    h.set(&[desired("a", "/bin/false", RestartPolicy::Always)]);
    let mut t = 0.0;
    let mut delays = vec![];
    for _ in 0..6 {
        t += 0.1;
        h.at(t);
        assert!(
            h.exit("a", Some(1)).is_empty(),
            "restart must wait for backoff"
        );
        let deadline = h.sup.next_deadline().unwrap();
        let delay = deadline.duration_since(h.now).as_secs_f64();
        delays.push(delay);
        t += delay;
        h.at(t);
        assert_eq!(starts(&h.tick()), 1);
    }
    assert_eq!(delays, vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0]);
    t += 0.1;
    h.at(t);
    h.exit("a", Some(1));
    assert_eq!(h.state("a"), Some(WorkloadState::CrashLooping));
    let status = &h.sup.status()[0];
    assert_eq!(status.restarts, 7);
    assert!(
        status
            .message
            .as_deref()
            .unwrap_or("")
            .contains("crash loop"),
        "{status:?}"
    );
    // Running stably for a while resets the backoff.
    h.at(t + 64.0);
    h.tick();
    h.at(t + 64.0 + 30.0);
    assert_eq!(starts(&h.exit("a", Some(1))), 1);
}

#[test]
fn start_failure_is_retried_with_backoff() {
    let mut h = Harness::new();
    let e = h
        .sup
        .set_desired(h.now, &[desired("a", "/nope", RestartPolicy::Always)]);
    let Effect::Start { instance, .. } = e[0].clone() else {
        panic!("{e:?}")
    };
    let more = h.sup.on_event(
        h.now,
        Event::StartFailed {
            name: "a".into(),
            instance,
            error: "no such file".into(),
        },
    );
    assert!(more.is_empty());
    assert_eq!(h.state("a"), Some(WorkloadState::Pending));
    assert!(
        h.sup.status()[0]
            .message
            .as_deref()
            .unwrap_or("")
            .contains("no such file")
    );
    assert!(h.sup.next_deadline().is_some());
}

#[test]
fn stale_events_are_ignored() {
    let mut h = Harness::new();
    h.set(&[desired("a", "/bin/a", RestartPolicy::Always)]);
    let (instance, _) = h.instance("a").unwrap();
    let e = h.sup.on_event(
        h.now,
        Event::Exited {
            name: "a".into(),
            instance: instance + 7,
            code: Some(1),
            signal: None,
        },
    );
    assert!(e.is_empty());
    assert_eq!(h.state("a"), Some(WorkloadState::Running));
    assert!(
        h.sup
            .on_event(
                h.now,
                Event::Exited {
                    name: "zz".into(),
                    instance: 1,
                    code: None,
                    signal: None
                }
            )
            .is_empty()
    );
}

#[test]
fn removed_while_starting_is_stopped_once_it_reports_in() {
    let mut h = Harness::new();
    let e = h
        .sup
        .set_desired(h.now, &[desired("a", "/bin/a", RestartPolicy::Always)]);
    let Effect::Start { instance, .. } = e[0].clone() else {
        panic!()
    };
    assert!(h.sup.set_desired(h.now, &[]).is_empty());
    let e = h.sup.on_event(
        h.now,
        Event::Started {
            name: "a".into(),
            instance,
            pid: 9,
            at: h.wall(),
        },
    );
    assert_eq!(
        e,
        vec![Effect::Stop {
            name: "a".into(),
            instance,
            pid: 9
        }]
    );
}

#[derive(Debug, Clone)]
enum Op {
    Set(Vec<(u8, u8)>),
    Exit(u8, i32),
    Advance(u16),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        proptest::collection::vec((0u8..4, 0u8..3), 0..4).prop_map(Op::Set),
        (0u8..4, 0i32..3).prop_map(|(n, c)| Op::Exit(n, c)),
        (0u16..120).prop_map(Op::Advance),
    ]
}

proptest! {
    // Whatever happens, the supervisor never runs two instances of one workload, never runs
    // something undesired once stops complete, and once left alone, runs exactly the desired
    // set with the desired specs.
    #[test]
    fn converges_to_desired(ops in proptest::collection::vec(op(), 1..40)) {
        let mut h = Harness::new();
        let mut t = 0.0;
        let mut last: Vec<DesiredWorkload> = vec![];
        for op in ops {
            match op {
                Op::Set(items) => {
                    let mut seen = std::collections::BTreeSet::new();
                    last = items.iter().filter(|(n, _)| seen.insert(*n))
                        .map(|(n, v)| desired(&format!("w{n}"), &format!("/bin/v{v}"), RestartPolicy::Always)).collect();
                    h.set(&last);
                }
                Op::Exit(n, code) => {
                    if h.instance(&format!("w{n}")).is_some() { h.exit(&format!("w{n}"), Some(code)); }
                }
                Op::Advance(secs) => { t += f64::from(secs); h.at(t); h.tick(); }
            }
            let running = h.sup.running();
            let mut names = std::collections::BTreeSet::new();
            for (name, _, _) in &running { prop_assert!(names.insert(name.clone()), "two instances of {}", name); }
        }
        // Let every stopping process exit (as SIGTERM would) and every backoff run out.
        for _ in 0..20 {
            for status in h.sup.status() {
                if status.state == WorkloadState::Stopped { h.exit(&status.name, None); }
            }
            t += 400.0; h.at(t); h.tick();
        }
        let status = h.sup.status();
        prop_assert_eq!(status.len(), last.len());
        for want in &last {
            let got = status.iter().find(|s| s.name == want.spec.name).unwrap();
            prop_assert_eq!(got.state, WorkloadState::Running);
            prop_assert_eq!(&got.spec_hash, &want.spec_hash);
        }
    }
}
