//! Health probes against real listeners and commands on loopback: verdicts, thresholds,
//! reasons, timeouts, the initial delay, and stopping when the handle is dropped.

// Test helpers outside `#[test]` functions panic with a message on purpose, like tests.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use edgefleet_agent::health::{self, HostExec};
use edgefleet_agent::runtime::ExecInWorkload;
use edgefleet_core::supervisor::Event;
use edgefleet_wire::DurationSpec;
use edgefleet_wire::manifest::WorkloadSpec;
use edgefleet_wire::workload::{ExecProbe, HttpGetProbe, Probe, ProbeAction, TcpSocketProbe};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

const INSTANCE: u64 = 7;
/// How long any expected event may take on a slow, shared machine.
const DEADLINE: Duration = Duration::from_secs(10);

fn ms(n: u64) -> DurationSpec {
    DurationSpec(Duration::from_millis(n))
}

/// `action` probed every `period_ms` with a timeout of the same length.
fn probe(action: ProbeAction<'_>, period_ms: u64, success: u32, failure: u32) -> Probe {
    let mut probe = Probe::new(action);
    probe.period = ms(period_ms);
    probe.timeout = ms(period_ms);
    probe.success_threshold = success;
    probe.failure_threshold = failure;
    probe
}

fn tcp(port: u16) -> TcpSocketProbe {
    TcpSocketProbe { port, host: None }
}

fn exec(command: &[&str]) -> ExecProbe {
    ExecProbe {
        command: command.iter().map(|s| (*s).to_owned()).collect(),
    }
}

fn spec(liveness: Option<Probe>, readiness: Option<Probe>) -> WorkloadSpec {
    let mut spec = WorkloadSpec::process("web", "/bin/true");
    spec.liveness_probe = liveness;
    spec.readiness_probe = readiness;
    spec
}

type Events = mpsc::UnboundedReceiver<Event>;

fn start(spec: &WorkloadSpec) -> (health::ProbeHandle, Events) {
    let (events, rx) = mpsc::unbounded_channel();
    let handle = health::spawn("web", INSTANCE, spec, Arc::new(HostExec), events)
        .expect("the spec has probes");
    (handle, rx)
}

async fn next_event(rx: &mut Events, waiting_for: &str) -> Event {
    match tokio::time::timeout(DEADLINE, rx.recv()).await {
        Ok(Some(event)) => event,
        Ok(None) => panic!("the event channel closed while waiting for {waiting_for}"),
        Err(_) => panic!("no event within {DEADLINE:?} while waiting for {waiting_for}"),
    }
}

fn readiness(ready: bool, reason: Option<String>) -> Event {
    Event::Readiness {
        name: "web".into(),
        instance: INSTANCE,
        ready,
        reason,
    }
}

/// Polls `condition` until it holds or the deadline passes.
async fn wait_until(what: &str, condition: impl Fn() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An HTTP server answering every request with the status in `status`; it records the
/// requests and the statuses it served.
struct StatusServer {
    port: u16,
    status: Arc<AtomicU16>,
    served: Arc<Mutex<Vec<u16>>>,
    requests: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl StatusServer {
    async fn start(status: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let status = Arc::new(AtomicU16::new(status));
        let served = Arc::new(Mutex::new(Vec::new()));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn({
            let (status, served, requests) = (status.clone(), served.clone(), requests.clone());
            async move {
                loop {
                    let Ok((mut stream, _)) = listener.accept().await else {
                        return;
                    };
                    let mut request = Vec::new();
                    let mut buffer = [0u8; 1024];
                    while !request.ends_with(b"\r\n\r\n") && request.len() < 8192 {
                        match stream.read(&mut buffer).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => request.extend_from_slice(&buffer[..n]),
                        }
                    }
                    requests
                        .lock()
                        .unwrap()
                        .push(String::from_utf8_lossy(&request).into_owned());
                    let code = status.load(Ordering::SeqCst);
                    served.lock().unwrap().push(code);
                    let response = format!(
                        "HTTP/1.1 {code} Whatever\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello"
                    );
                    let _ = stream.write_all(response.as_bytes()).await;
                }
            }
        });
        Self {
            port,
            status,
            served,
            requests,
            task,
        }
    }

    fn served(&self, code: u16) -> usize {
        self.served
            .lock()
            .unwrap()
            .iter()
            .filter(|&&c| c == code)
            .count()
    }
}

impl Drop for StatusServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test]
async fn readiness_follows_the_http_status_after_the_thresholds() {
    let server = StatusServer::start(200).await;
    let http = HttpGetProbe {
        port: server.port,
        path: "/healthz".into(),
        host: None,
    };
    let (_handle, mut rx) = start(&spec(
        None,
        Some(probe(ProbeAction::HttpGet(&http), 150, 2, 3)),
    ));

    assert_eq!(next_event(&mut rx, "ready").await, readiness(true, None));
    assert!(server.served(200) >= 2, "ready after 2 successes");
    let request = server.requests.lock().unwrap()[0].clone();
    assert!(
        request.starts_with("GET /healthz HTTP/1.1\r\n"),
        "{request}"
    );
    assert!(
        request.contains(&format!("\r\nHost: 127.0.0.1:{}\r\n", server.port)),
        "{request}"
    );
    assert!(request.contains("\r\nConnection: close\r\n"), "{request}");

    server.status.store(503, Ordering::SeqCst);
    let expected_reason = format!(
        "HTTP probe GET http://127.0.0.1:{}/healthz: status 503",
        server.port
    );
    assert_eq!(
        next_event(&mut rx, "not ready").await,
        readiness(false, Some(expected_reason))
    );
    assert!(server.served(503) >= 3, "not ready after 3 failures");

    server.status.store(302, Ordering::SeqCst);
    assert_eq!(
        next_event(&mut rx, "ready again").await,
        readiness(true, None)
    );
    assert!(server.served(302) >= 2, "a redirect counts as success");
    assert!(rx.try_recv().is_err(), "one event per change");
}

#[tokio::test]
async fn liveness_reports_unhealthy_once_when_the_tcp_listener_closes() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let acceptor = tokio::spawn({
        let accepted = accepted.clone();
        async move {
            while listener.accept().await.is_ok() {
                accepted.fetch_add(1, Ordering::SeqCst);
            }
        }
    });
    let (_handle, mut rx) = start(&spec(
        Some(probe(ProbeAction::TcpSocket(&tcp(port)), 100, 1, 3)),
        None,
    ));
    let probed = accepted.clone();
    wait_until("the probe connected twice", move || {
        probed.load(Ordering::SeqCst) >= 2
    })
    .await;
    assert!(
        rx.try_recv().is_err(),
        "a healthy liveness probe sends nothing"
    );

    acceptor.abort();
    let _ = acceptor.await;
    let closed = Instant::now();
    let event = next_event(&mut rx, "unhealthy").await;
    assert_eq!(
        event,
        Event::Unhealthy {
            name: "web".into(),
            instance: INSTANCE,
            reason: format!("TCP probe 127.0.0.1:{port}: connection refused"),
        }
    );
    // Three failures on a 100 ms grid take at least two periods.
    assert!(
        closed.elapsed() >= Duration::from_millis(190),
        "{:?}",
        closed.elapsed()
    );
    // Probing of this instance is over: no second event, even after many periods.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(rx.try_recv().is_err(), "unhealthy is sent once");
}

#[tokio::test]
async fn exec_readiness_follows_the_exit_code() {
    let dir = tempfile::tempdir().unwrap();
    let flag = dir.path().join("ok");
    let flag_arg = flag.to_str().unwrap();
    let command = exec(&["sh", "-c", &format!("test -e {flag_arg}")]);
    let (_handle, mut rx) = start(&spec(
        None,
        Some(probe(ProbeAction::Exec(&command), 100, 1, 2)),
    ));

    assert_eq!(
        next_event(&mut rx, "not ready").await,
        readiness(
            false,
            Some(format!(
                "exec probe [sh -c test -e {flag_arg}]: exit code 1"
            ))
        )
    );
    std::fs::write(&flag, "").unwrap();
    assert_eq!(next_event(&mut rx, "ready").await, readiness(true, None));
}

#[tokio::test]
async fn exec_liveness_times_out_and_restarts() {
    let command = exec(&["sleep", "5"]);
    let mut liveness = probe(ProbeAction::Exec(&command), 200, 1, 1);
    liveness.timeout = ms(200);
    let started = Instant::now();
    let (_handle, mut rx) = start(&spec(Some(liveness), None));
    assert_eq!(
        next_event(&mut rx, "unhealthy").await,
        Event::Unhealthy {
            name: "web".into(),
            instance: INSTANCE,
            reason: "exec probe [sleep 5]: timed out after 200ms".into(),
        }
    );
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "the attempt was cut at its timeout, not after sleep's 5 s: {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn the_first_attempt_waits_for_the_initial_delay() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut readiness_probe = probe(ProbeAction::TcpSocket(&tcp(port)), 100, 1, 1);
    readiness_probe.initial_delay = ms(400);
    let started = Instant::now();
    let (_handle, mut rx) = start(&spec(None, Some(readiness_probe)));
    let accepted = tokio::time::timeout(DEADLINE, listener.accept()).await;
    let first_attempt = started.elapsed();
    assert!(accepted.is_ok(), "no probe connection within {DEADLINE:?}");
    assert!(
        first_attempt >= Duration::from_millis(400),
        "probed {first_attempt:?} after start, before the 400ms initial delay"
    );
    assert_eq!(next_event(&mut rx, "ready").await, readiness(true, None));
}

#[tokio::test]
async fn dropping_the_handle_stops_probing() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let acceptor = tokio::spawn({
        let accepted = accepted.clone();
        async move {
            while listener.accept().await.is_ok() {
                accepted.fetch_add(1, Ordering::SeqCst);
            }
        }
    });
    let (handle, mut rx) = start(&spec(
        Some(probe(ProbeAction::TcpSocket(&tcp(port)), 100, 1, 3)),
        Some(probe(ProbeAction::TcpSocket(&tcp(port)), 100, 1, 3)),
    ));
    assert_eq!(next_event(&mut rx, "ready").await, readiness(true, None));
    let probed = accepted.clone();
    wait_until("both probes connected a few times", move || {
        probed.load(Ordering::SeqCst) >= 4
    })
    .await;

    drop(handle);
    // A connection already under way when the handle went may still land.
    tokio::time::sleep(Duration::from_millis(150)).await;
    let after_drop = accepted.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        after_drop,
        "probes ran after their handle was dropped"
    );
    let closed = tokio::time::timeout(DEADLINE, rx.recv()).await;
    assert!(
        matches!(closed, Ok(None)),
        "the probe tasks are gone, and with them their event senders: {closed:?}"
    );
    acceptor.abort();
}

#[tokio::test]
async fn no_probes_no_handle_and_invalid_readiness_is_reported() {
    let (events, mut rx) = mpsc::unbounded_channel();
    assert!(
        health::spawn(
            "web",
            1,
            &spec(None, None),
            Arc::new(HostExec),
            events.clone()
        )
        .is_none()
    );

    let mut invalid = probe(ProbeAction::TcpSocket(&tcp(0)), 100, 1, 1);
    invalid.exec = Some(exec(&["true"]));
    let handle = health::spawn(
        "web",
        INSTANCE,
        &spec(None, Some(invalid)),
        Arc::new(HostExec),
        events,
    );
    assert!(handle.is_some());
    assert_eq!(
        next_event(&mut rx, "not ready").await,
        readiness(
            false,
            Some(
                "invalid readinessProbe: a probe has exactly one of exec, httpGet and tcpSocket, not exec and tcpSocket"
                    .into()
            )
        )
    );
}

#[tokio::test]
async fn http_probe_reports_what_went_wrong() {
    // A server that speaks something else than HTTP.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let _ = stream.write_all(b"SSH-2.0-OpenSSH_9.6\r\n").await;
        }
    });
    let http = HttpGetProbe {
        port,
        path: "/".into(),
        host: Some("127.0.0.1".into()),
    };
    let (_handle, mut rx) = start(&spec(
        None,
        Some(probe(ProbeAction::HttpGet(&http), 100, 1, 1)),
    ));
    assert_eq!(
        next_event(&mut rx, "not ready").await,
        readiness(
            false,
            Some(format!(
                "HTTP probe GET http://127.0.0.1:{port}/: malformed status line \"SSH-2.0-OpenSSH_9.6\" (not an HTTP/1 response)"
            ))
        )
    );
    server.abort();

    // A server that accepts and never answers.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let silent = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            open.push(stream);
        }
    });
    let http = HttpGetProbe {
        port,
        path: "/healthz".into(),
        host: None,
    };
    let (_handle, mut rx) = start(&spec(
        None,
        Some(probe(ProbeAction::HttpGet(&http), 200, 1, 1)),
    ));
    assert_eq!(
        next_event(&mut rx, "not ready").await,
        readiness(
            false,
            Some(format!(
                "HTTP probe GET http://127.0.0.1:{port}/healthz: timed out after 200ms"
            ))
        )
    );
    silent.abort();
}

fn run(command: &[&str], timeout_ms: u64) -> impl Future<Output = Result<i32, String>> {
    let command: Vec<String> = command.iter().map(|s| (*s).to_owned()).collect();
    async move {
        HostExec
            .exec("web", &command, Duration::from_millis(timeout_ms))
            .await
    }
}

/// Whether `pid` is gone (or a zombie waiting to be reaped, which runs nothing).
fn gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z')),
    }
}

fn read_pids(path: &Path) -> Vec<u32> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.trim().parse().ok())
        .collect()
}

#[tokio::test]
async fn host_exec_returns_exit_codes_and_kills_the_group_on_timeout() {
    assert_eq!(run(&["true"], 2000).await, Ok(0));
    assert_eq!(run(&["sh", "-c", "exit 3"], 2000).await, Ok(3));
    assert_eq!(
        run(&["sh", "-c", "kill -9 $$"], 2000).await,
        Err("killed by signal 9".into())
    );
    let missing = run(&["/nonexistent/probe"], 2000).await.unwrap_err();
    assert!(
        missing.starts_with("spawning \"/nonexistent/probe\": ")
            && missing.contains("No such file"),
        "{missing}"
    );
    assert_eq!(run(&[], 2000).await, Err("the command is empty".into()));

    // A shell with a background child: both must die at the timeout.
    let dir = tempfile::tempdir().unwrap();
    let pids = dir.path().join("pids");
    let script = format!(
        "sleep 30 & echo $! > {0}; echo $$ >> {0}; wait",
        pids.display()
    );
    let started = Instant::now();
    let result = run(&["sh", "-c", &script], 300).await;
    assert_eq!(result, Err("timed out after 300ms".into()));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "returned {:?} after the start",
        started.elapsed()
    );
    let pids = read_pids(&pids);
    assert_eq!(
        pids.len(),
        2,
        "the script wrote the shell's and sleep's pids"
    );
    wait_until("the probe's processes are gone", || {
        pids.iter().all(|&pid| gone(pid))
    })
    .await;
}

#[tokio::test]
async fn dropping_the_handle_kills_a_running_exec_probe() {
    let dir = tempfile::tempdir().unwrap();
    let pids = dir.path().join("pids");
    let script = format!("echo $$ > {}; exec sleep 30", pids.display());
    let command = exec(&["sh", "-c", &script]);
    let mut liveness = probe(ProbeAction::Exec(&command), 20_000, 1, 1);
    liveness.timeout = ms(20_000);
    let (handle, _rx) = start(&spec(Some(liveness), None));
    let written = pids.clone();
    wait_until("the probe command started", move || {
        read_pids(&written).len() == 1
    })
    .await;
    let pid = read_pids(&pids)[0];
    assert!(!gone(pid), "the probe command runs");
    drop(handle);
    wait_until("the probe command is killed", || gone(pid)).await;
}
