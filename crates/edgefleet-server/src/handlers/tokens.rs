//! Join tokens, API tokens and the audit log.

use axum::Json;
use axum::extract::State;
use edgefleet_core::labels::{validate_labels, validate_name};
use edgefleet_wire::api::{
    Ack, ApiTokenInfo, AuditEntry, CreateApiToken, CreateJoinToken, CreatedApiToken,
    CreatedJoinToken, JoinTokenInfo, Role,
};
use edgefleet_wire::{JoinString, Timestamp};
use serde::Deserialize;

use crate::auth::{ApiCaller, new_token, secret_sha256};
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiJson, ApiPath, ApiQuery};
use crate::state::{AppState, now};
use crate::status::{api_token_info, join_token_info};
use crate::store::{
    ApiTokenRecord, CreateOutcome, JoinTokenRecord, NewAudit, RevokeApiTokenOutcome, Store,
    StoreError, StoreResult,
};

/// Ten years: longer is a typo, not a plan.
const MAX_TTL_SECONDS: u64 = 10 * 365 * 86_400;
const MAX_DESCRIPTION_BYTES: usize = 1024;
/// Token ids are 32 random bits; a collision is rare and simply retried.
const ID_ATTEMPTS: usize = 8;
const AUDIT_DEFAULT_LIMIT: u32 = 100;
const AUDIT_MAX_LIMIT: u32 = 1000;

fn no_free_id() -> StoreError {
    StoreError::Backend {
        operation: "creating a token".into(),
        reason: format!("no free token id after {ID_ATTEMPTS} attempts"),
    }
}

pub async fn list_join_tokens(
    State(state): State<AppState>,
) -> ApiResult<Json<Vec<JoinTokenInfo>>> {
    let at = now();
    let tokens = state.store.list_join_tokens().await?;
    Ok(Json(
        tokens.iter().map(|t| join_token_info(t, at)).collect(),
    ))
}

pub async fn create_join_token(
    State(state): State<AppState>,
    caller: ApiCaller,
    ApiJson(request): ApiJson<CreateJoinToken>,
) -> ApiResult<Json<CreatedJoinToken>> {
    validate_labels(&request.labels).map_err(|e| ApiError::bad_request(e.to_string()))?;
    if request.ttl_seconds == 0 || request.ttl_seconds > MAX_TTL_SECONDS {
        return Err(ApiError::bad_request(format!(
            "ttl_seconds must be between 1 and {MAX_TTL_SECONDS} (ten years), got {}",
            request.ttl_seconds
        )));
    }
    if request.uses == Some(0) {
        return Err(ApiError::bad_request(
            "uses must be at least 1, or absent for unlimited uses until the token expires",
        ));
    }
    if request
        .description
        .as_ref()
        .is_some_and(|d| d.len() > MAX_DESCRIPTION_BYTES)
    {
        return Err(ApiError::bad_request(format!(
            "description is longer than {MAX_DESCRIPTION_BYTES} bytes"
        )));
    }
    let at = now();
    let ttl = time::Duration::seconds(i64::try_from(request.ttl_seconds).unwrap_or(i64::MAX));
    for _ in 0..ID_ATTEMPTS {
        let (id, token) = new_token();
        let record = JoinTokenRecord {
            id: id.clone(),
            secret_sha256: secret_sha256(&token),
            labels: request.labels.clone(),
            created_at: at,
            expires_at: at + ttl,
            uses_allowed: request.uses,
            uses: 0,
            revoked: false,
            description: request.description.clone(),
        };
        let uses = request
            .uses
            .map_or("unlimited".to_owned(), |u| u.to_string());
        let audit = NewAudit::new(
            at,
            caller.actor(),
            "token.create",
            format!("token/{id}"),
            format!(
                "uses {uses}, expires at {}",
                crate::status::rfc3339(record.expires_at)
            ),
        );
        match state.store.create_join_token(record.clone(), audit).await? {
            CreateOutcome::Created => {
                let join = JoinString {
                    url: state.advertise_url.clone(),
                    secret: token,
                    ca_sha256: state.ca_sha256.clone(),
                }
                .encode();
                return Ok(Json(CreatedJoinToken {
                    info: join_token_info(&record, at),
                    join,
                }));
            }
            CreateOutcome::IdTaken | CreateOutcome::NameTaken => continue,
        }
    }
    Err(no_free_id().into())
}

pub async fn revoke_join_token(
    State(state): State<AppState>,
    caller: ApiCaller,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Ack>> {
    let audit = NewAudit::new(
        now(),
        caller.actor(),
        "token.revoke",
        format!("token/{id}"),
        "join token revoked",
    );
    if !state.store.revoke_join_token(&id, audit).await? {
        return Err(ApiError::not_found(format!("join token {id:?} not found")));
    }
    Ok(Json(Ack { ok: true }))
}

pub async fn list_api_tokens(State(state): State<AppState>) -> ApiResult<Json<Vec<ApiTokenInfo>>> {
    let tokens = state.store.list_api_tokens().await?;
    Ok(Json(tokens.iter().map(api_token_info).collect()))
}

/// A new API token record and its secret (`<id>.<secret>`), not stored yet.
pub fn new_api_token(name: &str, role: Role, at: Timestamp) -> (ApiTokenRecord, String) {
    let (id, token) = new_token();
    let record = ApiTokenRecord {
        id,
        name: name.to_owned(),
        role,
        secret_sha256: secret_sha256(&token),
        created_at: at,
        revoked: false,
    };
    (record, token)
}

pub fn api_token_audit(record: &ApiTokenRecord, actor: &str) -> NewAudit {
    NewAudit::new(
        record.created_at,
        actor,
        "api-token.create",
        format!("api-token/{}", record.id),
        format!("name {}, role {}", record.name, record.role.as_str()),
    )
}

/// Creates and stores an API token: `Ok(None)` when an active token has that name.
async fn issue_api_token(
    store: &dyn Store,
    name: &str,
    role: Role,
    actor: &str,
    at: Timestamp,
) -> StoreResult<Option<(ApiTokenRecord, String)>> {
    for _ in 0..ID_ATTEMPTS {
        let (record, token) = new_api_token(name, role, at);
        let audit = api_token_audit(&record, actor);
        match store.create_api_token(record.clone(), audit).await? {
            CreateOutcome::Created => return Ok(Some((record, token))),
            CreateOutcome::NameTaken => return Ok(None),
            CreateOutcome::IdTaken => continue,
        }
    }
    Err(no_free_id())
}

pub async fn create_api_token(
    State(state): State<AppState>,
    caller: ApiCaller,
    ApiJson(request): ApiJson<CreateApiToken>,
) -> ApiResult<Json<CreatedApiToken>> {
    validate_name(&request.name).map_err(|reason| {
        ApiError::bad_request(format!("API token name {:?} {reason}", request.name))
    })?;
    let issued = issue_api_token(
        &*state.store,
        &request.name,
        request.role,
        &caller.actor(),
        now(),
    )
    .await?;
    let Some((record, token)) = issued else {
        return Err(ApiError::conflict(format!(
            "an active API token named {:?} exists; revoke it first or pick another name",
            request.name
        )));
    };
    tracing::info!(token = %record.id, name = %record.name, role = record.role.as_str(), "API token created");
    Ok(Json(CreatedApiToken {
        info: api_token_info(&record),
        token,
    }))
}

pub async fn revoke_api_token(
    State(state): State<AppState>,
    caller: ApiCaller,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Ack>> {
    let audit = NewAudit::new(
        now(),
        caller.actor(),
        "api-token.revoke",
        format!("api-token/{id}"),
        "API token revoked",
    );
    match state.store.revoke_api_token(&id, audit).await? {
        RevokeApiTokenOutcome::Revoked => Ok(Json(Ack { ok: true })),
        RevokeApiTokenOutcome::NotFound => {
            Err(ApiError::not_found(format!("API token {id:?} not found")))
        }
        RevokeApiTokenOutcome::LastAdmin => Err(ApiError::conflict(
            "this is the last active admin token; create another admin token before revoking it",
        )),
    }
}

#[derive(Debug, Deserialize)]
pub struct AuditQuery {
    #[serde(default)]
    limit: Option<u32>,
}

pub async fn audit(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<AuditQuery>,
) -> ApiResult<Json<Vec<AuditEntry>>> {
    let limit = query
        .limit
        .unwrap_or(AUDIT_DEFAULT_LIMIT)
        .clamp(1, AUDIT_MAX_LIMIT);
    Ok(Json(state.store.list_audit(limit, None).await?))
}
