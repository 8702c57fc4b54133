//! The process runtime: workloads as native processes supervised by the agent.
//!
//! Each instance runs in a process group of its own (`process_group(0)`), so that stopping
//! it (SIGTERM) or killing it (SIGKILL) reaches its children and grandchildren too, and
//! when the main process exits whatever it left in its group is killed with it: nothing a
//! workload started outlives it, and a restart never finds the previous instance's helpers
//! still running. stdin is /dev/null; stdout and stderr go to rotating files under
//! `logs/<workload>/`. Each instance gets a pid file (see `pidfile`).

use std::collections::HashMap;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};

use edgefleet_core::labels::validate_name;
use edgefleet_core::supervisor::Event;
use edgefleet_wire::manifest::WorkloadSpec;
use nix::sys::signal::Signal;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::task::JoinSet;
use tracing::{debug, warn};

use super::logs::RotatingLog;
use super::{EventSender, Runtime, pidfile};

/// Where the process runtime keeps its files, and how big logs may grow.
#[derive(Debug, Clone)]
pub struct ProcessConfig {
    /// Holds `<workload>.pid`.
    pub run_dir: PathBuf,
    /// Holds `<workload>/stdout.log` and `stderr.log`.
    pub logs_dir: PathBuf,
    pub log_max_bytes: u64,
    /// Rotated files kept per stream (`.1` ..= `.N`).
    pub log_files: u32,
}

type SharedLog = Arc<Mutex<RotatingLog>>;

#[derive(Debug)]
struct Live {
    instance: u64,
    pid: u32,
    /// Set once the process has been reaped: its pid may then belong to someone else.
    reaped: Arc<AtomicBool>,
}

#[derive(Debug)]
pub struct ProcessRuntime {
    config: Arc<ProcessConfig>,
    events: EventSender,
    live: HashMap<String, Live>,
    /// Open log files by (workload, stream), shared by the instances writing to them so a
    /// late writer of a previous instance and a new instance never rotate the same file
    /// independently. Weak: a file closes when nothing writes to it any more.
    logs: HashMap<(String, &'static str), Weak<Mutex<RotatingLog>>>,
    /// Wait and log tasks. Owned so that dropping the runtime (the agent going away
    /// without a shutdown) ends them: the processes live on, their pid files untouched,
    /// for the next agent to find.
    tasks: JoinSet<()>,
}

impl ProcessRuntime {
    pub fn new(config: ProcessConfig, events: EventSender) -> Self {
        Self {
            config: Arc::new(config),
            events,
            live: HashMap::new(),
            logs: HashMap::new(),
            tasks: JoinSet::new(),
        }
    }

    fn log(&mut self, name: &str, stream: &'static str) -> Option<SharedLog> {
        let key = (name.to_owned(), stream);
        if let Some(log) = self.logs.get(&key).and_then(Weak::upgrade) {
            return Some(log);
        }
        let dir = self.config.logs_dir.join(name);
        let path = dir.join(format!("{stream}.log"));
        let opened = std::fs::create_dir_all(&dir).and_then(|()| {
            RotatingLog::open(&path, self.config.log_max_bytes, self.config.log_files)
        });
        match opened {
            Ok(log) => {
                let log = Arc::new(Mutex::new(log));
                self.logs.insert(key, Arc::downgrade(&log));
                Some(log)
            }
            Err(error) => {
                // Running without a log beats not running: the workload's output is lost,
                // not the workload.
                warn!(%error, workload = name, path = %path.display(), "cannot open workload log; discarding its output");
                None
            }
        }
    }

    fn spawn(&mut self, name: &str, instance: u64, spec: &WorkloadSpec) -> Result<(), String> {
        validate_name(name)
            .map_err(|reason| format!("invalid workload name {name:?}: {reason}"))?;
        let stdout_log = self.log(name, "stdout");
        let stderr_log = self.log(name, "stderr");
        let mut command = std::process::Command::new(&spec.command);
        command
            .args(&spec.args)
            .envs(&spec.env)
            .stdin(Stdio::null())
            .stdout(if stdout_log.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stderr(if stderr_log.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .process_group(0);
        if let Some(dir) = &spec.working_dir {
            command.current_dir(dir);
        }
        let mut child = tokio::process::Command::from(command)
            .spawn()
            .map_err(|error| describe_spawn_error(spec, &error))?;
        let Some(pid) = child.id() else {
            return Err(format!(
                "{:?} exited before its pid could be read",
                spec.command
            ));
        };
        if let Err(error) = pidfile::write(&self.config.run_dir, name, pid) {
            // The workload runs; only the protection against a double start after an agent
            // crash is missing for it.
            warn!(%error, workload = name, pid, "cannot write pid file");
        }
        let reaped = Arc::new(AtomicBool::new(false));
        self.live
            .retain(|_, live| !live.reaped.load(Ordering::Acquire));
        self.live.insert(
            name.to_owned(),
            Live {
                instance,
                pid,
                reaped: reaped.clone(),
            },
        );
        // Started goes out before the wait task exists, so it always precedes Exited.
        let _ = self.events.send(Event::Started {
            name: name.to_owned(),
            instance,
            pid,
            at: time::OffsetDateTime::now_utc(),
        });
        while self.tasks.try_join_next().is_some() {}
        if let (Some(out), Some(log)) = (child.stdout.take(), stdout_log) {
            self.tasks.spawn(pump(out, log));
        }
        if let (Some(err), Some(log)) = (child.stderr.take(), stderr_log) {
            self.tasks.spawn(pump(err, log));
        }
        self.tasks.spawn(wait(
            child,
            Exit {
                name: name.to_owned(),
                instance,
                pid,
                reaped,
                events: self.events.clone(),
                run_dir: self.config.run_dir.clone(),
            },
        ));
        Ok(())
    }

    fn signal(&self, name: &str, instance: u64, pid: u32, signal: Signal) {
        match self.live.get(name) {
            Some(live)
                if live.instance == instance
                    && live.pid == pid
                    && !live.reaped.load(Ordering::Acquire) =>
            {
                pidfile::signal_group(pid, signal);
            }
            _ => debug!(workload = name, instance, pid, %signal, "not signalling: already exited"),
        }
    }
}

impl Runtime for ProcessRuntime {
    fn start(&mut self, name: &str, instance: u64, spec: &WorkloadSpec) {
        if let Err(error) = self.spawn(name, instance, spec) {
            let _ = self.events.send(Event::StartFailed {
                name: name.to_owned(),
                instance,
                error,
            });
        }
    }

    fn stop(&mut self, name: &str, instance: u64, pid: u32) {
        self.signal(name, instance, pid, Signal::SIGTERM);
    }

    fn kill(&mut self, name: &str, instance: u64, pid: u32) {
        self.signal(name, instance, pid, Signal::SIGKILL);
    }
}

fn describe_spawn_error(spec: &WorkloadSpec, error: &std::io::Error) -> String {
    match &spec.working_dir {
        Some(dir) => format!("spawning {:?} in {dir:?}: {error}", spec.command),
        None => format!("spawning {:?}: {error}", spec.command),
    }
}

/// Copies a workload's output into its log. Keeps reading when the log cannot be written
/// (disk full): a workload blocked on a full pipe would hang.
async fn pump(mut reader: impl AsyncRead + Unpin, log: SharedLog) {
    let mut buffer = [0u8; 4096];
    let mut failing = false;
    loop {
        let n = match reader.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let mut log = log.lock().unwrap_or_else(PoisonError::into_inner);
        match log.write(&buffer[..n]) {
            Ok(()) => failing = false,
            Err(error) if !failing => {
                failing = true;
                warn!(%error, path = %log.path().display(), "cannot write workload log; discarding output");
            }
            Err(_) => {}
        }
    }
}

struct Exit {
    name: String,
    instance: u64,
    pid: u32,
    reaped: Arc<AtomicBool>,
    events: EventSender,
    run_dir: PathBuf,
}

async fn wait(mut child: tokio::process::Child, exit: Exit) {
    let status = child.wait().await;
    exit.reaped.store(true, Ordering::Release);
    // Whatever the workload left behind in its group goes with it.
    pidfile::signal_group(exit.pid, Signal::SIGKILL);
    pidfile::remove(&exit.run_dir, &exit.name, exit.pid);
    let (code, signal) = match status {
        Ok(status) => (status.code(), status.signal()),
        Err(error) => {
            warn!(%error, workload = exit.name, pid = exit.pid, "waiting for workload failed");
            (None, None)
        }
    };
    let _ = exit.events.send(Event::Exited {
        name: exit.name,
        instance: exit.instance,
        code,
        signal,
    });
}
