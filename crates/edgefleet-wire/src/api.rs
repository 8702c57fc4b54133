//! Request and response bodies of the HTTP API (`/v1/...`).
//!
//! Routes (all HTTPS; operator routes take `Authorization: Bearer <api token>`, agent routes
//! take the node's client certificate):
//!
//! | method and path                          | who      | body in → out                          |
//! |------------------------------------------|----------|----------------------------------------|
//! | GET  /healthz, /readyz                   | anyone   | → `Health`                             |
//! | GET  /v1/openapi.json                    | anyone   | → OpenAPI 3.1 document                 |
//! | GET  /v1/ca                              | anyone   | → `CaInfo`                             |
//! | POST /v1/enroll                          | token    | `EnrollRequest` → `EnrollResponse`     |
//! | POST /v1/agent/renew                     | node     | `RenewRequest` → `RenewResponse`       |
//! | GET  /v1/agent/desired?known_generation=N&wait_seconds=S | node | → `DesiredState` (200) or 304 when unchanged after S |
//! | PUT  /v1/agent/status                    | node     | `ReportedState` → `Ack`                |
//! | PUT  /v1/agent/facts                     | node     | `NodeFacts` → `Ack`                    |
//! | POST /v1/agent/heartbeat                 | node     | `Heartbeat` → `Ack`                    |
//! | POST /v1/agent/events                    | node     | `node::EventBatch` → `node::EventsAck` |
//! | GET  /v1/agent/sessions?wait_seconds=S   | node     | → `session::SessionPoll` (empty after S)  |
//! | POST /v1/agent/sessions/{id}             | node     | streamed JSON lines of `session::LogFrame` → `Ack` (ended early when the operator leaves) |
//! | GET  /v1/nodes?selector=S                | viewer   | → `Vec<NodeSummary>`                   |
//! | GET  /v1/nodes/{name}                    | viewer   | → `NodeDetail`                         |
//! | PATCH /v1/nodes/{name}/labels            | operator | `LabelChange` → `NodeSummary`          |
//! | POST /v1/nodes/{name}/revoke             | admin    | → `NodeSummary`                        |
//! | GET  /v1/nodes/{name}/events?limit=N     | viewer   | → `Vec<node::StoredNodeEvent>` (newest first) |
//! | GET  /v1/nodes/{name}/workloads/{workload}/logs?follow=B&since=T&tail=N | viewer | → JSON lines of `session::LogFrame` (`application/x-ndjson`), relayed from the node's agent; 504 when it does not answer within 10 s |
//! | GET  /v1/explain/nodes/{name}?deployment=D | viewer | → `plan::Explanation`                  |
//! | GET  /v1/deployments                     | viewer   | → `Vec<DeploymentSummary>`             |
//! | GET  /v1/deployments/{name}              | viewer   | → `DeploymentDetail`                   |
//! | DELETE /v1/deployments/{name}            | operator | → `Ack`                                |
//! | POST /v1/apply                           | operator | `ApplyRequest` → `ApplyResponse`       |
//! | POST /v1/plan                            | viewer   | `plan::PlanRequest` → `plan::Plan`     |
//! | GET  /v1/deployments/{name}/rollout?nodes=B | viewer | → `rollout::RolloutStatus` (the latest) |
//! | GET  /v1/deployments/{name}/rollouts     | viewer   | → `Vec<rollout::RolloutStatus>` (newest first, no nodes) |
//! | POST /v1/deployments/{name}/rollout/{pause,resume,promote,abort} | operator | → `rollout::RolloutStatus` |
//! | POST /v1/deployments/{name}/rollout/undo | operator | `rollout::UndoRequest` → `ApplyResponse` |
//! | GET  /v1/windows                         | viewer   | → `Vec<WindowInfo>`                    |
//! | DELETE /v1/windows/{name}                | operator | → `Ack`                                |
//! | GET  /v1/tokens                          | operator | → `Vec<JoinTokenInfo>`                 |
//! | POST /v1/tokens                          | operator | `CreateJoinToken` → `CreatedJoinToken` |
//! | DELETE /v1/tokens/{id}                   | operator | → `Ack`                                |
//! | GET  /v1/api-tokens                      | admin    | → `Vec<ApiTokenInfo>`                  |
//! | POST /v1/api-tokens                      | admin    | `CreateApiToken` → `CreatedApiToken`   |
//! | DELETE /v1/api-tokens/{id}               | admin    | → `Ack`                                |
//! | GET  /v1/audit?limit=N                   | viewer   | → `Vec<AuditEntry>`                    |
//! | POST /v1/artifacts?name=NAME             | operator | raw content (header `x-edgefleet-sha256`) → `artifact::ArtifactInfo` (201 new, 200 already there) |
//! | GET  /v1/artifacts                       | viewer   | → `artifact::ArtifactList`             |
//! | DELETE /v1/artifacts/{NAME or NAME@sha256:DIGEST} | operator | → `artifact::ArtifactRemoval` (409 while referenced) |
//! | GET  /v1/agent/artifacts/{NAME@sha256:DIGEST} | node | → the content; `Range: bytes=N-` / `bytes=N-M` → 206, 416 |
//! | POST /v1/agent/telemetry                 | node     | gzip `telemetry::UploadBatch` → `telemetry::UploadAck` |
//! | GET  /v1/metrics?node=&metric=&since=&until=&group_by=&selector= | viewer | → `telemetry::MetricsResponse` |
//! | GET  /v1/lake                            | viewer   | → the data lake exporter's status |
//! | GET  /metrics                            | viewer   | → Prometheus text exposition |
//!
//! Alert rules, alerts and silences: see `crate::alert`.
//!
//! Every error is an `ErrorBody` with the matching HTTP status.

use serde::{Deserialize, Serialize};

use crate::manifest::{DeploymentManifest, MaintenanceWindowManifest, WorkloadSpec};
use crate::node::{NodeFacts, ReportedState, WorkloadState};
use crate::{Labels, Timestamp};

/// The one error body of the API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Stable machine-readable code: `bad_request`, `unauthorized`, `forbidden`, `not_found`,
    /// `conflict`, `payload_too_large`, `invalid_manifest`, `internal`, ...
    pub code: String,
    /// What went wrong, for a person.
    pub message: String,
    /// Where and what exactly, when known (field paths, limits, offending values).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    pub ok: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    pub status: String,
    pub version: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaInfo {
    pub ca_pem: String,
    pub ca_sha256: String,
}

/// Roles of API tokens, from least to most powerful.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Read everything, change nothing.
    Viewer,
    /// Change deployments, labels and join tokens.
    Operator,
    /// Everything, including API tokens and node revocation.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Viewer => "viewer",
            Self::Operator => "operator",
            Self::Admin => "admin",
        }
    }
}

// ---- enrollment and the agent channel ----

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollRequest {
    /// The join token secret from the join string.
    pub token: String,
    /// The node name the agent asks for (defaults to its hostname).
    pub name: String,
    /// Labels the node asks for; the token's labels are merged over these.
    #[serde(default)]
    pub labels: Labels,
    /// PEM certificate signing request; the private key never leaves the node.
    pub csr_pem: String,
    #[serde(default)]
    pub facts: NodeFacts,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollResponse {
    pub node: String,
    pub certificate_pem: String,
    pub ca_pem: String,
    #[serde(with = "time::serde::rfc3339")]
    pub not_after: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RenewRequest {
    pub csr_pem: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RenewResponse {
    pub certificate_pem: String,
    #[serde(with = "time::serde::rfc3339")]
    pub not_after: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub applied_generation: u64,
}

/// What one workload on a node should be: the spec, and where it came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredWorkload {
    pub deployment: String,
    /// The content hash of the deployment revision this workload comes from.
    pub revision: String,
    /// The content hash of `spec`; a change of hash means the workload must be replaced.
    pub spec_hash: String,
    pub spec: WorkloadSpec,
    /// The workload is on this revision because a rollout of a newer one was aborted and
    /// rolled back; the agent's flight recorder notes it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub rolled_back: bool,
    /// The node's labels, for rendering the workload's files; set only when the spec has
    /// files, so a relabel changes the desired state of exactly the nodes whose files
    /// depend on it.
    #[serde(default, skip_serializing_if = "Labels::is_empty")]
    pub labels: Labels,
    /// The streams of the workload's deployment: where the workload may publish records
    /// through the agent's local API. A change here does not replace the workload.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub streams: Vec<crate::manifest::StreamSpec>,
}

/// A node's desired state: the layered merge of every deployment that selects it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredState {
    pub node: String,
    /// Increases by one every time the node's desired workloads change.
    pub generation: u64,
    /// Sorted by workload name.
    pub workloads: Vec<DesiredWorkload>,
}

// ---- operator API ----

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeStatus {
    /// Heartbeats arrive.
    Ready,
    /// Heartbeats stopped arriving.
    NotReady,
    /// Never heard from since enrollment.
    Unknown,
    /// Its certificate was revoked; the server refuses it.
    Revoked,
}

impl NodeStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ready => "Ready",
            Self::NotReady => "NotReady",
            Self::Unknown => "Unknown",
            Self::Revoked => "Revoked",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSummary {
    pub name: String,
    pub status: NodeStatus,
    pub labels: Labels,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub last_seen: Option<Timestamp>,
    pub desired_generation: u64,
    pub applied_generation: u64,
    pub workloads_total: u32,
    pub workloads_running: u32,
    pub workloads_failing: u32,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub certificate_not_after: Option<Timestamp>,
    pub agent_version: String,
    #[serde(with = "time::serde::rfc3339")]
    pub enrolled_at: Timestamp,
}

/// Two deployments define a workload of the same name at the same priority.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conflict {
    pub workload: String,
    pub winner: String,
    pub losers: Vec<String>,
    pub priority: i32,
}

/// A condition of a node, as in Kubernetes: a named fact that is true or false, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Condition {
    /// `Ready`, `UpToDate`, `WorkloadsHealthy`, `CertificateValid`.
    pub kind: String,
    pub status: bool,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeDetail {
    pub summary: NodeSummary,
    pub facts: NodeFacts,
    pub desired: DesiredState,
    #[serde(default)]
    pub reported: Option<ReportedState>,
    pub conflicts: Vec<Conflict>,
    pub conditions: Vec<Condition>,
    /// The most recent audit entries about this node, newest first.
    pub recent_changes: Vec<AuditEntry>,
    /// Bytes on the node's channel by category, and its outbox's health.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub telemetry: Option<crate::telemetry::NodeTelemetry>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabelChange {
    #[serde(default)]
    pub set: Labels,
    #[serde(default)]
    pub remove: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyRequest {
    pub deployments: Vec<DeploymentManifest>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub windows: Vec<MaintenanceWindowManifest>,
    /// Apply only if the fleet and the deployments are still what this plan was computed
    /// against (`edgefleet apply --plan`); refused with the differences otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan_basis: Option<crate::plan::PlanBasis>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ApplyAction {
    Created,
    Updated,
    Unchanged,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyResult {
    pub name: String,
    pub action: ApplyAction,
    pub revision: String,
    /// How many nodes the deployment selects now.
    pub selected_nodes: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyResponse {
    pub results: Vec<ApplyResult>,
    /// Maintenance windows created, updated or left unchanged.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub windows: Vec<WindowApplyResult>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowApplyResult {
    pub name: String,
    pub action: ApplyAction,
    /// How many nodes the window selects now.
    pub selected_nodes: u32,
}

/// A maintenance window as `edgefleet get windows` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowInfo {
    pub manifest: MaintenanceWindowManifest,
    pub selected_nodes: u32,
    /// Of those, how many are inside the window now.
    pub open_nodes: u32,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentSummary {
    pub name: String,
    pub revision: String,
    /// How many revisions this deployment has had.
    pub revision_count: u32,
    pub priority: i32,
    pub selected: u32,
    /// Nodes whose applied generation includes this deployment's current revision.
    pub up_to_date: u32,
    /// Nodes on which every workload of this deployment runs.
    pub running: u32,
    /// Nodes on which a workload of this deployment is crash-looping or exited with an error.
    pub failing: u32,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevisionInfo {
    pub revision: String,
    pub number: u32,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: Timestamp,
    pub created_by: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentNodeStatus {
    pub node: String,
    pub node_status: NodeStatus,
    pub up_to_date: bool,
    /// Workloads of this deployment on this node, `name -> state` (absent: not reported yet).
    pub workloads: Vec<(String, Option<WorkloadState>)>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentDetail {
    pub summary: DeploymentSummary,
    pub manifest: DeploymentManifest,
    pub revisions: Vec<RevisionInfo>,
    pub nodes: Vec<DeploymentNodeStatus>,
    pub conflicts: Vec<Conflict>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateJoinToken {
    #[serde(default)]
    pub labels: Labels,
    /// Seconds until the token expires.
    pub ttl_seconds: u64,
    /// How many nodes may enroll with it; `None` for unlimited until it expires.
    #[serde(default)]
    pub uses: Option<u32>,
    #[serde(default)]
    pub description: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinTokenInfo {
    pub id: String,
    pub labels: Labels,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: Timestamp,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: Timestamp,
    pub uses_allowed: Option<u32>,
    pub uses: u32,
    pub revoked: bool,
    pub description: Option<String>,
    /// `active`, `expired`, `used-up` or `revoked`.
    pub state: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreatedJoinToken {
    pub info: JoinTokenInfo,
    /// The join string to hand to `edgefleet agent --join`. Shown once; only a hash is stored.
    pub join: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateApiToken {
    pub name: String,
    pub role: Role,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiTokenInfo {
    pub id: String,
    pub name: String,
    pub role: Role,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: Timestamp,
    pub revoked: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreatedApiToken {
    pub info: ApiTokenInfo,
    /// The bearer secret. Shown once; only a hash is stored.
    pub token: String,
}

/// One change, recorded by the server: who did what to which object, when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub id: i64,
    #[serde(with = "time::serde::rfc3339")]
    pub at: Timestamp,
    /// `token:<name>` for operators, `node:<name>` for agents, `server` for the server itself.
    pub actor: String,
    /// `apply`, `delete`, `label`, `enroll`, `revoke`, `token.create`, ...
    pub action: String,
    /// `deployment/<name>`, `node/<name>`, `token/<id>`, ...
    pub object: String,
    pub detail: String,
}
