//! The data side of the local API: workloads publish records to their deployment's streams
//! and read their own configuration (`publish`, `config` in `edgefleet_wire::local`).
//!
//! A workload proves who it is with its token, `HMAC-SHA256(node key, workload name)`,
//! given to it in `$EDGEFLEET_WORKLOAD_TOKEN` when it starts. The node key is made once
//! (`<data-dir>/local-api.key`, owner-only), so tokens survive agent restarts and a
//! running workload keeps working; a token names one workload and cannot be turned into
//! another's. Records go to the outbox (`RecordSink`) and the answer is sent only after
//! they are durable there.
//!
//! What a workload may publish follows the desired state: the streams of its deployment
//! (`update`). A stream's JSON records lose their `redact` fields here, before they are
//! stored, so redacted data never reaches the node's disk. When two deployments on a node
//! declare a stream of the same name, the first in name order wins (the node's outbox
//! keeps one policy per stream name) and a warning says so.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use base64::Engine;
use edgefleet_wire::Labels;
use edgefleet_wire::api::DesiredState;
use edgefleet_wire::local::{LocalRequest, LocalResponse, WorkloadConfig};
use edgefleet_wire::manifest::{StreamFormat, StreamSpec};
use edgefleet_wire::telemetry::DEFAULT_SINK;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tracing::warn;

use crate::fsutil;

/// The node key's file in the data directory.
pub const KEY_FILE: &str = "local-api.key";
/// The most records one `publish` may carry.
pub const MAX_RECORDS_PER_PUBLISH: usize = 1000;
/// The largest record accepted, in bytes (after redaction, as stored).
pub const MAX_RECORD_BYTES: usize = 256 * 1024;

/// What a record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordKind {
    Json,
    Bytes,
}

/// Where published records are stored durably: the outbox.
pub trait RecordSink: Send + Sync + 'static {
    /// Stores `payloads` on `stream` and returns their sequence numbers, only once they are
    /// durable. Blocking.
    fn append_many(
        &self,
        stream: &str,
        kind: RecordKind,
        payloads: Vec<Vec<u8>>,
    ) -> Result<Vec<u64>, String>;

    /// The drop priority and time to live of `stream`.
    fn set_policy(&self, stream: &str, priority: u8, ttl: Duration);
}

/// One workload the desired state runs, as the data API knows it.
#[derive(Debug, Clone)]
struct Entry {
    token: String,
    config: WorkloadConfig,
}

/// Where a stream goes, for the uploader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamRoute {
    pub sink: String,
    pub deployment: String,
}

#[derive(Debug, Default)]
struct Known {
    /// By workload name.
    workloads: BTreeMap<String, Entry>,
    /// By stream name: the spec and the deployment that declared it.
    streams: BTreeMap<String, (StreamSpec, String)>,
}

pub struct DataApi {
    node: String,
    key: [u8; 32],
    /// The socket path workloads are told about (`$EDGEFLEET_LOCAL_API`).
    socket: PathBuf,
    known: RwLock<Known>,
    sink: Arc<dyn RecordSink>,
}

impl std::fmt::Debug for DataApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataApi")
            .field("node", &self.node)
            .field("socket", &self.socket)
            .finish_non_exhaustive()
    }
}

impl DataApi {
    /// Loads the node key from `data_dir` (making it on first use).
    pub fn open(
        data_dir: &Path,
        node: &str,
        socket: PathBuf,
        sink: Arc<dyn RecordSink>,
    ) -> anyhow::Result<Self> {
        let key = load_or_create_key(&data_dir.join(KEY_FILE))?;
        Ok(Self {
            node: node.to_owned(),
            key,
            socket,
            known: RwLock::new(Known::default()),
            sink,
        })
    }

    /// The socket path workloads are given.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The token of workload `name`.
    pub fn token(&self, workload: &str) -> String {
        token(&self.key, workload)
    }

    /// Follows a new desired state: which workloads may publish to which streams, and the
    /// outbox policy of every stream.
    pub fn update(&self, desired: &DesiredState, labels: &Labels) {
        let mut known = Known::default();
        let mut workloads: Vec<_> = desired.workloads.iter().collect();
        workloads.sort_by(|a, b| a.deployment.cmp(&b.deployment));
        for workload in workloads {
            for stream in &workload.streams {
                match known.streams.get(&stream.name) {
                    Some((existing, deployment))
                        if deployment != &workload.deployment && existing != stream =>
                    {
                        warn!(
                            stream = %stream.name,
                            kept = %deployment,
                            ignored = %workload.deployment,
                            "two deployments declare the stream differently; the first one's settings apply"
                        );
                    }
                    Some(_) => {}
                    None => {
                        known.streams.insert(
                            stream.name.clone(),
                            (stream.clone(), workload.deployment.clone()),
                        );
                    }
                }
            }
            let name = workload.spec.name.clone();
            known.workloads.insert(
                name.clone(),
                Entry {
                    token: self.token(&name),
                    config: WorkloadConfig {
                        node: self.node.clone(),
                        workload: name,
                        deployment: workload.deployment.clone(),
                        revision: workload.revision.clone(),
                        labels: labels.clone(),
                        env: workload.spec.env.clone(),
                        streams: workload.streams.clone(),
                        spec: workload.spec.clone(),
                    },
                },
            );
        }
        for (name, (spec, _)) in &known.streams {
            self.sink
                .set_policy(name, spec.priority, spec.ttl.as_duration());
        }
        *self.known.write().unwrap_or_else(|e| e.into_inner()) = known;
    }

    /// Where `stream`'s records go: its sink and deployment (the default sink for streams
    /// no desired workload declares any more, and for the agent's own).
    pub fn route(&self, stream: &str) -> StreamRoute {
        let known = self.known.read().unwrap_or_else(|e| e.into_inner());
        match known.streams.get(stream) {
            Some((spec, deployment)) => StreamRoute {
                sink: spec.sink.clone(),
                deployment: deployment.clone(),
            },
            None => StreamRoute {
                sink: DEFAULT_SINK.to_owned(),
                deployment: String::new(),
            },
        }
    }

    /// The workload a token belongs to. Every entry is compared in constant time.
    fn caller(&self, token: &str) -> Option<WorkloadConfig> {
        let known = self.known.read().unwrap_or_else(|e| e.into_inner());
        let mut found = None;
        for entry in known.workloads.values() {
            if constant_time_eq(entry.token.as_bytes(), token.as_bytes()) {
                found = Some(entry.config.clone());
            }
        }
        found
    }

    /// Answers `publish` and `config`.
    pub async fn handle(self: &Arc<Self>, request: LocalRequest) -> LocalResponse {
        match request {
            LocalRequest::Config { token } => match self.caller(&token) {
                Some(config) => LocalResponse {
                    ok: true,
                    config: Some(Box::new(config)),
                    ..LocalResponse::default()
                },
                None => unknown_token(),
            },
            LocalRequest::Publish {
                token,
                stream,
                json,
                records,
                bytes,
            } => {
                let batch = !records.is_empty();
                match self.publish(&token, &stream, json, records, bytes).await {
                    Ok(seqs) if !batch => LocalResponse {
                        ok: true,
                        seq: seqs.first().copied(),
                        ..LocalResponse::default()
                    },
                    Ok(seqs) => LocalResponse {
                        ok: true,
                        seqs,
                        ..LocalResponse::default()
                    },
                    Err(error) => LocalResponse {
                        ok: false,
                        error: Some(error),
                        ..LocalResponse::default()
                    },
                }
            }
            _ => LocalResponse {
                ok: false,
                error: Some("not a data request".to_owned()),
                ..LocalResponse::default()
            },
        }
    }

    async fn publish(
        self: &Arc<Self>,
        token: &str,
        stream: &str,
        json: Option<serde_json::Value>,
        records: Vec<serde_json::Value>,
        bytes: Option<String>,
    ) -> Result<Vec<u64>, String> {
        let Some(caller) = self.caller(token) else {
            return Err(unknown_token().error.unwrap_or_default());
        };
        let Some(spec) = caller.streams.iter().find(|s| s.name == stream).cloned() else {
            let declared: Vec<&str> = caller.streams.iter().map(|s| s.name.as_str()).collect();
            return Err(if declared.is_empty() {
                format!(
                    "stream {stream:?} is not declared: deployment {} declares no streams (add it under spec.streams)",
                    caller.deployment
                )
            } else {
                format!(
                    "stream {stream:?} is not declared in deployment {} (it declares {})",
                    caller.deployment,
                    declared.join(", ")
                )
            });
        };
        let given = usize::from(json.is_some())
            + usize::from(!records.is_empty())
            + usize::from(bytes.is_some());
        if given != 1 {
            return Err("give exactly one of json, records or bytes".to_owned());
        }
        let (kind, payloads) = match (spec.format, json, bytes) {
            (StreamFormat::Bytes, _, Some(encoded)) => {
                let raw = base64::engine::general_purpose::STANDARD
                    .decode(encoded.trim())
                    .map_err(|e| format!("bytes is not base64 (standard alphabet, padded): {e}"))?;
                (RecordKind::Bytes, vec![raw])
            }
            (StreamFormat::Bytes, _, None) => {
                return Err(format!(
                    "stream {stream:?} holds bytes: publish with \"bytes\" (base64)"
                ));
            }
            (StreamFormat::Json, _, Some(_)) => {
                return Err(format!(
                    "stream {stream:?} holds JSON: publish with \"json\" or \"records\""
                ));
            }
            (StreamFormat::Json, single, None) => {
                let values: Vec<_> = single.into_iter().chain(records).collect();
                if values.len() > MAX_RECORDS_PER_PUBLISH {
                    return Err(format!(
                        "{} records in one publish; at most {MAX_RECORDS_PER_PUBLISH}",
                        values.len()
                    ));
                }
                let mut payloads = Vec::with_capacity(values.len());
                for mut value in values {
                    edgefleet_core::streams::redact(&mut value, &spec.redact);
                    payloads.push(serde_json::to_vec(&value).map_err(|e| e.to_string())?);
                }
                (RecordKind::Json, payloads)
            }
        };
        if let Some((index, too_big)) = payloads
            .iter()
            .enumerate()
            .find(|(_, p)| p.len() > MAX_RECORD_BYTES)
        {
            return Err(format!(
                "record {index} is {} bytes; at most {MAX_RECORD_BYTES}",
                too_big.len()
            ));
        }
        let this = self.clone();
        let stream = stream.to_owned();
        tokio::task::spawn_blocking(move || this.sink.append_many(&stream, kind, payloads))
            .await
            .map_err(|e| format!("the outbox write task failed: {e}"))?
    }
}

fn unknown_token() -> LocalResponse {
    LocalResponse {
        ok: false,
        error: Some(format!(
            "unknown workload token: use the token in ${} of a workload this node runs",
            edgefleet_wire::local::WORKLOAD_TOKEN_ENV
        )),
        ..LocalResponse::default()
    }
}

fn token(key: &[u8; 32], workload: &str) -> String {
    // HMAC accepts keys of any length; a 32-byte key cannot fail.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(b"edgefleet workload token\0");
    mac.update(workload.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn load_or_create_key(path: &Path) -> anyhow::Result<[u8; 32]> {
    use anyhow::Context;
    match fsutil::read_optional(path)? {
        Some(text) => {
            let bytes = hex::decode(text.trim())
                .with_context(|| format!("{} is not hex; remove it to make a new key (running workloads then need a restart)", path.display()))?;
            bytes.try_into().map_err(|_| {
                anyhow::anyhow!(
                    "{} does not hold a 32-byte key; remove it to make a new one",
                    path.display()
                )
            })
        }
        None => {
            let key: [u8; 32] = rand::random();
            fsutil::write_atomic(
                path,
                format!("{}\n", hex::encode(key)).as_bytes(),
                fsutil::PRIVATE,
            )?;
            Ok(key)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    use edgefleet_wire::api::DesiredWorkload;
    use edgefleet_wire::manifest::WorkloadSpec;

    #[derive(Default)]
    struct MemorySink {
        records: Mutex<Vec<(String, RecordKind, Vec<u8>)>>,
        policies: Mutex<BTreeMap<String, (u8, Duration)>>,
    }

    impl RecordSink for MemorySink {
        fn append_many(
            &self,
            stream: &str,
            kind: RecordKind,
            payloads: Vec<Vec<u8>>,
        ) -> Result<Vec<u64>, String> {
            let mut records = self.records.lock().unwrap();
            let mut seqs = Vec::new();
            for payload in payloads {
                records.push((stream.to_owned(), kind, payload));
                seqs.push(records.len() as u64);
            }
            Ok(seqs)
        }

        fn set_policy(&self, stream: &str, priority: u8, ttl: Duration) {
            self.policies
                .lock()
                .unwrap()
                .insert(stream.to_owned(), (priority, ttl));
        }
    }

    fn desired(streams: Vec<StreamSpec>) -> DesiredState {
        DesiredState {
            node: "n1".into(),
            generation: 1,
            workloads: vec![DesiredWorkload {
                streams,
                deployment: "sensors".into(),
                revision: "r1".into(),
                spec_hash: "h".into(),
                spec: WorkloadSpec::process("reader", "/bin/true"),
                rolled_back: false,
                labels: Labels::new(),
            }],
        }
    }

    fn api() -> (tempfile::TempDir, Arc<DataApi>, Arc<MemorySink>) {
        let dir = tempfile::tempdir().unwrap();
        let sink = Arc::new(MemorySink::default());
        let api =
            DataApi::open(dir.path(), "n1", dir.path().join("api.sock"), sink.clone()).unwrap();
        (dir, Arc::new(api), sink)
    }

    fn publish(token: &str, stream: &str, json: serde_json::Value) -> LocalRequest {
        LocalRequest::Publish {
            token: token.into(),
            stream: stream.into(),
            json: Some(json),
            records: vec![],
            bytes: None,
        }
    }

    #[tokio::test]
    async fn publish_redacts_and_returns_the_sequence_number() {
        let (_dir, api, sink) = api();
        let mut stream = StreamSpec::named("readings");
        stream.redact = vec!["operator.email".into()];
        stream.priority = 7;
        api.update(&desired(vec![stream]), &Labels::new());
        assert_eq!(
            sink.policies.lock().unwrap().get("readings").map(|p| p.0),
            Some(7)
        );
        let token = api.token("reader");
        let answer = api
            .handle(publish(
                &token,
                "readings",
                serde_json::json!({"t": 1, "operator": {"email": "x@y", "id": 3}}),
            ))
            .await;
        assert!(answer.ok, "{answer:?}");
        assert_eq!(answer.seq, Some(1));
        let records = sink.records.lock().unwrap();
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&records[0].2).unwrap(),
            serde_json::json!({"t": 1, "operator": {"id": 3}})
        );
        assert_eq!(api.route("readings").deployment, "sensors");
    }

    #[tokio::test]
    async fn wrong_token_and_undeclared_stream_are_refused_clearly() {
        let (_dir, api, sink) = api();
        api.update(
            &desired(vec![StreamSpec::named("readings")]),
            &Labels::new(),
        );
        let answer = api
            .handle(publish("nope", "readings", serde_json::json!(1)))
            .await;
        assert!(!answer.ok);
        assert!(answer.error.unwrap().contains("unknown workload token"));
        let answer = api
            .handle(publish(&api.token("reader"), "other", serde_json::json!(1)))
            .await;
        assert!(
            answer
                .error
                .as_deref()
                .unwrap()
                .contains("declares readings"),
            "{answer:?}"
        );
        // A workload that is no longer desired loses its access.
        api.update(&desired(vec![]), &Labels::new());
        let answer = api
            .handle(publish(
                &api.token("reader"),
                "readings",
                serde_json::json!(1),
            ))
            .await;
        assert!(!answer.ok);
        assert!(sink.records.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn bytes_streams_take_base64_only() {
        let (_dir, api, sink) = api();
        let mut frames = StreamSpec::named("frames");
        frames.format = StreamFormat::Bytes;
        api.update(&desired(vec![frames]), &Labels::new());
        let token = api.token("reader");
        let answer = api
            .handle(publish(&token, "frames", serde_json::json!({"a": 1})))
            .await;
        assert!(answer.error.unwrap().contains("holds bytes"));
        let answer = api
            .handle(LocalRequest::Publish {
                token: token.clone(),
                stream: "frames".into(),
                json: None,
                records: vec![],
                bytes: Some("AAEC".into()),
            })
            .await;
        assert!(answer.ok, "{answer:?}");
        assert_eq!(sink.records.lock().unwrap()[0].2, vec![0, 1, 2]);
        let answer = api
            .handle(LocalRequest::Publish {
                token,
                stream: "frames".into(),
                json: None,
                records: vec![],
                bytes: Some("not base64!".into()),
            })
            .await;
        assert!(answer.error.unwrap().contains("not base64"));
    }

    #[tokio::test]
    async fn config_answers_the_callers_own_configuration() {
        let (dir, api, _sink) = api();
        let labels: Labels = [("site".to_owned(), "berlin".to_owned())].into();
        api.update(&desired(vec![StreamSpec::named("readings")]), &labels);
        let answer = api
            .handle(LocalRequest::Config {
                token: api.token("reader"),
            })
            .await;
        let config = answer.config.unwrap();
        assert_eq!(config.workload, "reader");
        assert_eq!(config.deployment, "sensors");
        assert_eq!(config.labels, labels);
        assert_eq!(config.streams.len(), 1);
        // The key, and so the tokens, survive a restart.
        let again = DataApi::open(
            dir.path(),
            "n1",
            dir.path().join("api.sock"),
            Arc::new(MemorySink::default()),
        )
        .unwrap();
        assert_eq!(again.token("reader"), api.token("reader"));
        assert_ne!(again.token("reader"), again.token("other"));
    }
}
