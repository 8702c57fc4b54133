//! Telemetry ingest and metric queries against a real server over HTTPS, as enrolled nodes
//! (client certificates) and an operator.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Write;
use std::time::Instant;

use common::{Api, TestServer, read};
use edgefleet_wire::telemetry::{DropReason, MetricPoint, MetricsResponse, Resolution, UploadAck};
use edgefleet_wire::workload::ByteSize;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

fn rfc3339(at: OffsetDateTime) -> String {
    at.format(&Rfc3339).unwrap()
}

/// Sends raw bytes to the upload route with the given content encoding.
async fn upload_raw(node: &Api, body: Vec<u8>, encoding: Option<&str>) -> (StatusCode, Value) {
    let mut request = node
        .request(Method::POST, "/v1/agent/telemetry")
        .header("content-type", "application/json");
    if let Some(encoding) = encoding {
        request = request.header("content-encoding", encoding);
    }
    read(request.body(body).send().await.unwrap()).await
}

/// Uploads a batch gzip-compressed, as agents do.
async fn upload(node: &Api, batch: &Value) -> (StatusCode, Value) {
    upload_raw(node, gzip(batch.to_string().as_bytes()), Some("gzip")).await
}

async fn upload_ok(node: &Api, batch: &Value) -> UploadAck {
    let (status, body) = upload(node, batch).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    serde_json::from_value(body).unwrap()
}

/// A metrics record: `samples` as (name, labels, value), taken at `at`.
fn metric_record(seq: u64, at: OffsetDateTime, samples: &[(&str, Value, f64)]) -> Value {
    let samples: Vec<Value> = samples
        .iter()
        .map(|(name, labels, value)| json!({ "name": name, "labels": labels, "value": value }))
        .collect();
    json!({
        "seq": seq,
        "time": rfc3339(at),
        "data": { "json": { "time": rfc3339(at), "samples": samples } }
    })
}

fn cpu(seq: u64, at: OffsetDateTime, value: f64) -> Value {
    metric_record(seq, at, &[("cpu.used_percent", json!({}), value)])
}

fn batch(outbox: &str, streams: Value) -> Value {
    json!({ "outbox": outbox, "streams": streams, "backlog_bytes": 10, "backlog_records": 1 })
}

fn acks(ack: &UploadAck) -> Vec<(String, u64)> {
    ack.streams
        .iter()
        .map(|a| (a.stream.clone(), a.stored_through))
        .collect()
}

async fn query(server: &TestServer, query: &str) -> MetricsResponse {
    let (status, body) = server.admin().get(&format!("/v1/metrics?{query}")).await;
    assert_eq!(status, StatusCode::OK, "{query}: {body}");
    serde_json::from_value(body).unwrap()
}

async fn query_error(server: &TestServer, query: &str) -> (StatusCode, String) {
    let (status, body) = server.admin().get(&format!("/v1/metrics?{query}")).await;
    (
        status,
        body["message"].as_str().unwrap_or_default().to_owned(),
    )
}

/// Rows of a table of the server's database (read beside the running server, WAL mode).
fn count_rows(server: &TestServer, sql: &str) -> i64 {
    let db = rusqlite::Connection::open(server.data_dir.join("edgefleet.db")).unwrap();
    db.query_row(sql, [], |row| row.get(0)).unwrap()
}

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

fn minutes(n: i64) -> time::Duration {
    time::Duration::minutes(n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_are_stored_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let node = server.enroll("gw-1", json!({})).await;
    let agent = server.node_api(&node);
    let t = now() - minutes(10);
    let first = batch(
        "outbox-a",
        json!([
            { "stream": "metrics", "records": [cpu(1, t, 10.0), cpu(2, t + minutes(1), 20.0)] },
            { "stream": "app.events", "sink": "archive", "deployment": "web", "records": [
                { "seq": 1, "time": rfc3339(t), "data": { "json": { "door": "open" } } },
                { "seq": 2, "time": rfc3339(t), "data": { "bytes": "aGVsbG8=" } }
            ]}
        ]),
    );
    let ack = upload_ok(&agent, &first).await;
    assert_eq!(
        acks(&ack),
        [("metrics".into(), 2), ("app.events".into(), 2)]
    );
    // A lost acknowledgement: the same batch again stores nothing new.
    let again = upload_ok(&agent, &first).await;
    assert_eq!(acks(&again), acks(&ack));
    // A batch that overlaps: only seq 3 is new.
    let overlapping = batch(
        "outbox-a",
        json!([{ "stream": "metrics", "records": [cpu(2, t + minutes(1), 20.0), cpu(3, t + minutes(2), 30.0)] }]),
    );
    assert_eq!(
        acks(&upload_ok(&agent, &overlapping).await),
        [("metrics".into(), 3)]
    );

    let answer = query(&server, "node=gw-1&metric=cpu.used_percent").await;
    assert_eq!(answer.series.len(), 1);
    let series = &answer.series[0];
    assert_eq!(series.node.as_deref(), Some("gw-1"));
    assert_eq!(series.resolution, Resolution::Raw);
    let values: Vec<f64> = series.points.iter().map(|p| p.value).collect();
    assert_eq!(values, [10.0, 20.0, 30.0], "no duplicates");
    assert_eq!(series.points[0].time.unix_timestamp(), t.unix_timestamp());
    assert_eq!(
        count_rows(&server, "SELECT COUNT(*) FROM metric_samples"),
        3
    );
    assert_eq!(
        count_rows(&server, "SELECT COUNT(*) FROM stream_records"),
        2
    );
    let db = rusqlite::Connection::open(server.data_dir.join("edgefleet.db")).unwrap();
    let (kind, data, sink, deployment): (String, Vec<u8>, String, String) = db
        .query_row(
            "SELECT kind, data, sink, deployment FROM stream_records WHERE seq = 2",
            [],
            |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?)),
        )
        .unwrap();
    assert_eq!(
        (kind.as_str(), data.as_slice()),
        ("bytes", b"hello".as_slice())
    );
    assert_eq!((sink.as_str(), deployment.as_str()), ("archive", "web"));
    let json: Vec<u8> = db
        .query_row("SELECT data FROM stream_records WHERE seq = 1", [], |row| {
            row.get(0)
        })
        .unwrap();
    assert_eq!(json, br#"{"door":"open"}"#);

    // Uncompressed uploads are accepted too.
    let plain = batch(
        "outbox-a",
        json!([{ "stream": "metrics", "records": [cpu(4, t + minutes(3), 40.0)] }]),
    );
    let (status, body) = upload_raw(&agent, plain.to_string().into_bytes(), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["streams"][0]["stored_through"], 4);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_outbox_starts_again_and_gaps_are_fine() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let node = server.enroll("gw-1", json!({})).await;
    let agent = server.node_api(&node);
    let t = now() - minutes(30);
    let metrics = |outbox: &str, records: Vec<Value>| {
        batch(outbox, json!([{ "stream": "metrics", "records": records }]))
    };
    let ack = upload_ok(
        &agent,
        &metrics("a", vec![cpu(1, t, 1.0), cpu(2, t + minutes(1), 2.0)]),
    )
    .await;
    assert_eq!(acks(&ack), [("metrics".into(), 2)]);
    // Records 3 to 6 were dropped by the outbox: the gap is accepted.
    let ack = upload_ok(
        &agent,
        &metrics(
            "a",
            vec![cpu(7, t + minutes(2), 7.0), cpu(9, t + minutes(3), 9.0)],
        ),
    )
    .await;
    assert_eq!(acks(&ack), [("metrics".into(), 9)]);
    // The outbox was wiped: a new id, numbering from 1 again. Nothing is mistaken for a repeat.
    let ack = upload_ok(
        &agent,
        &metrics(
            "b",
            vec![cpu(1, t + minutes(4), 11.0), cpu(2, t + minutes(5), 12.0)],
        ),
    )
    .await;
    assert_eq!(acks(&ack), [("metrics".into(), 2)]);
    // ... and the new outbox's repeats are repeats.
    upload_ok(&agent, &metrics("b", vec![cpu(2, t + minutes(5), 12.0)])).await;
    let answer = query(&server, "node=gw-1").await;
    let values: Vec<f64> = answer.series[0].points.iter().map(|p| p.value).collect();
    assert_eq!(values, [1.0, 2.0, 7.0, 9.0, 11.0, 12.0]);
    // An empty chunk answers the cursor.
    let ack = upload_ok(&agent, &metrics("b", vec![])).await;
    assert_eq!(acks(&ack), [("metrics".into(), 2)]);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_totals_and_backlog_are_kept() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let node = server.enroll("gw-1", json!({})).await;
    let agent = server.node_api(&node);
    let with_drops = |outbox: &str, records: u64, backlog: u64| {
        json!({
            "outbox": outbox,
            "streams": [],
            "dropped": [
                { "stream": "metrics", "reason": "full", "records": records, "bytes": records * 100 },
                { "stream": "logs", "reason": "expired", "records": 1, "bytes": 10 }
            ],
            "backlog_bytes": backlog,
            "backlog_records": backlog / 100
        })
    };
    let before = now();
    upload_ok(&agent, &with_drops("a", 5, 5000)).await;
    // Totals are cumulative: a smaller one (a reordered request) does not lower them.
    upload_ok(&agent, &with_drops("a", 3, 300)).await;
    let store = edgefleet_server::store::open(&server.data_dir)
        .await
        .unwrap();
    let telemetry = store.node_telemetry("gw-1").await.unwrap();
    assert_eq!(telemetry.backlog_bytes, 300, "the backlog is the latest");
    assert_eq!(telemetry.backlog_records, 3);
    assert!(telemetry.last_upload.unwrap() >= before);
    assert!(telemetry.traffic.is_empty());
    let totals: Vec<(String, DropReason, u64, u64)> = telemetry
        .dropped
        .iter()
        .map(|d| (d.stream.clone(), d.reason, d.records, d.bytes))
        .collect();
    assert_eq!(
        totals,
        [
            ("logs".into(), DropReason::Expired, 1, 10),
            ("metrics".into(), DropReason::Full, 5, 500)
        ]
    );
    let fleet = store.drop_totals().await.unwrap();
    assert_eq!(fleet.len(), 2);
    assert!(fleet.iter().all(|d| d.node == "gw-1"));
    // A new outbox starts its totals from zero.
    upload_ok(
        &agent,
        &json!({ "outbox": "b", "dropped": [{ "stream": "metrics", "reason": "full", "records": 2, "bytes": 20 }] }),
    )
    .await;
    let telemetry = store.node_telemetry("gw-1").await.unwrap();
    assert_eq!(telemetry.dropped.len(), 1);
    assert_eq!(telemetry.dropped[0].records, 2);
    // A node that never uploaded has empty telemetry.
    let nothing = store.node_telemetry("gw-2").await.unwrap();
    assert_eq!(nothing.last_upload, None);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_uploads_get_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let mut args = common::args(dir.path());
    args.telemetry.telemetry_max_upload_size = ByteSize(64 * 1024);
    let server = TestServer::start_with(args).await;
    let node = server.enroll("gw-1", json!({})).await;
    let agent = server.node_api(&node);
    let t = now();
    let message = |body: &Value| body["message"].as_str().unwrap_or_default().to_owned();

    let (status, body) = upload_raw(&agent, b"{\"outbox\":\"a\"}".to_vec(), Some("gzip")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        message(&body).starts_with("the body is not valid gzip"),
        "{body}"
    );

    let (status, body) = upload_raw(&agent, gzip(b"{\"outbox\": "), Some("gzip")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        message(&body).starts_with("invalid JSON in the upload"),
        "{body}"
    );

    let infinite = batch(
        "a",
        json!([{ "stream": "metrics", "records": [cpu(1, t, 1.0)] }]),
    )
    .to_string()
    .replace("\"value\":1.0", "\"value\":1e999");
    assert!(infinite.contains("1e999"));
    let (status, body) = upload_raw(&agent, gzip(infinite.as_bytes()), Some("gzip")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(message(&body).contains("must be finite"), "{body}");

    let not_a_set = batch(
        "a",
        json!([{ "stream": "metrics", "records": [
            { "seq": 4, "time": rfc3339(t), "data": { "json": { "cpu": 1 } } }
        ]}]),
    );
    let (status, body) = upload(&agent, &not_a_set).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        message(&body).starts_with("stream \"metrics\" seq 4: the metric set does not parse"),
        "{body}"
    );

    let bad_name = batch("a", json!([{ "stream": "Logs!", "records": [] }]));
    let (status, body) = upload(&agent, &bad_name).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(message(&body).starts_with("stream \"Logs!\""), "{body}");

    let backwards = batch(
        "a",
        json!([{ "stream": "metrics", "records": [cpu(3, t, 1.0), cpu(2, t, 1.0)] }]),
    );
    let (status, body) = upload(&agent, &backwards).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(message(&body).contains("seq 2 follows seq 3"), "{body}");

    let (status, body) = upload_raw(&agent, b"{}".to_vec(), Some("br")).await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{body}");

    // Too large after decompression: a small body that inflates beyond the limit.
    let mut big = batch("a", json!([{ "stream": "metrics", "records": [] }]));
    big["padding"] = json!(" ".repeat(100 * 1024));
    let compressed = gzip(big.to_string().as_bytes());
    assert!(compressed.len() < 64 * 1024);
    let (status, body) = upload_raw(&agent, compressed, Some("gzip")).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert!(
        message(&body).contains("--telemetry-max-upload-size"),
        "{body}"
    );
    // Too large as sent.
    let (status, body) = upload_raw(&agent, big.to_string().into_bytes(), None).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");

    // Nothing of the refused uploads was stored, and the node can still upload.
    assert_eq!(
        count_rows(&server, "SELECT COUNT(*) FROM metric_samples"),
        0
    );
    let fine = batch(
        "a",
        json!([{ "stream": "metrics", "records": [cpu(1, t, 1.0)] }]),
    );
    assert_eq!(
        acks(&upload_ok(&agent, &fine).await),
        [("metrics".into(), 1)]
    );

    // Operators cannot upload: the route wants a node certificate.
    let (status, _) = server
        .admin()
        .send(Method::POST, "/v1/agent/telemetry", Some(fine))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metric_queries_per_node_and_per_site() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    // Two nodes at site a, one at site b, one without a site.
    let fleet = [
        ("a-1", json!({ "site": "a" }), 10.0),
        ("a-2", json!({ "site": "a" }), 30.0),
        ("b-1", json!({ "site": "b" }), 50.0),
        ("loose", json!({}), 70.0),
    ];
    // Whole minutes, so every sample is in one group bucket (60 s wide).
    let base =
        OffsetDateTime::from_unix_timestamp((now() - minutes(20)).unix_timestamp() / 60 * 60)
            .unwrap();
    for (name, labels, value) in &fleet {
        let node = server.enroll(name, labels.clone()).await;
        let records: Vec<Value> = (0..5)
            .map(|i| {
                metric_record(
                    i + 1,
                    base + minutes(i as i64),
                    &[
                        ("cpu.used_percent", json!({}), value + i as f64),
                        ("disk.used_percent", json!({ "mount": "/" }), 1.0),
                        ("disk.used_percent", json!({ "mount": "/data" }), 2.0),
                    ],
                )
            })
            .collect();
        upload_ok(
            &server.node_api(&node),
            &batch("x", json!([{ "stream": "metrics", "records": records }])),
        )
        .await;
    }

    // One node, every metric: one series per (metric, labels).
    let answer = query(&server, "node=a-1").await;
    let names: Vec<(String, Option<String>)> = answer
        .series
        .iter()
        .map(|s| (s.metric.clone(), s.labels.get("mount").cloned()))
        .collect();
    assert_eq!(
        names,
        [
            ("cpu.used_percent".into(), None),
            ("disk.used_percent".into(), Some("/".into())),
            ("disk.used_percent".into(), Some("/data".into())),
        ]
    );
    let cpu_points = &answer.series[0].points;
    assert_eq!(cpu_points.len(), 5);
    assert_eq!(cpu_points[4].value, 14.0);
    assert_eq!(cpu_points[4].time, base + minutes(4));
    assert_eq!(cpu_points[4].count, 1);

    // One metric of every node, restricted by a selector.
    let answer = query(&server, "metric=cpu.used_percent&selector=site%3Da").await;
    let nodes: Vec<_> = answer
        .series
        .iter()
        .map(|s| s.node.clone().unwrap())
        .collect();
    assert_eq!(nodes, ["a-1", "a-2"]);

    // A time range: only the samples in [since, until).
    let since = rfc3339(base + minutes(1));
    let until = rfc3339(base + minutes(3));
    let answer = query(
        &server,
        &format!("node=b-1&metric=cpu.used_percent&since={since}&until={until}"),
    )
    .await;
    let values: Vec<f64> = answer.series[0].points.iter().map(|p| p.value).collect();
    assert_eq!(values, [51.0, 52.0]);

    // Grouped by site: the mean over nodes per bucket, min and max across nodes.
    let answer = query(&server, "metric=cpu.used_percent&group_by=site&since=1h").await;
    let groups: Vec<(String, u64)> = answer
        .series
        .iter()
        .map(|s| (s.group.clone().unwrap(), s.nodes.unwrap()))
        .collect();
    assert_eq!(
        groups,
        [("(none)".into(), 1), ("a".into(), 2), ("b".into(), 1)]
    );
    let site_a = &answer.series[1];
    assert_eq!(site_a.points.len(), 5);
    let first = &site_a.points[0];
    assert_eq!(first.time, base);
    assert_eq!(
        (first.value, first.min, first.max, first.count),
        (20.0, Some(10.0), Some(30.0), 2)
    );
    assert_eq!(site_a.points[4].value, 24.0);
    assert!(site_a.node.is_none());

    // Groups keep the metric's own labels apart.
    let answer = query(
        &server,
        "metric=disk.used_percent&group_by=site&selector=site%3Db",
    )
    .await;
    assert_eq!(answer.series.len(), 2);
    assert!(
        answer
            .series
            .iter()
            .all(|s| s.group.as_deref() == Some("b"))
    );
    assert_eq!(answer.series[0].points[0].value, 1.0);
    assert_eq!(answer.series[1].points[0].value, 2.0);

    // A metric without data is an empty answer, not an error.
    assert!(
        query(&server, "metric=nothing.here")
            .await
            .series
            .is_empty()
    );
    assert!(
        query(&server, "metric=nothing.here&group_by=site")
            .await
            .series
            .is_empty()
    );
    assert!(
        query(&server, "node=a-1&selector=site%3Db")
            .await
            .series
            .is_empty()
    );

    // Mistakes.
    let (status, message) = query_error(&server, "node=nobody").await;
    assert_eq!(
        (status, message.as_str()),
        (StatusCode::NOT_FOUND, "node \"nobody\" not found")
    );
    let (status, message) = query_error(&server, "metric=cpu.used_percent&since=yesterday").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        message.starts_with("invalid since \"yesterday\""),
        "{message}"
    );
    let (status, message) = query_error(&server, "").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(message.starts_with("name what to read"), "{message}");
    let (status, message) = query_error(&server, "node=a-1&group_by=site").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(message.contains("needs metric="), "{message}");
    let (status, _) = server.api(None).get("/v1/metrics?node=a-1").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_ranges_are_answered_from_rollups_kept_by_the_background_task() {
    let dir = tempfile::tempdir().unwrap();
    let mut args = common::args(dir.path());
    args.telemetry.metrics_raw_retention = "15m".parse().unwrap();
    args.telemetry.metrics_maintenance_interval = "1s".parse().unwrap();
    let server = TestServer::start_with(args).await;
    let node = server.enroll("gw-1", json!({ "site": "a" })).await;
    // Ten samples a minute apart, from 60 to 51 minutes ago: beyond the raw retention.
    let start =
        OffsetDateTime::from_unix_timestamp((now() - minutes(60)).unix_timestamp() / 300 * 300)
            .unwrap();
    let records: Vec<Value> = (0..10)
        .map(|i| cpu(i + 1, start + minutes(i as i64), i as f64))
        .collect();
    upload_ok(
        &server.node_api(&node),
        &batch("x", json!([{ "stream": "metrics", "records": records }])),
    )
    .await;
    // The maintenance task rolls them up within a few of its 1 s runs.
    let deadline = Instant::now() + std::time::Duration::from_secs(20);
    while count_rows(
        &server,
        "SELECT IFNULL(SUM(sample_count), 0) FROM metric_rollups",
    ) < 10
    {
        assert!(
            Instant::now() < deadline,
            "the samples were not rolled up within 20 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(
        count_rows(&server, "SELECT COUNT(*) FROM metric_rollups"),
        2
    );
    let answer = query(&server, "node=gw-1&metric=cpu.used_percent&since=2h").await;
    let series = &answer.series[0];
    assert_eq!(series.resolution, Resolution::Rollup);
    let point = |time, value, min, max| MetricPoint {
        time,
        value,
        min: Some(min),
        max: Some(max),
        count: 5,
    };
    assert_eq!(
        series.points,
        [
            point(start, 2.0, 0.0, 4.0),
            point(start + minutes(5), 7.0, 5.0, 9.0)
        ]
    );
    // The fleet view of the same range.
    let answer = query(&server, "metric=cpu.used_percent&since=2h&group_by=site").await;
    assert_eq!(answer.series[0].resolution, Resolution::Rollup);
    assert_eq!(answer.series[0].group.as_deref(), Some("a"));
    let values: Vec<f64> = answer.series[0].points.iter().map(|p| p.value).collect();
    assert_eq!(values, [2.0, 7.0]);
    server.stop().await;
}

/// Uploads through HTTPS from several nodes at once and reports samples per second (the
/// store-level measurement is the unit test `store::sqlite::telemetry::tests::ingest_rate`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_rate_over_https() {
    const NODES: usize = 8;
    const BATCHES: u64 = 10;
    const SETS_PER_BATCH: u64 = 10;
    const SAMPLES_PER_SET: usize = 60;
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut agents = Vec::new();
    for i in 0..NODES {
        let node = server.enroll(&format!("n-{i}"), json!({})).await;
        agents.push(server.node_api(&node));
    }
    let t = now() - minutes(60);
    let bodies: Vec<Vec<Vec<u8>>> = (0..NODES)
        .map(|_| {
            (0..BATCHES)
                .map(|b| {
                    let records: Vec<Value> = (0..SETS_PER_BATCH)
                        .map(|s| {
                            let seq = b * SETS_PER_BATCH + s + 1;
                            let samples: Vec<(String, Value, f64)> = (0..SAMPLES_PER_SET)
                                .map(|k| (format!("metric.{k}"), json!({ "k": "v" }), k as f64))
                                .collect();
                            let samples: Vec<(&str, Value, f64)> = samples
                                .iter()
                                .map(|(n, l, v)| (n.as_str(), l.clone(), *v))
                                .collect();
                            metric_record(seq, t + time::Duration::seconds(seq as i64), &samples)
                        })
                        .collect();
                    gzip(
                        batch(
                            "bench",
                            json!([{ "stream": "metrics", "records": records }]),
                        )
                        .to_string()
                        .as_bytes(),
                    )
                })
                .collect()
        })
        .collect();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (agent, bodies) in agents.into_iter().zip(bodies) {
        tasks.push(tokio::spawn(async move {
            for body in bodies {
                let (status, response) = upload_raw(&agent, body, Some("gzip")).await;
                assert_eq!(status, StatusCode::OK, "{response}");
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let elapsed = started.elapsed();
    let samples = NODES as u64 * BATCHES * SETS_PER_BATCH * SAMPLES_PER_SET as u64;
    assert_eq!(
        count_rows(&server, "SELECT COUNT(*) FROM metric_samples"),
        samples as i64
    );
    println!(
        "ingest over HTTPS: {samples} samples from {NODES} nodes in {elapsed:?}: {:.0} samples/s",
        samples as f64 / elapsed.as_secs_f64()
    );
    server.stop().await;
}
