//! Artifact versions in SQLite: one row per (name, digest). The content itself is a file
//! the server keeps by digest outside the database; a row says that name has that content.

use rusqlite::{Connection, OptionalExtension, Row, params};

use super::{commit, db, insert_audit, time_from_db, time_to_db, u64_from_db, u64_to_db, write_tx};
use crate::store::{ArtifactRecord, NewAudit, StoreResult};

/// Schema migration 3: the artifacts table.
pub(super) const MIGRATION: &str = r#"
CREATE TABLE artifacts (
    name TEXT NOT NULL,
    digest TEXT NOT NULL,
    size INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    created_by TEXT NOT NULL,
    PRIMARY KEY (name, digest)
) STRICT, WITHOUT ROWID;

CREATE INDEX artifacts_by_digest ON artifacts (digest);
"#;

const COLUMNS: &str = "name, digest, size, created_at, created_by";

type RawRow = (String, String, i64, i64, String);

fn raw_row(row: &Row<'_>) -> rusqlite::Result<RawRow> {
    Ok((
        row.get(0)?,
        row.get(1)?,
        row.get(2)?,
        row.get(3)?,
        row.get(4)?,
    ))
}

fn decode((name, digest, size, created_at, created_by): RawRow) -> StoreResult<ArtifactRecord> {
    let what = |column: &str| format!("{column} of artifact {name}@sha256:{digest}");
    Ok(ArtifactRecord {
        size: u64_from_db(&what("size"), size)?,
        created_at: time_from_db(&what("created_at"), created_at)?,
        name,
        digest,
        created_by,
    })
}

fn read(connection: &Connection, name: &str, digest: &str) -> StoreResult<Option<ArtifactRecord>> {
    connection
        .query_row(
            &format!("SELECT {COLUMNS} FROM artifacts WHERE name = ?1 AND digest = ?2"),
            [name, digest],
            raw_row,
        )
        .optional()
        .map_err(db("reading an artifact"))?
        .map(decode)
        .transpose()
}

fn read_many(
    connection: &Connection,
    sql: &str,
    params: &[&dyn rusqlite::ToSql],
) -> StoreResult<Vec<ArtifactRecord>> {
    let mut statement = connection
        .prepare_cached(sql)
        .map_err(db("listing artifacts"))?;
    let rows: Vec<RawRow> = statement
        .query_map(params, raw_row)
        .and_then(Iterator::collect)
        .map_err(db("listing artifacts"))?;
    rows.into_iter().map(decode).collect()
}

pub(super) fn add_artifact(
    connection: &mut Connection,
    record: &ArtifactRecord,
    audit: &NewAudit,
) -> StoreResult<(ArtifactRecord, bool)> {
    let tx = write_tx(connection)?;
    if let Some(existing) = read(&tx, &record.name, &record.digest)? {
        return Ok((existing, false));
    }
    tx.execute(
        &format!("INSERT INTO artifacts ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5)"),
        params![
            record.name,
            record.digest,
            u64_to_db("artifact size", record.size)?,
            time_to_db(record.created_at),
            record.created_by
        ],
    )
    .map_err(db("storing an artifact"))?;
    insert_audit(&tx, audit)?;
    commit(tx)?;
    Ok((record.clone(), true))
}

pub(super) fn list_artifacts(connection: &mut Connection) -> StoreResult<Vec<ArtifactRecord>> {
    read_many(
        connection,
        &format!("SELECT {COLUMNS} FROM artifacts ORDER BY name, created_at, digest"),
        &[],
    )
}

pub(super) fn get_artifact(
    connection: &mut Connection,
    name: &str,
    digest: &str,
) -> StoreResult<Option<ArtifactRecord>> {
    read(connection, name, digest)
}

pub(super) fn delete_artifacts(
    connection: &mut Connection,
    name: &str,
    digest: Option<&str>,
    audit: &NewAudit,
) -> StoreResult<Vec<ArtifactRecord>> {
    let tx = write_tx(connection)?;
    let doomed = match digest {
        Some(digest) => read(&tx, name, digest)?.into_iter().collect(),
        None => read_many(
            &tx,
            &format!("SELECT {COLUMNS} FROM artifacts WHERE name = ?1 ORDER BY created_at, digest"),
            &[&name],
        )?,
    };
    if doomed.is_empty() {
        return Ok(doomed);
    }
    {
        let mut delete = tx
            .prepare_cached("DELETE FROM artifacts WHERE name = ?1 AND digest = ?2")
            .map_err(db("deleting an artifact"))?;
        for record in &doomed {
            delete
                .execute([&record.name, &record.digest])
                .map_err(db("deleting an artifact"))?;
        }
    }
    insert_audit(&tx, audit)?;
    commit(tx)?;
    Ok(doomed)
}

pub(super) fn artifact_digest_exists(
    connection: &mut Connection,
    digest: &str,
) -> StoreResult<bool> {
    connection
        .query_row(
            "SELECT EXISTS (SELECT 1 FROM artifacts WHERE digest = ?1)",
            [digest],
            |row| row.get(0),
        )
        .map_err(db("looking up an artifact digest"))
}

#[cfg(test)]
mod tests {
    use super::super::SqliteStore;
    use crate::store::{ArtifactRecord, NewAudit, Store};
    use time::macros::datetime;

    fn record(name: &str, digest_byte: char, at: time::OffsetDateTime) -> ArtifactRecord {
        ArtifactRecord {
            name: name.into(),
            digest: digest_byte.to_string().repeat(64),
            size: 42,
            created_at: at,
            created_by: "token:test".into(),
        }
    }

    fn audit(action: &str) -> NewAudit {
        NewAudit::new(
            datetime!(2026-01-01 12:00 UTC),
            "token:test",
            action,
            "artifact/x",
            "detail",
        )
    }

    #[tokio::test]
    async fn artifacts_are_added_listed_and_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("edgefleet.db");
        let store = SqliteStore::open(&path).await.unwrap();
        let t0 = datetime!(2026-01-01 12:00 UTC);
        let t1 = datetime!(2026-01-01 13:00 UTC);

        let (stored, created) = store
            .add_artifact(record("model", 'a', t0), audit("push"))
            .await
            .unwrap();
        assert!(created);
        assert_eq!(stored, record("model", 'a', t0));
        // The same name and content again changes nothing, not even the time.
        let (again, created) = store
            .add_artifact(record("model", 'a', t1), audit("push"))
            .await
            .unwrap();
        assert!(!created);
        assert_eq!(again.created_at, t0);
        store
            .add_artifact(record("model", 'b', t1), audit("push"))
            .await
            .unwrap();
        store
            .add_artifact(record("app", 'b', t1), audit("push"))
            .await
            .unwrap();

        let names: Vec<(String, char)> = store
            .list_artifacts()
            .await
            .unwrap()
            .into_iter()
            .map(|r| (r.name, r.digest.chars().next().unwrap()))
            .collect();
        assert_eq!(
            names,
            [
                ("app".into(), 'b'),
                ("model".into(), 'a'),
                ("model".into(), 'b')
            ]
        );
        assert!(
            store
                .get_artifact("model", &"a".repeat(64))
                .await
                .unwrap()
                .is_some()
        );
        assert!(
            store
                .get_artifact("app", &"a".repeat(64))
                .await
                .unwrap()
                .is_none()
        );

        // One version, then every version of a name.
        let removed = store
            .delete_artifacts("model", Some(&"b".repeat(64)), audit("delete"))
            .await
            .unwrap();
        assert_eq!(removed.len(), 1);
        assert!(store.artifact_digest_exists(&"b".repeat(64)).await.unwrap());
        let removed = store
            .delete_artifacts("model", None, audit("delete"))
            .await
            .unwrap();
        assert_eq!(removed, [record("model", 'a', t0)]);
        assert!(!store.artifact_digest_exists(&"a".repeat(64)).await.unwrap());
        let nothing = store
            .delete_artifacts("model", None, audit("delete"))
            .await
            .unwrap();
        assert!(nothing.is_empty());

        // Audit: three stored versions and two deletions, nothing for the no-ops.
        let actions: Vec<String> = store
            .list_audit(100, None)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.action)
            .collect();
        assert_eq!(actions, ["delete", "delete", "push", "push", "push"]);

        // Survives a reopen (the migration ran once).
        drop(store);
        let store = SqliteStore::open(&path).await.unwrap();
        assert_eq!(store.list_artifacts().await.unwrap().len(), 1);
    }
}
