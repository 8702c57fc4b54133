//! The lean HTTPS client of a simulated node: one keep-alive HTTP/1.1 connection over
//! tokio-rustls with the node's own rustls configuration, one request at a time.
//!
//! The agent protocol needs little of HTTP: a request line, three headers, a JSON body; an
//! answer with `Content-Length` (or chunked, or up to the end of the connection). Writing
//! that by hand keeps an idle node down to its TLS session: no pool, no connection task,
//! no buffers between requests (hyper's connection-level client keeps an 8 KiB header
//! buffer and an 8 KiB read buffer per connection plus a task to drive it; the crate docs
//! give the measured difference). The server address is resolved once for the fleet
//! (`Endpoint`). Everything the server sends is bounded (head 16 KiB, body 8 MiB) and
//! checked: a malformed answer is an error, never a panic.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use edgefleet_wire::api::ErrorBody;
use rustls_pki_types::ServerName;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// Connecting plus the TLS handshake may take this long.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The status line and headers of an answer may be this long at most.
const MAX_HEAD_BYTES: u64 = 16 * 1024;
/// A response body larger than this is refused (a desired state is a few KiB).
const MAX_BODY_BYTES: usize = 8 * 1024 * 1024;
/// Read buffer of one exchange; freed when the exchange ends.
const READ_BUFFER: usize = 2048;
const USER_AGENT: &str = concat!("edgefleet-sim/", env!("CARGO_PKG_VERSION"));

pub const NOT_MODIFIED: u16 = 304;
pub const NOT_FOUND: u16 = 404;
pub const METHOD_NOT_ALLOWED: u16 = 405;

/// The methods the agent protocol uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Put,
    Post,
}

impl Method {
    fn as_str(self) -> &'static str {
        match self {
            Self::Get => "GET",
            Self::Put => "PUT",
            Self::Post => "POST",
        }
    }
}

/// A server URL that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error("server URL {url:?}: {reason}")]
    Invalid { url: String, reason: &'static str },
    #[error("server URL {url:?}: cannot resolve {host_port}: {source}")]
    Resolve {
        url: String,
        host_port: String,
        #[source]
        source: std::io::Error,
    },
}

/// The server, resolved once and shared by every node.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// `https://host:port`, without a trailing slash.
    pub base_url: String,
    addr: SocketAddr,
    server_name: ServerName<'static>,
    /// The `Host` header: `host:port`.
    authority: String,
}

impl Endpoint {
    pub async fn resolve(url: &str) -> Result<Self, EndpointError> {
        let invalid = |reason| EndpointError::Invalid {
            url: url.to_owned(),
            reason,
        };
        let base_url = url.trim().trim_end_matches('/');
        let authority = base_url
            .strip_prefix("https://")
            .ok_or_else(|| invalid("must start with https://"))?;
        if authority.contains('/') || authority.contains('?') {
            return Err(invalid("must be https://HOST:PORT without a path"));
        }
        let (host, port) = split_host_port(authority).ok_or_else(|| {
            invalid("must be https://HOST:PORT with a port number (like https://127.0.0.1:7443)")
        })?;
        let host_port = format!("{host}:{port}");
        let addr = tokio::net::lookup_host(host_port.as_str())
            .await
            .map_err(|source| EndpointError::Resolve {
                url: url.to_owned(),
                host_port: host_port.clone(),
                source,
            })?
            .next()
            .ok_or_else(|| invalid("the host name resolves to no address"))?;
        let server_name = ServerName::try_from(host.trim_matches(['[', ']']).to_owned())
            .map_err(|_| invalid("the host is neither a DNS name nor an IP address"))?;
        Ok(Self {
            base_url: base_url.to_owned(),
            addr,
            server_name,
            authority: authority.to_owned(),
        })
    }
}

/// `host:port` or `[v6]:port` → (host, port).
fn split_host_port(authority: &str) -> Option<(&str, u16)> {
    let (host, port) = authority.rsplit_once(':')?;
    if host.is_empty() || (host.contains(':') && !host.starts_with('[')) {
        return None;
    }
    Some((host, port.parse().ok()?))
}

/// Why a call failed. `what` names the call (`heartbeat`, `status report`, ...).
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("{what}: connecting to {addr}: {source}")]
    Connect {
        what: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: TLS handshake with {addr}: {source}")]
    Handshake {
        what: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: connection to the server: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: the server closed the connection before answering completely")]
    Closed { what: &'static str },
    #[error("{what}: no answer within {after:?}")]
    Timeout { what: &'static str, after: Duration },
    #[error("{what}: server answered {status}: {message}")]
    Status {
        what: &'static str,
        status: u16,
        message: String,
    },
    #[error("{what}: unexpected response: {reason}")]
    Decode { what: &'static str, reason: String },
    #[error("{what}: lost on the simulated link")]
    Lost { what: &'static str },
    #[error("{what}: the node is offline")]
    Offline { what: &'static str },
}

impl CallError {
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Retrying the same request cannot help: a 4xx other than timeouts and rate limits.
    pub fn is_permanent(&self) -> bool {
        self.status()
            .is_some_and(|status| (400..500).contains(&status) && status != 408 && status != 429)
    }

    /// The server refuses the node's certificate (revoked, or unknown to it).
    pub fn is_auth(&self) -> bool {
        matches!(self.status(), Some(401 | 403))
    }
}

/// An answer: status and body.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn json<T: DeserializeOwned>(&self, what: &'static str) -> Result<T, CallError> {
        serde_json::from_slice(&self.body).map_err(|error| CallError::Decode {
            what,
            reason: error.to_string(),
        })
    }

    /// Success (2xx or 304) or the server's error as a `CallError::Status`.
    pub fn check(self, what: &'static str) -> Result<Self, CallError> {
        if (200..300).contains(&self.status) || self.status == NOT_MODIFIED {
            return Ok(self);
        }
        Err(CallError::Status {
            what,
            status: self.status,
            message: error_message(&self.body),
        })
    }
}

/// The message of an `ErrorBody`, or the start of whatever else the server sent.
fn error_message(body: &[u8]) -> String {
    if let Ok(error) = serde_json::from_slice::<ErrorBody>(body) {
        if error.details.is_empty() {
            return error.message;
        }
        return format!("{} ({})", error.message, error.details.join("; "));
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return "no details".to_owned();
    }
    text.chars().take(200).collect()
}

/// One HTTP/1.1 connection to the server, used for one request at a time.
#[derive(Debug)]
pub struct Connection {
    /// Boxed: a connection moves in and out of node state, and every future that holds
    /// one would otherwise carry the whole TLS state inline.
    stream: Box<TlsStream<TcpStream>>,
    /// False once an exchange failed half-way or the server asked to close.
    usable: bool,
}

impl Connection {
    /// TCP connect and TLS handshake, presenting whatever client certificate `tls` holds.
    /// The handshake's state is large and short-lived: callers that keep their futures
    /// around long (node tasks) box this one.
    pub async fn open(
        endpoint: &Endpoint,
        tls: Arc<rustls::ClientConfig>,
        what: &'static str,
    ) -> Result<Self, CallError> {
        let addr = endpoint.addr;
        let connect = async {
            let tcp = TcpStream::connect(addr)
                .await
                .map_err(|source| CallError::Connect { what, addr, source })?;
            // Small requests: do not wait for more data before sending.
            let _ = tcp.set_nodelay(true);
            let stream = TlsConnector::from(tls)
                .connect(endpoint.server_name.clone(), tcp)
                .await
                .map_err(|source| CallError::Handshake { what, addr, source })?;
            Ok(Self {
                stream: Box::new(stream),
                usable: true,
            })
        };
        tokio::time::timeout(CONNECT_TIMEOUT, connect)
            .await
            .map_err(|_| CallError::Timeout {
                what,
                after: CONNECT_TIMEOUT,
            })?
    }

    /// Whether the connection can take another request.
    pub fn is_usable(&self) -> bool {
        self.usable
    }

    /// Sends one request and reads the whole answer, within its timeout. Afterwards the
    /// connection is usable again only if the exchange completed and the server keeps it
    /// open.
    pub async fn send(
        &mut self,
        endpoint: &Endpoint,
        request: Request<'_>,
    ) -> Result<Reply, CallError> {
        let Request {
            method,
            path,
            json,
            timeout,
            what,
        } = request;
        self.usable = false;
        let exchange = async {
            let bytes = request_bytes(endpoint, method, path, json);
            let io = |source| CallError::Io { what, source };
            self.stream.write_all(&bytes).await.map_err(io)?;
            self.stream.flush().await.map_err(io)?;
            let mut reader = BufReader::with_capacity(READ_BUFFER, &mut *self.stream);
            let answer = read_response(&mut reader, what).await?;
            // HTTP/1.1 without pipelining: the server sends nothing unasked.
            let clean = reader.buffer().is_empty();
            Ok((answer, clean))
        };
        let (answer, clean) = tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| CallError::Timeout {
                what,
                after: timeout,
            })??;
        self.usable = answer.keep_alive && clean;
        Ok(answer.reply)
    }
}

/// One request: what to send, how long to wait for the answer, and what to call it in errors.
#[derive(Debug)]
pub struct Request<'a> {
    pub method: Method,
    /// Path and query, like `/v1/agent/desired?known_generation=3&wait_seconds=10`.
    pub path: &'a str,
    pub json: Option<Vec<u8>>,
    pub timeout: Duration,
    pub what: &'static str,
}

impl<'a> Request<'a> {
    pub fn get(path: &'a str, timeout: Duration, what: &'static str) -> Self {
        Self {
            method: Method::Get,
            path,
            json: None,
            timeout,
            what,
        }
    }

    pub fn with_json(
        method: Method,
        path: &'a str,
        json: Vec<u8>,
        timeout: Duration,
        what: &'static str,
    ) -> Self {
        Self {
            method,
            path,
            json: Some(json),
            timeout,
            what,
        }
    }
}

fn request_bytes(
    endpoint: &Endpoint,
    method: Method,
    path_and_query: &str,
    json: Option<Vec<u8>>,
) -> Vec<u8> {
    let mut head = format!(
        "{} {path_and_query} HTTP/1.1\r\nhost: {}\r\nuser-agent: {USER_AGENT}\r\naccept: application/json\r\n",
        method.as_str(),
        endpoint.authority
    );
    match json {
        Some(body) => {
            head.push_str(&format!(
                "content-type: application/json\r\ncontent-length: {}\r\n\r\n",
                body.len()
            ));
            let mut bytes = head.into_bytes();
            bytes.extend_from_slice(&body);
            bytes
        }
        None => {
            head.push_str("\r\n");
            head.into_bytes()
        }
    }
}

/// A parsed answer and whether the connection stays open after it.
#[derive(Debug)]
struct Answer {
    reply: Reply,
    keep_alive: bool,
}

/// How the body of an answer is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    None,
    Length(usize),
    Chunked,
    UntilClose,
}

#[derive(Debug, PartialEq, Eq)]
struct Head {
    status: u16,
    framing: Framing,
    keep_alive: bool,
}

async fn read_response<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    what: &'static str,
) -> Result<Answer, CallError> {
    let head = loop {
        let text = read_head(reader, what).await?;
        let head = parse_head(&text).map_err(|reason| CallError::Decode { what, reason })?;
        // Interim answers (100 Continue) precede the real one.
        if !(100..200).contains(&head.status) {
            break head;
        }
    };
    let body = match head.framing {
        Framing::None => Vec::new(),
        Framing::Length(length) => read_exact(reader, length, what).await?,
        Framing::Chunked => read_chunked(reader, what).await?,
        Framing::UntilClose => {
            let mut body = Vec::new();
            let mut limited = (&mut *reader).take(MAX_BODY_BYTES as u64 + 1);
            limited
                .read_to_end(&mut body)
                .await
                .map_err(|source| CallError::Io { what, source })?;
            if body.len() > MAX_BODY_BYTES {
                return Err(too_large(what));
            }
            body
        }
    };
    Ok(Answer {
        reply: Reply {
            status: head.status,
            body,
        },
        keep_alive: head.keep_alive && head.framing != Framing::UntilClose,
    })
}

fn too_large(what: &'static str) -> CallError {
    CallError::Decode {
        what,
        reason: format!("the body is larger than {MAX_BODY_BYTES} bytes"),
    }
}

/// Reads up to and including the empty line that ends the head.
async fn read_head<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    what: &'static str,
) -> Result<String, CallError> {
    let mut head = Vec::new();
    let mut limited = (&mut *reader).take(MAX_HEAD_BYTES);
    loop {
        let before = head.len();
        let n = limited
            .read_until(b'\n', &mut head)
            .await
            .map_err(|source| CallError::Io { what, source })?;
        if n == 0 {
            if limited.limit() == 0 {
                return Err(CallError::Decode {
                    what,
                    reason: format!("the response head is longer than {MAX_HEAD_BYTES} bytes"),
                });
            }
            return Err(CallError::Closed { what });
        }
        let line = &head[before..];
        if line == b"\r\n" || line == b"\n" {
            break;
        }
    }
    String::from_utf8(head).map_err(|_| CallError::Decode {
        what,
        reason: "the response head is not UTF-8".to_owned(),
    })
}

/// Parses the status line and the headers that matter here.
fn parse_head(text: &str) -> Result<Head, String> {
    let mut lines = text.lines();
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return Err(format!("not an HTTP/1.x status line: {status_line:?}"));
    }
    let status: u16 = parts
        .next()
        .and_then(|code| code.parse().ok())
        .filter(|code| (100..600).contains(code))
        .ok_or_else(|| format!("no valid status code in {status_line:?}"))?;
    let mut length: Option<usize> = None;
    let mut chunked = false;
    let mut keep_alive = version == "HTTP/1.1";
    for line in lines.filter(|line| !line.is_empty()) {
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| format!("malformed header line {line:?}"))?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            let parsed = value
                .parse::<usize>()
                .map_err(|_| format!("invalid content-length {value:?}"))?;
            if length.is_some_and(|earlier| earlier != parsed) {
                return Err("conflicting content-length headers".to_owned());
            }
            length = Some(parsed);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value
                .rsplit(',')
                .next()
                .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"));
            if !chunked {
                return Err(format!("unsupported transfer-encoding {value:?}"));
            }
        } else if name.eq_ignore_ascii_case("connection") {
            for token in value.split(',').map(str::trim) {
                if token.eq_ignore_ascii_case("close") {
                    keep_alive = false;
                } else if token.eq_ignore_ascii_case("keep-alive") {
                    keep_alive = true;
                }
            }
        }
    }
    let framing = if (100..200).contains(&status) || status == 204 || status == NOT_MODIFIED {
        Framing::None
    } else if chunked {
        Framing::Chunked
    } else {
        match length {
            Some(0) => Framing::None,
            Some(n) if n > MAX_BODY_BYTES => {
                return Err(format!("the body is larger than {MAX_BODY_BYTES} bytes"));
            }
            Some(n) => Framing::Length(n),
            None => Framing::UntilClose,
        }
    };
    Ok(Head {
        status,
        framing,
        keep_alive,
    })
}

async fn read_exact<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    length: usize,
    what: &'static str,
) -> Result<Vec<u8>, CallError> {
    let mut body = vec![0; length];
    reader
        .read_exact(&mut body)
        .await
        .map_err(|source| match source.kind() {
            std::io::ErrorKind::UnexpectedEof => CallError::Closed { what },
            _ => CallError::Io { what, source },
        })?;
    Ok(body)
}

/// Reads one line of at most 1 KiB (chunk sizes and trailers), without its line end.
async fn read_short_line<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    what: &'static str,
) -> Result<String, CallError> {
    let mut line = Vec::new();
    let n = (&mut *reader)
        .take(1024)
        .read_until(b'\n', &mut line)
        .await
        .map_err(|source| CallError::Io { what, source })?;
    if n == 0 || line.last() != Some(&b'\n') {
        return Err(CallError::Decode {
            what,
            reason: "a chunk header or trailer is cut off or longer than 1 KiB".to_owned(),
        });
    }
    let text = String::from_utf8_lossy(&line);
    Ok(text.trim_end_matches(['\r', '\n']).to_owned())
}

async fn read_chunked<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    what: &'static str,
) -> Result<Vec<u8>, CallError> {
    let mut body = Vec::new();
    loop {
        let line = read_short_line(reader, what).await?;
        let size_text = line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|_| CallError::Decode {
            what,
            reason: format!("invalid chunk size {size_text:?}"),
        })?;
        if size == 0 {
            // Trailers, up to the empty line.
            while !read_short_line(reader, what).await?.is_empty() {}
            return Ok(body);
        }
        if body.len().saturating_add(size) > MAX_BODY_BYTES {
            return Err(too_large(what));
        }
        let chunk = read_exact(reader, size, what).await?;
        body.extend_from_slice(&chunk);
        if !read_short_line(reader, what).await?.is_empty() {
            return Err(CallError::Decode {
                what,
                reason: "a chunk is longer than its size says".to_owned(),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_and_port() {
        assert_eq!(split_host_port("127.0.0.1:7443"), Some(("127.0.0.1", 7443)));
        assert_eq!(split_host_port("[::1]:7443"), Some(("[::1]", 7443)));
        assert_eq!(split_host_port("edge.example:1"), Some(("edge.example", 1)));
        assert_eq!(split_host_port("127.0.0.1"), None);
        assert_eq!(split_host_port("::1:7443"), None);
        assert_eq!(split_host_port(":7443"), None);
        assert_eq!(split_host_port("h:99999"), None);
    }

    #[tokio::test]
    async fn endpoints() {
        let endpoint = Endpoint::resolve("https://127.0.0.1:7443/").await.unwrap();
        assert_eq!(endpoint.base_url, "https://127.0.0.1:7443");
        assert_eq!(endpoint.addr, "127.0.0.1:7443".parse().unwrap());
        for (url, needle) in [
            ("http://127.0.0.1:1", "must start with https://"),
            ("https://127.0.0.1", "with a port number"),
            ("https://127.0.0.1:1/v1", "without a path"),
        ] {
            let error = Endpoint::resolve(url).await.unwrap_err().to_string();
            assert!(
                error.contains(needle) && error.contains(url),
                "{url}: {error}"
            );
        }
    }

    #[test]
    fn error_messages() {
        let body = br#"{"code":"not_found","message":"no such route","details":["a","b"]}"#;
        assert_eq!(error_message(body), "no such route (a; b)");
        assert_eq!(error_message(b""), "no details");
        assert_eq!(error_message(b" plain "), "plain");
    }

    async fn parse(raw: &[u8]) -> Result<(u16, String, bool), String> {
        let mut reader = BufReader::with_capacity(16, raw);
        read_response(&mut reader, "test")
            .await
            .map(|a| {
                (
                    a.reply.status,
                    String::from_utf8_lossy(&a.reply.body).into_owned(),
                    a.keep_alive,
                )
            })
            .map_err(|e| e.to_string())
    }

    #[tokio::test]
    async fn responses() {
        let ok = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nContent-Length: 11\r\n\r\n{\"ok\":true}";
        assert_eq!(parse(ok).await, Ok((200, "{\"ok\":true}".into(), true)));
        let not_modified = b"HTTP/1.1 304 Not Modified\r\ndate: x\r\n\r\n";
        assert_eq!(parse(not_modified).await, Ok((304, String::new(), true)));
        let chunked = b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n4;x=y\r\nabcd\r\n2\r\nef\r\n0\r\ntrailer: 1\r\n\r\n";
        assert_eq!(parse(chunked).await, Ok((404, "abcdef".into(), true)));
        let closing =
            b"HTTP/1.1 503 Unavailable\r\nconnection: close\r\ncontent-length: 2\r\n\r\nno";
        assert_eq!(parse(closing).await, Ok((503, "no".into(), false)));
        let until_close = b"HTTP/1.0 200 OK\r\n\r\nall of it";
        assert_eq!(
            parse(until_close).await,
            Ok((200, "all of it".into(), false))
        );
        let interim = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n";
        assert_eq!(parse(interim).await, Ok((204, String::new(), true)));
    }

    #[tokio::test]
    async fn bad_responses_are_errors() {
        let cases: [(&[u8], &str); 9] = [
            (b"", "closed the connection"),
            (
                b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nab",
                "closed the connection",
            ),
            (b"SSH-2.0-OpenSSH\r\n\r\n", "not an HTTP/1.x status line"),
            (b"HTTP/1.1 2000 OK\r\n\r\n", "no valid status code"),
            (
                b"HTTP/1.1 200 OK\r\nbroken\r\n\r\n",
                "malformed header line",
            ),
            (
                b"HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n",
                "invalid content-length",
            ),
            (
                b"HTTP/1.1 200 OK\r\ncontent-length: 99999999999\r\n\r\n",
                "larger than",
            ),
            (
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
                "invalid chunk size",
            ),
            (
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nabc\r\n0\r\n\r\n",
                "longer than its size",
            ),
        ];
        for (raw, needle) in cases {
            let error = parse(raw).await.unwrap_err();
            assert!(
                error.contains(needle),
                "{:?}: {error}",
                String::from_utf8_lossy(raw)
            );
        }
        let endless = [b"HTTP/1.1 200 OK\r\nx: ".as_slice(), &[b'a'; 20_000]].concat();
        let error = parse(&endless).await.unwrap_err();
        assert!(error.contains("head is longer than"), "{error}");
    }

    #[tokio::test]
    async fn requests() {
        let endpoint = Endpoint::resolve("https://127.0.0.1:7443").await.unwrap();
        let get = request_bytes(&endpoint, Method::Get, "/v1/ca", None);
        let text = String::from_utf8(get).unwrap();
        assert!(
            text.starts_with("GET /v1/ca HTTP/1.1\r\nhost: 127.0.0.1:7443\r\n"),
            "{text}"
        );
        assert!(
            text.ends_with("\r\n\r\n") && !text.contains("content-length"),
            "{text}"
        );
        let put = request_bytes(&endpoint, Method::Put, "/x", Some(b"{}".to_vec()));
        let text = String::from_utf8(put).unwrap();
        assert!(text.ends_with("content-length: 2\r\n\r\n{}"), "{text}");
    }
}
