//! Carries out the CLI commands that talk to a server: fetch, print, report.

use std::path::PathBuf;

use anyhow::bail;
use edgefleet_core::selector;
use edgefleet_wire::api::{
    Ack, ApiTokenInfo, AuditEntry, CreateApiToken, CreateJoinToken, CreatedApiToken,
    CreatedJoinToken, DeploymentDetail, DeploymentSummary, JoinTokenInfo, NodeDetail, NodeSummary,
    WindowInfo,
};
use edgefleet_wire::manifest::Selector;
use edgefleet_wire::node::StoredNodeEvent;
use time::OffsetDateTime;

use crate::cli::{
    ApiTokenCommand, ApplyArgs, AuditArgs, DeleteCommand, DescribeCommand, EventsCommand, GetArgs,
    GlobalArgs, Kind, LabelCommand, NodeCommand, TokenCommand, TokenCreateArgs,
};
use crate::client::{ApiClient, ClientError};
use crate::config::{self, CliConfig, Overrides};
use crate::output::{self, note};
use crate::{apply, views};

/// The config file path: `--config`/`EDGEFLEET_CONFIG`, else the default.
pub fn config_path(global: &GlobalArgs) -> anyhow::Result<PathBuf> {
    match &global.config {
        Some(path) => Ok(path.clone()),
        None => config::default_path(),
    }
}

/// A client for the server that flags, environment and config file name, with a token.
pub fn connect(global: &GlobalArgs) -> anyhow::Result<ApiClient> {
    let overrides = Overrides {
        server: global.server.clone(),
        token: global.token.clone(),
        ca_cert: global.ca_cert.clone(),
    };
    let everything_given =
        overrides.server.is_some() && overrides.token.is_some() && overrides.ca_cert.is_some();
    let (path, file) = match config_path(global) {
        Ok(path) => {
            let file = CliConfig::load(&path)?;
            (path, file)
        }
        // Without HOME there is no default file; that only matters if something is missing.
        Err(_) if everything_given => (PathBuf::from("~/.config/edgefleet/config.yaml"), None),
        Err(error) => return Err(error),
    };
    let connection = config::resolve(&overrides, &path, file.as_ref())?;
    ApiClient::new(&connection)?.require_token()
}

pub async fn apply(client: &ApiClient, args: &ApplyArgs) -> anyhow::Result<()> {
    let (response, rules) = match &args.plan {
        Some(plan) => (apply::apply_plan(client, plan).await?, Vec::new()),
        None => apply::apply(client, &args.files).await?,
    };
    let mut text = apply::response_lines(&response);
    for rule in &rules {
        text.push_str(&apply::rule_result_line(rule));
        text.push('\n');
    }
    output::stdout(&text)
}

fn parse_selector(input: &str) -> anyhow::Result<Selector> {
    selector::parse(input).map_err(|e| anyhow::anyhow!("{e}"))
}

pub async fn get(client: &ApiClient, args: &GetArgs) -> anyhow::Result<()> {
    let format = args.output.output;
    let now = OffsetDateTime::now_utc();
    let selector = args.selector.as_deref().map(parse_selector).transpose()?;
    match args.kind {
        Kind::Nodes => {
            let query: Vec<(&str, String)> = args
                .selector
                .iter()
                .map(|s| ("selector", s.clone()))
                .collect();
            let nodes: Vec<NodeSummary> = client.get(&["v1", "nodes"], &query).await?;
            output::print(&nodes, format, || views::nodes_table(&nodes, now))
        }
        Kind::Deployments => {
            let mut deployments: Vec<DeploymentSummary> =
                client.get(&["v1", "deployments"], &[]).await?;
            if let Some(selector) = &selector {
                deployments = filter_deployments(client, deployments, selector).await?;
            }
            output::print(&deployments, format, || {
                views::deployments_table(&deployments, now)
            })
        }
        Kind::Windows => {
            let mut windows: Vec<WindowInfo> = client.get(&["v1", "windows"], &[]).await?;
            if let Some(selector) = &selector {
                windows.retain(|w| selector::matches(selector, &w.manifest.metadata.labels));
            }
            output::print(&windows, format, || views::windows_table(&windows))
        }
        Kind::Tokens => {
            let mut tokens: Vec<JoinTokenInfo> = client.get(&["v1", "tokens"], &[]).await?;
            if let Some(selector) = &selector {
                tokens.retain(|t| selector::matches(selector, &t.labels));
            }
            output::print(&tokens, format, || views::tokens_table(&tokens, now))
        }
        Kind::ApiTokens => {
            if selector.is_some() {
                bail!("-l does not apply to api-tokens: they have no labels");
            }
            let tokens: Vec<ApiTokenInfo> = client.get(&["v1", "api-tokens"], &[]).await?;
            output::print(&tokens, format, || views::api_tokens_table(&tokens, now))
        }
    }
}

/// Keeps the deployments whose `metadata.labels` match. Summaries carry no labels, so this
/// reads each deployment's detail (one request per deployment, only when `-l` is given).
async fn filter_deployments(
    client: &ApiClient,
    deployments: Vec<DeploymentSummary>,
    selector: &Selector,
) -> anyhow::Result<Vec<DeploymentSummary>> {
    let mut kept = Vec::new();
    for deployment in deployments {
        let detail: DeploymentDetail = client
            .get(&["v1", "deployments", &deployment.name], &[])
            .await?;
        if selector::matches(selector, &detail.manifest.metadata.labels) {
            kept.push(deployment);
        }
    }
    Ok(kept)
}

pub async fn describe(client: &ApiClient, command: &DescribeCommand) -> anyhow::Result<()> {
    let now = OffsetDateTime::now_utc();
    match command {
        DescribeCommand::Node { name, output } => {
            let detail: NodeDetail = client.get(&["v1", "nodes", name], &[]).await?;
            let timeline = match output.output {
                output::OutputFormat::Table => timeline(client, name).await?,
                _ => None,
            };
            output::print(&detail, output.output, || {
                views::describe_node(&detail, timeline.as_deref(), now)
            })
        }
        DescribeCommand::Deployment { name, output } => {
            let detail: DeploymentDetail = client.get(&["v1", "deployments", name], &[]).await?;
            output::print(&detail, output.output, || {
                views::describe_deployment(&detail, now)
            })
        }
    }
}

/// The node's newest events for `describe node`; `None` from a server without the events
/// endpoint (it answers 404 for a node that, as just fetched, exists).
async fn timeline(client: &ApiClient, name: &str) -> anyhow::Result<Option<Vec<StoredNodeEvent>>> {
    let limit = views::TIMELINE_EVENTS.to_string();
    match client
        .get(&["v1", "nodes", name, "events"], &[("limit", limit)])
        .await
    {
        Ok(events) => Ok(Some(events)),
        Err(ClientError::Api { status: 404, .. }) => Ok(None),
        Err(error) => Err(error.into()),
    }
}

pub async fn events(client: &ApiClient, command: &EventsCommand) -> anyhow::Result<()> {
    let EventsCommand::Node {
        name,
        limit,
        output,
    } = command;
    let events: Vec<StoredNodeEvent> = client
        .get(
            &["v1", "nodes", name, "events"],
            &[("limit", limit.to_string())],
        )
        .await?;
    output::print(&events, output.output, || views::events_table(&events))
}

pub async fn label(client: &ApiClient, command: &LabelCommand) -> anyhow::Result<()> {
    let LabelCommand::Node { name, edits } = command;
    let change = edgefleet_core::labels::parse_edits(edits)?;
    let node: NodeSummary = client
        .patch(&["v1", "nodes", name, "labels"], &change)
        .await?;
    output::stdout(&format!(
        "node/{} labeled: {}\n",
        node.name,
        views::labels(&node.labels)
    ))
}

pub async fn delete(client: &ApiClient, command: &DeleteCommand) -> anyhow::Result<()> {
    match command {
        DeleteCommand::Deployment { name } => {
            let _: Ack = client.delete(&["v1", "deployments", name]).await?;
            output::stdout(&format!("deployment/{name} deleted\n"))
        }
        DeleteCommand::Window { name } => {
            let _: Ack = client.delete(&["v1", "windows", name]).await?;
            output::stdout(&format!("window/{name} deleted\n"))
        }
    }
}

pub async fn token(client: &ApiClient, command: &TokenCommand) -> anyhow::Result<()> {
    match command {
        TokenCommand::Create(args) => {
            let created = create_join_token(client, args).await?;
            // Only the join string goes to stdout, so `JOIN=$(edgefleet token create)` works.
            output::stdout(&format!("{}\n", created.join))?;
            let uses = created
                .info
                .uses_allowed
                .map_or_else(|| "unlimited uses".to_owned(), |n| format!("{n} uses"));
            note(&format!(
                "join token {} created (expires {}, {uses}, labels {}).\n\
                 Enroll a node with: edgefleet agent --data-dir /var/lib/edgefleet-agent --join <the join string above>",
                created.info.id,
                crate::human::timestamp(created.info.expires_at),
                views::labels(&created.info.labels),
            ));
            Ok(())
        }
        TokenCommand::List(output) => {
            let tokens: Vec<JoinTokenInfo> = client.get(&["v1", "tokens"], &[]).await?;
            let now = OffsetDateTime::now_utc();
            output::print(&tokens, output.output, || views::tokens_table(&tokens, now))
        }
        TokenCommand::Revoke { id } => {
            let _: Ack = client.delete(&["v1", "tokens", id]).await?;
            output::stdout(&format!("token/{id} revoked\n"))
        }
    }
}

/// The request body of `token create`; validated here so mistakes are caught before sending.
pub fn join_token_request(args: &TokenCreateArgs) -> anyhow::Result<CreateJoinToken> {
    let labels = match &args.labels {
        Some(text) => edgefleet_core::labels::parse_assignments(text)?,
        None => Default::default(),
    };
    let ttl_seconds = args.ttl.as_duration().as_secs();
    if ttl_seconds == 0 {
        bail!("--ttl must be at least 1s");
    }
    if args.uses == Some(0) {
        bail!("--uses must be at least 1 (leave it out for unlimited uses)");
    }
    Ok(CreateJoinToken {
        labels,
        ttl_seconds,
        uses: args.uses,
        description: args.description.clone(),
    })
}

pub async fn create_join_token(
    client: &ApiClient,
    args: &TokenCreateArgs,
) -> anyhow::Result<CreatedJoinToken> {
    let request = join_token_request(args)?;
    Ok(client.post(&["v1", "tokens"], &request).await?)
}

pub async fn api_token(client: &ApiClient, command: &ApiTokenCommand) -> anyhow::Result<()> {
    match command {
        ApiTokenCommand::Create { name, role } => {
            let request = CreateApiToken {
                name: name.clone(),
                role: (*role).into(),
            };
            let created: CreatedApiToken = client.post(&["v1", "api-tokens"], &request).await?;
            output::stdout(&format!("{}\n", created.token))?;
            note(&format!(
                "API token {} ({}, role {}) created. It is shown only this once: store it now.\n\
                 Use it with: EDGEFLEET_TOKEN=<token> edgefleet get nodes, or edgefleet login --server {} --token <token> ...",
                created.info.id,
                created.info.name,
                created.info.role.as_str(),
                client.server()
            ));
            Ok(())
        }
        ApiTokenCommand::List(output) => {
            let tokens: Vec<ApiTokenInfo> = client.get(&["v1", "api-tokens"], &[]).await?;
            let now = OffsetDateTime::now_utc();
            output::print(&tokens, output.output, || {
                views::api_tokens_table(&tokens, now)
            })
        }
        ApiTokenCommand::Revoke { id } => {
            let _: Ack = client.delete(&["v1", "api-tokens", id]).await?;
            output::stdout(&format!("api-token/{id} revoked\n"))
        }
    }
}

pub async fn node(client: &ApiClient, command: &NodeCommand) -> anyhow::Result<()> {
    let NodeCommand::Revoke { name } = command;
    let node: NodeSummary = client
        .post(&["v1", "nodes", name, "revoke"], &serde_json::json!({}))
        .await?;
    output::stdout(&format!(
        "node/{} revoked (status {})\n",
        node.name,
        node.status.as_str()
    ))
}

pub async fn audit(client: &ApiClient, args: &AuditArgs) -> anyhow::Result<()> {
    let entries: Vec<AuditEntry> = client
        .get(&["v1", "audit"], &[("limit", args.limit.to_string())])
        .await?;
    output::print(&entries, args.output.output, || {
        views::audit_table(&entries)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(labels: Option<&str>, ttl: &str, uses: Option<u32>) -> TokenCreateArgs {
        TokenCreateArgs {
            labels: labels.map(str::to_owned),
            ttl: ttl.parse().unwrap(),
            uses,
            description: None,
        }
    }

    #[test]
    fn join_token_requests_are_checked() {
        let request =
            join_token_request(&args(Some("site=berlin,tier=edge"), "2h", Some(3))).unwrap();
        assert_eq!(request.ttl_seconds, 7200);
        assert_eq!(request.labels.len(), 2);
        assert_eq!(request.uses, Some(3));
        assert!(join_token_request(&args(Some("site"), "2h", None)).is_err());
        assert!(join_token_request(&args(None, "0", None)).is_err());
        assert!(join_token_request(&args(None, "1h", Some(0))).is_err());
    }
}
