//! `edgefleet quickstart`: a whole fleet on one machine, as child processes of this one.
//!
//! It starts `edgefleet server`, creates a join token through the API, starts three
//! `edgefleet agent`s (two in site=berlin, one in site=lisbon), applies
//! `examples/quickstart.yaml` and waits until every node runs what it should. Progress goes to
//! stderr; the final node table and what to try next go to stdout. The children are stopped
//! on Ctrl-C/SIGTERM, on any error, and with `--exit-when-converged` once converged.

use std::ffi::OsStr;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use edgefleet_wire::api::{CreateJoinToken, CreatedJoinToken, Health, NodeStatus, NodeSummary};
use edgefleet_wire::rollout::{RolloutPhase, RolloutStatus};
use time::OffsetDateTime;

use crate::children::{Children, Role};
use crate::cli::QuickstartArgs;
use crate::client::ApiClient;
use crate::config::{self, CliConfig, Overrides};
use crate::output::{self, note};
use crate::{apply, views};

/// The example the quickstart applies; embedded so it works from any directory.
pub const MANIFEST: &str = include_str!("../../../examples/quickstart.yaml");
const MANIFEST_NAME: &str = "examples/quickstart.yaml";

/// The nodes: name and labels.
pub const NODES: [(&str, &str); 3] = [
    ("edge-1", "site=berlin,tier=edge"),
    ("edge-2", "site=berlin,tier=edge"),
    ("edge-3", "site=lisbon,tier=edge"),
];

const START_TIMEOUT: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(200);

/// How far the fleet has come.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    pub enrolled: usize,
    pub converged: usize,
}

/// A node has converged when it is Ready, has applied the generation it should run, and
/// runs every workload of it.
pub fn is_converged(node: &NodeSummary) -> bool {
    node.status == NodeStatus::Ready
        && node.desired_generation > 0
        && node.applied_generation == node.desired_generation
        && node.workloads_total > 0
        && node.workloads_running == node.workloads_total
}

/// Progress of the quickstart's nodes among `nodes` (other nodes are ignored).
pub fn progress(nodes: &[NodeSummary]) -> Progress {
    let ours: Vec<&NodeSummary> = nodes
        .iter()
        .filter(|n| NODES.iter().any(|(name, _)| *name == n.name))
        .collect();
    Progress {
        enrolled: ours.len(),
        converged: ours.iter().filter(|n| is_converged(n)).count(),
    }
}

pub async fn run(args: QuickstartArgs) -> anyhow::Result<()> {
    // Installed first so a Ctrl-C during start-up stops the children instead of orphaning them.
    let shutdown = crate::shutdown::requested()?;
    tokio::pin!(shutdown);
    let dir = prepare_dir(args.dir.as_deref())?;
    note(&format!(
        "quickstart directory: {} (kept afterwards)",
        dir.display()
    ));
    let mut children = Children::new();
    let started = tokio::select! {
        result = start(&args, &dir, &mut children) => result?,
        () = &mut shutdown => {
            note("interrupted; stopping");
            children.stop();
            bail!("interrupted before the fleet converged");
        }
    };
    output::stdout(&started.summary)?;
    if args.exit_when_converged {
        note("stopping (--exit-when-converged)");
        children.stop();
        return Ok(());
    }
    note("running; press Ctrl-C to stop everything");
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            () = tokio::time::sleep(Duration::from_secs(1)) => children.check()?,
        }
    }
    note("stopping agents and server");
    children.stop();
    Ok(())
}

/// What `start` hands back once the fleet has converged.
struct Started {
    /// The node table and the next steps, for stdout.
    summary: String,
}

async fn start(
    args: &QuickstartArgs,
    dir: &Path,
    children: &mut Children,
) -> anyhow::Result<Started> {
    let manifests = edgefleet_core::manifest::parse(MANIFEST_NAME, MANIFEST)?;
    let exe = std::env::current_exe().context("finding the edgefleet executable")?;
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;

    let server_dir = dir.join("server");
    let cli_config = server_dir.join("cli-config.yaml");
    // The server rewrites it on start; a stale one would point at an old port.
    match std::fs::remove_file(&cli_config) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
            return Err(error).with_context(|| format!("removing {}", cli_config.display()));
        }
        _ => {}
    }
    let listen = choose_listen(args.listen);
    let mut server = child_command(&exe);
    server
        .arg("server")
        .arg("--data-dir")
        .arg(&server_dir)
        .arg("--listen")
        .arg(listen.to_string())
        // Keep the user's own CLI config untouched; the quickstart's lives in its directory.
        .env("EDGEFLEET_CONFIG", &cli_config);
    let server_log = logs.join("server.log");
    children.spawn("server", Role::Server, server, &server_log)?;
    note(&format!(
        "starting the server (log: {})",
        server_log.display()
    ));

    let client = wait_for_server(children, &cli_config).await?;
    note(&format!("server ready at {}", client.server()));

    let join = create_join_token(&client).await?;
    for (name, labels) in NODES {
        let data_dir = dir.join("agents").join(name);
        let mut agent = child_command(&exe);
        agent
            .arg("agent")
            .arg("--data-dir")
            .arg(&data_dir)
            .arg("--name")
            .arg(name)
            .arg("--labels")
            .arg(labels)
            // Faster than the default so LAST-SEEN looks alive in a demo.
            .arg("--heartbeat-interval")
            .arg("5s");
        // An agent enrolled by an earlier quickstart in this directory needs no token.
        if !data_dir.join("identity/node.crt").exists() {
            agent.arg("--join").arg(&join);
        }
        let log = logs.join(format!("{name}.log"));
        children.spawn(name, Role::Agent { data_dir }, agent, &log)?;
    }
    note(&format!(
        "started agents {} (logs: {})",
        node_names(),
        logs.display()
    ));

    wait_for(children, &client, START_TIMEOUT, "enrolled", |p| p.enrolled).await?;

    let applied_at = Instant::now();
    let request = edgefleet_wire::api::ApplyRequest {
        deployments: manifests,
        windows: Vec::new(),
        plan_basis: None,
    };
    let response = apply::send(&client, &request).await?;
    for result in &response.results {
        note(&apply::result_line(result));
    }
    let timeout = args.timeout.as_duration();
    let names: Vec<String> = response.results.iter().map(|r| r.name.clone()).collect();
    wait_for_rollouts(children, &client, timeout, &names).await?;
    let nodes = wait_for(children, &client, timeout, "converged", |p| p.converged).await?;
    note(&format!(
        "converged in {:.2}s after apply",
        applied_at.elapsed().as_secs_f64()
    ));

    let table = views::nodes_table(&nodes, OffsetDateTime::now_utc());
    Ok(Started {
        summary: format!(
            "{table}\n{}",
            next_steps(&exe, dir, &cli_config, args.exit_when_converged)
        ),
    })
}

fn node_names() -> String {
    NODES
        .iter()
        .map(|(name, _)| *name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// A command for a child `edgefleet`, without the caller's `EDGEFLEET_*` settings (say an
/// `EDGEFLEET_ADVERTISE_URL` meant for another server); `EDGEFLEET_LOG` is kept.
fn child_command(exe: &Path) -> Command {
    let mut command = Command::new(exe);
    for (key, _) in std::env::vars_os() {
        let is_ours = key
            .to_str()
            .is_some_and(|k| k.starts_with("EDGEFLEET_") && k != "EDGEFLEET_LOG");
        if is_ours {
            command.env_remove(key);
        }
    }
    command
}

/// `--dir`, created if missing; else a new directory under the system's temp dir.
fn prepare_dir(dir: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(dir) = dir {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        return std::path::absolute(dir).with_context(|| format!("resolving {}", dir.display()));
    }
    let base = std::env::temp_dir();
    let stamp = OffsetDateTime::now_utc().unix_timestamp();
    for attempt in 0..100 {
        let dir = base.join(format!(
            "edgefleet-quickstart-{stamp}-{}-{attempt}",
            std::process::id()
        ));
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(error) => return Err(error).with_context(|| format!("creating {}", dir.display())),
        }
    }
    bail!(
        "could not create a quickstart directory under {}",
        base.display()
    )
}

/// `wanted`, or the same address with port 0 (any free port) when it is taken.
fn choose_listen(wanted: SocketAddr) -> SocketAddr {
    if wanted.port() == 0 || TcpListener::bind(wanted).is_ok() {
        return wanted;
    }
    note(&format!(
        "{wanted} is in use; the server will listen on a free port instead"
    ));
    SocketAddr::new(wanted.ip(), 0)
}

/// Waits until the server has written its CLI config (it does so once it listens) and
/// answers /readyz; returns a client configured from that file.
async fn wait_for_server(children: &mut Children, cli_config: &Path) -> anyhow::Result<ApiClient> {
    let deadline = Instant::now() + START_TIMEOUT;
    let config = loop {
        children.check()?;
        if let Some(config) = CliConfig::load(cli_config).ok().flatten() {
            break config;
        }
        if Instant::now() > deadline {
            bail!(
                "the server did not write {} within {}s",
                cli_config.display(),
                START_TIMEOUT.as_secs()
            );
        }
        tokio::time::sleep(POLL).await;
    };
    let connection = config::resolve(&Overrides::default(), cli_config, Some(&config))?;
    let client = ApiClient::new(&connection)?.require_token()?;
    loop {
        children.check()?;
        match client.get::<Health>(&["readyz"], &[]).await {
            Ok(_) => return Ok(client),
            Err(error) if Instant::now() > deadline => {
                return Err(error).context("the server did not become ready");
            }
            Err(_) => tokio::time::sleep(POLL).await,
        }
    }
}

async fn create_join_token(client: &ApiClient) -> anyhow::Result<String> {
    let request = CreateJoinToken {
        labels: Default::default(),
        ttl_seconds: 3_600,
        uses: None,
        description: Some("edgefleet quickstart".to_owned()),
    };
    let created: CreatedJoinToken = client.post(&["v1", "tokens"], &request).await?;
    Ok(created.join)
}

/// Polls the node list until `count(progress)` reaches every quickstart node, printing each
/// change as `what n/3`. Returns the last node list.
async fn wait_for(
    children: &mut Children,
    client: &ApiClient,
    timeout: Duration,
    what: &str,
    count: impl Fn(Progress) -> usize,
) -> anyhow::Result<Vec<NodeSummary>> {
    let deadline = Instant::now() + timeout;
    let mut last_shown = None;
    loop {
        children.check()?;
        let nodes: Vec<NodeSummary> = client.get(&["v1", "nodes"], &[]).await?;
        let n = count(progress(&nodes));
        if last_shown != Some(n) {
            note(&format!("{what} {n}/{}", NODES.len()));
            last_shown = Some(n);
        }
        if n == NODES.len() {
            return Ok(nodes);
        }
        if Instant::now() > deadline {
            bail!(
                "only {n} of {} nodes {what} within {}s; the node table now:\n{}",
                NODES.len(),
                timeout.as_secs(),
                views::nodes_table(&nodes, OffsetDateTime::now_utc())
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Polls the rollouts of `deployments` until none is moving any more, printing each step.
/// A rollout that stopped itself (a failed health gate) is an error with its reason.
async fn wait_for_rollouts(
    children: &mut Children,
    client: &ApiClient,
    timeout: Duration,
    deployments: &[String],
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    let mut shown: Vec<Option<String>> = vec![None; deployments.len()];
    loop {
        children.check()?;
        let mut moving = 0;
        for (name, last) in deployments.iter().zip(shown.iter_mut()) {
            let status: RolloutStatus = client
                .get(
                    &["v1", "deployments", name, "rollout"],
                    &[("nodes", "false".to_owned())],
                )
                .await?;
            let line = format!(
                "rollout of {name}: {}, step {}/{}, {}/{} nodes healthy",
                status.phase.as_str(),
                status.current_step,
                status.steps.len(),
                status.counts.healthy,
                status.counts.nodes
            );
            if last.as_deref() != Some(line.as_str()) {
                note(&line);
                *last = Some(line);
            }
            match status.phase {
                phase if phase.is_active() => moving += 1,
                RolloutPhase::Succeeded => {}
                phase => bail!(
                    "the rollout of {name} {}: {}",
                    phase.as_str(),
                    status.abort_reason.unwrap_or_default()
                ),
            }
        }
        if moving == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "rollouts still moving after {}s; see `edgefleet rollout status NAME`",
                timeout.as_secs()
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

/// How to call this binary in the hints: `edgefleet` when that is what `PATH` finds.
fn program_name(exe: &Path) -> String {
    let on_path = std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| {
            match (dir.join("edgefleet").canonicalize(), exe.canonicalize()) {
                (Ok(found), Ok(ours)) => found == ours,
                _ => false,
            }
        })
    });
    if on_path || exe.file_name() != Some(OsStr::new("edgefleet")) {
        "edgefleet".to_owned()
    } else {
        exe.display().to_string()
    }
}

fn next_steps(exe: &Path, dir: &Path, cli_config: &Path, exiting: bool) -> String {
    let ef = program_name(exe);
    let mut text = format!(
        "The fleet is up: {n} nodes run the deployments of {MANIFEST_NAME}.\n\
         Try, in another terminal:\n  \
         export EDGEFLEET_CONFIG={config}\n  \
         {ef} get nodes\n  \
         {ef} get deployments\n  \
         {ef} describe node edge-1\n  \
         {ef} rollout history base\n  \
         {ef} explain node edge-3 deployment berlin-greeting\n  \
         {ef} plan -f my-change.yaml            # what a change would do, before applying it\n  \
         {ef} label node edge-3 site=berlin     # edge-3 gets the Berlin greeting\n  \
         tail -f {dir}/agents/edge-1/logs/greeter/stdout.log\n\
         Logs of the server and agents: {dir}/logs/\n",
        n = NODES.len(),
        config = cli_config.display(),
        dir = dir.display(),
    );
    if exiting {
        text.push_str("(--exit-when-converged: everything is stopped now; rerun with --dir to pick it up again.)\n");
    } else {
        text.push_str("Press Ctrl-C to stop everything.\n");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn node(name: &str, applied: u64, desired: u64, running: u32, total: u32) -> NodeSummary {
        NodeSummary {
            name: name.into(),
            status: NodeStatus::Ready,
            labels: Default::default(),
            last_seen: None,
            desired_generation: desired,
            applied_generation: applied,
            workloads_total: total,
            workloads_running: running,
            workloads_failing: 0,
            certificate_not_after: None,
            agent_version: String::new(),
            enrolled_at: datetime!(2025-01-01 00:00:00 UTC),
        }
    }

    #[test]
    fn progress_counts_only_converged_quickstart_nodes() {
        let mut not_ready = node("edge-3", 2, 2, 2, 2);
        not_ready.status = NodeStatus::NotReady;
        let nodes = [
            node("edge-1", 2, 2, 2, 2),
            node("edge-2", 1, 2, 2, 2),
            not_ready,
            node("elsewhere", 2, 2, 2, 2),
        ];
        assert_eq!(
            progress(&nodes),
            Progress {
                enrolled: 3,
                converged: 1
            }
        );
        assert!(!is_converged(&node("edge-1", 0, 0, 0, 0)));
        assert!(!is_converged(&node("edge-1", 1, 1, 1, 2)));
    }

    #[test]
    fn embedded_manifest_layers_an_override() {
        let manifests = edgefleet_core::manifest::parse(MANIFEST_NAME, MANIFEST).unwrap();
        let base = manifests
            .iter()
            .find(|m| m.metadata.name == "base")
            .unwrap();
        let berlin = manifests
            .iter()
            .find(|m| m.metadata.name == "berlin-greeting")
            .unwrap();
        assert!(berlin.spec.priority > base.spec.priority);
        assert!(
            berlin.spec.workloads.iter().all(|w| base
                .spec
                .workloads
                .iter()
                .any(|b| b.name == w.name))
        );
        assert!(base.spec.workloads.iter().all(|w| w.command == "/bin/sh"));
    }

    #[test]
    fn port_zero_is_kept_and_taken_ports_are_replaced() {
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        assert_eq!(choose_listen(any), any);
        let taken = TcpListener::bind(any).unwrap();
        let addr = taken.local_addr().unwrap();
        assert_eq!(choose_listen(addr).port(), 0);
    }
}
