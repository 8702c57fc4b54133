//! What the agent tells the server: its status (soon after every change, including a
//! change of the update locks; after a heartbeat that follows an outage; and every
//! `STATUS_REFRESH` otherwise), heartbeats, and its facts (at start and when they change).
//! An idle node is cheap on the wire: its status goes only when something changed.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use edgefleet_wire::api::{Ack, Heartbeat};
use edgefleet_wire::node::{ReportedState, UpdateLock};
use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior};
use tracing::{debug, warn};

use crate::channel::{CallError, REQUEST_TIMEOUT, ServerChannel, send_json};
use crate::facts;
use crate::fsutil;
use crate::reconcile::Status;
use crate::shutdown::Shutdown;

/// Changes arriving within this window go out as one report.
pub const DEBOUNCE: Duration = Duration::from_millis(200);
/// The status goes again after this long even when unchanged, so a server that lost it
/// (restored from a backup, crashed within its write buffer) has it again.
pub const STATUS_REFRESH: Duration = Duration::from_secs(30 * 60);
/// How often facts are gathered again to see whether they changed.
pub const FACTS_INTERVAL: Duration = Duration::from_secs(10 * 60);

/// Reports status (with the update locks in `locks`) and sends heartbeats until shutdown.
pub async fn report_status(
    channel: Arc<ServerChannel>,
    mut status: watch::Receiver<Status>,
    mut locks: watch::Receiver<Vec<UpdateLock>>,
    heartbeat_interval: Duration,
    mut shutdown: Shutdown,
) {
    let mut heartbeat = tokio::time::interval(heartbeat_interval);
    heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut send_at: Option<Instant> = None;
    let mut failures = 0u32;
    let mut status_open = true;
    let mut locks_open = true;
    // When the status last reached the server, and whether the last heartbeat failed:
    // after an outage the server hears the status at once.
    let mut status_sent_at: Option<Instant> = None;
    let mut heartbeat_failed = false;
    loop {
        tokio::select! {
            () = shutdown.wait() => return,
            changed = status.changed(), if status_open => {
                if changed.is_err() {
                    status_open = false;
                }
                send_at.get_or_insert_with(|| Instant::now() + DEBOUNCE);
            }
            // The server holds updates back from a node whose workloads hold a lock: it
            // must hear about a new lock as soon as a status change.
            changed = locks.changed(), if locks_open => {
                if changed.is_err() {
                    locks_open = false;
                }
                send_at.get_or_insert_with(|| Instant::now() + DEBOUNCE);
            }
            _ = heartbeat.tick() => {
                let applied_generation = status.borrow().applied_generation;
                let request = channel
                    .client()
                    .post(channel.url("/v1/agent/heartbeat"))
                    .json(&Heartbeat { applied_generation })
                    .timeout(REQUEST_TIMEOUT);
                match send_json::<Ack>(request).await {
                    Ok(_) => {
                        let stale = status_sent_at.is_none_or(|at| at.elapsed() >= STATUS_REFRESH);
                        if heartbeat_failed || stale {
                            send_at.get_or_insert_with(Instant::now);
                        }
                        heartbeat_failed = false;
                    }
                    Err(error) => {
                        log_failure(&error, "heartbeat failed");
                        heartbeat_failed = true;
                    }
                }
            }
            () = tokio::time::sleep_until(send_at.unwrap_or_else(Instant::now)), if send_at.is_some() => {
                let report = {
                    let current = status.borrow_and_update();
                    ReportedState {
                        node: channel.node().to_owned(),
                        applied_generation: current.applied_generation,
                        workloads: current.workloads.clone(),
                        agent_version: edgefleet_wire::AGENT_VERSION.to_owned(),
                        certificate_not_after: Some(channel.certificate().not_after),
                        locks: locks.borrow_and_update().clone(),
                    }
                };
                let request = channel
                    .client()
                    .put(channel.url("/v1/agent/status"))
                    .json(&report)
                    .timeout(REQUEST_TIMEOUT);
                match send_json::<Ack>(request).await {
                    Ok(_) => {
                        failures = 0;
                        send_at = None;
                        status_sent_at = Some(Instant::now());
                    }
                    Err(error) => {
                        log_failure(&error, "status report failed");
                        send_at = Some(Instant::now() + crate::reconnect_delay(failures));
                        failures = failures.saturating_add(1);
                    }
                }
            }
        }
    }
}

/// Connectivity trouble is logged by the desired-state poll already; a refusal of this
/// particular request is news.
fn log_failure(error: &CallError, what: &str) {
    if error.is_permanent() && !error.is_auth() {
        warn!(%error, "{what}");
    } else {
        debug!(%error, "{what}");
    }
}

/// Sends the node's facts when they differ from those last sent (remembered in
/// `hash_path` across restarts), checking every `FACTS_INTERVAL`.
pub async fn sync_facts(channel: Arc<ServerChannel>, hash_path: PathBuf, mut shutdown: Shutdown) {
    let mut failures = 0u32;
    loop {
        let delay = match sync_facts_once(&channel, &hash_path).await {
            Ok(()) => {
                failures = 0;
                FACTS_INTERVAL
            }
            Err(error) => {
                log_failure(&error, "sending facts failed");
                let delay = crate::reconnect_delay(failures);
                failures = failures.saturating_add(1);
                delay
            }
        };
        tokio::select! {
            () = shutdown.wait() => return,
            () = tokio::time::sleep(delay) => {}
        }
    }
}

async fn sync_facts_once(
    channel: &ServerChannel,
    hash_path: &std::path::Path,
) -> Result<(), CallError> {
    let facts = tokio::task::spawn_blocking(facts::gather)
        .await
        .unwrap_or_default();
    let hash = facts::change_hash(&facts);
    let last = fsutil::read_optional(hash_path).ok().flatten();
    if last.as_deref().map(str::trim) == Some(hash.as_str()) {
        return Ok(());
    }
    let request = channel
        .client()
        .put(channel.url("/v1/agent/facts"))
        .json(&facts)
        .timeout(REQUEST_TIMEOUT);
    send_json::<Ack>(request).await?;
    remember_facts(hash_path, &facts);
    Ok(())
}

/// Records that `facts` reached the server.
pub fn remember_facts(hash_path: &std::path::Path, facts: &edgefleet_wire::node::NodeFacts) {
    let hash = facts::change_hash(facts);
    if let Err(error) =
        fsutil::write_atomic(hash_path, format!("{hash}\n").as_bytes(), fsutil::PUBLIC)
    {
        // Costs one extra upload at the next start, nothing more.
        warn!(%error, "cannot remember the facts sent");
    }
}
