//! `edgefleet plan`, `edgefleet apply --plan` and `edgefleet explain` against a real fleet.

use std::collections::{BTreeMap, BTreeSet};

use edgefleet_testkit::Fleet;
use edgefleet_wire::plan::Explanation;

use crate::*;

/// Two berlin nodes (in different racks) and one in lisbon.
const AGENTS: &[(&str, &str)] = &[
    ("edge-1", "site=berlin,rack=r1"),
    ("edge-2", "site=berlin,rack=r2"),
    ("edge-3", "site=lisbon"),
];

fn deployment(name: &str, selector: &str, workloads: &[(&str, &str)]) -> String {
    with_rollout(manifest(name, selector, 0, workloads), "batchSize: 100%")
}

/// Every node's desired workloads as `(name, spec_hash)`, from `GET /v1/nodes/NAME`.
async fn desired_by_node(fleet: &Fleet) -> BTreeMap<String, BTreeSet<(String, String)>> {
    let mut by_node = BTreeMap::new();
    for (node, _) in AGENTS {
        let detail = node_detail(fleet, node).await;
        let workloads = detail["desired"]["workloads"]
            .as_array()
            .unwrap_or_else(|| panic!("no desired workloads in {detail:#}"))
            .iter()
            .map(|w| {
                (
                    w["spec"]["name"].as_str().unwrap().to_owned(),
                    w["spec_hash"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        by_node.insert(node.to_string(), workloads);
    }
    by_node
}

/// Each deployment's current revision hash, by name.
async fn revisions(fleet: &Fleet) -> BTreeMap<String, String> {
    let deployments: Vec<serde_json::Value> =
        fleet.api().get_json("/v1/deployments").await.unwrap();
    deployments
        .iter()
        .map(|d| {
            (
                d["name"].as_str().unwrap().to_owned(),
                d["revision"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

async fn settle(fleet: &Fleet) {
    fleet.wait_rollouts_settled(LONG).await;
    for (node, _) in AGENTS {
        fleet.wait_converged(node, LONG).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_plan_changes_exactly_the_planned_nodes_and_refuses_stale_plans() {
    let fleet = fleet_with(&[], AGENTS).await;
    let lisbon = deployment(
        "lisbon",
        "site=lisbon",
        &[("web", "echo lisbon; exec sleep 1000")],
    );
    let base = [
        deployment("base", "", &[("agent", "exec sleep 1000")]),
        deployment(
            "berlin",
            "site=berlin",
            &[("web", "echo v1; exec sleep 1000")],
        ),
        lisbon.clone(),
    ]
    .join("---\n");
    apply(&fleet, "base.yaml", &base);
    settle(&fleet).await;
    let before = desired_by_node(&fleet).await;
    let revisions_before = revisions(&fleet).await;

    // One workload changes (both berlin nodes), a new deployment adds a workload to rack r1
    // (edge-1 only), and lisbon's document is identical: edge-3 is untouched.
    let change = [
        deployment(
            "berlin",
            "site=berlin",
            &[("web", "echo v2; exec sleep 1000")],
        ),
        deployment("rack1", "rack=r1", &[("sidecar", "exec sleep 1000")]),
        lisbon.clone(),
    ]
    .join("---\n");
    let change_file = write(fleet.path(), "change.yaml", &change);
    let change_file = change_file.to_str().unwrap();
    let plan_file = fleet.path().join("plan.json");
    let plan_file = plan_file.to_str().unwrap();
    let human = fleet.cli_ok(&["plan", "-f", change_file, "--out", plan_file]);
    for needle in [
        "deployment/berlin updated",
        "deployment/rack1 created",
        "deployment/lisbon unchanged",
        "Changes: 2 nodes in 2 groups",
        "1 node (edge-1)",
        "+ sidecar (deployment rack1)",
        "1 node (edge-2)",
        "~ web: args:",
        "echo v2",
        "Unaffected: 1 node (edge-3)",
    ] {
        assert!(human.contains(needle), "plan lacks {needle:?}:\n{human}");
    }
    let json: serde_json::Value =
        serde_json::from_str(&fleet.cli_ok(&["plan", "-f", change_file, "-o", "json"])).unwrap();
    assert_eq!(
        json["changed_nodes"],
        serde_json::json!(["edge-1", "edge-2"]),
        "{json:#}"
    );
    assert_eq!(
        json["unaffected_nodes"],
        serde_json::json!(["edge-3"]),
        "{json:#}"
    );
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(plan_file).unwrap()).unwrap();
    assert_eq!(saved["changed_nodes"], json["changed_nodes"]);
    let planned: BTreeSet<String> = saved["changed_nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap().to_owned())
        .collect();
    // Planning changed nothing.
    assert_eq!(revisions(&fleet).await, revisions_before);

    let out = fleet.cli_ok(&["apply", "--plan", plan_file]);
    assert!(out.contains("deployment/berlin updated"), "{out}");
    assert!(out.contains("deployment/rack1 created"), "{out}");
    assert!(out.contains("deployment/lisbon unchanged"), "{out}");
    settle(&fleet).await;
    let after = desired_by_node(&fleet).await;
    let changed: BTreeSet<String> = before
        .keys()
        .filter(|node| before[*node] != after[*node])
        .cloned()
        .collect();
    assert_eq!(
        changed, planned,
        "nodes whose desired workloads changed differ from the plan\nbefore: {before:#?}\nafter: {after:#?}"
    );
    let revisions_applied = revisions(&fleet).await;

    // The same plan again: the deployments moved on since it was computed.
    let (_, text) = cli_fails(&fleet, &["apply", "--plan", plan_file]);
    assert!(
        text.contains("changed since the plan was computed"),
        "{text}"
    );
    assert!(text.contains("nothing was applied"), "{text}");
    assert!(text.contains("deployment berlin is at revision"), "{text}");
    assert!(text.contains("deployment rack1 was created"), "{text}");
    assert!(text.contains("out of date"), "{text}");
    assert_eq!(revisions(&fleet).await, revisions_applied);

    // A fresh plan, then the fleet changes under it: refused, nothing applied.
    let lisbon_v2 = deployment(
        "lisbon",
        "site=lisbon",
        &[("web", "echo lisbon v2; exec sleep 1000")],
    );
    let change_file = write(fleet.path(), "lisbon.yaml", &lisbon_v2);
    let fresh_plan = fleet.path().join("fresh-plan.json");
    let fresh_plan = fresh_plan.to_str().unwrap();
    let fresh = fleet.cli_ok(&[
        "plan",
        "-f",
        change_file.to_str().unwrap(),
        "--out",
        fresh_plan,
    ]);
    assert!(fresh.contains("deployment/lisbon updated"), "{fresh}");
    fleet.cli_ok(&["label", "node", "edge-3", "rack=r9"]);
    let (_, text) = cli_fails(&fleet, &["apply", "--plan", fresh_plan]);
    assert!(text.contains("nothing was applied"), "{text}");
    assert!(text.contains("node edge-3 was relabelled"), "{text}");
    assert_eq!(
        revisions(&fleet).await,
        revisions_applied,
        "a refused plan changed a deployment"
    );
    let detail: serde_json::Value = fleet
        .api()
        .get_json("/v1/deployments/lisbon")
        .await
        .unwrap();
    assert_eq!(
        detail["revisions"].as_array().unwrap().len(),
        1,
        "{detail:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_names_failing_selector_terms_and_the_running_revision() {
    let fleet = fleet_with(&[], &[("edge-1", "site=berlin"), ("edge-2", "site=lisbon")]).await;
    let text = [
        deployment("berlin", "site=berlin", &[("web", "exec sleep 1000")]),
        deployment("lisbon", "site=lisbon", &[("shop", "exec sleep 1000")]),
    ]
    .join("---\n");
    apply(&fleet, "sites.yaml", &text);
    fleet.wait_converged("edge-1", LONG).await;
    fleet.wait_converged("edge-2", LONG).await;

    let human = fleet.cli_ok(&["explain", "node", "edge-2"]);
    for needle in [
        "Node:",
        "edge-2",
        "deployment/berlin: berlin does not select edge-2: site=berlin (node has site=lisbon)",
        "Failing terms:  site=berlin (node has site=lisbon)",
        "deployment/lisbon: edge-2 runs lisbon revision 1",
        "(the latest)",
    ] {
        assert!(human.contains(needle), "explain lacks {needle:?}:\n{human}");
    }

    let json = fleet.cli_ok(&["explain", "node", "edge-2", "-o", "json"]);
    let explanation: Explanation = serde_json::from_str(&json)
        .unwrap_or_else(|e| panic!("explain -o json is not an Explanation: {e}\n{json}"));
    assert_eq!(explanation.node, "edge-2");
    assert_eq!(
        explanation.labels.get("site").map(String::as_str),
        Some("lisbon")
    );
    let berlin = explanation
        .deployments
        .iter()
        .find(|d| d.deployment == "berlin")
        .unwrap();
    assert!(!berlin.selects);
    assert_eq!(berlin.failing_terms, ["site=berlin (node has site=lisbon)"]);
    assert_eq!(berlin.desired_revision, None);
    let lisbon = explanation
        .deployments
        .iter()
        .find(|d| d.deployment == "lisbon")
        .unwrap();
    assert!(lisbon.selects, "{lisbon:?}");
    assert!(lisbon.failing_terms.is_empty());
    assert_eq!(
        lisbon.desired_revision.as_deref(),
        Some(lisbon.latest_revision.as_str())
    );
    assert_eq!(
        lisbon.applied_revision.as_deref(),
        Some(lisbon.latest_revision.as_str())
    );
    assert!(lisbon.summary.contains("the latest"), "{}", lisbon.summary);

    // Asking about one deployment answers about that one only.
    let json = fleet.cli_ok(&[
        "explain",
        "node",
        "edge-1",
        "deployment",
        "berlin",
        "-o",
        "json",
    ]);
    let explanation: Explanation = serde_json::from_str(&json).unwrap();
    assert_eq!(explanation.deployments.len(), 1, "{json}");
    assert!(explanation.deployments[0].selects);
}
