//! The collector on fake `/proc` and `/sys` trees: what one and two collections produce.

use std::time::{Duration, Instant};

use tempfile::TempDir;
use time::OffsetDateTime;

use super::*;

/// A fake host: `proc/` and `sys/` under a temporary directory, plus a `disk/` directory
/// that the fake mountinfo names as an ext4 file system (so `statvfs` has something real).
struct FakeHost {
    dir: TempDir,
}

const NET_HEADER: &str = "Inter-|   Receive                                                |  Transmit\n face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n";

impl FakeHost {
    fn new() -> FakeHost {
        let host = FakeHost {
            dir: tempfile::tempdir().unwrap(),
        };
        host.write("proc/stat", "cpu  1000 0 500 8000 100 0 0 0 0 0\n");
        host.write(
            "proc/meminfo",
            "MemTotal: 1000 kB\nMemFree: 100 kB\nMemAvailable: 250 kB\nSwapTotal: 100 kB\nSwapFree: 75 kB\n",
        );
        host.write("proc/loadavg", "0.50 0.25 0.10 1/100 4242\n");
        host.write("proc/uptime", "12345.67 20000.00\n");
        host.set_net(&[("lo", 1000, 0, 1000, 0), ("eth0", 10_000, 1, 5_000, 0)]);
        let disk = host.path("disk");
        std::fs::create_dir_all(&disk).unwrap();
        host.write(
            "proc/self/mountinfo",
            &format!(
                "1 0 0:21 / /proc rw - proc proc rw\n\
                 2 0 8:1 / {disk} rw,relatime - ext4 /dev/sda1 rw\n\
                 3 0 8:1 /sub {disk}/bind rw,relatime - ext4 /dev/sda1 rw\n\
                 4 0 0:40 / {disk}/tmp rw - tmpfs tmpfs rw\n\
                 5 0 0:41 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n\
                 6 0 0:42 / /sys/fs/cgroup/cpuacct rw - cgroup cgroup rw,cpuacct\n\
                 7 0 0:43 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n",
                disk = disk.display()
            ),
        );
        host.write(
            "proc/self/cgroup",
            "4:memory:/agent\n2:cpuacct:/\n0::/agent.service\n",
        );
        host
    }

    fn path(&self, relative: &str) -> std::path::PathBuf {
        self.dir.path().join(relative)
    }

    fn write(&self, relative: &str, contents: &str) {
        let path = self.path(relative);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, contents).unwrap();
    }

    /// `(name, rx_bytes, rx_errors, tx_bytes, tx_errors)` per interface.
    fn set_net(&self, interfaces: &[(&str, u64, u64, u64, u64)]) {
        let mut text = NET_HEADER.to_owned();
        for (name, rx, rx_errors, tx, tx_errors) in interfaces {
            text += &format!(
                "{name:>6}: {rx} 10 {rx_errors} 0 0 0 0 0 {tx} 10 {tx_errors} 0 0 0 0 0\n"
            );
        }
        self.write("proc/net/dev", &text);
    }

    /// A process: `/proc/<pid>/stat` (utime, stime; cutime and cstime 0) and its cgroups.
    fn process(&self, pid: u32, parent: u32, utime: u64, stime: u64, rss_pages: u64, cgroup: &str) {
        self.write(
            &format!("proc/{pid}/stat"),
            &format!(
                "{pid} (work er) S {parent} {pid} {pid} 0 -1 0 0 0 0 0 {utime} {stime} 0 0 20 0 1 0 100 1000000 {rss_pages} 18446744073709551615\n"
            ),
        );
        self.write(&format!("proc/{pid}/cgroup"), cgroup);
    }

    fn collector(&self) -> Collector {
        Collector::new(CollectConfig {
            proc_root: self.path("proc"),
            sys_root: self.path("sys"),
            ..CollectConfig::default()
        })
    }
}

fn epoch() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap()
}

fn value(set: &MetricSet, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    set.samples
        .iter()
        .find(|s| {
            s.name == name
                && s.labels.len() == labels.len()
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
}

fn names(set: &MetricSet) -> Vec<&str> {
    set.samples.iter().map(|s| s.name.as_str()).collect()
}

#[test]
fn host_metrics_from_two_collections() {
    let host = FakeHost::new();
    let mut collector = host.collector();
    let start = Instant::now();
    let first = collector.collect_at(epoch(), start, &[]);
    assert_eq!(collector.last_errors(), &[]);
    assert_eq!(first.time, epoch());
    // Deltas need two readings: left out, not reported as 0.
    for delta in [
        metric::CPU_USED_PERCENT,
        metric::CPU_IOWAIT_PERCENT,
        metric::NET_RX_BYTES_PER_S,
        metric::NET_RX_ERRORS,
    ] {
        assert!(!names(&first).contains(&delta), "{delta} in {first:?}");
    }
    assert_eq!(
        value(&first, metric::MEM_USED_BYTES, &[]),
        Some(750.0 * 1024.0)
    );
    assert_eq!(
        value(&first, metric::MEM_AVAILABLE_BYTES, &[]),
        Some(250.0 * 1024.0)
    );
    assert_eq!(value(&first, metric::MEM_USED_PERCENT, &[]), Some(75.0));
    assert_eq!(
        value(&first, metric::SWAP_USED_BYTES, &[]),
        Some(25.0 * 1024.0)
    );
    assert_eq!(value(&first, metric::LOAD_1, &[]), Some(0.5));
    assert_eq!(value(&first, metric::LOAD_15, &[]), Some(0.1));
    assert_eq!(value(&first, metric::UPTIME_SECONDS, &[]), Some(12345.0));
    // The disk once: not its bind mount, not the tmpfs, not the kernel file systems.
    let disk = host.path("disk").display().to_string();
    let disks: Vec<&str> = first
        .samples
        .iter()
        .filter(|s| s.name == metric::DISK_SIZE_BYTES)
        .map(|s| s.labels[metric::LABEL_MOUNT].as_str())
        .collect();
    assert_eq!(disks, [disk.as_str()]);
    let percent = value(&first, metric::DISK_USED_PERCENT, &[("mount", &disk)]).unwrap();
    assert!((0.0..=100.0).contains(&percent), "{percent}");
    assert!(value(&first, metric::DISK_USED_BYTES, &[("mount", &disk)]).unwrap() > 0.0);

    // 400 ticks later: 200 busy, 180 idle, 20 iowait; 10 s later: eth0 moved 5000 B in,
    // 2500 B out, 2 new receive errors.
    host.write("proc/stat", "cpu  1150 0 550 8180 120 0 0 0 0 0\n");
    host.set_net(&[("lo", 9000, 0, 9000, 0), ("eth0", 15_000, 3, 7_500, 0)]);
    let second = collector.collect_at(epoch(), start + Duration::from_secs(10), &[]);
    assert_eq!(collector.last_errors(), &[]);
    assert_eq!(value(&second, metric::CPU_USED_PERCENT, &[]), Some(50.0));
    assert_eq!(value(&second, metric::CPU_IOWAIT_PERCENT, &[]), Some(5.0));
    let eth0 = [("interface", "eth0")];
    assert_eq!(
        value(&second, metric::NET_RX_BYTES_PER_S, &eth0),
        Some(500.0)
    );
    assert_eq!(
        value(&second, metric::NET_TX_BYTES_PER_S, &eth0),
        Some(250.0)
    );
    assert_eq!(value(&second, metric::NET_RX_ERRORS, &eth0), Some(2.0));
    assert_eq!(value(&second, metric::NET_TX_ERRORS, &eth0), Some(0.0));
    // Loopback is excluded by default.
    assert_eq!(
        value(&second, metric::NET_RX_BYTES_PER_S, &[("interface", "lo")]),
        None
    );
}

#[test]
fn a_counter_that_went_down_was_reset_and_never_gives_a_negative_rate() {
    let host = FakeHost::new();
    let mut collector = host.collector();
    let start = Instant::now();
    host.set_net(&[("eth0", 1_000_000, 50, 1_000_000, 0)]);
    collector.collect_at(epoch(), start, &[]);
    // The interface was re-created: its counters start again from zero.
    host.set_net(&[("eth0", 2_000, 0, 400, 0)]);
    let set = collector.collect_at(epoch(), start + Duration::from_secs(2), &[]);
    let eth0 = [("interface", "eth0")];
    assert_eq!(value(&set, metric::NET_RX_BYTES_PER_S, &eth0), Some(1000.0));
    assert_eq!(value(&set, metric::NET_TX_BYTES_PER_S, &eth0), Some(200.0));
    assert_eq!(value(&set, metric::NET_RX_ERRORS, &eth0), Some(0.0));
    assert!(set.samples.iter().all(|s| s.value >= 0.0), "{set:?}");
}

#[test]
fn interfaces_are_filtered_sorted_and_capped() {
    let host = FakeHost::new();
    let interfaces: Vec<(String, u64, u64, u64, u64)> = [
        "wlan0", "eth1", "veth9a", "docker0", "br-1f", "eth0", "lo", "wg0",
    ]
    .iter()
    .map(|name| ((*name).to_owned(), 1, 0, 1, 0))
    .collect();
    let borrowed: Vec<(&str, u64, u64, u64, u64)> = interfaces
        .iter()
        .map(|(n, a, b, c, d)| (n.as_str(), *a, *b, *c, *d))
        .collect();
    host.set_net(&borrowed);
    let reported = |config: CollectConfig| {
        let mut collector = Collector::new(config);
        let start = Instant::now();
        collector.collect_at(epoch(), start, &[]);
        let set = collector.collect_at(epoch(), start + Duration::from_secs(1), &[]);
        set.samples
            .iter()
            .filter(|s| s.name == metric::NET_RX_BYTES_PER_S)
            .map(|s| s.labels[metric::LABEL_INTERFACE].clone())
            .collect::<Vec<_>>()
    };
    let base = CollectConfig {
        proc_root: host.path("proc"),
        sys_root: host.path("sys"),
        ..CollectConfig::default()
    };
    assert_eq!(reported(base.clone()), ["eth0", "eth1", "wg0", "wlan0"]);
    assert_eq!(
        reported(CollectConfig {
            include_interfaces: vec!["eth*".into(), "lo".into()],
            ..base.clone()
        }),
        ["eth0", "eth1"]
    );
    assert_eq!(
        reported(CollectConfig {
            exclude_interfaces: vec![],
            max_interfaces: 3,
            ..base
        }),
        ["br-1f", "docker0", "eth0"]
    );
}

#[test]
fn a_malformed_source_is_skipped_with_a_clear_error_and_the_rest_still_collected() {
    let host = FakeHost::new();
    let mut collector = host.collector();
    host.write("proc/meminfo", "MemTotal: plenty kB\n");
    std::fs::remove_file(host.path("proc/loadavg")).unwrap();
    let set = collector.collect_at(epoch(), Instant::now(), &[]);
    let messages: Vec<String> = collector
        .last_errors()
        .iter()
        .map(ToString::to_string)
        .collect();
    let meminfo = host.path("proc/meminfo");
    assert_eq!(messages.len(), 2, "{messages:?}");
    assert_eq!(
        messages[0],
        format!(
            "{} is malformed: MemTotal: \"plenty\" is not a number",
            meminfo.display()
        )
    );
    assert!(
        messages[1].starts_with(&format!(
            "cannot read {}: ",
            host.path("proc/loadavg").display()
        )),
        "{messages:?}"
    );
    assert!(!names(&set).contains(&metric::MEM_USED_BYTES));
    assert!(!names(&set).contains(&metric::LOAD_1));
    assert_eq!(value(&set, metric::UPTIME_SECONDS, &[]), Some(12345.0));
    assert!(names(&set).contains(&metric::DISK_USED_PERCENT));
    assert_eq!(collector.new_errors().count(), 2);

    // The same problem again: still an error, but nothing new to log.
    collector.collect_at(epoch(), Instant::now(), &[]);
    assert_eq!(collector.last_errors().len(), 2);
    assert_eq!(collector.new_errors().count(), 0);

    // Fixed: no errors any more.
    host.write("proc/meminfo", "MemTotal: 10 kB\nMemAvailable: 5 kB\n");
    host.write("proc/loadavg", "1 1 1 1/1 1\n");
    let set = collector.collect_at(epoch(), Instant::now(), &[]);
    assert_eq!(collector.last_errors(), &[]);
    assert_eq!(value(&set, metric::MEM_USED_PERCENT, &[]), Some(50.0));
}

#[test]
fn thermal_zones_and_hwmon_chips() {
    let host = FakeHost::new();
    host.write("sys/class/thermal/thermal_zone0/type", "x86_pkg_temp\n");
    host.write("sys/class/thermal/thermal_zone0/temp", "45000\n");
    host.write("sys/class/thermal/thermal_zone1/type", "acpitz\n");
    host.write("sys/class/thermal/thermal_zone1/temp", "27800\n");
    host.write("sys/class/thermal/thermal_zone10/type", "acpitz\n");
    host.write("sys/class/thermal/thermal_zone10/temp", "-5250\n");
    // Not a zone.
    host.write("sys/class/thermal/cooling_device0/type", "Fan\n");
    host.write("sys/class/hwmon/hwmon0/name", "coretemp\n");
    host.write("sys/class/hwmon/hwmon0/temp1_input", "52000\n");
    host.write("sys/class/hwmon/hwmon0/temp1_label", "Package id 0\n");
    host.write("sys/class/hwmon/hwmon0/temp2_input", "50000\n");
    host.write("sys/class/hwmon/hwmon0/in0_input", "1200\n");
    // The old layout: attributes in device/.
    host.write("sys/class/hwmon/hwmon1/name", "w83627\n");
    host.write("sys/class/hwmon/hwmon1/device/temp1_input", "38500\n");
    // A sensor that is not ready.
    host.write("sys/class/hwmon/hwmon2/name", "nvme\n");
    host.write("sys/class/hwmon/hwmon2/temp1_input", "N/A\n");
    let mut collector = host.collector();
    let set = collector.collect_at(epoch(), Instant::now(), &[]);
    let temperatures: Vec<(String, f64)> = set
        .samples
        .iter()
        .filter(|s| s.name == metric::TEMP_CELSIUS)
        .map(|s| (s.labels[metric::LABEL_SENSOR].clone(), s.value))
        .collect();
    assert_eq!(
        temperatures,
        [
            ("x86_pkg_temp".to_owned(), 45.0),
            ("acpitz/thermal_zone1".to_owned(), 27.8),
            ("acpitz/thermal_zone10".to_owned(), -5.3),
            ("coretemp/Package id 0".to_owned(), 52.0),
            ("coretemp/temp2".to_owned(), 50.0),
            ("w83627/temp1".to_owned(), 38.5),
        ]
    );
    assert_eq!(
        collector.last_errors(),
        &[CollectError::Malformed {
            path: host.path("sys/class/hwmon/hwmon2/temp1_input"),
            reason: "\"N/A\" is not a temperature in millidegrees Celsius".into(),
        }]
    );
}

#[test]
fn no_thermal_classes_means_no_temperatures_and_no_errors() {
    let host = FakeHost::new();
    let mut collector = host.collector();
    let set = collector.collect_at(epoch(), Instant::now(), &[]);
    assert!(!names(&set).contains(&metric::TEMP_CELSIUS));
    assert_eq!(collector.last_errors(), &[]);
}

fn workload(name: &str, runtime: Runtime, pid: Option<u32>, restarts: u64) -> WorkloadRef {
    WorkloadRef {
        name: name.into(),
        runtime,
        pid,
        restarts,
    }
}

/// Shares the agent's cgroups: measured through its process tree.
const AGENT_CGROUPS: &str = "4:memory:/agent\n2:cpuacct:/\n0::/agent.service\n";

#[test]
fn process_tree_cpu_and_memory() {
    let host = FakeHost::new();
    // 100 -> 101 -> 102 is the workload; 200 is someone else.
    host.process(100, 1, 100, 50, 1000, AGENT_CGROUPS);
    host.process(101, 100, 10, 0, 200, AGENT_CGROUPS);
    host.process(102, 101, 0, 0, 30, AGENT_CGROUPS);
    host.process(200, 1, 5000, 5000, 99999, AGENT_CGROUPS);
    let mut collector = host.collector();
    let ticks = collector.clock_ticks_per_second;
    let page = collector.page_size as f64;
    let workloads = [workload("web", Runtime::Process, Some(100), 2)];
    let labels = [("workload", "web"), ("runtime", "process")];
    let start = Instant::now();
    let first = collector.collect_at(epoch(), start, &workloads);
    assert_eq!(collector.last_errors(), &[]);
    assert_eq!(value(&first, metric::WORKLOAD_RESTARTS, &labels), Some(2.0));
    assert_eq!(
        value(&first, metric::WORKLOAD_MEMORY_BYTES, &labels),
        Some(1230.0 * page)
    );
    assert_eq!(value(&first, metric::WORKLOAD_CPU_PERCENT, &labels), None);

    // Two seconds later the tree used `ticks` more ticks (one CPU second): 50 % of a core.
    // The unrelated process's time does not count.
    host.process(100, 1, 100 + ticks as u64 / 2, 50, 1000, AGENT_CGROUPS);
    host.process(102, 101, ticks as u64 / 2, 0, 30, AGENT_CGROUPS);
    host.process(200, 1, 9000, 9000, 99999, AGENT_CGROUPS);
    let second = collector.collect_at(epoch(), start + Duration::from_secs(2), &workloads);
    assert_eq!(
        value(&second, metric::WORKLOAD_CPU_PERCENT, &labels),
        Some(50.0)
    );

    // A child exited: its time left the tree. No percentage this time, never a negative one.
    std::fs::remove_dir_all(host.path("proc/102")).unwrap();
    let third = collector.collect_at(epoch(), start + Duration::from_secs(3), &workloads);
    assert_eq!(value(&third, metric::WORKLOAD_CPU_PERCENT, &labels), None);
    assert_eq!(
        value(&third, metric::WORKLOAD_MEMORY_BYTES, &labels),
        Some(1200.0 * page)
    );
    // ...and the next interval is measured again.
    host.process(101, 100, 10 + ticks as u64, 0, 200, AGENT_CGROUPS);
    let fourth = collector.collect_at(epoch(), start + Duration::from_secs(4), &workloads);
    assert_eq!(
        value(&fourth, metric::WORKLOAD_CPU_PERCENT, &labels),
        Some(100.0)
    );
    assert_eq!(collector.last_errors(), &[]);
}

#[test]
fn a_new_main_process_starts_a_new_measurement() {
    let host = FakeHost::new();
    host.process(100, 1, 1000, 0, 10, AGENT_CGROUPS);
    host.process(300, 1, 0, 0, 10, AGENT_CGROUPS);
    let mut collector = host.collector();
    let start = Instant::now();
    collector.collect_at(
        epoch(),
        start,
        &[workload("web", Runtime::Process, Some(100), 0)],
    );
    // Restarted as pid 300: its 0 ticks must not read as a drop from 1000, nor as a rate.
    let set = collector.collect_at(
        epoch(),
        start + Duration::from_secs(1),
        &[workload("web", Runtime::Process, Some(300), 1)],
    );
    let labels = [("workload", "web"), ("runtime", "process")];
    assert_eq!(value(&set, metric::WORKLOAD_CPU_PERCENT, &labels), None);
    assert_eq!(value(&set, metric::WORKLOAD_RESTARTS, &labels), Some(1.0));
    assert!(value(&set, metric::WORKLOAD_MEMORY_BYTES, &labels).is_some());
}

#[test]
fn a_vanished_or_missing_process_reports_only_restarts() {
    let host = FakeHost::new();
    let mut collector = host.collector();
    let set = collector.collect_at(
        epoch(),
        Instant::now(),
        &[
            workload("gone", Runtime::Process, Some(4_000_000), 3),
            workload("module", Runtime::Wasm, None, 0),
        ],
    );
    assert_eq!(collector.last_errors(), &[]);
    let workload_samples: Vec<(&str, &str, &str)> = set
        .samples
        .iter()
        .filter(|s| s.name.starts_with("workload."))
        .map(|s| {
            (
                s.name.as_str(),
                s.labels["workload"].as_str(),
                s.labels["runtime"].as_str(),
            )
        })
        .collect();
    assert_eq!(
        workload_samples,
        [
            (metric::WORKLOAD_RESTARTS, "gone", "process"),
            (metric::WORKLOAD_RESTARTS, "module", "wasm"),
        ]
    );
}

#[test]
fn a_container_in_its_own_cgroup_is_measured_there_on_a_hybrid_host() {
    let host = FakeHost::new();
    // The container's init (500) has a child (501); a `docker exec` process (600) is in
    // the cgroup too but not in the tree.
    let container =
        "4:memory:/docker/abc\n2:cpuacct:/docker/abc\n0::/system.slice/docker-abc.scope\n";
    host.process(500, 1, 0, 0, 10, container);
    host.process(501, 500, 0, 0, 10, container);
    host.process(600, 1, 0, 0, 10, container);
    // The unified tree has no memory controller here (hybrid): cpu.stat only.
    host.write(
        "sys/fs/cgroup/unified/system.slice/docker-abc.scope/cpu.stat",
        "usage_usec 3000000\nuser_usec 2000000\nsystem_usec 1000000\n",
    );
    host.write(
        "sys/fs/cgroup/memory/docker/abc/memory.usage_in_bytes",
        "50000000\n",
    );
    host.write(
        "sys/fs/cgroup/memory/docker/abc/memory.stat",
        "cache 1000\ntotal_inactive_file 8000000\n",
    );
    let mut collector = host.collector();
    let workloads = [workload("db", Runtime::Container, Some(500), 0)];
    let labels = [("workload", "db"), ("runtime", "container")];
    let start = Instant::now();
    let first = collector.collect_at(epoch(), start, &workloads);
    assert_eq!(collector.last_errors(), &[]);
    assert_eq!(
        value(&first, metric::WORKLOAD_MEMORY_BYTES, &labels),
        Some(42_000_000.0)
    );
    // 1.5 CPU seconds in 1 s: one and a half cores.
    host.write(
        "sys/fs/cgroup/unified/system.slice/docker-abc.scope/cpu.stat",
        "usage_usec 4500000\n",
    );
    let second = collector.collect_at(epoch(), start + Duration::from_secs(1), &workloads);
    assert_eq!(
        value(&second, metric::WORKLOAD_CPU_PERCENT, &labels),
        Some(150.0)
    );
}

#[test]
fn cgroup_v1_cpu_and_v2_memory() {
    let host = FakeHost::new();
    host.write(
        "proc/self/mountinfo",
        "1 0 0:42 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n\
         2 0 0:43 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n",
    );
    host.write("proc/self/cgroup", "3:cpu,cpuacct:/\n0::/\n");
    host.process(700, 1, 0, 0, 10, "3:cpu,cpuacct:/ctr\n0::/ctr\n");
    host.write(
        "sys/fs/cgroup/cpu,cpuacct/ctr/cpuacct.usage",
        "1000000000\n",
    );
    host.write("sys/fs/cgroup/unified/ctr/memory.current", "4096\n");
    let mut collector = host.collector();
    let workloads = [workload("w", Runtime::Container, Some(700), 0)];
    let labels = [("workload", "w"), ("runtime", "container")];
    let start = Instant::now();
    let first = collector.collect_at(epoch(), start, &workloads);
    // No memory.stat: the usage is the best figure there is.
    assert_eq!(
        value(&first, metric::WORKLOAD_MEMORY_BYTES, &labels),
        Some(4096.0)
    );
    host.write(
        "sys/fs/cgroup/cpu,cpuacct/ctr/cpuacct.usage",
        "1250000000\n",
    );
    let second = collector.collect_at(epoch(), start + Duration::from_secs(1), &workloads);
    assert_eq!(
        value(&second, metric::WORKLOAD_CPU_PERCENT, &labels),
        Some(25.0)
    );
    assert_eq!(collector.last_errors(), &[]);
}

#[test]
fn a_malformed_cgroup_file_falls_back_to_the_process_tree_with_an_error() {
    let host = FakeHost::new();
    host.process(800, 1, 10, 0, 5, "0::/ctr\n");
    host.write("sys/fs/cgroup/unified/ctr/cpu.stat", "user_usec 5\n");
    let mut collector = host.collector();
    let set = collector.collect_at(
        epoch(),
        Instant::now(),
        &[workload("w", Runtime::Container, Some(800), 0)],
    );
    assert_eq!(
        collector.last_errors(),
        &[CollectError::Malformed {
            path: host.path("sys/fs/cgroup/unified/ctr/cpu.stat"),
            reason: "no `usage_usec` line".into(),
        }]
    );
    let page = collector.page_size as f64;
    assert_eq!(
        value(
            &set,
            metric::WORKLOAD_MEMORY_BYTES,
            &[("workload", "w"), ("runtime", "container")]
        ),
        Some(5.0 * page)
    );
}

#[test]
fn every_value_is_finite_and_the_set_round_trips_as_json() {
    let host = FakeHost::new();
    host.process(100, 1, 1, 1, 1, AGENT_CGROUPS);
    let mut collector = host.collector();
    let start = Instant::now();
    let workloads = [workload("web", Runtime::Process, Some(100), 0)];
    collector.collect_at(epoch(), start, &workloads);
    host.write("proc/stat", "cpu  1150 0 550 8180 120 0 0 0 0 0\n");
    let set = collector.collect_at(epoch(), start + Duration::from_secs(60), &workloads);
    assert!(set.samples.iter().all(|s| s.value.is_finite()));
    let json = serde_json::to_string(&set).unwrap();
    let back: MetricSet = serde_json::from_str(&json).unwrap();
    assert_eq!(back, set);
}

#[test]
fn the_same_instant_twice_gives_no_rates() {
    let host = FakeHost::new();
    let mut collector = host.collector();
    let at = Instant::now();
    collector.collect_at(epoch(), at, &[]);
    let set = collector.collect_at(epoch(), at, &[]);
    assert!(!names(&set).contains(&metric::NET_RX_BYTES_PER_S));
    // No tick passed in /proc/stat either.
    assert!(!names(&set).contains(&metric::CPU_USED_PERCENT));
}

#[test]
fn interval_validation() {
    assert_eq!(
        validate_interval(Duration::from_secs(1)),
        Ok(Duration::from_secs(1))
    );
    let error = validate_interval(Duration::from_millis(500)).unwrap_err();
    assert_eq!(
        error.to_string(),
        "metrics interval 500ms is too short: it must be at least 1s"
    );
    assert_eq!(CollectConfig::default().validate(), Ok(()));
    assert_eq!(CollectConfig::default().interval, Duration::from_secs(60));
    let error = CollectConfig {
        include_interfaces: vec![" ".into()],
        ..CollectConfig::default()
    }
    .validate()
    .unwrap_err();
    assert!(
        error
            .to_string()
            .starts_with("include_interfaces has an empty interface pattern")
    );
}

#[test]
fn glob_patterns() {
    let check = |pattern: &str, name: &str, expected: bool| {
        assert_eq!(glob_matches(pattern, name), expected, "{pattern} ~ {name}");
    };
    check("lo", "lo", true);
    check("lo", "lo0", false);
    check("veth*", "veth12ab", true);
    check("veth*", "eth0", false);
    check("*", "anything", true);
    check("br-*", "br-", true);
    check("*0", "eth0", true);
    check("e*h*0", "eth0", true);
    check("e*h*1", "eth0", false);
    check("ab*ba", "aba", false);
}

#[test]
fn disk_usage_like_df() {
    // 1000 blocks of 4 KiB, 300 free of which 250 available to users (50 reserved).
    let usage = disk_usage(4096, 1000, 300, 250).unwrap();
    assert_eq!(usage.size, 4_096_000);
    assert_eq!(usage.used, 700 * 4096);
    assert!((usage.used_percent - 700.0 / 950.0 * 100.0).abs() < 1e-9);
    assert_eq!(disk_usage(4096, 0, 0, 0), None);
    // Full, with only reserved blocks left.
    assert_eq!(disk_usage(1, 10, 0, 0).unwrap().used_percent, 100.0);
}

#[test]
fn rounding() {
    assert_eq!(round(12.345_678, 2), 12.35);
    assert_eq!(round(27.849_999, 1), 27.8);
    assert_eq!(round(-5.25, 1), -5.3);
}

#[test]
fn the_collector_can_move_to_a_blocking_task() {
    fn assert_send<T: Send + 'static>() {}
    assert_send::<Collector>();
}
