//! Operator routes about deployments: list and detail with roll-out counts, apply, delete.

use std::collections::BTreeSet;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use edgefleet_core::hash::{revision_hash, short};
use edgefleet_core::manifest::{validate, validate_window};
use edgefleet_core::merge::merge_for_node;
use edgefleet_wire::api::{
    Ack, ApplyRequest, ApplyResponse, ApplyResult, DeploymentDetail, DeploymentSummary,
    RevisionInfo, WindowApplyResult,
};
use edgefleet_wire::manifest::{DeploymentManifest, MaintenanceWindowManifest};
use edgefleet_wire::plan::PlanBasis;

use crate::auth::ApiCaller;
use crate::controller::{ApplyError, deployment_refs};
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiJson, ApiPath};
use crate::planner::window_hash;
use crate::state::{AppState, now};
use crate::status::{NodeView, Rollup, deployment_rollup};
use crate::store::{ApplyItem, DeploymentRecord, NewAudit, NodeRecord, WindowRecord};

fn not_found(name: &str) -> ApiError {
    ApiError::not_found(format!("deployment {name:?} not found"))
}

fn views<'a>(nodes: &'a [NodeRecord], deployments: &[DeploymentRecord]) -> Vec<NodeView<'a>> {
    let refs = deployment_refs(deployments);
    nodes
        .iter()
        .filter(|node| !node.revoked)
        .map(|node| NodeView {
            node,
            merge: merge_for_node(&node.labels, &refs),
        })
        .collect()
}

pub async fn list(State(state): State<AppState>) -> ApiResult<Json<Vec<DeploymentSummary>>> {
    let deployments = state.store.list_deployments().await?;
    let nodes = state.store.list_nodes().await?;
    let views = views(&nodes, &deployments);
    let at = now();
    Ok(Json(
        deployments
            .iter()
            .map(|d| deployment_rollup(d, &views, at, state.not_ready_after).summary)
            .collect(),
    ))
}

pub async fn detail(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<Json<DeploymentDetail>> {
    // All deployments, not just this one: what a node runs depends on every deployment
    // that selects it (priorities, shadowing).
    let deployments = state.store.list_deployments().await?;
    let deployment = deployments
        .iter()
        .find(|d| d.name == name)
        .ok_or_else(|| not_found(&name))?;
    let nodes = state.store.list_nodes().await?;
    let revisions = state.store.list_revisions(&name).await?;
    let views = views(&nodes, &deployments);
    let Rollup {
        summary,
        nodes,
        conflicts,
    } = deployment_rollup(deployment, &views, now(), state.not_ready_after);
    Ok(Json(DeploymentDetail {
        summary,
        manifest: deployment.manifest.clone(),
        revisions: revisions
            .into_iter()
            .map(|r| RevisionInfo {
                revision: r.revision,
                number: r.number,
                created_at: r.created_at,
                created_by: r.created_by,
            })
            .collect(),
        nodes,
        conflicts,
    }))
}

pub async fn delete(
    State(state): State<AppState>,
    caller: ApiCaller,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<Json<Ack>> {
    let current = state
        .store
        .get_deployment(&name)
        .await?
        .ok_or_else(|| not_found(&name))?;
    let audit = NewAudit::new(
        now(),
        caller.actor(),
        "delete",
        format!("deployment/{name}"),
        format!(
            "deleted at revision {} ({})",
            current.revision_count,
            short(&current.revision)
        ),
    );
    if !state.controller.delete_deployment(&name, audit).await? {
        return Err(not_found(&name));
    }
    Ok(Json(Ack { ok: true }))
}

fn invalid_manifest(index: usize, name: &str, field: &str, message: &str) -> ApiError {
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_manifest",
        format!("invalid manifest for deployment {name:?}: field {field}: {message}"),
    )
    .with_details(vec![
        format!("deployment: {name} (deployments[{index}])"),
        format!("field: {field}"),
        message.to_owned(),
    ])
}

fn invalid_window(index: usize, name: &str, field: &str, message: &str) -> ApiError {
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_manifest",
        format!("invalid manifest for maintenance window {name:?}: field {field}: {message}"),
    )
    .with_details(vec![
        format!("maintenance window: {name} (windows[{index}])"),
        format!("field: {field}"),
        message.to_owned(),
    ])
}

/// Validates every document of an apply or plan request.
pub fn check_documents(
    deployments: &[DeploymentManifest],
    windows: &[MaintenanceWindowManifest],
) -> ApiResult<()> {
    let mut names = BTreeSet::new();
    for (index, manifest) in deployments.iter().enumerate() {
        let name = &manifest.metadata.name;
        validate(manifest)
            .map_err(|(field, message)| invalid_manifest(index, name, &field, &message))?;
        if !names.insert(name.as_str()) {
            return Err(invalid_manifest(
                index,
                name,
                "metadata.name",
                "this deployment is defined twice in the request",
            ));
        }
    }
    let mut names = BTreeSet::new();
    for (index, manifest) in windows.iter().enumerate() {
        let name = &manifest.metadata.name;
        validate_window(manifest)
            .map_err(|(field, message)| invalid_window(index, name, &field, &message))?;
        if !names.insert(name.as_str()) {
            return Err(invalid_window(
                index,
                name,
                "metadata.name",
                "this maintenance window is defined twice in the request",
            ));
        }
    }
    if deployments.is_empty() && windows.is_empty() {
        return Err(ApiError::bad_request(
            "the request has no deployments and no maintenance windows",
        ));
    }
    Ok(())
}

pub async fn apply(
    State(state): State<AppState>,
    caller: ApiCaller,
    ApiJson(request): ApiJson<ApplyRequest>,
) -> ApiResult<Json<ApplyResponse>> {
    check_documents(&request.deployments, &request.windows)?;
    apply_documents(
        &state,
        request.deployments,
        request.windows,
        request.plan_basis.as_ref(),
        &caller.actor(),
    )
    .await
    .map(Json)
}

/// Stores validated documents through the controller (which starts rollouts).
pub async fn apply_documents(
    state: &AppState,
    deployments: Vec<DeploymentManifest>,
    windows: Vec<MaintenanceWindowManifest>,
    basis: Option<&PlanBasis>,
    actor: &str,
) -> ApiResult<ApplyResponse> {
    // Held until the apply is stored: an artifact checked here cannot be deleted meanwhile.
    let _artifacts = state.artifacts.lock().await;
    crate::handlers::artifacts::check_references(state, &deployments).await?;
    let items: Vec<ApplyItem> = deployments
        .into_iter()
        .map(|manifest| ApplyItem {
            revision: revision_hash(&manifest.spec),
            manifest,
        })
        .collect();
    let windows: Vec<WindowRecord> = windows
        .into_iter()
        .map(|manifest| WindowRecord {
            hash: window_hash(&manifest),
            manifest,
            updated_at: now(),
        })
        .collect();
    let applied = state
        .controller
        .apply(items, windows, basis, actor, now())
        .await
        .map_err(|error| match error {
            ApplyError::Store(error) => ApiError::from(error),
            ApplyError::StalePlan(differences) => ApiError::conflict(
                "the fleet or the deployments changed since the plan was computed; nothing was applied. \
                 Run `edgefleet plan` again and review the new plan",
            )
            .with_details(differences),
        })?;
    let recomputed = &applied.recomputed;
    let results = applied
        .deployments
        .into_iter()
        .map(|a| ApplyResult {
            selected_nodes: recomputed.selected.get(&a.name).copied().unwrap_or(0),
            name: a.name,
            action: a.action,
            revision: a.revision,
        })
        .collect();
    let nodes = state.store.list_nodes().await?;
    let window_manifests = state.store.list_windows().await?;
    let windows = applied
        .windows
        .into_iter()
        .map(|(name, action)| {
            let selected = window_manifests
                .iter()
                .find(|w| w.manifest.metadata.name == name)
                .map_or(0, |w| {
                    nodes
                        .iter()
                        .filter(|n| {
                            !n.revoked
                                && edgefleet_core::selector::matches(
                                    &w.manifest.spec.selector,
                                    &n.labels,
                                )
                        })
                        .count()
                });
            WindowApplyResult {
                name,
                action,
                selected_nodes: u32::try_from(selected).unwrap_or(u32::MAX),
            }
        })
        .collect();
    Ok(ApplyResponse { results, windows })
}
