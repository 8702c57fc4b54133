//! Operator routes about maintenance windows: list and delete (apply creates them).

use axum::Json;
use axum::extract::State;
use edgefleet_core::selector;
use edgefleet_wire::api::{Ack, WindowInfo};

use crate::auth::ApiCaller;
use crate::controller::{compile_windows, window_gate};
use crate::error::{ApiError, ApiResult};
use crate::extract::ApiPath;
use crate::state::{AppState, now};
use crate::store::NewAudit;

pub async fn list(State(state): State<AppState>) -> ApiResult<Json<Vec<WindowInfo>>> {
    let records = state.store.list_windows().await?;
    let nodes = state.store.list_nodes().await?;
    let at = now();
    let infos = records
        .into_iter()
        .map(|record| {
            let compiled = compile_windows(std::slice::from_ref(&record));
            let selected: Vec<_> = nodes
                .iter()
                .filter(|n| {
                    !n.revoked && selector::matches(&record.manifest.spec.selector, &n.labels)
                })
                .collect();
            let open = selected
                .iter()
                .filter(|n| {
                    matches!(
                        window_gate(&compiled, n, at),
                        edgefleet_core::rollout::WindowGate::Open
                    )
                })
                .count();
            WindowInfo {
                selected_nodes: u32::try_from(selected.len()).unwrap_or(u32::MAX),
                open_nodes: u32::try_from(open).unwrap_or(u32::MAX),
                updated_at: record.updated_at,
                manifest: record.manifest,
            }
        })
        .collect();
    Ok(Json(infos))
}

pub async fn delete(
    State(state): State<AppState>,
    caller: ApiCaller,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<Json<Ack>> {
    let audit = NewAudit::new(
        now(),
        caller.actor(),
        "delete",
        format!("window/{name}"),
        "deleted",
    );
    if !state.store.delete_window(&name, audit).await? {
        return Err(ApiError::not_found(format!(
            "maintenance window {name:?} not found"
        )));
    }
    state.controller.poke();
    Ok(Json(Ack { ok: true }))
}
