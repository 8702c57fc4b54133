//! Update locks: a workload on the node asks not to be updated right now (a robot
//! mid-task, a till mid-sale) through the local API (`local_api`).
//!
//! The agent only keeps the locks: in `locks.json` in the data directory (a JSON array of
//! `UpdateLock`, replaced atomically, so they survive an agent restart), in every status
//! report (`ReportedState::locks`), and as `lock-acquired`/`lock-released` events in the
//! flight recorder. A change is written to disk before it is answered or reported.
//!
//! **The server, not the agent, holds a node back** while one of its locks is held: it
//! stops releasing the update to that node (for at most the deployment's
//! `maxLockDeferral`). The agent applies whatever desired state it receives. Hence a
//! race: a lock taken after the server released an update to this node, but before the
//! agent applied it (a long-poll answer in flight, or the status report carrying the
//! lock not yet sent, it is debounced by `report::DEBOUNCE`), does not stop that update;
//! it goes ahead. A workload should take its lock a moment before the work it protects,
//! not at its first instruction.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use edgefleet_core::labels::validate_name;
use edgefleet_wire::local::{LocalRequest, LocalResponse};
use edgefleet_wire::node::{NodeEventKind, UpdateLock};
use tokio::sync::watch;
use tracing::{error, info};

use crate::fsutil::{self, FsError};
use crate::recorder::{NewEvent, Recorder};

pub const FILE_NAME: &str = "locks.json";
/// The longest reason kept with a lock; it travels in every status report.
pub const REASON_MAX_BYTES: usize = 512;

/// Why a lock request was refused.
#[derive(Debug, thiserror::Error)]
pub enum LockRequestError {
    #[error("workload name {name:?} {reason} (a workload name is a DNS label such as till-app)")]
    InvalidWorkload { name: String, reason: &'static str },
    #[error("the reason is {length} bytes long; at most {REASON_MAX_BYTES} are allowed")]
    ReasonTooLong { length: usize },
    #[error("workload {workload:?} holds no update lock ({})", held_list(.held))]
    NotHeld { workload: String, held: Vec<String> },
    #[error("the lock was not changed: storing the update locks failed: {0}")]
    Store(String),
}

fn held_list(held: &[String]) -> String {
    if held.is_empty() {
        "no lock is held on this node".to_owned()
    } else {
        format!("locks are held by: {}", held.join(", "))
    }
}

/// Why the locks file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LocksFileError {
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error("the update locks file {} is corrupt ({reason}) and could not be moved aside: {source}", path.display())]
    CorruptNotMoved {
        path: PathBuf,
        reason: String,
        #[source]
        source: std::io::Error,
    },
}

/// The node's update locks. Shared (`Arc`) by the local API and the agent.
#[derive(Debug)]
pub struct Locks {
    path: PathBuf,
    /// Sorted by workload. Changes wake the status reporter.
    current: watch::Sender<Vec<UpdateLock>>,
    /// Serialises changes, so that the file and the published state change in one order.
    change: tokio::sync::Mutex<()>,
    recorder: Option<Arc<Recorder>>,
}

impl Locks {
    /// Loads the locks stored at `path`. A file that does not parse is moved to
    /// `locks.json.corrupt` and reported at ERROR; the agent goes on without those locks
    /// (they only defer updates) rather than stop running workloads.
    pub fn open(path: &Path, recorder: Option<Arc<Recorder>>) -> Result<Self, LocksFileError> {
        let locks = load(path)?;
        let (current, _) = watch::channel(locks);
        Ok(Self {
            path: path.to_owned(),
            current,
            change: tokio::sync::Mutex::new(()),
            recorder,
        })
    }

    /// The locks now, and every later change.
    pub fn subscribe(&self) -> watch::Receiver<Vec<UpdateLock>> {
        self.current.subscribe()
    }

    /// The locks held now, by workload name.
    pub fn list(&self) -> Vec<UpdateLock> {
        self.current.borrow().clone()
    }

    /// Holds the update lock of `workload`. Idempotent: acquiring a held lock keeps it as
    /// it is, with its first `since` and reason. Returns every lock held afterwards.
    pub async fn acquire(
        &self,
        workload: &str,
        reason: &str,
    ) -> Result<Vec<UpdateLock>, LockRequestError> {
        check_workload(workload)?;
        if reason.len() > REASON_MAX_BYTES {
            return Err(LockRequestError::ReasonTooLong {
                length: reason.len(),
            });
        }
        let _change = self.change.lock().await;
        let mut locks = self.list();
        if locks.iter().any(|l| l.workload == workload) {
            return Ok(locks);
        }
        locks.push(UpdateLock {
            workload: workload.to_owned(),
            reason: reason.to_owned(),
            since: time::OffsetDateTime::now_utc(),
        });
        locks.sort_by(|a, b| a.workload.cmp(&b.workload));
        self.store(&locks).await?;
        self.current.send_replace(locks.clone());
        info!(workload, reason, "update lock acquired");
        let message = if reason.is_empty() {
            "update lock acquired".to_owned()
        } else {
            format!("update lock acquired: {reason}")
        };
        self.record(NodeEventKind::LockAcquired, workload, message);
        Ok(locks)
    }

    /// Releases the update lock of `workload`; refused if it holds none. Returns every
    /// lock held afterwards.
    pub async fn release(&self, workload: &str) -> Result<Vec<UpdateLock>, LockRequestError> {
        check_workload(workload)?;
        let _change = self.change.lock().await;
        let mut locks = self.list();
        let Some(index) = locks.iter().position(|l| l.workload == workload) else {
            return Err(LockRequestError::NotHeld {
                workload: workload.to_owned(),
                held: locks.into_iter().map(|l| l.workload).collect(),
            });
        };
        let released = locks.remove(index);
        self.store(&locks).await?;
        self.current.send_replace(locks.clone());
        let held_for = time::OffsetDateTime::now_utc() - released.since;
        info!(
            workload,
            held_for_s = held_for.whole_seconds(),
            "update lock released"
        );
        self.record(
            NodeEventKind::LockReleased,
            workload,
            format!(
                "update lock released after {}s",
                held_for.whole_seconds().max(0)
            ),
        );
        Ok(locks)
    }

    /// Answers one local API request.
    pub async fn handle(&self, request: LocalRequest) -> LocalResponse {
        let result = match request {
            LocalRequest::Acquire { workload, reason } => self.acquire(&workload, &reason).await,
            LocalRequest::Release { workload } => self.release(&workload).await,
            LocalRequest::List => Ok(self.list()),
            LocalRequest::Publish { .. } | LocalRequest::Config { .. } => {
                return LocalResponse {
                    ok: false,
                    error: Some("not an update-lock request".to_owned()),
                    locks: self.list(),
                    ..LocalResponse::default()
                };
            }
        };
        match result {
            Ok(locks) => LocalResponse {
                ok: true,
                error: None,
                locks,
                ..LocalResponse::default()
            },
            Err(error) => LocalResponse {
                ok: false,
                error: Some(error.to_string()),
                locks: self.list(),
                ..LocalResponse::default()
            },
        }
    }

    fn record(&self, kind: NodeEventKind, workload: &str, message: String) {
        if let Some(recorder) = &self.recorder {
            recorder.record(NewEvent::new(kind, message).about(workload, "", ""));
        }
    }

    /// Writes `locks` durably, off the async threads.
    async fn store(&self, locks: &[UpdateLock]) -> Result<(), LockRequestError> {
        let json = serde_json::to_vec_pretty(locks)
            .map_err(|error| LockRequestError::Store(format!("encoding: {error}")))?;
        let path = self.path.clone();
        let written =
            tokio::task::spawn_blocking(move || fsutil::write_atomic(&path, &json, fsutil::PUBLIC))
                .await;
        match written {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(LockRequestError::Store(error.to_string())),
            Err(error) => Err(LockRequestError::Store(format!(
                "write task failed: {error}"
            ))),
        }
    }
}

fn check_workload(workload: &str) -> Result<(), LockRequestError> {
    validate_name(workload).map_err(|reason| LockRequestError::InvalidWorkload {
        name: workload.to_owned(),
        reason,
    })
}

fn load(path: &Path) -> Result<Vec<UpdateLock>, LocksFileError> {
    let Some(text) = fsutil::read_optional(path)? else {
        return Ok(Vec::new());
    };
    let reason = match serde_json::from_str::<Vec<UpdateLock>>(&text) {
        Ok(mut locks) => {
            locks.sort_by(|a, b| a.workload.cmp(&b.workload));
            locks.dedup_by(|a, b| a.workload == b.workload);
            return Ok(locks);
        }
        Err(error) => error.to_string(),
    };
    let moved_to = fsutil::with_suffix(path, ".corrupt");
    match fs::rename(path, &moved_to) {
        Ok(()) => {
            let _ = fsutil::sync_parent(path);
            error!(
                path = %path.display(),
                moved_to = %moved_to.display(),
                reason,
                "the update locks file is corrupt; moved it aside and starting without locks"
            );
            Ok(Vec::new())
        }
        Err(source) => Err(LocksFileError::CorruptNotMoved {
            path: path.to_owned(),
            reason,
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
    }

    #[test]
    fn acquire_is_idempotent_and_release_of_a_free_lock_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let recorder = Arc::new(Recorder::open(dir.path(), 100).unwrap());
        let path = dir.path().join(FILE_NAME);
        let locks = Locks::open(&path, Some(recorder.clone())).unwrap();
        runtime().block_on(async {
            let first = locks.acquire("till", "sale").await.unwrap();
            let again = locks.acquire("till", "another reason").await.unwrap();
            assert_eq!(first, again);
            assert_eq!(again[0].reason, "sale");
            locks.acquire("arm", "").await.unwrap();
            assert_eq!(
                locks
                    .list()
                    .iter()
                    .map(|l| l.workload.as_str())
                    .collect::<Vec<_>>(),
                ["arm", "till"]
            );
            locks.release("till").await.unwrap();
            let error = locks.release("till").await.unwrap_err().to_string();
            assert!(
                error.contains("\"till\" holds no update lock") && error.contains("arm"),
                "{error}"
            );
            let error = locks.acquire("Bad_Name", "").await.unwrap_err().to_string();
            assert!(error.contains("\"Bad_Name\""), "{error}");
        });
        // Only real changes are recorded.
        let kinds: Vec<_> = recorder.events().iter().map(|e| e.kind).collect();
        assert_eq!(
            kinds,
            [
                NodeEventKind::LockAcquired,
                NodeEventKind::LockAcquired,
                NodeEventKind::LockReleased
            ]
        );
        // The file holds what is held, and a new instance reads it.
        let reopened = Locks::open(&path, None).unwrap();
        assert_eq!(reopened.list(), locks.list());
    }

    #[test]
    fn a_corrupt_file_is_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        fs::write(&path, "[{\"workload\": \"ti").unwrap();
        let locks = Locks::open(&path, None).unwrap();
        assert!(locks.list().is_empty());
        assert!(!path.exists());
        assert!(fsutil::with_suffix(&path, ".corrupt").exists());
    }

    #[test]
    fn a_failed_write_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        let locks = Locks::open(&path, None).unwrap();
        // A directory squatting on the temporary file's name makes the write fail.
        let tmp = fsutil::with_suffix(&path, ".tmp");
        fs::create_dir(&tmp).unwrap();
        fs::write(tmp.join("x"), "x").unwrap();
        let error = runtime()
            .block_on(locks.acquire("till", ""))
            .unwrap_err()
            .to_string();
        assert!(error.contains(&tmp.display().to_string()), "{error}");
        assert!(locks.list().is_empty());
    }
}
