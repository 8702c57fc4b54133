//! The data lake through a real server: nodes upload records and metrics over mutual TLS,
//! the exporter writes them as Parquet files into `<data-dir>/lake`, exactly once, also
//! across a server restart with uploads sent twice. (The exporter's own behaviour, crashes,
//! residency, retention and S3 are tested in `src/lake/tests.rs`.)

// Test support: a panic with the failing call is exactly what a test wants.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use common::{TestNode, TestServer};
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::Field;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// Every Parquet file under `root`, by path relative to it.
fn lake_files(root: &Path) -> BTreeMap<String, Vec<u8>> {
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

/// One row of a lake file: its key and its columns.
#[derive(Debug, Clone)]
struct LakeRow {
    key: String,
    columns: BTreeMap<String, Field>,
}

fn lake_rows(root: &Path) -> Vec<LakeRow> {
    let mut rows = Vec::new();
    for (key, bytes) in lake_files(root) {
        assert!(
            key.ends_with(".parquet"),
            "only Parquet files in the lake: {key}"
        );
        let reader = SerializedFileReader::new(Bytes::from(bytes)).unwrap();
        for row in reader.get_row_iter(None).unwrap() {
            let columns = row
                .unwrap()
                .get_column_iter()
                .map(|(name, field)| (name.clone(), field.clone()))
                .collect();
            rows.push(LakeRow {
                key: key.clone(),
                columns,
            });
        }
    }
    rows
}

fn text(row: &LakeRow, column: &str) -> String {
    match &row.columns[column] {
        Field::Str(text) => text.clone(),
        other => panic!("{column} is {other:?}"),
    }
}

fn long(row: &LakeRow, column: &str) -> i64 {
    match &row.columns[column] {
        Field::Long(n) | Field::TimestampMillis(n) => *n,
        other => panic!("{column} is {other:?}"),
    }
}

async fn upload(server: &TestServer, node: &TestNode, streams: Value) {
    let (status, body) = server
        .node_api(node)
        .send(
            Method::POST,
            "/v1/agent/telemetry",
            Some(json!({ "outbox": "outbox-1", "streams": streams })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

fn readings(seqs: impl IntoIterator<Item = u64>) -> Value {
    let records: Vec<Value> = seqs
        .into_iter()
        .map(|seq| {
            json!({
                "seq": seq,
                "time": "2024-05-01T10:00:00.250Z",
                "data": { "json": { "temperature": 20 + seq } }
            })
        })
        .collect();
    json!({ "stream": "readings", "deployment": "sensors", "records": records })
}

fn metrics(seq: u64) -> Value {
    json!({
        "stream": "metrics",
        "records": [{
            "seq": seq,
            "time": "2024-05-01T10:00:00Z",
            "data": { "json": {
                "time": "2024-05-01T10:00:00Z",
                "samples": [{ "name": "cpu.used_percent", "value": 12.5 }]
            } }
        }]
    })
}

/// Waits until the lake holds `records` stream records and `samples` metric samples.
async fn wait_for_lake(root: &Path, records: usize, samples: usize) -> Vec<LakeRow> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let rows = lake_rows(root);
        let (metric_rows, record_rows): (Vec<_>, Vec<_>) = rows
            .iter()
            .partition(|r| r.key.starts_with("stream=metrics/"));
        if record_rows.len() >= records && metric_rows.len() >= samples {
            return rows;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the lake holds {} records and {} samples, not {records} and {samples}",
            record_rows.len(),
            metric_rows.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn pending_records(data_dir: &Path) -> i64 {
    let db = rusqlite::Connection::open(data_dir.join("edgefleet.db")).unwrap();
    db.busy_timeout(Duration::from_secs(5)).unwrap();
    db.query_row("SELECT COUNT(*) FROM stream_records", [], |row| row.get(0))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_reach_the_lake_exactly_once_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let mut args = common::args(dir.path());
    args.lake.lake_interval = "100ms".parse().unwrap();
    args.lake.lake_batch_rows = 4;
    let lake = dir.path().join("lake");

    let server = TestServer::start_with(args.clone()).await;
    let berlin = server.enroll("berlin-1", json!({ "site": "berlin" })).await;
    let paris = server.enroll("paris-1", json!({ "site": "paris" })).await;
    upload(&server, &berlin, json!([readings(1..=5), metrics(1)])).await;
    upload(&server, &paris, json!([readings(1..=3)])).await;
    wait_for_lake(&lake, 8, 1).await;
    server.stop().await;

    // Sent again after the restart (a lost acknowledgement), plus new records.
    let server = TestServer::start_with(args).await;
    upload(&server, &berlin, json!([readings(1..=7), metrics(2)])).await;
    let rows = wait_for_lake(&lake, 10, 2).await;
    // One more interval: anything written twice would show now.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rows_again = lake_rows(&lake);
    assert_eq!(rows_again.len(), rows.len());
    server.stop().await;

    let mut seen = BTreeSet::new();
    for row in rows
        .iter()
        .filter(|r| !r.key.starts_with("stream=metrics/"))
    {
        let node = text(row, "node");
        let seq = long(row, "seq");
        assert!(
            seen.insert((node.clone(), seq)),
            "{node} seq {seq} is in the lake twice"
        );
        let site = if node == "berlin-1" {
            "berlin"
        } else {
            "paris"
        };
        assert!(
            row.key.starts_with(&format!(
                "stream=readings/date=2024-05-01/site={site}/part-"
            )),
            "{}",
            row.key
        );
        assert_eq!(text(row, "stream"), "readings");
        assert_eq!(text(row, "deployment"), "sensors");
        assert_eq!(text(row, "kind"), "json");
        assert_eq!(long(row, "time"), 1_714_557_600_250);
        let data: Value = serde_json::from_str(&text(row, "data")).unwrap();
        assert_eq!(data, json!({ "temperature": 20 + seq }));
    }
    let expected: BTreeSet<(String, i64)> = (1..=7)
        .map(|seq| ("berlin-1".to_owned(), seq))
        .chain((1..=3).map(|seq| ("paris-1".to_owned(), seq)))
        .collect();
    assert_eq!(seen, expected);

    let samples: Vec<_> = rows
        .iter()
        .filter(|r| {
            r.key
                .starts_with("stream=metrics/date=2024-05-01/site=berlin/")
        })
        .collect();
    assert_eq!(samples.len(), 2, "{rows:?}");
    for sample in samples {
        assert_eq!(text(sample, "name"), "cpu.used_percent");
        assert_eq!(sample.columns["value"], Field::Double(12.5));
    }
    assert_eq!(
        pending_records(dir.path()),
        0,
        "exported records leave the database"
    );
}
