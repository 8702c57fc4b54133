//! Artifacts against a real server over HTTPS: push, list, idempotence, digest checks,
//! deletion refused while referenced, apply and plan refusing unknown artifacts, byte
//! ranges for agents, the size limit, interrupted uploads and a full disk.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Api, TestServer};
use edgefleet_wire::api::ErrorBody;
use edgefleet_wire::artifact::{ArtifactInfo, ArtifactList, ArtifactRemoval};
use edgefleet_wire::workload::ByteSize;
use reqwest::header::{CONTENT_RANGE, ETAG, RANGE};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

fn error(body: Value) -> ErrorBody {
    serde_json::from_value(body.clone())
        .unwrap_or_else(|e| panic!("not an ErrorBody ({e}): {body}"))
}

/// `n` bytes that do not repeat in any short period.
fn content(n: usize, seed: u64) -> Vec<u8> {
    (0..n as u64)
        .map(|i| ((i.wrapping_add(seed).wrapping_mul(2_654_435_761)) >> 13) as u8)
        .collect()
}

fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

async fn push(api: &Api, name: &str, bytes: &[u8], digest: Option<&str>) -> (StatusCode, Value) {
    let mut request = api
        .request(Method::POST, &format!("/v1/artifacts?name={name}"))
        .body(bytes.to_vec());
    if let Some(digest) = digest {
        request = request.header("x-edgefleet-sha256", digest);
    }
    common::read(request.send().await.unwrap()).await
}

async fn list(api: &Api) -> ArtifactList {
    let (status, body) = api.get("/v1/artifacts").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    serde_json::from_value(body).unwrap()
}

fn artifacts_dir(server: &TestServer) -> PathBuf {
    server.data_dir.join("artifacts/sha256")
}

/// The names of the files in the artifacts directory.
fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn wasm_deployment(name: &str, module: &str) -> Value {
    json!({
        "apiVersion": "edgefleet.io/v1",
        "kind": "Deployment",
        "metadata": { "name": name },
        "spec": {
            "workloads": [{ "name": "app", "runtime": "wasm", "module": module }]
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_list_idempotence_and_digest_checks() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let admin = server.admin();
    let bytes = content(300 * 1024, 1);
    let digest = sha256(&bytes);

    let (status, body) = push(
        &admin,
        "model.bin",
        &bytes,
        Some(&format!("sha256:{digest}")),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let first: ArtifactInfo = serde_json::from_value(body).unwrap();
    assert_eq!(first.digest, digest);
    assert_eq!(first.size, bytes.len() as u64);
    assert_eq!(first.reference(), format!("model.bin@sha256:{digest}"));
    assert_eq!(first.created_by, "token:admin");
    assert_eq!(
        std::fs::read(artifacts_dir(&server).join(&digest)).unwrap(),
        bytes,
        "the content is stored under its digest"
    );

    // The same name and content again: 200, the same version, nothing new.
    let (status, body) = push(&admin, "model.bin", &bytes, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let again: ArtifactInfo = serde_json::from_value(body).unwrap();
    assert_eq!(again, first);

    // A digest that does not match the content: refused, naming both, nothing stored.
    let other = content(1000, 2);
    let (status, body) = push(&admin, "model.bin", &other, Some(&digest)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let message = error(body).message;
    assert!(
        message.contains(&sha256(&other)) && message.contains(&digest),
        "{message}"
    );

    // Bad names and headers.
    let (status, body) = push(&admin, "../etc", &other, None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(error(body).message.contains("invalid artifact name"));
    let (status, body) = common::read(
        admin
            .request(Method::POST, "/v1/artifacts")
            .body("x")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(error(body).message.contains("?name="));
    let (status, body) = push(&admin, "x", &other, Some("md5:abc")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(error(body).message.contains("x-edgefleet-sha256"));

    // A second version of the name, and the same content under another name.
    let (status, _) = push(&admin, "model.bin", &other, None).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, _) = push(&admin, "copy", &bytes, None).await;
    assert_eq!(status, StatusCode::CREATED);
    let listed = list(&admin).await;
    let names: Vec<(String, u64)> = listed
        .artifacts
        .iter()
        .map(|a| (a.name.clone(), a.size))
        .collect();
    assert_eq!(
        names,
        [
            ("copy".to_owned(), bytes.len() as u64),
            ("model.bin".to_owned(), bytes.len() as u64),
            ("model.bin".to_owned(), 1000),
        ]
    );
    assert_eq!(listed.max_size, Some(8 << 30));
    assert_eq!(
        files_in(&artifacts_dir(&server)),
        {
            let mut expected = vec![digest.clone(), sha256(&other)];
            expected.sort();
            expected
        },
        "one file per content, no leftovers"
    );

    // A viewer reads but cannot push; nobody without a token reads.
    let (status, created) = admin
        .send(
            Method::POST,
            "/v1/api-tokens",
            Some(json!({ "name": "watcher", "role": "viewer" })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{created}");
    let viewer = server.api(Some(created["token"].as_str().unwrap()));
    assert_eq!(list(&viewer).await.artifacts.len(), 3);
    assert_eq!(
        push(&viewer, "v", b"v", None).await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        server.api(None).get("/v1/artifacts").await.0,
        StatusCode::UNAUTHORIZED
    );

    // Deleting one name keeps the content another name shares.
    let (status, body) = admin.send(Method::DELETE, "/v1/artifacts/copy", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let removed: ArtifactRemoval = serde_json::from_value(body).unwrap();
    assert_eq!(removed.removed.len(), 1);
    assert!(artifacts_dir(&server).join(&digest).exists());
    // Deleting one version of a name leaves the other.
    let (status, body) = admin
        .send(
            Method::DELETE,
            &format!("/v1/artifacts/model.bin@sha256:{}", sha256(&other)),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(!artifacts_dir(&server).join(sha256(&other)).exists());
    let (status, body) = admin
        .send(Method::DELETE, "/v1/artifacts/ghost", None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(error(body).message.contains("ghost"));
    let (status, body) = admin
        .send(
            Method::DELETE,
            &format!("/v1/artifacts/model.bin@sha256:{}", "0".repeat(64)),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let body = error(body);
    assert!(
        body.details.iter().any(|d| d.contains(&digest)),
        "lists the versions there are: {body:?}"
    );
    // The audit log says who pushed and deleted what.
    let (_, audit) = admin.get("/v1/audit?limit=20").await;
    let actions: Vec<String> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["object"].as_str().unwrap().starts_with("artifact/"))
        .map(|e| format!("{} {}", e["action"], e["object"]))
        .collect();
    assert_eq!(actions.len(), 5, "{actions:?}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn references_are_checked_on_apply_and_plan_and_block_deletion() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let admin = server.admin();
    // A node that never reports: rollouts do not release it, so it keeps what it had.
    server.enroll("edge-1", json!({})).await;
    let bytes = content(4096, 3);
    let reference = format!("mod.wasm@sha256:{}", sha256(&bytes));

    // Not pushed yet: apply and plan refuse, naming the field and the reference.
    for route in ["/v1/apply", "/v1/plan"] {
        let (status, body) = admin
            .send(
                Method::POST,
                route,
                Some(json!({ "deployments": [wasm_deployment("app", &reference)] })),
            )
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{route}: {body}");
        let body = error(body);
        assert_eq!(body.code, "invalid_manifest");
        assert!(
            body.message.contains("spec.workloads[0].module")
                && body.message.contains(&reference)
                && body.message.contains("edgefleet artifact push"),
            "{route}: {}",
            body.message
        );
    }
    let (_, deployments) = admin.get("/v1/deployments").await;
    assert_eq!(deployments, json!([]));

    // Another version of the name does not count, and the error says which there is.
    let (status, _) = push(&admin, "mod.wasm", &content(10, 9), None).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, body) = admin
        .send(
            Method::POST,
            "/v1/apply",
            Some(json!({ "deployments": [wasm_deployment("app", &reference)] })),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let body = error(body);
    assert!(
        body.details
            .iter()
            .any(|d| d.contains(&sha256(&content(10, 9)))),
        "{body:?}"
    );

    let (status, _) = push(&admin, "mod.wasm", &bytes, None).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, body) = admin
        .send(
            Method::POST,
            "/v1/apply",
            Some(json!({ "deployments": [wasm_deployment("app", &reference)] })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let used: Vec<Vec<String>> = list(&admin)
        .await
        .artifacts
        .into_iter()
        .map(|a| a.used_by)
        .collect();
    assert_eq!(used, [vec![], vec!["app".to_owned()]]);

    // Referenced by the current revision: neither the name nor the version can go.
    for target in ["mod.wasm".to_owned(), reference.clone()] {
        let (status, body) = admin
            .send(Method::DELETE, &format!("/v1/artifacts/{target}"), None)
            .await;
        assert_eq!(status, StatusCode::CONFLICT, "{target}: {body}");
        let body = error(body);
        assert!(body.message.contains("deployment app"), "{}", body.message);
        assert!(
            body.details
                .iter()
                .any(|d| d.contains("spec.workloads[0].module") && d.contains("current revision")),
            "{body:?}"
        );
    }
    assert_eq!(list(&admin).await.artifacts.len(), 2, "nothing was removed");

    // The deployment moves on, but its rollout still assigns the old revision to the node
    // it could not reach.
    wait_for_rollout_phase(&admin, "app", 1, "succeeded").await;
    let process = common::deployment("app", json!({}), "/bin/true");
    let (status, body) = admin
        .send(
            Method::POST,
            "/v1/apply",
            Some(json!({ "deployments": [process] })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = admin
        .send(Method::DELETE, &format!("/v1/artifacts/{reference}"), None)
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let body = error(body);
    assert!(
        body.details
            .iter()
            .any(|d| d.contains("rollout 2 still assigns")),
        "{body:?}"
    );
    assert_eq!(
        list(&admin).await.artifacts[1].used_by,
        Vec::<String>::new(),
        "used_by lists current revisions only"
    );

    // Once the deployment is gone, the artifact can go, content and all.
    let (status, _) = admin
        .send(Method::DELETE, "/v1/deployments/app", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = admin
        .send(Method::DELETE, "/v1/artifacts/mod.wasm", None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let removed: ArtifactRemoval = serde_json::from_value(body).unwrap();
    assert_eq!(removed.removed.len(), 2);
    assert!(files_in(&artifacts_dir(&server)).is_empty());
    assert!(list(&admin).await.artifacts.is_empty());
    server.stop().await;
}

async fn wait_for_rollout_phase(api: &Api, deployment: &str, number: u64, phase: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, body) = api
            .get(&format!("/v1/deployments/{deployment}/rollout"))
            .await;
        if status == StatusCode::OK && body["number"] == number && body["phase"] == phase {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "rollout {number} of {deployment} did not reach {phase}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_download_whole_or_by_range() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let admin = server.admin();
    let node = server.enroll("edge-1", json!({})).await;
    let agent = server.node_api(&node);
    let bytes = content(200_000, 4);
    let digest = sha256(&bytes);
    assert_eq!(
        push(&admin, "blob", &bytes, None).await.0,
        StatusCode::CREATED
    );
    let path = format!("/v1/agent/artifacts/blob@sha256:{digest}");

    let response = agent.request(Method::GET, &path).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["accept-ranges"], "bytes");
    assert_eq!(response.headers()[ETAG], format!("\"{digest}\"").as_str());
    assert_eq!(response.content_length(), Some(bytes.len() as u64));
    assert_eq!(response.bytes().await.unwrap(), bytes);

    let ranged = |range: &str| {
        agent
            .request(Method::GET, &path)
            .header(RANGE, range.to_owned())
            .send()
    };
    let response = ranged("bytes=150000-").await.unwrap();
    assert_eq!(response.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        response.headers()[CONTENT_RANGE],
        "bytes 150000-199999/200000"
    );
    assert_eq!(response.bytes().await.unwrap(), bytes[150_000..]);
    let response = ranged("bytes=10-19").await.unwrap();
    assert_eq!(response.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(response.headers()[CONTENT_RANGE], "bytes 10-19/200000");
    assert_eq!(response.bytes().await.unwrap(), bytes[10..20]);
    let response = ranged("bytes=200000-").await.unwrap();
    assert_eq!(response.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(response.headers()[CONTENT_RANGE], "bytes */200000");

    // Unknown versions, malformed references, and callers that are not nodes.
    let (status, body) = agent
        .get(&format!(
            "/v1/agent/artifacts/blob@sha256:{}",
            "1".repeat(64)
        ))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(error(body).message.contains("not stored"));
    let (status, body) = agent.get("/v1/agent/artifacts/blob").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(error(body).message.contains("NAME@sha256:"));
    assert_eq!(admin.get(&path).await.0, StatusCode::UNAUTHORIZED);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_over_the_limit_or_interrupted_leave_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let args = edgefleet_server::ServerArgs {
        max_artifact_size: ByteSize(64 * 1024),
        ..common::args(dir.path())
    };
    let server = TestServer::start_with(args).await;
    let admin = server.admin();

    let (status, body) = push(&admin, "big", &content(100 * 1024, 5), None).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    let body = error(body);
    assert!(body.message.contains("65536 bytes"), "{}", body.message);
    assert!(
        body.details
            .iter()
            .any(|d| d.contains("--max-artifact-size")),
        "{body:?}"
    );
    // Exactly the limit passes: the limit is the size allowed, not one past it.
    let (status, body) = push(&admin, "edge", &content(64 * 1024, 6), None).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");

    // A client that goes away half way through: no content, no version.
    let tls = edgefleet_tls::client_config(&server.info.ca_pem, None).unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
    let tcp = tokio::net::TcpStream::connect(server.info.local_addr)
        .await
        .unwrap();
    let name = tokio_rustls::rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();
    let head = format!(
        "POST /v1/artifacts?name=half HTTP/1.1\r\nhost: 127.0.0.1\r\nauthorization: Bearer {}\r\n\
         content-length: 60000\r\n\r\n",
        server.admin_token()
    );
    tls.write_all(head.as_bytes()).await.unwrap();
    tls.write_all(&content(20_000, 7)).await.unwrap();
    tls.flush().await.unwrap();
    // Once the server is writing the upload, vanish.
    let uploading = || {
        files_in(&artifacts_dir(&server))
            .iter()
            .any(|f| f.starts_with(".upload-"))
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !uploading() {
        assert!(Instant::now() < deadline, "the upload never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(tls);
    let deadline = Instant::now() + Duration::from_secs(10);
    while files_in(&artifacts_dir(&server)).len() != 1 {
        assert!(
            Instant::now() < deadline,
            "the interrupted upload left {:?}",
            files_in(&artifacts_dir(&server))
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let names: Vec<String> = list(&admin)
        .await
        .artifacts
        .into_iter()
        .map(|a| a.name)
        .collect();
    assert_eq!(names, ["edge"]);
    server.stop().await;
}

/// A small tmpfs mounted for one test, unmounted when dropped.
struct SmallDisk {
    path: PathBuf,
}

impl SmallDisk {
    fn mount(path: PathBuf, size: &str) -> Self {
        std::fs::create_dir_all(&path).unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .output()
            .expect("running mount");
        assert!(
            out.status.success(),
            "this test needs root to mount a small tmpfs at {}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Self { path }
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.path)
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_is_507_and_the_server_carries_on() {
    let dir = tempfile::tempdir().unwrap();
    let disk = SmallDisk::mount(dir.path().join("artifacts/sha256"), "512k");
    let server = TestServer::start(dir.path()).await;
    let admin = server.admin();

    let (status, body) = push(&admin, "huge", &content(2 << 20, 8), None).await;
    assert_eq!(status, StatusCode::INSUFFICIENT_STORAGE, "{body}");
    let body = error(body);
    assert_eq!(body.code, "insufficient_storage");
    assert!(
        body.message.contains("disk is full") && body.message.contains("huge"),
        "{}",
        body.message
    );
    assert!(
        files_in(&disk.path).is_empty(),
        "{:?}",
        files_in(&disk.path)
    );
    assert!(list(&admin).await.artifacts.is_empty());

    // Still serving, and what fits is stored.
    assert_eq!(server.api(None).get("/readyz").await.0, StatusCode::OK);
    let (status, body) = push(&admin, "small", &content(10_000, 9), None).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    server.stop().await;
    drop(disk);
}
