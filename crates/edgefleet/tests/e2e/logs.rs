//! `edgefleet logs`: a workload's output fetched from its node through the server, with
//! `--tail`, `--since` and `-f`, and the errors an operator meets (unknown workload,
//! unknown node, bad flags, a node that is offline).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use edgefleet_testkit::{Fleet, wait_for};

use crate::{LONG, apply, bin, cli_fails, fleet_with, manifest};

/// Prints `tick N` every 200 ms, and `warn N` to stderr for every fifth tick.
const TICKER: &str = "i=0; while :; do echo \"tick $i\"; \
    if [ $((i % 5)) -eq 0 ]; then echo \"warn $i\" >&2; fi; i=$((i+1)); sleep 0.2; done";

/// The number in `tick N` / `warn N`.
fn number(line: &str) -> u64 {
    line.rsplit(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("not a ticker line: {line:?}"))
}

fn lines(bytes: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(bytes)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// `edgefleet logs ARGS`, returning (stdout lines, stderr lines); panics if it fails.
fn logs_ok(fleet: &Fleet, args: &[&str]) -> (Vec<String>, Vec<String>) {
    let mut all = vec!["logs"];
    all.extend_from_slice(args);
    let out = fleet.cli(&all);
    assert!(
        out.status.success(),
        "edgefleet {all:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (lines(&out.stdout), lines(&out.stderr))
}

/// `edgefleet logs -f` as a child whose stdout lines arrive on a channel.
struct Follower {
    child: Child,
    lines: mpsc::Receiver<String>,
    stderr: std::path::PathBuf,
}

impl Follower {
    fn start(fleet: &Fleet, args: &[&str]) -> Self {
        let stderr = tempfile::NamedTempFile::new_in(fleet.path())
            .unwrap()
            .into_temp_path()
            .keep()
            .unwrap();
        let mut child = Command::new(bin())
            .arg("logs")
            .args(args)
            .envs(fleet.cli_env())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("starting edgefleet logs -f");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Self {
            child,
            lines,
            stderr,
        }
    }

    fn next_line(&self, within: Duration) -> String {
        self.lines.recv_timeout(within).unwrap_or_else(|e| {
            panic!(
                "no line from `edgefleet logs -f` within {within:?} ({e}); its stderr: {}",
                std::fs::read_to_string(&self.stderr).unwrap_or_default()
            )
        })
    }

    /// Ctrl-C (SIGINT, by pid): the command ends, successfully, within seconds.
    fn interrupt(mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "edgefleet logs -f ignores Ctrl-C"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(
            status.success(),
            "Ctrl-C should end `logs -f` cleanly: {status}"
        );
    }

    /// SIGKILL, by pid: the operator's terminal going away.
    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_tail_since_follow_and_errors() {
    let mut fleet = fleet_with(&[], &[("edge-1", "site=berlin")]).await;
    apply(
        &fleet,
        "ticker.yaml",
        &manifest("ticker", "", 0, &[("ticker", TICKER)]),
    );
    fleet.wait_converged("edge-1", LONG).await;
    wait_for("the ticker to have ticked 12 times", LONG, || async {
        let (out, _) = logs_ok(&fleet, &["edge-1", "ticker", "--tail", "1"]);
        out.last().filter(|line| number(line) >= 12).map(|_| ())
    })
    .await;

    // Everything: stdout lines on stdout and stderr lines on stderr, each in order.
    let (out, err) = logs_ok(&fleet, &["edge-1", "ticker"]);
    assert!(out.iter().all(|l| l.starts_with("tick ")), "{out:?}");
    assert!(err.iter().all(|l| l.starts_with("warn ")), "{err:?}");
    assert_eq!(number(&out[0]), 0, "{out:?}");
    assert_eq!(number(&err[0]), 0, "{err:?}");
    let ticks: Vec<u64> = out.iter().map(|l| number(l)).collect();
    assert!(ticks.windows(2).all(|w| w[1] == w[0] + 1), "{ticks:?}");

    // --tail 3: the newest three lines of both streams together.
    let (out, err) = logs_ok(&fleet, &["edge-1", "ticker", "--tail", "3"]);
    assert_eq!(out.len() + err.len(), 3, "{out:?} {err:?}");
    assert!(number(out.last().unwrap()) >= 12, "{out:?}");

    // --since a line's time: that line and the later ones, not the earlier ones.
    let (stamped, _) = logs_ok(&fleet, &["edge-1", "ticker", "--timestamps"]);
    // Every stamp has the same width (UTC, six fractional digits, trailing zeros kept), so
    // they also sort as text, in the order the lines were written.
    let stamps: Vec<&str> = stamped
        .iter()
        .map(|line| line.split_once(' ').unwrap().0)
        .collect();
    assert!(
        stamps.iter().all(|s| s.len() == 27 && s.ends_with('Z')),
        "{stamped:?}"
    );
    assert!(stamps.windows(2).all(|w| w[0] < w[1]), "{stamped:?}");
    let (stamp, fifth) = stamped[5].split_once(' ').unwrap();
    assert_eq!(fifth, "tick 5", "{stamped:?}");
    let (out, _) = logs_ok(&fleet, &["edge-1", "ticker", "--since", stamp]);
    assert_eq!(out[0], "tick 5", "{out:?}");
    let (out, err) = logs_ok(
        &fleet,
        &["edge-1", "ticker", "--since", "1h", "--tail", "2"],
    );
    assert_eq!(out.len() + err.len(), 2);
    let (out, err) = logs_ok(
        &fleet,
        &["edge-1", "ticker", "--since", "2099-01-01T00:00:00Z"],
    );
    assert!(out.is_empty() && err.is_empty(), "{out:?} {err:?}");

    // -f: the last line, then new lines as the ticker writes them.
    let follower = Follower::start(&fleet, &["edge-1", "ticker", "-f", "--tail", "1"]);
    let first = number(&follower.next_line(Duration::from_secs(15)));
    let started = Instant::now();
    let later = number(&follower.next_line(Duration::from_secs(5)));
    assert_eq!(later, first + 1);
    let much_later = number(&follower.next_line(Duration::from_secs(5)));
    assert_eq!(much_later, first + 2);
    assert!(started.elapsed() < Duration::from_secs(5));
    follower.interrupt();

    // Killed followers end their sessions on the agent, which serves at most 8 at once:
    // after 8 more followers are killed, a new request still gets an answer.
    let followers: Vec<Follower> = (0..8)
        .map(|_| Follower::start(&fleet, &["edge-1", "ticker", "-f", "--tail", "1"]))
        .collect();
    for follower in &followers {
        follower.next_line(Duration::from_secs(15));
    }
    for follower in followers {
        follower.kill();
    }
    wait_for(
        "the agent to end the sessions of killed followers",
        LONG,
        || async {
            let out = fleet.cli(&["logs", "edge-1", "ticker", "--tail", "1"]);
            out.status.success().then_some(())
        },
    )
    .await;

    // Mistakes say what was wrong.
    let (_, text) = cli_fails(&fleet, &["logs", "edge-1", "nope"]);
    assert!(
        text.contains("\"nope\"") && text.contains("ticker"),
        "names the workload and those that exist: {text}"
    );
    let (_, text) = cli_fails(&fleet, &["logs", "ghost", "ticker"]);
    assert!(text.contains("node \"ghost\" not found"), "{text}");
    let (_, text) = cli_fails(
        &fleet,
        &["logs", "edge-1", "ticker", "--since", "yesterday"],
    );
    assert!(
        text.contains("\"yesterday\"") && text.contains("10m"),
        "{text}"
    );

    // A stopped agent: the server says so, and when it last saw the node.
    fleet.agent("edge-1").stop();
    let started = Instant::now();
    let (_, text) = cli_fails(&fleet, &["logs", "edge-1", "ticker"]);
    assert!(
        text.contains("node \"edge-1\" did not answer") && text.contains("last seen"),
        "{text}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
}
