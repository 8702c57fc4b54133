//! Deployment manifests: Kubernetes-style YAML documents written by operators.
//!
//! These types are strict (`deny_unknown_fields`): a misspelt field is an error naming it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

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

/// One thing that runs on a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WorkloadSpec {
    pub name: String,
    #[serde(default)]
    pub runtime: Runtime,
    /// The program to run (a path, or a name looked up in `PATH`).
    pub command: String,
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
        }
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

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Runtime {
    #[default]
    Process,
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
