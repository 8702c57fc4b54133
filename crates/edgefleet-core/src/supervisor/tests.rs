use std::time::{Duration, Instant};

use edgefleet_wire::api::DesiredWorkload;
use edgefleet_wire::manifest::{RestartPolicy, WorkloadSpec};
use edgefleet_wire::node::{WorkloadState, WorkloadStatus};
use proptest::prelude::*;

use super::*;
use crate::hash::workload_hash;

fn desired(name: &str, command: &str, policy: RestartPolicy) -> DesiredWorkload {
    let spec = WorkloadSpec {
        restart_policy: policy,
        ..WorkloadSpec::process(name, command)
    };
    DesiredWorkload {
        streams: Vec::new(),
        deployment: "d".into(),
        revision: "r1".into(),
        spec_hash: workload_hash(&spec),
        spec,
        rolled_back: false,
        labels: Default::default(),
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
    /// Carries out effects like a shell whose preparations and starts always succeed.
    fn run(&mut self, effects: Vec<Effect>) -> Vec<Effect> {
        let mut out = effects.clone();
        for effect in effects {
            let ev = match effect {
                Effect::Start { name, instance, .. } => {
                    self.next_pid += 1;
                    Event::Started {
                        name,
                        instance,
                        pid: Some(self.next_pid),
                        at: self.wall(),
                    }
                }
                Effect::Prepare { name, instance, .. } => Event::Prepared { name, instance },
                Effect::Stop { .. } | Effect::Kill { .. } => continue,
            };
            let more = self.sup.on_event(self.now, ev);
            out.extend(self.run(more));
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
                reason: None,
            },
        );
        self.run(e)
    }
    fn tick(&mut self) -> Vec<Effect> {
        let e = self.sup.tick(self.now);
        self.run(e)
    }
    fn instance(&self, name: &str) -> Option<(u64, Option<u32>)> {
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

/// Sets `want` as the only desired workload and answers its preparation, without
/// answering the start: returns the instance being started.
fn start_effect(h: &mut Harness, want: DesiredWorkload) -> u64 {
    let name = want.spec.name.clone();
    let e = h.sup.set_desired(h.now, &[want]);
    let [Effect::Prepare { instance, .. }] = e.as_slice() else {
        panic!("{e:?}")
    };
    let e = h.sup.on_event(
        h.now,
        Event::Prepared {
            name,
            instance: *instance,
        },
    );
    let [Effect::Start { instance, .. }] = e.as_slice() else {
        panic!("{e:?}")
    };
    *instance
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
    let (instance, _) = h.instance("a").unwrap();
    let e = h.set(&[]);
    assert_eq!(
        e,
        vec![Effect::Stop {
            name: "a".into(),
            instance,
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
    // The new spec is prepared first, then the old instance is stopped.
    assert!(
        matches!(e.as_slice(), [Effect::Prepare { .. }, Effect::Stop { .. }]),
        "{e:?}"
    );
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
    let instance = start_effect(&mut h, desired("a", "/nope", RestartPolicy::Always));
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
            reason: None,
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
                    signal: None,
                    reason: None,
                }
            )
            .is_empty()
    );
}

#[test]
fn removed_while_starting_is_stopped_once_it_reports_in() {
    let mut h = Harness::new();
    let instance = start_effect(&mut h, desired("a", "/bin/a", RestartPolicy::Always));
    assert!(h.sup.set_desired(h.now, &[]).is_empty());
    let e = h.sup.on_event(
        h.now,
        Event::Started {
            name: "a".into(),
            instance,
            pid: Some(9),
            at: h.wall(),
        },
    );
    assert_eq!(
        e,
        vec![Effect::Stop {
            name: "a".into(),
            instance,
        }]
    );
}

fn status_of(h: &Harness, name: &str) -> WorkloadStatus {
    h.sup
        .status()
        .into_iter()
        .find(|s| s.name == name)
        .expect("status")
}

/// Sets `desired` without answering anything.
fn set_raw(h: &mut Harness, desired: &[DesiredWorkload]) -> Vec<Effect> {
    h.sup.set_desired(h.now, desired)
}

#[test]
fn an_update_keeps_the_old_instance_running_until_the_new_spec_is_prepared() {
    let mut h = Harness::new();
    let v1 = desired("a", "/bin/v1", RestartPolicy::Always);
    h.set(std::slice::from_ref(&v1));
    let (old, _) = h.instance("a").unwrap();
    let v2 = desired("a", "/bin/v2", RestartPolicy::Always);
    let e = set_raw(&mut h, std::slice::from_ref(&v2));
    let [Effect::Prepare { instance: prep, .. }] = e.as_slice() else {
        panic!("{e:?}")
    };
    let prep = *prep;
    // While the image is pulled the old instance runs, and is reported as what runs.
    h.sup.on_event(
        h.now,
        Event::Progress {
            name: "a".into(),
            instance: prep,
            message: "pulling: 40%".into(),
        },
    );
    let status = status_of(&h, "a");
    assert_eq!(status.state, WorkloadState::Running);
    assert_eq!(status.spec_hash, v1.spec_hash);
    assert_eq!(
        status.message.as_deref(),
        Some("preparing the update: pulling: 40%")
    );
    assert_eq!(h.instance("a").unwrap().0, old);
    // Prepared: now, and only now, the old instance is stopped; the new one starts once
    // it is gone, without a second preparation.
    let e = h.sup.on_event(
        h.now,
        Event::Prepared {
            name: "a".into(),
            instance: prep,
        },
    );
    assert_eq!(
        e,
        vec![Effect::Stop {
            name: "a".into(),
            instance: old
        }]
    );
    let e = h.exit("a", None);
    assert!(matches!(e.as_slice(), [Effect::Start { .. }]), "{e:?}");
    let status = status_of(&h, "a");
    assert_eq!(status.spec_hash, v2.spec_hash);
    assert_eq!(status.state, WorkloadState::Running);
    assert_eq!(status.restarts, 0);
}

#[test]
fn a_failed_preparation_leaves_the_old_instance_running_and_is_retried() {
    let mut h = Harness::new();
    let v1 = desired("a", "/bin/v1", RestartPolicy::Always);
    h.set(std::slice::from_ref(&v1));
    let (old, _) = h.instance("a").unwrap();
    let e = set_raw(&mut h, &[desired("a", "/bin/v2", RestartPolicy::Always)]);
    let [Effect::Prepare { instance: prep, .. }] = e.as_slice() else {
        panic!("{e:?}")
    };
    let e = h.sup.on_event(
        h.now,
        Event::PrepareFailed {
            name: "a".into(),
            instance: *prep,
            error: "no such image".into(),
        },
    );
    assert!(e.is_empty());
    let status = status_of(&h, "a");
    assert_eq!(status.state, WorkloadState::Running);
    assert_eq!(status.spec_hash, v1.spec_hash);
    assert!(
        status
            .message
            .as_deref()
            .unwrap_or("")
            .contains("no such image"),
        "{status:?}"
    );
    assert_eq!(h.instance("a").unwrap().0, old);
    // Retried after the backoff: the harness prepares it, and the old one is replaced.
    let deadline = h.sup.next_deadline().expect("a retry is scheduled");
    h.now = deadline;
    let e = h.tick();
    assert!(
        matches!(e.as_slice(), [Effect::Prepare { .. }, Effect::Stop { .. }]),
        "{e:?}"
    );
}

#[test]
fn a_failed_preparation_with_nothing_running_backs_off_without_a_crash_loop() {
    let mut h = Harness::new();
    let e = set_raw(&mut h, &[desired("a", "/bin/a", RestartPolicy::Always)]);
    let mut instance = match e.as_slice() {
        [Effect::Prepare { instance, .. }] => *instance,
        _ => panic!("{e:?}"),
    };
    let mut delays = vec![];
    for _ in 0..5 {
        h.sup.on_event(
            h.now,
            Event::PrepareFailed {
                name: "a".into(),
                instance,
                error: "registry unreachable".into(),
            },
        );
        let status = status_of(&h, "a");
        assert_eq!(status.state, WorkloadState::Pending, "{status:?}");
        assert!(status.message.unwrap().contains("registry unreachable"));
        let deadline = h.sup.next_deadline().unwrap();
        delays.push(deadline.duration_since(h.now).as_secs());
        h.now = deadline;
        let e = h.sup.tick(h.now);
        instance = match e.as_slice() {
            [Effect::Prepare { instance, .. }] => *instance,
            _ => panic!("{e:?}"),
        };
    }
    assert_eq!(delays, vec![1, 2, 4, 8, 16]);
}

#[test]
fn adopted_instances_are_kept_replaced_or_stopped() {
    let v1 = desired("a", "/bin/v1", RestartPolicy::Always);
    let adopted = |name: &str, w: &DesiredWorkload| Adopted {
        name: name.into(),
        key: w.spec_hash.clone(),
        spec_hash: w.spec_hash.clone(),
        deployment: w.deployment.clone(),
        revision: w.revision.clone(),
        pid: Some(77),
        started_at: None,
    };
    // Same spec: kept, nothing started.
    let mut h = Harness::new();
    let instance = h.sup.adopt(h.now, adopted("a", &v1));
    assert!(h.set(std::slice::from_ref(&v1)).is_empty());
    assert_eq!(h.instance("a"), Some((instance, Some(77))));
    assert_eq!(status_of(&h, "a").state, WorkloadState::Running);
    // Its exit is handled like any other: restarted without a new preparation.
    h.at(60.0);
    let e = h.exit("a", Some(1));
    assert!(matches!(e.as_slice(), [Effect::Start { .. }]), "{e:?}");

    // Another spec: prepared, then replaced.
    let mut h = Harness::new();
    let instance = h.sup.adopt(h.now, adopted("a", &v1));
    let e = set_raw(&mut h, &[desired("a", "/bin/v2", RestartPolicy::Always)]);
    assert!(matches!(e.as_slice(), [Effect::Prepare { .. }]), "{e:?}");

    // Not desired: stopped.
    let mut h = Harness::new();
    let instance_b = h.sup.adopt(h.now, adopted("b", &v1));
    let e = h.set(std::slice::from_ref(&v1));
    assert!(
        e.contains(&Effect::Stop {
            name: "b".into(),
            instance: instance_b
        }),
        "{e:?}"
    );
    let _ = instance;
}

#[test]
fn a_failed_liveness_probe_restarts_and_counts_as_a_crash() {
    let mut h = Harness::new();
    h.set(&[desired("a", "/bin/a", RestartPolicy::Always)]);
    let (instance, _) = h.instance("a").unwrap();
    // A stale verdict about another instance is ignored.
    assert!(
        h.sup
            .on_event(
                h.now,
                Event::Unhealthy {
                    name: "a".into(),
                    instance: instance + 1,
                    reason: "x".into()
                }
            )
            .is_empty()
    );
    let e = h.sup.on_event(
        h.now,
        Event::Unhealthy {
            name: "a".into(),
            instance,
            reason: "HTTP probe: status 503".into(),
        },
    );
    assert_eq!(
        e,
        vec![Effect::Stop {
            name: "a".into(),
            instance
        }]
    );
    assert!(
        status_of(&h, "a")
            .message
            .unwrap()
            .contains("liveness probe failed: HTTP probe: status 503")
    );
    // It ran briefly: the restart waits for the backoff, like a crash.
    h.at(1.0);
    assert!(h.exit("a", None).is_empty());
    let status = status_of(&h, "a");
    assert_eq!(status.restarts, 1);
    assert_eq!(status.state, WorkloadState::Pending);
    h.at(2.0);
    assert_eq!(starts(&h.tick()), 1);
}

#[test]
fn readiness_is_reported_only_for_workloads_with_a_probe() {
    use edgefleet_wire::workload::{Probe, ProbeAction, TcpSocketProbe};
    let mut h = Harness::new();
    let mut spec = WorkloadSpec::process("a", "/bin/a");
    spec.readiness_probe = Some(Probe::new(ProbeAction::TcpSocket(&TcpSocketProbe {
        port: 80,
        host: None,
    })));
    let with_probe = DesiredWorkload {
        streams: Vec::new(),
        deployment: "d".into(),
        revision: "r1".into(),
        spec_hash: workload_hash(&spec),
        spec,
        rolled_back: false,
        labels: Default::default(),
    };
    h.set(&[with_probe, desired("b", "/bin/b", RestartPolicy::Always)]);
    assert_eq!(status_of(&h, "a").ready, Some(false));
    assert_eq!(status_of(&h, "b").ready, None);
    let (instance, _) = h.instance("a").unwrap();
    h.sup.on_event(
        h.now,
        Event::Readiness {
            name: "a".into(),
            instance,
            ready: false,
            reason: Some("TCP probe 127.0.0.1:80: connection refused".into()),
        },
    );
    assert_eq!(
        status_of(&h, "a").message.as_deref(),
        Some("not ready: TCP probe 127.0.0.1:80: connection refused")
    );
    h.sup.on_event(
        h.now,
        Event::Readiness {
            name: "a".into(),
            instance,
            ready: true,
            reason: None,
        },
    );
    let status = status_of(&h, "a");
    assert_eq!(status.ready, Some(true));
    assert_eq!(status.message, None);
    // After an exit the verdict is gone until the next instance is probed.
    h.at(30.0);
    h.exit("a", Some(1));
    assert_eq!(status_of(&h, "a").ready, Some(false));
}

#[test]
fn a_new_key_with_the_same_spec_restarts_without_preparing() {
    let mut h = Harness::new();
    let w = desired("a", "/bin/a", RestartPolicy::Always);
    h.set(std::slice::from_ref(&w));
    let (old, _) = h.instance("a").unwrap();
    let rekeyed = Wanted {
        workload: w.clone(),
        key: format!("{}+files:abc", w.spec_hash),
    };
    let e = h.sup.set_wanted(h.now, std::slice::from_ref(&rekeyed));
    assert_eq!(
        e,
        vec![Effect::Stop {
            name: "a".into(),
            instance: old
        }]
    );
    let e = h.exit("a", None);
    assert!(matches!(e.as_slice(), [Effect::Start { .. }]), "{e:?}");
    // The reported spec hash is the spec's, not the key.
    assert_eq!(status_of(&h, "a").spec_hash, w.spec_hash);
    // The same key again changes nothing.
    assert!(h.sup.set_wanted(h.now, &[rekeyed]).is_empty());
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
