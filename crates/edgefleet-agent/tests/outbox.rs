//! The outbox and its uploader on real files, real processes and a real TLS server:
//! `kill -9` at random moments, a full file system (a small tmpfs), two days offline
//! under a tight bound, and uploads through an unreachable, then reachable, server.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use edgefleet_agent::channel::ServerChannel;
use edgefleet_agent::identity::Identity;
use edgefleet_agent::outbox::{
    Outbox, OutboxConfig, OutboxError, Pending, RecordKind, StreamPolicy, from_unix_ms,
};
use edgefleet_agent::shutdown;
use edgefleet_agent::uploader::{self, UploaderConfig};
use edgefleet_tls::{Ca, NodeKey};
use edgefleet_wire::Timestamp;
use edgefleet_wire::telemetry::{
    DropReason, MetricSample, MetricSet, RecordData, StreamAck, UploadAck, UploadBatch,
};
use rand::Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Set in the environment of the child process of the crash test: its outbox directory.
const CHILD_DIR: &str = "EDGEFLEET_OUTBOX_CRASH_DIR";
/// Set in the environment of the child process: the round it runs in.
const CHILD_ROUND: &str = "EDGEFLEET_OUTBOX_CRASH_ROUND";
const CRASH_ROUNDS: usize = 24;

fn crash_config() -> OutboxConfig {
    OutboxConfig {
        max_bytes: 256 << 20,
        segment_bytes: 8 << 10,
        max_record_bytes: 64 << 10,
    }
}

fn now() -> Timestamp {
    time::OffsetDateTime::now_utc()
}

fn drain(outbox: &Outbox, stream: &str) -> Vec<Pending> {
    outbox.peek(stream, usize::MAX, usize::MAX).unwrap()
}

/// The producer of the crash test, run only in the child process (the parent re-executes
/// this test binary with `CHILD_DIR` set). Two threads append to two streams, one record
/// or a few at a time, and print `SEQ <stream> <seq> <payload>` for every record once
/// `append` returned, until the parent kills the process.
#[test]
fn crash_test_producer() {
    let Ok(dir) = std::env::var(CHILD_DIR) else {
        return;
    };
    let round: usize = std::env::var(CHILD_ROUND).unwrap().parse().unwrap();
    let (outbox, _) = Outbox::open(Path::new(&dir), crash_config()).unwrap();
    let outbox = Arc::new(outbox);
    let threads: Vec<_> = ["alpha", "beta"]
        .into_iter()
        .map(|stream| {
            let outbox = outbox.clone();
            std::thread::spawn(move || {
                let mut rng = rand::rng();
                for i in 0usize.. {
                    let payload = |n: usize| {
                        let pad = "p".repeat(rng_len(n));
                        format!(r#"{{"round":{round},"i":{n},"pad":"{pad}"}}"#)
                    };
                    let batch = if rng.random_bool(0.2) { 3 } else { 1 };
                    let payloads: Vec<String> = (0..batch).map(|k| payload(i * 10 + k)).collect();
                    let records: Vec<(RecordKind, &[u8])> = payloads
                        .iter()
                        .map(|p| (RecordKind::Json, p.as_bytes()))
                        .collect();
                    let seqs = outbox.append_many(stream, &records, now()).unwrap();
                    let mut out = std::io::stdout().lock();
                    for (seq, payload) in seqs.zip(&payloads) {
                        writeln!(out, "SEQ {stream} {seq} {payload}").unwrap();
                    }
                    out.flush().unwrap();
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
}

/// A payload padding length that varies with `n`, from tiny to several kilobytes.
fn rng_len(n: usize) -> usize {
    (n * 7919) % 3000
}

/// A line the child printed: the record was accepted.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Accepted {
    seq: u64,
    payload: String,
}

fn run_child_until_killed(dir: &Path, round: usize) -> BTreeMap<String, Vec<Accepted>> {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "crash_test_producer",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_DIR, dir)
        .env(CHILD_ROUND, round.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("starting the crash test's child process");
    let stdout = child.stdout.take().unwrap();
    let (first_line, seen_first) = std::sync::mpsc::channel::<()>();
    let reader = std::thread::spawn(move || {
        let mut text = Vec::new();
        let mut reader = BufReader::new(stdout);
        let mut told = false;
        let mut line = Vec::new();
        while reader.read_until(b'\n', &mut line).unwrap_or(0) > 0 {
            if line.starts_with(b"SEQ ") && !told {
                let _ = first_line.send(());
                told = true;
            }
            text.extend_from_slice(&line);
            line.clear();
        }
        text
    });
    // Let it write for a random while once it is under way.
    let started = seen_first.recv_timeout(Duration::from_secs(30));
    if started.is_ok() {
        let ms = rand::rng().random_range(5..250);
        std::thread::sleep(Duration::from_millis(ms));
    }
    // `Child::kill` is SIGKILL.
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert!(
        started.is_ok(),
        "the child never accepted a record ({status})"
    );
    let text = reader.join().unwrap();
    let mut accepted: BTreeMap<String, Vec<Accepted>> = BTreeMap::new();
    // Only whole lines: a line cut by the kill was not printed completely.
    for line in text.split_inclusive(|b| *b == b'\n') {
        let Some(line) = line.strip_suffix(b"\n") else {
            continue;
        };
        let line = String::from_utf8_lossy(line);
        let Some(rest) = line.strip_prefix("SEQ ") else {
            continue;
        };
        let mut parts = rest.splitn(3, ' ');
        let (stream, seq, payload) = (
            parts.next().unwrap(),
            parts.next().unwrap(),
            parts.next().unwrap(),
        );
        accepted
            .entry(stream.to_owned())
            .or_default()
            .push(Accepted {
                seq: seq.parse().unwrap(),
                payload: payload.to_owned(),
            });
    }
    accepted
}

#[test]
fn records_survive_kill_9_at_random_moments() {
    let dir = tempfile::tempdir().unwrap();
    let outbox_dir = dir.path().join("outbox");
    // Everything accepted, and everything the parent took out (delivered), per stream.
    let mut accepted: BTreeMap<String, BTreeMap<u64, String>> = BTreeMap::new();
    let mut delivered: BTreeMap<String, Vec<Pending>> = BTreeMap::new();
    let mut torn_tails = 0;
    for round in 0..CRASH_ROUNDS {
        for (stream, records) in run_child_until_killed(&outbox_dir, round) {
            let mine = accepted.entry(stream).or_default();
            for record in records {
                let previous = mine.insert(record.seq, record.payload);
                assert!(
                    previous.is_none(),
                    "round {round}: seq {} accepted twice",
                    record.seq
                );
            }
        }
        let (outbox, recovery) = Outbox::open(&outbox_dir, crash_config()).unwrap();
        assert!(
            recovery.corrupt.is_empty(),
            "round {round}: {:?}",
            recovery.messages()
        );
        torn_tails += recovery.torn_tails.len();
        for (stream, mine) in &accepted {
            let waiting = drain(&outbox, stream);
            let done = delivered.entry(stream.clone()).or_default();
            // In order, continuing after what was delivered.
            let last_delivered = done.last().map_or(0, |r| r.seq);
            assert!(
                waiting.windows(2).all(|w| w[0].seq < w[1].seq),
                "round {round}: {stream} out of order"
            );
            assert!(waiting.first().is_none_or(|r| r.seq > last_delivered));
            // Every accepted record not yet delivered is waiting, with its payload.
            let present: BTreeMap<u64, &[u8]> =
                waiting.iter().map(|r| (r.seq, &r.payload[..])).collect();
            for (seq, payload) in mine.range(last_delivered + 1..) {
                assert_eq!(
                    present.get(seq).map(|p| String::from_utf8_lossy(p)),
                    Some(payload.as_str().into()),
                    "round {round}: accepted {stream} seq {seq} is missing"
                );
            }
            // Deliver a random prefix.
            let take = rand::rng().random_range(0..=waiting.len());
            if take > 0 {
                outbox.ack(stream, waiting[take - 1].seq).unwrap();
                done.extend(waiting.into_iter().take(take));
            }
        }
    }
    // The rest.
    let (outbox, _) = Outbox::open(&outbox_dir, crash_config()).unwrap();
    for (stream, mine) in &accepted {
        let done = delivered.entry(stream.clone()).or_default();
        let rest = drain(&outbox, stream);
        if let Some(last) = rest.last() {
            outbox.ack(stream, last.seq).unwrap();
        }
        done.extend(rest);
        assert!(
            done.windows(2).all(|w| w[0].seq < w[1].seq),
            "{stream}: delivered out of order or twice"
        );
        // No payload twice: nothing was stored twice under different seqs.
        let payloads: BTreeSet<&[u8]> = done.iter().map(|r| &r.payload[..]).collect();
        assert_eq!(
            payloads.len(),
            done.len(),
            "{stream}: a record was delivered twice"
        );
        // Every accepted record delivered exactly once, under its seq.
        let by_seq: BTreeMap<u64, &[u8]> = done.iter().map(|r| (r.seq, &r.payload[..])).collect();
        for (seq, payload) in mine {
            assert_eq!(
                by_seq.get(seq).copied(),
                Some(payload.as_bytes()),
                "{stream} seq {seq}"
            );
        }
        assert!(
            mine.len() > CRASH_ROUNDS,
            "{stream}: only {} records",
            mine.len()
        );
    }
    assert_eq!(outbox.backlog(), (0, 0));
    eprintln!(
        "crash test: {} records accepted over {CRASH_ROUNDS} kills, {torn_tails} torn tails cut",
        accepted.values().map(BTreeMap::len).sum::<usize>()
    );
}

/// A tmpfs mounted for one test, unmounted when dropped.
struct Tmpfs {
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fs");
        std::fs::create_dir(&path).unwrap();
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .output()
            .expect("running mount(8)");
        assert!(
            output.status.success(),
            "the disk-full test mounts a {size} tmpfs and needs root (CAP_SYS_ADMIN) for it: mount {}: {}",
            path.display(),
            String::from_utf8_lossy(&output.stderr)
        );
        Self { path, _dir: dir }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.path).status();
    }
}

#[test]
fn a_full_disk_refuses_appends_keeps_what_was_accepted_and_recovers() {
    let tmpfs = Tmpfs::mount("512k");
    let dir = tmpfs.path.join("outbox");
    let config = OutboxConfig {
        segment_bytes: 16 << 10,
        ..OutboxConfig::default()
    };
    let (outbox, _) = Outbox::open(&dir, config).unwrap();
    let mut accepted = Vec::new();
    let error = loop {
        assert!(accepted.len() < 10_000, "the tmpfs never filled up");
        let payload = format!("{:0>2000}", accepted.len());
        match outbox.append("app", RecordKind::Bytes, payload.as_bytes(), now()) {
            Ok(seq) => accepted.push((seq, payload)),
            Err(error) => break error,
        }
    };
    assert!(error.is_disk_full(), "{error}");
    let message = error.to_string();
    assert!(message.contains("no space left"), "{message}");
    assert!(message.contains(&dir.display().to_string()), "{message}");
    assert!(accepted.len() > 50, "only {} records fit", accepted.len());
    // Again: still refused, nothing breaks.
    for _ in 0..3 {
        let again = outbox.append("app", RecordKind::Bytes, &[b'x'; 2000], now());
        assert!(
            matches!(again, Err(OutboxError::DiskFull { .. })),
            "{again:?}"
        );
    }
    let check = |outbox: &Outbox| {
        let stored = drain(outbox, "app");
        assert_eq!(stored.len(), accepted.len());
        for (record, (seq, payload)) in stored.iter().zip(&accepted) {
            assert_eq!(record.seq, *seq);
            assert_eq!(record.payload, payload.as_bytes());
        }
    };
    check(&outbox);
    drop(outbox);

    let (outbox, recovery) = Outbox::open(&dir, config).unwrap();
    assert!(recovery.corrupt.is_empty(), "{:?}", recovery.messages());
    check(&outbox);
    // Freeing space: the server stored everything (the cursor is written on a full disk
    // thanks to the reserve), the segments go.
    let last = accepted.last().unwrap().0;
    outbox.ack("app", last).unwrap();
    assert_eq!(outbox.backlog(), (0, 0));
    let seq = outbox
        .append("app", RecordKind::Bytes, b"after", now())
        .unwrap();
    assert_eq!(seq, last + 1);
    for _ in 0..20 {
        outbox
            .append("app", RecordKind::Bytes, &[b'y'; 2000], now())
            .unwrap();
    }
    drop(outbox);
    let (outbox, _) = Outbox::open(&dir, config).unwrap();
    let stored = drain(&outbox, "app");
    assert_eq!(stored.len(), 21);
    assert_eq!(stored[0].payload, b"after");
}

fn metric_set(at: Timestamp, i: usize) -> Vec<u8> {
    let set = MetricSet {
        time: at,
        samples: (0..12)
            .map(|k| MetricSample {
                name: format!("cpu.core{k}.used_percent"),
                labels: Default::default(),
                value: (i * 31 + k) as f64 / 7.0,
            })
            .collect(),
    };
    serde_json::to_vec(&set).unwrap()
}

#[test]
fn two_days_offline_under_a_tight_bound_account_for_every_record() {
    let dir = tempfile::tempdir().unwrap();
    let config = OutboxConfig {
        max_bytes: 512 << 10,
        segment_bytes: 16 << 10,
        max_record_bytes: 16 << 10,
    };
    let start = 1_750_000_000_000i64;
    let clock = |s: i64| from_unix_ms(start + s * 1000);
    let (mut outbox, _) = Outbox::open(dir.path(), config).unwrap();
    let app_policy = StreamPolicy {
        priority: 6,
        ttl: Duration::from_secs(24 * 3600),
    };
    outbox.set_policy("app", app_policy).unwrap();
    // Appended: records and payload bytes per stream.
    let mut appended: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    let hours = 48;
    for second in (0..hours * 3600).step_by(20) {
        if second % 60 == 0 {
            let payload = metric_set(clock(second), second as usize);
            outbox
                .append("metrics", RecordKind::Json, &payload, clock(second))
                .unwrap();
            let entry = appended.entry("metrics").or_default();
            entry.0 += 1;
            entry.1 += payload.len() as u64;
        }
        let payload = format!("reading {second} {}", "z".repeat(second as usize % 50));
        outbox
            .append("app", RecordKind::Bytes, payload.as_bytes(), clock(second))
            .unwrap();
        let entry = appended.entry("app").or_default();
        entry.0 += 1;
        entry.1 += payload.len() as u64;
        // The agent restarts twice a day.
        if second % (12 * 3600) == 0 && second > 0 {
            drop(outbox);
            let (reopened, recovery) = Outbox::open(dir.path(), config).unwrap();
            assert!(recovery.is_clean(), "{:?}", recovery.messages());
            outbox = reopened;
        }
        assert!(outbox.stats().disk_bytes <= config.max_bytes);
    }
    // Back online at the end: the uploader expires, then drains in batches.
    let end = clock(hours * 3600);
    outbox.expire(end).unwrap();
    let mut delivered: BTreeMap<String, (Vec<u64>, u64)> = BTreeMap::new();
    loop {
        let streams = outbox.streams_with_pending();
        if streams.is_empty() {
            break;
        }
        for stream in streams {
            let batch = outbox.peek(&stream, 500, 256 << 10).unwrap();
            let entry = delivered.entry(stream.clone()).or_default();
            entry.0.extend(batch.iter().map(|r| r.seq));
            entry.1 += batch.iter().map(|r| r.payload.len() as u64).sum::<u64>();
            outbox.ack(&stream, batch.last().unwrap().seq).unwrap();
        }
    }
    let dropped = outbox.dropped();
    for (stream, (records, bytes)) in &appended {
        let (seqs, delivered_bytes) = &delivered[*stream];
        // Oldest first, in order, no gaps: the drops took the oldest.
        let first = seqs[0];
        assert_eq!(
            *seqs,
            (first..=*records).collect::<Vec<_>>(),
            "{stream}: delivered records are not the newest, in order"
        );
        let (dropped_records, dropped_bytes) = dropped
            .iter()
            .filter(|d| d.stream == *stream)
            .fold((0, 0), |(r, b), d| (r + d.records, b + d.bytes));
        assert_eq!(records - seqs.len() as u64, dropped_records, "{stream}");
        assert_eq!(bytes - delivered_bytes, dropped_bytes, "{stream}");
    }
    // Both reasons happened: the bound for the lower priority, age for the data stream.
    let reason = |stream: &str, reason| {
        dropped
            .iter()
            .find(|d| d.stream == stream && d.reason == reason)
            .map_or(0, |d| d.records)
    };
    assert!(reason("metrics", DropReason::Full) > 0, "{dropped:?}");
    assert!(reason("app", DropReason::Expired) > 0, "{dropped:?}");
    assert_eq!(reason("app", DropReason::Full), 0, "{dropped:?}");
    // The data stream kept its last day (it outranks metrics).
    let app_seqs = &delivered["app"].0;
    assert!(app_seqs.len() >= 24 * 180 - 1, "{}", app_seqs.len());
    // The totals survive a restart.
    drop(outbox);
    let (outbox, _) = Outbox::open(dir.path(), config).unwrap();
    assert_eq!(outbox.dropped(), dropped);
}

// ---- The uploader against a TLS server ----------------------------------------------

#[derive(Default)]
struct Telemetry {
    /// Stored records per stream: (seq, data), once per seq.
    stored: BTreeMap<String, Vec<(u64, RecordData)>>,
    requests: usize,
    /// Every batch received, in order.
    batches: Vec<UploadBatch>,
    offline: bool,
    route_missing: bool,
    /// Requests that were not gzip-compressed JSON.
    bad_requests: Vec<String>,
}

struct TelemetryServer {
    url: String,
    ca_pem: String,
    ca: Ca,
    state: Arc<Mutex<Telemetry>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TelemetryServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TelemetryServer {
    async fn start() -> Self {
        let now = now();
        let (ca, issued) = Ca::generate("test CA", now).unwrap();
        let server = ca
            .issue_server(
                &["localhost".into()],
                &["127.0.0.1".parse().unwrap()],
                now,
                Duration::from_secs(3600),
            )
            .unwrap();
        let chain = format!("{}{}", server.cert_pem, issued.cert_pem);
        let config = edgefleet_tls::server_config(&chain, &server.key_pem, ca.cert_pem()).unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("https://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(Telemetry::default()));
        let task = {
            let state = state.clone();
            tokio::spawn(async move {
                while let Ok((tcp, _)) = listener.accept().await {
                    if state.lock().unwrap().offline {
                        continue;
                    }
                    let (acceptor, state) = (acceptor.clone(), state.clone());
                    tokio::spawn(async move {
                        if let Ok(tls) = acceptor.accept(tcp).await {
                            serve(tls, state).await;
                        }
                    });
                }
            })
        };
        Self {
            url,
            ca_pem: ca.cert_pem().to_owned(),
            ca,
            state,
            task,
        }
    }

    fn channel(&self) -> Arc<ServerChannel> {
        let key = NodeKey::generate().unwrap();
        let csr = key.csr_pem("node-a").unwrap();
        let (cert_pem, certificate) = self
            .ca
            .sign_node_csr(&csr, "node-a", now(), Duration::from_secs(3600))
            .unwrap();
        let identity = Identity {
            node: "node-a".into(),
            server_url: self.url.clone(),
            key_pem: key.to_pem(),
            cert_pem,
            ca_pem: self.ca_pem.clone(),
            certificate,
        };
        Arc::new(ServerChannel::new(&identity).unwrap())
    }

    fn with<T>(&self, f: impl FnOnce(&mut Telemetry) -> T) -> T {
        f(&mut self.state.lock().unwrap())
    }
}

async fn serve(
    mut tls: tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    state: Arc<Mutex<Telemetry>>,
) {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        match tls.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).to_lowercase();
    let header = |name: &str| {
        head.lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim() == name)
            .map(|(_, v)| v.trim().to_owned())
    };
    let length: usize = header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    while buffer.len() < head_end + length {
        match tls.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
        }
    }
    let body = &buffer[head_end..head_end + length];
    let (status, answer) = {
        let mut state = state.lock().unwrap();
        state.requests += 1;
        if !head.starts_with("post /v1/agent/telemetry ") || state.route_missing {
            (
                404,
                r#"{"code":"not_found","message":"no such route","details":[]}"#.to_owned(),
            )
        } else if header("content-encoding").as_deref() != Some("gzip")
            || header("content-type").as_deref() != Some("application/json")
        {
            state.bad_requests.push(head.clone());
            (
                400,
                r#"{"code":"bad","message":"not gzip json","details":[]}"#.to_owned(),
            )
        } else {
            let mut text = String::new();
            flate2::read::GzDecoder::new(body)
                .read_to_string(&mut text)
                .unwrap();
            let batch: UploadBatch = serde_json::from_str(&text).unwrap();
            let mut acks = Vec::new();
            for chunk in &batch.streams {
                let stored = state.stored.entry(chunk.stream.clone()).or_default();
                for record in &chunk.records {
                    if stored.last().is_none_or(|(seq, _)| record.seq > *seq) {
                        stored.push((record.seq, record.data.clone()));
                    }
                }
                acks.push(StreamAck {
                    stream: chunk.stream.clone(),
                    stored_through: stored.last().map_or(0, |(seq, _)| *seq),
                });
            }
            state.batches.push(batch);
            (
                200,
                serde_json::to_string(&UploadAck { streams: acks }).unwrap(),
            )
        }
    };
    let reply = format!(
        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
        answer.len()
    );
    let _ = tls.write_all(reply.as_bytes()).await;
    let _ = tls.shutdown().await;
}

async fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn open_outbox(dir: &Path) -> Arc<Outbox> {
    Arc::new(Outbox::open(dir, OutboxConfig::default()).unwrap().0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_appended_while_the_server_is_unreachable_arrive_once_and_in_order() {
    let server = TelemetryServer::start().await;
    server.with(|s| s.offline = true);
    let dir = tempfile::tempdir().unwrap();
    let outbox = open_outbox(dir.path());
    let (trigger, shutdown) = shutdown::channel();
    let config = UploaderConfig {
        flush_interval: Duration::from_millis(50),
        stream_meta: Arc::new(|stream: &str| (format!("sink-{stream}"), "shop".to_owned())),
        ..UploaderConfig::default()
    };
    let counters = config.counters.clone();
    let task = tokio::spawn(uploader::run(
        outbox.clone(),
        server.channel(),
        config,
        shutdown,
    ));
    // 600 KiB of records: more than two batches.
    let appender = {
        let outbox = outbox.clone();
        tokio::task::spawn_blocking(move || {
            for i in 0..300u64 {
                outbox
                    .append(
                        "app",
                        RecordKind::Bytes,
                        &[b'a' + (i % 26) as u8; 2048],
                        now(),
                    )
                    .unwrap();
                let json = format!(r#"{{"i":{i}}}"#);
                outbox
                    .append("metrics", RecordKind::Json, json.as_bytes(), now())
                    .unwrap();
            }
        })
    };
    appender.await.unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(server.with(|s| s.stored.is_empty()));
    server.with(|s| s.offline = false);
    // The counters are updated just after the outbox forgets the records.
    wait_for("the backlog to drain", Duration::from_secs(30), || {
        outbox.backlog() == (0, 0) && counters.totals().records_stored == 600
    })
    .await;
    trigger.trigger();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("the uploader stops at shutdown")
        .unwrap();

    server.with(|s| {
        assert!(s.bad_requests.is_empty(), "{:?}", s.bad_requests);
        let app = &s.stored["app"];
        assert_eq!(
            app.iter().map(|(seq, _)| *seq).collect::<Vec<_>>(),
            (1..=300).collect::<Vec<_>>()
        );
        assert!(matches!(&app[0].1, RecordData::Bytes(b) if b.starts_with("YWFh")));
        let metrics = &s.stored["metrics"];
        assert_eq!(metrics.len(), 300);
        assert_eq!(metrics[7].1, RecordData::Json(serde_json::json!({"i": 7})));
        // Batches stay near the payload budget and carry the outbox's identity.
        assert!(s.batches.len() >= 3, "{} batches", s.batches.len());
        for batch in &s.batches {
            assert_eq!(batch.outbox, outbox.id());
            let app_records = batch
                .streams
                .iter()
                .filter(|c| c.stream == "app")
                .map(|c| c.records.len())
                .sum::<usize>();
            assert!(
                app_records * 2048 <= 256 << 10,
                "{app_records} records of 2 KiB"
            );
            for chunk in &batch.streams {
                assert_eq!(chunk.sink, format!("sink-{}", chunk.stream));
                assert_eq!(chunk.deployment, "shop");
                assert!(chunk.records.windows(2).all(|w| w[0].seq + 1 == w[1].seq));
            }
        }
    });
    let totals = counters.totals();
    assert!(
        totals.bytes_sent > 0 && totals.bytes_received > 0,
        "{totals:?}"
    );
    assert!(totals.failed_requests > 0, "{totals:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_appended_close_together_share_one_request() {
    let server = TelemetryServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let outbox = open_outbox(dir.path());
    let (trigger, shutdown) = shutdown::channel();
    let config = UploaderConfig {
        flush_interval: Duration::from_millis(700),
        ..UploaderConfig::default()
    };
    let task = tokio::spawn(uploader::run(
        outbox.clone(),
        server.channel(),
        config,
        shutdown,
    ));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let writer = outbox.clone();
    tokio::task::spawn_blocking(move || {
        for i in 0..5 {
            writer
                .append("app", RecordKind::Bytes, format!("r{i}").as_bytes(), now())
                .unwrap();
            std::thread::sleep(Duration::from_millis(50));
        }
    })
    .await
    .unwrap();
    wait_for("the records to arrive", Duration::from_secs(10), || {
        outbox.backlog() == (0, 0)
    })
    .await;
    trigger.trigger();
    task.await.unwrap();
    server.with(|s| {
        assert_eq!(
            s.requests, 1,
            "one request for records within the flush interval"
        );
        assert_eq!(s.stored["app"].len(), 5);
        assert_eq!(s.batches[0].streams[0].sink, "default");
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_server_without_the_route_is_asked_rarely() {
    let server = TelemetryServer::start().await;
    server.with(|s| s.route_missing = true);
    let dir = tempfile::tempdir().unwrap();
    let outbox = open_outbox(dir.path());
    outbox
        .append("app", RecordKind::Bytes, b"waits", now())
        .unwrap();
    let (trigger, shutdown) = shutdown::channel();
    let config = UploaderConfig {
        flush_interval: Duration::ZERO,
        ..UploaderConfig::default()
    };
    let task = tokio::spawn(uploader::run(
        outbox.clone(),
        server.channel(),
        config,
        shutdown,
    ));
    wait_for("the first request", Duration::from_secs(10), || {
        server.with(|s| s.requests) == 1
    })
    .await;
    // More records do not make it ask again before `OLD_SERVER_RETRY`.
    for _ in 0..3 {
        outbox
            .append("app", RecordKind::Bytes, b"more", now())
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(server.with(|s| s.requests), 1);
    assert_eq!(outbox.backlog().1, 4);
    trigger.trigger();
    task.await.unwrap();
}
