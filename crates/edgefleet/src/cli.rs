//! The command line: every command, flag and help text of `edgefleet` (clap derive).
//!
//! Only parsing lives here; `commands` carries the commands out.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use edgefleet_wire::DurationSpec;
use edgefleet_wire::api::Role;

use crate::output::OutputFormat;

const MAIN_EXAMPLES: &str = "\
Examples:
  # Try everything on this machine: a server, three agents and a deployment
  edgefleet quickstart

  # Run a server (writes the CLI config so the commands below just work)
  edgefleet server --data-dir /var/lib/edgefleet

  # Enroll a node
  JOIN=$(edgefleet token create --labels site=berlin)
  edgefleet agent --data-dir /var/lib/edgefleet-agent --join \"$JOIN\"

  # Say what runs where: review the change, apply exactly it, watch it roll out
  edgefleet plan -f deployments/ --out plan.json
  edgefleet apply --plan plan.json
  edgefleet rollout status web --watch
  edgefleet get nodes -l site=berlin
  edgefleet describe node edge-1

  # Find out why a node runs what it runs (or does not update)
  edgefleet explain node edge-1
  edgefleet events node edge-1

Configuration: every command but `server`, `agent` and `quickstart` talks HTTPS to a server.
The server URL, API token and CA certificate come from the flags, then the EDGEFLEET_*
environment variables, then the config file (~/.config/edgefleet/config.yaml).";

/// Manage fleets of edge computers: the edgefleet server, agent and command line.
#[derive(Debug, Parser)]
#[command(name = "edgefleet", version, after_help = MAIN_EXAMPLES, max_term_width = 100)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Flags every command accepts; each one also reads an environment variable.
#[derive(Debug, Clone, Args)]
pub struct GlobalArgs {
    /// CLI config file [default: ~/.config/edgefleet/config.yaml]
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        env = "EDGEFLEET_CONFIG",
        value_name = "FILE"
    )]
    pub config: Option<PathBuf>,
    /// Server URL, https://HOST:PORT (overrides the config file)
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        env = "EDGEFLEET_SERVER",
        value_name = "URL"
    )]
    pub server: Option<String>,
    /// API token (overrides the config file)
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        env = "EDGEFLEET_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
    /// PEM file with the server's CA certificate (overrides the config file)
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        env = "EDGEFLEET_CA_CERT",
        value_name = "FILE"
    )]
    pub ca_cert: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the control plane (API, built-in CA, SQLite store)
    #[command(after_help = "\
Examples:
  edgefleet server
  edgefleet server --data-dir /var/lib/edgefleet --listen 0.0.0.0:7443 --san edge.example.com

On start the server writes a CLI config to <data-dir>/cli-config.yaml, and to the user's
config file when none exists yet. The first start prints the admin API token once.")]
    Server(ServerCommand),
    /// Run the node agent (enrolls with --join the first time)
    #[command(after_help = "\
Examples:
  edgefleet agent --data-dir /var/lib/edgefleet-agent --join \"$JOIN\" --labels site=berlin
  edgefleet agent --data-dir /var/lib/edgefleet-agent     # already enrolled")]
    Agent(AgentCommand),
    /// Start a server and three agents on this machine and deploy an example
    #[command(after_help = "\
Examples:
  edgefleet quickstart
  edgefleet quickstart --dir /tmp/ef --listen 127.0.0.1:0
  edgefleet quickstart --exit-when-converged      # for scripts: stop once everything runs

Everything runs as child processes of this command, with logs in DIR/logs/. Ctrl-C stops
them all.")]
    Quickstart(QuickstartArgs),
    /// Save a server's URL, token and CA (verified by fingerprint) to the config file
    #[command(after_help = "\
Examples:
  edgefleet login --server https://10.1.2.3:7443 --token \"$TOKEN\" --ca-fingerprint 3f9a...c2
  edgefleet login --server https://10.1.2.3:7443 --token \"$TOKEN\" --ca-cert ca.crt

The CA fingerprint is printed by `edgefleet server` at start.")]
    Login(LoginArgs),
    /// Create or update deployments and maintenance windows from manifest files
    #[command(after_help = "\
Examples:
  edgefleet apply -f examples/quickstart.yaml
  edgefleet apply -f deployments/            # every *.yaml/*.yml below, sorted
  cat web.yaml | edgefleet apply -f -
  edgefleet apply --plan plan.json           # exactly what `edgefleet plan --out` saved

Every file is parsed first; if any is invalid nothing is sent. Files hold `kind: Deployment`
and `kind: MaintenanceWindow` documents. With --plan the server refuses (and nothing
changes) when the fleet or the deployments changed since the plan was computed.")]
    Apply(ApplyArgs),
    /// Show what applying manifest files would change, node by node, without changing anything
    #[command(after_help = "\
Examples:
  edgefleet plan -f deployments/
  edgefleet plan -f web.yaml --out plan.json    # then: edgefleet apply --plan plan.json
  edgefleet plan -f web.yaml -o json

The plan lists, per deployment, the revision change, the nodes it selects and changes and
the rollout steps; then the nodes grouped by identical changes, the nodes a maintenance
window, an update lock or being offline holds back, and workloads another deployment
overrides (same priority: a conflict, shown as a warning).")]
    Plan(PlanArgs),
    /// Follow and steer rollouts: status, pause, resume, promote, abort, undo, history
    #[command(
        subcommand,
        after_help = "\
Examples:
  edgefleet rollout status web --watch
  edgefleet rollout promote web
  edgefleet rollout undo web --to-revision 3
  edgefleet rollout history web"
    )]
    Rollout(RolloutCommand),
    /// Explain why a node runs what it runs, or why it does not update
    #[command(
        subcommand,
        after_help = "\
Examples:
  edgefleet explain node edge-1
  edgefleet explain node edge-1 deployment web"
    )]
    Explain(ExplainCommand),
    /// Show what happened on a node, as its flight recorder saw it
    #[command(
        subcommand,
        after_help = "Examples:\n  edgefleet events node edge-1\n  edgefleet events node edge-1 --limit 500 -o json"
    )]
    Events(EventsCommand),
    /// Show a workload's output (stdout and stderr) from its node, or follow it live
    #[command(after_help = "\
Examples:
  edgefleet logs edge-1 web                 # everything the node still keeps
  edgefleet logs edge-1 web --tail 50 -f    # the last 50 lines, then new ones as they come
  edgefleet logs edge-1 web --since 10m --timestamps
  edgefleet logs edge-1 web --since 2026-11-26T16:00:00Z 2>/dev/null   # stdout only

The workload's stdout lines go to stdout and its stderr lines to stderr, in the order it
wrote them. The node keeps a bounded amount of output per workload (the agent's
--log-max-bytes and --log-files); older lines are gone. The node must be online: the
server asks its agent and relays the answer.")]
    Logs(LogsArgs),
    /// Show metrics of a node, or fleet aggregates grouped by a node label
    #[command(after_help = "\
Examples:
  edgefleet metrics edge-1                          # every metric of the node, last hour
  edgefleet metrics edge-1 cpu.used_percent --since 6h
  edgefleet metrics edge-1 disk.used_percent -o json
  edgefleet metrics --group-by site mem.used_percent --since 1d
  edgefleet metrics --group-by site disk.used_percent -l 'tier=prod'

The table shows, per series, the last value, the minimum, average and maximum over the range,
and on a terminal a sparkline. Raw samples are kept 24 h by default; older ranges come from
5-minute rollups (the RES column says which).")]
    Metrics(MetricsArgs),
    /// List alerts, show one, list rules, and silence alerts for a while
    #[command(after_help = "\
Examples:
  edgefleet alerts                              # firing and silenced alerts
  edgefleet alerts --all                        # resolved ones too
  edgefleet alerts show 01J...                  # one alert and its webhook deliveries
  edgefleet alerts rules
  edgefleet alerts silence --site berlin --for 2h --comment 'power work'
  edgefleet alerts silence --rule disk-full --node edge-7 --for 30m
  edgefleet alerts silences
  edgefleet alerts unsilence SILENCE_ID
  edgefleet alerts delete-rule disk-full

Alert rules are `kind: AlertRule` documents, applied with `edgefleet apply -f`.")]
    Alerts(AlertsArgs),
    /// List nodes, deployments, maintenance windows, join tokens or API tokens
    #[command(after_help = "\
Examples:
  edgefleet get nodes
  edgefleet get nodes -l 'site in (berlin,lisbon),!maintenance'
  edgefleet get deployments -o yaml
  edgefleet get windows
  edgefleet get tokens")]
    Get(GetArgs),
    /// Show everything about one node or deployment
    #[command(
        subcommand,
        after_help = "Examples:\n  edgefleet describe node edge-1\n  edgefleet describe deployment base -o yaml"
    )]
    Describe(DescribeCommand),
    /// Set or remove labels
    #[command(
        subcommand,
        after_help = "Examples:\n  edgefleet label node edge-1 site=berlin rack=r4\n  edgefleet label node edge-1 rack-"
    )]
    Label(LabelCommand),
    /// Delete a deployment or a maintenance window
    #[command(
        subcommand,
        after_help = "Examples:\n  edgefleet delete deployment berlin-greeting\n  edgefleet delete window night"
    )]
    Delete(DeleteCommand),
    /// Create, list and revoke join tokens (for enrolling nodes)
    #[command(
        subcommand,
        after_help = "Examples:\n  JOIN=$(edgefleet token create --labels site=berlin)\n  edgefleet token list\n  edgefleet token revoke k3x9"
    )]
    Token(TokenCommand),
    /// Create, list and revoke API tokens (for operators and automation)
    #[command(
        subcommand,
        name = "api-token",
        after_help = "Examples:\n  edgefleet api-token create --name ci --role operator\n  edgefleet api-token list\n  edgefleet api-token revoke t1"
    )]
    ApiToken(ApiTokenCommand),
    /// Node lifecycle
    #[command(subcommand, after_help = "Examples:\n  edgefleet node revoke edge-3")]
    Node(NodeCommand),
    /// Show who changed what
    #[command(after_help = "\
Examples:
  edgefleet audit
  edgefleet audit --limit 200 -o json")]
    Audit(AuditArgs),
    /// Push, list and delete artifacts (WebAssembly modules, image archives) workloads use
    #[command(
        subcommand,
        after_help = "Examples:\n  edgefleet artifact push app.wasm\n  edgefleet artifact list\n  edgefleet artifact rm app.wasm"
    )]
    Artifact(crate::artifact::ArtifactCommand),
    /// Print the version
    #[command(after_help = "Examples:\n  edgefleet version\n  edgefleet --version")]
    Version,
}

/// `edgefleet server`'s flags are the server library's.
#[derive(Debug, Args)]
pub struct ServerCommand {
    #[command(flatten)]
    pub args: edgefleet_server::ServerArgs,
}

/// `edgefleet agent`'s flags are the agent library's. `edgefleet agent lock ...` talks to
/// an agent running on this node instead of running one.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct AgentCommand {
    #[command(subcommand)]
    pub command: Option<AgentSubcommand>,
    #[command(flatten)]
    pub args: edgefleet_agent::AgentArgs,
}

#[derive(Debug, Subcommand)]
pub enum AgentSubcommand {
    /// Hold, release or list update locks through the agent running on this node
    #[command(after_help = "\
Examples:
  # A till holds back updates of its node while a sale is in progress
  edgefleet agent lock acquire till --reason 'sale in progress'
  edgefleet agent lock release till
  edgefleet agent lock list --data-dir /var/lib/edgefleet-agent

A rollout does not update a node while one of its workloads holds a lock, for at most the
deployment's rollout.maxLockDeferral.")]
    Lock(edgefleet_agent::LockArgs),
    /// Publish records to a stream of this workload's deployment (run inside a workload)
    #[command(after_help = "\
Examples:
  edgefleet agent publish readings --json '{\"temp\":21.5}'
  sensor-reader | edgefleet agent publish readings        # one JSON record per line
  edgefleet agent publish frames --bytes-file frame.bin

The agent gives every workload EDGEFLEET_LOCAL_API (its socket) and EDGEFLEET_WORKLOAD_TOKEN.
Each record's sequence number is printed once the record is on the node's disk; from then
on it reaches the server even across crashes.")]
    Publish(edgefleet_agent::PublishArgs),
    /// Print this workload's configuration as the node runs it (run inside a workload)
    #[command(after_help = "\
Examples:
  edgefleet agent config
  edgefleet agent config | jq .env")]
    Config(edgefleet_agent::WorkloadAccess),
}

#[derive(Debug, Clone, Args)]
pub struct QuickstartArgs {
    /// Directory for data and logs [default: a new temporary directory, kept afterwards]
    #[arg(long, env = "EDGEFLEET_QUICKSTART_DIR", value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Address the server listens on; when its port is taken a free port is used
    #[arg(
        long,
        env = "EDGEFLEET_QUICKSTART_LISTEN",
        default_value = "127.0.0.1:7443",
        value_name = "ADDR"
    )]
    pub listen: SocketAddr,
    /// Stop everything and exit 0 as soon as every node runs its workloads
    #[arg(long)]
    pub exit_when_converged: bool,
    /// Give up (exit 1) when the fleet has not converged after this long
    #[arg(long, default_value = "120s", value_name = "DURATION")]
    pub timeout: DurationSpec,
}

#[derive(Debug, Clone, Args)]
pub struct LoginArgs {
    /// SHA-256 fingerprint (hex) of the server's CA certificate, as printed by `edgefleet server`
    #[arg(long, value_name = "HEX")]
    pub ca_fingerprint: Option<String>,
}

/// Either manifest files or a saved plan, never both.
#[derive(Debug, Clone, Args)]
#[group(required = true, multiple = false)]
pub struct ApplyArgs {
    /// A manifest file, a directory (every *.yaml/*.yml below it) or - for standard input
    #[arg(short = 'f', long = "filename", value_name = "PATH")]
    pub files: Vec<PathBuf>,
    /// Apply exactly the documents of a plan saved by `edgefleet plan --out FILE`, and only
    /// if the fleet and the deployments are still what the plan was computed against
    #[arg(long, value_name = "FILE")]
    pub plan: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct PlanArgs {
    /// A manifest file, a directory (every *.yaml/*.yml below it) or - for standard input
    #[arg(short = 'f', long = "filename", value_name = "PATH", required = true)]
    pub files: Vec<PathBuf>,
    /// Also save the plan as JSON to FILE, for `edgefleet apply --plan FILE`
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// What `get` lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Kind {
    #[value(alias = "node")]
    Nodes,
    #[value(alias = "deployment", alias = "deploy")]
    Deployments,
    /// Maintenance windows
    #[value(alias = "window")]
    Windows,
    /// Join tokens
    #[value(alias = "token")]
    Tokens,
    #[value(name = "api-tokens", alias = "api-token")]
    ApiTokens,
}

#[derive(Debug, Clone, Args)]
pub struct OutputArgs {
    /// Output format
    #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

#[derive(Debug, Clone, Args)]
pub struct GetArgs {
    #[arg(value_enum)]
    pub kind: Kind,
    /// Label selector: k=v, k!=v, 'k in (a,b)', 'k notin (a,b)', k, !k (comma: and)
    #[arg(short = 'l', long, value_name = "SELECTOR")]
    pub selector: Option<String>,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Subcommand)]
pub enum DescribeCommand {
    /// Status, facts, workloads, conditions and recent changes of a node
    #[command(
        after_help = "Examples:\n  edgefleet describe node edge-1\n  edgefleet describe node edge-1 -o json"
    )]
    Node {
        /// The node's name
        name: String,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Revisions, selector, workloads and per-node status of a deployment
    #[command(
        after_help = "Examples:\n  edgefleet describe deployment base\n  edgefleet describe deployment base -o yaml"
    )]
    Deployment {
        /// The deployment's name
        name: String,
        #[command(flatten)]
        output: OutputArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum LabelCommand {
    /// Set (k=v) and remove (k-) labels of a node
    #[command(
        after_help = "Examples:\n  edgefleet label node edge-1 site=berlin rack=r4\n  edgefleet label node edge-1 maintenance-"
    )]
    Node {
        /// The node's name
        name: String,
        /// k=v to set, k- to remove
        #[arg(required = true, value_name = "EDIT")]
        edits: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum DeleteCommand {
    /// Delete a deployment; its workloads stop on every node
    #[command(after_help = "Examples:\n  edgefleet delete deployment berlin-greeter")]
    Deployment {
        /// The deployment's name
        name: String,
    },
    /// Delete a maintenance window; the nodes it selected may then be updated at any time
    /// (unless another window selects them)
    #[command(after_help = "Examples:\n  edgefleet delete window night")]
    Window {
        /// The window's name
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum RolloutCommand {
    /// Show the latest rollout of a deployment: phase, steps and counts; --watch follows it
    #[command(after_help = "\
Examples:
  edgefleet rollout status web
  edgefleet rollout status web --nodes       # also every node that is not healthy, and why
  edgefleet rollout status web --watch       # until it finishes; exit 1 unless it succeeded

--watch polls every second. On a terminal it redraws one progress line; otherwise it
prints a line whenever something changed. Ctrl-C stops watching, not the rollout.")]
    Status(RolloutStatusArgs),
    /// Pause a rollout: released nodes keep their update, no further nodes are released
    #[command(after_help = "Examples:\n  edgefleet rollout pause web")]
    Pause {
        /// The deployment's name
        name: String,
    },
    /// Resume a paused rollout
    #[command(after_help = "Examples:\n  edgefleet rollout resume web")]
    Resume {
        /// The deployment's name
        name: String,
    },
    /// Let a rollout go past its canary (for `canary.manualPromotion: true`)
    #[command(after_help = "Examples:\n  edgefleet rollout promote web")]
    Promote {
        /// The deployment's name
        name: String,
    },
    /// Stop a rollout; with `autoRollback` (the default) updated nodes go back to the
    /// previous revision
    #[command(after_help = "Examples:\n  edgefleet rollout abort web")]
    Abort {
        /// The deployment's name
        name: String,
    },
    /// Roll a deployment back to an earlier revision (a new rollout of that revision)
    #[command(after_help = "\
Examples:
  edgefleet rollout undo web                    # back to the revision before the current one
  edgefleet rollout undo web --to-revision 3    # numbers as in `edgefleet rollout history web`")]
    Undo {
        /// The deployment's name
        name: String,
        /// The revision number to go back to [default: the one before the current revision]
        #[arg(long, value_name = "N")]
        to_revision: Option<u32>,
    },
    /// List the rollouts of a deployment, newest first
    #[command(
        after_help = "Examples:\n  edgefleet rollout history web\n  edgefleet rollout history web -o json"
    )]
    History {
        /// The deployment's name
        name: String,
        #[command(flatten)]
        output: OutputArgs,
    },
}

#[derive(Debug, Clone, Args)]
pub struct RolloutStatusArgs {
    /// The deployment's name
    pub name: String,
    /// Follow the rollout until it finishes (exit 0 if it succeeded, 1 otherwise)
    #[arg(short, long, conflicts_with = "output")]
    pub watch: bool,
    /// Also list every node that is not healthy, with its step, state and reason
    #[arg(long, conflicts_with = "watch")]
    pub nodes: bool,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// The keyword of `explain node NAME deployment DEPLOYMENT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExplainFilter {
    #[value(alias = "deploy")]
    Deployment,
}

#[derive(Debug, Subcommand)]
pub enum ExplainCommand {
    /// For each deployment: whether it selects the node, what overrides what, which revision
    /// the node should run and runs, and what holds it back
    #[command(after_help = "\
Examples:
  edgefleet explain node edge-1
  edgefleet explain node edge-1 deployment web
  edgefleet explain node edge-1 -o json")]
    Node {
        /// The node's name
        name: String,
        /// `deployment`, followed by a deployment's name, to explain only that deployment
        #[arg(value_enum, requires = "deployment", value_name = "deployment")]
        filter: Option<ExplainFilter>,
        /// The deployment's name (after the word `deployment`)
        #[arg(requires = "filter", value_name = "DEPLOYMENT")]
        deployment: Option<String>,
        #[command(flatten)]
        output: OutputArgs,
    },
}

#[derive(Debug, Clone, Args)]
pub struct LogsArgs {
    /// The node's name
    pub node: String,
    /// The workload's name, as in the deployment
    pub workload: String,
    /// Keep printing new lines as the workload writes them, until Ctrl-C
    #[arg(short, long)]
    pub follow: bool,
    /// Only lines written since then: a duration back from now (10m, 2h, 1d) or an RFC 3339
    /// time (2026-11-26T16:00:00Z)
    #[arg(long, value_name = "WHEN")]
    pub since: Option<crate::logs::Since>,
    /// Only the last N lines (of those --since selects)
    #[arg(long, value_name = "N")]
    pub tail: Option<u64>,
    /// Put each line's time (UTC, microseconds) in front of it
    #[arg(long)]
    pub timestamps: bool,
}

#[derive(Debug, Clone, Args)]
pub struct AlertsArgs {
    #[command(subcommand)]
    pub command: Option<AlertsCommand>,
    /// Resolved alerts too (most recent first)
    #[arg(long)]
    pub all: bool,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Clone, Subcommand)]
pub enum AlertsCommand {
    /// One alert, with its webhook deliveries
    #[command(
        after_help = "Examples:\n  edgefleet alerts show 1a2b3c4d\n  edgefleet alerts show 1a2b3c4d -o json"
    )]
    Show {
        id: String,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// The alert rules and how many of their alerts fire
    #[command(
        after_help = "Examples:\n  edgefleet alerts rules\n  edgefleet alerts rules -o yaml      # the manifests as applied"
    )]
    Rules {
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Remove an alert rule (its firing alerts resolve)
    #[command(after_help = "Examples:\n  edgefleet alerts delete-rule disk-full")]
    DeleteRule { name: String },
    /// Silence matching alerts for a while: they are tracked, not sent to webhooks
    #[command(
        after_help = "Examples:\n  edgefleet alerts silence --site berlin --for 2h --comment 'power work'\n  edgefleet alerts silence --rule disk-full --node edge-7 --for 30m\n\nEvery given matcher must match. A silence that ends while its alerts still fire lets\nthem be notified then."
    )]
    Silence {
        /// Alerts of this rule
        #[arg(long)]
        rule: Option<String>,
        /// Alerts about this node
        #[arg(long)]
        node: Option<String>,
        /// Alerts about this site, or about its nodes
        #[arg(long)]
        site: Option<String>,
        /// Alerts with these labels, `key=value,key2=value2`
        #[arg(long, default_value = "")]
        labels: String,
        /// For how long (30m, 2h, 1d)
        #[arg(long = "for", value_name = "DURATION")]
        duration: edgefleet_wire::DurationSpec,
        /// Why (shown in `edgefleet alerts silences`)
        #[arg(long, default_value = "")]
        comment: String,
    },
    /// Silences, newest first
    #[command(
        after_help = "Examples:\n  edgefleet alerts silences\n  edgefleet alerts silences -o json"
    )]
    Silences {
        #[command(flatten)]
        output: OutputArgs,
    },
    /// End a silence now
    #[command(after_help = "Examples:\n  edgefleet alerts unsilence 5e6f7a8b")]
    Unsilence { id: String },
}

#[derive(Debug, Clone, Args)]
pub struct MetricsArgs {
    /// NODE [METRIC] for one node; with --group-by only METRIC
    #[arg(value_name = "NODE|METRIC", num_args = 0..=2)]
    pub targets: Vec<String>,
    /// From when: a duration back from now (10m, 2h, 1d) or an RFC 3339 time
    #[arg(long, value_name = "WHEN", default_value = "1h")]
    pub since: crate::logs::Since,
    /// Until when (default: now)
    #[arg(long, value_name = "WHEN")]
    pub until: Option<crate::logs::Since>,
    /// Aggregate over nodes, one series per value of this node label (site, region, ...)
    #[arg(long, value_name = "LABEL")]
    pub group_by: Option<String>,
    /// Only nodes matching this label selector
    #[arg(short = 'l', long, value_name = "SELECTOR")]
    pub selector: Option<String>,
    /// Sparkline width, in characters (0: none)
    #[arg(long, default_value_t = 30)]
    pub width: usize,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Subcommand)]
pub enum EventsCommand {
    /// A node's flight recorder, oldest first: starts, exits, crash loops, rollbacks, locks
    #[command(after_help = "\
Examples:
  edgefleet events node edge-1
  edgefleet events node edge-1 --limit 500
  edgefleet events node edge-1 -o json        # newest first, as the API returns them")]
    Node {
        /// The node's name
        name: String,
        /// How many of the newest events
        #[arg(long, default_value_t = 50, value_name = "N")]
        limit: u32,
        #[command(flatten)]
        output: OutputArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a join token; prints only the join string on standard output
    #[command(after_help = "\
Examples:
  JOIN=$(edgefleet token create)
  edgefleet token create --labels site=berlin,tier=edge --ttl 7d --uses 10 --description 'rack 4'")]
    Create(TokenCreateArgs),
    /// List join tokens
    #[command(after_help = "Examples:\n  edgefleet token list\n  edgefleet token list -o json")]
    List(OutputArgs),
    /// Revoke a join token (nodes enrolled with it stay enrolled)
    #[command(after_help = "Examples:\n  edgefleet token revoke k3x9")]
    Revoke {
        /// The token's ID, as shown by `token list`
        id: String,
    },
}

#[derive(Debug, Clone, Args)]
pub struct TokenCreateArgs {
    /// Labels every node enrolled with this token gets: k=v,k2=v2
    #[arg(long, value_name = "LABELS")]
    pub labels: Option<String>,
    /// How long the token is valid
    #[arg(long, default_value = "24h", value_name = "DURATION")]
    pub ttl: DurationSpec,
    /// How many nodes may enroll with it [default: unlimited until it expires]
    #[arg(long, value_name = "N")]
    pub uses: Option<u32>,
    /// A note for `token list`
    #[arg(long, value_name = "TEXT")]
    pub description: Option<String>,
}

/// API token roles, from least to most powerful.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RoleArg {
    /// Read everything, change nothing
    Viewer,
    /// Change deployments, labels and join tokens
    Operator,
    /// Everything, including API tokens and node revocation
    Admin,
}

impl From<RoleArg> for Role {
    fn from(role: RoleArg) -> Self {
        match role {
            RoleArg::Viewer => Role::Viewer,
            RoleArg::Operator => Role::Operator,
            RoleArg::Admin => Role::Admin,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum ApiTokenCommand {
    /// Create an API token; prints the secret once on standard output
    #[command(after_help = "Examples:\n  edgefleet api-token create --name ci --role operator")]
    Create {
        /// A name for people (shown in the audit log as token:NAME)
        #[arg(long)]
        name: String,
        #[arg(long, value_enum)]
        role: RoleArg,
    },
    /// List API tokens
    #[command(
        after_help = "Examples:\n  edgefleet api-token list\n  edgefleet api-token list -o yaml"
    )]
    List(OutputArgs),
    /// Revoke an API token
    #[command(after_help = "Examples:\n  edgefleet api-token revoke t1")]
    Revoke {
        /// The token's ID, as shown by `api-token list`
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// Revoke a node's certificate; the server refuses the node from then on
    #[command(after_help = "Examples:\n  edgefleet node revoke edge-3")]
    Revoke {
        /// The node's name
        name: String,
    },
}

#[derive(Debug, Clone, Args)]
pub struct AuditArgs {
    /// How many entries, newest first
    #[arg(long, default_value_t = 50)]
    pub limit: u32,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn parses_typical_commands() {
        let cli = Cli::try_parse_from([
            "edgefleet",
            "get",
            "nodes",
            "-l",
            "site=a",
            "-o",
            "json",
            "--server",
            "https://x",
        ])
        .unwrap();
        assert_eq!(cli.global.server.as_deref(), Some("https://x"));
        match cli.command {
            Command::Get(get) => {
                assert_eq!(get.kind, Kind::Nodes);
                assert_eq!(get.selector.as_deref(), Some("site=a"));
                assert_eq!(get.output.output, OutputFormat::Json);
            }
            other => panic!("{other:?}"),
        }
        let cli = Cli::try_parse_from(["edgefleet", "label", "node", "n1", "a=b", "c-"]).unwrap();
        assert!(
            matches!(cli.command, Command::Label(LabelCommand::Node { ref edits, .. }) if edits == &["a=b", "c-"])
        );
        let cli = Cli::try_parse_from(["edgefleet", "apply", "-f", "a.yaml", "-f", "-"]).unwrap();
        assert!(matches!(cli.command, Command::Apply(ref a) if a.files.len() == 2));
        let cli = Cli::try_parse_from([
            "edgefleet",
            "token",
            "create",
            "--ttl",
            "1h30m",
            "--uses",
            "3",
        ])
        .unwrap();
        assert!(
            matches!(cli.command, Command::Token(TokenCommand::Create(ref t)) if t.ttl.0.as_secs() == 5400)
        );
        assert!(Cli::try_parse_from(["edgefleet", "get", "pods"]).is_err());
        assert!(
            Cli::try_parse_from([
                "edgefleet",
                "api-token",
                "create",
                "--name",
                "x",
                "--role",
                "root"
            ])
            .is_err()
        );
    }

    fn parse(args: &[&str]) -> Result<Command, clap::Error> {
        Cli::try_parse_from(std::iter::once("edgefleet").chain(args.iter().copied()))
            .map(|cli| cli.command)
    }

    #[test]
    fn apply_takes_files_or_a_plan_not_both() {
        let command = parse(&["apply", "--plan", "plan.json"]).unwrap();
        assert!(
            matches!(command, Command::Apply(ref a) if a.files.is_empty() && a.plan.as_deref() == Some(std::path::Path::new("plan.json")))
        );
        let error = parse(&["apply", "--plan", "plan.json", "-f", "web.yaml"]).unwrap_err();
        assert_eq!(error.kind(), clap::error::ErrorKind::ArgumentConflict);
        let error = parse(&["apply"]).unwrap_err();
        assert_eq!(
            error.kind(),
            clap::error::ErrorKind::MissingRequiredArgument
        );
    }

    #[test]
    fn plan_flags() {
        let command = parse(&[
            "plan", "-f", "a.yaml", "-f", "dir/", "--out", "p.json", "-o", "yaml",
        ])
        .unwrap();
        match command {
            Command::Plan(plan) => {
                assert_eq!(plan.files.len(), 2);
                assert_eq!(plan.out.as_deref(), Some(std::path::Path::new("p.json")));
                assert_eq!(plan.output.output, OutputFormat::Yaml);
            }
            other => panic!("{other:?}"),
        }
        assert!(parse(&["plan", "--out", "p.json"]).is_err());
    }

    #[test]
    fn rollout_commands() {
        match parse(&["rollout", "status", "web", "-w"]).unwrap() {
            Command::Rollout(RolloutCommand::Status(status)) => {
                assert_eq!(status.name, "web");
                assert!(status.watch && !status.nodes);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse(&["rollout", "status", "web", "--nodes", "-o", "json"]).unwrap(),
            Command::Rollout(RolloutCommand::Status(ref s)) if s.nodes && s.output.output == OutputFormat::Json
        ));
        let error = parse(&["rollout", "status", "web", "--watch", "-o", "json"]).unwrap_err();
        assert_eq!(error.kind(), clap::error::ErrorKind::ArgumentConflict);
        for action in ["pause", "resume", "promote", "abort"] {
            assert!(parse(&["rollout", action, "web"]).is_ok(), "{action}");
            assert!(parse(&["rollout", action]).is_err(), "{action}");
        }
        assert!(matches!(
            parse(&["rollout", "undo", "web", "--to-revision", "3"]).unwrap(),
            Command::Rollout(RolloutCommand::Undo { ref name, to_revision: Some(3) }) if name == "web"
        ));
        assert!(matches!(
            parse(&["rollout", "undo", "web"]).unwrap(),
            Command::Rollout(RolloutCommand::Undo {
                to_revision: None,
                ..
            })
        ));
        assert!(matches!(
            parse(&["rollout", "history", "web", "-o", "yaml"]).unwrap(),
            Command::Rollout(RolloutCommand::History { ref output, .. }) if output.output == OutputFormat::Yaml
        ));
    }

    #[test]
    fn explain_and_events() {
        match parse(&["explain", "node", "edge-1", "deployment", "web"]).unwrap() {
            Command::Explain(ExplainCommand::Node {
                name,
                filter,
                deployment,
                ..
            }) => {
                assert_eq!(name, "edge-1");
                assert_eq!(filter, Some(ExplainFilter::Deployment));
                assert_eq!(deployment.as_deref(), Some("web"));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse(&["explain", "node", "edge-1"]).unwrap(),
            Command::Explain(ExplainCommand::Node {
                deployment: None,
                ..
            })
        ));
        assert!(parse(&["explain", "node", "edge-1", "web"]).is_err());
        assert!(parse(&["explain", "node", "edge-1", "deployment"]).is_err());
        assert!(matches!(
            parse(&["events", "node", "edge-1", "--limit", "10"]).unwrap(),
            Command::Events(EventsCommand::Node { limit: 10, .. })
        ));
        assert!(matches!(
            parse(&["events", "node", "edge-1"]).unwrap(),
            Command::Events(EventsCommand::Node { limit: 50, .. })
        ));
    }

    #[test]
    fn windows_can_be_listed_and_deleted() {
        for word in ["windows", "window"] {
            assert!(matches!(
                parse(&["get", word]).unwrap(),
                Command::Get(ref g) if g.kind == Kind::Windows
            ));
        }
        assert!(matches!(
            parse(&["delete", "window", "night"]).unwrap(),
            Command::Delete(DeleteCommand::Window { ref name }) if name == "night"
        ));
    }

    /// Every command a person can run has examples in its `--help`.
    #[test]
    fn every_command_has_examples() {
        fn check(command: &clap::Command, path: &str) {
            let path = format!("{path} {}", command.get_name());
            if command.get_name() == "help" {
                return;
            }
            let after = command
                .get_after_help()
                .map(|h| h.to_string())
                .unwrap_or_default();
            assert!(after.contains("Examples:"), "{path} has no examples");
            for sub in command.get_subcommands() {
                check(sub, &path);
            }
        }
        let cli = Cli::command();
        for sub in cli.get_subcommands() {
            if matches!(sub.get_name(), "server" | "agent" | "help") {
                continue;
            }
            check(sub, "edgefleet");
        }
        let main = cli
            .get_after_help()
            .map(|h| h.to_string())
            .unwrap_or_default();
        for mention in ["edgefleet plan", "edgefleet rollout", "edgefleet explain"] {
            assert!(main.contains(mention), "{mention}");
        }
    }
}
