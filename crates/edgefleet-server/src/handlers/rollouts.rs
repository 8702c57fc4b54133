//! Operator routes about rollouts: status, history, pause/resume/promote/abort, undo.

use axum::Json;
use axum::extract::State;
use edgefleet_core::rollout::Command;
use edgefleet_wire::api::ApplyResponse;
use edgefleet_wire::rollout::{RolloutStatus, UndoRequest};
use serde::Deserialize;

use crate::auth::ApiCaller;
use crate::controller::RolloutCommandError;
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiJson, ApiPath, ApiQuery};
use crate::handlers::deployments::apply_documents;
use crate::state::{AppState, now};
use crate::store::NewAudit;

/// How many rollouts `history` returns.
const HISTORY: u32 = 50;

#[derive(Debug, Deserialize)]
pub struct StatusQuery {
    /// Include every node (default true).
    #[serde(default)]
    nodes: Option<bool>,
}

fn no_rollout(name: &str) -> ApiError {
    ApiError::not_found(format!(
        "deployment {name:?} has no rollout; rollouts start when `edgefleet apply` changes a deployment"
    ))
}

async fn ensure_deployment(state: &AppState, name: &str) -> ApiResult<()> {
    match state.store.get_deployment(name).await? {
        Some(_) => Ok(()),
        None => Err(ApiError::not_found(format!(
            "deployment {name:?} not found"
        ))),
    }
}

pub async fn status(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
    ApiQuery(query): ApiQuery<StatusQuery>,
) -> ApiResult<Json<RolloutStatus>> {
    ensure_deployment(&state, &name).await?;
    let rollout = state
        .controller
        .rollout(&name)
        .await
        .ok_or_else(|| no_rollout(&name))?;
    Ok(Json(rollout.status(query.nodes.unwrap_or(true))))
}

pub async fn history(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<Json<Vec<RolloutStatus>>> {
    ensure_deployment(&state, &name).await?;
    let rollouts = state.store.list_rollouts(&name, HISTORY).await?;
    Ok(Json(rollouts.iter().map(|r| r.status(false)).collect()))
}

async fn command(
    state: &AppState,
    caller: &ApiCaller,
    name: &str,
    command: Command,
) -> ApiResult<Json<RolloutStatus>> {
    ensure_deployment(state, name).await?;
    match state
        .controller
        .command(name, command, &caller.actor(), now())
        .await
    {
        Ok(rollout) => Ok(Json(rollout.status(false))),
        Err(RolloutCommandError::Store(error)) => Err(error.into()),
        Err(RolloutCommandError::NoRollout(name)) => Err(no_rollout(&name)),
        Err(RolloutCommandError::Refused(error)) => Err(ApiError::conflict(error.to_string())),
    }
}

pub async fn pause(
    State(state): State<AppState>,
    caller: ApiCaller,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<Json<RolloutStatus>> {
    command(&state, &caller, &name, Command::Pause).await
}

pub async fn resume(
    State(state): State<AppState>,
    caller: ApiCaller,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<Json<RolloutStatus>> {
    command(&state, &caller, &name, Command::Resume).await
}

pub async fn promote(
    State(state): State<AppState>,
    caller: ApiCaller,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<Json<RolloutStatus>> {
    command(&state, &caller, &name, Command::Promote).await
}

pub async fn abort(
    State(state): State<AppState>,
    caller: ApiCaller,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<Json<RolloutStatus>> {
    command(&state, &caller, &name, Command::Abort).await
}

/// Applies an earlier revision's manifest again, as a new revision with its own rollout.
pub async fn undo(
    State(state): State<AppState>,
    caller: ApiCaller,
    ApiPath(name): ApiPath<String>,
    ApiJson(request): ApiJson<UndoRequest>,
) -> ApiResult<Json<ApplyResponse>> {
    let current = state
        .store
        .get_deployment(&name)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("deployment {name:?} not found")))?;
    let revisions = state.store.list_revisions(&name).await?;
    let wanted = match request.to_revision {
        Some(number) => number,
        None => current
            .revision_count
            .checked_sub(1)
            .filter(|n| *n > 0)
            .ok_or_else(|| {
                ApiError::conflict(format!(
                    "deployment {name:?} has only one revision; there is nothing to go back to"
                ))
            })?,
    };
    let target = revisions
        .into_iter()
        .find(|r| r.number == wanted)
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "deployment {name:?} has no revision {wanted}; `edgefleet rollout history {name}` and `edgefleet describe deployment {name}` list them"
            ))
        })?;
    if target.revision == current.revision {
        return Err(ApiError::conflict(format!(
            "revision {wanted} of {name:?} has the same content as the current revision {}",
            current.revision_count
        )));
    }
    let actor = caller.actor();
    let response = apply_documents(&state, vec![target.manifest], Vec::new(), None, &actor).await?;
    state
        .store
        .record_audit(NewAudit::new(
            now(),
            &actor,
            "rollout.undo",
            format!("deployment/{name}"),
            format!(
                "back to the content of revision {wanted} (as revision {})",
                current.revision_count + 1
            ),
        ))
        .await?;
    Ok(Json(response))
}
