use super::*;

fn basis_of(deployments: &[(&str, &str)], fingerprint: &str, n_nodes: u32) -> PlanBasis {
    PlanBasis {
        deployments: deployments
            .iter()
            .map(|(n, r)| ((*n).to_owned(), (*r).to_owned()))
            .collect(),
        windows: BTreeMap::new(),
        nodes_fingerprint: fingerprint.to_owned(),
        n_nodes,
        node_labels: BTreeMap::new(),
    }
}

#[test]
fn basis_differences_name_the_nodes_that_changed() {
    let mut planned = basis_of(&[], "f1", 2);
    planned.node_labels = [("a", "h1"), ("b", "h2")]
        .into_iter()
        .map(|(n, h)| (n.to_owned(), h.to_owned()))
        .collect();
    let mut current = basis_of(&[], "f2", 2);
    current.node_labels = [("a", "h9"), ("c", "h3")]
        .into_iter()
        .map(|(n, h)| (n.to_owned(), h.to_owned()))
        .collect();
    assert_eq!(
        basis_differences(&planned, &current),
        vec![
            "node a was relabelled".to_owned(),
            "node b was revoked".to_owned(),
            "node c was enrolled".to_owned(),
        ]
    );
}

#[test]
fn basis_differences_name_what_changed() {
    let planned = basis_of(&[("web", "aaaaaaaaaaaa1111"), ("gone", "bb")], "f1", 3);
    assert!(basis_differences(&planned, &planned).is_empty());
    let current = basis_of(&[("web", "cccccccccccc2222"), ("new", "dd")], "f2", 4);
    assert_eq!(
        basis_differences(&planned, &current),
        vec![
            "deployment gone was deleted".to_owned(),
            "deployment web is at revision cccccccccccc now (the plan saw aaaaaaaaaaaa)".to_owned(),
            "deployment new was created".to_owned(),
            "the fleet changed: nodes were enrolled, revoked or relabelled (3 nodes when planned, 4 now)"
                .to_owned(),
        ]
    );
}

mod plans {
    use super::super::*;
    use edgefleet_core::labels::parse_assignments;
    use edgefleet_core::rollout::{Rollout, RolloutSpec};
    use edgefleet_wire::manifest::*;
    use edgefleet_wire::node::{ReportedState, UpdateLock};
    use edgefleet_wire::plan::ChangeKind;
    use time::macros::datetime;

    const NOW: Timestamp = datetime!(2026-11-26 12:00 UTC);

    fn node(name: &str, labels: &str, online: bool) -> NodeRecord {
        NodeRecord {
            last_seen: online.then_some(NOW - time::Duration::seconds(5)),
            ..crate::store::fixtures::node(name, parse_assignments(labels).unwrap(), NOW)
        }
    }

    fn spec(selector: &str, priority: i32, workloads: &[(&str, &str)]) -> DeploymentSpec {
        DeploymentSpec {
            streams: Vec::new(),
            selector: edgefleet_core::selector::parse(selector).unwrap(),
            priority,
            workloads: workloads
                .iter()
                .map(|(name, command)| WorkloadSpec::process(*name, *command))
                .collect(),
            rollout: RolloutStrategy::default(),
        }
    }

    fn record(name: &str, spec: DeploymentSpec) -> DeploymentRecord {
        crate::store::fixtures::deployment(name, spec, NOW)
    }

    struct Inputs {
        nodes: Vec<NodeRecord>,
        deployments: Vec<DeploymentRecord>,
        windows: Vec<WindowRecord>,
        rollouts: BTreeMap<String, Rollout>,
        specs: RevisionSpecs,
    }

    impl Inputs {
        fn world(&self) -> World<'_> {
            World {
                nodes: &self.nodes,
                deployments: &self.deployments,
                windows: &self.windows,
                rollouts: &self.rollouts,
                specs: &self.specs,
                now: NOW,
                not_ready_after: Duration::from_secs(45),
            }
        }
    }

    fn fleet() -> Inputs {
        let mut nodes: Vec<NodeRecord> = (0..6)
            .map(|i| {
                node(
                    &format!("n{i}"),
                    if i < 4 { "site=berlin" } else { "site=lisbon" },
                    i != 2,
                )
            })
            .collect();
        let deployments = vec![record("base", spec("", 0, &[("app", "/bin/v1")]))];
        // Nodes run what the fleet computes.
        let rollouts = BTreeMap::new();
        let specs = RevisionSpecs::new();
        for n in &mut nodes {
            let merge = Fleet {
                deployments: &deployments,
                rollouts: &rollouts,
                specs: &specs,
            }
            .merge(&n.name, &n.labels);
            n.desired_workloads = merge.workloads;
        }
        nodes[3].reported = Some(ReportedState {
            node: "n3".into(),
            applied_generation: 0,
            workloads: vec![],
            agent_version: String::new(),
            certificate_not_after: None,
            locks: vec![UpdateLock {
                workload: "app".into(),
                reason: "mid-task".into(),
                since: NOW,
            }],
        });
        Inputs {
            nodes,
            deployments,
            windows: vec![],
            rollouts,
            specs,
        }
    }

    #[test]
    fn a_plan_groups_identical_changes_and_names_what_blocks_nodes() {
        let inputs = fleet();
        let berlin =
            DeploymentManifest::new("berlin", spec("site=berlin", 10, &[("app", "/bin/berlin")]));
        let mut base = inputs.deployments[0].manifest.clone();
        base.spec
            .workloads
            .push(WorkloadSpec::process("agent", "/bin/agent"));
        let plan = plan(
            &inputs.world(),
            PlanRequest {
                deployments: vec![base, berlin],
                windows: vec![],
            },
        );
        assert_eq!(plan.changed_nodes.len(), 6);
        assert!(plan.unaffected_nodes.is_empty());
        assert_eq!(plan.groups.len(), 2);
        assert_eq!(plan.groups[0].nodes, vec!["n0", "n1", "n2", "n3"]);
        let kinds: Vec<(&str, ChangeKind)> = plan.groups[0]
            .changes
            .iter()
            .map(|c| (c.workload.as_str(), c.kind))
            .collect();
        assert_eq!(
            kinds,
            vec![("agent", ChangeKind::Added), ("app", ChangeKind::Changed)]
        );
        let app = &plan.groups[0].changes[1];
        assert_eq!(app.from_deployment.as_deref(), Some("base"));
        assert_eq!(app.to_deployment.as_deref(), Some("berlin"));
        assert_eq!(plan.groups[1].nodes, vec!["n4", "n5"]);
        // n2 is offline, n3 holds a lock.
        let blocked: Vec<(&str, usize)> = plan
            .blocked
            .iter()
            .map(|b| (b.node.as_str(), b.blockers.len()))
            .collect();
        assert_eq!(blocked, vec![("n2", 1), ("n3", 1)]);
        assert!(matches!(
            plan.blocked[0].blockers[0],
            Blocker::Offline { .. }
        ));
        // base is shadowed on Berlin nodes by berlin (higher priority, no conflict).
        assert_eq!(plan.shadowing.len(), 1);
        assert_eq!(plan.shadowing[0].nodes, 4);
        assert!(!plan.shadowing[0].conflict);
        // Steps: berlin has 4 nodes in batches of 25%.
        let berlin_plan = plan
            .deployments
            .iter()
            .find(|d| d.name == "berlin")
            .unwrap();
        assert_eq!(berlin_plan.action, ApplyAction::Created);
        assert_eq!(berlin_plan.steps.len(), 4);
        assert_eq!(berlin_plan.changed_nodes, 4);
        assert_eq!(plan.basis.n_nodes, 6);
    }

    #[test]
    fn an_unchanged_apply_changes_nothing() {
        let inputs = fleet();
        let plan = plan(
            &inputs.world(),
            PlanRequest {
                deployments: vec![inputs.deployments[0].manifest.clone()],
                windows: vec![],
            },
        );
        assert!(plan.changed_nodes.is_empty());
        assert_eq!(plan.unaffected_nodes.len(), 6);
        assert_eq!(plan.deployments[0].action, ApplyAction::Unchanged);
        assert!(plan.deployments[0].steps.is_empty());
    }

    #[test]
    fn explain_says_why_a_deployment_is_not_on_a_node() {
        let mut inputs = fleet();
        inputs
            .deployments
            .push(record("lisbon", spec("site=lisbon", 0, &[("x", "/bin/x")])));
        let world = inputs.world();
        let explanation = explain(&world, &inputs.nodes[0], None);
        assert_eq!(explanation.deployments.len(), 2);
        let lisbon = &explanation.deployments[1];
        assert!(!lisbon.selects);
        assert_eq!(
            lisbon.failing_terms,
            vec!["site=lisbon (node has site=berlin)"]
        );
        assert_eq!(
            lisbon.summary,
            "lisbon does not select n0: site=lisbon (node has site=berlin)"
        );
        let base = &explanation.deployments[0];
        assert!(base.selects);
        assert!(
            base.summary.starts_with("n0 should run base revision 1"),
            "{}",
            base.summary
        );
    }

    #[test]
    fn explain_shows_the_rollout_position_of_a_waiting_node() {
        let mut inputs = fleet();
        let new_spec = spec("", 0, &[("app", "/bin/v2")]);
        let old = inputs.deployments[0].clone();
        inputs.specs.insert(
            ("base".into(), old.revision.clone()),
            old.manifest.spec.clone(),
        );
        let new = DeploymentRecord {
            revision: revision_hash(&new_spec),
            revision_count: 2,
            manifest: DeploymentManifest::new("base", new_spec),
            ..old.clone()
        };
        let targets: Vec<_> = inputs
            .nodes
            .iter()
            .map(|n| edgefleet_core::rollout::RolloutTarget {
                node: n.name.clone(),
                partition: None,
            })
            .collect();
        let rollout = Rollout::new(
            RolloutSpec {
                deployment: "base".into(),
                number: 2,
                from_revision: Some((old.revision.clone(), 1)),
                to_revision: (new.revision.clone(), 2),
                strategy: RolloutStrategy::default(),
            },
            &targets,
            BTreeMap::new(),
            NOW,
        );
        inputs.rollouts.insert("base".into(), rollout);
        inputs.deployments = vec![new];
        let world = inputs.world();
        let explanation = explain(&world, &inputs.nodes[5], Some("base"));
        let base = &explanation.deployments[0];
        let position = base.rollout.as_ref().unwrap();
        assert_eq!((position.step, position.n_steps), (3, 3));
        assert!(
            base.summary.contains(
                "rollout 2 of revision 2 is at step 1 of 3, and this node (step 3) is waiting"
            ),
            "{}",
            base.summary
        );
    }
}
