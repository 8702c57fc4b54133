//! The lean `edgefleet-agent` binary: a crash (SIGKILL) never leads to a workload running
//! twice, SIGTERM stops workloads and exits 0, and failures exit 1 with the error chain.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use edgefleet_agent::identity::{IdentityStore, ServerFile};
use edgefleet_agent::journal::Journal;
use edgefleet_tls::{Ca, NodeKey};
use edgefleet_wire::api::DesiredState;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use support::{desired, is_alive, spec, until};

const LIMIT: Duration = Duration::from_secs(20);

/// An enrolled node whose server (port 1 on loopback) never answers.
fn enrolled_offline(data: &Path) {
    let now = time::OffsetDateTime::now_utc();
    let (ca, _) = Ca::generate("test CA", now).unwrap();
    let key = NodeKey::generate().unwrap();
    let (cert, _) = ca
        .sign_node_csr(
            &key.csr_pem("node-a").unwrap(),
            "node-a",
            now,
            Duration::from_secs(86400),
        )
        .unwrap();
    let store = IdentityStore::new(&data.join("identity"));
    std::fs::create_dir_all(store.dir()).unwrap();
    store.write_key(&key).unwrap();
    store
        .write_enrolled(
            &cert,
            ca.cert_pem(),
            &ServerFile {
                url: "https://127.0.0.1:1".into(),
                node: "node-a".into(),
            },
        )
        .unwrap();
}

fn agent(data: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_edgefleet-agent"))
        .arg("--data-dir")
        .arg(data)
        .env("RUST_LOG", "warn")
        .env_remove("EDGEFLEET_JOIN")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn pid_of(data: &Path) -> Option<u32> {
    let text = std::fs::read_to_string(data.join("run/web.pid")).ok()?;
    text.split_whitespace().next()?.parse().ok()
}

fn with_marker(marker: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok())
        .filter(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            String::from_utf8_lossy(&cmdline).contains(marker) && is_alive(*pid)
        })
        .collect()
}

#[tokio::test]
async fn a_crashed_agent_is_replaced_without_running_a_workload_twice() {
    let data = tempfile::tempdir().unwrap();
    let d = data.path();
    enrolled_offline(d);
    let marker: &str = &format!("1005.{}", std::process::id());
    std::fs::create_dir_all(d.join("journal")).unwrap();
    Journal::new(&d.join("journal"))
        .store(&DesiredState {
            node: "node-a".into(),
            generation: 4,
            workloads: vec![desired(spec("web", "/bin/sleep", &[marker]))],
        })
        .unwrap();

    // The server is unreachable: the workload starts from the journal anyway.
    let mut first = agent(d);
    until("the workload to start", LIMIT, || {
        pid_of(d).is_some_and(is_alive)
    })
    .await;
    let old = pid_of(d).unwrap();
    first.kill().unwrap();
    first.wait().unwrap();
    assert!(is_alive(old), "the workload died with the agent");

    let mut second = agent(d);
    until("a fresh instance", LIMIT, || {
        pid_of(d).is_some_and(|pid| pid != old && is_alive(pid))
    })
    .await;
    until("the leftover to be stopped", LIMIT, || !is_alive(old)).await;
    assert_eq!(with_marker(marker), [pid_of(d).unwrap()]);

    kill(Pid::from_raw(second.id() as i32), Signal::SIGTERM).unwrap();
    let status = second.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    assert!(
        with_marker(marker).is_empty(),
        "workload outlived a graceful shutdown"
    );
}

#[test]
fn failure_exits_1_with_the_error_chain() {
    let data = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_edgefleet-agent"))
        .arg("--data-dir")
        .arg(data.path())
        .env_remove("EDGEFLEET_JOIN")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("error: ") && stderr.contains("--join"),
        "{stderr}"
    );
}

fn lock_cli(data: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_edgefleet-agent"))
        .arg("lock")
        .args(args)
        .arg("--data-dir")
        .arg(data)
        .env_remove("EDGEFLEET_AGENT_DATA_DIR")
        .output()
        .unwrap()
}

#[tokio::test]
async fn lock_commands_talk_to_the_running_agent() {
    let data = tempfile::tempdir().unwrap();
    let d = data.path();
    let missing = lock_cli(d, &["list"]);
    assert_eq!(missing.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(
        stderr.contains(&format!(
            "no agent is running with data dir {}",
            d.display()
        )),
        "{stderr}"
    );

    enrolled_offline(d);
    let mut agent = agent(d);
    until("the local API socket", LIMIT, || {
        d.join("agent.sock").exists()
    })
    .await;
    let acquired = lock_cli(d, &["acquire", "till", "--reason", "sale in progress"]);
    assert_eq!(
        acquired.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&acquired.stderr)
    );
    let stdout = String::from_utf8_lossy(&acquired.stdout);
    assert!(
        stdout.starts_with("holding the update lock of till"),
        "{stdout}"
    );
    let listed = lock_cli(d, &["list"]);
    let stdout = String::from_utf8_lossy(&listed.stdout);
    assert!(
        stdout.starts_with("WORKLOAD")
            && stdout.contains("till")
            && stdout.contains("sale in progress"),
        "{stdout}"
    );
    let refused = lock_cli(d, &["release", "arm"]);
    assert_eq!(refused.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("\"arm\" holds no update lock"), "{stderr}");
    assert_eq!(lock_cli(d, &["release", "till"]).status.code(), Some(0));

    kill(Pid::from_raw(agent.id() as i32), Signal::SIGTERM).unwrap();
    assert_eq!(agent.wait().unwrap().code(), Some(0));
    assert!(!d.join("agent.sock").exists(), "socket left after shutdown");
}
