//! `TelemetryStore` in SQLite.

use async_trait::async_trait;

use super::SqliteStore;
use crate::store::TelemetryStore;

/// Schema migration: the tables of `TelemetryStore`.
pub(super) const MIGRATION: &str = r#"
SELECT 1;
"#;

#[async_trait]
impl TelemetryStore for SqliteStore {}
