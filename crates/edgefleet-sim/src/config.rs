//! The simulator's configuration: which server, how many nodes, their names and labels,
//! their heartbeat interval, how enrollment goes. Validated once, in `Simulator::start`.

use std::sync::Arc;
use std::time::Duration;

use edgefleet_wire::{JoinString, Labels};

use crate::template::{LabelTemplate, TemplateError, expand_all};

/// Labels for node number `n` (1-based) named `name`.
pub type LabelFn = Arc<dyn Fn(u32, &str) -> Labels + Send + Sync>;
/// Called after every enrollment with the progress so far.
pub type ProgressFn = Arc<dyn Fn(&EnrollProgress) + Send + Sync>;

pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(10);
pub const DEFAULT_ENROLL_CONCURRENCY: usize = 16;
pub const DEFAULT_PREFIX: &str = "sim-";

/// Where the nodes enroll.
#[derive(Debug, Clone)]
pub enum ServerTarget {
    /// A join string: server URL, token secret and the CA fingerprint to pin.
    Join(JoinString),
    /// The same, given separately, with the CA certificate itself instead of its fingerprint.
    Explicit {
        url: String,
        ca_pem: String,
        token: String,
    },
}

/// How the nodes' labels are chosen.
#[derive(Clone, Default)]
pub enum NodeLabels {
    #[default]
    None,
    /// `KEY=TEMPLATE`s, like `site=site-{i%10}` (see `template`).
    Templates(Vec<LabelTemplate>),
    Function(LabelFn),
}

impl std::fmt::Debug for NodeLabels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::None => f.write_str("None"),
            Self::Templates(templates) => f.debug_tuple("Templates").field(templates).finish(),
            Self::Function(_) => f.write_str("Function(..)"),
        }
    }
}

impl NodeLabels {
    /// Parses `KEY=TEMPLATE` strings.
    pub fn templates<S: AsRef<str>>(templates: &[S]) -> Result<Self, TemplateError> {
        let parsed = templates
            .iter()
            .map(|t| LabelTemplate::parse(t.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self::Templates(parsed))
    }

    pub fn for_node(&self, number: u32, name: &str) -> Labels {
        match self {
            Self::None => Labels::new(),
            Self::Templates(templates) => expand_all(templates, u64::from(number), name),
            Self::Function(function) => function(number, name),
        }
    }
}

/// How far enrollment got.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EnrollProgress {
    pub enrolled: u32,
    pub total: u32,
    pub elapsed: Duration,
}

impl EnrollProgress {
    /// Nodes enrolled per second so far.
    pub fn rate(&self) -> f64 {
        f64::from(self.enrolled) / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Everything `Simulator::start` needs.
#[derive(Clone)]
pub struct SimConfig {
    pub server: ServerTarget,
    /// How many nodes.
    pub nodes: u32,
    /// Node names are the prefix and the node's number, zero-padded to at least five
    /// digits: `sim-00001`.
    pub name_prefix: String,
    /// The number of the first node (default 1); lets several simulators share a server.
    pub first_number: u32,
    pub labels: NodeLabels,
    pub heartbeat_interval: Duration,
    /// Enrollments in flight at once.
    pub enroll_concurrency: usize,
    pub on_progress: Option<ProgressFn>,
}

impl std::fmt::Debug for SimConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let server = match &self.server {
            ServerTarget::Join(join) => join.url.as_str(),
            ServerTarget::Explicit { url, .. } => url.as_str(),
        };
        f.debug_struct("SimConfig")
            .field("server", &server)
            .field("nodes", &self.nodes)
            .field("name_prefix", &self.name_prefix)
            .field("first_number", &self.first_number)
            .field("labels", &self.labels)
            .field("heartbeat_interval", &self.heartbeat_interval)
            .field("enroll_concurrency", &self.enroll_concurrency)
            .finish_non_exhaustive()
    }
}

/// A configuration that cannot work, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("the number of nodes must be at least 1")]
    NoNodes,
    #[error("the enrollment concurrency must be at least 1")]
    NoConcurrency,
    #[error("the heartbeat interval must be longer than 0s")]
    NoHeartbeat,
    #[error("node numbers {first}..{first}+{nodes} do not fit in 32 bits")]
    TooMany { first: u32, nodes: u32 },
    #[error("node name {name:?} (prefix {prefix:?}) {reason}")]
    Name {
        name: String,
        prefix: String,
        reason: &'static str,
    },
    #[error("labels of node {node}: {reason}")]
    Labels { node: String, reason: String },
}

impl SimConfig {
    pub fn new(server: ServerTarget, nodes: u32) -> Self {
        Self {
            server,
            nodes,
            name_prefix: DEFAULT_PREFIX.to_owned(),
            first_number: 1,
            labels: NodeLabels::None,
            heartbeat_interval: DEFAULT_HEARTBEAT,
            enroll_concurrency: DEFAULT_ENROLL_CONCURRENCY,
            on_progress: None,
        }
    }

    /// The numbers of the nodes, in order.
    pub fn numbers(&self) -> std::ops::Range<u32> {
        self.first_number..self.first_number.saturating_add(self.nodes)
    }

    /// The name of node number `number`.
    pub fn node_name(&self, number: u32) -> String {
        let last = self
            .first_number
            .saturating_add(self.nodes.saturating_sub(1));
        let width = last.to_string().len().max(5);
        format!("{}{number:0width$}", self.name_prefix)
    }

    /// Checks everything that can be checked without the server: counts, every node's
    /// name and labels.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.nodes == 0 {
            return Err(ConfigError::NoNodes);
        }
        if self.enroll_concurrency == 0 {
            return Err(ConfigError::NoConcurrency);
        }
        if self.heartbeat_interval.is_zero() {
            return Err(ConfigError::NoHeartbeat);
        }
        if self.first_number.checked_add(self.nodes).is_none() {
            return Err(ConfigError::TooMany {
                first: self.first_number,
                nodes: self.nodes,
            });
        }
        for number in self.numbers() {
            let name = self.node_name(number);
            edgefleet_core::labels::validate_name(&name).map_err(|reason| ConfigError::Name {
                name: name.clone(),
                prefix: self.name_prefix.clone(),
                reason,
            })?;
            let labels = self.labels.for_node(number, &name);
            edgefleet_core::labels::validate_labels(&labels).map_err(|error| {
                ConfigError::Labels {
                    node: name.clone(),
                    reason: error.to_string(),
                }
            })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(nodes: u32) -> SimConfig {
        SimConfig::new(
            ServerTarget::Explicit {
                url: "https://127.0.0.1:1".into(),
                ca_pem: String::new(),
                token: "t".into(),
            },
            nodes,
        )
    }

    #[test]
    fn names_are_padded() {
        assert_eq!(config(50).node_name(1), "sim-00001");
        assert_eq!(config(123_456).node_name(7), "sim-000007");
        let mut c = config(3);
        c.name_prefix = "edge-".into();
        c.first_number = 10;
        assert_eq!(c.numbers().collect::<Vec<_>>(), [10, 11, 12]);
        assert_eq!(c.node_name(12), "edge-00012");
    }

    #[test]
    fn validation_names_the_problem() {
        assert_eq!(config(0).validate(), Err(ConfigError::NoNodes));
        let mut c = config(2);
        c.name_prefix = "Sim_".into();
        let error = c.validate().unwrap_err().to_string();
        assert!(error.contains("\"Sim_00001\""), "{error}");
        let mut c = config(12);
        c.labels = NodeLabels::templates(&["site=-{i%11}"]).unwrap();
        // Node 11 gets "-0", which is not a valid label value.
        let error = c.validate().unwrap_err().to_string();
        assert!(error.starts_with("labels of node sim-00001"), "{error}");
        let mut c = config(3);
        c.labels = NodeLabels::Function(Arc::new(|n, _| {
            Labels::from([("n".to_owned(), format!("x{n}"))])
        }));
        assert_eq!(c.validate(), Ok(()));
        assert_eq!(
            c.labels
                .for_node(2, "sim-00002")
                .get("n")
                .map(String::as_str),
            Some("x2")
        );
    }
}
