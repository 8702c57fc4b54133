//! Size-bounded, rotating log files for workload output.
//!
//! `stdout.log` grows to at most `max_bytes`; then it becomes `stdout.log.1`, the older
//! files shift up (`.1` → `.2` ...), and the oldest beyond `keep` is deleted. A workload can
//! therefore never use more than `(keep + 1) * max_bytes` per stream, however much it
//! writes. Rotation prefers line boundaries so a line is not split across files.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::fsutil::with_suffix;

#[derive(Debug)]
pub struct RotatingLog {
    path: PathBuf,
    max_bytes: u64,
    keep: u32,
    file: File,
    size: u64,
}

impl RotatingLog {
    /// Opens `path` for appending. `max_bytes` is raised to 1 if 0.
    pub fn open(path: &Path, max_bytes: u64, keep: u32) -> io::Result<Self> {
        let file = open_append(path)?;
        let size = file.metadata()?.len();
        Ok(Self {
            path: path.to_owned(),
            max_bytes: max_bytes.max(1),
            keep,
            file,
            size,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `data`, rotating as often as needed.
    pub fn write(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            // The file may be over the limit already if the limit was lowered.
            let room =
                usize::try_from(self.max_bytes.saturating_sub(self.size)).unwrap_or(usize::MAX);
            let n = chunk_len(data, room, self.size == 0);
            if n == 0 {
                self.rotate()?;
                continue;
            }
            self.file.write_all(&data[..n])?;
            self.size += n as u64;
            data = &data[n..];
        }
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        if self.keep == 0 {
            self.file = OpenOptions::new()
                .write(true)
                .truncate(true)
                .create(true)
                .open(&self.path)?;
            self.size = 0;
            return Ok(());
        }
        let numbered = |n: u32| with_suffix(&self.path, &format!(".{n}"));
        remove_if_exists(&numbered(self.keep))?;
        for n in (1..self.keep).rev() {
            rename_if_exists(&numbered(n), &numbered(n + 1))?;
        }
        rename_if_exists(&self.path, &numbered(1))?;
        self.file = open_append(&self.path)?;
        self.size = 0;
        Ok(())
    }
}

/// How much of `data` to write into a file with `room` bytes left: all of it if it fits,
/// else up to the last line end that fits, else (no line end, or an empty file that must
/// take something) as much as fits.
fn chunk_len(data: &[u8], room: usize, file_is_empty: bool) -> usize {
    if data.len() <= room {
        return data.len();
    }
    match data[..room].iter().rposition(|&b| b == b'\n') {
        Some(end) => end + 1,
        None if file_is_empty => room,
        // Finish this file at the previous line end; the line goes to the next file whole
        // if it fits there.
        None => 0,
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new().append(true).create(true).open(path)
}

fn remove_if_exists(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

fn rename_if_exists(from: &Path, to: &Path) -> io::Result<()> {
    match fs::rename(from, to) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(dir: &Path) -> Vec<(String, u64)> {
        let mut files: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.file_name().to_string_lossy().into_owned(),
                    e.metadata().unwrap().len(),
                )
            })
            .collect();
        files.sort();
        files
    }

    #[test]
    fn bounds_size_and_file_count() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stdout.log");
        let mut log = RotatingLog::open(&path, 100, 2).unwrap();
        for i in 0..200 {
            log.write(format!("line {i:04}\n").as_bytes()).unwrap();
        }
        let files = files(dir.path());
        let names: Vec<_> = files.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["stdout.log", "stdout.log.1", "stdout.log.2"]);
        assert!(files.iter().all(|(_, size)| *size <= 100), "{files:?}");
        // The newest line is in the current file, the older ones in .1 and .2, whole lines.
        let current = fs::read_to_string(&path).unwrap();
        assert!(current.ends_with("line 0199\n"), "{current}");
        let previous = fs::read_to_string(dir.path().join("stdout.log.1")).unwrap();
        assert!(previous.starts_with("line ") && previous.ends_with('\n'));
    }

    #[test]
    fn a_huge_write_is_split_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stderr.log");
        let mut log = RotatingLog::open(&path, 64, 3).unwrap();
        log.write(&[b'x'; 1000]).unwrap();
        let files = files(dir.path());
        assert_eq!(files.len(), 4, "{files:?}");
        assert!(files.iter().all(|(_, size)| *size <= 64), "{files:?}");
    }

    #[test]
    fn keep_zero_truncates_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stdout.log");
        let mut log = RotatingLog::open(&path, 10, 0).unwrap();
        log.write(b"0123456789abc\n").unwrap();
        assert_eq!(files(dir.path()).len(), 1);
        assert!(fs::metadata(&path).unwrap().len() <= 10);
    }

    #[test]
    fn reopening_appends_and_respects_the_existing_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stdout.log");
        RotatingLog::open(&path, 20, 1)
            .unwrap()
            .write(b"first run\n")
            .unwrap();
        let mut log = RotatingLog::open(&path, 20, 1).unwrap();
        log.write(b"second run\n").unwrap();
        assert_eq!(
            fs::read_to_string(dir.path().join("stdout.log.1")).unwrap(),
            "first run\n"
        );
        assert_eq!(fs::read_to_string(&path).unwrap(), "second run\n");
    }
}
