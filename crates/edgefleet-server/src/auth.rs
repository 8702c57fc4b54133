//! Who is calling: API tokens for operators, client certificates for nodes.
//!
//! Both are checked by route middleware (`require_role`, `require_node`) attached from the
//! route table, so a route cannot be served without the access the table says it needs.
//! The middleware puts an `ApiCaller` or `NodeCaller` into the request for handlers.
//!
//! Secrets (`<id>.<secret>`) are looked up by id; the store holds only the SHA-256 of the
//! secret part.

use std::sync::Arc;

use axum::extract::{FromRequestParts, Request, State};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use edgefleet_core::hash::sha256_hex;
use edgefleet_tls::CertInfo;
use edgefleet_wire::api::Role;

use crate::error::ApiError;
use crate::state::AppState;

/// The verified client certificate of the connection a request came on, if any. Inserted
/// per connection by the accept loop.
#[derive(Debug, Clone, Default)]
pub struct PeerCertificate(pub Option<Arc<CertInfo>>);

/// An operator, authenticated by API token.
#[derive(Debug, Clone)]
pub struct ApiCaller {
    pub name: String,
    pub role: Role,
}

impl ApiCaller {
    /// How audit entries name this caller.
    pub fn actor(&self) -> String {
        format!("token:{}", self.name)
    }
}

/// A node, authenticated by its client certificate.
#[derive(Debug, Clone)]
pub struct NodeCaller {
    pub name: String,
    /// The serial of the certificate this request came with.
    pub serial: String,
}

impl NodeCaller {
    pub fn actor(&self) -> String {
        format!("node:{}", self.name)
    }
}

/// A new secret in the `<8 hex id>.<64 hex secret>` form: `(id, full token)`.
pub fn new_token() -> (String, String) {
    let id: [u8; 4] = rand::random();
    let secret: [u8; 32] = rand::random();
    let id = hex::encode(id);
    let token = format!("{id}.{}", hex::encode(secret));
    (id, token)
}

/// Splits `<id>.<secret>` into its parts.
pub fn split_token(token: &str) -> Option<(&str, &str)> {
    let (id, secret) = token.trim().split_once('.')?;
    (!id.is_empty() && !secret.is_empty()).then_some((id, secret))
}

/// What the store keeps of a secret.
pub fn secret_sha256(token: &str) -> String {
    let secret = split_token(token).map_or(token, |(_, secret)| secret);
    sha256_hex(secret.as_bytes())
}

/// Compares two hashes without an early exit, so timing says nothing about where they differ.
pub fn hashes_equal(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

async fn authenticate_token(state: &AppState, parts: &Parts) -> Result<ApiCaller, ApiError> {
    let Some(value) = parts.headers.get(AUTHORIZATION) else {
        let hint = if has_peer_cert(parts) {
            " (node certificates are accepted only on /v1/agent routes)"
        } else {
            ""
        };
        return Err(ApiError::unauthorized(format!(
            "missing API token: send `Authorization: Bearer <token>`{hint}"
        )));
    };
    let token = value
        .to_str()
        .ok()
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .ok_or_else(|| {
            ApiError::unauthorized("the Authorization header must be `Bearer <token>`")
        })?;
    let (id, _) = split_token(token)
        .ok_or_else(|| ApiError::unauthorized("malformed API token: expected <id>.<secret>"))?;
    let record = state.store.get_api_token(id).await?;
    let record = match record {
        Some(record) if hashes_equal(&record.secret_sha256, &secret_sha256(token)) => record,
        _ => return Err(ApiError::unauthorized("unknown or invalid API token")),
    };
    if record.revoked {
        return Err(ApiError::unauthorized(format!(
            "API token {:?} ({}) has been revoked",
            record.name, record.id
        )));
    }
    Ok(ApiCaller {
        name: record.name,
        role: record.role,
    })
}

fn has_peer_cert(parts: &Parts) -> bool {
    parts
        .extensions
        .get::<PeerCertificate>()
        .is_some_and(|peer| peer.0.is_some())
}

/// Route middleware: an API token with at least `role`.
pub async fn require_role(
    State(state): State<AppState>,
    role: Role,
    request: Request,
    next: Next,
) -> Response {
    let (mut parts, body) = request.into_parts();
    let caller = match authenticate_token(&state, &parts).await {
        Ok(caller) => caller,
        Err(error) => return error.into_response(),
    };
    if caller.role < role {
        return ApiError::forbidden(format!(
            "this needs the {} role; API token {:?} has the {} role",
            role.as_str(),
            caller.name,
            caller.role.as_str()
        ))
        .into_response();
    }
    parts.extensions.insert(caller);
    next.run(Request::from_parts(parts, body)).await
}

async fn authenticate_node(state: &AppState, parts: &Parts) -> Result<NodeCaller, ApiError> {
    let Some(cert) = parts
        .extensions
        .get::<PeerCertificate>()
        .and_then(|peer| peer.0.clone())
    else {
        return Err(ApiError::unauthorized(
            "agent routes need the node's client certificate (API tokens are not accepted here)",
        ));
    };
    let name = &cert.common_name;
    let Some(node) = state.store.get_node(name).await? else {
        return Err(ApiError::unauthorized(format!(
            "no node named {name:?} is enrolled; enroll it with a join token"
        )));
    };
    if node.revoked {
        return Err(revoked_error(name));
    }
    let current = node.cert.serial == cert.serial;
    let previous = node.previous_cert_serial.as_deref() == Some(cert.serial.as_str());
    if !current && !previous {
        return Err(ApiError::unauthorized(format!(
            "certificate {} is no longer valid for node {name:?}: it was replaced by a newer one; \
             enroll the node again if its identity was lost",
            cert.serial
        )));
    }
    Ok(NodeCaller {
        name: node.name,
        serial: cert.serial.clone(),
    })
}

pub fn revoked_error(name: &str) -> ApiError {
    ApiError::forbidden(format!(
        "node {name:?} has been revoked; enroll it again with a new join token to bring it back"
    ))
}

/// Route middleware: a client certificate of an enrolled, unrevoked node. Also keeps the
/// node's `last_seen` fresh.
pub async fn require_node(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let (mut parts, body) = request.into_parts();
    let caller = match authenticate_node(&state, &parts).await {
        Ok(caller) => caller,
        Err(error) => return error.into_response(),
    };
    if let Err(error) = state.touch_node(&caller.name).await {
        return ApiError::from(error).into_response();
    }
    parts.extensions.insert(caller);
    next.run(Request::from_parts(parts, body)).await
}

fn missing_caller(what: &str) -> ApiError {
    ApiError::internal(format!("route served without {what} middleware"))
}

impl<S: Send + Sync> FromRequestParts<S> for ApiCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<ApiCaller>()
            .cloned()
            .ok_or_else(|| missing_caller("API token"))
    }
}

impl<S: Send + Sync> FromRequestParts<S> for NodeCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<NodeCaller>()
            .cloned()
            .ok_or_else(|| missing_caller("node certificate"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_have_the_documented_shape() {
        let (id, token) = new_token();
        assert_eq!(id.len(), 8);
        let (parsed_id, secret) = split_token(&token).unwrap();
        assert_eq!(parsed_id, id);
        assert_eq!(secret.len(), 64);
        assert_eq!(secret_sha256(&token), sha256_hex(secret.as_bytes()));
        assert_ne!(new_token().1, token);
    }

    #[test]
    fn split_and_compare() {
        assert_eq!(split_token("ab.cd"), Some(("ab", "cd")));
        assert_eq!(split_token("abcd"), None);
        assert_eq!(split_token(".cd"), None);
        assert_eq!(split_token("ab."), None);
        assert!(hashes_equal("abc", "abc"));
        assert!(!hashes_equal("abc", "abd"));
        assert!(!hashes_equal("abc", "abcd"));
    }
}
