//! The desired-state long poll.
//!
//! `GET /v1/agent/desired?known_generation=N&wait_seconds=90` waits on the server until the
//! node's desired state differs from generation N (200) or the wait ends (304), so a change
//! reaches an online node at once while an idle node costs one small request per wait.
//! A new state is written to the journal first and handed to the reconciler only once it
//! is on disk; if the journal cannot be written, the running state stays and the poll
//! (which returns the same state again at once) is retried. Errors never touch workloads.
//! Each state accepted is recorded in the flight recorder (`desired-received`).

use std::sync::Arc;
use std::time::Duration;

use edgefleet_wire::api::DesiredState;
use edgefleet_wire::node::NodeEventKind;
use reqwest::StatusCode;
use tracing::{error, info, warn};

use crate::channel::{CallError, ServerChannel, decode, send_raw};
use crate::journal::Journal;
use crate::reconcile::DesiredSender;
use crate::recorder::{NewEvent, Recorder};
use crate::shutdown::Shutdown;

/// How long the server holds a poll open.
pub const WAIT_SECONDS: u64 = 90;
/// The client gives up on a poll this much later than the server should have answered.
const POLL_SLACK: Duration = Duration::from_secs(15);

/// Where the poll puts what it receives.
pub struct Sinks {
    pub journal: Journal,
    pub desired: DesiredSender,
    pub recorder: Arc<Recorder>,
}

pub async fn run(
    channel: Arc<ServerChannel>,
    sinks: Sinks,
    mut known_generation: u64,
    mut shutdown: Shutdown,
) {
    let mut failures = 0u32;
    loop {
        let result = tokio::select! {
            () = shutdown.wait() => return,
            result = poll(&channel, known_generation) => result,
        };
        let delay = match result {
            Ok(update) => {
                if failures > 0 {
                    info!(failures, "reached the server again");
                }
                failures = 0;
                match update {
                    Some(state) => accept(&channel, &sinks, state, &mut known_generation).await,
                    None => None,
                }
            }
            Err(error) if error.is_auth() => {
                error!(%error, "the server refuses this node's certificate (revoked?); workloads keep running, retrying slowly");
                failures = failures.saturating_add(1);
                Some(crate::reconnect_delay(u32::MAX))
            }
            Err(error) => {
                let delay = crate::reconnect_delay(failures);
                warn!(%error, attempt = failures, retry_in_ms = delay.as_millis() as u64, "polling the desired state failed; workloads keep running");
                failures = failures.saturating_add(1);
                Some(delay)
            }
        };
        if let Some(delay) = delay {
            tokio::select! {
                () = shutdown.wait() => return,
                () = tokio::time::sleep(delay) => {}
            }
        }
    }
}

/// Journals `state` and hands it on. Returns how long to wait before the next poll.
async fn accept(
    channel: &ServerChannel,
    sinks: &Sinks,
    state: DesiredState,
    known_generation: &mut u64,
) -> Option<Duration> {
    if state.node != channel.node() {
        warn!(node = %channel.node(), got = %state.node, "ignoring a desired state addressed to another node");
        return Some(crate::reconnect_delay(u32::MAX));
    }
    let state = Arc::new(state);
    let to_store = state.clone();
    let store = sinks.journal.clone();
    // fsync can take long on slow flash; keep it off the async thread.
    let stored = tokio::task::spawn_blocking(move || store.store(&to_store)).await;
    match stored {
        Ok(Ok(())) => {
            *known_generation = state.generation;
            sinks.recorder.record(NewEvent::new(
                NodeEventKind::DesiredReceived,
                format!(
                    "desired state generation {} ({} workloads)",
                    state.generation,
                    state.workloads.len()
                ),
            ));
            sinks.desired.send_replace(Some(state));
            None
        }
        Ok(Err(error)) => {
            error!(%error, generation = state.generation, "cannot write the journal; the new desired state is not applied (the current one keeps running)");
            Some(crate::reconnect_delay(3))
        }
        Err(error) => {
            error!(%error, "journal write task failed");
            Some(crate::reconnect_delay(3))
        }
    }
}

async fn poll(
    channel: &ServerChannel,
    known_generation: u64,
) -> Result<Option<DesiredState>, CallError> {
    let url = channel.url(&format!(
        "/v1/agent/desired?known_generation={known_generation}&wait_seconds={WAIT_SECONDS}"
    ));
    let request = channel
        .client()
        .get(url)
        .timeout(Duration::from_secs(WAIT_SECONDS) + POLL_SLACK);
    let response = send_raw(request).await?;
    if response.status() == StatusCode::NOT_MODIFIED {
        return Ok(None);
    }
    decode(response).await.map(Some)
}
