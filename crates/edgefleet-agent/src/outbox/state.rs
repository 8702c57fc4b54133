//! The outbox's state file, `state.json`: its id, the stream policies, every stream's
//! cursor and the drop totals. Replaced atomically as a whole, so the cursors and the
//! drop totals always agree with each other after a crash.

use std::collections::BTreeMap;
use std::time::Duration;

use edgefleet_wire::telemetry::{DropCount, DropReason};
use serde::{Deserialize, Serialize};

use super::policy::{StreamPolicy, stream_name_problem};

/// The version written; a file with a higher one is not understood.
pub const VERSION: u32 = 1;

/// The state file's contents.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateFile {
    pub version: u32,
    /// The outbox id (see `telemetry` in the wire crate).
    pub id: String,
    /// Policies set with `set_policy`, by stream.
    #[serde(default)]
    pub policies: BTreeMap<String, PolicyEntry>,
    /// Cursors, by stream.
    #[serde(default)]
    pub streams: BTreeMap<String, Cursor>,
    /// Totals of dropped records since the outbox was created.
    #[serde(default)]
    pub dropped: Vec<DropCount>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyEntry {
    pub priority: u8,
    pub ttl_ms: u64,
}

impl From<StreamPolicy> for PolicyEntry {
    fn from(policy: StreamPolicy) -> Self {
        Self {
            priority: policy.priority,
            ttl_ms: u64::try_from(policy.ttl.as_millis()).unwrap_or(u64::MAX),
        }
    }
}

impl From<PolicyEntry> for StreamPolicy {
    fn from(entry: PolicyEntry) -> Self {
        Self {
            priority: entry.priority,
            ttl: Duration::from_millis(entry.ttl_ms),
        }
    }
}

/// Where a stream stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    /// Every record up to this `seq` is gone: delivered or dropped.
    pub floor: u64,
    /// The highest `seq` the server said it stored.
    pub acked: u64,
}

impl StateFile {
    pub fn new(id: String) -> Self {
        Self {
            version: VERSION,
            id,
            policies: BTreeMap::new(),
            streams: BTreeMap::new(),
            dropped: Vec::new(),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        // Plain data with string keys: serialising cannot fail.
        let mut text = serde_json::to_vec_pretty(self).unwrap_or_default();
        text.push(b'\n');
        text
    }

    /// Parses and checks a state file; the error says what is wrong with it.
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        let state: Self = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if state.version > VERSION {
            return Err(format!(
                "version {} is newer than this agent understands ({VERSION})",
                state.version
            ));
        }
        if state.id.trim().is_empty() {
            return Err("the outbox id is empty".to_owned());
        }
        let names = state
            .policies
            .keys()
            .chain(state.streams.keys())
            .chain(state.dropped.iter().map(|d| &d.stream));
        for name in names {
            if let Some(problem) = stream_name_problem(name) {
                return Err(format!("stream {name:?}: {problem}"));
            }
        }
        for (name, policy) in &state.policies {
            if let Some(problem) = StreamPolicy::from(*policy).problem() {
                return Err(format!("the policy of stream {name}: {problem}"));
            }
        }
        Ok(state)
    }
}

/// Drop totals by stream and reason: records and bytes.
pub type DropTotals = BTreeMap<(String, DropReason), (u64, u64)>;

pub fn totals_from(list: &[DropCount]) -> DropTotals {
    let mut totals = DropTotals::new();
    for count in list {
        let entry = totals
            .entry((count.stream.clone(), count.reason))
            .or_default();
        entry.0 = entry.0.saturating_add(count.records);
        entry.1 = entry.1.saturating_add(count.bytes);
    }
    totals
}

pub fn totals_to_list(totals: &DropTotals) -> Vec<DropCount> {
    totals
        .iter()
        .map(|((stream, reason), &(records, bytes))| DropCount {
            stream: stream.clone(),
            reason: *reason,
            records,
            bytes,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips() {
        let mut state = StateFile::new("obx-1".into());
        state.policies.insert(
            "app".into(),
            StreamPolicy {
                priority: 8,
                ttl: Duration::from_secs(60),
            }
            .into(),
        );
        state.streams.insert(
            "metrics".into(),
            Cursor {
                floor: 10,
                acked: 7,
            },
        );
        state.dropped.push(DropCount {
            stream: "metrics".into(),
            reason: DropReason::Expired,
            records: 3,
            bytes: 300,
        });
        assert_eq!(StateFile::decode(&state.encode()), Ok(state.clone()));
        let policy = StreamPolicy::from(state.policies["app"]);
        assert_eq!(policy.ttl, Duration::from_secs(60));
    }

    #[test]
    fn bad_state_files_are_named() {
        for (text, expected) in [
            ("{", "EOF"),
            (r#"{"version":2,"id":"x"}"#, "newer"),
            (r#"{"version":1,"id":" "}"#, "id is empty"),
            (
                r#"{"version":1,"id":"x","streams":{"A":{"floor":1,"acked":1}}}"#,
                "stream \"A\"",
            ),
            (
                r#"{"version":1,"id":"x","policies":{"a":{"priority":12,"ttl_ms":5}}}"#,
                "out of range",
            ),
        ] {
            let error = StateFile::decode(text.as_bytes()).unwrap_err();
            assert!(error.contains(expected), "{text}: {error}");
        }
    }

    #[test]
    fn drop_totals_merge_by_stream_and_reason() {
        let list = vec![
            DropCount {
                stream: "a".into(),
                reason: DropReason::Full,
                records: 1,
                bytes: 10,
            },
            DropCount {
                stream: "a".into(),
                reason: DropReason::Full,
                records: 2,
                bytes: 20,
            },
            DropCount {
                stream: "a".into(),
                reason: DropReason::Expired,
                records: 5,
                bytes: 50,
            },
        ];
        let totals = totals_from(&list);
        assert_eq!(totals[&("a".to_owned(), DropReason::Full)], (3, 30));
        assert_eq!(totals_to_list(&totals).len(), 2);
    }
}
