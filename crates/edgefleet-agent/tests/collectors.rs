//! The metric collector on this machine's real `/proc` and `/sys`, with real processes as
//! workloads: plausible host metrics, a busy process's CPU share, a large process's
//! memory, and what one collection costs in time and in compressed bytes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use edgefleet_agent::collect::{CollectConfig, Collector, WorkloadRef, metric};
use edgefleet_wire::manifest::Runtime;
use edgefleet_wire::telemetry::MetricSet;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use time::OffsetDateTime;

/// A process started in its own process group, killed (the whole group) when dropped.
struct Spawned(Child);

impl Spawned {
    fn start(command: &mut Command) -> Spawned {
        let child = command
            .process_group(0)
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start {command:?}: {error}"));
        Spawned(child)
    }

    fn shell(script: &str) -> Spawned {
        Spawned::start(Command::new("sh").arg("-c").arg(script))
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }

    fn workload(&self, name: &str) -> WorkloadRef {
        WorkloadRef {
            name: name.to_owned(),
            runtime: Runtime::Process,
            pid: Some(self.pid()),
            restarts: 0,
        }
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let group = Pid::from_raw(self.0.id() as i32);
        let _ = killpg(group, Signal::SIGKILL);
        let _ = self.0.wait();
    }
}

fn value(set: &MetricSet, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    set.samples
        .iter()
        .find(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
}

fn collect(collector: &mut Collector, workloads: &[WorkloadRef]) -> MetricSet {
    let set = collector.collect(OffsetDateTime::now_utc(), workloads);
    assert_eq!(
        collector.last_errors(),
        &[],
        "collecting on this machine gave errors"
    );
    set
}

#[test]
fn host_metrics_are_present_and_plausible() {
    let mut collector = Collector::new(CollectConfig::default());
    collect(&mut collector, &[]);
    std::thread::sleep(Duration::from_millis(300));
    let set = collect(&mut collector, &[]);
    let get =
        |name: &str| value(&set, name, &[]).unwrap_or_else(|| panic!("no {name} in {set:#?}"));
    assert!(get(metric::MEM_USED_BYTES) > 0.0);
    assert!(get(metric::MEM_AVAILABLE_BYTES) > 0.0);
    assert!((0.0..=100.0).contains(&get(metric::MEM_USED_PERCENT)));
    assert!(get(metric::SWAP_USED_BYTES) >= 0.0);
    assert!(get(metric::UPTIME_SECONDS) > 0.0);
    assert!(get(metric::LOAD_1) >= 0.0);
    let cpu = get(metric::CPU_USED_PERCENT);
    assert!((0.0..=100.0).contains(&cpu), "{cpu}");
    let root = [(metric::LABEL_MOUNT, "/")];
    let used_percent = value(&set, metric::DISK_USED_PERCENT, &root)
        .unwrap_or_else(|| panic!("no disk.used_percent for / (is / an overlay here?): {set:#?}"));
    assert!((0.0..=100.0).contains(&used_percent), "{used_percent}");
    let used = value(&set, metric::DISK_USED_BYTES, &root).unwrap();
    let size = value(&set, metric::DISK_SIZE_BYTES, &root).unwrap();
    assert!(used > 0.0 && used <= size, "used {used} of {size}");
    // No kernel or memory file system sneaks in.
    for sample in set
        .samples
        .iter()
        .filter(|s| s.name == metric::DISK_SIZE_BYTES)
    {
        let mount = &sample.labels[metric::LABEL_MOUNT];
        assert!(
            !mount.starts_with("/proc") && !mount.starts_with("/sys") && !mount.starts_with("/dev"),
            "{mount}"
        );
    }
    // Loopback never appears, the machine's other interfaces do, with rates.
    assert!(
        set.samples
            .iter()
            .all(|s| s.labels.get(metric::LABEL_INTERFACE).map(String::as_str) != Some("lo"))
    );
    let rates = set
        .samples
        .iter()
        .filter(|s| s.name == metric::NET_RX_BYTES_PER_S)
        .count();
    assert!(rates > 0, "no interface rates in {set:#?}");
}

#[test]
fn a_busy_process_uses_cpu() {
    let busy = Spawned::shell("while :; do :; done");
    // The busy loop runs in a grandchild: the process tree counts it.
    let busy_child = Spawned::shell("sh -c 'while :; do :; done' & wait");
    let idle = Spawned::start(Command::new("sleep").arg("60"));
    let workloads = [
        busy.workload("busy"),
        busy_child.workload("busy-child"),
        idle.workload("idle"),
    ];
    let mut collector = Collector::new(CollectConfig::default());
    let first = collect(&mut collector, &workloads);
    assert_eq!(
        value(
            &first,
            metric::WORKLOAD_CPU_PERCENT,
            &[("workload", "busy")]
        ),
        None,
        "the first collection has no CPU share yet"
    );
    std::thread::sleep(Duration::from_secs(1));
    let second = collect(&mut collector, &workloads);
    let percent = |name: &str| {
        value(&second, metric::WORKLOAD_CPU_PERCENT, &[("workload", name)])
            .unwrap_or_else(|| panic!("no CPU share for {name}: {second:#?}"))
    };
    assert!(percent("busy") > 20.0, "busy: {}", percent("busy"));
    assert!(
        percent("busy-child") > 20.0,
        "busy-child: {}",
        percent("busy-child")
    );
    assert!(percent("idle") < 5.0, "idle: {}", percent("idle"));
    assert_eq!(
        value(
            &second,
            metric::WORKLOAD_RESTARTS,
            &[("workload", "busy"), ("runtime", "process")]
        ),
        Some(0.0)
    );
}

#[test]
fn a_large_process_uses_memory() {
    let mut python = Command::new("python3");
    python
        .arg("-c")
        .arg(
            "import sys\n\
             block = b'x' * (50 * 1024 * 1024)\n\
             print('ready', flush=True)\n\
             sys.stdin.read()\n",
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    let mut large = Spawned::start(&mut python);
    let mut line = String::new();
    BufReader::new(large.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "ready", "python3 did not allocate its block");
    let small = Spawned::start(Command::new("sleep").arg("60"));
    let workloads = [large.workload("large"), small.workload("small")];
    let mut collector = Collector::new(CollectConfig::default());
    let set = collect(&mut collector, &workloads);
    let memory = |name: &str| {
        value(&set, metric::WORKLOAD_MEMORY_BYTES, &[("workload", name)])
            .unwrap_or_else(|| panic!("no memory for {name}: {set:#?}"))
    };
    assert!(memory("large") > 40e6, "large: {}", memory("large"));
    assert!(memory("small") < 10e6, "small: {}", memory("small"));
    // `large` holds python's stdin open, so it waits until the guard kills it.
    drop(large);
}

#[test]
fn a_process_that_exited_is_skipped_without_error() {
    let mut done = Command::new("true").spawn().unwrap();
    let pid = done.id();
    done.wait().unwrap();
    let mut collector = Collector::new(CollectConfig::default());
    let set = collect(
        &mut collector,
        &[WorkloadRef {
            name: "done".into(),
            runtime: Runtime::Process,
            pid: Some(pid),
            restarts: 4,
        }],
    );
    let samples: Vec<&str> = set
        .samples
        .iter()
        .filter(|s| s.labels.get("workload").map(String::as_str) == Some("done"))
        .map(|s| s.name.as_str())
        .collect();
    assert_eq!(samples, [metric::WORKLOAD_RESTARTS]);
}

/// Cgroups made for one test (a v2 one, and a v1 `memory` one on hybrid hosts), removed
/// when dropped. Needs root, as the agent does to read other workloads' cgroups.
struct TestCgroups {
    dirs: Vec<PathBuf>,
}

impl TestCgroups {
    fn create() -> TestCgroups {
        let name = format!("edgefleet-collect-test-{}", std::process::id());
        let root = Path::new("/sys/fs/cgroup");
        let parents: Vec<PathBuf> = if root.join("cgroup.controllers").exists() {
            vec![root.to_owned()]
        } else if root.join("unified/cgroup.controllers").exists() {
            vec![root.join("unified"), root.join("memory")]
        } else {
            panic!("no cgroup v2 hierarchy at /sys/fs/cgroup or /sys/fs/cgroup/unified");
        };
        let mut cgroups = TestCgroups { dirs: Vec::new() };
        for parent in parents {
            let dir = parent.join(&name);
            std::fs::create_dir(&dir).unwrap_or_else(|error| {
                panic!(
                    "cannot create the cgroup {} (run as root): {error}",
                    dir.display()
                )
            });
            cgroups.dirs.push(dir);
        }
        cgroups
    }

    fn add(&self, pid: u32) {
        for dir in &self.dirs {
            std::fs::write(dir.join("cgroup.procs"), pid.to_string()).unwrap_or_else(|error| {
                panic!("cannot move {pid} into {}: {error}", dir.display())
            });
        }
    }
}

impl Drop for TestCgroups {
    fn drop(&mut self) {
        for dir in &self.dirs {
            // Killed members leave the cgroup once reaped; give the kernel a moment.
            for _ in 0..50 {
                if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// A workload whose main process sits in a cgroup of its own is measured through the
/// cgroup: CPU and memory of members outside its process tree (like `docker exec`
/// processes) count. On this hybrid host CPU comes from the v2 `cpu.stat` and memory from
/// the v1 `memory` controller.
#[test]
fn a_workload_in_its_own_cgroup_is_measured_through_the_cgroup() {
    let cgroups = TestCgroups::create();
    let main = Spawned::start(Command::new("sleep").arg("60"));
    cgroups.add(main.pid());
    // Not descendants of `main`: only the cgroup sees them.
    let busy = Spawned::shell("while :; do :; done");
    cgroups.add(busy.pid());
    // Moved before it allocates, so the memory is charged to the test cgroup.
    let mut large = Spawned::start(
        Command::new("sh")
            .arg("-c")
            .arg("read go; exec python3 -c \"import sys; block = b'x' * (50 * 1024 * 1024); print('ready', flush=True); sys.stdin.read()\"")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped()),
    );
    cgroups.add(large.pid());
    writeln!(large.0.stdin.as_mut().unwrap(), "go").unwrap();
    let mut line = String::new();
    BufReader::new(large.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "ready", "python3 did not allocate its block");

    let workloads = [WorkloadRef {
        name: "ctr".into(),
        runtime: Runtime::Container,
        pid: Some(main.pid()),
        restarts: 0,
    }];
    let mut collector = Collector::new(CollectConfig::default());
    collect(&mut collector, &workloads);
    std::thread::sleep(Duration::from_secs(1));
    let set = collect(&mut collector, &workloads);
    let labels = [("workload", "ctr"), ("runtime", "container")];
    let cpu = value(&set, metric::WORKLOAD_CPU_PERCENT, &labels)
        .unwrap_or_else(|| panic!("no CPU share: {set:#?}"));
    let memory = value(&set, metric::WORKLOAD_MEMORY_BYTES, &labels)
        .unwrap_or_else(|| panic!("no memory: {set:#?}"));
    assert!(cpu > 20.0, "cpu {cpu}");
    assert!(memory > 40e6, "memory {memory}");
    drop((main, busy, large));
    drop(cgroups);
}

/// Time of one collection (median of 100) and the compressed size of one set, with ten
/// workloads (a busy edge node). Run with `--nocapture` to see the numbers.
#[test]
fn cost_and_size_of_one_collection() {
    let sleepers: Vec<Spawned> = (0..10)
        .map(|_| Spawned::start(Command::new("sleep").arg("60")))
        .collect();
    let workloads: Vec<WorkloadRef> = sleepers
        .iter()
        .enumerate()
        .map(|(n, s)| s.workload(&format!("service-{n}")))
        .collect();
    let mut collector = Collector::new(CollectConfig::default());
    let mut times = Vec::with_capacity(100);
    let mut set = collect(&mut collector, &workloads);
    for _ in 0..100 {
        let started = Instant::now();
        set = collector.collect(OffsetDateTime::now_utc(), &workloads);
        times.push(started.elapsed());
    }
    assert_eq!(collector.last_errors(), &[]);
    times.sort();
    let median = times[50];
    let json = serde_json::to_vec(&set).unwrap();
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(&json).unwrap();
    let gzipped = encoder.finish().unwrap().len();
    let per_day = gzipped * 24 * 60;
    eprintln!(
        "one collection: median {median:?} (min {:?}, max {:?}) over 100; {} samples, \
         {} bytes of JSON, {gzipped} gzipped; one set a minute = {per_day} bytes/day ({:.2} MiB)",
        times[0],
        times[99],
        set.samples.len(),
        json.len(),
        per_day as f64 / (1024.0 * 1024.0),
    );
    assert!(median < Duration::from_millis(100), "median {median:?}");
    // The budget: 5 MiB a day with one set a minute.
    assert!(per_day < 5 * 1024 * 1024, "{per_day} bytes/day");
}
