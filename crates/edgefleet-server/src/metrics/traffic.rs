//! Per-node traffic accounting: bytes up (node to server) and down (server to node) of
//! every agent request, by category, counted as the bodies flow.
//!
//! A request's bytes are its head (request line and headers, computed from the actual
//! headers), its body and its response's head and body. Bodies are wrapped
//! (`MeteredBody`), so a streamed artifact download or log upload is counted chunk by
//! chunk, and an interrupted one only as far as it went: never from Content-Length. TLS
//! records and chunked-encoding framing are not counted.
//!
//! The category comes from the route (`route_category`). On routes where the handler
//! decides (telemetry uploads, which may be application data), the handler sets it
//! through the request's `TrafficTag` before it answers; until then the request's bytes
//! are held back in the request, and committed to the meter in the final category once
//! the response exists. On every other route bytes are committed as they flow, in
//! batches of `COMMIT_BYTES`.
//!
//! The `TrafficMeter` accumulates per-node deltas in memory (taken and written to the
//! store every few seconds, and put back if writing fails) and fleet-wide totals by
//! category for Prometheus.

use std::collections::HashMap;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};

use axum::body::{Body, Bytes};
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use edgefleet_wire::telemetry::TrafficCategory;
use hyper::body::{Body as HttpBody, Frame, SizeHint};

use super::exposition::{Family, Kind, Series, Value};
use super::primitives::Counter;
use crate::store::{TRAFFIC_CATEGORIES, TrafficDelta};

/// Bytes a request collects before committing them to the meter (once its category is
/// final): one lock per 256 KiB of a download rather than one per chunk.
pub const COMMIT_BYTES: u64 = 256 * 1024;

/// Whether a handler may still choose the category of its request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CategoryChoice {
    /// The route fixes the category.
    Fixed,
    /// The handler may change it (through `TrafficTag`) until it answers.
    HandlerDecides,
}

/// The category of a node route (a route table path template), and who decides it.
pub fn route_category(route: &str) -> (TrafficCategory, CategoryChoice) {
    if route == "/v1/agent/telemetry" || route.starts_with("/v1/agent/telemetry/") {
        (TrafficCategory::Telemetry, CategoryChoice::HandlerDecides)
    } else if route.starts_with("/v1/agent/artifacts/") {
        (TrafficCategory::Artifacts, CategoryChoice::Fixed)
    } else {
        (TrafficCategory::Control, CategoryChoice::Fixed)
    }
}

fn category_index(category: TrafficCategory) -> usize {
    match category {
        TrafficCategory::Control => 0,
        TrafficCategory::Telemetry => 1,
        TrafficCategory::Data => 2,
        TrafficCategory::Artifacts => 3,
    }
}

fn category_from_index(index: u8) -> TrafficCategory {
    TRAFFIC_CATEGORIES
        .get(usize::from(index))
        .copied()
        .unwrap_or(TrafficCategory::Control)
}

fn category_label(category: TrafficCategory) -> &'static str {
    match category {
        TrafficCategory::Control => "control",
        TrafficCategory::Telemetry => "telemetry",
        TrafficCategory::Data => "data",
        TrafficCategory::Artifacts => "artifacts",
    }
}

const CRLF: u64 = 2;

/// Bytes of one header line, `name: value\r\n`.
fn header_line_bytes(name: &str, value_length: usize) -> u64 {
    name.len() as u64 + 2 + value_length as u64 + CRLF
}

fn headers_bytes(headers: &HeaderMap) -> u64 {
    headers
        .iter()
        .map(|(name, value)| header_line_bytes(name.as_str(), value.len()))
        .sum()
}

/// The size of an HTTP/1.1 request head: `METHOD /path?query HTTP/1.1\r\n`, the header
/// lines, and the blank line.
pub fn request_head_bytes(method: &Method, uri: &Uri, headers: &HeaderMap) -> u64 {
    let target = uri.path_and_query().map_or("/", |pq| pq.as_str());
    method.as_str().len() as u64
        + 1
        + target.len() as u64
        + " HTTP/1.1".len() as u64
        + CRLF
        + headers_bytes(headers)
        + CRLF
}

/// The size of the HTTP/1.1 response head hyper writes for a response with these headers
/// and a body of `body_length` bytes (`None`: unknown, so chunked): the status line, the
/// header lines, the `date` and framing headers hyper adds when they are missing, and the
/// blank line.
pub fn response_head_bytes(
    status: StatusCode,
    headers: &HeaderMap,
    body_length: Option<u64>,
) -> u64 {
    let reason = status.canonical_reason().unwrap_or("");
    let status_line = "HTTP/1.1 200 ".len() as u64 + reason.len() as u64 + CRLF;
    let date = if headers.contains_key(header::DATE) {
        0
    } else {
        // `date: Sun, 06 Nov 1994 08:49:37 GMT`: always 29 characters.
        header_line_bytes("date", 29)
    };
    let bodiless = status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let framing = if bodiless
        || headers.contains_key(header::CONTENT_LENGTH)
        || headers.contains_key(header::TRANSFER_ENCODING)
    {
        0
    } else {
        match body_length {
            Some(length) => header_line_bytes("content-length", length.to_string().len()),
            None => header_line_bytes("transfer-encoding", "chunked".len()),
        }
    };
    status_line + headers_bytes(headers) + date + framing + CRLF
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Totals {
    up: u64,
    down: u64,
    requests: u64,
}

impl Totals {
    fn add(&mut self, up: u64, down: u64, requests: u64) {
        self.up = self.up.saturating_add(up);
        self.down = self.down.saturating_add(down);
        self.requests = self.requests.saturating_add(requests);
    }

    fn is_zero(&self) -> bool {
        *self == Self::default()
    }
}

/// Per-node deltas not yet stored, and fleet-wide totals.
#[derive(Debug, Default)]
pub struct TrafficMeter {
    pending: Mutex<HashMap<Arc<str>, [Totals; 4]>>,
    fleet_up: [Counter; 4],
    fleet_down: [Counter; 4],
    fleet_requests: [Counter; 4],
    flushes_failed: Counter,
}

impl TrafficMeter {
    fn pending(&self) -> MutexGuard<'_, HashMap<Arc<str>, [Totals; 4]>> {
        // Plain sums; a poisoned map still holds valid numbers.
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts traffic of `node`.
    pub fn record(
        &self,
        node: &Arc<str>,
        category: TrafficCategory,
        up: u64,
        down: u64,
        requests: u64,
    ) {
        if up == 0 && down == 0 && requests == 0 {
            return;
        }
        let index = category_index(category);
        self.fleet_up[index].add(up);
        self.fleet_down[index].add(down);
        self.fleet_requests[index].add(requests);
        self.add_pending(node, index, up, down, requests);
    }

    fn add_pending(&self, node: &Arc<str>, index: usize, up: u64, down: u64, requests: u64) {
        let mut pending = self.pending();
        match pending.get_mut(&**node) {
            Some(totals) => totals[index].add(up, down, requests),
            None => {
                let mut totals = [Totals::default(); 4];
                totals[index].add(up, down, requests);
                pending.insert(node.clone(), totals);
            }
        }
    }

    /// Takes every delta counted since the previous `take`.
    pub fn take(&self) -> Vec<TrafficDelta> {
        let pending = std::mem::take(&mut *self.pending());
        let mut deltas = Vec::with_capacity(pending.len());
        for (node, totals) in pending {
            for (category, totals) in TRAFFIC_CATEGORIES.into_iter().zip(totals) {
                if !totals.is_zero() {
                    deltas.push(TrafficDelta {
                        node: node.to_string(),
                        category,
                        bytes_up: totals.up,
                        bytes_down: totals.down,
                        requests: totals.requests,
                    });
                }
            }
        }
        deltas
    }

    /// Puts back deltas that could not be stored, to be stored with the next batch. The
    /// fleet totals already hold them.
    pub fn restore(&self, deltas: Vec<TrafficDelta>) {
        self.flushes_failed.add(1);
        for delta in deltas {
            let node: Arc<str> = delta.node.into();
            self.add_pending(
                &node,
                category_index(delta.category),
                delta.bytes_up,
                delta.bytes_down,
                delta.requests,
            );
        }
    }

    /// Nodes with traffic not yet stored.
    pub fn pending_nodes(&self) -> usize {
        self.pending().len()
    }

    pub fn families(&self) -> Vec<Family> {
        let mut bytes = Family::new(
            "edgefleet_node_traffic_bytes_total",
            "Bytes moved between nodes and the server on agent routes (request and response \
             heads and bodies, without TLS overhead), by category and direction (up: node to \
             server).",
            Kind::Counter,
        );
        let mut requests = Family::new(
            "edgefleet_node_traffic_requests_total",
            "Agent requests counted in edgefleet_node_traffic_bytes_total, by category.",
            Kind::Counter,
        );
        for (index, category) in TRAFFIC_CATEGORIES.into_iter().enumerate() {
            let label = category_label(category).to_owned();
            for (direction, counter) in [
                ("up", &self.fleet_up[index]),
                ("down", &self.fleet_down[index]),
            ] {
                bytes.series.push(Series {
                    labels: vec![
                        ("category", label.clone()),
                        ("direction", direction.to_owned()),
                    ],
                    value: counter.value(),
                });
            }
            requests.series.push(Series {
                labels: vec![("category", label)],
                value: self.fleet_requests[index].value(),
            });
        }
        vec![
            bytes,
            requests,
            Family::single(
                "edgefleet_node_traffic_unflushed_nodes",
                "Nodes whose latest traffic counts are not yet written to the store.",
                Kind::Gauge,
                Value::Unsigned(self.pending_nodes() as u64),
            ),
            Family::single(
                "edgefleet_node_traffic_flush_failures_total",
                "Times writing traffic counts to the store failed (they are kept and retried).",
                Kind::Counter,
                self.flushes_failed.value(),
            ),
        ]
    }
}

/// The traffic of one request: bytes not yet committed to the meter, and its category.
#[derive(Debug)]
pub struct RequestTraffic {
    meter: Arc<TrafficMeter>,
    node: Arc<str>,
    category: AtomicU8,
    choice: CategoryChoice,
    /// The response head exists: the category is final and the request is counted.
    answered: AtomicBool,
    up: AtomicU64,
    down: AtomicU64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Node to server.
    Up,
    /// Server to node.
    Down,
}

impl RequestTraffic {
    pub fn new(meter: Arc<TrafficMeter>, node: Arc<str>, route: &str) -> Self {
        let (category, choice) = route_category(route);
        Self {
            meter,
            node,
            category: AtomicU8::new(category_index(category) as u8),
            choice,
            answered: AtomicBool::new(false),
            up: AtomicU64::new(0),
            down: AtomicU64::new(0),
        }
    }

    pub fn category(&self) -> TrafficCategory {
        category_from_index(self.category.load(Ordering::Acquire))
    }

    /// Counts `bytes` moved in `direction`; commits them once enough collected and the
    /// category is final.
    pub fn add(&self, direction: Direction, bytes: u64) {
        let counter = match direction {
            Direction::Up => &self.up,
            Direction::Down => &self.down,
        };
        counter.fetch_add(bytes, Ordering::Relaxed);
        let category_final =
            self.choice == CategoryChoice::Fixed || self.answered.load(Ordering::Acquire);
        if category_final
            && self.up.load(Ordering::Relaxed) + self.down.load(Ordering::Relaxed) >= COMMIT_BYTES
        {
            self.commit(0);
        }
    }

    /// Sets the category, if the handler may still choose it. False when it may not.
    pub fn set_category(&self, category: TrafficCategory) -> bool {
        if self.choice != CategoryChoice::HandlerDecides || self.answered.load(Ordering::Acquire) {
            return false;
        }
        self.category
            .store(category_index(category) as u8, Ordering::Release);
        true
    }

    /// The response head exists: the category is final; counts the request and commits
    /// what was held back. Only the first call counts.
    pub fn answered(&self) {
        if !self.answered.swap(true, Ordering::AcqRel) {
            self.commit(1);
        }
    }

    fn commit(&self, requests: u64) {
        let up = self.up.swap(0, Ordering::Relaxed);
        let down = self.down.swap(0, Ordering::Relaxed);
        self.meter
            .record(&self.node, self.category(), up, down, requests);
    }
}

impl Drop for RequestTraffic {
    fn drop(&mut self) {
        // Bodies are done (or dropped: the client went away); nothing more will flow.
        if self.answered.swap(true, Ordering::AcqRel) {
            self.commit(0);
        } else {
            self.commit(1);
        }
    }
}

/// A handler's handle on its request's traffic: lets it choose the category on routes
/// where the handler decides (`/v1/agent/telemetry`: `TrafficCategory::Data` for
/// application streams). Extracting it never fails; outside agent routes it does nothing.
///
/// ```text
/// async fn upload(traffic: TrafficTag, ...) {
///     if batch_is_application_data { traffic.set_category(TrafficCategory::Data); }
/// }
/// ```
#[derive(Debug, Clone, Default)]
pub struct TrafficTag(Option<Arc<RequestTraffic>>);

// The telemetry upload handler is the caller; until it is connected, nothing is.
#[allow(dead_code)]
impl TrafficTag {
    pub fn new(traffic: Arc<RequestTraffic>) -> Self {
        Self(Some(traffic))
    }

    /// Sets the category of this request's traffic. False (and nothing changes) when the
    /// route fixes its category, the response was already produced, or the request is
    /// not metered.
    pub fn set_category(&self, category: TrafficCategory) -> bool {
        self.0
            .as_ref()
            .is_some_and(|traffic| traffic.set_category(category))
    }

    /// The current category, when the request is metered.
    pub fn category(&self) -> Option<TrafficCategory> {
        self.0.as_ref().map(|traffic| traffic.category())
    }
}

impl<S: Send + Sync> FromRequestParts<S> for TrafficTag {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(parts
            .extensions
            .get::<TrafficTag>()
            .cloned()
            .unwrap_or_default())
    }
}

/// A body that counts its data frames as they pass.
pub struct MeteredBody {
    inner: Body,
    traffic: Arc<RequestTraffic>,
    direction: Direction,
}

impl MeteredBody {
    pub fn wrap(inner: Body, traffic: Arc<RequestTraffic>, direction: Direction) -> Body {
        Body::new(Self {
            inner,
            traffic,
            direction,
        })
    }
}

impl HttpBody for MeteredBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            this.traffic.add(this.direction, data.len() as u64);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;
    use http_body_util::BodyExt;

    fn node(name: &str) -> Arc<str> {
        name.into()
    }

    fn totals(meter: &TrafficMeter) -> Vec<(String, TrafficCategory, u64, u64, u64)> {
        let mut deltas: Vec<_> = meter
            .take()
            .into_iter()
            .map(|d| (d.node, d.category, d.bytes_up, d.bytes_down, d.requests))
            .collect();
        deltas.sort();
        deltas
    }

    #[test]
    fn routes_map_to_categories() {
        use CategoryChoice::{Fixed, HandlerDecides};
        use TrafficCategory::{Artifacts, Control, Telemetry};
        let cases = [
            ("/v1/agent/telemetry", (Telemetry, HandlerDecides)),
            ("/v1/agent/artifacts/{name}", (Artifacts, Fixed)),
            ("/v1/agent/desired", (Control, Fixed)),
            ("/v1/agent/sessions/{id}", (Control, Fixed)),
            ("/v1/agent/heartbeat", (Control, Fixed)),
        ];
        for (route, expected) in cases {
            assert_eq!(route_category(route), expected, "{route}");
        }
    }

    #[test]
    fn request_heads_are_measured_from_their_headers() {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("127.0.0.1:7443"));
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("12"));
        let uri: Uri = "/v1/agent/desired?known_generation=3".parse().unwrap();
        let expected = "GET /v1/agent/desired?known_generation=3 HTTP/1.1\r\n\
                        host: 127.0.0.1:7443\r\n\
                        content-length: 12\r\n\
                        \r\n";
        assert_eq!(
            request_head_bytes(&Method::GET, &uri, &headers),
            expected.len() as u64
        );
    }

    #[test]
    fn response_heads_include_what_hyper_adds() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        let with_length = "HTTP/1.1 200 OK\r\n\
                           content-type: application/json\r\n\
                           date: Sun, 06 Nov 1994 08:49:37 GMT\r\n\
                           content-length: 1234\r\n\
                           \r\n";
        assert_eq!(
            response_head_bytes(StatusCode::OK, &headers, Some(1234)),
            with_length.len() as u64
        );
        let chunked = "HTTP/1.1 200 OK\r\n\
                       content-type: application/json\r\n\
                       date: Sun, 06 Nov 1994 08:49:37 GMT\r\n\
                       transfer-encoding: chunked\r\n\
                       \r\n";
        assert_eq!(
            response_head_bytes(StatusCode::OK, &headers, None),
            chunked.len() as u64
        );
        let not_modified = "HTTP/1.1 304 Not Modified\r\n\
                            date: Sun, 06 Nov 1994 08:49:37 GMT\r\n\
                            \r\n";
        assert_eq!(
            response_head_bytes(StatusCode::NOT_MODIFIED, &HeaderMap::new(), Some(0)),
            not_modified.len() as u64
        );
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("5"));
        let explicit = "HTTP/1.1 206 Partial Content\r\n\
                        content-type: application/json\r\n\
                        content-length: 5\r\n\
                        date: Sun, 06 Nov 1994 08:49:37 GMT\r\n\
                        \r\n";
        assert_eq!(
            response_head_bytes(StatusCode::PARTIAL_CONTENT, &headers, Some(5)),
            explicit.len() as u64
        );
    }

    #[test]
    fn the_meter_sums_per_node_and_category_and_restores_failed_batches() {
        let meter = TrafficMeter::default();
        meter.record(&node("a"), TrafficCategory::Control, 10, 20, 1);
        meter.record(&node("a"), TrafficCategory::Control, 1, 2, 1);
        meter.record(&node("a"), TrafficCategory::Artifacts, 0, 500, 1);
        meter.record(&node("b"), TrafficCategory::Telemetry, 7, 0, 1);
        meter.record(&node("c"), TrafficCategory::Data, 0, 0, 0);
        let taken = meter.take();
        assert_eq!(taken.len(), 3);
        assert_eq!(meter.pending_nodes(), 0);
        meter.restore(taken);
        meter.record(&node("a"), TrafficCategory::Control, 100, 0, 1);
        assert_eq!(
            totals(&meter),
            vec![
                ("a".into(), TrafficCategory::Control, 111, 22, 3),
                ("a".into(), TrafficCategory::Artifacts, 0, 500, 1),
                ("b".into(), TrafficCategory::Telemetry, 7, 0, 1),
            ]
        );
        assert!(meter.take().is_empty());
        let text = super::super::exposition::render(&meter.families());
        assert!(
            text.contains(
                "edgefleet_node_traffic_bytes_total{category=\"control\",direction=\"up\"} 111\n"
            ),
            "{text}"
        );
        assert!(text.contains(
            "edgefleet_node_traffic_bytes_total{category=\"artifacts\",direction=\"down\"} 500\n"
        ));
        assert!(text.contains("edgefleet_node_traffic_requests_total{category=\"control\"} 3\n"));
        assert!(text.contains("edgefleet_node_traffic_flush_failures_total 1\n"));
    }

    #[test]
    fn a_handler_may_recategorise_until_it_answers() {
        let meter = Arc::new(TrafficMeter::default());
        let traffic = Arc::new(RequestTraffic::new(
            meter.clone(),
            node("n"),
            "/v1/agent/telemetry",
        ));
        let tag = TrafficTag::new(traffic.clone());
        // Held back while the handler may still decide, even past COMMIT_BYTES.
        traffic.add(Direction::Up, COMMIT_BYTES + 10);
        assert_eq!(meter.pending_nodes(), 0);
        assert!(tag.set_category(TrafficCategory::Data));
        traffic.add(Direction::Down, 5);
        traffic.answered();
        assert!(!tag.set_category(TrafficCategory::Control), "too late");
        traffic.add(Direction::Down, 7);
        drop(tag);
        drop(traffic);
        assert_eq!(
            totals(&meter),
            vec![("n".into(), TrafficCategory::Data, COMMIT_BYTES + 10, 12, 1)]
        );
    }

    #[test]
    fn fixed_routes_commit_as_bytes_flow_and_refuse_recategorising() {
        let meter = Arc::new(TrafficMeter::default());
        let traffic = Arc::new(RequestTraffic::new(
            meter.clone(),
            node("n"),
            "/v1/agent/sessions/{id}",
        ));
        assert!(!TrafficTag::new(traffic.clone()).set_category(TrafficCategory::Data));
        traffic.add(Direction::Up, COMMIT_BYTES);
        // Committed before any answer: a log upload lasting hours is counted as it goes.
        assert_eq!(
            totals(&meter),
            vec![("n".into(), TrafficCategory::Control, COMMIT_BYTES, 0, 0)]
        );
        traffic.add(Direction::Up, 3);
        drop(traffic);
        // Never answered (the client went away): still one request, and the rest.
        assert_eq!(
            totals(&meter),
            vec![("n".into(), TrafficCategory::Control, 3, 0, 1)]
        );
    }

    #[test]
    fn detached_tags_do_nothing() {
        let tag = TrafficTag::default();
        assert!(!tag.set_category(TrafficCategory::Data));
        assert_eq!(tag.category(), None);
    }

    #[tokio::test]
    async fn metered_bodies_count_what_flows() {
        let meter = Arc::new(TrafficMeter::default());
        let traffic = Arc::new(RequestTraffic::new(
            meter.clone(),
            node("n"),
            "/v1/agent/artifacts/{name}",
        ));
        let chunks: Vec<Result<Bytes, std::io::Error>> = vec![
            Ok(Bytes::from(vec![0u8; 1000])),
            Ok(Bytes::from(vec![0u8; 24])),
        ];
        let body = MeteredBody::wrap(
            Body::from_stream(futures_util::stream::iter(chunks)),
            traffic.clone(),
            Direction::Down,
        );
        traffic.answered();
        drop(traffic);
        let collected = body.collect().await.unwrap().to_bytes();
        assert_eq!(collected.len(), 1024);
        assert_eq!(
            totals(&meter),
            vec![("n".into(), TrafficCategory::Artifacts, 0, 1024, 1)]
        );
    }
}
