//! The on-disk frame of one outbox record, and the scan of a segment image that finds the
//! valid frames, a torn tail and corrupt stretches. Pure: bytes in, descriptions out.
//!
//! A frame is `[len u32][crc32 u32][seq u64][time i64][kind u8][payload]`, little-endian,
//! where `len` counts the bytes after the first eight (17 + the payload) and the CRC-32
//! covers the four `len` bytes followed by everything after the CRC. A frame is valid when
//! it is complete, its CRC matches, its kind is known and its `seq` is above the previous
//! valid frame's.

/// Bytes before the payload.
pub const HEADER_BYTES: usize = 25;
/// `len` of a frame with an empty payload.
const MIN_LEN: u32 = (HEADER_BYTES - 8) as u32;
/// A `len` above this is damage, not a record (records are bounded far below it).
pub const MAX_PAYLOAD_BYTES: u64 = 1 << 30;
/// When looking for the next valid frame after damage, a candidate `seq` must lie this
/// close above the last valid one (a guard against payload bytes that look like a frame).
const RESYNC_SEQ_WINDOW: u64 = 1 << 32;

/// What a record's payload holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecordKind {
    /// A JSON document (checked when appended).
    Json,
    /// Opaque bytes.
    Bytes,
}

impl RecordKind {
    fn to_byte(self) -> u8 {
        match self {
            Self::Json => 0,
            Self::Bytes => 1,
        }
    }

    fn from_byte(byte: u8) -> Option<Self> {
        match byte {
            0 => Some(Self::Json),
            1 => Some(Self::Bytes),
            _ => None,
        }
    }
}

/// The size on disk of a frame carrying `payload_len` bytes.
pub fn frame_bytes(payload_len: usize) -> u64 {
    (HEADER_BYTES + payload_len) as u64
}

/// Appends one encoded frame to `out`. `payload` must be shorter than
/// `MAX_PAYLOAD_BYTES` (the outbox refuses larger records before encoding).
pub fn encode(out: &mut Vec<u8>, seq: u64, time_ms: i64, kind: RecordKind, payload: &[u8]) {
    // Bounded by MAX_PAYLOAD_BYTES (checked by every caller), so this fits a u32.
    let len = (payload.len() as u32).saturating_add(MIN_LEN);
    let start = out.len();
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&time_ms.to_le_bytes());
    out.push(kind.to_byte());
    out.extend_from_slice(payload);
    let crc = checksum(&out[start..start + 4], &out[start + 8..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

fn checksum(len_bytes: &[u8], body: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(len_bytes);
    hasher.update(body);
    hasher.finalize()
}

/// The fixed fields of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub seq: u64,
    pub time_ms: i64,
    pub kind: RecordKind,
    pub payload_len: u32,
}

impl Header {
    /// The frame's size on disk.
    pub fn frame_bytes(&self) -> u64 {
        frame_bytes(self.payload_len as usize)
    }
}

/// What the bytes at one offset are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decoded<'a> {
    /// A complete frame with a matching checksum.
    Frame { header: Header, payload: &'a [u8] },
    /// The buffer ends before the frame its header announces does.
    Incomplete,
    /// Not a frame: the reason.
    Invalid(&'static str),
}

/// Reads the header fields of a frame without checking anything but `len` and `kind`.
/// `None` when fewer than `HEADER_BYTES` bytes are given or the fields are impossible.
pub fn parse_header(bytes: &[u8]) -> Option<Header> {
    let fixed: &[u8; HEADER_BYTES] = bytes.get(..HEADER_BYTES)?.try_into().ok()?;
    let len = u32::from_le_bytes(le4(fixed, 0));
    if len < MIN_LEN || u64::from(len - MIN_LEN) > MAX_PAYLOAD_BYTES {
        return None;
    }
    Some(Header {
        seq: u64::from_le_bytes(le8(fixed, 8)),
        time_ms: i64::from_le_bytes(le8(fixed, 16)),
        kind: RecordKind::from_byte(fixed[24])?,
        payload_len: len - MIN_LEN,
    })
}

fn le4(bytes: &[u8; HEADER_BYTES], at: usize) -> [u8; 4] {
    [bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]
}

fn le8(bytes: &[u8; HEADER_BYTES], at: usize) -> [u8; 8] {
    let mut out = [0; 8];
    out.copy_from_slice(&bytes[at..at + 8]);
    out
}

/// Decodes the frame at the start of `bytes` and checks its checksum.
pub fn decode(bytes: &[u8]) -> Decoded<'_> {
    if bytes.len() < HEADER_BYTES {
        return Decoded::Incomplete;
    }
    let len = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    if len < MIN_LEN || u64::from(len - MIN_LEN) > MAX_PAYLOAD_BYTES {
        return Decoded::Invalid("impossible frame length");
    }
    let Some(header) = parse_header(bytes) else {
        return Decoded::Invalid("unknown record kind");
    };
    let end = 8 + len as usize;
    let Some(frame) = bytes.get(..end) else {
        return Decoded::Incomplete;
    };
    let stored = u32::from_le_bytes([frame[4], frame[5], frame[6], frame[7]]);
    if checksum(&frame[..4], &frame[8..]) != stored {
        return Decoded::Invalid("checksum mismatch");
    }
    Decoded::Frame {
        header,
        payload: &frame[HEADER_BYTES..],
    }
}

/// A valid frame found by `scan`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScannedFrame {
    pub offset: u64,
    pub header: Header,
}

/// Bytes of a segment that are not valid frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Damage {
    pub offset: u64,
    pub bytes: u64,
    /// Why the first frame of the stretch was refused.
    pub reason: &'static str,
    /// The valid `seq`s on either side (`before` is the caller's floor for the first).
    pub seq_before: u64,
    pub seq_after: Option<u64>,
}

/// The result of scanning a whole segment image.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scan {
    /// Valid frames, in file order, `seq` strictly increasing.
    pub frames: Vec<ScannedFrame>,
    /// Damage followed by a valid frame: records lost in the middle of the file.
    pub corrupt: Vec<Damage>,
    /// Damage running to the end of the file: what a crash during a write leaves.
    pub torn_tail: Option<Damage>,
}

impl Scan {
    /// The end of the last valid frame.
    pub fn valid_end(&self) -> u64 {
        self.frames
            .last()
            .map_or(0, |f| f.offset + f.header.frame_bytes())
    }
}

/// Scans a segment image. Every frame's `seq` must be above `seq_floor` and above the
/// previous frame's. After damage, the scan looks for the next valid frame byte by byte:
/// if one is found the damage is `corrupt` (records lost mid-file), otherwise it is the
/// `torn_tail`.
pub fn scan(bytes: &[u8], seq_floor: u64) -> Scan {
    let mut result = Scan::default();
    let mut pos = 0usize;
    let mut last_seq = seq_floor;
    while pos < bytes.len() {
        let reason = match decode(&bytes[pos..]) {
            Decoded::Frame { header, .. } if header.seq > last_seq => {
                result.frames.push(ScannedFrame {
                    offset: pos as u64,
                    header,
                });
                last_seq = header.seq;
                pos += header.frame_bytes() as usize;
                continue;
            }
            Decoded::Frame { .. } => "sequence number does not increase",
            Decoded::Incomplete => "incomplete frame",
            Decoded::Invalid(reason) => reason,
        };
        let next = next_valid_frame(bytes, pos, last_seq);
        let damage = Damage {
            offset: pos as u64,
            bytes: (next.unwrap_or(bytes.len()) - pos) as u64,
            reason,
            seq_before: last_seq,
            seq_after: next.and_then(|at| parse_header(&bytes[at..]).map(|h| h.seq)),
        };
        match next {
            Some(at) => {
                result.corrupt.push(damage);
                pos = at;
            }
            None => {
                result.torn_tail = Some(damage);
                break;
            }
        }
    }
    result
}

/// Where the valid frames go on after damage at `pos`, if they do.
///
/// When the damaged frame's header still looks right (a `seq` just above the last valid
/// one), its length is tried first: a flipped payload bit then costs exactly that frame.
/// Otherwise the next valid frame is searched byte by byte. Either way a candidate must
/// carry a `seq` above the damaged frame's, so that a torn record whose payload happens to
/// hold an older outbox frame does not turn that payload into a record.
fn next_valid_frame(bytes: &[u8], pos: usize, last_seq: u64) -> Option<usize> {
    let claimed = parse_header(&bytes[pos..])
        .filter(|h| h.seq > last_seq && h.seq - last_seq <= RESYNC_SEQ_WINDOW);
    let min_seq = claimed.map_or(last_seq, |h| h.seq);
    let by_length = claimed
        .and_then(|h| usize::try_from(h.frame_bytes()).ok())
        .and_then(|len| pos.checked_add(len))
        .filter(|&at| valid_frame_at(bytes, at, min_seq));
    by_length.or_else(|| ((pos + 1)..bytes.len()).find(|&at| valid_frame_at(bytes, at, min_seq)))
}

/// Whether a valid frame with a `seq` a little above `min_seq` starts at `at`.
fn valid_frame_at(bytes: &[u8], at: usize, min_seq: u64) -> bool {
    // The cheap header checks first: a checksum over every candidate would be quadratic
    // on a large damaged stretch.
    let Some(header) = bytes.get(at..).and_then(parse_header) else {
        return false;
    };
    header.seq > min_seq
        && header.seq - min_seq <= RESYNC_SEQ_WINDOW
        && at as u64 + header.frame_bytes() <= bytes.len() as u64
        && matches!(decode(&bytes[at..]), Decoded::Frame { .. })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(seq: u64, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        encode(
            &mut out,
            seq,
            1_700_000_000_000 + seq as i64,
            RecordKind::Bytes,
            payload,
        );
        out
    }

    fn seqs(scan: &Scan) -> Vec<u64> {
        scan.frames.iter().map(|f| f.header.seq).collect()
    }

    #[test]
    fn frames_round_trip() {
        for payload in [&b""[..], b"x", &[0xff; 300], br#"{"a":1}"#] {
            for kind in [RecordKind::Json, RecordKind::Bytes] {
                let mut out = vec![9, 9];
                encode(&mut out, 42, -5, kind, payload);
                assert_eq!(out.len() as u64, 2 + frame_bytes(payload.len()));
                let Decoded::Frame {
                    header,
                    payload: got,
                } = decode(&out[2..])
                else {
                    panic!("not a frame: {:?}", decode(&out[2..]));
                };
                assert_eq!(got, payload);
                assert_eq!(
                    header,
                    Header {
                        seq: 42,
                        time_ms: -5,
                        kind,
                        payload_len: payload.len() as u32
                    }
                );
            }
        }
    }

    #[test]
    fn every_flipped_bit_is_detected() {
        let good = frame(7, b"hello outbox");
        for byte in 0..good.len() {
            for bit in 0..8 {
                let mut bad = good.clone();
                bad[byte] ^= 1 << bit;
                assert!(
                    !matches!(decode(&bad), Decoded::Frame { .. }),
                    "flip of bit {bit} in byte {byte} went unnoticed"
                );
            }
        }
    }

    #[test]
    fn short_input_is_incomplete_not_invalid() {
        let good = frame(1, b"abcdef");
        for cut in 0..good.len() {
            assert_eq!(decode(&good[..cut]), Decoded::Incomplete, "cut at {cut}");
        }
    }

    #[test]
    fn a_torn_last_frame_is_found_at_every_byte_offset() {
        let mut image = Vec::new();
        for seq in 1..=3 {
            image.extend(frame(seq, &[seq as u8; 40]));
        }
        let last_start = image.len();
        image.extend(frame(4, &[4; 40]));
        for cut in last_start..image.len() {
            let scan = scan(&image[..cut], 0);
            assert_eq!(seqs(&scan), [1, 2, 3], "cut at {cut}");
            assert!(scan.corrupt.is_empty(), "cut at {cut}");
            assert_eq!(scan.valid_end(), last_start as u64);
            if cut == last_start {
                assert_eq!(scan.torn_tail, None);
            } else {
                let tail = scan.torn_tail.expect("a torn tail");
                assert_eq!(tail.offset, last_start as u64);
                assert_eq!(tail.bytes, (cut - last_start) as u64);
            }
        }
        let whole = scan(&image, 0);
        assert_eq!(seqs(&whole), [1, 2, 3, 4]);
        assert_eq!(whole.torn_tail, None);
    }

    #[test]
    fn a_corrupt_middle_frame_is_skipped_and_named() {
        let mut image = Vec::new();
        let mut starts = Vec::new();
        for seq in 1..=5 {
            starts.push(image.len());
            image.extend(frame(seq, format!("record {seq}").as_bytes()));
        }
        // A flipped payload byte in frame 3, then a destroyed length in frame 3.
        for damage_at in [starts[2] + HEADER_BYTES + 2, starts[2]] {
            let mut bad = image.clone();
            bad[damage_at] ^= 0x5a;
            let scan = scan(&bad, 0);
            assert_eq!(seqs(&scan), [1, 2, 4, 5]);
            assert_eq!(scan.torn_tail, None);
            assert_eq!(scan.corrupt.len(), 1);
            let damage = scan.corrupt[0];
            assert_eq!(damage.offset, starts[2] as u64);
            assert_eq!(damage.bytes, (starts[3] - starts[2]) as u64);
            assert_eq!((damage.seq_before, damage.seq_after), (2, Some(4)));
        }
    }

    #[test]
    fn zeroes_after_the_last_frame_are_a_torn_tail() {
        let mut image = frame(1, b"a");
        image.extend([0; 4096]);
        let scan = scan(&image, 0);
        assert_eq!(seqs(&scan), [1]);
        assert!(scan.corrupt.is_empty());
        assert_eq!(scan.torn_tail.map(|t| t.bytes), Some(4096));
    }

    #[test]
    fn sequence_numbers_must_increase_and_stay_above_the_floor() {
        let mut image = frame(5, b"a");
        image.extend(frame(5, b"b"));
        image.extend(frame(6, b"c"));
        let scan = scan(&image, 0);
        assert_eq!(seqs(&scan), [5, 6]);
        assert_eq!(scan.corrupt.len(), 1);
        assert_eq!(scan.corrupt[0].reason, "sequence number does not increase");

        let above = super::scan(&frame(3, b"a"), 3);
        assert!(above.frames.is_empty());
        assert!(above.torn_tail.is_some());
    }

    #[test]
    fn a_payload_holding_a_frame_does_not_fool_the_scan() {
        // Frame 2's payload is itself a valid frame (of an older outbox, seq 2) followed
        // by more bytes. Torn after that inner frame, frame 2 must not turn its payload
        // into a record.
        let inner = frame(2, b"inner");
        let mut payload = inner.clone();
        payload.extend([7; 30]);
        let mut image = frame(1, b"a");
        let second = image.len();
        image.extend(frame(2, &payload));
        let torn = &image[..second + HEADER_BYTES + inner.len() + 10];
        let scan = scan(torn, 0);
        assert_eq!(seqs(&scan), [1]);
        assert!(scan.corrupt.is_empty());
        assert_eq!(scan.torn_tail.map(|t| t.offset), Some(second as u64));
    }

    #[test]
    fn a_damaged_length_costs_only_its_frame() {
        let mut image = Vec::new();
        let mut starts = Vec::new();
        for seq in 1..=4 {
            starts.push(image.len());
            image.extend(frame(seq, &[b'x'; 64]));
        }
        // A length pointing far past the end of the file.
        image[starts[1] + 3] = 0x40;
        let scan = scan(&image, 0);
        assert_eq!(seqs(&scan), [1, 3, 4]);
        assert_eq!(scan.corrupt.len(), 1);
        assert_eq!(scan.corrupt[0].offset, starts[1] as u64);
        assert_eq!(scan.torn_tail, None);
    }
}
