//! The edgefleet node agent.
//!
//! It enrolls the node once (`enroll`), then keeps the node running its last committed
//! desired state (`journal`) whether or not the server is reachable, supervising workloads
//! through the pure `edgefleet_core::supervisor` state machine (`reconcile`) and a runtime
//! (`runtime`). Over one mTLS channel (`channel`) it long-polls for new desired states
//! (`desired`), reports status, heartbeats and facts (`report`, `facts`), and renews its
//! certificate before it expires (`renew`). Its flight recorder (`recorder`) keeps a
//! bounded on-node log of what happened, delivered to the server once it is reachable
//! (`delivery`). Workloads on the node hold update locks (`locks`) through a local unix
//! socket (`local_api`).
//!
//! **Invariant:** nothing in the agent decides about restarts; the supervisor does.
//! Reconnecting to the server never restarts a healthy workload.
//! **Boundary:** `AgentArgs` and `run` (used by the lean `edgefleet-agent` binary and by
//! `edgefleet agent`); `LockArgs` and `lock_command` (`edgefleet-agent lock`, and the
//! operator binary can offer the same).

#![forbid(unsafe_code)]

pub mod artifacts;
pub mod channel;
pub mod collect;
pub mod data_api;
pub mod datadir;
pub mod delivery;
pub mod desired;
pub mod enroll;
pub mod facts;
pub mod files;
pub mod fsutil;
pub mod health;
pub mod housekeeping;
pub mod identity;
pub mod journal;
pub mod local_api;
pub mod locks;
pub mod outbox;
pub mod reconcile;
pub mod recorder;
pub mod renew;
pub mod report;
pub mod runtime;
pub mod sessions;
pub mod shutdown;
pub mod telemetry;
pub mod uploader;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use edgefleet_core::backoff::Backoff;
use edgefleet_core::labels::{parse_assignments, validate_name};
use edgefleet_wire::node::NodeEventKind;
use edgefleet_wire::{DurationSpec, JoinString, Labels};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tracing::{error, info, warn};

use crate::artifacts::ArtifactCache;
use crate::collect::{CollectConfig, Collector};
use crate::data_api::DataApi;
use crate::datadir::DataDir;
use crate::enroll::EnrollParams;
use crate::files::NodeContext;
use crate::identity::{Identity, IdentityStore};
use crate::journal::{Journal, JournalError};
use crate::local_api::LocalApi;
use crate::locks::Locks;
use crate::outbox::{Outbox, OutboxConfig};
use crate::reconcile::{FilesConfig, ProbeConfig, Reconciler};
use crate::recorder::{NewEvent, Recorder};
use crate::runtime::container::{ContainerConfig, ContainerRuntime};
use crate::runtime::logs::LogRegistry;
use crate::runtime::{ProcessConfig, ProcessRuntime, Runtimes, pidfile};
use crate::shutdown::Shutdown;
use crate::uploader::UploaderConfig;
use edgefleet_wire::manifest::Runtime as WorkloadRuntime;

pub use crate::local_api::{
    LockArgs, LockCommand, PublishArgs, WorkloadAccess, config_command, lock_command,
    publish_command,
};

/// Where the agent keeps its files unless told otherwise.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/edgefleet-agent";

/// The agent's command-line flags; each can also be set through its `EDGEFLEET_*` variable.
#[derive(clap::Args, Debug, Clone)]
pub struct AgentArgs {
    /// Where the agent keeps its identity, journal, pid files, workload logs, event log and locks
    #[arg(long, env = "EDGEFLEET_AGENT_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,
    /// Join string from `edgefleet token create`; needed only until the node is enrolled
    #[arg(long, env = "EDGEFLEET_JOIN")]
    pub join: Option<String>,
    /// Node name to enroll as (default: the hostname, lowercased)
    #[arg(long, env = "EDGEFLEET_NODE_NAME")]
    pub name: Option<String>,
    /// Labels to enroll with, `key=value,key2=value2`
    #[arg(long, env = "EDGEFLEET_NODE_LABELS", default_value = "")]
    pub labels: String,
    /// How often the agent sends a heartbeat to the server when nothing else is sent (its
    /// desired-state polls, every 90 s, keep it known as alive as well)
    #[arg(long, env = "EDGEFLEET_HEARTBEAT_INTERVAL", default_value = "5m")]
    pub heartbeat_interval: DurationSpec,
    /// Size at which a workload's stdout.log or stderr.log is rotated, in bytes
    #[arg(long, env = "EDGEFLEET_LOG_MAX_BYTES", default_value_t = 1048576)]
    pub log_max_bytes: u64,
    /// Rotated log files kept per stream (`.1` to `.N`)
    #[arg(long, env = "EDGEFLEET_LOG_FILES", default_value_t = 3)]
    pub log_files: u32,
    /// Events the flight recorder keeps on the node (delivered ones are dropped first)
    #[arg(long, env = "EDGEFLEET_EVENTS_MAX", default_value_t = recorder::DEFAULT_MAX_EVENTS)]
    pub events_max: usize,
    /// The container engine's socket (dockerd or Podman). Default: DOCKER_HOST if it is
    /// unix://…, else the first of /var/run/docker.sock, /run/podman/podman.sock and
    /// $XDG_RUNTIME_DIR/podman/podman.sock that exists
    #[arg(long, env = "EDGEFLEET_CONTAINER_SOCKET")]
    pub container_socket: Option<PathBuf>,
    /// Size the artifact cache is trimmed to (least recently used first; artifacts desired
    /// workloads need are always kept), e.g. 2Gi
    #[arg(long, env = "EDGEFLEET_ARTIFACT_CACHE_MAX", default_value = "2Gi")]
    pub artifact_cache_max: edgefleet_wire::workload::ByteSize,
    /// How often host and workload metrics are collected
    #[arg(long, env = "EDGEFLEET_METRICS_INTERVAL", default_value = "60s")]
    pub metrics_interval: DurationSpec,
    /// Disk space the outbox (records waiting for the server) may use; when full, the
    /// oldest records of the lowest-priority stream are dropped and counted
    #[arg(long, env = "EDGEFLEET_OUTBOX_MAX", default_value = "256Mi")]
    pub outbox_max: edgefleet_wire::workload::ByteSize,
    /// How long the uploader waits after a new record for more before sending (batching
    /// saves bytes on the wire); 0s sends at once
    #[arg(long, env = "EDGEFLEET_UPLOAD_INTERVAL", default_value = "60s")]
    pub upload_interval: DurationSpec,
    /// Also serve the local API on this loopback TCP address (e.g. 127.0.0.1:7070), for
    /// workloads that cannot reach the unix socket; publish and config need the
    /// workload's token there, and update locks are served on the socket only
    #[arg(long, env = "EDGEFLEET_LOCAL_API_TCP")]
    pub local_api_tcp: Option<std::net::SocketAddr>,
}

/// The delay before reconnect attempt `attempt + 1`, jittered so that a fleet that lost
/// its server does not come back in lockstep.
pub(crate) fn reconnect_delay(attempt: u32) -> Duration {
    Backoff::RECONNECT.jittered(attempt, rand::random::<f64>())
}

/// Flags checked once, before anything happens.
struct Validated {
    labels: Labels,
    heartbeat_interval: Duration,
    metrics_interval: Duration,
}

fn validate(args: &AgentArgs) -> anyhow::Result<Validated> {
    let labels = parse_assignments(&args.labels).context("--labels")?;
    let heartbeat_interval = args.heartbeat_interval.as_duration();
    if heartbeat_interval.is_zero() {
        bail!("--heartbeat-interval must be longer than 0s");
    }
    if args.log_max_bytes == 0 {
        bail!("--log-max-bytes must be at least 1");
    }
    if args.events_max < recorder::MIN_MAX_EVENTS {
        bail!(
            "--events-max must be at least {} (room for an event and the note that older ones were dropped)",
            recorder::MIN_MAX_EVENTS
        );
    }
    if let Some(name) = &args.name {
        validate_name(name).map_err(|reason| {
            anyhow::anyhow!(
                "--name {name:?} {reason} (a node name is a DNS label such as gateway-17)"
            )
        })?;
    }
    let metrics_interval = collect::validate_interval(args.metrics_interval.as_duration())
        .context("--metrics-interval")?;
    if args.outbox_max.0 < outbox::MIN_MAX_BYTES {
        bail!(
            "--outbox-max must be at least {} bytes (16Ki)",
            outbox::MIN_MAX_BYTES
        );
    }
    if let Some(addr) = args.local_api_tcp
        && !addr.ip().is_loopback()
    {
        bail!(
            "--local-api-tcp {addr}: only a loopback address (127.0.0.1:PORT, [::1]:PORT) is allowed"
        );
    }
    Ok(Validated {
        labels,
        heartbeat_interval,
        metrics_interval,
    })
}

/// Runs the agent until `shutdown` resolves, then stops every workload (SIGTERM, SIGKILL
/// after its grace period) and returns.
pub async fn run(
    args: AgentArgs,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let validated = validate(&args)?;
    let (trigger, mut shutdown_rx) = shutdown::channel();
    let watcher = AbortOnDrop(tokio::spawn(async move {
        shutdown.await;
        trigger.trigger();
    }));

    let data = DataDir::new(&args.data_dir);
    data.prepare()
        .with_context(|| format!("the data directory {} is not usable", data.root().display()))?;
    let _lock = data.lock()?;
    let store = IdentityStore::new(&data.identity());
    let Some(identity) =
        obtain_identity(&args, &validated, &store, &data, &mut shutdown_rx).await?
    else {
        return Ok(());
    };
    let channel = Arc::new(channel::ServerChannel::new(&identity)?);
    info!(node = %identity.node, server = %identity.server_url, data_dir = %data.root().display(), "agent starting");
    let recorder = Arc::new(
        Recorder::open(&data.events(), args.events_max)
            .with_context(|| format!("opening the event log in {}", data.events().display()))?,
    );
    recorder.record(NewEvent::new(
        NodeEventKind::AgentStarted,
        format!("edgefleet-agent {} started", edgefleet_wire::AGENT_VERSION),
    ));
    let locks = Arc::new(Locks::open(&data.locks_file(), Some(recorder.clone()))?);
    let local_api = LocalApi::bind(&data.socket())?;

    // Records (metrics, application data) are durable in the outbox before anything
    // acknowledges them, and stay there until the server has them.
    let (outbox, recovery) = Outbox::open(
        &data.outbox(),
        OutboxConfig {
            max_bytes: args.outbox_max.0,
            ..OutboxConfig::default()
        },
    )
    .with_context(|| format!("opening the outbox in {}", data.outbox().display()))?;
    for message in recovery.messages() {
        warn!(outbox = %data.outbox().display(), "{message}");
    }
    let outbox = Arc::new(outbox);
    if let Err(error) = outbox.set_policy(
        edgefleet_wire::telemetry::METRICS_STREAM,
        telemetry::METRICS_POLICY,
    ) {
        warn!(%error, "cannot record the metrics stream's outbox policy");
    }
    fsutil::ensure_writable_dir(&data.api_dir(), 0o755)
        .context("preparing the local API's socket directory")?;
    let data_api = Arc::new(DataApi::open(
        data.root(),
        &identity.node,
        data.api_socket(),
        outbox.clone(),
    )?);
    let workload_api = LocalApi::bind(&data.api_socket())?;
    let tcp_api = match args.local_api_tcp {
        Some(addr) => Some(LocalApi::bind_tcp(addr).await?),
        None => None,
    };

    // Before anything starts: a crashed predecessor's processes must not run twice.
    let leftovers = pidfile::stop_leftovers(&data.run(), pidfile::LEFTOVER_GRACE).await;
    if !leftovers.is_empty() {
        warn!(workloads = %leftovers.join(", "), "stopped processes left over from a previous agent run");
    }

    let journal = Journal::new(&data.journal());
    let initial = load_journal(&journal)?;
    let known_generation = initial.as_ref().map_or(0, |s| s.generation);
    if let Some(state) = &initial {
        info!(
            generation = state.generation,
            workloads = state.workloads.len(),
            "starting workloads from the journal"
        );
    }

    let (events_tx, events_rx) = mpsc::unbounded_channel();
    let logs = LogRegistry::new(data.logs(), args.log_max_bytes, args.log_files);
    let artifacts = Arc::new(
        ArtifactCache::open(
            &data.artifacts(),
            args.artifact_cache_max.0,
            channel.clone(),
        )
        .context("opening the artifact cache")?,
    );
    let process = ProcessRuntime::new(
        ProcessConfig {
            run_dir: data.run(),
            logs: logs.clone(),
        },
        events_tx.clone(),
    );
    let mut containers = ContainerRuntime::new(
        ContainerConfig {
            socket: args.container_socket.clone(),
            agent_id: data.agent_id()?,
            logs: logs.clone(),
            artifacts: artifacts.clone(),
            state_dir: data.containers(),
        },
        events_tx.clone(),
    );
    // Containers a previous agent run left running are adopted, not started again. An
    // engine that does not answer is not fatal: the agent may run no container at all.
    let adoptable = match containers.discover().await {
        Ok(found) => found,
        Err(error) => {
            if args.container_socket.is_some() {
                warn!(%error, "cannot list this agent's containers; container workloads will be started afresh");
            }
            Vec::new()
        }
    };
    let probes = ProbeConfig {
        host: Arc::new(health::HostExec),
        container: Some(containers.exec_handle()),
    };
    let images = containers.image_collector();
    let runtimes = Runtimes::new(events_tx.clone())
        .with(WorkloadRuntime::Process, Box::new(process))
        .with(WorkloadRuntime::Container, Box::new(containers));
    #[cfg(feature = "wasm")]
    let runtimes = runtimes.with(
        WorkloadRuntime::Wasm,
        Box::new(runtime::wasm::WasmRuntime::new(
            runtime::wasm::WasmConfig {
                logs: logs.clone(),
                artifacts: artifacts.clone(),
            },
            events_tx.clone(),
        )),
    );
    let node_facts = tokio::task::spawn_blocking(facts::gather)
        .await
        .unwrap_or_default();
    let (mut reconciler, status_rx) = Reconciler::new(Box::new(runtimes), events_rx);
    reconciler.adopt(adoptable, |runtimes, name, instance| {
        runtimes.adopt(name, instance);
    });
    let reconciler = reconciler
        .with_recorder(recorder.clone())
        .with_data_api(data_api.clone())
        .with_files(
            FilesConfig {
                root: data.files(),
                node: NodeContext {
                    node: identity.node.clone(),
                    facts: serde_json::to_value(&node_facts).unwrap_or_default(),
                },
            },
            events_tx,
        )
        .with_probes(probes);
    let (desired_tx, desired_rx) = watch::channel(initial.map(Arc::new));
    let desired_rx_for_housekeeping = desired_rx.clone();
    // Dropping `run` without a shutdown (the embedding process is going away) must not
    // leave a reconcile loop behind: it is aborted, and the workloads live on like after a
    // crash, to be found by their pid files next time.
    let mut reconcile_task = AbortOnDrop(tokio::spawn(
        reconciler.run(desired_rx, shutdown_rx.clone()),
    ));

    let mut tasks = JoinSet::new();
    tasks.spawn(desired::run(
        channel.clone(),
        desired::Sinks {
            journal,
            desired: desired_tx,
            recorder: recorder.clone(),
        },
        known_generation,
        shutdown_rx.clone(),
    ));
    tasks.spawn(report::report_status(
        channel.clone(),
        status_rx.clone(),
        locks.subscribe(),
        validated.heartbeat_interval,
        shutdown_rx.clone(),
    ));
    tasks.spawn(delivery::run(
        channel.clone(),
        recorder.clone(),
        shutdown_rx.clone(),
    ));
    let handlers = local_api::Handlers {
        locks,
        data: Some(data_api.clone()),
    };
    tasks.spawn(local_api.serve(handlers.clone(), shutdown_rx.clone()));
    tasks.spawn(workload_api.serve(handlers.clone(), shutdown_rx.clone()));
    if let Some(tcp_api) = tcp_api {
        info!(addr = ?tcp_api.tcp_addr(), "local API on loopback TCP");
        tasks.spawn(tcp_api.serve(handlers, shutdown_rx.clone()));
    }
    tasks.spawn(telemetry::run_collection(
        Collector::new(CollectConfig {
            interval: validated.metrics_interval,
            ..CollectConfig::default()
        }),
        outbox.clone(),
        status_rx.clone(),
        shutdown_rx.clone(),
    ));
    let routes = data_api.clone();
    tasks.spawn(uploader::run(
        outbox,
        channel.clone(),
        UploaderConfig {
            flush_interval: args.upload_interval.as_duration(),
            stream_meta: Arc::new(move |stream| {
                let route = routes.route(stream);
                (route.sink, route.deployment)
            }),
            ..UploaderConfig::default()
        },
        shutdown_rx.clone(),
    ));
    tasks.spawn(sessions::run(channel.clone(), logs, shutdown_rx.clone()));
    tasks.spawn(housekeeping::run(
        desired_rx_for_housekeeping,
        artifacts,
        images,
        shutdown_rx.clone(),
    ));
    tasks.spawn(report::sync_facts(
        channel.clone(),
        data.facts_hash(),
        shutdown_rx.clone(),
    ));
    tasks.spawn(renew::run(
        channel,
        store,
        identity.ca_pem,
        shutdown_rx.clone(),
    ));

    let result = tokio::select! {
        () = shutdown_rx.wait() => {
            info!("shutting down: stopping workloads");
            (&mut reconcile_task.0).await
        }
        // The reconciler only returns after shutdown; anything else is a bug (a panic).
        result = &mut reconcile_task.0 => result,
    };
    tasks.shutdown().await;
    // The workloads' last events (stopped) are recorded after delivery ended: flush them
    // so a power cut while the node is off cannot take them.
    delivery::sync(&recorder).await;
    drop(watcher);
    match result {
        Ok(()) if shutdown_rx.is_triggered() => {
            info!("agent stopped");
            Ok(())
        }
        Ok(()) => bail!("the reconcile loop ended unexpectedly"),
        Err(error) => Err(error).context("the reconcile loop failed"),
    }
}

async fn obtain_identity(
    args: &AgentArgs,
    validated: &Validated,
    store: &IdentityStore,
    data: &DataDir,
    shutdown: &mut Shutdown,
) -> anyhow::Result<Option<Identity>> {
    if let Some(identity) = store.load()? {
        if args.join.is_some() {
            warn!(node = %identity.node, "this node is already enrolled; ignoring --join");
        }
        return Ok(Some(identity));
    }
    let Some(join) = args.join.as_deref() else {
        bail!(
            "this node is not enrolled yet ({} is incomplete): pass --join (or EDGEFLEET_JOIN) \
             with a join string from `edgefleet token create`",
            store.dir().display()
        );
    };
    let join = JoinString::decode(join).context("--join")?;
    let facts = tokio::task::spawn_blocking(facts::gather)
        .await
        .unwrap_or_default();
    let name = match &args.name {
        Some(name) => name.clone(),
        None => identity::name_from_hostname(&facts.hostname).with_context(|| {
            format!(
                "the hostname {:?} does not make a node name; pass --name",
                facts.hostname
            )
        })?,
    };
    validate_name(&name).map_err(|reason| {
        anyhow::anyhow!("node name {name:?} (from the hostname) {reason}; pass --name")
    })?;
    info!(server = %join.url, name = %name, "enrolling");
    let params = EnrollParams {
        join,
        name,
        labels: validated.labels.clone(),
    };
    let identity = enroll::enroll(store, &params, facts.clone(), shutdown).await?;
    if identity.is_some() {
        // The server has these facts from the enrollment request.
        report::remember_facts(&data.facts_hash(), &facts);
    }
    Ok(identity)
}

/// The journal's state; a corrupt journal is reported and set aside, and the agent starts
/// with nothing until the server answers. An unreadable one is fatal: the data directory
/// is broken.
fn load_journal(journal: &Journal) -> anyhow::Result<Option<edgefleet_wire::api::DesiredState>> {
    match journal.load() {
        Ok(state) => Ok(state),
        Err(error @ (JournalError::Corrupt { .. } | JournalError::CorruptNotMoved { .. })) => {
            error!(%error, "starting without a desired state until the server sends one");
            Ok(None)
        }
        Err(error) => Err(error).context("loading the journal"),
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
