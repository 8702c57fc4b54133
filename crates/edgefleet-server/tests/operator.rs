//! The operator API against a real server over HTTPS: auth, errors, apply, restart.

mod common;

use std::time::Duration;

use common::{TestServer, deployment};
use edgefleet_wire::api::{DeploymentDetail, ErrorBody};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

fn error(body: Value) -> ErrorBody {
    serde_json::from_value(body.clone())
        .unwrap_or_else(|e| panic!("not an ErrorBody ({e}): {body}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authentication_and_roles() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;

    // No token at all.
    let response = server
        .api(None)
        .request(Method::GET, "/v1/nodes")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(response.headers()["www-authenticate"], "Bearer");
    let (_, body) = common::read(response).await;
    assert_eq!(error(body).code, "unauthorized");

    // A made-up token.
    let (status, body) = server.api(Some("deadbeef.nope")).get("/v1/nodes").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(error(body).message, "unknown or invalid API token");

    // A viewer reads but cannot change anything.
    let (status, created) = server
        .admin()
        .send(
            Method::POST,
            "/v1/api-tokens",
            Some(json!({ "name": "watcher", "role": "viewer" })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{created}");
    let viewer = server.api(Some(created["token"].as_str().unwrap()));
    assert_eq!(viewer.get("/v1/nodes").await.0, StatusCode::OK);
    let apply = json!({ "deployments": [deployment("web", json!({}), "/bin/web")] });
    let (status, body) = viewer
        .send(Method::POST, "/v1/apply", Some(apply.clone()))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(
        error(body).message,
        "this needs the operator role; API token \"watcher\" has the viewer role"
    );
    let (status, _) = viewer.get("/v1/api-tokens").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "API tokens are admin only");
    let (_, deployments) = server.admin().get("/v1/deployments").await;
    assert_eq!(deployments, json!([]), "the viewer's apply changed nothing");

    // A revoked token stops working at once.
    let id = created["info"]["id"].as_str().unwrap();
    let (status, _) = server
        .admin()
        .send(Method::DELETE, &format!("/v1/api-tokens/{id}"), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = viewer.get("/v1/nodes").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(error(body).message.contains("has been revoked"));

    // The last admin token cannot be revoked.
    let (_, tokens) = server.admin().get("/v1/api-tokens").await;
    let admin_id = tokens[0]["id"].as_str().unwrap().to_owned();
    let (status, body) = server
        .admin()
        .send(Method::DELETE, &format!("/v1/api-tokens/{admin_id}"), None)
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_error_bodies() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(common::args(dir.path())).await;
    let admin = server.admin();

    // Malformed JSON: 400 with serde's line and column.
    let response = admin
        .request(Method::POST, "/v1/apply")
        .header("content-type", "application/json")
        .body("{\"deployments\": [}")
        .send()
        .await
        .unwrap();
    let (status, body) = common::read(response).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let body = error(body);
    assert_eq!(body.code, "bad_request");
    assert!(body.message.contains("line 1 column"), "{}", body.message);

    // Not JSON at all.
    let response = admin
        .request(Method::POST, "/v1/apply")
        .body("deployments: []")
        .send()
        .await
        .unwrap();
    let (status, body) = common::read(response).await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(error(body).code, "unsupported_media_type");

    // A manifest that parses but is invalid: 422 naming deployment and field.
    let bad = deployment("web", json!({}), "");
    let (status, body) = admin
        .send(
            Method::POST,
            "/v1/apply",
            Some(json!({ "deployments": [bad] })),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let body = error(body);
    assert_eq!(body.code, "invalid_manifest");
    assert!(body.message.contains("\"web\""), "{}", body.message);
    assert!(
        body.message.contains("spec.workloads[0].command"),
        "{}",
        body.message
    );
    assert!(
        body.details
            .iter()
            .any(|d| d == "field: spec.workloads[0].command"),
        "{:?}",
        body.details
    );

    // A bad selector.
    let (status, body) = admin.get("/v1/nodes?selector=site%20in%20(a").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(error(body).message.contains("invalid selector"));

    // Unknown route, wrong method, missing objects.
    assert_eq!(error(admin.get("/v1/nothing").await.1).code, "not_found");
    assert_eq!(
        admin.send(Method::PUT, "/v1/nodes", None).await.0,
        StatusCode::METHOD_NOT_ALLOWED
    );
    let (status, body) = admin
        .send(Method::DELETE, "/v1/deployments/ghost", None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(error(body).message, "deployment \"ghost\" not found");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_are_refused_with_413() {
    let dir = tempfile::tempdir().unwrap();
    let args = edgefleet_server::ServerArgs {
        max_body_bytes: 4096,
        ..common::args(dir.path())
    };
    let server = TestServer::start_with(args).await;
    let big = deployment("web", json!({}), &"x".repeat(8 * 1024 * 1024));
    let (status, body) = server
        .admin()
        .send(
            Method::POST,
            "/v1/apply",
            Some(json!({ "deployments": [big] })),
        )
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    let body = error(body);
    assert_eq!(body.code, "payload_too_large");
    assert!(body.message.contains("4096 bytes"), "{}", body.message);
    // The server is fine afterwards, and a small body passes.
    let small = deployment("web", json!({}), "/bin/web");
    let (status, body) = server
        .admin()
        .send(
            Method::POST,
            "/v1/apply",
            Some(json!({ "deployments": [small] })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_creates_revisions_only_when_the_spec_changes() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let node = server.enroll("edge-1", json!({ "site": "a" })).await;
    let admin = server.admin();
    let agent = server.node_api(&node);
    // Heard from: a rollout only releases nodes that are online.
    let (status, _) = agent
        .send(
            Method::POST,
            "/v1/agent/heartbeat",
            Some(json!({ "applied_generation": 0 })),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let apply = |command: &str| json!({ "deployments": [deployment("web", json!({ "matchLabels": { "site": "a" } }), command)] });

    let (status, first) = admin
        .send(Method::POST, "/v1/apply", Some(apply("/bin/web")))
        .await;
    assert_eq!(status, StatusCode::OK, "{first}");
    assert_eq!(first["results"][0]["action"], "created");
    assert_eq!(first["results"][0]["selected_nodes"], 1);
    let (_, again) = admin
        .send(Method::POST, "/v1/apply", Some(apply("/bin/web")))
        .await;
    assert_eq!(again["results"][0]["action"], "unchanged");
    assert_eq!(
        again["results"][0]["revision"],
        first["results"][0]["revision"]
    );
    let (_, detail) = admin.get("/v1/deployments/web").await;
    let detail: DeploymentDetail = serde_json::from_value(detail).unwrap();
    assert_eq!(detail.summary.revision_count, 1);
    assert_eq!(detail.summary.selected, 1);
    assert_eq!(
        detail.summary.up_to_date, 0,
        "the node has not reported yet"
    );

    // The rollout releases the node (its only step) within a tick; then it reports the
    // workload running at the desired generation: up to date.
    let mut desired = json!(null);
    for _ in 0..50 {
        desired = agent.get("/v1/agent/desired").await.1;
        if !desired["workloads"].as_array().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let workload = &desired["workloads"][0];
    let report = json!({
        "node": "edge-1",
        "applied_generation": desired["generation"],
        "workloads": [{
            "name": "app", "deployment": "web", "revision": workload["revision"],
            "spec_hash": workload["spec_hash"], "state": "running"
        }]
    });
    assert_eq!(
        agent
            .send(Method::PUT, "/v1/agent/status", Some(report))
            .await
            .0,
        StatusCode::OK
    );
    let (_, list) = admin.get("/v1/deployments").await;
    assert_eq!(
        (list[0]["up_to_date"].as_u64(), list[0]["running"].as_u64()),
        (Some(1), Some(1)),
        "{list}"
    );

    let (_, updated) = admin
        .send(Method::POST, "/v1/apply", Some(apply("/bin/web2")))
        .await;
    assert_eq!(updated["results"][0]["action"], "updated");
    assert_ne!(
        updated["results"][0]["revision"],
        first["results"][0]["revision"]
    );
    let (_, detail) = admin.get("/v1/deployments/web").await;
    assert_eq!(detail["summary"]["revision_count"], 2);
    assert_eq!(detail["revisions"][0]["number"], 2);
    assert_eq!(detail["revisions"][0]["created_by"], "token:admin");
    assert_eq!(
        detail["summary"]["up_to_date"], 0,
        "the node runs the old spec"
    );

    let (_, audit) = admin.get("/v1/audit?limit=2").await;
    assert_eq!(audit.as_array().unwrap().len(), 2);
    assert_eq!(audit[0]["action"], "apply");
    assert_eq!(audit[0]["object"], "deployment/web");

    assert_eq!(
        admin
            .send(Method::DELETE, "/v1/deployments/web", None)
            .await
            .0,
        StatusCode::OK
    );
    let (_, desired_after) = agent.get("/v1/agent/desired").await;
    assert_eq!(desired_after["workloads"], json!([]));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let admin_token = server
        .info
        .admin_token
        .clone()
        .expect("the first start creates the admin token");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("admin.token"))
            .unwrap()
            .trim(),
        admin_token
    );
    let node = server.enroll("keeper", json!({})).await;
    let apply = json!({ "deployments": [deployment("web", json!({}), "/bin/web")] });
    let (_, applied) = server
        .admin()
        .send(Method::POST, "/v1/apply", Some(apply))
        .await;
    let first_info = server.info.clone();
    server.stop().await;

    let server = TestServer::start(dir.path()).await;
    assert_eq!(
        server.info.admin_token, None,
        "the admin token is shown only once"
    );
    assert_eq!(server.info.ca_sha256, first_info.ca_sha256);
    let admin = server.api(Some(&admin_token));
    let (status, detail) = admin.get("/v1/deployments/web").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        detail["summary"]["revision"],
        applied["results"][0]["revision"]
    );
    let (status, body) = server
        .node_api(&node)
        .send(
            Method::POST,
            "/v1/agent/heartbeat",
            Some(json!({ "applied_generation": 1 })),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::OK,
        "the node's certificate survives too: {body}"
    );
    let (_, nodes) = admin.get("/v1/nodes").await;
    assert_eq!(nodes[0]["name"], "keeper");
    assert_eq!(nodes[0]["applied_generation"], 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_the_port_does_not_hurt_other_connections() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut garbage = tokio::net::TcpStream::connect(server.info.local_addr)
        .await
        .unwrap();
    garbage
        .write_all(b"GET / HTTP/1.1\r\n\r\n\x00\x01\x02garbage")
        .await
        .unwrap();
    let (status, body) = server.api(None).get("/healthz").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "ok");
    assert_eq!(server.api(None).get("/readyz").await.0, StatusCode::OK);
    drop(garbage);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_long_polls_and_returns() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let node = server.enroll("sleeper", json!({})).await;
    let agent = server.node_api(&node);
    let (_, body) = agent.get("/v1/agent/desired").await;
    let generation = body["generation"].as_u64().unwrap();
    let poll = tokio::spawn(async move {
        agent
            .get(&format!(
                "/v1/agent/desired?known_generation={generation}&wait_seconds=60"
            ))
            .await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = std::time::Instant::now();
    server.stop().await;
    let (status, body) = tokio::time::timeout(Duration::from_secs(2), poll)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}
