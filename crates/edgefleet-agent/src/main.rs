//! `edgefleet-agent`: the lean agent binary for devices. Only the agent; no server or CLI
//! code is linked in.
//!
//! `edgefleet-agent [flags]` runs the agent; `edgefleet-agent lock ...` talks to the agent
//! running on this node through its local socket.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use edgefleet_agent::{AgentArgs, LockArgs, PublishArgs, WorkloadAccess};
use tracing_subscriber::EnvFilter;

#[derive(Parser, Debug)]
#[command(
    name = "edgefleet-agent",
    version,
    about = "The edgefleet node agent",
    // `edgefleet-agent --data-dir X lock list` would silently ask the default data
    // directory's agent: the lock command takes its own `--data-dir`.
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    agent: AgentArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Hold, release or list update locks through the agent running on this node
    #[command(after_help = "\
Examples:
  edgefleet-agent lock acquire till --reason 'sale in progress'
  edgefleet-agent lock release till
  edgefleet-agent lock list --data-dir /var/lib/edgefleet-agent")]
    Lock(LockArgs),
    /// Publish records to a stream of this workload's deployment (run inside a workload)
    #[command(after_help = "\
Examples:
  edgefleet-agent publish readings --json '{\"temp\":21.5}'
  sensor-reader | edgefleet-agent publish readings        # one JSON record per line
  edgefleet-agent publish frames --bytes-file frame.bin

The agent gives every workload EDGEFLEET_LOCAL_API (its socket) and EDGEFLEET_WORKLOAD_TOKEN.
Each record's sequence number is printed once the record is on the node's disk; from then
on it reaches the server even across crashes.")]
    Publish(PublishArgs),
    /// Print this workload's configuration as the node runs it (run inside a workload)
    #[command(after_help = "\
Examples:
  edgefleet-agent config
  edgefleet-agent config | jq .env")]
    Config(WorkloadAccess),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // One thread: the agent mostly waits, and each worker thread costs memory.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: starting the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Some(Command::Lock(args)) => lock(&runtime, &args),
        Some(Command::Publish(args)) => {
            print_result(runtime.block_on(edgefleet_agent::publish_command(&args)))
        }
        Some(Command::Config(access)) => {
            print_result(runtime.block_on(edgefleet_agent::config_command(&access)))
        }
        None => agent(&runtime, cli.agent),
    }
}

fn agent(runtime: &tokio::runtime::Runtime, args: AgentArgs) -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match runtime.block_on(edgefleet_agent::run(args, shutdown_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn print_result(result: anyhow::Result<String>) -> ExitCode {
    match result {
        Ok(output) => {
            print!("{output}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn lock(runtime: &tokio::runtime::Runtime, args: &LockArgs) -> ExitCode {
    match runtime.block_on(edgefleet_agent::lock_command(args)) {
        Ok(output) => {
            print!("{output}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = match signal(SignalKind::terminate()) {
        Ok(terminate) => terminate,
        Err(error) => {
            eprintln!("warning: cannot listen for SIGTERM: {error}");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}
