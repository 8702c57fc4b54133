//! Alert rules, alerts and silences (see `edgefleet_wire::alert` for the routes). Rules
//! are validated by the core (`edgefleet_core::alerts`), errors naming the rule and the
//! field; every change to a rule or silence is audited and wakes the evaluator.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::on;
use edgefleet_core::alerts::{validate_rule, validate_silence_matcher};
use edgefleet_wire::alert::{
    Alert, AlertDetail, AlertRuleApplyResult, AlertRuleInfo, AlertRuleManifest, CreateSilence,
    Silence,
};
use edgefleet_wire::api::Ack;
use serde::Deserialize;

use crate::auth::ApiCaller;
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiJson, ApiPath, ApiQuery};
use crate::routes::{Access, HttpMethod, RouteSpec, route};
use crate::state::{AppState, now};
use crate::store::{AlertFilter, AlertRuleRecord, NewAudit};

/// The longest a silence may last.
const MAX_SILENCE: Duration = Duration::from_secs(366 * 86_400);
/// Alerts listed at most.
const MAX_ALERTS: u32 = 1000;
/// Rules applied in one request at most.
const MAX_RULES: usize = 1000;

/// The routes of this module, appended to the route table.
pub fn routes() -> Vec<RouteSpec> {
    use Access::Token;
    use HttpMethod::{Delete, Get, Post};
    use edgefleet_wire::api::Role::{Operator, Viewer};
    vec![
        route(
            Post,
            "/v1/alert-rules",
            "Create or update alert rules (a list of AlertRule manifests, applied together)",
            Token(Operator),
            Some("AlertRuleManifest[]"),
            "AlertRuleApplyResult[]",
            |m| on(m, apply_rules),
        ),
        route(
            Get,
            "/v1/alert-rules",
            "List alert rules with their firing alert counts",
            Token(Viewer),
            None,
            "AlertRuleInfo[]",
            |m| on(m, list_rules),
        ),
        route(
            Delete,
            "/v1/alert-rules/{name}",
            "Delete an alert rule (its alerts resolve)",
            Token(Operator),
            None,
            "Ack",
            |m| on(m, delete_rule),
        ),
        route(
            Get,
            "/v1/alerts",
            "Alerts: firing and silenced ones (state=firing, the default), or all with history (state=all, newest first)",
            Token(Viewer),
            None,
            "Alert[]",
            |m| on(m, list_alerts),
        )
        .with_query(&["state", "limit"]),
        route(
            Get,
            "/v1/alerts/{id}",
            "One alert with its webhook deliveries",
            Token(Viewer),
            None,
            "AlertDetail",
            |m| on(m, alert_detail),
        ),
        route(
            Post,
            "/v1/silences",
            "Silence matching alerts for a time: tracked, not notified",
            Token(Operator),
            Some("CreateSilence"),
            "Silence",
            |m| on(m, create_silence),
        ),
        route(
            Get,
            "/v1/silences",
            "List silences, newest first (ended ones until they are pruned)",
            Token(Viewer),
            None,
            "Silence[]",
            |m| on(m, list_silences),
        ),
        route(
            Delete,
            "/v1/silences/{id}",
            "End a silence now",
            Token(Operator),
            None,
            "Silence",
            |m| on(m, expire_silence),
        ),
    ]
}

fn invalid_rule(index: usize, name: &str, field: &str, message: &str) -> ApiError {
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_manifest",
        format!("invalid manifest for alert rule {name:?}: field {field}: {message}"),
    )
    .with_details(vec![
        format!("alert rule: {name} (rules[{index}])"),
        format!("field: {field}"),
        message.to_owned(),
    ])
}

/// The content hash of a rule: its labels and spec.
fn rule_hash(manifest: &AlertRuleManifest) -> String {
    let content = serde_json::json!({
        "labels": manifest.metadata.labels,
        "spec": manifest.spec,
    });
    edgefleet_core::hash::sha256_hex(content.to_string().as_bytes())
}

pub async fn apply_rules(
    State(state): State<AppState>,
    caller: ApiCaller,
    ApiJson(manifests): ApiJson<Vec<AlertRuleManifest>>,
) -> ApiResult<Json<Vec<AlertRuleApplyResult>>> {
    if manifests.is_empty() {
        return Err(ApiError::bad_request(
            "no alert rules in the request: send a list of AlertRule manifests",
        ));
    }
    if manifests.len() > MAX_RULES {
        return Err(ApiError::bad_request(format!(
            "{} alert rules in one request: at most {MAX_RULES}",
            manifests.len()
        )));
    }
    let mut names = BTreeSet::new();
    for (index, manifest) in manifests.iter().enumerate() {
        let name = &manifest.metadata.name;
        validate_rule(manifest)
            .map_err(|(field, message)| invalid_rule(index, name, &field, &message))?;
        if !names.insert(name.as_str()) {
            return Err(invalid_rule(
                index,
                name,
                "metadata.name",
                "this alert rule is defined twice in the request",
            ));
        }
    }
    let at = now();
    let items = manifests
        .into_iter()
        .map(|manifest| AlertRuleRecord {
            hash: rule_hash(&manifest),
            manifest,
            updated_at: at,
        })
        .collect();
    let applied = state
        .store
        .apply_alert_rules(items, &caller.actor(), at)
        .await?;
    state.alerts.poke();
    Ok(Json(
        applied
            .into_iter()
            .map(|(name, action)| AlertRuleApplyResult { name, action })
            .collect(),
    ))
}

pub async fn list_rules(State(state): State<AppState>) -> ApiResult<Json<Vec<AlertRuleInfo>>> {
    let rules = state.store.list_alert_rules().await?;
    let mut firing: BTreeMap<String, u32> = BTreeMap::new();
    for alert in state
        .store
        .list_alerts(AlertFilter::Firing, u32::MAX)
        .await?
    {
        *firing.entry(alert.rule).or_default() += 1;
    }
    Ok(Json(
        rules
            .into_iter()
            .map(|record| AlertRuleInfo {
                firing: firing
                    .get(&record.manifest.metadata.name)
                    .copied()
                    .unwrap_or(0),
                manifest: record.manifest,
                updated_at: record.updated_at,
            })
            .collect(),
    ))
}

pub async fn delete_rule(
    State(state): State<AppState>,
    caller: ApiCaller,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<Json<Ack>> {
    let audit = NewAudit::new(
        now(),
        caller.actor(),
        "delete",
        format!("alert-rule/{name}"),
        "deleted",
    );
    if !state.store.delete_alert_rule(&name, audit).await? {
        return Err(ApiError::not_found(format!(
            "alert rule {name:?} not found"
        )));
    }
    state.alerts.poke();
    Ok(Json(Ack { ok: true }))
}

#[derive(Debug, Deserialize)]
pub struct AlertsQuery {
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    limit: Option<u32>,
}

pub async fn list_alerts(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<AlertsQuery>,
) -> ApiResult<Json<Vec<Alert>>> {
    let filter = match query.state.as_deref() {
        None | Some("firing") => AlertFilter::Firing,
        Some("all") => AlertFilter::All,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "state {other:?} is not a filter: use state=firing (firing and silenced alerts) \
                 or state=all (with resolved ones)"
            )));
        }
    };
    let limit = query.limit.unwrap_or(MAX_ALERTS).clamp(1, MAX_ALERTS);
    Ok(Json(state.store.list_alerts(filter, limit).await?))
}

pub async fn alert_detail(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<AlertDetail>> {
    let alert = state
        .store
        .get_alert(&id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("alert {id:?} not found")))?;
    let deliveries = state.store.list_deliveries(&id).await?;
    Ok(Json(AlertDetail { alert, deliveries }))
}

/// The matcher in words, for the audit log.
fn describe_matcher(silence: &Silence) -> String {
    let matcher = &silence.matcher;
    let mut terms = Vec::new();
    terms.extend(matcher.rule.as_ref().map(|r| format!("rule={r}")));
    terms.extend(matcher.node.as_ref().map(|n| format!("node={n}")));
    terms.extend(matcher.site.as_ref().map(|s| format!("site={s}")));
    terms.extend(matcher.labels.iter().map(|(k, v)| format!("{k}={v}")));
    format!(
        "silenced {} until {}",
        terms.join(","),
        crate::status::rfc3339(silence.ends_at)
    )
}

pub async fn create_silence(
    State(state): State<AppState>,
    caller: ApiCaller,
    ApiJson(request): ApiJson<CreateSilence>,
) -> ApiResult<Json<Silence>> {
    validate_silence_matcher(&request.matcher).map_err(|(field, message)| {
        ApiError::bad_request(format!("invalid silence: field {field}: {message}"))
    })?;
    let duration = request.duration.as_duration();
    if duration < Duration::from_secs(1) || duration > MAX_SILENCE {
        return Err(ApiError::bad_request(format!(
            "invalid silence: field duration: {} is out of range: a silence lasts from 1s to 366d",
            request.duration
        )));
    }
    if request.comment.len() > 1000 {
        return Err(ApiError::bad_request(
            "invalid silence: field comment: longer than 1000 bytes",
        ));
    }
    let at = now();
    let ends_at = time::Duration::try_from(duration)
        .ok()
        .and_then(|d| at.checked_add(d))
        .ok_or_else(|| ApiError::bad_request("invalid silence: field duration: too long"))?;
    let id: [u8; 8] = rand::random();
    let silence = Silence {
        id: hex::encode(id),
        matcher: request.matcher,
        comment: request.comment,
        created_by: caller.actor(),
        starts_at: at,
        ends_at,
    };
    let audit = NewAudit::new(
        at,
        caller.actor(),
        "create",
        format!("silence/{}", silence.id),
        describe_matcher(&silence),
    );
    state.store.create_silence(silence.clone(), audit).await?;
    state.alerts.poke();
    Ok(Json(silence))
}

pub async fn list_silences(State(state): State<AppState>) -> ApiResult<Json<Vec<Silence>>> {
    Ok(Json(state.store.list_silences().await?))
}

pub async fn expire_silence(
    State(state): State<AppState>,
    caller: ApiCaller,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Silence>> {
    let at = now();
    let audit = NewAudit::new(
        at,
        caller.actor(),
        "delete",
        format!("silence/{id}"),
        "ended",
    );
    let silence = state
        .store
        .expire_silence(&id, at, audit)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("silence {id:?} not found")))?;
    state.alerts.poke();
    Ok(Json(silence))
}
