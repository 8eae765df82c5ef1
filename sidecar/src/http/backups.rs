//! `/v1/backups`: start, list, show, verify, delete and purge backups. Long work
//! runs as jobs (202 + `Location`); listing and showing read the store.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;
use utoipa::ToSchema;

use super::error::{ApiError, ErrorBody};
use super::AppState;
use crate::backup::{BackupDetail, BackupSummary, CreateBackup, StartError, GROUP};
use crate::cassandra::supervisor::ProcessState;
use crate::jobs::Job;
use anchises_backup::manifest::BackupId;
use anchises_backup::retention::Retention;
use anchises_backup::BackupError;

impl From<BackupError> for ApiError {
    fn from(e: BackupError) -> Self {
        match e {
            BackupError::Invalid(m) => ApiError::bad_request(m),
            BackupError::Store(s) => {
                ApiError::new(StatusCode::BAD_GATEWAY, format!("backup store: {s}"))
            }
            BackupError::Corrupt(m) => {
                ApiError::new(StatusCode::BAD_GATEWAY, format!("backup store: {m}"))
            }
            other => ApiError::internal(other),
        }
    }
}

impl From<StartError> for ApiError {
    fn from(e: StartError) -> Self {
        match e {
            StartError::Invalid(m) => ApiError::bad_request(m),
            StartError::Busy(m) => ApiError::new(StatusCode::CONFLICT, m),
            StartError::Unavailable(m) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, m),
            StartError::Store(m) => ApiError::new(StatusCode::BAD_GATEWAY, m),
            StartError::Conflict(c) => c.into(),
        }
    }
}

/// An optional JSON body: empty means the default.
fn body<T: Default + for<'de> Deserialize<'de>>(bytes: &Bytes) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::bad_request(format!("bad request body: {e}")))
}

fn backup_id(id: &str) -> Result<BackupId, ApiError> {
    BackupId::parse(id).map_err(ApiError::bad_request)
}

/// 404 unless this node knows backup `id`.
async fn ensure_exists(state: &AppState, id: &BackupId) -> Result<(), ApiError> {
    match state.backups.show(id).await? {
        Some(_) => Ok(()),
        None => Err(ApiError::not_found(format!("no backup {id}"))),
    }
}

fn accepted(job: &Job, location: String, extra: serde_json::Value) -> Response {
    let mut body = json!({"job": job});
    if let (Some(b), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(extra.clone());
    }
    (
        StatusCode::ACCEPTED,
        [(header::LOCATION, location)],
        Json(body),
    )
        .into_response()
}

/// Starts a backup of this node (`scope: node`, the default) or of every node
/// of the cluster under one id (`scope: cluster`). 409 while another runs.
#[utoipa::path(post, path = "/v1/backups",
    request_body(content = Option<CreateBackup>),
    responses(
        (status = 202, description = "started: `{id, job}`; poll the Location"),
        (status = 400, body = ErrorBody), (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn create(State(state): State<AppState>, bytes: Bytes) -> Result<Response, ApiError> {
    let req: CreateBackup = body(&bytes)?;
    if state.node.supervisor.status().state != ProcessState::Running {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "cassandra is not running: a backup needs a running node to snapshot",
        ));
    }
    let (id, job) = state.backups.start(req.clone())?;
    Ok(accepted(
        &job,
        format!("/v1/backups/{id}"),
        json!({"id": id, "scope": req.scope}),
    ))
}

/// Backups of this node's slot and of its cluster, newest first: running,
/// failed and stored ones.
#[utoipa::path(get, path = "/v1/backups",
    responses((status = 200, body = Vec<BackupSummary>), (status = 502, body = ErrorBody)))]
pub async fn list(State(state): State<AppState>) -> Result<Json<Vec<BackupSummary>>, ApiError> {
    Ok(Json(state.backups.list().await?))
}

/// One backup: totals, and while it runs its phase and progress (files and
/// bytes done/total, rate, ETA, errors); per node for a cluster backup.
#[utoipa::path(get, path = "/v1/backups/{id}",
    params(("id" = String, Path, description = "backup id")),
    responses((status = 200, body = BackupDetail), (status = 404, body = ErrorBody)))]
pub async fn show(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<BackupDetail>, ApiError> {
    let id = backup_id(&id)?;
    state
        .backups
        .show(&id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no backup {id}")))
}

/// Deletes a backup (this slot's manifest and the cluster index), then every
/// object nothing else names. Runs as a job.
#[utoipa::path(delete, path = "/v1/backups/{id}",
    params(("id" = String, Path, description = "backup id")),
    responses((status = 202, body = Job), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn delete(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = backup_id(&id)?;
    ensure_exists(&state, &id).await?;
    let backups = state.backups.clone();
    let job_id = id.clone();
    let job = state.jobs.start(GROUP, "backup.delete", move |_| async move {
        let plan = backups.delete(&job_id).await.map_err(|e| e.to_string())?;
        Ok(json!({"deleted": plan.backups, "objects_deleted": plan.objects.len(), "bytes_freed": plan.bytes}))
    })?;
    Ok(accepted(
        &job,
        format!("/v1/jobs/{}", job.id),
        json!({"id": id}),
    ))
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VerifyBody {
    /// Download every object and check its size and BLAKE3 hash (otherwise:
    /// existence and stored size).
    #[serde(default)]
    pub deep: bool,
}

/// Checks every object a backup names. The job's result is `{ok, files,
/// bytes, problems}`.
#[utoipa::path(post, path = "/v1/backups/{id}/verify",
    params(("id" = String, Path, description = "backup id")),
    request_body(content = Option<VerifyBody>),
    responses((status = 202, body = Job), (status = 404, body = ErrorBody)))]
pub async fn verify(
    State(state): State<AppState>,
    Path(id): Path<String>,
    bytes: Bytes,
) -> Result<Response, ApiError> {
    let id = backup_id(&id)?;
    let req: VerifyBody = body(&bytes)?;
    ensure_exists(&state, &id).await?;
    let backups = state.backups.clone();
    let job_id = id.clone();
    let job = state.jobs.start("backup-verify", "backup.verify", move |_| async move {
        let report = backups.verify(&job_id, req.deep).await.map_err(|e| e.to_string())?;
        Ok(json!({"ok": report.ok(), "deep": report.deep, "files": report.files, "bytes": report.bytes, "problems": report.problems}))
    })?;
    Ok(accepted(
        &job,
        format!("/v1/jobs/{}", job.id),
        json!({"id": id}),
    ))
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PurgeBody {
    /// Only say what would be deleted.
    #[serde(default)]
    pub dry_run: bool,
    /// Override `backup.keep_last` for this purge.
    pub keep_last: Option<u32>,
    /// Override `backup.keep_days` for this purge.
    pub keep_days: Option<u32>,
}

/// Applies retention: deletes expired backups' manifests, then old incremental
/// log entries, then unreferenced objects. A dry run answers 200 with the plan;
/// otherwise a job.
#[utoipa::path(post, path = "/v1/backups/purge",
    request_body(content = Option<PurgeBody>),
    responses((status = 200, description = "dry run: the plan"), (status = 202, body = Job), (status = 400, body = ErrorBody)))]
pub async fn purge(State(state): State<AppState>, bytes: Bytes) -> Result<Response, ApiError> {
    let req: PurgeBody = body(&bytes)?;
    if req.keep_last == Some(0) {
        return Err(ApiError::bad_request("keep_last must be at least 1"));
    }
    let mut retention = state.backups.retention();
    if req.keep_last.is_some() || req.keep_days.is_some() {
        retention = Retention {
            keep_last: req.keep_last,
            keep_days: req.keep_days.filter(|&d| d > 0),
        };
    }
    if req.dry_run {
        let plan = state.backups.purge(&retention, true).await?;
        return Ok(Json(json!({"dry_run": true, "plan": plan})).into_response());
    }
    let backups = state.backups.clone();
    let job = state.jobs.start(GROUP, "backup.purge", move |_| async move {
        let plan = backups.purge(&retention, false).await.map_err(|e| e.to_string())?;
        Ok(json!({"deleted": plan.backups, "kept": plan.kept, "objects_deleted": plan.objects.len(), "bytes_freed": plan.bytes}))
    })?;
    Ok(accepted(&job, format!("/v1/jobs/{}", job.id), json!({})))
}
