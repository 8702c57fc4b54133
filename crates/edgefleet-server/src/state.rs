//! What every handler shares: the store, the CA, the controller, the settings, and the
//! shutdown signal that ends long polls.

use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

use edgefleet_tls::Ca;
use edgefleet_wire::Timestamp;
use tokio::sync::watch;

use crate::controller::Controller;
use crate::store::{Presence, Store, StoreResult};

/// How often buffered presence (heartbeats, last seen) is written to the store.
pub const PRESENCE_FLUSH_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Clone)]
pub struct AppState(Arc<Shared>);

pub struct Shared {
    pub store: Arc<dyn Store>,
    pub ca: Ca,
    pub ca_sha256: String,
    pub advertise_url: String,
    pub node_cert_validity: Duration,
    pub not_ready_after: Duration,
    pub max_body_bytes: usize,
    pub controller: Controller,
    /// Artifact contents on disk and the upload limit.
    pub artifacts: crate::handlers::artifacts::Blobs,
    /// Becomes true when the server shuts down; long polls end on it.
    pub shutdown: watch::Receiver<bool>,
    /// Operators' sessions waiting for or relayed from agents (logs).
    pub sessions: Arc<crate::sessions::Sessions>,
    pub telemetry: crate::telemetry::Telemetry,
    pub lake: crate::lake::Lake,
    pub alerts: crate::alerts::Alerts,
    pub metrics: crate::metrics::Metrics,
}

pub struct Settings {
    pub ca_sha256: String,
    pub advertise_url: String,
    pub node_cert_validity: Duration,
    pub not_ready_after: Duration,
    pub max_body_bytes: usize,
    pub artifacts_dir: std::path::PathBuf,
    pub max_artifact_bytes: u64,
    pub telemetry: crate::telemetry::Telemetry,
    pub lake: crate::lake::Lake,
    pub alerts: crate::alerts::Alerts,
}

impl AppState {
    pub fn new(
        store: Arc<dyn Store>,
        ca: Ca,
        settings: Settings,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        Self(Arc::new(Shared {
            controller: Controller::new(store.clone(), settings.not_ready_after),
            store,
            ca,
            ca_sha256: settings.ca_sha256,
            advertise_url: settings.advertise_url,
            node_cert_validity: settings.node_cert_validity,
            not_ready_after: settings.not_ready_after,
            max_body_bytes: settings.max_body_bytes,
            artifacts: crate::handlers::artifacts::Blobs::new(
                settings.artifacts_dir,
                settings.max_artifact_bytes,
            ),
            shutdown,
            sessions: Arc::new(crate::sessions::Sessions::new()),
            telemetry: settings.telemetry,
            lake: settings.lake,
            alerts: settings.alerts,
            metrics: crate::metrics::Metrics::default(),
        }))
    }

    /// Notes that the node was heard from (the store buffers it; see `Store::record_presence`).
    pub async fn touch_node(&self, name: &str) -> StoreResult<()> {
        self.store
            .record_presence(Presence {
                node: name.to_owned(),
                last_seen: now(),
                applied_generation: None,
                reported: None,
            })
            .await
    }

    /// Notes a heartbeat: alive, and the generation the node has applied.
    pub async fn heartbeat(&self, name: &str, applied_generation: u64) -> StoreResult<()> {
        self.store
            .record_presence(Presence {
                node: name.to_owned(),
                last_seen: now(),
                applied_generation: Some(applied_generation),
                reported: None,
            })
            .await
    }
}

impl Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// Resolves when the server starts shutting down (or the signal is gone).
pub async fn stopping(mut shutdown: watch::Receiver<bool>) {
    // The guard `wait_for` returns is dropped here, not held across the caller's awaits.
    let _ = shutdown.wait_for(|down| *down).await;
}

/// The wall clock. The one place the server reads it for request handling.
pub fn now() -> Timestamp {
    time::OffsetDateTime::now_utc()
}

#[cfg(test)]
pub mod testing {
    //! An `AppState` over a store in a temporary directory, for router-level tests.

    use super::*;

    pub async fn state() -> (tempfile::TempDir, AppState, watch::Sender<bool>) {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::open(dir.path()).await.unwrap();
        let (ca, _) = Ca::generate("test CA", now()).unwrap();
        let settings = Settings {
            ca_sha256: ca.fingerprint().unwrap(),
            advertise_url: "https://127.0.0.1:1".into(),
            node_cert_validity: Duration::from_secs(3600),
            not_ready_after: Duration::from_secs(45),
            max_body_bytes: 1024,
            artifacts_dir: dir.path().join("artifacts"),
            max_artifact_bytes: 1 << 20,
            telemetry: crate::telemetry::Telemetry::new(&Default::default(), dir.path()).unwrap(),
            lake: crate::lake::Lake::new(&Default::default(), dir.path()).unwrap(),
            alerts: crate::alerts::Alerts::new(&Default::default(), dir.path()).unwrap(),
        };
        let (stopping, stopping_rx) = watch::channel(false);
        (
            dir,
            AppState::new(store, ca, settings, stopping_rx),
            stopping,
        )
    }
}
