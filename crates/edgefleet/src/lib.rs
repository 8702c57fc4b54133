//! The operator's binary, `edgefleet`: the CLI, `edgefleet server`, `edgefleet agent` and
//! `edgefleet quickstart`.
//!
//! `main.rs` only calls [`main`]. The CLI is an IO shell: it parses flags (`cli`), finds its
//! server (`config`), talks HTTPS JSON to `/v1` (`client`), and renders answers (`views`,
//! `table`, `human`, `output`). `apply`, `plan`, `rollout` and `explain` each hold one
//! command family: its requests and the pure renderers of the answers. Decisions about
//! manifests, selectors and labels are the core's (`edgefleet_core`); this crate only reads
//! files and prints.
//!
//! Output contract: results go to stdout and stay stable for scripts; progress, hints and
//! errors go to stderr. (`rollout status --watch` prints its progress to stdout: following
//! the rollout is the result asked for.) Errors print as `error: <message>` (an API error
//! body's details follow, indented) and exit with code 1; usage errors exit with code 2.

#![forbid(unsafe_code)]

pub mod alerts;
pub mod apply;
pub mod artifact;
pub mod children;
pub mod cli;
pub mod client;
pub mod commands;
pub mod config;
pub mod explain;
pub mod human;
pub mod login;
pub mod logs;
pub mod metrics;
pub mod output;
pub mod plan;
pub mod quickstart;
pub mod rollout;
pub mod serve;
pub mod shutdown;
pub mod table;
pub mod views;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command};

/// Parses the command line, runs the command, prints any error; the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(&cli.command);
    let runtime = match build_runtime(&cli.command) {
        Ok(runtime) => runtime,
        Err(error) => {
            output::note(&render_error(&error.into()));
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            output::note(&render_error(&error));
            ExitCode::FAILURE
        }
    }
}

/// `error: <message>`, with the causes joined by `: ` and an API error's details indented
/// on the following lines.
pub fn render_error(error: &anyhow::Error) -> String {
    format!("error: {error:#}")
}

/// Long-running commands log at info by default; the CLI only warns. `EDGEFLEET_LOG`
/// (a tracing filter such as `debug` or `edgefleet_server=debug`) overrides both.
fn init_tracing(command: &Command) {
    let default = if is_long_running(command) {
        "info"
    } else {
        "warn"
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("EDGEFLEET_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, not in log files.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

fn is_long_running(command: &Command) -> bool {
    matches!(command, Command::Quickstart(_))
}

/// The most threads the server's blocking pool may have. Its blocking work is the store,
/// which runs one statement at a time anyway; more threads only add memory (each thread
/// that allocates gets a malloc arena of its own).
const SERVER_BLOCKING_THREADS: usize = 4;

/// The server uses every core; the CLI commands make a handful of requests: one thread is
/// plenty and starts faster.
fn build_runtime(command: &Command) -> std::io::Result<tokio::runtime::Runtime> {
    if matches!(command, Command::Server(_)) {
        tokio::runtime::Builder::new_multi_thread()
            .max_blocking_threads(SERVER_BLOCKING_THREADS)
            .enable_all()
            .build()
    } else if is_long_running(command) {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let global = cli.global;
    match cli.command {
        Command::Server(command) => serve::run(&global, command.args).await,
        Command::Agent(command) => match command.command {
            Some(cli::AgentSubcommand::Lock(args)) => {
                let text = edgefleet_agent::lock_command(&args).await?;
                output::stdout(&text)
            }
            Some(cli::AgentSubcommand::Publish(args)) => {
                output::stdout(&edgefleet_agent::publish_command(&args).await?)
            }
            Some(cli::AgentSubcommand::Config(access)) => {
                output::stdout(&edgefleet_agent::config_command(&access).await?)
            }
            None => edgefleet_agent::run(command.args, shutdown::requested()?).await,
        },
        Command::Quickstart(args) => quickstart::run(args).await,
        Command::Login(args) => login::run(&global, &args).await,
        Command::Version => output::stdout(&format!("edgefleet {}\n", env!("CARGO_PKG_VERSION"))),
        Command::Apply(args) => commands::apply(&commands::connect(&global)?, &args).await,
        Command::Plan(args) => plan::run(&commands::connect(&global)?, &args).await,
        Command::Rollout(command) => rollout::run(&commands::connect(&global)?, &command).await,
        Command::Explain(command) => explain::run(&commands::connect(&global)?, &command).await,
        Command::Events(command) => commands::events(&commands::connect(&global)?, &command).await,
        Command::Logs(args) => logs::run(&commands::connect(&global)?, &args).await,
        Command::Metrics(args) => metrics::run(&commands::connect(&global)?, &args).await,
        Command::Alerts(args) => alerts::run(&commands::connect(&global)?, &args).await,
        Command::Get(args) => commands::get(&commands::connect(&global)?, &args).await,
        Command::Describe(command) => {
            commands::describe(&commands::connect(&global)?, &command).await
        }
        Command::Label(command) => commands::label(&commands::connect(&global)?, &command).await,
        Command::Delete(command) => commands::delete(&commands::connect(&global)?, &command).await,
        Command::Token(command) => commands::token(&commands::connect(&global)?, &command).await,
        Command::ApiToken(command) => {
            commands::api_token(&commands::connect(&global)?, &command).await
        }
        Command::Node(command) => commands::node(&commands::connect(&global)?, &command).await,
        Command::Audit(args) => commands::audit(&commands::connect(&global)?, &args).await,
        Command::Artifact(command) => artifact::run(&commands::connect(&global)?, &command).await,
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    /// Every file in the workspace's examples/ is a valid manifest set (deployments and
    /// maintenance windows).
    #[test]
    fn examples_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
        let sources = crate::apply::expand_paths(&[dir]).unwrap();
        assert!(sources.len() >= 2, "{sources:?}");
        for source in &sources {
            let crate::apply::Source::File(path) = source else {
                unreachable!()
            };
            let text = std::fs::read_to_string(path).unwrap();
            let documents = edgefleet_core::manifest::parse_documents(&source.name(), &text)
                .unwrap_or_else(|e| panic!("{e}"));
            assert!(
                !documents.deployments.is_empty() || !documents.windows.is_empty(),
                "{}",
                path.display()
            );
        }
    }

    #[test]
    fn errors_render_with_their_causes() {
        let error = anyhow::anyhow!("connection refused").context("cannot reach the server");
        assert_eq!(
            super::render_error(&error),
            "error: cannot reach the server: connection refused"
        );
    }
}
