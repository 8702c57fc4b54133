//! Sessions: work the server asks of an agent on an operator's behalf (today: streaming a
//! workload's logs), carried over connections the agent opens. The server never dials a
//! node.
//!
//! The agent long-polls `GET /v1/agent/sessions` for `SessionPoll`s; for each session it
//! streams its answer to `POST /v1/agent/sessions/{id}` as JSON lines (`LogFrame`), which
//! the server relays to the operator's `GET /v1/nodes/{node}/workloads/{workload}/logs`.

use serde::{Deserialize, Serialize};

use crate::Timestamp;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionPoll {
    pub sessions: Vec<AgentSession>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentSession {
    /// Random, unguessable; names the upload that answers it.
    pub id: String,
    pub request: SessionRequest,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum SessionRequest {
    Logs(LogRequest),
}

/// Which of a workload's output to send.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogRequest {
    pub workload: String,
    /// Keep sending new output until the operator goes away.
    #[serde(default)]
    pub follow: bool,
    /// Only lines written at or after this time.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub since: Option<Timestamp>,
    /// Only the last N lines (of what `since` selects), then follow.
    #[serde(default)]
    pub tail: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogStream {
    Stdout,
    Stderr,
}

impl LogStream {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stdout => "stdout",
            Self::Stderr => "stderr",
        }
    }
}

/// One line of a workload's output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    #[serde(with = "time::serde::rfc3339")]
    pub ts: Timestamp,
    pub stream: LogStream,
    /// The text, without its line ending; invalid UTF-8 is replaced.
    pub line: String,
}

/// One JSON line of a log stream: a line of output, or why there is no (more) output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum LogFrame {
    Line(LogLine),
    Error { message: String },
}
