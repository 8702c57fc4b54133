//! Workload logs: every runtime writes a workload's output here, and the agent serves it
//! from here (`edgefleet logs`).
//!
//! Each workload has `logs/<workload>/stdout.log` and `stderr.log`. A line is stored as its
//! arrival time (RFC 3339, UTC, microseconds) and one space before the text:
//! `2026-11-26T16:02:42.123456Z hello`. Times are strictly increasing within a workload
//! (both streams together, across agent restarts): a line stamped no later than the one
//! before it (a clock stepped back, two lines in the same microsecond) is moved to one
//! microsecond after it. That makes a line's time its identity, which is what lets a
//! follower join the files it read with the lines it is sent live without losing or
//! doubling any, and lets stdout and stderr be merged in the order they were written.
//!
//! Retention is bounded: a file grows to at most `max_bytes`; then it becomes `.1`, older
//! files shift up (`.1` → `.2` ...) and the oldest beyond `keep` is deleted, so a workload
//! never uses more than `(keep + 1) * max_bytes` per stream however much it writes. Files
//! rotate between lines, never inside one; a single line longer than a file is cut to fit.
//! A line is at most `MAX_LINE_BYTES`: a longer one is cut there and continues as a new
//! line.
//!
//! Logging never fails or blocks its caller: a log that cannot be written (disk full,
//! unwritable directory) logs one warning and drops output until writing works again. A
//! workload must never stall because its log cannot keep up.

use std::collections::{HashMap, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration as StdDuration, Instant};

use edgefleet_core::labels::validate_name;
use edgefleet_wire::Timestamp;
use edgefleet_wire::session::{LogLine, LogStream};
use time::format_description::FormatItem;
use time::macros::format_description;
use time::{Duration, PrimitiveDateTime, UtcOffset};
use tokio::sync::broadcast;
use tokio::task::JoinHandle;
use tracing::warn;

use crate::fsutil::with_suffix;

/// The longest line stored: longer output is cut into lines of this size.
pub const MAX_LINE_BYTES: usize = 16 * 1024;

/// New lines kept for followers that fall behind; a follower further behind than this
/// reads the missed lines back from the files.
const FOLLOW_BUFFER_LINES: usize = 512;

/// How long a log that could not be opened is left alone before it is tried again.
const REOPEN_AFTER: StdDuration = StdDuration::from_secs(10);

/// `2026-11-26T16:02:42.123456Z`: always UTC, always six fractional digits, so every stamp
/// has the same length.
const STAMP_FORMAT: &[FormatItem<'static>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z");
const STAMP_LEN: usize = 27;

/// Opens and shares per-workload logs under `logs_dir/<workload>/`. Cheap to clone.
#[derive(Clone, Debug)]
pub struct LogRegistry {
    inner: Arc<RegistryInner>,
}

#[derive(Debug)]
struct RegistryInner {
    logs_dir: PathBuf,
    max_bytes: u64,
    keep: u32,
    workloads: Mutex<HashMap<String, WorkloadLogs>>,
}

impl LogRegistry {
    /// Logs under `logs_dir`, each stream's file rotated at `max_bytes` (raised to 1 if 0)
    /// with `keep` rotated files (`.1` ..= `.keep`).
    pub fn new(logs_dir: PathBuf, max_bytes: u64, keep: u32) -> Self {
        Self {
            inner: Arc::new(RegistryInner {
                logs_dir,
                max_bytes: max_bytes.max(1),
                keep,
                workloads: Mutex::new(HashMap::new()),
            }),
        }
    }

    pub fn logs_dir(&self) -> &Path {
        &self.inner.logs_dir
    }

    /// The log of `workload` (both streams), opened on first use and shared by every writer.
    ///
    /// Creates `logs_dir/<workload>/` at once, so that the workload is known to readers
    /// before it writes anything. A name that cannot be a directory name (not a valid
    /// workload name) gets a log that drops everything, after one warning.
    pub fn workload(&self, workload: &str) -> WorkloadLogs {
        let mut workloads = lock(&self.inner.workloads);
        if let Some(logs) = workloads.get(workload) {
            return logs.clone();
        }
        let valid = match validate_name(workload) {
            // The directory says the workload exists (for `existing`) before its first
            // line; if it cannot be made, the first write says why.
            Ok(()) => {
                let _ = fs::create_dir_all(self.inner.logs_dir.join(workload));
                true
            }
            Err(reason) => {
                warn!(workload, %reason, "invalid workload name; discarding its output");
                false
            }
        };
        let logs = WorkloadLogs::new(
            workload,
            self.inner.logs_dir.join(workload),
            self.inner.max_bytes,
            self.inner.keep,
            valid,
        );
        workloads.insert(workload.to_owned(), logs.clone());
        logs
    }

    /// The log of `workload` if it has one (written to since the agent started, or found
    /// on disk), for readers: unlike `workload`, never creates one.
    pub fn existing(&self, workload: &str) -> Option<WorkloadLogs> {
        if validate_name(workload).is_err() {
            return None;
        }
        if let Some(logs) = lock(&self.inner.workloads).get(workload) {
            return Some(logs.clone());
        }
        self.inner
            .logs_dir
            .join(workload)
            .is_dir()
            .then(|| self.workload(workload))
    }

    /// The workloads that have logs, sorted.
    pub fn workload_names(&self) -> Vec<String> {
        let mut names: Vec<String> = lock(&self.inner.workloads).keys().cloned().collect();
        if let Ok(entries) = fs::read_dir(&self.inner.logs_dir) {
            for entry in entries.flatten() {
                let Ok(name) = entry.file_name().into_string() else {
                    continue;
                };
                if validate_name(&name).is_ok() && entry.path().is_dir() {
                    names.push(name);
                }
            }
        }
        names.sort();
        names.dedup();
        names
    }
}

/// One workload's log, both streams. Cheap to clone; every clone writes to the same files.
#[derive(Clone, Debug)]
pub struct WorkloadLogs {
    inner: Arc<WorkloadInner>,
}

#[derive(Debug)]
struct WorkloadInner {
    name: String,
    dir: PathBuf,
    max_bytes: u64,
    keep: u32,
    /// False for a name that must not become a path: such a log drops everything.
    valid: bool,
    state: Mutex<WriterState>,
    /// Every line as it is stored, for followers.
    appended: broadcast::Sender<Arc<LogLine>>,
}

#[derive(Debug)]
struct WriterState {
    stdout: StreamWriter,
    stderr: StreamWriter,
    /// The time of the newest line stored; `None` until read from disk.
    last: Option<Timestamp>,
    last_loaded: bool,
}

#[derive(Debug, Default)]
struct StreamWriter {
    file: FileState,
    /// The start of a line whose end has not arrived yet.
    partial: Vec<u8>,
}

#[derive(Debug, Default)]
enum FileState {
    #[default]
    Closed,
    Open {
        log: RotatingLog,
        /// Set after a failed write (warned about once); cleared by the next success.
        failing: bool,
    },
    /// Could not be opened; tried again after `REOPEN_AFTER`.
    Failed { at: Instant },
}

impl WorkloadLogs {
    fn new(name: &str, dir: PathBuf, max_bytes: u64, keep: u32, valid: bool) -> Self {
        let (appended, _) = broadcast::channel(FOLLOW_BUFFER_LINES);
        Self {
            inner: Arc::new(WorkloadInner {
                name: name.to_owned(),
                dir,
                max_bytes,
                keep,
                valid,
                state: Mutex::new(WriterState {
                    stdout: StreamWriter::default(),
                    stderr: StreamWriter::default(),
                    last: None,
                    last_loaded: false,
                }),
                appended,
            }),
        }
    }

    /// The workload's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Raw output as read from a pipe: split into lines (a partial line waits for its end, or is cut at 16 KiB), each stamped with the time it arrived.
    pub fn write(&self, stream: LogStream, chunk: &[u8]) {
        if !self.inner.valid || chunk.is_empty() {
            return;
        }
        let now = now();
        let mut state = lock(&self.inner.state);
        let mut rest = chunk;
        while !rest.is_empty() {
            let writer = state.stream(stream);
            let room = MAX_LINE_BYTES.saturating_sub(writer.partial.len());
            // One byte past the room: a line that just fits is followed by its line end.
            let window = &rest[..rest.len().min(room + 1)];
            if let Some(end) = window.iter().position(|&b| b == b'\n') {
                let mut line = std::mem::take(&mut writer.partial);
                line.extend_from_slice(&rest[..end]);
                rest = &rest[end + 1..];
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                self.store(&mut state, stream, now, &line);
            } else if window.len() > room {
                let mut line = std::mem::take(&mut writer.partial);
                line.extend_from_slice(&rest[..room]);
                rest = &rest[room..];
                self.store(&mut state, stream, now, &line);
            } else {
                writer.partial.extend_from_slice(rest);
                rest = &[];
            }
        }
    }

    /// Ends a stream's partial line (the writer closed its end).
    pub fn flush(&self, stream: LogStream) {
        let mut state = lock(&self.inner.state);
        let line = std::mem::take(&mut state.stream(stream).partial);
        if !line.is_empty() {
            self.store(&mut state, stream, now(), &line);
        }
    }

    /// One complete line whose time is known (container engines stamp their own).
    ///
    /// A line ending is removed; a line holding line breaks is stored as several lines.
    pub fn write_line(&self, stream: LogStream, at: Timestamp, line: &[u8]) {
        if !self.inner.valid {
            return;
        }
        let line = line.strip_suffix(b"\n").unwrap_or(line);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let mut state = lock(&self.inner.state);
        for part in line.split(|&b| b == b'\n') {
            if part.is_empty() {
                self.store(&mut state, stream, at, part);
            }
            for piece in part.chunks(MAX_LINE_BYTES) {
                self.store(&mut state, stream, at, piece);
            }
        }
    }

    /// The time of the newest line stored, to resume copying a container's output after an agent restart without duplicates.
    pub fn last_timestamp(&self) -> Option<Timestamp> {
        let mut state = lock(&self.inner.state);
        self.load_last(&mut state);
        state.last
    }

    /// Stores one line: stamps it (see the module docs on why stamps strictly increase),
    /// appends it to its file and hands it to followers.
    fn store(&self, state: &mut WriterState, stream: LogStream, at: Timestamp, line: &[u8]) {
        self.load_last(state);
        let mut at = truncate_to_micros(at);
        if let Some(last) = state.last
            && at <= last
        {
            at = last + Duration::microseconds(1);
        }
        state.last = Some(at);
        let mut record = Vec::with_capacity(STAMP_LEN + 2 + line.len());
        record.extend_from_slice(format_stamp(at).as_bytes());
        record.push(b' ');
        record.extend_from_slice(line);
        record.push(b'\n');
        self.append(state.stream(stream), stream, &record);
        if self.inner.appended.receiver_count() > 0 {
            let _ = self.inner.appended.send(Arc::new(LogLine {
                ts: at,
                stream,
                line: String::from_utf8_lossy(line).into_owned(),
            }));
        }
    }

    fn append(&self, writer: &mut StreamWriter, stream: LogStream, record: &[u8]) {
        if let FileState::Failed { at } = writer.file
            && at.elapsed() >= REOPEN_AFTER
        {
            writer.file = FileState::Closed;
        }
        if let FileState::Closed = writer.file {
            let path = self.path(stream);
            writer.file = match fs::create_dir_all(&self.inner.dir)
                .and_then(|()| RotatingLog::open(&path, self.inner.max_bytes, self.inner.keep))
            {
                Ok(log) => FileState::Open {
                    log,
                    failing: false,
                },
                Err(error) => {
                    // Running without a log beats not running: the output is lost, not
                    // the workload.
                    warn!(%error, workload = %self.inner.name, path = %path.display(), "cannot open workload log; discarding its output");
                    FileState::Failed { at: Instant::now() }
                }
            };
        }
        if let FileState::Open { log, failing } = &mut writer.file {
            match log.write_record(record) {
                Ok(()) => *failing = false,
                Err(error) if !*failing => {
                    *failing = true;
                    warn!(%error, workload = %self.inner.name, path = %log.path.display(), "cannot write workload log; discarding output");
                }
                Err(_) => {}
            }
        }
    }

    /// Reads the newest stored time from disk once, so that stamps keep increasing across
    /// agent restarts and `last_timestamp` knows what an earlier agent stored.
    fn load_last(&self, state: &mut WriterState) {
        if state.last_loaded {
            return;
        }
        state.last_loaded = true;
        if !self.inner.valid {
            return;
        }
        let newest = [LogStream::Stdout, LogStream::Stderr]
            .into_iter()
            .filter_map(|stream| self.newest_stored(stream))
            .max();
        state.last = state.last.max(newest);
    }

    fn newest_stored(&self, stream: LogStream) -> Option<Timestamp> {
        self.files(stream)
            .iter()
            .find_map(|path| newest_stamp_in(path).ok().flatten())
    }

    fn path(&self, stream: LogStream) -> PathBuf {
        self.inner.dir.join(format!("{}.log", stream.as_str()))
    }

    /// A stream's files, newest first.
    fn files(&self, stream: LogStream) -> Vec<PathBuf> {
        let current = self.path(stream);
        let mut files = vec![current.clone()];
        files.extend((1..=self.inner.keep).map(|n| with_suffix(&current, &format!(".{n}"))));
        files
    }

    /// The stored lines of both streams, merged in the order they were written: those at
    /// or after `since`, then only the last `tail` of them. Reads files: blocking.
    pub fn read(&self, since: Option<Timestamp>, tail: Option<u64>) -> io::Result<Vec<LogLine>> {
        let (_, stored_through) = self.snapshot(false);
        self.read_through(since, stored_through, tail)
    }

    /// The time of the newest line stored, read under the writers' lock, and with
    /// `subscribe` a receiver of every line stored after it. The two together split a
    /// workload's lines exactly: those up to the time are in the files (unless they could
    /// not be written), the later ones are sent.
    fn snapshot(&self, subscribe: bool) -> (Option<broadcast::Receiver<Arc<LogLine>>>, Timestamp) {
        let mut state = lock(&self.inner.state);
        self.load_last(&mut state);
        let receiver = subscribe.then(|| self.inner.appended.subscribe());
        // Nothing stamped yet: only unstamped lines (from before stamps) are stored, and
        // they read as the epoch.
        (receiver, state.last.unwrap_or(Timestamp::UNIX_EPOCH))
    }

    /// `read`, ignoring lines stored after `through`: the two streams are read one after
    /// the other, and without a common end the later read would hold lines the earlier
    /// one could not.
    fn read_through(
        &self,
        since: Option<Timestamp>,
        through: Timestamp,
        tail: Option<u64>,
    ) -> io::Result<Vec<LogLine>> {
        let tail = tail.map(|n| usize::try_from(n).unwrap_or(usize::MAX));
        let stdout = self.read_stream(LogStream::Stdout, since, through, tail)?;
        let stderr = self.read_stream(LogStream::Stderr, since, through, tail)?;
        let mut merged = merge_by_time(stdout, stderr);
        if let Some(tail) = tail {
            let excess = merged.len().saturating_sub(tail);
            merged.drain(..excess);
        }
        Ok(merged)
    }

    /// One stream's lines at or after `since`, at most the last `tail`, oldest first.
    fn read_stream(
        &self,
        stream: LogStream,
        since: Option<Timestamp>,
        through: Timestamp,
        tail: Option<usize>,
    ) -> io::Result<Vec<LogLine>> {
        let mut newest_first: Vec<LogLine> = Vec::new();
        // Files are read newest first. A rotation between two reads shows the same lines
        // again in the next older file: only lines older than everything taken so far are
        // taken from it.
        let mut oldest_taken: Option<Timestamp> = None;
        for path in self.files(stream) {
            if tail.is_some_and(|tail| newest_first.len() >= tail) {
                break;
            }
            let content = match fs::read(&path) {
                Ok(content) => content,
                Err(error) if error.kind() == io::ErrorKind::NotFound => continue,
                Err(error) => {
                    return Err(io::Error::new(
                        error.kind(),
                        format!("reading {}: {error}", path.display()),
                    ));
                }
            };
            let lines = parse_file(&content);
            let mut reached_since = false;
            let mut oldest_in_file = None;
            for (at, text) in lines.into_iter().rev() {
                if tail.is_some_and(|tail| newest_first.len() >= tail) {
                    break;
                }
                if at > through || oldest_taken.is_some_and(|oldest| at >= oldest) {
                    continue;
                }
                if since.is_some_and(|since| at < since) {
                    reached_since = true;
                    continue;
                }
                oldest_in_file = Some(at);
                newest_first.push(LogLine {
                    ts: at,
                    stream,
                    line: String::from_utf8_lossy(text).into_owned(),
                });
            }
            oldest_taken = oldest_in_file.or(oldest_taken);
            if reached_since {
                break;
            }
        }
        newest_first.reverse();
        Ok(newest_first)
    }

    /// Stored lines as `read` selects them, then every new line as it is written, without
    /// a gap or a repeat between the two.
    pub async fn follow(
        &self,
        since: Option<Timestamp>,
        tail: Option<u64>,
    ) -> io::Result<LogFollower> {
        let (receiver, stored_through) = self.snapshot(true);
        let receiver = receiver.ok_or_else(|| io::Error::other("not subscribed"))?;
        let logs = self.clone();
        let stored =
            tokio::task::spawn_blocking(move || logs.read_through(since, stored_through, tail))
                .await
                .map_err(io::Error::other)??;
        Ok(LogFollower {
            logs: self.clone(),
            receiver,
            since,
            seen_through: stored_through,
            pending: stored.into(),
            catching_up: None,
        })
    }
}

impl WriterState {
    fn stream(&mut self, stream: LogStream) -> &mut StreamWriter {
        match stream {
            LogStream::Stdout => &mut self.stdout,
            LogStream::Stderr => &mut self.stderr,
        }
    }
}

/// A workload's lines, stored then live (see `WorkloadLogs::follow`).
#[derive(Debug)]
pub struct LogFollower {
    logs: WorkloadLogs,
    receiver: broadcast::Receiver<Arc<LogLine>>,
    since: Option<Timestamp>,
    /// Lines up to this time were read from the files (or are pending): a line sent live
    /// at or before it is not handed out again.
    seen_through: Timestamp,
    pending: VecDeque<LogLine>,
    /// Reading back from the files what this follower missed by falling behind.
    catching_up: Option<JoinHandle<io::Result<Vec<LogLine>>>>,
}

impl LogFollower {
    /// The next line, waiting for one to be written. `None` only when the log can no
    /// longer be read. Cancel-safe: a line is never lost by dropping the future.
    pub async fn next(&mut self) -> Option<LogLine> {
        loop {
            if let Some(line) = self.pending.pop_front() {
                return Some(line);
            }
            if let Some(reading) = &mut self.catching_up {
                let read = reading.await;
                self.catching_up = None;
                match read {
                    Ok(Ok(lines)) => self.pending = lines.into(),
                    Ok(Err(error)) => {
                        warn!(%error, workload = %self.logs.name(), "cannot read back missed log lines");
                    }
                    Err(error) => {
                        warn!(%error, workload = %self.logs.name(), "reading back missed log lines failed");
                    }
                }
                continue;
            }
            match self.receiver.recv().await {
                Ok(line) => {
                    let seen = line.ts <= self.seen_through;
                    let too_old = self.since.is_some_and(|since| line.ts < since);
                    if !seen && !too_old {
                        self.seen_through = line.ts;
                        return Some(LogLine::clone(&line));
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => self.catch_up(),
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }

    /// Starts over from the files after falling behind: what was missed is read back
    /// (unless it could not be written), the rest is sent to a new subscription.
    fn catch_up(&mut self) {
        let (receiver, stored_through) = self.logs.snapshot(true);
        let Some(receiver) = receiver else { return };
        self.receiver = receiver;
        let logs = self.logs.clone();
        let after = self.seen_through;
        let since = self.since;
        self.seen_through = stored_through;
        self.catching_up = Some(tokio::task::spawn_blocking(move || {
            let from = since.map_or(after, |since| since.max(after));
            let lines = logs.read_through(Some(from), stored_through, None)?;
            Ok(lines.into_iter().filter(|line| line.ts > after).collect())
        }));
    }
}

/// Merges two lists sorted by time into one.
fn merge_by_time(first: Vec<LogLine>, second: Vec<LogLine>) -> Vec<LogLine> {
    let mut merged = Vec::with_capacity(first.len() + second.len());
    let mut first = first.into_iter().peekable();
    let mut second = second.into_iter().peekable();
    loop {
        let take_first = match (first.peek(), second.peek()) {
            (Some(a), Some(b)) => a.ts <= b.ts,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => return merged,
        };
        let next = if take_first {
            first.next()
        } else {
            second.next()
        };
        merged.extend(next);
    }
}

/// A file's complete lines with their times. A line without a readable stamp (written
/// before stamps existed, or cut by a tiny size limit) takes the time of the line before
/// it, or the Unix epoch if it is the first. A last line without its line ending is being
/// written: left for the next read.
fn parse_file(content: &[u8]) -> Vec<(Timestamp, &[u8])> {
    let complete = match content.iter().rposition(|&b| b == b'\n') {
        Some(end) => &content[..end],
        None => return Vec::new(),
    };
    let mut previous = Timestamp::UNIX_EPOCH;
    complete
        .split(|&b| b == b'\n')
        .map(|record| match parse_record(record) {
            Some((at, text)) => {
                previous = at;
                (at, text)
            }
            None => (previous, record),
        })
        .collect()
}

/// `<stamp> <text>` → its time and text.
fn parse_record(record: &[u8]) -> Option<(Timestamp, &[u8])> {
    let stamp = record.get(..STAMP_LEN)?;
    if record.get(STAMP_LEN) != Some(&b' ') {
        return None;
    }
    let at = parse_stamp(std::str::from_utf8(stamp).ok()?)?;
    Some((at, &record[STAMP_LEN + 1..]))
}

fn parse_stamp(stamp: &str) -> Option<Timestamp> {
    PrimitiveDateTime::parse(stamp, STAMP_FORMAT)
        .ok()
        .map(PrimitiveDateTime::assume_utc)
}

fn format_stamp(at: Timestamp) -> String {
    at.to_offset(UtcOffset::UTC)
        .format(STAMP_FORMAT)
        // Formatting fails only for years outside 0..=9999, which no clock produces.
        .unwrap_or_else(|_| "0000-01-01T00:00:00.000000Z".to_owned())
}

fn truncate_to_micros(at: Timestamp) -> Timestamp {
    let at = at.to_offset(UtcOffset::UTC);
    at.replace_nanosecond(at.nanosecond() / 1000 * 1000)
        .unwrap_or(at)
}

fn now() -> Timestamp {
    Timestamp::now_utc()
}

/// The stamp of the newest complete, stamped line in `path`, reading only its end.
fn newest_stamp_in(path: &Path) -> io::Result<Option<Timestamp>> {
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    let window = (MAX_LINE_BYTES + STAMP_LEN + 2) as u64;
    file.seek(SeekFrom::Start(len.saturating_sub(window)))?;
    let mut end = Vec::new();
    file.take(window).read_to_end(&mut end)?;
    let Some(complete) = end.iter().rposition(|&b| b == b'\n').map(|n| &end[..n]) else {
        return Ok(None);
    };
    Ok(complete
        .rsplit(|&b| b == b'\n')
        .find_map(|record| parse_record(record).map(|(at, _)| at)))
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One stream's size-bounded, rotating file (see the module docs).
#[derive(Debug)]
struct RotatingLog {
    path: PathBuf,
    max_bytes: u64,
    keep: u32,
    file: File,
    size: u64,
}

impl RotatingLog {
    /// Opens `path` for appending.
    fn open(path: &Path, max_bytes: u64, keep: u32) -> io::Result<Self> {
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

    /// Appends one record (a stamped line with its line ending), rotating first if it does
    /// not fit. A record bigger than a whole file is cut to fit, keeping its line ending.
    fn write_record(&mut self, record: &[u8]) -> io::Result<()> {
        if self.size > 0 && self.size + record.len() as u64 > self.max_bytes {
            self.rotate()?;
        }
        let max = usize::try_from(self.max_bytes).unwrap_or(usize::MAX);
        if record.len() <= max {
            self.file.write_all(record)?;
        } else {
            let mut cut = record[..max.saturating_sub(1)].to_vec();
            cut.push(b'\n');
            self.file.write_all(&cut)?;
        }
        self.size += record.len().min(max) as u64;
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

    fn at(text: &str) -> Timestamp {
        Timestamp::parse(text, &time::format_description::well_known::Rfc3339).unwrap()
    }

    fn registry(dir: &Path, max_bytes: u64, keep: u32) -> LogRegistry {
        LogRegistry::new(dir.join("logs"), max_bytes, keep)
    }

    fn texts(lines: &[LogLine]) -> Vec<String> {
        lines.iter().map(|line| line.line.clone()).collect()
    }

    fn read_all(logs: &WorkloadLogs) -> Vec<String> {
        texts(&logs.read(None, None).unwrap())
    }

    /// Each stored record: a 27-character stamp, a space, the text.
    fn records(path: &Path) -> Vec<String> {
        fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|record| {
                assert!(
                    parse_record(record.as_bytes()).is_some(),
                    "unstamped record {record:?}"
                );
                record[STAMP_LEN + 1..].to_owned()
            })
            .collect()
    }

    #[test]
    fn chunks_become_lines_and_a_partial_line_waits_for_its_end() {
        let dir = tempfile::tempdir().unwrap();
        let logs = registry(dir.path(), 1 << 20, 1).workload("web");
        logs.write(LogStream::Stdout, b"hel");
        assert_eq!(read_all(&logs), Vec::<String>::new());
        logs.write(LogStream::Stdout, b"lo\r\nwor");
        logs.write(LogStream::Stdout, b"ld\n\nlast");
        assert_eq!(read_all(&logs), ["hello", "world", ""]);
        logs.flush(LogStream::Stdout);
        logs.flush(LogStream::Stdout);
        assert_eq!(read_all(&logs), ["hello", "world", "", "last"]);
        let path = dir.path().join("logs/web/stdout.log");
        assert_eq!(records(&path), ["hello", "world", "", "last"]);
    }

    #[test]
    fn the_on_disk_format_is_an_rfc3339_microsecond_stamp_then_the_text() {
        let dir = tempfile::tempdir().unwrap();
        let logs = registry(dir.path(), 1 << 20, 1).workload("web");
        logs.write_line(
            LogStream::Stderr,
            at("2026-11-26T16:02:42.123456789Z"),
            b"hello\n",
        );
        logs.write_line(LogStream::Stderr, at("2026-11-26T16:02:43Z"), b"two\nlines");
        let text = fs::read_to_string(dir.path().join("logs/web/stderr.log")).unwrap();
        assert_eq!(
            text,
            "2026-11-26T16:02:42.123456Z hello\n\
             2026-11-26T16:02:43.000000Z two\n\
             2026-11-26T16:02:43.000001Z lines\n"
        );
    }

    #[test]
    fn long_lines_are_cut_at_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let logs = registry(dir.path(), 1 << 20, 1).workload("web");
        let long = vec![b'x'; MAX_LINE_BYTES * 2 + 10];
        // Arriving in pieces, as from a pipe.
        for piece in long.chunks(4096) {
            logs.write(LogStream::Stdout, piece);
        }
        logs.write(LogStream::Stdout, b"\n");
        logs.write_line(LogStream::Stderr, now(), &long);
        // A line of exactly the limit is one line, whether its end comes with it or later.
        let exact = vec![b'y'; MAX_LINE_BYTES];
        logs.write(LogStream::Stdout, &[&exact[..], b"\n"].concat());
        logs.write(LogStream::Stdout, &exact);
        logs.write(LogStream::Stdout, b"\n");
        let lines = logs.read(None, None).unwrap();
        let lengths: Vec<(LogStream, usize)> =
            lines.iter().map(|l| (l.stream, l.line.len())).collect();
        assert_eq!(
            lengths,
            [
                (LogStream::Stdout, MAX_LINE_BYTES),
                (LogStream::Stdout, MAX_LINE_BYTES),
                (LogStream::Stdout, 10),
                (LogStream::Stderr, MAX_LINE_BYTES),
                (LogStream::Stderr, MAX_LINE_BYTES),
                (LogStream::Stderr, 10),
                (LogStream::Stdout, MAX_LINE_BYTES),
                (LogStream::Stdout, MAX_LINE_BYTES),
            ]
        );
    }

    #[test]
    fn stamps_strictly_increase_across_streams_and_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let logs = registry(dir.path(), 1 << 20, 1).workload("web");
        let t = at("2026-11-26T16:00:00Z");
        logs.write_line(LogStream::Stdout, t, b"a");
        logs.write_line(LogStream::Stderr, t, b"b");
        // A clock stepped back does not reorder lines either.
        logs.write_line(LogStream::Stdout, t - Duration::hours(1), b"c");
        let stamps: Vec<Timestamp> = logs
            .read(None, None)
            .unwrap()
            .iter()
            .map(|l| l.ts)
            .collect();
        let micro = Duration::microseconds(1);
        assert_eq!(stamps, [t, t + micro, t + micro * 2]);
        assert_eq!(logs.last_timestamp(), Some(t + micro * 2));

        // A new agent knows what the previous one stored.
        let again = registry(dir.path(), 1 << 20, 1).workload("web");
        assert_eq!(again.last_timestamp(), Some(t + micro * 2));
        again.write_line(LogStream::Stderr, t, b"d");
        assert_eq!(again.last_timestamp(), Some(t + micro * 3));
        assert_eq!(
            registry(dir.path(), 1 << 20, 1)
                .workload("fresh")
                .last_timestamp(),
            None
        );
    }

    #[test]
    fn rotation_bounds_size_and_files_and_keeps_whole_stamped_lines() {
        let dir = tempfile::tempdir().unwrap();
        let logs = registry(dir.path(), 200, 2).workload("web");
        for i in 0..200 {
            logs.write(LogStream::Stdout, format!("line {i:04}\n").as_bytes());
        }
        let workload_dir = dir.path().join("logs/web");
        let mut names: Vec<String> = fs::read_dir(&workload_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["stdout.log", "stdout.log.1", "stdout.log.2"]);
        for name in &names {
            let path = workload_dir.join(name);
            assert!(fs::metadata(&path).unwrap().len() <= 200, "{name}");
            assert!(!records(&path).is_empty(), "{name}");
        }
        // Newest in the current file, whole lines in every file.
        assert_eq!(
            records(&workload_dir.join("stdout.log")).last().unwrap(),
            "line 0199"
        );
        // Reading spans the rotated files, oldest first, without gaps.
        let all = read_all(&logs);
        let numbers: Vec<u32> = all.iter().map(|l| l[5..].parse().unwrap()).collect();
        assert_eq!(*numbers.last().unwrap(), 199);
        assert!(numbers.len() >= 10, "{numbers:?}");
        assert!(numbers.windows(2).all(|w| w[1] == w[0] + 1), "{numbers:?}");
    }

    #[test]
    fn a_line_bigger_than_a_file_is_cut_to_fit() {
        let dir = tempfile::tempdir().unwrap();
        let logs = registry(dir.path(), 64, 1).workload("web");
        logs.write_line(LogStream::Stdout, now(), &[b'x'; 100]);
        logs.write_line(LogStream::Stdout, now(), b"after");
        let path = dir.path().join("logs/web/stdout.log");
        assert_eq!(records(&path), ["after"]);
        let rotated = fs::read(with_suffix(&path, ".1")).unwrap();
        assert_eq!(rotated.len(), 64);
        assert!(rotated.ends_with(b"x\n"));
        assert_eq!(read_all(&logs).len(), 2);
    }

    #[test]
    fn keep_zero_truncates_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let logs = registry(dir.path(), 100, 0).workload("web");
        for i in 0..20 {
            logs.write(LogStream::Stdout, format!("line {i}\n").as_bytes());
        }
        let names: Vec<_> = fs::read_dir(dir.path().join("logs/web")).unwrap().collect();
        assert_eq!(names.len(), 1);
        assert_eq!(read_all(&logs).last().unwrap(), "line 19");
    }

    #[test]
    fn since_and_tail_select_from_both_streams_merged_by_time() {
        let dir = tempfile::tempdir().unwrap();
        let logs = registry(dir.path(), 120, 5).workload("web");
        let t0 = at("2026-11-26T16:00:00Z");
        for i in 0..20i64 {
            let stream = if i % 3 == 0 {
                LogStream::Stderr
            } else {
                LogStream::Stdout
            };
            logs.write_line(stream, t0 + Duration::seconds(i), format!("{i}").as_bytes());
        }
        let numbers = |lines: Vec<LogLine>| -> Vec<i64> {
            lines.iter().map(|l| l.line.parse().unwrap()).collect()
        };
        // Small files: the lines are spread over several rotations per stream.
        assert!(dir.path().join("logs/web/stdout.log.2").exists());
        assert_eq!(numbers(logs.read(None, Some(3)).unwrap()), [17, 18, 19]);
        assert_eq!(
            numbers(logs.read(Some(t0 + Duration::seconds(15)), None).unwrap()),
            [15, 16, 17, 18, 19]
        );
        assert_eq!(
            numbers(
                logs.read(Some(t0 + Duration::seconds(10)), Some(2))
                    .unwrap()
            ),
            [18, 19]
        );
        assert_eq!(
            numbers(logs.read(None, Some(0)).unwrap()),
            Vec::<i64>::new()
        );
        let streams: Vec<LogStream> = logs
            .read(Some(t0 + Duration::seconds(17)), None)
            .unwrap()
            .iter()
            .map(|l| l.stream)
            .collect();
        assert_eq!(
            streams,
            [LogStream::Stdout, LogStream::Stderr, LogStream::Stdout]
        );
    }

    #[test]
    fn lines_without_a_stamp_are_still_served() {
        let dir = tempfile::tempdir().unwrap();
        let workload_dir = dir.path().join("logs/web");
        fs::create_dir_all(&workload_dir).unwrap();
        fs::write(workload_dir.join("stdout.log"), "old line\nanother\n").unwrap();
        let registry = registry(dir.path(), 1 << 20, 1);
        let logs = registry.existing("web").unwrap();
        assert_eq!(logs.last_timestamp(), None);
        logs.write(LogStream::Stdout, b"new line\n");
        assert_eq!(read_all(&logs), ["old line", "another", "new line"]);
    }

    #[test]
    fn a_log_that_cannot_be_written_drops_output_without_failing() {
        let dir = tempfile::tempdir().unwrap();
        // The logs directory is a file: nothing can be created under it.
        fs::write(dir.path().join("logs"), "").unwrap();
        let registry = registry(dir.path(), 1 << 20, 1);
        let logs = registry.workload("web");
        logs.write(LogStream::Stdout, b"lost\n");
        logs.flush(LogStream::Stdout);
        let error = logs.read(None, None).unwrap_err();
        assert!(error.to_string().contains("logs/web/stdout.log"), "{error}");

        // A name that cannot be a directory name is not a path to write to.
        let invalid = registry.workload("../escape");
        invalid.write(LogStream::Stdout, b"nowhere\n");
        assert!(!dir.path().join("escape").exists());
        assert!(registry.existing("../escape").is_none());
    }

    #[test]
    fn the_registry_knows_workloads_written_to_or_found_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("logs/old")).unwrap();
        let registry = registry(dir.path(), 1 << 20, 1);
        assert!(registry.existing("web").is_none());
        registry.workload("web").write(LogStream::Stdout, b"x\n");
        assert!(registry.existing("web").is_some());
        assert!(registry.existing("old").is_some());
        // Known from the moment a runtime asks for its log, before its first line.
        registry.workload("quiet");
        assert!(registry.existing("quiet").is_some());
        assert_eq!(registry.workload_names(), ["old", "quiet", "web"]);
        let fresh = LogRegistry::new(dir.path().join("logs"), 1 << 20, 1);
        assert_eq!(fresh.workload_names(), ["old", "quiet", "web"]);
    }

    #[tokio::test]
    async fn follow_gives_stored_then_new_lines() {
        let dir = tempfile::tempdir().unwrap();
        let logs = registry(dir.path(), 1 << 20, 1).workload("web");
        for i in 0..5 {
            logs.write(LogStream::Stdout, format!("old {i}\n").as_bytes());
        }
        let mut follower = logs.follow(None, Some(2)).await.unwrap();
        logs.write(LogStream::Stderr, b"new 0\n");
        let mut seen = Vec::new();
        for _ in 0..3 {
            let line = tokio::time::timeout(StdDuration::from_secs(5), follower.next())
                .await
                .unwrap()
                .unwrap();
            seen.push(line.line);
        }
        assert_eq!(seen, ["old 3", "old 4", "new 0"]);
        // Nothing more until something is written.
        assert!(follower.next().now_or_never().is_none());
    }

    /// A writer runs on its own thread while a follower starts: every line arrives once,
    /// in order, whether it came from the files or live.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn follow_neither_loses_nor_repeats_lines_at_the_seam() {
        use std::sync::atomic::{AtomicBool, AtomicUsize};
        let dir = tempfile::tempdir().unwrap();
        // Small files, so that rotations happen while the follower reads them.
        let logs = registry(dir.path(), 4096, 200).workload("web");
        let stop = Arc::new(AtomicBool::new(false));
        let written = Arc::new(AtomicUsize::new(0));
        let writer = std::thread::spawn({
            let (logs, stop, written) = (logs.clone(), stop.clone(), written.clone());
            move || {
                let mut i = 0usize;
                while !stop.load(std::sync::atomic::Ordering::Acquire) {
                    let stream = if i.is_multiple_of(2) {
                        LogStream::Stdout
                    } else {
                        LogStream::Stderr
                    };
                    logs.write(stream, format!("{i}\n").as_bytes());
                    i += 1;
                    written.store(i, std::sync::atomic::Ordering::Release);
                    if i.is_multiple_of(20) {
                        std::thread::sleep(StdDuration::from_micros(200));
                    }
                }
                i
            }
        });
        let deadline = Instant::now() + StdDuration::from_secs(10);
        while written.load(std::sync::atomic::Ordering::Acquire) < 500 {
            assert!(Instant::now() < deadline, "the writer does not write");
            tokio::time::sleep(StdDuration::from_millis(1)).await;
        }
        let mut follower = logs.follow(None, None).await.unwrap();
        let from_files = follower.pending.len();
        async fn next(follower: &mut LogFollower) -> usize {
            tokio::time::timeout(StdDuration::from_secs(10), follower.next())
                .await
                .expect("no line within 10 s")
                .unwrap()
                .line
                .parse()
                .unwrap()
        }
        let mut numbers = Vec::new();
        while numbers.len() < from_files + 500 {
            numbers.push(next(&mut follower).await);
        }
        stop.store(true, std::sync::atomic::Ordering::Release);
        let total = writer.join().unwrap();
        while numbers.len() < total {
            numbers.push(next(&mut follower).await);
        }
        assert!(follower.next().now_or_never().is_none(), "nothing extra");
        assert!(from_files >= 500, "{from_files}");
        assert_eq!(numbers, (0..total).collect::<Vec<_>>());
    }

    /// A follower that falls further behind than the live buffer reads the missed lines
    /// back from the files.
    #[tokio::test]
    async fn a_follower_that_falls_behind_catches_up_from_the_files() {
        let dir = tempfile::tempdir().unwrap();
        let logs = registry(dir.path(), 1 << 20, 1).workload("web");
        logs.write(LogStream::Stdout, b"first\n");
        let mut follower = logs.follow(None, None).await.unwrap();
        assert_eq!(follower.next().await.unwrap().line, "first");
        let n = FOLLOW_BUFFER_LINES * 3;
        for i in 0..n {
            logs.write(LogStream::Stdout, format!("{i}\n").as_bytes());
        }
        for i in 0..n {
            let line = tokio::time::timeout(StdDuration::from_secs(5), follower.next())
                .await
                .unwrap()
                .unwrap();
            assert_eq!(line.line, i.to_string());
        }
        assert!(follower.next().now_or_never().is_none());
    }

    #[tokio::test]
    async fn follow_since_skips_older_new_lines() {
        let dir = tempfile::tempdir().unwrap();
        let logs = registry(dir.path(), 1 << 20, 1).workload("web");
        let future = truncate_to_micros(now() + Duration::hours(1));
        let mut follower = logs.follow(Some(future), None).await.unwrap();
        logs.write(LogStream::Stdout, b"too early\n");
        logs.write_line(LogStream::Stdout, future, b"in time");
        let line = tokio::time::timeout(StdDuration::from_secs(5), follower.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(line.line, "in time");
    }

    use futures_util::FutureExt;
}
