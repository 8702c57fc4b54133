//! Files rendered on the node for workloads (`WorkloadSpec::files`).
//!
//! Each workload with files gets `files/<workload>/` in the data directory. Its files are
//! rendered from the spec's templates with this node's name, labels (which the server sends
//! with the desired workload) and facts (`edgefleet_core::template`), and written there
//! atomically (a reader sees the old content or the new one, never a mix). Files the spec
//! no longer declares are removed. The directory itself is never replaced, so a container
//! that has it bind-mounted sees new content.
//!
//! When files are written:
//! - before each start of an instance, all of them;
//! - when a desired state arrives, the files whose change does not restart the workload
//!   (`onChange: none`), for instances that keep running.
//!
//! The supervisor's replacement key (`Wanted::key`) of a workload with files whose change
//! restarts it (`onChange: restart`, the default) is its spec hash plus a digest of those
//! files as rendered on this node: a relabel that changes their content restarts the
//! workload, one that does not leaves it alone.

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use edgefleet_core::template::{self, Context, Template};
use edgefleet_wire::api::DesiredWorkload;
use edgefleet_wire::workload::OnFileChange;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::fsutil;

/// What templates may refer to on this node, other than per-workload labels.
#[derive(Debug, Clone)]
pub struct NodeContext {
    pub node: String,
    /// The node's facts as JSON.
    pub facts: Value,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedFile {
    pub path: String,
    pub content: Vec<u8>,
    pub mode: u32,
    pub restart: bool,
}

/// A workload's files as rendered on this node, or why they cannot be.
pub type Rendered = Result<Vec<RenderedFile>, String>;

/// Renders `workload`'s files. The error names the file and what is wrong.
pub fn render(node: &NodeContext, workload: &DesiredWorkload) -> Rendered {
    let spec = &workload.spec;
    let context = Context {
        node: &node.node,
        labels: &workload.labels,
        facts: &node.facts,
        workload: &spec.name,
    };
    spec.files
        .iter()
        .map(|file| {
            let content = Template::parse(&file.content)
                .and_then(|t| t.render(&context))
                .map_err(|e| format!("file {}: {e}", file.path))?;
            let mode = template::file_mode(file).map_err(|e| format!("file {}: {e}", file.path))?;
            template::check_path(&file.path).map_err(|e| format!("file {}: {e}", file.path))?;
            Ok(RenderedFile {
                path: file.path.clone(),
                content: content.into_bytes(),
                mode,
                restart: file.on_change == OnFileChange::Restart,
            })
        })
        .collect()
}

/// The supervisor's replacement key for `workload` given its rendered files.
pub fn key(workload: &DesiredWorkload, rendered: &Rendered) -> String {
    match rendered {
        Ok(files) => {
            let restarting: Vec<&RenderedFile> = files.iter().filter(|f| f.restart).collect();
            if restarting.is_empty() {
                return workload.spec_hash.clone();
            }
            let mut hasher = Sha256::new();
            for file in restarting {
                hasher.update(file.path.as_bytes());
                hasher.update([0]);
                hasher.update(file.mode.to_be_bytes());
                hasher.update((file.content.len() as u64).to_be_bytes());
                hasher.update(&file.content);
            }
            let digest = hex::encode(hasher.finalize());
            format!("{}+files:{}", workload.spec_hash, &digest[..16])
        }
        // Starting it fails with the error; a fixed key keeps a desired state that does not
        // change the error from restarting anything.
        Err(_) => format!("{}+files:error", workload.spec_hash),
    }
}

/// Where `workload`'s files live under `root` (`<data>/files`).
pub fn dir(root: &Path, workload: &str) -> PathBuf {
    root.join(workload)
}

/// Writes `files` into `dir` (created if missing): each file atomically, only when its
/// content or mode differ from what is there; then removes files that are not in `files`.
/// With `only_live`, writes only files that do not restart the workload and removes nothing.
pub fn write(dir: &Path, files: &[RenderedFile], only_live: bool) -> Result<(), String> {
    fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    for file in files {
        if only_live && file.restart {
            continue;
        }
        let path = dir.join(&file.path);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)
                .map_err(|e| format!("creating {}: {e}", parent.display()))?;
        }
        if unchanged(&path, file) {
            continue;
        }
        fsutil::write_atomic(&path, &file.content, file.mode).map_err(|e| e.to_string())?;
        // The umask may have narrowed the mode the file was created with.
        set_mode(&path, file.mode)?;
    }
    if !only_live {
        let keep: BTreeSet<PathBuf> = files.iter().map(|f| dir.join(&f.path)).collect();
        remove_others(dir, &keep).map_err(|e| format!("cleaning {}: {e}", dir.display()))?;
    }
    Ok(())
}

fn set_mode(path: &Path, mode: u32) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(|e| format!("setting the mode of {}: {e}", path.display()))
}

fn unchanged(path: &Path, file: &RenderedFile) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let Ok(meta) = fs::metadata(path) else {
        return false;
    };
    meta.permissions().mode() & 0o777 == file.mode
        && meta.len() == file.content.len() as u64
        && fs::read(path).is_ok_and(|c| c == file.content)
}

/// Removes every file under `dir` not in `keep`, and directories left empty.
fn remove_others(dir: &Path, keep: &BTreeSet<PathBuf>) -> io::Result<bool> {
    let mut empty = true;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            if remove_others(&path, keep)? {
                fs::remove_dir(&path)?;
            } else {
                empty = false;
            }
        } else if keep.contains(&path) {
            empty = false;
        } else {
            fs::remove_file(&path)?;
        }
    }
    Ok(empty)
}

/// Removes the files directories of workloads not in `wanted` (no longer desired).
pub fn remove_unwanted(root: &Path, wanted: &BTreeSet<&str>) {
    let Ok(entries) = fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if wanted.contains(name.to_string_lossy().as_ref()) {
            continue;
        }
        if let Err(error) = fs::remove_dir_all(entry.path()) {
            tracing::warn!(%error, dir = %entry.path().display(), "cannot remove the files of a workload no longer desired");
        }
    }
}

#[cfg(test)]
mod tests {
    use edgefleet_wire::Labels;
    use edgefleet_wire::manifest::WorkloadSpec;
    use edgefleet_wire::workload::FileSpec;

    use super::*;

    fn workload(files: Vec<FileSpec>, labels: &[(&str, &str)]) -> DesiredWorkload {
        let mut spec = WorkloadSpec::process("web", "/bin/web");
        spec.files = files;
        DesiredWorkload {
            streams: Vec::new(),
            deployment: "d".into(),
            revision: "r".into(),
            spec_hash: "h".into(),
            spec,
            rolled_back: false,
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect::<Labels>(),
        }
    }

    fn file(path: &str, content: &str, on_change: OnFileChange) -> FileSpec {
        FileSpec {
            path: path.into(),
            content: content.into(),
            mode: None,
            on_change,
        }
    }

    fn node() -> NodeContext {
        NodeContext {
            node: "edge-1".into(),
            facts: serde_json::json!({"arch": "x86_64"}),
        }
    }

    #[test]
    fn keys_follow_restarting_files_only() {
        let restart = |site: &str| {
            workload(
                vec![
                    file(
                        "a.conf",
                        "site={{ node.labels.site }}",
                        OnFileChange::Restart,
                    ),
                    file("live.conf", "{{ node.labels.level }}", OnFileChange::None),
                ],
                &[("site", site), ("level", site)],
            )
        };
        let key_of = |w: &DesiredWorkload| key(w, &render(&node(), w));
        assert_eq!(key_of(&restart("x")), key_of(&restart("x")));
        assert_ne!(key_of(&restart("x")), key_of(&restart("y")));
        // Only live files: the key is the spec hash.
        let live = workload(
            vec![file("l", "{{ node.labels.level }}", OnFileChange::None)],
            &[("level", "1")],
        );
        assert_eq!(key_of(&live), "h");
        // A render error has a key of its own, and the error names the file.
        let broken = workload(
            vec![file(
                "b.conf",
                "{{ node.labels.nope }}",
                OnFileChange::Restart,
            )],
            &[],
        );
        let rendered = render(&node(), &broken);
        assert!(
            rendered.as_ref().unwrap_err().contains("file b.conf"),
            "{rendered:?}"
        );
        assert_eq!(key(&broken, &rendered), "h+files:error");
    }

    #[test]
    fn writes_atomically_with_modes_and_removes_stale_files() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("web");
        let mut spec_files = vec![
            file(
                "conf/app.toml",
                "arch = \"{{ node.facts.arch }}\"",
                OnFileChange::Restart,
            ),
            file("old.txt", "bye", OnFileChange::Restart),
        ];
        spec_files[0].mode = Some("0600".into());
        let w = workload(spec_files, &[]);
        let rendered = render(&node(), &w).unwrap();
        write(&dir, &rendered, false).unwrap();
        let app = dir.join("conf/app.toml");
        assert_eq!(fs::read_to_string(&app).unwrap(), "arch = \"x86_64\"");
        assert_eq!(
            fs::metadata(&app).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(dir.join("old.txt").exists());
        // The next spec drops old.txt: it goes, conf/app.toml stays.
        let w = workload(
            vec![file("conf/app.toml", "v2", OnFileChange::Restart)],
            &[],
        );
        write(&dir, &render(&node(), &w).unwrap(), false).unwrap();
        assert!(!dir.join("old.txt").exists());
        assert_eq!(fs::read_to_string(&app).unwrap(), "v2");
        // only_live leaves restarting files alone.
        let w = workload(
            vec![
                file("conf/app.toml", "v3", OnFileChange::Restart),
                file("live", "now", OnFileChange::None),
            ],
            &[],
        );
        write(&dir, &render(&node(), &w).unwrap(), true).unwrap();
        assert_eq!(fs::read_to_string(&app).unwrap(), "v2");
        assert_eq!(fs::read_to_string(dir.join("live")).unwrap(), "now");
    }
}
