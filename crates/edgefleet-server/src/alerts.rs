//! Monitoring and alerts: rule evaluation, site grouping, silences and webhook
//! notifications. The decisions are `edgefleet_core::alerts`; this module feeds it and
//! carries out what it says.
//!
//! Two tasks run under `run`:
//! - `evaluator`: every `--alert-interval` (and soon after a rule or silence changes) it
//!   reads the rules, the nodes, the metric windows and drop totals the rules need, and
//!   the silences; steps the engine from its stored state; and stores the new state, the
//!   changed alerts and the notifications to send in one transaction.
//! - `delivery`: sends queued notifications to their receivers (each rule's webhooks
//!   plus the `--alert-webhook` ones) as `POST` requests with a JSON
//!   `edgefleet_wire::alert::WebhookPayload`, retrying failures with exponential backoff
//!   (1 s doubling to 5 min) up to `--alert-webhook-attempts`, each attempt recorded.
//!
//! **Invariants:** a notification is queued in the same transaction as the engine state
//! that produced it, so a restart neither loses nor repeats one (at least once: a
//! crash between a successful `POST` and its record sends it again). A receiver gets
//! the notifications of one alert in the order they were made: a later one waits until
//! the earlier one is delivered or given up.
//!
//! Metrics: `edgefleet_alerts_firing` (silenced included) after each evaluation, and
//! `edgefleet_webhook_queue_depth` (notifications not delivered nor given up).

mod delivery;
mod evaluator;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use edgefleet_wire::DurationSpec;
use tokio::sync::Notify;

use crate::state::AppState;

/// Flags of this part of the server (flattened into `ServerArgs`).
#[derive(clap::Args, Debug, Clone)]
pub struct AlertArgs {
    /// How often alert rules are evaluated
    #[arg(long, env = "EDGEFLEET_ALERT_INTERVAL", default_value = "15s")]
    pub alert_interval: DurationSpec,
    /// A webhook URL every alert notification is sent to, besides the rules' own (repeatable)
    #[arg(long = "alert-webhook", env = "EDGEFLEET_ALERT_WEBHOOK")]
    pub alert_webhooks: Vec<String>,
    /// Delivery attempts per notification and receiver before giving up
    #[arg(long, env = "EDGEFLEET_ALERT_WEBHOOK_ATTEMPTS", default_value_t = 12)]
    pub alert_webhook_attempts: u32,
    /// Timeout of one webhook request
    #[arg(long, env = "EDGEFLEET_ALERT_WEBHOOK_TIMEOUT", default_value = "10s")]
    pub alert_webhook_timeout: DurationSpec,
    /// CA certificates (PEM) trusted for https:// webhooks [default: the system's CA bundle]
    #[arg(long, env = "EDGEFLEET_ALERT_WEBHOOK_CA")]
    pub alert_webhook_ca: Option<PathBuf>,
    /// How long resolved alerts, finished webhook deliveries and ended silences are kept
    #[arg(long, env = "EDGEFLEET_ALERT_HISTORY", default_value = "30d")]
    pub alert_history: DurationSpec,
}

impl Default for AlertArgs {
    fn default() -> Self {
        Self {
            alert_interval: DurationSpec::from_secs(15),
            alert_webhooks: Vec::new(),
            alert_webhook_attempts: 12,
            alert_webhook_timeout: DurationSpec::from_secs(10),
            alert_webhook_ca: None,
            alert_history: DurationSpec::from_secs(30 * 86_400),
        }
    }
}

/// A metric series whose newest sample is older than this no longer counts.
pub const METRIC_STALENESS: Duration = Duration::from_secs(300);

/// What handlers and background tasks share of this part (held in `AppState`).
#[derive(Debug)]
pub struct Alerts {
    interval: Duration,
    webhooks: Vec<String>,
    attempts: u32,
    history: Duration,
    client: reqwest::Client,
    /// Rules or silences changed: evaluate soon.
    changed: Notify,
    /// Notifications were queued: deliver now.
    queued: Notify,
}

impl Alerts {
    pub fn new(args: &AlertArgs, _data_dir: &Path) -> anyhow::Result<Self> {
        let interval = args.alert_interval.as_duration();
        if interval < Duration::from_millis(100) {
            bail!(
                "--alert-interval {} is too short: use at least 100ms",
                args.alert_interval
            );
        }
        if args.alert_webhook_attempts == 0 {
            bail!("--alert-webhook-attempts must be at least 1");
        }
        let timeout = args.alert_webhook_timeout.as_duration();
        if timeout.is_zero() {
            bail!("--alert-webhook-timeout must be longer than 0s");
        }
        let mut webhooks = Vec::new();
        for url in &args.alert_webhooks {
            edgefleet_core::alerts::validate_webhook_url(url)
                .map_err(|message| anyhow::anyhow!("--alert-webhook: {message}"))?;
            if !webhooks.contains(url) {
                webhooks.push(url.clone());
            }
        }
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(webhook_tls(args.alert_webhook_ca.as_deref())?)
            .timeout(timeout)
            .connect_timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(format!("edgefleet/{}", edgefleet_wire::AGENT_VERSION))
            .build()
            .context("building the webhook client")?;
        Ok(Self {
            interval,
            webhooks,
            attempts: args.alert_webhook_attempts,
            history: args.alert_history.as_duration(),
            client,
            changed: Notify::new(),
            queued: Notify::new(),
        })
    }

    /// Asks for an evaluation soon (rules or silences changed).
    pub fn poke(&self) {
        self.changed.notify_one();
    }
}

/// Where CA bundles usually are (Debian/Ubuntu/Alpine, Fedora/RHEL, openSUSE, macOS/BSD).
const SYSTEM_CA_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

/// TLS for https webhooks: `--alert-webhook-ca` (an error when unusable), else the
/// system's bundle. Without a usable bundle, https deliveries fail (and say why in their
/// record); http ones still work.
fn webhook_tls(ca_file: Option<&Path>) -> anyhow::Result<tokio_rustls::rustls::ClientConfig> {
    if let Some(path) = ca_file {
        let pem = std::fs::read_to_string(path)
            .with_context(|| format!("reading --alert-webhook-ca {}", path.display()))?;
        return edgefleet_tls::client_config(&pem, None)
            .with_context(|| format!("--alert-webhook-ca {}", path.display()));
    }
    let system = SYSTEM_CA_BUNDLES
        .iter()
        .map(PathBuf::from)
        .find(|path| path.is_file());
    let loaded = system.as_ref().map(|path| {
        std::fs::read_to_string(path)
            .map_err(anyhow::Error::from)
            .and_then(|pem| Ok(edgefleet_tls::client_config(&pem, None)?))
            .with_context(|| format!("system CA bundle {}", path.display()))
    });
    match loaded {
        Some(Ok(config)) => return Ok(config),
        Some(Err(error)) => tracing::warn!(
            error = format!("{error:#}"),
            "https:// alert webhooks will fail; set --alert-webhook-ca"
        ),
        None => tracing::warn!(
            "no CA bundle found for https:// alert webhooks (looked at {}); set --alert-webhook-ca",
            SYSTEM_CA_BUNDLES.join(", ")
        ),
    }
    Ok(
        tokio_rustls::rustls::ClientConfig::builder_with_provider(edgefleet_tls::provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(tokio_rustls::rustls::RootCertStore::empty())
            .with_no_client_auth(),
    )
}

/// The background work of this part; runs until the server stops (it is aborted then).
pub async fn run(state: AppState) {
    tokio::join!(evaluator::run(state.clone()), delivery::run(state.clone()));
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: AlertArgs,
    }

    fn parse(args: &[&str]) -> AlertArgs {
        Cli::try_parse_from(std::iter::once("edgefleet").chain(args.iter().copied()))
            .unwrap()
            .args
    }

    #[test]
    fn clap_defaults_match_default() {
        let parsed = parse(&[]);
        let built = AlertArgs::default();
        assert_eq!(parsed.alert_interval, built.alert_interval);
        assert_eq!(parsed.alert_webhooks, built.alert_webhooks);
        assert_eq!(parsed.alert_webhook_attempts, built.alert_webhook_attempts);
        assert_eq!(parsed.alert_webhook_timeout, built.alert_webhook_timeout);
        assert_eq!(parsed.alert_webhook_ca, built.alert_webhook_ca);
        assert_eq!(parsed.alert_history, built.alert_history);
        let hooks = parse(&[
            "--alert-webhook",
            "http://a/x",
            "--alert-webhook",
            "https://b/y",
        ]);
        assert_eq!(hooks.alert_webhooks, ["http://a/x", "https://b/y"]);
    }

    #[test]
    fn bad_settings_are_refused_at_start() {
        let dir = std::path::Path::new("/nonexistent");
        let error = |args: AlertArgs| Alerts::new(&args, dir).unwrap_err().to_string();
        assert!(Alerts::new(&AlertArgs::default(), dir).is_ok());
        assert!(
            error(parse(&["--alert-webhook", "ftp://x"]))
                .contains("--alert-webhook: webhook \"ftp://x\" is not an http:// or https:// URL")
        );
        assert!(error(parse(&["--alert-webhook-attempts", "0"])).contains("at least 1"));
        assert!(error(parse(&["--alert-interval", "10ms"])).contains("--alert-interval 10ms"));
        assert!(
            error(parse(&["--alert-webhook-ca", "/nonexistent/ca.pem"]))
                .contains("reading --alert-webhook-ca /nonexistent/ca.pem")
        );
    }
}
