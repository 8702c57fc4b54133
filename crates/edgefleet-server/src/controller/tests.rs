use super::*;
use crate::store::DesiredUpdate;
use edgefleet_core::labels::parse_assignments;
use edgefleet_wire::Timestamp;
use edgefleet_wire::manifest::*;

fn node(name: &str, labels: &str) -> NodeRecord {
    crate::store::fixtures::node(
        name,
        parse_assignments(labels).unwrap(),
        time::OffsetDateTime::UNIX_EPOCH,
    )
}

fn deployment(name: &str, selector: &str, priority: i32, command: &str) -> DeploymentRecord {
    let spec = DeploymentSpec {
        streams: Vec::new(),
        selector: edgefleet_core::selector::parse(selector).unwrap(),
        priority,
        workloads: vec![WorkloadSpec::process("app", command)],
        rollout: Default::default(),
    };
    crate::store::fixtures::deployment(name, spec, time::OffsetDateTime::UNIX_EPOCH)
}

/// The desired updates with no rollouts: every deployment at its newest revision.
fn plan(
    nodes: &[NodeRecord],
    deployments: &[DeploymentRecord],
) -> (Vec<DesiredUpdate>, Recomputed) {
    let rollouts = BTreeMap::new();
    let specs = RevisionSpecs::new();
    desired_updates(
        nodes,
        &Fleet {
            deployments,
            rollouts: &rollouts,
            specs: &specs,
        },
    )
}

/// Applies a plan to the node records, as the store would.
fn store(nodes: &mut [NodeRecord], updates: Vec<DesiredUpdate>) {
    for update in updates {
        let node = nodes.iter_mut().find(|n| n.name == update.node).unwrap();
        node.desired_generation = update.generation;
        node.desired_workloads = update.workloads;
        node.conflicts = update.conflicts;
    }
}

#[test]
fn generation_moves_only_when_workloads_change() {
    let mut nodes = vec![node("a", "site=x"), node("b", "site=y")];
    let deployments = vec![deployment("web", "site=x", 0, "/bin/web")];
    let (updates, recomputed) = plan(&nodes, &deployments);
    assert_eq!(recomputed.changed, vec![("a".to_string(), 1)]);
    assert_eq!(recomputed.selected["web"], 1);
    store(&mut nodes, updates);
    assert_eq!(nodes[0].desired_workloads.len(), 1);
    assert_eq!(nodes[0].desired_workloads[0].deployment, "web");

    // Nothing changed: no updates, no new generation.
    let (updates, recomputed) = plan(&nodes, &deployments);
    assert!(updates.is_empty());
    assert!(recomputed.changed.is_empty());

    // A new revision moves the generation again.
    let deployments = vec![deployment("web", "site=x", 0, "/bin/web2")];
    let (updates, recomputed) = plan(&nodes, &deployments);
    assert_eq!(recomputed.changed, vec![("a".to_string(), 2)]);
    store(&mut nodes, updates);

    // Deleting everything empties the node with one more generation.
    let (_, recomputed) = plan(&nodes, &[]);
    assert_eq!(recomputed.changed, vec![("a".to_string(), 3)]);
}

#[test]
fn conflicts_are_stored_without_a_new_generation_and_revoked_nodes_are_left_alone() {
    let mut nodes = vec![node("a", ""), node("gone", "")];
    nodes[1].revoked = true;
    let first = vec![deployment("one", "", 5, "/bin/one")];
    let (updates, _) = plan(&nodes, &first);
    assert!(updates.iter().all(|u| u.node == "a"));
    store(&mut nodes, updates);
    assert_eq!(nodes[0].desired_generation, 1);

    // "two" loses the tie by name, so the workloads stay the same but a conflict appears.
    let both = vec![first[0].clone(), deployment("two", "", 5, "/bin/two")];
    let (updates, recomputed) = plan(&nodes, &both);
    assert!(recomputed.changed.is_empty());
    assert_eq!(
        recomputed.selected["two"], 1,
        "revoked nodes are not counted"
    );
    assert_eq!(updates.len(), 1);
    assert_eq!(updates[0].generation, 1);
    assert_eq!(updates[0].conflicts[0].losers, vec!["two".to_string()]);
}

#[tokio::test]
async fn notify_wakes_subscribers() {
    let dir = tempfile::tempdir().unwrap();
    let store = crate::store::open(dir.path()).await.unwrap();
    let controller = Controller::new(store, Duration::from_secs(45));
    let mut rx = controller.subscribe("a");
    controller.notify("b");
    assert!(!rx.has_changed().unwrap());
    controller.notify("a");
    assert!(rx.has_changed().unwrap());
    rx.changed().await.unwrap();
}

mod rollouts {
    //! The controller against a real SQLite store, with nodes played by writing their
    //! reports: the glue between stored records, observations and the core's rollout.

    use super::*;
    use crate::store::{CertRecord, Enrollment, JoinTokenRecord};
    use edgefleet_core::hash::revision_hash;
    use edgefleet_wire::node::{ReportedState, WorkloadState, WorkloadStatus};
    use edgefleet_wire::rollout::RolloutPhase;
    use time::macros::datetime;

    const T0: Timestamp = datetime!(2026-11-26 12:00 UTC);

    struct Harness {
        _dir: tempfile::TempDir,
        store: Arc<dyn Store>,
        controller: Controller,
        now: Timestamp,
    }

    fn manifest(command: &str, rollout: RolloutStrategy) -> DeploymentManifest {
        DeploymentManifest::new(
            "web",
            DeploymentSpec {
                streams: Vec::new(),
                selector: Selector::default(),
                priority: 0,
                workloads: vec![WorkloadSpec::process("app", command)],
                rollout,
            },
        )
    }

    impl Harness {
        async fn new(n_nodes: usize) -> Self {
            let dir = tempfile::tempdir().unwrap();
            let store = crate::store::open(dir.path()).await.unwrap();
            store
                .create_join_token(
                    JoinTokenRecord {
                        id: "tok".into(),
                        secret_sha256: "x".into(),
                        labels: Default::default(),
                        created_at: T0,
                        expires_at: T0 + time::Duration::days(1),
                        uses_allowed: None,
                        uses: 0,
                        revoked: false,
                        description: None,
                    },
                    NewAudit::new(T0, "test", "token.create", "token/tok", ""),
                )
                .await
                .unwrap();
            for i in 0..n_nodes {
                let name = format!("n{i}");
                store
                    .enroll_node(Enrollment {
                        name: name.clone(),
                        labels: Default::default(),
                        facts: Default::default(),
                        cert: CertRecord {
                            serial: format!("s{i}"),
                            not_after: T0 + time::Duration::days(7),
                        },
                        token_id: "tok".into(),
                        now: T0,
                        audit: NewAudit::new(T0, "test", "enroll", format!("node/{name}"), ""),
                    })
                    .await
                    .unwrap();
                store
                    .record_presence(crate::store::Presence {
                        node: name.clone(),
                        last_seen: T0,
                        applied_generation: None,
                        reported: None,
                    })
                    .await
                    .unwrap();
            }
            let controller = Controller::new(store.clone(), Duration::from_secs(45));
            controller.load(T0).await.unwrap();
            Self {
                _dir: dir,
                store,
                controller,
                now: T0,
            }
        }

        async fn apply(&self, manifest: DeploymentManifest) {
            let item = ApplyItem {
                revision: revision_hash(&manifest.spec),
                manifest,
            };
            self.controller
                .apply(vec![item], vec![], None, "test", self.now)
                .await
                .unwrap();
        }

        /// Every node applies its desired state and reports it (crashing where `bad`).
        async fn nodes_report(&mut self, bad: &[&str]) {
            self.now += time::Duration::seconds(1);
            for node in self.store.list_nodes().await.unwrap() {
                let report = ReportedState {
                    node: node.name.clone(),
                    applied_generation: node.desired_generation,
                    workloads: node
                        .desired_workloads
                        .iter()
                        .map(|w| WorkloadStatus {
                            name: w.spec.name.clone(),
                            deployment: w.deployment.clone(),
                            revision: w.revision.clone(),
                            spec_hash: w.spec_hash.clone(),
                            state: if bad.contains(&node.name.as_str())
                                && w.spec.command == "/bin/bad"
                            {
                                WorkloadState::CrashLooping
                            } else {
                                WorkloadState::Running
                            },
                            pid: Some(1),
                            restarts: 0,
                            last_exit_code: None,
                            started_at: None,
                            message: None,
                            ready: None,
                            runtime: None,
                        })
                        .collect(),
                    agent_version: String::new(),
                    certificate_not_after: None,
                    locks: vec![],
                };
                self.store
                    .set_node_reported(&node.name, report, self.now)
                    .await
                    .unwrap();
            }
            self.controller.step_rollouts(self.now).await.unwrap();
        }

        async fn commands(&self) -> Vec<(String, String)> {
            self.store
                .list_nodes()
                .await
                .unwrap()
                .into_iter()
                .map(|n| {
                    (
                        n.name,
                        n.desired_workloads
                            .first()
                            .map(|w| w.spec.command.clone())
                            .unwrap_or_default(),
                    )
                })
                .collect()
        }
    }

    fn batches_of_one() -> RolloutStrategy {
        RolloutStrategy {
            batch_size: Amount::Count(1),
            ..RolloutStrategy::default()
        }
    }

    #[tokio::test]
    async fn an_update_reaches_nodes_batch_by_batch_and_a_bad_one_rolls_back() {
        let mut h = Harness::new(3).await;
        h.apply(manifest("/bin/good", batches_of_one())).await;
        // A new deployment rolls out too: one node first.
        assert_eq!(
            h.commands().await,
            vec![
                ("n0".into(), String::new()),
                ("n1".into(), String::new()),
                ("n2".into(), String::new())
            ]
        );
        h.controller.step_rollouts(h.now).await.unwrap();
        assert_eq!(h.commands().await[0].1, "/bin/good");
        assert_eq!(h.commands().await[1].1, "");
        for _ in 0..4 {
            h.nodes_report(&[]).await;
        }
        assert!(h.commands().await.iter().all(|(_, c)| c == "/bin/good"));
        let rollout = h.controller.rollout("web").await.unwrap();
        assert_eq!(rollout.phase, RolloutPhase::Succeeded);

        // Revision 2 crashes on n0: the canary step fails and rolls back; n1 and n2 never
        // see it.
        h.apply(manifest("/bin/bad", batches_of_one())).await;
        h.controller.step_rollouts(h.now).await.unwrap();
        assert_eq!(h.commands().await[0].1, "/bin/bad");
        h.nodes_report(&["n0"]).await;
        let rollout = h.controller.rollout("web").await.unwrap();
        assert_eq!(rollout.phase, RolloutPhase::RolledBack, "{rollout:#?}");
        assert!(h.commands().await.iter().all(|(_, c)| c == "/bin/good"));
        let n0 = h.store.get_node("n0").await.unwrap().unwrap();
        assert!(n0.desired_workloads[0].rolled_back);
        let history = h.store.list_rollouts("web", 10).await.unwrap();
        assert_eq!(history.len(), 2);
        let audit = h
            .store
            .list_audit(10, Some("deployment/web"))
            .await
            .unwrap();
        assert!(
            audit.iter().any(|a| a.detail.contains("rolled-back")),
            "{audit:#?}"
        );
    }

    #[tokio::test]
    async fn a_restarted_controller_resumes_the_rollout() {
        let mut h = Harness::new(4).await;
        h.apply(manifest("/bin/good", batches_of_one())).await;
        h.controller.step_rollouts(h.now).await.unwrap();
        h.nodes_report(&[]).await;
        let before = h.controller.rollout("web").await.unwrap();
        assert!(before.phase.is_active());
        // A new controller on the same store: what a server restart does.
        let restarted = Controller::new(h.store.clone(), Duration::from_secs(45));
        restarted.load(h.now).await.unwrap();
        assert_eq!(restarted.rollout("web").await.unwrap(), before);
        h.controller = restarted;
        for _ in 0..6 {
            h.nodes_report(&[]).await;
        }
        assert_eq!(
            h.controller.rollout("web").await.unwrap().phase,
            RolloutPhase::Succeeded
        );
        assert!(h.commands().await.iter().all(|(_, c)| c == "/bin/good"));
    }
}

mod observations {
    use super::*;
    use edgefleet_core::rollout::Health;
    use edgefleet_wire::api::DesiredWorkload;
    use edgefleet_wire::node::{ReportedState, WorkloadState, WorkloadStatus};
    use std::collections::HashSet;

    fn desired(command: &str) -> DesiredWorkload {
        let spec = WorkloadSpec::process("app", command);
        DesiredWorkload {
            streams: Vec::new(),
            deployment: "web".into(),
            revision: "r2".into(),
            spec_hash: edgefleet_core::hash::workload_hash(&spec),
            spec,
            rolled_back: false,
            labels: Default::default(),
        }
    }

    fn reporting(restarts: u32, state: WorkloadState) -> NodeRecord {
        let now = time::OffsetDateTime::UNIX_EPOCH;
        let mut record = node("n0", "");
        record.last_seen = Some(now);
        record.desired_workloads = vec![desired("/bin/new")];
        record.desired_generation = 2;
        record.applied_generation = 2;
        let want = &record.desired_workloads[0];
        record.reported = Some(ReportedState {
            node: "n0".into(),
            applied_generation: 2,
            workloads: vec![WorkloadStatus {
                name: "app".into(),
                deployment: "web".into(),
                revision: "r2".into(),
                spec_hash: want.spec_hash.clone(),
                state,
                pid: Some(7),
                restarts,
                last_exit_code: Some(3),
                started_at: None,
                message: None,
                ready: None,
                runtime: None,
            }],
            agent_version: String::new(),
            certificate_not_after: None,
            locks: vec![],
        });
        record
    }

    fn health(node: &NodeRecord, previous: &HashSet<String>) -> (bool, Health) {
        let view = RolloutView {
            deployment: "web",
            to_revision: "r2",
            previous_specs: previous,
        };
        let observation = observe(
            node,
            &view,
            &Vec::new(),
            time::OffsetDateTime::UNIX_EPOCH,
            Duration::from_secs(45),
        )
        .unwrap();
        (observation.updated, observation.health)
    }

    #[test]
    fn a_new_spec_that_restarted_is_unhealthy_an_old_one_is_not() {
        let none = HashSet::new();
        assert_eq!(
            health(&reporting(0, WorkloadState::Running), &none),
            (true, Health::Healthy)
        );
        assert_eq!(
            health(&reporting(1, WorkloadState::Running), &none),
            (
                true,
                Health::Unhealthy(
                    "workload app restarted 1 times since the update (last exit code 3)".into()
                )
            )
        );
        // The same spec ran before the update: its old restarts do not count.
        let node = reporting(4, WorkloadState::Running);
        let previous: HashSet<String> = [node.desired_workloads[0].spec_hash.clone()].into();
        assert_eq!(health(&node, &previous), (true, Health::Healthy));
        assert!(matches!(
            health(&reporting(0, WorkloadState::CrashLooping), &none).1,
            Health::Unhealthy(_)
        ));
        assert_eq!(
            health(&reporting(0, WorkloadState::Pending), &none).1,
            Health::Progressing
        );
        // Reported at an older generation: not updated yet.
        let mut stale = reporting(0, WorkloadState::Running);
        stale.applied_generation = 1;
        assert!(!health(&stale, &none).0);
    }

    #[test]
    fn a_workload_with_a_readiness_probe_is_healthy_only_once_ready() {
        let none = HashSet::new();
        let with_ready = |ready: Option<bool>| {
            let mut node = reporting(0, WorkloadState::Running);
            if let Some(reported) = &mut node.reported {
                reported.workloads[0].ready = ready;
            }
            health(&node, &none).1
        };
        assert_eq!(with_ready(Some(false)), Health::Progressing);
        assert_eq!(with_ready(Some(true)), Health::Healthy);
        assert_eq!(with_ready(None), Health::Healthy);
    }
}
