//! The agent's telemetry glue: the collection loop that turns the collector's metric sets
//! into records of the outbox's `metrics` stream, and the outbox as the data API's
//! `RecordSink`.
//!
//! A collection runs on a blocking thread (it reads /proc and /sys); its `MetricSet` is
//! appended to the outbox, which makes it durable before anything else happens, and the
//! uploader takes it from there. A collection that fails to append (a full disk) is
//! logged and skipped: the next one tries again; the workloads are not affected.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use edgefleet_wire::manifest::Runtime as WorkloadRuntime;
use edgefleet_wire::node::WorkloadState;
use edgefleet_wire::telemetry::METRICS_STREAM;
use tokio::sync::watch;
use tokio::time::MissedTickBehavior;
use tracing::{debug, warn};

use crate::collect::{Collector, WorkloadRef};
use crate::data_api::{RecordKind, RecordSink};
use crate::outbox::{self, Outbox, StreamPolicy};
use crate::reconcile::Status;
use crate::shutdown::Shutdown;

/// The outbox policy of the agent's own metrics: below application data by default (5),
/// kept a week.
pub const METRICS_POLICY: StreamPolicy = StreamPolicy {
    priority: 3,
    ttl: Duration::from_secs(7 * 86_400),
};

impl RecordSink for Outbox {
    fn append_many(
        &self,
        stream: &str,
        kind: RecordKind,
        payloads: Vec<Vec<u8>>,
    ) -> Result<Vec<u64>, String> {
        let kind = match kind {
            RecordKind::Json => outbox::RecordKind::Json,
            RecordKind::Bytes => outbox::RecordKind::Bytes,
        };
        let records: Vec<(outbox::RecordKind, Vec<u8>)> =
            payloads.into_iter().map(|p| (kind, p)).collect();
        Outbox::append_many(self, stream, &records, time::OffsetDateTime::now_utc())
            .map(|seqs| seqs.collect())
            .map_err(|error| error.to_string())
    }

    fn set_policy(&self, stream: &str, priority: u8, ttl: Duration) {
        if let Err(error) = Outbox::set_policy(self, stream, StreamPolicy { priority, ttl }) {
            warn!(%error, stream, "cannot record the stream's outbox policy");
        }
    }
}

/// The workloads to measure, from the reconciler's status.
pub fn workload_refs(status: &Status) -> Vec<WorkloadRef> {
    status
        .workloads
        .iter()
        .map(|w| WorkloadRef {
            name: w.name.clone(),
            runtime: match w.runtime.as_deref() {
                Some("container") => WorkloadRuntime::Container,
                Some("wasm") => WorkloadRuntime::Wasm,
                _ => WorkloadRuntime::Process,
            },
            pid: if w.state == WorkloadState::Running {
                w.pid
            } else {
                None
            },
            restarts: u64::from(w.restarts),
        })
        .collect()
}

/// Collects every `collector.config().interval` until shutdown.
pub async fn run_collection(
    collector: Collector,
    outbox: Arc<Outbox>,
    status: watch::Receiver<Status>,
    mut shutdown: Shutdown,
) {
    let interval = collector.config().interval;
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut collector = Some(collector);
    let mut warned: BTreeSet<String> = BTreeSet::new();
    loop {
        tokio::select! {
            () = shutdown.wait() => return,
            _ = ticker.tick() => {}
        }
        let Some(mut taken) = collector.take() else {
            return;
        };
        let workloads = workload_refs(&status.borrow());
        let outbox = outbox.clone();
        let done = tokio::task::spawn_blocking(move || {
            let set = taken.collect(time::OffsetDateTime::now_utc(), &workloads);
            let errors: Vec<String> = taken.new_errors().map(ToString::to_string).collect();
            let appended = serde_json::to_vec(&set)
                .map_err(|e| e.to_string())
                .and_then(|json| {
                    outbox
                        .append(
                            METRICS_STREAM,
                            outbox::RecordKind::Json,
                            &json,
                            time::OffsetDateTime::now_utc(),
                        )
                        .map_err(|e| e.to_string())
                });
            (taken, set.samples.len(), errors, appended)
        })
        .await;
        match done {
            Ok((taken, samples, errors, appended)) => {
                collector = Some(taken);
                for error in errors {
                    if warned.insert(error.clone()) {
                        warn!(%error, "a metric source could not be read; it is skipped");
                    }
                }
                match appended {
                    Ok(seq) => debug!(samples, seq, "metrics collected"),
                    Err(error) => {
                        warn!(%error, "metrics collected but not stored; the next collection tries again");
                    }
                }
            }
            Err(error) => {
                warn!(%error, "the metrics collection task failed; collection stops");
                return;
            }
        }
    }
}
