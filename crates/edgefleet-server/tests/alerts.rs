//! Alerts through the real server: rules applied with the API, nodes enrolled and
//! heartbeating (or not) over mTLS, and a real webhook receiver on 127.0.0.1 that the
//! server posts notifications to.

// Test code: a panic with the failing call is exactly what a test wants.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode as AxumStatus;
use common::{TestNode, TestServer};
use edgefleet_wire::DurationSpec;
use edgefleet_wire::alert::{
    Alert, AlertDetail, AlertRuleApplyResult, AlertRuleInfo, AlertState, AlertSubject,
    DeliveryState, NotificationStatus, Silence, WebhookPayload,
};
use edgefleet_wire::api::{ApplyAction, AuditEntry};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// How often the test servers evaluate rules.
const INTERVAL: Duration = Duration::from_millis(200);

// ---- a webhook receiver ----

#[derive(Default)]
struct Received {
    /// Every request, accepted or not, in arrival order.
    requests: Vec<WebhookPayload>,
    /// Answer 500 to this many requests first.
    fail_first: usize,
}

/// An HTTP server on 127.0.0.1 that records webhook payloads; stopped when dropped.
struct Receiver {
    url: String,
    received: Arc<Mutex<Received>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn hook(
    State(received): State<Arc<Mutex<Received>>>,
    Json(payload): Json<WebhookPayload>,
) -> AxumStatus {
    let mut received = received.lock().unwrap();
    received.requests.push(payload);
    if received.requests.len() <= received.fail_first {
        AxumStatus::INTERNAL_SERVER_ERROR
    } else {
        AxumStatus::NO_CONTENT
    }
}

impl Receiver {
    async fn start(fail_first: usize) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let received = Arc::new(Mutex::new(Received {
            requests: Vec::new(),
            fail_first,
        }));
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(hook))
            .with_state(received.clone());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self {
            url,
            received,
            task,
        }
    }

    fn requests(&self) -> Vec<WebhookPayload> {
        self.received.lock().unwrap().requests.clone()
    }

    /// The payloads answered with success: what was delivered.
    fn delivered(&self) -> Vec<WebhookPayload> {
        let received = self.received.lock().unwrap();
        received
            .requests
            .iter()
            .skip(received.fail_first)
            .cloned()
            .collect()
    }

    /// Waits until a delivered payload satisfies `what`, and returns it.
    async fn wait_for(
        &self,
        description: &str,
        timeout: Duration,
        what: impl Fn(&WebhookPayload) -> bool,
    ) -> WebhookPayload {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(found) = self.delivered().into_iter().find(|p| what(p)) {
                return found;
            }
            assert!(
                Instant::now() < deadline,
                "no webhook {description} within {timeout:?}; received: {:#?}",
                self.requests()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

// ---- helpers ----

fn is_node(payload: &WebhookPayload, name: &str) -> bool {
    matches!(&payload.alert.subject, AlertSubject::Node { name: n } if n == name)
}

fn server_args(data_dir: &std::path::Path) -> edgefleet_server::ServerArgs {
    let mut args = common::args(data_dir);
    args.alerts.alert_interval = DurationSpec(INTERVAL);
    args
}

async fn apply(server: &TestServer, rules: Value) -> Vec<AlertRuleApplyResult> {
    let (status, body) = server
        .admin()
        .send(Method::POST, "/v1/alert-rules", Some(rules))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    serde_json::from_value(body).unwrap()
}

fn rule(name: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "edgefleet.io/v1",
        "kind": "AlertRule",
        "metadata": { "name": name },
        "spec": spec,
    })
}

async fn heartbeat(server: &TestServer, node: &TestNode) {
    let (status, body) = server
        .node_api(node)
        .send(
            Method::POST,
            "/v1/agent/heartbeat",
            Some(json!({ "applied_generation": 0 })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

async fn alerts(server: &TestServer, state: &str) -> Vec<Alert> {
    let (status, body) = server
        .admin()
        .get(&format!("/v1/alerts?state={state}"))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    serde_json::from_value(body).unwrap()
}

/// Polls `check` until it returns something, failing after `timeout`.
async fn eventually<T, F, Fut>(description: &str, timeout: Duration, check: F) -> T
where
    F: Fn() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "{description}: not within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---- tests ----

/// A node that stops heartbeating fires an offline alert; the receiver fails twice, then
/// takes it: one notification, three attempts, recorded. The node comes back: resolved.
#[tokio::test]
async fn an_offline_node_is_notified_with_retries_and_resolves() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start(2).await;
    let mut args = server_args(dir.path());
    args.alerts.alert_webhooks = vec![receiver.url.clone()];
    let server = TestServer::start_with(args).await;
    let node = server.enroll("gw-1", json!({ "site": "berlin" })).await;
    heartbeat(&server, &node).await;
    let applied = apply(
        &server,
        json!([rule(
            "offline",
            json!({
                "severity": "critical",
                "for": "2s",
                "condition": { "nodeOffline": {} },
                "siteGrouping": { "enabled": false },
            })
        )]),
    )
    .await;
    assert_eq!(applied[0].action, ApplyAction::Created);

    let fired = receiver
        .wait_for("firing gw-1", Duration::from_secs(20), |p| {
            p.status == NotificationStatus::Firing && is_node(p, "gw-1")
        })
        .await;
    assert_eq!(fired.version, 1);
    assert_eq!(fired.alert.rule, "offline");
    assert_eq!(fired.alert.state, AlertState::Firing);
    assert_eq!(fired.alert.labels["site"], "berlin");
    assert!(
        fired
            .alert
            .summary
            .starts_with("node gw-1 has not been heard from for"),
        "{}",
        fired.alert.summary
    );
    // Three requests for one notification: 500, 500, accepted; same notification id.
    let requests = receiver.requests();
    assert_eq!(requests.len(), 3, "{requests:#?}");
    assert!(
        requests
            .iter()
            .all(|r| r.notification == fired.notification)
    );

    let firing = alerts(&server, "firing").await;
    assert_eq!(firing.len(), 1);
    assert_eq!(firing[0].id, fired.alert.id);
    let (status, body) = server
        .admin()
        .get(&format!("/v1/alerts/{}", fired.alert.id))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let detail: AlertDetail = serde_json::from_value(body).unwrap();
    assert_eq!(detail.deliveries.len(), 1, "{detail:#?}");
    let delivery = &detail.deliveries[0];
    assert_eq!(delivery.state, DeliveryState::Delivered);
    assert_eq!(delivery.attempts, 3);
    assert_eq!(delivery.receiver, receiver.url);
    assert!(
        delivery
            .last_error
            .as_deref()
            .unwrap_or_default()
            .contains("500"),
        "{delivery:?}"
    );

    // Back: resolved, notified once.
    heartbeat(&server, &node).await;
    let resolved = receiver
        .wait_for("resolved gw-1", Duration::from_secs(10), |p| {
            p.status == NotificationStatus::Resolved
        })
        .await;
    assert_eq!(resolved.alert.id, fired.alert.id);
    assert_eq!(resolved.alert.state, AlertState::Resolved);
    assert!(resolved.alert.resolved_at.is_some());
    assert!(alerts(&server, "firing").await.is_empty());
    let history = alerts(&server, "all").await;
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].state, AlertState::Resolved);
    // Keep it alive a little: nothing more is sent.
    for _ in 0..5 {
        heartbeat(&server, &node).await;
        tokio::time::sleep(INTERVAL).await;
    }
    assert_eq!(receiver.delivered().len(), 2, "{:#?}", receiver.requests());
    server.stop().await;
}

/// Three nodes of a site go dark: one site alert, no per-node alerts. A silenced node's
/// alert is tracked but not sent until the silence ends.
#[tokio::test]
async fn a_dark_site_is_one_alert_and_silences_hold_notifications() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start(0).await;
    let server = TestServer::start_with(server_args(dir.path())).await;
    let mut berlin = Vec::new();
    for name in ["b-1", "b-2", "b-3"] {
        berlin.push(server.enroll(name, json!({ "site": "berlin" })).await);
    }
    let paris = server.enroll("p-1", json!({ "site": "paris" })).await;
    for node in berlin.iter().chain([&paris]) {
        heartbeat(&server, node).await;
    }
    apply(
        &server,
        json!([rule(
            "offline",
            json!({
                "for": "2s",
                "condition": { "nodeOffline": {} },
                "siteGrouping": { "window": "30s" },
                "webhooks": [receiver.url],
            })
        )]),
    )
    .await;
    // Paris is silenced and keeps talking for now; Berlin goes dark.
    let (status, body) = server
        .admin()
        .send(
            Method::POST,
            "/v1/silences",
            Some(json!({
                "matcher": { "node": "p-1" },
                "duration": "1h",
                "comment": "moving the gateway",
            })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let silence: Silence = serde_json::from_value(body).unwrap();
    assert_eq!(silence.created_by, "token:admin");

    let site = receiver
        .wait_for(
            "site berlin",
            Duration::from_secs(20),
            |p| matches!(&p.alert.subject, AlertSubject::Site { value, .. } if value == "berlin"),
        )
        .await;
    assert_eq!(site.status, NotificationStatus::Firing);
    assert_eq!(site.alert.labels["site"], "berlin");
    // Paris stops talking now; Berlin's nodes stay dark long enough to have fired alone
    // (for + window = 32 s is too long for a test: the engine's unit tests cover that
    // the site suppresses them; here we check none was sent while the site fires).
    let until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < until {
        tokio::time::sleep(INTERVAL).await;
    }
    let paris_alert = eventually("p-1 silenced", Duration::from_secs(10), || async {
        alerts(&server, "firing")
            .await
            .into_iter()
            .find(|a| matches!(&a.subject, AlertSubject::Node { name } if name == "p-1"))
    })
    .await;
    assert_eq!(paris_alert.state, AlertState::Silenced);
    assert_eq!(paris_alert.silenced_by, std::slice::from_ref(&silence.id));
    let firing = alerts(&server, "firing").await;
    let subjects: Vec<String> = firing.iter().map(|a| a.subject.to_string()).collect();
    assert_eq!(subjects.len(), 2, "{subjects:?}");
    assert!(
        subjects.contains(&"site site=berlin".to_owned()),
        "{subjects:?}"
    );
    // Only the site was sent: no node of Berlin, not the silenced node.
    let sent: Vec<String> = receiver
        .delivered()
        .iter()
        .map(|p| format!("{} {}", p.status.as_str(), p.alert.subject))
        .collect();
    assert_eq!(sent, ["firing site site=berlin"]);

    // The silence ends: the still-firing alert is notified now.
    let (status, body) = server
        .admin()
        .send(
            Method::DELETE,
            &format!("/v1/silences/{}", silence.id),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let fired = receiver
        .wait_for("p-1 after the silence", Duration::from_secs(10), |p| {
            is_node(p, "p-1")
        })
        .await;
    assert_eq!(fired.status, NotificationStatus::Firing);
    assert_eq!(fired.alert.id, paris_alert.id);

    // A Berlin node comes back: 2 of 3 still dark, the site alert stays.
    heartbeat(&server, &berlin[0]).await;
    tokio::time::sleep(INTERVAL * 4).await;
    assert!(
        alerts(&server, "firing")
            .await
            .iter()
            .any(|a| a.id == site.alert.id)
    );
    // All back: the site resolves.
    for node in &berlin {
        heartbeat(&server, node).await;
    }
    let resolved = receiver
        .wait_for("site resolved", Duration::from_secs(10), |p| {
            p.status == NotificationStatus::Resolved && p.alert.id == site.alert.id
        })
        .await;
    assert_eq!(resolved.alert.state, AlertState::Resolved);

    // Audit: the rule and the silence.
    let (status, body) = server.admin().get("/v1/audit?limit=100").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let audit: Vec<AuditEntry> = serde_json::from_value(body).unwrap();
    let objects: Vec<String> = audit
        .iter()
        .map(|e| format!("{} {}", e.action, e.object))
        .collect();
    assert!(
        objects.contains(&"apply alert-rule/offline".to_owned()),
        "{objects:?}"
    );
    let silence_object = format!("silence/{}", silence.id);
    assert!(
        objects.contains(&format!("create {silence_object}")),
        "{objects:?}"
    );
    assert!(
        objects.contains(&format!("delete {silence_object}")),
        "{objects:?}"
    );
    server.stop().await;
}

/// Certificates that expire soon fire; the state survives a restart without notifying
/// again; deleting the rule resolves its alerts. Rule validation names the field.
#[tokio::test]
async fn cert_expiry_fires_once_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start(0).await;
    let mut args = server_args(dir.path());
    args.node_cert_validity = DurationSpec::from_secs(60);
    let server = TestServer::start_with(args.clone()).await;
    let _node = server.enroll("gw-1", json!({})).await;

    // Invalid: the field is named.
    let (status, body) = server
        .admin()
        .send(
            Method::POST,
            "/v1/alert-rules",
            Some(json!([rule("disk", json!({
                "condition": { "metric": { "name": "disk.used_percent", "op": "=>", "value": 90 } },
            }))])),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(
        body["message"],
        "invalid manifest for alert rule \"disk\": field spec.condition.metric.op: must be one \
         of >, >=, <, <= (found \"=>\")"
    );
    // Unknown fields are refused too (manifests are strict).
    let (status, body) = server
        .admin()
        .send(
            Method::POST,
            "/v1/alert-rules",
            Some(json!([rule(
                "x",
                json!({ "condition": { "nodeOffline": {} }, "fore": "1m" })
            )])),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body["message"].as_str().unwrap().contains("fore"), "{body}");

    let cert_rule = rule(
        "cert",
        json!({
            "condition": { "certExpiry": { "within": "1h" } },
            "webhooks": [receiver.url],
        }),
    );
    apply(&server, json!([cert_rule.clone()])).await;
    let fired = receiver
        .wait_for("cert gw-1", Duration::from_secs(10), |p| is_node(p, "gw-1"))
        .await;
    assert_eq!(fired.alert.rule, "cert");
    assert!(
        fired
            .alert
            .summary
            .starts_with("the certificate of node gw-1 expires at"),
        "{}",
        fired.alert.summary
    );
    // Applying the same rule again changes nothing.
    assert_eq!(
        apply(&server, json!([cert_rule])).await[0].action,
        ApplyAction::Unchanged
    );
    let (status, body) = server.admin().get("/v1/alert-rules").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let rules: Vec<AlertRuleInfo> = serde_json::from_value(body).unwrap();
    assert_eq!(rules.len(), 1);
    assert_eq!(rules[0].firing, 1);

    // Restart: the alert is the same and nothing is sent again.
    server.stop().await;
    let server = TestServer::start_with(args).await;
    tokio::time::sleep(INTERVAL * 6).await;
    let firing = alerts(&server, "firing").await;
    assert_eq!(firing.len(), 1);
    assert_eq!(firing[0].id, fired.alert.id);
    assert_eq!(receiver.delivered().len(), 1, "{:#?}", receiver.requests());

    // Deleting the rule resolves its alert, to the rule's receiver.
    let (status, body) = server
        .admin()
        .send(Method::DELETE, "/v1/alert-rules/cert", None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let resolved = receiver
        .wait_for("cert resolved", Duration::from_secs(10), |p| {
            p.status == NotificationStatus::Resolved
        })
        .await;
    assert_eq!(resolved.alert.id, fired.alert.id);
    let (status, _) = server
        .admin()
        .send(Method::DELETE, "/v1/alert-rules/cert", None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // Bad filters and silences are refused with what would be right.
    let (status, body) = server.admin().get("/v1/alerts?state=open").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = server
        .admin()
        .send(
            Method::POST,
            "/v1/silences",
            Some(json!({ "matcher": {}, "duration": "1h" })),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("field matcher: the matcher is empty"),
        "{body}"
    );
    server.stop().await;
}

/// Uploads a telemetry batch gzip-compressed, as agents do.
async fn upload(server: &TestServer, node: &TestNode, batch: Value) {
    use std::io::Write;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(batch.to_string().as_bytes()).unwrap();
    let body = encoder.finish().unwrap();
    let response = server
        .node_api(node)
        .request(Method::POST, "/v1/agent/telemetry")
        .header("content-type", "application/json")
        .header("content-encoding", "gzip")
        .body(body)
        .send()
        .await
        .unwrap();
    let (status, body) = common::read(response).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

/// A metrics batch of one record with `disk.used_percent` samples.
fn disk_batch(seq: u64, root: f64, data: f64, dropped: u64) -> Value {
    let at = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    json!({
        "outbox": "ob-1",
        "streams": [{
            "stream": "metrics",
            "records": [{
                "seq": seq,
                "time": at,
                "data": { "json": { "time": at, "samples": [
                    { "name": "disk.used_percent", "labels": { "mount": "/" }, "value": root },
                    { "name": "disk.used_percent", "labels": { "mount": "/data" }, "value": data },
                ] } }
            }]
        }],
        "dropped": [{ "stream": "camera", "reason": "full", "records": dropped, "bytes": dropped * 100 }],
    })
}

/// Metric and outbox rules fire from telemetry the node uploaded, and resolve with it.
#[tokio::test]
async fn metric_and_outbox_rules_follow_uploaded_telemetry() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start(0).await;
    let mut args = server_args(dir.path());
    args.alerts.alert_webhooks = vec![receiver.url.clone()];
    let server = TestServer::start_with(args).await;
    let node = server.enroll("gw-1", json!({ "site": "berlin" })).await;
    apply(
        &server,
        json!([
            rule("disk-full", json!({
                "for": "1s",
                "condition": { "metric": {
                    "name": "disk.used_percent", "labels": { "mount": "/" }, "op": ">", "value": 90
                } },
            })),
            rule("drops", json!({ "for": "1h", "condition": { "outboxDropping": { "stream": "camera" } } })),
        ]),
    )
    .await;
    upload(&server, &node, disk_batch(1, 95.0, 99.0, 0)).await;
    let disk = receiver
        .wait_for("disk-full", Duration::from_secs(10), |p| {
            p.alert.rule == "disk-full"
        })
        .await;
    assert_eq!(disk.status, NotificationStatus::Firing);
    // Only the watched mount; the other is over the threshold too but not selected.
    assert_eq!(disk.alert.labels["mount"], "/");
    assert_eq!(disk.alert.last_value, Some(95.0));
    assert!(
        alerts(&server, "firing")
            .await
            .iter()
            .all(|a| a.rule == "disk-full"),
        "no drops yet"
    );
    upload(&server, &node, disk_batch(2, 40.0, 99.0, 7)).await;
    let resolved = receiver
        .wait_for("disk-full resolved", Duration::from_secs(10), |p| {
            p.alert.rule == "disk-full" && p.status == NotificationStatus::Resolved
        })
        .await;
    assert_eq!(resolved.alert.id, disk.alert.id);
    let drops = receiver
        .wait_for("drops", Duration::from_secs(10), |p| {
            p.alert.rule == "drops"
        })
        .await;
    assert_eq!(drops.alert.last_value, Some(7.0));
    assert!(
        drops.alert.summary.contains("camera"),
        "{}",
        drops.alert.summary
    );
    server.stop().await;
}
