//! Fleet gauges computed at scrape time from the store's `FleetCounts`: nodes by status,
//! newest rollouts by phase, deployments, buffered presence, and the build. Pure: `now`
//! and the NotReady threshold are arguments.
//!
//! Every label value comes from a closed set (the four node statuses, the rollout
//! phases), and every value of the set is exported, zero or not, so a series never
//! vanishes when its count drops to zero.

use std::time::Duration;

use edgefleet_core::lifecycle::node_status;
use edgefleet_wire::Timestamp;
use edgefleet_wire::api::NodeStatus;
use edgefleet_wire::rollout::RolloutPhase;

use super::exposition::{Family, Kind, Series, Value};
use crate::store::FleetCounts;

const STATUSES: [NodeStatus; 4] = [
    NodeStatus::Ready,
    NodeStatus::NotReady,
    NodeStatus::Unknown,
    NodeStatus::Revoked,
];

fn status_index(status: NodeStatus) -> usize {
    match status {
        NodeStatus::Ready => 0,
        NodeStatus::NotReady => 1,
        NodeStatus::Unknown => 2,
        NodeStatus::Revoked => 3,
    }
}

fn status_label(status: NodeStatus) -> &'static str {
    match status {
        NodeStatus::Ready => "ready",
        NodeStatus::NotReady => "notready",
        NodeStatus::Unknown => "unknown",
        NodeStatus::Revoked => "revoked",
    }
}

const PHASES: [RolloutPhase; 7] = [
    RolloutPhase::Progressing,
    RolloutPhase::Baking,
    RolloutPhase::AwaitingPromotion,
    RolloutPhase::Succeeded,
    RolloutPhase::Aborted,
    RolloutPhase::RolledBack,
    RolloutPhase::Superseded,
];

/// Exhaustive, so that a new phase fails to compile until `PHASES` lists it.
fn phase_index(phase: RolloutPhase) -> usize {
    match phase {
        RolloutPhase::Progressing => 0,
        RolloutPhase::Baking => 1,
        RolloutPhase::AwaitingPromotion => 2,
        RolloutPhase::Succeeded => 3,
        RolloutPhase::Aborted => 4,
        RolloutPhase::RolledBack => 5,
        RolloutPhase::Superseded => 6,
    }
}

/// The label of stored phases this server does not know (written by a newer release).
const UNKNOWN_PHASE: &str = "unknown";

pub fn families(counts: &FleetCounts, now: Timestamp, not_ready_after: Duration) -> Vec<Family> {
    let mut by_status = [0u64; STATUSES.len()];
    for node in &counts.nodes {
        let status = node_status(now, node.last_seen, node.revoked, not_ready_after);
        by_status[status_index(status)] += 1;
    }
    let mut nodes = Family::new(
        "edgefleet_nodes",
        "Enrolled nodes by status (ready, notready: not heard from within --not-ready-after, \
         unknown: never heard from, revoked).",
        Kind::Gauge,
    );
    for status in STATUSES {
        nodes.series.push(Series {
            labels: vec![("status", status_label(status).to_owned())],
            value: Value::Unsigned(by_status[status_index(status)]),
        });
    }

    let mut by_phase = [0u64; PHASES.len()];
    let mut unknown_phases = 0u64;
    for stored in &counts.rollout_phases {
        match PHASES.iter().find(|phase| phase.as_str() == stored) {
            Some(phase) => by_phase[phase_index(*phase)] += 1,
            None => unknown_phases += 1,
        }
    }
    let mut rollouts = Family::new(
        "edgefleet_rollouts",
        "The newest rollout of every deployment, by state.",
        Kind::Gauge,
    );
    for phase in PHASES {
        rollouts.series.push(Series {
            labels: vec![("state", phase.as_str().to_owned())],
            value: Value::Unsigned(by_phase[phase_index(phase)]),
        });
    }
    if unknown_phases > 0 {
        rollouts.series.push(Series {
            labels: vec![("state", UNKNOWN_PHASE.to_owned())],
            value: Value::Unsigned(unknown_phases),
        });
    }

    vec![
        nodes,
        rollouts,
        Family::single(
            "edgefleet_deployments",
            "Deployments.",
            Kind::Gauge,
            Value::Unsigned(counts.deployments),
        ),
        Family::single(
            "edgefleet_presence_pending",
            "Heartbeats and last-seen times buffered in memory, not yet written to the store.",
            Kind::Gauge,
            Value::Unsigned(counts.presence_pending),
        ),
        Family::new(
            "edgefleet_build_info",
            "The running server's version; always 1.",
            Kind::Gauge,
        )
        .with(
            vec![("version", env!("CARGO_PKG_VERSION").to_owned())],
            Value::Unsigned(1),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::exposition::render;
    use crate::store::NodeLiveness;

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_unix_timestamp(1_700_000_000 + seconds).unwrap()
    }

    #[test]
    fn nodes_by_status_and_rollouts_by_phase() {
        let live = |last_seen: Option<i64>, revoked| NodeLiveness {
            last_seen: last_seen.map(at),
            revoked,
        };
        let counts = FleetCounts {
            nodes: vec![
                live(Some(95), false),
                live(Some(60), false),
                live(Some(10), false),
                live(None, false),
                live(Some(99), true),
            ],
            rollout_phases: vec![
                "progressing".into(),
                "succeeded".into(),
                "succeeded".into(),
                "from-the-future".into(),
            ],
            deployments: 4,
            presence_pending: 2,
        };
        let text = render(&families(&counts, at(100), Duration::from_secs(45)));
        for line in [
            "edgefleet_nodes{status=\"ready\"} 2\n",
            "edgefleet_nodes{status=\"notready\"} 1\n",
            "edgefleet_nodes{status=\"unknown\"} 1\n",
            "edgefleet_nodes{status=\"revoked\"} 1\n",
            "edgefleet_rollouts{state=\"progressing\"} 1\n",
            "edgefleet_rollouts{state=\"succeeded\"} 2\n",
            "edgefleet_rollouts{state=\"rolled-back\"} 0\n",
            "edgefleet_rollouts{state=\"unknown\"} 1\n",
            "edgefleet_deployments 4\n",
            "edgefleet_presence_pending 2\n",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        assert!(text.contains(&format!(
            "edgefleet_build_info{{version=\"{}\"}} 1\n",
            env!("CARGO_PKG_VERSION")
        )));
    }

    #[test]
    fn ten_thousand_nodes_render_quickly() {
        let counts = FleetCounts {
            nodes: (0..10_000)
                .map(|i| NodeLiveness {
                    last_seen: Some(at(i % 100)),
                    revoked: i % 50 == 0,
                })
                .collect(),
            rollout_phases: vec!["succeeded".into(); 500],
            deployments: 500,
            presence_pending: 0,
        };
        let started = std::time::Instant::now();
        let text = render(&families(&counts, at(100), Duration::from_secs(45)));
        let elapsed = started.elapsed();
        eprintln!("fleet gauges of 10000 nodes, computed and rendered: {elapsed:?}");
        assert!(text.contains("edgefleet_nodes{status=\"revoked\"} 200\n"));
        assert!(elapsed < Duration::from_millis(500), "{elapsed:?}");
    }

    #[test]
    fn an_empty_fleet_exports_every_series_at_zero() {
        let text = render(&families(
            &FleetCounts::default(),
            at(0),
            Duration::from_secs(45),
        ));
        assert_eq!(text.matches("edgefleet_nodes{").count(), 4);
        assert_eq!(text.matches("edgefleet_rollouts{").count(), PHASES.len());
        assert!(!text.contains("state=\"unknown\""));
    }
}
