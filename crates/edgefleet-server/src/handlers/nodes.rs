//! Operator routes about nodes: list (with selectors), detail, labels, revocation.

use axum::Json;
use axum::extract::State;
use edgefleet_core::labels::{validate_key, validate_labels};
use edgefleet_core::selector;
use edgefleet_wire::api::{LabelChange, NodeDetail, NodeSummary};
use edgefleet_wire::node::StoredNodeEvent;
use serde::Deserialize;

use crate::auth::ApiCaller;
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiJson, ApiPath, ApiQuery};
use crate::handlers::agent::desired_state;
use crate::state::{AppState, now};
use crate::status::{node_conditions, node_summary};
use crate::store::NewAudit;

/// How many audit entries a node's detail shows.
const RECENT_CHANGES: u32 = 20;

#[derive(Debug, Deserialize)]
pub struct ListQuery {
    #[serde(default)]
    selector: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct EventsQuery {
    #[serde(default)]
    limit: Option<u32>,
}

/// The most events one request returns.
const MAX_EVENTS: u32 = 10_000;

pub async fn events(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
    ApiQuery(query): ApiQuery<EventsQuery>,
) -> ApiResult<Json<Vec<StoredNodeEvent>>> {
    if state.store.get_node(&name).await?.is_none() {
        return Err(node_not_found(&name));
    }
    let limit = query.limit.unwrap_or(100).clamp(1, MAX_EVENTS);
    Ok(Json(state.store.list_node_events(&name, limit).await?))
}

fn node_not_found(name: &str) -> ApiError {
    ApiError::not_found(format!("node {name:?} not found"))
}

pub async fn list(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> ApiResult<Json<Vec<NodeSummary>>> {
    let selector = query
        .selector
        .as_deref()
        .map(selector::parse)
        .transpose()
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let at = now();
    let nodes = state.store.list_nodes().await?;
    Ok(Json(
        nodes
            .iter()
            .filter(|node| {
                selector
                    .as_ref()
                    .is_none_or(|s| selector::matches(s, &node.labels))
            })
            .map(|node| node_summary(node, at, state.not_ready_after))
            .collect(),
    ))
}

pub async fn detail(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<Json<NodeDetail>> {
    let node = state
        .store
        .get_node(&name)
        .await?
        .ok_or_else(|| node_not_found(&name))?;
    let recent_changes = state
        .store
        .list_audit(RECENT_CHANGES, Some(&format!("node/{name}")))
        .await?;
    let mut telemetry = state.store.node_telemetry(&name).await?;
    let (since, traffic) = state.store.node_traffic(&name).await?;
    telemetry.since = since;
    telemetry.traffic = traffic;
    let at = now();
    Ok(Json(NodeDetail {
        summary: node_summary(&node, at, state.not_ready_after),
        conditions: node_conditions(&node, at, state.not_ready_after),
        desired: desired_state(&node),
        facts: node.facts,
        reported: node.reported,
        conflicts: node.conflicts,
        recent_changes,
        telemetry: Some(telemetry),
    }))
}

fn describe_change(change: &LabelChange) -> String {
    let mut parts = Vec::new();
    if !change.set.is_empty() {
        let set: Vec<String> = change.set.iter().map(|(k, v)| format!("{k}={v}")).collect();
        parts.push(format!("set {}", set.join(",")));
    }
    if !change.remove.is_empty() {
        parts.push(format!("removed {}", change.remove.join(",")));
    }
    parts.join("; ")
}

pub async fn change_labels(
    State(state): State<AppState>,
    caller: ApiCaller,
    ApiPath(name): ApiPath<String>,
    ApiJson(change): ApiJson<LabelChange>,
) -> ApiResult<Json<NodeSummary>> {
    validate_labels(&change.set).map_err(|e| ApiError::bad_request(e.to_string()))?;
    for key in &change.remove {
        validate_key(key).map_err(|e| ApiError::bad_request(e.to_string()))?;
    }
    if change.set.is_empty() && change.remove.is_empty() {
        return Err(ApiError::bad_request(
            "the label change is empty: give labels to set or keys to remove",
        ));
    }
    let at = now();
    let audit = NewAudit::new(
        at,
        caller.actor(),
        "label",
        format!("node/{name}"),
        describe_change(&change),
    );
    let node = state
        .store
        .change_node_labels(&name, change, audit)
        .await?
        .ok_or_else(|| node_not_found(&name))?;
    if let Err(error) = state.controller.recompute_node(&name).await {
        tracing::error!(%error, node = %name, "recomputing desired state failed; retrying in the background");
    }
    // Re-read: the recompute may have given the node a new desired generation.
    let node = state.store.get_node(&name).await?.unwrap_or(node);
    Ok(Json(node_summary(&node, at, state.not_ready_after)))
}

pub async fn revoke(
    State(state): State<AppState>,
    caller: ApiCaller,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<Json<NodeSummary>> {
    let at = now();
    let audit = NewAudit::new(
        at,
        caller.actor(),
        "revoke",
        format!("node/{name}"),
        "node revoked",
    );
    let node = state
        .store
        .revoke_node(&name, audit)
        .await?
        .ok_or_else(|| node_not_found(&name))?;
    // Ends the node's open long poll, which re-reads the node and answers 403.
    state.controller.notify(&name);
    tracing::info!(node = %name, actor = %caller.actor(), "node revoked");
    Ok(Json(node_summary(&node, at, state.not_ready_after)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_changes_are_described_for_the_audit_log() {
        let change = LabelChange {
            set: [("site".to_string(), "b".to_string())].into(),
            remove: vec!["env".into()],
        };
        assert_eq!(describe_change(&change), "set site=b; removed env");
    }
}
