//! The data lake exporter's cursors: what has been written to which sink, so that a retry after a crash writes the same files again, never new ones.

use async_trait::async_trait;

#[async_trait]
pub trait LakeStore: Send + Sync {}
