//! The flight recorder: a bounded, on-node log of what happened to the agent and its
//! workloads, kept until the server has it.
//!
//! Every event gets the next `seq` (one more than the last, across agent restarts) and a
//! wall-clock time, and is appended to `events/events.jsonl` (one `NodeEvent` as JSON per
//! line, oldest first). `delivery` sends the events after `events/delivered` (the highest
//! `seq` the server acknowledged, one decimal number) and advances that cursor only when
//! the server answers; the server stores each `(node, seq)` once, so an event sent twice
//! (an answer lost on the way) costs nothing.
//!
//! **Bound.** The log holds at most `max_events` events. When it is full, delivered events
//! go first (oldest first). Undelivered events are dropped only when everything left is
//! undelivered; then about a tenth of the log (the oldest) goes at once and an
//! `events-dropped` event says how many and which `seq`s, so the server sees why there is
//! a gap. Dropping a tenth at a time means the file is rewritten once per that many
//! events, not once per event; that rewrite (an atomic replace with fsync, about
//! `max_events` lines) happens inside `record`, so about once per thousand events with
//! the default bound the recording task waits for the disk.
//!
//! **Durability.** Each event is written to the file with one `write(2)`: a crash of the
//! agent loses nothing recorded. `fsync` is batched to keep the hot path (the reconcile
//! loop) free of disk flushes: the log is flushed before any of its events is sent (so
//! the server never knows a `seq` this node could forget and hand out again), at most
//! `delivery::SYNC_INTERVAL` after an event while the server is unreachable, whenever the
//! file is rewritten (atomically, `fsutil::write_atomic`), and at shutdown. A power loss
//! can therefore lose the undelivered events of the last few seconds before it, and can
//! leave a torn last line. A torn or unreadable last line is what a crash mid-write
//! looks like: it is skipped with a warning on the next start and the file rewritten
//! without it. The cursor is replaced atomically; if it is lost, events are sent again
//! and the server ignores the duplicates.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};

use edgefleet_wire::node::{NodeEvent, NodeEventKind};
use tokio::sync::Notify;
use tracing::{info, warn};

use crate::fsutil::{self, FsError};

/// The log file, in the recorder's directory.
pub const LOG_FILE: &str = "events.jsonl";
/// The delivery cursor, in the recorder's directory.
pub const CURSOR_FILE: &str = "delivered";
/// The default bound of the log.
pub const DEFAULT_MAX_EVENTS: usize = 10_000;
/// The smallest bound that works: room for one event and the marker of dropped ones.
pub const MIN_MAX_EVENTS: usize = 2;
/// Longer messages are cut, so that a batch of events stays well inside the server's
/// body limit whatever a failing workload prints into its start error.
pub const MESSAGE_MAX_BYTES: usize = 1024;
/// Damaged lines named one by one in the log when the file is loaded.
const PROBLEMS_LOGGED: usize = 5;

#[derive(Debug, thiserror::Error)]
pub enum RecorderError {
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error("the event log bound must be at least {MIN_MAX_EVENTS} events, got {0}")]
    BoundTooSmall(usize),
}

/// An event before the recorder gives it its `seq` and time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    pub kind: NodeEventKind,
    pub workload: Option<String>,
    pub deployment: Option<String>,
    pub revision: Option<String>,
    pub message: String,
}

impl NewEvent {
    pub fn new(kind: NodeEventKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            workload: None,
            deployment: None,
            revision: None,
            message: message.into(),
        }
    }

    /// The event is about `workload`; empty deployment or revision names are left out.
    pub fn about(mut self, workload: &str, deployment: &str, revision: &str) -> Self {
        let non_empty = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        self.workload = non_empty(workload);
        self.deployment = non_empty(deployment);
        self.revision = non_empty(revision);
        self
    }
}

/// Which undelivered events the bound forced out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dropped {
    pub count: usize,
    pub first_seq: u64,
    pub last_seq: u64,
}

/// The flight recorder of one data directory. Shared (`Arc`) by everything that records
/// and by the delivery task; every method is short and never fails the caller.
#[derive(Debug)]
pub struct Recorder {
    log_path: PathBuf,
    cursor_path: PathBuf,
    max_events: usize,
    state: Mutex<State>,
    recorded: Notify,
}

#[derive(Debug)]
struct State {
    /// Oldest first, `seq` strictly increasing; the delivered ones are a prefix.
    events: VecDeque<NodeEvent>,
    next_seq: u64,
    delivered_through: u64,
    /// `None` after a failed write: the next event rewrites the whole file, so a torn
    /// line can only ever be the last one.
    file: Option<File>,
    /// Written since the last fsync.
    unsynced: bool,
    /// Writing failed last time (logged once per streak).
    write_failing: bool,
}

impl Recorder {
    /// Opens the log in `dir` (which must exist), keeping at most `max_events` events.
    /// A damaged log is repaired (see the module docs); only an unreadable directory or
    /// file is an error.
    pub fn open(dir: &Path, max_events: usize) -> Result<Self, RecorderError> {
        if max_events < MIN_MAX_EVENTS {
            return Err(RecorderError::BoundTooSmall(max_events));
        }
        let log_path = dir.join(LOG_FILE);
        let cursor_path = dir.join(CURSOR_FILE);
        let delivered_through = read_cursor(&cursor_path)?;
        let text = fsutil::read_optional(&log_path)?.unwrap_or_default();
        let loaded = parse_log(&text);
        // A log damaged throughout would otherwise log a line per event.
        for problem in loaded.problems.iter().take(PROBLEMS_LOGGED) {
            warn!(path = %log_path.display(), "{problem}; the event log is rewritten without it");
        }
        if loaded.problems.len() > PROBLEMS_LOGGED {
            warn!(
                path = %log_path.display(),
                more = loaded.problems.len() - PROBLEMS_LOGGED,
                "more damaged lines in the event log were skipped"
            );
        }
        let mut events = loaded.events;
        let last_seq = events.back().map_or(0, |e| e.seq);
        let mut state = State {
            next_seq: last_seq.max(delivered_through).saturating_add(1),
            events: VecDeque::new(),
            delivered_through,
            file: None,
            unsynced: false,
            write_failing: false,
        };
        let mut rewrite = !loaded.problems.is_empty();
        // The bound may have been lowered since the log was written.
        let mut dropped = None;
        if events.len() >= max_events {
            dropped = make_room(&mut events, delivered_through, max_events);
            rewrite = true;
        }
        state.events = events;
        if let Some(dropped) = dropped {
            warn!(
                dropped = dropped.count,
                first_seq = dropped.first_seq,
                last_seq = dropped.last_seq,
                max_events,
                "the event log holds more undelivered events than --events-max; dropped the oldest"
            );
            state.push_marker(dropped, max_events);
        }
        let recorder = Self {
            log_path,
            cursor_path,
            max_events,
            state: Mutex::new(state),
            recorded: Notify::new(),
        };
        {
            let mut state = recorder.lock();
            if rewrite {
                recorder.rewrite(&mut state);
            } else {
                state.file = open_append(&recorder.log_path)
                    .map_err(|error| warn!(%error, "cannot open the event log; retrying at the next event"))
                    .ok();
            }
        }
        Ok(recorder)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every update of the state is complete before anything that could panic.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    pub fn cursor_path(&self) -> &Path {
        &self.cursor_path
    }

    /// Records `event` now and returns its `seq`. If the file cannot be written (a full
    /// disk) the event is still kept in memory and delivered, and the failure is logged
    /// once until writing works again.
    pub fn record(&self, event: NewEvent) -> u64 {
        let at = time::OffsetDateTime::now_utc();
        let seq = {
            let mut state = self.lock();
            let mut rewrite = state.file.is_none();
            if state.events.len() >= self.max_events {
                let delivered = state.delivered_through;
                if let Some(dropped) = make_room(&mut state.events, delivered, self.max_events) {
                    warn!(
                        dropped = dropped.count,
                        first_seq = dropped.first_seq,
                        last_seq = dropped.last_seq,
                        max_events = self.max_events,
                        "the event log is full of undelivered events; dropped the oldest"
                    );
                    state.push_marker(dropped, self.max_events);
                }
                rewrite = true;
            }
            let seq = state.push(at, event);
            if rewrite {
                self.rewrite(&mut state);
            } else {
                self.append_last(&mut state);
            }
            seq
        };
        self.recorded.notify_one();
        seq
    }

    /// Resolves when an event was recorded since the last call (or is recorded now).
    pub async fn recorded(&self) {
        self.recorded.notified().await;
    }

    /// Up to `limit` undelivered events, oldest first.
    pub fn pending(&self, limit: usize) -> Vec<NodeEvent> {
        let state = self.lock();
        let start = state
            .events
            .partition_point(|e| e.seq <= state.delivered_through);
        state.events.range(start..).take(limit).cloned().collect()
    }

    /// Every event in the log, oldest first.
    pub fn events(&self) -> Vec<NodeEvent> {
        self.lock().events.iter().cloned().collect()
    }

    /// The highest `seq` the server acknowledged.
    pub fn delivered_through(&self) -> u64 {
        self.lock().delivered_through
    }

    /// The `seq` the next event will get.
    pub fn next_seq(&self) -> u64 {
        self.lock().next_seq
    }

    /// The server stored everything up to `stored_through`: persists the cursor, then
    /// advances it. Returns whether it moved. Blocking (fsync); only the delivery task
    /// calls it, so cursor writes never race.
    pub fn acknowledge(&self, stored_through: u64) -> Result<bool, FsError> {
        let last_recorded = {
            let mut state = self.lock();
            if stored_through <= state.delivered_through {
                return Ok(false);
            }
            let last_recorded = state.next_seq.saturating_sub(1);
            if stored_through > last_recorded {
                // The server knows `seq`s this node never recorded: the log was lost or
                // replaced. Numbering on from below them would make the server ignore
                // every new event as a duplicate.
                state.next_seq = stored_through.saturating_add(1);
            }
            last_recorded
        };
        if stored_through > last_recorded {
            warn!(
                stored_through,
                last_recorded,
                path = %self.log_path.display(),
                "the server has events this node never recorded (was the event log lost?); numbering new events after them"
            );
        }
        fsutil::write_atomic(
            &self.cursor_path,
            format!("{stored_through}\n").as_bytes(),
            fsutil::PUBLIC,
        )?;
        let mut state = self.lock();
        state.delivered_through = state.delivered_through.max(stored_through);
        Ok(true)
    }

    /// Flushes recorded events to disk if any are not yet. Blocking (fsync).
    pub fn sync(&self) -> Result<(), FsError> {
        let file = {
            let mut state = self.lock();
            if !state.unsynced {
                return Ok(());
            }
            let Some(file) = &state.file else {
                // Nothing half-written to flush; the next event rewrites the file.
                return Ok(());
            };
            let file = file
                .try_clone()
                .map_err(|e| FsError::new("opening", &self.log_path, e))?;
            state.unsynced = false;
            file
        };
        // Outside the lock: recording must not wait for the disk.
        let result = file
            .sync_data()
            .map_err(|e| FsError::new("flushing", &self.log_path, e));
        if result.is_err() {
            self.lock().unsynced = true;
        }
        result
    }

    fn append_last(&self, state: &mut State) {
        let Some(event) = state.events.back() else {
            return;
        };
        let line = encode_line(event);
        let Some(file) = &mut state.file else {
            return;
        };
        // One write of the whole line: a crash can tear only this line, and only in the
        // page cache's view of a power loss.
        match file.write_all(line.as_bytes()) {
            Ok(()) => {
                state.unsynced = true;
                state.written_ok(&self.log_path);
            }
            Err(error) => {
                state.file = None;
                let error = FsError::new("appending to", &self.log_path, error);
                state.write_failed(&error);
            }
        }
    }

    /// Replaces the file with the events in memory (atomically and durably), and reopens
    /// it for appending.
    fn rewrite(&self, state: &mut State) {
        let text: String = state.events.iter().map(encode_line).collect();
        let result = fsutil::write_atomic(&self.log_path, text.as_bytes(), fsutil::PUBLIC)
            .and_then(|()| open_append(&self.log_path));
        match result {
            Ok(file) => {
                state.file = Some(file);
                state.unsynced = false;
                state.written_ok(&self.log_path);
            }
            Err(error) => {
                state.file = None;
                state.write_failed(&error);
            }
        }
    }
}

impl State {
    fn push(&mut self, at: time::OffsetDateTime, event: NewEvent) -> u64 {
        let seq = self.next_seq;
        self.next_seq = seq.saturating_add(1);
        self.events.push_back(NodeEvent {
            seq,
            at,
            kind: event.kind,
            workload: event.workload,
            deployment: event.deployment,
            revision: event.revision,
            message: truncate(event.message, MESSAGE_MAX_BYTES),
        });
        seq
    }

    fn push_marker(&mut self, dropped: Dropped, max_events: usize) {
        let message = format!(
            "dropped {} undelivered events (seq {} to {}): the on-node event log was full (at most {max_events} events)",
            dropped.count, dropped.first_seq, dropped.last_seq
        );
        self.push(
            time::OffsetDateTime::now_utc(),
            NewEvent::new(NodeEventKind::EventsDropped, message),
        );
    }

    fn written_ok(&mut self, path: &Path) {
        if self.write_failing {
            self.write_failing = false;
            info!(path = %path.display(), "writing the event log works again");
        }
    }

    fn write_failed(&mut self, error: &FsError) {
        if !self.write_failing {
            self.write_failing = true;
            warn!(%error, "cannot write the event log; events are kept in memory until it works again");
        }
    }
}

fn open_append(path: &Path) -> Result<File, FsError> {
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(fsutil::PUBLIC)
        .open(path)
        .map_err(|e| FsError::new("opening", path, e))
}

fn encode_line(event: &NodeEvent) -> String {
    // A `NodeEvent` is strings, numbers and a formatted time: encoding cannot fail, but
    // a line is better than a panic if it ever does.
    let mut line = serde_json::to_string(event).unwrap_or_else(|error| {
        let message = serde_json::Value::String(format!("unencodable event: {error}"));
        format!(
            r#"{{"seq":{},"at":"1970-01-01T00:00:00Z","kind":"other","message":{message}}}"#,
            event.seq
        )
    });
    line.push('\n');
    line
}

/// `message` cut to at most `max` bytes, on a character boundary.
fn truncate(mut message: String, max: usize) -> String {
    if message.len() > max {
        let mut end = max.saturating_sub('…'.len_utf8());
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
        message.push('…');
    }
    message
}

/// The delivery cursor; 0 when there is none. An unreadable number means resending
/// everything in the log, which the server deduplicates: not worth failing for.
fn read_cursor(path: &Path) -> Result<u64, FsError> {
    let Some(text) = fsutil::read_optional(path)? else {
        return Ok(0);
    };
    match text.trim().parse() {
        Ok(seq) => Ok(seq),
        Err(error) => {
            warn!(path = %path.display(), %error, content = %text.trim(), "the event delivery cursor is not a number; sending every event in the log again");
            Ok(0)
        }
    }
}

/// The events of a log file and what was wrong with it.
#[derive(Debug, Default)]
pub struct ParsedLog {
    pub events: VecDeque<NodeEvent>,
    /// Each a sentence naming the line: the file needs rewriting when this is not empty.
    pub problems: Vec<String>,
}

/// Parses the text of a log file. Skips (and names in `problems`) unreadable lines, a
/// torn last line, and lines whose `seq` does not increase.
pub fn parse_log(text: &str) -> ParsedLog {
    let mut parsed = ParsedLog::default();
    let mut lines = text.split_inclusive('\n').enumerate().peekable();
    while let Some((index, raw)) = lines.next() {
        let number = index + 1;
        let is_last = lines.peek().is_none();
        let complete = raw.ends_with('\n');
        let line = raw.trim_end_matches(['\n', '\r']);
        if line.trim().is_empty() {
            if complete {
                parsed.problems.push(format!("line {number} is empty"));
            }
            continue;
        }
        let event = match serde_json::from_str::<NodeEvent>(line) {
            Ok(event) => event,
            Err(_) if is_last => {
                parsed.problems.push(format!(
                    "ignoring the unreadable last line {number} (the agent stopped while writing it)"
                ));
                continue;
            }
            Err(error) => {
                parsed
                    .problems
                    .push(format!("ignoring unreadable line {number}: {error}"));
                continue;
            }
        };
        if !complete {
            parsed
                .problems
                .push(format!("line {number} has no line end"));
        }
        if let Some(last) = parsed.events.back()
            && event.seq <= last.seq
        {
            parsed.problems.push(format!(
                "ignoring line {number}: seq {} does not follow seq {}",
                event.seq, last.seq
            ));
            continue;
        }
        parsed.events.push_back(event);
    }
    parsed
}

/// Makes room for one more event in a log bounded to `max_events` (at least 2): drops
/// delivered events (oldest first) down to the low-water mark `max_events - max_events / 10`,
/// and, only if the log is still full, the oldest undelivered ones down to one below
/// that mark, leaving room for the `events-dropped` marker. Returns what undelivered
/// events it dropped.
pub fn make_room(
    events: &mut VecDeque<NodeEvent>,
    delivered_through: u64,
    max_events: usize,
) -> Option<Dropped> {
    let slack = (max_events / 10).max(1);
    let low_water = max_events.saturating_sub(slack);
    while events.len() > low_water && events.front().is_some_and(|e| e.seq <= delivered_through) {
        events.pop_front();
    }
    if events.len() < max_events {
        return None;
    }
    let mut dropped: Option<Dropped> = None;
    while events.len() > low_water.saturating_sub(1) {
        let Some(event) = events.pop_front() else {
            break;
        };
        let entry = dropped.get_or_insert(Dropped {
            count: 0,
            first_seq: event.seq,
            last_seq: event.seq,
        });
        entry.count += 1;
        entry.last_seq = event.seq;
    }
    dropped
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn lock_event(workload: &str) -> NewEvent {
        NewEvent::new(NodeEventKind::LockAcquired, "test").about(workload, "", "")
    }

    fn seqs(events: &[NodeEvent]) -> Vec<u64> {
        events.iter().map(|e| e.seq).collect()
    }

    fn kinds(events: &[NodeEvent]) -> Vec<NodeEventKind> {
        events.iter().map(|e| e.kind).collect()
    }

    fn on_disk(recorder: &Recorder) -> Vec<NodeEvent> {
        let text = fs::read_to_string(recorder.log_path()).unwrap();
        let parsed = parse_log(&text);
        assert!(parsed.problems.is_empty(), "{:?}", parsed.problems);
        parsed.events.into_iter().collect()
    }

    #[test]
    fn seq_continues_across_reopen_and_events_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let recorder = Recorder::open(dir.path(), 100).unwrap();
        assert_eq!(recorder.record(lock_event("a")), 1);
        assert_eq!(
            recorder.record(
                NewEvent::new(NodeEventKind::WorkloadExited, "exited with code 3")
                    .about("web", "shop", "r7")
            ),
            2
        );
        let before = recorder.events();
        drop(recorder);

        let recorder = Recorder::open(dir.path(), 100).unwrap();
        assert_eq!(recorder.events(), before);
        assert_eq!(before[1].workload.as_deref(), Some("web"));
        assert_eq!(before[1].deployment.as_deref(), Some("shop"));
        assert_eq!(before[1].revision.as_deref(), Some("r7"));
        assert_eq!(recorder.record(lock_event("b")), 3);
        assert_eq!(seqs(&on_disk(&recorder)), [1, 2, 3]);
    }

    #[test]
    fn seq_continues_after_the_cursor_when_the_log_lost_its_tail() {
        let dir = tempfile::tempdir().unwrap();
        let recorder = Recorder::open(dir.path(), 100).unwrap();
        for _ in 0..5 {
            recorder.record(lock_event("a"));
        }
        assert!(recorder.acknowledge(5).unwrap());
        drop(recorder);
        // A power loss took the unsynced end of the log, but the server has 1..=5.
        let text = fs::read_to_string(dir.path().join(LOG_FILE)).unwrap();
        let first_two: String = text.split_inclusive('\n').take(2).collect();
        fs::write(dir.path().join(LOG_FILE), first_two).unwrap();
        let recorder = Recorder::open(dir.path(), 100).unwrap();
        assert_eq!(recorder.record(lock_event("a")), 6);
    }

    #[test]
    fn cursor_persists_and_pending_starts_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let recorder = Recorder::open(dir.path(), 100).unwrap();
        for _ in 0..4 {
            recorder.record(lock_event("a"));
        }
        assert_eq!(seqs(&recorder.pending(10)), [1, 2, 3, 4]);
        assert_eq!(seqs(&recorder.pending(2)), [1, 2]);
        assert!(recorder.acknowledge(2).unwrap());
        // An old or repeated answer never moves the cursor back.
        assert!(!recorder.acknowledge(1).unwrap());
        assert!(!recorder.acknowledge(2).unwrap());
        assert_eq!(seqs(&recorder.pending(10)), [3, 4]);
        assert_eq!(
            fs::read_to_string(dir.path().join(CURSOR_FILE)).unwrap(),
            "2\n"
        );
        drop(recorder);

        let recorder = Recorder::open(dir.path(), 100).unwrap();
        assert_eq!(recorder.delivered_through(), 2);
        assert_eq!(seqs(&recorder.pending(10)), [3, 4]);
    }

    #[test]
    fn an_ack_beyond_the_log_moves_numbering_past_it() {
        let dir = tempfile::tempdir().unwrap();
        let recorder = Recorder::open(dir.path(), 100).unwrap();
        recorder.record(lock_event("a"));
        assert!(recorder.acknowledge(40).unwrap());
        assert_eq!(recorder.record(lock_event("a")), 41);
        assert_eq!(seqs(&recorder.pending(10)), [41]);
    }

    #[test]
    fn full_log_drops_delivered_events_first() {
        let dir = tempfile::tempdir().unwrap();
        let recorder = Recorder::open(dir.path(), 10).unwrap();
        for _ in 0..10 {
            recorder.record(lock_event("a"));
        }
        recorder.acknowledge(6).unwrap();
        recorder.record(lock_event("a"));
        // Delivered 1..=6: one goes (down to the low-water mark of 9), none undelivered.
        let events = recorder.events();
        assert_eq!(seqs(&events), (2..=11).collect::<Vec<_>>());
        assert!(!kinds(&events).contains(&NodeEventKind::EventsDropped));
        assert_eq!(on_disk(&recorder), events);
        // It never holds more than the bound.
        for _ in 0..3 {
            recorder.record(lock_event("a"));
        }
        assert_eq!(seqs(&recorder.events()), (5..=14).collect::<Vec<_>>());
        assert_eq!(seqs(&recorder.pending(100)), (7..=14).collect::<Vec<_>>());
    }

    #[test]
    fn full_log_of_undelivered_events_drops_the_oldest_with_a_marker() {
        let dir = tempfile::tempdir().unwrap();
        let recorder = Recorder::open(dir.path(), 10).unwrap();
        for _ in 0..10 {
            recorder.record(lock_event("a"));
        }
        recorder.record(lock_event("a"));
        let events = recorder.events();
        assert_eq!(events.len(), 10);
        // 1 and 2 dropped; the marker (11) says so; then the new event (12).
        assert_eq!(seqs(&events), [3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
        let marker = &events[8];
        assert_eq!(marker.kind, NodeEventKind::EventsDropped);
        assert!(
            marker
                .message
                .contains("dropped 2 undelivered events (seq 1 to 2)"),
            "{}",
            marker.message
        );
        assert_eq!(events[9].kind, NodeEventKind::LockAcquired);
        assert_eq!(on_disk(&recorder), events);
        // The marker is delivered like any event.
        assert_eq!(recorder.pending(100), events);
    }

    #[test]
    fn undelivered_events_are_not_dropped_while_delivered_ones_make_room() {
        let dir = tempfile::tempdir().unwrap();
        let recorder = Recorder::open(dir.path(), 10).unwrap();
        for _ in 0..10 {
            recorder.record(lock_event("a"));
        }
        recorder.acknowledge(1).unwrap();
        recorder.record(lock_event("a"));
        assert_eq!(seqs(&recorder.events()), (2..=11).collect::<Vec<_>>());
        assert!(!kinds(&recorder.events()).contains(&NodeEventKind::EventsDropped));
    }

    #[test]
    fn reopening_under_the_bound_keeps_delivered_events() {
        let dir = tempfile::tempdir().unwrap();
        let recorder = Recorder::open(dir.path(), 10).unwrap();
        for _ in 0..9 {
            recorder.record(lock_event("a"));
        }
        recorder.acknowledge(9).unwrap();
        drop(recorder);
        let recorder = Recorder::open(dir.path(), 10).unwrap();
        assert_eq!(seqs(&recorder.events()), (1..=9).collect::<Vec<_>>());
        assert!(recorder.pending(10).is_empty());
        recorder.record(lock_event("a"));
        assert_eq!(on_disk(&recorder), recorder.events());
    }

    #[test]
    fn a_lowered_bound_is_applied_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let recorder = Recorder::open(dir.path(), 100).unwrap();
        for _ in 0..30 {
            recorder.record(lock_event("a"));
        }
        drop(recorder);
        let recorder = Recorder::open(dir.path(), 10).unwrap();
        let events = recorder.events();
        assert!(events.len() <= 10, "{}", events.len());
        assert_eq!(
            events.last().map(|e| e.kind),
            Some(NodeEventKind::EventsDropped)
        );
        assert_eq!(on_disk(&recorder), events);
        assert_eq!(recorder.next_seq(), 32);
    }

    #[test]
    fn a_truncated_last_line_is_skipped_and_the_file_repaired() {
        let dir = tempfile::tempdir().unwrap();
        let recorder = Recorder::open(dir.path(), 100).unwrap();
        for _ in 0..3 {
            recorder.record(lock_event("a"));
        }
        drop(recorder);
        let path = dir.path().join(LOG_FILE);
        let text = fs::read_to_string(&path).unwrap();
        // A crash in the middle of writing the third line.
        let cut = text.len() - 20;
        fs::write(&path, &text[..cut]).unwrap();

        let recorder = Recorder::open(dir.path(), 100).unwrap();
        assert_eq!(seqs(&recorder.events()), [1, 2]);
        // The torn line is gone from the file, so the next line is not glued to it.
        assert_eq!(recorder.record(lock_event("b")), 3);
        assert_eq!(seqs(&on_disk(&recorder)), [1, 2, 3]);
    }

    #[test]
    fn parse_log_names_every_problem() {
        let good = |seq: u64| {
            encode_line(&NodeEvent {
                seq,
                at: time::macros::datetime!(2026-01-02 03:04:05 UTC),
                kind: NodeEventKind::AgentStarted,
                workload: None,
                deployment: None,
                revision: None,
                message: String::new(),
            })
        };
        let text = format!("{}garbage\n\n{}{}{}", good(1), good(3), good(2), good(4));
        let parsed = parse_log(&text);
        assert_eq!(
            parsed.events.iter().map(|e| e.seq).collect::<Vec<_>>(),
            [1, 3, 4]
        );
        assert_eq!(parsed.problems.len(), 3, "{:?}", parsed.problems);
        assert!(
            parsed.problems[0].contains("line 2"),
            "{:?}",
            parsed.problems
        );
        assert!(
            parsed.problems[2].contains("line 5"),
            "{:?}",
            parsed.problems
        );

        // A complete last line without its line end is kept (and the file rewritten).
        let parsed = parse_log(good(7).trim_end());
        assert_eq!(parsed.events.len(), 1);
        assert_eq!(parsed.problems.len(), 1);
        assert!(parse_log("").problems.is_empty());
    }

    #[test]
    fn make_room_keeps_the_bound() {
        let event = |seq| NodeEvent {
            seq,
            at: time::OffsetDateTime::UNIX_EPOCH,
            kind: NodeEventKind::Other,
            workload: None,
            deployment: None,
            revision: None,
            message: String::new(),
        };
        for max in [2usize, 3, 10, 25] {
            for delivered in [0u64, 1, max as u64 / 2, max as u64] {
                let mut events: VecDeque<_> = (1..=max as u64).map(event).collect();
                let dropped = make_room(&mut events, delivered, max);
                // Room for the new event, and for the marker when one is needed.
                let marker = usize::from(dropped.is_some());
                assert!(
                    events.len() + marker < max,
                    "max {max}, delivered {delivered}: {} left",
                    events.len()
                );
                if let Some(dropped) = dropped {
                    assert!(dropped.first_seq > delivered);
                    assert_eq!(
                        dropped.count as u64,
                        dropped.last_seq - dropped.first_seq + 1
                    );
                }
                // Undelivered events go only once no delivered one is left.
                if dropped.is_some() {
                    assert!(events.iter().all(|e| e.seq > delivered));
                }
            }
        }
    }

    #[test]
    fn long_messages_are_cut_on_a_character_boundary() {
        let cut = truncate("é".repeat(2000), MESSAGE_MAX_BYTES);
        assert!(cut.len() <= MESSAGE_MAX_BYTES);
        assert!(cut.ends_with('…'));
        assert_eq!(truncate("short".into(), 10), "short");
    }

    #[test]
    fn a_bound_below_two_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let error = Recorder::open(dir.path(), 1).unwrap_err().to_string();
        assert!(error.contains("at least 2"), "{error}");
    }
}
