//! Artifact contents on the server's disk: one file per SHA-256 in
//! `<data dir>/artifacts/sha256/`, written by streaming an upload to a temporary file in
//! the same directory while hashing it, then fsync and rename. A content file therefore
//! always holds exactly the bytes its name hashes to; an upload that fails, is refused or
//! is interrupted leaves nothing behind (and one a crash interrupted is deleted at the next
//! start, see `datadir::prepare_artifacts_dir`). Contents are served from disk in chunks,
//! never read whole into memory.

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::{Body, Bytes, HttpBody};
use hyper::body::{Frame, SizeHint};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncWriteExt, BufWriter, ReadBuf};
use tokio::sync::{Mutex, MutexGuard};

use crate::datadir::ARTIFACT_UPLOAD_PREFIX;
use crate::extract::{drain, next_chunk};

/// How much of an upload is buffered before it is written to the file.
const WRITE_BUFFER: usize = 1 << 20;
/// The size of the chunks a download is sent in.
const READ_CHUNK: usize = 64 * 1024;
/// The artifact store's files and the lock that orders changes to what they may be used for.
pub struct Blobs {
    dir: PathBuf,
    max_bytes: u64,
    /// Held while storing a version, deleting versions, and applying deployments (which
    /// check that what they reference exists): so a deletion never races an apply that
    /// references the artifact, nor removes content an upload just stored.
    references: Mutex<()>,
}

/// Why an upload was not stored.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error("the upload is larger than the limit of {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("the upload was interrupted after {received} bytes: {cause}")]
    Interrupted { received: u64, cause: String },
    #[error("the upload ended after {received} bytes, but its Content-Length was {declared}")]
    Truncated { received: u64, declared: u64 },
    #[error("the server's disk is full ({received} bytes were written before it ran out)")]
    DiskFull { received: u64 },
    #[error("{action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// A received upload in its temporary file, hashed and flushed to disk. Dropping it
/// without `Blobs::commit` deletes the file.
#[derive(Debug)]
pub struct Upload {
    /// SHA-256 of the content, 64 lowercase hex digits.
    pub digest: String,
    pub size: u64,
    temp: TempFile,
}

#[derive(Debug)]
struct TempFile {
    path: PathBuf,
    keep: bool,
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn is_disk_full(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    )
}

impl Blobs {
    /// The store of `dir` (which `datadir::prepare_artifacts_dir` made), accepting uploads
    /// of at most `max_bytes`.
    pub fn new(dir: PathBuf, max_bytes: u64) -> Self {
        Self {
            dir,
            max_bytes,
            references: Mutex::new(()),
        }
    }

    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// Orders the changes described at `references`.
    pub async fn lock(&self) -> MutexGuard<'_, ()> {
        self.references.lock().await
    }

    /// The content file of `digest` (which callers have validated as 64 hex digits).
    pub fn path(&self, digest: &str) -> PathBuf {
        self.dir.join(digest)
    }

    /// Streams `body` to a temporary file while hashing it, and flushes it to disk.
    /// `declared` is the request's Content-Length: a body announced larger than the limit
    /// is refused before anything is written.
    pub async fn receive(
        &self,
        mut body: Body,
        declared: Option<u64>,
    ) -> Result<Upload, UploadError> {
        if declared.is_some_and(|length| length > self.max_bytes) {
            drain(body).await;
            return Err(UploadError::TooLarge {
                limit: self.max_bytes,
            });
        }
        let suffix: u64 = rand::random();
        let temp = TempFile {
            path: self
                .dir
                .join(format!("{ARTIFACT_UPLOAD_PREFIX}{suffix:016x}")),
            keep: false,
        };
        let io_error = |action, source| UploadError::Io {
            action,
            path: temp.path.clone(),
            source,
        };
        let file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp.path)
            .await
            .map_err(|e| io_error("creating", e))?;
        let mut writer = BufWriter::with_capacity(WRITE_BUFFER, file);
        let mut hasher = Sha256::new();
        let mut received: u64 = 0;
        let write_failed = |received, error: io::Error| {
            if is_disk_full(&error) {
                UploadError::DiskFull { received }
            } else {
                io_error("writing", error)
            }
        };
        while let Some(chunk) = next_chunk(&mut body).await {
            let chunk = chunk.map_err(|e| UploadError::Interrupted {
                received,
                cause: e.to_string(),
            })?;
            received = received.saturating_add(chunk.len() as u64);
            if received > self.max_bytes {
                drain(body).await;
                return Err(UploadError::TooLarge {
                    limit: self.max_bytes,
                });
            }
            hasher.update(&chunk);
            if let Err(error) = writer.write_all(&chunk).await {
                let refused = write_failed(received, error);
                drain(body).await;
                return Err(refused);
            }
        }
        if let Some(declared) = declared
            && declared != received
        {
            return Err(UploadError::Truncated { received, declared });
        }
        writer
            .flush()
            .await
            .map_err(|e| write_failed(received, e))?;
        writer
            .into_inner()
            .sync_all()
            .await
            .map_err(|e| write_failed(received, e))?;
        Ok(Upload {
            digest: hex::encode(hasher.finalize()),
            size: received,
            temp,
        })
    }

    /// Renames a received upload into place as the content of its digest (replacing a
    /// file of that name, which can only hold the same bytes or damaged ones), durably.
    /// The caller holds `lock`.
    pub async fn commit(&self, mut upload: Upload) -> io::Result<PathBuf> {
        let path = self.path(&upload.digest);
        tokio::fs::rename(&upload.temp.path, &path).await?;
        upload.temp.keep = true;
        sync_dir(&self.dir).await?;
        Ok(path)
    }

    /// Deletes the content of `digest` (nothing if it is not there). The caller holds
    /// `lock` and has checked that no artifact version has this content any more.
    pub async fn remove(&self, digest: &str) -> io::Result<()> {
        match tokio::fs::remove_file(self.path(digest)).await {
            Ok(()) => sync_dir(&self.dir).await,
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(error) => Err(error),
        }
    }

    /// The content of `digest` and its length.
    pub async fn open(&self, digest: &str) -> io::Result<(tokio::fs::File, u64)> {
        let file = tokio::fs::File::open(self.path(digest)).await?;
        let length = file.metadata().await?.len();
        Ok((file, length))
    }
}

/// Makes renames and removals in `dir` durable.
async fn sync_dir(dir: &Path) -> io::Result<()> {
    tokio::fs::File::open(dir).await?.sync_all().await
}

/// What a `Range` header asks of content of a given length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeRequest {
    /// No range, or one this server ignores (other units, several ranges, malformed):
    /// the whole content, 200.
    Full,
    /// Bytes `start..=end`, 206.
    Partial { start: u64, end: u64 },
    /// A range that starts past the end, 416.
    Unsatisfiable,
}

/// Interprets a `Range` header (RFC 9110 section 14.2) for content of `length` bytes.
/// Single ranges only: `bytes=N-`, `bytes=N-M` and `bytes=-SUFFIX`.
pub fn parse_range(header: Option<&str>, length: u64) -> RangeRequest {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return RangeRequest::Full;
    };
    if spec.contains(',') {
        return RangeRequest::Full;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return RangeRequest::Full;
    };
    let number = |text: &str| text.trim().parse::<u64>().ok();
    match (first.trim().is_empty(), last.trim().is_empty()) {
        // bytes=-SUFFIX: the last SUFFIX bytes.
        (true, false) => match number(last) {
            Some(0) => RangeRequest::Unsatisfiable,
            Some(_) if length == 0 => RangeRequest::Unsatisfiable,
            Some(suffix) => RangeRequest::Partial {
                start: length - suffix.min(length),
                end: length - 1,
            },
            None => RangeRequest::Full,
        },
        // bytes=N-: from N to the end.
        (false, true) => match number(first) {
            Some(start) if start >= length => RangeRequest::Unsatisfiable,
            Some(start) => RangeRequest::Partial {
                start,
                end: length - 1,
            },
            None => RangeRequest::Full,
        },
        (false, false) => match (number(first), number(last)) {
            (Some(start), Some(end)) if end < start => RangeRequest::Full,
            (Some(start), Some(_)) if start >= length => RangeRequest::Unsatisfiable,
            (Some(start), Some(end)) => RangeRequest::Partial {
                start,
                end: end.min(length - 1),
            },
            _ => RangeRequest::Full,
        },
        (true, true) => RangeRequest::Full,
    }
}

/// `length` bytes of an open file from its current position, as a response body.
pub struct FileBody {
    file: tokio::fs::File,
    remaining: u64,
    buffer: Vec<u8>,
}

impl FileBody {
    /// The body of bytes `start..start + length` of `file`.
    pub async fn new(mut file: tokio::fs::File, start: u64, length: u64) -> io::Result<Self> {
        if start > 0 {
            use tokio::io::AsyncSeekExt;
            file.seek(io::SeekFrom::Start(start)).await?;
        }
        Ok(Self {
            file,
            remaining: length,
            buffer: Vec::new(),
        })
    }
}

impl HttpBody for FileBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        if this.remaining == 0 {
            return Poll::Ready(None);
        }
        let wanted = usize::try_from(this.remaining).map_or(READ_CHUNK, |r| r.min(READ_CHUNK));
        this.buffer.resize(wanted, 0);
        let mut read = ReadBuf::new(&mut this.buffer);
        match Pin::new(&mut this.file).poll_read(cx, &mut read) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(error)) => Poll::Ready(Some(Err(error))),
            Poll::Ready(Ok(())) => {
                let n = read.filled().len();
                if n == 0 {
                    // The file shrank under us: end the response early rather than lie.
                    return Poll::Ready(Some(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("artifact file ended {} bytes early", this.remaining),
                    ))));
                }
                this.remaining -= n as u64;
                let mut chunk = std::mem::take(&mut this.buffer);
                chunk.truncate(n);
                Poll::Ready(Some(Ok(Frame::data(Bytes::from(chunk)))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        use RangeRequest::{Full, Partial, Unsatisfiable};
        let check = |header: Option<&str>, length: u64, expected: RangeRequest| {
            assert_eq!(
                parse_range(header, length),
                expected,
                "{header:?} of {length}"
            );
        };
        check(None, 10, Full);
        check(Some("bytes=0-"), 10, Partial { start: 0, end: 9 });
        check(Some("bytes=4-"), 10, Partial { start: 4, end: 9 });
        check(Some("bytes=9-"), 10, Partial { start: 9, end: 9 });
        check(Some("bytes=10-"), 10, Unsatisfiable);
        check(Some("bytes=2-5"), 10, Partial { start: 2, end: 5 });
        check(Some("bytes=2-500"), 10, Partial { start: 2, end: 9 });
        check(Some("bytes=12-15"), 10, Unsatisfiable);
        check(Some("bytes=-3"), 10, Partial { start: 7, end: 9 });
        check(Some("bytes=-30"), 10, Partial { start: 0, end: 9 });
        check(Some("bytes=-0"), 10, Unsatisfiable);
        check(Some("bytes=0-"), 0, Unsatisfiable);
        // Ignored: invalid, several ranges, other units.
        check(Some("bytes=5-2"), 10, Full);
        check(Some("bytes=0-1,4-5"), 10, Full);
        check(Some("items=0-1"), 10, Full);
        check(Some("bytes=x-"), 10, Full);
        check(Some("bytes=-"), 10, Full);
    }

    #[tokio::test]
    async fn uploads_are_hashed_limited_and_cleaned_up() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = Blobs::new(dir.path().to_owned(), 10);
        let files = || std::fs::read_dir(dir.path()).unwrap().count();

        let upload = blobs.receive(Body::from("hello"), Some(5)).await.unwrap();
        assert_eq!(
            upload.digest,
            "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        assert_eq!(upload.size, 5);
        assert_eq!(files(), 1);
        drop(upload);
        assert_eq!(files(), 0, "an upload dropped uncommitted leaves nothing");

        let upload = blobs.receive(Body::from("hello"), None).await.unwrap();
        let path = blobs.commit(upload).await.unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"hello");
        let (_, length) = blobs
            .open("2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824")
            .await
            .unwrap();
        assert_eq!(length, 5);

        for (body, declared) in [("0123456789a", None), ("0123", Some(11))] {
            let error = blobs.receive(Body::from(body), declared).await.unwrap_err();
            assert!(
                matches!(error, UploadError::TooLarge { limit: 10 }),
                "{error}"
            );
        }
        let error = blobs
            .receive(Body::from("0123"), Some(5))
            .await
            .unwrap_err();
        assert!(
            matches!(
                error,
                UploadError::Truncated {
                    received: 4,
                    declared: 5
                }
            ),
            "{error}"
        );
        assert_eq!(files(), 1, "only the committed content is left");
    }
}
