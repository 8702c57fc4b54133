//! The server's own metrics, exposed for Prometheus on `GET /metrics` (text format 0.0.4),
//! and the per-node traffic accounting behind `describe node`.
//!
//! - `Metrics` (in `AppState`) holds everything counted as the server works: API request
//!   counts, latencies and requests in flight (`http`), node traffic (`traffic`), and the
//!   pre-declared series other parts of the server feed (`FleetCounter`, `FleetGauge`).
//! - Gauges of the fleet (nodes by status, rollouts by state, ...) are computed at scrape
//!   time from the store's cheap `FleetCounts` (`fleet`), process metrics from
//!   `/proc/self` (`process`).
//! - `exposition` renders it all; `primitives` are the atomic counters, gauges and
//!   histograms. No metrics library: a few atomics are all this needs.
//!
//! Middleware (attached from `routes::router`): `observe_route` on every route of the
//! table (outermost, so authentication time counts), `observe_unmatched` on the whole
//! router (404s and 405s), and `meter_node_traffic` inside the node-certificate check of
//! agent routes. `TrafficFlusher` writes traffic counts to the store every
//! `TRAFFIC_FLUSH_INTERVAL`, and once more when the server has drained its connections.
//!
//! **Invariant:** no label value is unbounded: routes are templates from the route
//! table, methods and status classes are closed sets, node names never appear.
//!
//! `GET /metrics` needs a viewer API token: the fleet's size, health and versions are not
//! for anyone who can reach the agents' port. Prometheus sends one with
//! `authorization: {credentials_file: ...}`.

mod exposition;
mod fleet;
mod http;
mod primitives;
mod process;
mod traffic;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper::body::Body as _;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::auth::NodeCaller;
use crate::error::ApiResult;
use crate::state::AppState;

pub use http::RouteLabel;
pub use traffic::TrafficTag;

use exposition::{Family, Kind, Value};
use primitives::{Counter, Gauge};
use traffic::{Direction, MeteredBody, RequestTraffic, TrafficMeter};

/// How often counted traffic is written to the store; a crash loses at most this much.
pub const TRAFFIC_FLUSH_INTERVAL: Duration = Duration::from_secs(5);

/// Counters other parts of the server add to (through `Metrics::add` or the shorthands).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FleetCounter {
    /// Metric samples stored from agents' telemetry uploads.
    TelemetrySamplesIngested,
    /// Stream records stored from agents' telemetry uploads.
    TelemetryRecordsIngested,
    /// Records of uploads already stored (a batch sent again), skipped.
    TelemetryDuplicates,
    /// Rows written to data lake sinks.
    LakeRowsExported,
}

impl FleetCounter {
    const ALL: [FleetCounter; 4] = [
        Self::TelemetrySamplesIngested,
        Self::TelemetryRecordsIngested,
        Self::TelemetryDuplicates,
        Self::LakeRowsExported,
    ];

    fn index(self) -> usize {
        match self {
            Self::TelemetrySamplesIngested => 0,
            Self::TelemetryRecordsIngested => 1,
            Self::TelemetryDuplicates => 2,
            Self::LakeRowsExported => 3,
        }
    }

    fn describe(self) -> (&'static str, &'static str) {
        match self {
            Self::TelemetrySamplesIngested => (
                "edgefleet_telemetry_samples_ingested_total",
                "Metric samples stored from agents' telemetry uploads.",
            ),
            Self::TelemetryRecordsIngested => (
                "edgefleet_telemetry_records_ingested_total",
                "Stream records stored from agents' telemetry uploads.",
            ),
            Self::TelemetryDuplicates => (
                "edgefleet_telemetry_duplicates_total",
                "Uploaded records skipped because they were stored already (a batch sent again).",
            ),
            Self::LakeRowsExported => (
                "edgefleet_lake_rows_exported_total",
                "Rows exported to data lake sinks.",
            ),
        }
    }
}

/// Gauges other parts of the server set (through `Metrics::set` or the shorthands).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FleetGauge {
    /// Alerts firing now.
    AlertsFiring,
    /// Webhook notifications waiting to be delivered.
    WebhookQueueDepth,
}

impl FleetGauge {
    const ALL: [FleetGauge; 2] = [Self::AlertsFiring, Self::WebhookQueueDepth];

    fn index(self) -> usize {
        match self {
            Self::AlertsFiring => 0,
            Self::WebhookQueueDepth => 1,
        }
    }

    fn describe(self) -> (&'static str, &'static str) {
        match self {
            Self::AlertsFiring => ("edgefleet_alerts_firing", "Alerts firing now."),
            Self::WebhookQueueDepth => (
                "edgefleet_webhook_queue_depth",
                "Webhook notifications waiting to be delivered.",
            ),
        }
    }
}

/// Counters and histograms the server updates as it works (held in `AppState`).
#[derive(Debug, Default)]
pub struct Metrics {
    http: http::HttpMetrics,
    traffic: Arc<TrafficMeter>,
    counters: [Counter; FleetCounter::ALL.len()],
    gauges: [Gauge; FleetGauge::ALL.len()],
    scrape_seconds: Gauge,
}

// The telemetry ingest, the lake exporter and the alerts engine call these; until they
// are connected, nothing in the crate does.
#[allow(dead_code)]
impl Metrics {
    /// Adds `n` to a pre-declared counter.
    pub fn add(&self, counter: FleetCounter, n: u64) {
        self.counters[counter.index()].add(n);
    }

    /// Sets a pre-declared gauge.
    pub fn set(&self, gauge: FleetGauge, value: u64) {
        self.gauges[gauge.index()].set(i64::try_from(value).unwrap_or(i64::MAX));
    }

    pub fn telemetry_samples(&self, n: u64) {
        self.add(FleetCounter::TelemetrySamplesIngested, n);
    }

    pub fn telemetry_records(&self, n: u64) {
        self.add(FleetCounter::TelemetryRecordsIngested, n);
    }

    pub fn telemetry_duplicates(&self, n: u64) {
        self.add(FleetCounter::TelemetryDuplicates, n);
    }

    pub fn lake_rows_exported(&self, n: u64) {
        self.add(FleetCounter::LakeRowsExported, n);
    }

    /// Follows the lake's persisted total of exported rows.
    pub fn lake_rows_exported_total(&self, total: u64) {
        self.counters[FleetCounter::LakeRowsExported.index()].raise_to(total);
    }

    pub fn set_alerts_firing(&self, n: u64) {
        self.set(FleetGauge::AlertsFiring, n);
    }

    pub fn set_webhook_queue_depth(&self, n: u64) {
        self.set(FleetGauge::WebhookQueueDepth, n);
    }

    /// Everything counted in memory (not the scrape-time fleet and process gauges).
    fn families(&self) -> Vec<Family> {
        let mut families = self.http.families();
        families.extend(self.traffic.families());
        for counter in FleetCounter::ALL {
            let (name, help) = counter.describe();
            families.push(Family::single(
                name,
                help,
                Kind::Counter,
                self.counters[counter.index()].value(),
            ));
        }
        for gauge in FleetGauge::ALL {
            let (name, help) = gauge.describe();
            families.push(Family::single(
                name,
                help,
                Kind::Gauge,
                self.gauges[gauge.index()].value(),
            ));
        }
        families
    }
}

/// `GET /metrics`: the exposition of everything above.
pub async fn scrape(State(state): State<AppState>) -> ApiResult<Response> {
    let started = Instant::now();
    let lake = state.lake.status();
    state
        .metrics
        .lake_rows_exported_total(lake.sinks.iter().map(|s| s.exported_rows).sum());
    let counts = state.store.fleet_counts().await?;
    let mut families = fleet::families(&counts, crate::state::now(), state.not_ready_after);
    families.extend(state.metrics.families());
    families.extend(process::families());
    let elapsed = started.elapsed();
    families.push(Family::single(
        "edgefleet_metrics_scrape_duration_seconds",
        "How long gathering this scrape took (before rendering).",
        Kind::Gauge,
        Value::Float(elapsed.as_secs_f64()),
    ));
    // The previous scrape's full time, rendering included.
    families.push(Family::single(
        "edgefleet_metrics_previous_scrape_duration_seconds",
        "How long the previous scrape took in all, rendering included.",
        Kind::Gauge,
        Value::Float(state.metrics.scrape_seconds.get() as f64 / 1e9),
    ));
    let text = exposition::render(&families);
    state
        .metrics
        .scrape_seconds
        .set(i64::try_from(started.elapsed().as_nanos()).unwrap_or(i64::MAX));
    let mut response = text.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(exposition::CONTENT_TYPE),
    );
    Ok(response)
}

/// Marks a response as counted by `observe_route`, so `observe_unmatched` skips it.
#[derive(Debug, Clone, Copy)]
struct Observed;

/// Route middleware: counts and times requests of one route of the table.
pub async fn observe_route(
    State(state): State<AppState>,
    route: RouteLabel,
    request: Request,
    next: Next,
) -> Response {
    let in_flight = state.metrics.http.start(route);
    let started = Instant::now();
    let mut response = next.run(request).await;
    drop(in_flight);
    state
        .metrics
        .http
        .finish(route, response.status(), started.elapsed());
    response.extensions_mut().insert(Observed);
    response
}

/// Router middleware: counts and times requests no route matched (route `unmatched`).
pub async fn observe_unmatched(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let route = RouteLabel::unmatched(request.method());
    let started = Instant::now();
    let response = next.run(request).await;
    if response.extensions().get::<Observed>().is_none() {
        state
            .metrics
            .http
            .finish(route, response.status(), started.elapsed());
    }
    response
}

/// Route middleware of agent routes, inside the node-certificate check: counts the
/// request's bytes for the calling node (see `traffic`), and gives the handler a
/// `TrafficTag`.
pub async fn meter_node_traffic(
    State(state): State<AppState>,
    route: &'static str,
    request: Request,
    next: Next,
) -> Response {
    let Some(node) = request
        .extensions()
        .get::<NodeCaller>()
        .map(|caller| Arc::<str>::from(caller.name.as_str()))
    else {
        // Not behind `require_node` (a wiring mistake): there is nobody to count for.
        return next.run(request).await;
    };
    let traffic = Arc::new(RequestTraffic::new(
        state.metrics.traffic.clone(),
        node,
        route,
    ));
    traffic.add(
        Direction::Up,
        traffic::request_head_bytes(request.method(), request.uri(), request.headers()),
    );
    let (mut parts, body) = request.into_parts();
    parts.extensions.insert(TrafficTag::new(traffic.clone()));
    let request = Request::from_parts(
        parts,
        MeteredBody::wrap(body, traffic.clone(), Direction::Up),
    );
    let response = next.run(request).await;
    let (parts, body) = response.into_parts();
    traffic.add(
        Direction::Down,
        traffic::response_head_bytes(parts.status, &parts.headers, body.size_hint().exact()),
    );
    traffic.answered();
    Response::from_parts(parts, MeteredBody::wrap(body, traffic, Direction::Down))
}

/// Writes the traffic counted since the last flush to the store; on failure keeps it for
/// the next one.
pub async fn flush_traffic(state: &AppState) {
    let deltas = state.metrics.traffic.take();
    if deltas.is_empty() {
        return;
    }
    if let Err(error) = state
        .store
        .add_traffic(deltas.clone(), crate::state::now())
        .await
    {
        tracing::warn!(%error, n_deltas = deltas.len(), "writing node traffic failed; retrying with the next batch");
        state.metrics.traffic.restore(deltas);
    }
}

/// The task that writes traffic counts every `TRAFFIC_FLUSH_INTERVAL`.
#[derive(Debug)]
pub struct TrafficFlusher {
    finish: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl TrafficFlusher {
    pub fn spawn(state: AppState) -> Self {
        let (finish, mut finished) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = &mut finished => break,
                    () = tokio::time::sleep(TRAFFIC_FLUSH_INTERVAL) => flush_traffic(&state).await,
                }
            }
            flush_traffic(&state).await;
        });
        Self { finish, task }
    }

    /// Flushes once more and ends; call it after the connections are drained, so the
    /// last requests are counted too.
    pub async fn finish(self) {
        let _ = self.finish.send(());
        if let Err(error) = self.task.await {
            tracing::warn!(%error, "the traffic flush task failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::StatusCode;
    use tower::ServiceExt;

    /// A body of `n` bytes.
    fn body_of(n: usize) -> Body {
        Body::from(vec![b'x'; n])
    }

    #[test]
    fn every_family_name_is_valid_and_unique() {
        let metrics = Metrics::default();
        metrics.http.finish(
            RouteLabel::new("get", "/healthz"),
            StatusCode::OK,
            Duration::ZERO,
        );
        let mut families = metrics.families();
        families.extend(fleet::families(
            &crate::store::FleetCounts::default(),
            crate::state::now(),
            Duration::from_secs(45),
        ));
        families.extend(process::families());
        let mut names: Vec<&str> = families.iter().map(|f| f.name).collect();
        for family in &families {
            assert!(
                exposition::is_valid_metric_name(family.name),
                "{}",
                family.name
            );
            for series in &family.series {
                for (label, _) in &series.labels {
                    assert!(exposition::is_valid_label_name(label), "{label}");
                }
            }
            if family.kind == Kind::Counter {
                assert!(family.name.ends_with("_total"), "{}", family.name);
            }
        }
        names.sort_unstable();
        let before = names.len();
        names.dedup();
        assert_eq!(names.len(), before, "duplicate family names");
    }

    #[test]
    fn pre_declared_series_exist_from_the_start_and_move() {
        let metrics = Metrics::default();
        let text = exposition::render(&metrics.families());
        for line in [
            "edgefleet_telemetry_samples_ingested_total 0\n",
            "edgefleet_telemetry_records_ingested_total 0\n",
            "edgefleet_telemetry_duplicates_total 0\n",
            "edgefleet_lake_rows_exported_total 0\n",
            "edgefleet_alerts_firing 0\n",
            "edgefleet_webhook_queue_depth 0\n",
        ] {
            assert!(text.contains(line), "missing {line:?}");
        }
        metrics.telemetry_samples(5);
        metrics.telemetry_samples(2);
        metrics.telemetry_records(3);
        metrics.telemetry_duplicates(1);
        metrics.lake_rows_exported(9);
        metrics.set_alerts_firing(4);
        metrics.set_webhook_queue_depth(6);
        metrics.set_webhook_queue_depth(2);
        let text = exposition::render(&metrics.families());
        for line in [
            "edgefleet_telemetry_samples_ingested_total 7\n",
            "edgefleet_telemetry_records_ingested_total 3\n",
            "edgefleet_telemetry_duplicates_total 1\n",
            "edgefleet_lake_rows_exported_total 9\n",
            "edgefleet_alerts_firing 4\n",
            "edgefleet_webhook_queue_depth 2\n",
        ] {
            assert!(text.contains(line), "missing {line:?}");
        }
    }

    #[tokio::test]
    async fn the_traffic_middleware_counts_heads_and_bodies_for_the_caller() {
        let (_dir, state, _stopping) = crate::state::testing::state().await;
        let app = axum::Router::new()
            .route(
                "/v1/agent/telemetry",
                axum::routing::post(|tag: TrafficTag, body: Body| async move {
                    let bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap();
                    assert!(tag.set_category(edgefleet_wire::telemetry::TrafficCategory::Data));
                    body_of(bytes.len() * 2)
                }),
            )
            .route_layer(axum::middleware::from_fn_with_state(
                state.clone(),
                |state: State<AppState>, request: Request, next: Next| {
                    meter_node_traffic(state, "/v1/agent/telemetry", request, next)
                },
            ))
            .layer(axum::middleware::map_request(
                |mut request: Request| async move {
                    request.extensions_mut().insert(NodeCaller {
                        name: "edge-1".into(),
                        serial: "01".into(),
                    });
                    request
                },
            ));
        let request = axum::http::Request::post("/v1/agent/telemetry")
            .header("host", "x")
            .body(body_of(1000))
            .unwrap();
        let head_up = "POST /v1/agent/telemetry HTTP/1.1\r\nhost: x\r\n\r\n".len() as u64;
        let response = app.oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        assert_eq!(body.len(), 2000);
        let deltas = state.metrics.traffic.take();
        assert_eq!(deltas.len(), 1, "{deltas:?}");
        let delta = &deltas[0];
        assert_eq!(delta.node, "edge-1");
        assert_eq!(
            delta.category,
            edgefleet_wire::telemetry::TrafficCategory::Data
        );
        assert_eq!(delta.bytes_up, head_up + 1000);
        let head_down =
            "HTTP/1.1 200 OK\r\ndate: Sun, 06 Nov 1994 08:49:37 GMT\r\ncontent-length: 2000\r\n\r\n"
                .len() as u64;
        assert_eq!(delta.bytes_down, head_down + 2000);
        assert_eq!(delta.requests, 1);
    }
}
