//! Metric collection on the node: host metrics and per-workload metrics, one
//! [`MetricSet`] per call of [`Collector::collect`].
//!
//! The collector reads `/proc` and `/sys` (both roots are configurable, so tests point them
//! at fake trees) and keeps the previous reading of every counter: rates and percentages
//! are deltas between two calls. The first call therefore leaves out the samples marked
//! "delta" below instead of reporting them as 0, and so does the first call after a
//! workload's main process or measuring place changed.
//!
//! | name                    | labels                  | unit    | source |
//! |-------------------------|-------------------------|---------|--------|
//! | `cpu.used_percent`      |                         | % of all cores | `/proc/stat`, delta: everything but idle and iowait |
//! | `cpu.iowait_percent`    |                         | % of all cores | `/proc/stat`, delta |
//! | `mem.used_bytes`        |                         | bytes   | `/proc/meminfo`: `MemTotal - MemAvailable` |
//! | `mem.available_bytes`   |                         | bytes   | `/proc/meminfo`: `MemAvailable` |
//! | `mem.used_percent`      |                         | %       | used / `MemTotal` |
//! | `swap.used_bytes`       |                         | bytes   | `/proc/meminfo`: `SwapTotal - SwapFree` |
//! | `load.1`, `load.5`, `load.15` |                   | runnable tasks | `/proc/loadavg` |
//! | `uptime.seconds`        |                         | s       | `/proc/uptime` |
//! | `disk.used_bytes`       | `mount`                 | bytes   | `statvfs`: `(blocks - free) * fragment size` |
//! | `disk.size_bytes`       | `mount`                 | bytes   | `statvfs`: `blocks * fragment size` |
//! | `disk.used_percent`     | `mount`                 | %       | used / (used + available to users), like `df` |
//! | `net.rx_bytes_per_s`, `net.tx_bytes_per_s` | `interface` | bytes/s | `/proc/net/dev`, delta |
//! | `net.rx_errors`, `net.tx_errors` | `interface`    | errors since the previous collection | `/proc/net/dev`, delta |
//! | `temp.celsius`          | `sensor`                | °C      | thermal zones and hwmon chips (see `sensors`) |
//! | `workload.cpu_percent`  | `workload`, `runtime`   | % of one core (200 = two cores busy) | delta of the workload's cgroup or process tree CPU time |
//! | `workload.memory_bytes` | `workload`, `runtime`   | bytes   | cgroup working set, or the process tree's resident set |
//! | `workload.restarts`     | `workload`, `runtime`   | count   | [`WorkloadRef::restarts`] |
//!
//! Values are rounded to what an operator can use (percentages to 0.01, bytes and rates to
//! whole numbers, temperatures to 0.1 °C) so the compressed sets stay small.
//!
//! What is reported:
//! - **Disks**: every mounted disk file system, one mount per device, at most
//!   [`CollectConfig::max_filesystems`]; kernel, memory, overlay, image, network and
//!   user-space (`fuse.*`) file systems are skipped (see `mounts`).
//! - **Interfaces**: those matching [`CollectConfig::include_interfaces`] (all if empty)
//!   and none of [`CollectConfig::exclude_interfaces`] (default: loopback and the virtual
//!   interfaces of container engines), at most [`CollectConfig::max_interfaces`], by name.
//!   A counter that went down was reset: it counts from zero since, never a negative rate.
//! - **Workloads**: a workload's CPU and memory come from its main process's cgroup when
//!   that cgroup is its own (see `cgroup`), else from the process tree rooted at the main
//!   process: `utime + stime + cutime + cstime` and resident pages summed over the live
//!   descendants (shared pages count once per process). A workload without a pid (wasm
//!   modules run inside the agent) reports only its restarts; a pid that vanished is
//!   skipped silently. A CPU time that went down (a process left the tree) gives no
//!   percentage that time.
//!
//! **Invariant:** one source failing never fails the collection: the source is skipped,
//! the other samples are still produced, and the error is kept in
//! [`Collector::last_errors`] (deduplicated, at most [`MAX_ERRORS`]). Every sample value is
//! finite and no rate or percentage is negative.
//!
//! The collector is blocking (file reads, `statvfs`): call it from `spawn_blocking`. It
//! does not schedule itself: the caller collects every [`CollectConfig::interval`].
//! Typical cost: 2 to 5 ms per collection, about 500 bytes per set gzipped (see
//! `tests/collectors.rs`).

mod cgroup;
mod mounts;
mod procfs;
mod sensors;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use edgefleet_wire::manifest::Runtime;
use edgefleet_wire::telemetry::{MetricSample, MetricSet};
use edgefleet_wire::{Labels, Timestamp};

use self::cgroup::{CpuSource, OwnCgroups};
use self::mounts::{CgroupMounts, MountEntry};
use self::procfs::{CgroupMembership, CpuTimes, NetCounters, ProcStat};

/// Metric names and label keys, as listed in the module docs.
pub mod metric {
    pub const CPU_USED_PERCENT: &str = "cpu.used_percent";
    pub const CPU_IOWAIT_PERCENT: &str = "cpu.iowait_percent";
    pub const MEM_USED_BYTES: &str = "mem.used_bytes";
    pub const MEM_AVAILABLE_BYTES: &str = "mem.available_bytes";
    pub const MEM_USED_PERCENT: &str = "mem.used_percent";
    pub const SWAP_USED_BYTES: &str = "swap.used_bytes";
    pub const LOAD_1: &str = "load.1";
    pub const LOAD_5: &str = "load.5";
    pub const LOAD_15: &str = "load.15";
    pub const UPTIME_SECONDS: &str = "uptime.seconds";
    pub const DISK_USED_BYTES: &str = "disk.used_bytes";
    pub const DISK_SIZE_BYTES: &str = "disk.size_bytes";
    pub const DISK_USED_PERCENT: &str = "disk.used_percent";
    pub const NET_RX_BYTES_PER_S: &str = "net.rx_bytes_per_s";
    pub const NET_TX_BYTES_PER_S: &str = "net.tx_bytes_per_s";
    pub const NET_RX_ERRORS: &str = "net.rx_errors";
    pub const NET_TX_ERRORS: &str = "net.tx_errors";
    pub const TEMP_CELSIUS: &str = "temp.celsius";
    pub const WORKLOAD_CPU_PERCENT: &str = "workload.cpu_percent";
    pub const WORKLOAD_MEMORY_BYTES: &str = "workload.memory_bytes";
    pub const WORKLOAD_RESTARTS: &str = "workload.restarts";

    pub const LABEL_MOUNT: &str = "mount";
    pub const LABEL_INTERFACE: &str = "interface";
    pub const LABEL_SENSOR: &str = "sensor";
    pub const LABEL_WORKLOAD: &str = "workload";
    pub const LABEL_RUNTIME: &str = "runtime";
}

/// The default collection interval.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(60);
/// The shortest collection interval accepted.
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);
/// Distinct errors kept per collection; more are dropped (the first ones say enough).
pub const MAX_ERRORS: usize = 32;
/// Interfaces skipped unless configured otherwise: loopback and the virtual interfaces of
/// container engines, bridges and traffic shaping.
pub const DEFAULT_EXCLUDED_INTERFACES: &[&str] = &[
    "lo", "veth*", "docker*", "br-*", "virbr*", "cni*", "flannel*", "cali*", "podman*", "ifb*",
];

/// What to collect, from where, how often.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CollectConfig {
    /// Time between collections (the caller schedules; see [`validate_interval`]).
    pub interval: Duration,
    /// `/proc` unless testing.
    pub proc_root: PathBuf,
    /// `/sys` unless testing.
    pub sys_root: PathBuf,
    /// Interface name patterns to report (`*` matches any run of characters); empty
    /// means every interface not excluded.
    pub include_interfaces: Vec<String>,
    /// Interface name patterns never reported; applied after `include_interfaces`.
    pub exclude_interfaces: Vec<String>,
    pub max_filesystems: usize,
    pub max_interfaces: usize,
    pub max_sensors: usize,
}

impl Default for CollectConfig {
    fn default() -> Self {
        Self {
            interval: DEFAULT_INTERVAL,
            proc_root: PathBuf::from("/proc"),
            sys_root: PathBuf::from("/sys"),
            include_interfaces: Vec::new(),
            exclude_interfaces: DEFAULT_EXCLUDED_INTERFACES
                .iter()
                .map(|pattern| (*pattern).to_owned())
                .collect(),
            max_filesystems: 16,
            max_interfaces: 16,
            max_sensors: 16,
        }
    }
}

impl CollectConfig {
    /// Checks the interval and the interface patterns.
    pub fn validate(&self) -> Result<(), CollectConfigError> {
        validate_interval(self.interval)?;
        for (list, patterns) in [
            ("include_interfaces", &self.include_interfaces),
            ("exclude_interfaces", &self.exclude_interfaces),
        ] {
            if patterns.iter().any(|p| p.trim().is_empty()) {
                return Err(CollectConfigError::EmptyInterfacePattern { list });
            }
        }
        Ok(())
    }

    fn wants_interface(&self, name: &str) -> bool {
        let included = self.include_interfaces.is_empty()
            || self
                .include_interfaces
                .iter()
                .any(|pattern| glob_matches(pattern, name));
        included
            && !self
                .exclude_interfaces
                .iter()
                .any(|pattern| glob_matches(pattern, name))
    }
}

/// A collection interval that is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CollectConfigError {
    #[error("metrics interval {interval:?} is too short: it must be at least 1s")]
    IntervalTooShort { interval: Duration },
    #[error(
        "{list} has an empty interface pattern: give a name such as eth0 or a pattern such as wl*"
    )]
    EmptyInterfacePattern { list: &'static str },
}

/// Accepts an interval of at least [`MIN_INTERVAL`].
pub fn validate_interval(interval: Duration) -> Result<Duration, CollectConfigError> {
    if interval < MIN_INTERVAL {
        return Err(CollectConfigError::IntervalTooShort { interval });
    }
    Ok(interval)
}

/// A workload to measure, as the reconcile loop knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadRef {
    pub name: String,
    pub runtime: Runtime,
    /// The main process: the process itself, or a container's init process. `None` for
    /// workloads without a process of their own (wasm modules) or not running.
    pub pid: Option<u32>,
    pub restarts: u64,
}

/// Why one source gave no samples this time.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CollectError {
    #[error("cannot read {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("{path} is malformed: {reason}")]
    Malformed { path: PathBuf, reason: String },
    #[error("cannot measure the file system mounted at {mount}: statvfs failed: {reason}")]
    Statvfs { mount: String, reason: String },
}

/// Errors of one collection, deduplicated and bounded.
#[derive(Debug, Default)]
pub(crate) struct ErrorLog {
    errors: Vec<CollectError>,
}

impl ErrorLog {
    pub(crate) fn push(&mut self, error: CollectError) {
        if self.errors.len() < MAX_ERRORS && !self.errors.contains(&error) {
            self.errors.push(error);
        }
    }
}

/// Reads a whole file; `Ok(None)` if it is gone (a process that exited, a cgroup removed).
pub(crate) fn read_if_present(path: &Path) -> Result<Option<String>, CollectError> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(error) if is_gone(&error) => Ok(None),
        Err(error) => Err(CollectError::Read {
            path: path.to_owned(),
            reason: error.to_string(),
        }),
    }
}

fn is_gone(error: &io::Error) -> bool {
    error.kind() == io::ErrorKind::NotFound
        || error.raw_os_error() == Some(nix::errno::Errno::ESRCH as i32)
        || error.raw_os_error() == Some(nix::errno::Errno::ENODEV as i32)
}

/// Reads a host source; a missing or unreadable file is an error kept in `errors`.
fn read_source(path: &Path, errors: &mut ErrorLog) -> Option<String> {
    match fs::read_to_string(path) {
        Ok(text) => Some(text),
        Err(error) => {
            errors.push(CollectError::Read {
                path: path.to_owned(),
                reason: error.to_string(),
            });
            None
        }
    }
}

/// Reads and parses a host source; failures are kept in `errors`.
fn parse_source<T>(
    path: &Path,
    errors: &mut ErrorLog,
    parse: impl FnOnce(&str) -> Result<T, String>,
) -> Option<T> {
    let text = read_source(path, errors)?;
    match parse(&text) {
        Ok(value) => Some(value),
        Err(reason) => {
            errors.push(CollectError::Malformed {
                path: path.to_owned(),
                reason,
            });
            None
        }
    }
}

/// Collects metric sets; keeps what the next call needs for deltas.
pub struct Collector {
    config: CollectConfig,
    clock_ticks_per_second: f64,
    page_size: u64,
    previous_cpu: Option<CpuTimes>,
    previous_net: Option<NetSnapshot>,
    previous_workloads: HashMap<String, WorkloadCpu>,
    errors: Vec<CollectError>,
    previous_errors: Vec<CollectError>,
}

struct NetSnapshot {
    at: Instant,
    counters: HashMap<String, NetCounters>,
}

struct WorkloadCpu {
    pid: u32,
    source: CpuSource,
    seconds: f64,
    at: Instant,
}

impl Collector {
    pub fn new(config: CollectConfig) -> Collector {
        // USER_HZ and the page size are fixed per kernel ABI; sysconf only fails on
        // exotic libcs, where the Linux defaults are right.
        let clock_ticks_per_second = sysconf(nix::unistd::SysconfVar::CLK_TCK).unwrap_or(100);
        let page_size = sysconf(nix::unistd::SysconfVar::PAGE_SIZE).unwrap_or(4096);
        Collector {
            config,
            clock_ticks_per_second: clock_ticks_per_second as f64,
            page_size,
            previous_cpu: None,
            previous_net: None,
            previous_workloads: HashMap::new(),
            errors: Vec::new(),
            previous_errors: Vec::new(),
        }
    }

    pub fn config(&self) -> &CollectConfig {
        &self.config
    }

    /// The errors of the last collection, deduplicated: one per source that was skipped.
    pub fn last_errors(&self) -> &[CollectError] {
        &self.errors
    }

    /// The errors of the last collection that the one before did not have: what to log
    /// now without repeating a lasting problem every interval.
    pub fn new_errors(&self) -> impl Iterator<Item = &CollectError> {
        self.errors
            .iter()
            .filter(|error| !self.previous_errors.contains(error))
    }

    /// Collects one set, stamped `now`. Blocking.
    pub fn collect(&mut self, now: Timestamp, workloads: &[WorkloadRef]) -> MetricSet {
        self.collect_at(now, Instant::now(), workloads)
    }

    /// [`Collector::collect`] with the monotonic time of the readings given, so tests
    /// control the time between two collections.
    fn collect_at(&mut self, now: Timestamp, at: Instant, workloads: &[WorkloadRef]) -> MetricSet {
        let mut samples = Samples::default();
        let mut errors = ErrorLog::default();
        self.collect_cpu(&mut samples, &mut errors);
        self.collect_memory(&mut samples, &mut errors);
        self.collect_load_and_uptime(&mut samples, &mut errors);
        let mount_entries = parse_source(
            &self.config.proc_root.join("self/mountinfo"),
            &mut errors,
            mounts::parse_mountinfo,
        );
        if let Some(entries) = &mount_entries {
            self.collect_disks(entries, &mut samples, &mut errors);
        }
        self.collect_network(at, &mut samples, &mut errors);
        for reading in
            sensors::read_temperatures(&self.config.sys_root, self.config.max_sensors, &mut errors)
        {
            samples.push(
                metric::TEMP_CELSIUS,
                &[(metric::LABEL_SENSOR, &reading.sensor)],
                round(reading.celsius, 1),
            );
        }
        self.collect_workloads(
            at,
            workloads,
            mount_entries.as_deref().unwrap_or_default(),
            &mut samples,
            &mut errors,
        );
        self.previous_errors = std::mem::replace(&mut self.errors, errors.errors);
        MetricSet {
            time: now,
            samples: samples.0,
        }
    }

    fn collect_cpu(&mut self, samples: &mut Samples, errors: &mut ErrorLog) {
        let path = self.config.proc_root.join("stat");
        let Some(current) = parse_source(&path, errors, procfs::parse_stat_cpu) else {
            return;
        };
        if let Some(previous) = &self.previous_cpu
            && let Some(percent) = procfs::cpu_percent(previous, &current)
        {
            samples.push(metric::CPU_USED_PERCENT, &[], round(percent.used, 2));
            samples.push(metric::CPU_IOWAIT_PERCENT, &[], round(percent.iowait, 2));
        }
        self.previous_cpu = Some(current);
    }

    fn collect_memory(&self, samples: &mut Samples, errors: &mut ErrorLog) {
        let path = self.config.proc_root.join("meminfo");
        let Some(memory) = parse_source(&path, errors, procfs::parse_meminfo) else {
            return;
        };
        samples.push(metric::MEM_USED_BYTES, &[], memory.used() as f64);
        samples.push(metric::MEM_AVAILABLE_BYTES, &[], memory.available as f64);
        if memory.total > 0 {
            let percent = memory.used() as f64 / memory.total as f64 * 100.0;
            samples.push(metric::MEM_USED_PERCENT, &[], round(percent, 2));
        }
        samples.push(metric::SWAP_USED_BYTES, &[], memory.swap_used() as f64);
    }

    fn collect_load_and_uptime(&self, samples: &mut Samples, errors: &mut ErrorLog) {
        let path = self.config.proc_root.join("loadavg");
        if let Some([one, five, fifteen]) = parse_source(&path, errors, procfs::parse_loadavg) {
            samples.push(metric::LOAD_1, &[], one);
            samples.push(metric::LOAD_5, &[], five);
            samples.push(metric::LOAD_15, &[], fifteen);
        }
        let path = self.config.proc_root.join("uptime");
        if let Some(uptime) = parse_source(&path, errors, procfs::parse_uptime) {
            samples.push(metric::UPTIME_SECONDS, &[], uptime.floor());
        }
    }

    fn collect_disks(&self, entries: &[MountEntry], samples: &mut Samples, errors: &mut ErrorLog) {
        for filesystem in mounts::select_filesystems(entries, self.config.max_filesystems) {
            let mount = filesystem.mount_point.as_str();
            let stat = match nix::sys::statvfs::statvfs(mount) {
                Ok(stat) => stat,
                Err(errno) => {
                    errors.push(CollectError::Statvfs {
                        mount: mount.to_owned(),
                        reason: errno.desc().to_owned(),
                    });
                    continue;
                }
            };
            // The statvfs fields are c_ulong / fsblkcnt_t: 32 or 64 bits by platform.
            #[allow(clippy::unnecessary_cast)]
            let usage = disk_usage(
                stat.fragment_size() as u64,
                stat.blocks() as u64,
                stat.blocks_free() as u64,
                stat.blocks_available() as u64,
            );
            let Some(usage) = usage else {
                continue;
            };
            let labels = [(metric::LABEL_MOUNT, mount)];
            samples.push(metric::DISK_USED_BYTES, &labels, usage.used as f64);
            samples.push(metric::DISK_SIZE_BYTES, &labels, usage.size as f64);
            samples.push(
                metric::DISK_USED_PERCENT,
                &labels,
                round(usage.used_percent, 2),
            );
        }
    }

    fn collect_network(&mut self, at: Instant, samples: &mut Samples, errors: &mut ErrorLog) {
        let path = self.config.proc_root.join("net/dev");
        let Some(all) = parse_source(&path, errors, procfs::parse_net_dev) else {
            return;
        };
        let mut interfaces: Vec<NetCounters> = all
            .into_iter()
            .filter(|counters| self.config.wants_interface(&counters.interface))
            .collect();
        interfaces.sort_by(|a, b| a.interface.cmp(&b.interface));
        interfaces.truncate(self.config.max_interfaces);
        if let Some(previous) = &self.previous_net {
            let seconds = at.saturating_duration_since(previous.at).as_secs_f64();
            for current in &interfaces {
                let Some(before) = previous.counters.get(&current.interface) else {
                    continue;
                };
                if seconds <= 0.0 {
                    break;
                }
                let labels = [(metric::LABEL_INTERFACE, current.interface.as_str())];
                let rate = |before: u64, now: u64| {
                    (procfs::counter_delta(before, now) as f64 / seconds).round()
                };
                samples.push(
                    metric::NET_RX_BYTES_PER_S,
                    &labels,
                    rate(before.rx_bytes, current.rx_bytes),
                );
                samples.push(
                    metric::NET_TX_BYTES_PER_S,
                    &labels,
                    rate(before.tx_bytes, current.tx_bytes),
                );
                samples.push(
                    metric::NET_RX_ERRORS,
                    &labels,
                    procfs::counter_delta(before.rx_errors, current.rx_errors) as f64,
                );
                samples.push(
                    metric::NET_TX_ERRORS,
                    &labels,
                    procfs::counter_delta(before.tx_errors, current.tx_errors) as f64,
                );
            }
        }
        self.previous_net = Some(NetSnapshot {
            at,
            counters: interfaces
                .into_iter()
                .map(|counters| (counters.interface.clone(), counters))
                .collect(),
        });
    }

    fn collect_workloads(
        &mut self,
        at: Instant,
        workloads: &[WorkloadRef],
        mount_entries: &[MountEntry],
        samples: &mut Samples,
        errors: &mut ErrorLog,
    ) {
        let mut context = WorkloadContext {
            proc_root: &self.config.proc_root,
            sys_root: &self.config.sys_root,
            mount_entries,
            cgroups: None,
            processes: None,
        };
        let mut next: HashMap<String, WorkloadCpu> = HashMap::new();
        for workload in workloads {
            let labels = [
                (metric::LABEL_WORKLOAD, workload.name.as_str()),
                (metric::LABEL_RUNTIME, workload.runtime.as_str()),
            ];
            samples.push(metric::WORKLOAD_RESTARTS, &labels, workload.restarts as f64);
            let Some(pid) = workload.pid else {
                continue;
            };
            let Some(usage) =
                context.usage(pid, self.clock_ticks_per_second, self.page_size, errors)
            else {
                continue;
            };
            if let Some((source, seconds)) = usage.cpu {
                let current = WorkloadCpu {
                    pid,
                    source,
                    seconds,
                    at,
                };
                if let Some(previous) = self.previous_workloads.get(&workload.name)
                    && let Some(percent) = workload_cpu_percent(previous, &current)
                {
                    samples.push(metric::WORKLOAD_CPU_PERCENT, &labels, round(percent, 2));
                }
                next.insert(workload.name.clone(), current);
            }
            if let Some(bytes) = usage.memory_bytes {
                samples.push(metric::WORKLOAD_MEMORY_BYTES, &labels, bytes as f64);
            }
        }
        self.previous_workloads = next;
    }
}

fn sysconf(variable: nix::unistd::SysconfVar) -> Option<u64> {
    let value = nix::unistd::sysconf(variable).ok().flatten()?;
    u64::try_from(value).ok().filter(|v| *v > 0)
}

/// The CPU share between two readings of the same process from the same place, in percent
/// of one core; `None` if anything changed in between or the time went backwards.
fn workload_cpu_percent(previous: &WorkloadCpu, current: &WorkloadCpu) -> Option<f64> {
    if previous.pid != current.pid || previous.source != current.source {
        return None;
    }
    let elapsed = current
        .at
        .checked_duration_since(previous.at)?
        .as_secs_f64();
    let used = current.seconds - previous.seconds;
    if elapsed <= 0.0 || used < 0.0 {
        return None;
    }
    Some(used / elapsed * 100.0)
}

/// One file system's use, in bytes.
#[derive(Debug, Clone, Copy, PartialEq)]
struct DiskUsage {
    size: u64,
    used: u64,
    used_percent: f64,
}

/// `None` for a file system without blocks (nothing to report).
fn disk_usage(fragment_size: u64, blocks: u64, free: u64, available: u64) -> Option<DiskUsage> {
    let size = blocks.saturating_mul(fragment_size);
    if size == 0 {
        return None;
    }
    let used = blocks.saturating_sub(free).saturating_mul(fragment_size);
    let available = available.saturating_mul(fragment_size);
    // Like df: blocks reserved for root count neither as used nor as available.
    let usable = used.saturating_add(available);
    let used_percent = if usable == 0 {
        100.0
    } else {
        used as f64 / usable as f64 * 100.0
    };
    Some(DiskUsage {
        size,
        used,
        used_percent,
    })
}

/// What one collection learns once and shares between workloads.
struct WorkloadContext<'a> {
    proc_root: &'a Path,
    sys_root: &'a Path,
    mount_entries: &'a [MountEntry],
    /// The cgroup mounts and the agent's own cgroups, read on first need.
    cgroups: Option<(CgroupMounts, Vec<CgroupMembership>)>,
    /// Every process, read on first need.
    processes: Option<ProcessTable>,
}

struct WorkloadUsage {
    cpu: Option<(CpuSource, f64)>,
    memory_bytes: Option<u64>,
}

impl WorkloadContext<'_> {
    /// `None` if the process is gone.
    fn usage(
        &mut self,
        pid: u32,
        clock_ticks_per_second: f64,
        page_size: u64,
        errors: &mut ErrorLog,
    ) -> Option<WorkloadUsage> {
        let own = self.own_cgroups(pid, errors)?;
        let cpu = cgroup::cpu_seconds(&own).unwrap_or_else(|error| {
            errors.push(error);
            None
        });
        let memory_bytes = cgroup::memory_bytes(&own).unwrap_or_else(|error| {
            errors.push(error);
            None
        });
        if cpu.is_some() && memory_bytes.is_some() {
            return Some(WorkloadUsage { cpu, memory_bytes });
        }
        let proc_root = self.proc_root;
        let table = self
            .processes
            .get_or_insert_with(|| ProcessTable::scan(proc_root, errors));
        let (ticks, rss_pages) = table.tree_usage(pid)?;
        Some(WorkloadUsage {
            cpu: cpu.or(Some((
                CpuSource::ProcessTree,
                ticks as f64 / clock_ticks_per_second,
            ))),
            memory_bytes: memory_bytes.or(Some(rss_pages.saturating_mul(page_size))),
        })
    }

    /// `None` if the process is gone; no cgroups of its own if they cannot be known.
    fn own_cgroups(&mut self, pid: u32, errors: &mut ErrorLog) -> Option<OwnCgroups> {
        let path = self.proc_root.join(format!("{pid}/cgroup"));
        let memberships = match read_if_present(&path) {
            Ok(Some(text)) => procfs::parse_pid_cgroup(&text).unwrap_or_else(|reason| {
                errors.push(CollectError::Malformed { path, reason });
                Vec::new()
            }),
            Ok(None) => return None,
            Err(error) => {
                errors.push(error);
                Vec::new()
            }
        };
        if memberships.is_empty() {
            return Some(OwnCgroups::default());
        }
        let (proc_root, sys_root, entries) = (self.proc_root, self.sys_root, self.mount_entries);
        let (mounts, agent) = self.cgroups.get_or_insert_with(|| {
            let path = proc_root.join("self/cgroup");
            let agent = parse_source(&path, errors, procfs::parse_pid_cgroup).unwrap_or_default();
            (mounts::cgroup_mounts(entries, sys_root), agent)
        });
        Some(cgroup::own_cgroups(&memberships, agent, mounts))
    }
}

/// Every process's CPU time, resident pages and parent, from `/proc/<pid>/stat`.
struct ProcessTable {
    processes: HashMap<u32, ProcStat>,
    children: HashMap<u32, Vec<u32>>,
}

impl ProcessTable {
    fn scan(proc_root: &Path, errors: &mut ErrorLog) -> ProcessTable {
        let mut table = ProcessTable {
            processes: HashMap::new(),
            children: HashMap::new(),
        };
        let entries = match fs::read_dir(proc_root) {
            Ok(entries) => entries,
            Err(error) => {
                errors.push(CollectError::Read {
                    path: proc_root.to_owned(),
                    reason: error.to_string(),
                });
                return table;
            }
        };
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            let path = entry.path().join("stat");
            let text = match read_if_present(&path) {
                Ok(Some(text)) => text,
                // Exited between listing and reading.
                Ok(None) => continue,
                Err(error) => {
                    errors.push(error);
                    continue;
                }
            };
            match procfs::parse_pid_stat(&text) {
                Ok(stat) if stat.pid == pid => {
                    table.children.entry(stat.parent).or_default().push(pid);
                    table.processes.insert(pid, stat);
                }
                Ok(stat) => errors.push(CollectError::Malformed {
                    path,
                    reason: format!("names pid {} instead of {pid}", stat.pid),
                }),
                Err(reason) => errors.push(CollectError::Malformed { path, reason }),
            }
        }
        table
    }

    /// CPU ticks and resident pages of `root` and its live descendants; `None` if `root`
    /// is gone.
    fn tree_usage(&self, root: u32) -> Option<(u64, u64)> {
        self.processes.get(&root)?;
        let mut ticks = 0u64;
        let mut pages = 0u64;
        let mut seen = std::collections::HashSet::new();
        let mut stack = vec![root];
        while let Some(pid) = stack.pop() {
            // A parent cycle cannot happen in a real /proc; a fake or racy one must not loop.
            if !seen.insert(pid) {
                continue;
            }
            if let Some(stat) = self.processes.get(&pid) {
                ticks = ticks.saturating_add(stat.cpu_ticks);
                pages = pages.saturating_add(stat.rss_pages);
            }
            if let Some(children) = self.children.get(&pid) {
                stack.extend(children.iter().copied());
            }
        }
        Some((ticks, pages))
    }
}

/// The samples of one collection; non-finite values are dropped (JSON has no NaN).
#[derive(Default)]
struct Samples(Vec<MetricSample>);

impl Samples {
    fn push(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        if !value.is_finite() {
            return;
        }
        let labels: Labels = labels
            .iter()
            .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
            .collect();
        self.0.push(MetricSample {
            name: name.to_owned(),
            labels,
            value,
        });
    }
}

fn round(value: f64, decimals: i32) -> f64 {
    let factor = 10f64.powi(decimals);
    (value * factor).round() / factor
}

/// Whether `name` matches `pattern`, where `*` matches any run of characters.
fn glob_matches(pattern: &str, name: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    let (first, last) = match parts.as_slice() {
        [only] => return *only == name,
        [first, .., last] => (*first, *last),
        [] => return false,
    };
    if name.len() < first.len() + last.len() || !name.starts_with(first) || !name.ends_with(last) {
        return false;
    }
    let mut rest = &name[first.len()..name.len() - last.len()];
    for middle in &parts[1..parts.len() - 1] {
        match rest.find(middle) {
            Some(index) => rest = &rest[index + middle.len()..],
            None => return false,
        }
    }
    true
}
