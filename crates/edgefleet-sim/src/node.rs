//! One simulated node at run time: its link conditions, its state, and the task that
//! speaks the agent protocol.
//!
//! Each node keeps a single keep-alive connection and uses it in rounds:
//!
//! 1. scripted crashes that are due happen (`NodeModel::advance`);
//! 2. a heartbeat when one is due (every `heartbeat_interval`), and with it a status report,
//!    as the real agent does;
//! 3. a status report whenever what it would say changed (a new desired state applied,
//!    a crash, a lock);
//! 4. undelivered flight-recorder events (`POST /v1/agent/events`; a 404 from a server
//!    without that route pauses event delivery for a minute, quietly);
//! 5. the long poll `GET /v1/agent/desired`, held until the next heartbeat or scripted
//!    crash is due (at most 30 s).
//!
//! The real agent holds its poll on one connection and reports on a second one. The
//! simulator keeps one per node instead, so ten thousand nodes need ten thousand sockets on
//! each side, not twenty; the price is one extra (cheap, 304) poll per heartbeat interval.
//! A change the node cannot fit into a round (a test holds or releases an update lock
//! while the poll is open) is reported at once on a short-lived second connection.
//!
//! On any network error the node drops its connection and retries with jittered
//! exponential backoff (`Backoff::RECONNECT`), like the agent. Offline means no traffic at
//! all: the connection is closed at once and nothing is sent until the node is back.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use edgefleet_core::backoff::Backoff;
use edgefleet_wire::Timestamp;
use edgefleet_wire::api::{DesiredState, Heartbeat};
use edgefleet_wire::node::EventsAck;
use serde::Serialize;
use time::OffsetDateTime;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use crate::http::{
    CallError, Connection, Endpoint, METHOD_NOT_ALLOWED, Method, NOT_FOUND, NOT_MODIFIED, Reply,
    Request,
};
use crate::model::NodeModel;

/// The longest the server is asked to hold a poll, as the agent does.
pub const MAX_POLL_WAIT: Duration = Duration::from_secs(30);
/// The client gives up on a poll this much later than the server should have answered.
const POLL_SLACK: Duration = Duration::from_secs(15);
/// Limit for every request that is not a long poll.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long event delivery pauses after the server said it has no events route.
const EVENTS_PAUSE: Duration = Duration::from_secs(60);
/// Event batches sent per round at most; the rest go in the next rounds.
const EVENT_BATCHES_PER_ROUND: usize = 4;

/// Settings shared by every node of a simulator.
#[derive(Debug)]
pub struct Shared {
    pub endpoint: Endpoint,
    pub heartbeat_interval: Duration,
    pub shutdown: watch::Receiver<bool>,
}

/// Link conditions, changed from the simulator handle while the node runs.
#[derive(Debug)]
pub struct Link {
    online: AtomicBool,
    latency_micros: AtomicU64,
    /// Loss probability in parts per million.
    loss_ppm: AtomicU32,
}

/// Which half of an exchange the simulated link lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Loss {
    Request,
    Response,
}

impl Link {
    fn new() -> Self {
        Self {
            online: AtomicBool::new(true),
            latency_micros: AtomicU64::new(0),
            loss_ppm: AtomicU32::new(0),
        }
    }

    pub fn is_online(&self) -> bool {
        self.online.load(Ordering::Relaxed)
    }

    pub fn latency(&self) -> Duration {
        Duration::from_micros(self.latency_micros.load(Ordering::Relaxed))
    }

    pub fn loss(&self) -> f64 {
        f64::from(self.loss_ppm.load(Ordering::Relaxed)) / 1e6
    }

    fn roll_loss(&self) -> Option<Loss> {
        let ppm = self.loss_ppm.load(Ordering::Relaxed);
        if ppm == 0 || rand::random_range(0..1_000_000u32) >= ppm {
            return None;
        }
        Some(if rand::random::<bool>() {
            Loss::Request
        } else {
            Loss::Response
        })
    }
}

/// What the node's task and the simulator handle share.
#[derive(Debug)]
pub struct NodeState {
    pub model: NodeModel,
    /// The last exchange with the server succeeded.
    pub reachable: bool,
    /// The last failure, for inspection.
    pub last_error: Option<String>,
}

/// One simulated node.
#[derive(Debug)]
pub struct NodeHandle {
    /// 1-based, as in the name.
    pub number: u32,
    pub name: Box<str>,
    tls: Arc<rustls::ClientConfig>,
    certificate_not_after: Timestamp,
    pub link: Link,
    wake: Notify,
    state: Mutex<NodeState>,
}

impl NodeHandle {
    pub fn new(
        number: u32,
        name: &str,
        tls: Arc<rustls::ClientConfig>,
        certificate_not_after: Timestamp,
    ) -> Self {
        Self {
            number,
            name: name.into(),
            tls,
            certificate_not_after,
            link: Link::new(),
            wake: Notify::new(),
            state: Mutex::new(NodeState {
                model: NodeModel::new(),
                reachable: false,
                last_error: None,
            }),
        }
    }

    pub fn state(&self) -> MutexGuard<'_, NodeState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes the node off the network (`false`) or puts it back.
    pub fn set_online(&self, online: bool) {
        if self.link.online.swap(online, Ordering::Relaxed) != online {
            self.wake.notify_one();
        }
    }

    pub fn set_latency(&self, latency: Duration) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.link.latency_micros.store(micros, Ordering::Relaxed);
    }

    /// `probability` must be within [0, 1] (checked by the caller).
    pub fn set_loss(&self, probability: f64) {
        let ppm = (probability.clamp(0.0, 1.0) * 1e6).round() as u32;
        self.link.loss_ppm.store(ppm, Ordering::Relaxed);
    }

    /// Holds an update lock; the change is reported at once. False if already held.
    pub fn hold_lock(&self, workload: &str, reason: &str) -> bool {
        let held = self
            .state()
            .model
            .hold_lock(workload, reason, OffsetDateTime::now_utc());
        if held {
            self.wake.notify_one();
        }
        held
    }

    /// Releases an update lock; the change is reported at once. False if none was held.
    pub fn release_lock(&self, workload: &str) -> bool {
        let released = self
            .state()
            .model
            .release_lock(workload, OffsetDateTime::now_utc());
        if released {
            self.wake.notify_one();
        }
        released
    }
}

/// Runs the node until the simulator shuts down.
pub async fn run(node: Arc<NodeHandle>, shared: Arc<Shared>) {
    let mut shutdown = shared.shutdown.clone();
    let mut session = Session::new(&node, &shared);
    node.state().model.started(OffsetDateTime::now_utc());
    let mut failures = 0u32;
    loop {
        if *shutdown.borrow() {
            return;
        }
        if !node.link.is_online() {
            session.connection = None;
            node.state().reachable = false;
            tokio::select! {
                () = node.wake.notified() => continue,
                _ = shutdown.changed() => return,
            }
        }
        // Shutdown drops the round wherever it is, open poll included.
        let result = tokio::select! {
            result = session.round() => result,
            _ = shutdown.changed() => return,
        };
        let error = match result {
            Ok(()) => {
                failures = 0;
                continue;
            }
            Err(error) => error,
        };
        session.connection = None;
        session.status_due = true;
        if matches!(error, CallError::Offline { .. }) {
            continue;
        }
        let delay = if error.is_auth() {
            Backoff::RECONNECT.cap
        } else {
            Backoff::RECONNECT.jittered(failures, rand::random::<f64>())
        };
        // Per-node failures are routine (a server restart fails every node at once); the
        // fleet summary shows how many nodes are unreachable.
        tracing::debug!(node = %node.name, %error, attempt = failures, retry_in_ms = delay.as_millis() as u64, "exchange with the server failed");
        {
            let mut state = node.state();
            state.reachable = false;
            state.last_error = Some(error.to_string());
        }
        failures = failures.saturating_add(1);
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = node.wake.notified() => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// The task-local side of a node: its connection and schedule.
struct Session<'a> {
    node: &'a NodeHandle,
    shared: &'a Shared,
    connection: Option<Connection>,
    known_generation: u64,
    next_heartbeat: Instant,
    /// The model version last reported; `None` before the first report.
    reported_version: Option<u64>,
    /// Report even if nothing changed (with a heartbeat, after a reconnect).
    status_due: bool,
    events_paused_until: Option<Instant>,
}

impl<'a> Session<'a> {
    fn new(node: &'a NodeHandle, shared: &'a Shared) -> Self {
        Self {
            node,
            shared,
            connection: None,
            known_generation: 0,
            next_heartbeat: Instant::now(),
            reported_version: None,
            status_due: true,
            events_paused_until: None,
        }
    }

    async fn round(&mut self) -> Result<(), CallError> {
        self.node.state().model.advance(OffsetDateTime::now_utc());
        if Instant::now() >= self.next_heartbeat {
            self.heartbeat().await?;
            self.next_heartbeat = Instant::now() + self.shared.heartbeat_interval;
            self.status_due = true;
        }
        self.report_if_needed().await?;
        self.send_events().await?;
        self.poll().await
    }

    async fn heartbeat(&mut self) -> Result<(), CallError> {
        let what = "heartbeat";
        let applied_generation = self.node.state().model.applied_generation();
        let body = json(&Heartbeat { applied_generation }, what)?;
        self.call(Request::with_json(
            Method::Post,
            "/v1/agent/heartbeat",
            body,
            REQUEST_TIMEOUT,
            what,
        ))
        .await?;
        Ok(())
    }

    async fn report_if_needed(&mut self) -> Result<(), CallError> {
        let (version, body) = {
            let state = self.node.state();
            let version = state.model.version();
            if !self.status_due && self.reported_version == Some(version) {
                return Ok(());
            }
            let report = state.model.report(
                &self.node.name,
                Some(self.node.certificate_not_after),
                OffsetDateTime::now_utc(),
            );
            (version, json(&report, "status report")?)
        };
        self.call(Request::with_json(
            Method::Put,
            "/v1/agent/status",
            body,
            REQUEST_TIMEOUT,
            "status report",
        ))
        .await?;
        self.reported_version = Some(version);
        self.status_due = false;
        Ok(())
    }

    async fn send_events(&mut self) -> Result<(), CallError> {
        let what = "events";
        for _ in 0..EVENT_BATCHES_PER_ROUND {
            if self
                .events_paused_until
                .is_some_and(|until| Instant::now() < until)
            {
                return Ok(());
            }
            let Some(batch) = self
                .node
                .state()
                .model
                .event_batch(OffsetDateTime::now_utc())
            else {
                return Ok(());
            };
            let last_seq = batch.events.last().map_or(0, |e| e.seq);
            let body = json(&batch, what)?;
            let request = Request::with_json(
                Method::Post,
                "/v1/agent/events",
                body,
                REQUEST_TIMEOUT,
                what,
            );
            match self.call(request).await {
                Ok(reply) => {
                    let ack: EventsAck = reply.json(what)?;
                    self.node.state().model.events_stored(ack.stored_through);
                    if ack.stored_through < last_seq {
                        return Ok(());
                    }
                }
                Err(error) if matches!(error.status(), Some(NOT_FOUND | METHOD_NOT_ALLOWED)) => {
                    // A server without the events route yet: keep the events (bounded)
                    // and try again later.
                    self.events_paused_until = Some(Instant::now() + EVENTS_PAUSE);
                    return Ok(());
                }
                Err(error) if error.is_permanent() && !error.is_auth() => {
                    // The server refuses these events; resending them cannot help.
                    tracing::warn!(node = %self.node.name, %error, "the server refused a batch of events; dropping it");
                    self.node.state().model.events_stored(last_seq);
                }
                Err(error) => return Err(error),
            }
        }
        Ok(())
    }

    /// How long the server may hold the poll: until the next heartbeat or scripted crash
    /// is due, at most `MAX_POLL_WAIT`, in whole seconds (rounded up, at least one).
    fn poll_wait(&self) -> Duration {
        let now = Instant::now();
        let mut wait = MAX_POLL_WAIT.min(self.next_heartbeat.saturating_duration_since(now));
        if let Some(deadline) = self.node.state().model.next_deadline() {
            let until = deadline - OffsetDateTime::now_utc();
            wait = wait.min(until.try_into().unwrap_or(Duration::ZERO));
        }
        let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        Duration::from_secs(seconds.max(1))
    }

    async fn poll(&mut self) -> Result<(), CallError> {
        let what = "desired-state poll";
        let wait = self.poll_wait();
        let path = format!(
            "/v1/agent/desired?known_generation={}&wait_seconds={}",
            self.known_generation,
            wait.as_secs()
        );
        let mut connection = self.take_connection(what).await?;
        // Copies of the shared references, so the open exchange does not borrow `self`.
        let (node, shared) = (self.node, self.shared);
        let reply = {
            let exchange = send_over_link(
                &node.link,
                &mut connection,
                &shared.endpoint,
                Request::get(&path, wait + POLL_SLACK, what),
            );
            let mut exchange = std::pin::pin!(exchange);
            loop {
                tokio::select! {
                    reply = &mut exchange => break reply,
                    () = node.wake.notified() => {
                        if !node.link.is_online() {
                            // Dropping the exchange and the connection: no more traffic.
                            return Ok(());
                        }
                        // Boxed: rare, and its state would otherwise live in every
                        // node's task all the time.
                        Box::pin(self.report_on_the_side()).await;
                    }
                }
            }
        }?;
        self.connection = Some(connection);
        self.node.state().reachable = true;
        if reply.status == NOT_MODIFIED {
            return Ok(());
        }
        let desired: DesiredState = reply.json(what)?;
        if desired.node != *self.node.name {
            return Err(CallError::Decode {
                what,
                reason: format!(
                    "the desired state is addressed to node {:?}, not {:?}",
                    desired.node, self.node.name
                ),
            });
        }
        self.node
            .state()
            .model
            .apply(&self.node.name, &desired, OffsetDateTime::now_utc());
        self.known_generation = desired.generation;
        Ok(())
    }

    /// Reports a change that happened while the poll is open, on a second connection
    /// that is closed right after. A failure leaves the report to the next round.
    async fn report_on_the_side(&mut self) {
        if self.reported_version == Some(self.node.state().model.version()) {
            return;
        }
        let main = self.connection.take();
        let result = async {
            self.connection = Some(
                Connection::open(
                    &self.shared.endpoint,
                    self.node.tls.clone(),
                    "status report",
                )
                .await?,
            );
            self.report_if_needed().await?;
            self.send_events().await
        }
        .await;
        if let Err(error) = result {
            tracing::debug!(node = %self.node.name, %error, "reporting a change during the poll failed; it goes with the next round");
        }
        self.connection = main;
    }

    async fn take_connection(&mut self, what: &'static str) -> Result<Connection, CallError> {
        match self.connection.take() {
            Some(connection) if connection.is_usable() => Ok(connection),
            _ => {
                if !self.node.link.is_online() {
                    return Err(CallError::Offline { what });
                }
                Box::pin(Connection::open(
                    &self.shared.endpoint,
                    self.node.tls.clone(),
                    what,
                ))
                .await
            }
        }
    }

    /// One request over the node's connection (opened when needed), through its link.
    async fn call(&mut self, request: Request<'_>) -> Result<Reply, CallError> {
        let mut connection = self.take_connection(request.what).await?;
        let reply = send_over_link(
            &self.node.link,
            &mut connection,
            &self.shared.endpoint,
            request,
        )
        .await;
        // A transport failure leaves the connection in an unknown state; an error answer
        // does not.
        if reply.is_ok() || matches!(reply, Err(CallError::Status { .. })) {
            self.connection = Some(connection);
        }
        if reply.is_ok() {
            self.node.state().reachable = true;
        }
        reply
    }
}

/// Sends a request through the node's simulated link: latency first, then (maybe) loss
/// of the request or of its answer, which the node sees as a network error.
async fn send_over_link(
    link: &Link,
    connection: &mut Connection,
    endpoint: &Endpoint,
    request: Request<'_>,
) -> Result<Reply, CallError> {
    let what = request.what;
    let latency = link.latency();
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    if !link.is_online() {
        return Err(CallError::Offline { what });
    }
    let loss = link.roll_loss();
    if loss == Some(Loss::Request) {
        return Err(CallError::Lost { what });
    }
    let reply = connection.send(endpoint, request).await?;
    if loss == Some(Loss::Response) {
        return Err(CallError::Lost { what });
    }
    reply.check(what)
}

fn json(value: &impl Serialize, what: &'static str) -> Result<Vec<u8>, CallError> {
    serde_json::to_vec(value).map_err(|error| CallError::Decode {
        what,
        reason: format!("encoding the request: {error}"),
    })
}
