//! The outbox: a durable, bounded, on-disk queue of records per stream (metric sets,
//! application records), kept until the server stored them.
//!
//! A record is accepted (`append` returns its `seq`) only once it is on disk and flushed:
//! a `kill -9` or a power loss at any instant afterwards loses nothing accepted. Records of
//! a stream get `seq` 1, 2, 3, ... in order, across restarts; a `seq` that was ever handed
//! out is never handed out again (see the telemetry module of the wire crate for why the
//! server relies on it). The core is blocking, thread-safe file IO without tokio; the
//! `uploader` drives it from async code through `spawn_blocking`.
//!
//! # Layout (`<data-dir>/outbox`)
//!
//! - `state.json`: the outbox id, the stream policies, each stream's cursor (`floor`:
//!   every `seq` up to it is gone, delivered or dropped; `acked`: the highest `seq` the
//!   server stored) and the drop totals. Replaced atomically (temporary file, fsync,
//!   rename, fsync of the directory), always as a whole, so cursors and totals agree.
//! - `streams/<stream>/<first seq, 20 digits>.seg`: segment files of append-only frames
//!   `[len u32][crc32 u32][seq u64][time i64][kind u8][payload]` (see `frame`). A stream
//!   appends to its newest segment and starts a new one past `segment_bytes`.
//! - `lock`: held with `flock` while the outbox is open: one process at a time.
//! - `reserve`: 64 KiB of zeroes, given up when the disk is so full that `state.json`
//!   cannot be written, so that acknowledging (which frees space) still works.
//!
//! # Durability
//!
//! Frames are written with one `pwrite` per append (or per `append_many`) under the lock,
//! then flushed by group commit: one appender at a time leads, flushing (`fdatasync`) every
//! segment written since the last flush (and the directories of new segments) while the
//! others wait for it and share it; an appender returns once a flush that began after
//! its write ended. The uploader reads only flushed frames, so the server never learns a
//! `seq` that a power loss could take back.
//!
//! A segment is deleted only after a `state.json` whose floor covers it is on disk: the
//! highest `seq` of a stream is always in its newest segment or in its cursor, which is
//! what numbering continues from on open.
//!
//! # Recovery (on `open`)
//!
//! Every segment is read and every frame's checksum verified. Damage running to the end
//! of a segment (a torn write) is truncated away; damage followed by valid frames (bit
//! rot, a tampered file) costs the frames in it, which are counted as lost, and the
//! segment is rewritten without it. Both are reported in `Recovery`, never accepted
//! silently. An unreadable or missing `state.json` next to segments gives the outbox a
//! new id (the records still there are sent again under it) and is reported too.
//!
//! # Bound and drops
//!
//! Segment files take at most `max_bytes` together. When an append would pass it, whole
//! segments go, oldest first, from the stream of the lowest priority (between equal
//! priorities, the one whose oldest record is older): see `policy::plan_room`. The stream
//! appended to loses records only when no stream of lower priority holds any. Records
//! older than their stream's time to live are dropped on append (when the oldest waiting
//! record is past it), by `expire` (the uploader calls it before each batch), and on open
//! (through the first append). Expiry goes record by record from the oldest, stopping at
//! the first record still within its time to live (a clock stepped back can leave a
//! later, older-stamped record for a while). Every drop is added to the totals per stream
//! and reason, cumulative since the outbox was created, persisted with the cursors.
//! Expiries that delete no segment are written with the next state change (a crash
//! before it undoes the expiry and its count together, and they happen again).
//!
//! A record dropped while a batch holding it is on its way to the server may be both
//! stored by the server and counted as dropped.
//!
//! # Disk full
//!
//! `ENOSPC`/`EDQUOT` while appending gives `OutboxError::DiskFull`: the partial frame is cut
//! off again, the record is not accepted, and everything accepted before stays readable.
//! Appends work again once space is freed. A failed flush fails the appends waiting for it
//! (those records may still be delivered: an error means "maybe stored", never "stored").

mod frame;
mod policy;
mod reader;
mod recover;
mod state;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::ops::Range;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

use edgefleet_wire::Timestamp;
use edgefleet_wire::telemetry::{DropCount, DropReason};
use nix::fcntl::{Flock, FlockArg};
use tokio::sync::Notify;
use tracing::{error, warn};

use crate::fsutil::{self, FsError};
use frame::{HEADER_BYTES, Header, MAX_PAYLOAD_BYTES};
use reader::{FrameReader, ReadError};
use state::{Cursor, DropTotals, StateFile};

pub use frame::RecordKind;
pub use policy::{MAX_PRIORITY, STREAM_NAME_MAX, StreamPolicy, stream_name_problem};

/// The default bound of the segment files together.
pub const DEFAULT_MAX_BYTES: u64 = 256 << 20;
/// The smallest bound accepted.
pub const MIN_MAX_BYTES: u64 = 16 << 10;
/// The default size at which a stream starts a new segment.
pub const DEFAULT_SEGMENT_BYTES: u64 = 1 << 20;
/// The default largest payload of one record.
pub const DEFAULT_MAX_RECORD_BYTES: u64 = 1 << 20;
/// The state file, in the outbox directory.
pub const STATE_FILE: &str = "state.json";
/// The directory of the streams' segments, in the outbox directory.
pub const STREAMS_DIR: &str = "streams";
const LOCK_FILE: &str = "lock";
const RESERVE_FILE: &str = "reserve";
const RESERVE_BYTES: usize = 64 << 10;
const SEGMENT_SUFFIX: &str = ".seg";

/// How the outbox is bounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboxConfig {
    /// The most bytes the segment files take together.
    pub max_bytes: u64,
    /// A stream starts a new segment once its newest reaches this size. Capped at a
    /// sixteenth of `max_bytes`, so that making room never drops more than that at once.
    pub segment_bytes: u64,
    /// The largest payload of one record (capped by `max_bytes`).
    pub max_record_bytes: u64,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        Self {
            max_bytes: DEFAULT_MAX_BYTES,
            segment_bytes: DEFAULT_SEGMENT_BYTES,
            max_record_bytes: DEFAULT_MAX_RECORD_BYTES,
        }
    }
}

impl OutboxConfig {
    fn validated(self) -> Result<Self, OutboxError> {
        if self.max_bytes < MIN_MAX_BYTES {
            return Err(OutboxError::Config(format!(
                "the outbox bound must be at least {MIN_MAX_BYTES} bytes, got {}",
                self.max_bytes
            )));
        }
        if self.segment_bytes == 0 || self.max_record_bytes == 0 {
            return Err(OutboxError::Config(
                "the segment size and the record size limit must be above zero".to_owned(),
            ));
        }
        Ok(Self {
            max_bytes: self.max_bytes,
            segment_bytes: self.segment_bytes.min(self.max_bytes / 16),
            max_record_bytes: self
                .max_record_bytes
                .min(self.max_bytes - HEADER_BYTES as u64)
                .min(MAX_PAYLOAD_BYTES),
        })
    }
}

/// Why an outbox operation failed. Every variant names the stream or file concerned.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("invalid outbox configuration: {0}")]
    Config(String),
    #[error("invalid stream name {stream:?}: {reason}")]
    InvalidStream { stream: String, reason: String },
    #[error("invalid policy for stream {stream}: {reason}")]
    InvalidPolicy { stream: String, reason: String },
    #[error(
        "a record of {bytes} bytes for stream {stream} is larger than the outbox takes ({limit} bytes at most)"
    )]
    RecordTooLarge {
        stream: String,
        bytes: u64,
        limit: u64,
    },
    #[error(
        "a batch of {records} records for stream {stream} takes {bytes} bytes, more than the whole outbox ({limit} bytes)"
    )]
    BatchTooLarge {
        stream: String,
        records: usize,
        bytes: u64,
        limit: u64,
    },
    #[error("record {index} for stream {stream} is marked JSON but is not: {reason}")]
    InvalidJson {
        stream: String,
        index: usize,
        reason: String,
    },
    #[error(
        "no space left on the file system of {}: {action} failed ({source}); the outbox keeps every record it accepted and takes new ones once space is freed",
        path.display()
    )]
    DiskFull {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the outbox in {} is open in another process", path.display())]
    Locked { path: PathBuf },
}

impl OutboxError {
    fn io(action: &'static str, path: &Path, source: io::Error) -> Self {
        if is_disk_full(&source) {
            Self::DiskFull {
                action,
                path: path.to_owned(),
                source,
            }
        } else {
            Self::Io {
                action,
                path: path.to_owned(),
                source,
            }
        }
    }

    /// The file system is full (or the quota used up).
    pub fn is_disk_full(&self) -> bool {
        matches!(self, Self::DiskFull { .. })
    }
}

impl From<FsError> for OutboxError {
    fn from(error: FsError) -> Self {
        Self::io(error.action, &error.path, error.source)
    }
}

fn is_disk_full(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(code) if code == nix::libc::ENOSPC || code == nix::libc::EDQUOT
    )
}

/// A record waiting to be sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    pub seq: u64,
    /// When the outbox accepted it (unix milliseconds).
    pub time_ms: i64,
    pub kind: RecordKind,
    pub payload: Vec<u8>,
}

impl Pending {
    /// When the outbox accepted it.
    pub fn time(&self) -> Timestamp {
        from_unix_ms(self.time_ms)
    }
}

/// Damage found in a segment when the outbox was opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    pub path: PathBuf,
    pub offset: u64,
    pub bytes: u64,
    pub reason: &'static str,
    /// The `seq`s lost in it, when the frames around it tell.
    pub lost_seqs: Option<(u64, u64)>,
}

/// What `open` found and repaired.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovery {
    /// The outbox directory was new (or had neither state nor records).
    pub created: bool,
    pub streams: usize,
    pub segments: usize,
    pub pending_records: u64,
    /// Torn last frames, cut off (each the write a crash interrupted).
    pub torn_tails: Vec<Damage>,
    /// Damage in the middle of segments, cut out; the records in it are lost.
    pub corrupt: Vec<Damage>,
    /// Records known lost to `corrupt` (from the `seq`s around the damage).
    pub lost_records: u64,
    /// Anything else worth a warning, one sentence each.
    pub problems: Vec<String>,
}

impl Recovery {
    /// Nothing was damaged or odd.
    pub fn is_clean(&self) -> bool {
        self.torn_tails.is_empty() && self.corrupt.is_empty() && self.problems.is_empty()
    }

    /// One sentence per finding, for the log.
    pub fn messages(&self) -> Vec<String> {
        let describe = |what: &str, damage: &Damage| {
            let lost = damage
                .lost_seqs
                .map(|(first, last)| format!(", seq {first} to {last} lost"))
                .unwrap_or_default();
            format!(
                "{what} in {} at offset {} ({} bytes, {}{lost})",
                damage.path.display(),
                damage.offset,
                damage.bytes,
                damage.reason
            )
        };
        let torn = self
            .torn_tails
            .iter()
            .map(|d| describe("cut off a torn last record", d));
        let corrupt = self
            .corrupt
            .iter()
            .map(|d| describe("cut out corrupt records", d));
        torn.chain(corrupt)
            .chain(self.problems.iter().cloned())
            .collect()
    }
}

/// Counters and sizes, for metrics and the benchmark.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutboxStats {
    /// Bytes the segment files take.
    pub disk_bytes: u64,
    pub max_bytes: u64,
    pub pending_records: u64,
    /// Payload bytes of the pending records.
    pub pending_bytes: u64,
    pub streams: usize,
    pub segments: usize,
    /// Appends (`append` or `append_many` calls) since the outbox was opened.
    pub appends: u64,
    /// Group commits (flushes) since the outbox was opened.
    pub commits: u64,
    /// Records lost to damage since the outbox was opened (not in the drop totals).
    pub lost_records: u64,
}

/// The durable outbox of one data directory. Shared (`Arc`) by the producers and the
/// uploader; every method blocks on file IO and is safe to call from several threads.
#[derive(Debug)]
pub struct Outbox {
    dir: PathBuf,
    streams_dir: PathBuf,
    state_path: PathBuf,
    reserve_path: PathBuf,
    config: OutboxConfig,
    id: String,
    inner: Mutex<Inner>,
    /// Wakes appenders waiting for a group commit.
    committed: Condvar,
    appended: Notify,
    _lock: Flock<File>,
}

#[derive(Debug)]
struct Inner {
    streams: BTreeMap<String, Stream>,
    /// Policies set with `set_policy`.
    policies: BTreeMap<String, StreamPolicy>,
    dropped: DropTotals,
    disk_bytes: u64,
    /// The cursors or totals in memory are ahead of `state.json`.
    state_dirty: bool,
    reserve_present: bool,
    commit: Commit,
    next_segment_id: u64,
    appends: u64,
    lost_records: u64,
}

#[derive(Debug, Clone)]
struct Stream {
    dir: PathBuf,
    /// Oldest first; each holds at least one record above the floor.
    segments: VecDeque<Segment>,
    next_seq: u64,
    cursor: Cursor,
    /// Where reading starts in the front segment.
    read: ReadPos,
    /// Open on the newest segment; `None`: the next append starts a new segment.
    writer: Option<Arc<File>>,
}

#[derive(Debug, Clone)]
struct Segment {
    id: u64,
    path: PathBuf,
    first_seq: u64,
    last_seq: u64,
    records: u64,
    payload_bytes: u64,
    /// Bytes of whole frames written.
    file_bytes: u64,
    /// Bytes known flushed: readers stop here.
    synced_bytes: u64,
    first_ms: i64,
    max_ms: i64,
}

/// The first record above the floor in the front segment, and what is before it.
#[derive(Debug, Clone, Copy, Default)]
struct ReadPos {
    offset: u64,
    records: u64,
    payload_bytes: u64,
    /// When the record at `offset` was accepted.
    oldest_ms: i64,
}

impl ReadPos {
    fn start_of(segment: Option<&Segment>) -> Self {
        Self {
            oldest_ms: segment.map_or(0, |s| s.first_ms),
            ..Self::default()
        }
    }
}

impl Stream {
    fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            segments: VecDeque::new(),
            next_seq: 1,
            cursor: Cursor::default(),
            read: ReadPos::default(),
            writer: None,
        }
    }

    fn pending(&self) -> (u64, u64) {
        let (records, bytes) = self.segments.iter().fold((0u64, 0u64), |(r, b), s| {
            (r + s.records, b + s.payload_bytes)
        });
        if self.segments.is_empty() {
            return (0, 0);
        }
        (
            records.saturating_sub(self.read.records),
            bytes.saturating_sub(self.read.payload_bytes),
        )
    }

    fn oldest_ms(&self) -> Option<i64> {
        (!self.segments.is_empty()).then_some(self.read.oldest_ms)
    }

    /// Removes the front segment (everything in it is gone) and returns it and the
    /// records and payload bytes of it that were still waiting.
    fn pop_front(&mut self) -> Option<(Segment, u64, u64)> {
        let front = self.segments.pop_front()?;
        let records = front.records.saturating_sub(self.read.records);
        let bytes = front.payload_bytes.saturating_sub(self.read.payload_bytes);
        self.cursor.floor = self.cursor.floor.max(front.last_seq);
        if self.segments.is_empty() {
            self.writer = None;
        }
        self.read = ReadPos::start_of(self.segments.front());
        Some((front, records, bytes))
    }

    fn find_segment(&mut self, id: u64) -> Option<&mut Segment> {
        self.segments.iter_mut().rev().find(|s| s.id == id)
    }
}

/// What moving a cursor consumed.
#[derive(Debug, Default)]
struct Consumed {
    records: u64,
    bytes: u64,
    removed: Vec<Segment>,
}

#[derive(Debug, Default)]
struct Commit {
    /// Writes so far (a generation number).
    written: u64,
    /// Writes known flushed.
    synced: u64,
    leader: bool,
    dirty: Vec<Dirty>,
    dirty_dirs: Vec<PathBuf>,
    failed: Option<FailedCommit>,
    commits: u64,
}

#[derive(Debug, Clone)]
struct Dirty {
    stream: String,
    segment: u64,
    file: Arc<File>,
    path: PathBuf,
    upto: u64,
}

#[derive(Debug, Clone)]
struct FailedCommit {
    through: u64,
    action: &'static str,
    path: PathBuf,
    kind: io::ErrorKind,
    code: Option<i32>,
    message: String,
}

impl FailedCommit {
    fn error(&self) -> OutboxError {
        let source = match self.code {
            Some(code) => io::Error::from_raw_os_error(code),
            None => io::Error::new(self.kind, self.message.clone()),
        };
        OutboxError::io(self.action, &self.path, source)
    }
}

/// A copy of what a cursor move may change, to undo it if `state.json` cannot be written.
struct Undo {
    streams: Vec<(String, Stream)>,
    dropped: DropTotals,
    disk_bytes: u64,
    state_dirty: bool,
    lost_records: u64,
}

impl Inner {
    fn undo_point(&self, names: &[&str]) -> Undo {
        Undo {
            streams: names
                .iter()
                .filter_map(|n| Some(((*n).to_owned(), self.streams.get(*n)?.clone())))
                .collect(),
            dropped: self.dropped.clone(),
            disk_bytes: self.disk_bytes,
            state_dirty: self.state_dirty,
            lost_records: self.lost_records,
        }
    }

    fn undo(&mut self, undo: Undo) {
        for (name, stream) in undo.streams {
            self.streams.insert(name, stream);
        }
        self.dropped = undo.dropped;
        self.disk_bytes = undo.disk_bytes;
        self.state_dirty = undo.state_dirty;
        self.lost_records = undo.lost_records;
    }

    fn policy(&self, stream: &str) -> StreamPolicy {
        self.policies
            .get(stream)
            .copied()
            .unwrap_or_else(|| StreamPolicy::built_in(stream))
    }

    fn count_drop(&mut self, stream: &str, reason: DropReason, records: u64, bytes: u64) {
        if records == 0 {
            return;
        }
        let entry = self.dropped.entry((stream.to_owned(), reason)).or_default();
        entry.0 = entry.0.saturating_add(records);
        entry.1 = entry.1.saturating_add(bytes);
    }

    fn state_file(&self, id: &str) -> StateFile {
        let mut state = StateFile::new(id.to_owned());
        state.policies = self
            .policies
            .iter()
            .map(|(name, policy)| (name.clone(), (*policy).into()))
            .collect();
        state.streams = self
            .streams
            .iter()
            .filter(|(_, s)| s.cursor != Cursor::default())
            .map(|(name, s)| (name.clone(), s.cursor))
            .collect();
        state.dropped = state::totals_to_list(&self.dropped);
        state
    }
}

/// Unix milliseconds of `time`, saturating.
pub fn unix_ms(time: Timestamp) -> i64 {
    let ms = time.unix_timestamp_nanos() / 1_000_000;
    i64::try_from(ms).unwrap_or(if ms < 0 { i64::MIN } else { i64::MAX })
}

/// The time of `ms` unix milliseconds (clamped to what `Timestamp` holds).
pub fn from_unix_ms(ms: i64) -> Timestamp {
    Timestamp::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(Timestamp::UNIX_EPOCH)
}

fn segment_name(first_seq: u64) -> String {
    format!("{first_seq:020}{SEGMENT_SUFFIX}")
}

fn new_id() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

impl Outbox {
    /// Opens (or creates) the outbox in `dir`, repairing what a crash left (see the module
    /// docs). Errors are the directory being unusable or held by another process.
    pub fn open(dir: &Path, config: OutboxConfig) -> Result<(Self, Recovery), OutboxError> {
        let config = config.validated()?;
        let streams_dir = dir.join(STREAMS_DIR);
        create_dir_durably(dir)?;
        create_dir_durably(&streams_dir)?;
        let lock_path = dir.join(LOCK_FILE);
        let lock_file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(fsutil::PUBLIC)
            .open(&lock_path)
            .map_err(|e| OutboxError::io("opening", &lock_path, e))?;
        let lock =
            Flock::lock(lock_file, FlockArg::LockExclusiveNonblock).map_err(|(_, errno)| {
                match errno {
                    nix::errno::Errno::EWOULDBLOCK => OutboxError::Locked {
                        path: dir.to_owned(),
                    },
                    other => OutboxError::io("locking", &lock_path, io::Error::from(other)),
                }
            })?;
        let state_path = dir.join(STATE_FILE);
        let mut recovery = Recovery::default();
        let state = recover::read_state(&state_path, &mut recovery)?;
        let mut inner = Inner {
            streams: BTreeMap::new(),
            policies: BTreeMap::new(),
            dropped: DropTotals::new(),
            disk_bytes: 0,
            state_dirty: false,
            reserve_present: false,
            commit: Commit::default(),
            next_segment_id: 1,
            appends: 0,
            lost_records: 0,
        };
        if let Some(state) = &state {
            inner.policies = state
                .policies
                .iter()
                .map(|(name, entry)| (name.clone(), (*entry).into()))
                .collect();
            inner.dropped = state::totals_from(&state.dropped);
            for (name, cursor) in &state.streams {
                let mut stream = Stream::new(streams_dir.join(name));
                stream.cursor = *cursor;
                stream.next_seq = cursor.floor.max(cursor.acked).saturating_add(1);
                inner.streams.insert(name.clone(), stream);
            }
        }
        recover::load_streams(&streams_dir, &config, &mut inner, &mut recovery)?;
        let has_records = inner.streams.values().any(|s| !s.segments.is_empty());
        let id = match &state {
            Some(state) => state.id.clone(),
            None => {
                if has_records {
                    recovery.problems.push(format!(
                        "{} is missing or unreadable next to stored records: the outbox gets a new id and sends them again",
                        state_path.display()
                    ));
                } else {
                    recovery.created = true;
                }
                inner.state_dirty = true;
                new_id()
            }
        };
        inner.disk_bytes = inner
            .streams
            .values()
            .flat_map(|s| &s.segments)
            .map(|s| s.file_bytes)
            .sum();
        let reserve_path = dir.join(RESERVE_FILE);
        inner.reserve_present = reserve_path.exists();
        let outbox = Self {
            dir: dir.to_owned(),
            streams_dir,
            state_path,
            reserve_path,
            config,
            id,
            inner: Mutex::new(inner),
            committed: Condvar::new(),
            appended: Notify::new(),
            _lock: lock,
        };
        {
            let mut inner = outbox.lock();
            // The bound may have been lowered since the records were written.
            outbox.make_room(&mut inner, "", 0)?;
            if inner.state_dirty {
                outbox.persist(&mut inner)?;
            }
            if !outbox.restore_reserve(&mut inner) {
                recovery.problems.push(format!(
                    "no room for the outbox's {RESERVE_BYTES}-byte reserve in {}; acknowledging on a full disk may fail",
                    outbox.dir.display()
                ));
            }
            recovery.streams = inner
                .streams
                .values()
                .filter(|s| !s.segments.is_empty())
                .count();
            recovery.segments = inner.streams.values().map(|s| s.segments.len()).sum();
            recovery.pending_records = inner.streams.values().map(|s| s.pending().0).sum();
            inner.lost_records = recovery.lost_records;
        }
        Ok((outbox, recovery))
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every change to `Inner` is complete before anything that could panic.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The outbox id: random, made when the outbox was created.
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The configuration in effect (the segment size and record limit capped).
    pub fn config(&self) -> OutboxConfig {
        self.config
    }

    /// Resolves when records were appended since the last call (or are appended now).
    pub async fn appended(&self) {
        self.appended.notified().await;
    }

    /// The notification `appended` waits on, for callers with their own loop.
    pub fn notify(&self) -> &Notify {
        &self.appended
    }

    /// Sets `stream`'s policy and persists it (nothing is written when it is unchanged).
    pub fn set_policy(&self, stream: &str, policy: StreamPolicy) -> Result<(), OutboxError> {
        check_stream(stream)?;
        if let Some(reason) = policy.problem() {
            return Err(OutboxError::InvalidPolicy {
                stream: stream.to_owned(),
                reason,
            });
        }
        let mut inner = self.lock();
        if inner.policies.get(stream) == Some(&policy) {
            return Ok(());
        }
        let previous = inner.policies.insert(stream.to_owned(), policy);
        if let Err(error) = self.persist(&mut inner) {
            match previous {
                Some(previous) => inner.policies.insert(stream.to_owned(), previous),
                None => inner.policies.remove(stream),
            };
            return Err(error);
        }
        Ok(())
    }

    /// `stream`'s policy: the one set, or the built-in one.
    pub fn policy(&self, stream: &str) -> StreamPolicy {
        self.lock().policy(stream)
    }

    /// Appends one record and returns its `seq` once it is durable.
    pub fn append(
        &self,
        stream: &str,
        kind: RecordKind,
        payload: &[u8],
        now: Timestamp,
    ) -> Result<u64, OutboxError> {
        let seqs = self.append_many(stream, &[(kind, payload)], now)?;
        Ok(seqs.start)
    }

    /// Appends records to one stream with one write and one flush, and returns their
    /// `seq`s once all are durable. All or none are accepted.
    pub fn append_many<P: AsRef<[u8]>>(
        &self,
        stream: &str,
        records: &[(RecordKind, P)],
        now: Timestamp,
    ) -> Result<Range<u64>, OutboxError> {
        check_stream(stream)?;
        let mut total = 0u64;
        for (index, (kind, payload)) in records.iter().enumerate() {
            let payload = payload.as_ref();
            self.check_record(stream, index, *kind, payload)?;
            total += frame::frame_bytes(payload.len());
        }
        if total > self.config.max_bytes {
            return Err(OutboxError::BatchTooLarge {
                stream: stream.to_owned(),
                records: records.len(),
                bytes: total,
                limit: self.config.max_bytes,
            });
        }
        let now_ms = unix_ms(now);
        let mut inner = self.lock();
        if records.is_empty() {
            let next = inner.streams.get(stream).map_or(1, |s| s.next_seq);
            return Ok(next..next);
        }
        if let Err(error) = self.expire_due(&mut inner, now_ms) {
            warn!(%error, "cannot drop expired outbox records");
        }
        self.make_room(&mut inner, stream, total)?;
        let seqs = self.write_frames(&mut inner, stream, records, total, now_ms)?;
        inner.appends += 1;
        inner.commit.written += 1;
        let generation = inner.commit.written;
        self.wait_durable(inner, generation)?;
        self.appended.notify_one();
        Ok(seqs)
    }

    fn check_record(
        &self,
        stream: &str,
        index: usize,
        kind: RecordKind,
        payload: &[u8],
    ) -> Result<(), OutboxError> {
        if payload.len() as u64 > self.config.max_record_bytes {
            return Err(OutboxError::RecordTooLarge {
                stream: stream.to_owned(),
                bytes: payload.len() as u64,
                limit: self.config.max_record_bytes,
            });
        }
        if kind == RecordKind::Json
            && let Err(error) = serde_json::from_slice::<serde::de::IgnoredAny>(payload)
        {
            return Err(OutboxError::InvalidJson {
                stream: stream.to_owned(),
                index,
                reason: error.to_string(),
            });
        }
        Ok(())
    }

    /// Writes the frames of `records` to `stream`'s newest segment (starting one if
    /// needed) and records them as written, not yet flushed.
    fn write_frames<P: AsRef<[u8]>>(
        &self,
        inner: &mut Inner,
        stream_name: &str,
        records: &[(RecordKind, P)],
        total: u64,
        now_ms: i64,
    ) -> Result<Range<u64>, OutboxError> {
        let segment_bytes = self.config.segment_bytes;
        let stream = inner
            .streams
            .entry(stream_name.to_owned())
            .or_insert_with(|| Stream::new(self.streams_dir.join(stream_name)));
        let first_seq = stream.next_seq;
        let roll = match (stream.segments.back(), &stream.writer) {
            (Some(back), Some(_)) => back.file_bytes > 0 && back.file_bytes + total > segment_bytes,
            _ => true,
        };
        let mut new_dir = None;
        if roll {
            let (segment, file, created_dir) =
                create_segment(stream, first_seq, now_ms, inner.next_segment_id)?;
            inner.next_segment_id += 1;
            stream.segments.push_back(segment);
            if stream.segments.len() == 1 {
                stream.read = ReadPos::start_of(stream.segments.front());
            }
            stream.writer = Some(Arc::new(file));
            new_dir = Some(stream.dir.clone());
            if created_dir {
                inner.commit.dirty_dirs.push(self.streams_dir.clone());
            }
        }
        let (Some(segment), Some(file)) = (stream.segments.back_mut(), stream.writer.clone())
        else {
            // `roll` made both when either was missing.
            return Err(OutboxError::Io {
                action: "finding the segment to append to for",
                path: stream.dir.clone(),
                source: io::Error::other("no open segment"),
            });
        };
        let mut buffer = Vec::with_capacity(total as usize);
        let mut seq = first_seq;
        let mut payload_bytes = 0u64;
        for (kind, payload) in records {
            let payload = payload.as_ref();
            frame::encode(&mut buffer, seq, now_ms, *kind, payload);
            payload_bytes += payload.len() as u64;
            seq += 1;
        }
        let offset = segment.file_bytes;
        if let Err(source) = file.write_all_at(&buffer, offset) {
            let path = segment.path.clone();
            // Cut the partial frame off again, so that the file holds whole frames only.
            let cut = file.set_len(offset);
            if offset == 0 {
                // A segment that never held a record is not worth keeping.
                let _ = fs::remove_file(&path);
                stream.segments.pop_back();
                stream.writer = None;
                if stream.segments.is_empty() {
                    stream.read = ReadPos::default();
                }
            } else if let Err(cut_error) = cut {
                // The torn tail stays until the next open cuts it; no frame goes after it.
                warn!(path = %path.display(), error = %cut_error, "cannot cut a partly written record off an outbox segment");
                stream.writer = None;
            }
            return Err(OutboxError::io("appending to", &path, source));
        }
        if segment.records == 0 {
            segment.first_seq = first_seq;
            segment.first_ms = now_ms;
            segment.max_ms = now_ms;
        }
        segment.last_seq = seq - 1;
        segment.records += records.len() as u64;
        segment.payload_bytes += payload_bytes;
        segment.file_bytes += total;
        segment.max_ms = segment.max_ms.max(now_ms);
        let dirty = Dirty {
            stream: stream_name.to_owned(),
            segment: segment.id,
            file,
            path: segment.path.clone(),
            upto: segment.file_bytes,
        };
        stream.next_seq = seq;
        inner.disk_bytes += total;
        inner.commit.dirty.push(dirty);
        inner.commit.dirty_dirs.extend(new_dir);
        Ok(first_seq..seq)
    }

    /// Waits until every write up to `generation` is flushed, leading the flush when no
    /// other appender is (group commit).
    fn wait_durable<'a>(
        &'a self,
        mut inner: MutexGuard<'a, Inner>,
        generation: u64,
    ) -> Result<(), OutboxError> {
        loop {
            if inner.commit.synced >= generation {
                return Ok(());
            }
            if let Some(failed) = &inner.commit.failed
                && failed.through >= generation
            {
                return Err(failed.error());
            }
            if inner.commit.leader {
                inner = self
                    .committed
                    .wait(inner)
                    .unwrap_or_else(PoisonError::into_inner);
                continue;
            }
            inner.commit.leader = true;
            let target = inner.commit.written;
            let dirty = dedup_dirty(std::mem::take(&mut inner.commit.dirty));
            let dirs = std::mem::take(&mut inner.commit.dirty_dirs);
            drop(inner);
            let result = flush(&dirty, &dirs);
            inner = self.lock();
            inner.commit.leader = false;
            inner.commit.commits += 1;
            match result {
                Ok(()) => {
                    inner.commit.synced = inner.commit.synced.max(target);
                    inner.commit.failed = None;
                    for entry in &dirty {
                        if let Some(segment) = inner
                            .streams
                            .get_mut(&entry.stream)
                            .and_then(|s| s.find_segment(entry.segment))
                        {
                            segment.synced_bytes = segment.synced_bytes.max(entry.upto);
                        }
                    }
                }
                Err(failed) => {
                    error!(path = %failed.path.display(), error = %failed.message, "cannot flush the outbox");
                    // Flushed again with the next commit; no more frames go to them.
                    for entry in &dirty {
                        if let Some(stream) = inner.streams.get_mut(&entry.stream)
                            && stream
                                .segments
                                .back()
                                .is_some_and(|s| s.id == entry.segment)
                        {
                            stream.writer = None;
                        }
                    }
                    inner.commit.dirty.extend(dirty);
                    inner.commit.dirty_dirs.extend(dirs);
                    inner.commit.failed = Some(FailedCommit {
                        through: target,
                        ..failed
                    });
                }
            }
            self.committed.notify_all();
        }
    }

    /// Flushes everything written so far (a no-op when nothing is waiting).
    pub fn flush(&self) -> Result<(), OutboxError> {
        let inner = self.lock();
        let generation = inner.commit.written;
        if inner.commit.dirty.is_empty() && inner.commit.synced >= generation {
            return Ok(());
        }
        self.wait_durable(inner, generation)
    }

    /// Up to `max_records` records of `stream` waiting to be sent, oldest first, with at
    /// most `max_bytes` of payload (but at least one record when any waits). Only flushed
    /// records are returned. A record whose checksum fails now (damage since `open`) is
    /// logged and, once it is the oldest, dropped with the rest of its segment as lost.
    pub fn peek(
        &self,
        stream_name: &str,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<Pending>, OutboxError> {
        let mut inner = self.lock();
        loop {
            let Some(stream) = inner.streams.get(stream_name) else {
                return Ok(Vec::new());
            };
            match read_pending(stream, max_records, max_bytes) {
                Ok(records) => return Ok(records),
                Err(ReadFailure::Damaged {
                    path,
                    offset,
                    reason,
                }) => {
                    error!(path = %path.display(), offset, reason, stream = stream_name, "an outbox segment is damaged; dropping the rest of it as lost");
                    self.lose_front_segment(&mut inner, stream_name)?;
                }
                Err(ReadFailure::Partial {
                    records,
                    path,
                    offset,
                    reason,
                }) => {
                    // Sent first; the damage is handled once it is the oldest.
                    error!(path = %path.display(), offset, reason, stream = stream_name, "an outbox segment is damaged after the records read");
                    return Ok(records);
                }
                Err(ReadFailure::Io { path, source }) => {
                    return Err(OutboxError::io("reading", &path, source));
                }
            }
        }
    }

    fn lose_front_segment(&self, inner: &mut Inner, stream_name: &str) -> Result<(), OutboxError> {
        let undo = inner.undo_point(&[stream_name]);
        let Some(stream) = inner.streams.get_mut(stream_name) else {
            return Ok(());
        };
        let Some((segment, records, _)) = stream.pop_front() else {
            return Ok(());
        };
        inner.disk_bytes = inner.disk_bytes.saturating_sub(segment.file_bytes);
        inner.lost_records += records;
        self.commit_removal(inner, undo, vec![segment])
    }

    /// Streams with records waiting, the highest priority first (then by name).
    pub fn streams_with_pending(&self) -> Vec<String> {
        let inner = self.lock();
        let mut streams: Vec<(u8, &String)> = inner
            .streams
            .iter()
            .filter(|(_, s)| !s.segments.is_empty())
            .map(|(name, _)| (inner.policy(name).priority, name))
            .collect();
        streams.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(b.1)));
        streams.into_iter().map(|(_, name)| name.clone()).collect()
    }

    /// The server stored `stream` through `through_seq`: moves the cursor, persists it,
    /// and deletes the segments now wholly stored. An old or repeated answer changes
    /// nothing. Blocking (fsync).
    pub fn ack(&self, stream_name: &str, through_seq: u64) -> Result<(), OutboxError> {
        check_stream(stream_name)?;
        let mut inner = self.lock();
        let undo = inner.undo_point(&[stream_name]);
        let Some(stream) = inner.streams.get_mut(stream_name) else {
            return Ok(());
        };
        if through_seq <= stream.cursor.acked && through_seq <= stream.cursor.floor {
            return Ok(());
        }
        stream.cursor.acked = stream.cursor.acked.max(through_seq);
        let consumed = advance(
            stream,
            |segment| segment.last_seq <= through_seq,
            |header| header.seq > through_seq,
        );
        let consumed = match consumed {
            Ok(consumed) => consumed,
            Err(error) => {
                inner.undo(undo);
                return Err(error);
            }
        };
        stream.cursor.floor = stream.cursor.floor.max(through_seq);
        if through_seq >= stream.next_seq {
            // The server knows `seq`s this outbox never handed out. Numbering on from
            // below them would make the server ignore new records as repeats.
            warn!(
                stream = stream_name,
                through_seq,
                next_seq = stream.next_seq,
                "the server stored records this outbox never had; numbering new records after them"
            );
            stream.next_seq = through_seq.saturating_add(1);
        }
        let freed: u64 = consumed.removed.iter().map(|s| s.file_bytes).sum();
        inner.disk_bytes = inner.disk_bytes.saturating_sub(freed);
        self.commit_removal(&mut inner, undo, consumed.removed)?;
        self.restore_reserve(&mut inner);
        Ok(())
    }

    /// Drops the records older than their stream's time to live at `now`, and persists
    /// the drop totals.
    pub fn expire(&self, now: Timestamp) -> Result<(), OutboxError> {
        let mut inner = self.lock();
        self.expire_due(&mut inner, unix_ms(now))?;
        if inner.state_dirty {
            self.persist(&mut inner)?;
        }
        Ok(())
    }

    /// Drops expired records of every stream whose oldest record is past its time to live.
    /// Persists only when segments go (see the module docs).
    fn expire_due(&self, inner: &mut Inner, now_ms: i64) -> Result<(), OutboxError> {
        let due: Vec<(String, i64)> = inner
            .streams
            .iter()
            .filter_map(|(name, stream)| {
                let cutoff = now_ms.saturating_sub(inner.policy(name).ttl_ms());
                let oldest = stream.oldest_ms()?;
                (oldest < cutoff).then(|| (name.clone(), cutoff))
            })
            .collect();
        for (name, cutoff) in due {
            let undo = inner.undo_point(&[&name]);
            let Some(stream) = inner.streams.get_mut(&name) else {
                continue;
            };
            let consumed = advance(
                stream,
                |segment| segment.max_ms < cutoff,
                |header| header.time_ms >= cutoff,
            );
            let consumed = match consumed {
                Ok(consumed) => consumed,
                Err(error) => {
                    inner.undo(undo);
                    return Err(error);
                }
            };
            inner.count_drop(&name, DropReason::Expired, consumed.records, consumed.bytes);
            inner.state_dirty = true;
            let freed: u64 = consumed.removed.iter().map(|s| s.file_bytes).sum();
            inner.disk_bytes = inner.disk_bytes.saturating_sub(freed);
            if !consumed.removed.is_empty() {
                self.commit_removal(inner, undo, consumed.removed)?;
            }
        }
        Ok(())
    }

    /// Makes room for `needed` more bytes under the bound (see `policy::plan_room`).
    fn make_room(&self, inner: &mut Inner, stream: &str, needed: u64) -> Result<(), OutboxError> {
        if inner.disk_bytes.saturating_add(needed) <= self.config.max_bytes {
            return Ok(());
        }
        let names: Vec<String> = inner.streams.keys().cloned().collect();
        let holdings: Vec<policy::Holding> = names
            .iter()
            .map(|name| {
                let stream = &inner.streams[name];
                policy::Holding {
                    priority: inner.policy(name).priority,
                    segments: stream
                        .segments
                        .iter()
                        .enumerate()
                        .map(|(index, segment)| policy::SegmentHolding {
                            file_bytes: segment.file_bytes,
                            oldest_ms: if index == 0 {
                                stream.read.oldest_ms
                            } else {
                                segment.first_ms
                            },
                        })
                        .collect(),
                }
            })
            .collect();
        let plan = policy::plan_room(&holdings, inner.disk_bytes, needed, self.config.max_bytes)
            .ok_or_else(|| OutboxError::RecordTooLarge {
                stream: stream.to_owned(),
                bytes: needed,
                limit: self.config.max_bytes,
            })?;
        let victims: Vec<&str> = plan
            .iter()
            .map(|(index, _)| names[*index].as_str())
            .collect();
        let undo = inner.undo_point(&victims);
        let mut removed = Vec::new();
        for (index, count) in plan {
            let name = &names[index];
            let Some(stream) = inner.streams.get_mut(name) else {
                continue;
            };
            let (mut records, mut bytes) = (0, 0);
            for _ in 0..count {
                if let Some((segment, r, b)) = stream.pop_front() {
                    records += r;
                    bytes += b;
                    removed.push(segment);
                }
            }
            warn!(
                stream = %name,
                records,
                max_bytes = self.config.max_bytes,
                "the outbox is full; dropped the oldest records of the lowest priority"
            );
            inner.count_drop(name, DropReason::Full, records, bytes);
        }
        let freed: u64 = removed.iter().map(|s| s.file_bytes).sum();
        inner.disk_bytes = inner.disk_bytes.saturating_sub(freed);
        self.commit_removal(inner, undo, removed)
    }

    /// Persists the state, then deletes `removed` (see the module docs for why in this
    /// order). Undoes the changes in memory when the state cannot be written.
    fn commit_removal(
        &self,
        inner: &mut Inner,
        undo: Undo,
        removed: Vec<Segment>,
    ) -> Result<(), OutboxError> {
        if let Err(error) = self.persist(inner) {
            inner.undo(undo);
            return Err(error);
        }
        for segment in removed {
            if let Err(error) = fs::remove_file(&segment.path)
                && error.kind() != io::ErrorKind::NotFound
            {
                // Deleted again by the next open: everything in it is below the floor.
                warn!(path = %segment.path.display(), %error, "cannot delete an outbox segment");
            }
        }
        Ok(())
    }

    /// Writes `state.json`, giving up the reserve when the disk is full.
    fn persist(&self, inner: &mut Inner) -> Result<(), OutboxError> {
        let bytes = inner.state_file(&self.id).encode();
        let result = match fsutil::write_atomic(&self.state_path, &bytes, fsutil::PUBLIC) {
            Err(error) if is_disk_full(&error.source) && inner.reserve_present => {
                warn!(path = %self.reserve_path.display(), "the disk is full; using the outbox's reserve to record progress");
                match fs::remove_file(&self.reserve_path) {
                    Ok(()) => inner.reserve_present = false,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => inner.reserve_present = false,
                    Err(e) => warn!(error = %e, "cannot delete the outbox's reserve"),
                }
                fsutil::write_atomic(&self.state_path, &bytes, fsutil::PUBLIC)
            }
            other => other,
        };
        result?;
        inner.state_dirty = false;
        Ok(())
    }

    /// Makes the reserve file if it is missing; whether it exists afterwards.
    fn restore_reserve(&self, inner: &mut Inner) -> bool {
        if inner.reserve_present {
            return true;
        }
        let result = fsutil::write_atomic(&self.reserve_path, &[0; RESERVE_BYTES], fsutil::PUBLIC);
        inner.reserve_present = result.is_ok();
        inner.reserve_present
    }

    /// Payload bytes and records waiting to be sent.
    pub fn backlog(&self) -> (u64, u64) {
        let inner = self.lock();
        inner.streams.values().fold((0, 0), |(bytes, records), s| {
            let (r, b) = s.pending();
            (bytes + b, records + r)
        })
    }

    /// What the outbox dropped since it was created, per stream and reason.
    pub fn dropped(&self) -> Vec<DropCount> {
        state::totals_to_list(&self.lock().dropped)
    }

    pub fn stats(&self) -> OutboxStats {
        let inner = self.lock();
        let (pending_records, pending_bytes) = inner
            .streams
            .values()
            .map(Stream::pending)
            .fold((0, 0), |(r, b), (sr, sb)| (r + sr, b + sb));
        OutboxStats {
            disk_bytes: inner.disk_bytes,
            max_bytes: self.config.max_bytes,
            pending_records,
            pending_bytes,
            streams: inner
                .streams
                .values()
                .filter(|s| !s.segments.is_empty())
                .count(),
            segments: inner.streams.values().map(|s| s.segments.len()).sum(),
            appends: inner.appends,
            commits: inner.commit.commits,
            lost_records: inner.lost_records,
        }
    }
}

fn check_stream(stream: &str) -> Result<(), OutboxError> {
    match stream_name_problem(stream) {
        None => Ok(()),
        Some(reason) => Err(OutboxError::InvalidStream {
            stream: stream.to_owned(),
            reason,
        }),
    }
}

fn create_dir_durably(dir: &Path) -> Result<(), OutboxError> {
    if dir.is_dir() {
        return Ok(());
    }
    fs::create_dir_all(dir).map_err(|e| OutboxError::io("creating directory", dir, e))?;
    Ok(fsutil::sync_parent(dir)?)
}

/// Creates the segment file for a stream's records from `first_seq` on. Returns it, the
/// open file, and whether the stream's directory had to be made.
fn create_segment(
    stream: &Stream,
    first_seq: u64,
    now_ms: i64,
    id: u64,
) -> Result<(Segment, File, bool), OutboxError> {
    let created_dir = !stream.dir.is_dir();
    if created_dir {
        fs::create_dir_all(&stream.dir)
            .map_err(|e| OutboxError::io("creating directory", &stream.dir, e))?;
    }
    let path = stream.dir.join(segment_name(first_seq));
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(fsutil::PUBLIC)
        .open(&path)
        .map_err(|e| OutboxError::io("creating", &path, e))?;
    let segment = Segment {
        id,
        path,
        first_seq,
        last_seq: first_seq,
        records: 0,
        payload_bytes: 0,
        file_bytes: 0,
        synced_bytes: 0,
        first_ms: now_ms,
        max_ms: now_ms,
    };
    Ok((segment, file, created_dir))
}

/// One entry per segment, with the highest offset written.
fn dedup_dirty(mut dirty: Vec<Dirty>) -> Vec<Dirty> {
    dirty.sort_by(|a, b| a.segment.cmp(&b.segment).then(b.upto.cmp(&a.upto)));
    dirty.dedup_by_key(|d| d.segment);
    dirty
}

fn flush(dirty: &[Dirty], dirs: &[PathBuf]) -> Result<(), FailedCommit> {
    let failed = |action, path: &Path, error: io::Error| FailedCommit {
        through: 0,
        action,
        path: path.to_owned(),
        kind: error.kind(),
        code: error.raw_os_error(),
        message: error.to_string(),
    };
    // One after another: on ext4 the first flush commits the journal for every file
    // written, so the later ones find little left to do (threads measured no faster).
    for entry in dirty {
        entry
            .file
            .sync_data()
            .map_err(|e| failed("flushing", &entry.path, e))?;
    }
    let mut dirs = dirs.to_vec();
    dirs.sort();
    dirs.dedup();
    for dir in dirs {
        fsutil::sync_dir(&dir).map_err(|e| failed("flushing directory", &e.path, e.source))?;
    }
    Ok(())
}

/// Moves `stream`'s read position past whole segments for which `whole` holds, then past
/// frames of the front segment until `stop` holds for one, deleting nothing (the caller
/// persists, then deletes `removed`).
fn advance(
    stream: &mut Stream,
    whole: impl Fn(&Segment) -> bool,
    stop: impl Fn(&Header) -> bool,
) -> Result<Consumed, OutboxError> {
    let mut consumed = Consumed::default();
    while let Some(front) = stream.segments.front() {
        if !whole(front) {
            let path = front.path.clone();
            let end = front.file_bytes;
            let read_error = |error: ReadError| match error {
                ReadError::Io(source) => OutboxError::io("reading", &path, source),
                ReadError::Corrupt { offset, reason } => OutboxError::Io {
                    action: "reading",
                    path: path.clone(),
                    source: io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("damaged frame at offset {offset}: {reason}"),
                    ),
                },
            };
            let mut reader = FrameReader::open(&path, stream.read.offset, end)
                .map_err(|e| OutboxError::io("reading", &path, e))?;
            let mut stopped = false;
            while let Some(header) = reader.next_header().map_err(read_error)? {
                if stop(&header) {
                    stream.read.oldest_ms = header.time_ms;
                    stopped = true;
                    break;
                }
                stream.read.offset = reader.offset();
                stream.read.records += 1;
                stream.read.payload_bytes += u64::from(header.payload_len);
                stream.cursor.floor = stream.cursor.floor.max(header.seq);
                consumed.records += 1;
                consumed.bytes += u64::from(header.payload_len);
            }
            if stopped {
                break;
            }
        }
        if let Some((segment, records, bytes)) = stream.pop_front() {
            consumed.records += records;
            consumed.bytes += bytes;
            consumed.removed.push(segment);
        }
    }
    Ok(consumed)
}

enum ReadFailure {
    /// The first record to read is damaged.
    Damaged {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    /// Damage after some records were read.
    Partial {
        records: Vec<Pending>,
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    Io {
        path: PathBuf,
        source: io::Error,
    },
}

fn read_pending(
    stream: &Stream,
    max_records: usize,
    max_bytes: usize,
) -> Result<Vec<Pending>, ReadFailure> {
    let mut records = Vec::new();
    let mut bytes = 0usize;
    for (index, segment) in stream.segments.iter().enumerate() {
        let start = if index == 0 { stream.read.offset } else { 0 };
        let damaged = |records: Vec<Pending>, offset: u64, reason: String| {
            if records.is_empty() {
                ReadFailure::Damaged {
                    path: segment.path.clone(),
                    offset,
                    reason,
                }
            } else {
                ReadFailure::Partial {
                    records,
                    path: segment.path.clone(),
                    offset,
                    reason,
                }
            }
        };
        let mut reader = match FrameReader::open(&segment.path, start, segment.synced_bytes) {
            Ok(reader) => reader,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(damaged(
                    records,
                    start,
                    "the segment file is gone".to_owned(),
                ));
            }
            Err(source) => {
                return Err(ReadFailure::Io {
                    path: segment.path.clone(),
                    source,
                });
            }
        };
        loop {
            if records.len() >= max_records || (bytes >= max_bytes && !records.is_empty()) {
                return Ok(records);
            }
            let offset = reader.offset();
            match reader.next_frame() {
                Ok(Some((header, payload))) => {
                    if bytes + payload.len() > max_bytes && !records.is_empty() {
                        return Ok(records);
                    }
                    bytes += payload.len();
                    records.push(Pending {
                        seq: header.seq,
                        time_ms: header.time_ms,
                        kind: header.kind,
                        payload,
                    });
                }
                Ok(None) => break,
                Err(ReadError::Corrupt { offset, reason }) => {
                    return Err(damaged(records, offset, reason.to_owned()));
                }
                Err(ReadError::Io(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    return Err(damaged(
                        records,
                        offset,
                        "the segment file is shorter than written".to_owned(),
                    ));
                }
                Err(ReadError::Io(source)) => {
                    return Err(ReadFailure::Io {
                        path: segment.path.clone(),
                        source,
                    });
                }
            }
        }
        // Unflushed frames of this segment: nothing after them may be read yet.
        if segment.synced_bytes < segment.file_bytes {
            break;
        }
    }
    Ok(records)
}
