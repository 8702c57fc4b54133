//! Opening an outbox: reading the state file, and reading, verifying and repairing every
//! stream's segments (see "Recovery" in the outbox's module docs).

use std::fs::{self, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::frame;
use super::state::StateFile;
use super::{
    Damage, Inner, OutboxConfig, OutboxError, ReadPos, Recovery, SEGMENT_SUFFIX, Segment, Stream,
    stream_name_problem,
};
use crate::fsutil;

pub(super) fn read_state(
    path: &Path,
    recovery: &mut Recovery,
) -> Result<Option<StateFile>, OutboxError> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(OutboxError::io("reading", path, e)),
    };
    match StateFile::decode(&bytes) {
        Ok(state) => Ok(Some(state)),
        Err(problem) => {
            recovery.problems.push(format!(
                "{} is unreadable ({problem}): the outbox starts with a new id and no drop totals",
                path.display()
            ));
            Ok(None)
        }
    }
}

/// Loads every stream directory under `streams_dir` into `inner`, repairing segments.
pub(super) fn load_streams(
    streams_dir: &Path,
    config: &OutboxConfig,
    inner: &mut Inner,
    recovery: &mut Recovery,
) -> Result<(), OutboxError> {
    let entries =
        fs::read_dir(streams_dir).map_err(|e| OutboxError::io("listing", streams_dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| OutboxError::io("listing", streams_dir, e))?;
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if stream_name_problem(&name).is_some() || !path.is_dir() {
            recovery.problems.push(format!(
                "ignoring {} in the outbox: not a stream directory",
                path.display()
            ));
            continue;
        }
        let stream = inner
            .streams
            .entry(name.clone())
            .or_insert_with(|| Stream::new(path.clone()));
        load_segments(stream, config, &mut inner.next_segment_id, recovery)?;
    }
    Ok(())
}

/// Reads, verifies and repairs the segments of one stream.
fn load_segments(
    stream: &mut Stream,
    config: &OutboxConfig,
    next_id: &mut u64,
    recovery: &mut Recovery,
) -> Result<(), OutboxError> {
    let dir = stream.dir.clone();
    let mut files: Vec<(u64, PathBuf)> = Vec::new();
    let entries = fs::read_dir(&dir).map_err(|e| OutboxError::io("listing", &dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| OutboxError::io("listing", &dir, e))?;
        let path = entry.path();
        let file_name = entry.file_name().to_string_lossy().into_owned();
        if file_name.ends_with(".tmp") {
            // A rewrite a crash interrupted; the segment it was for is intact.
            let _ = fs::remove_file(&path);
            continue;
        }
        match file_name
            .strip_suffix(SEGMENT_SUFFIX)
            .and_then(|n| n.parse::<u64>().ok())
        {
            Some(first_seq) => files.push((first_seq, path)),
            None => recovery.problems.push(format!(
                "ignoring {} in the outbox: not a segment",
                path.display()
            )),
        }
    }
    files.sort();
    let mut last_seq = 0u64;
    for (_, path) in files {
        let bytes = fs::read(&path).map_err(|e| OutboxError::io("reading", &path, e))?;
        let mut scan = frame::scan(&bytes, last_seq);
        let segment = repair_segment(&path, &bytes, &scan, recovery)?;
        if !scan.corrupt.is_empty() {
            // Rewritten without the damage: the offsets changed.
            scan = frame::scan(&segment, last_seq);
        }
        let Some(first) = scan.frames.first() else {
            remove_consumed(&path)?;
            continue;
        };
        let Some(last) = scan.frames.last() else {
            continue;
        };
        last_seq = last.header.seq;
        if last.header.seq <= stream.cursor.floor {
            // Delivered or dropped; a crash came between the state and the deletion.
            remove_consumed(&path)?;
            continue;
        }
        let id = *next_id;
        *next_id += 1;
        let kept = Segment {
            id,
            path: path.clone(),
            first_seq: first.header.seq,
            last_seq: last.header.seq,
            records: scan.frames.len() as u64,
            payload_bytes: scan
                .frames
                .iter()
                .map(|f| u64::from(f.header.payload_len))
                .sum(),
            file_bytes: segment.len() as u64,
            synced_bytes: segment.len() as u64,
            first_ms: first.header.time_ms,
            max_ms: scan
                .frames
                .iter()
                .map(|f| f.header.time_ms)
                .max()
                .unwrap_or(first.header.time_ms),
        };
        if stream.segments.is_empty() {
            stream.read = start_above_floor(&scan.frames, stream.cursor.floor);
        }
        stream.segments.push_back(kept);
    }
    stream.next_seq = stream.next_seq.max(last_seq.saturating_add(1));
    // Go on appending to the newest segment while it has room.
    if let Some(back) = stream.segments.back()
        && back.file_bytes < config.segment_bytes
    {
        stream.writer = OpenOptions::new()
            .write(true)
            .open(&back.path)
            .map(Arc::new)
            .ok();
    }
    Ok(())
}

/// The read position at the first frame above `floor` (there is one).
fn start_above_floor(frames: &[frame::ScannedFrame], floor: u64) -> ReadPos {
    let mut read = ReadPos::default();
    for frame in frames {
        if frame.header.seq > floor {
            read.offset = frame.offset;
            read.oldest_ms = frame.header.time_ms;
            break;
        }
        read.records += 1;
        read.payload_bytes += u64::from(frame.header.payload_len);
    }
    read
}

fn remove_consumed(path: &Path) -> Result<(), OutboxError> {
    fs::remove_file(path).map_err(|e| OutboxError::io("deleting", path, e))
}

/// Cuts a torn tail off and damage out of a segment file, reporting both. Returns the
/// segment's bytes as they are now on disk.
fn repair_segment<'a>(
    path: &Path,
    bytes: &'a [u8],
    scan: &frame::Scan,
    recovery: &mut Recovery,
) -> Result<std::borrow::Cow<'a, [u8]>, OutboxError> {
    let damage = |d: &frame::Damage| Damage {
        path: path.to_owned(),
        offset: d.offset,
        bytes: d.bytes,
        reason: d.reason,
        lost_seqs: d
            .seq_after
            .filter(|after| *after > d.seq_before + 1)
            .map(|after| (d.seq_before + 1, after - 1)),
    };
    if let Some(tail) = &scan.torn_tail {
        recovery.torn_tails.push(damage(tail));
    }
    for corrupt in &scan.corrupt {
        let found = damage(corrupt);
        if let Some((first, last)) = found.lost_seqs {
            recovery.lost_records += last - first + 1;
        }
        recovery.corrupt.push(found);
    }
    if scan.corrupt.is_empty() {
        if scan.torn_tail.is_none() {
            return Ok(std::borrow::Cow::Borrowed(bytes));
        }
        let keep = scan.valid_end();
        let file = OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(|e| OutboxError::io("opening", path, e))?;
        file.set_len(keep)
            .and_then(|()| file.sync_all())
            .map_err(|e| OutboxError::io("cutting the torn end off", path, e))?;
        return Ok(std::borrow::Cow::Borrowed(&bytes[..keep as usize]));
    }
    // Damage mid-file: rewrite the segment with its valid frames only, atomically.
    let mut image = Vec::with_capacity(bytes.len());
    for frame in &scan.frames {
        let start = frame.offset as usize;
        image.extend_from_slice(&bytes[start..start + frame.header.frame_bytes() as usize]);
    }
    fsutil::write_atomic(path, &image, fsutil::PUBLIC)?;
    Ok(std::borrow::Cow::Owned(image))
}
