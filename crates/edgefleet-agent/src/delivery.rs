//! Delivers the flight recorder's events to the server.
//!
//! `POST /v1/agent/events` with an `EventBatch` (the oldest undelivered events, at most
//! `BATCH_MAX`), answered by `EventsAck { stored_through }`, to which the recorder's
//! cursor then advances. The task wakes when an event is recorded; a failed batch is
//! retried with the reconnect backoff, the same batch again, so events arrive in order.
//! An old server without the route (404) is told once at WARN and asked again only every
//! `OLD_SERVER_RETRY`; the events wait on the node meanwhile.
//!
//! The task also owns the recorder's batched fsync (see `recorder`): before each batch,
//! and every `SYNC_INTERVAL` while events wait.

use std::sync::Arc;
use std::time::Duration;

use edgefleet_wire::node::{EventBatch, EventsAck, NodeEvent};
use reqwest::StatusCode;
use tokio::time::{Instant, MissedTickBehavior};
use tracing::{debug, info, warn};

use crate::channel::{CallError, REQUEST_TIMEOUT, ServerChannel, send_json};
use crate::recorder::Recorder;
use crate::shutdown::Shutdown;

/// The most events sent in one request.
pub const BATCH_MAX: usize = 500;
/// How long a recorded event may stay in the page cache only, while nothing is sent.
pub const SYNC_INTERVAL: Duration = Duration::from_secs(5);
/// How often a server that does not know the route is asked again.
pub const OLD_SERVER_RETRY: Duration = Duration::from_secs(5 * 60);

/// What became of one batch.
enum Outcome {
    /// Stored (all or part); send the next batch now.
    Progress,
    /// Try again after this long.
    RetryAfter(Duration),
}

/// The delivery task's state between batches.
struct Delivery {
    channel: Arc<ServerChannel>,
    recorder: Arc<Recorder>,
    /// Consecutive failed attempts: the backoff's attempt number.
    failures: u32,
    /// A 404 was logged and not followed by a success yet.
    told_old_server: bool,
    /// `BATCH_MAX`, or less after the server refused a batch as too large.
    batch_max: usize,
}

/// Delivers events until shutdown.
pub async fn run(channel: Arc<ServerChannel>, recorder: Arc<Recorder>, mut shutdown: Shutdown) {
    let mut delivery = Delivery {
        channel,
        recorder,
        failures: 0,
        told_old_server: false,
        batch_max: BATCH_MAX,
    };
    let mut retry_at: Option<Instant> = None;
    let mut sync_tick = tokio::time::interval(SYNC_INTERVAL);
    sync_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        let batch = if retry_at.is_none() {
            delivery.recorder.pending(delivery.batch_max)
        } else {
            Vec::new()
        };
        if !batch.is_empty() {
            let outcome = tokio::select! {
                () = shutdown.wait() => return,
                outcome = delivery.deliver(batch) => outcome,
            };
            if let Outcome::RetryAfter(delay) = outcome {
                retry_at = Some(Instant::now() + delay);
            }
            continue;
        }
        tokio::select! {
            () = shutdown.wait() => return,
            // A new event while a retry is pending waits for the retry: it would fail too.
            () = delivery.recorder.recorded(), if retry_at.is_none() => {}
            () = tokio::time::sleep_until(retry_at.unwrap_or_else(Instant::now)), if retry_at.is_some() => {
                retry_at = None;
            }
            _ = sync_tick.tick() => sync(&delivery.recorder).await,
        }
    }
}

impl Delivery {
    /// Sends one batch and acknowledges what the server stored.
    async fn deliver(&mut self, batch: Vec<NodeEvent>) -> Outcome {
        let (first_seq, last_seq) = match (batch.first(), batch.last()) {
            (Some(first), Some(last)) => (first.seq, last.seq),
            _ => return Outcome::Progress,
        };
        // The server must never learn a seq this node could forget in a power loss and
        // give to another event.
        sync(&self.recorder).await;
        let count = batch.len();
        let ack = match send(&self.channel, batch).await {
            Ok(ack) => ack,
            Err(error) => return self.failed(&error, count),
        };
        if self.told_old_server {
            self.told_old_server = false;
            info!("the server accepts flight-recorder events now");
        }
        self.batch_max = BATCH_MAX;
        let stored_through = ack.stored_through;
        let acknowledged = {
            let recorder = self.recorder.clone();
            tokio::task::spawn_blocking(move || recorder.acknowledge(stored_through)).await
        };
        let problem = match acknowledged {
            Ok(Ok(_)) if stored_through >= first_seq => None,
            // Nothing of this batch was stored: asking again at once would spin.
            Ok(Ok(_)) => Some(format!(
                "the server stored none of the events sent (seq {first_seq} to {last_seq}; it has up to {stored_through})"
            )),
            // The events are on the server; the worst outcome is sending them again.
            Ok(Err(error)) => Some(format!("cannot persist the event delivery cursor: {error}")),
            Err(error) => Some(format!("event cursor task failed: {error}")),
        };
        if let Some(problem) = problem {
            let delay = crate::reconnect_delay(self.failures);
            self.failures = self.failures.saturating_add(1);
            warn!(retry_in_ms = delay.as_millis() as u64, "{problem}");
            return Outcome::RetryAfter(delay);
        }
        if self.failures > 0 {
            debug!(failures = self.failures, "delivering events works again");
        }
        self.failures = 0;
        debug!(first_seq, last_seq, stored_through, "delivered events");
        Outcome::Progress
    }

    fn failed(&mut self, error: &CallError, count: usize) -> Outcome {
        let status = match error {
            CallError::Status { status, .. } => Some(*status),
            _ => None,
        };
        if status == Some(StatusCode::NOT_FOUND) {
            if !self.told_old_server {
                self.told_old_server = true;
                warn!(%error, retry_in_s = OLD_SERVER_RETRY.as_secs(), "the server does not accept flight-recorder events (an older version?); they are kept on the node and sent once it does");
            }
            return Outcome::RetryAfter(OLD_SERVER_RETRY);
        }
        if status == Some(StatusCode::PAYLOAD_TOO_LARGE) && count > 1 {
            // Smaller batches get through a server with a lower body limit.
            self.batch_max = (count / 2).max(1);
            warn!(%error, batch_max = self.batch_max, "the server refused a batch of events as too large; sending smaller ones");
            return Outcome::RetryAfter(Duration::ZERO);
        }
        let delay = if error.is_auth() {
            // The desired-state poll reports a refused certificate; no need to say it twice.
            crate::reconnect_delay(u32::MAX)
        } else {
            crate::reconnect_delay(self.failures)
        };
        if error.is_permanent() && !error.is_auth() {
            warn!(%error, retry_in_ms = delay.as_millis() as u64, "the server refused flight-recorder events");
        } else {
            debug!(%error, retry_in_ms = delay.as_millis() as u64, "sending flight-recorder events failed");
        }
        self.failures = self.failures.saturating_add(1);
        Outcome::RetryAfter(delay)
    }
}

async fn send(channel: &ServerChannel, events: Vec<NodeEvent>) -> Result<EventsAck, CallError> {
    let request = channel
        .client()
        .post(channel.url("/v1/agent/events"))
        .json(&EventBatch { events })
        .timeout(REQUEST_TIMEOUT);
    send_json::<EventsAck>(request).await
}

/// Flushes the event log, off the async threads.
pub async fn sync(recorder: &Arc<Recorder>) {
    let recorder = recorder.clone();
    match tokio::task::spawn_blocking(move || recorder.sync()).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => warn!(%error, "cannot flush the event log"),
        Err(error) => warn!(%error, "event log flush task failed"),
    }
}
