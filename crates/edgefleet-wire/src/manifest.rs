//! Deployment manifests: Kubernetes-style YAML documents written by operators.
//!
//! These types are strict (`deny_unknown_fields`): a misspelt field is an error naming it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use crate::workload::*;
use crate::{DurationSpec, Labels};

/// One `kind: Deployment` document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DeploymentManifest {
    pub api_version: String,
    pub kind: String,
    pub metadata: Metadata,
    pub spec: DeploymentSpec,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Metadata {
    pub name: String,
    #[serde(default, skip_serializing_if = "Labels::is_empty")]
    pub labels: Labels,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DeploymentSpec {
    /// Which nodes this deployment applies to. An empty selector selects every node.
    #[serde(default)]
    pub selector: Selector,
    /// Higher priority wins when several deployments define a workload of the same name.
    #[serde(default)]
    pub priority: i32,
    pub workloads: Vec<WorkloadSpec>,
    /// How a new revision reaches the nodes. Left out, the defaults apply (see
    /// `RolloutStrategy::default`); a default strategy is not serialised, so revision hashes
    /// of deployments that never set one do not depend on this field.
    #[serde(default, skip_serializing_if = "RolloutStrategy::is_default")]
    pub rollout: RolloutStrategy,
    /// Named data streams the deployment's workloads publish to through the agent's local
    /// API. Not serialised when empty, so revision hashes of deployments without streams
    /// do not depend on this field.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub streams: Vec<StreamSpec>,
}

/// A data stream: records workloads publish on the node, kept in the node's outbox until
/// the server has them, then exported to a sink of the data lake.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct StreamSpec {
    /// `[a-z0-9][a-z0-9._-]*`, at most 63 characters; `metrics` is the agent's own.
    pub name: String,
    /// 0 to 9: when the node's outbox is full, the oldest records of the lowest priority
    /// are dropped first.
    #[serde(default = "StreamSpec::default_priority")]
    pub priority: u8,
    /// How long a record may wait on the node for the server; older ones are dropped.
    #[serde(default = "StreamSpec::default_ttl")]
    pub ttl: DurationSpec,
    /// The data-lake sink the stream is exported to.
    #[serde(default = "StreamSpec::default_sink")]
    pub sink: String,
    /// What records are: JSON values, or opaque bytes.
    #[serde(default)]
    pub format: StreamFormat,
    /// Fields removed from JSON records on the node, before they are stored: dotted paths
    /// (`operator.email`); a path through an array applies to each element.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub redact: Vec<String>,
}

impl StreamSpec {
    pub const DEFAULT_PRIORITY: u8 = 5;
    pub const MAX_PRIORITY: u8 = 9;
    pub const DEFAULT_TTL: DurationSpec = DurationSpec::from_secs(7 * 86_400);

    fn default_priority() -> u8 {
        Self::DEFAULT_PRIORITY
    }

    fn default_ttl() -> DurationSpec {
        Self::DEFAULT_TTL
    }

    fn default_sink() -> String {
        crate::telemetry::DEFAULT_SINK.to_owned()
    }

    /// A JSON stream with the defaults.
    pub fn named(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            priority: Self::DEFAULT_PRIORITY,
            ttl: Self::DEFAULT_TTL,
            sink: Self::default_sink(),
            format: StreamFormat::Json,
            redact: Vec::new(),
        }
    }
}

/// The format of a stream's records.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StreamFormat {
    #[default]
    Json,
    Bytes,
}

/// How many nodes: an absolute count (`3`) or a share of the nodes the rollout covers
/// (`"10%"`). Percentages round up, so a non-zero share is at least one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Amount {
    Count(u32),
    Percent(u32),
}

impl Amount {
    /// The number of nodes this amount means out of `total`, rounded up for percentages.
    pub fn of(self, total: usize) -> usize {
        match self {
            Self::Count(n) => n as usize,
            Self::Percent(p) => (total * p as usize).div_ceil(100),
        }
    }
}

impl std::fmt::Display for Amount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Count(n) => write!(f, "{n}"),
            Self::Percent(p) => write!(f, "{p}%"),
        }
    }
}

impl std::str::FromStr for Amount {
    type Err = String;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let s = input.trim();
        let parse = |digits: &str| {
            digits.trim().parse::<u32>().map_err(|_| {
                format!("invalid amount {input:?}: expected a node count like 3 or a percentage like \"10%\"")
            })
        };
        match s.strip_suffix('%') {
            Some(digits) => {
                let p = parse(digits)?;
                if p > 100 {
                    return Err(format!(
                        "invalid amount {input:?}: a percentage is at most 100%"
                    ));
                }
                Ok(Self::Percent(p))
            }
            None => Ok(Self::Count(parse(s)?)),
        }
    }
}

impl Serialize for Amount {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Count(n) => serializer.serialize_u32(*n),
            Self::Percent(_) => serializer.collect_str(self),
        }
    }
}

impl<'de> Deserialize<'de> for Amount {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Count(u64),
            Text(String),
        }
        match Raw::deserialize(deserializer)? {
            Raw::Count(n) => u32::try_from(n)
                .map(Self::Count)
                .map_err(|_| serde::de::Error::custom(format!("amount {n} is too large"))),
            Raw::Text(text) => text.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// `spec.rollout`: canary, batches, gates and rollback.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RolloutStrategy {
    /// A first step on a few nodes, optionally waiting for `edgefleet rollout promote`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<CanaryStrategy>,
    /// The size of each batch after the canary. Default `25%`.
    #[serde(default = "default_batch_size")]
    pub batch_size: Amount,
    /// At most this many nodes are being updated (taken the update, not yet healthy) at
    /// once. Default: the batch size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_unavailable: Option<Amount>,
    /// How long a step must stay healthy before the next one starts. Default `0s`.
    #[serde(default)]
    pub bake_time: DurationSpec,
    /// A node that took the update and is not healthy this long after counts as failed.
    /// Default `10m`.
    #[serde(default = "default_progress_deadline")]
    pub progress_deadline: DurationSpec,
    /// Roll out one partition (the nodes sharing this label's value) at a time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition_by: Option<String>,
    /// The order of the partitions; partitions not listed follow alphabetically, and nodes
    /// without the label come last.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub partition_order: Vec<String>,
    /// Abort when more than this share of a step's nodes is unhealthy. Default `0%`: any
    /// unhealthy node aborts.
    #[serde(default = "default_failure_threshold")]
    pub failure_threshold: Amount,
    /// On abort, put the updated nodes back on the previous revision. Default true.
    #[serde(default = "default_true")]
    pub auto_rollback: bool,
    /// The longest a workload's update lock may hold back its node. Default `1h`.
    #[serde(default = "default_max_lock_deferral")]
    pub max_lock_deferral: DurationSpec,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CanaryStrategy {
    /// How many nodes take the new revision first.
    pub size: Amount,
    /// Wait for `edgefleet rollout promote` after the canary is healthy (and baked).
    #[serde(default)]
    pub manual_promotion: bool,
}

fn default_batch_size() -> Amount {
    Amount::Percent(25)
}

fn default_progress_deadline() -> DurationSpec {
    DurationSpec::from_secs(600)
}

fn default_failure_threshold() -> Amount {
    Amount::Percent(0)
}

fn default_true() -> bool {
    true
}

fn default_max_lock_deferral() -> DurationSpec {
    DurationSpec::from_secs(3600)
}

impl Default for RolloutStrategy {
    fn default() -> Self {
        Self {
            canary: None,
            batch_size: default_batch_size(),
            max_unavailable: None,
            bake_time: DurationSpec::default(),
            progress_deadline: default_progress_deadline(),
            partition_by: None,
            partition_order: Vec::new(),
            failure_threshold: default_failure_threshold(),
            auto_rollback: true,
            max_lock_deferral: default_max_lock_deferral(),
        }
    }
}

impl RolloutStrategy {
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

/// One `kind: MaintenanceWindow` document: when the nodes it selects may be updated by a
/// rollout. A node selected by no window may be updated at any time; a node selected by
/// several may be updated while any of them is open.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MaintenanceWindowManifest {
    pub api_version: String,
    pub kind: String,
    pub metadata: Metadata,
    pub spec: MaintenanceWindowSpec,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MaintenanceWindowSpec {
    #[serde(default)]
    pub selector: Selector,
    /// Weekly openings, in `time_zone`.
    pub schedule: Vec<WeeklyOpening>,
    /// An IANA time zone (`Europe/Berlin`). Left out: each node's own time zone (from its
    /// facts), or UTC when the node did not report one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
}

/// Open on `days` from `start` (local `HH:MM`) for `duration` (may run past midnight).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WeeklyOpening {
    /// `mon`, `tue`, `wed`, `thu`, `fri`, `sat`, `sun`; empty means every day.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub days: Vec<String>,
    pub start: String,
    pub duration: DurationSpec,
}

impl MaintenanceWindowManifest {
    pub fn new(name: impl Into<String>, spec: MaintenanceWindowSpec) -> Self {
        Self {
            api_version: crate::API_VERSION.to_owned(),
            kind: "MaintenanceWindow".to_owned(),
            metadata: Metadata {
                name: name.into(),
                labels: Labels::new(),
            },
            spec,
        }
    }
}

/// A label selector, as in Kubernetes: every term must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Selector {
    #[serde(default, skip_serializing_if = "Labels::is_empty")]
    pub match_labels: Labels,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<SelectorRequirement>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SelectorRequirement {
    pub key: String,
    pub operator: SelectorOperator,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SelectorOperator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

/// One thing that runs on a node: a native process, a container or a WebAssembly module.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WorkloadSpec {
    pub name: String,
    /// Always serialised (unlike the fields added later), so revision hashes stay stable.
    #[serde(default)]
    pub runtime: Runtime,
    /// `process`: the program to run (a path, or a name looked up in `PATH`); required.
    /// `container`: replaces the image's entrypoint; empty keeps it.
    /// `wasm`: unused (the module is the program).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub command: String,
    /// Arguments. For a container without `command`, they replace the image's `CMD`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    #[serde(default)]
    pub restart_policy: RestartPolicy,
    #[serde(default = "default_stop_grace_period")]
    pub stop_grace_period: DurationSpec,
    /// `container`: the image (`busybox:1.36`, `registry.example/app@sha256:…`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// `container`: when to pull `image`.
    #[serde(default, skip_serializing_if = "PullPolicy::is_default")]
    pub image_pull_policy: PullPolicy,
    /// `container`: an image archive (`docker save` output) hosted as an artifact, loaded
    /// into the engine when `image` is missing, for nodes that cannot reach a registry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_artifact: Option<ArtifactRef>,
    /// `wasm`: the module, an artifact.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module: Option<ArtifactRef>,
    /// `container`: the network. Default `host`.
    #[serde(default, skip_serializing_if = "NetworkMode::is_default")]
    pub network: NetworkMode,
    /// `container` on `network: bridge`: ports published on the node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortMapping>,
    /// `container` and `wasm`: host paths and volumes made visible inside.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<VolumeMount>,
    /// `container` and `wasm`: CPU, memory (and for wasm, fuel) limits.
    #[serde(default, skip_serializing_if = "Resources::is_empty")]
    pub resources: Resources,
    /// Restarts the workload when it fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub liveness_probe: Option<Probe>,
    /// Reported as the workload's readiness; a rollout waits for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readiness_probe: Option<Probe>,
    /// Files rendered on the node for this workload (see `FileSpec`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<FileSpec>,
}

impl WorkloadSpec {
    /// A `process` workload running `command` with every other field at its default.
    pub fn process(name: impl Into<String>, command: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            runtime: Runtime::Process,
            command: command.into(),
            args: Vec::new(),
            env: BTreeMap::new(),
            working_dir: None,
            restart_policy: RestartPolicy::default(),
            stop_grace_period: default_stop_grace_period(),
            image: None,
            image_pull_policy: PullPolicy::default(),
            image_artifact: None,
            module: None,
            network: NetworkMode::default(),
            ports: Vec::new(),
            volumes: Vec::new(),
            resources: Resources::default(),
            liveness_probe: None,
            readiness_probe: None,
            files: Vec::new(),
        }
    }

    /// A `container` workload running `image` with every other field at its default.
    pub fn container(name: impl Into<String>, image: impl Into<String>) -> Self {
        Self {
            runtime: Runtime::Container,
            image: Some(image.into()),
            ..Self::process(name, "")
        }
    }

    /// A `wasm` workload running `module` with every other field at its default.
    pub fn wasm(name: impl Into<String>, module: ArtifactRef) -> Self {
        Self {
            runtime: Runtime::Wasm,
            module: Some(module),
            ..Self::process(name, "")
        }
    }

    /// Every artifact the workload needs on the node.
    pub fn artifacts(&self) -> impl Iterator<Item = &ArtifactRef> {
        self.module.iter().chain(self.image_artifact.iter())
    }
}

impl DeploymentManifest {
    /// A `kind: Deployment` document of the current `apiVersion`.
    pub fn new(name: impl Into<String>, spec: DeploymentSpec) -> Self {
        Self {
            api_version: crate::API_VERSION.to_owned(),
            kind: "Deployment".to_owned(),
            metadata: Metadata {
                name: name.into(),
                labels: Labels::new(),
            },
            spec,
        }
    }
}

pub const fn default_stop_grace_period() -> DurationSpec {
    DurationSpec::from_secs(10)
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Runtime {
    /// A native process in its own process group.
    #[default]
    Process,
    /// A container, through the Docker Engine API (dockerd or Podman).
    Container,
    /// A WebAssembly (WASI) module run by the agent's embedded wasmtime.
    Wasm,
}

impl Runtime {
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Process => "process",
            Self::Container => "container",
            Self::Wasm => "wasm",
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    #[default]
    Always,
    OnFailure,
    Never,
}

impl RestartPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Always => "always",
            Self::OnFailure => "on-failure",
            Self::Never => "never",
        }
    }
}
