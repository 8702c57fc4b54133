//! The layout of the agent's data directory (see `docs/dev/contracts.md`).
//!
//! ```text
//! identity/  node.key (0600), node.crt, ca.crt, server.json
//! journal/   desired.json: the last desired state, written before it is acted on
//! run/       <workload>.pid: pid and start time of each running workload
//! logs/      <workload>/stdout.log, stderr.log (+ .1 .. .N rotated)
//! events/    events.jsonl: the flight recorder's log (one NodeEvent per line);
//!            delivered: the highest seq the server acknowledged
//! facts.sha256  hash of the facts last sent to the server
//! locks.json    the update locks held by workloads (a JSON array of UpdateLock)
//! files/     <workload>/…: files rendered for workloads (see `files`)
//! artifacts/ <sha256>: verified artifacts (modules, image archives); <sha256>.partial
//!            while downloading
//! containers/ what the container runtime keeps (the images edgefleet pulled)
//! agent-id      a random id labelling this agent's containers, so several agents can
//!               share one container engine without touching each other's
//! agent.sock    the local API socket (0660), present while the agent runs
//! agent.lock    held (flock) by the running agent: two agents on one directory would
//!               start every workload twice
//! ```

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use crate::fsutil::{self, FsError};

/// Proof that this process is the only agent using the data directory; released on drop.
#[derive(Debug)]
pub struct DataDirLock {
    _lock: Flock<File>,
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error("another agent is already running with the data directory {} (it holds {})", dir.display(), path.display())]
    Busy { dir: PathBuf, path: PathBuf },
    #[error("locking {}: {source}", path.display())]
    Lock { path: PathBuf, source: Errno },
}

#[derive(Debug, Clone)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn identity(&self) -> PathBuf {
        self.root.join("identity")
    }

    pub fn journal(&self) -> PathBuf {
        self.root.join("journal")
    }

    pub fn run(&self) -> PathBuf {
        self.root.join("run")
    }

    pub fn logs(&self) -> PathBuf {
        self.root.join("logs")
    }

    /// The flight recorder's directory.
    pub fn events(&self) -> PathBuf {
        self.root.join("events")
    }

    pub fn locks_file(&self) -> PathBuf {
        self.root.join(crate::locks::FILE_NAME)
    }

    pub fn socket(&self) -> PathBuf {
        self.root.join(crate::local_api::SOCKET_FILE)
    }

    /// The outbox: records waiting for the server (see `outbox`).
    pub fn outbox(&self) -> PathBuf {
        self.root.join("outbox")
    }

    /// The directory of the workloads' local API socket: containers get it mounted, so
    /// it holds nothing but the socket.
    pub fn api_dir(&self) -> PathBuf {
        self.root.join("api")
    }

    /// The workloads' local API socket.
    pub fn api_socket(&self) -> PathBuf {
        self.api_dir().join(crate::local_api::SOCKET_FILE)
    }

    pub fn facts_hash(&self) -> PathBuf {
        self.root.join("facts.sha256")
    }

    pub fn files(&self) -> PathBuf {
        self.root.join("files")
    }

    pub fn artifacts(&self) -> PathBuf {
        self.root.join("artifacts")
    }

    pub fn containers(&self) -> PathBuf {
        self.root.join("containers")
    }

    /// This agent's id (see the module docs), created on first use.
    pub fn agent_id(&self) -> Result<String, FsError> {
        let path = self.root.join("agent-id");
        if let Some(id) = fsutil::read_optional(&path)? {
            let id = id.trim();
            if id.len() >= 8 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Ok(id.to_owned());
            }
        }
        let id = hex::encode(rand::random::<[u8; 8]>());
        fsutil::write_atomic(&path, id.as_bytes(), 0o644)?;
        Ok(id)
    }

    pub fn lock_file(&self) -> PathBuf {
        self.root.join("agent.lock")
    }

    /// Takes the data directory for this process, or fails if another agent has it.
    pub fn lock(&self) -> Result<DataDirLock, LockError> {
        let path = self.lock_file();
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| FsError::new("opening", &path, e))?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => Ok(DataDirLock { _lock: lock }),
            Err((_, Errno::EWOULDBLOCK)) => Err(LockError::Busy {
                dir: self.root.clone(),
                path,
            }),
            Err((_, source)) => Err(LockError::Lock { path, source }),
        }
    }

    /// Creates every directory and checks that each can be written.
    pub fn prepare(&self) -> Result<(), FsError> {
        fsutil::ensure_writable_dir(&self.root, 0o755)?;
        // The identity directory holds the node's private key.
        fsutil::ensure_writable_dir(&self.identity(), 0o700)?;
        for dir in [
            self.journal(),
            self.run(),
            self.logs(),
            self.events(),
            self.files(),
            self.artifacts(),
            self.containers(),
        ] {
            fsutil::ensure_writable_dir(&dir, 0o755)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_agent_cannot_take_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let data = DataDir::new(dir.path());
        data.prepare().unwrap();
        let held = data.lock().unwrap();
        let error = data.lock().unwrap_err();
        assert!(matches!(error, LockError::Busy { .. }), "{error}");
        drop(held);
        data.lock().unwrap();
    }

    #[test]
    fn the_agent_id_is_created_once() {
        let dir = tempfile::tempdir().unwrap();
        let data = DataDir::new(dir.path());
        data.prepare().unwrap();
        let id = data.agent_id().unwrap();
        assert_eq!(id.len(), 16);
        assert_eq!(data.agent_id().unwrap(), id);
    }
}
