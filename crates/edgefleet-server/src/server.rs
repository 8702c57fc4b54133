//! `Server`: the entry points of `docs/dev/contracts.md`. `start` prepares everything
//! that can fail (data directory, PKI, database, admin token, listener) so the caller can
//! report it before serving; `run_until` serves.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::args::ServerArgs;
use crate::datadir::{self, ADMIN_TOKEN};
use crate::handlers::tokens::{api_token_audit, new_api_token};
use crate::routes::router;
use crate::state::{AppState, Settings};
use crate::store::{self, ApiTokenRecord, CreateOutcome, Store};
use edgefleet_wire::api::Role;

/// How often a failed desired-state recompute is retried.
const RESYNC_INTERVAL: Duration = Duration::from_secs(5);

/// What `Server::start` tells its caller.
#[derive(Debug, Clone)]
pub struct StartInfo {
    /// The advertised https URL.
    pub url: String,
    /// The bound address (the real port when the listen port was 0).
    pub local_addr: SocketAddr,
    pub data_dir: PathBuf,
    pub ca_pem: String,
    pub ca_sha256: String,
    /// The admin API token, only on the very first start (when it was created).
    pub admin_token: Option<String>,
}

/// A started, not yet serving, control plane.
pub struct Server {
    listener: TcpListener,
    acceptor: TlsAcceptor,
    state: AppState,
    stopping: watch::Sender<bool>,
    url: String,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl Server {
    /// Opens/initialises the data dir (CA, server cert, admin token, database), binds the listener.
    pub async fn start(args: ServerArgs) -> anyhow::Result<(Server, StartInfo)> {
        check_args(&args)?;
        let data_dir = match args.data_dir.clone() {
            Some(dir) => dir,
            None => datadir::default_data_dir()?,
        };
        datadir::prepare_dir(&data_dir)?;
        let listener = TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("listening on {}", args.listen))?;
        let local_addr = listener.local_addr().context("reading the bound address")?;
        let hostname = datadir::hostname();
        let url = match &args.advertise_url {
            Some(url) => {
                datadir::url_host(url)?;
                url.trim_end_matches('/').to_owned()
            }
            None => datadir::default_advertise_url(local_addr, hostname.as_deref()),
        };
        let sans = datadir::wanted_sans(local_addr, hostname.as_deref(), Some(&url), &args.san)?;
        let now = crate::state::now();
        let pki = {
            let dir = data_dir.clone();
            tokio::task::spawn_blocking(move || datadir::load_or_create_pki(&dir, &sans, now))
                .await
                .context("preparing certificates")??
        };
        let store = store::open(&data_dir)
            .await
            .context("opening the database")?;
        let admin_token = ensure_admin_token(&*store, &data_dir, now).await?;

        let tls_config = edgefleet_tls::server_config(
            &pki.server_chain_pem,
            &pki.server_key_pem,
            pki.ca.cert_pem(),
        )
        .context("building the TLS configuration")?;
        let (stopping, stopping_rx) = watch::channel(false);
        let info = StartInfo {
            url: url.clone(),
            local_addr,
            data_dir,
            ca_pem: pki.ca.cert_pem().to_owned(),
            ca_sha256: pki.ca_sha256.clone(),
            admin_token,
        };
        let settings = Settings {
            ca_sha256: pki.ca_sha256,
            advertise_url: url.clone(),
            node_cert_validity: args.node_cert_validity.as_duration(),
            not_ready_after: args.not_ready_after.as_duration(),
            max_body_bytes: args.max_body_bytes,
            artifacts_dir: datadir::prepare_artifacts_dir(&info.data_dir)?,
            max_artifact_bytes: args.max_artifact_size.0,
            telemetry: crate::telemetry::Telemetry::new(&args.telemetry, &info.data_dir)?,
            lake: crate::lake::Lake::new(&args.lake, &info.data_dir)?,
            alerts: crate::alerts::Alerts::new(&args.alerts, &info.data_dir)?,
        };
        let state = AppState::new(store, pki.ca, settings, stopping_rx);
        // Startup is a reconcile like any other: rollouts resume where they were, and
        // desired states follow the deployments and rollouts even if they were stored by
        // an older release with other merge rules.
        state
            .controller
            .load(now)
            .await
            .context("loading rollouts and computing desired state")?;
        let server = Server {
            listener,
            acceptor: TlsAcceptor::from(Arc::new(tls_config)),
            state,
            stopping,
            url,
        };
        Ok((server, info))
    }

    /// Serves until `shutdown` resolves, then drains connections (long polls end at once).
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let Server {
            listener,
            acceptor,
            state,
            stopping,
            url,
        } = self;
        tracing::info!(url = %url, local_addr = ?listener.local_addr().ok(), "serving");
        let resync = tokio::spawn(resync_loop(state.clone()));
        let rollouts = tokio::spawn(rollout_loop(state.clone()));
        let presence = tokio::spawn(presence_loop(state.clone()));
        let traffic = crate::metrics::TrafficFlusher::spawn(state.clone());
        let background = [
            tokio::spawn(crate::telemetry::run(state.clone())),
            tokio::spawn(crate::lake::run(state.clone())),
            tokio::spawn(crate::alerts::run(state.clone())),
        ];
        crate::serve::serve(listener, acceptor, router(state), stopping, shutdown).await;
        resync.abort();
        rollouts.abort();
        for task in background {
            task.abort();
        }
        // It flushes once more when it sees the shutdown, then ends.
        let _ = presence.await;
        // After the drain, so the last requests' traffic is stored too.
        traffic.finish().await;
        tracing::info!("server stopped");
        Ok(())
    }
}

/// Node certificates between five seconds and ten years. Lifetimes of seconds only make
/// sense to exercise renewal (tests, demos): certificate times have one-second resolution,
/// so shorter ones could not be renewed in time. Longer than ten years defeats short-lived
/// certificates (and overflows date arithmetic eventually).
const NODE_CERT_VALIDITY_RANGE: (Duration, Duration) =
    (Duration::from_secs(5), Duration::from_secs(3650 * 86_400));

fn check_args(args: &ServerArgs) -> anyhow::Result<()> {
    let validity = args.node_cert_validity.as_duration();
    let (shortest, longest) = NODE_CERT_VALIDITY_RANGE;
    if validity < shortest || validity > longest {
        bail!(
            "--node-cert-validity {} is out of range: use between 5s and 3650d",
            args.node_cert_validity
        );
    }
    if args.not_ready_after.as_duration().is_zero() {
        bail!("--not-ready-after must be longer than 0s");
    }
    if args.max_body_bytes == 0 {
        bail!("--max-body-bytes must be at least 1");
    }
    if args.max_artifact_size.0 == 0 {
        bail!("--max-artifact-size must be at least 1 byte");
    }
    Ok(())
}

async fn resync_loop(state: AppState) {
    let mut stopping = std::pin::pin!(crate::state::stopping(state.shutdown.clone()));
    loop {
        tokio::select! {
            () = &mut stopping => return,
            () = tokio::time::sleep(RESYNC_INTERVAL) => state.controller.resync_if_dirty().await,
        }
    }
}

/// Writes buffered heartbeats and last-seen times every second, and once more at shutdown.
async fn presence_loop(state: AppState) {
    let mut stopping = std::pin::pin!(crate::state::stopping(state.shutdown.clone()));
    loop {
        let stop = tokio::select! {
            () = &mut stopping => true,
            () = tokio::time::sleep(crate::state::PRESENCE_FLUSH_INTERVAL) => false,
        };
        if let Err(error) = state.store.flush_presence().await {
            tracing::warn!(%error, "writing heartbeats failed; retrying");
        }
        if stop {
            return;
        }
    }
}

/// Steps unfinished rollouts every `ROLLOUT_TICK`, and soon after a node reports (at most
/// every `ROLLOUT_MIN_INTERVAL`, so a fleet reporting at once costs one pass, not one per
/// report).
async fn rollout_loop(state: AppState) {
    const ROLLOUT_MIN_INTERVAL: std::time::Duration = std::time::Duration::from_millis(200);
    let mut stopping = std::pin::pin!(crate::state::stopping(state.shutdown.clone()));
    loop {
        tokio::select! {
            () = &mut stopping => return,
            () = tokio::time::sleep(crate::controller::ROLLOUT_TICK) => {}
            () = state.controller.poked() => {}
        }
        if let Err(error) = state.controller.step_rollouts(crate::state::now()).await {
            tracing::warn!(%error, "stepping rollouts failed; retrying");
        }
        tokio::select! {
            () = &mut stopping => return,
            () = tokio::time::sleep(ROLLOUT_MIN_INTERVAL) => {}
        }
    }
}

/// Creates the admin API token when no API token exists yet (the first start) and writes
/// it to `admin.token`. Returns it only when created now.
async fn ensure_admin_token(
    store: &dyn Store,
    data_dir: &Path,
    now: edgefleet_wire::Timestamp,
) -> anyhow::Result<Option<String>> {
    let tokens: Vec<ApiTokenRecord> = store
        .list_api_tokens()
        .await
        .context("reading API tokens")?;
    if !tokens.is_empty() {
        return Ok(None);
    }
    // The file first: if storing the token then fails, the next start finds no token and
    // writes a new file. The other order could leave an admin token nobody has.
    let (record, token) = new_api_token("admin", Role::Admin, now);
    let path = data_dir.join(ADMIN_TOKEN);
    datadir::write_private(&path, &format!("{token}\n"))?;
    let audit = api_token_audit(&record, "server");
    match store
        .create_api_token(record, audit)
        .await
        .context("storing the admin token")?
    {
        CreateOutcome::Created => {}
        outcome => bail!("storing the admin token: unexpected {outcome:?} in an empty token table"),
    }
    tracing::info!(path = %path.display(), "created the admin API token");
    Ok(Some(token))
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgefleet_wire::DurationSpec;

    #[test]
    fn arguments_are_checked_before_anything_happens() {
        let ok = ServerArgs::with_data_dir("/nonexistent");
        assert!(check_args(&ok).is_ok());
        let too_long = ServerArgs {
            node_cert_validity: DurationSpec::from_secs(20 * 365 * 86_400),
            ..ok.clone()
        };
        assert!(
            check_args(&too_long)
                .unwrap_err()
                .to_string()
                .contains("--node-cert-validity 7300d")
        );
        let zero = ServerArgs {
            max_body_bytes: 0,
            ..ok
        };
        assert!(
            check_args(&zero)
                .unwrap_err()
                .to_string()
                .contains("--max-body-bytes")
        );
    }
}
