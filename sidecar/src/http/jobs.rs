//! `GET /v1/jobs` and `GET /v1/jobs/{id}`: progress and outcome of long actions.

use axum::extract::{Path, State};
use axum::Json;
use uuid::Uuid;

use super::error::{ApiError, ErrorBody};
use crate::jobs::{Job, Jobs};

/// Remembered jobs, newest first.
#[utoipa::path(get, path = "/v1/jobs", responses((status = 200, body = Vec<Job>)))]
pub async fn list(State(jobs): State<Jobs>) -> Json<Vec<Job>> {
    Json(jobs.list())
}

/// One job.
#[utoipa::path(get, path = "/v1/jobs/{id}",
    params(("id" = String, Path, description = "job id (a UUID)")),
    responses((status = 200, body = Job), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn show(State(jobs): State<Jobs>, Path(id): Path<String>) -> Result<Json<Job>, ApiError> {
    let id: Uuid = id
        .parse()
        .map_err(|_| ApiError::bad_request(format!("job id {id:?} is not a UUID")))?;
    jobs.get(id)
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no job {id}")))
}
