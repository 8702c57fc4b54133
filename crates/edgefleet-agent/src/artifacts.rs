//! The node's artifact cache: WebAssembly modules and image archives that workloads
//! reference as `name@sha256:<digest>`, downloaded from the server and kept on disk.
//!
//! Layout of the cache directory: `<digest>` is verified content, `<digest>.partial` a
//! download in progress. A download appends to its `.partial` file and, after an
//! interruption (a dropped connection, or an agent restart), resumes from the file's
//! length with an HTTP Range request. The SHA-256 of the whole file is checked before it is
//! renamed to `<digest>`; content that does not match is deleted, so a file named by a
//! digest always holds exactly that content. Cached content is handed out without asking
//! the server, so a node keeps running (and restarting) its workloads offline.
//!
//! Concurrent fetches of one digest share one download. Nothing but `gc` removes content:
//! it evicts the least recently used artifacts the caller does not name as kept until the
//! cache is within its size limit, and never one it was told to keep. An artifact larger
//! than the limit is still downloaded when a workload needs it (with a warning): the limit
//! bounds what is kept for later, it never refuses a workload.

use std::collections::{BTreeSet, HashMap};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use edgefleet_wire::workload::ArtifactRef;
use futures_util::future::{BoxFuture, FutureExt, Shared};
use reqwest::StatusCode;
use reqwest::header::{CONTENT_RANGE, ETAG, RANGE};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio::sync::watch;

use crate::channel::{CallError, ServerChannel, error_chain, send_raw};
use crate::fsutil::{self, FsError};
use crate::runtime::ArtifactSource;

/// A download that receives nothing for this long is abandoned (and resumed later).
const STALL_TIMEOUT: Duration = Duration::from_secs(60);
/// A download interrupted after making progress is resumed at once, up to this many times
/// in a row; after that (or an interruption without progress) the fetch fails and the
/// caller retries later.
const MAX_RESUMES: u32 = 10;
/// How much is buffered before it is written to the partial file.
const WRITE_BUFFER: usize = 1 << 20;
const PARTIAL_SUFFIX: &str = ".partial";

/// `(bytes so far, total if known)`.
type Progress = (u64, Option<u64>);
type DownloadResult = Result<PathBuf, String>;

#[derive(Clone)]
struct Download {
    result: Shared<BoxFuture<'static, DownloadResult>>,
    progress: watch::Receiver<Progress>,
}

/// The node's artifact cache; cheap to clone (clones share downloads).
#[derive(Clone)]
pub struct ArtifactCache {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ArtifactCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArtifactCache")
            .field("dir", &self.inner.dir)
            .field("max_bytes", &self.inner.max_bytes)
            .finish_non_exhaustive()
    }
}

struct Inner {
    dir: PathBuf,
    max_bytes: u64,
    channel: Arc<ServerChannel>,
    /// Downloads in progress, by digest.
    downloads: Mutex<HashMap<String, Download>>,
}

/// What `ArtifactCache::gc` did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Digests whose content was evicted, least recently used first.
    pub removed: Vec<String>,
    /// Digests whose partial download was removed (no longer wanted).
    pub removed_partial: Vec<String>,
    pub freed_bytes: u64,
    /// Bytes the cache holds afterwards (content and partial downloads).
    pub used_bytes: u64,
    /// Still over the limit: what is left is kept or being downloaded.
    pub over_limit: bool,
    /// Files that could not be read or removed, with why.
    pub errors: Vec<String>,
}

/// Why one download attempt failed.
struct Failure {
    message: String,
    /// Bytes arrived before it failed: resuming at once is worth it.
    progressed: bool,
}

impl Failure {
    fn fatal(message: String) -> Self {
        Self {
            message,
            progressed: false,
        }
    }
}

/// Hashing state carried from one attempt to the next within a fetch, so a resumed
/// download does not read back what it already hashed.
struct Resume {
    hasher: Sha256,
    length: u64,
}

impl ArtifactCache {
    /// The cache in `dir` (created if missing), keeping at most about `max_bytes` of
    /// artifacts no workload needs, downloading through `channel`.
    pub fn open(dir: &Path, max_bytes: u64, channel: Arc<ServerChannel>) -> Result<Self, FsError> {
        fsutil::ensure_writable_dir(dir, 0o700)?;
        Ok(Self {
            inner: Arc::new(Inner {
                dir: dir.to_owned(),
                max_bytes,
                channel,
                downloads: Mutex::new(HashMap::new()),
            }),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Where the verified content of `digest` is (or would be).
    pub fn content_path(&self, digest: &str) -> PathBuf {
        self.inner.content_path(digest)
    }

    /// The verified content of `artifact`: from the cache at once, else downloaded
    /// (resuming what an earlier attempt left) and checked. `progress(done, total)` is
    /// called as bytes arrive.
    pub async fn fetch(
        &self,
        artifact: &ArtifactRef,
        progress: &(dyn Fn(u64, Option<u64>) + Send + Sync),
    ) -> Result<PathBuf, String> {
        if !ArtifactRef::valid_name(&artifact.name) || !ArtifactRef::valid_digest(&artifact.digest)
        {
            return Err(format!(
                "artifact {artifact}: not a valid reference (expected NAME@sha256:<64 hex digits>)"
            ));
        }
        let path = self.inner.content_path(&artifact.digest);
        if tokio::fs::try_exists(&path).await.unwrap_or(false) {
            touch(&path);
            return Ok(path);
        }
        let download = self.inner.download(artifact);
        let mut result = download.result;
        let mut updates = download.progress;
        loop {
            tokio::select! {
                outcome = &mut result => return outcome,
                changed = updates.changed() => {
                    if changed.is_err() {
                        return result.await;
                    }
                    let (done, total) = *updates.borrow_and_update();
                    progress(done, total);
                }
            }
        }
    }

    /// Evicts least-recently-used content not in `keep` (digests) until the cache holds at
    /// most its limit, and removes partial downloads of artifacts not in `keep`. Never
    /// touches what is kept or what a fetch is waiting for. Blocking file-system work:
    /// call it from a blocking context (`spawn_blocking`) in async code.
    pub fn gc(&self, keep: &BTreeSet<String>) -> GcReport {
        self.inner.collect(keep)
    }
}

impl ArtifactSource for ArtifactCache {
    fn fetch<'a>(
        &'a self,
        artifact: &'a ArtifactRef,
        progress: &'a (dyn Fn(u64, Option<u64>) + Send + Sync),
    ) -> BoxFuture<'a, Result<PathBuf, String>> {
        ArtifactCache::fetch(self, artifact, progress).boxed()
    }
}

/// Marks content as just used (its modification time orders evictions). Best effort: a
/// failure only makes the artifact look older than it is.
fn touch(path: &Path) {
    let result = std::fs::File::open(path).and_then(|file| file.set_modified(SystemTime::now()));
    if let Err(error) = result {
        tracing::debug!(path = %path.display(), %error, "marking an artifact as used failed");
    }
}

impl Inner {
    fn content_path(&self, digest: &str) -> PathBuf {
        self.dir.join(digest)
    }

    fn partial_path(&self, digest: &str) -> PathBuf {
        self.dir.join(format!("{digest}{PARTIAL_SUFFIX}"))
    }

    fn downloads(&self) -> MutexGuard<'_, HashMap<String, Download>> {
        // Only handles to downloads live here; a poisoned map is still a valid map.
        self.downloads
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The download of `artifact`'s digest: the one in progress, or a new one.
    fn download(self: &Arc<Self>, artifact: &ArtifactRef) -> Download {
        let mut downloads = self.downloads();
        if let Some(download) = downloads.get(&artifact.digest) {
            return download.clone();
        }
        let (sender, receiver) = watch::channel((0, None));
        let inner = Arc::clone(self);
        let wanted = artifact.clone();
        let result = async move {
            let result = inner.download_with_resumes(&wanted, &sender).await;
            inner.downloads().remove(&wanted.digest);
            result
        }
        .boxed()
        .shared();
        let download = Download {
            result,
            progress: receiver,
        };
        downloads.insert(artifact.digest.clone(), download.clone());
        download
    }

    async fn download_with_resumes(
        &self,
        artifact: &ArtifactRef,
        progress: &watch::Sender<Progress>,
    ) -> DownloadResult {
        let mut resume = None;
        let mut resumes = 0;
        loop {
            match self.attempt(artifact, progress, &mut resume).await {
                Ok(path) => return Ok(path),
                Err(failure) if failure.progressed && resumes < MAX_RESUMES => {
                    resumes += 1;
                    tracing::warn!(%artifact, error = %failure.message, resumes, "artifact download interrupted; resuming");
                }
                Err(failure) => return Err(failure.message),
            }
        }
    }

    /// One request: resumes the partial file, appends what the server sends, and when it
    /// is complete verifies it and moves it into place.
    async fn attempt(
        &self,
        artifact: &ArtifactRef,
        progress: &watch::Sender<Progress>,
        resume: &mut Option<Resume>,
    ) -> Result<PathBuf, Failure> {
        let final_path = self.content_path(&artifact.digest);
        if tokio::fs::try_exists(&final_path).await.unwrap_or(false) {
            return Ok(final_path);
        }
        let partial = self.partial_path(&artifact.digest);
        let (mut hasher, mut length) = match resume.take() {
            Some(state) if file_length(&partial).await == Some(state.length) => {
                (state.hasher, state.length)
            }
            _ => hash_file(&partial)
                .await
                .map_err(|error| Failure::fatal(format!("artifact {artifact}: {error}")))?,
        };
        let channel = &self.channel;
        let mut request = channel.client().get(channel.url(&format!(
            "/v1/agent/artifacts/{}@sha256:{}",
            artifact.name, artifact.digest
        )));
        if length > 0 {
            request = request.header(RANGE, format!("bytes={length}-"));
        }
        let response = match send_raw(request).await {
            Ok(response) => response,
            Err(CallError::Status { status, .. })
                if status == StatusCode::RANGE_NOT_SATISFIABLE && length > 0 =>
            {
                // The partial file already holds everything the server has: check it.
                return self.finish(artifact, hasher, length, &partial).await;
            }
            Err(CallError::Status { status, message }) if status == StatusCode::NOT_FOUND => {
                return Err(Failure::fatal(format!(
                    "artifact {artifact}: the server does not have it ({message}); push it with \
                     `edgefleet artifact push` or fix the reference"
                )));
            }
            Err(error) => {
                return Err(Failure::fatal(format!(
                    "artifact {artifact}: downloading from the server failed: {error}"
                )));
            }
        };
        if let Some(etag) = response.headers().get(ETAG) {
            let expected = format!("\"{}\"", artifact.digest);
            if etag.as_bytes() != expected.as_bytes() {
                return Err(Failure::fatal(format!(
                    "artifact {artifact}: the server sent content with ETag {etag:?}, not the digest asked for"
                )));
            }
        }
        let total = match response.status() {
            StatusCode::PARTIAL_CONTENT => {
                let range = response
                    .headers()
                    .get(CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(parse_content_range);
                match range {
                    Some((start, total)) if start == length => total,
                    _ => {
                        // Not the range asked for: start over rather than splice.
                        remove_partial(&partial).await;
                        return Err(Failure {
                            message: format!(
                                "artifact {artifact}: the server answered a resume from byte {length} \
                                 with Content-Range {:?}; starting over",
                                response.headers().get(CONTENT_RANGE)
                            ),
                            progressed: true,
                        });
                    }
                }
            }
            _ => {
                // The whole content: whatever the partial file held goes.
                if length > 0 {
                    tracing::debug!(%artifact, length, "the server sent the whole artifact; restarting the partial download");
                }
                hasher = Sha256::new();
                length = 0;
                truncate(&partial)
                    .await
                    .map_err(|error| Failure::fatal(format!("artifact {artifact}: {error}")))?;
                response.content_length()
            }
        };
        if let Some(total) = total
            && total > self.max_bytes
        {
            tracing::warn!(%artifact, size = total, cache_max_bytes = self.max_bytes, "artifact is larger than the artifact cache limit; downloading it anyway because a workload needs it");
        }
        let file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&partial)
            .await
            .map_err(|error| {
                Failure::fatal(format!(
                    "artifact {artifact}: opening {}: {error}",
                    partial.display()
                ))
            })?;
        let mut writer = BufWriter::with_capacity(WRITE_BUFFER, file);
        let _ = progress.send((length, total));
        let mut response = response;
        let mut received = 0u64;
        let outcome = loop {
            let chunk = match tokio::time::timeout(STALL_TIMEOUT, response.chunk()).await {
                Err(_) => {
                    break Err(format!(
                        "the download stalled for {}s after {}",
                        STALL_TIMEOUT.as_secs(),
                        describe(length, total)
                    ));
                }
                Ok(Err(error)) => {
                    break Err(format!(
                        "the download was interrupted after {}: {}",
                        describe(length, total),
                        error_chain(&error)
                    ));
                }
                Ok(Ok(None)) => break Ok(()),
                Ok(Ok(Some(chunk))) => chunk,
            };
            if let Err(error) = writer.write_all(&chunk).await {
                return Err(Failure::fatal(format!(
                    "artifact {artifact}: writing {}: {error}",
                    partial.display()
                )));
            }
            hasher.update(&chunk);
            length += chunk.len() as u64;
            received += chunk.len() as u64;
            let _ = progress.send((length, total));
        };
        // What arrived is good either way: keep it for the resume.
        let flushed = async {
            writer.flush().await?;
            writer.into_inner().sync_all().await
        }
        .await;
        if let Err(error) = flushed {
            return Err(Failure::fatal(format!(
                "artifact {artifact}: writing {}: {error}",
                partial.display()
            )));
        }
        if let Err(message) = outcome {
            *resume = Some(Resume { hasher, length });
            return Err(Failure {
                message: format!("artifact {artifact}: {message}; will resume"),
                progressed: received > 0,
            });
        }
        if let Some(total) = total
            && length < total
        {
            *resume = Some(Resume { hasher, length });
            return Err(Failure {
                message: format!(
                    "artifact {artifact}: the download ended after {}; will resume",
                    describe(length, Some(total))
                ),
                progressed: received > 0,
            });
        }
        self.finish(artifact, hasher, length, &partial).await
    }

    /// Verifies a complete partial file and moves it into place, or deletes it.
    async fn finish(
        &self,
        artifact: &ArtifactRef,
        hasher: Sha256,
        length: u64,
        partial: &Path,
    ) -> Result<PathBuf, Failure> {
        let actual = hex::encode(hasher.finalize());
        if actual != artifact.digest {
            remove_partial(partial).await;
            return Err(Failure::fatal(format!(
                "artifact {artifact}: downloaded content has sha256 {actual}; deleted, will retry"
            )));
        }
        let path = self.content_path(&artifact.digest);
        let moved = async {
            tokio::fs::rename(partial, &path).await?;
            tokio::fs::File::open(&self.dir).await?.sync_all().await
        }
        .await;
        moved.map_err(|error| {
            Failure::fatal(format!(
                "artifact {artifact}: moving {} into place: {error}",
                partial.display()
            ))
        })?;
        tracing::info!(%artifact, size = length, "artifact downloaded and verified");
        touch(&path);
        Ok(path)
    }

    fn collect(&self, keep: &BTreeSet<String>) -> GcReport {
        let mut report = GcReport::default();
        let downloading: BTreeSet<String> = {
            let mut downloads = self.downloads();
            // A download nobody waits for any more (its fetches were dropped), of something
            // no longer wanted, is abandoned; its partial file goes below.
            downloads.retain(|digest, download| {
                keep.contains(digest) || download.result.strong_count().is_some_and(|n| n > 1)
            });
            downloads.keys().cloned().collect()
        };
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(error) => {
                report
                    .errors
                    .push(format!("reading {}: {error}", self.dir.display()));
                return report;
            }
        };
        let mut evictable = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let (digest, is_partial) = match name.strip_suffix(PARTIAL_SUFFIX) {
                Some(digest) => (digest.to_owned(), true),
                None => (name.clone(), false),
            };
            if !ArtifactRef::valid_digest(&digest) {
                continue;
            }
            let metadata = match entry.metadata() {
                Ok(metadata) => metadata,
                Err(error) => {
                    report
                        .errors
                        .push(format!("reading {}: {error}", entry.path().display()));
                    continue;
                }
            };
            let wanted = keep.contains(&digest) || downloading.contains(&digest);
            if is_partial && !wanted {
                match std::fs::remove_file(entry.path()) {
                    Ok(()) => {
                        report.freed_bytes += metadata.len();
                        report.removed_partial.push(digest);
                    }
                    Err(error) => {
                        report.used_bytes += metadata.len();
                        report
                            .errors
                            .push(format!("removing {}: {error}", entry.path().display()));
                    }
                }
                continue;
            }
            report.used_bytes += metadata.len();
            if !is_partial && !wanted {
                let used = metadata.modified().unwrap_or(SystemTime::UNIX_EPOCH);
                evictable.push((used, digest, metadata.len()));
            }
        }
        evictable.sort();
        for (_, digest, size) in evictable {
            if report.used_bytes <= self.max_bytes {
                break;
            }
            let path = self.content_path(&digest);
            match std::fs::remove_file(&path) {
                Ok(()) => {
                    report.used_bytes -= size;
                    report.freed_bytes += size;
                    report.removed.push(digest);
                }
                Err(error) => report
                    .errors
                    .push(format!("removing {}: {error}", path.display())),
            }
        }
        report.over_limit = report.used_bytes > self.max_bytes;
        if !report.removed.is_empty() || !report.removed_partial.is_empty() {
            if let Err(error) = fsutil::sync_dir(&self.dir) {
                report.errors.push(error.to_string());
            }
            tracing::info!(
                n_removed = report.removed.len(),
                n_partial_removed = report.removed_partial.len(),
                freed_bytes = report.freed_bytes,
                used_bytes = report.used_bytes,
                "artifact cache trimmed"
            );
        }
        if report.over_limit {
            tracing::warn!(
                used_bytes = report.used_bytes,
                max_bytes = self.max_bytes,
                "the artifacts the node needs are larger than the artifact cache limit; keeping them"
            );
        }
        for error in &report.errors {
            tracing::warn!(%error, "artifact cache cleanup");
        }
        report
    }
}

/// `N bytes` or `N of M bytes`.
fn describe(done: u64, total: Option<u64>) -> String {
    match total {
        Some(total) => format!("{done} of {total} bytes"),
        None => format!("{done} bytes"),
    }
}

/// `bytes START-END/TOTAL` → (START, TOTAL if not `*`).
fn parse_content_range(value: &str) -> Option<(u64, Option<u64>)> {
    let rest = value.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (start, _) = range.split_once('-')?;
    let total = match total.trim() {
        "*" => None,
        number => Some(number.parse().ok()?),
    };
    Some((start.trim().parse().ok()?, total))
}

async fn file_length(path: &Path) -> Option<u64> {
    tokio::fs::metadata(path).await.ok().map(|m| m.len())
}

/// The SHA-256 state and length of what a file holds (nothing when it is missing).
async fn hash_file(path: &Path) -> Result<(Sha256, u64), FsError> {
    let mut hasher = Sha256::new();
    let mut file = match tokio::fs::File::open(path).await {
        Ok(file) => file,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok((hasher, 0)),
        Err(error) => return Err(FsError::new("opening", path, error)),
    };
    let mut buffer = vec![0u8; 256 * 1024];
    let mut length = 0u64;
    loop {
        let n = file
            .read(&mut buffer)
            .await
            .map_err(|e| FsError::new("reading", path, e))?;
        if n == 0 {
            return Ok((hasher, length));
        }
        hasher.update(&buffer[..n]);
        length += n as u64;
    }
}

async fn truncate(path: &Path) -> Result<(), FsError> {
    match tokio::fs::OpenOptions::new().write(true).open(path).await {
        Ok(file) => file
            .set_len(0)
            .await
            .map_err(|e| FsError::new("truncating", path, e)),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(FsError::new("opening", path, error)),
    }
}

async fn remove_partial(path: &Path) {
    if let Err(error) = tokio::fs::remove_file(path).await
        && error.kind() != io::ErrorKind::NotFound
    {
        tracing::warn!(path = %path.display(), %error, "removing a partial artifact download failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_ranges_parse() {
        assert_eq!(
            parse_content_range("bytes 100-199/200"),
            Some((100, Some(200)))
        );
        assert_eq!(parse_content_range("bytes 0-0/*"), Some((0, None)));
        assert_eq!(parse_content_range("bytes */200"), None);
        assert_eq!(parse_content_range("items 1-2/3"), None);
    }
}
