//! `TrafficStore` in SQLite.

use async_trait::async_trait;

use super::SqliteStore;
use crate::store::TrafficStore;

/// Schema migration: the tables of `TrafficStore`.
pub(super) const MIGRATION: &str = r#"
SELECT 1;
"#;

#[async_trait]
impl TrafficStore for SqliteStore {}
