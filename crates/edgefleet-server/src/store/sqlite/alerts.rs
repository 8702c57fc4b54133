//! `AlertStore` in SQLite.

use async_trait::async_trait;

use super::SqliteStore;
use crate::store::AlertStore;

/// Schema migration: the tables of `AlertStore`.
pub(super) const MIGRATION: &str = r#"
SELECT 1;
"#;

#[async_trait]
impl AlertStore for SqliteStore {}
