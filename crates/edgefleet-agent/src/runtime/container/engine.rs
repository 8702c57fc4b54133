//! A small Docker Engine API client over the engine's unix socket.
//!
//! It speaks the subset of API version 1.41 that the container runtime uses, which both
//! `dockerd` (20.10 and later) and Podman's Docker-compatible service (4 and later)
//! accept. One HTTP/1.1 connection per request: the engine is local, connecting costs
//! microseconds, and long streams (pull progress, logs, waits) never hold up other calls.
//!
//! Requests and answers are typed with only the fields edgefleet reads or sets; unknown
//! fields are ignored, so newer engines keep working. Every error says which request
//! failed and carries the engine's own message.

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;
use tokio::net::UnixStream;
use tracing::debug;

/// The API version edgefleet speaks, in every request path.
pub const API_VERSION: &str = "1.41";
/// Connecting to a local socket takes microseconds; longer means the engine is stuck.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A request that is not a stream (create, start, inspect ...) gets this long for its
/// whole answer. Generous: engines on slow SD cards take seconds to create a container.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
/// The largest non-streamed answer read (a container list on a busy engine is well under).
const MAX_ANSWER_BYTES: usize = 32 << 20;
/// The largest error answer read.
const MAX_ERROR_BYTES: usize = 64 << 10;
/// Chunk size for request bodies read from files (image archives).
const UPLOAD_CHUNK_BYTES: usize = 256 << 10;

/// A request the engine did not carry out.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("cannot connect to the container engine at {}: {source}", socket.display())]
    Connect {
        socket: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the container engine at {} did not answer {request} within {}s", socket.display(), timeout.as_secs())]
    Timeout {
        socket: PathBuf,
        request: String,
        timeout: Duration,
    },
    #[error("talking to the container engine ({request}): {source}")]
    Http {
        request: String,
        #[source]
        source: hyper::Error,
    },
    /// The engine answered with an error status (or an error inside a stream).
    #[error("engine said {}{message} ({request})", status_prefix(*status))]
    Refused {
        request: String,
        status: Option<StatusCode>,
        message: String,
    },
    #[error("unexpected answer to {request}: {reason}")]
    Decode { request: String, reason: String },
    #[error("reading {}: {source}", path.display())]
    Upload {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn status_prefix(status: Option<StatusCode>) -> String {
    status
        .map(|s| format!("{} ", s.as_u16()))
        .unwrap_or_default()
}

impl EngineError {
    /// The HTTP status the engine answered with, if it answered.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            Self::Refused { status, .. } => *status,
            _ => None,
        }
    }

    /// Whether the engine said the object does not exist (404).
    pub fn is_not_found(&self) -> bool {
        self.status() == Some(StatusCode::NOT_FOUND)
    }

    /// Whether the engine could not be reached at all (as opposed to refusing a request).
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            Self::Connect { .. } | Self::Timeout { .. } | Self::Http { .. }
        )
    }
}

/// A request body.
type Body = BoxBody<Bytes, io::Error>;

/// Which engine answers on the socket (some answers differ in details).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineKind {
    Docker,
    Podman,
}

impl fmt::Display for EngineKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Docker => "Docker",
            Self::Podman => "Podman",
        })
    }
}

/// A container engine on a unix socket. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Engine {
    socket: PathBuf,
    kind: EngineKind,
    version: String,
}

/// `GET /version`, the fields used.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct VersionAnswer {
    #[serde(default)]
    version: String,
    #[serde(default)]
    api_version: String,
    #[serde(default, rename = "MinAPIVersion")]
    min_api_version: String,
    #[serde(default)]
    components: Vec<Component>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Component {
    #[serde(default)]
    name: String,
}

impl Engine {
    /// Connects to the engine on `socket`, checks that it speaks `API_VERSION`, and
    /// learns which engine it is.
    pub async fn connect(socket: &Path) -> Result<Self, EngineError> {
        // Unversioned, so that an engine too new or too old still answers and the error
        // can say which versions it speaks.
        let answer: VersionAnswer = get_json_at(socket, "/version").await?;
        let request = format!("GET {}/version", socket.display());
        let speaks = |v: &str| parse_api_version(v);
        let ours = parse_api_version(API_VERSION);
        let (Some(max), Some(ours)) = (speaks(&answer.api_version), ours) else {
            return Err(EngineError::Decode {
                request,
                reason: format!("API version {:?} is not a version", answer.api_version),
            });
        };
        let min = speaks(&answer.min_api_version).unwrap_or(max);
        if ours > max || ours < min {
            return Err(EngineError::Refused {
                request,
                status: None,
                message: format!(
                    "it speaks API versions {} to {}; edgefleet needs {API_VERSION} (Docker 20.10 or later, Podman 4 or later)",
                    answer.min_api_version, answer.api_version
                ),
            });
        }
        let kind = if answer
            .components
            .iter()
            .any(|c| c.name.to_ascii_lowercase().contains("podman"))
        {
            EngineKind::Podman
        } else {
            EngineKind::Docker
        };
        Ok(Self {
            socket: socket.to_owned(),
            kind,
            version: answer.version,
        })
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub fn kind(&self) -> EngineKind {
        self.kind
    }

    pub fn version(&self) -> &str {
        &self.version
    }

    fn path(path_and_query: &str) -> String {
        format!("/v{API_VERSION}{path_and_query}")
    }

    /// How errors name a request: `POST /v1.41/images/create?...`.
    pub fn request_name(method: &Method, path_and_query: &str) -> String {
        format!("{method} {}", Self::path(path_and_query))
    }

    /// Sends a request and returns the answer's head and streaming body, or the engine's
    /// error. Only connecting and the head are bounded in time here.
    pub async fn send(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<(Body, &'static str)>,
    ) -> Result<Response<Incoming>, EngineError> {
        send_at(&self.socket, method, &Self::path(path_and_query), body).await
    }

    async fn send_timed(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<(Body, &'static str)>,
    ) -> Result<(StatusCode, Bytes), EngineError> {
        let path = Self::path(path_and_query);
        let request = format!("{method} {path}");
        let exchange = async {
            let response = send_at(&self.socket, method, &path, body).await?;
            let status = response.status();
            let bytes = read_all(response.into_body(), MAX_ANSWER_BYTES, &request).await?;
            Ok((status, bytes))
        };
        tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| EngineError::Timeout {
                socket: self.socket.clone(),
                request,
                timeout: REQUEST_TIMEOUT,
            })?
    }

    /// `GET` answering JSON.
    pub async fn get<T: DeserializeOwned>(&self, path_and_query: &str) -> Result<T, EngineError> {
        let (_, bytes) = self.send_timed(Method::GET, path_and_query, None).await?;
        decode(&bytes, &format!("GET {}", Self::path(path_and_query)))
    }

    /// `POST` with a JSON body, answering JSON.
    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path_and_query: &str,
        body: &B,
    ) -> Result<T, EngineError> {
        let request = format!("POST {}", Self::path(path_and_query));
        let json = serde_json::to_vec(body).map_err(|e| EngineError::Decode {
            request: request.clone(),
            reason: format!("encoding the request: {e}"),
        })?;
        let (_, bytes) = self
            .send_timed(
                Method::POST,
                path_and_query,
                Some((full(json), "application/json")),
            )
            .await?;
        decode(&bytes, &request)
    }

    /// `POST` without a body, whose answer (if any) does not matter.
    pub async fn post_empty(&self, path_and_query: &str) -> Result<StatusCode, EngineError> {
        let (status, _) = self.send_timed(Method::POST, path_and_query, None).await?;
        Ok(status)
    }

    /// `DELETE`, whose answer does not matter.
    pub async fn delete(&self, path_and_query: &str) -> Result<StatusCode, EngineError> {
        let (status, _) = self
            .send_timed(Method::DELETE, path_and_query, None)
            .await?;
        Ok(status)
    }

    /// A request that takes as long as it takes (a wait for a container to exit),
    /// answering JSON.
    pub async fn call_untimed<T: DeserializeOwned>(
        &self,
        method: Method,
        path_and_query: &str,
    ) -> Result<T, EngineError> {
        let request = format!("{method} {}", Self::path(path_and_query));
        let response = self.send(method, path_and_query, None).await?;
        let bytes = read_all(response.into_body(), MAX_ANSWER_BYTES, &request).await?;
        decode(&bytes, &request)
    }

    /// `POST` with a JSON body, answering a stream (exec output).
    pub async fn post_streaming<B: Serialize>(
        &self,
        path_and_query: &str,
        body: &B,
    ) -> Result<Response<Incoming>, EngineError> {
        let json = serde_json::to_vec(body).map_err(|e| EngineError::Decode {
            request: format!("POST {}", Self::path(path_and_query)),
            reason: format!("encoding the request: {e}"),
        })?;
        self.send(
            Method::POST,
            path_and_query,
            Some((full(json), "application/json")),
        )
        .await
    }

    /// `POST` with `file` as the body, answering a stream (image loads).
    pub async fn post_file(
        &self,
        path_and_query: &str,
        file: &Path,
        content_type: &'static str,
    ) -> Result<Response<Incoming>, EngineError> {
        let opened = tokio::fs::File::open(file)
            .await
            .map_err(|source| EngineError::Upload {
                path: file.to_owned(),
                source,
            })?;
        let path = file.to_owned();
        let chunks = futures_util::stream::unfold(Some(opened), move |state| {
            let path = path.clone();
            async move {
                let mut file = state?;
                let mut buffer = BytesMut::zeroed(UPLOAD_CHUNK_BYTES);
                match file.read(&mut buffer).await {
                    Ok(0) => None,
                    Ok(n) => {
                        buffer.truncate(n);
                        Some((Ok(Frame::data(buffer.freeze())), Some(file)))
                    }
                    Err(error) => Some((
                        Err(io::Error::new(
                            error.kind(),
                            format!("reading {}: {error}", path.display()),
                        )),
                        None,
                    )),
                }
            }
        });
        let body = BodyExt::boxed(StreamBody::new(chunks));
        self.send(Method::POST, path_and_query, Some((body, content_type)))
            .await
    }
}

/// `"1.41"` as `(1, 41)`.
fn parse_api_version(version: &str) -> Option<(u32, u32)> {
    let (major, minor) = version.trim().split_once('.')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

fn full(bytes: Vec<u8>) -> Body {
    Full::new(Bytes::from(bytes))
        .map_err(|never| match never {})
        .boxed()
}

fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed()
}

async fn get_json_at<T: DeserializeOwned>(socket: &Path, path: &str) -> Result<T, EngineError> {
    let request = format!("GET {path}");
    let exchange = async {
        let response = send_at(socket, Method::GET, path, None).await?;
        let bytes = read_all(response.into_body(), MAX_ANSWER_BYTES, &request).await?;
        decode(&bytes, &request)
    };
    tokio::time::timeout(REQUEST_TIMEOUT, exchange)
        .await
        .map_err(|_| EngineError::Timeout {
            socket: socket.to_owned(),
            request: request.clone(),
            timeout: REQUEST_TIMEOUT,
        })?
}

async fn send_at(
    socket: &Path,
    method: Method,
    path: &str,
    body: Option<(Body, &'static str)>,
) -> Result<Response<Incoming>, EngineError> {
    let request_name = format!("{method} {path}");
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, UnixStream::connect(socket))
        .await
        .map_err(|_| EngineError::Connect {
            socket: socket.to_owned(),
            source: io::Error::new(io::ErrorKind::TimedOut, "connecting timed out"),
        })?
        .map_err(|source| EngineError::Connect {
            socket: socket.to_owned(),
            source,
        })?;
    let http_error = |source| EngineError::Http {
        request: request_name.clone(),
        source,
    };
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(http_error)?;
    // The connection lives as long as the answer's body is read; dropping the body (an
    // aborted log copy) ends it.
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            debug!(%error, "container engine connection ended");
        }
    });
    let mut builder = Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, "docker");
    let body = match body {
        Some((body, content_type)) => {
            builder = builder.header(hyper::header::CONTENT_TYPE, content_type);
            body
        }
        None => empty(),
    };
    let request = builder.body(body).map_err(|e| EngineError::Decode {
        request: request_name.clone(),
        reason: format!("building the request: {e}"),
    })?;
    let response = sender.send_request(request).await.map_err(http_error)?;
    let status = response.status();
    if status.is_success() || status.is_informational() || status == StatusCode::NOT_MODIFIED {
        return Ok(response);
    }
    let bytes = read_all(response.into_body(), MAX_ERROR_BYTES, &request_name)
        .await
        .unwrap_or_default();
    Err(EngineError::Refused {
        request: request_name,
        status: Some(status),
        message: error_message(&bytes),
    })
}

/// The engine's message from an error answer (`{"message": "..."}`), or the raw text.
fn error_message(bytes: &[u8]) -> String {
    #[derive(Deserialize)]
    struct ErrorAnswer {
        message: String,
    }
    match serde_json::from_slice::<ErrorAnswer>(bytes) {
        Ok(answer) => answer.message,
        Err(_) => String::from_utf8_lossy(bytes).trim().to_owned(),
    }
}

async fn read_all(body: Incoming, limit: usize, request: &str) -> Result<Bytes, EngineError> {
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) => match error.downcast::<hyper::Error>() {
            Ok(source) => Err(EngineError::Http {
                request: request.to_owned(),
                source: *source,
            }),
            Err(other) => Err(EngineError::Decode {
                request: request.to_owned(),
                reason: other.to_string(),
            }),
        },
    }
}

fn decode<T: DeserializeOwned>(bytes: &[u8], request: &str) -> Result<T, EngineError> {
    // Some answers are empty where a body is optional (`null` then decodes `Option`s).
    let bytes = if bytes.iter().all(u8::is_ascii_whitespace) {
        b"null".as_slice()
    } else {
        bytes
    };
    serde_json::from_slice(bytes).map_err(|e| EngineError::Decode {
        request: request.to_owned(),
        reason: e.to_string(),
    })
}

/// Reads a streamed body as JSON lines (pulls, loads), handing each decoded message to
/// `on_message`. A message carrying `error` ends the stream with that error: engines
/// report failed pulls and loads inside a 200 answer.
pub async fn json_lines(
    response: Response<Incoming>,
    request: &str,
    mut on_message: impl FnMut(&StreamMessage),
) -> Result<(), EngineError> {
    let mut body = response.into_body();
    let mut pending = BytesMut::new();
    loop {
        let frame = body.frame().await;
        let done = frame.is_none();
        if let Some(frame) = frame {
            let frame = frame.map_err(|source| EngineError::Http {
                request: request.to_owned(),
                source,
            })?;
            if let Ok(data) = frame.into_data() {
                pending.extend_from_slice(&data);
            }
        }
        while let Some(end) = pending.iter().position(|&b| b == b'\n') {
            let line = pending.split_to(end + 1);
            handle_json_line(&line, request, &mut on_message)?;
        }
        if done {
            return handle_json_line(&pending, request, &mut on_message);
        }
    }
}

fn handle_json_line(
    line: &[u8],
    request: &str,
    on_message: &mut impl FnMut(&StreamMessage),
) -> Result<(), EngineError> {
    let text = String::from_utf8_lossy(line);
    let text = text.trim();
    if text.is_empty() {
        return Ok(());
    }
    let message: StreamMessage = serde_json::from_str(text).map_err(|e| EngineError::Decode {
        request: request.to_owned(),
        reason: format!("{e} in {text:?}"),
    })?;
    if let Some(error) = message.error_text() {
        return Err(EngineError::Refused {
            request: request.to_owned(),
            status: None,
            message: error,
        });
    }
    on_message(&message);
    Ok(())
}

/// One message of a pull or load stream.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StreamMessage {
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub progress_detail: Option<ProgressDetail>,
    /// Load answers: `Loaded image: busybox:1.36`.
    #[serde(default)]
    pub stream: Option<String>,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub error_detail: Option<ErrorDetail>,
}

impl StreamMessage {
    fn error_text(&self) -> Option<String> {
        let detail = self
            .error_detail
            .as_ref()
            .map(|d| d.message.trim())
            .filter(|m| !m.is_empty());
        let error = self
            .error
            .as_deref()
            .map(str::trim)
            .filter(|m| !m.is_empty());
        detail.or(error).map(str::to_owned)
    }
}

#[derive(Debug, Default, Clone, Copy, Deserialize)]
pub struct ProgressDetail {
    #[serde(default)]
    pub current: Option<u64>,
    #[serde(default)]
    pub total: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
pub struct ErrorDetail {
    #[serde(default)]
    pub message: String,
}

/// Reads a streamed body chunk by chunk (logs, exec output); `None` at its end.
pub async fn next_chunk(body: &mut Incoming, request: &str) -> Option<Result<Bytes, EngineError>> {
    loop {
        match body.frame().await? {
            Ok(frame) => {
                if let Ok(data) = frame.into_data() {
                    return Some(Ok(data));
                }
            }
            Err(source) => {
                return Some(Err(EngineError::Http {
                    request: request.to_owned(),
                    source,
                }));
            }
        }
    }
}

/// Percent-encodes `value` for a query string or a path segment (`/` kept for image names
/// with a registry, which the engines route as part of the name).
pub fn encode(value: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        let plain = byte.is_ascii_alphanumeric()
            || matches!(byte, b'-' | b'_' | b'.' | b'~' | b':' | b'@')
            || (keep_slash && byte == b'/');
        if plain {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// The `filters` query parameter: `{"label": ["a=b", ...]}`, encoded.
pub fn label_filter(labels: &[String]) -> String {
    let mut filters = BTreeMap::new();
    filters.insert("label", labels);
    encode(&serde_json::to_string(&filters).unwrap_or_default(), false)
}

// --- Typed requests and answers (only the fields used) ---

/// `POST /containers/create`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct CreateContainer {
    pub image: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    pub labels: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub exposed_ports: BTreeMap<String, EmptyObject>,
    pub host_config: HostConfig,
}

/// `{}` in JSON (`ExposedPorts` values).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct EmptyObject {}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct HostConfig {
    pub init: bool,
    pub network_mode: String,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub port_bindings: BTreeMap<String, Vec<PortBinding>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<Mount>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nano_cpus: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_swap: Option<u64>,
    pub restart_policy: RestartPolicy,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct PortBinding {
    pub host_ip: String,
    pub host_port: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Mount {
    /// `bind` or `volume`.
    #[serde(rename = "Type")]
    pub kind: String,
    pub source: String,
    pub target: String,
    pub read_only: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct RestartPolicy {
    pub name: String,
}

impl Default for RestartPolicy {
    /// The agent supervises restarts; the engine never restarts on its own.
    fn default() -> Self {
        Self {
            name: "no".to_owned(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Created {
    pub id: String,
}

/// `GET /containers/{id}/json`, the fields used.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerInspect {
    pub id: String,
    #[serde(default)]
    pub state: ContainerState,
    #[serde(default)]
    pub config: ContainerConfigAnswer,
    #[serde(default)]
    pub host_config: HostConfigAnswer,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerState {
    #[serde(default)]
    pub running: bool,
    #[serde(default, rename = "OOMKilled")]
    pub oom_killed: bool,
    #[serde(default)]
    pub pid: u32,
    #[serde(default)]
    pub exit_code: i32,
    #[serde(default)]
    pub started_at: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerConfigAnswer {
    #[serde(default)]
    pub labels: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct HostConfigAnswer {
    #[serde(default)]
    pub memory: i64,
}

/// `GET /containers/json`, the fields used.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerSummary {
    pub id: String,
    #[serde(default)]
    pub names: Vec<String>,
    #[serde(default, rename = "ImageID")]
    pub image_id: String,
    #[serde(default)]
    pub state: String,
    #[serde(default)]
    pub labels: Option<BTreeMap<String, String>>,
}

/// `GET /images/{name}/json`, the fields used.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ImageInspect {
    pub id: String,
}

/// `POST /containers/{id}/wait`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct WaitAnswer {
    pub status_code: i64,
}

/// `POST /containers/{id}/exec`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct CreateExec {
    pub cmd: Vec<String>,
    pub attach_stdout: bool,
    pub attach_stderr: bool,
}

/// `POST /exec/{id}/start`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct StartExec {
    pub detach: bool,
    pub tty: bool,
}

/// `GET /exec/{id}/json`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ExecInspect {
    #[serde(default)]
    pub running: bool,
    #[serde(default)]
    pub exit_code: Option<i32>,
    #[serde(default)]
    pub pid: u32,
}

/// Reads and discards a streamed body to its end.
pub async fn drain(response: Response<Incoming>, request: &str) -> Result<(), EngineError> {
    let mut body = response.into_body();
    while let Some(chunk) = next_chunk(&mut body, request).await {
        chunk?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_versions_parse() {
        assert_eq!(parse_api_version("1.41"), Some((1, 41)));
        assert_eq!(parse_api_version("1.48"), Some((1, 48)));
        assert!(parse_api_version("1.9") < parse_api_version("1.41"));
        assert_eq!(parse_api_version("four"), None);
    }

    #[test]
    fn error_messages_come_from_the_engine() {
        assert_eq!(
            error_message(br#"{"message":"No such image: busybox:1"}"#),
            "No such image: busybox:1"
        );
        assert_eq!(error_message(b"page not found\n"), "page not found");
    }

    #[test]
    fn encoding_keeps_image_names_readable() {
        assert_eq!(encode("busybox:1.36", true), "busybox:1.36");
        assert_eq!(
            encode("registry.example:5000/app@sha256:ab", true),
            "registry.example:5000/app@sha256:ab"
        );
        assert_eq!(encode("a/b c", false), "a%2Fb%20c");
        assert_eq!(
            label_filter(&["edgefleet.agent=n1".to_owned()]),
            "%7B%22label%22:%5B%22edgefleet.agent%3Dn1%22%5D%7D"
        );
    }

    #[test]
    fn stream_errors_are_found_in_either_field() {
        let m: StreamMessage =
            serde_json::from_str(r#"{"errorDetail":{"message":"manifest unknown"},"error":"x"}"#)
                .unwrap();
        assert_eq!(m.error_text().as_deref(), Some("manifest unknown"));
        let m: StreamMessage = serde_json::from_str(r#"{"error":"denied"}"#).unwrap();
        assert_eq!(m.error_text().as_deref(), Some("denied"));
        let m: StreamMessage = serde_json::from_str(
            r#"{"status":"Downloading","progressDetail":{"current":1,"total":2},"id":"ab"}"#,
        )
        .unwrap();
        assert_eq!(m.error_text(), None);
        assert_eq!(m.progress_detail.unwrap().total, Some(2));
    }
}
