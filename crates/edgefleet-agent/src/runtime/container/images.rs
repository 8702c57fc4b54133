//! Which images edgefleet brought onto the node, and which of them may go.
//!
//! The engine's images are not all edgefleet's: an operator may have pulled some by hand,
//! another agent sharing the engine others. So the runtime records each image it pulled or
//! loaded that was not on the node before, in `<state dir>/images.json` (replaced
//! atomically), and the clean-up only ever considers those. `plan` is the decision, pure:
//! a recorded image is removed when no desired workload needs it (by reference or by
//! image id) and no container, whoever's, uses it.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::fsutil::{self, FsError};

/// The state file in the runtime's state directory.
pub const STATE_FILE: &str = "images.json";

/// How an image came onto the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Origin {
    Pulled,
    /// Loaded from an image archive artifact.
    Loaded,
}

/// The images edgefleet brought onto the node, by the reference workloads name them with.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    #[serde(default)]
    pub images: BTreeMap<String, Origin>,
}

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error("{}: not an image record ({source}); remove the file to start over (images edgefleet pulled before are then kept)", path.display())]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

impl Record {
    /// The record in `state_dir`; empty when there is none yet.
    pub fn load(state_dir: &Path) -> Result<Self, RecordError> {
        let path = state_dir.join(STATE_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|source| RecordError::Corrupt { path, source }),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(Self::default()),
            Err(error) => Err(FsError::new("reading", &path, error).into()),
        }
    }

    /// Writes the record to `state_dir` atomically.
    pub fn save(&self, state_dir: &Path) -> Result<(), RecordError> {
        std::fs::create_dir_all(state_dir).map_err(|e| FsError::new("creating", state_dir, e))?;
        let path = state_dir.join(STATE_FILE);
        // Serialising a map of strings cannot fail; an empty file would only lose the
        // record, never an image.
        let bytes = serde_json::to_vec_pretty(self).unwrap_or_default();
        fsutil::write_atomic(&path, &bytes, fsutil::PUBLIC)?;
        Ok(())
    }
}

/// What the clean-up knows about one recorded image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    pub reference: String,
    /// The engine's id for it now; `None` when the engine no longer has it.
    pub image_id: Option<String>,
}

/// What to do with the recorded images.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// References to remove from the engine (and then from the record).
    pub remove: Vec<String>,
    /// References to drop from the record: the engine no longer has them.
    pub forget: Vec<String>,
}

/// Decides which recorded images go: those the engine still has that no desired workload
/// needs (`needed_references`, and `needed_ids`, the ids the engine gives them) and that
/// no container uses (`used_ids`, any container, running or not, of any agent).
pub fn plan(
    recorded: &[Recorded],
    needed_references: &BTreeSet<String>,
    needed_ids: &BTreeSet<String>,
    used_ids: &BTreeSet<String>,
) -> Plan {
    let mut plan = Plan::default();
    for image in recorded {
        let Some(id) = &image.image_id else {
            plan.forget.push(image.reference.clone());
            continue;
        };
        let kept = needed_references.contains(&image.reference)
            || needed_ids.contains(id)
            || used_ids.contains(id);
        if !kept {
            plan.remove.push(image.reference.clone());
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(items: &[&str]) -> BTreeSet<String> {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    fn recorded(reference: &str, id: Option<&str>) -> Recorded {
        Recorded {
            reference: reference.to_owned(),
            image_id: id.map(str::to_owned),
        }
    }

    fn check(
        images: &[Recorded],
        needed_references: &[&str],
        needed_ids: &[&str],
        used_ids: &[&str],
        expected_remove: &[&str],
        expected_forget: &[&str],
    ) {
        let plan = plan(
            images,
            &set(needed_references),
            &set(needed_ids),
            &set(used_ids),
        );
        assert_eq!(plan.remove, expected_remove, "remove");
        assert_eq!(plan.forget, expected_forget, "forget");
    }

    #[test]
    fn only_unneeded_unused_recorded_images_go() {
        let images = [
            recorded("app:1", Some("sha256:a1")),
            recorded("app:2", Some("sha256:a2")),
            recorded("busybox:1.36", Some("sha256:b")),
            recorded("gone:1", None),
        ];
        // app:2 is desired; app:1 still runs (an update not yet done); busybox is neither.
        check(
            &images,
            &["app:2"],
            &["sha256:a2"],
            &["sha256:a1"],
            &["busybox:1.36"],
            &["gone:1"],
        );
    }

    #[test]
    fn a_needed_image_is_kept_under_another_name() {
        // A workload names the image `busybox` and the record holds `busybox:latest`: the
        // engine gives both the same id.
        let images = [recorded("busybox:latest", Some("sha256:b"))];
        check(&images, &["busybox"], &["sha256:b"], &[], &[], &[]);
    }

    #[test]
    fn nothing_needed_and_nothing_running_removes_every_recorded_image() {
        let images = [
            recorded("app:1", Some("sha256:a1")),
            recorded("app:2", Some("sha256:a2")),
        ];
        check(&images, &[], &[], &[], &["app:1", "app:2"], &[]);
        check(&[], &["app:1"], &[], &[], &[], &[]);
    }

    #[test]
    fn the_record_survives_a_round_trip_and_reports_corruption() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Record::load(dir.path()).unwrap(), Record::default());
        let mut record = Record::default();
        record.images.insert("app:1".to_owned(), Origin::Pulled);
        record.images.insert("app:2".to_owned(), Origin::Loaded);
        record.save(dir.path()).unwrap();
        assert_eq!(Record::load(dir.path()).unwrap(), record);
        std::fs::write(dir.path().join(STATE_FILE), b"{not json").unwrap();
        let error = Record::load(dir.path()).unwrap_err().to_string();
        assert!(
            error.contains("images.json: not an image record"),
            "{error}"
        );
    }
}
