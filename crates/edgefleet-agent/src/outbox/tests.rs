//! Tests of the outbox on real files: reopening, damage, cursors, the bound and expiry.

use std::time::Duration;

use super::*;

const T0: i64 = 1_750_000_000_000;

fn at(ms: i64) -> Timestamp {
    from_unix_ms(T0 + ms)
}

fn small() -> OutboxConfig {
    OutboxConfig {
        max_bytes: 64 << 10,
        segment_bytes: 1 << 10,
        max_record_bytes: 8 << 10,
    }
}

fn open(dir: &Path, config: OutboxConfig) -> (Outbox, Recovery) {
    Outbox::open(dir, config).unwrap()
}

fn bytes(outbox: &Outbox, stream: &str, payload: &str, ms: i64) -> u64 {
    outbox
        .append(stream, RecordKind::Bytes, payload.as_bytes(), at(ms))
        .unwrap()
}

fn all(outbox: &Outbox, stream: &str) -> Vec<Pending> {
    outbox.peek(stream, usize::MAX, usize::MAX).unwrap()
}

fn seqs(records: &[Pending]) -> Vec<u64> {
    records.iter().map(|r| r.seq).collect()
}

fn payloads(records: &[Pending]) -> Vec<String> {
    records
        .iter()
        .map(|r| String::from_utf8_lossy(&r.payload).into_owned())
        .collect()
}

fn segment_files(dir: &Path, stream: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir.join(STREAMS_DIR).join(stream))
        .map(|entries| entries.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    files.sort();
    files
}

fn dropped(outbox: &Outbox, stream: &str, reason: DropReason) -> (u64, u64) {
    outbox
        .dropped()
        .iter()
        .find(|d| d.stream == stream && d.reason == reason)
        .map_or((0, 0), |d| (d.records, d.bytes))
}

#[test]
fn records_round_trip_and_numbering_continues_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (outbox, recovery) = open(dir.path(), small());
    assert!(recovery.created);
    assert!(recovery.is_clean(), "{:?}", recovery.messages());
    let id = outbox.id().to_owned();
    assert_eq!(id.len(), 32);
    assert_eq!(bytes(&outbox, "app", "one", 1), 1);
    assert_eq!(
        outbox
            .append("metrics", RecordKind::Json, br#"{"cpu":1}"#, at(2))
            .unwrap(),
        1
    );
    let seqs_many = outbox
        .append_many(
            "app",
            &[
                (RecordKind::Bytes, &b"two"[..]),
                (RecordKind::Bytes, b"three"),
            ],
            at(3),
        )
        .unwrap();
    assert_eq!(seqs_many, 2..4);
    assert_eq!(outbox.backlog(), (3 + 3 + 5 + 9, 4));
    drop(outbox);

    let (outbox, recovery) = open(dir.path(), small());
    assert!(!recovery.created);
    assert!(recovery.is_clean(), "{:?}", recovery.messages());
    assert_eq!(recovery.pending_records, 4);
    assert_eq!(outbox.id(), id);
    let app = all(&outbox, "app");
    assert_eq!(seqs(&app), [1, 2, 3]);
    assert_eq!(payloads(&app), ["one", "two", "three"]);
    assert_eq!(app[0].time(), at(1));
    assert_eq!(app[0].kind, RecordKind::Bytes);
    let metrics = all(&outbox, "metrics");
    assert_eq!(metrics[0].kind, RecordKind::Json);
    assert_eq!(bytes(&outbox, "app", "four", 4), 4);
    assert_eq!(outbox.streams_with_pending(), ["app", "metrics"]);
}

#[test]
fn peek_respects_its_limits_but_returns_at_least_one_record() {
    let dir = tempfile::tempdir().unwrap();
    let (outbox, _) = open(dir.path(), small());
    for i in 0..10 {
        bytes(&outbox, "app", &format!("{i:0>100}"), i);
    }
    assert_eq!(seqs(&outbox.peek("app", 3, usize::MAX).unwrap()), [1, 2, 3]);
    assert_eq!(seqs(&outbox.peek("app", 100, 250).unwrap()), [1, 2]);
    assert_eq!(seqs(&outbox.peek("app", 100, 10).unwrap()), [1]);
    assert!(outbox.peek("other", 100, 100).unwrap().is_empty());
    // Ten records of 125 bytes on disk in segments of 1 KiB: the peek crosses segments.
    assert!(segment_files(dir.path(), "app").len() >= 2);
    assert_eq!(seqs(&all(&outbox, "app")), (1..=10).collect::<Vec<_>>());
}

#[test]
fn acks_persist_and_delete_wholly_stored_segments() {
    let dir = tempfile::tempdir().unwrap();
    let (outbox, _) = open(dir.path(), small());
    for i in 0..40 {
        bytes(&outbox, "app", &format!("{i:0>100}"), i);
    }
    let before = segment_files(dir.path(), "app").len();
    assert!(before >= 4, "{before} segments");
    outbox.ack("app", 25).unwrap();
    // An old or repeated answer changes nothing.
    outbox.ack("app", 10).unwrap();
    outbox.ack("app", 25).unwrap();
    assert_eq!(all(&outbox, "app")[0].seq, 26);
    assert_eq!(outbox.backlog().1, 15);
    let after = segment_files(dir.path(), "app");
    assert!(after.len() < before, "{after:?}");
    // The first segment left starts at or before 26.
    let first: u64 = after[0]
        .file_stem()
        .unwrap()
        .to_string_lossy()
        .parse()
        .unwrap();
    assert!(first <= 26, "{after:?}");
    drop(outbox);

    let (outbox, recovery) = open(dir.path(), small());
    assert!(recovery.is_clean(), "{:?}", recovery.messages());
    assert_eq!(seqs(&all(&outbox, "app")), (26..=40).collect::<Vec<_>>());
    assert_eq!(outbox.stats().pending_records, 15);
    // Everything stored: no segment is left, and numbering still goes on.
    outbox.ack("app", 40).unwrap();
    assert!(segment_files(dir.path(), "app").is_empty());
    assert_eq!(outbox.backlog(), (0, 0));
    assert_eq!(outbox.stats().disk_bytes, 0);
    drop(outbox);
    let (outbox, _) = open(dir.path(), small());
    assert_eq!(bytes(&outbox, "app", "next", 50), 41);
    assert_eq!(seqs(&all(&outbox, "app")), [41]);
}

#[test]
fn an_ack_beyond_what_was_handed_out_moves_numbering_past_it() {
    let dir = tempfile::tempdir().unwrap();
    let (outbox, _) = open(dir.path(), small());
    bytes(&outbox, "app", "a", 0);
    outbox.ack("app", 70).unwrap();
    assert_eq!(bytes(&outbox, "app", "b", 1), 71);
    drop(outbox);
    let (outbox, _) = open(dir.path(), small());
    assert_eq!(bytes(&outbox, "app", "c", 2), 72);
}

#[test]
fn a_torn_last_record_is_cut_off_at_every_byte_offset() {
    let template = tempfile::tempdir().unwrap();
    {
        let (outbox, _) = open(template.path(), small());
        for i in 1..=3 {
            bytes(&outbox, "app", &format!("record {i}"), i);
        }
    }
    let segment = segment_files(template.path(), "app").remove(0);
    let image = fs::read(&segment).unwrap();
    let last_frame = frame::frame_bytes("record 3".len()) as usize;
    let last_start = image.len() - last_frame;
    for cut in last_start..image.len() {
        let dir = tempfile::tempdir().unwrap();
        copy_dir(template.path(), dir.path());
        let path = dir
            .path()
            .join(segment.strip_prefix(template.path()).unwrap());
        fs::write(&path, &image[..cut]).unwrap();

        let (outbox, recovery) = open(dir.path(), small());
        assert_eq!(seqs(&all(&outbox, "app")), [1, 2], "cut at {cut}");
        assert!(recovery.corrupt.is_empty(), "cut at {cut}");
        if cut == last_start {
            assert!(
                recovery.is_clean(),
                "cut at {cut}: {:?}",
                recovery.messages()
            );
        } else {
            assert_eq!(recovery.torn_tails.len(), 1, "cut at {cut}");
            assert_eq!(recovery.torn_tails[0].offset, last_start as u64);
            assert_eq!(recovery.torn_tails[0].path, path);
        }
        assert_eq!(fs::metadata(&path).unwrap().len(), last_start as u64);
        // The lost record was never accepted: its seq is handed out again, once.
        assert_eq!(bytes(&outbox, "app", "again", 9), 3, "cut at {cut}");
        drop(outbox);
        let (outbox, recovery) = open(dir.path(), small());
        assert!(recovery.is_clean(), "{:?}", recovery.messages());
        assert_eq!(
            payloads(&all(&outbox, "app")),
            ["record 1", "record 2", "again"]
        );
    }
}

fn copy_dir(from: &Path, to: &Path) {
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            fs::create_dir_all(&target).unwrap();
            copy_dir(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[test]
fn a_corrupt_record_mid_segment_is_cut_out_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (outbox, _) = open(dir.path(), small());
        for i in 1..=5 {
            bytes(&outbox, "app", &format!("record {i}"), i);
        }
    }
    let segment = segment_files(dir.path(), "app").remove(0);
    let mut image = fs::read(&segment).unwrap();
    let frame_len = frame::frame_bytes("record 1".len()) as usize;
    // A flipped byte in the payload of record 3.
    image[2 * frame_len + HEADER_BYTES + 1] ^= 0x20;
    fs::write(&segment, &image).unwrap();

    let (outbox, recovery) = open(dir.path(), small());
    assert_eq!(recovery.corrupt.len(), 1, "{:?}", recovery.messages());
    assert_eq!(recovery.corrupt[0].lost_seqs, Some((3, 3)));
    assert_eq!(recovery.corrupt[0].reason, "checksum mismatch");
    assert_eq!(recovery.lost_records, 1);
    assert!(recovery.torn_tails.is_empty());
    let message = recovery.messages().join("\n");
    assert!(message.contains("seq 3 to 3 lost"), "{message}");
    assert!(
        message.contains(&segment.display().to_string()),
        "{message}"
    );
    assert_eq!(seqs(&all(&outbox, "app")), [1, 2, 4, 5]);
    assert_eq!(outbox.stats().lost_records, 1);
    assert_eq!(bytes(&outbox, "app", "six", 6), 6);
    drop(outbox);
    // The segment was rewritten without the damage.
    let (outbox, recovery) = open(dir.path(), small());
    assert!(recovery.is_clean(), "{:?}", recovery.messages());
    assert_eq!(seqs(&all(&outbox, "app")), [1, 2, 4, 5, 6]);
}

#[test]
fn damage_found_while_reading_drops_the_rest_of_the_segment_as_lost() {
    let dir = tempfile::tempdir().unwrap();
    let (outbox, _) = open(dir.path(), small());
    for i in 1..=4 {
        bytes(&outbox, "app", &format!("record {i}"), i);
    }
    let segment = segment_files(dir.path(), "app").remove(0);
    let mut image = fs::read(&segment).unwrap();
    let frame_len = frame::frame_bytes("record 1".len()) as usize;
    image[frame_len + HEADER_BYTES] ^= 1;
    fs::write(&segment, &image).unwrap();
    // Record 1 is still good and is read first.
    assert_eq!(seqs(&all(&outbox, "app")), [1]);
    outbox.ack("app", 1).unwrap();
    // Then the damage is the oldest: the segment goes, counted as lost.
    assert!(all(&outbox, "app").is_empty());
    assert_eq!(outbox.stats().lost_records, 3);
    assert_eq!(bytes(&outbox, "app", "five", 5), 5);
    assert_eq!(seqs(&all(&outbox, "app")), [5]);
}

#[test]
fn the_lowest_priority_stream_makes_room_and_drops_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let config = OutboxConfig {
        max_bytes: 16 << 10,
        segment_bytes: 1 << 10,
        max_record_bytes: 4 << 10,
    };
    let (outbox, _) = open(dir.path(), config);
    let low = StreamPolicy {
        priority: 1,
        ttl: Duration::from_secs(3600),
    };
    let high = StreamPolicy {
        priority: 8,
        ttl: Duration::from_secs(3600),
    };
    outbox.set_policy("low", low).unwrap();
    outbox.set_policy("high", high).unwrap();
    let payload = "x".repeat(175); // 200 bytes a frame, five a segment
    // 40 low records (8 KiB), then high records until the bound forces drops.
    for i in 0..40 {
        bytes(&outbox, "low", &payload, i);
    }
    for i in 0..60 {
        bytes(&outbox, "high", &payload, 100 + i);
    }
    // 100 frames of 200 bytes = 20000 > 16384: low lost whole segments, high nothing.
    let (low_dropped, low_bytes) = dropped(&outbox, "low", DropReason::Full);
    assert!(low_dropped > 0);
    assert_eq!(low_dropped % 5, 0, "whole segments go");
    assert_eq!(low_bytes, low_dropped * 175);
    assert_eq!(dropped(&outbox, "high", DropReason::Full), (0, 0));
    let low_left = all(&outbox, "low");
    assert_eq!(low_left.len() as u64, 40 - low_dropped);
    // The oldest went.
    assert_eq!(low_left[0].seq, low_dropped + 1);
    assert_eq!(all(&outbox, "high").len(), 60);
    assert!(outbox.stats().disk_bytes <= config.max_bytes);
    // High keeps going: low runs dry, then high's own oldest go.
    for i in 0..60 {
        bytes(&outbox, "high", &payload, 200 + i);
    }
    assert_eq!(dropped(&outbox, "low", DropReason::Full).0, 40);
    assert!(all(&outbox, "low").is_empty());
    let (high_dropped, _) = dropped(&outbox, "high", DropReason::Full);
    assert!(high_dropped > 0);
    let high_left = all(&outbox, "high");
    assert_eq!(high_left.len() as u64, 120 - high_dropped);
    assert_eq!(high_left[0].seq, high_dropped + 1);
    assert!(outbox.stats().disk_bytes <= config.max_bytes);
    let totals = outbox.dropped();
    drop(outbox);
    // Totals and policies survive a restart.
    let (outbox, _) = open(dir.path(), config);
    assert_eq!(outbox.dropped(), totals);
    assert_eq!(outbox.policy("low"), low);
    assert_eq!(outbox.policy("high"), high);
    assert_eq!(outbox.policy("metrics"), StreamPolicy::METRICS);
    assert_eq!(outbox.policy("other"), StreamPolicy::DEFAULT);
}

#[test]
fn equal_priorities_lose_the_older_records_first() {
    let dir = tempfile::tempdir().unwrap();
    let config = OutboxConfig {
        max_bytes: 16 << 10,
        segment_bytes: 1 << 10,
        max_record_bytes: 4 << 10,
    };
    let (outbox, _) = open(dir.path(), config);
    let payload = "x".repeat(175);
    // "b" first (older), then "a", both priority 5; then "a" needs room.
    for i in 0..40 {
        bytes(&outbox, "b", &payload, i);
    }
    for i in 0..40 {
        bytes(&outbox, "a", &payload, 100 + i);
    }
    for i in 0..10 {
        bytes(&outbox, "a", &payload, 200 + i);
    }
    assert!(dropped(&outbox, "b", DropReason::Full).0 > 0);
    assert_eq!(dropped(&outbox, "a", DropReason::Full).0, 0);
}

#[test]
fn records_past_their_time_to_live_expire() {
    let dir = tempfile::tempdir().unwrap();
    let (outbox, _) = open(dir.path(), small());
    let minute = StreamPolicy {
        priority: 5,
        ttl: Duration::from_secs(60),
    };
    outbox.set_policy("app", minute).unwrap();
    for i in 0..30 {
        bytes(&outbox, "app", &format!("{i:0>50}"), i * 1000);
    }
    // At 75 s, records accepted before 15 s are too old: 0..=14.
    outbox.expire(at(75_000)).unwrap();
    assert_eq!(all(&outbox, "app")[0].seq, 16);
    assert_eq!(dropped(&outbox, "app", DropReason::Expired), (15, 15 * 50));
    // Expiry also runs on append.
    bytes(&outbox, "other", "x", 85_000);
    assert_eq!(all(&outbox, "app")[0].seq, 26);
    assert_eq!(dropped(&outbox, "app", DropReason::Expired).0, 25);
    drop(outbox);
    // After a restart, expired records are expired and counted once: an expiry that
    // deleted no segment may be written only with the next state change, and then
    // happens again after a crash, together with its count.
    let (outbox, _) = open(dir.path(), small());
    outbox.expire(at(85_000)).unwrap();
    assert_eq!(all(&outbox, "app")[0].seq, 26);
    assert_eq!(dropped(&outbox, "app", DropReason::Expired), (25, 25 * 50));
    drop(outbox);
    let (outbox, _) = open(dir.path(), small());
    assert_eq!(all(&outbox, "app")[0].seq, 26);
    assert_eq!(dropped(&outbox, "app", DropReason::Expired).0, 25);
    outbox.expire(at(1_000_000)).unwrap();
    assert!(all(&outbox, "app").is_empty());
    assert_eq!(dropped(&outbox, "app", DropReason::Expired), (30, 30 * 50));
    assert!(segment_files(dir.path(), "app").is_empty());
    assert_eq!(bytes(&outbox, "app", "late", 1_000_001), 31);
}

#[test]
fn a_lowered_bound_applies_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let (outbox, _) = open(dir.path(), small());
    for i in 0..200 {
        bytes(&outbox, "app", &"y".repeat(175), i);
    }
    drop(outbox);
    let tight = OutboxConfig {
        max_bytes: 16 << 10,
        ..small()
    };
    let (outbox, _) = open(dir.path(), tight);
    assert!(outbox.stats().disk_bytes <= 16 << 10);
    let left = all(&outbox, "app");
    let (lost, _) = dropped(&outbox, "app", DropReason::Full);
    assert_eq!(left.len() as u64 + lost, 200);
    assert_eq!(left.last().map(|r| r.seq), Some(200));
}

#[test]
fn bad_input_gets_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (outbox, _) = open(dir.path(), small());
    let error = outbox
        .append("Bad/Name", RecordKind::Bytes, b"x", at(0))
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("invalid stream name \"Bad/Name\""),
        "{error}"
    );
    let error = outbox
        .append("app", RecordKind::Bytes, &vec![0; 9000], at(0))
        .unwrap_err()
        .to_string();
    assert!(error.contains("9000 bytes for stream app"), "{error}");
    assert!(error.contains("8192 bytes at most"), "{error}");
    let error = outbox
        .append("app", RecordKind::Json, b"{not json", at(0))
        .unwrap_err()
        .to_string();
    assert!(error.contains("is marked JSON but is not"), "{error}");
    let big: Vec<(RecordKind, Vec<u8>)> = (0..20)
        .map(|_| (RecordKind::Bytes, vec![1; 4000]))
        .collect();
    let error = outbox
        .append_many("app", &big, at(0))
        .unwrap_err()
        .to_string();
    assert!(error.contains("more than the whole outbox"), "{error}");
    let error = outbox
        .set_policy(
            "app",
            StreamPolicy {
                priority: 10,
                ttl: Duration::from_secs(1),
            },
        )
        .unwrap_err()
        .to_string();
    assert!(error.contains("0 to 9"), "{error}");
    // Nothing was accepted.
    assert_eq!(outbox.backlog(), (0, 0));
    assert_eq!(bytes(&outbox, "app", "ok", 0), 1);
    let error = Outbox::open(
        dir.path(),
        OutboxConfig {
            max_bytes: 100,
            ..small()
        },
    )
    .unwrap_err()
    .to_string();
    assert!(error.contains("at least 16384 bytes"), "{error}");
}

#[test]
fn one_process_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let (outbox, _) = open(dir.path(), small());
    let error = Outbox::open(dir.path(), small()).unwrap_err();
    assert!(matches!(error, OutboxError::Locked { .. }), "{error}");
    drop(outbox);
    open(dir.path(), small());
}

#[test]
fn a_wiped_outbox_gets_a_new_id_and_a_lost_state_file_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let first_id = {
        let (outbox, _) = open(dir.path(), small());
        bytes(&outbox, "app", "a", 0);
        outbox.id().to_owned()
    };
    fs::remove_file(dir.path().join(STATE_FILE)).unwrap();
    let (outbox, recovery) = open(dir.path(), small());
    assert_ne!(outbox.id(), first_id);
    assert!(!recovery.created);
    assert!(
        recovery.messages().join(" ").contains("gets a new id"),
        "{:?}",
        recovery.messages()
    );
    assert_eq!(seqs(&all(&outbox, "app")), [1]);
    let second_id = outbox.id().to_owned();
    drop(outbox);

    fs::remove_dir_all(dir.path()).unwrap();
    let (outbox, recovery) = open(dir.path(), small());
    assert!(recovery.created);
    assert_ne!(outbox.id(), second_id);
    assert_eq!(bytes(&outbox, "app", "a", 0), 1);
}

#[test]
fn concurrent_appenders_share_flushes_and_get_distinct_seqs() {
    let dir = tempfile::tempdir().unwrap();
    let (outbox, _) = open(dir.path(), small());
    let outbox = Arc::new(outbox);
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let outbox = outbox.clone();
            std::thread::spawn(move || {
                (0..50)
                    .map(|i| {
                        let stream = if t % 2 == 0 { "even" } else { "odd" };
                        let seq = bytes(&outbox, stream, &format!("{t}-{i}"), i);
                        (stream, seq, format!("{t}-{i}"))
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut accepted: Vec<(&str, u64, String)> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    accepted.sort();
    for stream in ["even", "odd"] {
        let mine: Vec<_> = accepted.iter().filter(|a| a.0 == stream).collect();
        assert_eq!(
            mine.iter().map(|a| a.1).collect::<Vec<_>>(),
            (1..=100).collect::<Vec<_>>()
        );
        let stored = all(&outbox, stream);
        for (record, (_, seq, payload)) in stored.iter().zip(&mine) {
            assert_eq!(record.seq, *seq);
            assert_eq!(String::from_utf8_lossy(&record.payload), *payload);
        }
    }
    let stats = outbox.stats();
    assert_eq!(stats.appends, 200);
    assert!(stats.commits <= stats.appends, "{stats:?}");
}

#[test]
fn readers_see_only_flushed_records() {
    let dir = tempfile::tempdir().unwrap();
    let (outbox, _) = open(dir.path(), small());
    bytes(&outbox, "app", "flushed", 0);
    {
        // Written but not flushed, as between an appender's write and its group commit.
        let mut inner = outbox.lock();
        let seqs = outbox
            .write_frames(
                &mut inner,
                "app",
                &[(RecordKind::Bytes, b"pending")],
                32,
                T0,
            )
            .unwrap();
        assert_eq!(seqs, 2..3);
        inner.commit.written += 1;
    }
    assert_eq!(payloads(&all(&outbox, "app")), ["flushed"]);
    assert_eq!(outbox.backlog().1, 2);
    outbox.flush().unwrap();
    assert_eq!(payloads(&all(&outbox, "app")), ["flushed", "pending"]);
}
