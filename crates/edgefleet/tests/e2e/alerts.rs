//! Alerts through the CLI: a rule applied with `edgefleet apply -f`, a node that goes
//! offline fires it, `edgefleet alerts` lists it, a silence mutes it, and it resolves when
//! the node comes back.

use edgefleet_testkit::wait_for;

use crate::{LONG, apply, fleet_with};

const RULE: &str = "\
apiVersion: edgefleet.io/v1
kind: AlertRule
metadata:
  name: offline
spec:
  severity: critical
  for: 2s
  condition:
    nodeOffline: {}
  siteGrouping: {enabled: false}
";

#[tokio::test]
async fn an_offline_node_fires_a_rule_applied_from_yaml_and_resolves_when_back() {
    let mut fleet = fleet_with(
        &["--not-ready-after", "3s", "--alert-interval", "1s"],
        &[("al-1", "site=berlin"), ("al-2", "site=berlin")],
    )
    .await;
    let out = apply(&fleet, "rules.yaml", RULE);
    assert!(out.contains("rule/offline created"), "{out}");
    let rules = fleet.cli_ok(&["alerts", "rules"]);
    assert!(
        rules.contains("offline") && rules.contains("critical"),
        "{rules}"
    );
    // Applying the same rule again changes nothing.
    let again = apply(&fleet, "rules.yaml", RULE);
    assert!(again.contains("rule/offline unchanged"), "{again}");

    fleet.agent("al-1").stop();
    let listed = wait_for("the offline alert", LONG, || {
        let out = fleet.cli(&["alerts"]);
        async move {
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            text.contains("node al-1").then_some(text)
        }
    })
    .await;
    assert!(
        listed.contains("firing") && listed.contains("offline"),
        "{listed}"
    );
    assert!(!listed.contains("node al-2"), "{listed}");

    // A silence mutes it.
    let silenced = fleet.cli_ok(&[
        "alerts",
        "silence",
        "--node",
        "al-1",
        "--for",
        "1h",
        "--comment",
        "maintenance",
    ]);
    assert!(silenced.contains("silence/"), "{silenced}");
    wait_for("the alert silenced", LONG, || {
        let out = fleet.cli(&["alerts"]);
        async move {
            String::from_utf8_lossy(&out.stdout)
                .contains("silenced")
                .then_some(())
        }
    })
    .await;
    let silences = fleet.cli_ok(&["alerts", "silences"]);
    assert!(
        silences.contains("node=al-1") && silences.contains("maintenance"),
        "{silences}"
    );

    // Back online: it resolves.
    fleet.spawn_agent("al-1", "site=berlin", None, &[]);
    wait_for("the alert resolved", LONG, || {
        let out = fleet.cli(&["alerts", "--all", "-o", "json"]);
        async move {
            let alerts: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).ok()?;
            alerts
                .iter()
                .any(|a| a["state"] == "resolved" && a["subject"]["name"] == "al-1")
                .then_some(())
        }
    })
    .await;
    let (_, text) = crate::cli_fails(&fleet, &["alerts", "silence", "--for", "1h"]);
    assert!(text.contains("say what to silence"), "{text}");
}
