//! A workload's cgroup: whether its main process sits in a cgroup of its own, and that
//! cgroup's CPU time and memory. Works with cgroup v2, v1, and the hybrid layout (v1
//! controllers next to an unified v2 tree without controllers).
//!
//! "Of its own" means: not the root cgroup, not the agent's own cgroup and not one of the
//! agent's ancestors, in that hierarchy. A process workload started by the agent shares the
//! agent's cgroup and is measured through its process tree instead; a container's init
//! process lives in the container's cgroup, which also counts `docker exec` processes the
//! process tree would miss.

use std::path::{Path, PathBuf};

use super::mounts::{CgroupMount, CgroupMounts};
use super::procfs::{CgroupMembership, keyed_value, parse_single_number};
use super::{CollectError, read_if_present};

/// The cgroup directories a workload owns, per hierarchy the collector reads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct OwnCgroups {
    pub unified: Option<PathBuf>,
    pub memory_v1: Option<PathBuf>,
    pub cpuacct_v1: Option<PathBuf>,
}

/// Decides which of the workload's cgroups are its own (see the module docs). `agent` is
/// the agent's own membership (`/proc/self/cgroup`); empty if unknown.
pub(crate) fn own_cgroups(
    workload: &[CgroupMembership],
    agent: &[CgroupMembership],
    mounts: &CgroupMounts,
) -> OwnCgroups {
    let own_dir = |hierarchy: Hierarchy, mount: Option<&CgroupMount>| -> Option<PathBuf> {
        let path = &workload.iter().find(|m| hierarchy.matches(m))?.path;
        let agent_path = agent
            .iter()
            .find(|m| hierarchy.matches(m))
            .map(|m| m.path.as_str());
        if !is_own(path, agent_path) {
            return None;
        }
        mount?.dir_of(path)
    };
    OwnCgroups {
        unified: own_dir(Hierarchy::Unified, mounts.unified.as_ref()),
        memory_v1: own_dir(Hierarchy::V1("memory"), mounts.memory.as_ref()),
        cpuacct_v1: own_dir(Hierarchy::V1("cpuacct"), mounts.cpuacct.as_ref()),
    }
}

/// A line of `/proc/<pid>/cgroup` to look at.
#[derive(Debug, Clone, Copy)]
enum Hierarchy {
    Unified,
    /// The v1 hierarchy holding this controller.
    V1(&'static str),
}

impl Hierarchy {
    fn matches(self, membership: &CgroupMembership) -> bool {
        match self {
            Hierarchy::Unified => membership.is_v2(),
            Hierarchy::V1(controller) => membership.has_controller(controller),
        }
    }
}

fn is_own(path: &str, agent_path: Option<&str>) -> bool {
    let path = path.trim_end_matches('/');
    if path.is_empty() {
        return false;
    }
    match agent_path {
        Some(agent) => {
            let agent = agent.trim_end_matches('/');
            path != agent && !agent.starts_with(&format!("{path}/"))
        }
        None => true,
    }
}

/// Where a workload's CPU time was measured; a percentage needs two readings from the
/// same place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CpuSource {
    CgroupV2(PathBuf),
    CgroupV1(PathBuf),
    ProcessTree,
}

/// CPU seconds a cgroup used, from v2 `cpu.stat` (`usage_usec`, present in every
/// non-root v2 cgroup even without the cpu controller) or v1 `cpuacct.usage` (ns).
/// `Ok(None)`: no cgroup of its own, or the files are gone.
pub(crate) fn cpu_seconds(own: &OwnCgroups) -> Result<Option<(CpuSource, f64)>, CollectError> {
    if let Some(dir) = &own.unified {
        let path = dir.join("cpu.stat");
        if let Some(text) = read_if_present(&path)? {
            let usec = keyed_value(&text, "usage_usec").ok_or_else(|| CollectError::Malformed {
                path: path.clone(),
                reason: "no `usage_usec` line".to_owned(),
            })?;
            return Ok(Some((CpuSource::CgroupV2(dir.clone()), usec as f64 / 1e6)));
        }
    }
    if let Some(dir) = &own.cpuacct_v1 {
        let path = dir.join("cpuacct.usage");
        if let Some(text) = read_if_present(&path)? {
            let nanoseconds =
                parse_single_number(&text).map_err(|reason| CollectError::Malformed {
                    path: path.clone(),
                    reason,
                })?;
            return Ok(Some((
                CpuSource::CgroupV1(dir.clone()),
                nanoseconds as f64 / 1e9,
            )));
        }
    }
    Ok(None)
}

/// A cgroup's working set in bytes: its memory use (v2 `memory.current`, v1
/// `memory.usage_in_bytes`) minus inactive file cache, which the kernel reclaims first
/// (what `docker stats` and the kubelet report). v2 `memory.current` exists only where
/// the memory controller is enabled, so a hybrid host falls through to v1.
pub(crate) fn memory_bytes(own: &OwnCgroups) -> Result<Option<u64>, CollectError> {
    if let Some(dir) = &own.unified
        && let Some(bytes) = working_set(dir, "memory.current", "inactive_file")?
    {
        return Ok(Some(bytes));
    }
    if let Some(dir) = &own.memory_v1
        && let Some(bytes) = working_set(dir, "memory.usage_in_bytes", "total_inactive_file")?
    {
        return Ok(Some(bytes));
    }
    Ok(None)
}

fn working_set(
    dir: &Path,
    usage_file: &str,
    inactive_key: &str,
) -> Result<Option<u64>, CollectError> {
    let path = dir.join(usage_file);
    let Some(text) = read_if_present(&path)? else {
        return Ok(None);
    };
    let usage = parse_single_number(&text).map_err(|reason| CollectError::Malformed {
        path: path.clone(),
        reason,
    })?;
    // memory.stat is informative: without it, the usage is the best figure there is.
    let inactive = read_if_present(&dir.join("memory.stat"))
        .ok()
        .flatten()
        .and_then(|stat| keyed_value(&stat, inactive_key))
        .unwrap_or(0);
    Ok(Some(usage.saturating_sub(inactive)))
}

#[cfg(test)]
mod tests {
    use super::super::procfs::parse_pid_cgroup;
    use super::*;

    fn hybrid_mounts() -> CgroupMounts {
        let mount = |dir: &str| {
            Some(CgroupMount {
                root: "/".into(),
                dir: PathBuf::from(dir),
            })
        };
        CgroupMounts {
            unified: mount("/sys/fs/cgroup/unified"),
            memory: mount("/sys/fs/cgroup/memory"),
            cpuacct: mount("/sys/fs/cgroup/cpuacct"),
        }
    }

    #[test]
    fn a_container_owns_its_cgroups() {
        let agent =
            parse_pid_cgroup("4:memory:/edgefleet\n2:cpuacct:/edgefleet\n0::/edgefleet.service\n")
                .unwrap();
        let container = parse_pid_cgroup(
            "4:memory:/docker/abc\n2:cpuacct:/docker/abc\n0::/system.slice/docker-abc.scope\n",
        )
        .unwrap();
        let own = own_cgroups(&container, &agent, &hybrid_mounts());
        assert_eq!(
            own,
            OwnCgroups {
                unified: Some("/sys/fs/cgroup/unified/system.slice/docker-abc.scope".into()),
                memory_v1: Some("/sys/fs/cgroup/memory/docker/abc".into()),
                cpuacct_v1: Some("/sys/fs/cgroup/cpuacct/docker/abc".into()),
            }
        );
    }

    #[test]
    fn the_agents_cgroup_root_and_ancestors_are_not_a_workloads_own() {
        let agent = parse_pid_cgroup(
            "4:memory:/process_api/5190\n2:cpuacct:/\n0::/system.slice/edgefleet.service\n",
        )
        .unwrap();
        // Same cgroup as the agent (memory), root (cpuacct), an ancestor of the agent (v2).
        let child = parse_pid_cgroup("4:memory:/process_api/5190\n2:cpuacct:/\n0::/system.slice\n")
            .unwrap();
        assert_eq!(
            own_cgroups(&child, &agent, &hybrid_mounts()),
            OwnCgroups::default()
        );
        // A sibling whose name starts like the agent's is not an ancestor.
        let sibling = parse_pid_cgroup("0::/system.slice/edgefleet.service-worker\n").unwrap();
        assert!(
            own_cgroups(&sibling, &agent, &hybrid_mounts())
                .unified
                .is_some()
        );
    }

    #[test]
    fn an_unmounted_hierarchy_gives_no_cgroup() {
        let container = parse_pid_cgroup("4:memory:/docker/abc\n").unwrap();
        let own = own_cgroups(&container, &[], &CgroupMounts::default());
        assert_eq!(own, OwnCgroups::default());
    }
}
