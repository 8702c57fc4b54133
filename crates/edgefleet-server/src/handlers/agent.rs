//! Enrollment and the node channel: renew, desired state (long poll), status, facts,
//! heartbeat. Every route but enrollment runs as the node named by the client certificate
//! (`NodeCaller`), and can only ever read or write that node.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use edgefleet_core::labels::{validate_labels, validate_name};
use edgefleet_core::lifecycle::{TokenState, token_state};
use edgefleet_wire::api::{
    Ack, DesiredState, EnrollRequest, EnrollResponse, Heartbeat, RenewRequest, RenewResponse,
};
use edgefleet_wire::node::{EventBatch, EventsAck, NodeFacts, ReportedState};
use serde::Deserialize;

use crate::auth::{NodeCaller, hashes_equal, revoked_error, secret_sha256, split_token};
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiJson, ApiQuery};
use crate::state::{AppState, now};
use crate::store::{CertRecord, EnrollOutcome, Enrollment, JoinTokenRecord, NewAudit, NodeRecord};

/// The longest a long poll is held open, whatever the agent asks for.
/// The longest a desired-state poll is held (agents ask for 90 s).
const MAX_WAIT: Duration = Duration::from_secs(120);

fn ack() -> Json<Ack> {
    Json(Ack { ok: true })
}

fn refusal(state: TokenState) -> ApiError {
    let message = state.refusal().unwrap_or("join token cannot be used");
    match state {
        TokenState::UsedUp => ApiError::forbidden(message),
        _ => ApiError::unauthorized(message),
    }
}

async fn join_token(state: &AppState, token: &str) -> ApiResult<JoinTokenRecord> {
    let unknown = || {
        ApiError::unauthorized(
            "unknown join token; check the join string, or create a new token with `edgefleet token create`",
        )
    };
    let (id, _) = split_token(token).ok_or_else(unknown)?;
    match state.store.get_join_token(id).await? {
        Some(record) if hashes_equal(&record.secret_sha256, &secret_sha256(token)) => Ok(record),
        _ => Err(unknown()),
    }
}

fn check_usable(token: &JoinTokenRecord, at: edgefleet_wire::Timestamp) -> ApiResult<()> {
    match token_state(
        at,
        token.expires_at,
        token.uses,
        token.uses_allowed,
        token.revoked,
    ) {
        TokenState::Active => Ok(()),
        refused => Err(refusal(refused)),
    }
}

fn name_taken(name: &str) -> ApiError {
    ApiError::conflict(format!(
        "a node named {name:?} is already enrolled; revoke it first (`edgefleet node revoke {name}`) \
         or enroll this machine with another --name"
    ))
}

pub async fn enroll(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<EnrollRequest>,
) -> ApiResult<Json<EnrollResponse>> {
    let at = now();
    let token = join_token(&state, &request.token).await?;
    check_usable(&token, at)?;
    let name = request.name.trim();
    validate_name(name).map_err(|reason| {
        ApiError::bad_request(format!(
            "node name {name:?} {reason}; pick another with --name"
        ))
    })?;
    validate_labels(&request.labels).map_err(|e| ApiError::bad_request(e.to_string()))?;
    if state
        .store
        .get_node(name)
        .await?
        .is_some_and(|node| !node.revoked)
    {
        return Err(name_taken(name));
    }
    let mut labels = request.labels;
    // The token's labels are the operator's decision; the node's own request cannot override them.
    labels.extend(token.labels.clone());

    let (certificate_pem, cert) = state
        .ca
        .sign_node_csr(&request.csr_pem, name, at, state.node_cert_validity)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let audit = NewAudit::new(
        at,
        format!("node:{name}"),
        "enroll",
        format!("node/{name}"),
        format!(
            "enrolled with join token {}; certificate {} valid until {}",
            token.id,
            cert.serial,
            crate::status::rfc3339(cert.not_after)
        ),
    );
    let outcome = state
        .store
        .enroll_node(Enrollment {
            name: name.to_owned(),
            labels,
            facts: request.facts,
            cert: CertRecord {
                serial: cert.serial.clone(),
                not_after: cert.not_after,
            },
            token_id: token.id.clone(),
            now: at,
            audit,
        })
        .await?;
    match outcome {
        EnrollOutcome::Enrolled(_) => {}
        EnrollOutcome::NameTaken => return Err(name_taken(name)),
        EnrollOutcome::TokenUnusable => {
            // Another enrollment used the token up (or it was revoked) since we checked.
            let now_token = state
                .store
                .get_join_token(&token.id)
                .await?
                .unwrap_or(token);
            check_usable(&now_token, at)?;
            return Err(refusal(TokenState::UsedUp));
        }
    }
    tracing::info!(node = %name, serial = %cert.serial, "node enrolled");
    if let Err(error) = state.controller.recompute_node(name).await {
        tracing::error!(%error, node = %name, "computing the desired state of a new node failed; retrying in the background");
    }
    Ok(Json(EnrollResponse {
        node: name.to_owned(),
        certificate_pem,
        ca_pem: state.ca.cert_pem().to_owned(),
        not_after: cert.not_after,
    }))
}

pub async fn renew(
    State(state): State<AppState>,
    caller: NodeCaller,
    ApiJson(request): ApiJson<RenewRequest>,
) -> ApiResult<Json<RenewResponse>> {
    let at = now();
    let (certificate_pem, cert) = state
        .ca
        .sign_node_csr(&request.csr_pem, &caller.name, at, state.node_cert_validity)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let audit = NewAudit::new(
        at,
        caller.actor(),
        "renew",
        format!("node/{}", caller.name),
        format!(
            "certificate {} valid until {} replaces {}",
            cert.serial,
            crate::status::rfc3339(cert.not_after),
            caller.serial
        ),
    );
    let record = CertRecord {
        serial: cert.serial.clone(),
        not_after: cert.not_after,
    };
    if !state
        .store
        .renew_node_cert(&caller.name, record, &caller.serial, audit)
        .await?
    {
        return Err(revoked_error(&caller.name));
    }
    tracing::debug!(node = %caller.name, serial = %cert.serial, "node certificate renewed");
    Ok(Json(RenewResponse {
        certificate_pem,
        not_after: cert.not_after,
    }))
}

#[derive(Debug, Deserialize)]
pub struct DesiredQuery {
    #[serde(default)]
    known_generation: Option<u64>,
    #[serde(default)]
    wait_seconds: Option<u64>,
}

pub fn desired_state(node: &NodeRecord) -> DesiredState {
    DesiredState {
        node: node.name.clone(),
        generation: node.desired_generation,
        workloads: node.desired_workloads.clone(),
    }
}

/// Answers at once when the stored generation differs from the agent's, else waits for a
/// change (woken by the controller, or by revocation) up to `wait_seconds`.
pub async fn desired(
    State(state): State<AppState>,
    caller: NodeCaller,
    ApiQuery(query): ApiQuery<DesiredQuery>,
) -> ApiResult<Response> {
    // Subscribed before the first read: a change between the read and the wait still wakes us.
    let mut wakeup = state.controller.subscribe(&caller.name);
    let result = wait_for_desired(&state, &caller, &query, &mut wakeup).await;
    drop(wakeup);
    // The poll is the idle node's sign of life: it was heard from when the poll came
    // (the authentication touched it) and is again now, at its end.
    if let Err(error) = state.touch_node(&caller.name).await {
        tracing::debug!(%error, node = %caller.name, "recording presence at the end of a poll failed");
    }
    // The map of wake-up channels holds only nodes with a poll open, not every node ever.
    state.controller.forget_idle(&caller.name);
    result
}

async fn wait_for_desired(
    state: &AppState,
    caller: &NodeCaller,
    query: &DesiredQuery,
    wakeup: &mut tokio::sync::watch::Receiver<u64>,
) -> ApiResult<Response> {
    let wait = Duration::from_secs(query.wait_seconds.unwrap_or(0)).min(MAX_WAIT);
    let deadline = tokio::time::Instant::now() + wait;
    let mut stopping = std::pin::pin!(crate::state::stopping(state.shutdown.clone()));
    loop {
        let node = state.store.get_node(&caller.name).await?.ok_or_else(|| {
            ApiError::unauthorized(format!("node {:?} is not enrolled", caller.name))
        })?;
        if node.revoked {
            return Err(revoked_error(&caller.name));
        }
        if query.known_generation != Some(node.desired_generation) {
            return Ok(Json(desired_state(&node)).into_response());
        }
        tokio::select! {
            changed = wakeup.changed() => {
                if changed.is_err() {
                    return Ok(StatusCode::NOT_MODIFIED.into_response());
                }
            }
            () = tokio::time::sleep_until(deadline) => {
                return Ok(StatusCode::NOT_MODIFIED.into_response());
            }
            () = &mut stopping => {
                return Err(ApiError::unavailable("the server is shutting down; retry shortly"));
            }
        }
    }
}

pub async fn status(
    State(state): State<AppState>,
    caller: NodeCaller,
    ApiJson(report): ApiJson<ReportedState>,
) -> ApiResult<Json<Ack>> {
    if report.node != caller.name {
        return Err(ApiError::forbidden(format!(
            "certificate is for node {:?}, not {:?}",
            caller.name, report.node
        )));
    }
    state
        .store
        .set_node_reported(&caller.name, report, now())
        .await?;
    // Rollouts gate on what nodes report; let them look now rather than at the next tick.
    state.controller.poke();
    Ok(ack())
}

/// The most events one batch may carry; the agent sends at most 500.
const MAX_EVENTS_PER_BATCH: usize = 1_000;

pub async fn events(
    State(state): State<AppState>,
    caller: NodeCaller,
    ApiJson(batch): ApiJson<EventBatch>,
) -> ApiResult<Json<EventsAck>> {
    if batch.events.len() > MAX_EVENTS_PER_BATCH {
        return Err(ApiError::bad_request(format!(
            "an event batch holds at most {MAX_EVENTS_PER_BATCH} events, this one has {}",
            batch.events.len()
        )));
    }
    let stored_through = state
        .store
        .insert_node_events(&caller.name, batch.events, now())
        .await?;
    Ok(Json(EventsAck { stored_through }))
}

pub async fn facts(
    State(state): State<AppState>,
    caller: NodeCaller,
    ApiJson(facts): ApiJson<NodeFacts>,
) -> ApiResult<Json<Ack>> {
    state
        .store
        .set_node_facts(&caller.name, facts, now())
        .await?;
    Ok(ack())
}

pub async fn heartbeat(
    State(state): State<AppState>,
    caller: NodeCaller,
    ApiJson(heartbeat): ApiJson<Heartbeat>,
) -> ApiResult<Json<Ack>> {
    state
        .heartbeat(&caller.name, heartbeat.applied_generation)
        .await?;
    Ok(ack())
}
