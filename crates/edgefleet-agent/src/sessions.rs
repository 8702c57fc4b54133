//! Sessions: what operators ask of this node through the server (today: workload logs for
//! `edgefleet logs`), over connections the agent opens, since the server never dials a
//! node.
//!
//! `GET /v1/agent/sessions?wait_seconds=90` waits on the server until an operator opens a
//! session for this node, like the desired-state poll. Each session is answered by its
//! own `POST /v1/agent/sessions/{id}` whose body is streamed as JSON lines of `LogFrame`:
//! the stored lines asked for, then (when following) new lines as the workload writes
//! them. The server relays the body to the operator as it arrives, and ends the upload
//! when the operator goes away; that drops the body, which ends the session here. At most
//! `MAX_SESSIONS` run at once; one more is answered with an error frame.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use edgefleet_wire::session::{
    AgentSession, LogFrame, LogLine, LogRequest, SessionPoll, SessionRequest,
};
use futures_util::FutureExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinSet;
use tracing::{debug, error, info, warn};

use crate::channel::{CallError, ServerChannel, send_json, send_raw};
use crate::runtime::logs::{LogRegistry, WorkloadLogs};
use crate::shutdown::Shutdown;

/// How long the server holds a poll open.
pub const WAIT_SECONDS: u64 = 90;
/// The client gives up on a poll this much later than the server should have answered.
const POLL_SLACK: Duration = Duration::from_secs(15);
/// Sessions served at once.
pub const MAX_SESSIONS: usize = 8;
/// A chunk of the upload is sent once it holds this much (or nothing more is ready).
const CHUNK_BYTES: usize = 64 * 1024;
/// Chunks waiting to be sent: a slow operator slows reading, not memory.
const QUEUED_CHUNKS: usize = 4;
/// How long shutdown waits for sessions to end their uploads cleanly.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Polls for sessions and serves them until `shutdown`.
pub async fn run(channel: Arc<ServerChannel>, logs: LogRegistry, mut shutdown: Shutdown) {
    let slots = Arc::new(Semaphore::new(MAX_SESSIONS));
    let mut sessions = JoinSet::new();
    let mut failures = 0u32;
    loop {
        let result = tokio::select! {
            () = shutdown.wait() => break,
            result = poll(&channel) => result,
        };
        while sessions.try_join_next().is_some() {}
        let delay = match result {
            Ok(poll) => {
                if failures > 0 {
                    info!(failures, "session poll reached the server again");
                }
                failures = 0;
                for session in poll.sessions {
                    let slot = slots.clone().try_acquire_owned().ok();
                    sessions.spawn(serve(
                        channel.clone(),
                        logs.clone(),
                        session,
                        slot,
                        shutdown.clone(),
                    ));
                }
                None
            }
            Err(error) if error.is_auth() => {
                error!(%error, "the server refuses this node's certificate (revoked?); not serving sessions, retrying slowly");
                failures = failures.saturating_add(1);
                Some(crate::reconnect_delay(u32::MAX))
            }
            Err(error) => {
                let delay = crate::reconnect_delay(failures);
                debug!(%error, attempt = failures, retry_in_ms = delay.as_millis() as u64, "polling for sessions failed");
                failures = failures.saturating_add(1);
                Some(delay)
            }
        };
        if let Some(delay) = delay {
            tokio::select! {
                () = shutdown.wait() => break,
                () = tokio::time::sleep(delay) => {}
            }
        }
    }
    // Sessions see the shutdown themselves and end their uploads; give them a moment so
    // their operators see a clean end rather than a cut connection.
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while sessions.join_next().await.is_some() {}
    })
    .await;
}

async fn poll(channel: &ServerChannel) -> Result<SessionPoll, CallError> {
    let request = channel
        .client()
        .get(channel.url(&format!("/v1/agent/sessions?wait_seconds={WAIT_SECONDS}")))
        .timeout(Duration::from_secs(WAIT_SECONDS) + POLL_SLACK);
    send_json(request).await
}

/// Answers one session: streams its frames as the body of the upload until they end, the
/// server ends the upload (operator gone), or the agent shuts down.
async fn serve(
    channel: Arc<ServerChannel>,
    logs: LogRegistry,
    session: AgentSession,
    slot: Option<OwnedSemaphorePermit>,
    shutdown: Shutdown,
) {
    let (chunks, body) = mpsc::channel::<Bytes>(QUEUED_CHUNKS);
    let body = futures_util::stream::unfold(body, |mut body| async move {
        body.recv()
            .await
            .map(|chunk| (Ok::<_, std::convert::Infallible>(chunk), body))
    });
    let upload = send_raw(
        channel
            .client()
            .post(channel.url(&format!("/v1/agent/sessions/{}", session.id)))
            .header(reqwest::header::CONTENT_TYPE, "application/x-ndjson")
            .body(reqwest::Body::wrap_stream(body)),
    );
    let frames = async {
        let mut out = Frames::new(chunks);
        match slot {
            Some(_slot) => {
                answer(&logs, channel.node(), &session.request, &mut out, shutdown).await
            }
            None => out.error(format!(
                "node {:?} is already serving {MAX_SESSIONS} sessions; try again when one ends",
                channel.node()
            )),
        }
        out.finish().await;
    };
    let ((), uploaded) = tokio::join!(frames, upload);
    if let Err(error) = uploaded {
        // The operator may simply have gone away; nothing here can be retried.
        debug!(session = %session.id, %error, "session upload ended with an error");
    }
}

async fn answer(
    logs: &LogRegistry,
    node: &str,
    request: &SessionRequest,
    out: &mut Frames,
    mut shutdown: Shutdown,
) {
    let SessionRequest::Logs(request) = request;
    let Some(workload) = logs.existing(&request.workload) else {
        out.error(unknown_workload(logs, node, &request.workload));
        return;
    };
    if !request.follow {
        stored_lines(&workload, request, out).await;
        return;
    }
    let mut follower = match workload.follow(request.since, request.tail).await {
        Ok(follower) => follower,
        Err(error) => {
            out.error(format!(
                "cannot read the logs of workload {:?}: {error}",
                request.workload
            ));
            return;
        }
    };
    loop {
        if out.ready() && !out.flush().await {
            return;
        }
        tokio::select! {
            () = shutdown.wait() => {
                out.error(format!("the agent on node {node:?} is shutting down"));
                return;
            }
            () = out.closed() => return,
            line = follower.next() => match line {
                Some(line) => {
                    out.line(line);
                    // Take whatever else is ready without waiting, to send it in one chunk.
                    while out.pending_bytes() < CHUNK_BYTES {
                        match follower.next().now_or_never() {
                            Some(Some(line)) => out.line(line),
                            _ => break,
                        }
                    }
                    if !out.flush().await {
                        return;
                    }
                }
                None => return,
            },
        }
    }
}

async fn stored_lines(workload: &WorkloadLogs, request: &LogRequest, out: &mut Frames) {
    let reader = workload.clone();
    let (since, tail) = (request.since, request.tail);
    match tokio::task::spawn_blocking(move || reader.read(since, tail)).await {
        Ok(Ok(lines)) => {
            for line in lines {
                out.line(line);
                if out.ready() && !out.flush().await {
                    return;
                }
            }
        }
        Ok(Err(error)) => out.error(format!(
            "cannot read the logs of workload {:?}: {error}",
            request.workload
        )),
        Err(error) => out.error(format!(
            "reading the logs of workload {:?} failed: {error}",
            request.workload
        )),
    }
}

fn unknown_workload(logs: &LogRegistry, node: &str, workload: &str) -> String {
    let names = logs.workload_names();
    if names.is_empty() {
        format!(
            "node {node:?} has no logs of workload {workload:?} (no such workload, or it has not started yet); no workload there has logs yet"
        )
    } else {
        format!(
            "node {node:?} has no logs of workload {workload:?} (no such workload, or it has not started yet); workloads with logs there: {}",
            names.join(", ")
        )
    }
}

/// The upload's frames, encoded as JSON lines and sent in chunks.
struct Frames {
    chunks: mpsc::Sender<Bytes>,
    pending: Vec<u8>,
    /// The server stopped taking the upload: nothing more is encoded.
    gone: bool,
}

impl Frames {
    fn new(chunks: mpsc::Sender<Bytes>) -> Self {
        Self {
            chunks,
            pending: Vec::new(),
            gone: false,
        }
    }

    fn line(&mut self, line: LogLine) {
        self.push(&LogFrame::Line(line));
    }

    fn error(&mut self, message: String) {
        debug!(%message, "answering a session with an error");
        self.push(&LogFrame::Error { message });
    }

    fn push(&mut self, frame: &LogFrame) {
        if self.gone {
            return;
        }
        match serde_json::to_writer(&mut self.pending, frame) {
            Ok(()) => self.pending.push(b'\n'),
            Err(error) => warn!(%error, "cannot encode a log frame"),
        }
    }

    fn pending_bytes(&self) -> usize {
        self.pending.len()
    }

    /// Enough is pending for a chunk.
    fn ready(&self) -> bool {
        self.pending.len() >= CHUNK_BYTES
    }

    /// Sends what is pending. False when the upload is gone.
    async fn flush(&mut self) -> bool {
        if self.gone {
            return false;
        }
        if self.pending.is_empty() {
            return true;
        }
        let chunk = Bytes::from(std::mem::take(&mut self.pending));
        if self.chunks.send(chunk).await.is_err() {
            self.gone = true;
        }
        !self.gone
    }

    /// Resolves when the upload is gone (the server ended it).
    async fn closed(&self) {
        self.chunks.closed().await;
    }

    async fn finish(mut self) {
        self.flush().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgefleet_wire::session::LogStream;

    fn logs_request(workload: &str, follow: bool, tail: Option<u64>) -> SessionRequest {
        SessionRequest::Logs(LogRequest {
            workload: workload.into(),
            follow,
            since: None,
            tail,
        })
    }

    /// The frames of the chunks received so far, waiting for at least `n`.
    async fn frames(body: &mut mpsc::Receiver<Bytes>, n: usize) -> Vec<LogFrame> {
        let mut frames = Vec::new();
        while frames.len() < n {
            let chunk = tokio::time::timeout(Duration::from_secs(5), body.recv())
                .await
                .expect("a chunk within 5 s")
                .expect("the upload ended early");
            for line in chunk.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                frames.push(serde_json::from_slice(line).unwrap());
            }
        }
        frames
    }

    fn text(frame: &LogFrame) -> &str {
        match frame {
            LogFrame::Line(line) => &line.line,
            LogFrame::Error { message } => message,
        }
    }

    #[tokio::test]
    async fn an_unknown_workload_is_answered_with_the_ones_that_exist() {
        let dir = tempfile::tempdir().unwrap();
        let registry = LogRegistry::new(dir.path().to_owned(), 1 << 20, 1);
        registry.workload("web").write(LogStream::Stdout, b"x\n");
        registry.workload("db").write(LogStream::Stdout, b"x\n");
        let (_trigger, shutdown) = crate::shutdown::channel();
        let (chunks, mut body) = mpsc::channel(4);
        let mut out = Frames::new(chunks);
        answer(
            &registry,
            "edge-1",
            &logs_request("nope", false, None),
            &mut out,
            shutdown,
        )
        .await;
        out.finish().await;
        let frames = frames(&mut body, 1).await;
        assert_eq!(
            frames,
            [LogFrame::Error {
                message: "node \"edge-1\" has no logs of workload \"nope\" (no such workload, or \
                          it has not started yet); workloads with logs there: db, web"
                    .into()
            }]
        );
        assert!(body.recv().await.is_none(), "the upload ends");
    }

    #[tokio::test]
    async fn stored_lines_are_sent_and_the_upload_ends() {
        let dir = tempfile::tempdir().unwrap();
        let registry = LogRegistry::new(dir.path().to_owned(), 1 << 20, 1);
        let web = registry.workload("web");
        for i in 0..5 {
            web.write(LogStream::Stdout, format!("line {i}\n").as_bytes());
        }
        let (_trigger, shutdown) = crate::shutdown::channel();
        let (chunks, mut body) = mpsc::channel(4);
        let mut out = Frames::new(chunks);
        answer(
            &registry,
            "edge-1",
            &logs_request("web", false, Some(2)),
            &mut out,
            shutdown,
        )
        .await;
        out.finish().await;
        let frames = frames(&mut body, 2).await;
        assert_eq!(
            frames.iter().map(text).collect::<Vec<_>>(),
            ["line 3", "line 4"]
        );
        assert!(body.recv().await.is_none(), "the upload ends");
    }

    #[tokio::test]
    async fn a_follow_sends_new_lines_until_the_upload_or_the_agent_goes() {
        let dir = tempfile::tempdir().unwrap();
        let registry = LogRegistry::new(dir.path().to_owned(), 1 << 20, 1);
        let web = registry.workload("web");
        web.write(LogStream::Stdout, b"old\n");

        // The server ends the upload: the session ends.
        let (_trigger, shutdown) = crate::shutdown::channel();
        let (chunks, mut body) = mpsc::channel(4);
        let session = tokio::spawn({
            let registry = registry.clone();
            async move {
                let mut out = Frames::new(chunks);
                answer(
                    &registry,
                    "edge-1",
                    &logs_request("web", true, None),
                    &mut out,
                    shutdown,
                )
                .await;
            }
        });
        assert_eq!(text(&frames(&mut body, 1).await[0]), "old");
        web.write(LogStream::Stderr, b"new\n");
        assert_eq!(text(&frames(&mut body, 1).await[0]), "new");
        drop(body);
        tokio::time::timeout(Duration::from_secs(5), session)
            .await
            .expect("the session ends with its upload")
            .unwrap();

        // The agent shuts down: the session says so and ends.
        let (trigger, shutdown) = crate::shutdown::channel();
        let (chunks, mut body) = mpsc::channel(4);
        let session = tokio::spawn({
            let registry = registry.clone();
            async move {
                let mut out = Frames::new(chunks);
                answer(
                    &registry,
                    "edge-1",
                    &logs_request("web", true, Some(0)),
                    &mut out,
                    shutdown,
                )
                .await;
                out.finish().await;
            }
        });
        tokio::task::yield_now().await;
        trigger.trigger();
        let frames = frames(&mut body, 1).await;
        assert_eq!(
            frames,
            [LogFrame::Error {
                message: "the agent on node \"edge-1\" is shutting down".into()
            }]
        );
        tokio::time::timeout(Duration::from_secs(5), session)
            .await
            .unwrap()
            .unwrap();
        assert!(body.recv().await.is_none());
    }
}
