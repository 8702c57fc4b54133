//! The journal: the node's last desired state, on disk.
//!
//! The agent writes a desired state here before it acts on it, and starts its workloads from
//! it at boot, so a node keeps running what it was told through control-plane outages,
//! agent crashes and reboots. Writes are atomic (`fsutil::write_atomic`): after a crash the
//! file holds either the previous or the new state. A file that does not parse anyway (a
//! disk that lied about a flush, a hand edit) is moved aside, never silently overwritten.

use std::fs;
use std::path::{Path, PathBuf};

use edgefleet_wire::api::DesiredState;

use crate::fsutil::{self, FsError};

pub const FILE_NAME: &str = "desired.json";

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error("journal {} is corrupt ({reason}); moved it aside to {}", path.display(), moved_to.display())]
    Corrupt {
        path: PathBuf,
        moved_to: PathBuf,
        reason: String,
    },
    #[error("journal {} is corrupt ({reason}) and could not be moved aside: {source}", path.display())]
    CorruptNotMoved {
        path: PathBuf,
        reason: String,
        #[source]
        source: std::io::Error,
    },
    #[error("encoding the desired state for {}: {source}", path.display())]
    Encode {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

#[derive(Debug, Clone)]
pub struct Journal {
    path: PathBuf,
}

impl Journal {
    /// The journal in directory `dir` (which must exist).
    pub fn new(dir: &Path) -> Self {
        Self {
            path: dir.join(FILE_NAME),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where a corrupt journal is moved to.
    pub fn corrupt_path(&self) -> PathBuf {
        fsutil::with_suffix(&self.path, ".corrupt")
    }

    /// The stored desired state; `Ok(None)` when there is none yet. A file that does not
    /// parse is moved to `desired.json.corrupt` and reported as `JournalError::Corrupt`.
    pub fn load(&self) -> Result<Option<DesiredState>, JournalError> {
        let Some(text) = fsutil::read_optional(&self.path)? else {
            return Ok(None);
        };
        let reason = match serde_json::from_str::<DesiredState>(&text) {
            Ok(state) => return Ok(Some(state)),
            Err(error) if text.trim().is_empty() => format!("file is empty: {error}"),
            Err(error) => error.to_string(),
        };
        let moved_to = self.corrupt_path();
        match fs::rename(&self.path, &moved_to) {
            Ok(()) => {
                let _ = fsutil::sync_parent(&self.path);
                Err(JournalError::Corrupt {
                    path: self.path.clone(),
                    moved_to,
                    reason,
                })
            }
            Err(source) => Err(JournalError::CorruptNotMoved {
                path: self.path.clone(),
                reason,
                source,
            }),
        }
    }

    /// Stores `state` atomically and durably. On error the previous state is still there.
    pub fn store(&self, state: &DesiredState) -> Result<(), JournalError> {
        let json = serde_json::to_vec_pretty(state).map_err(|source| JournalError::Encode {
            path: self.path.clone(),
            source,
        })?;
        fsutil::write_atomic(&self.path, &json, fsutil::PUBLIC)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgefleet_wire::api::DesiredWorkload;
    use edgefleet_wire::manifest::WorkloadSpec;

    fn state(generation: u64) -> DesiredState {
        let spec: WorkloadSpec =
            serde_json::from_str(r#"{"name":"web","command":"/bin/sleep","args":["100"]}"#)
                .unwrap();
        DesiredState {
            node: "node-a".into(),
            generation,
            workloads: vec![DesiredWorkload {
                streams: Vec::new(),
                deployment: "d".into(),
                revision: "r".into(),
                spec_hash: "h".into(),
                spec,
                rolled_back: false,
                labels: Default::default(),
            }],
        }
    }

    #[test]
    fn store_and_load_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::new(dir.path());
        assert_eq!(journal.load().unwrap(), None);
        journal.store(&state(1)).unwrap();
        journal.store(&state(2)).unwrap();
        assert_eq!(journal.load().unwrap(), Some(state(2)));
        // Only the journal itself remains: no temporary files.
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![FILE_NAME]);
    }

    #[test]
    fn truncated_file_is_moved_aside_and_named() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::new(dir.path());
        journal.store(&state(3)).unwrap();
        let full = fs::read_to_string(journal.path()).unwrap();
        fs::write(journal.path(), &full[..full.len() / 2]).unwrap();

        let error = journal.load().unwrap_err();
        assert!(matches!(error, JournalError::Corrupt { .. }), "{error}");
        let message = error.to_string();
        assert!(
            message.contains(&journal.path().display().to_string()),
            "{message}"
        );
        assert!(message.contains("desired.json.corrupt"), "{message}");
        assert!(!journal.path().exists());
        assert_eq!(
            fs::read_to_string(journal.corrupt_path()).unwrap(),
            &full[..full.len() / 2]
        );
        // Afterwards the journal is simply empty, and can be written again.
        assert_eq!(journal.load().unwrap(), None);
        journal.store(&state(4)).unwrap();
        assert_eq!(journal.load().unwrap(), Some(state(4)));
    }

    #[test]
    fn empty_file_is_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::new(dir.path());
        fs::write(journal.path(), "").unwrap();
        let error = journal.load().unwrap_err().to_string();
        assert!(error.contains("empty"), "{error}");
    }

    #[test]
    fn failed_write_keeps_the_old_state() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::new(dir.path());
        journal.store(&state(5)).unwrap();
        // A directory squatting on the temporary file's name makes the write fail.
        let tmp = fsutil::with_suffix(journal.path(), ".tmp");
        fs::create_dir(&tmp).unwrap();
        fs::write(tmp.join("x"), "x").unwrap();
        let error = journal.store(&state(6)).unwrap_err().to_string();
        assert!(error.contains(&tmp.display().to_string()), "{error}");
        assert_eq!(journal.load().unwrap(), Some(state(5)));
    }

    #[test]
    fn unwritable_directory_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("not-a-dir");
        fs::write(&blocker, "x").unwrap();
        let journal = Journal::new(&blocker);
        let error = journal.store(&state(1)).unwrap_err().to_string();
        assert!(error.contains(&blocker.display().to_string()), "{error}");
    }
}
