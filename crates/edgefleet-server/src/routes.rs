//! The route table: every route the server serves, once, with its method, path, summary,
//! required access and body types. The router and the OpenAPI document are both built
//! from it, and access is enforced from it (`Access` → auth middleware), so the served
//! API, its documentation and its permissions cannot drift apart.

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::Method;
use axum::middleware::{self, Next};
use axum::routing::{MethodFilter, MethodRouter, on};
use edgefleet_wire::api::Role;

use crate::auth;
use crate::error::ApiError;
use crate::handlers::{
    agent, alerts, artifacts, deployments, meta, nodes, plan, rollouts, sessions, telemetry,
    tokens, windows,
};
use crate::state::AppState;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpMethod {
    Get,
    Post,
    Put,
    Patch,
    Delete,
}

impl HttpMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Get => "get",
            Self::Post => "post",
            Self::Put => "put",
            Self::Patch => "patch",
            Self::Delete => "delete",
        }
    }

    #[cfg(test)]
    pub fn method(self) -> Method {
        match self {
            Self::Get => Method::GET,
            Self::Post => Method::POST,
            Self::Put => Method::PUT,
            Self::Patch => Method::PATCH,
            Self::Delete => Method::DELETE,
        }
    }

    fn filter(self) -> MethodFilter {
        match self {
            Self::Get => MethodFilter::GET,
            Self::Post => MethodFilter::POST,
            Self::Put => MethodFilter::PUT,
            Self::Patch => MethodFilter::PATCH,
            Self::Delete => MethodFilter::DELETE,
        }
    }
}

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone who can reach the server.
    Public,
    /// A join token in the request body (enrollment).
    JoinToken,
    /// An enrolled node, by client certificate.
    Node,
    /// An API token with at least this role.
    Token(Role),
}

impl Access {
    pub fn describe(self) -> &'static str {
        match self {
            Self::Public => "anyone",
            Self::JoinToken => "join token",
            Self::Node => "node certificate",
            Self::Token(Role::Viewer) => "viewer",
            Self::Token(Role::Operator) => "operator",
            Self::Token(Role::Admin) => "admin",
        }
    }
}

pub struct RouteSpec {
    pub method: HttpMethod,
    /// axum path syntax, which is also OpenAPI's: `/v1/nodes/{name}`.
    pub path: &'static str,
    pub summary: &'static str,
    pub access: Access,
    /// The `edgefleet_wire` type of the request body, if any.
    pub request: Option<&'static str>,
    /// The `edgefleet_wire` type of the success response body.
    pub response: &'static str,
    /// Query parameters the route understands.
    pub query: &'static [&'static str],
    handler: fn(MethodFilter) -> MethodRouter<AppState>,
}

pub(crate) fn route(
    method: HttpMethod,
    path: &'static str,
    summary: &'static str,
    access: Access,
    request: Option<&'static str>,
    response: &'static str,
    handler: fn(MethodFilter) -> MethodRouter<AppState>,
) -> RouteSpec {
    RouteSpec {
        method,
        path,
        summary,
        access,
        request,
        response,
        query: &[],
        handler,
    }
}

impl RouteSpec {
    pub(crate) fn with_query(mut self, query: &'static [&'static str]) -> Self {
        self.query = query;
        self
    }
}

/// Every route, in the order of the route table in `edgefleet_wire::api`.
pub fn table() -> Vec<RouteSpec> {
    use Access::{JoinToken, Node, Public, Token};
    use HttpMethod::{Delete, Get, Patch, Post, Put};
    use Role::{Admin, Operator, Viewer};
    let mut routes = vec![
        route(Get, "/healthz", "Liveness: the process serves requests", Public, None, "Health", |m| {
            on(m, meta::healthz)
        }),
        route(Get, "/readyz", "Readiness: the store answers", Public, None, "Health", |m| {
            on(m, meta::readyz)
        }),
        route(
            Get,
            "/metrics",
            "The server's metrics in the Prometheus text format 0.0.4",
            Token(Viewer),
            None,
            "text",
            |m| on(m, crate::metrics::scrape),
        ),
        route(Get, "/v1/openapi.json", "This API as an OpenAPI 3.1 document", Public, None, "OpenApi", |m| {
            on(m, meta::openapi)
        }),
        route(Get, "/v1/ca", "The CA certificate and its SHA-256 fingerprint", Public, None, "CaInfo", |m| {
            on(m, meta::ca)
        }),
        route(
            Post,
            "/v1/enroll",
            "Enroll a node with a join token; signs its CSR",
            JoinToken,
            Some("EnrollRequest"),
            "EnrollResponse",
            |m| on(m, agent::enroll),
        ),
        route(
            Post,
            "/v1/agent/renew",
            "Renew the calling node's certificate",
            Node,
            Some("RenewRequest"),
            "RenewResponse",
            |m| on(m, agent::renew),
        ),
        route(
            Get,
            "/v1/agent/desired",
            "The calling node's desired state; long-polls with known_generation and wait_seconds, 304 when unchanged",
            Node,
            None,
            "DesiredState",
            |m| on(m, agent::desired),
        )
        .with_query(&["known_generation", "wait_seconds"]),
        route(Put, "/v1/agent/status", "Report the calling node's workloads", Node, Some("ReportedState"), "Ack", |m| {
            on(m, agent::status)
        }),
        route(Put, "/v1/agent/facts", "Report the calling node's inventory", Node, Some("NodeFacts"), "Ack", |m| {
            on(m, agent::facts)
        }),
        route(Post, "/v1/agent/heartbeat", "Tell the server the node is alive", Node, Some("Heartbeat"), "Ack", |m| {
            on(m, agent::heartbeat)
        }),
        route(
            Post,
            "/v1/agent/events",
            "Deliver flight-recorder events of the calling node (stored once per seq)",
            Node,
            Some("EventBatch"),
            "EventsAck",
            |m| on(m, agent::events),
        ),
        route(
            Get,
            "/v1/agent/sessions",
            "Sessions operators opened for the calling node (logs); long-polls with wait_seconds",
            Node,
            None,
            "SessionPoll",
            |m| on(m, sessions::poll),
        )
        .with_query(&["wait_seconds"]),
        route(
            Post,
            "/v1/agent/sessions/{id}",
            "Answer a session: a streamed body of JSON lines, relayed to its operator as it arrives",
            Node,
            Some("LogFrame"),
            "Ack",
            |m| on(m, sessions::upload),
        ),
        route(
            Get,
            "/v1/nodes",
            "List nodes, optionally filtered by ?selector=",
            Token(Viewer),
            None,
            "NodeSummary[]",
            |m| on(m, nodes::list),
        )
        .with_query(&["selector"]),
        route(Get, "/v1/nodes/{name}", "One node in detail", Token(Viewer), None, "NodeDetail", |m| {
            on(m, nodes::detail)
        }),
        route(
            Patch,
            "/v1/nodes/{name}/labels",
            "Set and remove labels of a node",
            Token(Operator),
            Some("LabelChange"),
            "NodeSummary",
            |m| on(m, nodes::change_labels),
        ),
        route(
            Post,
            "/v1/nodes/{name}/revoke",
            "Revoke a node: the server refuses it from now on",
            Token(Admin),
            None,
            "NodeSummary",
            |m| on(m, nodes::revoke),
        ),
        route(
            Get,
            "/v1/nodes/{name}/events",
            "A node's flight-recorder events, newest first",
            Token(Viewer),
            None,
            "StoredNodeEvent[]",
            |m| on(m, nodes::events),
        )
        .with_query(&["limit"]),
        route(
            Get,
            "/v1/nodes/{name}/workloads/{workload}/logs",
            "A workload's output from its node, as JSON lines (application/x-ndjson); 504 when the node does not answer",
            Token(Viewer),
            None,
            "LogFrame",
            |m| on(m, sessions::logs),
        )
        .with_query(&["follow", "since", "tail"]),
        route(
            Get,
            "/v1/explain/nodes/{name}",
            "Why the node runs what it runs, per deployment",
            Token(Viewer),
            None,
            "Explanation",
            |m| on(m, plan::explain_node),
        )
        .with_query(&["deployment"]),
        route(
            Get,
            "/v1/deployments",
            "List deployments with roll-out counts",
            Token(Viewer),
            None,
            "DeploymentSummary[]",
            |m| on(m, deployments::list),
        ),
        route(
            Get,
            "/v1/deployments/{name}",
            "One deployment in detail",
            Token(Viewer),
            None,
            "DeploymentDetail",
            |m| on(m, deployments::detail),
        ),
        route(Delete, "/v1/deployments/{name}", "Delete a deployment", Token(Operator), None, "Ack", |m| {
            on(m, deployments::delete)
        }),
        route(
            Post,
            "/v1/apply",
            "Create or update deployments and maintenance windows",
            Token(Operator),
            Some("ApplyRequest"),
            "ApplyResponse",
            |m| on(m, deployments::apply),
        ),
        route(
            Post,
            "/v1/plan",
            "What applying these documents would do, without changing anything",
            Token(Viewer),
            Some("PlanRequest"),
            "Plan",
            |m| on(m, plan::plan),
        ),
        route(
            Get,
            "/v1/deployments/{name}/rollout",
            "The newest rollout of a deployment",
            Token(Viewer),
            None,
            "RolloutStatus",
            |m| on(m, rollouts::status),
        )
        .with_query(&["nodes"]),
        route(
            Get,
            "/v1/deployments/{name}/rollouts",
            "Every rollout of a deployment, newest first",
            Token(Viewer),
            None,
            "RolloutStatus[]",
            |m| on(m, rollouts::history),
        ),
        route(
            Post,
            "/v1/deployments/{name}/rollout/pause",
            "Pause the rollout: no more nodes are updated",
            Token(Operator),
            None,
            "RolloutStatus",
            |m| on(m, rollouts::pause),
        ),
        route(
            Post,
            "/v1/deployments/{name}/rollout/resume",
            "Resume a paused rollout",
            Token(Operator),
            None,
            "RolloutStatus",
            |m| on(m, rollouts::resume),
        ),
        route(
            Post,
            "/v1/deployments/{name}/rollout/promote",
            "Promote a canary waiting for promotion, or end a bake early",
            Token(Operator),
            None,
            "RolloutStatus",
            |m| on(m, rollouts::promote),
        ),
        route(
            Post,
            "/v1/deployments/{name}/rollout/abort",
            "Abort the rollout and roll updated nodes back",
            Token(Operator),
            None,
            "RolloutStatus",
            |m| on(m, rollouts::abort),
        ),
        route(
            Post,
            "/v1/deployments/{name}/rollout/undo",
            "Apply an earlier revision again (the previous one by default)",
            Token(Operator),
            Some("UndoRequest"),
            "ApplyResponse",
            |m| on(m, rollouts::undo),
        ),
        route(Get, "/v1/windows", "List maintenance windows", Token(Viewer), None, "WindowInfo[]", |m| {
            on(m, windows::list)
        }),
        route(Delete, "/v1/windows/{name}", "Delete a maintenance window", Token(Operator), None, "Ack", |m| {
            on(m, windows::delete)
        }),
        route(Get, "/v1/tokens", "List join tokens", Token(Operator), None, "JoinTokenInfo[]", |m| {
            on(m, tokens::list_join_tokens)
        }),
        route(
            Post,
            "/v1/tokens",
            "Create a join token",
            Token(Operator),
            Some("CreateJoinToken"),
            "CreatedJoinToken",
            |m| on(m, tokens::create_join_token),
        ),
        route(Delete, "/v1/tokens/{id}", "Revoke a join token", Token(Operator), None, "Ack", |m| {
            on(m, tokens::revoke_join_token)
        }),
        route(Get, "/v1/api-tokens", "List API tokens", Token(Admin), None, "ApiTokenInfo[]", |m| {
            on(m, tokens::list_api_tokens)
        }),
        route(
            Post,
            "/v1/api-tokens",
            "Create an API token",
            Token(Admin),
            Some("CreateApiToken"),
            "CreatedApiToken",
            |m| on(m, tokens::create_api_token),
        ),
        route(Delete, "/v1/api-tokens/{id}", "Revoke an API token", Token(Admin), None, "Ack", |m| {
            on(m, tokens::revoke_api_token)
        }),
        route(
            Get,
            "/v1/audit",
            "The audit log, newest first (?limit=, default 100, at most 1000)",
            Token(Viewer),
            None,
            "AuditEntry[]",
            |m| on(m, tokens::audit),
        )
        .with_query(&["limit"]),
        route(
            Post,
            "/v1/artifacts",
            "Store an artifact version: the raw body, hashed with SHA-256 (?name=; header x-edgefleet-sha256 to check it)",
            Token(Operator),
            Some("bytes"),
            "ArtifactInfo",
            |m| on(m, artifacts::push),
        )
        .with_query(&["name"]),
        route(
            Get,
            "/v1/artifacts",
            "List artifact versions and the deployments that use them",
            Token(Viewer),
            None,
            "ArtifactList",
            |m| on(m, artifacts::list),
        ),
        route(
            Delete,
            "/v1/artifacts/{name}",
            "Delete every version of an artifact (NAME) or one (NAME@sha256:DIGEST); refused while a deployment uses it",
            Token(Operator),
            None,
            "ArtifactRemoval",
            |m| on(m, artifacts::delete),
        ),
        route(
            Get,
            "/v1/agent/artifacts/{name}",
            "Download an artifact (NAME@sha256:DIGEST); single byte ranges",
            Node,
            None,
            "bytes",
            |m| on(m, artifacts::download),
        ),
    ];
    routes.extend(telemetry::routes());
    routes.extend(alerts::routes());
    routes.extend(crate::lake::routes());
    routes
}

/// The application: every route of the table behind its access check, JSON 404/405, and
/// the body size limit.
pub fn router(state: AppState) -> Router {
    let mut router = Router::new();
    for spec in table() {
        let mut method_router = (spec.handler)(spec.method.filter());
        if spec.access == Access::Node {
            let path = spec.path;
            method_router = method_router.route_layer(middleware::from_fn_with_state(
                state.clone(),
                move |state: State<AppState>, request: Request, next: Next| {
                    crate::metrics::meter_node_traffic(state, path, request, next)
                },
            ));
        }
        match spec.access {
            Access::Public | Access::JoinToken => {}
            Access::Node => {
                method_router = method_router.route_layer(middleware::from_fn_with_state(
                    state.clone(),
                    auth::require_node,
                ));
            }
            Access::Token(role) => {
                method_router = method_router.route_layer(middleware::from_fn_with_state(
                    state.clone(),
                    move |state: State<AppState>, request: Request, next: Next| {
                        auth::require_role(state, role, request, next)
                    },
                ));
            }
        }
        let label = crate::metrics::RouteLabel::new(spec.method.as_str(), spec.path);
        method_router = method_router.route_layer(middleware::from_fn_with_state(
            state.clone(),
            move |state: State<AppState>, request: Request, next: Next| {
                crate::metrics::observe_route(state, label, request, next)
            },
        ));
        router = router.route(spec.path, method_router);
    }
    router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        // Limits body extractors only: artifact uploads read the raw `Body` and are held to
        // --max-artifact-size instead.
        .layer(DefaultBodyLimit::max(state.max_body_bytes))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            crate::metrics::observe_unmatched,
        ))
        .with_state(state)
}

async fn not_found(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(format!(
        "no route for {method} {}; see /v1/openapi.json",
        uri.path()
    ))
}

async fn method_not_allowed(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!(
            "{} does not accept {method}; see /v1/openapi.json",
            uri.path()
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::{Body, to_bytes};
    use edgefleet_wire::api::ErrorBody;
    use tower::ServiceExt;

    async fn call(app: &Router, method: Method, path: &str) -> (axum::http::StatusCode, Vec<u8>) {
        let request = axum::http::Request::builder()
            .method(method)
            .uri(path)
            .body(Body::empty())
            .unwrap();
        let response = app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        (
            status,
            to_bytes(response.into_body(), 1 << 20)
                .await
                .unwrap()
                .to_vec(),
        )
    }

    fn concrete(path: &str) -> String {
        path.replace("{name}", "x")
            .replace("{id}", "x")
            .replace("{workload}", "x")
    }

    #[tokio::test]
    async fn every_route_in_the_table_is_served_and_documented() {
        let (_dir, state, _stopping) = crate::state::testing::state().await;
        let app = router(state);
        let (status, body) = call(&app, Method::GET, "/v1/openapi.json").await;
        assert_eq!(status, 200);
        let document: serde_json::Value = serde_json::from_slice(&body).unwrap();
        for spec in table() {
            let path = concrete(spec.path);
            let (status, body) = call(&app, spec.method.method(), &path).await;
            let what = format!("{} {path}", spec.method.as_str());
            assert_ne!(status, 405, "{what}");
            if status == 404 {
                let error: ErrorBody = serde_json::from_slice(&body).unwrap();
                assert!(
                    !error.message.starts_with("no route"),
                    "{what} is not routed"
                );
            }
            match spec.access {
                Access::Node | Access::Token(_) => {
                    assert_eq!(status, 401, "{what} needs authentication")
                }
                Access::JoinToken => assert_eq!(status, 415, "{what} wants a JSON body"),
                Access::Public => assert_eq!(status, 200, "{what}"),
            }
            assert!(
                document["paths"][spec.path][spec.method.as_str()].is_object(),
                "{what} missing from the OpenAPI document"
            );
        }
        let documented: usize = document["paths"]
            .as_object()
            .unwrap()
            .values()
            .map(|ops| ops.as_object().unwrap().len())
            .sum();
        assert_eq!(documented, table().len());
    }

    #[tokio::test]
    async fn unknown_routes_and_methods_get_json_errors() {
        let (_dir, state, _stopping) = crate::state::testing::state().await;
        let app = router(state);
        let (status, body) = call(&app, Method::GET, "/v1/nope").await;
        assert_eq!(status, 404);
        let error: ErrorBody = serde_json::from_slice(&body).unwrap();
        assert_eq!(error.code, "not_found");
        assert_eq!(
            error.message,
            "no route for GET /v1/nope; see /v1/openapi.json"
        );
        let (status, body) = call(&app, Method::DELETE, "/v1/nodes").await;
        assert_eq!(status, 405);
        let error: ErrorBody = serde_json::from_slice(&body).unwrap();
        assert_eq!(error.code, "method_not_allowed");
    }
}
