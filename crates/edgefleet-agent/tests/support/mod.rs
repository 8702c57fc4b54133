//! Helpers shared by the agent's integration tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::path::Path;
use std::time::Duration;

use edgefleet_agent::AgentArgs;
use edgefleet_wire::api::DesiredWorkload;
use edgefleet_wire::manifest::WorkloadSpec;
use tokio::sync::oneshot;

/// How long the agent tests wait for anything.
pub const AGENT_LIMIT: Duration = Duration::from_secs(15);

/// Flags for a test agent named `node-a`, quick to heartbeat.
pub fn agent_args(data_dir: &Path, join: Option<String>) -> AgentArgs {
    AgentArgs {
        data_dir: data_dir.to_owned(),
        join,
        name: Some("node-a".into()),
        labels: "site=lab".into(),
        heartbeat_interval: "1s".parse().unwrap(),
        log_max_bytes: 65536,
        log_files: 2,
        events_max: 10_000,
        // No engine on purpose: agents without containers must not need one.
        container_socket: Some(data_dir.join("no-engine.sock")),
        artifact_cache_max: "64Mi".parse().unwrap(),
        metrics_interval: "1s".parse().unwrap(),
        outbox_max: "16Mi".parse().unwrap(),
        upload_interval: "0s".parse().unwrap(),
        local_api_tcp: None,
    }
}

/// A running agent (`edgefleet_agent::run` in a task) and the means to stop it.
pub struct Agent {
    stop: Option<oneshot::Sender<()>>,
    pub task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

pub fn start_agent(args: AgentArgs) -> Agent {
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(edgefleet_agent::run(args, async {
        let _ = stopped.await;
    }));
    Agent {
        stop: Some(stop),
        task,
    }
}

impl Agent {
    /// Stops the agent as SIGTERM would, and returns how `run` ended.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(AGENT_LIMIT, self.task)
            .await
            .expect("agent did not stop in time")
            .unwrap()
    }
}

/// Polls `check` every 20 ms until it returns `Some`, for at most `limit`.
pub async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The same for synchronous checks.
pub async fn until<F: FnMut() -> bool>(what: &str, limit: Duration, mut check: F) {
    eventually(what, limit, || {
        let ok = check();
        async move { ok.then_some(()) }
    })
    .await
}

pub fn spec(name: &str, command: &str, args: &[&str]) -> WorkloadSpec {
    let json = serde_json::json!({ "name": name, "command": command, "args": args });
    serde_json::from_value(json).unwrap()
}

pub fn desired(spec: WorkloadSpec) -> DesiredWorkload {
    DesiredWorkload {
        streams: Vec::new(),
        deployment: "test".into(),
        revision: "rev-1".into(),
        spec_hash: format!("hash-of-{}-{}", spec.name, spec.args.join("-")),
        spec,
        rolled_back: false,
        labels: Default::default(),
    }
}

/// The state letter of a process, `None` if it does not exist.
pub fn process_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().next()?.chars().next()
}

/// Alive and not a zombie.
pub fn is_alive(pid: u32) -> bool {
    matches!(process_state(pid), Some(state) if state != 'Z' && state != 'X')
}

/// Live (non-zombie) processes whose process group is `pgid`.
pub fn group_members(pgid: u32) -> Vec<u32> {
    let mut members = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some(close) = stat.rfind(')') else {
            continue;
        };
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        // fields[0] = state (field 3), fields[2] = pgrp (field 5).
        if fields.len() > 2 && fields[2] == pgid.to_string() && fields[0] != "Z" {
            members.push(pid);
        }
    }
    members
}
