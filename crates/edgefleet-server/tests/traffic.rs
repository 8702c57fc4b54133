//! Per-node traffic accounting against a real server over HTTPS: artifact downloads count
//! as artifacts (whole and ranged, by the bytes that flowed), other agent calls as
//! control; totals reach the store, survive a restart and keep adding up; the fleet-wide
//! Prometheus counters move while the server runs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{Api, TestServer};
use edgefleet_server::store;
use edgefleet_wire::telemetry::{TrafficCategory, TrafficTotals};
use reqwest::header::RANGE;
use reqwest::{Method, StatusCode};
use serde_json::json;
use sha2::{Digest, Sha256};

const ARTIFACT_BYTES: usize = 100 * 1024;

fn content(n: usize) -> Vec<u8> {
    (0..n as u64)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect()
}

async fn heartbeat(agent: &Api) {
    let (status, body) = agent
        .send(
            Method::POST,
            "/v1/agent/heartbeat",
            Some(json!({ "applied_generation": 0 })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

/// The value of one sample line of the exposition (`name{labels} value`).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

async fn scrape(server: &TestServer) -> String {
    let response = server
        .admin()
        .request(Method::GET, "/metrics")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    response.text().await.unwrap()
}

fn totals_of(totals: &[TrafficTotals], category: TrafficCategory) -> TrafficTotals {
    totals
        .iter()
        .find(|t| t.category == category)
        .cloned()
        .unwrap_or_else(|| panic!("no {category:?} totals in {totals:?}"))
}

async fn stored(data_dir: &std::path::Path, node: &str) -> (bool, Vec<TrafficTotals>) {
    let store = store::open(data_dir).await.unwrap();
    let (since, totals) = store.node_traffic(node).await.unwrap();
    (since.is_some(), totals)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_traffic_is_counted_by_category_and_persisted() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let admin = server.admin();
    let first = server.enroll("edge-1", json!({})).await;
    let second = server.enroll("edge-2", json!({})).await;
    let agent_1 = server.node_api(&first);
    let agent_2 = server.node_api(&second);

    let bytes = content(ARTIFACT_BYTES);
    let digest = hex::encode(Sha256::digest(&bytes));
    let response = admin
        .request(Method::POST, "/v1/artifacts?name=blob")
        .body(bytes.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let path = format!("/v1/agent/artifacts/blob@sha256:{digest}");

    // edge-1: one whole download and three heartbeats.
    let response = agent_1.request(Method::GET, &path).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.bytes().await.unwrap().len(), ARTIFACT_BYTES);
    for _ in 0..3 {
        heartbeat(&agent_1).await;
    }
    // edge-2: 100 bytes of a range; counted by what flowed, not by the artifact's size.
    let response = agent_2
        .request(Method::GET, &path)
        .header(RANGE, "bytes=0-99")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(response.bytes().await.unwrap().len(), 100);
    // Refused callers are nobody's traffic.
    let (status, _) = server.api(None).get(&path).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // The fleet-wide counters move while the server runs (the download's body is
    // committed when hyper has written it, which may trail the client's read a little).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = scrape(&server).await;
        let down = sample(
            &text,
            "edgefleet_node_traffic_bytes_total{category=\"artifacts\",direction=\"down\"}",
        )
        .unwrap_or_else(|| panic!("no artifact traffic series in\n{text}"));
        if down >= (ARTIFACT_BYTES + 100) as f64 {
            let requests = sample(
                &text,
                "edgefleet_node_traffic_requests_total{category=\"control\"}",
            )
            .unwrap();
            assert!(requests >= 3.0, "{text}");
            assert!(
                !text.contains("edge-1") && !text.contains("edge-2"),
                "node names must never be label values:\n{text}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "artifact bytes down stayed at {down}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    server.stop().await;

    // Stopping flushed everything to the store.
    let (has_since, totals) = stored(dir.path(), "edge-1").await;
    assert!(has_since);
    let artifacts = totals_of(&totals, TrafficCategory::Artifacts);
    assert_eq!(artifacts.requests, 1, "{totals:?}");
    assert!(
        artifacts.bytes_down >= ARTIFACT_BYTES as u64
            && artifacts.bytes_down < ARTIFACT_BYTES as u64 + 1024,
        "body plus a head of a few hundred bytes: {artifacts:?}"
    );
    assert!(
        artifacts.bytes_up > path.len() as u64 && artifacts.bytes_up < 1024,
        "the request head only: {artifacts:?}"
    );
    let control = totals_of(&totals, TrafficCategory::Control);
    assert_eq!(control.requests, 3, "{totals:?}");
    let heartbeat_body = json!({ "applied_generation": 0 }).to_string().len() as u64;
    assert!(
        control.bytes_up
            >= 3 * (heartbeat_body + "POST /v1/agent/heartbeat HTTP/1.1\r\n".len() as u64),
        "{control:?}"
    );
    assert!(control.bytes_down > 0);
    assert_eq!(totals_of(&totals, TrafficCategory::Telemetry).requests, 0);
    assert_eq!(totals_of(&totals, TrafficCategory::Data).bytes_up, 0);

    let (_, totals) = stored(dir.path(), "edge-2").await;
    let ranged = totals_of(&totals, TrafficCategory::Artifacts);
    assert_eq!(ranged.requests, 1);
    assert!(
        ranged.bytes_down >= 100 && ranged.bytes_down < 100 + 1024,
        "{ranged:?}"
    );
    assert_eq!(totals_of(&totals, TrafficCategory::Control).requests, 0);

    // Totals survive a restart and keep adding up.
    let server = TestServer::start(dir.path()).await;
    heartbeat(&server.node_api(&first)).await;
    server.stop().await;
    let (_, totals) = stored(dir.path(), "edge-1").await;
    assert_eq!(totals_of(&totals, TrafficCategory::Control).requests, 4);
    assert_eq!(totals_of(&totals, TrafficCategory::Artifacts), artifacts);
}

/// `n` bytes of JSON lines (`LogFrame`s), as an agent uploads them.
fn log_lines(n: usize) -> Vec<u8> {
    let line = json!({
        "type": "line",
        "ts": "2026-01-01T00:00:00Z",
        "stream": "stdout",
        "line": "x".repeat(1000),
    })
    .to_string()
        + "\n";
    line.repeat(n / line.len()).into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_log_upload_is_counted_while_it_flows() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let node = server.enroll("edge-1", json!({})).await;
    let agent = server.node_api(&node);

    // An operator follows a workload's log...
    let admin = server.admin();
    let operator = tokio::spawn(async move {
        let mut response = admin
            .request(
                Method::GET,
                "/v1/nodes/edge-1/workloads/app/logs?follow=true",
            )
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let mut received = 0;
        while let Some(chunk) = response.chunk().await.unwrap() {
            received += chunk.len();
        }
        received
    });
    // ...the agent picks the session up and streams its answer.
    let (status, poll) = agent.get("/v1/agent/sessions?wait_seconds=10").await;
    assert_eq!(status, StatusCode::OK, "{poll}");
    let id = poll["sessions"][0]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no session in {poll}"))
        .to_owned();
    let (chunks, receiver) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
    let stream = futures_util::stream::unfold(receiver, |mut receiver| async move {
        let chunk = receiver.recv().await?;
        Some((Ok::<_, std::io::Error>(chunk), receiver))
    });
    let upload = tokio::spawn(
        agent
            .request(Method::POST, &format!("/v1/agent/sessions/{id}"))
            .body(reqwest::Body::wrap_stream(stream))
            .send(),
    );
    let chunk = log_lines(64 * 1024);
    for _ in 0..5 {
        chunks.send(chunk.clone()).await.unwrap();
    }

    // The upload is still open, and its bytes show already (committed per 256 KiB).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = scrape(&server).await;
        let up = sample(
            &text,
            "edgefleet_node_traffic_bytes_total{category=\"control\",direction=\"up\"}",
        )
        .unwrap_or(0.0);
        if up >= (256 * 1024) as f64 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "an open upload of {} bytes counted only {up} bytes up",
            5 * chunk.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!upload.is_finished(), "the upload is still streaming");

    drop(chunks);
    let response = upload.await.unwrap().unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(operator.await.unwrap(), 5 * chunk.len());
    server.stop().await;
    let (_, totals) = stored(dir.path(), "edge-1").await;
    let control = totals_of(&totals, TrafficCategory::Control);
    assert_eq!(
        control.requests, 2,
        "the session poll and the upload: {totals:?}"
    );
    assert!(control.bytes_up >= 5 * chunk.len() as u64, "{control:?}");
}
