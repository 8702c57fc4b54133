//! Measures the outbox: durable append rate (records/s and MB/s) for 200-byte and 2 KiB
//! records with one appender and with four concurrent appenders (group commit), a
//! batched append (`append_many`), and the drain rate (peek + ack). Each figure is the
//! median of five runs on a fresh outbox.
//!
//! `cargo run --release -p edgefleet-agent --example outbox_bench [-- DIR]`: the outbox
//! goes in a temporary directory under DIR (default: the system's temporary directory),
//! so DIR chooses the file system measured.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use edgefleet_agent::outbox::{Outbox, OutboxConfig, RecordKind};

const RUNS: usize = 5;
/// Records per run of the single appender (the concurrent runs share this many).
const APPENDS: usize = 2000;
/// Records per `append_many` call.
const BATCH: usize = 100;
/// Records drained per run.
const DRAIN: usize = 50_000;

struct Rate {
    records: usize,
    bytes: usize,
    elapsed: Duration,
    appends: u64,
    commits: u64,
}

impl Rate {
    fn per_second(&self) -> f64 {
        self.records as f64 / self.elapsed.as_secs_f64()
    }

    fn megabytes_per_second(&self) -> f64 {
        self.bytes as f64 / self.elapsed.as_secs_f64() / 1e6
    }
}

fn fresh(base: &Path) -> (tempfile::TempDir, Arc<Outbox>) {
    let dir = tempfile::tempdir_in(base).expect("making a temporary directory");
    let (outbox, _) =
        Outbox::open(dir.path(), OutboxConfig::default()).expect("opening the outbox");
    (dir, Arc::new(outbox))
}

fn now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

/// `threads` appenders, each on its own stream or all on one.
fn appending(base: &Path, size: usize, threads: usize, shared_stream: bool) -> Rate {
    let (_dir, outbox) = fresh(base);
    let payload = vec![b'x'; size];
    let per_thread = APPENDS / threads;
    let start = Instant::now();
    std::thread::scope(|scope| {
        for t in 0..threads {
            let outbox = &outbox;
            let payload = &payload;
            scope.spawn(move || {
                let stream = if shared_stream {
                    "shared".to_owned()
                } else {
                    format!("stream-{t}")
                };
                for _ in 0..per_thread {
                    outbox
                        .append(&stream, RecordKind::Bytes, payload, now())
                        .unwrap();
                }
            });
        }
    });
    let elapsed = start.elapsed();
    let stats = outbox.stats();
    Rate {
        records: per_thread * threads,
        bytes: per_thread * threads * size,
        elapsed,
        appends: stats.appends,
        commits: stats.commits,
    }
}

fn appending_batches(base: &Path, size: usize) -> Rate {
    let (_dir, outbox) = fresh(base);
    let records: Vec<(RecordKind, Vec<u8>)> = (0..BATCH)
        .map(|_| (RecordKind::Bytes, vec![b'x'; size]))
        .collect();
    let calls = APPENDS * 5 / BATCH;
    let start = Instant::now();
    for _ in 0..calls {
        outbox.append_many("batched", &records, now()).unwrap();
    }
    let elapsed = start.elapsed();
    let stats = outbox.stats();
    Rate {
        records: calls * BATCH,
        bytes: calls * BATCH * size,
        elapsed,
        appends: stats.appends,
        commits: stats.commits,
    }
}

fn draining(base: &Path, size: usize) -> Rate {
    let (_dir, outbox) = fresh(base);
    let records: Vec<(RecordKind, Vec<u8>)> = (0..1000)
        .map(|_| (RecordKind::Bytes, vec![b'x'; size]))
        .collect();
    for _ in 0..DRAIN / 1000 {
        outbox.append_many("drain", &records, now()).unwrap();
    }
    let start = Instant::now();
    let mut drained = 0;
    loop {
        let batch = outbox.peek("drain", 10_000, 256 << 10).unwrap();
        let Some(last) = batch.last() else {
            break;
        };
        drained += batch.len();
        outbox.ack("drain", last.seq).unwrap();
    }
    let elapsed = start.elapsed();
    assert_eq!(drained, DRAIN);
    Rate {
        records: drained,
        bytes: drained * size,
        elapsed,
        appends: 0,
        commits: 0,
    }
}

fn median(base: &Path, run: impl Fn(&Path) -> Rate) -> Rate {
    let mut rates: Vec<Rate> = (0..RUNS).map(|_| run(base)).collect();
    rates.sort_by(|a, b| a.per_second().total_cmp(&b.per_second()));
    rates.swap_remove(RUNS / 2)
}

fn report(what: &str, rate: &Rate) {
    let sharing = if rate.commits > 0 {
        format!(
            "  ({} appends, {} flushes: {:.2} appends per flush)",
            rate.appends,
            rate.commits,
            rate.appends as f64 / rate.commits as f64
        )
    } else {
        String::new()
    };
    println!(
        "{what:<44} {:>10.0} records/s {:>8.2} MB/s{sharing}",
        rate.per_second(),
        rate.megabytes_per_second()
    );
}

fn main() {
    let base = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    println!(
        "outbox benchmark in {} (median of {RUNS} runs, every append durable)",
        base.display()
    );
    for size in [200usize, 2048] {
        let label = if size == 200 { "200 B" } else { "2 KiB" };
        report(
            &format!("append {label}, 1 appender"),
            &median(&base, |b| appending(b, size, 1, false)),
        );
        report(
            &format!("append {label}, 4 appenders, 4 streams"),
            &median(&base, |b| appending(b, size, 4, false)),
        );
        report(
            &format!("append {label}, 4 appenders, 1 stream"),
            &median(&base, |b| appending(b, size, 4, true)),
        );
        report(
            &format!("append_many {label}, {BATCH} per call"),
            &median(&base, |b| appending_batches(b, size)),
        );
        report(
            &format!("drain {label} (peek 256 KiB + ack)"),
            &median(&base, |b| draining(b, size)),
        );
    }
}
