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

  # Say what runs where, and watch it
  edgefleet apply -f deployments/
  edgefleet get nodes -l site=berlin
  edgefleet describe node edge-1

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
    /// Create or update deployments from manifest files
    #[command(after_help = "\
Examples:
  edgefleet apply -f examples/quickstart.yaml
  edgefleet apply -f deployments/            # every *.yaml/*.yml below, sorted
  cat web.yaml | edgefleet apply -f -

Every file is parsed first; if any is invalid nothing is sent.")]
    Apply(ApplyArgs),
    /// List nodes, deployments, join tokens or API tokens
    #[command(after_help = "\
Examples:
  edgefleet get nodes
  edgefleet get nodes -l 'site in (berlin,lisbon),!maintenance'
  edgefleet get deployments -o yaml
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
    /// Delete a deployment
    #[command(
        subcommand,
        after_help = "Examples:\n  edgefleet delete deployment berlin-greeting"
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

/// `edgefleet agent`'s flags are the agent library's.
#[derive(Debug, Args)]
pub struct AgentCommand {
    #[command(flatten)]
    pub args: edgefleet_agent::AgentArgs,
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

#[derive(Debug, Clone, Args)]
pub struct ApplyArgs {
    /// A manifest file, a directory (every *.yaml/*.yml below it) or - for standard input
    #[arg(short = 'f', long = "filename", value_name = "PATH", required = true)]
    pub files: Vec<PathBuf>,
}

/// What `get` lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Kind {
    #[value(alias = "node")]
    Nodes,
    #[value(alias = "deployment", alias = "deploy")]
    Deployments,
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
}
