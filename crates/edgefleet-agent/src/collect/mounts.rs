//! `/proc/self/mountinfo`: which mounted file systems are disks worth reporting, and where
//! the cgroup hierarchies are mounted. Pure: text in, choices out.
//!
//! **Invariant:** a file system is reported at most once (one mount per device), and never
//! one whose `statvfs` could hang (network and user-space file systems are not disks here).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// One line of `/proc/self/mountinfo`, with the octal escapes (`\040`) undone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MountEntry {
    /// `major:minor` of the device.
    pub device: String,
    /// The directory of the file system that is mounted (not `/` for bind mounts).
    pub root: String,
    pub mount_point: String,
    pub fs_type: String,
    pub source: String,
    pub super_options: String,
}

/// Parses `/proc/self/mountinfo`:
/// `id parent major:minor root mount-point options [optional...] - type source super-options`.
pub(crate) fn parse_mountinfo(text: &str) -> Result<Vec<MountEntry>, String> {
    let mut entries = Vec::new();
    for (index, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split(' ').collect();
        let separator = fields
            .iter()
            .position(|f| *f == "-")
            .filter(|position| *position >= 6)
            .ok_or_else(|| format!("line {}: no ` - ` separator after 6 fields", index + 1))?;
        let after = &fields[separator + 1..];
        if after.len() < 2 {
            return Err(format!(
                "line {}: expected `type source` after the separator",
                index + 1
            ));
        }
        entries.push(MountEntry {
            device: fields[2].to_owned(),
            root: unescape(fields[3]),
            mount_point: unescape(fields[4]),
            fs_type: after[0].to_owned(),
            source: unescape(after[1]),
            super_options: after.get(2).copied().unwrap_or("").to_owned(),
        });
    }
    Ok(entries)
}

/// Undoes the kernel's octal escapes (`\040` space, `\011` tab, `\012` newline, `\134`
/// backslash).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'\\'
            && index + 3 < bytes.len()
            && let Some(value) = octal(&bytes[index + 1..index + 4])
        {
            out.push(value);
            index += 4;
        } else {
            out.push(bytes[index]);
            index += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn octal(digits: &[u8]) -> Option<u8> {
    let mut value: u32 = 0;
    for digit in digits {
        if !(b'0'..=b'7').contains(digit) {
            return None;
        }
        value = value * 8 + u32::from(digit - b'0');
    }
    u8::try_from(value).ok()
}

/// File system types that are not disks: kernel interfaces, memory, images, overlays,
/// and network file systems (whose `statvfs` can hang while the server is away).
const NOT_DISKS: &[&str] = &[
    "autofs",
    "binfmt_misc",
    "bpf",
    "ceph",
    "cgroup",
    "cgroup2",
    "cifs",
    "configfs",
    "debugfs",
    "devpts",
    "devtmpfs",
    "efivarfs",
    "fuse",
    "fusectl",
    "glusterfs",
    "hugetlbfs",
    "iso9660",
    "mqueue",
    "nfs",
    "nfs4",
    "nfsd",
    "nsfs",
    "overlay",
    "proc",
    "pstore",
    "ramfs",
    "rootfs",
    "rpc_pipefs",
    "securityfs",
    "selinuxfs",
    "smb3",
    "squashfs",
    "sysfs",
    "tmpfs",
    "tracefs",
    "udf",
    "9p",
    "virtiofs",
];

fn is_disk(entry: &MountEntry) -> bool {
    // `fuse.sshfs`, `fuse.lxcfs`, ...: user-space servers that may hang; `fuseblk` (NTFS
    // and exFAT on a block device) is a disk.
    !NOT_DISKS.contains(&entry.fs_type.as_str()) && !entry.fs_type.starts_with("fuse.")
}

/// The disk file systems to report, at most `max`: one mount per device (the one showing
/// the file system's root, else the shortest mount point), ignoring mounts hidden under a
/// later mount on the same point. When there are more than `max`, the shallowest mount
/// points are kept (`/` and `/data` before `/var/lib/docker/volumes/x`). Sorted by mount
/// point.
pub(crate) fn select_filesystems(entries: &[MountEntry], max: usize) -> Vec<MountEntry> {
    // Last mount on a mount point wins: it hides the earlier ones.
    let mut visible: Vec<&MountEntry> = Vec::new();
    for entry in entries.iter().filter(|e| is_disk(e)) {
        visible.retain(|earlier| earlier.mount_point != entry.mount_point);
        visible.push(entry);
    }
    let mut chosen: Vec<&MountEntry> = Vec::new();
    let mut by_device: HashMap<String, usize> = HashMap::new();
    for entry in visible {
        // btrfs subvolumes have their own anonymous `0:N` numbers but share the source
        // device and its space: dedupe by both.
        let keys = device_keys(entry);
        let existing = keys.iter().find_map(|key| by_device.get(key).copied());
        match existing {
            Some(slot) => {
                if better_mount(entry, chosen[slot]) {
                    chosen[slot] = entry;
                }
                for key in keys {
                    by_device.insert(key, slot);
                }
            }
            None => {
                for key in keys {
                    by_device.insert(key, chosen.len());
                }
                chosen.push(entry);
            }
        }
    }
    chosen.sort_by(|a, b| {
        depth(&a.mount_point)
            .cmp(&depth(&b.mount_point))
            .then_with(|| a.mount_point.cmp(&b.mount_point))
    });
    chosen.truncate(max);
    let mut selected: Vec<MountEntry> = chosen.into_iter().cloned().collect();
    selected.sort_by(|a, b| a.mount_point.cmp(&b.mount_point));
    selected
}

fn device_keys(entry: &MountEntry) -> Vec<String> {
    let mut keys = vec![format!("dev:{}", entry.device)];
    if entry.source.starts_with("/dev/") {
        keys.push(format!("src:{}", entry.source));
    }
    keys
}

/// Whether `candidate` shows a device better than `current`: the file system's root over
/// a bind mount of a subdirectory, then the shorter mount point.
fn better_mount(candidate: &MountEntry, current: &MountEntry) -> bool {
    let rank = |e: &MountEntry| (e.root != "/", depth(&e.mount_point), e.mount_point.len());
    rank(candidate) < rank(current)
}

fn depth(mount_point: &str) -> usize {
    mount_point.split('/').filter(|c| !c.is_empty()).count()
}

/// A mounted cgroup hierarchy: the cgroup `root` is visible at `dir`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CgroupMount {
    pub root: String,
    pub dir: PathBuf,
}

impl CgroupMount {
    /// The directory of the cgroup `path` (as `/proc/<pid>/cgroup` names it), or `None`
    /// when this mount does not show it (it lies outside the mounted root).
    pub fn dir_of(&self, path: &str) -> Option<PathBuf> {
        let relative = if self.root == "/" {
            path.trim_start_matches('/')
        } else {
            let rest = path.strip_prefix(self.root.as_str())?;
            if !rest.is_empty() && !rest.starts_with('/') {
                return None;
            }
            rest.trim_start_matches('/')
        };
        if relative.split('/').any(|c| c == "..") {
            return None;
        }
        Some(self.dir.join(relative))
    }
}

/// Where the cgroup hierarchies the collector reads are mounted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct CgroupMounts {
    pub unified: Option<CgroupMount>,
    pub memory: Option<CgroupMount>,
    pub cpuacct: Option<CgroupMount>,
}

/// Finds the cgroup v2 mount and the v1 `memory` and `cpuacct` hierarchies. Mount points
/// under `/sys` are looked up under `sys_root` (the same place unless tests point it at a
/// fake tree).
pub(crate) fn cgroup_mounts(entries: &[MountEntry], sys_root: &Path) -> CgroupMounts {
    let mut mounts = CgroupMounts::default();
    for entry in entries {
        let mount = || CgroupMount {
            root: entry.root.clone(),
            dir: under_sys_root(&entry.mount_point, sys_root),
        };
        match entry.fs_type.as_str() {
            "cgroup2" => {
                mounts.unified.get_or_insert_with(mount);
            }
            "cgroup" => {
                let has =
                    |controller: &str| entry.super_options.split(',').any(|o| o == controller);
                if has("memory") {
                    mounts.memory.get_or_insert_with(mount);
                }
                if has("cpuacct") {
                    mounts.cpuacct.get_or_insert_with(mount);
                }
            }
            _ => {}
        }
    }
    mounts
}

fn under_sys_root(mount_point: &str, sys_root: &Path) -> PathBuf {
    match Path::new(mount_point).strip_prefix("/sys") {
        Ok(rest) => sys_root.join(rest),
        Err(_) => PathBuf::from(mount_point),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(id: u32, device: &str, root: &str, point: &str, fs_type: &str, source: &str) -> String {
        format!("{id} 1 {device} {root} {point} rw,relatime shared:1 - {fs_type} {source} rw\n")
    }

    fn points(selected: &[MountEntry]) -> Vec<&str> {
        selected.iter().map(|m| m.mount_point.as_str()).collect()
    }

    #[test]
    fn real_disks_only_one_per_device() {
        let text = [
            line(1, "254:0", "/", "/", "ext4", "/dev/vda"),
            line(2, "0:21", "/", "/proc", "proc", "proc"),
            line(3, "0:22", "/", "/sys", "sysfs", "sysfs"),
            line(4, "0:23", "/", "/dev/shm", "tmpfs", "tmpfs"),
            line(5, "0:29", "/", "/sys/fs/cgroup/cpu", "cgroup", "cgroup"),
            line(
                6,
                "0:60",
                "/",
                "/var/lib/docker/overlay2/x/merged",
                "overlay",
                "overlay",
            ),
            line(7, "7:0", "/", "/snap/core/1", "squashfs", "/dev/loop0"),
            line(8, "8:1", "/", "/boot", "vfat", "/dev/sda1"),
            // A bind mount of a directory of the root file system.
            line(9, "254:0", "/srv/data", "/data", "ext4", "/dev/vda"),
            // The same device mounted twice.
            line(10, "8:1", "/", "/mnt/boot-again", "vfat", "/dev/sda1"),
            line(11, "0:70", "/", "/home/me/remote", "fuse.sshfs", "me@host:"),
            line(12, "0:71", "/", "/mnt/nas", "nfs4", "nas:/export"),
            line(13, "8:17", "/", "/mnt/usb", "fuseblk", "/dev/sdb1"),
        ]
        .concat();
        let entries = parse_mountinfo(&text).unwrap();
        assert_eq!(entries.len(), 13);
        let selected = select_filesystems(&entries, 16);
        assert_eq!(points(&selected), ["/", "/boot", "/mnt/usb"]);
    }

    #[test]
    fn the_root_view_wins_over_an_earlier_bind_mount() {
        let text = [
            line(1, "8:2", "/volumes/a", "/var/lib/app", "ext4", "/dev/sda2"),
            line(2, "8:2", "/", "/mnt/data", "ext4", "/dev/sda2"),
        ]
        .concat();
        let selected = select_filesystems(&parse_mountinfo(&text).unwrap(), 16);
        assert_eq!(points(&selected), ["/mnt/data"]);
    }

    #[test]
    fn btrfs_subvolumes_of_one_device_count_once() {
        let text = [
            line(1, "0:31", "/@", "/", "btrfs", "/dev/nvme0n1p2"),
            line(2, "0:31", "/@home", "/home", "btrfs", "/dev/nvme0n1p2"),
            line(3, "0:45", "/@var", "/var", "btrfs", "/dev/nvme0n1p2"),
        ]
        .concat();
        let selected = select_filesystems(&parse_mountinfo(&text).unwrap(), 16);
        assert_eq!(points(&selected), ["/"]);
    }

    #[test]
    fn a_hidden_mount_is_not_reported() {
        let text = [
            line(1, "254:0", "/", "/", "ext4", "/dev/vda"),
            line(2, "8:1", "/", "/data", "ext4", "/dev/sda1"),
            line(3, "8:17", "/", "/data", "xfs", "/dev/sdb1"),
        ]
        .concat();
        let selected = select_filesystems(&parse_mountinfo(&text).unwrap(), 16);
        assert_eq!(points(&selected), ["/", "/data"]);
        assert_eq!(selected[1].source, "/dev/sdb1");
    }

    #[test]
    fn the_cap_keeps_the_shallowest_mounts() {
        let mut text = line(1, "254:0", "/", "/", "ext4", "/dev/vda");
        for n in 0..20 {
            text += &line(
                n + 2,
                &format!("9:{n}"),
                "/",
                &format!("/var/lib/volumes/v{n:02}"),
                "ext4",
                &format!("/dev/md{n}"),
            );
        }
        text += &line(30, "8:1", "/", "/data", "ext4", "/dev/sda1");
        let selected = select_filesystems(&parse_mountinfo(&text).unwrap(), 16);
        assert_eq!(selected.len(), 16);
        assert_eq!(selected[0].mount_point, "/");
        assert_eq!(selected[1].mount_point, "/data");
        assert_eq!(selected[15].mount_point, "/var/lib/volumes/v13");
    }

    #[test]
    fn escapes_are_undone() {
        let text = line(1, "8:1", "/", "/mnt/my\\040disk\\134x", "ext4", "/dev/sda1");
        let entries = parse_mountinfo(&text).unwrap();
        assert_eq!(entries[0].mount_point, "/mnt/my disk\\x");
        // A backslash that starts no escape is kept.
        assert_eq!(unescape("a\\9b\\"), "a\\9b\\");
    }

    #[test]
    fn malformed_mountinfo_names_the_line() {
        let text = format!(
            "{}garbage line\n",
            line(1, "8:1", "/", "/", "ext4", "/dev/sda1")
        );
        assert_eq!(
            parse_mountinfo(&text).unwrap_err(),
            "line 2: no ` - ` separator after 6 fields"
        );
    }

    #[test]
    fn cgroup_mounts_of_a_hybrid_layout() {
        let text = "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n\
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu\n\
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct\n\
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n\
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
        let mounts = cgroup_mounts(&parse_mountinfo(text).unwrap(), Path::new("/tmp/fake/sys"));
        assert_eq!(
            mounts.unified.as_ref().unwrap().dir,
            Path::new("/tmp/fake/sys/fs/cgroup/unified")
        );
        assert_eq!(
            mounts.memory.as_ref().unwrap().dir,
            Path::new("/tmp/fake/sys/fs/cgroup/memory")
        );
        assert_eq!(
            mounts.cpuacct.as_ref().unwrap().dir,
            Path::new("/tmp/fake/sys/fs/cgroup/cpuacct")
        );
        let combined =
            "32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n";
        let mounts = cgroup_mounts(&parse_mountinfo(combined).unwrap(), Path::new("/sys"));
        assert_eq!(
            mounts.cpuacct.unwrap().dir,
            Path::new("/sys/fs/cgroup/cpu,cpuacct")
        );
        assert_eq!(mounts.unified, None);
    }

    #[test]
    fn cgroup_dirs_respect_the_mounted_root() {
        let whole = CgroupMount {
            root: "/".into(),
            dir: "/sys/fs/cgroup".into(),
        };
        assert_eq!(
            whole.dir_of("/system.slice/docker-1.scope"),
            Some(PathBuf::from("/sys/fs/cgroup/system.slice/docker-1.scope"))
        );
        assert_eq!(whole.dir_of("/"), Some(PathBuf::from("/sys/fs/cgroup/")));
        assert_eq!(whole.dir_of("/a/../../etc"), None);
        let part = CgroupMount {
            root: "/docker/abc".into(),
            dir: "/sys/fs/cgroup/memory".into(),
        };
        assert_eq!(
            part.dir_of("/docker/abc/child"),
            Some(PathBuf::from("/sys/fs/cgroup/memory/child"))
        );
        assert_eq!(part.dir_of("/docker/abcdef"), None);
        assert_eq!(part.dir_of("/other"), None);
    }
}
