//! The field-level diff of a node's desired workloads, and the grouping of nodes that get
//! the same changes: what `edgefleet plan` shows.
//!
//! A workload counts as changed when the agent would act on it: its spec or the deployment
//! it comes from differs. A new revision that leaves both alone (another workload of the
//! same deployment changed) restarts nothing and is not shown.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{DefaultHasher, Hash, Hasher};

use edgefleet_wire::api::DesiredWorkload;
use edgefleet_wire::plan::{ChangeGroup, ChangeKind, FieldChange, WorkloadChange};
use serde_json::Value;

/// What changes on a node going from the `before` workloads to the `after` workloads, by
/// workload name, sorted by name. Input order does not matter (desired states are sorted
/// by workload name anyway).
pub fn diff_workloads(
    before: &[DesiredWorkload],
    after: &[DesiredWorkload],
) -> Vec<WorkloadChange> {
    let before: BTreeMap<&str, &DesiredWorkload> =
        before.iter().map(|w| (w.spec.name.as_str(), w)).collect();
    let after: BTreeMap<&str, &DesiredWorkload> =
        after.iter().map(|w| (w.spec.name.as_str(), w)).collect();
    let names: BTreeSet<&str> = before.keys().chain(after.keys()).copied().collect();
    names
        .into_iter()
        .filter_map(|name| match (before.get(name), after.get(name)) {
            (None, Some(added)) => Some(WorkloadChange {
                workload: name.to_owned(),
                kind: ChangeKind::Added,
                from_deployment: None,
                to_deployment: Some(added.deployment.clone()),
                fields: Vec::new(),
            }),
            (Some(removed), None) => Some(WorkloadChange {
                workload: name.to_owned(),
                kind: ChangeKind::Removed,
                from_deployment: Some(removed.deployment.clone()),
                to_deployment: None,
                fields: Vec::new(),
            }),
            (Some(old), Some(new)) => changed(name, old, new),
            (None, None) => None,
        })
        .collect()
}

/// The change of a workload present before and after, if the agent would notice one.
fn changed(name: &str, old: &DesiredWorkload, new: &DesiredWorkload) -> Option<WorkloadChange> {
    if old.spec == new.spec && old.deployment == new.deployment {
        return None;
    }
    let mut fields = Vec::new();
    if old.deployment != new.deployment {
        fields.push(FieldChange {
            path: "deployment".into(),
            from: Some(old.deployment.clone()),
            to: Some(new.deployment.clone()),
        });
    }
    let mut spec_fields = Vec::new();
    diff_values(
        String::new(),
        Some(&spec_value(&old.spec)),
        Some(&spec_value(&new.spec)),
        &mut spec_fields,
    );
    spec_fields.sort_by(|a, b| a.path.cmp(&b.path));
    fields.extend(spec_fields);
    Some(WorkloadChange {
        workload: name.to_owned(),
        kind: ChangeKind::Changed,
        from_deployment: Some(old.deployment.clone()),
        to_deployment: Some(new.deployment.clone()),
        fields,
    })
}

/// The spec as the manifest writes it (camelCase field names, defaults left out where the
/// wire type leaves them out).
fn spec_value(spec: &edgefleet_wire::manifest::WorkloadSpec) -> Value {
    // Serialising a WorkloadSpec to a JSON value cannot fail: every map has string keys.
    serde_json::to_value(spec).unwrap_or(Value::Null)
}

/// Appends the differences between `old` and `new` at `path`. Objects are compared key by
/// key (a missing object counts as empty, so a first `env` entry shows as `env.MODE`);
/// everything else, arrays included, as a whole value.
fn diff_values(path: String, old: Option<&Value>, new: Option<&Value>, out: &mut Vec<FieldChange>) {
    let empty = serde_json::Map::new();
    let either_is_object =
        matches!(old, Some(Value::Object(_))) || matches!(new, Some(Value::Object(_)));
    if either_is_object
        && let (Some(old), Some(new)) = (as_object(old, &empty), as_object(new, &empty))
    {
        let keys: BTreeSet<&String> = old.keys().chain(new.keys()).collect();
        for key in keys {
            let child = if path.is_empty() {
                key.clone()
            } else {
                format!("{path}.{key}")
            };
            diff_values(child, old.get(key), new.get(key), out);
        }
        return;
    }
    let (from, to) = (old.and_then(render), new.and_then(render));
    if from != to {
        out.push(FieldChange {
            path: if path.is_empty() { "spec".into() } else { path },
            from,
            to,
        });
    }
}

/// An object, or a field left out (as an empty object); `None` for anything else.
fn as_object<'v>(
    value: Option<&'v Value>,
    empty: &'v serde_json::Map<String, Value>,
) -> Option<&'v serde_json::Map<String, Value>> {
    match value {
        Some(Value::Object(map)) => Some(map),
        None | Some(Value::Null) => Some(empty),
        Some(_) => None,
    }
}

/// A value for a person: strings as they are, anything else as compact JSON; null (a field
/// left out) as nothing.
fn render(value: &Value) -> Option<String> {
    match value {
        Value::Null => None,
        Value::String(text) => Some(text.clone()),
        other => Some(other.to_string()),
    }
}

/// Groups nodes that get exactly the same changes. Nodes without changes are left out;
/// each group's nodes are sorted; groups come largest first, then by their first node.
pub fn group_changes(per_node: Vec<(String, Vec<WorkloadChange>)>) -> Vec<ChangeGroup> {
    let mut groups: Vec<ChangeGroup> = Vec::new();
    // Change lists by hash, to find a node's group without comparing it with every group.
    // `DefaultHasher::new()` has fixed keys: no randomness in the core.
    let mut by_hash: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
    for (node, changes) in per_node {
        if changes.is_empty() {
            continue;
        }
        let mut hasher = DefaultHasher::new();
        hash_changes(&changes, &mut hasher);
        let candidates = by_hash.entry(hasher.finish()).or_default();
        match candidates.iter().find(|&&i| groups[i].changes == changes) {
            Some(&i) => groups[i].nodes.push(node),
            None => {
                candidates.push(groups.len());
                groups.push(ChangeGroup {
                    nodes: vec![node],
                    changes,
                });
            }
        }
    }
    for group in &mut groups {
        group.nodes.sort();
    }
    groups.sort_by(|a, b| {
        b.nodes
            .len()
            .cmp(&a.nodes.len())
            .then_with(|| a.nodes.first().cmp(&b.nodes.first()))
    });
    groups
}

/// Hashes everything `WorkloadChange`'s equality looks at (the wire type derives no `Hash`).
fn hash_changes(changes: &[WorkloadChange], hasher: &mut impl Hasher) {
    changes.len().hash(hasher);
    for change in changes {
        change.workload.hash(hasher);
        change.kind.as_str().hash(hasher);
        change.from_deployment.hash(hasher);
        change.to_deployment.hash(hasher);
        change.fields.len().hash(hasher);
        for field in &change.fields {
            field.path.hash(hasher);
            field.from.hash(hasher);
            field.to.hash(hasher);
        }
    }
}

#[cfg(test)]
mod tests {
    use edgefleet_wire::DurationSpec;
    use edgefleet_wire::manifest::{RestartPolicy, WorkloadSpec};

    use super::*;

    fn workload(deployment: &str, revision: &str, spec: WorkloadSpec) -> DesiredWorkload {
        DesiredWorkload {
            streams: Vec::new(),
            labels: Default::default(),
            deployment: deployment.into(),
            revision: revision.into(),
            spec_hash: crate::hash::workload_hash(&spec),
            spec,
            rolled_back: false,
        }
    }

    fn server() -> WorkloadSpec {
        WorkloadSpec::process("server", "/bin/server")
    }

    /// Renders changes one per line: `kind workload (from -> to)` then `  path: from -> to`
    /// (`-` for nothing), so expectations read like the plan output.
    fn render_changes(changes: &[WorkloadChange]) -> String {
        let or_dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
        let mut lines = Vec::new();
        for change in changes {
            lines.push(format!(
                "{} {} ({} -> {})",
                change.kind.as_str(),
                change.workload,
                or_dash(&change.from_deployment),
                or_dash(&change.to_deployment)
            ));
            for field in &change.fields {
                lines.push(format!(
                    "  {}: {} -> {}",
                    field.path,
                    or_dash(&field.from),
                    or_dash(&field.to)
                ));
            }
        }
        lines.join("\n")
    }

    fn check(before: &[DesiredWorkload], after: &[DesiredWorkload], expected: &str) {
        let changes = diff_workloads(before, after);
        assert_eq!(render_changes(&changes), expected.trim());
    }

    #[test]
    fn added_removed_and_unchanged() {
        let web = workload("web", "r1", server());
        let agent = workload("base", "r9", WorkloadSpec::process("agent", "/bin/agent"));
        check(&[], &[], "");
        check(std::slice::from_ref(&web), std::slice::from_ref(&web), "");
        check(
            &[],
            &[agent.clone(), web.clone()],
            "added agent (- -> base)\nadded server (- -> web)",
        );
        check(
            &[agent.clone(), web.clone()],
            std::slice::from_ref(&web),
            "removed agent (base -> -)",
        );
    }

    #[test]
    fn a_new_revision_with_the_same_spec_is_no_change() {
        let old = workload("web", "r1", server());
        let mut new = workload("web", "r2", server());
        new.rolled_back = true;
        check(&[old], &[new], "");
    }

    #[test]
    fn field_level_changes_use_manifest_paths() {
        let old = workload("web", "r1", server());
        let mut spec = server();
        spec.command = "/bin/server2".into();
        spec.args = vec!["-c".into(), "run fast".into()];
        spec.env.insert("MODE".into(), "prod".into());
        spec.restart_policy = RestartPolicy::OnFailure;
        spec.stop_grace_period = DurationSpec::from_secs(30);
        spec.working_dir = Some("/srv".into());
        let new = workload("web", "r2", spec.clone());
        check(
            std::slice::from_ref(&old),
            std::slice::from_ref(&new),
            r#"
changed server (web -> web)
  args: - -> ["-c","run fast"]
  command: /bin/server -> /bin/server2
  env.MODE: - -> prod
  restartPolicy: always -> on-failure
  stopGracePeriod: 10s -> 30s
  workingDir: - -> /srv
"#,
        );
        // And back, plus one env entry changing and one going.
        let mut later = spec.clone();
        later.env.insert("MODE".into(), "test".into());
        later.env.insert("EXTRA".into(), "1".into());
        later.args.pop();
        check(
            std::slice::from_ref(&new),
            &[workload("web", "r3", later.clone())],
            r#"
changed server (web -> web)
  args: ["-c","run fast"] -> ["-c"]
  env.EXTRA: - -> 1
  env.MODE: prod -> test
"#,
        );
        let mut without_env = later;
        without_env.env.clear();
        check(
            &[workload("web", "r3", without_env.clone())],
            &[new],
            r#"
changed server (web -> web)
  args: ["-c"] -> ["-c","run fast"]
  env.MODE: - -> prod
"#,
        );
    }

    #[test]
    fn moving_to_another_deployment_is_a_change() {
        let old = workload("web", "r1", server());
        let new = workload("web-v2", "r7", server());
        check(
            std::slice::from_ref(&old),
            &[new],
            "changed server (web -> web-v2)\n  deployment: web -> web-v2",
        );
        let mut spec = server();
        spec.args = vec!["x".into()];
        check(
            &[old],
            &[workload("other", "r2", spec)],
            "changed server (web -> other)\n  deployment: web -> other\n  args: - -> [\"x\"]",
        );
    }

    fn change(workload: &str, kind: ChangeKind) -> WorkloadChange {
        WorkloadChange {
            workload: workload.into(),
            kind,
            from_deployment: None,
            to_deployment: Some("web".into()),
            fields: Vec::new(),
        }
    }

    fn check_groups(
        per_node: &[(&str, Vec<WorkloadChange>)],
        expected: &[(&[&str], &[WorkloadChange])],
    ) {
        let groups = group_changes(
            per_node
                .iter()
                .map(|(node, changes)| ((*node).to_owned(), changes.clone()))
                .collect(),
        );
        let found: Vec<(Vec<&str>, &[WorkloadChange])> = groups
            .iter()
            .map(|g| {
                (
                    g.nodes.iter().map(String::as_str).collect(),
                    g.changes.as_slice(),
                )
            })
            .collect();
        let expected: Vec<(Vec<&str>, &[WorkloadChange])> = expected
            .iter()
            .map(|(nodes, changes)| (nodes.to_vec(), *changes))
            .collect();
        assert_eq!(found, expected);
    }

    #[test]
    fn grouping() {
        let a = vec![change("server", ChangeKind::Added)];
        let b = vec![change("server", ChangeKind::Removed)];
        let ab = vec![
            change("agent", ChangeKind::Added),
            change("server", ChangeKind::Added),
        ];
        check_groups(&[], &[]);
        check_groups(&[("n1", vec![]), ("n2", vec![])], &[]);
        check_groups(
            &[
                ("n3", a.clone()),
                ("n1", b.clone()),
                ("n2", a.clone()),
                ("n0", vec![]),
            ],
            &[(&["n2", "n3"], &a), (&["n1"], &b)],
        );
        // Same size: by first node name.
        check_groups(
            &[("z", a.clone()), ("m", ab.clone()), ("b", b.clone())],
            &[(&["b"], &b), (&["m"], &ab), (&["z"], &a)],
        );
        // Order of the changes matters: lists are compared as they are (diff_workloads
        // always sorts them).
        let ba: Vec<WorkloadChange> = ab.iter().rev().cloned().collect();
        check_groups(
            &[("x", ab.clone()), ("y", ba.clone())],
            &[(&["x"], &ab), (&["y"], &ba)],
        );
    }

    #[test]
    fn grouping_ten_thousand_nodes() {
        let sets = [
            vec![change("server", ChangeKind::Added)],
            vec![change("server", ChangeKind::Removed)],
            diff_workloads(
                &[workload("web", "r1", server())],
                &[workload(
                    "web",
                    "r2",
                    WorkloadSpec::process("server", "/bin/other"),
                )],
            ),
        ];
        let per_node: Vec<(String, Vec<WorkloadChange>)> = (0..10_000)
            .map(|i| (format!("node-{i:05}"), sets[i % 7 % 3].clone()))
            .collect();
        let started = std::time::Instant::now();
        let groups = group_changes(per_node);
        let elapsed = started.elapsed();
        let sizes: Vec<usize> = groups.iter().map(|g| g.nodes.len()).collect();
        assert_eq!(sizes, [4286, 2857, 2857]);
        assert_eq!(groups[0].changes, sets[0]);
        assert_eq!(groups[1].nodes[0], "node-00001");
        assert_eq!(groups[2].nodes[0], "node-00002");
        assert!(groups.iter().all(|g| g.nodes.is_sorted()));
        // Linear work: milliseconds even unoptimised; a quadratic grouping takes seconds.
        assert!(elapsed < std::time::Duration::from_secs(2), "{elapsed:?}");
    }
}
