//! The IO of sinks: writing a file, and removing the date partitions retention expired, in a
//! local directory or an S3 bucket.
//!
//! A local file is written under a temporary name in its final directory, synced, renamed
//! over the final name, and the directory is synced: a reader sees the old file or the new
//! one, never half of one. The temporary name is fixed per file (`.<name>.tmp`, hidden from
//! query engines), so a write interrupted by a crash leaves nothing behind once retried.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use time::Date;

use super::config::{S3Target, SinkConfig, SinkTarget};
use super::layout;
use super::s3::{S3Client, S3Error};
use super::sigv4::Credentials;

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("sink {sink}: {operation} {}: {source}", path.display())]
    Local {
        sink: String,
        operation: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("sink {sink}: key {key:?} is not a relative path of plain segments")]
    BadKey { sink: String, key: String },
    #[error(transparent)]
    S3(#[from] Box<S3Error>),
    #[error("sink {sink}: a file operation did not finish: {reason}")]
    Task { sink: String, reason: String },
}

/// Where a sink's files go.
#[derive(Debug, Clone)]
pub enum SinkIo {
    Local { sink: String, root: PathBuf },
    S3(S3Client),
}

/// Sets up the IO of a configured sink; `env` looks up the environment variables that hold
/// the credentials.
pub fn open(config: &SinkConfig, env: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<SinkIo> {
    match &config.target {
        SinkTarget::Local { path } => Ok(SinkIo::Local {
            sink: config.name.clone(),
            root: path.clone(),
        }),
        SinkTarget::S3(target) => open_s3(&config.name, target, env).map(SinkIo::S3),
    }
}

fn open_s3(
    sink: &str,
    target: &S3Target,
    env: &dyn Fn(&str) -> Option<String>,
) -> anyhow::Result<S3Client> {
    let variable = |name: &str, field: &str| {
        env(name).filter(|value| !value.is_empty()).ok_or_else(|| {
            anyhow::anyhow!(
                "lake sink {sink}: the environment variable {name} ({field}) is not set; it must \
                 hold the credential"
            )
        })
    };
    let credentials = Credentials {
        access_key_id: variable(&target.access_key_env, "accessKeyEnv")?,
        secret_access_key: variable(&target.secret_key_env, "secretKeyEnv")?,
        session_token: match &target.session_token_env {
            Some(name) => Some(variable(name, "sessionTokenEnv")?),
            None => None,
        },
    };
    let tls = tls_config(sink, target)?;
    S3Client::new(
        sink,
        target.endpoint.clone(),
        &target.region,
        &target.bucket,
        credentials,
        tls,
    )
    .map_err(|error| anyhow::anyhow!("lake sink {sink}: building the HTTP client: {error}"))
}

/// Where CA bundles usually are (Debian/Ubuntu/Alpine, Fedora/RHEL, openSUSE, macOS/BSD).
const SYSTEM_CA_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

/// TLS for an `https://` endpoint: the sink's `caFile`, else the system's CA bundle. An
/// `http://` endpoint needs none (the configuration trusts nothing and is never used).
fn tls_config(sink: &str, target: &S3Target) -> anyhow::Result<tokio_rustls::rustls::ClientConfig> {
    if target.endpoint.scheme() != "https" {
        return Ok(tokio_rustls::rustls::ClientConfig::builder_with_provider(
            edgefleet_tls::provider(),
        )
        .with_safe_default_protocol_versions()?
        .with_root_certificates(tokio_rustls::rustls::RootCertStore::empty())
        .with_no_client_auth());
    }
    let bundle = match &target.ca_file {
        Some(path) => path.clone(),
        None => SYSTEM_CA_BUNDLES
            .iter()
            .map(PathBuf::from)
            .find(|path| path.is_file())
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "lake sink {sink}: no CA bundle found at {} to verify {}; set caFile",
                    SYSTEM_CA_BUNDLES.join(", "),
                    target.endpoint
                )
            })?,
    };
    let pem = std::fs::read_to_string(&bundle).map_err(|error| {
        anyhow::anyhow!(
            "lake sink {sink}: reading CA file {}: {error}",
            bundle.display()
        )
    })?;
    edgefleet_tls::client_config(&pem, None)
        .map_err(|error| anyhow::anyhow!("lake sink {sink}: CA file {}: {error}", bundle.display()))
}

impl SinkIo {
    /// Writes (or replaces) the file at `key`.
    pub async fn put(&self, key: &str, bytes: Vec<u8>) -> Result<(), SinkError> {
        match self {
            Self::Local { sink, root } => {
                let path = local_path(sink, root, key)?;
                let sink = sink.clone();
                tokio::task::spawn_blocking(move || write_atomically(&sink, &path, &bytes))
                    .await
                    .map_err(|error| SinkError::Task {
                        sink: self.sink_name().to_owned(),
                        reason: error.to_string(),
                    })?
            }
            Self::S3(client) => Ok(client
                .put_object(key, Bytes::from(bytes), "application/vnd.apache.parquet")
                .await
                .map_err(Box::new)?),
        }
    }

    /// Removes the files of `stream_prefix` (see `layout::stream_prefix`) in date partitions
    /// before `cutoff`; returns how many files went.
    pub async fn expire(&self, stream_prefix: &str, cutoff: Date) -> Result<u64, SinkError> {
        match self {
            Self::Local { sink, root } => {
                let dir = local_path(sink, root, stream_prefix.trim_end_matches('/'))?;
                let sink = sink.clone();
                tokio::task::spawn_blocking(move || expire_local(&sink, &dir, cutoff))
                    .await
                    .map_err(|error| SinkError::Task {
                        sink: self.sink_name().to_owned(),
                        reason: error.to_string(),
                    })?
            }
            Self::S3(client) => {
                // Date partitions first, so only the expired ones are listed in full.
                let mut removed = 0;
                for partition in client
                    .list_prefixes(stream_prefix)
                    .await
                    .map_err(Box::new)?
                {
                    if !layout::is_expired(&partition, stream_prefix, cutoff) {
                        continue;
                    }
                    for key in client.list_keys(&partition).await.map_err(Box::new)? {
                        client.delete_object(&key).await.map_err(Box::new)?;
                        removed += 1;
                    }
                }
                Ok(removed)
            }
        }
    }

    fn sink_name(&self) -> &str {
        match self {
            Self::Local { sink, .. } => sink,
            Self::S3(client) => client.sink(),
        }
    }
}

/// The path of `key` under `root`; refuses keys that are not plain relative segments (the
/// layout never makes such keys; this keeps a bug from writing outside the sink).
fn local_path(sink: &str, root: &Path, key: &str) -> Result<PathBuf, SinkError> {
    let plain = !key.is_empty()
        && key
            .split('/')
            .all(|segment| !segment.is_empty() && segment != "." && segment != "..");
    if !plain {
        return Err(SinkError::BadKey {
            sink: sink.to_owned(),
            key: key.to_owned(),
        });
    }
    Ok(root.join(key))
}

fn write_atomically(sink: &str, path: &Path, bytes: &[u8]) -> Result<(), SinkError> {
    let io = |operation: &'static str, path: &Path| {
        let sink = sink.to_owned();
        let path = path.to_owned();
        move |source| SinkError::Local {
            sink,
            operation,
            path,
            source,
        }
    };
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(SinkError::BadKey {
            sink: sink.to_owned(),
            key: path.display().to_string(),
        });
    };
    let created = missing_ancestors(dir);
    std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
    let temporary = dir.join(format!(".{}.tmp", name.to_string_lossy()));
    let mut file = std::fs::File::create(&temporary).map_err(io("creating", &temporary))?;
    file.write_all(bytes).map_err(io("writing", &temporary))?;
    file.sync_all().map_err(io("syncing", &temporary))?;
    drop(file);
    std::fs::rename(&temporary, path).map_err(io("renaming into place", path))?;
    sync_dir(dir).map_err(io("syncing", dir))?;
    // New directories exist durably only once their parents are synced too.
    for created in created {
        if let Some(parent) = created.parent() {
            sync_dir(parent).map_err(io("syncing", parent))?;
        }
    }
    Ok(())
}

/// The ancestors of `dir` (itself included) that do not exist yet, deepest first.
fn missing_ancestors(dir: &Path) -> Vec<PathBuf> {
    dir.ancestors()
        .take_while(|ancestor| !ancestor.as_os_str().is_empty() && !ancestor.exists())
        .map(Path::to_path_buf)
        .collect()
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

fn expire_local(sink: &str, stream_dir: &Path, cutoff: Date) -> Result<u64, SinkError> {
    let io = |operation: &'static str, path: &Path| {
        let sink = sink.to_owned();
        let path = path.to_owned();
        move |source| SinkError::Local {
            sink,
            operation,
            path,
            source,
        }
    };
    let entries = match std::fs::read_dir(stream_dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(error) => return Err(io("listing", stream_dir)(error)),
    };
    let mut removed = 0;
    for entry in entries {
        let entry = entry.map_err(io("listing", stream_dir))?;
        let name = entry.file_name();
        let expired = name
            .to_str()
            .and_then(layout::parse_date_segment)
            .is_some_and(|date| date < cutoff);
        if !expired || !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let partition = entry.path();
        removed += count_files(&partition);
        std::fs::remove_dir_all(&partition).map_err(io("removing", &partition))?;
    }
    if removed > 0 {
        sync_dir(stream_dir).map_err(io("syncing", stream_dir))?;
    }
    Ok(removed)
}

fn count_files(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.file_type() {
            Ok(t) if t.is_dir() => count_files(&entry.path()),
            Ok(_) => 1,
            Err(_) => 0,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use time::macros::date;

    use super::*;

    fn local(root: &Path) -> SinkIo {
        SinkIo::Local {
            sink: "default".into(),
            root: root.to_owned(),
        }
    }

    #[tokio::test]
    async fn local_put_replaces_whole_files() {
        let dir = tempfile::tempdir().unwrap();
        let sink = local(dir.path());
        let key = "stream=s/date=2024-01-01/site=a/part-1-2.parquet";
        sink.put(key, b"first".to_vec()).await.unwrap();
        sink.put(key, b"second".to_vec()).await.unwrap();
        let partition = dir.path().join("stream=s/date=2024-01-01/site=a");
        assert_eq!(
            std::fs::read(partition.join("part-1-2.parquet")).unwrap(),
            b"second"
        );
        let names: Vec<_> = std::fs::read_dir(&partition)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, ["part-1-2.parquet"], "no temporary file is left");
    }

    #[tokio::test]
    async fn local_keys_stay_inside_the_sink() {
        let dir = tempfile::tempdir().unwrap();
        let sink = local(&dir.path().join("lake"));
        for key in ["../x.parquet", "a/../../x", "/etc/x", "a//b", ""] {
            let error = sink.put(key, vec![1]).await.unwrap_err();
            assert!(matches!(error, SinkError::BadKey { .. }), "{key}: {error}");
        }
        assert!(!dir.path().join("x.parquet").exists());
    }

    #[tokio::test]
    async fn local_expiry_removes_old_date_partitions() {
        let dir = tempfile::tempdir().unwrap();
        let sink = local(dir.path());
        for (stream, date) in [
            ("readings", "2024-01-01"),
            ("readings", "2024-01-02"),
            ("readings", "2024-01-03"),
            ("other", "2024-01-01"),
        ] {
            for site in ["a", "b"] {
                let key = format!("stream={stream}/date={date}/site={site}/part-1-1.parquet");
                sink.put(&key, vec![1]).await.unwrap();
            }
        }
        std::fs::create_dir_all(dir.path().join("stream=readings/notes")).unwrap();
        let removed = sink
            .expire(
                &layout::stream_prefix("", "readings"),
                date!(2024 - 01 - 03),
            )
            .await
            .unwrap();
        assert_eq!(removed, 4);
        let mut left: Vec<_> = std::fs::read_dir(dir.path().join("stream=readings"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, ["date=2024-01-03", "notes"]);
        assert!(dir.path().join("stream=other/date=2024-01-01").exists());
        let nothing = sink
            .expire(&layout::stream_prefix("", "missing"), date!(2024 - 01 - 03))
            .await
            .unwrap();
        assert_eq!(nothing, 0);
    }
}
