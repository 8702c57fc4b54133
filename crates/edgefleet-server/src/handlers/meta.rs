//! Unauthenticated routes: liveness, readiness, the CA, the OpenAPI document.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use edgefleet_wire::api::{CaInfo, Health};

use crate::routes::table;
use crate::state::AppState;

fn health(status: &str) -> Json<Health> {
    Json(Health {
        status: status.to_owned(),
        version: edgefleet_wire::AGENT_VERSION.to_owned(),
    })
}

pub async fn healthz() -> Json<Health> {
    health("ok")
}

pub async fn readyz(State(state): State<AppState>) -> Response {
    match state.store.ping().await {
        Ok(()) => health("ready").into_response(),
        Err(error) => {
            tracing::warn!(%error, "readiness check failed");
            (StatusCode::SERVICE_UNAVAILABLE, health("store unavailable")).into_response()
        }
    }
}

pub async fn openapi() -> Json<serde_json::Value> {
    Json(crate::openapi::document(&table()))
}

pub async fn ca(State(state): State<AppState>) -> Json<CaInfo> {
    Json(CaInfo {
        ca_pem: state.ca.cert_pem().to_owned(),
        ca_sha256: state.ca_sha256.clone(),
    })
}
