//! Facts: the node's hardware and OS inventory (Linux), gathered best effort.
//!
//! Nothing here can fail the agent: a file that is missing or unreadable leaves its fact
//! empty. The parsers take file contents as strings so they are tested on fixture text;
//! `gather` does the reading.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use edgefleet_wire::node::{
    AcceleratorFacts, CpuFacts, DiskFacts, DmiFacts, InterfaceFacts, NodeFacts, OsFacts,
};
use sha2::{Digest, Sha256};

/// File systems that are not disks: kernel interfaces, memory, images, overlays, and
/// network file systems (whose `statvfs` can hang when the server is away).
const NOT_DISKS: &[&str] = &[
    "proc",
    "sysfs",
    "tmpfs",
    "devtmpfs",
    "devpts",
    "overlay",
    "squashfs",
    "securityfs",
    "debugfs",
    "tracefs",
    "pstore",
    "bpf",
    "mqueue",
    "hugetlbfs",
    "configfs",
    "fusectl",
    "autofs",
    "binfmt_misc",
    "efivarfs",
    "rpc_pipefs",
    "nsfs",
    "ramfs",
    "selinuxfs",
    "rootfs",
    "cgroup",
    "cgroup2",
    "nfs",
    "nfs4",
    "cifs",
    "smb3",
    "9p",
    "ceph",
    "iso9660",
];

fn read(path: impl AsRef<Path>) -> Option<String> {
    fs::read_to_string(path).ok()
}

fn read_trimmed(path: impl AsRef<Path>) -> Option<String> {
    read(path)
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

/// Gathers every fact. Blocking (reads files, calls `statvfs`): run it off the async
/// threads.
pub fn gather() -> NodeFacts {
    let uname = nix::sys::utsname::uname().ok();
    let kernel = uname
        .as_ref()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    let arch = uname
        .as_ref()
        .map(|u| u.machine().to_string_lossy().into_owned())
        .unwrap_or_else(|| std::env::consts::ARCH.to_owned());
    let (os_name, os_version) = read("/etc/os-release")
        .or_else(|| read("/usr/lib/os-release"))
        .map(|s| parse_os_release(&s))
        .unwrap_or_default();
    let cpu = read("/proc/cpuinfo")
        .map(|s| parse_cpuinfo(&s))
        .unwrap_or_default();
    let cpu = CpuFacts {
        count: if cpu.count > 0 {
            cpu.count
        } else {
            std::thread::available_parallelism()
                .map(|n| u32::try_from(n.get()).unwrap_or(u32::MAX))
                .unwrap_or(0)
        },
        ..cpu
    };
    NodeFacts {
        hostname: hostname(),
        os: OsFacts {
            name: if os_name.is_empty() {
                "Linux".to_owned()
            } else {
                os_name
            },
            version: os_version,
            kernel,
        },
        arch,
        cpu,
        memory_bytes: read("/proc/meminfo")
            .and_then(|s| parse_mem_total(&s))
            .unwrap_or(0),
        disks: disks(),
        interfaces: interfaces(),
        timezone: timezone(Path::new("/")),
        boot_time: read("/proc/stat").and_then(|s| parse_boot_time(&s)),
        machine_id: read_trimmed("/etc/machine-id"),
        dmi: dmi(Path::new("/sys/class/dmi/id")),
        accelerators: accelerators(Path::new("/")),
        agent_version: edgefleet_wire::AGENT_VERSION.to_owned(),
    }
}

pub fn hostname() -> String {
    nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// A hash that changes when the facts change in a way worth telling the server. Free
/// disk space counts in steps of 1% of the disk, so a log file growing by a byte does not
/// cause an upload.
pub fn change_hash(facts: &NodeFacts) -> String {
    let mut coarse = facts.clone();
    for disk in &mut coarse.disks {
        let step = (disk.total_bytes / 100).max(1);
        disk.free_bytes /= step;
    }
    let json = serde_json::to_vec(&coarse).unwrap_or_default();
    hex::encode(Sha256::digest(json))
}

/// The node's IANA time zone under `root` (`/` outside tests): `/etc/timezone` (Debian
/// and friends) if it names one, else where the `/etc/localtime` symlink points below a
/// `zoneinfo/` directory, else none (a copied `localtime` file names no zone).
pub fn timezone(root: &Path) -> Option<String> {
    let etc = root.join("etc");
    read(etc.join("timezone"))
        .and_then(|text| parse_timezone_file(&text))
        .or_else(|| {
            let target = fs::read_link(etc.join("localtime")).ok()?;
            zone_from_localtime_target(&target.to_string_lossy())
        })
}

/// The zone named in `/etc/timezone`: its first line, trimmed.
pub fn parse_timezone_file(text: &str) -> Option<String> {
    let zone = text.lines().next()?.trim();
    is_zone_name(zone).then(|| zone.to_owned())
}

/// The zone a `/etc/localtime` symlink target names: the path after the last
/// `zoneinfo/` (`/usr/share/zoneinfo/Europe/Berlin`, `../usr/share/zoneinfo/UTC`), without
/// the `posix/` or `right/` variant directories.
pub fn zone_from_localtime_target(target: &str) -> Option<String> {
    let (_, zone) = target.rsplit_once("zoneinfo/")?;
    let zone = zone
        .strip_prefix("posix/")
        .or_else(|| zone.strip_prefix("right/"))
        .unwrap_or(zone);
    is_zone_name(zone).then(|| zone.to_owned())
}

/// Looks like an IANA zone name: `Area/Location` parts of letters, digits, `_`, `-`, `+`.
fn is_zone_name(zone: &str) -> bool {
    !zone.is_empty()
        && zone.len() <= 64
        && zone.split('/').all(|part| {
            !part.is_empty()
                && part != "."
                && part != ".."
                && part
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'+' | b'.'))
        })
}

/// Unquotes a shell-style `KEY="value"` value from os-release.
fn unquote(value: &str) -> String {
    let value = value.trim();
    let inner = value
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .or_else(|| value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
        .unwrap_or(value);
    inner.replace("\\\"", "\"").replace("\\\\", "\\")
}

/// `(PRETTY_NAME or NAME, VERSION_ID)` from os-release.
pub fn parse_os_release(text: &str) -> (String, String) {
    let mut fields = BTreeMap::new();
    for line in text.lines() {
        if let Some((key, value)) = line.split_once('=') {
            fields.insert(key.trim(), unquote(value));
        }
    }
    let name = fields
        .get("PRETTY_NAME")
        .or_else(|| fields.get("NAME"))
        .cloned()
        .unwrap_or_default();
    let version = fields.get("VERSION_ID").cloned().unwrap_or_default();
    (name, version)
}

/// CPU model and logical CPU count from `/proc/cpuinfo` (x86, ARM and others name the
/// model differently).
pub fn parse_cpuinfo(text: &str) -> CpuFacts {
    let mut count = 0u32;
    let mut model = None;
    let mut fallback_model = None;
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let (key, value) = (key.trim(), value.trim());
        match key {
            "processor" => count += 1,
            "model name" | "cpu model" | "Processor" if model.is_none() && !value.is_empty() => {
                model = Some(value.to_owned());
            }
            "Hardware" | "Model" | "cpu" if fallback_model.is_none() && !value.is_empty() => {
                fallback_model = Some(value.to_owned());
            }
            _ => {}
        }
    }
    CpuFacts {
        model: model.or(fallback_model).unwrap_or_default(),
        count,
    }
}

/// `MemTotal` from `/proc/meminfo`, in bytes.
pub fn parse_mem_total(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let mut parts = line["MemTotal:".len()..].split_whitespace();
    let value: u64 = parts.next()?.parse().ok()?;
    let factor = match parts.next() {
        Some("kB") | None => 1024,
        Some("MB") => 1024 * 1024,
        Some(_) => return None,
    };
    value.checked_mul(factor)
}

/// `btime` from `/proc/stat`: when the node booted, seconds since the Unix epoch.
pub fn parse_boot_time(text: &str) -> Option<i64> {
    text.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

/// A mounted disk file system from `/proc/mounts`: `(device, mount point, type)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub device: String,
    pub mount: String,
    pub fs_type: String,
}

/// Undoes the octal escapes of `/proc/mounts` (`\040` is a space).
fn unescape_mount(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|digits| bytes[i] == b'\\' && digits.iter().all(|b| (b'0'..=b'7').contains(b)))
            .map(|d| d.iter().fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0')))
            .and_then(|value| u8::try_from(value).ok());
        if let Some(value) = octal {
            out.push(value);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The disk file systems in `/proc/mounts`, one per device (bind mounts and btrfs
/// subvolumes show a device more than once; the first mount wins).
pub fn parse_mounts(text: &str) -> Vec<Mount> {
    let mut mounts: Vec<Mount> = Vec::new();
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        let (Some(device), Some(mount), Some(fs_type)) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let is_disk = !NOT_DISKS.contains(&fs_type)
            && !fs_type.starts_with("cgroup")
            && !fs_type.starts_with("fuse")
            && device.starts_with('/');
        if !is_disk {
            continue;
        }
        let device = unescape_mount(device);
        if mounts.iter().any(|m| m.device == device) {
            continue;
        }
        mounts.push(Mount {
            device,
            mount: unescape_mount(mount),
            fs_type: fs_type.to_owned(),
        });
    }
    mounts
}

fn disks() -> Vec<DiskFacts> {
    let Some(text) = read("/proc/mounts") else {
        return vec![];
    };
    let mut disks: Vec<DiskFacts> = parse_mounts(&text)
        .into_iter()
        .filter_map(|m| {
            let stat = nix::sys::statvfs::statvfs(m.mount.as_str()).ok()?;
            let fragment = stat.fragment_size() as u64;
            Some(DiskFacts {
                total_bytes: (stat.blocks() as u64).saturating_mul(fragment),
                free_bytes: (stat.blocks_available() as u64).saturating_mul(fragment),
                mount: m.mount,
                device: m.device,
                fs_type: m.fs_type,
            })
        })
        .collect();
    disks.sort_by(|a, b| a.mount.cmp(&b.mount));
    disks
}

/// A MAC address as read from `/sys/class/net/<if>/address`; none for all-zero ones.
pub fn parse_mac(text: &str) -> Option<String> {
    let mac = text.trim().to_ascii_lowercase();
    let is_zero = mac.chars().all(|c| c == '0' || c == ':');
    (!mac.is_empty() && !is_zero).then_some(mac)
}

fn interfaces() -> Vec<InterfaceFacts> {
    use nix::net::if_::InterfaceFlags;
    let mut by_name: BTreeMap<String, InterfaceFacts> = BTreeMap::new();
    let Ok(addresses) = nix::ifaddrs::getifaddrs() else {
        return vec![];
    };
    for entry in addresses {
        if entry.flags.contains(InterfaceFlags::IFF_LOOPBACK) {
            continue;
        }
        let facts = by_name
            .entry(entry.interface_name.clone())
            .or_insert_with(|| InterfaceFacts {
                name: entry.interface_name.clone(),
                mac: read(format!("/sys/class/net/{}/address", entry.interface_name))
                    .and_then(|s| parse_mac(&s)),
                addresses: vec![],
            });
        let Some(address) = entry.address else {
            continue;
        };
        let ip = if let Some(v4) = address.as_sockaddr_in() {
            v4.ip().to_string()
        } else if let Some(v6) = address.as_sockaddr_in6() {
            v6.ip().to_string()
        } else {
            continue;
        };
        if !facts.addresses.contains(&ip) {
            facts.addresses.push(ip);
        }
    }
    by_name.into_values().collect()
}

fn dmi(dir: &Path) -> Option<DmiFacts> {
    let dmi = DmiFacts {
        vendor: read_trimmed(dir.join("sys_vendor")),
        product: read_trimmed(dir.join("product_name")),
        // Readable by root only, usually.
        serial: read_trimmed(dir.join("product_serial")),
    };
    (dmi.vendor.is_some() || dmi.product.is_some() || dmi.serial.is_some()).then_some(dmi)
}

/// The GPU vendor behind a PCI vendor id (`/sys/class/drm/card*/device/vendor`).
pub fn gpu_vendor(pci_vendor_id: &str) -> Option<&'static str> {
    match pci_vendor_id.trim().to_ascii_lowercase().as_str() {
        "0x10de" => Some("NVIDIA"),
        "0x1002" => Some("AMD"),
        "0x8086" => Some("Intel"),
        _ => None,
    }
}

fn sorted_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Accelerators visible under `root` (`/` outside tests): NVIDIA device nodes, DRM render
/// nodes and cards with their vendor, compute accelerators (`/dev/accel`), Coral TPUs.
pub fn accelerators(root: &Path) -> Vec<AcceleratorFacts> {
    let mut found = Vec::new();
    let dev = root.join("dev");
    let accel = |kind: &str, name: String, path: String| AcceleratorFacts {
        kind: kind.to_owned(),
        name,
        path,
    };
    for name in sorted_names(&dev) {
        let path = format!("/dev/{name}");
        if let Some(index) = name.strip_prefix("nvidia")
            && !index.is_empty()
            && index.bytes().all(|b| b.is_ascii_digit())
        {
            found.push(accel("gpu", format!("NVIDIA GPU {index}"), path));
        } else if name.starts_with("apex_") {
            found.push(accel("tpu", "Google Coral Edge TPU".to_owned(), path));
        }
    }
    for name in sorted_names(&dev.join("dri")) {
        if name.starts_with("renderD") {
            found.push(accel(
                "gpu",
                "DRM render node".to_owned(),
                format!("/dev/dri/{name}"),
            ));
        }
    }
    let drm = root.join("sys/class/drm");
    for name in sorted_names(&drm) {
        let is_card = name
            .strip_prefix("card")
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
        if !is_card {
            continue;
        }
        let vendor = read(drm.join(&name).join("device/vendor"));
        let label = vendor
            .as_deref()
            .and_then(gpu_vendor)
            .map(|v| format!("{v} GPU"))
            .or_else(|| vendor.map(|id| format!("GPU (PCI vendor {})", id.trim())));
        if let Some(label) = label {
            found.push(accel("gpu", label, format!("/sys/class/drm/{name}")));
        }
    }
    for name in sorted_names(&dev.join("accel")) {
        found.push(accel(
            "npu",
            "compute accelerator".to_owned(),
            format!("/dev/accel/{name}"),
        ));
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_release() {
        let text = "NAME=\"Debian GNU/Linux\"\nVERSION_ID=\"13\"\nPRETTY_NAME=\"Debian GNU/Linux 13 (trixie)\"\nID=debian\n";
        assert_eq!(
            parse_os_release(text),
            ("Debian GNU/Linux 13 (trixie)".to_owned(), "13".to_owned())
        );
        assert_eq!(
            parse_os_release("NAME=Alpine\nVERSION_ID=3.20.1\n"),
            ("Alpine".to_owned(), "3.20.1".to_owned())
        );
        assert_eq!(parse_os_release(""), (String::new(), String::new()));
    }

    #[test]
    fn cpuinfo_x86_and_arm() {
        let x86 = "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) CPU @ 2.20GHz\n\nprocessor\t: 1\nmodel name\t: Intel(R) Xeon(R) CPU @ 2.20GHz\n";
        assert_eq!(
            parse_cpuinfo(x86),
            CpuFacts {
                model: "Intel(R) Xeon(R) CPU @ 2.20GHz".into(),
                count: 2
            }
        );
        let arm = "processor\t: 0\nBogoMIPS\t: 108.00\nCPU part\t: 0xd08\n\nprocessor\t: 1\n\nprocessor\t: 2\n\nprocessor\t: 3\nHardware\t: BCM2835\nModel\t\t: Raspberry Pi 4 Model B Rev 1.4\n";
        let facts = parse_cpuinfo(arm);
        assert_eq!(facts.count, 4);
        assert_eq!(facts.model, "BCM2835");
    }

    #[test]
    fn meminfo_and_btime() {
        assert_eq!(
            parse_mem_total("MemTotal:       16314412 kB\nMemFree:  1 kB\n"),
            Some(16314412 * 1024)
        );
        assert_eq!(parse_mem_total("MemFree: 1 kB\n"), None);
        assert_eq!(
            parse_boot_time("cpu 1 2 3\nbtime 1767225600\nprocesses 5\n"),
            Some(1767225600)
        );
        assert_eq!(parse_boot_time("cpu 1\n"), None);
    }

    #[test]
    fn mounts_keep_real_disks_only() {
        let text = "\
sysfs /sys sysfs rw,nosuid 0 0
proc /proc proc rw 0 0
/dev/sda1 / ext4 rw,relatime 0 0
tmpfs /run tmpfs rw 0 0
cgroup2 /sys/fs/cgroup cgroup2 rw 0 0
overlay /var/lib/docker/overlay2/x/merged overlay rw 0 0
/dev/loop0 /snap/core/1 squashfs ro 0 0
/dev/sdb1 /mnt/my\\040data xfs rw 0 0
/dev/sda1 /var/lib/bind ext4 rw 0 0
server:/export /mnt/nfs nfs4 rw 0 0
";
        assert_eq!(
            parse_mounts(text),
            vec![
                Mount {
                    device: "/dev/sda1".into(),
                    mount: "/".into(),
                    fs_type: "ext4".into()
                },
                Mount {
                    device: "/dev/sdb1".into(),
                    mount: "/mnt/my data".into(),
                    fs_type: "xfs".into()
                },
            ]
        );
    }

    #[test]
    fn macs_and_vendors() {
        assert_eq!(
            parse_mac("02:42:AC:11:00:02\n"),
            Some("02:42:ac:11:00:02".into())
        );
        assert_eq!(parse_mac("00:00:00:00:00:00\n"), None);
        assert_eq!(gpu_vendor("0x10de\n"), Some("NVIDIA"));
        assert_eq!(gpu_vendor("0x1002"), Some("AMD"));
        assert_eq!(gpu_vendor("0x8086"), Some("Intel"));
        assert_eq!(gpu_vendor("0x1234"), None);
    }

    #[test]
    fn accelerators_from_a_fake_root() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        for dir in [
            "dev/dri",
            "dev/accel",
            "sys/class/drm/card0/device",
            "sys/class/drm/card1/device",
            "sys/class/drm/card0-HDMI-A-1",
        ] {
            fs::create_dir_all(r.join(dir)).unwrap();
        }
        for file in [
            "dev/nvidia0",
            "dev/nvidiactl",
            "dev/apex_0",
            "dev/dri/renderD128",
            "dev/accel/accel0",
        ] {
            fs::write(r.join(file), "").unwrap();
        }
        fs::write(r.join("sys/class/drm/card0/device/vendor"), "0x10de\n").unwrap();
        fs::write(r.join("sys/class/drm/card1/device/vendor"), "0x8086\n").unwrap();
        let found: Vec<(String, String, String)> = accelerators(r)
            .into_iter()
            .map(|a| (a.kind, a.name, a.path))
            .collect();
        let expected = [
            ("tpu", "Google Coral Edge TPU", "/dev/apex_0"),
            ("gpu", "NVIDIA GPU 0", "/dev/nvidia0"),
            ("gpu", "DRM render node", "/dev/dri/renderD128"),
            ("gpu", "NVIDIA GPU", "/sys/class/drm/card0"),
            ("gpu", "Intel GPU", "/sys/class/drm/card1"),
            ("npu", "compute accelerator", "/dev/accel/accel0"),
        ]
        .map(|(k, n, p)| (k.to_owned(), n.to_owned(), p.to_owned()));
        assert_eq!(found, expected);
    }

    #[test]
    fn timezone_file_and_localtime_link() {
        assert_eq!(
            parse_timezone_file("Europe/Berlin\n"),
            Some("Europe/Berlin".into())
        );
        assert_eq!(parse_timezone_file("  Etc/UTC  \n"), Some("Etc/UTC".into()));
        assert_eq!(parse_timezone_file("\n"), None);
        assert_eq!(parse_timezone_file(""), None);
        assert_eq!(parse_timezone_file("../../etc/passwd"), None);
        for (target, zone) in [
            ("/usr/share/zoneinfo/Europe/Berlin", Some("Europe/Berlin")),
            (
                "../usr/share/zoneinfo/America/Argentina/Buenos_Aires",
                Some("America/Argentina/Buenos_Aires"),
            ),
            ("/usr/share/zoneinfo/UTC", Some("UTC")),
            ("/usr/share/zoneinfo/posix/Asia/Tokyo", Some("Asia/Tokyo")),
            ("/usr/share/zoneinfo/Etc/GMT+5", Some("Etc/GMT+5")),
            ("/usr/share/zoneinfo/", None),
            ("/etc/alternatives/localtime", None),
        ] {
            assert_eq!(
                zone_from_localtime_target(target).as_deref(),
                zone,
                "{target}"
            );
        }
    }

    #[test]
    fn timezone_from_a_fake_root() {
        let root = tempfile::tempdir().unwrap();
        let etc = root.path().join("etc");
        fs::create_dir_all(&etc).unwrap();
        assert_eq!(timezone(root.path()), None);
        std::os::unix::fs::symlink("/usr/share/zoneinfo/Europe/Berlin", etc.join("localtime"))
            .unwrap();
        assert_eq!(timezone(root.path()).as_deref(), Some("Europe/Berlin"));
        // /etc/timezone wins where it exists.
        fs::write(etc.join("timezone"), "Pacific/Auckland\n").unwrap();
        assert_eq!(timezone(root.path()).as_deref(), Some("Pacific/Auckland"));
        // An empty one does not hide the link.
        fs::write(etc.join("timezone"), "\n").unwrap();
        assert_eq!(timezone(root.path()).as_deref(), Some("Europe/Berlin"));
    }

    #[test]
    fn free_space_jitter_does_not_change_the_hash() {
        let mut facts = NodeFacts {
            disks: vec![DiskFacts {
                total_bytes: 100_000,
                free_bytes: 50_000,
                ..Default::default()
            }],
            ..Default::default()
        };
        let before = change_hash(&facts);
        facts.disks[0].free_bytes = 50_010;
        assert_eq!(change_hash(&facts), before);
        facts.disks[0].free_bytes = 30_000;
        assert_ne!(change_hash(&facts), before);
    }

    #[test]
    fn live_gather_finds_the_basics() {
        let facts = gather();
        assert!(!facts.hostname.is_empty());
        assert!(facts.cpu.count > 0);
        assert!(facts.memory_bytes > 0);
        assert!(!facts.os.kernel.is_empty());
        assert!(!facts.arch.is_empty());
        assert_eq!(facts.agent_version, edgefleet_wire::AGENT_VERSION);
    }
}
