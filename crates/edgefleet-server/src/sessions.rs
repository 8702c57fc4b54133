//! Sessions: work an operator asks of a node's agent (today: its workload logs), carried
//! over connections the agent opens, since the server never dials a node.
//!
//! An operator request `open`s a session: it is queued for its node and wakes the node's
//! pending `GET /v1/agent/sessions` long poll, which hands it to the agent. The agent
//! answers with `POST /v1/agent/sessions/{id}`, which `attach`es to the session and gets
//! the sending half of a relay whose receiving half is the operator's response body.
//!
//! A session lives only while its operator waits: the `Ticket` the operator's handler
//! holds removes it (queued or not yet attached) when dropped, so a session nobody picks
//! up expires with the operator's wait, and one whose operator went away cannot be
//! attached. Once attached, either side going away ends the relay: the agent's upload
//! ends when the operator's response body is dropped, and the operator's response ends
//! when the upload does.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};

use axum::body::Bytes;
use edgefleet_wire::session::{AgentSession, SessionRequest};
use hyper::body::Frame;
use tokio::sync::{Notify, mpsc, oneshot};

/// Sessions waiting for one node's agent at once; more are refused. An agent serves at
/// most 8 at a time, so this is room for a burst, not for a queue.
pub const MAX_WAITING_PER_NODE: usize = 16;

/// Chunks buffered between the agent's upload and the operator's response: a slow
/// operator slows the agent's upload instead of growing the server's memory.
const RELAY_CHUNKS: usize = 16;

/// The open sessions of every node. Cheap to share; held in the server state.
#[derive(Debug, Default)]
pub struct Sessions {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Per node: sessions not yet handed to its agent, and the wake-up of its polls.
    nodes: HashMap<String, NodeQueue>,
    /// Every session not yet attached, handed out or not, by id.
    waiting: HashMap<String, Waiting>,
}

#[derive(Debug, Default)]
struct NodeQueue {
    queued: Vec<AgentSession>,
    wake: Arc<Notify>,
}

#[derive(Debug)]
struct Waiting {
    node: String,
    /// Given to the agent's upload when it attaches.
    relay: mpsc::Sender<Bytes>,
    /// Tells the operator's handler that the agent attached.
    attached: oneshot::Sender<()>,
}

/// Why an upload cannot attach to a session.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AttachError {
    #[error(
        "no session {id:?} is waiting for node {node:?}: it expired (its operator stopped waiting) or was answered already"
    )]
    NotWaiting { id: String, node: String },
}

/// Why a session cannot be opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    #[error(
        "node {node:?} already has {MAX_WAITING_PER_NODE} sessions waiting for its agent; try again shortly"
    )]
    TooMany { node: String },
}

impl Sessions {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `request` for `node`'s agent and wakes its poll.
    pub fn open(
        self: &Arc<Self>,
        node: &str,
        request: SessionRequest,
    ) -> Result<Ticket, OpenError> {
        let id = hex::encode(rand::random::<[u8; 16]>());
        let (relay, output) = mpsc::channel(RELAY_CHUNKS);
        let (attached, attached_rx) = oneshot::channel();
        let mut inner = self.lock();
        let waiting_here = inner.waiting.values().filter(|w| w.node == node).count();
        if waiting_here >= MAX_WAITING_PER_NODE {
            return Err(OpenError::TooMany {
                node: node.to_owned(),
            });
        }
        inner.waiting.insert(
            id.clone(),
            Waiting {
                node: node.to_owned(),
                relay,
                attached,
            },
        );
        let queue = inner.nodes.entry(node.to_owned()).or_default();
        queue.queued.push(AgentSession {
            id: id.clone(),
            request,
        });
        queue.wake.notify_waiters();
        Ok(Ticket {
            sessions: self.clone(),
            id,
            node: node.to_owned(),
            attached: Some(attached_rx),
            output: Some(output),
        })
    }

    /// What wakes `node`'s polls when a session is queued for it. Hold it only while
    /// polling, then call `forget_idle`.
    pub fn waker(&self, node: &str) -> Arc<Notify> {
        self.lock()
            .nodes
            .entry(node.to_owned())
            .or_default()
            .wake
            .clone()
    }

    /// Hands `node`'s queued sessions to its agent.
    pub fn take(&self, node: &str) -> Vec<AgentSession> {
        self.lock()
            .nodes
            .get_mut(node)
            .map(|queue| std::mem::take(&mut queue.queued))
            .unwrap_or_default()
    }

    /// Drops `node`'s entry when nothing is queued and no poll holds its waker, so the map
    /// holds only nodes with something going on.
    pub fn forget_idle(&self, node: &str) {
        let mut inner = self.lock();
        if inner
            .nodes
            .get(node)
            .is_some_and(|queue| queue.queued.is_empty() && Arc::strong_count(&queue.wake) == 1)
        {
            inner.nodes.remove(node);
        }
    }

    /// Attaches `node`'s upload to session `id`: the relay to send its output into.
    pub fn attach(&self, node: &str, id: &str) -> Result<mpsc::Sender<Bytes>, AttachError> {
        let mut inner = self.lock();
        let not_waiting = || AttachError::NotWaiting {
            id: id.to_owned(),
            node: node.to_owned(),
        };
        // Another node's session is "not waiting" for this one: its id tells the caller
        // nothing either way.
        if inner
            .waiting
            .get(id)
            .is_none_or(|waiting| waiting.node != node)
        {
            return Err(not_waiting());
        }
        let waiting = inner.waiting.remove(id).ok_or_else(not_waiting)?;
        if let Some(queue) = inner.nodes.get_mut(node) {
            queue.queued.retain(|session| session.id != id);
        }
        // The operator may have gone in between; the closed relay tells the upload.
        let _ = waiting.attached.send(());
        Ok(waiting.relay)
    }

    /// Removes session `id` if it is still waiting (its operator gave up).
    fn expire(&self, node: &str, id: &str) {
        let mut inner = self.lock();
        inner.waiting.remove(id);
        if let Some(queue) = inner.nodes.get_mut(node) {
            queue.queued.retain(|session| session.id != id);
        }
        drop(inner);
        self.forget_idle(node);
    }

    #[cfg(test)]
    fn n_waiting(&self) -> usize {
        self.lock().waiting.len()
    }
}

/// An operator's open session. Dropping it before the agent attached expires the session.
#[derive(Debug)]
pub struct Ticket {
    sessions: Arc<Sessions>,
    id: String,
    node: String,
    attached: Option<oneshot::Receiver<()>>,
    output: Option<mpsc::Receiver<Bytes>>,
}

impl Ticket {
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Waits for the agent to attach, then gives what it sends. `None` if the session
    /// expired instead (only through `Drop`, so in practice never) or was already taken.
    pub async fn attached(&mut self) -> Option<Relay> {
        let attached = self.attached.take()?;
        attached.await.ok()?;
        self.output.take().map(|output| Relay { output })
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.sessions.expire(&self.node, &self.id);
    }
}

/// What the agent sends, as an HTTP body for the operator's response. Dropping it (the
/// operator went away) closes the relay, which ends the agent's upload.
#[derive(Debug)]
pub struct Relay {
    output: mpsc::Receiver<Bytes>,
}

impl axum::body::HttpBody for Relay {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.output
            .poll_recv(cx)
            .map(|chunk| chunk.map(|bytes| Ok(Frame::data(bytes))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::HttpBody;
    use edgefleet_wire::session::LogRequest;

    fn logs(workload: &str) -> SessionRequest {
        SessionRequest::Logs(LogRequest {
            workload: workload.into(),
            follow: false,
            since: None,
            tail: None,
        })
    }

    #[tokio::test]
    async fn a_queued_session_wakes_the_poll_and_relays_once_attached() {
        let sessions = Arc::new(Sessions::new());
        let wake = sessions.waker("edge-1");
        let notified = wake.notified();
        let mut ticket = sessions.open("edge-1", logs("web")).unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(5), notified)
            .await
            .unwrap();
        let taken = sessions.take("edge-1");
        assert_eq!(taken.len(), 1);
        assert_eq!(taken[0].id, ticket.id());
        assert!(sessions.take("edge-1").is_empty(), "handed out once");

        let error = sessions.attach("edge-2", ticket.id()).unwrap_err();
        assert!(error.to_string().contains("edge-2"), "{error}");
        let relay = sessions.attach("edge-1", ticket.id()).unwrap();
        assert!(
            sessions.attach("edge-1", ticket.id()).is_err(),
            "attached once"
        );
        let mut output = ticket.attached().await.unwrap();
        relay.send(Bytes::from_static(b"line\n")).await.unwrap();
        let frame = std::future::poll_fn(|cx| Pin::new(&mut output).poll_frame(cx))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(frame.into_data().unwrap(), "line\n");
        drop(output);
        assert!(
            relay.is_closed(),
            "the operator going away closes the relay"
        );
    }

    #[tokio::test]
    async fn a_session_nobody_picks_up_expires_with_its_ticket() {
        let sessions = Arc::new(Sessions::new());
        let ticket = sessions.open("edge-1", logs("web")).unwrap();
        let id = ticket.id().to_owned();
        drop(ticket);
        assert_eq!(sessions.n_waiting(), 0);
        assert!(sessions.take("edge-1").is_empty());
        assert!(sessions.attach("edge-1", &id).is_err());
        assert!(sessions.lock().nodes.is_empty(), "idle nodes are forgotten");
    }

    #[test]
    fn waiting_sessions_per_node_are_bounded() {
        let sessions = Arc::new(Sessions::new());
        let tickets: Vec<_> = (0..MAX_WAITING_PER_NODE)
            .map(|_| sessions.open("edge-1", logs("web")).unwrap())
            .collect();
        let error = sessions.open("edge-1", logs("web")).unwrap_err();
        assert!(error.to_string().contains("edge-1"), "{error}");
        assert!(sessions.open("edge-2", logs("web")).is_ok());
        drop(tickets);
        assert!(sessions.open("edge-1", logs("web")).is_ok());
    }
}
