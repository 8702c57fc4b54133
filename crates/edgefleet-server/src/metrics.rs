//! The server's own metrics, exposed for Prometheus on `GET /metrics`.

/// Counters and histograms the server updates as it works (held in `AppState`).
#[derive(Debug, Default)]
pub struct Metrics {}
