//! The process runtime: workloads as native processes supervised by the agent.
//!
//! Each instance runs in a process group of its own (`process_group(0)`), so that stopping
//! it (SIGTERM) or killing it (SIGKILL) reaches its children and grandchildren too, and
//! when the main process exits whatever it left in its group is killed with it: nothing a
//! workload started outlives it, and a restart never finds the previous instance's helpers
//! still running. stdin is /dev/null; stdout and stderr go to the workload's log (see
//! `logs`: rotating files under `logs/<workload>/`). Each instance gets a pid file (see `pidfile`).

use std::collections::HashMap;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use edgefleet_core::labels::validate_name;
use edgefleet_core::supervisor::Event;
use edgefleet_wire::manifest::WorkloadSpec;
use edgefleet_wire::session::LogStream;
use nix::sys::signal::Signal;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::task::JoinSet;
use tracing::{debug, warn};

use super::logs::{LogRegistry, WorkloadLogs};
use super::{EventSender, Launch, Runtime, pidfile};

/// Where the process runtime keeps its files and writes its workloads' output.
#[derive(Debug, Clone)]
pub struct ProcessConfig {
    /// Holds `<workload>.pid`.
    pub run_dir: PathBuf,
    /// The agent's workload logs, shared with the other runtimes and with `edgefleet logs`.
    pub logs: LogRegistry,
}

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
            tasks: JoinSet::new(),
        }
    }

    fn spawn(&mut self, name: &str, instance: u64, launch: &Launch) -> Result<(), String> {
        let spec = &launch.spec;
        validate_name(name)
            .map_err(|reason| format!("invalid workload name {name:?}: {reason}"))?;
        let logs = self.config.logs.workload(name);
        let mut command = std::process::Command::new(&spec.command);
        command
            .args(&spec.args)
            .envs(&spec.env)
            .envs(
                launch
                    .files_dir
                    .iter()
                    .map(|dir| (edgefleet_wire::workload::FILES_DIR_ENV, dir.as_os_str())),
            )
            .envs(launch.local_api.iter().flat_map(|api| {
                [
                    (edgefleet_wire::local::LOCAL_API_ENV, api.socket.as_os_str()),
                    (
                        edgefleet_wire::local::WORKLOAD_TOKEN_ENV,
                        std::ffi::OsStr::new(api.token.as_str()),
                    ),
                ]
            }))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
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
            pid: Some(pid),
            at: time::OffsetDateTime::now_utc(),
        });
        while self.tasks.try_join_next().is_some() {}
        if let Some(out) = child.stdout.take() {
            self.tasks.spawn(pump(out, logs.clone(), LogStream::Stdout));
        }
        if let Some(err) = child.stderr.take() {
            self.tasks.spawn(pump(err, logs, LogStream::Stderr));
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

    fn signal(&self, name: &str, instance: u64, signal: Signal) {
        match self.live.get(name) {
            Some(live) if live.instance == instance && !live.reaped.load(Ordering::Acquire) => {
                pidfile::signal_group(live.pid, signal);
            }
            _ => debug!(workload = name, instance, %signal, "not signalling: already exited"),
        }
    }
}

impl Runtime for ProcessRuntime {
    /// A process needs nothing but its program, which is looked for when it starts.
    fn prepare(&mut self, name: &str, instance: u64, _launch: &Launch) {
        let _ = self.events.send(Event::Prepared {
            name: name.to_owned(),
            instance,
        });
    }

    fn start(&mut self, name: &str, instance: u64, launch: &Launch) {
        if let Err(error) = self.spawn(name, instance, launch) {
            let _ = self.events.send(Event::StartFailed {
                name: name.to_owned(),
                instance,
                error,
            });
        }
    }

    fn stop(&mut self, name: &str, instance: u64) {
        self.signal(name, instance, Signal::SIGTERM);
    }

    fn kill(&mut self, name: &str, instance: u64) {
        self.signal(name, instance, Signal::SIGKILL);
    }
}

fn describe_spawn_error(spec: &WorkloadSpec, error: &std::io::Error) -> String {
    match &spec.working_dir {
        Some(dir) => format!("spawning {:?} in {dir:?}: {error}", spec.command),
        None => format!("spawning {:?}: {error}", spec.command),
    }
}

/// Copies a workload's output into its log until the workload closes its end. Writing
/// the log never fails or blocks (see `logs`), so the workload never hangs on a full pipe.
async fn pump(mut reader: impl AsyncRead + Unpin, logs: WorkloadLogs, stream: LogStream) {
    let mut buffer = [0u8; 8192];
    loop {
        match reader.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(n) => logs.write(stream, &buffer[..n]),
        }
    }
    logs.flush(stream);
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
        reason: None,
    });
}
