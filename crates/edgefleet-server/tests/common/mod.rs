//! Test support: a real `Server` on 127.0.0.1 port 0 in a temporary data directory, and
//! HTTPS clients for operators (API token) and nodes (client certificate).

#![allow(dead_code)]
// each test binary uses a different part of this module
// Test support: a panic with the failing call is exactly what a test wants.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use edgefleet_server::{Server, ServerArgs, StartInfo};
use edgefleet_tls::{ClientIdentity, NodeKey};
use edgefleet_wire::api::{CreatedJoinToken, EnrollResponse};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub struct TestServer {
    pub info: StartInfo,
    pub data_dir: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

pub fn args(data_dir: &Path) -> ServerArgs {
    ServerArgs {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..ServerArgs::with_data_dir(data_dir)
    }
}

impl TestServer {
    pub async fn start(data_dir: &Path) -> Self {
        Self::start_with(args(data_dir)).await
    }

    pub async fn start_with(args: ServerArgs) -> Self {
        let data_dir = args.data_dir.clone().unwrap();
        let (server, info) = Server::start(args).await.expect("server starts");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server.run_until(async move {
            let _ = stopped.await;
        }));
        Self {
            info,
            data_dir,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Shuts the server down and waits (bounded) for `run_until` to return.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .expect("server stops within 10s")
                .expect("server task did not panic")
                .expect("run_until succeeds");
        }
    }

    /// The admin token: from the first start, or from `admin.token`.
    pub fn admin_token(&self) -> String {
        match &self.info.admin_token {
            Some(token) => token.clone(),
            None => std::fs::read_to_string(self.data_dir.join("admin.token"))
                .unwrap()
                .trim()
                .to_owned(),
        }
    }

    pub fn client(&self, identity: Option<&ClientIdentity>) -> reqwest::Client {
        let tls = edgefleet_tls::client_config(&self.info.ca_pem, identity).unwrap();
        reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .timeout(Duration::from_secs(90))
            .build()
            .unwrap()
    }

    pub fn api(&self, token: Option<&str>) -> Api {
        Api {
            client: self.client(None),
            base: self.info.url.clone(),
            token: token.map(str::to_owned),
        }
    }

    pub fn admin(&self) -> Api {
        self.api(Some(&self.admin_token()))
    }

    pub fn node_api(&self, node: &TestNode) -> Api {
        Api {
            client: self.client(Some(&node.identity)),
            base: self.info.url.clone(),
            token: None,
        }
    }

    /// Creates a join token with the admin API.
    pub async fn join_token(&self, body: Value) -> CreatedJoinToken {
        let (status, created) = self
            .admin()
            .send(Method::POST, "/v1/tokens", Some(body))
            .await;
        assert_eq!(status, StatusCode::OK, "{created}");
        serde_json::from_value(created).unwrap()
    }

    /// Enrolls a node named `name` with a fresh single-use token.
    pub async fn enroll(&self, name: &str, labels: Value) -> TestNode {
        let token = self
            .join_token(json!({ "ttl_seconds": 600, "uses": 1 }))
            .await;
        let secret = edgefleet_wire::JoinString::decode(&token.join)
            .unwrap()
            .secret;
        let (status, body, node) = self.try_enroll(&secret, name, labels).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        node.unwrap()
    }

    pub async fn try_enroll(
        &self,
        secret: &str,
        name: &str,
        labels: Value,
    ) -> (StatusCode, Value, Option<TestNode>) {
        let key = NodeKey::generate().unwrap();
        let request = json!({
            "token": secret,
            "name": name,
            "labels": labels,
            "csr_pem": key.csr_pem(name).unwrap(),
        });
        let (status, body) = self
            .api(None)
            .send(Method::POST, "/v1/enroll", Some(request))
            .await;
        let node = (status == StatusCode::OK).then(|| {
            let response: EnrollResponse = serde_json::from_value(body.clone()).unwrap();
            TestNode {
                name: name.to_owned(),
                key_pem: key.to_pem(),
                identity: ClientIdentity {
                    cert_pem: response.certificate_pem.clone(),
                    key_pem: key.to_pem(),
                },
                enrolled: response,
            }
        });
        (status, body, node)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

pub struct TestNode {
    pub name: String,
    pub key_pem: String,
    pub identity: ClientIdentity,
    pub enrolled: EnrollResponse,
}

/// A JSON client with an optional bearer token.
#[derive(Clone)]
pub struct Api {
    pub client: reqwest::Client,
    pub base: String,
    pub token: Option<String>,
}

impl Api {
    pub fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let request = self.client.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    /// Sends a JSON request; returns the status and the JSON body (`null` when empty).
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = self.request(method, path);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        read(response).await
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.send(Method::GET, path, None).await
    }
}

pub async fn read(response: reqwest::Response) -> (StatusCode, Value) {
    let status = response.status();
    let bytes = response.bytes().await.unwrap();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()))
    };
    (status, body)
}

/// A deployment manifest as JSON.
pub fn deployment(name: &str, selector: Value, command: &str) -> Value {
    json!({
        "apiVersion": "edgefleet.io/v1",
        "kind": "Deployment",
        "metadata": { "name": name },
        "spec": {
            "selector": selector,
            "workloads": [{ "name": "app", "command": command }]
        }
    })
}
