//! The evaluation loop: gathers the engine's inputs from the store, steps the engine, and
//! stores what it decided (state, alerts, queued notifications) in one call.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use edgefleet_core::alerts::{
    CompiledRule, Condition, DropObservation, EngineState, Input, MetricObservation,
    NodeObservation, WorkloadObservation, evaluate,
};
use edgefleet_wire::Timestamp;

use super::METRIC_STALENESS;
use crate::metrics::FleetGauge;
use crate::state::{AppState, now};
use crate::store::{NewNotification, NodeRecord};

/// How often old history is pruned.
const PRUNE_INTERVAL: Duration = Duration::from_secs(3600);
/// After a rule or silence changed, wait this long for more changes before evaluating.
const CHANGE_SETTLE: Duration = Duration::from_millis(100);

pub(super) async fn run(state: AppState) {
    let mut stopping = std::pin::pin!(crate::state::stopping(state.shutdown.clone()));
    // The engine's state between evaluations; loaded from the store at the first one, and
    // dropped after a failed save so that the next evaluation starts from what is stored.
    let mut engine: Option<EngineState> = None;
    let mut last_prune: Option<Timestamp> = None;
    loop {
        if let Err(error) = evaluate_once(&state, &mut engine).await {
            engine = None;
            tracing::warn!(
                error = format!("{error:#}"),
                "evaluating alert rules failed; retrying"
            );
        }
        let at = now();
        if last_prune.is_none_or(|last| at - last >= PRUNE_INTERVAL) {
            last_prune = Some(at);
            prune(&state, at).await;
        }
        tokio::select! {
            () = &mut stopping => return,
            () = tokio::time::sleep(state.alerts.interval) => {}
            () = state.alerts.changed.notified() => {
                tokio::time::sleep(CHANGE_SETTLE).await;
            }
        }
    }
}

async fn prune(state: &AppState, at: Timestamp) {
    let Ok(history) = time::Duration::try_from(state.alerts.history) else {
        return;
    };
    let Some(before) = at.checked_sub(history) else {
        return;
    };
    match state.store.prune_alert_history(before).await {
        Ok(pruned) => {
            if pruned.alerts + pruned.notifications + pruned.silences > 0 {
                tracing::debug!(
                    alerts = pruned.alerts,
                    notifications = pruned.notifications,
                    silences = pruned.silences,
                    "pruned alert history"
                );
            }
        }
        Err(error) => tracing::warn!(%error, "pruning alert history failed"),
    }
}

/// One evaluation.
pub(super) async fn evaluate_once(
    state: &AppState,
    engine: &mut Option<EngineState>,
) -> anyhow::Result<()> {
    let store = &state.store;
    let previous = match engine.take() {
        Some(previous) => previous,
        None => store
            .load_alert_engine()
            .await
            .context("loading the alert engine's state")?
            .unwrap_or_default(),
    };
    let rules = compiled_rules(state).await?;
    let nodes: Vec<NodeObservation> = store
        .list_nodes()
        .await
        .context("listing nodes")?
        .iter()
        .filter(|node| !node.revoked)
        .map(observe_node)
        .collect();
    let at = now();
    let metrics = metric_windows(state, &rules, at).await?;
    let drops = if rules
        .iter()
        .any(|r| matches!(r.condition, Condition::OutboxDropping { .. }))
    {
        store
            .drop_totals()
            .await
            .context("reading outbox drop totals")?
            .into_iter()
            .map(|d| DropObservation {
                node: d.node,
                stream: d.count.stream,
                records: d.count.records,
                bytes: d.count.bytes,
                changed_at: d.changed_at,
            })
            .collect()
    } else {
        Vec::new()
    };
    let silences = store.list_silences().await.context("listing silences")?;
    let evaluation = evaluate(
        &previous,
        &Input {
            now: at,
            rules: &rules,
            nodes: &nodes,
            metrics: &metrics,
            drops: &drops,
            silences: &silences,
            metric_staleness: METRIC_STALENESS,
        },
    );
    let mut queued = Vec::new();
    for notification in &evaluation.notifications {
        tracing::info!(
            alert = %notification.alert.id,
            rule = %notification.alert.rule,
            subject = %notification.alert.subject,
            kind = ?notification.kind,
            "alert notification"
        );
        let mut receivers = notification.webhooks.clone();
        for url in &state.alerts.webhooks {
            if !receivers.contains(url) {
                receivers.push(url.clone());
            }
        }
        queued.extend(receivers.into_iter().map(|receiver| NewNotification {
            receiver,
            status: notification.kind.status(),
            alert: notification.alert.clone(),
        }));
    }
    let any_queued = !queued.is_empty();
    let firing = evaluation.state.firing().len();
    let pending = store
        .save_alert_evaluation(&evaluation.state, evaluation.alerts, queued, at)
        .await
        .context("saving the alert evaluation")?;
    *engine = Some(evaluation.state);
    state.metrics.set(
        FleetGauge::AlertsFiring,
        u64::try_from(firing).unwrap_or(u64::MAX),
    );
    state.metrics.set(FleetGauge::WebhookQueueDepth, pending);
    if any_queued {
        state.alerts.queued.notify_one();
    }
    Ok(())
}

async fn compiled_rules(state: &AppState) -> anyhow::Result<Vec<CompiledRule>> {
    let records = state
        .store
        .list_alert_rules()
        .await
        .context("listing alert rules")?;
    Ok(records
        .iter()
        .filter_map(|record| match CompiledRule::new(&record.manifest) {
            Ok(rule) => Some(rule),
            Err(error) => {
                // Stored by a release with other rules; its alerts resolve until it is
                // applied again.
                tracing::warn!(
                    rule = %record.manifest.metadata.name,
                    %error,
                    "skipping an alert rule this server cannot evaluate"
                );
                None
            }
        })
        .collect())
}

async fn metric_windows(
    state: &AppState,
    rules: &[CompiledRule],
    at: Timestamp,
) -> anyhow::Result<BTreeMap<String, Vec<MetricObservation>>> {
    let mut windows = BTreeMap::new();
    let since = time::Duration::try_from(METRIC_STALENESS)
        .ok()
        .and_then(|d| at.checked_sub(d))
        .unwrap_or(at);
    for rule in rules {
        let Condition::Metric { name, .. } = &rule.condition else {
            continue;
        };
        if windows.contains_key(name) {
            continue;
        }
        let rows = state
            .store
            .metric_window(name, since)
            .await
            .with_context(|| format!("reading the samples of metric {name}"))?;
        let samples = rows
            .into_iter()
            .map(|row| MetricObservation {
                node: row.node,
                labels: row.labels,
                time: row.time,
                value: row.value,
            })
            .collect();
        windows.insert(name.clone(), samples);
    }
    Ok(windows)
}

fn observe_node(node: &NodeRecord) -> NodeObservation {
    NodeObservation {
        name: node.name.clone(),
        labels: node.labels.clone(),
        enrolled_at: node.enrolled_at,
        last_seen: node.last_seen,
        cert_not_after: Some(node.cert.not_after),
        workloads: node
            .reported
            .iter()
            .flat_map(|reported| &reported.workloads)
            .map(|w| WorkloadObservation {
                name: w.name.clone(),
                restarts: w.restarts,
            })
            .collect(),
    }
}
