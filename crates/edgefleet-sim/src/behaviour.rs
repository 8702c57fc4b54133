//! Scripted workload behaviour, read from a desired workload's environment.
//!
//! A test makes a revision bad by putting `SIM_*` variables into a workload's `env`:
//!
//! | variable          | value                               | effect on the named nodes          |
//! |-------------------|-------------------------------------|------------------------------------|
//! | `SIM_FAIL_START`  | node names, comma separated, or `*` | never starts: crash-looping        |
//! | `SIM_CRASH_AFTER` | a duration (`3s`, `500ms`, `1m`)    | runs, then crash-loops after that  |
//! | `SIM_CRASH_NODES` | node names or `*` (default `*`)     | which nodes `SIM_CRASH_AFTER` hits |
//!
//! A name ending in `*` matches every node name with that prefix (`sim-000*`). Every other
//! workload runs. Values that cannot be parsed make the workload fail on every node with a
//! message naming the variable, so a typo in a test shows up instead of passing silently.
//! Parsing is pure: no clock, no IO.

use std::collections::BTreeMap;
use std::time::Duration;

use edgefleet_wire::DurationSpec;

pub const FAIL_START: &str = "SIM_FAIL_START";
pub const CRASH_AFTER: &str = "SIM_CRASH_AFTER";
pub const CRASH_NODES: &str = "SIM_CRASH_NODES";

/// A `SIM_*` value that cannot be understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BehaviourError {
    #[error("{variable}={value:?}: {reason}")]
    Invalid {
        variable: &'static str,
        value: String,
        reason: String,
    },
}

/// A set of node names: everything, or a list of exact names and `prefix*` patterns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeSet {
    All,
    Names(Vec<NamePattern>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NamePattern {
    Exact(String),
    Prefix(String),
}

impl NodeSet {
    /// Parses `a,b,c`, `*` or `prefix*` (whitespace around names is ignored; an empty
    /// value is the empty set).
    pub fn parse(variable: &'static str, value: &str) -> Result<Self, BehaviourError> {
        let mut patterns = Vec::new();
        for item in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            if item == "*" {
                return Ok(Self::All);
            }
            let pattern = match item.strip_suffix('*') {
                Some(prefix) => NamePattern::Prefix(prefix.to_owned()),
                None => NamePattern::Exact(item.to_owned()),
            };
            let text = match &pattern {
                NamePattern::Exact(name) | NamePattern::Prefix(name) => name,
            };
            if text.contains('*') {
                return Err(BehaviourError::Invalid {
                    variable,
                    value: value.to_owned(),
                    reason: format!(
                        "{item:?}: `*` is allowed alone or at the end of a name (`sim-000*`)"
                    ),
                });
            }
            patterns.push(pattern);
        }
        Ok(Self::Names(patterns))
    }

    pub fn contains(&self, node: &str) -> bool {
        match self {
            Self::All => true,
            Self::Names(patterns) => patterns.iter().any(|pattern| match pattern {
                NamePattern::Exact(name) => name == node,
                NamePattern::Prefix(prefix) => node.starts_with(prefix.as_str()),
            }),
        }
    }
}

/// The scripted behaviour of one workload spec, for every node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkloadBehaviour {
    pub fail_start: Option<NodeSet>,
    pub crash: Option<Crash>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Crash {
    pub after: Duration,
    pub nodes: NodeSet,
}

/// What a workload does on one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Run,
    FailStart,
    CrashAfter(Duration),
}

impl WorkloadBehaviour {
    /// Reads the `SIM_*` variables of a workload's environment.
    pub fn from_env(env: &BTreeMap<String, String>) -> Result<Self, BehaviourError> {
        let fail_start = env
            .get(FAIL_START)
            .map(|value| NodeSet::parse(FAIL_START, value))
            .transpose()?;
        let crash = match env.get(CRASH_AFTER) {
            None => None,
            Some(value) => {
                let after = value
                    .parse::<DurationSpec>()
                    .map_err(|error| BehaviourError::Invalid {
                        variable: CRASH_AFTER,
                        value: value.clone(),
                        reason: error.to_string(),
                    })?
                    .as_duration();
                let nodes = match env.get(CRASH_NODES) {
                    Some(value) => NodeSet::parse(CRASH_NODES, value)?,
                    None => NodeSet::All,
                };
                Some(Crash { after, nodes })
            }
        };
        Ok(Self { fail_start, crash })
    }

    /// What the workload does on `node`. A failed start wins over a later crash.
    pub fn outcome(&self, node: &str) -> Outcome {
        if self
            .fail_start
            .as_ref()
            .is_some_and(|set| set.contains(node))
        {
            return Outcome::FailStart;
        }
        match &self.crash {
            Some(crash) if crash.nodes.contains(node) => Outcome::CrashAfter(crash.after),
            _ => Outcome::Run,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn check(pairs: &[(&str, &str)], expected: &[(&str, Outcome)]) {
        let behaviour = WorkloadBehaviour::from_env(&env(pairs)).unwrap();
        for (node, outcome) in expected {
            assert_eq!(&behaviour.outcome(node), outcome, "{pairs:?} on {node}");
        }
    }

    #[test]
    fn outcomes() {
        check(&[], &[("sim-00001", Outcome::Run)]);
        check(&[("OTHER", "x")], &[("sim-00001", Outcome::Run)]);
        check(
            &[(FAIL_START, "sim-00002, sim-00005")],
            &[
                ("sim-00001", Outcome::Run),
                ("sim-00002", Outcome::FailStart),
                ("sim-00005", Outcome::FailStart),
                ("sim-000050", Outcome::Run),
            ],
        );
        check(&[(FAIL_START, "*")], &[("anything", Outcome::FailStart)]);
        check(
            &[(FAIL_START, "sim-0001*")],
            &[
                ("sim-00010", Outcome::FailStart),
                ("sim-00019", Outcome::FailStart),
                ("sim-00020", Outcome::Run),
            ],
        );
        check(&[(FAIL_START, "")], &[("sim-00001", Outcome::Run)]);
        check(
            &[(CRASH_AFTER, "3s")],
            &[("sim-00001", Outcome::CrashAfter(Duration::from_secs(3)))],
        );
        check(
            &[(CRASH_AFTER, "1m30s"), (CRASH_NODES, "b")],
            &[
                ("a", Outcome::Run),
                ("b", Outcome::CrashAfter(Duration::from_secs(90))),
            ],
        );
        check(
            &[
                (FAIL_START, "a"),
                (CRASH_AFTER, "500ms"),
                (CRASH_NODES, "*"),
            ],
            &[
                ("a", Outcome::FailStart),
                ("b", Outcome::CrashAfter(Duration::from_millis(500))),
            ],
        );
        // SIM_CRASH_NODES alone does nothing.
        check(&[(CRASH_NODES, "*")], &[("a", Outcome::Run)]);
    }

    #[test]
    fn bad_values_name_the_variable() {
        let error = WorkloadBehaviour::from_env(&env(&[(CRASH_AFTER, "soon")])).unwrap_err();
        let text = error.to_string();
        assert!(
            text.starts_with("SIM_CRASH_AFTER=\"soon\": invalid duration"),
            "{text}"
        );

        let error = WorkloadBehaviour::from_env(&env(&[(FAIL_START, "sim-*-1")])).unwrap_err();
        assert!(error.to_string().contains("SIM_FAIL_START"), "{error}");
        let error = WorkloadBehaviour::from_env(&env(&[(CRASH_AFTER, "1s"), (CRASH_NODES, "**")]))
            .unwrap_err();
        assert!(error.to_string().contains("SIM_CRASH_NODES"), "{error}");
    }
}
