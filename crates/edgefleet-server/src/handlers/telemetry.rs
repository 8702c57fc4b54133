//! Telemetry: the agents' uploads of outbox streams (metrics and application data) and
//! metric queries. Thin: decoding and checking is `crate::telemetry::ingest`, query
//! planning and shaping `crate::telemetry::query`, storage `TelemetryStore`.

use std::collections::{HashMap, HashSet};

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::header::{CONTENT_ENCODING, CONTENT_TYPE};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::on;
use edgefleet_core::selector;
use edgefleet_wire::api::Role;
use edgefleet_wire::telemetry::{MetricQuery, MetricsResponse, UploadAck};

use crate::auth::NodeCaller;
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiQuery, drain, next_chunk};
use crate::routes::{Access, HttpMethod, RouteSpec, route};
use crate::state::{AppState, now};
use crate::store::NodeRecord;
use crate::telemetry::ingest::{self, BodyEncoding, UploadError};
use crate::telemetry::model::IngestBatch;
use crate::telemetry::query::{self, MAX_SERIES};

/// The routes of this module, appended to the route table.
pub fn routes() -> Vec<RouteSpec> {
    vec![
        route(
            HttpMethod::Post,
            "/v1/agent/telemetry",
            "Upload the calling node's outbox records (JSON, gzip-compressed or not); each \
             (stream, seq) is stored once",
            Access::Node,
            Some("UploadBatch"),
            "UploadAck",
            |m| on(m, upload),
        ),
        route(
            HttpMethod::Get,
            "/v1/metrics",
            "Metric series per node, or averaged over the nodes of each value of a node label \
             (group_by); raw samples or five-minute rollups",
            Access::Token(Role::Viewer),
            None,
            "MetricsResponse",
            |m| on(m, metrics),
        )
        .with_query(&["node", "metric", "since", "until", "group_by", "selector"]),
    ]
}

fn upload_error(error: UploadError) -> ApiError {
    let message = error.to_string();
    match error {
        UploadError::TooLarge { .. } => {
            ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", message)
        }
        UploadError::Encoding(_) => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            message,
        ),
        UploadError::Gzip(_) | UploadError::Json(_) | UploadError::Invalid(_) => {
            ApiError::bad_request(message)
        }
    }
}

fn check_content_type(headers: &HeaderMap) -> ApiResult<()> {
    let Some(value) = headers.get(CONTENT_TYPE) else {
        return Ok(());
    };
    let essence = value
        .to_str()
        .unwrap_or_default()
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    if essence == "application/json" {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        format!(
            "an upload is a JSON UploadBatch, sent with `Content-Type: application/json`, not {essence:?}"
        ),
    ))
}

/// Reads the body, at most `limit` bytes of it (an upload is never bigger compressed than
/// the limit allows decompressed).
async fn read_body(mut body: Body, limit: usize) -> Result<Vec<u8>, ApiError> {
    let mut collected = Vec::new();
    while let Some(chunk) = next_chunk(&mut body).await {
        let chunk = chunk
            .map_err(|e| ApiError::bad_request(format!("could not read the request body: {e}")))?;
        if collected.len().saturating_add(chunk.len()) > limit {
            drain(body).await;
            return Err(upload_error(UploadError::TooLarge { limit }));
        }
        collected.extend_from_slice(&chunk);
    }
    Ok(collected)
}

async fn decode_upload(headers: &HeaderMap, body: Body, limit: usize) -> ApiResult<IngestBatch> {
    let encoding = BodyEncoding::from_header(
        headers
            .get(CONTENT_ENCODING)
            .map(|value| value.to_str().unwrap_or("(not text)")),
    )
    .map_err(upload_error)?;
    check_content_type(headers)?;
    let body = read_body(body, limit).await?;
    // Inflating and parsing megabytes is CPU work: off the async workers.
    tokio::task::spawn_blocking(move || {
        ingest::decompress(&body, encoding, limit).and_then(|json| ingest::decode(&json))
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(upload_error)
}

pub async fn upload(
    State(state): State<AppState>,
    caller: NodeCaller,
    traffic: crate::metrics::TrafficTag,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<UploadAck>> {
    let batch = match decode_upload(&headers, body, state.telemetry.max_upload_bytes()).await {
        Ok(batch) => batch,
        Err(error) => {
            state.telemetry.count_rejected();
            tracing::warn!(node = %caller.name, error = ?error, "telemetry upload refused");
            return Err(error);
        }
    };
    // Application streams are data, the agent's metrics telemetry (the agent sends them in
    // separate batches; a mixed batch counts as data).
    if batch
        .streams
        .iter()
        .any(|s| s.stream != edgefleet_wire::telemetry::METRICS_STREAM)
    {
        traffic.set_category(edgefleet_wire::telemetry::TrafficCategory::Data);
    }
    let outcome = state
        .store
        .ingest_upload(&caller.name, batch, now())
        .await?;
    state.telemetry.count_ingest(&outcome);
    state.metrics.telemetry_samples(outcome.samples_stored);
    state.metrics.telemetry_records(outcome.records_stored);
    state.metrics.telemetry_duplicates(outcome.duplicates);
    Ok(Json(UploadAck {
        streams: outcome.acks,
    }))
}

fn node_not_found(name: &str) -> ApiError {
    ApiError::not_found(format!("node {name:?} not found"))
}

/// The nodes a query may read: the named one, else every node, then the selector's.
async fn candidate_nodes(state: &AppState, plan: &query::MetricPlan) -> ApiResult<Vec<NodeRecord>> {
    let nodes = match &plan.query.node {
        Some(name) => vec![
            state
                .store
                .get_node(name)
                .await?
                .ok_or_else(|| node_not_found(name))?,
        ],
        None => state.store.list_nodes().await?,
    };
    Ok(nodes
        .into_iter()
        .filter(|node| {
            plan.selector
                .as_ref()
                .is_none_or(|s| selector::matches(s, &node.labels))
        })
        .collect())
}

pub async fn metrics(
    State(state): State<AppState>,
    ApiQuery(request): ApiQuery<MetricQuery>,
) -> ApiResult<Json<MetricsResponse>> {
    let plan = query::plan(&request, now(), state.telemetry.raw_retention())
        .map_err(ApiError::bad_request)?;
    let nodes = candidate_nodes(&state, &plan).await?;
    let resolution = plan.query.source;
    let series = match &plan.group_by {
        None => {
            // Without a selector every node's samples count, enrolled now or not.
            let only = (plan.selector.is_some() || plan.query.node.is_some()).then(|| {
                nodes
                    .into_iter()
                    .map(|node| node.name)
                    .collect::<HashSet<_>>()
            });
            if only.as_ref().is_some_and(HashSet::is_empty) {
                return Ok(Json(MetricsResponse { series: vec![] }));
            }
            let answer = state
                .store
                .metric_node_series(plan.query, only, MAX_SERIES)
                .await?;
            if answer.truncated {
                return Err(ApiError::bad_request(query::too_many_series()));
            }
            query::node_series_to_wire(answer.series, resolution)
        }
        Some(key) => {
            let groups: HashMap<String, String> = nodes
                .into_iter()
                .map(|node| {
                    let group = query::group_of(&node.labels, key);
                    (node.name, group)
                })
                .collect();
            if groups.is_empty() {
                return Ok(Json(MetricsResponse { series: vec![] }));
            }
            let series = state.store.metric_group_series(plan.query, groups).await?;
            if series.len() > MAX_SERIES {
                return Err(ApiError::bad_request(query::too_many_series()));
            }
            query::group_series_to_wire(series, resolution)
        }
    };
    Ok(Json(MetricsResponse { series }))
}
