//! `POST /v1/plan` and `GET /v1/explain/nodes/{name}`: answers computed by `planner`
//! from the store and the controller's rollouts; nothing changes.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use edgefleet_core::rollout::Rollout;
use edgefleet_wire::plan::{Explanation, Plan, PlanRequest};
use serde::Deserialize;

use crate::controller::RevisionSpecs;
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiJson, ApiPath, ApiQuery};
use crate::handlers::deployments::check_documents;
use crate::planner::{self, World};
use crate::state::{AppState, now};
use crate::store::{DeploymentRecord, NodeRecord, WindowRecord};

/// What the planner reads, fetched once per request.
struct Inputs {
    nodes: Vec<NodeRecord>,
    deployments: Vec<DeploymentRecord>,
    windows: Vec<WindowRecord>,
    rollouts: BTreeMap<String, Rollout>,
    specs: RevisionSpecs,
}

impl Inputs {
    async fn load(
        state: &AppState,
        nodes: Vec<NodeRecord>,
        deployments: Vec<DeploymentRecord>,
    ) -> ApiResult<Self> {
        let windows = state.store.list_windows().await?;
        let (rollouts, specs) = state.controller.snapshot().await?;
        Ok(Self {
            nodes,
            deployments,
            windows,
            rollouts,
            specs,
        })
    }

    fn world(&self, state: &AppState) -> World<'_> {
        World {
            nodes: &self.nodes,
            deployments: &self.deployments,
            windows: &self.windows,
            rollouts: &self.rollouts,
            specs: &self.specs,
            now: now(),
            not_ready_after: state.not_ready_after,
        }
    }
}

pub async fn plan(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<PlanRequest>,
) -> ApiResult<Json<Plan>> {
    check_documents(&request.deployments, &request.windows)?;
    crate::handlers::artifacts::check_references(&state, &request.deployments).await?;
    let nodes = state.store.list_nodes().await?;
    let deployments = state.store.list_deployments().await?;
    let inputs = Inputs::load(&state, nodes, deployments).await?;
    Ok(Json(planner::plan(&inputs.world(&state), request)))
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
    let inputs = Inputs::load(&state, vec![node], deployments).await?;
    let world = inputs.world(&state);
    Ok(Json(planner::explain(
        &world,
        &inputs.nodes[0],
        query.deployment.as_deref(),
    )))
}
