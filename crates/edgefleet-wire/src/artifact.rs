//! Artifacts: content-addressed blobs (WebAssembly modules, image archives, models) the
//! server hosts and agents download, referenced from workloads as `name@sha256:<digest>`.
//!
//! Routes (see the table in `api`):
//! - `POST /v1/artifacts?name=NAME` with the raw content as the body (and optionally the
//!   client's digest in `DIGEST_HEADER`) → `ArtifactInfo`; 201 when stored, 200 when that
//!   name already had that content.
//! - `GET /v1/artifacts` → `ArtifactList`.
//! - `DELETE /v1/artifacts/{NAME}` (every version) or `/v1/artifacts/{NAME@sha256:DIGEST}`
//!   → `ArtifactRemoval`; 409 while a deployment references it.
//! - `GET /v1/agent/artifacts/{NAME@sha256:DIGEST}` → the content, with single byte ranges
//!   (`Range: bytes=N-` or `bytes=N-M`) and `ETag: "<digest>"`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::Timestamp;
use crate::workload::{ArtifactRef, ArtifactRefError};

/// The request header in which a client sends the SHA-256 it computed of an upload
/// (64 lowercase hex digits, optionally prefixed `sha256:`). The server refuses the upload
/// when the content it received hashes differently.
pub const DIGEST_HEADER: &str = "x-edgefleet-sha256";

/// One stored artifact version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactInfo {
    pub name: String,
    /// SHA-256 of the content, 64 lowercase hex digits.
    pub digest: String,
    pub size: u64,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: Timestamp,
    #[serde(default)]
    pub created_by: String,
    /// Deployments whose current revision references this artifact.
    #[serde(default)]
    pub used_by: Vec<String>,
}

impl ArtifactInfo {
    /// `name@sha256:<digest>`, the form workloads reference.
    pub fn reference(&self) -> String {
        format!("{}@sha256:{}", self.name, self.digest)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactList {
    /// Sorted by name, then oldest first.
    pub artifacts: Vec<ArtifactInfo>,
    /// The largest upload the server accepts, in bytes (its `--max-artifact-size`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_size: Option<u64>,
}

/// What `DELETE /v1/artifacts/...` removed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactRemoval {
    pub removed: Vec<ArtifactInfo>,
}

/// What a delete names: every version of a name, or one version.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ArtifactTarget {
    /// `NAME`: every version.
    Name(String),
    /// `NAME@sha256:DIGEST`: one version.
    Version(ArtifactRef),
}

impl ArtifactTarget {
    pub fn name(&self) -> &str {
        match self {
            Self::Name(name) => name,
            Self::Version(reference) => &reference.name,
        }
    }

    /// The digest of a one-version target.
    pub fn digest(&self) -> Option<&str> {
        match self {
            Self::Name(_) => None,
            Self::Version(reference) => Some(&reference.digest),
        }
    }

    pub fn matches(&self, name: &str, digest: &str) -> bool {
        self.name() == name && self.digest().is_none_or(|wanted| wanted == digest)
    }
}

impl FromStr for ArtifactTarget {
    type Err = ArtifactRefError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        if input.contains('@') {
            return input.parse().map(Self::Version);
        }
        if ArtifactRef::valid_name(input) {
            return Ok(Self::Name(input.to_owned()));
        }
        Err(ArtifactRefError {
            input: input.to_owned(),
            reason: "the name must be 1 to 128 characters of letters, digits, '.', '_' and '-'",
        })
    }
}

impl fmt::Display for ArtifactTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Name(name) => f.write_str(name),
            Self::Version(reference) => reference.fmt(f),
        }
    }
}

/// A digest as a client may write it (`sha256:<hex>` or `<hex>`, any case), as the 64
/// lowercase hex digits artifacts use; `None` when it is not a SHA-256 digest.
pub fn normalize_digest(input: &str) -> Option<String> {
    let input = input.trim();
    let hex = input.strip_prefix("sha256:").unwrap_or(input);
    let hex = hex.to_ascii_lowercase();
    ArtifactRef::valid_digest(&hex).then_some(hex)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse() {
        let digest = "ab".repeat(32);
        assert_eq!(
            "model.bin".parse::<ArtifactTarget>(),
            Ok(ArtifactTarget::Name("model.bin".into()))
        );
        let one: ArtifactTarget = format!("model.bin@sha256:{digest}").parse().unwrap();
        assert_eq!(one.name(), "model.bin");
        assert_eq!(one.digest(), Some(digest.as_str()));
        assert_eq!(one.to_string(), format!("model.bin@sha256:{digest}"));
        assert!(one.matches("model.bin", &digest));
        assert!(!one.matches("model.bin", &"cd".repeat(32)));
        assert!(ArtifactTarget::Name("m".into()).matches("m", &digest));
        for bad in ["", "a/b", "-x", "m@", "m@sha256:12"] {
            assert!(bad.parse::<ArtifactTarget>().is_err(), "{bad}");
        }
    }

    #[test]
    fn digests_normalize() {
        let digest = "ab".repeat(32);
        assert_eq!(normalize_digest(&digest), Some(digest.clone()));
        assert_eq!(
            normalize_digest(&format!("sha256:{}", digest.to_uppercase())),
            Some(digest)
        );
        assert_eq!(normalize_digest("sha256:abc"), None);
        assert_eq!(normalize_digest(&"g".repeat(64)), None);
    }
}
