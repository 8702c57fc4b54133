//! The `Simulator` handle: starts a fleet (enrollment, then one task per node), changes
//! nodes' link conditions and update locks while they run, and shows what they do.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use edgefleet_wire::node::WorkloadState;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::config::{ConfigError, EnrollProgress, ServerTarget, SimConfig};
use crate::enroll::{EnrollError, Enroller, fetch_pinned_ca};
use crate::http::{Connection, Endpoint, EndpointError};
use crate::model::WorkloadSnapshot;
use crate::node::{self, NodeHandle, Shared};

/// How long `shutdown` waits for node tasks before aborting them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("invalid simulator configuration: {0}")]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Endpoint(#[from] EndpointError),
    #[error(transparent)]
    Enroll(#[from] EnrollError),
    #[error("no node named {0:?} in this simulator")]
    UnknownNode(String),
    #[error("{what} must be between 0 and 1, not {value}")]
    Fraction { what: &'static str, value: f64 },
    #[error("an enrollment task failed: {0}")]
    Task(String),
}

/// Which nodes a control applies to.
#[derive(Debug, Clone, PartialEq)]
pub enum Selection {
    All,
    Names(Vec<String>),
    /// This share of the nodes (rounded up), spread over the fleet by a fixed pseudo-random
    /// order, so the same fraction always picks the same nodes and a larger fraction
    /// contains a smaller one. Independent of label templates like `{i%10}`.
    Fraction(f64),
}

impl Selection {
    pub fn names<S: Into<String>>(names: impl IntoIterator<Item = S>) -> Self {
        Self::Names(names.into_iter().map(Into::into).collect())
    }

    pub fn one(name: impl Into<String>) -> Self {
        Self::Names(vec![name.into()])
    }
}

/// One node, as inspection shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeSnapshot {
    pub name: String,
    /// 1-based, as in the name.
    pub number: u32,
    pub online: bool,
    /// The node's last exchange with the server succeeded.
    pub reachable: bool,
    pub applied_generation: u64,
    pub workloads: Vec<WorkloadSnapshot>,
    /// Workloads holding an update lock.
    pub locks: Vec<String>,
    pub latency: Duration,
    pub loss: f64,
    pub last_error: Option<String>,
}

impl NodeSnapshot {
    pub fn workload(&self, name: &str) -> Option<&WorkloadSnapshot> {
        self.workloads.iter().find(|w| w.name == name)
    }

    /// The revision of workload `name`, when the node runs it.
    pub fn revision_of(&self, name: &str) -> Option<&str> {
        self.workload(name).map(|w| w.revision.as_str())
    }

    pub fn state_of(&self, name: &str) -> Option<WorkloadState> {
        self.workload(name).map(|w| w.state)
    }

    /// Online, reachable, and every workload running.
    pub fn converged(&self) -> bool {
        self.online
            && self.reachable
            && self
                .workloads
                .iter()
                .all(|w| w.state == WorkloadState::Running)
    }
}

/// The whole fleet at a glance.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FleetSummary {
    pub nodes: usize,
    pub online: usize,
    pub reachable: usize,
    /// Online, reachable, every workload running.
    pub converged: usize,
    /// Nodes with at least one crash-looping workload.
    pub failing: usize,
    pub locked: usize,
    /// `workload@revision` → how many nodes run it (in any state).
    pub revisions: BTreeMap<String, usize>,
}

/// Enrollment statistics.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EnrollStats {
    pub nodes: u32,
    pub duration: Duration,
}

impl EnrollStats {
    pub fn rate(&self) -> f64 {
        f64::from(self.nodes) / self.duration.as_secs_f64().max(1e-9)
    }
}

/// A running simulated fleet. Dropping it stops every node at once; `shutdown` does the
/// same and waits for the node tasks to end.
#[derive(Debug)]
pub struct Simulator {
    nodes: Vec<Arc<NodeHandle>>,
    by_name: HashMap<Box<str>, usize>,
    tasks: Vec<JoinHandle<()>>,
    shutdown: watch::Sender<bool>,
    enrollment: EnrollStats,
}

/// An enrolled node and its running task, sent from an enrollment worker.
type Started = (Arc<NodeHandle>, JoinHandle<()>);

impl Simulator {
    /// Enrolls every node (each with its own key pair and certificate), starts each node's
    /// agent loop as soon as it is enrolled, and returns once all are enrolled. The first
    /// enrollment that fails for good (a refused token, a taken name, a server that does
    /// not answer after retries) stops the others, and is the error.
    pub async fn start(config: SimConfig) -> Result<Self, SimError> {
        config.validate()?;
        let started_at = Instant::now();
        let (url, token) = match &config.server {
            ServerTarget::Join(join) => (join.url.clone(), join.secret.clone()),
            ServerTarget::Explicit { url, token, .. } => (url.clone(), token.clone()),
        };
        let endpoint = Endpoint::resolve(&url).await?;
        let ca_pem = match &config.server {
            ServerTarget::Join(join) => fetch_pinned_ca(&endpoint, &join.ca_sha256).await?,
            ServerTarget::Explicit { ca_pem, .. } => ca_pem.clone(),
        };
        let enroller = Arc::new(Enroller::new(endpoint.clone(), ca_pem, token)?);
        let (shutdown, shutdown_rx) = watch::channel(false);
        let shared = Arc::new(Shared {
            endpoint,
            heartbeat_interval: config.heartbeat_interval,
            shutdown: shutdown_rx,
        });
        tracing::info!(server = %url, nodes = config.nodes, concurrency = config.enroll_concurrency, "enrolling simulated nodes");

        let config = Arc::new(config);
        let next = Arc::new(AtomicU32::new(0));
        let cancel = Arc::new(AtomicBool::new(false));
        let (sender, mut receiver) = mpsc::channel::<Result<Started, SimError>>(256);
        let workers = config.enroll_concurrency.min(config.nodes as usize);
        for _ in 0..workers {
            let worker = EnrollWorker {
                config: config.clone(),
                enroller: enroller.clone(),
                shared: shared.clone(),
                next: next.clone(),
                cancel: cancel.clone(),
                sender: sender.clone(),
            };
            tokio::spawn(worker.run());
        }
        drop(sender);

        let mut simulator = Self {
            nodes: Vec::with_capacity(config.nodes as usize),
            by_name: HashMap::with_capacity(config.nodes as usize),
            tasks: Vec::with_capacity(config.nodes as usize),
            shutdown,
            enrollment: EnrollStats {
                nodes: 0,
                duration: Duration::ZERO,
            },
        };
        let mut next_log = config.nodes.div_ceil(10);
        while let Some(result) = receiver.recv().await {
            let (node, task) = match result {
                Ok(started) => started,
                Err(error) => {
                    cancel.store(true, Ordering::Relaxed);
                    // Dropping the simulator stops the nodes enrolled so far.
                    return Err(error);
                }
            };
            simulator.add(node, task);
            let progress = EnrollProgress {
                enrolled: simulator.nodes.len() as u32,
                total: config.nodes,
                elapsed: started_at.elapsed(),
            };
            if let Some(on_progress) = &config.on_progress {
                on_progress(&progress);
            }
            if progress.enrolled >= next_log || progress.enrolled == progress.total {
                tracing::info!(
                    enrolled = progress.enrolled,
                    total = progress.total,
                    per_second = format!("{:.0}", progress.rate()),
                    "enrollment progress"
                );
                next_log = next_log.saturating_add(config.nodes.div_ceil(10));
            }
        }
        if simulator.nodes.len() < config.nodes as usize {
            return Err(SimError::Task(format!(
                "enrollment ended with {} of {} nodes enrolled",
                simulator.nodes.len(),
                config.nodes
            )));
        }
        // Workers finish in any order; keep the nodes in name order.
        simulator.nodes.sort_by_key(|node| node.number);
        simulator.by_name = simulator
            .nodes
            .iter()
            .enumerate()
            .map(|(i, node)| (node.name.clone(), i))
            .collect();
        simulator.enrollment = EnrollStats {
            nodes: config.nodes,
            duration: started_at.elapsed(),
        };
        Ok(simulator)
    }

    fn add(&mut self, node: Arc<NodeHandle>, task: JoinHandle<()>) {
        self.by_name.insert(node.name.clone(), self.nodes.len());
        self.nodes.push(node);
        self.tasks.push(task);
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Every node's name, in order.
    pub fn names(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.name.to_string()).collect()
    }

    pub fn enrollment(&self) -> EnrollStats {
        self.enrollment
    }

    fn handle(&self, name: &str) -> Result<&Arc<NodeHandle>, SimError> {
        self.by_name
            .get(name)
            .map(|&i| &self.nodes[i])
            .ok_or_else(|| SimError::UnknownNode(name.to_owned()))
    }

    fn resolve(&self, selection: &Selection) -> Result<Vec<&Arc<NodeHandle>>, SimError> {
        match selection {
            Selection::All => Ok(self.nodes.iter().collect()),
            Selection::Names(names) => names.iter().map(|name| self.handle(name)).collect(),
            Selection::Fraction(fraction) => {
                check_fraction("a fraction of nodes", *fraction)?;
                let count = (self.nodes.len() as f64 * fraction).ceil() as usize;
                let mut order: Vec<&Arc<NodeHandle>> = self.nodes.iter().collect();
                order.sort_by_key(|node| spread(node.number));
                order.truncate(count);
                order.sort_by_key(|node| node.number);
                Ok(order)
            }
        }
    }

    /// The names a selection stands for.
    pub fn select(&self, selection: &Selection) -> Result<Vec<String>, SimError> {
        Ok(self
            .resolve(selection)?
            .into_iter()
            .map(|node| node.name.to_string())
            .collect())
    }

    /// Takes nodes off the network (no traffic at all) or puts them back. Returns their names.
    pub fn set_online(&self, selection: &Selection, online: bool) -> Result<Vec<String>, SimError> {
        let nodes = self.resolve(selection)?;
        for node in &nodes {
            node.set_online(online);
        }
        Ok(nodes.iter().map(|n| n.name.to_string()).collect())
    }

    /// Adds `latency` before every request of the selected nodes.
    pub fn set_latency(&self, selection: &Selection, latency: Duration) -> Result<(), SimError> {
        for node in self.resolve(selection)? {
            node.set_latency(latency);
        }
        Ok(())
    }

    /// Loses each request of the selected nodes, or its answer, with this probability;
    /// the node sees a network error and retries with backoff.
    pub fn set_loss(&self, selection: &Selection, probability: f64) -> Result<(), SimError> {
        check_fraction("a loss probability", probability)?;
        for node in self.resolve(selection)? {
            node.set_loss(probability);
        }
        Ok(())
    }

    /// Holds an update lock for `workload` on `node` (reported at once, with a
    /// `lock-acquired` event). False if that lock is held already.
    pub fn hold_lock(&self, node: &str, workload: &str, reason: &str) -> Result<bool, SimError> {
        Ok(self.handle(node)?.hold_lock(workload, reason))
    }

    /// Releases the update lock of `workload` on `node`. False if none was held.
    pub fn release_lock(&self, node: &str, workload: &str) -> Result<bool, SimError> {
        Ok(self.handle(node)?.release_lock(workload))
    }

    pub fn node(&self, name: &str) -> Result<NodeSnapshot, SimError> {
        Ok(snapshot(self.handle(name)?))
    }

    /// Every node, in order.
    pub fn nodes(&self) -> Vec<NodeSnapshot> {
        self.nodes.iter().map(|node| snapshot(node)).collect()
    }

    pub fn summary(&self) -> FleetSummary {
        let mut summary = FleetSummary {
            nodes: self.nodes.len(),
            ..FleetSummary::default()
        };
        for node in &self.nodes {
            let online = node.link.is_online();
            let state = node.state();
            summary.online += usize::from(online);
            summary.reachable += usize::from(state.reachable);
            let healthy = state.model.healthy();
            summary.converged += usize::from(online && state.reachable && healthy);
            summary.failing += usize::from(!healthy);
            summary.locked += usize::from(state.model.locks().next().is_some());
            for workload in state.model.workloads() {
                let key = format!("{}@{}", workload.name, short(&workload.revision));
                *summary.revisions.entry(key).or_default() += 1;
            }
        }
        summary
    }

    /// Stops every node and waits (briefly) for their tasks to end.
    pub async fn shutdown(mut self) {
        self.shutdown.send_replace(true);
        let tasks = std::mem::take(&mut self.tasks);
        let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
        for task in tasks {
            let abort = task.abort_handle();
            if tokio::time::timeout_at(deadline, task).await.is_err() {
                abort.abort();
            }
        }
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        self.shutdown.send_replace(true);
        for task in &self.tasks {
            task.abort();
        }
    }
}

fn check_fraction(what: &'static str, value: f64) -> Result<(), SimError> {
    if (0.0..=1.0).contains(&value) {
        Ok(())
    } else {
        Err(SimError::Fraction { what, value })
    }
}

/// A fixed pseudo-random order of node numbers (SplitMix64).
fn spread(number: u32) -> u64 {
    let mut z = u64::from(number).wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The first 12 characters of a revision hash, as people read it.
pub fn short(revision: &str) -> &str {
    revision.get(..12).unwrap_or(revision)
}

fn snapshot(node: &NodeHandle) -> NodeSnapshot {
    let state = node.state();
    NodeSnapshot {
        name: node.name.to_string(),
        number: node.number,
        online: node.link.is_online(),
        reachable: state.reachable,
        applied_generation: state.model.applied_generation(),
        workloads: state.model.workloads(),
        locks: state.model.locks().map(str::to_owned).collect(),
        latency: node.link.latency(),
        loss: node.link.loss(),
        last_error: state.last_error.clone(),
    }
}

/// Enrolls nodes one after the other, taking numbers from a shared counter.
struct EnrollWorker {
    config: Arc<SimConfig>,
    enroller: Arc<Enroller>,
    shared: Arc<Shared>,
    next: Arc<AtomicU32>,
    cancel: Arc<AtomicBool>,
    sender: mpsc::Sender<Result<Started, SimError>>,
}

impl EnrollWorker {
    async fn run(self) {
        let mut connection: Option<Connection> = None;
        while !self.cancel.load(Ordering::Relaxed) {
            let offset = self.next.fetch_add(1, Ordering::Relaxed);
            if offset >= self.config.nodes {
                return;
            }
            let number = self.config.first_number + offset;
            let name = self.config.node_name(number);
            let labels = self.config.labels.for_node(number, &name);
            let result = self
                .enroller
                .enroll(&mut connection, &name, labels)
                .await
                .map(|enrolled| {
                    let node = Arc::new(NodeHandle::new(
                        number,
                        &name,
                        enrolled.tls,
                        enrolled.certificate_not_after,
                    ));
                    let task = tokio::spawn(node::run(node.clone(), self.shared.clone()));
                    (node, task)
                })
                .map_err(SimError::from);
            let failed = result.is_err();
            if self.sender.send(result).await.is_err() || failed {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_is_a_stable_mix() {
        let mut order: Vec<u32> = (1..=20).collect();
        order.sort_by_key(|n| spread(*n));
        assert_ne!(order, (1..=20).collect::<Vec<_>>());
        let mut again: Vec<u32> = (1..=20).rev().collect();
        again.sort_by_key(|n| spread(*n));
        assert_eq!(order, again);
    }

    #[test]
    fn short_revisions() {
        assert_eq!(short("0123456789abcdef"), "0123456789ab");
        assert_eq!(short("abc"), "abc");
    }
}
