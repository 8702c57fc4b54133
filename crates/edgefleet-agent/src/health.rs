//! Health probes: the IO half of `edgefleet_core::probe`.
//!
//! `spawn` starts one task per probe of a running instance (liveness, readiness). Each task
//! sleeps until its `ProbeTracker` says the next attempt is due, runs the attempt within the
//! probe's timeout, and records the result; the tracker decides what a run of results
//! means. Verdicts become supervisor events: a liveness probe's *unhealthy* verdict sends
//! `Event::Unhealthy` once and ends that probe (the supervisor restarts the instance, and
//! the new instance gets probes of its own); every readiness verdict sends
//! `Event::Readiness`. The agent decides nothing else here: restarts are the supervisor's.
//!
//! Attempts:
//! - `httpGet`: a plain HTTP/1.1 `GET` (no TLS) with `Host` and `Connection: close`; only
//!   the status line is read, never the body; 200 to 399 is success, redirects are not
//!   followed.
//! - `tcpSocket`: a connection that is accepted within the timeout is success.
//! - `exec`: runs through an `ExecInWorkload` (inside the container for containers; on the
//!   node through `HostExec` for processes and WebAssembly modules); exit code 0 is success.
//!
//! Network probes go from the node (the agent), so `127.0.0.1` is the node itself: right for
//! processes and for containers on the host network; a bridged container is reached on the
//! host port it publishes.

use std::io;
use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use edgefleet_core::probe::{ProbeResult, ProbeTracker, Verdict, validate};
use edgefleet_core::supervisor::Event;
use edgefleet_wire::DurationSpec;
use edgefleet_wire::manifest::WorkloadSpec;
use edgefleet_wire::workload::{DEFAULT_PROBE_HOST, Probe, ProbeAction};
use futures_util::future::BoxFuture;
use nix::sys::signal::Signal;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::runtime::{EventSender, ExecInWorkload, pidfile};

/// The most of an HTTP response read while looking for the status line.
const MAX_STATUS_LINE: usize = 8 * 1024;
/// How much longer than the probe's timeout an exec attempt may take before the prober
/// gives up on it: the `ExecInWorkload` enforces the timeout itself (and kills the command),
/// this only guards against one that does not return.
const EXEC_GRACE: Duration = Duration::from_secs(2);

/// The probe tasks of one instance. Dropping it stops them (an attempt in flight is
/// abandoned, and an exec probe's command killed).
#[derive(Debug)]
pub struct ProbeHandle {
    tasks: JoinSet<()>,
}

impl Drop for ProbeHandle {
    fn drop(&mut self) {
        self.tasks.abort_all();
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Liveness,
    Readiness,
}

impl Kind {
    fn field(self) -> &'static str {
        match self {
            Self::Liveness => "livenessProbe",
            Self::Readiness => "readinessProbe",
        }
    }
}

/// Starts probing instance `instance` of workload `name`, which started just now; `None`
/// when `spec` has no probes. Exec probes run through `exec`; verdicts go to `events`.
///
/// Must be called inside a Tokio runtime (it spawns tasks there). A probe that fails
/// validation (the server refuses such manifests, so only a damaged desired state has one)
/// is not run: an invalid readiness probe is reported as not ready with the reason, an
/// invalid liveness probe is logged and ignored (it must not restart a healthy workload).
pub fn spawn(
    name: &str,
    instance: u64,
    spec: &WorkloadSpec,
    exec: Arc<dyn ExecInWorkload>,
    events: EventSender,
) -> Option<ProbeHandle> {
    let probes = [
        (Kind::Liveness, spec.liveness_probe.as_ref()),
        (Kind::Readiness, spec.readiness_probe.as_ref()),
    ];
    if probes.iter().all(|(_, probe)| probe.is_none()) {
        return None;
    }
    let started = now();
    let mut tasks = JoinSet::new();
    for (kind, probe) in probes {
        let Some(probe) = probe else { continue };
        let target = validate(probe).and_then(|()| {
            Target::new(probe).ok_or_else(|| (String::new(), "the probe has no action".into()))
        });
        let target = match target {
            Ok(target) => target,
            Err((field, message)) => {
                let field = if field.is_empty() {
                    kind.field().to_owned()
                } else {
                    format!("{}.{field}", kind.field())
                };
                report_invalid(name, instance, kind, &field, &message, &events);
                continue;
            }
        };
        let prober = Prober {
            kind,
            name: name.to_owned(),
            instance,
            target,
            exec: exec.clone(),
            events: events.clone(),
        };
        tasks.spawn(prober.run(ProbeTracker::new(probe, started)));
    }
    Some(ProbeHandle { tasks })
}

fn report_invalid(
    name: &str,
    instance: u64,
    kind: Kind,
    field: &str,
    message: &str,
    events: &EventSender,
) {
    match kind {
        Kind::Liveness => {
            warn!(
                workload = name,
                instance, field, message, "not running an invalid liveness probe"
            );
        }
        Kind::Readiness => {
            let _ = events.send(Event::Readiness {
                name: name.to_owned(),
                instance,
                ready: false,
                reason: Some(format!("invalid {field}: {message}")),
            });
        }
    }
}

/// The monotonic clock, through Tokio so that tests with paused time see the same time.
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// One probe of one instance.
struct Prober {
    kind: Kind,
    name: String,
    instance: u64,
    target: Target,
    exec: Arc<dyn ExecInWorkload>,
    events: EventSender,
}

impl Prober {
    async fn run(self, mut tracker: ProbeTracker) {
        loop {
            tokio::time::sleep_until(tracker.next_due().into()).await;
            let result = self
                .target
                .attempt(&*self.exec, &self.name, tracker.timeout())
                .await;
            if let ProbeResult::Failure(reason) = &result {
                debug!(
                    workload = self.name,
                    instance = self.instance,
                    probe = self.kind.field(),
                    reason,
                    "probe failed"
                );
            }
            let Some(verdict) = tracker.record(now(), result) else {
                continue;
            };
            let event = match (self.kind, verdict) {
                (Kind::Liveness, Verdict::Healthy) => continue,
                (Kind::Liveness, Verdict::Unhealthy(reason)) => {
                    warn!(
                        workload = self.name,
                        instance = self.instance,
                        reason,
                        "liveness probe failed; the instance will be restarted"
                    );
                    Event::Unhealthy {
                        name: self.name.clone(),
                        instance: self.instance,
                        reason,
                    }
                }
                (Kind::Readiness, verdict) => {
                    let (ready, reason) = match verdict {
                        Verdict::Healthy => (true, None),
                        Verdict::Unhealthy(reason) => (false, Some(reason)),
                    };
                    info!(
                        workload = self.name,
                        instance = self.instance,
                        ready,
                        reason,
                        "readiness changed"
                    );
                    Event::Readiness {
                        name: self.name.clone(),
                        instance: self.instance,
                        ready,
                        reason,
                    }
                }
            };
            let restarting = matches!(event, Event::Unhealthy { .. });
            // A closed channel means the agent is going away; a restart means this
            // instance's probing is over.
            if self.events.send(event).is_err() || restarting {
                return;
            }
        }
    }
}

/// What an attempt does, resolved once from the probe.
#[derive(Debug, Clone)]
enum Target {
    Exec {
        command: Vec<String>,
    },
    HttpGet {
        host: String,
        port: u16,
        path: String,
    },
    TcpSocket {
        host: String,
        port: u16,
    },
}

impl Target {
    fn new(probe: &Probe) -> Option<Self> {
        let host = |host: &Option<String>| host.as_deref().unwrap_or(DEFAULT_PROBE_HOST).to_owned();
        Some(match probe.action()? {
            ProbeAction::Exec(exec) => Self::Exec {
                command: exec.command.clone(),
            },
            ProbeAction::HttpGet(http) => Self::HttpGet {
                host: host(&http.host),
                port: http.port,
                path: http.path.clone(),
            },
            ProbeAction::TcpSocket(tcp) => Self::TcpSocket {
                host: host(&tcp.host),
                port: tcp.port,
            },
        })
    }

    /// Names the attempt in reasons: `HTTP probe GET http://127.0.0.1:8080/healthz`.
    fn describe(&self) -> String {
        match self {
            Self::Exec { command } => format!("exec probe [{}]", command.join(" ")),
            Self::HttpGet { host, port, path } => {
                format!("HTTP probe GET http://{}{path}", authority(host, *port))
            }
            Self::TcpSocket { host, port } => format!("TCP probe {}", authority(host, *port)),
        }
    }

    async fn attempt(
        &self,
        exec: &dyn ExecInWorkload,
        workload: &str,
        timeout: Duration,
    ) -> ProbeResult {
        let outcome = match self {
            Self::Exec { command } => {
                let run = exec.exec(workload, command, timeout);
                match tokio::time::timeout(timeout.saturating_add(EXEC_GRACE), run).await {
                    Ok(Ok(0)) => Ok(Ok(())),
                    Ok(Ok(code)) => Ok(Err(format!("exit code {code}"))),
                    Ok(Err(error)) => Ok(Err(error)),
                    Err(elapsed) => Err(elapsed),
                }
            }
            Self::HttpGet { host, port, path } => {
                tokio::time::timeout(timeout, http_get(host, *port, path)).await
            }
            Self::TcpSocket { host, port } => {
                let connect = TcpStream::connect((host.as_str(), *port));
                match tokio::time::timeout(timeout, connect).await {
                    Ok(Ok(_stream)) => Ok(Ok(())),
                    Ok(Err(error)) => Ok(Err(describe_io(&error))),
                    Err(elapsed) => Err(elapsed),
                }
            }
        };
        match outcome {
            Ok(Ok(())) => ProbeResult::Success,
            Ok(Err(why)) => ProbeResult::Failure(format!("{}: {why}", self.describe())),
            Err(_) => ProbeResult::Failure(format!(
                "{}: timed out after {}",
                self.describe(),
                DurationSpec(timeout)
            )),
        }
    }
}

/// `host:port`, with brackets around an IPv6 address.
fn authority(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// One `GET`; `Ok` for a status from 200 to 399, else what was wrong.
async fn http_get(host: &str, port: u16, path: &str) -> Result<(), String> {
    let mut stream = TcpStream::connect((host, port))
        .await
        .map_err(|error| describe_io(&error))?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: edgefleet-probe\r\nAccept: */*\r\n\
         Connection: close\r\n\r\n",
        authority(host, port)
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|error| format!("sending the request: {}", describe_io(&error)))?;
    let mut head = Vec::with_capacity(256);
    let mut buffer = [0u8; 1024];
    let line = loop {
        if let Some(end) = head.iter().position(|&b| b == b'\n') {
            break &head[..end];
        }
        if head.len() >= MAX_STATUS_LINE {
            return Err(format!(
                "no status line in the first {MAX_STATUS_LINE} bytes of the response"
            ));
        }
        let n = stream
            .read(&mut buffer)
            .await
            .map_err(|error| format!("reading the response: {}", describe_io(&error)))?;
        if n == 0 {
            return Err(if head.is_empty() {
                "the connection closed without a response".to_owned()
            } else {
                "the response ended inside its status line".to_owned()
            });
        }
        head.extend_from_slice(&buffer[..n]);
    };
    let status = parse_status_line(line)?;
    if (200..400).contains(&status) {
        Ok(())
    } else {
        Err(format!("status {status}"))
    }
}

/// The status code of `HTTP/1.x NNN reason` (the line without its `\n`).
fn parse_status_line(line: &[u8]) -> Result<u16, String> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let malformed = || {
        let shown: String = String::from_utf8_lossy(line).chars().take(80).collect();
        format!("malformed status line {shown:?} (not an HTTP/1 response)")
    };
    let rest = line.strip_prefix(b"HTTP/1.").ok_or_else(malformed)?;
    let code = match rest {
        [minor, b' ', a, b, c, tail @ ..]
            if minor.is_ascii_digit() && (tail.is_empty() || tail[0] == b' ') =>
        {
            [*a, *b, *c]
        }
        _ => return Err(malformed()),
    };
    if !code.iter().all(u8::is_ascii_digit) {
        return Err(malformed());
    }
    Ok(code
        .iter()
        .fold(0u16, |status, digit| status * 10 + u16::from(digit - b'0')))
}

/// An IO error as a reason: the plain kind ("connection refused") when that says it all,
/// the full error otherwise (name resolution failures carry their own message).
fn describe_io(error: &io::Error) -> String {
    use io::ErrorKind::*;
    match error.kind() {
        kind @ (ConnectionRefused | ConnectionReset | ConnectionAborted | NotConnected
        | AddrNotAvailable | HostUnreachable | NetworkUnreachable | NetworkDown
        | BrokenPipe | TimedOut | UnexpectedEof) => kind.to_string(),
        _ => error.to_string(),
    }
}

/// Runs exec probes on the node itself, for processes and WebAssembly modules.
///
/// The command runs directly (no shell: `command[0]` is the program, looked up in `PATH`)
/// with the agent's environment, stdin from /dev/null and its output discarded, in a
/// process group of its own. On timeout, and once it exits, the whole group is killed, so
/// a probe never leaves processes behind.
#[derive(Debug, Clone, Copy, Default)]
pub struct HostExec;

impl ExecInWorkload for HostExec {
    fn exec<'a>(
        &'a self,
        _workload: &'a str,
        command: &'a [String],
        timeout: Duration,
    ) -> BoxFuture<'a, Result<i32, String>> {
        Box::pin(exec_on_host(command, timeout))
    }
}

async fn exec_on_host(command: &[String], timeout: Duration) -> Result<i32, String> {
    let (program, args) = command
        .split_first()
        .ok_or_else(|| "the command is empty".to_owned())?;
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|error| format!("spawning {program:?}: {error}"))?;
    let Some(pid) = child.id() else {
        return Err(format!("{program:?} exited before its pid could be read"));
    };
    // Kills the group if this future is dropped mid-wait (the probe was stopped).
    let mut group = GroupKiller(Some(pid));
    let waited = tokio::time::timeout(timeout, child.wait()).await;
    group.kill();
    let status = match waited {
        Ok(status) => status.map_err(|error| format!("waiting for {program:?}: {error}"))?,
        Err(_) => {
            // Killed just now: reap it so it does not linger as a zombie.
            let _ = tokio::time::timeout(Duration::from_secs(1), child.wait()).await;
            return Err(format!("timed out after {}", DurationSpec(timeout)));
        }
    };
    match (status.code(), status.signal()) {
        (Some(code), _) => Ok(code),
        (None, Some(signal)) => Err(format!("killed by signal {signal}")),
        (None, None) => Err(format!("{program:?} ended without an exit code")),
    }
}

/// Kills a probe command's process group, once, at the latest when dropped.
struct GroupKiller(Option<u32>);

impl GroupKiller {
    fn kill(&mut self) {
        if let Some(pid) = self.0.take() {
            pidfile::signal_group(pid, Signal::SIGKILL);
        }
    }
}

impl Drop for GroupKiller {
    fn drop(&mut self) {
        self.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(line: &str, expected: Result<u16, &str>) {
        let got = parse_status_line(line.as_bytes());
        match (got, expected) {
            (Ok(got), Ok(expected)) => assert_eq!(got, expected, "{line:?}"),
            (Err(got), Err(part)) => assert!(got.contains(part), "{got:?} lacks {part:?}"),
            (got, expected) => panic!("{line:?}: got {got:?}, expected {expected:?}"),
        }
    }

    #[test]
    fn status_lines() {
        check("HTTP/1.1 200 OK\r", Ok(200));
        check("HTTP/1.0 503 Service Unavailable", Ok(503));
        check("HTTP/1.1 204", Ok(204));
        check("HTTP/1.1 302 \r", Ok(302));
        check("HTTP/2 200", Err("malformed status line \"HTTP/2 200\""));
        check("HTTP/1.1 20 OK", Err("malformed"));
        check("HTTP/1.1 2000 OK", Err("malformed"));
        check("HTTP/1.1 2x0 OK", Err("malformed"));
        check("SSH-2.0-OpenSSH_9.6", Err("not an HTTP/1 response"));
        check("", Err("malformed"));
        let long = format!("\u{fffd}{}", "x".repeat(500));
        let Err(message) = parse_status_line(long.as_bytes()) else {
            panic!("accepted garbage");
        };
        assert!(message.len() < 200, "the reason stays short: {message}");
    }

    #[test]
    fn authorities_bracket_ipv6() {
        assert_eq!(authority("127.0.0.1", 80), "127.0.0.1:80");
        assert_eq!(authority("fd00::1", 8080), "[fd00::1]:8080");
        assert_eq!(authority("db.local", 5432), "db.local:5432");
    }
}
