//! Helpers shared by the agent's integration tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::time::Duration;

use edgefleet_wire::api::DesiredWorkload;
use edgefleet_wire::manifest::WorkloadSpec;

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
        deployment: "test".into(),
        revision: "rev-1".into(),
        spec_hash: format!("hash-of-{}-{}", spec.name, spec.args.join("-")),
        spec,
        rolled_back: false,
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
