//! The agent's local API: a unix socket, `<data-dir>/agent.sock`, through which workloads
//! on the node hold update locks (`locks`), and its client (`edgefleet-agent lock ...`).
//!
//! The protocol is `edgefleet_wire::local`: one JSON `LocalRequest` per line, answered by
//! one JSON `LocalResponse` per line. A line that is not a request (or is longer than
//! `LINE_MAX_BYTES`) is answered with `{"ok":false,"error":"..."}` and the connection
//! stays usable.
//!
//! The socket is mode 0660: the agent's user and group may use it. It is created at start,
//! after the data-directory lock is taken, so a socket file found then is a leftover of a
//! crashed agent and is replaced; it is removed again when the agent stops.

use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use edgefleet_wire::local::{LocalRequest, LocalResponse};
use edgefleet_wire::node::UpdateLock;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, UnixListener, UnixStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::data_api::DataApi;
use crate::locks::Locks;
use crate::shutdown::Shutdown;

/// The socket, in the data directory.
pub const SOCKET_FILE: &str = "agent.sock";
/// The longest request line accepted: lock requests are well under 1 KiB; a `publish`
/// carries its records.
pub const LINE_MAX_BYTES: usize = 1024 * 1024;
/// Mode of the socket: connecting needs write permission on it.
pub const SOCKET_MODE: u32 = 0o660;
/// Connections served at once; more are answered with an error and closed.
const MAX_CONNECTIONS: usize = 32;
/// A connection without a request for this long is closed, so that idle clients cannot
/// hold every slot. Locks do not depend on the connection: they stay until released.
const IDLE_TIMEOUT: Duration = Duration::from_secs(5 * 60);
/// How long the client waits for the agent.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum LocalApiError {
    #[error("{} exists and is not a socket; move it away so the agent can create its local API socket there", path.display())]
    NotASocket { path: PathBuf },
    #[error("{action} the local API socket {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> LocalApiError {
    let path = path.to_owned();
    move |source| LocalApiError::Io {
        action,
        path,
        source,
    }
}

/// The bound socket. Dropping it (a clean stop, or the task being aborted) removes the
/// socket file.
#[derive(Debug)]
pub struct LocalApi {
    listener: Listener,
}

#[derive(Debug)]
enum Listener {
    Unix {
        listener: UnixListener,
        /// Removes the socket file when dropped.
        _file: SocketFile,
    },
    /// Loopback TCP: `publish` and `config` need a workload token; locks are refused.
    Tcp(TcpListener),
}

/// What answers requests: update locks, and the data API when the agent runs one.
#[derive(Debug, Clone)]
pub struct Handlers {
    pub locks: Arc<Locks>,
    pub data: Option<Arc<DataApi>>,
}

impl Handlers {
    async fn handle(&self, request: LocalRequest, tcp: bool) -> LocalResponse {
        match request {
            LocalRequest::Publish { .. } | LocalRequest::Config { .. } => match &self.data {
                Some(data) => data.handle(request).await,
                None => failure("this agent has no data API", &self.locks),
            },
            _ if tcp => failure(
                "update locks are served on the unix socket only",
                &self.locks,
            ),
            request => self.locks.handle(request).await,
        }
    }
}

#[derive(Debug)]
struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        if let Err(error) = fs::remove_file(&self.0)
            && error.kind() != io::ErrorKind::NotFound
        {
            warn!(%error, path = %self.0.display(), "cannot remove the local API socket");
        }
    }
}

impl LocalApi {
    /// Creates the socket at `path` (mode 0660), replacing a stale one. Only one agent
    /// may call this per data directory: the caller holds the data-directory lock.
    pub fn bind(path: &Path) -> Result<Self, LocalApiError> {
        remove_stale(path)?;
        let listener = UnixListener::bind(path).map_err(io_error("creating", path))?;
        let file = SocketFile(path.to_owned());
        fs::set_permissions(path, fs::Permissions::from_mode(SOCKET_MODE))
            .map_err(io_error("setting the mode of", path))?;
        Ok(Self {
            listener: Listener::Unix {
                listener,
                _file: file,
            },
        })
    }

    /// Listens on a loopback TCP address (refused for any other address: the token is the
    /// only protection, so the port must not be reachable from the network).
    pub async fn bind_tcp(addr: std::net::SocketAddr) -> anyhow::Result<Self> {
        if !addr.ip().is_loopback() {
            anyhow::bail!(
                "--local-api-tcp {addr}: only a loopback address (127.0.0.1, ::1) is allowed"
            );
        }
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("listening on {addr} for the local API: {e}"))?;
        Ok(Self {
            listener: Listener::Tcp(listener),
        })
    }

    /// The TCP address, when listening on TCP.
    pub fn tcp_addr(&self) -> Option<std::net::SocketAddr> {
        match &self.listener {
            Listener::Tcp(listener) => listener.local_addr().ok(),
            Listener::Unix { .. } => None,
        }
    }

    /// Answers requests until shutdown, then removes the socket.
    pub async fn serve(self, handlers: Handlers, mut shutdown: Shutdown) {
        let locks = handlers.locks.clone();
        let tcp = matches!(self.listener, Listener::Tcp(_));
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        let mut connections = JoinSet::new();
        loop {
            let accepted = tokio::select! {
                () = shutdown.wait() => break,
                accepted = self.accept() => accepted,
                Some(_) = connections.join_next() => continue,
            };
            let stream = match accepted {
                Ok(stream) => stream,
                Err(error) => {
                    // Out of file descriptors, usually: wait instead of spinning.
                    warn!(%error, "accepting a local API connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                connections.spawn(refuse(stream, locks.clone()));
                continue;
            };
            let handlers = handlers.clone();
            connections.spawn(async move {
                if let Err(error) = serve_connection(stream, &handlers, tcp).await {
                    debug!(%error, "local API connection ended");
                }
                drop(slot);
            });
        }
        connections.shutdown().await;
    }

    async fn accept(&self) -> io::Result<Connection> {
        match &self.listener {
            Listener::Unix { listener, .. } => Ok(Connection::Unix(listener.accept().await?.0)),
            Listener::Tcp(listener) => Ok(Connection::Tcp(listener.accept().await?.0)),
        }
    }
}

enum Connection {
    Unix(UnixStream),
    Tcp(tokio::net::TcpStream),
}

impl Connection {
    fn split(
        self,
    ) -> (
        Box<dyn tokio::io::AsyncRead + Send + Unpin>,
        Box<dyn tokio::io::AsyncWrite + Send + Unpin>,
    ) {
        match self {
            Self::Unix(stream) => {
                let (r, w) = stream.into_split();
                (Box::new(r), Box::new(w))
            }
            Self::Tcp(stream) => {
                let (r, w) = stream.into_split();
                (Box::new(r), Box::new(w))
            }
        }
    }
}

fn remove_stale(path: &Path) -> Result<(), LocalApiError> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            fs::remove_file(path).map_err(io_error("removing the stale", path))?;
            info!(path = %path.display(), "removed the local API socket of a previous agent run");
            Ok(())
        }
        Ok(_) => Err(LocalApiError::NotASocket {
            path: path.to_owned(),
        }),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(io_error("inspecting", path)(error)),
    }
}

/// An error answer; like every answer it lists the locks held, so a client never reads
/// an error as "no locks".
fn failure(message: impl Into<String>, locks: &Locks) -> LocalResponse {
    LocalResponse {
        ok: false,
        error: Some(message.into()),
        locks: locks.list(),
        ..LocalResponse::default()
    }
}

async fn write_response<W: AsyncWriteExt + Unpin>(
    writer: &mut W,
    response: &LocalResponse,
) -> io::Result<()> {
    let mut line = serde_json::to_vec(response).map_err(io::Error::other)?;
    line.push(b'\n');
    writer.write_all(&line).await
}

async fn refuse(stream: Connection, locks: Arc<Locks>) {
    let (_, mut stream) = stream.split();
    let response = failure(
        format!(
            "the agent serves at most {MAX_CONNECTIONS} local API connections at once; try again"
        ),
        &locks,
    );
    let _ = write_response(&mut stream, &response).await;
}

async fn serve_connection(stream: Connection, handlers: &Handlers, tcp: bool) -> io::Result<()> {
    let locks = &handlers.locks;
    let (reader, mut writer) = stream.split();
    let mut reader = BufReader::new(reader);
    loop {
        let Ok(line) =
            tokio::time::timeout(IDLE_TIMEOUT, read_line(&mut reader, LINE_MAX_BYTES)).await
        else {
            let response = failure(
                format!(
                    "closing the connection: no request for {}s",
                    IDLE_TIMEOUT.as_secs()
                ),
                locks,
            );
            return write_response(&mut writer, &response).await;
        };
        let response = match line? {
            Line::End => return Ok(()),
            Line::TooLong => failure(
                format!(
                    "request line longer than {LINE_MAX_BYTES} bytes; send one JSON request per line"
                ),
                locks,
            ),
            Line::Complete(line) => match parse_request(&line) {
                Ok(request) => handlers.handle(request, tcp).await,
                Err(message) => failure(message, locks),
            },
        };
        write_response(&mut writer, &response).await?;
    }
}

/// A request line as `LocalRequest`, or the error to answer with.
pub fn parse_request(line: &[u8]) -> Result<LocalRequest, String> {
    let text = std::str::from_utf8(line).map_err(|_| "request is not UTF-8".to_owned())?;
    let text = text.trim();
    if text.is_empty() {
        return Err(
            r#"empty request line; send one JSON request per line, such as {"op":"list"}"#
                .to_owned(),
        );
    }
    serde_json::from_str(text).map_err(|error| {
        format!(
            "bad request: {error} (expected {{\"op\":\"acquire\",\"workload\":\"...\",\"reason\":\"...\"}}, {{\"op\":\"release\",\"workload\":\"...\"}} or {{\"op\":\"list\"}})"
        )
    })
}

/// One line read with a bounded buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// Without its line end. The last line may lack one.
    Complete(Vec<u8>),
    /// Longer than the limit; it was read to its end and discarded.
    TooLong,
    /// The peer closed the connection.
    End,
}

/// Reads one `\n`-terminated line, never holding more than `max` bytes of it.
pub async fn read_line<R: AsyncBufRead + Unpin>(reader: &mut R, max: usize) -> io::Result<Line> {
    let mut line = Vec::new();
    let mut too_long = false;
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            return Ok(match (too_long, line.is_empty()) {
                (true, _) => Line::TooLong,
                (false, true) => Line::End,
                (false, false) => Line::Complete(line),
            });
        }
        let (chunk, consumed, done) = match available.iter().position(|b| *b == b'\n') {
            Some(end) => (&available[..end], end + 1, true),
            None => (available, available.len(), false),
        };
        if !too_long {
            if line.len() + chunk.len() > max {
                too_long = true;
                line = Vec::new();
            } else {
                line.extend_from_slice(chunk);
            }
        }
        reader.consume(consumed);
        if done {
            return Ok(if too_long {
                Line::TooLong
            } else {
                Line::Complete(line)
            });
        }
    }
}

// ---- the client ----

/// `edgefleet-agent lock ...` (and `edgefleet agent lock ...`): hold, release or list update
/// locks through the running agent.
#[derive(clap::Args, Debug, Clone)]
pub struct LockArgs {
    /// The data directory of the agent to ask (the socket is `<data-dir>/agent.sock`)
    #[arg(
        long,
        env = "EDGEFLEET_AGENT_DATA_DIR",
        default_value = crate::DEFAULT_DATA_DIR,
        global = true
    )]
    pub data_dir: PathBuf,
    #[command(subcommand)]
    pub command: LockCommand,
}

#[derive(clap::Subcommand, Debug, Clone)]
pub enum LockCommand {
    /// Hold WORKLOAD's update lock: the server holds updates back from this node until it is released
    Acquire {
        /// The workload the lock is for
        workload: String,
        /// Why, shown with the node's status
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Release WORKLOAD's update lock
    Release {
        /// The workload holding the lock
        workload: String,
    },
    /// Show the update locks held on this node
    List,
}

/// Why the client got no answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no agent is running with data dir {} (no socket at {})", data_dir.display(), socket.display())]
    NoAgent { data_dir: PathBuf, socket: PathBuf },
    #[error("no agent is running with data dir {} (the socket {} is left over from a stopped agent)", data_dir.display(), socket.display())]
    Stale { data_dir: PathBuf, socket: PathBuf },
    #[error("connecting to {}: permission denied (the socket is mode 0660: run as the agent's user or a member of its group)", socket.display())]
    PermissionDenied { socket: PathBuf },
    #[error("talking to the agent over {}: {source}", socket.display())]
    Io {
        socket: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the agent did not answer within {}s over {}", CLIENT_TIMEOUT.as_secs(), socket.display())]
    Timeout { socket: PathBuf },
    #[error("the agent's answer over {} is not a response: {reason}", socket.display())]
    BadResponse { socket: PathBuf, reason: String },
}

/// Sends one request to the agent using `data_dir` and returns its answer (which may be
/// `ok: false`).
pub async fn request(
    data_dir: &Path,
    request: &LocalRequest,
) -> Result<LocalResponse, ClientError> {
    let socket = data_dir.join(SOCKET_FILE);
    request_socket(data_dir, &socket, request).await
}

/// Sends one request over the socket at `socket` (of the agent using `data_dir`, for
/// messages).
pub async fn request_socket(
    data_dir: &Path,
    socket: &Path,
    request: &LocalRequest,
) -> Result<LocalResponse, ClientError> {
    match tokio::time::timeout(CLIENT_TIMEOUT, exchange(data_dir, socket, request)).await {
        Ok(result) => result,
        Err(_) => Err(ClientError::Timeout {
            socket: socket.to_owned(),
        }),
    }
}

/// `edgefleet-agent publish STREAM`: publish records from a workload, with the socket and
/// token the agent gave it in its environment.
#[derive(clap::Args, Debug, Clone)]
pub struct PublishArgs {
    /// The stream, as declared in the deployment's `streams`
    pub stream: String,
    /// One JSON record; without it (and without --bytes-file), every line of standard
    /// input is a JSON record, sent in batches
    #[arg(long, value_name = "JSON", conflicts_with = "bytes_file")]
    pub json: Option<String>,
    /// One record of opaque bytes: the content of FILE (`-` for standard input)
    #[arg(long, value_name = "FILE")]
    pub bytes_file: Option<PathBuf>,
    #[command(flatten)]
    pub access: WorkloadAccess,
}

/// How a workload reaches the local API: given to it by the agent.
#[derive(clap::Args, Debug, Clone)]
pub struct WorkloadAccess {
    /// The local API's socket
    #[arg(long, env = edgefleet_wire::local::LOCAL_API_ENV, value_name = "PATH")]
    pub socket: PathBuf,
    /// The workload's token
    #[arg(long, env = edgefleet_wire::local::WORKLOAD_TOKEN_ENV, value_name = "TOKEN", hide_env_values = true)]
    pub token: String,
}

/// Records per request when publishing lines from standard input.
const PUBLISH_BATCH: usize = 500;

async fn call(access: &WorkloadAccess, request: &LocalRequest) -> anyhow::Result<LocalResponse> {
    let dir = access.socket.parent().unwrap_or(Path::new("/"));
    let response = request_socket(dir, &access.socket, request).await?;
    if !response.ok {
        anyhow::bail!(
            "{}",
            response
                .error
                .unwrap_or_else(|| "the agent refused the request without saying why".to_owned())
        );
    }
    Ok(response)
}

/// Runs `edgefleet-agent publish`; returns what to print: the records' sequence numbers,
/// one per line.
pub async fn publish_command(args: &PublishArgs) -> anyhow::Result<String> {
    use base64::Engine;
    use std::io::Read;
    let publish = |json, records, bytes| LocalRequest::Publish {
        token: args.access.token.clone(),
        stream: args.stream.clone(),
        json,
        records,
        bytes,
    };
    if let Some(text) = &args.json {
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| anyhow::anyhow!("--json is not JSON: {e}"))?;
        let response = call(&args.access, &publish(Some(value), Vec::new(), None)).await?;
        return Ok(response.seq.map(|s| format!("{s}\n")).unwrap_or_default());
    }
    if let Some(path) = &args.bytes_file {
        let mut content = Vec::new();
        if path.as_os_str() == "-" {
            std::io::stdin().read_to_end(&mut content)?;
        } else {
            content =
                fs::read(path).map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
        }
        let encoded = base64::engine::general_purpose::STANDARD.encode(content);
        let response = call(&args.access, &publish(None, Vec::new(), Some(encoded))).await?;
        return Ok(response.seq.map(|s| format!("{s}\n")).unwrap_or_default());
    }
    let mut out = String::new();
    let mut batch = Vec::new();
    let mut text = String::new();
    std::io::stdin().read_to_string(&mut text)?;
    for (number, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let value: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| anyhow::anyhow!("standard input line {} is not JSON: {e}", number + 1))?;
        batch.push(value);
        if batch.len() == PUBLISH_BATCH {
            let response = call(
                &args.access,
                &publish(None, std::mem::take(&mut batch), None),
            )
            .await?;
            for seq in response.seqs {
                out.push_str(&format!("{seq}\n"));
            }
        }
    }
    if !batch.is_empty() {
        let response = call(&args.access, &publish(None, batch, None)).await?;
        for seq in response.seqs {
            out.push_str(&format!("{seq}\n"));
        }
    }
    Ok(out)
}

/// Runs `edgefleet-agent config`: the calling workload's configuration, as JSON.
pub async fn config_command(access: &WorkloadAccess) -> anyhow::Result<String> {
    let response = call(
        access,
        &LocalRequest::Config {
            token: access.token.clone(),
        },
    )
    .await?;
    let config = response
        .config
        .ok_or_else(|| anyhow::anyhow!("the agent answered without the configuration"))?;
    Ok(serde_json::to_string_pretty(&config)? + "\n")
}

async fn exchange(
    data_dir: &Path,
    socket: &Path,
    request: &LocalRequest,
) -> Result<LocalResponse, ClientError> {
    let stream = UnixStream::connect(socket)
        .await
        .map_err(|source| match source.kind() {
            io::ErrorKind::NotFound => ClientError::NoAgent {
                data_dir: data_dir.to_owned(),
                socket: socket.to_owned(),
            },
            io::ErrorKind::ConnectionRefused => ClientError::Stale {
                data_dir: data_dir.to_owned(),
                socket: socket.to_owned(),
            },
            io::ErrorKind::PermissionDenied => ClientError::PermissionDenied {
                socket: socket.to_owned(),
            },
            _ => ClientError::Io {
                socket: socket.to_owned(),
                source,
            },
        })?;
    let io = |source| ClientError::Io {
        socket: socket.to_owned(),
        source,
    };
    let (reader, mut writer) = stream.into_split();
    let mut line = serde_json::to_vec(request).map_err(|e| io(io::Error::other(e)))?;
    line.push(b'\n');
    writer.write_all(&line).await.map_err(io)?;
    // The answer to a small request is small; a bigger one is not from an agent.
    let answer = read_line(&mut BufReader::new(reader), 1 << 20)
        .await
        .map_err(io)?;
    let bad = |reason: String| ClientError::BadResponse {
        socket: socket.to_owned(),
        reason,
    };
    match answer {
        Line::Complete(line) => {
            serde_json::from_slice(&line).map_err(|error| bad(error.to_string()))
        }
        Line::TooLong => Err(bad("longer than 1 MiB".to_owned())),
        Line::End => Err(bad("the agent closed the connection".to_owned())),
    }
}

/// Runs a `lock` command and returns what to print. An `ok: false` answer is an error
/// carrying the agent's message.
pub async fn lock_command(args: &LockArgs) -> anyhow::Result<String> {
    let local_request = match &args.command {
        LockCommand::Acquire { workload, reason } => LocalRequest::Acquire {
            workload: workload.clone(),
            reason: reason.clone(),
        },
        LockCommand::Release { workload } => LocalRequest::Release {
            workload: workload.clone(),
        },
        LockCommand::List => LocalRequest::List,
    };
    let response = request(&args.data_dir, &local_request).await?;
    if !response.ok {
        let message = response
            .error
            .unwrap_or_else(|| "the agent refused the request without saying why".to_owned());
        anyhow::bail!("{message}");
    }
    Ok(match &args.command {
        LockCommand::Acquire { workload, .. } => {
            match response.locks.iter().find(|l| &l.workload == workload) {
                Some(lock) => format!(
                    "holding the update lock of {workload} (since {})\n",
                    format_time(lock.since)
                ),
                None => format!("holding the update lock of {workload}\n"),
            }
        }
        LockCommand::Release { workload } => format!("released the update lock of {workload}\n"),
        LockCommand::List => render_locks(&response.locks),
    })
}

fn format_time(at: edgefleet_wire::Timestamp) -> String {
    at.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| at.to_string())
}

/// The locks as a table, or a sentence when there are none.
pub fn render_locks(locks: &[UpdateLock]) -> String {
    if locks.is_empty() {
        return "no update locks are held on this node\n".to_owned();
    }
    let rows: Vec<[String; 3]> = locks
        .iter()
        .map(|l| [l.workload.clone(), format_time(l.since), l.reason.clone()])
        .collect();
    let width = |column: usize, title: &str| {
        rows.iter()
            .map(|r| r[column].chars().count())
            .chain([title.len()])
            .max()
            .unwrap_or(0)
    };
    let (workload_width, since_width) = (width(0, "WORKLOAD"), width(1, "SINCE"));
    let mut out = format!(
        "{:workload_width$}  {:since_width$}  REASON\n",
        "WORKLOAD", "SINCE"
    );
    for [workload, since, reason] in rows {
        let line = format!("{workload:workload_width$}  {since:since_width$}  {reason}");
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn lines(input: &[u8], max: usize) -> Vec<Line> {
        // A tiny buffer, so lines arrive in several pieces.
        let mut reader = BufReader::with_capacity(3, input);
        let mut out = Vec::new();
        loop {
            let line = read_line(&mut reader, max).await.unwrap();
            if line == Line::End {
                return out;
            }
            out.push(line);
        }
    }

    #[tokio::test]
    async fn lines_are_bounded_and_an_overlong_one_is_skipped() {
        let complete = |s: &str| Line::Complete(s.as_bytes().to_vec());
        assert_eq!(
            lines(b"abc\n0123456789\nde\nlast", 5).await,
            [
                complete("abc"),
                Line::TooLong,
                complete("de"),
                complete("last")
            ]
        );
        assert_eq!(
            lines(b"12345\n123456", 5).await,
            [complete("12345"), Line::TooLong]
        );
        assert_eq!(lines(b"", 5).await, []);
    }

    #[test]
    fn requests_parse_and_bad_ones_say_what_is_expected() {
        assert_eq!(parse_request(br#"{"op":"list"}"#), Ok(LocalRequest::List));
        assert_eq!(
            parse_request(b"{\"op\":\"acquire\",\"workload\":\"till\"}\r"),
            Ok(LocalRequest::Acquire {
                workload: "till".into(),
                reason: String::new()
            })
        );
        let error = parse_request(br#"{"op":"steal"}"#).unwrap_err();
        assert!(
            error.contains("steal") && error.contains(r#"{"op":"list"}"#),
            "{error}"
        );
        assert!(parse_request(b"  ").unwrap_err().contains("empty"));
        assert!(parse_request(&[0xff, 0xfe]).unwrap_err().contains("UTF-8"));
    }

    #[test]
    fn locks_render_as_a_table() {
        let since = time::macros::datetime!(2026-03-04 05:06:07 UTC);
        let locks = [
            UpdateLock {
                workload: "arm".into(),
                reason: String::new(),
                since,
            },
            UpdateLock {
                workload: "till-app".into(),
                reason: "sale in progress".into(),
                since,
            },
        ];
        assert_eq!(
            render_locks(&locks),
            "WORKLOAD  SINCE                 REASON\n\
             arm       2026-03-04T05:06:07Z\n\
             till-app  2026-03-04T05:06:07Z  sale in progress\n"
        );
        assert_eq!(render_locks(&[]), "no update locks are held on this node\n");
    }
}
