//! Durable file operations shared by the journal, the identity store and the pid files.
//!
//! Every file the agent relies on after a crash or power loss is replaced atomically: the
//! new contents go to a temporary file in the same directory, which is flushed to disk and
//! then renamed over the old file, and the directory itself is flushed so the rename
//! survives. A reader therefore sees either the old or the new file, never a mix.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// A file-system operation that failed, with the path it failed on.
#[derive(Debug, thiserror::Error)]
#[error("{action} {}: {source}", path.display())]
pub struct FsError {
    pub action: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

impl FsError {
    pub fn new(action: &'static str, path: &Path, source: io::Error) -> Self {
        Self {
            action,
            path: path.to_owned(),
            source,
        }
    }
}

/// Mode of files only the agent may read (keys).
pub const PRIVATE: u32 = 0o600;
/// Mode of ordinary agent files.
pub const PUBLIC: u32 = 0o644;

/// `path` with `suffix` appended to its file name (`desired.json` + `.tmp`).
pub fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    path.with_file_name(name)
}

/// Replaces `path` with `contents` atomically and durably (see the module docs).
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<(), FsError> {
    let tmp = with_suffix(path, ".tmp");
    let result = write_then_rename(&tmp, path, contents, mode);
    if result.is_err() {
        // Leave nothing half-written behind; the old file is untouched.
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn write_then_rename(tmp: &Path, path: &Path, contents: &[u8], mode: u32) -> Result<(), FsError> {
    // A stale temporary file may carry another mode; start from nothing.
    match fs::remove_file(tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(FsError::new("removing", tmp, e)),
    }
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(tmp)
        .map_err(|e| FsError::new("creating", tmp, e))?;
    file.write_all(contents)
        .map_err(|e| FsError::new("writing", tmp, e))?;
    file.sync_all()
        .map_err(|e| FsError::new("flushing", tmp, e))?;
    drop(file);
    fs::rename(tmp, path).map_err(|e| FsError::new("renaming into place", path, e))?;
    sync_parent(path)
}

/// Flushes the directory holding `path`, so that a rename or removal in it is durable.
pub fn sync_parent(path: &Path) -> Result<(), FsError> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    sync_dir(dir)
}

pub fn sync_dir(dir: &Path) -> Result<(), FsError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| FsError::new("flushing directory", dir, e))
}

/// Creates `dir` (and its parents) with `mode` if missing, and proves it is writable by
/// creating and removing a file in it: a read-only or full file system is found at start,
/// with the path in the error, rather than at the first journal write.
pub fn ensure_writable_dir(dir: &Path, mode: u32) -> Result<(), FsError> {
    DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(dir)
        .map_err(|e| FsError::new("creating directory", dir, e))?;
    let probe = dir.join(".write-probe");
    write_atomic(&probe, b"edgefleet-agent write probe\n", PUBLIC)?;
    fs::remove_file(&probe).map_err(|e| FsError::new("removing", &probe, e))
}

/// Reads a file that may not exist: `Ok(None)` when it does not.
pub fn read_optional(path: &Path) -> Result<Option<String>, FsError> {
    match fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(FsError::new("reading", path, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn atomic_write_replaces_and_sets_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        write_atomic(&path, b"one", PRIVATE).unwrap();
        write_atomic(&path, b"two", PRIVATE).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "two");
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(!with_suffix(&path, ".tmp").exists());
    }

    #[test]
    fn unwritable_dir_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        // A regular file where a directory should be: fails even for root.
        let blocker = dir.path().join("blocker");
        fs::write(&blocker, "x").unwrap();
        let wanted = blocker.join("data");
        let error = ensure_writable_dir(&wanted, 0o755).unwrap_err().to_string();
        assert!(error.contains(&wanted.display().to_string()), "{error}");
    }
}
