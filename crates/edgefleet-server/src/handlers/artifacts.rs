//! Artifacts: content-addressed blobs operators push and agents download (routes in
//! `edgefleet_wire::artifact`).
//!
//! A version is a (name, SHA-256) row in the store plus a content file named by the digest
//! (`blobs`). Versions are immutable; the same content under two names is one file. A
//! version cannot be deleted while a deployment references it: at its current revision, or
//! at a revision one of its rollouts still assigns to some node. `check_references` is the
//! other half: an apply or plan that references a version the server does not have is
//! refused. Both run under `Blobs::lock`, so an apply and a deletion cannot interleave.

mod blobs;

use std::collections::{BTreeMap, BTreeSet};

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use edgefleet_core::hash::short;
use edgefleet_core::rollout::{Assignment, Rollout};
use edgefleet_wire::artifact::{
    ArtifactInfo, ArtifactList, ArtifactRemoval, ArtifactTarget, DIGEST_HEADER, normalize_digest,
};
use edgefleet_wire::manifest::{DeploymentManifest, DeploymentSpec};
use edgefleet_wire::workload::ArtifactRef;
use serde::Deserialize;

pub use blobs::Blobs;
use blobs::{FileBody, RangeRequest, UploadError, parse_range};

use crate::auth::{ApiCaller, NodeCaller};
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiPath, ApiQuery};
use crate::state::{AppState, now};
use crate::store::{ArtifactRecord, DeploymentRecord, NewAudit};

fn info(record: ArtifactRecord, used_by: Vec<String>) -> ArtifactInfo {
    ArtifactInfo {
        name: record.name,
        digest: record.digest,
        size: record.size,
        created_at: record.created_at,
        created_by: record.created_by,
        used_by,
    }
}

fn reference(record: &ArtifactRecord) -> ArtifactRef {
    ArtifactRef {
        name: record.name.clone(),
        digest: record.digest.clone(),
    }
}

/// Every artifact a deployment spec references, with the field that does.
fn spec_references(spec: &DeploymentSpec) -> impl Iterator<Item = (String, &ArtifactRef)> {
    spec.workloads
        .iter()
        .enumerate()
        .flat_map(|(index, workload)| {
            let module = workload
                .module
                .iter()
                .map(move |r| (format!("spec.workloads[{index}].module"), r));
            let image = workload
                .image_artifact
                .iter()
                .map(move |r| (format!("spec.workloads[{index}].imageArtifact"), r));
            module.chain(image)
        })
}

/// Per artifact, the deployments whose current revision references it.
fn current_users(deployments: &[DeploymentRecord]) -> BTreeMap<ArtifactRef, BTreeSet<String>> {
    let mut users: BTreeMap<ArtifactRef, BTreeSet<String>> = BTreeMap::new();
    for deployment in deployments {
        for (_, artifact) in spec_references(&deployment.manifest.spec) {
            users
                .entry(artifact.clone())
                .or_default()
                .insert(deployment.name.clone());
        }
    }
    users
}

/// One reference that keeps an artifact from being deleted.
struct Use {
    deployment: String,
    field: String,
    artifact: ArtifactRef,
    /// Which revision, and why it still counts.
    why: String,
}

/// Every revision `rollout` may still hand a node: what each of its nodes is assigned,
/// and what a node it does not know (enrolled or relabelled since it started) would get.
fn assigned_revisions(rollout: &Rollout) -> BTreeSet<&str> {
    // Node names are never empty, so "" stands for a node the rollout does not know.
    rollout
        .nodes
        .keys()
        .map(String::as_str)
        .chain(std::iter::once(""))
        .filter_map(|node| match rollout.assignment(node) {
            Assignment::Revision { hash, .. } => Some(hash),
            Assignment::Nothing => None,
        })
        .collect()
}

/// Every reference to any artifact from a deployment's current revision or from a
/// revision one of its rollouts still assigns.
async fn all_uses(state: &AppState, deployments: &[DeploymentRecord]) -> ApiResult<Vec<Use>> {
    let mut uses = Vec::new();
    for deployment in deployments {
        for (field, artifact) in spec_references(&deployment.manifest.spec) {
            uses.push(Use {
                deployment: deployment.name.clone(),
                field,
                artifact: artifact.clone(),
                why: format!("current revision {}", short(&deployment.revision)),
            });
        }
    }
    let (rollouts, specs) = state.controller.snapshot().await?;
    for rollout in rollouts.values() {
        let current = deployments
            .iter()
            .find(|d| d.name == rollout.deployment)
            .map(|d| d.revision.as_str());
        for revision in assigned_revisions(rollout) {
            if Some(revision) == current {
                continue;
            }
            let Some(spec) = specs.get(&(rollout.deployment.clone(), revision.to_owned())) else {
                continue;
            };
            for (field, artifact) in spec_references(spec) {
                uses.push(Use {
                    deployment: rollout.deployment.clone(),
                    field,
                    artifact: artifact.clone(),
                    why: format!(
                        "revision {}, which rollout {} still assigns to nodes",
                        short(revision),
                        rollout.number
                    ),
                });
            }
        }
    }
    Ok(uses)
}

/// Refuses deployments that reference an artifact the server does not have, with 422
/// naming the deployment, the field and the reference. Apply and undo call it holding
/// `Blobs::lock` (see the module docs); plan calls it without.
pub async fn check_references(
    state: &AppState,
    deployments: &[DeploymentManifest],
) -> ApiResult<()> {
    let wanted: Vec<(usize, &str, String, &ArtifactRef)> = deployments
        .iter()
        .enumerate()
        .flat_map(|(index, manifest)| {
            spec_references(&manifest.spec).map(move |(field, artifact)| {
                (index, manifest.metadata.name.as_str(), field, artifact)
            })
        })
        .collect();
    if wanted.is_empty() {
        return Ok(());
    }
    let mut stored: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for record in state.store.list_artifacts().await? {
        stored.entry(record.name).or_default().push(record.digest);
    }
    let missing: Vec<_> = wanted
        .into_iter()
        .filter(|(_, _, _, artifact)| {
            !stored
                .get(&artifact.name)
                .is_some_and(|digests| digests.contains(&artifact.digest))
        })
        .collect();
    let Some((_, first_deployment, first_field, first_artifact)) = missing.first() else {
        return Ok(());
    };
    let mut details = Vec::new();
    for (index, deployment, field, artifact) in &missing {
        details.push(format!("deployment: {deployment} (deployments[{index}])"));
        details.push(format!("field: {field}"));
        let mut problem = format!("artifact {artifact} is not on the server");
        if let Some(digests) = stored.get(&artifact.name) {
            let versions: Vec<String> = digests.iter().map(|d| format!("sha256:{d}")).collect();
            problem.push_str(&format!(
                " (it has {} only as {})",
                artifact.name,
                versions.join(", ")
            ));
        }
        details.push(problem);
    }
    details.push("push it first with `edgefleet artifact push FILE --name NAME`".to_owned());
    Err(ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_manifest",
        format!(
            "invalid manifest for deployment {first_deployment:?}: field {first_field}: artifact \
             {first_artifact} is not on the server; push it first with `edgefleet artifact push`"
        ),
    )
    .with_details(details))
}

#[derive(Debug, Deserialize)]
pub struct PushQuery {
    #[serde(default)]
    name: Option<String>,
}

fn invalid_name(name: &str) -> ApiError {
    ApiError::bad_request(format!(
        "invalid artifact name {name:?}: use 1 to 128 characters of letters, digits, '.', '_' \
         and '-', not starting with '.' or '-'"
    ))
}

fn content_length(headers: &HeaderMap) -> ApiResult<Option<u64>> {
    headers
        .get(header::CONTENT_LENGTH)
        .map(|value| {
            value
                .to_str()
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .ok_or_else(|| ApiError::bad_request(format!("invalid Content-Length {value:?}")))
        })
        .transpose()
}

fn claimed_digest(headers: &HeaderMap) -> ApiResult<Option<String>> {
    headers
        .get(DIGEST_HEADER)
        .map(|value| {
            value
                .to_str()
                .ok()
                .and_then(normalize_digest)
                .ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "invalid {DIGEST_HEADER} header {value:?}: expected sha256:<64 hex digits>"
                    ))
                })
        })
        .transpose()
}

fn upload_error(name: &str, error: UploadError) -> ApiError {
    match error {
        UploadError::TooLarge { limit } => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("artifact {name:?} is larger than the server's limit of {limit} bytes; nothing was stored"),
        )
        .with_details(vec![format!(
            "limit: {limit} bytes (the server's --max-artifact-size)"
        )]),
        UploadError::DiskFull { received } => ApiError::new(
            StatusCode::INSUFFICIENT_STORAGE,
            "insufficient_storage",
            format!(
                "the server's disk is full: it ran out of space after {received} bytes of artifact \
                 {name:?}; nothing was stored. Free space on the server (or remove unused \
                 artifacts with `edgefleet artifact rm`) and push again"
            ),
        ),
        error @ (UploadError::Interrupted { .. } | UploadError::Truncated { .. }) => {
            ApiError::bad_request(format!("artifact {name:?}: {error}; nothing was stored"))
        }
        error @ UploadError::Io { .. } => {
            ApiError::internal(format!("storing artifact {name:?}: {error}"))
        }
    }
}

/// `POST /v1/artifacts?name=NAME`: stores the body as a version of NAME.
pub async fn push(
    State(state): State<AppState>,
    caller: ApiCaller,
    ApiQuery(query): ApiQuery<PushQuery>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let name = query.name.ok_or_else(|| {
        ApiError::bad_request("the artifact needs a name: POST /v1/artifacts?name=NAME")
    })?;
    if !ArtifactRef::valid_name(&name) {
        return Err(invalid_name(&name));
    }
    let claimed = claimed_digest(&headers)?;
    let declared = content_length(&headers)?;
    let upload = state
        .artifacts
        .receive(body, declared)
        .await
        .map_err(|error| upload_error(&name, error))?;
    if let Some(claimed) = &claimed
        && *claimed != upload.digest
    {
        return Err(ApiError::bad_request(format!(
            "the content received for artifact {name:?} has sha256 {} but the {DIGEST_HEADER} \
             header says {claimed}; nothing was stored (did the file change during the upload?)",
            upload.digest
        ))
        .with_details(vec![
            format!("received: sha256:{} ({} bytes)", upload.digest, upload.size),
            format!("expected: sha256:{claimed}"),
        ]));
    }
    let at = now();
    let record = ArtifactRecord {
        name: name.clone(),
        digest: upload.digest.clone(),
        size: upload.size,
        created_at: at,
        created_by: caller.actor(),
    };
    let audit = NewAudit::new(
        at,
        caller.actor(),
        "push",
        format!("artifact/{name}"),
        format!(
            "stored sha256:{} ({} bytes)",
            short(&record.digest),
            record.size
        ),
    );
    let guard = state.artifacts.lock().await;
    state
        .artifacts
        .commit(upload)
        .await
        .map_err(|error| ApiError::internal(format!("storing artifact {name:?}: {error}")))?;
    let (record, created) = match state.store.add_artifact(record.clone(), audit).await {
        Ok(stored) => stored,
        Err(error) => {
            // No row names the content: leave no file behind either.
            remove_unused_content(&state, &record.digest).await;
            return Err(error.into());
        }
    };
    drop(guard);
    if created {
        tracing::info!(artifact = %reference(&record), size = record.size, actor = %caller.actor(), "artifact stored");
    }
    let deployments = state.store.list_deployments().await?;
    let used_by = current_users(&deployments)
        .remove(&reference(&record))
        .unwrap_or_default()
        .into_iter()
        .collect();
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(info(record, used_by))).into_response())
}

/// Deletes the content file of `digest` unless some version still has it. Failures are
/// logged: the versions are already gone, the file only takes space.
async fn remove_unused_content(state: &AppState, digest: &str) {
    match state.store.artifact_digest_exists(digest).await {
        Ok(true) => {}
        Ok(false) => {
            if let Err(error) = state.artifacts.remove(digest).await {
                tracing::warn!(%error, digest, "removing unused artifact content failed");
            }
        }
        Err(error) => {
            tracing::warn!(%error, digest, "cannot tell whether artifact content is still used; keeping it");
        }
    }
}

/// `GET /v1/artifacts`.
pub async fn list(State(state): State<AppState>) -> ApiResult<Json<ArtifactList>> {
    let records = state.store.list_artifacts().await?;
    let deployments = state.store.list_deployments().await?;
    let mut users = current_users(&deployments);
    let artifacts = records
        .into_iter()
        .map(|record| {
            let used_by = users
                .remove(&reference(&record))
                .unwrap_or_default()
                .into_iter()
                .collect();
            info(record, used_by)
        })
        .collect();
    Ok(Json(ArtifactList {
        artifacts,
        max_size: Some(state.artifacts.max_bytes()),
    }))
}

fn not_found(target: &ArtifactTarget, others: &[ArtifactRecord]) -> ApiError {
    match target {
        ArtifactTarget::Name(name) => {
            ApiError::not_found(format!("no artifact named {name:?} is stored"))
        }
        ArtifactTarget::Version(version) => {
            let mut error = ApiError::not_found(format!("artifact {version} is not stored"));
            let same_name: Vec<String> = others
                .iter()
                .filter(|r| r.name == version.name)
                .map(|r| format!("stored: {}", reference(r)))
                .collect();
            if !same_name.is_empty() {
                error = error.with_details(same_name);
            }
            error
        }
    }
}

/// `DELETE /v1/artifacts/{NAME}` or `/v1/artifacts/{NAME@sha256:DIGEST}`.
pub async fn delete(
    State(state): State<AppState>,
    caller: ApiCaller,
    ApiPath(target): ApiPath<String>,
) -> ApiResult<Json<ArtifactRemoval>> {
    let target: ArtifactTarget = target
        .parse()
        .map_err(|error| ApiError::bad_request(format!("{error}")))?;
    let _guard = state.artifacts.lock().await;
    let records = state.store.list_artifacts().await?;
    let doomed: BTreeSet<ArtifactRef> = records
        .iter()
        .filter(|r| target.matches(&r.name, &r.digest))
        .map(reference)
        .collect();
    if doomed.is_empty() {
        return Err(not_found(&target, &records));
    }
    let deployments = state.store.list_deployments().await?;
    let blocking: Vec<Use> = all_uses(&state, &deployments)
        .await?
        .into_iter()
        .filter(|u| doomed.contains(&u.artifact))
        .collect();
    if !blocking.is_empty() {
        let names: BTreeSet<&str> = blocking.iter().map(|u| u.deployment.as_str()).collect();
        let names: Vec<&str> = names.into_iter().collect();
        let mut details: Vec<String> = blocking
            .iter()
            .map(|u| {
                format!(
                    "deployment {}: {} = {} ({})",
                    u.deployment, u.field, u.artifact, u.why
                )
            })
            .collect();
        details.push(
            "update or delete those deployments first (and let their rollouts finish)".to_owned(),
        );
        return Err(ApiError::conflict(format!(
            "artifact {target} is used by deployment{} {}; nothing was removed",
            if names.len() == 1 { "" } else { "s" },
            names.join(", ")
        ))
        .with_details(details));
    }
    let versions: Vec<String> = doomed
        .iter()
        .map(|r| format!("sha256:{}", short(&r.digest)))
        .collect();
    let audit = NewAudit::new(
        now(),
        caller.actor(),
        "delete",
        format!("artifact/{}", target.name()),
        format!("deleted {}", versions.join(", ")),
    );
    let removed = state
        .store
        .delete_artifacts(target.name(), target.digest(), audit)
        .await?;
    let digests: BTreeSet<&str> = removed.iter().map(|r| r.digest.as_str()).collect();
    for digest in digests {
        remove_unused_content(&state, digest).await;
    }
    Ok(Json(ArtifactRemoval {
        removed: removed.into_iter().map(|r| info(r, Vec::new())).collect(),
    }))
}

/// `GET /v1/agent/artifacts/{NAME@sha256:DIGEST}`: the content, whole or one byte range.
pub async fn download(
    State(state): State<AppState>,
    caller: NodeCaller,
    ApiPath(wanted): ApiPath<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let artifact: ArtifactRef = wanted
        .parse()
        .map_err(|error| ApiError::bad_request(format!("{error}")))?;
    if state
        .store
        .get_artifact(&artifact.name, &artifact.digest)
        .await?
        .is_none()
    {
        return Err(ApiError::not_found(format!(
            "artifact {artifact} is not stored on the server"
        )));
    }
    let (file, length) = state
        .artifacts
        .open(&artifact.digest)
        .await
        .map_err(|error| {
            ApiError::internal(format!(
                "opening the content of artifact {artifact} ({}): {error}",
                state.artifacts.path(&artifact.digest).display()
            ))
        })?;
    let range = headers
        .get(header::RANGE)
        .and_then(|value| value.to_str().ok());
    let (status, start, end) = match parse_range(range, length) {
        RangeRequest::Full => (StatusCode::OK, 0, length.checked_sub(1)),
        RangeRequest::Partial { start, end } => (StatusCode::PARTIAL_CONTENT, start, Some(end)),
        RangeRequest::Unsatisfiable => {
            let mut response = ApiError::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "range_not_satisfiable",
                format!(
                    "artifact {artifact} has {length} bytes; the range {:?} starts past its end",
                    range.unwrap_or_default()
                ),
            )
            .into_response();
            response.headers_mut().insert(
                header::CONTENT_RANGE,
                header_value(&format!("bytes */{length}"))?,
            );
            return Ok(response);
        }
    };
    let body_length = end.map_or(0, |end| end - start + 1);
    let body = FileBody::new(file, start, body_length)
        .await
        .map_err(|error| ApiError::internal(format!("reading artifact {artifact}: {error}")))?;
    tracing::debug!(node = %caller.name, %artifact, start, body_length, "serving artifact");
    let mut response = Response::new(Body::new(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    headers.insert(
        header::ETAG,
        header_value(&format!("\"{}\"", artifact.digest))?,
    );
    headers.insert(
        header::CONTENT_LENGTH,
        header_value(&body_length.to_string())?,
    );
    if let (StatusCode::PARTIAL_CONTENT, Some(end)) = (status, end) {
        headers.insert(
            header::CONTENT_RANGE,
            header_value(&format!("bytes {start}-{end}/{length}"))?,
        );
    }
    Ok(response)
}

fn header_value(text: &str) -> ApiResult<HeaderValue> {
    HeaderValue::from_str(text)
        .map_err(|error| ApiError::internal(format!("building header value {text:?}: {error}")))
}
