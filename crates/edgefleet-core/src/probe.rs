//! Health probes: when to run the next attempt, and what a run of results means.
//!
//! A `ProbeTracker` is the pure half of one probe of one workload instance (the agent's
//! `health` module owns the sockets, processes and clock). The shell asks it when the next
//! attempt is due, runs the attempt with `timeout()`, and hands it the result with `record`;
//! the tracker answers with a `Verdict` when, and only when, the probe's verdict changes.
//! `validate` checks a `Probe` for the manifest validator.
//!
//! Semantics, decided here once (they follow Kubernetes):
//! - **Schedule.** The first attempt is due `initialDelay` after the instance started. Later
//!   attempts stay on the fixed grid `started + initialDelay + k·period`, counted from when
//!   each attempt was due (start to start), not from when it ended, so the rate does not
//!   drift with the time attempts take. An attempt recorded after grid points went by (the
//!   node was busy or suspended) skips them: the next attempt is due at the first grid point
//!   not before the recording, so missed attempts never run in a burst.
//! - **Attempts.** An attempt that does not finish within `timeout` is a failure. `timeout`
//!   is at most `period` (validation refuses more), so attempts of one probe never overlap.
//! - **Verdicts.** The probe starts *unknown*. `successThreshold` consecutive successes
//!   make it *healthy*; `failureThreshold` consecutive failures make it *unhealthy*. A result
//!   of the other kind resets the count, so mixed results change nothing. A verdict is
//!   returned only on a change (including the first one out of *unknown*): further
//!   failures of an unhealthy probe, or successes of a healthy one, return nothing.
//! - **Meaning.** For a readiness probe, *unknown* means not ready (a workload is ready only
//!   once it said so); every verdict is reported. For a liveness probe, *unknown* means
//!   assumed alive: only the *unhealthy* verdict matters, and it restarts the instance.
//!
//! Values validation refuses (a zero period or threshold, a timeout longer than the period)
//! never make the tracker panic or spin: a period below 1 ms counts as 1 ms, the timeout is
//! kept between 1 ms and the period, and a threshold of 0 counts as 1.

use std::net::{IpAddr, Ipv6Addr};
use std::time::{Duration, Instant};

use edgefleet_wire::workload::{Probe, ProbeAction};

/// The shortest period and timeout the tracker uses, whatever the spec says.
const MIN_INTERVAL: Duration = Duration::from_millis(1);
/// Durations beyond this are treated as "never" (an `Instant` cannot hold arbitrary sums).
const FAR_FUTURE: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// What one attempt found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeResult {
    Success,
    /// Why it failed, short and concrete ("TCP probe 127.0.0.1:9000: connection refused").
    Failure(String),
}

/// A change of a probe's verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Healthy,
    /// Carries the reason of the failure that reached the threshold.
    Unhealthy(String),
}

/// Where a probe stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// No threshold reached yet: not ready (readiness), assumed alive (liveness).
    Unknown,
    Healthy,
    Unhealthy,
}

/// One probe of one instance: its schedule and its run of results.
#[derive(Debug, Clone)]
pub struct ProbeTracker {
    period: Duration,
    timeout: Duration,
    success_threshold: u32,
    failure_threshold: u32,
    /// When the next attempt is due: a point of the grid (see the module docs).
    due: Instant,
    health: Health,
    consecutive_successes: u32,
    consecutive_failures: u32,
}

impl ProbeTracker {
    /// A tracker for `probe` on an instance that started at `started`.
    pub fn new(probe: &Probe, started: Instant) -> Self {
        let period = probe.period.as_duration().clamp(MIN_INTERVAL, FAR_FUTURE);
        Self {
            period,
            timeout: probe.timeout.as_duration().clamp(MIN_INTERVAL, period),
            success_threshold: probe.success_threshold.max(1),
            failure_threshold: probe.failure_threshold.max(1),
            due: later(started, probe.initial_delay.as_duration()),
            health: Health::Unknown,
            consecutive_successes: 0,
            consecutive_failures: 0,
        }
    }

    /// When the next attempt should start.
    pub fn next_due(&self) -> Instant {
        self.due
    }

    /// How long an attempt may take before it counts as failed.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    pub fn health(&self) -> Health {
        self.health
    }

    /// Records the result of the attempt that was due, which ended at `now`; schedules the
    /// next one and returns the new verdict if this result changed it.
    pub fn record(&mut self, now: Instant, result: ProbeResult) -> Option<Verdict> {
        self.due = self.next_grid_point(now);
        match result {
            ProbeResult::Success => {
                self.consecutive_failures = 0;
                self.consecutive_successes = self.consecutive_successes.saturating_add(1);
                if self.consecutive_successes >= self.success_threshold
                    && self.health != Health::Healthy
                {
                    self.health = Health::Healthy;
                    return Some(Verdict::Healthy);
                }
            }
            ProbeResult::Failure(reason) => {
                self.consecutive_successes = 0;
                self.consecutive_failures = self.consecutive_failures.saturating_add(1);
                if self.consecutive_failures >= self.failure_threshold
                    && self.health != Health::Unhealthy
                {
                    self.health = Health::Unhealthy;
                    return Some(Verdict::Unhealthy(reason));
                }
            }
        }
        None
    }

    /// The first grid point after the current one that is not before `now`.
    fn next_grid_point(&self, now: Instant) -> Instant {
        let next = later(self.due, self.period);
        if next >= now {
            return next;
        }
        let behind = now.duration_since(self.due).as_nanos();
        let period = self.period.as_nanos().max(1);
        let steps = behind.div_ceil(period);
        let offset = u64::try_from(steps.saturating_mul(period))
            .map(Duration::from_nanos)
            .unwrap_or(FAR_FUTURE);
        later(self.due, offset)
    }
}

/// `instant + duration`, saturating at a far future instead of panicking on overflow.
fn later(instant: Instant, duration: Duration) -> Instant {
    instant
        .checked_add(duration.min(FAR_FUTURE))
        .or_else(|| instant.checked_add(FAR_FUTURE))
        .unwrap_or(instant)
}

/// Checks a probe beyond its shape. The error is `(field, message)` with `field` relative
/// to the probe (`httpGet.port`), empty when it concerns the probe as a whole; the
/// manifest validator prefixes it with the probe's own path.
pub fn validate(probe: &Probe) -> Result<(), (String, String)> {
    let err = |field: &str, message: String| Err((field.to_owned(), message));
    let Some(action) = probe.action() else {
        let present: Vec<&str> = [
            ("exec", probe.exec.is_some()),
            ("httpGet", probe.http_get.is_some()),
            ("tcpSocket", probe.tcp_socket.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, set)| set.then_some(name))
        .collect();
        return if present.is_empty() {
            err(
                "",
                "a probe needs one of exec, httpGet or tcpSocket".to_owned(),
            )
        } else {
            err(
                "",
                format!(
                    "a probe has exactly one of exec, httpGet and tcpSocket, not {}",
                    present.join(" and ")
                ),
            )
        };
    };
    let period = probe.period.as_duration();
    let timeout = probe.timeout.as_duration();
    if period.is_zero() {
        return err("period", "period must be more than 0".to_owned());
    }
    if timeout.is_zero() {
        return err("timeout", "timeout must be more than 0".to_owned());
    }
    if timeout > period {
        return err(
            "timeout",
            format!(
                "timeout {} is longer than period {}; it must be at most the period",
                probe.timeout, probe.period
            ),
        );
    }
    if probe.failure_threshold == 0 {
        return err(
            "failureThreshold",
            "failureThreshold must be at least 1".to_owned(),
        );
    }
    if probe.success_threshold == 0 {
        return err(
            "successThreshold",
            "successThreshold must be at least 1".to_owned(),
        );
    }
    match action {
        ProbeAction::Exec(exec) => validate_command(&exec.command),
        ProbeAction::HttpGet(http) => {
            validate_endpoint("httpGet", http.port, http.host.as_deref())?;
            validate_path(&http.path)
        }
        ProbeAction::TcpSocket(tcp) => {
            validate_endpoint("tcpSocket", tcp.port, tcp.host.as_deref())
        }
    }
}

fn validate_command(command: &[String]) -> Result<(), (String, String)> {
    let Some(program) = command.first() else {
        return Err((
            "exec.command".to_owned(),
            "exec.command is empty; it needs at least the program to run".to_owned(),
        ));
    };
    if program.trim().is_empty() {
        return Err((
            "exec.command[0]".to_owned(),
            "the program (the first element of exec.command) is empty".to_owned(),
        ));
    }
    if let Some(i) = command.iter().position(|arg| arg.contains('\0')) {
        return Err((
            format!("exec.command[{i}]"),
            "command arguments must not contain NUL".to_owned(),
        ));
    }
    Ok(())
}

fn validate_endpoint(action: &str, port: u16, host: Option<&str>) -> Result<(), (String, String)> {
    if port == 0 {
        return Err((
            format!("{action}.port"),
            "port must be from 1 to 65535".to_owned(),
        ));
    }
    match host {
        Some(host) => check_host(host).map_err(|message| (format!("{action}.host"), message)),
        None => Ok(()),
    }
}

/// Request paths go on the request line as they are, so anything that could end it or
/// split it (spaces, control characters) is refused; other characters must be
/// percent-encoded.
fn validate_path(path: &str) -> Result<(), (String, String)> {
    if !path.starts_with('/') {
        return Err((
            "httpGet.path".to_owned(),
            format!("path {path:?} must start with '/'"),
        ));
    }
    if let Some(bad) = path.chars().find(|c| !c.is_ascii_graphic()) {
        return Err((
            "httpGet.path".to_owned(),
            format!(
                "path {path:?} contains {bad:?}; only visible ASCII characters are allowed \
                 (percent-encode others, e.g. %20 for a space)"
            ),
        ));
    }
    Ok(())
}

/// A host is an IP address (IPv6 without brackets) or a DNS host name: dot-separated
/// labels of 1 to 63 letters, digits and '-', not starting or ending with '-', at most 253
/// characters in all.
fn check_host(host: &str) -> Result<(), String> {
    if host.is_empty() {
        return Err("host is empty; leave it out to probe 127.0.0.1".to_owned());
    }
    if let Some((scheme, _)) = host.split_once("://") {
        return Err(format!(
            "host {host:?} must be a host name or IP address without a scheme (drop {scheme:?}://)"
        ));
    }
    if host.parse::<IpAddr>().is_ok() {
        return Ok(());
    }
    if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']'))
        && inner.parse::<Ipv6Addr>().is_ok()
    {
        return Err(format!(
            "host {host:?}: write IPv6 addresses without brackets ({inner})"
        ));
    }
    if host.contains(':') || host.contains('/') {
        return Err(format!(
            "host {host:?} must be a host name or IP address without a port or path \
             (the port goes in port, the path in path)"
        ));
    }
    let valid_label = |label: &str| {
        (1..=63).contains(&label.len())
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    if host.len() > 253 || !host.split('.').all(valid_label) {
        return Err(format!(
            "host {host:?} is not a valid host name or IP address (expected names like \
             db.local or addresses like 10.0.0.5 or fd00::1)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use edgefleet_wire::DurationSpec;
    use edgefleet_wire::workload::{ExecProbe, HttpGetProbe, TcpSocketProbe};
    use proptest::prelude::*;

    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn tcp_probe() -> Probe {
        Probe::new(ProbeAction::TcpSocket(&TcpSocketProbe {
            port: 9000,
            host: None,
        }))
    }

    fn http_probe(path: &str, host: Option<&str>) -> Probe {
        Probe::new(ProbeAction::HttpGet(&HttpGetProbe {
            port: 8080,
            path: path.to_owned(),
            host: host.map(str::to_owned),
        }))
    }

    fn exec_probe(command: &[&str]) -> Probe {
        Probe::new(ProbeAction::Exec(&ExecProbe {
            command: command.iter().map(|s| (*s).to_owned()).collect(),
        }))
    }

    fn thresholds(success: u32, failure: u32) -> Probe {
        let mut probe = tcp_probe();
        probe.success_threshold = success;
        probe.failure_threshold = failure;
        probe
    }

    /// Feeds `results` ('S' success, 'F' failure, spaces ignored) and compares the verdicts
    /// with `expected` ('H' healthy, 'U' unhealthy, '.' none), position by position.
    fn check(success: u32, failure: u32, results: &str, expected: &str) {
        let start = Instant::now();
        let mut tracker = ProbeTracker::new(&thresholds(success, failure), start);
        let mut got = String::new();
        for (i, c) in results.chars().filter(|c| !c.is_whitespace()).enumerate() {
            let result = match c {
                'S' => ProbeResult::Success,
                'F' => ProbeResult::Failure(format!("failure {i}")),
                other => panic!("bad result {other:?}"),
            };
            got.push(match tracker.record(tracker.next_due(), result) {
                None => '.',
                Some(Verdict::Healthy) => 'H',
                Some(Verdict::Unhealthy(reason)) => {
                    assert_eq!(
                        reason,
                        format!("failure {i}"),
                        "the reason is the last failure's"
                    );
                    'U'
                }
            });
        }
        let expected: String = expected.chars().filter(|c| !c.is_whitespace()).collect();
        assert_eq!(
            got, expected,
            "success threshold {success}, failure threshold {failure}, results {results}"
        );
    }

    #[test]
    fn verdicts_change_only_at_thresholds() {
        check(1, 1, "S S F F S", "H . U . H");
        check(1, 3, "S F F F F S", "H . . U . H");
        check(1, 3, "F F S F F S", ". . H . . .");
        check(2, 3, "S F S F S S", ". . . . . H");
        check(2, 2, "F F S S F S F F", ". U . H . . . U");
        check(3, 1, "S S F S S S", ". . U . . H");
        check(1, 2, "", "");
    }

    #[test]
    fn starts_unknown_and_zero_thresholds_count_as_one() {
        let mut tracker = ProbeTracker::new(&thresholds(0, 0), Instant::now());
        assert_eq!(tracker.health(), Health::Unknown);
        let due = tracker.next_due();
        assert_eq!(
            tracker.record(due, ProbeResult::Failure("down".into())),
            Some(Verdict::Unhealthy("down".into()))
        );
        assert_eq!(tracker.health(), Health::Unhealthy);
        let due = tracker.next_due();
        assert_eq!(
            tracker.record(due, ProbeResult::Success),
            Some(Verdict::Healthy)
        );
        assert_eq!(tracker.health(), Health::Healthy);
    }

    #[test]
    fn schedule_starts_after_the_initial_delay_and_keeps_the_grid() {
        let start = Instant::now();
        let mut probe = tcp_probe();
        probe.initial_delay = DurationSpec(ms(500));
        probe.period = DurationSpec(ms(100));
        probe.timeout = DurationSpec(ms(50));
        let mut tracker = ProbeTracker::new(&probe, start);
        assert_eq!(tracker.next_due(), start + ms(500));
        assert_eq!(tracker.timeout(), ms(50));
        // An attempt that took 30 ms: the next is due one period after this one was due.
        tracker.record(start + ms(530), ProbeResult::Success);
        assert_eq!(tracker.next_due(), start + ms(600));
        // Recorded exactly on the next grid point: that point is the next due.
        tracker.record(start + ms(700), ProbeResult::Success);
        assert_eq!(tracker.next_due(), start + ms(700));
        // Recorded 250 ms late: the missed points are skipped, the grid kept.
        tracker.record(start + ms(950), ProbeResult::Success);
        assert_eq!(tracker.next_due(), start + ms(1000));
    }

    #[test]
    fn nonsense_timings_do_not_panic_or_spin() {
        let start = Instant::now();
        let mut probe = tcp_probe();
        probe.period = DurationSpec(Duration::ZERO);
        probe.timeout = DurationSpec(Duration::from_secs(5));
        let mut tracker = ProbeTracker::new(&probe, start);
        assert_eq!(tracker.timeout(), MIN_INTERVAL);
        tracker.record(start, ProbeResult::Success);
        assert!(tracker.next_due() > start);

        let mut probe = tcp_probe();
        probe.initial_delay = DurationSpec(Duration::from_millis(u64::MAX));
        probe.period = DurationSpec(Duration::from_millis(u64::MAX));
        let mut tracker = ProbeTracker::new(&probe, start);
        assert!(tracker.next_due() > start + Duration::from_secs(365 * 24 * 3600));
        tracker.record(start, ProbeResult::Success);
        assert!(tracker.next_due() > start);
    }

    fn check_invalid(probe: &Probe, field: &str, message_part: &str) {
        let (got_field, message) = validate(probe).expect_err("the probe is invalid");
        assert_eq!(got_field, field, "{message}");
        assert!(
            message.contains(message_part),
            "{message:?} does not mention {message_part:?}"
        );
    }

    #[test]
    fn valid_probes_pass() {
        for probe in [
            tcp_probe(),
            exec_probe(&["cat", "/tmp/ok"]),
            http_probe("/healthz?full=1", None),
            http_probe("/", Some("db.local")),
            http_probe("/", Some("10.0.0.5")),
            http_probe("/", Some("fd00::1")),
            http_probe("/", Some("localhost")),
        ] {
            assert_eq!(validate(&probe), Ok(()), "{probe:?}");
        }
    }

    #[test]
    fn invalid_probes_name_the_field() {
        let mut probe = tcp_probe();
        probe.tcp_socket = None;
        check_invalid(&probe, "", "needs one of exec, httpGet or tcpSocket");
        let mut probe = tcp_probe();
        probe.exec = Some(ExecProbe {
            command: vec!["true".into()],
        });
        check_invalid(&probe, "", "not exec and tcpSocket");

        let mut probe = tcp_probe();
        probe.period = DurationSpec(Duration::ZERO);
        check_invalid(&probe, "period", "more than 0");
        let mut probe = tcp_probe();
        probe.timeout = DurationSpec(Duration::ZERO);
        check_invalid(&probe, "timeout", "more than 0");
        let mut probe = tcp_probe();
        probe.period = DurationSpec(ms(2000));
        probe.timeout = DurationSpec(ms(5000));
        check_invalid(&probe, "timeout", "timeout 5s is longer than period 2s");
        check_invalid(&thresholds(1, 0), "failureThreshold", "at least 1");
        check_invalid(&thresholds(0, 1), "successThreshold", "at least 1");

        check_invalid(&exec_probe(&[]), "exec.command", "empty");
        check_invalid(&exec_probe(&[" "]), "exec.command[0]", "empty");
        check_invalid(&exec_probe(&["sh", "a\0b"]), "exec.command[1]", "NUL");

        let mut probe = tcp_probe();
        if let Some(tcp) = &mut probe.tcp_socket {
            tcp.port = 0;
        }
        check_invalid(&probe, "tcpSocket.port", "1 to 65535");
        let mut probe = http_probe("/", None);
        if let Some(http) = &mut probe.http_get {
            http.port = 0;
        }
        check_invalid(&probe, "httpGet.port", "1 to 65535");

        check_invalid(
            &http_probe("healthz", None),
            "httpGet.path",
            "start with '/'",
        );
        check_invalid(&http_probe("/a b", None), "httpGet.path", "%20");
        check_invalid(
            &http_probe("/x\r\nX-Injected: 1", None),
            "httpGet.path",
            "visible ASCII",
        );
        check_invalid(&http_probe("/é", None), "httpGet.path", "percent-encode");

        for (host, part) in [
            ("", "empty"),
            ("http://db.local", "without a scheme (drop \"http\"://)"),
            ("db.local:8080", "without a port"),
            ("db.local/x", "without a port or path"),
            ("[::1]", "without brackets (::1)"),
            ("-db.local", "not a valid host name"),
            ("db..local", "not a valid host name"),
            ("db_1.local", "not a valid host name"),
        ] {
            check_invalid(&http_probe("/", Some(host)), "httpGet.host", part);
        }
        let mut probe = tcp_probe();
        if let Some(tcp) = &mut probe.tcp_socket {
            tcp.host = Some("a".repeat(64));
        }
        check_invalid(&probe, "tcpSocket.host", "not a valid host name");
    }

    proptest! {
        /// Against the definition: a verdict appears exactly when the last `threshold`
        /// results agree and the probe did not already stand there.
        #[test]
        fn verdicts_flip_only_after_threshold_consecutive_results(
            success_threshold in 1u32..5,
            failure_threshold in 1u32..5,
            results in proptest::collection::vec(any::<bool>(), 0..60),
        ) {
            let start = Instant::now();
            let mut tracker =
                ProbeTracker::new(&thresholds(success_threshold, failure_threshold), start);
            let mut standing = Health::Unknown;
            let mut previous_verdict: Option<bool> = None;
            for (i, &success) in results.iter().enumerate() {
                let result = if success {
                    ProbeResult::Success
                } else {
                    ProbeResult::Failure(format!("failure {i}"))
                };
                let verdict = tracker.record(tracker.next_due(), result);
                let threshold = if success { success_threshold } else { failure_threshold };
                let run = results[..=i].iter().rev().take_while(|&&r| r == success).count();
                let reached = run >= threshold as usize;
                let target = if success { Health::Healthy } else { Health::Unhealthy };
                let expected = reached && standing != target;
                prop_assert_eq!(verdict.is_some(), expected, "at result {}", i);
                if let Some(verdict) = verdict {
                    let healthy = verdict == Verdict::Healthy;
                    prop_assert_eq!(healthy, success);
                    prop_assert_ne!(previous_verdict, Some(healthy), "two equal verdicts in a row");
                    previous_verdict = Some(healthy);
                    standing = target;
                }
                prop_assert_eq!(tracker.health(), standing);
            }
        }

        /// Attempts taking any time (even longer than the period) keep the schedule on the
        /// grid, strictly forward, and never due before the last attempt ended.
        #[test]
        fn schedule_stays_on_the_grid(
            initial_delay_ms in 0u64..1000,
            period_ms in 1u64..500,
            durations_ms in proptest::collection::vec(0u64..1500, 1..40),
        ) {
            let start = Instant::now();
            let mut probe = tcp_probe();
            probe.initial_delay = DurationSpec(ms(initial_delay_ms));
            probe.period = DurationSpec(ms(period_ms));
            probe.timeout = DurationSpec(ms(period_ms));
            let mut tracker = ProbeTracker::new(&probe, start);
            let first = start + ms(initial_delay_ms);
            prop_assert_eq!(tracker.next_due(), first);
            for duration in durations_ms {
                let due = tracker.next_due();
                let ended = due + ms(duration);
                tracker.record(ended, ProbeResult::Success);
                let next = tracker.next_due();
                prop_assert!(next > due);
                prop_assert!(next >= ended);
                prop_assert!(next < ended + ms(period_ms) || next == due + ms(period_ms));
                let offset = next.duration_since(first).as_nanos();
                prop_assert_eq!(offset % ms(period_ms).as_nanos(), 0);
            }
        }
    }
}
