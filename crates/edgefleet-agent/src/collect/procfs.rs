//! Parsers for the `/proc` files the collector reads, and the arithmetic on their
//! counters. Pure: text in, values out; no file is opened here.
//!
//! Every parser returns `Err(reason)` for text that is not what the kernel writes; the
//! caller adds the path. Counters are `u64` as the kernel prints them.

use std::collections::HashMap;

/// The aggregate `cpu` line of `/proc/stat`, in clock ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CpuTimes {
    /// Every state except `guest` and `guest_nice`, which `user` and `nice` already count.
    pub total: u64,
    pub idle: u64,
    pub iowait: u64,
}

impl CpuTimes {
    fn busy(&self) -> u64 {
        self.total
            .saturating_sub(self.idle)
            .saturating_sub(self.iowait)
    }
}

/// Parses the `cpu` line (all cores) of `/proc/stat`.
pub(crate) fn parse_stat_cpu(text: &str) -> Result<CpuTimes, String> {
    let line = text
        .lines()
        .find(|line| line.split_whitespace().next() == Some("cpu"))
        .ok_or("no aggregate `cpu` line")?;
    let values = line
        .split_whitespace()
        .skip(1)
        .map(|field| {
            field
                .parse::<u64>()
                .map_err(|_| format!("`cpu` line: {field:?} is not a tick count"))
        })
        .collect::<Result<Vec<u64>, String>>()?;
    if values.len() < 4 {
        return Err(format!(
            "`cpu` line has {} values, expected at least 4 (user nice system idle)",
            values.len()
        ));
    }
    // user nice system idle iowait irq softirq steal [guest guest_nice]
    let total = values
        .iter()
        .take(8)
        .fold(0u64, |sum, v| sum.saturating_add(*v));
    Ok(CpuTimes {
        total,
        idle: values[3],
        iowait: values.get(4).copied().unwrap_or(0),
    })
}

/// Host CPU use between two `/proc/stat` snapshots, in percent of all cores.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct CpuPercent {
    pub used: f64,
    pub iowait: f64,
}

/// `None` when no tick passed between the snapshots. The kernel's `iowait` counter can go
/// backwards (it is an estimate per core), so every part is clamped at zero instead of
/// trusting that `total` grows by the sum of its parts.
pub(crate) fn cpu_percent(previous: &CpuTimes, current: &CpuTimes) -> Option<CpuPercent> {
    let busy = current.busy().saturating_sub(previous.busy());
    let idle = current.idle.saturating_sub(previous.idle);
    let iowait = current.iowait.saturating_sub(previous.iowait);
    let total = busy + idle + iowait;
    if total == 0 {
        return None;
    }
    let total = total as f64;
    Some(CpuPercent {
        used: busy as f64 / total * 100.0,
        iowait: iowait as f64 / total * 100.0,
    })
}

/// What the collector uses of `/proc/meminfo`, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MemInfo {
    pub total: u64,
    pub available: u64,
    pub swap_total: u64,
    pub swap_free: u64,
}

impl MemInfo {
    pub fn used(&self) -> u64 {
        self.total.saturating_sub(self.available)
    }

    pub fn swap_used(&self) -> u64 {
        self.swap_total.saturating_sub(self.swap_free)
    }
}

/// Parses `/proc/meminfo`. `MemAvailable` (Linux 3.14+) falls back to
/// `MemFree + Buffers + Cached` on older kernels.
pub(crate) fn parse_meminfo(text: &str) -> Result<MemInfo, String> {
    let mut fields: HashMap<&str, u64> = HashMap::new();
    for line in text.lines() {
        let Some((key, rest)) = line.split_once(':') else {
            continue;
        };
        let mut parts = rest.split_whitespace();
        let Some(number) = parts.next() else {
            continue;
        };
        let value: u64 = number
            .parse()
            .map_err(|_| format!("{key}: {number:?} is not a number"))?;
        let bytes = match parts.next() {
            Some("kB") => value.saturating_mul(1024),
            None => value,
            Some(unit) => return Err(format!("{key}: unknown unit {unit:?}")),
        };
        fields.insert(key.trim(), bytes);
    }
    let field = |key: &str| fields.get(key).copied();
    let total = field("MemTotal").ok_or("no MemTotal line")?;
    let available = match field("MemAvailable") {
        Some(available) => available,
        None => {
            let free = field("MemFree").ok_or("neither MemAvailable nor MemFree")?;
            free + field("Buffers").unwrap_or(0) + field("Cached").unwrap_or(0)
        }
    };
    Ok(MemInfo {
        total,
        available: available.min(total),
        swap_total: field("SwapTotal").unwrap_or(0),
        swap_free: field("SwapFree").unwrap_or(0),
    })
}

/// Parses `/proc/loadavg`: the 1, 5 and 15 minute load averages.
pub(crate) fn parse_loadavg(text: &str) -> Result<[f64; 3], String> {
    let mut fields = text.split_whitespace();
    let mut load = [0.0; 3];
    for (slot, minutes) in load.iter_mut().zip(["1", "5", "15"]) {
        let field = fields
            .next()
            .ok_or_else(|| format!("no {minutes}-minute load average"))?;
        *slot = parse_non_negative(field)
            .ok_or_else(|| format!("{minutes}-minute load average {field:?} is not a number"))?;
    }
    Ok(load)
}

/// Parses `/proc/uptime`: seconds since boot.
pub(crate) fn parse_uptime(text: &str) -> Result<f64, String> {
    let field = text.split_whitespace().next().ok_or("empty file")?;
    parse_non_negative(field).ok_or_else(|| format!("{field:?} is not a number of seconds"))
}

fn parse_non_negative(field: &str) -> Option<f64> {
    field
        .parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && *v >= 0.0)
}

/// One interface's counters from `/proc/net/dev`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NetCounters {
    pub interface: String,
    pub rx_bytes: u64,
    pub rx_errors: u64,
    pub tx_bytes: u64,
    pub tx_errors: u64,
}

/// Parses `/proc/net/dev` (two header lines, then `name: 16 counters`).
pub(crate) fn parse_net_dev(text: &str) -> Result<Vec<NetCounters>, String> {
    let mut interfaces = Vec::new();
    for (index, line) in text.lines().enumerate().skip(2) {
        if line.trim().is_empty() {
            continue;
        }
        let line_number = index + 1;
        // Large counters can touch the colon (`eth0:123`), so split there, not on spaces.
        let (name, counters) = line
            .split_once(':')
            .ok_or_else(|| format!("line {line_number}: no `name:` prefix"))?;
        let values = counters
            .split_whitespace()
            .map(str::parse::<u64>)
            .collect::<Result<Vec<u64>, _>>()
            .map_err(|_| format!("line {line_number}: a counter is not a number"))?;
        if values.len() < 16 {
            return Err(format!(
                "line {line_number}: {} counters, expected 16",
                values.len()
            ));
        }
        interfaces.push(NetCounters {
            interface: name.trim().to_owned(),
            rx_bytes: values[0],
            rx_errors: values[2],
            tx_bytes: values[8],
            tx_errors: values[10],
        });
    }
    Ok(interfaces)
}

/// The growth of a monotonic counter. A decrease means the counter was reset (an
/// interface re-created, a 32-bit counter wrapped): it counted from zero since, so
/// `current` is the best estimate of the growth. Never negative.
pub(crate) fn counter_delta(previous: u64, current: u64) -> u64 {
    current.checked_sub(previous).unwrap_or(current)
}

/// What the collector uses of `/proc/<pid>/stat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProcStat {
    pub pid: u32,
    pub parent: u32,
    /// `utime + stime + cutime + cstime`: the process's own CPU time and that of its
    /// children it has waited for, so children that ran and exited between two
    /// collections still count.
    pub cpu_ticks: u64,
    pub rss_pages: u64,
}

/// Parses `/proc/<pid>/stat`. The command name is in parentheses and may itself contain
/// spaces and parentheses, so fields are counted from the last `)`.
pub(crate) fn parse_pid_stat(text: &str) -> Result<ProcStat, String> {
    let (head, tail) = text.rsplit_once(')').ok_or("no `(command)` field")?;
    let pid_field = head
        .split_once('(')
        .map(|(pid, _)| pid.trim())
        .ok_or("no `(command)` field")?;
    let pid = pid_field
        .parse::<u32>()
        .map_err(|_| format!("pid {pid_field:?} is not a number"))?;
    // Field 3 (state) is tail[0]; field n is tail[n - 3].
    let fields: Vec<&str> = tail.split_whitespace().collect();
    let field = |number: usize, what: &str| -> Result<u64, String> {
        let text = fields
            .get(number - 3)
            .ok_or_else(|| format!("no field {number} ({what})"))?;
        text.parse::<u64>()
            .map_err(|_| format!("field {number} ({what}) {text:?} is not a number"))
    };
    let parent = u32::try_from(field(4, "ppid")?).map_err(|_| "ppid out of range".to_owned())?;
    let cpu_ticks = [
        field(14, "utime")?,
        field(15, "stime")?,
        // cutime and cstime are signed in the kernel's format but never negative in practice.
        field(16, "cutime")?,
        field(17, "cstime")?,
    ]
    .iter()
    .fold(0u64, |sum, v| sum.saturating_add(*v));
    Ok(ProcStat {
        pid,
        parent,
        cpu_ticks,
        rss_pages: field(24, "rss")?,
    })
}

/// One line of `/proc/<pid>/cgroup`: `hierarchy-id:controllers:path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CgroupMembership {
    pub hierarchy: u32,
    /// Empty for the cgroup v2 (unified) line.
    pub controllers: Vec<String>,
    pub path: String,
}

impl CgroupMembership {
    pub fn is_v2(&self) -> bool {
        self.hierarchy == 0 && self.controllers.is_empty()
    }

    pub fn has_controller(&self, controller: &str) -> bool {
        self.controllers.iter().any(|c| c == controller)
    }
}

/// Parses `/proc/<pid>/cgroup`.
pub(crate) fn parse_pid_cgroup(text: &str) -> Result<Vec<CgroupMembership>, String> {
    let mut memberships = Vec::new();
    for (index, line) in text.lines().enumerate() {
        if line.is_empty() {
            continue;
        }
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(format!(
                "line {}: expected `id:controllers:path`",
                index + 1
            ));
        };
        let hierarchy = id
            .parse::<u32>()
            .map_err(|_| format!("line {}: hierarchy id {id:?} is not a number", index + 1))?;
        memberships.push(CgroupMembership {
            hierarchy,
            controllers: controllers
                .split(',')
                .filter(|c| !c.is_empty())
                .map(str::to_owned)
                .collect(),
            path: path.to_owned(),
        });
    }
    Ok(memberships)
}

/// The value of `key` in a flat keyed file (`cpu.stat`, `memory.stat`: `key value` lines).
pub(crate) fn keyed_value(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (name, value) = line.split_once(' ')?;
        if name == key {
            value.trim().parse().ok()
        } else {
            None
        }
    })
}

/// A file holding one number (`memory.current`, `cpuacct.usage`).
pub(crate) fn parse_single_number(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    trimmed
        .parse()
        .map_err(|_| format!("{trimmed:?} is not a number"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT_1: &str =
        "cpu  1000 0 500 8000 100 0 0 0 0 0\ncpu0 500 0 250 4000 50 0 0 0 0 0\nintr 1 2 3\n";
    // 400 ticks passed: 200 busy (user+system), 180 idle, 20 iowait.
    const STAT_2: &str =
        "cpu  1150 0 550 8180 120 0 0 0 0 0\ncpu0 575 0 275 4090 60 0 0 0 0 0\nintr 1 2 3\n";

    #[test]
    fn cpu_percent_from_two_stat_snapshots() {
        let first = parse_stat_cpu(STAT_1).unwrap();
        let second = parse_stat_cpu(STAT_2).unwrap();
        assert_eq!(
            first,
            CpuTimes {
                total: 9600,
                idle: 8000,
                iowait: 100
            }
        );
        let percent = cpu_percent(&first, &second).unwrap();
        assert!((percent.used - 50.0).abs() < 1e-9, "{percent:?}");
        assert!((percent.iowait - 5.0).abs() < 1e-9, "{percent:?}");
        // No tick passed: nothing to say.
        assert_eq!(cpu_percent(&second, &second), None);
    }

    #[test]
    fn guest_time_is_not_counted_twice() {
        let times = parse_stat_cpu("cpu 10 0 0 10 0 0 0 0 10 10\n").unwrap();
        assert_eq!(times.total, 20);
    }

    #[test]
    fn iowait_going_backwards_never_gives_negative_percents() {
        let first = parse_stat_cpu("cpu 100 0 0 100 50 0 0 0\n").unwrap();
        let second = parse_stat_cpu("cpu 150 0 0 150 40 0 0 0\n").unwrap();
        let percent = cpu_percent(&first, &second).unwrap();
        assert!((percent.used - 50.0).abs() < 1e-9, "{percent:?}");
        assert_eq!(percent.iowait, 0.0);
    }

    #[test]
    fn malformed_stat_says_what_is_wrong() {
        assert_eq!(
            parse_stat_cpu("cpu0 1 2 3 4\n").unwrap_err(),
            "no aggregate `cpu` line"
        );
        assert!(
            parse_stat_cpu("cpu 1 2 x 4\n")
                .unwrap_err()
                .contains("\"x\" is not a tick count")
        );
        assert!(
            parse_stat_cpu("cpu 1 2\n")
                .unwrap_err()
                .contains("at least 4")
        );
    }

    #[test]
    fn meminfo_in_bytes_with_old_kernel_fallback() {
        let text = "MemTotal:       2048 kB\nMemFree:         512 kB\nMemAvailable:   1024 kB\nBuffers: 1 kB\nSwapTotal: 100 kB\nSwapFree: 40 kB\nHugePages_Total: 0\n";
        let info = parse_meminfo(text).unwrap();
        assert_eq!(info.total, 2048 * 1024);
        assert_eq!(info.available, 1024 * 1024);
        assert_eq!(info.used(), 1024 * 1024);
        assert_eq!(info.swap_used(), 60 * 1024);
        let old = "MemTotal: 2048 kB\nMemFree: 512 kB\nBuffers: 128 kB\nCached: 256 kB\n";
        let info = parse_meminfo(old).unwrap();
        assert_eq!(info.available, (512 + 128 + 256) * 1024);
        assert_eq!(info.swap_used(), 0);
        assert_eq!(
            parse_meminfo("MemFree: 1 kB\n").unwrap_err(),
            "no MemTotal line"
        );
        assert!(
            parse_meminfo("MemTotal: lots kB\n")
                .unwrap_err()
                .contains("MemTotal: \"lots\" is not a number")
        );
    }

    #[test]
    fn loadavg_and_uptime() {
        assert_eq!(
            parse_loadavg("1.03 0.98 0.63 3/116 27157\n").unwrap(),
            [1.03, 0.98, 0.63]
        );
        assert!(
            parse_loadavg("1.0 0.5\n")
                .unwrap_err()
                .contains("15-minute")
        );
        assert!(
            parse_loadavg("1.0 -1 2\n")
                .unwrap_err()
                .contains("5-minute")
        );
        assert_eq!(parse_uptime("54037.86 83133.87\n").unwrap(), 54037.86);
        assert!(parse_uptime("soon\n").is_err());
        assert!(parse_uptime("").is_err());
    }

    #[test]
    fn net_dev_counters() {
        let text = "Inter-|   Receive                                                |  Transmit\n face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    lo: 4851730359 19476104    0    0    0     0          0         0 4851730359 19476104    0    0    0     0       0          0\n  eth0:386868699   19472    3    0    0     0          0         0  1121365   11101    4    0    0     0       0          0\n";
        let interfaces = parse_net_dev(text).unwrap();
        assert_eq!(interfaces.len(), 2);
        assert_eq!(
            interfaces[1],
            NetCounters {
                interface: "eth0".into(),
                rx_bytes: 386868699,
                rx_errors: 3,
                tx_bytes: 1121365,
                tx_errors: 4,
            }
        );
        let short = "h\nh\n eth0: 1 2 3\n";
        assert_eq!(
            parse_net_dev(short).unwrap_err(),
            "line 3: 3 counters, expected 16"
        );
    }

    #[test]
    fn counter_reset_is_growth_from_zero() {
        assert_eq!(counter_delta(100, 150), 50);
        assert_eq!(counter_delta(100, 100), 0);
        // Reset (or wrap): counted from zero since.
        assert_eq!(counter_delta(5_000_000, 1_000), 1_000);
    }

    #[test]
    fn pid_stat_with_a_hostile_command_name() {
        let text = "4242 (evil) name) (x) S 17 4242 4242 0 -1 4194304 100 0 0 0 250 50 7 3 20 0 1 0 123 10000000 321 18446744073709551615\n";
        assert_eq!(
            parse_pid_stat(text).unwrap(),
            ProcStat {
                pid: 4242,
                parent: 17,
                cpu_ticks: 310,
                rss_pages: 321,
            }
        );
        assert!(
            parse_pid_stat("12 (sh) S 1 2 3")
                .unwrap_err()
                .contains("no field 14 (utime)")
        );
        assert!(parse_pid_stat("garbage").is_err());
    }

    #[test]
    fn cgroup_memberships_v1_and_v2() {
        let text =
            "4:memory:/process_api/51907a\n2:cpu,cpuacct:/docker/abc\n0::/system.slice/x.scope\n";
        let memberships = parse_pid_cgroup(text).unwrap();
        assert_eq!(memberships.len(), 3);
        assert!(memberships[0].has_controller("memory"));
        assert!(memberships[1].has_controller("cpuacct"));
        assert!(!memberships[1].is_v2());
        assert!(memberships[2].is_v2());
        assert_eq!(memberships[2].path, "/system.slice/x.scope");
        // `name=systemd` hierarchies have a named controller; paths may contain colons.
        let named = parse_pid_cgroup("9:name=systemd:/a:b\n").unwrap();
        assert_eq!(named[0].path, "/a:b");
        assert!(
            parse_pid_cgroup("nonsense\n")
                .unwrap_err()
                .contains("line 1")
        );
    }

    #[test]
    fn keyed_and_single_values() {
        let text = "usage_usec 1500000\nuser_usec 1000000\n";
        assert_eq!(keyed_value(text, "usage_usec"), Some(1_500_000));
        assert_eq!(keyed_value(text, "usage"), None);
        assert_eq!(parse_single_number("4096\n").unwrap(), 4096);
        assert!(parse_single_number("max\n").is_err());
    }
}
