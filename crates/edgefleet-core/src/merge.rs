//! The layered merge: a node's desired workloads from every deployment that selects it.
//!
//! For each workload name the deployment with the highest priority wins. Equal priorities
//! are broken by deployment name (alphabetically first wins) and reported as a conflict.

use std::collections::BTreeMap;

use edgefleet_wire::Labels;
use edgefleet_wire::api::{Conflict, DesiredWorkload};
use edgefleet_wire::manifest::DeploymentSpec;

use crate::hash::workload_hash;
use crate::selector;

/// A deployment at its current revision, as the merge sees it.
#[derive(Debug, Clone, Copy)]
pub struct DeploymentRef<'a> {
    pub name: &'a str,
    pub revision: &'a str,
    pub spec: &'a DeploymentSpec,
}

/// A workload a deployment defines that lost to another deployment's workload of that name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shadowed {
    pub workload: String,
    pub deployment: String,
    pub by: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeMerge {
    /// Sorted by workload name.
    pub workloads: Vec<DesiredWorkload>,
    pub conflicts: Vec<Conflict>,
    pub shadowed: Vec<Shadowed>,
    /// Names of the deployments that select the node, sorted.
    pub selected_by: Vec<String>,
}

/// Computes the desired workloads of a node with `labels`.
pub fn merge_for_node(labels: &Labels, deployments: &[DeploymentRef<'_>]) -> NodeMerge {
    let mut selecting: Vec<&DeploymentRef<'_>> = deployments
        .iter()
        .filter(|d| selector::matches(&d.spec.selector, labels))
        .collect();
    // Highest priority first, then by name: the first deployment to claim a name wins.
    selecting.sort_by(|a, b| {
        b.spec
            .priority
            .cmp(&a.spec.priority)
            .then(a.name.cmp(b.name))
    });

    let mut winners: BTreeMap<&str, (&DeploymentRef<'_>, usize)> = BTreeMap::new();
    let mut merge = NodeMerge {
        selected_by: {
            let mut names: Vec<String> = selecting.iter().map(|d| d.name.to_owned()).collect();
            names.sort();
            names
        },
        ..NodeMerge::default()
    };
    let mut conflicts: BTreeMap<&str, Conflict> = BTreeMap::new();
    for deployment in &selecting {
        for (index, workload) in deployment.spec.workloads.iter().enumerate() {
            match winners.get(workload.name.as_str()) {
                None => {
                    winners.insert(&workload.name, (deployment, index));
                }
                Some((winner, _)) => {
                    merge.shadowed.push(Shadowed {
                        workload: workload.name.clone(),
                        deployment: deployment.name.to_owned(),
                        by: winner.name.to_owned(),
                    });
                    if winner.spec.priority == deployment.spec.priority {
                        conflicts
                            .entry(&workload.name)
                            .or_insert_with(|| Conflict {
                                workload: workload.name.clone(),
                                winner: winner.name.to_owned(),
                                losers: vec![],
                                priority: winner.spec.priority,
                            })
                            .losers
                            .push(deployment.name.to_owned());
                    }
                }
            }
        }
    }
    merge.workloads = winners
        .into_values()
        .map(|(deployment, index)| {
            let spec = deployment.spec.workloads[index].clone();
            DesiredWorkload {
                streams: deployment.spec.streams.clone(),
                deployment: deployment.name.to_owned(),
                revision: deployment.revision.to_owned(),
                spec_hash: workload_hash(&spec),
                // Files are rendered on the node, with its labels.
                labels: if spec.files.is_empty() {
                    Labels::new()
                } else {
                    labels.clone()
                },
                spec,
                rolled_back: false,
            }
        })
        .collect();
    merge.conflicts = conflicts.into_values().collect();
    merge
}

/// Whether two desired workload lists ask for the same thing (same names, specs and
/// revisions). When they do, the node's generation does not change.
pub fn same_workloads(a: &[DesiredWorkload], b: &[DesiredWorkload]) -> bool {
    a == b
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::labels::parse_assignments;
    use edgefleet_wire::manifest::*;
    use proptest::prelude::*;

    fn workload(name: &str, command: &str) -> WorkloadSpec {
        WorkloadSpec::process(name, command)
    }

    fn spec(selector: &str, priority: i32, workloads: &[(&str, &str)]) -> DeploymentSpec {
        DeploymentSpec {
            streams: Vec::new(),
            selector: crate::selector::parse(selector).unwrap(),
            priority,
            workloads: workloads.iter().map(|(n, c)| workload(n, c)).collect(),
            rollout: Default::default(),
        }
    }

    #[test]
    fn higher_priority_wins_per_workload() {
        let base = spec("", 0, &[("agent", "base"), ("log", "base")]);
        let site = spec("site=a", 10, &[("agent", "site")]);
        let deployments = [
            DeploymentRef {
                name: "base",
                revision: "r1",
                spec: &base,
            },
            DeploymentRef {
                name: "site",
                revision: "r2",
                spec: &site,
            },
        ];
        let merge = merge_for_node(&parse_assignments("site=a").unwrap(), &deployments);
        let got: Vec<(&str, &str)> = merge
            .workloads
            .iter()
            .map(|w| (w.spec.name.as_str(), w.deployment.as_str()))
            .collect();
        assert_eq!(got, vec![("agent", "site"), ("log", "base")]);
        assert!(merge.conflicts.is_empty());
        assert_eq!(
            merge.shadowed,
            vec![Shadowed {
                workload: "agent".into(),
                deployment: "base".into(),
                by: "site".into()
            }]
        );

        let other = merge_for_node(&parse_assignments("site=b").unwrap(), &deployments);
        assert_eq!(other.workloads.len(), 2);
        assert!(other.workloads.iter().all(|w| w.deployment == "base"));
        assert_eq!(other.selected_by, vec!["base".to_string()]);
    }

    #[test]
    fn ties_are_deterministic_and_reported() {
        let a = spec("", 5, &[("x", "a")]);
        let b = spec("", 5, &[("x", "b")]);
        let forward = [
            DeploymentRef {
                name: "b",
                revision: "rb",
                spec: &b,
            },
            DeploymentRef {
                name: "a",
                revision: "ra",
                spec: &a,
            },
        ];
        let mut backward = forward;
        backward.reverse();
        let m1 = merge_for_node(&Labels::new(), &forward);
        let m2 = merge_for_node(&Labels::new(), &backward);
        assert_eq!(m1, m2);
        assert_eq!(m1.workloads[0].deployment, "a");
        assert_eq!(
            m1.conflicts,
            vec![Conflict {
                workload: "x".into(),
                winner: "a".into(),
                losers: vec!["b".into()],
                priority: 5
            }]
        );
    }

    #[test]
    fn nothing_selected_means_nothing_desired() {
        let a = spec("site=a", 0, &[("x", "a")]);
        let merge = merge_for_node(
            &Labels::new(),
            &[DeploymentRef {
                name: "a",
                revision: "r",
                spec: &a,
            }],
        );
        assert!(merge.workloads.is_empty());
    }

    proptest! {
        // The merge does not depend on the order deployments are listed in, every desired
        // workload comes from a deployment that selects the node, and no workload name is
        // desired twice.
        #[test]
        fn merge_is_order_independent(
            entries in proptest::collection::vec((0i32..3, proptest::sample::select(vec!["", "site=a", "site=b", "!gpu"]), proptest::collection::vec(0u8..4, 1..3)), 0..6),
            node_site in proptest::sample::select(vec!["a", "b", "c"]),
            rotate in 0usize..6,
        ) {
            let specs: Vec<(String, DeploymentSpec)> = entries.iter().enumerate().map(|(i, (prio, sel, names))| {
                let mut seen = std::collections::BTreeSet::new();
                let workloads: Vec<(String, String)> = names.iter().filter(|n| seen.insert(**n)).map(|n| (format!("w{n}"), format!("cmd-{i}"))).collect();
                let refs: Vec<(&str, &str)> = workloads.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
                (format!("d{i}"), spec(sel, *prio, &refs))
            }).collect();
            let refs: Vec<DeploymentRef<'_>> = specs.iter().map(|(n, s)| DeploymentRef { name: n, revision: n, spec: s }).collect();
            let labels = parse_assignments(&format!("site={node_site}")).unwrap();
            let m1 = merge_for_node(&labels, &refs);
            let mut rotated = refs.clone();
            if !rotated.is_empty() { let k = rotate % rotated.len(); rotated.rotate_left(k); }
            let m2 = merge_for_node(&labels, &rotated);
            prop_assert_eq!(&m1, &m2);
            let mut names = std::collections::BTreeSet::new();
            for w in &m1.workloads {
                prop_assert!(names.insert(w.spec.name.clone()));
                let d = specs.iter().find(|(n, _)| *n == w.deployment).unwrap();
                prop_assert!(crate::selector::matches(&d.1.selector, &labels));
                // No selecting deployment with a higher priority defines this workload.
                for (name, s) in &specs {
                    if crate::selector::matches(&s.selector, &labels) && s.workloads.iter().any(|x| x.name == w.spec.name) {
                        prop_assert!(s.priority <= d.1.priority, "{} shadowed by lower priority", name);
                    }
                }
            }
        }
    }
}
