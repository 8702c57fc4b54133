//! `LakeStore` in SQLite.

use async_trait::async_trait;

use super::SqliteStore;
use crate::store::LakeStore;

/// Schema migration: the tables of `LakeStore`.
pub(super) const MIGRATION: &str = r#"
SELECT 1;
"#;

#[async_trait]
impl LakeStore for SqliteStore {}
