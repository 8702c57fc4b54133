//! Enrollment and the node channel against a real server over HTTPS.

mod common;

use std::time::{Duration, Instant};

use common::{TestServer, deployment};
use edgefleet_core::lifecycle::TokenState;
use edgefleet_server::store::{JoinTokenRecord, NewAudit};
use edgefleet_tls::{ClientIdentity, NodeKey};
use edgefleet_wire::api::{DesiredState, NodeDetail, RenewResponse};
use reqwest::{Method, StatusCode};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrollment_happy_path() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let token = server
        .join_token(json!({ "ttl_seconds": 600, "uses": 1, "labels": { "site": "a" }, "description": "lab" }))
        .await;
    assert_eq!(token.info.state, "active");
    let join = edgefleet_wire::JoinString::decode(&token.join).unwrap();
    assert_eq!(join.url, server.info.url);
    assert_eq!(join.ca_sha256, server.info.ca_sha256);

    let (status, body, node) = server
        .try_enroll(
            &join.secret,
            "gw-1",
            json!({ "site": "b", "role": "gateway" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let node = node.unwrap();
    let cert = edgefleet_tls::cert_info(&node.enrolled.certificate_pem).unwrap();
    assert_eq!(cert.common_name, "gw-1");
    let validity = node.enrolled.not_after - time::OffsetDateTime::now_utc();
    assert!(
        validity > time::Duration::days(6) && validity <= time::Duration::days(7),
        "{validity}"
    );
    assert_eq!(node.enrolled.ca_pem, server.info.ca_pem);

    // The node can use its certificate at once.
    let agent = server.node_api(&node);
    let (status, body) = agent
        .send(
            Method::POST,
            "/v1/agent/heartbeat",
            Some(json!({ "applied_generation": 0 })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let (status, body) = server.admin().get("/v1/nodes/gw-1").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let detail: NodeDetail = serde_json::from_value(body).unwrap();
    assert_eq!(detail.summary.labels["site"], "a", "the token's labels win");
    assert_eq!(detail.summary.labels["role"], "gateway");
    assert_eq!(detail.summary.status.as_str(), "Ready");
    assert_eq!(
        detail.summary.certificate_not_after,
        Some(node.enrolled.not_after)
    );
    assert_eq!(detail.recent_changes[0].action, "enroll");
    assert_eq!(detail.recent_changes[0].actor, "node:gw-1");

    let (_, tokens) = server.admin().get("/v1/tokens").await;
    assert_eq!(tokens[0]["uses"], 1);
    assert_eq!(tokens[0]["state"], "used-up");

    // The name is taken now.
    let again = server.join_token(json!({ "ttl_seconds": 600 })).await;
    let secret = edgefleet_wire::JoinString::decode(&again.join)
        .unwrap()
        .secret;
    let (status, body, _) = server.try_enroll(&secret, "gw-1", json!({})).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("revoke it first"),
        "{body}"
    );
    let (status, body, _) = server.try_enroll(&secret, "Bad_Name", json!({})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("--name"),
        "{body}"
    );

    let (status, ca) = server.api(None).get("/v1/ca").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ca["ca_pem"], server.info.ca_pem);
    assert_eq!(ca["ca_sha256"], server.info.ca_sha256);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_used_up_revoked_and_wrong_tokens_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let message =
        |body: &serde_json::Value| body["message"].as_str().unwrap_or_default().to_owned();

    // Used up.
    let once = server
        .join_token(json!({ "ttl_seconds": 600, "uses": 1 }))
        .await;
    let secret = edgefleet_wire::JoinString::decode(&once.join)
        .unwrap()
        .secret;
    assert_eq!(
        server.try_enroll(&secret, "n1", json!({})).await.0,
        StatusCode::OK
    );
    let (status, body, _) = server.try_enroll(&secret, "n2", json!({})).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(message(&body), TokenState::UsedUp.refusal().unwrap());

    // Revoked.
    let revoked = server.join_token(json!({ "ttl_seconds": 600 })).await;
    let (status, _) = server
        .admin()
        .send(
            Method::DELETE,
            &format!("/v1/tokens/{}", revoked.info.id),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let secret = edgefleet_wire::JoinString::decode(&revoked.join)
        .unwrap()
        .secret;
    let (status, body, _) = server.try_enroll(&secret, "n3", json!({})).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(message(&body), TokenState::Revoked.refusal().unwrap());

    // Expired: written through the public store API into the server's own database, so
    // the test needs no clock games.
    let store = edgefleet_server::store::open(dir.path()).await.unwrap();
    let now = time::OffsetDateTime::now_utc();
    let secret = "0badc0de.expiredsecret";
    store
        .create_join_token(
            JoinTokenRecord {
                id: "0badc0de".into(),
                secret_sha256: edgefleet_core::hash::sha256_hex(b"expiredsecret"),
                labels: Default::default(),
                created_at: now - time::Duration::hours(2),
                expires_at: now - time::Duration::hours(1),
                uses_allowed: None,
                uses: 0,
                revoked: false,
                description: None,
            },
            NewAudit::new(now, "test", "token.create", "token/0badc0de", ""),
        )
        .await
        .unwrap();
    let (status, body, _) = server.try_enroll(secret, "n4", json!({})).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(message(&body), TokenState::Expired.refusal().unwrap());

    // Wrong secret for a real id, and garbage.
    let real = server.join_token(json!({ "ttl_seconds": 600 })).await;
    let wrong = format!("{}.{}", real.info.id, "0".repeat(64));
    for bad in [wrong.as_str(), "garbage"] {
        let (status, body, _) = server.try_enroll(bad, "n5", json!({})).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
        assert!(message(&body).starts_with("unknown join token"), "{body}");
    }
    let (_, nodes) = server.admin().get("/v1/nodes").await;
    assert_eq!(
        nodes.as_array().unwrap().len(),
        1,
        "only n1 enrolled: {nodes}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_certificate_is_only_good_for_its_own_node() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let a = server.enroll("node-a", json!({})).await;
    let _b = server.enroll("node-b", json!({})).await;
    let agent_a = server.node_api(&a);

    let report = json!({ "node": "node-b", "applied_generation": 7, "workloads": [] });
    let (status, body) = agent_a
        .send(Method::PUT, "/v1/agent/status", Some(report))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(
        body["message"],
        "certificate is for node \"node-a\", not \"node-b\""
    );
    let (_, b_detail) = server.admin().get("/v1/nodes/node-b").await;
    assert!(
        b_detail["reported"].is_null(),
        "nothing was stored for node-b: {b_detail}"
    );

    let own =
        json!({ "node": "node-a", "applied_generation": 0, "workloads": [], "agent_version": "t" });
    assert_eq!(
        agent_a
            .send(Method::PUT, "/v1/agent/status", Some(own))
            .await
            .0,
        StatusCode::OK
    );

    // What it reads is its own desired state.
    let (status, body) = agent_a.get("/v1/agent/desired").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["node"], "node-a");

    // Operator routes do not take node certificates.
    for path in ["/v1/nodes", "/v1/nodes/node-b", "/v1/deployments"] {
        let (status, body) = agent_a.get(path).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}: {body}");
        assert!(
            body["message"]
                .as_str()
                .unwrap()
                .contains("node certificates are accepted only"),
            "{body}"
        );
    }
    let (status, _) = agent_a
        .send(
            Method::POST,
            "/v1/apply",
            Some(json!({ "deployments": [deployment("x", json!({}), "/bin/true")] })),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // And agent routes do not take API tokens.
    let (status, body) = server.admin().get("/v1/agent/desired").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_poll_returns_promptly_after_an_apply() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let node = server.enroll("edge-1", json!({ "site": "a" })).await;
    let agent = server.node_api(&node);

    let (status, body) = agent.get("/v1/agent/desired").await;
    assert_eq!(status, StatusCode::OK);
    let initial: DesiredState = serde_json::from_value(body).unwrap();
    assert!(initial.workloads.is_empty());

    // Nothing changes: 304 once the (short) wait is over.
    let started = Instant::now();
    let (status, _) = agent
        .get(&format!(
            "/v1/agent/desired?known_generation={}&wait_seconds=1",
            initial.generation
        ))
        .await;
    assert_eq!(status, StatusCode::NOT_MODIFIED);
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );

    let poll = tokio::spawn({
        let agent = agent.clone();
        let path = format!(
            "/v1/agent/desired?known_generation={}&wait_seconds=30",
            initial.generation
        );
        async move {
            let result = agent.get(&path).await;
            (result, Instant::now())
        }
    });
    // Give the poll time to be parked on the server; it must not have answered yet.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !poll.is_finished(),
        "the long poll answered without a change"
    );

    let apply = json!({ "deployments": [deployment("web", json!({ "matchLabels": { "site": "a" } }), "/bin/web")] });
    let (status, body) = server
        .admin()
        .send(Method::POST, "/v1/apply", Some(apply))
        .await;
    let applied_at = Instant::now();
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["results"][0]["selected_nodes"], 1);

    let ((status, body), answered_at) = tokio::time::timeout(Duration::from_secs(5), poll)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    let desired: DesiredState = serde_json::from_value(body).unwrap();
    assert_eq!(desired.generation, initial.generation + 1);
    assert_eq!(desired.workloads[0].deployment, "web");
    assert_eq!(desired.workloads[0].spec.command, "/bin/web");
    let delay = answered_at.saturating_duration_since(applied_at);
    assert!(
        delay < Duration::from_secs(1),
        "the change took {delay:?} to reach the agent"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_refuses_the_node_at_once_and_ends_its_long_poll() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let node = server.enroll("doomed", json!({})).await;
    let agent = server.node_api(&node);
    let (_, body) = agent.get("/v1/agent/desired").await;
    let generation = body["generation"].as_u64().unwrap();

    let poll = tokio::spawn({
        let agent = agent.clone();
        async move {
            agent
                .get(&format!(
                    "/v1/agent/desired?known_generation={generation}&wait_seconds=30"
                ))
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!poll.is_finished());

    let (status, body) = server
        .admin()
        .send(Method::POST, "/v1/nodes/doomed/revoke", None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "Revoked");
    let (status, body) = tokio::time::timeout(Duration::from_secs(2), poll)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("revoked"),
        "{body}"
    );

    let (status, _) = agent
        .send(
            Method::POST,
            "/v1/agent/heartbeat",
            Some(json!({ "applied_generation": 0 })),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    let (_, audit) = server.admin().get("/v1/audit").await;
    assert_eq!(audit[0]["action"], "revoke");
    assert_eq!(audit[0]["actor"], "token:admin");
    assert_eq!(audit[0]["object"], "node/doomed");

    // A revoked name may enroll again, with a new identity; the old one stays refused.
    let again = server.enroll("doomed", json!({})).await;
    let (status, _) = server
        .node_api(&again)
        .send(
            Method::POST,
            "/v1/agent/heartbeat",
            Some(json!({ "applied_generation": 0 })),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = agent
        .send(
            Method::POST,
            "/v1/agent/heartbeat",
            Some(json!({ "applied_generation": 0 })),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "the old certificate is not the node's any more"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_rotates_certificates_and_keeps_the_previous_one_valid() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let node = server.enroll("rotor", json!({})).await;
    let heartbeat = |identity: &ClientIdentity| {
        let api = common::Api {
            client: server.client(Some(identity)),
            base: server.info.url.clone(),
            token: None,
        };
        async move {
            api.send(
                Method::POST,
                "/v1/agent/heartbeat",
                Some(json!({ "applied_generation": 0 })),
            )
            .await
            .0
        }
    };
    let renew = |identity: ClientIdentity| {
        let api = common::Api {
            client: server.client(Some(&identity)),
            base: server.info.url.clone(),
            token: None,
        };
        async move {
            let key = NodeKey::generate().unwrap();
            let (status, body) = api
                .send(
                    Method::POST,
                    "/v1/agent/renew",
                    Some(json!({ "csr_pem": key.csr_pem("ignored").unwrap() })),
                )
                .await;
            assert_eq!(status, StatusCode::OK, "{body}");
            let renewed: RenewResponse = serde_json::from_value(body).unwrap();
            assert_eq!(
                edgefleet_tls::cert_info(&renewed.certificate_pem)
                    .unwrap()
                    .common_name,
                "rotor"
            );
            ClientIdentity {
                cert_pem: renewed.certificate_pem,
                key_pem: key.to_pem(),
            }
        }
    };
    let first = node.identity.clone();
    let second = renew(first.clone()).await;
    assert_eq!(heartbeat(&second).await, StatusCode::OK);
    assert_eq!(
        heartbeat(&first).await,
        StatusCode::OK,
        "the previous certificate still works"
    );
    let third = renew(second.clone()).await;
    assert_eq!(heartbeat(&third).await, StatusCode::OK);
    assert_eq!(heartbeat(&second).await, StatusCode::OK);
    assert_eq!(
        heartbeat(&first).await,
        StatusCode::UNAUTHORIZED,
        "two renewals ago is too old"
    );

    let (_, detail) = server.admin().get("/v1/nodes/rotor").await;
    let serial = edgefleet_tls::cert_info(&third.cert_pem).unwrap().serial;
    assert!(
        detail["recent_changes"][0]["detail"]
            .as_str()
            .unwrap()
            .contains(&serial),
        "{detail}"
    );
    server.stop().await;
}
