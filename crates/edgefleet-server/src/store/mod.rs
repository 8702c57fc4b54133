//! The server's persistent state behind one async trait, `Store`.
//!
//! Handlers and the controller see only this trait and its plain record types; which
//! database sits behind it is known only to the implementation module (`sqlite` today,
//! PostgreSQL later) and to `open`, which picks it. Every multi-step change (apply,
//! enroll, renew, label change, revocation) is one call, so an implementation can run it
//! in one transaction together with its audit entry.
//!
//! Implementations never read the clock: times are arguments.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use edgefleet_core::rollout::Rollout;
use edgefleet_wire::api::{ApplyAction, AuditEntry, Conflict, DesiredWorkload, LabelChange, Role};
use edgefleet_wire::manifest::{DeploymentManifest, MaintenanceWindowManifest};
use edgefleet_wire::node::{NodeEvent, NodeFacts, ReportedState, StoredNodeEvent};
use edgefleet_wire::{Labels, Timestamp};

mod alerts;
mod lake;
mod sqlite;
mod telemetry;
mod traffic;

pub use alerts::{
    AlertFilter, AlertRuleRecord, AlertStore, DeliveryOutcome, NewNotification, Pruned,
    QueuedNotification,
};
pub use lake::LakeStore;
pub use telemetry::{
    BucketQuery, ExpireStep, GroupSeries, IngestBatch, IngestOutcome, MetricRow, NodeDropCount,
    NodeSeriesAnswer, RollupStep, TelemetryStore,
};
pub use traffic::{FleetCounts, NodeLiveness, TRAFFIC_CATEGORIES, TrafficDelta, TrafficStore};

/// Opens the default (embedded) store kept in the data directory.
pub async fn open(data_dir: &Path) -> Result<Arc<dyn Store>, StoreError> {
    Ok(Arc::new(sqlite::open_in(data_dir).await?))
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database failed; the message names the operation.
    #[error("{operation}: {reason}")]
    Backend { operation: String, reason: String },
    /// A stored value could not be decoded.
    #[error("stored {what} is corrupt: {reason}")]
    Corrupt { what: String, reason: String },
}

pub type StoreResult<T> = Result<T, StoreError>;

/// One enrolled node.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeRecord {
    pub name: String,
    pub labels: Labels,
    pub facts: NodeFacts,
    pub enrolled_at: Timestamp,
    pub last_seen: Option<Timestamp>,
    pub revoked: bool,
    pub cert: CertRecord,
    /// The serial of the certificate the node held before its last renewal; still accepted
    /// so that a node that missed the renewal response is not locked out.
    pub previous_cert_serial: Option<String>,
    /// The generation the node last said it applied (heartbeat or status report).
    pub applied_generation: u64,
    pub reported: Option<ReportedState>,
    pub desired_generation: u64,
    pub desired_workloads: Vec<DesiredWorkload>,
    pub conflicts: Vec<Conflict>,
}

/// The node certificate the server issued last.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertRecord {
    pub serial: String,
    pub not_after: Timestamp,
}

/// What an enrollment writes, all at once.
#[derive(Debug, Clone)]
pub struct Enrollment {
    pub name: String,
    pub labels: Labels,
    pub facts: NodeFacts,
    pub cert: CertRecord,
    pub token_id: String,
    pub now: Timestamp,
    pub audit: NewAudit,
}

#[derive(Debug, Clone, PartialEq)]
pub enum EnrollOutcome {
    Enrolled(Box<NodeRecord>),
    /// A node of that name is enrolled and not revoked.
    NameTaken,
    /// The join token was revoked, expired or used up since the caller checked it.
    TokenUnusable,
}

/// That a node was heard from, buffered by the server and written in batches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Presence {
    pub node: String,
    pub last_seen: Timestamp,
    /// From a heartbeat or a status report; other requests only prove the node is alive.
    pub applied_generation: Option<u64>,
    /// From a status report (which the agent sends again with every heartbeat, so it
    /// needs no durability of its own).
    pub reported: Option<Box<ReportedState>>,
}

/// A newly computed desired state for one node, written by the controller.
#[derive(Debug, Clone, PartialEq)]
pub struct DesiredUpdate {
    pub node: String,
    pub generation: u64,
    pub workloads: Vec<DesiredWorkload>,
    pub conflicts: Vec<Conflict>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinTokenRecord {
    pub id: String,
    pub secret_sha256: String,
    pub labels: Labels,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
    pub uses_allowed: Option<u32>,
    pub uses: u32,
    pub revoked: bool,
    pub description: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiTokenRecord {
    pub id: String,
    pub name: String,
    pub role: Role,
    pub secret_sha256: String,
    pub created_at: Timestamp,
    pub revoked: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CreateOutcome {
    Created,
    /// The generated id exists already; the caller picks another.
    IdTaken,
    /// An active object of that name exists.
    NameTaken,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevokeApiTokenOutcome {
    Revoked,
    NotFound,
    /// Revoking it would leave no active admin token, locking everyone out.
    LastAdmin,
}

/// A deployment at its current revision.
#[derive(Debug, Clone, PartialEq)]
pub struct DeploymentRecord {
    pub name: String,
    pub revision: String,
    pub revision_count: u32,
    pub manifest: DeploymentManifest,
    pub updated_at: Timestamp,
}

/// One immutable revision of a deployment.
#[derive(Debug, Clone, PartialEq)]
pub struct RevisionRecord {
    pub number: u32,
    pub revision: String,
    pub manifest: DeploymentManifest,
    pub created_at: Timestamp,
    pub created_by: String,
}

/// One deployment of an apply request, with its revision hash computed by the caller.
#[derive(Debug, Clone)]
pub struct ApplyItem {
    pub manifest: DeploymentManifest,
    pub revision: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedDeployment {
    pub name: String,
    pub action: ApplyAction,
    pub revision: String,
}

/// A maintenance window with the content hash of its manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowRecord {
    pub manifest: MaintenanceWindowManifest,
    pub hash: String,
    pub updated_at: Timestamp,
}

/// One stored artifact version (its content is a file the server keeps by digest).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArtifactRecord {
    pub name: String,
    /// SHA-256 of the content, 64 lowercase hex digits.
    pub digest: String,
    pub size: u64,
    pub created_at: Timestamp,
    pub created_by: String,
}

/// How many flight-recorder events the server keeps per node; older ones are dropped.
pub const EVENTS_KEPT_PER_NODE: u64 = 10_000;

/// An audit entry to record; the store assigns the id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAudit {
    pub at: Timestamp,
    pub actor: String,
    pub action: String,
    pub object: String,
    pub detail: String,
}

impl NewAudit {
    pub fn new(
        at: Timestamp,
        actor: impl Into<String>,
        action: impl Into<String>,
        object: impl Into<String>,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            at,
            actor: actor.into(),
            action: action.into(),
            object: object.into(),
            detail: detail.into(),
        }
    }
}

/// The audit detail of an applied deployment; shared by implementations so every store
/// words it the same way.
pub fn apply_audit_detail(action: ApplyAction, number: u32, revision: &str) -> String {
    let verb = match action {
        ApplyAction::Created => "created",
        ApplyAction::Updated => "updated",
        ApplyAction::Unchanged => "unchanged",
    };
    format!(
        "{verb}: revision {number} ({})",
        edgefleet_core::hash::short(revision)
    )
}

#[async_trait]
pub trait Store: TelemetryStore + AlertStore + LakeStore + TrafficStore + Send + Sync {
    /// Answers a trivial query; readiness checks use it.
    async fn ping(&self) -> StoreResult<()>;

    // ---- nodes ----
    async fn get_node(&self, name: &str) -> StoreResult<Option<NodeRecord>>;
    /// Every node, sorted by name.
    async fn list_nodes(&self) -> StoreResult<Vec<NodeRecord>>;
    /// Consumes one use of the join token and creates the node (or re-creates a revoked
    /// one, keeping its desired-state generation so generations never go backwards).
    async fn enroll_node(&self, enrollment: Enrollment) -> StoreResult<EnrollOutcome>;
    /// Makes `cert` the node's current certificate and `presented_serial` (the one the
    /// renewal request came with) its previous one. False when the node does not exist.
    async fn renew_node_cert(
        &self,
        name: &str,
        cert: CertRecord,
        presented_serial: &str,
        audit: NewAudit,
    ) -> StoreResult<bool>;
    async fn revoke_node(&self, name: &str, audit: NewAudit) -> StoreResult<Option<NodeRecord>>;
    async fn change_node_labels(
        &self,
        name: &str,
        change: LabelChange,
        audit: NewAudit,
    ) -> StoreResult<Option<NodeRecord>>;
    /// Notes presence (last seen, and the applied generation a heartbeat carried). It may
    /// be buffered in memory until `flush_presence`: ten thousand nodes heartbeating must
    /// not be ten thousand transactions. Reads (`get_node`, `list_nodes`) see it at once;
    /// a crash loses at most what was not flushed, which only ages `last_seen`.
    async fn record_presence(&self, update: Presence) -> StoreResult<()>;
    /// Writes buffered presence, in one transaction. Unknown nodes are skipped.
    async fn flush_presence(&self) -> StoreResult<()>;
    /// Stores a status report; buffered like presence (see `record_presence`).
    async fn set_node_reported(
        &self,
        name: &str,
        reported: ReportedState,
        at: Timestamp,
    ) -> StoreResult<()>;
    async fn set_node_facts(&self, name: &str, facts: NodeFacts, at: Timestamp) -> StoreResult<()>;
    /// Writes the controller's results; only the desired-state columns change.
    async fn set_desired_states(&self, updates: Vec<DesiredUpdate>) -> StoreResult<()>;

    // ---- join tokens ----
    async fn create_join_token(
        &self,
        token: JoinTokenRecord,
        audit: NewAudit,
    ) -> StoreResult<CreateOutcome>;
    async fn get_join_token(&self, id: &str) -> StoreResult<Option<JoinTokenRecord>>;
    /// Newest first.
    async fn list_join_tokens(&self) -> StoreResult<Vec<JoinTokenRecord>>;
    async fn revoke_join_token(&self, id: &str, audit: NewAudit) -> StoreResult<bool>;

    // ---- API tokens ----
    async fn create_api_token(
        &self,
        token: ApiTokenRecord,
        audit: NewAudit,
    ) -> StoreResult<CreateOutcome>;
    async fn get_api_token(&self, id: &str) -> StoreResult<Option<ApiTokenRecord>>;
    /// Oldest first.
    async fn list_api_tokens(&self) -> StoreResult<Vec<ApiTokenRecord>>;
    async fn revoke_api_token(
        &self,
        id: &str,
        audit: NewAudit,
    ) -> StoreResult<RevokeApiTokenOutcome>;

    // ---- deployments ----
    /// Sorted by name.
    async fn list_deployments(&self) -> StoreResult<Vec<DeploymentRecord>>;
    async fn get_deployment(&self, name: &str) -> StoreResult<Option<DeploymentRecord>>;
    /// Newest first.
    async fn list_revisions(&self, deployment: &str) -> StoreResult<Vec<RevisionRecord>>;
    /// Creates or updates every deployment whose revision hash differs from its current
    /// one (a new immutable revision each), with one audit entry per changed deployment,
    /// all in one transaction. Results are in request order.
    async fn apply_deployments(
        &self,
        items: Vec<ApplyItem>,
        actor: &str,
        at: Timestamp,
    ) -> StoreResult<Vec<AppliedDeployment>>;
    /// Deletes a deployment, its revisions and its rollouts. False when it does not exist.
    async fn delete_deployment(&self, name: &str, audit: NewAudit) -> StoreResult<bool>;

    // ---- rollouts ----
    /// Inserts or replaces each rollout (keyed by deployment and number), in one
    /// transaction.
    async fn save_rollouts(&self, rollouts: Vec<Rollout>) -> StoreResult<()>;
    /// The newest rollout of every deployment.
    async fn latest_rollouts(&self) -> StoreResult<Vec<Rollout>>;
    /// The rollouts of one deployment, newest first.
    async fn list_rollouts(&self, deployment: &str, limit: u32) -> StoreResult<Vec<Rollout>>;

    // ---- maintenance windows ----
    /// Creates or replaces every window whose hash differs, with an audit entry each, in one
    /// transaction. Results are in request order.
    async fn apply_windows(
        &self,
        items: Vec<WindowRecord>,
        actor: &str,
        at: Timestamp,
    ) -> StoreResult<Vec<(String, ApplyAction)>>;
    /// Sorted by name.
    async fn list_windows(&self) -> StoreResult<Vec<WindowRecord>>;
    async fn delete_window(&self, name: &str, audit: NewAudit) -> StoreResult<bool>;

    // ---- flight-recorder events ----
    /// Stores the events not stored yet (by `seq`) and drops the node's oldest beyond
    /// `EVENTS_KEPT_PER_NODE`. Returns the highest seq stored for the node.
    async fn insert_node_events(
        &self,
        node: &str,
        events: Vec<NodeEvent>,
        received_at: Timestamp,
    ) -> StoreResult<u64>;
    /// Newest first.
    async fn list_node_events(&self, node: &str, limit: u32) -> StoreResult<Vec<StoredNodeEvent>>;

    // ---- artifacts ----
    /// Records an artifact version whose content is already in place, with its audit
    /// entry. An existing (name, digest) is left as it was: returns it and `false`.
    async fn add_artifact(
        &self,
        record: ArtifactRecord,
        audit: NewAudit,
    ) -> StoreResult<(ArtifactRecord, bool)>;
    /// Sorted by name, then oldest first.
    async fn list_artifacts(&self) -> StoreResult<Vec<ArtifactRecord>>;
    async fn get_artifact(&self, name: &str, digest: &str) -> StoreResult<Option<ArtifactRecord>>;
    /// Deletes every version of `name`, or only `digest`, with one audit entry; returns
    /// what was deleted (nothing, and no audit entry, when nothing matched).
    async fn delete_artifacts(
        &self,
        name: &str,
        digest: Option<&str>,
        audit: NewAudit,
    ) -> StoreResult<Vec<ArtifactRecord>>;
    /// Whether any artifact version (of any name) has this content.
    async fn artifact_digest_exists(&self, digest: &str) -> StoreResult<bool>;

    // ---- audit ----
    async fn record_audit(&self, entry: NewAudit) -> StoreResult<()>;
    /// Newest first; only entries about `object` when given.
    async fn list_audit(&self, limit: u32, object: Option<&str>) -> StoreResult<Vec<AuditEntry>>;
}

#[cfg(test)]
pub mod fixtures {
    //! Plain records for unit tests of the code that reads them.

    use edgefleet_wire::manifest::{DeploymentManifest, DeploymentSpec};
    use edgefleet_wire::{Labels, Timestamp};

    use super::{CertRecord, DeploymentRecord, NodeRecord};

    /// An enrolled node with `labels` that has never been heard from nor given work.
    pub fn node(name: &str, labels: Labels, at: Timestamp) -> NodeRecord {
        NodeRecord {
            name: name.into(),
            labels,
            facts: Default::default(),
            enrolled_at: at,
            last_seen: None,
            revoked: false,
            cert: CertRecord {
                serial: "01".into(),
                not_after: at,
            },
            previous_cert_serial: None,
            applied_generation: 0,
            reported: None,
            desired_generation: 0,
            desired_workloads: vec![],
            conflicts: vec![],
        }
    }

    /// A deployment at its first revision.
    pub fn deployment(name: &str, spec: DeploymentSpec, at: Timestamp) -> DeploymentRecord {
        DeploymentRecord {
            name: name.into(),
            revision: edgefleet_core::hash::revision_hash(&spec),
            revision_count: 1,
            manifest: DeploymentManifest::new(name, spec),
            updated_at: at,
        }
    }
}
