//! `/v1/restores`: online restores of keyspaces and tables into this node.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::error::{ApiError, ErrorBody};
use super::AppState;
use crate::cassandra::supervisor::ProcessState;
use crate::restore::{CreateRestore, Discard};

/// Plans a restore (`"dry_run": true` answers 200 with the plan and what
/// blocks it) or starts it (202 `{id, job}`). 400 when something blocks it,
/// 409 while a backup or another restore runs on this node.
#[utoipa::path(post, path = "/v1/restores",
    request_body(content = CreateRestore),
    responses(
        (status = 200, description = "dry run: `{dry_run, plan}`"),
        (status = 202, description = "started: `{id, job}`"),
        (status = 400, body = ErrorBody), (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn create(State(state): State<AppState>, bytes: Bytes) -> Result<Response, ApiError> {
    let req: CreateRestore = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request(format!("bad request body: {e}")))?;
    if req.mode == crate::restore::RestoreMode::Online
        && state.node.supervisor.status().state != ProcessState::Running
    {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "cassandra is not running: an online restore needs a running node",
        ));
    }
    let cluster = req.scope == crate::backup::Scope::Cluster;
    if req.dry_run {
        let plan = if cluster {
            state.restores.plan_cluster(&req).await?.view()
        } else {
            serde_json::to_value(state.restores.plan(&req).await?.1).expect("serializes")
        };
        return Ok(Json(json!({"dry_run": true, "plan": plan})).into_response());
    }
    let (id, job) = if cluster {
        state.restores.start_cluster(req).await?
    } else {
        state.restores.start(req).await?
    };
    Ok((
        StatusCode::ACCEPTED,
        [(header::LOCATION, format!("/v1/restores/{id}"))],
        Json(json!({"id": id, "job": job})),
    )
        .into_response())
}

/// Restores run by this sidecar, and those an earlier sidecar left
/// unfinished (`interrupted`), newest first.
#[utoipa::path(get, path = "/v1/restores", responses((status = 200, description = "restores")))]
pub async fn list(State(state): State<AppState>) -> Response {
    Json(state.restores.list()).into_response()
}

/// One restore: state, phase, plan, progress (files and bytes done/total,
/// rate, ETA), imported tables, error.
#[utoipa::path(get, path = "/v1/restores/{id}",
    params(("id" = String, Path, description = "restore id")),
    responses((status = 200, description = "the restore"), (status = 404, body = ErrorBody)))]
pub async fn show(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    state
        .restores
        .show(&id)
        .map(|r| Json(r).into_response())
        .ok_or_else(|| ApiError::not_found(format!("no restore {id}")))
}

/// Stops a running restore between files or tables; what is staged stays, so
/// the same request made again continues it.
#[utoipa::path(post, path = "/v1/restores/{id}/cancel",
    params(("id" = String, Path, description = "restore id")),
    responses((status = 202, description = "cancelling"), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn cancel(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    match state.restores.cancel(&id) {
        None => Err(ApiError::not_found(format!("no restore {id}"))),
        Some(false) => Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("restore {id} is not running"),
        )),
        Some(true) => Ok((
            StatusCode::ACCEPTED,
            Json(json!({"id": id, "cancelling": true})),
        )
            .into_response()),
    }
}

/// Forgets a restore that is not running and removes what it staged (and
/// its saved state) from the data disk: a cancelled, failed or interrupted
/// restore can no longer be continued afterwards. 200 `{id, discarded, files,
/// bytes}` (the files and bytes that were staged); 404 if unknown, 409 while
/// it runs or while it holds the node's previous data (a full-node restore
/// interrupted before the restored node was healthy).
#[utoipa::path(delete, path = "/v1/restores/{id}",
    params(("id" = String, Path, description = "restore id")),
    responses((status = 200, description = "discarded: `{id, discarded, files, bytes}`"), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 500, body = ErrorBody)))]
pub async fn discard(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    match state.restores.discard(&id).await {
        Discard::Unknown => Err(ApiError::not_found(format!("no restore {id}"))),
        Discard::Running => Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("restore {id} is running; cancel it first"),
        )),
        Discard::HoldsPreviousData(previous) => Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "restore {id} holds this node's previous data in {}, moved aside by the full-node restore; \
                 resume the restore (it removes that data once the restored node is healthy), or move it away yourself first",
                previous.display()
            ),
        )),
        Discard::Failed(e) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot remove the files of restore {id}: {e}"),
        )),
        Discard::Done(staged) => Ok(Json(json!({
            "id": id,
            "discarded": true,
            "files": staged.files,
            "bytes": staged.bytes,
        }))
        .into_response()),
    }
}
