//! Webhook delivery: takes due notifications from the store's queue, `POST`s them, and
//! records each attempt. Retries back off exponentially (1 s doubling to 5 min); after
//! `--alert-webhook-attempts` failures a notification is given up (recorded as failed,
//! logged at WARN), which lets the alert's later notifications to that receiver go.

use std::time::Duration;

use edgefleet_core::backoff::Backoff;
use edgefleet_wire::alert::{WEBHOOK_PAYLOAD_VERSION, WebhookPayload};
use futures_util::future::join_all;

use crate::metrics::FleetGauge;
use crate::state::{AppState, now};
use crate::store::{DeliveryOutcome, QueuedNotification};

/// Delay before the next attempt after `n` failures: 1 s, 2 s, 4 s, … at most 5 min.
pub const WEBHOOK_BACKOFF: Backoff = Backoff {
    base: Duration::from_secs(1),
    cap: Duration::from_secs(300),
};

/// Notifications sent at once (each to a different alert or receiver).
const BATCH: u32 = 64;
/// The longest the loop sleeps without looking at the queue (a store error, a clock
/// that moved).
const IDLE_CHECK: Duration = Duration::from_secs(5);
/// How much of a receiver's error answer goes into the delivery record.
const ERROR_BODY_CHARS: usize = 200;

pub(super) async fn run(state: AppState) {
    let mut stopping = std::pin::pin!(crate::state::stopping(state.shutdown.clone()));
    loop {
        let wait = match deliver_due(&state).await {
            Ok(true) => Duration::ZERO,
            Ok(false) => until_next_due(&state).await,
            Err(error) => {
                tracing::warn!(%error, "reading the webhook queue failed; retrying");
                IDLE_CHECK
            }
        };
        if wait.is_zero() {
            continue;
        }
        tokio::select! {
            () = &mut stopping => return,
            () = tokio::time::sleep(wait) => {}
            () = state.alerts.queued.notified() => {}
        }
    }
}

async fn until_next_due(state: &AppState) -> Duration {
    match state.store.next_notification_due().await {
        Ok(Some(at)) => Duration::try_from(at - now())
            .unwrap_or(Duration::ZERO)
            .clamp(Duration::from_millis(50), IDLE_CHECK),
        Ok(None) | Err(_) => IDLE_CHECK,
    }
}

/// Sends one batch of due notifications. True when there was something to send.
async fn deliver_due(state: &AppState) -> Result<bool, crate::store::StoreError> {
    let due = state.store.due_notifications(now(), BATCH).await?;
    if due.is_empty() {
        return Ok(false);
    }
    let outcomes = join_all(due.iter().map(|n| attempt(state, n))).await;
    for (notification, outcome) in due.iter().zip(outcomes) {
        match &outcome {
            DeliveryOutcome::Delivered => tracing::debug!(
                notification = notification.id,
                receiver = %notification.receiver,
                "webhook delivered"
            ),
            DeliveryOutcome::Retry { error, .. } => tracing::debug!(
                notification = notification.id,
                receiver = %notification.receiver,
                attempts = notification.attempts + 1,
                %error,
                "webhook delivery failed; will retry"
            ),
            DeliveryOutcome::GaveUp { error } => tracing::warn!(
                notification = notification.id,
                alert = %notification.alert.id,
                receiver = %notification.receiver,
                attempts = notification.attempts + 1,
                %error,
                "giving up on a webhook delivery"
            ),
        }
        let pending = state
            .store
            .record_delivery(notification.id, outcome, now())
            .await?;
        state.metrics.set(FleetGauge::WebhookQueueDepth, pending);
    }
    Ok(true)
}

/// One attempt at one notification, and what to record about it.
async fn attempt(state: &AppState, notification: &QueuedNotification) -> DeliveryOutcome {
    let payload = WebhookPayload {
        version: WEBHOOK_PAYLOAD_VERSION,
        status: notification.status,
        alert: notification.alert.clone(),
        notification: notification.id,
    };
    let error = match post(&state.alerts.client, &notification.receiver, &payload).await {
        Ok(()) => return DeliveryOutcome::Delivered,
        Err(error) => error,
    };
    let attempts = notification.attempts.saturating_add(1);
    if attempts >= state.alerts.attempts {
        return DeliveryOutcome::GaveUp {
            error: format!("{error} (gave up after {attempts} attempts)"),
        };
    }
    let delay = WEBHOOK_BACKOFF.delay(attempts - 1);
    let next_attempt_at = time::Duration::try_from(delay)
        .ok()
        .and_then(|d| now().checked_add(d))
        .unwrap_or_else(now);
    DeliveryOutcome::Retry {
        error,
        next_attempt_at,
    }
}

/// `POST`s the payload; a 2xx answer is success.
async fn post(client: &reqwest::Client, url: &str, payload: &WebhookPayload) -> Result<(), String> {
    let response = client
        .post(url)
        .json(payload)
        .send()
        .await
        .map_err(|error| describe(&error))?;
    let status = response.status();
    if status.is_success() {
        return Ok(());
    }
    let body = response.text().await.unwrap_or_default();
    let body: String = body.trim().chars().take(ERROR_BODY_CHARS).collect();
    Err(if body.is_empty() {
        format!("HTTP {status}")
    } else {
        format!("HTTP {status}: {body}")
    })
}

/// A transport error with its causes (reqwest's own message is only the outermost).
fn describe(error: &reqwest::Error) -> String {
    let mut text = if error.is_timeout() {
        "timed out".to_owned()
    } else if error.is_connect() {
        "could not connect".to_owned()
    } else {
        "request failed".to_owned()
    };
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
