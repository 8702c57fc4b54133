//! Test support for edgefleet's end-to-end tests.
//!
//! Starts the real `edgefleet` binary as server and agent processes on loopback, in
//! temporary directories, and gives tests an HTTPS client for the API (as an operator with
//! the admin token, or as a node with its client certificate) and a way to run CLI commands.
//! Every process is stopped by its process id when its handle drops.
//!
//! This crate panics on failure: it is only used from tests, where a panic with a message
//! saying what did not happen is the failure report.

#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod docker;

use std::future::Future;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use edgefleet_tls::ClientIdentity;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// A free TCP port on 127.0.0.1 (bound and released; good enough for tests).
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("binding a free port");
    listener.local_addr().expect("local addr").port()
}

/// Polls `check` every 50 ms until it returns `Some`, or panics after `timeout` with `what`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A child process stopped (SIGTERM, then SIGKILL after 10 s) when dropped.
#[derive(Debug)]
pub struct Proc {
    pub name: String,
    child: Option<Child>,
    pub log: PathBuf,
}

impl Proc {
    pub fn spawn(
        name: &str,
        bin: &Path,
        args: &[String],
        log_dir: &Path,
        envs: &[(&str, String)],
    ) -> Self {
        std::fs::create_dir_all(log_dir).unwrap();
        let log = log_dir.join(format!("{name}.log"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let mut command = Command::new(bin);
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .env("RUST_LOG", "info,edgefleet=debug")
            .env_remove("EDGEFLEET_CONFIG");
        for (k, v) in envs {
            command.env(k, v);
        }
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {name} ({}): {e}", bin.display()));
        Self {
            name: name.to_owned(),
            child: Some(child),
            log,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    /// SIGTERM and wait (SIGKILL after 10 s). Returns the exit status code, if any.
    pub fn stop(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status.code();
            }
            if start.elapsed() > Duration::from_secs(10) {
                let _ = child.kill();
                return child.wait().ok().and_then(|s| s.code());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: the process gets no chance to clean up (a crash or power loss).
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Whether it has exited, and with which code.
    pub fn try_exit_code(&mut self) -> Option<Option<i32>> {
        let child = self.child.as_mut()?;
        match child.try_wait() {
            Ok(Some(status)) => Some(status.code()),
            _ => None,
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Whether a process with this pid exists (and is not a zombie).
pub fn pid_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next());
            state != Some("Z")
        }
        Err(_) => false,
    }
}

/// An `edgefleet server` process with its data directory.
#[derive(Debug)]
pub struct Server {
    pub bin: PathBuf,
    pub dir: PathBuf,
    pub port: u16,
    pub extra_args: Vec<String>,
    pub proc: Option<Proc>,
}

impl Server {
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("server")
    }

    pub fn ca_pem(&self) -> String {
        std::fs::read_to_string(self.data_dir().join("ca.crt")).expect("server CA certificate")
    }

    pub fn admin_token(&self) -> String {
        std::fs::read_to_string(self.data_dir().join("admin.token"))
            .expect("admin token file")
            .trim()
            .to_owned()
    }

    /// Starts (or restarts) the server process and waits until `/readyz` answers 200.
    pub async fn start(&mut self) {
        let mut args = vec![
            "server".to_owned(),
            "--data-dir".to_owned(),
            self.data_dir().display().to_string(),
            "--listen".to_owned(),
            format!("127.0.0.1:{}", self.port),
        ];
        args.extend(self.extra_args.iter().cloned());
        let home = self.dir.join("home");
        let proc = Proc::spawn(
            "server",
            &self.bin,
            &args,
            &self.dir.join("logs"),
            &[("HOME", home.display().to_string())],
        );
        self.proc = Some(proc);
        let ca_path = self.data_dir().join("ca.crt");
        let url = format!("{}/readyz", self.url());
        let proc_ref = self.proc.as_mut().unwrap();
        let start = Instant::now();
        loop {
            if let Some(code) = proc_ref.try_exit_code() {
                panic!(
                    "server exited with {code:?} while starting:\n{}",
                    proc_ref.log_text()
                );
            }
            if let Ok(ca) = std::fs::read_to_string(&ca_path)
                && let Ok(client) = https_client(&ca, None)
                && let Ok(response) = client.get(&url).send().await
                && response.status().is_success()
            {
                return;
            }
            if start.elapsed() > Duration::from_secs(30) {
                panic!("server not ready after 30 s:\n{}", proc_ref.log_text());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut proc) = self.proc.take() {
            proc.stop();
        }
    }

    pub fn kill9(&mut self) {
        if let Some(mut proc) = self.proc.take() {
            proc.kill9();
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.dir.join("logs/server.log")).unwrap_or_default()
    }
}

/// A whole test fleet: one server and any number of agents, in one temporary directory.
#[derive(Debug)]
pub struct Fleet {
    pub tmp: tempfile::TempDir,
    pub bin: PathBuf,
    pub server: Server,
    pub agents: Vec<Agent>,
}

#[derive(Debug)]
pub struct Agent {
    pub name: String,
    pub dir: PathBuf,
    pub proc: Option<Proc>,
}

impl Agent {
    pub fn stop(&mut self) -> Option<i32> {
        self.proc.take().and_then(|mut p| p.stop())
    }

    pub fn kill9(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill9();
        }
    }

    pub fn identity(&self) -> ClientIdentity {
        ClientIdentity {
            cert_pem: std::fs::read_to_string(self.dir.join("identity/node.crt"))
                .expect("node certificate"),
            key_pem: std::fs::read_to_string(self.dir.join("identity/node.key")).expect("node key"),
        }
    }
}

impl Fleet {
    /// Starts a server with extra `server` flags.
    pub async fn start(bin: &Path, server_args: &[&str]) -> Self {
        // EDGEFLEET_TEST_KEEP=1 keeps the directory (logs, data dirs) for a post-mortem.
        let keep = std::env::var_os("EDGEFLEET_TEST_KEEP").is_some();
        let tmp = tempfile::Builder::new()
            .prefix("edgefleet-e2e-")
            .disable_cleanup(keep)
            .tempdir()
            .unwrap();
        if keep {
            eprintln!("test fleet directory (kept): {}", tmp.path().display());
        }
        let mut server = Server {
            bin: bin.to_owned(),
            dir: tmp.path().to_owned(),
            port: free_port(),
            extra_args: server_args.iter().map(|s| s.to_string()).collect(),
            proc: None,
        };
        server.start().await;
        Self {
            tmp,
            bin: bin.to_owned(),
            server,
            agents: vec![],
        }
    }

    pub fn path(&self) -> &Path {
        self.tmp.path()
    }

    /// Environment that points the CLI at this fleet's server as admin.
    pub fn cli_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("EDGEFLEET_SERVER", self.server.url()),
            ("EDGEFLEET_TOKEN", self.server.admin_token()),
            (
                "EDGEFLEET_CA_CERT",
                self.server.data_dir().join("ca.crt").display().to_string(),
            ),
            (
                "EDGEFLEET_CONFIG",
                self.path()
                    .join("no-such-config.yaml")
                    .display()
                    .to_string(),
            ),
            ("HOME", self.path().join("home").display().to_string()),
        ]
    }

    /// Runs `edgefleet ARGS` as the admin and returns its output.
    pub fn cli(&self, args: &[&str]) -> Output {
        self.cli_with_stdin(args, None)
    }

    pub fn cli_with_stdin(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut command = Command::new(&self.bin);
        command
            .args(args)
            .envs(self.cli_env())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        command.stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        let mut child = command.spawn().expect("running the CLI");
        if let Some(input) = stdin {
            use std::io::Write;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(input.as_bytes())
                .unwrap();
        }
        child.wait_with_output().expect("CLI output")
    }

    /// Runs the CLI and returns stdout, panicking with stderr when it fails.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "edgefleet {args:?} failed ({:?}):\nstdout: {}\nstderr: {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Creates a join token with the CLI.
    pub fn join_token(&self, extra: &[&str]) -> String {
        let mut args = vec!["token", "create"];
        args.extend_from_slice(extra);
        self.cli_ok(&args).trim().to_owned()
    }

    /// Starts an agent; enrolls it with `join` when given.
    pub fn spawn_agent(
        &mut self,
        name: &str,
        labels: &str,
        join: Option<&str>,
        extra: &[&str],
    ) -> usize {
        let dir = self.path().join("agents").join(name);
        let mut args = vec![
            "agent".to_owned(),
            "--data-dir".to_owned(),
            dir.display().to_string(),
            "--name".to_owned(),
            name.to_owned(),
            "--labels".to_owned(),
            labels.to_owned(),
            "--heartbeat-interval".to_owned(),
            "1s".to_owned(),
        ];
        if let Some(join) = join {
            args.push("--join".to_owned());
            args.push(join.to_owned());
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let proc = Proc::spawn(name, &self.bin, &args, &self.path().join("logs"), &[]);
        if let Some(existing) = self.agents.iter_mut().position(|a| a.name == name) {
            self.agents[existing].proc = Some(proc);
            return existing;
        }
        self.agents.push(Agent {
            name: name.to_owned(),
            dir,
            proc: Some(proc),
        });
        self.agents.len() - 1
    }

    pub fn agent(&mut self, name: &str) -> &mut Agent {
        self.agents
            .iter_mut()
            .find(|a| a.name == name)
            .expect("no such agent")
    }

    /// An API client as the admin.
    pub fn api(&self) -> Api {
        Api::new(
            &self.server.url(),
            &self.server.ca_pem(),
            Some(self.server.admin_token()),
            None,
        )
    }

    /// An API client with a node's certificate and no token.
    pub fn node_api(&self, name: &str) -> Api {
        let agent = self
            .agents
            .iter()
            .find(|a| a.name == name)
            .expect("no such agent");
        Api::new(
            &self.server.url(),
            &self.server.ca_pem(),
            None,
            Some(agent.identity()),
        )
    }

    /// Waits until no rollout is moving any more, then until a node reports every desired
    /// workload running at the desired generation: the fleet at rest.
    pub async fn wait_converged(&self, node: &str, timeout: Duration) -> serde_json::Value {
        let api = self.api();
        self.wait_rollouts_settled(timeout).await;
        wait_for(&format!("node {node} converged"), timeout, || {
            let api = api.clone();
            let node = node.to_owned();
            async move {
                let detail: serde_json::Value =
                    api.get_json(&format!("/v1/nodes/{node}")).await.ok()?;
                converged(&detail).then_some(detail)
            }
        })
        .await
    }

    /// Waits until the newest rollout of every deployment is no longer progressing,
    /// baking or awaiting promotion.
    pub async fn wait_rollouts_settled(&self, timeout: Duration) {
        let api = self.api();
        wait_for("every rollout settled", timeout, || {
            let api = api.clone();
            async move {
                let deployments: serde_json::Value = api.get_json("/v1/deployments").await.ok()?;
                for deployment in deployments.as_array()? {
                    let name = deployment["name"].as_str()?;
                    let reply = api
                        .get(&format!("/v1/deployments/{name}/rollout?nodes=false"))
                        .await
                        .ok()?;
                    if reply.status == 404 {
                        continue;
                    }
                    let rollout = reply.json();
                    let phase = rollout["phase"].as_str()?;
                    if matches!(phase, "progressing" | "baking" | "awaiting-promotion") {
                        return None;
                    }
                }
                Some(())
            }
        })
        .await;
    }
}

/// Whether a `NodeDetail` JSON shows the node converged: applied generation equals desired
/// and every desired workload is reported running with the desired spec hash.
pub fn converged(detail: &serde_json::Value) -> bool {
    let desired = &detail["desired"];
    let generation = desired["generation"].as_u64().unwrap_or(0);
    let reported = &detail["reported"];
    if reported.is_null() || reported["applied_generation"].as_u64() != Some(generation) {
        return false;
    }
    let empty = vec![];
    let workloads = reported["workloads"].as_array().unwrap_or(&empty);
    desired["workloads"]
        .as_array()
        .unwrap_or(&empty)
        .iter()
        .all(|want| {
            workloads.iter().any(|got| {
                got["name"] == want["spec"]["name"]
                    && got["spec_hash"] == want["spec_hash"]
                    && got["state"] == "running"
            })
        })
        && workloads.iter().all(|w| w["state"] == "running")
}

/// A reported workload of a node detail, by name.
pub fn workload<'a>(detail: &'a serde_json::Value, name: &str) -> Option<&'a serde_json::Value> {
    detail["reported"]["workloads"]
        .as_array()?
        .iter()
        .find(|w| w["name"] == name)
}

/// Builds an HTTPS client trusting only `ca_pem`, optionally with a client certificate.
pub fn https_client(
    ca_pem: &str,
    identity: Option<&ClientIdentity>,
) -> anyhow::Result<reqwest::Client> {
    let config = edgefleet_tls::client_config(ca_pem, identity)?;
    Ok(reqwest::Client::builder()
        .use_preconfigured_tls(config)
        .timeout(Duration::from_secs(10))
        .build()?)
}

/// A small API client for tests.
#[derive(Debug, Clone)]
pub struct Api {
    pub url: String,
    pub client: reqwest::Client,
    pub token: Option<String>,
}

/// A response as the tests look at it: status and body.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub body: String,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

impl Api {
    pub fn new(
        url: &str,
        ca_pem: &str,
        token: Option<String>,
        identity: Option<ClientIdentity>,
    ) -> Self {
        Self {
            url: url.to_owned(),
            client: https_client(ca_pem, identity.as_ref()).expect("HTTPS client"),
            token,
        }
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let builder = self.client.request(method, format!("{}{path}", self.url));
        match &self.token {
            Some(token) => builder.bearer_auth(token),
            None => builder,
        }
    }

    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&(impl Serialize + ?Sized)>,
    ) -> anyhow::Result<Reply> {
        let mut builder = self.request(method, path);
        if let Some(body) = body {
            builder = builder.json(body);
        }
        let response = builder.send().await?;
        let status = response.status().as_u16();
        let body = response.text().await?;
        Ok(Reply { status, body })
    }

    pub async fn raw(
        &self,
        method: reqwest::Method,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> anyhow::Result<Reply> {
        let response = self
            .request(method, path)
            .header("content-type", content_type)
            .body(body)
            .send()
            .await?;
        let status = response.status().as_u16();
        let body = response.text().await?;
        Ok(Reply { status, body })
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<Reply> {
        self.send(reqwest::Method::GET, path, None::<&()>).await
    }

    pub async fn get_json<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        let reply = self.get(path).await?;
        anyhow::ensure!(
            reply.status == 200,
            "GET {path}: {} {}",
            reply.status,
            reply.body
        );
        Ok(serde_json::from_str(&reply.body)?)
    }
}
