//! `GET /metrics` scraped by a real Prometheus (the `prometheus` binary, Debian package
//! `prometheus`), over HTTPS verified against the server's CA, with a viewer API token.
//! The test starts Prometheus itself on a free loopback port and kills it by pid when it
//! ends; without the binary it fails and says how to install it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::TestServer;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// How long Prometheus gets to start, scrape and show each expected value.
const PROMETHEUS_TIMEOUT: Duration = Duration::from_secs(60);

fn prometheus_binary() -> PathBuf {
    let path = std::env::var_os("EDGEFLEET_TEST_PROMETHEUS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/prometheus"));
    assert!(
        path.is_file(),
        "this test needs Prometheus at {} (install it with `apt-get install -y prometheus`, \
         or point EDGEFLEET_TEST_PROMETHEUS at the binary)",
        path.display()
    );
    path
}

/// A Prometheus process, killed (by its pid) and reaped when dropped.
struct Prometheus {
    child: Child,
    base: String,
    log: PathBuf,
}

impl Prometheus {
    fn start(dir: &Path, config: &str) -> Self {
        let config_path = dir.join("prometheus.yml");
        std::fs::write(&config_path, config).unwrap();
        let port = free_port();
        let log = dir.join("prometheus.log");
        let log_file = std::fs::File::create(&log).unwrap();
        let child = Command::new(prometheus_binary())
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file)
            .spawn()
            .expect("starting prometheus");
        Self {
            child,
            base: format!("http://127.0.0.1:{port}"),
            log,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `GET /api/v1/<path>` → the `data` of a successful answer, or `None` while
    /// Prometheus is not answering yet.
    async fn api(
        &self,
        client: &reqwest::Client,
        path: &str,
        query: &[(&str, &str)],
    ) -> Option<Value> {
        let response = client
            .get(format!("{}/api/v1/{path}", self.base))
            .query(query)
            .send()
            .await
            .ok()?;
        let body: Value = response.json().await.ok()?;
        (body["status"] == "success").then(|| body["data"].clone())
    }

    /// Waits until `check` accepts the data of an API call; fails with what was last
    /// seen and Prometheus' log.
    async fn wait_for(
        &mut self,
        client: &reqwest::Client,
        what: &str,
        path: &str,
        query: &[(&str, &str)],
        check: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + PROMETHEUS_TIMEOUT;
        let mut last = Value::Null;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "prometheus exited ({status}) while waiting for {what}:\n{}",
                    self.log()
                );
            }
            if let Some(data) = self.api(client, path, query).await {
                if check(&data) {
                    return data;
                }
                last = data;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not seen within {PROMETHEUS_TIMEOUT:?}; last answer: {last}\nprometheus log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The value of the one result of an instant query's vector, selected by a label.
fn value_where(data: &Value, label: &str, wanted: &str) -> Option<f64> {
    data["result"]
        .as_array()?
        .iter()
        .find(|r| r["metric"][label] == wanted)?["value"][1]
        .as_str()?
        .parse()
        .ok()
}

fn single_value(data: &Value) -> Option<f64> {
    let results = data["result"].as_array()?;
    match results.as_slice() {
        [only] => only["value"][1].as_str()?.parse().ok(),
        _ => None,
    }
}

async fn viewer_token(server: &TestServer) -> String {
    let (status, body) = server
        .admin()
        .send(
            Method::POST,
            "/v1/api-tokens",
            Some(json!({ "name": "prometheus", "role": "viewer" })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["token"]
        .as_str()
        .unwrap_or_else(|| panic!("no token in {body}"))
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_need_a_token_and_use_the_text_format() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let (status, _) = server.api(None).get("/metrics").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let token = viewer_token(&server).await;
    let response = server
        .api(Some(&token))
        .request(Method::GET, "/metrics")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let text = response.text().await.unwrap();
    for line in [
        "# TYPE edgefleet_nodes gauge\n",
        "edgefleet_nodes{status=\"ready\"} 0\n",
        "# TYPE edgefleet_http_request_duration_seconds histogram\n",
        "edgefleet_telemetry_samples_ingested_total 0\n",
        "edgefleet_webhook_queue_depth 0\n",
        "# TYPE process_cpu_seconds_total counter\n",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("server")).await;
    let token = viewer_token(&server).await;
    let scrape_dir = dir.path().join("prometheus");
    std::fs::create_dir_all(&scrape_dir).unwrap();
    let ca = scrape_dir.join("ca.pem");
    std::fs::write(&ca, &server.info.ca_pem).unwrap();
    let token_file = scrape_dir.join("token");
    std::fs::write(&token_file, &token).unwrap();
    let target = server.info.local_addr.to_string();
    let config = format!(
        r#"global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: edgefleet
    scheme: https
    metrics_path: /metrics
    tls_config:
      ca_file: {ca}
      insecure_skip_verify: false
    authorization:
      type: Bearer
      credentials_file: {token}
    static_configs:
      - targets: ["{target}"]
"#,
        ca = ca.display(),
        token = token_file.display(),
    );
    let mut prometheus = Prometheus::start(&scrape_dir, &config);
    // Plain HTTP to Prometheus; the server's client brings the TLS provider reqwest needs.
    let client = server.client(None);

    // A fleet to look at: one node heard from, one never; some API calls, one 404.
    let heard = server.enroll("edge-1", json!({})).await;
    server.enroll("edge-2", json!({})).await;
    let (status, body) = server
        .node_api(&heard)
        .send(
            Method::POST,
            "/v1/agent/heartbeat",
            Some(json!({ "applied_generation": 0 })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let admin = server.admin();
    for _ in 0..3 {
        assert_eq!(admin.get("/v1/nodes").await.0, StatusCode::OK);
    }
    assert_eq!(admin.get("/v1/nodes/edge-1").await.0, StatusCode::OK);
    assert_eq!(admin.get("/v1/nodes/nope").await.0, StatusCode::NOT_FOUND);
    assert_eq!(
        admin.get("/v1/no-such-route").await.0,
        StatusCode::NOT_FOUND
    );

    let targets = prometheus
        .wait_for(&client, "the target to be up", "targets", &[], |data| {
            data["activeTargets"][0]["health"] == "up"
        })
        .await;
    assert_eq!(targets["activeTargets"].as_array().unwrap().len(), 1);

    let nodes = prometheus
        .wait_for(
            &client,
            "edgefleet_nodes by status",
            "query",
            &[("query", "edgefleet_nodes")],
            |data| {
                value_where(data, "status", "ready") == Some(1.0)
                    && value_where(data, "status", "unknown") == Some(1.0)
            },
        )
        .await;
    assert_eq!(value_where(&nodes, "status", "notready"), Some(0.0));
    assert_eq!(value_where(&nodes, "status", "revoked"), Some(0.0));

    let listed = prometheus
        .wait_for(
            &client,
            "the latency histogram of GET /v1/nodes",
            "query",
            &[(
                "query",
                r#"edgefleet_http_request_duration_seconds_count{route="/v1/nodes",method="get",status="2xx"}"#,
            )],
            |data| single_value(data).is_some_and(|v| v >= 3.0),
        )
        .await;
    assert!(single_value(&listed).is_some());
    prometheus
        .wait_for(
            &client,
            "the route template, not the path, of GET /v1/nodes/nope",
            "query",
            &[(
                "query",
                r#"edgefleet_http_requests_total{route="/v1/nodes/{name}",status="4xx"}"#,
            )],
            |data| single_value(data) == Some(1.0),
        )
        .await;
    prometheus
        .wait_for(
            &client,
            "unmatched requests",
            "query",
            &[(
                "query",
                r#"edgefleet_http_requests_total{route="unmatched",method="get",status="4xx"}"#,
            )],
            |data| single_value(data) == Some(1.0),
        )
        .await;
    prometheus
        .wait_for(
            &client,
            "node traffic by category",
            "query",
            &[(
                "query",
                r#"edgefleet_node_traffic_requests_total{category="control"}"#,
            )],
            |data| single_value(data).is_some_and(|v| v >= 1.0),
        )
        .await;
    for (what, query) in [
        ("build info", "edgefleet_build_info"),
        ("resident memory", "process_resident_memory_bytes"),
        ("open file descriptors", "process_open_fds"),
    ] {
        prometheus
            .wait_for(&client, what, "query", &[("query", query)], |data| {
                single_value(data).is_some_and(|v| v > 0.0)
            })
            .await;
    }

    // No series of the server carries a node name (or any other unbounded value).
    let series = prometheus
        .wait_for(
            &client,
            "the server's series",
            "series",
            &[("match[]", r#"{job="edgefleet"}"#)],
            |data| data.as_array().is_some_and(|s| s.len() > 50),
        )
        .await;
    for labels in series.as_array().unwrap() {
        for (name, value) in labels.as_object().unwrap() {
            let value = value.as_str().unwrap_or_default();
            assert!(
                !value.contains("edge-1") && !value.contains("edge-2") && !value.contains("nope"),
                "label {name}={value:?} carries an unbounded value: {labels}"
            );
        }
    }
    drop(prometheus);
    server.stop().await;
}
