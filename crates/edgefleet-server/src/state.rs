//! What every handler shares: the store, the CA, the controller, the settings, and the
//! shutdown signal that ends long polls.

use std::collections::HashMap;
use std::ops::Deref;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use edgefleet_tls::Ca;
use edgefleet_wire::Timestamp;
use tokio::sync::watch;

use crate::controller::Controller;
use crate::store::{Store, StoreResult};

/// `last_seen` is written at most this often per node by ordinary agent requests.
const LAST_SEEN_WRITE_INTERVAL: Duration = Duration::from_secs(1);

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
    /// Becomes true when the server shuts down; long polls end on it.
    pub shutdown: watch::Receiver<bool>,
    last_seen_writes: Mutex<HashMap<String, Instant>>,
}

pub struct Settings {
    pub ca_sha256: String,
    pub advertise_url: String,
    pub node_cert_validity: Duration,
    pub not_ready_after: Duration,
    pub max_body_bytes: usize,
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
            shutdown,
            last_seen_writes: Mutex::new(HashMap::new()),
        }))
    }

    /// Records that the node was heard from, unless that was written less than a second
    /// ago: a busy agent must not turn into a stream of database writes.
    pub async fn touch_node(&self, name: &str) -> StoreResult<()> {
        if !self.claim_last_seen_write(name) {
            return Ok(());
        }
        self.store.touch_node(name, now()).await
    }

    /// Notes a `last_seen` write done elsewhere (heartbeat, status), restarting the interval.
    pub fn wrote_last_seen(&self, name: &str) {
        self.last_seen_map().insert(name.to_owned(), Instant::now());
    }

    /// Forgets the node's throttle entry (revoked nodes stop writing).
    pub fn forget_node(&self, name: &str) {
        self.last_seen_map().remove(name);
    }

    fn claim_last_seen_write(&self, name: &str) -> bool {
        let now = Instant::now();
        let mut map = self.last_seen_map();
        match map.get(name) {
            Some(last) if now.duration_since(*last) < LAST_SEEN_WRITE_INTERVAL => false,
            _ => {
                map.insert(name.to_owned(), now);
                true
            }
        }
    }

    fn last_seen_map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instant>> {
        // The map only rate-limits writes; whatever a panicking holder left in it is fine.
        self.0
            .last_seen_writes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
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
        };
        let (stopping, stopping_rx) = watch::channel(false);
        (
            dir,
            AppState::new(store, ca, settings, stopping_rx),
            stopping,
        )
    }
}
