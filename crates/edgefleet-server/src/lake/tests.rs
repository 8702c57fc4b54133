//! The exporter against a real SQLite store (rows inserted with SQL, as the telemetry store
//! writes them), local directories and a real S3-compatible server (moto, `tests/moto.rs`).

mod moto;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use edgefleet_wire::Timestamp;
use edgefleet_wire::manifest::Selector;
use parquet::record::{Field, Row};
use rusqlite::{Connection, params};
use time::macros::datetime;

use super::config::{LakeConfig, S3Target, SinkConfig, SinkTarget};
use super::exporter::{Exporter, Pacing, SinkRuntime};
use super::rows::{LakeCommit, LakeCursor, LakeRows, LakeSource, PlannedBatch, SinkBacklog};
use super::{Lake, LakeArgs};
use crate::store::{LakeStore, StoreError, StoreResult};

/// The telemetry store's tables, as its migration creates them, for as long as this tree
/// has none (created only when absent, so the real ones win).
const TELEMETRY_TABLES: &str = "
CREATE TABLE IF NOT EXISTS stream_records (id INTEGER PRIMARY KEY AUTOINCREMENT, node TEXT,
  stream TEXT, sink TEXT, deployment TEXT, seq INTEGER, time INTEGER, received_at INTEGER,
  kind TEXT, data BLOB);
CREATE TABLE IF NOT EXISTS metric_samples (id INTEGER PRIMARY KEY AUTOINCREMENT, node TEXT,
  name TEXT, labels TEXT, time INTEGER, value REAL);
";

/// A SQLite store in a temporary directory and a second connection to insert rows.
pub struct Db {
    pub dir: tempfile::TempDir,
    pub store: Arc<dyn LakeStore>,
    pub sql: Connection,
}

impl Db {
    pub async fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::open(dir.path()).await.unwrap();
        let sql = Connection::open(dir.path().join("edgefleet.db")).unwrap();
        sql.busy_timeout(Duration::from_secs(5)).unwrap();
        sql.execute_batch(TELEMETRY_TABLES).unwrap();
        Self { dir, store, sql }
    }

    pub fn node(&self, name: &str, labels: &[(&str, &str)]) {
        let labels: BTreeMap<&str, &str> = labels.iter().copied().collect();
        self.sql
            .execute(
                "INSERT INTO nodes (name, labels, facts, enrolled_at, cert_serial, cert_not_after) \
                 VALUES (?1, ?2, '{}', 0, '01', 0)",
                params![name, serde_json::to_string(&labels).unwrap()],
            )
            .unwrap();
    }

    pub fn set_labels(&self, name: &str, labels: &[(&str, &str)]) {
        let labels: BTreeMap<&str, &str> = labels.iter().copied().collect();
        self.sql
            .execute(
                "UPDATE nodes SET labels = ?2 WHERE name = ?1",
                params![name, serde_json::to_string(&labels).unwrap()],
            )
            .unwrap();
    }

    /// Inserts a JSON record; returns its id.
    pub fn record(&self, node: &str, stream: &str, sink: &str, seq: u64, time: Timestamp) -> u64 {
        let data = format!(r#"{{"node":"{node}","seq":{seq}}}"#);
        self.sql
            .execute(
                "INSERT INTO stream_records (node, stream, sink, deployment, seq, time, received_at, kind, data) \
                 VALUES (?1, ?2, ?3, 'dep', ?4, ?5, ?5 + 1000, 'json', ?6)",
                params![node, stream, sink, seq as i64, nanos(time), data.as_bytes()],
            )
            .unwrap();
        self.sql.last_insert_rowid() as u64
    }

    pub fn bytes_record(
        &self,
        node: &str,
        stream: &str,
        seq: u64,
        time: Timestamp,
        data: &[u8],
    ) -> u64 {
        self.sql
            .execute(
                "INSERT INTO stream_records (node, stream, sink, deployment, seq, time, received_at, kind, data) \
                 VALUES (?1, ?2, 'default', 'dep', ?3, ?4, ?4, 'bytes', ?5)",
                params![node, stream, seq as i64, nanos(time), data],
            )
            .unwrap();
        self.sql.last_insert_rowid() as u64
    }

    pub fn metric(&self, node: &str, name: &str, time: Timestamp, value: f64) -> u64 {
        self.sql
            .execute(
                "INSERT INTO metric_samples (node, name, labels, time, value) VALUES (?1, ?2, '{\"core\":\"0\"}', ?3, ?4)",
                params![node, name, nanos(time), value],
            )
            .unwrap();
        self.sql.last_insert_rowid() as u64
    }

    pub fn count(&self, table: &str) -> u64 {
        self.sql
            .query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |row| {
                row.get::<_, i64>(0)
            })
            .unwrap() as u64
    }
}

fn nanos(time: Timestamp) -> i64 {
    time.unix_timestamp_nanos() as i64
}

pub fn local_sink(name: &str, path: &Path, residency: &str) -> SinkConfig {
    SinkConfig {
        name: name.into(),
        target: SinkTarget::Local {
            path: path.to_owned(),
        },
        prefix: String::new(),
        residency: edgefleet_core::selector::parse(residency).unwrap(),
    }
}

pub fn pacing(batch_rows: u32) -> Pacing {
    Pacing {
        interval: Duration::from_millis(50),
        batch_rows,
        metrics: true,
    }
}

pub fn exporter_with(
    store: Arc<dyn LakeStore>,
    config: LakeConfig,
    pacing: Pacing,
    env: &dyn Fn(&str) -> Option<String>,
) -> Exporter {
    Lake::from_config(config, pacing, env)
        .unwrap()
        .exporter(store)
}

fn no_env(_: &str) -> Option<String> {
    None
}

pub fn sink<'e>(exporter: &'e Exporter, name: &str) -> &'e Arc<SinkRuntime> {
    exporter
        .sinks
        .iter()
        .find(|s| s.config.name == name)
        .unwrap()
}

/// Every file under `root`, by path relative to it.
pub fn files(root: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                let key = path
                    .strip_prefix(root)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                out.insert(key, std::fs::read(&path).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn field<'r>(row: &'r Row, name: &str) -> &'r Field {
    row.get_column_iter()
        .find(|(column, _)| column.as_str() == name)
        .map(|(_, field)| field)
        .unwrap_or_else(|| panic!("no column {name}"))
}

fn text(row: &Row, name: &str) -> String {
    match field(row, name) {
        Field::Str(text) => text.clone(),
        other => panic!("{name} is {other:?}"),
    }
}

/// (node, stream, seq) of every record row in the files, with the key each came from.
pub fn record_rows(files: &BTreeMap<String, Vec<u8>>) -> Vec<((String, String, i64), String)> {
    let mut rows = Vec::new();
    for (key, bytes) in files {
        if key.contains("stream=metrics/") {
            continue;
        }
        for row in super::parquet::tests::read(bytes).0 {
            let seq = match field(&row, "seq") {
                Field::Long(seq) => *seq,
                other => panic!("seq is {other:?}"),
            };
            rows.push(((text(&row, "node"), text(&row, "stream"), seq), key.clone()));
        }
    }
    rows.sort();
    rows
}

#[tokio::test]
async fn exports_every_row_once_into_partitioned_files() {
    let db = Db::new().await;
    let lake_dir = db.dir.path().join("lake");
    db.node("berlin-1", &[("site", "berlin")]);
    db.node("paris-1", &[("site", "paris/nord")]);
    let day1 = datetime!(2024-05-01 10:00 UTC);
    let day2 = datetime!(2024-05-02 10:00 UTC);
    let mut expected = BTreeSet::new();
    for seq in 1..=12u64 {
        let (node, time) = if seq % 2 == 0 {
            ("berlin-1", day1)
        } else {
            ("paris-1", day2)
        };
        let stream = if seq % 3 == 0 { "events" } else { "readings" };
        db.record(node, stream, "default", seq, time);
        expected.insert((node.to_owned(), stream.to_owned(), seq as i64));
    }
    db.bytes_record("ghost", "raw", 1, day1, &[0, 255, 7]);
    expected.insert(("ghost".to_owned(), "raw".to_owned(), 1));
    for i in 0..7 {
        db.metric("berlin-1", "cpu.used_percent", day1, f64::from(i));
    }
    let config = LakeConfig {
        sinks: vec![local_sink("default", &lake_dir, "")],
        retention: BTreeMap::new(),
    };
    let exporter = exporter_with(db.store.clone(), config, pacing(5), &no_env);
    let default = sink(&exporter, "default");
    let report = exporter.export_sink(default).await.unwrap();
    assert_eq!(report.rows, 13 + 7);
    assert_eq!(report.held, 0);

    let written = files(&lake_dir);
    let rows = record_rows(&written);
    let seen: Vec<_> = rows.iter().map(|(row, _)| row.clone()).collect();
    assert_eq!(
        seen.len(),
        expected.len(),
        "every record exactly once: {seen:?}"
    );
    assert_eq!(seen.into_iter().collect::<BTreeSet<_>>(), expected);
    for ((node, stream, _), key) in &rows {
        let (site, date) = match node.as_str() {
            "berlin-1" => ("berlin", "2024-05-01"),
            "paris-1" => ("paris%2Fnord", "2024-05-02"),
            _ => ("_none", "2024-05-01"),
        };
        let partition = format!("stream={stream}/date={date}/site={site}/");
        assert!(key.starts_with(&partition), "{key} is not in {partition}");
        assert!(key.ends_with(".parquet"), "{key}");
    }
    let metric_files: Vec<_> = written
        .keys()
        .filter(|k| k.starts_with("stream=metrics/"))
        .collect();
    assert_eq!(
        metric_files,
        [
            "stream=metrics/date=2024-05-01/site=berlin/part-1-5.parquet",
            "stream=metrics/date=2024-05-01/site=berlin/part-6-7.parquet"
        ]
    );
    let metric_rows: usize = metric_files
        .iter()
        .map(|k| super::parquet::tests::read(&written[k.as_str()]).0.len())
        .sum();
    assert_eq!(metric_rows, 7);

    // Exported records leave the database; metric samples stay (the telemetry store's
    // retention removes them, up to the cursor).
    assert_eq!(db.count("stream_records"), 0);
    assert_eq!(db.count("metric_samples"), 7);
    let cursor = db.store.lake_cursor(&LakeSource::Metrics).await.unwrap();
    assert_eq!(
        (cursor.last_id, cursor.exported_rows, cursor.in_flight),
        (7, 7, None)
    );
    let records = db
        .store
        .lake_cursor(&LakeSource::records("default"))
        .await
        .unwrap();
    assert_eq!(records.exported_rows, 13);
    assert_eq!(records.last_id, 13);

    let status = exporter.status.snapshot();
    let default_status = &status.sinks[0];
    assert_eq!(default_status.exported_rows, 20);
    assert_eq!(default_status.exported_files, written.len() as u64);
    assert_eq!(default_status.pending_rows, 0);
    assert!(default_status.last_export.is_some());

    // Nothing new: nothing written.
    let again = exporter.export_sink(default).await.unwrap();
    assert_eq!(again.rows, 0);
    assert_eq!(files(&lake_dir), written);
}

/// A store that fails the next `crashes` commits, as a crash after the upload would.
struct CrashBeforeCommit {
    inner: Arc<dyn LakeStore>,
    crashes: AtomicU32,
}

#[async_trait]
impl LakeStore for CrashBeforeCommit {
    async fn lake_cursor(&self, source: &LakeSource) -> StoreResult<LakeCursor> {
        self.inner.lake_cursor(source).await
    }
    async fn plan_lake_batch(
        &self,
        source: &LakeSource,
        max_rows: u32,
    ) -> StoreResult<Option<PlannedBatch>> {
        self.inner.plan_lake_batch(source, max_rows).await
    }
    async fn lake_rows(
        &self,
        source: &LakeSource,
        after_id: u64,
        through_id: u64,
    ) -> StoreResult<LakeRows> {
        self.inner.lake_rows(source, after_id, through_id).await
    }
    async fn commit_lake_batch(&self, commit: LakeCommit) -> StoreResult<bool> {
        let crash = self
            .crashes
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if crash {
            return Err(StoreError::Backend {
                operation: "committing a lake batch".into(),
                reason: "simulated crash".into(),
            });
        }
        self.inner.commit_lake_batch(commit).await
    }
    async fn lake_pending(&self, source: &LakeSource) -> StoreResult<u64> {
        self.inner.lake_pending(source).await
    }
    async fn lake_record_sinks(&self) -> StoreResult<Vec<SinkBacklog>> {
        self.inner.lake_record_sinks().await
    }
}

#[tokio::test]
async fn a_crash_between_upload_and_commit_writes_the_same_files_again() {
    let db = Db::new().await;
    let lake_dir = db.dir.path().join("lake");
    db.node("n1", &[("site", "a")]);
    db.node("n2", &[("site", "b")]);
    let t = datetime!(2024-05-01 10:00 UTC);
    for seq in 1..=15u64 {
        db.record(
            if seq % 3 == 0 { "n2" } else { "n1" },
            "readings",
            "default",
            seq,
            t,
        );
    }
    let config = LakeConfig {
        sinks: vec![local_sink("default", &lake_dir, "")],
        retention: BTreeMap::new(),
    };
    let crashing: Arc<dyn LakeStore> = Arc::new(CrashBeforeCommit {
        inner: db.store.clone(),
        crashes: AtomicU32::new(1),
    });
    let first = exporter_with(crashing, config.clone(), pacing(10), &no_env);
    let error = first
        .export_sink(sink(&first, "default"))
        .await
        .expect_err("the simulated crash stops the pass");
    assert!(error.to_string().contains("simulated crash"), "{error}");
    let after_crash = files(&lake_dir);
    assert_eq!(
        after_crash.keys().collect::<Vec<_>>(),
        [
            "stream=readings/date=2024-05-01/site=a/part-1-10.parquet",
            "stream=readings/date=2024-05-01/site=b/part-3-9.parquet"
        ],
        "the first batch (ids 1..=10) was uploaded"
    );
    assert_eq!(db.count("stream_records"), 15, "nothing was deleted");
    let cursor = db
        .store
        .lake_cursor(&LakeSource::records("default"))
        .await
        .unwrap();
    assert_eq!(cursor.last_id, 0);
    assert_eq!(cursor.in_flight.as_ref().map(|b| b.through_id), Some(10));

    // While the server was down, rows arrived, and a node moved to another site: the retry
    // still cuts the same batch with the same labels.
    for seq in 16..=20u64 {
        db.record("n1", "readings", "default", seq, t);
    }
    db.set_labels("n2", &[("site", "c")]);

    let restarted = exporter_with(db.store.clone(), config, pacing(10), &no_env);
    let report = restarted
        .export_sink(sink(&restarted, "default"))
        .await
        .unwrap();
    assert_eq!(report.rows, 20);
    let written = files(&lake_dir);
    for (key, bytes) in &after_crash {
        assert_eq!(
            written.get(key),
            Some(bytes),
            "{key} was rewritten identically"
        );
    }
    let rows = record_rows(&written);
    let seqs: Vec<i64> = rows.iter().map(|((_, _, seq), _)| *seq).collect();
    assert_eq!(seqs.iter().copied().collect::<BTreeSet<_>>().len(), 20);
    assert_eq!(seqs.len(), 20, "no row is in two files: {rows:?}");
    assert!(
        written
            .keys()
            .any(|k| k.contains("site=c/part-12-15.parquet")),
        "later batches see the new label: {:?}",
        written.keys()
    );
    let cursor = db
        .store
        .lake_cursor(&LakeSource::records("default"))
        .await
        .unwrap();
    assert_eq!(
        (cursor.last_id, cursor.exported_rows, cursor.in_flight),
        (20, 20, None)
    );
    assert_eq!(db.count("stream_records"), 0);
}

#[tokio::test]
async fn a_commit_for_another_batch_is_refused() {
    let db = Db::new().await;
    db.record("n", "s", "default", 1, datetime!(2024-05-01 0:00 UTC));
    let source = LakeSource::records("default");
    let commit = |through_id| LakeCommit {
        source: source.clone(),
        through_id,
        exported_ids: vec![1],
        files: 1,
        held_rows: 0,
    };
    assert!(
        !db.store.commit_lake_batch(commit(1)).await.unwrap(),
        "nothing in flight"
    );
    let batch = db
        .store
        .plan_lake_batch(&source, 10)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((batch.after_id, batch.through_id), (0, 1));
    assert_eq!(
        db.store.plan_lake_batch(&source, 10).await.unwrap(),
        Some(batch)
    );
    assert!(!db.store.commit_lake_batch(commit(2)).await.unwrap());
    assert_eq!(db.count("stream_records"), 1);
    assert!(db.store.commit_lake_batch(commit(1)).await.unwrap());
    assert_eq!(db.count("stream_records"), 0);
    assert_eq!(db.store.plan_lake_batch(&source, 10).await.unwrap(), None);
}

#[tokio::test]
async fn residency_holds_data_of_other_regions_and_unknown_sinks_are_reported() {
    let db = Db::new().await;
    let root = db.dir.path().join("lakes");
    db.node("eu-1", &[("region", "eu"), ("site", "dublin")]);
    db.node("us-1", &[("region", "us"), ("site", "austin")]);
    let t = datetime!(2024-05-01 10:00 UTC);
    for seq in 1..=4 {
        db.record("eu-1", "readings", "eu", seq, t);
        db.record("us-1", "readings", "eu", seq, t);
    }
    db.record("us-1", "readings", "nowhere", 1, t);
    db.record("us-1", "readings", "nowhere", 2, t);
    for i in 0..3 {
        db.metric("us-1", "cpu", t, f64::from(i));
    }
    let config = LakeConfig {
        sinks: vec![
            local_sink("eu", &root.join("eu"), "region in (eu)"),
            local_sink("default", &root.join("default"), "region in (eu)"),
        ],
        retention: BTreeMap::new(),
    };
    let exporter = exporter_with(db.store.clone(), config, pacing(100), &no_env);
    let eu = exporter.export_sink(sink(&exporter, "eu")).await.unwrap();
    assert_eq!((eu.rows, eu.held), (4, 4));
    let rows = record_rows(&files(&root.join("eu")));
    assert!(
        rows.iter().all(|((node, _, _), _)| node == "eu-1"),
        "{rows:?}"
    );
    assert_eq!(rows.len(), 4);

    let default = exporter
        .export_sink(sink(&exporter, "default"))
        .await
        .unwrap();
    assert_eq!(
        (default.rows, default.held),
        (0, 3),
        "us metrics are held too"
    );
    assert!(files(&root.join("default")).is_empty());

    exporter.refresh_unknown_sinks().await.unwrap();
    let status = exporter.status.snapshot();
    let eu_status = status.sinks.iter().find(|s| s.name == "eu").unwrap();
    assert_eq!(eu_status.held_rows, 4);
    assert_eq!(eu_status.exported_rows, 4);
    assert_eq!(eu_status.residency, "region in (eu)");
    assert_eq!(
        status
            .sinks
            .iter()
            .find(|s| s.name == "default")
            .unwrap()
            .held_rows,
        3
    );
    let unknown: Vec<_> = status
        .unknown_sinks
        .iter()
        .map(|u| (u.sink.as_str(), u.held_rows))
        .collect();
    assert_eq!(unknown, [("nowhere", 2)]);
    // Held records stay in the database; the exported ones are gone.
    assert_eq!(db.count("stream_records"), 4 + 2);
    let json = serde_json::to_value(&status).unwrap();
    assert_eq!(json["unknown_sinks"][0]["sink"], "nowhere");
    assert_eq!(json["sinks"][0]["held_rows"], 4);
}

#[tokio::test]
async fn retention_removes_old_date_partitions_of_its_streams() {
    let db = Db::new().await;
    let lake_dir = db.dir.path().join("lake");
    let today = time::OffsetDateTime::now_utc();
    let old = today - time::Duration::days(10);
    db.record("n", "readings", "default", 1, old);
    db.record("n", "readings", "default", 2, today);
    db.record("n", "events", "default", 1, old);
    let config = LakeConfig {
        sinks: vec![local_sink("default", &lake_dir, "")],
        retention: [("readings".to_owned(), Duration::from_secs(7 * 86_400))].into(),
    };
    let exporter = exporter_with(db.store.clone(), config, pacing(100), &no_env);
    let default = sink(&exporter, "default");
    exporter.export_sink(default).await.unwrap();
    assert_eq!(files(&lake_dir).len(), 3);
    assert_eq!(exporter.expire_sink(default).await.unwrap(), 1);
    let left: Vec<_> = files(&lake_dir).into_keys().collect();
    let old_date = super::layout::partition_date(old);
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(
        left.iter()
            .any(|k| k.starts_with(&format!("stream=events/date={old_date}/")))
    );
    assert!(
        !left
            .iter()
            .any(|k| k.starts_with(&format!("stream=readings/date={old_date}/")))
    );
    assert_eq!(exporter.status.snapshot().sinks[0].expired_files, 1);
}

#[tokio::test]
async fn a_failing_sink_does_not_stop_the_others() {
    let db = Db::new().await;
    let lake_dir = db.dir.path().join("lake");
    let t = datetime!(2024-05-01 10:00 UTC);
    db.record("n", "readings", "default", 1, t);
    db.record("n", "readings", "broken", 1, t);
    // Nothing listens on this port: every request fails to connect.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let config = LakeConfig {
        sinks: vec![
            SinkConfig {
                name: "broken".into(),
                target: SinkTarget::S3(Box::new(S3Target {
                    endpoint: format!("http://127.0.0.1:{port}").parse().unwrap(),
                    region: "eu-west-1".into(),
                    bucket: "fleet".into(),
                    access_key_env: "KEY".into(),
                    secret_key_env: "SECRET".into(),
                    session_token_env: None,
                    ca_file: None,
                })),
                prefix: String::new(),
                residency: Selector::default(),
            },
            local_sink("default", &lake_dir, ""),
        ],
        retention: BTreeMap::new(),
    };
    let env = |name: &str| Some(format!("value-of-{name}"));
    let exporter = exporter_with(db.store.clone(), config, pacing(100), &env);
    let status = exporter.status.clone();
    let task = tokio::spawn(exporter.run());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let snapshot = loop {
        let snapshot = status.snapshot();
        let broken = &snapshot.sinks[0];
        if broken.last_error.is_some() && snapshot.sinks[1].exported_rows == 1 {
            break snapshot;
        }
        assert!(tokio::time::Instant::now() < deadline, "{snapshot:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    task.abort();
    let error = snapshot.sinks[0].last_error.clone().unwrap();
    assert!(
        error.contains("sink broken: PUT object s3://fleet/stream=readings/")
            && error.contains("failed after 4 attempts"),
        "{error}"
    );
    assert_eq!(snapshot.sinks[0].pending_rows, 1);
    assert_eq!(files(&lake_dir).len(), 1);
}

#[test]
fn missing_credentials_stop_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let sinks = dir.path().join("sinks.json");
    std::fs::write(
        &sinks,
        r#"{"sinks": [{"name": "eu", "type": "s3", "endpoint": "http://127.0.0.1:1", "region": "r",
            "bucket": "fleet", "accessKeyEnv": "EU_KEY", "secretKeyEnv": "EU_SECRET"}]}"#,
    )
    .unwrap();
    let args = LakeArgs {
        lake_sinks: Some(sinks),
        ..LakeArgs::default()
    };
    let error = Lake::with_env(&args, dir.path(), &|name| {
        (name == "EU_KEY").then(|| "k".into())
    })
    .unwrap_err();
    let text = format!("{error:#}");
    assert!(
        text.contains("EU_SECRET (secretKeyEnv) is not set"),
        "{text}"
    );
    let lake = Lake::with_env(&args, dir.path(), &|_| Some("x".into())).unwrap();
    let names: Vec<_> = lake
        .status()
        .sinks
        .into_iter()
        .map(|s| (s.name, s.kind))
        .collect();
    assert_eq!(
        names,
        [("eu".to_owned(), "s3"), ("default".to_owned(), "local")]
    );
}

#[test]
fn default_args_match_clap_defaults() {
    use clap::Parser;
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        lake: LakeArgs,
    }
    let parsed = Cli::try_parse_from(["edgefleet"]).unwrap().lake;
    assert_eq!(parsed, LakeArgs::default());
    let off = Cli::try_parse_from([
        "edgefleet",
        "--lake-metrics=false",
        "--lake-batch-rows",
        "7",
    ])
    .unwrap()
    .lake;
    assert!(!off.lake_metrics);
    assert_eq!(off.lake_batch_rows, 7);
    assert!(
        Cli::try_parse_from(["edgefleet", "--lake-metrics"])
            .unwrap()
            .lake
            .lake_metrics
    );
    let lake = Lake::new(&LakeArgs::default(), Path::new("/data")).unwrap();
    let status = lake.status();
    assert_eq!(status.sinks.len(), 1);
    assert_eq!(status.sinks[0].location, "/data/lake");
}

/// Rows per second into local Parquet files, through the real store. Run in release mode
/// to measure: `cargo test -p edgefleet-server --release --lib lake::tests::throughput --
/// --nocapture`.
#[tokio::test]
async fn throughput() {
    let rows: u64 = std::env::var("LAKE_BENCH_ROWS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(20_000);
    let db = Db::new().await;
    let lake_dir: PathBuf = db.dir.path().join("lake");
    for n in 0..20 {
        db.node(&format!("n{n}"), &[("site", ["a", "b", "c", "d"][n % 4])]);
    }
    let t = datetime!(2024-05-01 10:00 UTC);
    db.sql.execute_batch("BEGIN").unwrap();
    for i in 0..rows {
        db.record(&format!("n{}", i % 20), "readings", "default", i, t);
    }
    db.sql.execute_batch("COMMIT").unwrap();
    let config = LakeConfig {
        sinks: vec![local_sink("default", &lake_dir, "")],
        retention: BTreeMap::new(),
    };
    let exporter = exporter_with(db.store.clone(), config, pacing(50_000), &no_env);
    let started = std::time::Instant::now();
    let report = exporter
        .export_sink(sink(&exporter, "default"))
        .await
        .unwrap();
    let elapsed = started.elapsed();
    assert_eq!(report.rows, rows);
    let per_second = rows as f64 / elapsed.as_secs_f64();
    let bytes: usize = files(&lake_dir).values().map(Vec::len).sum();
    println!(
        "lake throughput: {rows} rows in {elapsed:?} = {per_second:.0} rows/s into {} files, {bytes} bytes",
        report.files
    );
    assert!(per_second > 500.0, "{per_second} rows/s");
}

#[tokio::test]
async fn with_metrics_off_samples_are_passed_not_exported() {
    let db = Db::new().await;
    let lake_dir = db.dir.path().join("lake");
    let t = datetime!(2024-05-01 10:00 UTC);
    for i in 0..5 {
        db.metric("n", "cpu", t, f64::from(i));
    }
    let config = LakeConfig {
        sinks: vec![local_sink("default", &lake_dir, "")],
        retention: BTreeMap::new(),
    };
    let off = Pacing {
        metrics: false,
        ..pacing(2)
    };
    let exporter = exporter_with(db.store.clone(), config, off, &no_env);
    let report = exporter
        .export_sink(sink(&exporter, "default"))
        .await
        .unwrap();
    assert_eq!(report.rows, 0);
    assert!(files(&lake_dir).is_empty());
    // The telemetry store's retention removes samples behind this cursor.
    let cursor = db.store.lake_cursor(&LakeSource::Metrics).await.unwrap();
    assert_eq!(
        (cursor.last_id, cursor.exported_rows, cursor.in_flight),
        (5, 0, None)
    );
    let status = exporter.status.snapshot();
    assert_eq!(
        status.sinks[0].sources.len(),
        1,
        "only records are reported: {status:?}"
    );
}
