//! Content hashes: a deployment revision and a workload spec are identified by the SHA-256 of
//! their canonical JSON encoding (struct fields in declaration order, maps sorted).

use edgefleet_wire::manifest::{DeploymentSpec, WorkloadSpec};
use serde::Serialize;
use sha2::{Digest, Sha256};

fn sha256_json<T: Serialize>(value: &T) -> String {
    // Serialising these plain data types cannot fail; an empty input would still hash.
    let bytes = serde_json::to_vec(value).unwrap_or_default();
    hex::encode(Sha256::digest(&bytes))
}

/// The revision id of a deployment spec.
pub fn revision_hash(spec: &DeploymentSpec) -> String {
    sha256_json(spec)
}

/// The hash of one workload spec; the agent replaces a workload when it changes.
pub fn workload_hash(spec: &WorkloadSpec) -> String {
    sha256_json(spec)
}

/// The hash of arbitrary bytes (tokens, certificates), lower-case hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The first 12 characters of a hash, for tables.
pub fn short(hash: &str) -> &str {
    hash.get(..12).unwrap_or(hash)
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgefleet_wire::manifest::*;

    fn spec(command: &str) -> DeploymentSpec {
        DeploymentSpec {
            streams: Vec::new(),
            selector: Selector::default(),
            priority: 0,
            workloads: vec![WorkloadSpec::process("w", command)],
            rollout: Default::default(),
        }
    }

    #[test]
    fn stable_and_sensitive() {
        assert_eq!(revision_hash(&spec("a")), revision_hash(&spec("a")));
        assert_ne!(revision_hash(&spec("a")), revision_hash(&spec("b")));
        assert_eq!(revision_hash(&spec("a")).len(), 64);
        // Pinned so that an accidental change of the encoding (which would restart every
        // workload in every fleet on upgrade) fails here first.
        assert_eq!(
            short(&workload_hash(&spec("/bin/true").workloads[0])),
            "15dc605f6b80"
        );
    }
}
