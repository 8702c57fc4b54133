//! Sessions (see `crate::sessions`): the agent's long poll for them and its upload that
//! answers one, and the operator's route that opens one, `GET
//! /v1/nodes/{name}/workloads/{workload}/logs`, whose response is the agent's answer
//! relayed as it arrives (JSON lines of `LogFrame`).
//!
//! Neither the upload nor the relayed response has a size limit: a followed log runs as
//! long as its operator watches. Each chunk of the upload is checked against
//! `MAX_CHUNK_BYTES` instead, so a confused agent cannot make the server buffer a huge
//! chunk.

use std::time::Duration;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use edgefleet_core::labels::validate_name;
use edgefleet_wire::Timestamp;
use edgefleet_wire::api::Ack;
use edgefleet_wire::duration::DurationSpec;
use edgefleet_wire::session::{LogFrame, LogRequest, SessionPoll, SessionRequest};
use serde::Deserialize;

use crate::auth::NodeCaller;
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiPath, ApiQuery, next_chunk};
use crate::sessions::OpenError;
use crate::state::{AppState, now, stopping};

/// The longest a session poll is held open, whatever the agent asks for.
/// The longest a sessions poll is held (agents ask for 90 s).
const MAX_WAIT: Duration = Duration::from_secs(120);

/// How long an operator's request waits for the node's agent to pick its session up.
pub const ATTACH_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest chunk an upload may send at once. The agent sends at most 64 KiB.
pub const MAX_CHUNK_BYTES: usize = 1024 * 1024;

#[derive(Debug, Deserialize)]
pub struct PollQuery {
    #[serde(default)]
    wait_seconds: Option<u64>,
}

/// Hands the calling node its queued sessions at once, or waits for one up to
/// `wait_seconds` (then answers an empty list).
pub async fn poll(
    State(state): State<AppState>,
    caller: NodeCaller,
    ApiQuery(query): ApiQuery<PollQuery>,
) -> ApiResult<Json<SessionPoll>> {
    let wake = state.sessions.waker(&caller.name);
    let result = wait_for_sessions(&state, &caller.name, &query, &wake).await;
    drop(wake);
    state.sessions.forget_idle(&caller.name);
    result.map(|sessions| Json(SessionPoll { sessions }))
}

async fn wait_for_sessions(
    state: &AppState,
    node: &str,
    query: &PollQuery,
    wake: &tokio::sync::Notify,
) -> ApiResult<Vec<edgefleet_wire::session::AgentSession>> {
    let wait = Duration::from_secs(query.wait_seconds.unwrap_or(0)).min(MAX_WAIT);
    let deadline = tokio::time::Instant::now() + wait;
    let mut stopping = std::pin::pin!(stopping(state.shutdown.clone()));
    loop {
        // Registered before looking: a session queued in between still wakes us.
        let mut woken = std::pin::pin!(wake.notified());
        woken.as_mut().enable();
        let sessions = state.sessions.take(node);
        if !sessions.is_empty() {
            return Ok(sessions);
        }
        tokio::select! {
            () = woken => {}
            () = tokio::time::sleep_until(deadline) => return Ok(Vec::new()),
            () = &mut stopping => {
                return Err(ApiError::unavailable("the server is shutting down; retry shortly"));
            }
        }
    }
}

/// The agent's answer to session `id`: relayed to the operator chunk by chunk until the
/// agent ends it, the operator goes away (then the upload is ended early), or the server
/// shuts down.
pub async fn upload(
    State(state): State<AppState>,
    caller: NodeCaller,
    ApiPath(id): ApiPath<String>,
    mut body: Body,
) -> ApiResult<Json<Ack>> {
    let relay = state
        .sessions
        .attach(&caller.name, &id)
        .map_err(|error| ApiError::not_found(error.to_string()))?;
    let mut stopping = std::pin::pin!(stopping(state.shutdown.clone()));
    loop {
        let chunk = tokio::select! {
            chunk = next_chunk(&mut body) => chunk,
            () = relay.closed() => break,
            () = &mut stopping => {
                let _ = relay.try_send(error_line("the server is shutting down; run the command again shortly"));
                break;
            }
        };
        let chunk = match chunk {
            None => break,
            Some(Ok(chunk)) => chunk,
            Some(Err(error)) => {
                tracing::debug!(node = %caller.name, session = %id, %error, "session upload ended with an error");
                let _ = relay.try_send(error_line(&format!(
                    "the connection to node {:?} broke: {error}",
                    caller.name
                )));
                break;
            }
        };
        if chunk.len() > MAX_CHUNK_BYTES {
            let message = format!(
                "node {:?} sent a chunk of {} bytes; the limit is {MAX_CHUNK_BYTES}",
                caller.name,
                chunk.len()
            );
            tracing::warn!(node = %caller.name, session = %id, size = chunk.len(), "session upload chunk too large; ending the session");
            let _ = relay.send(error_line(&message)).await;
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                message,
            ));
        }
        if relay.send(chunk).await.is_err() {
            break;
        }
    }
    Ok(Json(Ack { ok: true }))
}

/// One JSON line of an error frame, for the operator.
fn error_line(message: &str) -> Bytes {
    let frame = LogFrame::Error {
        message: message.to_owned(),
    };
    let mut line = serde_json::to_vec(&frame).unwrap_or_default();
    line.push(b'\n');
    Bytes::from(line)
}

#[derive(Debug, Deserialize)]
pub struct LogsQuery {
    #[serde(default)]
    follow: bool,
    /// RFC 3339, or a duration back from now (`10m`).
    #[serde(default)]
    since: Option<String>,
    #[serde(default)]
    tail: Option<u64>,
}

/// A workload's logs from its node, relayed from the agent as JSON lines of `LogFrame`.
pub async fn logs(
    State(state): State<AppState>,
    ApiPath((node_name, workload)): ApiPath<(String, String)>,
    ApiQuery(query): ApiQuery<LogsQuery>,
) -> ApiResult<Response> {
    validate_name(&workload).map_err(|reason| {
        ApiError::bad_request(format!("invalid workload name {workload:?}: {reason}"))
    })?;
    let since = query.since.as_deref().map(parse_since).transpose()?;
    let node = state
        .store
        .get_node(&node_name)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("node {node_name:?} not found")))?;
    if node.revoked {
        return Err(ApiError::conflict(format!(
            "node {node_name:?} is revoked; its agent is refused and cannot send logs"
        )));
    }
    let request = SessionRequest::Logs(LogRequest {
        workload,
        follow: query.follow,
        since,
        tail: query.tail,
    });
    let mut ticket = state
        .sessions
        .open(&node_name, request)
        .map_err(|error| match error {
            OpenError::TooMany { .. } => ApiError::unavailable(error.to_string()),
        })?;
    let attached = tokio::select! {
        attached = tokio::time::timeout(ATTACH_TIMEOUT, ticket.attached()) => attached,
        () = stopping(state.shutdown.clone()) => {
            return Err(ApiError::unavailable("the server is shutting down; retry shortly"));
        }
    };
    let relay = match attached {
        Ok(Some(relay)) => relay,
        Ok(None) | Err(_) => {
            tracing::debug!(node = %node_name, session = %ticket.id(), "no agent picked the session up");
            // Read again: the agent may have been heard from while we waited.
            let last_seen = match state.store.get_node(&node_name).await {
                Ok(Some(node)) => node.last_seen,
                _ => node.last_seen,
            };
            return Err(not_attached(&node_name, last_seen, now()));
        }
    };
    let mut response = Body::new(relay).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    // Proxies must pass each line on as it comes, not collect the stream.
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(response)
}

fn not_attached(node: &str, last_seen: Option<Timestamp>, at: Timestamp) -> ApiError {
    let seen = match last_seen {
        Some(seen) => {
            let ago = (at - seen).whole_seconds().max(0).unsigned_abs();
            format!(
                "it was last seen {} ago ({})",
                DurationSpec::from_secs(ago),
                crate::status::rfc3339(seen)
            )
        }
        None => "it has never connected".to_owned(),
    };
    ApiError::new(
        StatusCode::GATEWAY_TIMEOUT,
        "node_unreachable",
        format!(
            "node {node:?} did not answer within {}s; {seen}. Is its agent running and connected?",
            ATTACH_TIMEOUT.as_secs()
        ),
    )
}

/// `since` as the operator wrote it: RFC 3339, or a duration back from now.
fn parse_since(since: &str) -> ApiResult<Timestamp> {
    if let Ok(at) = Timestamp::parse(since, &time::format_description::well_known::Rfc3339) {
        return Ok(at);
    }
    match since.parse::<DurationSpec>() {
        Ok(spec) => {
            let back = time::Duration::try_from(spec.as_duration())
                .map_err(|_| ApiError::bad_request(format!("since={since:?} is too far back")))?;
            now()
                .checked_sub(back)
                .ok_or_else(|| ApiError::bad_request(format!("since={since:?} is too far back")))
        }
        Err(_) => Err(ApiError::bad_request(format!(
            "invalid since={since:?}: expected an RFC 3339 time (2026-11-26T16:00:00Z) or a duration back from now (10m, 2h, 1d)"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_times_and_durations() {
        let at = parse_since("2026-11-26T16:00:00Z").unwrap();
        assert_eq!(at.unix_timestamp(), 1_795_708_800);
        let ten_minutes_ago = parse_since("10m").unwrap();
        let age = now() - ten_minutes_ago;
        assert!(
            age >= time::Duration::minutes(10) && age < time::Duration::minutes(11),
            "{age}"
        );
        let error = parse_since("yesterday").unwrap_err();
        let response = error.into_response();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    }

    async fn message(error: ApiError) -> (StatusCode, String) {
        let response = error.into_response();
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap();
        let body: edgefleet_wire::api::ErrorBody = serde_json::from_slice(&body).unwrap();
        (status, body.message)
    }

    #[tokio::test]
    async fn an_unreachable_node_is_named_with_when_it_was_seen() {
        let at = parse_since("2026-11-26T16:00:00Z").unwrap();
        let seen = at - time::Duration::minutes(3);
        let (status, text) = message(not_attached("edge-1", Some(seen), at)).await;
        assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(
            text,
            "node \"edge-1\" did not answer within 10s; it was last seen 3m ago \
             (2026-11-26T15:57:00Z). Is its agent running and connected?"
        );
        let (_, text) = message(not_attached("edge-1", None, at)).await;
        assert!(text.contains("it has never connected"), "{text}");
    }
}
