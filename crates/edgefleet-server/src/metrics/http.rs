//! API request metrics: counts, latency histograms and requests in flight, labelled only
//! with bounded values: the route *template* from the route table (`/v1/nodes/{name}`,
//! never a concrete path), the lowercase method, and the status class (`2xx`).
//!
//! Long-running routes (the agent's long polls, and session uploads that last as long as
//! an operator follows a log) would drown every latency quantile: their durations go to
//! their own histogram, `edgefleet_http_long_poll_duration_seconds`, and never to
//! `edgefleet_http_request_duration_seconds`. They are still counted in
//! `edgefleet_http_requests_total` and `edgefleet_http_requests_in_flight`.
//!
//! Durations run until the response head is ready (time to first byte); a streamed body
//! (a download, a followed log) is not part of them.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use axum::http::{Method, StatusCode};

use super::exposition::{Family, Kind, Value};
use super::primitives::{Counter, Gauge, Histogram};

/// Latency buckets, 5 ms to 30 s.
pub static LATENCY_BUCKETS: [f64; 13] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0,
];

/// Buckets of long-running requests: long polls are held up to 30 s by default (a client
/// may ask for more), log sessions for as long as someone watches.
pub static LONG_POLL_BUCKETS: [f64; 11] = [
    0.1, 1.0, 5.0, 10.0, 20.0, 30.0, 45.0, 60.0, 120.0, 300.0, 900.0,
];

/// The route label of requests no route of the table matched (404, 405).
pub const UNMATCHED_ROUTE: &str = "unmatched";

/// Which route a request took: the labels every HTTP series carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RouteLabel {
    /// The route table's path template.
    pub route: &'static str,
    /// Lowercase: `get`, `post`, ...
    pub method: &'static str,
}

impl RouteLabel {
    pub fn new(method: &'static str, route: &'static str) -> Self {
        Self { route, method }
    }

    /// For a request no route matched: the method is kept only when it is a standard one.
    pub fn unmatched(method: &Method) -> Self {
        Self {
            route: UNMATCHED_ROUTE,
            method: method_label(method),
        }
    }

    /// Whether the route holds requests open on purpose (see the module docs).
    pub fn is_long_running(self) -> bool {
        matches!(
            (self.method, self.route),
            ("get", "/v1/agent/desired")
                | ("get", "/v1/agent/sessions")
                | ("post", "/v1/agent/sessions/{id}")
        )
    }
}

/// A bounded label for any method: the standard ones by name, everything else `other`.
pub fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "get",
        Method::POST => "post",
        Method::PUT => "put",
        Method::PATCH => "patch",
        Method::DELETE => "delete",
        Method::HEAD => "head",
        Method::OPTIONS => "options",
        _ => "other",
    }
}

/// `2xx`, `4xx`, ...
pub fn status_class(status: StatusCode) -> &'static str {
    match status.as_u16() {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct SeriesKey {
    route: RouteLabel,
    status: &'static str,
}

#[derive(Debug)]
struct RequestSeries {
    requests: Counter,
    duration: Histogram,
}

/// The HTTP series, created on first use. Keys come only from the route table (and the
/// fixed method and status sets), so their number is bounded.
#[derive(Debug, Default)]
pub struct HttpMetrics {
    series: RwLock<HashMap<SeriesKey, Arc<RequestSeries>>>,
    in_flight: RwLock<HashMap<RouteLabel, Arc<Gauge>>>,
}

/// Decrements the in-flight gauge when dropped (also when the request future is dropped
/// because the client went away).
#[derive(Debug)]
pub struct InFlight(Arc<Gauge>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.add(-1);
    }
}

/// Gets the entry of `key`, creating it with `make` under the write lock if needed.
fn entry<K, V>(map: &RwLock<HashMap<K, Arc<V>>>, key: K, make: impl FnOnce() -> V) -> Arc<V>
where
    K: std::hash::Hash + Eq,
{
    // The maps only ever gain entries of plain counters; a poisoned one is still valid.
    if let Some(found) = map.read().unwrap_or_else(PoisonError::into_inner).get(&key) {
        return found.clone();
    }
    map.write()
        .unwrap_or_else(PoisonError::into_inner)
        .entry(key)
        .or_insert_with(|| Arc::new(make()))
        .clone()
}

impl HttpMetrics {
    /// A request of `route` starts; it stays in flight until the guard is dropped.
    pub fn start(&self, route: RouteLabel) -> InFlight {
        let gauge = entry(&self.in_flight, route, Gauge::default);
        gauge.add(1);
        InFlight(gauge)
    }

    /// A request of `route` was answered with `status` after `elapsed`.
    pub fn finish(&self, route: RouteLabel, status: StatusCode, elapsed: Duration) {
        let key = SeriesKey {
            route,
            status: status_class(status),
        };
        let series = entry(&self.series, key, || RequestSeries {
            requests: Counter::default(),
            duration: Histogram::new(if route.is_long_running() {
                &LONG_POLL_BUCKETS
            } else {
                &LATENCY_BUCKETS
            }),
        });
        series.requests.add(1);
        series.duration.observe(elapsed.as_secs_f64());
    }

    pub fn families(&self) -> Vec<Family> {
        let mut series: Vec<(SeriesKey, Arc<RequestSeries>)> = self
            .series
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(key, series)| (*key, series.clone()))
            .collect();
        series.sort_by_key(|(key, _)| *key);
        let mut requests = Family::new(
            "edgefleet_http_requests_total",
            "API requests answered, by route template, method and status class.",
            Kind::Counter,
        );
        let mut latency = Family::new(
            "edgefleet_http_request_duration_seconds",
            "Time to answer API requests (until the response head), by route template, method \
             and status class; long polls and session uploads are in \
             edgefleet_http_long_poll_duration_seconds instead.",
            Kind::Histogram,
        );
        let mut long_polls = Family::new(
            "edgefleet_http_long_poll_duration_seconds",
            "How long long-running agent requests (long polls, session uploads) were held open.",
            Kind::Histogram,
        );
        for (key, series) in series {
            let labels = vec![
                ("route", key.route.route.to_owned()),
                ("method", key.route.method.to_owned()),
                ("status", key.status.to_owned()),
            ];
            requests.series.push(super::exposition::Series {
                labels: labels.clone(),
                value: series.requests.value(),
            });
            let target = if key.route.is_long_running() {
                &mut long_polls
            } else {
                &mut latency
            };
            target.series.push(super::exposition::Series {
                labels,
                value: Value::Histogram(series.duration.snapshot()),
            });
        }
        let mut in_flight_series: Vec<(RouteLabel, i64)> = self
            .in_flight
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(route, gauge)| (*route, gauge.get()))
            .collect();
        in_flight_series.sort();
        let mut in_flight = Family::new(
            "edgefleet_http_requests_in_flight",
            "API requests being handled now (until their response head), by route template \
             and method; for /v1/agent/desired, the agents waiting in a long poll.",
            Kind::Gauge,
        );
        for (route, value) in in_flight_series {
            in_flight.series.push(super::exposition::Series {
                labels: vec![
                    ("route", route.route.to_owned()),
                    ("method", route.method.to_owned()),
                ],
                value: Value::Signed(value),
            });
        }
        vec![requests, latency, long_polls, in_flight]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::exposition::render;
    use crate::metrics::primitives::bounds_are_valid;

    #[test]
    fn bucket_sets_are_valid_and_span_5ms_to_30s() {
        assert!(bounds_are_valid(&LATENCY_BUCKETS));
        assert!(bounds_are_valid(&LONG_POLL_BUCKETS));
        assert_eq!(LATENCY_BUCKETS.first(), Some(&0.005));
        assert_eq!(LATENCY_BUCKETS.last(), Some(&30.0));
    }

    #[test]
    fn status_classes_and_methods() {
        assert_eq!(status_class(StatusCode::OK), "2xx");
        assert_eq!(status_class(StatusCode::NOT_MODIFIED), "3xx");
        assert_eq!(status_class(StatusCode::NOT_FOUND), "4xx");
        assert_eq!(status_class(StatusCode::GATEWAY_TIMEOUT), "5xx");
        assert_eq!(status_class(StatusCode::SWITCHING_PROTOCOLS), "1xx");
        assert_eq!(method_label(&Method::PATCH), "patch");
        assert_eq!(method_label(&Method::from_bytes(b"BREW").unwrap()), "other");
    }

    #[test]
    fn long_polls_are_recognised_by_method_and_template() {
        assert!(RouteLabel::new("get", "/v1/agent/desired").is_long_running());
        assert!(RouteLabel::new("get", "/v1/agent/sessions").is_long_running());
        assert!(RouteLabel::new("post", "/v1/agent/sessions/{id}").is_long_running());
        assert!(!RouteLabel::new("post", "/v1/agent/heartbeat").is_long_running());
        assert!(!RouteLabel::new("get", "/v1/nodes/{name}").is_long_running());
    }

    #[test]
    fn long_polls_stay_out_of_the_latency_histogram() {
        let metrics = HttpMetrics::default();
        let node = RouteLabel::new("get", "/v1/nodes/{name}");
        let poll = RouteLabel::new("get", "/v1/agent/desired");
        metrics.finish(node, StatusCode::OK, Duration::from_millis(3));
        metrics.finish(node, StatusCode::OK, Duration::from_millis(40));
        metrics.finish(node, StatusCode::NOT_FOUND, Duration::from_millis(1));
        metrics.finish(poll, StatusCode::NOT_MODIFIED, Duration::from_secs(30));
        let text = render(&metrics.families());
        let expect = [
            "edgefleet_http_requests_total{route=\"/v1/agent/desired\",method=\"get\",status=\"3xx\"} 1\n",
            "edgefleet_http_requests_total{route=\"/v1/nodes/{name}\",method=\"get\",status=\"2xx\"} 2\n",
            "edgefleet_http_requests_total{route=\"/v1/nodes/{name}\",method=\"get\",status=\"4xx\"} 1\n",
            "edgefleet_http_request_duration_seconds_bucket{route=\"/v1/nodes/{name}\",method=\"get\",status=\"2xx\",le=\"0.005\"} 1\n",
            "edgefleet_http_request_duration_seconds_bucket{route=\"/v1/nodes/{name}\",method=\"get\",status=\"2xx\",le=\"0.05\"} 2\n",
            "edgefleet_http_request_duration_seconds_count{route=\"/v1/nodes/{name}\",method=\"get\",status=\"2xx\"} 2\n",
            "edgefleet_http_long_poll_duration_seconds_bucket{route=\"/v1/agent/desired\",method=\"get\",status=\"3xx\",le=\"20\"} 0\n",
            "edgefleet_http_long_poll_duration_seconds_bucket{route=\"/v1/agent/desired\",method=\"get\",status=\"3xx\",le=\"30\"} 1\n",
        ];
        for line in expect {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        assert!(!text.contains(
            "edgefleet_http_request_duration_seconds_bucket{route=\"/v1/agent/desired\""
        ));
    }

    #[test]
    fn in_flight_follows_the_guards() {
        let metrics = HttpMetrics::default();
        let route = RouteLabel::new("get", "/v1/agent/desired");
        let first = metrics.start(route);
        let second = metrics.start(route);
        let line = |n: i64| {
            format!(
                "edgefleet_http_requests_in_flight{{route=\"/v1/agent/desired\",method=\"get\"}} {n}\n"
            )
        };
        assert!(render(&metrics.families()).contains(&line(2)));
        drop(first);
        assert!(render(&metrics.families()).contains(&line(1)));
        drop(second);
        assert!(render(&metrics.families()).contains(&line(0)));
    }
}
