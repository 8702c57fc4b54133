//! `POST /v1/plan` and `GET /v1/explain/nodes/{name}`: answers computed by `planner`
//! from the store and the controller's rollouts; nothing changes.

use axum::Json;
use axum::extract::State;
use edgefleet_wire::plan::{Explanation, Plan, PlanRequest};
use serde::Deserialize;

use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiJson, ApiPath, ApiQuery};
use crate::handlers::deployments::check_documents;
use crate::planner::{self, World};
use crate::state::{AppState, now};

pub async fn plan(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<PlanRequest>,
) -> ApiResult<Json<Plan>> {
    check_documents(&request.deployments, &request.windows)?;
    let nodes = state.store.list_nodes().await?;
    let deployments = state.store.list_deployments().await?;
    let windows = state.store.list_windows().await?;
    let (rollouts, specs) = state.controller.snapshot().await?;
    let world = World {
        nodes: &nodes,
        deployments: &deployments,
        windows: &windows,
        rollouts: &rollouts,
        specs: &specs,
        now: now(),
        not_ready_after: state.not_ready_after,
    };
    Ok(Json(planner::plan(&world, request)))
}

#[derive(Debug, Deserialize)]
pub struct ExplainQuery {
    #[serde(default)]
    deployment: Option<String>,
}

pub async fn explain_node(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
    ApiQuery(query): ApiQuery<ExplainQuery>,
) -> ApiResult<Json<Explanation>> {
    let node = state
        .store
        .get_node(&name)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("node {name:?} not found")))?;
    let deployments = state.store.list_deployments().await?;
    if let Some(wanted) = &query.deployment
        && !deployments.iter().any(|d| &d.name == wanted)
    {
        return Err(ApiError::not_found(format!(
            "deployment {wanted:?} not found"
        )));
    }
    let windows = state.store.list_windows().await?;
    let (rollouts, specs) = state.controller.snapshot().await?;
    let nodes = [node];
    let world = World {
        nodes: &nodes,
        deployments: &deployments,
        windows: &windows,
        rollouts: &rollouts,
        specs: &specs,
        now: now(),
        not_ready_after: state.not_ready_after,
    };
    Ok(Json(planner::explain(
        &world,
        &nodes[0],
        query.deployment.as_deref(),
    )))
}
