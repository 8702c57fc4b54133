//! The standard Prometheus process metrics, read from `/proc/self`: resident and virtual
//! memory, CPU time, open and maximum file descriptors, start time.
//!
//! Parsing is pure (`parse_stat`, `parse_btime`, `parse_max_open_files`); `families`
//! reads the files. A file that cannot be read or parsed (not Linux, a hardened `/proc`)
//! leaves its metrics out rather than failing the scrape.

use super::exposition::{Family, Kind, Value};

/// The fields of `/proc/<pid>/stat` used here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    /// User and system CPU time, in clock ticks.
    pub utime_ticks: u64,
    pub stime_ticks: u64,
    /// Start time after boot, in clock ticks.
    pub start_ticks: u64,
    pub virtual_bytes: u64,
    pub rss_pages: u64,
}

/// Parses `/proc/<pid>/stat`. The command name (field 2) may hold spaces and parentheses,
/// so fields are counted from the last `)`.
pub fn parse_stat(text: &str) -> Option<Stat> {
    let after_name = &text[text.rfind(')')? + 1..];
    // Field 3 (state) is the first one after the name.
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let field = |number: usize| -> Option<u64> { fields.get(number.checked_sub(3)?)?.parse().ok() };
    Some(Stat {
        utime_ticks: field(14)?,
        stime_ticks: field(15)?,
        start_ticks: field(22)?,
        virtual_bytes: field(23)?,
        rss_pages: field(24)?,
    })
}

/// The boot time (`btime`, Unix seconds) from `/proc/stat`.
pub fn parse_btime(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|line| line.strip_prefix("btime "))
        .and_then(|value| value.trim().parse().ok())
}

/// The soft limit of open files from `/proc/<pid>/limits`; `None` when unlimited.
pub fn parse_max_open_files(text: &str) -> Option<u64> {
    let line = text
        .lines()
        .find(|line| line.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn sysconf(variable: nix::unistd::SysconfVar) -> Option<u64> {
    let value = nix::unistd::sysconf(variable).ok().flatten()?;
    u64::try_from(value).ok().filter(|v| *v > 0)
}

/// Reads `/proc/self` now. Small files of a virtual file system, answered from memory:
/// cheap enough to read on the runtime thread.
pub fn families() -> Vec<Family> {
    let mut families = Vec::new();
    let ticks_per_second = sysconf(nix::unistd::SysconfVar::CLK_TCK).unwrap_or(100) as f64;
    let page_size = sysconf(nix::unistd::SysconfVar::PAGE_SIZE).unwrap_or(4096);
    if let Some(stat) = read("/proc/self/stat").as_deref().and_then(parse_stat) {
        families.push(Family::single(
            "process_cpu_seconds_total",
            "Total user and system CPU time spent in seconds.",
            Kind::Counter,
            Value::Float((stat.utime_ticks + stat.stime_ticks) as f64 / ticks_per_second),
        ));
        families.push(Family::single(
            "process_resident_memory_bytes",
            "Resident memory size in bytes.",
            Kind::Gauge,
            Value::Unsigned(stat.rss_pages.saturating_mul(page_size)),
        ));
        families.push(Family::single(
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes.",
            Kind::Gauge,
            Value::Unsigned(stat.virtual_bytes),
        ));
        if let Some(boot) = read("/proc/stat").as_deref().and_then(parse_btime) {
            families.push(Family::single(
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds.",
                Kind::Gauge,
                Value::Float(boot as f64 + stat.start_ticks as f64 / ticks_per_second),
            ));
        }
    }
    if let Ok(entries) = std::fs::read_dir("/proc/self/fd") {
        // The directory handle itself is one of the entries; it is not the server's.
        let open = entries.count().saturating_sub(1);
        families.push(Family::single(
            "process_open_fds",
            "Number of open file descriptors.",
            Kind::Gauge,
            Value::Unsigned(open as u64),
        ));
    }
    if let Some(max) = read("/proc/self/limits")
        .as_deref()
        .and_then(parse_max_open_files)
    {
        families.push(Family::single(
            "process_max_fds",
            "Maximum number of open file descriptors.",
            Kind::Gauge,
            Value::Unsigned(max),
        ));
    }
    families
}

fn read(path: &str) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_last_parenthesis() {
        let text = "18241 (we (ird) name) R 18232 18232 24091 0 -1 4194304 100 0 0 0 \
                    17 5 0 0 20 0 1 0 5457725 3133440 394 18446744073709551615 0 0";
        assert_eq!(
            parse_stat(text),
            Some(Stat {
                utime_ticks: 17,
                stime_ticks: 5,
                start_ticks: 5_457_725,
                virtual_bytes: 3_133_440,
                rss_pages: 394,
            })
        );
        assert_eq!(parse_stat("1 (short) R 1 2"), None);
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn boot_time_and_fd_limit() {
        assert_eq!(
            parse_btime("cpu  1 2 3\nbtime 1795696903\nprocesses 9\n"),
            Some(1_795_696_903)
        );
        assert_eq!(parse_btime("cpu 1\n"), None);
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max cpu time              unlimited            unlimited            seconds   \n\
                      Max open files            1024                 524288               files     \n";
        assert_eq!(parse_max_open_files(limits), Some(1024));
        assert_eq!(
            parse_max_open_files(
                "Max open files            unlimited            unlimited            files\n"
            ),
            None
        );
    }

    #[test]
    fn this_process_is_described() {
        let names: Vec<&str> = families().iter().map(|f| f.name).collect();
        for name in [
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_open_fds",
            "process_max_fds",
            "process_start_time_seconds",
        ] {
            assert!(names.contains(&name), "{name} missing from {names:?}");
        }
    }
}
