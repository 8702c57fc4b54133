//! Container output as the engine streams it: the 8-byte-header frames of
//! `GET /containers/{id}/logs` (stream type, three zero bytes, payload length big-endian),
//! each payload a timestamp, a space and one line; and the cursor that lets a copy resume
//! after a dropped connection or an agent restart without copying a line twice.

use bytes::{Buf, Bytes, BytesMut};
use edgefleet_wire::Timestamp;
use edgefleet_wire::session::LogStream;
use time::format_description::well_known::Rfc3339;

/// A frame longer than this is not a log line (engines cut lines at 16 KiB): the stream
/// is out of step.
const MAX_FRAME_BYTES: usize = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("log stream frame of unknown type {0}")]
    UnknownStream(u8),
    #[error("log stream frame of {0} bytes (more than {MAX_FRAME_BYTES})")]
    TooLong(usize),
}

/// Splits the byte stream into frames, whatever the chunking of the answer.
#[derive(Debug, Default)]
pub struct Demux {
    pending: BytesMut,
}

impl Demux {
    pub fn push(&mut self, chunk: &[u8]) {
        self.pending.extend_from_slice(chunk);
    }

    /// The next complete frame, `None` until one has fully arrived.
    pub fn next_frame(&mut self) -> Result<Option<(LogStream, Bytes)>, FrameError> {
        if self.pending.len() < 8 {
            return Ok(None);
        }
        let stream = match self.pending[0] {
            // 0 is stdin, which a log never carries; engines that mark stdout with it
            // still mean output.
            0 | 1 => LogStream::Stdout,
            2 => LogStream::Stderr,
            other => return Err(FrameError::UnknownStream(other)),
        };
        let header = [
            self.pending[4],
            self.pending[5],
            self.pending[6],
            self.pending[7],
        ];
        let len = usize::try_from(u32::from_be_bytes(header)).unwrap_or(usize::MAX);
        if len > MAX_FRAME_BYTES {
            return Err(FrameError::TooLong(len));
        }
        if self.pending.len() < 8 + len {
            return Ok(None);
        }
        self.pending.advance(8);
        Ok(Some((stream, self.pending.split_to(len).freeze())))
    }
}

/// A frame's payload as (engine time, line). A payload without a readable time (an engine
/// asked for timestamps that sent none) is stamped `None` and kept whole.
pub fn split_timestamp(payload: &[u8]) -> (Option<Timestamp>, &[u8]) {
    let Some(space) = payload.iter().position(|&b| b == b' ') else {
        return (None, payload);
    };
    let parsed = std::str::from_utf8(&payload[..space])
        .ok()
        .and_then(|text| Timestamp::parse(text, &Rfc3339).ok());
    match parsed {
        Some(at) => (Some(at), &payload[space + 1..]),
        None => (None, payload),
    }
}

/// Where a copy of a container's output stands, so that a copy that starts again
/// (reconnecting, or after an agent restart) skips exactly what it already copied.
///
/// Engines stamp lines with nanoseconds (Docker) or whole seconds (Podman 4), so the
/// cursor works in whole seconds, the precision every engine has: it knows the newest
/// second it copied lines of and how many lines of that second it copied. A copy that
/// starts again asks for the output since that second (`since`), skips what came before
/// it and the first that many lines of it (the engine sends lines in the order it stored
/// them), and copies the rest.
#[derive(Debug, Clone, Default)]
pub struct Cursor {
    /// The newest second (unix time) lines were copied from.
    newest_second: Option<i64>,
    /// Lines of `newest_second` copied.
    copied_in_newest: usize,
    /// While replaying what the engine sends again: lines of `newest_second` still to skip.
    replay: Option<usize>,
}

impl Cursor {
    /// A copy from the container's first line.
    pub fn fresh() -> Self {
        Self::default()
    }

    /// A copy that continues after the log's newest line `newest_stored`, when
    /// `stored_in_second` lines of the log are stamped in that line's second (counting
    /// it). Lines of that second in the log are taken as copied from this container
    /// (a previous container's lines in the very same second would make some skipped).
    pub fn resume_after(newest_stored: Option<Timestamp>, stored_in_second: usize) -> Self {
        match newest_stored {
            Some(at) => Self {
                newest_second: Some(at.unix_timestamp()),
                copied_in_newest: stored_in_second,
                replay: Some(stored_in_second),
            },
            None => Self::fresh(),
        }
    }

    /// The copy starts again from the `since` second: what the engine sends up to the
    /// cursor is skipped.
    pub fn rewind(&mut self) {
        if self.newest_second.is_some() {
            self.replay = Some(self.copied_in_newest);
        }
    }

    /// The `since` parameter (unix seconds) for the engine.
    pub fn since(&self) -> Option<i64> {
        self.newest_second
    }

    /// Whether a line stamped `at` is new (to be copied); counts it if so.
    pub fn admit(&mut self, at: Timestamp) -> bool {
        let second = at.unix_timestamp();
        let Some(newest) = self.newest_second else {
            self.newest_second = Some(second);
            self.copied_in_newest = 1;
            return true;
        };
        if let Some(to_skip) = self.replay {
            if second < newest {
                return false;
            }
            if second == newest && to_skip > 0 {
                self.replay = Some(to_skip - 1);
                return false;
            }
            self.replay = None;
        }
        // Live, stdout and stderr lines may arrive slightly out of time order: an older
        // line is copied and leaves the cursor where it is.
        if second > newest {
            self.newest_second = Some(second);
            self.copied_in_newest = 1;
        } else if second == newest {
            self.copied_in_newest += 1;
        }
        true
    }
}

/// The start of the second `at` is in.
pub fn second_of(at: Timestamp) -> Timestamp {
    at.replace_nanosecond(0).unwrap_or(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(stream: u8, payload: &str) -> Vec<u8> {
        let mut bytes = vec![stream, 0, 0, 0];
        bytes.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        bytes.extend_from_slice(payload.as_bytes());
        bytes
    }

    fn at(text: &str) -> Timestamp {
        Timestamp::parse(text, &Rfc3339).unwrap()
    }

    #[test]
    fn frames_are_split_whatever_the_chunking() {
        let mut bytes = frame(1, "2026-11-26T16:27:38.983929341Z hi\n");
        bytes.extend(frame(2, "2026-11-26T16:27:38.985120346Z err\n"));
        bytes.extend(frame(1, "2026-11-26T16:27:39Z partial"));
        for chunk_size in [1, 3, 8, 9, bytes.len()] {
            let mut demux = Demux::default();
            let mut frames = Vec::new();
            for chunk in bytes.chunks(chunk_size) {
                demux.push(chunk);
                while let Some(frame) = demux.next_frame().unwrap() {
                    frames.push(frame);
                }
            }
            let lines: Vec<_> = frames
                .iter()
                .map(|(stream, payload)| {
                    let (at, line) = split_timestamp(payload);
                    (
                        *stream,
                        at.unwrap(),
                        String::from_utf8_lossy(line).into_owned(),
                    )
                })
                .collect();
            assert_eq!(
                lines,
                [
                    (
                        LogStream::Stdout,
                        at("2026-11-26T16:27:38.983929341Z"),
                        "hi\n".to_owned()
                    ),
                    (
                        LogStream::Stderr,
                        at("2026-11-26T16:27:38.985120346Z"),
                        "err\n".to_owned()
                    ),
                    (
                        LogStream::Stdout,
                        at("2026-11-26T16:27:39Z"),
                        "partial".to_owned()
                    ),
                ],
                "chunks of {chunk_size}"
            );
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let mut demux = Demux::default();
        demux.push(b"HTTP/1.1 200 OK\r\n");
        assert_eq!(demux.next_frame(), Err(FrameError::UnknownStream(b'H')));
        let mut demux = Demux::default();
        demux.push(&[1, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]);
        assert!(matches!(demux.next_frame(), Err(FrameError::TooLong(_))));
        assert_eq!(
            split_timestamp(b"no stamp here"),
            (None, &b"no stamp here"[..])
        );
        assert_eq!(split_timestamp(b"plain"), (None, &b"plain"[..]));
    }

    #[test]
    fn a_reconnect_skips_exactly_what_was_copied() {
        for precise in [false, true] {
            // Three lines in one second; the connection drops after two of them.
            let stamp = |s: &str, fraction: &str| {
                at(&if precise {
                    format!("{s}.{fraction}Z")
                } else {
                    format!("{s}Z")
                })
            };
            let first = stamp("2026-11-26T16:27:38", "9");
            let lines = [
                stamp("2026-11-26T16:27:39", "1"),
                stamp("2026-11-26T16:27:39", "2"),
                stamp("2026-11-26T16:27:39", "3"),
            ];
            let mut cursor = Cursor::fresh();
            assert_eq!(cursor.since(), None);
            assert!(cursor.admit(first));
            assert!(cursor.admit(lines[0]));
            assert!(cursor.admit(lines[1]));
            cursor.rewind();
            assert_eq!(cursor.since(), Some(lines[0].unix_timestamp()));
            // The engine sends the whole second again, then what follows.
            let replayed: Vec<bool> = [
                lines[0],
                lines[1],
                lines[2],
                stamp("2026-11-26T16:27:40", "0"),
            ]
            .into_iter()
            .map(|t| cursor.admit(t))
            .collect();
            assert_eq!(replayed, [false, false, true, true], "precise: {precise}");
            // And again after a second drop: nothing twice.
            cursor.rewind();
            assert!(!cursor.admit(stamp("2026-11-26T16:27:40", "0")));
            assert!(cursor.admit(stamp("2026-11-26T16:27:40", "5")));
        }
    }

    #[test]
    fn a_resume_after_restart_skips_what_the_log_holds() {
        // The log holds two lines of 16:27:39, the newest at .000002.
        let stored = at("2026-11-26T16:27:39.000002Z");
        assert_eq!(second_of(stored), at("2026-11-26T16:27:39Z"));
        let mut cursor = Cursor::resume_after(Some(stored), 2);
        assert_eq!(cursor.since(), Some(stored.unix_timestamp()));
        let admitted: Vec<bool> = [
            at("2026-11-26T16:27:39.000001Z"),
            at("2026-11-26T16:27:39.000002Z"),
            at("2026-11-26T16:27:39.5Z"),
            at("2026-11-26T16:27:40Z"),
        ]
        .into_iter()
        .map(|t| cursor.admit(t))
        .collect();
        assert_eq!(admitted, [false, false, true, true]);
        // Whole-second stamps from the engine: the same count decides.
        let mut cursor = Cursor::resume_after(Some(stored), 2);
        let second = at("2026-11-26T16:27:39Z");
        let admitted: Vec<bool> = [second, second, second]
            .into_iter()
            .map(|t| cursor.admit(t))
            .collect();
        assert_eq!(admitted, [false, false, true]);
        assert!(Cursor::resume_after(None, 0).admit(stored));
    }

    #[test]
    fn live_lines_out_of_time_order_are_all_copied() {
        let mut cursor = Cursor::fresh();
        assert!(cursor.admit(at("2026-11-26T16:27:39.5Z")));
        assert!(cursor.admit(at("2026-11-26T16:27:39.4Z")));
        assert!(cursor.admit(at("2026-11-26T16:27:39.6Z")));
    }
}
