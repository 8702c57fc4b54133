//! The SQLite implementation of `Store`: the embedded default.
//!
//! One connection behind a mutex, used from `spawn_blocking` so that SQLite's blocking
//! calls never stall the async runtime. WAL mode lets readers of the file (backups, a
//! `sqlite3` shell) work beside the server; `busy_timeout` absorbs their locks. The schema
//! is versioned with `PRAGMA user_version` and upgraded by the ordered `MIGRATIONS`.
//!
//! Times are stored as Unix nanoseconds (`INTEGER`), structured values (labels, facts,
//! reported and desired state) as JSON text.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use edgefleet_wire::Timestamp;
use edgefleet_wire::api::{ApplyAction, AuditEntry, LabelChange, Role};
use edgefleet_wire::node::{NodeFacts, ReportedState};
use rusqlite::{Connection, OptionalExtension, Row, Transaction, TransactionBehavior, params};
use serde::Serialize;
use serde::de::DeserializeOwned;

use edgefleet_core::rollout::Rollout;
use edgefleet_wire::node::{NodeEvent, StoredNodeEvent};

use super::{
    ApiTokenRecord, AppliedDeployment, ApplyItem, ArtifactRecord, CertRecord, CreateOutcome,
    DeploymentRecord, DesiredUpdate, EnrollOutcome, Enrollment, JoinTokenRecord, NewAudit,
    NodeRecord, Presence, RevisionRecord, RevokeApiTokenOutcome, Store, StoreError, StoreResult,
    WindowRecord, apply_audit_detail,
};

/// Schema migrations; entry `i` takes the database from `user_version` i to i + 1.
/// Append only: a released migration never changes.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE nodes (
    name TEXT PRIMARY KEY,
    labels TEXT NOT NULL,
    facts TEXT NOT NULL,
    enrolled_at INTEGER NOT NULL,
    last_seen INTEGER,
    revoked INTEGER NOT NULL DEFAULT 0,
    cert_serial TEXT NOT NULL,
    cert_not_after INTEGER NOT NULL,
    previous_cert_serial TEXT,
    applied_generation INTEGER NOT NULL DEFAULT 0,
    reported TEXT,
    desired_generation INTEGER NOT NULL DEFAULT 0,
    desired_workloads TEXT NOT NULL DEFAULT '[]',
    conflicts TEXT NOT NULL DEFAULT '[]'
) STRICT;

CREATE TABLE join_tokens (
    id TEXT PRIMARY KEY,
    secret_sha256 TEXT NOT NULL,
    labels TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    uses_allowed INTEGER,
    uses INTEGER NOT NULL DEFAULT 0,
    revoked INTEGER NOT NULL DEFAULT 0,
    description TEXT
) STRICT;

CREATE TABLE api_tokens (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    role TEXT NOT NULL,
    secret_sha256 TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    revoked INTEGER NOT NULL DEFAULT 0
) STRICT;

CREATE TABLE deployments (
    name TEXT PRIMARY KEY,
    revision TEXT NOT NULL,
    manifest TEXT NOT NULL,
    updated_at INTEGER NOT NULL
) STRICT;

CREATE TABLE revisions (
    deployment TEXT NOT NULL REFERENCES deployments(name) ON DELETE CASCADE,
    number INTEGER NOT NULL,
    revision TEXT NOT NULL,
    manifest TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    created_by TEXT NOT NULL,
    PRIMARY KEY (deployment, number)
) STRICT;

CREATE TABLE audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at INTEGER NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    object TEXT NOT NULL,
    detail TEXT NOT NULL
) STRICT;

CREATE INDEX audit_by_object ON audit (object, id);
"#,
    r#"
CREATE TABLE rollouts (
    deployment TEXT NOT NULL,
    number INTEGER NOT NULL,
    phase TEXT NOT NULL,
    state TEXT NOT NULL,
    started_at INTEGER NOT NULL,
    PRIMARY KEY (deployment, number)
) STRICT;

CREATE TABLE windows (
    name TEXT PRIMARY KEY,
    hash TEXT NOT NULL,
    manifest TEXT NOT NULL,
    updated_at INTEGER NOT NULL
) STRICT;

CREATE TABLE node_events (
    node TEXT NOT NULL,
    seq INTEGER NOT NULL,
    at INTEGER NOT NULL,
    event TEXT NOT NULL,
    received_at INTEGER NOT NULL,
    PRIMARY KEY (node, seq)
) STRICT, WITHOUT ROWID;
"#,
    artifacts::MIGRATION,
    telemetry::MIGRATION,
    alerts::MIGRATION,
    lake::MIGRATION,
    traffic::MIGRATION,
];

/// How long a statement waits for a lock held by another connection to the file.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The database file's name in the data directory.
const DATABASE_FILE: &str = "edgefleet.db";

/// Opens the store of a data directory.
pub async fn open_in(data_dir: &Path) -> StoreResult<SqliteStore> {
    SqliteStore::open(&data_dir.join(DATABASE_FILE)).await
}

pub struct SqliteStore {
    connection: Arc<Mutex<Connection>>,
    /// Presence (heartbeats, last seen) not written yet, by node: written in one
    /// transaction by `flush_presence`, and laid over what reads return.
    presence: Mutex<HashMap<String, Presence>>,
}

impl SqliteStore {
    /// Opens (creating and migrating as needed) the database at `path`.
    pub async fn open(path: &Path) -> StoreResult<Self> {
        let path = path.to_owned();
        let connection = tokio::task::spawn_blocking(move || open_blocking(&path))
            .await
            .map_err(|e| backend("opening the database", e))??;
        Ok(Self {
            connection: Arc::new(Mutex::new(connection)),
            presence: Mutex::new(HashMap::new()),
        })
    }

    fn pending_presence(&self) -> std::sync::MutexGuard<'_, HashMap<String, Presence>> {
        // Only timestamps and generations live here; a poisoned map is still valid.
        self.presence.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn with_presence(&self, mut node: NodeRecord) -> NodeRecord {
        overlay(&mut node, &self.pending_presence());
        node
    }

    /// Runs `f` on the connection on a blocking thread.
    async fn run<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> StoreResult<T> + Send + 'static,
    {
        let connection = self.connection.clone();
        tokio::task::spawn_blocking(move || {
            // A panic while the lock was held cannot leave a half-done change behind: an
            // open transaction rolls back when dropped. So a poisoned lock is still good.
            let mut guard = connection.lock().unwrap_or_else(PoisonError::into_inner);
            f(&mut guard)
        })
        .await
        .map_err(|e| backend("running a database task", e))?
    }
}

fn open_blocking(path: &Path) -> StoreResult<Connection> {
    let what = format!("opening {}", path.display());
    let mut connection = Connection::open(path).map_err(|e| backend(&what, e))?;
    connection
        .busy_timeout(BUSY_TIMEOUT)
        .map_err(|e| backend("setting busy_timeout", e))?;
    let mode: String = connection
        .query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))
        .map_err(|e| backend("enabling WAL", e))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(backend(
            "enabling WAL",
            format!("journal mode stayed {mode}"),
        ));
    }
    // FULL: an acknowledged change (an apply, an enrollment) survives power loss too.
    connection
        .pragma_update(None, "synchronous", "FULL")
        .map_err(|e| backend("setting synchronous", e))?;
    connection
        .pragma_update(None, "foreign_keys", true)
        .map_err(|e| backend("enabling foreign keys", e))?;
    migrate(&mut connection)?;
    // The database holds token hashes and node identities: owner only. SQLite creates its
    // -wal and -shm files with the permissions of the database file.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| backend(&format!("setting permissions of {}", path.display()), e))?;
    Ok(connection)
}

fn migrate(connection: &mut Connection) -> StoreResult<()> {
    let version: i64 = connection
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .map_err(|e| backend("reading the schema version", e))?;
    let known = MIGRATIONS.len() as i64;
    if version > known {
        return Err(backend(
            "checking the schema version",
            format!(
                "the database has schema version {version}, newer than this server knows ({known}); \
                 run a newer edgefleet server"
            ),
        ));
    }
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        let target = index as i64 + 1;
        let operation = format!("migrating the schema to version {target}");
        let tx = connection
            .transaction_with_behavior(TransactionBehavior::Exclusive)
            .map_err(|e| backend(&operation, e))?;
        tx.execute_batch(sql).map_err(|e| backend(&operation, e))?;
        tx.pragma_update(None, "user_version", target)
            .map_err(|e| backend(&operation, e))?;
        tx.commit().map_err(|e| backend(&operation, e))?;
    }
    Ok(())
}

// ---- conversions ----

fn backend(operation: &str, reason: impl std::fmt::Display) -> StoreError {
    StoreError::Backend {
        operation: operation.to_owned(),
        reason: reason.to_string(),
    }
}

/// `map_err` adapter: `.map_err(db("listing nodes"))`.
fn db(operation: &'static str) -> impl Fn(rusqlite::Error) -> StoreError {
    move |e| backend(operation, e)
}

fn corrupt(what: impl Into<String>, reason: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt {
        what: what.into(),
        reason: reason.to_string(),
    }
}

/// A table of named manifests kept by content hash (maintenance windows, alert rules):
/// its statements and the words its errors and audit entries use.
struct HashedTable {
    /// `SELECT hash FROM <table> WHERE name = ?1`
    select_hash: &'static str,
    /// `INSERT INTO <table> (name, hash, manifest, updated_at) ... ON CONFLICT (name) ...`
    upsert: &'static str,
    reading: &'static str,
    saving: &'static str,
    /// What the manifest is, for encoding errors: `maintenance window`.
    noun: &'static str,
    /// The audit object's prefix: `window` in `window/nights`.
    object: &'static str,
}

/// Creates or replaces one manifest of `table` unless the stored one has the same hash,
/// with an audit entry for a change; says what it did.
fn apply_hashed<M: Serialize>(
    tx: &Transaction<'_>,
    table: &HashedTable,
    (name, hash, manifest): (&str, &str, &M),
    actor: &str,
    at: Timestamp,
) -> StoreResult<ApplyAction> {
    let current: Option<String> = tx
        .query_row(table.select_hash, [name], |row| row.get(0))
        .optional()
        .map_err(db(table.reading))?;
    let action = match current {
        Some(stored) if stored == hash => return Ok(ApplyAction::Unchanged),
        Some(_) => ApplyAction::Updated,
        None => ApplyAction::Created,
    };
    let manifest = to_json(table.noun, manifest)?;
    tx.execute(table.upsert, params![name, hash, manifest, time_to_db(at)])
        .map_err(db(table.saving))?;
    let verb = if action == ApplyAction::Created {
        "created"
    } else {
        "updated"
    };
    insert_audit(
        tx,
        &NewAudit::new(
            at,
            actor,
            "apply",
            format!("{}/{name}", table.object),
            format!("{verb} ({})", edgefleet_core::hash::short(hash)),
        ),
    )?;
    Ok(action)
}

fn to_json<T: Serialize>(what: &str, value: &T) -> StoreResult<String> {
    serde_json::to_string(value).map_err(|e| backend(&format!("encoding {what}"), e))
}

fn from_json<T: DeserializeOwned>(what: &str, text: &str) -> StoreResult<T> {
    serde_json::from_str(text).map_err(|e| corrupt(what, e))
}

/// Unix nanoseconds; saturates outside the years 1678..2262, which no real clock reaches.
fn time_to_db(at: Timestamp) -> i64 {
    i64::try_from(at.unix_timestamp_nanos()).unwrap_or(if at.year() < 1970 {
        i64::MIN
    } else {
        i64::MAX
    })
}

fn time_from_db(what: &str, nanos: i64) -> StoreResult<Timestamp> {
    Timestamp::from_unix_timestamp_nanos(i128::from(nanos)).map_err(|e| corrupt(what, e))
}

fn u64_to_db(what: &str, value: u64) -> StoreResult<i64> {
    i64::try_from(value).map_err(|_| backend(&format!("storing {what}"), "value exceeds 2^63"))
}

fn u64_from_db(what: &str, value: i64) -> StoreResult<u64> {
    u64::try_from(value).map_err(|_| corrupt(what, format!("negative value {value}")))
}

fn u32_from_db(what: &str, value: i64) -> StoreResult<u32> {
    u32::try_from(value).map_err(|_| corrupt(what, format!("value {value} out of range")))
}

fn role_to_db(role: Role) -> &'static str {
    role.as_str()
}

fn role_from_db(text: &str) -> StoreResult<Role> {
    match text {
        "viewer" => Ok(Role::Viewer),
        "operator" => Ok(Role::Operator),
        "admin" => Ok(Role::Admin),
        other => Err(corrupt("API token role", format!("unknown role {other:?}"))),
    }
}

fn insert_audit(tx: &Transaction<'_>, entry: &NewAudit) -> StoreResult<()> {
    tx.execute(
        "INSERT INTO audit (at, actor, action, object, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![
            time_to_db(entry.at),
            entry.actor,
            entry.action,
            entry.object,
            entry.detail
        ],
    )
    .map_err(db("recording an audit entry"))?;
    Ok(())
}

fn write_tx(connection: &mut Connection) -> StoreResult<Transaction<'_>> {
    connection
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(db("starting a transaction"))
}

fn commit(tx: Transaction<'_>) -> StoreResult<()> {
    tx.commit().map_err(db("committing a transaction"))
}

// ---- nodes ----

const NODE_COLUMNS: &str = "name, labels, facts, enrolled_at, last_seen, revoked, cert_serial, \
    cert_not_after, previous_cert_serial, applied_generation, reported, desired_generation, \
    desired_workloads, conflicts";

/// A node row as SQLite returns it, before decoding.
struct NodeRow {
    name: String,
    labels: String,
    facts: String,
    enrolled_at: i64,
    last_seen: Option<i64>,
    revoked: bool,
    cert_serial: String,
    cert_not_after: i64,
    previous_cert_serial: Option<String>,
    applied_generation: i64,
    reported: Option<String>,
    desired_generation: i64,
    desired_workloads: String,
    conflicts: String,
}

fn node_row(row: &Row<'_>) -> rusqlite::Result<NodeRow> {
    Ok(NodeRow {
        name: row.get(0)?,
        labels: row.get(1)?,
        facts: row.get(2)?,
        enrolled_at: row.get(3)?,
        last_seen: row.get(4)?,
        revoked: row.get(5)?,
        cert_serial: row.get(6)?,
        cert_not_after: row.get(7)?,
        previous_cert_serial: row.get(8)?,
        applied_generation: row.get(9)?,
        reported: row.get(10)?,
        desired_generation: row.get(11)?,
        desired_workloads: row.get(12)?,
        conflicts: row.get(13)?,
    })
}

impl NodeRow {
    fn decode(self) -> StoreResult<NodeRecord> {
        let what = |column: &str| format!("{column} of node {}", self.name);
        Ok(NodeRecord {
            labels: from_json(&what("labels"), &self.labels)?,
            facts: from_json(&what("facts"), &self.facts)?,
            enrolled_at: time_from_db(&what("enrolled_at"), self.enrolled_at)?,
            last_seen: self
                .last_seen
                .map(|t| time_from_db(&what("last_seen"), t))
                .transpose()?,
            revoked: self.revoked,
            cert: CertRecord {
                serial: self.cert_serial.clone(),
                not_after: time_from_db(&what("cert_not_after"), self.cert_not_after)?,
            },
            previous_cert_serial: self.previous_cert_serial.clone(),
            applied_generation: u64_from_db(&what("applied_generation"), self.applied_generation)?,
            reported: self
                .reported
                .as_deref()
                .map(|r| from_json::<ReportedState>(&what("reported state"), r))
                .transpose()?,
            desired_generation: u64_from_db(&what("desired_generation"), self.desired_generation)?,
            desired_workloads: from_json(&what("desired workloads"), &self.desired_workloads)?,
            conflicts: from_json(&what("conflicts"), &self.conflicts)?,
            name: self.name,
        })
    }
}

fn read_node(connection: &Connection, name: &str) -> StoreResult<Option<NodeRecord>> {
    connection
        .query_row(
            &format!("SELECT {NODE_COLUMNS} FROM nodes WHERE name = ?1"),
            [name],
            node_row,
        )
        .optional()
        .map_err(db("reading a node"))?
        .map(NodeRow::decode)
        .transpose()
}

fn enroll(connection: &mut Connection, enrollment: Enrollment) -> StoreResult<EnrollOutcome> {
    let tx = write_tx(connection)?;
    let consumed = tx
        .execute(
            "UPDATE join_tokens SET uses = uses + 1 WHERE id = ?1 AND revoked = 0 AND expires_at > ?2 \
             AND (uses_allowed IS NULL OR uses < uses_allowed)",
            params![enrollment.token_id, time_to_db(enrollment.now)],
        )
        .map_err(db("consuming a join token"))?;
    if consumed == 0 {
        return Ok(EnrollOutcome::TokenUnusable);
    }
    let existing: Option<bool> = tx
        .query_row(
            "SELECT revoked FROM nodes WHERE name = ?1",
            [&enrollment.name],
            |row| row.get(0),
        )
        .optional()
        .map_err(db("looking up a node"))?;
    let labels = to_json("labels", &enrollment.labels)?;
    let facts = to_json("facts", &enrollment.facts)?;
    match existing {
        Some(false) => return Ok(EnrollOutcome::NameTaken),
        Some(true) => {
            // Re-enrolling a revoked name: a new identity, but the desired-state generation
            // carries on so an agent never sees a generation it already knows.
            tx.execute(
                "UPDATE nodes SET labels = ?2, facts = ?3, enrolled_at = ?4, last_seen = NULL, \
                 revoked = 0, cert_serial = ?5, cert_not_after = ?6, previous_cert_serial = NULL, \
                 applied_generation = 0, reported = NULL WHERE name = ?1",
                params![
                    enrollment.name,
                    labels,
                    facts,
                    time_to_db(enrollment.now),
                    enrollment.cert.serial,
                    time_to_db(enrollment.cert.not_after)
                ],
            )
            .map_err(db("re-enrolling a node"))?;
        }
        None => {
            tx.execute(
                "INSERT INTO nodes (name, labels, facts, enrolled_at, cert_serial, cert_not_after) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    enrollment.name,
                    labels,
                    facts,
                    time_to_db(enrollment.now),
                    enrollment.cert.serial,
                    time_to_db(enrollment.cert.not_after)
                ],
            )
            .map_err(db("creating a node"))?;
        }
    }
    insert_audit(&tx, &enrollment.audit)?;
    let record = read_node(&tx, &enrollment.name)?.ok_or_else(|| {
        backend(
            "enrolling a node",
            "the node vanished inside its transaction",
        )
    })?;
    commit(tx)?;
    Ok(EnrollOutcome::Enrolled(Box::new(record)))
}

fn change_labels(
    connection: &mut Connection,
    name: &str,
    change: &LabelChange,
    audit: &NewAudit,
) -> StoreResult<Option<NodeRecord>> {
    let tx = write_tx(connection)?;
    let Some(mut node) = read_node(&tx, name)? else {
        return Ok(None);
    };
    edgefleet_core::labels::apply_change(&mut node.labels, change);
    tx.execute(
        "UPDATE nodes SET labels = ?2 WHERE name = ?1",
        params![name, to_json("labels", &node.labels)?],
    )
    .map_err(db("changing node labels"))?;
    insert_audit(&tx, audit)?;
    commit(tx)?;
    Ok(Some(node))
}

/// Runs one `UPDATE nodes ... WHERE name = ?1` outside a transaction.
fn write_presence(connection: &mut Connection, updates: &[Presence]) -> StoreResult<()> {
    let tx = write_tx(connection)?;
    {
        let mut seen = tx
            .prepare_cached(
                "UPDATE nodes SET last_seen = MAX(COALESCE(last_seen, 0), ?2) WHERE name = ?1",
            )
            .map_err(db("recording presence"))?;
        let mut heartbeat = tx
            .prepare_cached(
                // MAX: generations never go backwards, so an older heartbeat written
                // late cannot undo a newer report.
                "UPDATE nodes SET last_seen = MAX(COALESCE(last_seen, 0), ?2), \
                 applied_generation = MAX(applied_generation, ?3) WHERE name = ?1",
            )
            .map_err(db("recording a heartbeat"))?;
        let mut report = tx
            .prepare_cached(
                "UPDATE nodes SET last_seen = MAX(COALESCE(last_seen, 0), ?2), \
                 applied_generation = ?3, reported = ?4 WHERE name = ?1",
            )
            .map_err(db("storing reported state"))?;
        for update in updates {
            let at = time_to_db(update.last_seen);
            if let Some(reported) = &update.reported {
                let generation = u64_to_db("applied generation", reported.applied_generation)?;
                let json = to_json("reported state", reported)?;
                report
                    .execute(params![update.node, at, generation, json])
                    .map_err(db("storing reported state"))?;
                continue;
            }
            match update.applied_generation {
                Some(generation) => {
                    let generation = u64_to_db("applied generation", generation)?;
                    heartbeat
                        .execute(params![update.node, at, generation])
                        .map_err(db("recording a heartbeat"))?;
                }
                None => {
                    seen.execute(params![update.node, at])
                        .map_err(db("recording presence"))?;
                }
            }
        }
    }
    commit(tx)
}

/// Applies presence not written yet to a record read from the database.
fn overlay(node: &mut NodeRecord, pending: &HashMap<String, Presence>) {
    if let Some(presence) = pending.get(&node.name) {
        node.last_seen = Some(
            node.last_seen
                .map_or(presence.last_seen, |seen| seen.max(presence.last_seen)),
        );
        if let Some(generation) = presence.applied_generation {
            node.applied_generation = generation;
        }
        if let Some(reported) = &presence.reported {
            node.reported = Some(reported.as_ref().clone());
        }
    }
}

fn update_node(
    connection: &Connection,
    operation: &'static str,
    sql: &str,
    params: &[&dyn rusqlite::ToSql],
) -> StoreResult<()> {
    connection.execute(sql, params).map_err(db(operation))?;
    Ok(())
}

// ---- tokens ----

const JOIN_TOKEN_COLUMNS: &str =
    "id, secret_sha256, labels, created_at, expires_at, uses_allowed, uses, revoked, description";

struct JoinTokenRow {
    id: String,
    secret_sha256: String,
    labels: String,
    created_at: i64,
    expires_at: i64,
    uses_allowed: Option<i64>,
    uses: i64,
    revoked: bool,
    description: Option<String>,
}

fn join_token_row(row: &Row<'_>) -> rusqlite::Result<JoinTokenRow> {
    Ok(JoinTokenRow {
        id: row.get(0)?,
        secret_sha256: row.get(1)?,
        labels: row.get(2)?,
        created_at: row.get(3)?,
        expires_at: row.get(4)?,
        uses_allowed: row.get(5)?,
        uses: row.get(6)?,
        revoked: row.get(7)?,
        description: row.get(8)?,
    })
}

impl JoinTokenRow {
    fn decode(self) -> StoreResult<JoinTokenRecord> {
        let what = |column: &str| format!("{column} of join token {}", self.id);
        Ok(JoinTokenRecord {
            labels: from_json(&what("labels"), &self.labels)?,
            created_at: time_from_db(&what("created_at"), self.created_at)?,
            expires_at: time_from_db(&what("expires_at"), self.expires_at)?,
            uses_allowed: self
                .uses_allowed
                .map(|u| u32_from_db(&what("uses_allowed"), u))
                .transpose()?,
            uses: u32_from_db(&what("uses"), self.uses)?,
            revoked: self.revoked,
            description: self.description,
            secret_sha256: self.secret_sha256,
            id: self.id,
        })
    }
}

const API_TOKEN_COLUMNS: &str = "id, name, role, secret_sha256, created_at, revoked";

struct ApiTokenRow {
    id: String,
    name: String,
    role: String,
    secret_sha256: String,
    created_at: i64,
    revoked: bool,
}

fn api_token_row(row: &Row<'_>) -> rusqlite::Result<ApiTokenRow> {
    Ok(ApiTokenRow {
        id: row.get(0)?,
        name: row.get(1)?,
        role: row.get(2)?,
        secret_sha256: row.get(3)?,
        created_at: row.get(4)?,
        revoked: row.get(5)?,
    })
}

impl ApiTokenRow {
    fn decode(self) -> StoreResult<ApiTokenRecord> {
        Ok(ApiTokenRecord {
            role: role_from_db(&self.role)?,
            created_at: time_from_db(
                &format!("created_at of API token {}", self.id),
                self.created_at,
            )?,
            revoked: self.revoked,
            secret_sha256: self.secret_sha256,
            name: self.name,
            id: self.id,
        })
    }
}

fn read_api_token(connection: &Connection, id: &str) -> StoreResult<Option<ApiTokenRecord>> {
    connection
        .query_row(
            &format!("SELECT {API_TOKEN_COLUMNS} FROM api_tokens WHERE id = ?1"),
            [id],
            api_token_row,
        )
        .optional()
        .map_err(db("reading an API token"))?
        .map(ApiTokenRow::decode)
        .transpose()
}

fn create_api_token(
    connection: &mut Connection,
    token: &ApiTokenRecord,
    audit: &NewAudit,
) -> StoreResult<CreateOutcome> {
    let tx = write_tx(connection)?;
    let id_taken: bool = tx
        .query_row(
            "SELECT EXISTS (SELECT 1 FROM api_tokens WHERE id = ?1)",
            [&token.id],
            |r| r.get(0),
        )
        .map_err(db("checking an API token id"))?;
    if id_taken {
        return Ok(CreateOutcome::IdTaken);
    }
    let name_taken: bool = tx
        .query_row(
            "SELECT EXISTS (SELECT 1 FROM api_tokens WHERE name = ?1 AND revoked = 0)",
            [&token.name],
            |r| r.get(0),
        )
        .map_err(db("checking an API token name"))?;
    if name_taken {
        return Ok(CreateOutcome::NameTaken);
    }
    tx.execute(
        "INSERT INTO api_tokens (id, name, role, secret_sha256, created_at, revoked) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            token.id,
            token.name,
            role_to_db(token.role),
            token.secret_sha256,
            time_to_db(token.created_at),
            token.revoked
        ],
    )
    .map_err(db("creating an API token"))?;
    insert_audit(&tx, audit)?;
    commit(tx)?;
    Ok(CreateOutcome::Created)
}

fn revoke_api_token(
    connection: &mut Connection,
    id: &str,
    audit: &NewAudit,
) -> StoreResult<RevokeApiTokenOutcome> {
    let tx = write_tx(connection)?;
    let Some(token) = read_api_token(&tx, id)? else {
        return Ok(RevokeApiTokenOutcome::NotFound);
    };
    if token.revoked {
        return Ok(RevokeApiTokenOutcome::Revoked);
    }
    if token.role == Role::Admin {
        let other_admins: i64 = tx
            .query_row(
                "SELECT COUNT(*) FROM api_tokens WHERE role = 'admin' AND revoked = 0 AND id != ?1",
                [id],
                |r| r.get(0),
            )
            .map_err(db("counting admin tokens"))?;
        if other_admins == 0 {
            return Ok(RevokeApiTokenOutcome::LastAdmin);
        }
    }
    tx.execute("UPDATE api_tokens SET revoked = 1 WHERE id = ?1", [id])
        .map_err(db("revoking an API token"))?;
    insert_audit(&tx, audit)?;
    commit(tx)?;
    Ok(RevokeApiTokenOutcome::Revoked)
}

// ---- deployments ----

struct DeploymentRow {
    name: String,
    revision: String,
    manifest: String,
    updated_at: i64,
    revision_count: i64,
}

const DEPLOYMENT_SELECT: &str = "SELECT d.name, d.revision, d.manifest, d.updated_at, \
    (SELECT COUNT(*) FROM revisions r WHERE r.deployment = d.name) FROM deployments d";

fn deployment_row(row: &Row<'_>) -> rusqlite::Result<DeploymentRow> {
    Ok(DeploymentRow {
        name: row.get(0)?,
        revision: row.get(1)?,
        manifest: row.get(2)?,
        updated_at: row.get(3)?,
        revision_count: row.get(4)?,
    })
}

impl DeploymentRow {
    fn decode(self) -> StoreResult<DeploymentRecord> {
        let what = |column: &str| format!("{column} of deployment {}", self.name);
        Ok(DeploymentRecord {
            manifest: from_json(&what("manifest"), &self.manifest)?,
            updated_at: time_from_db(&what("updated_at"), self.updated_at)?,
            revision_count: u32_from_db(&what("revision count"), self.revision_count)?,
            revision: self.revision,
            name: self.name,
        })
    }
}

fn apply(
    connection: &mut Connection,
    items: &[ApplyItem],
    actor: &str,
    at: Timestamp,
) -> StoreResult<Vec<AppliedDeployment>> {
    let tx = write_tx(connection)?;
    let mut results = Vec::with_capacity(items.len());
    for item in items {
        let name = &item.manifest.metadata.name;
        let current: Option<(String, i64)> = tx
            .query_row(
                "SELECT revision, (SELECT COALESCE(MAX(number), 0) FROM revisions WHERE deployment = ?1) \
                 FROM deployments WHERE name = ?1",
                [name],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .optional()
            .map_err(db("reading a deployment"))?;
        let manifest = to_json("manifest", &item.manifest)?;
        let (action, number) = match current {
            Some((revision, _)) if revision == item.revision => (ApplyAction::Unchanged, 0),
            Some((_, last_number)) => {
                tx.execute(
                    "UPDATE deployments SET revision = ?2, manifest = ?3, updated_at = ?4 WHERE name = ?1",
                    params![name, item.revision, manifest, time_to_db(at)],
                )
                .map_err(db("updating a deployment"))?;
                (ApplyAction::Updated, last_number + 1)
            }
            None => {
                tx.execute(
                    "INSERT INTO deployments (name, revision, manifest, updated_at) VALUES (?1, ?2, ?3, ?4)",
                    params![name, item.revision, manifest, time_to_db(at)],
                )
                .map_err(db("creating a deployment"))?;
                (ApplyAction::Created, 1)
            }
        };
        if action != ApplyAction::Unchanged {
            tx.execute(
                "INSERT INTO revisions (deployment, number, revision, manifest, created_at, created_by) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![name, number, item.revision, manifest, time_to_db(at), actor],
            )
            .map_err(db("recording a revision"))?;
            let number = u32::try_from(number).unwrap_or(u32::MAX);
            insert_audit(
                &tx,
                &NewAudit::new(
                    at,
                    actor,
                    "apply",
                    format!("deployment/{name}"),
                    apply_audit_detail(action, number, &item.revision),
                ),
            )?;
        }
        results.push(AppliedDeployment {
            name: name.clone(),
            action,
            revision: item.revision.clone(),
        });
    }
    commit(tx)?;
    Ok(results)
}

fn delete_deployment(
    connection: &mut Connection,
    name: &str,
    audit: &NewAudit,
) -> StoreResult<bool> {
    let tx = write_tx(connection)?;
    tx.execute("DELETE FROM revisions WHERE deployment = ?1", [name])
        .map_err(db("deleting revisions"))?;
    tx.execute("DELETE FROM rollouts WHERE deployment = ?1", [name])
        .map_err(db("deleting rollouts"))?;
    let deleted = tx
        .execute("DELETE FROM deployments WHERE name = ?1", [name])
        .map_err(db("deleting a deployment"))?;
    if deleted == 0 {
        return Ok(false);
    }
    insert_audit(&tx, audit)?;
    commit(tx)?;
    Ok(true)
}

fn list_audit(
    connection: &Connection,
    limit: u32,
    object: Option<&str>,
) -> StoreResult<Vec<AuditEntry>> {
    type Raw = (i64, i64, String, String, String, String);
    let map = |row: &Row<'_>| -> rusqlite::Result<Raw> {
        Ok((
            row.get(0)?,
            row.get(1)?,
            row.get(2)?,
            row.get(3)?,
            row.get(4)?,
            row.get(5)?,
        ))
    };
    let raw: Vec<Raw> = match object {
        Some(object) => {
            let mut statement = connection
                .prepare_cached(
                    "SELECT id, at, actor, action, object, detail FROM audit WHERE object = ?1 \
                     ORDER BY id DESC LIMIT ?2",
                )
                .map_err(db("listing audit entries"))?;
            statement
                .query_map(params![object, limit], map)
                .and_then(Iterator::collect)
                .map_err(db("listing audit entries"))?
        }
        None => {
            let mut statement = connection
                .prepare_cached(
                    "SELECT id, at, actor, action, object, detail FROM audit ORDER BY id DESC LIMIT ?1",
                )
                .map_err(db("listing audit entries"))?;
            statement
                .query_map(params![limit], map)
                .and_then(Iterator::collect)
                .map_err(db("listing audit entries"))?
        }
    };
    raw.into_iter()
        .map(|(id, at, actor, action, object, detail)| {
            Ok(AuditEntry {
                id,
                at: time_from_db(&format!("time of audit entry {id}"), at)?,
                actor,
                action,
                object,
                detail,
            })
        })
        .collect()
}

/// Runs a query returning many rows and decodes each.
fn query_all<R, T>(
    connection: &Connection,
    operation: &'static str,
    sql: &str,
    params: &[&dyn rusqlite::ToSql],
    map: fn(&Row<'_>) -> rusqlite::Result<R>,
    decode: fn(R) -> StoreResult<T>,
) -> StoreResult<Vec<T>> {
    let mut statement = connection.prepare_cached(sql).map_err(db(operation))?;
    let rows: Vec<R> = statement
        .query_map(params, map)
        .and_then(Iterator::collect)
        .map_err(db(operation))?;
    rows.into_iter().map(decode).collect()
}

#[async_trait]
impl Store for SqliteStore {
    async fn ping(&self) -> StoreResult<()> {
        self.run(|c| {
            c.query_row("SELECT COUNT(*) FROM nodes", [], |r| r.get::<_, i64>(0))
                .map_err(db("checking the database"))?;
            Ok(())
        })
        .await
    }

    async fn get_node(&self, name: &str) -> StoreResult<Option<NodeRecord>> {
        let name = name.to_owned();
        let node = self.run(move |c| read_node(c, &name)).await?;
        Ok(node.map(|n| self.with_presence(n)))
    }

    async fn list_nodes(&self) -> StoreResult<Vec<NodeRecord>> {
        let mut nodes = self
            .run(|c| {
                query_all(
                    c,
                    "listing nodes",
                    &format!("SELECT {NODE_COLUMNS} FROM nodes ORDER BY name"),
                    &[],
                    node_row,
                    NodeRow::decode,
                )
            })
            .await?;
        let pending = self.pending_presence();
        for node in &mut nodes {
            overlay(node, &pending);
        }
        Ok(nodes)
    }

    async fn enroll_node(&self, enrollment: Enrollment) -> StoreResult<EnrollOutcome> {
        self.run(move |c| enroll(c, enrollment)).await
    }

    async fn renew_node_cert(
        &self,
        name: &str,
        cert: CertRecord,
        presented_serial: &str,
        audit: NewAudit,
    ) -> StoreResult<bool> {
        let (name, presented_serial) = (name.to_owned(), presented_serial.to_owned());
        self.run(move |c| {
            let tx = write_tx(c)?;
            let changed = tx
                .execute(
                    "UPDATE nodes SET cert_serial = ?2, cert_not_after = ?3, previous_cert_serial = ?4 \
                     WHERE name = ?1 AND revoked = 0",
                    params![name, cert.serial, time_to_db(cert.not_after), presented_serial],
                )
                .map_err(db("renewing a node certificate"))?;
            if changed == 0 {
                return Ok(false);
            }
            insert_audit(&tx, &audit)?;
            commit(tx)?;
            Ok(true)
        })
        .await
    }

    async fn revoke_node(&self, name: &str, audit: NewAudit) -> StoreResult<Option<NodeRecord>> {
        self.pending_presence().remove(name);
        let name = name.to_owned();
        self.run(move |c| {
            let tx = write_tx(c)?;
            let changed = tx
                .execute("UPDATE nodes SET revoked = 1 WHERE name = ?1", [&name])
                .map_err(db("revoking a node"))?;
            if changed == 0 {
                return Ok(None);
            }
            insert_audit(&tx, &audit)?;
            let node = read_node(&tx, &name)?;
            commit(tx)?;
            Ok(node)
        })
        .await
    }

    async fn change_node_labels(
        &self,
        name: &str,
        change: LabelChange,
        audit: NewAudit,
    ) -> StoreResult<Option<NodeRecord>> {
        let name = name.to_owned();
        self.run(move |c| change_labels(c, &name, &change, &audit))
            .await
    }

    async fn record_presence(&self, update: Presence) -> StoreResult<()> {
        let mut pending = self.pending_presence();
        match pending.get_mut(&update.node) {
            Some(known) => {
                known.last_seen = known.last_seen.max(update.last_seen);
                if update.applied_generation.is_some() {
                    known.applied_generation = update.applied_generation;
                }
                if update.reported.is_some() {
                    known.reported = update.reported;
                }
            }
            None => {
                pending.insert(update.node.clone(), update);
            }
        }
        Ok(())
    }

    async fn flush_presence(&self) -> StoreResult<()> {
        let batch: Vec<Presence> = self.pending_presence().values().cloned().collect();
        if batch.is_empty() {
            return Ok(());
        }
        let written = batch.clone();
        self.run(move |c| write_presence(c, &batch)).await?;
        // Drop what was written unless newer news arrived meanwhile.
        let mut pending = self.pending_presence();
        for presence in written {
            if pending.get(&presence.node) == Some(&presence) {
                pending.remove(&presence.node);
            }
        }
        Ok(())
    }

    async fn set_node_reported(
        &self,
        name: &str,
        reported: ReportedState,
        at: Timestamp,
    ) -> StoreResult<()> {
        self.record_presence(Presence {
            node: name.to_owned(),
            last_seen: at,
            applied_generation: Some(reported.applied_generation),
            reported: Some(Box::new(reported)),
        })
        .await
    }

    async fn set_node_facts(&self, name: &str, facts: NodeFacts, at: Timestamp) -> StoreResult<()> {
        let name = name.to_owned();
        let json = to_json("facts", &facts)?;
        self.run(move |c| {
            update_node(
                c,
                "storing facts",
                "UPDATE nodes SET last_seen = ?2, facts = ?3 WHERE name = ?1",
                &[&name, &time_to_db(at), &json],
            )
        })
        .await
    }

    async fn set_desired_states(&self, updates: Vec<DesiredUpdate>) -> StoreResult<()> {
        if updates.is_empty() {
            return Ok(());
        }
        self.run(move |c| {
            let tx = write_tx(c)?;
            for update in &updates {
                tx.execute(
                    "UPDATE nodes SET desired_generation = ?2, desired_workloads = ?3, conflicts = ?4 \
                     WHERE name = ?1",
                    params![
                        update.node,
                        u64_to_db("desired generation", update.generation)?,
                        to_json("desired workloads", &update.workloads)?,
                        to_json("conflicts", &update.conflicts)?
                    ],
                )
                .map_err(db("storing desired state"))?;
            }
            commit(tx)
        })
        .await
    }

    async fn create_join_token(
        &self,
        token: JoinTokenRecord,
        audit: NewAudit,
    ) -> StoreResult<CreateOutcome> {
        self.run(move |c| {
            let tx = write_tx(c)?;
            let taken: bool = tx
                .query_row("SELECT EXISTS (SELECT 1 FROM join_tokens WHERE id = ?1)", [&token.id], |r| {
                    r.get(0)
                })
                .map_err(db("checking a join token id"))?;
            if taken {
                return Ok(CreateOutcome::IdTaken);
            }
            tx.execute(
                &format!("INSERT INTO join_tokens ({JOIN_TOKEN_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"),
                params![
                    token.id,
                    token.secret_sha256,
                    to_json("labels", &token.labels)?,
                    time_to_db(token.created_at),
                    time_to_db(token.expires_at),
                    token.uses_allowed,
                    token.uses,
                    token.revoked,
                    token.description
                ],
            )
            .map_err(db("creating a join token"))?;
            insert_audit(&tx, &audit)?;
            commit(tx)?;
            Ok(CreateOutcome::Created)
        })
        .await
    }

    async fn get_join_token(&self, id: &str) -> StoreResult<Option<JoinTokenRecord>> {
        let id = id.to_owned();
        self.run(move |c| {
            c.query_row(
                &format!("SELECT {JOIN_TOKEN_COLUMNS} FROM join_tokens WHERE id = ?1"),
                [&id],
                join_token_row,
            )
            .optional()
            .map_err(db("reading a join token"))?
            .map(JoinTokenRow::decode)
            .transpose()
        })
        .await
    }

    async fn list_join_tokens(&self) -> StoreResult<Vec<JoinTokenRecord>> {
        self.run(|c| {
            query_all(
                c,
                "listing join tokens",
                &format!(
                    "SELECT {JOIN_TOKEN_COLUMNS} FROM join_tokens ORDER BY created_at DESC, id"
                ),
                &[],
                join_token_row,
                JoinTokenRow::decode,
            )
        })
        .await
    }

    async fn revoke_join_token(&self, id: &str, audit: NewAudit) -> StoreResult<bool> {
        let id = id.to_owned();
        self.run(move |c| {
            let tx = write_tx(c)?;
            let changed = tx
                .execute("UPDATE join_tokens SET revoked = 1 WHERE id = ?1", [&id])
                .map_err(db("revoking a join token"))?;
            if changed == 0 {
                return Ok(false);
            }
            insert_audit(&tx, &audit)?;
            commit(tx)?;
            Ok(true)
        })
        .await
    }

    async fn create_api_token(
        &self,
        token: ApiTokenRecord,
        audit: NewAudit,
    ) -> StoreResult<CreateOutcome> {
        self.run(move |c| create_api_token(c, &token, &audit)).await
    }

    async fn get_api_token(&self, id: &str) -> StoreResult<Option<ApiTokenRecord>> {
        let id = id.to_owned();
        self.run(move |c| read_api_token(c, &id)).await
    }

    async fn list_api_tokens(&self) -> StoreResult<Vec<ApiTokenRecord>> {
        self.run(|c| {
            query_all(
                c,
                "listing API tokens",
                &format!("SELECT {API_TOKEN_COLUMNS} FROM api_tokens ORDER BY created_at, id"),
                &[],
                api_token_row,
                ApiTokenRow::decode,
            )
        })
        .await
    }

    async fn revoke_api_token(
        &self,
        id: &str,
        audit: NewAudit,
    ) -> StoreResult<RevokeApiTokenOutcome> {
        let id = id.to_owned();
        self.run(move |c| revoke_api_token(c, &id, &audit)).await
    }

    async fn list_deployments(&self) -> StoreResult<Vec<DeploymentRecord>> {
        self.run(|c| {
            query_all(
                c,
                "listing deployments",
                &format!("{DEPLOYMENT_SELECT} ORDER BY d.name"),
                &[],
                deployment_row,
                DeploymentRow::decode,
            )
        })
        .await
    }

    async fn get_deployment(&self, name: &str) -> StoreResult<Option<DeploymentRecord>> {
        let name = name.to_owned();
        self.run(move |c| {
            c.query_row(
                &format!("{DEPLOYMENT_SELECT} WHERE d.name = ?1"),
                [&name],
                deployment_row,
            )
            .optional()
            .map_err(db("reading a deployment"))?
            .map(DeploymentRow::decode)
            .transpose()
        })
        .await
    }

    async fn list_revisions(&self, deployment: &str) -> StoreResult<Vec<RevisionRecord>> {
        let deployment = deployment.to_owned();
        self.run(move |c| {
            type Raw = (i64, String, String, i64, String);
            let rows: Vec<Raw> = {
                let mut statement = c
                    .prepare_cached(
                        "SELECT number, revision, manifest, created_at, created_by FROM revisions \
                         WHERE deployment = ?1 ORDER BY number DESC",
                    )
                    .map_err(db("listing revisions"))?;
                statement
                    .query_map([&deployment], |row| {
                        Ok((
                            row.get(0)?,
                            row.get(1)?,
                            row.get(2)?,
                            row.get(3)?,
                            row.get(4)?,
                        ))
                    })
                    .and_then(Iterator::collect)
                    .map_err(db("listing revisions"))?
            };
            rows.into_iter()
                .map(|(number, revision, manifest, created_at, created_by)| {
                    let what = format!("revision {number} of deployment {deployment}");
                    Ok(RevisionRecord {
                        number: u32_from_db(&what, number)?,
                        manifest: from_json(&what, &manifest)?,
                        created_at: time_from_db(&what, created_at)?,
                        revision,
                        created_by,
                    })
                })
                .collect()
        })
        .await
    }

    async fn apply_deployments(
        &self,
        items: Vec<ApplyItem>,
        actor: &str,
        at: Timestamp,
    ) -> StoreResult<Vec<AppliedDeployment>> {
        let actor = actor.to_owned();
        self.run(move |c| apply(c, &items, &actor, at)).await
    }

    async fn delete_deployment(&self, name: &str, audit: NewAudit) -> StoreResult<bool> {
        let name = name.to_owned();
        self.run(move |c| delete_deployment(c, &name, &audit)).await
    }

    async fn save_rollouts(&self, rollouts: Vec<Rollout>) -> StoreResult<()> {
        self.run(move |c| rollouts::save_rollouts(c, &rollouts))
            .await
    }

    async fn latest_rollouts(&self) -> StoreResult<Vec<Rollout>> {
        self.run(rollouts::latest_rollouts).await
    }

    async fn list_rollouts(&self, deployment: &str, limit: u32) -> StoreResult<Vec<Rollout>> {
        let deployment = deployment.to_owned();
        self.run(move |c| rollouts::list_rollouts(c, &deployment, limit))
            .await
    }

    async fn apply_windows(
        &self,
        items: Vec<WindowRecord>,
        actor: &str,
        at: Timestamp,
    ) -> StoreResult<Vec<(String, ApplyAction)>> {
        let actor = actor.to_owned();
        self.run(move |c| rollouts::apply_windows(c, &items, &actor, at))
            .await
    }

    async fn list_windows(&self) -> StoreResult<Vec<WindowRecord>> {
        self.run(|c| rollouts::list_windows(c)).await
    }

    async fn delete_window(&self, name: &str, audit: NewAudit) -> StoreResult<bool> {
        let name = name.to_owned();
        self.run(move |c| rollouts::delete_window(c, &name, &audit))
            .await
    }

    async fn insert_node_events(
        &self,
        node: &str,
        events: Vec<NodeEvent>,
        received_at: Timestamp,
    ) -> StoreResult<u64> {
        let node = node.to_owned();
        self.run(move |c| events::insert_node_events(c, &node, &events, received_at))
            .await
    }

    async fn list_node_events(&self, node: &str, limit: u32) -> StoreResult<Vec<StoredNodeEvent>> {
        let node = node.to_owned();
        self.run(move |c| events::list_node_events(c, &node, limit))
            .await
    }

    async fn add_artifact(
        &self,
        record: ArtifactRecord,
        audit: NewAudit,
    ) -> StoreResult<(ArtifactRecord, bool)> {
        self.run(move |c| artifacts::add_artifact(c, &record, &audit))
            .await
    }

    async fn list_artifacts(&self) -> StoreResult<Vec<ArtifactRecord>> {
        self.run(artifacts::list_artifacts).await
    }

    async fn get_artifact(&self, name: &str, digest: &str) -> StoreResult<Option<ArtifactRecord>> {
        let (name, digest) = (name.to_owned(), digest.to_owned());
        self.run(move |c| artifacts::get_artifact(c, &name, &digest))
            .await
    }

    async fn delete_artifacts(
        &self,
        name: &str,
        digest: Option<&str>,
        audit: NewAudit,
    ) -> StoreResult<Vec<ArtifactRecord>> {
        let (name, digest) = (name.to_owned(), digest.map(str::to_owned));
        self.run(move |c| artifacts::delete_artifacts(c, &name, digest.as_deref(), &audit))
            .await
    }

    async fn artifact_digest_exists(&self, digest: &str) -> StoreResult<bool> {
        let digest = digest.to_owned();
        self.run(move |c| artifacts::artifact_digest_exists(c, &digest))
            .await
    }

    async fn record_audit(&self, entry: NewAudit) -> StoreResult<()> {
        self.run(move |c| {
            let tx = write_tx(c)?;
            insert_audit(&tx, &entry)?;
            commit(tx)
        })
        .await
    }

    async fn list_audit(&self, limit: u32, object: Option<&str>) -> StoreResult<Vec<AuditEntry>> {
        let object = object.map(str::to_owned);
        self.run(move |c| list_audit(c, limit, object.as_deref()))
            .await
    }
}

mod alerts;
mod artifacts;
mod events;
mod lake;
mod rollouts;
mod telemetry;
#[cfg(test)]
mod tests;
mod traffic;
