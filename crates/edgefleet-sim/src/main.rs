//! `edgefleet-sim`: runs a simulated fleet against an edgefleet server until Ctrl-C or
//! SIGTERM. Prints enrollment progress, then a status line every few seconds.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use edgefleet_sim::{
    EnrollProgress, FleetSummary, NodeLabels, Selection, ServerTarget, SimConfig, Simulator,
};
use edgefleet_wire::{DurationSpec, JoinString};
use tracing_subscriber::EnvFilter;

const EXAMPLES: &str = "\
Examples:
  # 1000 nodes in 10 sites, enrolled with a join token
  JOIN=$(edgefleet token create --ttl 1h)
  edgefleet-sim --join \"$JOIN\" --nodes 1000 --label site=site-{i%10} --label tier=edge

  # The same with the server URL, CA certificate and token secret given separately
  edgefleet-sim --server https://127.0.0.1:7443 --ca-file ca.crt --token 1a2b3c4d.s3cr3t --nodes 50

  # 10% of the nodes drop off the network after a minute, for two minutes, on a bad link
  edgefleet-sim --join \"$JOIN\" --nodes 500 --offline-fraction 0.1 --offline-after 1m \\
      --offline-for 2m --latency 200ms --loss 0.02

Workloads are simulated: nothing runs. A workload whose env has SIM_FAIL_START=NAMES (node
names, comma separated, `prefix*`, or `*`) crash-loops on those nodes; SIM_CRASH_AFTER=3s
with SIM_CRASH_NODES=NAMES (default `*`) runs and then crash-loops. Every flag can also be
set with the EDGEFLEET_SIM_* variable shown.";

/// Simulate a fleet of edgefleet agents against a real server.
#[derive(Debug, Parser)]
#[command(name = "edgefleet-sim", version, after_help = EXAMPLES, max_term_width = 100)]
struct Cli {
    /// Join string from `edgefleet token create` (server URL, token, pinned CA fingerprint)
    #[arg(long, env = "EDGEFLEET_SIM_JOIN", value_name = "EFJ1...", hide_env_values = true,
          required_unless_present = "server", conflicts_with_all = ["server", "ca_file", "token"])]
    join: Option<String>,
    /// Server URL, instead of --join: https://HOST:PORT (needs --ca-file and --token)
    #[arg(long, env = "EDGEFLEET_SIM_SERVER", value_name = "URL", requires_all = ["ca_file", "token"])]
    server: Option<String>,
    /// PEM file with the server's CA certificate, with --server (e.g. <data-dir>/ca.crt)
    #[arg(
        long,
        env = "EDGEFLEET_SIM_CA_FILE",
        value_name = "FILE",
        requires = "server"
    )]
    ca_file: Option<PathBuf>,
    /// Join token secret (`<id>.<secret>`), with --server
    #[arg(
        long,
        env = "EDGEFLEET_SIM_TOKEN",
        value_name = "SECRET",
        hide_env_values = true,
        requires = "server"
    )]
    token: Option<String>,
    /// How many nodes to simulate, e.g. --nodes 10000
    #[arg(
        long,
        env = "EDGEFLEET_SIM_NODES",
        default_value_t = 100,
        value_name = "N"
    )]
    nodes: u32,
    /// Node name prefix; names are the prefix and a zero-padded number, e.g. sim-00001
    #[arg(
        long,
        env = "EDGEFLEET_SIM_PREFIX",
        default_value = "sim-",
        value_name = "PREFIX"
    )]
    prefix: String,
    /// The first node's number, to run several simulators against one server, e.g. 10001
    #[arg(
        long,
        env = "EDGEFLEET_SIM_FIRST_NUMBER",
        default_value_t = 1,
        value_name = "N"
    )]
    first_number: u32,
    /// Label for every node, repeatable; {i} is the node's number, {i%K} and {i/K} its
    /// remainder and quotient by K, {name} its name; e.g. --label site=site-{i%10}
    #[arg(
        long = "label",
        env = "EDGEFLEET_SIM_LABELS",
        value_delimiter = ',',
        value_name = "KEY=TEMPLATE"
    )]
    labels: Vec<String>,
    /// Heartbeat interval of every node (a status report goes with each), e.g. 15s
    #[arg(
        long,
        env = "EDGEFLEET_SIM_HEARTBEAT",
        default_value = "10s",
        value_name = "DURATION"
    )]
    heartbeat: DurationSpec,
    /// Enrollments in flight at once, e.g. 32
    #[arg(
        long,
        env = "EDGEFLEET_SIM_ENROLL_CONCURRENCY",
        default_value_t = 16,
        value_name = "N"
    )]
    enroll_concurrency: usize,
    /// Share of nodes (0 to 1) to take off the network, e.g. 0.1 (see --offline-after/-for)
    #[arg(
        long,
        env = "EDGEFLEET_SIM_OFFLINE_FRACTION",
        default_value_t = 0.0,
        value_name = "F"
    )]
    offline_fraction: f64,
    /// How long after enrollment those nodes go offline, e.g. 30s
    #[arg(
        long,
        env = "EDGEFLEET_SIM_OFFLINE_AFTER",
        default_value = "0s",
        value_name = "DURATION"
    )]
    offline_after: DurationSpec,
    /// How long they stay offline before coming back, e.g. 2m [default: until the end]
    #[arg(long, env = "EDGEFLEET_SIM_OFFLINE_FOR", value_name = "DURATION")]
    offline_for: Option<DurationSpec>,
    /// Latency added before every request of every node, e.g. 150ms
    #[arg(
        long,
        env = "EDGEFLEET_SIM_LATENCY",
        default_value = "0s",
        value_name = "DURATION"
    )]
    latency: DurationSpec,
    /// Probability (0 to 1) that a request or its answer is lost, e.g. 0.01
    #[arg(
        long,
        env = "EDGEFLEET_SIM_LOSS",
        default_value_t = 0.0,
        value_name = "P"
    )]
    loss: f64,
    /// How often to print the fleet's status line, e.g. 10s
    #[arg(
        long,
        env = "EDGEFLEET_SIM_REPORT_EVERY",
        default_value = "5s",
        value_name = "DURATION"
    )]
    report_every: DurationSpec,
    /// Runtime worker threads [default: one per CPU]
    #[arg(long, env = "EDGEFLEET_SIM_THREADS", value_name = "N")]
    threads: Option<usize>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = cli.threads {
        runtime.worker_threads(threads.max(1));
    }
    let runtime = match runtime.enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: starting the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {}", error_chain(&error));
            ExitCode::FAILURE
        }
    }
}

/// `error: cause: cause`, leaving out a cause the text so far already shows (the
/// simulator's errors carry their causes in their own messages).
fn error_chain(error: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in error.chain() {
        let message = cause.to_string();
        if text.contains(&message) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&message);
    }
    text
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let config = config(&cli)?;
    for (what, value) in [
        ("--offline-fraction", cli.offline_fraction),
        ("--loss", cli.loss),
    ] {
        if !(0.0..=1.0).contains(&value) {
            bail!("{what} must be between 0 and 1, not {value}");
        }
    }
    if cli.report_every.as_duration().is_zero() {
        bail!("--report-every must be longer than 0s");
    }
    raise_open_files_limit(cli.nodes)?;

    let total = config.nodes;
    println!(
        "enrolling {total} nodes ({} concurrently)",
        config.enroll_concurrency
    );
    let mut shutdown = std::pin::pin!(shutdown_signal());
    let simulator = tokio::select! {
        simulator = Simulator::start(config) => simulator.context("starting the simulated fleet")?,
        () = &mut shutdown => {
            println!("interrupted during enrollment");
            return Ok(());
        }
    };
    let stats = simulator.enrollment();
    let rss = rss_kib();
    println!(
        "all {total} nodes enrolled in {:.1}s ({:.0} nodes/s); RSS {} ({:.1} KiB per node)",
        stats.duration.as_secs_f64(),
        stats.rate(),
        mib(rss),
        rss as f64 / f64::from(total.max(1))
    );
    if !cli.latency.as_duration().is_zero() {
        simulator.set_latency(&Selection::All, cli.latency.as_duration())?;
    }
    if cli.loss > 0.0 {
        simulator.set_loss(&Selection::All, cli.loss)?;
    }

    let started = Instant::now();
    let schedule = OfflineSchedule::new(&cli, started);
    let mut offline_done = schedule.is_none();
    let mut online_done = schedule.as_ref().is_none_or(|s| s.back_at.is_none());
    let mut ticker = tokio::time::interval(cli.report_every.as_duration());
    ticker.tick().await;
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            _ = ticker.tick() => {}
        }
        if let Some(schedule) = &schedule {
            let now = Instant::now();
            if !offline_done && now >= schedule.off_at {
                let names = simulator.set_online(&schedule.selection, false)?;
                println!("took {} nodes offline{}", names.len(), sample(&names));
                offline_done = true;
            }
            if !online_done && schedule.back_at.is_some_and(|at| now >= at) {
                let names = simulator.set_online(&schedule.selection, true)?;
                println!("{} nodes back online", names.len());
                online_done = true;
            }
        }
        println!(
            "{}",
            status_line(started.elapsed(), &simulator.summary(), rss_kib())
        );
    }
    println!("shutting down {} nodes", simulator.len());
    simulator.shutdown().await;
    Ok(())
}

fn config(cli: &Cli) -> anyhow::Result<SimConfig> {
    let server = match (&cli.join, &cli.server, &cli.ca_file, &cli.token) {
        (Some(join), _, _, _) => ServerTarget::Join(JoinString::decode(join).context("--join")?),
        (None, Some(url), Some(ca_file), Some(token)) => ServerTarget::Explicit {
            url: url.clone(),
            ca_pem: std::fs::read_to_string(ca_file)
                .with_context(|| format!("reading --ca-file {}", ca_file.display()))?,
            token: token.clone(),
        },
        _ => bail!("give --join, or --server with --ca-file and --token"),
    };
    let mut config = SimConfig::new(server, cli.nodes);
    config.name_prefix.clone_from(&cli.prefix);
    config.first_number = cli.first_number;
    config.labels = NodeLabels::templates(&cli.labels).context("--label")?;
    config.heartbeat_interval = cli.heartbeat.as_duration();
    config.enroll_concurrency = cli.enroll_concurrency;
    config.on_progress = Some(progress_printer(cli.nodes));
    config.validate()?;
    Ok(config)
}

/// Prints a line at every 10% of enrollment.
fn progress_printer(total: u32) -> Arc<dyn Fn(&EnrollProgress) + Send + Sync> {
    let step = total.div_ceil(10).max(1);
    Arc::new(move |progress: &EnrollProgress| {
        if progress.enrolled.is_multiple_of(step) || progress.enrolled == progress.total {
            println!(
                "enrolled {}/{} nodes ({:.0}%) in {:.1}s, {:.0}/s",
                progress.enrolled,
                progress.total,
                f64::from(progress.enrolled) * 100.0 / f64::from(progress.total.max(1)),
                progress.elapsed.as_secs_f64(),
                progress.rate()
            );
        }
    })
}

struct OfflineSchedule {
    selection: Selection,
    off_at: Instant,
    back_at: Option<Instant>,
}

impl OfflineSchedule {
    fn new(cli: &Cli, started: Instant) -> Option<Self> {
        if cli.offline_fraction <= 0.0 {
            return None;
        }
        let off_at = started + cli.offline_after.as_duration();
        Some(Self {
            selection: Selection::Fraction(cli.offline_fraction),
            off_at,
            back_at: cli.offline_for.map(|d| off_at + d.as_duration()),
        })
    }
}

fn sample(names: &[String]) -> String {
    match names {
        [] => String::new(),
        [a] => format!(" ({a})"),
        [a, b] => format!(" ({a}, {b})"),
        [a, b, ..] => format!(" ({a}, {b}, ...)"),
    }
}

fn status_line(elapsed: Duration, summary: &FleetSummary, rss: u64) -> String {
    let mut revisions: Vec<_> = summary.revisions.iter().collect();
    revisions.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    let shown: Vec<String> = revisions
        .iter()
        .take(4)
        .map(|(revision, count)| format!("{revision}={count}"))
        .collect();
    let more = revisions.len().saturating_sub(shown.len());
    format!(
        "t={}s online={}/{} reachable={} converged={} failing={} locked={} rss={}{}{}",
        elapsed.as_secs(),
        summary.online,
        summary.nodes,
        summary.reachable,
        summary.converged,
        summary.failing,
        summary.locked,
        mib(rss),
        if shown.is_empty() {
            String::new()
        } else {
            format!(" revisions: {}", shown.join(" "))
        },
        if more > 0 {
            format!(" (+{more} more)")
        } else {
            String::new()
        }
    )
}

/// The resident set size of this process, KiB (0 when /proc is not there).
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("VmRSS:"))
                .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

fn mib(kib: u64) -> String {
    format!("{:.1}MiB", kib as f64 / 1024.0)
}

/// Every node holds one socket (a few hold two for a moment, when they report during
/// their poll): raise the soft open-files limit as far as needed, or say what to do.
fn raise_open_files_limit(nodes: u32) -> anyhow::Result<()> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let needed = u64::from(nodes) + u64::from(nodes / 8) + 256;
    let (soft, hard) =
        getrlimit(Resource::RLIMIT_NOFILE).context("reading the open-files limit")?;
    if soft >= needed {
        return Ok(());
    }
    let target = needed.max(soft);
    // Raising the hard limit works only with privileges; the soft limit up to the hard one always.
    if setrlimit(Resource::RLIMIT_NOFILE, target, target.max(hard)).is_ok() {
        return Ok(());
    }
    if hard >= needed {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).context("raising the open-files limit")?;
        return Ok(());
    }
    bail!(
        "{nodes} nodes need about {needed} open files, but the limit is {hard}; \
         raise it (ulimit -n {needed}) or simulate fewer nodes per process"
    )
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
